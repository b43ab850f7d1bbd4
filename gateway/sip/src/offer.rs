//! `X-CF-Offer`: the header an ACD node puts on the INVITE that offers a caller to an agent,
//! read by the gateway holding the agent (the arbiter against double offering and ghost
//! calls). Value: `;`-separated `name=value` parameters, names case-insensitive, unknown
//! ones ignored:
//!
//! * `queue=<name>`: the queue (logs);
//! * `ringinuse=yes|no`: `no` makes the gateway refuse (486) an agent already in a call;
//! * `deadline=<unix ms>`: the ACD gives the offer up at this time; the gateway refuses an
//!   offer that arrives later (it would ring an agent for a caller who is gone).
//!
//! Sans-IO: time is passed in.

use std::fmt;

/// The header name.
pub const HEADER: &str = "X-CF-Offer";

/// Longest value accepted (bytes); longer is an error.
pub const MAX_LEN: usize = 512;

/// Most parameters accepted.
pub const MAX_PARAMS: usize = 16;

/// A parsed `X-CF-Offer` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// `queue=`.
    pub queue: Option<String>,
    /// `ringinuse=` (default yes: nothing is refused for being in use).
    pub ringinuse: bool,
    /// `deadline=`, milliseconds since the UNIX epoch.
    pub deadline_ms: Option<u64>,
}

impl Default for Offer {
    fn default() -> Self {
        Offer {
            queue: None,
            ringinuse: true,
            deadline_ms: None,
        }
    }
}

/// Why a value is not a valid `X-CF-Offer`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OfferError {
    /// Over [`MAX_LEN`] bytes or [`MAX_PARAMS`] parameters.
    #[error("X-CF-Offer too long")]
    TooLong,
    /// A parameter without `=` or with an empty name.
    #[error("X-CF-Offer parameter {0:?} is not name=value")]
    Malformed(String),
    /// A known parameter with a bad value.
    #[error("X-CF-Offer {name}={value:?}: {expected}")]
    BadValue {
        /// Parameter.
        name: &'static str,
        /// Its value.
        value: String,
        /// What it should be.
        expected: &'static str,
    },
    /// A known parameter given twice.
    #[error("X-CF-Offer {0} given twice")]
    Duplicate(&'static str),
}

fn token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b))
}

impl Offer {
    /// Parses a header value.
    pub fn parse(value: &str) -> Result<Offer, OfferError> {
        if value.len() > MAX_LEN {
            return Err(OfferError::TooLong);
        }
        let mut o = Offer::default();
        let (mut seen_q, mut seen_r, mut seen_d) = (false, false, false);
        let mut n = 0;
        for part in value.split(';') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            n += 1;
            if n > MAX_PARAMS {
                return Err(OfferError::TooLong);
            }
            let Some((name, v)) = part.split_once('=') else {
                return Err(OfferError::Malformed(part.to_owned()));
            };
            let (name, v) = (name.trim(), v.trim());
            if !token(name) {
                return Err(OfferError::Malformed(part.to_owned()));
            }
            let bad = |name, expected| OfferError::BadValue {
                name,
                value: v.to_owned(),
                expected,
            };
            let once = |seen: &mut bool, name| {
                if std::mem::replace(seen, true) {
                    Err(OfferError::Duplicate(name))
                } else {
                    Ok(())
                }
            };
            if name.eq_ignore_ascii_case("queue") {
                once(&mut seen_q, "queue")?;
                if !token(v) {
                    return Err(bad("queue", "a token"));
                }
                o.queue = Some(v.to_owned());
            } else if name.eq_ignore_ascii_case("ringinuse") {
                once(&mut seen_r, "ringinuse")?;
                o.ringinuse = if v.eq_ignore_ascii_case("yes") {
                    true
                } else if v.eq_ignore_ascii_case("no") {
                    false
                } else {
                    return Err(bad("ringinuse", "yes or no"));
                };
            } else if name.eq_ignore_ascii_case("deadline") {
                once(&mut seen_d, "deadline")?;
                if v.is_empty() || v.len() > 20 || !v.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad("deadline", "milliseconds since the UNIX epoch"));
                }
                o.deadline_ms = Some(
                    v.parse()
                        .map_err(|_| bad("deadline", "milliseconds since the UNIX epoch"))?,
                );
            }
            // Unknown parameters: ignored (newer ACD nodes may add some).
        }
        Ok(o)
    }

    /// Whether the deadline has passed at `now_ms` (milliseconds since the UNIX epoch).
    pub fn expired(&self, now_ms: u64) -> bool {
        self.deadline_ms.is_some_and(|d| now_ms >= d)
    }
}

impl fmt::Display for Offer {
    /// The header value (queue names that are not tokens are left out).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        if let Some(q) = self.queue.as_deref().filter(|q| token(q)) {
            write!(f, "queue={q}")?;
            sep = ";";
        }
        write!(
            f,
            "{sep}ringinuse={}",
            if self.ringinuse { "yes" } else { "no" }
        )?;
        if let Some(d) = self.deadline_ms {
            write!(f, ";deadline={d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_round_trips() {
        let o = Offer::parse("queue=support;ringinuse=no;deadline=1765000000123").unwrap();
        assert_eq!(
            o,
            Offer {
                queue: Some("support".into()),
                ringinuse: false,
                deadline_ms: Some(1_765_000_000_123),
            }
        );
        assert_eq!(Offer::parse(&o.to_string()).unwrap(), o);
        // Case-insensitive names and yes/no, spaces, empty parts, unknown parameters.
        let o = Offer::parse(" Queue = q1 ; RINGINUSE=No;; x-future=1 ").unwrap();
        assert_eq!(o.queue.as_deref(), Some("q1"));
        assert!(!o.ringinuse);
        assert_eq!(o.deadline_ms, None);
        assert_eq!(Offer::parse("").unwrap(), Offer::default());
        assert!(Offer::default().ringinuse);
    }

    #[test]
    fn not_fooled_by_substrings() {
        // `contains("ringinuse=no")` would read these as ringinuse off.
        assert!(Offer::parse("queue=ringinuse=no").is_err());
        assert!(Offer::parse("xringinuse=no").unwrap().ringinuse);
        assert!(Offer::parse("ringinuse=nothing").is_err());
        assert!(Offer::parse("deadline=12;xdeadline=1").unwrap().deadline_ms == Some(12));
    }

    #[test]
    fn rejects_bad_values_with_a_clear_error() {
        assert_eq!(
            Offer::parse("deadline=soon"),
            Err(OfferError::BadValue {
                name: "deadline",
                value: "soon".into(),
                expected: "milliseconds since the UNIX epoch"
            })
        );
        assert!(Offer::parse("deadline=-5").is_err());
        assert!(Offer::parse("deadline=99999999999999999999999").is_err());
        assert_eq!(
            Offer::parse("deadline=1;deadline=2"),
            Err(OfferError::Duplicate("deadline"))
        );
        assert!(matches!(
            Offer::parse("ringinuse"),
            Err(OfferError::Malformed(_))
        ));
        assert!(matches!(Offer::parse("=x"), Err(OfferError::Malformed(_))));
        assert_eq!(Offer::parse(&"a=b;".repeat(200)), Err(OfferError::TooLong));
        assert_eq!(Offer::parse(&"a=b;".repeat(17)), Err(OfferError::TooLong));
        let e = Offer::parse("deadline=x").unwrap_err().to_string();
        assert!(e.contains("deadline") && e.contains("\"x\""), "{e}");
    }

    #[test]
    fn deadline() {
        let o = Offer::parse("deadline=1000").unwrap();
        assert!(!o.expired(999));
        assert!(o.expired(1000));
        assert!(!Offer::default().expired(u64::MAX));
    }
}

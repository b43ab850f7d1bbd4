//! `X-CF-Offer`: the header an ACD node puts on the INVITE that offers a caller to an agent,
//! read by the gateway holding the agent (the arbiter against double offering and ghost
//! calls). Value: `;`-separated `name=value` parameters, names case-insensitive, unknown
//! ones ignored:
//!
//! * `queue=<name>`: the queue (logs);
//! * `ringinuse=yes|no`: `no` makes the gateway refuse (486) an agent already in a call;
//! * `deadline=<unix ms>`: the ACD gives the offer up at this time; the gateway refuses an
//!   offer that arrives later (it would ring an agent for a caller who is gone);
//! * `linkedid=<id>`: the caller's linked id (Asterisk's `linkedid`: the uniqueid of the first
//!   channel of the call, here the caller's call at its gateway), stamped on the agent leg's CDR.
//!
//! Reporting headers between gateways and ACD nodes (values are [ids](valid_id)):
//!
//! * [`LINKED_HEADER`] on an INVITE a gateway sends to a trunk (an ACD node, another site): the
//!   call's linked id, so the next hop's records join it;
//! * [`UNIQUEID_HEADER`] on the gateway's 2xx to an offer: the uniqueid of the agent's call (its
//!   CDR row), the bridged channel of queue_log's CONNECT;
//! * [`REFUSED_HEADER`] on the gateway's own refusal of an offer (no reachable contact, agent in
//!   use, deadline passed, no media port…): the agent's phone was never rung, which Asterisk's
//!   app_queue logs as nothing (a failed `ast_request`/`ast_call`), unlike a phone that refuses
//!   or does not answer (RINGNOANSWER).
//!
//! Sans-IO: time is passed in.

use std::fmt;

/// The header name.
pub const HEADER: &str = "X-CF-Offer";

/// Longest value accepted (bytes); longer is an error.
pub const MAX_LEN: usize = 512;

/// Most parameters accepted.
pub const MAX_PARAMS: usize = 16;

/// The linked id of the call an INVITE belongs to.
pub const LINKED_HEADER: &str = "X-CF-Linkedid";

/// The uniqueid of the gateway's call answering an offer.
pub const UNIQUEID_HEADER: &str = "X-CF-Uniqueid";

/// On the gateway's own refusal of an offer: why (a token), the phone never rang.
pub const REFUSED_HEADER: &str = "X-CF-Refused";

/// Longest id accepted (bytes).
pub const MAX_ID_LEN: usize = 64;

/// Whether `id` is a valid uniqueid / linked id: 1 to [`MAX_ID_LEN`] characters of
/// `[A-Za-z0-9._-]`.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// The value of header `name` (case-insensitive) among `headers` when it is a valid id.
pub fn id_header(headers: &rsip::Headers, name: &str) -> Option<String> {
    headers.iter().find_map(|h| match h {
        rsip::Header::Other(n, v) if n.trim().eq_ignore_ascii_case(name) => {
            let v = v.trim();
            valid_id(v).then(|| v.to_owned())
        }
        _ => None,
    })
}

/// A parsed `X-CF-Offer` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// `queue=`.
    pub queue: Option<String>,
    /// `ringinuse=` (default yes: nothing is refused for being in use).
    pub ringinuse: bool,
    /// `deadline=`, milliseconds since the UNIX epoch.
    pub deadline_ms: Option<u64>,
    /// `linkedid=`: the caller's linked id.
    pub linkedid: Option<String>,
}

impl Default for Offer {
    fn default() -> Self {
        Offer {
            queue: None,
            ringinuse: true,
            deadline_ms: None,
            linkedid: None,
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
        let (mut seen_q, mut seen_r, mut seen_d, mut seen_l) = (false, false, false, false);
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
            } else if name.eq_ignore_ascii_case("linkedid") {
                once(&mut seen_l, "linkedid")?;
                if !valid_id(v) {
                    return Err(bad("linkedid", "an id of up to 64 [A-Za-z0-9._-]"));
                }
                o.linkedid = Some(v.to_owned());
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
        if let Some(l) = self.linkedid.as_deref().filter(|l| valid_id(l)) {
            write!(f, ";linkedid={l}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_round_trips() {
        let o = Offer::parse("queue=support;ringinuse=no;deadline=1765000000123;linkedid=gw-a-7-3")
            .unwrap();
        assert_eq!(
            o,
            Offer {
                queue: Some("support".into()),
                ringinuse: false,
                deadline_ms: Some(1_765_000_000_123),
                linkedid: Some("gw-a-7-3".into()),
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
        assert!(Offer::parse("linkedid=a b").is_err());
        assert!(Offer::parse("linkedid=a\"b").is_err());
        assert!(Offer::parse(&format!("linkedid={}", "x".repeat(65))).is_err());
        assert!(!valid_id("") && !valid_id("a;b") && valid_id("site-a-12.7_x"));
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

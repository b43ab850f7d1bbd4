//! Fabric trust between members (gateways, ACD nodes), sans-IO: an INVITE one member sends
//! another carries `X-CF-Fabric: t=<unix secs>;by=<member>;mac=<hex>`, an HMAC-SHA-256 under the
//! fabric-wide secret (`[fabric] secret_file`) over what the request means:
//!
//! `cf-fabric-1 \n METHOD \n Request-URI \n Call-ID \n CSeq \n From \n To \n X-CF-Offer \n
//! X-CF-Join \n X-CF-Linkedid \n t \n by \n SHA-256(body)` (header values trimmed, absent = empty).
//!
//! * **Spoofing**: without the secret nobody can make a valid MAC; changing any covered part
//!   (the number dialled, the parties, an offer's deadline, a moved caller's join time and
//!   priority, the SDP) breaks it. The source address is not trusted at all.
//! * **Replay**: `t` must be within `max_skew` of the receiver's clock (NTP-level clocks, as
//!   the fabric's liveness already needs), and each MAC is accepted once by a receiver: a
//!   [`ReplayCache`] remembers accepted MACs until their `t` leaves the window (bounded: when
//!   full of live entries, further signed requests are refused and counted, fail closed).
//!   Retransmissions are absorbed by the transaction layer before they get here.
//! * Residual: an eavesdropper on the path between members can read a signed INVITE and send
//!   it once to *another* member within the window; run member links over TLS (or a private
//!   network) where that matters. The secret itself never travels.

use crate::digest::{ct_eq, hmac_sha256, to_hex};
use rsip::headers::UntypedHeader;
use rsip::Header;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};

/// The header carrying the MAC.
pub const HEADER: &str = "X-CF-Fabric";
/// A moved caller's place: `X-CF-Join: joined=<unix ms>;prio=<n>` (covered by the MAC).
pub const JOIN_HEADER: &str = "X-CF-Join";
/// Shortest secret accepted (bytes).
pub const MIN_SECRET: usize = 16;
/// Longest header value looked at (bytes).
const MAX_VALUE: usize = 256;

/// The fabric-wide secret and this member's name.
#[derive(Clone)]
pub struct FabricKey {
    secret: Vec<u8>,
    /// This member's name (`by=`, logs).
    pub name: String,
    /// How far a signature's time may be from ours (default 30 s).
    pub max_skew_secs: u64,
}

impl std::fmt::Debug for FabricKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FabricKey")
            .field("name", &self.name)
            .field("max_skew_secs", &self.max_skew_secs)
            .finish_non_exhaustive()
    }
}

/// Why a signed request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    /// No `X-CF-Fabric` header.
    #[error("no fabric signature")]
    Absent,
    /// The header does not parse.
    #[error("malformed fabric signature")]
    Malformed,
    /// `t` is outside the window.
    #[error("fabric signature too old or from the future ({skew_secs} s off)")]
    Stale {
        /// How far off.
        skew_secs: u64,
    },
    /// The MAC does not match (another secret, or the request was changed).
    #[error("fabric signature does not match (another secret, or a changed request)")]
    BadMac,
    /// The MAC was accepted before.
    #[error("fabric signature replayed")]
    Replayed,
    /// The replay cache is full of live entries.
    #[error("too many signed requests in the window")]
    Overloaded,
}

impl TrustError {
    /// A short token for log lines.
    pub fn token(&self) -> &'static str {
        match self {
            TrustError::Absent => "absent",
            TrustError::Malformed => "malformed",
            TrustError::Stale { .. } => "stale",
            TrustError::BadMac => "bad-mac",
            TrustError::Replayed => "replayed",
            TrustError::Overloaded => "overloaded",
        }
    }
}

/// The `X-CF-Join` value: when a caller first joined the queue (unix ms) and their priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinPlace {
    /// Unix time of the original join, ms.
    pub joined_ms: u64,
    /// Queue priority.
    pub priority: i32,
}

impl JoinPlace {
    /// `joined=<ms>;prio=<n>`.
    pub fn format(&self) -> String {
        format!("joined={};prio={}", self.joined_ms, self.priority)
    }

    /// The `X-CF-Join` header field carrying this place.
    pub fn header(&self) -> rsip::Header {
        rsip::Header::Other(JOIN_HEADER.into(), self.format())
    }

    /// Reads a value made by [`format`](Self::format); `None` if malformed.
    pub fn parse(v: &str) -> Option<JoinPlace> {
        if v.len() > MAX_VALUE {
            return None;
        }
        let mut joined = None;
        let mut prio = 0;
        for p in v.split(';') {
            let (k, val) = p.split_once('=')?;
            match k.trim() {
                "joined" => joined = Some(val.trim().parse().ok()?),
                "prio" => prio = val.trim().parse().ok()?,
                _ => {}
            }
        }
        Some(JoinPlace {
            joined_ms: joined?,
            priority: prio,
        })
    }
}

fn value<'a>(headers: &'a rsip::Headers, name: &str) -> &'a str {
    headers
        .iter()
        .find_map(|h| match h {
            Header::Other(n, v) if n.trim().eq_ignore_ascii_case(name) => Some(v.trim()),
            _ => None,
        })
        .unwrap_or("")
}

fn typed(headers: &rsip::Headers, pick: fn(&Header) -> Option<String>) -> String {
    headers
        .iter()
        .find_map(pick)
        .map(|v| v.trim().to_owned())
        .unwrap_or_default()
}

impl FabricKey {
    /// A key; `None` if the secret is shorter than [`MIN_SECRET`].
    pub fn new(secret: &[u8], name: &str) -> Option<FabricKey> {
        (secret.len() >= MIN_SECRET).then(|| FabricKey {
            secret: secret.to_vec(),
            name: name.to_owned(),
            max_skew_secs: 30,
        })
    }

    fn mac(&self, req: &rsip::Request, t: u64, by: &str) -> [u8; 32] {
        let h = &req.headers;
        let call_id = typed(h, |h| match h {
            Header::CallId(v) => Some(v.value().to_owned()),
            _ => None,
        });
        let cseq = typed(h, |h| match h {
            Header::CSeq(v) => Some(v.value().to_owned()),
            _ => None,
        });
        let from = typed(h, |h| match h {
            Header::From(v) => Some(v.value().to_owned()),
            _ => None,
        });
        let to = typed(h, |h| match h {
            Header::To(v) => Some(v.value().to_owned()),
            _ => None,
        });
        let body = to_hex(&Sha256::digest(&req.body));
        let text = format!(
            "cf-fabric-1\n{}\n{}\n{call_id}\n{cseq}\n{from}\n{to}\n{}\n{}\n{}\n{t}\n{by}\n{body}",
            req.method,
            req.uri,
            value(h, crate::offer::HEADER),
            value(h, JOIN_HEADER),
            value(h, crate::offer::LINKED_HEADER),
        );
        hmac_sha256(&self.secret, text.as_bytes())
    }

    /// Adds (or replaces) the `X-CF-Fabric` header; call it last, after every covered header
    /// and the body are final. `now_secs`: unix time.
    pub fn sign(&self, req: &mut rsip::Request, now_secs: u64) {
        req.headers
            .retain(|h| !matches!(h, Header::Other(n, _) if n.trim().eq_ignore_ascii_case(HEADER)));
        let by: String = self
            .name
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || "._-".contains(*c))
            .take(64)
            .collect();
        let mac = self.mac(req, now_secs, &by);
        req.headers.push(Header::Other(
            HEADER.into(),
            format!("t={now_secs};by={by};mac={}", to_hex(&mac)),
        ));
    }

    /// Checks a request's signature (and records it in `replay`): the signer's name if valid.
    pub fn verify(
        &self,
        req: &rsip::Request,
        now_secs: u64,
        replay: &mut ReplayCache,
    ) -> Result<String, TrustError> {
        let v = value(&req.headers, HEADER);
        if v.is_empty() {
            return Err(TrustError::Absent);
        }
        if v.len() > MAX_VALUE {
            return Err(TrustError::Malformed);
        }
        let (mut t, mut by, mut mac) = (None, None, None);
        for p in v.split(';') {
            let (k, val) = p.split_once('=').ok_or(TrustError::Malformed)?;
            match k.trim() {
                "t" => {
                    t = Some(
                        val.trim()
                            .parse::<u64>()
                            .map_err(|_| TrustError::Malformed)?,
                    )
                }
                "by" => by = Some(val.trim()),
                "mac" => mac = Some(val.trim()),
                _ => {}
            }
        }
        let (Some(t), Some(by), Some(mac)) = (t, by, mac) else {
            return Err(TrustError::Malformed);
        };
        let skew = now_secs.abs_diff(t);
        if skew > self.max_skew_secs {
            return Err(TrustError::Stale { skew_secs: skew });
        }
        let want = to_hex(&self.mac(req, t, by));
        if !ct_eq(want.as_bytes(), mac.as_bytes()) {
            return Err(TrustError::BadMac);
        }
        replay.admit(&want, t + self.max_skew_secs, now_secs)?;
        Ok(by.to_owned())
    }
}

/// MACs accepted and still inside the window, so each is accepted once. Bounded.
#[derive(Debug)]
pub struct ReplayCache {
    seen: HashMap<String, u64>,
    order: VecDeque<(u64, String)>,
    max: usize,
    /// Requests refused because the cache was full.
    pub overloaded: u64,
}

impl Default for ReplayCache {
    fn default() -> Self {
        ReplayCache::new(65_536)
    }
}

impl ReplayCache {
    /// A cache of at most `max` live entries.
    pub fn new(max: usize) -> ReplayCache {
        ReplayCache {
            seen: HashMap::new(),
            order: VecDeque::new(),
            max,
            overloaded: 0,
        }
    }

    fn admit(&mut self, mac: &str, until: u64, now: u64) -> Result<(), TrustError> {
        // Expire in arrival order (`until` is not monotonic across signers' clocks: an entry
        // kept a little longer only refuses a replay for longer).
        while let Some((u, _)) = self.order.front() {
            if *u >= now {
                break;
            }
            if let Some((_, m)) = self.order.pop_front() {
                self.seen.remove(&m);
            }
        }
        if self.seen.contains_key(mac) {
            return Err(TrustError::Replayed);
        }
        if self.seen.len() >= self.max {
            self.overloaded += 1;
            return Err(TrustError::Overloaded);
        }
        self.seen.insert(mac.to_owned(), until);
        self.order.push_back((until, mac.to_owned()));
        Ok(())
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// Whether the request carries a fabric signature at all.
pub fn is_signed(req: &rsip::Request) -> bool {
    !value(&req.headers, HEADER).is_empty()
}

/// The `X-CF-Join` of a request, if present and well formed.
pub fn join_place(req: &rsip::Request) -> Option<JoinPlace> {
    let v = value(&req.headers, JOIN_HEADER);
    (!v.is_empty()).then(|| JoinPlace::parse(v)).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{parse, SipMessage};

    fn invite(extra: &str, body: &str) -> rsip::Request {
        let text = format!(
            "INVITE sip:2001@127.0.0.1:5062 SIP/2.0\r\n\
             Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1\r\n\
             From: <sip:acd@127.0.0.1>;tag=a\r\nTo: <sip:2001@127.0.0.1>\r\n\
             Call-ID: c1\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n{extra}\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        match parse(text.as_bytes()).unwrap() {
            SipMessage::Request(r) => r,
            _ => unreachable!(),
        }
    }

    fn key(s: &str) -> FabricKey {
        FabricKey::new(s.as_bytes(), "acd-1").unwrap()
    }

    /// Through the wire and back: what the receiver parses.
    fn reparse(r: &rsip::Request) -> rsip::Request {
        let bytes = crate::message::serialize(&SipMessage::Request(r.clone()));
        match parse(&bytes).unwrap() {
            SipMessage::Request(r) => r,
            _ => unreachable!(),
        }
    }

    #[test]
    fn signed_requests_verify_once_and_changes_break_them() {
        let k = key("0123456789abcdef-fabric");
        let mut r = invite("X-CF-Join: joined=1700000000000;prio=2\r\n", "v=0\r\n");
        k.sign(&mut r, 1000);
        let r = reparse(&r);
        let mut cache = ReplayCache::default();
        assert_eq!(k.verify(&r, 1010, &mut cache).as_deref(), Ok("acd-1"));
        assert_eq!(k.verify(&r, 1011, &mut cache), Err(TrustError::Replayed));
        // Another secret.
        let mut fresh = ReplayCache::default();
        assert_eq!(
            key("another-secret-of-16").verify(&r, 1000, &mut fresh),
            Err(TrustError::BadMac)
        );
        // Outside the window.
        assert_eq!(
            k.verify(&r, 1031, &mut fresh),
            Err(TrustError::Stale { skew_secs: 31 })
        );
        // Each covered part changed: the join time, the number, the body.
        for (from, to) in [
            ("joined=1700000000000", "joined=1600000000000"),
            ("sip:2001@", "sip:2002@"),
            ("v=0", "v=1"),
            ("CSeq: 1 INVITE", "CSeq: 2 INVITE"),
        ] {
            let text =
                String::from_utf8(crate::message::serialize(&SipMessage::Request(r.clone())))
                    .unwrap()
                    .replace(from, to);
            let SipMessage::Request(t) = parse(text.as_bytes()).unwrap() else {
                unreachable!()
            };
            assert_eq!(
                k.verify(&t, 1000, &mut ReplayCache::default()),
                Err(TrustError::BadMac),
                "{from} -> {to}"
            );
        }
        assert_eq!(
            k.verify(&invite("", ""), 1000, &mut fresh),
            Err(TrustError::Absent)
        );
        assert_eq!(
            k.verify(&invite("X-CF-Fabric: t=x\r\n", ""), 1000, &mut fresh),
            Err(TrustError::Malformed)
        );
        assert!(FabricKey::new(b"short", "x").is_none());
    }

    #[test]
    fn the_replay_cache_is_bounded_and_forgets_old_entries() {
        let k = key("0123456789abcdef-fabric");
        let mut cache = ReplayCache::new(2);
        for i in 0..3u32 {
            let mut r = invite(&format!("X-CF-Linkedid: l{i}\r\n"), "");
            k.sign(&mut r, 100);
            let got = k.verify(&r, 100, &mut cache);
            if i < 2 {
                assert!(got.is_ok(), "{got:?}");
            } else {
                assert_eq!(got, Err(TrustError::Overloaded));
            }
        }
        assert_eq!(cache.overloaded, 1);
        // Past the window the old entries go and new ones are admitted.
        let mut r = invite("X-CF-Linkedid: l9\r\n", "");
        k.sign(&mut r, 200);
        assert!(k.verify(&r, 200, &mut cache).is_ok());
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn join_places_round_trip() {
        let p = JoinPlace {
            joined_ms: 1_700_000_000_123,
            priority: -3,
        };
        assert_eq!(JoinPlace::parse(&p.format()), Some(p));
        assert_eq!(JoinPlace::parse("prio=1"), None);
        assert_eq!(JoinPlace::parse("joined=x"), None);
    }
}

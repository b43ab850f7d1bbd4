//! Services of fabric members: the queue numbers an ACD node serves.
//!
//! A node advertises its numbers with [`crate::Bus::advertise_queues`]; they ride in its
//! heartbeat (`fabric_heartbeat`, attribute `queues='800 801'`), so an advertisement lives
//! exactly as long as the member does: a member silent past the liveness TTL is expired and
//! no longer a provider, and a fresh heartbeat brings it back. Gateways ask
//! [`crate::Bus::queue_providers`] where to send a number.
//!
//! What arrives from the wire is bounded: at most [`MAX_NUMBERS`] numbers of at most
//! [`MAX_NUMBER_LEN`] bytes from `[0-9A-Za-z*#+._-]`; anything else is dropped and counted
//! ([`dropped_numbers`]).

use crate::{Eid, Heartbeat};
use std::sync::atomic::{AtomicU64, Ordering};

/// Most queue numbers one member advertises (more are dropped and counted).
pub const MAX_NUMBERS: usize = 256;
/// Longest queue number (bytes).
pub const MAX_NUMBER_LEN: usize = 32;

static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Advertised numbers dropped since the process started (over a bound or malformed).
pub fn dropped_numbers() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// A live member that serves a queue number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueProvider {
    /// Its EID.
    pub eid: Eid,
    /// Its site (heartbeat).
    pub site: String,
    /// Where it takes SIP (heartbeat `sip`, e.g. `127.0.0.1:5070`); `None` for this process
    /// itself on a bus without one.
    pub sip: Option<String>,
    /// This process itself.
    pub local: bool,
}

fn valid(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= MAX_NUMBER_LEN
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"*#+._-".contains(&b))
}

/// The bounded, valid, de-duplicated numbers of `numbers`, in order (what is dropped is
/// counted).
pub fn sanitize<'a>(numbers: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for n in numbers {
        if out.len() >= MAX_NUMBERS || !valid(n) {
            DROPPED.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if !out.iter().any(|o| o == n) {
            out.push(n.to_owned());
        }
    }
    out
}

/// The heartbeat attribute value (space separated), `None` when there is nothing to advertise.
pub fn encode(numbers: &[String]) -> Option<String> {
    (!numbers.is_empty()).then(|| numbers.join(" "))
}

/// Reads a heartbeat's `queues` attribute (bounded; malformed numbers dropped and counted).
pub fn decode(attr: &str) -> Vec<String> {
    sanitize(attr.split_ascii_whitespace())
}

/// The providers of `number` among `peers` (heartbeat, alive), EID order, plus this process
/// first when `own` serves it.
pub fn providers<'a>(
    own: (Eid, &[String]),
    peers: impl IntoIterator<Item = (&'a Heartbeat, bool)>,
    number: &str,
) -> Vec<QueueProvider> {
    let mut out = Vec::new();
    if own.1.iter().any(|n| n == number) {
        out.push(QueueProvider {
            eid: own.0,
            site: String::new(),
            sip: None,
            local: true,
        });
    }
    let mut remote: Vec<QueueProvider> = peers
        .into_iter()
        .filter(|(hb, alive)| *alive && hb.eid != own.0 && hb.queues.iter().any(|n| n == number))
        .map(|(hb, _)| QueueProvider {
            eid: hb.eid,
            site: hb.site.clone(),
            sip: hb.sip.clone(),
            local: false,
        })
        .collect();
    remote.sort_by_key(|p| p.eid);
    out.extend(remote);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(last: u8, queues: &[&str]) -> Heartbeat {
        Heartbeat {
            eid: Eid([0, 0, 0, 0, 0, last]),
            site: format!("s{last}"),
            role: "acd".into(),
            version: "0".into(),
            time: 0,
            sip: Some(format!("127.0.0.1:50{last}")),
            queues: queues.iter().map(|q| (*q).to_owned()).collect(),
        }
    }

    #[test]
    fn only_live_members_serving_the_number_are_providers() {
        let (a, b, c) = (hb(2, &["800", "801"]), hb(1, &["800"]), hb(3, &["800"]));
        let own = Eid([0, 0, 0, 0, 0, 9]);
        let got = providers((own, &[]), [(&a, true), (&b, true), (&c, false)], "800");
        let eids: Vec<_> = got.iter().map(|p| p.eid).collect();
        assert_eq!(
            eids,
            vec![b.eid, a.eid],
            "EID order, the expired one left out"
        );
        assert_eq!(got[0].sip.as_deref(), Some("127.0.0.1:501"));
        assert!(providers((own, &[]), [(&a, true)], "802").is_empty());
        let local = providers((own, &["802".into()]), [(&a, true)], "802");
        assert!(local.len() == 1 && local[0].local);
    }

    #[test]
    fn decoding_is_bounded_and_drops_what_is_malformed() {
        let before = dropped_numbers();
        assert_eq!(decode(" 800  801 800 "), vec!["800", "801"]);
        assert_eq!(decode("8<0 *45 "), vec!["*45"]);
        let long = "9".repeat(MAX_NUMBER_LEN + 1);
        assert!(decode(&long).is_empty());
        let many: String = (0..MAX_NUMBERS + 10).map(|i| format!("{i} ")).collect();
        assert_eq!(decode(&many).len(), MAX_NUMBERS);
        assert!(dropped_numbers() >= before + 12);
        assert_eq!(encode(&[]), None);
        assert_eq!(
            encode(&["800".into(), "801".into()]).as_deref(),
            Some("800 801")
        );
    }
}

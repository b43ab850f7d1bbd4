//! Sans-IO symmetric RTP latching (one instance per stream: RTP and RTCP latch independently).
//!
//! A phone behind NAT sends from an address its SDP does not say. The relay sends to the source
//! it actually hears from ("latching", as in RFC 4961's symmetric RTP, done unilaterally):
//!
//! * the first accepted packet latches its source; until then the SDP address is used;
//! * once latched, packets from any other source are **rejected** (not counted as media, not
//!   relayed, not latched) while the latched source is active. Only when the latched source
//!   has been silent for at least the re-latch silence (2 s by default) does a packet from a
//!   new source re-latch. This stops a third party from hijacking a running call by spraying
//!   packets at the relay port; the cost is that a phone whose NAT binding changes mid-call is
//!   one-way for up to that silence;
//! * with `strict`, only sources with the SDP address's IP are accepted at all (and nothing is
//!   accepted before the SDP address is known);
//! * a new SDP address ([`Latch::set_expected`]) forgets the latch.
//!
//! Known limit: whoever sends first wins the latch (an attacker racing the phone at call start,
//! or one that keeps sending after the phone went silent); `strict` narrows that to the
//! phone's own IP.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The default silence of the latched source after which a new source may re-latch.
pub const DEFAULT_RELATCH_SILENCE: Duration = Duration::from_secs(2);

/// What to do with a packet, per [`Latch::on_packet`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatchVerdict {
    /// From the latched source.
    Accepted,
    /// Accepted, and its source is now the latched one (the destination may have changed).
    Latched,
    /// From a source that may not latch now: drop it.
    Rejected,
}

/// Latching state of one stream.
#[derive(Debug, Clone)]
pub struct Latch {
    expected: Option<SocketAddr>,
    latched: Option<SocketAddr>,
    last_seen: Option<Instant>,
    strict: bool,
    silence: Duration,
}

impl Latch {
    /// A latch with nothing expected and nothing latched.
    pub fn new(strict: bool, silence: Duration) -> Self {
        Latch {
            expected: None,
            latched: None,
            last_seen: None,
            strict,
            silence,
        }
    }

    /// Sets the address from the peer's SDP and forgets any latched source.
    pub fn set_expected(&mut self, addr: Option<SocketAddr>) {
        self.expected = addr;
        self.latched = None;
        self.last_seen = None;
    }

    /// The address from SDP.
    pub fn expected(&self) -> Option<SocketAddr> {
        self.expected
    }

    /// The latched source, if any.
    pub fn latched(&self) -> Option<SocketAddr> {
        self.latched
    }

    /// Where to send: the latched source, else the SDP address.
    pub fn destination(&self) -> Option<SocketAddr> {
        self.latched.or(self.expected)
    }

    /// Classifies a packet from `source` arriving at `now`.
    pub fn on_packet(&mut self, source: SocketAddr, now: Instant) -> LatchVerdict {
        if self.latched == Some(source) {
            self.last_seen = Some(now);
            return LatchVerdict::Accepted;
        }
        if self.strict {
            match self.expected {
                Some(e) if e.ip().to_canonical() == source.ip().to_canonical() => {}
                _ => return LatchVerdict::Rejected,
            }
        }
        let may_latch = match (self.latched, self.last_seen) {
            (None, _) | (Some(_), None) => true,
            (Some(_), Some(seen)) => now.saturating_duration_since(seen) >= self.silence,
        };
        if !may_latch {
            return LatchVerdict::Rejected;
        }
        self.latched = Some(source);
        self.last_seen = Some(now);
        LatchVerdict::Latched
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn first_packet_latches_even_when_sdp_differs() {
        let mut l = Latch::new(false, DEFAULT_RELATCH_SILENCE);
        assert_eq!(l.destination(), None);
        l.set_expected(Some(a("10.0.0.1:4000")));
        assert_eq!(l.destination(), Some(a("10.0.0.1:4000")));
        let t = Instant::now();
        assert_eq!(
            l.on_packet(a("203.0.113.5:31000"), t),
            LatchVerdict::Latched
        );
        assert_eq!(l.destination(), Some(a("203.0.113.5:31000")));
        assert_eq!(
            l.on_packet(a("203.0.113.5:31000"), t),
            LatchVerdict::Accepted
        );
    }

    #[test]
    fn no_relatch_while_latched_source_is_active() {
        let mut l = Latch::new(false, DEFAULT_RELATCH_SILENCE);
        let t0 = Instant::now();
        let phone = a("203.0.113.5:31000");
        let attacker = a("198.51.100.9:5555");
        l.on_packet(phone, t0);
        // The attacker keeps trying while the phone talks every second.
        for s in 1..10u64 {
            let t = t0 + Duration::from_secs(s);
            assert_eq!(l.on_packet(attacker, t), LatchVerdict::Rejected);
            assert_eq!(l.on_packet(phone, t), LatchVerdict::Accepted);
        }
        assert_eq!(l.latched(), Some(phone));
        // 1.999 s of silence is not enough; 2 s is.
        let last = t0 + Duration::from_secs(9);
        assert_eq!(
            l.on_packet(attacker, last + Duration::from_millis(1999)),
            LatchVerdict::Rejected
        );
        assert_eq!(
            l.on_packet(attacker, last + Duration::from_secs(2)),
            LatchVerdict::Latched
        );
        assert_eq!(l.destination(), Some(attacker));
        // Rejected packets did not refresh the new latch's activity either way.
        assert_eq!(
            l.on_packet(phone, last + Duration::from_secs(3)),
            LatchVerdict::Rejected
        );
    }

    #[test]
    fn strict_accepts_only_the_sdp_ip() {
        let mut l = Latch::new(true, DEFAULT_RELATCH_SILENCE);
        let t = Instant::now();
        assert_eq!(l.on_packet(a("10.0.0.1:4000"), t), LatchVerdict::Rejected);
        l.set_expected(Some(a("10.0.0.1:4000")));
        assert_eq!(l.on_packet(a("10.0.0.2:4000"), t), LatchVerdict::Rejected);
        assert_eq!(l.on_packet(a("10.0.0.1:4002"), t), LatchVerdict::Latched);
        assert_eq!(l.destination(), Some(a("10.0.0.1:4002")));
        // IPv4-mapped IPv6 (dual-stack socket) counts as the same IP.
        let mut l = Latch::new(true, Duration::ZERO);
        l.set_expected(Some(a("10.0.0.1:4000")));
        assert_eq!(
            l.on_packet(a("[::ffff:10.0.0.1]:4000"), t),
            LatchVerdict::Latched
        );
    }

    #[test]
    fn new_sdp_forgets_latch() {
        let mut l = Latch::new(false, DEFAULT_RELATCH_SILENCE);
        let t = Instant::now();
        l.on_packet(a("203.0.113.5:31000"), t);
        l.set_expected(Some(a("10.0.0.1:5000")));
        assert_eq!(l.latched(), None);
        assert_eq!(l.destination(), Some(a("10.0.0.1:5000")));
        assert_eq!(l.on_packet(a("203.0.113.6:1000"), t), LatchVerdict::Latched);
    }
}

//! Reliable provisional responses (RFC 3262), sans-IO: option tags (`100rel`, `timer`) in
//! `Supported`/`Require`, the `RSeq` and `RAck` headers, and [`ReliableSender`], the UAS side
//! that sends 1xx reliably: `Require: 100rel` + `RSeq`, retransmitted at T1 doubling until
//! the matching PRACK, one unacknowledged at a time (later ones wait), given up after 64·T1.
//! No clock: time is passed in, the next retransmission is data ([`ReliableSender::poll_timeout`]).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rsip::headers::UntypedHeader;
use rsip::{Header, Headers, Method, Response};

/// Most reliable provisional responses queued behind an unacknowledged one; more are dropped
/// (a callee that sends hundreds of 180s must not grow our memory).
pub const MAX_QUEUED: usize = 8;

/// The option tags of every `Supported` (`k`) or `Require` header of `headers` (lowercased).
pub fn option_tags(headers: &Headers, require: bool) -> Vec<String> {
    let mut out = Vec::new();
    for h in headers.iter() {
        let v = match h {
            Header::Supported(s) if !require => s.value(),
            Header::Require(r) if require => r.value(),
            Header::Other(n, v)
                if !require
                    && (n.trim().eq_ignore_ascii_case("k")
                        || n.trim().eq_ignore_ascii_case("supported")) =>
            {
                v.as_str()
            }
            Header::Other(n, v) if require && n.trim().eq_ignore_ascii_case("require") => {
                v.as_str()
            }
            _ => continue,
        };
        for t in v.split(',') {
            let t = t.trim();
            if !t.is_empty() && out.len() < 64 {
                out.push(t.to_ascii_lowercase());
            }
        }
    }
    out
}

/// Whether `tag` is in a `Supported` or `Require` header of `headers`.
pub fn supports(headers: &Headers, tag: &str) -> bool {
    option_tags(headers, false).iter().any(|t| t == tag) || requires(headers, tag)
}

/// Whether `tag` is in a `Require` header of `headers`.
pub fn requires(headers: &Headers, tag: &str) -> bool {
    option_tags(headers, true).iter().any(|t| t == tag)
}

/// The value of the first extension header `name` (case-insensitive), trimmed.
pub fn other_header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers.iter().find_map(|h| match h {
        Header::Other(n, v) if n.trim().eq_ignore_ascii_case(name) => Some(v.trim()),
        _ => None,
    })
}

/// `RSeq` of a provisional response (1..=2^31-1), if valid.
pub fn rseq(headers: &Headers) -> Option<u32> {
    other_header(headers, "RSeq")?
        .parse::<u32>()
        .ok()
        .filter(|n| (1..=0x7fff_ffff).contains(n))
}

/// An `RAck` value: the RSeq acknowledged, and the CSeq number and method of the request
/// the provisional response answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RAck {
    /// Acknowledged RSeq.
    pub rseq: u32,
    /// CSeq number of the INVITE.
    pub cseq: u32,
    /// Its method (INVITE).
    pub method: String,
}

impl RAck {
    /// Parses `RSeq CSeq-number Method`.
    pub fn parse(value: &str) -> Option<RAck> {
        let mut it = value.split_whitespace();
        let rseq = it.next()?.parse().ok()?;
        let cseq = it.next()?.parse().ok()?;
        let method = it.next()?.to_owned();
        if it.next().is_some() || method.len() > 32 {
            return None;
        }
        Some(RAck { rseq, cseq, method })
    }

    /// The `RAck` of a request, if present and valid.
    pub fn of(headers: &Headers) -> Option<RAck> {
        RAck::parse(other_header(headers, "RAck")?)
    }

    /// As a header.
    pub fn header(&self) -> Header {
        Header::Other(
            "RAck".into(),
            format!("{} {} {}", self.rseq, self.cseq, self.method),
        )
    }
}

/// What [`ReliableSender::handle_timeout`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReliableTimeout {
    /// Nothing due.
    Nothing,
    /// Send this again.
    Resend(Response),
    /// No PRACK for 64·T1: reject the INVITE (RFC 3262 §3: 5xx).
    GiveUp,
}

#[derive(Debug)]
struct InFlight {
    rseq: u32,
    response: Response,
    next: Instant,
    interval: Duration,
    deadline: Instant,
}

/// The UAS side of RFC 3262 for one INVITE server transaction.
#[derive(Debug)]
pub struct ReliableSender {
    cseq: u32,
    next_rseq: u32,
    t1: Duration,
    in_flight: Option<InFlight>,
    queue: VecDeque<Response>,
    /// Provisional responses dropped because the queue was full.
    pub dropped: u64,
    /// Set by [`stop`](Self::stop): a final response went out.
    stopped: bool,
}

impl ReliableSender {
    /// For the INVITE with CSeq number `cseq`; the first RSeq is `first_rseq` (RFC 3262 §3: a
    /// random value below 2^31).
    pub fn new(cseq: u32, first_rseq: u32, t1: Duration) -> Self {
        ReliableSender {
            cseq,
            next_rseq: first_rseq.clamp(1, 0x3fff_ffff),
            t1,
            in_flight: None,
            queue: VecDeque::new(),
            dropped: 0,
            stopped: false,
        }
    }

    /// A provisional response (not 100) to send reliably: returns it stamped with
    /// `Require: 100rel` and `RSeq` if it may go now, `None` if it waits for the PRACK of an
    /// earlier one (it is sent when that PRACK arrives).
    pub fn send(&mut self, response: Response, now: Instant) -> Option<Response> {
        if self.stopped {
            return None;
        }
        if self.in_flight.is_some() {
            if self.queue.len() < MAX_QUEUED {
                self.queue.push_back(response);
            } else {
                self.dropped += 1;
            }
            return None;
        }
        let rseq = self.next_rseq;
        self.next_rseq = self.next_rseq.wrapping_add(1);
        let mut r = response;
        r.headers
            .retain(|h| !matches!(h, Header::Other(n, _) if n.trim().eq_ignore_ascii_case("rseq")));
        r.headers
            .push(Header::Require(rsip::headers::Require::new("100rel")));
        r.headers
            .push(Header::Other("RSeq".into(), rseq.to_string()));
        self.in_flight = Some(InFlight {
            rseq,
            response: r.clone(),
            next: now + self.t1,
            interval: self.t1,
            deadline: now + self.t1 * 64,
        });
        Some(r)
    }

    /// Whether a reliable provisional response waits for its PRACK.
    pub fn unacknowledged(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Whether the one waiting for its PRACK carries a body (an SDP): a 2xx must wait for
    /// that PRACK (RFC 3262 §3).
    pub fn unacknowledged_with_body(&self) -> bool {
        self.in_flight
            .as_ref()
            .is_some_and(|f| !f.response.body.is_empty())
    }

    /// A PRACK with `rack`: `Ok(next)` if it acknowledges the response in flight (`next`: the
    /// queued response that may go now, stamped), `Err(())` if it matches nothing (answer 481).
    #[allow(clippy::result_unit_err)]
    pub fn on_prack(&mut self, rack: &RAck, now: Instant) -> Result<Option<Response>, ()> {
        let ok = self.in_flight.as_ref().is_some_and(|f| {
            f.rseq == rack.rseq
                && rack.cseq == self.cseq
                && rack
                    .method
                    .eq_ignore_ascii_case(Method::Invite.to_string().as_str())
        });
        if !ok {
            return Err(());
        }
        self.in_flight = None;
        match self.queue.pop_front() {
            Some(next) => Ok(self.send(next, now)),
            None => Ok(None),
        }
    }

    /// A final response went out: nothing more is retransmitted or sent.
    pub fn stop(&mut self) {
        self.stopped = true;
        self.in_flight = None;
        self.queue.clear();
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.in_flight.as_ref().map(|f| f.next.min(f.deadline))
    }

    /// Runs the retransmission timer.
    pub fn handle_timeout(&mut self, now: Instant) -> ReliableTimeout {
        let Some(f) = self.in_flight.as_mut() else {
            return ReliableTimeout::Nothing;
        };
        if now >= f.deadline {
            self.stop();
            return ReliableTimeout::GiveUp;
        }
        if now < f.next {
            return ReliableTimeout::Nothing;
        }
        // RFC 3262 §3: the interval starts at T1 and doubles with each retransmission.
        f.interval *= 2;
        f.next = now + f.interval;
        ReliableTimeout::Resend(f.response.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{parse, SipMessage};

    fn ringing() -> Response {
        let text = "SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKx\r\n\
                    From: <sip:a@x>;tag=1\r\nTo: <sip:b@x>;tag=2\r\nCall-ID: c\r\n\
                    CSeq: 7 INVITE\r\nContent-Length: 0\r\n\r\n";
        match parse(text.as_bytes()) {
            Ok(SipMessage::Response(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn retransmits_at_t1_doubling_until_prack_and_queues_the_next() {
        let t0 = Instant::now();
        let t1 = Duration::from_millis(500);
        let mut s = ReliableSender::new(7, 100, t1);
        let first = s.send(ringing(), t0).expect("goes now");
        assert_eq!(rseq(&first.headers), Some(100));
        assert!(requires(&first.headers, "100rel"));
        assert!(
            s.send(ringing(), t0).is_none(),
            "second waits for the PRACK"
        );
        assert_eq!(s.poll_timeout(), Some(t0 + t1));
        assert_eq!(s.handle_timeout(t0 + t1 / 2), ReliableTimeout::Nothing);
        let mut at = t0;
        let mut gaps = Vec::new();
        for _ in 0..3 {
            let due = s.poll_timeout().expect("armed");
            gaps.push(due - at);
            at = due;
            assert!(matches!(s.handle_timeout(due), ReliableTimeout::Resend(_)));
        }
        assert_eq!(gaps, vec![t1, t1 * 2, t1 * 4]);
        let wrong = RAck::parse("99 7 INVITE").expect("rack");
        assert_eq!(s.on_prack(&wrong, at), Err(()));
        let rack = RAck::parse("100 7 INVITE").expect("rack");
        let next = s.on_prack(&rack, at).expect("matches").expect("queued one");
        assert_eq!(rseq(&next.headers), Some(101));
        assert_eq!(s.on_prack(&rack, at), Err(()), "already acknowledged");
    }

    #[test]
    fn gives_up_after_64_t1_and_stops_on_final() {
        let t0 = Instant::now();
        let t1 = Duration::from_millis(500);
        let mut s = ReliableSender::new(1, 1, t1);
        s.send(ringing(), t0).expect("goes");
        let now = loop {
            let now = s.poll_timeout().expect("armed");
            if let ReliableTimeout::GiveUp = s.handle_timeout(now) {
                break now;
            }
        };
        assert_eq!(now, t0 + t1 * 64);
        assert!(s.poll_timeout().is_none());
        let mut s = ReliableSender::new(1, 1, t1);
        s.send(ringing(), t0).expect("goes");
        s.stop();
        assert!(s.poll_timeout().is_none());
        assert!(s.send(ringing(), t0).is_none());
    }

    #[test]
    fn header_parsing_is_bounded_and_lenient() {
        assert_eq!(RAck::parse("1 2 INVITE extra"), None);
        assert_eq!(RAck::parse("x 2 INVITE"), None);
        assert_eq!(
            RAck::parse(" 5  9 INVITE "),
            Some(RAck {
                rseq: 5,
                cseq: 9,
                method: "INVITE".into()
            })
        );
        let mut h = Headers::default();
        h.push(Header::Other("k".into(), "timer, 100REL".into()));
        h.push(Header::Other("RSeq".into(), "0".into()));
        assert!(supports(&h, "100rel") && supports(&h, "timer"));
        assert!(!requires(&h, "100rel"));
        assert_eq!(rseq(&h), None, "RSeq 0 is invalid");
    }
}

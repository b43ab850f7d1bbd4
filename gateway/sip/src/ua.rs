//! INVITE dialog usages, sans-IO: what RFC 3261 leaves to the transaction user after a 2xx.
//!
//! * [`UasInvite`]: our 2xx to an INVITE, retransmitted at T1, 2·T1, … capped at T2 until its
//!   ACK arrives (§13.3.1.4); no ACK within 64·T1 gives [`UasEvent::AckTimeout`] (the owner
//!   ends the session with a BYE). The timer values are the transaction layer's
//!   ([`tx::Config`]), never written again. A 2xx held back for a PRACK (RFC 3262 §3) waits
//!   unsent until [`UasInvite::release`].
//! * [`UacInvite`]: the ACK for a 2xx to our INVITE (§13.2.2.4), built by the dialog with the
//!   INVITE's CSeq number; a retransmitted 2xx gets the same ACK again.
//!
//! [`ToSend`] is what a user-agent core asks of its driver (request, response, stateless
//! message, CANCEL), and [`ToSend::apply`] hands it to the transaction layer.
//!
//! Both usages are driven like the other cores: `poll_timeout` says when, `handle_timeout(now)` runs
//! what is due, and the owner sends what they return.

use std::time::{Duration, Instant};

use rsip::{Request, Response, SipMessage};
use tracing::{debug, warn};

use crate::dialog::Dialog;
use crate::transaction::{self as tx, parse, TransactionKey, TransactionLayer};

/// What a [`UasInvite`] asks of its owner.
#[derive(Debug, Clone, PartialEq)]
pub enum UasEvent {
    /// Send the 2xx again through its server transaction.
    Retransmit(Response),
    /// No ACK in 64·T1: the session is over (send BYE).
    AckTimeout,
}

/// Our 2xx to an INVITE until its ACK (§13.3.1.4).
#[derive(Debug, Clone)]
pub struct UasInvite {
    response: Response,
    t1: Duration,
    t2: Duration,
    /// When the next retransmission is due (None: held for a PRACK, or over).
    next: Option<Instant>,
    interval: Duration,
    /// The ACK deadline (None: acknowledged or given up).
    deadline: Option<Instant>,
}

impl UasInvite {
    /// The 2xx `response` was sent at `now`: retransmit it from `now + T1`.
    pub fn answered(response: Response, timers: &tx::Config, now: Instant) -> UasInvite {
        let mut u = UasInvite::held(response, timers, now);
        u.next = Some(now + u.t1);
        u
    }

    /// The 2xx `response` is held back (not sent) until [`release`](Self::release); its ACK
    /// deadline (64·T1) runs from `now` all the same.
    pub fn held(response: Response, timers: &tx::Config, now: Instant) -> UasInvite {
        let t1 = timers.t1.max(Duration::from_millis(1));
        UasInvite {
            response,
            t1,
            t2: timers.t2.max(t1),
            next: None,
            interval: t1,
            deadline: Some(now + t1.saturating_mul(64)),
        }
    }

    /// A held 2xx goes now: the response to send; retransmissions and a fresh 64·T1 deadline
    /// start at `now`.
    pub fn release(&mut self, now: Instant) -> Response {
        self.interval = self.t1;
        self.next = Some(now + self.t1);
        self.deadline = Some(now + self.t1.saturating_mul(64));
        self.response.clone()
    }

    /// The 2xx.
    pub fn response(&self) -> &Response {
        &self.response
    }

    /// The ACK arrived: nothing more to do.
    pub fn on_ack(&mut self) {
        self.next = None;
        self.deadline = None;
    }

    /// Still waiting for the ACK.
    pub fn is_pending(&self) -> bool {
        self.deadline.is_some()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next run (None: never).
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.next, self.deadline) {
            (Some(n), Some(d)) => Some(n.min(d)),
            (None, d) => d,
            (n, None) => n,
        }
    }

    /// What is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<UasEvent> {
        let deadline = self.deadline?;
        if now >= deadline {
            self.on_ack();
            return Some(UasEvent::AckTimeout);
        }
        let next = self.next?;
        if now < next {
            return None;
        }
        self.interval = self.interval.saturating_mul(2).min(self.t2);
        self.next = Some(now + self.interval);
        Some(UasEvent::Retransmit(self.response.clone()))
    }
}

/// Our INVITE, for the ACK of its 2xx (§13.2.2.4).
#[derive(Debug, Clone)]
pub struct UacInvite {
    seq: u32,
    ack: Option<Request>,
}

impl UacInvite {
    /// For the INVITE we sent (its CSeq number; 1 if it has none).
    pub fn new(invite: &Request) -> UacInvite {
        UacInvite {
            seq: parse::cseq(&invite.headers).map_or(1, |c| c.seq),
            ack: None,
        }
    }

    /// The ACK for a 2xx, built by `dialog` with a Via from `via` the first time; the same
    /// ACK for every retransmission of the 2xx.
    pub fn ack(&mut self, dialog: &Dialog, via: impl FnOnce() -> String) -> Request {
        self.ack
            .get_or_insert_with(|| dialog.ack(self.seq, &via()))
            .clone()
    }
}

/// The keys of `entries` whose instant (`at`; None: not armed) has come by `now`: the
/// timers a core keeps as data, due.
pub fn due<'a, K: Copy + 'a, V: 'a>(
    entries: impl IntoIterator<Item = (&'a K, &'a V)>,
    now: Instant,
    at: impl Fn(&V) -> Option<Instant>,
) -> Vec<K> {
    entries
        .into_iter()
        .filter(|(_, v)| at(v).is_some_and(|t| now >= t))
        .map(|(k, _)| *k)
        .collect()
}

/// A SIP message a user-agent core (the gateway's B2BUA, the ACD's call control) asks its
/// driver to send; `P` is the destination (the network layer's `Peer`).
#[derive(Debug, Clone, PartialEq)]
pub enum ToSend<P> {
    /// Start a client transaction for `request` to `dest`; its key is `key`.
    Request {
        /// The key the request's branch gives.
        key: TransactionKey,
        /// The request.
        request: Request,
        /// Where to.
        dest: P,
    },
    /// Respond through server transaction `key`.
    Respond {
        /// The server transaction.
        key: TransactionKey,
        /// The response.
        response: Response,
    },
    /// Send outside any transaction (the ACK for a 2xx).
    Stateless {
        /// The message.
        message: SipMessage,
        /// Where to.
        dest: P,
    },
    /// CANCEL the pending client INVITE transaction `key` (built from it).
    Cancel {
        /// The INVITE client transaction.
        key: TransactionKey,
        /// Where it went.
        dest: P,
    },
}

impl<P: Clone> ToSend<P> {
    /// Hands this to the transaction layer; `transport` says how a destination is reached.
    /// A request the layer refuses gives back its key (the core takes it as timed out);
    /// responses and CANCELs that cannot go are only logged (their transaction is gone).
    pub fn apply(
        self,
        tl: &mut TransactionLayer<P>,
        transport: impl Fn(&P) -> tx::Transport,
        now: Instant,
    ) -> Result<(), TransactionKey> {
        match self {
            ToSend::Request { key, request, dest } => {
                let kind = transport(&dest);
                match tl.send_request(request, kind, dest, now) {
                    Ok(got) if got == key => {}
                    Ok(got) => warn!(%got, %key, "transaction key mismatch"),
                    Err(e) => {
                        warn!(error = %e, "request not sent");
                        return Err(key);
                    }
                }
            }
            ToSend::Respond { key, response } => {
                if let Err(e) = tl.send_response(&key, response, now) {
                    debug!(error = %e, "response not sent");
                }
            }
            ToSend::Stateless { message, dest } => {
                let kind = transport(&dest);
                tl.send_stateless(message, dest, kind);
            }
            ToSend::Cancel { key, dest } => match tl.build_cancel(&key) {
                Ok(c) => {
                    let kind = transport(&dest);
                    if let Err(e) = tl.send_request(c, kind, dest, now) {
                        debug!(error = %e, "CANCEL not sent");
                    }
                }
                Err(e) => debug!(error = %e, "nothing to cancel"),
            },
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{parse as parse_msg, SipMessage};

    fn ok() -> Response {
        let text = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKa1\r\n\
                    From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: x\r\n\
                    CSeq: 1 INVITE\r\nContact: <sip:c@10.0.0.2>\r\nContent-Length: 0\r\n\r\n";
        match parse_msg(text.as_bytes()) {
            Ok(SipMessage::Response(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    fn timers() -> tx::Config {
        tx::Config {
            t1: Duration::from_millis(100),
            t2: Duration::from_millis(400),
            ..tx::Config::default()
        }
    }

    /// Runs `u` in virtual time in 1 ms steps until `until`; the offsets (ms from `t0`) of its
    /// retransmissions and of the timeout.
    fn run(u: &mut UasInvite, t0: Instant, until: u64) -> (Vec<u64>, Option<u64>) {
        let mut sent = Vec::new();
        let mut timeout = None;
        let mut now = t0;
        let mut steps = 0;
        while now <= t0 + Duration::from_millis(until) {
            // A usage that stays due without time passing would spin here: fail instead.
            steps += 1;
            assert!(steps < 10_000, "no progress at {now:?}");
            match u.poll_timeout() {
                Some(t) if t <= now => {}
                Some(t) => {
                    now = t;
                    continue;
                }
                None => break,
            }
            let ms = u64::try_from((now - t0).as_millis()).unwrap();
            match u.handle_timeout(now) {
                Some(UasEvent::Retransmit(r)) => {
                    assert_eq!(r, ok());
                    sent.push(ms);
                }
                Some(UasEvent::AckTimeout) => timeout = Some(ms),
                None => panic!("poll_timeout said {ms} ms but nothing was due"),
            }
        }
        (sent, timeout)
    }

    #[test]
    fn retransmits_at_t1_doubling_capped_at_t2_and_gives_up_at_64_t1() {
        let t0 = Instant::now();
        let mut u = UasInvite::answered(ok(), &timers(), t0);
        let (sent, timeout) = run(&mut u, t0, 10_000);
        // T1 = 100, T2 = 400: intervals 100, 200, 400, 400, … until 64·T1 = 6400.
        let mut expected = vec![100, 300, 700];
        let mut t = 700;
        while t + 400 < 6400 {
            t += 400;
            expected.push(t);
        }
        assert_eq!(sent, expected);
        assert_eq!(timeout, Some(6400));
        assert!(!u.is_pending());
        assert_eq!(u.poll_timeout(), None);
    }

    #[test]
    fn the_ack_stops_retransmission() {
        let t0 = Instant::now();
        let mut u = UasInvite::answered(ok(), &timers(), t0);
        let (sent, _) = run(&mut u, t0, 350);
        assert_eq!(sent, vec![100, 300]);
        u.on_ack();
        assert_eq!(u.poll_timeout(), None);
        assert_eq!(u.handle_timeout(t0 + Duration::from_secs(60)), None);
    }

    #[test]
    fn a_held_2xx_waits_for_its_release_then_retransmits_from_there() {
        let t0 = Instant::now();
        let mut u = UasInvite::held(ok(), &timers(), t0);
        assert_eq!(u.poll_timeout(), Some(t0 + Duration::from_millis(6400)));
        assert_eq!(u.handle_timeout(t0 + Duration::from_millis(1000)), None);
        let t1 = t0 + Duration::from_millis(1000);
        assert_eq!(u.release(t1), ok());
        let (sent, timeout) = run(&mut u, t1, 800);
        assert_eq!(sent, vec![100, 300, 700]);
        assert_eq!(timeout, None);
        // Never released: the ACK deadline still ends it.
        let mut v = UasInvite::held(ok(), &timers(), t0);
        assert_eq!(run(&mut v, t0, 10_000), (vec![], Some(6400)));
    }

    #[test]
    fn due_keys_are_those_armed_at_or_before_now() {
        let t0 = Instant::now();
        let ms = |n| Some(t0 + Duration::from_millis(n));
        let timers =
            std::collections::BTreeMap::from([(1, ms(10)), (2, None), (3, ms(5)), (4, ms(11))]);
        assert_eq!(
            due(&timers, t0 + Duration::from_millis(10), |t| *t),
            vec![1, 3]
        );
        assert!(due(&timers, t0, |t| *t).is_empty());
    }

    #[test]
    fn the_uac_acks_every_2xx_with_one_ack_of_the_invite_cseq() {
        let invite = match parse_msg(
            b"INVITE sip:c@d SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKa1\r\n\
              From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: x\r\nCSeq: 7 INVITE\r\n\
              Contact: <sip:a@10.0.0.1>\r\nContent-Length: 0\r\n\r\n",
        ) {
            Ok(SipMessage::Request(r)) => r,
            other => panic!("{other:?}"),
        };
        let mut resp = ok();
        resp.headers = resp
            .headers
            .iter()
            .map(|h| match h {
                rsip::Header::CSeq(_) => {
                    rsip::Header::CSeq(rsip::headers::UntypedHeader::new("7 INVITE"))
                }
                h => h.clone(),
            })
            .collect::<Vec<_>>()
            .into();
        let d = Dialog::uac(&invite, &resp).unwrap();
        let mut uac = UacInvite::new(&invite);
        let mut vias = 0;
        let a1 = uac.ack(&d, || {
            vias += 1;
            "SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKack1".into()
        });
        let a2 = uac.ack(&d, || {
            vias += 1;
            "SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKack2".into()
        });
        assert_eq!(a1, a2);
        assert_eq!(vias, 1);
        assert_eq!(a1.method, rsip::Method::Ack);
        assert_eq!(parse::cseq(&a1.headers).unwrap().seq, 7);
        assert_eq!(a1.uri.to_string(), "sip:c@10.0.0.2");
    }
}

//! The arbiter against double offering and ghost calls: an ACD's offer (`X-CF-Offer`, the
//! typed [`crate::offer::Offer`]) that arrives after its deadline is refused (480 + Reason: the
//! ACD gave up, nobody may ring for it); with `ringinuse=no` it is refused (486, "try the
//! next") while the agent's device is in any call, so two ACD nodes racing for one agent get
//! one call.

use std::time::{Instant, SystemTime};

use tracing::{debug, info};

use super::{Core, GatewayEvent};
use crate::b2bua;
use crate::offer::{Offer, OfferError, HEADER, REFUSED_HEADER};
use crate::sip::message::{self, Request};
use crate::sip::transaction::TransactionKey;

/// The `X-CF-Offer` of a request, parsed (`None`: not an offer).
pub(super) fn offer_of(req: &Request) -> Option<Result<Offer, OfferError>> {
    req.headers.iter().find_map(|h| match h {
        rsip::Header::Other(n, v) if n.trim().eq_ignore_ascii_case(HEADER) => Some(Offer::parse(v)),
        _ => None,
    })
}

/// What the arbiter decided about an INVITE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Not an offer, or one the agent may get: route it as dialled.
    Ring,
    /// `ringinuse=no` and the agent is in a call: 486 from the B2BUA (a refused call).
    InUse,
    /// Refused before routing: `code` with a Reason `text` and `X-CF-Refused: reason`.
    Refuse {
        /// 400 (bad offer) or 480 (deadline passed).
        code: u16,
        /// `bad-offer` or `deadline`.
        reason: &'static str,
        /// For `deadline`: how late it arrived (ms).
        late_ms: u64,
        /// The Reason header's text.
        text: String,
    },
}

/// Decides about `offer` for an agent whose device `in_call` (is in a call now), at `now_ms`
/// (UNIX ms).
pub(super) fn arbitrate(
    offer: Option<&Result<Offer, OfferError>>,
    in_call: bool,
    now_ms: u64,
) -> Verdict {
    match offer {
        None => Verdict::Ring,
        Some(Err(e)) => Verdict::Refuse {
            code: 400,
            reason: "bad-offer",
            late_ms: 0,
            text: e.to_string(),
        },
        Some(Ok(o)) => match o.deadline_ms {
            Some(d) if o.expired(now_ms) => Verdict::Refuse {
                code: 480,
                reason: "deadline",
                late_ms: now_ms.saturating_sub(d),
                text: "offer deadline passed".to_owned(),
            },
            _ if !o.ringinuse && in_call => Verdict::InUse,
            _ => Verdict::Ring,
        },
    }
}

fn unix_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(u64::MAX)
}

impl Core {
    /// Applies the arbiter to an INVITE routed to `target`: `None` when it was refused here
    /// (answered); else the offer's queue, if any (its music on hold), with `target` a 486
    /// for an agent in use.
    pub(super) fn arbitrate_offer(
        &mut self,
        key: &TransactionKey,
        req: &Request,
        target: &mut b2bua::Target,
        now: Instant,
    ) -> Option<Option<String>> {
        let offer = offer_of(req);
        let device = match &*target {
            b2bua::Target::Device { device, .. } => device.clone(),
            _ => String::new(),
        };
        let queue = offer
            .as_ref()
            .and_then(|o| o.as_ref().ok())
            .and_then(|o| o.queue.clone());
        let in_call = !device.is_empty() && self.b2bua.calls_of(&device) > 0;
        match arbitrate(offer.as_ref(), in_call, unix_ms()) {
            Verdict::Ring => Some(queue),
            Verdict::InUse => {
                info!(%device, "offer refused: the agent is already in a call");
                *target = b2bua::Target::Reject(486);
                let _ = self.events.send(GatewayEvent::OfferRefused {
                    device,
                    reason: "in-use",
                    late_ms: 0,
                });
                Some(queue)
            }
            Verdict::Refuse {
                code,
                reason,
                late_ms,
                text,
            } => {
                if reason == "deadline" {
                    info!(%device, late_ms, "offer refused: it arrived after its deadline");
                } else {
                    info!(%device, error = %text, "offer refused");
                }
                let mut r = message::response_for(req, code, "");
                r.headers.push(rsip::Header::Other(
                    "Reason".into(),
                    format!(
                        "SIP;cause={code};text=\"{}\"",
                        text.replace(['"', '\\'], "'")
                    ),
                ));
                r.headers
                    .push(rsip::Header::Other(REFUSED_HEADER.into(), reason.into()));
                if let Err(e) = self.tl.send_response(key, r, now) {
                    debug!(error = %e, "response not sent");
                }
                let _ = self.events.send(GatewayEvent::OfferRefused {
                    device,
                    reason,
                    late_ms,
                });
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_765_000_000_000;

    fn verdict(value: Option<&str>, in_call: bool) -> Verdict {
        let offer = value.map(Offer::parse);
        arbitrate(offer.as_ref(), in_call, NOW)
    }

    #[test]
    fn a_plain_call_rings_whatever_the_device_does() {
        assert_eq!(verdict(None, true), Verdict::Ring);
    }

    #[test]
    fn an_offer_after_its_deadline_is_refused_with_how_late() {
        let v = verdict(Some(&format!("queue=q;deadline={}", NOW - 1500)), false);
        assert_eq!(
            v,
            Verdict::Refuse {
                code: 480,
                reason: "deadline",
                late_ms: 1500,
                text: "offer deadline passed".into()
            }
        );
        let in_time = format!("queue=q;deadline={}", NOW + 1);
        assert_eq!(verdict(Some(&in_time), false), Verdict::Ring);
    }

    #[test]
    fn ringinuse_no_refuses_an_agent_in_a_call_only() {
        assert_eq!(verdict(Some("queue=q;ringinuse=no"), true), Verdict::InUse);
        assert_eq!(verdict(Some("queue=q;ringinuse=no"), false), Verdict::Ring);
        assert_eq!(verdict(Some("queue=q;ringinuse=yes"), true), Verdict::Ring);
        // The typed header, not a substring: a queue named like the parameter is no refusal.
        assert_eq!(verdict(Some("xringinuse=no"), true), Verdict::Ring);
    }

    #[test]
    fn a_bad_offer_is_a_400() {
        match verdict(Some("ringinuse=nothing"), false) {
            Verdict::Refuse { code, reason, .. } => assert_eq!((code, reason), (400, "bad-offer")),
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn the_offer_is_found_among_the_headers_case_insensitively() {
        let text = "INVITE sip:2001@example.com SIP/2.0\r\n\
            Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1\r\nMax-Forwards: 70\r\n\
            From: <sip:q@example.com>;tag=a\r\nTo: <sip:2001@example.com>\r\n\
            Call-ID: c1\r\nCSeq: 1 INVITE\r\nx-cf-offer: queue=sales;ringinuse=no\r\n\
            Content-Length: 0\r\n\r\n";
        let Ok(crate::sip::message::SipMessage::Request(req)) = message::parse(text.as_bytes())
        else {
            panic!("not parsed");
        };
        let o = offer_of(&req).and_then(Result::ok).expect("offer");
        assert_eq!(o.queue.as_deref(), Some("sales"));
        assert!(!o.ringinuse);
    }
}

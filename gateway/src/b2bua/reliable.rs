//! RFC 3262 in the B2BUA: reliable provisional responses towards the caller (when its INVITE
//! says `Supported`/`Require: 100rel`: `RSeq`, retransmission until its PRACK, a 2xx held
//! while a 1xx with SDP is unacknowledged, 500 after 64·T1 without PRACK), and PRACK towards
//! the callee (every reliable 1xx it sends is PRACKed once, in its early dialog; a
//! retransmitted or out-of-order one is dropped, never relayed twice).

use std::time::{Duration, Instant};

use rsip::{Method, Request, Response};

use super::{via_for, B2bua, CallId, MediaControl, Phase, Side};
use crate::sip::message::{self, response_with_tag};
use crate::sip::prack::{self, RAck, ReliableSender, ReliableTimeout};
use crate::sip::transaction::parse::{self as tparse, Field};
use crate::sip::transaction::TransactionKey;

/// The reliable sender for a caller whose INVITE supports or requires 100rel.
pub(super) fn sender_for(req: &Request, t1: Duration) -> Option<ReliableSender> {
    if !prack::supports(&req.headers, "100rel") {
        return None;
    }
    let cseq = tparse::cseq(&req.headers).ok()?.seq;
    // RFC 3262 §3: the first RSeq is chosen at random between 1 and 2^31 - 1 (kept low
    // enough here that it never wraps during a call).
    let first = (rand::random::<u32>() & 0x0fff_ffff) + 1;
    Some(ReliableSender::new(cseq, first, t1))
}

impl B2bua {
    /// A provisional response from the callee: false if it must be dropped (a retransmitted
    /// or out-of-order reliable one). A new reliable one is PRACKed.
    pub(super) fn b_reliable_provisional(&mut self, id: CallId, resp: &Response) -> bool {
        if resp.status_code.code() == 100 || !prack::requires(&resp.headers, "100rel") {
            return true;
        }
        let Some(rseq) = prack::rseq(&resp.headers) else {
            return true; // not a valid reliable response: treat it as unreliable
        };
        let Some(call) = self.calls.get_mut(&id) else {
            return false;
        };
        if let Some(last) = call.b_rseq {
            // §4: only the next in sequence is new; anything else is dropped.
            if rseq != last.wrapping_add(1) {
                return false;
            }
        }
        call.b_rseq = Some(rseq);
        let cseq = tparse::cseq(&call.b_invite.headers).map_or(1, |c| c.seq);
        let peer = call.b.peer.clone();
        let (via, branch) = via_for(&mut self.rng, &peer);
        let Some(d) = call.b.dialog.as_mut() else {
            return true;
        };
        let mut req = d.request(Method::PRack, &via);
        req.headers.push(
            RAck {
                rseq,
                cseq,
                method: "INVITE".into(),
            }
            .header(),
        );
        let key = TransactionKey::client(&branch, Method::PRack);
        self.by_client.insert(key.clone(), (id, Side::B));
        self.actions.push_back(super::Action::Request {
            key,
            request: req,
            dest: peer,
        });
        true
    }

    /// A PRACK from the caller (its early dialog with us has no `Dialog` yet). False when it
    /// belongs to no call (answer 481).
    /// The call whose caller's PRACK `req` is (its early dialog: Call-ID and our tag).
    pub(super) fn prack_call(&self, req: &Request) -> Option<CallId> {
        let (Ok(call_id), Ok(Some(to_tag))) = (
            tparse::value(&req.headers, Field::CallId),
            tparse::field_tag(&req.headers, Field::To),
        ) else {
            return None;
        };
        self.calls
            .values()
            .find(|c| {
                c.a_rel.is_some()
                    && c.a_tag == to_tag
                    && tparse::value(&c.a_invite.headers, Field::CallId).ok() == Some(call_id)
            })
            .map(|c| c.id)
    }

    pub(super) fn on_prack(
        &mut self,
        key: &TransactionKey,
        req: &Request,
        _media: &mut dyn MediaControl,
        now: Instant,
    ) -> bool {
        let Some(id) = self.prack_call(req) else {
            return false;
        };
        let Some(call) = self.calls.get_mut(&id) else {
            return false;
        };
        let outcome = match (RAck::of(&req.headers), call.a_rel.as_mut()) {
            (Some(rack), Some(rel)) => rel.on_prack(&rack, now),
            _ => Err(()),
        };
        let Ok(next) = outcome else {
            let r = message::response_for(req, 481, "");
            self.respond(key, r);
            return true;
        };
        let a_key = call.a_invite_key.clone();
        let mut out = Vec::new();
        if let Some(next) = next {
            out.push(next);
        }
        // A 2xx held for this PRACK goes now, and its retransmission timer starts.
        if call.held_ok
            && !call
                .a_rel
                .as_ref()
                .is_some_and(|r| r.unacknowledged_with_body())
        {
            call.held_ok = false;
            if let Some(ok) = call.ok.as_mut() {
                out.push(ok.usage.release(now));
            }
            if let Some(rel) = call.a_rel.as_mut() {
                rel.stop();
            }
        }
        let ok = message::response_for(req, 200, "");
        self.respond(key, ok);
        for r in out {
            self.respond(&a_key, r);
        }
        true
    }

    /// Retransmits reliable provisional responses; gives up on a caller that never PRACKs.
    pub(super) fn run_reliable(
        &mut self,
        due: &[CallId],
        media: &mut dyn MediaControl,
        now: Instant,
    ) {
        let mut resend = Vec::new();
        let mut failed = Vec::new();
        for id in due {
            let Some(c) = self.calls.get_mut(id) else {
                continue;
            };
            let Some(rel) = c.a_rel.as_mut() else {
                continue;
            };
            if rel.poll_timeout().is_none_or(|t| t > now) {
                continue;
            }
            match rel.handle_timeout(now) {
                ReliableTimeout::Resend(r) => resend.push((c.a_invite_key.clone(), r)),
                ReliableTimeout::GiveUp => failed.push(c.id),
                ReliableTimeout::Nothing => {}
            }
        }
        for (k, r) in resend {
            self.respond(&k, r);
        }
        for id in failed {
            self.no_prack(id, media, now);
        }
    }

    /// RFC 3262 §3: no PRACK for 64·T1: the caller's INVITE is rejected with 5xx and the
    /// callee's leg ended.
    fn no_prack(&mut self, id: CallId, media: &mut dyn MediaControl, now: Instant) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let r = response_with_tag(&call.a_invite, 500, "", &call.a_tag);
        let a_key = call.a_invite_key.clone();
        match call.phase {
            Phase::Answered if call.held_ok => {
                call.ok = None;
                self.respond(&a_key, r);
                self.bye(id, Side::B);
                self.end(id, "no-prack", media, now);
            }
            Phase::Calling if !call.cancel_pending => {
                call.cancel_pending = true;
                let (b_key, dest, responded) = (
                    call.b_invite_key.clone(),
                    call.b.peer.clone(),
                    call.b_responded,
                );
                self.respond(&a_key, r);
                if responded {
                    self.send_cancel(&b_key, dest, id, now);
                } else {
                    self.end(id, "no-prack", media, now);
                }
            }
            _ => {}
        }
    }
}

//! Call diversion (issue 14: voicemail on busy / no answer): a call to a device whose leg B
//! fails (busy, timeout, no answer) goes on to another target instead of failing back to the
//! caller. The gateway arms it per call with [`B2bua::set_divert`] right after
//! [`B2bua::on_invite`]; when leg B answers 486/600 (`on_busy`), 408/480 or times out
//! (`no_answer` set), or rings unanswered for `no_answer`, the branches still going are
//! cancelled and the same INVITE (new Request-URI, Via, Contact) goes to the divert target.
//! The caller keeps its dialog and media path; the callee device leaves the call (its state
//! stops counting it).
//!
//! A cancelled phone's branches stay as cancelled fork branches until their transactions end:
//! a late 1xx is CANCELled, a 2xx that crosses the CANCEL is ACKed and BYEd (RFC 3261
//! §13.2.2.4), a final response absorbed; a CANCEL that gets no final response within 64·T1
//! ends its transaction (§9.1, `ring.rs`). The caller stays with the divert target.

use super::*;

/// Where and when a call goes on when the device does not take it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Divert {
    /// Request-URI for the new leg B (`sip:vm-1000@127.0.0.1:5070`).
    pub uri: String,
    /// Where to send it.
    pub dest: Peer,
    /// On busy (486, 600).
    pub on_busy: bool,
    /// On no answer: after this long ringing, or on 408/480/a timeout.
    pub no_answer: Option<Duration>,
}

/// A divert armed for a call.
#[derive(Debug)]
pub(super) struct Armed {
    divert: Divert,
    deadline: Option<Instant>,
}

impl B2bua {
    /// Arms `divert` for the call that INVITE server transaction `invite` created (no effect
    /// when it created none: refused at once).
    pub fn set_divert(&mut self, invite: &TransactionKey, divert: Divert, now: Instant) {
        let Some(&id) = self.by_server.get(invite) else {
            return;
        };
        let calls = &self.calls;
        self.diverts.retain(|id, _| calls.contains_key(id));
        let deadline = divert.no_answer.map(|d| now + d);
        self.diverts.insert(id, Armed { divert, deadline });
    }

    /// The earliest no-answer deadline.
    pub(super) fn divert_due(&self) -> Option<Instant> {
        self.diverts.values().filter_map(|a| a.deadline).min()
    }

    /// Diverts the calls whose no-answer deadline passed.
    pub(super) fn run_diverts(&mut self, now: Instant) {
        for id in crate::sip::ua::due(&self.diverts, now, |a| a.deadline) {
            if !self.divert(id, None, now) {
                self.diverts.remove(&id);
            }
        }
    }

    /// Leg B of call `id` failed with `code` (`None`: timed out, or the no-answer timer):
    /// whether the call was diverted.
    pub(super) fn divert(&mut self, id: CallId, code: Option<u16>, now: Instant) -> bool {
        let Some(armed) = self.diverts.get(&id) else {
            return false;
        };
        let d = &armed.divert;
        let wanted = match code {
            Some(486 | 600) => d.on_busy,
            Some(408 | 480) | None => d.no_answer.is_some(),
            Some(_) => false,
        };
        let Some(call) = self.calls.get(&id) else {
            return false;
        };
        if !wanted || call.phase != Phase::Calling || call.cancel_pending {
            return false;
        }
        let Some(armed) = self.diverts.remove(&id) else {
            return false;
        };
        let Some(uri) = message::parse_uri(&armed.divert.uri) else {
            return false;
        };
        let dest = armed.divert.dest;
        // The phone's branches still going are cancelled (each CANCEL destroyed after 64·T1
        // without a final response, `ring.rs`) and kept as cancelled fork branches until
        // their transactions end, so that their late responses are handled as such
        // (`fork::stray`): a 1xx CANCELled, a 2xx across the CANCEL ACKed and BYEd, a final
        // response absorbed. A primary that never forked becomes one such branch here.
        self.fork_cancel(id, None, now);
        let Some(call) = self.calls.get(&id) else {
            return false;
        };
        let primary = call.b_invite_key.clone();
        if code.is_none() && !self.forks.contains_key(&primary) {
            let mut br = fork::Branch::new(id, call.b_invite.clone(), call.b.peer.clone());
            br.provisional = call.b_provisional;
            br.responded = call.b_responded;
            if call.b_responded {
                let dest = call.b.peer.clone();
                self.send_cancel(&primary, dest, id, now);
            }
            self.forks.insert(primary, br);
        }
        self.fork_leave(id);
        self.by_client.retain(|k, (cid, side)| {
            !(*cid == id && *side == Side::B && k.method() == Method::Invite)
        });
        let Some(call) = self.calls.get_mut(&id) else {
            return false;
        };
        if let Some(dlg) = call.b.dialog.take() {
            self.by_dialog.remove(&(dlg.call_id, dlg.local_tag));
        }
        let callee = call.b.device.take();
        let (via, branch) = via_for(&mut self.rng, &dest);
        let invite = Resend::new(&call.b_invite, via)
            .uri(uri)
            .contact(our_contact(&dest))
            .build();
        let key = TransactionKey::client(&branch, Method::Invite);
        call.b.peer = dest.clone();
        call.b_invite = invite.clone();
        call.b_invite_key = key.clone();
        call.b_provisional = false;
        call.b_responded = false;
        call.b_fallbacks.clear();
        call.b_auth_tried = false;
        call.b_422_tried = false;
        call.b_rseq = None;
        self.by_client.insert(key.clone(), (id, Side::B));
        self.arm_timer_c(&key, id, now);
        self.disarm_ring_limit(id);
        if let Some(dev) = callee {
            if self.devices.remove(&dev, id) {
                self.actions.push_back(Action::DeviceChanged(dev));
            }
        }
        self.actions.push_back(Action::Request {
            key,
            request: invite,
            dest,
        });
        true
    }
}

//! Moving leg B of an answered call to another peer (issue 15, "no caller lost"): when the ACD
//! node a caller waits at dies, the gateway — the caller's B2BUA — sends a new INVITE for the
//! same call to another live node, with the relay's B-side SDP; the caller's leg A and its media
//! path are untouched (the relay anchors both legs), and the caller hears music on hold from the
//! relay until the new node answers. The old dialog is dropped without a BYE (its peer is dead).

use super::fork::Branch;
use super::{
    local_for, our_contact, strip_tag, Action, B2bua, CallId, MediaControl, Phase, Side, ALLOW,
};
use crate::sip::builder::{self, RequestBuilder};
use crate::sip::message::{self, Method};
use crate::sip::transaction::parse::{self as tparse, Field};
use crate::sip::transaction::TransactionKey;
use crate::sip::trust::{FabricKey, JoinPlace};
use crate::transport::Peer;
use rsip::headers::{Allow, Supported, UntypedHeader};
use rsip::Header;
use std::sync::Arc;
use std::time::Instant;
use tracing::{info, warn};

impl B2bua {
    /// The call [`B2bua::on_invite`] made last, if it is still there (the gateway keeps its
    /// routing facts beside it).
    pub fn newest_call(&self) -> Option<CallId> {
        let id = CallId(self.next_id.checked_sub(1)?);
        self.calls.contains_key(&id).then_some(id)
    }

    /// Whether call `id` exists.
    pub fn has_call(&self, id: CallId) -> bool {
        self.calls.contains_key(&id)
    }

    /// Whether call `id` is confirmed on both sides and not being moved.
    pub fn is_answered(&self, id: CallId) -> bool {
        self.calls
            .get(&id)
            .is_some_and(|c| c.phase == Phase::Confirmed && !c.moving)
    }

    /// Moves leg B of answered call `id` to `uri` at `dest`: a new INVITE (new dialog) with the
    /// relay's B-side SDP and the caller's place `join` (`X-CF-Join`), signed with `signer`
    /// (key, unix secs) if given; music on hold to the caller until the 2xx. A failure of the
    /// new INVITE ends the call (`move-failed`). Returns whether the INVITE went out.
    #[allow(clippy::too_many_arguments)] // the call, where to, how to sign, the driver's media and time
    pub(super) fn move_b_inner(
        &mut self,
        id: CallId,
        uri: &str,
        dest: Peer,
        join: Option<JoinPlace>,
        signer: Option<(Arc<FabricKey>, u64)>,
        media: &mut dyn MediaControl,
        now: Instant,
    ) -> bool {
        let local = local_for(&dest);
        let (via, branch) = local.new_via(&mut self.rng);
        let tag = local.tag(&mut self.rng);
        let call_id = local.call_id(&mut self.rng);
        let Some(call) = self.calls.get_mut(&id) else {
            return false;
        };
        if call.phase != Phase::Confirmed || call.moving {
            return false;
        }
        let (Ok(from), Ok(to), Some(sdp)) = (
            tparse::value(&call.b_invite.headers, Field::From),
            tparse::value(&call.b_invite.headers, Field::To),
            call.b.last_sdp.clone(),
        ) else {
            return false;
        };
        let built = builder::parse_uri(uri).map(|uri| {
            let b = RequestBuilder::new(Method::Invite, uri, via)
                .from(&strip_tag(from), Some(&tag))
                .to(&strip_tag(to), None)
                .call_id(call_id)
                .contact(our_contact(&dest))
                .header(Header::Allow(Allow::new(ALLOW)))
                .header(Header::Supported(Supported::new("100rel")))
                .header(Header::Other(
                    crate::offer::LINKED_HEADER.into(),
                    call.linkedid.clone(),
                ));
            match join {
                Some(j) => b.header(j.header()),
                None => b,
            }
        });
        let Ok(built) = built else {
            warn!(call = id.0, "cannot build the INVITE that moves the caller");
            return false;
        };
        let mut invite = built
            .body(sdp.to_string().into_bytes(), "application/sdp")
            .build();
        if let Some((key, now_secs)) = &signer {
            key.sign(&mut invite, *now_secs);
        }
        let key = TransactionKey::client(&branch, Method::Invite);
        // Forget the dead leg: its dialog, its INVITE transaction.
        if let Some(d) = call.b.dialog.take() {
            self.by_dialog.remove(&(d.call_id, d.local_tag));
        }
        self.by_client.remove(&call.b_invite_key);
        call.b.peer = dest.clone();
        call.b.timer = None;
        call.b_invite = invite.clone();
        call.b_invite_key = key.clone();
        call.b_provisional = false;
        call.b_responded = false;
        call.b_fallbacks.clear();
        call.moving = true;
        call.signer = signer;
        self.by_client.insert(key.clone(), (id, Side::B));
        self.arm_timer_c(&key, id, now);
        self.actions.push_back(Action::Request {
            key,
            request: invite,
            dest,
        });
        // The caller hears music from the relay meanwhile.
        media.hold(id, Side::B, true);
        info!(call = id.0, %uri, "moving the caller to another node");
        true
    }

    /// The moving INVITE of call `id` was answered (2xx, already ACKed): leg B is the new
    /// peer's; its media replaces the music.
    pub(super) fn moved(
        &mut self,
        id: CallId,
        resp: &message::Response,
        media: &mut dyn MediaControl,
    ) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        call.moving = false;
        if let Some(answer) = super::sdp_of(&resp.headers, &resp.body) {
            if let Some(rtp) = answer.rtp_endpoint(0) {
                media.set_remote(id, Side::B, rtp, answer.rtcp_endpoint(0));
            }
            call.b.remote_version = Some(answer.origin_version());
        }
        media.hold(id, Side::B, false);
        info!(call = id.0, peer = %call.b.peer.addr, "caller moved: leg B answered by the new node");
    }

    /// The moving INVITE of call `id` failed or timed out: the call ends.
    pub(super) fn move_failed(
        &mut self,
        id: CallId,
        why: &str,
        media: &mut dyn MediaControl,
        now: Instant,
    ) {
        if let Some(c) = self.calls.get_mut(&id) {
            c.moving = false;
        }
        warn!(call = id.0, %why, "moving the caller failed: hanging up");
        self.hangup(id, "move-failed", media, now);
    }

    /// Call `id` is still calling a peer that died (no final answer): its INVITE goes to the
    /// next target now (`dest` first, with the caller's place `join`), as after a timeout;
    /// whether it went. The old INVITE is cancelled as a diversion's is (`divert.rs`): a
    /// CANCEL now if it had a provisional response (a 100 included; §9.1: a peer thought dead
    /// but alive stops offering the caller), else at its first one; it is kept as a cancelled
    /// fork branch that left the call until its transaction ends, so a 2xx across the CANCEL
    /// is ACKed and BYEd and its final response absorbed (`fork::stray`).
    pub(super) fn retarget_inner(
        &mut self,
        id: CallId,
        dest: Peer,
        join: Option<JoinPlace>,
        now: Instant,
    ) -> bool {
        let Some(call) = self.calls.get_mut(&id) else {
            return false;
        };
        if call.phase != Phase::Calling || call.cancel_pending || call.moving {
            return false;
        }
        if let Some(j) = join {
            let name = crate::sip::trust::JOIN_HEADER;
            call.b_invite.headers.retain(
                |h| !matches!(h, rsip::Header::Other(n, _) if n.eq_ignore_ascii_case(name)),
            );
            call.b_invite.headers.push(j.header());
        }
        call.b_fallbacks.retain(|p| p.addr != dest.addr);
        call.b_fallbacks.push_front(dest);
        let old = call.b_invite_key.clone();
        let mut leg = Branch::new(id, call.b_invite.clone(), call.b.peer.clone());
        leg.provisional = call.b_provisional;
        leg.responded = call.b_responded;
        if !self.retry_target(id, now) {
            return false;
        }
        self.by_client.remove(&old);
        // Every branch of the old target goes: CANCELled now or at its first response.
        self.fork_cancel(id, None, now);
        if !self.forks.contains_key(&old) {
            leg.cancelled = true;
            if leg.responded {
                let dest = leg.peer.clone();
                self.send_cancel(&old, dest, id, now);
            }
            self.forks.insert(old, leg);
        }
        self.fork_leave(id);
        true
    }

    /// Whether call `id` is still calling (no final answer from leg B).
    pub fn is_calling(&self, id: CallId) -> bool {
        self.calls
            .get(&id)
            .is_some_and(|c| c.phase == Phase::Calling && !c.cancel_pending)
    }

    /// Whether call `id` is being moved.
    pub(super) fn is_moving(&self, id: CallId) -> bool {
        self.calls.get(&id).is_some_and(|c| c.moving)
    }
}

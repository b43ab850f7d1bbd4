//! The calls' own deadlines in time order (issue 16): each call's earliest deadline
//! ([`Call::next_deadline`]: its 2xx retransmission or ACK wait, either leg's session timer,
//! a reliable provisional's retransmission) is kept in a `ring::Deadlines` index, so that
//! [`B2bua::poll_timeout`] reads the earliest in O(log n) instead of walking every call after
//! every input, and [`B2bua::handle_timeout`] visits only the calls that are due.
//!
//! The index is refreshed for the call an input concerns, after the input: the public entry
//! points below resolve their call first (a client key, a server key, a dialog, a PRACK's early
//! dialog, an id), run the input, then re-read that call's deadline. A call only changes its
//! own deadlines, and an ended call leaves the index in `end`. Debug builds (every test)
//! check the index against a walk of all calls at each `poll_timeout`.

use super::*;

impl B2bua {
    /// Re-reads call `id`'s earliest deadline into the index (gone: removed).
    fn reindex(&mut self, id: CallId) {
        match self.calls.get(&id).and_then(|c| c.next_deadline()) {
            Some(t) => self.call_due.set(id, t),
            None => {
                self.call_due.remove(&id);
            }
        }
    }

    /// The call client transaction `key` belongs to.
    fn call_of_client(&self, key: &TransactionKey) -> Option<CallId> {
        self.by_client
            .get(key)
            .map(|(id, _)| *id)
            .or_else(|| self.forks.get(key).map(|b| b.call))
    }

    /// A new INVITE (no To tag) arrived from `source` in server transaction `key`; `routed`
    /// is who calls and where to, as the gateway resolved it.
    pub fn on_invite(
        &mut self,
        key: TransactionKey,
        req: Request,
        source: Peer,
        routed: Routed,
        media: &mut dyn MediaControl,
        now: Instant,
    ) {
        let next = CallId(self.next_id);
        self.invite_inner(key, req, source, routed, media, now);
        self.reindex(next);
    }

    /// A response for client transaction `key`.
    pub fn on_response(
        &mut self,
        key: &TransactionKey,
        resp: Response,
        media: &mut dyn MediaControl,
        now: Instant,
    ) {
        let id = self.call_of_client(key);
        self.response_inner(key, resp, media, now);
        if let Some(id) = id {
            self.reindex(id);
        }
    }

    /// Client transaction `key` timed out or hit a transport error.
    pub fn on_timeout(&mut self, key: &TransactionKey, media: &mut dyn MediaControl, now: Instant) {
        let id = self.call_of_client(key);
        self.timeout_inner(key, media, now);
        if let Some(id) = id {
            self.reindex(id);
        }
    }

    /// A CANCEL (answered 200 by us here) for INVITE server transaction `invite`.
    pub fn on_cancel(
        &mut self,
        key: &TransactionKey,
        cancel: &Request,
        invite: &TransactionKey,
        media: &mut dyn MediaControl,
        now: Instant,
    ) {
        let id = self.by_server.get(invite).copied();
        self.cancel_inner(key, cancel, invite, media, now);
        if let Some(id) = id {
            self.reindex(id);
        }
    }

    /// An ACK outside a transaction (for a 2xx).
    pub fn on_ack(&mut self, req: &Request, media: &mut dyn MediaControl, now: Instant) {
        let id = self.dialog_of(req).map(|(id, _)| id);
        self.ack_inner(req, media, now);
        if let Some(id) = id {
            self.reindex(id);
        }
    }

    /// A request inside a dialog (To tag set), in server transaction `key`. Returns false if
    /// it matches no dialog (answer 481).
    pub fn on_in_dialog(
        &mut self,
        key: &TransactionKey,
        req: Request,
        media: &mut dyn MediaControl,
        now: Instant,
    ) -> bool {
        let id = match req.method {
            Method::PRack => self.prack_call(&req),
            _ => self.dialog_of(&req).map(|(id, _)| id),
        };
        let known = self.in_dialog_inner(key, req, media, now);
        if let Some(id) = id {
            self.reindex(id);
        }
        known
    }

    /// Hangs up both sides of a call (BYE to each confirmed side).
    pub fn hangup(&mut self, id: CallId, reason: &str, media: &mut dyn MediaControl, now: Instant) {
        self.hangup_inner(id, reason, media, now);
        self.reindex(id);
    }

    /// Moves leg B of answered call `id` to `uri` at `dest`: a new INVITE (new dialog) with the
    /// relay's B-side SDP and the caller's place `join` (`X-CF-Join`), signed with `signer`
    /// (key, unix secs) if given; music on hold to the caller until the 2xx. A failure of the
    /// new INVITE ends the call (`move-failed`). Returns whether the INVITE went out.
    #[allow(clippy::too_many_arguments)] // the call, where to, how to sign, the driver's media and time
    pub fn move_b(
        &mut self,
        id: CallId,
        uri: &str,
        dest: Peer,
        join: Option<crate::sip::trust::JoinPlace>,
        signer: Option<(std::sync::Arc<crate::sip::trust::FabricKey>, u64)>,
        media: &mut dyn MediaControl,
        now: Instant,
    ) -> bool {
        let sent = self.move_b_inner(id, uri, dest, join, signer, media, now);
        self.reindex(id);
        sent
    }

    /// Call `id` is still calling a peer that died (no final answer): its INVITE goes to the
    /// next target now (`dest` first, with the caller's place `join`), as after a timeout;
    /// whether it went.
    pub fn retarget(
        &mut self,
        id: CallId,
        dest: Peer,
        join: Option<crate::sip::trust::JoinPlace>,
        now: Instant,
    ) -> bool {
        let sent = self.retarget_inner(id, dest, join, now);
        self.reindex(id);
        sent
    }

    /// Runs the timers due at `now`: those of the calls whose own deadline passed, the
    /// diversions', Timer C and the ring limits, the media-timeout sweep.
    pub fn handle_timeout(&mut self, media: &mut dyn MediaControl, now: Instant) {
        let mut due = Vec::new();
        while let Some(id) = self.call_due.pop_due(now) {
            due.push(id);
        }
        self.timers_inner(&due, media, now);
        for id in due {
            self.reindex(id);
        }
    }
}

#[cfg(test)]
impl B2bua {
    /// Calls in the deadline index (tests).
    pub(super) fn calls_due_len(&self) -> usize {
        self.call_due.len()
    }

    /// What every table still holds (tests: nothing may leak once calls and transactions are
    /// over): calls, client keys, server keys, dialogs, fork branches, Timer C entries, Timer C
    /// and ring-limit deadlines, diversions, call deadlines.
    pub(super) fn leftovers(&self) -> [usize; 10] {
        let (branch_due, ring_limits) = self.ring_timers_len();
        [
            self.calls.len(),
            self.by_client.len(),
            self.by_server.len(),
            self.by_dialog.len(),
            self.forks.len(),
            self.ring_branches_len(),
            branch_due,
            ring_limits,
            self.diverts.len(),
            self.call_due.len(),
        ]
    }
}

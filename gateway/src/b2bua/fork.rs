//! Forking (issue 11): a call to a device rings every reachable contact in parallel.
//!
//! Leg B becomes a fork set: one INVITE per contact, the same Call-ID and From tag, each in its
//! own client transaction (RFC 3261 §16.6 as done by a UAC that forks its own request). The call
//! keeps one *primary* branch in its `b_invite`/`b_invite_key`, on which the ordinary leg-B code
//! runs; this module decides which branch that is:
//!
//! * the first branch with a provisional response (180/183) becomes the primary if the primary
//!   has none yet, so the caller hears the ringing and early media of a live phone;
//! * the first 2xx wins: its branch becomes the primary and every other branch is cancelled
//!   (a CANCEL to those that sent a provisional response, a 100 included; one that has not is
//!   cancelled as soon as its first one arrives, §9.1); a 2xx from another branch after that is ACKed and BYEd
//!   (§13.2.2.4);
//! * a branch that fails (final ≥ 300 or a timeout) is dropped; while another is still ringing
//!   the caller hears nothing of it. When every branch has failed, the caller gets the best
//!   final response as a proxy would choose it (§16.7 step 6): a 6xx, else the lowest class,
//!   preferring within 4xx the responses that tell the caller something (401, 407, 415, 420,
//!   484) and a response actually received over a timeout.
//!
//! A caller's CANCEL cancels every branch. At most [`MAX_BRANCHES`] contacts are rung.

use super::*;

/// Most contacts one call rings in parallel (the registrar's per-user binding limit is
/// configurable; this bounds the work one INVITE can cause whatever it is).
pub const MAX_BRANCHES: usize = 16;

/// A further contact of the callee, rung in parallel with [`Target::Device`]'s own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForkTarget {
    /// Request-URI for this branch (the contact).
    pub contact: String,
    /// Where to send it (the contact's flow).
    pub dest: Peer,
}

/// One branch of a forked leg B.
#[derive(Debug)]
pub(super) struct Branch {
    pub(super) call: CallId,
    pub(super) invite: Request,
    pub(super) peer: Peer,
    /// A provisional response (101–199) came.
    pub(super) provisional: bool,
    /// Any provisional response (100 included) came: a CANCEL may go (§9.1). With
    /// `cancelled`: the CANCEL is out.
    pub(super) responded: bool,
    /// We want this branch gone (CANCEL sent, or to be sent at its first response).
    pub(super) cancelled: bool,
    /// This branch's 2xx won the call.
    pub(super) answered: bool,
    /// Its final outcome: the status received, or 408 for a timeout (`received` false).
    pub(super) done: Option<(u16, Option<Response>)>,
    /// To tags of stray 2xx already BYEd.
    pub(super) byed: Vec<String>,
    /// The call went elsewhere (diverted): this branch's outcome no longer counts for it.
    pub(super) left: bool,
}

impl Branch {
    pub(super) fn new(call: CallId, invite: Request, peer: Peer) -> Self {
        Branch {
            call,
            invite,
            peer,
            provisional: false,
            responded: false,
            cancelled: false,
            answered: false,
            done: None,
            byed: Vec::new(),
            left: false,
        }
    }
}

/// §16.7 step 6: the index of the best final response among `finals` (status, received);
/// `None` when `finals` is empty. A 6xx wins; else the lowest class; within 4xx, 401, 407, 415,
/// 420 and 484 first (they tell the caller how to succeed); then a response received beats a
/// timeout; then the first.
pub fn best_final(finals: &[(u16, bool)]) -> Option<usize> {
    let rank = |&(code, received): &(u16, bool)| {
        let class = code / 100;
        let class_rank = if class == 6 { 0 } else { class };
        let informative = matches!(code, 401 | 407 | 415 | 420 | 484);
        (class_rank, !informative, !received)
    };
    finals
        .iter()
        .enumerate()
        .min_by_key(|(i, f)| (rank(f), *i))
        .map(|(i, _)| i)
}

impl B2bua {
    /// Sends the INVITEs of the further branches of call `id`, whose primary INVITE
    /// (`b_invite`) was just sent.
    pub(super) fn fork_start(&mut self, id: CallId, extra: Vec<ForkTarget>, now: Instant) {
        if extra.is_empty() {
            return;
        }
        let Some(call) = self.calls.get(&id) else {
            return;
        };
        let (base, pkey, ppeer) = (
            call.b_invite.clone(),
            call.b_invite_key.clone(),
            call.b.peer.clone(),
        );
        let mut out = Vec::new();
        for t in extra.into_iter().take(MAX_BRANCHES - 1) {
            let Some(uri) = message::parse_uri(&t.contact) else {
                continue;
            };
            let (via, branch) = via_for(&mut self.rng, &t.dest);
            let mut invite = Resend::new(&base, via)
                .uri(uri)
                .contact(our_contact(&t.dest))
                .build();
            // A branch that is not TLS gets no SDES keys (`srtp.rs`).
            if !t.dest.transport.is_secure() {
                if let Some(mut sdp) = sdp_of(&invite.headers, &invite.body) {
                    srtp::secure_keys(&mut sdp, false);
                    invite =
                        dialog::with_body(invite, sdp.to_string().into_bytes(), "application/sdp");
                }
            }
            out.push((
                TransactionKey::client(&branch, Method::Invite),
                invite,
                t.dest,
            ));
        }
        if out.is_empty() {
            return;
        }
        self.forks.insert(pkey, Branch::new(id, base, ppeer));
        for (key, invite, dest) in out {
            self.by_client.insert(key.clone(), (id, Side::B));
            self.arm_timer_c(&key, id, now);
            self.forks
                .insert(key.clone(), Branch::new(id, invite.clone(), dest.clone()));
            self.actions.push_back(Action::Request {
                key,
                request: invite,
                dest,
            });
        }
    }

    /// Makes branch `key` the primary of call `id`.
    fn promote(&mut self, id: CallId, key: &TransactionKey) {
        let (Some(call), Some(br)) = (self.calls.get_mut(&id), self.forks.get(key)) else {
            return;
        };
        if call.b_invite_key == *key {
            return;
        }
        call.b_invite = br.invite.clone();
        call.b_invite_key = key.clone();
        call.b.peer = br.peer.clone();
        call.b_provisional = br.provisional;
        call.b_responded = br.responded;
        call.b.dialog = None;
    }

    /// Every branch of call `id` leaves it (its leg B goes elsewhere: `divert.rs`): each is
    /// kept, cancelled, until its transaction ends, and its outcome no longer counts for the
    /// call.
    pub(super) fn fork_leave(&mut self, id: CallId) {
        for br in self.forks.values_mut().filter(|b| b.call == id) {
            br.cancelled = true;
            br.left = true;
        }
    }

    /// Cancels every branch of call `id` but `except` that is still going: a CANCEL (and
    /// §9.1's 64·T1 wait for its final response, `ring.rs`) to those that sent a provisional
    /// response (a 100 is one), the others at their first one (`stray`).
    pub(super) fn fork_cancel(
        &mut self,
        id: CallId,
        except: Option<&TransactionKey>,
        now: Instant,
    ) {
        let mut cancel = Vec::new();
        for (key, br) in self.forks.iter_mut() {
            if br.call != id
                || Some(key) == except
                || br.done.is_some()
                || br.answered
                || br.cancelled
            {
                continue;
            }
            br.cancelled = true;
            if br.responded {
                cancel.push((key.clone(), br.peer.clone()));
            }
        }
        for (key, dest) in cancel {
            self.send_cancel(&key, dest, id, now);
        }
    }

    /// The best final outcome of call `id`'s branches (all done): its status, and the
    /// response when it was received (`None`: a timeout).
    fn best_of(&self, id: CallId) -> Option<(u16, Option<Response>)> {
        let finals: Vec<&(u16, Option<Response>)> = self
            .forks
            .values()
            .filter(|b| b.call == id && !b.left)
            .filter_map(|b| b.done.as_ref())
            .filter(|(code, _)| *code >= 300)
            .collect();
        let codes: Vec<(u16, bool)> = finals.iter().map(|(c, r)| (*c, r.is_some())).collect();
        best_final(&codes).and_then(|i| finals.get(i).map(|(c, r)| (*c, r.clone())))
    }

    /// Whether call `id` is ringing (no answer, not cancelled).
    fn fork_live(&self, id: CallId) -> bool {
        self.calls
            .get(&id)
            .is_some_and(|c| c.phase == Phase::Calling && !c.cancel_pending)
    }

    /// A branch still going of call `id`, preferring one that rings.
    fn alive_branch(&self, id: CallId) -> Option<TransactionKey> {
        self.forks
            .iter()
            .filter(|(_, b)| b.call == id && b.done.is_none() && !b.cancelled)
            .max_by_key(|(_, b)| b.provisional)
            .map(|(k, _)| k.clone())
    }

    /// A response to a forked INVITE. Returns true when handled here; false when the ordinary
    /// leg-B code must run with `resp` (the primary's, or the best final response once every
    /// branch failed).
    pub(super) fn fork_response(
        &mut self,
        key: &TransactionKey,
        resp: &mut Response,
        now: Instant,
    ) -> bool {
        let code = resp.status_code.code();
        let Some(br) = self.forks.get(key) else {
            return false;
        };
        let id = br.call;
        let primary = self.calls.get(&id).is_some_and(|c| c.b_invite_key == *key);
        if !self.fork_live(id) {
            if primary {
                return false; // the ordinary code ACKs, CANCELs, BYEs the primary
            }
            self.stray(key, resp, now);
            return true;
        }
        if br.cancelled {
            // Given up while the call still rings elsewhere (Timer C, `ring.rs`).
            self.stray(key, resp, now);
            return true;
        }
        let Some(br) = self.forks.get_mut(key) else {
            return false;
        };
        if code < 200 {
            br.responded = true;
        }
        match code {
            100 => !primary,
            101..=199 => {
                br.provisional = true;
                if primary {
                    return false;
                }
                if self.calls.get(&id).is_some_and(|c| !c.b_provisional) {
                    self.promote(id, key);
                    return false;
                }
                true
            }
            200..=299 => {
                br.answered = true;
                self.promote(id, key);
                self.fork_cancel(id, Some(key), now);
                false
            }
            _ => {
                br.done = Some((code, Some(resp.clone())));
                if !primary {
                    return true;
                }
                if let Some(next) = self.alive_branch(id) {
                    self.promote(id, &next);
                    return true;
                }
                match self.best_of(id) {
                    Some((_, Some(best))) => *resp = best,
                    Some((c, None)) => resp.status_code = c.into(),
                    None => {}
                }
                false
            }
        }
    }

    /// A response for a branch of a call that was answered by another branch, cancelled or
    /// ended: CANCEL it at its first provisional response (a 100 is one, §9.1), ACK and BYE a
    /// 2xx (§13.2.2.4).
    fn stray(&mut self, key: &TransactionKey, resp: &Response, now: Instant) {
        let code = resp.status_code.code();
        let Some(br) = self.forks.get_mut(key) else {
            return;
        };
        match code {
            100..=199 => {
                br.provisional |= code > 100;
                if !br.responded {
                    br.responded = true;
                    br.cancelled = true;
                    let (id, dest) = (br.call, br.peer.clone());
                    self.send_cancel(key, dest, id, now);
                }
            }
            200..=299 => {
                // Over, but never the call's answer: a branch given up as a 408 (Timer C)
                // keeps that outcome.
                br.done.get_or_insert((code, None));
                let Ok(mut d) = Dialog::uac(&br.invite, resp) else {
                    return;
                };
                let (via, _) = via_for(&mut self.rng, &br.peer);
                let ack = UacInvite::new(&br.invite).ack(&d, || via);
                self.actions.push_back(Action::Stateless {
                    message: ack.into(),
                    dest: br.peer.clone(),
                });
                if br.byed.contains(&d.remote_tag) {
                    return;
                }
                br.byed.push(d.remote_tag.clone());
                let (via, branch) = via_for(&mut self.rng, &br.peer);
                self.actions.push_back(Action::Request {
                    key: TransactionKey::client(&branch, Method::Bye),
                    request: d.request(Method::Bye, &via),
                    dest: br.peer.clone(),
                });
            }
            _ => {
                // A branch given up as a 408 (Timer C) keeps that outcome: its 487 tells
                // the caller nothing.
                br.done.get_or_insert((code, Some(resp.clone())));
            }
        }
    }

    /// Client transaction `key` of a forked INVITE timed out. Returns true when handled here;
    /// false when the ordinary timeout code must run (the primary failed last, on a timeout).
    pub(super) fn fork_timeout(
        &mut self,
        key: &TransactionKey,
        media: &mut dyn MediaControl,
        now: Instant,
    ) -> bool {
        let Some(br) = self.forks.get_mut(key) else {
            return false;
        };
        if br.done.is_none() {
            br.done = Some((408, None));
        }
        let id = br.call;
        let primary = self.calls.get(&id).is_some_and(|c| c.b_invite_key == *key);
        if !primary {
            self.by_client.remove(key);
            return true;
        }
        if !self.fork_live(id) {
            return false;
        }
        if let Some(next) = self.alive_branch(id) {
            self.promote(id, &next);
            self.by_client.remove(key);
            return true;
        }
        match self.best_of(id) {
            Some((_, Some(best))) => {
                self.on_b_invite_response(id, best, media, now);
                self.by_client.remove(key);
                true
            }
            _ => false,
        }
    }

    /// A transaction ended: forget its branch.
    pub(super) fn fork_terminated(&mut self, key: &TransactionKey) {
        self.forks.remove(key);
    }
}

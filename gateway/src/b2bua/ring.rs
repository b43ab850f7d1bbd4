//! Every INVITE the B2BUA sends to a callee is bounded in time (issue 16, robustness).
//!
//! **Timer C** (RFC 3261 §16.6 step 11, §16.8) runs on each callee-side INVITE client
//! transaction (the primary, every fork branch, a retry after 401/407/422, a next RFC 3263
//! target, a diversion, a moved caller's INVITE): armed when the INVITE is sent, restarted by
//! each provisional response 101–199, [`Config::timer_c`] long (default 181 s: the RFC wants
//! "greater than 3 minutes"). When it fires the branch is over:
//!
//! * after a provisional response (100 included: §9.1 allows a CANCEL once any provisional
//!   came) it is CANCELled; a 2xx that crosses the CANCEL is ACKed and BYEd, a 487 absorbed, as
//!   for any cancelled fork branch (`fork.rs`, `stray`); if no final response comes within
//!   64·T1 of the CANCEL the transaction is destroyed (§9.1, [`Action::Terminate`]);
//! * with no response at all it is given up ([`Action::Abandon`]: no more retransmissions;
//!   Timer B ends the transaction, a late 1xx (100 included) is CANCELled, a late 2xx ACKed
//!   and BYEd).
//!
//! Either way the branch then counts as a 408 through the very path Timer B's timeout takes
//! ([`B2bua::on_timeout`]): the next branch, the next trunk target, the no-answer diversion to
//! voicemail, or, once every branch is over, `408 Request Timeout` to the caller. With the
//! default T1, Timer B (64·T1 = 32 s) ends a silent branch long before Timer C; Timer C is what
//! bounds a branch that rings (180 and then nothing) or only said 100 (which stops Timer B).
//!
//! **Ring limit** ([`Config::ring_timeout`], `[gateway] ring_timeout_secs`): a call to one of
//! our devices that nobody answered within the limit is given up as a whole: its branches
//! CANCELled (or given up), the caller gets `480 Temporarily Unavailable` (what Asterisk's Dial
//! gives on NOANSWER); a no-answer diversion to voicemail takes it instead when one is armed.
//!
//! **Every CANCEL** the B2BUA sends (the caller's CANCEL relayed, fork losers, Timer C, the
//! ring limit, a diversion, a missing PRACK, a caller's BYE before the callee answered,
//! shutdown) goes through [`B2bua::send_cancel`]. It goes as soon as the INVITE has had any
//! provisional response, a 100 included (§9.1; `b_responded`, `fork::Branch::responded`):
//! before one, it waits for the first (Timer C gives the branch up if none comes). It arms
//! §9.1's wait in place of Timer C:
//! no final response within 64·T1 of the CANCEL and the INVITE transaction is destroyed
//! ([`Action::Terminate`]) and the branch is over as a timeout (a call the caller CANCELled,
//! which only waited for that branch's final response, ends then, reason `cancel`).
//!
//! Both are counted ([`B2bua::timer_c_fired`], [`B2bua::ring_timeouts`]). Their deadlines are
//! kept in time order ([`Deadlines`]): the earliest is read without walking the calls.

use std::collections::{BTreeMap, HashMap};

use super::*;

/// Deadlines in time order with a key each: the earliest in O(log n), any one moved or
/// removed by its key in O(log n).
#[derive(Debug)]
pub(super) struct Deadlines<K> {
    at: HashMap<K, (Instant, u64)>,
    order: BTreeMap<(Instant, u64), K>,
    seq: u64,
}

impl<K> Default for Deadlines<K> {
    fn default() -> Self {
        Deadlines {
            at: HashMap::new(),
            order: BTreeMap::new(),
            seq: 0,
        }
    }
}

impl<K: Clone + Eq + std::hash::Hash> Deadlines<K> {
    /// Sets (or moves) `key`'s deadline to `at`.
    pub(super) fn set(&mut self, key: K, at: Instant) {
        self.remove(&key);
        self.seq += 1;
        self.order.insert((at, self.seq), key.clone());
        self.at.insert(key, (at, self.seq));
    }

    /// Forgets `key`'s deadline; whether it had one.
    pub(super) fn remove(&mut self, key: &K) -> bool {
        match self.at.remove(key) {
            Some(slot) => {
                self.order.remove(&slot);
                true
            }
            None => false,
        }
    }

    /// The earliest deadline.
    pub(super) fn first(&self) -> Option<Instant> {
        self.order.keys().next().map(|(t, _)| *t)
    }

    /// Removes and returns the key of the earliest deadline at or before `now`.
    pub(super) fn pop_due(&mut self, now: Instant) -> Option<K> {
        let (&(t, seq), _) = self.order.iter().next()?;
        if t > now {
            return None;
        }
        let key = self.order.remove(&(t, seq))?;
        self.at.remove(&key);
        Some(key)
    }

    /// How many deadlines are set.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.at.len()
    }
}

/// Timer C of one callee-side INVITE client transaction.
#[derive(Debug, Clone, Copy)]
pub(super) struct BranchTimer {
    call: CallId,
    /// A provisional response (100 included) came: a CANCEL may be sent (§9.1).
    responded: bool,
    state: Branch,
}

/// Where a branch's Timer C is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Branch {
    /// Running: the deadline is Timer C's.
    Running,
    /// Given up before any response (no deadline: Timer B ends the transaction); a late
    /// provisional response gets it CANCELled (`stray`), then it is `Cancelled`.
    Abandoned,
    /// CANCELled by us: the deadline is the end of §9.1's 64·T1 wait for its final response.
    Cancelled,
}

/// The timers of this module: Timer C per branch, the ring limit per call.
#[derive(Debug, Default)]
pub(super) struct RingTimers {
    branches: HashMap<TransactionKey, BranchTimer>,
    branch_due: Deadlines<TransactionKey>,
    calls: Deadlines<CallId>,
    /// Branches Timer C ended.
    fired: u64,
    /// Calls the ring limit ended (480 to the caller).
    ring_timeouts: u64,
}

impl B2bua {
    /// Branches of callee-side INVITEs that Timer C ended (CANCELled or given up), since start.
    pub fn timer_c_fired(&self) -> u64 {
        self.ring.fired
    }

    /// Calls to a device that the ring limit ended with 480, since start.
    pub fn ring_timeouts(&self) -> u64 {
        self.ring.ring_timeouts
    }

    /// Armed timers of this module (Timer C per branch, ring limit per call), for tests.
    #[cfg(test)]
    pub(super) fn ring_timers_len(&self) -> (usize, usize) {
        (self.ring.branch_due.len(), self.ring.calls.len())
    }

    /// Callee-side INVITEs this module tracks (Timer C running, given up or CANCELled), for
    /// tests.
    #[cfg(test)]
    pub(super) fn ring_branches_len(&self) -> usize {
        self.ring.branches.len()
    }

    /// Callee-side INVITE `key` of call `id` was just sent: Timer C starts.
    pub(super) fn arm_timer_c(&mut self, key: &TransactionKey, id: CallId, now: Instant) {
        self.ring.branches.insert(
            key.clone(),
            BranchTimer {
                call: id,
                responded: false,
                state: Branch::Running,
            },
        );
        self.ring
            .branch_due
            .set(key.clone(), now + self.cfg.timer_c);
    }

    /// Call `id` to a device was set up: its ring limit starts (if one is configured).
    pub(super) fn arm_ring_limit(&mut self, id: CallId, now: Instant) {
        if let Some(limit) = self.cfg.ring_timeout {
            self.ring.calls.set(id, now + limit);
        }
    }

    /// Call `id` no longer rings (answered or over).
    pub(super) fn disarm_ring_limit(&mut self, id: CallId) {
        self.ring.calls.remove(&id);
    }

    /// A response `code` to client transaction `key`: a provisional restarts Timer C, a final
    /// one stops it.
    pub(super) fn timer_c_response(&mut self, key: &TransactionKey, code: u16, now: Instant) {
        let Some(t) = self.ring.branches.get_mut(key) else {
            return;
        };
        match code {
            100..=199 => {
                t.responded = true;
                match t.state {
                    Branch::Running if code > 100 => {
                        self.ring
                            .branch_due
                            .set(key.clone(), now + self.cfg.timer_c);
                    }
                    // A late provisional to an INVITE given up: CANCELled (`stray`), then
                    // destroyed if no final response follows (a 100 alone stops Timer B).
                    Branch::Abandoned => {
                        let call = t.call;
                        self.wait_after_cancel(key, call, now);
                    }
                    _ => {}
                }
            }
            _ => self.timer_c_forget(key),
        }
    }

    /// Transaction `key` is over: its Timer C too.
    pub(super) fn timer_c_forget(&mut self, key: &TransactionKey) {
        self.ring.branches.remove(key);
        self.ring.branch_due.remove(key);
    }

    /// The earliest deadline of this module.
    pub(super) fn ring_due(&self) -> Option<Instant> {
        [self.ring.branch_due.first(), self.ring.calls.first()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Runs the Timer C and ring-limit deadlines that are due.
    pub(super) fn run_ring_timers(&mut self, media: &mut dyn MediaControl, now: Instant) {
        while let Some(key) = self.ring.branch_due.pop_due(now) {
            let Some(t) = self.ring.branches.remove(&key) else {
                continue;
            };
            if t.state != Branch::Running {
                // §9.1: no final response within 64·T1 of our CANCEL: the transaction is
                // destroyed, and the branch is over as a timeout (a call that only waited for
                // it, the caller's CANCEL answered 487 long ago, ends now).
                self.actions
                    .push_back(Action::Terminate { key: key.clone() });
                self.on_timeout(&key, media, now);
                continue;
            }
            if self.give_up_branch(t.call, &key, t.responded, now) {
                self.ring.fired += 1;
                tracing::info!(call = t.call.0, key = %key, responded = t.responded, "Timer C fired");
            }
            // The branch is over as a 408: the same path as Timer B's timeout.
            self.on_timeout(&key, media, now);
        }
        while let Some(id) = self.ring.calls.pop_due(now) {
            self.ring_limit(id, media, now);
        }
    }

    /// Ends branch `key` of call `id`: a CANCEL once it `responded` (and a 64·T1 wait for its
    /// final response), else no more retransmissions. The branch is kept (as a cancelled fork
    /// branch, done with 408) so that its late responses are handled as a cancelled branch's:
    /// a 1xx CANCELled, a 2xx ACKed and BYEd, a final one absorbed.
    /// Returns false when the branch was CANCELled already (by the caller's CANCEL or
    /// another branch's answer): then it only gets the 64·T1 wait, and Timer C does not count
    /// it as ended by itself.
    fn give_up_branch(
        &mut self,
        id: CallId,
        key: &TransactionKey,
        responded: bool,
        now: Instant,
    ) -> bool {
        if !self.forks.contains_key(key) {
            let Some(call) = self.calls.get(&id).filter(|c| c.b_invite_key == *key) else {
                // Not the call's INVITE any more (diverted, moved, or the call is over):
                // nothing maps its responses; end it quietly.
                if responded {
                    self.cancel_once(key, id, now);
                } else {
                    self.abandon(key, id);
                }
                return true;
            };
            let mut br = fork::Branch::new(id, call.b_invite.clone(), call.b.peer.clone());
            // A caller's CANCEL already went to a primary that rang (`on_cancel`; its wait
            // replaced Timer C then, so this is defensive).
            if call.cancel_pending && call.b_responded {
                br.responded = true;
                br.cancelled = true;
            }
            self.forks.insert(key.clone(), br);
        }
        let Some(br) = self.forks.get_mut(key) else {
            return true;
        };
        let already = br.cancelled && br.responded;
        br.cancelled = true;
        br.responded |= responded;
        br.done.get_or_insert((408, None));
        if already {
            // Its CANCEL is out; wait 64·T1 for the final response, then destroy it.
            self.wait_after_cancel(key, id, now);
        } else if responded {
            self.cancel_once(key, id, now);
        } else {
            self.abandon(key, id);
        }
        !already
    }

    /// No more retransmissions of INVITE `key` (no provisional yet, so no CANCEL: §9.1);
    /// Timer B ends it.
    fn abandon(&mut self, key: &TransactionKey, id: CallId) {
        self.actions.push_back(Action::Abandon { key: key.clone() });
        self.ring.branch_due.remove(key);
        self.ring.branches.insert(
            key.clone(),
            BranchTimer {
                call: id,
                responded: false,
                state: Branch::Abandoned,
            },
        );
    }

    /// Sends a CANCEL for INVITE `key` of call `id` to where it went and arms §9.1's wait.
    fn cancel_once(&mut self, key: &TransactionKey, id: CallId, now: Instant) {
        let dest = self
            .forks
            .get(key)
            .map(|b| b.peer.clone())
            .or_else(|| self.calls.get(&id).map(|c| c.b.peer.clone()));
        match dest {
            Some(dest) => self.send_cancel(key, dest, id, now),
            None => self.wait_after_cancel(key, id, now),
        }
    }

    /// Sends a CANCEL for INVITE `key` of call `id` to `dest` (unless one is queued already)
    /// and arms §9.1's wait: if no final response comes within 64·T1 the transaction is
    /// destroyed ([`Action::Terminate`]) and the branch is over as a timeout. Every CANCEL the
    /// B2BUA sends goes through here (the caller's CANCEL, fork losers, Timer C, the ring
    /// limit, a diversion, a missing PRACK, a BYE before the answer, shutdown).
    pub(super) fn send_cancel(
        &mut self,
        key: &TransactionKey,
        dest: Peer,
        id: CallId,
        now: Instant,
    ) {
        let queued = self
            .actions
            .iter()
            .any(|a| matches!(a, Action::Cancel { key: k, .. } if k == key));
        if !queued {
            self.actions.push_back(Action::Cancel {
                key: key.clone(),
                dest,
            });
        }
        self.wait_after_cancel(key, id, now);
    }

    fn wait_after_cancel(&mut self, key: &TransactionKey, id: CallId, now: Instant) {
        self.ring.branches.insert(
            key.clone(),
            BranchTimer {
                call: id,
                responded: true,
                state: Branch::Cancelled,
            },
        );
        self.ring
            .branch_due
            .set(key.clone(), now + self.cfg.t1 * 64);
    }

    /// The ring limit of call `id` passed.
    fn ring_limit(&mut self, id: CallId, media: &mut dyn MediaControl, now: Instant) {
        let Some(call) = self.calls.get(&id) else {
            return;
        };
        if call.phase != Phase::Calling || call.cancel_pending || call.moving {
            return;
        }
        // A no-answer diversion (voicemail) takes the call, as at its own no-answer timer.
        if self.divert(id, None, now) {
            return;
        }
        let Some(call) = self.calls.get(&id) else {
            return;
        };
        let primary = call.b_invite_key.clone();
        let mut going: Vec<(TransactionKey, bool)> = self
            .forks
            .iter()
            .filter(|(_, b)| b.call == id && b.done.is_none() && !b.cancelled)
            .map(|(k, b)| (k.clone(), b.responded))
            .collect();
        if !self.forks.contains_key(&primary) {
            going.push((primary, call.b_responded));
        }
        let r = response_with_tag(&call.a_invite, 480, "", &call.a_tag);
        let a_key = call.a_invite_key.clone();
        for (key, responded) in going {
            let responded = responded || self.ring.branches.get(&key).is_some_and(|t| t.responded);
            self.give_up_branch(id, &key, responded, now);
        }
        self.ring.ring_timeouts += 1;
        tracing::info!(call = id.0, "ring limit reached: 480 to the caller");
        self.respond(&a_key, r);
        self.end(id, "ring-timeout", media, now);
    }
}

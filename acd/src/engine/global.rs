//! One queue over several ACD nodes, in one global order (ARCHITECTURE.md, *One queue over
//! several ACD nodes*). Sans-IO, part of the engine.
//!
//! Every caller has a place in the global order ([`statebus::waiting::OrderKey`]: priority,
//! original join time in unix ms, node EID, caller id). The engine publishes its own waiting
//! callers ([`WaitingChange`], polled by the driver and carried by the bus) and is told the
//! callers waiting at other nodes ([`Engine::set_remote_waiting`]). A dispatch walks the merge
//! of both: a remote caller takes a turn as a local one does (app_queue's `is_our_turn`: a
//! caller is offered only while its place is within the number of available members), so a
//! node offers a free agent to its caller only when no caller ahead of it anywhere is waiting
//! for it. Claims still go through the gateway's arbiter (`ringinuse=no`): two nodes that both
//! believe they are first never connect the same agent.

use std::cmp::Reverse;

use statebus::waiting::OrderKey;
use statebus::{Eid, WaitingCaller};

use super::{CallerKey, Engine, QueueId};

/// A change of this node's waiting callers, for the fabric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitingChange {
    /// A caller waits (publish its record).
    Put(WaitingCaller),
    /// A caller left the queue (connected, abandoned, timed out): withdraw its record.
    Gone {
        /// Queue name.
        queue: String,
        /// Caller id.
        caller: String,
    },
}

/// One place in a queue's global order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Place {
    /// A caller waiting here.
    Local(CallerKey),
    /// A caller waiting at another node.
    Remote,
}

impl Engine {
    /// Take part in a global order as fabric member `eid`: from now on every caller's join and
    /// exit is reported through [`Engine::poll_waiting`]. A new caller is offered no agent
    /// before `settle` has passed (engine time), so a caller who joined earlier at another node
    /// is heard of first whenever the fabric carries its record within `settle`: an inversion
    /// needs a propagation delay above `settle` (ARCHITECTURE.md).
    pub fn set_fabric_eid(&mut self, eid: Eid, settle: std::time::Duration) {
        self.fabric_eid = Some(eid);
        self.settle = settle;
    }

    /// Whether a local caller is still in its settle time.
    pub(super) fn settling(&self, ck: CallerKey) -> bool {
        !self.settle.is_zero()
            && self
                .callers
                .get(&ck)
                .is_some_and(|c| self.now < c.joined.saturating_add(self.settle))
    }

    /// The next change of this node's waiting callers to publish.
    pub fn poll_waiting(&mut self) -> Option<WaitingChange> {
        self.waiting_out.pop_front()
    }

    /// Every record waiting on the fabric now (this node's own are ignored: the engine holds
    /// them). Queues the records name that this node does not serve are ignored. Queues whose
    /// remote callers changed are dispatched again.
    pub fn set_remote_waiting(&mut self, now: super::Time, records: &[WaitingCaller]) {
        self.advance(now);
        let own = self.fabric_eid;
        let mut by_queue: Vec<Vec<OrderKey>> = vec![Vec::new(); self.queues.len()];
        for w in records {
            if Some(w.eid) == own {
                continue;
            }
            if let Ok(q) = self.qid(&w.queue) {
                by_queue[q].push(w.order());
            }
        }
        for (q, mut keys) in by_queue.into_iter().enumerate() {
            keys.sort();
            let old = self.remote.get(&q).map(Vec::as_slice).unwrap_or(&[]);
            if old == keys.as_slice() {
                continue;
            }
            if keys.is_empty() {
                self.remote.remove(&q);
            } else {
                self.remote.insert(q, keys);
            }
            self.dispatch(q);
        }
    }

    /// The caller's position (1 = next) in the queue's global order: local and remote callers.
    pub fn global_position(&self, queue: &str, caller: &str) -> Option<usize> {
        let q = self.qid(queue).ok()?;
        let ck = *self.caller_by_id.get(caller)?;
        self.places(q)
            .iter()
            .position(|p| *p == Place::Local(ck))
            .map(|p| p + 1)
    }

    /// The estimated wait of a waiting caller, in seconds, for `announce-holdtime`: the queue's
    /// average hold time (app_queue's `holdtime`, a boxcar filter over answered callers' waits)
    /// times the caller's place in the global order, so callers ahead of it at other nodes
    /// count as its own node's do. `None` for a caller not waiting here.
    pub fn estimated_wait(&self, queue: &str, caller: &str) -> Option<u64> {
        let place = self.global_position(queue, caller)?;
        let avg = self.queue_stats(queue)?.holdtime_weighted_secs;
        Some(avg.saturating_mul(u64::try_from(place).unwrap_or(u64::MAX)))
    }

    /// Callers waiting in the queue at every node (this one's and the remote ones it knows).
    pub fn global_waiting(&self, queue: &str) -> usize {
        let Ok(q) = self.qid(queue) else {
            return 0;
        };
        self.queues[q].callers.len() + self.remote.get(&q).map_or(0, Vec::len)
    }

    /// The order key of a local caller.
    pub(super) fn order_of(&self, ck: CallerKey) -> Option<OrderKey> {
        let c = self.callers.get(&ck)?;
        Some((
            Reverse(c.priority),
            c.joined_ms,
            self.fabric_eid.unwrap_or(Eid([0; 6])),
            c.id.clone(),
        ))
    }

    /// The queue's places in global order: its local callers (in their order) merged with the
    /// remote ones by order key.
    pub(super) fn places(&self, q: QueueId) -> Vec<Place> {
        let local = &self.queues[q].callers;
        let Some(remote) = self.remote.get(&q) else {
            return local.iter().map(|ck| Place::Local(*ck)).collect();
        };
        let mut out = Vec::with_capacity(local.len() + remote.len());
        let mut r = remote.iter().peekable();
        for ck in local {
            if let Some(key) = self.order_of(*ck) {
                while r.peek().is_some_and(|rk| **rk < key) {
                    r.next();
                    out.push(Place::Remote);
                }
            }
            out.push(Place::Local(*ck));
        }
        out.extend(r.map(|_| Place::Remote));
        out
    }

    /// Report a local caller's record (when taking part in a global order).
    pub(super) fn publish_waiting(&mut self, ck: CallerKey) {
        let (Some(eid), Some(c)) = (self.fabric_eid, self.callers.get(&ck)) else {
            return;
        };
        let qname = &self.queues[c.queue].cfg.name;
        let w = WaitingCaller::new(qname, &c.id, c.priority, c.joined_ms, eid);
        self.waiting_out.push_back(WaitingChange::Put(w));
    }

    /// Report that a local caller left its queue.
    pub(super) fn withdraw_waiting(&mut self, queue: &str, caller: &str) {
        if self.fabric_eid.is_some() {
            self.waiting_out.push_back(WaitingChange::Gone {
                queue: queue.to_owned(),
                caller: caller.to_owned(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use statebus::{DeviceState, Eid, WaitingCaller};

    use crate::engine::{Action, EngineConfig, Join, MemberConfig, OfferOutcome, QueueConfig};
    use crate::Engine;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// Position and estimated wait count the callers waiting at other nodes ahead of ours.
    #[test]
    fn position_and_estimated_wait_use_the_global_place() {
        let mut q = QueueConfig::new("q");
        q.ringinuse = false;
        q.members = vec![MemberConfig::new("SIP/a")];
        let cfg = EngineConfig {
            queues: vec![q],
            ..EngineConfig::default()
        };
        let mut en = Engine::new(&cfg).expect("engine");
        let (ours, theirs) = (Eid([1; 6]), Eid([2; 6]));
        en.set_fabric_eid(ours, Duration::ZERO);
        // One caller answered after 40 s of waiting: average hold time 10 s (app_queue's
        // filter: 0·3/4 + 40/4).
        en.device_state(secs(0), "SIP/a", DeviceState::Unavailable);
        let mut j = Join::new("c1", "q");
        j.place.joined_ms = Some(1_000);
        en.join(secs(0), j).expect("join");
        while en.poll_action().is_some() {}
        en.device_state(secs(40), "SIP/a", DeviceState::NotInUse);
        let offer = std::iter::from_fn(|| en.poll_action())
            .filter_map(|a| match a {
                Action::Offer { id, .. } => Some(id),
                _ => None,
            })
            .last()
            .expect("offered");
        en.offer_outcome(secs(40), offer, OfferOutcome::Answered)
            .expect("answered");
        en.device_state(secs(40), "SIP/a", DeviceState::InUse);
        assert_eq!(
            en.queue_stats("q").map(|s| s.holdtime_weighted_secs),
            Some(10)
        );

        // Our caller c2 joined at 50 s; alone it is first: 10 s.
        let mut j = Join::new("c2", "q");
        j.place.joined_ms = Some(50_000);
        en.join(secs(50), j).expect("join");
        assert_eq!(en.global_position("q", "c2"), Some(1));
        assert_eq!(en.estimated_wait("q", "c2"), Some(10));
        // Two callers joined earlier at another node, one later: c2 is third, 30 s.
        let remote: Vec<WaitingCaller> = [("r1", 20_000), ("r2", 30_000), ("r3", 60_000)]
            .iter()
            .map(|(id, ms)| WaitingCaller::new("q", id, 0, *ms, theirs))
            .collect();
        en.set_remote_waiting(secs(51), &remote);
        assert_eq!(en.global_position("q", "c2"), Some(3));
        assert_eq!(en.estimated_wait("q", "c2"), Some(30));
        assert_eq!(en.global_waiting("q"), 4);
        // They are answered there: c2 is first again.
        en.set_remote_waiting(secs(52), &remote[2..]);
        assert_eq!(en.estimated_wait("q", "c2"), Some(10));
        assert_eq!(en.estimated_wait("q", "nobody"), None);
    }

    fn offers(en: &mut Engine) -> Vec<crate::engine::OfferId> {
        std::iter::from_fn(|| en.poll_action())
            .filter_map(|a| match a {
                Action::Offer { id, .. } => Some(id),
                _ => None,
            })
            .collect()
    }

    /// An offer the arbiter refused because another node's caller took the agent: the caller
    /// is offered as soon as the agent is free again, not a `retry` later; without word from
    /// the fabric the agent is free again after 5 s.
    #[test]
    fn an_agent_taken_elsewhere_is_offered_when_free_not_after_retry() {
        let mut q = QueueConfig::new("q");
        q.ringinuse = false;
        q.retry = 30;
        q.members = vec![MemberConfig::new("SIP/a")];
        let cfg = EngineConfig {
            queues: vec![q],
            ..EngineConfig::default()
        };
        let mut en = Engine::new(&cfg).expect("engine");
        en.device_state(secs(0), "SIP/a", DeviceState::NotInUse);
        en.join(secs(0), Join::new("c1", "q")).expect("join");
        let first = offers(&mut en);
        assert_eq!(first.len(), 1);
        en.offer_outcome(secs(0), first[0], OfferOutcome::Taken)
            .expect("taken");
        assert!(offers(&mut en).is_empty(), "not offered again at once");
        // The fabric catches up: in a call, then free 2 s later: offered then.
        en.device_state(Duration::from_millis(10), "SIP/a", DeviceState::InUse);
        assert!(offers(&mut en).is_empty());
        en.device_state(secs(2), "SIP/a", DeviceState::NotInUse);
        let again = offers(&mut en);
        assert_eq!(again.len(), 1, "offered when free, not after retry (30 s)");

        // Refused again, and the fabric says nothing more: free again after 5 s.
        en.offer_outcome(secs(2), again[0], OfferOutcome::Taken)
            .expect("taken");
        en.handle_timeout(secs(6));
        assert!(offers(&mut en).is_empty(), "still taken at 4 s");
        en.handle_timeout(secs(7));
        assert_eq!(offers(&mut en).len(), 1, "free again 5 s after the refusal");
    }
}

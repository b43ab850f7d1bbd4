//! The event loop's timers: it sleeps until the earliest deadline the cores and stores expose
//! (the transaction layer's and the B2BUA's `poll_timeout`, the next registration expiry, the
//! next outbound REGISTER, a supervisor's unacknowledged 200, the MWI notifier, a due log
//! summary, the end of the shutdown's BYE wait) instead of ticking every 250 ms. The
//! registration expiry (read from the location service's expiry index, O(log n)) and the MWI
//! deadline (a walk over every subscription) are recomputed at each housekeeping run, which
//! follows within [`POLL`] anything that woke the loop (as the 250 ms tick did), not at every
//! iteration.
//!
//! Work without a deadline of its own (moving the calls of a dead ACD node, which depends on
//! the bus's liveness view; ending the overload controller's idle intervals; forgetting
//! lapsed security counters) is polled every [`POLL`] as before, but only while it can matter:
//! traffic came since the last run, calls went through the fabric, or overload control is
//! shedding or recovering. An idle gateway sleeps.

use std::time::{Duration, Instant, SystemTime};

use super::Core;
use crate::transport::earliest;

/// How often work without a deadline is polled while it can matter.
pub(super) const POLL: Duration = Duration::from_millis(250);

/// Least time between two housekeeping runs (a deadline that stays due cannot spin the loop).
pub(super) const MIN_GAP: Duration = Duration::from_millis(10);

/// When housekeeping last ran, whether anything happened since, and the deadlines computed
/// at each run (the MWI one walks every subscription).
#[derive(Debug)]
pub(super) struct Housekeeping {
    last: Instant,
    /// Something woke the loop since the last run (a transport event, the bus, a commit, the
    /// handle): a REGISTER or SUBSCRIBE may have moved a deadline.
    pub(super) traffic: bool,
    /// The next registration expiry and MWI deadline, computed at each run (and at start):
    /// the MWI one is O(subscriptions), too dear for every loop iteration; anything that can
    /// move them sets `traffic`, so a run within [`POLL`] recomputes them.
    walked: Option<Instant>,
}

impl Housekeeping {
    pub(super) fn new(now: Instant) -> Self {
        Self {
            last: now,
            traffic: false,
            walked: None,
        }
    }

    /// When housekeeping is due: the earliest of `deadlines`, or [`POLL`] after the last run
    /// when `poll`; never sooner than [`MIN_GAP`] after the last run; `None`: nothing to do.
    pub(super) fn due(&self, poll: bool, deadlines: &[Option<Instant>]) -> Option<Instant> {
        let polled = poll.then_some(self.last + POLL);
        let at = deadlines
            .iter()
            .copied()
            .fold(earliest(polled, self.walked), earliest)?;
        Some(at.max(self.last + MIN_GAP))
    }

    fn ran(&mut self, now: Instant) {
        self.last = now;
        self.traffic = false;
    }
}

/// The transaction table's size as the handle reads it ([`super::Gateway::transactions`]),
/// published by the loop whenever timers fire (so also while Timer J empties the table after
/// a load).
#[derive(Debug, Default)]
pub(super) struct TxStats {
    live: std::sync::atomic::AtomicUsize,
    completed: std::sync::atomic::AtomicUsize,
    completed_capacity: std::sync::atomic::AtomicUsize,
    abandoned: std::sync::atomic::AtomicU64,
    mismatched: std::sync::atomic::AtomicU64,
}

/// SIP transactions of the gateway: live ones (with their parsed request), completed non-INVITE
/// server transactions held compact for Timer J, the capacity of the latter's table, and the
/// non-INVITE server transactions ended because no final response came from the gateway
/// (cumulative; `TransactionLayer::abandoned`), and the requests that matched a completed
/// transaction with other header fields than its request's, so got no response from it
/// (cumulative; `TransactionLayer::mismatched_retransmissions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Transactions {
    pub live: usize,
    pub completed: usize,
    pub completed_capacity: usize,
    pub abandoned: u64,
    pub mismatched: u64,
}

impl TxStats {
    pub(super) fn publish(
        &self,
        tl: &sip_core::transaction::TransactionLayer<crate::transport::Peer>,
    ) {
        use std::sync::atomic::Ordering::Relaxed;
        let completed = tl.completed_footprint_len();
        self.live.store(tl.len() - completed, Relaxed);
        self.completed.store(completed, Relaxed);
        self.completed_capacity
            .store(tl.completed_capacity(), Relaxed);
        self.abandoned.store(tl.abandoned(), Relaxed);
        self.mismatched
            .store(tl.mismatched_retransmissions(), Relaxed);
    }

    pub(super) fn read(&self) -> Transactions {
        use std::sync::atomic::Ordering::Relaxed;
        Transactions {
            live: self.live.load(Relaxed),
            completed: self.completed.load(Relaxed),
            completed_capacity: self.completed_capacity.load(Relaxed),
            abandoned: self.abandoned.load(Relaxed),
            mismatched: self.mismatched.load(Relaxed),
        }
    }
}

/// A wall-clock deadline `at` on the monotonic clock, `now` and `wall_now` being the same
/// moment on both (past deadlines are due now).
pub(super) fn instant_of(at: SystemTime, now: Instant, wall_now: SystemTime) -> Instant {
    now + at.duration_since(wall_now).unwrap_or(Duration::ZERO)
}

impl Core {
    /// When housekeeping is next due (the loop also waits for the transaction layer's and the
    /// B2BUA's timers: `ua.rs`).
    pub(super) fn housekeeping_due(&self) -> Option<Instant> {
        let overload = self.overload.shedding()
            || self.overload.admit_fraction() < 1.0
            || !self.overload.standing_queue().is_zero();
        let poll = self.housekeeping.traffic || !self.fabric_calls.is_empty() || overload;
        self.housekeeping.due(
            poll,
            &[
                self.outbound.poll_timeout(),
                self.spy_deadline(),
                crate::transport::loglimit::next_flush(),
                self.shutdown_deadline(),
                self.durable.behind_due(),
            ],
        )
    }

    /// Recomputes the registration expiry and the MWI deadline.
    pub(super) fn walk_deadlines(&mut self) {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let expiry = (self.registrar.next_expiry()).map(|t| instant_of(t, now, wall));
        self.housekeeping.walked = earliest(expiry, self.mwi_deadline());
    }

    /// The loop woke for a deadline (the transaction layer's timers have run): the B2BUA's,
    /// then housekeeping when it is due.
    pub(super) fn on_timers(&mut self, now: Instant) {
        self.tx_stats.publish(&self.tl);
        self.b2bua.handle_timeout(&mut self.media, now);
        self.ring_stats.publish(&self.b2bua);
        if self.housekeeping_due().is_some_and(|t| t <= now) {
            self.housekeeping(now);
        }
    }

    /// Everything that is due, each step a no-op when nothing is.
    fn housekeeping(&mut self, now: Instant) {
        for aor in self.registrar.expire(SystemTime::now()) {
            self.persist(&aor);
        }
        self.write_behind(now);
        self.register_outbound(None);
        self.spy_retransmit(now);
        self.guard
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .expire(now);
        // A flood that stopped still gets its "N similar suppressed" line.
        crate::transport::loglimit::flush();
        self.move_orphans();
        self.overload.tick(now);
        self.mwi_tick();
        self.walk_deadlines();
        self.housekeeping.ran(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_stats_count_abandoned_transactions() {
        use sip_core::transaction::{Event, TransactionLayer, Transport};
        let t0 = Instant::now();
        let mut tl = TransactionLayer::<crate::transport::Peer>::default();
        let peer = crate::transport::Peer {
            addr: "192.0.2.9:5060".parse().expect("addr"),
            transport: crate::transport::Transport::Udp,
            local: "192.0.2.1:5060".parse().expect("addr"),
        };
        let req = sip_core::test_util::request(
            "OPTIONS sip:gw@192.0.2.1 SIP/2.0\nVia: SIP/2.0/UDP 192.0.2.9;branch=z9hG4bKlost\n\
             From: <sip:a@b>;tag=1\nTo: <sip:gw@192.0.2.1>\nCall-ID: lost\nCSeq: 1 OPTIONS\n",
            "",
        );
        tl.on_message(req.into(), peer, Transport::Unreliable, t0)
            .expect("accepted");
        assert!(matches!(tl.poll_event(), Some(Event::Request { .. })));
        let stats = TxStats::default();
        stats.publish(&tl);
        assert_eq!((stats.read().live, stats.read().abandoned), (1, 0));
        // Never answered (a request the gateway lost): gone after the bound, counted.
        while let Some(t) = tl.poll_timeout() {
            tl.handle_timeout(t);
        }
        stats.publish(&tl);
        assert_eq!((stats.read().live, stats.read().abandoned), (0, 1));
    }

    #[test]
    fn an_idle_gateway_sleeps() {
        let h = Housekeeping::new(Instant::now());
        assert_eq!(h.due(false, &[None, None]), None);
    }

    #[test]
    fn walked_deadlines_count_until_the_next_walk() {
        let t0 = Instant::now();
        let mut h = Housekeeping::new(t0);
        h.walked = Some(t0 + Duration::from_secs(30));
        assert_eq!(h.due(false, &[]), h.walked);
        assert_eq!(
            h.due(false, &[Some(t0 + Duration::from_secs(40))]),
            h.walked
        );
        assert_eq!(h.due(true, &[]), Some(t0 + POLL));
    }

    #[test]
    fn the_earliest_deadline_wins_not_sooner_than_the_gap() {
        let t0 = Instant::now();
        let h = Housekeeping::new(t0);
        let s = |ms| Some(t0 + Duration::from_millis(ms));
        assert_eq!(h.due(false, &[s(3000), None, s(900)]), s(900));
        // Polling: at most POLL after the last run.
        assert_eq!(h.due(true, &[s(3000)]), s(250));
        assert_eq!(h.due(true, &[s(100)]), s(100));
        // A deadline already past (or one that stays due) waits for the gap.
        assert_eq!(h.due(false, &[Some(t0)]), s(10));
    }

    #[test]
    fn a_run_starts_the_next_poll_and_clears_the_traffic() {
        let t0 = Instant::now();
        let mut h = Housekeeping::new(t0);
        h.traffic = true;
        let t1 = t0 + Duration::from_secs(7);
        h.ran(t1);
        assert!(!h.traffic);
        assert_eq!(h.due(true, &[]), Some(t1 + POLL));
    }

    #[test]
    fn wall_clock_deadlines_map_to_the_monotonic_clock() {
        let now = Instant::now();
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_765_000_000);
        assert_eq!(
            instant_of(wall + Duration::from_millis(1500), now, wall),
            now + Duration::from_millis(1500)
        );
        assert_eq!(instant_of(wall - Duration::from_secs(5), now, wall), now);
    }
}

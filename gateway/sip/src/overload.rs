//! Overload control, sans-IO (issue 16): how long received messages wait before the core
//! reads them decides how much *new* work it admits, so a server offered more than it can do
//! keeps doing what it can (no collapse) and says so early (`503` + `Retry-After`).
//!
//! **Signal.** The caller passes, with every message, how long it waited between the transport
//! and the core (`queued`). As in CoDel, the *smallest* wait over an interval (100 ms) is the
//! standing queue: bursts and scheduling hiccups of a loaded machine raise the largest wait,
//! not the smallest. A standing queue above `target` (20 ms) is overload.
//!
//! **Control.** New work (out-of-dialog requests that create a dialog, a registration or a
//! subscription) is admitted at a fraction `p`. An interval with a standing queue compares what
//! came in with what the core got through: the gate counts the messages it let in, the core
//! the messages it read. When more came in than 95 % of what was read (85 % above twice the
//! target, so that a deep queue drains), new work is scaled down by that ratio (the rest of
//! what comes in follows from new work: a challenge's second leg, a call's ACK and BYE),
//! never below `min_admit`; when less came in, the queue is draining and `p` stays. Each interval without a standing queue adds 0.02. So the admitted load is
//! matched to what the core can do now (a busy machine's core gets less CPU and is offered
//! less), instead of being cut by a fixed factor every interval until the queue is gone,
//! which at a load just above capacity refused far more than the excess: a blind ×0.95 per
//! interval let goodput fall to 82–88 % of capacity at 1.05–1.3× offered in the simulation
//! below (RFC 7415's rate-based control matches a rate in the same spirit; RFC 7339's
//! loss-based one is the blind AIMD). Admission is deterministic (a credit counter), not
//! random.
//!
//! **Where.** The core measures ([`Overload::observe`]) and publishes its decision to a
//! [`Gate`] (atomics) that the transport readers apply to each message as it arrives, before
//! it is queued: refusing costs the core nothing and refused messages never lengthen its
//! queue. Only the retransmission check needs the transaction layer, so it runs in the core
//! ([`Overload::drop_retransmission`]).
//!
//! **Order of shedding** while `p < 1` or a queue stands:
//! 1. dropped silently: retransmissions of a request still in progress (the caller says so;
//!    the transaction would only absorb them) and out-of-dialog OPTIONS (keep-alives, qualify:
//!    their senders retry or draw no conclusion from one silence);
//! 2. refused with `503 Service Unavailable` + `Retry-After`: new requests beyond the admitted
//!    fraction; a request carrying credentials (the second leg of a digest exchange whose
//!    challenge was already paid for) is admitted unless the wait exceeds `hard_delay`; the
//!    heavy senders pay first: a source address that sent at most [`LIGHT_SOURCE`] new requests
//!    in the current interval (a phone) is admitted, up to [`LIGHT_ADMITS`] such admissions an
//!    interval (so many light sources together cannot open the gate);
//! 3. never refused: responses, ACK, CANCEL, BYE, and every in-dialog request (To tag): they
//!    finish work already admitted.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rsip::prelude::*;
use rsip::{Header, Method, SipMessage};

/// Overload policy settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Standing queue (smallest wait over an interval) above which the core is overloaded.
    /// Default 20 ms.
    pub target: Duration,
    /// The measuring interval. Default 100 ms.
    pub interval: Duration,
    /// Lowest admitted fraction of new work. Default 0.02.
    pub min_admit: f64,
    /// A standing queue above this refuses new work with credentials too. Default 200 ms.
    pub hard_delay: Duration,
    /// `Retry-After` of a 503, seconds. Default 2.
    pub retry_after: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            target: Duration::from_millis(20),
            interval: Duration::from_millis(100),
            min_admit: 0.02,
            hard_delay: Duration::from_millis(200),
            retry_after: 2,
        }
    }
}

/// What to do with a received message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Hand it to the transaction layer.
    Admit,
    /// Answer `503 Service Unavailable` with `Retry-After: retry_after` (statelessly) and
    /// forget it.
    Reject { retry_after: u32 },
    /// Forget it without an answer.
    Drop,
}

/// How the policy sees a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Finishes admitted work: responses, ACK, CANCEL, BYE, in-dialog requests.
    Essential,
    /// New work with credentials (Authorization / Proxy-Authorization).
    Authorized,
    /// New work.
    New,
    /// Low value: out-of-dialog OPTIONS.
    Low,
}

impl Class {
    /// The class of `message` (retransmissions are the caller's knowledge, see
    /// [`Overload::decide`]).
    pub fn of(message: &SipMessage) -> Self {
        let SipMessage::Request(req) = message else {
            return Class::Essential;
        };
        if matches!(req.method, Method::Ack | Method::Cancel | Method::Bye) {
            return Class::Essential;
        }
        let mut to_tag = false;
        let mut credentials = false;
        for h in req.headers.iter() {
            match h {
                Header::To(to) => {
                    to_tag = to_tag || crate::transaction::parse::tag(to.value()).is_some()
                }
                Header::Authorization(_) | Header::ProxyAuthorization(_) => credentials = true,
                _ => {}
            }
        }
        if to_tag {
            Class::Essential
        } else if req.method == Method::Options {
            Class::Low
        } else if credentials {
            Class::Authorized
        } else {
            Class::New
        }
    }
}

/// What the policy did, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// New work admitted (classes New and Authorized).
    pub admitted: u64,
    /// Refused with 503.
    pub rejected: u64,
    /// Low-value messages dropped.
    pub dropped_low: u64,
    /// Retransmissions of requests in progress dropped.
    pub dropped_retransmissions: u64,
}

/// New requests an interval from one source address that still count as a light sender.
pub const LIGHT_SOURCE: u32 = 2;
/// Light senders admitted per interval while shedding, at most.
pub const LIGHT_ADMITS: u32 = 64;
/// Source addresses counted per interval; beyond, a new source counts as heavy.
const MAX_SOURCES: usize = 4096;

/// New requests per source address in the current interval.
#[derive(Debug, Default)]
struct Sources {
    epoch: u64,
    counts: HashMap<SocketAddr, u32>,
    light_admits: u32,
}

/// Fixed point of the admitted fraction in the gate.
const ONE: u32 = 1 << 16;

/// The admission decision as the transport readers see it: shared, lock-free.
#[derive(Debug)]
pub struct Gate {
    /// Admitted fraction of new work, ×[`ONE`].
    p: AtomicU32,
    /// Shedding: low-value messages dropped, new work admitted at `p`.
    shedding: AtomicBool,
    /// Beyond the hard limit: credentials no longer admit.
    hard: AtomicBool,
    retry_after: u32,
    /// Admission credit, ×[`ONE`].
    credit: AtomicU32,
    /// The core's interval number (sources are counted per interval).
    epoch: AtomicU64,
    sources: Mutex<Sources>,
    admitted: AtomicU64,
    rejected: AtomicU64,
    dropped_low: AtomicU64,
    /// Counted by the core ([`Overload::drop_retransmission`]), kept here so that whoever
    /// holds the gate reads every count.
    dropped_retransmissions: AtomicU64,
    /// Every message let in (any class): what the core is offered.
    let_in: AtomicU64,
    /// New requests seen and admitted (class New): what `p` acts on.
    new_seen: AtomicU64,
    new_admitted: AtomicU64,
    full_refusals: AtomicU64,
}

impl Gate {
    fn new(retry_after: u32) -> Self {
        Self {
            p: AtomicU32::new(ONE),
            shedding: AtomicBool::new(false),
            hard: AtomicBool::new(false),
            retry_after,
            credit: AtomicU32::new(0),
            epoch: AtomicU64::new(0),
            sources: Mutex::new(Sources::default()),
            admitted: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            dropped_low: AtomicU64::new(0),
            dropped_retransmissions: AtomicU64::new(0),
            let_in: AtomicU64::new(0),
            new_seen: AtomicU64::new(0),
            new_admitted: AtomicU64::new(0),
            full_refusals: AtomicU64::new(0),
        }
    }

    /// The cumulative counts the controller compares with the core's reads.
    fn flow(&self) -> Flow {
        Flow {
            let_in: self.let_in.load(Relaxed),
            new_seen: self.new_seen.load(Relaxed),
            new_admitted: self.new_admitted.load(Relaxed),
        }
    }

    /// What the policy did so far (for metrics: the gate is shared with the process).
    pub fn counters(&self) -> Counters {
        Counters {
            admitted: self.admitted.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
            dropped_low: self.dropped_low.load(Relaxed),
            dropped_retransmissions: self.dropped_retransmissions.load(Relaxed),
        }
    }

    /// The `Retry-After` (seconds) of the gate's 503s, for a task that refuses work beside
    /// the core (the gateway's register shards when the core's queue is full).
    pub fn retry_after(&self) -> u32 {
        self.retry_after
    }

    /// True while the core sheds (low-value messages dropped, new work admitted at a
    /// fraction).
    pub fn shedding(&self) -> bool {
        self.shedding.load(Relaxed)
    }

    /// [`Overload::drop_retransmission`] for a task that reads requests beside the core (the
    /// gateway's register shards): true (counted) while shedding when `pending` (its own
    /// transaction layer's lookup, asked only then) says the request is a retransmission of
    /// one still in progress.
    pub fn drop_retransmission(&self, pending: impl FnOnce() -> bool) -> bool {
        if self.shedding() && pending() {
            self.dropped_retransmissions.fetch_add(1, Relaxed);
            return true;
        }
        false
    }

    /// True when `source` is a light sender this interval and may be admitted as one.
    fn light(&self, source: SocketAddr) -> bool {
        let epoch = self.epoch.load(Relaxed);
        let mut s = self.sources.lock().unwrap_or_else(PoisonError::into_inner);
        if s.epoch != epoch {
            s.epoch = epoch;
            s.counts.clear();
            s.light_admits = 0;
        }
        let count = if let Some(c) = s.counts.get_mut(&source) {
            *c = c.saturating_add(1);
            *c
        } else if s.counts.len() < MAX_SOURCES {
            s.counts.insert(source, 1);
            1
        } else {
            u32::MAX
        };
        if count <= LIGHT_SOURCE && s.light_admits < LIGHT_ADMITS {
            s.light_admits += 1;
            return true;
        }
        false
    }

    /// Decides about a message that arrives while the core's queue is full (its transport
    /// would otherwise stop reading and let the kernel drop whatever comes next, unseen and
    /// uncounted): new work is refused with 503 and low-value messages are dropped whatever
    /// the admitted fraction; everything else waits for room.
    pub fn decide_full(&self, message: &SipMessage) -> Verdict {
        match Class::of(message) {
            Class::New => {
                self.new_seen.fetch_add(1, Relaxed);
                self.rejected.fetch_add(1, Relaxed);
                self.full_refusals.fetch_add(1, Relaxed);
                Verdict::Reject {
                    retry_after: self.retry_after,
                }
            }
            Class::Low => {
                self.dropped_low.fetch_add(1, Relaxed);
                self.full_refusals.fetch_add(1, Relaxed);
                Verdict::Drop
            }
            Class::Essential | Class::Authorized => {
                self.let_in.fetch_add(1, Relaxed);
                Verdict::Admit
            }
        }
    }

    /// Messages refused or dropped because the core's queue was full ([`Gate::decide_full`]),
    /// also counted in [`Counters::rejected`] and [`Counters::dropped_low`].
    pub fn full_refusals(&self) -> u64 {
        self.full_refusals.load(Relaxed)
    }

    /// Decides about a message from `source` as it arrives.
    pub fn decide(&self, message: &SipMessage, source: SocketAddr) -> Verdict {
        let class = Class::of(message);
        if class == Class::New {
            self.new_seen.fetch_add(1, Relaxed);
        }
        let verdict = self.decide_class(class, source);
        if verdict == Verdict::Admit {
            self.let_in.fetch_add(1, Relaxed);
            if class == Class::New {
                self.new_admitted.fetch_add(1, Relaxed);
            }
        }
        verdict
    }

    fn decide_class(&self, class: Class, source: SocketAddr) -> Verdict {
        if class == Class::Essential {
            return Verdict::Admit;
        }
        if !self.shedding.load(Relaxed) {
            if class != Class::Low {
                self.admitted.fetch_add(1, Relaxed);
            }
            return Verdict::Admit;
        }
        let reject = Verdict::Reject {
            retry_after: self.retry_after,
        };
        match class {
            Class::Essential => Verdict::Admit,
            Class::Low => {
                self.dropped_low.fetch_add(1, Relaxed);
                Verdict::Drop
            }
            Class::Authorized if !self.hard.load(Relaxed) => {
                self.admitted.fetch_add(1, Relaxed);
                Verdict::Admit
            }
            Class::Authorized => {
                self.rejected.fetch_add(1, Relaxed);
                reject
            }
            Class::New if self.light(source) => {
                self.admitted.fetch_add(1, Relaxed);
                Verdict::Admit
            }
            Class::New => {
                let p = self.p.load(Relaxed);
                // credit += p; admit (and take ONE off) when it reaches ONE, so that p of
                // every ONE requests are admitted. (The credit stays below ONE between calls;
                // resetting it to 0 instead admitted every second request for any p in
                // [0.5, 1), every third in [1/3, 0.5), …)
                let before = self
                    .credit
                    .fetch_update(Relaxed, Relaxed, |c| Some(admit_credit(c, p).0))
                    .unwrap_or(0);
                if admit_credit(before, p).1 {
                    self.admitted.fetch_add(1, Relaxed);
                    Verdict::Admit
                } else {
                    self.rejected.fetch_add(1, Relaxed);
                    reject
                }
            }
        }
    }
}

/// One request's turn of the admission credit (both ×[`ONE`]): the credit after it, and whether
/// the request is admitted.
fn admit_credit(credit: u32, p: u32) -> (u32, bool) {
    let c = credit.min(ONE).saturating_add(p.min(ONE));
    if c >= ONE {
        (c - ONE, true)
    } else {
        (c, false)
    }
}

/// The gate's cumulative counts at an interval's end.
#[derive(Debug, Clone, Copy, Default)]
struct Flow {
    let_in: u64,
    new_seen: u64,
    new_admitted: u64,
}

/// The overload controller of one core.
#[derive(Debug)]
pub struct Overload {
    cfg: Config,
    gate: Arc<Gate>,
    interval_start: Option<Instant>,
    /// Smallest wait seen in the current interval.
    interval_min: Option<Duration>,
    /// Messages the core read in the current interval.
    interval_read: u64,
    /// The gate's counts at the start of the current interval.
    flow: Flow,
    /// Standing queue of the last complete interval.
    standing: Duration,
    /// Admitted fraction of new work.
    p: f64,
}

impl Default for Overload {
    fn default() -> Self {
        Self::new(Config::default())
    }
}

impl Overload {
    pub fn new(cfg: Config) -> Self {
        Self {
            gate: Arc::new(Gate::new(cfg.retry_after)),
            cfg,
            interval_start: None,
            interval_min: None,
            interval_read: 0,
            flow: Flow::default(),
            standing: Duration::ZERO,
            p: 1.0,
        }
    }

    /// The gate to give the transport readers.
    pub fn gate(&self) -> Arc<Gate> {
        self.gate.clone()
    }

    /// Counts so far (the gate's and the core's).
    pub fn counters(&self) -> Counters {
        self.gate.counters()
    }

    /// The fraction of new work admitted now (1.0 without overload).
    pub fn admit_fraction(&self) -> f64 {
        self.p
    }

    /// The standing queue measured over the last complete interval.
    pub fn standing_queue(&self) -> Duration {
        self.standing
    }

    /// True while shedding.
    pub fn shedding(&self) -> bool {
        self.p < 1.0 || self.standing > self.cfg.target
    }

    /// Notes that a message waited `queued` between the transport and the core, which reads
    /// it at `now`. Call it for every message the core reads.
    pub fn observe(&mut self, now: Instant, queued: Duration) {
        let start = *self.interval_start.get_or_insert(now);
        if now.saturating_duration_since(start) >= self.cfg.interval {
            self.end_interval(now);
        }
        self.interval_min = Some(self.interval_min.map_or(queued, |m| m.min(queued)));
        self.interval_read += 1;
    }

    /// Ends the interval if it is over without a message (call it from a timer: an idle
    /// core has no queue, and the gate must open again).
    pub fn tick(&mut self, now: Instant) {
        let start = *self.interval_start.get_or_insert(now);
        if now.saturating_duration_since(start) >= self.cfg.interval {
            self.end_interval(now);
        }
    }

    fn end_interval(&mut self, now: Instant) {
        let was_shedding = self.shedding();
        // An interval without any message has no queue.
        self.standing = self.interval_min.take().unwrap_or(Duration::ZERO);
        let read = std::mem::take(&mut self.interval_read);
        let flow = self.gate.flow();
        let (let_in, new_seen, new_admitted) = (
            flow.let_in.wrapping_sub(self.flow.let_in),
            flow.new_seen.wrapping_sub(self.flow.new_seen),
            flow.new_admitted.wrapping_sub(self.flow.new_admitted),
        );
        self.flow = flow;
        if self.standing > self.cfg.target {
            self.p = self.matched(read, let_in, new_seen, new_admitted);
        } else {
            self.p = (self.p + 0.02).min(1.0);
        }
        self.interval_start = Some(now);
        let g = &self.gate;
        g.epoch.fetch_add(1, Relaxed);
        g.p.store((self.p * f64::from(ONE)) as u32, Relaxed);
        g.shedding.store(self.shedding(), Relaxed);
        g.hard.store(self.standing > self.cfg.hard_delay, Relaxed);
        if self.shedding() != was_shedding {
            let c = self.counters();
            tracing::warn!(
                shedding = self.shedding(),
                standing_queue_ms = self.standing.as_millis() as u64,
                admit_fraction = self.p,
                rejected = c.rejected,
                dropped_low = c.dropped_low,
                dropped_retransmissions = c.dropped_retransmissions,
                "SIP overload control"
            );
        }
    }

    /// The admitted fraction after an interval with a standing queue in which the core read
    /// `read` messages while the gate let in `let_in`, `new_admitted` of them new requests of
    /// `new_seen` offered. Everything let in is taken to follow from new work in proportion
    /// (a REGISTER's challenged first leg brings its second, an INVITE its ACK, responses and
    /// BYE), so new work is scaled by what the core read (less a margin that drains the
    /// queue) over what came in; kept while the queue drains; never raised. Work that does not
    /// follow from new requests (long calls' in-dialog traffic) makes the cut too small, and
    /// the next interval cuts again.
    fn matched(&self, read: u64, let_in: u64, new_seen: u64, new_admitted: u64) -> f64 {
        let margin = if self.standing > self.cfg.target * 2 {
            0.85
        } else {
            0.95
        };
        let floor = self.cfg.min_admit;
        if new_seen == 0 {
            // Nothing new offered to measure against (a queue of other work): the blind cut.
            return (self.p * margin).max(floor);
        }
        let capacity = margin * read as f64;
        if let_in as f64 <= capacity {
            return self.p.max(floor);
        }
        let admitted = new_admitted as f64 / new_seen as f64;
        let matched = admitted * capacity / let_in as f64;
        // At most the blind cut per interval: what the core reads also falls when the machine
        // starves it for a moment, and what comes in rises with clients' retransmissions.
        matched.clamp(self.p * margin, self.p).max(floor)
    }

    /// For a request the core read: true (counted) when it must be dropped as a
    /// retransmission of a request still in progress. `pending` (a transaction-layer
    /// lookup) is asked only while shedding.
    pub fn drop_retransmission(&mut self, pending: impl FnOnce() -> bool) -> bool {
        if self.shedding() && pending() {
            self.gate.dropped_retransmissions.fetch_add(1, Relaxed);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests;

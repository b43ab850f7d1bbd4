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
//! subscription) is admitted at a fraction `p`: each interval with a standing queue multiplies
//! it by 0.95 (never below `min_admit`), each interval without adds 0.02 (AIMD, as RFC 7339's
//! loss-based overload control). Admission is deterministic (a credit counter), not random.
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

    /// Decides about a message from `source` as it arrives.
    pub fn decide(&self, message: &SipMessage, source: SocketAddr) -> Verdict {
        let class = Class::of(message);
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
                // credit += p; admit (and take ONE) when it reaches ONE.
                let before = self
                    .credit
                    .fetch_update(Relaxed, Relaxed, |c| {
                        let c = c.saturating_add(p).min(ONE);
                        Some(if c >= ONE { 0 } else { c })
                    })
                    .unwrap_or(0);
                if before.saturating_add(p) >= ONE {
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

/// The overload controller of one core.
#[derive(Debug)]
pub struct Overload {
    cfg: Config,
    gate: Arc<Gate>,
    interval_start: Option<Instant>,
    /// Smallest wait seen in the current interval.
    interval_min: Option<Duration>,
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
        if self.standing > self.cfg.target {
            self.p = (self.p * 0.95).max(self.cfg.min_admit);
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

//! Reachability of the gateways an ACD node offers through, independent of the state fabric:
//! SIP OPTIONS keep-alives, sans-IO.
//!
//! Each target (a gateway's SIP address) is probed every [`ReachConfig::interval`]; a probe
//! not answered within [`ReachConfig::timeout`] is a miss and is followed at once by the next
//! probe. [`ReachConfig::misses`] misses in a row make the target unreachable; the first answer
//! (to a probe, or any response from it, [`Reachability::heard`]) makes it reachable again.
//! Targets start reachable (nothing proves otherwise yet). The driver sends the OPTIONS for
//! [`ReachEvent::Probe`], reports answers with [`Reachability::answered`], forgets the
//! transaction of an [`ReachEvent::Expired`] probe, and passes time in as `now`.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Keep-alive timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReachConfig {
    /// Time between two probes of a target that answers.
    pub interval: Duration,
    /// A probe not answered within this is a miss.
    pub timeout: Duration,
    /// Misses in a row that make a target unreachable (at least 1).
    pub misses: u32,
}

impl Default for ReachConfig {
    fn default() -> Self {
        ReachConfig {
            interval: Duration::from_millis(500),
            timeout: Duration::from_millis(400),
            misses: 2,
        }
    }
}

/// What the driver must do or know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReachEvent {
    /// Send an OPTIONS to `to`; report its answer with `answered(id)`.
    Probe {
        /// Probe id.
        id: u64,
        /// The target.
        to: SocketAddr,
    },
    /// Probe `id` got no answer in time: stop its transaction (a late answer still counts
    /// through [`Reachability::heard`]).
    Expired {
        /// Probe id.
        id: u64,
    },
    /// A target became unreachable or reachable again.
    Changed {
        /// The target.
        addr: SocketAddr,
        /// Its new reachability.
        reachable: bool,
    },
}

#[derive(Debug)]
struct Target {
    reachable: bool,
    misses: u32,
    /// Outstanding probe: id, deadline.
    probe: Option<(u64, Instant)>,
    next: Instant,
}

/// Most targets watched at once (addresses come from the fabric's heartbeats); the rest are
/// dropped and counted ([`Reachability::dropped`]).
pub const MAX_TARGETS: usize = 1024;

/// The keep-alive state of every target. See the module documentation.
#[derive(Debug)]
pub struct Reachability {
    cfg: ReachConfig,
    dropped: u64,
    targets: BTreeMap<SocketAddr, Target>,
    events: VecDeque<ReachEvent>,
    next_id: u64,
}

impl Reachability {
    /// No targets yet.
    pub fn new(cfg: ReachConfig) -> Self {
        Reachability {
            cfg: ReachConfig {
                misses: cfg.misses.max(1),
                ..cfg
            },
            targets: BTreeMap::new(),
            dropped: 0,
            events: VecDeque::new(),
            next_id: 1,
        }
    }

    /// The targets to watch now: new ones are probed at once (and count as reachable until
    /// they miss), missing ones are forgotten.
    pub fn set_targets(&mut self, now: Instant, addrs: impl IntoIterator<Item = SocketAddr>) {
        let mut want: std::collections::BTreeSet<SocketAddr> = addrs.into_iter().collect();
        if want.len() > MAX_TARGETS {
            self.dropped += (want.len() - MAX_TARGETS) as u64;
            want = want.into_iter().take(MAX_TARGETS).collect();
        }
        self.targets.retain(|a, _| want.contains(a));
        for a in want {
            self.targets.entry(a).or_insert(Target {
                reachable: true,
                misses: 0,
                probe: None,
                next: now,
            });
        }
        self.handle_timeout(now);
    }

    /// Targets dropped because there were more than [`MAX_TARGETS`].
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Whether `addr` is reachable (unknown targets are).
    pub fn is_reachable(&self, addr: SocketAddr) -> bool {
        self.targets.get(&addr).is_none_or(|t| t.reachable)
    }

    /// Probe `id` was answered (any response).
    pub fn answered(&mut self, now: Instant, id: u64) {
        let addr = self
            .targets
            .iter()
            .find(|(_, t)| t.probe.is_some_and(|(p, _)| p == id))
            .map(|(a, _)| *a);
        if let Some(addr) = addr {
            self.heard(now, addr);
        }
    }

    /// Something from `addr` arrived (an answer to a probe or to an offer): reachable now.
    pub fn heard(&mut self, now: Instant, addr: SocketAddr) {
        let interval = self.cfg.interval;
        let Some(t) = self.targets.get_mut(&addr) else {
            return;
        };
        t.misses = 0;
        if t.probe.take().is_some() {
            t.next = now + interval;
        }
        if !t.reachable {
            t.reachable = true;
            self.events.push_back(ReachEvent::Changed {
                addr,
                reachable: true,
            });
        }
    }

    /// Probe `addr` now unless a probe is already out (e.g. an offer through it got no
    /// provisional response in time).
    pub fn suspect(&mut self, now: Instant, addr: SocketAddr) {
        if let Some(t) = self.targets.get_mut(&addr) {
            if t.probe.is_none() {
                t.next = now;
            }
        }
        self.handle_timeout(now);
    }

    /// The next event for the driver.
    pub fn poll_event(&mut self) -> Option<ReachEvent> {
        self.events.pop_front()
    }

    /// When [`Reachability::handle_timeout`] has work next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.targets
            .values()
            .map(|t| t.probe.map_or(t.next, |(_, d)| d))
            .min()
    }

    /// Misses for overdue probes, new probes for due targets.
    pub fn handle_timeout(&mut self, now: Instant) {
        for (addr, t) in self.targets.iter_mut() {
            if let Some((id, deadline)) = t.probe {
                if now < deadline {
                    continue;
                }
                t.probe = None;
                t.misses = t.misses.saturating_add(1);
                self.events.push_back(ReachEvent::Expired { id });
                if t.reachable && t.misses >= self.cfg.misses {
                    t.reachable = false;
                    self.events.push_back(ReachEvent::Changed {
                        addr: *addr,
                        reachable: false,
                    });
                }
                // A miss is followed by the next probe at once.
                t.next = now;
            }
            if now >= t.next {
                let id = self.next_id;
                self.next_id += 1;
                t.probe = Some((id, now + self.cfg.timeout));
                self.events.push_back(ReachEvent::Probe { id, to: *addr });
            }
        }
    }
}

//! Reachability of the gateways an ACD node offers through, independent of the state fabric:
//! SIP OPTIONS keep-alives, sans-IO.
//!
//! Probes are pipelined: each target gets a probe every [`ReachConfig::interval`], whatever is
//! still outstanding, and is judged by the silence since anything was last heard from it (an
//! answer to any probe, or any response through [`Reachability::heard`]). A target is
//! unreachable once nothing was heard for the *silence bound*, `max(timeout, interval + SRTT +
//! 4·RTTVAR)` (RFC 6298's estimator over the probes' round trips: the probe sent just after the
//! last answer is overdue), so a slow link is not taken for a cut one, and a lossy one needs
//! many answers lost in a row (at 100 ms and 700 ms, about seven) before it flaps. The first answer makes it reachable again. Targets start reachable (nothing
//! proves otherwise yet). The driver sends the OPTIONS for [`ReachEvent::Probe`] (no
//! retransmission: the next probe is the retransmission), reports answers with
//! [`Reachability::answered`] and passes time in as `now`.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Keep-alive timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReachConfig {
    /// Time between two probes of a target (pipelined: outstanding ones do not delay it).
    pub interval: Duration,
    /// Least silence that makes a target unreachable (more on a slow link: see the module
    /// documentation).
    pub timeout: Duration,
}

impl Default for ReachConfig {
    fn default() -> Self {
        ReachConfig {
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(700),
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
    last_heard: Instant,
    next_probe: Instant,
    /// Outstanding probes, oldest first (at most [`MAX_OUTSTANDING`]).
    outstanding: VecDeque<u64>,
    /// Smoothed RTT and its variation (RFC 6298), once a probe was answered.
    rtt: Option<(Duration, Duration)>,
}

impl Target {
    fn silence_bound(&self, cfg: &ReachConfig) -> Duration {
        match self.rtt {
            None => cfg.timeout,
            Some((srtt, var)) => cfg.timeout.max(cfg.interval + srtt + var * 4),
        }
    }
}

/// Most targets watched at once (addresses come from the fabric's heartbeats); the rest are
/// dropped and counted ([`Reachability::dropped`]).
pub const MAX_TARGETS: usize = 1024;

/// Probes remembered per target for their round trip (older ones are forgotten: an answer to
/// one still counts as heard through [`Reachability::answered`]'s source address).
pub const MAX_OUTSTANDING: usize = 64;

/// The keep-alive state of every target. See the module documentation.
#[derive(Debug)]
pub struct Reachability {
    cfg: ReachConfig,
    dropped: u64,
    targets: BTreeMap<SocketAddr, Target>,
    /// Outstanding probe id → its target and when it was sent.
    probes: HashMap<u64, (SocketAddr, Instant)>,
    events: VecDeque<ReachEvent>,
    next_id: u64,
}

impl Reachability {
    /// No targets yet.
    pub fn new(cfg: ReachConfig) -> Self {
        Reachability {
            cfg: ReachConfig {
                interval: cfg.interval.max(Duration::from_millis(1)),
                timeout: cfg.timeout,
            },
            targets: BTreeMap::new(),
            probes: HashMap::new(),
            dropped: 0,
            events: VecDeque::new(),
            next_id: 1,
        }
    }

    /// The targets to watch now: new ones are probed at once (and count as reachable until
    /// they stay silent), missing ones are forgotten.
    pub fn set_targets(&mut self, now: Instant, addrs: impl IntoIterator<Item = SocketAddr>) {
        let mut want: BTreeSet<SocketAddr> = addrs.into_iter().collect();
        if want.len() > MAX_TARGETS {
            self.dropped += (want.len() - MAX_TARGETS) as u64;
            want = want.into_iter().take(MAX_TARGETS).collect();
        }
        let probes = &mut self.probes;
        self.targets.retain(|a, t| {
            let keep = want.contains(a);
            if !keep {
                for id in &t.outstanding {
                    probes.remove(id);
                }
            }
            keep
        });
        for a in want {
            self.targets.entry(a).or_insert(Target {
                reachable: true,
                last_heard: now,
                next_probe: now,
                outstanding: VecDeque::new(),
                rtt: None,
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

    /// The smoothed round trip of `addr`'s probes, once one was answered.
    pub fn srtt(&self, addr: SocketAddr) -> Option<Duration> {
        self.targets.get(&addr)?.rtt.map(|(s, _)| s)
    }

    /// The silence that makes `addr` unreachable now.
    pub fn silence_bound(&self, addr: SocketAddr) -> Option<Duration> {
        Some(self.targets.get(&addr)?.silence_bound(&self.cfg))
    }

    /// Probe `id` was answered (any response) from `from`: a round-trip sample if the probe
    /// is still remembered, and `from` was heard in any case.
    pub fn answered(&mut self, now: Instant, id: u64, from: SocketAddr) {
        let mut addr = from;
        if let Some((to, sent)) = self.probes.remove(&id) {
            addr = to;
            if let Some(t) = self.targets.get_mut(&to) {
                t.outstanding.retain(|p| *p != id);
                let r = now.saturating_duration_since(sent);
                t.rtt = Some(match t.rtt {
                    None => (r, r / 2),
                    Some((srtt, var)) => {
                        let diff = srtt.abs_diff(r);
                        ((srtt * 7 + r) / 8, (var * 3 + diff) / 4)
                    }
                });
            }
        }
        self.heard(now, addr);
    }

    /// Something from `addr` arrived (an answer to a probe or to an offer): reachable now.
    pub fn heard(&mut self, now: Instant, addr: SocketAddr) {
        let Some(t) = self.targets.get_mut(&addr) else {
            return;
        };
        t.last_heard = t.last_heard.max(now);
        if !t.reachable {
            t.reachable = true;
            self.events.push_back(ReachEvent::Changed {
                addr,
                reachable: true,
            });
        }
    }

    /// The next event for the driver.
    pub fn poll_event(&mut self) -> Option<ReachEvent> {
        self.events.pop_front()
    }

    /// When [`Reachability::handle_timeout`] has work next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.targets
            .values()
            .map(|t| {
                if t.reachable {
                    t.next_probe.min(t.last_heard + t.silence_bound(&self.cfg))
                } else {
                    t.next_probe
                }
            })
            .min()
    }

    /// Silent targets become unreachable; due probes go out.
    pub fn handle_timeout(&mut self, now: Instant) {
        let cfg = self.cfg;
        for (addr, t) in self.targets.iter_mut() {
            if t.reachable && now >= t.last_heard + t.silence_bound(&cfg) {
                t.reachable = false;
                self.events.push_back(ReachEvent::Changed {
                    addr: *addr,
                    reachable: false,
                });
            }
            if now >= t.next_probe {
                let id = self.next_id;
                self.next_id += 1;
                if t.outstanding.len() >= MAX_OUTSTANDING {
                    if let Some(old) = t.outstanding.pop_front() {
                        self.probes.remove(&old);
                    }
                }
                t.outstanding.push_back(id);
                self.probes.insert(id, (*addr, now));
                // On schedule, but no burst to catch up after a stall.
                t.next_probe = (t.next_probe + cfg.interval).max(now + cfg.interval / 2);
                self.events.push_back(ReachEvent::Probe { id, to: *addr });
            }
        }
    }
}

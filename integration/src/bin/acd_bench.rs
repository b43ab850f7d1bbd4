//! Benchmark: the ACD engine (`acd::Engine`, indexed: a device-state change touches only that
//! member's queues) side by side with a deliberately naive reference engine that rescans every
//! queue on every event, driven by the same seeded workload in the same run.
//!
//! Workload: 10,000 agents in 500 queues (each agent in 5 random queues, random penalty 0..2),
//! callers joining continually, agents freed by device-state changes (NOT_INUSE) and taken by
//! answered offers (INUSE). Measures engine decisions (inputs) per second and the latency from
//! the state change that frees an agent while a caller waits to the Offer for that agent.
//!
//! ```text
//! cargo run --release -p integration --bin acd_bench -- [STEPS] [SEED] [JOIN_PERCENT]
//! ```

use acd::{
    Action, CompletedBy, DeviceState, Engine, EngineConfig, Join, MemberConfig, OfferId,
    OfferOutcome, QueueConfig, Strategy,
};
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

const AGENTS: usize = 10_000;
const QUEUES: usize = 500;
const PER_AGENT: usize = 5;
const INITIAL_CALLERS: usize = 2_000;

/// xorshift64*, seeded: the workload is identical for both engines.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: usize) -> usize {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1) as u64) as usize
    }
}

fn iface(a: usize) -> String {
    format!("PJSIP/{a}")
}

/// Membership: agent → (queue, penalty), 5 distinct queues per agent.
fn membership(seed: u64) -> Vec<Vec<(usize, i32)>> {
    let mut rng = Rng(seed | 1);
    (0..AGENTS)
        .map(|_| {
            let mut qs: Vec<(usize, i32)> = Vec::with_capacity(PER_AGENT);
            while qs.len() < PER_AGENT {
                let q = rng.below(QUEUES);
                if !qs.iter().any(|(x, _)| *x == q) {
                    qs.push((q, rng.below(3) as i32));
                }
            }
            qs
        })
        .collect()
}

enum Out {
    Offer {
        id: u64,
        caller: String,
        agent: usize,
    },
    Other,
}

trait Acd {
    fn join(&mut self, now: Duration, caller: &str, q: usize);
    fn device(&mut self, now: Duration, agent: usize, st: DeviceState);
    fn answer(&mut self, now: Duration, offer: u64);
    fn complete(&mut self, now: Duration, caller: &str);
    fn poll(&mut self) -> Option<Out>;
}

// ---------------------------------------------------------------- the real engine

struct Real(Engine);

impl Real {
    fn new(members: &[Vec<(usize, i32)>]) -> anyhow::Result<Self> {
        let strategies = [
            Strategy::RrMemory,
            Strategy::LeastRecent,
            Strategy::FewestCalls,
            Strategy::Linear,
            Strategy::Random,
        ];
        let mut queues: Vec<QueueConfig> = (0..QUEUES)
            .map(|q| {
                let mut c = QueueConfig::new(format!("q{q}"));
                c.strategy = strategies[q % strategies.len()];
                c.ringinuse = false;
                c.autofill = q % 2 == 0;
                c.retry = 1;
                c
            })
            .collect();
        for (a, qs) in members.iter().enumerate() {
            for (q, p) in qs {
                queues[*q]
                    .members
                    .push(MemberConfig::new(iface(a)).penalty(*p));
            }
        }
        let mut e = Engine::new(&EngineConfig {
            queues,
            seed: 1,
            ..Default::default()
        })?;
        for a in 0..AGENTS {
            e.device_state(Duration::ZERO, &iface(a), DeviceState::InUse);
        }
        while e.poll_action().is_some() {}
        Ok(Real(e))
    }
}

impl Acd for Real {
    fn join(&mut self, now: Duration, caller: &str, q: usize) {
        let _ = self.0.join(now, Join::new(caller, format!("q{q}")));
    }
    fn device(&mut self, now: Duration, agent: usize, st: DeviceState) {
        self.0.device_state(now, &iface(agent), st);
    }
    fn answer(&mut self, now: Duration, offer: u64) {
        let _ = self
            .0
            .offer_outcome(now, OfferId(offer), OfferOutcome::Answered);
    }
    fn complete(&mut self, now: Duration, caller: &str) {
        let _ = self.0.call_completed(now, caller, CompletedBy::Agent);
    }
    fn poll(&mut self) -> Option<Out> {
        self.0.poll_action().map(|a| match a {
            Action::Offer {
                id,
                caller,
                interface,
                ..
            } => Out::Offer {
                id: id.0,
                caller,
                agent: interface
                    .strip_prefix("PJSIP/")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0),
            },
            _ => Out::Other,
        })
    }
}

// ---------------------------------------------------------------- naive reference

struct NaiveQueue {
    members: Vec<(usize, i32)>,
    callers: VecDeque<String>,
}

/// Deliberately simple: every event rescans all queues; the head caller of each queue gets the
/// free member with the lowest penalty (config order on ties).
struct Naive {
    queues: Vec<NaiveQueue>,
    state: Vec<DeviceState>,
    offering: Vec<bool>,
    in_call: Vec<bool>,
    ringing: HashMap<u64, (String, usize, usize)>,
    caller_ringing: HashSet<String>,
    calls: HashMap<String, usize>,
    out: VecDeque<Out>,
    next_id: u64,
}

impl Naive {
    fn new(members: &[Vec<(usize, i32)>]) -> Self {
        let mut queues: Vec<NaiveQueue> = (0..QUEUES)
            .map(|_| NaiveQueue {
                members: Vec::new(),
                callers: VecDeque::new(),
            })
            .collect();
        for (a, qs) in members.iter().enumerate() {
            for (q, p) in qs {
                queues[*q].members.push((a, *p));
            }
        }
        Naive {
            queues,
            state: vec![DeviceState::InUse; AGENTS],
            offering: vec![false; AGENTS],
            in_call: vec![false; AGENTS],
            ringing: HashMap::new(),
            caller_ringing: HashSet::new(),
            calls: HashMap::new(),
            out: VecDeque::new(),
            next_id: 1,
        }
    }

    fn available(&self, a: usize) -> bool {
        matches!(self.state[a], DeviceState::NotInUse | DeviceState::Unknown)
            && !self.offering[a]
            && !self.in_call[a]
    }

    fn rescan(&mut self) {
        for q in 0..self.queues.len() {
            let Some(head) = self.queues[q].callers.front() else {
                continue;
            };
            if self.caller_ringing.contains(head) {
                continue;
            }
            let mut best: Option<(i32, usize)> = None;
            for &(a, p) in &self.queues[q].members {
                if self.available(a) && best.is_none_or(|(bp, _)| p < bp) {
                    best = Some((p, a));
                }
            }
            if let Some((_, a)) = best {
                let caller = head.clone();
                self.offering[a] = true;
                self.caller_ringing.insert(caller.clone());
                let id = self.next_id;
                self.next_id += 1;
                self.ringing.insert(id, (caller.clone(), a, q));
                self.out.push_back(Out::Offer {
                    id,
                    caller,
                    agent: a,
                });
            }
        }
    }
}

impl Acd for Naive {
    fn join(&mut self, _now: Duration, caller: &str, q: usize) {
        self.queues[q].callers.push_back(caller.to_string());
        self.rescan();
    }
    fn device(&mut self, _now: Duration, agent: usize, st: DeviceState) {
        self.state[agent] = st;
        self.rescan();
    }
    fn answer(&mut self, _now: Duration, offer: u64) {
        if let Some((caller, a, q)) = self.ringing.remove(&offer) {
            self.caller_ringing.remove(&caller);
            self.queues[q].callers.retain(|c| *c != caller);
            self.offering[a] = false;
            self.in_call[a] = true;
            self.calls.insert(caller, a);
            self.out.push_back(Out::Other);
        }
        self.rescan();
    }
    fn complete(&mut self, _now: Duration, caller: &str) {
        if let Some(a) = self.calls.remove(caller) {
            self.in_call[a] = false;
        }
        self.rescan();
    }
    fn poll(&mut self) -> Option<Out> {
        self.out.pop_front()
    }
}

// ---------------------------------------------------------------- driver

struct Figures {
    decisions: u64,
    busy: Duration,
    latencies: Vec<Duration>,
    offers: u64,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

struct Driver {
    busy: Vec<usize>,
    call_of: HashMap<usize, String>,
    fig: Figures,
}

impl Driver {
    /// Handle every output: answer offers at once, then the agent's device goes INUSE.
    /// `watch`: (agent freed, start) — records the latency when its Offer comes out.
    fn drain<A: Acd>(&mut self, e: &mut A, now: Duration, mut watch: Option<(usize, Instant)>) {
        let mut todo: Vec<(u64, String, usize)> = Vec::new();
        loop {
            let t0 = Instant::now();
            while let Some(o) = e.poll() {
                if let Out::Offer { id, caller, agent } = o {
                    if let Some((w, start)) = watch {
                        if w == agent {
                            self.fig.latencies.push(start.elapsed());
                            watch = None;
                        }
                    }
                    todo.push((id, caller, agent));
                }
            }
            self.fig.busy += t0.elapsed();
            let Some((id, caller, agent)) = todo.pop() else {
                break;
            };
            self.fig.offers += 1;
            let t0 = Instant::now();
            e.answer(now, id);
            e.device(now, agent, DeviceState::InUse);
            self.fig.busy += t0.elapsed();
            self.fig.decisions += 2;
            self.busy.push(agent);
            self.call_of.insert(agent, caller);
        }
    }
}

fn run<A: Acd>(e: &mut A, steps: usize, seed: u64, join_pct: usize) -> Figures {
    let mut rng = Rng(seed.wrapping_mul(31) | 1);
    let mut d = Driver {
        busy: (0..AGENTS).collect(),
        call_of: HashMap::new(),
        fig: Figures {
            decisions: 0,
            busy: Duration::ZERO,
            latencies: Vec::new(),
            offers: 0,
        },
    };
    let mut now = Duration::ZERO;
    let mut next_caller = 0u64;
    let mut join = |e: &mut A, d: &mut Driver, rng: &mut Rng, now: Duration| {
        next_caller += 1;
        let c = format!("c{next_caller}");
        let q = rng.below(QUEUES);
        let t0 = Instant::now();
        e.join(now, &c, q);
        d.fig.busy += t0.elapsed();
        d.fig.decisions += 1;
        d.drain(e, now, None);
    };
    for _ in 0..INITIAL_CALLERS {
        join(e, &mut d, &mut rng, now);
    }
    for _ in 0..steps {
        now += Duration::from_millis(10);
        if rng.below(100) < join_pct {
            join(e, &mut d, &mut rng, now);
        } else if !d.busy.is_empty() {
            let i = rng.below(d.busy.len());
            let agent = d.busy.swap_remove(i);
            if let Some(c) = d.call_of.remove(&agent) {
                let t0 = Instant::now();
                e.complete(now, &c);
                d.fig.busy += t0.elapsed();
                d.fig.decisions += 1;
                d.drain(e, now, None);
            }
            let start = Instant::now();
            e.device(now, agent, DeviceState::NotInUse);
            d.fig.busy += start.elapsed();
            d.fig.decisions += 1;
            d.drain(e, now, Some((agent, start)));
        }
    }
    d.fig
}

fn report(name: &str, f: &mut Figures) -> (f64, Duration, Duration) {
    f.latencies.sort();
    let rate = f.decisions as f64 / f.busy.as_secs_f64().max(1e-9);
    let p50 = percentile(&f.latencies, 0.50);
    let p99 = percentile(&f.latencies, 0.99);
    println!(
        "{name:<28} decisions {:>9}  offers {:>7}  {:>12.0} decisions/s  free→offer p50 {:>9.1} µs  p99 {:>9.1} µs  ({} samples)",
        f.decisions,
        f.offers,
        rate,
        p50.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6,
        f.latencies.len()
    );
    (rate, p50, p99)
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let steps: usize = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(20_000);
    let seed: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(7);
    let join_pct: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(50);
    println!(
        "acd_bench: {AGENTS} agents, {QUEUES} queues, {PER_AGENT} queues/agent, \
         {INITIAL_CALLERS} initial callers, {steps} steps ({join_pct}% caller joins, \
         the rest agent freed), seed {seed}"
    );
    let members = membership(seed);

    let t = Instant::now();
    let mut real = Real::new(&members)?;
    println!("engine setup {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
    let mut fr = run(&mut real, steps, seed, join_pct);
    let mut naive = Naive::new(&members);
    let mut fnv = run(&mut naive, steps, seed, join_pct);

    let (r1, p50a, p99a) = report("acd::Engine (indexed)", &mut fr);
    let (r2, p50b, p99b) = report("naive full-scan reference", &mut fnv);
    let ratio = |a: Duration, b: Duration| b.as_secs_f64() / a.as_secs_f64().max(1e-12);
    println!(
        "ratio engine/naive: throughput {:.1}x, p50 latency {:.1}x lower, p99 latency {:.1}x lower",
        r1 / r2.max(1e-9),
        ratio(p50a, p50b),
        ratio(p99a, p99b)
    );
    if let Some(st) = real.0.queue_stats("q0") {
        println!(
            "q0 stats: joined {} answered {} completed {} avg wait {:?}",
            st.joined,
            st.answered,
            st.completed,
            st.average_wait()
        );
    }
    Ok(())
}

//! Benchmark: the ACD engine (`acd::Engine`, indexed: a device-state change touches only that
//! member's queues) side by side with a deliberately naive reference engine that rescans every
//! queue on every event, driven by the same seeded workload in the same run.
//!
//! Workload: 10,000 agents in 500 queues (each agent in 5 random queues, random penalty 0..2),
//! callers joining continually, agents freed by device-state changes (NOT_INUSE) and taken by
//! answered offers (INUSE). Measures engine decisions (inputs the engine accepted: an input it
//! refuses with an error is counted as an error, not a decision) per second, CPU per decision,
//! the heap each engine holds, and the latency from the state change that frees an agent while
//! a caller waits to the Offer for that agent. The headline is a ratio against a naive engine,
//! not against another product.
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

/// An ACD under test; each input returns false when the engine refused it (an error).
trait Acd {
    fn join(&mut self, now: Duration, caller: &str, q: usize) -> bool;
    fn device(&mut self, now: Duration, agent: usize, st: DeviceState) -> bool;
    fn answer(&mut self, now: Duration, offer: u64) -> bool;
    fn complete(&mut self, now: Duration, caller: &str) -> bool;
    fn poll(&mut self) -> Option<Out>;
}

/// `VmHWM` (peak resident set, kB) of this process: each engine runs in a process of its own
/// (`--engine`), so the growth of the peak over the run is what that engine held.
fn peak_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU nanoseconds this thread has run (`/proc/thread-self/schedstat`).
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0)
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
    fn join(&mut self, now: Duration, caller: &str, q: usize) -> bool {
        self.0.join(now, Join::new(caller, format!("q{q}"))).is_ok()
    }
    fn device(&mut self, now: Duration, agent: usize, st: DeviceState) -> bool {
        self.0.device_state(now, &iface(agent), st);
        true
    }
    fn answer(&mut self, now: Duration, offer: u64) -> bool {
        self.0
            .offer_outcome(now, OfferId(offer), OfferOutcome::Answered)
            .is_ok()
    }
    fn complete(&mut self, now: Duration, caller: &str) -> bool {
        self.0
            .call_completed(now, caller, CompletedBy::Agent)
            .is_ok()
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
    fn join(&mut self, _now: Duration, caller: &str, q: usize) -> bool {
        self.queues[q].callers.push_back(caller.to_string());
        self.rescan();
        true
    }
    fn device(&mut self, _now: Duration, agent: usize, st: DeviceState) -> bool {
        self.state[agent] = st;
        self.rescan();
        true
    }
    fn answer(&mut self, _now: Duration, offer: u64) -> bool {
        let Some((caller, a, q)) = self.ringing.remove(&offer) else {
            return false;
        };
        self.caller_ringing.remove(&caller);
        self.queues[q].callers.retain(|c| *c != caller);
        self.offering[a] = false;
        self.in_call[a] = true;
        self.calls.insert(caller, a);
        self.out.push_back(Out::Other);
        self.rescan();
        true
    }
    fn complete(&mut self, _now: Duration, caller: &str) -> bool {
        let Some(a) = self.calls.remove(caller) else {
            return false;
        };
        self.in_call[a] = false;
        self.rescan();
        true
    }
    fn poll(&mut self) -> Option<Out> {
        self.out.pop_front()
    }
}

// ---------------------------------------------------------------- driver

struct Figures {
    decisions: u64,
    /// Inputs the engine refused with an error (not decisions).
    errors: u64,
    /// This thread's CPU over the whole run (driver included: the same driver for both).
    cpu_ns: u64,
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
            let answered = e.answer(now, id);
            let device = e.device(now, agent, DeviceState::InUse);
            self.fig.busy += t0.elapsed();
            self.fig.count(answered);
            self.fig.count(device);
            self.busy.push(agent);
            self.call_of.insert(agent, caller);
        }
    }
}

impl Figures {
    fn count(&mut self, accepted: bool) {
        if accepted {
            self.decisions += 1;
        } else {
            self.errors += 1;
        }
    }
}

fn run<A: Acd>(e: &mut A, steps: usize, seed: u64, join_pct: usize) -> Figures {
    let cpu0 = thread_cpu_ns();
    let mut fig = run_inner(e, steps, seed, join_pct);
    fig.cpu_ns = thread_cpu_ns().saturating_sub(cpu0);
    fig
}

fn run_inner<A: Acd>(e: &mut A, steps: usize, seed: u64, join_pct: usize) -> Figures {
    let mut rng = Rng(seed.wrapping_mul(31) | 1);
    let mut d = Driver {
        busy: (0..AGENTS).collect(),
        call_of: HashMap::new(),
        fig: Figures {
            decisions: 0,
            errors: 0,
            cpu_ns: 0,
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
        let ok = e.join(now, &c, q);
        d.fig.busy += t0.elapsed();
        d.fig.count(ok);
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
                let ok = e.complete(now, &c);
                d.fig.busy += t0.elapsed();
                d.fig.count(ok);
                d.drain(e, now, None);
            }
            let start = Instant::now();
            let ok = e.device(now, agent, DeviceState::NotInUse);
            d.fig.busy += start.elapsed();
            d.fig.count(ok);
            d.drain(e, now, Some((agent, start)));
        }
    }
    d.fig
}

struct Report {
    rate: f64,
    cpu_us: f64,
    p50: Duration,
    p99: Duration,
    errors: u64,
    mem_kb: u64,
}

fn report(name: &str, f: &mut Figures, mem_kb: u64) -> Report {
    f.latencies.sort();
    let rate = f.decisions as f64 / f.busy.as_secs_f64().max(1e-9);
    let cpu_us = f.cpu_ns as f64 / 1000.0 / f.decisions.max(1) as f64;
    let p50 = percentile(&f.latencies, 0.50);
    let p99 = percentile(&f.latencies, 0.99);
    println!(
        "{name:<24} decisions {:>8}  errors {:>4}  offers {:>6}  {:>9.0} decisions/s  CPU {:>6.2} µs/decision  memory +{:>6.1} MB  free→offer p50 {:>7.1} µs  p99 {:>7.1} µs  ({} samples)",
        f.decisions,
        f.errors,
        f.offers,
        rate,
        cpu_us,
        mem_kb as f64 / 1024.0,
        p50.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6,
        f.latencies.len()
    );
    Report {
        rate,
        cpu_us,
        p50,
        p99,
        errors: f.errors,
        mem_kb,
    }
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// `--engine real|naive STEPS SEED JOIN`: one engine in this process; prints its line and a
/// `RESULT rate cpu_us p50_ns p99_ns errors mem_kb` line for the parent.
fn one_engine(which: &str, steps: usize, seed: u64, join_pct: usize) -> anyhow::Result<()> {
    let members = membership(seed);
    let m0 = peak_rss_kb();
    let (name, mut fig) = match which {
        "real" => {
            let mut e = Real::new(&members)?;
            ("acd::Engine (indexed)", run(&mut e, steps, seed, join_pct))
        }
        "naive" => {
            let mut e = Naive::new(&members);
            ("naive full-scan engine", run(&mut e, steps, seed, join_pct))
        }
        other => anyhow::bail!("unknown engine {other}"),
    };
    let r = report(name, &mut fig, peak_rss_kb().saturating_sub(m0));
    println!(
        "RESULT {} {} {} {} {} {}",
        r.rate,
        r.cpu_us,
        r.p50.as_nanos(),
        r.p99.as_nanos(),
        r.errors,
        r.mem_kb
    );
    Ok(())
}

/// Runs `--engine which` in a child process; echoes its report line, parses its RESULT.
fn child(which: &str, steps: usize, seed: u64, join_pct: usize) -> anyhow::Result<Report> {
    use anyhow::Context as _;
    let out = std::process::Command::new(std::env::current_exe()?)
        .args(["--engine", which])
        .args([steps.to_string(), seed.to_string(), join_pct.to_string()])
        .output()
        .context("running the engine child")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        anyhow::bail!(
            "engine {which} failed ({}): {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut result = None;
    for line in text.lines() {
        match line.strip_prefix("RESULT ") {
            Some(r) => result = Some(r.to_string()),
            None => println!("{line}"),
        }
    }
    let r = result.context("no RESULT line")?;
    let v: Vec<&str> = r.split_whitespace().collect();
    let f =
        |i: usize| -> anyhow::Result<f64> { Ok(v.get(i).context("short RESULT")?.parse::<f64>()?) };
    Ok(Report {
        rate: f(0)?,
        cpu_us: f(1)?,
        p50: Duration::from_nanos(f(2)? as u64),
        p99: Duration::from_nanos(f(3)? as u64),
        errors: f(4)? as u64,
        mem_kb: f(5)? as u64,
    })
}

fn main() -> anyhow::Result<()> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let engine = (argv.first().map(String::as_str) == Some("--engine"))
        .then(|| argv.get(1).cloned().unwrap_or_default());
    let mut args = argv.iter().skip(if engine.is_some() { 2 } else { 0 });
    let steps: usize = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(20_000);
    let seed: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(7);
    let join_pct: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(50);
    if let Some(which) = engine {
        return one_engine(&which, steps, seed, join_pct);
    }
    println!(
        "acd_bench (acd::Engine against a naive engine written for this bench, not another product): \
         {AGENTS} agents, {QUEUES} queues, {PER_AGENT} queues/agent, \
         {INITIAL_CALLERS} initial callers, {steps} steps ({join_pct}% caller joins, \
         the rest agent freed), seed {seed}, each engine in a process of its own; load {}",
        load()
    );
    let a = child("real", steps, seed, join_pct)?;
    let b = child("naive", steps, seed, join_pct)?;
    let ratio = |a: Duration, b: Duration| b.as_secs_f64() / a.as_secs_f64().max(1e-12);
    println!(
        "HEADLINE against a naive engine (not another product): throughput {:.1}x, CPU per decision {:.1}x lower, free→offer p50 {:.1}x lower, p99 {:.1}x lower, memory {:.2}x the naive engine's; errors {} / {} (not counted as decisions){}",
        a.rate / b.rate.max(1e-9),
        b.cpu_us / a.cpu_us.max(1e-12),
        ratio(a.p50, b.p50),
        ratio(a.p99, b.p99),
        a.mem_kb as f64 / b.mem_kb.max(1) as f64,
        a.errors,
        b.errors,
        if a.errors + b.errors > 0 {
            " -- INVALID: an engine refused inputs the driver thought valid"
        } else {
            ""
        }
    );
    println!("load at the end: {}", load());
    Ok(())
}

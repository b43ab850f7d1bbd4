//! Shared pieces of the load benchmarks (`src/bin/*_bench.rs`): a step of one or more SIPp
//! callers sharing an offered rate (and a SIPp callee started for the step), each with its own
//! `-trace_stat` file and exit status; what makes a step unclean (failed calls,
//! retransmissions, unexpected messages, the callee's failures, an abnormal SIPp exit) or
//! suspect (a load generator or the whole machine saturated); rate ramps of several systems
//! interleaved step by step and repeated in rounds with the order rotated; CPU and memory of
//! the system under test from `/proc`; and Kamailio started from a generated config. Every
//! process started here is stopped when its guard is dropped.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::{free_media_port, free_udp_port, require_binary};

/// Share of unclean events (failed calls, retransmissions, stray messages, the callee's
/// failures; percent of the calls started) a step must stay under to count as clean.
pub const MAX_FAIL_PCT: f64 = 0.1;

/// A load generator (SIPp process) busier than this share of one core cannot be trusted to
/// offer its rate: a step where one is, is bound by the load generator, not the server.
pub const GENERATOR_BOUND: f64 = 0.9;

/// Machine-wide CPU (all cores) busier than this during a step: the step measured the
/// machine, not the server.
pub const MACHINE_BOUND: f64 = 0.95;

/// One step: SIPp run(s) at a fixed offered rate, and what they reported.
#[derive(Debug, Clone, Default)]
pub struct Step {
    /// Offered rate (`-r`, calls per second, summed over the SIPp processes).
    pub rate: u32,
    /// Calls started (`-m`, summed).
    pub calls: u64,
    /// `SuccessfulCall(C)` of the callers.
    pub ok: u64,
    /// The callers' `FailedCall(C)` plus the calls that never completed.
    pub failed: u64,
    /// `Retransmissions(C)`, callers and callee.
    pub retransmissions: u64,
    /// Unexpected messages: `OutOfCallMsgs(C)` + `DeadCallMsgs(C)`, callers and callee.
    pub stray: u64,
    /// The callee's `FailedCall(C)` (and, if it had to be killed, its calls that never ended).
    pub callee_failed: u64,
    /// SIPp exits that are neither 0 (all calls ok) nor 1 (some failed), or an exit 1 with no
    /// failure counted, or a SIPp we had to kill: the step is not a measurement.
    pub bad_exits: Vec<String>,
    /// Seconds during which the calls were started: SIPp's wall time minus the per-call
    /// duration it spends after the setup (the hold time), so that a call's tail does not
    /// dilute the setup rate.
    pub busy_secs: f64,
    /// SIPp's wall time.
    pub wall_secs: f64,
    /// CPU seconds (user + system) the system under test used during the step, when measured.
    pub sut_cpu: Option<f64>,
    /// The busiest SIPp process (callers and callee): its CPU over its run, in cores.
    pub sipp_cores: f64,
    /// All cores of the machine: busy share over the step (`/proc/stat`).
    pub machine_busy: f64,
    /// `/proc/loadavg` (1, 5, 15 min) at the end of the step.
    pub load: String,
    /// Datagrams the kernel dropped at the system's UDP port during the step (its receive
    /// buffer was full: each one costs the sender a retransmission), when it could be read.
    pub kernel_drops: Option<u64>,
}

impl Step {
    /// Failed calls + retransmissions + stray messages + the callee's failures.
    pub fn unclean_events(&self) -> u64 {
        self.failed + self.retransmissions + self.stray + self.callee_failed
    }

    /// [`Step::unclean_events`] in percent of the calls started.
    pub fn fail_pct(&self) -> f64 {
        100.0 * self.unclean_events() as f64 / self.calls.max(1) as f64
    }

    /// Below [`MAX_FAIL_PCT`] and every SIPp exited normally.
    pub fn clean(&self) -> bool {
        self.bad_exits.is_empty() && self.fail_pct() < MAX_FAIL_PCT
    }

    /// A SIPp process at ≥ [`GENERATOR_BOUND`] of a core: the load generator was the limit.
    pub fn generator_bound(&self) -> bool {
        self.sipp_cores >= GENERATOR_BOUND
    }

    /// The whole machine at ≥ [`MACHINE_BOUND`]: every process competed for the cores.
    pub fn machine_bound(&self) -> bool {
        self.machine_busy >= MACHINE_BOUND
    }

    /// Successful calls per second over [`Step::busy_secs`].
    pub fn achieved(&self) -> f64 {
        self.ok as f64 / self.busy_secs.max(0.001)
    }

    /// `sut_cpu` as a share of one core over the step (1.0 = one core busy).
    pub fn cores(&self) -> Option<f64> {
        self.sut_cpu.map(|c| c / self.wall_secs.max(0.001))
    }

    /// `sut_cpu` per successful call, in microseconds.
    pub fn cpu_us_per_call(&self) -> Option<f64> {
        self.sut_cpu.map(|c| 1e6 * c / self.ok.max(1) as f64)
    }

    /// What made the step unclean or suspect, for the step's line ("" when nothing).
    pub fn flags(&self) -> String {
        let mut f = Vec::new();
        if self.failed > 0 {
            f.push(format!("{} failed", self.failed));
        }
        if self.retransmissions > 0 {
            f.push(format!("{} retransmitted", self.retransmissions));
        }
        if self.stray > 0 {
            f.push(format!("{} unexpected msgs", self.stray));
        }
        if self.callee_failed > 0 {
            f.push(format!("{} failed at the callee", self.callee_failed));
        }
        f.extend(self.bad_exits.iter().cloned());
        if self.generator_bound() {
            f.push(format!(
                "LOAD GENERATOR BOUND (a SIPp at {:.0} % of a core)",
                self.sipp_cores * 100.0
            ));
        }
        if self.machine_bound() {
            f.push(format!(
                "MACHINE BOUND (cores {:.0} % busy)",
                self.machine_busy * 100.0
            ));
        }
        f.join(", ")
    }
}

/// `(user + nice + system + irq + softirq + steal, all)` jiffies of all cores, `/proc/stat`.
fn machine_jiffies() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let all: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (all.saturating_sub(idle), all)
}

/// Busy share of all cores between two [`machine_jiffies`] samples.
fn machine_busy(a: (u64, u64), b: (u64, u64)) -> f64 {
    let all = b.1.saturating_sub(a.1);
    if all == 0 {
        return 0.0;
    }
    b.0.saturating_sub(a.0) as f64 / all as f64
}

/// Datagrams dropped so far by the kernel at every UDP socket bound to `port` (IPv4 and IPv6,
/// several sockets when a server shares its port: `SO_REUSEPORT`): the `drops` column of
/// `/proc/net/udp` and `/proc/net/udp6`. `None` when neither file has a socket on the port.
pub fn udp_drops(port: u16) -> Option<u64> {
    let hex = format!(":{port:04X}");
    let mut found = None;
    for f in ["/proc/net/udp", "/proc/net/udp6"] {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(drops)) = (cols.get(1), cols.last()) else {
                continue;
            };
            if local.ends_with(&hex) {
                if let Ok(d) = drops.parse::<u64>() {
                    *found.get_or_insert(0) += d;
                }
            }
        }
    }
    found
}

/// `/proc/loadavg`'s three load averages.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Proportional set size (kB) of `pid`, with its live direct children when `children`
/// (`/proc/<pid>/smaps_rollup`: shared pages split among the processes that map them, so
/// Kamailio's shared memory is counted once, not once per worker). 0 when unreadable.
pub fn pss_kb(pid: u32, children: bool) -> u64 {
    fn one(pid: u32) -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("Pss:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0)
    }
    let mut total = one(pid);
    if children {
        total += child_pids(pid).into_iter().map(one).sum::<u64>();
    }
    total
}

/// `(ppid, utime + stime ticks)` of a process, from `/proc/<pid>/stat`.
fn proc_stat(pid: &str) -> Option<(u32, u64)> {
    // Fields after the `)` that closes the command name: state ppid … utime(14) stime(15).
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ppid = f.get(1)?.parse().ok()?;
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some((ppid, ticks))
}

fn child_pids(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
                .filter(|p| proc_stat(&p.to_string()).is_some_and(|(pp, _)| pp == pid))
                .collect()
        })
        .unwrap_or_default()
}

/// CPU seconds (user + system) used so far by process `pid`, with its live direct children
/// when `children` (e.g. Kamailio's main process and its workers), from `/proc` (100 clock
/// ticks a second, Linux's `USER_HZ`). 0 for processes that are gone.
pub fn cpu_secs(pid: u32, children: bool) -> f64 {
    let own = proc_stat(&pid.to_string()).map_or(0, |(_, t)| t);
    if !children {
        return own as f64 / 100.0;
    }
    let children: u64 = child_pids(pid)
        .into_iter()
        .filter_map(|p| proc_stat(&p.to_string()))
        .map(|(_, t)| t)
        .sum();
    (own + children) as f64 / 100.0
}
/// CPU seconds (user + system) used so far by thread `tid` of process `pid` (0 when gone): to
/// take a harness's own threads out of the CPU of a system run in the bench's process.
pub fn thread_cpu_secs(pid: u32, tid: u32) -> f64 {
    proc_stat(&format!("{pid}/task/{tid}")).map_or(0, |(_, t)| t) as f64 / 100.0
}

/// The calling thread's id (`/proc/thread-self`), 0 when unreadable.
pub fn current_tid() -> u32 {
    std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|p| p.file_name()?.to_str()?.parse().ok())
        .unwrap_or(0)
}

/// Waits (at most 15 s) until process `pid` (with its children when `children`) has used
/// under 2 % of a core over a 250 ms window: the previous step's calls and retransmissions
/// have drained, so they neither land in the next step's CPU nor reach its fresh SIPps as
/// unexpected messages. Returns false when it never settled.
pub fn settle(pid: u32, children: bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(15) {
        let c0 = cpu_secs(pid, children);
        std::thread::sleep(Duration::from_millis(250));
        if cpu_secs(pid, children) - c0 < 0.005 {
            return true;
        }
    }
    false
}

/// A child process killed (SIGKILL) and reaped on drop.
pub struct KillOnDrop(pub Option<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// SIPp's common arguments for load: loopback, own SIP/control/media ports, a large socket
/// buffer, no keyboard.
pub fn sipp_base_args(scenario: &Path, port: u16) -> Vec<String> {
    let mut args = vec!["-sf".to_string(), scenario.display().to_string()];
    args.extend(["-t", "u1", "-i", "127.0.0.1", "-mi", "127.0.0.1"].map(String::from));
    args.extend(["-p".into(), port.to_string()]);
    args.extend(["-cp".into(), free_udp_port().to_string()]);
    args.extend(["-mp".into(), free_media_port().to_string()]);
    args.extend(["-buff_size", "4194304", "-nostdin"].map(String::from));
    args
}

/// The callee of a step: a SIPp UAS started for the step with `-m` = the step's calls, so that
/// it exits by itself once every call ended and reports its own failures.
#[derive(Debug, Clone)]
pub struct Callee<'a> {
    /// The UAS scenario.
    pub scenario: &'a Path,
    /// The port it binds on 127.0.0.1 (fixed: the system under test routes to it).
    pub port: u16,
    /// Anything else (`-trace_err`, …).
    pub extra: Vec<String>,
}

/// One step: one or more SIPp callers sharing the offered rate, and optionally a callee.
#[derive(Debug, Clone)]
pub struct SippStep<'a> {
    /// The `-sf` scenario of the callers.
    pub scenario: &'a Path,
    /// The system under test.
    pub target: SocketAddr,
    /// Offered calls per second, split evenly over the callers.
    pub rate: u32,
    /// Step length: `-m` is `rate × secs` (split the same way).
    pub secs: u32,
    /// Time each call spends after its setup (pauses), subtracted from the wall time.
    pub hold: Duration,
    /// Arguments of every caller (`-s`, `-d`, `-l`, `-trace_err`, …).
    pub extra: Vec<String>,
    /// One caller per entry, with that caller's own arguments (e.g. its `-inf` file); one
    /// caller with no extra arguments when empty.
    pub callers: Vec<Vec<String>>,
    /// A callee started for this step.
    pub callee: Option<Callee<'a>>,
}

/// A SIPp process of a step, with the last CPU sample taken while it ran.
struct Running {
    label: String,
    child: KillOnDrop,
    stat: PathBuf,
    cpu: f64,
    t0: Instant,
    wall: f64,
    exit: Option<Option<i32>>,
    killed: bool,
}

impl Running {
    /// Samples its CPU and reaps it if it exited; true once it has.
    fn poll(&mut self) -> anyhow::Result<bool> {
        if self.exit.is_some() {
            return Ok(true);
        }
        let Some(c) = self.child.0.as_mut() else {
            return Ok(true);
        };
        if let Some(status) = c.try_wait()? {
            self.exit = Some(status.code());
            self.wall = self.t0.elapsed().as_secs_f64();
            return Ok(true);
        }
        self.cpu = cpu_secs(c.id(), false).max(self.cpu);
        Ok(false)
    }

    fn kill(&mut self) {
        if let Some(c) = self.child.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.killed = true;
        self.exit = Some(None);
        self.wall = self.t0.elapsed().as_secs_f64();
    }

    fn cores(&self) -> f64 {
        self.cpu / self.wall.max(0.001)
    }

    fn stats(&self) -> crate::sipp::SippStats {
        crate::sipp::parse_stats(&std::fs::read_to_string(&self.stat).unwrap_or_default())
    }

    /// An exit that makes the step no measurement, described; `None` when normal.
    fn bad_exit(&self, stats: &crate::sipp::SippStats) -> Option<String> {
        match self.exit {
            _ if self.killed => Some(format!("{} killed (outlived its limit)", self.label)),
            Some(Some(0)) => None,
            Some(Some(1)) if stats.failed > 0 => None,
            Some(Some(1)) => Some(format!("{} exit 1 with no failed call", self.label)),
            Some(Some(c)) => Some(format!("{} exit {c}", self.label)),
            Some(None) => Some(format!("{} killed by a signal", self.label)),
            None => Some(format!("{} did not exit", self.label)),
        }
    }
}

fn spawn_sipp(
    args: Vec<String>,
    label: String,
    stat: String,
    dir: &Path,
) -> anyhow::Result<Running> {
    let sipp = require_binary("sipp")?;
    let out = std::fs::File::create(dir.join(format!("{label}.out")))?;
    let child = Command::new(&sipp)
        .args(&args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(out)
        .spawn()
        .with_context(|| format!("cannot start sipp {}", args.join(" ")))?;
    Ok(Running {
        label,
        child: KillOnDrop(Some(child)),
        stat: dir.join(stat),
        cpu: 0.0,
        t0: Instant::now(),
        wall: 0.0,
        exit: None,
        killed: false,
    })
}

/// Runs one step to completion (callers killed after `secs` + hold + 60 s, the callee 15 s
/// after the callers) with each SIPp's stats in `<dir>/<label>-<rate>-<who>.csv`, and counts
/// the outcome: the callers' and callee's counters, their exit codes, the busiest SIPp's CPU
/// and the machine's.
pub fn run_sipp_step(step: &SippStep<'_>, label: &str, dir: &Path) -> anyhow::Result<Step> {
    let limit = Duration::from_secs(u64::from(step.secs) + 60) + step.hold;
    let default_caller = [Vec::new()];
    let callers: &[Vec<String>] = if step.callers.is_empty() {
        &default_caller
    } else {
        &step.callers
    };
    let k = callers.len() as u32;
    let total_calls = u64::from(step.rate) * u64::from(step.secs);
    let m0 = machine_jiffies();
    let drops0 = udp_drops(step.target.port());
    let mut callee = match &step.callee {
        Some(c) => {
            let mut args = sipp_base_args(c.scenario, c.port);
            args.extend(["-m".into(), total_calls.to_string()]);
            args.extend(["-recv_timeout".into(), "5000".into()]);
            let stat = format!("{label}-{}-uas.csv", step.rate);
            args.extend(["-trace_stat", "-fd", "1", "-stf"].map(String::from));
            args.push(stat.clone());
            args.extend(c.extra.iter().cloned());
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, c.port));
            let mut r = spawn_sipp(args, format!("{label}-{}-uas", step.rate), stat, dir)?;
            // Bound once the port is taken.
            crate::wait_until(Duration::from_secs(10), "the SIPp UAS to bind", || {
                UdpSocket::bind(addr).is_err()
            })?;
            if r.poll()? {
                bail!(
                    "SIPp UAS exited at once: {}",
                    crate::tail_file(&dir.join(format!("{}.out", r.label)), 20)
                );
            }
            Some(r)
        }
        None => None,
    };
    let mut running = Vec::new();
    let mut calls = 0u64;
    for (i, own) in callers.iter().enumerate() {
        // An even split, the remainder to the first callers.
        let rate = step.rate / k + u32::from((i as u32) < step.rate % k);
        if rate == 0 {
            continue;
        }
        let m = u64::from(rate) * u64::from(step.secs);
        calls += m;
        let mut args = sipp_base_args(step.scenario, free_udp_port());
        args.insert(2, step.target.to_string());
        args.extend(["-r".into(), rate.to_string()]);
        args.extend(["-m".into(), m.to_string()]);
        args.extend(["-recv_timeout".into(), "5000".into()]);
        args.extend(["-timeout".into(), format!("{}s", limit.as_secs())]);
        let stat = format!("{label}-{}-uac{i}.csv", step.rate);
        args.extend(["-trace_stat", "-fd", "1", "-stf"].map(String::from));
        args.push(stat.clone());
        args.extend(step.extra.iter().cloned());
        args.extend(own.iter().cloned());
        running.push(spawn_sipp(
            args,
            format!("{label}-{}-uac{i}", step.rate),
            stat,
            dir,
        )?);
    }
    let t0 = Instant::now();
    loop {
        let mut all = true;
        for r in &mut running {
            all &= r.poll()?;
        }
        if let Some(c) = callee.as_mut() {
            c.poll()?;
        }
        if all {
            break;
        }
        if t0.elapsed() > limit + Duration::from_secs(5) {
            for r in &mut running {
                if r.exit.is_none() {
                    r.kill();
                }
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let wall = running.iter().map(|r| r.wall).fold(0.0, f64::max);
    if let Some(c) = callee.as_mut() {
        // Its last calls end with the callers' (plus its own 5 s receive timeout).
        let t1 = Instant::now();
        while !c.poll()? {
            if t1.elapsed() > Duration::from_secs(15) {
                c.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let m1 = machine_jiffies();
    let mut out = Step {
        rate: step.rate,
        calls,
        busy_secs: (wall - step.hold.as_secs_f64()).max(0.001),
        wall_secs: wall,
        machine_busy: machine_busy(m0, m1),
        load: loadavg(),
        kernel_drops: drops0
            .zip(udp_drops(step.target.port()))
            .map(|(a, b)| b.saturating_sub(a)),
        ..Step::default()
    };
    let mut total = crate::sipp::SippStats::default();
    for r in &running {
        let s = r.stats();
        out.bad_exits.extend(r.bad_exit(&s));
        out.sipp_cores = out.sipp_cores.max(r.cores());
        total.add(&s);
    }
    out.ok = total.successful;
    out.failed = total.failed + calls.saturating_sub(total.successful + total.failed);
    out.retransmissions = total.retransmissions;
    out.stray = total.stray;
    if let Some(c) = &callee {
        let s = c.stats();
        out.sipp_cores = out.sipp_cores.max(c.cores());
        out.retransmissions += s.retransmissions;
        out.stray += s.stray;
        out.callee_failed = s.failed;
        if c.killed {
            // Calls it never saw end (their callers' failures are counted already).
            out.callee_failed += calls
                .saturating_sub(s.successful + s.failed)
                .saturating_sub(out.failed);
        } else if let Some(bad) = c.bad_exit(&s) {
            out.bad_exits.push(bad);
        }
    }
    Ok(out)
}

/// Prints one step's line.
pub fn print_step(round: u32, name: &str, unit: &str, s: &Step) {
    let cpu = match (s.cores(), s.cpu_us_per_call()) {
        (Some(c), Some(us)) => format!(
            ", CPU {:.0} % of a core = {us:.0} µs per {}",
            c * 100.0,
            unit.trim_end_matches('s')
        ),
        _ => String::new(),
    };
    let flags = s.flags();
    let drops = match s.kernel_drops {
        Some(d) if d > 0 => format!(", {d} datagrams dropped at its socket"),
        _ => String::new(),
    };
    println!(
        "  r{round} {name:<11} {:>6} {unit}/s offered: {:>7} ok, {:.3} % unclean{}{}, {:>6.0}/s achieved{cpu}{drops}; load {}",
        s.rate,
        s.ok,
        s.fail_pct(),
        if flags.is_empty() { "" } else { " (" },
        if flags.is_empty() { String::new() } else { format!("{flags})") },
        s.achieved(),
        s.load,
    );
}

/// Ramps of several systems, interleaved: in each of `rounds` rounds, for each rate in order,
/// one step per system whose ramp has not stopped yet, with the order of the systems rotated
/// at every step and every round (so that none always runs first, and a system's step sits
/// next to the others' in time, on the same machine state). A system's ramp stops, for the
/// round, after its first unclean step; its next step then waits until `quarantine` has
/// passed since that one ended (the server may still retransmit to the fixed callee port, up to
/// 64 × T1 = 32 s, and a fresh callee would take those for calls of its own). Returns the steps
/// as `[round][system]`.
pub fn interleaved_ramps(
    names: &[&str],
    unit: &str,
    rounds: u32,
    rates: &[u32],
    quarantine: Duration,
    mut step: impl FnMut(usize, u32) -> anyhow::Result<Step>,
) -> anyhow::Result<Vec<Vec<Vec<Step>>>> {
    let n = names.len();
    let mut unclean_at: Vec<Option<Instant>> = vec![None; n];
    let mut out = Vec::new();
    for round in 0..rounds {
        let mut steps: Vec<Vec<Step>> = vec![Vec::new(); n];
        let mut stopped = vec![false; n];
        for (i, &rate) in rates.iter().enumerate() {
            for k in 0..n {
                let sys = (k + i + round as usize) % n;
                if stopped[sys] {
                    continue;
                }
                if let Some(t) = unclean_at[sys].take() {
                    let wait = quarantine.saturating_sub(t.elapsed());
                    if !wait.is_zero() {
                        println!(
                            "  ({} waits {:.0} s for its last unclean step's transactions to end)",
                            names[sys],
                            wait.as_secs_f64()
                        );
                        std::thread::sleep(wait);
                    }
                }
                let s = step(sys, rate)?;
                print_step(round + 1, names[sys], unit, &s);
                stopped[sys] = !s.clean();
                if stopped[sys] {
                    unclean_at[sys] = Some(Instant::now());
                }
                steps[sys].push(s);
            }
            if stopped.iter().all(|s| *s) {
                break;
            }
        }
        out.push(steps);
    }
    Ok(out)
}

/// The highest clean step of a ramp (the ramp stops at the first unclean one).
pub fn best(steps: &[Step]) -> Option<&Step> {
    steps.iter().filter(|s| s.clean()).max_by_key(|s| s.rate)
}

/// The median of some values (the mean of the middle two for an even count).
pub fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

/// How one system's ramp in one round ended.
#[derive(Debug, Clone)]
pub struct RampEnd {
    /// The highest clean offered rate (0 when none).
    pub best: u32,
    /// Its achieved rate.
    pub achieved: f64,
    /// True when the server's own limit was found: the ramp stopped at an unclean step that
    /// was neither load-generator- nor machine-bound, and the clean steps below it were not
    /// load-generator-bound either.
    pub server_limit: bool,
    /// Why not, when not.
    pub why_not: String,
}

/// How a ramp ended: see [`RampEnd`].
pub fn ramp_end(steps: &[Step]) -> RampEnd {
    let best = self::best(steps);
    let last = steps.last();
    let (server_limit, why_not) = match last {
        None => (false, "no step".to_string()),
        Some(l) if l.clean() => (
            false,
            if l.generator_bound() {
                "limit not reached: every step clean, the top one load-generator-bound".into()
            } else {
                "limit not reached: every step clean".into()
            },
        ),
        Some(l) if l.generator_bound() => (
            false,
            "the failing step was load-generator-bound (a SIPp saturated its core)".into(),
        ),
        Some(l) if l.machine_bound() => (
            false,
            "the failing step was machine-bound (every core busy)".into(),
        ),
        Some(_) if best.is_some_and(Step::generator_bound) => (
            false,
            "the highest clean step was load-generator-bound".into(),
        ),
        Some(_) => (true, String::new()),
    };
    RampEnd {
        best: best.map_or(0, |b| b.rate),
        achieved: best.map_or(0.0, Step::achieved),
        server_limit,
        why_not,
    }
}

/// Prints, for systems `names` ramped by [`interleaved_ramps`]: each system's highest clean
/// rate per round and whether that is the server's limit; the CPU per call at every rate where
/// every round of every system was clean (median over the rounds) and its ratio to the last
/// system; and a headline: CPU per call at the highest such rate beside the rates. `unit` is
/// the thing counted ("REGISTER", "call").
pub fn summarize(names: &[&str], unit: &str, rates: &[u32], runs: &[Vec<Vec<Step>>]) {
    println!();
    let mut ends: Vec<Vec<RampEnd>> = Vec::new();
    for (sys, name) in names.iter().enumerate() {
        let e: Vec<RampEnd> = runs.iter().map(|r| ramp_end(&r[sys])).collect();
        let bests: Vec<String> = e
            .iter()
            .map(|x| {
                format!(
                    "{} ({:.0}/s){}",
                    x.best,
                    x.achieved,
                    if x.server_limit { "" } else { "*" }
                )
            })
            .collect();
        println!("{name}: highest clean step per round: {}", bests.join(", "));
        for (round, x) in e.iter().enumerate() {
            if !x.server_limit {
                println!(
                    "  * round {}: not the server's limit: {}",
                    round + 1,
                    x.why_not
                );
            }
        }
        ends.push(e);
    }
    // CPU per unit at the rates where every round of every system was clean.
    let common: Vec<u32> = rates
        .iter()
        .copied()
        .filter(|&rate| {
            runs.iter().all(|r| {
                r.iter()
                    .all(|steps| steps.iter().any(|s| s.rate == rate && s.clean()))
            })
        })
        .collect();
    let cpu_at = |sys: usize, rate: u32| {
        median(
            runs.iter()
                .filter_map(|r| r[sys].iter().find(|s| s.rate == rate))
                .filter_map(Step::cpu_us_per_call)
                .collect(),
        )
    };
    if !common.is_empty() {
        println!(
            "CPU µs per {unit} (median of {} rounds), at rates where every step was clean:",
            runs.len()
        );
        for &rate in &common {
            let cells: Vec<String> = (0..names.len())
                .map(|sys| {
                    format!(
                        "{} {:.0}",
                        names[sys],
                        cpu_at(sys, rate).unwrap_or(f64::NAN)
                    )
                })
                .collect();
            let ratio = match (cpu_at(0, rate), cpu_at(names.len() - 1, rate)) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
                _ => "-".into(),
            };
            println!("  {rate:>6}/s: {}  ratio {ratio}", cells.join(", "));
        }
    }
    let rate_of = |sys: usize| median(ends[sys].iter().map(|e| f64::from(e.best)).collect());
    let all_limits = ends.iter().all(|e| e.iter().all(|x| x.server_limit));
    let rate_ratio = match (rate_of(0), rate_of(names.len() - 1)) {
        (Some(a), Some(b)) if b > 0.0 && all_limits => format!("{:.2}x", a / b),
        (Some(a), Some(b)) if b > 0.0 => {
            format!("{:.2}x, NOT a ratio of server limits (see * above)", a / b)
        }
        _ => "-".into(),
    };
    let headline_cpu = common.last().map(|&rate| {
        let a = cpu_at(0, rate);
        let b = cpu_at(names.len() - 1, rate);
        format!(
            "CPU per {unit} at {rate}/s: {} {:.0} µs vs {} {:.0} µs = {}",
            names[0],
            a.unwrap_or(f64::NAN),
            names[names.len() - 1],
            b.unwrap_or(f64::NAN),
            match (a, b) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
                _ => "-".into(),
            }
        )
    });
    println!(
        "HEADLINE: {}; highest clean rate (median of rounds) {} {:.0}/s vs {} {:.0}/s = {rate_ratio}",
        headline_cpu.unwrap_or_else(|| format!("no rate clean for every system in every round: no CPU per {unit} comparison")),
        names[0],
        rate_of(0).unwrap_or(0.0),
        names[names.len() - 1],
        rate_of(names.len() - 1).unwrap_or(0.0),
    );
}

/// Kamailio running from a generated config in a directory of ours; stopped with SIGTERM (its
/// main process then stops its children) and reaped on drop.
pub struct Kamailio {
    child: Option<Child>,
    addr: SocketAddr,
    log: PathBuf,
}

impl Kamailio {
    /// Writes `cfg` to `<dir>/kamailio.cfg` and starts Kamailio in the foreground (`-DD -E`,
    /// 256 MB of shared memory); waits until it holds UDP `addr` (the `listen=` of `cfg`).
    pub fn start(cfg: &str, addr: SocketAddr, dir: &Path) -> anyhow::Result<Self> {
        let bin = require_binary("kamailio")?;
        let path = dir.join("kamailio.cfg");
        std::fs::write(&path, cfg)?;
        let log = dir.join("kamailio.log");
        let child = Command::new(&bin)
            .args(["-DD", "-E", "-f"])
            .arg(&path)
            .args(["-P", &dir.join("kamailio.pid").display().to_string()])
            .args(["-Y", &dir.display().to_string(), "-m", "256"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting kamailio (apt-get install kamailio)")?;
        let mut k = Kamailio {
            child: Some(child),
            addr,
            log,
        };
        let t0 = Instant::now();
        while UdpSocket::bind(addr).is_ok() {
            let exited = k
                .child
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
            if exited || t0.elapsed() > Duration::from_secs(10) {
                bail!("kamailio did not start: {}", crate::tail_file(&k.log, 30));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(k)
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The main process id (its workers are its children).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Its log (stderr).
    pub fn log(&self) -> &Path {
        &self.log
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .arg(c.id().to_string())
            .stderr(Stdio::null())
            .status();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            if matches!(c.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// The legitimate phone of an overload step: an account outside the load's injection files,
/// registering (REGISTER → 401 → REGISTER → 200) from its own port while the load runs, and
/// again `Retry-After` (2 s) after each failure, as phones do.
pub struct Phone {
    /// Attempts made, and seconds from the first attempt to the registration (if any).
    pub attempts: u32,
    pub registered_after: Option<f64>,
}

impl Phone {
    /// Prints the phone's outcome under system `name`.
    pub fn print(&self, name: &str) {
        match self.registered_after {
            Some(t) => println!(
                "  {name}: the phone registered {t:.1} s after its first attempt (attempt {})",
                self.attempts
            ),
            None => println!(
                "  {name}: the phone did NOT register ({} attempts)",
                self.attempts
            ),
        }
    }
}

/// Prints, for each system, its goodput in the step at twice `rate` as a share of its goodput
/// at `rate` (issue 16 asks ≥ 90 %). `results` are `(step index, system, step)`: index 0 the
/// step at `rate`, 1 the one at twice it.
pub fn print_goodput_at_double<'a>(
    names: &[&str],
    rate: u32,
    results: impl Iterator<Item = (usize, &'a str, &'a Step)> + Clone,
) {
    for &name in names {
        let good = |i: usize| {
            results
                .clone()
                .find(|(j, n, _)| *j == i && *n == name)
                .map(|(_, _, s)| s.achieved())
                .unwrap_or(0.0)
        };
        println!(
            "{name}: goodput at {}/s offered = {:.0} % of its goodput at {rate}/s",
            rate.saturating_mul(2),
            100.0 * good(1) / good(0).max(0.001)
        );
    }
}

/// Starts, in `scope`, the [`Phone`] of an overload step of `secs` seconds against `target`:
/// once the load has built up (10 s in) until 25 s before the step's end (at least 5 s of
/// attempts). [`join_phone`] collects it.
pub fn phone_during_step<'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    target: SocketAddr,
    inf: &'scope Path,
    dir: &'scope Path,
    secs: u32,
) -> std::thread::ScopedJoinHandle<'scope, Phone> {
    let give_up = Duration::from_secs(u64::from(secs).saturating_sub(25).max(5));
    scope.spawn(move || phone(target, inf, dir, Duration::from_secs(10), give_up))
}

/// The outcome of a [`phone_during_step`] (a phone thread that panicked made no attempt).
pub fn join_phone(handle: std::thread::ScopedJoinHandle<'_, Phone>) -> Phone {
    handle.join().unwrap_or(Phone {
        attempts: 0,
        registered_after: None,
    })
}

/// Runs the [`Phone`] of `inf` (one "user;password" line) against `target`: waits `start`, then
/// tries (SIPp, `register_load.xml`, its stderr in `dir`) until it registers or `give_up` has
/// passed since the first attempt.
pub fn phone(
    target: SocketAddr,
    inf: &Path,
    dir: &Path,
    start: Duration,
    give_up: Duration,
) -> Phone {
    let scenario = crate::repo_root().join("integration/sipp/register_load.xml");
    std::thread::sleep(start);
    let t0 = std::time::Instant::now();
    let mut attempts = 0;
    while t0.elapsed() < give_up {
        attempts += 1;
        let ok = (|| -> anyhow::Result<bool> {
            let mut args = sipp_base_args(&scenario, free_udp_port());
            args.insert(2, target.to_string());
            args.extend(["-inf".into(), inf.display().to_string()]);
            args.extend(
                [
                    "-m",
                    "1",
                    "-r",
                    "1",
                    "-recv_timeout",
                    "8000",
                    "-timeout",
                    "10s",
                ]
                .map(String::from),
            );
            let out = std::fs::File::create(dir.join(format!("phone-{attempts}.out")))?;
            let status = std::process::Command::new(require_binary("sipp")?)
                .args(&args)
                .current_dir(dir)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(out)
                .status()?;
            Ok(status.success())
        })()
        .unwrap_or(false);
        if ok {
            return Phone {
                attempts,
                registered_after: Some(t0.elapsed().as_secs_f64()),
            };
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    Phone {
        attempts,
        registered_after: None,
    }
}

/// The tokio runtime an in-process gateway runs on: tokio's default (a worker per core), or
/// `BENCH_WORKER_THREADS=N` workers, to see what depends on tasks moving between threads (e.g.
/// memory an allocator keeps for the thread that allocated it).
pub fn gateway_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = std::env::var("BENCH_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
    {
        b.worker_threads(n);
    }
    Ok(b.enable_all().build()?)
}

/// Cores of this machine: Kamailio's documented `children` setting for UDP (one worker per
/// core).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The gateway configuration the benchmarks start in-process: UDP on `udp`, realm `bench`,
/// MD5 digest (what SIPp answers), no qualify, no media timeout, no trunks.
pub fn gateway_config(
    udp: std::net::SocketAddr,
    database: String,
) -> gateway::server::GatewayConfig {
    gateway::server::GatewayConfig {
        fabric: None,
        site: "bench".into(),
        udp: vec![udp],
        tcp: vec![],
        realm: "bench".into(),
        database,
        secret: b"bench-secret".to_vec(),
        min_expires: 60,
        default_expires: 3600,
        max_expires: 7200,
        max_contacts: 10,
        algorithms: vec![gateway::registrar::digest::Algorithm::Md5],
        db_reload: std::time::Duration::from_secs(60),
        qualify_interval: std::time::Duration::from_secs(3600),
        t1: std::time::Duration::from_millis(500),
        device_prefix: "PJSIP/".into(),
        node: "bench".into(),
        rtp_ip: udp.ip(),
        rtp_ports: (20000, 20999),
        rtp_threads: media::relay_threads_per_core(),
        rtp_scheduling: media::RelayScheduling {
            realtime_priority: None,
            coalesce: std::time::Duration::from_micros(200),
        },
        sip_shards: 1,
        media_timeout: None,
        timer_c: gateway::b2bua::DEFAULT_TIMER_C,
        ring_timeout: None,
        session_expires: None,
        session_min_se: std::time::Duration::from_secs(90),
        extensions: Default::default(),
        trunks: Vec::new(),
        record_dir: None,
        moh: Default::default(),
        dns_servers: Vec::new(),
        // The benchmarks measure throughput from one source: no challenge rate limit.
        security: gateway::security::SecurityConfig {
            challenges_per_sec: 0,
            ..Default::default()
        },
        streams: Default::default(),
        voicemail: None,

        overload: Default::default(),

        spy: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::{ramp_end, Step};

    fn step(rate: u32, failed: u64) -> Step {
        Step {
            rate,
            calls: 1000,
            ok: 1000 - failed,
            failed,
            busy_secs: 10.0,
            wall_secs: 11.0,
            sut_cpu: Some(5.5),
            sipp_cores: 0.5,
            machine_busy: 0.5,
            ..Step::default()
        }
    }

    #[test]
    fn counts_and_cleanliness() {
        let mut s = step(100, 0);
        assert!(s.clean());
        s.failed = 2;
        assert!((s.fail_pct() - 0.2).abs() < 1e-9);
        assert!(!s.clean());
        assert_eq!(s.cores(), Some(0.5));
        assert!(super::cpu_secs(std::process::id(), true) >= 0.0);
        // Retransmissions, stray messages and the callee's failures are unclean too.
        for f in [
            |s: &mut Step| s.retransmissions = 1,
            |s: &mut Step| s.stray = 1,
            |s: &mut Step| s.callee_failed = 1,
        ] {
            let mut s = step(100, 0);
            assert!(s.clean());
            f(&mut s);
            assert!(!s.clean(), "{s:?}");
        }
        // A SIPp that did not exit normally makes the step no measurement.
        let mut s = step(100, 0);
        s.bad_exits.push("uac0 exit 255".into());
        assert!(!s.clean());
    }

    #[test]
    fn a_ceiling_bound_ramp_is_not_a_server_limit() {
        // Every step clean: the limit was not reached.
        let e = ramp_end(&[step(100, 0), step(200, 0)]);
        assert_eq!(e.best, 200);
        assert!(!e.server_limit);
        // Failing at 300 with SIPp saturated: the load generator's limit.
        let mut top = step(300, 50);
        top.sipp_cores = 0.97;
        let e = ramp_end(&[step(100, 0), step(200, 0), top.clone()]);
        assert_eq!(e.best, 200);
        assert!(!e.server_limit, "{e:?}");
        // The same failure with SIPp at half a core: the server's.
        top.sipp_cores = 0.5;
        let e = ramp_end(&[step(100, 0), step(200, 0), top]);
        assert!(e.server_limit, "{e:?}");
    }

    #[test]
    fn median_of_rounds() {
        assert_eq!(super::median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(super::median(vec![4.0, 1.0]), Some(2.5));
        assert_eq!(super::median(vec![]), None);
    }
}

//! Shared pieces of the load benchmarks (`src/bin/*_bench.rs`): SIPp runs at a fixed rate with
//! a per-step `-trace_stat` file, a rate ramp that stops at the first step with ≥ 0.1 % failed
//! calls, a SIPp left running in the background (a UAS), and Kamailio started from a generated
//! config. Every process started here is stopped when its guard is dropped.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::{free_udp_port, require_binary};

/// Failure ratio (percent) a step must stay under to count as clean.
pub const MAX_FAIL_PCT: f64 = 0.1;

/// One SIPp run at a fixed offered rate.
#[derive(Debug, Clone)]
pub struct Step {
    /// Offered rate (`-r`, calls per second).
    pub rate: u32,
    /// Calls started (`-m`).
    pub calls: u64,
    /// `SuccessfulCall(C)`.
    pub ok: u64,
    /// `FailedCall(C)` plus the calls that never completed.
    pub failed: u64,
    /// Seconds during which the calls were started: SIPp's wall time minus the per-call
    /// duration it spends after the setup (the hold time), so that a call's tail does not
    /// dilute the setup rate.
    pub busy_secs: f64,
    /// SIPp's wall time.
    pub wall_secs: f64,
    /// CPU seconds (user + system) the system under test used during the step, when measured.
    pub sut_cpu: Option<f64>,
}

impl Step {
    /// Failed calls in percent of the calls started.
    pub fn fail_pct(&self) -> f64 {
        100.0 * self.failed as f64 / self.calls.max(1) as f64
    }

    /// Below [`MAX_FAIL_PCT`].
    pub fn clean(&self) -> bool {
        self.fail_pct() < MAX_FAIL_PCT
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
}

/// CPU seconds (user + system) used so far by process `pid`, with its live direct children
/// when `children` (e.g. Kamailio's main process and its workers), from `/proc` (100 clock
/// ticks a second, Linux's `USER_HZ`). 0 for processes that are gone.
pub fn cpu_secs(pid: u32, children: bool) -> f64 {
    // Fields after the `)` that closes the command name: state ppid … utime(14) stime(15).
    fn stat(pid: &str) -> Option<(u32, u64)> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let rest = &text[text.rfind(')')? + 1..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ppid = f.get(1)?.parse().ok()?;
        let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
        Some((ppid, ticks))
    }
    let own = stat(&pid.to_string()).map_or(0, |(_, t)| t);
    if !children {
        return own as f64 / 100.0;
    }
    let children: u64 = std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| stat(&e.file_name().to_string_lossy()))
                .filter(|(ppid, _)| *ppid == pid)
                .map(|(_, t)| t)
                .sum()
        })
        .unwrap_or(0);
    (own + children) as f64 / 100.0
}

/// An even UDP port on 127.0.0.1 with the three ports above it free too (SIPp binds RTP, RTCP
/// and the video pair from `-mp`).
pub fn free_media_port() -> u16 {
    loop {
        let p = free_udp_port() & !1;
        if !(1024..=65530).contains(&p) {
            continue;
        }
        if (p..p + 4).all(|q| UdpSocket::bind((Ipv4Addr::LOCALHOST, q)).is_ok()) {
            return p;
        }
    }
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
fn sipp_base_args(scenario: &Path, port: u16) -> Vec<String> {
    let mut args = vec!["-sf".to_string(), scenario.display().to_string()];
    args.extend(["-t", "u1", "-i", "127.0.0.1", "-mi", "127.0.0.1"].map(String::from));
    args.extend(["-p".into(), port.to_string()]);
    args.extend(["-cp".into(), free_udp_port().to_string()]);
    args.extend(["-mp".into(), free_media_port().to_string()]);
    args.extend(["-buff_size", "4194304", "-nostdin"].map(String::from));
    args
}

/// A SIPp UAS (or any scenario that waits for requests) running in the background until
/// dropped; its logs go to `dir`.
pub struct SippServer {
    _child: KillOnDrop,
    addr: SocketAddr,
}

impl SippServer {
    /// Starts `scenario` on a free port, its output in `<dir>/<label>.out`; `extra` is
    /// appended (e.g. `-trace_err`).
    pub fn start(
        scenario: &Path,
        label: &str,
        dir: &Path,
        extra: &[String],
    ) -> anyhow::Result<Self> {
        let sipp = require_binary("sipp")?;
        let port = free_udp_port();
        let mut args = sipp_base_args(scenario, port);
        args.extend(extra.iter().cloned());
        let out = dir.join(format!("{label}.out"));
        let log = std::fs::File::create(&out)?;
        let child = Command::new(&sipp)
            .args(&args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start sipp {}", args.join(" ")))?;
        let mut child = KillOnDrop(Some(child));
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        // Bound once the port is taken.
        crate::wait_until(Duration::from_secs(10), "the SIPp UAS to bind", || {
            UdpSocket::bind(addr).is_err()
        })?;
        if let Some(Some(status)) = child.0.as_mut().map(|c| c.try_wait().ok().flatten()) {
            bail!("SIPp UAS exited ({status}): {}", crate::tail_file(&out, 20));
        }
        Ok(SippServer {
            _child: child,
            addr,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// One SIPp client step.
#[derive(Debug, Clone)]
pub struct SippStep<'a> {
    /// The `-sf` scenario.
    pub scenario: &'a Path,
    /// The system under test.
    pub target: SocketAddr,
    /// Offered calls per second.
    pub rate: u32,
    /// Step length: `-m` is `rate × secs`.
    pub secs: u32,
    /// Time each call spends after its setup (pauses), subtracted from the wall time.
    pub hold: Duration,
    /// Anything else (`-s`, `-d`, `-l`, `-trace_err`, …).
    pub extra: Vec<String>,
}

/// Runs one step to completion (killed after `secs` + hold + 60 s) with its stats in
/// `<dir>/<label>-<rate>.csv`, and counts the outcome.
pub fn run_sipp_step(step: &SippStep<'_>, label: &str, dir: &Path) -> anyhow::Result<Step> {
    let sipp = require_binary("sipp")?;
    let calls = u64::from(step.rate) * u64::from(step.secs);
    let stat = format!("{label}-{}.csv", step.rate);
    let limit = Duration::from_secs(u64::from(step.secs) + 60) + step.hold;
    let mut args = sipp_base_args(step.scenario, free_udp_port());
    args.insert(2, step.target.to_string());
    args.extend(["-r".into(), step.rate.to_string()]);
    args.extend(["-m".into(), calls.to_string()]);
    args.extend(["-recv_timeout".into(), "5000".into()]);
    args.extend(["-timeout".into(), format!("{}s", limit.as_secs())]);
    args.extend(["-trace_stat", "-fd", "1", "-stf"].map(String::from));
    args.push(stat.clone());
    args.extend(step.extra.iter().cloned());
    let out = std::fs::File::create(dir.join(format!("{label}-{}.out", step.rate)))?;
    let t0 = Instant::now();
    let mut child = KillOnDrop(Some(
        Command::new(&sipp)
            .args(&args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .with_context(|| format!("cannot start sipp {}", args.join(" ")))?,
    ));
    let Some(c) = child.0.as_mut() else {
        bail!("no SIPp child");
    };
    loop {
        if c.try_wait()?.is_some() {
            break;
        }
        if t0.elapsed() > limit + Duration::from_secs(5) {
            let _ = c.kill();
            let _ = c.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let elapsed = t0.elapsed();
    drop(child);
    let csv = std::fs::read_to_string(dir.join(&stat)).unwrap_or_default();
    let (ok, failed) = crate::sipp::parse_stat(&csv);
    Ok(Step {
        rate: step.rate,
        calls,
        ok,
        failed: failed + calls.saturating_sub(ok + failed),
        busy_secs: elapsed.saturating_sub(step.hold).as_secs_f64(),
        wall_secs: elapsed.as_secs_f64(),
        sut_cpu: None,
    })
}

/// Runs `step(rate)` for each rate in order, printing a line per step, and stops after the
/// first step with ≥ [`MAX_FAIL_PCT`] failed calls. Returns every step run.
pub fn ramp(
    name: &str,
    unit: &str,
    rates: &[u32],
    mut step: impl FnMut(u32) -> anyhow::Result<Step>,
) -> anyhow::Result<Vec<Step>> {
    let mut steps = Vec::new();
    for &rate in rates {
        let s = step(rate)?;
        let cpu = match (s.cores(), s.cpu_us_per_call()) {
            (Some(c), Some(us)) => format!(
                ", CPU {:.0} % of a core, {us:.0} µs per {}",
                c * 100.0,
                unit.trim_end_matches('s')
            ),
            _ => String::new(),
        };
        println!(
            "  {name:<12} {:>6} {unit}/s offered: {:>7} ok {:>6} failed ({:.3} %), {:>7.0} {unit}/s achieved{cpu}",
            s.rate,
            s.ok,
            s.failed,
            s.fail_pct(),
            s.achieved()
        );
        let clean = s.clean();
        steps.push(s);
        if !clean {
            break;
        }
    }
    Ok(steps)
}

/// The highest clean step of a ramp (the ramp stops at the first unclean one).
pub fn best(steps: &[Step]) -> Option<&Step> {
    steps.iter().filter(|s| s.clean()).max_by_key(|s| s.rate)
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

/// The gateway configuration the benchmarks start in-process: UDP on `udp`, realm `bench`,
/// MD5 digest (what SIPp answers), no qualify, no media timeout, no trunks.
pub fn gateway_config(
    udp: std::net::SocketAddr,
    database: String,
) -> gateway::server::GatewayConfig {
    gateway::server::GatewayConfig {
        udp: vec![udp],
        tcp: vec![],
        realm: "bench".into(),
        database,
        secret: b"bench-secret".to_vec(),
        min_expires: 60,
        default_expires: 3600,
        max_expires: 7200,
        algorithms: vec![gateway::registrar::digest::Algorithm::Md5],
        db_reload: std::time::Duration::from_secs(60),
        qualify_interval: std::time::Duration::from_secs(3600),
        t1: std::time::Duration::from_millis(500),
        device_prefix: "PJSIP/".into(),
        node: "bench".into(),
        rtp_ip: udp.ip(),
        rtp_ports: (20000, 20999),
        media_timeout: None,
        extensions: Default::default(),
        trunks: Vec::new(),
        record_dir: None,
    }
}

#[cfg(test)]
mod tests {
    use super::Step;
    use crate::sipp::parse_stat as stat_counts;
    use std::time::Duration;

    #[test]
    fn counts_and_cleanliness() {
        let csv = "StartTime;SuccessfulCall(C);FailedCall(C);\nx;0;0;\ny;998;1;\n";
        assert_eq!(stat_counts(csv), (998, 1));
        let s = Step {
            rate: 100,
            calls: 1000,
            ok: 998,
            failed: 1 + 1,
            busy_secs: Duration::from_secs(10).as_secs_f64(),
            wall_secs: 11.0,
            sut_cpu: Some(5.5),
        };
        assert!((s.fail_pct() - 0.2).abs() < 1e-9);
        assert!(!s.clean());
        assert!((s.achieved() - 99.8).abs() < 1e-9);
        assert_eq!(s.cores(), Some(0.5));
        assert!(super::cpu_secs(std::process::id(), true) >= 0.0);
    }
}

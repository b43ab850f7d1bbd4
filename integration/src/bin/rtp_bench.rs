//! Benchmark (b) of issue 4: the RTP relay under N concurrent streams at 50 packets/s, CPU per
//! relayed packet and added one-way latency (p50/p99), side by side with rtpengine (Debian
//! package, userspace forwarding, driven over its ng control protocol) and a direct-socket floor,
//! all in the same run.
//!
//! ```text
//! apt-get install -y rtpengine-daemon
//! cargo build --release -p integration --bin rtp_bench
//! ./target/release/rtp_bench [--secs S] [--warmup W] [--rounds R] [--no-rtpengine]
//!     [--relay-threads K] [--relay-fifo P] [--relay-coalesce-us U]
//!     [--baseline OTHER_RTP_BENCH [--baseline-fifo P] [--baseline-coalesce-us U]]
//!     [--rtpengine-opt OPTION]… N [N…]
//! ```
//!
//! `--relay-threads K`: callfabric's relay runs K relay threads (default one per core, as the
//! gateway's `rtp_threads`). `--relay-fifo P` / `--relay-coalesce-us U`: its threads'
//! scheduling, as the gateway's `rtp_realtime_priority` / `rtp_coalesce_us` (default: the
//! gateway's defaults: ordinary priority, and 200 µs for real-time threads). `--baseline EXE`:
//! another build of this bench (say, of an older commit) whose `--serve-relay` runs as a third
//! system, `baseline`, in the same rounds, the order rotating with the others: a before/after
//! comparison under the same machine state (`--baseline-fifo` / `--baseline-coalesce-us` for
//! its scheduling; a build older than these options ignores them). `--rtpengine-opt OPTION`
//! passes an option to rtpengine (e.g. `--scheduling=fifo`, then `--priority=P`).
//!
//! Each stream is one direction: a sender socket sends 172-byte RTP (12-byte header, 160-byte
//! PCMU payload, seq +1 and timestamp +160 per packet) every 20 ms to the system under test,
//! which relays it to a receiver socket. Streams are phased evenly over the 20 ms period. The
//! payload carries the send time (monotonic ns since the bench's epoch), the stream index and a
//! "measured" flag (cleared during the warm-up); the receiver takes the receive time as soon as
//! `recv_from` returns. Senders run on one thread, receivers on a one-thread tokio runtime; the
//! same code drives every system:
//!
//! * **floor**: sender → receiver directly, a twin of every system stream sent right after it
//!   in the same run (so the floor and the system see the same machine state: each system's
//!   added latency is taken against its own paired floor);
//! * **callfabric**: sender → leg A ⇄ leg B (`media::bridge`) → receiver, in a child
//!   process (this binary with `--serve-relay`, a default multi-thread tokio runtime) so that its
//!   CPU is read from `/proc/<pid>/stat` exactly like rtpengine's;
//! * **rtpengine**: sender → rtpengine (offer/answer over ng) → receiver.
//!
//! CPU per packet = Δ(utime+stime) of the relay process over the measured window / packets
//! received in it; wake-ups per packet likewise from its threads' voluntary context switches
//! (each a sleep in `epoll_wait` ended by a ready socket). "Added" latency = the system's percentile − its paired floor's percentile;
//! a negative one means the floor had the worse tail (a stall hit the floor, not the system):
//! the sample is INVALID, never a pass, and one such round makes the figure pooled over the
//! rounds INVALID too; the pooled figure passes only if every round does. Memory: the relay process's PSS with the streams set up.

use anyhow::{anyhow, bail, Context, Result};
use integration::rtpengine::Rtpengine;
use media::{bridge, Leg, MediaRelay, RelayConfig};
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// 12-byte RTP header + 160 bytes of PCMU (20 ms at 8 kHz).
const PACKET_LEN: usize = 172;
const PTIME: Duration = Duration::from_millis(20);
/// Issue 16's target for the relay's CPU per packet against rtpengine's in the same run.
const CPU_TARGET: f64 = 0.8;
/// Port ranges, below the kernel's ephemeral range (where the phones' sockets are bound).
const OURS_PORTS: (u16, u16) = (10000, 14999);
const BASELINE_PORTS: (u16, u16) = (15000, 19999);
const RTPENGINE_PORTS: (u16, u16) = (20000, 32759);
/// How long after the last send the relay CPU is sampled, and how long receivers then drain.
const CPU_TAIL: Duration = Duration::from_millis(50);
const DRAIN: Duration = Duration::from_millis(400);

// ---------------------------------------------------------------------------------------------
// Processes

/// Kills (and reaps) the child when dropped, whatever happened.
struct ProcGuard {
    name: &'static str,
    child: Child,
}

impl ProcGuard {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ProcGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        eprintln!("# stopped {} (pid {})", self.name, self.child.id());
    }
}

/// Clock ticks of user + system time of process `pid` (all its threads, dead ones included).
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of proc(5); `rest` starts at field 3.
    let utime: u64 = f.get(11).context("no utime")?.parse()?;
    let stime: u64 = f.get(12).context("no stime")?.parse()?;
    Ok(utime + stime)
}

/// Nanoseconds on CPU of the live threads of `pid` (schedstat; finer than clock ticks).
fn cpu_ns_sched(pid: u32) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = entry?.path().join("schedstat");
        if let Ok(s) = std::fs::read_to_string(&path) {
            total += s
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Ok(total)
}

/// Voluntary context switches of the live threads of `pid`: how often they went to sleep
/// (in `epoll_wait`, for a relay) and were woken again.
fn wakeups(pid: u32) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        if let Ok(s) = std::fs::read_to_string(entry?.path().join("status")) {
            total += s
                .lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Ok(total)
}

#[derive(Clone, Copy)]
struct CpuSample {
    ticks: u64,
    sched_ns: u64,
    wakeups: u64,
}

fn cpu_sample(pid: u32) -> Result<CpuSample> {
    Ok(CpuSample {
        ticks: cpu_ticks(pid)?,
        sched_ns: cpu_ns_sched(pid)?,
        wakeups: wakeups(pid)?,
    })
}

/// CPU µs per second that `pid` burns with its streams set up but no traffic (timers, pollers).
fn idle_cpu_us_per_s(pid: u32) -> Result<f64> {
    const IDLE: Duration = Duration::from_secs(1);
    let a = cpu_ns_sched(pid)?;
    std::thread::sleep(IDLE);
    let b = cpu_ns_sched(pid)?;
    Ok(b.saturating_sub(a) as f64 / 1000.0 / IDLE.as_secs_f64())
}

fn clock_ticks_per_sec() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

// ---------------------------------------------------------------------------------------------
// callfabric's relay in a child process

/// `rtp_bench --serve-relay PORT_MIN PORT_MAX [THREADS]`: a `MediaRelay` on 127.0.0.1 with
/// THREADS relay threads (default: one per core) driven by lines on stdin: `pair SENDER
/// RECEIVER` → `ok A_PORT B_PORT` (leg A's SDP address is the sender, leg B's the receiver, A
/// and B bridged, both on one relay thread as the gateway opens a call's legs); `stats` →
/// `stats RTP_IN RTP_OUT`; `clear` → `ok`; `quit` or EOF ends it.
fn serve_relay(args: &[String]) -> Result<()> {
    let min: u16 = args.first().context("PORT_MIN")?.parse()?;
    let max: u16 = args.get(1).context("PORT_MAX")?.parse()?;
    let threads: usize = match args.get(2).map(String::as_str) {
        Some("-") | None => media::relay_threads_per_core(),
        Some(t) => t.parse().context("THREADS")?,
    };
    // Scheduling as the gateway's defaults (ordinary priority; `rtp_coalesce_us` 200, which
    // real-time threads only use), or as the `fifo=P` and `coalesce-us=U` words say.
    let mut config = RelayConfig::new(LOOPBACK, LOOPBACK, min, max);
    config.scheduling.coalesce = std::time::Duration::from_micros(200);
    for word in args.iter().skip(3) {
        match word.split_once('=') {
            Some(("fifo", p)) => {
                config.scheduling.realtime_priority = Some(p.parse().context("fifo=P")?)
            }
            Some(("coalesce-us", u)) => {
                config.scheduling.coalesce =
                    std::time::Duration::from_micros(u.parse().context("coalesce-us=U")?)
            }
            _ => bail!("serve-relay: unknown option {word}"),
        }
    }
    // Default: tokio's multi-thread runtime with one worker per core (as `#[tokio::main]`);
    // RTP_BENCH_RELAY_WORKERS=K overrides the worker count (an experiment knob).
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Ok(k) = std::env::var("RTP_BENCH_RELAY_WORKERS") {
        builder.worker_threads(k.parse().context("RTP_BENCH_RELAY_WORKERS")?);
    }
    let rt = builder.enable_all().build()?;
    let _entered = rt.enter();
    // The relay as the gateway runs it: `rtp_threads` threads, one per core by default.
    let sched = config.scheduling;
    let relay = MediaRelay::with_threads(config, threads)?;
    eprintln!("# callfabric relay: {threads} relay thread(s), {sched:?}");
    let mut legs: Vec<(Leg, Leg)> = Vec::new();
    let mut out = std::io::stdout().lock();
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["pair", sender, receiver] => {
                let sender: SocketAddr = sender.parse()?;
                let receiver: SocketAddr = receiver.parse()?;
                let (a, b) = relay.leg_pair()?;
                a.set_remote(sender, None);
                b.set_remote(receiver, None);
                bridge(&a, &b)?;
                writeln!(out, "ok {} {}", a.local_rtp().port(), b.local_rtp().port())?;
                legs.push((a, b));
            }
            ["stats"] => {
                let rtp_in: u64 = legs.iter().map(|(a, _)| a.stats().rtp_packets_in).sum();
                let rtp_out: u64 = legs.iter().map(|(_, b)| b.stats().rtp_packets_out).sum();
                writeln!(out, "stats {rtp_in} {rtp_out}")?;
            }
            ["clear"] => {
                for (a, b) in legs.drain(..) {
                    a.close();
                    b.close();
                }
                // The relay threads drop a closed leg's sockets (and so give its port pair
                // back) on their next turn: wait for that, or the next round's `pair`s find
                // the range still held ("no free RTP/RTCP port pair" at N = 1000).
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
                while relay.ports_in_use() > 0 && std::time::Instant::now() < deadline {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                match relay.ports_in_use() {
                    0 => writeln!(out, "ok")?,
                    n => writeln!(out, "error {n} port pairs still held 10 s after clear")?,
                }
            }
            ["quit"] => break,
            other => writeln!(out, "error unknown command {other:?}")?,
        }
        out.flush()?;
    }
    Ok(())
}

/// The parent's side of `--serve-relay`.
struct OursRelay {
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    proc: ProcGuard,
}

impl OursRelay {
    /// `exe --serve-relay` on `ports`; `threads` is passed on when given (a build before
    /// that argument ignores it).
    fn start(
        name: &'static str,
        exe: &std::path::Path,
        ports: (u16, u16),
        threads: Option<usize>,
        sched: &[String],
    ) -> Result<Self> {
        let mut cmd = Command::new(exe);
        cmd.arg("--serve-relay")
            .arg(ports.0.to_string())
            .arg(ports.1.to_string());
        match threads {
            Some(t) => cmd.arg(t.to_string()),
            None if !sched.is_empty() => cmd.arg("-"),
            None => &mut cmd,
        };
        cmd.args(sched);
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawning --serve-relay")?;
        let stdin = child.stdin.take().context("child stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("child stdout")?);
        Ok(OursRelay {
            stdin,
            stdout,
            proc: ProcGuard { name, child },
        })
    }

    fn cmd(&mut self, line: &str) -> Result<String> {
        writeln!(self.stdin, "{line}")?;
        self.stdin.flush()?;
        let mut reply = String::new();
        if self.stdout.read_line(&mut reply)? == 0 {
            bail!("relay helper exited");
        }
        let reply = reply.trim().to_string();
        if reply.starts_with("error") {
            bail!("relay helper: {reply}");
        }
        Ok(reply)
    }

    /// Opens a bridged pair; returns the address the sender must send to.
    fn pair(&mut self, sender: SocketAddr, receiver: SocketAddr) -> Result<SocketAddr> {
        let reply = self.cmd(&format!("pair {sender} {receiver}"))?;
        let port: u16 = reply
            .split_whitespace()
            .nth(1)
            .context("bad pair reply")?
            .parse()?;
        Ok(SocketAddr::new(LOOPBACK, port))
    }
}

// ---------------------------------------------------------------------------------------------
// Load generation and measurement

struct Phone {
    tx: UdpSocket,
    rx: UdpSocket,
    target: SocketAddr,
}

fn phones(n: usize) -> Result<Vec<(UdpSocket, UdpSocket)>> {
    (0..n)
        .map(|_| {
            Ok((
                UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?,
                UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?,
            ))
        })
        .collect()
}

struct RunResult {
    sent_measured: u64,
    recv_measured: u64,
    recv_total: u64,
    wrong_stream: u64,
    window: Duration,
    /// One-way latencies of measured packets, ns, sorted.
    lat_ns: Vec<u64>,
    /// The same for the floor twins sent beside the streams.
    floor_lat_ns: Vec<u64>,
    floor_sent: u64,
    floor_recv: u64,
    /// Added p99 (µs) of each round pooled here: system p99 − floor p99 of the same run.
    round_added_p99: Vec<f64>,
    /// PSS of the relay process (kB) with the streams set up.
    mem_kb: u64,
    /// Δ clock ticks, Δ schedstat ns and Δ wake-ups of the relay over the measured window.
    cpu: Option<(u64, u64, u64)>,
}

impl RunResult {
    /// Pools another round of the same system and N into this one.
    fn merge(&mut self, other: RunResult) {
        self.sent_measured += other.sent_measured;
        self.recv_measured += other.recv_measured;
        self.recv_total += other.recv_total;
        self.wrong_stream += other.wrong_stream;
        self.window += other.window;
        self.lat_ns.extend(other.lat_ns);
        self.lat_ns.sort_unstable();
        self.floor_lat_ns.extend(other.floor_lat_ns);
        self.floor_lat_ns.sort_unstable();
        self.floor_sent += other.floor_sent;
        self.floor_recv += other.floor_recv;
        self.round_added_p99.extend(other.round_added_p99);
        self.mem_kb = self.mem_kb.max(other.mem_kb);
        self.cpu = match (self.cpu, other.cpu) {
            (Some(a), Some(b)) => Some((a.0 + b.0, a.1 + b.1, a.2 + b.2)),
            _ => None,
        };
    }
}

struct RxResult {
    total: u64,
    measured: u64,
    wrong: u64,
    lat: Vec<u64>,
}

async fn receive(
    sock: tokio::net::UdpSocket,
    idx: u32,
    epoch: Instant,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> RxResult {
    let mut r = RxResult {
        total: 0,
        measured: 0,
        wrong: 0,
        lat: Vec::new(),
    };
    let mut buf = [0u8; 2048];
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            got = sock.recv_from(&mut buf) => {
                let now = epoch.elapsed().as_nanos() as u64;
                let Ok((n, _)) = got else { continue };
                if n != PACKET_LEN {
                    r.wrong += 1;
                    continue;
                }
                let mut b8 = [0u8; 8];
                b8.copy_from_slice(&buf[12..20]);
                let sent = u64::from_be_bytes(b8);
                let mut b4 = [0u8; 4];
                b4.copy_from_slice(&buf[20..24]);
                if u32::from_be_bytes(b4) != idx {
                    r.wrong += 1;
                    continue;
                }
                r.total += 1;
                if buf[24] == 1 {
                    r.measured += 1;
                    r.lat.push(now.saturating_sub(sent));
                }
            }
        }
    }
    r
}

/// Sends every stream at 50 pps for `warmup + secs`, each packet followed at once by a twin
/// sent straight to a floor receiver (no relay); samples `pid`'s CPU over the measured part.
fn run_load(phones: Vec<Phone>, secs: u32, warmup: u32, pid: Option<u32>) -> Result<RunResult> {
    let n = phones.len();
    let epoch = Instant::now();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut senders = Vec::with_capacity(n);
    let mut rx_socks = Vec::with_capacity(2 * n);
    let mut twins = Vec::with_capacity(n);
    for p in phones {
        senders.push((p.tx, p.target));
        p.rx.set_nonblocking(true)?;
        rx_socks.push(p.rx);
    }
    // Receivers n..2n are the floor twins of streams 0..n.
    for (tx, rx) in self::phones(n)? {
        twins.push((tx, rx.local_addr()?));
        rx.set_nonblocking(true)?;
        rx_socks.push(rx);
    }
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let receivers = std::thread::spawn(move || -> Result<Vec<RxResult>> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let mut tasks = Vec::with_capacity(rx_socks.len());
            for (i, s) in rx_socks.into_iter().enumerate() {
                let s = tokio::net::UdpSocket::from_std(s)?;
                tasks.push(tokio::spawn(receive(s, i as u32, epoch, stop_rx.clone())));
            }
            let _ = ready_tx.send(());
            let mut out = Vec::with_capacity(tasks.len());
            for t in tasks {
                out.push(t.await?);
            }
            Ok(out)
        })
    });
    if ready_rx.recv().is_err() {
        // The thread ended before it was ready: return its error.
        receivers
            .join()
            .map_err(|_| anyhow!("receiver thread panicked"))??;
        bail!("receiver thread ended early");
    }

    let frames = (warmup + secs) * 1000 / PTIME.as_millis() as u32;
    let warm_frames = warmup * 1000 / PTIME.as_millis() as u32;
    let start = Instant::now() + Duration::from_millis(20);
    let mut pkt = [0u8; PACKET_LEN];
    pkt[0] = 0x80; // V=2, no padding, extension or CSRC
    pkt[1] = 0; // PT 0 (PCMU), no marker
    pkt[25..].fill(0xff); // PCMU silence
    let mut cpu0 = None;
    let mut t_measure = start;
    let mut sent_measured = 0u64;
    let mut floor_sent = 0u64;
    let mut send_errors = 0u64;
    for k in 0..frames {
        let measured = k >= warm_frames;
        for (i, (sock, target)) in senders.iter().enumerate() {
            let due = start + PTIME * k + PTIME * i as u32 / n as u32;
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if k == warm_frames && i == 0 {
                if let Some(pid) = pid {
                    cpu0 = Some(cpu_sample(pid)?);
                }
                t_measure = Instant::now();
            }
            pkt[2..4].copy_from_slice(&(k as u16).to_be_bytes());
            pkt[4..8].copy_from_slice(&k.wrapping_mul(160).to_be_bytes());
            pkt[24] = u8::from(measured);
            // The stream's packet, then its floor twin.
            for (twin, (sock, target)) in
                [(false, (sock, *target)), (true, (&twins[i].0, twins[i].1))]
            {
                let idx = if twin { n + i } else { i } as u32;
                pkt[8..12].copy_from_slice(&(0x5eed_0000u32 ^ idx).to_be_bytes());
                pkt[20..24].copy_from_slice(&idx.to_be_bytes());
                let ts = epoch.elapsed().as_nanos() as u64;
                pkt[12..20].copy_from_slice(&ts.to_be_bytes());
                match sock.send_to(&pkt, target) {
                    Ok(_) if measured && twin => floor_sent += 1,
                    Ok(_) if measured => sent_measured += 1,
                    Ok(_) => {}
                    Err(_) => send_errors += 1,
                }
            }
        }
    }
    let window = t_measure.elapsed();
    std::thread::sleep(CPU_TAIL);
    let cpu = match (pid, cpu0) {
        (Some(pid), Some(c0)) => {
            let c1 = cpu_sample(pid)?;
            Some((
                c1.ticks.saturating_sub(c0.ticks),
                c1.sched_ns.saturating_sub(c0.sched_ns),
                c1.wakeups.saturating_sub(c0.wakeups),
            ))
        }
        _ => None,
    };
    let mem_kb = pid.map_or(0, |p| integration::bench::pss_kb(p, false));
    std::thread::sleep(DRAIN);
    stop_tx.send_replace(true);
    let rx = receivers
        .join()
        .map_err(|_| anyhow!("receiver thread panicked"))??;
    if send_errors > 0 {
        eprintln!("# {send_errors} send errors");
    }
    let mut lat_ns = Vec::with_capacity(sent_measured as usize);
    let mut floor_lat_ns = Vec::with_capacity(floor_sent as usize);
    let (mut recv_measured, mut recv_total, mut wrong_stream, mut floor_recv) = (0, 0, 0, 0);
    for (i, r) in rx.into_iter().enumerate() {
        wrong_stream += r.wrong;
        if i < n {
            recv_measured += r.measured;
            recv_total += r.total;
            lat_ns.extend(r.lat);
        } else {
            floor_recv += r.measured;
            floor_lat_ns.extend(r.lat);
        }
    }
    lat_ns.sort_unstable();
    floor_lat_ns.sort_unstable();
    let round_added_p99 = match (percentile(&lat_ns, 99.0), percentile(&floor_lat_ns, 99.0)) {
        (Some(a), Some(b)) => vec![a - b],
        _ => Vec::new(),
    };
    Ok(RunResult {
        sent_measured,
        recv_measured,
        recv_total,
        wrong_stream,
        window,
        lat_ns,
        floor_lat_ns,
        floor_sent,
        floor_recv,
        round_added_p99,
        mem_kb,
        cpu,
    })
}

fn percentile(sorted: &[u64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted.get(idx).map(|&v| v as f64 / 1000.0)
}

struct Row {
    system: &'static str,
    n: usize,
    pps: f64,
    loss_pct: f64,
    cpu_us: Option<f64>,
    cpu_sched_us: Option<f64>,
    /// The relay's wake-ups (voluntary context switches) per packet.
    wakeups: Option<f64>,
    p50: Option<f64>,
    p99: Option<f64>,
    /// The paired floor's (twins sent beside this system's streams, same runs).
    floor_p50: Option<f64>,
    floor_p99: Option<f64>,
    floor_loss_pct: f64,
    round_added_p99: Vec<f64>,
    idle_us_per_s: Option<f64>,
    mem_kb: u64,
    load: String,
}

fn row(system: &'static str, n: usize, r: &RunResult, tck: u64, idle: Option<f64>) -> Row {
    let pps = r.recv_measured as f64 / r.window.as_secs_f64();
    let loss = |sent: u64, recv: u64| {
        if sent == 0 {
            0.0
        } else {
            100.0 * sent.saturating_sub(recv) as f64 / sent as f64
        }
    };
    let per_packet = |v: f64| {
        if r.recv_measured == 0 {
            None
        } else {
            Some(v / r.recv_measured as f64)
        }
    };
    let (cpu_us, cpu_sched_us, wakeups) = match r.cpu {
        Some((ticks, ns, w)) => (
            per_packet(ticks as f64 * 1e6 / tck as f64),
            per_packet(ns as f64 / 1000.0),
            per_packet(w as f64),
        ),
        None => (None, None, None),
    };
    if r.wrong_stream > 0 {
        eprintln!(
            "# {system} N={n}: {} packets on the wrong receiver",
            r.wrong_stream
        );
    }
    eprintln!(
        "# {system} N={n}: sent(measured) {} received(measured) {} received(all) {} window {:.2}s; paired floor sent {} received {}",
        r.sent_measured,
        r.recv_measured,
        r.recv_total,
        r.window.as_secs_f64(),
        r.floor_sent,
        r.floor_recv
    );
    Row {
        system,
        n,
        pps,
        loss_pct: loss(r.sent_measured, r.recv_measured),
        cpu_us,
        cpu_sched_us,
        wakeups,
        p50: percentile(&r.lat_ns, 50.0),
        p99: percentile(&r.lat_ns, 99.0),
        floor_p50: percentile(&r.floor_lat_ns, 50.0),
        floor_p99: percentile(&r.floor_lat_ns, 99.0),
        floor_loss_pct: loss(r.floor_sent, r.floor_recv),
        round_added_p99: r.round_added_p99.clone(),
        idle_us_per_s: idle,
        mem_kb: r.mem_kb,
        load: loadavg(),
    }
}

fn fmt(v: Option<f64>, prec: usize) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.prec$}"))
}

fn sub(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    Some(a? - b?)
}

/// The verdict on an added p99 (µs) against the < 200 µs target: a negative one is INVALID
/// (the paired floor had the worse tail), never a pass.
fn verdict(added_p99: Option<f64>) -> &'static str {
    match added_p99 {
        Some(v) if v < 0.0 => "INVALID (negative: the floor's tail was worse)",
        Some(v) if v < 200.0 => "PASS",
        Some(_) => "FAIL",
        None => "n/a",
    }
}

/// The verdict on a pooled added p99 given each round's: a round with a negative added p99
/// (its floor's tail was the worse one) makes the whole figure INVALID, whatever the pooled
/// value, since that round's floor did not act as a floor; a round at or over the target makes
/// it FAIL even when the pooled figure is under it (one round's stall can dominate both pooled
/// tails and cancel out).
fn pooled_verdict(pooled: Option<f64>, rounds: &[f64]) -> String {
    let negative = rounds.iter().filter(|v| **v < 0.0).count();
    if negative > 0 {
        return format!(
            "INVALID ({negative} of {} rounds negative: the floor's tail was worse)",
            rounds.len()
        );
    }
    let over = rounds
        .iter()
        .filter(|v| verdict(Some(**v)) == "FAIL")
        .count();
    match verdict(pooled) {
        "PASS" if over > 0 => format!(
            "FAIL ({over} of {} rounds at or over the target)",
            rounds.len()
        ),
        v => v.to_owned(),
    }
}

// ---------------------------------------------------------------------------------------------

struct Args {
    secs: u32,
    rounds: u32,
    warmup: u32,
    rtpengine: bool,
    relay_threads: Option<usize>,
    baseline: Option<std::path::PathBuf>,
    /// `fifo=P` / `coalesce-us=U` for callfabric's relay, and for the baseline's.
    sched: Vec<String>,
    baseline_sched: Vec<String>,
    /// Further rtpengine options (`--rtpengine-opt`), e.g. `--scheduling=fifo`.
    rtpengine_opts: Vec<String>,
    ns: Vec<usize>,
}

fn parse_args(args: &[String]) -> Result<Args> {
    let mut a = Args {
        secs: 10,
        rounds: 1,
        warmup: 1,
        rtpengine: true,
        relay_threads: None,
        baseline: None,
        sched: Vec::new(),
        baseline_sched: Vec::new(),
        rtpengine_opts: Vec::new(),
        ns: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--secs" => a.secs = it.next().context("--secs S")?.parse()?,
            "--warmup" => a.warmup = it.next().context("--warmup W")?.parse()?,
            "--rounds" => a.rounds = it.next().context("--rounds R")?.parse()?,
            "--no-rtpengine" => a.rtpengine = false,
            "--relay-threads" => {
                let k: usize = it.next().context("--relay-threads K")?.parse()?;
                if !(1..=media::MAX_RELAY_THREADS).contains(&k) {
                    bail!("--relay-threads {k}: 1 to {}", media::MAX_RELAY_THREADS);
                }
                a.relay_threads = Some(k);
            }
            "--baseline" => a.baseline = Some(it.next().context("--baseline EXE")?.into()),
            "--relay-fifo" => a
                .sched
                .push(format!("fifo={}", num(it.next(), "--relay-fifo P")?)),
            "--relay-coalesce-us" => a.sched.push(format!(
                "coalesce-us={}",
                num(it.next(), "--relay-coalesce-us U")?
            )),
            "--baseline-fifo" => a
                .baseline_sched
                .push(format!("fifo={}", num(it.next(), "--baseline-fifo P")?)),
            "--baseline-coalesce-us" => a.baseline_sched.push(format!(
                "coalesce-us={}",
                num(it.next(), "--baseline-coalesce-us U")?
            )),
            "--rtpengine-opt" => a
                .rtpengine_opts
                .push(it.next().context("--rtpengine-opt OPTION")?.clone()),
            n => {
                a.ns.push(n.parse().with_context(|| format!("stream count {n}"))?)
            }
        }
    }
    if a.ns.is_empty() {
        a.ns = vec![50, 200];
    }
    if a.secs == 0 || a.rounds == 0 {
        bail!("--secs and --rounds must be > 0");
    }
    Ok(a)
}

/// A number argument of an option.
fn num(v: Option<&String>, what: &str) -> Result<u64> {
    v.context(what.to_owned())?
        .parse()
        .with_context(|| what.to_owned())
}

/// callfabric's relay (child process): sender → leg A ⇄ leg B → receiver.
fn run_ours(n: usize, args: &Args, ours: &mut OursRelay) -> Result<(RunResult, f64)> {
    let mut ps = Vec::with_capacity(n);
    for (tx, rx) in phones(n)? {
        let target = ours.pair(tx.local_addr()?, rx.local_addr()?)?;
        ps.push(Phone { tx, rx, target });
    }
    let idle = idle_cpu_us_per_s(ours.proc.pid())?;
    let r = run_load(ps, args.secs, args.warmup, Some(ours.proc.pid()))?;
    let stats = ours.cmd("stats")?;
    eprintln!("# {} {stats}", ours.proc.name);
    ours.cmd("clear")?;
    Ok((r, idle))
}

/// rtpengine: one call per stream (offer from the sender, answer from the receiver).
fn run_rtpengine(n: usize, args: &Args, rtpe: &mut Rtpengine) -> Result<(RunResult, f64)> {
    let mut ps = Vec::with_capacity(n);
    for (i, (tx, rx)) in phones(n)?.into_iter().enumerate() {
        let target = rtpe.call(i, tx.local_addr()?, rx.local_addr()?)?;
        ps.push(Phone { tx, rx, target });
    }
    let idle = idle_cpu_us_per_s(rtpe.pid())?;
    let r = run_load(ps, args.secs, args.warmup, Some(rtpe.pid()))?;
    rtpe.delete_all()?;
    Ok((r, idle))
}

fn main() -> Result<()> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().map(String::as_str) == Some("--serve-relay") {
        return serve_relay(&argv[1..]);
    }
    let args = parse_args(&argv)?;
    let tck = clock_ticks_per_sec();
    eprintln!(
        "# rtp_bench: {} round(s) of {} s (+{} s warm-up) per system, N = {:?}, load {}",
        args.rounds,
        args.secs,
        args.warmup,
        args.ns,
        loadavg()
    );
    let exe = std::env::current_exe()?;
    let mut ours = OursRelay::start(
        "callfabric",
        &exe,
        OURS_PORTS,
        args.relay_threads,
        &args.sched,
    )?;
    let mut baseline = match &args.baseline {
        Some(b) => Some(OursRelay::start(
            "baseline",
            b,
            BASELINE_PORTS,
            args.relay_threads,
            &args.baseline_sched,
        )?),
        None => None,
    };
    let mut rtpe = if args.rtpengine {
        Some(Rtpengine::start_with(
            RTPENGINE_PORTS,
            None,
            &args.rtpengine_opts,
        )?)
    } else {
        None
    };
    // The systems in this run: 0 callfabric, 1 baseline, 2 rtpengine.
    let present: Vec<usize> = [true, baseline.is_some(), rtpe.is_some()]
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.then_some(i))
        .collect();
    let mut rows: Vec<Row> = Vec::new();
    for &n in &args.ns {
        // Pooled over rounds; the order of the systems rotates each round so that a change of
        // background load does not always fall on the same system. Each run carries its own
        // floor twins.
        let mut acc: [Option<(RunResult, f64)>; 3] = [None, None, None];
        for round in 0..args.rounds {
            for k in 0..present.len() {
                let sys = present[(k + round as usize) % present.len()];
                let (r, idle) = match (sys, baseline.as_mut(), rtpe.as_mut()) {
                    (0, _, _) => run_ours(n, &args, &mut ours)?,
                    (1, Some(b), _) => run_ours(n, &args, b)?,
                    (2, _, Some(rtpe)) => run_rtpengine(n, &args, rtpe)?,
                    _ => continue,
                };
                acc[sys] = Some(match acc[sys].take() {
                    Some((mut a, idle_sum)) => {
                        a.merge(r);
                        (a, idle_sum + idle)
                    }
                    None => (r, idle),
                });
            }
        }
        let rounds = f64::from(args.rounds);
        for (sys, name) in ["callfabric", "baseline", "rtpengine"]
            .into_iter()
            .enumerate()
        {
            if let Some((r, idle_sum)) = &acc[sys] {
                rows.push(row(name, n, r, tck, Some(idle_sum / rounds)));
            }
        }
    }
    if let Some(mut b) = baseline {
        let _ = b.cmd("quit");
    }
    let _ = ours.cmd("quit");
    drop(ours);
    drop(rtpe);
    print_table(&rows, &args);
    Ok(())
}

fn print_table(rows: &[Row], args: &Args) {
    println!(
        "\nRTP relay, one direction per stream, 172-byte RTP at 50 pps, {} round(s) × {} s measured (+{} s warm-up); \
         each system's floor is the twin of every packet sent straight to a receiver in the same run\n",
        args.rounds, args.secs, args.warmup
    );
    println!(
        "| system | N | pps | loss % | CPU µs/pkt | (schedstat) | wake-ups/pkt | p50 µs | p99 µs | paired floor p50 / p99 µs | added p50 µs | added p99 µs | added p99 per round µs | idle CPU µs/s | PSS MB | load |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | --- |");
    for r in rows {
        let rounds: Vec<String> = r
            .round_added_p99
            .iter()
            .map(|v| format!("{v:.0}"))
            .collect();
        println!(
            "| {} | {} | {:.0} | {:.3} | {} | {} | {} | {} | {} | {} / {} (loss {:.3} %) | {} | {} | {} | {} | {:.1} | {} |",
            r.system,
            r.n,
            r.pps,
            r.loss_pct,
            fmt(r.cpu_us, 2),
            fmt(r.cpu_sched_us, 2),
            fmt(r.wakeups, 2),
            fmt(r.p50, 1),
            fmt(r.p99, 1),
            fmt(r.floor_p50, 1),
            fmt(r.floor_p99, 1),
            r.floor_loss_pct,
            fmt(sub(r.p50, r.floor_p50), 1),
            fmt(sub(r.p99, r.floor_p99), 1),
            rounds.join(", "),
            fmt(r.idle_us_per_s, 0),
            r.mem_kb as f64 / 1024.0,
            r.load
        );
    }
    println!();
    let mut ns: Vec<usize> = rows.iter().map(|r| r.n).collect();
    ns.dedup();
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    for n in ns {
        let get = |s: &str| rows.iter().find(|r| r.n == n && r.system == s);
        for name in ["callfabric", "baseline"] {
            let Some(ours) = get(name) else {
                continue;
            };
            let added99 = sub(ours.p99, ours.floor_p99);
            let mut line = format!(
                "N={n}: {name} added p99 {} µs (target < 200: {})",
                fmt(added99, 1),
                pooled_verdict(added99, &ours.round_added_p99),
            );
            if let Some(rtpe) = get("rtpengine") {
                let r = ratio(ours.cpu_us, rtpe.cpu_us);
                let rs = ratio(ours.cpu_sched_us, rtpe.cpu_sched_us);
                let check = match r {
                    Some(v) if v <= CPU_TARGET => "PASS",
                    Some(_) => "FAIL",
                    None => "n/a",
                };
                let added_rtpe = sub(rtpe.p99, rtpe.floor_p99);
                line.push_str(&format!(
                    "; CPU/packet {name}/rtpengine {}× (schedstat {}×) (target ≤ {CPU_TARGET}: {check}); rtpengine added p99 {} µs ({}); memory (PSS) {:.1} vs {:.1} MB = {}×",
                    fmt(r, 2),
                    fmt(rs, 2),
                    fmt(added_rtpe, 1),
                    pooled_verdict(added_rtpe, &rtpe.round_added_p99),
                    ours.mem_kb as f64 / 1024.0,
                    rtpe.mem_kb as f64 / 1024.0,
                    fmt(ratio(Some(ours.mem_kb as f64), Some(rtpe.mem_kb as f64)), 2)
                ));
            }
            println!("{line}");
        }
        if let (Some(ours), Some(base)) = (get("callfabric"), get("baseline")) {
            println!(
                "N={n}: callfabric/baseline CPU/packet {}× (schedstat {}×), added p50 {} vs {} µs, added p99 {} vs {} µs",
                fmt(ratio(ours.cpu_us, base.cpu_us), 2),
                fmt(ratio(ours.cpu_sched_us, base.cpu_sched_us), 2),
                fmt(sub(ours.p50, ours.floor_p50), 1),
                fmt(sub(base.p50, base.floor_p50), 1),
                fmt(sub(ours.p99, ours.floor_p99), 1),
                fmt(sub(base.p99, base.floor_p99), 1),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_negative_added_p99_is_invalid_not_a_pass() {
        assert!(super::verdict(Some(-3.0)).starts_with("INVALID"));
        assert_eq!(super::verdict(Some(0.0)), "PASS");
        assert_eq!(super::verdict(Some(199.0)), "PASS");
        assert_eq!(super::verdict(Some(200.0)), "FAIL");
    }

    #[test]
    fn one_negative_round_makes_the_pooled_figure_invalid() {
        assert!(
            super::pooled_verdict(Some(50.0), &[40.0, -2.0, 90.0]).starts_with("INVALID (1 of 3")
        );
        assert_eq!(
            super::pooled_verdict(Some(50.0), &[40.0, 2.0, 90.0]),
            "PASS"
        );
        assert!(super::pooled_verdict(Some(-1.0), &[]).starts_with("INVALID"));
        assert_eq!(super::pooled_verdict(Some(250.0), &[300.0]), "FAIL");
        // A pooled figure under the target with one round over it (a stall in one round
        // dominating both pooled tails).
        assert!(super::pooled_verdict(Some(32.0), &[82.0, 675.0]).starts_with("FAIL (1 of 2"));
    }
}

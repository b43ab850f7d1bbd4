//! The WAN lab: two sites, each a network namespace created for one lab, joined by a userspace
//! wire with a configurable one-way delay and loss that can be cut (`partition`) and mended
//! (`heal`) at run time.
//!
//! The kernel of the lab machines has no `sch_netem`, so the wire is ours: one TUN device
//! (`wan0`) in each namespace, and a thread of the test process that copies IP packets between
//! them after the delay, dropping a share of them (and all of them while partitioned). Order is
//! kept in each direction (a packet never overtakes the one before it), as on a real path.
//!
//! ```text
//!   site A (netns cfwan-<pid>-<n>-a)          site B (netns cfwan-<pid>-<n>-b)
//!   lo 127.0.0.1, wan0 10.77.0.1/24  <== wire ==>  wan0 10.77.0.2/24, lo 127.0.0.1
//! ```
//!
//! Nothing else is routed: a site reaches the other only through the wire, and the root
//! namespace (the test) reaches neither over the network. Run work inside a site with
//! [`WanLab::command`] (a child process, via `ip netns exec`), [`WanLab::run_in`] (a closure on a
//! thread that entered the namespace: sockets it opens and processes it spawns live there) or
//! [`WanLab::spawn_in`] (a long-lived thread, e.g. a tokio runtime hosting a client).
//!
//! Dropping the lab stops the wire, kills every process left in its namespaces (they were
//! started by this lab's user) and deletes the namespaces, also when a test panics. A lab left
//! behind by a process that was killed outright is deleted by the next lab started on the
//! machine (namespace names carry the owner's PID).
//!
//! Needs root, `ip` (iproute2) and `/dev/net/tun`; [`unavailable`] says why a lab cannot run.

use std::fs::File;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use nix::sched::{setns, CloneFlags};
use rand::Rng as _;

use crate::{require_binary, tail_file, ServerKind, XmppServer};

/// Prefix of every namespace a lab creates.
const NS_PREFIX: &str = "cfwan-";
/// Name of the TUN device in each site.
pub const WAN_DEV: &str = "wan0";
/// Packets queued on the wire per direction beyond which new ones are dropped (and counted).
const QUEUE_LIMIT: usize = 100_000;

/// One of the two sites.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Site {
    A,
    B,
}

impl Site {
    fn index(self) -> usize {
        match self {
            Site::A => 0,
            Site::B => 1,
        }
    }
}

/// The link between the sites.
#[derive(Debug, Clone, Copy)]
pub struct WanSpec {
    /// One-way delay, applied in each direction (RTT = 2 × delay).
    pub delay: Duration,
    /// Uniform ± jitter added to the delay (order is kept regardless).
    pub jitter: Duration,
    /// Probability in [0, 1] that a packet is dropped, in each direction.
    pub loss: f64,
}

impl WanSpec {
    /// `delay_ms` one way, `loss` (e.g. 0.01 for 1 %), no jitter.
    pub fn new(delay_ms: u64, loss: f64) -> WanSpec {
        WanSpec {
            delay: Duration::from_millis(delay_ms),
            jitter: Duration::ZERO,
            loss,
        }
    }
}

/// Counters of the wire, per direction (`[A→B, B→A]`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WireStats {
    /// Packets delivered.
    pub delivered: [u64; 2],
    /// Packets dropped by the configured loss.
    pub lost: [u64; 2],
    /// Packets dropped because the link was partitioned (on entry or on delivery).
    pub cut: [u64; 2],
    /// Packets dropped because the queue was full or the device refused them.
    pub overflow: [u64; 2],
}

/// Counters of one TCP connection across the wire (IPv4), per direction (`[A→B, B→A]`): what a
/// benchmark needs to say how many segments each message cost and which losses could hold a
/// message back (a lost *data* segment is retransmitted, and everything sent after it on the
/// same connection waits for it; a lost pure ACK is not).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpFlowStats {
    /// TCP port of the end in site A.
    pub port_a: u16,
    /// TCP port of the end in site B.
    pub port_b: u16,
    /// Segments with a payload, delivered.
    pub data: [u64; 2],
    /// Segments without a payload (pure ACKs, SYN, FIN), delivered.
    pub pure: [u64; 2],
    /// Segments with a payload dropped by the configured loss.
    pub data_lost: [u64; 2],
    /// Segments without a payload dropped by the configured loss.
    pub pure_lost: [u64; 2],
}

impl TcpFlowStats {
    /// `self - earlier` for every counter (the counters of a time window).
    pub fn since(&self, earlier: &TcpFlowStats) -> TcpFlowStats {
        let d = |a: [u64; 2], b: [u64; 2]| [a[0] - b[0], a[1] - b[1]];
        TcpFlowStats {
            port_a: self.port_a,
            port_b: self.port_b,
            data: d(self.data, earlier.data),
            pure: d(self.pure, earlier.pure),
            data_lost: d(self.data_lost, earlier.data_lost),
            pure_lost: d(self.pure_lost, earlier.pure_lost),
        }
    }
}

/// TCP connections counted per flow at most (more are counted in `WireStats` only).
const FLOW_LIMIT: usize = 4096;

/// `(port in A, port in B, payload bytes)` of an IPv4 TCP packet crossing the wire in `dir`;
/// `None` for anything else or a truncated header.
fn tcp_segment(pkt: &[u8], dir: usize) -> Option<(u16, u16, usize)> {
    if pkt.len() < 20 || pkt[0] >> 4 != 4 || pkt[9] != 6 {
        return None;
    }
    let ihl = usize::from(pkt[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([pkt[2], pkt[3]])).min(pkt.len());
    let tcp = pkt.get(ihl..total)?;
    if tcp.len() < 20 {
        return None;
    }
    let src = u16::from_be_bytes([tcp[0], tcp[1]]);
    let dst = u16::from_be_bytes([tcp[2], tcp[3]]);
    let doff = usize::from(tcp[12] >> 4) * 4;
    let payload = tcp.len().checked_sub(doff)?;
    // dir 0 is A→B: the source is the end in A
    Some(if dir == 0 {
        (src, dst, payload)
    } else {
        (dst, src, payload)
    })
}

#[derive(Default)]
struct WireCtl {
    partitioned: AtomicBool,
    delay_us: AtomicU64,
    jitter_us: AtomicU64,
    /// Loss probability in parts per billion.
    loss_ppb: AtomicU32,
    delivered: [AtomicU64; 2],
    lost: [AtomicU64; 2],
    cut: [AtomicU64; 2],
    overflow: [AtomicU64; 2],
    flows: std::sync::Mutex<std::collections::HashMap<(u16, u16), TcpFlowStats>>,
}

impl WireCtl {
    fn set(&self, spec: &WanSpec) {
        self.delay_us
            .store(spec.delay.as_micros() as u64, Ordering::Relaxed);
        self.jitter_us
            .store(spec.jitter.as_micros() as u64, Ordering::Relaxed);
        let ppb = (spec.loss.clamp(0.0, 1.0) * 1e9).round() as u32;
        self.loss_ppb.store(ppb, Ordering::Relaxed);
    }

    /// Counts a TCP segment that crossed (`lost == false`) or was lost on the wire.
    fn count_flow(&self, pkt: &[u8], dir: usize, lost: bool) {
        let Some((port_a, port_b, payload)) = tcp_segment(pkt, dir) else {
            return;
        };
        let mut flows = self.flows.lock().unwrap_or_else(|p| p.into_inner());
        if flows.len() >= FLOW_LIMIT && !flows.contains_key(&(port_a, port_b)) {
            return;
        }
        let f = flows.entry((port_a, port_b)).or_insert(TcpFlowStats {
            port_a,
            port_b,
            ..TcpFlowStats::default()
        });
        match (payload > 0, lost) {
            (true, false) => f.data[dir] += 1,
            (false, false) => f.pure[dir] += 1,
            (true, true) => f.data_lost[dir] += 1,
            (false, true) => f.pure_lost[dir] += 1,
        }
    }
}

/// Why a WAN lab cannot run on this machine (not root, no `ip`, no TUN, no namespaces), or
/// `None` when it can. Checked once per process.
pub fn unavailable() -> Option<String> {
    static WHY: OnceLock<Option<String>> = OnceLock::new();
    WHY.get_or_init(|| {
        if !nix::unistd::geteuid().is_root() {
            return Some("the WAN lab needs root (network namespaces, TUN devices)".into());
        }
        let Some(ip) = crate::find_binary("ip") else {
            return Some(format!(
                "`ip` (iproute2) not found: {}",
                crate::INSTALL_HINT
            ));
        };
        if !Path::new("/dev/net/tun").exists() {
            return Some("/dev/net/tun does not exist (no TUN support)".into());
        }
        let probe = format!("{NS_PREFIX}{}-probe", std::process::id());
        match run(&ip, &["netns", "add", &probe]) {
            Ok(()) => {
                let _ = run(&ip, &["netns", "del", &probe]);
                None
            }
            Err(e) => Some(format!("cannot create a network namespace: {e:#}")),
        }
    })
    .clone()
}

/// Two namespaces joined by the wire. See the module documentation.
pub struct WanLab {
    ip: PathBuf,
    ns: [String; 2],
    addrs: [Ipv4Addr; 2],
    ctl: Arc<WireCtl>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    wire: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for WanLab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WanLab")
            .field("ns", &self.ns)
            .field("addrs", &self.addrs)
            .finish()
    }
}

impl WanLab {
    /// Creates both namespaces and the wire with `spec`; returns when the wire's devices are up
    /// in both sites.
    pub fn start(spec: WanSpec) -> anyhow::Result<WanLab> {
        if let Some(why) = unavailable() {
            bail!("{why}");
        }
        let ip = require_binary("ip")?;
        sweep_stale(&ip);
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let base = format!(
            "{NS_PREFIX}{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let ctl = Arc::new(WireCtl::default());
        ctl.set(&spec);
        let mut lab = WanLab {
            ip,
            ns: [format!("{base}-a"), format!("{base}-b")],
            addrs: [Ipv4Addr::new(10, 77, 0, 1), Ipv4Addr::new(10, 77, 0, 2)],
            ctl,
            stop: None,
            wire: None,
        };
        // From here on, Drop cleans up whatever was made.
        for ns in &lab.ns {
            run(&lab.ip, &["netns", "add", ns])?;
            run(&lab.ip, &["-n", ns, "link", "set", "lo", "up"])?;
        }
        let files = [lab.ns_file(Site::A)?, lab.ns_file(Site::B)?];
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let ctl = lab.ctl.clone();
        let wire = std::thread::Builder::new()
            .name(format!("wanwire {base}"))
            .spawn(move || wire_thread(files, ctl, ready_tx, stop_rx))
            .context("spawn the wire thread")?;
        lab.stop = Some(stop_tx);
        lab.wire = Some(wire);
        match ready_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!("the wire could not open its TUN devices: {e}"),
            Err(_) => bail!("the wire thread did not start"),
        }
        for site in [Site::A, Site::B] {
            let ns = lab.ns[site.index()].clone();
            let addr = format!("{}/24", lab.addrs[site.index()]);
            run(&lab.ip, &["-n", &ns, "addr", "add", &addr, "dev", WAN_DEV])?;
            run(&lab.ip, &["-n", &ns, "link", "set", WAN_DEV, "up"])?;
        }
        Ok(lab)
    }

    /// The namespace name of `site` (for `ip -n …`, `ip netns exec …`).
    pub fn netns(&self, site: Site) -> &str {
        &self.ns[site.index()]
    }

    /// The address of `site` on the wire (10.77.0.1 for A, 10.77.0.2 for B).
    pub fn addr(&self, site: Site) -> Ipv4Addr {
        self.addrs[site.index()]
    }

    /// `addr(site):port`.
    pub fn socket_addr(&self, site: Site, port: u16) -> SocketAddr {
        SocketAddr::from((self.addr(site), port))
    }

    /// Cuts the link: from now on every packet in either direction is dropped, including those
    /// already on the wire.
    pub fn partition(&self) {
        self.ctl.partitioned.store(true, Ordering::SeqCst);
    }

    /// Mends the link.
    pub fn heal(&self) {
        self.ctl.partitioned.store(false, Ordering::SeqCst);
    }

    /// Is the link cut?
    pub fn is_partitioned(&self) -> bool {
        self.ctl.partitioned.load(Ordering::SeqCst)
    }

    /// Changes delay, jitter and loss at run time (packets already on the wire keep theirs).
    pub fn set_link(&self, spec: WanSpec) {
        self.ctl.set(&spec);
    }

    /// The wire's counters.
    pub fn stats(&self) -> WireStats {
        let read =
            |a: &[AtomicU64; 2]| [a[0].load(Ordering::Relaxed), a[1].load(Ordering::Relaxed)];
        WireStats {
            delivered: read(&self.ctl.delivered),
            lost: read(&self.ctl.lost),
            cut: read(&self.ctl.cut),
            overflow: read(&self.ctl.overflow),
        }
    }

    /// The counters of every TCP connection seen on the wire, by port (at most 4,096
    /// connections are told apart).
    pub fn tcp_flows(&self) -> Vec<TcpFlowStats> {
        let flows = self.ctl.flows.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<TcpFlowStats> = flows.values().copied().collect();
        v.sort_by_key(|f| (f.port_a, f.port_b));
        v
    }

    /// The counters of the TCP connection between `port_a` (in A) and `port_b` (in B), zero
    /// if none crossed.
    pub fn tcp_flow(&self, port_a: u16, port_b: u16) -> TcpFlowStats {
        let flows = self.ctl.flows.lock().unwrap_or_else(|p| p.into_inner());
        flows
            .get(&(port_a, port_b))
            .copied()
            .unwrap_or(TcpFlowStats {
                port_a,
                port_b,
                ..TcpFlowStats::default()
            })
    }

    /// `ip netns exec <ns of site> program`: configure args, stdio and spawn it as usual. The
    /// child's PID is the program's (`ip` execs it).
    pub fn command(&self, site: Site, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(&self.ip);
        cmd.args(["netns", "exec", self.netns(site)]).arg(program);
        cmd
    }

    /// Runs `f` on a new thread that entered `site`'s namespace, and returns its result. Sockets
    /// opened and processes spawned by `f` (and threads it starts) live in that namespace.
    pub fn run_in<T: Send>(&self, site: Site, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        let file = self.ns_file(site)?;
        std::thread::scope(|scope| {
            scope
                .spawn(move || -> anyhow::Result<T> {
                    setns(&file, CloneFlags::CLONE_NEWNET).context("setns")?;
                    Ok(f())
                })
                .join()
                .map_err(|_| anyhow!("the thread in {site:?} panicked"))?
        })
    }

    /// Spawns a long-lived thread in `site`'s namespace (e.g. one driving a tokio runtime).
    pub fn spawn_in<T: Send + 'static>(
        &self,
        site: Site,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<std::thread::JoinHandle<anyhow::Result<T>>> {
        let file = self.ns_file(site)?;
        std::thread::Builder::new()
            .name(self.netns(site).to_string())
            .spawn(move || {
                setns(&file, CloneFlags::CLONE_NEWNET).context("setns")?;
                Ok(f())
            })
            .context("spawn a thread")
    }

    /// Starts a private XMPP server inside `site`, listening on all of the site's addresses
    /// (loopback and the wire). Its `c2s_addr()` (127.0.0.1) is valid inside that site only;
    /// members elsewhere use `socket_addr(site, server.c2s_addr().port())`. Call `start_again`
    /// and `ejabberdctl` through [`WanLab::run_in`] on the same site.
    pub fn xmpp_server(
        &self,
        site: Site,
        kind: ServerKind,
        users: &[&str],
        password: &str,
    ) -> anyhow::Result<XmppServer> {
        self.run_in(site, || {
            XmppServer::start_with(
                kind,
                users,
                password,
                crate::xmpp_server::StartOptions {
                    all_interfaces: true,
                },
            )
        })?
    }

    /// Starts `program args` in `site` with piped stdin and stdout (read line by line) and
    /// stderr to a file; see [`SiteProcess`].
    pub fn spawn(
        &self,
        site: Site,
        name: &str,
        program: impl AsRef<std::ffi::OsStr>,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<SiteProcess> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("callfabric-{name}-"))
            .tempdir()
            .context("temporary directory")?;
        let stderr_path = dir.path().join("stderr.log");
        let stderr = File::create(&stderr_path)?;
        let mut cmd = self.command(site, program);
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawn {name} in {site:?}"))?;
        let stdout = child.stdout.take().context("piped stdout")?;
        let stdin = child.stdin.take();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        Ok(SiteProcess {
            name: name.to_owned(),
            child,
            stdin,
            lines,
            history: Vec::new(),
            stderr: stderr_path,
            dir,
        })
    }

    fn ns_file(&self, site: Site) -> anyhow::Result<File> {
        let path = Path::new("/run/netns").join(self.netns(site));
        File::open(&path).with_context(|| format!("open {}", path.display()))
    }
}

impl Drop for WanLab {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(wire) = self.wire.take() {
            let _ = wire.join();
        }
        for ns in &self.ns {
            kill_pids_in(&self.ip, ns);
            let _ = run(&self.ip, &["netns", "del", ns]);
        }
    }
}

/// A process started in a site by [`WanLab::spawn`]: write lines to its stdin, wait for lines
/// on its stdout (each with the time it was read). Killed on drop.
pub struct SiteProcess {
    /// Name used in messages.
    pub name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<(Instant, String)>,
    /// Every stdout line read so far, with the time it was read.
    pub history: Vec<(Instant, String)>,
    stderr: PathBuf,
    dir: tempfile::TempDir,
}

impl SiteProcess {
    /// A private directory that lives as long as the process (for its config, data).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// PID of the program.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Writes `line` and a newline to its stdin.
    pub fn send(&mut self, line: &str) -> anyhow::Result<()> {
        let stdin = self.stdin.as_mut().context("stdin closed")?;
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .with_context(|| format!("write to {}", self.name))
    }

    /// A mark in the history, for [`SiteProcess::wait_since`].
    pub fn mark(&mut self) -> usize {
        self.drain();
        self.history.len()
    }

    /// Reads lines already printed, without waiting.
    pub fn drain(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.history.push(line);
        }
    }

    /// Waits for the first line since history index `mark` (already read or not) that satisfies
    /// `pred`; returns it with the time it was read. Errors (with the output) on timeout or exit.
    pub fn wait_since(
        &mut self,
        mark: usize,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> anyhow::Result<(Instant, String)> {
        self.drain();
        if let Some(hit) = self.history.iter().skip(mark).find(|(_, l)| pred(l.trim())) {
            return Ok(hit.clone());
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((at, line)) => {
                    self.history.push((at, line.clone()));
                    if pred(line.trim()) {
                        return Ok((at, line.trim().to_owned()));
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    bail!(
                        "{}: timed out after {timeout:?} waiting for {what}\n{}",
                        self.name,
                        self.diag()
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.try_wait();
                    bail!(
                        "{}: stdout closed ({status:?}) while waiting for {what}\n{}",
                        self.name,
                        self.diag()
                    )
                }
            }
        }
    }

    /// Waits for a line equal to `want` printed from now on.
    pub fn wait_line(&mut self, want: &str, timeout: Duration) -> anyhow::Result<Instant> {
        let mark = self.mark();
        self.wait_since(mark, timeout, &format!("`{want}`"), |l| l == want)
            .map(|(at, _)| at)
    }

    /// Lines since `mark` (trimmed).
    pub fn lines_since(&mut self, mark: usize) -> Vec<String> {
        self.drain();
        self.history
            .iter()
            .skip(mark)
            .map(|(_, l)| l.trim().to_owned())
            .collect()
    }

    /// Is it still running?
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Stdout history and stderr tail, for failure messages.
    pub fn diag(&self) -> String {
        let out: Vec<&str> = self.history.iter().map(|(_, l)| l.as_str()).collect();
        let out = &out[out.len().saturating_sub(80)..];
        format!(
            "--- {} stdout (last {}) ---\n{}\n--- {} stderr (tail) ---\n{}",
            self.name,
            out.len(),
            out.join("\n"),
            self.name,
            tail_file(&self.stderr, 40)
        )
    }

    /// Kills it (SIGKILL) and reaps it (also done on drop).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for SiteProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `ip args…`; an error carries its stderr.
fn run(ip: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(ip)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {}", ip.display()))?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// SIGKILLs every process whose network namespace is `ns` (never this process).
fn kill_pids_in(ip: &Path, ns: &str) {
    let Ok(out) = Command::new(ip)
        .args(["netns", "pids", ns])
        .stdin(Stdio::null())
        .output()
    else {
        return;
    };
    let me = std::process::id() as i32;
    for pid in String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
        .filter(|p| *p != me && *p > 1)
    {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Deletes the namespaces of labs whose owner process no longer exists.
fn sweep_stale(ip: &Path) {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(NS_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid.to_string()).exists() {
            let _ = run(ip, &["netns", "del", &name]);
        }
    }
}

/// The wire: opens `wan0` in each namespace, then copies packets both ways until stopped.
fn wire_thread(
    files: [File; 2],
    ctl: Arc<WireCtl>,
    ready: mpsc::Sender<Result<(), String>>,
    stop: tokio::sync::oneshot::Receiver<()>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(format!("tokio runtime: {e}")));
            return;
        }
    };
    rt.block_on(async move {
        let mut devs = Vec::new();
        for file in &files {
            let dev = setns(file, CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("setns: {e}"))
                .and_then(|()| {
                    let mut cfg = tun::Configuration::default();
                    cfg.tun_name(WAN_DEV).layer(tun::Layer::L3).mtu(1500);
                    tun::create_as_async(&cfg).map_err(|e| format!("TUN {WAN_DEV}: {e}"))
                });
            match dev {
                Ok(d) => devs.push(d),
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return;
                }
            }
        }
        let _ = ready.send(Ok(()));
        let (a, b) = (&devs[0], &devs[1]);
        tokio::select! {
            _ = stop => {}
            _ = pump(a, b, &ctl, 0) => {}
            _ = pump(b, a, &ctl, 1) => {}
        }
    });
}

/// One direction: read from `src`, drop by loss or partition, deliver to `dst` after the delay,
/// in order.
async fn pump(src: &tun::AsyncDevice, dst: &tun::AsyncDevice, ctl: &WireCtl, dir: usize) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(tokio::time::Instant, Vec<u8>)>(QUEUE_LIMIT);
    let reader = async {
        let mut buf = vec![0u8; 65_536];
        let mut rng = rand::rng();
        let mut last_due = tokio::time::Instant::now();
        loop {
            let n = match src.recv(&mut buf).await {
                Ok(n) => n,
                Err(_) => {
                    // the device went away (lab shutting down) or a transient error
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            if ctl.partitioned.load(Ordering::SeqCst) {
                ctl.cut[dir].fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let loss = ctl.loss_ppb.load(Ordering::Relaxed);
            if loss > 0 && rng.random_range(0..1_000_000_000u32) < loss {
                ctl.lost[dir].fetch_add(1, Ordering::Relaxed);
                ctl.count_flow(&buf[..n], dir, true);
                continue;
            }
            let delay = ctl.delay_us.load(Ordering::Relaxed) as i64;
            let jitter = ctl.jitter_us.load(Ordering::Relaxed) as i64;
            let jittered = if jitter > 0 {
                (delay + rng.random_range(-jitter..=jitter)).max(0)
            } else {
                delay
            };
            let due = (tokio::time::Instant::now() + Duration::from_micros(jittered as u64))
                .max(last_due);
            last_due = due;
            if tx.try_send((due, buf[..n].to_vec())).is_err() {
                ctl.overflow[dir].fetch_add(1, Ordering::Relaxed);
            }
        }
    };
    let writer = async {
        while let Some((due, pkt)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if ctl.partitioned.load(Ordering::SeqCst) {
                ctl.cut[dir].fetch_add(1, Ordering::Relaxed);
                continue;
            }
            match dst.send(&pkt).await {
                Ok(_) => {
                    ctl.delivered[dir].fetch_add(1, Ordering::Relaxed);
                    ctl.count_flow(&pkt, dir, false);
                }
                Err(_) => {
                    ctl.overflow[dir].fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4/TCP packet from `src` to `dst` port with `payload` bytes (checksums left zero).
    fn packet(src: u16, dst: u16, payload: usize) -> Vec<u8> {
        let total = 20 + 32 + payload;
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[9] = 6;
        p[20..22].copy_from_slice(&src.to_be_bytes());
        p[22..24].copy_from_slice(&dst.to_be_bytes());
        p[32] = 8 << 4; // 32-byte TCP header (timestamps)
        p
    }

    #[test]
    fn tcp_segments_are_keyed_by_the_ports_in_each_site() {
        assert_eq!(
            tcp_segment(&packet(5222, 40000, 0), 0),
            Some((5222, 40000, 0))
        );
        assert_eq!(
            tcp_segment(&packet(40000, 5222, 137), 1),
            Some((5222, 40000, 137))
        );
        // UDP, IPv6 and truncated packets are not TCP segments
        let mut udp = packet(1, 2, 10);
        udp[9] = 17;
        assert_eq!(tcp_segment(&udp, 0), None);
        let mut v6 = packet(1, 2, 10);
        v6[0] = 0x60;
        assert_eq!(tcp_segment(&v6, 0), None);
        assert_eq!(tcp_segment(&packet(1, 2, 10)[..30], 0), None);
    }

    #[test]
    fn flow_counters_split_data_from_pure_acks_and_losses() {
        let ctl = WireCtl::default();
        ctl.count_flow(&packet(40000, 5222, 100), 1, false);
        ctl.count_flow(&packet(40000, 5222, 100), 1, true);
        ctl.count_flow(&packet(5222, 40000, 0), 0, false);
        ctl.count_flow(&packet(5222, 40000, 0), 0, true);
        let flows = ctl.flows.lock().unwrap();
        let f = flows[&(5222, 40000)];
        assert_eq!(f.data, [0, 1]);
        assert_eq!(f.data_lost, [0, 1]);
        assert_eq!(f.pure, [1, 0]);
        assert_eq!(f.pure_lost, [1, 0]);
        assert_eq!(f.since(&f).data, [0, 0]);
    }
}

//! The relay: [`MediaRelay`] hands out [`Leg`]s; [`bridge`] connects two of them.
//!
//! ## Per-packet path
//!
//! A relay with threads of its own ([`MediaRelay::with_threads`], what the gateway and the
//! ACD run) reads every leg placed on a thread in that thread's one event loop
//! (`event_loop.rs`: one level-triggered epoll instance over all their sockets, one datagram
//! read per ready socket and turn, so no read ends in `EAGAIN`; issue 16). A relay on the caller's runtime ([`MediaRelay::new`]) gives each leg a
//! tokio task instead. Either way a leg's private state is its `Task`: the RTP and RTCP
//! [`Latch`]es and the [`RtpStats`]. A packet received on leg A is parsed in place, latched,
//! counted (atomics only) and, when A is bridged to B, sent out of B's socket to B's
//! destination at once, wherever B runs (a stream's legs share a thread: `leg_pair`,
//! `leg_beside`). Receive buffers are allocated once (per thread, or per task); nothing is
//! allocated and no lock is taken per packet in the steady state:
//!
//! * sockets are registered for reading only and sends never wait (a full
//!   send buffer drops the packet): registered for writing too, each packet sent came back as
//!   a write-space event when the kernel freed it (1.8 epoll events per relayed packet
//!   instead of 1.0, issue 16);
//! * configuration shared with the handles (the SDP address, the bridge peer, the peer's
//!   destination) sits behind mutexes, each paired with a generation counter; the task keeps
//!   a copy and only locks when the counter moved (a `set_remote`, `bridge`, a re-latch);
//! * the bridge peer is held as a [`Weak`] (one atomic upgrade per packet), so a dropped leg
//!   frees its sockets and ports at once even while its peer is idle, and two bridged legs
//!   never keep each other alive;
//! * statistics are published to atomics after each packet, so [`Leg::stats`] is a read;
//! * recorders ([`Leg::subscribe`]) cost one atomic load per packet when there are none; with
//!   subscribers each gets a copy (`Vec<u8>`) through a bounded channel, dropped and counted
//!   when the subscriber is behind (the relay never waits for a recorder).
//!
//! Handle operations (`set_remote`, `bridge`, `subscribe`, `close`) take effect for every
//! packet received after they return.
//!
//! ## What is relayed
//!
//! RTP (version 2, parsed with `rtp-rs`) from the RTP port and RTCP (version 2, packet type
//! 192–223) from the RTCP port, unchanged; RTCP multiplexed on the RTP port (RFC 5761, the
//! same packet-type test) is relayed on the RTP path. Anything else is dropped and counted as
//! invalid. The relay neither rewrites nor generates RTCP.
//!
//! ## Lifetime
//!
//! A leg closes when [`Leg::close`] is called (it stops relaying and injecting at once) or
//! when its last handle is dropped. Its port pair goes back to the range when the last handle
//! is dropped and its task or thread has let it go (the sockets are closed before the pair is
//! released).

use std::borrow::Cow;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use rtp_rs::RtpReader;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::sync::watch;

mod event_loop;

use super::latch::{Latch, LatchVerdict, DEFAULT_RELATCH_SILENCE};
use super::ports::PortAllocator;
use super::srtp::{SdesKey, SrtpSender};
use super::stats::{RtpStats, DEFAULT_CLOCK_RATE};
use super::MediaError;

/// The largest datagram relayed; larger ones are dropped and counted as invalid.
pub const MAX_PACKET_SIZE: usize = 2048;

/// Packets buffered per [`Leg::subscribe`] receiver before packets are dropped for it.
pub const SUBSCRIBER_CAPACITY: usize = 256;

/// Configuration of a [`MediaRelay`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayConfig {
    /// The local address the legs' sockets bind to.
    pub bind_ip: IpAddr,
    /// The address put in SDP ([`Leg::local_rtp`]); differs from `bind_ip` behind 1:1 NAT.
    pub advertised_ip: IpAddr,
    /// Lowest port of the RTP/RTCP range.
    pub port_min: u16,
    /// Highest port of the range.
    pub port_max: u16,
    /// Latch only onto sources with the SDP address's IP (see [`super::latch`]).
    pub strict_latching: bool,
    /// How long the latched source must be silent before another source may re-latch.
    pub relatch_silence: Duration,
    /// Relay threads' scheduling (see [`RelayScheduling`]); the default: the system's.
    pub scheduling: RelayScheduling,
}

/// How the relay threads are scheduled (issue 16). The default leaves them to the kernel's
/// ordinary scheduler, with up to one wake-up per packet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayScheduling {
    /// `SCHED_FIFO` at this priority (1 to 99): a relay thread runs as soon as a packet
    /// arrives, before any ordinary thread on its core (signalling included). Needs
    /// `CAP_SYS_NICE` or an `RLIMIT_RTPRIO` of at least this; refused otherwise.
    pub realtime_priority: Option<u8>,
    /// Real-time threads only: under load, one turn of the loop at most every `coalesce`: a
    /// thread whose previous turn was less than twice this ago sleeps until this after it,
    /// then takes everything ready, so dense traffic costs one wake-up per turn, not per
    /// packet, and a packet waits at most this much more. Zero: never. Ignored at the
    /// ordinary priority (also when the real-time priority is refused): a sleeping ordinary
    /// thread gives its core away and on a busy host gets it back milliseconds later.
    pub coalesce: Duration,
}

impl RelayConfig {
    /// A configuration with non-strict latching and the default re-latch silence (2 s).
    pub fn new(bind_ip: IpAddr, advertised_ip: IpAddr, port_min: u16, port_max: u16) -> Self {
        RelayConfig {
            bind_ip,
            advertised_ip,
            port_min,
            port_max,
            strict_latching: false,
            relatch_silence: DEFAULT_RELATCH_SILENCE,
            scheduling: RelayScheduling::default(),
        }
    }
}

/// Statistics of one leg, as seen at the time of [`Leg::stats`].
#[derive(Debug, Clone, PartialEq)]
pub struct LegStats {
    /// Valid RTP packets accepted on this leg (relayed or not).
    pub rtp_packets_in: u64,
    /// Their bytes (whole datagrams).
    pub rtp_bytes_in: u64,
    /// RTP packets sent out of this leg (relayed from the peer, or injected).
    pub rtp_packets_out: u64,
    /// Their bytes.
    pub rtp_bytes_out: u64,
    /// RTCP packets accepted (on the RTCP port, or multiplexed on the RTP port).
    pub rtcp_packets_in: u64,
    /// Their bytes.
    pub rtcp_bytes_in: u64,
    /// RTCP packets sent out of this leg.
    pub rtcp_packets_out: u64,
    /// Their bytes.
    pub rtcp_bytes_out: u64,
    /// Datagrams dropped for not being RTP (or RTCP on the RTCP port), or too large.
    pub invalid_packets: u64,
    /// Packets dropped because they came from a source other than the latched one while it was
    /// active (or, with strict latching, from another IP than SDP's).
    pub rejected_packets: u64,
    /// Copies not delivered to a subscriber that was behind.
    pub subscriber_drops: u64,
    /// RFC 3550 A.3 packets expected (from sequence numbers, with wrap).
    pub expected: u64,
    /// RFC 3550 A.3 cumulative packets lost (negative with duplicates).
    pub lost: i64,
    /// RFC 3550 A.8 interarrival jitter, in timestamp units.
    pub jitter: f64,
    /// The same jitter in milliseconds.
    pub jitter_ms: f64,
    /// The clock rate the jitter is computed with ([`Leg::set_clock_rate`]).
    pub clock_rate: u32,
    /// When the last accepted RTP packet arrived.
    pub last_packet_at: Option<Instant>,
    /// The latched RTP source.
    pub latched_source: Option<SocketAddr>,
    /// The latched RTCP source.
    pub latched_rtcp_source: Option<SocketAddr>,
    /// RTP payload types seen, ascending.
    pub payload_types_seen: Vec<u8>,
}

/// The most relay threads a relay runs ([`MediaRelay::with_threads`] caps its argument).
pub const MAX_RELAY_THREADS: usize = 256;

/// One relay thread per core: [`std::thread::available_parallelism`], 1 if unknown (the
/// default the binary applies to `rtp_threads`).
pub fn relay_threads_per_core() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(MAX_RELAY_THREADS)
}

/// The RTP relay: hands out legs from a port range. Cheap to clone.
#[derive(Debug, Clone)]
pub struct MediaRelay {
    inner: Arc<RelayInner>,
}

#[derive(Debug)]
struct RelayInner {
    /// Process-unique, so a leg of another relay is never placed by its thread index here.
    id: u64,
    config: RelayConfig,
    /// The port range and, under the same lock, the choice of a thread for a new leg (so two
    /// legs opened at once see each other's count).
    ports: Arc<Mutex<PortAllocator>>,
    next_id: AtomicU64,
    /// The relay's own threads, each with its event loop, and the legs open on each
    /// ([`MediaRelay::with_threads`]); empty: the caller's runtime.
    threads: Vec<RelayThread>,
}

#[derive(Debug)]
struct RelayThread {
    ctl: Arc<event_loop::LoopCtl>,
    legs: Arc<AtomicUsize>,
    state: Arc<event_loop::ThreadState>,
}

/// How a relay's own threads run ([`MediaRelay::threads_report`]), for the operator.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayThreadsReport {
    /// Threads running `SCHED_FIFO` ([`RelayScheduling::realtime_priority`] granted).
    pub realtime: usize,
    /// Threads at the ordinary priority (none asked for, or refused).
    pub ordinary: usize,
    /// Times a real-time thread reached its busy cap and slept (a flood, or more streams than
    /// the core relays), since start.
    pub duty_sleeps: u64,
}

/// One open leg counted on its thread, until dropped (when the leg's task ends, or when the
/// leg could not be opened after all).
#[derive(Debug)]
struct ThreadSlot(Arc<AtomicUsize>);

impl ThreadSlot {
    fn take(legs: &Arc<AtomicUsize>) -> ThreadSlot {
        legs.fetch_add(1, Ordering::Relaxed);
        ThreadSlot(legs.clone())
    }
}

impl Drop for ThreadSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The thread for a new leg: `beside`'s (a leg of this relay on thread `beside`), else the
/// one with the fewest open legs (the first of them on a tie). `None` without threads.
fn pick_thread(loads: &[usize], beside: Option<usize>) -> Option<usize> {
    beside.filter(|&i| i < loads.len()).or_else(|| {
        loads
            .iter()
            .enumerate()
            .min_by_key(|&(_, n)| *n)
            .map(|(i, _)| i)
    })
}

static NEXT_RELAY_ID: AtomicU64 = AtomicU64::new(1);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a few plain assignments: a panic cannot leave them half done.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl MediaRelay {
    /// A relay for `config` whose legs run on the caller's runtime; errors when the port range
    /// holds no pair.
    pub fn new(config: RelayConfig) -> Result<Self, MediaError> {
        Self::build(config, Vec::new())
    }

    fn build(config: RelayConfig, threads: Vec<RelayThread>) -> Result<Self, MediaError> {
        let ports = PortAllocator::new(config.port_min, config.port_max)?;
        Ok(MediaRelay {
            inner: Arc::new(RelayInner {
                id: NEXT_RELAY_ID.fetch_add(1, Ordering::Relaxed),
                config,
                ports: Arc::new(Mutex::new(ports)),
                next_id: AtomicU64::new(1),
                threads,
            }),
        })
    }

    /// [`MediaRelay::with_threads`] with one thread per core ([`relay_threads_per_core`];
    /// issue 16: one thread saturated at 1,000 streams).
    pub fn per_core(config: RelayConfig) -> Result<Self, MediaError> {
        Self::with_threads(config, relay_threads_per_core())
    }

    /// A relay whose legs run on `threads` dedicated threads (1 to [`MAX_RELAY_THREADS`];
    /// outside that, the nearest bound), each running one event loop over the sockets of all
    /// the legs placed on it, instead of a task per leg on the caller's runtime: every packet
    /// is handled where it is received, without waking another thread. A new leg goes to the thread with the fewest
    /// open legs, so streams spread over the threads; [`MediaRelay::leg_pair`] and
    /// [`MediaRelay::leg_beside`] put the legs of one stream on one thread, so a bridge's
    /// packets never cross cores (its legs touch each other's sockets and counters on every
    /// packet). Legs on different threads still bridge (a leg forwards by sending on its
    /// peer's socket, which needs no hand-over). A thread ends when the relay and every leg
    /// placed on it are dropped.
    pub fn with_threads(config: RelayConfig, threads: usize) -> Result<Self, MediaError> {
        // The port range first: a bad one must not leave threads behind.
        PortAllocator::new(config.port_min, config.port_max)?;
        let mut all = Vec::new();
        for i in 0..threads.clamp(1, MAX_RELAY_THREADS) {
            let state = Arc::new(event_loop::ThreadState::default());
            all.push(RelayThread {
                ctl: Arc::new(event_loop::spawn(
                    format!("rtp-relay-{i}"),
                    config.scheduling,
                    state.clone(),
                )?),
                legs: Arc::new(AtomicUsize::new(0)),
                state,
            });
        }
        Self::build(config, all)
    }

    /// How the relay's own threads run: real-time or not, and how often a real-time one hit
    /// its busy cap (all zero without own threads).
    pub fn threads_report(&self) -> RelayThreadsReport {
        let mut r = RelayThreadsReport::default();
        for t in &self.inner.threads {
            if t.state.realtime.load(Ordering::Relaxed) {
                r.realtime += 1;
            } else {
                r.ordinary += 1;
            }
            r.duty_sleeps += t.state.duty_sleeps.load(Ordering::Relaxed);
        }
        r
    }

    /// Open legs on each of the relay's own threads (empty without own threads).
    pub fn legs_per_thread(&self) -> Vec<usize> {
        self.inner
            .threads
            .iter()
            .map(|t| t.legs.load(Ordering::Relaxed))
            .collect()
    }

    /// A relay whose legs all run on one dedicated thread ([`MediaRelay::with_threads`] with
    /// one), instead of the caller's runtime. Every packet is then handled where it is
    /// received, without waking another worker thread (on the caller's multi-thread runtime
    /// about half the relay's CPU went to cross-worker wake-ups, measured with `perf`); the
    /// signalling keeps the other cores.
    pub fn with_own_thread(config: RelayConfig) -> Result<Self, MediaError> {
        Self::with_threads(config, 1)
    }

    /// The configuration.
    pub fn config(&self) -> &RelayConfig {
        &self.inner.config
    }

    /// Port pairs held by open legs.
    pub fn ports_in_use(&self) -> usize {
        lock(&self.inner.ports).in_use()
    }

    /// Opens a leg: binds an RTP/RTCP socket pair from the range (skipping pairs another
    /// process holds) and starts its task.
    ///
    /// Errors with [`MediaError::PortsExhausted`] when no pair can be bound.
    pub async fn leg(&self) -> Result<Leg, MediaError> {
        self.leg_now()
    }

    /// [`MediaRelay::leg`] for synchronous callers (binding does not wait); it must run where
    /// a tokio runtime is current or the relay has its own threads, else it fails with
    /// [`MediaError::NoRuntime`]. On the least loaded of the relay's threads.
    pub fn leg_now(&self) -> Result<Leg, MediaError> {
        self.open(None)
    }

    /// A leg on the same thread as `other` (the other leg of the stream it will be bridged
    /// with), so the bridge's packets stay on one core; as [`MediaRelay::leg_now`] when
    /// `other` is not a leg of this relay or the relay has no threads of its own.
    pub fn leg_beside(&self, other: &Leg) -> Result<Leg, MediaError> {
        self.open(Some(other))
    }

    /// The two legs of one stream (a call's caller and callee sides), on one thread: the
    /// least loaded one.
    pub fn leg_pair(&self) -> Result<(Leg, Leg), MediaError> {
        let a = self.open(None)?;
        let b = self.open(Some(&a))?;
        Ok((a, b))
    }

    /// The relay thread `leg` runs on (an index below [`MediaRelay::legs_per_thread`]'s
    /// length); `None` for a leg on the caller's runtime or of another relay.
    pub fn thread_of(&self, leg: &Leg) -> Option<usize> {
        let s = leg.shared();
        s.thread.filter(|_| s.relay == self.inner.id)
    }

    fn open(&self, beside: Option<&Leg>) -> Result<Leg, MediaError> {
        let cfg = &self.inner.config;
        let ip = cfg.bind_ip;
        let beside = beside.and_then(|l| self.thread_of(l));
        let runtime = match self.inner.threads.is_empty() {
            true => Some(tokio::runtime::Handle::try_current().map_err(|_| MediaError::NoRuntime)?),
            false => None,
        };
        // Sockets drop before the lease (declared after it), so the ports are closed before the
        // pair is released on any error below.
        let (thread, slot, lease, rtp, rtcp) = {
            let mut ports = lock(&self.inner.ports);
            // Chosen and counted under the lock: legs opened at once spread too.
            let loads = self.legs_per_thread();
            let thread = pick_thread(&loads, beside);
            let slot = thread.map(|i| ThreadSlot::take(&self.inner.threads[i].legs));
            let (port, (rtp, rtcp)) = ports.allocate(|p| bind_pair(ip, p))?;
            let lease = PortLease {
                ports: self.inner.ports.clone(),
                port,
            };
            (thread, slot, lease, rtp, rtcp)
        };
        let port = lease.port;
        let sockets = match (thread, &runtime) {
            (Some(_), _) => Sockets {
                rtp: Sock::Loop(rtp),
                rtcp: Sock::Loop(rtcp),
                _lease: lease,
            },
            (None, Some(current)) => {
                let _entered = current.enter();
                Sockets {
                    rtp: Sock::Task(readable_only(rtp)?),
                    rtcp: Sock::Task(readable_only(rtcp)?),
                    _lease: lease,
                }
            }
            (None, None) => return Err(MediaError::NoRuntime),
        };
        let shared = Arc::new(LegShared {
            id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            relay: self.inner.id,
            thread,
            local_rtp: SocketAddr::new(cfg.advertised_ip, port),
            local_rtcp: SocketAddr::new(cfg.advertised_ip, port.saturating_add(1)),
            sockets,
            strict: cfg.strict_latching,
            silence: cfg.relatch_silence,
            epoch: Instant::now(),
            remote: Mutex::new(Remote::default()),
            sdp_gen: AtomicU64::new(0),
            dest_gen: AtomicU64::new(0),
            peer: Mutex::new(Weak::new()),
            peer_gen: AtomicU64::new(0),
            subscribers: Mutex::new(Vec::new()),
            has_subscribers: AtomicBool::new(false),
            clock_rate: AtomicU32::new(DEFAULT_CLOCK_RATE),
            closed: AtomicBool::new(false),
            c: Counters::default(),
            srtp: Mutex::new(None),
            last_ssrc: AtomicU64::new(0),
        });
        let close = match (thread, runtime) {
            (Some(i), _) => {
                // Registered here, so a failure is this call's error; then the thread's.
                let ctl = &self.inner.threads[i].ctl;
                ctl.register(&shared)?;
                ctl.send(event_loop::Cmd::Add(shared.clone(), slot))
                    .map_err(|_| io::Error::other("the relay thread has ended"))?;
                Closer::Loop(ctl.clone())
            }
            (None, Some(runtime)) => {
                let (close_tx, close_rx) = watch::channel(false);
                let task = run(shared.clone(), close_rx);
                runtime.spawn(async move {
                    task.await;
                    // The leg no longer counts on its thread once its task has ended.
                    drop(slot);
                });
                Closer::Task(close_tx)
            }
            (None, None) => return Err(MediaError::NoRuntime),
        };
        tracing::debug!(leg = shared.id, port, ?thread, "media leg opened");
        Ok(Leg {
            inner: Arc::new(LegHandle { shared, close }),
        })
    }
}

/// Binds RTP on `port` and RTCP on `port + 1` (`port` is even, so this cannot overflow).
fn bind_pair(ip: IpAddr, port: u16) -> io::Result<(std::net::UdpSocket, std::net::UdpSocket)> {
    let rtcp_port = port
        .checked_add(1)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no RTCP port"))?;
    let rtp = std::net::UdpSocket::bind(SocketAddr::new(ip, port))?;
    let rtcp = std::net::UdpSocket::bind(SocketAddr::new(ip, rtcp_port))?;
    rtp.set_nonblocking(true)?;
    rtcp.set_nonblocking(true)?;
    Ok((rtp, rtcp))
}

/// Gives the pair back to the allocator when dropped.
#[derive(Debug)]
struct PortLease {
    ports: Arc<Mutex<PortAllocator>>,
    port: u16,
}

impl Drop for PortLease {
    fn drop(&mut self) {
        lock(&self.ports).release(self.port);
    }
}

/// A leg's sockets; fields drop in order, so the ports are closed before the pair is released.
///
/// Non-blocking, registered with the reactor (or the relay thread's poll) for reading only:
/// sends are made at once and a full send buffer drops the packet. Registered for writing too
/// (as `tokio::net::UdpSocket` is), every packet sent would come back as a write-space
/// (EPOLLOUT) event when the kernel frees it, one more epoll event and wake-up per relayed
/// packet.
#[derive(Debug)]
struct Sockets {
    rtp: Sock,
    rtcp: Sock,
    _lease: PortLease,
}

/// A leg socket: read by the leg's task on the caller's runtime, or by a relay thread's loop.
#[derive(Debug)]
enum Sock {
    Task(AsyncFd<std::net::UdpSocket>),
    Loop(std::net::UdpSocket),
}

impl Sock {
    fn get(&self) -> &std::net::UdpSocket {
        match self {
            Sock::Task(fd) => fd.get_ref(),
            Sock::Loop(s) => s,
        }
    }
}

/// `socket` registered with the current runtime's reactor for reading only.
// `with_interest` is deprecated because a `T` whose `as_raw_fd` changes, or that closes its
// descriptor while registered, breaks I/O safety; a `std::net::UdpSocket` owns its descriptor
// and never changes it, which is what the replacement (`register_with_interest`) makes its
// caller promise with `unsafe`, which this workspace forbids.
#[allow(deprecated)]
fn readable_only(socket: std::net::UdpSocket) -> io::Result<AsyncFd<std::net::UdpSocket>> {
    AsyncFd::with_interest(socket, Interest::READABLE)
}

/// Receives one datagram from `fd`, waiting for the reactor when none is queued.
async fn recv_from(
    fd: &AsyncFd<std::net::UdpSocket>,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddr)> {
    loop {
        let mut ready = fd.readable().await?;
        if let Ok(r) = ready.try_io(|s| s.get_ref().recv_from(buf)) {
            return r;
        }
    }
}

/// Where a leg sends, and what the peer's SDP said.
#[derive(Debug, Default, Clone, Copy)]
struct Remote {
    rtp_sdp: Option<SocketAddr>,
    rtcp_sdp: Option<SocketAddr>,
    rtp_dest: Option<SocketAddr>,
    rtcp_dest: Option<SocketAddr>,
    rtp_latched: Option<SocketAddr>,
    rtcp_latched: Option<SocketAddr>,
}

#[derive(Debug, Default)]
struct Counters {
    rtp_packets_in: AtomicU64,
    rtp_bytes_in: AtomicU64,
    rtp_packets_out: AtomicU64,
    rtp_bytes_out: AtomicU64,
    rtcp_packets_in: AtomicU64,
    rtcp_bytes_in: AtomicU64,
    rtcp_packets_out: AtomicU64,
    rtcp_bytes_out: AtomicU64,
    invalid_packets: AtomicU64,
    rejected_packets: AtomicU64,
    subscriber_drops: AtomicU64,
    expected: AtomicU64,
    lost: AtomicI64,
    jitter_bits: AtomicU64,
    jitter_ms_bits: AtomicU64,
    stats_clock_rate: AtomicU32,
    /// Nanoseconds since the leg's epoch + 1 of the last accepted RTP packet; 0: none yet.
    last_rtp: AtomicU64,
    payload_types: [AtomicU64; 2],
}

/// State shared by a leg's handles, its task and its bridge peer's task.
#[derive(Debug)]
struct LegShared {
    id: u64,
    /// The relay that opened it ([`RelayInner::id`]) and the index of its thread there.
    relay: u64,
    thread: Option<usize>,
    local_rtp: SocketAddr,
    local_rtcp: SocketAddr,
    sockets: Sockets,
    strict: bool,
    silence: Duration,
    epoch: Instant,
    remote: Mutex<Remote>,
    /// Bumped (under `remote`) when the SDP address changes.
    sdp_gen: AtomicU64,
    /// Bumped (under `remote`) when a destination changes.
    dest_gen: AtomicU64,
    peer: Mutex<Weak<LegShared>>,
    /// Bumped (under `peer`) when the peer changes.
    peer_gen: AtomicU64,
    subscribers: Mutex<Vec<mpsc::Sender<Vec<u8>>>>,
    has_subscribers: AtomicBool,
    clock_rate: AtomicU32,
    closed: AtomicBool,
    c: Counters,
    /// SRTP for injected packets (the key this leg's phone receives with), and the peer leg
    /// whose phone sends under the same key (its SSRC is refused).
    srtp: Mutex<Option<(SrtpSender, Weak<LegShared>)>>,
    /// SSRC + 1 of the last RTP packet accepted; 0: none yet.
    last_ssrc: AtomicU64,
}

impl LegShared {
    fn set_peer(&self, peer: Weak<LegShared>) {
        let mut p = lock(&self.peer);
        *p = peer;
        self.peer_gen.fetch_add(1, Ordering::Release);
    }

    /// Dissolves this leg's bridge on both sides (the peer only if it still points here).
    fn unbridge(self: &Arc<Self>) {
        let old = {
            let mut p = lock(&self.peer);
            self.peer_gen.fetch_add(1, Ordering::Release);
            std::mem::take(&mut *p)
        };
        if let Some(peer) = old.upgrade() {
            let mut pp = lock(&peer.peer);
            if std::ptr::eq(pp.as_ptr(), Arc::as_ptr(self)) {
                *pp = Weak::new();
                peer.peer_gen.fetch_add(1, Ordering::Release);
            }
        }
    }
}

/// A handle on one call leg's media. Cheap to clone; the leg closes when the last handle is
/// dropped or [`Leg::close`] is called.
#[derive(Clone)]
pub struct Leg {
    inner: Arc<LegHandle>,
}

#[derive(Debug)]
struct LegHandle {
    shared: Arc<LegShared>,
    close: Closer,
}

/// How a leg is stopped.
#[derive(Debug)]
enum Closer {
    /// Its task: dropping the sender (last handle gone) or sending `true` stops it.
    Task(watch::Sender<bool>),
    /// Its relay thread: [`event_loop::Cmd::Remove`].
    Loop(Arc<event_loop::LoopCtl>),
}

impl Closer {
    fn close(&self, leg: u64) {
        match self {
            Closer::Task(tx) => {
                tx.send_replace(true);
            }
            // Err: the thread has ended, nothing to stop.
            Closer::Loop(ctl) => drop(ctl.send(event_loop::Cmd::Remove(leg))),
        }
    }
}

impl Drop for LegHandle {
    fn drop(&mut self) {
        if let Closer::Loop(_) = self.close {
            self.close.close(self.shared.id);
        }
    }
}

impl fmt::Debug for Leg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Leg")
            .field("id", &self.inner.shared.id)
            .field("local_rtp", &self.inner.shared.local_rtp)
            .finish_non_exhaustive()
    }
}

impl Leg {
    fn shared(&self) -> &Arc<LegShared> {
        &self.inner.shared
    }

    /// A process-unique id (for logs).
    pub fn id(&self) -> u64 {
        self.shared().id
    }

    /// The RTP address to put in SDP: the advertised IP and the leg's RTP port.
    pub fn local_rtp(&self) -> SocketAddr {
        self.shared().local_rtp
    }

    /// The RTCP address (advertised IP, RTP port + 1).
    pub fn local_rtcp(&self) -> SocketAddr {
        self.shared().local_rtcp
    }

    /// Sets the peer's addresses from its SDP; `rtcp` defaults to the RTP port + 1. Forgets
    /// what was latched (a re-INVITE's new address latches afresh).
    pub fn set_remote(&self, rtp: SocketAddr, rtcp: Option<SocketAddr>) {
        let s = self.shared();
        let rtcp = rtcp.or_else(|| {
            rtp.port()
                .checked_add(1)
                .map(|p| SocketAddr::new(rtp.ip(), p))
        });
        let mut r = lock(&s.remote);
        *r = Remote {
            rtp_sdp: Some(rtp),
            rtcp_sdp: rtcp,
            rtp_dest: Some(rtp),
            rtcp_dest: rtcp,
            rtp_latched: None,
            rtcp_latched: None,
        };
        s.sdp_gen.fetch_add(1, Ordering::Release);
        s.dest_gen.fetch_add(1, Ordering::Release);
    }

    /// Where RTP and RTCP are sent now: the latched sources, else the SDP addresses.
    pub fn destination(&self) -> (Option<SocketAddr>, Option<SocketAddr>) {
        let r = *lock(&self.shared().remote);
        (r.rtp_dest, r.rtcp_dest)
    }

    /// Sets the RTP clock rate used for jitter (default 8000 Hz; 0 is taken as 1).
    pub fn set_clock_rate(&self, clock_rate: u32) {
        self.shared()
            .clock_rate
            .store(clock_rate.max(1), Ordering::Relaxed);
    }

    /// Protects what the gateway sends out of this leg ([`Leg::send_rtp`],
    /// [`Leg::try_send_rtp`]) with `key` (the SDES key this leg's phone receives with), or no
    /// longer (`None`). `peer`: the leg whose phone sends under that same key; its SSRC is
    /// refused (no keystream reuse). Relayed packets are never touched.
    pub fn set_srtp(&self, key: Option<&SdesKey>, peer: Option<&Leg>) {
        let peer = peer.map_or_else(Weak::new, |p| Arc::downgrade(p.shared()));
        *lock(&self.shared().srtp) = key.map(|k| (SrtpSender::new(k), peer));
    }

    /// Whether injected packets are SRTP-protected ([`Leg::set_srtp`]).
    pub fn has_srtp(&self) -> bool {
        lock(&self.shared().srtp).is_some()
    }

    /// `packet`, SRTP-protected if the leg has a key.
    fn outgoing<'a>(&self, packet: &'a [u8]) -> Result<Cow<'a, [u8]>, MediaError> {
        let mut srtp = lock(&self.shared().srtp);
        let Some((sender, peer)) = srtp.as_mut() else {
            return Ok(Cow::Borrowed(packet));
        };
        let peer_ssrc = peer
            .upgrade()
            .map(|p| p.last_ssrc.load(Ordering::Relaxed))
            .filter(|s| *s != 0)
            .map(|s| (s - 1) as u32);
        sender.avoid_ssrc(peer_ssrc);
        Ok(Cow::Owned(sender.protect(packet)?))
    }

    /// Sends a raw RTP packet (e.g. a prompt or music on hold) out of this leg to its
    /// destination, SRTP-protected if the leg has a key ([`Leg::set_srtp`]). The packet is
    /// not checked otherwise; it counts in `rtp_packets_out`. While the socket's send buffer
    /// is full it retries every millisecond, for 50 ms at most (then `Io(WouldBlock)`).
    pub async fn send_rtp(&self, packet: &[u8]) -> Result<usize, MediaError> {
        for _ in 0..50 {
            match self.try_send_rtp(packet) {
                Err(MediaError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                r => return r,
            }
        }
        self.try_send_rtp(packet)
    }

    /// [`Leg::send_rtp`] without waiting, for pacing tasks (music on hold): when the socket
    /// buffer is full the packet is not sent and `Io(WouldBlock)` returned (drop it).
    pub fn try_send_rtp(&self, packet: &[u8]) -> Result<usize, MediaError> {
        let s = self.shared();
        if s.closed.load(Ordering::Acquire) {
            return Err(MediaError::Closed);
        }
        let dest = lock(&s.remote).rtp_dest.ok_or(MediaError::NoRemote)?;
        let packet = self.outgoing(packet)?;
        let n = s.sockets.rtp.get().send_to(&packet, dest)?;
        bump(&s.c.rtp_packets_out, 1);
        bump(&s.c.rtp_bytes_out, n as u64);
        Ok(n)
    }

    /// A copy of every RTP packet accepted on this leg from now on (whole datagrams, header
    /// included), bridged or not. Packets are dropped for a receiver that falls more than
    /// [`SUBSCRIBER_CAPACITY`] behind (`subscriber_drops`); drop the receiver to unsubscribe.
    /// The channel closes when the leg does.
    pub fn subscribe(&self) -> mpsc::Receiver<Vec<u8>> {
        let s = self.shared();
        let (tx, rx) = mpsc::channel(SUBSCRIBER_CAPACITY);
        let mut subs = lock(&s.subscribers);
        subs.push(tx);
        s.has_subscribers.store(true, Ordering::Release);
        rx
    }

    /// The leg's statistics now.
    pub fn stats(&self) -> LegStats {
        let s = self.shared();
        let c = &s.c;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let r = *lock(&s.remote);
        let mut payload_types_seen = Vec::new();
        for (w, word) in c.payload_types.iter().enumerate() {
            let bits = get(word);
            for b in 0..64u8 {
                if bits & (1u64 << b) != 0 {
                    payload_types_seen.push((w as u8) * 64 + b);
                }
            }
        }
        LegStats {
            rtp_packets_in: get(&c.rtp_packets_in),
            rtp_bytes_in: get(&c.rtp_bytes_in),
            rtp_packets_out: get(&c.rtp_packets_out),
            rtp_bytes_out: get(&c.rtp_bytes_out),
            rtcp_packets_in: get(&c.rtcp_packets_in),
            rtcp_bytes_in: get(&c.rtcp_bytes_in),
            rtcp_packets_out: get(&c.rtcp_packets_out),
            rtcp_bytes_out: get(&c.rtcp_bytes_out),
            invalid_packets: get(&c.invalid_packets),
            rejected_packets: get(&c.rejected_packets),
            subscriber_drops: get(&c.subscriber_drops),
            expected: get(&c.expected),
            lost: c.lost.load(Ordering::Relaxed),
            jitter: f64::from_bits(get(&c.jitter_bits)),
            jitter_ms: f64::from_bits(get(&c.jitter_ms_bits)),
            clock_rate: match c.stats_clock_rate.load(Ordering::Relaxed) {
                0 => s.clock_rate.load(Ordering::Relaxed),
                rate => rate,
            },
            last_packet_at: self.last_packet_at(),
            latched_source: r.rtp_latched,
            latched_rtcp_source: r.rtcp_latched,
            payload_types_seen,
        }
    }

    /// When the last accepted RTP packet arrived.
    pub fn last_packet_at(&self) -> Option<Instant> {
        let s = self.shared();
        match s.c.last_rtp.load(Ordering::Relaxed) {
            0 => None,
            n => Some(s.epoch + Duration::from_nanos(n - 1)),
        }
    }

    /// How long no RTP has been accepted at `now`: since the last packet, or since the leg
    /// was opened if none came yet (for media timeouts: hang up after N s of silence).
    pub fn idle_for(&self, now: Instant) -> Duration {
        let since = self.last_packet_at().unwrap_or(self.shared().epoch);
        now.saturating_duration_since(since)
    }

    /// Closes the leg: it is unbridged, stops relaying, and refuses [`Leg::send_rtp`]. The
    /// ports are released once every handle is dropped.
    pub fn close(&self) {
        let s = self.shared();
        s.closed.store(true, Ordering::Release);
        s.unbridge();
        self.inner.close.close(s.id);
    }

    /// Whether [`Leg::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.shared().closed.load(Ordering::Acquire)
    }
}

/// Bridges `a` and `b`: RTP/RTCP accepted on one is sent out of the other to its destination.
/// Any previous bridge of either leg is dissolved first. Calls on the same legs should be
/// serialised by the caller (the call's task); concurrent ones may leave a one-way bridge.
pub fn bridge(a: &Leg, b: &Leg) -> Result<(), MediaError> {
    if Arc::ptr_eq(a.shared(), b.shared()) {
        return Err(MediaError::SelfBridge);
    }
    if a.is_closed() || b.is_closed() {
        return Err(MediaError::Closed);
    }
    a.shared().unbridge();
    b.shared().unbridge();
    a.shared().set_peer(Arc::downgrade(b.shared()));
    b.shared().set_peer(Arc::downgrade(a.shared()));
    Ok(())
}

/// Dissolves `leg`'s bridge, on both sides; from then on both legs drop what they receive
/// (still counting it, latching and feeding subscribers).
pub fn unbridge(leg: &Leg) {
    leg.shared().unbridge();
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Rtp,
    Rtcp,
}

/// The task's copy of the bridge peer and its destinations.
#[derive(Debug, Default)]
struct PeerCache {
    leg: Weak<LegShared>,
    dest_seen: Option<u64>,
    rtp: Option<SocketAddr>,
    rtcp: Option<SocketAddr>,
}

/// A leg task's private state.
#[derive(Debug)]
struct Task {
    rtp_latch: Latch,
    rtcp_latch: Latch,
    sdp_seen: u64,
    stats: RtpStats,
    peer_seen: u64,
    peer: PeerCache,
}

/// Whether a datagram looks like RTCP (RFC 5761 §4: version 2, packet type 192–223).
fn is_rtcp(pkt: &[u8]) -> bool {
    pkt.len() >= 8 && pkt[0] >> 6 == 2 && (192..=223).contains(&pkt[1])
}

/// A leg's task on the caller's runtime (a relay without threads of its own).
async fn run(shared: Arc<LegShared>, mut close: watch::Receiver<bool>) {
    let (Sock::Task(rtp), Sock::Task(rtcp)) = (&shared.sockets.rtp, &shared.sockets.rtcp) else {
        return;
    };
    let mut task = Task::new(&shared);
    // One byte over the limit, so that an oversize datagram is seen (it is truncated).
    let mut rtp_buf = [0u8; MAX_PACKET_SIZE + 1];
    let mut rtcp_buf = [0u8; MAX_PACKET_SIZE + 1];
    loop {
        tokio::select! {
            _ = close.changed() => break,
            r = recv_from(rtp, &mut rtp_buf) => match r {
                Ok((n, src)) => task.on_rtp_port(&shared, &rtp_buf[..n], src),
                Err(e) => tracing::debug!(leg = shared.id, error = %e, "RTP receive error"),
            },
            r = recv_from(rtcp, &mut rtcp_buf) => match r {
                Ok((n, src)) => task.on_rtcp_port(&shared, &rtcp_buf[..n], src),
                Err(e) => tracing::debug!(leg = shared.id, error = %e, "RTCP receive error"),
            },
        }
    }
    // Recorders see the end of the stream.
    lock(&shared.subscribers).clear();
    shared.has_subscribers.store(false, Ordering::Release);
    tracing::debug!(leg = shared.id, "media leg closed");
}

impl Task {
    fn new(shared: &LegShared) -> Task {
        Task {
            rtp_latch: Latch::new(shared.strict, shared.silence),
            rtcp_latch: Latch::new(shared.strict, shared.silence),
            sdp_seen: 0,
            stats: RtpStats::new(shared.clock_rate.load(Ordering::Relaxed)),
            peer_seen: 0,
            peer: PeerCache::default(),
        }
    }

    fn on_rtp_port(&mut self, shared: &LegShared, pkt: &[u8], src: SocketAddr) {
        let c = &shared.c;
        if pkt.len() > MAX_PACKET_SIZE {
            bump(&c.invalid_packets, 1);
            return;
        }
        let now = Instant::now();
        if is_rtcp(pkt) {
            // RTCP multiplexed on the RTP port (RFC 5761): relayed on the RTP path.
            if self.accept(shared, Stream::Rtp, src, now) {
                bump(&c.rtcp_packets_in, 1);
                bump(&c.rtcp_bytes_in, pkt.len() as u64);
                self.forward(shared, pkt, Stream::Rtp, true);
            }
            return;
        }
        let (seq, ts, pt, ssrc) = match RtpReader::new(pkt) {
            Ok(r) => (
                u16::from(r.sequence_number()),
                r.timestamp(),
                r.payload_type(),
                r.ssrc(),
            ),
            Err(_) => {
                bump(&c.invalid_packets, 1);
                return;
            }
        };
        if !self.accept(shared, Stream::Rtp, src, now) {
            return;
        }
        bump(&c.rtp_packets_in, 1);
        bump(&c.rtp_bytes_in, pkt.len() as u64);
        shared
            .last_ssrc
            .store(u64::from(ssrc) + 1, Ordering::Relaxed);
        let nanos = now.saturating_duration_since(shared.epoch).as_nanos();
        c.last_rtp.store(
            u64::try_from(nanos)
                .unwrap_or(u64::MAX - 1)
                .saturating_add(1),
            Ordering::Relaxed,
        );
        let word = &c.payload_types[usize::from(pt >> 6) & 1];
        let bit = 1u64 << (pt & 63);
        if word.load(Ordering::Relaxed) & bit == 0 {
            word.fetch_or(bit, Ordering::Relaxed);
        }
        let rate = shared.clock_rate.load(Ordering::Relaxed);
        if rate != self.stats.clock_rate() {
            self.stats.set_clock_rate(rate);
        }
        self.stats.on_packet(seq, ts, now);
        c.expected.store(self.stats.expected(), Ordering::Relaxed);
        c.lost.store(self.stats.lost(), Ordering::Relaxed);
        c.jitter_bits
            .store(self.stats.jitter().to_bits(), Ordering::Relaxed);
        c.jitter_ms_bits
            .store(self.stats.jitter_ms().to_bits(), Ordering::Relaxed);
        c.stats_clock_rate
            .store(self.stats.clock_rate(), Ordering::Relaxed);
        if shared.has_subscribers.load(Ordering::Acquire) {
            let mut subs = lock(&shared.subscribers);
            subs.retain(|tx| match tx.try_send(pkt.to_vec()) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    bump(&c.subscriber_drops, 1);
                    true
                }
                Err(TrySendError::Closed(_)) => false,
            });
            if subs.is_empty() {
                shared.has_subscribers.store(false, Ordering::Release);
            }
        }
        self.forward(shared, pkt, Stream::Rtp, false);
    }

    fn on_rtcp_port(&mut self, shared: &LegShared, pkt: &[u8], src: SocketAddr) {
        let c = &shared.c;
        if pkt.len() > MAX_PACKET_SIZE || !is_rtcp(pkt) {
            bump(&c.invalid_packets, 1);
            return;
        }
        if self.accept(shared, Stream::Rtcp, src, Instant::now()) {
            bump(&c.rtcp_packets_in, 1);
            bump(&c.rtcp_bytes_in, pkt.len() as u64);
            self.forward(shared, pkt, Stream::Rtcp, true);
        }
    }

    /// Picks up a new SDP address if `set_remote` was called.
    fn refresh_sdp(&mut self, shared: &LegShared) {
        if shared.sdp_gen.load(Ordering::Acquire) != self.sdp_seen {
            let r = lock(&shared.remote);
            self.rtp_latch.set_expected(r.rtp_sdp);
            self.rtcp_latch.set_expected(r.rtcp_sdp);
            self.sdp_seen = shared.sdp_gen.load(Ordering::Acquire);
        }
    }

    /// Runs the latch; publishes a new latched source; counts a rejection.
    fn accept(
        &mut self,
        shared: &LegShared,
        stream: Stream,
        src: SocketAddr,
        now: Instant,
    ) -> bool {
        self.refresh_sdp(shared);
        let latch = match stream {
            Stream::Rtp => &mut self.rtp_latch,
            Stream::Rtcp => &mut self.rtcp_latch,
        };
        match latch.on_packet(src, now) {
            LatchVerdict::Accepted => true,
            LatchVerdict::Rejected => {
                bump(&shared.c.rejected_packets, 1);
                false
            }
            LatchVerdict::Latched => {
                let mut r = lock(&shared.remote);
                // A set_remote since refresh_sdp wins: the next packet latches afresh.
                if shared.sdp_gen.load(Ordering::Acquire) == self.sdp_seen {
                    match stream {
                        Stream::Rtp => {
                            r.rtp_dest = latch.destination();
                            r.rtp_latched = latch.latched();
                        }
                        Stream::Rtcp => {
                            r.rtcp_dest = latch.destination();
                            r.rtcp_latched = latch.latched();
                        }
                    }
                    shared.dest_gen.fetch_add(1, Ordering::Release);
                }
                drop(r);
                tracing::debug!(leg = shared.id, ?stream, %src, "latched media source");
                true
            }
        }
    }

    /// Sends `pkt` out of the bridge peer's socket to the peer's destination, if bridged. A
    /// full send buffer drops it (never waits: the leg's later packets would wait behind it).
    fn forward(&mut self, shared: &LegShared, pkt: &[u8], stream: Stream, rtcp: bool) {
        let gen = shared.peer_gen.load(Ordering::Acquire);
        if gen != self.peer_seen {
            let p = lock(&shared.peer);
            self.peer = PeerCache {
                leg: p.clone(),
                ..PeerCache::default()
            };
            self.peer_seen = shared.peer_gen.load(Ordering::Acquire);
        }
        let Some(peer) = self.peer.leg.upgrade() else {
            return;
        };
        if peer.closed.load(Ordering::Relaxed) {
            return;
        }
        let dest_gen = peer.dest_gen.load(Ordering::Acquire);
        if self.peer.dest_seen != Some(dest_gen) {
            let r = lock(&peer.remote);
            self.peer.rtp = r.rtp_dest;
            self.peer.rtcp = r.rtcp_dest;
            self.peer.dest_seen = Some(peer.dest_gen.load(Ordering::Acquire));
        }
        let (socket, dest) = match stream {
            Stream::Rtp => (&peer.sockets.rtp, self.peer.rtp),
            Stream::Rtcp => (&peer.sockets.rtcp, self.peer.rtcp),
        };
        let Some(dest) = dest else {
            return;
        };
        match socket.get().send_to(pkt, dest) {
            Ok(n) => {
                let (packets, bytes) = if rtcp {
                    (&peer.c.rtcp_packets_out, &peer.c.rtcp_bytes_out)
                } else {
                    (&peer.c.rtp_packets_out, &peer.c.rtp_bytes_out)
                };
                bump(packets, 1);
                bump(bytes, n as u64);
            }
            Err(e) => {
                tracing::debug!(leg = shared.id, peer = peer.id, %dest, error = %e, "relay send failed");
            }
        }
    }
}

#[cfg(test)]
mod placement_tests {
    use super::pick_thread;

    #[test]
    fn a_new_leg_goes_to_the_least_loaded_thread_the_first_on_a_tie() {
        assert_eq!(
            pick_thread(&[], None),
            None,
            "no threads: the caller's runtime"
        );
        assert_eq!(pick_thread(&[], Some(0)), None);
        assert_eq!(pick_thread(&[0, 0, 0], None), Some(0));
        assert_eq!(pick_thread(&[3, 1, 2], None), Some(1));
        assert_eq!(pick_thread(&[2, 4, 2], None), Some(0));
    }

    #[test]
    fn a_leg_beside_another_goes_to_its_thread_however_loaded() {
        assert_eq!(pick_thread(&[9, 0], Some(0)), Some(0));
        assert_eq!(pick_thread(&[0, 9], Some(1)), Some(1));
        // An index this relay does not have (never happens: thread_of checks the relay).
        assert_eq!(pick_thread(&[5, 0], Some(2)), Some(1));
    }

    /// Opening legs one after the other with the rule keeps the threads within one leg of
    /// each other, and pairs (two legs on one thread) within one pair.
    #[test]
    fn pairs_spread_evenly() {
        for threads in 1..=8 {
            let mut loads = vec![0usize; threads];
            for _ in 0..1000 {
                let a = pick_thread(&loads, None).expect("a thread");
                loads[a] += 1;
                let b = pick_thread(&loads, Some(a)).expect("a thread");
                assert_eq!(a, b);
                loads[b] += 1;
                let (min, max) = (loads.iter().min(), loads.iter().max());
                assert!(max.zip(min).is_some_and(|(x, n)| x - n <= 2), "{loads:?}");
            }
            assert_eq!(loads.iter().sum::<usize>(), 2000);
        }
    }
}

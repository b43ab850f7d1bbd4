//! A relay thread's event loop (issue 16): one epoll instance over the sockets of every leg
//! placed on the thread, instead of a tokio task per leg.
//!
//! Each turn waits in `epoll_wait` for up to [`EVENTS`] ready sockets and reads **one**
//! datagram from each, handing it to the leg's [`Task`] — the same latching, statistics, taps
//! and forwarding as on the tokio path — which sends it out of the partner leg's socket at
//! once. One receive buffer per thread, allocated when the thread starts; no task, waker or
//! allocation per packet.
//!
//! The sockets are registered **level-triggered** (`nix`'s safe epoll; mio is edge-triggered
//! only): a socket still holding datagrams after its read is announced again by the next
//! `epoll_wait`, so a socket is never read until it would block. Edge-triggered, every relayed
//! packet cost a second `recvfrom` that only returned `EAGAIN` (2 receives + 1 send per
//! packet; now 1 + 1). The kernel re-checks a socket it announced once more in the next
//! `epoll_wait` (a poll of the socket's queue, no system call), and puts a socket with data
//! left at the back of its ready list, so a flooded socket gets one read a turn and the other
//! ready sockets are read in the same turns: no socket starves the others, and nothing stays
//! queued without an event (what arrived before a leg was taken over is announced too).
//!
//! A leg's sockets are registered (readable only, tokens from the leg's id) by
//! `MediaRelay::open` on the caller's thread, so a failure is the caller's error; the loop then
//! takes the leg over with [`Cmd::Add`]. [`Cmd::Remove`] (from `Leg::close` and the last
//! handle's drop) deregisters it, closes its subscriptions and drops the loop's reference, so
//! its sockets close and its ports return once the handles are gone. A socket announced before
//! its `Add` is read (its datagram relayed) once the `Add` is applied; one of a closed leg is
//! deregistered at once (its `Remove` is on the way), so neither makes the loop spin. The
//! thread ends when its relay and every leg on it are dropped.

use std::collections::HashMap;
use std::io;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};

use super::{lock, LegShared, RelayScheduling, Stream, Task, ThreadSlot, MAX_PACKET_SIZE};

/// Ready sockets taken per `epoll_wait`.
const EVENTS: usize = 1024;
/// The waker's token; legs' tokens are `id << 1 | stream` with ids counted from 1.
const WAKE: u64 = u64::MAX;
/// How the legs' sockets are registered: readable, level-triggered (no `EPOLLET`).
const LEG_INTEREST: EpollFlags = EpollFlags::EPOLLIN;

/// What a relay thread is told by the handles.
#[derive(Debug)]
pub(super) enum Cmd {
    /// Relay this leg (its sockets are registered already); the slot counts it on the thread.
    Add(Arc<LegShared>, Option<ThreadSlot>),
    /// Stop relaying the leg with this id (a no-op if it is gone already).
    Remove(u64),
}

/// The handles' side of one relay thread: held by the relay and by each leg placed on it.
#[derive(Debug)]
pub(super) struct LoopCtl {
    epoll: Arc<Epoll>,
    tx: Option<Sender<Cmd>>,
    /// Shared with the thread, which reads it when it is announced.
    waker: Arc<EventFd>,
}

impl LoopCtl {
    /// Registers `leg`'s sockets with the thread's epoll, readable only, level-triggered.
    pub(super) fn register(&self, leg: &LegShared) -> io::Result<()> {
        for (stream, socket) in [
            (Stream::Rtp, leg.sockets.rtp.get()),
            (Stream::Rtcp, leg.sockets.rtcp.get()),
        ] {
            self.epoll
                .add(socket, EpollEvent::new(LEG_INTEREST, token(leg.id, stream)))?;
        }
        Ok(())
    }

    /// Hands `cmd` to the thread and wakes it; gives it back if the thread has ended.
    pub(super) fn send(&self, cmd: Cmd) -> Result<(), Cmd> {
        let Some(tx) = &self.tx else {
            return Err(cmd);
        };
        tx.send(cmd).map_err(|e| e.0)?;
        if let Err(e) = self.waker.write(1) {
            tracing::warn!(error = %e, "cannot wake a relay thread");
        }
        Ok(())
    }
}

impl Drop for LoopCtl {
    /// The last handle gone: the channel closes and the thread, woken, sees it and ends.
    fn drop(&mut self) {
        drop(self.tx.take());
        // An error here only means the counter is full: the thread has a wake-up to read.
        let _ = self.waker.write(1);
    }
}

fn token(id: u64, stream: Stream) -> u64 {
    // Ids are counted from 1 and never reach 2^63: no leg's token is WAKE.
    (id << 1) | u64::from(stream == Stream::Rtcp)
}

/// The leg id of a socket's token.
fn leg_of(t: u64) -> u64 {
    t >> 1
}

/// The epoll instance and waker of a new relay thread.
fn poller() -> io::Result<(Epoll, EventFd)> {
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    let waker = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
    epoll.add(&waker, EpollEvent::new(EpollFlags::EPOLLIN, WAKE))?;
    Ok((epoll, waker))
}

/// What a relay thread tells its relay about itself ([`super::RelayThreadsReport`]).
#[derive(Debug, Default)]
pub(super) struct ThreadState {
    /// Running `SCHED_FIFO`.
    pub(super) realtime: AtomicBool,
    /// Sleeps at the busy cap ([`DutyCycle`]).
    pub(super) duty_sleeps: AtomicU64,
}

/// Starts a relay thread named `name`, scheduled as `sched` says, and returns once it is: a
/// real-time priority the system refuses (no `CAP_SYS_NICE`, `RLIMIT_RTPRIO` too low) is
/// logged and the thread runs at the ordinary priority.
pub(super) fn spawn(
    name: String,
    sched: RelayScheduling,
    state: Arc<ThreadState>,
) -> io::Result<LoopCtl> {
    let (epoll, waker) = poller()?;
    let (epoll, waker) = (Arc::new(epoll), Arc::new(waker));
    let (tx, rx) = mpsc::channel();
    let mut thread = EventLoop::new(epoll.clone(), waker.clone(), rx);
    let (started_tx, started) = mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            thread.realtime = match realtime(sched.realtime_priority) {
                Ok(on) => on,
                Err(e) => {
                    tracing::warn!(
                        thread = %name,
                        priority = sched.realtime_priority,
                        error = %e,
                        "relay thread: real-time priority refused (needs CAP_SYS_NICE or an \
                         RLIMIT_RTPRIO as high); running at the ordinary priority"
                    );
                    false
                }
            };
            // Coalescing only when real-time: an ordinary thread that sleeps gives its core
            // away and, on a busy host, waits milliseconds to get it back (docs/BENCHMARKS.md).
            if thread.realtime {
                thread.coalesce = sched.coalesce;
            }
            state.realtime.store(thread.realtime, Ordering::Relaxed);
            thread.state = state;
            if !thread.coalesce.is_zero() {
                // Sleeps of a fraction of a millisecond: no 50 µs of timer slack on top.
                if let Err(e) = nix::sys::prctl::set_timerslack(1_000) {
                    tracing::debug!(error = %e, "relay thread: timer slack unchanged");
                }
            }
            let _ = started_tx.send(());
            thread.run();
        })?;
    // The thread sends before it runs its loop; an error means it died before (a panic).
    started
        .recv()
        .map_err(|_| io::Error::other("relay thread ended at its start"))?;
    Ok(LoopCtl {
        epoll,
        tx: Some(tx),
        waker,
    })
}

/// Gives the calling thread `SCHED_FIFO` at `priority`, if one is asked for; whether it runs
/// real-time now.
fn realtime(priority: Option<u8>) -> io::Result<bool> {
    use thread_priority::{
        set_thread_priority_and_policy, thread_native_id, RealtimeThreadSchedulePolicy,
        ThreadPriority, ThreadPriorityValue, ThreadSchedulePolicy,
    };
    let Some(p) = priority else {
        return Ok(false);
    };
    let value = ThreadPriorityValue::try_from(p)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    set_thread_priority_and_policy(
        thread_native_id(),
        ThreadPriority::Crossplatform(value),
        ThreadSchedulePolicy::Realtime(RealtimeThreadSchedulePolicy::Fifo),
    )
    .map_err(|e| match e {
        thread_priority::Error::OS(code) => io::Error::from_raw_os_error(code),
        other => io::Error::other(other.to_string()),
    })?;
    Ok(true)
}

/// A leg the thread relays: its shared state and its private per-packet state.
struct Entry {
    shared: Arc<LegShared>,
    task: Task,
    _slot: Option<ThreadSlot>,
    /// The turn in which each socket (RTP, RTCP) was last read ([`EventLoop::turns`]).
    read_in: [u64; 2],
}

/// Datagrams read from a socket in one turn when it was announced in the previous turn too and
/// the thread coalesces (see [`EventLoop::read`]).
const BURST: usize = 16;

struct EventLoop {
    epoll: Arc<Epoll>,
    waker: Arc<EventFd>,
    rx: Receiver<Cmd>,
    legs: HashMap<u64, Entry>,
    /// One byte over the limit, so that an oversize datagram is seen (it is truncated).
    buf: Box<[u8]>,
    /// [`RelayScheduling::coalesce`].
    coalesce: Duration,
    /// Running `SCHED_FIFO`: its share of the core is capped ([`DutyCycle`]).
    realtime: bool,
    /// Turns taken, counted from 1.
    turns: u64,
    /// Shared with the relay's handles.
    state: Arc<ThreadState>,
}

/// A real-time relay thread's busy time per [`DutyCycle::WINDOW`] is capped at
/// [`DutyCycle::BUSY`]: past it, the thread sleeps to the window's end. An ordinary turn takes
/// tens of µs and 1,000 streams keep a thread about a fifth of the time busy, so only a flood
/// (or more streams than the core can relay) reaches the cap; the thread then leaves a quarter
/// of its core to the signalling, which at the ordinary priority it would otherwise starve, and
/// the packets it leaves wait in their sockets (past the sockets' buffers dropped, counted by
/// the kernel). Sans-IO: times passed in.
#[derive(Debug, Clone, Copy)]
struct DutyCycle {
    window: Instant,
    busy: Duration,
}

impl DutyCycle {
    const WINDOW: Duration = Duration::from_millis(10);
    const BUSY: Duration = Duration::from_micros(7_500);

    fn new(now: Instant) -> Self {
        DutyCycle {
            window: now,
            busy: Duration::ZERO,
        }
    }

    /// A turn ran from `began` to `ended`: how long to sleep now, if at all. At least
    /// `WINDOW - BUSY` once the cap is reached, so that even turns longer than a window (up to
    /// [`EVENTS`] datagrams) leave the core for a while.
    fn after_turn(&mut self, began: Instant, ended: Instant) -> Option<Duration> {
        if ended.saturating_duration_since(self.window) >= Self::WINDOW {
            self.window = began;
            self.busy = Duration::ZERO;
        }
        self.busy += ended.saturating_duration_since(began.max(self.window));
        if self.busy < Self::BUSY {
            return None;
        }
        let rest = (self.window + Self::WINDOW)
            .saturating_duration_since(ended)
            .max(Self::WINDOW - Self::BUSY);
        self.window = ended + rest;
        self.busy = Duration::ZERO;
        Some(rest)
    }
}

impl EventLoop {
    fn new(epoll: Arc<Epoll>, waker: Arc<EventFd>, rx: Receiver<Cmd>) -> EventLoop {
        EventLoop {
            epoll,
            waker,
            rx,
            legs: HashMap::new(),
            buf: vec![0; MAX_PACKET_SIZE + 1].into_boxed_slice(),
            coalesce: Duration::ZERO,
            realtime: false,
            turns: 0,
            state: Arc::default(),
        }
    }

    fn run(mut self) {
        let mut events = vec![EpollEvent::empty(); EVENTS];
        // When the last turn with work began, and whether traffic is dense enough to coalesce.
        let mut last_turn: Option<Instant> = None;
        let mut dense = false;
        let mut duty = DutyCycle::new(Instant::now());
        loop {
            let timeout = if dense {
                if let Some(at) = last_turn {
                    let due = at + self.coalesce;
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                }
                EpollTimeout::ZERO
            } else {
                EpollTimeout::NONE
            };
            let n = match self.epoll.wait(&mut events, timeout) {
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    // Never seen (EBADF, EFAULT, EINVAL cannot happen here); do not spin.
                    tracing::error!(error = %e, "relay thread: epoll_wait failed");
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            let began = Instant::now();
            if !self.coalesce.is_zero() {
                if n == 0 {
                    // Nothing came while it slept: wait for the next packet.
                    dense = false;
                    continue;
                }
                // Dense: this turn came less than two coalescing periods after the last one,
                // so the next packet is likely within one: sleep for it instead of waking.
                dense = last_turn
                    .is_some_and(|t| began.saturating_duration_since(t) < 2 * self.coalesce);
                last_turn = Some(began);
            }
            let ready = &events[..n];
            if ready.iter().any(|e| e.data() == WAKE) {
                // Level-triggered: read before the commands, so a command sent after this
                // read is announced again. EAGAIN: another turn read it already.
                let _ = self.waker.read();
            }
            // Commands first: a leg removed in this turn is not read in it.
            if !self.commands() {
                break;
            }
            self.turn(ready.iter().map(EpollEvent::data));
            if self.realtime {
                if let Some(rest) = duty.after_turn(began, Instant::now()) {
                    self.state.duty_sleeps.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(rest);
                }
            }
        }
        let ids: Vec<u64> = self.legs.keys().copied().collect();
        for id in ids {
            self.remove(id);
        }
        tracing::debug!("relay thread ended");
    }

    /// Reads one datagram from each socket of `events` (more from a flooded one when
    /// coalescing: [`EventLoop::read`]).
    fn turn(&mut self, events: impl Iterator<Item = u64>) {
        self.turns += 1;
        for t in events.filter(|t| *t != WAKE) {
            // A panic in one leg's packet handling (none is known: this is a net) ends that
            // leg only, as it ended only its task on the tokio path.
            let read = std::panic::catch_unwind(AssertUnwindSafe(|| self.read(t)));
            if read.is_err() {
                let id = leg_of(t);
                tracing::error!(
                    leg = id,
                    "relay thread: packet handling panicked; leg dropped"
                );
                self.remove(id);
            }
        }
    }

    /// Applies the queued commands; `false` once every handle on the thread is gone.
    fn commands(&mut self) -> bool {
        loop {
            match self.rx.try_recv() {
                Ok(Cmd::Add(shared, slot)) => {
                    let task = Task::new(&shared);
                    self.legs.insert(
                        shared.id,
                        Entry {
                            shared,
                            task,
                            _slot: slot,
                            read_in: [0; 2],
                        },
                    );
                }
                Ok(Cmd::Remove(id)) => self.remove(id),
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return false,
            }
        }
    }

    /// Takes `leg`'s sockets out of the epoll instance (a no-op for one taken out already).
    fn deregister(epoll: &Epoll, leg: &LegShared) {
        for socket in [leg.sockets.rtp.get(), leg.sockets.rtcp.get()] {
            match epoll.delete(socket) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(e) => {
                    tracing::debug!(leg = leg.id, error = %e, "relay thread: deregister failed");
                }
            }
        }
    }

    fn remove(&mut self, id: u64) {
        let Some(entry) = self.legs.remove(&id) else {
            return;
        };
        let s = &entry.shared;
        Self::deregister(&self.epoll, s);
        // Recorders see the end of the stream.
        lock(&s.subscribers).clear();
        s.has_subscribers.store(false, Ordering::Release);
        tracing::debug!(leg = id, "media leg closed");
        // The entry drops here: the leg no longer counts on the thread, and its sockets and
        // ports go once its handles are gone too.
    }

    /// Reads one datagram from the socket of token `t` (announced readable); when the thread
    /// coalesces and the socket was read in the previous turn too, up to [`BURST`], until it
    /// would block. A coalescing thread takes a turn every period (200 µs by default), so one
    /// datagram a turn would cap a socket at 5,000 a second: a flood would then fill the
    /// socket's buffer, the kernel would drop the phone's packets with the flood's, and after
    /// the latch's re-latch silence (2 s) the flooder's source would take the stream over.
    /// An ordinary voice socket (50 packets a second) is never announced in two turns in a
    /// row, so it keeps its one read and no read ends in `EAGAIN`.
    fn read(&mut self, t: u64) {
        let id = leg_of(t);
        let stream = match t & 1 {
            0 => Stream::Rtp,
            _ => Stream::Rtcp,
        };
        // Not taken over yet (its Add is on the way): announced again in the next turn.
        let Some(Entry {
            shared,
            task,
            read_in,
            ..
        }) = self.legs.get_mut(&id)
        else {
            return;
        };
        // Closed: nothing more is relayed or tapped. Its Remove is on the way; out of the
        // epoll instance now, so that its queued datagrams are not announced until then.
        if shared.closed.load(Ordering::Acquire) {
            Self::deregister(&self.epoll, shared);
            return;
        }
        let slot = &mut read_in[usize::from(stream == Stream::Rtcp)];
        let reads = if !self.coalesce.is_zero() && *slot != 0 && *slot + 1 == self.turns {
            BURST
        } else {
            1
        };
        *slot = self.turns;
        let socket = match stream {
            Stream::Rtp => shared.sockets.rtp.get(),
            Stream::Rtcp => shared.sockets.rtcp.get(),
        };
        for _ in 0..reads {
            match socket.recv_from(&mut self.buf) {
                Ok((n, src)) => match stream {
                    Stream::Rtp => task.on_rtp_port(shared, &self.buf[..n], src),
                    Stream::Rtcp => task.on_rtcp_port(shared, &self.buf[..n], src),
                },
                // Announced, then read by nobody else, or all read: harmless.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // An error reported on the socket (e.g. an ICMP error) or a signal: the
                // datagrams behind it keep the socket readable, so they are read next.
                Err(e) => {
                    tracing::debug!(leg = id, error = %e, "RTP receive error");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// The real-time duty cycle, in virtual time.
    mod duty_cycle {
        use super::super::DutyCycle;
        use std::time::{Duration, Instant};

        const US: Duration = Duration::from_micros(1);

        /// Turns of `turn` every `period` for a second of virtual time: (busy, asleep).
        fn run(turn: Duration, period: Duration) -> (Duration, Duration) {
            let t0 = Instant::now();
            let mut d = DutyCycle::new(t0);
            let (mut now, mut busy, mut asleep) = (t0, Duration::ZERO, Duration::ZERO);
            while now < t0 + Duration::from_secs(1) {
                let ended = now + turn;
                busy += turn;
                now = ended;
                if let Some(rest) = d.after_turn(ended - turn, ended) {
                    asleep += rest;
                    now += rest;
                }
                // The next packet: at the next period, or at once when flooded.
                now = now.max(ended + period.saturating_sub(turn));
            }
            (busy, asleep)
        }

        #[test]
        fn ordinary_load_never_sleeps() {
            // 1,000 streams on two threads: ~5 packets per 200 µs turn, ~40 µs of work.
            assert_eq!(run(40 * US, 200 * US).1, Duration::ZERO);
            // Busier, still under three quarters: 140 µs of every 200.
            assert_eq!(run(140 * US, 200 * US).1, Duration::ZERO);
        }

        #[test]
        fn a_flood_gets_at_most_three_quarters_of_the_core() {
            for turn in [10 * US, 300 * US, 2_000 * US] {
                let (busy, asleep) = run(turn, Duration::ZERO);
                let share = busy.as_secs_f64() / (busy + asleep).as_secs_f64();
                assert!(
                    (0.70..=0.77).contains(&share),
                    "turns of {turn:?}: {share:.3}"
                );
            }
        }

        #[test]
        fn a_turn_longer_than_a_window_still_leaves_the_core_a_while() {
            let t0 = Instant::now();
            let mut d = DutyCycle::new(t0);
            let ended = t0 + Duration::from_millis(25);
            let rest = d.after_turn(t0, ended).expect("a sleep");
            assert!(rest >= DutyCycle::WINDOW - DutyCycle::BUSY, "{rest:?}");
        }
    }

    use std::net::{IpAddr, Ipv4Addr, UdpSocket};
    use std::time::{Duration, Instant};

    use super::super::{bridge, lock, Leg, MediaRelay, RelayConfig};
    use super::spawn;

    const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
    /// Generous: the machine may be loaded.
    const WAIT: Duration = Duration::from_secs(10);

    fn phone() -> UdpSocket {
        let p = UdpSocket::bind((LO, 0)).expect("phone");
        p.set_read_timeout(Some(WAIT)).expect("timeout");
        p
    }

    /// RTP: version 2, PCMU, `seq`, SSRC `ssrc`, 160 bytes of payload.
    fn rtp(seq: u16, ssrc: u32) -> Vec<u8> {
        let mut p = vec![0x80, 0];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend(std::iter::repeat_n(0xd5, 160));
        p
    }

    fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + WAIT;
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// A one-way stream: phone → `a` ⇄ `b` → phone, `a` subscribed (its tap's lock is what the
    /// tests hold to stall the thread).
    struct Stream {
        a: Leg,
        b: Leg,
        tx: UdpSocket,
        rx: UdpSocket,
    }

    fn stream(r: &MediaRelay) -> Stream {
        let (a, b) = r.leg_pair().expect("pair");
        let (tx, rx) = (phone(), phone());
        a.set_remote(tx.local_addr().expect("addr"), None);
        b.set_remote(rx.local_addr().expect("addr"), None);
        bridge(&a, &b).expect("bridge");
        Stream { a, b, tx, rx }
    }

    /// Stalls `s.a`'s thread: its first packet is sent while the test holds `s.a`'s tap lock,
    /// and the thread, having counted it, waits for that lock. Returns the guard.
    fn stall(s: &Stream) -> std::sync::MutexGuard<'_, Vec<tokio::sync::mpsc::Sender<Vec<u8>>>> {
        let guard = lock(&s.a.shared().subscribers);
        s.tx.send_to(&rtp(0, 1), s.a.local_rtp()).expect("send");
        wait_for("the first packet counted", || {
            s.a.stats().rtp_packets_in == 1
        });
        guard
    }

    /// Issue 16: one thread, 40 streams; while the thread is stalled every stream queues 40
    /// datagrams, then all of it arrives, in order per stream, from the right leg, and every
    /// leg counts it (a socket left with data after a turn's read is announced again).
    #[test]
    fn a_burst_on_many_legs_of_one_thread_all_arrives_in_order_per_stream() {
        let r = MediaRelay::with_threads(RelayConfig::new(LO, LO, 24000, 24399), 1).expect("relay");
        let streams: Vec<Stream> = (0..40).map(|_| stream(&r)).collect();
        let _tap = streams[0].a.subscribe();
        let burst = 40;
        {
            let _stalled = stall(&streams[0]);
            for (i, s) in streams.iter().enumerate() {
                for seq in 1..=burst {
                    s.tx.send_to(&rtp(seq, i as u32 + 1), s.a.local_rtp())
                        .expect("send");
                }
            }
        }
        let mut buf = [0u8; 2048];
        for (i, s) in streams.iter().enumerate() {
            let first = if i == 0 { 0 } else { 1 };
            for seq in first..=burst {
                let (n, from) =
                    s.rx.recv_from(&mut buf)
                        .unwrap_or_else(|e| panic!("stream {i}, packet {seq}: {e}"));
                assert_eq!(
                    (&buf[..n], from),
                    (&rtp(seq, i as u32 + 1)[..], s.b.local_rtp()),
                    "stream {i}, packet {seq}"
                );
            }
        }
        for (i, s) in streams.iter().enumerate() {
            let want = u64::from(burst) + u64::from(i == 0);
            wait_for("the counts", || {
                (s.a.stats().rtp_packets_in, s.b.stats().rtp_packets_out) == (want, want)
            });
        }
        assert_eq!(r.legs_per_thread(), [80]);
        drop(streams);
        wait_for("the ports back", || r.ports_in_use() == 0);
        assert_eq!(r.legs_per_thread(), [0]);
    }

    /// Issue 16: a burst on one leg, queued while the thread is stalled and followed by
    /// nothing, is relayed in full and in order: no datagram waits in the socket for a later
    /// packet (the loop reads one datagram per announcement and relies on the level-triggered
    /// socket being announced again while it holds data).
    #[test]
    fn a_burst_on_one_leg_is_all_relayed_without_a_later_packet() {
        let r = MediaRelay::with_threads(RelayConfig::new(LO, LO, 24800, 24899), 1).expect("relay");
        let s = stream(&r);
        let _tap = s.a.subscribe();
        let burst: u16 = 100;
        {
            let _stalled = stall(&s);
            for seq in 1..=burst {
                s.tx.send_to(&rtp(seq, 1), s.a.local_rtp()).expect("send");
            }
        }
        let mut buf = [0u8; 2048];
        for seq in 0..=burst {
            let (n, from) =
                s.rx.recv_from(&mut buf)
                    .unwrap_or_else(|e| panic!("packet {seq} of the burst: {e}"));
            assert_eq!(
                (&buf[..n], from),
                (&rtp(seq, 1)[..], s.b.local_rtp()),
                "packet {seq}"
            );
        }
        let want = u64::from(burst) + 1;
        wait_for("the counts", || {
            (s.a.stats().rtp_packets_in, s.b.stats().rtp_packets_out) == (want, want)
        });
    }

    /// A leg closed while packets wait in its socket relays and taps none of them, its tap
    /// closes, and its ports come back once its handles are gone; the thread goes on relaying
    /// its other streams.
    #[test]
    fn a_leg_closed_with_packets_queued_relays_none_of_them() {
        let r = MediaRelay::with_threads(RelayConfig::new(LO, LO, 24400, 24499), 1).expect("relay");
        let s = stream(&r);
        let other = stream(&r);
        let mut tap = s.a.subscribe();
        {
            let _stalled = stall(&s);
            for seq in 1..=10 {
                s.tx.send_to(&rtp(seq, 1), s.a.local_rtp()).expect("send");
            }
            s.a.close();
        }
        // The thread drops the leg (its count on the thread goes) and its tap.
        wait_for("the leg dropped", || r.legs_per_thread() == [3]);
        assert_eq!(tap.blocking_recv().as_deref(), Some(&rtp(0, 1)[..]));
        assert_eq!(tap.blocking_recv(), None, "the tap closes with the leg");
        let (sa, sb) = (s.a.stats(), s.b.stats());
        assert_eq!(sa.rtp_packets_in, 1, "queued packets read after close");
        assert_eq!(
            sb.rtp_packets_out, 0,
            "relayed after close (unbridged first)"
        );
        // The other stream still flows.
        other
            .tx
            .send_to(&rtp(5, 2), other.a.local_rtp())
            .expect("send");
        let mut buf = [0u8; 2048];
        let (n, from) = other.rx.recv_from(&mut buf).expect("other stream");
        assert_eq!((&buf[..n], from), (&rtp(5, 2)[..], other.b.local_rtp()));
        drop(s);
        wait_for("the ports back", || r.ports_in_use() == 2);
        assert_eq!(r.legs_per_thread(), [2]);
    }

    /// Threads named `name` in this process.
    fn threads_named(name: &str) -> usize {
        std::fs::read_dir("/proc/self/task")
            .expect("/proc/self/task")
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|comm| comm.trim_end() == name)
            .count()
    }

    /// A relay thread ends once its relay and the legs on it are gone (a gateway restarted
    /// in-process, or a test's relay, leaves no thread behind).
    #[test]
    fn a_relay_thread_ends_with_its_last_handle() {
        let name = "rtp-relay-end"; // unique: no other test names a thread so
        let ctl = spawn(name.to_owned(), Default::default(), Default::default()).expect("thread");
        wait_for("the thread started", || threads_named(name) == 1);
        drop(ctl);
        wait_for("the thread ended", || threads_named(name) == 0);
    }

    /// A leg built by hand, read by no thread, to drive an [`super::EventLoop`]'s turns.
    fn bare_leg(id: u64, port: u16) -> std::sync::Arc<super::LegShared> {
        use super::super::*;
        let ports = Arc::new(Mutex::new(
            PortAllocator::new(port, port + 99).expect("range"),
        ));
        let (port, (rtp, rtcp)) = lock(&ports).allocate(|p| bind_pair(LO, p)).expect("pair");
        Arc::new(LegShared {
            id,
            relay: 0,
            thread: None,
            local_rtp: SocketAddr::new(LO, port),
            local_rtcp: SocketAddr::new(LO, port + 1),
            sockets: Sockets {
                rtp: Sock::Loop(rtp),
                rtcp: Sock::Loop(rtcp),
                _lease: PortLease { ports, port },
            },
            strict: false,
            silence: DEFAULT_RELATCH_SILENCE,
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
        })
    }

    /// An event loop (no thread: the test drives its turns) over the RTP sockets of `legs`.
    fn loop_over(legs: &[std::sync::Arc<super::LegShared>]) -> super::EventLoop {
        use super::{poller, token, Entry, EventLoop, Stream, Task, LEG_INTEREST};
        use nix::sys::epoll::EpollEvent;
        let (epoll, waker) = poller().expect("poller");
        let (_tx, rx) = std::sync::mpsc::channel();
        let mut el = EventLoop::new(epoll.into(), waker.into(), rx);
        for leg in legs {
            el.epoll
                .add(
                    leg.sockets.rtp.get(),
                    EpollEvent::new(LEG_INTEREST, token(leg.id, Stream::Rtp)),
                )
                .expect("register");
            let task = Task::new(leg);
            el.legs.insert(
                leg.id,
                Entry {
                    shared: leg.clone(),
                    task,
                    _slot: None,
                    read_in: [0; 2],
                },
            );
        }
        el
    }

    /// One turn of `el` over what is ready now; the number of sockets announced.
    fn one_turn(el: &mut super::EventLoop) -> usize {
        use nix::sys::epoll::{EpollEvent, EpollTimeout};
        let mut events = vec![EpollEvent::empty(); super::EVENTS];
        let n = el
            .epoll
            .wait(&mut events, EpollTimeout::ZERO)
            .expect("wait");
        el.turn(events[..n].iter().map(EpollEvent::data));
        n
    }

    /// A flooded socket is read once a turn, and another socket announced with it is read in
    /// the first turn (no starvation); the flooded one stays announced until all of it is read
    /// (level-triggered: nothing is left without an event), then is no longer announced.
    #[test]
    fn a_flooded_socket_is_read_once_a_turn_beside_the_others() {
        use std::sync::atomic::Ordering::Relaxed;
        let legs = [bare_leg(1, 24600), bare_leg(2, 24700)];
        let mut el = loop_over(&legs);
        let phone = phone();
        let flood: u64 = 64;
        for seq in 0..flood {
            phone
                .send_to(&rtp(seq as u16, 1), legs[0].local_rtp)
                .expect("send");
        }
        phone.send_to(&rtp(0, 2), legs[1].local_rtp).expect("send");
        let read = |i: usize| legs[i].c.rtp_packets_in.load(Relaxed);
        let turn = one_turn;
        assert_eq!(turn(&mut el), 2, "both sockets announced");
        assert_eq!(
            (read(0), read(1)),
            (1, 1),
            "one datagram each in the first turn"
        );
        for t in 2..=flood {
            assert_eq!(
                turn(&mut el),
                1,
                "turn {t}: the flooded socket announced again"
            );
            assert_eq!((read(0), read(1)), (t, 1), "turn {t}");
        }
        assert_eq!(turn(&mut el), 0, "all read: nothing announced");
    }

    /// Coalescing (a turn per period), a socket announced in two turns in a row is read up to
    /// BURST datagrams a turn, until it would block; one announced once is read once. So a
    /// flood is read at BURST per period, not 1, and the phone's packets queued among the
    /// flood's are not left to the kernel's drops (which would let the flooder's source
    /// re-latch the stream after the re-latch silence).
    #[test]
    fn coalescing_a_socket_announced_turn_after_turn_is_read_in_bursts() {
        use super::BURST;
        use std::sync::atomic::Ordering::Relaxed;
        let legs = [bare_leg(1, 24800), bare_leg(2, 24900)];
        let mut el = loop_over(&legs);
        el.coalesce = Duration::from_micros(200);
        let phone = phone();
        let flood = 3 * BURST as u64 + 5;
        for seq in 0..flood {
            phone
                .send_to(&rtp(seq as u16, 1), legs[0].local_rtp)
                .expect("send");
        }
        phone.send_to(&rtp(0, 2), legs[1].local_rtp).expect("send");
        let read = |i: usize| legs[i].c.rtp_packets_in.load(Relaxed);
        assert_eq!(one_turn(&mut el), 2, "both announced");
        assert_eq!((read(0), read(1)), (1, 1), "one each: not read last turn");
        let b = BURST as u64;
        for (turn, want) in [(2, 1 + b), (3, 1 + 2 * b), (4, 1 + 3 * b), (5, flood)] {
            assert_eq!(one_turn(&mut el), 1, "turn {turn}");
            assert_eq!((read(0), read(1)), (want, 1), "turn {turn}");
        }
        assert_eq!(one_turn(&mut el), 0, "all read");
        // Quiet for a turn, then one datagram: read once again, not in a burst.
        phone.send_to(&rtp(99, 1), legs[0].local_rtp).expect("send");
        phone
            .send_to(&rtp(100, 1), legs[0].local_rtp)
            .expect("send");
        assert_eq!(one_turn(&mut el), 1);
        assert_eq!(read(0), flood + 1, "one read after a quiet turn");
    }
}

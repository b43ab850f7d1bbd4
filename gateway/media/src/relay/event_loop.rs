//! A relay thread's event loop (issue 16): one `mio::Poll` over the sockets of every leg
//! placed on the thread, instead of a tokio task per leg.
//!
//! Each turn waits in `epoll_wait` for up to [`EVENTS`] ready sockets and reads each one until
//! it would block ([`BATCH`] datagrams per read, a socket read at most twice a turn, so one
//! flooded socket cannot starve the others: a socket left with data is read again in the next
//! turn without waiting, and is left over at most once), handing
//! every datagram to the leg's [`Task`] — the same latching, statistics, taps and forwarding as
//! on the tokio path — which sends it out of the partner leg's socket at once. One receive
//! buffer per thread, allocated when the thread starts; no task, waker or allocation per packet.
//!
//! A leg's sockets are registered (readable only, tokens from the leg's id) by
//! `MediaRelay::open` on the caller's thread, so a failure is the caller's error; the loop then
//! takes the leg over with [`Cmd::Add`] and reads it once at once (mio is edge-triggered: what
//! arrived before is not announced again). [`Cmd::Remove`] (from `Leg::close` and the last
//! handle's drop) deregisters it, closes its subscriptions and drops the loop's reference, so
//! its sockets close and its ports return once the handles are gone. The thread ends when its
//! relay and every leg on it are dropped.

use std::collections::HashMap;
use std::io;
use std::os::fd::AsRawFd;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token, Waker};

use super::{lock, LegShared, Stream, Task, ThreadSlot, MAX_PACKET_SIZE};

/// Ready sockets taken per `epoll_wait`.
const EVENTS: usize = 1024;
/// Datagrams read from one socket per turn before the other ready sockets are served.
const BATCH: usize = 32;
/// The waker's token; legs' tokens are `id << 1 | stream` with ids counted from 1.
const WAKE: Token = Token(usize::MAX);

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
    registry: Registry,
    tx: Option<Sender<Cmd>>,
    /// Shared with the thread: closing its eventfd here would drop a wake-up not yet read.
    waker: Arc<Waker>,
}

impl LoopCtl {
    /// Registers `leg`'s sockets with the thread's poll, readable only.
    pub(super) fn register(&self, leg: &LegShared) -> io::Result<()> {
        for (stream, socket) in [
            (Stream::Rtp, leg.sockets.rtp.get()),
            (Stream::Rtcp, leg.sockets.rtcp.get()),
        ] {
            let fd = socket.as_raw_fd();
            self.registry.register(
                &mut SourceFd(&fd),
                token(leg.id, stream),
                Interest::READABLE,
            )?;
        }
        Ok(())
    }

    /// Hands `cmd` to the thread and wakes it; gives it back if the thread has ended.
    pub(super) fn send(&self, cmd: Cmd) -> Result<(), Cmd> {
        let Some(tx) = &self.tx else {
            return Err(cmd);
        };
        tx.send(cmd).map_err(|e| e.0)?;
        if let Err(e) = self.waker.wake() {
            tracing::warn!(error = %e, "cannot wake a relay thread");
        }
        Ok(())
    }
}

impl Drop for LoopCtl {
    /// The last handle gone: the channel closes and the thread, woken, sees it and ends.
    fn drop(&mut self) {
        drop(self.tx.take());
        // An error here only means the thread is gone already.
        let _ = self.waker.wake();
    }
}

fn token(id: u64, stream: Stream) -> Token {
    let id = usize::try_from(id).unwrap_or(usize::MAX >> 1);
    Token((id << 1) | usize::from(stream == Stream::Rtcp))
}

/// The leg id of a socket's token.
fn leg_of(t: Token) -> u64 {
    (t.0 >> 1) as u64
}

/// Starts a relay thread named `name`.
pub(super) fn spawn(name: String) -> io::Result<LoopCtl> {
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
    let registry = poll.registry().try_clone()?;
    let (tx, rx) = mpsc::channel();
    let _waker = waker.clone();
    std::thread::Builder::new().name(name).spawn(move || {
        EventLoop {
            _waker,
            poll,
            rx,
            legs: HashMap::new(),
            again: Vec::new(),
            buf: vec![0; MAX_PACKET_SIZE + 1].into_boxed_slice(),
        }
        .run()
    })?;
    Ok(LoopCtl {
        registry,
        tx: Some(tx),
        waker,
    })
}

/// A leg the thread relays: its shared state and its private per-packet state.
struct Entry {
    shared: Arc<LegShared>,
    task: Task,
    /// Whether the RTP, the RTCP socket is in [`EventLoop::again`].
    again: [bool; 2],
    _slot: Option<ThreadSlot>,
}

struct EventLoop {
    _waker: Arc<Waker>,
    poll: Poll,
    rx: Receiver<Cmd>,
    legs: HashMap<u64, Entry>,
    /// Sockets to read in the next turn without an event: their last turn ended at [`BATCH`]
    /// (more may be queued), or their leg was just added.
    again: Vec<Token>,
    /// One byte over the limit, so that an oversize datagram is seen (it is truncated).
    buf: Box<[u8]>,
}

impl EventLoop {
    fn run(mut self) {
        let mut events = Events::with_capacity(EVENTS);
        let mut ready: Vec<Token> = Vec::with_capacity(EVENTS);
        loop {
            let timeout = (!self.again.is_empty()).then_some(Duration::ZERO);
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    // Never seen (EBADF, EFAULT, EINVAL cannot happen here); do not spin.
                    tracing::error!(error = %e, "relay thread: epoll_wait failed");
                    std::thread::sleep(Duration::from_millis(10));
                }
                continue;
            }
            // Commands first: a leg removed in this turn is not read in it.
            if !self.commands() {
                break;
            }
            self.turn(events.iter().map(|e| e.token()), &mut ready);
        }
        let ids: Vec<u64> = self.legs.keys().copied().collect();
        for id in ids {
            self.remove(id);
        }
        tracing::debug!("relay thread ended");
    }

    /// Reads the sockets left over from the last turn, then those of `events`. A socket is
    /// read at most twice in a turn (left over, and announced again) and left over at most
    /// once, so a flooded socket neither takes an ever larger share of the turn nor grows the
    /// list.
    fn turn(&mut self, events: impl Iterator<Item = Token>, ready: &mut Vec<Token>) {
        ready.clear();
        for t in self.again.drain(..) {
            if let Some(e) = self.legs.get_mut(&leg_of(t)) {
                e.again[t.0 & 1] = false;
            }
            ready.push(t);
        }
        ready.extend(events.filter(|t| *t != WAKE));
        for &t in ready.iter() {
            // A panic in one leg's packet handling (none is known: this is a net) ends that
            // leg only, as it ended only its task on the tokio path.
            let drained = std::panic::catch_unwind(AssertUnwindSafe(|| self.drain(t)));
            if drained.is_err() {
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
                    let id = shared.id;
                    self.again.push(token(id, Stream::Rtp));
                    self.again.push(token(id, Stream::Rtcp));
                    let task = Task::new(&shared);
                    self.legs.insert(
                        id,
                        Entry {
                            shared,
                            task,
                            again: [true; 2],
                            _slot: slot,
                        },
                    );
                }
                Ok(Cmd::Remove(id)) => self.remove(id),
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return false,
            }
        }
    }

    fn remove(&mut self, id: u64) {
        let Some(entry) = self.legs.remove(&id) else {
            return;
        };
        let s = &entry.shared;
        for socket in [s.sockets.rtp.get(), s.sockets.rtcp.get()] {
            let fd = socket.as_raw_fd();
            if let Err(e) = self.poll.registry().deregister(&mut SourceFd(&fd)) {
                tracing::debug!(leg = id, error = %e, "relay thread: deregister failed");
            }
        }
        // Recorders see the end of the stream.
        lock(&s.subscribers).clear();
        s.has_subscribers.store(false, Ordering::Release);
        tracing::debug!(leg = id, "media leg closed");
        // The entry drops here: the leg no longer counts on the thread, and its sockets and
        // ports go once its handles are gone too.
    }

    /// Reads the socket of token `t` until it would block, [`BATCH`] datagrams at most.
    fn drain(&mut self, t: Token) {
        let id = leg_of(t);
        let stream = match t.0 & 1 {
            0 => Stream::Rtp,
            _ => Stream::Rtcp,
        };
        let Some(Entry {
            shared,
            task,
            again,
            ..
        }) = self.legs.get_mut(&id)
        else {
            return;
        };
        let socket = match stream {
            Stream::Rtp => shared.sockets.rtp.get(),
            Stream::Rtcp => shared.sockets.rtcp.get(),
        };
        for _ in 0..BATCH {
            // Closed: nothing more is relayed or tapped (its Remove is on the way).
            if shared.closed.load(Ordering::Acquire) {
                return;
            }
            match socket.recv_from(&mut self.buf) {
                Ok((n, src)) => match stream {
                    Stream::Rtp => task.on_rtp_port(shared, &self.buf[..n], src),
                    Stream::Rtcp => task.on_rtcp_port(shared, &self.buf[..n], src),
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // An ICMP error reported on the socket (e.g. a port unreachable for an earlier
                // send) or a signal: the datagrams behind it are still to be read.
                Err(e) => tracing::debug!(leg = id, error = %e, "RTP receive error"),
            }
        }
        if !again[t.0 & 1] {
            again[t.0 & 1] = true;
            self.again.push(t);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, UdpSocket};
    use std::time::{Duration, Instant};

    use super::super::{bridge, lock, Leg, MediaRelay, RelayConfig};
    use super::{spawn, BATCH};

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

    /// Issue 16: one thread, 40 streams; while the thread is stalled every stream queues more
    /// than a turn's batch, then all of it arrives, in order per stream, from the right leg,
    /// and every leg counts it (a socket left with data after its batch is read again without
    /// a new event: mio is edge-triggered).
    #[test]
    fn a_burst_on_many_legs_of_one_thread_all_arrives_in_order_per_stream() {
        let r = MediaRelay::with_threads(RelayConfig::new(LO, LO, 24000, 24399), 1).expect("relay");
        let streams: Vec<Stream> = (0..40).map(|_| stream(&r)).collect();
        let _tap = streams[0].a.subscribe();
        let burst = BATCH as u16 + 8;
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
        let ctl = spawn(name.to_owned()).expect("thread");
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

    /// A socket flooded faster than a turn's batch, and announced again every turn, is read
    /// at most twice a turn and left over at most once (the list of left-over sockets does
    /// not grow with the flood), and all of it is read.
    #[test]
    fn a_flooded_socket_is_left_over_once_per_turn() {
        use super::{token, Entry, EventLoop, Stream, Task, WAKE};
        let poll = mio::Poll::new().expect("poll");
        let waker = std::sync::Arc::new(mio::Waker::new(poll.registry(), WAKE).expect("waker"));
        let (_tx, rx) = std::sync::mpsc::channel();
        let mut el = EventLoop {
            _waker: waker,
            poll,
            rx,
            legs: std::collections::HashMap::new(),
            again: Vec::new(),
            buf: vec![0; 2049].into_boxed_slice(),
        };
        let leg = bare_leg(1, 24600);
        let task = Task::new(&leg);
        let entry = Entry {
            shared: leg.clone(),
            task,
            again: [false; 2],
            _slot: None,
        };
        el.legs.insert(1, entry);
        let flood = phone();
        let sent = 4 * BATCH as u16;
        for seq in 0..sent {
            flood.send_to(&rtp(seq, 1), leg.local_rtp).expect("send");
        }
        let t = token(1, Stream::Rtp);
        let mut ready = Vec::new();
        for turn in 1..=6 {
            el.turn(std::iter::once(t), &mut ready);
            assert!(el.again.len() <= 1, "turn {turn}: left over {:?}", el.again);
        }
        assert!(el.again.is_empty(), "drained: nothing left over");
        let read = leg
            .c
            .rtp_packets_in
            .load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(read, u64::from(sent));
    }
}

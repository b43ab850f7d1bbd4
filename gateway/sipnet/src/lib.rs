//! SIP transports: UDP and TCP listeners on tokio (RFC 3261 §18), on top of the sans-IO
//! [`framing`] (stream decoder, keep-alive) and [`via`] (`received`/`rport`, response routing).
//!
//! [`Transports::bind`] opens every configured listener and returns one handle plus one
//! [`mpsc::Receiver`] of [`TransportEvent`]s for all of them:
//!
//! * a parsed message ([`Incoming`]); requests already carry `received`/`rport` in their top
//!   Via ([`via::stamp_received`]);
//! * a message that did not parse or frame ([`BadMessage`]), with the ready-made `400`/`501`/
//!   `505`/`513` when it was an answerable request; answering is the caller's decision.
//!
//! A parse error costs one datagram (UDP) or one message (TCP; the stream resynchronises, see
//! [`framing`], so a connection is never closed for bad input). UDP datagrams over the size
//! limit are dropped and counted ([`Stats`]). TCP connections, accepted or opened by
//! [`Transports::send`], are kept in a table by peer address so that responses and requests to
//! a phone behind NAT reuse the connection it opened; a connection idle (nothing read or
//! written) for [`TransportConfig::tcp_idle_timeout`] is closed. Dropping the last
//! [`Transports`] handle stops every task and closes every socket.
//!
//! TLS ([`tls`]) runs over the same connection code as TCP. Inbound stream connections are
//! bounded: [`TransportConfig::max_connections`] in total and
//! [`TransportConfig::max_connections_per_source`] per IP (more are closed at accept and
//! counted), [`TransportConfig::header_timeout`] for a message (and an inbound connection's
//! first message, and a TLS handshake) to complete. A request with a `sips:` Request-URI that
//! did not come over TLS is a [`BadMessage`] with a ready 416 (RFC 3261 §26.2).

mod driver;
pub mod loglimit;
mod tcp;
pub mod tls;
mod udp;

pub use driver::{
    drive, earliest, queue_wait, receive, receive_overload, screen, sleep_until, transmit, Peer,
    Screened, UserAgent,
};
pub use tls::{TlsConfig, TlsError, TlsState};

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use framing::FramingError;
use sip_core::message::{self, response_for, ParseError, Response, SipMessage, MAX_MESSAGE_SIZE};
use sip_core::{framing, via};

/// Identifies one TCP connection for the lifetime of a [`Transports`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub u64);

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tcp#{}", self.0)
    }
}

/// The transport a message came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// A UDP datagram.
    Udp,
    /// A TCP connection.
    Tcp(ConnectionId),
    /// A TLS connection (over TCP).
    Tls(ConnectionId),
}

impl Transport {
    /// Whether the transport is reliable (§18.2.2: respond on the same connection).
    pub fn is_reliable(&self) -> bool {
        matches!(self, Transport::Tcp(_) | Transport::Tls(_))
    }

    /// Whether the transport is TLS (RFC 3261 §26.2: what a `sips:` URI needs).
    pub fn is_secure(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }

    /// The connection, for a stream transport.
    pub fn connection(&self) -> Option<ConnectionId> {
        match self {
            Transport::Udp => None,
            Transport::Tcp(id) | Transport::Tls(id) => Some(*id),
        }
    }

    /// The transport's name in a Via (`UDP`, `TCP`, `TLS`).
    pub fn via_name(&self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp(_) => "TCP",
            Transport::Tls(_) => "TLS",
        }
    }

    /// The `transport` URI parameter for a Contact reached over this transport (none for UDP).
    pub fn uri_param(&self) -> Option<&'static str> {
        match self {
            Transport::Udp => None,
            Transport::Tcp(_) => Some("tcp"),
            Transport::Tls(_) => Some("tls"),
        }
    }
}

/// A parsed message from the network.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// The message (a request's top Via stamped with `received`/`rport`).
    pub message: SipMessage,
    /// Who sent it.
    pub source: SocketAddr,
    /// How it came.
    pub transport: Transport,
    /// The local address it arrived at.
    pub local: SocketAddr,
    /// When the transport read it (the core's queueing delay is measured from here).
    pub received: std::time::Instant,
    /// How long it waited in the kernel's socket buffer before the transport read it (UDP,
    /// from the kernel's `SO_TIMESTAMPNS` stamp), counted only when the listener read it
    /// behind another datagram without the socket going empty in between; zero otherwise and
    /// on streams. Overload control counts it when the message left the core's queue empty
    /// ([`queue_wait`]).
    pub socket_wait: std::time::Duration,
}

/// Why a message was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadMessageError {
    /// [`message::parse`] refused it.
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// The stream framing dropped it.
    #[error(transparent)]
    Framing(#[from] FramingError),
    /// A `sips:` Request-URI over a transport that is not TLS (RFC 3261 §26.2): 416.
    #[error("sips: Request-URI over a transport that is not TLS")]
    InsecureSips,
}

/// A message that could not be delivered.
#[derive(Debug, Clone)]
pub struct BadMessage {
    /// Who sent it.
    pub source: SocketAddr,
    /// How it came.
    pub transport: Transport,
    /// The local address it arrived at.
    pub local: SocketAddr,
    /// What was wrong.
    pub error: BadMessageError,
    /// The response to send when it was an answerable request (its Via already stamped).
    pub reply: Option<Response>,
}

/// What the transports deliver.
#[derive(Debug, Clone)]
pub enum TransportEvent {
    /// A message.
    Message(Incoming),
    /// A rejected message.
    BadMessage(BadMessage),
}

/// Where [`Transports::send`] sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A datagram to `peer`, from the UDP listener bound to `local` if given and known,
    /// otherwise from the first UDP listener.
    Udp {
        /// Destination.
        peer: SocketAddr,
        /// The listener to send from (the one a request came in on, for symmetric NATs).
        local: Option<SocketAddr>,
    },
    /// Over TCP to `peer`: the existing connection with that peer, or a new one.
    Tcp(SocketAddr),
    /// Over this TCP or TLS connection; if it is gone, a new TCP connection to `fallback` if
    /// given.
    Connection {
        /// The connection.
        id: ConnectionId,
        /// Where to connect if it is closed.
        fallback: Option<SocketAddr>,
    },
    /// Over TLS to `peer`: the existing TLS connection with that peer, or a new one (its
    /// certificate verified against [`TlsConfig::ca`], for the name given by
    /// [`Transports::set_tls_name`], else for its IP address).
    Tls(SocketAddr),
    /// Over this TLS connection; if it is gone, a new TLS connection to `fallback` if given.
    TlsConnection {
        /// The connection.
        id: ConnectionId,
        /// Where to connect if it is closed.
        fallback: Option<SocketAddr>,
    },
}

/// Configuration of [`Transports::bind`].
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// UDP listeners (port 0: ephemeral).
    pub udp: Vec<SocketAddr>,
    /// TCP listeners.
    pub tcp: Vec<SocketAddr>,
    /// TLS listeners (need [`TransportConfig::tls_files`]).
    pub tls: Vec<SocketAddr>,
    /// The TLS identity and roots (listeners, and connections we open over TLS).
    pub tls_files: Option<TlsConfig>,
    /// A TCP or TLS connection with no traffic for this long is closed.
    pub tcp_idle_timeout: Duration,
    /// A connection is closed when a message it began is not complete this long after, or
    /// (inbound) when its first message, or its TLS handshake, is not complete this long after
    /// it was accepted: a peer trickling bytes or holding a silent connection loses it.
    pub header_timeout: Duration,
    /// Inbound TCP + TLS connections open at once; more are closed at accept and counted.
    pub max_connections: usize,
    /// Inbound TCP + TLS connections open at once from one IP address.
    pub max_connections_per_source: usize,
    /// The largest message accepted (datagram or framed message); at most
    /// [`MAX_MESSAGE_SIZE`], which [`message::parse`] enforces anyway.
    pub max_message_size: usize,
    /// Capacity of the event channel (back-pressure: a full channel stalls the readers).
    pub channel_capacity: usize,
    /// Timeout for opening an outgoing TCP connection.
    pub connect_timeout: Duration,
    /// Receive buffer asked for each UDP listener (`SO_RCVBUF`, bytes; the kernel caps it at
    /// `net.core.rmem_max` and books twice the value; 0 keeps the system's default). A burst
    /// that outruns the reader waits there instead of being dropped by the kernel, which a
    /// phone sees as a lost request and pays with a 500 ms retransmission.
    pub udp_recv_buffer: usize,
}

/// The default [`TransportConfig::udp_recv_buffer`]: 1 MiB asked (2 MiB booked, about 2,000
/// datagrams of a few hundred bytes), against Linux's default of 208 KiB. Kamailio's
/// start-up probe asks up to 256 KiB (its `maxbuffer`).
pub const UDP_RECV_BUFFER: usize = 1 << 20;

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            udp: Vec::new(),
            tcp: Vec::new(),
            tls: Vec::new(),
            tls_files: None,
            tcp_idle_timeout: Duration::from_secs(300),
            header_timeout: Duration::from_secs(10),
            max_connections: 4096,
            max_connections_per_source: 32,
            max_message_size: MAX_MESSAGE_SIZE,
            channel_capacity: 1024,
            connect_timeout: Duration::from_secs(10),
            udp_recv_buffer: UDP_RECV_BUFFER,
        }
    }
}

/// The stream side of a [`TransportConfig`] an application exposes in its configuration: TLS
/// listeners and files, and the bounds on connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamConfig {
    /// TLS listeners.
    pub tls: Vec<SocketAddr>,
    /// TLS identity and roots.
    pub tls_files: Option<TlsConfig>,
    /// See [`TransportConfig::tcp_idle_timeout`].
    pub idle_timeout: Duration,
    /// See [`TransportConfig::header_timeout`].
    pub header_timeout: Duration,
    /// See [`TransportConfig::max_connections`].
    pub max_connections: usize,
    /// See [`TransportConfig::max_connections_per_source`].
    pub max_connections_per_source: usize,
}

impl Default for StreamConfig {
    fn default() -> Self {
        let t = TransportConfig::default();
        StreamConfig {
            tls: t.tls,
            tls_files: t.tls_files,
            idle_timeout: t.tcp_idle_timeout,
            header_timeout: t.header_timeout,
            max_connections: t.max_connections,
            max_connections_per_source: t.max_connections_per_source,
        }
    }
}

impl StreamConfig {
    /// Puts these settings into `t`.
    pub fn apply(&self, t: &mut TransportConfig) {
        t.tls = self.tls.clone();
        t.tls_files = self.tls_files.clone();
        t.tcp_idle_timeout = self.idle_timeout;
        t.header_timeout = self.header_timeout;
        t.max_connections = self.max_connections;
        t.max_connections_per_source = self.max_connections_per_source;
    }
}

/// Counters (monotonic).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// UDP datagrams dropped for size.
    pub udp_too_large: u64,
    /// UDP datagrams that did not parse.
    pub udp_bad: u64,
    /// UDP datagrams the kernel dropped at the listeners' sockets because their receive
    /// buffers were full (`SO_RXQ_OVFL`, learnt with the next datagram read).
    pub udp_kernel_drops: u64,
    /// TCP messages that did not frame or parse.
    pub tcp_bad: u64,
    /// Garbage bytes skipped on TCP streams.
    pub tcp_garbage_bytes: u64,
    /// CRLF CRLF keep-alives answered.
    pub pings: u64,
    /// TCP connections accepted.
    pub tcp_accepted: u64,
    /// TCP connections opened by us.
    pub tcp_connected: u64,
    /// TCP connections closed for idleness.
    pub tcp_idle_closed: u64,
    /// Inbound connections closed at accept: over a connection cap.
    pub tcp_refused: u64,
    /// Connections closed because a message (or the TLS handshake) was not complete in time.
    pub tcp_header_timeout: u64,
    /// TLS handshakes completed on our listeners.
    pub tls_accepted: u64,
    /// TLS connections we opened.
    pub tls_connected: u64,
    /// TLS handshakes that failed or timed out (either side).
    pub tls_failed: u64,
    /// `sips:` requests refused for coming over a transport that is not TLS.
    pub sips_refused: u64,
}

#[derive(Debug, Default)]
struct Counters {
    udp_too_large: AtomicU64,
    udp_bad: AtomicU64,
    udp_kernel_drops: AtomicU64,
    tcp_bad: AtomicU64,
    tcp_garbage_bytes: AtomicU64,
    pings: AtomicU64,
    tcp_accepted: AtomicU64,
    tcp_connected: AtomicU64,
    tcp_idle_closed: AtomicU64,
    tcp_refused: AtomicU64,
    tcp_header_timeout: AtomicU64,
    tls_accepted: AtomicU64,
    tls_connected: AtomicU64,
    tls_failed: AtomicU64,
    sips_refused: AtomicU64,
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Bytes to write, and where to report the result (none for pongs).
type WriteRequest = (Vec<u8>, Option<oneshot::Sender<io::Result<()>>>);

#[derive(Debug, Clone)]
struct ConnHandle {
    peer: SocketAddr,
    tx: mpsc::Sender<WriteRequest>,
    secure: bool,
}

#[derive(Debug, Default)]
struct Table {
    by_id: HashMap<ConnectionId, ConnHandle>,
    by_peer: HashMap<SocketAddr, ConnectionId>,
}

/// Inbound connections open, in total and per source address.
#[derive(Debug, Default)]
struct Slots {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

#[derive(Debug)]
struct Shared {
    config: TransportConfig,
    events: mpsc::Sender<TransportEvent>,
    counters: Arc<Counters>,
    conns: Mutex<Table>,
    next_id: AtomicU64,
    shutdown: watch::Receiver<()>,
    slots: Mutex<Slots>,
    tls: Option<Arc<TlsState>>,
    tls_names: Mutex<HashMap<SocketAddr, String>>,
    /// Overload control at ingress (issue 16): set by the core that measures.
    gate: std::sync::OnceLock<Arc<sip_core::overload::Gate>>,
}

impl Shared {
    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        // A panic while holding the lock cannot leave the table inconsistent (plain inserts).
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn tls_name(&self, peer: SocketAddr) -> Option<String> {
        self.tls_names
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&peer)
            .cloned()
    }

    fn register(
        &self,
        peer: SocketAddr,
        tx: mpsc::Sender<WriteRequest>,
        secure: bool,
    ) -> ConnectionId {
        let id = ConnectionId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let mut t = self.table();
        t.by_id.insert(id, ConnHandle { peer, tx, secure });
        t.by_peer.insert(peer, id);
        id
    }

    fn unregister(&self, id: ConnectionId) {
        let mut t = self.table();
        if let Some(h) = t.by_id.remove(&id) {
            if t.by_peer.get(&h.peer) == Some(&id) {
                t.by_peer.remove(&h.peer);
            }
        }
    }
}

/// The reply for a rejected message, its Via stamped like a received request's.
fn stamped_reply(reply: Option<&Response>, source: SocketAddr) -> Option<Response> {
    let mut reply = reply?.clone();
    via::stamp_received(&mut reply.headers, source);
    Some(reply)
}

/// Counts a refused `sips:` request.
fn note_refusal(shared: &Shared, event: &TransportEvent) {
    if let TransportEvent::BadMessage(BadMessage {
        error: BadMessageError::InsecureSips,
        ..
    }) = event
    {
        bump(&shared.counters.sips_refused, 1);
    }
}

/// Parses one framed message or datagram into an event.
fn decode(
    bytes: &[u8],
    source: SocketAddr,
    transport: Transport,
    local: SocketAddr,
    socket_wait: std::time::Duration,
) -> TransportEvent {
    match message::parse(bytes) {
        Ok(mut msg) => {
            if let SipMessage::Request(req) = &mut msg {
                via::stamp_received(&mut req.headers, source);
                if req.uri.scheme == Some(rsip::Scheme::Sips) && !transport.is_secure() {
                    // RFC 3261 §26.2: a sips: request travels over TLS only. 416 (the scheme
                    // is not served on this transport); never an answer to an ACK.
                    let reply = (req.method != rsip::Method::Ack)
                        .then(|| response_for(req, 416, "Unsupported URI Scheme"));
                    return TransportEvent::BadMessage(BadMessage {
                        source,
                        transport,
                        local,
                        reply,
                        error: BadMessageError::InsecureSips,
                    });
                }
            }
            TransportEvent::Message(Incoming {
                message: msg,
                source,
                transport,
                local,
                received: std::time::Instant::now(),
                socket_wait,
            })
        }
        Err(e) => TransportEvent::BadMessage(BadMessage {
            source,
            transport,
            local,
            reply: stamped_reply(e.reply(), source),
            error: BadMessageError::Parse(e),
        }),
    }
}

/// The reply for a request the framing dropped: 513 for oversize, 400 otherwise, when the
/// header block parses as a request.
fn framing_reply(
    error: &FramingError,
    head: Option<&[u8]>,
    source: SocketAddr,
) -> Option<Response> {
    let head = framing::head_without_content_length(head?);
    let (code, reason) = match error {
        FramingError::TooLarge { .. } => (513, "Message Too Large"),
        FramingError::MissingContentLength => (400, "Missing Content-Length"),
        FramingError::BadContentLength(_) => (400, "Bad Content-Length"),
    };
    match message::parse(&head) {
        Ok(SipMessage::Request(req)) => {
            let mut r = response_for(&req, code, reason);
            via::stamp_received(&mut r.headers, source);
            Some(r)
        }
        _ => None,
    }
}

/// The local addresses actually bound.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalAddrs {
    /// UDP listeners, in configuration order.
    pub udp: Vec<SocketAddr>,
    /// TCP listeners, in configuration order.
    pub tcp: Vec<SocketAddr>,
    /// TLS listeners, in configuration order.
    pub tls: Vec<SocketAddr>,
}

/// The handle on all listeners and connections. Cheap to clone; the last clone dropped stops
/// everything.
#[derive(Debug, Clone)]
pub struct Transports {
    shared: Arc<Shared>,
    udp: Arc<Vec<Arc<tokio::net::UdpSocket>>>,
    local: Arc<LocalAddrs>,
    _stop: Arc<watch::Sender<()>>,
}

/// A UDP listener on `addr` with a receive buffer of `recv_buffer` bytes asked for (see
/// [`TransportConfig::udp_recv_buffer`]); a refused size is logged and the listener keeps
/// the system's default.
fn bind_udp(addr: SocketAddr, recv_buffer: usize) -> io::Result<tokio::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if recv_buffer > 0 {
        if let Err(e) = s.set_recv_buffer_size(recv_buffer) {
            tracing::warn!(%addr, recv_buffer, error = %e, "UDP receive buffer refused; the system default stays");
        }
    }
    let booked = s.recv_buffer_size().unwrap_or(0);
    if recv_buffer > 0 && booked < recv_buffer {
        tracing::info!(%addr, asked = recv_buffer, booked,
            "UDP receive buffer capped by the kernel (sysctl net.core.rmem_max)");
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    tokio::net::UdpSocket::from_std(s.into())
}

impl Transports {
    /// Binds every listener in `config` and starts their tasks (needs a tokio runtime).
    pub async fn bind(
        config: TransportConfig,
    ) -> io::Result<(Transports, mpsc::Receiver<TransportEvent>)> {
        let mut config = config;
        config.max_message_size = config.max_message_size.clamp(64, MAX_MESSAGE_SIZE);
        let (events, rx) = mpsc::channel(config.channel_capacity.max(1));
        let (stop, shutdown) = watch::channel(());
        let mut udp_sockets = Vec::new();
        let mut local = LocalAddrs::default();
        for addr in &config.udp {
            let s = Arc::new(bind_udp(*addr, config.udp_recv_buffer)?);
            local.udp.push(s.local_addr()?);
            udp_sockets.push(s);
        }
        let mut tcp_listeners = Vec::new();
        for addr in &config.tcp {
            let l = tokio::net::TcpListener::bind(addr).await?;
            local.tcp.push(l.local_addr()?);
            tcp_listeners.push((l, false));
        }
        let tls = match &config.tls_files {
            Some(files) => Some(Arc::new(
                TlsState::new(files.clone()).map_err(io::Error::other)?,
            )),
            None if !config.tls.is_empty() => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a TLS listener needs a certificate and a key",
                ));
            }
            None => None,
        };
        for addr in &config.tls {
            let l = tokio::net::TcpListener::bind(addr).await?;
            local.tls.push(l.local_addr()?);
            tcp_listeners.push((l, true));
        }
        let shared = Arc::new(Shared {
            config,
            events,
            counters: Arc::default(),
            conns: Mutex::new(Table::default()),
            next_id: AtomicU64::new(1),
            shutdown,
            slots: Mutex::new(Slots::default()),
            tls,
            tls_names: Mutex::new(HashMap::new()),
            gate: std::sync::OnceLock::new(),
        });
        for s in &udp_sockets {
            tokio::spawn(udp::run(shared.clone(), s.clone()));
        }
        for (l, secure) in tcp_listeners {
            tokio::spawn(tcp::accept_loop(shared.clone(), l, secure));
        }
        if let Some(tls) = &shared.tls {
            if !tls.reload_interval().is_zero() {
                tokio::spawn(watch_tls_files(tls.clone(), shared.shutdown.clone()));
            }
        }
        Ok((
            Transports {
                shared,
                udp: Arc::new(udp_sockets),
                local: Arc::new(local),
                _stop: Arc::new(stop),
            },
            rx,
        ))
    }

    /// One UDP listener on `addr`, everything else default (the ACD node, voicemail): the
    /// transports, their events and the bound address (an ephemeral port resolved).
    pub async fn bind_udp(
        addr: SocketAddr,
    ) -> io::Result<(Transports, mpsc::Receiver<TransportEvent>, SocketAddr)> {
        let (t, rx) = Transports::bind(TransportConfig {
            udp: vec![addr],
            tcp: Vec::new(),
            ..TransportConfig::default()
        })
        .await?;
        let local = t.local_addrs().udp.first().copied().unwrap_or(addr);
        Ok((t, rx, local))
    }

    /// The bound addresses (ephemeral ports resolved).
    pub fn local_addrs(&self) -> &LocalAddrs {
        &self.local
    }

    /// Applies `gate` (the overload control of the core reading these transports) to every
    /// UDP request as it arrives: refused ones are answered `503` + `Retry-After` from the
    /// listener, dropped ones never reach the core. Set once; later calls are ignored.
    pub fn set_overload_gate(&self, gate: Arc<sip_core::overload::Gate>) {
        let _ = self.shared.gate.set(gate);
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.stats_handle().read()
    }

    /// A handle on the counters that does not keep the sockets open (for metrics).
    pub fn stats_handle(&self) -> StatsHandle {
        StatsHandle(self.shared.counters.clone())
    }
}

/// Reads the transports' counters ([`Transports::stats_handle`]).
#[derive(Debug, Clone)]
pub struct StatsHandle(Arc<Counters>);

impl StatsHandle {
    /// A snapshot of the counters.
    pub fn read(&self) -> Stats {
        let c = &self.0;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            udp_too_large: g(&c.udp_too_large),
            udp_bad: g(&c.udp_bad),
            udp_kernel_drops: g(&c.udp_kernel_drops),
            tcp_bad: g(&c.tcp_bad),
            tcp_garbage_bytes: g(&c.tcp_garbage_bytes),
            pings: g(&c.pings),
            tcp_accepted: g(&c.tcp_accepted),
            tcp_connected: g(&c.tcp_connected),
            tcp_idle_closed: g(&c.tcp_idle_closed),
            tcp_refused: g(&c.tcp_refused),
            tcp_header_timeout: g(&c.tcp_header_timeout),
            tls_accepted: g(&c.tls_accepted),
            tls_connected: g(&c.tls_connected),
            tls_failed: g(&c.tls_failed),
            sips_refused: g(&c.sips_refused),
        }
    }
}

impl Transports {
    /// The live TLS configuration, if any (a handle that does not keep the sockets open).
    pub fn tls_state(&self) -> Option<Arc<TlsState>> {
        self.shared.tls.clone()
    }

    /// Reloads the TLS certificate, key and roots from their files now (e.g. on SIGHUP);
    /// connections already open keep theirs. On error the previous configuration stays.
    pub fn reload_tls(&self) -> Result<(), TlsError> {
        match &self.shared.tls {
            Some(t) => t.reload(),
            None => Ok(()),
        }
    }

    /// The name a TLS peer at `peer` must present a certificate for (instead of its IP).
    pub fn set_tls_name(&self, peer: SocketAddr, name: &str) {
        self.shared
            .tls_names
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(peer, name.to_owned());
    }

    /// The open TCP connection with `peer`, if any.
    pub fn connection_to(&self, peer: SocketAddr) -> Option<ConnectionId> {
        self.shared.table().by_peer.get(&peer).copied()
    }

    /// The open TLS connection with `peer`, if any.
    pub fn secure_connection_to(&self, peer: SocketAddr) -> Option<ConnectionId> {
        let t = self.shared.table();
        let id = t.by_peer.get(&peer)?;
        t.by_id.get(id).filter(|h| h.secure).map(|_| *id)
    }

    /// Number of open TCP connections.
    pub fn connection_count(&self) -> usize {
        self.shared.table().by_id.len()
    }

    /// Sends `bytes` (a serialised message, or a keep-alive) to `target`. For TCP the bytes are
    /// written by the connection's task; this returns when they were written. Returns the
    /// connection used, for TCP.
    pub async fn send(&self, target: Target, bytes: &[u8]) -> io::Result<Option<ConnectionId>> {
        match target {
            Target::Udp { peer, local } => {
                let sock = local
                    .and_then(|l| {
                        self.local
                            .udp
                            .iter()
                            .position(|a| *a == l)
                            .and_then(|i| self.udp.get(i))
                    })
                    .or_else(|| self.udp.first())
                    .ok_or_else(|| {
                        io::Error::new(io::ErrorKind::NotConnected, "no UDP listener")
                    })?;
                if bytes.len() > self.shared.config.max_message_size {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "message larger than the limit",
                    ));
                }
                sock.send_to(bytes, peer).await?;
                Ok(None)
            }
            Target::Tcp(peer) => {
                let existing = self.connection_to(peer);
                if let Some(id) = existing {
                    if self.write_to(id, bytes).await.is_ok() {
                        return Ok(Some(id));
                    }
                }
                let id = tcp::connect(self.shared.clone(), peer, false).await?;
                self.write_to(id, bytes).await?;
                Ok(Some(id))
            }
            Target::Tls(peer) => {
                let existing = self.secure_connection_to(peer);
                if let Some(id) = existing {
                    if self.write_to(id, bytes).await.is_ok() {
                        return Ok(Some(id));
                    }
                }
                let id = tcp::connect(self.shared.clone(), peer, true).await?;
                self.write_to(id, bytes).await?;
                Ok(Some(id))
            }
            Target::TlsConnection { id, fallback } => match self.write_to(id, bytes).await {
                Ok(()) => Ok(Some(id)),
                Err(e) => match fallback {
                    Some(peer) => Box::pin(self.send(Target::Tls(peer), bytes)).await,
                    None => Err(e),
                },
            },
            Target::Connection { id, fallback } => match self.write_to(id, bytes).await {
                Ok(()) => Ok(Some(id)),
                Err(e) => match fallback {
                    Some(peer) => Box::pin(self.send(Target::Tcp(peer), bytes)).await,
                    None => Err(e),
                },
            },
        }
    }

    /// Sends a response to a request that came as `incoming`'s metadata, routed by its top Via
    /// ([`via::response_route`]): the same connection for TCP, `rport`/`received` for UDP,
    /// sent from the listener the request arrived on. A Via naming a host that would need DNS
    /// is refused (`Unsupported`) unless the connection is still open.
    pub async fn send_response(
        &self,
        response: &Response,
        transport: Transport,
        local: SocketAddr,
    ) -> io::Result<Option<ConnectionId>> {
        let Some(route) = via::route_headers(&response.headers, transport.is_reliable()) else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "no usable Via"));
        };
        let addr = match route.destination {
            via::Destination::Addr(a) => Some(a),
            via::Destination::Host(..) => None,
        };
        let bytes = message::serialize_response(response);
        let target = match (transport, addr) {
            (Transport::Tcp(id), fallback) => Target::Connection { id, fallback },
            (Transport::Tls(id), fallback) => Target::TlsConnection { id, fallback },
            (Transport::Udp, Some(peer)) => Target::Udp {
                peer,
                local: Some(local),
            },
            (Transport::Udp, None) => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "Via sent-by needs DNS resolution",
                ));
            }
        };
        self.send(target, &bytes).await
    }

    async fn write_to(&self, id: ConnectionId, bytes: &[u8]) -> io::Result<()> {
        let tx = self
            .shared
            .table()
            .by_id
            .get(&id)
            .map(|h| h.tx.clone())
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "connection closed"))?;
        let (done, wait) = oneshot::channel();
        tx.send((bytes.to_vec(), Some(done)))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::NotConnected, "connection closed"))?;
        wait.await
            .map_err(|_| io::Error::new(io::ErrorKind::NotConnected, "connection closed"))?
    }
}

/// Reloads the TLS files when their modification times change, until shutdown.
async fn watch_tls_files(tls: Arc<TlsState>, mut shutdown: watch::Receiver<()>) {
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(tls.reload_interval()) => {}
        }
        match tls.reload_if_changed() {
            Ok(true) => tracing::info!("TLS certificate and key reloaded"),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "TLS reload failed; the previous certificate stays")
            }
        }
    }
}

#[cfg(test)]
mod udp_buffer_tests {
    use super::{bind_udp, UDP_RECV_BUFFER};

    fn sysctl(name: &str) -> usize {
        let path = format!("/proc/sys/net/core/{name}");
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .trim()
            .parse()
            .expect("a number")
    }

    fn booked(s: &tokio::net::UdpSocket) -> usize {
        socket2::SockRef::from(s)
            .recv_buffer_size()
            .expect("SO_RCVBUF")
    }

    #[tokio::test]
    async fn a_udp_listener_books_the_receive_buffer_it_asks_for_within_rmem_max() {
        let addr = "127.0.0.1:0".parse().expect("addr");
        let sized = bind_udp(addr, UDP_RECV_BUFFER).expect("bind");
        // Linux books twice what is asked, capped at rmem_max.
        assert_eq!(booked(&sized), 2 * UDP_RECV_BUFFER.min(sysctl("rmem_max")));
        assert!(booked(&sized) > sysctl("rmem_default"));
        let default = bind_udp(addr, 0).expect("bind");
        assert_eq!(booked(&default), sysctl("rmem_default"));
    }
}

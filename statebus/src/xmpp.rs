//! [`XmppBus`]: the state fabric over XMPP PubSub (XEP-0060), on tokio-xmpp.
//!
//! One background task owns the XMPP client. Publishes from any thread update the shared cache
//! and mark the key dirty; the task sends the latest value of every dirty key (so bursts
//! coalesce and nothing older is ever sent after something newer). On every (re)connect the task
//! ensures the nodes exist with an explicit configuration, renews the subscriptions, fetches the
//! nodes' items to rebuild the remote cache, and republishes all local cachable state.

use crate::bus::Core;
use crate::fill::FillWatch;
use crate::guard::{Dropped, Guard};
use crate::servers::{split_host_port, Rotation, SrvResolver, MAX_SERVERS};
use crate::waiting::{self, NODE_WAITING};
use crate::wire::{self, AccessModel, NodeKind, NodeLayout, WireItem};
use crate::{
    Bus, BusEvent, BusStatus, Change, DeviceState, Eid, Heartbeat, Mwi, Snapshot, StateCache,
    WaitingCaller,
};
use futures::stream::StreamExt;
use minidom::Element;
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{broadcast, oneshot, watch, Notify};
use tokio_xmpp::connect::{DnsConfig, ServerConnector};
use tokio_xmpp::jid::{BareJid, Jid};
use tokio_xmpp::parsers::iq::Iq;
use tokio_xmpp::parsers::stanza_error::{DefinedCondition, ErrorType, StanzaError};
use tokio_xmpp::stanzastream::{Connection, Event as StreamEv, StanzaStream, StreamEvent};
use tokio_xmpp::xmlstream::{PendingFeaturesRecv, StreamHeader, Timeouts};
use tokio_xmpp::Stanza;
use tracing::{debug, info, trace, warn};

/// How the client secures its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// STARTTLS, certificate verified against the system roots (plus `SSL_CERT_FILE`).
    #[default]
    StartTls,
    /// No TLS. Only allowed when the server address is a loopback address.
    Plaintext,
}

/// Everything the XMPP bus needs; built by the binary from its config file.
#[derive(Debug, Clone)]
pub struct XmppBusConfig {
    /// Account JID, e.g. `gw-a@fabric.test` (a resource may be given).
    pub jid: String,
    /// Account password.
    pub password: String,
    /// Server address `host:port`; when `None` and `servers` is empty, the JID's domain is
    /// resolved (SRV `_xmpp-client._tcp`, then the domain on 5222).
    pub server: Option<String>,
    /// More addresses (`host:port`) of the same clustered XMPP service, tried after `server`
    /// in order when it cannot be reached (see [`crate::servers::Rotation`]).
    pub servers: Vec<String>,
    /// Name servers for the SRV lookup (when no address is configured). Empty: tokio-xmpp's
    /// own lookup of the system's configuration (one address, no failover between targets).
    pub dns_servers: Vec<SocketAddr>,
    /// JID of the PubSub service (Asterisk's `pubsub_node`), e.g. `pubsub.fabric.test`.
    pub pubsub_service: String,
    /// STARTTLS or plaintext (loopback only).
    pub tls: TlsMode,
    /// Flat (default) or XEP-0248 collections.
    pub layout: NodeLayout,
    /// Access model of the nodes this bus creates.
    pub access_model: AccessModel,
    /// Bare JIDs of the other fabric members (made publishers of our nodes under `whitelist`).
    pub fabric_jids: Vec<String>,
    /// `pubsub#max_items` for the flat nodes (one item per device and mailbox, per publisher
    /// of a shared key, must fit: a server evicts the oldest items beyond it). Default 10,000;
    /// the server's own cap must allow it (Prosody `pubsub_max_items`, ejabberd
    /// `max_items_node`). A warning is logged when a fetch finds the node 90 % full.
    pub max_items: u32,
    /// This node's EID.
    pub eid: Eid,
    /// This node's site name (heartbeat).
    pub site: String,
    /// This node's role (heartbeat).
    pub role: String,
    /// SIP address other nodes should use to reach this one (heartbeat), if any.
    pub sip_address: Option<String>,
    /// Heartbeat period.
    pub heartbeat_interval: Duration,
    /// A member silent for this long is expired (its devices read UNAVAILABLE).
    pub liveness_ttl: Duration,
    /// How long to wait for any IQ response.
    pub iq_timeout: Duration,
    /// Silence on the stream after which the client probes the server (dead-peer detection).
    pub keepalive: Duration,
    /// First reconnect delay; doubles per failure.
    pub reconnect_initial: Duration,
    /// Cap of the reconnect delay.
    pub reconnect_max: Duration,
    /// Enable XEP-0198 stream management when the server offers it. Off by default: the bus
    /// gains nothing from it (it resyncs in full on a resumed stream as on a new one, and
    /// re-sends what a lost connection took from its own IQ tracking), and on ejabberd it
    /// costs a request/ack pair per stanza, whose lost segments hold back the publishes behind
    /// them on a lossy link (measured: `fabric_wan_bench`, docs/BENCHMARKS.md).
    pub stream_management: bool,
    /// Run the client (its stanza stream and the bus's own task) on a thread of its own, with
    /// a single-threaded runtime, instead of on the caller's runtime. On by default: a publish
    /// or a notification then crosses one thread boundary instead of hopping between the
    /// caller's workers, and the fabric keeps its latency while the SIP core loads every
    /// worker (measured: `cluster_bench`, docs/BENCHMARKS.md, issue 17).
    pub dedicated_thread: bool,
}

impl XmppBusConfig {
    /// A config with the documented defaults for everything but identity and addresses.
    pub fn new(jid: &str, password: &str, pubsub_service: &str, eid: Eid) -> Self {
        XmppBusConfig {
            jid: jid.into(),
            password: password.into(),
            server: None,
            servers: Vec::new(),
            dns_servers: Vec::new(),
            pubsub_service: pubsub_service.into(),
            tls: TlsMode::StartTls,
            layout: NodeLayout::Flat,
            access_model: AccessModel::Open,
            fabric_jids: Vec::new(),
            max_items: 10_000,
            eid,
            site: "default".into(),
            role: "node".into(),
            sip_address: None,
            heartbeat_interval: Duration::from_secs(5),
            liveness_ttl: Duration::from_secs(15),
            iq_timeout: Duration::from_secs(10),
            keepalive: Duration::from_secs(30),
            reconnect_initial: Duration::from_millis(250),
            reconnect_max: Duration::from_secs(15),
            stream_management: false,
            dedicated_thread: true,
        }
    }
}

/// Why an [`XmppBus`] could not be started.
#[derive(Debug, thiserror::Error)]
pub enum XmppBusError {
    /// The JID does not parse.
    #[error("invalid JID {0:?}: {1}")]
    Jid(String, String),
    /// Plaintext requested towards a non-loopback server.
    #[error(
        "plaintext XMPP is only allowed to a loopback server, not {0:?}; use tls = \"starttls\""
    )]
    PlaintextNotLoopback(String),
    /// Plaintext requested without an explicit server address.
    #[error(
        "plaintext XMPP needs an explicit loopback server address (server = \"127.0.0.1:5222\")"
    )]
    PlaintextNeedsServer,
    /// A server address that is not `host:port`.
    #[error("bad XMPP server address: {0}")]
    BadServer(String),
    /// The SRV resolver could not be set up.
    #[error("{0}")]
    Resolver(String),
    /// TTL not longer than the heartbeat interval.
    #[error("liveness TTL ({ttl:?}) must be longer than the heartbeat interval ({interval:?})")]
    TtlTooShort {
        /// configured TTL
        ttl: Duration,
        /// configured interval
        interval: Duration,
    },
    /// The bus's own thread or its runtime could not be started.
    #[error("cannot start the XMPP bus thread: {0}")]
    Thread(std::io::Error),
}

fn is_loopback_server(server: &str) -> bool {
    if let Ok(sa) = server.parse::<SocketAddr>() {
        return sa.ip().is_loopback();
    }
    let host = server.rsplit_once(':').map(|(h, _)| h).unwrap_or(server);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<IpAddr>()
            .map(|i| i.is_loopback())
            .unwrap_or(false)
}

/// Our connectors: plain TCP (loopback only) and STARTTLS, both with `TCP_NODELAY` and without
/// SASL channel binding.
///
/// - `TCP_NODELAY`: tokio-xmpp leaves Nagle's algorithm on, which holds a small publish back
///   until the previous segment is acknowledged (delayed ACK): measured 11.8 ms p50 / 96 ms p99
///   publish→notify on loopback ejabberd against 0.7 ms for a raw client.
/// - No channel binding: tokio-xmpp 6 implements SCRAM but not SCRAM-*-PLUS; holding TLS
///   binding data it sends the GS2 flag `y`, which a server that offers -PLUS (ejabberd over
///   TLS 1.3, measured) must refuse as a downgrade. Without binding data it sends `n`, which
///   every server accepts; the session is still encrypted and the certificate verified.
#[derive(Debug, Clone)]
struct FabricConnector {
    servers: Arc<Servers>,
    drops: Arc<DropLog>,
}

/// Where the connector finds the servers.
#[derive(Debug)]
enum Source {
    /// Configured `host:port` addresses (`server` then `servers`).
    List(Vec<String>),
    /// `_xmpp-client._tcp.<domain>` through our resolver.
    Srv {
        domain: String,
        resolver: SrvResolver,
    },
    /// No name servers given: tokio-xmpp's own SRV lookup (system configuration).
    System(DnsConfig),
}

/// The servers of the (possibly clustered) XMPP service and which one to try first.
#[derive(Debug)]
struct Servers {
    source: Source,
    rotation: Mutex<Rotation>,
    /// The server the connection being logged in was made to.
    attempt: Mutex<Option<String>>,
}

impl Servers {
    fn rotation(&self) -> std::sync::MutexGuard<'_, Rotation> {
        self.rotation.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn attempt(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.attempt.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A TCP connection to the first server that accepts one, in the rotation's order.
    async fn connect(&self) -> std::io::Result<tokio::net::TcpStream> {
        *self.attempt() = None;
        let candidates = match &self.source {
            Source::System(dns) => {
                return match tokio::time::timeout(CONNECT_TIMEOUT, dns.resolve()).await {
                    Ok(Ok(tcp)) => Ok(tcp),
                    Ok(Err(e)) => Err(std::io::Error::other(e.to_string())),
                    Err(_) => Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("TCP connect not done within {CONNECT_TIMEOUT:?}"),
                    )),
                };
            }
            Source::List(v) => v.clone(),
            Source::Srv { domain, resolver } => resolver.servers(domain).await,
        };
        let order = self.rotation().order(&candidates, Instant::now());
        let mut last = None;
        for server in order {
            match self.connect_one(&server).await {
                Ok(tcp) => {
                    debug!(%server, "TCP connected to the XMPP server");
                    *self.attempt() = Some(server);
                    return Ok(tcp);
                }
                Err(e) => {
                    warn!(%server, error = %e, "cannot reach this XMPP server; trying the next");
                    self.rotation().failed(&server, Instant::now());
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("no XMPP server address")))
    }

    /// Each address of `server` in turn, each connect bounded by [`CONNECT_TIMEOUT`].
    async fn connect_one(&self, server: &str) -> std::io::Result<tokio::net::TcpStream> {
        // Bounded: an unbounded connect waits through the kernel's SYN back-off (1, 2, 4, 8,
        // 16, 32 s), so a member cut off by a partition came back up to 17 s after the heal
        // (measured in the WAN lab); a fresh attempt every CONNECT_TIMEOUT + back-off does not.
        let addrs: Vec<SocketAddr> = match (&self.source, server.parse::<SocketAddr>()) {
            (_, Ok(sa)) => vec![sa],
            (Source::Srv { resolver, .. }, Err(_)) => resolver
                .addresses(server)
                .await
                .map_err(std::io::Error::other)?,
            (_, Err(_)) => tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::lookup_host(server))
                .await
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "name lookup"))??
                .collect(),
        };
        let mut last = None;
        for addr in addrs {
            match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr)).await
            {
                Ok(Ok(tcp)) => return Ok(tcp),
                Ok(Err(e)) => last = Some(e),
                Err(_) => {
                    last = Some(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("TCP connect to {addr} not done within {CONNECT_TIMEOUT:?}"),
                    ))
                }
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other(format!("no address for {server}"))))
    }

    /// The login on the last connection succeeded: that server is now the current one.
    fn logged_in(&self) {
        if let Some(s) = self.attempt().take() {
            info!(server = %s, "logged in to the XMPP server");
            self.rotation().connected(&s);
        }
    }

    /// The login on the last connection failed: its server goes last for a while.
    fn login_failed(&self) {
        if let Some(s) = self.attempt().take() {
            self.rotation().failed(&s, Instant::now());
        }
    }
}

impl FabricConnector {
    /// TCP with `TCP_NODELAY`, and the opening stream header.
    async fn open(
        &self,
        jid: &Jid,
        ns: &'static str,
        timeouts: Timeouts,
        guarded: bool,
    ) -> Result<
        PendingFeaturesRecv<tokio::io::BufStream<Guarded<tokio::net::TcpStream>>>,
        tokio_xmpp::Error,
    > {
        let tcp = self.servers.connect().await?;
        tcp.set_nodelay(true)?;
        let drops = guarded.then(|| self.drops.clone());
        let tcp = tokio::io::BufStream::new(Guarded::new(tcp, drops));
        Ok(tokio_xmpp::xmlstream::initiate_stream(tcp, ns, header(jid), timeouts).await?)
    }
}

/// Bound on one TCP connect to the XMPP server (TLS and login are not included).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on one DNS query (SRV, A/AAAA) when looking up the servers.
const SRV_TIMEOUT: Duration = Duration::from_secs(2);

/// `server` then `servers`, each `host:port` (a bare host gets 5222), duplicates removed.
fn server_list(cfg: &XmppBusConfig) -> Result<Vec<String>, XmppBusError> {
    let mut out: Vec<String> = Vec::new();
    for s in cfg.server.iter().chain(cfg.servers.iter()) {
        let s = s.trim();
        let full = if s.parse::<SocketAddr>().is_ok() {
            s.to_owned()
        } else if !s.contains(':') && !s.is_empty() {
            format!("{s}:{}", crate::servers::XMPP_CLIENT_PORT)
        } else {
            split_host_port(s).map_err(XmppBusError::BadServer)?;
            s.to_owned()
        };
        if out.len() >= MAX_SERVERS {
            return Err(XmppBusError::BadServer(format!(
                "more than {MAX_SERVERS} servers"
            )));
        }
        if !out.contains(&full) {
            out.push(full);
        }
    }
    Ok(out)
}

fn header(jid: &Jid) -> StreamHeader<'_> {
    StreamHeader {
        to: Some(std::borrow::Cow::Borrowed(jid.domain().as_str())),
        from: None,
        id: None,
    }
}

#[derive(Debug, Clone)]
struct PlainConnector(FabricConnector);

impl ServerConnector for PlainConnector {
    type Stream = tokio::io::BufStream<Guarded<tokio::net::TcpStream>>;

    fn connect(
        &self,
        jid: &Jid,
        ns: &'static str,
        timeouts: Timeouts,
    ) -> impl Future<
        Output = Result<
            (
                PendingFeaturesRecv<Self::Stream>,
                sasl::common::ChannelBinding,
            ),
            tokio_xmpp::Error,
        >,
    > + Send {
        let (c, jid) = (self.0.clone(), jid.clone());
        async move {
            let pending = c.open(&jid, ns, timeouts, true).await?;
            Ok((pending, sasl::common::ChannelBinding::None))
        }
    }
}

#[derive(Debug, Clone)]
struct StartTlsConnector(FabricConnector);

/// TLS over TCP; the TCP stream's guard is off (it carries TLS records, not XML).
type TlsTcp = tokio_xmpp::connect::tls_common::TlsStream<Guarded<tokio::net::TcpStream>>;

impl ServerConnector for StartTlsConnector {
    type Stream = tokio::io::BufStream<Guarded<TlsTcp>>;

    fn connect(
        &self,
        jid: &Jid,
        ns: &'static str,
        timeouts: Timeouts,
    ) -> impl Future<
        Output = Result<
            (
                PendingFeaturesRecv<Self::Stream>,
                sasl::common::ChannelBinding,
            ),
            tokio_xmpp::Error,
        >,
    > + Send {
        let (c, jid) = (self.0.clone(), jid.clone());
        async move {
            let pending = c.open(&jid, ns, timeouts, false).await?;
            let (features, stream) = pending.recv_features().await?;
            if !features.can_starttls() {
                return Err(tokio_xmpp::Error::Protocol(
                    tokio_xmpp::error::ProtocolError::NoTls,
                ));
            }
            let (tls, _binding) =
                tokio_xmpp::connect::starttls::starttls(stream, jid.domain().as_str()).await?;
            // The guard reads the XML inside TLS.
            let pending = tokio_xmpp::xmlstream::initiate_stream(
                tokio::io::BufStream::new(Guarded::new(tls, Some(c.drops.clone()))),
                ns,
                header(&jid),
                timeouts,
            )
            .await?;
            Ok((pending, sasl::common::ChannelBinding::None))
        }
    }
}

/// Counts and logs what the [`Guard`] drops: one log line per publisher per minute.
#[derive(Debug, Default)]
pub(crate) struct DropLog {
    pub(crate) items: AtomicU64,
    pub(crate) stanzas: AtomicU64,
    last_logged: Mutex<HashMap<String, Instant>>,
}

/// Publishers remembered for log rate-limiting (the map is cleared when full).
const DROP_LOG_PUBLISHERS: usize = 1024;
const DROP_LOG_EVERY: Duration = Duration::from_secs(60);

impl DropLog {
    fn record(&self, d: Dropped) {
        if d.stanza {
            self.stanzas.fetch_add(1, Ordering::Relaxed);
        } else {
            self.items.fetch_add(1, Ordering::Relaxed);
        }
        let now = Instant::now();
        let mut last = self.last_logged.lock().unwrap_or_else(|p| p.into_inner());
        if last.len() >= DROP_LOG_PUBLISHERS {
            last.clear();
        }
        let due = last
            .get(&d.publisher)
            .is_none_or(|t| now.duration_since(*t) >= DROP_LOG_EVERY);
        if due {
            last.insert(d.publisher.clone(), now);
            let total = self.items.load(Ordering::Relaxed) + self.stanzas.load(Ordering::Relaxed);
            warn!(
                publisher = %d.publisher,
                item = %d.item_id,
                why = ?d.why,
                whole_stanza = d.stanza,
                total_dropped = total,
                "dropped a pubsub item over the stanza guard's limits (logged once a minute per publisher)"
            );
        }
    }
}

/// A byte stream whose reading side goes through a [`Guard`] (or passes untouched when
/// `drops` is `None`: the TCP under TLS). Writing passes untouched.
pub(crate) struct Guarded<T> {
    inner: T,
    guard: Option<(Guard, Arc<DropLog>)>,
    out: Vec<u8>,
    pos: usize,
    eof: bool,
}

impl<T> Guarded<T> {
    fn new(inner: T, drops: Option<Arc<DropLog>>) -> Self {
        Guarded {
            inner,
            guard: drops.map(|d| (Guard::default(), d)),
            out: Vec::new(),
            pos: 0,
            eof: false,
        }
    }

    /// The wrapped stream (writes pass through unchanged).
    pub(crate) fn get_ref(&self) -> &T {
        &self.inner
    }

    /// A stream read through `guard` (its own limits), drops counted in `drops`.
    pub(crate) fn with_guard(inner: T, guard: Guard, drops: Arc<DropLog>) -> Self {
        Guarded {
            inner,
            guard: Some((guard, drops)),
            out: Vec::new(),
            pos: 0,
            eof: false,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let Some((guard, drops)) = &mut this.guard else {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        };
        loop {
            if this.pos < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.pos);
                buf.put_slice(&this.out[this.pos..this.pos + n]);
                this.pos += n;
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 8192];
            let mut rb = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    if rb.filled().is_empty() {
                        this.eof = true;
                    } else {
                        guard.feed(rb.filled());
                        this.out = guard.take_output();
                        this.pos = 0;
                        for d in guard.take_dropped() {
                            drops.record(d);
                        }
                    }
                }
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Reconnect delays: `initial`, doubling up to `max`, with ±20 % jitter so that a fleet of
/// nodes does not reconnect in lock-step after a server restart.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    initial: Duration,
    max: Duration,
}

/// Log in on a fresh connection: connect (TLS as configured), SASL, restart the stream.
/// Mirrors tokio-xmpp's own c2s login, with the public pieces, so that we own the retry policy.
/// Unless `stream_management`, the server's XEP-0198 offer is hidden from the stanza stream,
/// which then never enables it (see [`XmppBusConfig::stream_management`]).
async fn login<C: ServerConnector>(
    server: C,
    jid: &Jid,
    password: &str,
    timeouts: Timeouts,
    stream_management: bool,
) -> Result<Connection, tokio_xmpp::Error> {
    let username = jid
        .node()
        .map(|n| n.as_str().to_string())
        .unwrap_or_default();
    let (stream, binding) = server
        .connect(jid, tokio_xmpp::parsers::ns::JABBER_CLIENT, timeouts)
        .await?;
    let (features, stream) = stream.recv_features().await?;
    let creds = sasl::common::Credentials::default()
        .with_username(username)
        .with_password(password)
        .with_channel_binding(binding);
    let stream = tokio_xmpp::client_login(stream, features.sasl_mechanisms, creds).await?;
    let stream = stream
        .send_header(StreamHeader {
            to: Some(std::borrow::Cow::Borrowed(jid.domain().as_str())),
            from: None,
            id: None,
        })
        .await?;
    let (mut features, stream) = stream.recv_features().await?;
    if !stream_management {
        features.stream_management = None;
    }
    Ok(Connection {
        stream: stream.box_stream(),
        features,
        identity: jid.clone(),
    })
}

type Reconnector = Box<dyn FnMut(Option<String>, oneshot::Sender<Connection>) + Send + 'static>;

/// The stanza stream calls this whenever it needs a new connection.
fn reconnector<C: ServerConnector>(
    server: C,
    servers: Arc<Servers>,
    jid: Jid,
    password: String,
    timeouts: Timeouts,
    backoff: Backoff,
    stream_management: bool,
) -> Reconnector {
    // Pacing across calls: a connection that dies within `STABLE` of being made (a refused
    // resumption, a stream the server ends at once) makes the next call wait, doubling up to
    // the cap, so no failure mode can turn into a reconnect storm.
    const STABLE: Duration = Duration::from_secs(10);
    let pace: Arc<Mutex<(Option<Instant>, Duration)>> =
        Arc::new(Mutex::new((None, backoff.initial)));
    Box::new(move |_location, slot: oneshot::Sender<Connection>| {
        let (server, jid, password) = (server.clone(), jid.clone(), password.clone());
        let (pace, servers) = (pace.clone(), servers.clone());
        tokio::spawn(async move {
            let first_wait = {
                let mut p = pace.lock().unwrap_or_else(|e| e.into_inner());
                match p.0 {
                    Some(t) if t.elapsed() < STABLE => {
                        let wait = p.1;
                        p.1 = (p.1 * 2).min(backoff.max);
                        Some(wait)
                    }
                    _ => {
                        p.1 = backoff.initial;
                        None
                    }
                }
            };
            if let Some(wait) = first_wait {
                let wait = wait.mul_f64(0.8 + rand::random::<f64>() * 0.4);
                warn!(%jid, "the last connection did not last; reconnecting in {wait:?}");
                tokio::time::sleep(wait).await;
            }
            let mut delay = backoff.initial;
            loop {
                match login(server.clone(), &jid, &password, timeouts, stream_management).await {
                    Ok(conn) => {
                        servers.logged_in();
                        pace.lock().unwrap_or_else(|e| e.into_inner()).0 = Some(Instant::now());
                        // If the stream is gone, the connection is simply dropped.
                        let _ = slot.send(conn);
                        return;
                    }
                    Err(e) => {
                        servers.login_failed();
                        let jitter = 0.8 + rand::random::<f64>() * 0.4;
                        let wait = delay.mul_f64(jitter);
                        warn!(%jid, error = %e, "cannot connect to the XMPP server; retrying in {wait:?}");
                        if slot.is_closed() {
                            return;
                        }
                        tokio::time::sleep(wait).await;
                        delay = (delay * 2).min(backoff.max);
                    }
                }
            }
        });
    })
}

/// Counters, for operators and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XmppBusStats {
    /// Connections established (the first one included).
    pub connects: u64,
    /// Publish IQs sent.
    pub published: u64,
    /// Publish IQs the server confirmed.
    pub publish_acked: u64,
    /// Publish IQs answered with an error or timed out.
    pub publish_errors: u64,
    /// Items received (notifications and fetched).
    pub items_received: u64,
    /// Items dropped by the stanza guard (over a depth, size, count or token limit).
    pub items_dropped: u64,
    /// Whole stanzas the guard replaced (a limit broken outside any item).
    pub stanzas_dropped: u64,
    /// Warnings that a state node nears `max_items` (90 %; see [`crate::fill`]).
    pub nodes_nearly_full: u64,
}

#[derive(Debug, Default)]
struct Dirty {
    devices: HashSet<String>,
    mwi: HashSet<String>,
    /// Non-cachable states: not in the cache, last value per key.
    volatile: HashMap<String, DeviceState>,
    /// Waiting records (item ids) to publish, or to withdraw when no longer held.
    waiting: HashSet<String>,
}

#[derive(Debug)]
struct Shared {
    core: Arc<Core>,
    dirty: Mutex<Dirty>,
    wake: Notify,
    stats: Mutex<XmppBusStats>,
    drops: Arc<DropLog>,
}

impl Shared {
    fn dirty(&self) -> std::sync::MutexGuard<'_, Dirty> {
        self.dirty.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn stats(&self) -> std::sync::MutexGuard<'_, XmppBusStats> {
        self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The state fabric over XMPP PubSub. Cheap to clone; the connection lives until
/// [`XmppBus::shutdown`] or until every clone is dropped.
#[derive(Debug, Clone)]
pub struct XmppBus {
    eid: Eid,
    servers: Arc<Servers>,
    shared: Arc<Shared>,
    online: watch::Receiver<bool>,
    stop: Arc<Mutex<Option<oneshot::Sender<()>>>>,
    /// Fires when the bus's task has ended.
    done: Arc<Mutex<Option<oneshot::Receiver<()>>>>,
}

impl XmppBus {
    /// Validate the config and start connecting in the background: on a thread of its own
    /// ([`XmppBusConfig::dedicated_thread`]), else on the caller's tokio runtime.
    pub fn start(cfg: XmppBusConfig) -> Result<XmppBus, XmppBusError> {
        let jid: Jid = cfg.jid.parse().map_err(|e: tokio_xmpp::jid::Error| {
            XmppBusError::Jid(cfg.jid.clone(), e.to_string())
        })?;
        let service: Jid = cfg
            .pubsub_service
            .parse()
            .map_err(|e: tokio_xmpp::jid::Error| {
                XmppBusError::Jid(cfg.pubsub_service.clone(), e.to_string())
            })?;
        for j in &cfg.fabric_jids {
            j.parse::<Jid>()
                .map_err(|e| XmppBusError::Jid(j.clone(), e.to_string()))?;
        }
        if cfg.liveness_ttl <= cfg.heartbeat_interval {
            return Err(XmppBusError::TtlTooShort {
                ttl: cfg.liveness_ttl,
                interval: cfg.heartbeat_interval,
            });
        }
        let list = server_list(&cfg)?;
        if cfg.tls == TlsMode::Plaintext {
            if list.is_empty() {
                return Err(XmppBusError::PlaintextNeedsServer);
            }
            if let Some(s) = list.iter().find(|s| !is_loopback_server(s)) {
                return Err(XmppBusError::PlaintextNotLoopback(s.clone()));
            }
        }
        let source = if !list.is_empty() {
            Source::List(list)
        } else if !cfg.dns_servers.is_empty() {
            Source::Srv {
                domain: jid.domain().as_str().to_owned(),
                resolver: SrvResolver::new(&cfg.dns_servers, cfg.iq_timeout.min(SRV_TIMEOUT))
                    .map_err(|e| XmppBusError::Resolver(e.to_string()))?,
            }
        } else {
            Source::System(DnsConfig::srv_default_client(jid.domain().as_str()))
        };
        let servers = Arc::new(Servers {
            source,
            rotation: Mutex::new(Rotation::new()),
            attempt: Mutex::new(None),
        });
        let timeouts = Timeouts {
            read_timeout: cfg.keepalive,
            response_timeout: cfg.iq_timeout,
        };
        // The stanza stream itself, not tokio-xmpp's `Client`: the client shares one mutex
        // between its sending and receiving halves and its receiver returns Pending without a
        // waker when that mutex is busy, which stalls reception for good under a burst of
        // publishes (measured). Owning the stream in one task, with our own IQ tracking, has
        // no such hazard.
        let backoff = Backoff {
            initial: cfg.reconnect_initial,
            max: cfg.reconnect_max,
        };
        let drops = Arc::new(DropLog::default());
        // Built where it runs: the stream spawns its own task on the current runtime.
        let make_stream = {
            let (servers, drops, jid) = (servers.clone(), drops.clone(), jid.clone());
            let (password, tls, sm) = (cfg.password.clone(), cfg.tls, cfg.stream_management);
            move || {
                let fc = FabricConnector {
                    servers: servers.clone(),
                    drops: drops.clone(),
                };
                let (s, j, p) = (servers.clone(), jid.clone(), password.clone());
                let r = match tls {
                    TlsMode::StartTls => {
                        reconnector(StartTlsConnector(fc), s, j, p, timeouts, backoff, sm)
                    }
                    TlsMode::Plaintext => {
                        reconnector(PlainConnector(fc), s, j, p, timeouts, backoff, sm)
                    }
                };
                StanzaStream::new(r, QUEUE_DEPTH)
            }
        };
        let shared = Arc::new(Shared {
            core: Core::new(StateCache::new(cfg.eid, cfg.liveness_ttl)),
            dirty: Mutex::new(Dirty::default()),
            wake: Notify::new(),
            stats: Mutex::new(XmppBusStats::default()),
            drops,
        });
        let (online_tx, online) = watch::channel(false);
        let (stop_tx, stop_rx) = oneshot::channel();
        let eid = cfg.eid;
        let max_items = cfg.max_items;
        let worker = Worker {
            bare: jid.to_bare(),
            service,
            cfg,
            shared: shared.clone(),
            online_tx,
            online: false,
            generation: 0,
            pending: HashMap::new(),
            deadlines: VecDeque::new(),
            next_id: 0,
            fetches: 0,
            last_beat: None,
            leaves: HashSet::new(),
            per_eid: HashSet::new(),
            plain_published: HashSet::new(),
            fill: [FillWatch::new(max_items), FillWatch::new(max_items)],
            retry_at: None,
            resync_at: None,
            resync_failures: 0,
            beat_pending: false,
        };
        let span = tracing::info_span!("xmppbus", jid = %jid.to_bare());
        let (done_tx, done) = oneshot::channel::<()>();
        if worker.cfg.dedicated_thread {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(XmppBusError::Thread)?;
            std::thread::Builder::new()
                .name("xmppbus".into())
                .spawn(move || {
                    rt.block_on(tracing::Instrument::instrument(
                        async move { worker.run(make_stream(), stop_rx).await },
                        span,
                    ));
                    let _ = done_tx.send(());
                })
                .map_err(XmppBusError::Thread)?;
        } else {
            let stream = make_stream();
            tokio::spawn(tracing::Instrument::instrument(
                async move {
                    worker.run(stream, stop_rx).await;
                    let _ = done_tx.send(());
                },
                span,
            ));
        }
        Ok(XmppBus {
            eid,
            servers,
            shared,
            online,
            stop: Arc::new(Mutex::new(Some(stop_tx))),
            done: Arc::new(Mutex::new(Some(done))),
        })
    }

    /// Wait until the bus is online (nodes ensured, subscribed, items fetched requested).
    pub async fn wait_online(&self, timeout: Duration) -> bool {
        let mut rx = self.online.clone();
        tokio::time::timeout(timeout, rx.wait_for(|o| *o))
            .await
            .map(|r| r.is_ok())
            .unwrap_or(false)
    }

    /// Whether the bus is online now.
    pub fn is_online(&self) -> bool {
        *self.online.borrow()
    }

    /// The server (`host:port`, as configured or found by SRV) of the last successful login;
    /// `None` before the first one, or after that server failed.
    pub fn server(&self) -> Option<String> {
        self.servers.rotation().current().map(str::to_owned)
    }

    /// Counters.
    pub fn stats(&self) -> XmppBusStats {
        let mut s = *self.shared.stats();
        s.items_dropped = self.shared.drops.items.load(Ordering::Relaxed);
        s.stanzas_dropped = self.shared.drops.stanzas.load(Ordering::Relaxed);
        s
    }

    /// Per-EID entries of one device (debugging, `statebus watch`).
    pub fn device_detail(&self, key: &str) -> Vec<(Eid, DeviceState)> {
        self.shared.core.cache().device_detail(key)
    }

    /// Close the stream cleanly and stop the background task.
    pub async fn shutdown(&self) {
        let stop = self.stop.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(s) = stop {
            let _ = s.send(());
        }
        let done = self.done.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = done {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }

    fn mark(&self, f: impl FnOnce(&mut Dirty)) {
        f(&mut self.shared.dirty());
        self.shared.wake.notify_one();
    }
}

impl Bus for XmppBus {
    fn eid(&self) -> Eid {
        self.eid
    }

    fn publish_device_state_full(&self, key: &str, state: DeviceState, cachable: bool) {
        if cachable {
            let change = self.shared.core.cache().set_local_device(key, state);
            if let Some(c) = change {
                self.shared.core.emit(c);
            }
            self.mark(|d| {
                d.devices.insert(key.to_string());
            });
        } else {
            self.shared.core.emit(Change::Device {
                key: key.to_string(),
                state,
            });
            self.mark(|d| {
                d.volatile.insert(key.to_string(), state);
            });
        }
    }

    fn publish_mwi(&self, mwi: Mwi) {
        let key = mwi.key();
        let change = self.shared.core.cache().set_local_mwi(mwi);
        if let Some(c) = change {
            self.shared.core.emit(c);
        }
        self.mark(|d| {
            d.mwi.insert(key);
        });
    }

    fn subscribe(&self) -> broadcast::Receiver<BusEvent> {
        self.shared.core.subscribe()
    }

    fn snapshot(&self) -> Snapshot {
        self.shared.core.cache().snapshot()
    }

    fn device_state(&self, key: &str) -> Option<DeviceState> {
        self.shared.core.cache().device(key)
    }

    fn device_detail(&self, key: &str) -> Vec<(Eid, DeviceState)> {
        self.shared.core.cache().device_detail(key)
    }

    fn advertise_queues(&self, numbers: &[String]) {
        // Carried by the next heartbeat (within one heartbeat interval).
        self.shared.core.set_queues(numbers);
    }

    fn queue_providers(&self, number: &str) -> Vec<crate::QueueProvider> {
        self.shared.core.queue_providers(number)
    }

    fn publish_waiting(&self, caller: WaitingCaller) {
        let id = self.shared.core.waiting().set_local(caller);
        self.shared.core.waiting_changed();
        self.mark(|d| {
            d.waiting.insert(id);
        });
    }

    fn withdraw_waiting(&self, queue: &str, caller: &str) {
        let gone = self
            .shared
            .core
            .waiting()
            .remove_local(self.eid, queue, caller);
        if let Some(id) = gone {
            self.shared.core.waiting_changed();
            self.mark(|d| {
                d.waiting.insert(id);
            });
        }
    }

    fn waiting(&self) -> Vec<WaitingCaller> {
        self.shared.core.waiting_all()
    }

    fn waiting_changes(&self) -> Option<watch::Receiver<u64>> {
        Some(self.shared.core.waiting_changes())
    }

    fn settle(&self) -> Duration {
        WAITING_SETTLE
    }
}

/// [`Bus::settle`] over XMPP: above the publish → notify delay of a LAN fabric (a few ms) and
/// of the 40 ms WAN lab (p99 under 150 ms, docs/BENCHMARKS.md).
pub const WAITING_SETTLE: Duration = Duration::from_millis(200);

/// What an IQ in flight was for.
#[derive(Debug, Clone)]
enum Tag {
    Setup(&'static str, #[allow(dead_code)] String),
    Publish(Republish),
    Heartbeat,
    FetchHeartbeats,
    Fetch(&'static str),
    DiscoLeaves(#[allow(dead_code)] &'static str),
    Ping,
}

/// What to mark dirty again when a publish times out.
#[derive(Debug, Clone)]
enum Republish {
    Device(String),
    Mwi(String),
    Volatile,
    /// A waiting record (item id): published again, or withdrawn again.
    Waiting(String),
}

/// Dirty keys sent per pass of the event loop.
const FLUSH_BATCH: usize = 16;
/// IQs awaiting an answer before the flusher waits.
const MAX_IN_FLIGHT: usize = 256;
/// Depth of the stanza stream's queues.
const QUEUE_DEPTH: usize = 256;

/// An IQ request.
enum Req {
    Get(Element),
    Set(Element),
}

/// How an IQ ended.
enum Outcome {
    Result(Option<Element>),
    Error(StanzaError),
    TimedOut,
    /// The stream was reset before the answer came.
    Lost,
}

struct Pending {
    tag: Tag,
    generation: u64,
}

struct Worker {
    bare: BareJid,
    service: Jid,
    cfg: XmppBusConfig,
    shared: Arc<Shared>,
    online_tx: watch::Sender<bool>,
    online: bool,
    generation: u64,
    /// IQs sent and not yet answered, by id.
    pending: HashMap<String, Pending>,
    /// (deadline, id) in sending order; deadlines are monotonic since the timeout is fixed.
    deadlines: VecDeque<(tokio::time::Instant, String)>,
    next_id: u64,
    /// Initial-fetch IQs of this generation still unanswered.
    fetches: usize,
    /// When the last heartbeat was sent.
    last_beat: Option<tokio::time::Instant>,
    leaves: HashSet<String>,
    /// Keys we publish under our per-EID item id (`wire::per_eid_item_id`): another
    /// publisher holds the plain id. Sticky for the process's life.
    per_eid: HashSet<String>,
    /// Keys published under the plain id at least once (no switch after that: our plain
    /// item would be left stale).
    plain_published: HashSet<String>,
    /// How full `device_state` and `message_waiting` are (flat layout).
    fill: [FillWatch; 2],
    retry_at: Option<tokio::time::Instant>,
    /// A set-up or fetch IQ of the current generation failed (ejabberd answers a create racing
    /// another member's with `internal-server-error`, and the subscribe that follows with
    /// `item-not-found`; a fetch can time out under load): the whole resync runs again then.
    resync_at: Option<tokio::time::Instant>,
    /// Failed resyncs in a row: the delay doubles from 1 s up to 30 s.
    resync_failures: u32,
    /// After a (re)connect the first heartbeat waits until the republished state has been
    /// sent: a member that expired elsewhere is fetched there as soon as its heartbeat returns,
    /// and a heartbeat ahead of the republish let that fetch read our stale items (an INUSE
    /// from before a partition flashed back at the other site, measured on ejabberd).
    beat_pending: bool,
}

/// Sleep until `at`, or forever when there is nothing to wait for.
async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Worker {
    async fn run(mut self, mut stream: StanzaStream, mut stop: oneshot::Receiver<()>) {
        let mut heartbeat = tokio::time::interval(self.cfg.heartbeat_interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let shared = self.shared.clone();
        loop {
            let next_expiry = shared.core.cache().next_expiry();
            let expiry_sleep = sleep_until_opt(next_expiry.map(tokio::time::Instant::from_std));
            let retry_sleep = sleep_until_opt(self.retry_at);
            let resync_sleep = sleep_until_opt(self.resync_at);
            let iq_deadline = sleep_until_opt(self.deadlines.front().map(|d| d.0));
            // Biased: read what the server sent before sending more.
            tokio::select! {
                biased;
                _ = &mut stop => break,
                ev = stream.next() => match ev {
                    None => break,
                    Some(ev) => self.on_event(&stream, ev).await,
                },
                _ = iq_deadline => self.expire_iqs(&stream).await,
                _ = shared.wake.notified(), if self.online => self.flush(&stream).await,
                _ = heartbeat.tick(), if self.online && !self.beat_pending => {
                    // resync() beats on connect; don't beat twice in a row.
                    let recent = self.last_beat.is_some_and(|t| t.elapsed() < self.cfg.heartbeat_interval / 2);
                    if !recent {
                        self.send_heartbeat(&stream).await;
                    }
                }
                _ = expiry_sleep => {
                    let changes = shared.core.cache().expire(Instant::now());
                    for c in &changes {
                        if let Change::PeerExpired(eid) = c {
                            warn!(%eid, "fabric member silent past the TTL: its devices now read UNAVAILABLE");
                        }
                    }
                    if !changes.is_empty() {
                        shared.core.waiting_changed();
                    }
                    shared.core.emit_all(changes);
                }
                _ = resync_sleep, if self.online => {
                    self.resync_at = None;
                    info!(attempt = self.resync_failures, "a set-up or fetch request failed: resynchronising");
                    self.resync(&stream).await;
                }
                _ = retry_sleep => {
                    self.retry_at = None;
                    if self.online {
                        self.flush(&stream).await;
                    } else {
                        // Offline after a send stalled: probe the server; a reply brings us back.
                        let ping = Element::builder("ping", "urn:xmpp:ping").build();
                        self.iq(&stream, Tag::Ping, Req::Get(ping)).await;
                        self.retry_at = Some(tokio::time::Instant::now() + Duration::from_secs(2));
                    }
                }
            }
        }
        self.set_online(false);
        let _ = tokio::time::timeout(Duration::from_secs(3), stream.close()).await;
    }

    /// Time out IQs whose deadline passed.
    async fn expire_iqs(&mut self, stream: &StanzaStream) {
        let now = tokio::time::Instant::now();
        while let Some((deadline, _)) = self.deadlines.front() {
            if *deadline > now {
                break;
            }
            let Some((_, id)) = self.deadlines.pop_front() else {
                break;
            };
            if let Some(p) = self.pending.remove(&id) {
                self.on_response(stream, p.tag, p.generation, Outcome::TimedOut)
                    .await;
            }
        }
    }

    /// `online` means "may send". Subscribers and `wait_online` hear `Online` only once the
    /// initial fetch is complete (see [`Worker::synced`]), so a snapshot taken then is whole.
    fn set_online(&mut self, online: bool) {
        self.online = online;
        if !online && *self.online_tx.borrow() {
            let _ = self.online_tx.send(false);
            self.shared.core.status(BusStatus::Offline);
        }
    }

    /// Run the whole resync again after a paced delay (a set-up or fetch IQ of the current
    /// generation failed, so the subscription or the remote cache may be incomplete).
    fn schedule_resync(&mut self, tag: &Tag, why: &str) {
        if self.resync_at.is_some() {
            return;
        }
        let delay =
            Duration::from_secs(1u64 << self.resync_failures.min(5)).min(Duration::from_secs(30));
        self.resync_failures = self.resync_failures.saturating_add(1);
        warn!(
            ?tag,
            why,
            ?delay,
            "set-up or fetch failed: resync scheduled"
        );
        self.resync_at = Some(tokio::time::Instant::now() + delay);
    }

    /// Subscribed and the nodes' items fetched: the cache matches the server.
    fn synced(&mut self) {
        if self.resync_at.is_none() {
            self.resync_failures = 0;
        }
        self.shared.wake.notify_one(); // publishing waited for the fetch
        if self.online && !*self.online_tx.borrow() {
            let _ = self.online_tx.send(true);
            self.shared.core.status(BusStatus::Online);
        }
    }

    async fn on_event(&mut self, stream: &StanzaStream, ev: StreamEv) {
        match ev {
            StreamEv::Stream(StreamEvent::Reset { bound_jid, .. }) => {
                info!(jid = %bound_jid, "connected to the XMPP server");
                self.shared.stats().connects += 1;
                self.set_online(false);
                // Answers to IQs of the previous stream will never come.
                self.deadlines.clear();
                for (_, p) in std::mem::take(&mut self.pending) {
                    self.on_response(stream, p.tag, p.generation, Outcome::Lost)
                        .await;
                }
                self.resync(stream).await;
            }
            StreamEv::Stream(StreamEvent::Suspended) => {
                warn!("connection to the XMPP server lost; resuming or reconnecting");
                self.set_online(false);
            }
            StreamEv::Stream(StreamEvent::Resumed) => {
                // Nothing was lost on the stream, but while it was suspended remote members
                // may have expired here (their devices read UNAVAILABLE until they publish
                // again), and ejabberd does not queue pubsub notifications for a detached
                // session: fetch everything again, as on a new connection.
                info!("stream resumed: resynchronising");
                self.resync(stream).await;
            }
            StreamEv::Stanza(Stanza::Iq(iq)) => self.on_iq(stream, iq).await,
            StreamEv::Stanza(Stanza::Message(m)) => {
                let from_service = m
                    .from
                    .as_ref()
                    .map(|f| f.to_string() == self.cfg.pubsub_service)
                    .unwrap_or(false);
                if !from_service {
                    trace!(from = ?m.from, "ignoring message not from the pubsub service");
                    return;
                }
                let mut healed = false;
                for p in &m.payloads {
                    if let Some(items) = waiting::decode_event(p) {
                        trace!(?items, "waiting records");
                        let changed = self.shared.core.waiting().apply(self.cfg.eid, items);
                        if changed {
                            self.shared.core.waiting_changed();
                        }
                        continue;
                    }
                    let items = wire::decode_event(p);
                    trace!(id = ?m.id, payload = p.name(), ?items, "pubsub event");
                    healed |= self.apply(items, None);
                }
                self.check_fill([0, 0]);
                if healed && self.online {
                    // An expired member is heard again (a partition healed): its devices read
                    // UNAVAILABLE until they change; fetch its items now instead.
                    info!("an expired fabric member is back: fetching its items");
                    self.fetch_state(stream).await;
                }
            }
            StreamEv::Stanza(_) => {}
        }
    }

    /// Match answers to our IQs; answer requests addressed to us (XEP-0199 pings get a
    /// result, anything else an error).
    async fn on_iq(&mut self, stream: &StanzaStream, iq: Iq) {
        let reply = match iq {
            Iq::Result { id, payload, .. } => {
                if self.pending.len() == MAX_IN_FLIGHT / 2 {
                    self.shared.wake.notify_one(); // the flusher may have paused at the cap
                }
                if let Some(p) = self.pending.remove(&id) {
                    self.on_response(stream, p.tag, p.generation, Outcome::Result(payload))
                        .await;
                }
                return;
            }
            Iq::Error { id, error, .. } => {
                if let Some(p) = self.pending.remove(&id) {
                    self.on_response(stream, p.tag, p.generation, Outcome::Error(error))
                        .await;
                }
                return;
            }
            Iq::Get {
                from, id, payload, ..
            } if payload.is("ping", "urn:xmpp:ping") => Iq::Result {
                from: None,
                to: from,
                id,
                payload: None,
            },
            Iq::Get { from, id, .. } | Iq::Set { from, id, .. } => {
                let err = StanzaError::new(
                    ErrorType::Cancel,
                    DefinedCondition::ServiceUnavailable,
                    "en",
                    "not supported",
                );
                Iq::Error {
                    from: None,
                    to: from,
                    id,
                    error: err,
                    payload: None,
                }
            }
        };
        let _ = tokio::time::timeout(
            self.cfg.iq_timeout,
            stream.send(Box::new(Stanza::Iq(reply))),
        )
        .await;
    }

    /// Full resynchronisation after (re)connecting.
    async fn resync(&mut self, stream: &StanzaStream) {
        self.generation += 1;
        self.fetches = 0;
        // Notifications go to the bare JID, which servers deliver only to *available*
        // resources: announce availability first (priority 0).
        let presence = tokio_xmpp::parsers::presence::Presence::available();
        if tokio::time::timeout(
            self.cfg.iq_timeout,
            stream.send(Box::new(Stanza::Presence(presence))),
        )
        .await
        .is_err()
        {
            warn!("could not send initial presence");
        }
        self.leaves.clear();
        let bare = self.bare.to_string();
        let max = self.cfg.max_items;
        let access = self.cfg.access_model;
        let coll = self.cfg.layout == NodeLayout::Collections;
        let (dev_kind, setup_nodes): (NodeKind, [&'static str; 2]) = if coll {
            (
                NodeKind::Collection,
                [wire::NODE_DEVICE_STATE, wire::NODE_MWI],
            )
        } else {
            (NodeKind::Flat, [wire::NODE_DEVICE_STATE, wire::NODE_MWI])
        };
        for node in [wire::NODE_HEARTBEAT, NODE_WAITING]
            .into_iter()
            .chain(setup_nodes)
        {
            let kind = if node == wire::NODE_HEARTBEAT || node == NODE_WAITING {
                NodeKind::Flat
            } else {
                dev_kind
            };
            if let Ok(el) = wire::create_node(node, kind, access, max) {
                self.iq(stream, Tag::Setup("create", node.into()), Req::Set(el))
                    .await;
            }
            // The creator owns the node; every member makes the others owners too (only an
            // owner's grant succeeds), as Asterisk does with its buddies.
            let others: Vec<String> = self
                .cfg
                .fabric_jids
                .iter()
                .filter(|j| **j != bare)
                .cloned()
                .collect();
            if !others.is_empty() {
                if let Ok(el) = wire::affiliations(node, &others, "owner") {
                    self.iq(
                        stream,
                        Tag::Setup("affiliations", node.into()),
                        Req::Set(el),
                    )
                    .await;
                }
            }
            if let Ok(el) = wire::unsubscribe(node, &bare) {
                self.iq(stream, Tag::Setup("unsubscribe", node.into()), Req::Set(el))
                    .await;
            }
            let as_collection = coll && node != wire::NODE_HEARTBEAT && node != NODE_WAITING;
            if let Ok(el) = wire::subscribe(node, &bare, as_collection) {
                self.iq(stream, Tag::Setup("subscribe", node.into()), Req::Set(el))
                    .await;
            }
        }
        // Heartbeats first, so that items of dead members are read as UNAVAILABLE.
        if let Ok(el) = wire::items_request(wire::NODE_HEARTBEAT) {
            self.iq(stream, Tag::FetchHeartbeats, Req::Get(el)).await;
        }
        // Republish everything local, then beat.
        {
            let cache = self.shared.core.cache();
            let mut d = self.shared.dirty();
            d.devices
                .extend(cache.local_devices().into_iter().map(|(k, _)| k));
            d.mwi.extend(cache.local_mwi().into_iter().map(|m| m.key()));
            d.waiting.extend(self.shared.core.waiting().local_ids());
        }
        self.set_online(true);
        // The heartbeat goes after the republished state (see `beat_pending`).
        self.beat_pending = true;
        self.flush(stream).await;
    }

    async fn iq(&mut self, stream: &StanzaStream, tag: Tag, req: Req) -> bool {
        let timeout = self.cfg.iq_timeout;
        self.next_id += 1;
        let id = format!("cf{}", self.next_id);
        let to = Some(self.service.clone());
        let iq = match req {
            Req::Get(payload) => Iq::Get {
                from: None,
                to,
                id: id.clone(),
                payload,
            },
            Req::Set(payload) => Iq::Set {
                from: None,
                to,
                id: id.clone(),
                payload,
            },
        };
        match tokio::time::timeout(timeout, stream.send(Box::new(Stanza::Iq(iq)))).await {
            Ok(_token) => {
                if matches!(
                    tag,
                    Tag::FetchHeartbeats | Tag::Fetch(_) | Tag::DiscoLeaves(_)
                ) {
                    self.fetches += 1;
                }
                self.pending.insert(
                    id.clone(),
                    Pending {
                        tag,
                        generation: self.generation,
                    },
                );
                self.deadlines
                    .push_back((tokio::time::Instant::now() + timeout, id));
                true
            }
            Err(_) => {
                warn!("sending to the XMPP server stalled for {timeout:?}; treating the fabric as offline");
                self.requeue(&tag);
                self.set_online(false);
                self.retry_at = Some(tokio::time::Instant::now() + Duration::from_secs(1));
                false
            }
        }
    }

    fn requeue(&self, tag: &Tag) {
        let mut d = self.shared.dirty();
        match tag {
            Tag::Publish(Republish::Device(k)) => {
                d.devices.insert(k.clone());
            }
            Tag::Publish(Republish::Mwi(k)) => {
                d.mwi.insert(k.clone());
            }
            Tag::Publish(Republish::Waiting(k)) => {
                d.waiting.insert(k.clone());
            }
            _ => {}
        }
    }

    /// Send the latest value of up to [`FLUSH_BATCH`] dirty keys, then return to the event
    /// loop (which calls again while keys remain). Never sending more than a batch without
    /// reading keeps the client's bounded queues from filling in both directions at once,
    /// and [`MAX_IN_FLIGHT`] bounds the IQs awaiting an answer.
    async fn flush(&mut self, stream: &StanzaStream) {
        trace!(pending = self.pending.len(), "flush");
        if self.pending.len() >= MAX_IN_FLIGHT {
            return; // resumed when answers come in
        }
        if self.fetches > 0 {
            // Nothing is published before the initial fetch is read: our choice of item id
            // depends on who else holds a key, and stale items of ours must be withdrawn first.
            return; // resumed by synced()
        }
        let (devices, volatile, mwi, more, waiting_ids) = {
            let mut d = self.shared.dirty();
            let mut budget = FLUSH_BATCH;
            let take = |set: &mut HashSet<String>, budget: &mut usize| -> Vec<String> {
                let keys: Vec<String> = set.iter().take(*budget).cloned().collect();
                for k in &keys {
                    set.remove(k);
                }
                *budget -= keys.len();
                keys
            };
            let waiting = take(&mut d.waiting, &mut budget);
            let devices = take(&mut d.devices, &mut budget);
            let mwi = take(&mut d.mwi, &mut budget);
            let vkeys: Vec<String> = d.volatile.keys().take(budget).cloned().collect();
            let volatile: Vec<(String, DeviceState)> = vkeys
                .into_iter()
                .filter_map(|k| d.volatile.remove_entry(&k))
                .collect();
            let more = !d.devices.is_empty()
                || !d.mwi.is_empty()
                || !d.volatile.is_empty()
                || !d.waiting.is_empty();
            (devices, volatile, mwi, more, waiting)
        };
        let layout = self.cfg.layout;
        let eid = self.cfg.eid;
        // Waiting records first: they order callers across ACD nodes.
        for id in waiting_ids {
            let held = self.shared.core.waiting().local(&id).cloned();
            match held {
                Some(w) => match waiting::publish(&w) {
                    Ok(el) => self.publish(stream, Republish::Waiting(id), el).await,
                    Err(e) => warn!(%e, "cannot encode a waiting record"),
                },
                None => {
                    // Gone: a tombstone (every server notifies a publish), then a retraction.
                    let mut parts = id.splitn(3, '/');
                    let (Some(e), Some(q), Some(c)) = (parts.next(), parts.next(), parts.next())
                    else {
                        continue;
                    };
                    let Ok(e) = e.parse::<Eid>() else { continue };
                    if let Ok(el) = waiting::tombstone(e, q, c) {
                        self.publish(stream, Republish::Waiting(id.clone()), el)
                            .await;
                    }
                    if let Ok(el) = waiting::retract(&id) {
                        self.iq(stream, Tag::Setup("retract", id), Req::Set(el))
                            .await;
                    }
                }
            }
        }
        for key in devices {
            let Some(state) = self.shared.core.cache().local_device(&key) else {
                continue;
            };
            self.ensure_leaf(stream, wire::NODE_DEVICE_STATE, &key)
                .await;
            // Another EID already holds this key (an Asterisk box's item fetched at start):
            // take our own item id rather than overwrite theirs.
            if !self.plain_published.contains(&key)
                && !self.per_eid.contains(&key)
                && self
                    .shared
                    .core
                    .cache()
                    .device_detail(&key)
                    .iter()
                    .any(|(e, _)| *e != eid)
            {
                self.per_eid.insert(key.clone());
            }
            let id = self.item_id(&key);
            match wire::publish_device_state_as(layout, eid, &key, &id, state, true) {
                Ok(el) => self.publish(stream, Republish::Device(key), el).await,
                Err(e) => warn!(%e, "cannot encode device state"),
            }
        }
        for (key, state) in volatile {
            self.ensure_leaf(stream, wire::NODE_DEVICE_STATE, &key)
                .await;
            if let Ok(el) = wire::publish_device_state(layout, eid, &key, state, false) {
                self.publish(stream, Republish::Volatile, el).await;
            }
        }
        for key in mwi {
            let Some(mwi) = self.shared.core.cache().local_mwi_of(&key) else {
                continue;
            };
            self.ensure_leaf(stream, wire::NODE_MWI, &key).await;
            let id = self.item_id(&key);
            match wire::publish_mwi_as(layout, eid, &mwi, &id) {
                Ok(el) => self.publish(stream, Republish::Mwi(key), el).await,
                Err(e) => warn!(%e, "cannot encode MWI"),
            }
        }
        if more {
            self.shared.wake.notify_one();
        } else if self.beat_pending {
            // Everything dirty is on the stream, ahead of this heartbeat.
            self.beat_pending = false;
            self.send_heartbeat(stream).await;
        }
    }

    /// The item id we publish `key` under: the key, or our per-EID id (see `per_eid`).
    fn item_id(&self, key: &str) -> String {
        if self.per_eid.contains(key) {
            wire::per_eid_item_id(key, self.cfg.eid)
        } else {
            key.to_string()
        }
    }

    /// In collections mode, create the key's leaf under its collection once per connection.
    async fn ensure_leaf(&mut self, stream: &StanzaStream, collection: &'static str, key: &str) {
        if self.cfg.layout != NodeLayout::Collections || self.leaves.contains(key) {
            return;
        }
        self.leaves.insert(key.to_string());
        let kind = NodeKind::LeafIn(collection);
        if let Ok(el) = wire::create_node(key, kind, self.cfg.access_model, self.cfg.max_items) {
            self.iq(stream, Tag::Setup("create leaf", key.into()), Req::Set(el))
                .await;
        }
    }

    async fn publish(&mut self, stream: &StanzaStream, what: Republish, el: Element) {
        if self.iq(stream, Tag::Publish(what), Req::Set(el)).await {
            self.shared.stats().published += 1;
        }
    }

    async fn send_heartbeat(&mut self, stream: &StanzaStream) {
        self.last_beat = Some(tokio::time::Instant::now());
        let hb = Heartbeat {
            eid: self.cfg.eid,
            site: self.cfg.site.clone(),
            role: self.cfg.role.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            time: unix_now(),
            sip: self.cfg.sip_address.clone(),
            queues: self.shared.core.queues(),
        };
        if let Ok(el) = wire::publish_heartbeat(&hb) {
            self.iq(stream, Tag::Heartbeat, Req::Set(el)).await;
        }
    }

    async fn on_response(
        &mut self,
        stream: &StanzaStream,
        tag: Tag,
        generation: u64,
        outcome: Outcome,
    ) {
        let fetch = generation == self.generation
            && matches!(
                tag,
                Tag::FetchHeartbeats | Tag::Fetch(_) | Tag::DiscoLeaves(_)
            );
        let failed_heartbeat_fetch =
            fetch && matches!(tag, Tag::FetchHeartbeats) && !matches!(outcome, Outcome::Result(_));
        self.on_response_inner(stream, tag, generation, outcome)
            .await;
        if failed_heartbeat_fetch {
            // No heartbeats to read (or a server that errs on an empty node): fetch state anyway.
            self.fetch_state(stream).await;
        }
        if fetch {
            self.fetches = self.fetches.saturating_sub(1);
            if self.fetches == 0 {
                self.synced();
            }
        }
    }

    async fn on_response_inner(
        &mut self,
        stream: &StanzaStream,
        tag: Tag,
        generation: u64,
        outcome: Outcome,
    ) {
        let stale = generation != self.generation;
        match outcome {
            Outcome::TimedOut => {
                warn!(?tag, "IQ timed out");
                if !stale
                    && matches!(
                        tag,
                        Tag::Setup("create" | "subscribe", _)
                            | Tag::FetchHeartbeats
                            | Tag::Fetch(_)
                            | Tag::DiscoLeaves(_)
                    )
                {
                    self.schedule_resync(&tag, "timed out");
                }
                if matches!(tag, Tag::Publish(_) | Tag::Heartbeat) {
                    self.shared.stats().publish_errors += 1;
                    self.requeue(&tag);
                    self.retry_at
                        .get_or_insert(tokio::time::Instant::now() + Duration::from_secs(1));
                }
            }
            Outcome::Lost => {
                debug!(?tag, "IQ lost with the connection");
                self.requeue(&tag);
            }
            Outcome::Error(err) => {
                let cond = format!("{:?}", err.defined_condition);
                let expected_create = matches!(
                    err.defined_condition,
                    DefinedCondition::Conflict | DefinedCondition::Forbidden
                );
                let resync = !stale
                    && match &tag {
                        Tag::Setup("create" | "create leaf", _) => !expected_create,
                        Tag::Setup("subscribe", _) | Tag::Fetch(_) => true,
                        _ => false,
                    };
                if resync {
                    self.schedule_resync(&tag, &cond);
                }
                match &tag {
                    // Exists already: conflict, or forbidden when another member owns it.
                    Tag::Setup("create" | "create leaf", _)
                        if matches!(
                            err.defined_condition,
                            DefinedCondition::Conflict | DefinedCondition::Forbidden
                        ) => {}
                    // Only the owner may grant; the others' grants fail by design.
                    Tag::Setup("affiliations", _)
                        if err.defined_condition == DefinedCondition::Forbidden =>
                    {
                        debug!(?tag, "not the node's owner: affiliations left to the owner")
                    }
                    // ejabberd lets only an item's creator overwrite it, owners included: the
                    // key's plain item id belongs to another publisher (an Asterisk box, another
                    // member). We never retract or overwrite it: from now on we publish this key
                    // under our per-EID item id.
                    Tag::Publish(Republish::Device(key) | Republish::Mwi(key))
                        if err.defined_condition == DefinedCondition::Forbidden
                            && !self.per_eid.contains(key) =>
                    {
                        info!(%key, "the key's item belongs to another publisher: publishing it under our per-EID item id");
                        self.per_eid.insert(key.clone());
                        self.requeue(&tag);
                        self.flush(stream).await;
                    }
                    Tag::Setup("unsubscribe", _) => {}
                    Tag::Ping => {}
                    // A transient refusal (type `wait`, or a server-side failure such as
                    // ejabberd's "Database failure" under load): the key's latest value is
                    // published again after a pause, like a timed-out publish. Without this a
                    // caller's join could be lost for good on one node (seen in CI).
                    Tag::Publish(_) | Tag::Heartbeat if transient(&err) => {
                        self.shared.stats().publish_errors += 1;
                        warn!(?tag, condition = %cond, "publish failed for now: published again in 1 s");
                        self.requeue(&tag);
                        self.retry_at
                            .get_or_insert(tokio::time::Instant::now() + Duration::from_secs(1));
                    }
                    Tag::Publish(_) | Tag::Heartbeat => {
                        self.shared.stats().publish_errors += 1;
                        warn!(?tag, condition = %cond, "publish refused by the pubsub service");
                    }
                    _ => {
                        warn!(?tag, condition = %cond, text = ?err.texts.values().next(), "pubsub request failed")
                    }
                }
            }
            Outcome::Result(payload) => match tag {
                _ if {
                    trace!(?tag, "IQ result");
                    false
                } => {}
                Tag::Publish(what) => {
                    self.shared.stats().publish_acked += 1;
                    self.check_fill([0, 0]);
                    if let Republish::Device(k) | Republish::Mwi(k) = what {
                        if !self.per_eid.contains(&k) {
                            self.plain_published.insert(k);
                        }
                    }
                }
                Tag::Ping if !self.online => {
                    info!("the XMPP server answers again: resynchronising");
                    self.resync(stream).await;
                }
                Tag::FetchHeartbeats if !stale => {
                    if let Some(p) = payload {
                        self.apply(wire::decode_items_result(&p), Some(unix_now()));
                    }
                    self.fetch_state(stream).await;
                }
                Tag::Fetch(NODE_WAITING) if !stale => {
                    if let Some(p) = payload {
                        let items = waiting::decode_items_result(&p);
                        let eid = self.cfg.eid;
                        let mut mine = Vec::new();
                        let changed = {
                            let mut table = self.shared.core.waiting();
                            for it in &items {
                                if let waiting::WaitingItem::Put(w) = it {
                                    // Left by an earlier run of ours: withdraw it.
                                    if w.eid == eid && table.local(&w.item_id()).is_none() {
                                        mine.push(w.item_id());
                                    }
                                }
                            }
                            let cleared = table.clear_remote();
                            table.apply(eid, items) || cleared
                        };
                        if changed {
                            self.shared.core.waiting_changed();
                        }
                        if !mine.is_empty() {
                            self.shared.dirty().waiting.extend(mine);
                        }
                    }
                }
                Tag::Fetch(node) if !stale => {
                    if let Some(p) = payload {
                        let n: usize = p
                            .children()
                            .filter(|c| c.name() == "items")
                            .map(|i| i.children().count())
                            .sum();
                        let fetched = match node {
                            wire::NODE_DEVICE_STATE => [n, 0],
                            wire::NODE_MWI => [0, n],
                            _ => [0, 0],
                        };
                        self.withdraw_stale_own_items(stream, &p).await;
                        self.apply(wire::decode_items_result(&p), Some(unix_now()));
                        self.check_fill(fetched);
                    }
                }
                Tag::DiscoLeaves(_) if !stale => {
                    let Some(p) = payload else { return };
                    let leaves: Vec<String> = p
                        .children()
                        .filter(|c| c.name() == "item")
                        .filter_map(|c| c.attr("node").map(str::to_string))
                        .collect();
                    for leaf in leaves {
                        if let Ok(el) = wire::items_request(&leaf) {
                            self.iq(stream, Tag::Fetch("leaf"), Req::Get(el)).await;
                        }
                    }
                }
                _ => {}
            },
        }
    }

    /// Restart truth: items our EID left on the server (an earlier run, before a crash) for
    /// keys we no longer hold are overwritten, under the same item id, with a withdrawal
    /// (device INVALID, the state that adds nothing to an aggregate; mailbox 0/0) before we
    /// report Online. Items we still hold are republished by the resync anyway.
    async fn withdraw_stale_own_items(&mut self, stream: &StanzaStream, pubsub: &Element) {
        let eid = self.cfg.eid;
        for own in wire::items_of_eid(pubsub, eid) {
            if own.item_id != own.key {
                self.per_eid.insert(own.key.clone());
            } else {
                self.plain_published.insert(own.key.clone());
            }
            let held = {
                let cache = self.shared.core.cache();
                if own.mwi {
                    cache.local_mwi_of(&own.key).is_some()
                } else {
                    cache.local_device(&own.key).is_some()
                }
            };
            if held {
                continue;
            }
            info!(key = %own.key, item = %own.item_id, "withdrawing what an earlier run of this member left on the server");
            let el = if own.mwi {
                let (m, c) = Mwi::split_key(&own.key);
                wire::publish_mwi_as(self.cfg.layout, eid, &Mwi::new(m, c, 0, 0), &own.item_id)
            } else {
                wire::publish_device_state_as(
                    self.cfg.layout,
                    eid,
                    &own.key,
                    &own.item_id,
                    DeviceState::Invalid,
                    true,
                )
            };
            if let Ok(el) = el {
                self.iq(stream, Tag::Setup("withdraw", own.key), Req::Set(el))
                    .await;
            }
        }
    }

    /// After heartbeats are known: fetch the state nodes' items (collections: each leaf).
    async fn fetch_state(&mut self, stream: &StanzaStream) {
        if let Ok(el) = wire::items_request(NODE_WAITING) {
            self.iq(stream, Tag::Fetch(NODE_WAITING), Req::Get(el))
                .await;
        }
        for node in [wire::NODE_DEVICE_STATE, wire::NODE_MWI] {
            if self.cfg.layout == NodeLayout::Collections {
                let el = Element::builder("query", "http://jabber.org/protocol/disco#items")
                    .attr(minidom::rxml::xml_ncname!("node").into(), node);
                self.iq(stream, Tag::DiscoLeaves(node), Req::Get(el.build()))
                    .await;
            } else if let Ok(el) = wire::items_request(node) {
                self.iq(stream, Tag::Fetch(node), Req::Get(el)).await;
            }
        }
    }

    /// Warn once as a flat state node nears `max_items` (see [`crate::fill`]): its item count
    /// is what a fetch just found (`fetched`, per node), or else what the cache holds (one
    /// item per (key, EID): own keys, published or about to be, and every one heard).
    fn check_fill(&mut self, fetched: [usize; 2]) {
        if self.cfg.layout != NodeLayout::Flat {
            return; // one leaf per key
        }
        let (devices, mwi) = self.shared.core.cache().item_counts();
        let nodes = [wire::NODE_DEVICE_STATE, wire::NODE_MWI];
        for (i, held) in [devices, mwi].into_iter().enumerate() {
            let items = held.max(fetched[i]);
            if self.fill[i].observe(items) {
                self.shared.stats().nodes_nearly_full += 1;
                warn!(node = nodes[i], items, max_items = self.cfg.max_items,
                    "the node is nearly full: beyond max_items the server evicts the oldest items (raise max_items here and on the server)");
            }
        }
    }

    /// Apply decoded items: live notifications (`fetched_at == None`) or fetched items.
    /// Returns whether a live heartbeat revived an expired member.
    fn apply(&self, items: Vec<WireItem>, fetched_at: Option<u64>) -> bool {
        let mut healed = false;
        let now = Instant::now();
        let mut changes = Vec::new();
        let n = items.len() as u64;
        {
            let mut cache = self.shared.core.cache();
            for item in items {
                match item {
                    WireItem::Device {
                        key,
                        eid,
                        state,
                        cachable,
                    } => {
                        let c = match fetched_at {
                            None => cache.set_remote_device(eid, &key, state, cachable, now),
                            Some(_) if cachable => cache.set_fetched_device(eid, &key, state),
                            Some(_) => None,
                        };
                        changes.extend(c);
                    }
                    WireItem::Mwi { eid, mwi } => {
                        let c = match fetched_at {
                            None => cache.set_remote_mwi(eid, mwi, now),
                            Some(_) => cache.set_fetched_mwi(eid, mwi),
                        };
                        changes.extend(c);
                    }
                    WireItem::Heartbeat(hb) => {
                        let was_expired = cache.is_expired(hb.eid);
                        let age = match fetched_at {
                            Some(t) => Duration::from_secs(t.saturating_sub(hb.time)),
                            // A live heartbeat of an expired member revives it only if it is
                            // fresh: after a partition, XEP-0198 resends the heartbeats the
                            // member queued while cut off, ahead of its republished state, and
                            // reviving on those read its stale items back (measured on
                            // ejabberd). Only this case depends on NTP-level clocks.
                            None if was_expired => {
                                Duration::from_secs(unix_now().saturating_sub(hb.time))
                            }
                            None => Duration::ZERO,
                        };
                        let eid = hb.eid;
                        changes.extend(cache.heartbeat(hb, age, now));
                        let revived = was_expired && !cache.is_expired(eid);
                        if fetched_at.is_none() && was_expired && !revived {
                            debug!(%eid, ?age, "stale heartbeat of an expired member (a resend, or its clock lags): not revived");
                        }
                        healed |= fetched_at.is_none() && revived;
                    }
                    WireItem::Ignored(why) => trace!(%why, "ignored pubsub item"),
                }
            }
        }
        self.shared.stats().items_received += n;
        if changes
            .iter()
            .any(|c| matches!(c, Change::PeerUp(_) | Change::PeerExpired(_)))
        {
            self.shared.core.waiting_changed();
        }
        self.shared.core.emit_all(changes);
        healed
    }
}

/// A pubsub error worth retrying: the server says to wait (RFC 6120 §8.3.2 type `wait`), or
/// it failed on its side (`internal-server-error`, `resource-constraint`,
/// `remote-server-timeout`), as opposed to a refusal that would recur (`forbidden`, …).
fn transient(err: &StanzaError) -> bool {
    err.type_ == ErrorType::Wait
        || matches!(
            err.defined_condition,
            DefinedCondition::InternalServerError
                | DefinedCondition::ResourceConstraint
                | DefinedCondition::RemoteServerTimeout
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_publish_is_retried_only_when_the_error_is_transient() {
        let e = |t, c| StanzaError::new(t, c, "en", "x");
        // ejabberd's answer under load: `<internal-server-error/>` "Database failure".
        assert!(transient(&e(
            ErrorType::Cancel,
            DefinedCondition::InternalServerError
        )));
        assert!(transient(&e(ErrorType::Wait, DefinedCondition::Conflict)));
        assert!(transient(&e(
            ErrorType::Cancel,
            DefinedCondition::ResourceConstraint
        )));
        assert!(!transient(&e(ErrorType::Auth, DefinedCondition::Forbidden)));
        assert!(!transient(&e(
            ErrorType::Cancel,
            DefinedCondition::ItemNotFound
        )));
        assert!(!transient(&e(
            ErrorType::Modify,
            DefinedCondition::BadRequest
        )));
    }

    #[test]
    fn loopback_detection() {
        for s in [
            "127.0.0.1:5222",
            "[::1]:5222",
            "localhost:5222",
            "127.3.4.5:1",
        ] {
            assert!(is_loopback_server(s), "{s}");
        }
        for s in [
            "10.0.0.1:5222",
            "xmpp.example.com:5222",
            "[2001:db8::1]:5222",
        ] {
            assert!(!is_loopback_server(s), "{s}");
        }
    }

    #[tokio::test]
    async fn config_is_validated() {
        let eid = Eid::derive("t");
        let mut c = XmppBusConfig::new("gw@fabric.test", "x", "pubsub.fabric.test", eid);
        c.tls = TlsMode::Plaintext;
        assert!(matches!(
            XmppBus::start(c.clone()),
            Err(XmppBusError::PlaintextNeedsServer)
        ));
        c.server = Some("192.0.2.1:5222".into());
        assert!(matches!(
            XmppBus::start(c.clone()),
            Err(XmppBusError::PlaintextNotLoopback(_))
        ));
        c.server = Some("127.0.0.1:1".into());
        c.liveness_ttl = Duration::from_secs(1);
        assert!(matches!(
            XmppBus::start(c.clone()),
            Err(XmppBusError::TtlTooShort { .. })
        ));
        c.liveness_ttl = Duration::from_secs(30);
        c.jid = "@@".into();
        assert!(matches!(XmppBus::start(c), Err(XmppBusError::Jid(..))));
    }

    #[tokio::test]
    async fn server_lists_are_validated() {
        let eid = Eid::derive("t");
        let mut c = XmppBusConfig::new("gw@fabric.test", "x", "pubsub.fabric.test", eid);
        c.server = Some("xmpp1.example".into());
        c.servers = vec!["xmpp2.example:5223".into(), "xmpp1.example:5222".into()];
        // a bare host gets 5222; duplicates are tried once
        assert_eq!(
            server_list(&c).unwrap(),
            ["xmpp1.example:5222", "xmpp2.example:5223"]
        );
        c.servers.push("xmpp3.example:0".into());
        assert!(matches!(
            XmppBus::start(c.clone()),
            Err(XmppBusError::BadServer(_))
        ));
        // plaintext: every listed server must be on loopback
        c.tls = TlsMode::Plaintext;
        c.server = Some("127.0.0.1:5222".into());
        c.servers = vec!["192.0.2.7:5222".into()];
        assert!(matches!(
            XmppBus::start(c.clone()),
            Err(XmppBusError::PlaintextNotLoopback(s)) if s == "192.0.2.7:5222"
        ));
        c.servers = (0..=MAX_SERVERS)
            .map(|i| format!("127.0.0.1:{}", 1000 + i))
            .collect();
        assert!(matches!(
            XmppBus::start(c.clone()),
            Err(XmppBusError::BadServer(_))
        ));
        c.servers = vec!["127.0.0.1:5223".into()];
        let bus = XmppBus::start(c).expect("valid");
        assert_eq!(bus.server(), None, "not logged in anywhere yet");
        bus.shutdown().await;
    }
}

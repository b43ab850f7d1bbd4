//! The component's connection (XEP-0114 over TCP): login by handshake, one task owning the
//! stream, the bus subscription, the agent inputs and the pause-minute timer; reconnects with
//! back-off and, once connected again, sends every subscriber the current presence.
//!
//! What the server sends passes the stanza guard (depth, size and token bounded, an offending
//! stanza replaced and counted) before the XML parser; a stanza that does not parse is counted
//! and skipped, never fatal.

use super::core::{Core, Out, PresenceStats, NS};
use super::header::HeaderFix;
use super::store::{self, StoreError};
use super::AgentInput;
use crate::guard::{Guard, Limits};
use crate::xmpp::{DropLog, Guarded};
use crate::{Bus, BusEvent, BusStatus, Change};
use futures::{SinkExt, StreamExt as _};
use minidom::Element;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_xmpp::xmlstream::{ReadError, StreamHeader, Timeouts, XmlStream};
use tracing::{debug, info, warn};

/// Everything the presence component needs; built by the binary from `[presence]`.
#[derive(Debug, Clone)]
pub struct PresenceConfig {
    /// The component's JID (its domain), e.g. `agents.example.com`.
    pub jid: String,
    /// The shared secret the server has for it.
    pub secret: String,
    /// The server's component port, `host:port` (XEP-0114 is not encrypted: keep it on
    /// loopback or a private network).
    pub server: String,
    /// Where subscriptions are kept (`None`: in memory only, lost on restart).
    pub store: Option<PathBuf>,
    /// Prefix of the device keys shown (`PJSIP/`): `PJSIP/1000` is `1000@<jid>`.
    pub device_prefix: String,
    /// Bare JIDs or domains whose users may subscribe (empty: the component's parent domain).
    pub allow: Vec<String>,
    /// Silence after which the component pings the server.
    pub keepalive: Duration,
    /// First reconnect delay; doubles per failure.
    pub reconnect_initial: Duration,
    /// Cap of the reconnect delay.
    pub reconnect_max: Duration,
}

impl PresenceConfig {
    /// A config with the documented defaults.
    pub fn new(jid: &str, secret: &str, server: &str) -> Self {
        PresenceConfig {
            jid: jid.into(),
            secret: secret.into(),
            server: server.into(),
            store: None,
            device_prefix: "PJSIP/".into(),
            allow: Vec::new(),
            keepalive: Duration::from_secs(30),
            reconnect_initial: Duration::from_millis(250),
            reconnect_max: Duration::from_secs(15),
        }
    }
}

/// Why the presence component could not start.
#[derive(Debug, thiserror::Error)]
pub enum PresenceError {
    /// The component JID is not a bare domain JID.
    #[error("presence component JID {0:?}: {1}")]
    Jid(String, String),
    /// An `allow` entry is neither a bare JID nor a domain.
    #[error("presence allow entry {0:?}: {1}")]
    Allow(String, String),
    /// The subscription store cannot be read.
    #[error("presence subscription store: {0}")]
    Store(#[from] StoreError),
}

/// Agent inputs queued at most (more are dropped and counted).
const INPUT_QUEUE: usize = 4096;
/// One TCP connect attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The handshake's answer.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Bounds on what the server sends a presence component: presence and small IQs only.
const LIMITS: Limits = Limits {
    max_token: 4096,
    max_stanza_depth: 16,
    max_item_depth: 8,
    max_item_bytes: 16 * 1024,
    max_item_elements: 64,
    max_stanza_bytes: 64 * 1024,
};

struct Shared {
    stats: Mutex<PresenceStats>,
    drops: Arc<DropLog>,
    inputs_dropped: std::sync::atomic::AtomicU64,
}

/// The running component (cheap to clone).
#[derive(Clone)]
pub struct PresenceService {
    inputs: mpsc::Sender<AgentInput>,
    shared: Arc<Shared>,
    online: watch::Receiver<bool>,
    stop: Arc<Mutex<Option<oneshot::Sender<()>>>>,
    task: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl std::fmt::Debug for PresenceService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PresenceService")
            .field("online", &*self.online.borrow())
            .finish()
    }
}

type Io = tokio::io::BufStream<Guarded<HeaderFix<tokio::net::TcpStream>>>;
type Stream = XmlStream<Io, Element>;

impl PresenceService {
    /// Validate the config, load the subscriptions and start connecting in the background
    /// (needs a tokio runtime).
    pub fn start(cfg: PresenceConfig, bus: Arc<dyn Bus>) -> Result<PresenceService, PresenceError> {
        let jid: tokio_xmpp::jid::Jid = cfg.jid.parse().map_err(|e: tokio_xmpp::jid::Error| {
            PresenceError::Jid(cfg.jid.clone(), e.to_string())
        })?;
        if jid.node().is_some() || jid.resource().is_some() {
            return Err(PresenceError::Jid(
                cfg.jid.clone(),
                "a component JID is a domain (agents.example.com)".into(),
            ));
        }
        for a in &cfg.allow {
            a.parse::<tokio_xmpp::jid::BareJid>()
                .map_err(|e| PresenceError::Allow(a.clone(), e.to_string()))?;
        }
        let subs = match &cfg.store {
            Some(p) => store::load(p)?,
            None => Default::default(),
        };
        let core = Core::new(
            jid.domain().as_str(),
            &cfg.device_prefix,
            cfg.allow.clone(),
            subs,
        );
        let (inputs, inputs_rx) = mpsc::channel(INPUT_QUEUE);
        let shared = Arc::new(Shared {
            stats: Mutex::new(core.stats()),
            drops: Arc::new(DropLog::default()),
            inputs_dropped: Default::default(),
        });
        let (online_tx, online) = watch::channel(false);
        let (stop_tx, stop_rx) = oneshot::channel();
        let worker = Worker {
            cfg,
            core,
            bus,
            shared: shared.clone(),
            online_tx,
        };
        let span = tracing::info_span!("presence", jid = %jid);
        let task = tokio::spawn(tracing::Instrument::instrument(
            worker.run(inputs_rx, stop_rx),
            span,
        ));
        Ok(PresenceService {
            inputs,
            shared,
            online,
            stop: Arc::new(Mutex::new(Some(stop_tx))),
            task: Arc::new(Mutex::new(Some(task))),
        })
    }

    /// Tell the component about an agent (non-blocking; dropped and counted when the queue
    /// is full).
    pub fn agent(&self, input: AgentInput) {
        if self.inputs.try_send(input).is_err() {
            self.shared.inputs_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Wait until the component is logged in to the server.
    pub async fn wait_online(&self, timeout: Duration) -> bool {
        let mut rx = self.online.clone();
        tokio::time::timeout(timeout, rx.wait_for(|o| *o))
            .await
            .map(|r| r.is_ok())
            .unwrap_or(false)
    }

    /// Counters.
    pub fn stats(&self) -> PresenceStats {
        let mut s = *self.shared.stats.lock().unwrap_or_else(|p| p.into_inner());
        s.stanzas_dropped = self.shared.drops.stanzas.load(Ordering::Relaxed)
            + self.shared.drops.items.load(Ordering::Relaxed);
        s.inputs_dropped = self.shared.inputs_dropped.load(Ordering::Relaxed);
        s
    }

    /// Close the stream and stop the task.
    pub async fn shutdown(&self) {
        let stop = self.stop.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(s) = stop {
            let _ = s.send(());
        }
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = task {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }
}

/// Writes `buf` (whole stanzas) on the stream's socket itself, not through tokio-xmpp's
/// writer: every stanza after the handshake goes this way, so nothing is ever buffered in
/// the `XmlStream` or the `BufStream` (both were flushed by the handshake's send), and the
/// bytes keep their order. Saves the xso/rxml serialisation and three buffer layers per
/// presence (`presence_bench`).
async fn write_direct(stream: &Stream, buf: &[u8]) -> std::io::Result<()> {
    let tcp = stream.get_stream().get_ref().get_ref().get_ref();
    let mut off = 0;
    while off < buf.len() {
        match tcp.try_write(&buf[off..]) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => off += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => tcp.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Connect and log in (XEP-0114 handshake).
async fn login(cfg: &PresenceConfig, drops: &Arc<DropLog>) -> Result<Stream, String> {
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&cfg.server))
        .await
        .map_err(|_| {
            format!(
                "TCP connect to {} not done within {CONNECT_TIMEOUT:?}",
                cfg.server
            )
        })?
        .map_err(|e| format!("TCP connect to {}: {e}", cfg.server))?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let io = tokio::io::BufStream::new(Guarded::with_guard(
        HeaderFix::new(tcp),
        Guard::new(LIMITS),
        drops.clone(),
    ));
    let timeouts = Timeouts {
        read_timeout: cfg.keepalive,
        response_timeout: LOGIN_TIMEOUT,
    };
    let fut = async {
        let header = StreamHeader {
            to: Some(std::borrow::Cow::Borrowed(cfg.jid.as_str())),
            from: None,
            id: None,
        };
        let mut pending = tokio_xmpp::xmlstream::initiate_stream(io, NS, header, timeouts)
            .await
            .map_err(|e| format!("stream header: {e}"))?;
        let id = pending
            .take_header()
            .id
            .ok_or("the server's stream header has no id")?
            .into_owned();
        let mut stream: Stream = pending.skip_features();
        let hs: Element =
            tokio_xmpp::parsers::component::Handshake::from_stream_id_and_password(id, &cfg.secret)
                .into();
        stream.send(&hs).await.map_err(|e| e.to_string())?;
        loop {
            match stream.next().await {
                Some(Ok(el)) if el.name() == "handshake" => return Ok(stream),
                Some(Ok(el)) => {
                    let why = el
                        .children()
                        .map(|c| c.name().to_string())
                        .next()
                        .unwrap_or_else(|| el.name().to_string());
                    return Err(format!("handshake refused by the server: {why}"));
                }
                Some(Err(ReadError::SoftTimeout)) => {}
                Some(Err(e)) => return Err(format!("handshake: {e}")),
                None => return Err("the server closed the stream during the handshake".into()),
            }
        }
    };
    tokio::time::timeout(LOGIN_TIMEOUT, fut)
        .await
        .map_err(|_| format!("no handshake answer within {LOGIN_TIMEOUT:?}"))?
}

struct Worker {
    cfg: PresenceConfig,
    core: Core,
    bus: Arc<dyn Bus>,
    shared: Arc<Shared>,
    online_tx: watch::Sender<bool>,
}

enum Ev {
    Stanza(Option<Result<Element, ReadError>>),
    Bus(Option<BusEvent>),
    Input(Option<AgentInput>),
    Tick,
    Stop,
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

impl Worker {
    fn publish_stats(&self) {
        *self.shared.stats.lock().unwrap_or_else(|p| p.into_inner()) = self.core.stats();
    }

    /// Updates the core from a bus event (the stanzas it returns are for the caller to send).
    fn on_bus(&mut self, ev: BusEvent) -> Vec<Out> {
        let now = Instant::now();
        match ev {
            BusEvent::Changed(Change::Device { key, state }) => {
                self.core.device_changed(&key, state, now)
            }
            BusEvent::Lagged(_) | BusEvent::Status(BusStatus::Online) => {
                self.core.devices(self.bus.snapshot().devices, now)
            }
            _ => Vec::new(),
        }
    }

    async fn persist(&mut self) {
        if !self.core.take_store_dirty() {
            return;
        }
        let Some(path) = self.cfg.store.clone() else {
            return;
        };
        let text = store::format(self.core.subscriptions());
        match tokio::task::spawn_blocking(move || store::save(&path, &text)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!("cannot save the presence subscriptions: {e}"),
            Err(e) => warn!("cannot save the presence subscriptions: {e}"),
        }
    }

    async fn run(
        mut self,
        mut inputs: mpsc::Receiver<AgentInput>,
        mut stop: oneshot::Receiver<()>,
    ) {
        let mut bus_rx = self.bus.subscribe();
        self.core
            .devices(self.bus.snapshot().devices, Instant::now());
        let mut delay = self.cfg.reconnect_initial;
        loop {
            // Connecting: keep the core current meanwhile (what it would send is sent in
            // full once online).
            let drops = self.shared.drops.clone();
            let cfg = self.cfg.clone();
            let conn = login(&cfg, &drops);
            tokio::pin!(conn);
            let res = loop {
                tokio::select! {
                    r = &mut conn => break Some(r),
                    ev = crate::recv(&mut bus_rx) => match ev {
                        Some(ev) => { self.on_bus(ev); }
                        None => break None,
                    },
                    Some(i) = inputs.recv() => { self.core.agent(i, Instant::now()); }
                    _ = &mut stop => break None,
                }
            };
            self.persist().await;
            let mut stream = match res {
                None => return,
                Some(Ok(s)) => s,
                Some(Err(e)) => {
                    let wait = delay.mul_f64(0.8 + rand::random::<f64>() * 0.4);
                    warn!("presence component cannot log in: {e}; retrying in {wait:?}");
                    delay = (delay * 2).min(self.cfg.reconnect_max);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => continue,
                        _ = &mut stop => return,
                    }
                }
            };
            delay = self.cfg.reconnect_initial;
            self.core.stats_mut().connects += 1;
            info!("presence component online as {}", self.cfg.jid);
            let now = Instant::now();
            self.core.devices(self.bus.snapshot().devices, now);
            let mut out = self.core.online(now);
            let _ = self.online_tx.send(true);
            let server = self
                .cfg
                .jid
                .split_once('.')
                .map(|(_, d)| d.to_string())
                .unwrap_or_else(|| self.cfg.jid.clone());
            let mut pings = 0u64;
            let mut text = Vec::with_capacity(1024);
            loop {
                // Saved before `subscribed` goes out: a subscription acknowledged survives
                // a crash.
                self.persist().await;
                if !out.is_empty() {
                    text.clear();
                    for o in out.drain(..) {
                        o.write_text(&mut text);
                    }
                    if let Err(e) = write_direct(&stream, &text).await {
                        warn!("presence component: send failed: {e}");
                        break;
                    }
                    if text.capacity() > 64 * 1024 {
                        text = Vec::with_capacity(1024);
                    }
                }
                self.publish_stats();
                let tick = self.core.poll_timeout(Instant::now());
                let ev = tokio::select! {
                    el = stream.next() => Ev::Stanza(el),
                    ev = crate::recv(&mut bus_rx) => Ev::Bus(ev),
                    Some(i) = inputs.recv() => Ev::Input(Some(i)),
                    _ = sleep_until_opt(tick) => Ev::Tick,
                    _ = &mut stop => Ev::Stop,
                };
                let now = Instant::now();
                match ev {
                    Ev::Stanza(Some(Ok(el))) => out = self.core.handle_stanza(&el, now),
                    Ev::Stanza(Some(Err(ReadError::SoftTimeout))) => {
                        // Silent for `keepalive`: make the server say something (a dead one
                        // is noticed by the hard timeout).
                        pings += 1;
                        let mut ping = Element::builder("iq", NS)
                            .append(Element::builder("ping", "urn:xmpp:ping").build())
                            .build();
                        for (k, v) in [
                            ("type", "get".to_string()),
                            ("id", format!("ping-{pings}")),
                            ("from", self.cfg.jid.clone()),
                            ("to", server.clone()),
                        ] {
                            if let Ok(n) = minidom::rxml::NcName::try_from(k) {
                                ping.set_attr(minidom::rxml::Namespace::NONE, n, v);
                            }
                        }
                        out.push(Out::Stanza(ping));
                    }
                    Ev::Stanza(Some(Err(ReadError::ParseError(e)))) => {
                        self.core.stats_mut().ignored += 1;
                        debug!("presence component: unparsable stanza skipped: {e}");
                    }
                    Ev::Stanza(Some(Err(e))) => {
                        warn!("presence component: stream lost: {e}");
                        break;
                    }
                    Ev::Stanza(None) => {
                        warn!("presence component: the server closed the stream");
                        break;
                    }
                    Ev::Bus(Some(ev)) => out = self.on_bus(ev),
                    Ev::Bus(None) => return,
                    Ev::Input(Some(i)) => out = self.core.agent(i, now),
                    Ev::Input(None) => {}
                    Ev::Tick => out = self.core.handle_timeout(now),
                    Ev::Stop => {
                        let _ = SinkExt::<&Element>::close(&mut stream).await;
                        let _ = self.online_tx.send(false);
                        return;
                    }
                }
            }
            let _ = self.online_tx.send(false);
            self.publish_stats();
        }
    }
}

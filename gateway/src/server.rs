//! The gateway process: SIP transports + the transaction layer + the registrar + the device
//! cache (SQL) + the state bus. Registrations drive device state: NOT_INUSE while a contact is
//! registered and answers OPTIONS qualify, UNAVAILABLE when none is.

use crate::devices::{DeviceCache, DeviceStore};
use crate::registrar::digest::Algorithm;
use crate::registrar::{self, Credentials, Registrar, RegistrarEvent, UserRecord};
use crate::sip::message::{self, Method, Request, SipMessage};
use crate::sip::transaction::{self as tx, TransactionKey, TransactionLayer};
use crate::transport::{self, Target, TransportConfig, TransportEvent, Transports};
use statebus::{Bus, DeviceState};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tracing::{debug, info, warn};

/// Everything the gateway needs; built by the binary from its config file.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// UDP listeners.
    pub udp: Vec<SocketAddr>,
    /// TCP listeners.
    pub tcp: Vec<SocketAddr>,
    /// Digest realm (and the domain of the AORs).
    pub realm: String,
    /// Database URL (`sqlite://…` or `postgres://…`).
    pub database: String,
    /// Secret for nonces.
    pub secret: Vec<u8>,
    /// Registration expiry bounds.
    pub min_expires: u32,
    /// Default expiry.
    pub default_expires: u32,
    /// Maximum expiry.
    pub max_expires: u32,
    /// Digest algorithms offered, in order.
    pub algorithms: Vec<Algorithm>,
    /// How often the device table is re-read.
    pub db_reload: Duration,
    /// How often registered contacts are qualified with OPTIONS.
    pub qualify_interval: Duration,
    /// SIP timer T1 (Timer F, the qualify timeout, is 64·T1).
    pub t1: Duration,
    /// Device-state key prefix, e.g. `PJSIP/`.
    pub device_prefix: String,
}

/// Errors starting the gateway.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The database could not be opened.
    #[error(transparent)]
    Db(#[from] crate::devices::DbError),
    /// A listener could not be bound.
    #[error("binding SIP listeners: {0}")]
    Bind(#[from] std::io::Error),
}

/// Where a message came from / goes to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Peer {
    /// Remote address.
    pub addr: SocketAddr,
    /// UDP, or the TCP connection.
    pub transport: transport::Transport,
    /// Our listener it arrived at.
    pub local: SocketAddr,
}

/// The device table as the registrar's credential store.
#[derive(Debug, Clone)]
struct DeviceCredentials(DeviceCache);

impl Credentials for DeviceCredentials {
    fn lookup(&self, user: &str, realm: &str) -> Option<UserRecord> {
        let d = self.0.get(user)?;
        (d.realm == realm).then(|| UserRecord {
            ha1_md5: d.ha1_md5,
            ha1_sha256: d.ha1_sha256,
            aor: format!("sip:{user}@{realm}"),
        })
    }
}

fn user_of(aor: &str) -> &str {
    aor.split_once(':')
        .map(|(_, r)| r.split('@').next().unwrap_or(r))
        .unwrap_or(aor)
}

/// A running gateway.
pub struct Gateway {
    /// The bound listeners.
    pub local: transport::LocalAddrs,
    task: tokio::task::JoinHandle<()>,
    reloader: tokio::task::JoinHandle<()>,
}

impl Gateway {
    /// Open the database, load the devices, bind the listeners and start serving.
    pub async fn start(cfg: GatewayConfig, bus: Arc<dyn Bus>) -> Result<Gateway, GatewayError> {
        let store = DeviceStore::open(&cfg.database).await?;
        let cache = DeviceCache::new();
        cache.reload(&store).await;
        info!(devices = cache.len(), "device table loaded");
        let reloader = cache.spawn_reloader(store, cfg.db_reload);
        let (transports, events) = Transports::bind(TransportConfig {
            udp: cfg.udp.clone(),
            tcp: cfg.tcp.clone(),
            ..TransportConfig::default()
        })
        .await?;
        let local = transports.local_addrs().clone();
        let mut rcfg = registrar::Config::new(&cfg.realm, &cfg.secret);
        rcfg.min_expires = cfg.min_expires;
        rcfg.default_expires = cfg.default_expires;
        rcfg.max_expires = cfg.max_expires;
        rcfg.algorithms = cfg.algorithms.clone();
        let mut registrar = Registrar::new(rcfg, DeviceCredentials(cache));
        registrar.reject_nonces_issued_before(SystemTime::now());
        let tcfg = tx::Config {
            t1: cfg.t1,
            ..tx::Config::default()
        };
        let core = Core {
            cfg,
            bus,
            transports,
            tl: TransactionLayer::new(tcfg),
            registrar,
            qualifying: HashMap::new(),
            reachable: HashMap::new(),
        };
        let task = tokio::spawn(core.run(events));
        Ok(Gateway {
            local,
            task,
            reloader,
        })
    }

    /// Stop serving.
    pub fn stop(&self) {
        self.task.abort();
        self.reloader.abort();
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Core {
    cfg: GatewayConfig,
    bus: Arc<dyn Bus>,
    transports: Transports,
    tl: TransactionLayer<Peer>,
    registrar: Registrar<DeviceCredentials, Peer>,
    /// OPTIONS in flight: transaction → AOR.
    qualifying: HashMap<TransactionKey, String>,
    /// AOR → whether its last qualify was answered (absent: not qualified yet).
    reachable: HashMap<String, bool>,
}

impl Core {
    async fn run(mut self, mut events: tokio::sync::mpsc::Receiver<TransportEvent>) {
        let mut housekeeping = tokio::time::interval(Duration::from_millis(250));
        let mut qualify = tokio::time::interval(self.cfg.qualify_interval);
        qualify.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let timer = self.tl.poll_timeout();
            let sleep = async {
                match timer {
                    Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ev = events.recv() => match ev {
                    None => break,
                    Some(TransportEvent::Message(m)) => {
                        let peer = Peer { addr: m.source, transport: m.transport, local: m.local };
                        let kind = if m.transport.is_reliable() { tx::Transport::Reliable } else { tx::Transport::Unreliable };
                        if let Err(e) = self.tl.on_message(m.message, peer, kind, Instant::now()) {
                            debug!(error = %e, source = %m.source, "message refused by the transaction layer");
                        }
                    }
                    Some(TransportEvent::BadMessage(b)) => {
                        warn!(source = %b.source, error = %b.error, "bad SIP message");
                        if let Some(reply) = b.reply {
                            let _ = self.transports.send_response(&reply, b.transport, b.local).await;
                        }
                    }
                },
                _ = sleep => self.tl.handle_timeout(Instant::now()),
                _ = housekeeping.tick() => {
                    self.registrar.expire(SystemTime::now());
                }
                _ = qualify.tick() => self.qualify_all(),
            }
            self.drain().await;
        }
    }

    /// Process everything the transaction layer and the registrar produced.
    async fn drain(&mut self) {
        loop {
            let mut progressed = false;
            while let Some(ev) = self.tl.poll_event() {
                progressed = true;
                self.on_tx_event(ev);
            }
            while let Some(ev) = self.registrar.poll_event() {
                progressed = true;
                match ev {
                    RegistrarEvent::Registered { aor } => {
                        self.reachable.remove(&aor);
                        self.publish(&aor, DeviceState::NotInUse);
                    }
                    RegistrarEvent::Unregistered { aor } => {
                        self.reachable.remove(&aor);
                        self.publish(&aor, DeviceState::Unavailable);
                    }
                }
            }
            while let Some(t) = self.tl.poll_transmit() {
                progressed = true;
                self.transmit(t).await;
            }
            if !progressed {
                break;
            }
        }
    }

    fn publish(&self, aor: &str, state: DeviceState) {
        let key = format!("{}{}", self.cfg.device_prefix, user_of(aor));
        info!(%key, %state, "device state");
        self.bus.publish_device_state(&key, state);
    }

    fn on_tx_event(&mut self, ev: tx::Event<Peer>) {
        let now = Instant::now();
        match ev {
            tx::Event::Request {
                key,
                request,
                source,
                ..
            } => {
                let resp = self.handle_request(&request, source);
                if let Err(e) = self.tl.send_response(&key, resp, now) {
                    debug!(error = %e, "response not sent");
                }
            }
            tx::Event::Cancel { key, .. } => {
                let _ = key; // no INVITE handling yet: the CANCEL's own 200 is enough
            }
            tx::Event::Response { key, response } => {
                if response.status_code.code() >= 200 {
                    if let Some(aor) = self.qualifying.remove(&key) {
                        self.qualified(&aor, true);
                    }
                }
            }
            tx::Event::Timeout { key } | tx::Event::TransportError { key } => {
                if let Some(aor) = self.qualifying.remove(&key) {
                    self.qualified(&aor, false);
                }
            }
            tx::Event::Ack { .. }
            | tx::Event::StrayResponse { .. }
            | tx::Event::Terminated { .. } => {}
        }
    }

    fn handle_request(&mut self, req: &Request, source: Peer) -> message::Response {
        // The request comes straight from the parser: its header grammar is checked already.
        if let Err(rej) = message::validate_parsed_request(req) {
            return rej.response(req);
        }
        match req.method {
            Method::Register => self
                .registrar
                .handle_request(req, source, SystemTime::now()),
            Method::Options => message::response_for(req, 200, "OK"),
            _ => message::response_for(req, 501, "Not Implemented"),
        }
    }

    /// OPTIONS to the most recent binding of every registered AOR.
    fn qualify_all(&mut self) {
        let aors: Vec<String> = self
            .registrar
            .location()
            .aors()
            .map(str::to_owned)
            .collect();
        for aor in aors {
            if self.qualifying.values().any(|a| *a == aor) {
                continue;
            }
            let Some(b) = self.registrar.contacts(&aor).last().cloned() else {
                continue;
            };
            let Some(req) = self.options_request(&aor, &b.uri, &b.source) else {
                continue;
            };
            let kind = if b.source.transport.is_reliable() {
                tx::Transport::Reliable
            } else {
                tx::Transport::Unreliable
            };
            match self
                .tl
                .send_request(req, kind, b.source.clone(), Instant::now())
            {
                Ok(key) => {
                    self.qualifying.insert(key, aor);
                }
                Err(e) => debug!(error = %e, "cannot qualify"),
            }
        }
    }

    fn options_request(&self, aor: &str, contact: &str, via: &Peer) -> Option<Request> {
        let proto = if via.transport.is_reliable() {
            "TCP"
        } else {
            "UDP"
        };
        let branch = format!("z9hG4bK{:016x}", rand_u64());
        let tag = format!("{:08x}", rand_u64() as u32);
        let text = format!(
            "OPTIONS {contact} SIP/2.0\r\nVia: SIP/2.0/{proto} {local};branch={branch};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:qualify@{realm}>;tag={tag}\r\nTo: <{aor}>\r\n\
             Call-ID: {callid}@{local_ip}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
            local = via.local,
            realm = self.cfg.realm,
            callid = rand_u64(),
            local_ip = via.local.ip(),
        );
        match message::parse(text.as_bytes()) {
            Ok(SipMessage::Request(r)) => Some(r),
            _ => None,
        }
    }

    fn qualified(&mut self, aor: &str, ok: bool) {
        if !self.registrar.is_registered(aor) {
            return;
        }
        let before = self.reachable.insert(aor.to_string(), ok);
        if before != Some(ok) {
            if ok {
                if before == Some(false) {
                    self.publish(aor, DeviceState::NotInUse);
                }
            } else {
                warn!(%aor, "contact does not answer OPTIONS: device unavailable");
                self.publish(aor, DeviceState::Unavailable);
            }
        }
    }

    async fn transmit(&mut self, t: tx::Transmit<Peer>) {
        let result = match &t.message {
            // send_response serialises the response itself.
            SipMessage::Response(r) => {
                self.transports
                    .send_response(r, t.dest.transport, t.dest.local)
                    .await
            }
            SipMessage::Request(req) => {
                let bytes = message::serialize_request(req);
                let target = match t.dest.transport {
                    transport::Transport::Udp => Target::Udp {
                        peer: t.dest.addr,
                        local: Some(t.dest.local),
                    },
                    transport::Transport::Tcp(id) => Target::Connection {
                        id,
                        fallback: Some(t.dest.addr),
                    },
                };
                self.transports.send(target, &bytes).await
            }
        };
        if let Err(e) = result {
            debug!(error = %e, dest = %t.dest.addr, "send failed");
            if let Some(key) = t.key {
                self.tl.transport_error(&key);
            }
        }
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

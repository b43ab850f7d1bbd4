//! The gateway process: SIP transports + the transaction layer + the registrar + the device
//! cache (SQL) + the state bus. Registrations drive device state: NOT_INUSE while a contact is
//! registered and answers OPTIONS qualify, UNAVAILABLE when none is.

use crate::b2bua::{self, B2bua, Caller, MediaControl};
use crate::devices::{DeviceCache, DeviceStore};
use crate::media::{self as relay, Leg, LegStats, MediaRelay, RelayConfig};
use crate::registrar::client::{ClientCredentials, OutboundRegistration, OutboundState};
use crate::registrar::digest::Algorithm;
use crate::registrar::{self, Credentials, Registrar, RegistrarEvent, UserRecord};
use crate::sip::message::{self, Method, Request, SipMessage};
use crate::sip::transaction::{self as tx, TransactionKey, TransactionLayer};
use crate::transport::{self, TransportConfig, TransportEvent, Transports};
use crate::transport::{earliest, receive_overload, sleep_until, transmit, Peer};
use statebus::{Bus, DeviceState};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tracing::{debug, info, warn};

mod durable;
mod fabric;

mod mwi;
mod security;
mod shutdown;
mod voicemail;

mod spy;
pub use security::BanEntry;
pub use shutdown::FinishReport;
pub use spy::SpyConfig;

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
    /// Most registered contacts per user (more are refused: 403 with a `Warning`).
    pub max_contacts: usize,
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
    /// This gateway's site (`[node] site`): of a device table shared by several sites it
    /// publishes the state of this site's devices only (see `DeviceRecord::of_site`); queue
    /// numbers go to an ACD node of the same site first.
    pub site: String,
    /// Node name (in CDR unique ids).
    pub node: String,
    /// Address the RTP relay binds and puts in SDP.
    pub rtp_ip: std::net::IpAddr,
    /// RTP port range (inclusive).
    pub rtp_ports: (u16, u16),
    /// Hang up calls after this long without RTP.
    pub media_timeout: Option<Duration>,
    /// Session timers (RFC 4028): the Session-Expires we ask for and grant (None: off).
    pub session_expires: Option<Duration>,
    /// Session timers: our Min-SE (a smaller Session-Expires gets 422).
    pub session_min_se: Duration,
    /// Dialled number → device user.
    pub extensions: HashMap<String, String>,
    /// Static SIP peers.
    pub trunks: Vec<TrunkConfig>,
    /// Record every call's two legs to WAV files here (`call-<n>-caller.wav`,
    /// `call-<n>-callee.wav`: what each side sent), if set.
    pub record_dir: Option<std::path::PathBuf>,
    /// Music on hold for the held party (per queue, per holding device, default).
    pub moh: Arc<crate::media::moh::MohSources>,
    /// Name servers for trunks named by a domain (the binary reads the system's when the
    /// config names none).
    pub dns_servers: Vec<SocketAddr>,
    /// Authentication defence: failure counts, bans, challenge rate (`[security]`).
    pub security: crate::security::SecurityConfig,
    /// TLS listeners and files; bounds and timeouts of TCP/TLS connections.
    pub streams: transport::StreamConfig,
    /// Voicemail: where diverted calls and the retrieval code go (`server/voicemail.rs`).
    pub voicemail: Option<crate::voicemail::Routes>,

    /// The fabric secret: INVITEs signed with it are trusted, INVITEs to fabric members
    /// (queue numbers) are signed (`sip_core::trust`, `server/fabric.rs`).
    pub fabric: Option<Arc<crate::sip::trust::FabricKey>>,

    /// Overload control (issue 16): standing-queue target, Retry-After of its 503s.
    pub overload: sip_core::overload::Config,

    /// Supervisor listen / whisper / barge: feature codes and who may use them.
    pub spy: SpyConfig,
}

/// A static SIP peer: another site's gateway, a legacy PBX, an ITSP without registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrunkConfig {
    /// Name (logs).
    pub name: String,
    /// Where its calls go (UDP).
    pub address: SocketAddr,
    /// Dialled prefixes routed to it (longest wins).
    pub prefixes: Vec<String>,
    /// Leading digits stripped before sending.
    pub strip: usize,
    /// Further source IPs accepted as this trunk for inbound calls (no digest); a request
    /// from exactly `address` (IP and port) always is.
    pub inbound_from: Vec<std::net::IpAddr>,
    /// Our account at the peer (an ITSP): challenges to our INVITEs are answered with it.
    pub credentials: Option<ClientCredentials>,
    /// Keep a registration at the peer with these credentials: (domain of the AOR, expires).
    pub register: Option<(String, u32)>,
    /// The peer named by a domain (and a port, if given): located by RFC 3263 (NAPTR, SRV,
    /// A/AAAA; [`crate::dns`]) instead of `address`, which is then unused.
    pub domain: Option<(String, Option<u16>)>,
    /// Reach it over TLS (its certificate verified against the configured CA roots), for the
    /// name `Some(name)`, or for its IP address when `Some("")`; `None`: UDP.
    pub tls: Option<String>,
}

impl TrunkConfig {
    /// The peer's host as in its URIs: the domain (with its port, if given), else `address`.
    pub fn host(&self) -> String {
        match &self.domain {
            Some((name, Some(port))) => format!("{name}:{port}"),
            Some((name, None)) => name.clone(),
            None => self.address.to_string(),
        }
    }
}

/// Resolved targets of the trunks named by a domain, by trunk name.
type TrunkDns = Arc<std::sync::Mutex<HashMap<String, crate::dns::TrunkTargets>>>;

/// Resolves trunk `name`'s `host` now and again when its TTL runs out (or, after a failure,
/// with back-off), into `dns`.
fn spawn_trunk_dns(
    resolver: crate::dns::TrunkResolver,
    name: String,
    (host, port): (String, Option<u16>),
    dns: TrunkDns,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let result = resolver.resolve(&host, port).await;
            let now = Instant::now();
            let next = {
                let mut map = dns.lock().unwrap_or_else(|p| p.into_inner());
                let t = map.entry(name.clone()).or_default();
                match result {
                    Ok((targets, ttl)) => {
                        info!(trunk = %name, %host, ?targets, ttl_s = ttl.as_secs(), "trunk resolved");
                        t.resolved(targets, ttl, now);
                    }
                    Err(e) => {
                        warn!(trunk = %name, error = %e, "trunk not resolved; retrying");
                        t.failed(now);
                    }
                }
                t.next_resolution().unwrap_or(now + crate::dns::MIN_TTL)
            };
            tokio::time::sleep_until(next.into()).await;
        }
    })
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
    /// The RTP relay could not be set up.
    #[error("RTP relay: {0}")]
    Media(#[from] crate::media::MediaError),
    /// The DNS resolver for trunks could not be set up.
    #[error(transparent)]
    Dns(#[from] crate::dns::DnsError),
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
            algorithms: d
                .digest_algorithms
                .split(',')
                .filter_map(|t| Algorithm::from_token(t.trim()))
                .collect(),
        })
    }
}

fn user_of(aor: &str) -> &str {
    aor.split_once(':')
        .map(|(_, r)| r.split('@').next().unwrap_or(r))
        .unwrap_or(aor)
}

/// Something the gateway reports to its owner (the binary prints these).
// A few events per call: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum GatewayEvent {
    /// A call ended, with the relay's figures for both legs.
    CallEnded {
        /// Gateway-local call number.
        call: u64,
        /// Why it ended (`bye-a`, `bye-b`, `cancel`, `486`, `media-timeout`, `no-ack`, …).
        reason: String,
        /// Caller-side leg.
        a: Option<LegStats>,
        /// Callee-side leg.
        b: Option<LegStats>,
        /// Music-on-hold packets the gateway sent to the caller's and the callee's leg.
        moh: [u64; 2],
    },
    /// An ACD's offer (`X-CF-Offer`) refused before ringing anyone.
    OfferRefused {
        /// The agent's device.
        device: String,
        /// `deadline` (arrived after its deadline), `in-use` (ringinuse=no), `bad-offer`.
        reason: &'static str,
        /// For `deadline`: how late it arrived (ms).
        late_ms: u64,
    },
    /// Message waiting: `MWI SUBSCRIBED <device> <mailbox>`, `MWI REFUSED …` (over the cap),
    /// `MWI ENDED <code|timeout> <device> <mailbox>` (a NOTIFY's failure ended a subscription).
    Mwi {
        /// The line.
        line: String,
    },
}

/// Trunk name → dialled prefixes routed to it in addition to its configured ones, set at run
/// time ([`Gateway::set_trunk_prefixes`]: a site's ACD numbers after a queue reload).
type ExtraPrefixes = Arc<std::sync::RwLock<HashMap<String, Vec<String>>>>;

/// The relay legs of the calls in progress, shared with the [`Gateway`] handle for queries.
type CallLegs = Arc<std::sync::Mutex<HashMap<b2bua::CallId, (Leg, Leg)>>>;

/// Who is in each call in progress, shared with the [`Gateway`] handle for queries.
type CallParties = Arc<std::sync::Mutex<HashMap<b2bua::CallId, Parties>>>;

/// Who is in a call, as the gateway routed it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parties {
    /// The caller's user part (From).
    pub caller: String,
    /// The number dialled (Request-URI user).
    pub dialled: String,
    /// Calling device, if one of ours.
    pub caller_device: Option<String>,
    /// Called device, if one of ours.
    pub callee_device: Option<String>,
}

/// A call in progress: who is in it and the relay's figures for both legs.
#[derive(Debug, Clone)]
pub struct LiveCall {
    /// Gateway-local call number.
    pub call: u64,
    /// Caller, number dialled, devices.
    pub parties: Parties,
    /// Caller-side leg.
    pub a: LegStats,
    /// Callee-side leg.
    pub b: LegStats,
}

/// [`MediaControl`] on the RTP relay.
struct RelayMedia {
    relay: MediaRelay,
    legs: CallLegs,
    parties: CallParties,
    /// Parties of the INVITE being handed to the B2BUA: stored under its call number when
    /// the B2BUA opens media for it.
    incoming: Option<Parties>,
    record_dir: Option<std::path::PathBuf>,
    /// Final figures of calls closed but not yet reported.
    closed: HashMap<b2bua::CallId, (LegStats, LegStats)>,
    /// Music on hold: the sources, the queue of the INVITE being handed to the B2BUA (its
    /// `X-CF-Offer`), the device-key prefix (stripped to find a device's music), each call's
    /// hold state and players.
    moh_sources: Arc<crate::media::moh::MohSources>,
    incoming_queue: Option<String>,
    device_prefix: String,
    moh: HashMap<b2bua::CallId, crate::media::moh::CallMoh>,
    /// Music-on-hold packets of calls closed but not yet reported.
    moh_closed: HashMap<b2bua::CallId, [u64; 2]>,
}

impl RelayMedia {
    fn with<R>(&self, call: b2bua::CallId, f: impl FnOnce(&Leg, &Leg) -> R) -> Option<R> {
        let legs = self.legs.lock().unwrap_or_else(|p| p.into_inner());
        legs.get(&call).map(|(a, b)| f(a, b))
    }
}

impl MediaControl for RelayMedia {
    fn open(&mut self, call: b2bua::CallId) -> Option<b2bua::MediaPorts> {
        let a = match self.relay.leg_now() {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "no RTP ports for a call");
                return None;
            }
        };
        let b = match self.relay.leg_now() {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "no RTP ports for a call");
                return None;
            }
        };
        let ports = b2bua::MediaPorts {
            a: a.local_rtp(),
            b: b.local_rtp(),
        };
        if let Some(dir) = &self.record_dir {
            for (leg, side) in [(&a, "caller"), (&b, "callee")] {
                record(leg, dir.join(format!("call-{}-{side}.wav", call.0)));
            }
        }
        self.legs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(call, (a, b));
        let mut moh = crate::media::moh::CallMoh::default();
        moh.queue = self.incoming_queue.take();
        if let Some(p) = self.incoming.take() {
            let user = |d: &Option<String>| {
                d.as_deref()
                    .map(|d| d.strip_prefix(self.device_prefix.as_str()).unwrap_or(d))
                    .map(str::to_owned)
            };
            moh.devices = [user(&p.caller_device), user(&p.callee_device)];
            self.parties
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(call, p);
        }
        self.moh.insert(call, moh);
        Some(ports)
    }

    fn set_remote(
        &mut self,
        call: b2bua::CallId,
        side: b2bua::Side,
        rtp: SocketAddr,
        rtcp: Option<SocketAddr>,
    ) {
        self.with(call, |a, b| match side {
            b2bua::Side::A => a.set_remote(rtp, rtcp),
            b2bua::Side::B => b.set_remote(rtp, rtcp),
        });
    }

    fn bridge(&mut self, call: b2bua::CallId) {
        if let Some(Err(e)) = self.with(call, relay::bridge) {
            warn!(error = %e, "cannot bridge call media");
        }
    }

    fn close(&mut self, call: b2bua::CallId) {
        if let Some(mut moh) = self.moh.remove(&call) {
            moh.stop();
            self.moh_closed.insert(call, moh.packets());
        }
        let legs = self
            .legs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&call);
        self.parties
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&call);
        if let Some((a, b)) = legs {
            a.close();
            b.close();
            self.closed.insert(call, (a.stats(), b.stats()));
        }
    }

    fn idle(&self, call: b2bua::CallId, now: Instant) -> Option<Duration> {
        // Either phone falling silent ends the call (Asterisk's rtptimeout is per channel).
        self.with(call, |a, b| a.idle_for(now).max(b.idle_for(now)))
    }

    fn hold(&mut self, call: b2bua::CallId, holder: b2bua::Side, holding: bool) {
        let Some(moh) = self.moh.get_mut(&call) else {
            return;
        };
        let legs = self.legs.lock().unwrap_or_else(|p| p.into_inner());
        let Some((a, b)) = legs.get(&call) else {
            return;
        };
        let p = match holder {
            b2bua::Side::A => 0,
            b2bua::Side::B => 1,
        };
        moh.set_hold(p, holding, [a, b], &self.moh_sources, Instant::now());
        info!(
            call = call.0,
            holding,
            music_to_caller = moh.playing(0),
            music_to_callee = moh.playing(1),
            "hold"
        );
    }

    fn srtp(
        &mut self,
        call: b2bua::CallId,
        side: b2bua::Side,
        key: Option<crate::media::srtp::SdesKey>,
    ) {
        // Music on hold to an SRTP phone: protected with the key that phone receives with.
        self.with(call, |a, b| match side {
            b2bua::Side::A => a.set_srtp(key.as_ref(), Some(b)),
            b2bua::Side::B => b.set_srtp(key.as_ref(), Some(a)),
        });
    }
}

/// Records what arrives on `leg` (decoded G.711, reordered, gaps filled) and writes it to
/// `path` as 16-bit PCM WAV when the leg closes.
fn record(leg: &Leg, path: std::path::PathBuf) {
    let mut rx = leg.subscribe();
    tokio::spawn(async move {
        let mut rec = crate::audio::RtpRecorder::default();
        while let Some(pkt) = rx.recv().await {
            rec.push(&pkt);
        }
        let write = tokio::task::spawn_blocking(move || {
            rec.finish_to_path(&path, crate::audio::WavEncoding::Pcm16)
                .map_err(|e| (path, e))
        });
        match write.await {
            Ok(Ok(())) => {}
            Ok(Err((path, e))) => {
                warn!(path = %path.display(), error = %e, "recording not written")
            }
            Err(e) => warn!(error = %e, "recording task failed"),
        }
    });
}

/// A running gateway.
pub struct Gateway {
    /// The bound listeners.
    pub local: transport::LocalAddrs,
    /// Call events.
    pub events: tokio::sync::broadcast::Sender<GatewayEvent>,
    legs: CallLegs,
    parties: CallParties,
    task: tokio::task::JoinHandle<()>,
    reloader: tokio::task::JoinHandle<()>,
    /// Resolvers of trunks named by a domain.
    dns_tasks: Vec<tokio::task::JoinHandle<()>>,
    control: tokio::sync::mpsc::UnboundedSender<shutdown::Control>,
    active: Arc<std::sync::atomic::AtomicUsize>,
    guard: security::SharedGuard,
    tls: Option<Arc<transport::TlsState>>,
    extra_prefixes: ExtraPrefixes,
}

impl Gateway {
    /// Open the database, load the devices, bind the listeners and start serving.
    pub async fn start(cfg: GatewayConfig, bus: Arc<dyn Bus>) -> Result<Gateway, GatewayError> {
        let store = DeviceStore::open(&cfg.database).await?;
        let cache = DeviceCache::new();
        cache.reload(&store).await;
        info!(devices = cache.len(), "device table loaded");
        let records = store.clone();
        let reloader = cache.spawn_reloader(store, cfg.db_reload);
        let mut tcfg = TransportConfig {
            udp: cfg.udp.clone(),
            tcp: cfg.tcp.clone(),
            ..TransportConfig::default()
        };
        cfg.streams.apply(&mut tcfg);
        let (transports, events) = Transports::bind(tcfg).await?;
        for t in &cfg.trunks {
            if let Some(name) = t.tls.as_deref().filter(|n| !n.is_empty()) {
                transports.set_tls_name(t.address, name);
            }
        }
        let local = transports.local_addrs().clone();
        let mut rcfg = registrar::Config::new(&cfg.realm, &cfg.secret);
        rcfg.min_expires = cfg.min_expires;
        rcfg.default_expires = cfg.default_expires;
        rcfg.max_expires = cfg.max_expires;
        rcfg.max_bindings_per_aor = cfg.max_contacts;
        rcfg.algorithms = cfg.algorithms.clone();
        let cache_handle = cache.clone();
        let mut registrar = Registrar::new(rcfg, DeviceCredentials(cache));
        registrar.reject_nonces_issued_before(SystemTime::now());
        let tcfg = tx::Config {
            t1: cfg.t1,
            ..tx::Config::default()
        };
        let relay = MediaRelay::per_core(RelayConfig::new(
            cfg.rtp_ip,
            cfg.rtp_ip,
            cfg.rtp_ports.0,
            cfg.rtp_ports.1,
        ))?;
        let legs: CallLegs = Arc::default();
        let parties: CallParties = Arc::default();
        let (gw_events, _) = tokio::sync::broadcast::channel(1024);
        let b2bua = B2bua::new(b2bua::Config {
            t1: cfg.t1,
            t2: tcfg.t2,
            media_timeout: cfg.media_timeout,
            realm: cfg.realm.clone(),
            uniqueid_prefix: format!("{}-{}-", cfg.node, std::process::id()),
            session_expires: cfg.session_expires,
            min_se: cfg.session_min_se,
            ..b2bua::Config::default()
        });
        let outbound = {
            cfg.trunks
                .iter()
                .filter_map(|t| {
                    let (domain, expires) = t.register.clone()?;
                    let creds = t.credentials.clone()?;
                    // A TLS trunk registers over TLS, with our TLS listener in the Contact.
                    let tls = t.tls.is_some() && !local.tls.is_empty();
                    let from = if tls { &local.tls } else { &local.udp };
                    let reg = OutboundRegistration::new(
                        &format!("sip:{}", t.host()),
                        &domain,
                        creds,
                        from.first().copied()?,
                        expires,
                        Duration::from_secs(30).min(cfg.qualify_interval * 30),
                        Instant::now(),
                    );
                    Some((t.name.clone(), if tls { reg.over_tls() } else { reg }))
                })
                .collect()
        };
        let record_dir = cfg.record_dir.clone();
        let dns: TrunkDns = Arc::default();
        let mut dns_tasks = Vec::new();
        if cfg.trunks.iter().any(|t| t.domain.is_some()) {
            // A query unanswered after 4·T1 (at least 1 s) is retried once.
            let timeout = (cfg.t1 * 4).max(Duration::from_secs(1));
            let resolver = crate::dns::TrunkResolver::new(&cfg.dns_servers, timeout)?;
            for t in &cfg.trunks {
                if let Some(d) = &t.domain {
                    dns_tasks.push(spawn_trunk_dns(
                        resolver.clone(),
                        t.name.clone(),
                        d.clone(),
                        dns.clone(),
                    ));
                }
            }
        }
        let moh_sources = cfg.moh.clone();
        let device_prefix = cfg.device_prefix.clone();
        let (control, control_rx) = tokio::sync::mpsc::unbounded_channel();
        let active = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        // Trunks are never banned (their calls are not authenticated by digest anyway).
        let mut scfg = cfg.security.clone();
        for t in &cfg.trunks {
            scfg.never_ban.push(t.address.ip());
            scfg.never_ban.extend(t.inbound_from.iter().copied());
        }
        let guard: security::SharedGuard =
            Arc::new(std::sync::Mutex::new(crate::security::Guard::new(scfg)));
        let overload = sip_core::overload::Overload::new(cfg.overload.clone());
        transports.set_overload_gate(overload.gate());

        let mwi = mwi::MwiState::new(&cfg.realm, bus.as_ref());
        let core = Core {
            mwi,
            guard: guard.clone(),
            durable: durable::Durable::start(records.clone(), cfg.node.clone()),
            shutdown: shutdown::ShutdownState::default(),
            active: active.clone(),
            cfg,
            bus,
            transports,
            tl: TransactionLayer::new(tcfg),
            registrar,
            devices: cache_handle,
            qualifying: HashMap::new(),
            reachable: HashMap::new(),
            linked_agents: LinkedAgents::default(),
            b2bua,
            media: RelayMedia {
                relay,
                legs: legs.clone(),
                parties: parties.clone(),
                incoming: None,
                closed: HashMap::new(),
                record_dir,
                moh_sources,
                incoming_queue: None,
                device_prefix,
                moh: HashMap::new(),
                moh_closed: HashMap::new(),
            },
            published: HashMap::new(),
            events: gw_events.clone(),
            outbound,
            registering: HashMap::new(),
            register_dest: HashMap::new(),
            dns,
            records,
            refused: 0,
            replay: crate::sip::trust::ReplayCache::default(),
            fabric_calls: HashMap::new(),

            overload,

            spies: spy::Spies::default(),
            extra_prefixes: ExtraPrefixes::default(),
        };
        let tls = core.transports.tls_state();
        let extra_prefixes = core.extra_prefixes.clone();
        let task = tokio::spawn(core.run(events, control_rx));
        Ok(Gateway {
            extra_prefixes,
            tls,
            local,
            events: gw_events,
            legs,
            parties,
            task,
            reloader,
            dns_tasks,
            control,
            active,
            guard,
        })
    }

    /// The TLS configuration, to reload on SIGHUP ([`transport::TlsState::reload`]:
    /// connections already open keep theirs; on error the previous files stay in use).
    pub fn tls_state(&self) -> Option<Arc<transport::TlsState>> {
        self.tls.clone()
    }

    /// Routes the dialled prefixes `prefixes` to trunk `trunk` from now on, in addition to its
    /// configured ones (replacing what an earlier call set; longest prefix wins as always).
    pub fn set_trunk_prefixes(&self, trunk: &str, prefixes: Vec<String>) {
        let prefixes = prefixes.into_iter().filter(|p| !p.is_empty()).collect();
        self.extra_prefixes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(trunk.to_owned(), prefixes);
    }

    /// The calls in progress, in call order: parties and the relay's figures.
    pub fn calls(&self) -> Vec<LiveCall> {
        let legs = self.legs.lock().unwrap_or_else(|p| p.into_inner());
        let parties = self.parties.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = legs
            .iter()
            .map(|(id, (a, b))| LiveCall {
                call: id.0,
                parties: parties.get(id).cloned().unwrap_or_default(),
                a: a.stats(),
                b: b.stats(),
            })
            .collect();
        v.sort_by_key(|c| c.call);
        v
    }

    /// Stop serving.
    pub fn stop(&self) {
        self.task.abort();
        self.reloader.abort();
        for t in &self.dns_tasks {
            t.abort();
        }
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
    qualifying: HashMap<TransactionKey, (String, String)>,
    /// AOR → contact → whether its last qualify was answered (absent: not qualified yet).
    reachable: HashMap<String, HashMap<String, bool>>,
    devices: DeviceCache,
    b2bua: B2bua,
    media: RelayMedia,
    /// Device key → state last published.
    published: HashMap<String, DeviceState>,
    events: tokio::sync::broadcast::Sender<GatewayEvent>,
    /// Our registrations at ITSPs: (trunk name, state machine).
    outbound: Vec<(String, OutboundRegistration)>,
    /// REGISTERs in flight → index in `outbound`.
    registering: HashMap<TransactionKey, usize>,
    /// Where each outbound registration's last REGISTER went (a domain trunk's target).
    register_dest: HashMap<usize, SocketAddr>,
    /// Resolved targets of trunks named by a domain.
    dns: TrunkDns,
    /// The database, for CDRs.
    records: DeviceStore,
    /// INVITEs refused before a call was set up (numbers their CDRs).
    refused: u64,
    /// Linked id → the agent device whose answered call with that linked id has ended.
    linked_agents: LinkedAgents,
    /// Durable registrations (`server/durable.rs`).
    durable: durable::Durable,
    /// Graceful shutdown (`server/shutdown.rs`).
    shutdown: shutdown::ShutdownState,
    /// Calls in progress, for the handle.
    active: Arc<std::sync::atomic::AtomicUsize>,
    /// Authentication defence (`server/security.rs`).
    guard: security::SharedGuard,
    /// Fabric signatures accepted and still in their window (`server/fabric.rs`).
    replay: crate::sip::trust::ReplayCache,
    /// Calls routed to an ACD node through the fabric, to move if it dies.
    fabric_calls: HashMap<b2bua::CallId, fabric::FabricCall>,
    /// Overload control (issue 16): measures the queueing delay, its gate refuses at ingress.
    overload: sip_core::overload::Overload,
    /// Message waiting (`server/mwi.rs`).
    mwi: mwi::MwiState,
    /// Supervisors' calls (`server/spy.rs`).
    spies: spy::Spies,
    /// Prefixes routed to trunks beside their configured ones (set through the handle).
    extra_prefixes: ExtraPrefixes,
}

/// Unix time, seconds (fabric signatures).
fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Linked id → agent device, for the caller's CDR when the agent's call ends first; bounded
/// (the caller's call may be at another gateway and never claim its entry).
#[derive(Default)]
struct LinkedAgents {
    map: HashMap<String, String>,
    order: std::collections::VecDeque<String>,
}

impl LinkedAgents {
    const MAX: usize = 4096;

    fn insert(&mut self, linkedid: String, device: String) {
        if self.map.insert(linkedid.clone(), device).is_none() {
            self.order.push_back(linkedid);
        }
        while self.order.len() > Self::MAX {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
    }

    fn remove(&mut self, linkedid: &str) -> Option<String> {
        let d = self.map.remove(linkedid)?;
        self.order.retain(|l| l != linkedid);
        Some(d)
    }
}

impl Core {
    async fn run(
        mut self,
        mut events: tokio::sync::mpsc::Receiver<TransportEvent>,
        mut control: tokio::sync::mpsc::UnboundedReceiver<shutdown::Control>,
    ) {
        self.restore_bindings().await;
        // Restart truth: until a device has a reachable contact it reads UNAVAILABLE, whatever
        // an earlier run of this gateway announced before it crashed. Another site's
        // devices in a shared table are that site's gateway's to announce.
        for user in self.devices.usernames_of_site(&self.cfg.site) {
            let key = format!("{}{user}", self.cfg.device_prefix);
            self.published.insert(key.clone(), DeviceState::Unavailable);
            self.bus
                .publish_device_state(&key, DeviceState::Unavailable);
        }
        let mut housekeeping = tokio::time::interval(Duration::from_millis(250));
        let mut qualify = tokio::time::interval(self.cfg.qualify_interval);
        qualify.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is now: qualify the restored contacts (nothing else is registered yet)
        // before any REGISTER is read. Left to the loop, the tick raced the first REGISTERs
        // after a slow start (PostgreSQL): a phone that had just registered got an OPTIONS at
        // once or an interval later, by chance.
        qualify.tick().await;
        self.qualify_all();
        loop {
            let sleep = sleep_until(earliest(self.tl.poll_timeout(), self.b2bua.poll_timeout()));
            tokio::select! {
                ev = events.recv() => match ev {
                    None => break,
                    Some(ev) if self.admitted(&ev) => {
                        let backlog = events.len();
                        receive_overload(&self.transports, &mut self.tl, &mut self.overload, backlog, ev).await
                    }
                    Some(_) => {}
                },
                _ = sleep => {
                    let now = Instant::now();
                    self.tl.handle_timeout(now);
                    self.b2bua.handle_timeout(&mut self.media, now);
                }
                _ = housekeeping.tick() => {
                    for aor in self.registrar.expire(SystemTime::now()) {
                        self.persist(&aor);
                    }
                    self.register_outbound(None);
                    self.spy_retransmit(Instant::now());
                    self.guard.lock().unwrap_or_else(|p| p.into_inner()).expire(Instant::now());
                    // A flood that stopped still gets its "N similar suppressed" line.
                    crate::transport::loglimit::flush();

                    self.move_orphans();

                    self.overload.tick(Instant::now());

                    self.mwi_tick();
                }
                Some(ev) = statebus::recv(&mut self.mwi.rx) => self.on_mwi_bus(ev),
                _ = qualify.tick() => self.qualify_all(),
                Some(seq) = self.durable.committed.recv() => self.committed(seq),
                Some(c) = control.recv() => self.on_control(c),
            }
            self.drain().await;
            if self.shutdown_step().await {
                info!("shutdown: gateway stopped");
                break;
            }
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
                    RegistrarEvent::Registered { aor } | RegistrarEvent::Unregistered { aor } => {
                        self.reachable.remove(&aor);
                        let key = self.device_key(&aor);
                        self.refresh_device(&key);
                    }
                }
            }
            while let Some(a) = self.b2bua.poll_action() {
                progressed = true;
                self.on_b2bua_action(a);
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

    fn cdr(
        &self,
        call: &str,
        reason: &str,
        r: &b2bua::CallRecord,
        legs: Option<&(LegStats, LegStats)>,
        agent: Option<String>,
    ) -> crate::records::Cdr {
        let end = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let secs = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
        let disposition = match (r.billsec, reason) {
            (Some(_), _) => "ANSWERED",
            (None, "486" | "600") => "BUSY",
            (None, "cancel" | "no-answer" | "408" | "480" | "487" | "603") => "NO ANSWER",
            (None, _) => "FAILED",
        };
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let (a, b) = match legs {
            Some((a, b)) => (Some(a), Some(b)),
            None => (None, None),
        };
        let uniqueid = if r.uniqueid.is_empty() {
            format!("{}-{}-{call}", self.cfg.node, std::process::id())
        } else {
            r.uniqueid.clone()
        };
        crate::records::Cdr {
            linkedid: if r.linkedid.is_empty() {
                uniqueid.clone()
            } else {
                r.linkedid.clone()
            },
            agent,
            uniqueid,
            node: self.cfg.node.clone(),
            start_time: secs(end.saturating_sub(r.duration)),
            answer_time: r.billsec.map(|b| secs(end.saturating_sub(b))),
            end_time: secs(end),
            src: r.caller.clone(),
            dst: r.dialled.clone(),
            src_device: r.caller_device.clone(),
            dst_device: r.callee_device.clone(),
            presented: r.presented.clone(),
            disposition: disposition.into(),
            reason: reason.into(),
            duration: secs(r.duration),
            billsec: r.billsec.map_or(0, secs),
            rtp_in_a: a.map_or(0, |s| n(s.rtp_packets_in)),
            rtp_in_b: b.map_or(0, |s| n(s.rtp_packets_in)),
            lost_a: a.map_or(0, |s| s.lost),
            lost_b: b.map_or(0, |s| s.lost),
            jitter_a_us: a.map_or(0, |s| (s.jitter_ms * 1000.0) as i64),
            jitter_b_us: b.map_or(0, |s| (s.jitter_ms * 1000.0) as i64),
        }
    }

    fn device_key(&self, aor: &str) -> String {
        format!("{}{}", self.cfg.device_prefix, user_of(aor))
    }

    /// Publishes a device's state if it changed: what its calls make it while it is in a call
    /// (a phone can call without being registered); otherwise NOT_INUSE with a live, reachable
    /// contact and UNAVAILABLE without.
    fn refresh_device(&mut self, key: &str) {
        let Some(user) = key.strip_prefix(self.cfg.device_prefix.as_str()) else {
            return;
        };
        let aor = format!("sip:{user}@{}", self.cfg.realm);
        let registered = self.registrar.is_registered(&aor);
        let in_call = self.b2bua.calls_of(key) > 0;
        let state = if in_call {
            self.b2bua.device_state(key)
        } else if !registered || self.reachable_contacts(&aor).is_empty() {
            DeviceState::Unavailable
        } else {
            DeviceState::NotInUse
        };
        if self.published.get(key) == Some(&state) {
            return;
        }
        if state == DeviceState::Unavailable && !self.published.contains_key(key) {
            return; // never announced: nothing to withdraw
        }
        self.published.insert(key.to_owned(), state);
        info!(%key, %state, "device state");
        self.bus.publish_device_state(key, state);
    }

    fn on_b2bua_action(&mut self, a: b2bua::Action) {
        let now = Instant::now();
        match a {
            b2bua::Action::Request { key, request, dest } => {
                let k = dest.tx_transport();
                match self.tl.send_request(request, k, dest, now) {
                    Ok(got) if got == key => {}
                    Ok(got) => warn!(%got, %key, "transaction key mismatch"),
                    Err(e) => {
                        warn!(error = %e, "cannot send a call request");
                        self.b2bua.on_timeout(&key, &mut self.media, now);
                    }
                }
            }
            b2bua::Action::Respond { key, response } => {
                if let Err(e) = self.tl.send_response(&key, response, now) {
                    debug!(error = %e, "call response not sent");
                }
            }
            b2bua::Action::Stateless { message, dest } => {
                let k = dest.tx_transport();
                self.tl.send_stateless(message, dest, k);
            }
            b2bua::Action::Cancel { key, dest } => match self.tl.build_cancel(&key) {
                Ok(cancel) => {
                    let k = dest.tx_transport();
                    if let Err(e) = self.tl.send_request(cancel, k, dest, now) {
                        debug!(error = %e, "CANCEL not sent");
                    }
                }
                Err(e) => debug!(error = %e, "nothing to cancel"),
            },
            b2bua::Action::DeviceChanged(key) => self.refresh_device(&key),
            b2bua::Action::TargetFailed(addr) => {
                let mut map = self.dns.lock().unwrap_or_else(|p| p.into_inner());
                for (name, t) in map.iter_mut().filter(|(_, t)| t.contains(&addr)) {
                    warn!(trunk = %name, %addr, "trunk target failed an INVITE; tried last for now");
                    t.mark_down(addr, now);
                }
            }
            b2bua::Action::CallEnded {
                call,
                reason,
                record,
            } => {
                self.spy_call_ended(call);
                let legs = self.media.closed.remove(&call);
                let moh = self.media.moh_closed.remove(&call).unwrap_or_default();
                info!(call = call.0, %reason, "call ended");
                // The agent who answered a caller through an ACD: its call is linked to the
                // caller's (the offer's linkedid) and may end before or after it.
                let agent = if record.linkedid == record.uniqueid {
                    self.linked_agents
                        .remove(&record.uniqueid)
                        .or_else(|| self.b2bua.answered_device_linked_to(&record.uniqueid))
                } else {
                    if let (Some(_), Some(d)) = (record.billsec, &record.callee_device) {
                        self.linked_agents
                            .insert(record.linkedid.clone(), d.clone());
                    }
                    None
                };
                let cdr = self.cdr(&call.0.to_string(), &reason, &record, legs.as_ref(), agent);
                self.write_cdr(cdr);
                let _ = self.events.send(GatewayEvent::CallEnded {
                    call: call.0,
                    reason,
                    a: legs.as_ref().map(|l| l.0.clone()),
                    b: legs.map(|l| l.1),
                    moh,
                });
            }
            b2bua::Action::CallRefused { code, record } => {
                self.refused += 1;
                info!(%code, caller = %record.caller, dialled = %record.dialled, "call refused");
                let cdr = self.cdr(
                    &format!("r{}", self.refused),
                    &code.to_string(),
                    &record,
                    None,
                    None,
                );
                self.write_cdr(cdr);
            }
        }
    }

    /// Stores a CDR off the call path (a failed write is logged).
    fn write_cdr(&mut self, cdr: crate::records::Cdr) {
        let store = self.records.clone();
        self.shutdown.writes.push(tokio::spawn(async move {
            if let Err(e) = store.insert_cdr(&cdr).await {
                warn!(error = %e, "CDR not written");
            }
        }));
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
                if let Err(rej) = message::validate_request_with(&request, b2bua::EXTENSIONS) {
                    let _ = self.tl.send_response(&key, rej.response(&request), now);
                    return;
                }
                if request.method == Method::Subscribe {
                    self.on_subscribe(key, request, source, now);
                    return;
                }
                let in_dialog = tx_tag(&request).is_some();
                if in_dialog && request.method != Method::Register {
                    if self.spy_in_dialog(&key, &request, now) {
                        return;
                    }
                    if !self
                        .b2bua
                        .on_in_dialog(&key, request.clone(), &mut self.media, now)
                    {
                        let code = if request.method == Method::Options {
                            200
                        } else {
                            481
                        };
                        let r = message::response_for(&request, code, "");
                        let _ = self.tl.send_response(&key, r, now);
                    }
                    return;
                }
                if request.method == Method::Invite {
                    self.on_invite(key, request, source, now);
                    return;
                }
                let resp = self.handle_request(&request, source.clone());
                if request.method == Method::Register {
                    self.auth_failures(&request, &source);
                    if resp.status_code.code() == 401 {
                        self.send_challenge(&key, resp, &source);
                        return;
                    }
                    self.respond_register(key, &request, resp);
                } else if let Err(e) = self.tl.send_response(&key, resp, now) {
                    debug!(error = %e, "response not sent");
                }
            }
            tx::Event::Cancel {
                key,
                invite,
                request,
                ..
            } => {
                self.b2bua
                    .on_cancel(&key, &request, &invite, &mut self.media);
            }
            tx::Event::Response { key, response } => {
                if response.status_code.code() >= 200 {
                    if self.mwi_response(&key, Some(response.status_code.code())) {
                        return;
                    }
                    if let Some((aor, contact)) = self.qualifying.remove(&key) {
                        self.qualified(&aor, &contact, true);
                        return;
                    }
                    if let Some(i) = self.registering.remove(&key) {
                        self.register_outbound(Some((i, Some(response))));
                        return;
                    }
                }
                self.b2bua.on_response(&key, response, &mut self.media, now);
            }
            tx::Event::StrayResponse { response, .. } => {
                // A 2xx retransmission after the INVITE transaction ended: the dialog re-ACKs.
                let _ = response;
            }
            tx::Event::Timeout { key } | tx::Event::TransportError { key } => {
                if self.mwi_response(&key, None) {
                    return;
                }
                if let Some((aor, contact)) = self.qualifying.remove(&key) {
                    self.qualified(&aor, &contact, false);
                    return;
                }
                if let Some(i) = self.registering.remove(&key) {
                    self.register_outbound(Some((i, None)));
                    return;
                }
                self.b2bua.on_timeout(&key, &mut self.media, now);
            }
            tx::Event::Ack { request, .. } if self.spy_ack(&request) => {}
            tx::Event::Ack { request, .. } => self.b2bua.on_ack(&request, &mut self.media, now),
            tx::Event::Terminated { key } => self.b2bua.on_terminated(&key),
        }
    }

    /// A new INVITE: who calls (a trunk by source address, or a device by digest), and where
    /// to (dial plan: extension → device, device name, trunk prefix).
    fn on_invite(&mut self, key: TransactionKey, req: Request, source: Peer, now: Instant) {
        let from_member = match self.fabric_check(&key, &req, &source, now) {
            Some(false) => return,
            Some(true) => true,
            None => false,
        };
        let caller = if from_member {
            Caller::default()
        } else if let Some(t) = self.cfg.trunks.iter().find(|t| {
            (t.domain.is_none() && t.address == source.addr)
                || t.inbound_from.contains(&source.addr.ip())
                || (t.domain.is_some() && self.trunk_addrs(t).contains(&source.addr))
        }) {
            debug!(trunk = %t.name, "call from a trunk");
            Caller::default()
        } else {
            let auth = self.registrar.authorize(&req, SystemTime::now());
            self.auth_failures(&req, &source);
            match auth {
                Ok(user) => {
                    if let Err(r) = self.check_identity(&req, &user, &source) {
                        let _ = self.tl.send_response(&key, r, now);
                        return;
                    }
                    let key = self.device_key(&user.aor);
                    let limit = self
                        .devices
                        .get(user_of(&user.aor))
                        .map_or(0, |d| usize::try_from(d.call_limit.max(0)).unwrap_or(0));
                    Caller {
                        device: Some(key),
                        limit,
                    }
                }
                Err(challenge) => {
                    self.log_unsigned_offer(&req, &source);
                    self.send_challenge(&key, challenge, &source);
                    return;
                }
            }
        };
        if self.refused_while_draining(&key, &req, now) {
            return;
        }
        if self.spy_invite(&key, &req, &caller, &source, now) {
            return;
        }
        let mut target = self.route(&req, &source);
        // A queue number a live ACD node advertises goes there (signed), ahead of a static
        // trunk prefix; a device of that name still wins.
        let mut fabric_to = None;
        if !matches!(target, b2bua::Target::Device { .. }) {
            if let Some(t) = self.fabric_route(&req, &source) {
                if let b2bua::Target::Peer { dest, .. } = &t {
                    fabric_to = Some((b2bua::dialled_user(&req), dest.addr));
                }
                target = t;
                self.b2bua.sign_next = self.cfg.fabric.clone().map(|k| (k, unix_secs()));
            }
        }
        // The arbiter against double offering and ghost calls: an ACD's offer (X-CF-Offer)
        // that arrives after its deadline is refused (480 + Reason: the ACD gave up, nobody
        // may ring for it); with ringinuse=no it is refused (486, "try the next") while the
        // agent's device is in any call, so two ACD nodes racing for one agent get one call.
        let offer = req.headers.iter().find_map(|h| match h {
            rsip::Header::Other(n, v) if n.trim().eq_ignore_ascii_case(crate::offer::HEADER) => {
                Some(crate::offer::Offer::parse(v))
            }
            _ => None,
        });
        let device = match &target {
            b2bua::Target::Device { device, .. } => device.clone(),
            _ => String::new(),
        };
        let queue = offer
            .as_ref()
            .and_then(|o| o.as_ref().ok())
            .and_then(|o| o.queue.clone());
        let refused = match offer {
            None => None,
            Some(Err(e)) => {
                info!(%device, error = %e, "offer refused");
                Some((400, "bad-offer", 0, e.to_string()))
            }
            Some(Ok(o)) => {
                let now_ms = u64::try_from(
                    SystemTime::now()
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_millis(),
                )
                .unwrap_or(u64::MAX);
                match o.deadline_ms {
                    Some(d) if o.expired(now_ms) => {
                        let late = now_ms - d;
                        info!(%device, late_ms = late, "offer refused: it arrived after its deadline");
                        Some((480, "deadline", late, "offer deadline passed".to_owned()))
                    }
                    _ if !o.ringinuse && !device.is_empty() && self.b2bua.calls_of(&device) > 0 => {
                        info!(%device, "offer refused: the agent is already in a call");
                        target = b2bua::Target::Reject(486);
                        let _ = self.events.send(GatewayEvent::OfferRefused {
                            device: device.clone(),
                            reason: "in-use",
                            late_ms: 0,
                        });
                        None
                    }
                    _ => None,
                }
            }
        };
        if let Some((code, reason, late_ms, text)) = refused {
            let mut r = message::response_for(&req, code, "");
            r.headers.push(rsip::Header::Other(
                "Reason".into(),
                format!(
                    "SIP;cause={code};text=\"{}\"",
                    text.replace(['"', '\\'], "'")
                ),
            ));
            r.headers.push(rsip::Header::Other(
                crate::offer::REFUSED_HEADER.into(),
                reason.into(),
            ));
            if let Err(e) = self.tl.send_response(&key, r, now) {
                debug!(error = %e, "response not sent");
            }
            let _ = self.events.send(GatewayEvent::OfferRefused {
                device,
                reason,
                late_ms,
            });
            return;
        }
        let divert = self.voicemail_route(&caller, &req, &mut target);
        let invite_key = key.clone();
        self.media.incoming_queue = queue;
        self.media.incoming = Some(Parties {
            caller: b2bua::caller_user(&req),
            dialled: b2bua::dialled_user(&req),
            caller_device: caller.device.clone(),
            callee_device: match &target {
                b2bua::Target::Device { device, .. } => Some(device.clone()),
                _ => None,
            },
        });
        self.b2bua.on_invite(
            key,
            req,
            source,
            b2bua::Routed { caller, target },
            &mut self.media,
            now,
        );
        if let Some(d) = divert {
            self.b2bua.set_divert(&invite_key, d, now);
        }
        self.media.incoming = None;
        self.media.incoming_queue = None;
        self.b2bua.sign_next = None;
        if let Some((number, node)) = fabric_to {
            self.track_fabric_call(number, node);
        }
    }

    /// Where trunk `t` is now: its address, or a domain trunk's resolved targets in RFC 3263
    /// order (failed ones last; none before the first resolution).
    fn trunk_addrs(&self, t: &TrunkConfig) -> Vec<SocketAddr> {
        if t.domain.is_none() {
            return vec![t.address];
        }
        let map = self.dns.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&t.name)
            .map(|d| d.ordered(Instant::now()))
            .unwrap_or_default()
    }

    fn route(&self, req: &Request, source: &Peer) -> b2bua::Target {
        let dialled = req
            .uri
            .auth
            .as_ref()
            .map(|a| a.user.clone())
            .unwrap_or_default();
        if dialled.is_empty() {
            return b2bua::Target::Reject(404);
        }
        let device = self
            .cfg
            .extensions
            .get(&dialled)
            .and_then(|u| self.devices.get(u))
            .or_else(|| self.devices.get(&dialled))
            .or_else(|| self.devices.by_extension(&dialled));
        if let Some(d) = device {
            // Forking: every contact that did not fail its qualify, the newest first.
            let aor = format!("sip:{}@{}", d.username, self.cfg.realm);
            let mut contacts =
                self.reachable_contacts(&aor)
                    .into_iter()
                    .map(|b| b2bua::ForkTarget {
                        contact: b.uri.clone(),
                        dest: contact_dest(&b.uri, &b.source),
                    });
            let Some(first) = contacts.next() else {
                return b2bua::Target::Reject(480);
            };
            return b2bua::Target::Device {
                device: self.device_key(&aor),
                contact: first.contact,
                dest: first.dest,
                limit: usize::try_from(d.call_limit.max(0)).unwrap_or(0),
                forks: contacts.collect(),
            };
        }
        let extra = self
            .extra_prefixes
            .read()
            .unwrap_or_else(|p| p.into_inner());
        let trunk = self
            .cfg
            .trunks
            .iter()
            .flat_map(|t| {
                let more = extra.get(&t.name).into_iter().flatten();
                t.prefixes.iter().chain(more).map(move |p| (t, p))
            })
            .filter(|(_, p)| dialled.starts_with(p.as_str()))
            .max_by_key(|(_, p)| p.len())
            .map(|(t, _)| t);
        drop(extra);
        if let Some(t) = trunk {
            let number = dialled.get(t.strip.min(dialled.len())..).unwrap_or("");
            let (local, kind) = self.trunk_transport(t, source.local);
            let mut dests = self.trunk_addrs(t).into_iter().map(|addr| Peer {
                addr,
                transport: kind,
                local,
            });
            let Some(dest) = dests.next() else {
                info!(trunk = %t.name, "trunk not resolved (yet): 503");
                return b2bua::Target::Reject(503);
            };
            return b2bua::Target::Peer {
                credentials: t.credentials.clone(),
                uri: format!("sip:{number}@{}", t.host()),
                dest,
                fallbacks: dests.collect(),
            };
        }
        b2bua::Target::Reject(404)
    }

    /// The listener and transport a trunk is reached over: UDP, or TLS over a new (or the
    /// existing) connection when the trunk is configured `tls`.
    fn trunk_transport(
        &self,
        t: &TrunkConfig,
        fallback: SocketAddr,
    ) -> (SocketAddr, transport::Transport) {
        let addrs = self.transports.local_addrs();
        if t.tls.is_some() {
            let local = addrs.tls.first().copied().unwrap_or(fallback);
            // A connection id never issued: the transports open (or reuse) a TLS connection.
            (
                local,
                transport::Transport::Tls(transport::ConnectionId(u64::MAX)),
            )
        } else {
            let local = addrs.udp.first().copied().unwrap_or(fallback);
            (local, transport::Transport::Udp)
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

    /// Drives the outbound registrations: `done` is the final response (or `None`: no answer)
    /// of registration `i`'s REGISTER; then every due REGISTER is sent.
    fn register_outbound(&mut self, done: Option<(usize, Option<message::Response>)>) {
        let now = Instant::now();
        let mut to_send = Vec::new();
        if let Some((i, resp)) = done {
            // RFC 3263 §4.3: a domain trunk's target that timed out or answered 503 is tried
            // last from now on (for a while).
            if resp.as_ref().is_none_or(|r| r.status_code.code() == 503) {
                if let (Some(addr), Some((name, _))) =
                    (self.register_dest.get(&i), self.outbound.get(i))
                {
                    let mut map = self.dns.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(t) = map.get_mut(name) {
                        warn!(trunk = %name, %addr, "trunk target failed; trying the next");
                        t.mark_down(*addr, now);
                    }
                }
            }
            if let Some((name, reg)) = self.outbound.get_mut(i) {
                let retry = match &resp {
                    Some(r) => reg.on_response(r, now),
                    None => {
                        reg.on_timeout(now);
                        None
                    }
                };
                match reg.state() {
                    OutboundState::Registered(_) => info!(trunk = %name, "registered at the trunk"),
                    OutboundState::Unregistered => warn!(
                        trunk = %name,
                        why = reg.last_failure().unwrap_or("?"),
                        "registration at the trunk failed; retrying later"
                    ),
                    OutboundState::Pending => {}
                }
                if let Some(r) = retry {
                    to_send.push((i, r));
                }
            }
        }
        for (i, (_, reg)) in self.outbound.iter_mut().enumerate() {
            if let Some(r) = reg.poll_request(now) {
                to_send.push((i, r));
            }
        }
        for (i, req) in to_send {
            let Some(t) = self
                .outbound
                .get(i)
                .and_then(|(name, _)| self.cfg.trunks.iter().find(|t| &t.name == name))
            else {
                continue;
            };
            let Some(addr) = self.trunk_addrs(t).first().copied() else {
                debug!(trunk = %t.name, "trunk not resolved yet: REGISTER postponed");
                if let Some((_, reg)) = self.outbound.get_mut(i) {
                    reg.on_timeout(now);
                }
                continue;
            };
            self.register_dest.insert(i, addr);
            // Over the trunk's transport: UDP, or TLS (the existing connection or a new one).
            let (local, transport) = self.trunk_transport(t, addr);
            let dest = Peer {
                addr,
                transport,
                local,
            };
            let kind = if transport.is_reliable() {
                tx::Transport::Reliable
            } else {
                tx::Transport::Unreliable
            };
            match self.tl.send_request(req, kind, dest, now) {
                Ok(key) => {
                    self.registering.insert(key, i);
                }
                Err(e) => {
                    warn!(error = %e, "cannot send REGISTER to the trunk");
                    if let Some((_, reg)) = self.outbound.get_mut(i) {
                        reg.on_timeout(now);
                    }
                }
            }
        }
    }

    /// The bindings of `aor` that did not fail their last qualify, the newest first.
    fn reachable_contacts(&self, aor: &str) -> Vec<&crate::registrar::Binding<Peer>> {
        let marks = self.reachable.get(aor);
        self.registrar
            .contacts(aor)
            .iter()
            .rev()
            .filter(|b| marks.and_then(|m| m.get(&b.key)) != Some(&false))
            .collect()
    }

    /// OPTIONS to every binding of every registered AOR.
    fn qualify_all(&mut self) {
        let mut todo = Vec::new();
        for aor in self.registrar.location().aors() {
            for b in self.registrar.contacts(aor) {
                let pending = (aor.to_owned(), b.key.clone());
                if !self.qualifying.values().any(|q| *q == pending) {
                    todo.push((pending, b.uri.clone(), contact_dest(&b.uri, &b.source)));
                }
            }
        }
        for ((aor, contact), uri, dest) in todo {
            let Some(req) = self.options_request(&aor, &uri, &dest) else {
                continue;
            };
            let kind = dest.tx_transport();
            match self.tl.send_request(req, kind, dest, Instant::now()) {
                Ok(key) => {
                    self.qualifying.insert(key, (aor, contact));
                }
                Err(e) => debug!(error = %e, "cannot qualify"),
            }
        }
    }

    fn options_request(&self, aor: &str, contact: &str, via: &Peer) -> Option<Request> {
        let proto = via.transport.via_name();
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

    /// The qualify of binding `contact` (its key) of `aor` was answered (`ok`) or not.
    fn qualified(&mut self, aor: &str, contact: &str, ok: bool) {
        if !self.registrar.is_registered(aor) {
            return;
        }
        if ok {
            self.durable.verified(aor, contact);
        }
        let marks = self.reachable.entry(aor.to_owned()).or_default();
        let before = marks.insert(contact.to_owned(), ok);
        // Forget bindings that are gone.
        let live: Vec<String> = self
            .registrar
            .contacts(aor)
            .iter()
            .map(|b| b.key.clone())
            .collect();
        marks.retain(|k, _| live.contains(k));
        if before != Some(ok) {
            if ok && before == Some(false) {
                info!(%aor, %contact, "contact answers OPTIONS again");
            } else if !ok {
                warn!(%aor, %contact, "contact does not answer OPTIONS: not rung until it does");
            }
            let key = self.device_key(aor);
            self.refresh_device(&key);
        }
    }

    async fn transmit(&mut self, t: tx::Transmit<Peer>) {
        transmit(&self.transports, &mut self.tl, t).await;
    }
}

/// Where to send a request for a registered contact. Over TCP: the phone's connection. Over
/// UDP: the address in the Contact when it is the very IP the REGISTER came from (the phone
/// is not behind a NAT and said where it listens), otherwise the REGISTER's source (a NAT'd
/// phone is reachable only through the pinhole its REGISTER opened; RFC 3581 symmetry).
fn contact_dest(contact: &str, source: &Peer) -> Peer {
    if source.transport.is_reliable() {
        return source.clone();
    }
    let Some(uri) = message::parse_uri(contact) else {
        return source.clone();
    };
    let ip = match &uri.host_with_port.host {
        rsip::Host::IpAddr(ip) => *ip,
        rsip::Host::Domain(d) => match d.to_string().parse::<std::net::IpAddr>() {
            Ok(ip) => ip,
            Err(_) => return source.clone(),
        },
    };
    if ip != source.addr.ip() {
        return source.clone();
    }
    let port = uri.host_with_port.port.map(|p| *p.value()).unwrap_or(5060);
    Peer {
        addr: SocketAddr::new(ip, port),
        ..source.clone()
    }
}

/// The To tag of a request, if any.
fn tx_tag(req: &Request) -> Option<String> {
    crate::sip::transaction::parse::field_tag(
        &req.headers,
        crate::sip::transaction::parse::Field::To,
    )
    .ok()
    .flatten()
}

fn rand_u64() -> u64 {
    rand::random()
}

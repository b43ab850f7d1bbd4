//! The gateway process: SIP transports + the transaction layer + the registrar + the device
//! cache (SQL) + the state bus. Registrations drive device state: NOT_INUSE while a contact is
//! registered and answers OPTIONS qualify, UNAVAILABLE when none is.

use crate::b2bua::{self, B2bua};
use crate::devices::{DeviceCache, DeviceStore};
use crate::media::{LegStats, MediaRelay, RelayConfig};
use crate::registrar::digest::Algorithm;
use crate::registrar::{self, Credentials, Registrar, UserRecord};
use crate::sip::message::Request;
use crate::sip::transaction::{self as tx, TransactionLayer};
use crate::transport::{self, TransportConfig, TransportEvent, Transports};
use crate::transport::{transmit, Peer};
use statebus::{Bus, DeviceState};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tracing::info;

mod arbiter;
mod calls;
mod cdr;
mod config;
mod dialplan;
mod dispatch;
mod durable;
mod fabric;
mod invite;
mod relay;

mod mwi;
mod outbound;
mod presence;
mod qualify;
mod security;
mod shards;
mod shutdown;
mod voicemail;

mod spy;
mod timers;
mod trunks;
mod ua;
pub use config::{GatewayConfig, GatewayError, TrunkConfig};
use presence::user_of;
use qualify::contact_dest;
use relay::{CallLegs, CallParties, RelayMedia};
pub use relay::{LiveCall, Parties};
pub use security::BanEntry;
pub use shutdown::FinishReport;
pub use spy::{SpyCalling, SpyConfig, SpyMode, SpyOrder, SpyRefused};
pub use timers::Transactions;
use trunks::{spawn_trunk_dns, TrunkDns};

/// The device table as the registrar's credential store.
#[derive(Debug, Clone)]
struct DeviceCredentials(DeviceCache);

impl Credentials for DeviceCredentials {
    fn lookup(&self, user: &str, realm: &str) -> Option<UserRecord> {
        let d = self.0.get(user)?;
        (d.realm == realm).then(|| UserRecord {
            ha1_md5: d.ha1_md5,
            ha1_sha256: d.ha1_sha256,
            aor: presence::realm_aor(user, realm),
            algorithms: d
                .digest_algorithms
                .split(',')
                .filter_map(|t| Algorithm::from_token(t.trim()))
                .collect(),
        })
    }
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
    /// Overload control's gate (its counts, whether it sheds).
    overload: Arc<sip_core::overload::Gate>,
    /// The SIP transports' counters.
    transport_stats: transport::StatsHandle,
    /// The RTP relay (a handle), for its threads' report.
    relay: MediaRelay,
    tx_stats: Arc<timers::TxStats>,
    ring_stats: Arc<calls::RingStats>,
    /// The register shards' transaction tables (issue 16).
    shard_stats: Vec<Arc<timers::TxStats>>,
    /// REGISTERs dropped because a register shard's queue was full.
    shard_dropped: Option<Arc<std::sync::atomic::AtomicU64>>,
    shard_core_full: Option<Arc<std::sync::atomic::AtomicU64>>,
    /// REGISTER 200s sent before their commit because the held ones were at their bound.
    register_unheld: Arc<std::sync::atomic::AtomicU64>,
    /// REGISTER refreshes written as changes because the ones waiting were at their bound.
    register_behind_full: Arc<std::sync::atomic::AtomicU64>,
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
        let mut relay_cfg =
            RelayConfig::new(cfg.rtp_ip, cfg.rtp_ip, cfg.rtp_ports.0, cfg.rtp_ports.1);
        relay_cfg.scheduling = cfg.rtp_scheduling;
        let relay = MediaRelay::with_threads(relay_cfg, cfg.rtp_threads)?;
        let (gw_events, _) = tokio::sync::broadcast::channel(1024);
        let b2bua = B2bua::new(b2bua::Config {
            t1: cfg.t1,
            t2: tcfg.t2,
            media_timeout: cfg.media_timeout,
            realm: cfg.realm.clone(),
            uniqueid_prefix: format!("{}-{}-", cfg.node, std::process::id()),
            session_expires: cfg.session_expires,
            min_se: cfg.session_min_se,
            timer_c: cfg.timer_c,
            ring_timeout: cfg.ring_timeout,
            ..b2bua::Config::default()
        });
        let outbound =
            outbound::Outbound::new(&cfg.trunks, &local, cfg.qualify_interval, Instant::now());
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
        let relay_handle = relay.clone();
        let media = RelayMedia::new(
            relay,
            cfg.record_dir.clone(),
            cfg.moh.clone(),
            cfg.device_prefix.clone(),
        );
        let (legs, parties) = (media.legs.clone(), media.parties.clone());
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
        let overload_gate = overload.gate();
        transports.set_overload_gate(overload_gate.clone());

        // Issue 16: out-of-dialog REGISTERs on `sip_shards` tasks (1: none, the core does all).
        let shards = (cfg.sip_shards > 1).then(|| {
            shards::Shards::start(
                cfg.sip_shards,
                &transports,
                || registrar.authenticator(),
                &guard,
                &overload_gate,
                tcfg.clone(),
            )
        });
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
            qualify: qualify::Qualify::default(),
            linked_agents: cdr::LinkedAgents::default(),
            b2bua,
            media,
            published: presence::Published::default(),
            events: gw_events.clone(),
            outbound,
            dns,
            records,
            refused: 0,
            replay: crate::sip::trust::ReplayCache::default(),
            fabric_calls: HashMap::new(),

            overload,
            shards,

            spies: spy::Spies::default(),
            extra_prefixes: ExtraPrefixes::default(),
            housekeeping: timers::Housekeeping::new(Instant::now()),
            tx_stats: Arc::default(),
            ring_stats: Arc::default(),
            rng: rand::SeedableRng::from_os_rng(),
        };
        let tls = core.transports.tls_state();
        let transport_stats = core.transports.stats_handle();
        let extra_prefixes = core.extra_prefixes.clone();
        let tx_stats = core.tx_stats.clone();
        let ring_stats = core.ring_stats.clone();
        let shard_stats = (core.shards.as_ref()).map_or(Vec::new(), |s| s.stats.clone());
        let shard_dropped = (core.shards.as_ref()).map(|s| s.dropped.clone());
        let shard_core_full = (core.shards.as_ref()).map(|s| s.core_full.clone());
        let register_unheld = core.durable.unheld.clone();
        let register_behind_full = core.durable.behind_full.clone();
        let task = tokio::spawn(core.run(events, control_rx));
        Ok(Gateway {
            overload: overload_gate,
            transport_stats,
            relay: relay_handle,
            tx_stats,
            ring_stats,
            shard_stats,
            shard_dropped,
            shard_core_full,
            register_unheld,
            register_behind_full,
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

    /// The RTP relay's threads: real-time or ordinary, and their busy-cap sleeps.
    pub fn relay_threads(&self) -> media::RelayThreadsReport {
        self.relay.threads_report()
    }

    /// Overload control (issue 16): what it admitted, refused and dropped since start, and
    /// whether it sheds now.
    pub fn overload(&self) -> (sip_core::overload::Counters, bool) {
        (self.overload.counters(), self.overload.shedding())
    }

    /// The SIP transports' counters: datagrams dropped (oversize, unparsable, by the kernel at
    /// a full socket), stream connections and their failures.
    pub fn transport_stats(&self) -> transport::Stats {
        self.transport_stats.read()
    }

    /// The SIP transaction tables' size, the core's and the register shards' (issue 16: the compact completed transactions and
    /// their table's capacity, which shrinks after a load).
    pub fn transactions(&self) -> Transactions {
        let mut t = self.tx_stats.read();
        for s in &self.shard_stats {
            let r = s.read();
            t.live += r.live;
            t.completed += r.completed;
            t.completed_capacity += r.completed_capacity;
            t.abandoned += r.abandoned;
            t.mismatched += r.mismatched;
        }
        t
    }

    /// Callee-side INVITEs ended by time since start (issue 16, `b2bua/ring.rs`): branches
    /// Timer C ended (CANCELled or given up), calls the ring limit ended with 480.
    pub fn invite_timeouts(&self) -> (u64, u64) {
        self.ring_stats.read()
    }

    /// REGISTER 200 OKs sent before their binding was committed because the 200s held for
    /// the durable commit were at their bound (issue 16; `server/durable.rs`). Cumulative.
    pub fn register_unheld(&self) -> u64 {
        self.register_unheld
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// REGISTER refreshes written (and their 200s held) as changes are, because the AORs
    /// whose refresh waits to be written behind were at their bound (issue 16;
    /// `server/durable.rs`, `MAX_BEHIND`). Cumulative.
    pub fn register_behind_full(&self) -> u64 {
        self.register_behind_full
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Register shards (issue 16): how many run (1: none, the unsharded core), the
    /// REGISTERs dropped because a shard's queue was full, and those a shard answered 503
    /// because the queue to the core was full.
    pub fn register_shards(&self) -> (usize, u64, u64) {
        let load = |c: &Option<Arc<std::sync::atomic::AtomicU64>>| {
            c.as_ref()
                .map_or(0, |d| d.load(std::sync::atomic::Ordering::Relaxed))
        };
        (
            self.shard_stats.len().max(1),
            load(&self.shard_dropped),
            load(&self.shard_core_full),
        )
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
    /// Qualify: OPTIONS in flight, whether each contact answered its last (`server/qualify.rs`).
    qualify: qualify::Qualify,
    devices: DeviceCache,
    b2bua: B2bua,
    media: RelayMedia,
    /// Device state last published, by device key (`server/presence.rs`).
    published: presence::Published,
    events: tokio::sync::broadcast::Sender<GatewayEvent>,
    /// Our registrations at ITSPs: (trunk name, state machine).
    outbound: outbound::Outbound,
    /// Resolved targets of trunks named by a domain.
    dns: TrunkDns,
    /// The database, for CDRs.
    records: DeviceStore,
    /// INVITEs refused before a call was set up (numbers their CDRs).
    refused: u64,
    /// Linked id → the agent device whose answered call with that linked id has ended.
    linked_agents: cdr::LinkedAgents,
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
    /// Register shards (`server/shards.rs`); `None`: `sip_shards = 1`.
    shards: Option<shards::Shards>,
    /// Message waiting (`server/mwi.rs`).
    mwi: mwi::MwiState,
    /// Supervisors' calls (`server/spy.rs`).
    spies: spy::Spies,
    /// Prefixes routed to trunks beside their configured ones (set through the handle).
    extra_prefixes: ExtraPrefixes,
    /// When housekeeping last ran, whether traffic came since (`server/timers.rs`).
    housekeeping: timers::Housekeeping,
    /// The transaction table's size, for the handle.
    tx_stats: Arc<timers::TxStats>,
    /// INVITE branches and calls ended by Timer C / the ring limit, for the handle.
    ring_stats: Arc<calls::RingStats>,
    /// The random source of the requests the core builds itself (branches, tags, Call-IDs).
    rng: rand::rngs::StdRng,
}

/// Unix time, seconds (fabric signatures).
fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Core {
    async fn run(
        mut self,
        mut events: tokio::sync::mpsc::Receiver<TransportEvent>,
        control: tokio::sync::mpsc::UnboundedReceiver<shutdown::Control>,
    ) {
        self.restore_bindings().await;
        // Restart truth: until a device has a reachable contact it reads UNAVAILABLE, whatever
        // an earlier run of this gateway announced before it crashed. Another site's
        // devices in a shared table are that site's gateway's to announce.
        for user in self.devices.usernames_of_site(&self.cfg.site) {
            let key = format!("{}{user}", self.cfg.device_prefix);
            self.published.set(&key, DeviceState::Unavailable);
            self.bus
                .publish_device_state(&key, DeviceState::Unavailable);
        }
        let mut qualify = tokio::time::interval(self.cfg.qualify_interval);
        qualify.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is now: qualify the restored contacts (nothing else is registered yet)
        // before any REGISTER is read. Left to the loop, the tick raced the first REGISTERs
        // after a slow start (PostgreSQL): a phone that had just registered got an OPTIONS at
        // once or an interval later, by chance.
        qualify.tick().await;
        self.qualify_all();
        self.walk_deadlines();
        let mut running = ua::Running {
            core: self,
            qualify,
            control,
        };
        transport::drive(&mut running, &mut events).await
    }

    async fn transmit(&mut self, t: tx::Transmit<Peer>) {
        transmit(&self.transports, &mut self.tl, t).await;
    }
}

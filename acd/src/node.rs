//! The ACD node, the process module: binds the SIP listener and the RTP relay, opens the
//! queue_log file and table, and runs one task that wires the sans-IO pieces together —
//! transports → transaction layer → [`CallControl`] (all call logic: callers, offers, bridges,
//! hang-ups, announcements, hot-desking, reachability; see [`crate::call`]) — with the bus's
//! device states, the media scripts' reports and a timer taken from the cores'
//! `poll_timeout`. It writes what the core decides: SIP through the transaction layer, media
//! scripts on the relay ([`media`]), queue_log lines to the file, the table and
//! [`NodeEvent::QueueLog`].
//!
//! Not yet: transfers, several media streams, TCP towards gateways.

mod admin;
mod media;
mod persist;
mod shutdown;
mod ua;

use std::collections::HashMap;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ::media::audio;
use ::media::{MediaRelay, RelayConfig};
use rand::SeedableRng;
use sip_core::transaction::{self as tx, TransactionLayer};
use sipnet::Peer;
use sipnet::{TransportEvent, Transports};
use statebus::Bus;
use tokio::sync::{broadcast, mpsc};
use tracing::warn;

use crate::call::{CallConfig, CallControl, Output};
pub use crate::call::{NodeEvent, QueueReport};
use crate::engine::{EngineConfig, EngineError, QueueLogEvent};
use crate::reach::ReachConfig;
pub use admin::{AdminOp, AdminReply, Floor, QueueFloor};
use media::{BusFabric, RelayMedia};
pub use shutdown::FinishReport;

/// A gateway the node takes callers from and sends offers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayRoute {
    /// Name (logs).
    pub name: String,
    /// Its SIP address (UDP).
    pub address: SocketAddr,
}

/// Everything the node needs; built by the binary from its config file.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The node's name: its rows in the `queue_member_state` table.
    pub name: String,
    /// SIP listener (UDP).
    pub udp: SocketAddr,
    /// Address of the media endpoint (bound and put in SDP).
    pub media_ip: IpAddr,
    /// RTP port range.
    pub rtp_ports: (u16, u16),
    /// Relay threads (1 to `media::MAX_RELAY_THREADS`); a caller's and its agent's legs share
    /// one. The binary's default: one per core (`media::relay_threads_per_core`).
    pub rtp_threads: usize,
    /// How the relay threads are scheduled (see `media::RelayScheduling`).
    pub rtp_scheduling: ::media::RelayScheduling,
    /// SIP T1.
    pub t1: Duration,
    /// Queues, members, rules.
    pub engine: EngineConfig,
    /// Dialled number → queue name.
    pub numbers: HashMap<String, String>,
    /// Gateways, in order of preference for agents no heartbeat places.
    pub gateways: Vec<GatewayRoute>,
    /// queue_log file (appended).
    pub queue_log: Option<PathBuf>,
    /// Database URL for the queue_log table (the gateway's device database in site mode).
    pub database: Option<String>,
    /// Music on hold (8 kHz PCM, looped).
    pub music: Vec<i16>,
    /// Voice prompts (Asterisk names: `queue-thereare`, `digits/5`, `agent-loginok`, …).
    pub prompts: audio::PromptSet,
    /// Position (and hold-time) announcements to waiting callers, unless a queue says
    /// otherwise.
    pub announce: crate::call::Announcements,
    /// Feature codes for hot-desking.
    pub hot_desk: crate::call::HotDesk,
    /// SIP OPTIONS keep-alives to every gateway the node may offer through.
    pub reach: ReachConfig,
    /// An offer INVITE without a provisional response after this is given up (never
    /// retransmitted again), the gateway counts as unreachable for it and the next member is
    /// tried; it is also the offer's deadline (`X-CF-Offer: deadline=`).
    pub offer_provisional_timeout: Duration,
    /// Device (interface) name of a user: `<device_prefix><user>` (Asterisk: `PJSIP/`).
    pub device_prefix: String,
    /// Agent self-service: pause with a reason code, unpause.
    pub pause_codes: crate::call::PauseCodes,
    /// A member whose device state was never heard of reads UNAVAILABLE. True whenever the
    /// node has a source of device state (a gateway in the process, or the XMPP fabric);
    /// false for a lone node on the in-process bus, which keeps app_queue's UNKNOWN = available.
    pub unheard_unavailable: bool,
    /// The fabric secret (`sip_core::trust`): callers' INVITEs signed with it are taken from
    /// any member (a moved caller's `X-CF-Join` honoured), offers are signed.
    pub fabric: Option<Arc<sip_core::trust::FabricKey>>,
}

enum Command {
    Stats(tokio::sync::oneshot::Sender<Vec<QueueReport>>),
    /// Graceful shutdown: refuse new callers (503, this Retry-After).
    Drain(u32),
    /// Graceful shutdown: hang up everyone, write the queue_log, stop.
    Finish(tokio::sync::oneshot::Sender<FinishReport>),
    /// An operator command (`admin.rs`).
    Admin(
        AdminOp,
        tokio::sync::oneshot::Sender<Result<AdminReply, EngineError>>,
    ),
    /// The floor view.
    Floor(tokio::sync::oneshot::Sender<Floor>),
}

/// Errors starting the node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Bad queue configuration.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// Listener or queue_log file.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The queue_log database.
    #[error(transparent)]
    Db(#[from] crate::queue_log::QueueLogError),
    /// The RTP relay.
    #[error("RTP relay: {0}")]
    Media(#[from] ::media::MediaError),
}

/// A running node.
pub struct AcdNode {
    /// The SIP listener.
    pub local: SocketAddr,
    /// queue_log lines and other events.
    pub events: broadcast::Sender<NodeEvent>,
    commands: mpsc::Sender<Command>,
    task: tokio::task::JoinHandle<()>,
    /// Callers in the node (for the shutdown's drain).
    active: tokio::sync::watch::Receiver<usize>,
    /// Ticks when the floor may have changed.
    changes: tokio::sync::watch::Sender<u64>,
    /// The SIP listener's counters.
    transport_stats: sipnet::StatsHandle,
}

impl AcdNode {
    /// Binds the listener, loads the queues, feeds the engine the bus's current device states
    /// and starts serving.
    pub async fn start(cfg: NodeConfig, bus: Arc<dyn Bus>) -> Result<AcdNode, NodeError> {
        let (transports, events, local) = Transports::bind_udp(cfg.udp).await?;
        let mut relay_cfg =
            RelayConfig::new(cfg.media_ip, cfg.media_ip, cfg.rtp_ports.0, cfg.rtp_ports.1);
        relay_cfg.scheduling = cfg.rtp_scheduling;
        let relay = MediaRelay::with_threads(relay_cfg, cfg.rtp_threads)?;
        let log = match &cfg.queue_log {
            Some(p) => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            ),
            None => None,
        };
        let records = match &cfg.database {
            Some(url) => Some(crate::queue_log::QueueLogStore::open(url).await?),
            None => None,
        };
        let member_store = records.as_ref().map(|r| {
            (
                crate::member_state::MemberStateStore::new(r),
                cfg.name.clone(),
            )
        });
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let mut media = RelayMedia::new(relay, cfg.music, cfg.prompts, done_tx);
        let (dtmf_tx, dtmf_rx) = mpsc::unbounded_channel();
        media.dtmf = Some(dtmf_tx);
        let now = Instant::now();
        // Gateways find this node's queue numbers in its heartbeat (`statebus::services`).
        let mut numbers: Vec<String> = cfg.numbers.keys().cloned().collect();
        numbers.sort();
        bus.advertise_queues(&numbers);
        let call_cfg = CallConfig {
            local,
            timers: tx::Config {
                t1: cfg.t1,
                ..tx::Config::default()
            },
            engine: cfg.engine,
            numbers: cfg.numbers,
            gateways: cfg.gateways.iter().map(|g| g.address).collect(),
            announce: cfg.announce,
            hot_desk: cfg.hot_desk,
            reach: cfg.reach,
            offer_provisional_timeout: cfg.offer_provisional_timeout,
            device_prefix: cfg.device_prefix,
            caller_prefix: format!("acd-{}", std::process::id()),
            pause_codes: cfg.pause_codes,
        };
        let timers = call_cfg.timers.clone();
        let mut core = CallControl::new(
            call_cfg,
            media,
            BusFabric(bus.clone()),
            rand::rngs::StdRng::from_os_rng(),
            Box::new(SystemTime::now),
            now,
        )?;
        core.set_fabric_key(cfg.fabric.clone());
        if let Some((store, name)) = &member_store {
            persist::restore(store, name, &mut core, now).await;
        }
        let bus_rx = bus.subscribe();
        // One order across the ACD nodes of a queue (`engine/global.rs`).
        let waiting_rx = bus.waiting_changes();
        if waiting_rx.is_some() {
            // A new caller waits out the fabric's propagation delay before it is offered.
            core.set_fabric_eid(bus.eid(), bus.settle());
        }
        let snapshot = bus.snapshot().devices;
        let heard: std::collections::HashSet<String> = snapshot
            .keys()
            .map(|k| crate::engine::normalize_key(k))
            .collect();
        core.resync(snapshot, now);
        if cfg.unheard_unavailable {
            // A member whose device state was never heard of reads UNAVAILABLE (app_queue
            // would take UNKNOWN as available): not offered before its gateway says its phone
            // is reachable.
            for key in core.engine().unheard_devices() {
                if !heard.contains(&key) {
                    core.device_state(&key, statebus::DeviceState::Unavailable, now);
                }
            }
        }
        let transport_stats = transports.stats_handle();
        let (node_events, _) = broadcast::channel(1024);
        let (active_tx, active) = tokio::sync::watch::channel(0);
        let (changes, _) = tokio::sync::watch::channel(0u64);
        let (commands, cmd_rx) = mpsc::channel(16);
        let node = Node {
            tl: TransactionLayer::new(timers),
            core,
            bus,
            transports,
            log,
            records,
            events: node_events.clone(),
            active: active_tx,
            writes: Vec::new(),
            finish_reply: None,
            changes: changes.clone(),
            member_store,
            members_dirty: false,
            member_save: None,
            inputs: ua::Inputs {
                bus: bus_rx,
                commands: cmd_rx,
                media_done: done_rx,
                dtmf: dtmf_rx,
                waiting: waiting_rx,
            },
        };
        let task = tokio::spawn(node.run(events));
        Ok(AcdNode {
            local,
            events: node_events,
            commands,
            task,
            active,
            changes,
            transport_stats,
        })
    }

    /// The SIP listener's counters: datagrams dropped (oversize, unparsable, by the kernel at
    /// its full socket).
    pub fn transport_stats(&self) -> sipnet::Stats {
        self.transport_stats.read()
    }

    /// Per-queue and per-member statistics, now (`None` if the node stopped).
    pub async fn stats(&self) -> Option<Vec<QueueReport>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.commands.send(Command::Stats(tx)).await.ok()?;
        rx.await.ok()
    }

    /// Stops serving.
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for AcdNode {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The task: owns the transaction layer and the call-control core.
struct Node {
    tl: TransactionLayer<Peer>,
    core: CallControl<RelayMedia, BusFabric>,
    bus: Arc<dyn Bus>,
    transports: Transports,
    log: Option<std::fs::File>,
    records: Option<crate::queue_log::QueueLogStore>,
    events: broadcast::Sender<NodeEvent>,
    /// Callers now, for the handle.
    active: tokio::sync::watch::Sender<usize>,
    /// queue_log row writes in flight (awaited by the shutdown's finish).
    writes: Vec<tokio::task::JoinHandle<()>>,
    /// The finish's reply, once asked for.
    finish_reply: Option<tokio::sync::oneshot::Sender<FinishReport>>,
    /// Ticks when the floor may have changed (`admin.rs`).
    changes: tokio::sync::watch::Sender<u64>,
    /// Where the runtime member state goes, under this node's name (`persist.rs`).
    member_store: Option<(crate::member_state::MemberStateStore, String)>,
    /// The member state changed since the last write.
    members_dirty: bool,
    /// The last member state write (each awaits the one before).
    member_save: Option<tokio::task::JoinHandle<()>>,
    /// The node's inputs beside SIP (`ua.rs`).
    inputs: ua::Inputs,
}

impl Node {
    /// Serves until the transports or the bus close or a graceful shutdown ends, on the one
    /// event loop of SIP user agents (`sipnet::drive`, `ua.rs`).
    async fn run(mut self, mut events: mpsc::Receiver<TransportEvent>) {
        if self.inputs.waiting.is_some() {
            self.core
                .remote_waiting(&self.bus.waiting(), Instant::now());
        }
        sipnet::drive(&mut self, &mut events).await
    }

    fn perform(&mut self, out: Output) {
        match out {
            Output::Music { leg, codec } => self.core.media_mut().music(leg, codec),
            Output::Announce { leg, prompts } => self.core.media_mut().announce(leg, &prompts),
            Output::StopMedia { leg } => self.core.media_mut().stop(leg),
            Output::QueueLog(ev) => self.queue_log(&ev),
            Output::Event(ev) => {
                let _ = self.events.send(ev);
                self.changed();
            }
            other => warn!(?other, "unexpected output"),
        }
    }

    fn queue_log(&mut self, ev: &QueueLogEvent) {
        let line = ev.line();
        self.member_event(ev.event);
        if let Some(f) = self.log.as_mut() {
            if let Err(e) = writeln!(f, "{line}") {
                warn!(error = %e, "cannot write queue_log");
            }
        }
        if let Some(store) = self.records.clone() {
            let row = crate::queue_log::QueueLogRow {
                time: i64::try_from(ev.time.as_secs()).unwrap_or(i64::MAX),
                callid: ev.callid.clone(),
                queuename: ev.queue.clone(),
                agent: ev.agent.clone(),
                event: ev.event.to_owned(),
                data: ev.data.clone(),
            };
            self.writes.push(tokio::spawn(async move {
                if let Err(e) = store.insert(&row).await {
                    warn!(error = %e, "queue_log row not written");
                }
            }));
        }
        let _ = self.events.send(NodeEvent::QueueLog(line));
        self.changed();
    }
}

//! The ACD node: a SIP user agent that answers callers routed to queue numbers, plays them
//! music on hold, and calls agents through the gateway that holds each agent's registration;
//! the queue engine ([`crate::engine`]) makes every decision.
//!
//! * **Callers** arrive from a configured gateway (a trunk: identified by its exact source
//!   address) with a queue number as Request-URI user. The node answers with its own media
//!   endpoint (a relay leg), plays music on hold into it and joins the caller to the queue.
//! * **Offers**: for each engine `Offer` the node sends an INVITE for the member's device
//!   (`PJSIP/2001` → `sip:2001@<gateway>`) to its gateway: the member of the fabric that
//!   publishes the device's state (its EID) and announces a SIP address in its heartbeat, else
//!   the first configured gateway. The INVITE carries `X-CF-Offer: ringinuse=no|yes`: the
//!   gateway is the arbiter and refuses (486) an agent whose device is already in a call when
//!   ringinuse is off, so two ACD nodes can never both get one agent; a refusal is "busy" to
//!   the engine, which tries the next member. The header also carries `deadline=<unix ms>`:
//!   an offer without a provisional response by then is given up (its INVITE abandoned, never
//!   retransmitted) and the next member tried; the gateway refuses one arriving later.
//! * **Reachability** ([`crate::reach`]): SIP OPTIONS keep-alives to every gateway the node may
//!   offer through; members behind an unreachable one are unavailable to the engine
//!   ([`Engine::set_reachable`]) until it answers again, whatever the fabric says.
//! * **Connect**: the agent's 200 is ACKed, music stops and the caller's and the agent's legs
//!   are bridged on the relay. A hang-up on either side ends both; the engine logs
//!   COMPLETECALLER/COMPLETEAGENT and starts wrap-up. A caller hanging up while waiting is
//!   ABANDON. Agent no-answer is a CANCEL by the engine's ring timeout → RINGNOANSWER.
//! * **Announcements**: waiting callers hear their position (and the estimated hold time) every
//!   `announce_frequency`, between stretches of music on hold.
//! * **queue_log** lines in Asterisk's format go to a file and to [`NodeEvent::QueueLog`].
//!
//! Not yet: transfers, several media streams, TCP towards gateways.

use std::collections::HashMap;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use gateway::audio::{self, Codec, PlayerConfig, RtpPlayer};
use gateway::media::{self, Leg, MediaRelay, RelayConfig};
use gateway::sdp::{self, SessionDescription};
use gateway::server::Peer;
use gateway::sip::dialog::{self, Dialog};
use gateway::sip::message::{self, Method, Request, Response, SipMessage};
use gateway::sip::transaction::{self as tx, TransactionKey, TransactionLayer};
use gateway::transport::{self, TransportConfig, TransportEvent, Transports};
use rsip::headers::UntypedHeader;
use rsip::Header;
use statebus::{Bus, BusEvent, Change, DeviceState};
use tokio::sync::{broadcast, watch};
use tracing::{debug, info, warn};

use crate::reach::{ReachConfig, ReachEvent, Reachability};

mod shutdown;
pub use shutdown::FinishReport;

use crate::engine::{
    Action, CompletedBy, Engine, EngineConfig, EngineError, Join, OfferId, OfferOutcome, Time,
};

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
    /// SIP listener (UDP).
    pub udp: SocketAddr,
    /// Address of the media endpoint (bound and put in SDP).
    pub media_ip: IpAddr,
    /// RTP port range.
    pub rtp_ports: (u16, u16),
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
    /// Announce position (and hold time) to waiting callers this often (None: never).
    pub announce_frequency: Option<Duration>,
    /// Include the estimated hold time in announcements.
    pub announce_holdtime: bool,
    /// Feature-code prefix for hot-desking: dial `<login_code><queue number>` to log the
    /// calling device in as a dynamic member.
    pub login_code: String,
    /// Dial `<logout_code><queue number>` to log out.
    pub logout_code: String,
    /// SIP OPTIONS keep-alives to every gateway the node may offer through.
    pub reach: ReachConfig,
    /// An offer INVITE without a provisional response after this is given up (never
    /// retransmitted again), the gateway counts as unreachable for it and the next member is
    /// tried; it is also the offer's deadline (`X-CF-Offer: deadline=`).
    pub offer_provisional_timeout: Duration,
    /// Device (interface) name of a user: `<device_prefix><user>` (Asterisk: `PJSIP/`).
    pub device_prefix: String,
    /// A member whose device state was never heard of reads UNAVAILABLE. True whenever the
    /// node has a source of device state (a gateway in the process, or the XMPP fabric);
    /// false for a lone node on the in-process bus, which keeps app_queue's UNKNOWN = available.
    pub unheard_unavailable: bool,
}

/// One queue's figures, for supervisors and reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueReport {
    /// Queue name.
    pub queue: String,
    /// Callers waiting now.
    pub waiting: usize,
    /// Counters (answered, abandoned, hold and talk times, service level).
    pub stats: crate::engine::QueueStats,
    /// Members: interface, figures, and whether it could take a call now.
    pub members: Vec<(String, crate::engine::MemberStats, bool)>,
}

enum Command {
    Stats(tokio::sync::oneshot::Sender<Vec<QueueReport>>),
    /// Graceful shutdown: refuse new callers (503, this Retry-After).
    Drain(u32),
    /// Graceful shutdown: hang up everyone, write the queue_log, stop.
    Finish(tokio::sync::oneshot::Sender<FinishReport>),
}

/// What the node reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeEvent {
    /// A queue_log line.
    QueueLog(String),
    /// A position/hold-time announcement started for a caller (the prompt names).
    Announced {
        /// Caller id.
        caller: String,
        /// Prompts, in order.
        prompts: Vec<String>,
    },
    /// An offer INVITE went out.
    Offered {
        /// Caller id.
        caller: String,
        /// Member interface.
        interface: String,
        /// The gateway it went to.
        gateway: SocketAddr,
    },
    /// A gateway became unreachable or reachable again (OPTIONS keep-alives).
    Reach {
        /// The gateway.
        gateway: SocketAddr,
        /// Its new reachability.
        reachable: bool,
    },
    /// An offer got no provisional response in time: given up, the next member is tried.
    OfferUnanswered {
        /// Member interface.
        interface: String,
        /// The gateway it went to.
        gateway: SocketAddr,
    },
}

/// Errors starting the node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Bad queue configuration.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// Listener or relay.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The queue_log database.
    #[error(transparent)]
    Db(#[from] gateway::devices::DbError),
    /// The RTP relay.
    #[error("RTP relay: {0}")]
    Media(String),
}

/// A running node.
pub struct AcdNode {
    /// The SIP listener.
    pub local: SocketAddr,
    /// queue_log lines and other events.
    pub events: broadcast::Sender<NodeEvent>,
    commands: tokio::sync::mpsc::Sender<Command>,
    task: tokio::task::JoinHandle<()>,
    /// Callers in the node (for the shutdown's drain).
    active: watch::Receiver<usize>,
}

impl AcdNode {
    /// Binds the listener, loads the queues, feeds the engine the bus's current device states
    /// and starts serving.
    pub async fn start(cfg: NodeConfig, bus: Arc<dyn Bus>) -> Result<AcdNode, NodeError> {
        let mut engine = Engine::new(&cfg.engine)?;
        let (transports, events) = Transports::bind(TransportConfig {
            udp: vec![cfg.udp],
            tcp: Vec::new(),
            ..TransportConfig::default()
        })
        .await?;
        let local = transports
            .local_addrs()
            .udp
            .first()
            .copied()
            .unwrap_or(cfg.udp);
        let relay = MediaRelay::with_own_thread(RelayConfig::new(
            cfg.media_ip,
            cfg.media_ip,
            cfg.rtp_ports.0,
            cfg.rtp_ports.1,
        ))
        .map_err(|e| NodeError::Media(e.to_string()))?;
        let bus_rx = bus.subscribe();
        let now = engine_now();
        let snapshot = bus.snapshot().devices;
        for (key, state) in &snapshot {
            engine.device_state(now, key, *state);
        }
        // A member whose device state was never heard of reads UNAVAILABLE (app_queue would
        // take UNKNOWN as available): a configured agent is not offered callers before its
        // gateway says its phone is reachable.
        let heard: std::collections::HashSet<String> = snapshot
            .keys()
            .map(|k| crate::engine::normalize_key(k))
            .collect();
        for key in engine.unheard_devices() {
            if cfg.unheard_unavailable && !heard.contains(&key) {
                engine.device_state(now, &key, DeviceState::Unavailable);
            }
        }
        let (node_events, _) = broadcast::channel(1024);
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
            Some(url) => Some(gateway::devices::DeviceStore::open(url).await?),
            None => None,
        };
        let (active_tx, active) = watch::channel(0);
        let core = Core {
            shutdown: shutdown::ShutdownState::default(),
            active: active_tx,
            reach: Reachability::new(cfg.reach),
            probes: HashMap::new(),
            next_targets: Instant::now(),
            records,
            tl: TransactionLayer::new(tx::Config {
                t1: cfg.t1,
                ..tx::Config::default()
            }),
            cfg,
            bus,
            transports,
            engine,
            relay,
            local,
            callers: HashMap::new(),
            agents: HashMap::new(),
            by_client: HashMap::new(),
            by_dialog: HashMap::new(),
            next_id: 1,
            log,
            events: node_events.clone(),
        };
        let (commands, cmd_rx) = tokio::sync::mpsc::channel(16);
        let task = tokio::spawn(core.run(events, bus_rx, cmd_rx));
        Ok(AcdNode {
            local,
            events: node_events,
            commands,
            task,
            active,
        })
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

/// Engine time: since the UNIX epoch, so queue_log lines carry real epoch seconds.
fn engine_now() -> Time {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Party {
    Caller(u64),
    Agent(OfferId),
}

/// A 2xx we retransmit until its ACK (§13.3.1.4).
struct OkRetx {
    key: TransactionKey,
    response: Response,
    next: Instant,
    interval: Duration,
    deadline: Instant,
}

struct CallerCall {
    id: String,
    invite_key: TransactionKey,
    peer: Peer,
    dialog: Dialog,
    leg: Leg,
    sdp: SessionDescription,
    /// The caller's media script (music on hold, announcements); dropped to stop it.
    media: Option<tokio::sync::mpsc::Sender<MediaCmd>>,
    /// When the next position announcement is due.
    next_announce: Option<Instant>,
    /// A feature-code call: hang up at this instant (after the confirmation prompt).
    hangup_at: Option<Instant>,
    queue: String,
    ok: Option<OkRetx>,
    /// The agent's offer once connected.
    connected: Option<OfferId>,
}

struct AgentCall {
    caller: u64,
    interface: String,
    invite: Request,
    key: TransactionKey,
    peer: Peer,
    dialog: Option<Dialog>,
    leg: Leg,
    /// Any provisional response (100 included): the gateway has the offer.
    heard: bool,
    /// A provisional response above 100 (a CANCEL is possible).
    provisional: bool,
    cancelled: bool,
    answered: bool,
    sent: Instant,
}

struct Core {
    cfg: NodeConfig,
    bus: Arc<dyn Bus>,
    transports: Transports,
    tl: TransactionLayer<Peer>,
    engine: Engine,
    relay: MediaRelay,
    local: SocketAddr,
    callers: HashMap<u64, CallerCall>,
    agents: HashMap<OfferId, AgentCall>,
    by_client: HashMap<TransactionKey, OfferId>,
    by_dialog: HashMap<(String, String), Party>,
    next_id: u64,
    log: Option<std::fs::File>,
    records: Option<gateway::devices::DeviceStore>,
    events: broadcast::Sender<NodeEvent>,
    /// Gateways' reachability (OPTIONS keep-alives).
    reach: Reachability,
    /// Outstanding keep-alive transactions → probe id.
    probes: HashMap<TransactionKey, u64>,
    /// When the set of gateways to watch is refreshed next.
    next_targets: Instant,
    /// Graceful shutdown (`node/shutdown.rs`).
    shutdown: shutdown::ShutdownState,
    /// Callers in the node, for the handle.
    active: watch::Sender<usize>,
}

impl Core {
    async fn run(
        mut self,
        mut events: tokio::sync::mpsc::Receiver<TransportEvent>,
        mut bus_rx: broadcast::Receiver<BusEvent>,
        mut commands: tokio::sync::mpsc::Receiver<Command>,
    ) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            let engine_at = self.engine.poll_timeout().map(|t| {
                let now = engine_now();
                Instant::now() + t.saturating_sub(now)
            });
            let sleep = gateway::server::sleep_until(gateway::server::earliest(
                gateway::server::earliest(self.tl.poll_timeout(), engine_at),
                self.reach.poll_timeout(),
            ));
            tokio::select! {
                ev = events.recv() => match ev {
                    None => break,
                    Some(ev) => gateway::server::receive(&self.transports, &mut self.tl, ev).await,
                },
                ev = statebus::recv(&mut bus_rx) => match ev {
                    None => break,
                    Some(BusEvent::Changed(Change::Device { key, state })) => {
                        // Which gateway holds the device may have changed: reachability first.
                        self.sync_reachability(Some(&key));
                        self.engine.device_state(engine_now(), &key, state);
                    }
                    Some(BusEvent::Lagged(_)) => {
                        let now = engine_now();
                        self.sync_reachability(None);
                        for (key, state) in self.bus.snapshot().devices {
                            self.engine.device_state(now, &key, state);
                        }
                    }
                    Some(_) => {}
                },
                _ = sleep => {
                    self.tl.handle_timeout(Instant::now());
                    self.engine.handle_timeout(engine_now());
                    self.reach.handle_timeout(Instant::now());
                }
                _ = tick.tick() => {
                    self.retransmit_oks();
                    self.announce_due();
                    self.offers_unanswered();
                    if Instant::now() >= self.next_targets {
                        self.refresh_targets();
                    }
                }
                Some(cmd) = commands.recv() => match cmd {
                    Command::Stats(reply) => {
                        let _ = reply.send(self.report());
                    }
                    Command::Drain(retry_after) => self.start_drain(retry_after),
                    Command::Finish(done) => self.start_finish(done),
                },
            }
            self.drain().await;
            if self.shutdown_step().await {
                info!("shutdown: ACD node stopped");
                break;
            }
        }
    }

    async fn drain(&mut self) {
        loop {
            let mut progressed = false;
            while let Some(ev) = self.tl.poll_event() {
                progressed = true;
                self.on_tx_event(ev);
            }
            while let Some(ev) = self.reach.poll_event() {
                progressed = true;
                self.on_reach_event(ev);
            }
            while let Some(a) = self.engine.poll_action() {
                progressed = true;
                self.on_action(a);
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

    fn rand(&mut self) -> u64 {
        // Tags, branches, Call-IDs, SSRCs: unique and hard to guess.
        rand::random()
    }

    fn respond(&mut self, key: &TransactionKey, r: Response) {
        if let Err(e) = self.tl.send_response(key, r, Instant::now()) {
            debug!(error = %e, "response not sent");
        }
    }

    fn reply(&mut self, key: &TransactionKey, req: &Request, code: u16) {
        let r = message::response_for(req, code, "");
        self.respond(key, r);
    }

    fn contact(&self) -> String {
        format!("<sip:acd@{}>", self.local)
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
                if let Err(rej) = message::validate_request(&request) {
                    let r = rej.response(&request);
                    self.respond(&key, r);
                    return;
                }
                let tagged = to_tag(&request).is_some();
                match (request.method, tagged) {
                    (Method::Invite, false) => self.on_caller(key, request, source, now),
                    (_, true) => self.on_in_dialog(key, request),
                    (Method::Options, false) => self.reply(&key, &request, 200),
                    _ => self.reply(&key, &request, 501),
                }
            }
            tx::Event::Cancel {
                key,
                invite,
                request,
                ..
            } => {
                self.reply(&key, &request, 200);
                let id = self
                    .callers
                    .iter()
                    .find(|(_, c)| c.invite_key == invite)
                    .map(|(id, _)| *id);
                if let Some(id) = id {
                    // Only before our 200: the caller gets 487 and leaves (ABANDON).
                    if self.callers.get(&id).is_some_and(|c| c.ok.is_none()) {
                        self.caller_gone(id, true);
                    }
                }
            }
            tx::Event::Ack { request, .. } => {
                if let Some(Party::Caller(id)) = self.party_of(&request) {
                    if let Some(c) = self.callers.get_mut(&id) {
                        c.ok = None;
                    }
                }
            }
            tx::Event::Response { key, response } => {
                if let Some(id) = self.probes.remove(&key) {
                    self.reach.answered(now, id);
                    return;
                }
                self.on_agent_response(&key, response)
            }
            tx::Event::Timeout { key } | tx::Event::TransportError { key } => {
                if self.probes.remove(&key).is_some() {
                    return;
                }
                if let Some(offer) = self.by_client.remove(&key) {
                    self.agent_failed(offer);
                }
            }
            tx::Event::StrayResponse { .. } => {}
            tx::Event::Terminated { key } => {
                self.probes.remove(&key);
                // Keep the INVITE mapping for late 2xx retransmissions until the offer ends.
                if key.method() != Method::Invite {
                    self.by_client.remove(&key);
                }
            }
        }
    }

    fn party_of(&self, req: &Request) -> Option<Party> {
        let call_id = header(req, |h| match h {
            Header::CallId(c) => Some(c.value().trim().to_owned()),
            _ => None,
        })?;
        let tag = to_tag(req)?;
        self.by_dialog.get(&(call_id, tag)).copied()
    }

    fn on_caller(&mut self, key: TransactionKey, req: Request, source: Peer, now: Instant) {
        if !self.cfg.gateways.iter().any(|g| g.address == source.addr) {
            warn!(source = %source.addr, "INVITE from an unknown peer refused");
            return self.reply(&key, &req, 403);
        }
        if self.refused_while_draining(&key, &req) {
            return;
        }
        let number = req
            .uri
            .auth
            .as_ref()
            .map(|a| a.user.clone())
            .unwrap_or_default();
        let from_user = header(&req, |h| match h {
            Header::From(f) => message::parse_addresses(f.value(), false)
                .and_then(|l| l.into_iter().next())
                .and_then(|a| message::parse_uri(&a.uri))
                .and_then(|u| u.auth.map(|a| a.user)),
            _ => None,
        })
        .unwrap_or_default();
        let feature = self.feature_code(&key, &req, &number, &from_user);
        if matches!(feature, Some((false, _))) {
            return; // refused, answered already
        }
        let confirm = feature.map(|(_, prompt)| prompt);
        let queue = match &confirm {
            Some(_) => String::new(),
            None => match self.cfg.numbers.get(&number).cloned() {
                Some(q) => q,
                None => return self.reply(&key, &req, 404),
            },
        };
        let offer = (dialog::content_type(&req.headers).as_deref() == Some("application/sdp"))
            .then(|| SessionDescription::parse_bytes(&req.body).ok())
            .flatten();
        let Some(offer) = offer else {
            return self.reply(&key, &req, 488);
        };
        let leg = match self.relay.leg_now() {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "no media port for a caller");
                return self.reply(&key, &req, 503);
            }
        };
        let session = self.rand() >> 1;
        let Some(answer) = sdp::answer(
            &offer,
            leg.local_rtp().ip(),
            &[leg.local_rtp().port()],
            &["PCMA", "PCMU", "telephone-event"],
            ("callfabric-acd", session, 1),
        ) else {
            return self.reply(&key, &req, 488);
        };
        if let Some(rtp) = offer.rtp_endpoint(0) {
            leg.set_remote(rtp, offer.rtcp_endpoint(0));
        }
        let n = self.next_id;
        self.next_id += 1;
        let caller_id = format!("acd-{}-{n}", std::process::id());
        let mut join = Join::new(caller_id.clone(), queue.clone());
        join.caller_number = from_user;
        if confirm.is_some() {
            // A feature code: no queue; the confirmation plays below.
        } else if let Err(e) = self.engine.join(engine_now(), join) {
            info!(%queue, error = %e, "caller not queued");
            let code = match e {
                EngineError::QueueFull(_) => 486,
                _ => 480,
            };
            return self.reply(&key, &req, code);
        }
        let tag = format!("acd{:012x}", self.rand() & 0xffff_ffff_ffff);
        let Ok(d) = Dialog::uas(&req, &tag, &self.contact()) else {
            return self.reply(&key, &req, 400);
        };
        let mut ok = message::response_with_tag(&req, 200, "", &tag);
        ok.headers
            .push(Header::Contact(rsip::headers::Contact::new(self.contact())));
        let ok = dialog::response_with_body(ok, answer.to_string().into_bytes(), "application/sdp");
        self.by_dialog
            .insert((d.call_id.clone(), d.local_tag.clone()), Party::Caller(n));
        // Music on hold, in the codec we answered with.
        let codec = answer
            .media()
            .first()
            .and_then(|m| m.codecs().into_iter().next())
            .and_then(|c| Codec::from_payload_type(c.payload_type))
            .unwrap_or(Codec::Pcmu);
        let player = RtpPlayer::new(
            PlayerConfig {
                codec,
                ssrc: self.rand() as u32,
                initial_seq: self.rand() as u16,
                initial_timestamp: self.rand() as u32,
                looping: true,
            },
            self.cfg.music.clone(),
            Instant::now(),
        );
        let media = spawn_media(leg.clone(), player, self.cfg.music.clone());
        let mut hangup_at = None;
        if let Some(prompt) = &confirm {
            let list: Vec<Vec<i16>> = [prompt.as_str(), "beep"]
                .iter()
                .filter_map(|n| self.cfg.prompts.get(n).map(<[i16]>::to_vec))
                .collect();
            let secs = list.iter().map(Vec::len).sum::<usize>() as f64 / 8000.0;
            let _ = media.try_send(MediaCmd::Announce(list));
            hangup_at = Some(now + Duration::from_secs_f64(secs + 0.5));
        } else {
            info!(caller = %caller_id, %queue, "caller queued");
        }
        self.respond(&key, ok.clone());
        self.callers.insert(
            n,
            CallerCall {
                id: caller_id,
                invite_key: key.clone(),
                peer: source,
                dialog: d,
                leg,
                sdp: answer,
                media: Some(media),
                next_announce: self
                    .announce_every(&queue)
                    .filter(|_| confirm.is_none())
                    .map(|f| now + f),
                hangup_at,
                queue: queue.clone(),
                ok: Some(OkRetx {
                    key,
                    response: ok,
                    next: now + self.cfg.t1,
                    interval: self.cfg.t1,
                    deadline: now + self.cfg.t1 * 64,
                }),
                connected: None,
            },
        );
    }

    /// Position (and hold-time) announcements for waiting callers whose turn it is; and the
    /// hang-up of feature-code calls once their confirmation played.
    fn announce_due(&mut self) {
        let now = Instant::now();
        let due_hangups: Vec<u64> = self
            .callers
            .iter()
            .filter(|(_, c)| c.hangup_at.is_some_and(|t| now >= t))
            .map(|(id, _)| *id)
            .collect();
        for id in due_hangups {
            self.bye_caller(id);
            if let Some(c) = self.callers.remove(&id) {
                c.leg.close();
                self.by_dialog
                    .remove(&(c.dialog.call_id.clone(), c.dialog.local_tag.clone()));
            }
        }
        let due: Vec<u64> = self
            .callers
            .iter()
            .filter(|(_, c)| c.connected.is_none() && c.next_announce.is_some_and(|t| now >= t))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let Some(c) = self.callers.get(&id) else {
                continue;
            };
            let waiting = self.engine.waiting_callers(&c.queue);
            let Some(pos) = waiting.iter().position(|w| *w == c.id).map(|p| p + 1) else {
                continue;
            };
            let mut names: Vec<String> = if pos == 1 {
                vec!["queue-youarenext".into()]
            } else {
                let mut v = vec!["queue-thereare".to_string()];
                v.extend(audio::say_number(u32::try_from(pos).unwrap_or(u32::MAX)));
                v.push("queue-callswaiting".into());
                v
            };
            let holdtime = self
                .queue_cfg(&c.queue)
                .and_then(|q| q.announce_holdtime)
                .unwrap_or(self.cfg.announce_holdtime);
            if holdtime {
                let secs = self
                    .engine
                    .queue_stats(&c.queue)
                    .map_or(0, |s| s.holdtime_weighted_secs);
                if secs > 0 {
                    names.push("queue-holdtime".into());
                    let minutes = secs.div_ceil(60);
                    if minutes <= 1 {
                        names.push("queue-lessthan".into());
                        names.extend(audio::say_number(2));
                    } else {
                        names.extend(audio::say_number(
                            u32::try_from(minutes).unwrap_or(u32::MAX),
                        ));
                    }
                    names.push("queue-minutes".into());
                }
            }
            names.push("queue-thankyou".into());
            // Missing prompts are skipped (the rest still makes sense).
            let list: Vec<Vec<i16>> = names
                .iter()
                .filter_map(|n| self.cfg.prompts.get(n).map(<[i16]>::to_vec))
                .collect();
            debug!(caller = %c.id, pos, "announcing position");
            let _ = self.events.send(NodeEvent::Announced {
                caller: c.id.clone(),
                prompts: names,
            });
            if let Some(m) = &c.media {
                let _ = m.try_send(MediaCmd::Announce(list));
            }
            let every = self.announce_every(&c.queue);
            if let Some(c) = self.callers.get_mut(&id) {
                c.next_announce = every.map(|e| now + e);
            }
        }
    }

    fn queue_cfg(&self, queue: &str) -> Option<&crate::engine::QueueConfig> {
        self.cfg.engine.queues.iter().find(|q| q.name == queue)
    }

    /// How often callers of `queue` hear their position: the queue's `announce_frequency`
    /// (0: never), else the node's default.
    fn announce_every(&self, queue: &str) -> Option<Duration> {
        match self.queue_cfg(queue).and_then(|q| q.announce_frequency) {
            Some(0) => None,
            Some(secs) => Some(Duration::from_secs(secs)),
            None => self.cfg.announce_frequency,
        }
    }

    fn report(&self) -> Vec<QueueReport> {
        let mut out: Vec<QueueReport> = self
            .engine
            .queue_names()
            .map(|q| {
                let members = self
                    .engine
                    .member_interfaces(q)
                    .into_iter()
                    .filter_map(|i| {
                        let st = self.engine.member_stats(q, &i)?;
                        let avail = self.engine.is_member_available(q, &i).unwrap_or(false);
                        Some((i, st, avail))
                    })
                    .collect();
                QueueReport {
                    queue: q.to_owned(),
                    waiting: self.engine.waiting_callers(q).len(),
                    stats: self.engine.queue_stats(q).cloned().unwrap_or_default(),
                    members,
                }
            })
            .collect();
        out.sort_by(|a, b| a.queue.cmp(&b.queue));
        out
    }

    /// `<login_code|logout_code><queue number>` from a phone: add or remove the calling device
    /// as a dynamic member (hot-desking). `None`: not a feature code; `Some((true, prompt))`:
    /// done, confirm with `prompt`; `Some((false, _))`: refused and answered.
    fn feature_code(
        &mut self,
        key: &TransactionKey,
        req: &Request,
        number: &str,
        from_user: &str,
    ) -> Option<(bool, String)> {
        let login_code = self.cfg.login_code.clone();
        let logout_code = self.cfg.logout_code.clone();
        let (login, rest) = match (
            number
                .strip_prefix(login_code.as_str())
                .filter(|_| !login_code.is_empty()),
            number
                .strip_prefix(logout_code.as_str())
                .filter(|_| !logout_code.is_empty()),
        ) {
            (Some(rest), _) => (true, rest),
            (None, Some(rest)) => (false, rest),
            (None, None) => return None,
        };
        let Some(queue) = self.cfg.numbers.get(rest).cloned() else {
            self.reply(key, req, 404);
            return Some((false, String::new()));
        };
        if from_user.is_empty() {
            self.reply(key, req, 403);
            return Some((false, String::new()));
        }
        let iface = format!("{}{from_user}", self.cfg.device_prefix);
        let now = engine_now();
        let result = if login {
            match self.engine.add_member(
                now,
                &queue,
                crate::engine::MemberConfig::new(iface.clone()),
            ) {
                Ok(()) | Err(EngineError::AlreadyMember { .. }) => Ok("agent-loginok"),
                Err(e) => Err(e),
            }
        } else {
            self.engine
                .remove_member(now, &queue, &iface)
                .map(|()| "agent-loggedoff")
        };
        match result {
            Ok(prompt) => {
                info!(%iface, %queue, login, "hot-desking");
                Some((true, prompt.to_owned()))
            }
            Err(e) => {
                info!(%iface, %queue, error = %e, "feature code refused");
                self.reply(key, req, 403);
                Some((false, String::new()))
            }
        }
    }

    fn retransmit_oks(&mut self) {
        let now = Instant::now();
        let mut resend = Vec::new();
        let mut dead = Vec::new();
        for (id, c) in &mut self.callers {
            let Some(ok) = c.ok.as_mut() else { continue };
            if now >= ok.deadline {
                dead.push(*id);
            } else if now >= ok.next {
                resend.push((ok.key.clone(), ok.response.clone()));
                ok.interval = (ok.interval * 2).min(Duration::from_secs(4));
                ok.next = now + ok.interval;
            }
        }
        for (k, r) in resend {
            self.respond(&k, r);
        }
        for id in dead {
            warn!("caller never ACKed our 200: hanging up");
            self.caller_gone(id, false);
        }
    }

    /// The caller left (BYE, CANCEL or no ACK): tell the engine, end its agent call if any.
    fn caller_gone(&mut self, id: u64, cancelled: bool) {
        let Some(mut c) = self.callers.remove(&id) else {
            return;
        };
        c.media = None;
        if cancelled {
            let req = self.tl.request(&c.invite_key).cloned();
            if let Some(req) = req {
                let r = message::response_with_tag(&req, 487, "", &c.dialog.local_tag);
                self.respond(&c.invite_key, r);
            }
        }
        c.leg.close();
        self.by_dialog
            .remove(&(c.dialog.call_id.clone(), c.dialog.local_tag.clone()));
        let now = engine_now();
        match c.connected {
            Some(offer) => {
                let _ = self.engine.call_completed(now, &c.id, CompletedBy::Caller);
                self.hangup_agent(offer);
            }
            None => {
                let _ = self.engine.leave(now, &c.id);
            }
        }
    }

    fn on_in_dialog(&mut self, key: TransactionKey, req: Request) {
        let Some(party) = self.party_of(&req) else {
            let code = if req.method == Method::Ack {
                return;
            } else {
                481
            };
            return self.reply(&key, &req, code);
        };
        match (req.method, party) {
            (Method::Bye, Party::Caller(id)) => {
                self.reply(&key, &req, 200);
                self.caller_gone(id, false);
            }
            (Method::Bye, Party::Agent(offer)) => {
                self.reply(&key, &req, 200);
                self.agent_hung_up(offer);
            }
            (Method::Invite | Method::Update, Party::Caller(id)) => {
                // A re-INVITE / refresh: we stay where we are.
                let sdp = self.callers.get(&id).map(|c| c.sdp.to_string());
                let mut r = message::response_for(&req, 200, "");
                r.headers
                    .push(Header::Contact(rsip::headers::Contact::new(self.contact())));
                if let Some(sdp) = sdp {
                    r = dialog::response_with_body(r, sdp.into_bytes(), "application/sdp");
                }
                self.respond(&key, r);
            }
            _ => self.reply(&key, &req, 200),
        }
    }

    fn on_action(&mut self, a: Action) {
        match a {
            Action::Offer {
                id,
                caller,
                queue,
                interface,
                ..
            } => self.offer(id, &caller, &queue, &interface),
            Action::CancelOffer { id, .. } => self.cancel_offer(id),
            Action::Connect {
                caller, interface, ..
            } => self.connect(&caller, &interface),
            Action::CallerRemoved { caller, reason, .. } => {
                info!(%caller, ?reason, "caller removed from the queue");
                if let Some(id) = self.caller_number(&caller) {
                    self.bye_caller(id);
                    if let Some(mut c) = self.callers.remove(&id) {
                        c.media = None;
                        c.leg.close();
                    }
                }
            }
            Action::QueueLog(ev) => {
                let line = ev.line();
                if let Some(f) = self.log.as_mut() {
                    if let Err(e) = writeln!(f, "{line}") {
                        warn!(error = %e, "cannot write queue_log");
                    }
                }
                info!(queue_log = %line);
                if let Some(store) = self.records.clone() {
                    let row = gateway::records::QueueLogRow {
                        time: i64::try_from(ev.time.as_secs()).unwrap_or(i64::MAX),
                        callid: ev.callid.clone(),
                        queuename: ev.queue.clone(),
                        agent: ev.agent.clone(),
                        event: ev.event.to_owned(),
                        data: ev.data.clone(),
                    };
                    self.shutdown.writes.push(tokio::spawn(async move {
                        if let Err(e) = store.insert_queue_log(&row).await {
                            warn!(error = %e, "queue_log row not written");
                        }
                    }));
                }
                let _ = self.events.send(NodeEvent::QueueLog(line));
            }
        }
    }

    fn caller_number(&self, caller: &str) -> Option<u64> {
        self.callers
            .iter()
            .find(|(_, c)| c.id == caller)
            .map(|(id, _)| *id)
    }

    /// The gateway for a member device: the fabric member publishing its state (and
    /// announcing a SIP address), else the first configured gateway.
    fn gateway_for(&self, interface: &str) -> Option<SocketAddr> {
        self.gateway_with(&self.bus.snapshot().peers, interface)
    }

    fn gateway_with(
        &self,
        peers: &std::collections::BTreeMap<statebus::Eid, (statebus::Heartbeat, bool)>,
        interface: &str,
    ) -> Option<SocketAddr> {
        for (eid, state) in self.bus.device_detail(interface) {
            if matches!(state, DeviceState::Unavailable | DeviceState::Invalid) {
                continue;
            }
            if let Some((hb, true)) = peers.get(&eid) {
                if let Some(addr) = hb.sip.as_deref().and_then(|s| s.parse::<SocketAddr>().ok()) {
                    return Some(addr);
                }
            }
        }
        self.cfg.gateways.first().map(|g| g.address)
    }

    /// The gateways to keep alive: the configured ones and every fabric member announcing a
    /// SIP address.
    fn refresh_targets(&mut self) {
        let now = Instant::now();
        self.next_targets = now + Duration::from_secs(1);
        let mut targets: Vec<SocketAddr> = self.cfg.gateways.iter().map(|g| g.address).collect();
        for (hb, _) in self.bus.snapshot().peers.values() {
            if let Some(a) = hb.sip.as_deref().and_then(|s| s.parse::<SocketAddr>().ok()) {
                if a != self.local {
                    targets.push(a);
                }
            }
        }
        self.reach.set_targets(now, targets);
        self.sync_reachability(None);
    }

    /// Tells the engine which members sit behind an unreachable gateway: all members, or
    /// those whose interface is `key`.
    fn sync_reachability(&mut self, key: Option<&str>) {
        let peers = self.bus.snapshot().peers;
        let mut members: Vec<String> = self
            .engine
            .queue_names()
            .flat_map(|q| self.engine.member_interfaces(q))
            .filter(|i| key.is_none_or(|k| i.eq_ignore_ascii_case(k)))
            .collect();
        members.sort_unstable();
        members.dedup();
        let now = engine_now();
        for iface in members {
            let reachable = self
                .gateway_with(&peers, &iface)
                .is_none_or(|gw| self.reach.is_reachable(gw));
            self.engine.set_reachable(now, &iface, reachable);
        }
    }

    fn on_reach_event(&mut self, ev: ReachEvent) {
        match ev {
            ReachEvent::Probe { id, to } => self.send_probe(id, to),
            ReachEvent::Expired { id } => {
                let key = self
                    .probes
                    .iter()
                    .find(|(_, p)| **p == id)
                    .map(|(k, _)| k.clone());
                if let Some(key) = key {
                    self.probes.remove(&key);
                    self.tl.terminate(&key);
                }
            }
            ReachEvent::Changed { addr, reachable } => {
                if reachable {
                    info!(gateway = %addr, "gateway reachable again");
                } else {
                    warn!(gateway = %addr, "gateway unreachable: its agents are skipped");
                }
                let _ = self.events.send(NodeEvent::Reach {
                    gateway: addr,
                    reachable,
                });
                self.sync_reachability(None);
            }
        }
    }

    fn send_probe(&mut self, id: u64, to: SocketAddr) {
        let (b, t, c) = (self.rand(), self.rand() & 0xffff_ffff_ffff, self.rand());
        let text = format!(
            "OPTIONS sip:{to} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKacdp{b:016x};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:acd@{local}>;tag=acdp{t:012x}\r\nTo: <sip:{to}>\r\n\
             Call-ID: acdp{c:016x}@{ip}\r\nCSeq: 1 OPTIONS\r\nContact: {contact}\r\n\
             Content-Length: 0\r\n\r\n",
            local = self.local,
            ip = self.local.ip(),
            contact = self.contact(),
        );
        let Ok(SipMessage::Request(req)) = message::parse(text.as_bytes()) else {
            warn!(gateway = %to, "cannot build the keep-alive OPTIONS");
            return;
        };
        let peer = Peer {
            addr: to,
            transport: transport::Transport::Udp,
            local: self.local,
        };
        match self
            .tl
            .send_request(req, tx::Transport::Unreliable, peer, Instant::now())
        {
            Ok(key) => {
                self.probes.insert(key, id);
            }
            Err(e) => debug!(error = %e, "keep-alive not sent"),
        }
    }

    /// Offers without any provisional response within the bound: given up (never
    /// retransmitted again), the gateway probed at once, the next member tried.
    fn offers_unanswered(&mut self) {
        let now = Instant::now();
        let bound = self.cfg.offer_provisional_timeout;
        let late: Vec<OfferId> = self
            .agents
            .iter()
            .filter(|(_, a)| !a.heard && !a.cancelled && !a.answered && now >= a.sent + bound)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            let Some(a) = self.agents.get_mut(&id) else {
                continue;
            };
            a.cancelled = true;
            let (key, gw, interface) = (a.key.clone(), a.peer.addr, a.interface.clone());
            self.tl.abandon(&key);
            warn!(%interface, gateway = %gw, "no provisional response to the offer: next member");
            let _ = self.events.send(NodeEvent::OfferUnanswered {
                interface,
                gateway: gw,
            });
            self.reach.suspect(now, gw);
            let _ = self
                .engine
                .offer_outcome(engine_now(), id, OfferOutcome::Busy);
        }
    }

    fn ringinuse(&self, queue: &str, interface: &str) -> bool {
        let Some(q) = self.cfg.engine.queues.iter().find(|q| q.name == queue) else {
            return true;
        };
        q.members
            .iter()
            .find(|m| m.interface.eq_ignore_ascii_case(interface))
            .and_then(|m| m.ringinuse)
            .unwrap_or(q.ringinuse)
    }

    fn offer(&mut self, id: OfferId, caller: &str, queue: &str, interface: &str) {
        if !self.engine.is_reachable(interface) {
            // The engine never offers an unreachable member; a race with a change in flight.
            let _ = self
                .engine
                .offer_outcome(engine_now(), id, OfferOutcome::Busy);
            return;
        }
        let now = engine_now();
        let Some(n) = self.caller_number(caller) else {
            let _ = self.engine.offer_outcome(now, id, OfferOutcome::Busy);
            return;
        };
        let Some(gw) = self.gateway_for(interface) else {
            warn!(%interface, "no gateway for the member");
            let _ = self.engine.offer_outcome(now, id, OfferOutcome::Busy);
            return;
        };
        let user = (interface.strip_prefix(self.cfg.device_prefix.as_str()))
            .or_else(|| interface.rsplit('/').next())
            .unwrap_or(interface)
            .to_owned();
        let leg = match self.relay.leg_now() {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "no media port for an agent");
                let _ = self.engine.offer_outcome(now, id, OfferOutcome::Busy);
                return;
            }
        };
        let session = self.rand() >> 1;
        // The relay does not transcode: offer the agent only the codec the caller's leg uses.
        let codec = self
            .callers
            .get(&n)
            .and_then(|c| {
                c.sdp
                    .media()
                    .first()
                    .and_then(|m| m.codecs().into_iter().next())
            })
            .map(|c| c.name.to_ascii_uppercase())
            .unwrap_or_else(|| "PCMU".into());
        let offer = sdp::offer(
            leg.local_rtp().ip(),
            leg.local_rtp().port(),
            &[codec.as_str(), "telephone-event"],
            ("callfabric-acd", session, 1),
        );
        let from = self
            .callers
            .get(&n)
            .and_then(|c| message::parse_addresses(&caller_from(c), false))
            .and_then(|l| l.into_iter().next())
            .map(|a| format!("<{}>", a.uri))
            .unwrap_or_else(|| format!("<sip:acd@{}>", self.local));
        let branch = format!("z9hG4bKacd{:016x}", self.rand());
        let tag = format!("acd{:012x}", self.rand() & 0xffff_ffff_ffff);
        let sent = Instant::now();
        let deadline = SystemTime::now() + self.cfg.offer_provisional_timeout;
        let x_offer = gateway::offer::Offer {
            queue: Some(queue.to_owned()),
            ringinuse: self.ringinuse(queue, interface),
            deadline_ms: deadline
                .duration_since(SystemTime::UNIX_EPOCH)
                .ok()
                .and_then(|d| u64::try_from(d.as_millis()).ok()),
        };
        let cid = self.rand();
        let text = format!(
            "INVITE sip:{user}@{gw} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch={branch};rport\r\n\
             Max-Forwards: 70\r\nFrom: {from};tag={tag}\r\nTo: <sip:{user}@{gw}>\r\n\
             Call-ID: acd{cid:016x}@{ip}\r\nCSeq: 1 INVITE\r\nContact: {contact}\r\n\
             {header}: {x_offer}\r\nContent-Length: 0\r\n\r\n",
            header = gateway::offer::HEADER,
            local = self.local,
            ip = self.local.ip(),
            contact = self.contact(),
        );
        let Ok(SipMessage::Request(req)) = message::parse(text.as_bytes()) else {
            warn!(%interface, "cannot build the offer INVITE");
            let _ = self.engine.offer_outcome(now, id, OfferOutcome::Busy);
            return;
        };
        let req = dialog::with_body(req, offer.to_string().into_bytes(), "application/sdp");
        let peer = Peer {
            addr: gw,
            transport: transport::Transport::Udp,
            local: self.local,
        };
        match self
            .tl
            .send_request(req.clone(), tx::Transport::Unreliable, peer.clone(), sent)
        {
            Ok(key) => {
                info!(%interface, gateway = %gw, %queue, "offering a caller");
                let _ = self.events.send(NodeEvent::Offered {
                    caller: caller.to_owned(),
                    interface: interface.to_owned(),
                    gateway: gw,
                });
                self.by_client.insert(key.clone(), id);
                self.agents.insert(
                    id,
                    AgentCall {
                        caller: n,
                        interface: interface.to_owned(),
                        invite: req,
                        key,
                        peer,
                        dialog: None,
                        leg,
                        heard: false,
                        provisional: false,
                        cancelled: false,
                        answered: false,
                        sent,
                    },
                );
            }
            Err(e) => {
                warn!(error = %e, "offer INVITE not sent");
                let _ = self.engine.offer_outcome(now, id, OfferOutcome::Busy);
            }
        }
    }

    fn cancel_offer(&mut self, id: OfferId) {
        let Some(a) = self.agents.get_mut(&id) else {
            return;
        };
        if a.answered {
            self.hangup_agent(id);
            return;
        }
        a.cancelled = true;
        if a.provisional {
            let (key, peer) = (a.key.clone(), a.peer.clone());
            self.send_cancel(&key, peer);
        } else {
            // §9.1: no CANCEL before a provisional response. Stop retransmitting so the offer
            // cannot reach the agent later; a late 1xx is CANCELled, a late 2xx ACKed + BYE.
            let key = a.key.clone();
            self.tl.abandon(&key);
        }
    }

    fn send_cancel(&mut self, key: &TransactionKey, peer: Peer) {
        match self.tl.build_cancel(key) {
            Ok(c) => {
                let _ = self
                    .tl
                    .send_request(c, tx::Transport::Unreliable, peer, Instant::now());
            }
            Err(e) => debug!(error = %e, "nothing to cancel"),
        }
    }

    fn on_agent_response(&mut self, key: &TransactionKey, resp: Response) {
        let Some(&id) = self.by_client.get(key) else {
            return;
        };
        let code = resp.status_code.code();
        let Some(a) = self.agents.get_mut(&id) else {
            return;
        };
        if *key != a.key {
            return;
        }
        a.heard = true;
        let gw = a.peer.addr;
        self.reach.heard(Instant::now(), gw);
        let Some(a) = self.agents.get_mut(&id) else {
            return;
        };
        if code < 200 {
            if code > 100 && !a.provisional {
                a.provisional = true;
                if a.cancelled {
                    let (k, p) = (a.key.clone(), a.peer.clone());
                    self.send_cancel(&k, p);
                }
            }
            return;
        }
        if code < 300 {
            // ACK every 2xx (a retransmission too).
            if a.dialog.is_none() {
                if let Ok(d) = Dialog::uac(&a.invite, &resp) {
                    a.dialog = Some(d);
                }
            }
            let branch = format!("z9hG4bKacd{:016x}", rand::random::<u64>());
            let via = format!("SIP/2.0/UDP {};branch={branch};rport", self.local);
            let Some(a) = self.agents.get_mut(&id) else {
                return;
            };
            if let Some(d) = &a.dialog {
                let ack = d.ack(1, &via);
                let peer = a.peer.clone();
                self.tl
                    .send_stateless(ack.into(), peer, tx::Transport::Unreliable);
            }
            let Some(a) = self.agents.get_mut(&id) else {
                return;
            };
            if a.answered {
                return;
            }
            a.answered = true;
            if let Some(d) = &a.dialog {
                self.by_dialog
                    .insert((d.call_id.clone(), d.local_tag.clone()), Party::Agent(id));
            }
            if a.cancelled {
                self.hangup_agent(id);
                return;
            }
            if let Ok(answer) = SessionDescription::parse_bytes(&resp.body) {
                if let Some(rtp) = answer.rtp_endpoint(0) {
                    a.leg.set_remote(rtp, answer.rtcp_endpoint(0));
                }
            }
            if let Err(e) = self
                .engine
                .offer_outcome(engine_now(), id, OfferOutcome::Answered)
            {
                warn!(error = %e, "the engine no longer wants this agent");
                self.hangup_agent(id);
            }
            return;
        }
        // Refused (486 from the arbiter, 480, 404 …) or 487 after our CANCEL.
        let cancelled = a.cancelled;
        self.by_client.remove(key);
        if let Some(a) = self.agents.remove(&id) {
            a.leg.close();
        }
        if !cancelled {
            info!(code, "agent refused the offer");
            let _ = self
                .engine
                .offer_outcome(engine_now(), id, OfferOutcome::Busy);
        }
    }

    fn agent_failed(&mut self, id: OfferId) {
        if let Some(a) = self.agents.remove(&id) {
            a.leg.close();
            if !a.cancelled && !a.answered {
                let _ = self
                    .engine
                    .offer_outcome(engine_now(), id, OfferOutcome::Busy);
            }
        }
    }

    fn connect(&mut self, caller: &str, interface: &str) {
        let Some(n) = self.caller_number(caller) else {
            return;
        };
        let offer = self
            .agents
            .iter()
            .find(|(_, a)| {
                a.caller == n && a.answered && a.interface.eq_ignore_ascii_case(interface)
            })
            .map(|(id, _)| *id);
        let (Some(offer), Some(c)) = (offer, self.callers.get_mut(&n)) else {
            return;
        };
        c.media = None;
        c.connected = Some(offer);
        if let Some(a) = self.agents.get(&offer) {
            if let Err(e) = media::bridge(&c.leg, &a.leg) {
                warn!(error = %e, "cannot bridge caller and agent");
            }
        }
        info!(%caller, %interface, "caller connected to agent");
    }

    /// BYE to the agent of offer `id` and forget it.
    fn hangup_agent(&mut self, id: OfferId) {
        let Some(a) = self.agents.remove(&id) else {
            return;
        };
        a.leg.close();
        if let Some(mut d) = a.dialog {
            let branch = format!("z9hG4bKacd{:016x}", self.rand());
            let via = format!("SIP/2.0/UDP {};branch={branch};rport", self.local);
            let bye = d.request(Method::Bye, &via);
            self.by_dialog
                .remove(&(d.call_id.clone(), d.local_tag.clone()));
            let _ = self
                .tl
                .send_request(bye, tx::Transport::Unreliable, a.peer, Instant::now());
        }
    }

    fn agent_hung_up(&mut self, id: OfferId) {
        let Some(a) = self.agents.remove(&id) else {
            return;
        };
        a.leg.close();
        if let Some(d) = &a.dialog {
            self.by_dialog
                .remove(&(d.call_id.clone(), d.local_tag.clone()));
        }
        let caller = a.caller;
        if let Some(c) = self.callers.get(&caller) {
            let cid = c.id.clone();
            let _ = self
                .engine
                .call_completed(engine_now(), &cid, CompletedBy::Agent);
        }
        self.bye_caller(caller);
        if let Some(mut c) = self.callers.remove(&caller) {
            c.media = None;
            c.leg.close();
            self.by_dialog
                .remove(&(c.dialog.call_id.clone(), c.dialog.local_tag.clone()));
        }
    }

    fn bye_caller(&mut self, n: u64) {
        let branch = format!("z9hG4bKacd{:016x}", self.rand());
        let via = format!("SIP/2.0/UDP {};branch={branch};rport", self.local);
        let Some(c) = self.callers.get_mut(&n) else {
            return;
        };
        let bye = c.dialog.request(Method::Bye, &via);
        let peer = c.peer.clone();
        let _ = self
            .tl
            .send_request(bye, tx::Transport::Unreliable, peer, Instant::now());
    }

    async fn transmit(&mut self, t: tx::Transmit<Peer>) {
        gateway::server::transmit(&self.transports, &mut self.tl, t).await;
    }
}

/// What a caller's media script is told.
enum MediaCmd {
    /// Play these prompts once, then go back to music on hold.
    Announce(Vec<Vec<i16>>),
}

/// The media script of one caller: music on hold in a loop, interrupted by announcements,
/// with seq/timestamps continuous across switches. Ends when its sender is dropped.
fn spawn_media(
    leg: Leg,
    mut player: RtpPlayer,
    music: Vec<i16>,
) -> tokio::sync::mpsc::Sender<MediaCmd> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<MediaCmd>(4);
    tokio::spawn(async move {
        let sink: Arc<dyn audio::RtpSink> = Arc::new(leg);
        loop {
            let (stop_tx, stop_rx) = watch::channel(false);
            let play = audio::play(sink.clone(), player, stop_rx);
            tokio::pin!(play);
            let cmd = tokio::select! {
                (p, _) = &mut play => {
                    // An announcement finished: back to the music.
                    player = p;
                    player.replace_source(music.clone());
                    player.set_looping(true);
                    player.rebase(Instant::now());
                    continue;
                }
                cmd = rx.recv() => cmd,
            };
            let _ = stop_tx.send(true);
            let (p, _) = play.await;
            player = p;
            match cmd {
                Some(MediaCmd::Announce(list)) if !list.is_empty() => {
                    player.replace_playlist(list);
                    player.set_looping(false);
                    player.rebase(Instant::now());
                }
                Some(MediaCmd::Announce(_)) => player.rebase(Instant::now()),
                None => return,
            }
        }
    });
    tx
}

fn caller_from(c: &CallerCall) -> String {
    // The caller's own address, as it reached us (our dialog's remote party).
    c.dialog.remote_header().to_owned()
}

fn header<T>(req: &Request, f: impl Fn(&Header) -> Option<T>) -> Option<T> {
    req.headers.iter().find_map(f)
}

fn to_tag(req: &Request) -> Option<String> {
    header(req, |h| match h {
        Header::To(t) => message::parse_addresses(t.value(), false)
            .and_then(|l| l.into_iter().next())
            .and_then(|a| a.param("tag").flatten().map(str::to_owned)),
        _ => None,
    })
}

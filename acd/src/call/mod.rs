//! The ACD's call control, sans-IO: callers answered and queued, agents offered callers
//! through their gateways, bridges, hang-ups, announcements and hot-desking.
//!
//! The process module ([`crate::node`]) feeds [`CallControl`] what the transaction layer
//! reports ([`tx::Event`]), the bus's device states, media events (an announcement played to
//! its end) and the time (`now`, monotonic); it polls [`Output`]s (requests, responses, CANCEL,
//! media scripts, queue_log lines, events) and sleeps until [`CallControl::poll_timeout`].
//! Relay legs are opened through the [`Media`] trait (their local port goes into our SDP at
//! once); which gateway holds a device is read through the [`Fabric`] trait. The engine runs on
//! monotonic time (time since the core was made); the wall clock, injected, only stamps
//! queue_log lines and the offer's `deadline=` (a unix time the gateway compares with its own
//! clock). [`apply`] puts the SIP outputs into a [`TransactionLayer`].
//!
//! * **Callers** arrive from a configured gateway (a trunk: identified by its exact source
//!   address) with a queue number as Request-URI user. They are answered with a relay leg,
//!   hear music on hold ([`Output::Music`]) and join the engine's queue. Our 2xx is
//!   retransmitted until the ACK (T1 doubling to 4 s; no ACK in 64·T1: hung up).
//! * **Offers**: for each engine `Offer` an INVITE for the member's device
//!   (`<device_prefix>2001` → `sip:2001@<gateway>`) goes to its gateway: the fabric member
//!   that publishes the device's state and announces a SIP address, else the first configured
//!   gateway. `X-CF-Offer: queue=…;ringinuse=no|yes;deadline=<unix ms>`: the gateway refuses
//!   (486) an agent already in a call when ringinuse is off. A refusal (any final ≥ 300) is
//!   "busy" to the engine (RINGNOANSWER, as app_queue's `rna` on BUSY) and the next member is
//!   tried at once. An offer without a provisional response within
//!   `offer_provisional_timeout` is abandoned (never retransmitted; a late 1xx is CANCELled, a
//!   late 2xx ACKed and BYEd) and the next member tried.
//! * **Reachability** ([`crate::reach`]): pipelined OPTIONS keep-alives to every gateway, sent
//!   without a transaction and matched back by a salted branch; members behind an unreachable
//!   one are unreachable to the engine.
//! * **Connect**: the agent's 200 is ACKed, the music stops and the legs are bridged. A
//!   hang-up on either side ends both (COMPLETECALLER / COMPLETEAGENT). A caller leaving while
//!   waiting is ABANDON. The engine's ring timeout CANCELs the offer (RINGNOANSWER).
//! * **Announcements**: waiting callers hear their position (and the estimated hold time)
//!   every `announce_frequency`.
//! * **Hot-desking**: `<login_code><queue number>` / `<logout_code><queue number>` add or
//!   remove the calling device as a dynamic member; a confirmation plays, then we hang up.

mod admin;
mod announce;
mod callback;
mod dtmf;
mod late;
mod shutdown;
mod trust;
pub use admin::{CallState, HotDesk, LiveCall, PauseCodes};
pub use announce::Announcements;
pub use callback::CALLBACK_KEY;
pub use dtmf::Rfc4733;
pub use late::MAX_ABANDONED;
pub use shutdown::{FinishReport, BYE_WAIT_CAP};
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use media::audio::Codec;
use rand::rngs::StdRng;
use rand::RngCore;
use rsip::headers::UntypedHeader;
use rsip::Header;
use sdp::{self, SessionDescription};
use sip_core::builder::{self, Local, RequestBuilder};
use sip_core::dialog::{self, Dialog};
use sip_core::message::{self, Method, Request, Response};
use sip_core::transaction::{self as tx, TransactionKey, TransactionLayer};
use sip_core::ua::{ToSend, UacInvite, UasEvent, UasInvite};
use sipnet as transport;
use sipnet::Peer;
use statebus::{DeviceState, Eid};
use tracing::{debug, info, warn};

use crate::engine::{
    Action, CompletedBy, Engine, EngineConfig, EngineError, Join, MemberStats, OfferId,
    OfferOutcome, Place, QueueLogEvent, QueueStats, Time,
};
use crate::reach::{ReachConfig, ReachEvent, Reachability};

/// The `X-CF-Offer` field of an offer INVITE.
fn offer_header(offer: &sip_core::offer::Offer) -> Header {
    Header::Other(sip_core::offer::HEADER.into(), offer.to_string())
}

/// How long a feature-code call waits for its confirmation prompt to end before hanging up
/// anyway (the media script reports the end with [`CallControl::announcement_done`]).
pub const CONFIRM_MAX: Duration = Duration::from_secs(30);
/// Pause between the end of a confirmation prompt and our BYE.
pub const CONFIRM_TAIL: Duration = Duration::from_millis(500);
/// The set of gateways watched for reachability is refreshed this often.
pub const TARGETS_EVERY: Duration = Duration::from_secs(1);

/// What call control needs; built by the node from its configuration.
#[derive(Debug, Clone)]
pub struct CallConfig {
    /// Our SIP address (Via, Contact).
    pub local: SocketAddr,
    /// The transaction layer's timers (T1, T2: 2xx retransmission until the ACK, 64·T1
    /// deadlines); the node runs its transaction layer on the same.
    pub timers: tx::Config,
    /// Queues, members, rules.
    pub engine: EngineConfig,
    /// Dialled number → queue name.
    pub numbers: HashMap<String, String>,
    /// Gateways' SIP addresses, in order of preference for agents no heartbeat places. Callers
    /// are accepted only from these.
    pub gateways: Vec<SocketAddr>,
    /// Position announcements, unless the queue says otherwise.
    pub announce: Announcements,
    /// Hot-desking feature codes.
    pub hot_desk: HotDesk,
    /// OPTIONS keep-alives.
    pub reach: ReachConfig,
    /// An offer without a provisional response after this is given up; also its deadline.
    pub offer_provisional_timeout: Duration,
    /// Device name of a user: `<device_prefix><user>`.
    pub device_prefix: String,
    /// Caller ids are `<caller_prefix>-<n>`.
    pub caller_prefix: String,
    /// Agent self-service: pause with a reason code and unpause from the phone.
    pub pause_codes: PauseCodes,
}

/// A relay leg of a caller or an agent, numbered by call control.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LegId(pub u64);

/// The media relay as call control sees it (the node implements it on `MediaRelay`, tests
/// with a fake).
pub trait Media {
    /// Opens leg `leg`; the local RTP address to put in our SDP, `None` when no port is left.
    fn open(&mut self, leg: LegId) -> Option<SocketAddr>;
    /// [`Media::open`] for a leg that will be bridged with `beside` (an agent's leg with its
    /// caller's): a relay with several threads runs both on one.
    fn open_beside(&mut self, leg: LegId, _beside: LegId) -> Option<SocketAddr> {
        self.open(leg)
    }
    /// Where the leg's far end receives RTP (and RTCP).
    fn set_remote(&mut self, leg: LegId, rtp: SocketAddr, rtcp: Option<SocketAddr>);
    /// Relays between two legs; false if it could not.
    fn bridge(&mut self, a: LegId, b: LegId) -> bool;
    /// Closes the leg (and ends its media script, if any).
    fn close(&mut self, leg: LegId);
    /// Report RFC 4733 DTMF keys received on `leg` (payload type `payload_type`) through
    /// [`CallControl::dtmf`]. A relay without DTMF detection ignores it.
    fn watch_dtmf(&mut self, _leg: LegId, _payload_type: u8) {}
}

/// The state fabric as call control sees it: who publishes a device, where members are.
pub trait Fabric {
    /// Publishers of `device`'s state with the state each publishes.
    fn publishers(&self, device: &str) -> Vec<(Eid, DeviceState)>;
    /// Fabric members that announce a SIP address: EID, address, alive.
    fn sip_members(&self) -> Vec<(Eid, SocketAddr, bool)>;
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
    /// The callers waiting in a queue at every ACD node, as this node knows them, changed.
    GlobalWaiting {
        /// Queue name.
        queue: String,
        /// Callers waiting here and at other nodes.
        total: usize,
    },
}

/// One queue's figures, for supervisors and reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueReport {
    /// Queue name.
    pub queue: String,
    /// Callers waiting now.
    pub waiting: usize,
    /// Counters (answered, abandoned, hold and talk times, service level).
    pub stats: QueueStats,
    /// Members: interface, figures, and whether it could take a call now.
    pub members: Vec<(String, MemberStats, bool)>,
}

/// What the node must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// A SIP message for the transaction layer (the type the B2BUA's driver shares).
    Sip(ToSend<Peer>),
    /// Stop retransmitting the client INVITE `key` (no provisional response: no CANCEL).
    Abandon {
        /// The INVITE client transaction.
        key: TransactionKey,
    },
    /// Forget client transaction `key` (an expired keep-alive).
    Terminate {
        /// The transaction.
        key: TransactionKey,
    },
    /// Start the leg's media script: music on hold, looped, in `codec`.
    Music {
        /// The caller's leg.
        leg: LegId,
        /// The codec answered.
        codec: Codec,
    },
    /// Interrupt the music with these prompts (missing ones skipped), then music again;
    /// report the end with [`CallControl::announcement_done`].
    Announce {
        /// The caller's leg.
        leg: LegId,
        /// Prompt names (Asterisk's).
        prompts: Vec<String>,
    },
    /// Stop the leg's media script (the leg stays open).
    StopMedia {
        /// The leg.
        leg: LegId,
    },
    /// A queue_log line; `time` is the wall clock (unix time).
    QueueLog(QueueLogEvent),
    /// Something to report.
    Event(NodeEvent),
}

/// Puts a SIP output into the transaction layer; the others are returned. A request the layer
/// refuses is reported back to `core` (as a timeout of its transaction).
pub fn apply<M: Media, F: Fabric>(
    tl: &mut TransactionLayer<Peer>,
    core: &mut CallControl<M, F>,
    out: Output,
    now: Instant,
) -> Option<Output> {
    match out {
        Output::Sip(send) => {
            if let Err(key) = send.apply(tl, Peer::tx_transport, now) {
                core.request_failed(&key, now);
            }
        }
        Output::Abandon { key } => {
            tl.abandon(&key);
        }
        Output::Terminate { key } => {
            tl.terminate(&key);
        }
        other => return Some(other),
    }
    None
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Party {
    Caller(u64),
    Agent(OfferId),
}

/// A 2xx we retransmit until its ACK (§13.3.1.4), through server transaction `key`.
struct OkRetx {
    key: TransactionKey,
    usage: UasInvite,
}

struct CallerCall {
    id: String,
    invite_key: TransactionKey,
    invite: Request,
    peer: Peer,
    dialog: Dialog,
    leg: LegId,
    sdp: SessionDescription,
    next_announce: Option<Instant>,
    /// A feature-code call: hang up at this instant.
    hangup_at: Option<Instant>,
    queue: String,
    ok: Option<OkRetx>,
    connected: Option<OfferId>,
    /// The caller's number (From user).
    from: String,
    /// Answered by us.
    since: Instant,
    /// Waiting for a call back (`callback.rs`).
    callback: Option<callback::Callback>,
}

struct AgentCall {
    caller: u64,
    interface: String,
    invite: Request,
    key: TransactionKey,
    peer: Peer,
    dialog: Option<Dialog>,
    /// The ACK of the agent's 2xx (the same one for its retransmissions).
    uac: UacInvite,
    leg: LegId,
    /// Any provisional response (100 included): the gateway has the offer.
    heard: bool,
    /// A provisional response above 100 (a CANCEL is possible).
    provisional: bool,
    cancelled: bool,
    answered: bool,
    /// Give up if nothing is heard by then.
    give_up: Instant,
    /// Cancelled (or abandoned) and unanswered: forget it by then whatever comes (§9.1: a
    /// CANCEL without a final response to the INVITE within 64·T1).
    forget_at: Option<Instant>,
}

/// The ACD's call control. See the module documentation.
pub struct CallControl<M, F> {
    cfg: CallConfig,
    media: M,
    fabric: F,
    engine: Engine,
    reach: Reachability,
    rng: StdRng,
    wall: Box<dyn Fn() -> SystemTime + Send>,
    /// Engine time zero.
    epoch: Instant,
    callers: HashMap<u64, CallerCall>,
    agents: HashMap<OfferId, AgentCall>,
    by_client: HashMap<TransactionKey, OfferId>,
    by_dialog: HashMap<(String, String), Party>,
    by_leg: HashMap<LegId, u64>,
    /// Secret part of the keep-alives' branches (`z9hG4bKacdp<id>.<salt>`): an answer is
    /// matched to its probe by the branch alone (probes are sent without a transaction).
    probe_salt: u64,
    /// Offers given up whose INVITE transaction ended: a later 2xx is still ACKed and BYEd.
    abandoned: late::Abandoned,
    next_targets: Instant,
    next_id: u64,
    next_leg: u64,
    out: VecDeque<Output>,
    /// Graceful shutdown (`shutdown.rs`).
    shutdown: shutdown::Shutdown,
    /// Fabric trust (`trust.rs`).
    trust: trust::Trust,
    /// Callers waiting per queue at every node, as last reported (`NodeEvent::GlobalWaiting`).
    global_waiting: HashMap<String, usize>,
    /// Call backs' INVITE transactions → caller (`callback.rs`).
    callback_keys: HashMap<TransactionKey, u64>,
}

impl<M: Media, F: Fabric> CallControl<M, F> {
    /// A core with no calls; engine time starts at `now`. `wall` reads the wall clock (for
    /// queue_log stamps and offer deadlines only); `rng` makes tags, branches and Call-IDs.
    pub fn new(
        cfg: CallConfig,
        media: M,
        fabric: F,
        rng: StdRng,
        wall: Box<dyn Fn() -> SystemTime + Send>,
        now: Instant,
    ) -> Result<Self, EngineError> {
        let engine = Engine::new(&cfg.engine)?;
        let mut rng = rng;
        let probe_salt = rng.next_u64() & 0xffff_ffff;
        Ok(CallControl {
            reach: Reachability::new(cfg.reach),
            cfg,
            media,
            fabric,
            engine,
            rng,
            wall,
            epoch: now,
            callers: HashMap::new(),
            agents: HashMap::new(),
            by_client: HashMap::new(),
            by_dialog: HashMap::new(),
            by_leg: HashMap::new(),
            probe_salt,
            abandoned: late::Abandoned::default(),
            next_targets: now,
            next_id: 1,
            next_leg: 1,
            out: VecDeque::new(),
            shutdown: shutdown::Shutdown::default(),
            trust: trust::Trust::default(),
            global_waiting: HashMap::new(),
            callback_keys: HashMap::new(),
        })
    }

    /// The queue engine (read-only).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The media relay.
    pub fn media(&self) -> &M {
        &self.media
    }

    /// The media relay, to drive its media scripts.
    pub fn media_mut(&mut self) -> &mut M {
        &mut self.media
    }

    /// The fabric view (tests change what it says).
    pub fn fabric_mut(&mut self) -> &mut F {
        &mut self.fabric
    }

    /// Callers answered and not yet gone (waiting, connected or on a feature code).
    pub fn callers(&self) -> usize {
        self.callers.len()
    }

    /// Offers outstanding or connected.
    pub fn agent_calls(&self) -> usize {
        self.agents.len()
    }

    /// The next output.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    fn t(&self, now: Instant) -> Time {
        now.saturating_duration_since(self.epoch)
    }

    /// When [`CallControl::handle_timeout`] has something to do.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        let mut at = Some(self.next_targets);
        let mut min = |t: Option<Instant>| {
            if let Some(t) = t {
                at = Some(at.map_or(t, |a| a.min(t)));
            }
        };
        min(self
            .engine
            .poll_timeout()
            .and_then(|t| self.epoch.checked_add(t)));
        min(self.reach.poll_timeout());
        min(self.shutdown_timeout());
        for c in self.callers.values() {
            min(c.ok.as_ref().and_then(|o| o.usage.poll_timeout()));
            min(c.hangup_at);
            if c.connected.is_none() {
                min(c.next_announce);
            }
        }
        for a in self.agents.values() {
            if !a.heard && !a.cancelled && !a.answered {
                min(Some(a.give_up));
            }
            if !a.answered {
                min(a.forget_at);
            }
        }
        at
    }

    /// Everything due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.engine.handle_timeout(self.t(now));
        self.reach.handle_timeout(now);
        self.retransmit_oks(now);
        self.hangups_due(now);
        self.announce_due(now);
        self.offers_unanswered(now);
        self.forget_cancelled(now);
        self.shutdown_timer(now);
        if now >= self.next_targets {
            self.refresh_targets(now);
        }
        self.pump(now);
    }

    /// A device's aggregate state changed on the bus.
    pub fn device_state(&mut self, key: &str, state: DeviceState, now: Instant) {
        // Which gateway holds the device may have changed: reachability first.
        self.sync_reachability(Some(key), now);
        self.engine.device_state(self.t(now), key, state);
        self.pump(now);
    }

    /// All device states at once (start, or after missing bus events).
    pub fn resync(
        &mut self,
        devices: impl IntoIterator<Item = (String, DeviceState)>,
        now: Instant,
    ) {
        self.sync_reachability(None, now);
        let t = self.t(now);
        for (key, state) in devices {
            self.engine.device_state(t, &key, state);
        }
        self.pump(now);
    }

    /// A fabric member came up (its first heartbeat): one that announces a SIP address is
    /// kept alive from now on, not from the next periodic refresh of the targets.
    pub fn peer_up(&mut self, now: Instant) {
        self.refresh_targets(now);
        self.pump(now);
    }

    /// Abandoned offers remembered for a late 2xx now, and how many were forgotten early
    /// because [`MAX_ABANDONED`] were remembered.
    pub fn abandoned_offers(&self) -> (usize, u64) {
        (self.abandoned.len(), self.abandoned.dropped())
    }

    /// The media script of `leg` finished an announcement.
    pub fn announcement_done(&mut self, leg: LegId, now: Instant) {
        if let Some(c) = self.by_leg.get(&leg).and_then(|n| self.callers.get_mut(n)) {
            if let Some(at) = c.hangup_at.as_mut() {
                *at = (*at).min(now + CONFIRM_TAIL);
            }
        }
    }

    /// A request from [`ToSend::Request`] could not be sent.
    pub fn request_failed(&mut self, key: &TransactionKey, now: Instant) {
        self.on_tx_event(tx::Event::Timeout { key: key.clone() }, now);
        self.pump(now);
    }

    /// What the transaction layer reported.
    pub fn handle(&mut self, ev: tx::Event<Peer>, now: Instant) {
        self.on_tx_event(ev, now);
        self.pump(now);
    }

    /// Per-queue and per-member statistics, now.
    pub fn report(&self) -> Vec<QueueReport> {
        let e = &self.engine;
        let mut out: Vec<QueueReport> = e
            .queue_names()
            .map(|q| {
                let members = e
                    .member_interfaces(q)
                    .into_iter()
                    .filter_map(|i| {
                        let st = e.member_stats(q, &i)?;
                        let avail = e.is_member_available(q, &i).unwrap_or(false);
                        Some((i, st, avail))
                    })
                    .collect();
                QueueReport {
                    queue: q.to_owned(),
                    waiting: e.waiting_callers(q).len(),
                    stats: e.queue_stats(q).cloned().unwrap_or_default(),
                    members,
                }
            })
            .collect();
        out.sort_by(|a, b| a.queue.cmp(&b.queue));
        out
    }

    // ------------------------------------------------------------------ plumbing

    /// Engine actions and reachability events until both are quiet.
    fn pump(&mut self, now: Instant) {
        loop {
            let mut progressed = false;
            while let Some(ev) = self.reach.poll_event() {
                progressed = true;
                self.on_reach_event(ev, now);
            }
            while let Some(a) = self.engine.poll_action() {
                progressed = true;
                self.on_action(a, now);
            }
            if !progressed {
                break;
            }
        }
    }

    fn emit(&mut self, o: Output) {
        self.out.push_back(o);
    }

    fn rand(&mut self) -> u64 {
        self.rng.next_u64()
    }

    fn emit_sip(&mut self, send: ToSend<Peer>) {
        self.emit(Output::Sip(send));
    }

    fn respond(&mut self, key: &TransactionKey, response: Response) {
        self.emit_sip(ToSend::Respond {
            key: key.clone(),
            response,
        });
    }

    fn reply(&mut self, key: &TransactionKey, req: &Request, code: u16) {
        let r = message::response_for(req, code, "");
        self.respond(key, r);
    }

    fn contact(&self) -> String {
        format!("<sip:acd@{}>", self.cfg.local)
    }

    fn peer(&self, addr: SocketAddr) -> Peer {
        Peer {
            addr,
            transport: transport::Transport::Udp,
            local: self.cfg.local,
        }
    }

    fn new_leg(&mut self) -> LegId {
        let l = LegId(self.next_leg);
        self.next_leg += 1;
        l
    }

    /// Where our requests leave from (`acd` identifiers, `sip_core::builder`).
    fn local(&self) -> Local {
        Local::udp(self.cfg.local, "acd")
    }

    fn new_branch(&mut self) -> String {
        let local = self.local();
        local.branch(&mut self.rng)
    }

    fn via(&self, branch: &str) -> String {
        self.local().via(branch)
    }

    /// Sends `req` (its top Via carries `branch`) in a new client transaction.
    fn send(&mut self, req: Request, branch: &str, dest: Peer) -> TransactionKey {
        let key = TransactionKey::client(branch, req.method);
        self.emit_sip(ToSend::Request {
            key: key.clone(),
            request: req,
            dest,
        });
        key
    }

    /// A request outside any dialog, built by the one request builder: `extra` fields after
    /// Contact. None when `uri` does not parse.
    #[allow(clippy::too_many_arguments)]
    fn out_of_dialog(
        &mut self,
        method: Method,
        uri: &str,
        from: &str,
        to: &str,
        branch: &str,
        extra: Vec<Header>,
    ) -> Option<Request> {
        let local = self.local();
        let tag = local.tag(&mut self.rng);
        let call_id = local.call_id(&mut self.rng);
        let uri = builder::parse_uri(uri).ok()?;
        let mut b = RequestBuilder::new(method, uri, local.via(branch))
            .from(from, Some(&tag))
            .to(to, None)
            .call_id(call_id)
            .contact(self.contact());
        for h in extra {
            b = b.header(h);
        }
        Some(b.build())
    }

    /// The INVITE that offers a caller to an agent or calls a caller back, and the branch of
    /// its top Via: our SDP offer on `local_rtp` (`codec` + telephone-event), the typed
    /// `X-CF-Offer` (`queue`, `ringinuse`, the give-up deadline, `linked` as the linked id when
    /// valid), signed for the fabric. None when `uri` does not parse.
    #[allow(clippy::too_many_arguments)]
    fn offer_invite(
        &mut self,
        uri: &str,
        from: &str,
        local_rtp: SocketAddr,
        codec: &str,
        queue: String,
        ringinuse: bool,
        linked: &str,
    ) -> Option<(Request, String)> {
        let session = self.rand() >> 1;
        let sdp_offer = sdp::offer(
            local_rtp.ip(),
            local_rtp.port(),
            &[codec, "telephone-event"],
            ("callfabric-acd", session, 1),
        );
        let deadline = (self.wall)() + self.cfg.offer_provisional_timeout;
        let x_offer = sip_core::offer::Offer {
            queue: Some(queue),
            ringinuse,
            deadline_ms: deadline
                .duration_since(SystemTime::UNIX_EPOCH)
                .ok()
                .and_then(|d| u64::try_from(d.as_millis()).ok()),
            linkedid: sip_core::offer::valid_id(linked).then(|| linked.to_owned()),
        };
        let branch = self.new_branch();
        let extra = vec![offer_header(&x_offer)];
        let to = format!("<{uri}>");
        let req = self.out_of_dialog(Method::Invite, uri, from, &to, &branch, extra)?;
        let body = sdp_offer.to_string().into_bytes();
        Some((
            self.sign(dialog::with_body(req, body, "application/sdp")),
            branch,
        ))
    }

    /// The wall clock in unix milliseconds.
    fn wall_ms(&self) -> u64 {
        let d = (self.wall)()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
    }

    /// Take part in a global order across ACD nodes as fabric member `eid`; a new caller
    /// waits `settle` before it may be offered (see [`Engine::set_fabric_eid`]).
    pub fn set_fabric_eid(&mut self, eid: Eid, settle: Duration) {
        self.engine.set_fabric_eid(eid, settle);
    }

    /// The next change of our waiting callers for the fabric.
    pub fn poll_waiting(&mut self) -> Option<crate::engine::WaitingChange> {
        self.engine.poll_waiting()
    }

    /// The callers waiting on the fabric now (every node's records; ours are ignored).
    pub fn remote_waiting(&mut self, records: &[statebus::WaitingCaller], now: Instant) {
        self.engine.set_remote_waiting(self.t(now), records);
        self.pump(now);
        let totals: Vec<(String, usize)> = self
            .engine
            .queue_names()
            .map(|q| (q.to_owned(), self.engine.global_waiting(q)))
            .collect();
        for (queue, total) in totals {
            if self.global_waiting.get(&queue) != Some(&total) {
                self.global_waiting.insert(queue.clone(), total);
                self.emit(Output::Event(NodeEvent::GlobalWaiting { queue, total }));
            }
        }
    }

    fn log(&mut self, mut ev: QueueLogEvent) {
        ev.time = (self.wall)()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        info!(queue_log = %ev.line());
        self.emit(Output::QueueLog(ev));
    }

    // ------------------------------------------------------------------ SIP events

    fn on_tx_event(&mut self, ev: tx::Event<Peer>, now: Instant) {
        self.shutdown_tx_event(&ev);
        match ev {
            tx::Event::Request {
                key,
                request,
                source,
                ..
            } => {
                let tagged = match transport::screen(&request, message::SUPPORTED_EXTENSIONS) {
                    transport::Screened::Reject(r) => return self.respond(&key, r),
                    transport::Screened::New => false,
                    transport::Screened::InDialog => true,
                };
                match (request.method, tagged) {
                    (Method::Invite, false) => self.on_caller(key, request, source, now),
                    (_, true) => self.on_in_dialog(key, request, now),
                    (Method::Options, false) => self.reply(&key, &request, 200),
                    // A CANCEL that matched no INVITE transaction (§9.2).
                    (Method::Cancel, false) => self.reply(&key, &request, 481),
                    _ => self.reply(&key, &request, 501),
                }
            }
            tx::Event::Cancel { key, request, .. } => {
                // Callers are answered at once: a CANCEL always meets our final response and
                // has no effect (§9.2); the caller ACKs and sends BYE.
                self.reply(&key, &request, 200);
            }
            tx::Event::Ack { request, .. } => {
                if let Some(Party::Caller(id)) = self.party_of(&request) {
                    if let Some(c) = self.callers.get_mut(&id) {
                        c.ok = None;
                    }
                }
            }
            tx::Event::Response { key, response } => {
                if !self.callback_response(&key, &response, now) {
                    self.on_agent_response(&key, response, now)
                }
            }
            tx::Event::Timeout { key } | tx::Event::TransportError { key } => {
                if self.callback_timeout(&key, now) {
                } else if let Some(offer) = self.by_client.remove(&key) {
                    self.agent_failed(offer, now);
                }
            }
            tx::Event::StrayResponse {
                response, source, ..
            } => {
                if let Some(id) = probe_of(&response, self.probe_salt) {
                    self.reach.answered(now, id, source.addr);
                } else {
                    self.late_answer(&response, now);
                }
            }
            tx::Event::Terminated { key } => {
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
        let place = match self.admit(&req, &source) {
            trust::Admission::Refused(code) => return self.reply(&key, &req, code),
            trust::Admission::Gateway => None,
            trust::Admission::Member(place) => place,
        };
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
        let from_user_kept = from_user.clone();
        let confirm = match self.feature_code(&number, &from_user, now) {
            Feature::None => None,
            Feature::Refused(code) => return self.reply(&key, &req, code),
            Feature::Done(prompt) => Some(prompt),
        };
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
        let leg = self.new_leg();
        let Some(local_rtp) = self.media.open(leg) else {
            warn!("no media port for a caller");
            return self.reply(&key, &req, 503);
        };
        let session = self.rand() >> 1;
        let Some(answer) = sdp::answer(
            &offer,
            local_rtp.ip(),
            &[local_rtp.port()],
            &["PCMA", "PCMU", "telephone-event"],
            ("callfabric-acd", session, 1),
        ) else {
            self.media.close(leg);
            return self.reply(&key, &req, 488);
        };
        if let Some(rtp) = offer.rtp_endpoint(0) {
            self.media.set_remote(leg, rtp, offer.rtcp_endpoint(0));
        }
        let n = self.next_id;
        self.next_id += 1;
        // The caller's id in the queue (queue_log's callid) is the call's linked id when its
        // gateway sent one (X-CF-Linkedid), so its queue_log lines and CDRs join.
        let caller_id = sip_core::offer::id_header(&req.headers, sip_core::offer::LINKED_HEADER)
            .filter(|l| !self.callers.values().any(|c| c.id == *l))
            .unwrap_or_else(|| format!("{}-{n}", self.cfg.caller_prefix));
        if confirm.is_none() {
            let mut join = Join::new(caller_id.clone(), queue.clone());
            join.caller_number = from_user;
            // The caller's place in the global order across ACD nodes (`engine/global.rs`):
            // now, or, for a caller moved off a dead node (signed `X-CF-Join`), the original
            // one, here and in the global order.
            join.place = match place {
                Some(p) => {
                    info!(caller = %caller_id, %queue, joined_ms = p.joined_ms, priority = p.priority, "moved caller queued at their original place");
                    Place {
                        priority: p.priority,
                        joined_at: Some(self.joined_at(p, now)),
                        joined_ms: Some(p.joined_ms),
                    }
                }
                None => Place {
                    joined_ms: Some(self.wall_ms()),
                    ..Place::default()
                },
            };
            if let Err(e) = self.engine.join(self.t(now), join) {
                info!(%queue, error = %e, "caller not queued");
                self.media.close(leg);
                let code = match e {
                    EngineError::QueueFull(_) => 486,
                    _ => 480,
                };
                return self.reply(&key, &req, code);
            }
            if let Some(p) = place {
                self.log_moved(&caller_id, &queue, p);
            }
        }
        let local = self.local();
        let tag = local.tag(&mut self.rng);
        let Ok(d) = Dialog::uas(&req, &tag, &self.contact()) else {
            // Not queued yet unless a queue call: take it back out.
            if confirm.is_none() {
                let _ = self.engine.leave(self.t(now), &caller_id);
            }
            self.media.close(leg);
            return self.reply(&key, &req, 400);
        };
        let mut ok = message::response_with_tag(&req, 200, "", &tag);
        ok.headers
            .push(Header::Contact(rsip::headers::Contact::new(self.contact())));
        let ok = dialog::response_with_body(ok, answer.to_string().into_bytes(), "application/sdp");
        self.by_dialog
            .insert((d.call_id.clone(), d.local_tag.clone()), Party::Caller(n));
        self.by_leg.insert(leg, n);
        // Music on hold, in the codec we answered with.
        let codec = answer
            .media()
            .first()
            .and_then(|m| m.codecs().into_iter().next())
            .and_then(|c| Codec::from_payload_type(c.payload_type))
            .unwrap_or(Codec::Pcmu);
        self.emit(Output::Music { leg, codec });
        if confirm.is_none() {
            // A waiting caller may press a key (RFC 4733) to be called back.
            let events = answer.media().first().and_then(|m| {
                m.codecs()
                    .into_iter()
                    .find(|c| c.name.eq_ignore_ascii_case("telephone-event"))
            });
            if let Some(ev) = events {
                self.media.watch_dtmf(leg, ev.payload_type);
            }
        }
        let mut hangup_at = None;
        if let Some(prompt) = &confirm {
            self.emit(Output::Announce {
                leg,
                prompts: vec![prompt.clone(), "beep".into()],
            });
            hangup_at = Some(now + CONFIRM_MAX);
        } else {
            info!(caller = %caller_id, %queue, "caller queued");
        }
        self.respond(&key, ok.clone());
        let next_announce = self
            .announce_every(&queue)
            .filter(|_| confirm.is_none())
            .map(|f| now + f);
        let usage = UasInvite::answered(ok, &self.cfg.timers, now);
        self.callers.insert(
            n,
            CallerCall {
                id: caller_id,
                invite_key: key.clone(),
                invite: req,
                peer: source,
                dialog: d,
                leg,
                sdp: answer,
                next_announce,
                hangup_at,
                queue,
                ok: Some(OkRetx { key, usage }),
                connected: None,
                from: from_user_kept,
                since: now,
                callback: None,
            },
        );
    }

    fn on_in_dialog(&mut self, key: TransactionKey, req: Request, now: Instant) {
        let Some(party) = self.party_of(&req) else {
            if req.method != Method::Ack {
                self.reply(&key, &req, 481);
            }
            return;
        };
        match (req.method, party) {
            (Method::Bye, Party::Caller(id)) => {
                self.reply(&key, &req, 200);
                self.caller_gone(id, false, now);
            }
            (Method::Bye, Party::Agent(offer)) => {
                self.reply(&key, &req, 200);
                self.agent_hung_up(offer, now);
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

    fn on_agent_response(&mut self, key: &TransactionKey, resp: Response, now: Instant) {
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
        self.reach.heard(now, gw);
        let Some(a) = self.agents.get_mut(&id) else {
            return;
        };
        if code < 200 {
            if code > 100 && !a.provisional {
                a.provisional = true;
                if a.cancelled {
                    let (key, dest) = (a.key.clone(), a.peer.clone());
                    self.emit_sip(ToSend::Cancel { key, dest });
                }
            }
            return;
        }
        if code < 300 {
            // ACK every 2xx (a retransmission too).
            if a.dialog.is_none() {
                a.dialog = Dialog::uac(&a.invite, &resp).ok();
            }
            let branch = self.new_branch();
            let via = self.via(&branch);
            let Some(a) = self.agents.get_mut(&id) else {
                return;
            };
            if let Some(d) = &a.dialog {
                let ack = a.uac.ack(d, || via);
                let dest = a.peer.clone();
                self.emit_sip(ToSend::Stateless {
                    message: ack.into(),
                    dest,
                });
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
                return self.hangup_agent(id);
            }
            let leg = a.leg;
            if let Ok(answer) = SessionDescription::parse_bytes(&resp.body) {
                if let Some(rtp) = answer.rtp_endpoint(0) {
                    self.media.set_remote(leg, rtp, answer.rtcp_endpoint(0));
                }
            }
            if let Some(channel) =
                sip_core::offer::id_header(&resp.headers, sip_core::offer::UNIQUEID_HEADER)
            {
                self.engine.set_bridged_channel(id, &channel);
            }
            let t = self.t(now);
            if let Err(e) = self.engine.offer_outcome(t, id, OfferOutcome::Answered) {
                warn!(error = %e, "the engine no longer wants this agent");
                self.hangup_agent(id);
            }
            return;
        }
        // Refused (486 from the arbiter, 480, 404 …) or 487 after our CANCEL.
        let cancelled = a.cancelled;
        self.by_client.remove(key);
        if let Some(a) = self.agents.remove(&id) {
            self.media.close(a.leg);
        }
        if !cancelled {
            // Refused by the gateway itself (the phone never rang) or challenged (we are no
            // trunk there): nothing to log, as app_queue when ast_request/ast_call fail. A phone
            // that refused or a call that failed after ringing: RINGNOANSWER, as app_queue's rna().
            let not_rung = matches!(code, 401 | 407)
                || resp.headers.iter().any(|h| {
                    matches!(h, Header::Other(n, _)
                        if n.trim().eq_ignore_ascii_case(sip_core::offer::REFUSED_HEADER))
                });
            // The gateway's own 486: its arbiter, the agent in a call already (ringinuse=no).
            let outcome = if not_rung && code == 486 {
                info!(
                    code,
                    "offer refused before ringing the agent: in a call already"
                );
                OfferOutcome::Taken
            } else if not_rung {
                info!(code, "offer refused before ringing the agent");
                OfferOutcome::Refused
            } else if matches!(code, 404 | 408 | 410 | 480 | 484 | 500..=599) {
                // Asterisk's CONGESTION (autopauseunavail), not BUSY (autopausebusy).
                info!(code, "agent's phone could not take the offer");
                OfferOutcome::Unavailable
            } else {
                info!(code, "agent refused the offer");
                OfferOutcome::Busy
            };
            let _ = self.engine.offer_outcome(self.t(now), id, outcome);
        }
    }

    fn agent_failed(&mut self, id: OfferId, now: Instant) {
        if let Some(a) = self.agents.remove(&id) {
            self.media.close(a.leg);
            if let Some(d) = &a.dialog {
                self.by_dialog
                    .remove(&(d.call_id.clone(), d.local_tag.clone()));
            }
            if a.cancelled && !a.answered {
                self.abandoned.remember(now, a.invite, a.peer);
            } else if !a.answered {
                let _ = self
                    .engine
                    .offer_outcome(self.t(now), id, OfferOutcome::Busy);
            }
        }
    }

    // ------------------------------------------------------------------ engine actions

    fn on_action(&mut self, a: Action, now: Instant) {
        match a {
            Action::Offer {
                id,
                caller,
                queue,
                interface,
                ..
            } => self.offer(id, &caller, &queue, &interface, now),
            Action::CancelOffer { id, .. } => self.cancel_offer(id, now),
            Action::Connect {
                caller, interface, ..
            } => self.connect(&caller, &interface),
            Action::CallerRemoved { caller, reason, .. } => {
                info!(%caller, ?reason, "caller removed from the queue");
                if let Some(id) = self.caller_number(&caller) {
                    self.bye_caller(id);
                    self.forget_caller(id);
                }
            }
            Action::QueueLog(ev) => self.log(ev),
        }
    }

    fn caller_number(&self, caller: &str) -> Option<u64> {
        self.callers
            .iter()
            .find(|(_, c)| c.id == caller)
            .map(|(id, _)| *id)
    }

    /// The offer could not be placed (no gateway, no media port, unreachable, not built):
    /// app_queue logs nothing when `ast_request`/`ast_call` fail; the next member is tried.
    fn not_placed(&mut self, id: OfferId, now: Instant) {
        let _ = self
            .engine
            .offer_outcome(self.t(now), id, OfferOutcome::Refused);
    }

    fn offer(&mut self, id: OfferId, caller: &str, queue: &str, interface: &str, now: Instant) {
        if !self.engine.is_reachable(interface) {
            // The engine never offers an unreachable member; a race with a change in flight.
            return self.not_placed(id, now);
        }
        let Some(n) = self.caller_number(caller) else {
            return self.not_placed(id, now);
        };
        let Some(gw) = self.gateway_for(interface, &self.fabric.sip_members()) else {
            warn!(%interface, "no gateway for the member");
            return self.not_placed(id, now);
        };
        let user = (interface.strip_prefix(self.cfg.device_prefix.as_str()))
            .or_else(|| interface.rsplit('/').next())
            .unwrap_or(interface)
            .to_owned();
        let leg = self.new_leg();
        // On the caller's relay thread: the two legs are bridged when the agent answers.
        let opened = match self.callers.get(&n).map(|c| c.leg) {
            Some(caller_leg) => self.media.open_beside(leg, caller_leg),
            None => self.media.open(leg),
        };
        let Some(local_rtp) = opened else {
            warn!("no media port for an agent");
            return self.not_placed(id, now);
        };
        let c = &self.callers[&n];
        // The relay does not transcode: offer the agent only the codec the caller's leg uses.
        let codec = c
            .sdp
            .media()
            .first()
            .and_then(|m| m.codecs().into_iter().next())
            .map(|c| c.name.to_ascii_uppercase())
            .unwrap_or_else(|| "PCMU".into());
        let from = message::parse_addresses(c.dialog.remote_header(), false)
            .and_then(|l| l.into_iter().next())
            .map(|a| format!("<{}>", a.uri))
            .unwrap_or_else(|| format!("<sip:acd@{}>", self.cfg.local));
        let uri = format!("sip:{user}@{gw}");
        let ringinuse = self.ringinuse(queue, interface);
        let Some((req, branch)) = self.offer_invite(
            &uri,
            &from,
            local_rtp,
            &codec,
            queue.to_owned(),
            ringinuse,
            caller,
        ) else {
            warn!(%interface, "cannot build the offer INVITE");
            self.media.close(leg);
            return self.not_placed(id, now);
        };
        let peer = self.peer(gw);
        info!(%interface, gateway = %gw, %queue, "offering a caller");
        let key = self.send(req.clone(), &branch, peer.clone());
        self.emit(Output::Event(NodeEvent::Offered {
            caller: caller.to_owned(),
            interface: interface.to_owned(),
            gateway: gw,
        }));
        self.by_client.insert(key.clone(), id);
        self.agents.insert(
            id,
            AgentCall {
                caller: n,
                interface: interface.to_owned(),
                uac: UacInvite::new(&req),
                invite: req,
                key,
                peer,
                dialog: None,
                leg,
                heard: false,
                provisional: false,
                cancelled: false,
                answered: false,
                give_up: now + self.cfg.offer_provisional_timeout,
                forget_at: None,
            },
        );
    }

    fn cancel_offer(&mut self, id: OfferId, now: Instant) {
        let Some(a) = self.agents.get_mut(&id) else {
            return;
        };
        if a.answered {
            return self.hangup_agent(id);
        }
        a.cancelled = true;
        a.forget_at = Some(now + self.cfg.timers.t1_x64());
        let key = a.key.clone();
        if a.provisional {
            let dest = a.peer.clone();
            self.emit_sip(ToSend::Cancel { key, dest });
        } else {
            // §9.1: no CANCEL before a provisional response. Stop retransmitting so the offer
            // cannot reach the agent later; a late 1xx is CANCELled, a late 2xx ACKed + BYE.
            self.emit(Output::Abandon { key });
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
        c.connected = Some(offer);
        if c.callback.is_some() {
            // Called back now that the agent answered (`callback.rs`).
            if let Some(agent_leg) = self.agents.get(&offer).map(|a| a.leg) {
                self.connect_callback(n, offer, agent_leg);
            }
            return;
        }
        let leg = c.leg;
        self.emit(Output::StopMedia { leg });
        if let Some(a) = self.agents.get(&offer) {
            if !self.media.bridge(leg, a.leg) {
                warn!("cannot bridge caller and agent");
            }
        }
        info!(%caller, %interface, "caller connected to agent");
    }

    // ------------------------------------------------------------------ hang-ups

    /// The caller left (BYE, CANCEL or no ACK): tell the engine, end its agent call if any.
    fn caller_gone(&mut self, id: u64, cancelled: bool, now: Instant) {
        let Some(c) = self.forget_caller(id) else {
            return;
        };
        if cancelled {
            let r = message::response_with_tag(&c.invite, 487, "", &c.dialog.local_tag);
            self.respond(&c.invite_key, r);
        }
        let t = self.t(now);
        match c.connected {
            Some(offer) => {
                let _ = self.engine.call_completed(t, &c.id, CompletedBy::Caller);
                self.hangup_agent(offer);
            }
            None => {
                let _ = self.engine.leave(t, &c.id);
            }
        }
    }

    /// Removes a caller, closing its leg.
    fn forget_caller(&mut self, id: u64) -> Option<CallerCall> {
        let c = self.callers.remove(&id)?;
        self.media.close(c.leg);
        self.by_leg.remove(&c.leg);
        self.by_dialog
            .remove(&(c.dialog.call_id.clone(), c.dialog.local_tag.clone()));
        Some(c)
    }

    /// BYE to the agent of offer `id` and forget it.
    fn hangup_agent(&mut self, id: OfferId) {
        let Some(a) = self.agents.remove(&id) else {
            return;
        };
        self.by_client.remove(&a.key);
        self.media.close(a.leg);
        if let Some(mut d) = a.dialog {
            let branch = self.new_branch();
            let bye = d.request(Method::Bye, &self.via(&branch));
            self.by_dialog
                .remove(&(d.call_id.clone(), d.local_tag.clone()));
            self.send(bye, &branch, a.peer);
        }
    }

    fn agent_hung_up(&mut self, id: OfferId, now: Instant) {
        let Some(a) = self.agents.remove(&id) else {
            return;
        };
        self.by_client.remove(&a.key);
        self.media.close(a.leg);
        if let Some(d) = &a.dialog {
            self.by_dialog
                .remove(&(d.call_id.clone(), d.local_tag.clone()));
        }
        let caller = a.caller;
        self.cancel_callback(caller);
        if let Some(cid) = self.callers.get(&caller).map(|c| c.id.clone()) {
            let _ = self
                .engine
                .call_completed(self.t(now), &cid, CompletedBy::Agent);
        }
        self.bye_caller(caller);
        self.forget_caller(caller);
    }

    fn bye_caller(&mut self, n: u64) {
        let branch = self.new_branch();
        let via = self.via(&branch);
        let Some(c) = self.callers.get_mut(&n) else {
            return;
        };
        let bye = c.dialog.request(Method::Bye, &via);
        let peer = c.peer.clone();
        self.send(bye, &branch, peer);
    }

    // ------------------------------------------------------------------ timers

    fn retransmit_oks(&mut self, now: Instant) {
        let mut resend = Vec::new();
        let mut dead = Vec::new();
        for (id, c) in &mut self.callers {
            let Some(ok) = c.ok.as_mut() else { continue };
            match ok.usage.handle_timeout(now) {
                Some(UasEvent::AckTimeout) => dead.push(*id),
                Some(UasEvent::Retransmit(r)) => resend.push((ok.key.clone(), r)),
                None => {}
            }
        }
        for (k, r) in resend {
            self.respond(&k, r);
        }
        for id in dead {
            warn!("caller never ACKed our 200: hanging up");
            self.bye_caller(id);
            self.caller_gone(id, false, now);
        }
    }

    /// Feature-code calls whose confirmation played.
    fn hangups_due(&mut self, now: Instant) {
        for id in sip_core::ua::due(&self.callers, now, |c| c.hangup_at) {
            self.bye_caller(id);
            self.forget_caller(id);
        }
    }

    /// Position (and hold-time) announcements for waiting callers whose turn it is.
    fn announce_due(&mut self, now: Instant) {
        let due: Vec<u64> = self
            .callers
            .iter()
            .filter(|(_, c)| c.connected.is_none() && c.next_announce.is_some_and(|t| now >= t))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let c = &self.callers[&id];
            let (cid, queue, leg) = (c.id.clone(), c.queue.clone(), c.leg);
            let every = self.announce_every(&queue);
            if let Some(c) = self.callers.get_mut(&id) {
                c.next_announce = every.map(|e| now + e);
            }
            // The place in the global order: callers waiting at other nodes count.
            let Some(pos) = self.engine.global_position(&queue, &cid) else {
                continue;
            };
            let holdtime = (self.cfg.announce)
                .holdtime(self.queue_cfg(&queue))
                .then(|| self.engine.estimated_wait(&queue, &cid).unwrap_or(0));
            let prompts = announce::position(pos, holdtime);
            debug!(caller = %cid, pos, "announcing position");
            self.emit(Output::Event(NodeEvent::Announced {
                caller: cid,
                prompts: prompts.clone(),
            }));
            self.emit(Output::Announce { leg, prompts });
        }
    }

    /// Offers without any provisional response within the bound: given up (never
    /// retransmitted again), the next member tried.
    fn offers_unanswered(&mut self, now: Instant) {
        let late: Vec<OfferId> = self
            .agents
            .iter()
            .filter(|(_, a)| !a.heard && !a.cancelled && !a.answered && now >= a.give_up)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            let Some(a) = self.agents.get_mut(&id) else {
                continue;
            };
            a.cancelled = true;
            a.forget_at = Some(now + self.cfg.timers.t1_x64());
            let (key, gw, interface) = (a.key.clone(), a.peer.addr, a.interface.clone());
            self.emit(Output::Abandon { key });
            warn!(%interface, gateway = %gw, "no provisional response to the offer: next member");
            self.emit(Output::Event(NodeEvent::OfferUnanswered {
                interface,
                gateway: gw,
            }));
            let _ = self
                .engine
                .offer_outcome(self.t(now), id, OfferOutcome::Busy);
        }
    }

    /// Cancelled offers whose INVITE never got a final response: their transaction and leg
    /// are dropped (a gateway that never answers cannot make us keep them).
    fn forget_cancelled(&mut self, now: Instant) {
        let stale: Vec<OfferId> = self
            .agents
            .iter()
            .filter(|(_, a)| !a.answered && a.forget_at.is_some_and(|t| now >= t))
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            if let Some(a) = self.agents.remove(&id) {
                debug!(interface = %a.interface, "cancelled offer never ended: forgotten");
                self.by_client.remove(&a.key);
                self.media.close(a.leg);
                self.emit(Output::Terminate { key: a.key });
                self.abandoned.remember(now, a.invite, a.peer);
            }
        }
    }

    // ------------------------------------------------------------------ configuration

    fn queue_cfg(&self, queue: &str) -> Option<&crate::engine::QueueConfig> {
        self.cfg.engine.queues.iter().find(|q| q.name == queue)
    }

    /// How often callers of `queue` hear their position ([`Announcements::every`]).
    fn announce_every(&self, queue: &str) -> Option<Duration> {
        self.cfg.announce.every(self.queue_cfg(queue))
    }

    fn ringinuse(&self, queue: &str, interface: &str) -> bool {
        let Some(q) = self.queue_cfg(queue) else {
            return true;
        };
        q.members
            .iter()
            .find(|m| m.interface.eq_ignore_ascii_case(interface))
            .and_then(|m| m.ringinuse)
            .unwrap_or(q.ringinuse)
    }

    /// `<login|logout code><queue number>` from a phone: add or remove the calling device as
    /// a dynamic member (hot-desking).
    fn feature_code(&mut self, number: &str, from_user: &str, now: Instant) -> Feature {
        let Some((login, rest)) = self.cfg.hot_desk.parse(number) else {
            return self.pause_code(number, from_user, now);
        };
        let Some(queue) = self.cfg.numbers.get(rest).cloned() else {
            return Feature::Refused(404);
        };
        if from_user.is_empty() {
            return Feature::Refused(403);
        }
        let iface = format!("{}{from_user}", self.cfg.device_prefix);
        let t = self.t(now);
        let result = if login {
            let m = crate::engine::MemberConfig::new(iface.clone());
            match self.engine.add_member(t, &queue, m) {
                Ok(()) | Err(EngineError::AlreadyMember { .. }) => Ok("agent-loginok"),
                Err(e) => Err(e),
            }
        } else {
            (self.engine.remove_member(t, &queue, &iface)).map(|()| "agent-loggedoff")
        };
        match result {
            Ok(prompt) => {
                info!(%iface, %queue, login, "hot-desking");
                Feature::Done(prompt.to_owned())
            }
            Err(e) => {
                info!(%iface, %queue, error = %e, "feature code refused");
                Feature::Refused(403)
            }
        }
    }

    // ------------------------------------------------------------------ gateways

    /// The gateway for a member device: the live fabric member publishing its state (and
    /// announcing a SIP address), else the first configured gateway.
    fn gateway_for(
        &self,
        interface: &str,
        members: &[(Eid, SocketAddr, bool)],
    ) -> Option<SocketAddr> {
        for (eid, state) in self.fabric.publishers(interface) {
            if matches!(state, DeviceState::Unavailable | DeviceState::Invalid) {
                continue;
            }
            if let Some((_, addr, _)) = members.iter().find(|(e, _, alive)| *e == eid && *alive) {
                return Some(*addr);
            }
        }
        self.cfg.gateways.first().copied()
    }

    /// The gateways to keep alive: the configured ones and every fabric member announcing a
    /// SIP address.
    fn refresh_targets(&mut self, now: Instant) {
        self.next_targets = now + TARGETS_EVERY;
        let mut targets = self.cfg.gateways.clone();
        for (_, a, _) in self.fabric.sip_members() {
            if a != self.cfg.local {
                targets.push(a);
            }
        }
        self.reach.set_targets(now, targets);
        self.sync_reachability(None, now);
    }

    /// Tells the engine which members sit behind an unreachable gateway: all members, or
    /// those whose interface is `key`.
    fn sync_reachability(&mut self, key: Option<&str>, now: Instant) {
        let sip = self.fabric.sip_members();
        let mut members: Vec<String> = self
            .engine
            .queue_names()
            .flat_map(|q| self.engine.member_interfaces(q))
            .filter(|i| key.is_none_or(|k| i.eq_ignore_ascii_case(k)))
            .collect();
        members.sort_unstable();
        members.dedup();
        let reach: BTreeMap<String, bool> = members
            .into_iter()
            .map(|i| {
                let r = self
                    .gateway_for(&i, &sip)
                    .is_none_or(|gw| self.reach.is_reachable(gw));
                (i, r)
            })
            .collect();
        let t = self.t(now);
        for (iface, reachable) in reach {
            self.engine.set_reachable(t, &iface, reachable);
        }
    }

    fn on_reach_event(&mut self, ev: ReachEvent, now: Instant) {
        match ev {
            ReachEvent::Probe { id, to } => {
                let branch = format!("z9hG4bKacdp{id:x}.{:x}", self.probe_salt);
                let from = format!("<sip:acd@{}>", self.cfg.local);
                let uri = format!("sip:{to}");
                let Some(req) = self.out_of_dialog(
                    Method::Options,
                    &uri,
                    &from,
                    &format!("<{uri}>"),
                    &branch,
                    Vec::new(),
                ) else {
                    warn!(gateway = %to, "cannot build the keep-alive OPTIONS");
                    return;
                };
                // Sent once without a transaction (the next probe is its retransmission);
                // its answer comes back as a stray response.
                let dest = self.peer(to);
                self.emit_sip(ToSend::Stateless {
                    message: req.into(),
                    dest,
                });
            }
            ReachEvent::Changed { addr, reachable } => {
                if reachable {
                    info!(gateway = %addr, "gateway reachable again");
                } else {
                    warn!(gateway = %addr, srtt = ?self.reach.srtt(addr),
                        silence = ?self.reach.silence_bound(addr),
                        "gateway unreachable: its agents are skipped");
                }
                self.emit(Output::Event(NodeEvent::Reach {
                    gateway: addr,
                    reachable,
                }));
                self.sync_reachability(None, now);
            }
        }
    }
}

/// The keep-alive probe id a response answers, if its branch carries our `salt`.
fn probe_of(response: &Response, salt: u64) -> Option<u64> {
    let branch = response.headers.iter().find_map(|h| match h {
        Header::Via(v) => v
            .value()
            .split(';')
            .find_map(|p| p.trim().strip_prefix("branch=").map(str::to_owned)),
        _ => None,
    })?;
    let (id, s) = branch.strip_prefix("z9hG4bKacdp")?.split_once('.')?;
    (u64::from_str_radix(s, 16).ok()? == salt)
        .then(|| u64::from_str_radix(id, 16).ok())
        .flatten()
}

enum Feature {
    /// Not a feature code.
    None,
    /// Refused with this status.
    Refused(u16),
    /// Done: confirm with this prompt.
    Done(String),
}

fn header<T>(req: &Request, f: impl Fn(&Header) -> Option<T>) -> Option<T> {
    req.headers.iter().find_map(f)
}

fn to_tag(req: &Request) -> Option<String> {
    tx::parse::field_tag(&req.headers, tx::parse::Field::To)
        .ok()
        .flatten()
}

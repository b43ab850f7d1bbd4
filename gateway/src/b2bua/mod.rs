//! The back-to-back user agent, sans-IO: every call is two dialogs — leg A with the caller
//! (we are its UAS) and leg B with the callee (we are its UAC) — with the media anchored on
//! the relay in between.
//!
//! The gateway's core feeds it what the transaction layer reports (new INVITEs with their
//! resolved [`Target`], responses, CANCEL, ACK, in-dialog requests, timeouts) and the time;
//! it answers with [`Action`]s (send a request in a new client transaction, respond through a
//! server transaction, send an ACK, cancel, device changed) and asks the [`MediaControl`] it is
//! given for relay ports. No sockets, no tokio, no clock: its timers (2xx retransmission until
//! the ACK, the ACK deadline, the media-timeout sweep, Timer C and the ring limit of `ring.rs`)
//! are tested in virtual time.
//!
//! What it does (RFC 3261 §13–15, RFC 3264, RFC 3311): 100/180/183/200/ACK relayed with each
//! side's own tags, Call-ID and CSeq; early media (183 with SDP); CANCEL before the answer
//! (487 to the caller, CANCEL to the callee once it sent a provisional response); BYE from
//! either side; callee failures mapped to the caller (486, 480, 404, 487, 408 on no answer);
//! re-INVITE and UPDATE relayed with the SDP anchored, hold/unhold (sendonly, inactive,
//! `c=0.0.0.0`) turning the holding device ONHOLD; 491 on glare; a call whose ACK never comes
//! is torn down after 64·T1; a call with no RTP for the media timeout is hung up on both
//! sides; a per-device call limit (486 when reached, the device reads BUSY).
//!
//! Late offer (an INVITE without SDP), 100rel/PRACK (`reliable.rs`) and session timers
//! (`timers.rs`) on both legs: see those files. Every INVITE to a callee is bounded in time by
//! Timer C, a call to a device optionally by a ring limit (`ring.rs`). A call to a device rings all its reachable
//! contacts in parallel ([`fork`]).
//!
//! Not yet: redirects (3xx become 480).

pub mod devstate;
mod divert;
mod due;
pub mod fork;
pub mod hold;
mod info;
mod linked;
mod moved;
mod reliable;
mod ring;
mod shutdown;
mod srtp;
pub mod timers;

use linked::{linked_of, offer_of};

pub use divert::Divert;
pub use fork::ForkTarget;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rsip::headers::{Allow, Contact, Supported, UntypedHeader};
use rsip::{Header, Method, Request, Response};

use crate::registrar::client::{self, ClientCredentials};
use crate::sdp::SessionDescription;
use crate::sip::builder::{self, Local, RequestBuilder, Resend};
use crate::sip::dialog::{self, Dialog, DialogState};
use crate::sip::message::{self, response_with_tag, SipMessage};
use crate::sip::transaction::parse::{self as tparse, Field};
use crate::sip::transaction::{self as tx, TransactionKey};
use crate::sip::ua::{UacInvite, UasEvent, UasInvite};
use crate::transport::Peer;
use devstate::{Channel, DeviceCalls};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

/// A call's number, unique in this gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallId(pub u64);

/// Leg A (the caller's side) or leg B (the callee's side).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The caller's leg: we are its UAS.
    A,
    /// The callee's leg: we are its UAC.
    B,
}

impl Side {
    fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }
}

/// The relay ports of a call: what each side is told to send its RTP to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaPorts {
    /// The address in the SDP we send to leg A.
    pub a: SocketAddr,
    /// The address in the SDP we send to leg B.
    pub b: SocketAddr,
}

/// The media relay as the B2BUA sees it (implemented on `media::MediaRelay` by the gateway and
/// by a fake in tests).
pub trait MediaControl {
    /// Opens the relay legs of a new call; `None` when no ports are left.
    fn open(&mut self, call: CallId) -> Option<MediaPorts>;
    /// Where side `side`'s phone said (in its SDP) it receives RTP and RTCP.
    fn set_remote(&mut self, call: CallId, side: Side, rtp: SocketAddr, rtcp: Option<SocketAddr>);
    /// Starts relaying between the legs (after the first SDP answer).
    fn bridge(&mut self, call: CallId);
    /// Closes the legs.
    fn close(&mut self, call: CallId);
    /// Time since the last RTP packet from either side (since `open` if none came).
    fn idle(&self, call: CallId, now: Instant) -> Option<Duration>;
    /// Side `holder` has put the call on hold (`true`) or resumed it (the other side hears
    /// music on hold meanwhile). Default: nothing.
    fn hold(&mut self, call: CallId, holder: Side, holding: bool) {
        let _ = (call, holder, holding);
    }
    /// The SDES key side `side`'s phone receives SRTP with, for audio the gateway injects into
    /// its leg (`srtp.rs`); `None`: plain RTP. Default: nothing.
    fn srtp(&mut self, call: CallId, side: Side, key: Option<crate::media::srtp::SdesKey>) {
        let _ = (call, side, key);
    }
}

/// Where an INVITE goes, as resolved by the gateway (dial plan, registrar, trunks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A registered device.
    Device {
        /// Device-state key of the callee (`PJSIP/1001`).
        device: String,
        /// Request-URI for leg B (the contact) and where to send it (its flow).
        contact: String,
        /// The flow to the phone.
        dest: Peer,
        /// Call limit of the callee (0: none).
        limit: usize,
        /// The device's further reachable contacts, rung in parallel (forking).
        forks: Vec<ForkTarget>,
    },
    /// A peer reached by URI (a trunk): `uri` sent to `dest`.
    Peer {
        /// Request-URI for leg B.
        uri: String,
        /// Where to send it.
        dest: Peer,
        /// Our account there: a 401/407 to the INVITE is answered once with these.
        credentials: Option<ClientCredentials>,
        /// Further targets of the same trunk (RFC 3263 order): the INVITE goes to the next
        /// one when the current one times out or answers 503 before any provisional.
        fallbacks: Vec<Peer>,
    },
    /// Refuse with this status.
    Reject(u16),
}

/// The caller, as identified by the gateway (a device that authenticated, or a trunk).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Caller {
    /// Device-state key of the calling device, if it is one of ours.
    pub device: Option<String>,
    /// Call limit of the calling device (0: none).
    pub limit: usize,
}

/// Who calls and where the call goes, as the gateway resolved it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    /// The caller.
    pub caller: Caller,
    /// The destination.
    pub target: Target,
}

/// What the gateway must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start a client transaction for `request` to `dest` (its key is `key`).
    Request {
        /// The transaction key the request's branch gives.
        key: TransactionKey,
        /// The request.
        request: Request,
        /// Where to.
        dest: Peer,
    },
    /// Respond through server transaction `key`.
    Respond {
        /// The server transaction.
        key: TransactionKey,
        /// The response.
        response: Response,
    },
    /// Send outside any transaction (the ACK for a 2xx).
    Stateless {
        /// The message.
        message: SipMessage,
        /// Where to.
        dest: Peer,
    },
    /// Cancel the pending client INVITE transaction `key` (build the CANCEL from it).
    Cancel {
        /// The INVITE client transaction.
        key: TransactionKey,
        /// Where it went.
        dest: Peer,
    },
    /// A device's call-derived state may have changed; read it with
    /// [`B2bua::device_state`].
    DeviceChanged(String),
    /// Give up the INVITE client transaction `key` while it has no provisional response:
    /// no more retransmissions; Timer B still ends it and reports late responses
    /// (`TransactionLayer::abandon`; Timer C, `ring.rs`).
    Abandon {
        /// The INVITE client transaction.
        key: TransactionKey,
    },
    /// Destroy the INVITE client transaction `key` at once: it got no final response within
    /// 64·T1 of our CANCEL (RFC 3261 §9.1; `TransactionLayer::terminate`).
    Terminate {
        /// The INVITE client transaction.
        key: TransactionKey,
    },
    /// A call ended (for logs / CDRs).
    CallEnded {
        /// The call.
        call: CallId,
        /// Why, e.g. `bye-a`, `cancel`, `486`, `media-timeout`, `no-ack`.
        reason: String,
        /// Who called whom, and for how long.
        record: CallRecord,
    },
    /// A trunk target failed an INVITE (timeout or 503 before any provisional): the gateway
    /// tries it last for a while (RFC 3263 §4.3).
    TargetFailed(SocketAddr),
    /// An INVITE was refused before any call was set up (unknown number, callee unreachable,
    /// a device at its call limit, …): no call number, but a CDR all the same.
    CallRefused {
        /// The final response sent, e.g. 404, 480, 486.
        code: u16,
        /// Who called whom (zero duration, never answered).
        record: CallRecord,
    },
}

/// What a CDR needs to know about a call.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CallRecord {
    /// The call's uniqueid (`Config::uniqueid_prefix` + call number; empty when refused).
    pub uniqueid: String,
    /// Its linked id (Asterisk's `linkedid`): the one the INVITE brought (an ACD's offer, a
    /// gateway's `X-CF-Linkedid`), else its own uniqueid.
    pub linkedid: String,
    /// The caller's user part (From).
    pub caller: String,
    /// The number dialled (Request-URI user of the INVITE).
    pub dialled: String,
    /// Calling device, if one of ours.
    pub caller_device: Option<String>,
    /// Called device, if one of ours.
    pub callee_device: Option<String>,
    /// The identity the caller presented: its first P-Asserted-Identity, else its From user.
    pub presented: String,
    /// From the INVITE to the end.
    pub duration: Duration,
    /// From the answer to the end (None: never answered).
    pub billsec: Option<Duration>,
}

/// The caller's user part: the user of the request's From URI ("" when it has none).
pub fn caller_user(req: &Request) -> String {
    tparse::value(&req.headers, Field::From)
        .ok()
        .and_then(|v| message::parse_addresses(v, false))
        .and_then(|l| l.into_iter().next())
        .and_then(|a| message::parse_uri(&a.uri))
        .and_then(|u| u.auth.map(|a| a.user))
        .unwrap_or_default()
}

/// The number dialled: the user of the Request-URI ("" when it has none).
pub fn dialled_user(req: &Request) -> String {
    req.uri
        .auth
        .as_ref()
        .map(|a| a.user.clone())
        .unwrap_or_default()
}

/// B2BUA settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// SIP T1 (2xx retransmission starts at T1; the ACK deadline is 64·T1).
    pub t1: Duration,
    /// SIP T2 (cap of the 2xx retransmission interval).
    pub t2: Duration,
    /// Hang up a confirmed, not-held call after this long without RTP (None: never).
    pub media_timeout: Option<Duration>,
    /// Our SIP domain (for From of calls we originate).
    pub realm: String,
    /// Session-Expires we ask of callees and grant callers that support timers (RFC 4028);
    /// None: no session timers.
    pub session_expires: Option<Duration>,
    /// Our Min-SE: a caller's smaller Session-Expires gets 422 (RFC 4028 says at least 90 s;
    /// tests use less).
    pub min_se: Duration,
    /// Codecs of the offer we make to the callee when the caller's INVITE has no SDP (late
    /// offer), in preference order (names known to `sdp::offer`).
    pub late_offer_codecs: Vec<String>,
    /// A call's uniqueid is this followed by its number (e.g. `gw-a-4711-`).
    pub uniqueid_prefix: String,
    /// Timer C (RFC 3261 §16.6 step 11) of every INVITE sent to a callee: restarted by each
    /// provisional response; when it fires the branch is CANCELled (or given up) and over as a
    /// 408 (`ring.rs`). The RFC wants more than 3 minutes: 181 s by default.
    pub timer_c: Duration,
    /// Ring limit of calls to our devices: unanswered after this long, the caller gets 480
    /// (None: none; Timer C still bounds each branch).
    pub ring_timeout: Option<Duration>,
}

/// Timer C's default: RFC 3261 §16.6 step 11 says "greater than 3 minutes".
pub const DEFAULT_TIMER_C: Duration = Duration::from_secs(181);

impl Default for Config {
    fn default() -> Self {
        Config {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            media_timeout: Some(Duration::from_secs(30)),
            realm: "callfabric.invalid".into(),
            session_expires: Some(Duration::from_secs(1800)),
            min_se: Duration::from_secs(90),
            late_offer_codecs: ["PCMU", "PCMA", "G722", "telephone-event"]
                .map(String::from)
                .to_vec(),
            uniqueid_prefix: String::new(),
            timer_c: DEFAULT_TIMER_C,
            ring_timeout: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// INVITE sent to B, no answer yet.
    Calling,
    /// 200 sent to A, waiting for its ACK.
    Answered,
    /// Both sides confirmed.
    Confirmed,
    /// Over (waiting for nothing; removed at once).
    Ended,
}

#[derive(Debug)]
struct Leg {
    peer: Peer,
    dialog: Option<Dialog>,
    device: Option<String>,
    /// Our SDP origin towards this side: session id and last version.
    origin: (u64, u64),
    /// The SDP we last sent to this side.
    last_sdp: Option<SessionDescription>,
    /// This side has put the call on hold.
    holding: bool,
    /// Our 2xx to this side's INVITE carried an offer: its answer comes in the ACK.
    ack_answer: bool,
    /// The origin version of the SDP this side last sent (an offer with the same version
    /// changes nothing: a session refresh).
    remote_version: Option<u64>,
    /// This side accepts UPDATE (its Allow).
    allows_update: bool,
    /// The session timer of this leg (RFC 4028).
    timer: Option<timers::SessionTimer>,
}

/// A 2xx we retransmit until its ACK arrives (§13.3.1.4), through server transaction `key`.
#[derive(Debug)]
struct OkRetransmit {
    side: Side,
    key: TransactionKey,
    usage: UasInvite,
}

/// A re-INVITE or UPDATE being relayed from `from` to the other side.
#[derive(Debug)]
struct Pending {
    from: Side,
    method: Method,
    server_key: TransactionKey,
    client_key: TransactionKey,
    offer_holds: bool,
    request: Request,
}

#[derive(Debug)]
struct Call {
    id: CallId,
    phase: Phase,
    a: Leg,
    b: Leg,
    a_invite_key: TransactionKey,
    a_invite: Request,
    a_tag: String,
    b_invite_key: TransactionKey,
    b_invite: Request,
    /// Leg B's INVITE got a provisional response 101–199 (the caller may be ringing; no RFC
    /// 3263 failover after it; a forked branch's 180 no longer takes over as the primary).
    b_provisional: bool,
    /// Leg B's INVITE got any provisional response, 100 included: RFC 3261 §9.1 allows a
    /// CANCEL from then on (`ring.rs`).
    b_responded: bool,
    /// Leg B is being moved to another peer (`moved.rs`).
    moving: bool,
    /// Leg B's INVITE was signed for the fabric with this key at this unix time (renewed on
    /// a retry to another target).
    signer: Option<(std::sync::Arc<crate::sip::trust::FabricKey>, u64)>,
    /// Our account at B (a trunk) and whether its challenge was answered already.
    b_credentials: Option<ClientCredentials>,
    b_auth_tried: bool,
    /// Targets still to try for leg B (RFC 3263 failover), next first.
    b_fallbacks: VecDeque<Peer>,
    cancel_pending: bool,
    ok: Option<OkRetransmit>,
    pending: Option<Pending>,
    ports: MediaPorts,
    bridged: bool,
    /// The caller sent no SDP: our 2xx carries the offer (the callee's answer to our offer).
    late_offer: bool,
    /// Reliable provisional responses to the caller (it supports 100rel).
    a_rel: Option<crate::sip::prack::ReliableSender>,
    /// The last RSeq of the callee's reliable provisional responses.
    b_rseq: Option<u32>,
    /// The session timer granted to the caller (set in our 2xx).
    a_timer: Option<timers::Granted>,
    /// A 422 from the callee was answered already.
    b_422_tried: bool,
    /// Our 2xx to the caller waits for the PRACK of a reliable 1xx with SDP.
    held_ok: bool,
    created: Instant,
    answered_at: Option<Instant>,
    /// Uniqueid and linked id (see [`CallRecord`]).
    uniqueid: String,
    linkedid: String,
    /// The INVITE was an ACD's offer (`X-CF-Offer`).
    offer: bool,
}

impl Call {
    fn leg(&self, side: Side) -> &Leg {
        match side {
            Side::A => &self.a,
            Side::B => &self.b,
        }
    }

    fn leg_mut(&mut self, side: Side) -> &mut Leg {
        match side {
            Side::A => &mut self.a,
            Side::B => &mut self.b,
        }
    }

    fn port(&self, side: Side) -> SocketAddr {
        match side {
            Side::A => self.ports.a,
            Side::B => self.ports.b,
        }
    }
}

/// The B2BUA.
pub struct B2bua {
    cfg: Config,
    /// Boxed: a `Call` is ~3 KB, so the table's slots (and its rehash) stay a pointer each.
    calls: HashMap<CallId, Box<Call>>,
    /// Client transactions (INVITE to B, re-INVITE/UPDATE/BYE/CANCEL) → call.
    by_client: HashMap<TransactionKey, (CallId, Side)>,
    /// Server INVITE transactions of leg A → call.
    by_server: HashMap<TransactionKey, CallId>,
    /// (Call-ID, our tag) → call and side.
    by_dialog: HashMap<(String, String), (CallId, Side)>,
    /// Branches of forked INVITEs to B (every branch, the primary included) → their state.
    forks: HashMap<TransactionKey, fork::Branch>,
    devices: DeviceCalls,
    /// Call limits per device (from the calls that set them).
    limits: HashMap<String, usize>,
    actions: VecDeque<Action>,
    next_id: u64,
    next_media_check: Option<Instant>,
    /// Diversions armed per call (`divert.rs`).
    diverts: HashMap<CallId, divert::Armed>,
    /// Timer C per callee-side INVITE, the ring limit per call (`ring.rs`).
    ring: ring::RingTimers,
    /// Each call's earliest own deadline ([`Call::next_deadline`]), in time order (`due.rs`).
    call_due: ring::Deadlines<CallId>,
    /// The random source of tags, branches, Call-IDs (`sip_core::builder`).
    rng: StdRng,

    /// Sign the next leg-B INVITE for a fabric member with this key at this unix time (set
    /// by the gateway just before [`B2bua::on_invite`], taken by it; `sip_core::trust`).
    pub sign_next: Option<(std::sync::Arc<crate::sip::trust::FabricKey>, u64)>,
}

impl std::fmt::Debug for B2bua {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("B2bua")
            .field("calls", &self.calls.len())
            .finish_non_exhaustive()
    }
}

const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, PRACK";

/// Option tags the B2BUA supports in `Require` (RFC 3262 `100rel`, RFC 4028 `timer`).
pub const EXTENSIONS: &[&str] = &["100rel", "timer"];

fn transport_name(p: &Peer) -> &'static str {
    p.transport.via_name()
}

fn our_contact(p: &Peer) -> String {
    match p.transport.uri_param() {
        Some(t) => format!("<sip:callfabric@{};transport={t}>", p.local),
        None => format!("<sip:callfabric@{}>", p.local),
    }
}

fn strip_tag(value: &str) -> String {
    match tparse::tag(value) {
        Some(tag) => {
            let lower = value.to_ascii_lowercase();
            let needle = format!(";tag={}", tag.to_ascii_lowercase());
            match lower.rfind(&needle) {
                Some(i) => {
                    let mut s = value.get(..i).unwrap_or(value).to_owned();
                    s.push_str(value.get(i + needle.len()..).unwrap_or(""));
                    s
                }
                None => value.to_owned(),
            }
        }
        None => value.to_owned(),
    }
}

fn sdp_of(headers: &rsip::Headers, body: &[u8]) -> Option<SessionDescription> {
    if body.is_empty() || dialog::content_type(headers).as_deref() != Some("application/sdp") {
        return None;
    }
    SessionDescription::parse_bytes(body).ok()
}

fn has_body(body: &[u8]) -> bool {
    !body.is_empty()
}

impl B2bua {
    /// A B2BUA with no calls.
    pub fn new(cfg: Config) -> Self {
        B2bua {
            cfg,
            calls: HashMap::new(),
            by_client: HashMap::new(),
            by_server: HashMap::new(),
            by_dialog: HashMap::new(),
            forks: HashMap::new(),
            devices: DeviceCalls::default(),
            limits: HashMap::new(),
            actions: VecDeque::new(),
            next_id: 1,
            next_media_check: None,
            diverts: HashMap::new(),
            ring: ring::RingTimers::default(),
            call_due: ring::Deadlines::default(),
            rng: StdRng::from_os_rng(),

            sign_next: None,
        }
    }

    /// Calls in progress.
    pub fn len(&self) -> usize {
        self.calls.len()
    }

    /// True with no call.
    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    /// Calls `device` takes part in.
    pub fn calls_of(&self, device: &str) -> usize {
        self.devices.count(device)
    }

    /// The device's state from its calls (NOT_INUSE with none).
    pub fn device_state(&self, device: &str) -> statebus::DeviceState {
        let limit = self.limits.get(device).copied().unwrap_or(0);
        self.devices.state(device, limit)
    }

    /// Next action for the gateway.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn rand(&mut self) -> u64 {
        // Tags, branches and Call-IDs must be unique and hard to guess.
        self.rng.next_u64()
    }

    /// Tags, branches, Call-IDs and SDP session ids from this random source from now on (tests
    /// make them deterministic; the default is seeded by the operating system).
    pub fn set_rng(&mut self, rng: StdRng) {
        self.rng = rng;
    }

    fn respond(&mut self, key: &TransactionKey, response: Response) {
        self.actions.push_back(Action::Respond {
            key: key.clone(),
            response,
        });
    }

    fn reply(&mut self, key: &TransactionKey, req: &Request, code: u16) {
        let mut r = message::response_for(req, code, "");
        if code >= 300 && req.method == Method::Invite && offer_of(req).is_some() {
            // The gateway's own refusal of an ACD's offer: the agent's phone never rang.
            r.headers.push(Header::Other(
                crate::offer::REFUSED_HEADER.into(),
                code.to_string(),
            ));
        }
        self.respond(key, r);
    }

    /// Refuses a new INVITE with `code` before any call exists, and reports it for the CDR.
    fn refuse(
        &mut self,
        key: &TransactionKey,
        req: &Request,
        code: u16,
        caller: &Caller,
        callee: Option<String>,
    ) {
        self.reply(key, req, code);
        let linkedid = linked_of(req).unwrap_or_default();
        self.actions.push_back(Action::CallRefused {
            code,
            record: CallRecord {
                uniqueid: String::new(),
                linkedid,
                caller: caller_user(req),
                dialled: dialled_user(req),
                caller_device: caller.device.clone(),
                callee_device: callee,
                presented: crate::security::identity::presented_number(req),
                duration: Duration::ZERO,
                billsec: None,
            },
        });
    }

    fn set_channel(&mut self, device: &Option<String>, call: CallId, ch: Channel) {
        if let Some(d) = device {
            if self.devices.set(d, call, ch) {
                self.actions.push_back(Action::DeviceChanged(d.clone()));
            }
        }
    }

    /// A new INVITE (no To tag) arrived from `source` in server transaction `key`; `routed`
    /// is who calls and where to, as the gateway resolved it.
    fn invite_inner(
        &mut self,
        key: TransactionKey,
        req: Request,
        source: Peer,
        routed: Routed,
        media: &mut dyn MediaControl,
        now: Instant,
    ) {
        let Routed { caller, target } = routed;
        let mut b_credentials = None;
        let mut b_fallbacks = VecDeque::new();
        let mut forks = Vec::new();
        let (callee, contact, dest, limit) = match target {
            Target::Reject(code) => return self.refuse(&key, &req, code, &caller, None),
            Target::Device {
                device,
                contact,
                dest,
                limit,
                forks: more,
            } => {
                forks = more;
                (Some(device), contact, dest, limit)
            }
            Target::Peer {
                uri,
                dest,
                credentials,
                fallbacks,
            } => {
                b_credentials = credentials;
                b_fallbacks = fallbacks.into();
                (None, uri, dest, 0)
            }
        };
        // An INVITE without a body is a late offer (RFC 3261 §13.2.1): we offer to the callee
        // ourselves and our 2xx offers the caller the callee's answer; a body we cannot read
        // as SDP is refused.
        let offer = sdp_of(&req.headers, &req.body);
        if offer.is_none() && has_body(&req.body) {
            return self.reply(&key, &req, 488);
        }
        let a_timer = match timers::negotiate_uas(&req, &self.cfg) {
            Ok(t) => t,
            Err(min_se) => {
                let mut r = message::response_for(&req, 422, "");
                r.headers.push(timers::min_se_header(min_se));
                return self.respond(&key, r);
            }
        };
        if let Some(dev) = &callee {
            if limit > 0 && self.devices.count(dev) >= limit {
                return self.refuse(&key, &req, 486, &caller, callee.clone());
            }
        }
        if let Some(dev) = &caller.device {
            if caller.limit > 0 && self.devices.count(dev) >= caller.limit {
                return self.refuse(&key, &req, 486, &caller, callee.clone());
            }
        }
        let max_forwards = req
            .headers
            .iter()
            .find_map(|h| match h {
                Header::MaxForwards(m) => m.value().trim().parse::<u32>().ok(),
                _ => None,
            })
            .unwrap_or(70);
        if max_forwards == 0 {
            return self.reply(&key, &req, 483);
        }
        let (Ok(from), Ok(to)) = (
            tparse::value(&req.headers, Field::From),
            tparse::value(&req.headers, Field::To),
        ) else {
            return self.reply(&key, &req, 400);
        };
        let (from, to) = (from.to_owned(), to.to_owned());
        let id = CallId(self.next_id);
        self.next_id += 1;
        let Some(ports) = media.open(id) else {
            return self.reply(&key, &req, 503);
        };
        if let Some(offer) = &offer {
            if let (Some(rtp), rtcp) = (offer.rtp_endpoint(0), offer.rtcp_endpoint(0)) {
                media.set_remote(id, Side::A, rtp, rtcp);
            }
        }
        let b_session = self.rand() >> 1;
        let a_session = self.rand() >> 1;
        let b_sdp = match &offer {
            Some(offer) => anchored(
                offer,
                ports.b,
                (b_session, 1),
                srtp::keys_may_pass(&source, &dest),
            ),
            None => {
                let codecs: Vec<&str> = self
                    .cfg
                    .late_offer_codecs
                    .iter()
                    .map(|c| c.as_str())
                    .collect();
                crate::sdp::offer(
                    ports.b.ip(),
                    ports.b.port(),
                    &codecs,
                    ("callfabric", b_session, 1),
                )
            }
        };
        let local = local_for(&dest);
        let (via, branch) = local.new_via(&mut self.rng);
        let b_tag = local.tag(&mut self.rng);
        let a_tag = local.tag(&mut self.rng);
        let call_id = local.call_id(&mut self.rng);
        let uniqueid = format!("{}{}", self.cfg.uniqueid_prefix, id.0);
        let linkedid = linked_of(&req).unwrap_or_else(|| uniqueid.clone());
        let is_offer = offer_of(&req).is_some();
        let built = builder::parse_uri(&contact).map(|uri| {
            let mut b = RequestBuilder::new(Method::Invite, uri, via)
                .max_forwards(max_forwards - 1)
                .from(&strip_tag(&from), Some(&b_tag))
                .to(&strip_tag(&to), None)
                .call_id(call_id)
                .contact(our_contact(&dest))
                .header(Header::Allow(Allow::new(ALLOW)))
                .header(Header::Supported(Supported::new("100rel, timer")));
            for h in timers::request_headers(&self.cfg) {
                b = b.header(h);
            }
            // A trunk (an ACD node, another site) learns the linked id; phones do not need it.
            if callee.is_none() {
                b = b.header(Header::Other(
                    crate::offer::LINKED_HEADER.into(),
                    linkedid.clone(),
                ));
            }
            b.body(b_sdp.to_string().into_bytes(), "application/sdp")
                .build()
        });
        let signer = self.sign_next.take();
        let b_invite = match built {
            Ok(mut r) => {
                if let Some((key, now_secs)) = &signer {
                    key.sign(&mut r, *now_secs);
                }
                r
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot build the INVITE to the callee");
                media.close(id);
                return self.reply(&key, &req, 500);
            }
        };
        let b_key = TransactionKey::client(&branch, Method::Invite);
        let call = Call {
            id,
            phase: Phase::Calling,
            a: Leg {
                peer: source,
                dialog: None,
                device: caller.device.clone(),
                origin: (a_session, 0),
                last_sdp: None,
                holding: false,
                ack_answer: false,
                remote_version: offer.as_ref().map(|o| o.origin_version()),
                allows_update: timers::allows_update(&req.headers),
                timer: None,
            },
            b: Leg {
                peer: dest.clone(),
                dialog: None,
                device: callee.clone(),
                origin: (b_session, 1),
                last_sdp: Some(b_sdp),
                holding: false,
                ack_answer: false,
                remote_version: None,
                allows_update: false,
                timer: None,
            },
            a_invite_key: key.clone(),
            a_invite: req.clone(),
            a_tag,
            b_invite_key: b_key.clone(),
            b_invite: b_invite.clone(),
            b_provisional: false,
            b_responded: false,
            moving: false,
            signer,
            b_credentials,
            b_auth_tried: false,
            b_fallbacks,
            cancel_pending: false,
            ok: None,
            pending: None,
            ports,
            bridged: false,
            late_offer: offer.is_none(),
            a_rel: reliable::sender_for(&req, self.cfg.t1),
            b_rseq: None,
            a_timer,
            b_422_tried: false,
            held_ok: false,
            created: now,
            answered_at: None,
            offer: is_offer,
            uniqueid,
            linkedid,
        };
        if let Some(d) = &caller.device {
            self.limits.insert(d.clone(), caller.limit);
        }
        if let Some(d) = &callee {
            self.limits.insert(d.clone(), limit);
        }
        self.set_channel(&caller.device, id, Channel::InUse);
        self.set_channel(&callee, id, Channel::Ringing);
        self.by_client.insert(b_key.clone(), (id, Side::B));
        self.by_server.insert(key, id);
        self.calls.insert(id, Box::new(call));
        self.arm_timer_c(&b_key, id, now);
        if callee.is_some() {
            self.arm_ring_limit(id, now);
        }
        self.actions.push_back(Action::Request {
            key: b_key,
            request: b_invite,
            dest,
        });
        self.fork_start(id, forks, now);
    }

    /// A response for client transaction `key`.
    fn response_inner(
        &mut self,
        key: &TransactionKey,
        resp: Response,
        media: &mut dyn MediaControl,
        now: Instant,
    ) {
        let mut resp = resp;
        if key.method() == Method::Invite {
            self.timer_c_response(key, resp.status_code.code(), now);
        }
        if self.fork_response(key, &mut resp, now) {
            return;
        }
        let Some(&(id, side)) = self.by_client.get(key) else {
            return;
        };
        let code = resp.status_code.code();
        if self.on_refresh_response(id, side, key, &resp, media, now) {
            // one of our own session refreshes
        } else if key.method() == Method::Invite
            && self.calls.get(&id).is_some_and(|c| c.b_invite_key == *key)
        {
            self.on_b_invite_response(id, resp, media, now);
        } else if self
            .calls
            .get(&id)
            .and_then(|c| c.pending.as_ref())
            .is_some_and(|p| p.client_key == *key)
        {
            self.on_pending_response(id, resp, media, now);
        }
        if code >= 200 && key.method() != Method::Invite {
            self.by_client.remove(key);
        }
    }

    fn on_b_invite_response(
        &mut self,
        id: CallId,
        resp: Response,
        media: &mut dyn MediaControl,
        now: Instant,
    ) {
        let code = resp.status_code.code();
        if code >= 300 && self.is_moving(id) {
            return self.move_failed(id, &format!("{code}"), media, now);
        }
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        if code == 100 {
            // A 100 alone says nothing to the caller, but it allows the CANCEL the caller
            // asked for (§9.1): sent now, not at a later 1xx that may never come.
            let first = !std::mem::replace(&mut call.b_responded, true);
            if first && call.cancel_pending {
                let (key, dest) = (call.b_invite_key.clone(), call.b.peer.clone());
                self.send_cancel(&key, dest, id, now);
            }
            return;
        }
        // Dialog with B (early on a tagged 1xx, confirmed on 2xx).
        if code < 300
            && tparse::field_tag(&resp.headers, Field::To)
                .ok()
                .flatten()
                .is_some()
        {
            match &mut call.b.dialog {
                Some(d) => d.on_response(Method::Invite, &resp),
                None => {
                    if let Ok(d) = Dialog::uac(&call.b_invite, &resp) {
                        self.by_dialog
                            .insert((d.call_id.clone(), d.local_tag.clone()), (id, Side::B));
                        call.b.dialog = Some(d);
                    }
                }
            }
        }
        if code < 200 && !self.b_reliable_provisional(id, &resp) {
            return; // a retransmitted or out-of-order reliable provisional response
        }
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        if code < 200 {
            let first = !call.b_responded;
            call.b_provisional = true;
            call.b_responded = true;
            if call.cancel_pending {
                if first {
                    let (key, dest) = (call.b_invite_key.clone(), call.b.peer.clone());
                    self.send_cancel(&key, dest, id, now);
                }
                return;
            }
            if call.phase != Phase::Calling {
                return;
            }
            let a_sdp = sdp_of(&resp.headers, &resp.body).map(|answer| {
                if let Some(rtp) = answer.rtp_endpoint(0) {
                    media.set_remote(id, Side::B, rtp, answer.rtcp_endpoint(0));
                }
                call.b.remote_version = Some(answer.origin_version());
                call.a.origin.1 += 1;
                let keep = srtp::keys_may_pass(&call.a.peer, &call.b.peer);
                anchored(&answer, call.ports.a, call.a.origin, keep)
            });
            if let Some(sdp) = &a_sdp {
                srtp::answer_crossed(media, id, Side::A, sdp, call.b.last_sdp.as_ref());
            }
            if a_sdp.is_some() && !call.bridged {
                call.bridged = true;
                media.bridge(id);
            }
            let mut r = response_with_tag(&call.a_invite, code, "", &call.a_tag);
            r.headers
                .push(Header::Contact(Contact::new(our_contact(&call.a.peer))));
            if let Some(sdp) = a_sdp {
                // Late offer: the caller gets our offer in the 2xx (never in an unreliable
                // 1xx); early media flows all the same.
                if !call.late_offer {
                    r = dialog::response_with_body(
                        r,
                        sdp.to_string().into_bytes(),
                        "application/sdp",
                    );
                }
                call.a.last_sdp = Some(sdp);
            }
            let key = call.a_invite_key.clone();
            match call.a_rel.as_mut() {
                Some(rel) => {
                    if let Some(r) = rel.send(r, now) {
                        self.respond(&key, r);
                    }
                }
                None => self.respond(&key, r),
            }
            return;
        }
        if code < 300 {
            // Answered: ACK B at once (we are its UAC).
            let ack = call.b.dialog.as_ref().map(|d| {
                let (via, _) = via_for(&mut self.rng, &call.b.peer);
                UacInvite::new(&call.b_invite).ack(d, || via)
            });
            if let Some(ack) = ack {
                self.actions.push_back(Action::Stateless {
                    message: ack.into(),
                    dest: call.b.peer.clone(),
                });
            }
            if call.phase != Phase::Calling {
                if call.moving {
                    self.moved(id, &resp, media);
                }
                return; // a 2xx retransmission: the ACK above is all it needs
            }
            if call.cancel_pending {
                // The caller cancelled and B answered anyway: hang B up.
                self.bye(id, Side::B);
                self.end(id, "cancel", media, now);
                return;
            }
            let Some(call) = self.calls.get_mut(&id) else {
                return;
            };
            let answer = sdp_of(&resp.headers, &resp.body);
            if let Some(answer) = &answer {
                if let Some(rtp) = answer.rtp_endpoint(0) {
                    media.set_remote(id, Side::B, rtp, answer.rtcp_endpoint(0));
                }
                call.b.remote_version = Some(answer.origin_version());
            }
            call.b.allows_update = timers::allows_update(&resp.headers);
            call.b.timer = timers::SessionTimer::from_uac_2xx(&resp, now);
            if !call.bridged {
                call.bridged = true;
                media.bridge(id);
            }
            let a_sdp = match (&answer, &call.a.last_sdp) {
                (Some(answer), _) => {
                    call.a.origin.1 += 1;
                    let keep = srtp::keys_may_pass(&call.a.peer, &call.b.peer);
                    let sdp = anchored(answer, call.ports.a, call.a.origin, keep);
                    srtp::answer_crossed(media, id, Side::A, &sdp, call.b.last_sdp.as_ref());
                    Some(sdp)
                }
                (None, Some(early)) => Some(early.clone()),
                (None, None) => None,
            };
            let mut r = response_with_tag(&call.a_invite, 200, "", &call.a_tag);
            r.headers
                .push(Header::Contact(Contact::new(our_contact(&call.a.peer))));
            r.headers.push(Header::Allow(Allow::new(ALLOW)));
            if let Some(granted) = call.a_timer {
                granted.stamp(&mut r.headers);
                call.a.timer = Some(granted.start(now));
            }
            if call.offer {
                // The ACD's CONNECT names the agent's call by this (its CDR's uniqueid).
                r.headers.push(Header::Other(
                    crate::offer::UNIQUEID_HEADER.into(),
                    call.uniqueid.clone(),
                ));
            }
            if let Some(sdp) = a_sdp {
                r = dialog::response_with_body(r, sdp.to_string().into_bytes(), "application/sdp");
                call.a.last_sdp = Some(sdp);
                // Late offer: that was our offer; the caller answers in its ACK.
                call.a.ack_answer = call.late_offer;
            }
            if call.a.dialog.is_none() {
                if let Ok(d) = Dialog::uas(&call.a_invite, &call.a_tag, &our_contact(&call.a.peer))
                {
                    self.by_dialog
                        .insert((d.call_id.clone(), d.local_tag.clone()), (id, Side::A));
                    call.a.dialog = Some(d);
                }
            }
            if let Some(d) = &mut call.a.dialog {
                d.state = DialogState::Confirmed;
            }
            call.phase = Phase::Answered;
            call.answered_at = Some(now);
            self.disarm_ring_limit(id);
            let Some(call) = self.calls.get_mut(&id) else {
                return;
            };
            let key = call.a_invite_key.clone();
            // RFC 3262 §3: no 2xx while a reliable 1xx with SDP waits for its PRACK (it goes
            // with that PRACK); otherwise reliable provisionals stop here.
            call.held_ok = call
                .a_rel
                .as_ref()
                .is_some_and(|r| r.unacknowledged_with_body());
            if !call.held_ok {
                if let Some(rel) = call.a_rel.as_mut() {
                    rel.stop();
                }
            }
            let timers = tx_timers(&self.cfg);
            call.ok = Some(OkRetransmit {
                side: Side::A,
                key: key.clone(),
                usage: if call.held_ok {
                    UasInvite::held(r.clone(), &timers, now)
                } else {
                    UasInvite::answered(r.clone(), &timers, now)
                },
            });
            let (adev, bdev) = (call.a.device.clone(), call.b.device.clone());
            if !call.held_ok {
                self.respond(&key, r);
            }
            self.set_channel(&adev, id, Channel::InUse);
            self.set_channel(&bdev, id, Channel::InUse);
            self.arm_media_check(now);
            return;
        }
        if code == 422 && call.phase == Phase::Calling && !call.cancel_pending && !call.b_422_tried
        {
            call.b_422_tried = true;
            if self.retry_b_after_422(id, &resp, now) {
                return;
            }
        }
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        // A challenge from a trunk we have an account at: answer it once.
        if matches!(code, 401 | 407)
            && call.phase == Phase::Calling
            && !call.cancel_pending
            && !call.b_auth_tried
        {
            if let Some(creds) = call.b_credentials.clone() {
                call.b_auth_tried = true;
                let uri = call.b_invite.uri.to_string();
                let cnonce = format!("{:016x}", rand::random::<u64>());
                if let Some(auth) =
                    client::answer_challenge(&resp, "INVITE", &uri, &creds, &cnonce, 1)
                {
                    let peer = call.b.peer.clone();
                    let (via, branch) = via_for(&mut self.rng, &peer);
                    let Some(call) = self.calls.get_mut(&id) else {
                        return;
                    };
                    let retry = Resend::new(&call.b_invite, via)
                        .next_cseq()
                        .without(|h| {
                            matches!(h, Header::Authorization(_) | Header::ProxyAuthorization(_))
                        })
                        .header(auth)
                        .build();
                    let key = TransactionKey::client(&branch, Method::Invite);
                    call.b_invite = retry.clone();
                    call.b_invite_key = key.clone();
                    self.by_client.insert(key.clone(), (id, Side::B));
                    self.arm_timer_c(&key, id, now);
                    self.actions.push_back(Action::Request {
                        key,
                        request: retry,
                        dest: peer,
                    });
                    return;
                }
            }
        }
        if code == 503 && self.next_target(id, now) {
            return;
        }
        if self.divert(id, Some(code), now) {
            return;
        }
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        // Final failure from B.
        let cancelled = call.cancel_pending;
        if call.phase == Phase::Calling && !call.cancel_pending {
            let mapped = match code {
                300..=399 => 480,
                401 | 407 => 403,
                408 => 408,
                _ => code,
            };
            let r = response_with_tag(&call.a_invite, mapped, "", &call.a_tag);
            let key = call.a_invite_key.clone();
            self.respond(&key, r);
        }
        let reason = if cancelled {
            "cancel".to_owned()
        } else {
            code.to_string()
        };
        self.end(id, &reason, media, now);
    }

    /// A transaction ended: forget its mapping.
    pub fn on_terminated(&mut self, key: &TransactionKey) {
        self.fork_terminated(key);
        self.timer_c_forget(key);
        self.by_client.remove(key);
        self.by_server.remove(key);
        self.shrink_tables();
    }

    /// Entries the call tables have room for (calls, client and server transaction keys,
    /// dialogs): what they take whatever they hold.
    pub fn table_capacity(&self) -> usize {
        self.calls.capacity()
            + self.by_client.capacity()
            + self.by_server.capacity()
            + self.by_dialog.capacity()
    }

    /// Gives memory back once a call table is mostly empty after a peak (issue 16: they grow
    /// to the peak's calls and client transactions, mapped until Timer M/K, and a `HashMap`
    /// never shrinks by itself). O(1) unless it shrinks; a table shrinks to twice its entries,
    /// so it shrinks again only after losing three quarters of them.
    fn shrink_tables(&mut self) {
        fn shrink<K: Eq + std::hash::Hash, V>(m: &mut HashMap<K, V>) {
            const MIN: usize = 256;
            if m.capacity() > MIN && m.len() < m.capacity() / 4 {
                m.shrink_to((m.len() * 2).max(MIN));
            }
        }
        shrink(&mut self.calls);
        shrink(&mut self.by_client);
        shrink(&mut self.by_server);
        shrink(&mut self.by_dialog);
    }

    /// Client transaction `key` timed out or hit a transport error.
    fn timeout_inner(&mut self, key: &TransactionKey, media: &mut dyn MediaControl, now: Instant) {
        if self.fork_timeout(key, media, now) {
            return;
        }
        let Some(&(id, side)) = self.by_client.get(key) else {
            return;
        };
        if self.refresh_in_flight(id, side, key) {
            // RFC 4028 §10: a refresh that gets no answer ends the session.
            self.by_client.remove(key);
            return self.hangup(id, "session-refresh-failed", media, now);
        }
        let Some(call) = self.calls.get(&id) else {
            self.by_client.remove(key);
            return;
        };
        if call.b_invite_key == *key && call.moving {
            self.by_client.remove(key);
            return self.move_failed(id, "timeout", media, now);
        }
        if call.b_invite_key == *key && call.phase == Phase::Calling && self.next_target(id, now) {
            self.by_client.remove(key);
            return;
        }
        let Some(call) = self.calls.get(&id) else {
            return;
        };
        if call.b_invite_key == *key && call.phase == Phase::Calling && self.divert(id, None, now) {
            return;
        }
        let Some(call) = self.calls.get(&id) else {
            return;
        };
        if call.b_invite_key == *key && call.phase == Phase::Calling {
            // A caller who CANCELled got its 487 then; the callee never answered our CANCEL
            // (§9.1, `ring.rs`).
            let reason = if call.cancel_pending {
                "cancel"
            } else {
                let r = response_with_tag(&call.a_invite, 408, "", &call.a_tag);
                let k = call.a_invite_key.clone();
                self.respond(&k, r);
                "no-answer"
            };
            self.end(id, reason, media, now);
        } else if call.pending.as_ref().is_some_and(|p| p.client_key == *key) {
            // The other side never answered the re-INVITE/UPDATE: tell the offerer and end
            // the call (§14.1: a UAC whose re-INVITE times out hangs up).
            if let Some(p) = self.calls.get_mut(&id).and_then(|c| c.pending.take()) {
                let r = message::response_for(&p.request, 408, "");
                self.respond(&p.server_key, r);
            }
            self.hangup(id, "reinvite-timeout", media, now);
        }
        self.by_client.remove(key);
        let _ = now;
    }

    /// RFC 3263 §4.3 failover: leg B's INVITE failed (timeout, 503) before any provisional
    /// response and the trunk has another target: the same request with a new branch goes
    /// there. Returns whether it was sent.
    fn next_target(&mut self, id: CallId, now: Instant) -> bool {
        let Some(call) = self.calls.get_mut(&id) else {
            return false;
        };
        if call.phase != Phase::Calling || call.cancel_pending || call.b_provisional {
            return false;
        }
        self.retry_target(id, now)
    }

    /// Sends leg B's INVITE to the next fallback target (same request, new branch; a fabric
    /// signature renewed); whether there was one. What leg B heard from the previous target
    /// (its provisional responses, early dialog, RSeq) is forgotten.
    pub(super) fn retry_target(&mut self, id: CallId, now: Instant) -> bool {
        let Some(call) = self.calls.get_mut(&id) else {
            return false;
        };
        if call.b.device.is_none() {
            self.actions
                .push_back(Action::TargetFailed(call.b.peer.addr));
        }
        let Some(peer) = call.b_fallbacks.pop_front() else {
            return false;
        };
        let (via, branch) = via_for(&mut self.rng, &peer);
        let mut retry = Resend::new(&call.b_invite, via).build();
        if let Some((k, t0)) = &call.signer {
            // The window is short: a retry after Timer B would be refused as stale.
            k.sign(
                &mut retry,
                t0 + now.saturating_duration_since(call.created).as_secs(),
            );
        }
        let key = TransactionKey::client(&branch, Method::Invite);
        call.b.peer = peer.clone();
        call.b_invite = retry.clone();
        call.b_invite_key = key.clone();
        call.b_provisional = false;
        call.b_responded = false;
        call.b_rseq = None;
        if let Some(d) = call.b.dialog.take() {
            self.by_dialog.remove(&(d.call_id, d.local_tag));
        }
        self.by_client.insert(key.clone(), (id, Side::B));
        self.arm_timer_c(&key, id, now);
        self.actions.push_back(Action::Request {
            key,
            request: retry,
            dest: peer,
        });
        true
    }

    /// A CANCEL (answered 200 by us here) for INVITE server transaction `invite`.
    fn cancel_inner(
        &mut self,
        key: &TransactionKey,
        cancel: &Request,
        invite: &TransactionKey,
        media: &mut dyn MediaControl,
        now: Instant,
    ) {
        self.reply(key, cancel, 200);
        let Some(&id) = self.by_server.get(invite) else {
            return;
        };
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        if call.phase != Phase::Calling || call.cancel_pending {
            return;
        }
        call.cancel_pending = true;
        if let Some(rel) = call.a_rel.as_mut() {
            rel.stop();
        }
        let r = response_with_tag(&call.a_invite, 487, "", &call.a_tag);
        let a_key = call.a_invite_key.clone();
        let (b_key, dest, responded) = (
            call.b_invite_key.clone(),
            call.b.peer.clone(),
            call.b_responded,
        );
        let devs: Vec<Option<String>> = vec![call.a.device.clone(), call.b.device.clone()];
        self.respond(&a_key, r);
        self.fork_cancel(id, Some(&b_key), now);
        if responded {
            // A provisional response (a 100 is one) came: CANCEL now (§9.1); not answered
            // within 64·T1, destroyed, and the call ends (`ring.rs`). Else at the first one.
            self.send_cancel(&b_key, dest, id, now);
        }
        // Device states: the callee stops ringing at once.
        for d in devs.into_iter().flatten() {
            if self.devices.remove(&d, id) {
                self.actions.push_back(Action::DeviceChanged(d));
            }
        }
        let _ = media;
    }

    /// An ACK outside a transaction (for a 2xx).
    fn ack_inner(&mut self, req: &Request, media: &mut dyn MediaControl, now: Instant) {
        let Some((id, side)) = self.dialog_of(req) else {
            return;
        };
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        if call.ok.as_ref().is_some_and(|o| o.side == side) {
            call.ok = None;
        }
        if call.phase == Phase::Answered && side == Side::A {
            call.phase = Phase::Confirmed;
        }
        if std::mem::take(&mut call.leg_mut(side).ack_answer) {
            // Our 2xx offered: the answer is in this ACK (RFC 3264 §4, RFC 3261 §13.2.1).
            match sdp_of(&req.headers, &req.body) {
                Some(answer) => {
                    if let Some(rtp) = answer.rtp_endpoint(0) {
                        media.set_remote(id, side, rtp, answer.rtcp_endpoint(0));
                    }
                    call.leg_mut(side).remote_version = Some(answer.origin_version());
                }
                // No usable answer: the session cannot be set up (§13.2.1: the UAS ends it).
                None => self.hangup(id, "no-answer-in-ack", media, now),
            }
        }
    }

    fn dialog_of(&self, req: &Request) -> Option<(CallId, Side)> {
        let call_id = tparse::value(&req.headers, Field::CallId).ok()?;
        let to_tag = tparse::field_tag(&req.headers, Field::To).ok()??;
        let found = self.by_dialog.get(&(call_id.to_owned(), to_tag)).copied()?;
        let call = self.calls.get(&found.0)?;
        call.leg(found.1)
            .dialog
            .as_ref()
            .is_some_and(|d| d.matches(req))
            .then_some(found)
    }

    /// Whether `req` (with a To tag) belongs to one of our dialogs.
    pub fn owns(&self, req: &Request) -> bool {
        self.dialog_of(req).is_some()
    }

    /// A request inside a dialog (To tag set), in server transaction `key`. Returns false if
    /// it matches no dialog (answer 481).
    fn in_dialog_inner(
        &mut self,
        key: &TransactionKey,
        req: Request,
        media: &mut dyn MediaControl,
        now: Instant,
    ) -> bool {
        if req.method == Method::PRack {
            return self.on_prack(key, &req, media, now);
        }
        let Some((id, side)) = self.dialog_of(&req) else {
            return false;
        };
        let Some(call) = self.calls.get_mut(&id) else {
            return false;
        };
        if let Some(d) = call.leg_mut(side).dialog.as_mut() {
            if d.on_request(&req).is_err() {
                self.reply(key, &req, 500);
                return true;
            }
        }
        match req.method {
            Method::Bye => {
                self.reply(key, &req, 200);
                let other = side.other();
                let call = self.calls.get(&id);
                let other_confirmed = call
                    .and_then(|c| c.leg(other).dialog.as_ref())
                    .is_some_and(|d| d.state == DialogState::Confirmed);
                if other_confirmed {
                    self.bye(id, other);
                } else if let Some(c) = call {
                    if other == Side::B && c.b_responded {
                        let (k, dest) = (c.b_invite_key.clone(), c.b.peer.clone());
                        self.send_cancel(&k, dest, id, now);
                    }
                }
                let reason = match side {
                    Side::A => "bye-a",
                    Side::B => "bye-b",
                };
                self.end(id, reason, media, now);
            }
            Method::Invite | Method::Update => self.relay_offer(id, side, key, req, media, now),
            Method::Options => self.reply(key, &req, 200),
            Method::Info => {
                self.reply(key, &req, 200);
                self.relay_info(id, side, &req);
            }
            _ => self.reply(key, &req, 501),
        }
        true
    }

    fn relay_offer(
        &mut self,
        id: CallId,
        side: Side,
        key: &TransactionKey,
        req: Request,
        media: &mut dyn MediaControl,
        now: Instant,
    ) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        if call.pending.is_some() || (req.method == Method::Invite && call.ok.is_some()) {
            let r = message::response_for(&req, 491, "");
            self.respond(key, r);
            return;
        }
        let other = side.other();
        let offer = sdp_of(&req.headers, &req.body);
        let unchanged = offer
            .as_ref()
            .is_some_and(|o| call.leg(side).remote_version == Some(o.origin_version()));
        if offer.is_none() || unchanged {
            if offer.is_none() && has_body(&req.body) {
                self.reply(key, &req, 488);
                return;
            }
            // An offerless re-INVITE, an UPDATE without offer, or an offer that changes
            // nothing (same origin version, RFC 3264 §8): a session refresh of this leg,
            // answered here. An offerless re-INVITE gets our current SDP as an offer and its
            // answer comes in the ACK; an unchanged offer gets our current SDP as the answer.
            let mut r = message::response_for(&req, 200, "");
            r.headers.push(Header::Contact(Contact::new(our_contact(
                &call.leg(side).peer,
            ))));
            let leg = call.leg_mut(side);
            if let Some(t) = leg.timer.as_mut() {
                t.on_refresh_request(&req.headers, now);
                t.stamp_response(&mut r.headers);
            }
            let sdp = leg.last_sdp.clone();
            if let Some(sdp) = sdp.filter(|_| req.method == Method::Invite || unchanged) {
                r = dialog::response_with_body(r, sdp.to_string().into_bytes(), "application/sdp");
                leg.ack_answer = req.method == Method::Invite && offer.is_none();
            }
            if req.method == Method::Invite {
                call.ok = Some(OkRetransmit {
                    side,
                    key: key.clone(),
                    usage: UasInvite::answered(r.clone(), &tx_timers(&self.cfg), now),
                });
            }
            self.respond(key, r);
            return;
        }
        let Some(offer) = offer else {
            return;
        };
        if let Some(rtp) = offer.rtp_endpoint(0) {
            media.set_remote(id, side, rtp, offer.rtcp_endpoint(0));
        }
        call.leg_mut(side).remote_version = Some(offer.origin_version());
        let holds = offer.is_hold();
        let port = call.port(other);
        let keep = srtp::keys_may_pass(&call.a.peer, &call.b.peer);
        let leg = call.leg_mut(other);
        leg.origin.1 += 1;
        let mut sdp = anchored(&offer, port, leg.origin, keep);
        if holds {
            hold::offer_to_held(&mut sdp);
        }
        let peer = leg.peer.clone();
        let (via, branch) = via_for(&mut self.rng, &peer);
        let Some(d) = leg.dialog.as_mut() else {
            self.reply(key, &req, 500);
            return;
        };
        let mut fwd = dialog::with_body(
            d.request(req.method, &via),
            sdp.to_string().into_bytes(),
            "application/sdp",
        );
        if let Some(t) = &leg.timer {
            t.stamp_request(&mut fwd.headers);
        }
        leg.last_sdp = Some(sdp);
        let client_key = TransactionKey::client(&branch, req.method);
        call.pending = Some(Pending {
            from: side,
            method: req.method,
            server_key: key.clone(),
            client_key: client_key.clone(),
            offer_holds: holds,
            request: req,
        });
        self.by_client.insert(client_key.clone(), (id, other));
        self.actions.push_back(Action::Request {
            key: client_key,
            request: fwd,
            dest: peer,
        });
    }

    fn on_pending_response(
        &mut self,
        id: CallId,
        resp: Response,
        media: &mut dyn MediaControl,
        now: Instant,
    ) {
        let code = resp.status_code.code();
        if code < 200 {
            return;
        }
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let Some(p) = call.pending.take() else {
            return;
        };
        let orig = p.request;
        let other = p.from.other();
        if code >= 300 {
            let r = message::response_for(&orig, if code == 491 { 491 } else { code }, "");
            self.respond(&p.server_key, r);
            return;
        }
        if p.method == Method::Invite {
            if let Some(d) = call.leg_mut(other).dialog.as_mut() {
                d.on_response(Method::Invite, &resp);
                let peer = call.leg(other).peer.clone();
                let (via, _) = via_for(&mut self.rng, &peer);
                if let Some(d) = call.leg(other).dialog.as_ref() {
                    let seq = d.local_seq;
                    self.actions.push_back(Action::Stateless {
                        message: d.ack(seq, &via).into(),
                        dest: peer,
                    });
                }
            }
        }
        let answer = sdp_of(&resp.headers, &resp.body);
        if let Some(answer) = &answer {
            if let Some(rtp) = answer.rtp_endpoint(0) {
                media.set_remote(id, other, rtp, answer.rtcp_endpoint(0));
            }
            call.leg_mut(other).remote_version = Some(answer.origin_version());
        }
        // A re-INVITE/UPDATE that succeeded on both legs refreshes both sessions.
        if let Some(t) = call.leg_mut(other).timer.as_mut() {
            t.refreshed(now);
        }
        let port = call.port(p.from);
        let keep = srtp::keys_may_pass(&call.a.peer, &call.b.peer);
        let leg = call.leg_mut(p.from);
        let mut r = message::response_for(&orig, 200, "");
        r.headers
            .push(Header::Contact(Contact::new(our_contact(&leg.peer))));
        if let Some(t) = leg.timer.as_mut() {
            t.on_refresh_request(&orig.headers, now);
            t.stamp_response(&mut r.headers);
        }
        if let Some(answer) = &answer {
            leg.origin.1 += 1;
            let mut sdp = anchored(answer, port, leg.origin, keep);
            if let Some(offer) = sdp_of(&orig.headers, &orig.body).filter(|_| p.offer_holds) {
                hold::answer_to_holder(&offer, &mut sdp);
            }
            r = dialog::response_with_body(r, sdp.to_string().into_bytes(), "application/sdp");
            leg.last_sdp = Some(sdp);
        }
        let was = leg.holding;
        leg.holding = p.offer_holds;
        let device = leg.device.clone();
        if let Some(sent) = call
            .leg(p.from)
            .last_sdp
            .as_ref()
            .filter(|_| answer.is_some())
        {
            srtp::answer_crossed(media, id, p.from, sent, call.leg(other).last_sdp.as_ref());
        }
        if p.method == Method::Invite {
            call.ok = Some(OkRetransmit {
                side: p.from,
                key: p.server_key.clone(),
                usage: UasInvite::answered(r.clone(), &tx_timers(&self.cfg), now),
            });
        }
        self.respond(&p.server_key, r);
        if was != p.offer_holds {
            let ch = if p.offer_holds {
                Channel::OnHold
            } else {
                Channel::InUse
            };
            self.set_channel(&device, id, ch);
            media.hold(id, p.from, p.offer_holds);
        }
    }

    /// Sends BYE to `side` of call `id`.
    fn bye(&mut self, id: CallId, side: Side) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let peer = call.leg(side).peer.clone();
        let (via, branch) = via_for(&mut self.rng, &peer);
        let Some(d) = call.leg_mut(side).dialog.as_mut() else {
            return;
        };
        let bye = d.request(Method::Bye, &via);
        let key = TransactionKey::client(&branch, Method::Bye);
        self.by_client.insert(key.clone(), (id, side));
        self.actions.push_back(Action::Request {
            key,
            request: bye,
            dest: peer,
        });
    }

    /// Hangs up both sides of a call (BYE to each confirmed side).
    fn hangup_inner(
        &mut self,
        id: CallId,
        reason: &str,
        media: &mut dyn MediaControl,
        now: Instant,
    ) {
        let Some(call) = self.calls.get(&id) else {
            return;
        };
        let sides: Vec<Side> = [Side::A, Side::B]
            .into_iter()
            .filter(|s| {
                call.leg(*s)
                    .dialog
                    .as_ref()
                    .is_some_and(|d| d.state == DialogState::Confirmed)
            })
            .collect();
        for s in sides {
            self.bye(id, s);
        }
        self.end(id, reason, media, now);
    }

    fn end(&mut self, id: CallId, reason: &str, media: &mut dyn MediaControl, now: Instant) {
        let Some(mut call) = self.calls.remove(&id) else {
            return;
        };
        call.phase = Phase::Ended;
        self.disarm_ring_limit(id);
        self.call_due.remove(&id);
        self.fork_cancel(id, Some(&call.b_invite_key), now);
        media.close(id);
        self.by_server.remove(&call.a_invite_key);
        // Client keys stay mapped until their transactions end (late responses are absorbed).
        for leg in [&call.a, &call.b] {
            if let Some(d) = &leg.dialog {
                self.by_dialog
                    .remove(&(d.call_id.clone(), d.local_tag.clone()));
            }
            if let Some(dev) = &leg.device {
                if self.devices.remove(dev, id) {
                    self.actions.push_back(Action::DeviceChanged(dev.clone()));
                }
            }
        }
        if let Some(p) = call.pending.take() {
            let r = message::response_for(&p.request, 487, "");
            self.respond(&p.server_key, r);
        }
        let record = CallRecord {
            uniqueid: call.uniqueid.clone(),
            linkedid: call.linkedid.clone(),
            caller: caller_user(&call.a_invite),
            dialled: dialled_user(&call.a_invite),
            caller_device: call.a.device.clone(),
            callee_device: call.b.device.clone(),
            presented: crate::security::identity::presented_number(&call.a_invite),
            duration: now.saturating_duration_since(call.created),
            billsec: call.answered_at.map(|t| now.saturating_duration_since(t)),
        };
        self.actions.push_back(Action::CallEnded {
            call: id,
            reason: reason.to_owned(),
            record,
        });
        self.shrink_tables();
    }

    fn arm_media_check(&mut self, now: Instant) {
        if self.cfg.media_timeout.is_some() && self.next_media_check.is_none() {
            self.next_media_check = Some(now + Duration::from_secs(1));
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let calls = self.call_due.first();
        #[cfg(debug_assertions)]
        {
            let walked = self.calls.values().filter_map(|c| c.next_deadline()).min();
            debug_assert_eq!(
                calls, walked,
                "the per-call deadline index is stale (`due.rs`)"
            );
        }
        [
            calls,
            self.next_media_check,
            self.divert_due(),
            self.ring_due(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Runs the timers due at `now`; `due`: the calls whose own deadline passed (`due.rs`).
    fn timers_inner(&mut self, due: &[CallId], media: &mut dyn MediaControl, now: Instant) {
        self.run_session_timers(due, media, now);
        self.run_diverts(now);
        self.run_ring_timers(media, now);
        let mut dead = Vec::new();
        let mut resend = Vec::new();
        for id in due {
            let Some(call) = self.calls.get_mut(id) else {
                continue;
            };
            let Some(ok) = call.ok.as_mut() else {
                continue;
            };
            match ok.usage.handle_timeout(now) {
                Some(UasEvent::AckTimeout) => {
                    dead.push(call.id);
                    call.ok = None;
                }
                Some(UasEvent::Retransmit(r)) => resend.push((ok.key.clone(), r)),
                None => {}
            }
        }
        for (key, r) in resend {
            self.respond(&key, r);
        }
        for id in dead {
            self.hangup(id, "no-ack", media, now);
        }
        if let (Some(t), Some(limit)) = (self.next_media_check, self.cfg.media_timeout) {
            if now >= t {
                let idle: Vec<CallId> = self
                    .calls
                    .values()
                    .filter(|c| c.phase == Phase::Confirmed && !c.a.holding && !c.b.holding)
                    .filter(|c| media.idle(c.id, now).is_some_and(|d| d >= limit))
                    .map(|c| c.id)
                    .collect();
                for id in idle {
                    self.hangup(id, "media-timeout", media, now);
                }
                self.next_media_check = if self.calls.is_empty() {
                    None
                } else {
                    Some(now + Duration::from_secs(1))
                };
            }
        }
    }
}

/// The transaction layer's timers the B2BUA's dialog usages run on.
fn tx_timers(cfg: &Config) -> tx::Config {
    tx::Config {
        t1: cfg.t1,
        t2: cfg.t2,
        ..tx::Config::default()
    }
}

/// Where requests to `p` leave from (`cf` identifiers).
fn local_for(p: &Peer) -> Local {
    Local {
        transport: transport_name(p),
        addr: p.local,
        prefix: "cf",
    }
}

/// A fresh branch towards `p` and the Via value that carries it.
fn via_for(rng: &mut StdRng, p: &Peer) -> (String, String) {
    local_for(p).new_via(rng)
}

/// `sdp` with its first audio stream anchored on `relay` (other streams rejected: the relay
/// carries one stream per call) and our own origin; its SDES keys kept only if `keep_keys`
/// (both legs TLS, `srtp.rs`).
fn anchored(
    sdp: &SessionDescription,
    relay: SocketAddr,
    origin: (u64, u64),
    keep_keys: bool,
) -> SessionDescription {
    let mut out = sdp.clone();
    srtp::secure_keys(&mut out, keep_keys);
    let mut audio_done = false;
    let ports: Vec<u16> = out
        .media()
        .iter()
        .map(|m| {
            if !audio_done && m.kind.eq_ignore_ascii_case("audio") && m.port != 0 {
                audio_done = true;
                relay.port()
            } else {
                0
            }
        })
        .collect();
    out.anchor(relay.ip(), &ports);
    out.set_origin("callfabric", origin.0, origin.1, relay.ip());
    out
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod fork_tests;

#[cfg(test)]
mod linked_tests;

#[cfg(test)]
mod srtp_tests;

#[cfg(test)]
mod divert_tests;

#[cfg(test)]
mod ring_tests;

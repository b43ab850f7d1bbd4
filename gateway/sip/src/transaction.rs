//! The SIP transaction layer (RFC 3261 §17), sans-IO.
//!
//! [`TransactionLayer`] owns every client and server transaction of one SIP element: INVITE and
//! non-INVITE, with timers A–K (and L, M of RFC 6026), retransmissions over unreliable
//! transports, the ACK for non-2xx final responses, and CANCEL matching. It owns no socket, no
//! task and no clock:
//!
//! * **Input**: [`send_request`](TransactionLayer::send_request) /
//!   [`send_response`](TransactionLayer::send_response) from the transaction user (TU),
//!   [`on_message`](TransactionLayer::on_message) for every parsed message from the network,
//!   [`transport_error`](TransactionLayer::transport_error) when a send failed,
//!   [`handle_timeout`](TransactionLayer::handle_timeout) when the clock reaches
//!   [`poll_timeout`](TransactionLayer::poll_timeout).
//! * **Output**: [`poll_transmit`](TransactionLayer::poll_transmit) (messages to put on the
//!   wire, with their destination) and [`poll_event`](TransactionLayer::poll_event) (what the TU
//!   must see). Drain both after every input.
//!
//! **Time.** Every input that can arm a timer takes `now: std::time::Instant`, supplied by the
//! caller; the layer never reads the clock. `poll_timeout` returns the earliest armed deadline;
//! `handle_timeout(now)` fires every timer whose deadline is `<= now`, in deadline order (calling
//! it early is harmless, calling it late fires the overdue timers once, and a retransmission
//! timer then re-arms from that `now`). Tests drive it in virtual time: one `Instant` taken at
//! the start plus hand-advanced offsets.
//!
//! **Transports.** The layer only knows whether a transport is [`Transport::Unreliable`]
//! (UDP: timers A, E, G retransmit; D, I, J, K wait) or [`Transport::Reliable`] (TCP, TLS, WS:
//! no retransmission; D, I, J, K are zero, so the transaction ends at once). Destinations are an
//! opaque `D` (a `SocketAddr` by default): requests and the ACK go to the `dest` given to
//! `send_request`; a server transaction answers the `source` its request came from (symmetric
//! response routing; a transport that honours `received`/`rport`/`maddr` (RFC 3261 §18.2.2) may
//! re-route using the message's Via).
//!
//! **Matching.** See [`TransactionKey`]: branch (magic cookie `z9hG4bK`) + method, plus sent-by
//! for server transactions, with the RFC 2543 fallback for requests without the cookie. A
//! CANCEL creates its own non-INVITE server transaction and is reported as [`Event::Cancel`]
//! together with the key of the INVITE server transaction it matches (§9.2); the TU answers
//! the CANCEL (200) and decides whether to answer the INVITE with 487.
//!
//! **2xx to INVITE** (RFC 6026, on by default, see [`Config::accepted_state`]): the client
//! transaction moves to *Accepted* and passes every further 2xx (retransmissions, forks) to the
//! TU until Timer M; the server transaction moves to *Accepted*, absorbs INVITE retransmissions,
//! lets the TU send 2xx retransmissions through it and passes an ACK matched to it to the TU,
//! until Timer L. The TU (dialog layer) retransmits the 2xx and sends the ACK for 2xx itself
//! (the latter with [`send_stateless`](TransactionLayer::send_stateless)).
//!
//! **Unanswered requests.** RFC 3261 gives a server transaction in Trying/Proceeding no timer:
//! it waits for the TU. A non-INVITE one that gets no final response within
//! [`Config::non_invite_abandon`] (64 s by default) is ended without sending anything, reported
//! as [`Event::Terminated`] only, and counted ([`TransactionLayer::abandoned`]), so a request
//! the TU lost cannot keep its transaction for ever. INVITE server transactions are left to the
//! TU (a call may ring as long as its caller waits).
//!
//! **Errors.** Nothing from the wire panics: a message without a usable Via or CSeq (or, for an
//! RFC 2543 request, Call-ID/From/To) is rejected with an [`Error`]; a response matching no
//! transaction is handed to the TU as [`Event::StrayResponse`] (§18.1.2), an ACK matching none
//! as [`Event::Ack`].

mod build;
mod completed;
mod delta;
mod key;
pub mod parse;

pub use key::{Role, TransactionKey};

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rsip::{Method, Request, Response, SipMessage};
use tracing::{debug, trace};

use completed::Completed;
use key::{LegacyAckId, ServerIds};

/// The RFC 3261 default of T1, which clients use whatever T1 this layer is configured with.
pub const RFC_T1: Duration = Duration::from_millis(500);

/// Timer values (RFC 3261 §17, Table 4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// RTT estimate; A, E and G start at T1, B, F, H (and L, M) are 64·T1, J is 64·T1 but
    /// never below 64·[`RFC_T1`] ([`Config::timer_j`]). Default 500 ms. Raised to 1 ms if
    /// smaller.
    pub t1: Duration,
    /// Cap of the non-INVITE request and INVITE response retransmit interval. Default 4 s.
    /// Raised to 1 ms if smaller.
    pub t2: Duration,
    /// Maximum time a message stays in the network: timers I and K. Default 5 s.
    pub t4: Duration,
    /// Timer D, how long a client INVITE transaction absorbs retransmitted non-2xx responses
    /// over an unreliable transport (RFC 3261: at least 32 s). Default 32 s.
    pub timer_d: Duration,
    /// A server INVITE transaction sends 100 (Trying) itself if the TU has not sent any
    /// response this long after the INVITE arrived (§17.2.1 "200 ms"). `Some(ZERO)` sends it at
    /// once, `None` never. Default 200 ms.
    pub trying_delay: Option<Duration>,
    /// RFC 6026 *Accepted* state for INVITE transactions after a 2xx (see the module docs).
    /// `false` gives plain RFC 3261: both sides terminate on a 2xx, and later 2xx
    /// retransmissions reach the TU as [`Event::StrayResponse`]. Default `true`.
    pub accepted_state: bool,
    /// Completed non-INVITE server transactions (UDP, Timer J) the table holds before its
    /// first growth; it never shrinks below this. Growth and shrinking are incremental (see
    /// `transaction/completed.rs`). Default 1024.
    pub completed_capacity: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
            timer_d: Duration::from_secs(32),
            trying_delay: Some(Duration::from_millis(200)),
            accepted_state: true,
            completed_capacity: 1024,
        }
    }
}

impl Config {
    /// 64·T1: timers B, F, H, L, M.
    pub fn t1_x64(&self) -> Duration {
        self.t1.saturating_mul(64)
    }

    /// Timer J over an unreliable transport: how long a completed non-INVITE server
    /// transaction absorbs retransmissions of its request (re-sending its final response).
    /// RFC 3261 makes it 64·T1 so that it outlives the client's retransmissions (Timer E, up
    /// to Timer F = 64·T1 of the *client*). Clients (phones, SIPp) use the RFC's T1 of 500 ms
    /// whatever ours is, so a T1 configured below that (a LAN, the tests' 100 ms) does not
    /// shorten it: 64·max(T1, 500 ms). With a shorter J a retransmission that arrives after
    /// it (its earlier copies and our final responses lost, as under a flood) would be a new
    /// request: an authorized REGISTER authenticated again, its nonce-count a "replay"
    /// (issue 16).
    pub fn timer_j(&self) -> Duration {
        self.t1.max(RFC_T1).saturating_mul(64)
    }

    /// How long a non-INVITE server transaction may wait for the TU's final response (Trying
    /// or Proceeding) before it is ended as abandoned: 2·64·max(T1, 500 ms), 64 s by default
    /// (checked by a sweep every eighth of that, so it ends within 1.125 times the bound).
    /// RFC 3261 gives those states no timer (the TU always answers); one the TU lost (a bug,
    /// a dropped internal message) would live for ever. The client gives up at its Timer F,
    /// 64·T1 of *its* T1 (32 s for the RFC's), so by then no response can matter; twice that
    /// leaves a client with a T1 up to 1 s its whole Timer F. Nothing is sent (the client has
    /// stopped listening); [`TransactionLayer::abandoned`] counts them.
    ///
    /// INVITE server transactions get no such bound: the gateway lets a call ring as long as
    /// the caller waits (no Timer C of its own), so only the TU can end one (a final response,
    /// the caller's CANCEL).
    pub fn non_invite_abandon(&self) -> Duration {
        self.timer_j().saturating_mul(2)
    }

    fn sanitized(mut self) -> Self {
        let min = Duration::from_millis(1);
        self.t1 = self.t1.max(min);
        self.t2 = self.t2.max(min);
        self
    }
}

/// Reliability of the transport a transaction runs over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// UDP: the transaction layer retransmits.
    Unreliable,
    /// TCP, TLS, SCTP, WebSocket: no retransmissions, no lingering.
    Reliable,
}

impl Transport {
    /// Reliable transports carry no transaction-layer retransmissions.
    pub fn is_reliable(self) -> bool {
        self == Transport::Reliable
    }
}

/// The kind of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// INVITE client transaction (§17.1.1).
    InviteClient,
    /// Non-INVITE client transaction (§17.1.2).
    NonInviteClient,
    /// INVITE server transaction (§17.2.1).
    InviteServer,
    /// Non-INVITE server transaction (§17.2.2).
    NonInviteServer,
}

/// The state of a live transaction. *Terminated* transactions are gone (the TU got
/// [`Event::Terminated`]), so [`TransactionLayer::state`] returns `None` for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// INVITE client: request sent, no response yet.
    Calling,
    /// Non-INVITE client: request sent, no response yet; non-INVITE server: request received,
    /// no response sent yet.
    Trying,
    /// A provisional response was received (client) or sent (server); a server INVITE
    /// transaction starts here.
    Proceeding,
    /// A final (non-2xx for INVITE) response was received or sent; absorbing retransmissions.
    Completed,
    /// INVITE server: the ACK for the non-2xx final response arrived (Timer I running).
    Confirmed,
    /// INVITE client or server after a 2xx (RFC 6026; Timer M / Timer L running).
    Accepted,
}

/// A message to put on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit<D = SocketAddr> {
    /// The transaction that sends it (`None` for [`TransactionLayer::send_stateless`]); pass
    /// it to [`TransactionLayer::transport_error`] if sending fails.
    pub key: Option<TransactionKey>,
    /// Where to send it.
    pub dest: D,
    /// Over which kind of transport (as given when the transaction was created).
    pub transport: Transport,
    /// The message; serialise with `to_string()`.
    pub message: SipMessage,
    /// True when this repeats something already sent (timer-driven retransmission, a response
    /// or ACK re-sent because the peer retransmitted).
    pub retransmission: bool,
}

/// What the transaction user must see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<D = SocketAddr> {
    /// A new request created server transaction `key`; answer with
    /// [`TransactionLayer::send_response`]. Retransmissions are absorbed and never reported.
    /// A CANCEL that matches no INVITE server transaction also arrives here (answer 481).
    Request {
        key: TransactionKey,
        request: Request,
        source: D,
        transport: Transport,
    },
    /// A CANCEL (server transaction `key`, answer it 200) matching the INVITE server
    /// transaction `invite` (§9.2). If that one is still Proceeding, the TU should answer it
    /// 487.
    Cancel {
        key: TransactionKey,
        invite: TransactionKey,
        request: Request,
        source: D,
        transport: Transport,
    },
    /// An ACK that no transaction absorbed: the ACK for a 2xx (`invite` is `None`, or the key
    /// of the INVITE server transaction in the Accepted state it matched).
    Ack {
        invite: Option<TransactionKey>,
        request: Request,
        source: D,
        transport: Transport,
    },
    /// A response for client transaction `key`: each provisional, the final response once,
    /// and in the Accepted state every further 2xx.
    Response {
        key: TransactionKey,
        response: Response,
    },
    /// A response that matches no client transaction (e.g. a 2xx retransmission after the
    /// INVITE transaction ended); §18.1.2 hands it to the core.
    StrayResponse {
        response: Response,
        source: D,
        transport: Transport,
    },
    /// Timer B or F (no final response) or H (no ACK for our non-2xx final response) fired.
    /// [`Event::Terminated`] follows.
    Timeout { key: TransactionKey },
    /// [`TransactionLayer::transport_error`] was reported for the transaction.
    /// [`Event::Terminated`] follows.
    TransportError { key: TransactionKey },
    /// The transaction is gone (every transaction ends with exactly one of these).
    Terminated { key: TransactionKey },
}

/// Why an input was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("missing {0} header")]
    MissingHeader(&'static str),
    #[error("malformed {0} header")]
    MalformedHeader(&'static str),
    #[error("the top Via has no RFC 3261 branch (z9hG4bK...)")]
    NoRfc3261Branch,
    #[error("CSeq method {cseq} does not match request method {method}")]
    CSeqMethodMismatch { method: Method, cseq: Method },
    #[error("ACK is not a transaction; send it with send_stateless")]
    AckNotATransaction,
    #[error("transaction {0} already exists")]
    DuplicateTransaction(TransactionKey),
    #[error("no transaction {0}")]
    UnknownTransaction(TransactionKey),
    #[error("{0} is not a server transaction")]
    NotServerTransaction(TransactionKey),
    #[error("status code {0} outside 100..=699")]
    InvalidStatus(u16),
    #[error("a transaction in state {state:?} cannot send a {status} response")]
    InvalidState { state: State, status: u16 },
    #[error("{0} is not a pending client INVITE transaction")]
    NotCancellable(TransactionKey),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Slot {
    /// A (INVITE client), E (non-INVITE client), G (INVITE server).
    Retransmit = 0,
    /// B, F, H.
    Timeout = 1,
    /// D, I, J, K, L, M: end of the transaction.
    Linger = 2,
    /// Automatic 100 (Trying) of an INVITE server transaction.
    Trying = 3,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    Terminate,
    /// A non-INVITE server transaction sent its final response over an unreliable transport:
    /// it becomes a compact entry that only absorbs retransmissions until Timer J.
    Compact,
}

type TimerHeap = BinaryHeap<Reverse<(Instant, u64, Slot)>>;

/// The queues a transaction writes to while the layer holds a borrow of it.
struct Io<'a, D> {
    cfg: &'a Config,
    heap: &'a mut TimerHeap,
    transmits: &'a mut VecDeque<Transmit<D>>,
    events: &'a mut VecDeque<Event<D>>,
}

/// The request that created a transaction and its top Via value (for ACK and CANCEL).
struct Origin {
    request: Request,
    top_via: String,
}

/// A live transaction. Held boxed in the layer's table (issue 16: the table's slots are a
/// pointer each, not the whole struct, so a table grown for a peak of INVITE transactions
/// lingering in Timer L/M costs 16 bytes per slot, and its rehash copies pointers).
///
/// What it keeps shrinks with its state: once it lingers (Timer D, I, K, L, M: it only absorbs
/// retransmissions and passes 2xx/ACK to the TU) it drops the request (`origin`); an INVITE
/// server transaction keeps its final response only while Timer G may re-send it (Completed):
/// Accepted keeps a fingerprint of its 2xx, Confirmed nothing. At 2,000 calls/s every call
/// leaves two INVITE transactions in Timer L/M for 32 s, 128,000 of them.
struct Tx<D> {
    id: u64,
    key: TransactionKey,
    kind: Kind,
    state: State,
    transport: Transport,
    /// A response was sent (server) at some point; kept when `last_response` is dropped.
    responded: bool,
    seq: u32,
    peer: D,
    /// The request that created the transaction and its top Via, until the transaction
    /// lingers (see above); `None` after.
    origin: Option<Box<Origin>>,
    /// Server: the last response sent (re-sent on request retransmissions; an INVITE server
    /// transaction drops it once it is Accepted or Confirmed: nothing re-sends it then).
    last_response: Option<Box<Response>>,
    /// INVITE server, Accepted: a fingerprint of the last 2xx sent through it, to tell the
    /// TU's retransmission of that 2xx ([`Transmit::retransmission`]) from a new one.
    accepted_2xx: Option<u64>,
    /// Client INVITE: the ACK generated for the non-2xx final response.
    ack: Option<Box<Request>>,
    /// Current retransmission interval (A, E, G).
    interval: Duration,
    timers: [Option<Instant>; 4],
    /// Server INVITE of an RFC 2543 peer: its entry in the ACK index, and the To tag of the
    /// final response it sent (the ACK must carry it).
    legacy_ack: Option<Box<LegacyAckId>>,
    response_to_tag: Option<Box<str>>,
    /// When the transaction was created (server: its request arrived).
    created: Instant,
}

impl<D: Clone> Tx<D> {
    fn transmit(&self, io: &mut Io<'_, D>, message: SipMessage, retransmission: bool) {
        io.transmits.push_back(Transmit {
            key: Some(self.key.clone()),
            dest: self.peer.clone(),
            transport: self.transport,
            message,
            retransmission,
        });
    }

    fn arm(&mut self, io: &mut Io<'_, D>, slot: Slot, now: Instant, after: Duration) {
        // An overflowing deadline is "never".
        let at = now.checked_add(after);
        self.timers[slot as usize] = at;
        if let Some(at) = at {
            io.heap.push(Reverse((at, self.id, slot)));
        }
    }

    fn disarm(&mut self, slot: Slot) {
        self.timers[slot as usize] = None;
    }

    /// Enter a state that ends after `after` (D, I, J, K, L, M); zero ends it now.
    fn linger(&mut self, io: &mut Io<'_, D>, now: Instant, after: Duration) -> Flow {
        self.disarm(Slot::Retransmit);
        self.disarm(Slot::Timeout);
        self.disarm(Slot::Trying);
        if after.is_zero() {
            return Flow::Terminate;
        }
        // Nothing re-sends the request or builds an ACK or CANCEL from it from now on.
        self.origin = None;
        self.arm(io, Slot::Linger, now, after);
        Flow::Continue
    }

    fn request(&self) -> Option<&Request> {
        self.origin.as_deref().map(|o| &o.request)
    }

    /// Records a response sent by this server transaction.
    fn sent(&mut self, response: Response) {
        self.responded = true;
        self.last_response = Some(Box::new(response));
    }

    /// D/I/J/K: T on unreliable transports, zero on reliable ones.
    fn unreliable_only(&self, d: Duration) -> Duration {
        if self.transport.is_reliable() {
            Duration::ZERO
        } else {
            d
        }
    }

    /// A non-INVITE server transaction still waiting for the TU's final response.
    fn unanswered(&self) -> bool {
        self.kind == Kind::NonInviteServer
            && matches!(self.state, State::Trying | State::Proceeding)
    }

    fn set_state(&mut self, state: State) {
        if self.state != state {
            debug!(key = %self.key, from = ?self.state, to = ?state, "sip transaction state");
            self.state = state;
        }
    }

    fn report(&self, io: &mut Io<'_, D>, response: Response) {
        io.events.push_back(Event::Response {
            key: self.key.clone(),
            response,
        });
    }

    /// A response matched this client transaction.
    fn on_response(&mut self, io: &mut Io<'_, D>, response: Response, now: Instant) -> Flow {
        let code = response.status_code.code();
        let provisional = code < 200;
        match (self.kind, self.state) {
            (Kind::NonInviteClient, State::Trying | State::Proceeding) => {
                if provisional {
                    self.set_state(State::Proceeding);
                    self.report(io, response);
                    return Flow::Continue;
                }
                self.set_state(State::Completed);
                self.report(io, response);
                let k = self.unreliable_only(io.cfg.t4);
                self.linger(io, now, k)
            }
            (Kind::InviteClient, State::Calling | State::Proceeding) => {
                self.disarm(Slot::Retransmit);
                self.disarm(Slot::Timeout);
                if provisional {
                    self.set_state(State::Proceeding);
                    self.report(io, response);
                    return Flow::Continue;
                }
                if code < 300 {
                    self.report(io, response);
                    if !io.cfg.accepted_state {
                        return Flow::Terminate;
                    }
                    self.set_state(State::Accepted);
                    let m = io.cfg.t1_x64();
                    return self.linger(io, now, m);
                }
                if let Some(o) = self.origin.as_deref() {
                    let ack = build::ack(&o.request, &response, &o.top_via, self.seq);
                    self.transmit(io, ack.clone().into(), false);
                    self.ack = Some(Box::new(ack));
                }
                self.set_state(State::Completed);
                self.report(io, response);
                let d = self.unreliable_only(io.cfg.timer_d);
                self.linger(io, now, d)
            }
            (Kind::InviteClient, State::Accepted) if (200..300).contains(&code) => {
                self.report(io, response);
                Flow::Continue
            }
            (Kind::InviteClient, State::Completed) if code >= 300 => {
                if let Some(ack) = &self.ack {
                    self.transmit(io, (**ack).clone().into(), true);
                }
                Flow::Continue
            }
            _ => {
                trace!(key = %self.key, code, state = ?self.state, "response absorbed");
                Flow::Continue
            }
        }
    }

    /// The request that created this server transaction arrived again.
    fn on_retransmission(&mut self, io: &mut Io<'_, D>) {
        // Non-INVITE: Proceeding and Completed re-send (§17.2.2); INVITE: Proceeding re-sends
        // the last provisional, Completed the final response (§17.2.1). Trying (nothing sent
        // yet), Confirmed and Accepted absorb.
        let resend = matches!(self.state, State::Proceeding | State::Completed);
        match &self.last_response {
            Some(r) if resend => self.transmit(io, (**r).clone().into(), true),
            _ => trace!(key = %self.key, state = ?self.state, "request retransmission absorbed"),
        }
    }

    /// An ACK matched this INVITE server transaction.
    fn on_ack(
        &mut self,
        io: &mut Io<'_, D>,
        request: Request,
        source: D,
        transport: Transport,
        now: Instant,
    ) -> Flow {
        match self.state {
            State::Completed => {
                self.set_state(State::Confirmed);
                // Confirmed absorbs: the final response is never re-sent.
                self.last_response = None;
                let i = self.unreliable_only(io.cfg.t4);
                self.linger(io, now, i)
            }
            State::Accepted => {
                io.events.push_back(Event::Ack {
                    invite: Some(self.key.clone()),
                    request,
                    source,
                    transport,
                });
                Flow::Continue
            }
            _ => {
                trace!(key = %self.key, state = ?self.state, "ACK absorbed");
                Flow::Continue
            }
        }
    }

    /// The TU sends a response through this server transaction.
    fn send_response(
        &mut self,
        io: &mut Io<'_, D>,
        response: Response,
        now: Instant,
    ) -> Result<Flow, Error> {
        let code = response.status_code.code();
        let invalid = Error::InvalidState {
            state: self.state,
            status: code,
        };
        let provisional = code < 200;
        match (self.kind, self.state) {
            (Kind::NonInviteServer, State::Trying | State::Proceeding) => {
                self.transmit(io, response.clone().into(), false);
                self.sent(response);
                if provisional {
                    self.set_state(State::Proceeding);
                    return Ok(Flow::Continue);
                }
                self.set_state(State::Completed);
                let j = self.unreliable_only(io.cfg.timer_j());
                if j.is_zero()
                    || j > completed::MAX_LINGER
                    || now.checked_add(j).is_none()
                    || !Completed::<D>::takes(&self.key)
                    || self.origin.is_none()
                {
                    return Ok(self.linger(io, now, j));
                }
                Ok(Flow::Compact)
            }
            (Kind::InviteServer, State::Proceeding) => {
                self.disarm(Slot::Trying);
                self.transmit(io, response.clone().into(), false);
                // Only an RFC 2543 peer's ACK is matched by it.
                if !provisional && self.legacy_ack.is_some() {
                    self.response_to_tag = parse::field_tag(&response.headers, parse::Field::To)
                        .ok()
                        .flatten()
                        .map(String::into_boxed_str);
                }
                self.sent(response);
                if provisional {
                    return Ok(Flow::Continue);
                }
                if code < 300 {
                    if !io.cfg.accepted_state {
                        return Ok(Flow::Terminate);
                    }
                    self.set_state(State::Accepted);
                    // Accepted absorbs INVITE retransmissions without re-sending (the TU
                    // retransmits its 2xx itself): a fingerprint of it is all that is kept.
                    self.accepted_2xx = self.last_response.take().map(|r| fingerprint(&r));
                    let l = io.cfg.t1_x64();
                    return Ok(self.linger(io, now, l));
                }
                self.set_state(State::Completed);
                // From here only the final response is re-sent (Timer G), never built from
                // the request.
                self.origin = None;
                if !self.transport.is_reliable() {
                    self.interval = io.cfg.t1;
                    self.arm(io, Slot::Retransmit, now, io.cfg.t1);
                }
                self.arm(io, Slot::Timeout, now, io.cfg.t1_x64());
                Ok(Flow::Continue)
            }
            (Kind::InviteServer, State::Accepted) if (200..300).contains(&code) => {
                let print = fingerprint(&response);
                let again = self.accepted_2xx == Some(print);
                self.transmit(io, response.into(), again);
                self.accepted_2xx = Some(print);
                Ok(Flow::Continue)
            }
            _ => Err(invalid),
        }
    }

    fn on_timer(&mut self, io: &mut Io<'_, D>, slot: Slot, now: Instant) -> Flow {
        match slot {
            Slot::Retransmit => {
                let message: SipMessage = match (self.kind, self.state) {
                    (Kind::NonInviteClient, State::Trying) => match self.request() {
                        Some(r) => {
                            let r = r.clone().into();
                            self.interval = self.interval.saturating_mul(2).min(io.cfg.t2);
                            r
                        }
                        None => return Flow::Continue,
                    },
                    (Kind::NonInviteClient, State::Proceeding) => match self.request() {
                        Some(r) => {
                            let r = r.clone().into();
                            self.interval = io.cfg.t2;
                            r
                        }
                        None => return Flow::Continue,
                    },
                    (Kind::InviteClient, State::Calling) => match self.request() {
                        Some(r) => {
                            let r = r.clone().into();
                            self.interval = self.interval.saturating_mul(2);
                            r
                        }
                        None => return Flow::Continue,
                    },
                    (Kind::InviteServer, State::Completed) => match &self.last_response {
                        Some(r) => {
                            self.interval = self.interval.saturating_mul(2).min(io.cfg.t2);
                            (**r).clone().into()
                        }
                        None => return Flow::Continue,
                    },
                    _ => return Flow::Continue,
                };
                trace!(key = %self.key, next = ?self.interval, "retransmission");
                self.transmit(io, message, true);
                let interval = self.interval;
                self.arm(io, Slot::Retransmit, now, interval);
                Flow::Continue
            }
            Slot::Timeout => match (self.kind, self.state) {
                (Kind::NonInviteClient, State::Trying | State::Proceeding)
                | (Kind::InviteClient, State::Calling)
                | (Kind::InviteServer, State::Completed) => {
                    debug!(key = %self.key, state = ?self.state, "sip transaction timeout");
                    io.events.push_back(Event::Timeout {
                        key: self.key.clone(),
                    });
                    Flow::Terminate
                }
                _ => Flow::Continue,
            },
            Slot::Linger => Flow::Terminate,
            Slot::Trying => {
                if self.kind == Kind::InviteServer
                    && self.state == State::Proceeding
                    && !self.responded
                {
                    self.send_trying(io);
                }
                Flow::Continue
            }
        }
    }

    fn send_trying(&mut self, io: &mut Io<'_, D>) {
        let Some(request) = self.request() else {
            return;
        };
        let trying = build::trying(request);
        self.transmit(io, trying.clone().into(), false);
        self.sent(trying);
    }
}

/// All transactions of one SIP element. `D` identifies a peer (see the module docs).
pub struct TransactionLayer<D = SocketAddr> {
    cfg: Config,
    next_id: u64,
    txs: HashMap<u64, Box<Tx<D>>>,
    index: HashMap<TransactionKey, u64>,
    /// Completed non-INVITE server transactions over UDP, until Timer J.
    completed: Completed<D>,
    /// RFC 2543 INVITE server transactions by the fields their ACK is matched on.
    legacy_acks: HashMap<LegacyAckId, Vec<TransactionKey>>,
    heap: TimerHeap,
    transmits: VecDeque<Transmit<D>>,
    events: VecDeque<Event<D>>,
    /// The next sweep for non-INVITE server transactions without a final response
    /// ([`Config::non_invite_abandon`]); armed while one may be live. A sweep instead of a
    /// timer per transaction: nearly all are answered within milliseconds, and a heap entry
    /// each would stay until its deadline (issue 16's REGISTER rates: hundreds of thousands).
    abandon_sweep: Option<Instant>,
    /// Live non-INVITE server transactions in Trying or Proceeding (the sweep's work).
    unanswered: usize,
    /// Non-INVITE server transactions ended without a final response.
    abandoned: u64,
    /// Requests that matched a completed transaction with other header fields than its
    /// request's, so got no response from it.
    mismatched_retransmissions: u64,
}

impl<D: Clone> Default for TransactionLayer<D> {
    fn default() -> Self {
        Self::new(Config::default())
    }
}

impl<D: Clone> TransactionLayer<D> {
    /// A layer with the given timer values.
    pub fn new(cfg: Config) -> Self {
        let completed_capacity = cfg.completed_capacity;
        Self {
            cfg: cfg.sanitized(),
            next_id: 0,
            txs: HashMap::new(),
            index: HashMap::new(),
            completed: Completed::with_capacity(completed_capacity),
            legacy_acks: HashMap::new(),
            heap: BinaryHeap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            abandon_sweep: None,
            unanswered: 0,
            abandoned: 0,
            mismatched_retransmissions: 0,
        }
    }

    /// The timer values in use.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Number of live transactions (including completed non-INVITE server transactions
    /// waiting for Timer J).
    pub fn len(&self) -> usize {
        self.txs.len() + self.completed.len()
    }

    /// Requests that matched a completed non-INVITE server transaction but whose header
    /// fields differ from those of its request (not a retransmission of it, §17.2.3 allows
    /// only identical ones), so were dropped. Cumulative.
    pub fn mismatched_retransmissions(&self) -> u64 {
        self.mismatched_retransmissions
    }

    /// Non-INVITE server transactions ended because their TU sent no final response within
    /// [`Config::non_invite_abandon`] (each reported only as [`Event::Terminated`]; nothing
    /// was sent). Cumulative.
    pub fn abandoned(&self) -> u64 {
        self.abandoned
    }

    /// True when no transaction is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The state of a live transaction.
    pub fn state(&self, key: &TransactionKey) -> Option<State> {
        self.tx(key)
            .map(|t| t.state)
            .or_else(|| self.completed.contains(key).then_some(State::Completed))
    }

    /// The kind of a live transaction.
    pub fn kind(&self, key: &TransactionKey) -> Option<Kind> {
        self.tx(key).map(|t| t.kind).or_else(|| {
            self.completed
                .contains(key)
                .then_some(Kind::NonInviteServer)
        })
    }

    /// The request that created a live transaction, while the transaction may still need it:
    /// `None` once it lingers (Timer D, I, K, L, M: after a final response, an INVITE's 2xx
    /// included) and for a non-INVITE server transaction that sent its final response over
    /// UDP (it keeps only the encoded response, to answer retransmissions).
    pub fn request(&self, key: &TransactionKey) -> Option<&Request> {
        self.tx(key).and_then(Tx::request)
    }

    /// True when `request` retransmits a request whose server transaction has not sent a
    /// final response yet (Trying or Proceeding): the layer would absorb it, or re-send a
    /// provisional, so overload control may drop it. False for anything else (new requests,
    /// ACK, retransmissions a final response is re-sent for, unparseable ones).
    pub fn is_pending_retransmission(&self, request: &Request) -> bool {
        if request.method == Method::Ack {
            return false;
        }
        let (Ok(via), Ok(cseq)) = (
            parse::top_via(&request.headers),
            parse::cseq(&request.headers),
        ) else {
            return false;
        };
        let Ok(ids) = ServerIds::of(request, &via, &cseq) else {
            return false;
        };
        self.tx(&ids.key(request.method))
            .is_some_and(|t| matches!(t.state, State::Trying | State::Proceeding))
    }

    /// Completed non-INVITE server transactions held for Timer J, and the bytes they take
    /// (table slots, queue, each one's key and encoded response on the heap).
    pub fn completed_footprint(&self) -> (usize, usize) {
        (self.completed.len(), self.completed.footprint())
    }

    /// Completed non-INVITE server transactions held for Timer J (O(1), unlike
    /// [`completed_footprint`](Self::completed_footprint)).
    pub fn completed_footprint_len(&self) -> usize {
        self.completed.len()
    }

    /// Capacity (entries) of the completed-transaction table, to show it shrinks.
    pub fn completed_capacity(&self) -> usize {
        self.completed.capacity()
    }

    fn tx(&self, key: &TransactionKey) -> Option<&Tx<D>> {
        self.index
            .get(key)
            .and_then(|id| self.txs.get(id))
            .map(|t| &**t)
    }

    /// Starts a client transaction for `request` (anything but ACK), sent to `dest`.
    ///
    /// The request must carry its final top Via with an RFC 3261 branch (`z9hG4bK…`, e.g.
    /// `rsip::param::Branch::default()`) and a CSeq whose method is the request's. The request
    /// is queued for transmission at once; over an unreliable transport Timer A/E is armed,
    /// and Timer B/F in any case.
    pub fn send_request(
        &mut self,
        request: Request,
        transport: Transport,
        dest: D,
        now: Instant,
    ) -> Result<TransactionKey, Error> {
        if request.method == Method::Ack {
            return Err(Error::AckNotATransaction);
        }
        let via = parse::top_via(&request.headers)?;
        let cseq = parse::cseq(&request.headers)?;
        check_cseq_method(&request, &cseq)?;
        let branch = via.rfc3261_branch().ok_or(Error::NoRfc3261Branch)?;
        let key = TransactionKey::client(branch, request.method);
        if self.index.contains_key(&key) {
            return Err(Error::DuplicateTransaction(key));
        }
        let invite = request.method == Method::Invite;
        let (kind, state) = if invite {
            (Kind::InviteClient, State::Calling)
        } else {
            (Kind::NonInviteClient, State::Trying)
        };
        let id = self.alloc_id();
        let mut tx = Tx {
            id,
            key: key.clone(),
            kind,
            state,
            transport,
            responded: false,
            peer: dest,
            origin: Some(Box::new(Origin {
                request,
                top_via: via.raw,
            })),
            seq: cseq.seq,
            last_response: None,
            accepted_2xx: None,
            ack: None,
            interval: self.cfg.t1,
            timers: [None; 4],
            legacy_ack: None,
            response_to_tag: None,
            created: now,
        };
        let mut io = Io {
            cfg: &self.cfg,
            heap: &mut self.heap,
            transmits: &mut self.transmits,
            events: &mut self.events,
        };
        if let Some(r) = tx.request() {
            tx.transmit(&mut io, r.clone().into(), false);
        }
        let (t1, t1_x64) = (io.cfg.t1, io.cfg.t1_x64());
        if !transport.is_reliable() {
            tx.arm(&mut io, Slot::Retransmit, now, t1);
        }
        tx.arm(&mut io, Slot::Timeout, now, t1_x64);
        debug!(key = %key, ?state, "sip client transaction");
        self.index.insert(key.clone(), id);
        self.txs.insert(id, Box::new(tx));
        Ok(key)
    }

    /// Sends `response` through server transaction `key`.
    ///
    /// Non-INVITE: any number of 1xx, then one final response (Timer J). INVITE: any number of
    /// 1xx; then a 2xx (Accepted, Timer L; further 2xx allowed until it ends) or a 3xx–6xx
    /// (Completed: Timer G retransmits it over unreliable transports until the ACK; Timer H).
    /// Anything else is [`Error::InvalidState`] and nothing is sent.
    pub fn send_response(
        &mut self,
        key: &TransactionKey,
        response: Response,
        now: Instant,
    ) -> Result<(), Error> {
        if !key.is_server() {
            return Err(Error::NotServerTransaction(key.clone()));
        }
        let code = response.status_code.code();
        if !(100..=699).contains(&code) {
            return Err(Error::InvalidStatus(code));
        }
        let Some(id) = self.index.get(key).copied() else {
            if self.completed.contains(key) {
                return Err(Error::InvalidState {
                    state: State::Completed,
                    status: code,
                });
            }
            return Err(Error::UnknownTransaction(key.clone()));
        };
        let Some(tx) = self.txs.get_mut(&id) else {
            return Err(Error::UnknownTransaction(key.clone()));
        };
        let mut io = Io {
            cfg: &self.cfg,
            heap: &mut self.heap,
            transmits: &mut self.transmits,
            events: &mut self.events,
        };
        let was_unanswered = tx.unanswered();
        let flow = tx.send_response(&mut io, response, now)?;
        if was_unanswered && !tx.unanswered() {
            self.unanswered -= 1;
        }
        match flow {
            Flow::Terminate => self.terminate_id(id),
            Flow::Compact => self.compact(id, now),
            Flow::Continue => {}
        }
        Ok(())
    }

    /// Builds the CANCEL for the pending client INVITE transaction `key` (§9.1). Send it with
    /// [`send_request`](Self::send_request) (it gets its own non-INVITE client transaction)
    /// and, per §9.1, only once a provisional response has arrived
    /// ([`State::Proceeding`]).
    pub fn build_cancel(&self, key: &TransactionKey) -> Result<Request, Error> {
        match self.tx(key) {
            Some(tx)
                if tx.kind == Kind::InviteClient
                    && matches!(tx.state, State::Calling | State::Proceeding) =>
            {
                match tx.origin.as_deref() {
                    Some(o) => Ok(build::cancel(&o.request, &o.top_via, tx.seq)),
                    None => Err(Error::NotCancellable(key.clone())),
                }
            }
            _ => Err(Error::NotCancellable(key.clone())),
        }
    }

    /// Gives up the INVITE client transaction `key` while it is still Calling (no provisional
    /// response yet): the request is never retransmitted again. §9.1 forbids a CANCEL before a
    /// provisional response, so the transaction stays until Timer B to report a late response:
    /// a 1xx lets the TU CANCEL ([`build_cancel`](Self::build_cancel)), a 2xx lets it ACK and
    /// BYE, a 3xx–6xx is ACKed here as usual. Returns false (and changes nothing) if `key` is
    /// not a Calling INVITE client transaction.
    pub fn abandon(&mut self, key: &TransactionKey) -> bool {
        let Some(id) = self.index.get(key).copied() else {
            return false;
        };
        match self.txs.get_mut(&id) {
            Some(tx) if tx.kind == Kind::InviteClient && tx.state == State::Calling => {
                tx.disarm(Slot::Retransmit);
                debug!(key = %key, "sip client INVITE abandoned: no more retransmissions");
                true
            }
            _ => false,
        }
    }

    /// Queues a message outside any transaction (the ACK for a 2xx, a stateless response).
    pub fn send_stateless(&mut self, message: SipMessage, dest: D, transport: Transport) {
        self.transmits.push_back(Transmit {
            key: None,
            dest,
            transport,
            message,
            retransmission: false,
        });
    }

    /// Feeds a message received from `source` over `transport`.
    ///
    /// A request creates a server transaction ([`Event::Request`] / [`Event::Cancel`]) or is
    /// absorbed by the one it retransmits (which re-sends its last response if it has one); an
    /// ACK completes the INVITE server transaction it matches or is passed up
    /// ([`Event::Ack`]). A response goes to its client transaction or up as
    /// [`Event::StrayResponse`]. A message without a usable Via or CSeq is an error and
    /// changes nothing.
    pub fn on_message(
        &mut self,
        message: SipMessage,
        source: D,
        transport: Transport,
        now: Instant,
    ) -> Result<(), Error> {
        match message {
            SipMessage::Request(r) => self.on_request(r, source, transport, now),
            SipMessage::Response(r) => self.on_response(r, source, transport, now),
        }
    }

    fn on_response(
        &mut self,
        response: Response,
        source: D,
        transport: Transport,
        now: Instant,
    ) -> Result<(), Error> {
        let code = response.status_code.code();
        if !(100..=699).contains(&code) {
            return Err(Error::InvalidStatus(code));
        }
        let via = parse::top_via(&response.headers)?;
        let cseq = parse::cseq(&response.headers)?;
        let id = via
            .branch
            .as_deref()
            .map(|b| TransactionKey::client(b, cseq.method))
            .and_then(|k| self.index.get(&k).copied());
        let Some(tx) = id.and_then(|id| self.txs.get_mut(&id)) else {
            trace!(code, "stray response");
            self.events.push_back(Event::StrayResponse {
                response,
                source,
                transport,
            });
            return Ok(());
        };
        let id = tx.id;
        let mut io = Io {
            cfg: &self.cfg,
            heap: &mut self.heap,
            transmits: &mut self.transmits,
            events: &mut self.events,
        };
        if tx.on_response(&mut io, response, now) == Flow::Terminate {
            self.terminate_id(id);
        }
        Ok(())
    }

    fn on_request(
        &mut self,
        request: Request,
        source: D,
        transport: Transport,
        now: Instant,
    ) -> Result<(), Error> {
        let via = parse::top_via(&request.headers)?;
        let cseq = parse::cseq(&request.headers)?;
        check_cseq_method(&request, &cseq)?;
        let ids = ServerIds::of(&request, &via, &cseq)?;
        let mut io = Io {
            cfg: &self.cfg,
            heap: &mut self.heap,
            transmits: &mut self.transmits,
            events: &mut self.events,
        };

        if request.method == Method::Ack {
            let id = match ids.legacy_ack() {
                None => self.index.get(&ids.key(Method::Invite)).copied(),
                // Several RFC 2543 INVITEs can share these fields (differing To tags): the
                // ACK belongs to the one whose final response carried the ACK's To tag.
                Some((ack_id, ack_to_tag)) => self
                    .legacy_acks
                    .get(&ack_id)
                    .into_iter()
                    .flatten()
                    .filter_map(|k| self.index.get(k).copied())
                    .find(|id| {
                        self.txs.get(id).is_some_and(|t| {
                            t.responded && t.response_to_tag.as_deref() == ack_to_tag
                        })
                    }),
            };
            match id.and_then(|id| self.txs.get_mut(&id)) {
                Some(tx) if tx.kind == Kind::InviteServer => {
                    let id = tx.id;
                    if tx.on_ack(&mut io, request, source, transport, now) == Flow::Terminate {
                        self.terminate_id(id);
                    }
                }
                _ => io.events.push_back(Event::Ack {
                    invite: None,
                    request,
                    source,
                    transport,
                }),
            }
            return Ok(());
        }

        let key = ids.key(request.method);
        if let Some(tx) = self
            .index
            .get(&key)
            .copied()
            .and_then(|id| self.txs.get_mut(&id))
        {
            tx.on_retransmission(&mut io);
            return Ok(());
        }
        match self.completed.reply(&key, &request) {
            // §17.2.2 Completed: the final response again, rebuilt from what was kept.
            Some(completed::Reply::Again {
                bytes,
                peer,
                transport,
            }) => {
                match crate::message::parse(&bytes) {
                    Ok(message) => io.transmits.push_back(Transmit {
                        key: Some(key),
                        dest: peer,
                        transport,
                        message,
                        retransmission: true,
                    }),
                    Err(e) => debug!(key = %key, error = %e, "stored final response unreadable"),
                }
                return Ok(());
            }
            Some(completed::Reply::Mismatch) => {
                // Same transaction, other header fields: not a retransmission of the request
                // the response answered, so it is not answered with that response.
                self.mismatched_retransmissions += 1;
                debug!(key = %key, "request matches a completed transaction but differs from its request: dropped");
                return Ok(());
            }
            None => {}
        }

        let invite = request.method == Method::Invite;
        let (kind, state) = if invite {
            (Kind::InviteServer, State::Proceeding)
        } else {
            (Kind::NonInviteServer, State::Trying)
        };
        let id = self.next_id;
        self.next_id += 1;
        let mut tx = Tx {
            id,
            key: key.clone(),
            kind,
            state,
            transport,
            responded: false,
            peer: source.clone(),
            origin: Some(Box::new(Origin {
                request: request.clone(),
                top_via: via.raw,
            })),
            seq: cseq.seq,
            last_response: None,
            accepted_2xx: None,
            ack: None,
            interval: io.cfg.t1,
            timers: [None; 4],
            legacy_ack: None,
            response_to_tag: None,
            created: now,
        };
        if invite {
            if let Some((ack_id, _)) = ids.legacy_ack() {
                self.legacy_acks
                    .entry(ack_id.clone())
                    .or_default()
                    .push(key.clone());
                tx.legacy_ack = Some(Box::new(ack_id));
            }
        }
        debug!(key = %key, ?state, "sip server transaction");
        let event = match request.method {
            Method::Cancel => {
                let invite = ids.key(Method::Invite);
                match self.index.get(&invite).and_then(|id| self.txs.get(id)) {
                    Some(t) if t.kind == Kind::InviteServer => Event::Cancel {
                        key: key.clone(),
                        invite,
                        request,
                        source,
                        transport,
                    },
                    _ => Event::Request {
                        key: key.clone(),
                        request,
                        source,
                        transport,
                    },
                }
            }
            _ => Event::Request {
                key: key.clone(),
                request,
                source,
                transport,
            },
        };
        io.events.push_back(event);
        if invite {
            match io.cfg.trying_delay {
                Some(d) if d.is_zero() => tx.send_trying(&mut io),
                Some(d) => tx.arm(&mut io, Slot::Trying, now, d),
                None => {}
            }
        } else {
            self.unanswered += 1;
            // The first one since the table had none re-arms it (an old deadline is stale).
            if self.unanswered == 1 || self.abandon_sweep.is_none() {
                self.abandon_sweep = now.checked_add(abandon_sweep_interval(&self.cfg));
            }
        }
        self.index.insert(key, id);
        self.txs.insert(id, Box::new(tx));
        Ok(())
    }

    /// Reports that sending a [`Transmit`] of transaction `key` failed (§17.1.4, §17.2.4):
    /// the transaction ends with [`Event::TransportError`] then [`Event::Terminated`].
    /// Returns false if the transaction no longer exists.
    pub fn transport_error(&mut self, key: &TransactionKey) -> bool {
        let Some(id) = self.index.get(key).copied() else {
            let Some(removed) = self.completed.remove(key) else {
                return false;
            };
            debug!(key = %key, "sip transaction transport error");
            self.events
                .push_back(Event::TransportError { key: key.clone() });
            self.events.push_back(Event::Terminated { key: removed });
            return true;
        };
        debug!(key = %key, "sip transaction transport error");
        self.events
            .push_back(Event::TransportError { key: key.clone() });
        self.terminate_id(id);
        true
    }

    /// Destroys transaction `key` at once ([`Event::Terminated`] follows), e.g. an INVITE
    /// client transaction whose CANCEL got no final response within 64·T1 (§9.1), or on
    /// shutdown. Returns false if it no longer exists.
    pub fn terminate(&mut self, key: &TransactionKey) -> bool {
        let Some(id) = self.index.get(key).copied() else {
            let Some(removed) = self.completed.remove(key) else {
                return false;
            };
            self.events.push_back(Event::Terminated { key: removed });
            return true;
        };
        self.terminate_id(id);
        true
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit<D>> {
        self.transmits.pop_front()
    }

    /// The next event for the transaction user.
    pub fn poll_event(&mut self) -> Option<Event<D>> {
        self.events.pop_front()
    }

    /// The earliest armed timer deadline, if any; call [`handle_timeout`](Self::handle_timeout)
    /// when the clock reaches it (and again after any input, as inputs arm timers).
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        let mut timer = None;
        while let Some(&Reverse((at, id, slot))) = self.heap.peek() {
            if self.is_live(at, id, slot) {
                timer = Some(at);
                break;
            }
            self.heap.pop();
        }
        let sweep = self.abandon_sweep.filter(|_| self.unanswered > 0);
        [timer, self.completed.next_deadline(), sweep]
            .into_iter()
            .flatten()
            .min()
    }

    fn is_live(&self, at: Instant, id: u64, slot: Slot) -> bool {
        self.txs
            .get(&id)
            .is_some_and(|t| t.timers[slot as usize] == Some(at))
    }

    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut due = Vec::new();
        while let Some(&Reverse((at, id, slot))) = self.heap.peek() {
            if at > now {
                break;
            }
            self.heap.pop();
            due.push((at, id, slot));
        }
        let mut expired = Vec::new();
        self.completed.expire(now, &mut expired);
        let mut expired = expired.into_iter().peekable();
        for (at, id, slot) in due {
            // Timer J of compact transactions, interleaved in deadline order.
            while let Some((_, key)) = expired.next_if(|(j, _)| *j <= at) {
                self.events.push_back(Event::Terminated { key });
            }
            if !self.is_live(at, id, slot) {
                continue;
            }
            let Some(tx) = self.txs.get_mut(&id) else {
                continue;
            };
            tx.disarm(slot);
            let mut io = Io {
                cfg: &self.cfg,
                heap: &mut self.heap,
                transmits: &mut self.transmits,
                events: &mut self.events,
            };
            if tx.on_timer(&mut io, slot, now) == Flow::Terminate {
                self.terminate_id(id);
            }
        }
        for (_, key) in expired {
            self.events.push_back(Event::Terminated { key });
        }
        if self.abandon_sweep.is_some_and(|t| t <= now) {
            self.sweep_abandoned(now);
        }
        self.shrink();
    }

    /// Ends the non-INVITE server transactions whose TU sent no final response within
    /// [`Config::non_invite_abandon`]; re-arms the sweep while others wait for one. Walks the
    /// live table only (answered UDP transactions are compact entries elsewhere).
    fn sweep_abandoned(&mut self, now: Instant) {
        let bound = self.cfg.non_invite_abandon();
        let mut gone = Vec::new();
        if self.unanswered > 0 {
            for tx in self.txs.values() {
                if tx.unanswered() && now.saturating_duration_since(tx.created) >= bound {
                    gone.push(tx.id);
                }
            }
        }
        for id in gone {
            if let Some(tx) = self.txs.get(&id) {
                debug!(key = %tx.key, state = ?tx.state,
                    "sip server transaction abandoned: no final response from the TU");
            }
            self.abandoned += 1;
            self.terminate_id(id);
        }
        self.abandon_sweep = if self.unanswered > 0 {
            now.checked_add(abandon_sweep_interval(&self.cfg))
        } else {
            None
        };
    }

    /// Turns live non-INVITE server transaction `id` (Completed, final response sent over an
    /// unreliable transport) into a compact entry that absorbs retransmissions until Timer J.
    fn compact(&mut self, id: u64, now: Instant) {
        let Some(tx) = self.txs.remove(&id) else {
            return;
        };
        self.index.remove(&tx.key);
        let (Some(request), Some(response)) = (tx.request(), tx.last_response.as_deref()) else {
            debug_assert!(
                false,
                "a completed transaction without its request or response"
            );
            return;
        };
        let response = crate::message::serialize_response(response);
        let deadline = now + self.cfg.timer_j();
        debug!(key = %tx.key, "sip server transaction completed: compact until Timer J");
        let kept = self.completed.insert(
            &tx.key,
            request,
            &response,
            tx.peer.clone(),
            tx.transport,
            deadline,
        );
        debug_assert!(kept, "send_response compacts only what the table takes");
    }

    /// Gives memory back once the live tables are mostly empty (no ratchet after a peak).
    fn shrink(&mut self) {
        const MIN: usize = 256;
        if self.txs.capacity() > MIN && self.txs.len() < self.txs.capacity() / 4 {
            self.txs.shrink_to((self.txs.len() * 2).max(MIN));
            self.index.shrink_to((self.index.len() * 2).max(MIN));
        }
        if self.heap.capacity() > MIN && self.heap.len() < self.heap.capacity() / 4 {
            self.heap.shrink_to((self.heap.len() * 2).max(MIN));
        }
        if self.transmits.capacity() > MIN && self.transmits.is_empty() {
            self.transmits.shrink_to(MIN);
        }
        if self.events.capacity() > MIN && self.events.is_empty() {
            self.events.shrink_to(MIN);
        }
    }

    fn alloc_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn terminate_id(&mut self, id: u64) {
        let Some(tx) = self.txs.remove(&id) else {
            return;
        };
        self.index.remove(&tx.key);
        if tx.unanswered() {
            self.unanswered -= 1;
        }
        if let Some(ack_id) = tx.legacy_ack.as_deref() {
            if let Some(keys) = self.legacy_acks.get_mut(ack_id) {
                keys.retain(|k| *k != tx.key);
                if keys.is_empty() {
                    self.legacy_acks.remove(ack_id);
                }
            }
        }
        debug!(key = %tx.key, state = ?tx.state, "sip transaction terminated");
        self.events.push_back(Event::Terminated { key: tx.key });
    }
}

/// A 64-bit fingerprint of a response (start line, headers, body): equal for a retransmitted
/// 2xx, different for another one but by a hash collision (it only sets
/// [`Transmit::retransmission`]).
fn fingerprint(response: &Response) -> u64 {
    use std::fmt::Write as _;
    use std::hash::Hasher as _;
    struct Sink(std::collections::hash_map::DefaultHasher);
    impl std::fmt::Write for Sink {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            self.0.write(s.as_bytes());
            Ok(())
        }
    }
    let mut sink = Sink(std::collections::hash_map::DefaultHasher::new());
    // Writing to the hasher cannot fail.
    let _ = write!(
        sink,
        "{} {}\r\n{}\r\n",
        response.version, response.status_code, response.headers
    );
    sink.0.write(&response.body);
    sink.0.finish()
}

/// How often [`TransactionLayer::sweep_abandoned`] runs while a non-INVITE server transaction
/// waits for its final response.
fn abandon_sweep_interval(cfg: &Config) -> Duration {
    (cfg.non_invite_abandon() / 8).max(Duration::from_millis(1))
}

fn check_cseq_method(request: &Request, cseq: &parse::CSeq) -> Result<(), Error> {
    if cseq.method == request.method {
        Ok(())
    } else {
        Err(Error::CSeqMethodMismatch {
            method: request.method,
            cseq: cseq.method,
        })
    }
}

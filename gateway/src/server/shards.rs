//! Register shards (issue 16): the SIP core's REGISTER work on `sip_shards` tasks of the
//! multi-thread runtime, so that the bulk of a call centre's signalling (every phone
//! refreshing) uses every core.
//!
//! **Routing.** The core's loop reads every transport event as before (the ban list and
//! overload control's queueing delay see all of them); an out-of-dialog REGISTER (no To tag)
//! is then handed, by a hash of its Call-ID ([`shard_of`]), to one shard instead of the core's
//! transaction layer. A phone keeps its Call-ID across refreshes and a retransmission keeps
//! it too, so a transaction, and the nonce it answers, stay on one shard. Everything else
//! (INVITE, in-dialog requests, SUBSCRIBE, OPTIONS, responses) stays on the core.
//!
//! **A shard** owns a sans-IO `TransactionLayer` for its REGISTER server transactions and an
//! [`Authenticator`]: it validates the request, answers the challenge statelessly itself
//! (within the source's challenge rate), verifies the digest (the CPU-heavy part), reports
//! failed authentications to the shared security guard (one `Mutex`, as before), and answers
//! 400/403/401 itself. A request that authenticated goes to the core as [`Authenticated`].
//!
//! **Shared state.** The nonce-count table (a `Mutex`, one lookup per authorized request) and
//! the nonce counter (an atomic) are shared by every authenticator, the core's included
//! (INVITE's 407), so a nonce is unique whoever issued it and a nonce-count is a replay
//! wherever it arrives; the device cache (credentials) and the guard are shared handles.
//!
//! **What stays on the core:** the location service (the bind phase, `Registrar::bind`, is
//! cheap: no lock at all since only the core touches bindings), its events (device state,
//! qualify), durable registrations (the 200 OK is still held until the commit; the core then
//! hands it back to the shard, [`Reply`]), the restored-contact and MWI-after-register
//! logic. So every behaviour of the unsharded path is kept; the core's work per REGISTER pair
//! shrinks to two routings and one bind.
//!
//! **Bounds.** Each shard's queue of transport events holds [`SHARD_QUEUE`]; what does not
//! fit is dropped (counted: `callfabric_gateway_register_shard_dropped_total`) and left for
//! the phone's retransmission, since nothing was done with it yet. The shards' queue of
//! authenticated REGISTERs to the core holds [`CORE_QUEUE`] (one queue for all shards); a
//! REGISTER that does not fit is *answered* by its shard with `503 Service Unavailable` +
//! `Retry-After` (overload control's value) through its transaction and counted
//! (`callfabric_gateway_register_core_queue_full_total`). It is not left for a
//! retransmission: its nonce-count is spent and its transaction exists, so a retransmission
//! would only be absorbed by that transaction (never authenticated again), which nothing
//! else would ever answer. With the 503 the transaction completes as any other (its copies
//! get the 503 again until Timer J) and the phone retries after `Retry-After`, as it does
//! after overload control's own 503s at ingress. The shards' confirmations that a 200 is on
//! the wire (message waiting follows it) share that bound, with backpressure instead of a
//! drop (a shard waits for room; the core never waits for a shard). The core's replies to a
//! shard need no queue bound of their own: at most one per REGISTER the core took from that
//! shard through the bounded queue (see where the channel is created); the 200s it holds for
//! the durable commit are bounded there (`durable.rs`, `MAX_HELD`).
//!
//! `sip_shards = 1` runs no shard: exactly the unsharded path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use rsip::headers::UntypedHeader;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::debug;

use super::security::{self, SharedGuard};
use super::timers::TxStats;
use super::DeviceCredentials;
use crate::b2bua;
use crate::registrar::{shard_of, Authenticator, Authorized, Credentials};
use crate::sip::message::{self, Method, Request, Response, SipMessage};
use crate::sip::transaction::{self as tx, TransactionKey, TransactionLayer};
use crate::transport::{self, Peer, Screened, TransportEvent, Transports, UserAgent};
use sip_core::overload::Gate;

/// Most transport events queued to one shard; more are dropped (and counted): the phone
/// retransmits over UDP.
const SHARD_QUEUE: usize = 4096;

/// Most authenticated REGISTERs queued from the shards to the core (all shards together); a
/// shard answers one that does not fit with 503 (see the module notes).
const CORE_QUEUE: usize = 4096;

/// A REGISTER a shard authenticated, for the core's bind phase.
pub(super) struct Authenticated {
    pub(super) shard: usize,
    pub(super) key: TransactionKey,
    pub(super) request: Request,
    pub(super) authorized: Authorized,
    pub(super) source: Peer,
}

/// The core's answer to an [`Authenticated`] REGISTER, sent by the shard through its
/// transaction. `confirm`: tell the core once it is on the wire (message waiting after a
/// registration goes out after the 200).
pub(super) struct Reply {
    key: TransactionKey,
    response: Response,
    confirm: bool,
}

/// The core's handle on its register shards.
pub(super) struct Shards {
    datagrams: Vec<mpsc::Sender<TransportEvent>>,
    replies: Vec<mpsc::UnboundedSender<Reply>>,
    /// REGISTERs authenticated by a shard (read by the core's loop; bounded, [`CORE_QUEUE`]).
    pub(super) authenticated: mpsc::Receiver<Box<Authenticated>>,
    /// 200 OKs a shard has put on the wire (those sent with `confirm`; bounded,
    /// [`CORE_QUEUE`]: a shard waits for room, see [`UserAgent::finished`] of its loop).
    pub(super) sent: mpsc::Receiver<Response>,
    tasks: Vec<JoinHandle<()>>,
    /// Events dropped because a shard's queue was full (shared with the handle).
    pub(super) dropped: Arc<AtomicU64>,
    /// Authenticated REGISTERs answered 503 by their shard because the core's queue was full
    /// (shared with the handle).
    pub(super) core_full: Arc<AtomicU64>,
    /// Each shard's transaction table size, for the handle.
    pub(super) stats: Vec<Arc<TxStats>>,
}

impl Shards {
    /// Starts `n` shards (at least 2; one shard is the unsharded core, no [`Shards`]).
    pub(super) fn start(
        n: usize,
        transports: &Transports,
        auth: impl Fn() -> Authenticator<DeviceCredentials>,
        guard: &SharedGuard,
        gate: &Arc<Gate>,
        tcfg: tx::Config,
    ) -> Shards {
        let (to_core, authenticated) = mpsc::channel(CORE_QUEUE);
        let (sent_tx, sent) = mpsc::channel(CORE_QUEUE);
        let mut shards = Shards {
            datagrams: Vec::with_capacity(n),
            replies: Vec::with_capacity(n),
            authenticated,
            sent,
            tasks: Vec::with_capacity(n),
            dropped: Arc::default(),
            core_full: Arc::default(),
            stats: Vec::with_capacity(n),
        };
        for index in 0..n {
            let (dtx, mut drx) = mpsc::channel(SHARD_QUEUE);
            // Unbounded, and bounded by construction: the core sends this shard a `Reply` only
            // for an `Authenticated` it took from *this shard* through `CORE_QUEUE`, once each:
            // at once (anything but a 200 held for the commit) or when the commit releases a
            // held 200 (`durable.rs`: at most `MAX_HELD` held, all shards together). So the
            // replies waiting here never outnumber the REGISTERs this shard authenticated and
            // has not answered yet, each of which cost its own loop a digest check; the loop
            // takes replies in the same unbiased `select!` as its datagrams, so it drains
            // them as fast as it creates them, plus the bursts a commit releases (≤ MAX_HELD)
            // and what waited in CORE_QUEUE (≤ 4096). A bound with drops here would only lose
            // answers to phones already bound (they would retry, authenticate and bind again).
            let (rtx, replies) = mpsc::unbounded_channel();
            let stats = Arc::new(TxStats::default());
            shards.stats.push(stats.clone());
            let mut shard = Shard {
                stats,
                transports: transports.clone(),
                gate: gate.clone(),
                replies,
                sent: sent_tx.clone(),
                registers: Registers {
                    index,
                    tl: TransactionLayer::new(tcfg.clone()),
                    auth: auth(),
                    guard: guard.clone(),
                    to_core: to_core.clone(),
                    core_full: shards.core_full.clone(),
                    retry_after: gate.retry_after(),
                    unconfirmed: Vec::new(),
                },
            };
            shards.tasks.push(tokio::spawn(async move {
                transport::drive(&mut shard, &mut drx).await
            }));
            shards.datagrams.push(dtx);
            shards.replies.push(rtx);
        }
        shards
    }

    /// The shard a transport event goes to: an out-of-dialog REGISTER's, by its Call-ID;
    /// `None` for everything else (the core's).
    pub(super) fn route(&self, ev: &TransportEvent) -> Option<usize> {
        let TransportEvent::Message(m) = ev else {
            return None;
        };
        let SipMessage::Request(req) = &m.message else {
            return None;
        };
        if req.method != Method::Register {
            return None;
        }
        let to_tag = tx::parse::field_tag(&req.headers, tx::parse::Field::To);
        if !matches!(to_tag, Ok(None)) {
            return None;
        }
        let call_id = req.headers.iter().find_map(|h| match h {
            rsip::Header::CallId(c) => Some(rsip::headers::UntypedHeader::value(c)),
            _ => None,
        })?;
        Some(shard_of(call_id, self.datagrams.len()))
    }

    /// Hands `ev` to shard `index`; a full queue drops it (counted).
    pub(super) fn dispatch(&mut self, index: usize, ev: TransportEvent) {
        let Some(q) = self.datagrams.get(index) else {
            return;
        };
        if q.try_send(ev).is_err() {
            let dropped = 1 + (self.dropped).fetch_add(1, Ordering::Relaxed);
            if transport::loglimit::allow("shard-full", None) {
                tracing::warn!(
                    shard = index,
                    dropped,
                    "register shard queue full: REGISTER dropped"
                );
            }
        }
    }

    /// Sends the core's final response to an authenticated REGISTER through its shard.
    pub(super) fn reply(
        &self,
        shard: usize,
        key: TransactionKey,
        response: Response,
        confirm: bool,
    ) {
        if let Some(r) = self.replies.get(shard) {
            let _ = r.send(Reply {
                key,
                response,
                confirm,
            });
        }
    }

    /// Stops the shards once they have sent what the core handed them (shutdown): their
    /// reply channels close first, so each shard's loop ends only after it has sent every
    /// reply queued before (a closed datagram channel would end it at once).
    pub(super) async fn close(&mut self) {
        self.replies.clear();
        for t in self.tasks.drain(..) {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), t).await;
        }
        self.datagrams.clear();
    }
}

impl Drop for Shards {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// What a shard tells the core.
pub(super) enum News {
    /// A REGISTER authenticated: the core binds it.
    Authenticated(Box<Authenticated>),
    /// A 200 OK sent with `confirm` is on the wire.
    Sent(Response),
}

/// The next news from the shards; never, without shards. Cancel-safe (`recv`s only).
pub(super) async fn news(shards: &mut Option<Shards>) -> Option<News> {
    let Some(s) = shards.as_mut() else {
        return std::future::pending().await;
    };
    tokio::select! {
        Some(r) = s.sent.recv() => Some(News::Sent(r)),
        Some(a) = s.authenticated.recv() => Some(News::Authenticated(a)),
        else => None,
    }
}

impl super::Core {
    /// A shard's news: an authenticated REGISTER is bound (the location service is the
    /// core's) and answered as the core answers its own ([`super::Core::respond_register`]:
    /// the 200 held until the durable commit); a 200 on the wire is followed by message
    /// waiting.
    pub(super) fn on_shard(&mut self, news: News) {
        match news {
            News::Authenticated(a) => {
                let (resp, change) = self.registrar.bind_change(
                    &a.request,
                    &a.authorized,
                    a.source.clone(),
                    SystemTime::now(),
                );
                self.respond_register(
                    super::durable::Responder::Shard(a.shard, a.key),
                    &a.request,
                    resp,
                    change,
                );
            }
            News::Sent(resp) => self.mwi_after_register(&resp),
        }
    }
}

/// One register shard: its transports, its inputs and its sans-IO part ([`Registers`]).
struct Shard {
    transports: Transports,
    /// Overload control's gate: while it sheds, retransmissions of REGISTERs still in
    /// progress are dropped here as the core drops its own.
    gate: Arc<Gate>,
    replies: mpsc::UnboundedReceiver<Reply>,
    sent: mpsc::Sender<Response>,
    /// The transaction table's size, published when its timers fire (as the core's).
    stats: Arc<TxStats>,
    registers: Registers<DeviceCredentials>,
}

/// What a shard does with REGISTERs, sans-IO (time passed in): its transaction layer, its
/// authenticator, and its end of the queue to the core.
struct Registers<C> {
    index: usize,
    tl: TransactionLayer<Peer>,
    auth: Authenticator<C>,
    guard: SharedGuard,
    to_core: mpsc::Sender<Box<Authenticated>>,
    /// [`Shards::core_full`].
    core_full: Arc<AtomicU64>,
    /// `Retry-After` of the 503 when the core's queue is full (overload control's).
    retry_after: u32,
    /// 200 OKs queued to the transaction layer whose sending the core waits to hear of.
    unconfirmed: Vec<Response>,
}

impl<C: Credentials> Registers<C> {
    /// A new REGISTER transaction (`wall`: the wall clock, for the nonce).
    fn on_register(
        &mut self,
        key: TransactionKey,
        request: Request,
        source: Peer,
        now: Instant,
        wall: SystemTime,
    ) {
        if let Screened::Reject(r) = transport::screen(&request, b2bua::EXTENSIONS) {
            let _ = self.tl.send_response(&key, r, now);
            return;
        }
        // `screen` made every other check of `validate_parsed_request`.
        let checked = message::check_require(&request, message::SUPPORTED_EXTENSIONS);
        debug_assert_eq!(
            checked.as_ref().err(),
            message::validate_parsed_request(&request).err().as_ref()
        );
        if let Err(rej) = checked {
            let _ = self.tl.send_response(&key, rej.response(&request), now);
            return;
        }
        let checked = self.auth.check_register(&request, wall);
        security::report_failures(&self.guard, &mut self.auth, &request, &source);
        match checked {
            Ok(authorized) => self.hand_to_core(
                Box::new(Authenticated {
                    shard: self.index,
                    key,
                    request,
                    authorized,
                    source,
                }),
                now,
            ),
            Err(resp) => security::send_challenge(&self.guard, &mut self.tl, &key, resp, &source),
        }
    }

    /// Hands an authenticated REGISTER to the core; when its queue is full (or the core is
    /// gone), answers it 503 + Retry-After through its transaction (counted).
    fn hand_to_core(&mut self, a: Box<Authenticated>, now: Instant) {
        let a = match self.to_core.try_send(a) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Full(a) | mpsc::error::TrySendError::Closed(a)) => a,
        };
        let full = 1 + self.core_full.fetch_add(1, Ordering::Relaxed);
        if transport::loglimit::allow("shard-core-full", None) {
            tracing::warn!(
                shard = self.index,
                full,
                "register shards' queue to the core full: REGISTER answered 503"
            );
        }
        let mut r = message::response_for(&a.request, 503, "Service Unavailable");
        r.headers
            .push(rsip::Header::RetryAfter(rsip::headers::RetryAfter::new(
                self.retry_after.to_string(),
            )));
        if let Err(e) = self.tl.send_response(&a.key, r, now) {
            debug!(error = %e, "503 to a REGISTER not sent");
        }
    }

    /// The core's answer to an authenticated REGISTER.
    fn on_reply(&mut self, r: Reply, now: Instant) {
        if r.confirm {
            self.unconfirmed.push(r.response.clone());
        }
        if let Err(e) = self.tl.send_response(&r.key, r.response, now) {
            debug!(error = %e, "REGISTER response not sent");
        }
    }

    fn on_event(&mut self, ev: tx::Event<Peer>, now: Instant, wall: SystemTime) {
        // A shard only ever gets REGISTER server transactions: a new request; their timeouts
        // and ends need nothing.
        if let tx::Event::Request {
            key,
            request,
            source,
            ..
        } = ev
        {
            self.on_register(key, request, source, now, wall);
        }
    }
}

impl UserAgent for Shard {
    type Input = Reply;

    fn sip(&mut self) -> (&Transports, &mut TransactionLayer<Peer>) {
        (&self.transports, &mut self.registers.tl)
    }

    fn next_deadline(&mut self) -> Option<Instant> {
        None
    }

    async fn on_datagram(&mut self, ev: TransportEvent, _backlog: usize) {
        if let TransportEvent::Message(m) = &ev {
            if let SipMessage::Request(req) = &m.message {
                let tl = &self.registers.tl;
                if self
                    .gate
                    .drop_retransmission(|| tl.is_pending_retransmission(req))
                {
                    return;
                }
            }
        }
        transport::receive(&self.transports, &mut self.registers.tl, ev).await
    }

    fn on_timer(&mut self, _now: Instant) {
        self.stats.publish(&self.registers.tl);
    }

    async fn input(&mut self) -> Option<Reply> {
        self.replies.recv().await
    }

    fn on_input(&mut self, r: Reply) {
        self.registers.on_reply(r, Instant::now());
    }

    fn on_event(&mut self, ev: tx::Event<Peer>, now: Instant) {
        self.registers.on_event(ev, now, SystemTime::now());
    }

    /// After each turn (its transmissions done): the 200 OKs the core waits for are on the
    /// wire. Their queue is bounded: when it is full the shard waits for the core to read
    /// (nothing is lost; the core never waits for a shard, so this cannot deadlock), and
    /// meanwhile its own transport queue fills and drops what does not fit (counted).
    async fn finished(&mut self) -> bool {
        for r in std::mem::take(&mut self.registers.unconfirmed) {
            if self.sent.send(r).await.is_err() {
                break;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    //! A shard's REGISTER handling in virtual time, with the real transaction layer and
    //! authenticator (only the sockets and the core are left out).

    use std::time::Duration;

    use super::*;
    use crate::registrar::{digest, Config, MemoryCredentials, Registrar};
    use crate::security::{Guard, SecurityConfig};
    use crate::transport::Transport;

    const REALM: &str = "site-a";

    fn peer() -> Peer {
        Peer {
            addr: "127.0.0.1:40000".parse().expect("address"),
            transport: Transport::Udp,
            local: "127.0.0.1:5060".parse().expect("address"),
        }
    }

    /// A shard's [`Registers`] with users 1000–1002 (password "secret"), the tests' T1 of
    /// 100 ms, and a queue to the core of `capacity`.
    fn registers(
        capacity: usize,
    ) -> (
        Registers<MemoryCredentials>,
        mpsc::Receiver<Box<Authenticated>>,
    ) {
        let mut creds = MemoryCredentials::new();
        for u in ["1000", "1001", "1002"] {
            creds.add_user(u, REALM, "secret", &format!("sip:{u}@{REALM}"));
        }
        let mut config = Config::new(REALM, b"0123456789abcdef0123456789abcdef");
        config.algorithms = vec![digest::Algorithm::Md5];
        let registrar: Registrar<MemoryCredentials, Peer> = Registrar::new(config, creds);
        let (to_core, rx) = mpsc::channel(capacity);
        let registers = Registers {
            index: 0,
            tl: TransactionLayer::new(tx::Config {
                t1: Duration::from_millis(100),
                ..tx::Config::default()
            }),
            auth: registrar.authenticator(),
            guard: Arc::new(std::sync::Mutex::new(Guard::new(SecurityConfig::default()))),
            to_core,
            core_full: Arc::default(),
            retry_after: 2,
            unconfirmed: Vec::new(),
        };
        (registers, rx)
    }

    fn register(user: &str, call_id: &str, cseq: u32, authorization: Option<&str>) -> Request {
        let auth = authorization
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        let text = format!(
            "REGISTER sip:{REALM} SIP/2.0\r\n\
             Via: SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bK-{call_id}-{cseq}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:{user}@{REALM}>;tag=ph\r\n\
             To: <sip:{user}@{REALM}>\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: {cseq} REGISTER\r\n\
             Contact: <sip:{user}@127.0.0.1:40000>\r\n\
             Expires: 3600\r\n\
             {auth}\
             Content-Length: 0\r\n\r\n"
        );
        match message::parse(text.as_bytes()) {
            Ok(SipMessage::Request(r)) => r,
            other => panic!("test REGISTER does not parse: {other:?}"),
        }
    }

    /// Credentials answering the challenge of `resp` (nc 1, as SIPp sends them).
    fn answer(resp: &Response, user: &str) -> String {
        let challenge = resp
            .headers
            .iter()
            .find_map(|h| match h {
                rsip::Header::WwwAuthenticate(w) => Some(w.value().to_owned()),
                _ => None,
            })
            .expect("a challenge");
        let c = digest::parse_authorization(&challenge).expect("challenge parses");
        let nonce = c.nonce.unwrap_or_default();
        let uri = format!("sip:{REALM}");
        let ha1 = digest::ha1(digest::Algorithm::Md5, user, REALM, "secret");
        let ha2 = digest::ha2(digest::Algorithm::Md5, "REGISTER", &uri);
        let response = digest::response(
            digest::Algorithm::Md5,
            &ha1,
            &nonce,
            "00000001",
            "c0ffee",
            "auth",
            &ha2,
        );
        format!(
            "Digest username=\"{user}\", realm=\"{REALM}\", nonce=\"{nonce}\", uri=\"{uri}\", \
             response=\"{response}\", algorithm=MD5, cnonce=\"c0ffee\", opaque=\"{}\", \
             qop=auth, nc=00000001",
            c.opaque.unwrap_or_default()
        )
    }

    /// Feeds `req` at `at` (the layer's timers up to then fired first); returns what went on
    /// the wire.
    fn feed(
        reg: &mut Registers<MemoryCredentials>,
        req: &Request,
        at: Instant,
        wall: SystemTime,
    ) -> Vec<tx::Transmit<Peer>> {
        while let Some(t) = reg.tl.poll_timeout().filter(|t| *t <= at) {
            reg.tl.handle_timeout(t);
            drain(reg, t, wall);
        }
        reg.tl
            .on_message(req.clone().into(), peer(), tx::Transport::Unreliable, at)
            .expect("the layer takes the request");
        drain(reg, at, wall)
    }

    fn drain(
        reg: &mut Registers<MemoryCredentials>,
        now: Instant,
        wall: SystemTime,
    ) -> Vec<tx::Transmit<Peer>> {
        while let Some(ev) = reg.tl.poll_event() {
            reg.on_event(ev, now, wall);
        }
        std::iter::from_fn(|| reg.tl.poll_transmit()).collect()
    }

    fn code(t: &tx::Transmit<Peer>) -> u16 {
        match &t.message {
            SipMessage::Response(r) => r.status_code.code(),
            SipMessage::Request(_) => 0,
        }
    }

    fn failures(reg: &Registers<MemoryCredentials>) -> u64 {
        reg.guard
            .lock()
            .map(|g| g.stats().failures)
            .unwrap_or(u64::MAX)
    }

    /// 401, then the authorized REGISTER (CSeq 2) handed to the core: returns it.
    fn authenticate(
        reg: &mut Registers<MemoryCredentials>,
        user: &str,
        call_id: &str,
        at: Instant,
        wall: SystemTime,
    ) -> Request {
        let sent = feed(reg, &register(user, call_id, 1, None), at, wall);
        assert_eq!(sent.iter().map(code).collect::<Vec<_>>(), [401]);
        let SipMessage::Response(challenge) = &sent[0].message else {
            unreachable!()
        };
        let authorized = register(user, call_id, 2, Some(&answer(challenge, user)));
        let sent = feed(reg, &authorized, at + Duration::from_millis(10), wall);
        assert!(sent.is_empty(), "answered at once: {sent:?}");
        authorized
    }

    /// Issue 16 (the CI flood's "replay" 401s): copies of an authorized REGISTER, while the
    /// core holds its 200 for the durable commit, after the 200 went out, and as late as a
    /// client on the RFC's T1 sends them (SIPp: 0.5, 1.5, 3.5, 7.5 s; the shard runs the
    /// tests' T1 of 100 ms), are absorbed by its transaction or get the same 200 again:
    /// never authenticated again, never a failure counted.
    #[test]
    fn copies_of_an_authorized_register_are_absorbed_or_answered_never_reauthenticated() {
        let (t0, wall) = (Instant::now(), SystemTime::now());
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let (mut reg, mut rx) = registers(16);
        let req = authenticate(&mut reg, "1000", "flood-1", t0, wall);
        let a = rx.try_recv().expect("handed to the core");
        assert_eq!(a.authorized.aor, format!("sip:1000@{REALM}"));

        // The 200 is held (durable commit): a copy is absorbed.
        assert!(feed(&mut reg, &req, ms(510), wall).is_empty());
        assert!(rx.try_recv().is_err(), "a copy went to the core");

        // The core's 200.
        let ok = message::response_for(&a.request, 200, "OK");
        reg.on_reply(
            Reply {
                key: a.key.clone(),
                response: ok.clone(),
                confirm: false,
            },
            ms(800),
        );
        let sent = drain(&mut reg, ms(800), wall);
        assert_eq!(sent.iter().map(code).collect::<Vec<_>>(), [200]);

        for at in [1_510, 3_510, 7_510, 11_510] {
            let sent = feed(&mut reg, &req, ms(at), wall);
            assert_eq!(
                sent.iter().map(code).collect::<Vec<_>>(),
                [200],
                "the copy at {at} ms"
            );
            assert!(sent[0].retransmission);
            assert_eq!(sent[0].message, SipMessage::Response(ok.clone()));
            assert!(
                rx.try_recv().is_err(),
                "the copy at {at} ms went to the core"
            );
        }
        assert_eq!(failures(&reg), 0, "a failed authentication was counted");
    }

    /// The queue to the core is bounded: an authenticated REGISTER that does not fit is
    /// answered 503 + Retry-After through its transaction (its copies get the 503 again, never
    /// a new authentication) and counted; once the core reads, REGISTERs go through again.
    #[test]
    fn a_full_queue_to_the_core_answers_503_and_counts() {
        let (t0, wall) = (Instant::now(), SystemTime::now());
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let (mut reg, mut rx) = registers(1);
        authenticate(&mut reg, "1000", "q-1", t0, wall);
        assert_eq!(reg.core_full.load(Ordering::Relaxed), 0);

        // The queue holds one: the second phone's REGISTER is refused.
        let second = register("1001", "q-2", 1, None);
        let sent = feed(&mut reg, &second, ms(100), wall);
        let SipMessage::Response(challenge) = &sent[0].message else {
            unreachable!()
        };
        let authorized = register("1001", "q-2", 2, Some(&answer(challenge, "1001")));
        let sent = feed(&mut reg, &authorized, ms(110), wall);
        assert_eq!(sent.iter().map(code).collect::<Vec<_>>(), [503]);
        let SipMessage::Response(r) = &sent[0].message else {
            unreachable!()
        };
        assert!(
            r.headers.iter().any(|h| matches!(h,
                rsip::Header::RetryAfter(v) if v.value() == "2")),
            "no Retry-After: {r:?}"
        );
        assert_eq!(reg.core_full.load(Ordering::Relaxed), 1);
        // Its copy: the same 503 from its transaction.
        let sent = feed(&mut reg, &authorized, ms(610), wall);
        assert_eq!(sent.iter().map(code).collect::<Vec<_>>(), [503]);
        assert!(sent[0].retransmission);
        assert_eq!(reg.core_full.load(Ordering::Relaxed), 1);
        assert_eq!(failures(&reg), 0);

        // Only the first is queued; once read, the next phone's goes through.
        let first = rx.try_recv().expect("the first REGISTER");
        assert_eq!(first.authorized.aor, format!("sip:1000@{REALM}"));
        assert!(rx.try_recv().is_err());
        authenticate(&mut reg, "1002", "q-3", ms(700), wall);
        let third = rx.try_recv().expect("the third REGISTER");
        assert_eq!(third.authorized.aor, format!("sip:1002@{REALM}"));
        assert_eq!(reg.core_full.load(Ordering::Relaxed), 1);
    }
}

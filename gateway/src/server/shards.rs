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
//! `sip_shards = 1` runs no shard: exactly the unsharded path.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::debug;

use super::security::{self, SharedGuard};
use super::timers::TxStats;
use super::DeviceCredentials;
use crate::b2bua;
use crate::registrar::{shard_of, Authenticator, Authorized};
use crate::sip::message::{self, Method, Request, Response, SipMessage};
use crate::sip::transaction::{self as tx, TransactionKey, TransactionLayer};
use crate::transport::{self, Peer, Screened, TransportEvent, Transports, UserAgent};
use sip_core::overload::Gate;

/// Most transport events queued to one shard; more are dropped (and counted): the phone
/// retransmits over UDP.
const SHARD_QUEUE: usize = 4096;

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
    /// REGISTERs authenticated by a shard (read by the core's loop).
    pub(super) authenticated: mpsc::UnboundedReceiver<Box<Authenticated>>,
    /// 200 OKs a shard has put on the wire (those sent with `confirm`).
    pub(super) sent: mpsc::UnboundedReceiver<Response>,
    tasks: Vec<JoinHandle<()>>,
    /// Events dropped because a shard's queue was full (shared with the handle).
    pub(super) dropped: Arc<std::sync::atomic::AtomicU64>,
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
        let (to_core, authenticated) = mpsc::unbounded_channel();
        let (sent_tx, sent) = mpsc::unbounded_channel();
        let mut shards = Shards {
            datagrams: Vec::with_capacity(n),
            replies: Vec::with_capacity(n),
            authenticated,
            sent,
            tasks: Vec::with_capacity(n),
            dropped: Arc::default(),
            stats: Vec::with_capacity(n),
        };
        for index in 0..n {
            let (dtx, mut drx) = mpsc::channel(SHARD_QUEUE);
            let (rtx, replies) = mpsc::unbounded_channel();
            let stats = Arc::new(TxStats::default());
            shards.stats.push(stats.clone());
            let mut shard = Shard {
                stats,
                index,
                transports: transports.clone(),
                tl: TransactionLayer::new(tcfg.clone()),
                auth: auth(),
                guard: guard.clone(),
                gate: gate.clone(),
                replies,
                to_core: to_core.clone(),
                sent: sent_tx.clone(),
                unconfirmed: Vec::new(),
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
            let dropped = 1 + (self.dropped).fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
                let resp = self.registrar.bind(
                    &a.request,
                    &a.authorized,
                    a.source.clone(),
                    SystemTime::now(),
                );
                self.respond_register(
                    super::durable::Responder::Shard(a.shard, a.key),
                    &a.request,
                    resp,
                );
            }
            News::Sent(resp) => self.mwi_after_register(&resp),
        }
    }
}

/// One register shard: its transaction layer and authenticator.
struct Shard {
    index: usize,
    transports: Transports,
    tl: TransactionLayer<Peer>,
    auth: Authenticator<DeviceCredentials>,
    guard: SharedGuard,
    /// Overload control's gate: while it sheds, retransmissions of REGISTERs still in
    /// progress are dropped here as the core drops its own.
    gate: Arc<Gate>,
    replies: mpsc::UnboundedReceiver<Reply>,
    to_core: mpsc::UnboundedSender<Box<Authenticated>>,
    sent: mpsc::UnboundedSender<Response>,
    /// 200 OKs queued to the transaction layer whose sending the core waits to hear of.
    unconfirmed: Vec<Response>,
    /// The transaction table's size, published when its timers fire (as the core's).
    stats: Arc<TxStats>,
}

impl Shard {
    fn on_register(&mut self, key: TransactionKey, request: Request, source: Peer, now: Instant) {
        if let Screened::Reject(r) = transport::screen(&request, b2bua::EXTENSIONS) {
            let _ = self.tl.send_response(&key, r, now);
            return;
        }
        if let Err(rej) = message::validate_parsed_request(&request) {
            let _ = self.tl.send_response(&key, rej.response(&request), now);
            return;
        }
        let checked = self.auth.check_register(&request, SystemTime::now());
        security::report_failures(&self.guard, &mut self.auth, &request, &source);
        match checked {
            Ok(authorized) => {
                let _ = self.to_core.send(Box::new(Authenticated {
                    shard: self.index,
                    key,
                    request,
                    authorized,
                    source,
                }));
            }
            Err(resp) => security::send_challenge(&self.guard, &mut self.tl, &key, resp, &source),
        }
    }
}

impl UserAgent for Shard {
    type Input = Reply;

    fn sip(&mut self) -> (&Transports, &mut TransactionLayer<Peer>) {
        (&self.transports, &mut self.tl)
    }

    fn next_deadline(&mut self) -> Option<Instant> {
        None
    }

    async fn on_datagram(&mut self, ev: TransportEvent, _backlog: usize) {
        if let TransportEvent::Message(m) = &ev {
            if let SipMessage::Request(req) = &m.message {
                let tl = &self.tl;
                if self
                    .gate
                    .drop_retransmission(|| tl.is_pending_retransmission(req))
                {
                    return;
                }
            }
        }
        transport::receive(&self.transports, &mut self.tl, ev).await
    }

    fn on_timer(&mut self, _now: Instant) {
        self.stats.publish(&self.tl);
    }

    async fn input(&mut self) -> Option<Reply> {
        self.replies.recv().await
    }

    fn on_input(&mut self, r: Reply) {
        if r.confirm {
            self.unconfirmed.push(r.response.clone());
        }
        if let Err(e) = self.tl.send_response(&r.key, r.response, Instant::now()) {
            debug!(error = %e, "REGISTER response not sent");
        }
    }

    fn on_event(&mut self, ev: tx::Event<Peer>, now: Instant) {
        // A shard only ever gets REGISTER server transactions: a new request; their timeouts
        // and ends need nothing.
        if let tx::Event::Request {
            key,
            request,
            source,
            ..
        } = ev
        {
            self.on_register(key, request, source, now);
        }
    }

    /// After each turn (its transmissions done): the 200 OKs the core waits for are on the
    /// wire.
    async fn finished(&mut self) -> bool {
        for r in self.unconfirmed.drain(..) {
            let _ = self.sent.send(r);
        }
        false
    }
}

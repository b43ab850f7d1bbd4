//! Durable registrations, the gateway side: restore on start, group-committed writes, refreshes
//! written behind.
//!
//! **The bound.** A REGISTER that **changes** an AOR's binding set (a contact added, removed by
//! `expires=0` or `*`, lapsed ones dropped; a contact's URI, parameters, transport, source or
//! local listener changed; a shorter expiry; the first REGISTER of an AOR restored at start:
//! `registrar::Change::Set`) gets its 200 OK only once the new binding set is committed to the
//! device database, so a gateway killed (even `kill -9`) right after a phone saw its 200 OK
//! still has the binding when it starts again. The writes do not serialise the REGISTER path:
//! the core hands the AOR's rows to a writer task and goes on; the writer commits everything
//! that queued up meanwhile in one transaction (one fsync on SQLite however many REGISTERs it
//! covers) and tells the core how far it got; the held 200s go out then. On SQLite the file
//! runs in WAL mode with `synchronous=FULL` (`sqlstore::open`): the commit fsyncs the WAL
//! before it returns, so the binding behind a 200 OK survives a power loss or OS crash as well
//! as a `kill -9` (NORMAL would promise only the latter); on PostgreSQL it is the server's
//! commit (its `synchronous_commit`). The cost per REGISTER is the commit latency (SQLite: one
//! fsync, shared), not throughput. If the database fails, the 200 is sent anyway (the binding
//! lives in memory; a restart loses it) and the failure is logged and counted: phones keep
//! working through a database outage, as the device cache does.
//!
//! **Refreshes are written behind.** A REGISTER that only **refreshes** (the same contacts
//! from the same source, each expiry the same or later; a new Call-ID/CSeq does not matter to
//! a restored binding: `registrar::Change::Refresh`) gets its 200 OK at once; its AOR is noted
//! and its set as it is then is queued for the writer within [`WRITE_BEHIND`] (1 s) of the
//! first refresh waiting, an AOR refreshed several times once, all of them in one
//! transaction; sooner when the AOR is written for another reason meanwhile (a change, an
//! expiry: that write carries the latest set), and at shutdown (`Durable::flush` writes every
//! refresh waiting before it returns). So what a `kill -9` (or a power loss) can lose is only
//! a refresh's **extension** made within the last interval (and the commit under way): the
//! binding itself is stored with its earlier expiry and restored with it; should that expiry
//! pass before the phone's next REGISTER, the phone is unregistered early and registers again
//! at its next refresh, as after any registrar restart. Kamailio's usual production setting
//! (usrloc `db_mode=2`, write-back) makes the same trade on a 60 s timer. The AORs waiting
//! are at most [`MAX_BEHIND`]; past it a refresh is written as a change (counted:
//! `callfabric_gateway_register_behind_full_total`).
//!
//! **On start** the gateway's own rows (by node name) still valid are put back with their
//! absolute expiry; expired ones are deleted. A restored contact is not trusted until it
//! answers an OPTIONS qualify (sent at once): until then its device reads UNAVAILABLE, so a
//! phone that never came back is never offered a call: a call dialled to it gets 480 at once
//! (the route rings only contacts that did not fail a qualify). A phone that re-registers is
//! trusted at once.
//!
//! **TCP contacts.** The connection a TCP phone registered over is gone after a restart. The
//! restored binding is reached over a *new* TCP connection to the address in its Contact URI
//! (host:port, default 5060); a phone listening there answers the qualify and is back, one
//! that only accepts its own outbound connection (behind a NAT) stays UNAVAILABLE until it
//! re-registers, which it does when its connection drops (RFC 5626 phones at once, others at
//! their next refresh).
//!
//! **TLS contacts** likewise, over a new TLS connection whose certificate must verify against
//! `[tls] ca` for the Contact's host: a gateway registered over TLS (its listener in the
//! Contact) is back at once; a phone (no server certificate; RFC 5626 flows) refuses the
//! handshake, so it stays UNAVAILABLE and calls to it get 480 at once until it registers again
//! (`tests/gateway_tls.rs`).

use super::{Core, Peer};
use crate::registrar::store::{BindingBatch, StoredBinding};
use crate::registrar::{Binding, Change, Location};
use crate::sip::message::{self, Request, Response};
use crate::sip::transaction::TransactionKey;
use crate::transport::{self, ConnectionId};
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

/// A TCP connection id no live connection has: sends fall back to a new connection.
const GONE: ConnectionId = ConnectionId(u64::MAX);

/// Most binding sets written in one transaction.
const MAX_BATCH: usize = 512;

/// Most 200 OKs held for a commit (issue 16: depth, size and count bounded). The writer is
/// behind by that many commits only when the database stalls (a fsync that does not return, a
/// server that neither answers nor fails): at 5,000 REGISTER/s that is over 3 s of no commit.
/// Past it a REGISTER's 200 goes out at once and its write is not queued (see
/// [`Durable::hold`]); the held ones and the writer's queue stop growing with the rate.
const MAX_HELD: usize = 16_384;

/// Longest a refresh's rows wait before they are queued for the writer (written behind). What
/// a `kill -9` can lose is a refresh's extension made within this interval (plus the commit
/// that is under way): the binding stays stored with its earlier expiry. One second keeps
/// that loss far below any registration's lifetime (60 s at least, `min_expires`) while the
/// writer's work no longer follows the REGISTER rate: an AOR refreshed several times within
/// it is written once, all of them in one transaction, and no 200 waits for a fsync.
/// Kamailio's write-back mode (usrloc `db_mode=2`) flushes every `timer_interval`, 60 s by
/// default.
pub(super) const WRITE_BEHIND: Duration = Duration::from_secs(1);

/// Most AORs whose refresh waits to be written (the set holds names; the rows are read from
/// the location service when they are written). Within one [`WRITE_BEHIND`] interval only
/// this many distinct AORs can be waiting, i.e. 65,536 REGISTER/s: past it a refresh is
/// written as a change is (its 200 held for the commit, bounded by [`MAX_HELD`]) and counted
/// (`behind_full`).
const MAX_BEHIND: usize = 65_536;

pub(super) enum WriteCmd {
    /// The binding set of an AOR changed; `seq` numbers the write.
    Save(u64, String, Vec<StoredBinding>),
    /// Answer once everything sent before is committed (shutdown).
    Flush(oneshot::Sender<()>),
}

/// What [`Durable::take`] did with a REGISTER's 200.
enum Taken {
    /// Held until the commit of its set.
    Held,
    /// A refresh: its set is written behind, the 200 goes out now.
    Behind(Responder, Response),
    /// A change, not held because [`MAX_HELD`] are (counted): the 200 goes out now.
    Unheld(Responder, Response),
}

/// Whose transaction answers a REGISTER: the core's, or a register shard's
/// (`server/shards.rs`).
#[derive(Debug, Clone)]
pub(super) enum Responder {
    /// The core's transaction layer.
    Core(TransactionKey),
    /// Shard `.0`'s.
    Shard(usize, TransactionKey),
}

/// The core's half: sequence numbers, held 200 OKs, the channels.
pub(super) struct Durable {
    pub(super) to_writer: mpsc::UnboundedSender<WriteCmd>,
    pub(super) committed: mpsc::UnboundedReceiver<u64>,
    next_seq: u64,
    /// Held 200s in the order of their sequence numbers (ascending: a commit releases a
    /// prefix).
    held: VecDeque<(u64, Responder, Response)>,
    /// [`MAX_HELD`] (smaller in tests).
    max_held: usize,
    /// AORs refreshed since their last write, to be written behind: by
    /// [`Durable::write_behind`] once `behind_due` has come, or sooner by a write of the AOR
    /// (it carries the latest set).
    behind: HashSet<String>,
    /// When the oldest refresh in `behind` is due ([`WRITE_BEHIND`] after it).
    behind_due: Option<Instant>,
    /// [`MAX_BEHIND`] (smaller in tests).
    max_behind: usize,
    /// Refreshes written as changes because `behind` was full (shared with the gateway's
    /// handle: `/metrics`).
    pub(super) behind_full: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// AORs restored at start and not written since: their first REGISTER is written as a
    /// change (the restored binding's source was rebuilt from its row, a TCP one from its
    /// Contact; the first write makes the row this process's own again). Shrinks only.
    unwritten: HashSet<String>,
    /// 200 OKs sent without waiting for a commit because `held` was full (shared with the
    /// gateway's handle: `/metrics`).
    pub(super) unheld: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Restored AORs whose contact has not answered a qualify nor re-registered yet.
    pub(super) restored: HashMap<String, std::collections::HashSet<String>>,
}

impl Durable {
    /// A restored contact answered a qualify: trusted from now on.
    pub(super) fn verified(&mut self, aor: &str, contact: &str) {
        if let Some(p) = self.restored.get_mut(aor) {
            p.remove(contact);
            if p.is_empty() {
                self.restored.remove(aor);
            }
        }
    }

    /// Starts the writer task for `node` on `store`.
    pub(super) fn start(store: crate::devices::DeviceStore, node: String) -> Durable {
        let (to_writer, mut rx) = mpsc::unbounded_channel::<WriteCmd>();
        let (done, committed) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut failures = 0u64;
            // Kept across batches with its capacity: a second's refreshes written behind are
            // one batch of up to as many AORs, and growing the map for each was measurable.
            let mut pending: HashMap<String, Vec<StoredBinding>> = HashMap::new();
            while let Some(first) = rx.recv().await {
                let mut flushes = Vec::new();
                let mut last = 0;
                let mut next = Some(first);
                while let Some(cmd) = next.take() {
                    match cmd {
                        WriteCmd::Save(seq, aor, rows) => {
                            last = last.max(seq);
                            pending.insert(aor, rows);
                        }
                        WriteCmd::Flush(tx) => flushes.push(tx),
                    }
                    if pending.len() < MAX_BATCH {
                        next = rx.try_recv().ok();
                    }
                }
                if !pending.is_empty() {
                    let batch: BindingBatch = pending.drain().collect();
                    if let Err(e) = store.save_bindings(&node, &batch).await {
                        failures += 1;
                        warn!(error = %e, aors = batch.len(), failures,
                            "registrations not stored: they are lost if the gateway restarts");
                    }
                }
                if last > 0 && done.send(last).is_err() {
                    break;
                }
                for f in flushes {
                    let _ = f.send(());
                }
            }
        });
        Durable::new(to_writer, committed)
    }

    /// The core's half on these channels, nothing held or waiting.
    fn new(
        to_writer: mpsc::UnboundedSender<WriteCmd>,
        committed: mpsc::UnboundedReceiver<u64>,
    ) -> Durable {
        Durable {
            to_writer,
            committed,
            next_seq: 1,
            held: VecDeque::new(),
            max_held: MAX_HELD,
            behind: HashSet::new(),
            behind_due: None,
            max_behind: MAX_BEHIND,
            behind_full: Default::default(),
            unwritten: HashSet::new(),
            unheld: Default::default(),
            restored: Default::default(),
        }
    }

    /// A REGISTER of `aor` was answered `resp` (a 200) after it changed the binding set or only
    /// refreshed it (`change`; `rows` builds the set as stored). A refresh is written behind
    /// and its 200 comes back to be sent now; a change is queued for the writer and its 200
    /// held until the commit ([`Durable::hold`]: back at once only past [`MAX_HELD`]). A
    /// refresh of an AOR restored and not written since, or one past [`MAX_BEHIND`], is
    /// written as a change.
    fn take(
        &mut self,
        aor: &str,
        change: Change,
        rows: impl FnOnce() -> Vec<StoredBinding>,
        to: Responder,
        resp: Response,
        now: Instant,
    ) -> Taken {
        if change == Change::Refresh && self.behind(aor, now) {
            return Taken::Behind(to, resp);
        }
        match self.hold(aor, rows(), to, resp) {
            None => Taken::Held,
            Some((to, resp)) => Taken::Unheld(to, resp),
        }
    }

    /// Notes a refresh of `aor` to be written behind; false when it must be written now
    /// (see [`Durable::take`]).
    fn behind(&mut self, aor: &str, now: Instant) -> bool {
        if self.unwritten.contains(aor) {
            return false;
        }
        if !self.behind.contains(aor) {
            if self.behind.len() >= self.max_behind {
                (self.behind_full).fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return false;
            }
            self.behind.insert(aor.to_owned());
        }
        self.behind_due.get_or_insert(now + WRITE_BEHIND);
        true
    }

    /// When the refreshes waiting must be written ([`Durable::write_behind`]); `None`: none
    /// waits.
    pub(super) fn behind_due(&self) -> Option<Instant> {
        self.behind_due
    }

    /// Queues the current set of every AOR refreshed since its last write (`rows_of` builds
    /// it), once they are due at `now`; with `now` `None` (shutdown), whenever they are due.
    /// All of them go to the writer together: one transaction when they fit one batch.
    pub(super) fn write_behind(
        &mut self,
        now: Option<Instant>,
        mut rows_of: impl FnMut(&str) -> Vec<StoredBinding>,
    ) {
        match (self.behind_due, now) {
            (None, _) => return,
            (Some(due), Some(now)) if now < due => return,
            _ => {}
        }
        self.behind_due = None;
        let aors: Vec<String> = self.behind.drain().collect();
        for aor in aors {
            let rows = rows_of(&aor);
            self.save(&aor, rows);
        }
    }

    /// Queues `rows`, the binding set of `aor`, and holds `resp` until they are committed;
    /// when [`MAX_HELD`] 200s are held already, neither: the response comes back to be sent
    /// at once (counted, `unheld`), else `None`. The binding is in memory all the same and the AOR's next
    /// write (its next REGISTER, or its expiry) stores it; a restart before that loses it, as
    /// when the database fails. Not holding it without writing it would leave the writer's
    /// queue unbounded; holding it without a bound would grow with the rate while the
    /// database stalls.
    fn hold(
        &mut self,
        aor: &str,
        rows: Vec<StoredBinding>,
        to: Responder,
        resp: Response,
    ) -> Option<(Responder, Response)> {
        if self.held.len() >= self.max_held {
            self.unheld
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Some((to, resp));
        }
        let seq = self.save(aor, rows);
        self.held.push_back((seq, to, resp));
        None
    }

    /// The next held 200 the commit of everything up to `seq` releases (in the order held).
    fn release(&mut self, seq: u64) -> Option<(Responder, Response)> {
        if self.held.front().is_some_and(|(s, _, _)| *s <= seq) {
            return self.held.pop_front().map(|(_, to, resp)| (to, resp));
        }
        None
    }

    /// Queues the binding set of `aor` (the latest: a refresh of it waiting to be written
    /// behind is covered); returns its sequence number.
    fn save(&mut self, aor: &str, rows: Vec<StoredBinding>) -> u64 {
        if self.behind.remove(aor) && self.behind.is_empty() {
            self.behind_due = None;
        }
        self.unwritten.remove(aor);
        let seq = self.next_seq;
        self.next_seq += 1;
        let _ = self
            .to_writer
            .send(WriteCmd::Save(seq, aor.to_owned(), rows));
        seq
    }

    /// Everything queued so far, and every refresh waiting to be written behind (`rows_of`
    /// builds its set), is committed.
    pub(super) async fn flush(&mut self, rows_of: impl FnMut(&str) -> Vec<StoredBinding>) {
        self.write_behind(None, rows_of);
        let (tx, rx) = oneshot::channel();
        if self.to_writer.send(WriteCmd::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

fn stored(aor: &str, b: &Binding<Peer>) -> StoredBinding {
    StoredBinding {
        aor: aor.to_owned(),
        uri: b.uri.clone(),
        params: b.params.clone(),
        expires_at: b.expires_at,
        call_id: b.call_id.clone(),
        cseq: b.cseq,
        transport: b.source.transport.uri_param().unwrap_or("udp").into(),
        source: addr_text(b.source.addr),
        local: addr_text(b.source.local),
    }
}

/// `addr.to_string()`, an IPv4 address written digit by digit (`Display` formats through
/// `fmt`'s padding machinery, twice per binding stored: ~1k instructions each).
fn addr_text(addr: SocketAddr) -> String {
    let SocketAddr::V4(v4) = addr else {
        return addr.to_string();
    };
    let mut s = String::with_capacity(21);
    for (i, &octet) in v4.ip().octets().iter().enumerate() {
        if i > 0 {
            s.push('.');
        }
        push_decimal(&mut s, u32::from(octet));
    }
    s.push(':');
    push_decimal(&mut s, u32::from(v4.port()));
    s
}

fn push_decimal(s: &mut String, mut v: u32) {
    let mut digits = [0u8; 10];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for &d in &digits[at..] {
        s.push(char::from(d));
    }
}

/// The current binding set of `aor` as stored.
fn stored_rows(location: &Location<Peer>, aor: &str) -> Vec<StoredBinding> {
    location.get(aor).iter().map(|b| stored(aor, b)).collect()
}

/// The peer to reach a restored binding through (see the module notes for TCP).
fn restored_peer(b: &StoredBinding, locals: &transport::LocalAddrs) -> Option<Peer> {
    let source: SocketAddr = b.source.parse().ok()?;
    let tls = b.transport == "tls";
    let tcp = tls || b.transport == "tcp";
    let listeners = match (tcp, tls) {
        (_, true) => &locals.tls,
        (true, false) => &locals.tcp,
        _ => &locals.udp,
    };
    let local = b
        .local
        .parse()
        .ok()
        .filter(|l| listeners.contains(l))
        .or_else(|| listeners.first().copied())?;
    if !tcp {
        return Some(Peer {
            addr: source,
            transport: transport::Transport::Udp,
            local,
        });
    }
    let uri = message::parse_uri(&b.uri)?;
    let ip = match &uri.host_with_port.host {
        rsip::Host::IpAddr(ip) => *ip,
        rsip::Host::Domain(d) => d.to_string().parse().ok()?,
    };
    let port = uri.host_with_port.port.map(|p| *p.value()).unwrap_or(5060);
    Some(Peer {
        addr: SocketAddr::new(ip, port),
        transport: if tls {
            transport::Transport::Tls(GONE)
        } else {
            transport::Transport::Tcp(GONE)
        },
        local,
    })
}

impl Core {
    /// Puts back this node's stored bindings (start-up). Their devices stay UNAVAILABLE until
    /// the contact answers a qualify.
    pub(super) async fn restore_bindings(&mut self) {
        let now = SystemTime::now();
        let rows = match self.records.load_bindings(&self.cfg.node, now).await {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "stored registrations not read: phones must register again");
                return;
            }
        };
        let locals = self.transports.local_addrs().clone();
        let mut by_aor: HashMap<String, Vec<Binding<Peer>>> = HashMap::new();
        let mut skipped = 0;
        for r in rows {
            let Some(peer) = restored_peer(&r, &locals) else {
                skipped += 1;
                continue;
            };
            by_aor
                .entry(r.aor.clone())
                .or_default()
                .push(Binding::restored(
                    r.uri,
                    r.params,
                    r.expires_at,
                    r.call_id,
                    r.cseq,
                    peer,
                ));
        }
        let (aors, contacts) = (by_aor.len(), by_aor.values().map(Vec::len).sum::<usize>());
        for (aor, list) in by_aor {
            self.registrar.restore(&aor, list, now);
            if self.registrar.is_registered(&aor) {
                // Each contact is not trusted until it answers a qualify (or registers again):
                // marked failed meanwhile, so the device reads UNAVAILABLE and is not rung.
                let keys: std::collections::HashSet<String> = (self.registrar.contacts(&aor))
                    .iter()
                    .map(|b| b.key.clone())
                    .collect();
                let marks = self.qualify.marks.entry(aor.clone()).or_default();
                for k in &keys {
                    marks.insert(k.clone(), false);
                }
                self.durable.unwritten.insert(aor.clone());
                self.durable.restored.insert(aor, keys);
            }
        }
        info!(
            aors,
            contacts, skipped, "registrations restored; qualifying their contacts"
        );
    }

    /// A REGISTER was answered `resp`: when it succeeded, its AOR's bindings are stored. After
    /// a change of the set (`change`) the 200 OK waits for the commit; after a refresh it goes
    /// out now and the set is written behind (`Durable::take`); anything else goes out now.
    pub(super) fn respond_register(
        &mut self,
        to: Responder,
        req: &Request,
        resp: Response,
        change: Change,
    ) {
        let ok = resp.status_code.code() == 200;
        let aor = ok
            .then(|| {
                req.headers.iter().find_map(|h| match h {
                    rsip::Header::To(v) => Some(rsip::headers::UntypedHeader::value(v)),
                    _ => None,
                })
            })
            .flatten()
            .and_then(crate::registrar::canonical_aor)
            .map(|to| super::user_of(&to).to_owned())
            .and_then(|user| {
                let aor = super::presence::realm_aor(&user, &self.cfg.realm);
                crate::registrar::canonical_aor(&aor)
            });
        let Some(aor) = aor else {
            self.send_register_response(to, resp, false);
            return;
        };
        self.registered_again(&aor, req);
        if change == Change::Set {
            // A binding added to an AOR that is registered already raises no registrar event,
            // yet it may be the AOR's only reachable contact (the others restored and
            // unverified, or failing their qualify: a phone back on a new address after a
            // restart). A refresh adds none and changes no qualify mark (`registered_again`
            // refreshes the device when it does).
            let dev = self.device_key(&aor);
            self.refresh_device(&dev);
        }
        let location = self.registrar.location();
        let now = Instant::now();
        match (self.durable).take(&aor, change, || stored_rows(location, &aor), to, resp, now) {
            Taken::Held => {}
            Taken::Behind(to, resp) => self.send_register_response(to, resp, true),
            Taken::Unheld(to, resp) => {
                if transport::loglimit::allow("register-unheld", None) {
                    warn!(
                        held = self.durable.held.len(),
                        "registration commits are behind: 200 OK sent before its binding is stored"
                    );
                }
                self.send_register_response(to, resp, true);
            }
        }
    }

    /// The restored contacts of `aor` that this REGISTER just refreshed are back by
    /// themselves: trusted as any fresh registration (the others still wait for a qualify).
    fn registered_again(&mut self, aor: &str, req: &Request) {
        let Some(pending) = self.durable.restored.get_mut(aor) else {
            return;
        };
        let call_id = req.headers.iter().find_map(|h| match h {
            rsip::Header::CallId(c) => Some(rsip::headers::UntypedHeader::value(c).trim()),
            _ => None,
        });
        let cseq = req.headers.iter().find_map(|h| match h {
            rsip::Header::CSeq(c) => rsip::headers::UntypedHeader::value(c)
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u32>().ok()),
            _ => None,
        });
        let refreshed: Vec<String> = (self.registrar.contacts(aor))
            .iter()
            .filter(|b| Some(b.call_id.as_str()) == call_id && Some(b.cseq) == cseq)
            .filter(|b| pending.remove(&b.key))
            .map(|b| b.key.clone())
            .collect();
        if pending.is_empty() {
            self.durable.restored.remove(aor);
        }
        if refreshed.is_empty() {
            return;
        }
        if let Some(marks) = self.qualify.marks.get_mut(aor) {
            for k in &refreshed {
                if marks.get(k) == Some(&false) {
                    marks.remove(k);
                }
            }
        }
        let dev = self.device_key(aor);
        self.refresh_device(&dev);
    }

    /// Queues the current binding set of `aor` for storage.
    pub(super) fn persist(&mut self, aor: &str) -> u64 {
        let rows = stored_rows(self.registrar.location(), aor);
        self.durable.save(aor, rows)
    }

    /// Queues the sets of the AORs refreshed since their last write, when they are due at
    /// `now` (housekeeping: [`Durable::behind_due`] is one of its deadlines).
    pub(super) fn write_behind(&mut self, now: Instant) {
        let location = self.registrar.location();
        (self.durable).write_behind(Some(now), |aor| stored_rows(location, aor));
    }

    /// Everything queued for the writer and every refresh waiting to be written behind is
    /// committed (shutdown).
    pub(super) async fn flush_registrations(&mut self) {
        let location = self.registrar.location();
        self.durable.flush(|aor| stored_rows(location, aor)).await;
    }

    /// The writer committed everything up to `seq`: the held 200 OKs go out.
    pub(super) fn committed(&mut self, seq: u64) {
        while let Some((to, resp)) = self.durable.release(seq) {
            self.send_register_response(to, resp, true);
        }
    }

    /// Sends a REGISTER's final response through its transaction; after a 200 (`then_mwi`),
    /// the phone's message-waiting lamp again: queued after it on the core, or once its
    /// shard reports it sent (`server/shards.rs`).
    fn send_register_response(&mut self, to: Responder, resp: Response, then_mwi: bool) {
        match to {
            Responder::Core(key) => {
                // Read before the 200 is handed over (no copy of it kept), acted on after it.
                let mwi = then_mwi.then(|| self.mwi_device(&resp)).flatten();
                if let Err(e) = self.tl.send_response(&key, resp, Instant::now()) {
                    tracing::debug!(error = %e, "REGISTER response not sent");
                }
                // After the 200 (queued first, so sent first).
                if let Some((user, d)) = mwi {
                    self.mwi_registered(&user, &d);
                }
            }
            Responder::Shard(shard, key) => {
                let confirm = then_mwi && self.mwi_after_register_wanted(&resp);
                if let Some(shards) = &self.shards {
                    shards.reply(shard, key, resp, confirm);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering::Relaxed;

    fn durable(max_held: usize) -> (Durable, mpsc::UnboundedReceiver<WriteCmd>) {
        let (to_writer, writes) = mpsc::unbounded_channel();
        let (_done, committed) = mpsc::unbounded_channel();
        let mut d = Durable::new(to_writer, committed);
        d.max_held = max_held;
        (d, writes)
    }

    fn ok(n: u32) -> (Responder, Response) {
        let key = TransactionKey::client(&format!("z9hG4bK{n}"), rsip::Method::Register);
        let resp = Response {
            status_code: 200.into(),
            version: rsip::Version::V2,
            headers: Default::default(),
            body: Vec::new(),
        };
        (Responder::Core(key), resp)
    }

    fn key_of(r: &Responder) -> &TransactionKey {
        match r {
            Responder::Core(k) | Responder::Shard(_, k) => k,
        }
    }

    /// Every held 200 the commit of everything up to `seq` releases.
    fn release_all(d: &mut Durable, seq: u64) -> Vec<(Responder, Response)> {
        std::iter::from_fn(|| d.release(seq)).collect()
    }

    /// A stored row of `aor` for contact `uri`, expiring `secs` after an epoch.
    fn row(aor: &str, uri: &str, secs: u64) -> StoredBinding {
        StoredBinding {
            aor: aor.into(),
            uri: uri.into(),
            params: String::new(),
            expires_at: SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
            call_id: "c1".into(),
            cseq: 1,
            transport: "udp".into(),
            source: "192.0.2.7:5060".into(),
            local: "192.0.2.1:5060".into(),
        }
    }

    /// The writes queued so far: (seq, AOR, rows), and `flush` for a Flush.
    fn queued(
        writes: &mut mpsc::UnboundedReceiver<WriteCmd>,
    ) -> Vec<(u64, String, Vec<StoredBinding>)> {
        let mut out = Vec::new();
        while let Ok(cmd) = writes.try_recv() {
            match cmd {
                WriteCmd::Save(seq, aor, rows) => out.push((seq, aor, rows)),
                WriteCmd::Flush(_) => out.push((0, "flush".into(), Vec::new())),
            }
        }
        out
    }

    const A: &str = "sip:1000@x";
    const B: &str = "sip:1001@x";

    #[test]
    fn held_200s_are_bounded_and_the_overflow_is_sent_at_once_unwritten_and_counted() {
        let (mut d, mut writes) = durable(2);
        for n in 0..2 {
            let (to, resp) = ok(n);
            assert!(d.hold(A, Vec::new(), to, resp).is_none());
        }
        // Full: the third comes back to be sent now; its write is not queued.
        let (to, resp) = ok(2);
        let (back, _) = d
            .hold(B, Vec::new(), to.clone(), resp)
            .expect("held is full: the response comes back");
        assert_eq!(key_of(&back), key_of(&to));
        assert_eq!(d.unheld.load(Relaxed), 1);
        let queued: Vec<(u64, String)> = queued(&mut writes)
            .into_iter()
            .map(|(s, a, _)| (s, a))
            .collect();
        assert_eq!(queued, [(1, A.to_owned()), (2, A.to_owned())]);

        // The commit of the first releases it; there is room again.
        let out = release_all(&mut d, 1);
        assert_eq!(out.len(), 1);
        assert_eq!(key_of(&out[0].0), key_of(&ok(0).0));
        let (to, resp) = ok(3);
        assert!(d.hold(B, Vec::new(), to, resp).is_none());
        assert!(matches!(writes.try_recv(), Ok(WriteCmd::Save(3, _, _))));
        // Released in the order held, up to the commit's sequence number only.
        let out = release_all(&mut d, 2);
        assert_eq!(out.len(), 1);
        assert_eq!(key_of(&out[0].0), key_of(&ok(1).0));
        let out = release_all(&mut d, 3);
        assert_eq!(out.len(), 1);
        assert_eq!(key_of(&out[0].0), key_of(&ok(3).0));
        assert!(d.held.is_empty());
        assert_eq!(d.unheld.load(Relaxed), 1);
    }

    /// A refresh's 200 goes out at once and nothing is written yet; a change's is held
    /// until the commit of its set, which is queued at once.
    #[test]
    fn a_refresh_is_answered_at_once_and_a_change_waits_for_its_commit() {
        let (mut d, mut writes) = durable(16);
        let t0 = Instant::now();
        let (to, resp) = ok(1);
        let rows_built = std::cell::Cell::new(false);
        let taken = d.take(
            A,
            Change::Refresh,
            || {
                rows_built.set(true);
                vec![row(A, "sip:a@h", 300)]
            },
            to.clone(),
            resp,
            t0,
        );
        let Taken::Behind(back, _) = taken else {
            panic!("a refresh's 200 is not held");
        };
        assert_eq!(key_of(&back), key_of(&to));
        assert!(
            !rows_built.get(),
            "a refresh's rows are built when written, not now"
        );
        assert!(queued(&mut writes).is_empty());
        assert!(d.held.is_empty());

        let (to, resp) = ok(2);
        let taken = d.take(
            B,
            Change::Set,
            || vec![row(B, "sip:b@h", 300)],
            to,
            resp,
            t0,
        );
        assert!(
            matches!(taken, Taken::Held),
            "a change's 200 waits for the commit"
        );
        assert_eq!(
            queued(&mut writes),
            [(1, B.to_owned(), vec![row(B, "sip:b@h", 300)])]
        );
        assert!(release_all(&mut d, 0).is_empty());
        let out = release_all(&mut d, 1);
        assert_eq!(out.len(), 1);
        assert_eq!(key_of(&out[0].0), key_of(&ok(2).0));
    }

    /// Refreshes are written within [`WRITE_BEHIND`] of the first one (virtual time), once
    /// per AOR, each with its set as it is then.
    #[test]
    fn refreshes_are_written_behind_within_the_interval_once_per_aor() {
        let (mut d, mut writes) = durable(16);
        let t0 = Instant::now();
        assert_eq!(d.behind_due(), None);
        for (n, (aor, at)) in [(A, 0), (B, 300), (A, 600)].into_iter().enumerate() {
            let (to, resp) = ok(u32::try_from(n).unwrap_or(0));
            let now = t0 + Duration::from_millis(at);
            assert!(matches!(
                d.take(aor, Change::Refresh, Vec::new, to, resp, now),
                Taken::Behind(..)
            ));
        }
        // Due one interval after the first refresh, not later ones.
        assert_eq!(d.behind_due(), Some(t0 + WRITE_BEHIND));
        let rows_of = |aor: &str| vec![row(aor, "sip:now@h", 900)];
        d.write_behind(Some(t0 + WRITE_BEHIND - Duration::from_millis(1)), rows_of);
        assert!(queued(&mut writes).is_empty(), "written before it was due");
        d.write_behind(Some(t0 + WRITE_BEHIND), rows_of);
        let mut got = queued(&mut writes);
        got.sort_by(|a, b| a.1.cmp(&b.1));
        let aors: Vec<&str> = got.iter().map(|(_, a, _)| a.as_str()).collect();
        assert_eq!(aors, [A, B], "one write per AOR");
        assert!(got
            .iter()
            .all(|(_, aor, rows)| *rows == vec![row(aor, "sip:now@h", 900)]));
        assert_eq!(d.behind_due(), None);
        d.write_behind(Some(t0 + WRITE_BEHIND * 5), rows_of);
        assert!(queued(&mut writes).is_empty(), "nothing waits any more");
    }

    /// A refresh then a change of the same AOR: the change's write carries the set; nothing
    /// older is written after it. A change then a refresh: the refresh writes the set as it
    /// is when due.
    #[test]
    fn a_change_supersedes_a_refresh_waiting_and_a_later_refresh_writes_the_latest_set() {
        let (mut d, mut writes) = durable(16);
        let t0 = Instant::now();
        let (to, resp) = ok(1);
        assert!(matches!(
            d.take(A, Change::Refresh, Vec::new, to, resp, t0),
            Taken::Behind(..)
        ));
        let (to, resp) = ok(2);
        let changed = vec![row(A, "sip:a@h", 300), row(A, "sip:new@h", 300)];
        let set = changed.clone();
        assert!(matches!(
            d.take(A, Change::Set, move || set, to, resp, t0),
            Taken::Held
        ));
        assert_eq!(queued(&mut writes), [(1, A.to_owned(), changed)]);
        assert_eq!(
            d.behind_due(),
            None,
            "nothing waits: the change's write covers it"
        );
        d.write_behind(Some(t0 + WRITE_BEHIND), |aor| {
            vec![row(aor, "sip:stale@h", 1)]
        });
        assert!(queued(&mut writes).is_empty());

        let (to, resp) = ok(3);
        let t1 = t0 + WRITE_BEHIND * 2;
        assert!(matches!(
            d.take(A, Change::Refresh, Vec::new, to, resp, t1),
            Taken::Behind(..)
        ));
        d.write_behind(Some(t1 + WRITE_BEHIND), |aor| {
            vec![row(aor, "sip:latest@h", 900)]
        });
        assert_eq!(
            queued(&mut writes),
            [(2, A.to_owned(), vec![row(A, "sip:latest@h", 900)])]
        );
    }

    /// Shutdown: the flush writes the refreshes waiting before it answers.
    #[tokio::test]
    async fn the_shutdown_flush_writes_the_refreshes_waiting() {
        let (to_writer, mut writes) = mpsc::unbounded_channel();
        let (_done, committed) = mpsc::unbounded_channel();
        let mut d = Durable::new(to_writer, committed);
        let t0 = Instant::now();
        for (n, aor) in [A, B].into_iter().enumerate() {
            let (to, resp) = ok(u32::try_from(n).unwrap_or(0));
            assert!(matches!(
                d.take(aor, Change::Refresh, Vec::new, to, resp, t0),
                Taken::Behind(..)
            ));
        }
        // A writer that records what it is sent and answers the flush.
        let writer = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some(cmd) = writes.recv().await {
                match cmd {
                    WriteCmd::Save(_, aor, rows) => seen.push((aor, rows.len())),
                    WriteCmd::Flush(tx) => {
                        let _ = tx.send(());
                        return seen;
                    }
                }
            }
            seen
        });
        // Long before they are due.
        d.flush(|aor| vec![row(aor, "sip:a@h", 300)]).await;
        let mut seen = writer.await.expect("writer");
        seen.sort();
        assert_eq!(seen, [(A.to_owned(), 1), (B.to_owned(), 1)]);
        assert_eq!(d.behind_due(), None);
    }

    /// The first REGISTER of an AOR restored at start is written as a change, refreshes after
    /// it behind; past [`MAX_BEHIND`] AORs waiting, a refresh is written as a change, counted.
    #[test]
    fn restored_aors_and_refreshes_past_the_bound_are_written_as_changes() {
        let (mut d, mut writes) = durable(16);
        d.max_behind = 1;
        d.unwritten.insert(A.to_owned());
        let t0 = Instant::now();
        let (to, resp) = ok(1);
        assert!(matches!(
            d.take(A, Change::Refresh, Vec::new, to, resp, t0),
            Taken::Held
        ));
        assert_eq!(queued(&mut writes).len(), 1);
        let (to, resp) = ok(2);
        assert!(matches!(
            d.take(A, Change::Refresh, Vec::new, to, resp, t0),
            Taken::Behind(..)
        ));
        // A waits; B finds the set full.
        let (to, resp) = ok(3);
        assert!(matches!(
            d.take(B, Change::Refresh, Vec::new, to, resp, t0),
            Taken::Held
        ));
        assert_eq!(d.behind_full.load(Relaxed), 1);
        // A again is no new entry.
        let (to, resp) = ok(4);
        assert!(matches!(
            d.take(A, Change::Refresh, Vec::new, to, resp, t0),
            Taken::Behind(..)
        ));
        assert_eq!(d.behind_full.load(Relaxed), 1);
        assert_eq!(queued(&mut writes).len(), 1);
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for a in [
            "0.0.0.0:0",
            "127.0.0.1:5060",
            "192.0.2.7:65535",
            "255.255.255.255:1",
            "10.20.30.40:10000",
            "[::1]:5060",
            "[2001:db8::7]:5061",
            "[::ffff:192.0.2.1]:80",
        ] {
            let addr: SocketAddr = a.parse().expect("an address");
            assert_eq!(addr_text(addr), addr.to_string());
            assert_eq!(addr_text(addr), a);
        }
    }
}

//! Durable registrations, the gateway side: restore on start, group-committed writes.
//!
//! **The bound.** A REGISTER that changes an AOR's bindings gets its 200 OK only once the new
//! binding set is committed to the device database, so a gateway killed (even `kill -9`) right
//! after a phone saw its 200 OK still has the binding when it starts again. The writes do not
//! serialise the REGISTER path: the core hands the AOR's rows to a writer task and goes on;
//! the writer commits everything that queued up meanwhile in one transaction (one fsync on
//! SQLite however many REGISTERs it covers) and tells the core how far it got; the held 200s
//! go out then. On SQLite the file runs in WAL mode with `synchronous=FULL` (`sqlstore::open`):
//! the commit fsyncs the WAL before it returns, so the binding behind a 200 OK survives a
//! power loss or OS crash as well as a `kill -9` (NORMAL would promise only the latter); on
//! PostgreSQL it is the server's commit (its `synchronous_commit`). The cost per REGISTER is the commit latency (SQLite: one fsync, shared), not
//! throughput. If the database fails, the 200 is sent anyway (the binding lives in memory; a
//! restart loses it) and the failure is logged and counted: phones keep working through a
//! database outage, as the device cache does.
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
use crate::registrar::Binding;
use crate::sip::message::{self, Request, Response};
use crate::sip::transaction::TransactionKey;
use crate::transport::{self, ConnectionId};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Instant, SystemTime};
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

pub(super) enum WriteCmd {
    /// The binding set of an AOR changed; `seq` numbers the write.
    Save(u64, String, Vec<StoredBinding>),
    /// Answer once everything sent before is committed (shutdown).
    Flush(oneshot::Sender<()>),
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
    held: Vec<(u64, Responder, Response)>,
    /// [`MAX_HELD`] (smaller in tests).
    max_held: usize,
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
            while let Some(first) = rx.recv().await {
                let mut pending: HashMap<String, Vec<StoredBinding>> = HashMap::new();
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
                    let batch: BindingBatch = pending.into_iter().collect();
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
        Durable {
            to_writer,
            committed,
            next_seq: 1,
            held: Vec::new(),
            max_held: MAX_HELD,
            unheld: Default::default(),
            restored: Default::default(),
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
        self.held.push((seq, to, resp));
        None
    }

    /// The held 200s the commit of everything up to `seq` releases, in the order held.
    fn release(&mut self, seq: u64) -> Vec<(Responder, Response)> {
        let (due, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|(s, _, _)| *s <= seq);
        self.held = keep;
        due.into_iter().map(|(_, to, resp)| (to, resp)).collect()
    }

    /// Queues the binding set of `aor`; returns its sequence number.
    fn save(&mut self, aor: &str, rows: Vec<StoredBinding>) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        let _ = self
            .to_writer
            .send(WriteCmd::Save(seq, aor.to_owned(), rows));
        seq
    }

    /// Everything queued so far is committed.
    pub(super) async fn flush(&self) {
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
        source: b.source.addr.to_string(),
        local: b.source.local.to_string(),
    }
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
                self.durable.restored.insert(aor, keys);
            }
        }
        info!(
            aors,
            contacts, skipped, "registrations restored; qualifying their contacts"
        );
    }

    /// A REGISTER was answered `resp`: when it succeeded, its AOR's bindings are stored and the
    /// 200 OK waits for the commit; anything else goes out at once.
    pub(super) fn respond_register(&mut self, to: Responder, req: &Request, resp: Response) {
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
                crate::registrar::canonical_aor(&format!("sip:{user}@{}", self.cfg.realm))
            });
        let Some(aor) = aor else {
            self.send_register_response(to, resp, false);
            return;
        };
        self.registered_again(&aor, req);
        // A binding added to an AOR that is registered already raises no registrar event, yet
        // it may be the AOR's only reachable contact (the others restored and unverified, or
        // failing their qualify: a phone back on a new address after a restart).
        let dev = self.device_key(&aor);
        self.refresh_device(&dev);
        let rows = self.stored_rows(&aor);
        if let Some((to, resp)) = self.durable.hold(&aor, rows, to, resp) {
            if transport::loglimit::allow("register-unheld", None) {
                warn!(
                    held = self.durable.held.len(),
                    "registration commits are behind: 200 OK sent before its binding is stored"
                );
            }
            self.send_register_response(to, resp, true);
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
        let rows = self.stored_rows(aor);
        self.durable.save(aor, rows)
    }

    /// The current binding set of `aor` as stored.
    fn stored_rows(&self, aor: &str) -> Vec<StoredBinding> {
        self.registrar
            .location()
            .get(aor)
            .iter()
            .map(|b| stored(aor, b))
            .collect()
    }

    /// The writer committed everything up to `seq`: the held 200 OKs go out.
    pub(super) fn committed(&mut self, seq: u64) {
        for (to, resp) in self.durable.release(seq) {
            self.send_register_response(to, resp, true);
        }
    }

    /// Sends a REGISTER's final response through its transaction; after a 200 (`then_mwi`),
    /// the phone's message-waiting lamp again: queued after it on the core, or once its
    /// shard reports it sent (`server/shards.rs`).
    fn send_register_response(&mut self, to: Responder, resp: Response, then_mwi: bool) {
        match to {
            Responder::Core(key) => {
                let sent = then_mwi.then(|| resp.clone());
                if let Err(e) = self.tl.send_response(&key, resp, Instant::now()) {
                    tracing::debug!(error = %e, "REGISTER response not sent");
                }
                // After the 200 (queued first, so sent first).
                if let Some(sent) = sent {
                    self.mwi_after_register(&sent);
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

    fn durable(max_held: usize) -> (Durable, mpsc::UnboundedReceiver<WriteCmd>) {
        let (to_writer, writes) = mpsc::unbounded_channel();
        let (_done, committed) = mpsc::unbounded_channel();
        let d = Durable {
            to_writer,
            committed,
            next_seq: 1,
            held: Vec::new(),
            max_held,
            unheld: Default::default(),
            restored: Default::default(),
        };
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

    #[test]
    fn held_200s_are_bounded_and_the_overflow_is_sent_at_once_unwritten_and_counted() {
        let (mut d, mut writes) = durable(2);
        for n in 0..2 {
            let (to, resp) = ok(n);
            assert!(d.hold("sip:1000@x", Vec::new(), to, resp).is_none());
        }
        // Full: the third comes back to be sent now; its write is not queued.
        let (to, resp) = ok(2);
        let (back, _) = d
            .hold("sip:1001@x", Vec::new(), to.clone(), resp)
            .expect("held is full: the response comes back");
        assert_eq!(key_of(&back), key_of(&to));
        assert_eq!(d.unheld.load(std::sync::atomic::Ordering::Relaxed), 1);
        let mut queued = Vec::new();
        while let Ok(WriteCmd::Save(seq, aor, _)) = writes.try_recv() {
            queued.push((seq, aor));
        }
        assert_eq!(
            queued,
            [(1, "sip:1000@x".to_owned()), (2, "sip:1000@x".to_owned())]
        );

        // The commit of the first releases it; there is room again.
        let out = d.release(1);
        assert_eq!(out.len(), 1);
        assert_eq!(key_of(&out[0].0), key_of(&ok(0).0));
        let (to, resp) = ok(3);
        assert!(d.hold("sip:1001@x", Vec::new(), to, resp).is_none());
        assert!(matches!(writes.try_recv(), Ok(WriteCmd::Save(3, _, _))));
        assert_eq!(d.release(3).len(), 2);
        assert!(d.held.is_empty());
        assert_eq!(d.unheld.load(std::sync::atomic::Ordering::Relaxed), 1);
    }
}

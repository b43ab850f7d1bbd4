//! The gateway's hooks into [`crate::security`]: banned sources dropped before the
//! transaction layer, failed authentications logged and counted, challenges sent statelessly
//! (one per request, never retransmitted) and rate-limited per source, the identity a device
//! presents checked against the one it authenticated as.

use super::{Core, Gateway};
use crate::registrar::UserRecord;
use crate::security::{identity, Ban, FailReason, Guard, SecurityEvent};
use crate::sip::message::{self, Request, Response, SipMessage};
use crate::sip::transaction::{TransactionKey, TransactionLayer};
use crate::transport::{Peer, TransportEvent};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::warn;

/// The guard, shared with the [`Gateway`] handle for the ban list.
pub(super) type SharedGuard = Arc<Mutex<Guard>>;

/// One entry of the ban list as the status API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BanEntry {
    /// The banned address.
    pub ip: std::net::IpAddr,
    /// Time left.
    pub remaining: Duration,
    /// Failures counted before the ban.
    pub failures: u32,
    /// `failures` or `guarded-user`.
    pub why: &'static str,
    /// The user of the last failure.
    pub user: String,
    /// Requests dropped since.
    pub dropped: u64,
}

impl Gateway {
    /// The bans in force, soonest to lapse first.
    pub fn bans(&self) -> Vec<BanEntry> {
        let now = Instant::now();
        let g = self.guard.lock().unwrap_or_else(|p| p.into_inner());
        g.bans(now)
            .into_iter()
            .map(|b: Ban| BanEntry {
                ip: b.ip,
                remaining: b.until.saturating_duration_since(now),
                failures: b.failures,
                why: b.why,
                user: b.user,
                dropped: b.dropped,
            })
            .collect()
    }

    /// The defence's counters.
    pub fn security_stats(&self) -> crate::security::SecurityStats {
        self.guard.lock().unwrap_or_else(|p| p.into_inner()).stats()
    }
}

/// Logs a security event (the documented line, target `security`), within the process-wide
/// limit on attacker-driven lines (`sipnet::loglimit`: per kind and per source, with a
/// "N similar suppressed" summary).
fn log(e: &SecurityEvent) {
    let (kind, source) = match e {
        SecurityEvent::AuthFailed { ip, .. } => ("auth-failed", Some(*ip)),
        SecurityEvent::Banned { ip, .. } => ("banned", Some(*ip)),
        SecurityEvent::UserGuarded { .. } => ("user-guarded", None),
    };
    if crate::transport::loglimit::allow(kind, source) {
        warn!(target: "security", "{e}");
    }
}

/// Logs and counts `failures` (of the request `req` from `source`) with the guard.
fn report(
    guard: &SharedGuard,
    failures: impl Iterator<Item = crate::registrar::AuthFailure>,
    req: &Request,
    source: &Peer,
) {
    let method = message::method_name(&req.method).to_owned();
    let now = Instant::now();
    for f in failures {
        let events = lock(guard).failed(
            source.addr.ip(),
            source.addr.port(),
            &f.user,
            &method,
            f.reason,
            now,
        );
        events.iter().for_each(log);
    }
}

/// [`Core::auth_failures`] for a register shard's authenticator.
pub(super) fn report_failures<C>(
    guard: &SharedGuard,
    auth: &mut crate::registrar::Authenticator<C>,
    req: &Request,
    source: &Peer,
) {
    report(
        guard,
        std::iter::from_fn(|| auth.poll_auth_failure()),
        req,
        source,
    );
}

/// Sends a challenge (401/407) statelessly: once, through no transaction (the server
/// transaction is ended, so nothing retransmits it), and only within the source's rate.
/// Any other response goes through the transaction as usual. Shared by the core and the
/// register shards (`server/shards.rs`).
pub(super) fn send_challenge(
    guard: &SharedGuard,
    tl: &mut TransactionLayer<Peer>,
    key: &TransactionKey,
    resp: Response,
    source: &Peer,
) {
    let code = resp.status_code.code();
    if code != 401 && code != 407 {
        if let Err(e) = tl.send_response(key, resp, Instant::now()) {
            tracing::debug!(error = %e, "response not sent");
        }
        return;
    }
    if lock(guard).allow_challenge(source.addr.ip(), Instant::now()) {
        tl.send_stateless(
            SipMessage::Response(resp),
            source.clone(),
            source.tx_transport(),
        );
    } else if crate::transport::loglimit::allow("challenge-limit", Some(source.addr.ip())) {
        warn!(source = %source.addr, "challenge not sent: the source is over its challenge rate");
    }
    tl.terminate(key);
}

fn lock(guard: &SharedGuard) -> std::sync::MutexGuard<'_, Guard> {
    guard.lock().unwrap_or_else(|p| p.into_inner())
}

impl Core {
    fn guard(&self) -> std::sync::MutexGuard<'_, Guard> {
        self.guard.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether what the transports delivered is processed: nothing from a banned source is.
    pub(super) fn admitted(&self, ev: &TransportEvent) -> bool {
        let source = match ev {
            TransportEvent::Message(m) => m.source,
            TransportEvent::BadMessage(b) => b.source,
        };
        self.guard().admit(source.ip(), Instant::now())
    }

    /// Logs and counts the failed authentications the registrar reported for the request
    /// `req` from `source` has just handled.
    pub(super) fn auth_failures(&mut self, req: &Request, source: &Peer) {
        let failures = std::iter::from_fn(|| self.registrar.poll_auth_failure());
        report(&self.guard, failures, req, source);
    }

    /// Sends a challenge (401/407) statelessly: see [`send_challenge`].
    pub(super) fn send_challenge(&mut self, key: &TransactionKey, resp: Response, source: &Peer) {
        send_challenge(&self.guard, &mut self.tl, key, resp, source)
    }

    /// The identity check of an INVITE from authenticated `user`: `Err` with the 403 to send
    /// when its From or P-Asserted-Identity names anyone but the device (its user name or
    /// extension) and the device may not present others.
    pub(super) fn check_identity(
        &mut self,
        req: &Request,
        user: &UserRecord,
        source: &Peer,
    ) -> Result<(), Response> {
        let name = super::user_of(&user.aor);
        let device = self.devices.get(name);
        if device.as_ref().is_some_and(|d| d.present_any) {
            return Ok(());
        }
        let ext = device.and_then(|d| d.extension).unwrap_or_default();
        let Some(foreign) = identity::foreign_identity(req, &[name, &ext]) else {
            return Ok(());
        };
        log(&SecurityEvent::AuthFailed {
            ip: source.addr.ip(),
            port: source.addr.port(),
            user: crate::security::log_user(name),
            method: message::method_name(&req.method).to_owned(),
            reason: FailReason::IdentityMismatch,
        });
        if crate::transport::loglimit::allow("identity", Some(source.addr.ip())) {
            tracing::info!(device = %name, presented = %crate::security::log_user(&foreign), "identity refused: 403");
        }
        let mut r = message::response_for(req, 403, "");
        r.headers.push(rsip::Header::Other(
            "Warning".into(),
            "399 callfabric \"From/P-Asserted-Identity is not the authenticated device\"".into(),
        ));
        Err(r)
    }
}

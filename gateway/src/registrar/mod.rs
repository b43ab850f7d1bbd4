//! Sans-IO registrar (RFC 3261 §10.3) with Digest authentication (RFC 3261 §22, RFC 7616,
//! RFC 8760).
//!
//! The caller hands every REGISTER (already parsed and checked by
//! [`crate::sip::message::validate_request`]) to [`Registrar::handle_request`] together with
//! where it came from and the current time, and sends the returned response through the
//! transaction layer. It calls [`Registrar::expire`] when [`Registrar::next_expiry`] is due and
//! drains [`Registrar::poll_event`] to publish device state. No sockets, no clock, no panics.
//!
//! **Authentication.** A request without usable credentials gets a 401 with two
//! `WWW-Authenticate` fields, `algorithm=SHA-256` first and `algorithm=MD5` second, both
//! `qop="auth"`, sharing one nonce. The nonce is `issued‖counter‖HMAC-SHA-256(secret, …)`, so its
//! validity needs no state; `opaque` is an HMAC of the nonce. The credential store keeps HA1 per
//! algorithm ([`UserRecord`]). An unknown user costs the same work as a known one (a dummy HA1
//! is always computed) and gets exactly the answer a wrong password gets: 401 with a fresh
//! challenge. `stale=true` is sent only when the digest is right but the nonce has expired (or
//! was forgotten by the bounded nonce-count table). A nonce-count not higher than the last one
//! accepted for that nonce is a replay: 401 with a fresh challenge. Malformed credentials for
//! our realm (syntax, missing `username`/`nonce`/`uri`/`response`/`cnonce`/`nc`, `qop` other than
//! `auth`, an algorithm we did not offer) get 400 (RFC 2617 §3.2.2). Several fields for our realm
//! (RFC 3261 §22: a phone answering both challenges) are allowed: the one with the strongest
//! algorithm we offer is verified (SHA-256 before MD5), the others and unparsable fields beside
//! it are ignored. The authenticated user may register only its own AOR (else 403).
//!
//! **No enumeration.** Every challenge is the same whoever the request claims to be: the
//! configured algorithms in the configured order. A device's own algorithm list
//! ([`UserRecord::algorithms`]) only restricts what it may answer with; it no longer shapes its
//! challenge, which told an MD5-only device from an unknown user. The cost: a legacy phone
//! that reads only the first challenge needs the gateway's order to put its algorithm first.
//!
//! **Failures.** Each failed authentication (wrong password, unknown user, replay, a nonce or
//! opaque we did not issue, malformed credentials, another user's AOR) is queued as an
//! [`AuthFailure`] for the caller, who knows the source, to log and throttle
//! ([`crate::security`]); drain [`Registrar::poll_auth_failure`] after each request.
//!
//! **Simplifications.** The digest-uri is not compared with the Request-URI (it is covered by
//! the response hash); contact URIs are compared by a normalised string, not the full §19.1.4
//! rules; `-sess` algorithms, `auth-int` and `userhash` are not offered.

/// Authorization fields for our realm considered in one request; more are ignored.
const MAX_CREDENTIALS: usize = 8;

pub mod client;
pub mod credentials;
pub use sip_core::digest;
mod auth;
pub mod location;
pub mod store;

use std::collections::VecDeque;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rsip::headers::UntypedHeader;

use crate::sip::message::{response_for, Header, Request, Response};

pub use auth::{shard_of, Authenticator, Authorized};
pub use credentials::{Credentials, MemoryCredentials, UserRecord};
pub use digest::Algorithm;
pub use location::{canonical_aor, Binding, Location};

use location::ContactSpec;

/// Registrar settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// The Digest realm (usually the SIP domain).
    pub realm: String,
    /// The server secret nonces and opaques are keyed with (at least 16 random bytes; the
    /// same on every node that must accept the others' nonces).
    pub secret: Vec<u8>,
    /// How long a nonce stays fresh.
    pub nonce_lifetime: Duration,
    /// Expiry granted when the request names none, in seconds.
    pub default_expires: u32,
    /// Shortest expiry accepted (shorter non-zero requests get 423), in seconds.
    pub min_expires: u32,
    /// Longest expiry granted (longer requests are cut down), in seconds.
    pub max_expires: u32,
    /// Most bindings per AOR (Asterisk's `max_contacts`): a REGISTER that would add more is
    /// refused with `403 Too Many Registered Contacts` and a `Warning` naming the limit.
    pub max_bindings_per_aor: usize,
    /// Most nonces whose nonce-count is tracked.
    pub max_tracked_nonces: usize,
    /// Digest algorithms offered, one challenge each, in order of preference (RFC 8760:
    /// `SHA-256` first, then `MD5` for legacy phones). Credentials using an algorithm not
    /// offered are refused.
    pub algorithms: Vec<Algorithm>,
}

impl Config {
    /// Defaults: nonce lifetime 300 s, expiry 3600 s (min 60, max 7200), 10 bindings per AOR,
    /// 65536 tracked nonces (at 10000 challenges/s that is 6.5 s of nonces: an evicted nonce
    /// makes its whole issue second stale, which must not hit nonces still being answered).
    pub fn new(realm: &str, secret: &[u8]) -> Self {
        Config {
            realm: realm.to_owned(),
            secret: secret.to_vec(),
            nonce_lifetime: Duration::from_secs(300),
            default_expires: 3600,
            min_expires: 60,
            max_expires: 7200,
            max_bindings_per_aor: 10,
            max_tracked_nonces: 65536,
            algorithms: vec![Algorithm::Sha256, Algorithm::Md5],
        }
    }
}

/// A failed authentication: who the request claimed to be and why it failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthFailure {
    /// The user name of the credentials (`""` if none could be read).
    pub user: String,
    /// Why.
    pub reason: crate::security::FailReason,
}

/// Most failures queued between two drains (one request queues at most one).
const MAX_QUEUED_FAILURES: usize = 16;

/// What a REGISTER answered 200 did to its AOR's binding set, for whoever stores the set
/// (durable registrations, `server/durable.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The set changed: a contact added or removed (also `*`, `expires=0`, or lapsed ones
    /// dropped first), or a contact's URI, parameters or source changed, or its expiry got
    /// shorter.
    Set,
    /// Only later expiries (and the Call-ID/CSeq that carried them) on the same contacts, from
    /// the same sources: what a phone's periodic re-registration does. A binding stored with
    /// its earlier expiry still restores it correctly. Also a REGISTER that lists nothing
    /// (a query).
    Refresh,
}

/// Device-state news for the gateway to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistrarEvent {
    /// The AOR got its first binding.
    Registered {
        /// Canonical AOR.
        aor: String,
    },
    /// The AOR lost its last binding (unregistered or expired).
    Unregistered {
        /// Canonical AOR.
        aor: String,
    },
}

/// The registrar: authentication, location service, events. `C` is the credential store, `S`
/// what the caller records as a binding's source (e.g. `(SocketAddr, Transport)`).
///
/// Its work is two phases (issue 16, the sharded SIP core): the **authenticate phase**
/// ([`Authenticator::check_register`]: headers, digest, nonce-count, the AOR's owner) needs
/// no mutable state but the nonce-count table, which every [`Authenticator`] of one registrar
/// shares under a short lock, so any number of them can run on other tasks
/// ([`Registrar::authenticator`]); the **bind phase** ([`Registrar::bind`]: the location
/// service and its events) stays with the one owner of the registrar.
/// [`Registrar::handle_request`] is the two in a row.
#[derive(Debug)]
pub struct Registrar<C, S> {
    auth: Authenticator<C>,
    location: Location<S>,
    events: VecDeque<RegistrarEvent>,
}

impl<C: Credentials, S: Clone + PartialEq> Registrar<C, S> {
    /// A registrar with no bindings.
    pub fn new(config: Config, credentials: C) -> Self {
        Registrar {
            auth: Authenticator::new(config, credentials),
            location: Location::default(),
            events: VecDeque::new(),
        }
    }

    /// The next failed authentication, if any (at most one per request handled).
    pub fn poll_auth_failure(&mut self) -> Option<AuthFailure> {
        self.auth.poll_auth_failure()
    }

    /// Refuses (with `stale=true`) every nonce issued before `now`. Call it once at start-up:
    /// nonce-counts live in memory only, so nonces issued before a restart (with the same
    /// secret) could otherwise be replayed until they expire.
    pub fn reject_nonces_issued_before(&mut self, now: SystemTime) {
        self.auth.counts().forget_before(unix(now));
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.auth.config
    }

    /// The credential store.
    pub fn credentials(&self) -> &C {
        &self.auth.credentials
    }

    /// The credential store, to provision users (authenticators made before by
    /// [`Registrar::authenticator`] keep their own copy of a store that is not shared).
    pub fn credentials_mut(&mut self) -> &mut C {
        &mut self.auth.credentials
    }

    /// The location service (read-only).
    pub fn location(&self) -> &Location<S> {
        &self.location
    }

    /// Whether `aor` (any form [`canonical_aor`] accepts) has a binding.
    pub fn is_registered(&self, aor: &str) -> bool {
        !self.contacts(aor).is_empty()
    }

    /// The bindings of `aor` (any form [`canonical_aor`] accepts). Bindings that lapsed since
    /// the last [`Registrar::expire`] are still listed; check [`Binding::expires_at`].
    pub fn contacts(&self, aor: &str) -> &[Binding<S>] {
        match canonical_aor(aor) {
            Some(aor) => self.location.get(&aor),
            None => &[],
        }
    }

    /// Puts back the bindings of `aor` (canonical) read from durable storage after a restart,
    /// replacing any it has; those lapsed at `now` are dropped. No event is queued: the caller
    /// decides what a restored binding means for device state (it is not qualified yet).
    pub fn restore(&mut self, aor: &str, mut bindings: Vec<Binding<S>>, now: SystemTime) {
        bindings.retain(|b| b.expires_at > now);
        bindings.truncate(self.auth.config.max_bindings_per_aor.max(1));
        self.location.set(aor, bindings);
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<RegistrarEvent> {
        self.events.pop_front()
    }

    /// When [`Registrar::expire`] should next be called.
    pub fn next_expiry(&self) -> Option<SystemTime> {
        self.location.next_expiry()
    }

    /// Removes bindings lapsed at `now` and forgets expired nonces; returns the AORs whose last
    /// binding went away (each also queued as [`RegistrarEvent::Unregistered`]).
    pub fn expire(&mut self, now: SystemTime) -> Vec<String> {
        let gone = self.location.expire(now);
        for aor in &gone {
            self.events
                .push_back(RegistrarEvent::Unregistered { aor: aor.clone() });
        }
        let before = unix(now).saturating_sub(self.auth.config.nonce_lifetime.as_secs());
        self.auth.counts().prune(before);
        gone
    }

    /// Handles one request (a REGISTER; anything else gets 405) from `source` at `now` and
    /// returns the final response to send: [`Authenticator::check_register`] then
    /// [`Registrar::bind`].
    pub fn handle_request(&mut self, req: &Request, source: S, now: SystemTime) -> Response {
        self.handle_register(req, source, now).0
    }

    /// [`Registrar::handle_request`], with what a 200 did to the binding set (see
    /// [`Change`]; [`Change::Set`] with any other response).
    pub fn handle_register(
        &mut self,
        req: &Request,
        source: S,
        now: SystemTime,
    ) -> (Response, Change) {
        match self.auth.check_register(req, now) {
            Ok(authorized) => self.bind_change(req, &authorized, source, now),
            Err(r) => (r, Change::Set),
        }
    }

    /// The bind phase of a REGISTER that passed [`Authenticator::check_register`] (here or
    /// on another task): updates the location service (RFC 3261 §10.3 steps 6–8) and returns
    /// the final response (200 with the bindings, or 400/423/500/403 max contacts).
    pub fn bind(
        &mut self,
        req: &Request,
        authorized: &Authorized,
        source: S,
        now: SystemTime,
    ) -> Response {
        self.bind_change(req, authorized, source, now).0
    }

    /// [`Registrar::bind`], with what a 200 did to the binding set (see [`Change`];
    /// [`Change::Set`] with any other response).
    pub fn bind_change(
        &mut self,
        req: &Request,
        authorized: &Authorized,
        source: S,
        now: SystemTime,
    ) -> (Response, Change) {
        let Authorized { aor, call_id, cseq } = authorized;
        self.register(req, aor, call_id, *cseq, source, now)
    }

    /// Digest authentication of a request other than REGISTER (an INVITE from a phone):
    /// `Proxy-Authorization` checked like REGISTER's `Authorization`, challenged with 407 and
    /// `Proxy-Authenticate` (RFC 3261 §22.3). Same nonces, replay protection and answers for
    /// unknown users and wrong passwords.
    pub fn authorize(&mut self, req: &Request, now: SystemTime) -> Result<UserRecord, Response> {
        self.auth.authorize(req, now)
    }

    /// A 401 (REGISTER) or 407 (other methods) with a fresh challenge for `req`, one per
    /// configured algorithm.
    pub fn challenge(&mut self, req: &Request, now: SystemTime, stale: bool) -> Response {
        self.auth.challenge(req, now, stale)
    }
}

impl<C: Clone, S> Registrar<C, S> {
    /// An authenticator for another task (a register shard of the SIP core): a copy of the
    /// settings and the credential store (a shared store, like the gateway's device cache,
    /// stays shared), the same nonce key, and the same nonce-count table and nonce counter
    /// (shared, under a short lock and an atomic), so a nonce issued by any of them is
    /// unique, accepted by all, and its nonce-counts are checked against one table wherever
    /// they arrive: a replay is refused even on another shard or in an INVITE.
    pub fn authenticator(&self) -> Authenticator<C> {
        self.auth.share()
    }
}

impl<C: Credentials, S: Clone + PartialEq> Registrar<C, S> {
    fn register(
        &mut self,
        req: &Request,
        aor: &str,
        call_id: &str,
        cseq: u32,
        source: S,
        now: SystemTime,
    ) -> (Response, Change) {
        let refused = |r: Response| (r, Change::Set);
        let expires_header = match first_value(req, |h| match h {
            Header::Expires(v) => Some(v.value()),
            _ => None,
        }) {
            None => None,
            Some(v) => match location::delta_seconds(v) {
                Some(n) => Some(n),
                None => return refused(response_for(req, 400, "Bad Request")),
            },
        };
        let contact_values = req.headers.iter().filter_map(|h| match h {
            Header::Contact(c) => Some(c.value()),
            _ => None,
        });
        let Ok(contacts) = location::parse_contacts(contact_values) else {
            return refused(response_for(req, 400, "Bad Request"));
        };

        // Bindings that lapsed before this request are gone first (a change of the set).
        let before = self.location.get(aor).len();
        if self.location.expire_aor(aor, now) {
            self.events.push_back(RegistrarEvent::Unregistered {
                aor: aor.to_owned(),
            });
        }
        let had_bindings = !self.location.get(aor).is_empty();
        let mut change = if self.location.get(aor).len() == before {
            Change::Refresh
        } else {
            Change::Set
        };
        let mut bindings: Vec<Binding<S>> = self.location.get(aor).to_vec();

        if contacts.contains(&ContactSpec::Star) {
            if contacts.len() != 1 || expires_header != Some(0) {
                return refused(response_for(req, 400, "Bad Request"));
            }
            // §10.3 step 6: an equal Call-ID with a CSeq not higher aborts the whole request.
            if bindings
                .iter()
                .any(|b| b.call_id == call_id && cseq <= b.cseq)
            {
                return refused(response_for(req, 500, "Server Internal Error"));
            }
            bindings.clear();
            change = Change::Set;
        } else {
            // Requested expiries, checked before anything changes (all or nothing).
            let mut wanted = Vec::with_capacity(contacts.len());
            for c in contacts {
                let ContactSpec::Uri {
                    uri,
                    params,
                    expires,
                } = c
                else {
                    continue;
                };
                let e = expires
                    .or(expires_header)
                    .unwrap_or(self.auth.config.default_expires);
                if e > 0 && e < self.auth.config.min_expires {
                    return refused(with_headers(
                        response_for(req, 423, "Interval Too Brief"),
                        vec![Header::MinExpires(rsip::headers::MinExpires::new(
                            self.auth.config.min_expires.to_string(),
                        ))],
                    ));
                }
                wanted.push((uri, params, e.min(self.auth.config.max_expires)));
            }
            for (uri, params, e) in wanted {
                let key = location::contact_key(&uri);
                match bindings.iter().position(|b| b.key == key) {
                    Some(i) => {
                        let Some(b) = bindings.get_mut(i) else {
                            continue;
                        };
                        if b.call_id == call_id && cseq <= b.cseq {
                            return refused(response_for(req, 500, "Server Internal Error"));
                        }
                        if e == 0 {
                            bindings.remove(i);
                            change = Change::Set;
                        } else {
                            let expires_at = location::add_secs(now, e);
                            if b.uri != uri
                                || b.params != params
                                || b.source != source
                                || expires_at < b.expires_at
                            {
                                change = Change::Set;
                            }
                            b.uri = uri;
                            b.params = params;
                            b.expires_at = expires_at;
                            if b.call_id != call_id {
                                b.call_id = call_id.to_owned();
                            }
                            b.cseq = cseq;
                            b.source = source.clone();
                        }
                    }
                    None if e == 0 => {}
                    None => {
                        if bindings.len() >= self.auth.config.max_bindings_per_aor {
                            return refused(too_many_contacts(req, &self.auth.config));
                        }
                        change = Change::Set;
                        bindings.push(Binding {
                            uri,
                            params,
                            expires_at: location::add_secs(now, e),
                            call_id: call_id.to_owned(),
                            cseq,
                            source: source.clone(),
                            key,
                        });
                    }
                }
            }
        }

        let has_bindings = !bindings.is_empty();
        let listed: Vec<Header> = bindings
            .iter()
            .map(|b| Header::Contact(rsip::headers::Contact::new(b.contact_value(now))))
            .collect();
        self.location.set(aor, bindings);
        match (had_bindings, has_bindings) {
            (false, true) => self.events.push_back(RegistrarEvent::Registered {
                aor: aor.to_owned(),
            }),
            (true, false) => self.events.push_back(RegistrarEvent::Unregistered {
                aor: aor.to_owned(),
            }),
            _ => {}
        }
        (with_headers(response_for(req, 200, "OK"), listed), change)
    }
}

/// The refusal of a REGISTER over the per-user binding limit: 403 as Asterisk answers (its
/// `max_contacts`), with a reason phrase like Kamailio's and a `Warning` (RFC 3261 §20.43,
/// code 399) that says which limit, so the phone's user or its admin can tell why.
fn too_many_contacts(req: &Request, config: &Config) -> Response {
    let n = config.max_bindings_per_aor;
    let text = format!("at most {n} contacts per user (max_contacts)");
    let mut resp = response_for(req, 403, "");
    // rsip names 403 "Forbidden"; `Other` carries our own reason phrase to the wire.
    resp.status_code = rsip::StatusCode::Other(403, "Too Many Registered Contacts".into());
    with_headers(
        resp,
        vec![Header::Other(
            "Warning".into(),
            format!("399 {} \"{text}\"", config.realm.replace(['"', ' '], "")),
        )],
    )
}

fn unix(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn first_value<'a>(
    req: &'a Request,
    pick: impl Fn(&'a Header) -> Option<&'a str>,
) -> Option<&'a str> {
    req.headers.iter().find_map(pick)
}

/// Inserts `extra` before the final `Content-Length` of a response built by `response_for`.
fn with_headers(mut resp: Response, extra: Vec<Header>) -> Response {
    let mut headers: Vec<Header> = std::mem::take(&mut resp.headers).into();
    let tail = match headers.last() {
        Some(Header::ContentLength(_)) => headers.pop(),
        _ => None,
    };
    headers.extend(extra);
    headers.extend(tail);
    resp.headers = headers.into();
    resp
}

//! The authenticate phase of the registrar (issue 16): everything about a REGISTER that needs
//! no location service — its headers, the digest, the nonce and its nonce-count, whether the
//! authenticated user owns the AOR — so that it can run on any number of tasks (the register
//! shards of the gateway's SIP core) beside the one that owns the bindings.
//!
//! What the authenticators of one registrar share: the nonce-count table (one `Mutex`, held
//! for one table lookup per authorized request) and the nonce counter (an atomic), so nonces
//! are unique whoever issued them and a nonce-count is a replay wherever it arrives. The
//! nonce key and the credential store are copies (the gateway's device cache is itself a
//! shared handle).

use std::borrow::Cow;
use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use rsip::headers::UntypedHeader;

use super::digest::{
    self, Algorithm, DigestCredentials, NcError, NonceCounts, NonceKey, NonceStatus,
};
use super::{
    canonical_aor, first_value, unix, with_headers, AuthFailure, Config, Credentials, UserRecord,
    MAX_CREDENTIALS, MAX_QUEUED_FAILURES,
};
use crate::security::FailReason;
use crate::sip::message::{method_name, response_for, Header, Method, Request, Response};

/// The state every authenticator of one registrar shares.
#[derive(Debug)]
struct Shared {
    /// Nonce-counts seen, by nonce (bounded: `Config::max_tracked_nonces`).
    counts: Mutex<NonceCounts>,
    /// The counter in each nonce issued.
    counter: AtomicU64,
}

/// The authenticate phase of a [`super::Registrar`]; one per task that authenticates
/// ([`super::Registrar::authenticator`]).
#[derive(Debug)]
pub struct Authenticator<C> {
    pub(super) config: Config,
    pub(super) credentials: C,
    nonce_key: NonceKey,
    shared: Arc<Shared>,
    failures: VecDeque<AuthFailure>,
}

/// Outcome of authenticating a request.
pub(super) enum Auth {
    Ok(UserRecord),
    Reply(Response),
}

/// A REGISTER whose credentials verified and whose AOR the user owns: what the bind phase
/// ([`super::Registrar::bind`]) needs besides the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorized {
    /// The user's own canonical AOR (the bindings are kept under it).
    pub aor: String,
    /// The request's Call-ID, trimmed.
    pub call_id: String,
    /// Its CSeq number.
    pub cseq: u32,
}

/// The register shard (of `shards`, at least 1) a REGISTER with this Call-ID goes to: a
/// stable hash of the trimmed Call-ID, so a phone's refreshes and every retransmission land
/// on the same shard (its transaction, and the nonce it answers, stay there).
pub fn shard_of(call_id: &str, shards: usize) -> usize {
    // SipHash with fixed keys: the same shard for a Call-ID on every run.
    let mut h = std::hash::DefaultHasher::new();
    call_id.trim().hash(&mut h);
    (h.finish() % shards.max(1) as u64) as usize
}

impl<C> Authenticator<C> {
    pub(super) fn new(config: Config, credentials: C) -> Self {
        Authenticator {
            nonce_key: NonceKey::new(&config.secret),
            shared: Arc::new(Shared {
                counts: Mutex::new(NonceCounts::new(config.max_tracked_nonces)),
                counter: AtomicU64::new(0),
            }),
            config,
            credentials,
            failures: VecDeque::new(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The next failed authentication, if any (at most one per request handled).
    pub fn poll_auth_failure(&mut self) -> Option<AuthFailure> {
        self.failures.pop_front()
    }

    pub(super) fn failed(&mut self, user: Option<&str>, reason: FailReason) {
        if self.failures.len() >= MAX_QUEUED_FAILURES {
            self.failures.pop_front();
        }
        self.failures.push_back(AuthFailure {
            user: user.unwrap_or("").to_owned(),
            reason,
        });
    }

    /// The shared nonce-count table (a poisoned lock is taken over: the table stays valid
    /// between its operations).
    pub(super) fn counts(&self) -> MutexGuard<'_, NonceCounts> {
        self.shared.counts.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<C: Clone> Authenticator<C> {
    /// Another authenticator sharing this one's nonce-count table and counter.
    pub(super) fn share(&self) -> Self {
        Authenticator {
            config: self.config.clone(),
            credentials: self.credentials.clone(),
            nonce_key: self.nonce_key.clone(),
            shared: self.shared.clone(),
            failures: VecDeque::new(),
        }
    }
}

impl<C: Credentials> Authenticator<C> {
    /// The authenticate phase of a REGISTER (anything else gets 405): `Ok` when its digest
    /// verifies and the user owns the AOR in its To; otherwise the final response (400 for a
    /// malformed request or credentials, 401 with a fresh challenge, 403 for another user's
    /// AOR). Failed authentications are queued ([`Authenticator::poll_auth_failure`]).
    pub fn check_register(
        &mut self,
        req: &Request,
        now: SystemTime,
    ) -> Result<Authorized, Response> {
        if req.method != Method::Register {
            return Err(with_headers(
                response_for(req, 405, "Method Not Allowed"),
                vec![Header::Allow(rsip::headers::Allow::new("REGISTER"))],
            ));
        }
        let (Some(call_id), Some(cseq), Some(to)) = (
            first_value(req, |h| match h {
                Header::CallId(v) => Some(v.value()),
                _ => None,
            }),
            first_value(req, |h| match h {
                Header::CSeq(v) => Some(v.value()),
                _ => None,
            })
            .and_then(|v| v.split_whitespace().next())
            .and_then(|n| n.parse::<u32>().ok()),
            first_value(req, |h| match h {
                Header::To(v) => Some(v.value()),
                _ => None,
            }),
        ) else {
            return Err(response_for(req, 400, "Bad Request"));
        };
        let call_id = call_id.trim().to_owned();
        let Some(aor) = canonical_aor(to) else {
            return Err(response_for(req, 400, "Bad Request"));
        };
        let user = match self.authenticate(req, now) {
            Auth::Ok(user) => user,
            Auth::Reply(r) => return Err(r),
        };
        // A phone addresses the registrar by whatever host it was given (IP, port, domain):
        // ownership is decided by the user part, and bindings are kept under the user's own
        // canonical AOR.
        let own = canonical_aor(&user.aor);
        let user_of = |a: &str| {
            a.split_once(':')
                .map(|(_, r)| r.split('@').next().unwrap_or("").to_owned())
        };
        match own {
            Some(own) if user_of(&own) == user_of(&aor) => Ok(Authorized {
                aor: own,
                call_id,
                cseq,
            }),
            _ => {
                let user = user_of(&user.aor).unwrap_or_default();
                self.failed(Some(&user), FailReason::WrongAor);
                Err(response_for(req, 403, "Forbidden"))
            }
        }
    }

    /// Digest authentication of a request other than REGISTER (see
    /// [`super::Registrar::authorize`]).
    pub fn authorize(&mut self, req: &Request, now: SystemTime) -> Result<UserRecord, Response> {
        match self.authenticate(req, now) {
            Auth::Ok(user) => Ok(user),
            Auth::Reply(r) => Err(r),
        }
    }

    /// A 401 (REGISTER) or 407 (other methods) with a fresh challenge for `req`, one per
    /// configured algorithm.
    pub fn challenge(&mut self, req: &Request, now: SystemTime, stale: bool) -> Response {
        let proxy = req.method != Method::Register;
        // One counter for every authenticator of the registrar: nonces unique across shards.
        let counter = self
            .shared
            .counter
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_add(1);
        let (nonce, opaque) = self.nonce_key.issue(unix(now), counter);
        let realm = digest::quote(&self.config.realm);
        let stale = if stale { ", stale=true" } else { "" };
        // The same challenge whoever is claimed (no enumeration): the configured list.
        let headers = self
            .config
            .algorithms
            .iter()
            .map(|alg| {
                // `Digest realm=…, qop="auth", algorithm=…, nonce="…", opaque="…"[, stale=true]`
                // (push_str: format! costs more than the rest of the value).
                let mut value = String::with_capacity(
                    112 + realm.len() + nonce.len() + opaque.len() + stale.len(),
                );
                for part in [
                    "Digest realm=",
                    &realm,
                    ", qop=\"auth\", algorithm=",
                    alg.token(),
                    ", nonce=\"",
                    &nonce,
                    "\", opaque=\"",
                    &opaque,
                    "\"",
                    stale,
                ] {
                    value.push_str(part);
                }
                if proxy {
                    Header::ProxyAuthenticate(rsip::headers::ProxyAuthenticate::new(value))
                } else {
                    Header::WwwAuthenticate(rsip::headers::WwwAuthenticate::new(value))
                }
            })
            .collect();
        if proxy {
            with_headers(
                response_for(req, 407, "Proxy Authentication Required"),
                headers,
            )
        } else {
            with_headers(response_for(req, 401, "Unauthorized"), headers)
        }
    }

    pub(super) fn authenticate(&mut self, req: &Request, now: SystemTime) -> Auth {
        // The Authorization fields for our realm. RFC 3261 §22 allows several: the strongest
        // algorithm we offer wins (SHA-256 before MD5), the others are ignored.
        let mut malformed = false;
        let mut ours: Vec<DigestCredentials<'_>> = Vec::new();
        let proxy = req.method != Method::Register;
        for h in req.headers.iter() {
            let value = match h {
                Header::Authorization(a) if !proxy => a.value(),
                Header::ProxyAuthorization(a) if proxy => a.value(),
                _ => continue,
            };
            match digest::parse_authorization(value) {
                Ok(c) => {
                    if c.realm.as_deref() == Some(self.config.realm.as_str()) {
                        if ours.len() < MAX_CREDENTIALS {
                            ours.push(c);
                        }
                    } else if c.realm.is_none() {
                        malformed = true;
                    }
                }
                Err(digest::AuthHeaderError::NotDigest) => {}
                Err(_) => malformed = true,
            }
        }
        let strength = |c: &DigestCredentials<'_>| {
            let alg = match c.algorithm.as_deref() {
                None => Some(Algorithm::Md5),
                Some(t) => Algorithm::from_token(t),
            };
            match alg {
                Some(a) if self.config.algorithms.contains(&a) => match a {
                    Algorithm::Sha256 => 2,
                    Algorithm::Md5 => 1,
                },
                _ => 0,
            }
        };
        // The first of the strongest; one we cannot use is checked (and refused) only alone.
        let best = ours
            .iter()
            .enumerate()
            .max_by_key(|(i, c)| (strength(c), std::cmp::Reverse(*i)))
            .map(|(i, _)| i);
        let c = match best {
            Some(i) if strength(&ours[i]) > 0 || (ours.len() == 1 && !malformed) => {
                ours.swap_remove(i)
            }
            Some(i) => {
                let user = ours[i].username.clone();
                self.failed(user.as_deref(), FailReason::Malformed);
                return Auth::Reply(response_for(req, 400, "Bad Request"));
            }
            None if malformed => {
                self.failed(None, FailReason::Malformed);
                return Auth::Reply(response_for(req, 400, "Bad Request"));
            }
            None => return Auth::Reply(self.challenge(req, now, false)),
        };
        let (Some(username), Some(nonce), Some(uri), Some(resp), Some(cnonce), Some(nc), Some(qop)) = (
            c.username.as_deref(),
            c.nonce.as_deref(),
            c.uri.as_deref(),
            c.response.as_deref(),
            c.cnonce.as_deref(),
            c.nc.as_deref(),
            c.qop.as_deref(),
        ) else {
            self.failed(c.username.as_deref(), FailReason::Malformed);
            return Auth::Reply(response_for(req, 400, "Bad Request"));
        };
        let alg = match c.algorithm.as_deref() {
            None => Some(Algorithm::Md5),
            Some(t) => Algorithm::from_token(t),
        };
        let nc_value = (nc.len() == 8 && nc.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| u32::from_str_radix(nc, 16).ok())
            .flatten();
        let (Some(alg), Some(nc_value), true) = (alg, nc_value, qop.eq_ignore_ascii_case("auth"))
        else {
            self.failed(Some(username), FailReason::Malformed);
            return Auth::Reply(response_for(req, 400, "Bad Request"));
        };

        let lifetime = self.config.nonce_lifetime.as_secs();
        let Some(verified) = self.nonce_key.verify(nonce, unix(now), lifetime) else {
            self.failed(Some(username), FailReason::BadNonce);
            return Auth::Reply(self.challenge(req, now, false));
        };
        let status = verified.status;

        // Same work whether or not the user exists: a dummy HA1 is always computed.
        let record = self.credentials.lookup(username, &self.config.realm);
        let dummy = digest::ha1(alg, username, &self.config.realm, "");
        // The algorithm must be one this user is challenged with; otherwise it fails like a
        // wrong password (same work, same answer).
        let allowed = |r: &UserRecord| {
            if r.algorithms.is_empty() {
                self.config.algorithms.contains(&alg)
            } else {
                r.algorithms.contains(&alg)
            }
        };
        let (known, ha1) = match &record {
            Some(r) if r.ha1(alg).len() == alg.hex_len() && allowed(r) => {
                let stored = r.ha1(alg);
                let lower = if stored.bytes().any(|b| b.is_ascii_uppercase()) {
                    Cow::Owned(stored.to_ascii_lowercase())
                } else {
                    Cow::Borrowed(stored)
                };
                (true, lower)
            }
            _ => (false, Cow::Owned(dummy)),
        };
        let ha2 = digest::ha2(alg, method_name(&req.method), uri);
        let expected = digest::response(alg, &ha1, nonce, nc, cnonce, qop, &ha2);
        let digest_ok = digest::ct_eq_lowercase(expected.as_bytes(), resp.as_bytes());
        let opaque_ok = match c.opaque.as_deref() {
            None => true,
            Some(o) => digest::ct_eq(o.as_bytes(), verified.opaque().as_bytes()),
        };
        let record = match record {
            Some(r) if digest_ok & opaque_ok & known => r,
            other => {
                let reason = match (other.is_some(), opaque_ok) {
                    (false, _) => FailReason::UnknownUser,
                    (true, false) => FailReason::BadNonce,
                    (true, true) => FailReason::WrongPassword,
                };
                self.failed(Some(username), reason);
                return Auth::Reply(self.challenge(req, now, false));
            }
        };
        if matches!(status, NonceStatus::Expired(_)) {
            return Auth::Reply(self.challenge(req, now, true));
        }
        let recorded = self.counts().record(verified.id(), nc_value);
        match recorded {
            Ok(()) => Auth::Ok(record),
            Err(NcError::Forgotten) => Auth::Reply(self.challenge(req, now, true)),
            Err(NcError::Replay) => {
                self.failed(Some(username), FailReason::Replay);
                Auth::Reply(self.challenge(req, now, false))
            }
        }
    }
}

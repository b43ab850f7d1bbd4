//! HTTP/SIP Digest arithmetic (RFC 3261 §22.4, RFC 7616, RFC 8760), the `Authorization` header
//! parser, self-validating nonces and nonce-count replay tracking.
//!
//! Everything here is pure and never panics on any input.

use std::borrow::Cow;
use std::collections::BTreeMap;

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac as _};
use sha2::{Digest as _, Sha256};

/// A digest algorithm this registrar offers (RFC 8760 tokens).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// `SHA-256` (RFC 7616, RFC 8760). Offered first.
    Sha256,
    /// `MD5` (RFC 2617, RFC 3261). Offered second, for older phones.
    Md5,
}

impl Algorithm {
    /// The wire token: `SHA-256` or `MD5`.
    pub fn token(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "SHA-256",
            Algorithm::Md5 => "MD5",
        }
    }

    /// Parses a wire token (case-insensitive). `-sess` variants are not supported.
    pub fn from_token(token: &str) -> Option<Self> {
        if token.eq_ignore_ascii_case("SHA-256") {
            Some(Algorithm::Sha256)
        } else if token.eq_ignore_ascii_case("MD5") {
            Some(Algorithm::Md5)
        } else {
            None
        }
    }

    /// Length in hex digits of a hash of this algorithm.
    pub fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Md5 => 32,
        }
    }

    /// `H(data)` as lowercase hex.
    pub fn hash_hex(self, data: &[u8]) -> String {
        match self {
            Algorithm::Sha256 => to_hex(&Sha256::digest(data)),
            Algorithm::Md5 => to_hex(&md5::compute(data).0),
        }
    }

    /// `H(parts joined by ":")` as lowercase hex, the parts fed to the hash as they are
    /// (no joined copy).
    fn hash_joined(self, parts: &[&str]) -> String {
        let pieces = parts
            .iter()
            .enumerate()
            .flat_map(|(i, p)| [if i == 0 { &b""[..] } else { b":" }, p.as_bytes()]);
        match self {
            Algorithm::Sha256 => {
                let mut h = Sha256::new();
                pieces.for_each(|p| h.update(p));
                to_hex(&h.finalize())
            }
            Algorithm::Md5 => {
                let mut h = md5::Context::new();
                pieces.for_each(|p| h.consume(p));
                to_hex(&h.finalize().0)
            }
        }
    }
}

/// `H(username ":" realm ":" password)`: what a credential store keeps instead of the password.
pub fn ha1(alg: Algorithm, username: &str, realm: &str, password: &str) -> String {
    alg.hash_joined(&[username, realm, password])
}

/// `H(method ":" digest-uri)` for `qop=auth`.
pub fn ha2(alg: Algorithm, method: &str, uri: &str) -> String {
    alg.hash_joined(&[method, uri])
}

/// The request-digest for `qop=auth`:
/// `KD(HA1, nonce ":" nc ":" cnonce ":" qop ":" HA2)` with `KD(s, d) = H(s ":" d)`.
pub fn response(
    alg: Algorithm,
    ha1: &str,
    nonce: &str,
    nc: &str,
    cnonce: &str,
    qop: &str,
    ha2: &str,
) -> String {
    alg.hash_joined(&[ha1, nonce, nc, cnonce, qop, ha2])
}

/// Constant-time equality (time depends only on the lengths).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    let n = a.len().max(b.len());
    for i in 0..n {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0xff);
        diff |= x ^ y;
    }
    diff == 0
}

/// HMAC-SHA-256 (RFC 2104).
pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    inner.update(msg);
    let inner = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner);
    outer.finalize().into()
}

pub(crate) fn to_hex(bytes: &[u8]) -> String {
    let mut s = vec![0u8; bytes.len() * 2];
    for (o, &b) in s.chunks_exact_mut(2).zip(bytes) {
        o.copy_from_slice(&hex_pair(b));
    }
    // Only ASCII hex digits were written.
    String::from_utf8(s).unwrap_or_default()
}

fn hex_pair(b: u8) -> [u8; 2] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    [HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]
}

/// Constant-time equality of `expected` (lowercase) and `given` read case-insensitively for
/// ASCII letters: as [`ct_eq`] of `expected` and `given` lowercased, without the copy (time
/// depends only on the lengths).
pub fn ct_eq_lowercase(expected: &[u8], given: &[u8]) -> bool {
    let mut diff = u8::from(expected.len() != given.len());
    let n = expected.len().max(given.len());
    for i in 0..n {
        let x = expected.get(i).copied().unwrap_or(0);
        let y = given.get(i).map_or(0xff, u8::to_ascii_lowercase);
        diff |= x ^ y;
    }
    diff == 0
}

// ---------------------------------------------------------------------------------------------
// Authorization header
// ---------------------------------------------------------------------------------------------

/// The Digest credentials of one `Authorization` header field (RFC 3261 §25 `dig-resp`),
/// borrowed from the field's text (a quoted value with escapes is unescaped into its own
/// string). Fields absent from the header are `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DigestCredentials<'a> {
    /// `username`.
    pub username: Option<Cow<'a, str>>,
    /// `realm`.
    pub realm: Option<Cow<'a, str>>,
    /// `nonce`.
    pub nonce: Option<Cow<'a, str>>,
    /// `uri` (digest-uri).
    pub uri: Option<Cow<'a, str>>,
    /// `response` (request-digest).
    pub response: Option<Cow<'a, str>>,
    /// `algorithm` (absent means MD5).
    pub algorithm: Option<Cow<'a, str>>,
    /// `cnonce`.
    pub cnonce: Option<Cow<'a, str>>,
    /// `opaque`.
    pub opaque: Option<Cow<'a, str>>,
    /// `qop` (message-qop).
    pub qop: Option<Cow<'a, str>>,
    /// `nc` (nonce-count, 8 hex digits).
    pub nc: Option<Cow<'a, str>>,
}

/// Why an `Authorization` header field could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthHeaderError {
    /// The scheme is not `Digest` (the field is not for us).
    #[error("not a Digest authorization")]
    NotDigest,
    /// Syntax error.
    #[error("malformed Digest authorization: {0}")]
    Malformed(&'static str),
    /// A parameter appears twice.
    #[error("duplicate Digest parameter {0:?}")]
    Duplicate(String),
}

/// The most parameters one header may carry (bounds the work per header).
const MAX_AUTH_PARAMS: usize = 64;

/// Parses an `Authorization` (or `Proxy-Authorization`) value: `Digest` then comma-separated
/// `name=value` pairs in any order, names case-insensitive, values tokens or quoted strings with
/// `\` escapes. Unknown parameters are ignored. Never panics.
pub fn parse_authorization(value: &str) -> Result<DigestCredentials<'_>, AuthHeaderError> {
    let b = value.as_bytes();
    let mut i = skip_lws(b, 0);
    let start = i;
    while i < b.len() && is_token(b[i]) {
        i += 1;
    }
    let scheme = value.get(start..i).unwrap_or("");
    if !scheme.eq_ignore_ascii_case("Digest") {
        return Err(AuthHeaderError::NotDigest);
    }
    if i < b.len() && !is_lws(b[i]) {
        return Err(AuthHeaderError::Malformed("no space after scheme"));
    }
    let mut creds = DigestCredentials::default();
    let mut count = 0usize;
    let mut first = true;
    loop {
        i = skip_lws(b, i);
        if i >= b.len() {
            break;
        }
        if !first {
            if b[i] != b',' {
                return Err(AuthHeaderError::Malformed("expected comma"));
            }
            i = skip_lws(b, i + 1);
        }
        first = false;
        count += 1;
        if count > MAX_AUTH_PARAMS {
            return Err(AuthHeaderError::Malformed("too many parameters"));
        }
        let ns = i;
        while i < b.len() && is_token(b[i]) {
            i += 1;
        }
        if ns == i {
            return Err(AuthHeaderError::Malformed("expected parameter name"));
        }
        let name = value.get(ns..i).unwrap_or("");
        i = skip_lws(b, i);
        if b.get(i) != Some(&b'=') {
            return Err(AuthHeaderError::Malformed("expected '='"));
        }
        i = skip_lws(b, i + 1);
        let val = if b.get(i) == Some(&b'"') {
            i += 1;
            // Fast path: no escapes, the value is the text up to the closing quote.
            let end = memchr::memchr2(b'"', b'\\', &b[i..]);
            if let Some(n) = end.filter(|&n| b.get(i + n) == Some(&b'"')) {
                let v = Cow::Borrowed(value.get(i..i + n).unwrap_or(""));
                i += n + 1;
                v
            } else {
                let mut out = Vec::new();
                loop {
                    match b.get(i) {
                        None => {
                            return Err(AuthHeaderError::Malformed("unterminated quoted string"))
                        }
                        Some(b'"') => {
                            i += 1;
                            break;
                        }
                        Some(b'\\') => match b.get(i + 1) {
                            Some(&c) => {
                                out.push(c);
                                i += 2;
                            }
                            None => return Err(AuthHeaderError::Malformed("dangling escape")),
                        },
                        Some(&c) => {
                            out.push(c);
                            i += 1;
                        }
                    }
                }
                Cow::Owned(String::from_utf8_lossy(&out).into_owned())
            }
        } else {
            let vs = i;
            while i < b.len() && is_token(b[i]) {
                i += 1;
            }
            if vs == i {
                return Err(AuthHeaderError::Malformed("expected parameter value"));
            }
            Cow::Borrowed(value.get(vs..i).unwrap_or(""))
        };
        let is = |n: &str| name.eq_ignore_ascii_case(n);
        let slot = if is("username") {
            &mut creds.username
        } else if is("realm") {
            &mut creds.realm
        } else if is("nonce") {
            &mut creds.nonce
        } else if is("uri") {
            &mut creds.uri
        } else if is("response") {
            &mut creds.response
        } else if is("algorithm") {
            &mut creds.algorithm
        } else if is("cnonce") {
            &mut creds.cnonce
        } else if is("opaque") {
            &mut creds.opaque
        } else if is("qop") {
            &mut creds.qop
        } else if is("nc") {
            &mut creds.nc
        } else {
            continue;
        };
        if slot.is_some() {
            return Err(AuthHeaderError::Duplicate(name.to_ascii_lowercase()));
        }
        *slot = Some(val);
    }
    Ok(creds)
}

/// Quotes `s` as an RFC 3261 quoted-string.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        if !c.is_control() {
            out.push(c);
        }
    }
    out.push('"');
    out
}

fn is_lws(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\r' | b'\n')
}

fn skip_lws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && is_lws(b[i]) {
        i += 1;
    }
    i
}

pub fn is_token(c: u8) -> bool {
    TOKEN[usize::from(c)]
}

/// RFC 3261 `token` bytes: alphanumerics and `-.!%*_+`'~`.
const TOKEN: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
            );
        c += 1;
    }
    t
};

// ---------------------------------------------------------------------------------------------
// Nonces
// ---------------------------------------------------------------------------------------------

/// What [`check_nonce`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceStatus {
    /// Ours and within its lifetime; issued at this unix second.
    Fresh(u64),
    /// Ours but older than its lifetime; issued at this unix second.
    Expired(u64),
    /// Not a nonce we issued (or forged).
    Invalid,
}

const NONCE_MAC_LEN: usize = 16;
const OPAQUE_LEN: usize = 12;

/// The server secret as an HMAC-SHA-256 key, keyed once: the key's padded blocks are hashed
/// at start-up, so each nonce costs two SHA-256 blocks instead of four.
///
/// A nonce is the hex of `issued (8 bytes BE) || counter (8 bytes BE) || MAC[..16]` with
/// `MAC = HMAC-SHA-256(secret, issued || counter)`, valid without any per-nonce state; its
/// `opaque` is the hex of `MAC[16..28]`, so one HMAC yields (and checks) both.
#[derive(Clone)]
pub struct NonceKey(Hmac<Sha256>);

impl std::fmt::Debug for NonceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NonceKey(..)")
    }
}

impl NonceKey {
    /// Keys HMAC-SHA-256 with `secret`.
    pub fn new(secret: &[u8]) -> Self {
        // HMAC takes keys of any length (RFC 2104 §2): this never falls back.
        let mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret)
            .unwrap_or_else(|_| <Hmac<Sha256> as KeyInit>::new(&Default::default()));
        NonceKey(mac)
    }

    fn mac(&self, body: &[u8]) -> [u8; 32] {
        let mut mac = self.0.clone();
        mac.update(body);
        mac.finalize().into_bytes().into()
    }

    /// A fresh nonce and its opaque.
    pub fn issue(&self, issued_unix: u64, counter: u64) -> (String, String) {
        let mut raw = [0u8; 16 + NONCE_MAC_LEN];
        raw[..8].copy_from_slice(&issued_unix.to_be_bytes());
        raw[8..16].copy_from_slice(&counter.to_be_bytes());
        let mac = self.mac(&raw[..16]);
        raw[16..].copy_from_slice(&mac[..NONCE_MAC_LEN]);
        let opaque = to_hex(&mac[NONCE_MAC_LEN..NONCE_MAC_LEN + OPAQUE_LEN]);
        (to_hex(&raw), opaque)
    }

    /// Checks a nonce this key issued; for one of ours, also the opaque that goes with it.
    pub fn check(
        &self,
        nonce: &str,
        now_unix: u64,
        lifetime_secs: u64,
    ) -> (NonceStatus, Option<String>) {
        match self.verify(nonce, now_unix, lifetime_secs) {
            Some(v) => (v.status, Some(v.opaque().to_owned())),
            None => (NonceStatus::Invalid, None),
        }
    }

    /// Checks a nonce this key issued: `None` if it is not one of ours (or forged), else its
    /// status, its counter and its opaque, without allocating.
    pub fn verify(&self, nonce: &str, now_unix: u64, lifetime_secs: u64) -> Option<VerifiedNonce> {
        let mut raw = [0u8; 16 + NONCE_MAC_LEN];
        if !from_hex_into(nonce, &mut raw) {
            return None;
        }
        let (body, tag) = raw.split_at(16);
        let mac = self.mac(body);
        if !ct_eq(tag, &mac[..NONCE_MAC_LEN]) {
            return None;
        }
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&body[..8]);
        let issued = u64::from_be_bytes(ts);
        ts.copy_from_slice(&body[8..16]);
        let counter = u64::from_be_bytes(ts);
        let status = if now_unix > issued.saturating_add(lifetime_secs) {
            NonceStatus::Expired(issued)
        } else {
            NonceStatus::Fresh(issued)
        };
        let mut opaque = [0u8; 2 * OPAQUE_LEN];
        for (o, &b) in opaque
            .chunks_exact_mut(2)
            .zip(&mac[NONCE_MAC_LEN..NONCE_MAC_LEN + OPAQUE_LEN])
        {
            o.copy_from_slice(&hex_pair(b));
        }
        Some(VerifiedNonce {
            status,
            issued,
            counter,
            opaque,
        })
    }
}

/// A nonce [`NonceKey::verify`] found to be ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifiedNonce {
    /// Fresh or expired (never [`NonceStatus::Invalid`]).
    pub status: NonceStatus,
    /// The unix second it was issued at.
    pub issued: u64,
    /// The counter it was issued with.
    pub counter: u64,
    opaque: [u8; 2 * OPAQUE_LEN],
}

impl VerifiedNonce {
    /// The opaque issued with it (lowercase hex).
    pub fn opaque(&self) -> &str {
        std::str::from_utf8(&self.opaque).unwrap_or("")
    }

    /// What identifies it in a [`NonceCounts`] table: its issue time and counter (the rest of
    /// the nonce is their MAC, so two nonces with the same pair are the same nonce).
    pub fn id(&self) -> NonceId {
        NonceId {
            issued: self.issued,
            counter: self.counter,
        }
    }
}

/// A nonce as [`NonceCounts`] keys it: issue time, then counter (ordered by issue time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NonceId {
    /// The unix second it was issued at.
    pub issued: u64,
    /// The counter it was issued with.
    pub counter: u64,
}

/// [`NonceKey::issue`]'s nonce, keyed with `secret`.
pub fn make_nonce(secret: &[u8], issued_unix: u64, counter: u64) -> String {
    NonceKey::new(secret).issue(issued_unix, counter).0
}

/// [`NonceKey::check`]'s status, keyed with `secret`.
pub fn check_nonce(secret: &[u8], nonce: &str, now_unix: u64, lifetime_secs: u64) -> NonceStatus {
    NonceKey::new(secret)
        .check(nonce, now_unix, lifetime_secs)
        .0
}

/// Decodes lowercase hex into exactly `out.len()` bytes.
fn from_hex_into(s: &str, out: &mut [u8]) -> bool {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    if s.len() != out.len() * 2 {
        return false;
    }
    for (o, p) in out.iter_mut().zip(s.as_bytes().chunks_exact(2)) {
        match (digit(p[0]), digit(p[1])) {
            (Some(h), Some(l)) => *o = h << 4 | l,
            _ => return false,
        }
    }
    true
}

/// Why [`NonceCounts::record`] refused a nonce-count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NcError {
    /// Not higher than the highest count seen for this nonce: a replay.
    Replay,
    /// The nonce is older than what the bounded table still remembers; the client must get a
    /// new one (answer `stale=true`).
    Forgotten,
}

/// Highest nonce-count seen per nonce, in a bounded table.
///
/// When the table is full, the entry with the oldest nonce is dropped and every nonce issued
/// no later than it is from then on treated as stale ([`NcError::Forgotten`]): forgetting a
/// nonce never re-opens it to replays. A nonce is keyed by its issue time and counter
/// ([`NonceId`], what its MAC covers), in one ordered map: finding a nonce and the oldest one
/// cost O(log n), with no string kept or hashed.
#[derive(Debug, Clone)]
pub struct NonceCounts {
    map: BTreeMap<NonceId, u32>,
    cap: usize,
    floor: u64,
}

impl NonceCounts {
    /// A table holding at most `cap` nonces (at least 1).
    pub fn new(cap: usize) -> Self {
        NonceCounts {
            map: BTreeMap::new(),
            cap: cap.max(1),
            floor: 0,
        }
    }

    /// Number of nonces tracked.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no nonce is tracked.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Accepts `nc` for `nonce` if it is higher than any seen before.
    pub fn record(&mut self, nonce: NonceId, nc: u32) -> Result<(), NcError> {
        if nonce.issued < self.floor {
            return Err(NcError::Forgotten);
        }
        if let Some(seen) = self.map.get_mut(&nonce) {
            if nc <= *seen {
                return Err(NcError::Replay);
            }
            *seen = nc;
            return Ok(());
        }
        if self.map.len() >= self.cap {
            if let Some((oldest, _)) = self.map.pop_first() {
                self.floor = self.floor.max(oldest.issued.saturating_add(1));
            }
            if nonce.issued < self.floor {
                return Err(NcError::Forgotten);
            }
        }
        self.map.insert(nonce, nc);
        Ok(())
    }

    /// Treats every nonce issued before `unix_secs` as forgotten (stale) from now on.
    pub fn forget_before(&mut self, unix_secs: u64) {
        self.floor = self.floor.max(unix_secs);
        self.prune(self.floor);
    }

    /// Drops nonces issued before `before` (they are expired anyway).
    pub fn prune(&mut self, before: u64) {
        self.map = self.map.split_off(&NonceId {
            issued: before,
            counter: 0,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonce_and_opaque_come_from_one_hmac() {
        let key = NonceKey::new(b"0123456789abcdef");
        let (nonce, opaque) = key.issue(1000, 7);
        assert_eq!(nonce.len(), 64);
        assert_eq!(opaque.len(), 24);
        assert_eq!(
            key.check(&nonce, 1000, 300),
            (NonceStatus::Fresh(1000), Some(opaque.clone()))
        );
        assert_eq!(key.check(&nonce, 1301, 300).0, NonceStatus::Expired(1000));
        let v = key.verify(&nonce, 1000, 300);
        assert_eq!(
            v.map(|v| (v.status, v.id(), v.opaque().to_owned())),
            Some((
                NonceStatus::Fresh(1000),
                NonceId {
                    issued: 1000,
                    counter: 7
                },
                opaque.clone()
            ))
        );
        assert_eq!(
            NonceKey::new(b"another secret!!").verify(&nonce, 1000, 300),
            None
        );
        let other = NonceKey::new(b"another secret!!");
        assert_eq!(other.check(&nonce, 1000, 300), (NonceStatus::Invalid, None));
        let mut forged = nonce.into_bytes();
        forged[63] = if forged[63] == b'0' { b'1' } else { b'0' };
        let forged = String::from_utf8(forged).unwrap_or_default();
        assert_eq!(key.check(&forged, 1000, 300).0, NonceStatus::Invalid);
        assert_eq!(key.check("zz", 1000, 300).0, NonceStatus::Invalid);
        assert_eq!(
            key.check(&"A".repeat(64), 1000, 300).0,
            NonceStatus::Invalid
        );
    }

    #[test]
    fn eviction_drops_the_oldest_and_makes_its_second_stale() {
        let id = |issued, counter| NonceId { issued, counter };
        let (a, b, c) = (id(10, 2), id(20, 1), id(30, 3));
        let mut t = NonceCounts::new(2);
        assert_eq!(t.record(b, 1), Ok(()));
        assert_eq!(t.record(a, 1), Ok(()));
        assert_eq!(t.record(c, 1), Ok(()));
        assert_eq!(t.len(), 2);
        assert_eq!(t.record(a, 2), Err(NcError::Forgotten));
        assert_eq!(t.record(b, 1), Err(NcError::Replay));
        assert_eq!(t.record(b, 2), Ok(()));
        t.prune(25);
        assert_eq!(t.len(), 1);
        t.forget_before(31);
        assert!(t.is_empty());
        assert_eq!(t.record(c, 2), Err(NcError::Forgotten));
    }

    #[test]
    fn one_counter_issued_at_two_times_is_two_nonces() {
        // A restarted registrar counts from 0 again with the same secret: the nonce of its
        // counter 1 is another nonce than the one issued with counter 1 before the restart.
        let key = NonceKey::new(b"0123456789abcdef");
        let (before, _) = key.issue(1000, 1);
        let (after, _) = key.issue(1100, 1);
        let id = |n: &str| key.verify(n, 1100, 300).map(|v| v.id());
        let (Some(before), Some(after)) = (id(&before), id(&after)) else {
            panic!("both nonces verify");
        };
        let mut t = NonceCounts::new(8);
        assert_eq!(t.record(before, 5), Ok(()));
        assert_eq!(t.record(after, 1), Ok(()));
        assert_eq!(t.record(after, 1), Err(NcError::Replay));
        assert_eq!(t.record(before, 5), Err(NcError::Replay));
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn hex_is_lowercase_two_digits_a_byte() {
        assert_eq!(to_hex(&[]), "");
        assert_eq!(to_hex(&[0, 0x0f, 0xa0, 0xff, 0x5c]), "000fa0ff5c");
        let all: Vec<u8> = (0..=255).collect();
        let expected: String = all.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(to_hex(&all), expected);
    }

    #[test]
    fn lowercase_compare_reads_the_given_side_case_insensitively() {
        assert!(ct_eq_lowercase(b"0a1b", b"0A1b"));
        assert!(!ct_eq_lowercase(b"0a1b", b"0a1c"));
        assert!(!ct_eq_lowercase(b"0a1b", b"0a1"));
        assert!(!ct_eq_lowercase(b"0a1", b"0a1b"));
        assert!(ct_eq_lowercase(b"", b""));
    }

    #[test]
    fn token_table_is_the_rfc_token_set() {
        for c in 0..=255u8 {
            let rfc = c.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&c);
            assert_eq!(is_token(c), rfc, "{c}");
        }
    }

    #[test]
    fn quoted_values_with_and_without_escapes() {
        let c = parse_authorization(
            r#"Digest username="al\"ice", realm="r", NONCE="n", uri="sip:x", response="ab""#,
        );
        let c = c.unwrap_or_default();
        assert_eq!(c.username.as_deref(), Some(r#"al"ice"#));
        assert_eq!(c.nonce.as_deref(), Some("n"));
        assert_eq!(
            parse_authorization(r#"Digest nonce="a", Nonce="b""#),
            Err(AuthHeaderError::Duplicate("nonce".into()))
        );
    }
}

//! The location service (RFC 3261 §10.3): bindings per address-of-record, and the small
//! grammar pieces REGISTER processing needs (name-addr / addr-spec, Contact lists, AOR
//! canonical form). Never panics on any input.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

/// One contact binding of an address-of-record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding<S> {
    /// The contact URI as the phone sent it (without `<>`).
    pub uri: String,
    /// Contact parameters other than `expires`, as sent (`;q=0.5;+sip.instance="…"`), echoed in
    /// the 200 OK.
    pub params: String,
    /// When the binding lapses.
    pub expires_at: SystemTime,
    /// Call-ID of the REGISTER that last refreshed it.
    pub call_id: String,
    /// CSeq number of the REGISTER that last refreshed it.
    pub cseq: u32,
    /// Where that REGISTER came from (source address and transport): where to reach the phone
    /// behind a NAT.
    pub source: S,
    pub(crate) key: String,
}

impl<S> Binding<S> {
    /// A binding as stored earlier (durable registrations): its comparison key is derived
    /// from `uri`.
    pub fn restored(
        uri: String,
        params: String,
        expires_at: SystemTime,
        call_id: String,
        cseq: u32,
        source: S,
    ) -> Self {
        Binding {
            key: contact_key(&uri),
            uri,
            params,
            expires_at,
            call_id,
            cseq,
            source,
        }
    }

    /// Seconds left at `now` (0 once lapsed), rounded up.
    pub fn remaining(&self, now: SystemTime) -> u32 {
        match self.expires_at.duration_since(now) {
            Ok(d) => {
                let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
                u32::try_from(secs).unwrap_or(u32::MAX)
            }
            Err(_) => 0,
        }
    }

    /// The value of a `Contact` header field listing this binding at `now`.
    pub fn contact_value(&self, now: SystemTime) -> String {
        let expires = self.remaining(now).to_string();
        let mut s = String::with_capacity(self.uri.len() + self.params.len() + expires.len() + 11);
        s.push('<');
        s.push_str(&self.uri);
        s.push('>');
        s.push_str(&self.params);
        s.push_str(";expires=");
        s.push_str(&expires);
        s
    }
}

/// All bindings, by canonical address-of-record, with an index of each AOR's earliest expiry
/// so that the next expiry and the expired AORs are found in O(log n), not by walking every
/// binding (the gateway asks at each housekeeping run).
#[derive(Debug, Clone)]
pub struct Location<S> {
    aors: HashMap<String, Aor<S>>,
    /// (earliest expiry of an AOR's bindings, the AOR's id) → the AOR: exactly one entry per
    /// AOR of `aors`, kept exact by every change (no stale entries to skip).
    due: BTreeMap<(SystemTime, u64), String>,
    /// The id of the next AOR added (ids tell apart AORs that expire at the same instant).
    next_id: u64,
}

/// The bindings of one AOR (never empty) and its key in [`Location::due`].
#[derive(Debug, Clone)]
struct Aor<S> {
    bindings: Vec<Binding<S>>,
    id: u64,
    due: SystemTime,
}

impl<S> Default for Location<S> {
    fn default() -> Self {
        Location {
            aors: HashMap::new(),
            due: BTreeMap::new(),
            next_id: 0,
        }
    }
}

/// The earliest expiry of a non-empty binding list.
fn earliest<S>(bindings: &[Binding<S>]) -> Option<SystemTime> {
    bindings.iter().map(|b| b.expires_at).min()
}

impl<S> Location<S> {
    /// Bindings of a canonical AOR (empty if none).
    pub fn get(&self, aor: &str) -> &[Binding<S>] {
        self.aors
            .get(aor)
            .map(|a| a.bindings.as_slice())
            .unwrap_or(&[])
    }

    /// Replaces the bindings of `aor`; an empty list removes the AOR.
    pub fn set(&mut self, aor: &str, bindings: Vec<Binding<S>>) {
        let Some(due) = earliest(&bindings) else {
            if let Some(old) = self.aors.remove(aor) {
                self.due.remove(&(old.due, old.id));
            }
            return;
        };
        match self.aors.get_mut(aor) {
            Some(a) => {
                // Re-keyed: the AOR's name moves from the old entry to the new one.
                let name = self.due.remove(&(a.due, a.id));
                a.bindings = bindings;
                a.due = due;
                self.due
                    .insert((due, a.id), name.unwrap_or_else(|| aor.to_owned()));
            }
            None => {
                let id = self.next_id;
                self.next_id += 1;
                self.due.insert((due, id), aor.to_owned());
                self.aors.insert(aor.to_owned(), Aor { bindings, id, due });
            }
        }
    }

    /// Removes lapsed bindings of one AOR; true if that removed its last binding.
    pub fn expire_aor(&mut self, aor: &str, now: SystemTime) -> bool {
        let Some(a) = self.aors.get(aor) else {
            return false;
        };
        if a.due > now {
            return false;
        }
        let name = self
            .due
            .remove(&(a.due, a.id))
            .unwrap_or_else(|| aor.to_owned());
        self.lapse(name, now).is_some()
    }

    /// Removes all lapsed bindings; returns the AORs (sorted) that lost their last binding.
    pub fn expire(&mut self, now: SystemTime) -> Vec<String> {
        let mut gone = Vec::new();
        while let Some(entry) = self.due.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let aor = entry.remove();
            gone.extend(self.lapse(aor, now));
        }
        gone.sort();
        gone
    }

    /// Drops the bindings of `aor` lapsed at `now`, its entry in `due` already removed: puts
    /// the entry back under its new earliest expiry, or removes the AOR and returns it when
    /// none is left.
    fn lapse(&mut self, aor: String, now: SystemTime) -> Option<String> {
        let a = self.aors.get_mut(&aor)?;
        a.bindings.retain(|b| b.expires_at > now);
        match earliest(&a.bindings) {
            Some(due) => {
                a.due = due;
                self.due.insert((due, a.id), aor);
                None
            }
            None => {
                self.aors.remove(&aor);
                Some(aor)
            }
        }
    }

    /// The earliest binding expiry, for the caller's timer.
    pub fn next_expiry(&self) -> Option<SystemTime> {
        self.due.first_key_value().map(|((t, _), _)| *t)
    }

    /// Registered AORs (canonical form), unsorted.
    pub fn aors(&self) -> impl Iterator<Item = &str> {
        self.aors.keys().map(String::as_str)
    }
}

/// A contact of a REGISTER request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ContactSpec {
    /// `*`.
    Star,
    /// A URI with its parameters.
    Uri {
        uri: String,
        /// Parameters other than expires, raw (each starting with `;`).
        params: String,
        /// The `expires` parameter.
        expires: Option<u32>,
    },
}

/// Tracks whether a scan is inside a quoted string (with backslash escapes), so that the
/// list and name-addr splitters below share one definition of "quoted".
#[derive(Default)]
struct QuoteState {
    in_quote: bool,
    escaped: bool,
}

impl QuoteState {
    /// Feed one character; true when it is quoted text (or the closing quote) and must be
    /// skipped by the caller. An opening quote is reported to the caller as unquoted.
    fn skip(&mut self, c: char) -> bool {
        if !self.in_quote {
            return false;
        }
        if self.escaped {
            self.escaped = false;
        } else if c == '\\' {
            self.escaped = true;
        } else if c == '"' {
            self.in_quote = false;
        }
        true
    }
}

/// Splits a header value at top-level commas (outside quotes and `<…>`).
pub(crate) fn split_list(value: &str) -> Result<Vec<&str>, &'static str> {
    let mut out = Vec::new();
    let mut q = QuoteState::default();
    let mut in_angle = false;
    let mut start = 0;
    for (i, c) in value.char_indices() {
        if q.skip(c) {
            continue;
        }
        match c {
            '"' if !in_angle => q.in_quote = true,
            '<' if !in_angle => in_angle = true,
            '>' if in_angle => in_angle = false,
            ',' if !in_angle => {
                out.push(value.get(start..i).unwrap_or("").trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    if q.in_quote || in_angle {
        return Err("unbalanced quotes or angle brackets");
    }
    out.push(value.get(start..).unwrap_or("").trim());
    Ok(out)
}

/// Splits one name-addr / addr-spec (with parameters) into the URI and the parameter string.
///
/// Byte scans: every delimiter is ASCII, which never occurs inside a UTF-8 sequence.
pub(crate) fn split_name_addr(value: &str) -> Result<(&str, &str), &'static str> {
    let v = value.trim();
    let mut q = QuoteState::default();
    let mut lt = None;
    for (i, &c) in v.as_bytes().iter().enumerate() {
        if q.skip(char::from(c)) {
            continue;
        }
        if c == b'"' {
            q.in_quote = true;
        } else if c == b'<' {
            lt = Some(i);
            break;
        }
    }
    let in_quote = q.in_quote;
    let (uri, rest) = match lt {
        Some(lt) => {
            let after = v.get(lt + 1..).unwrap_or("");
            let gt = memchr::memchr(b'>', after.as_bytes()).ok_or("missing '>'")?;
            (
                after.get(..gt).unwrap_or("").trim(),
                after.get(gt + 1..).unwrap_or("").trim(),
            )
        }
        None => {
            if in_quote || v.starts_with('"') {
                return Err("display name without <URI>");
            }
            match memchr::memchr(b';', v.as_bytes()) {
                Some(p) => (
                    v.get(..p).unwrap_or("").trim(),
                    v.get(p..).unwrap_or("").trim(),
                ),
                None => (v, ""),
            }
        }
    };
    let scheme_ok = memchr::memchr(b':', uri.as_bytes()).is_some_and(|i| {
        let (s, r) = (&uri.as_bytes()[..i], &uri.as_bytes()[i + 1..]);
        !s.is_empty() && !r.is_empty() && s.iter().copied().all(is_scheme)
    });
    if !scheme_ok || has_space_or_control(uri) {
        return Err("bad URI");
    }
    if !rest.is_empty() && !rest.starts_with(';') {
        return Err("junk after URI");
    }
    Ok((uri, rest))
}

/// Whether `s` holds a white-space or control character (Unicode's definitions).
fn has_space_or_control(s: &str) -> bool {
    if s.is_ascii() {
        // The ASCII white space and controls: 0x00–0x20 and DEL.
        s.bytes().any(|c| c <= b' ' || c == 0x7f)
    } else {
        s.chars().any(|c| c.is_whitespace() || c.is_control())
    }
}

fn is_scheme(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.')
}

/// Parses a parameter list `;a=b;c;d="x"` into (name, value) pairs, values unquoted.
fn params(rest: &str) -> Result<Vec<(&str, Option<&str>)>, &'static str> {
    let mut out = Vec::new();
    let b = rest.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b';' {
            return Err("expected ';'");
        }
        i += 1;
        let start = i;
        let mut in_quote = false;
        let mut escaped = false;
        while i < b.len() {
            let c = b[i];
            if in_quote {
                if escaped {
                    escaped = false;
                } else if c == b'\\' {
                    escaped = true;
                } else if c == b'"' {
                    in_quote = false;
                }
            } else if c == b'"' {
                in_quote = true;
            } else if c == b';' {
                break;
            }
            i += 1;
        }
        if in_quote {
            return Err("unterminated quoted parameter");
        }
        let p = rest.get(start..i).unwrap_or("").trim();
        let (name, value) = match p.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (p, None),
        };
        if name.is_empty() {
            return Err("empty parameter name");
        }
        out.push((name, value));
    }
    Ok(out)
}

/// delta-seconds: digits, saturating at `u32::MAX` (RFC 3261 §10.2.1 allows huge values).
pub(crate) fn delta_seconds(s: &str) -> Option<u32> {
    let s = s.trim();
    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let mut v: u32 = 0;
    for c in s.bytes() {
        v = v.saturating_mul(10).saturating_add(u32::from(c - b'0'));
    }
    Some(v)
}

/// Parses the Contact header values of a request.
pub(crate) fn parse_contacts<'a>(
    values: impl Iterator<Item = &'a str>,
) -> Result<Vec<ContactSpec>, &'static str> {
    let mut out = Vec::new();
    for value in values {
        for item in split_list(value)? {
            if item == "*" {
                out.push(ContactSpec::Star);
                continue;
            }
            if item.is_empty() {
                return Err("empty contact");
            }
            let (uri, rest) = split_name_addr(item)?;
            let mut kept = String::new();
            let mut expires = None;
            for (name, value) in params(rest)? {
                if name.eq_ignore_ascii_case("expires") {
                    if expires.is_some() {
                        return Err("duplicate expires parameter");
                    }
                    expires = Some(
                        value
                            .and_then(delta_seconds)
                            .ok_or("bad expires parameter")?,
                    );
                } else {
                    kept.push(';');
                    kept.push_str(name);
                    if let Some(v) = value {
                        kept.push('=');
                        if v.bytes().all(crate::registrar::digest::is_token) {
                            kept.push_str(v);
                        } else {
                            kept.push_str(&crate::registrar::digest::quote(v));
                        }
                    }
                }
            }
            out.push(ContactSpec::Uri {
                uri: uri.to_owned(),
                params: kept,
                expires,
            });
            if out.len() > 256 {
                return Err("too many contacts");
            }
        }
    }
    Ok(out)
}

fn unescape(s: &str) -> Cow<'_, str> {
    if !s.contains('%') {
        return Cow::Borrowed(s);
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| char::from(c).to_digit(16);
        if b[i] == b'%' {
            if let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) {
                out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// The canonical form of an address-of-record (RFC 3261 §10.3 step 5): scheme and host in lower
/// case, the user part unescaped, password, URI parameters and headers removed; the port kept.
/// Accepts a bare URI or a name-addr.
pub fn canonical_aor(value: &str) -> Option<String> {
    let (uri, _) = split_name_addr(value).ok()?;
    // Byte scans at ASCII delimiters (this runs several times per REGISTER).
    let colon = memchr::memchr(b':', uri.as_bytes())?;
    let (scheme, rest) = (&uri[..colon], &uri[colon + 1..]);
    let rest = match memchr::memchr2(b';', b'?', rest.as_bytes()) {
        Some(end) => &rest[..end],
        None => rest,
    };
    let (user, hostport) = match memchr::memrchr(b'@', rest.as_bytes()) {
        Some(at) => {
            let userinfo = &rest[..at];
            let user = match memchr::memchr(b':', userinfo.as_bytes()) {
                Some(end) => &userinfo[..end],
                None => userinfo,
            };
            (Some(unescape(user)), &rest[at + 1..])
        }
        None => (None, rest),
    };
    if hostport.is_empty() {
        return None;
    }
    // One allocation; only ASCII letters change case.
    let mut out = String::with_capacity(uri.len());
    out.push_str(scheme);
    out.make_ascii_lowercase();
    out.push(':');
    if let Some(u) = user.filter(|u| !u.is_empty()) {
        out.push_str(&u);
        out.push('@');
    }
    let host_at = out.len();
    out.push_str(hostport);
    if let Some(host) = out.get_mut(host_at..) {
        host.make_ascii_lowercase();
    }
    Some(out)
}

/// The comparison key of a contact URI (a simplification of RFC 3261 §19.1.4): scheme, host,
/// port and parameters compared case-insensitively, the user part unescaped and case-sensitive.
pub(crate) fn contact_key(uri: &str) -> String {
    match uri.split_once(':') {
        Some((scheme, rest)) => {
            // One allocation: scheme and host lower-cased (ASCII), the user part unescaped.
            let (user, host) = match rest.rsplit_once('@') {
                Some((u, h)) => (Some(unescape(u)), h),
                None => (None, rest),
            };
            let host = unescape(host);
            let mut key = String::with_capacity(uri.len() + 1);
            key.push_str(scheme);
            key.make_ascii_lowercase();
            key.push(':');
            if let Some(user) = user {
                key.push_str(&user);
                key.push('@');
            }
            let host_at = key.len();
            key.push_str(&host);
            if let Some(h) = key.get_mut(host_at..) {
                h.make_ascii_lowercase();
            }
            key
        }
        None => uri.to_ascii_lowercase(),
    }
}

/// `now + secs`, saturating instead of overflowing.
pub(crate) fn add_secs(now: SystemTime, secs: u32) -> SystemTime {
    now.checked_add(Duration::from_secs(u64::from(secs)))
        .unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_765_000_000)
    }

    fn at(secs: u64) -> SystemTime {
        t0() + Duration::from_secs(secs)
    }

    fn binding(n: u32, expires: u64) -> Binding<()> {
        Binding::restored(
            format!("sip:{n}@192.0.2.1"),
            String::new(),
            at(expires),
            format!("c{n}"),
            1,
            (),
        )
    }

    #[test]
    fn the_next_expiry_follows_refreshes_shortenings_and_removals() {
        let mut loc = Location::default();
        assert_eq!(loc.next_expiry(), None);
        loc.set("sip:a@x", vec![binding(1, 300), binding(2, 100)]);
        loc.set("sip:b@x", vec![binding(3, 200)]);
        assert_eq!(loc.next_expiry(), Some(at(100)));
        // a's earliest binding refreshed: b's is next.
        loc.set("sip:a@x", vec![binding(1, 300), binding(2, 400)]);
        assert_eq!(loc.next_expiry(), Some(at(200)));
        // b shortened below everything.
        loc.set("sip:b@x", vec![binding(3, 50)]);
        assert_eq!(loc.next_expiry(), Some(at(50)));
        // Two AORs due at the same instant are both kept.
        loc.set("sip:c@x", vec![binding(4, 50)]);
        loc.set("sip:b@x", Vec::new());
        assert_eq!(loc.next_expiry(), Some(at(50)));
        assert!(loc.get("sip:b@x").is_empty());
        loc.set("sip:c@x", Vec::new());
        assert_eq!(loc.next_expiry(), Some(at(300)));
        loc.set("sip:a@x", Vec::new());
        assert_eq!(loc.next_expiry(), None);
        assert_eq!(loc.aors().count(), 0);
    }

    #[test]
    fn expiry_drops_only_lapsed_bindings_and_reports_emptied_aors_sorted() {
        let mut loc = Location::default();
        loc.set("sip:c@x", vec![binding(1, 100)]);
        loc.set("sip:a@x", vec![binding(2, 100)]);
        loc.set("sip:b@x", vec![binding(3, 100), binding(4, 500)]);
        loc.set("sip:d@x", vec![binding(5, 900)]);
        assert!(loc.expire(at(99)).is_empty());
        assert_eq!(loc.aors().count(), 4);
        // A binding lapses at its expiry instant, not after it.
        assert_eq!(loc.expire(at(100)), vec!["sip:a@x", "sip:c@x"]);
        assert_eq!(loc.get("sip:b@x").len(), 1);
        assert_eq!(loc.next_expiry(), Some(at(500)));
        // One AOR alone: nothing before its expiry, then emptied.
        assert!(!loc.expire_aor("sip:b@x", at(499)));
        assert!(!loc.expire_aor("sip:nobody@x", at(10_000)));
        assert!(loc.expire_aor("sip:b@x", at(500)));
        assert!(loc.get("sip:b@x").is_empty());
        assert_eq!(loc.next_expiry(), Some(at(900)));
        assert_eq!(loc.expire(at(10_000)), vec!["sip:d@x"]);
        assert_eq!(loc.next_expiry(), None);
    }

    /// Random sets, removals and expiries in virtual time against a plain scan of every
    /// binding (what `next_expiry` and `expire` did before the index).
    #[test]
    fn the_index_agrees_with_a_scan_of_every_binding() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(10);
        let mut loc = Location::default();
        let mut model: HashMap<String, Vec<u64>> = HashMap::new();
        let mut now = 0u64;
        for step in 0..20_000 {
            let aor = format!("sip:{}@x", rng.random_range(0..40));
            match rng.random_range(0..10) {
                0..=5 => {
                    let n = rng.random_range(0..4);
                    let exp: Vec<u64> = (0..n).map(|_| now + rng.random_range(0..600)).collect();
                    let bindings = exp
                        .iter()
                        .enumerate()
                        .map(|(i, e)| binding(u32::try_from(i).unwrap_or(0), *e))
                        .collect();
                    loc.set(&aor, bindings);
                    if exp.is_empty() {
                        model.remove(&aor);
                    } else {
                        model.insert(aor.clone(), exp);
                    }
                }
                6 => {
                    let got = loc.expire_aor(&aor, at(now));
                    let mut emptied = false;
                    if let Some(list) = model.get_mut(&aor) {
                        list.retain(|e| *e > now);
                        emptied = list.is_empty();
                    }
                    if emptied {
                        model.remove(&aor);
                    }
                    assert_eq!(got, emptied, "step {step}");
                }
                _ => {
                    now += rng.random_range(0..120);
                    let mut gone: Vec<String> = Vec::new();
                    model.retain(|aor, list| {
                        list.retain(|e| *e > now);
                        if list.is_empty() {
                            gone.push(aor.clone());
                        }
                        !list.is_empty()
                    });
                    gone.sort();
                    assert_eq!(loc.expire(at(now)), gone, "step {step}");
                }
            }
            let scan = model.values().flatten().min().map(|e| at(*e));
            assert_eq!(loc.next_expiry(), scan, "step {step}");
            assert_eq!(loc.aors().count(), model.len(), "step {step}");
            assert_eq!(loc.due.len(), model.len(), "step {step}");
            if let Some(list) = model.get(&aor) {
                let mut got: Vec<SystemTime> = loc.get(&aor).iter().map(|b| b.expires_at).collect();
                let mut want: Vec<SystemTime> = list.iter().map(|e| at(*e)).collect();
                got.sort();
                want.sort();
                assert_eq!(got, want, "step {step}");
            }
        }
    }
}

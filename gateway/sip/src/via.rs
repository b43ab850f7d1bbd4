//! Pure Via handling at the transport: `received`/`rport` on receipt (RFC 3261 §18.2.1,
//! RFC 3581 §4) and where a response goes (RFC 3261 §18.2.2, RFC 3581 §4).

use std::net::{IpAddr, SocketAddr};

use rsip::headers::UntypedHeader;

use crate::message::{Header, Headers};

/// The top via-parm of a message, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopVia {
    /// `UDP`, `TCP`, `TLS`, … (as written, upper-cased).
    pub transport: String,
    /// The sent-by host (IPv6 without brackets).
    pub host: String,
    /// The sent-by port, if any.
    pub port: Option<u16>,
    /// Parameters in order, names as written.
    pub params: Vec<(String, Option<String>)>,
}

impl TopVia {
    /// A parameter's value: `None` if absent, `Some(None)` if present without a value.
    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_deref())
    }

    /// The default port of the transport: 5061 for TLS, 5060 otherwise (§18.2.2, §19.1.2).
    pub fn default_port(&self) -> u16 {
        if self.transport.eq_ignore_ascii_case("TLS") {
            5061
        } else {
            5060
        }
    }

    fn render(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let mut s = format!("SIP/2.0/{} {host}", self.transport);
        if let Some(p) = self.port {
            s.push_str(&format!(":{p}"));
        }
        for (n, v) in &self.params {
            s.push(';');
            s.push_str(n);
            if let Some(v) = v {
                s.push('=');
                s.push_str(v);
            }
        }
        s
    }
}

/// The top Via of these headers, or `None` when there is none or it does not parse.
pub fn top_via(headers: &Headers) -> Option<TopVia> {
    let value = headers.iter().find_map(|h| match h {
        Header::Via(v) => Some(v.value()),
        _ => None,
    })?;
    parse_via_parm(first_value(value).0)
}

/// Splits a Via field value at its first top-level comma: (first via-parm, rest after the comma).
fn first_value(value: &str) -> (&str, Option<&str>) {
    let mut quoted = false;
    let mut escaped = false;
    if memchr::memchr(b',', value.as_bytes()).is_none() {
        return (value.trim(), None);
    }
    // Bytes, not chars: the delimiters are ASCII, which never occurs inside a UTF-8 sequence.
    for (i, c) in value.bytes().enumerate() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b',' if !quoted => return (value[..i].trim(), Some(value[i + 1..].trim())),
            _ => {}
        }
    }
    (value.trim(), None)
}

fn parse_via_parm(s: &str) -> Option<TopVia> {
    split_via_parm(s).map(|p| p.to_owned())
}

/// A via-parm split in place: what [`TopVia`] holds, borrowed (no allocation: this runs on
/// every request received and every response sent).
#[derive(Debug, PartialEq, Eq)]
struct Parm<'a> {
    /// As written (not upper-cased).
    transport: &'a str,
    host: &'a str,
    port: Option<u16>,
    /// The text after the first `;`, every parameter checked non-empty.
    params: &'a str,
}

impl<'a> Parm<'a> {
    /// The parameters in order: names and values trimmed.
    fn params(&self) -> impl Iterator<Item = (&'a str, Option<&'a str>)> {
        // ASCII text (nearly always) is trimmed by bytes: the same result, faster.
        let ascii = self.params.is_ascii();
        let trim = move |s: &'a str| if ascii { trim_ascii(s) } else { s.trim() };
        let any = !trim(self.params).is_empty();
        self.params.split(';').filter(move |_| any).map(move |p| {
            let p = trim(p);
            match p.split_once('=') {
                Some((n, v)) => (trim(n), Some(trim(v))),
                None => (p, None),
            }
        })
    }

    fn to_owned(&self) -> TopVia {
        TopVia {
            transport: self.transport.to_ascii_uppercase(),
            host: self.host.to_owned(),
            port: self.port,
            params: self
                .params()
                .map(|(n, v)| (n.to_owned(), v.map(str::to_owned)))
                .collect(),
        }
    }
}

fn split_via_parm(s: &str) -> Option<Parm<'_>> {
    if s.is_ascii() {
        split_via_parm_ascii(s)
    } else {
        split_via_parm_chars(s)
    }
}

/// `char::is_whitespace` of an ASCII byte (which `str::trim` and friends use).
fn is_ascii_ws(b: u8) -> bool {
    matches!(b, b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | b' ')
}

/// `str::trim_start` of an ASCII string.
fn trim_start_ascii(s: &str) -> &str {
    let n = s.bytes().position(|b| !is_ascii_ws(b)).unwrap_or(s.len());
    &s[n..]
}

/// `str::trim` of an ASCII string.
fn trim_ascii(s: &str) -> &str {
    let s = trim_start_ascii(s);
    let n = s
        .bytes()
        .rposition(|b| !is_ascii_ws(b))
        .map_or(0, |i| i + 1);
    &s[..n]
}

/// [`split_via_parm_chars`] for an ASCII via-parm, by bytes (same result: for ASCII text
/// `char::is_whitespace` is [`is_ascii_ws`]); this runs on every request received.
fn split_via_parm_ascii(s: &str) -> Option<Parm<'_>> {
    let slash = memchr::memchr(b'/', s.as_bytes())?;
    let name = trim_ascii(&s[..slash]);
    let after = &s[slash + 1..];
    let slash = memchr::memchr(b'/', after.as_bytes())?;
    let version = trim_ascii(&after[..slash]);
    let rest = trim_start_ascii(&after[slash + 1..]);
    if !name.eq_ignore_ascii_case("SIP") || version.is_empty() {
        return None;
    }
    let t_end = rest.bytes().position(is_ascii_ws)?;
    let transport = &rest[..t_end];
    let rest = trim_start_ascii(&rest[t_end..]);
    let (sent_by, params) = match memchr::memchr(b';', rest.as_bytes()) {
        Some(p) => (trim_ascii(&rest[..p]), &rest[p + 1..]),
        None => (trim_ascii(rest), ""),
    };
    let (host, port) = if let Some(v6) = sent_by.strip_prefix('[') {
        let end = memchr::memchr(b']', v6.as_bytes())?;
        let after = trim_ascii(&v6[end + 1..]);
        let port = match after.strip_prefix(':') {
            Some(p) => Some(trim_ascii(p).parse().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        (&v6[..end], port)
    } else {
        match memchr::memchr(b':', sent_by.as_bytes()) {
            Some(c) => (
                trim_ascii(&sent_by[..c]),
                Some(trim_ascii(&sent_by[c + 1..]).parse().ok()?),
            ),
            None => (sent_by, None),
        }
    };
    if host.is_empty() || transport.is_empty() {
        return None;
    }
    if !trim_ascii(params).is_empty() && params.split(';').any(|p| trim_ascii(p).is_empty()) {
        return None;
    }
    Some(Parm {
        transport,
        host,
        port,
        params,
    })
}

/// Splits a via-parm (any text; the reference [`split_via_parm_ascii`] is tested against).
fn split_via_parm_chars(s: &str) -> Option<Parm<'_>> {
    // sent-protocol: SIP / 2.0 / transport (LWS allowed around the slashes)
    let mut parts = s.splitn(3, '/');
    let name = parts.next()?.trim();
    let version = parts.next()?.trim();
    let rest = parts.next()?.trim_start();
    if !name.eq_ignore_ascii_case("SIP") || version.is_empty() {
        return None;
    }
    let t_end = rest.find(|c: char| c.is_whitespace())?;
    let transport = &rest[..t_end];
    let rest = rest[t_end..].trim_start();
    let (sent_by, params) = match rest.find(';') {
        Some(p) => (rest[..p].trim(), &rest[p + 1..]),
        None => (rest.trim(), ""),
    };
    let (host, port) = if let Some(v6) = sent_by.strip_prefix('[') {
        let end = v6.find(']')?;
        let after = v6[end + 1..].trim();
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.trim().parse().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        (&v6[..end], port)
    } else {
        match sent_by.split_once(':') {
            Some((h, p)) => (h.trim(), Some(p.trim().parse().ok()?)),
            None => (sent_by, None),
        }
    };
    if host.is_empty() || transport.is_empty() {
        return None;
    }
    if !params.trim().is_empty() && params.split(';').any(|p| p.trim().is_empty()) {
        return None;
    }
    Some(Parm {
        transport,
        host,
        port,
        params,
    })
}

/// What [`response_route`] reads of a via-parm.
trait ViaView {
    fn host(&self) -> &str;
    fn port(&self) -> Option<u16>;
    fn is_tls(&self) -> bool;
    fn param(&self, name: &str) -> Option<Option<&str>>;

    /// `received`, `maddr` and `rport`, as [`ViaView::param`] reads each.
    fn route_params(&self) -> [Option<Option<&str>>; 3] {
        [
            self.param("received"),
            self.param("maddr"),
            self.param("rport"),
        ]
    }
}

impl ViaView for TopVia {
    fn host(&self) -> &str {
        &self.host
    }
    fn port(&self) -> Option<u16> {
        self.port
    }
    fn is_tls(&self) -> bool {
        self.transport.eq_ignore_ascii_case("TLS")
    }
    fn param(&self, name: &str) -> Option<Option<&str>> {
        TopVia::param(self, name)
    }
}

impl ViaView for Parm<'_> {
    fn host(&self) -> &str {
        self.host
    }
    fn port(&self) -> Option<u16> {
        self.port
    }
    fn is_tls(&self) -> bool {
        self.transport.eq_ignore_ascii_case("TLS")
    }
    fn param(&self, name: &str) -> Option<Option<&str>> {
        self.params()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// One pass over the parameters instead of three.
    fn route_params(&self) -> [Option<Option<&str>>; 3] {
        let mut found = [None; 3];
        for (n, v) in self.params() {
            for (slot, name) in found.iter_mut().zip(["received", "maddr", "rport"]) {
                if slot.is_none() && n.eq_ignore_ascii_case(name) {
                    *slot = Some(v);
                }
            }
        }
        found
    }
}

fn host_ip(host: &str) -> Option<IpAddr> {
    host.parse().ok()
}

/// On receipt of a request from `source` (§18.2.1, RFC 3581 §4): adds `received=<source ip>`
/// when the top Via's sent-by host is not that IP (a domain name always differs), and fills an
/// empty `rport` with the source port (adding `received` then too, as RFC 3581 requires).
/// Returns whether the Via was changed; a message without a readable top Via is left alone.
///
/// Also used on the ready-made replies of rejected requests, whose Via is a copy.
pub fn stamp_received(headers: &mut Headers, source: SocketAddr) -> bool {
    let Some(idx) = headers.iter().position(|h| matches!(h, Header::Via(_))) else {
        return false;
    };
    let Some(Header::Via(via)) = headers.iter_mut().nth(idx) else {
        return false;
    };
    let ip = source.ip().to_canonical();
    // Read in place; copied only when something is to change (rarely: a phone behind NAT).
    let (mut top, rest, empty_rport, differs) = {
        let (first, rest) = first_value(via.value());
        let Some(parm) = split_via_parm(first) else {
            return false;
        };
        let empty_rport = parm.param("rport") == Some(None);
        let differs = host_ip(parm.host).map(|h| h.to_canonical()) != Some(ip);
        if !empty_rport && !differs {
            return false;
        }
        (
            parm.to_owned(),
            rest.map(str::to_owned),
            empty_rport,
            differs,
        )
    };
    let mut changed = false;
    if empty_rport {
        for (n, v) in top.params.iter_mut() {
            if n.eq_ignore_ascii_case("rport") && v.is_none() {
                *v = Some(source.port().to_string());
                break;
            }
        }
        changed = true;
    }
    if differs || empty_rport {
        let ip_text = ip.to_string();
        match top
            .params
            .iter_mut()
            .find(|(n, _)| n.eq_ignore_ascii_case("received"))
        {
            Some((_, v)) => *v = Some(ip_text),
            None => top.params.push(("received".to_owned(), Some(ip_text))),
        }
        changed = true;
    }
    if changed {
        let mut new = top.render();
        if let Some(rest) = rest {
            new.push_str(", ");
            new.push_str(&rest);
        }
        via.replace(new);
    }
    changed
}

/// A destination: an address, or a host name still to be resolved (RFC 3263 §6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// An IP address and port.
    Addr(SocketAddr),
    /// A host name and port.
    Host(String, u16),
}

/// Where a response goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseRoute {
    /// Reliable transport: send over the connection the request arrived on; `destination` is
    /// where to open a new connection if that one is gone (§18.2.2).
    pub same_connection: bool,
    /// Where to send (or, with `same_connection`, the fallback).
    pub destination: Destination,
}

/// RFC 3261 §18.2.2 with RFC 3581 §4, from the response's top Via (as stamped on receipt by
/// [`stamp_received`]): reliable transport → the same connection (falling back to `received`
/// or the sent-by host, at the sent-by port); `maddr` → that address; `rport` with a value →
/// the `received` IP at that port; `received` → that IP at the sent-by port; else the sent-by
/// host and port. The port defaults to 5060 (5061 for TLS).
pub fn response_route(via: &TopVia, reliable: bool) -> ResponseRoute {
    route_of(via, reliable)
}

/// [`response_route`] of the top Via of `headers` (`None` when there is none or it does not
/// parse, as [`top_via`]), read in place.
pub fn route_headers(headers: &Headers, reliable: bool) -> Option<ResponseRoute> {
    let value = headers.iter().find_map(|h| match h {
        Header::Via(v) => Some(v.value()),
        _ => None,
    })?;
    split_via_parm(first_value(value).0).map(|p| route_of(&p, reliable))
}

fn route_of(via: &impl ViaView, reliable: bool) -> ResponseRoute {
    let port = via.port().unwrap_or(if via.is_tls() { 5061 } else { 5060 });
    let [received, maddr, rport] = via.route_params();
    let received = received.flatten().and_then(|r| {
        r.trim_matches(|c| c == '[' || c == ']')
            .parse::<IpAddr>()
            .ok()
    });
    let to_host = |host: &str, port: u16| match host_ip(host) {
        Some(ip) => Destination::Addr(SocketAddr::new(ip, port)),
        None => Destination::Host(host.to_owned(), port),
    };
    let default = match received {
        Some(ip) => Destination::Addr(SocketAddr::new(ip, port)),
        None => to_host(via.host(), port),
    };
    if reliable {
        return ResponseRoute {
            same_connection: true,
            destination: default,
        };
    }
    let destination = if let Some(maddr) = maddr.flatten() {
        to_host(maddr, port)
    } else if let Some(Some(rport)) = rport.map(|v| v.and_then(|p| p.parse::<u16>().ok())) {
        match received {
            Some(ip) => Destination::Addr(SocketAddr::new(ip, rport)),
            None => to_host(via.host(), rport),
        }
    } else {
        default
    };
    ResponseRoute {
        same_connection: false,
        destination,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The byte-wise split of an ASCII via-parm is the char-wise one.
    #[test]
    fn ascii_split_is_the_char_split() {
        let mut cases = vec![
            String::new(),
            "SIP/2.0/UDP 192.0.2.7:5061;branch=z9hG4bK-1;rport".into(),
            "SIP / 2.0 / UDP  Host.Example.com : 5070 ;received=1.2.3.4; BRANCH=z9hG4bKabc".into(),
            "SIP/2.0/TLS [2001:db8::1]:5061;branch=z9hG4bKx".into(),
            "SIP/2.0/TLS [2001:db8::1] : 5061".into(),
            "SIP/2.0/TLS [2001:db8::1]x".into(),
            "SIP/2.0/TLS [2001:db8::1".into(),
            "SIP/2.0/UDP host:99999".into(),
            "SIP/2.0/UDP host:".into(),
            "SIP/2.0/UDP :5060".into(),
            "SIP/2.0/UDP host;;branch=x".into(),
            "SIP/2.0/UDP host; ;branch=x".into(),
            "SIP/2.0/UDP host;".into(),
            "SIP/2.0/UDP host; ".into(),
            "SIP/2.0/UDP".into(),
            "SIP/2.0/UDP host".into(),
            "SIP/2.0 UDP host".into(),
            "sip/2.0/udp/x host".into(),
            "SIPX/2.0/UDP host".into(),
            "SIP//UDP host".into(),
            "SIP/2.0/\x0bUDP\x0chost\r:\t5060\n".into(),
            "SIP/2.0/UDP\x0bhost".into(),
        ];
        for ws in [" ", "\t", "\r", "\n", "\x0b", "\x0c"] {
            cases.push(format!(
                "{ws}SIP{ws}/{ws}2.0{ws}/{ws}UDP{ws}h{ws}:{ws}1{ws};{ws}a{ws}={ws}b{ws};c{ws}"
            ));
        }
        for c in &cases {
            assert!(c.is_ascii());
            assert_eq!(split_via_parm_ascii(c), split_via_parm_chars(c), "{c:?}");
        }
        assert!(split_via_parm(&cases[1]).is_some());
        // Parameters are read the same whether trimmed by bytes (ASCII) or by chars.
        let parm = |params| Parm {
            transport: "UDP",
            host: "h",
            port: None,
            params,
        };
        let by_chars = |params: &str| -> Vec<(String, Option<String>)> {
            params
                .split(';')
                .filter(|_| !params.trim().is_empty())
                .map(|p| {
                    let p = p.trim();
                    match p.split_once('=') {
                        Some((n, v)) => (n.trim().to_owned(), Some(v.trim().to_owned())),
                        None => (p.to_owned(), None),
                    }
                })
                .collect()
        };
        for params in [
            "",
            " \x0b",
            "branch=z9hG4bK-1;rport",
            " received = 1.2.3.4 ;\tRPORT\x0c; maddr=\r\nx",
            "a=;=b;c",
            "a\u{a0}=\u{a0}b;\u{a0}c",
        ] {
            let ours: Vec<(String, Option<String>)> = parm(params)
                .params()
                .map(|(n, v)| (n.to_owned(), v.map(str::to_owned)))
                .collect();
            assert_eq!(ours, by_chars(params), "{params:?}");
        }
        // Non-ASCII text takes the char-wise split (U+00A0 is white space to `trim`).
        let nbsp = "SIP/2.0/UDP\u{a0}host";
        assert_eq!(split_via_parm(nbsp), split_via_parm_chars(nbsp));
        assert!(split_via_parm(nbsp).is_some());
    }
}

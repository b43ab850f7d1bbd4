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
        let any = !self.params.trim().is_empty();
        self.params.split(';').filter(move |_| any).map(|p| {
            let p = p.trim();
            match p.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim())),
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

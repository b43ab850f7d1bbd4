//! SDP (RFC 8866, formerly RFC 4566) for the B2BUA: parsing and serialising session
//! descriptions from the wire, media anchoring, hold detection and the RFC 3264 offer/answer
//! helpers the gateway needs when it is itself an endpoint.
//!
//! **Hand-written, not a crate.** The two maintained Rust SDP crates were considered:
//!
//! * `webrtc-sdp` (Mozilla, 0.3.x) types attributes into a closed enum covering the JSEP
//!   (WebRTC) subset; attributes outside it are reported as unsupported and not kept, so
//!   SIP-world attributes (`a=X-nat`, `a=silenceSupp`, vendor ones) would not survive a
//!   parse → serialise cycle through the B2BUA.
//! * `sdp` (webrtc-rs) keeps attributes as key/value pairs, but follows pion's strict
//!   line-order state machine (real SIP stacks send `a=` before `t=`, omit `t=` …) and has
//!   none of the SIP-side semantics needed here (RFC 3605 `a=rtcp`, RFC 2543 hold, RFC 3551
//!   static payload types), so the API below would be ours either way.
//!
//! SDP is line-based and small, so the parser (`parse.rs`, with its error type) is a few
//! hundred lines, never panics (fuzzed in the tests), keeps every line it does not interpret,
//! and reports errors with the line number. The model is plain data with public fields, so the
//! B2BUA can reach anything the helpers do not cover. Like `sip::message`, it is sans-IO.
//!
//! Round-trip: `parse(x)?.to_string()` re-parses to an equal value. Lines are re-emitted in
//! RFC 8866 §5 order (`v o s [i u e p] c [b t r z k …] a`, and `m [i] c [b k …] a` per media);
//! lines of the same kind keep their relative order; line ends become CRLF.
//!
//! Known limits: one `c=` per section (layered multicast is rejected); host names in `c=`
//! are kept but give no socket address (no DNS here); SRTP/DTLS attributes (`a=crypto`,
//! `a=fingerprint`, `a=setup`) pass through [`SessionDescription::anchor`] untouched.

mod negotiate;
mod parse;
#[cfg(test)]
mod tests;

use std::fmt;
use std::net::{IpAddr, SocketAddr};

pub use negotiate::{answer, offer};
pub use parse::{SdpError, MAX_SDP_SIZE};

/// ICE attributes (RFC 8839) removed by [`SessionDescription::anchor`]: the relay is not an
/// ICE agent, so candidates pointing past it would be wrong.
pub const ICE_ATTRIBUTES: &[&str] = &[
    "candidate",
    "remote-candidates",
    "end-of-candidates",
    "ice-ufrag",
    "ice-pwd",
    "ice-options",
    "ice-lite",
    "ice-mismatch",
    "ice-pacing",
];

/// The `o=` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// `<username>` (`-` when none).
    pub username: String,
    /// `<sess-id>`, kept as text (some stacks send more digits than fit in 64 bits).
    pub session_id: String,
    /// `<sess-version>`.
    pub session_version: u64,
    /// `<nettype>`, normally `IN`.
    pub net_type: String,
    /// `<addrtype>`, `IP4` or `IP6`.
    pub addr_type: String,
    /// `<unicast-address>` (an IP literal or a host name).
    pub address: String,
}

/// A `c=` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// `<nettype>`, normally `IN`.
    pub net_type: String,
    /// `<addrtype>`, `IP4` or `IP6`.
    pub addr_type: String,
    /// `<connection-address>`, possibly with `/ttl[/count]` (multicast) or a host name.
    pub address: String,
}

impl Connection {
    /// `IN IP4 a.b.c.d` or `IN IP6 x::y` for an address.
    pub fn from_ip(addr: IpAddr) -> Self {
        Connection {
            net_type: "IN".to_string(),
            addr_type: addr_type_of(addr).to_string(),
            address: addr.to_string(),
        }
    }

    /// The address as an IP literal (a multicast `/ttl` suffix is ignored); `None` for a host
    /// name or garbage.
    pub fn ip(&self) -> Option<IpAddr> {
        let a = self.address.split('/').next().unwrap_or_default();
        a.parse().ok()
    }
}

fn addr_type_of(addr: IpAddr) -> &'static str {
    match addr {
        IpAddr::V4(_) => "IP4",
        IpAddr::V6(_) => "IP6",
    }
}

/// An `a=` line: `a=name` (flag) or `a=name:value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribute {
    /// The attribute name (case-sensitive as sent).
    pub name: String,
    /// The text after the first `:`, if there was one.
    pub value: Option<String>,
}

impl Attribute {
    /// An attribute with a value.
    pub fn new(name: &str, value: &str) -> Self {
        Attribute {
            name: name.to_string(),
            value: Some(value.to_string()),
        }
    }

    /// A property (flag) attribute without a value.
    pub fn flag(name: &str) -> Self {
        Attribute {
            name: name.to_string(),
            value: None,
        }
    }
}

/// Any other line (`i=`, `u=`, `e=`, `p=`, `b=`, `t=`, `r=`, `z=`, `k=`, unknown types), kept
/// verbatim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtherLine {
    /// The type letter.
    pub kind: char,
    /// Everything after `=`.
    pub value: String,
}

/// A parsed session description. Build one with [`SessionDescription::parse`], [`offer`] or
/// [`answer`]; serialise it with `to_string()` (CRLF line ends).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionDescription {
    /// `o=`.
    pub origin: Origin,
    /// `s=`.
    pub session_name: String,
    /// Session-level `c=`.
    pub connection: Option<Connection>,
    /// Session-level lines other than `v o s c a m`, in order (timing, bandwidth, info …).
    pub other: Vec<OtherLine>,
    /// Session-level attributes, in order.
    pub attributes: Vec<Attribute>,
    /// The media sections, in order.
    pub media: Vec<Media>,
}

/// One media section (`m=` and the lines after it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Media {
    /// `audio`, `video`, `image`, `application`, …
    pub kind: String,
    /// The transport port; 0 means the stream is rejected/disabled.
    pub port: u16,
    /// The `/<number of ports>` suffix, if any.
    pub port_count: Option<u16>,
    /// `RTP/AVP`, `RTP/SAVP`, `UDP/TLS/RTP/SAVPF`, `udptl`, …
    pub proto: String,
    /// The format list (RTP payload type numbers for RTP protocols).
    pub formats: Vec<String>,
    /// Media-level `c=`.
    pub connection: Option<Connection>,
    /// Media-level lines other than `c=` and `a=` (`i=`, `b=`, `k=`, unknown), in order.
    pub other: Vec<OtherLine>,
    /// Media-level attributes, in order.
    pub attributes: Vec<Attribute>,
}

/// One payload format of an RTP media section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Codec {
    /// The RTP payload type.
    pub payload_type: u8,
    /// The encoding name as sent (`PCMU`, `opus`, `telephone-event`, …).
    pub name: String,
    /// The RTP clock rate.
    pub clock_rate: u32,
    /// The channel count, when the `rtpmap` (or the static table) gives one.
    pub channels: Option<u8>,
    /// The `a=fmtp` parameters for this payload type, if any.
    pub fmtp: Option<String>,
}

/// The media direction attribute (RFC 3264 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// `a=sendrecv` (the default).
    SendRecv,
    /// `a=sendonly`.
    SendOnly,
    /// `a=recvonly`.
    RecvOnly,
    /// `a=inactive`.
    Inactive,
}

impl Direction {
    /// The direction an answerer uses for this offered direction: sendonly ↔ recvonly, the
    /// others unchanged.
    pub fn reverse(self) -> Self {
        match self {
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            d => d,
        }
    }

    /// The attribute name.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    /// The direction named by an attribute name, if it is one.
    pub fn from_attribute(name: &str) -> Option<Self> {
        match name {
            "sendrecv" => Some(Direction::SendRecv),
            "sendonly" => Some(Direction::SendOnly),
            "recvonly" => Some(Direction::RecvOnly),
            "inactive" => Some(Direction::Inactive),
            _ => None,
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn direction_of(attrs: &[Attribute]) -> Option<Direction> {
    attrs
        .iter()
        .find_map(|a| Direction::from_attribute(&a.name))
}

fn is_unspecified(c: Option<&Connection>) -> bool {
    c.and_then(Connection::ip)
        .is_some_and(|ip| ip.is_unspecified())
}

impl SessionDescription {
    /// Parses an SDP body (LF or CRLF line ends). Never panics.
    pub fn parse(text: &str) -> Result<Self, SdpError> {
        parse::parse(text)
    }

    /// Parses an SDP body from bytes, rejecting non-UTF-8 with the line of the first bad byte.
    pub fn parse_bytes(b: &[u8]) -> Result<Self, SdpError> {
        parse::parse_bytes(b)
    }

    /// A minimal description: `v=0`, the given origin, `s=-`, `c=` to `addr`, `t=0 0`, no media.
    pub fn new(origin: (&str, u64, u64), addr: IpAddr) -> Self {
        let mut sd = SessionDescription {
            origin: Origin {
                username: String::new(),
                session_id: String::new(),
                session_version: 0,
                net_type: String::new(),
                addr_type: String::new(),
                address: String::new(),
            },
            session_name: "-".to_string(),
            connection: Some(Connection::from_ip(addr)),
            other: vec![OtherLine {
                kind: 't',
                value: "0 0".to_string(),
            }],
            attributes: Vec::new(),
            media: Vec::new(),
        };
        sd.set_origin(origin.0, origin.1, origin.2, addr);
        sd
    }

    /// The media sections.
    pub fn media(&self) -> &[Media] {
        &self.media
    }

    /// The media sections, mutable.
    pub fn media_mut(&mut self) -> &mut [Media] {
        &mut self.media
    }

    /// The first session-level attribute `name`'s value (`Some("")` for a flag).
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|a| a.name == name)
            .map(|a| a.value.as_deref().unwrap_or(""))
    }

    /// The connection that applies to media `i`: its own `c=`, else the session's.
    pub fn effective_connection(&self, i: usize) -> Option<&Connection> {
        let m = self.media.get(i)?;
        m.connection.as_ref().or(self.connection.as_ref())
    }

    /// Effective RTP destination of media line `i`: media-level `c=` else session-level `c=`,
    /// and the `m=` port. `None` if the port is 0, there is no connection, the address is a
    /// host name, or it is unspecified (`0.0.0.0`/`::`, the RFC 2543 hold: nothing to send to).
    pub fn rtp_endpoint(&self, i: usize) -> Option<SocketAddr> {
        let m = self.media.get(i)?;
        if m.port == 0 {
            return None;
        }
        let ip = self.effective_connection(i)?.ip()?;
        if ip.is_unspecified() {
            return None;
        }
        Some(SocketAddr::new(ip, m.port))
    }

    /// Effective RTCP destination of media `i`: `a=rtcp` (RFC 3605, with or without address)
    /// else the RTP port + 1. `None` whenever [`rtp_endpoint`](Self::rtp_endpoint) is, when the
    /// RTP port is 65535 without `a=rtcp`, or when `a=rtcp` names an unspecified address (WebRTC's
    /// `a=rtcp:9 IN IP4 0.0.0.0` placeholder). A malformed `a=rtcp` is ignored. `a=rtcp-mux` is
    /// not honoured: the gateway never accepts it (see [`anchor`](Self::anchor)).
    pub fn rtcp_endpoint(&self, i: usize) -> Option<SocketAddr> {
        let rtp = self.rtp_endpoint(i)?;
        let m = self.media.get(i)?;
        if let Some(v) = m.attribute("rtcp") {
            let mut f = v.split_ascii_whitespace();
            if let Some(port) = f.next().and_then(|p| p.parse::<u16>().ok()) {
                let ip = match (f.next(), f.next(), f.next()) {
                    (Some(_), Some(_), Some(a)) => a.parse::<IpAddr>().ok(),
                    _ => None,
                };
                let ip = ip.unwrap_or(rtp.ip());
                return (!ip.is_unspecified()).then(|| SocketAddr::new(ip, port));
            }
        }
        let port = rtp.port().checked_add(1)?;
        Some(SocketAddr::new(rtp.ip(), port))
    }

    /// Media anchoring for a B2BUA: sets the session `c=` to `addr` and drops media-level
    /// `c=`; sets the `m=` port of media `i` to `ports[i]` (a port of 0 stays 0 = rejected
    /// stream; a media without an entry in `ports` is rejected with port 0, since it could not
    /// be relayed); drops any `/<count>`; rewrites `a=rtcp` to `ports[i]+1` (removed when that
    /// overflows or the stream is rejected); removes the ICE attributes ([`ICE_ATTRIBUTES`], at
    /// both levels) and `a=rtcp-mux` (the relay does not support it).
    pub fn anchor(&mut self, addr: IpAddr, ports: &[u16]) {
        self.connection = Some(Connection::from_ip(addr));
        self.attributes
            .retain(|a| !ICE_ATTRIBUTES.contains(&a.name.as_str()) && a.name != "rtcp-mux");
        for (i, m) in self.media.iter_mut().enumerate() {
            m.connection = None;
            m.port_count = None;
            if m.port != 0 {
                m.port = ports.get(i).copied().unwrap_or(0);
            }
            let rtcp = if m.port == 0 {
                None
            } else {
                m.port.checked_add(1)
            };
            m.attributes.retain(|a| {
                !ICE_ATTRIBUTES.contains(&a.name.as_str())
                    && a.name != "rtcp-mux"
                    && (a.name != "rtcp" || rtcp.is_some())
            });
            if let Some(p) = rtcp {
                for a in m.attributes.iter_mut().filter(|a| a.name == "rtcp") {
                    a.value = Some(p.to_string());
                }
            }
        }
    }

    /// Sets `o=` to our own origin (username — `-` when empty or containing whitespace —,
    /// session id, version, address). A B2BUA keeps its own origin per leg and bumps the
    /// version on every changed offer (RFC 3264 §8).
    pub fn set_origin(&mut self, username: &str, session_id: u64, version: u64, addr: IpAddr) {
        let username = if username.is_empty()
            || username
                .chars()
                .any(|c| c.is_ascii_whitespace() || c.is_control())
        {
            "-"
        } else {
            username
        };
        self.origin = Origin {
            username: username.to_string(),
            session_id: session_id.to_string(),
            session_version: version,
            net_type: "IN".to_string(),
            addr_type: addr_type_of(addr).to_string(),
            address: addr.to_string(),
        };
    }

    /// The `<sess-version>` of `o=`.
    pub fn origin_version(&self) -> u64 {
        self.origin.session_version
    }

    /// Effective direction of media `i`: its own direction attribute, else the session-level
    /// one, else `sendrecv`. A `c=0.0.0.0` (RFC 2543 hold) does not change the answer; see
    /// [`is_hold`](Self::is_hold). An out-of-range `i` gets the session-level default.
    pub fn direction(&self, i: usize) -> Direction {
        self.media
            .get(i)
            .and_then(|m| direction_of(&m.attributes))
            .or_else(|| direction_of(&self.attributes))
            .unwrap_or(Direction::SendRecv)
    }

    /// Sets the direction of media `i` at media level. A session-level direction attribute is
    /// pushed down to the other media (those without their own) and removed, so that only
    /// media `i` changes. An out-of-range `i` does nothing.
    pub fn set_direction(&mut self, i: usize, d: Direction) {
        if i >= self.media.len() {
            return;
        }
        if let Some(session_dir) = direction_of(&self.attributes) {
            self.attributes
                .retain(|a| Direction::from_attribute(&a.name).is_none());
            for (j, m) in self.media.iter_mut().enumerate() {
                if j != i && direction_of(&m.attributes).is_none() {
                    m.attributes.push(Attribute::flag(session_dir.as_str()));
                }
            }
        }
        if let Some(m) = self.media.get_mut(i) {
            m.set_direction(d);
        }
    }

    /// True when there is at least one audio stream and every audio stream is on hold:
    /// port 0, `sendonly` or `inactive` (RFC 3264 §8.4), or an unspecified connection address
    /// `0.0.0.0`/`::` (the RFC 2543 convention).
    pub fn is_hold(&self) -> bool {
        let mut any = false;
        for (i, m) in self.media.iter().enumerate() {
            if !m.kind.eq_ignore_ascii_case("audio") {
                continue;
            }
            any = true;
            let held = m.port == 0
                || matches!(self.direction(i), Direction::SendOnly | Direction::Inactive)
                || is_unspecified(self.effective_connection(i));
            if !held {
                return false;
            }
        }
        any
    }

    /// Bandwidth lines (`b=<type>:<value>`) at session level, in order.
    pub fn bandwidths(&self) -> impl Iterator<Item = &str> {
        self.other
            .iter()
            .filter(|l| l.kind == 'b')
            .map(|l| l.value.as_str())
    }
}

impl Media {
    /// The first attribute `name`'s value (`Some("")` for a flag attribute).
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes(name).next()
    }

    /// The values of all attributes `name`, in order (`""` for flags).
    pub fn attributes<'a, 'n>(
        &'a self,
        name: &'n str,
    ) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
        self.attributes
            .iter()
            .filter(move |a| a.name == name)
            .map(|a| a.value.as_deref().unwrap_or(""))
    }

    /// Whether a flag or valued attribute `name` is present.
    pub fn has_attribute(&self, name: &str) -> bool {
        self.attributes.iter().any(|a| a.name == name)
    }

    /// Sets attribute `name` to `value` (`None` = flag): replaces the first one in place and
    /// removes the others, or appends it.
    pub fn set_attribute(&mut self, name: &str, value: Option<&str>) {
        let new = Attribute {
            name: name.to_string(),
            value: value.map(str::to_string),
        };
        match self.attributes.iter().position(|a| a.name == name) {
            Some(at) => {
                let mut seen = 0usize;
                self.attributes.retain(|a| {
                    let dup = a.name == name;
                    seen += usize::from(dup);
                    !dup || seen == 1
                });
                if let Some(slot) = self.attributes.get_mut(at) {
                    *slot = new;
                }
            }
            None => self.attributes.push(new),
        }
    }

    /// Removes every attribute `name`.
    pub fn remove_attributes(&mut self, name: &str) {
        self.attributes.retain(|a| a.name != name);
    }

    /// Keeps only the RTP payload formats whose codec satisfies `keep` (e.g. to restrict an
    /// offer to what the far leg accepts), removing the `a=rtpmap`, `a=fmtp` and `a=rtcp-fb`
    /// lines of the dropped ones. Formats without codec information (a dynamic payload type with
    /// no `rtpmap`) are kept. If nothing would remain, nothing is changed and `false` is returned
    /// (an `m=` line needs a format: reject the stream with port 0 instead).
    pub fn retain_codecs(&mut self, mut keep: impl FnMut(&Codec) -> bool) -> bool {
        if !self.is_rtp() {
            return false;
        }
        let mut dropped: Vec<String> = Vec::new();
        let mut kept: Vec<String> = Vec::new();
        for f in &self.formats {
            let codec = f.parse::<u8>().ok().and_then(|pt| self.codec_for(pt));
            match codec {
                Some(c) if !keep(&c) => dropped.push(f.clone()),
                _ => kept.push(f.clone()),
            }
        }
        if kept.is_empty() {
            return false;
        }
        let dropped_pts: Vec<u8> = dropped.iter().filter_map(|f| f.parse().ok()).collect();
        self.attributes.retain(|a| {
            if !matches!(a.name.as_str(), "rtpmap" | "fmtp" | "rtcp-fb") {
                return true;
            }
            let pt = a
                .value
                .as_deref()
                .and_then(|v| v.split_ascii_whitespace().next())
                .and_then(|p| p.parse::<u8>().ok());
            !pt.is_some_and(|pt| dropped_pts.contains(&pt))
        });
        self.formats = kept;
        true
    }

    /// The media-level direction attribute, if any (not the effective one: see
    /// [`SessionDescription::direction`]).
    pub fn direction(&self) -> Option<Direction> {
        direction_of(&self.attributes)
    }

    /// Replaces the media-level direction attributes with `d` (in place of the first one, else
    /// appended).
    pub fn set_direction(&mut self, d: Direction) {
        let pos = self
            .attributes
            .iter()
            .position(|a| Direction::from_attribute(&a.name).is_some());
        self.attributes
            .retain(|a| Direction::from_attribute(&a.name).is_none());
        let at = pos.unwrap_or(self.attributes.len());
        self.attributes.insert(at, Attribute::flag(d.as_str()));
    }

    /// The media-level `c=` address as an IP (not the effective one: see
    /// [`SessionDescription::effective_connection`]).
    pub fn connection(&self) -> Option<IpAddr> {
        self.connection.as_ref().and_then(Connection::ip)
    }

    /// Whether the protocol carries RTP (`RTP/AVP`, `RTP/SAVPF`, `UDP/TLS/RTP/SAVPF`, …), so
    /// that the formats are payload type numbers.
    pub fn is_rtp(&self) -> bool {
        self.proto.split('/').any(|p| p.eq_ignore_ascii_case("RTP"))
    }

    /// Codecs in format-list order: payload type → (encoding name, clock rate, channels) from
    /// `a=rtpmap`, with the RFC 3551 static defaults when a static payload type has no
    /// `rtpmap`; `a=fmtp` attached. Dynamic payload types without `rtpmap`, non-numeric formats
    /// and non-RTP media yield nothing.
    pub fn codecs(&self) -> Vec<Codec> {
        if !self.is_rtp() {
            return Vec::new();
        }
        self.formats
            .iter()
            .filter_map(|f| f.parse::<u8>().ok())
            .filter(|pt| *pt < 128)
            .filter_map(|pt| self.codec_for(pt))
            .collect()
    }

    /// The codec of payload type `pt` (see [`codecs`](Self::codecs)), whether or not it is in
    /// the format list.
    pub fn codec_for(&self, pt: u8) -> Option<Codec> {
        let rtpmap = self.attributes("rtpmap").find_map(|v| {
            let (p, rest) = v.split_once([' ', '\t'])?;
            (p.parse::<u8>().ok()? == pt).then_some(rest.trim())
        });
        let (name, clock_rate, channels) = match rtpmap {
            Some(r) => {
                let mut parts = r.split('/');
                let name = parts.next().filter(|n| !n.is_empty())?.to_string();
                let rate = parts.next()?.trim().parse::<u32>().ok()?;
                let ch = parts.next().and_then(|c| c.trim().parse::<u8>().ok());
                (name, rate, ch)
            }
            None => {
                let (n, r, c) = static_payload(pt)?;
                (n.to_string(), r, c)
            }
        };
        let fmtp = self.attributes("fmtp").find_map(|v| {
            let (p, rest) = v.split_once([' ', '\t']).unwrap_or((v, ""));
            (p.parse::<u8>().ok()? == pt).then(|| rest.trim().to_string())
        });
        Some(Codec {
            payload_type: pt,
            name,
            clock_rate,
            channels,
            fmtp,
        })
    }

    /// The first codec whose encoding name equals `name` (ASCII case-insensitive).
    pub fn codec(&self, name: &str) -> Option<Codec> {
        self.codecs()
            .into_iter()
            .find(|c| c.name.eq_ignore_ascii_case(name))
    }

    /// Bandwidth lines (`b=<type>:<value>`) of this media, in order.
    pub fn bandwidths(&self) -> impl Iterator<Item = &str> {
        self.other
            .iter()
            .filter(|l| l.kind == 'b')
            .map(|l| l.value.as_str())
    }
}

/// RFC 3551 §6 static payload types: (name, clock rate, channels).
pub fn static_payload(pt: u8) -> Option<(&'static str, u32, Option<u8>)> {
    Some(match pt {
        0 => ("PCMU", 8000, Some(1)),
        3 => ("GSM", 8000, Some(1)),
        4 => ("G723", 8000, Some(1)),
        5 => ("DVI4", 8000, Some(1)),
        6 => ("DVI4", 16000, Some(1)),
        7 => ("LPC", 8000, Some(1)),
        8 => ("PCMA", 8000, Some(1)),
        9 => ("G722", 8000, Some(1)),
        10 => ("L16", 44100, Some(2)),
        11 => ("L16", 44100, Some(1)),
        12 => ("QCELP", 8000, Some(1)),
        13 => ("CN", 8000, Some(1)),
        14 => ("MPA", 90000, None),
        15 => ("G728", 8000, Some(1)),
        16 => ("DVI4", 11025, Some(1)),
        17 => ("DVI4", 22050, Some(1)),
        18 => ("G729", 8000, Some(1)),
        25 => ("CelB", 90000, None),
        26 => ("JPEG", 90000, None),
        28 => ("nv", 90000, None),
        31 => ("H261", 90000, None),
        32 => ("MPV", 90000, None),
        33 => ("MP2T", 90000, None),
        34 => ("H263", 90000, None),
        _ => return None,
    })
}

fn write_other(f: &mut fmt::Formatter<'_>, l: &OtherLine) -> fmt::Result {
    write!(f, "{}={}\r\n", l.kind, l.value)
}

fn write_attr(f: &mut fmt::Formatter<'_>, a: &Attribute) -> fmt::Result {
    match &a.value {
        Some(v) => write!(f, "a={}:{}\r\n", a.name, v),
        None => write!(f, "a={}\r\n", a.name),
    }
}

fn write_conn(f: &mut fmt::Formatter<'_>, c: &Connection) -> fmt::Result {
    write!(f, "c={} {} {}\r\n", c.net_type, c.addr_type, c.address)
}

impl fmt::Display for SessionDescription {
    /// Serialises with CRLF line ends in RFC 8866 §5 order.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.origin;
        write!(f, "v=0\r\n")?;
        write!(
            f,
            "o={} {} {} {} {} {}\r\n",
            o.username, o.session_id, o.session_version, o.net_type, o.addr_type, o.address
        )?;
        write!(f, "s={}\r\n", self.session_name)?;
        let head = self
            .other
            .iter()
            .take_while(|l| matches!(l.kind, 'i' | 'u' | 'e' | 'p'))
            .count();
        let (before, after) = self.other.split_at(head);
        for l in before {
            write_other(f, l)?;
        }
        if let Some(c) = &self.connection {
            write_conn(f, c)?;
        }
        for l in after {
            write_other(f, l)?;
        }
        for a in &self.attributes {
            write_attr(f, a)?;
        }
        for m in &self.media {
            write!(f, "m={} {}", m.kind, m.port)?;
            if let Some(n) = m.port_count {
                write!(f, "/{n}")?;
            }
            write!(f, " {}", m.proto)?;
            for fmt_ in &m.formats {
                write!(f, " {fmt_}")?;
            }
            write!(f, "\r\n")?;
            let head = m.other.iter().take_while(|l| l.kind == 'i').count();
            let (before, after) = m.other.split_at(head);
            for l in before {
                write_other(f, l)?;
            }
            if let Some(c) = &m.connection {
                write_conn(f, c)?;
            }
            for l in after {
                write_other(f, l)?;
            }
            for a in &m.attributes {
                write_attr(f, a)?;
            }
        }
        Ok(())
    }
}

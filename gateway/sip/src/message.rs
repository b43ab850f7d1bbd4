//! SIP messages on rsip: strict parsing, faithful serialising, the UAS checks of RFC 3261 §8.2 and
//! building responses (§8.2.6).
//!
//! The message model is rsip's ([`SipMessage`], [`Request`], [`Response`], untyped [`Header`]s).
//! rsip 0.4's own parser is too lenient for the wire and too lossy for a proxy-grade stack, so
//! [`parse`] wraps it:
//!
//! * **We split and check, rsip holds.** We split the start line, the header block and the body,
//!   unfold continuation lines, expand compact header names (`i:` → `Call-ID`), trim whitespace
//!   around the colon, and hand the normalised header block to rsip's header tokenizer
//!   (`rsip::Response::try_from` on a synthetic status line); the resulting rsip headers are
//!   stored untouched. On its own, rsip 0.4 rejects 6 of RFC 4475's 13 valid messages (folded
//!   lines, `Name : value`, extension methods), accepts 11 of its 19 invalid ones and cannot
//!   read §3.3.2's Request-URI.
//! * **Start line and Request-URI are ours.** rsip's URI tokenizer cannot read a user part
//!   containing `.` or `;` (it takes the whole `user@host` as the host), fails on an opaque URI
//!   (`nobodyKnowsThisScheme:totallyopaquecontent`), and silently drops URI headers. We parse the
//!   Request-URI with the RFC 3261 §25 grammar and fill rsip's [`rsip::Uri`] fields ourselves;
//!   an absolute URI of another scheme is kept as `Scheme::Other(scheme)` with everything after
//!   the colon as an opaque `Host::Domain`.
//! * **Checks rsip does not make**: one SP between start-line elements and none trailing, the
//!   SIP version (→ 505), status codes 100–699, Request-URI syntax and no URI headers in it,
//!   Via/To/From/Contact/Route/Record-Route/Reply-To, Call-ID, CSeq (≤ 2³²−1, method equal to
//!   the request's), Max-Forwards (≤ 255), Content-Length (a number, not more than the body),
//!   Date (`GMT`), Content-Type, Accept and option-tag lists; control characters outside
//!   quoted-pairs. A datagram's bytes past Content-Length are dropped (§18.3).
//! * **Unknown methods**: `rsip::Method` is a closed enum, so a request with an extension method
//!   cannot be represented. [`parse`] answers it with [`ParseErrorKind::UnknownMethod`] carrying a
//!   ready `501 Not Implemented` ([`ParseError::reply`]), which is what this B2BUA must answer to
//!   any method it does not implement (§8.2.1).
//! * **Errors that can be answered**: when a *request* is rejected but its Via, From, To, Call-ID
//!   and CSeq are sound, the error carries the response to send (400 with a `Warning: 399`
//!   explaining why, 505, 501 or 513). Broken responses are never answered, only dropped.
//!
//! [`serialize`] writes what rsip holds, byte-exact for the body (rsip's `Display` converts the
//! body with `from_utf8_lossy`, corrupting binary bodies such as RFC 4475 §3.1.1.11), with the
//! opaque URIs above and with RFC 3261 reason phrases (rsip's `Display` writes `400 BadRequest`).
//! Always send what [`serialize`] returns, never `to_string()`.
//!
//! Known simplifications: rsip keeps no reason phrase for status codes it names, so a received
//! `200 Whatever` is re-serialised as `200 OK`; URI parameters known to rsip (`transport`,
//! `method`, …) are normalised in case.
//!
//! rsip does not panic on any input we have found (corpus mutations and random bytes), so no
//! `catch_unwind` is needed; the fuzz test in `tests/rfc4475.rs` keeps checking it through
//! [`parse`].

use std::borrow::Cow;
use std::fmt::Write as _;
use std::net::IpAddr;

use rsip::headers::UntypedHeader;
pub use rsip::{Header, Headers, Method, Request, Response, SipMessage, StatusCode};

/// The largest message [`parse`] accepts, in bytes (a UDP datagram cannot be larger anyway).
pub const MAX_MESSAGE_SIZE: usize = 64 * 1024;

/// The most header fields [`parse`] accepts in one message (real messages carry a few dozen;
/// the cap bounds the work a single datagram can cause).
pub const MAX_HEADER_FIELDS: usize = 512;

/// Request-URI schemes this UAS serves; any other is answered with 416.
pub const SUPPORTED_URI_SCHEMES: &[&str] = &["sip", "sips"];

/// Option tags this UAS supports in `Require`; any other is answered with 420.
pub const SUPPORTED_EXTENSIONS: &[&str] = &[];

/// Body types this UAS understands; any other is answered with 415.
pub const SUPPORTED_CONTENT_TYPES: &[&str] = &["application/sdp"];

/// The warn-agent (a pseudonym, RFC 3261 §20.43) of the `Warning: 399` added to rejections.
pub const WARN_AGENT: &str = "callfabric";

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Why [`parse`] rejected a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseErrorKind {
    /// Longer than [`MAX_MESSAGE_SIZE`].
    #[error("message of {0} bytes exceeds the limit of {MAX_MESSAGE_SIZE} bytes")]
    TooLarge(usize),
    /// Nothing but CRLFs (a keep-alive).
    #[error("empty message")]
    Empty,
    /// Malformed request or status line.
    #[error("bad start line: {0}")]
    StartLine(String),
    /// A SIP version other than 2.0 (answered with 505).
    #[error("unsupported SIP version {0:?}")]
    Version(String),
    /// Malformed Request-URI.
    #[error("bad Request-URI: {0}")]
    RequestUri(String),
    /// Status code not three digits from 100 to 699.
    #[error("bad status code {0:?}")]
    StatusCode(String),
    /// A header line that is not `name: value`, not UTF-8, or the header block is unterminated.
    #[error("bad header line: {0}")]
    HeaderLine(String),
    /// A header field whose value breaks its RFC 3261 grammar.
    #[error("bad {name} header field: {detail}")]
    Header {
        /// Header name (compact forms expanded).
        name: String,
        /// What is wrong.
        detail: String,
    },
    /// The CSeq method differs from the request method (§8.1.1.5).
    #[error("CSeq method {cseq:?} does not match the request method {method:?}")]
    CSeqMismatch {
        /// Method in the request line.
        method: String,
        /// Method in CSeq.
        cseq: String,
    },
    /// Content-Length larger than the bytes that follow the header block (§18.3).
    #[error("Content-Length is {declared} but only {available} body bytes follow")]
    ContentLength {
        /// Declared length.
        declared: u32,
        /// Bytes present.
        available: usize,
    },
    /// A well-formed request with a method rsip cannot represent (answered with 501).
    #[error("method {0:?} is not implemented")]
    UnknownMethod(String),
    /// rsip refused the normalised header block (not seen in practice).
    #[error("rsip rejected the header block: {0}")]
    Rsip(String),
}

/// A rejected message, with the response to send when it was a request that can be answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}")]
pub struct ParseError {
    kind: ParseErrorKind,
    reply: Option<Box<Response>>,
}

impl ParseError {
    /// What was wrong.
    pub fn kind(&self) -> &ParseErrorKind {
        &self.kind
    }

    /// The response a UAS sends (400, 501, 505 or 513), or `None` when the message must simply
    /// be dropped: it was a response, or the request's Via/From/To/Call-ID/CSeq are unusable.
    pub fn reply(&self) -> Option<&Response> {
        self.reply.as_deref()
    }
}

/// A request a UAS must refuse, with the status to answer (from [`validate_request`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code} {detail}")]
pub struct Rejection {
    /// Status code (400, 406, 415, 416, 420 …).
    pub code: u16,
    /// Why, for humans; sent as `Warning: 399 callfabric "…"`.
    pub detail: String,
    /// Headers the response must carry (`Unsupported` for 420, `Accept` for 415/406 …).
    pub headers: Vec<Header>,
}

impl Rejection {
    fn new(code: u16, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into(),
            headers: Vec::new(),
        }
    }

    fn with(mut self, header: Header) -> Self {
        self.headers.push(header);
        self
    }

    /// The response to send for `req` (§8.2.6: Via, From, To with a tag, Call-ID, CSeq copied).
    pub fn response(&self, req: &Request) -> Response {
        build_reply(
            &req.headers,
            self.code,
            "",
            &self.detail,
            &self.headers,
            None,
        )
    }
}

/// A response a UAC must discard (from [`validate_response`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("response discarded: {0}")]
pub struct Discard(pub String);

// ---------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------

/// Parses one SIP message (a datagram, or one message already framed by the stream transport).
///
/// Never panics. Leading CRLFs are skipped (§7.5); bytes past Content-Length are dropped
/// (§18.3); without Content-Length everything after the header block is the body. Missing
/// mandatory headers are not a parse error (RFC 4475 §3.3.1): see [`validate_request`].
pub fn parse(bytes: &[u8]) -> Result<SipMessage, ParseError> {
    let parsed = parse_message(bytes);
    // Every parse of the unit tests is also a differential test against the old parse path.
    #[cfg(test)]
    differential::check(bytes, &parsed);
    parsed
}

#[cfg(test)]
mod differential;
#[cfg(test)]
mod reference;

/// The work of [`parse`] (which, in unit tests, also runs the reference parse of
/// `message/reference.rs` on the same bytes and requires the same result).
fn parse_message(bytes: &[u8]) -> Result<SipMessage, ParseError> {
    if bytes.len() > MAX_MESSAGE_SIZE {
        // Answer 513 if the head alone is within the limit and sound.
        let kind = ParseErrorKind::TooLarge(bytes.len());
        let reply = bytes
            .get(..MAX_MESSAGE_SIZE)
            .and_then(|b| split_message(b).ok())
            .and_then(|(start, head, _)| Head::analyse(start, head).reply_headers())
            .map(|h| Box::new(build_reply(&h, 513, "", "message too large", &[], None)));
        return Err(ParseError { kind, reply });
    }
    let (start, head, body) =
        split_message(bytes).map_err(|kind| ParseError { kind, reply: None })?;
    let head = Head::analyse(start, head);
    let fail = |kind: ParseErrorKind| {
        let reply = head.reply_headers().map(|h| {
            let (code, detail) = match &kind {
                ParseErrorKind::Version(v) => (505, format!("SIP version {v} is not supported")),
                ParseErrorKind::UnknownMethod(m) => (501, format!("method {m} is not implemented")),
                other => (400, other.to_string()),
            };
            Box::new(build_reply(&h, code, "", &detail, &[], None))
        });
        ParseError { kind, reply }
    };

    let start_line = match &head.start {
        Ok(s) => s,
        Err(e) => return Err(fail(e.clone())),
    };
    let fields = match &head.fields {
        Ok(f) => f,
        Err(e) => return Err(fail(e.clone())),
    };
    // The grammar of every field, keeping what the checks after it need: the first CSeq
    // method that differs from the request's, and whether all Content-Length values agree.
    let request_method = match start_line {
        StartLine::Request { method, .. } => Some(*method),
        StartLine::Response { .. } => None,
    };
    let mut cseq_mismatch = None;
    let (mut length, mut lengths_differ) = (None, false);
    for f in fields {
        match grammar::check_field_read(f.lname, &f.value) {
            Err(detail) => {
                return Err(fail(ParseErrorKind::Header {
                    name: f.name.to_owned(),
                    detail,
                }))
            }
            Ok(grammar::Read::CSeqMethod(m)) => {
                if cseq_mismatch.is_none() && request_method.is_some_and(|r| r != m) {
                    cseq_mismatch = Some(m);
                }
            }
            Ok(grammar::Read::ContentLength(n)) => match length {
                None => length = Some(n),
                Some(first) => lengths_differ |= first != n,
            },
            Ok(grammar::Read::Nothing) => {}
        }
    }
    if let (Some(method), Some(cseq)) = (request_method, cseq_mismatch) {
        return Err(fail(ParseErrorKind::CSeqMismatch {
            method: method.to_owned(),
            cseq: cseq.to_owned(),
        }));
    }

    // Framing (§18.3): one Content-Length value frames the body; conflicting values leave the
    // body untouched for validate_request to refuse (RFC 4475 §3.3.9).
    let mut body = body;
    if let (Some(declared), false) = (length, lengths_differ) {
        match body.get(..declared as usize) {
            Some(framed) => body = framed,
            None => {
                return Err(fail(ParseErrorKind::ContentLength {
                    declared,
                    available: body.len(),
                }))
            }
        }
    }

    if let Err(e) = &head.headers {
        return Err(fail(e.clone()));
    }
    let method = match start_line {
        StartLine::Request { method, .. } => match known_method(method) {
            Some(m) => Some(m),
            None => return Err(fail(ParseErrorKind::UnknownMethod((*method).to_owned()))),
        },
        StartLine::Response { .. } => None,
    };
    // Everything is checked: move the start line and headers out instead of cloning them.
    let (Ok(start_line), Ok(headers)) = (head.start, head.headers) else {
        return Err(ParseError {
            kind: ParseErrorKind::Empty,
            reply: None,
        });
    };
    match (start_line, method) {
        (StartLine::Request { uri, .. }, Some(method)) => Ok(SipMessage::Request(Request {
            method,
            uri,
            version: rsip::Version::V2,
            headers,
            body: body.to_vec(),
        })),
        (StartLine::Response { code, reason }, _) => Ok(SipMessage::Response(Response {
            version: rsip::Version::V2,
            status_code: status_code(code, reason),
            headers,
            body: body.to_vec(),
        })),
        (StartLine::Request { .. }, None) => Err(ParseError {
            kind: ParseErrorKind::Empty,
            reply: None,
        }),
    }
}

/// Start line, header block (without its final CRLF CRLF) and body.
type Parts<'a> = (&'a [u8], &'a [u8], &'a [u8]);

/// Splits a message into its [`Parts`].
fn split_message(bytes: &[u8]) -> Result<Parts<'_>, ParseErrorKind> {
    let mut bytes = bytes;
    while let Some(rest) = bytes.strip_prefix(b"\r\n") {
        bytes = rest;
    }
    if bytes.is_empty() {
        return Err(ParseErrorKind::Empty);
    }
    let Some(eol) = find(bytes, b"\r\n") else {
        return Err(ParseErrorKind::StartLine(
            "no CRLF after the start line".into(),
        ));
    };
    let (start, rest) = (&bytes[..eol], &bytes[eol + 2..]);
    if let Some(body) = rest.strip_prefix(b"\r\n") {
        return Ok((start, &[], body));
    }
    match END_OF_HEAD.find(rest) {
        Some(end) => Ok((start, &rest[..end], &rest[end + 4..])),
        None => Err(ParseErrorKind::HeaderLine(
            "header block not terminated by an empty line".into(),
        )),
    }
}

/// The empty line after the header block, searched for with one searcher built once (memchr to
/// each CR called the search once per header line).
static END_OF_HEAD: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\r\n\r\n"));

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    // Every needle here starts with CR: memchr to each CR (a one-shot memmem::find builds a
    // searcher per call, which costs more than the search on a SIP-sized message).
    let (&first, _) = needle.split_first()?;
    memchr::memchr_iter(first, hay).find(|&i| hay.get(i..i + needle.len()) == Some(needle))
}

#[derive(Debug, Clone)]
enum StartLine<'a> {
    Request { method: &'a str, uri: rsip::Uri },
    Response { code: u16, reason: &'a str },
}

/// One header field after unfolding, name with compact forms expanded. Borrowed from the
/// message unless continuation lines were folded into the value.
#[derive(Debug, Clone)]
struct Field<'a> {
    name: &'a str,
    /// The lower-case name if it is one of [`KNOWN_FIELDS`], else "".
    lname: &'static str,
    value: Cow<'a, str>,
}

/// The names [`Field::lname`] can take: the fields [`grammar::check_field`] or the framing
/// look at, and the other fields every REGISTER carries ([`known_lname`] matches them; a test
/// pins the two together).
#[cfg_attr(not(test), allow(dead_code))]
const KNOWN_FIELDS: &[&str] = &[
    "via",
    "to",
    "from",
    "reply-to",
    "contact",
    "route",
    "record-route",
    "call-id",
    "cseq",
    "max-forwards",
    "content-length",
    "date",
    "require",
    "proxy-require",
    "content-encoding",
    "supported",
    "unsupported",
    "content-type",
    "accept",
    // Not checked by grammar::check_field; known for rsip_headers.
    "expires",
    "authorization",
];

fn known_lname(name: &str) -> &'static str {
    // Lower-cased once into a buffer and matched (a scan of KNOWN_FIELDS lower-cased both
    // sides of ~20 compares for each field of each message); a test pins this to KNOWN_FIELDS.
    let mut buf = [0u8; 16];
    let Some(lower) = buf.get_mut(..name.len()) else {
        return "";
    };
    for (l, b) in lower.iter_mut().zip(name.bytes()) {
        *l = b.to_ascii_lowercase();
    }
    match &*lower {
        b"via" => "via",
        b"to" => "to",
        b"from" => "from",
        b"reply-to" => "reply-to",
        b"contact" => "contact",
        b"route" => "route",
        b"record-route" => "record-route",
        b"call-id" => "call-id",
        b"cseq" => "cseq",
        b"max-forwards" => "max-forwards",
        b"content-length" => "content-length",
        b"date" => "date",
        b"require" => "require",
        b"proxy-require" => "proxy-require",
        b"content-encoding" => "content-encoding",
        b"supported" => "supported",
        b"unsupported" => "unsupported",
        b"content-type" => "content-type",
        b"accept" => "accept",
        b"expires" => "expires",
        b"authorization" => "authorization",
        _ => "",
    }
}

/// Everything known about a message's head, each part with its own error.
struct Head<'a> {
    is_request: bool,
    start: Result<StartLine<'a>, ParseErrorKind>,
    fields: Result<Vec<Field<'a>>, ParseErrorKind>,
    headers: Result<Headers, ParseErrorKind>,
    /// When header lines are not UTF-8: the other fields' headers, to answer 400 from.
    salvaged: Option<Headers>,
}

impl<'a> Head<'a> {
    fn analyse(start: &'a [u8], head: &'a [u8]) -> Self {
        let is_request = !start
            .get(..4)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"SIP/"));
        let start = parse_start_line(start, is_request);
        let fields = header_fields(head);
        let headers = match &fields {
            Ok(f) => rsip_headers(f),
            Err(e) => Err(e.clone()),
        };
        let salvaged = match &fields {
            Err(ParseErrorKind::HeaderLine(m)) if is_request && m.ends_with("is not UTF-8") => {
                salvage_utf8(head)
            }
            _ => None,
        };
        Self {
            is_request,
            start,
            fields,
            headers,
            salvaged,
        }
    }

    /// The headers to answer from: only for requests whose Via, From, To, Call-ID and CSeq are
    /// present and well-formed (a response to anything else would carry fields we invented).
    fn reply_headers(&self) -> Option<Headers> {
        if !self.is_request {
            return None;
        }
        if self.salvaged.is_some() {
            return self.salvaged.clone();
        }
        let fields = self.fields.as_ref().ok()?;
        if !essentials_sound(fields) {
            return None;
        }
        self.headers.as_ref().ok().cloned()
    }
}

/// Whether Via, From, To, Call-ID and CSeq are present and well-formed: a response to
/// anything else would carry fields we invented.
fn essentials_sound(fields: &[Field<'_>]) -> bool {
    for essential in ["via", "from", "to", "call-id", "cseq"] {
        let mut present = false;
        for f in fields.iter().filter(|f| f.lname == essential) {
            present = true;
            let sound = match essential {
                // Syntax only: a Via naming another SIP version can still be answered.
                "via" => grammar::via(&f.value).is_ok(),
                _ => grammar::check_field(essential, &f.value).is_ok(),
            };
            if !sound {
                return false;
            }
        }
        if !present {
            return false;
        }
    }
    true
}

/// The headers of a request whose header block has lines that are not UTF-8 (PROTOS c07
/// cases), without those lines (and their continuation lines), if the rest is sound enough
/// to answer 400 from: RFC 3261 wants the UTF-8 charset, and such a request is refused, not
/// dropped in silence. `None` if an essential field is among the lines dropped.
fn salvage_utf8(head: &[u8]) -> Option<Headers> {
    let mut kept: Vec<u8> = Vec::with_capacity(head.len());
    let mut skipping = false;
    for raw in split_crlf(head) {
        let continuation = raw.first().is_some_and(|&b| b == b' ' || b == b'\t');
        if std::str::from_utf8(raw).is_err() {
            if continuation {
                return None; // part of a field already kept
            }
            skipping = true;
            continue;
        }
        if continuation && skipping {
            continue;
        }
        skipping = false;
        if !kept.is_empty() {
            kept.extend_from_slice(b"\r\n");
        }
        kept.extend_from_slice(raw);
    }
    let fields = header_fields(&kept).ok()?;
    if !essentials_sound(&fields) {
        return None;
    }
    rsip_headers(&fields).ok()
}

fn parse_start_line(line: &[u8], is_request: bool) -> Result<StartLine<'_>, ParseErrorKind> {
    let bad = |m: &str| ParseErrorKind::StartLine(m.into());
    let line = std::str::from_utf8(line).map_err(|_| bad("not UTF-8"))?;
    if let Some(c) = line
        .bytes()
        .find(|&c| c != b'\t' && (c < 0x20 || c == 0x7f))
    {
        return Err(bad(&format!("control character {c:#04x}")));
    }
    if is_request {
        // Exactly two SPs (what `split(' ')` into three parts is, without its searcher).
        let first = grammar::find_byte(line, b' ');
        let second = first.and_then(|i| Some(i + 1 + grammar::find_byte(&line[i + 1..], b' ')?));
        let third = second.and_then(|j| grammar::find_byte(&line[j + 1..], b' '));
        let (Some(i), Some(j), None) = (first, second, third) else {
            return Err(bad(
                "a request line is Method SP Request-URI SP SIP-Version, single spaces",
            ));
        };
        let (method, uri, version) = (&line[..i], &line[i + 1..j], &line[j + 1..]);
        if method.is_empty() || !method.bytes().all(grammar::is_token) {
            return Err(bad("method is not a token"));
        }
        check_version(version)?;
        let uri = grammar::request_uri(uri).map_err(ParseErrorKind::RequestUri)?;
        Ok(StartLine::Request { method, uri })
    } else {
        let mut parts = line.splitn(3, ' ');
        let version = parts.next().unwrap_or("");
        let (Some(code), Some(reason)) = (parts.next(), parts.next()) else {
            return Err(bad(
                "a status line is SIP-Version SP Status-Code SP Reason-Phrase",
            ));
        };
        check_version(version)?;
        let valid = code.len() == 3 && code.bytes().all(|c| c.is_ascii_digit());
        let code = match code.parse::<u16>() {
            Ok(n) if valid && (100..=699).contains(&n) => n,
            _ => return Err(ParseErrorKind::StatusCode(code.to_owned())),
        };
        Ok(StartLine::Response { code, reason })
    }
}

fn check_version(version: &str) -> Result<(), ParseErrorKind> {
    if version == "SIP/2.0" {
        return Ok(()); // nearly every message: well-formed and 2.0
    }
    let rest = version
        .get(..4)
        .filter(|p| p.eq_ignore_ascii_case("SIP/"))
        .and_then(|_| version.get(4..));
    let well_formed = rest.and_then(|r| r.split_once('.')).is_some_and(|(a, b)| {
        !a.is_empty()
            && !b.is_empty()
            && a.bytes().all(|c| c.is_ascii_digit())
            && b.bytes().all(|c| c.is_ascii_digit())
    });
    if !well_formed {
        return Err(ParseErrorKind::StartLine(format!(
            "{version:?} is not a SIP version"
        )));
    }
    if rest != Some("2.0") {
        return Err(ParseErrorKind::Version(version.to_owned()));
    }
    Ok(())
}

/// Splits the header block into fields: unfolds continuation lines (§7.3.1, CRLF + WSP → SP),
/// trims the value, allows whitespace before the colon, expands compact names.
fn header_fields(head: &[u8]) -> Result<Vec<Field<'_>>, ParseErrorKind> {
    let bad = |m: String| ParseErrorKind::HeaderLine(m);
    let mut fields: Vec<Field<'_>> = Vec::with_capacity(16);
    if head.is_empty() {
        return Ok(fields);
    }
    // Lines end at ASCII CRLFs, so every line of a UTF-8 block is UTF-8: one check for the
    // block; a block that is not is checked line by line, to name the first line that is not.
    let text = std::str::from_utf8(head).ok();
    let mut start = 0;
    for n in 0.. {
        // The line's first CR or LF: when it starts a CRLF, that ends the line and the line
        // has no bare CR or LF (one search per line in the usual case); otherwise the line
        // ends at the next CRLF and is checked for them below.
        let rest = head.get(start..).unwrap_or_default();
        let (end, clean) = match memchr::memchr2(b'\r', b'\n', rest) {
            None => (head.len(), true),
            Some(i) if rest.get(i..i + 2) == Some(b"\r\n") => (start + i, true),
            Some(_) => (find(rest, b"\r\n").map_or(head.len(), |i| start + i), false),
        };
        let raw = &head[start..end];
        let line = match text.and_then(|t| t.get(start..end)) {
            Some(line) => line,
            None => {
                std::str::from_utf8(raw).map_err(|_| bad(format!("line {} is not UTF-8", n + 1)))?
            }
        };
        let last = end == head.len();
        start = (end + 2).min(head.len());
        if !clean && memchr::memchr2(b'\r', b'\n', raw).is_some() {
            return Err(bad(format!("bare CR or LF in line {}", n + 1)));
        }
        if matches!(raw.first(), Some(b' ' | b'\t')) {
            let Some(last_field) = fields.last_mut() else {
                return Err(bad("continuation line before the first header".into()));
            };
            let cont = trim_wsp(line);
            if !cont.is_empty() {
                let value = last_field.value.to_mut();
                if !value.is_empty() {
                    value.push(' ');
                }
                value.push_str(cont);
            }
        } else {
            // The usual line, `token *WSP ":"`, in one scan; anything else (no colon, a name
            // that is not a token) goes the general way, which says what is wrong.
            let token_end = raw
                .iter()
                .position(|&b| !grammar::is_token(b))
                .unwrap_or(raw.len());
            let colon_at = token_end
                + raw
                    .get(token_end..)
                    .unwrap_or_default()
                    .iter()
                    .take_while(|&&b| b == b' ' || b == b'\t')
                    .count();
            let (name, value) = if token_end > 0 && raw.get(colon_at) == Some(&b':') {
                (
                    line.get(..token_end).unwrap_or(""),
                    line.get(colon_at + 1..).unwrap_or(""),
                )
            } else {
                let Some(colon) = memchr::memchr(b':', raw) else {
                    return Err(bad(format!("line {} has no colon", n + 1)));
                };
                let (name, value) = (
                    line.get(..colon).unwrap_or(""),
                    line.get(colon + 1..).unwrap_or(""),
                );
                let name = name.trim_end_matches([' ', '\t']);
                if name.is_empty() || !name.bytes().all(grammar::is_token) {
                    return Err(bad(format!("{name:?} is not a header name")));
                }
                (name, value)
            };
            if fields.len() == MAX_HEADER_FIELDS {
                return Err(bad(format!("more than {MAX_HEADER_FIELDS} header fields")));
            }
            let name = expand_compact(name).unwrap_or(name);
            fields.push(Field {
                lname: known_lname(name),
                name,
                value: Cow::Borrowed(trim_wsp(value)),
            });
        }
        if last {
            break;
        }
    }
    Ok(fields)
}

/// `s` without leading and trailing SP and HTAB (a byte scan: `trim_matches` with a char set
/// is slow).
fn trim_wsp(s: &str) -> &str {
    let b = s.as_bytes();
    let wsp = |c: &u8| *c == b' ' || *c == b'\t';
    let start = b.iter().position(|c| !wsp(c)).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !wsp(c)).map_or(start, |i| i + 1);
    s.get(start..end).unwrap_or("")
}

/// The lines of a header block.
fn split_crlf(mut rest: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let Some(i) = find(rest, b"\r\n") {
        out.push(&rest[..i]);
        rest = &rest[i + 2..];
    }
    out.push(rest);
    out
}

/// Compact header names (RFC 3261 §7.3.3 and the IANA SIP header registry).
fn expand_compact(name: &str) -> Option<&'static str> {
    let [c] = name.as_bytes() else { return None };
    Some(match c.to_ascii_lowercase() {
        b'a' => "Accept-Contact",
        b'b' => "Referred-By",
        b'c' => "Content-Type",
        b'd' => "Request-Disposition",
        b'e' => "Content-Encoding",
        b'f' => "From",
        b'i' => "Call-ID",
        b'j' => "Reject-Contact",
        b'k' => "Supported",
        b'l' => "Content-Length",
        b'm' => "Contact",
        b'n' => "Identity-Info",
        b'o' => "Event",
        b'r' => "Refer-To",
        b's' => "Subject",
        b't' => "To",
        b'u' => "Allow-Events",
        b'v' => "Via",
        b'x' => "Session-Expires",
        b'y' => "Identity",
        _ => return None,
    })
}

/// rsip's headers for the normalised fields: each field goes through rsip's own per-header
/// conversion (the one its message parser applies to every `name: value` line), without
/// writing the block out as text and tokenizing it again.
fn rsip_headers(fields: &[Field<'_>]) -> Result<Headers, ParseErrorKind> {
    use rsip::headers::header::Tokenizer;
    let mut headers = Vec::with_capacity(fields.len());
    for f in fields {
        // The fields every request carries are built directly, as the same variant rsip's
        // tokenizer picks (its name match is a chain of ~50 case-insensitive compares).
        let value = || f.value.clone().into_owned();
        let direct = match f.lname {
            "via" => Some(Header::Via(rsip::headers::Via::new(value()))),
            "to" => Some(Header::To(rsip::headers::To::new(value()))),
            "from" => Some(Header::From(rsip::headers::From::new(value()))),
            "call-id" => Some(Header::CallId(rsip::headers::CallId::new(value()))),
            "cseq" => Some(Header::CSeq(rsip::headers::CSeq::new(value()))),
            "contact" => Some(Header::Contact(rsip::headers::Contact::new(value()))),
            "max-forwards" => Some(Header::MaxForwards(
                rsip::headers::MaxForwards::new(value()),
            )),
            "content-length" => Some(Header::ContentLength(rsip::headers::ContentLength::new(
                value(),
            ))),
            "expires" => Some(Header::Expires(rsip::headers::Expires::new(value()))),
            "authorization" => Some(Header::Authorization(rsip::headers::Authorization::new(
                value(),
            ))),
            _ => None,
        };
        if let Some(header) = direct {
            headers.push(header);
            continue;
        }
        let tokenizer = Tokenizer {
            name: f.name.as_bytes(),
            value: f.value.as_bytes(),
        };
        let header: Header = tokenizer
            .try_into()
            .map_err(|e: rsip::Error| ParseErrorKind::Rsip(e.to_string()))?;
        headers.push(header);
    }
    Ok(headers.into())
}

/// The wire name of an rsip method (rsip's `Display` upper-cases the variant name into a new
/// `String` on every call).
pub fn method_name(method: &Method) -> &'static str {
    match method {
        Method::Ack => "ACK",
        Method::Bye => "BYE",
        Method::Cancel => "CANCEL",
        Method::Info => "INFO",
        Method::Invite => "INVITE",
        Method::Message => "MESSAGE",
        Method::Notify => "NOTIFY",
        Method::Options => "OPTIONS",
        Method::PRack => "PRACK",
        Method::Publish => "PUBLISH",
        Method::Refer => "REFER",
        Method::Register => "REGISTER",
        Method::Subscribe => "SUBSCRIBE",
        Method::Update => "UPDATE",
    }
}

/// rsip's method for a request-line method, compared case-sensitively (§7.1: `invite` is an
/// extension method, not INVITE).
fn known_method(token: &str) -> Option<Method> {
    // A match, not a search of `Method::all()` (which builds a Vec on every call); a test pins
    // it to `method_name`.
    Some(match token {
        "ACK" => Method::Ack,
        "BYE" => Method::Bye,
        "CANCEL" => Method::Cancel,
        "INFO" => Method::Info,
        "INVITE" => Method::Invite,
        "MESSAGE" => Method::Message,
        "NOTIFY" => Method::Notify,
        "OPTIONS" => Method::Options,
        "PRACK" => Method::PRack,
        "PUBLISH" => Method::Publish,
        "REFER" => Method::Refer,
        "REGISTER" => Method::Register,
        "SUBSCRIBE" => Method::Subscribe,
        "UPDATE" => Method::Update,
        _ => return None,
    })
}

/// rsip's status code: named where rsip names it (dropping the phrase, as rsip's parser does),
/// `Other(code, reason)` otherwise.
fn status_code(code: u16, reason: &str) -> StatusCode {
    match StatusCode::from(code) {
        StatusCode::Other(code, _) => {
            let reason = sanitize_reason(reason);
            StatusCode::Other(
                code,
                if reason.is_empty() {
                    "Unknown".into()
                } else {
                    reason
                },
            )
        }
        named => named,
    }
}

fn sanitize_reason(reason: &str) -> String {
    reason
        .chars()
        .map(|c| if c.is_control() && c != '\t' { ' ' } else { c })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Serialising
// ---------------------------------------------------------------------------------------------

/// The message as bytes for the wire: start line, headers, CRLF, body (byte-exact).
///
/// Headers are written as held (Content-Length is not recomputed); a CR or LF inside a header
/// value set by code is replaced by a space so it cannot split the message.
pub fn serialize(msg: &SipMessage) -> Vec<u8> {
    match msg {
        SipMessage::Request(r) => serialize_request(r),
        SipMessage::Response(r) => serialize_response(r),
    }
}

/// [`serialize`] for a request.
pub fn serialize_request(req: &Request) -> Vec<u8> {
    let start = format!(
        "{} {} {}",
        method_name(&req.method),
        uri_text(&req.uri),
        req.version
    );
    assemble(&start, &req.headers, &req.body)
}

/// [`serialize`] for a response.
pub fn serialize_response(resp: &Response) -> Vec<u8> {
    let code = resp.status_code.code();
    let mut out = Vec::with_capacity(512);
    // What rsip::Version's Display writes.
    out.extend_from_slice(match resp.version {
        rsip::Version::V1 => b"SIP/1.0 ",
        rsip::Version::V2 => b"SIP/2.0 ",
    });
    push_decimal(&mut out, code);
    out.push(b' ');
    match &resp.status_code {
        StatusCode::Other(_, reason) => out.extend_from_slice(sanitize_reason(reason).as_bytes()),
        _ => out.extend_from_slice(reason_phrase(code).unwrap_or("").as_bytes()),
    }
    assemble_into(out, &resp.headers, &resp.body)
}

/// Appends `n` in decimal.
fn push_decimal(out: &mut Vec<u8>, n: u16) {
    let mut digits = [0u8; 5];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

fn assemble(start: &str, headers: &Headers, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(start.as_bytes());
    assemble_into(out, headers, body)
}

/// Appends the header fields (each written straight into `out`), the empty line and the body.
fn assemble_into(mut out: Vec<u8>, headers: &Headers, body: &[u8]) -> Vec<u8> {
    out.extend_from_slice(b"\r\n");
    for h in headers.iter() {
        write_header_line(&mut out, h);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// The name and value of header field `h` exactly as rsip's `Display` writes them
/// (`name: value`), without the formatting machinery: the serialiser writes every field of
/// every message, the transaction layer hashes and compares them.
pub fn header_parts(h: &Header) -> (&str, &str) {
    match h {
        Header::Other(name, value) => (name.as_str(), value.as_str()),
        Header::Accept(h) => ("Accept", h.value()),
        Header::AcceptEncoding(h) => ("Accept-Encoding", h.value()),
        Header::AcceptLanguage(h) => ("Accept-Language", h.value()),
        Header::AlertInfo(h) => ("Alert-Info", h.value()),
        Header::Allow(h) => ("Allow", h.value()),
        Header::AuthenticationInfo(h) => ("Authentication-Info", h.value()),
        Header::Authorization(h) => ("Authorization", h.value()),
        Header::CSeq(h) => ("CSeq", h.value()),
        Header::CallId(h) => ("Call-ID", h.value()),
        Header::CallInfo(h) => ("Call-Info", h.value()),
        Header::Contact(h) => ("Contact", h.value()),
        Header::ContentDisposition(h) => ("Content-Disposition", h.value()),
        Header::ContentEncoding(h) => ("Content-Encoding", h.value()),
        Header::ContentLanguage(h) => ("Content-Language", h.value()),
        Header::ContentLength(h) => ("Content-Length", h.value()),
        Header::ContentType(h) => ("Content-Type", h.value()),
        Header::Date(h) => ("Date", h.value()),
        Header::ErrorInfo(h) => ("Error-Info", h.value()),
        Header::Event(h) => ("Event", h.value()),
        Header::Expires(h) => ("Expires", h.value()),
        Header::From(h) => ("From", h.value()),
        Header::InReplyTo(h) => ("In-Reply-To", h.value()),
        Header::MaxForwards(h) => ("Max-Forwards", h.value()),
        Header::MimeVersion(h) => ("Mime-Version", h.value()),
        Header::MinExpires(h) => ("Min-Expires", h.value()),
        Header::Organization(h) => ("Organization", h.value()),
        Header::Priority(h) => ("Priority", h.value()),
        Header::ProxyAuthenticate(h) => ("Proxy-Authenticate", h.value()),
        Header::ProxyAuthorization(h) => ("Proxy-Authorization", h.value()),
        Header::ProxyRequire(h) => ("Proxy-Require", h.value()),
        Header::RecordRoute(h) => ("Record-Route", h.value()),
        Header::ReplyTo(h) => ("Reply-To", h.value()),
        Header::Require(h) => ("Require", h.value()),
        Header::RetryAfter(h) => ("Retry-After", h.value()),
        Header::Route(h) => ("Route", h.value()),
        Header::Server(h) => ("Server", h.value()),
        Header::Subject(h) => ("Subject", h.value()),
        Header::SubscriptionState(h) => ("Subscription-State", h.value()),
        Header::Supported(h) => ("Supported", h.value()),
        Header::Timestamp(h) => ("Timestamp", h.value()),
        Header::To(h) => ("To", h.value()),
        Header::Unsupported(h) => ("Unsupported", h.value()),
        Header::UserAgent(h) => ("User-Agent", h.value()),
        Header::Via(h) => ("Via", h.value()),
        Header::Warning(h) => ("Warning", h.value()),
        Header::WwwAuthenticate(h) => ("WWW-Authenticate", h.value()),
    }
}

/// Appends header field `h` as [`serialize_request`] and [`serialize_response`] write it,
/// without its CRLF.
pub fn write_header_line(out: &mut Vec<u8>, h: &Header) {
    let start = out.len();
    let (name, value) = header_parts(h);
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    // A CR or LF set by code must not split the message.
    if let Some(line) = out.get_mut(start..) {
        if memchr::memchr2(b'\r', b'\n', line).is_some() {
            for b in line {
                if *b == b'\r' || *b == b'\n' {
                    *b = b' ';
                }
            }
        }
    }
}

/// A Request-URI as text. rsip's `Display` writes `scheme://` for every non-SIP scheme and
/// IPv6 hosts without brackets; this writes what [`parse`] read.
fn uri_text(uri: &rsip::Uri) -> String {
    let mut s = String::new();
    match &uri.scheme {
        Some(rsip::Scheme::Sip) => s.push_str("sip:"),
        Some(rsip::Scheme::Sips) => s.push_str("sips:"),
        Some(rsip::Scheme::Other(scheme)) => {
            s.push_str(scheme);
            s.push(':');
        }
        None => {}
    }
    if let Some(auth) = &uri.auth {
        s.push_str(&auth.user);
        if let Some(pw) = &auth.password {
            s.push(':');
            s.push_str(pw);
        }
        s.push('@');
    }
    match &uri.host_with_port.host {
        rsip::Host::Domain(d) => s.push_str(&d.to_string()),
        rsip::Host::IpAddr(IpAddr::V4(ip)) => s.push_str(&ip.to_string()),
        rsip::Host::IpAddr(IpAddr::V6(ip)) => {
            let _ = write!(s, "[{ip}]");
        }
    }
    if let Some(port) = &uri.host_with_port.port {
        let _ = write!(s, ":{port}");
    }
    for p in &uri.params {
        s.push_str(&p.to_string());
    }
    s.replace(|c: char| c.is_whitespace() || c.is_control(), "")
}

/// The RFC 3261 / IANA reason phrase of a status code.
pub fn reason_phrase(code: u16) -> Option<&'static str> {
    Some(match code {
        100 => "Trying",
        180 => "Ringing",
        181 => "Call Is Being Forwarded",
        182 => "Queued",
        183 => "Session Progress",
        199 => "Early Dialog Terminated",
        200 => "OK",
        // rsip 0.4 names 201 `Accepted`; RFC 3265's Accepted is 202 (which rsip leaves `Other`).
        201 | 202 => "Accepted",
        204 => "No Notification",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Moved Temporarily",
        305 => "Use Proxy",
        380 => "Alternative Service",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Conditional Request Failed",
        413 => "Request Entity Too Large",
        414 => "Request-URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Unsupported URI Scheme",
        417 => "Unknown Resource-Priority",
        420 => "Bad Extension",
        421 => "Extension Required",
        422 => "Session Interval Too Small",
        423 => "Interval Too Brief",
        424 => "Bad Location Information",
        428 => "Use Identity Header",
        429 => "Provide Referrer Identity",
        433 => "Anonymity Disallowed",
        436 => "Bad Identity-Info",
        437 => "Unsupported Certificate",
        438 => "Invalid Identity Header",
        439 => "First Hop Lacks Outbound Support",
        440 => "Max-Breadth Exceeded",
        469 => "Bad Info Package",
        470 => "Consent Needed",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        484 => "Address Incomplete",
        485 => "Ambiguous",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        489 => "Bad Event",
        491 => "Request Pending",
        493 => "Undecipherable",
        494 => "Security Agreement Required",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Server Time-out",
        505 => "Version Not Supported",
        513 => "Message Too Large",
        580 => "Precondition Failure",
        600 => "Busy Everywhere",
        603 => "Decline",
        604 => "Does Not Exist Anywhere",
        606 => "Not Acceptable",
        607 => "Unwanted",
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------------
// UAS / UAC checks and responses
// ---------------------------------------------------------------------------------------------

type IsHeader = fn(&Header) -> bool;

/// The header fields a request or response may carry only once (§7.3.1, §20).
const SINGLE: &[(&str, IsHeader)] = &[
    ("To", |h| matches!(h, Header::To(_))),
    ("From", |h| matches!(h, Header::From(_))),
    ("Call-ID", |h| matches!(h, Header::CallId(_))),
    ("CSeq", |h| matches!(h, Header::CSeq(_))),
    ("Max-Forwards", |h| matches!(h, Header::MaxForwards(_))),
    ("Content-Length", |h| matches!(h, Header::ContentLength(_))),
    ("Content-Type", |h| matches!(h, Header::ContentType(_))),
];

/// The header fields every request and response must carry (§8.1.1; Max-Forwards is left out
/// so that RFC 2543 requests, RFC 4475 §3.4.1, are served).
const MANDATORY: &[(&str, IsHeader)] = &[
    ("Via", |h| matches!(h, Header::Via(_))),
    ("From", |h| matches!(h, Header::From(_))),
    ("To", |h| matches!(h, Header::To(_))),
    ("Call-ID", |h| matches!(h, Header::CallId(_))),
    ("CSeq", |h| matches!(h, Header::CSeq(_))),
];

/// The checks a UAS makes before acting on a request (RFC 3261 §8.2.1–8.2.3, RFC 4475 §3.3),
/// in the RFC's order: header sanity (400), Request-URI scheme (416), REGISTER's To (400),
/// `Require` (420), body encoding and type (415), `Accept` of an INVITE (406).
///
/// Not checked, by design: Max-Forwards 0 (an endpoint processes the request, RFC 4475
/// §3.3.11; a proxy would answer 483), `Authorization` with an unknown scheme (the registrar
/// ignores it or challenges, §3.3.7), methods (unknown ones never parse, see [`parse`]).
/// For ACK only the header checks apply, and a rejection means: drop it (ACK is never answered).
pub fn validate_request(req: &Request) -> Result<(), Rejection> {
    validate(req, true, SUPPORTED_EXTENSIONS)
}

/// [`validate_request`] for a UAS that also supports the option tags `extensions` in
/// `Require` (the gateway's B2BUA: `100rel`, `timer`).
pub fn validate_request_with(req: &Request, extensions: &[&str]) -> Result<(), Rejection> {
    validate(req, true, extensions)
}

/// [`validate_request`] for a request straight from [`parse`] (its top Via possibly stamped by
/// [`crate::via::stamp_received`], which writes only valid `received`/`rport`
/// values): the header grammar [`parse`] already enforced on every field is not checked a
/// second time; every other check is the same.
pub fn validate_parsed_request(req: &Request) -> Result<(), Rejection> {
    validate(req, false, SUPPORTED_EXTENSIONS)
}

/// [`validate_parsed_request`] for a UAS that also supports the option tags `extensions`
/// ([`validate_request_with`] without the header grammar [`parse`] already enforced).
pub fn validate_parsed_request_with(req: &Request, extensions: &[&str]) -> Result<(), Rejection> {
    validate(req, false, extensions)
}

fn validate(req: &Request, check_grammar: bool, extensions: &[&str]) -> Result<(), Rejection> {
    let headers = &req.headers;
    for (name, is) in SINGLE {
        if headers.iter().filter(|h| is(h)).count() > 1 {
            return Err(Rejection::new(
                400,
                format!("multiple {name} header fields"),
            ));
        }
    }
    for (name, is) in MANDATORY {
        if !headers.iter().any(is) {
            return Err(Rejection::new(400, format!("missing {name} header field")));
        }
    }
    for h in headers.iter().filter(|_| check_grammar) {
        if let Some((name, value)) = checked_value(h) {
            if let Err(e) = grammar::check_field(&name.to_ascii_lowercase(), value) {
                return Err(Rejection::new(400, format!("bad {name} header field: {e}")));
            }
        }
    }
    if req.method == Method::Ack {
        return Ok(());
    }

    let scheme = match &req.uri.scheme {
        Some(rsip::Scheme::Sip) => "sip".to_owned(),
        Some(rsip::Scheme::Sips) => "sips".to_owned(),
        Some(rsip::Scheme::Other(s)) => s.to_ascii_lowercase(),
        None => String::new(),
    };
    if !SUPPORTED_URI_SCHEMES.contains(&scheme.as_str()) {
        return Err(Rejection::new(
            416,
            format!("Request-URI scheme {scheme:?} is not supported"),
        ));
    }

    if req.method == Method::Register {
        // RFC 3261 §10.3 / RFC 4475 §3.3.4: the address-of-record is a SIP or SIPS URI.
        let to = first_value(headers, |h| match h {
            Header::To(v) => Some(v.value()),
            _ => None,
        });
        // The To field's grammar, URI included, is checked already (by `parse`, or above):
        // only its scheme is read here.
        let how = grammar::Addresses {
            uris: false,
            params: false,
            ..grammar::Addresses::ONE
        };
        let mut sip = None;
        let aor_ok = to.is_some_and(|v| {
            grammar::walk_name_addrs(v, how, |na| {
                sip.get_or_insert(na.sip);
            })
            .is_ok()
        }) && sip == Some(true);
        if !aor_ok {
            return Err(Rejection::new(
                400,
                "the To header field of a REGISTER must hold a SIP or SIPS URI",
            ));
        }
    }

    check_require(req, extensions)?;

    for h in headers.iter() {
        if let Header::ContentEncoding(v) = h {
            for coding in grammar::token_list(v.value(), false).unwrap_or_default() {
                if !coding.eq_ignore_ascii_case("identity") {
                    return Err(Rejection::new(
                        415,
                        format!("content coding {coding:?} is not supported"),
                    )
                    .with(Header::AcceptEncoding(
                        rsip::headers::AcceptEncoding::new("identity"),
                    )));
                }
            }
        }
    }
    if !req.body.is_empty() {
        let content_type = first_value(headers, |h| match h {
            Header::ContentType(v) => Some(v.value()),
            _ => None,
        });
        let Some(content_type) = content_type else {
            return Err(Rejection::new(
                400,
                "a body without a Content-Type header field",
            ));
        };
        let media = grammar::media_type(content_type)
            .map(|(t, s)| format!("{t}/{s}").to_ascii_lowercase())
            .unwrap_or_default();
        // A body marked handling=optional may be ignored instead (§20.11).
        let optional = headers.iter().any(|h| {
            matches!(h, Header::ContentDisposition(v) if grammar::disposition_optional(v.value()))
        });
        // DTMF by SIP INFO (the fallback for phones without RFC 4733), relayed by the B2BUA.
        let dtmf_info = req.method == Method::Info
            && matches!(
                media.as_str(),
                "application/dtmf-relay" | "application/dtmf"
            );
        if !optional && !dtmf_info && !SUPPORTED_CONTENT_TYPES.contains(&media.as_str()) {
            return Err(
                Rejection::new(415, format!("body type {media:?} is not supported")).with(
                    Header::Accept(rsip::headers::Accept::new(
                        SUPPORTED_CONTENT_TYPES.join(", "),
                    )),
                ),
            );
        }
    }

    if req.method == Method::Invite {
        // The answer to an INVITE carries SDP; an Accept without it rules that out (§3.3.15).
        let mut any_accept = false;
        let mut sdp_ok = false;
        for h in headers.iter() {
            if let Header::Accept(v) = h {
                any_accept = true;
                for (t, s) in grammar::accept(v.value()).unwrap_or_default() {
                    let t_ok = t == "*" || t.eq_ignore_ascii_case("application");
                    let s_ok = s == "*" || s.eq_ignore_ascii_case("sdp");
                    sdp_ok |= t_ok && s_ok;
                }
            }
        }
        if any_accept && !sdp_ok {
            return Err(Rejection::new(
                406,
                "Accept rules out application/sdp, the only answer an INVITE can get",
            )
            .with(Header::Accept(rsip::headers::Accept::new(
                SUPPORTED_CONTENT_TYPES.join(", "),
            ))));
        }
    }
    Ok(())
}

/// The `Require` check of [`validate_request`] alone (§8.2.2.3: 420 with `Unsupported` when a
/// required option tag is not among `extensions`; CANCEL and ACK are never refused for it).
/// For a request that passed [`validate_request_with`] under other `extensions`, this is the
/// one check whose outcome can differ.
pub fn check_require(req: &Request, extensions: &[&str]) -> Result<(), Rejection> {
    if matches!(req.method, Method::Cancel | Method::Ack) {
        return Ok(());
    }
    let mut unsupported: Vec<&str> = Vec::new();
    for h in req.headers.iter() {
        if let Header::Require(v) = h {
            for tag in grammar::token_list(v.value(), true).unwrap_or_default() {
                let known = extensions.iter().any(|s| s.eq_ignore_ascii_case(tag));
                if !known && !unsupported.contains(&tag) {
                    unsupported.push(tag);
                }
            }
        }
    }
    if unsupported.is_empty() {
        return Ok(());
    }
    let list = unsupported.join(", ");
    Err(
        Rejection::new(420, format!("unsupported extensions: {list}"))
            .with(Header::Unsupported(rsip::headers::Unsupported::new(list))),
    )
}

/// The checks a UAC makes on a received response (§8.1.3.3): exactly one Via value, the
/// mandatory header fields once each. A response failing them is discarded (RFC 4475 §3.3.10).
pub fn validate_response(resp: &Response) -> Result<(), Discard> {
    let headers = &resp.headers;
    let mut count = 0;
    for h in headers.iter() {
        if let Header::Via(v) = h {
            count += grammar::via(v.value())
                .map_err(|e| Discard(format!("bad Via header field: {e}")))?
                .len();
        }
    }
    if count != 1 {
        return Err(Discard(format!(
            "{count} Via values; a response reaching its UAC has exactly one"
        )));
    }
    for (name, is) in SINGLE {
        if headers.iter().filter(|h| is(h)).count() > 1 {
            return Err(Discard(format!("multiple {name} header fields")));
        }
    }
    for (name, is) in MANDATORY {
        if !headers.iter().any(is) {
            return Err(Discard(format!("missing {name} header field")));
        }
    }
    Ok(())
}

/// A response to `req` (§8.2.6): the Via values in order, From, To, Call-ID and CSeq copied,
/// `Content-Length: 0`, no body.
///
/// Unless `code` is 100 and when the request's To has no tag, a tag derived from the request is
/// added; the same request always gets the same tag, as a stateless UAS must (§8.2.7).
/// Dialog-creating responses need a random tag (§19.3): use [`response_with_tag`].
///
/// `reason` is used only for codes rsip has no name for (rsip keeps no phrase for the others,
/// and [`serialize`] writes the RFC phrase). A `code` outside 100–699 becomes 500.
pub fn response_for(req: &Request, code: u16, reason: &str) -> Response {
    build_reply(&req.headers, code, reason, "", &[], None)
}

/// One `name-addr` / `addr-spec` of a From, To, Contact, Route or Record-Route value: the URI
/// (without `<>`) and the header parameters after it (`tag`, `expires`, `lr`, …), as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// The URI text.
    pub uri: String,
    /// The header parameters, in order; names as sent.
    pub params: Vec<(String, Option<String>)>,
}

impl Address {
    /// The value of parameter `name` (case-insensitive); `Some(None)` for a flag.
    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_deref())
    }
}

/// Parses a header value holding one address (`multi == false`) or a comma-separated list of
/// them (Contact, Route, Record-Route) with the RFC 3261 grammar. `None` if it does not parse.
pub fn parse_addresses(value: &str, multi: bool) -> Option<Vec<Address>> {
    grammar::name_addrs(value, multi, false).ok().map(|list| {
        list.into_iter()
            .map(|na| Address {
                uri: na.uri.to_owned(),
                params: na
                    .params
                    .into_iter()
                    .map(|(n, v)| (n.to_owned(), v.map(str::to_owned)))
                    .collect(),
            })
            .collect()
    })
}

/// The URI of a header value holding one address, checked as [`parse_addresses`] checks it
/// (`parse_addresses(value, false)`'s one address's `uri`), without building the address.
pub fn address_uri(value: &str) -> Option<&str> {
    let mut uri = None;
    let how = grammar::Addresses {
        params: false,
        ..grammar::Addresses::ONE
    };
    grammar::walk_name_addrs(value, how, |na| uri = Some(na.uri)).ok()?;
    uri
}

/// A URI (`sip:`/`sips:` or another scheme, kept opaque) as rsip's [`rsip::Uri`], checked with
/// the Request-URI grammar: for building requests to a Contact or a configured peer.
pub fn parse_uri(s: &str) -> Option<rsip::Uri> {
    grammar::request_uri(s.trim()).ok()
}

/// [`response_for`] with the To tag to add when the request's To has none.
pub fn response_with_tag(req: &Request, code: u16, reason: &str, to_tag: &str) -> Response {
    build_reply(&req.headers, code, reason, "", &[], Some(to_tag))
}

fn build_reply(
    headers: &Headers,
    code: u16,
    reason: &str,
    detail: &str,
    extra: &[Header],
    to_tag: Option<&str>,
) -> Response {
    let code = if (100..=699).contains(&code) {
        code
    } else {
        500
    };
    let mut out: Vec<Header> = headers
        .iter()
        .filter(|h| matches!(h, Header::Via(_)))
        .cloned()
        .collect();
    let first = |is: IsHeader| headers.iter().find(|h| is(h)).cloned();
    if let Some(from) = first(|h| matches!(h, Header::From(_))) {
        out.push(from);
    }
    if let Some(Header::To(to)) = first(|h| matches!(h, Header::To(_))) {
        let value = to.value();
        let has_tag = grammar::name_addrs(value, false, false)
            .ok()
            .and_then(|l| l.into_iter().next())
            .map(|na| na.params.iter().any(|(n, _)| n.eq_ignore_ascii_case("tag")));
        let value = match (has_tag, code) {
            (Some(false), 101..) => {
                let tag = match to_tag {
                    Some(t) if !t.is_empty() && t.bytes().all(grammar::is_token) => t.to_owned(),
                    _ => derived_tag(headers),
                };
                let mut tagged = String::with_capacity(value.len() + 5 + tag.len());
                tagged.push_str(value);
                tagged.push_str(";tag=");
                tagged.push_str(&tag);
                tagged
            }
            _ => value.to_owned(),
        };
        out.push(Header::To(rsip::headers::To::new(value)));
    }
    for is in [
        (|h: &Header| matches!(h, Header::CallId(_))) as IsHeader,
        |h| matches!(h, Header::CSeq(_)),
    ] {
        if let Some(h) = first(is) {
            out.push(h);
        }
    }
    out.extend(extra.iter().cloned());
    if !detail.is_empty() {
        let text: String = detail
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect::<String>()
            .replace('\\', "\\\\")
            .replace('"', "\\\"");
        out.push(Header::Warning(rsip::headers::Warning::new(format!(
            "399 {WARN_AGENT} \"{text}\""
        ))));
    }
    out.push(Header::ContentLength(rsip::headers::ContentLength::new(
        "0",
    )));
    Response {
        version: rsip::Version::V2,
        status_code: status_code(code, reason),
        headers: out.into(),
        body: Vec::new(),
    }
}

/// FNV-1a over the fields that identify a request: stable for retransmissions.
fn derived_tag(headers: &Headers) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for h in headers.iter().filter(|h| {
        matches!(
            h,
            Header::CallId(_) | Header::From(_) | Header::CSeq(_) | Header::Via(_)
        )
    }) {
        // The field's text hashed as it is written (`name: value`), without building it.
        let (name, value) = header_parts(h);
        let mut fnv = Fnv(hash);
        name.bytes()
            .chain(*b": ")
            .chain(value.bytes())
            .for_each(|b| fnv.feed(b));
        fnv.feed(0);
        hash = fnv.0;
    }
    hash_tag(hash)
}

/// `cf` and the hash in 16 lowercase hex digits (`format!("cf{hash:016x}")`, without the
/// formatting machinery).
fn hash_tag(hash: u64) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut tag = String::with_capacity(18);
    tag.push_str("cf");
    for shift in (0..16).rev() {
        tag.push(char::from(HEX[((hash >> (shift * 4)) & 0xf) as usize]));
    }
    tag
}

/// FNV-1a.
struct Fnv(u64);

impl Fnv {
    fn feed(&mut self, b: u8) {
        self.0 ^= u64::from(b);
        self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
    }
}

fn first_value<'a>(
    headers: &'a Headers,
    pick: fn(&'a Header) -> Option<&'a str>,
) -> Option<&'a str> {
    headers.iter().find_map(pick)
}

/// Name and value of the headers [`grammar::check_field`] knows, for re-checking messages that
/// were built by code rather than parsed.
fn checked_value(h: &Header) -> Option<(&'static str, &str)> {
    Some(match h {
        Header::Via(v) => ("Via", v.value()),
        Header::To(v) => ("To", v.value()),
        Header::From(v) => ("From", v.value()),
        Header::CallId(v) => ("Call-ID", v.value()),
        Header::CSeq(v) => ("CSeq", v.value()),
        Header::MaxForwards(v) => ("Max-Forwards", v.value()),
        Header::ContentLength(v) => ("Content-Length", v.value()),
        Header::ContentType(v) => ("Content-Type", v.value()),
        Header::Contact(v) => ("Contact", v.value()),
        Header::Require(v) => ("Require", v.value()),
        Header::ProxyRequire(v) => ("Proxy-Require", v.value()),
        Header::Accept(v) => ("Accept", v.value()),
        Header::ContentEncoding(v) => ("Content-Encoding", v.value()),
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------------
// RFC 3261 §25 grammar, for the parts rsip does not check
// ---------------------------------------------------------------------------------------------

mod grammar {
    use std::net::{IpAddr, Ipv6Addr};

    pub(super) type GResult<T> = Result<T, String>;

    /// A byte class as a table: ASCII letters and digits plus `extra` (one lookup per byte
    /// instead of a scan of `extra`: the grammar tests every byte of every field).
    pub(super) struct Class([bool; 256]);

    impl Class {
        const fn new(extra: &[u8]) -> Self {
            let mut t = [false; 256];
            let mut c = 0;
            while c < 256 {
                t[c] = (c as u8).is_ascii_alphanumeric();
                c += 1;
            }
            let mut i = 0;
            while i < extra.len() {
                t[extra[i] as usize] = true;
                i += 1;
            }
            Self(t)
        }

        pub(super) fn has(&self, c: u8) -> bool {
            self.0[usize::from(c)]
        }
    }

    const UNRESERVED: &[u8] = b"-_.!~*'()";

    /// Concatenates two byte strings at compile time (`N` = their total length).
    const fn cat<const N: usize>(a: &[u8], b: &[u8]) -> [u8; N] {
        assert!(N == a.len() + b.len());
        let mut out = [0u8; N];
        let mut i = 0;
        while i < a.len() {
            out[i] = a[i];
            i += 1;
        }
        while i < N {
            out[i] = b[i - a.len()];
            i += 1;
        }
        out
    }

    static TOKEN: Class = Class::new(b"-.!%*_+`'~");
    static URIC: Class = Class::new(&cat::<22>(UNRESERVED, b";/?:@&=+$,%[]"));
    static USER: Class = Class::new(&cat::<18>(UNRESERVED, b"%&=+$,;?/"));
    static PASSWORD: Class = Class::new(&cat::<15>(UNRESERVED, b"%&=+$,"));
    static PARAMCHAR: Class = Class::new(&cat::<17>(UNRESERVED, b"[]/:&+$%"));
    static HNVCHAR: Class = Class::new(&cat::<17>(UNRESERVED, b"[]/?:+$%"));
    static WORD: Class = Class::new(b"-.!%*_+`'~()<>:\\\"/[]?{}");

    pub(super) fn is_token(c: u8) -> bool {
        TOKEN.has(c)
    }

    /// `port` reads what `str::parse::<u16>` reads.
    #[cfg(test)]
    #[test]
    fn ports_parse_as_u16_does() {
        for text in [
            "",
            "0",
            "5060",
            "00080",
            "65535",
            "65536",
            "99999",
            "000000000080",
            "7x",
        ] {
            let mut c = Cur::new(text);
            let digits: String = text.chars().take_while(char::is_ascii_digit).collect();
            assert_eq!(port(&mut c).ok(), digits.parse::<u16>().ok(), "{text:?}");
        }
    }

    /// The byte classes are the sets they replaced.
    #[cfg(test)]
    #[test]
    fn classes_are_the_grammar_sets() {
        fn alnum_or(set: &'static [u8]) -> impl Fn(u8) -> bool {
            move |c: u8| c.is_ascii_alphanumeric() || set.contains(&c)
        }
        fn unreserved(c: u8) -> bool {
            alnum_or(b"-_.!~*'()")(c)
        }
        type Set = Box<dyn Fn(u8) -> bool>;
        let cases: [(&Class, Set); 7] = [
            (&TOKEN, Box::new(alnum_or(b"-.!%*_+`'~"))),
            (
                &URIC,
                Box::new(move |c| unreserved(c) || b";/?:@&=+$,%[]".contains(&c)),
            ),
            (
                &USER,
                Box::new(move |c| unreserved(c) || b"%&=+$,;?/".contains(&c)),
            ),
            (
                &PASSWORD,
                Box::new(move |c| unreserved(c) || b"%&=+$,".contains(&c)),
            ),
            (
                &PARAMCHAR,
                Box::new(move |c| unreserved(c) || b"[]/:&+$%".contains(&c)),
            ),
            (
                &HNVCHAR,
                Box::new(move |c| unreserved(c) || b"[]/?:+$%".contains(&c)),
            ),
            (&WORD, Box::new(alnum_or(b"-.!%*_+`'~()<>:\\\"/[]?{}"))),
        ];
        for (n, (class, set)) in cases.iter().enumerate() {
            for c in 0..=255u8 {
                assert_eq!(class.has(c), set(c), "class {n}, byte {c:#04x}");
            }
        }
    }

    fn is_wsp(c: u8) -> bool {
        c == b' ' || c == b'\t'
    }

    /// The first `b` in `s`, by a plain scan: URIs and words are a few dozen bytes, where a
    /// call of `memchr` costs more than the scan.
    pub(super) fn find_byte(s: &str, b: u8) -> Option<usize> {
        s.as_bytes().iter().position(|&c| c == b)
    }

    /// `%` must start `%HH`.
    fn escapes_ok(s: &str) -> bool {
        let b = s.as_bytes();
        b.iter().enumerate().all(|(i, &c)| {
            c != b'%'
                || (b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                    && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
        })
    }

    /// A cursor over a header value (no CR/LF: values are unfolded).
    pub(super) struct Cur<'a> {
        s: &'a str,
        i: usize,
    }

    impl<'a> Cur<'a> {
        pub(super) fn new(s: &'a str) -> Self {
            Self { s, i: 0 }
        }

        fn peek(&self) -> Option<u8> {
            self.s.as_bytes().get(self.i).copied()
        }

        fn peek_at(&self, k: usize) -> Option<u8> {
            self.s.as_bytes().get(self.i + k).copied()
        }

        fn eof(&self) -> bool {
            self.i >= self.s.len()
        }

        fn rest(&self) -> &'a str {
            self.s.get(self.i..).unwrap_or("")
        }

        fn eat(&mut self, c: u8) -> bool {
            if self.peek() == Some(c) {
                self.i += 1;
                true
            } else {
                false
            }
        }

        fn ws(&mut self) -> usize {
            let start = self.i;
            while self.peek().is_some_and(is_wsp) {
                self.i += 1;
            }
            self.i - start
        }

        /// `SWS c SWS`; restores the position when `c` is not there.
        fn sep(&mut self, c: u8) -> bool {
            let save = self.i;
            self.ws();
            if self.eat(c) {
                self.ws();
                true
            } else {
                self.i = save;
                false
            }
        }

        /// Only ASCII predicates, so the slice ends on a char boundary.
        fn take_while(&mut self, f: impl Fn(u8) -> bool) -> &'a str {
            let start = self.i;
            // A scan of the rest (the position is stored once, not per byte).
            let rest = self.s.as_bytes().get(start..).unwrap_or_default();
            let n = rest
                .iter()
                .position(|&c| !(c.is_ascii() && f(c)))
                .unwrap_or(rest.len());
            self.i = start + n;
            self.s.get(start..self.i).unwrap_or("")
        }

        fn token(&mut self) -> Option<&'a str> {
            Some(self.take_while(is_token)).filter(|t| !t.is_empty())
        }

        fn expect_token(&mut self, what: &str) -> GResult<&'a str> {
            self.token()
                .ok_or_else(|| format!("expected {what} at {:?}", self.rest()))
        }

        /// A quoted-string, returned with its quotes.
        fn quoted_string(&mut self) -> GResult<&'a str> {
            let start = self.i;
            if !self.eat(b'"') {
                return Err("expected a quoted string".into());
            }
            loop {
                match self.peek() {
                    None => return Err("unterminated quoted string".into()),
                    Some(b'"') => {
                        self.i += 1;
                        return Ok(self.s.get(start..self.i).unwrap_or(""));
                    }
                    Some(b'\\') => match self.peek_at(1) {
                        Some(c) if c <= 0x7f && c != b'\r' && c != b'\n' => self.i += 2,
                        _ => return Err("bad quoted-pair".into()),
                    },
                    Some(c) if is_wsp(c) || (c >= 0x21 && c != 0x7f) => self.i += 1,
                    Some(c) => return Err(format!("control character {c:#04x} in quoted string")),
                }
            }
        }

        fn done(&self, what: &str) -> GResult<()> {
            if self.eof() {
                Ok(())
            } else {
                Err(format!("unexpected {:?} after {what}", self.rest()))
            }
        }
    }

    // --- hosts and URIs ----------------------------------------------------------------------

    fn host<'a>(c: &mut Cur<'a>) -> GResult<&'a str> {
        if c.peek() == Some(b'[') {
            let start = c.i;
            c.i += 1;
            c.take_while(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
            if !c.eat(b']') {
                return Err("unterminated IPv6 reference".into());
            }
            let text = c.s.get(start..c.i).unwrap_or("");
            let inner = text.get(1..text.len().saturating_sub(1)).unwrap_or("");
            inner
                .parse::<Ipv6Addr>()
                .map_err(|_| format!("{text:?} is not an IPv6 reference"))?;
            return Ok(text);
        }
        let h = c.take_while(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if valid_hostname(h) {
            Ok(h)
        } else {
            Err(format!("{h:?} is not a host"))
        }
    }

    /// An IPv4address (four groups of 1–3 digits) or a hostname (labels starting and ending
    /// alphanumeric, the top label starting with a letter, one trailing dot allowed). One pass
    /// over the bytes: this runs for every URI and Via.
    pub(super) fn valid_hostname(h: &str) -> bool {
        if h.is_empty() {
            return false;
        }
        // Digits and dots only: an IPv4address (groups checked in the same pass).
        let (mut groups, mut len, mut groups_ok, mut ipv4) = (1u32, 0u32, true, true);
        for b in h.bytes() {
            if b == b'.' {
                groups_ok &= (1..=3).contains(&len);
                groups += 1;
                len = 0;
            } else if b.is_ascii_digit() {
                len += 1;
            } else {
                ipv4 = false;
                break;
            }
        }
        if ipv4 {
            return groups_ok && groups == 4 && (1..=3).contains(&len);
        }
        let h = h.strip_suffix('.').unwrap_or(h).as_bytes();
        // Every label: non-empty, alphanumeric at both ends.
        let mut prev = b'.';
        for &b in h {
            if b == b'.' && !prev.is_ascii_alphanumeric() {
                return false;
            }
            if prev == b'.' && !b.is_ascii_alphanumeric() {
                return false;
            }
            prev = b;
        }
        let top = h.iter().rposition(|&b| b == b'.').map_or(0, |i| i + 1);
        prev.is_ascii_alphanumeric() && h.get(top).is_some_and(u8::is_ascii_alphabetic)
    }

    fn port(c: &mut Cur<'_>) -> GResult<u16> {
        let digits = c.take_while(|b| b.is_ascii_digit());
        // What `digits.parse::<u16>()` reads (ASCII digits only here), without its generality.
        let value = (!digits.is_empty())
            .then(|| {
                digits.bytes().try_fold(0u16, |n, d| {
                    n.checked_mul(10)?.checked_add(u16::from(d - b'0'))
                })
            })
            .flatten();
        value.ok_or_else(|| format!("{digits:?} is not a port"))
    }

    #[derive(Debug)]
    pub(super) struct SipUri<'a> {
        pub(super) secure: bool,
        pub(super) user: Option<&'a str>,
        pub(super) password: Option<&'a str>,
        pub(super) host: &'a str,
        pub(super) port: Option<u16>,
        pub(super) params: Vec<(&'a str, Option<&'a str>)>,
        pub(super) has_headers: bool,
    }

    #[derive(Debug)]
    pub(super) enum Uri<'a> {
        Sip(SipUri<'a>),
        Absolute { scheme: &'a str, rest: &'a str },
    }

    fn valid_scheme(s: &str) -> bool {
        let b = s.as_bytes();
        b.first().is_some_and(u8::is_ascii_alphabetic)
            && b.iter()
                .all(|&c| c.is_ascii_alphanumeric() || b"+-.".contains(&c))
    }

    pub(super) fn uri(s: &str, allow_headers: bool) -> GResult<Uri<'_>> {
        let colon = find_byte(s, b':').ok_or_else(|| format!("{s:?} has no scheme"))?;
        let (scheme, rest) = (&s[..colon], &s[colon + 1..]);
        if !valid_scheme(scheme) {
            return Err(format!("{scheme:?} is not a URI scheme"));
        }
        let secure = scheme.eq_ignore_ascii_case("sips");
        if secure || scheme.eq_ignore_ascii_case("sip") {
            return sip_uri(secure, rest, allow_headers).map(Uri::Sip);
        }
        let uric = |c: u8| URIC.has(c);
        if rest.is_empty() || !rest.bytes().all(uric) || !escapes_ok(rest) {
            return Err(format!("{s:?} is not an absolute URI"));
        }
        Ok(Uri::Absolute { scheme, rest })
    }

    fn sip_uri(secure: bool, rest: &str, allow_headers: bool) -> GResult<SipUri<'_>> {
        let (userinfo, hostpart) = match find_byte(rest, b'@') {
            Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
            None => (None, rest),
        };
        let (mut user, mut password) = (None, None);
        if let Some(ui) = userinfo {
            let (u, p) = match find_byte(ui, b':') {
                Some(colon) => (&ui[..colon], Some(&ui[colon + 1..])),
                None => (ui, None),
            };
            let user_ok = |c: u8| USER.has(c);
            if u.is_empty() || !u.bytes().all(user_ok) || !escapes_ok(u) {
                return Err(format!("{u:?} is not a SIP URI user"));
            }
            let pw_ok = |c: u8| PASSWORD.has(c);
            if let Some(p) = p {
                if !p.bytes().all(pw_ok) || !escapes_ok(p) {
                    return Err("bad SIP URI password".into());
                }
            }
            user = Some(u);
            password = p;
        }
        let mut c = Cur::new(hostpart);
        let host = host(&mut c)?;
        let port = if c.eat(b':') {
            Some(port(&mut c)?)
        } else {
            None
        };
        let paramchar = |b: u8| PARAMCHAR.has(b);
        let mut params = Vec::new();
        while c.eat(b';') {
            let name = c.take_while(paramchar);
            if name.is_empty() || !escapes_ok(name) {
                return Err(format!("bad URI parameter at {:?}", c.rest()));
            }
            let value = if c.eat(b'=') {
                let v = c.take_while(paramchar);
                if v.is_empty() || !escapes_ok(v) {
                    return Err(format!("bad value of URI parameter {name:?}"));
                }
                Some(v)
            } else {
                None
            };
            params.push((name, value));
        }
        let mut has_headers = false;
        if c.eat(b'?') {
            if !allow_headers {
                return Err("URI headers (?…) are not allowed here".into());
            }
            let hchar = |b: u8| HNVCHAR.has(b);
            loop {
                let name = c.take_while(hchar);
                if name.is_empty() || !escapes_ok(name) || !c.eat(b'=') {
                    return Err("bad URI header".into());
                }
                let value = c.take_while(hchar);
                if !escapes_ok(value) {
                    return Err("bad URI header value".into());
                }
                if !c.eat(b'&') {
                    break;
                }
            }
            has_headers = true;
        }
        c.done("the SIP URI")?;
        Ok(SipUri {
            secure,
            user,
            password,
            host,
            port,
            params,
            has_headers,
        })
    }

    /// The Request-URI as rsip's `Uri` (§19.1.1: no URI headers in a Request-URI).
    pub(super) fn request_uri(s: &str) -> GResult<rsip::Uri> {
        match uri(s, true)? {
            Uri::Sip(u) if u.has_headers => {
                Err("a Request-URI must not carry URI headers (?…)".into())
            }
            Uri::Sip(u) => {
                let host = if u.host.starts_with('[') {
                    rsip::Host::Domain(u.host.into())
                } else {
                    match u.host.parse::<IpAddr>() {
                        Ok(ip @ IpAddr::V4(_)) => rsip::Host::IpAddr(ip),
                        _ => rsip::Host::Domain(u.host.into()),
                    }
                };
                Ok(rsip::Uri {
                    scheme: Some(if u.secure {
                        rsip::Scheme::Sips
                    } else {
                        rsip::Scheme::Sip
                    }),
                    auth: u.user.map(|user| rsip::Auth {
                        user: user.into(),
                        password: u.password.map(Into::into),
                    }),
                    host_with_port: rsip::HostWithPort {
                        host,
                        port: u.port.map(Into::into),
                    },
                    params: u
                        .params
                        .iter()
                        .map(|&(n, v)| {
                            rsip::Param::try_from((n, v))
                                .unwrap_or_else(|_| rsip::Param::Other(n.into(), v.map(Into::into)))
                        })
                        .collect(),
                    headers: Vec::new(),
                })
            }
            Uri::Absolute { scheme, rest } => Ok(rsip::Uri {
                scheme: Some(rsip::Scheme::Other(scheme.into())),
                auth: None,
                host_with_port: rsip::HostWithPort {
                    host: rsip::Host::Domain(rest.into()),
                    port: None,
                },
                params: Vec::new(),
                headers: Vec::new(),
            }),
        }
    }

    // --- header values -----------------------------------------------------------------------

    /// The syntax check of one header field by (lower-case) name; unknown names pass.
    /// Every value is also checked for control characters outside quoted-pairs.
    pub(super) fn check_field(lname: &str, value: &str) -> GResult<()> {
        check_field_read(lname, value).map(drop)
    }

    /// What [`check_field_read`] read from a field that passed, for the checks after the
    /// grammar (CSeq method, framing).
    pub(super) enum Read<'v> {
        /// A CSeq's method.
        CSeqMethod(&'v str),
        /// A Content-Length's number.
        ContentLength(u32),
        /// Any other field.
        Nothing,
    }

    /// [`check_field`], keeping the CSeq method or the Content-Length it read.
    pub(super) fn check_field_read<'v>(lname: &str, value: &'v str) -> GResult<Read<'v>> {
        no_controls(value)?;
        match lname {
            "cseq" => return cseq(value).map(|(_, m)| Read::CSeqMethod(m)),
            "content-length" => return number(value, u32::MAX).map(Read::ContentLength),
            _ => {}
        }
        check_other_field(lname, value).map(|()| Read::Nothing)
    }

    /// [`check_field`] for the fields other than CSeq and Content-Length, controls checked.
    fn check_other_field(lname: &str, value: &str) -> GResult<()> {
        match lname {
            "via" => {
                for parm in via(value)? {
                    if !parm.protocol.eq_ignore_ascii_case("SIP") || parm.version != "2.0" {
                        return Err(format!(
                            "sent-protocol {}/{} is not SIP/2.0",
                            parm.protocol, parm.version
                        ));
                    }
                }
                Ok(())
            }
            "to" | "from" | "reply-to" => walk_name_addrs(value, CHECK_ONE, drop),
            "contact" => walk_name_addrs(
                value,
                Addresses {
                    multi: true,
                    star: true,
                    ..CHECK_ONE
                },
                drop,
            ),
            "route" | "record-route" => {
                let mut bracketed = true;
                let how = Addresses {
                    multi: true,
                    ..CHECK_ONE
                };
                walk_name_addrs(value, how, |na| bracketed &= na.bracketed)?;
                if bracketed {
                    Ok(())
                } else {
                    Err("route entries are name-addr (<…>)".into())
                }
            }
            "call-id" => call_id(value),
            "max-forwards" => number(value, 255).map(drop),
            "date" => date(value),
            "require" | "proxy-require" | "content-encoding" => token_list(value, false).map(drop),
            "supported" | "unsupported" => token_list(value, true).map(drop),
            "content-type" => media_type(value).map(drop),
            "accept" => accept(value).map(drop),
            _ => Ok(()),
        }
    }

    /// Control characters may appear only escaped in a quoted-pair (intmeth's To).
    fn no_controls(value: &str) -> GResult<()> {
        let b = value.as_bytes();
        // Nearly every value has no control character at all: one plain pass says so (no
        // early exit, so that it runs a vector at a time).
        let control = b.iter().fold(false, |any, &c| {
            any | ((c < 0x20) & (c != b'\t')) | (c == 0x7f)
        });
        if !control {
            return Ok(());
        }
        let (mut in_quotes, mut i) = (false, 0);
        while let Some(&c) = b.get(i) {
            match c {
                b'"' => in_quotes = !in_quotes,
                b'\\' if in_quotes => i += 1,
                b'\t' => {}
                c if c < 0x20 || c == 0x7f => {
                    return Err(format!("control character {c:#04x}"));
                }
                _ => {}
            }
            i += 1;
        }
        Ok(())
    }

    /// `1*DIGIT` no larger than `max` (leading zeros allowed, RFC 4475 §3.1.1.1).
    pub(super) fn number(value: &str, max: u32) -> GResult<u32> {
        if value.is_empty() || !value.bytes().all(|c| c.is_ascii_digit()) {
            return Err(format!("{value:?} is not a number"));
        }
        match value.parse::<u64>() {
            Ok(n) if n <= u64::from(max) => Ok(n as u32),
            _ => Err(format!("{value} is larger than {max}")),
        }
    }

    /// `CSeq: 1*DIGIT LWS Method`, the number at most 2³²−1 (RFC 4475 §3.1.2.4).
    pub(super) fn cseq(value: &str) -> GResult<(u32, &str)> {
        let mut c = Cur::new(value);
        let digits = c.take_while(|b| b.is_ascii_digit());
        let n = number(digits, u32::MAX)?;
        if c.ws() == 0 {
            return Err("no space between sequence number and method".into());
        }
        let method = c.expect_token("a method")?;
        c.done("the method")?;
        Ok((n, method))
    }

    /// `Call-ID: word ["@" word]`.
    fn call_id(value: &str) -> GResult<()> {
        let word = |s: &str| !s.is_empty() && s.bytes().all(|c| WORD.has(c));
        let ok = match find_byte(value, b'@') {
            Some(at) => word(&value[..at]) && word(&value[at + 1..]),
            None => word(value),
        };
        if ok {
            Ok(())
        } else {
            Err(format!("{value:?} is not word[@word]"))
        }
    }

    /// `Date: rfc1123-date`, which is always GMT (RFC 4475 §3.1.2.12).
    fn date(value: &str) -> GResult<()> {
        const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
        const MONTHS: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|c| c.is_ascii_digit());
        let parts: Vec<&str> = value.split(' ').collect();
        let ok = match parts[..] {
            [wkday, day, month, year, time, zone] => {
                wkday.strip_suffix(',').is_some_and(|d| DAYS.contains(&d))
                    && digits(day, 2)
                    && MONTHS.contains(&month)
                    && digits(year, 4)
                    && zone == "GMT"
                    && time.split(':').count() == 3
                    && time.split(':').all(|t| digits(t, 2))
            }
            _ => false,
        };
        if ok {
            Ok(())
        } else {
            Err(format!("{value:?} is not an RFC 1123 date in GMT"))
        }
    }

    /// `token *(COMMA token)`; `empty_ok` for fields whose list may be empty.
    pub(super) fn token_list(value: &str, empty_ok: bool) -> GResult<Vec<&str>> {
        let mut c = Cur::new(value);
        let mut out = Vec::new();
        c.ws();
        if c.eof() {
            return if empty_ok {
                Ok(out)
            } else {
                Err("empty list".into())
            };
        }
        loop {
            out.push(c.expect_token("an option tag")?);
            if !c.sep(b',') {
                break;
            }
        }
        c.ws();
        c.done("the list")?;
        Ok(out)
    }

    /// `SEMI token [EQUAL (token / host / quoted-string)]`, repeated; the parameters are
    /// returned if `keep` (else only checked, without allocating).
    fn generic_params<'a>(c: &mut Cur<'a>, keep: bool) -> GResult<Vec<(&'a str, Option<&'a str>)>> {
        let mut out = Vec::new();
        while c.sep(b';') {
            let name = c.expect_token("a parameter name")?;
            let value = if c.sep(b'=') {
                Some(match c.peek() {
                    Some(b'"') => c.quoted_string()?,
                    Some(b'[') => host(c)?,
                    _ => c.expect_token("a parameter value")?,
                })
            } else {
                None
            };
            if keep {
                out.push((name, value));
            }
        }
        Ok(out)
    }

    /// `type "/" subtype *(SEMI m-parameter)`.
    pub(super) fn media_type(value: &str) -> GResult<(&str, &str)> {
        let mut c = Cur::new(value);
        let r = media_range(&mut c)?;
        c.ws();
        c.done("the media type")?;
        Ok(r)
    }

    fn media_range<'a>(c: &mut Cur<'a>) -> GResult<(&'a str, &'a str)> {
        c.ws();
        let t = c.expect_token("a media type")?;
        if !c.sep(b'/') {
            return Err(format!("media type {t:?} without a subtype"));
        }
        let s = c.expect_token("a media subtype")?;
        generic_params(c, false)?;
        Ok((t, s))
    }

    /// `Content-Disposition: disp-type *(SEMI disp-param)` with `handling=optional`.
    pub(super) fn disposition_optional(value: &str) -> bool {
        let mut c = Cur::new(value);
        c.ws();
        c.token().is_some()
            && generic_params(&mut c, true).is_ok_and(|params| {
                params.iter().any(|(n, v)| {
                    n.eq_ignore_ascii_case("handling")
                        && v.is_some_and(|v| v.eq_ignore_ascii_case("optional"))
                })
            })
    }

    /// `Accept: [media-range *(COMMA media-range)]` as (type, subtype) pairs.
    pub(super) fn accept(value: &str) -> GResult<Vec<(&str, &str)>> {
        let mut c = Cur::new(value);
        let mut out = Vec::new();
        c.ws();
        if c.eof() {
            return Ok(out);
        }
        loop {
            out.push(media_range(&mut c)?);
            if !c.sep(b',') {
                break;
            }
        }
        c.ws();
        c.done("the media ranges")?;
        Ok(out)
    }

    #[derive(Debug)]
    pub(super) struct ViaParm<'a> {
        pub(super) protocol: &'a str,
        pub(super) version: &'a str,
    }

    /// `Via: via-parm *(COMMA via-parm)`,
    /// `via-parm = sent-protocol LWS sent-by *(SEMI via-params)`.
    pub(super) fn via(value: &str) -> GResult<Vec<ViaParm<'_>>> {
        let mut c = Cur::new(value);
        let mut out = Vec::new();
        c.ws();
        loop {
            let protocol = c.expect_token("a protocol name")?;
            if !c.sep(b'/') {
                return Err("expected / after the protocol name".into());
            }
            let version = c.expect_token("a protocol version")?;
            if !c.sep(b'/') {
                return Err("expected / after the protocol version".into());
            }
            c.expect_token("a transport")?;
            if c.ws() == 0 {
                return Err("no space before sent-by".into());
            }
            host(&mut c)?;
            if c.sep(b':') {
                port(&mut c)?;
            }
            generic_params(&mut c, false)?;
            out.push(ViaParm { protocol, version });
            if !c.sep(b',') {
                break;
            }
        }
        c.ws();
        c.done("the Via value")?;
        Ok(out)
    }

    #[derive(Debug)]
    pub(super) struct NameAddr<'a> {
        pub(super) uri: &'a str,
        pub(super) bracketed: bool,
        /// A `sip:` or `sips:` URI.
        pub(super) sip: bool,
        /// Empty unless asked for ([`Addresses::params`]).
        pub(super) params: Vec<(&'a str, Option<&'a str>)>,
    }

    /// How [`walk_name_addrs`] reads an address list.
    #[derive(Debug, Clone, Copy)]
    pub(super) struct Addresses {
        /// Comma-separated.
        pub(super) multi: bool,
        /// `*` allowed.
        pub(super) star: bool,
        /// Each URI checked with the URI grammar; without, only the list's structure is
        /// (for a value already checked whole: `sip` then comes from the scheme, which is what
        /// the URI grammar decides it by).
        pub(super) uris: bool,
        /// [`NameAddr::params`] filled.
        pub(super) params: bool,
    }

    /// A single address, fully checked, nothing kept (a syntax check).
    const CHECK_ONE: Addresses = Addresses {
        multi: false,
        star: false,
        uris: true,
        params: false,
    };

    impl Addresses {
        /// A single address, fully checked, its parameters kept.
        pub(super) const ONE: Self = Self {
            multi: false,
            star: false,
            uris: true,
            params: true,
        };
    }

    /// `(name-addr / addr-spec) *(SEMI param)`, comma-separated when `multi`, `*` when `star`.
    ///
    /// `name-addr = [display-name] "<" addr-spec ">"` with nothing but the URI between the
    /// brackets (RFC 4475 §3.1.2.14); a display name is a quoted-string or tokens (§3.1.2.15);
    /// an unbracketed URI must not contain `?`, `;` or `,` (§3.1.2.13).
    pub(super) fn name_addrs(value: &str, multi: bool, star: bool) -> GResult<Vec<NameAddr<'_>>> {
        let mut out = Vec::new();
        let how = Addresses {
            multi,
            star,
            ..Addresses::ONE
        };
        walk_name_addrs(value, how, |na| out.push(na))?;
        Ok(out)
    }

    /// [`name_addrs`] handing each address to `each` instead of collecting them (`how`: what
    /// is checked and kept).
    pub(super) fn walk_name_addrs<'a>(
        value: &'a str,
        how: Addresses,
        mut each: impl FnMut(NameAddr<'a>),
    ) -> GResult<()> {
        if how.star && value.trim_matches([' ', '\t']) == "*" {
            return Ok(());
        }
        let mut c = Cur::new(value);
        loop {
            c.ws();
            each(name_addr(&mut c, how)?);
            if !(how.multi && c.sep(b',')) {
                break;
            }
        }
        c.ws();
        c.done("the address")
    }

    /// Whether a URI's scheme (the text before its first colon) is `sip` or `sips`.
    fn sip_scheme(u: &str) -> bool {
        memchr::memchr(b':', u.as_bytes()).is_some_and(|i| {
            let scheme = &u[..i];
            scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips")
        })
    }

    fn name_addr<'a>(c: &mut Cur<'a>, how: Addresses) -> GResult<NameAddr<'a>> {
        let bracketed = match c.peek() {
            Some(b'"') => {
                c.quoted_string()?;
                c.ws();
                if c.peek() != Some(b'<') {
                    return Err("display name without <URI>".into());
                }
                true
            }
            Some(b'<') => true,
            _ => {
                // Tokens followed by '<' are a display name; otherwise an addr-spec.
                let save = c.i;
                while c.token().is_some() {
                    c.ws();
                }
                if c.peek() == Some(b'<') {
                    true
                } else {
                    c.i = save;
                    false
                }
            }
        };
        let uri_text = if bracketed {
            c.eat(b'<');
            let u = c.take_while(|b| b != b'>' && !is_wsp(b));
            if !c.eat(b'>') {
                return Err("whitespace or an unterminated <URI>".into());
            }
            (u, true)
        } else {
            let start = c.i;
            while c
                .peek()
                .is_some_and(|b| !matches!(b, b';' | b',' | b' ' | b'\t'))
            {
                c.i += 1;
            }
            let u = c.s.get(start..c.i).unwrap_or("");
            if u.contains('?') {
                return Err("a URI containing ? must be enclosed in <>".into());
            }
            (u, false)
        };
        let (uri_text, allow_headers) = uri_text;
        let sip = if how.uris {
            matches!(uri(uri_text, allow_headers)?, Uri::Sip(_))
        } else {
            sip_scheme(uri_text)
        };
        let params = generic_params(c, how.params)?;
        Ok(NameAddr {
            uri: uri_text,
            bracketed,
            sip,
            params,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_uri_is_the_uri_parse_addresses_reads() {
        for v in [
            "<sip:1000@example.com>",
            "<sip:1000@example.com>;tag=abc",
            "\"A B\" <sip:1000@example.com;transport=udp>;tag=x;expires=3",
            "A B <sips:u@[2001:db8::1]:5061>",
            "sip:1000@example.com;tag=1",
            "tel:+123",
            "<sip:a@b>, <sip:c@d>",
            "sip:a@b?x=y",
            "<sip:a@b",
            "\"unterminated <sip:a@b>",
            "<sip:a@b>;=x",
            "<sip:a@b>;tag=\"q\"",
            "",
            "*",
            "<sip:a b@c>",
        ] {
            let parsed = parse_addresses(v, false).and_then(|l| l.into_iter().next());
            assert_eq!(
                address_uri(v),
                parsed.as_ref().map(|a| a.uri.as_str()),
                "{v:?}"
            );
        }
    }

    #[test]
    fn hash_tags_are_sixteen_hex_digits() {
        for hash in [
            0,
            1,
            0xabc,
            u64::MAX,
            0x0123_4567_89ab_cdef,
            0xcbf2_9ce4_8422_2325,
        ] {
            assert_eq!(hash_tag(hash), format!("cf{hash:016x}"));
        }
    }

    /// `header_parts` names every header variant as rsip's `Display` does, so the serialiser
    /// writes what it wrote when it used `Display`.
    #[test]
    fn header_parts_are_what_display_writes() {
        const V: &str = "a value; x=\"y\"";
        let all = [
            Header::Accept(rsip::headers::Accept::new(V)),
            Header::AcceptEncoding(rsip::headers::AcceptEncoding::new(V)),
            Header::AcceptLanguage(rsip::headers::AcceptLanguage::new(V)),
            Header::AlertInfo(rsip::headers::AlertInfo::new(V)),
            Header::Allow(rsip::headers::Allow::new(V)),
            Header::AuthenticationInfo(rsip::headers::AuthenticationInfo::new(V)),
            Header::Authorization(rsip::headers::Authorization::new(V)),
            Header::CSeq(rsip::headers::CSeq::new(V)),
            Header::CallId(rsip::headers::CallId::new(V)),
            Header::CallInfo(rsip::headers::CallInfo::new(V)),
            Header::Contact(rsip::headers::Contact::new(V)),
            Header::ContentDisposition(rsip::headers::ContentDisposition::new(V)),
            Header::ContentEncoding(rsip::headers::ContentEncoding::new(V)),
            Header::ContentLanguage(rsip::headers::ContentLanguage::new(V)),
            Header::ContentLength(rsip::headers::ContentLength::new(V)),
            Header::ContentType(rsip::headers::ContentType::new(V)),
            Header::Date(rsip::headers::Date::new(V)),
            Header::ErrorInfo(rsip::headers::ErrorInfo::new(V)),
            Header::Event(rsip::headers::Event::new(V)),
            Header::Expires(rsip::headers::Expires::new(V)),
            Header::From(rsip::headers::From::new(V)),
            Header::InReplyTo(rsip::headers::InReplyTo::new(V)),
            Header::MaxForwards(rsip::headers::MaxForwards::new(V)),
            Header::MimeVersion(rsip::headers::MimeVersion::new(V)),
            Header::MinExpires(rsip::headers::MinExpires::new(V)),
            Header::Organization(rsip::headers::Organization::new(V)),
            Header::Priority(rsip::headers::Priority::new(V)),
            Header::ProxyAuthenticate(rsip::headers::ProxyAuthenticate::new(V)),
            Header::ProxyAuthorization(rsip::headers::ProxyAuthorization::new(V)),
            Header::ProxyRequire(rsip::headers::ProxyRequire::new(V)),
            Header::RecordRoute(rsip::headers::RecordRoute::new(V)),
            Header::ReplyTo(rsip::headers::ReplyTo::new(V)),
            Header::Require(rsip::headers::Require::new(V)),
            Header::RetryAfter(rsip::headers::RetryAfter::new(V)),
            Header::Route(rsip::headers::Route::new(V)),
            Header::Server(rsip::headers::Server::new(V)),
            Header::Subject(rsip::headers::Subject::new(V)),
            Header::SubscriptionState(rsip::headers::SubscriptionState::new(V)),
            Header::Supported(rsip::headers::Supported::new(V)),
            Header::Timestamp(rsip::headers::Timestamp::new(V)),
            Header::To(rsip::headers::To::new(V)),
            Header::Unsupported(rsip::headers::Unsupported::new(V)),
            Header::UserAgent(rsip::headers::UserAgent::new(V)),
            Header::Via(rsip::headers::Via::new(V)),
            Header::Warning(rsip::headers::Warning::new(V)),
            Header::WwwAuthenticate(rsip::headers::WwwAuthenticate::new(V)),
            Header::Other("X-Whatever".into(), V.into()),
        ];
        for h in all {
            let (name, value) = header_parts(&h);
            assert_eq!(format!("{name}: {value}"), h.to_string());
            let mut line = Vec::new();
            write_header_line(&mut line, &h);
            assert_eq!(line, h.to_string().into_bytes());
        }
        let mut line = Vec::new();
        write_header_line(
            &mut line,
            &Header::Subject(rsip::headers::Subject::new("a\r\nX: b")),
        );
        assert_eq!(line, b"Subject: a  X: b");
    }

    const OPTIONS: &[u8] = b"OPTIONS sip:u@example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP h.example.com;branch=z9hG4bK1\r\nTo: <sip:u@example.com>\r\n\
From: <sip:c@example.com>;tag=1\r\nCall-ID: a@b\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n\
Content-Length: 0\r\n\r\n";

    /// PROTOS c07-like: a header line that is not UTF-8 gets 400 (answered from the other
    /// fields), unless it is one of the fields a response is built from.
    #[test]
    fn non_utf8_header_lines_get_400_where_an_answer_is_possible() {
        let mut msg = OPTIONS.to_vec();
        let at = msg.len() - 21;
        msg.splice(
            at..at,
            b"Subject: \xc3\x28 bad \xff\r\n\t folded\r\n"
                .iter()
                .copied(),
        );
        let e = parse(&msg).expect_err("not UTF-8");
        let reply = e.reply().expect("a 400 is possible");
        assert_eq!(reply.status_code.code(), 400);
        let text = String::from_utf8_lossy(&serialize_response(reply)).into_owned();
        assert!(text.contains("Call-ID: a@b\r\n"), "{text}");
        assert!(text.contains("is not UTF-8"), "{text}");
        // Not UTF-8 inside From: nothing sound to answer from.
        let bad_from = String::from_utf8_lossy(OPTIONS)
            .replace(
                "From: <sip:c@example.com>",
                "From: \"X\u{fffd}\" <sip:c@example.com>",
            )
            .replace('\u{fffd}', "\u{1}")
            .into_bytes();
        let bad_from: Vec<u8> = bad_from
            .iter()
            .map(|&b| if b == 1 { 0xff } else { b })
            .collect();
        assert!(parse(&bad_from).expect_err("not UTF-8").reply().is_none());
    }

    #[test]
    fn binary_body_survives() {
        let mut msg = OPTIONS.to_vec();
        let at = msg.len();
        msg.truncate(at - 21);
        msg.extend_from_slice(
            b"Content-Type: application/octet-stream\r\nContent-Length: 3\r\n\r\n\xff\x00\x80",
        );
        let SipMessage::Request(req) = parse(&msg).expect("parses") else {
            panic!("not a request")
        };
        assert_eq!(req.body, b"\xff\x00\x80");
        assert_eq!(serialize_request(&req), msg);
    }

    #[test]
    fn response_tag_is_stable_and_added_once() {
        let Ok(SipMessage::Request(req)) = parse(OPTIONS) else {
            panic!("parses")
        };
        let a = serialize_response(&response_for(&req, 486, ""));
        let b = serialize_response(&response_for(&req, 486, ""));
        assert_eq!(a, b);
        let text = String::from_utf8(a).expect("utf-8");
        assert!(text.starts_with("SIP/2.0 486 Busy Here\r\n"), "{text}");
        assert_eq!(text.matches(";tag=cf").count(), 1, "{text}");
        let trying = serialize_response(&response_for(&req, 100, ""));
        assert!(!String::from_utf8_lossy(&trying).contains(";tag=cf"));
        let tagged = serialize_response(&response_with_tag(&req, 200, "", "xyz"));
        assert!(String::from_utf8_lossy(&tagged).contains("To: <sip:u@example.com>;tag=xyz\r\n"));
    }

    #[test]
    fn oversize_gets_513() {
        let mut msg = OPTIONS.to_vec();
        msg.extend(std::iter::repeat_n(b'x', MAX_MESSAGE_SIZE));
        let err = parse(&msg).expect_err("too large");
        assert_eq!(err.kind(), &ParseErrorKind::TooLarge(msg.len()));
        assert_eq!(err.reply().map(|r| r.status_code.code()), Some(513));
    }

    #[test]
    fn unknown_method_gets_501_and_invalid_headers_get_400() {
        let msg = String::from_utf8_lossy(OPTIONS).replace("OPTIONS", "FROB");
        let err = parse(msg.as_bytes()).expect_err("unknown method");
        assert_eq!(err.kind(), &ParseErrorKind::UnknownMethod("FROB".into()));
        assert_eq!(err.reply().map(|r| r.status_code.code()), Some(501));

        let msg = String::from_utf8_lossy(OPTIONS).replace("Max-Forwards: 70", "Max-Forwards: 256");
        let err = parse(msg.as_bytes()).expect_err("bad Max-Forwards");
        assert_eq!(err.reply().map(|r| r.status_code.code()), Some(400));
        let warning = serialize_response(err.reply().expect("reply"));
        assert!(String::from_utf8_lossy(&warning)
            .contains("Warning: 399 callfabric \"bad Max-Forwards"));
    }

    #[test]
    fn header_count_is_capped() {
        let text = String::from_utf8_lossy(OPTIONS);
        let many = "X: y\r\n".repeat(MAX_HEADER_FIELDS);
        let msg = text.replacen("Content-Length", &format!("{many}Content-Length"), 1);
        let err = parse(msg.as_bytes()).expect_err("too many header fields");
        assert!(matches!(err.kind(), ParseErrorKind::HeaderLine(_)), "{err}");
    }

    #[test]
    fn direct_headers_are_rsips() {
        let text = "Via: SIP/2.0/UDP h;branch=z9hG4bK1\r\nTO: <sip:a@b>\r\nfrom: <sip:c@d>;tag=1\r\n\
                    call-id: x@y\r\nCSEQ: 1 OPTIONS\r\nContact: <sip:c@e>\r\nMax-Forwards: 70\r\n\
                    Content-Length: 0\r\nExpires: 60\r\nauthorization: Digest a=b\r\nX-Other: z\r\n";
        let fields = header_fields(text.trim_end().as_bytes()).expect("fields");
        let ours = rsip_headers(&fields).expect("headers");
        let theirs = Response::try_from(format!("SIP/2.0 200 OK\r\n{text}\r\n").as_bytes())
            .expect("rsip parses")
            .headers;
        assert_eq!(ours, theirs);
    }

    /// `known_lname` knows exactly the names of KNOWN_FIELDS, in any case.
    #[test]
    fn known_lnames_are_known_fields() {
        for k in KNOWN_FIELDS {
            assert_eq!(known_lname(k), *k);
            assert_eq!(known_lname(&k.to_ascii_uppercase()), *k);
            let mixed: String = k
                .chars()
                .enumerate()
                .map(|(i, c)| {
                    if i % 2 == 0 {
                        c.to_ascii_uppercase()
                    } else {
                        c
                    }
                })
                .collect();
            assert_eq!(known_lname(&mixed), *k);
        }
        for other in [
            "",
            "t",
            "tox",
            "vía",
            "Contacts",
            "Call_ID",
            "X-Via",
            "Content-Lengths",
            "content-encodings",
            "CONTENT-ENCODING-X",
        ] {
            assert_eq!(known_lname(other), "", "{other:?}");
        }
    }

    #[test]
    fn method_names_are_rsips() {
        for m in Method::all() {
            assert_eq!(method_name(&m), m.to_string());
            assert_eq!(known_method(&m.to_string()), Some(m));
        }
        assert_eq!(known_method("invite"), None);
    }

    #[test]
    fn hostnames() {
        for ok in [
            "a",
            "example.com",
            "example.com.",
            "a-b.c1.org",
            "127.0.0.1",
            "x.y2z",
        ] {
            assert!(grammar::valid_hostname(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "-a.com",
            "a-.com",
            "a..com",
            ".a.com",
            "a.1com",
            "1.2.3",
            "1.2.3.4.5",
            "1234.1.1.1",
            "1..2.3",
            "example.com..",
        ] {
            assert!(!grammar::valid_hostname(bad), "{bad}");
        }
    }

    #[test]
    fn keepalive_is_empty() {
        assert_eq!(
            parse(b"\r\n\r\n").map_err(|e| e.kind().clone()),
            Err(ParseErrorKind::Empty)
        );
    }
}

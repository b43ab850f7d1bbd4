//! `message`'s parse path as it was before the instruction-count work of branch h2
//! (main at 2bb5d7d), kept verbatim as the reference the differential tests compare the
//! current [`super::parse`] and grammar with: every input must get the same verdict, the same
//! [`super::ParseErrorKind`], the same reply and the same message.

#![allow(dead_code, clippy::all)]

use std::borrow::Cow;

use super::{build_reply, method_name, status_code, ParseError, ParseErrorKind};
use rsip::headers::UntypedHeader;
use rsip::{Header, Headers, Method, Request, Response, SipMessage};

pub(super) const MAX_MESSAGE_SIZE: usize = super::MAX_MESSAGE_SIZE;
pub(super) const MAX_HEADER_FIELDS: usize = super::MAX_HEADER_FIELDS;

/// Parses one SIP message (a datagram, or one message already framed by the stream transport).
///
/// Never panics. Leading CRLFs are skipped (§7.5); bytes past Content-Length are dropped
/// (§18.3); without Content-Length everything after the header block is the body. Missing
/// mandatory headers are not a parse error (RFC 4475 §3.3.1): see [`validate_request`].
pub(super) fn parse(bytes: &[u8]) -> Result<SipMessage, ParseError> {
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
    for f in fields {
        if let Err(detail) = grammar::check_field(f.lname, &f.value) {
            return Err(fail(ParseErrorKind::Header {
                name: f.name.to_owned(),
                detail,
            }));
        }
    }
    if let StartLine::Request { method, .. } = start_line {
        for f in fields.iter().filter(|f| f.lname == "cseq") {
            if let Ok((_, cseq_method)) = grammar::cseq(&f.value) {
                if cseq_method != method {
                    return Err(fail(ParseErrorKind::CSeqMismatch {
                        method: method.clone(),
                        cseq: cseq_method.to_owned(),
                    }));
                }
            }
        }
    }

    // Framing (§18.3): one Content-Length value frames the body; conflicting values leave the
    // body untouched for validate_request to refuse (RFC 4475 §3.3.9).
    let mut lengths: Vec<u32> = fields
        .iter()
        .filter(|f| f.lname == "content-length")
        .filter_map(|f| grammar::number(&f.value, u32::MAX).ok())
        .collect();
    lengths.sort_unstable();
    lengths.dedup();
    let mut body = body;
    if let [declared] = lengths[..] {
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
            None => return Err(fail(ParseErrorKind::UnknownMethod(method.clone()))),
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
            status_code: status_code(code, &reason),
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
    match find(rest, b"\r\n\r\n") {
        Some(end) => Ok((start, &rest[..end], &rest[end + 4..])),
        None => Err(ParseErrorKind::HeaderLine(
            "header block not terminated by an empty line".into(),
        )),
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    // Every needle here starts with CR: memchr to each CR (a one-shot memmem::find builds a
    // searcher per call, which costs more than the search on a SIP-sized message).
    let (&first, _) = needle.split_first()?;
    memchr::memchr_iter(first, hay).find(|&i| hay.get(i..i + needle.len()) == Some(needle))
}

#[derive(Debug, Clone)]
enum StartLine {
    Request { method: String, uri: rsip::Uri },
    Response { code: u16, reason: String },
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
/// look at, and the other fields every REGISTER carries.
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
    KNOWN_FIELDS
        .iter()
        .find(|k| k.eq_ignore_ascii_case(name))
        .copied()
        .unwrap_or("")
}

/// Everything known about a message's head, each part with its own error.
struct Head<'a> {
    is_request: bool,
    start: Result<StartLine, ParseErrorKind>,
    fields: Result<Vec<Field<'a>>, ParseErrorKind>,
    headers: Result<Headers, ParseErrorKind>,
    /// When header lines are not UTF-8: the other fields' headers, to answer 400 from.
    salvaged: Option<Headers>,
}

impl<'a> Head<'a> {
    fn analyse(start: &[u8], head: &'a [u8]) -> Self {
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

fn parse_start_line(line: &[u8], is_request: bool) -> Result<StartLine, ParseErrorKind> {
    let bad = |m: &str| ParseErrorKind::StartLine(m.into());
    let line = std::str::from_utf8(line).map_err(|_| bad("not UTF-8"))?;
    if let Some(c) = line
        .bytes()
        .find(|&c| c != b'\t' && (c < 0x20 || c == 0x7f))
    {
        return Err(bad(&format!("control character {c:#04x}")));
    }
    if is_request {
        let parts: Vec<&str> = line.split(' ').collect();
        let [method, uri, version] = parts[..] else {
            return Err(bad(
                "a request line is Method SP Request-URI SP SIP-Version, single spaces",
            ));
        };
        if method.is_empty() || !method.bytes().all(grammar::is_token) {
            return Err(bad("method is not a token"));
        }
        check_version(version)?;
        let uri = grammar::request_uri(uri).map_err(ParseErrorKind::RequestUri)?;
        Ok(StartLine::Request {
            method: method.to_owned(),
            uri,
        })
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
        Ok(StartLine::Response {
            code,
            reason: reason.to_owned(),
        })
    }
}

fn check_version(version: &str) -> Result<(), ParseErrorKind> {
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
        let end = find(&head[start..], b"\r\n").map_or(head.len(), |i| start + i);
        let raw = &head[start..end];
        let line = match text.and_then(|t| t.get(start..end)) {
            Some(line) => line,
            None => {
                std::str::from_utf8(raw).map_err(|_| bad(format!("line {} is not UTF-8", n + 1)))?
            }
        };
        let last = end == head.len();
        start = (end + 2).min(head.len());
        if memchr::memchr2(b'\r', b'\n', raw).is_some() {
            return Err(bad(format!("bare CR or LF in line {}", n + 1)));
        }
        if line.starts_with([' ', '\t']) {
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

/// rsip's method for a request-line method, compared case-sensitively (§7.1: `invite` is an
/// extension method, not INVITE).
fn known_method(token: &str) -> Option<Method> {
    Method::all().into_iter().find(|m| method_name(m) == token)
}

/// rsip's status code: named where rsip names it (dropping the phrase, as rsip's parser does),

pub(in crate::message) mod grammar {
    #![allow(dead_code)]
    use std::net::{IpAddr, Ipv6Addr};

    pub(in crate::message) type GResult<T> = Result<T, String>;

    /// A byte class as a table: ASCII letters and digits plus `extra` (one lookup per byte
    /// instead of a scan of `extra`: the grammar tests every byte of every field).
    pub(in crate::message) struct Class([bool; 256]);

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

        pub(in crate::message) fn has(&self, c: u8) -> bool {
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

    pub(in crate::message) fn is_token(c: u8) -> bool {
        TOKEN.has(c)
    }

    fn is_wsp(c: u8) -> bool {
        c == b' ' || c == b'\t'
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
    pub(in crate::message) struct Cur<'a> {
        s: &'a str,
        i: usize,
    }

    impl<'a> Cur<'a> {
        pub(in crate::message) fn new(s: &'a str) -> Self {
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
            while self.peek().is_some_and(|c| c.is_ascii() && f(c)) {
                self.i += 1;
            }
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
    pub(in crate::message) fn valid_hostname(h: &str) -> bool {
        if h.is_empty() {
            return false;
        }
        if h.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            let (mut groups, mut len) = (1, 0);
            for b in h.bytes() {
                if b == b'.' {
                    if !(1..=3).contains(&len) {
                        return false;
                    }
                    groups += 1;
                    len = 0;
                } else {
                    len += 1;
                }
            }
            return groups == 4 && (1..=3).contains(&len);
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
    pub(in crate::message) struct SipUri<'a> {
        pub(in crate::message) secure: bool,
        pub(in crate::message) user: Option<&'a str>,
        pub(in crate::message) password: Option<&'a str>,
        pub(in crate::message) host: &'a str,
        pub(in crate::message) port: Option<u16>,
        pub(in crate::message) params: Vec<(&'a str, Option<&'a str>)>,
        pub(in crate::message) has_headers: bool,
    }

    #[derive(Debug)]
    pub(in crate::message) enum Uri<'a> {
        Sip(SipUri<'a>),
        Absolute { scheme: &'a str, rest: &'a str },
    }

    fn valid_scheme(s: &str) -> bool {
        let b = s.as_bytes();
        b.first().is_some_and(u8::is_ascii_alphabetic)
            && b.iter()
                .all(|&c| c.is_ascii_alphanumeric() || b"+-.".contains(&c))
    }

    pub(in crate::message) fn uri(s: &str, allow_headers: bool) -> GResult<Uri<'_>> {
        let colon =
            memchr::memchr(b':', s.as_bytes()).ok_or_else(|| format!("{s:?} has no scheme"))?;
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
        let (userinfo, hostpart) = match memchr::memchr(b'@', rest.as_bytes()) {
            Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
            None => (None, rest),
        };
        let (mut user, mut password) = (None, None);
        if let Some(ui) = userinfo {
            let (u, p) = match memchr::memchr(b':', ui.as_bytes()) {
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
    pub(in crate::message) fn request_uri(s: &str) -> GResult<rsip::Uri> {
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
    pub(in crate::message) fn check_field(lname: &str, value: &str) -> GResult<()> {
        no_controls(value)?;
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
            "cseq" => cseq(value).map(drop),
            "max-forwards" => number(value, 255).map(drop),
            "content-length" => number(value, u32::MAX).map(drop),
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
    pub(in crate::message) fn number(value: &str, max: u32) -> GResult<u32> {
        if value.is_empty() || !value.bytes().all(|c| c.is_ascii_digit()) {
            return Err(format!("{value:?} is not a number"));
        }
        match value.parse::<u64>() {
            Ok(n) if n <= u64::from(max) => Ok(n as u32),
            _ => Err(format!("{value} is larger than {max}")),
        }
    }

    /// `CSeq: 1*DIGIT LWS Method`, the number at most 2³²−1 (RFC 4475 §3.1.2.4).
    pub(in crate::message) fn cseq(value: &str) -> GResult<(u32, &str)> {
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
        let ok = match value.split_once('@') {
            Some((a, b)) => word(a) && word(b),
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
    pub(in crate::message) fn token_list(value: &str, empty_ok: bool) -> GResult<Vec<&str>> {
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
    pub(in crate::message) fn media_type(value: &str) -> GResult<(&str, &str)> {
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
    pub(in crate::message) fn disposition_optional(value: &str) -> bool {
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
    pub(in crate::message) fn accept(value: &str) -> GResult<Vec<(&str, &str)>> {
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
    pub(in crate::message) struct ViaParm<'a> {
        pub(in crate::message) protocol: &'a str,
        pub(in crate::message) version: &'a str,
    }

    /// `Via: via-parm *(COMMA via-parm)`,
    /// `via-parm = sent-protocol LWS sent-by *(SEMI via-params)`.
    pub(in crate::message) fn via(value: &str) -> GResult<Vec<ViaParm<'_>>> {
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
    pub(in crate::message) struct NameAddr<'a> {
        pub(in crate::message) uri: &'a str,
        pub(in crate::message) bracketed: bool,
        /// A `sip:` or `sips:` URI.
        pub(in crate::message) sip: bool,
        /// Empty unless asked for ([`Addresses::params`]).
        pub(in crate::message) params: Vec<(&'a str, Option<&'a str>)>,
    }

    /// How [`walk_name_addrs`] reads an address list.
    #[derive(Debug, Clone, Copy)]
    pub(in crate::message) struct Addresses {
        /// Comma-separated.
        pub(in crate::message) multi: bool,
        /// `*` allowed.
        pub(in crate::message) star: bool,
        /// Each URI checked with the URI grammar; without, only the list's structure is
        /// (for a value already checked whole: `sip` then comes from the scheme, which is what
        /// the URI grammar decides it by).
        pub(in crate::message) uris: bool,
        /// [`NameAddr::params`] filled.
        pub(in crate::message) params: bool,
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
        pub(in crate::message) const ONE: Self = Self {
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
    pub(in crate::message) fn name_addrs(
        value: &str,
        multi: bool,
        star: bool,
    ) -> GResult<Vec<NameAddr<'_>>> {
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
    pub(in crate::message) fn walk_name_addrs<'a>(
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

//! The one request builder: every SIP request the gateway, the ACD and the user agents send
//! is assembled here as typed headers (never `format!`-ed text parsed back).
//!
//! [`Local`] says where we send from (transport, address) and the prefix of our random
//! identifiers; with a random source passed in (`&mut impl RngCore`, so tests are
//! deterministic) it makes branches ([`Local::branch`]), tags ([`Local::tag`]) and Call-IDs
//! ([`Local::call_id`]). [`RequestBuilder`] orders the header fields the same way for every
//! request: Via, Max-Forwards, Route…, From, To, Call-ID, CSeq, Contact, the extra fields,
//! Content-Type, Content-Length. Out of dialog, [`RequestBuilder::out_of_dialog`] fills all of
//! them from a [`Local`]; in a dialog, [`crate::dialog::Dialog`] fills them from its state;
//! the transaction layer builds its ACK and CANCEL with it from the INVITE's fields.

use std::net::SocketAddr;

use rand::RngCore;
use rsip::headers::{
    CSeq, CallId, Contact, ContentLength, ContentType, From, MaxForwards, Route, To, UntypedHeader,
    Via,
};
use rsip::{Header, Headers, Method, Request};

use crate::message;
use crate::transaction::TransactionKey;

/// Why a request could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// The Request-URI does not parse.
    #[error("bad Request-URI {0:?}")]
    Uri(String),
    /// An extra header field does not parse.
    #[error("bad header field {name}: {reason}")]
    Header {
        /// The field name.
        name: String,
        /// What rsip said.
        reason: String,
    },
}

/// Where our requests leave from, and the prefix of our random identifiers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Local {
    /// The Via transport: `UDP`, `TCP`, `TLS`.
    pub transport: &'static str,
    /// Our sent-by address.
    pub addr: SocketAddr,
    /// Prefix of branches (after `z9hG4bK`), tags and Call-IDs, e.g. `cf`, `acd`.
    pub prefix: &'static str,
}

impl Local {
    /// Over UDP from `addr`.
    pub fn udp(addr: SocketAddr, prefix: &'static str) -> Local {
        Local {
            transport: "UDP",
            addr,
            prefix,
        }
    }

    /// A fresh RFC 3261 branch: `z9hG4bK<prefix><16 hex digits>`.
    pub fn branch(&self, rng: &mut (impl RngCore + ?Sized)) -> String {
        branch(rng, self.prefix)
    }

    /// A fresh tag: `<prefix><12 hex digits>`.
    pub fn tag(&self, rng: &mut (impl RngCore + ?Sized)) -> String {
        format!("{}{:012x}", self.prefix, rng.next_u64() & 0xffff_ffff_ffff)
    }

    /// A fresh Call-ID: `<prefix><16 hex digits>@<our IP>`.
    pub fn call_id(&self, rng: &mut (impl RngCore + ?Sized)) -> String {
        format!("{}{:016x}@{}", self.prefix, rng.next_u64(), self.addr.ip())
    }

    /// Our Via value with `branch`: `SIP/2.0/<transport> <addr>;branch=<branch>;rport`.
    pub fn via(&self, branch: &str) -> String {
        via(self.transport, self.addr, branch)
    }

    /// A fresh branch and the Via value that carries it.
    pub fn new_via(&self, rng: &mut (impl RngCore + ?Sized)) -> (String, String) {
        let branch = self.branch(rng);
        (self.via(&branch), branch)
    }
}

/// A fresh RFC 3261 branch: `z9hG4bK<prefix><16 hex digits>`.
pub fn branch(rng: &mut (impl RngCore + ?Sized), prefix: &str) -> String {
    format!("z9hG4bK{prefix}{:016x}", rng.next_u64())
}

/// A Via value: `SIP/2.0/<transport> <sent_by>;branch=<branch>;rport` (RFC 3581 asks for the
/// port responses come back to).
pub fn via(transport: &str, sent_by: impl std::fmt::Display, branch: &str) -> String {
    format!("SIP/2.0/{transport} {sent_by};branch={branch};rport")
}

/// `value` (a From/To name-addr) with `;tag=<tag>` appended, or as it is when `tag` is None.
fn tagged(value: &str, tag: Option<&str>) -> String {
    match tag {
        Some(t) => format!("{value};tag={t}"),
        None => value.to_owned(),
    }
}

/// One request, assembled field by field.
#[derive(Debug, Clone)]
pub struct RequestBuilder {
    method: Method,
    uri: rsip::Uri,
    via: String,
    max_forwards: String,
    routes: Vec<String>,
    from: String,
    to: String,
    call_id: String,
    cseq: u32,
    contact: Option<String>,
    extra: Vec<Header>,
    body: Vec<u8>,
    content_type: Option<String>,
}

impl RequestBuilder {
    /// A request for `uri` with `via` as its only Via value; From, To and Call-ID empty, CSeq
    /// 1, Max-Forwards 70.
    pub fn new(method: Method, uri: rsip::Uri, via: impl Into<String>) -> RequestBuilder {
        RequestBuilder {
            method,
            uri,
            via: via.into(),
            max_forwards: "70".into(),
            routes: Vec::new(),
            from: String::new(),
            to: String::new(),
            call_id: String::new(),
            cseq: 1,
            contact: None,
            extra: Vec::new(),
            body: Vec::new(),
            content_type: None,
        }
    }

    /// A request outside any dialog from `local`: a fresh branch, From `from` with a fresh tag,
    /// To `to` without one, a fresh Call-ID, CSeq 1, Max-Forwards 70.
    pub fn out_of_dialog(
        rng: &mut (impl RngCore + ?Sized),
        local: &Local,
        method: Method,
        uri: &str,
        from: &str,
        to: &str,
    ) -> Result<RequestBuilder, BuildError> {
        let uri = parse_uri(uri)?;
        let (via, _) = local.new_via(rng);
        let tag = local.tag(rng);
        let call_id = local.call_id(rng);
        Ok(RequestBuilder::new(method, uri, via)
            .from(from, Some(&tag))
            .to(to, None)
            .call_id(call_id))
    }

    /// From: `value` with `;tag=<tag>`.
    pub fn from(mut self, value: &str, tag: Option<&str>) -> Self {
        self.from = tagged(value, tag);
        self
    }

    /// To: `value` with `;tag=<tag>`.
    pub fn to(mut self, value: &str, tag: Option<&str>) -> Self {
        self.to = tagged(value, tag);
        self
    }

    /// Call-ID.
    pub fn call_id(mut self, call_id: impl Into<String>) -> Self {
        self.call_id = call_id.into();
        self
    }

    /// CSeq number (the method is the request's).
    pub fn cseq(mut self, seq: u32) -> Self {
        self.cseq = seq;
        self
    }

    /// Max-Forwards, as a number.
    pub fn max_forwards(mut self, hops: u32) -> Self {
        self.max_forwards = hops.to_string();
        self
    }

    /// Max-Forwards, as the value another request carried.
    pub fn max_forwards_value(mut self, value: &str) -> Self {
        self.max_forwards = value.to_owned();
        self
    }

    /// Route values, in the order to send them.
    pub fn routes(mut self, routes: impl IntoIterator<Item = String>) -> Self {
        self.routes.extend(routes);
        self
    }

    /// Contact value.
    pub fn contact(mut self, value: impl Into<String>) -> Self {
        self.contact = Some(value.into());
        self
    }

    /// A ready header field, after Contact.
    pub fn header(mut self, header: Header) -> Self {
        self.extra.push(header);
        self
    }

    /// A header field by name and value after Contact, as the same rsip variant parsing
    /// `name: value` gives (so `Allow` is `Header::Allow`, `X-CF-Offer` is `Header::Other`).
    pub fn field(mut self, name: &str, value: &str) -> Result<Self, BuildError> {
        self.extra.push(header(name, value)?);
        Ok(self)
    }

    /// The body and its Content-Type (an empty body: no Content-Type).
    pub fn body(mut self, body: Vec<u8>, content_type: &str) -> Self {
        self.content_type = (!body.is_empty()).then(|| content_type.to_owned());
        self.body = body;
        self
    }

    /// The request.
    pub fn build(self) -> Request {
        let mut h: Vec<Header> = Vec::with_capacity(10 + self.routes.len() + self.extra.len());
        h.push(Header::Via(Via::new(self.via)));
        h.push(Header::MaxForwards(MaxForwards::new(self.max_forwards)));
        h.extend(
            self.routes
                .into_iter()
                .map(|r| Header::Route(Route::new(r))),
        );
        h.push(Header::From(From::new(self.from)));
        h.push(Header::To(To::new(self.to)));
        h.push(Header::CallId(CallId::new(self.call_id)));
        h.push(Header::CSeq(CSeq::new(format!(
            "{} {}",
            self.cseq,
            message::method_name(&self.method)
        ))));
        if let Some(c) = self.contact {
            h.push(Header::Contact(Contact::new(c)));
        }
        h.extend(self.extra);
        if let Some(ct) = self.content_type {
            h.push(Header::ContentType(ContentType::new(ct)));
        }
        h.push(Header::ContentLength(ContentLength::new(
            self.body.len().to_string(),
        )));
        Request {
            method: self.method,
            uri: self.uri,
            version: rsip::Version::V2,
            headers: Headers::from(h),
            body: self.body,
        }
    }
}

/// A request we sent, again as a new client transaction: the INVITE after a 401/407 (RFC 3261
/// §22.2) or a 422 (RFC 4028 §7.4) with [`Resend::next_cseq`], or to another target (a fork
/// branch, a diversion, the next DNS target) with [`Resend::uri`] and [`Resend::contact`]. Its
/// Via is replaced by ours with a new branch; every other field stays as it was, in order,
/// except those [`Resend::without`] drops; [`Resend::header`] fields come after them.
#[derive(Debug, Clone)]
pub struct Resend {
    request: Request,
    via: String,
    next_cseq: bool,
    contact: Option<String>,
    drop: Vec<fn(&Header) -> bool>,
    extra: Vec<Header>,
}

impl Resend {
    /// `original` with `via` (carrying the new transaction's branch) as its only Via.
    pub fn new(original: &Request, via: impl Into<String>) -> Resend {
        Resend {
            request: original.clone(),
            via: via.into(),
            next_cseq: false,
            contact: None,
            drop: Vec::new(),
            extra: Vec::new(),
        }
    }

    /// A new request of the same dialog or call (RFC 3261 §8.1.3.5): the CSeq number one
    /// higher.
    pub fn next_cseq(mut self) -> Self {
        self.next_cseq = true;
        self
    }

    /// Another Request-URI.
    pub fn uri(mut self, uri: rsip::Uri) -> Self {
        self.request.uri = uri;
        self
    }

    /// Another Contact value (replacing the original's).
    pub fn contact(mut self, value: impl Into<String>) -> Self {
        self.contact = Some(value.into());
        self
    }

    /// Drops the original's fields `which` matches (credentials answered to an earlier
    /// challenge, a Session-Expires to replace).
    pub fn without(mut self, which: fn(&Header) -> bool) -> Self {
        self.drop.push(which);
        self
    }

    /// A field after the original's.
    pub fn header(mut self, header: Header) -> Self {
        self.extra.push(header);
        self
    }

    /// The request.
    pub fn build(self) -> Request {
        let Resend {
            mut request,
            via,
            next_cseq,
            contact,
            drop,
            extra,
        } = self;
        let seq = crate::transaction::parse::cseq(&request.headers).map_or(0, |c| c.seq);
        let method = message::method_name(&request.method);
        let mut via = Some(via);
        let mut h: Vec<Header> = Vec::with_capacity(request.headers.iter().count() + extra.len());
        for field in request.headers.iter() {
            if drop.iter().any(|d| d(field)) {
                continue;
            }
            match field {
                // Ours replaces the first; a request we sent has no other.
                Header::Via(_) => h.extend(via.take().map(|v| Header::Via(Via::new(v)))),
                Header::CSeq(_) if next_cseq => h.push(Header::CSeq(CSeq::new(format!(
                    "{} {method}",
                    seq.saturating_add(1)
                )))),
                Header::Contact(_) if contact.is_some() => {
                    h.extend(contact.clone().map(|c| Header::Contact(Contact::new(c))))
                }
                other => h.push(other.clone()),
            }
        }
        h.extend(extra);
        request.headers = Headers::from(h);
        request
    }
}

/// A Request-URI.
pub fn parse_uri(uri: &str) -> Result<rsip::Uri, BuildError> {
    message::parse_uri(uri).ok_or_else(|| BuildError::Uri(uri.to_owned()))
}

/// A header field `name: value` as the rsip variant parsing it gives.
pub fn header(name: &str, value: &str) -> Result<Header, BuildError> {
    let tokenizer = rsip::headers::header::Tokenizer {
        name: name.as_bytes(),
        value: value.as_bytes(),
    };
    let parsed: Result<Header, rsip::Error> = tokenizer.try_into();
    parsed.map_err(|e| BuildError::Header {
        name: name.to_owned(),
        reason: e.to_string(),
    })
}

/// The client transaction key of a request we built (its top Via's branch), if it has one.
pub fn client_key(req: &Request) -> Option<TransactionKey> {
    let via = crate::transaction::parse::top_via(&req.headers).ok()?;
    Some(TransactionKey::client(via.branch.as_deref()?, req.method))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{parse, serialize_request, SipMessage};
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn local() -> Local {
        Local::udp("192.0.2.1:5060".parse().unwrap(), "cf")
    }

    #[test]
    fn same_seed_same_request_and_fields_in_order() {
        let build = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            RequestBuilder::out_of_dialog(
                &mut rng,
                &local(),
                Method::Invite,
                "sip:2001@192.0.2.7",
                "\"Alice\" <sip:1001@gw>",
                "<sip:2001@gw>",
            )
            .unwrap()
            .contact("<sip:callfabric@192.0.2.1:5060>")
            .field("Allow", "INVITE, ACK, BYE")
            .unwrap()
            .field("X-CF-Offer", "queue=sales")
            .unwrap()
            .body(b"v=0\r\n".to_vec(), "application/sdp")
            .build()
        };
        let a = String::from_utf8(serialize_request(&build(7))).unwrap();
        assert_eq!(a, String::from_utf8(serialize_request(&build(7))).unwrap());
        assert_ne!(a, String::from_utf8(serialize_request(&build(8))).unwrap());
        let mut rng = StdRng::seed_from_u64(7);
        let (branch, tag, cid) = (rng.next_u64(), rng.next_u64(), rng.next_u64());
        let expected = format!(
            "INVITE sip:2001@192.0.2.7 SIP/2.0\r\n\
             Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKcf{branch:016x};rport\r\n\
             Max-Forwards: 70\r\n\
             From: \"Alice\" <sip:1001@gw>;tag=cf{tag:012x}\r\n\
             To: <sip:2001@gw>\r\n\
             Call-ID: cf{cid:016x}@192.0.2.1\r\n\
             CSeq: 1 INVITE\r\n\
             Contact: <sip:callfabric@192.0.2.1:5060>\r\n\
             Allow: INVITE, ACK, BYE\r\n\
             X-CF-Offer: queue=sales\r\n\
             Content-Type: application/sdp\r\n\
             Content-Length: 5\r\n\r\nv=0\r\n",
            tag = tag & 0xffff_ffff_ffff
        );
        assert_eq!(a, expected);
    }

    #[test]
    fn built_request_parses_back_the_same_and_names_its_transaction() {
        let mut rng = StdRng::seed_from_u64(1);
        let req = RequestBuilder::out_of_dialog(
            &mut rng,
            &Local {
                transport: "TLS",
                addr: "[2001:db8::1]:5061".parse().unwrap(),
                prefix: "acd",
            },
            Method::Options,
            "sip:gw.example.com;transport=tls",
            "<sip:acd@example.com>",
            "<sip:gw.example.com>",
        )
        .unwrap()
        .cseq(42)
        .max_forwards(0)
        .routes(["<sip:p1;lr>".to_string(), "<sip:p2;lr>".to_string()])
        .build();
        let bytes = serialize_request(&req);
        let Ok(SipMessage::Request(back)) = parse(&bytes) else {
            panic!("does not parse: {}", String::from_utf8_lossy(&bytes));
        };
        assert_eq!(back, req);
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.contains("Via: SIP/2.0/TLS [2001:db8::1]:5061;branch=z9hG4bKacd"),
            "{text}"
        );
        assert!(
            text.contains("Route: <sip:p1;lr>\r\nRoute: <sip:p2;lr>\r\nFrom:"),
            "{text}"
        );
        assert!(text.contains("CSeq: 42 OPTIONS\r\n"), "{text}");
        assert!(text.contains("Max-Forwards: 0\r\n"), "{text}");
        assert!(text.contains("Call-ID: acd"), "{text}");
        assert!(text.contains("@2001:db8::1\r\n"), "{text}");
        assert!(!text.contains("Content-Type"), "{text}");
        let key = client_key(&req).unwrap();
        let branch = crate::transaction::parse::top_via(&req.headers)
            .unwrap()
            .branch
            .unwrap();
        assert_eq!(key, TransactionKey::client(&branch, Method::Options));
    }

    #[test]
    fn extra_fields_are_the_variant_parsing_gives_and_bad_input_is_an_error() {
        assert!(matches!(
            header("Allow", "INVITE").unwrap(),
            Header::Allow(_)
        ));
        assert!(matches!(
            header("X-CF-Offer", "queue=q").unwrap(),
            Header::Other(..)
        ));
        assert_eq!(
            parse_uri("not a uri").unwrap_err(),
            BuildError::Uri("not a uri".into())
        );
        let mut rng = StdRng::seed_from_u64(1);
        assert!(RequestBuilder::out_of_dialog(
            &mut rng,
            &local(),
            Method::Message,
            "",
            "<sip:a@b>",
            "<sip:c@d>"
        )
        .is_err());
    }

    #[test]
    fn ids_differ_each_call_and_carry_the_prefix() {
        let mut rng = StdRng::seed_from_u64(3);
        let l = local();
        let (b1, b2) = (l.branch(&mut rng), l.branch(&mut rng));
        assert_ne!(b1, b2);
        assert!(
            b1.starts_with("z9hG4bKcf") && b1.len() == 7 + 2 + 16,
            "{b1}"
        );
        let t = l.tag(&mut rng);
        assert!(t.starts_with("cf") && t.len() == 14, "{t}");
        assert!(l.call_id(&mut rng).ends_with("@192.0.2.1"));
        assert_eq!(
            l.via("z9hG4bKx"),
            "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKx;rport"
        );
    }

    #[test]
    fn a_resend_is_a_new_transaction_of_the_same_request() {
        let mut rng = StdRng::seed_from_u64(7);
        let original = RequestBuilder::out_of_dialog(
            &mut rng,
            &local(),
            Method::Invite,
            "sip:2001@trunk.example.com",
            "<sip:1001@example.com>",
            "<sip:2001@trunk.example.com>",
        )
        .unwrap()
        .cseq(41)
        .contact("<sip:1001@192.0.2.1:5060>")
        .field("Session-Expires", "90")
        .unwrap()
        .field("Authorization", "Digest username=\"old\"")
        .unwrap()
        .body(b"v=0\r\n".to_vec(), "application/sdp")
        .build();
        let (via, branch) = local().new_via(&mut rng);
        let auth = header("Authorization", "Digest username=\"new\"").unwrap();
        let retry = Resend::new(&original, via)
            .next_cseq()
            .without(|h| matches!(h, Header::Authorization(_)))
            .without(
                |h| matches!(h, Header::Other(n, _) if n.eq_ignore_ascii_case("session-expires")),
            )
            .header(auth.clone())
            .build();
        let text = String::from_utf8(serialize_request(&retry)).unwrap();
        assert_eq!(
            client_key(&retry),
            Some(TransactionKey::client(&branch, Method::Invite))
        );
        assert_ne!(client_key(&retry), client_key(&original));
        assert!(text.contains("CSeq: 42 INVITE\r\n"), "{text}");
        assert_eq!(text.matches("Via:").count(), 1, "{text}");
        assert!(!text.contains("Session-Expires"), "{text}");
        assert!(!text.contains("username=\"old\""), "{text}");
        assert_eq!(text.matches("Authorization:").count(), 1, "{text}");
        assert!(
            text.contains("Authorization: Digest username=\"new\"\r\n"),
            "{text}"
        );
        // Everything else as it was, in order.
        let kept = |r: &Request| -> Vec<Header> {
            r.headers
                .iter()
                .filter(|h| {
                    !matches!(
                        h,
                        Header::Via(_)
                            | Header::CSeq(_)
                            | Header::Authorization(_)
                            | Header::Other(..)
                    )
                })
                .cloned()
                .collect()
        };
        assert_eq!(kept(&retry), kept(&original));
        assert_eq!((&retry.uri, &retry.body), (&original.uri, &original.body));
        // To another target: the same CSeq, another Request-URI and Contact.
        let (via, _) = local().new_via(&mut rng);
        let moved = Resend::new(&original, via)
            .uri(parse_uri("sip:2001@192.0.2.9:5070").unwrap())
            .contact("<sip:gw@192.0.2.1:5062>")
            .build();
        let text = String::from_utf8(serialize_request(&moved)).unwrap();
        assert!(
            text.starts_with("INVITE sip:2001@192.0.2.9:5070 SIP/2.0\r\n"),
            "{text}"
        );
        assert!(text.contains("CSeq: 41 INVITE\r\n"), "{text}");
        assert!(
            text.contains("Contact: <sip:gw@192.0.2.1:5062>\r\n"),
            "{text}"
        );
        assert!(text.contains("Session-Expires: 90\r\n"), "{text}");
    }
}

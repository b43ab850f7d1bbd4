//! Dialogs (RFC 3261 §12), sans-IO: the state two user agents share after an INVITE — Call-ID,
//! tags, remote target, route set, CSeq counters — and the in-dialog requests built from it.
//!
//! A [`Dialog`] is created on the UAS side from the INVITE and our tag ([`Dialog::uas`]), on the
//! UAC side from the INVITE we sent and a tagged 1xx or 2xx ([`Dialog::uac`]). It checks the
//! CSeq order of requests it receives (§12.2.2: lower → 500), refreshes the remote target on
//! re-INVITE / UPDATE and their 2xx (§12.2), and builds BYE, re-INVITE, UPDATE and the ACK for a
//! 2xx (§13.2.2.4) with loose or strict routing (§12.2.1.1). Where a request is sent (the
//! phone's NAT'd source, a trunk address) is the caller's business.

use rsip::headers::{ContentLength, ContentType, UntypedHeader};
use rsip::{Header, Headers, Method, Request, Response};

use super::builder::RequestBuilder;

use super::message::{self, Address};
use super::transaction::parse::{self, Field};

/// Why a dialog could not be created or a request does not fit it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DialogError {
    /// A header the dialog needs is missing or malformed.
    #[error("missing or malformed {0}")]
    Header(&'static str),
    /// The response carries no To tag (it cannot create a dialog).
    #[error("response without a To tag")]
    NoRemoteTag,
    /// The request's CSeq is lower than the last one seen (§12.2.2: answer 500).
    #[error("CSeq {got} is lower than {last}")]
    CSeqOrder { got: u32, last: u32 },
}

/// Whether the dialog is early (after a 1xx) or confirmed (after a 2xx).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialogState {
    /// Created by a provisional response.
    Early,
    /// Created or confirmed by a 2xx.
    Confirmed,
}

/// One dialog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dialog {
    /// Call-ID.
    pub call_id: String,
    /// Our tag.
    pub local_tag: String,
    /// The peer's tag (empty for an RFC 2543 peer that sent none).
    pub remote_tag: String,
    /// Our From/To value (with our tag) in requests we send.
    local_header: String,
    /// Their From/To value (with their tag) in requests we send.
    remote_header: String,
    /// Where in-dialog requests go (the peer's Contact URI).
    pub remote_target: String,
    /// Route set, as `Route` values in the order to send them.
    pub route_set: Vec<String>,
    /// Our CSeq number (the last one used).
    pub local_seq: u32,
    /// The peer's last CSeq number.
    pub remote_seq: Option<u32>,
    /// Our Contact value.
    pub local_contact: String,
    /// Early or confirmed.
    pub state: DialogState,
}

fn header_value(headers: &Headers, field: Field) -> Result<&str, DialogError> {
    parse::value(headers, field).map_err(|_| DialogError::Header(field.name()))
}

fn first_address(value: &str) -> Option<Address> {
    message::parse_addresses(value, false)?.into_iter().next()
}

/// The Contact URI of a message (the first one), if any.
pub fn contact_uri(headers: &Headers) -> Option<String> {
    headers.iter().find_map(|h| match h {
        Header::Contact(c) => message::parse_addresses(c.value(), true)?
            .into_iter()
            .next()
            .map(|a| a.uri),
        Header::Other(n, v) if n.trim().eq_ignore_ascii_case("m") => {
            message::parse_addresses(v, true)?
                .into_iter()
                .next()
                .map(|a| a.uri)
        }
        _ => None,
    })
}

/// Record-Route values of a message, one per route, in message order.
fn record_routes(headers: &Headers) -> Vec<String> {
    let mut out = Vec::new();
    for h in headers.iter() {
        if let Header::RecordRoute(rr) = h {
            if let Some(list) = message::parse_addresses(rr.value(), true) {
                for a in list {
                    let mut v = format!("<{}>", a.uri);
                    for (n, val) in &a.params {
                        match val {
                            Some(val) => v.push_str(&format!(";{n}={val}")),
                            None => v.push_str(&format!(";{n}")),
                        }
                    }
                    out.push(v);
                }
            }
        }
    }
    out
}

fn uri_of_route(route: &str) -> Option<Address> {
    first_address(route)
}

impl Dialog {
    /// The UAS side of a dialog created by `invite`, answered with our tag `local_tag`.
    pub fn uas(
        invite: &Request,
        local_tag: &str,
        local_contact: &str,
    ) -> Result<Dialog, DialogError> {
        let call_id = header_value(&invite.headers, Field::CallId)?.to_owned();
        let from = header_value(&invite.headers, Field::From)?;
        let to = header_value(&invite.headers, Field::To)?;
        let remote_tag = parse::tag(from).unwrap_or_default();
        let local_header = match parse::tag(to) {
            Some(_) => to.to_owned(),
            None => format!("{to};tag={local_tag}"),
        };
        let cseq = parse::cseq(&invite.headers).map_err(|_| DialogError::Header("CSeq"))?;
        let remote_target = contact_uri(&invite.headers).ok_or(DialogError::Header("Contact"))?;
        Ok(Dialog {
            call_id,
            local_tag: local_tag.to_owned(),
            remote_tag,
            local_header,
            remote_header: from.to_owned(),
            remote_target,
            route_set: record_routes(&invite.headers),
            local_seq: 0,
            remote_seq: Some(cseq.seq),
            local_contact: local_contact.to_owned(),
            state: DialogState::Early,
        })
    }

    /// The UAC side of the dialog that `response` (1xx with a tag, or 2xx) to our `invite`
    /// creates.
    pub fn uac(invite: &Request, response: &Response) -> Result<Dialog, DialogError> {
        let call_id = header_value(&invite.headers, Field::CallId)?.to_owned();
        let from = header_value(&invite.headers, Field::From)?;
        let to = header_value(&response.headers, Field::To)?;
        let local_tag = parse::tag(from).ok_or(DialogError::Header("From tag"))?;
        let remote_tag = parse::tag(to).ok_or(DialogError::NoRemoteTag)?;
        let cseq = parse::cseq(&invite.headers).map_err(|_| DialogError::Header("CSeq"))?;
        let remote_target = contact_uri(&response.headers)
            .or_else(|| Some(invite.uri.to_string()))
            .unwrap_or_default();
        let mut route_set = record_routes(&response.headers);
        route_set.reverse();
        let local_contact = invite
            .headers
            .iter()
            .find_map(|h| match h {
                Header::Contact(c) => Some(c.value().to_owned()),
                _ => None,
            })
            .unwrap_or_default();
        let code = response.status_code.code();
        Ok(Dialog {
            call_id,
            local_tag,
            remote_tag,
            local_header: from.to_owned(),
            remote_header: to.to_owned(),
            remote_target,
            route_set,
            local_seq: cseq.seq,
            remote_seq: None,
            local_contact,
            state: if (200..300).contains(&code) {
                DialogState::Confirmed
            } else {
                DialogState::Early
            },
        })
    }

    /// The peer's From/To value (with its tag) as we write it in requests we send.
    pub fn remote_header(&self) -> &str {
        &self.remote_header
    }

    /// Whether `req` belongs to this dialog (Call-ID, To tag = ours, From tag = theirs).
    pub fn matches(&self, req: &Request) -> bool {
        let (Ok(call_id), Ok(from), Ok(to)) = (
            header_value(&req.headers, Field::CallId),
            header_value(&req.headers, Field::From),
            header_value(&req.headers, Field::To),
        ) else {
            return false;
        };
        call_id == self.call_id
            && parse::tag(to).as_deref() == Some(self.local_tag.as_str())
            && parse::tag(from).unwrap_or_default() == self.remote_tag
    }

    /// A request from the peer inside the dialog (§12.2.2): checks the CSeq order (not for
    /// ACK and CANCEL, which reuse their INVITE's number) and refreshes the remote target on
    /// re-INVITE and UPDATE.
    pub fn on_request(&mut self, req: &Request) -> Result<(), DialogError> {
        if matches!(req.method, Method::Ack | Method::Cancel) {
            return Ok(());
        }
        let cseq = parse::cseq(&req.headers).map_err(|_| DialogError::Header("CSeq"))?;
        if let Some(last) = self.remote_seq {
            if cseq.seq < last || (cseq.seq == last && req.method != Method::Invite) {
                return Err(DialogError::CSeqOrder {
                    got: cseq.seq,
                    last,
                });
            }
        }
        self.remote_seq = Some(cseq.seq);
        if matches!(req.method, Method::Invite | Method::Update) {
            if let Some(target) = contact_uri(&req.headers) {
                self.remote_target = target;
            }
        }
        Ok(())
    }

    /// A response to a request we sent in this dialog: a 2xx confirms an early dialog, and a
    /// 2xx to INVITE/UPDATE refreshes the remote target; the 2xx to the initial INVITE also
    /// recomputes the route set (§13.2.2.4).
    pub fn on_response(&mut self, method: Method, response: &Response) {
        let code = response.status_code.code();
        if !(200..300).contains(&code) {
            return;
        }
        if method == Method::Invite && self.state == DialogState::Early {
            let mut rs = record_routes(&response.headers);
            rs.reverse();
            self.route_set = rs;
            if let Ok(to) = header_value(&response.headers, Field::To) {
                self.remote_header = to.to_owned();
            }
        }
        if method == Method::Invite {
            self.state = DialogState::Confirmed;
        }
        if matches!(method, Method::Invite | Method::Update) {
            if let Some(target) = contact_uri(&response.headers) {
                self.remote_target = target;
            }
        }
    }

    /// A new request in the dialog (BYE, re-INVITE, UPDATE, INFO, …) with the next CSeq and
    /// `via` as its only Via value. Add a body with [`with_body`].
    pub fn request(&mut self, method: Method, via: &str) -> Request {
        self.local_seq = self.local_seq.wrapping_add(1);
        let seq = self.local_seq;
        self.build(method, via, seq)
    }

    /// The ACK for a 2xx to the INVITE with CSeq number `invite_seq` (§13.2.2.4).
    pub fn ack(&self, invite_seq: u32, via: &str) -> Request {
        self.build(Method::Ack, via, invite_seq)
    }

    fn build(&self, method: Method, via: &str, seq: u32) -> Request {
        // §12.2.1.1: loose routing if the first route has `lr`, strict routing otherwise.
        let mut routes: Vec<String> = self.route_set.clone();
        let strict = routes
            .first()
            .and_then(|r| uri_of_route(r))
            .is_some_and(|a| !a.uri.contains(";lr"));
        let target = if strict {
            let first = routes.remove(0);
            routes.push(format!("<{}>", self.remote_target));
            uri_of_route(&first)
                .map(|a| a.uri)
                .unwrap_or_else(|| self.remote_target.clone())
        } else {
            self.remote_target.clone()
        };
        let uri = message::parse_uri(&target).unwrap_or_default();
        let mut b = RequestBuilder::new(method, uri, via)
            .routes(routes)
            .from(&self.local_header, None)
            .to(&self.remote_header, None)
            .call_id(self.call_id.clone())
            .cseq(seq);
        if matches!(method, Method::Invite | Method::Update) && !self.local_contact.is_empty() {
            b = b.contact(self.local_contact.clone());
        }
        b.build()
    }
}

/// Puts `body` of type `content_type` into `headers` (replacing Content-Type and
/// Content-Length); an empty body removes Content-Type.
pub fn set_body(headers: &mut Headers, body: &mut Vec<u8>, new: Vec<u8>, content_type: &str) {
    let kept: Vec<Header> = headers
        .iter()
        .filter(|h| {
            !matches!(h, Header::ContentLength(_) | Header::ContentType(_))
                && !matches!(h, Header::Other(n, _) if ["l", "c"].iter().any(|c| n.trim().eq_ignore_ascii_case(c)))
        })
        .cloned()
        .collect();
    *headers = kept.into();
    if !new.is_empty() {
        headers.push(Header::ContentType(ContentType::new(content_type)));
    }
    headers.push(Header::ContentLength(ContentLength::new(
        new.len().to_string(),
    )));
    *body = new;
}

/// [`set_body`] on a request.
pub fn with_body(mut req: Request, body: Vec<u8>, content_type: &str) -> Request {
    set_body(&mut req.headers, &mut req.body, body, content_type);
    req
}

/// [`set_body`] on a response.
pub fn response_with_body(mut resp: Response, body: Vec<u8>, content_type: &str) -> Response {
    set_body(&mut resp.headers, &mut resp.body, body, content_type);
    resp
}

/// The Content-Type of a message, lowercased, without parameters.
pub fn content_type(headers: &Headers) -> Option<String> {
    headers.iter().find_map(|h| {
        let v = match h {
            Header::ContentType(c) => c.value(),
            Header::Other(n, v) if n.trim().eq_ignore_ascii_case("c") => v.as_str(),
            _ => return None,
        };
        Some(
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{parse, serialize_request, SipMessage};

    fn req(text: &str) -> Request {
        match parse(text.replace('\n', "\r\n").as_bytes()) {
            Ok(SipMessage::Request(r)) => r,
            other => panic!("not a request: {other:?}"),
        }
    }

    fn resp(text: &str) -> Response {
        match parse(text.replace('\n', "\r\n").as_bytes()) {
            Ok(SipMessage::Response(r)) => r,
            other => panic!("not a response: {other:?}"),
        }
    }

    const INVITE: &str = "INVITE sip:bob@gw.example SIP/2.0
Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKa1
Max-Forwards: 70
Record-Route: <sip:p1.example;lr>, <sip:p2.example;lr>
From: \"Alice\" <sip:alice@example>;tag=from1
To: <sip:bob@gw.example>
Call-ID: c1@10.0.0.1
CSeq: 10 INVITE
Contact: <sip:alice@10.0.0.1:5060>
Content-Length: 0

";

    #[test]
    fn uas_dialog_builds_bye_with_route_set_and_tags() {
        let invite = req(INVITE);
        let mut d = Dialog::uas(&invite, "gw1", "<sip:gw@192.0.2.1>").expect("dialog");
        assert_eq!(d.remote_tag, "from1");
        assert_eq!(d.remote_target, "sip:alice@10.0.0.1:5060");
        let bye = d.request(Method::Bye, "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKb1");
        let text = String::from_utf8(serialize_request(&bye)).expect("utf-8");
        assert!(
            text.starts_with("BYE sip:alice@10.0.0.1:5060 SIP/2.0\r\n"),
            "{text}"
        );
        assert!(
            text.contains("From: <sip:bob@gw.example>;tag=gw1\r\n"),
            "{text}"
        );
        assert!(
            text.contains("To: \"Alice\" <sip:alice@example>;tag=from1\r\n"),
            "{text}"
        );
        assert!(text.contains("CSeq: 1 BYE\r\n"), "{text}");
        let r1 = text.find("Route: <sip:p1.example;lr>").expect("route 1");
        let r2 = text.find("Route: <sip:p2.example;lr>").expect("route 2");
        assert!(r1 < r2, "UAS keeps Record-Route order");
        assert!(parse(text.as_bytes()).is_ok(), "what we build parses");
    }

    #[test]
    fn uas_checks_cseq_order_and_refreshes_target() {
        let invite = req(INVITE);
        let mut d = Dialog::uas(&invite, "gw1", "").expect("dialog");
        let reinvite = req(&INVITE
            .replace(
                "To: <sip:bob@gw.example>",
                "To: <sip:bob@gw.example>;tag=gw1",
            )
            .replace("CSeq: 10", "CSeq: 11")
            .replace("alice@10.0.0.1:5060>", "alice@10.0.0.9:5062>"));
        assert!(d.matches(&reinvite));
        d.on_request(&reinvite).expect("in order");
        assert_eq!(d.remote_target, "sip:alice@10.0.0.9:5062");
        let old = req(&INVITE
            .replace(
                "To: <sip:bob@gw.example>",
                "To: <sip:bob@gw.example>;tag=gw1",
            )
            .replace("CSeq: 10 INVITE", "CSeq: 9 BYE")
            .replace("INVITE sip", "BYE sip"));
        assert_eq!(
            d.on_request(&old),
            Err(DialogError::CSeqOrder { got: 9, last: 11 })
        );
        let other = req(&INVITE.replace(
            "To: <sip:bob@gw.example>",
            "To: <sip:bob@gw.example>;tag=zz",
        ));
        assert!(!d.matches(&other));
    }

    #[test]
    fn uac_dialog_from_2xx_reverses_routes_and_acks() {
        let invite = req(&INVITE.replace(
            "Record-Route: <sip:p1.example;lr>, <sip:p2.example;lr>\n",
            "",
        ));
        let ok = resp(
            "SIP/2.0 200 OK
Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKa1
Record-Route: <sip:p1.example;lr>
Record-Route: <sip:p2.example;lr>
From: \"Alice\" <sip:alice@example>;tag=from1
To: <sip:bob@gw.example>;tag=bobtag
Call-ID: c1@10.0.0.1
CSeq: 10 INVITE
Contact: <sip:bob@10.0.0.2:5070;transport=udp>
Content-Length: 0

",
        );
        let mut d = Dialog::uac(&invite, &ok).expect("dialog");
        assert_eq!(d.state, DialogState::Confirmed);
        assert_eq!(
            d.route_set,
            vec!["<sip:p2.example;lr>", "<sip:p1.example;lr>"]
        );
        let ack = d.ack(10, "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKack");
        let text = String::from_utf8(serialize_request(&ack)).expect("utf-8");
        assert!(text.contains("CSeq: 10 ACK\r\n"), "{text}");
        assert!(
            text.contains("To: <sip:bob@gw.example>;tag=bobtag\r\n"),
            "{text}"
        );
        let bye = d.request(Method::Bye, "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKbye");
        let text = String::from_utf8(serialize_request(&bye)).expect("utf-8");
        assert!(text.contains("CSeq: 11 BYE\r\n"), "{text}");
        assert!(
            text.to_ascii_lowercase()
                .starts_with("bye sip:bob@10.0.0.2:5070;transport=udp sip/2.0"),
            "{text}"
        );
    }

    #[test]
    fn strict_route_goes_into_the_request_uri() {
        let invite = req(&INVITE.replace(
            "<sip:p1.example;lr>, <sip:p2.example;lr>",
            "<sip:strict.example>",
        ));
        let mut d = Dialog::uas(&invite, "t", "").expect("dialog");
        let bye = d.request(Method::Bye, "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKs");
        let text = String::from_utf8(serialize_request(&bye)).expect("utf-8");
        assert!(text.starts_with("BYE sip:strict.example SIP/2.0"), "{text}");
        assert!(
            text.contains("Route: <sip:alice@10.0.0.1:5060>\r\n"),
            "{text}"
        );
    }

    #[test]
    fn response_without_tag_makes_no_dialog_and_bad_input_never_panics() {
        let invite = req(INVITE);
        let r = resp(
            "SIP/2.0 180 Ringing
Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKa1
From: <sip:alice@example>;tag=from1
To: <sip:bob@gw.example>
Call-ID: c1@10.0.0.1
CSeq: 10 INVITE
Content-Length: 0

",
        );
        assert_eq!(Dialog::uac(&invite, &r), Err(DialogError::NoRemoteTag));
        let no_contact = req(&INVITE.replace("Contact: <sip:alice@10.0.0.1:5060>\n", ""));
        assert_eq!(
            Dialog::uas(&no_contact, "t", ""),
            Err(DialogError::Header("Contact"))
        );
    }

    #[test]
    fn bodies_replace_content_headers() {
        let invite = req(INVITE);
        let mut d = Dialog::uas(&invite, "gw1", "<sip:gw@192.0.2.1>").expect("dialog");
        let re = with_body(
            d.request(Method::Invite, "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKr"),
            b"v=0\r\n".to_vec(),
            "application/sdp",
        );
        let text = String::from_utf8(serialize_request(&re)).expect("utf-8");
        assert!(text.contains("Content-Type: application/sdp\r\n"), "{text}");
        assert!(text.contains("Content-Length: 5\r\n"), "{text}");
        assert!(text.contains("Contact: <sip:gw@192.0.2.1>\r\n"), "{text}");
        assert_eq!(text.matches("Content-Length").count(), 1);
        assert_eq!(
            content_type(&re.headers).as_deref(),
            Some("application/sdp")
        );
    }
}

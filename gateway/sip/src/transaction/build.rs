//! Messages the transaction layer builds itself: the ACK for a non-2xx final response
//! (§17.1.1.3), CANCEL (§9.1) and the 100 (Trying) of a server INVITE transaction (§17.2.1).

use rsip::headers::{ContentLength, UntypedHeader};
use rsip::{Header, Headers, Request, Response};

use super::parse::{self, Field};
use crate::builder::RequestBuilder;

fn push_first(out: &mut Headers, from: &Headers, field: Field) {
    if let Some(h) = parse::first(from, field) {
        out.push(h.clone());
    }
}

fn field(req: &Request, field: Field) -> &str {
    parse::first(&req.headers, field)
        .and_then(|h| parse::field_value(h, field))
        .unwrap_or_default()
}

/// ACK and CANCEL, built by the one request builder: a single Via (the request's top Via),
/// Max-Forwards, the Route set, From, To (`to` if given), Call-ID, CSeq `<seq> <method>`.
fn hop_request(
    req: &Request,
    method: rsip::Method,
    top_via: &str,
    seq: u32,
    to: Option<&str>,
) -> Request {
    let routes = req.headers.iter().filter_map(|h| match h {
        Header::Route(r) => Some(r.value().to_owned()),
        _ => None,
    });
    let max_forwards = req
        .headers
        .iter()
        .find_map(|h| match h {
            Header::MaxForwards(m) => Some(m.value()),
            _ => None,
        })
        .unwrap_or("70");
    RequestBuilder::new(method, req.uri.clone(), top_via)
        .max_forwards_value(max_forwards)
        .routes(routes.collect::<Vec<_>>())
        .from(field(req, Field::From), None)
        .to(to.unwrap_or_else(|| field(req, Field::To)), None)
        .call_id(field(req, Field::CallId))
        .cseq(seq)
        .build()
}

/// The ACK for a non-2xx final response (§17.1.1.3): Request-URI, Call-ID, From, top Via and
/// Route set of the INVITE, the To of the response (with its tag), CSeq number of the INVITE.
pub(crate) fn ack(invite: &Request, response: &Response, top_via: &str, seq: u32) -> Request {
    let to =
        parse::first(&response.headers, Field::To).and_then(|h| parse::field_value(h, Field::To));
    hop_request(invite, rsip::Method::Ack, top_via, seq, to)
}

/// The CANCEL of a pending INVITE (§9.1): same Request-URI, Call-ID, From, To, CSeq number,
/// a single Via equal to the INVITE's top Via, same Route set.
pub(crate) fn cancel(invite: &Request, top_via: &str, seq: u32) -> Request {
    hop_request(invite, rsip::Method::Cancel, top_via, seq, None)
}

/// A 100 (Trying) for a request (§8.2.6): all Vias, From, To, Call-ID, CSeq and Timestamp
/// copied; no To tag is added (§8.2.6.2 allows that for 100).
pub(crate) fn trying(req: &Request) -> Response {
    let mut headers = Headers::default();
    for h in req.headers.iter() {
        if parse::field_value(h, Field::Via).is_some() {
            headers.push(h.clone());
        }
    }
    push_first(&mut headers, &req.headers, Field::From);
    push_first(&mut headers, &req.headers, Field::To);
    push_first(&mut headers, &req.headers, Field::CallId);
    push_first(&mut headers, &req.headers, Field::CSeq);
    if let Some(ts) = req
        .headers
        .iter()
        .find(|h| matches!(h, Header::Timestamp(_)))
    {
        headers.push(ts.clone());
    }
    headers.push(Header::ContentLength(ContentLength::default()));
    Response {
        status_code: rsip::StatusCode::Trying,
        version: rsip::Version::V2,
        headers,
        body: Vec::new(),
    }
}

//! Messages the transaction layer builds itself: the ACK for a non-2xx final response
//! (§17.1.1.3), CANCEL (§9.1) and the 100 (Trying) of a server INVITE transaction (§17.2.1).

use rsip::headers::{CSeq, ContentLength, MaxForwards, UntypedHeader, Via};
use rsip::{Header, Headers, Request, Response};

use super::parse::{self, Field};

fn push_first(out: &mut Headers, from: &Headers, field: Field) {
    if let Some(h) = parse::first(from, field) {
        out.push(h.clone());
    }
}

/// Headers shared by ACK and CANCEL: a single Via (the request's top Via), the Route set,
/// Max-Forwards, From, To (`to` if given), Call-ID, CSeq `<seq> <method>`.
fn hop_request(
    req: &Request,
    method: rsip::Method,
    top_via: &str,
    seq: u32,
    to: Option<&Header>,
) -> Request {
    let mut headers = Headers::default();
    headers.push(Header::Via(Via::new(top_via)));
    for h in req.headers.iter() {
        if matches!(h, Header::Route(_)) {
            headers.push(h.clone());
        }
    }
    let max_forwards = req
        .headers
        .iter()
        .find(|h| matches!(h, Header::MaxForwards(_)))
        .cloned()
        .unwrap_or_else(|| Header::MaxForwards(MaxForwards::default()));
    headers.push(max_forwards);
    push_first(&mut headers, &req.headers, Field::From);
    match to {
        Some(to) => headers.push(to.clone()),
        None => push_first(&mut headers, &req.headers, Field::To),
    }
    push_first(&mut headers, &req.headers, Field::CallId);
    headers.push(Header::CSeq(CSeq::new(format!("{seq} {method}"))));
    headers.push(Header::ContentLength(ContentLength::default()));
    Request {
        method,
        uri: req.uri.clone(),
        version: rsip::Version::V2,
        headers,
        body: Vec::new(),
    }
}

/// The ACK for a non-2xx final response (§17.1.1.3): Request-URI, Call-ID, From, top Via and
/// Route set of the INVITE, the To of the response (with its tag), CSeq number of the INVITE.
pub(crate) fn ack(invite: &Request, response: &Response, top_via: &str, seq: u32) -> Request {
    let to = parse::first(&response.headers, Field::To);
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

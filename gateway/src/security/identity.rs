//! True caller identity: the From and P-Asserted-Identity (RFC 3325) of a request a device
//! authenticated must name that device (its user name or its extension) unless the device may
//! present other identities (`present_any` in the device table). Trunks are trusted to assert
//! identities and are not checked. The display name is free text and not compared.

use crate::sip::message::{self, Header, Request};

/// The user part of every identity the request presents: the From URI's, then each
/// P-Asserted-Identity entry's (a `tel:` URI's number). An identity without a user part is
/// `""`.
pub fn presented(req: &Request) -> Vec<String> {
    let mut out = Vec::new();
    for h in req.headers.iter() {
        let (value, multi) = match h {
            Header::From(f) => (rsip::headers::UntypedHeader::value(f), false),
            Header::Other(name, v) if name.trim().eq_ignore_ascii_case("P-Asserted-Identity") => {
                (v.as_str(), true)
            }
            _ => continue,
        };
        match message::parse_addresses(value, multi) {
            Some(list) => out.extend(list.iter().map(|a| user_of_uri(&a.uri))),
            // An identity we cannot read cannot be shown to be the device's.
            None => out.push(String::new()),
        }
    }
    out
}

/// The user part of a `sip:`/`sips:` URI, or a `tel:` URI's number.
fn user_of_uri(uri: &str) -> String {
    let uri = uri.trim();
    if let Some(num) = uri
        .get(..4)
        .filter(|s| s.eq_ignore_ascii_case("tel:"))
        .and_then(|_| uri.get(4..))
    {
        return num.split(';').next().unwrap_or("").to_owned();
    }
    message::parse_uri(uri)
        .and_then(|u| u.auth.map(|a| a.user))
        .unwrap_or_default()
}

/// The first identity of `req` that is none of `own` (the device's user name and extension),
/// if any: `Some` means the request must be refused with 403.
pub fn foreign_identity(req: &Request, own: &[&str]) -> Option<String> {
    presented(req)
        .into_iter()
        .find(|u| !own.iter().any(|o| !o.is_empty() && o == u))
}

/// The identity a request presents for the record: its first P-Asserted-Identity, else its
/// From user.
pub fn presented_number(req: &Request) -> String {
    let all = presented(req);
    let from_count = req
        .headers
        .iter()
        .filter(|h| matches!(h, Header::From(_)))
        .count();
    all.get(from_count)
        .or_else(|| all.first())
        .cloned()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::{parse, SipMessage};

    fn invite(extra: &str, from: &str) -> Request {
        let text = format!(
            "INVITE sip:3000@gw SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKx\r\n\
             From: {from};tag=a\r\nTo: <sip:3000@gw>\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\n\
             Max-Forwards: 70\r\n{extra}Content-Length: 0\r\n\r\n"
        );
        match parse(text.as_bytes()) {
            Ok(SipMessage::Request(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn own_identity_passes_and_a_spoof_does_not() {
        let own = invite("", "\"Any Name\" <sip:2002@gw>");
        assert_eq!(foreign_identity(&own, &["2002", ""]), None);
        let spoof = invite("", "\"CEO\" <sip:1000@gw>");
        assert_eq!(
            foreign_identity(&spoof, &["2002", ""]).as_deref(),
            Some("1000")
        );
        // The extension is the device's too.
        assert_eq!(foreign_identity(&spoof, &["alice", "1000"]), None);
    }

    #[test]
    fn p_asserted_identity_is_checked_too() {
        let r = invite(
            "P-Asserted-Identity: <sip:2002@gw>, <tel:+15551000>\r\n",
            "<sip:2002@gw>",
        );
        assert_eq!(
            foreign_identity(&r, &["2002"]).as_deref(),
            Some("+15551000")
        );
        assert_eq!(presented_number(&r), "2002");
        let r = invite("P-Asserted-Identity: <tel:+15551000>\r\n", "<sip:2002@gw>");
        assert_eq!(presented_number(&r), "+15551000");
        let r = invite("P-Asserted-Identity: <sip:2002@gw>\r\n", "<sip:2002@gw>");
        assert_eq!(foreign_identity(&r, &["2002"]), None);
    }

    #[test]
    fn anonymous_or_unreadable_is_foreign() {
        let r = invite("", "<sip:anonymous@anonymous.invalid>");
        assert!(foreign_identity(&r, &["2002"]).is_some());
        let r = invite("P-Asserted-Identity: garbage<<\r\n", "<sip:2002@gw>");
        assert_eq!(foreign_identity(&r, &["2002"]).as_deref(), Some(""));
    }
}

//! Helpers for the unit tests of the crates built on sip-core (feature `test-util`): the
//! gateway's B2BUA and the ACD's call control write their peers' messages the same way.

use crate::message::{parse, Request, SipMessage};

/// `text` (header lines ending in `\n`, no Content-Length) with `body` (SDP when not empty) as
/// a parsed request; panics on a message that does not parse (a broken test).
pub fn request(text: &str, body: &str) -> Request {
    match parse(with_body(text, body).as_bytes()) {
        Ok(SipMessage::Request(r)) => r,
        other => panic!("bad test request: {other:?}\n{text}"),
    }
}

fn with_body(text: &str, body: &str) -> String {
    let text = text.replace('\n', "\r\n");
    if body.is_empty() {
        format!("{text}Content-Length: 0\r\n\r\n")
    } else {
        format!(
            "{text}Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_requests_with_or_without_sdp() {
        let head = "INVITE sip:a@b SIP/2.0\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\n\
                    From: <sip:c@d>;tag=1\nTo: <sip:a@b>\nCall-ID: x\nCSeq: 1 INVITE\n";
        assert!(request(head, "").body.is_empty());
        let r = request(head, "v=0\r\n");
        assert_eq!(r.body, b"v=0\r\n");
        assert_eq!(
            crate::dialog::content_type(&r.headers).as_deref(),
            Some("application/sdp")
        );
    }
}

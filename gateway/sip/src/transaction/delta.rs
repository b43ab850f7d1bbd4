//! A completed transaction's final response, kept as what differs from its request (issue 16).
//!
//! Most of a final response is copied from the request it answers (RFC 3261 §8.2.6.2: Via,
//! From, To, Call-ID, CSeq), and a retransmission carries the same header fields as the
//! original request, byte for byte. So a response is kept as its status line, then per header
//! field either its text or a reference to a header field of the request plus the text that
//! follows it (`;tag=…` after a To), then the body. A retransmission rebuilds the response from
//! its own header fields. A hash of the referenced fields, taken when the response was encoded,
//! tells whether they are the same: if not (not a true retransmission), nothing is rebuilt.
//!
//! A 200 OK to a REGISTER (~400 bytes) keeps ~150: its status line, the To tag, the Contact
//! list and Content-Length.

use std::hash::{BuildHasher, Hasher};

use rsip::{Header, Headers};

/// A message's header fields, each as the serialiser writes it (without CRLF); credentials
/// as empty lines.
pub(super) struct Lines {
    buf: Vec<u8>,
    ends: Vec<usize>,
}

impl Lines {
    pub(super) fn of(headers: &Headers) -> Self {
        let mut buf = Vec::with_capacity(512);
        let mut ends = Vec::with_capacity(16);
        for h in headers.iter() {
            // A response never repeats a request's credentials (the longest field of an
            // authenticated REGISTER): never referenced, so not written. Encoder and decoder
            // both take them as empty, below `MIN_REF`.
            if !matches!(h, Header::Authorization(_) | Header::ProxyAuthorization(_)) {
                crate::message::write_header_line(&mut buf, h);
            }
            ends.push(buf.len());
        }
        Self { buf, ends }
    }

    fn get(&self, i: usize) -> Option<&[u8]> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        self.buf.get(start..end)
    }

    fn iter(&self) -> impl Iterator<Item = &[u8]> {
        (0..self.ends.len()).filter_map(|i| self.get(i))
    }
}

/// The shortest request field worth a reference.
const MIN_REF: usize = 8;

/// Format bytes: the response as it was (not in the expected shape), or encoded.
const RAW: u8 = 0;
const DELTA: u8 = 1;

pub(super) fn put(out: &mut Vec<u8>, mut v: usize) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(super) fn take(data: &[u8], pos: &mut usize) -> Option<usize> {
    let mut v: usize = 0;
    for shift in (0..usize::BITS).step_by(7) {
        let b = *data.get(*pos)?;
        *pos += 1;
        v |= usize::from(b & 0x7f).checked_shl(shift)?;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

pub(super) fn bytes<'a>(data: &'a [u8], pos: &mut usize, len: usize) -> Option<&'a [u8]> {
    let s = data.get(*pos..pos.checked_add(len)?)?;
    *pos += len;
    Some(s)
}

fn split_crlf(data: &[u8]) -> Option<(&[u8], &[u8])> {
    // memchr to each CR (a two-byte window per byte costs more than the whole encoding).
    let i = memchr::memchr_iter(b'\r', data).find(|&i| data.get(i + 1) == Some(&b'\n'))?;
    Some((&data[..i], &data[i + 2..]))
}

/// Appends to `out` the encoding of `response` (a serialised response) against the header
/// fields of the request it answers; returns the check [`decode`] needs.
pub(super) fn encode(
    response: &[u8],
    request: &Lines,
    hasher: &impl BuildHasher,
    out: &mut Vec<u8>,
) -> u64 {
    let mut check = hasher.build_hasher();
    let start = out.len();
    let shaped = (|| {
        let (status, mut rest) = split_crlf(response)?;
        out.push(DELTA);
        put(out, status.len());
        out.extend_from_slice(status);
        let mut lines = Vec::with_capacity(16);
        loop {
            let (line, after) = split_crlf(rest)?;
            rest = after;
            if line.is_empty() {
                break;
            }
            lines.push(line);
        }
        put(out, lines.len());
        for line in lines {
            let first = line.first();
            let best = request
                .iter()
                .enumerate()
                // The first byte before the whole prefix: most fields differ there.
                .filter(|(_, r)| r.len() >= MIN_REF && r.first() == first && line.starts_with(r))
                .max_by_key(|(i, r)| (r.len(), std::cmp::Reverse(*i)));
            match best {
                Some((i, r)) => {
                    put(out, i + 1);
                    check.write_usize(i);
                    check.write(r);
                    let suffix = &line[r.len()..];
                    put(out, suffix.len());
                    out.extend_from_slice(suffix);
                }
                None => {
                    put(out, 0);
                    put(out, line.len());
                    out.extend_from_slice(line);
                }
            }
        }
        out.extend_from_slice(rest);
        Some(())
    })();
    if shaped.is_none() {
        out.truncate(start);
        out.push(RAW);
        out.extend_from_slice(response);
    }
    check.finish()
}

/// Rebuilds the response encoded in `data` from `request`'s header fields, or `None` if they
/// are not the fields it was encoded against (`check`), or `data` is not an encoding.
pub(super) fn decode(
    data: &[u8],
    request: &Lines,
    hasher: &impl BuildHasher,
    check: u64,
) -> Option<Vec<u8>> {
    let (&format, data) = data.split_first()?;
    let mut h = hasher.build_hasher();
    if format == RAW {
        return (check == h.finish()).then(|| data.to_vec());
    }
    if format != DELTA {
        return None;
    }
    let mut out = Vec::with_capacity(512);
    let mut pos = 0;
    let len = take(data, &mut pos)?;
    out.extend_from_slice(bytes(data, &mut pos, len)?);
    out.extend_from_slice(b"\r\n");
    let n = take(data, &mut pos)?;
    for _ in 0..n {
        let r = take(data, &mut pos)?;
        if let Some(i) = r.checked_sub(1) {
            let line = request.get(i)?;
            h.write_usize(i);
            h.write(line);
            out.extend_from_slice(line);
        }
        let len = take(data, &mut pos)?;
        out.extend_from_slice(bytes(data, &mut pos, len)?);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data.get(pos..)?);
    (h.finish() == check).then_some(out)
}

#[cfg(test)]
mod tests {
    use std::hash::RandomState;

    use super::*;
    use crate::message::{parse, response_for, serialize_response};
    use rsip::headers::UntypedHeader;
    use rsip::{Header, Request, SipMessage};

    fn register(via: &str) -> Request {
        let text = format!(
            "REGISTER sip:example.com SIP/2.0\r\n\
             Via: SIP/2.0/UDP {via};branch=z9hG4bK-776asdhds;rport=5061;received=192.0.2.7\r\n\
             Max-Forwards: 70\r\n\
             To: <sip:1000@example.com>\r\n\
             From: <sip:1000@example.com>;tag=1928301774\r\n\
             Call-ID: a84b4c76e66710@pc33.example.com\r\n\
             CSeq: 314159 REGISTER\r\n\
             Contact: <sip:1000@192.0.2.7:5061>\r\n\
             Authorization: Digest username=\"1000\", realm=\"example.com\", nonce=\"abc\", uri=\"sip:example.com\", response=\"0123456789abcdef0123456789abcdef\"\r\n\
             Content-Length: 0\r\n\r\n"
        );
        match parse(text.as_bytes()).unwrap() {
            SipMessage::Request(r) => r,
            SipMessage::Response(_) => unreachable!(),
        }
    }

    fn ok(req: &Request) -> Vec<u8> {
        let mut r = response_for(req, 200, "OK");
        let mut headers: Vec<Header> = r.headers.iter().cloned().collect();
        let at = headers
            .iter()
            .position(|h| matches!(h, Header::ContentLength(_)));
        headers.insert(
            at.unwrap(),
            Header::Contact(rsip::headers::Contact::new(
                "<sip:1000@192.0.2.7:5061>;expires=3600",
            )),
        );
        r.headers = headers.into();
        serialize_response(&r)
    }

    #[test]
    fn a_register_200_is_rebuilt_byte_for_byte_from_a_retransmission() {
        let s = RandomState::new();
        let req = register("192.0.2.7:5061");
        let wire = ok(&req);
        let mut enc = vec![];
        let check = encode(&wire, &Lines::of(&req.headers), &s, &mut enc);
        eprintln!(
            "200 OK: {} bytes on the wire, {} kept",
            wire.len(),
            enc.len()
        );
        assert!(
            enc.len() * 2 < wire.len(),
            "{} of {}",
            enc.len(),
            wire.len()
        );
        let again = register("192.0.2.7:5061");
        assert_eq!(
            decode(&enc, &Lines::of(&again.headers), &s, check),
            Some(wire)
        );
    }

    #[test]
    fn credentials_are_not_written_and_change_no_encoding() {
        let s = RandomState::new();
        let req = register("192.0.2.7:5061");
        let wire = ok(&req);
        let mut full = Lines {
            buf: vec![],
            ends: vec![],
        };
        for h in req.headers.iter() {
            crate::message::write_header_line(&mut full.buf, h);
            full.ends.push(full.buf.len());
        }
        let lines = Lines::of(&req.headers);
        assert!(lines.buf.len() + 100 < full.buf.len());
        let (mut a, mut b) = (vec![], vec![]);
        let check_a = encode(&wire, &lines, &s, &mut a);
        let check_b = encode(&wire, &full, &s, &mut b);
        assert_eq!((a, check_a), (b, check_b));
    }

    #[test]
    fn a_request_with_other_fields_rebuilds_nothing() {
        let s = RandomState::new();
        let req = register("192.0.2.7:5061");
        let mut enc = vec![];
        let check = encode(&ok(&req), &Lines::of(&req.headers), &s, &mut enc);
        let other = register("192.0.2.8:5061");
        assert_eq!(decode(&enc, &Lines::of(&other.headers), &s, check), None);
        let mut fewer = req.clone();
        fewer.headers = fewer
            .headers
            .iter()
            .take(2)
            .cloned()
            .collect::<Vec<_>>()
            .into();
        assert_eq!(decode(&enc, &Lines::of(&fewer.headers), &s, check), None);
    }

    #[test]
    fn a_response_of_another_shape_is_kept_whole_and_truncated_data_decodes_to_nothing() {
        let s = RandomState::new();
        let req = register("192.0.2.7:5061");
        let lines = Lines::of(&req.headers);
        let odd = b"SIP/2.0 200 OK\r\nVia: x".to_vec();
        let mut enc = vec![];
        let check = encode(&odd, &lines, &s, &mut enc);
        assert_eq!(decode(&enc, &lines, &s, check), Some(odd));
        let wire = ok(&req);
        let mut enc = vec![];
        let check = encode(&wire, &lines, &s, &mut enc);
        for cut in 0..enc.len() {
            let d = decode(&enc[..cut], &lines, &s, check);
            assert!(
                d.as_deref() != Some(&wire[..]) || cut == enc.len(),
                "cut {cut}"
            );
        }
        assert_eq!(decode(&[7, 1, 2], &lines, &s, check), None);
    }

    #[test]
    fn varints_round_trip() {
        for v in [
            0usize,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            1 << 40,
            usize::MAX,
        ] {
            let mut out = vec![];
            put(&mut out, v);
            let mut pos = 0;
            assert_eq!(take(&out, &mut pos), Some(v));
            assert_eq!(pos, out.len());
        }
        let mut pos = 0;
        assert_eq!(take(&[0xff; 12], &mut pos), None);
    }
}

//! Differential tests: the current parse path against [`super::reference`], the parse path as
//! it was before branch h2's instruction-count work.
//!
//! Under `cfg(test)` every call of [`super::parse`] (from any unit test of this crate) is also
//! run through the reference, and the two results must be equal: same accept/reject, same
//! [`super::ParseErrorKind`], same reply, same message. The tests below add the RFC 4475 torture
//! corpus and a few thousand deterministic mutations of it and of typical REGISTERs and INVITEs,
//! and compare the header grammar ([`super::grammar::check_field`], the address lists) field by
//! field as well.

use std::path::{Path, PathBuf};

use super::{grammar, reference, ParseError, SipMessage};

/// Panics unless `parsed` (the current parse of `bytes`) is what the reference parse gives.
pub(super) fn check(bytes: &[u8], parsed: &Result<SipMessage, ParseError>) {
    let expected = reference::parse(bytes);
    assert!(
        &expected == parsed,
        "parse differs from the reference for {:?}:\n  now:    {parsed:?}\n  before: {expected:?}",
        String::from_utf8_lossy(bytes)
    );
}

/// The header-field names whose grammar `check_field` knows, and two it does not.
const NAMES: &[&str] = &[
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
    "expires",
    "x-other",
];

/// Compares the grammar of one header value, old and new: `check_field` under its own name and
/// one more, the address lists and the Via list.
fn check_value(lname: &str, extra: usize, value: &str) {
    let other = NAMES[extra % NAMES.len()];
    for name in [lname, other] {
        assert_eq!(
            grammar::check_field(name, value),
            reference::grammar::check_field(name, value),
            "check_field({name:?}, {value:?})"
        );
    }
    for (multi, star) in [(false, false), (true, false), (true, true)] {
        assert_eq!(
            format!("{:?}", grammar::name_addrs(value, multi, star)),
            format!("{:?}", reference::grammar::name_addrs(value, multi, star)),
            "name_addrs({value:?}, {multi}, {star})"
        );
    }
    assert_eq!(
        format!("{:?}", grammar::via(value)),
        format!("{:?}", reference::grammar::via(value)),
        "via({value:?})"
    );
    assert_eq!(
        format!("{:?}", grammar::request_uri(value)),
        format!("{:?}", reference::grammar::request_uri(value)),
        "request_uri({value:?})"
    );
}

/// Parses `bytes` (which compares the whole parse with the reference) and compares the grammar
/// of every `name: value` line in it.
fn exercise(bytes: &[u8], n: usize) {
    let parsed = super::parse(bytes);
    check(bytes, &parsed);
    let text = String::from_utf8_lossy(bytes);
    for (i, line) in text.split("\r\n").enumerate() {
        if let Some((name, value)) = line.split_once(':') {
            let lname = name.trim().to_ascii_lowercase();
            check_value(&lname, n + i, value.trim_matches([' ', '\t']));
        }
    }
}

/// The corpus directory as `tests/rfc4475.rs` finds it; `None` (the test skips) only when it is
/// missing and `CALLFABRIC_ALLOW_MISSING_CORPUS=1` outside CI.
fn corpus_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("CALLFABRIC_CORPORA") {
        Some(dir) => PathBuf::from(dir).join("rfc4475"),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpora/rfc4475"),
    };
    if dir.join("INDEX.tsv").is_file() {
        return Some(dir);
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let allowed = std::env::var("CALLFABRIC_ALLOW_MISSING_CORPUS").is_ok_and(|v| v == "1");
    assert!(
        allowed && !ci,
        "RFC 4475 corpus not found at {}",
        dir.display()
    );
    eprintln!("SKIPPED: RFC 4475 corpus not found at {}", dir.display());
    None
}

fn corpus() -> Vec<Vec<u8>> {
    let Some(dir) = corpus_dir() else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("corpus directory")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "dat"))
        .collect();
    files.sort();
    assert!(files.len() >= 40, "only {} corpus files", files.len());
    files
        .iter()
        .map(|p| std::fs::read(p).expect("corpus file"))
        .collect()
}

const REGISTER: &str = "REGISTER sip:127.0.0.1:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-5170-1-0\r\n\
From: <sip:user0001@127.0.0.1:5060>;tag=5170L1\r\n\
To: <sip:user0001@127.0.0.1:5060>\r\n\
Call-ID: 1-5170@127.0.0.1\r\n\
CSeq: 2 REGISTER\r\n\
Contact: <sip:user0001@127.0.0.1:5061>\r\n\
Authorization: Digest username=\"user0001\",realm=\"example.com\",uri=\"sip:127.0.0.1:5060\",\
nonce=\"abcdef0123456789\",response=\"0123456789abcdef0123456789abcdef\",algorithm=MD5\r\n\
Max-Forwards: 70\r\n\
Expires: 3600\r\n\
Content-Length: 0\r\n\r\n";

const REGISTER_COMPACT: &str = "REGISTER sips:registrar.example.com SIP/2.0\r\n\
v: SIP/2.0/TLS [2001:db8::9]:5061;branch=z9hG4bKx;rport;received=192.0.2.1\r\n\
f: \"Alice A.\" <sips:alice%40x@example.com>;tag=a1\r\n\
t: Alice <sips:alice%40x@example.com>\r\n\
i: 843817637684230@998sdasdh09\r\n\
CSeq : 7 REGISTER\r\n\
m: <sips:alice@[2001:db8::9]:5061;transport=tls>;expires=60, \"B\" <sip:b@c.example>;q=0.5\r\n\
Require: path\r\n\
Supported: gruu, outbound\r\n\
Max-Forwards: 69\r\n\
l: 0\r\n\r\n";

const INVITE: &str = "INVITE sip:2001@gw.example.com;user=phone SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds , SIP/2.0/TCP h.example.com\r\n\
Max-Forwards: 70\r\n\
Route: <sip:p1.example.com;lr>,<sip:p2.example.com;lr>\r\n\
From: Bob <sip:1001@example.com>;tag=1928301774\r\n\
To: <sip:2001@example.com>\r\n\
Call-ID: a84b4c76e66710@pc33.example.com\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:1001@192.0.2.10:5060>\r\n\
Accept: application/sdp, text/*;q=0.5\r\n\
Date: Sat, 13 Nov 2010 23:29:00 GMT\r\n\
Subject: folded\r\n \tacross lines\r\n\
Proxy-Require: foo\r\n\
Content-Encoding: identity\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 31\r\n\r\n\
v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\n";

const RESPONSE: &str = "SIP/2.0 401 Unauthorized\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-5170-1-0;received=127.0.0.1;rport=5061\r\n\
From: <sip:user0001@127.0.0.1:5060>;tag=5170L1\r\n\
To: <sip:user0001@127.0.0.1:5060>;tag=cf0123456789abcdef\r\n\
Call-ID: 1-5170@127.0.0.1\r\n\
CSeq: 1 REGISTER\r\n\
WWW-Authenticate: Digest realm=\"example.com\", nonce=\"abc\", algorithm=MD5, qop=\"auth\"\r\n\
Content-Length: 0\r\n\r\n";

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Bytes that matter to the grammar, and a few that do not.
const INTERESTING: &[u8] = b"\r\n \t:;,<>\"@%\\[]./-=?&+*~_!'()#x5A\x00\x01\x7f\x80\xc3\xff";

/// One to three byte flips, inserts, deletions, duplications or case changes of a seed.
fn mutate(seeds: &[Vec<u8>], rng: &mut Rng) -> Vec<u8> {
    let mut m = seeds[rng.below(seeds.len())].clone();
    let ops = if rng.below(2) == 0 {
        1
    } else {
        1 + rng.below(3)
    };
    for _ in 0..ops {
        let len = m.len();
        let at = rng.below(len + 1);
        let byte = if rng.below(3) == 0 {
            (rng.next() & 0xff) as u8
        } else {
            INTERESTING[rng.below(INTERESTING.len())]
        };
        match rng.below(7) {
            0 | 1 if at < len => m[at] = byte,
            2 | 3 => m.insert(at, byte),
            4 if at < len => {
                let end = (at + 1 + rng.below(8)).min(len);
                m.drain(at..end);
            }
            5 if at < len => {
                let end = (at + 1 + rng.below(24)).min(len);
                let piece: Vec<u8> = m[at..end].to_vec();
                let to = rng.below(len + 1);
                m.splice(to..to, piece);
            }
            6 if at < len => m[at] = m[at].to_ascii_uppercase() ^ (m[at] & 0x20),
            _ => {}
        }
    }
    m
}

#[test]
fn corpus_parses_as_before() {
    for (n, msg) in corpus().iter().enumerate() {
        exercise(msg, n);
    }
}

#[test]
fn mutations_parse_as_before() {
    let mut seeds = corpus();
    for s in [REGISTER, REGISTER_COMPACT, INVITE, RESPONSE] {
        // Weighted: the messages the gateway sees most.
        for _ in 0..8 {
            seeds.push(s.as_bytes().to_vec());
        }
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut accepted, iterations) = (0, 10_000);
    for n in 0..iterations {
        let input = mutate(&seeds, &mut rng);
        exercise(&input, n);
        accepted += usize::from(super::parse(&input).is_ok());
    }
    println!("differential: {accepted} of {iterations} mutations parsed");
    // Enough of the mutations must stay parseable to compare accepted messages too.
    assert!(
        accepted > iterations / 10,
        "only {accepted} of {iterations} parsed"
    );
}

#[test]
fn typical_messages_parse_as_before() {
    for s in [REGISTER, REGISTER_COMPACT, INVITE, RESPONSE] {
        assert!(super::parse(s.as_bytes()).is_ok(), "{s}");
        exercise(s.as_bytes(), 0);
    }
}

/// `valid_hostname` against the reference on every string of up to six bytes over an alphabet
/// of each kind of byte it tells apart, and of up to nine over digits, dots and a letter.
#[test]
fn hostnames_are_judged_as_before() {
    let mut text = Vec::new();
    fn each(text: &mut Vec<u8>, alphabet: &[u8], left: usize) {
        let s = std::str::from_utf8(text).expect("ASCII");
        assert_eq!(
            grammar::valid_hostname(s),
            reference::grammar::valid_hostname(s),
            "{s:?}"
        );
        if left > 0 {
            for &b in alphabet {
                text.push(b);
                each(text, alphabet, left - 1);
                text.pop();
            }
        }
    }
    each(&mut text, b"a1-.Z0:", 6);
    // Long enough for four groups of digits.
    each(&mut text, b"1.a", 9);
    for s in [
        "1.2.3.4",
        "255.255.255.255",
        "1234.1.1.1",
        "1.2.3.4.",
        "a.b.c.d1",
        "1.2.3.a",
    ] {
        assert_eq!(
            grammar::valid_hostname(s),
            reference::grammar::valid_hostname(s),
            "{s:?}"
        );
    }
}

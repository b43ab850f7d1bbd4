//! RFC 4475 torture messages through `sip_core::message`, one test per corpus file, and a
//! deterministic mutation fuzz test.
//!
//! The corpus lives outside the repository, at `<repo>/../shared/corpora/rfc4475/` or
//! `$CALLFABRIC_CORPORA/rfc4475/` (its
//! `INDEX.tsv` gives each file's RFC section and class); it is read in place, never copied. When
//! it is missing the corpus tests fail, unless `CALLFABRIC_ALLOW_MISSING_CORPUS=1` lets them
//! skip (a fresh clone without `../shared`; `scripts/test.sh` then reports the skip in its
//! summary). Under `CI=true` a missing corpus always fails.
//!
//! Each file is checked against its INDEX class and the precise answer in [`corpus!`] below:
//! *valid* / *transaction* / *backward* messages parse and survive serialise → parse unchanged
//! (and serialising is a fixed point), then the UAS accepts them or, where the table says so,
//! refuses them for a stated reason (a body type it does not serve); *invalid* ones are rejected,
//! with the response a UAS sends (or none: dropped); *application* ones parse and round-trip,
//! and the UAS answers as the RFC section says.
//!
//! [`DEVIATIONS`] lists the files where we knowingly do something else, each with a check of what
//! we do instead: a file outside the list that fails, a listed file that now meets the RFC (fix:
//! remove it from the list and from ARCHITECTURE.md), and a listed file that deviates in another
//! way all fail the test.

use std::path::{Path, PathBuf};

use sip_core::message::{
    parse, serialize, serialize_response, validate_request, validate_response, ParseErrorKind,
    Response, SipMessage,
};

// ---------------------------------------------------------------------------------------------
// Corpus access
// ---------------------------------------------------------------------------------------------

/// `$CALLFABRIC_CORPORA/rfc4475` when set (e.g. from a git worktree elsewhere), else
/// `<repo>/../shared/corpora/rfc4475`.
fn corpus_path() -> PathBuf {
    if let Some(dir) = std::env::var_os("CALLFABRIC_CORPORA") {
        return PathBuf::from(dir).join("rfc4475");
    }
    // CARGO_MANIFEST_DIR is <repo>/gateway/sip.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("..")
        .join("..")
        .join("shared")
        .join("corpora")
        .join("rfc4475")
}

/// The corpus directory. When it is missing, the test fails unless
/// `CALLFABRIC_ALLOW_MISSING_CORPUS=1` allows skipping it (never under `CI=true`); a skip returns
/// `None` after saying so on stderr (`scripts/test.sh` repeats it in its summary).
fn corpus_dir() -> Option<PathBuf> {
    let dir = corpus_path();
    if dir.join("INDEX.tsv").is_file() {
        return Some(dir);
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let allowed = std::env::var("CALLFABRIC_ALLOW_MISSING_CORPUS").is_ok_and(|v| v == "1");
    if ci || !allowed {
        panic!(
            "RFC 4475 corpus not found at {} (check out the shared corpora next to the \
             repository; to skip these tests outside CI, set CALLFABRIC_ALLOW_MISSING_CORPUS=1)",
            dir.display()
        );
    }
    eprintln!(
        "SKIPPED: RFC 4475 corpus not found at {} (CALLFABRIC_ALLOW_MISSING_CORPUS=1)",
        dir.display()
    );
    None
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Valid,
    Invalid,
    Transaction,
    Application,
    Backward,
}

#[derive(Debug, Clone)]
struct Entry {
    file: String,
    section: String,
    class: Class,
}

fn index(dir: &Path) -> Vec<Entry> {
    let text = std::fs::read_to_string(dir.join("INDEX.tsv")).expect("read INDEX.tsv");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let cols: Vec<&str> = l.split('\t').collect();
            let [file, section, class] = cols[..] else {
                panic!("INDEX.tsv line {l:?} does not have 3 columns");
            };
            let class = match class {
                "valid" => Class::Valid,
                "invalid" => Class::Invalid,
                "transaction" => Class::Transaction,
                "application" => Class::Application,
                "backward" => Class::Backward,
                other => panic!("INDEX.tsv: unknown class {other:?} for {file}"),
            };
            Entry {
                file: file.to_owned(),
                section: section.to_owned(),
                class,
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// What we do with each file
// ---------------------------------------------------------------------------------------------

/// Our answer to one corpus message.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Parses, round-trips, and the UAS (or UAC, for a response) accepts it.
    Accept,
    /// `parse` rejects it; `Some(code)`: with that response ready to send, `None`: dropped.
    Reject(Option<u16>),
    /// Parses and round-trips; `validate_request` refuses it with `code`, and the response
    /// carries the header line given (e.g. 420's `Unsupported`).
    Refuse(u16, Option<&'static str>),
    /// A response that parses and round-trips; `validate_response` discards it.
    Discard,
}

/// A file where we knowingly differ from what RFC 4475 / INDEX.tsv asks.
struct Deviation {
    file: &'static str,
    /// What we do instead, and why (mirrored in ARCHITECTURE.md).
    what: &'static str,
    /// Checks that we do exactly that.
    check: fn(&[u8]) -> Result<(), String>,
}

const DEVIATIONS: &[Deviation] = &[
    Deviation {
        file: "intmeth.dat",
        what: "valid, but its extension method cannot be held by rsip (rsip::Method is a closed \
               enum): parse returns UnknownMethod with a ready 501 Not Implemented, which is what \
               this B2BUA answers to any method it does not implement (RFC 3261 §8.2.1)",
        check: |b| unknown_method_501(b, "!interesting-Method0123456789_*+`.%indeed'~"),
    },
    Deviation {
        file: "esc02.dat",
        what: "valid, but RE%47IST%45R is an extension method (escapes are not decoded in a \
               method), which rsip cannot hold: parse returns UnknownMethod with a ready 501",
        check: |b| unknown_method_501(b, "RE%47IST%45R"),
    },
];

fn unknown_method_501(bytes: &[u8], method: &str) -> Result<(), String> {
    let err = match parse(bytes) {
        Ok(_) => return Err("parsed".into()),
        Err(e) => e,
    };
    if err.kind() != &ParseErrorKind::UnknownMethod(method.to_owned()) {
        return Err(format!(
            "error is {:?}, not UnknownMethod({method:?})",
            err.kind()
        ));
    }
    let reply = err.reply().ok_or("no 501 to send")?;
    check_reply(reply, 501)?;
    let text = String::from_utf8_lossy(&serialize_response(reply)).into_owned();
    if !text.contains(&format!(" {method}\r\n")) {
        return Err(format!("the 501 does not echo the CSeq method:\n{text}"));
    }
    Ok(())
}

/// One `#[test]` per corpus file, and the list the index is checked against.
macro_rules! corpus {
    ($($test:ident: $file:literal => $expect:expr,)*) => {
        const FILES: &[(&str, Expect)] = &[$(($file, $expect),)*];
        $(
            #[test]
            fn $test() {
                check_file($file, $expect);
            }
        )*
    };
}

use Expect::{Accept, Discard, Refuse, Reject};

corpus! {
    // 3.1.1 valid
    wsinv: "wsinv.dat" => Accept,
    intmeth: "intmeth.dat" => Accept,
    esc01: "esc01.dat" => Accept,
    escnull: "escnull.dat" => Accept,
    esc02: "esc02.dat" => Accept,
    lwsdisp: "lwsdisp.dat" => Accept,
    longreq: "longreq.dat" => Accept,
    dblreq: "dblreq.dat" => Accept,
    semiuri: "semiuri.dat" => Accept,
    transports: "transports.dat" => Accept,
    // A UAS that does not understand a body answers 415 (RFC 3261 §8.2.3); we serve SDP only.
    mpart01: "mpart01.dat" => Refuse(415, Some("Accept: application/sdp")),
    unreason: "unreason.dat" => Accept,
    noreason: "noreason.dat" => Accept,
    // 3.1.2 invalid: 400 where Via/From/To/Call-ID/CSeq allow an answer, else dropped
    badinv01: "badinv01.dat" => Reject(None),
    clerr: "clerr.dat" => Reject(Some(400)),
    ncl: "ncl.dat" => Reject(Some(400)),
    scalar02: "scalar02.dat" => Reject(None),
    scalarlg: "scalarlg.dat" => Reject(None),
    quotbal: "quotbal.dat" => Reject(None),
    ltgtruri: "ltgtruri.dat" => Reject(Some(400)),
    lwsruri: "lwsruri.dat" => Reject(Some(400)),
    lwsstart: "lwsstart.dat" => Reject(Some(400)),
    trws: "trws.dat" => Reject(Some(400)),
    escruri: "escruri.dat" => Reject(Some(400)),
    baddate: "baddate.dat" => Reject(Some(400)),
    regbadct: "regbadct.dat" => Reject(Some(400)),
    badaspec: "badaspec.dat" => Reject(None),
    baddn: "baddn.dat" => Reject(None),
    badvers: "badvers.dat" => Reject(Some(505)),
    mismatch01: "mismatch01.dat" => Reject(Some(400)),
    mismatch02: "mismatch02.dat" => Reject(Some(400)),
    bigcode: "bigcode.dat" => Reject(None),
    // 3.2 transaction
    badbranch: "badbranch.dat" => Accept,
    // 3.3 application
    insuf: "insuf.dat" => Refuse(400, None),
    unkscm: "unkscm.dat" => Refuse(416, None),
    novelsc: "novelsc.dat" => Refuse(416, None),
    unksm2: "unksm2.dat" => Refuse(400, None),
    bext01: "bext01.dat" => Refuse(
        420,
        Some("Unsupported: nothingSupportsThis, nothingSupportsThisEither"),
    ),
    invut: "invut.dat" => Refuse(415, Some("Accept: application/sdp")),
    regaut01: "regaut01.dat" => Accept,
    multi01: "multi01.dat" => Refuse(400, None),
    mcl01: "mcl01.dat" => Refuse(400, None),
    bcast: "bcast.dat" => Discard,
    zeromf: "zeromf.dat" => Accept,
    cparam01: "cparam01.dat" => Accept,
    cparam02: "cparam02.dat" => Accept,
    regescrt: "regescrt.dat" => Accept,
    sdp01: "sdp01.dat" => Refuse(406, Some("Accept: application/sdp")),
    // 3.4 backward compatibility
    inv2543: "inv2543.dat" => Accept,
}

fn check_file(file: &str, expect: Expect) {
    let Some(dir) = corpus_dir() else { return };
    let entries = index(&dir);
    let entry = entries
        .iter()
        .find(|e| e.file == file)
        .unwrap_or_else(|| panic!("{file} is not in INDEX.tsv"));
    let fits = match entry.class {
        // The class asks for parse and round trip, which Refuse checks too; what the UAS then
        // answers is ours to decide.
        Class::Valid | Class::Transaction | Class::Backward => {
            matches!(expect, Accept | Refuse(..))
        }
        Class::Invalid => matches!(expect, Reject(_)),
        Class::Application => matches!(expect, Accept | Refuse(..) | Discard),
    };
    assert!(
        fits,
        "{file}: expectation {expect:?} does not fit its INDEX class {:?}",
        entry.class
    );
    let bytes = std::fs::read(dir.join(file)).unwrap_or_else(|e| panic!("read {file}: {e}"));
    let outcome = evaluate(&bytes, expect);
    let context = format!("{file} (RFC 4475 §{}, {:?})", entry.section, entry.class);
    match (DEVIATIONS.iter().find(|d| d.file == file), outcome) {
        (None, Ok(())) => {}
        (None, Err(e)) => panic!("{context}: {e}"),
        (Some(d), Ok(())) => panic!(
            "{context} now meets RFC 4475, but is listed in DEVIATIONS ({}): remove it from \
             DEVIATIONS and from ARCHITECTURE.md",
            d.what
        ),
        (Some(d), Err(rfc)) => {
            if let Err(e) = (d.check)(&bytes) {
                panic!(
                    "{context} deviates, but not as DEVIATIONS says ({}): {e}\n(the RFC \
                     expectation fails with: {rfc})",
                    d.what
                );
            }
        }
    }
}

fn evaluate(bytes: &[u8], expect: Expect) -> Result<(), String> {
    match expect {
        Accept => match round_trip(bytes)? {
            SipMessage::Request(req) => {
                validate_request(&req).map_err(|r| format!("validate_request refused it: {r}"))
            }
            SipMessage::Response(resp) => {
                validate_response(&resp).map_err(|d| format!("validate_response: {d}"))
            }
        },
        Reject(reply) => {
            let err = match parse(bytes) {
                Ok(m) => {
                    return Err(format!(
                        "accepted an invalid message:\n{}",
                        String::from_utf8_lossy(&serialize(&m))
                    ))
                }
                Err(e) => e,
            };
            match (reply, err.reply()) {
                (None, None) => Ok(()),
                (Some(code), Some(resp)) => check_reply(resp, code),
                (want, got) => Err(format!(
                    "rejected ({err}), answer should be {want:?}, is {:?}",
                    got.map(|r| r.status_code.code())
                )),
            }
        }
        Refuse(code, header) => {
            let SipMessage::Request(req) = round_trip(bytes)? else {
                return Err("not a request".into());
            };
            let rejection = match validate_request(&req) {
                Ok(()) => return Err(format!("validate_request accepted it; RFC: {code}")),
                Err(r) => r,
            };
            if rejection.code != code {
                return Err(format!("refused with {rejection}, RFC: {code}"));
            }
            let resp = rejection.response(&req);
            check_reply(&resp, code)?;
            let text = String::from_utf8_lossy(&serialize_response(&resp)).into_owned();
            match header {
                Some(line) if !text.contains(&format!("\r\n{line}\r\n")) => {
                    Err(format!("the {code} lacks {line:?}:\n{text}"))
                }
                _ => Ok(()),
            }
        }
        Discard => match round_trip(bytes)? {
            SipMessage::Response(resp) => match validate_response(&resp) {
                Ok(()) => Err("validate_response accepted it".into()),
                Err(_) => Ok(()),
            },
            SipMessage::Request(_) => Err("not a response".into()),
        },
    }
}

/// Parses, serialises, re-parses: same message, and serialising again gives the same bytes.
fn round_trip(bytes: &[u8]) -> Result<SipMessage, String> {
    let msg = parse(bytes).map_err(|e| format!("parse rejected it: {e}"))?;
    let wire = serialize(&msg);
    let again = parse(&wire).map_err(|e| {
        format!(
            "re-parse of the serialised message failed: {e}\n{}",
            String::from_utf8_lossy(&wire)
        )
    })?;
    if again != msg {
        return Err(format!(
            "serialise/parse changed the message:\n{msg:?}\n{again:?}"
        ));
    }
    if serialize(&again) != wire {
        return Err("serialising the re-parsed message gives other bytes".into());
    }
    Ok(msg)
}

/// A response we built: the code, the request's Via and CSeq, no body.
fn check_reply(resp: &Response, code: u16) -> Result<(), String> {
    let text = String::from_utf8_lossy(&serialize_response(resp)).into_owned();
    if resp.status_code.code() != code || !text.starts_with(&format!("SIP/2.0 {code} ")) {
        return Err(format!("answer is not {code}:\n{text}"));
    }
    for name in ["Via: ", "CSeq: ", "Content-Length: 0\r\n"] {
        if !text.contains(&format!("\r\n{name}")) {
            return Err(format!("the {code} lacks {name:?}:\n{text}"));
        }
    }
    Ok(())
}

#[test]
fn every_corpus_file_has_a_test() {
    let Some(dir) = corpus_dir() else { return };
    let entries = index(&dir);
    let indexed: Vec<&str> = entries.iter().map(|e| e.file.as_str()).collect();
    for (file, _) in FILES {
        assert!(
            indexed.contains(file),
            "{file} has a test but is not in INDEX.tsv"
        );
    }
    for file in &indexed {
        assert!(
            FILES.iter().any(|(f, _)| f == file),
            "{file} is in INDEX.tsv but has no test: add it to corpus! in tests/rfc4475.rs"
        );
    }
    for entry in std::fs::read_dir(&dir).expect("read corpus dir") {
        let name = entry.expect("dir entry").file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".dat") {
            assert!(indexed.contains(&&*name), "{name} is not in INDEX.tsv");
        }
    }
    for d in DEVIATIONS {
        assert!(
            FILES.iter().any(|(f, _)| *f == d.file),
            "DEVIATIONS names {}, which has no test",
            d.file
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Fuzz
// ---------------------------------------------------------------------------------------------

/// xorshift64: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const SEEDS: &[&[u8]] = &[
    b"INVITE sip:alice;x=y@[2001:db8::1]:5061;transport=tcp;lr SIP/2.0\r\n\
Via: SIP/2.0/TCP h.example.com:5060;branch=z9hG4bK1;received=192.0.2.1, SIP/2.0/UDP [::1]\r\n\
Max-Forwards: 70\r\nTo: \"Al \\\"ice\\\"\" <sip:alice@example.com?Route=%3Csip:x%3E>\r\n\
f: Bob <sips:bob:pw@example.org>;tag=a1\r\ni: 1@h\r\nCSeq: 7 INVITE\r\n\
Contact: <sip:bob@192.0.2.9>;expires=60, sip:b2@h.example.com;q=0.5\r\n\
Route: <sip:p1.example.com;lr>\r\nRequire: 100rel\r\nAccept: application/sdp;level=1, */*\r\n\
Date: Sat, 15 Oct 2005 04:44:56 GMT\r\nContent-Type: application/sdp\r\nl: 4\r\n\r\nv=0\r\n",
    b"SIP/2.0 183 Session Progress\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nTo: <sip:a@b>;tag=9\r\n\
From: <sip:c@d>;tag=1\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
    b"REGISTER sips:example.com SIP/2.0\r\nVia: SIP/2.0/TLS h;branch=z9hG4bK2\r\nTo: sips:a@example.com\r\n\
From: sips:a@example.com;tag=1\r\nCall-ID: r@h\r\nCSeq: 2 REGISTER\r\nContact: *\r\nExpires: 0\r\n\
Supported:\r\nContent-Length: 0\r\n\r\n",
    b"SIP/2.0 299 Something New\r\nv: SIP/2.0/UDP 192.0.2.1\r\nt: <tel:+1234>\r\nf: <tel:+1>;tag=2\r\n\
i: q\r\nCSeq: 1 OPTIONS\r\n\r\n\xff\xfe",
];

const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\r\n ",
    b"\r\n\r\n",
    b" ",
    b"\t",
    b":",
    b";",
    b",",
    b"<",
    b">",
    b"\"",
    b"\\",
    b"%",
    b"%00",
    b"@",
    b"?",
    b"=",
    b"[",
    b"]",
    b"/",
    b"*",
    b"\0",
    b"\x7f",
    b"\xff",
    b"\xc3\xa9",
    b"0",
    b"65536",
    b"4294967296",
    b"SIP/2.0",
    b"sip:",
    b"tel:",
    b"Content-Length: 99999\r\n",
    b"l: 0\r\n",
    b"CSeq: 1 FOO\r\n",
    b"Via: SIP/2.0/UDP [::1]:5060;branch=z9hG4bK\r\n",
    b"To: \"a\\\"b\" <sips:[2001:db8::1]>;tag=x\r\n",
    b"Contact: *\r\n",
    b"Max-Forwards: 256\r\n",
    b"Require: foo, bar\r\n",
];

fn mutate(seeds: &[Vec<u8>], rng: &mut Rng) -> Vec<u8> {
    if rng.below(16) == 0 {
        let len = rng.below(300);
        return (0..len).map(|_| rng.next() as u8).collect();
    }
    let mut m = seeds[rng.below(seeds.len())].clone();
    for _ in 0..1 + rng.below(4) {
        let pos = rng.below(m.len() + 1);
        match rng.below(7) {
            0 if !m.is_empty() => {
                let i = rng.below(m.len());
                m[i] = rng.next() as u8;
            }
            1 => {
                let t = TOKENS[rng.below(TOKENS.len())];
                m.splice(pos..pos, t.iter().copied());
            }
            2 => {
                let end = (pos + 1 + rng.below(16)).min(m.len());
                m.drain(pos.min(end)..end);
            }
            3 => {
                let end = (pos + 1 + rng.below(32)).min(m.len());
                let chunk = m[pos.min(end)..end].to_vec();
                m.splice(pos..pos, chunk);
            }
            4 => m.truncate(pos),
            5 => {
                let other = &seeds[rng.below(seeds.len())];
                let cut = rng.below(other.len() + 1);
                m.truncate(pos);
                m.extend_from_slice(&other[cut..]);
            }
            _ => {
                // Swap the case of one byte (header names and methods are case-sensitive or not).
                if let Some(b) = m.get_mut(pos) {
                    *b ^= if b.is_ascii_alphabetic() { 0x20 } else { 0 };
                }
            }
        }
    }
    m
}

/// Everything the stack does with untrusted bytes; errors are contract violations.
fn exercise(input: &[u8]) -> Result<(), String> {
    match parse(input) {
        Ok(_) => match round_trip(input)? {
            SipMessage::Request(req) => {
                if let Err(rejection) = validate_request(&req) {
                    reply_round_trip(&rejection.response(&req))?;
                }
                reply_round_trip(&sip_core::message::response_for(&req, 486, ""))
            }
            SipMessage::Response(resp) => {
                let _ = validate_response(&resp);
                Ok(())
            }
        },
        Err(e) => match e.reply() {
            Some(reply) => reply_round_trip(reply),
            None => Ok(()),
        },
    }
}

/// A response we built re-parses to itself, unless it echoes a Via of another SIP version
/// (a 505 must copy the request's Via, RFC 3261 §8.2.6.2).
fn reply_round_trip(resp: &Response) -> Result<(), String> {
    let wire = serialize_response(resp);
    match parse(&wire) {
        Ok(SipMessage::Response(again)) if &again == resp => Ok(()),
        Err(e)
            if matches!(e.kind(), ParseErrorKind::Header { name, detail }
            if name == "Via" && detail.contains("is not SIP/2.0")) =>
        {
            Ok(())
        }
        other => Err(format!(
            "our response does not round-trip ({other:?}):\n{}",
            String::from_utf8_lossy(&wire)
        )),
    }
}

#[test]
fn fuzz_parse_never_panics_and_round_trips() {
    let mut seeds: Vec<Vec<u8>> = SEEDS.iter().map(|s| s.to_vec()).collect();
    if let Some(dir) = corpus_dir() {
        for entry in index(&dir) {
            seeds.push(std::fs::read(dir.join(&entry.file)).expect("read corpus file"));
        }
    }
    // FUZZ_ITERATIONS / FUZZ_SEED: for longer local runs; CI runs the fixed 20 000.
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    let iterations = env("FUZZ_ITERATIONS").unwrap_or(20_000);
    let mut rng = Rng(env("FUZZ_SEED").unwrap_or(0x2545_f491_4f6c_dd1d) | 1);
    let mut parsed = 0;
    for i in 0..iterations {
        let input = mutate(&seeds, &mut rng);
        let outcome = std::panic::catch_unwind(|| exercise(&input));
        let fail = match outcome {
            Ok(Ok(())) => {
                parsed += usize::from(parse(&input).is_ok());
                continue;
            }
            Ok(Err(e)) => e,
            Err(_) => "panicked".to_owned(),
        };
        panic!(
            "fuzz input #{i}: {fail}\ninput: {:?}",
            String::from_utf8_lossy(&input)
        );
    }
    // The mutations must leave enough messages intact to exercise round trips.
    println!("fuzz: {parsed} of {iterations} mutated inputs parsed");
    assert!(
        parsed as u64 > iterations / 20,
        "only {parsed} of {iterations} mutated inputs parsed"
    );
}

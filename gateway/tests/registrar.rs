//! The sans-IO registrar in virtual time: Digest authentication (SHA-256 and MD5), nonce
//! staleness and nonce-count replay, REGISTER processing (RFC 3261 §10.3), expiry and events.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gateway::registrar::digest::{self, Algorithm};
use gateway::registrar::{
    Change, Config, MemoryCredentials, Registrar, RegistrarEvent, UserRecord,
};
use rsip::headers::UntypedHeader;
use sip_core::message::{parse, serialize_response, Header, Request, Response, SipMessage};

const REALM: &str = "example.com";
const AOR: &str = "sip:1000@example.com";

type Reg = Registrar<MemoryCredentials, SocketAddr>;

fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn phone() -> SocketAddr {
    "198.51.100.7:40312".parse().expect("address")
}

fn registrar() -> Reg {
    let mut creds = MemoryCredentials::new();
    creds.add_user("1000", REALM, "secret1000", AOR);
    creds.add_user("1001", REALM, "secret1001", "sip:1001@example.com");
    Registrar::new(
        Config::new(REALM, b"0123456789abcdef0123456789abcdef"),
        creds,
    )
}

/// A REGISTER for 1000 as a phone sends it; `extra` are whole header lines (CRLF-terminated).
fn register(call_id: &str, cseq: u32, extra: &str) -> Request {
    register_to(AOR, call_id, cseq, extra)
}

fn register_to(to: &str, call_id: &str, cseq: u32, extra: &str) -> Request {
    let text = format!(
        "REGISTER sip:example.com SIP/2.0\r\n\
         Via: SIP/2.0/UDP 10.0.0.7:5060;branch=z9hG4bK-{call_id}-{cseq}\r\n\
         Max-Forwards: 70\r\n\
         From: <{to}>;tag=ph1\r\n\
         To: <{to}>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: {cseq} REGISTER\r\n\
         {extra}\
         Content-Length: 0\r\n\r\n"
    );
    match parse(text.as_bytes()) {
        Ok(SipMessage::Request(r)) => r,
        other => panic!("test REGISTER does not parse: {other:?}\n{text}"),
    }
}

fn code(resp: &Response) -> u16 {
    resp.status_code.code()
}

fn values<'a>(resp: &'a Response, pick: fn(&'a Header) -> Option<&'a str>) -> Vec<&'a str> {
    resp.headers.iter().filter_map(pick).collect()
}

fn challenges(resp: &Response) -> Vec<&str> {
    values(resp, |h| match h {
        Header::WwwAuthenticate(w) => Some(w.value()),
        _ => None,
    })
}

fn contacts(resp: &Response) -> Vec<&str> {
    values(resp, |h| match h {
        Header::Contact(c) => Some(c.value()),
        _ => None,
    })
}

/// A parameter of a challenge (naive: enough for what the registrar writes).
fn param(challenge: &str, name: &str) -> String {
    let creds = digest::parse_authorization(challenge).expect("challenge parses like credentials");
    match name {
        "realm" => creds.realm,
        "nonce" => creds.nonce,
        "opaque" => creds.opaque,
        "algorithm" => creds.algorithm,
        "qop" => creds.qop,
        _ => None,
    }
    .unwrap_or_default()
    .into_owned()
}

/// The client side: credentials answering `challenge`.
fn answer(challenge: &str, user: &str, password: &str, nc: u32, cnonce: &str) -> String {
    let alg = Algorithm::from_token(&param(challenge, "algorithm")).expect("known algorithm");
    let nonce = param(challenge, "nonce");
    let opaque = param(challenge, "opaque");
    let uri = "sip:example.com";
    let nc = format!("{nc:08x}");
    let ha1 = digest::ha1(alg, user, REALM, password);
    let ha2 = digest::ha2(alg, "REGISTER", uri);
    let response = digest::response(alg, &ha1, &nonce, &nc, cnonce, "auth", &ha2);
    format!(
        "Digest username=\"{user}\", realm=\"{REALM}\", nonce=\"{nonce}\", uri=\"{uri}\", \
         response=\"{response}\", algorithm={}, cnonce=\"{cnonce}\", opaque=\"{opaque}\", \
         qop=auth, nc={nc}",
        alg.token()
    )
}

/// 401 → authenticated REGISTER; returns the final response and the challenge used.
fn register_authenticated(
    reg: &mut Reg,
    now: SystemTime,
    call_id: &str,
    cseq: u32,
    extra: &str,
    alg_index: usize,
) -> (Response, String) {
    let first = reg.handle_request(&register(call_id, cseq, extra), phone(), now);
    assert_eq!(code(&first), 401);
    let challenge = challenges(&first)[alg_index].to_owned();
    let auth = answer(&challenge, "1000", "secret1000", 1, "c0ffee");
    let req = register(
        call_id,
        cseq + 1,
        &format!("{extra}Authorization: {auth}\r\n"),
    );
    (reg.handle_request(&req, phone(), now), challenge)
}

fn drain(reg: &mut Reg) -> Vec<RegistrarEvent> {
    std::iter::from_fn(|| reg.poll_event()).collect()
}

fn registered() -> RegistrarEvent {
    RegistrarEvent::Registered { aor: AOR.into() }
}

fn unregistered() -> RegistrarEvent {
    RegistrarEvent::Unregistered { aor: AOR.into() }
}

// ---------------------------------------------------------------------------------------------
// Digest arithmetic
// ---------------------------------------------------------------------------------------------

/// RFC 7616 §3.9.1: "Mufasa" / "Circle of Life", GET /dir/index.html.
#[test]
fn rfc7616_known_answers() {
    let (user, realm, pass) = ("Mufasa", "http-auth@example.org", "Circle of Life");
    let nonce = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v";
    let cnonce = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";
    for (alg, expected) in [
        (Algorithm::Md5, "8ca523f5e9506fed4657c9700eebdbec"),
        (
            Algorithm::Sha256,
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
        ),
    ] {
        let ha1 = digest::ha1(alg, user, realm, pass);
        let ha2 = digest::ha2(alg, "GET", "/dir/index.html");
        let got = digest::response(alg, &ha1, nonce, "00000001", cnonce, "auth", &ha2);
        assert_eq!(got, expected, "{alg:?}");
    }
}

/// RFC 2617 §3.5 (MD5 with qop=auth), and RFC 4231 test case 2 for the nonce HMAC.
#[test]
fn more_known_answers() {
    let ha1 = digest::ha1(
        Algorithm::Md5,
        "Mufasa",
        "testrealm@host.com",
        "Circle Of Life",
    );
    let ha2 = digest::ha2(Algorithm::Md5, "GET", "/dir/index.html");
    let got = digest::response(
        Algorithm::Md5,
        &ha1,
        "dcd98b7102dd2f0e8b11d0f600bfb0c093",
        "00000001",
        "0a4f113b",
        "auth",
        &ha2,
    );
    assert_eq!(got, "6629fae49393a05397450978507c4ef1");
    let mac = digest::hmac_sha256(b"Jefe", b"what do ya want for nothing?");
    let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        hex,
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
    assert!(digest::ct_eq(b"abc", b"abc"));
    assert!(!digest::ct_eq(b"abc", b"abd"));
    assert!(!digest::ct_eq(b"abc", b"abcd"));
    assert!(!digest::ct_eq(b"", b"a"));
}

#[test]
fn authorization_parser_reads_quotes_escapes_order_and_case() {
    let c = digest::parse_authorization(
        "digest NC=00000002 ,Realm=\"ex\\\"am\\\\ple\"\t, uri=\"sip:a, b\",USERNAME=\"bob\",\r\n \
         unknown=token, nonce=abc",
    )
    .expect("parses");
    assert_eq!(c.username.as_deref(), Some("bob"));
    assert_eq!(c.realm.as_deref(), Some("ex\"am\\ple"));
    assert_eq!(c.uri.as_deref(), Some("sip:a, b"));
    assert_eq!(c.nc.as_deref(), Some("00000002"));
    assert_eq!(c.nonce.as_deref(), Some("abc"));
    assert_eq!(c.response, None);
    for bad in [
        "Digest username=\"bob",
        "Digest username=\"bob\" realm=\"x\"",
        "Digest username=",
        "Digest =x",
        "Digest username=\"a\", username=\"b\"",
        "Digest username=\"a\\",
        "Digestusername=a",
    ] {
        assert!(
            digest::parse_authorization(bad).is_err(),
            "{bad:?} should not parse"
        );
    }
    assert_eq!(
        digest::parse_authorization("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="),
        Err(digest::AuthHeaderError::NotDigest)
    );
}

// ---------------------------------------------------------------------------------------------
// Authentication
// ---------------------------------------------------------------------------------------------

#[test]
fn challenge_offers_sha256_then_md5() {
    let mut reg = registrar();
    let resp = reg.handle_request(
        &register("c1", 1, "Contact: <sip:1000@10.0.0.7:5060>\r\n"),
        phone(),
        t0(),
    );
    assert_eq!(code(&resp), 401);
    let ch = challenges(&resp);
    assert_eq!(ch.len(), 2);
    for (c, alg) in ch.iter().zip(["SHA-256", "MD5"]) {
        assert!(c.starts_with("Digest "), "{c}");
        // The value byte for byte (what the format! it was built with wrote).
        let (nonce, opaque) = (param(c, "nonce"), param(c, "opaque"));
        assert_eq!(
            *c,
            format!(
                "Digest realm=\"{REALM}\", qop=\"auth\", algorithm={alg}, nonce=\"{nonce}\", \
                 opaque=\"{opaque}\""
            )
        );
        assert_eq!(param(c, "algorithm"), alg);
        assert_eq!(param(c, "qop"), "auth");
        assert_eq!(param(c, "realm"), REALM);
        assert!(!param(c, "nonce").is_empty());
        assert!(!param(c, "opaque").is_empty());
        assert!(!c.contains("stale"));
    }
    let text = String::from_utf8(serialize_response(&resp)).expect("utf-8");
    let sha = text.find("algorithm=SHA-256").expect("sha-256 challenge");
    let md5 = text.find("algorithm=MD5").expect("md5 challenge");
    assert!(sha < md5, "SHA-256 must come first:\n{text}");
    assert!(
        text.contains("WWW-Authenticate: Digest realm=\"example.com\""),
        "{text}"
    );
    assert!(!reg.is_registered(AOR));
    assert_eq!(drain(&mut reg), vec![]);
}

#[test]
fn sha256_registration_succeeds_with_binding() {
    let mut reg = registrar();
    let (resp, _) = register_authenticated(
        &mut reg,
        t0(),
        "c1",
        1,
        "Contact: <sip:1000@10.0.0.7:5060>\r\nExpires: 600\r\n",
        0,
    );
    assert_eq!(code(&resp), 200, "{resp}");
    assert_eq!(
        contacts(&resp),
        vec!["<sip:1000@10.0.0.7:5060>;expires=600"]
    );
    assert!(reg.is_registered(AOR));
    assert!(reg.is_registered("\"Ext 1000\" <sip:1000@EXAMPLE.com;transport=udp>"));
    let b = &reg.contacts(AOR)[0];
    assert_eq!(b.uri, "sip:1000@10.0.0.7:5060");
    assert_eq!(b.source, phone());
    assert_eq!(b.expires_at, t0() + secs(600));
    assert_eq!(b.call_id, "c1");
    assert_eq!(b.cseq, 2);
    assert_eq!(drain(&mut reg), vec![registered()]);
    assert_eq!(reg.next_expiry(), Some(t0() + secs(600)));
}

#[test]
fn md5_registration_succeeds_choosing_the_second_challenge() {
    let mut reg = registrar();
    let (resp, challenge) = register_authenticated(
        &mut reg,
        t0(),
        "c1",
        1,
        "Contact: <sip:1000@10.0.0.7:5060>\r\n",
        1,
    );
    assert_eq!(param(&challenge, "algorithm"), "MD5");
    assert_eq!(code(&resp), 200, "{resp}");
    assert_eq!(
        contacts(&resp),
        vec!["<sip:1000@10.0.0.7:5060>;expires=3600"]
    );
    assert_eq!(drain(&mut reg), vec![registered()]);
}

#[test]
fn md5_without_algorithm_parameter_is_accepted() {
    let mut reg = registrar();
    let first = reg.handle_request(&register("c1", 1, ""), phone(), t0());
    let challenge = challenges(&first)[1].to_owned();
    let auth = answer(&challenge, "1000", "secret1000", 1, "x").replace(", algorithm=MD5", "");
    let req = register(
        "c1",
        2,
        &format!("Contact: <sip:1000@10.0.0.7>\r\nAuthorization: {auth}\r\n"),
    );
    assert_eq!(code(&reg.handle_request(&req, phone(), t0())), 200);
}

/// Blanks the nonce and opaque values of a serialised response.
fn without_nonce(resp: &Response, challenge: &str) -> String {
    String::from_utf8(serialize_response(resp))
        .expect("utf-8")
        .replace(&param(challenge, "nonce"), "NONCE")
        .replace(&param(challenge, "opaque"), "OPAQUE")
}

#[test]
fn unknown_user_and_wrong_password_are_answered_identically() {
    let mut reg = registrar();
    let now = t0();
    let ask = |reg: &mut Reg, user: &str, pass: &str| {
        let first = reg.handle_request(&register("c1", 1, ""), phone(), now);
        let ch = challenges(&first)[0].to_owned();
        let auth = answer(&ch, user, pass, 1, "abc");
        let resp = reg.handle_request(
            &register(
                "c1",
                2,
                &format!("Contact: <sip:1000@10.0.0.7>\r\nAuthorization: {auth}\r\n"),
            ),
            phone(),
            now,
        );
        let ch2 = challenges(&resp)
            .first()
            .map(|s| s.to_string())
            .unwrap_or_default();
        (resp, ch2)
    };
    let (wrong, wrong_ch) = ask(&mut reg, "1000", "not the password");
    let (unknown, unknown_ch) = ask(&mut reg, "9999", "secret1000");
    assert_eq!(code(&wrong), 401);
    assert_eq!(code(&unknown), 401);
    assert_ne!(
        param(&wrong_ch, "nonce"),
        param(&unknown_ch, "nonce"),
        "fresh nonces"
    );
    assert_eq!(
        without_nonce(&wrong, &wrong_ch),
        without_nonce(&unknown, &unknown_ch)
    );
    assert!(!wrong_ch.contains("stale"));
    assert!(!reg.is_registered(AOR));

    // With MD5 too, and a user that exists but whose record lacks that algorithm's HA1.
    reg.credentials_mut().insert(
        "1002",
        REALM,
        UserRecord {
            ha1_md5: String::new(),
            ..UserRecord::from_password("1002", REALM, "pw", "sip:1002@example.com")
        },
    );
    let first = reg.handle_request(&register("c1", 1, ""), phone(), now);
    let ch = challenges(&first)[1].to_owned();
    let auth = answer(&ch, "1002", "pw", 1, "abc");
    let resp = reg.handle_request(
        &register("c1", 2, &format!("Authorization: {auth}\r\n")),
        phone(),
        now,
    );
    assert_eq!(code(&resp), 401);
}

#[test]
fn expired_nonce_with_right_digest_gets_stale_true() {
    let mut reg = registrar();
    let first = reg.handle_request(&register("c1", 1, ""), phone(), t0());
    let ch = challenges(&first)[0].to_owned();
    let later = t0() + reg.config().nonce_lifetime + secs(1);
    let auth = answer(&ch, "1000", "secret1000", 1, "abc");
    let req = register(
        "c1",
        2,
        &format!("Contact: <sip:1000@10.0.0.7>\r\nAuthorization: {auth}\r\n"),
    );
    let resp = reg.handle_request(&req, phone(), later);
    assert_eq!(code(&resp), 401);
    let ch2 = challenges(&resp);
    assert_eq!(ch2.len(), 2);
    assert!(ch2.iter().all(|c| c.contains("stale=true")), "{ch2:?}");
    for c in &ch2 {
        let (alg, nonce, opaque) = (param(c, "algorithm"), param(c, "nonce"), param(c, "opaque"));
        assert_eq!(
            *c,
            format!(
                "Digest realm=\"{REALM}\", qop=\"auth\", algorithm={alg}, nonce=\"{nonce}\", \
                 opaque=\"{opaque}\", stale=true"
            )
        );
    }
    assert_ne!(param(ch2[0], "nonce"), param(&ch, "nonce"));

    // The same stale nonce with a wrong password: not stale, just rejected.
    let auth = answer(&ch, "1000", "wrong", 1, "abc");
    let req = register("c1", 3, &format!("Authorization: {auth}\r\n"));
    let resp = reg.handle_request(&req, phone(), later);
    assert_eq!(code(&resp), 401);
    assert!(challenges(&resp).iter().all(|c| !c.contains("stale")));

    // The client retries with the new nonce and succeeds; still fresh at the lifetime's end.
    let auth = answer(ch2[0], "1000", "secret1000", 1, "abc");
    let req = register(
        "c1",
        4,
        &format!("Contact: <sip:1000@10.0.0.7>\r\nAuthorization: {auth}\r\n"),
    );
    let edge = later + reg.config().nonce_lifetime;
    assert_eq!(code(&reg.handle_request(&req, phone(), edge)), 200);
}

#[test]
fn nonce_count_replays_are_rejected() {
    let mut reg = registrar();
    let now = t0();
    let first = reg.handle_request(&register("c1", 1, ""), phone(), now);
    let ch = challenges(&first)[0].to_owned();
    let with = |nc: u32, cseq: u32| {
        let auth = answer(&ch, "1000", "secret1000", nc, "abc");
        register(
            "c1",
            cseq,
            &format!("Contact: <sip:1000@10.0.0.7>\r\nAuthorization: {auth}\r\n"),
        )
    };
    assert_eq!(code(&reg.handle_request(&with(1, 2), phone(), now)), 200);
    // The very same request again (a replay, not a transaction retransmission).
    let replay = reg.handle_request(&with(1, 2), phone(), now);
    assert_eq!(code(&replay), 401);
    assert!(challenges(&replay).iter().all(|c| !c.contains("stale")));
    // Same nc with a new CSeq: still a replay of the count.
    assert_eq!(code(&reg.handle_request(&with(1, 3), phone(), now)), 401);
    // Higher nc is fine; going back below it is not.
    assert_eq!(code(&reg.handle_request(&with(5, 4), phone(), now)), 200);
    assert_eq!(code(&reg.handle_request(&with(3, 5), phone(), now)), 401);
    assert_eq!(code(&reg.handle_request(&with(6, 6), phone(), now)), 200);
}

#[test]
fn forged_or_foreign_nonces_get_a_fresh_challenge() {
    let mut reg = registrar();
    let other = Registrar::<MemoryCredentials, SocketAddr>::new(
        Config::new(REALM, b"another secret, another server!!"),
        MemoryCredentials::new(),
    );
    let mut other = other;
    let first = other.handle_request(&register("c1", 1, ""), phone(), t0());
    let ch = challenges(&first)[0].to_owned();
    let auth = answer(&ch, "1000", "secret1000", 1, "abc");
    let resp = reg.handle_request(
        &register("c1", 2, &format!("Authorization: {auth}\r\n")),
        phone(),
        t0(),
    );
    assert_eq!(code(&resp), 401);
    assert!(challenges(&resp).iter().all(|c| !c.contains("stale")));
}

#[test]
fn nonce_table_is_bounded_and_forgetting_never_reopens_replays() {
    let mut config = Config::new(REALM, b"0123456789abcdef0123456789abcdef");
    config.max_tracked_nonces = 2;
    let mut creds = MemoryCredentials::new();
    creds.add_user("1000", REALM, "secret1000", AOR);
    let mut reg: Reg = Registrar::new(config, creds);
    let mut used = Vec::new();
    for i in 0..4u64 {
        let now = t0() + secs(i);
        let first = reg.handle_request(&register("c1", 1, ""), phone(), now);
        let ch = challenges(&first)[0].to_owned();
        let auth = answer(&ch, "1000", "secret1000", 1, "abc");
        let cseq = 10 + u32::try_from(i).expect("small") * 2;
        let req = register(
            "c1",
            cseq,
            &format!("Contact: <sip:1000@10.0.0.7>\r\nAuthorization: {auth}\r\n"),
        );
        assert_eq!(code(&reg.handle_request(&req, phone(), now)), 200);
        used.push(ch);
    }
    // The first nonces were forgotten: using them again asks for a new nonce (stale).
    let auth = answer(&used[0], "1000", "secret1000", 2, "abc");
    let resp = reg.handle_request(
        &register("c1", 100, &format!("Authorization: {auth}\r\n")),
        phone(),
        t0() + secs(5),
    );
    assert_eq!(code(&resp), 401);
    assert!(challenges(&resp).iter().all(|c| c.contains("stale=true")));
    // The newest is still tracked: a replay is refused, a higher count accepted.
    let auth = answer(&used[3], "1000", "secret1000", 1, "abc");
    let resp = reg.handle_request(
        &register("c1", 101, &format!("Authorization: {auth}\r\n")),
        phone(),
        t0() + secs(5),
    );
    assert_eq!(code(&resp), 401);
    let auth = answer(&used[3], "1000", "secret1000", 2, "abc");
    let resp = reg.handle_request(
        &register("c1", 102, &format!("Authorization: {auth}\r\n")),
        phone(),
        t0() + secs(5),
    );
    assert_eq!(code(&resp), 200);
}

#[test]
fn malformed_or_incomplete_credentials_get_400() {
    let mut reg = registrar();
    let first = reg.handle_request(&register("c1", 1, ""), phone(), t0());
    let ch = challenges(&first)[0].to_owned();
    let good = answer(&ch, "1000", "secret1000", 1, "abc");
    let drop_param = |name: &str| -> String {
        good.split(", ")
            .filter(|p| {
                !p.trim_start_matches("Digest ")
                    .starts_with(&format!("{name}="))
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut cases: Vec<String> = [
        "username", "nonce", "uri", "response", "cnonce", "nc", "qop",
    ]
    .iter()
    .map(|n| {
        let s = drop_param(n);
        if s.starts_with("Digest ") {
            s
        } else {
            format!("Digest {s}")
        }
    })
    .collect();
    cases.push(good.replace("qop=auth", "qop=auth-int"));
    cases.push(good.replace("algorithm=SHA-256", "algorithm=SHA-512-256"));
    cases.push(good.replace("nc=00000001", "nc=1"));
    cases.push(good.replace("nc=00000001", "nc=0000000g"));
    cases.push(format!("{good}, nonce=\"again\""));
    cases.push(good.replace("username=\"1000\"", "username=\"1000"));
    for (i, auth) in cases.iter().enumerate() {
        let req = register(
            "c1",
            2 + u32::try_from(i).expect("small"),
            &format!("Authorization: {auth}\r\n"),
        );
        let resp = reg.handle_request(&req, phone(), t0());
        assert_eq!(code(&resp), 400, "{auth}");
    }
    // Credentials for another realm are ignored: a challenge, not an error.
    let req = register(
        "c1",
        50,
        &format!(
            "Authorization: {}\r\n",
            good.replace("realm=\"example.com\"", "realm=\"other.org\"")
        ),
    );
    assert_eq!(code(&reg.handle_request(&req, phone(), t0())), 401);
    // A different scheme is ignored too.
    let req = register(
        "c1",
        51,
        "Authorization: Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==\r\n",
    );
    assert_eq!(code(&reg.handle_request(&req, phone(), t0())), 401);
    assert!(!reg.is_registered(AOR));
}

#[test]
fn a_user_may_register_only_its_own_aor() {
    let mut reg = registrar();
    let first = reg.handle_request(
        &register_to("sip:1001@example.com", "c1", 1, ""),
        phone(),
        t0(),
    );
    let ch = challenges(&first)[0].to_owned();
    let auth = answer(&ch, "1000", "secret1000", 1, "abc");
    let req = register_to(
        "sip:1001@example.com",
        "c1",
        2,
        &format!("Contact: <sip:1000@10.0.0.7>\r\nAuthorization: {auth}\r\n"),
    );
    assert_eq!(code(&reg.handle_request(&req, phone(), t0())), 403);
    assert!(!reg.is_registered("sip:1001@example.com"));
}

/// Whether a request carrying these Authorization values holds valid credentials: of the
/// Digest values for our realm, the first with the strongest algorithm we offer (SHA-256, then
/// MD5, absent meaning MD5) is the one checked; a value we cannot use, or a malformed value or
/// one without a realm, makes the request malformed only when no usable value is there (other
/// realms and schemes are ignored); the checked value's fields are the valid answer's (hex and
/// tokens compared without case, as the registrar does; `opaque` may be left out).
fn credentials_still_valid(values: &[String], good: &digest::DigestCredentials<'_>) -> bool {
    let mut ours = Vec::new();
    for v in values {
        match digest::parse_authorization(v) {
            Ok(c) if c.realm.as_deref() == Some(REALM) => ours.push(c),
            _ => {}
        }
    }
    let strength = |c: &digest::DigestCredentials<'_>| match c.algorithm.as_deref() {
        None => 1,
        Some(a) if a.eq_ignore_ascii_case("SHA-256") => 2,
        Some(a) if a.eq_ignore_ascii_case("MD5") => 1,
        Some(_) => 0,
    };
    let Some(top) = ours.iter().map(strength).max() else {
        return false;
    };
    if top == 0 {
        // Nothing usable: the lone value is checked (and refused for its algorithm).
        return false;
    }
    let Some(c) = ours.iter().find(|c| strength(c) == top) else {
        return false;
    };
    let same_ci =
        |a: &Option<std::borrow::Cow<'_, str>>, b: &Option<std::borrow::Cow<'_, str>>| match (a, b)
        {
            (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
            (a, b) => a == b,
        };
    c.username == good.username
        && c.nonce == good.nonce
        && c.uri == good.uri
        && c.cnonce == good.cnonce
        && c.nc == good.nc
        && same_ci(&c.qop, &good.qop)
        && same_ci(&c.algorithm, &good.algorithm)
        && same_ci(&c.response, &good.response)
        && (c.opaque.is_none() || c.opaque == good.opaque)
}

/// Mutations of a valid Authorization value (byte flips, deletions, insertions of delimiters,
/// truncations), hundreds of them, each answering a fresh challenge: the registrar answers 200
/// exactly when the mutation leaves the credentials valid (an unknown parameter, a case change
/// in a hex digest), else 400 or 401 (403 for another user's AOR), and never panics.
#[test]
fn fuzzed_authorization_headers_never_panic() {
    let mut reg = registrar();
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    const SPICE: &[u8] = b"\",\\= \t;:\x00\xff\x7fazAZ09<>";
    let (mut valid, mut accepted) = (0, 0);
    for i in 0..800u32 {
        // A fresh nonce each time, time moving on, CSeq rising (an accepted REGISTER binds).
        let now = t0() + secs(u64::from(i));
        let first = reg.handle_request(&register("c1", 1 + 2 * i, ""), phone(), now);
        let ch = challenges(&first)[0].to_owned();
        let good = answer(&ch, "1000", "secret1000", 1, "abc");
        let good_creds = digest::parse_authorization(&good).expect("the valid answer parses");
        let mut bytes = good.as_bytes().to_vec();
        for _ in 0..=(next() % 4) {
            let len = bytes.len().max(1);
            let pos = usize::try_from(next() % u64::try_from(len).expect("len")).expect("pos");
            let spice = SPICE[usize::try_from(next() % SPICE.len() as u64).expect("idx")];
            match next() % 5 {
                0 if pos < bytes.len() => bytes[pos] = spice,
                1 if pos < bytes.len() => {
                    bytes.remove(pos);
                }
                2 => bytes.insert(pos.min(bytes.len()), spice),
                3 => bytes.truncate(pos),
                _ if pos < bytes.len() => bytes[pos] ^= 1 << (next() % 8),
                _ => {}
            }
        }
        let value = String::from_utf8_lossy(&bytes).into_owned();
        let _ = digest::parse_authorization(&value);
        let mut values = vec![value.clone()];
        if i % 3 == 0 {
            values.insert(0, good.clone());
        }
        let mut req = register("c1", 2 + 2 * i, "Contact: <sip:1000@10.0.0.7>\r\n");
        let mut headers: Vec<Header> = req.headers.iter().cloned().collect();
        for v in values.iter().rev() {
            headers.insert(
                1,
                Header::Authorization(rsip::headers::Authorization::new(v.clone())),
            );
        }
        req.headers = headers.into();
        let resp = reg.handle_request(&req, phone(), now);
        let ok = credentials_still_valid(&values, &good_creds);
        valid += usize::from(ok);
        accepted += usize::from(code(&resp) == 200);
        if ok {
            assert_eq!(code(&resp), 200, "valid credentials refused: {values:?}");
        } else {
            assert!(
                [400, 401, 403].contains(&code(&resp)),
                "{values:?} → {}",
                code(&resp)
            );
        }
    }
    // Both kinds were exercised: valid variants accepted, broken ones refused.
    assert!(
        valid >= 10 && accepted == valid && valid <= 400,
        "{valid} of 800 mutants valid, {accepted} accepted"
    );
    // Garbage of every shape straight into the parser.
    for len in 0..300usize {
        let junk: Vec<u8> = (0..len)
            .map(|_| SPICE[usize::try_from(next() % SPICE.len() as u64).expect("idx")])
            .collect();
        let _ = digest::parse_authorization(&format!("Digest {}", String::from_utf8_lossy(&junk)));
    }
}

// ---------------------------------------------------------------------------------------------
// REGISTER processing
// ---------------------------------------------------------------------------------------------

/// An authenticated registrar session: one nonce, counting nc up, CSeq up, one Call-ID.
struct Phone {
    challenge: String,
    nc: u32,
    cseq: u32,
    call_id: String,
}

impl Phone {
    fn new(reg: &mut Reg, call_id: &str, now: SystemTime) -> Self {
        let first = reg.handle_request(&register(call_id, 1, ""), phone(), now);
        Phone {
            challenge: challenges(&first)[0].to_owned(),
            nc: 0,
            cseq: 1,
            call_id: call_id.into(),
        }
    }

    fn send(&mut self, reg: &mut Reg, extra: &str, now: SystemTime) -> Response {
        self.send_from(reg, extra, now, phone())
    }

    fn send_from(
        &mut self,
        reg: &mut Reg,
        extra: &str,
        now: SystemTime,
        from: SocketAddr,
    ) -> Response {
        self.nc += 1;
        self.cseq += 1;
        let auth = answer(&self.challenge, "1000", "secret1000", self.nc, "abc");
        let req = register(
            &self.call_id,
            self.cseq,
            &format!("{extra}Authorization: {auth}\r\n"),
        );
        reg.handle_request(&req, from, now)
    }

    /// Like [`Phone::send_from`], with what a 200 did to the binding set.
    fn change(
        &mut self,
        reg: &mut Reg,
        extra: &str,
        now: SystemTime,
        from: SocketAddr,
    ) -> (u16, Change) {
        self.nc += 1;
        self.cseq += 1;
        let auth = answer(&self.challenge, "1000", "secret1000", self.nc, "abc");
        let req = register(
            &self.call_id,
            self.cseq,
            &format!("{extra}Authorization: {auth}\r\n"),
        );
        let (resp, change) = reg.handle_register(&req, from, now);
        (code(&resp), change)
    }

    /// Like [`Phone::send`] but with Contact values inserted as they are, past the parser
    /// (which already refuses some of them).
    fn send_raw(
        &mut self,
        reg: &mut Reg,
        contact_values: &[&str],
        extra: &str,
        now: SystemTime,
    ) -> Response {
        self.nc += 1;
        self.cseq += 1;
        let auth = answer(&self.challenge, "1000", "secret1000", self.nc, "abc");
        let mut req = register(
            &self.call_id,
            self.cseq,
            &format!("{extra}Authorization: {auth}\r\n"),
        );
        let mut headers: Vec<Header> = req.headers.iter().cloned().collect();
        for v in contact_values {
            headers.insert(2, Header::Contact(rsip::headers::Contact::new(*v)));
        }
        req.headers = headers.into();
        reg.handle_request(&req, phone(), now)
    }
}

/// What a 200 did to the binding set, as durable registrations read it (`Change`): later
/// expiries on the same contacts from the same source, whatever the Call-ID, are a refresh;
/// anything the stored rows must show (a contact added or removed, lapsed ones dropped, a
/// changed URI, parameters or source, a shorter expiry) is a change.
#[test]
fn a_refresh_is_told_from_a_change_of_the_binding_set() {
    let mut reg = registrar();
    let src = phone();
    let one = "Contact: <sip:1000@10.0.0.7>;+sip.instance=\"<urn:uuid:1>\"\r\nExpires: 300\r\n";
    let mut p = Phone::new(&mut reg, "c1", t0());
    assert_eq!(p.change(&mut reg, one, t0(), src), (200, Change::Set));
    // Same contact, later expiry: a refresh; also under a new Call-ID, and at the same expiry.
    assert_eq!(
        p.change(&mut reg, one, t0() + secs(60), src),
        (200, Change::Refresh)
    );
    let mut q = Phone::new(&mut reg, "c2", t0() + secs(100));
    assert_eq!(
        q.change(&mut reg, one, t0() + secs(100), src),
        (200, Change::Refresh)
    );
    assert_eq!(
        q.change(&mut reg, one, t0() + secs(100), src),
        (200, Change::Refresh)
    );
    // A query lists and changes nothing.
    assert_eq!(
        q.change(&mut reg, "", t0() + secs(110), src),
        (200, Change::Refresh)
    );
    // A shorter expiry than stored: a change (t0+400 → t0+320).
    let short = "Contact: <sip:1000@10.0.0.7>;+sip.instance=\"<urn:uuid:1>\"\r\nExpires: 200\r\n";
    assert_eq!(
        q.change(&mut reg, short, t0() + secs(120), src),
        (200, Change::Set)
    );
    // Another source, other parameters: changes.
    let moved: SocketAddr = "203.0.113.9:1024".parse().expect("address");
    assert_eq!(
        q.change(&mut reg, one, t0() + secs(130), moved),
        (200, Change::Set)
    );
    assert_eq!(
        q.change(&mut reg, one, t0() + secs(131), moved),
        (200, Change::Refresh)
    );
    let other = "Contact: <sip:1000@10.0.0.7>;+sip.instance=\"<urn:uuid:2>\"\r\nExpires: 300\r\n";
    assert_eq!(
        q.change(&mut reg, other, t0() + secs(140), moved),
        (200, Change::Set)
    );
    // A second contact is a change; refreshing both, not.
    let two = "Contact: <sip:1000@10.0.0.7>;+sip.instance=\"<urn:uuid:2>\", <sip:1000@10.0.0.8>\r\nExpires: 300\r\n";
    assert_eq!(
        q.change(&mut reg, two, t0() + secs(150), moved),
        (200, Change::Set)
    );
    assert_eq!(
        q.change(&mut reg, two, t0() + secs(160), moved),
        (200, Change::Refresh)
    );
    // One removed by expires=0: a change.
    let gone = "Contact: <sip:1000@10.0.0.8>;expires=0\r\n";
    assert_eq!(
        q.change(&mut reg, gone, t0() + secs(170), moved),
        (200, Change::Set)
    );
    assert_eq!(reg.contacts(AOR).len(), 1);
    // A contact that lapsed before this REGISTER is dropped first: a change, though the
    // REGISTER itself only refreshes the other one.
    let brief = "Contact: <sip:1000@10.0.0.9>;expires=60\r\n";
    assert_eq!(
        q.change(&mut reg, brief, t0() + secs(180), moved),
        (200, Change::Set)
    );
    assert_eq!(reg.contacts(AOR).len(), 2);
    assert_eq!(
        q.change(&mut reg, other, t0() + secs(241), moved),
        (200, Change::Set)
    );
    assert_eq!(reg.contacts(AOR).len(), 1);
    // A refused REGISTER (423) is no refresh.
    let too_brief = "Contact: <sip:1000@10.0.0.7>\r\nExpires: 10\r\n";
    assert_eq!(
        q.change(&mut reg, too_brief, t0() + secs(250), moved),
        (423, Change::Set)
    );
    // `*` removes everything: a change.
    assert_eq!(
        q.change(
            &mut reg,
            "Contact: *\r\nExpires: 0\r\n",
            t0() + secs(260),
            moved
        ),
        (200, Change::Set)
    );
    assert!(!reg.is_registered(AOR));
}

#[test]
fn reregistering_refreshes_the_binding_and_source() {
    let mut reg = registrar();
    let mut p = Phone::new(&mut reg, "c1", t0());
    let r = p.send(
        &mut reg,
        "Contact: <sip:1000@10.0.0.7>\r\nExpires: 300\r\n",
        t0(),
    );
    assert_eq!(contacts(&r), vec!["<sip:1000@10.0.0.7>;expires=300"]);
    let moved: SocketAddr = "203.0.113.9:1024".parse().expect("address");
    let r = p.send_from(
        &mut reg,
        "Contact: <sip:1000@10.0.0.7>\r\nExpires: 300\r\n",
        t0() + secs(200),
        moved,
    );
    assert_eq!(code(&r), 200);
    assert_eq!(contacts(&r), vec!["<sip:1000@10.0.0.7>;expires=300"]);
    let b = reg.contacts(AOR);
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].expires_at, t0() + secs(500));
    assert_eq!(b[0].source, moved);
    assert_eq!(drain(&mut reg), vec![registered()]);
    // Past the first expiry the binding lives on.
    assert_eq!(reg.expire(t0() + secs(400)), Vec::<String>::new());
    assert!(reg.is_registered(AOR));
    // A query (no Contact) lists the binding with its remaining time.
    let mut p = Phone::new(&mut reg, "c1", t0() + secs(450));
    p.cseq = 10;
    let r = p.send(&mut reg, "", t0() + secs(450));
    assert_eq!(code(&r), 200);
    assert_eq!(contacts(&r), vec!["<sip:1000@10.0.0.7>;expires=50"]);
}

#[test]
fn per_contact_expires_overrides_the_header_and_is_capped() {
    let mut reg = registrar();
    let mut p = Phone::new(&mut reg, "c1", t0());
    let r = p.send(
        &mut reg,
        "Contact: <sip:1000@10.0.0.7>;expires=120;q=0.7, \"Desk\" <sip:1000@10.0.0.8>\r\n\
         Contact: sip:1000@10.0.0.9;expires=99999\r\n\
         Expires: 900\r\n",
        t0(),
    );
    assert_eq!(code(&r), 200);
    assert_eq!(
        contacts(&r),
        vec![
            "<sip:1000@10.0.0.7>;q=0.7;expires=120",
            "<sip:1000@10.0.0.8>;expires=900",
            "<sip:1000@10.0.0.9>;expires=7200",
        ]
    );
    // Removing one contact with expires=0 keeps the others.
    let r = p.send(
        &mut reg,
        "Contact: <sip:1000@10.0.0.8>;expires=0\r\n",
        t0() + secs(10),
    );
    assert_eq!(
        contacts(&r),
        vec![
            "<sip:1000@10.0.0.7>;q=0.7;expires=110",
            "<sip:1000@10.0.0.9>;expires=7190"
        ]
    );
    // The first expires after 120 s; the AOR stays registered.
    assert_eq!(reg.next_expiry(), Some(t0() + secs(120)));
    assert_eq!(reg.expire(t0() + secs(120)), Vec::<String>::new());
    assert_eq!(reg.contacts(AOR).len(), 1);
    assert_eq!(drain(&mut reg), vec![registered()]);
}

#[test]
fn too_brief_interval_gets_423_with_min_expires() {
    let mut reg = registrar();
    let mut p = Phone::new(&mut reg, "c1", t0());
    for extra in [
        "Contact: <sip:1000@10.0.0.7>\r\nExpires: 30\r\n",
        "Contact: <sip:1000@10.0.0.7>;expires=59, <sip:1000@10.0.0.8>\r\n",
    ] {
        let r = p.send(&mut reg, extra, t0());
        assert_eq!(code(&r), 423, "{extra}");
        let text = String::from_utf8(serialize_response(&r)).expect("utf-8");
        assert!(
            text.starts_with("SIP/2.0 423 Interval Too Brief\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nMin-Expires: 60\r\n"), "{text}");
        assert!(
            !reg.is_registered(AOR),
            "nothing bound by a rejected request"
        );
    }
    assert_eq!(
        code(&p.send(
            &mut reg,
            "Contact: <sip:1000@10.0.0.7>\r\nExpires: 60\r\n",
            t0()
        )),
        200
    );
}

#[test]
fn wildcard_unregisters_everything() {
    let mut reg = registrar();
    let mut p = Phone::new(&mut reg, "c1", t0());
    let r = p.send(
        &mut reg,
        "Contact: <sip:1000@10.0.0.7>, <sip:1000@10.0.0.8>\r\n",
        t0(),
    );
    assert_eq!(contacts(&r).len(), 2);
    // `*` with a non-zero or missing Expires, or with other contacts: 400, nothing changes.
    for (values, extra) in [
        (&["*"][..], ""),
        (&["*"][..], "Expires: 10\r\n"),
        (&["*, <sip:1000@10.0.0.9>"][..], "Expires: 0\r\n"),
        (&["*", "<sip:1000@10.0.0.9>"][..], "Expires: 0\r\n"),
        (&["*;expires=0"][..], "Expires: 0\r\n"),
    ] {
        let r = p.send_raw(&mut reg, values, extra, t0());
        assert_eq!(code(&r), 400, "{values:?} {extra}");
        assert_eq!(reg.contacts(AOR).len(), 2);
    }
    let r = p.send(&mut reg, "Contact: *\r\nExpires: 0\r\n", t0() + secs(5));
    assert_eq!(code(&r), 200);
    assert!(contacts(&r).is_empty());
    assert!(!reg.is_registered(AOR));
    assert_eq!(drain(&mut reg), vec![registered(), unregistered()]);
}

#[test]
fn cseq_ordering_within_a_call_id() {
    let mut reg = registrar();
    let mut p = Phone::new(&mut reg, "c1", t0());
    assert_eq!(
        code(&p.send(&mut reg, "Contact: <sip:1000@10.0.0.7>\r\n", t0())),
        200
    );
    // Same Call-ID, lower CSeq (a delayed old request): refused, binding untouched.
    p.cseq -= 2;
    let r = p.send(&mut reg, "Contact: <sip:1000@10.0.0.7>;expires=0\r\n", t0());
    assert_eq!(code(&r), 500);
    assert!(reg.is_registered(AOR));
    p.cseq -= 1;
    assert_eq!(
        code(&p.send(&mut reg, "Contact: *\r\nExpires: 0\r\n", t0())),
        500
    );
    assert!(reg.is_registered(AOR));
    // A different Call-ID (a rebooted phone) may replace it whatever its CSeq.
    let mut rebooted = Phone::new(&mut reg, "c2", t0());
    let r = rebooted.send(
        &mut reg,
        "Contact: <sip:1000@10.0.0.7>\r\nExpires: 100\r\n",
        t0(),
    );
    assert_eq!(contacts(&r), vec!["<sip:1000@10.0.0.7>;expires=100"]);
    assert_eq!(reg.contacts(AOR)[0].call_id, "c2");
}

#[test]
fn expiry_over_time_emits_unregistered() {
    let mut reg = registrar();
    let mut p = Phone::new(&mut reg, "c1", t0());
    p.send(
        &mut reg,
        "Contact: <sip:1000@10.0.0.7>;expires=100, <sip:1000@10.0.0.8>;expires=200\r\n",
        t0(),
    );
    assert_eq!(drain(&mut reg), vec![registered()]);
    assert_eq!(reg.expire(t0() + secs(99)), Vec::<String>::new());
    assert_eq!(reg.expire(t0() + secs(100)), Vec::<String>::new());
    assert_eq!(reg.contacts(AOR).len(), 1);
    assert_eq!(drain(&mut reg), vec![]);
    assert_eq!(reg.next_expiry(), Some(t0() + secs(200)));
    assert_eq!(reg.expire(t0() + secs(200)), vec![AOR.to_string()]);
    assert!(!reg.is_registered(AOR));
    assert_eq!(reg.next_expiry(), None);
    assert_eq!(drain(&mut reg), vec![unregistered()]);

    // Lapsed but not yet expired by the timer: the next REGISTER sees it gone first.
    let mut p = Phone::new(&mut reg, "c3", t0() + secs(300));
    p.send(
        &mut reg,
        "Contact: <sip:1000@10.0.0.7>;expires=60\r\n",
        t0() + secs(300),
    );
    assert_eq!(drain(&mut reg), vec![registered()]);
    let r = p.send(
        &mut reg,
        "Contact: <sip:1000@10.0.0.8>;expires=60\r\n",
        t0() + secs(361),
    );
    assert_eq!(contacts(&r), vec!["<sip:1000@10.0.0.8>;expires=60"]);
    assert_eq!(drain(&mut reg), vec![unregistered(), registered()]);
}

#[test]
fn bad_requests_are_refused_without_panicking() {
    let mut reg = registrar();
    let mut p = Phone::new(&mut reg, "c1", t0());
    for extra in [
        "Contact: <sip:1000@10.0.0.7>\r\nExpires: soon\r\n",
        "Contact: <sip:1000@10.0.0.7>;expires=x\r\n",
        "Contact: <sip:1000@10.0.0.7>;expires=1;expires=2\r\n",
    ] {
        let r = p.send(&mut reg, extra, t0());
        assert_eq!(code(&r), 400, "{extra}");
    }
    // Too many bindings.
    let many: Vec<String> = (0..11).map(|i| format!("<sip:1000@10.0.1.{i}>")).collect();
    let r = p.send(&mut reg, &format!("Contact: {}\r\n", many.join(", ")), t0());
    assert_eq!(code(&r), 403);
    let text = String::from_utf8_lossy(&serialize_response(&r)).into_owned();
    assert!(
        text.starts_with("SIP/2.0 403 Too Many Registered Contacts\r\n")
            && text.contains(
                "\r\nWarning: 399 example.com \"at most 10 contacts per user (max_contacts)\"\r\n"
            ),
        "{text}"
    );
    assert!(!reg.is_registered(AOR));
    // Not a REGISTER.
    let text = "OPTIONS sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.7;branch=z9hG4bKo\r\n\
                From: <sip:1000@example.com>;tag=a\r\nTo: <sip:example.com>\r\nCall-ID: o\r\n\
                CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n";
    let Ok(SipMessage::Request(opt)) = parse(text.as_bytes()) else {
        panic!("OPTIONS parses");
    };
    let r = reg.handle_request(&opt, phone(), t0());
    assert_eq!(code(&r), 405);
    // Requests built by hand without the mandatory headers.
    let mut bare = register("c1", 1, "");
    bare.headers = rsip::Headers::default();
    assert_eq!(code(&reg.handle_request(&bare, phone(), t0())), 400);
}

#[test]
fn nonces_from_before_a_restart_are_stale() {
    let mut before = registrar();
    let first = before.handle_request(&register("c1", 1, ""), phone(), t0());
    let ch = challenges(&first)[0].to_owned();
    let auth = answer(&ch, "1000", "secret1000", 1, "abc");
    let req = register(
        "c1",
        2,
        &format!("Contact: <sip:1000@10.0.0.7>\r\nAuthorization: {auth}\r\n"),
    );
    assert_eq!(code(&before.handle_request(&req, phone(), t0())), 200);
    // A new process with the same secret would accept the replay; told when it started, not.
    let mut after = registrar();
    after.reject_nonces_issued_before(t0() + secs(1));
    let resp = after.handle_request(&req, phone(), t0() + secs(2));
    assert_eq!(code(&resp), 401);
    assert!(challenges(&resp).iter().all(|c| c.contains("stale=true")));
}

/// RFC 3261 §22 allows several Authorization fields (a phone answering both challenges): the
/// strongest algorithm we offer is verified (SHA-256 before MD5), whatever the order, and the
/// others are ignored.
#[test]
fn two_authorization_fields_verify_the_strongest() {
    let mut reg = registrar();
    let first = reg.handle_request(&register("c1", 1, ""), phone(), t0());
    let (sha, md5) = (
        challenges(&first)[0].to_owned(),
        challenges(&first)[1].to_owned(),
    );
    let both = |sha_pw: &str, md5_pw: &str, nc: u32| {
        format!(
            "Contact: <sip:1000@10.0.0.7>\r\nAuthorization: {}\r\nAuthorization: {}\r\n",
            answer(&md5, "1000", md5_pw, nc, "m"),
            answer(&sha, "1000", sha_pw, nc, "s"),
        )
    };
    // Both right: 200.
    let resp = reg.handle_request(
        &register("c1", 2, &both("secret1000", "secret1000", 1)),
        phone(),
        t0(),
    );
    assert_eq!(code(&resp), 200, "{resp}");
    // The SHA-256 one is the one verified: a wrong MD5 beside it does not matter…
    let resp = reg.handle_request(
        &register("c1", 3, &both("secret1000", "wrong", 2)),
        phone(),
        t0(),
    );
    assert_eq!(code(&resp), 200, "{resp}");
    // …and a right MD5 does not rescue a wrong SHA-256.
    let resp = reg.handle_request(
        &register("c1", 4, &both("wrong", "secret1000", 3)),
        phone(),
        t0(),
    );
    assert_eq!(code(&resp), 401, "{resp}");
    // A field with an algorithm we do not support beside a good one is ignored.
    let odd = answer(&sha, "1000", "secret1000", 4, "o").replace("SHA-256", "SHA-512-256");
    let good = answer(&md5, "1000", "secret1000", 4, "m");
    let extra = format!(
        "Contact: <sip:1000@10.0.0.7>\r\nAuthorization: {odd}\r\nAuthorization: {good}\r\n"
    );
    let resp = reg.handle_request(&register("c1", 5, &extra), phone(), t0());
    assert_eq!(code(&resp), 200, "{resp}");
    // Two fields neither of which we support: still 400.
    let extra = format!("Authorization: {odd}\r\nAuthorization: {odd}\r\n");
    let resp = reg.handle_request(&register("c1", 6, &extra), phone(), t0());
    assert_eq!(code(&resp), 400, "{resp}");
}

/// With only MD5 offered, a SHA-256 field beside the MD5 one is ignored.
#[test]
fn a_field_for_an_algorithm_not_offered_is_ignored_beside_one_offered() {
    let mut reg = registrar();
    let first = reg.handle_request(&register("c1", 1, ""), phone(), t0());
    let (sha, md5) = (
        challenges(&first)[0].to_owned(),
        challenges(&first)[1].to_owned(),
    );
    let mut config = Config::new(REALM, b"0123456789abcdef0123456789abcdef");
    config.algorithms = vec![Algorithm::Md5];
    let mut creds = MemoryCredentials::new();
    creds.add_user("1000", REALM, "secret1000", AOR);
    let mut md5_only: Reg = Registrar::new(config, creds);
    let extra = format!(
        "Contact: <sip:1000@10.0.0.7>\r\nAuthorization: {}\r\nAuthorization: {}\r\n",
        answer(&sha, "1000", "wrong", 1, "s"),
        answer(&md5, "1000", "secret1000", 1, "m"),
    );
    let resp = md5_only.handle_request(&register("c1", 2, &extra), phone(), t0());
    assert_eq!(code(&resp), 200, "{resp}");
}

/// An INVITE's two Proxy-Authorization fields: the SHA-256 one is verified.
#[test]
fn invite_with_two_proxy_authorization_fields_is_authorized() {
    let mut reg = registrar();
    let invite = |extra: &str| -> Request {
        let text = format!(
            "INVITE sip:1001@example.com SIP/2.0\r\n\
             Via: SIP/2.0/UDP 10.0.0.7:5060;branch=z9hG4bK-i1\r\n\
             Max-Forwards: 70\r\n\
             From: <{AOR}>;tag=ph1\r\n\
             To: <sip:1001@example.com>\r\n\
             Call-ID: i1\r\n\
             CSeq: 1 INVITE\r\n\
             {extra}\
             Content-Length: 0\r\n\r\n"
        );
        match parse(text.as_bytes()) {
            Ok(SipMessage::Request(r)) => r,
            other => panic!("test INVITE does not parse: {other:?}"),
        }
    };
    let challenge = match reg.authorize(&invite(""), t0()) {
        Err(r) => r,
        Ok(_) => panic!("an INVITE without credentials is authorized"),
    };
    assert_eq!(code(&challenge), 407);
    let offered: Vec<String> = challenge
        .headers
        .iter()
        .filter_map(|h| match h {
            Header::ProxyAuthenticate(p) => Some(p.value().to_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(offered.len(), 2, "{challenge}");
    let creds = |ch: &str, password: &str| {
        let alg = Algorithm::from_token(&param(ch, "algorithm")).expect("algorithm");
        let (nonce, opaque, uri) = (
            param(ch, "nonce"),
            param(ch, "opaque"),
            "sip:1001@example.com",
        );
        let ha1 = digest::ha1(alg, "1000", REALM, password);
        let ha2 = digest::ha2(alg, "INVITE", uri);
        let response = digest::response(alg, &ha1, &nonce, "00000001", "c", "auth", &ha2);
        format!(
            "Proxy-Authorization: Digest username=\"1000\", realm=\"{REALM}\", nonce=\"{nonce}\", \
             uri=\"{uri}\", response=\"{response}\", algorithm={}, cnonce=\"c\", \
             opaque=\"{opaque}\", qop=auth, nc=00000001\r\n",
            alg.token()
        )
    };
    // MD5 (wrong) first, SHA-256 (right) second: authorized by the SHA-256 one.
    let extra = format!(
        "{}{}",
        creds(&offered[1], "wrong"),
        creds(&offered[0], "secret1000")
    );
    let user = reg.authorize(&invite(&extra), t0()).expect("authorized");
    assert_eq!(user.aor, AOR);
}

// ---------------------------------------------------------------------------------------------
// Register shards (issue 16): the authenticate phase on N authenticators routed by Call-ID,
// the bind phase on the one registrar, must answer exactly as the unsharded registrar.
// ---------------------------------------------------------------------------------------------

const AOR_B: &str = "sip:1001@example.com";

/// The registrar as the gateway runs it with `n` register shards: `n` = 1 is the unsharded
/// path (`handle_request`); otherwise each REGISTER's authenticate phase runs on the
/// authenticator its Call-ID routes to, the bind phase on the registrar.
struct Sharded {
    core: Reg,
    shards: Vec<gateway::registrar::Authenticator<MemoryCredentials>>,
    failures: Vec<(String, gateway::security::FailReason)>,
}

impl Sharded {
    fn new(n: usize) -> Self {
        let core = registrar();
        let shards = if n > 1 {
            (0..n).map(|_| core.authenticator()).collect()
        } else {
            Vec::new()
        };
        Sharded {
            core,
            shards,
            failures: Vec::new(),
        }
    }

    fn handle(&mut self, req: &Request, now: SystemTime) -> Response {
        if self.shards.is_empty() {
            let r = self.core.handle_request(req, phone(), now);
            while let Some(f) = self.core.poll_auth_failure() {
                self.failures.push((f.user, f.reason));
            }
            return r;
        }
        let call_id = req
            .headers
            .iter()
            .find_map(|h| match h {
                Header::CallId(c) => Some(c.value().to_owned()),
                _ => None,
            })
            .expect("Call-ID");
        let i = gateway::registrar::shard_of(&call_id, self.shards.len());
        let shard = &mut self.shards[i];
        let r = match shard.check_register(req, now) {
            Ok(authorized) => self.core.bind(req, &authorized, phone(), now),
            Err(r) => r,
        };
        while let Some(f) = shard.poll_auth_failure() {
            self.failures.push((f.user, f.reason));
        }
        r
    }

    /// Every AOR's bindings: (AOR, contact URI, expiry, Call-ID, CSeq), sorted.
    fn location(&self) -> Vec<(String, String, SystemTime, String, u32)> {
        let mut out: Vec<_> = self
            .core
            .location()
            .aors()
            .flat_map(|aor| {
                self.core.location().get(aor).iter().map(move |b| {
                    (
                        aor.to_owned(),
                        b.uri.clone(),
                        b.expires_at,
                        b.call_id.clone(),
                        b.cseq,
                    )
                })
            })
            .collect();
        out.sort();
        out
    }
}

/// What one run of the sequence observed: per step the status, the Contact fields of the
/// response, whether its challenges say stale, and the location after it; then the failures
/// reported and the registrar's events.
type Observed = (
    Vec<(
        u16,
        Vec<String>,
        bool,
        Vec<(String, String, SystemTime, String, u32)>,
    )>,
    Vec<(String, gateway::security::FailReason)>,
    Vec<RegistrarEvent>,
);

/// The sequence: two phones challenged in the same second on (with 4 shards) different
/// shards, both authorized, a refresh, a replayed nonce-count (in the same and in another
/// Call-ID), a wrong password, another
/// user's AOR, an unregistration, and the other phone's expiry.
fn register_sequence(n: usize) -> Observed {
    let (call_a, call_b) = ("shard-a-1", "shard-b-7");
    let mut reg = Sharded::new(n);
    let mut steps = Vec::new();
    let mut step = |reg: &mut Sharded, req: Request, now: SystemTime| {
        let r = reg.handle(&req, now);
        let stale = challenges(&r).iter().any(|c| c.contains("stale=true"));
        let listed = contacts(&r).iter().map(|c| c.to_string()).collect();
        steps.push((code(&r), listed, stale, reg.location()));
        r
    };
    let t = t0();
    let contact_a = "Contact: <sip:1000@10.0.0.7>\r\n";
    let contact_b = "Contact: <sip:1001@10.0.0.8>;expires=120\r\n";
    let ch_a = challenges(&step(&mut reg, register(call_a, 1, contact_a), t))[0].to_owned();
    let ch_b =
        challenges(&step(&mut reg, register_to(AOR_B, call_b, 1, contact_b), t))[0].to_owned();
    let authed = |ch: &str, user: &str, pw: &str, nc: u32| {
        format!("Authorization: {}\r\n", answer(ch, user, pw, nc, "cafe"))
    };
    let a = |cseq: u32, nc: u32, extra: &str| {
        let auth = authed(&ch_a, "1000", "secret1000", nc);
        register(call_a, cseq, &format!("{extra}{auth}"))
    };
    // Both authorized, in the same second.
    step(&mut reg, a(2, 1, contact_a), t);
    let b_ok = authed(&ch_b, "1001", "secret1001", 1);
    step(
        &mut reg,
        register_to(AOR_B, call_b, 2, &format!("{contact_b}{b_ok}")),
        t,
    );
    // A refresh a minute later; then the same nonce-count again (a replay).
    step(&mut reg, a(3, 2, contact_a), t + secs(60));
    step(&mut reg, a(4, 2, contact_a), t + secs(61));
    // The same credentials replayed in another Call-ID (another shard's, with 4).
    let replayed = authed(&ch_a, "1000", "secret1000", 2);
    step(
        &mut reg,
        register(call_b, 9, &format!("{contact_a}{replayed}")),
        t + secs(61),
    );
    // B with a wrong password; B claiming A's AOR.
    let b_wrong = authed(&ch_b, "1001", "not-it", 2);
    step(
        &mut reg,
        register_to(AOR_B, call_b, 3, &format!("{contact_b}{b_wrong}")),
        t + secs(62),
    );
    let b_as_a = authed(&ch_b, "1001", "secret1001", 3);
    step(
        &mut reg,
        register_to(AOR, call_b, 4, &format!("{contact_b}{b_as_a}")),
        t + secs(63),
    );
    // A unregisters.
    step(
        &mut reg,
        a(5, 3, "Contact: <sip:1000@10.0.0.7>;expires=0\r\n"),
        t + secs(64),
    );
    // B's binding (120 s from t) expires.
    let gone = reg.core.expire(t + secs(121));
    assert_eq!(gone, vec![AOR_B.to_owned()]);
    steps.push((0, Vec::new(), false, reg.location()));
    let events = std::iter::from_fn(|| reg.core.poll_event()).collect();
    (steps, reg.failures, events)
}

#[test]
fn sharded_authentication_answers_as_the_unsharded_registrar() {
    use gateway::registrar::shard_of;
    use gateway::security::FailReason;
    // The two phones' Call-IDs go to different shards of 4 (the routing is a fixed hash).
    assert_ne!(shard_of("shard-a-1", 4), shard_of("shard-b-7", 4));
    assert_eq!(shard_of(" shard-a-1 ", 4), shard_of("shard-a-1", 4));
    let one = register_sequence(1);
    let four = register_sequence(4);
    // What the unsharded registrar does (the reference), step by step.
    let codes: Vec<u16> = one.0.iter().map(|s| s.0).collect();
    assert_eq!(codes, [401, 401, 200, 200, 200, 401, 401, 401, 403, 200, 0]);
    let bound = |s: &(u16, Vec<String>, bool, Vec<_>)| {
        s.3.iter()
            .map(|b: &(String, String, SystemTime, String, u32)| b.0.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(bound(&one.0[3]), [AOR, AOR_B]);
    assert_eq!(bound(&one.0[9]), [AOR_B]);
    assert!(one.0[10].3.is_empty());
    let reasons: Vec<FailReason> = one.1.iter().map(|f| f.1).collect();
    assert_eq!(
        reasons,
        [
            FailReason::Replay,
            FailReason::Replay,
            FailReason::WrongPassword,
            FailReason::WrongAor
        ]
    );
    assert_eq!(
        one.2,
        vec![
            registered(),
            RegistrarEvent::Registered { aor: AOR_B.into() },
            unregistered(),
            RegistrarEvent::Unregistered { aor: AOR_B.into() },
        ]
    );
    // Four shards: the same responses, locations, failures and events at every step.
    for (i, (a, b)) in one.0.iter().zip(&four.0).enumerate() {
        assert_eq!(a, b, "step {i}: unsharded vs 4 shards");
    }
    assert_eq!(one.0.len(), four.0.len());
    assert_eq!(one.1, four.1);
    assert_eq!(one.2, four.2);
}

#[test]
fn nonces_are_unique_across_shards_and_a_count_is_a_replay_on_any_of_them() {
    let core = registrar();
    let mut s1 = core.authenticator();
    let mut s2 = core.authenticator();
    let now = t0();
    // Challenges from two shards in the same second carry different nonces.
    let c1 = challenges(&s1.challenge(&register("x", 1, ""), now, false))[0].to_owned();
    let c2 = challenges(&s2.challenge(&register("y", 1, ""), now, false))[0].to_owned();
    assert_ne!(param(&c1, "nonce"), param(&c2, "nonce"));
    // A nonce-count accepted on one shard is a replay on another.
    let req = |nc: u32| {
        let auth = answer(&c1, "1000", "secret1000", nc, "abc");
        register("x", 2, &format!("Authorization: {auth}\r\n"))
    };
    assert!(s1.check_register(&req(1), now).is_ok());
    let replay = s2.check_register(&req(1), now).expect_err("replay");
    assert_eq!(code(&replay), 401);
    assert!(s2.check_register(&req(2), now).is_ok());
}

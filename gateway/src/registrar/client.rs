//! The client side of digest authentication and outbound registration, sans-IO: how the
//! gateway logs in to an ITSP (or another PBX) as a user agent.
//!
//! [`answer_challenge`] turns a 401/407 into the `Authorization` / `Proxy-Authorization` the
//! request must be re-sent with (RFC 3261 §22.2–22.3, RFC 7616 `SHA-256` preferred over `MD5`,
//! `qop=auth`). [`OutboundRegistration`] keeps one registration alive: REGISTER, answer the
//! challenge, refresh before the granted expiry, back off and retry when the registrar refuses
//! or does not answer. Time is passed in.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use rsip::headers::{Expires, UntypedHeader, UserAgent};
use rsip::{Header, Method, Request, Response};

use super::digest::{self, Algorithm};
use crate::sip::builder::{self, Local, RequestBuilder};
use crate::sip::message;

/// An account at a remote registrar / proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCredentials {
    /// Digest user name (also the user part of the registered AOR).
    pub username: String,
    /// Password.
    pub password: String,
}

/// The `Authorization` (answering a 401) or `Proxy-Authorization` (a 407) header for
/// re-sending `method` to `uri` after `challenge`, or `None` when the response carries no
/// Digest challenge we can answer (unknown algorithm, `qop` without `auth`).
///
/// Of several challenges the first one with a supported algorithm is answered (a server lists
/// its preferred one first, RFC 8760).
pub fn answer_challenge(
    challenge: &Response,
    method: &str,
    uri: &str,
    creds: &ClientCredentials,
    cnonce: &str,
    nc: u32,
) -> Option<Header> {
    let proxy = challenge.status_code.code() == 407;
    for h in challenge.headers.iter() {
        let value = match h {
            Header::WwwAuthenticate(v) if !proxy => v.value(),
            Header::ProxyAuthenticate(v) if proxy => v.value(),
            _ => continue,
        };
        let Ok(c) = digest::parse_authorization(value) else {
            continue;
        };
        let alg = match c.algorithm.as_deref() {
            None => Algorithm::Md5,
            Some(t) => match Algorithm::from_token(t) {
                Some(a) => a,
                None => continue,
            },
        };
        let (Some(realm), Some(nonce)) = (c.realm.as_deref(), c.nonce.as_deref()) else {
            continue;
        };
        let qop_auth = match c.qop.as_deref() {
            None => false,
            Some(q) => {
                if !q.split(',').any(|t| t.trim().eq_ignore_ascii_case("auth")) {
                    continue; // auth-int only
                }
                true
            }
        };
        let ha1 = digest::ha1(alg, &creds.username, realm, &creds.password);
        let ha2 = digest::ha2(alg, method, uri);
        let nc_text = format!("{nc:08x}");
        let mut v = format!(
            "Digest username={}, realm={}, nonce={}, uri={}, algorithm={}",
            digest::quote(&creds.username),
            digest::quote(realm),
            digest::quote(nonce),
            digest::quote(uri),
            alg.token(),
        );
        let response = if qop_auth {
            let r = digest::response(alg, &ha1, nonce, &nc_text, cnonce, "auth", &ha2);
            v.push_str(&format!(
                ", qop=auth, nc={nc_text}, cnonce={}",
                digest::quote(cnonce)
            ));
            r
        } else {
            // RFC 2069 compatibility: H(HA1:nonce:HA2).
            alg.hash_hex(format!("{ha1}:{nonce}:{ha2}").as_bytes())
        };
        v.push_str(&format!(", response=\"{response}\""));
        if let Some(o) = c.opaque.as_deref() {
            v.push_str(&format!(", opaque={}", digest::quote(o)));
        }
        return Some(if proxy {
            Header::ProxyAuthorization(rsip::headers::ProxyAuthorization::new(v))
        } else {
            Header::Authorization(rsip::headers::Authorization::new(v))
        });
    }
    None
}

/// Where an outbound registration stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboundState {
    /// Not registered (never yet, or refused / lapsed); a REGISTER goes out at the next try.
    Unregistered,
    /// A REGISTER is in flight.
    Pending,
    /// Registered until the given instant.
    Registered(Instant),
}

/// One registration of the gateway at a remote registrar.
#[derive(Debug)]
pub struct OutboundRegistration {
    registrar: String,
    aor: String,
    contact: String,
    local: SocketAddr,
    call_id: String,
    tag: String,
    cseq: u32,
    expires: u32,
    retry: Duration,
    creds: ClientCredentials,
    state: OutboundState,
    next_at: Instant,
    /// Challenges answered since the last success (a second one in a row is a refusal).
    auth_tries: u32,
    nc: u32,
    last_failure: Option<String>,
    /// The Via transport: `UDP`, or `TLS` for a registration over a TLS connection.
    via: &'static str,
    /// Tags, Call-ID, branches and cnonces.
    rng: StdRng,
}

impl OutboundRegistration {
    /// Registers `creds.username@domain` at `registrar` (a SIP URI such as `sip:192.0.2.7:5060`)
    /// with Contact `sip:<user>@<local>`, asking for `expires` seconds; failed attempts are
    /// retried every `retry`. The first REGISTER is due at `now`.
    pub fn new(
        registrar: &str,
        domain: &str,
        creds: ClientCredentials,
        local: SocketAddr,
        expires: u32,
        retry: Duration,
        now: Instant,
    ) -> Self {
        let mut r = OutboundRegistration {
            registrar: registrar.to_owned(),
            aor: format!("sip:{}@{domain}", creds.username),
            contact: format!("<sip:{}@{local}>", creds.username),
            local,
            call_id: String::new(),
            tag: String::new(),
            cseq: 0,
            expires,
            retry,
            creds,
            state: OutboundState::Unregistered,
            next_at: now,
            auth_tries: 0,
            nc: 0,
            last_failure: None,
            via: "UDP",
            rng: StdRng::from_os_rng(),
        };
        r.new_ids();
        r
    }

    fn new_ids(&mut self) {
        self.call_id = Local::udp(self.local, "cfreg").call_id(&mut self.rng);
        self.tag = Local::udp(self.local, "cf").tag(&mut self.rng);
    }

    /// The same registration with ids (Call-ID, tags, branches, cnonces) from `rng` (tests
    /// make them deterministic).
    #[must_use]
    pub fn with_rng(mut self, rng: StdRng) -> Self {
        self.rng = rng;
        self.new_ids();
        self
    }

    /// The same registration over TLS (RFC 3261 §26.3.1; `local` is then our TLS listener):
    /// Via `TLS`, the Request-URI and the Contact carry `transport=tls`, so the registrar
    /// reaches us back over TLS (over the connection the REGISTER came in on).
    #[must_use]
    pub fn over_tls(mut self) -> Self {
        self.via = "TLS";
        self.registrar = format!("{};transport=tls", self.registrar);
        self.contact = format!("<sip:{}@{};transport=tls>", self.creds.username, self.local);
        self
    }

    fn rand(&mut self) -> u64 {
        self.rng.next_u64()
    }

    /// Current state.
    pub fn state(&self) -> OutboundState {
        self.state
    }

    /// Why the last attempt failed, if it did.
    pub fn last_failure(&self) -> Option<&str> {
        self.last_failure.as_deref()
    }

    /// When [`poll_request`](Self::poll_request) next has something (None while a REGISTER
    /// is in flight).
    pub fn poll_timeout(&self) -> Option<Instant> {
        (self.state != OutboundState::Pending).then_some(self.next_at)
    }

    fn register(&mut self, auth: Option<Header>) -> Option<Request> {
        self.cseq += 1;
        let local = Local {
            transport: self.via,
            addr: self.local,
            prefix: "cfr",
        };
        let (via, _) = local.new_via(&mut self.rng);
        let Ok(uri) = builder::parse_uri(&self.registrar) else {
            self.last_failure = Some("cannot build a REGISTER (bad registrar URI?)".into());
            return None;
        };
        let aor = format!("<{}>", self.aor);
        let mut b = RequestBuilder::new(Method::Register, uri, via)
            .from(&aor, Some(&self.tag))
            .to(&aor, None)
            .call_id(self.call_id.clone())
            .cseq(self.cseq)
            .contact(self.contact.clone())
            .header(Header::Expires(Expires::new(self.expires.to_string())))
            .header(Header::UserAgent(UserAgent::new("callfabric")));
        if let Some(h) = auth {
            b = b.header(h);
        }
        let req = b.build();
        self.state = OutboundState::Pending;
        Some(req)
    }

    /// The REGISTER to send now, if one is due.
    pub fn poll_request(&mut self, now: Instant) -> Option<Request> {
        if self.state == OutboundState::Pending || now < self.next_at {
            return None;
        }
        if let OutboundState::Registered(until) = self.state {
            if now >= until {
                self.state = OutboundState::Unregistered;
            }
        }
        self.auth_tries = 0;
        let r = self.register(None);
        if r.is_none() {
            self.next_at = now + self.retry;
        }
        r
    }

    /// The final response to our REGISTER; may return the authenticated retry to send.
    pub fn on_response(&mut self, resp: &Response, now: Instant) -> Option<Request> {
        let code = resp.status_code.code();
        if code < 200 {
            return None;
        }
        match code {
            200..=299 => {
                let granted = granted_expires(resp, &self.contact).unwrap_or(self.expires);
                let granted = Duration::from_secs(u64::from(granted.max(1)));
                self.state = OutboundState::Registered(now + granted);
                // Refresh at 80 % of the granted time (at least 1 s before it lapses).
                let refresh = granted
                    .mul_f64(0.8)
                    .min(granted.saturating_sub(Duration::from_secs(1)));
                self.next_at = now + refresh.max(Duration::from_millis(500));
                self.auth_tries = 0;
                self.last_failure = None;
                None
            }
            401 | 407 if self.auth_tries == 0 => {
                self.auth_tries += 1;
                self.nc += 1;
                let cnonce = format!("{:016x}", self.rand());
                let registrar = self.registrar.clone();
                match answer_challenge(resp, "REGISTER", &registrar, &self.creds, &cnonce, self.nc)
                {
                    Some(h) => self.register(Some(h)),
                    None => {
                        self.fail(format!("{code} with no challenge we can answer"), now);
                        None
                    }
                }
            }
            423 => {
                // Interval Too Brief: take the registrar's Min-Expires and retry at once.
                if let Some(min) = resp.headers.iter().find_map(|h| match h {
                    Header::MinExpires(m) => m.value().trim().parse::<u32>().ok(),
                    _ => None,
                }) {
                    self.expires = min.max(self.expires);
                }
                self.state = OutboundState::Unregistered;
                self.next_at = now;
                None
            }
            _ => {
                self.fail(format!("refused with {code}"), now);
                None
            }
        }
    }

    /// The REGISTER got no answer (Timer F) or could not be sent.
    pub fn on_timeout(&mut self, now: Instant) {
        self.fail("no answer".into(), now);
    }

    fn fail(&mut self, why: String, now: Instant) {
        self.last_failure = Some(why);
        self.state = OutboundState::Unregistered;
        self.next_at = now + self.retry;
    }
}

/// The expiry the registrar granted our contact: its `expires` parameter in the 200's Contact
/// list, else the Expires header.
fn granted_expires(resp: &Response, our_contact: &str) -> Option<u32> {
    let ours = our_contact.trim_matches(|c| c == '<' || c == '>');
    for h in resp.headers.iter() {
        if let Header::Contact(c) = h {
            for a in message::parse_addresses(c.value(), true).unwrap_or_default() {
                if a.uri == ours {
                    if let Some(Some(e)) = a.param("expires") {
                        return e.parse().ok();
                    }
                }
            }
        }
    }
    resp.headers.iter().find_map(|h| match h {
        Header::Expires(e) => e.value().trim().parse().ok(),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registrar::{Config, MemoryCredentials, Registrar};
    use std::time::SystemTime;

    fn creds() -> ClientCredentials {
        ClientCredentials {
            username: "2999".into(),
            password: "secret".into(),
        }
    }

    /// Our client against our own registrar: challenge answered (SHA-256 preferred, MD5 when
    /// that is all that is offered), 200, refresh at 80 %, wrong password refused without a
    /// loop, no answer retried later.
    #[test]
    fn registers_at_our_own_registrar_and_refreshes() {
        for algs in [
            vec![Algorithm::Sha256, Algorithm::Md5],
            vec![Algorithm::Md5],
        ] {
            let mut cfg = Config::new("itsp.example", b"k");
            cfg.algorithms = algs.clone();
            let mut users = MemoryCredentials::new();
            users.add_user("2999", "itsp.example", "secret", "sip:2999@itsp.example");
            let mut registrar: Registrar<MemoryCredentials, u8> = Registrar::new(cfg, users);
            let t0 = Instant::now();
            let local: SocketAddr = "192.0.2.1:5060".parse().expect("addr");
            let mut reg = OutboundRegistration::new(
                "sip:192.0.2.7:5060",
                "itsp.example",
                creds(),
                local,
                300,
                Duration::from_secs(30),
                t0,
            );
            let first = reg.poll_request(t0).expect("REGISTER due at once");
            assert!(reg.poll_request(t0).is_none(), "one in flight at a time");
            let challenge = registrar.handle_request(&first, 1, SystemTime::now());
            assert_eq!(challenge.status_code.code(), 401);
            let second = reg
                .on_response(&challenge, t0)
                .expect("authenticated retry");
            let text = String::from_utf8(message::serialize_request(&second)).expect("utf-8");
            assert!(
                text.contains(&format!("algorithm={}", algs[0].token())),
                "answers the first challenge: {text}"
            );
            assert!(text.contains("CSeq: 2 REGISTER"), "{text}");
            let ok = registrar.handle_request(&second, 1, SystemTime::now());
            assert_eq!(ok.status_code.code(), 200, "{ok:?}");
            assert!(reg.on_response(&ok, t0).is_none());
            assert_eq!(
                reg.state(),
                OutboundState::Registered(t0 + Duration::from_secs(300))
            );
            assert_eq!(reg.poll_timeout(), Some(t0 + Duration::from_secs(240)));
            assert!(reg.poll_request(t0 + Duration::from_secs(239)).is_none());
            assert!(reg.poll_request(t0 + Duration::from_secs(240)).is_some());
        }
    }

    /// Over TLS: Via `TLS`, `transport=tls` in the Request-URI and the Contact, and the expiry
    /// the registrar grants that Contact is the one the refresh is timed by.
    #[test]
    fn registers_over_tls_with_a_tls_contact() {
        let mut users = MemoryCredentials::new();
        users.add_user("2999", "itsp.example", "secret", "sip:2999@itsp.example");
        let mut cfg = Config::new("itsp.example", b"k");
        cfg.min_expires = 5;
        let mut registrar: Registrar<MemoryCredentials, u8> = Registrar::new(cfg, users);
        let t0 = Instant::now();
        let mut reg = OutboundRegistration::new(
            "sip:192.0.2.7:5061",
            "itsp.example",
            creds(),
            "192.0.2.1:5061".parse().expect("addr"),
            10,
            Duration::from_secs(30),
            t0,
        )
        .over_tls();
        let first = reg.poll_request(t0).expect("due");
        let text = String::from_utf8(message::serialize_request(&first)).expect("utf-8");
        assert!(
            text.to_ascii_lowercase()
                .starts_with("register sip:192.0.2.7:5061;transport=tls sip/2.0\r\n"),
            "{text}"
        );
        assert!(text.contains("Via: SIP/2.0/TLS 192.0.2.1:5061;"), "{text}");
        assert!(
            text.contains("Contact: <sip:2999@192.0.2.1:5061;transport=tls>"),
            "{text}"
        );
        let challenge = registrar.handle_request(&first, 1, SystemTime::now());
        let second = reg.on_response(&challenge, t0).expect("retry");
        let ok = registrar.handle_request(&second, 1, SystemTime::now());
        assert_eq!(ok.status_code.code(), 200, "{ok:?}");
        assert!(reg.on_response(&ok, t0).is_none());
        assert_eq!(
            reg.state(),
            OutboundState::Registered(t0 + Duration::from_secs(10))
        );
        assert_eq!(reg.poll_timeout(), Some(t0 + Duration::from_secs(8)));
    }

    #[test]
    fn wrong_password_is_refused_once_then_retried_later() {
        let mut users = MemoryCredentials::new();
        users.add_user("2999", "itsp.example", "other", "sip:2999@itsp.example");
        let mut registrar: Registrar<MemoryCredentials, u8> =
            Registrar::new(Config::new("itsp.example", b"k"), users);
        let t0 = Instant::now();
        let mut reg = OutboundRegistration::new(
            "sip:192.0.2.7",
            "itsp.example",
            creds(),
            "192.0.2.1:5060".parse().expect("addr"),
            300,
            Duration::from_secs(30),
            t0,
        );
        let r1 = reg.poll_request(t0).expect("due");
        let c1 = registrar.handle_request(&r1, 1, SystemTime::now());
        let r2 = reg.on_response(&c1, t0).expect("retry with auth");
        let c2 = registrar.handle_request(&r2, 1, SystemTime::now());
        assert_eq!(c2.status_code.code(), 401);
        assert!(
            reg.on_response(&c2, t0).is_none(),
            "no loop on a second challenge"
        );
        assert_eq!(reg.state(), OutboundState::Unregistered);
        assert!(reg.last_failure().is_some_and(|f| f.contains("401")));
        assert_eq!(reg.poll_timeout(), Some(t0 + Duration::from_secs(30)));
        reg.on_timeout(t0);
        assert_eq!(reg.last_failure(), Some("no answer"));
    }

    #[test]
    fn answers_a_407_with_proxy_authorization_and_rfc2069_without_qop() {
        let req =
            "INVITE sip:2002@192.0.2.7 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\n\
                   From: <sip:2999@x>;tag=a\r\nTo: <sip:2002@x>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\
                   Content-Length: 0\r\n\r\n";
        let Ok(message::SipMessage::Request(req)) = message::parse(req.as_bytes()) else {
            panic!("parses")
        };
        let mut r = message::response_for(&req, 407, "");
        r.headers.push(Header::ProxyAuthenticate(
            rsip::headers::ProxyAuthenticate::new("Digest realm=\"x\", nonce=\"abc\""),
        ));
        let h = answer_challenge(&r, "INVITE", "sip:2002@192.0.2.7", &creds(), "cn", 1)
            .expect("answered");
        let Header::ProxyAuthorization(v) = h else {
            panic!("a Proxy-Authorization")
        };
        // RFC 2069: MD5(HA1:nonce:HA2)
        let ha1 = digest::ha1(Algorithm::Md5, "2999", "x", "secret");
        let ha2 = digest::ha2(Algorithm::Md5, "INVITE", "sip:2002@192.0.2.7");
        let want = Algorithm::Md5.hash_hex(format!("{ha1}:abc:{ha2}").as_bytes());
        assert!(
            v.value().contains(&format!("response=\"{want}\"")),
            "{}",
            v.value()
        );
        assert!(!v.value().contains("qop"));
        // An unknown algorithm only: nothing to answer.
        let mut r = message::response_for(&req, 401, "");
        r.headers.push(Header::WwwAuthenticate(
            rsip::headers::WwwAuthenticate::new(
                "Digest realm=\"x\", nonce=\"abc\", algorithm=SHA-512-256, qop=\"auth\"",
            ),
        ));
        assert!(answer_challenge(&r, "INVITE", "sip:x", &creds(), "cn", 1).is_none());
    }
}

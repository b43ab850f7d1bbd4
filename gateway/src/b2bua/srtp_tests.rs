//! SDES keys (`a=crypto`) cross the B2BUA only between two TLS legs (`srtp.rs`).

use super::tests::{b_response, invite_from_a, peer, response, FakeMedia};
use super::*;
use crate::media::srtp::SdesKey;
use crate::transport::{ConnectionId, Transport as Tp};

const KEY_A: &str =
    "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz";
const KEY_B: &str =
    "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:d0RmdmcmVCspeEc3QGZiNWpVLFJhQX1cfHAwJSoj";

fn savp(ip: &str, port: u16, key: &str) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
         m=audio {port} RTP/SAVP 0\r\na=rtpmap:0 PCMU/8000\r\n{key}\r\na=sendrecv\r\n"
    )
}

fn leg(addr: &str, tls: bool) -> Peer {
    let mut p = peer(addr);
    if tls {
        p.transport = Tp::Tls(ConnectionId(7));
    }
    p
}

/// A (TLS or not) calls B (TLS or not) with SRTP keys; B answers with its own. Returns the
/// body of B's INVITE and of A's 200.
fn call(a_tls: bool, b_tls: bool) -> (String, String) {
    let (to_b, to_a, _) = call_in(&mut FakeMedia::default(), a_tls, b_tls, KEY_A, KEY_B);
    (to_b, to_a)
}

/// [`call`] on `media`, A offering `a_keys`, B answering `b_key`; the B2BUA is returned for
/// further requests.
fn call_in(
    media: &mut dyn MediaControl,
    a_tls: bool,
    b_tls: bool,
    a_keys: &str,
    b_key: &str,
) -> (String, String, B2bua) {
    let mut b2b = B2bua::new(Config::default());
    let now = Instant::now();
    let mut inv = invite_from_a();
    inv = dialog::with_body(
        inv,
        savp("10.0.0.1", 4000, a_keys).into_bytes(),
        "application/sdp",
    );
    b2b.on_invite(
        TransactionKey::client("z9hG4bKa1", Method::Invite),
        inv,
        leg("10.0.0.1:5060", a_tls),
        Routed {
            caller: Caller {
                device: Some("PJSIP/1001".into()),
                limit: 0,
            },
            target: Target::Device {
                device: "PJSIP/1002".into(),
                contact: "sip:1002@10.0.0.2:5070".into(),
                dest: leg("10.0.0.2:5070", b_tls),
                limit: 0,
                forks: Vec::new(),
            },
        },
        media,
        now,
    );
    let acts: Vec<Action> = std::iter::from_fn(|| b2b.poll_action()).collect();
    let (key, b_inv) = acts
        .iter()
        .find_map(|a| match a {
            Action::Request { key, request, .. } => Some((key.clone(), request.clone())),
            _ => None,
        })
        .expect("an INVITE to B");
    let ok = b_response(&b_inv, 200, "btag", &savp("10.0.0.2", 6000, b_key));
    b2b.on_response(&key, ok, media, now);
    let acts: Vec<Action> = std::iter::from_fn(|| b2b.poll_action()).collect();
    let a_ok = response(&acts, 200).expect("200 to A");
    (
        String::from_utf8_lossy(&b_inv.body).into_owned(),
        String::from_utf8_lossy(&a_ok.body).into_owned(),
        b2b,
    )
}

/// A fake relay that records the SDES keys the B2BUA hands it for injected audio.
#[derive(Default)]
struct KeyedMedia {
    inner: FakeMedia,
    keys: Vec<(Side, Option<SdesKey>)>,
}

impl MediaControl for KeyedMedia {
    fn open(&mut self, call: CallId) -> Option<MediaPorts> {
        self.inner.open(call)
    }
    fn set_remote(&mut self, call: CallId, side: Side, rtp: SocketAddr, rtcp: Option<SocketAddr>) {
        self.inner.set_remote(call, side, rtp, rtcp)
    }
    fn bridge(&mut self, call: CallId) {
        self.inner.bridge(call)
    }
    fn close(&mut self, call: CallId) {
        self.inner.close(call)
    }
    fn idle(&self, call: CallId, now: Instant) -> Option<Duration> {
        self.inner.idle(call, now)
    }
    fn srtp(&mut self, _: CallId, side: Side, key: Option<SdesKey>) {
        self.keys.push((side, key));
    }
}

fn sdes(line: &str) -> SdesKey {
    SdesKey::parse(line.strip_prefix("a=crypto:").expect("a=crypto line")).expect("key")
}

/// Music on hold to an SRTP phone is protected with the key that phone receives with: A gets
/// B's answer key; B gets the line of A's offer that B's answer chose (tag 2 here, the 32-bit
/// tag suite), not A's first line.
#[test]
fn each_phone_gets_injected_audio_under_the_key_it_receives_with() {
    const A2: &str =
        "a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNk";
    const B2: &str =
        "a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:MDEyMzQ1Njc4OWFiY2RlZmdoaWprbG1ub3BxcnN0";
    let mut media = KeyedMedia::default();
    let (_, to_a, _) = call_in(&mut media, true, true, &format!("{KEY_A}\r\n{A2}"), B2);
    assert!(to_a.contains(B2), "{to_a}");
    assert_eq!(media.keys.len(), 2, "{:?}", media.keys);
    assert!(
        media.keys.contains(&(Side::A, Some(sdes(B2)))),
        "{:?}",
        media.keys
    );
    assert!(
        media.keys.contains(&(Side::B, Some(sdes(A2)))),
        "{:?}",
        media.keys
    );

    // Keys removed (a leg not TLS): no key, plain RTP.
    let mut media = KeyedMedia::default();
    call_in(&mut media, true, false, KEY_A, KEY_B);
    assert_eq!(media.keys, vec![(Side::A, None), (Side::B, None)]);
}

#[test]
fn sdes_keys_pass_between_two_tls_legs() {
    let (to_b, to_a) = call(true, true);
    assert!(to_b.contains(KEY_A), "B gets A's key:\n{to_b}");
    assert!(to_a.contains(KEY_B), "A gets B's key:\n{to_a}");
    assert!(to_b.contains("RTP/SAVP") && to_a.contains("RTP/SAVP"));
}

#[test]
fn sdes_keys_never_reach_or_leave_a_leg_that_is_not_tls() {
    for (a_tls, b_tls) in [(true, false), (false, true), (false, false)] {
        let (to_b, to_a) = call(a_tls, b_tls);
        assert!(
            !to_b.contains("a=crypto"),
            "{a_tls}/{b_tls}: B got a key:\n{to_b}"
        );
        assert!(
            !to_a.contains("a=crypto"),
            "{a_tls}/{b_tls}: A got a key:\n{to_a}"
        );
    }
}

#[test]
fn a_fork_branch_that_is_not_tls_gets_no_keys() {
    let mut b2b = B2bua::new(Config::default());
    let mut media = FakeMedia::default();
    let inv = dialog::with_body(
        invite_from_a(),
        savp("10.0.0.1", 4000, KEY_A).into_bytes(),
        "application/sdp",
    );
    b2b.on_invite(
        TransactionKey::client("z9hG4bKa1", Method::Invite),
        inv,
        leg("10.0.0.1:5060", true),
        Routed {
            caller: Caller {
                device: Some("PJSIP/1001".into()),
                limit: 0,
            },
            target: Target::Device {
                device: "PJSIP/1002".into(),
                contact: "sip:1002@10.0.0.2:5070".into(),
                dest: leg("10.0.0.2:5070", true),
                limit: 0,
                forks: vec![fork::ForkTarget {
                    contact: "sip:1002@10.0.0.3:5060".into(),
                    dest: leg("10.0.0.3:5060", false),
                }],
            },
        },
        &mut media,
        Instant::now(),
    );
    let sent: Vec<(SocketAddr, String)> = std::iter::from_fn(|| b2b.poll_action())
        .filter_map(|a| match a {
            Action::Request { request, dest, .. } => Some((
                dest.addr,
                String::from_utf8_lossy(&request.body).into_owned(),
            )),
            _ => None,
        })
        .collect();
    assert_eq!(sent.len(), 2, "{sent:?}");
    for (to, body) in sent {
        let tls = to.ip().to_string() == "10.0.0.2";
        assert_eq!(body.contains(KEY_A), tls, "branch to {to}:\n{body}");
        assert!(
            body.contains("m=audio"),
            "branch to {to} has an offer:\n{body}"
        );
    }
}

//! SDES keys (`a=crypto`) cross the B2BUA only between two TLS legs (`srtp.rs`).

use super::tests::{b_response, invite_from_a, peer, response, FakeMedia};
use super::*;
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
    let mut b2b = B2bua::new(Config::default());
    let mut media = FakeMedia::default();
    let now = Instant::now();
    let mut inv = invite_from_a();
    inv = dialog::with_body(
        inv,
        savp("10.0.0.1", 4000, KEY_A).into_bytes(),
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
        &mut media,
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
    let ok = b_response(&b_inv, 200, "btag", &savp("10.0.0.2", 6000, KEY_B));
    b2b.on_response(&key, ok, &mut media, now);
    let acts: Vec<Action> = std::iter::from_fn(|| b2b.poll_action()).collect();
    let a_ok = response(&acts, 200).expect("200 to A");
    (
        String::from_utf8_lossy(&b_inv.body).into_owned(),
        String::from_utf8_lossy(&a_ok.body).into_owned(),
    )
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

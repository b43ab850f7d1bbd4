//! The B2BUA in virtual time, with a fake relay: call flows, CANCEL, busy, limits, hold,
//! glare, the missing ACK and the media timeout.

use super::*;
use crate::sip::message::serialize;
pub(super) use crate::sip::test_util::request;
use crate::transport::Transport as Tp;
use statebus::DeviceState;

#[derive(Default)]
pub(super) struct FakeMedia {
    open: Vec<CallId>,
    pub(super) closed: Vec<CallId>,
    pub(super) remotes: Vec<(CallId, Side, SocketAddr)>,
    bridged: Vec<CallId>,
    idle: Duration,
    exhausted: bool,
    holds: Vec<(CallId, Side, bool)>,
}

impl MediaControl for FakeMedia {
    fn open(&mut self, call: CallId) -> Option<MediaPorts> {
        if self.exhausted {
            return None;
        }
        self.open.push(call);
        Some(MediaPorts {
            a: "192.0.2.1:20000".parse().ok()?,
            b: "192.0.2.1:20002".parse().ok()?,
        })
    }
    fn set_remote(&mut self, call: CallId, side: Side, rtp: SocketAddr, _: Option<SocketAddr>) {
        self.remotes.push((call, side, rtp));
    }
    fn bridge(&mut self, call: CallId) {
        self.bridged.push(call);
    }
    fn close(&mut self, call: CallId) {
        self.closed.push(call);
    }
    fn idle(&self, _: CallId, _: Instant) -> Option<Duration> {
        Some(self.idle)
    }
    fn hold(&mut self, call: CallId, holder: Side, holding: bool) {
        self.holds.push((call, holder, holding));
    }
}

pub(super) fn peer(addr: &str) -> Peer {
    Peer {
        addr: addr.parse().expect("addr"),
        transport: Tp::Udp,
        local: "192.0.2.1:5060".parse().expect("addr"),
    }
}

/// An SDP with a fresh origin version each time (RFC 3264 §8: a changed offer has a higher
/// version; an unchanged version is a session refresh).
pub(super) fn sdp(ip: &str, port: u16, dir: &str) -> String {
    static VERSION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let v = VERSION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!(
        "v=0\r\no=- 1 {v} IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n\
         a={dir}\r\n"
    )
}

pub(super) fn invite_from_a() -> Request {
    request(
        "INVITE sip:1002@gw SIP/2.0
Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKa1
Max-Forwards: 70
From: \"Alice\" <sip:1001@gw>;tag=atag
To: <sip:1002@gw>
Call-ID: a-call@10.0.0.1
CSeq: 1 INVITE
Contact: <sip:1001@10.0.0.1:5060>
",
        &sdp("10.0.0.1", 4000, "sendrecv"),
    )
}

/// The caller's CANCEL of [`invite_from_a`].
pub(super) fn cancel_from_a() -> Request {
    request(
        "CANCEL sip:1002@gw SIP/2.0
Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKa1
Max-Forwards: 70
From: \"Alice\" <sip:1001@gw>;tag=atag
To: <sip:1002@gw>
Call-ID: a-call@10.0.0.1
CSeq: 1 CANCEL
",
        "",
    )
}

/// A response from B to the request B received (tags and headers mirrored).
pub(super) fn b_response(req: &Request, code: u16, tag: &str, body: &str) -> Response {
    let mut r = message::response_with_tag(req, code, "", tag);
    r.headers
        .push(Header::Contact(Contact::new("<sip:1002@10.0.0.2:5070>")));
    if !body.is_empty() {
        r = dialog::response_with_body(r, body.as_bytes().to_vec(), "application/sdp");
    }
    r
}

struct Rig {
    b2b: B2bua,
    media: FakeMedia,
    now: Instant,
    a_key: TransactionKey,
    /// The actions of the last `call_with`/`pending_request`.
    last: Vec<Action>,
}

impl Rig {
    fn new() -> Rig {
        Rig {
            b2b: B2bua::new(Config {
                t1: Duration::from_millis(500),
                media_timeout: Some(Duration::from_secs(10)),
                ..Config::default()
            }),
            media: FakeMedia::default(),
            now: Instant::now(),
            a_key: TransactionKey::client("z9hG4bKa1", Method::Invite),
            last: Vec::new(),
        }
    }

    fn actions(&mut self) -> Vec<Action> {
        std::iter::from_fn(|| self.b2b.poll_action()).collect()
    }

    fn target(limit: usize) -> Target {
        Target::Device {
            device: "PJSIP/1002".into(),
            contact: "sip:1002@10.0.0.2:5070".into(),
            dest: peer("10.0.0.2:5070"),
            limit,
            forks: Vec::new(),
        }
    }

    /// A calls B; returns B's INVITE and its client key.
    fn call(&mut self, limit: usize) -> (Request, TransactionKey) {
        let caller = Caller {
            device: Some("PJSIP/1001".into()),
            limit: 0,
        };
        self.b2b.on_invite(
            self.a_key.clone(),
            invite_from_a(),
            peer("10.0.0.1:5060"),
            Routed {
                caller,
                target: Self::target(limit),
            },
            &mut self.media,
            self.now,
        );
        let mut out = None;
        for a in self.actions() {
            if let Action::Request { key, request, dest } = a {
                assert_eq!(dest.addr, "10.0.0.2:5070".parse().expect("addr"));
                out = Some((request, key));
            }
        }
        out.expect("an INVITE to B")
    }

    fn responses_to_a(actions: &[Action]) -> Vec<u16> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Respond { response, .. } => Some(response.status_code.code()),
                _ => None,
            })
            .collect()
    }

    /// Brings a call to Confirmed; returns (B's INVITE, A's 200).
    fn answered(&mut self) -> (Request, Response) {
        let (b_inv, b_key) = self.call(0);
        let ok = b_response(&b_inv, 200, "btag", &sdp("10.0.0.2", 6000, "sendrecv"));
        self.b2b.on_response(&b_key, ok, &mut self.media, self.now);
        let acts = self.actions();
        let a_ok = response(&acts, 200).expect("200 to A");
        let ack = a_ack(&a_ok);
        self.b2b.on_ack(&ack, &mut self.media, self.now);
        (b_inv, a_ok)
    }
}

/// The first response with status `code` among `acts`.
pub(super) fn response(acts: &[Action], code: u16) -> Option<Response> {
    acts.iter().find_map(|a| match a {
        Action::Respond { response, .. } if response.status_code.code() == code => {
            Some(response.clone())
        }
        _ => None,
    })
}

/// The first request the B2BUA sends (with its client transaction key).
fn forwarded(acts: &[Action]) -> Option<(TransactionKey, Request)> {
    acts.iter().find_map(|a| match a {
        Action::Request { key, request, .. } => Some((key.clone(), request.clone())),
        _ => None,
    })
}

pub(super) fn to_tag(r: &Response) -> String {
    tparse::field_tag(&r.headers, Field::To)
        .ok()
        .flatten()
        .expect("to tag")
}

pub(super) fn a_ack(a_ok: &Response) -> Request {
    request(
        &format!(
            "ACK sip:callfabric@192.0.2.1:5060 SIP/2.0
Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKack1
Max-Forwards: 70
From: \"Alice\" <sip:1001@gw>;tag=atag
To: <sip:1002@gw>;tag={}
Call-ID: a-call@10.0.0.1
CSeq: 1 ACK
",
            to_tag(a_ok)
        ),
        "",
    )
}

fn in_dialog_from_a(method: &str, seq: u32, a_tag_ours: &str, body: &str) -> Request {
    request(
        &format!(
            "{method} sip:callfabric@192.0.2.1:5060 SIP/2.0
Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKind{seq}
Max-Forwards: 70
From: \"Alice\" <sip:1001@gw>;tag=atag
To: <sip:1002@gw>;tag={a_tag_ours}
Call-ID: a-call@10.0.0.1
CSeq: {seq} {method}
Contact: <sip:1001@10.0.0.1:5060>
"
        ),
        body,
    )
}

fn text(req: &Request) -> String {
    String::from_utf8_lossy(&serialize(&SipMessage::Request(req.clone()))).into_owned()
}

#[test]
fn basic_call_anchors_media_and_tracks_device_state() {
    let mut rig = Rig::new();
    let (b_inv, b_key) = rig.call(0);
    let t = text(&b_inv);
    assert!(
        t.starts_with("INVITE sip:1002@10.0.0.2:5070 SIP/2.0\r\n"),
        "{t}"
    );
    assert!(
        t.contains("c=IN IP4 192.0.2.1\r\n"),
        "B sees the relay: {t}"
    );
    assert!(t.contains("m=audio 20002 RTP/AVP 0 101\r\n"), "{t}");
    assert!(!t.contains("a-call@10.0.0.1"), "leg B has its own Call-ID");
    assert!(!t.contains("tag=atag"), "leg B has its own From tag");
    assert!(t.contains("Max-Forwards: 69\r\n"));
    assert_eq!(rig.media.remotes[0].1, Side::A);
    assert_eq!(rig.b2b.device_state("PJSIP/1002"), DeviceState::Ringing);
    assert_eq!(rig.b2b.device_state("PJSIP/1001"), DeviceState::InUse);

    // 180 relayed with our own tag; 200 with the relay's A-side address.
    rig.b2b.on_response(
        &b_key,
        b_response(&b_inv, 180, "btag", ""),
        &mut rig.media,
        rig.now,
    );
    let acts = rig.actions();
    assert_eq!(Rig::responses_to_a(&acts), vec![180]);
    let ok = b_response(&b_inv, 200, "btag", &sdp("10.0.0.2", 6000, "sendrecv"));
    rig.b2b.on_response(&b_key, ok, &mut rig.media, rig.now);
    let acts = rig.actions();
    let a_ok = response(&acts, 200).expect("200 to A");
    let body = String::from_utf8_lossy(&a_ok.body).into_owned();
    assert!(body.contains("m=audio 20000 "), "{body}");
    assert!(body.contains("c=IN IP4 192.0.2.1"), "{body}");
    assert!(
        acts.iter().any(|a| matches!(a, Action::Stateless { message: SipMessage::Request(r), .. } if r.method == Method::Ack)),
        "B's 2xx is ACKed"
    );
    assert!(rig.media.bridged.contains(&CallId(1)));
    assert!(rig
        .media
        .remotes
        .iter()
        .any(|(_, s, a)| *s == Side::B && a.port() == 6000));
    assert_eq!(rig.b2b.device_state("PJSIP/1002"), DeviceState::InUse);

    // ACK from A; BYE from A → 200 to A, BYE to B, devices free, media closed.
    rig.b2b.on_ack(&a_ack(&a_ok), &mut rig.media, rig.now);
    let bye = in_dialog_from_a("BYE", 2, &to_tag(&a_ok), "");
    let bye_key = TransactionKey::client("z9hG4bKind2", Method::Bye);
    assert!(rig.b2b.on_in_dialog(&bye_key, bye, &mut rig.media, rig.now));
    let acts = rig.actions();
    assert_eq!(Rig::responses_to_a(&acts), vec![200]);
    let bye_b = acts
        .iter()
        .find_map(|a| match a {
            Action::Request { request, .. } if request.method == Method::Bye => {
                Some(request.clone())
            }
            _ => None,
        })
        .expect("BYE to B");
    let t = text(&bye_b);
    assert!(t.starts_with("BYE sip:1002@10.0.0.2:5070 SIP/2.0"), "{t}");
    assert!(t.contains("tag=btag"), "{t}");
    assert!(t.contains("CSeq: 2 BYE"), "{t}");
    assert_eq!(rig.media.closed, vec![CallId(1)]);
    assert!(rig.b2b.is_empty());
    assert_eq!(rig.b2b.device_state("PJSIP/1002"), DeviceState::NotInUse);
    assert!(acts
        .iter()
        .any(|a| matches!(a, Action::CallEnded { reason, .. } if reason == "bye-a")));
}

#[test]
fn cancel_before_answer_gives_487_and_cancels_b_after_its_provisional() {
    let mut rig = Rig::new();
    let (b_inv, b_key) = rig.call(0);
    let cancel = cancel_from_a();
    let ck = TransactionKey::client("z9hG4bKa1", Method::Cancel);
    let a_key = rig.a_key.clone();
    rig.b2b
        .on_cancel(&ck, &cancel, &a_key, &mut rig.media, rig.now);
    let acts = rig.actions();
    assert_eq!(Rig::responses_to_a(&acts), vec![200, 487]);
    assert!(
        !acts.iter().any(|a| matches!(a, Action::Cancel { .. })),
        "no CANCEL before a 1xx (§9.1)"
    );
    assert_eq!(rig.b2b.device_state("PJSIP/1002"), DeviceState::NotInUse);
    rig.b2b.on_response(
        &b_key,
        b_response(&b_inv, 180, "btag", ""),
        &mut rig.media,
        rig.now,
    );
    let acts = rig.actions();
    assert!(acts
        .iter()
        .any(|a| matches!(a, Action::Cancel { key, .. } if *key == b_key)));
    assert!(Rig::responses_to_a(&acts).is_empty(), "nothing more to A");
    rig.b2b.on_response(
        &b_key,
        b_response(&b_inv, 487, "btag", ""),
        &mut rig.media,
        rig.now,
    );
    let acts = rig.actions();
    assert!(Rig::responses_to_a(&acts).is_empty());
    assert!(acts
        .iter()
        .any(|a| matches!(a, Action::CallEnded { reason, .. } if reason == "cancel")));
    assert!(rig.b2b.is_empty());
    assert_eq!(rig.media.closed, vec![CallId(1)]);
}

#[test]
fn callee_busy_and_not_found_are_relayed() {
    for (b_code, a_code) in [
        (486, 486),
        (404, 404),
        (480, 480),
        (302, 480),
        (407, 403),
        (603, 603),
    ] {
        let mut rig = Rig::new();
        let (b_inv, b_key) = rig.call(0);
        rig.b2b.on_response(
            &b_key,
            b_response(&b_inv, b_code, "btag", ""),
            &mut rig.media,
            rig.now,
        );
        assert_eq!(
            Rig::responses_to_a(&rig.actions()),
            vec![a_code],
            "B said {b_code}"
        );
        assert!(rig.b2b.is_empty());
    }
}

#[test]
fn call_limit_gives_486_and_busy_state() {
    let mut rig = Rig::new();
    let (_b_inv, _) = rig.call(1);
    assert_eq!(
        rig.b2b.device_state("PJSIP/1002"),
        DeviceState::Busy,
        "at the limit"
    );
    rig.a_key = TransactionKey::client("z9hG4bKa2", Method::Invite);
    rig.b2b.on_invite(
        rig.a_key.clone(),
        invite_from_a(),
        peer("10.0.0.1:5060"),
        Routed {
            caller: Caller::default(),
            target: Rig::target(1),
        },
        &mut rig.media,
        rig.now,
    );
    let actions = rig.actions();
    assert_eq!(Rig::responses_to_a(&actions), vec![486]);
    assert!(
        actions.iter().any(|a| matches!(
            a,
            Action::CallRefused { code: 486, record }
                if record.callee_device.as_deref() == Some("PJSIP/1002")
                    && record.billsec.is_none()
        )),
        "the refusal is reported for the CDR: {actions:?}"
    );
    assert_eq!(rig.b2b.len(), 1);
}

#[test]
fn unanswered_b_gives_408_and_no_ports_give_503_and_an_unreadable_offer_gives_488() {
    let mut rig = Rig::new();
    let (_, b_key) = rig.call(0);
    rig.b2b.on_timeout(&b_key, &mut rig.media, rig.now);
    assert_eq!(Rig::responses_to_a(&rig.actions()), vec![408]);
    assert!(rig.b2b.is_empty());

    rig.media.exhausted = true;
    rig.b2b.on_invite(
        rig.a_key.clone(),
        invite_from_a(),
        peer("10.0.0.1:5060"),
        Routed {
            caller: Caller::default(),
            target: Rig::target(0),
        },
        &mut rig.media,
        rig.now,
    );
    assert_eq!(Rig::responses_to_a(&rig.actions()), vec![503]);

    rig.media.exhausted = false;
    let mut no_sdp = invite_from_a();
    no_sdp.body = b"not an SDP".to_vec();
    rig.b2b.on_invite(
        rig.a_key.clone(),
        no_sdp,
        peer("10.0.0.1:5060"),
        Routed {
            caller: Caller::default(),
            target: Rig::target(0),
        },
        &mut rig.media,
        rig.now,
    );
    assert_eq!(Rig::responses_to_a(&rig.actions()), vec![488]);
    rig.b2b.on_invite(
        rig.a_key.clone(),
        invite_from_a(),
        peer("10.0.0.1:5060"),
        Routed {
            caller: Caller::default(),
            target: Target::Reject(404),
        },
        &mut rig.media,
        rig.now,
    );
    assert_eq!(Rig::responses_to_a(&rig.actions()), vec![404]);
}

#[test]
fn hold_by_reinvite_shows_onhold_and_unhold_restores() {
    let mut rig = Rig::new();
    let (_b_inv, a_ok) = rig.answered();
    let tag = to_tag(&a_ok);
    let _ = rig.actions();
    for (seq, dir, want) in [
        (2, "sendonly", DeviceState::OnHold),
        (3, "sendrecv", DeviceState::InUse),
    ] {
        let re = in_dialog_from_a("INVITE", seq, &tag, &sdp("10.0.0.1", 4000, dir));
        let key = TransactionKey::client(&format!("z9hG4bKind{seq}"), Method::Invite);
        assert!(rig.b2b.on_in_dialog(&key, re, &mut rig.media, rig.now));
        let acts = rig.actions();
        let (fwd_key, fwd) = forwarded(&acts).expect("re-INVITE to B");
        let t = text(&fwd);
        assert!(t.contains(&format!("a={dir}")), "{t}");
        assert!(t.contains("m=audio 20002 "), "{t}");
        assert!(t.contains("tag=btag"), "{t}");
        let ans_dir = if dir == "sendonly" {
            "recvonly"
        } else {
            "sendrecv"
        };
        let ok = b_response(&fwd, 200, "btag", &sdp("10.0.0.2", 6000, ans_dir));
        rig.b2b.on_response(&fwd_key, ok, &mut rig.media, rig.now);
        let acts = rig.actions();
        assert_eq!(Rig::responses_to_a(&acts), vec![200]);
        assert!(
            acts.iter().any(|a| matches!(a, Action::Stateless { .. })),
            "B's 2xx ACKed"
        );
        assert_eq!(rig.b2b.device_state("PJSIP/1001"), want, "after {dir}");
        // A's ACK for the re-INVITE's 200.
        let ack = in_dialog_from_a("ACK", seq, &tag, "");
        rig.b2b.on_ack(&ack, &mut rig.media, rig.now);
    }
    // The relay was told: A held (B hears music on hold), then A resumed.
    let id = rig.media.open[0];
    assert_eq!(rig.media.holds, [(id, Side::A, true), (id, Side::A, false)]);
}

#[test]
fn inactive_hold_reaches_b_as_sendonly_and_a_gets_inactive() {
    let mut rig = Rig::new();
    let (_b_inv, a_ok) = rig.answered();
    let tag = to_tag(&a_ok);
    let _ = rig.actions();
    let re = in_dialog_from_a("INVITE", 2, &tag, &sdp("10.0.0.1", 4000, "inactive"));
    let key = TransactionKey::client("z9hG4bKind2", Method::Invite);
    assert!(rig.b2b.on_in_dialog(&key, re, &mut rig.media, rig.now));
    let acts = rig.actions();
    let (fwd_key, fwd) = forwarded(&acts).expect("re-INVITE to B");
    let t = text(&fwd);
    // B hears music on hold from the gateway: it is offered sendonly, not inactive.
    assert!(t.contains("a=sendonly") && !t.contains("inactive"), "{t}");
    let ok = b_response(&fwd, 200, "btag", &sdp("10.0.0.2", 6000, "recvonly"));
    rig.b2b.on_response(&fwd_key, ok, &mut rig.media, rig.now);
    let a_ok = response(&rig.actions(), 200).expect("200 to A");
    let body = String::from_utf8_lossy(&a_ok.body).into_owned();
    // A offered inactive: its answer must be inactive (RFC 3264 §6.1).
    assert!(
        body.contains("a=inactive") && !body.contains("recvonly"),
        "{body}"
    );
    assert_eq!(rig.media.holds, [(rig.media.open[0], Side::A, true)]);
}

/// A call to a trunk with three targets (RFC 3263 order): the first answers 503, the second
/// never answers, the third takes the call. Each retry is the same request with a new branch.
#[test]
fn trunk_invite_fails_over_on_503_and_timeout() {
    let mut rig = Rig::new();
    let caller = Caller {
        device: Some("PJSIP/1001".into()),
        limit: 0,
    };
    rig.b2b.on_invite(
        rig.a_key.clone(),
        invite_from_a(),
        peer("10.0.0.1:5060"),
        Routed {
            caller,
            target: Target::Peer {
                uri: "sip:123@pstn.test".into(),
                dest: peer("10.0.0.5:5060"),
                credentials: None,
                fallbacks: vec![peer("10.0.0.6:5060"), peer("10.0.0.7:5060")],
            },
        },
        &mut rig.media,
        rig.now,
    );
    let sent = |acts: &[Action]| {
        acts.iter()
            .find_map(|a| match a {
                Action::Request { key, request, dest } => {
                    Some((key.clone(), request.clone(), dest.addr))
                }
                _ => None,
            })
            .expect("an INVITE")
    };
    let (k1, r1, d1) = sent(&rig.actions());
    assert_eq!(d1, "10.0.0.5:5060".parse().unwrap());
    rig.b2b
        .on_response(&k1, b_response(&r1, 503, "x1", ""), &mut rig.media, rig.now);
    let acts = rig.actions();
    assert!(Rig::responses_to_a(&acts).is_empty(), "no 503 to A");
    assert!(acts.contains(&Action::TargetFailed("10.0.0.5:5060".parse().unwrap())));
    let (k2, r2, d2) = sent(&acts);
    assert_eq!(d2, "10.0.0.6:5060".parse().unwrap());
    assert_ne!(k1, k2, "a new branch");
    assert_eq!(r2.uri.to_string(), "sip:123@pstn.test");
    for h in ["Call-ID", "CSeq", "From"] {
        let get = |r: &Request| {
            text(r)
                .lines()
                .find(|l| l.starts_with(&format!("{h}:")))
                .map(str::to_owned)
        };
        assert_eq!(get(&r1), get(&r2), "{h}");
    }
    rig.b2b.on_timeout(&k2, &mut rig.media, rig.now);
    let acts = rig.actions();
    assert!(Rig::responses_to_a(&acts).is_empty(), "no 408 to A");
    let (k3, r3, d3) = sent(&acts);
    assert_eq!(d3, "10.0.0.7:5060".parse().unwrap());
    // Both failed targets were reported, for the gateway to try them last next time.
    let failed = |acts: &[Action]| {
        acts.iter()
            .filter_map(|a| match a {
                Action::TargetFailed(addr) => Some(*addr),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(failed(&acts), ["10.0.0.6:5060".parse().unwrap()]);
    let ok = b_response(&r3, 200, "btag", &sdp("10.0.0.7", 6000, "sendrecv"));
    rig.b2b.on_response(&k3, ok, &mut rig.media, rig.now);
    assert_eq!(Rig::responses_to_a(&rig.actions()), vec![200]);
}

/// After a provisional response the target is committed: its 503 goes to the caller.
#[test]
fn no_failover_after_a_provisional() {
    let mut rig = Rig::new();
    rig.b2b.on_invite(
        rig.a_key.clone(),
        invite_from_a(),
        peer("10.0.0.1:5060"),
        Routed {
            caller: Caller::default(),
            target: Target::Peer {
                uri: "sip:123@pstn.test".into(),
                dest: peer("10.0.0.5:5060"),
                credentials: None,
                fallbacks: vec![peer("10.0.0.6:5060")],
            },
        },
        &mut rig.media,
        rig.now,
    );
    let (k1, r1) = forwarded(&rig.actions()).expect("an INVITE");
    rig.b2b
        .on_response(&k1, b_response(&r1, 180, "x1", ""), &mut rig.media, rig.now);
    let _ = rig.actions();
    rig.b2b
        .on_response(&k1, b_response(&r1, 503, "x1", ""), &mut rig.media, rig.now);
    let acts = rig.actions();
    assert_eq!(Rig::responses_to_a(&acts), vec![503]);
    assert!(forwarded(&acts).is_none(), "no retry");
}

#[test]
fn glare_gives_491() {
    let mut rig = Rig::new();
    let (_b, a_ok) = rig.answered();
    let tag = to_tag(&a_ok);
    let _ = rig.actions();
    let re = in_dialog_from_a("INVITE", 2, &tag, &sdp("10.0.0.1", 4000, "sendonly"));
    let k2 = TransactionKey::client("z9hG4bKind2", Method::Invite);
    assert!(rig.b2b.on_in_dialog(&k2, re, &mut rig.media, rig.now));
    let _ = rig.actions();
    let re = in_dialog_from_a("UPDATE", 3, &tag, &sdp("10.0.0.1", 4000, "sendrecv"));
    let k3 = TransactionKey::client("z9hG4bKind3", Method::Update);
    assert!(rig.b2b.on_in_dialog(&k3, re, &mut rig.media, rig.now));
    assert_eq!(Rig::responses_to_a(&rig.actions()), vec![491]);
}

#[test]
fn missing_ack_retransmits_200_then_hangs_up_after_64_t1() {
    let mut rig = Rig::new();
    let (b_inv, b_key) = rig.call(0);
    rig.b2b.on_response(
        &b_key,
        b_response(&b_inv, 200, "btag", &sdp("10.0.0.2", 6000, "sendrecv")),
        &mut rig.media,
        rig.now,
    );
    let _ = rig.actions();
    let start = rig.now;
    let mut retransmits = Vec::new();
    while let Some(t) = rig.b2b.poll_timeout() {
        if t > start + Duration::from_secs(60) {
            break;
        }
        rig.now = t;
        rig.b2b.handle_timeout(&mut rig.media, t);
        for a in rig.actions() {
            match a {
                Action::Respond { response, .. } if response.status_code.code() == 200 => {
                    retransmits.push(t - start)
                }
                Action::CallEnded { reason, .. } => {
                    assert_eq!(reason, "no-ack");
                    assert!(t - start >= Duration::from_secs(32), "at 64·T1");
                    assert!(t - start < Duration::from_secs(33));
                }
                _ => {}
            }
        }
        if rig.b2b.is_empty() {
            break;
        }
    }
    assert!(rig.b2b.is_empty(), "torn down");
    // T1, 2T1, 4T1, then capped at T2 = 4 s.
    assert_eq!(retransmits[0], Duration::from_millis(500));
    assert_eq!(retransmits[1], Duration::from_millis(1500));
    assert_eq!(retransmits[2], Duration::from_millis(3500));
    assert_eq!(retransmits[3] - retransmits[2], Duration::from_secs(4));
}

#[test]
fn media_timeout_hangs_up_both_sides_but_not_while_on_hold() {
    let mut rig = Rig::new();
    let (_b, a_ok) = rig.answered();
    let _ = rig.actions();
    rig.media.idle = Duration::from_secs(11);
    // On hold: silence is expected.
    let tag = to_tag(&a_ok);
    let re = in_dialog_from_a("UPDATE", 2, &tag, &sdp("10.0.0.1", 4000, "inactive"));
    let k = TransactionKey::client("z9hG4bKind2", Method::Update);
    rig.b2b.on_in_dialog(&k, re, &mut rig.media, rig.now);
    let fwd = forwarded(&rig.actions()).expect("UPDATE to B");
    rig.b2b.on_response(
        &fwd.0,
        b_response(&fwd.1, 200, "btag", &sdp("10.0.0.2", 6000, "inactive")),
        &mut rig.media,
        rig.now,
    );
    let _ = rig.actions();
    rig.now += Duration::from_secs(2);
    rig.b2b.handle_timeout(&mut rig.media, rig.now);
    assert_eq!(rig.b2b.len(), 1, "held calls are not timed out");
    // Unhold, still no RTP → both sides get BYE.
    let re = in_dialog_from_a("UPDATE", 3, &tag, &sdp("10.0.0.1", 4000, "sendrecv"));
    let k = TransactionKey::client("z9hG4bKind3", Method::Update);
    rig.b2b.on_in_dialog(&k, re, &mut rig.media, rig.now);
    let fwd = forwarded(&rig.actions()).expect("UPDATE to B");
    rig.b2b.on_response(
        &fwd.0,
        b_response(&fwd.1, 200, "btag", &sdp("10.0.0.2", 6000, "sendrecv")),
        &mut rig.media,
        rig.now,
    );
    let _ = rig.actions();
    rig.now += Duration::from_secs(2);
    rig.b2b.handle_timeout(&mut rig.media, rig.now);
    let acts = rig.actions();
    let byes: Vec<SocketAddr> = acts
        .iter()
        .filter_map(|a| match a {
            Action::Request { request, dest, .. } if request.method == Method::Bye => {
                Some(dest.addr)
            }
            _ => None,
        })
        .collect();
    assert_eq!(byes.len(), 2, "BYE to both sides: {acts:?}");
    assert!(rig.b2b.is_empty());
}

#[test]
fn stale_cseq_gets_500_and_unknown_dialog_is_refused() {
    let mut rig = Rig::new();
    let (_b, a_ok) = rig.answered();
    let tag = to_tag(&a_ok);
    let _ = rig.actions();
    let old = in_dialog_from_a("INFO", 1, &tag, "");
    let k = TransactionKey::client("z9hG4bKind1", Method::Info);
    assert!(rig.b2b.on_in_dialog(&k, old, &mut rig.media, rig.now));
    assert_eq!(Rig::responses_to_a(&rig.actions()), vec![500]);
    let stranger = in_dialog_from_a("BYE", 5, "nosuchtag", "");
    let k = TransactionKey::client("z9hG4bKind5", Method::Bye);
    assert!(!rig.b2b.on_in_dialog(&k, stranger, &mut rig.media, rig.now));
    assert_eq!(rig.b2b.len(), 1);
}

#[test]
fn early_media_183_is_relayed_with_the_relay_address_and_bridged() {
    let mut rig = Rig::new();
    let (b_inv, b_key) = rig.call(0);
    let p183 = b_response(&b_inv, 183, "btag", &sdp("10.0.0.2", 6000, "sendrecv"));
    rig.b2b.on_response(&b_key, p183, &mut rig.media, rig.now);
    let acts = rig.actions();
    let r = response(&acts, 183).expect("183 to A");
    let body = String::from_utf8_lossy(&r.body).into_owned();
    assert!(
        body.contains("m=audio 20000 "),
        "A gets the relay's A side: {body}"
    );
    assert!(
        !body.contains("10.0.0.2"),
        "never the callee's own address: {body}"
    );
    assert!(
        rig.media.bridged.contains(&CallId(1)),
        "early media flows before the answer"
    );
    assert!(rig
        .media
        .remotes
        .iter()
        .any(|(_, s, a)| *s == Side::B && a.port() == 6000));
    // The 200 without SDP reuses the early answer.
    let ok = b_response(&b_inv, 200, "btag", "");
    rig.b2b.on_response(&b_key, ok, &mut rig.media, rig.now);
    let acts = rig.actions();
    let r = response(&acts, 200).expect("200 to A");
    assert!(String::from_utf8_lossy(&r.body).contains("m=audio 20000 "));
}

mod rfc;

/// Issue 15: leg B of a confirmed call moves to another peer (its first one died): a new
/// INVITE there (new dialog, the relay's B-side SDP, the extra headers, signed), music to the
/// caller until its 2xx, which is ACKed and whose media replaces the music; leg A sees nothing.
/// A failed move ends the call.
#[test]
fn leg_b_moves_to_another_peer_with_music_meanwhile() {
    let key = std::sync::Arc::new(
        crate::sip::trust::FabricKey::new(b"0123456789abcdef-fabric", "gw-a").expect("key"),
    );
    for fail in [false, true] {
        let mut rig = Rig::new();
        let (b_inv, _) = rig.answered();
        rig.actions();
        let id = rig.b2b.newest_call().expect("the call");
        assert!(rig.b2b.is_answered(id));
        let moved = rig.b2b.move_b(
            id,
            "sip:800@10.0.0.9:5072",
            peer("10.0.0.9:5072"),
            Some(crate::sip::trust::JoinPlace {
                joined_ms: 1_700_000_000_000,
                priority: 0,
            }),
            Some((key.clone(), 1_700_000_005)),
            &mut rig.media,
            rig.now,
        );
        assert!(moved);
        assert_eq!(
            rig.media.holds.last(),
            Some(&(id, Side::B, true)),
            "music to A"
        );
        let acts = rig.actions();
        assert!(Rig::responses_to_a(&acts).is_empty(), "leg A sees nothing");
        let (k, inv, dest) = acts
            .iter()
            .find_map(|a| match a {
                Action::Request { key, request, dest } => {
                    Some((key.clone(), request.clone(), dest.addr))
                }
                _ => None,
            })
            .expect("a new INVITE");
        assert_eq!(dest, "10.0.0.9:5072".parse().unwrap());
        let t = text(&inv);
        assert!(t.starts_with("INVITE sip:800@10.0.0.9:5072 SIP/2.0"), "{t}");
        assert!(t.contains("X-CF-Join: joined=1700000000000;prio=0"), "{t}");
        assert!(
            t.contains("c=IN IP4 192.0.2.1") && t.contains("m=audio 20002 "),
            "relay SDP: {t}"
        );
        let call_id = |r: &Request| {
            text(r)
                .lines()
                .find(|l| l.starts_with("Call-ID:"))
                .map(str::to_owned)
        };
        assert_ne!(call_id(&inv), call_id(&b_inv), "a new dialog");
        let mut cache = crate::sip::trust::ReplayCache::default();
        assert_eq!(
            key.verify(&inv, 1_700_000_006, &mut cache).as_deref(),
            Ok("gw-a"),
            "signed"
        );
        assert!(!rig.b2b.is_answered(id), "moving");
        if fail {
            rig.b2b.on_timeout(&k, &mut rig.media, rig.now);
            assert!(!rig.b2b.has_call(id), "a failed move ends the call");
            let acts = rig.actions();
            assert!(
                acts.iter().any(
                    |a| matches!(a, Action::CallEnded { reason, .. } if reason == "move-failed")
                ),
                "{acts:?}"
            );
            continue;
        }
        let ok = b_response(&inv, 200, "newtag", &sdp("10.0.0.9", 7000, "sendrecv"));
        rig.b2b.on_response(&k, ok, &mut rig.media, rig.now);
        let acts = rig.actions();
        assert!(
            Rig::responses_to_a(&acts).is_empty(),
            "leg A still sees nothing"
        );
        assert!(
            acts.iter().any(
                |a| matches!(a, Action::Stateless { message: SipMessage::Request(r), dest }
                if r.method == Method::Ack && dest.addr == "10.0.0.9:5072".parse().unwrap())
            ),
            "the 2xx is ACKed at the new peer: {acts:?}"
        );
        assert_eq!(
            rig.media.remotes.last(),
            Some(&(id, Side::B, "10.0.0.9:7000".parse().unwrap()))
        );
        assert_eq!(
            rig.media.holds.last(),
            Some(&(id, Side::B, false)),
            "music off"
        );
        assert!(rig.b2b.is_answered(id), "moved");
    }
}

#[test]
fn call_tables_give_their_memory_back_after_a_peak() {
    let mut rig = Rig::new();
    let idle = rig.b2b.table_capacity();
    // A peak of 4,000 calls ringing at once (each: a call, its dialog with A, B's INVITE key).
    let calls: Vec<(Request, TransactionKey)> = (0..4_000).map(|_| rig.call(0)).collect();
    rig.actions();
    let peak = rig.b2b.table_capacity();
    assert!(peak >= 3 * 4_000, "{peak} entries of room at the peak");
    // All refused by B: the calls end; B's INVITE transactions end later (their Timer D).
    for (inv, key) in &calls {
        rig.b2b.on_response(
            key,
            b_response(inv, 486, "btag", ""),
            &mut rig.media,
            rig.now,
        );
    }
    assert!(Rig::responses_to_a(&rig.actions())
        .iter()
        .all(|&c| c == 486));
    assert!(rig.b2b.is_empty());
    for (_, key) in &calls {
        rig.b2b.on_terminated(key);
    }
    let after = rig.b2b.table_capacity();
    assert!(
        // Four tables shrunk to their minimum of 256 entries (hashbrown rounds it up to 448).
        after <= 4 * 448 && after * 10 < peak,
        "room for {after} entries left after the peak ({peak} at the peak, {idle} idle)"
    );
    // And the next call goes through as before.
    rig.answered();
    assert_eq!(rig.b2b.len(), 1);
}

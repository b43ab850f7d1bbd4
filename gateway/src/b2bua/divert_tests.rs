//! Diversion (voicemail on busy / no answer) in virtual time, with the fake relay.

use super::tests::{b_response, invite_from_a, peer, response, sdp, FakeMedia};
use super::*;

struct Rig {
    b2b: B2bua,
    media: FakeMedia,
    now: Instant,
    a_key: TransactionKey,
}

fn vm_divert(on_busy: bool, no_answer: Option<Duration>) -> Divert {
    Divert {
        uri: "sip:vm-1002@127.0.0.1:5070".into(),
        dest: peer("127.0.0.1:5070"),
        on_busy,
        no_answer,
    }
}

impl Rig {
    /// A calls device 1002 with `divert` armed; returns B's INVITE and key.
    fn call(divert: Divert) -> (Rig, Request, TransactionKey) {
        let mut rig = Rig {
            b2b: B2bua::new(Config::default()),
            media: FakeMedia::default(),
            now: Instant::now(),
            a_key: TransactionKey::client("z9hG4bKa1", Method::Invite),
        };
        rig.b2b.on_invite(
            rig.a_key.clone(),
            invite_from_a(),
            peer("10.0.0.1:5060"),
            Routed {
                caller: Caller::default(),
                target: Target::Device {
                    device: "PJSIP/1002".into(),
                    contact: "sip:1002@10.0.0.2:5070".into(),
                    dest: peer("10.0.0.2:5070"),
                    limit: 0,
                    forks: Vec::new(),
                },
            },
            &mut rig.media,
            rig.now,
        );
        rig.b2b.set_divert(&rig.a_key, divert, rig.now);
        let (inv, key) = rig
            .actions()
            .into_iter()
            .find_map(|a| match a {
                Action::Request { key, request, .. } => Some((request, key)),
                _ => None,
            })
            .expect("an INVITE to the phone");
        (rig, inv, key)
    }

    fn actions(&mut self) -> Vec<Action> {
        std::iter::from_fn(|| self.b2b.poll_action()).collect()
    }
}

/// The INVITE sent to voicemail among `acts`.
fn to_voicemail(acts: &[Action]) -> Option<(TransactionKey, Request)> {
    acts.iter().find_map(|a| match a {
        Action::Request { key, request, dest }
            if dest.addr == "127.0.0.1:5070".parse::<SocketAddr>().ok()? =>
        {
            Some((key.clone(), request.clone()))
        }
        _ => None,
    })
}

#[test]
fn busy_goes_to_voicemail_and_the_caller_is_answered_by_it() {
    let (mut rig, inv, key) = Rig::call(vm_divert(true, None));
    let busy = b_response(&inv, 486, "phone", "");
    rig.b2b.on_response(&key, busy, &mut rig.media, rig.now);
    let acts = rig.actions();
    assert!(
        response(&acts, 486).is_none(),
        "no 486 to the caller: {acts:?}"
    );
    let (vm_key, vm_inv) = to_voicemail(&acts).expect("an INVITE to voicemail");
    assert_eq!(vm_inv.uri.to_string(), "sip:vm-1002@127.0.0.1:5070");
    assert!(!vm_inv.body.is_empty(), "the caller's offer goes on");
    assert!(acts.contains(&Action::DeviceChanged("PJSIP/1002".into())));
    assert_eq!(
        rig.b2b.calls_of("PJSIP/1002"),
        0,
        "the busy phone is out of the call"
    );
    let ok = b_response(&vm_inv, 200, "vm", &sdp("127.0.0.1", 31000, "sendrecv"));
    rig.b2b.on_response(&vm_key, ok, &mut rig.media, rig.now);
    let acts = rig.actions();
    assert!(
        response(&acts, 200).is_some(),
        "voicemail's answer reaches the caller"
    );
}

#[test]
fn no_answer_cancels_the_ringing_phone_then_diverts() {
    let (mut rig, inv, key) = Rig::call(vm_divert(true, Some(Duration::from_secs(5))));
    let ringing = b_response(&inv, 180, "phone", "");
    rig.b2b.on_response(&key, ringing, &mut rig.media, rig.now);
    rig.actions();
    assert_eq!(
        rig.b2b.poll_timeout(),
        Some(rig.now + Duration::from_secs(5))
    );
    rig.b2b
        .handle_timeout(&mut rig.media, rig.now + Duration::from_secs(4));
    assert!(to_voicemail(&rig.actions()).is_none(), "not before 5 s");
    rig.b2b
        .handle_timeout(&mut rig.media, rig.now + Duration::from_secs(5));
    let acts = rig.actions();
    assert!(
        acts.iter()
            .any(|a| matches!(a, Action::Cancel { key: k, .. } if *k == key)),
        "the phone's INVITE is cancelled: {acts:?}"
    );
    let (vm_key, vm_inv) = to_voicemail(&acts).expect("an INVITE to voicemail");
    // The phone's 487 is absorbed; the caller hears only voicemail.
    rig.b2b.on_response(
        &key,
        b_response(&inv, 487, "phone", ""),
        &mut rig.media,
        rig.now,
    );
    assert!(response(&rig.actions(), 487).is_none());
    let ok = b_response(&vm_inv, 200, "vm", &sdp("127.0.0.1", 31000, "sendrecv"));
    rig.b2b.on_response(&vm_key, ok, &mut rig.media, rig.now);
    assert!(response(&rig.actions(), 200).is_some());
    assert_eq!(rig.b2b.divert_due(), None, "diverted once");
}

#[test]
fn busy_without_busy_diversion_fails_back_to_the_caller() {
    let (mut rig, inv, key) = Rig::call(vm_divert(false, Some(Duration::from_secs(5))));
    rig.b2b.on_response(
        &key,
        b_response(&inv, 486, "phone", ""),
        &mut rig.media,
        rig.now,
    );
    let acts = rig.actions();
    assert!(response(&acts, 486).is_some(), "{acts:?}");
    assert!(to_voicemail(&acts).is_none());
}

/// The requests with `method` sent to the phone (10.0.0.2:5070) among `acts`: (key, request);
/// an ACK goes outside any transaction (no key).
fn to_phone(acts: &[Action], method: Method) -> Vec<(Option<TransactionKey>, Request)> {
    let phone: SocketAddr = "10.0.0.2:5070".parse().expect("addr");
    acts.iter()
        .filter_map(|a| match a {
            Action::Request { key, request, dest }
                if dest.addr == phone && request.method == method =>
            {
                Some((Some(key.clone()), request.clone()))
            }
            Action::Stateless {
                message: SipMessage::Request(request),
                dest,
            } if dest.addr == phone && request.method == method => Some((None, request.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_2xx_crossing_the_no_answer_cancel_is_acked_and_byed_and_the_caller_stays_with_voicemail() {
    let (mut rig, inv, key) = Rig::call(vm_divert(true, Some(Duration::from_secs(5))));
    let t0 = rig.now;
    rig.b2b
        .on_response(&key, b_response(&inv, 180, "phone", ""), &mut rig.media, t0);
    assert_eq!(response(&rig.actions(), 180).map(|_| ()), Some(()));
    rig.b2b
        .handle_timeout(&mut rig.media, t0 + Duration::from_secs(5));
    let acts = rig.actions();
    assert!(
        acts.iter()
            .any(|a| matches!(a, Action::Cancel { key: k, .. } if *k == key)),
        "{acts:?}"
    );
    let (vm_key, vm_inv) = to_voicemail(&acts).expect("an INVITE to voicemail");

    // The phone answers across our CANCEL: ACKed (§13.2.2.4), then BYEd; the caller hears
    // nothing of it and its media stays with voicemail.
    let at = t0 + Duration::from_millis(5_050);
    let ok = b_response(&inv, 200, "phone", &sdp("10.0.0.2", 6000, "sendrecv"));
    rig.b2b.on_response(&key, ok.clone(), &mut rig.media, at);
    let acts = rig.actions();
    let acks = to_phone(&acts, Method::Ack);
    assert_eq!(acks.len(), 1, "the crossing 200 is ACKed: {acts:?}");
    assert_eq!(
        tparse::field_tag(&acks[0].1.headers, Field::To)
            .ok()
            .flatten()
            .as_deref(),
        Some("phone")
    );
    let byes = to_phone(&acts, Method::Bye);
    assert_eq!(byes.len(), 1, "and BYEd: {acts:?}");
    assert!(
        !acts.iter().any(|a| matches!(a, Action::Respond { .. })),
        "nothing to the caller: {acts:?}"
    );
    let phone_rtp: SocketAddr = "10.0.0.2:6000".parse().expect("addr");
    assert!(
        !rig.media.remotes.iter().any(|(_, _, a)| *a == phone_rtp),
        "the phone's media is never used: {:?}",
        rig.media.remotes
    );
    assert_eq!(rig.b2b.calls_of("PJSIP/1002"), 0);
    // Its retransmission is ACKed again, not BYEd twice.
    rig.b2b.on_response(&key, ok, &mut rig.media, at);
    let acts = rig.actions();
    assert_eq!(
        (
            to_phone(&acts, Method::Ack).len(),
            to_phone(&acts, Method::Bye).len()
        ),
        (1, 0),
        "{acts:?}"
    );
    let bye_key = byes[0].0.clone().expect("a BYE transaction");
    let bye_ok = message::response_for(&byes[0].1, 200, "");
    rig.b2b.on_response(&bye_key, bye_ok, &mut rig.media, at);
    assert!(rig.actions().is_empty());

    // Voicemail answers: the caller is connected to it.
    let vm_ok = b_response(&vm_inv, 200, "vm", &sdp("127.0.0.1", 31000, "sendrecv"));
    rig.b2b.on_response(&vm_key, vm_ok, &mut rig.media, at);
    let a_ok = response(&rig.actions(), 200).expect("voicemail's answer reaches the caller");
    let vm_rtp: SocketAddr = "127.0.0.1:31000".parse().expect("addr");
    assert!(rig.media.remotes.contains(&(CallId(1), Side::B, vm_rtp)));
    rig.b2b
        .on_ack(&super::tests::a_ack(&a_ok), &mut rig.media, at);
    assert_eq!(rig.b2b.len(), 1);

    // Hang up; once every transaction is over nothing is left anywhere.
    rig.b2b.hangup(CallId(1), "bye-a", &mut rig.media, at);
    for a in rig.actions() {
        if let Action::Request { key, request, .. } = a {
            let r = message::response_for(&request, 200, "");
            rig.b2b.on_response(&key, r, &mut rig.media, at);
            rig.b2b.on_terminated(&key);
        }
    }
    for k in [&key, &vm_key, &bye_key, &rig.a_key.clone()] {
        rig.b2b.on_terminated(k);
    }
    assert_eq!(rig.b2b.leftovers(), [0; 10]);
    // Only the media-timeout sweep, which stops at its next run with no call left.
    rig.b2b
        .handle_timeout(&mut rig.media, at + Duration::from_secs(1));
    assert_eq!(rig.b2b.poll_timeout(), None);
}

#[test]
fn a_phone_that_never_answers_the_diversion_cancel_is_destroyed_after_64_t1() {
    let (mut rig, inv, key) = Rig::call(vm_divert(true, Some(Duration::from_secs(5))));
    let t0 = rig.now;
    rig.b2b
        .on_response(&key, b_response(&inv, 180, "phone", ""), &mut rig.media, t0);
    rig.b2b
        .handle_timeout(&mut rig.media, t0 + Duration::from_secs(5));
    let acts = rig.actions();
    let (vm_key, vm_inv) = to_voicemail(&acts).expect("an INVITE to voicemail");
    rig.b2b.on_response(
        &vm_key,
        b_response(&vm_inv, 180, "vm", ""),
        &mut rig.media,
        t0 + Duration::from_secs(5),
    );
    rig.actions();
    let wait = Config::default().t1 * 64;
    let end = t0 + Duration::from_secs(5) + wait;
    rig.b2b
        .handle_timeout(&mut rig.media, end - Duration::from_millis(1));
    assert!(
        !rig.actions()
            .contains(&Action::Terminate { key: key.clone() }),
        "not before 64·T1"
    );
    rig.b2b.handle_timeout(&mut rig.media, end);
    let acts = rig.actions();
    assert!(
        acts.contains(&Action::Terminate { key: key.clone() }),
        "§9.1: destroyed 64·T1 after its CANCEL: {acts:?}"
    );
    assert!(
        !acts
            .iter()
            .any(|a| matches!(a, Action::Respond { .. } | Action::CallEnded { .. })),
        "the caller still hears voicemail ring: {acts:?}"
    );
    assert_eq!(rig.b2b.len(), 1);
}

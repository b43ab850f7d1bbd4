//! Forking in virtual time: a device with two (or three) contacts, every branch rung at once,
//! the first answer wins, the others cancelled or BYEd, the best final response when all fail.

use super::fork::best_final;
use super::tests::{
    a_ack, b_response, cancel_from_a, invite_from_a, peer, request, response, sdp, FakeMedia,
};
use super::*;
use statebus::DeviceState;

const LIVE: &str = "10.0.0.2:5070";
const DEAD: &str = "10.0.0.3:5070";
const THIRD: &str = "10.0.0.4:5070";

struct Fork {
    b2b: B2bua,
    media: FakeMedia,
    now: Instant,
    a_key: TransactionKey,
    /// (destination, INVITE, client key) of every branch, in the order sent.
    branches: Vec<(SocketAddr, Request, TransactionKey)>,
}

impl Fork {
    /// A calls device 1002 registered at `contacts` (the first is the newest).
    fn call(contacts: &[&str]) -> Fork {
        let mut f = Fork {
            b2b: B2bua::new(Config::default()),
            media: FakeMedia::default(),
            now: Instant::now(),
            a_key: TransactionKey::client("z9hG4bKa1", Method::Invite),
            branches: Vec::new(),
        };
        let target = |a: &str| ForkTarget {
            contact: format!("sip:1002@{a}"),
            dest: peer(a),
        };
        let first = target(contacts[0]);
        f.b2b.on_invite(
            f.a_key.clone(),
            invite_from_a(),
            peer("10.0.0.1:5060"),
            Routed {
                caller: Caller {
                    device: Some("PJSIP/1001".into()),
                    limit: 0,
                },
                target: Target::Device {
                    device: "PJSIP/1002".into(),
                    contact: first.contact,
                    dest: first.dest,
                    limit: 0,
                    forks: contacts[1..].iter().map(|a| target(a)).collect(),
                },
            },
            &mut f.media,
            f.now,
        );
        for a in f.actions() {
            if let Action::Request { key, request, dest } = a {
                f.branches.push((dest.addr, request, key));
            }
        }
        f
    }

    fn actions(&mut self) -> Vec<Action> {
        std::iter::from_fn(|| self.b2b.poll_action()).collect()
    }

    fn branch(&self, addr: &str) -> (Request, TransactionKey) {
        let addr: SocketAddr = addr.parse().expect("addr");
        self.branches
            .iter()
            .find(|(a, _, _)| *a == addr)
            .map(|(_, r, k)| (r.clone(), k.clone()))
            .expect("a branch to this contact")
    }

    /// Contact at `addr` answers its INVITE with `code` (To tag `tag`); returns the actions.
    fn respond(&mut self, addr: &str, code: u16, tag: &str) -> Vec<Action> {
        let (inv, key) = self.branch(addr);
        let body = if code == 200 || code == 183 {
            sdp(addr.split(':').next().unwrap_or(""), 6000, "sendrecv")
        } else {
            String::new()
        };
        let resp = b_response(&inv, code, tag, &body);
        self.b2b.on_response(&key, resp, &mut self.media, self.now);
        self.actions()
    }

    fn timeout(&mut self, addr: &str) -> Vec<Action> {
        let (_, key) = self.branch(addr);
        self.b2b.on_timeout(&key, &mut self.media, self.now);
        self.actions()
    }
}

/// What `f` picks out of the actions, in order.
fn pick<T>(acts: &[Action], f: impl FnMut(&Action) -> Option<T>) -> Vec<T> {
    acts.iter().filter_map(f).collect()
}

fn to_a(acts: &[Action]) -> Vec<u16> {
    pick(acts, |a| match a {
        Action::Respond { response, .. } => Some(response.status_code.code()),
        _ => None,
    })
}

fn cancels(acts: &[Action]) -> Vec<TransactionKey> {
    pick(acts, |a| match a {
        Action::Cancel { key, .. } => Some(key.clone()),
        _ => None,
    })
}

fn sent(acts: &[Action], method: Method) -> Vec<SocketAddr> {
    pick(acts, |a| match a {
        Action::Request { request, dest, .. } if request.method == method => Some(dest.addr),
        Action::Stateless {
            message: SipMessage::Request(r),
            dest,
        } if r.method == method => Some(dest.addr),
        _ => None,
    })
}

fn header(r: &Request, f: Field) -> String {
    tparse::value(&r.headers, f).expect("header").to_owned()
}

#[test]
fn every_contact_rings_with_one_call_id_and_the_first_answer_wins() {
    let mut f = Fork::call(&[LIVE, DEAD]);
    assert_eq!(f.branches.len(), 2, "one INVITE per contact");
    let (live, live_key) = f.branch(LIVE);
    let (other, other_key) = f.branch(DEAD);
    assert_eq!(live.uri.to_string(), format!("sip:1002@{LIVE}"));
    assert_eq!(other.uri.to_string(), format!("sip:1002@{DEAD}"));
    assert_eq!(header(&live, Field::CallId), header(&other, Field::CallId));
    assert_eq!(header(&live, Field::From), header(&other, Field::From));
    assert_ne!(live_key, other_key, "a transaction (branch) each");

    // Both ring: the caller hears one 180, the callee device rings.
    assert_eq!(to_a(&f.respond(DEAD, 180, "t-other")), vec![180]);
    assert!(to_a(&f.respond(LIVE, 180, "t-live")).is_empty());
    assert_eq!(f.b2b.device_state("PJSIP/1002"), DeviceState::Ringing);

    // The live contact answers: 200 to A, ACK to it, CANCEL to the other branch.
    let acts = f.respond(LIVE, 200, "t-live");
    let ok = response(&acts, 200).expect("200 to A");
    assert_eq!(sent(&acts, Method::Ack), vec![LIVE.parse().expect("addr")]);
    assert_eq!(cancels(&acts), vec![other_key.clone()]);
    f.b2b.on_ack(&a_ack(&ok), &mut f.media, f.now);
    assert_eq!(f.b2b.device_state("PJSIP/1002"), DeviceState::InUse);

    // The other branch's 487 changes nothing; a 2xx that crossed the CANCEL is ACKed and BYEd
    // (RFC 3261 §13.2.2.4), once, and the call stays up.
    let acts = f.respond(DEAD, 200, "t-other");
    assert!(to_a(&acts).is_empty());
    assert_eq!(sent(&acts, Method::Ack), vec![DEAD.parse().expect("addr")]);
    assert_eq!(sent(&acts, Method::Bye), vec![DEAD.parse().expect("addr")]);
    let acts = f.respond(DEAD, 200, "t-other");
    assert_eq!(
        sent(&acts, Method::Bye),
        Vec::<SocketAddr>::new(),
        "one BYE"
    );
    assert_eq!(f.b2b.len(), 1);
    assert_eq!(f.b2b.device_state("PJSIP/1002"), DeviceState::InUse);

    // BYE from B goes to the winner's dialog only.
    let (live_inv, _) = f.branch(LIVE);
    let bye = request(
        &format!(
            "BYE sip:callfabric@192.0.2.1:5060 SIP/2.0
Via: SIP/2.0/UDP {LIVE};branch=z9hG4bKbye1
Max-Forwards: 70
From: <sip:1002@gw>;tag=t-live
To: {}
Call-ID: {}
CSeq: 1 BYE
",
            header(&live_inv, Field::From),
            header(&live_inv, Field::CallId)
        ),
        "",
    );
    let k = TransactionKey::client("z9hG4bKbye1", Method::Bye);
    assert!(f.b2b.on_in_dialog(&k, bye, &mut f.media, f.now));
    let acts = f.actions();
    assert!(acts
        .iter()
        .any(|a| matches!(a, Action::CallEnded { reason, .. } if reason == "bye-b")));
}

#[test]
fn a_silent_contact_does_not_delay_the_live_one() {
    // The newest contact is dead (registered, never answers); the older one answers at once.
    let mut f = Fork::call(&[DEAD, LIVE]);
    let (_, dead_key) = f.branch(DEAD);
    let acts = f.respond(LIVE, 200, "t-live");
    assert_eq!(
        to_a(&acts),
        vec![200],
        "answered without waiting for the dead one"
    );
    assert!(cancels(&acts).is_empty(), "no CANCEL before a 1xx (§9.1)");
    // The dead branch wakes up late: its 1xx gets the CANCEL now; its timeout ends nothing.
    let acts = f.respond(DEAD, 180, "t-dead");
    assert!(to_a(&acts).is_empty());
    assert_eq!(cancels(&acts), vec![dead_key]);
    assert!(f.timeout(DEAD).is_empty());
    assert_eq!(f.b2b.len(), 1);
}

#[test]
fn a_failing_branch_is_silent_while_another_rings() {
    let mut f = Fork::call(&[LIVE, DEAD]);
    // The primary refuses at once (a phone on do-not-disturb): the caller hears nothing of it.
    let acts = f.respond(LIVE, 486, "t-live");
    assert!(to_a(&acts).is_empty(), "{acts:?}");
    assert_eq!(f.b2b.len(), 1);
    // The other rings and answers with early media first.
    assert_eq!(to_a(&f.respond(DEAD, 183, "t-dead")), vec![183]);
    assert_eq!(to_a(&f.respond(DEAD, 200, "t-dead")), vec![200]);
}

#[test]
fn when_every_branch_fails_the_caller_gets_the_best_response() {
    // (responses in arrival order; None = timeout) → what the caller gets.
    let cases: [(&[Option<u16>], u16); 6] = [
        (&[Some(486), Some(603)], 603),
        (&[Some(603), Some(486)], 603),
        (&[Some(503), Some(404)], 404),
        (&[None, Some(486)], 486),
        (&[Some(486), None], 486),
        (&[None, None], 408),
    ];
    for (outcomes, want) in cases {
        let mut f = Fork::call(&[LIVE, DEAD]);
        let mut got = Vec::new();
        for (addr, o) in [LIVE, DEAD].iter().zip(outcomes) {
            let acts = match o {
                Some(code) => f.respond(addr, *code, "t"),
                None => f.timeout(addr),
            };
            got.extend(to_a(&acts));
        }
        assert_eq!(got, vec![want], "{outcomes:?}");
        assert!(f.b2b.is_empty(), "{outcomes:?}: call over");
    }
}

#[test]
fn caller_cancel_cancels_every_ringing_branch() {
    let mut f = Fork::call(&[LIVE, DEAD, THIRD]);
    assert_eq!(f.branches.len(), 3);
    f.respond(LIVE, 180, "a");
    f.respond(DEAD, 180, "b");
    let cancel = cancel_from_a();
    let ck = TransactionKey::client("z9hG4bKa1", Method::Cancel);
    let a_key = f.a_key.clone();
    f.b2b.on_cancel(&ck, &cancel, &a_key, &mut f.media, f.now);
    let acts = f.actions();
    assert_eq!(to_a(&acts), vec![200, 487]);
    let mut got = cancels(&acts);
    got.sort_by_key(|k| k.to_string());
    let mut want = vec![f.branch(LIVE).1, f.branch(DEAD).1];
    want.sort_by_key(|k| k.to_string());
    assert_eq!(got, want, "both ringing branches cancelled");
    // The third rings only now: cancelled at once; a 2xx racing the CANCEL is BYEd.
    assert_eq!(
        cancels(&f.respond(THIRD, 180, "c")),
        vec![f.branch(THIRD).1]
    );
    f.respond(LIVE, 487, "a");
    f.respond(DEAD, 487, "b");
    let acts = f.respond(THIRD, 200, "c");
    assert_eq!(sent(&acts, Method::Bye), vec![THIRD.parse().expect("addr")]);
    assert!(to_a(&acts).is_empty());
    assert!(f.b2b.is_empty());
}

#[test]
fn best_final_follows_rfc_3261_16_7() {
    assert_eq!(best_final(&[]), None);
    assert_eq!(best_final(&[(486, true), (603, true)]), Some(1));
    assert_eq!(best_final(&[(302, true), (486, true)]), Some(0));
    assert_eq!(best_final(&[(500, true), (480, true)]), Some(1));
    assert_eq!(best_final(&[(486, true), (407, true)]), Some(1));
    assert_eq!(best_final(&[(408, false), (480, true)]), Some(1));
    assert_eq!(best_final(&[(486, true), (480, true)]), Some(0));
}

#[test]
fn shutdown_ends_a_forked_call_with_503_and_cancels_every_ringing_branch() {
    let mut f = Fork::call(&[LIVE, DEAD, THIRD]);
    f.respond(LIVE, 180, "a");
    f.respond(DEAD, 180, "b");
    let now = f.now;
    assert_eq!(f.b2b.end_all("shutdown", 30, &mut f.media, now), 1);
    let acts = f.actions();
    assert_eq!(to_a(&acts), vec![503], "the caller gets 503");
    let mut got = cancels(&acts);
    got.sort_by_key(|k| k.to_string());
    let mut want = vec![f.branch(LIVE).1, f.branch(DEAD).1];
    want.sort_by_key(|k| k.to_string());
    assert_eq!(got, want, "both ringing branches cancelled");
    // The silent one rings only now: cancelled at once.
    assert_eq!(
        cancels(&f.respond(THIRD, 180, "c")),
        vec![f.branch(THIRD).1]
    );
}

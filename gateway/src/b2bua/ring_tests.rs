//! Timer C and the ring limit (`ring.rs`) in virtual time, with the fake relay.

use super::ring::Deadlines;
use super::tests::{b_response, cancel_from_a, invite_from_a, peer, sdp, FakeMedia};
use super::*;

const PHONE: &str = "10.0.0.2:5070";
const OTHER: &str = "10.0.0.3:5070";
const C: Duration = Duration::from_secs(181);

struct Rig {
    b2b: B2bua,
    media: FakeMedia,
    t0: Instant,
    a_key: TransactionKey,
    /// (destination, INVITE, key) of every INVITE sent to a callee, in order.
    invites: Vec<(SocketAddr, Request, TransactionKey)>,
}

fn config(ring_timeout: Option<Duration>) -> Config {
    Config {
        ring_timeout,
        ..Config::default()
    }
}

fn device(contacts: &[&str]) -> Target {
    Target::Device {
        device: "PJSIP/1002".into(),
        contact: format!("sip:1002@{}", contacts[0]),
        dest: peer(contacts[0]),
        limit: 0,
        forks: contacts[1..]
            .iter()
            .map(|a| ForkTarget {
                contact: format!("sip:1002@{a}"),
                dest: peer(a),
            })
            .collect(),
    }
}

impl Rig {
    fn call(cfg: Config, target: Target) -> (Rig, Vec<Action>) {
        let mut rig = Rig {
            b2b: B2bua::new(cfg),
            media: FakeMedia::default(),
            t0: Instant::now(),
            a_key: TransactionKey::client("z9hG4bKa1", Method::Invite),
            invites: Vec::new(),
        };
        rig.b2b.on_invite(
            rig.a_key.clone(),
            invite_from_a(),
            peer("10.0.0.1:5060"),
            Routed {
                caller: Caller::default(),
                target,
            },
            &mut rig.media,
            rig.t0,
        );
        let acts = rig.actions();
        (rig, acts)
    }

    /// Every action since the last call; INVITEs to callees are remembered.
    fn actions(&mut self) -> Vec<Action> {
        let acts: Vec<Action> = std::iter::from_fn(|| self.b2b.poll_action()).collect();
        for a in &acts {
            if let Action::Request { key, request, dest } = a {
                if request.method == Method::Invite {
                    self.invites.push((dest.addr, request.clone(), key.clone()));
                }
            }
        }
        acts
    }

    fn invite_to(&self, addr: &str) -> (Request, TransactionKey) {
        let addr: SocketAddr = addr.parse().expect("addr");
        self.invites
            .iter()
            .rev()
            .find(|(a, _, _)| *a == addr)
            .map(|(_, r, k)| (r.clone(), k.clone()))
            .expect("an INVITE to this address")
    }

    /// The callee at `addr` answers its latest INVITE with `code`, `secs` after the start.
    fn respond(&mut self, addr: &str, code: u16, secs: u64) -> Vec<Action> {
        self.respond_as(addr, code, secs, "phone")
    }

    /// As [`Rig::respond`], with To tag `tag`.
    fn respond_as(&mut self, addr: &str, code: u16, secs: u64, tag: &str) -> Vec<Action> {
        let (inv, key) = self.invite_to(addr);
        let body = if code == 200 {
            sdp("10.0.0.2", 6000, "sendrecv")
        } else {
            String::new()
        };
        let resp = b_response(&inv, code, tag, &body);
        let now = self.t0 + Duration::from_secs(secs);
        self.b2b.on_response(&key, resp, &mut self.media, now);
        self.actions()
    }

    fn at(&mut self, after: Duration) -> Vec<Action> {
        self.b2b.handle_timeout(&mut self.media, self.t0 + after);
        self.actions()
    }
}

fn cancels(acts: &[Action]) -> Vec<TransactionKey> {
    acts.iter()
        .filter_map(|a| match a {
            Action::Cancel { key, .. } => Some(key.clone()),
            _ => None,
        })
        .collect()
}

fn to_a(acts: &[Action]) -> Vec<u16> {
    acts.iter()
        .filter_map(|a| match a {
            Action::Respond { response, .. } => Some(response.status_code.code()),
            _ => None,
        })
        .collect()
}

fn ended(acts: &[Action]) -> Option<String> {
    acts.iter().find_map(|a| match a {
        Action::CallEnded { reason, .. } => Some(reason.clone()),
        _ => None,
    })
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[test]
fn deadlines_come_out_in_time_order_and_move_with_their_key() {
    let t0 = Instant::now();
    let mut d: Deadlines<u32> = Deadlines::default();
    d.set(1, t0 + secs(5));
    d.set(2, t0 + secs(3));
    d.set(3, t0 + secs(3));
    assert_eq!(d.first(), Some(t0 + secs(3)));
    d.set(2, t0 + secs(9)); // moved: its old slot is gone
    assert!(d.remove(&3));
    assert!(!d.remove(&3));
    assert_eq!(d.first(), Some(t0 + secs(5)));
    assert_eq!(d.pop_due(t0 + secs(4)), None);
    assert_eq!(d.pop_due(t0 + secs(9)), Some(1));
    assert_eq!(d.pop_due(t0 + secs(9)), Some(2));
    assert_eq!((d.pop_due(t0 + secs(99)), d.len()), (None, 0));
}

#[test]
fn timer_c_cancels_a_phone_that_rings_and_never_answers_and_the_caller_gets_408() {
    let (mut rig, _) = Rig::call(config(None), device(&[PHONE]));
    let (_, key) = rig.invite_to(PHONE);
    assert_eq!(
        rig.b2b.poll_timeout(),
        Some(rig.t0 + C),
        "armed at the INVITE"
    );
    assert_eq!(to_a(&rig.respond(PHONE, 180, 10)), vec![180]);
    assert_eq!(
        rig.b2b.poll_timeout(),
        Some(rig.t0 + secs(10) + C),
        "restarted by the 180"
    );
    let acts = rig.at(secs(10) + C - secs(1));
    assert!(
        cancels(&acts).is_empty() && to_a(&acts).is_empty(),
        "{acts:?}"
    );
    let acts = rig.at(secs(10) + C);
    assert_eq!(cancels(&acts), vec![key.clone()], "the branch is CANCELled");
    assert_eq!(to_a(&acts), vec![408], "the caller gets 408");
    assert_eq!(ended(&acts).as_deref(), Some("no-answer"));
    assert_eq!((rig.b2b.len(), rig.b2b.timer_c_fired()), (0, 1));
    assert_eq!(rig.b2b.calls_of("PJSIP/1002"), 0);
    // Its 487 is absorbed; nothing is left armed.
    let acts = rig.respond(PHONE, 487, 200);
    assert!(to_a(&acts).is_empty(), "{acts:?}");
    rig.b2b.on_terminated(&key);
    assert_eq!(rig.b2b.ring_timers_len(), (0, 0));
    assert_eq!(rig.b2b.poll_timeout(), None);
}

#[test]
fn every_provisional_restarts_timer_c() {
    let (mut rig, _) = Rig::call(config(None), device(&[PHONE]));
    rig.respond(PHONE, 180, 0);
    rig.respond(PHONE, 183, 150);
    let acts = rig.at(C + secs(10));
    assert!(cancels(&acts).is_empty(), "the 183 restarted it: {acts:?}");
    assert_eq!(rig.b2b.len(), 1);
    let acts = rig.at(secs(150) + C);
    assert_eq!(cancels(&acts).len(), 1);
    assert_eq!(to_a(&acts), vec![408]);
}

#[test]
fn a_2xx_crossing_the_timer_c_cancel_is_acked_and_byed() {
    let (mut rig, _) = Rig::call(config(None), device(&[PHONE]));
    rig.respond(PHONE, 180, 0);
    let acts = rig.at(C);
    assert_eq!(to_a(&acts), vec![408]);
    let acts = rig.respond(PHONE, 200, 182);
    let ack = acts.iter().any(|a| {
        matches!(a, Action::Stateless { message: SipMessage::Request(r), .. } if r.method == Method::Ack)
    });
    let bye = acts
        .iter()
        .any(|a| matches!(a, Action::Request { request, .. } if request.method == Method::Bye));
    assert!(ack && bye, "ACK and BYE to the late answer: {acts:?}");
    assert!(to_a(&acts).is_empty(), "the caller is gone: {acts:?}");
}

#[test]
fn a_cancel_without_final_response_ends_the_transaction_after_64_t1() {
    let (mut rig, _) = Rig::call(config(None), device(&[PHONE]));
    let (_, key) = rig.invite_to(PHONE);
    rig.respond(PHONE, 180, 0);
    rig.at(C);
    let wait = wait();
    assert_eq!(rig.b2b.poll_timeout(), Some(rig.t0 + C + wait));
    let acts = rig.at(C + wait - secs(1));
    assert!(acts.is_empty(), "{acts:?}");
    let acts = rig.at(C + wait);
    assert_eq!(acts, vec![Action::Terminate { key }]);
    assert_eq!(rig.b2b.timer_c_fired(), 1, "counted once");
}

#[test]
fn timer_c_before_any_response_gives_the_branch_up_as_a_408_like_timer_b() {
    // Timer C shorter than Timer B (64·T1 = 32 s): the branch is over as a 408 and its
    // INVITE no longer retransmitted; no CANCEL before a provisional (§9.1).
    let cfg = Config {
        timer_c: secs(5),
        ..Config::default()
    };
    let (mut rig, _) = Rig::call(cfg, device(&[PHONE]));
    let (_, key) = rig.invite_to(PHONE);
    let acts = rig.at(secs(5));
    assert!(cancels(&acts).is_empty(), "{acts:?}");
    assert!(
        acts.contains(&Action::Abandon { key: key.clone() }),
        "{acts:?}"
    );
    assert_eq!(to_a(&acts), vec![408]);
    // A 180 after all: CANCELled at once, and destroyed if its final response never comes.
    let acts = rig.respond(PHONE, 180, 6);
    assert_eq!(cancels(&acts), vec![key.clone()]);
    assert!(to_a(&acts).is_empty());
    let wait = wait();
    assert_eq!(rig.b2b.poll_timeout(), Some(rig.t0 + secs(6) + wait));
    assert_eq!(rig.at(secs(6) + wait), vec![Action::Terminate { key }]);
    assert_eq!(rig.b2b.timer_c_fired(), 1);
}

#[test]
fn a_given_up_branch_that_only_says_100_is_destroyed_after_64_t1() {
    // A 100 stops Timer B in the transaction layer: without this the INVITE would stay.
    let cfg = Config {
        timer_c: secs(5),
        ..Config::default()
    };
    let (mut rig, _) = Rig::call(cfg, device(&[PHONE]));
    let (_, key) = rig.invite_to(PHONE);
    rig.at(secs(5));
    assert_eq!(
        rig.b2b.poll_timeout(),
        None,
        "abandoned: Timer B's to end it"
    );
    let acts = rig.respond(PHONE, 100, 7);
    assert_eq!(
        cancels(&acts),
        vec![key.clone()],
        "a 100 allows the CANCEL: {acts:?}"
    );
    let wait = wait();
    assert_eq!(rig.at(secs(7) + wait), vec![Action::Terminate { key }]);
}

#[test]
fn timer_c_of_one_fork_branch_leaves_the_other_ringing() {
    let (mut rig, _) = Rig::call(config(None), device(&[PHONE, OTHER]));
    let (_, stuck) = rig.invite_to(PHONE);
    rig.respond(PHONE, 180, 0);
    rig.respond(OTHER, 180, 100);
    let acts = rig.at(C);
    assert_eq!(cancels(&acts), vec![stuck], "only the stuck branch");
    assert!(to_a(&acts).is_empty(), "the caller still waits: {acts:?}");
    assert_eq!(rig.b2b.len(), 1);
    // Its late 200 is ACKed and BYEd; the live branch then wins.
    let acts = rig.respond(PHONE, 200, 182);
    assert!(to_a(&acts).is_empty(), "{acts:?}");
    assert!(acts
        .iter()
        .any(|a| matches!(a, Action::Request { request, .. } if request.method == Method::Bye)));
    let acts = rig.respond(OTHER, 200, 183);
    assert_eq!(to_a(&acts), vec![200]);
}

#[test]
fn every_fork_branch_ended_by_timer_c_gives_408() {
    let (mut rig, _) = Rig::call(config(None), device(&[PHONE, OTHER]));
    rig.respond(PHONE, 180, 0);
    rig.respond(OTHER, 180, 0);
    let acts = rig.at(C);
    assert_eq!(cancels(&acts).len(), 2, "{acts:?}");
    assert_eq!(to_a(&acts), vec![408]);
    assert_eq!(rig.b2b.timer_c_fired(), 2, "counted per branch");
}

#[test]
fn timer_c_diverts_to_voicemail_when_no_answer_diversion_is_armed() {
    let (mut rig, _) = Rig::call(config(None), device(&[PHONE]));
    rig.divert_to_voicemail(Some(secs(600)));
    let (_, key) = rig.invite_to(PHONE);
    rig.respond(PHONE, 180, 0);
    let acts = rig.at(C);
    assert_eq!(cancels(&acts), vec![key]);
    assert!(to_a(&acts).is_empty(), "no 408: {acts:?}");
    let (vm, _) = rig.invite_to("127.0.0.1:5070");
    assert_eq!(vm.uri.to_string(), "sip:vm-1002@127.0.0.1:5070");
    // Voicemail's INVITE has a Timer C of its own (beside the phone's 64·T1 CANCEL wait).
    assert_eq!(rig.b2b.ring_timers_len(), (2, 0));
    let acts = rig.at(C + C);
    assert_eq!(cancels(&acts).len(), 0, "voicemail sent no provisional");
    assert_eq!(to_a(&acts), vec![408]);
}

/// 64·T1 with the default T1: §9.1's wait for the final response to our CANCEL.
fn wait() -> Duration {
    Config::default().t1 * 64
}

fn terminated(acts: &[Action]) -> Vec<TransactionKey> {
    acts.iter()
        .filter_map(|a| match a {
            Action::Terminate { key } => Some(key.clone()),
            _ => None,
        })
        .collect()
}

fn has(acts: &[Action], method: Method, to: &str) -> bool {
    let to: SocketAddr = to.parse().expect("addr");
    acts.iter().any(|a| match a {
        Action::Request { request, dest, .. } => request.method == method && dest.addr == to,
        Action::Stateless {
            message: SipMessage::Request(request),
            dest,
        } => request.method == method && dest.addr == to,
        _ => false,
    })
}

impl Rig {
    /// The caller CANCELs its INVITE `secs` after the start.
    /// Arms a diversion to voicemail (127.0.0.1:5070) on busy and after `no_answer`.
    fn divert_to_voicemail(&mut self, no_answer: Option<Duration>) {
        let divert = Divert {
            uri: "sip:vm-1002@127.0.0.1:5070".into(),
            dest: peer("127.0.0.1:5070"),
            on_busy: true,
            no_answer,
        };
        self.b2b.set_divert(&self.a_key, divert, self.t0);
    }

    fn cancel_from_a(&mut self, after: Duration) -> Vec<Action> {
        let ckey = TransactionKey::client("z9hG4bKc1", Method::Cancel);
        let a_key = self.a_key.clone();
        self.b2b.on_cancel(
            &ckey,
            &cancel_from_a(),
            &a_key,
            &mut self.media,
            self.t0 + after,
        );
        self.actions()
    }
}

#[test]
fn a_callee_that_never_answers_the_callers_cancel_is_destroyed_after_64_t1() {
    let (mut rig, _) = Rig::call(config(None), device(&[PHONE]));
    let (_, key) = rig.invite_to(PHONE);
    rig.respond(PHONE, 180, 0);
    let acts = rig.cancel_from_a(secs(10));
    assert_eq!(to_a(&acts), vec![200, 487], "{acts:?}");
    assert_eq!(cancels(&acts), vec![key.clone()]);
    assert_eq!(rig.b2b.len(), 1, "waits for the callee's 487");
    assert_eq!(rig.b2b.calls_of("PJSIP/1002"), 0, "no longer ringing");
    // §9.1: the CANCEL's wait replaces Timer C.
    assert_eq!(rig.b2b.poll_timeout(), Some(rig.t0 + secs(10) + wait()));
    let acts = rig.at(secs(10) + wait() - Duration::from_millis(1));
    assert!(acts.is_empty(), "{acts:?}");
    let acts = rig.at(secs(10) + wait());
    assert_eq!(terminated(&acts), vec![key.clone()], "{acts:?}");
    assert!(to_a(&acts).is_empty(), "the caller had its 487: {acts:?}");
    assert!(cancels(&acts).is_empty(), "{acts:?}");
    assert_eq!(ended(&acts).as_deref(), Some("cancel"));
    assert_eq!(rig.b2b.len(), 0, "the call is over");
    assert_eq!(rig.b2b.timer_c_fired(), 0, "not Timer C's doing");
    // The transaction layer reports the end of the destroyed transaction; nothing is left.
    rig.b2b.on_terminated(&key);
    assert_eq!(rig.b2b.leftovers(), [0; 10]);
    assert_eq!(rig.b2b.poll_timeout(), None);
    assert!(rig.at(C + secs(10)).is_empty());
}

#[test]
fn a_callee_that_rings_only_after_the_callers_cancel_is_cancelled_then_and_waited_64_t1() {
    let (mut rig, _) = Rig::call(config(None), device(&[PHONE]));
    let (_, key) = rig.invite_to(PHONE);
    let acts = rig.cancel_from_a(secs(1));
    assert!(
        cancels(&acts).is_empty(),
        "no CANCEL before a 1xx: {acts:?}"
    );
    let acts = rig.respond(PHONE, 180, 3);
    assert_eq!(cancels(&acts), vec![key.clone()]);
    assert_eq!(rig.b2b.poll_timeout(), Some(rig.t0 + secs(3) + wait()));
    let acts = rig.at(secs(3) + wait());
    assert_eq!(terminated(&acts), vec![key.clone()]);
    assert_eq!(ended(&acts).as_deref(), Some("cancel"));
    rig.b2b.on_terminated(&key);
    assert_eq!(rig.b2b.leftovers(), [0; 10]);
}

#[test]
fn a_callee_that_said_only_100_is_cancelled_at_the_callers_cancel() {
    // §9.1 forbids a CANCEL only before any provisional response; a 100 is one. Either the
    // callee answers the CANCEL (487, absorbed: the caller had its own) or it never does
    // (destroyed after 64·T1, not at Timer C).
    for answers in [true, false] {
        let (mut rig, _) = Rig::call(config(None), device(&[PHONE]));
        let (_, key) = rig.invite_to(PHONE);
        let acts = rig.respond(PHONE, 100, 0);
        assert!(to_a(&acts).is_empty(), "a 100 is not relayed: {acts:?}");
        let acts = rig.cancel_from_a(secs(1));
        assert_eq!(to_a(&acts), vec![200, 487], "{acts:?}");
        assert_eq!(cancels(&acts), vec![key.clone()], "CANCELled at once");
        assert_eq!(rig.b2b.calls_of("PJSIP/1002"), 0, "no longer ringing");
        assert_eq!(rig.b2b.poll_timeout(), Some(rig.t0 + secs(1) + wait()));
        let acts = if answers {
            rig.respond(PHONE, 487, 2)
        } else {
            assert!(rig
                .at(secs(1) + wait() - Duration::from_millis(1))
                .is_empty());
            let acts = rig.at(secs(1) + wait());
            assert_eq!(terminated(&acts), vec![key.clone()], "{acts:?}");
            acts
        };
        assert!(to_a(&acts).is_empty(), "the caller had its 487: {acts:?}");
        assert!(cancels(&acts).is_empty(), "{acts:?}");
        assert_eq!(ended(&acts).as_deref(), Some("cancel"), "{acts:?}");
        assert_eq!(rig.b2b.len(), 0);
        assert_eq!(rig.b2b.timer_c_fired(), 0, "not Timer C's doing");
        rig.b2b.on_terminated(&key);
        assert_eq!(rig.b2b.leftovers(), [0; 10]);
        assert_eq!(rig.b2b.poll_timeout(), None);
    }
}

#[test]
fn a_100_after_the_callers_cancel_gets_the_cancel_then_and_only_once() {
    let (mut rig, _) = Rig::call(config(None), device(&[PHONE]));
    let (_, key) = rig.invite_to(PHONE);
    let acts = rig.cancel_from_a(secs(1));
    assert!(cancels(&acts).is_empty(), "nothing came yet: {acts:?}");
    let acts = rig.respond(PHONE, 100, 2);
    assert_eq!(cancels(&acts), vec![key.clone()], "{acts:?}");
    assert_eq!(rig.b2b.poll_timeout(), Some(rig.t0 + secs(2) + wait()));
    let acts = rig.respond(PHONE, 180, 3);
    assert!(
        cancels(&acts).is_empty() && to_a(&acts).is_empty(),
        "{acts:?}"
    );
    let acts = rig.respond(PHONE, 487, 4);
    assert_eq!(ended(&acts).as_deref(), Some("cancel"));
    rig.b2b.on_terminated(&key);
    assert_eq!(rig.b2b.leftovers(), [0; 10]);
}

#[test]
fn a_fork_branch_that_said_only_100_is_cancelled_at_once() {
    // Another branch answers: the loser that said only 100 gets its CANCEL with the answer.
    let (mut rig, _) = Rig::call(config(None), device(&[PHONE, OTHER]));
    let (_, loser) = rig.invite_to(PHONE);
    rig.respond(PHONE, 100, 0);
    let acts = rig.respond(OTHER, 180, 1);
    assert_eq!(
        to_a(&acts),
        vec![180],
        "the ringing branch is heard: {acts:?}"
    );
    let acts = rig.respond(OTHER, 200, 5);
    assert_eq!(to_a(&acts), vec![200]);
    assert_eq!(cancels(&acts), vec![loser.clone()], "{acts:?}");
    let acts = rig.respond(PHONE, 487, 6);
    assert!(to_a(&acts).is_empty(), "{acts:?}");
    // The caller CANCELs: a branch that rang and one that said only 100 are both CANCELled;
    // one that said nothing gets it at its first response, a 100 included.
    let (mut rig, _) = Rig::call(config(None), device(&[PHONE, OTHER, "10.0.0.4:5070"]));
    let ((_, one), (_, two), (_, three)) = (
        rig.invite_to(PHONE),
        rig.invite_to(OTHER),
        rig.invite_to("10.0.0.4:5070"),
    );
    rig.respond(PHONE, 180, 0);
    rig.respond(OTHER, 100, 0);
    let mut got = cancels(&rig.cancel_from_a(secs(1)));
    got.sort_by_key(|k| k.to_string());
    let mut want = vec![one.clone(), two.clone()];
    want.sort_by_key(|k| k.to_string());
    assert_eq!(got, want);
    let acts = rig.respond("10.0.0.4:5070", 100, 2);
    assert_eq!(cancels(&acts), vec![three.clone()], "{acts:?}");
    assert!(cancels(&rig.respond("10.0.0.4:5070", 180, 3)).is_empty());
    rig.respond(OTHER, 487, 4);
    rig.respond("10.0.0.4:5070", 487, 4);
    let acts = rig.respond(PHONE, 487, 4);
    assert_eq!(ended(&acts).as_deref(), Some("cancel"), "{acts:?}");
    for k in [&one, &two, &three] {
        rig.b2b.on_terminated(k);
    }
    assert_eq!(rig.b2b.leftovers(), [0; 10]);
}

#[test]
fn timer_c_the_ring_limit_and_shutdown_cancel_a_callee_that_said_only_100() {
    // Timer C.
    let (mut rig, _) = Rig::call(config(None), device(&[PHONE]));
    let (_, key) = rig.invite_to(PHONE);
    rig.respond(PHONE, 100, 0);
    let acts = rig.at(C);
    assert_eq!(cancels(&acts), vec![key.clone()], "{acts:?}");
    assert_eq!(to_a(&acts), vec![408]);
    // The ring limit.
    let (mut rig, _) = Rig::call(config(Some(secs(20))), device(&[PHONE]));
    let (_, key) = rig.invite_to(PHONE);
    rig.respond(PHONE, 100, 0);
    let acts = rig.at(secs(20));
    assert_eq!(cancels(&acts), vec![key.clone()], "{acts:?}");
    assert_eq!(to_a(&acts), vec![480]);
    // Shutdown.
    let (mut rig, _) = Rig::call(config(None), device(&[PHONE]));
    let (_, key) = rig.invite_to(PHONE);
    rig.respond(PHONE, 100, 0);
    rig.b2b
        .end_all("shutdown", 5, &mut rig.media, rig.t0 + secs(5));
    let acts = rig.actions();
    assert_eq!(
        (to_a(&acts), cancels(&acts)),
        (vec![503], vec![key.clone()])
    );
    assert_eq!(terminated(&rig.at(secs(5) + wait())), vec![key.clone()]);
    rig.b2b.on_terminated(&key);
    assert_eq!(rig.b2b.leftovers(), [0; 10]);
}

fn trunk(dest: &str, fallbacks: &[&str]) -> Target {
    Target::Peer {
        uri: "sip:555@pstn.test".into(),
        dest: peer(dest),
        credentials: None,
        fallbacks: fallbacks.iter().map(|a| peer(a)).collect(),
    }
}

#[test]
fn a_100_then_503_still_fails_over_and_the_next_target_is_cancelled_only_once_it_responds() {
    // A 100 allows the CANCEL but is no provisional for RFC 3263 failover (as before).
    let (mut rig, _) = Rig::call(config(None), trunk("10.0.0.5:5060", &["10.0.0.6:5060"]));
    rig.respond("10.0.0.5:5060", 100, 0);
    let acts = rig.respond("10.0.0.5:5060", 503, 1);
    assert!(has(&acts, Method::Invite, "10.0.0.6:5060"), "{acts:?}");
    assert!(to_a(&acts).is_empty(), "{acts:?}");
    // What the first target said does not count for the second.
    let acts = rig.cancel_from_a(secs(2));
    assert!(cancels(&acts).is_empty(), "{acts:?}");
    let (_, key) = rig.invite_to("10.0.0.6:5060");
    let acts = rig.respond("10.0.0.6:5060", 100, 3);
    assert_eq!(cancels(&acts), vec![key], "{acts:?}");
}

#[test]
fn every_fork_branch_the_caller_cancelled_is_destroyed_after_64_t1() {
    let (mut rig, _) = Rig::call(config(None), device(&[PHONE, OTHER]));
    let ((_, one), (_, two)) = (rig.invite_to(PHONE), rig.invite_to(OTHER));
    rig.respond(PHONE, 180, 0);
    rig.respond(OTHER, 180, 1);
    let acts = rig.cancel_from_a(secs(5));
    assert_eq!(cancels(&acts).len(), 2, "{acts:?}");
    // One branch answers its CANCEL, the other never does.
    let acts = rig.respond(OTHER, 487, 6);
    assert!(to_a(&acts).is_empty(), "{acts:?}");
    assert_eq!(
        rig.b2b.len(),
        1,
        "the primary still owes its final response"
    );
    let acts = rig.at(secs(5) + wait());
    assert_eq!(terminated(&acts), vec![one.clone()], "{acts:?}");
    assert_eq!(ended(&acts).as_deref(), Some("cancel"));
    assert!(to_a(&acts).is_empty(), "{acts:?}");
    for k in [&one, &two] {
        rig.b2b.on_terminated(k);
    }
    assert_eq!(rig.b2b.leftovers(), [0; 10]);
}

#[test]
fn a_fork_loser_that_never_answers_its_cancel_is_destroyed_after_64_t1() {
    let (mut rig, _) = Rig::call(config(None), device(&[PHONE, OTHER]));
    let (_, loser) = rig.invite_to(PHONE);
    rig.respond(PHONE, 180, 0);
    rig.respond(OTHER, 180, 0);
    let acts = rig.respond(OTHER, 200, 5);
    assert_eq!(to_a(&acts), vec![200]);
    assert_eq!(cancels(&acts), vec![loser.clone()]);
    let ok = super::tests::response(&acts, 200).expect("the 200");
    rig.b2b
        .on_ack(&super::tests::a_ack(&ok), &mut rig.media, rig.t0 + secs(5));
    let acts = rig.at(secs(5) + wait());
    assert_eq!(terminated(&acts), vec![loser.clone()], "{acts:?}");
    assert!(
        ended(&acts).is_none(),
        "the answered call goes on: {acts:?}"
    );
    assert_eq!(rig.b2b.len(), 1);
    assert_eq!(rig.b2b.ring_timers_len(), (0, 0), "no Timer C left behind");
}

#[test]
fn a_cancel_at_shutdown_is_destroyed_after_64_t1_too() {
    let (mut rig, _) = Rig::call(config(None), device(&[PHONE]));
    let (_, key) = rig.invite_to(PHONE);
    rig.respond(PHONE, 180, 0);
    rig.b2b
        .end_all("shutdown", 5, &mut rig.media, rig.t0 + secs(5));
    let acts = rig.actions();
    assert_eq!(
        (to_a(&acts), cancels(&acts)),
        (vec![503], vec![key.clone()])
    );
    assert_eq!(rig.b2b.len(), 0);
    assert_eq!(terminated(&rig.at(secs(5) + wait())), vec![key.clone()]);
    rig.b2b.on_terminated(&key);
    assert_eq!(rig.b2b.leftovers(), [0; 10]);
}

#[test]
fn a_2xx_crossing_a_ring_limit_diversion_cancel_is_acked_and_byed_and_voicemail_keeps_the_caller() {
    let (mut rig, _) = Rig::call(config(Some(secs(20))), device(&[PHONE]));
    rig.divert_to_voicemail(Some(secs(30)));
    let (_, key) = rig.invite_to(PHONE);
    rig.respond(PHONE, 180, 1);
    let acts = rig.at(secs(20));
    assert_eq!(cancels(&acts), vec![key.clone()]);
    assert!(has(&acts, Method::Invite, "127.0.0.1:5070"), "{acts:?}");
    let acts = rig.respond(PHONE, 200, 20);
    assert!(has(&acts, Method::Ack, PHONE), "ACKed: {acts:?}");
    assert!(has(&acts, Method::Bye, PHONE), "and BYEd: {acts:?}");
    assert!(
        to_a(&acts).is_empty(),
        "the caller hears nothing of it: {acts:?}"
    );
    let acts = rig.respond("127.0.0.1:5070", 200, 21);
    assert_eq!(to_a(&acts), vec![200], "voicemail answers the caller");
    assert_eq!(rig.b2b.len(), 1);
    rig.b2b.on_terminated(&key);
    assert_eq!(rig.b2b.ring_timers_len(), (0, 0));
}

#[test]
fn a_2xx_crossing_a_timer_c_diversion_cancel_is_acked_and_byed_and_voicemail_keeps_the_caller() {
    let (mut rig, _) = Rig::call(config(None), device(&[PHONE]));
    rig.divert_to_voicemail(Some(secs(600)));
    rig.respond(PHONE, 180, 0);
    let acts = rig.at(C);
    assert!(has(&acts, Method::Invite, "127.0.0.1:5070"), "{acts:?}");
    let acts = rig.respond(PHONE, 200, 182);
    assert!(
        has(&acts, Method::Ack, PHONE) && has(&acts, Method::Bye, PHONE),
        "{acts:?}"
    );
    assert!(to_a(&acts).is_empty(), "{acts:?}");
    // Voicemail fails: the caller gets its failure, the phone's 200 does not count.
    let acts = rig.respond("127.0.0.1:5070", 503, 183);
    assert_eq!(to_a(&acts), vec![503], "{acts:?}");
    assert_eq!(rig.b2b.len(), 0);
}

#[test]
fn ring_limit_cancels_the_phones_and_gives_the_caller_480() {
    let (mut rig, _) = Rig::call(config(Some(secs(20))), device(&[PHONE, OTHER]));
    let (_, silent) = rig.invite_to(OTHER);
    rig.respond(PHONE, 180, 1);
    assert_eq!(rig.b2b.poll_timeout(), Some(rig.t0 + secs(20)));
    assert!(rig.at(secs(19)).is_empty());
    let acts = rig.at(secs(20));
    let (_, ringing) = rig.invite_to(PHONE);
    assert_eq!(cancels(&acts), vec![ringing], "{acts:?}");
    assert!(acts.contains(&Action::Abandon { key: silent }), "{acts:?}");
    assert_eq!(to_a(&acts), vec![480]);
    assert_eq!(ended(&acts).as_deref(), Some("ring-timeout"));
    assert_eq!((rig.b2b.ring_timeouts(), rig.b2b.timer_c_fired()), (1, 0));
    assert_eq!(rig.b2b.calls_of("PJSIP/1002"), 0);
    // The ringing phone's 200 across the CANCEL: ACK + BYE.
    let acts = rig.respond(PHONE, 200, 21);
    assert!(acts
        .iter()
        .any(|a| matches!(a, Action::Request { request, .. } if request.method == Method::Bye)));
    // The silent branch was given up: its Timer C does not fire later (Timer B ends it).
    let acts = rig.at(C + secs(1));
    assert!(acts.is_empty(), "{acts:?}");
    assert_eq!(rig.b2b.timer_c_fired(), 0);
}

#[test]
fn ring_limit_stops_at_the_answer_and_is_not_for_trunks() {
    let (mut rig, _) = Rig::call(config(Some(secs(20))), device(&[PHONE]));
    rig.respond(PHONE, 180, 1);
    rig.respond(PHONE, 200, 5);
    assert_eq!(rig.b2b.ring_timers_len(), (0, 0), "both stopped by the 200");
    let acts = rig.at(secs(20));
    assert!(!to_a(&acts).contains(&480), "{acts:?}");
    assert_eq!(rig.b2b.ring_timeouts(), 0);
    let trunk = Target::Peer {
        uri: "sip:555@10.0.0.9:5060".into(),
        dest: peer("10.0.0.9:5060"),
        credentials: None,
        fallbacks: Vec::new(),
    };
    let (rig, _) = Rig::call(config(Some(secs(20))), trunk);
    assert_eq!(rig.b2b.ring_timers_len(), (1, 0), "Timer C only");
    assert_eq!(rig.b2b.poll_timeout(), Some(rig.t0 + C));
}

#[test]
fn ring_limit_goes_to_voicemail_when_a_no_answer_diversion_is_armed() {
    let (mut rig, _) = Rig::call(config(Some(secs(20))), device(&[PHONE]));
    rig.divert_to_voicemail(Some(secs(30)));
    rig.respond(PHONE, 180, 1);
    let acts = rig.at(secs(20));
    assert!(to_a(&acts).is_empty(), "{acts:?}");
    assert_eq!(cancels(&acts).len(), 1);
    rig.invite_to("127.0.0.1:5070");
    assert_eq!(rig.b2b.ring_timeouts(), 0);
    // Voicemail rings on without the ring limit.
    assert!(to_a(&rig.at(secs(40))).is_empty());
}

#[test]
fn a_call_diverted_on_busy_is_not_cut_by_the_ring_limit() {
    let (mut rig, _) = Rig::call(config(Some(secs(20))), device(&[PHONE]));
    rig.divert_to_voicemail(None);
    rig.respond(PHONE, 486, 5);
    rig.invite_to("127.0.0.1:5070");
    rig.respond("127.0.0.1:5070", 180, 6);
    let acts = rig.at(secs(20));
    assert!(!to_a(&acts).contains(&480), "{acts:?}");
    assert_eq!((rig.b2b.len(), rig.b2b.ring_timeouts()), (1, 0));
}

#[test]
fn a_calls_own_deadlines_are_indexed_and_leave_with_it() {
    // `due.rs`: the 200's retransmission (T1) and ACK wait (64·T1) come from the index, which
    // forgets the call when it ends.
    let (mut rig, _) = Rig::call(config(None), device(&[PHONE]));
    assert_eq!(
        rig.b2b.calls_due_len(),
        0,
        "nothing of its own while it rings"
    );
    let acts = rig.respond(PHONE, 200, 5);
    assert_eq!(to_a(&acts), vec![200]);
    assert_eq!(rig.b2b.calls_due_len(), 1);
    let t1 = Config::default().t1;
    assert_eq!(rig.b2b.poll_timeout(), Some(rig.t0 + secs(5) + t1));
    assert_eq!(to_a(&rig.at(secs(5) + t1)), vec![200], "retransmitted");
    let acts = rig.at(secs(5) + t1 * 64);
    assert_eq!(ended(&acts).as_deref(), Some("no-ack"), "{acts:?}");
    assert_eq!((rig.b2b.len(), rig.b2b.calls_due_len()), (0, 0));
}

#[test]
fn a_2xx_across_a_timer_c_cancel_never_counts_as_the_calls_answer() {
    // The stuck branch's late 200 is ACKed and BYEd; when the other branch then fails, the
    // caller gets that failure, not a 200 made out of it.
    let (mut rig, _) = Rig::call(config(None), device(&[PHONE, OTHER]));
    rig.respond(PHONE, 180, 0);
    rig.respond(OTHER, 180, 100);
    rig.at(C);
    rig.respond(PHONE, 200, 182);
    let acts = rig.respond(OTHER, 486, 183);
    assert_eq!(to_a(&acts), vec![486], "{acts:?}");
    assert_eq!(rig.b2b.len(), 0);
}

const NODE: &str = "10.0.0.8:5060";
const NEXT: &str = "10.0.0.9:5060";

fn cancel_dests(acts: &[Action]) -> Vec<(TransactionKey, SocketAddr)> {
    acts.iter()
        .filter_map(|a| match a {
            Action::Cancel { key, dest } => Some((key.clone(), dest.addr)),
            _ => None,
        })
        .collect()
}

fn ack_to(acts: &[Action], to: &str) -> Option<Request> {
    let to: SocketAddr = to.parse().expect("addr");
    acts.iter().find_map(|a| match a {
        Action::Stateless {
            message: SipMessage::Request(r),
            dest,
        } if r.method == Method::Ack && dest.addr == to => Some(r.clone()),
        _ => None,
    })
}

#[test]
fn retarget_cancels_the_old_target_once_it_responded_and_its_late_answers_stay_away() {
    // The fabric thinks the ACD node died and sends the INVITE to the next one (`retarget`).
    // A node that said 100 or 180 is CANCELled (§9.1: if it is alive after all, it stops
    // offering the caller); one that said nothing is CANCELled at its first response. Its
    // final response (487, or a 2xx: ACKed and BYEd) never reaches the caller, who gets the
    // next node's ringing and answer, in a dialog with the next node.
    for first in [Some(100), Some(180), None] {
        let (mut rig, _) = Rig::call(config(None), trunk(NODE, &[]));
        let (_, old) = rig.invite_to(NODE);
        if let Some(code) = first {
            let acts = rig.respond_as(NODE, code, 0, "node1");
            assert_eq!(to_a(&acts).len(), usize::from(code > 100), "{acts:?}");
        }
        let id = rig.b2b.newest_call().expect("the call");
        assert!(rig.b2b.retarget(id, peer(NEXT), None, rig.t0 + secs(5)));
        let acts = rig.actions();
        assert!(has(&acts, Method::Invite, NEXT), "{acts:?}");
        assert!(to_a(&acts).is_empty(), "{acts:?}");
        let (_, new) = rig.invite_to(NEXT);
        assert_ne!(old, new);
        if first.is_some() {
            assert_eq!(
                cancel_dests(&acts),
                vec![(old.clone(), NODE.parse().unwrap())]
            );
        } else {
            assert!(
                cancels(&acts).is_empty(),
                "nothing came: no CANCEL yet: {acts:?}"
            );
            let acts = rig.respond_as(NODE, 180, 6, "node1");
            assert_eq!(
                cancel_dests(&acts),
                vec![(old.clone(), NODE.parse().unwrap())]
            );
            assert!(to_a(&acts).is_empty(), "{acts:?}");
        }
        // The old node's answer across the CANCEL: ACKed and BYEd, the caller hears nothing.
        let acts = rig.respond_as(NODE, 200, 7, "node1");
        assert!(ack_to(&acts, NODE).is_some(), "{acts:?}");
        assert!(has(&acts, Method::Bye, NODE), "{acts:?}");
        assert!(to_a(&acts).is_empty(), "{acts:?}");
        assert_eq!(rig.b2b.len(), 1, "the caller still waits for the next node");
        // The next node rings and answers: its own dialog.
        assert_eq!(to_a(&rig.respond_as(NEXT, 180, 8, "node2")), vec![180]);
        let acts = rig.respond_as(NEXT, 200, 9, "node2");
        assert_eq!(to_a(&acts), vec![200], "{acts:?}");
        let ack = ack_to(&acts, NEXT).expect("the next node's 200 ACKed");
        let field = |name: &str| {
            ack.headers
                .iter()
                .map(|h| h.to_string())
                .find(|h| h.starts_with(&format!("{name}:")))
                .and_then(|h| h.split_once(": ").map(|(_, v)| v.to_owned()))
                .expect("header")
        };
        assert!(field("To").contains("tag=node2"), "{}", field("To"));
        assert!(cancels(&acts).is_empty(), "{acts:?}");
        // The dialog is the next node's: its BYE is ours, with the old node's tag it is not.
        let bye = |tag: &str| {
            super::tests::request(
                &format!(
                    "BYE sip:callfabric@192.0.2.1:5060 SIP/2.0
Via: SIP/2.0/UDP {NEXT};branch=z9hG4bKbye{tag}
Max-Forwards: 70
From: <sip:555@pstn.test>;tag={tag}
To: {}
Call-ID: {}
CSeq: 1 BYE
",
                    field("From"),
                    field("Call-ID"),
                ),
                "",
            )
        };
        assert!(rig.b2b.owns(&bye("node2")));
        assert!(!rig.b2b.owns(&bye("node1")));
        rig.b2b.on_terminated(&old);
        assert_eq!(
            rig.b2b.ring_timers_len(),
            (0, 0),
            "nothing armed for either INVITE"
        );
        assert_eq!(rig.b2b.leftovers()[4], 0, "the old branch is forgotten");
    }
}

#[test]
fn retarget_absorbs_the_old_targets_487_and_cancels_nothing_at_the_next() {
    let (mut rig, _) = Rig::call(config(None), trunk(NODE, &[]));
    let (_, old) = rig.invite_to(NODE);
    rig.respond_as(NODE, 100, 0, "node1");
    let id = rig.b2b.newest_call().expect("the call");
    assert!(rig.b2b.retarget(id, peer(NEXT), None, rig.t0 + secs(5)));
    rig.actions();
    let acts = rig.respond_as(NODE, 487, 6, "node1");
    assert!(acts.is_empty(), "absorbed: {acts:?}");
    rig.b2b.on_terminated(&old);
    // The caller CANCELs before the next node said anything: no CANCEL there yet.
    let acts = rig.cancel_from_a(secs(7));
    assert_eq!(to_a(&acts), vec![200, 487]);
    assert!(cancels(&acts).is_empty(), "{acts:?}");
    let (_, new) = rig.invite_to(NEXT);
    assert_eq!(
        cancels(&rig.respond_as(NEXT, 100, 8, "node2")),
        vec![new.clone()]
    );
    let acts = rig.respond_as(NEXT, 487, 9, "node2");
    assert_eq!(ended(&acts).as_deref(), Some("cancel"));
    rig.b2b.on_terminated(&new);
    assert_eq!(rig.b2b.leftovers(), [0; 10]);
}

#[test]
fn a_branch_cancelled_already_is_not_cancelled_again_at_shutdown() {
    // Timer C gives up the stuck fork branch (CANCEL, §9.1's wait); the drain then ends the
    // call: the other branch gets its CANCEL, the stuck one no second CANCEL and no new wait.
    let (mut rig, _) = Rig::call(config(None), device(&[PHONE, OTHER]));
    let (_, stuck) = rig.invite_to(PHONE);
    let (_, live) = rig.invite_to(OTHER);
    rig.respond(PHONE, 180, 0);
    rig.respond(OTHER, 180, 100);
    let acts = rig.at(C);
    assert_eq!(cancels(&acts), vec![stuck.clone()]);
    let due = rig.b2b.poll_timeout();
    assert_eq!(due, Some(rig.t0 + C + wait()), "the stuck branch's wait");
    let n = rig
        .b2b
        .end_all("shutdown", 5, &mut rig.media, rig.t0 + C + secs(1));
    assert_eq!(n, 1);
    let acts = rig.actions();
    let sent = cancels(&acts);
    assert!(
        !sent.contains(&stuck),
        "a second CANCEL to the stuck branch: {acts:?}"
    );
    assert_eq!(sent, vec![live], "{acts:?}");
    assert_eq!(
        rig.b2b.poll_timeout(),
        Some(rig.t0 + C + wait()),
        "the first CANCEL's wait stands"
    );
}

//! Late offer (RFC 3261 §13.2.1 / RFC 3264), 100rel/PRACK (RFC 3262) and session timers
//! (RFC 4028) in the B2BUA, in virtual time with the fake relay.

use super::*;
use crate::sip::prack;

/// `invite_from_a` with extra header lines and/or without its SDP.
fn invite_with(extra: &str, with_sdp: bool) -> Request {
    let body = if with_sdp {
        sdp("10.0.0.1", 4000, "sendrecv")
    } else {
        String::new()
    };
    request(
        &format!(
            "INVITE sip:1002@gw SIP/2.0
Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKa1
Max-Forwards: 70
From: \"Alice\" <sip:1001@gw>;tag=atag
To: <sip:1002@gw>
Call-ID: a-call@10.0.0.1
CSeq: 1 INVITE
Contact: <sip:1001@10.0.0.1:5060>
{extra}"
        ),
        &body,
    )
}

impl Rig {
    /// A calls B with `invite`; returns B's INVITE and its key (None if refused at once).
    fn call_with(&mut self, invite: Request) -> Option<(Request, TransactionKey)> {
        self.b2b.on_invite(
            self.a_key.clone(),
            invite,
            peer("10.0.0.1:5060"),
            Routed {
                caller: Caller {
                    device: Some("PJSIP/1001".into()),
                    limit: 0,
                },
                target: Self::target(0),
            },
            &mut self.media,
            self.now,
        );
        self.pending_request()
    }

    fn pending_request(&mut self) -> Option<(Request, TransactionKey)> {
        let acts = self.actions();
        self.last = acts.clone();
        forwarded(&acts).map(|(k, r)| (r, k))
    }

    /// Runs the timers up to `until`, returning every action on the way.
    fn run_until(&mut self, until: Instant) -> Vec<(Instant, Action)> {
        let mut out = Vec::new();
        let mut steps = 0;
        while let Some(t) = self.b2b.poll_timeout() {
            if t > until {
                break;
            }
            steps += 1;
            assert!(steps < 10_000, "a timer that never clears: due at {t:?}");
            self.now = t;
            self.b2b.handle_timeout(&mut self.media, t);
            out.extend(self.actions().into_iter().map(|a| (t, a)));
        }
        self.now = until;
        out
    }
}

fn header<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
    r.headers.iter().find_map(|h| match h {
        Header::Other(n, v) if n.trim().eq_ignore_ascii_case(name) => Some(v.as_str()),
        Header::Require(v) if name.eq_ignore_ascii_case("require") => Some(v.value()),
        Header::Supported(v) if name.eq_ignore_ascii_case("supported") => Some(v.value()),
        _ => None,
    })
}

fn sdp_body(r: &Response) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

fn ack_with(a_ok: &Response, body: &str) -> Request {
    let mut ack = a_ack(a_ok);
    if !body.is_empty() {
        ack = dialog::with_body(ack, body.as_bytes().to_vec(), "application/sdp");
    }
    ack
}

#[test]
fn late_offer_we_offer_to_the_callee_and_in_our_200_and_take_the_answer_from_the_ack() {
    let mut rig = Rig::new();
    let (b_inv, b_key) = rig.call_with(invite_with("", false)).expect("INVITE to B");
    let t = text(&b_inv);
    assert!(
        t.contains("m=audio 20002 RTP/AVP 0 8 9 101\r\n"),
        "our own offer to B: {t}"
    );
    assert!(t.contains("c=IN IP4 192.0.2.1\r\n"), "{t}");
    assert!(rig.media.remotes.is_empty(), "no caller address known yet");

    // Early media: the 183's SDP is B's answer; the caller gets the 183 without a body.
    let p183 = b_response(&b_inv, 183, "btag", &sdp("10.0.0.2", 6000, "sendrecv"));
    rig.b2b.on_response(&b_key, p183, &mut rig.media, rig.now);
    let acts = rig.actions();
    let r = response(&acts, 183).expect("183 to A");
    assert!(r.body.is_empty(), "no offer in an unreliable 1xx");
    assert!(rig.media.bridged.contains(&CallId(1)));

    let ok = b_response(&b_inv, 200, "btag", &sdp("10.0.0.2", 6000, "sendrecv"));
    rig.b2b.on_response(&b_key, ok, &mut rig.media, rig.now);
    let acts = rig.actions();
    let a_ok = response(&acts, 200).expect("200 to A");
    let body = sdp_body(&a_ok);
    assert!(
        body.contains("m=audio 20000 RTP/AVP 0 101"),
        "our offer to A: {body}"
    );
    assert!(!body.contains("10.0.0.2"), "{body}");

    // The caller's answer comes in its ACK.
    let ack = ack_with(&a_ok, &sdp("10.0.0.1", 4002, "sendrecv"));
    rig.b2b.on_ack(&ack, &mut rig.media, rig.now);
    assert!(
        rig.media
            .remotes
            .iter()
            .any(|(_, s, a)| *s == Side::A && a.port() == 4002),
        "the answer in the ACK sets leg A's remote: {:?}",
        rig.media.remotes
    );
    assert_eq!(rig.b2b.len(), 1);
    assert!(rig.actions().is_empty());
}

#[test]
fn late_offer_ack_without_an_answer_ends_the_call_on_both_legs() {
    let mut rig = Rig::new();
    let (b_inv, b_key) = rig.call_with(invite_with("", false)).expect("INVITE to B");
    let ok = b_response(&b_inv, 200, "btag", &sdp("10.0.0.2", 6000, "sendrecv"));
    rig.b2b.on_response(&b_key, ok, &mut rig.media, rig.now);
    let a_ok = response(&rig.actions(), 200).expect("200 to A");
    rig.b2b
        .on_ack(&ack_with(&a_ok, ""), &mut rig.media, rig.now);
    let acts = rig.actions();
    let byes = acts
        .iter()
        .filter(|a| matches!(a, Action::Request { request, .. } if request.method == Method::Bye))
        .count();
    assert_eq!(byes, 2, "{acts:?}");
    assert!(acts
        .iter()
        .any(|a| matches!(a, Action::CallEnded { reason, .. } if reason == "no-answer-in-ack")));
}

#[test]
fn late_offer_reinvite_gets_our_sdp_as_offer_and_its_ack_answer_moves_the_media() {
    let mut rig = Rig::new();
    let (_b, a_ok) = rig.answered();
    let tag = to_tag(&a_ok);
    let _ = rig.actions();
    let re = in_dialog_from_a("INVITE", 2, &tag, "");
    let key = TransactionKey::client("z9hG4bKind2", Method::Invite);
    assert!(rig.b2b.on_in_dialog(&key, re, &mut rig.media, rig.now));
    let acts = rig.actions();
    assert!(forwarded(&acts).is_none(), "answered on leg A alone");
    let ok = response(&acts, 200).expect("200");
    assert!(
        sdp_body(&ok).contains("m=audio 20000 "),
        "{}",
        sdp_body(&ok)
    );
    let mut ack = in_dialog_from_a("ACK", 2, &tag, "");
    ack = dialog::with_body(
        ack,
        sdp("10.0.0.1", 4100, "sendrecv").into_bytes(),
        "application/sdp",
    );
    rig.b2b.on_ack(&ack, &mut rig.media, rig.now);
    assert!(rig
        .media
        .remotes
        .iter()
        .any(|(_, s, a)| *s == Side::A && a.port() == 4100));
}

#[test]
fn reliable_provisionals_to_the_caller_retransmit_until_prack_and_hold_the_200() {
    let mut rig = Rig::new();
    let start = rig.now;
    let (b_inv, b_key) = rig
        .call_with(invite_with("Supported: 100rel, timer\n", true))
        .expect("INVITE to B");
    let p183 = b_response(&b_inv, 183, "btag", &sdp("10.0.0.2", 6000, "sendrecv"));
    rig.b2b.on_response(&b_key, p183, &mut rig.media, rig.now);
    let r183 = response(&rig.actions(), 183).expect("183 to A");
    assert_eq!(header(&r183, "Require"), Some("100rel"));
    let rseq = prack::rseq(&r183.headers).expect("RSeq");
    // Retransmitted at T1, 2T1 (doubling) while no PRACK comes.
    let acts = rig.run_until(start + Duration::from_millis(1600));
    let at: Vec<Duration> = acts
        .iter()
        .filter(|(_, a)| matches!(a, Action::Respond { response, .. } if response.status_code.code() == 183))
        .map(|(t, _)| *t - start)
        .collect();
    assert_eq!(
        at,
        vec![Duration::from_millis(500), Duration::from_millis(1500)]
    );
    // B answers: the 200 waits for the PRACK of the 183 with SDP.
    let ok = b_response(&b_inv, 200, "btag", &sdp("10.0.0.2", 6000, "sendrecv"));
    rig.b2b.on_response(&b_key, ok, &mut rig.media, rig.now);
    assert!(
        response(&rig.actions(), 200).is_none(),
        "held until the PRACK"
    );
    let tag = to_tag(&r183);
    let mut bad = in_dialog_from_a("PRACK", 2, &tag, "");
    bad.headers.push(Header::Other(
        "RAck".into(),
        format!("{} 1 INVITE", rseq + 7),
    ));
    let k = TransactionKey::client("z9hG4bKind2", Method::PRack);
    assert!(rig.b2b.on_in_dialog(&k, bad, &mut rig.media, rig.now));
    assert_eq!(Rig::responses_to_a(&rig.actions()), vec![481]);
    let mut pr = in_dialog_from_a("PRACK", 3, &tag, "");
    pr.headers
        .push(Header::Other("RAck".into(), format!("{rseq} 1 INVITE")));
    let k = TransactionKey::client("z9hG4bKind3", Method::PRack);
    assert!(rig.b2b.on_in_dialog(&k, pr, &mut rig.media, rig.now));
    assert_eq!(
        Rig::responses_to_a(&rig.actions()),
        vec![200, 200],
        "PRACK's 200, then the INVITE's"
    );
    // No more 183s after the answer.
    let later = rig.run_until(rig.now + Duration::from_secs(3));
    assert!(!later.iter().any(
        |(_, a)| matches!(a, Action::Respond { response, .. } if response.status_code.code() == 183)
    ));
}

#[test]
fn a_caller_that_never_pracks_gets_500_after_64_t1_and_the_callee_is_cancelled() {
    let mut rig = Rig::new();
    let start = rig.now;
    let (b_inv, b_key) = rig
        .call_with(invite_with("Require: 100rel\n", true))
        .expect("INVITE to B");
    let p180 = b_response(&b_inv, 180, "btag", "");
    rig.b2b.on_response(&b_key, p180, &mut rig.media, rig.now);
    let _ = rig.actions();
    let acts = rig.run_until(start + Duration::from_secs(40));
    let (t500, _) = acts
        .iter()
        .find(|(_, a)| matches!(a, Action::Respond { response, .. } if response.status_code.code() == 500))
        .expect("500 to A");
    assert_eq!(*t500 - start, Duration::from_secs(32), "64·T1");
    assert!(
        acts.iter().any(|(_, a)| matches!(a, Action::Cancel { .. })),
        "CANCEL to B"
    );
}

#[test]
fn reliable_provisionals_from_the_callee_are_pracked_once_and_relayed_once() {
    let mut rig = Rig::new();
    let (b_inv, b_key) = rig.call_with(invite_with("", true)).expect("INVITE to B");
    let t = text(&b_inv);
    assert!(t.contains("Supported: 100rel, timer\r\n"), "{t}");
    let mut p180 = b_response(&b_inv, 180, "btag", "");
    p180.headers
        .push(Header::Require(rsip::headers::Require::new("100rel")));
    p180.headers.push(Header::Other("RSeq".into(), "5".into()));
    rig.b2b
        .on_response(&b_key, p180.clone(), &mut rig.media, rig.now);
    let acts = rig.actions();
    assert_eq!(Rig::responses_to_a(&acts), vec![180]);
    let (_, prack) = forwarded(&acts).expect("PRACK to B");
    let t = text(&prack);
    assert!(t.starts_with("PRACK sip:1002@10.0.0.2:5070 SIP/2.0"), "{t}");
    assert!(t.contains("RAck: 5 1 INVITE\r\n"), "{t}");
    assert!(t.contains("tag=btag"), "{t}");
    assert!(t.contains("CSeq: 2 PRACK\r\n"), "{t}");
    // A retransmission: neither PRACKed again nor relayed.
    rig.b2b.on_response(&b_key, p180, &mut rig.media, rig.now);
    assert!(rig.actions().is_empty());
}

#[test]
fn session_expires_below_our_min_se_gets_422() {
    let mut rig = Rig::new();
    assert!(rig
        .call_with(invite_with("Supported: timer\nSession-Expires: 60\n", true))
        .is_none());
    let r = response(&rig.last, 422).expect("422");
    assert_eq!(header(&r, "Min-SE"), Some("90"));
    assert!(rig.b2b.is_empty());
}

#[test]
fn callee_422_is_retried_with_its_min_se() {
    let mut rig = Rig::new();
    let (b_inv, b_key) = rig.call_with(invite_with("", true)).expect("INVITE to B");
    assert!(text(&b_inv).contains("Session-Expires: 1800\r\n"));
    let mut r422 = b_response(&b_inv, 422, "btag", "");
    r422.headers
        .push(Header::Other("Min-SE".into(), "3600".into()));
    rig.b2b.on_response(&b_key, r422, &mut rig.media, rig.now);
    let (retry, _) = rig.pending_request().expect("INVITE again");
    let t = text(&retry);
    assert!(t.contains("Session-Expires: 3600\r\n"), "{t}");
    assert!(t.contains("Min-SE: 3600\r\n"), "{t}");
    assert!(t.contains("CSeq: 2 INVITE\r\n"), "{t}");
    assert!(
        Rig::responses_to_a(&rig.last).is_empty(),
        "the caller sees nothing"
    );
}

/// A call with timers on both legs: A refreshes leg A (120 s), we refresh leg B (100 s).
fn timed_call(rig: &mut Rig) -> (String, Response) {
    let (b_inv, b_key) = rig
        .call_with(invite_with(
            "Supported: timer\nSession-Expires: 120;refresher=uac\n",
            true,
        ))
        .expect("INVITE to B");
    let mut ok = b_response(&b_inv, 200, "btag", &sdp("10.0.0.2", 6000, "sendrecv"));
    ok.headers.push(Header::Other(
        "Session-Expires".into(),
        "100;refresher=uac".into(),
    ));
    ok.headers
        .push(Header::Allow(Allow::new("INVITE, ACK, BYE, UPDATE")));
    rig.b2b.on_response(&b_key, ok, &mut rig.media, rig.now);
    let a_ok = response(&rig.actions(), 200).expect("200 to A");
    assert_eq!(header(&a_ok, "Session-Expires"), Some("120;refresher=uac"));
    assert_eq!(header(&a_ok, "Require"), Some("timer"));
    rig.b2b.on_ack(&a_ack(&a_ok), &mut rig.media, rig.now);
    (to_tag(&a_ok), a_ok)
}

#[test]
fn session_timers_refresh_each_leg_on_its_own_and_a_missing_refresh_ends_the_call() {
    let mut rig = Rig::new();
    let start = rig.now;
    let (tag, _) = timed_call(&mut rig);
    // We refresh leg B by UPDATE at half its interval (50 s).
    let acts = rig.run_until(start + Duration::from_secs(55));
    let (t, upd) = acts
        .iter()
        .find_map(|(t, a)| match a {
            Action::Request { key, request, .. } if request.method == Method::Update => {
                Some((*t, (key.clone(), request.clone())))
            }
            _ => None,
        })
        .expect("UPDATE to B");
    assert_eq!(t - start, Duration::from_secs(50));
    let tx = text(&upd.1);
    assert!(
        tx.contains("Session-Expires: 100;refresher=uac\r\n"),
        "{tx}"
    );
    assert!(upd.1.body.is_empty(), "a refresh UPDATE has no offer");
    let ok = b_response(&upd.1, 200, "btag", "");
    rig.b2b.on_response(&upd.0, ok, &mut rig.media, rig.now);
    let _ = rig.actions();
    // A refreshes leg A at 60 s: answered on leg A, nothing sent to B.
    rig.now = start + Duration::from_secs(60);
    let re = in_dialog_from_a("UPDATE", 2, &tag, "");
    let k = TransactionKey::client("z9hG4bKind2", Method::Update);
    assert!(rig.b2b.on_in_dialog(&k, re, &mut rig.media, rig.now));
    let acts = rig.actions();
    let ok = response(&acts, 200).expect("200 to A's refresh");
    assert_eq!(header(&ok, "Session-Expires"), Some("120;refresher=uac"));
    assert!(forwarded(&acts).is_none(), "a refresh stays on its leg");
    // A's next refresh would be due by 60 + 120 − 32 = 148 s; it never comes.
    let acts = rig.run_until(start + Duration::from_secs(147));
    assert!(!acts
        .iter()
        .any(|(_, a)| matches!(a, Action::CallEnded { .. })));
    // Leg B was refreshed at 50, 100 s meanwhile (the UPDATEs are answered here).
    let acts = rig.run_until(start + Duration::from_secs(149));
    let ended = acts
        .iter()
        .find_map(|(t, a)| match a {
            Action::CallEnded { reason, .. } => Some((*t, reason.clone())),
            _ => None,
        })
        .expect("the call ended");
    assert_eq!(ended.1, "session-expired");
    assert_eq!(ended.0 - start, Duration::from_secs(148));
    let byes = acts
        .iter()
        .filter(
            |(_, a)| matches!(a, Action::Request { request, .. } if request.method == Method::Bye),
        )
        .count();
    assert_eq!(byes, 2, "BYE on both legs");
}

#[test]
fn an_unchanged_offer_is_a_refresh_answered_on_its_leg() {
    let mut rig = Rig::new();
    let inv = invite_with("", true);
    let same = String::from_utf8_lossy(&inv.body).into_owned();
    let (b_inv, b_key) = rig.call_with(inv).expect("INVITE to B");
    let ok = b_response(&b_inv, 200, "btag", &sdp("10.0.0.2", 6000, "sendrecv"));
    rig.b2b.on_response(&b_key, ok, &mut rig.media, rig.now);
    let a_ok = response(&rig.actions(), 200).expect("200 to A");
    rig.b2b.on_ack(&a_ack(&a_ok), &mut rig.media, rig.now);
    let tag = to_tag(&a_ok);
    // The caller's INVITE SDP again, same origin version: nothing changes.
    let re = in_dialog_from_a("INVITE", 2, &tag, &same);
    let key = TransactionKey::client("z9hG4bKind2", Method::Invite);
    assert!(rig.b2b.on_in_dialog(&key, re, &mut rig.media, rig.now));
    let acts = rig.actions();
    assert!(forwarded(&acts).is_none(), "not relayed to B");
    let ok = response(&acts, 200).expect("200");
    assert!(
        sdp_body(&ok).contains("m=audio 20000 "),
        "our current SDP as the answer"
    );
}

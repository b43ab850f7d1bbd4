//! The notifier in virtual time.

use super::*;
use crate::sip::message::{serialize_request, SipMessage};

fn subscribe(call: &str, to_tag: Option<&str>, expires: Option<u32>, extra: &str) -> Request {
    let to_tag = to_tag.map(|t| format!(";tag={t}")).unwrap_or_default();
    let expires = expires
        .map(|e| format!("Expires: {e}\r\n"))
        .unwrap_or_default();
    let text = format!(
        "SUBSCRIBE sip:1001@gw.example SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK{call}{n}\r\n\
         From: <sip:1001@gw.example>;tag=ph{call}\r\nTo: <sip:1001@gw.example>{to_tag}\r\n\
         Call-ID: {call}\r\nCSeq: 1 SUBSCRIBE\r\nContact: <sip:1001@127.0.0.1:5070>\r\n\
         Max-Forwards: 70\r\nEvent: message-summary\r\n{expires}{extra}Content-Length: 0\r\n\r\n",
        n = rand::random::<u32>()
    );
    match message::parse(text.as_bytes()) {
        Ok(SipMessage::Request(r)) => r,
        other => panic!("test SUBSCRIBE does not parse: {other:?}"),
    }
}

fn target() -> Target<u8> {
    Target {
        dest: 7,
        local: "127.0.0.1:5060".into(),
        proto: "UDP",
    }
}

fn core() -> MwiCore<u8> {
    MwiCore::new(Config {
        realm: "gw.example".into(),
        max_per_device: 2,
        ..Config::default()
    })
}

fn hdr(r: &Response, name: &str) -> Option<String> {
    r.headers.iter().find_map(|h| {
        let t = h.to_string();
        let (n, v) = t.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}

fn text(n: &Notify<u8>) -> String {
    String::from_utf8_lossy(&serialize_request(&n.request)).into_owned()
}

fn to_tag(r: &Response) -> String {
    let to = hdr(r, "To").expect("To");
    to.split(";tag=").nth(1).expect("a To tag").to_owned()
}

fn one(c: &mut MwiCore<u8>) -> Notify<u8> {
    let n = c.poll_notify().expect("a NOTIFY");
    assert!(c.poll_notify().is_none(), "one NOTIFY only");
    n
}

#[test]
fn subscribe_gets_200_then_a_notify_with_the_current_state() {
    let t0 = Instant::now();
    let mut c = core();
    c.set_mailbox(
        "1001@default",
        Counts {
            new: 1,
            ..Counts::default()
        },
        t0,
    );
    let r = c.on_subscribe(
        &subscribe("c1", None, None, ""),
        "1001",
        "1001@default",
        target(),
        t0,
    );
    assert_eq!(r.status_code.code(), 200);
    assert_eq!(hdr(&r, "Expires").as_deref(), Some("3600"));
    assert!(hdr(&r, "Contact").is_some());
    let tag = to_tag(&r);
    let n = one(&mut c);
    assert_eq!(n.dest, 7);
    let t = text(&n);
    assert!(
        t.starts_with("NOTIFY sip:1001@127.0.0.1:5070 SIP/2.0\r\n"),
        "{t}"
    );
    assert!(
        t.contains("Subscription-State: active;expires=3600\r\n"),
        "{t}"
    );
    assert!(t.contains("Event: message-summary\r\n"), "{t}");
    assert!(t.contains(&format!(";tag={tag}")), "{t}");
    assert!(t.contains("tag=phc1"), "{t}");
    assert!(t.contains("CSeq: 1 NOTIFY"), "{t}");
    assert!(
        t.contains("Content-Type: application/simple-message-summary"),
        "{t}"
    );
    assert!(t.ends_with(
        "Messages-Waiting: yes\r\nMessage-Account: sip:1001@gw.example\r\nVoice-Message: 1/0 (0/0)\r\n"
    ), "{t}");
    assert_eq!(c.stats().active, 1);
}

#[test]
fn changes_while_a_notify_is_in_flight_go_out_once_it_is_answered() {
    let t0 = Instant::now();
    let mut c = core();
    c.on_subscribe(
        &subscribe("c1", None, None, ""),
        "1001",
        "1001@default",
        target(),
        t0,
    );
    let first = one(&mut c);
    assert!(text(&first).contains("Messages-Waiting: no"));
    c.set_mailbox(
        "1001@default",
        Counts {
            new: 1,
            ..Counts::default()
        },
        t0,
    );
    c.set_mailbox(
        "1001@default",
        Counts {
            new: 2,
            old: 1,
            urgent_new: 1,
            urgent_old: 0,
        },
        t0,
    );
    assert!(c.poll_notify().is_none(), "one NOTIFY in flight at a time");
    c.on_response(first.id, Some(200), t0);
    let second = one(&mut c);
    let t = text(&second);
    assert!(t.contains("CSeq: 2 NOTIFY"), "{t}");
    assert!(
        t.contains("Voice-Message: 2/1 (1/0)"),
        "the latest state: {t}"
    );
    // Another mailbox's change does not reach this subscription.
    c.on_response(second.id, Some(200), t0);
    c.set_mailbox(
        "1002@default",
        Counts {
            new: 5,
            ..Counts::default()
        },
        t0,
    );
    assert!(c.poll_notify().is_none());
    // The same counts again: nothing.
    c.set_mailbox(
        "1001@default",
        Counts {
            new: 2,
            old: 1,
            urgent_new: 1,
            urgent_old: 0,
        },
        t0,
    );
    assert!(c.poll_notify().is_none());
}

#[test]
fn a_481_a_408_or_a_timeout_ends_the_subscription_and_nothing_follows() {
    for outcome in [Some(481), Some(408), None, Some(500)] {
        let t0 = Instant::now();
        let mut c = core();
        c.on_subscribe(
            &subscribe("c1", None, None, ""),
            "1001",
            "1001@default",
            target(),
            t0,
        );
        let n = one(&mut c);
        // A change arrives while the NOTIFY is in flight: it must not be sent after the 481.
        c.set_mailbox(
            "1001@default",
            Counts {
                new: 1,
                ..Counts::default()
            },
            t0,
        );
        assert_eq!(
            c.on_response(n.id, outcome, t0),
            Some(("1001".to_owned(), "1001@default".to_owned())),
            "{outcome:?} ends the subscription"
        );
        assert!(
            c.poll_notify().is_none(),
            "{outcome:?}: nothing after the failure"
        );
        c.set_mailbox(
            "1001@default",
            Counts {
                new: 3,
                ..Counts::default()
            },
            t0,
        );
        c.device_registered("1001", t0);
        c.handle_timeout(t0 + Duration::from_secs(7200));
        assert!(
            c.poll_notify().is_none(),
            "{outcome:?}: nothing after the failure"
        );
        assert_eq!(c.stats().active, 0);
        assert_eq!(c.stats().failed, 1);
        assert_eq!(c.poll_timeout(), None, "nothing left behind");
    }
}

#[test]
fn refresh_extends_and_unsubscribe_terminates() {
    let t0 = Instant::now();
    let mut c = core();
    let r = c.on_subscribe(
        &subscribe("c1", None, Some(600), ""),
        "1001",
        "1001@default",
        target(),
        t0,
    );
    let tag = to_tag(&r);
    let n = one(&mut c);
    c.on_response(n.id, Some(200), t0);
    assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(600)));
    let t1 = t0 + Duration::from_secs(500);
    let r = c.on_subscribe(
        &subscribe("c1", Some(&tag), Some(600), ""),
        "1001",
        "1001@default",
        target(),
        t1,
    );
    assert_eq!(r.status_code.code(), 200);
    let n = one(&mut c);
    assert!(text(&n).contains("Subscription-State: active;expires=600"));
    assert!(text(&n).contains("CSeq: 2 NOTIFY"));
    c.on_response(n.id, Some(200), t1);
    assert_eq!(c.poll_timeout(), Some(t1 + Duration::from_secs(600)));
    // Another device may not refresh (or end) it.
    let r = c.on_subscribe(
        &subscribe("c1", Some(&tag), Some(0), ""),
        "1002",
        "1002@default",
        target(),
        t1,
    );
    assert_eq!(r.status_code.code(), 403);
    assert!(c.poll_notify().is_none());
    assert_eq!(c.stats().active, 1);
    // A refresh of a dialog we do not know: 481.
    let r = c.on_subscribe(
        &subscribe("c1", Some("nope"), Some(600), ""),
        "1001",
        "1001@default",
        target(),
        t1,
    );
    assert_eq!(r.status_code.code(), 481);
    // Unsubscribe: 200, one terminated NOTIFY, then gone.
    let r = c.on_subscribe(
        &subscribe("c1", Some(&tag), Some(0), ""),
        "1001",
        "1001@default",
        target(),
        t1,
    );
    assert_eq!(r.status_code.code(), 200);
    let n = one(&mut c);
    assert!(
        text(&n).contains("Subscription-State: terminated;reason=timeout"),
        "{}",
        text(&n)
    );
    assert_eq!(c.stats().active, 0);
    c.on_response(n.id, Some(200), t1);
    c.set_mailbox(
        "1001@default",
        Counts {
            new: 1,
            ..Counts::default()
        },
        t1,
    );
    assert!(c.poll_notify().is_none());
    assert_eq!(c.poll_timeout(), None);
}

#[test]
fn unrefreshed_subscriptions_expire_with_a_final_notify_and_do_not_pile_up() {
    let t0 = Instant::now();
    let mut c = MwiCore::new(Config {
        realm: "gw.example".into(),
        ..Config::default()
    });
    for i in 0..100 {
        c.on_subscribe(
            &subscribe(&format!("c{i}"), None, Some(120), ""),
            &format!("d{i}"),
            "1001@default",
            target(),
            t0,
        );
    }
    let mut first = Vec::new();
    while let Some(n) = c.poll_notify() {
        first.push(n);
    }
    assert_eq!(first.len(), 100);
    // Half answer; the rest never answer their first NOTIFY until they expire.
    for n in first.iter().take(50) {
        c.on_response(n.id, Some(200), t0);
    }
    let at = c.poll_timeout().expect("a timer");
    assert_eq!(at, t0 + Duration::from_secs(120));
    c.handle_timeout(at);
    assert_eq!(c.stats().expired, 100);
    assert_eq!(c.stats().active, 0);
    let mut finals = Vec::new();
    while let Some(n) = c.poll_notify() {
        assert!(text(&n).contains("Subscription-State: terminated;reason=timeout"));
        finals.push(n);
    }
    assert_eq!(
        finals.len(),
        50,
        "the answered ones get their final NOTIFY now"
    );
    // The others' first NOTIFY is answered late: their final NOTIFY follows.
    for n in first.iter().skip(50) {
        c.on_response(n.id, Some(200), at);
    }
    while let Some(n) = c.poll_notify() {
        finals.push(n);
    }
    assert_eq!(finals.len(), 100);
    // Half of the finals are answered, half never: all are gone after the grace period.
    for n in finals.iter().take(50) {
        c.on_response(n.id, Some(200), at);
    }
    c.handle_timeout(at + FINAL_GRACE);
    assert_eq!(c.poll_timeout(), None, "expired subscriptions piled up");
    assert!(c.subs.is_empty() && c.by_mailbox.is_empty() && c.in_flight.is_empty());
    c.set_mailbox(
        "1001@default",
        Counts {
            new: 1,
            ..Counts::default()
        },
        at,
    );
    assert!(c.poll_notify().is_none());
}

#[test]
fn the_per_device_cap_refuses_with_403_and_counts() {
    let t0 = Instant::now();
    let mut c = core();
    for i in 0..2 {
        let r = c.on_subscribe(
            &subscribe(&format!("c{i}"), None, None, ""),
            "1001",
            "1001@default",
            target(),
            t0,
        );
        assert_eq!(r.status_code.code(), 200);
    }
    let r = c.on_subscribe(
        &subscribe("c2", None, None, ""),
        "1001",
        "1001@default",
        target(),
        t0,
    );
    assert_eq!(r.status_code.code(), 403);
    assert!(hdr(&r, "Warning").is_some_and(|w| w.contains("at most 2")));
    assert_eq!(c.stats().over_cap, 1);
    // Another device is not affected.
    let r = c.on_subscribe(
        &subscribe("c3", None, None, ""),
        "1002",
        "1002@default",
        target(),
        t0,
    );
    assert_eq!(r.status_code.code(), 200);
    // One of 1001's ends (481): a new one fits again.
    let n = c.poll_notify().expect("notify");
    c.on_response(n.id, Some(481), t0);
    let r = c.on_subscribe(
        &subscribe("c4", None, None, ""),
        "1001",
        "1001@default",
        target(),
        t0,
    );
    assert_eq!(r.status_code.code(), 200);
}

#[test]
fn bad_subscribes_get_the_right_answer() {
    let t0 = Instant::now();
    let mut c = core();
    let mut req = subscribe("c1", None, None, "");
    req.headers.retain(|h| !h.to_string().starts_with("Event"));
    req.headers
        .push(rsip::Header::Other("Event".into(), "presence".into()));
    let r = c.on_subscribe(&req, "1001", "1001@default", target(), t0);
    assert_eq!(r.status_code.code(), 489);
    assert_eq!(hdr(&r, "Allow-Events").as_deref(), Some("message-summary"));
    let r = c.on_subscribe(
        &subscribe("c2", None, None, "Accept: application/pidf+xml\r\n"),
        "1001",
        "1001@default",
        target(),
        t0,
    );
    assert_eq!(r.status_code.code(), 406);
    let r = c.on_subscribe(
        &subscribe("c3", None, Some(10), ""),
        "1001",
        "1001@default",
        target(),
        t0,
    );
    assert_eq!(r.status_code.code(), 423);
    assert_eq!(hdr(&r, "Min-Expires").as_deref(), Some("60"));
    let r = c.on_subscribe(
        &subscribe(
            "c4",
            None,
            Some(999_999),
            "Accept: application/simple-message-summary\r\n",
        ),
        "1001",
        "1001@default",
        target(),
        t0,
    );
    assert_eq!(r.status_code.code(), 200);
    assert_eq!(
        hdr(&r, "Expires").as_deref(),
        Some("3600"),
        "capped at max_expires"
    );
    assert_eq!(c.stats().active, 1);
}

#[test]
fn unsolicited_notify_and_re_registration() {
    let t0 = Instant::now();
    let mut c = core();
    c.set_mailbox(
        "1003@default",
        Counts {
            new: 1,
            ..Counts::default()
        },
        t0,
    );
    c.unsolicited(
        "1003@default",
        "sip:1003@127.0.0.1:5071",
        "sip:1003@gw.example",
        target(),
    );
    let n = one(&mut c);
    let t = text(&n);
    assert!(
        t.starts_with("NOTIFY sip:1003@127.0.0.1:5071 SIP/2.0"),
        "{t}"
    );
    assert!(t.contains("To: <sip:1003@gw.example>"), "{t}");
    assert!(t.contains("Subscription-State: active\r\n"), "{t}");
    assert!(t.contains("Messages-Waiting: yes"), "{t}");
    c.on_response(n.id, Some(481), t0);
    assert_eq!(c.stats().unsolicited_failed, 1);
    // A subscribed device that registers again gets the state again.
    c.on_subscribe(
        &subscribe("c1", None, None, ""),
        "1001",
        "1001@default",
        target(),
        t0,
    );
    let n = one(&mut c);
    c.on_response(n.id, Some(200), t0);
    c.device_registered("1001", t0);
    let n = one(&mut c);
    assert!(text(&n).contains("CSeq: 2 NOTIFY"));
    c.device_registered("1002", t0);
    assert!(c.poll_notify().is_none(), "another device's registration");
}

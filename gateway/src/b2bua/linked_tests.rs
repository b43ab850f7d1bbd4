//! Uniqueids and linked ids in virtual time: what the B2BUA tells trunks and ACD nodes, and
//! what its call records carry.

use super::tests::{b_response, peer, request, response, sdp, FakeMedia};
use super::*;

fn b2b() -> B2bua {
    B2bua::new(Config {
        uniqueid_prefix: "gw-a-7-".into(),
        ..Config::default()
    })
}

fn invite(extra: &str) -> Request {
    request(
        &format!(
            "INVITE sip:2001@gw SIP/2.0
Via: SIP/2.0/UDP 10.0.0.9:5070;branch=z9hG4bKacd1
Max-Forwards: 70
From: <sip:1001@gw>;tag=acdtag
To: <sip:2001@gw>
Call-ID: offer@10.0.0.9
CSeq: 1 INVITE
Contact: <sip:acd@10.0.0.9:5070>
{extra}"
        ),
        &sdp("10.0.0.9", 4000, "sendrecv"),
    )
}

fn to_agent() -> Target {
    Target::Device {
        device: "PJSIP/2001".into(),
        contact: "sip:2001@10.0.0.2:5070".into(),
        dest: peer("10.0.0.2:5070"),
        limit: 0,
        forks: Vec::new(),
    }
}

fn header(headers: &rsip::Headers, name: &str) -> Option<String> {
    headers.iter().find_map(|h| match h {
        Header::Other(n, v) if n.eq_ignore_ascii_case(name) => Some(v.clone()),
        _ => None,
    })
}

fn run(b: &mut B2bua, req: Request, target: Target, media: &mut FakeMedia) -> Vec<Action> {
    let key = TransactionKey::client("z9hG4bKacd1", Method::Invite);
    b.on_invite(
        key,
        req,
        peer("10.0.0.9:5070"),
        Routed {
            caller: Caller::default(),
            target,
        },
        media,
        Instant::now(),
    );
    std::iter::from_fn(|| b.poll_action()).collect()
}

#[test]
fn an_offer_answered_names_its_call_and_keeps_the_callers_linked_id() {
    let (mut b, mut media) = (b2b(), FakeMedia::default());
    let offer = "X-CF-Offer: queue=support;linkedid=gw-z-1-42\n";
    let acts = run(&mut b, invite(offer), to_agent(), &mut media);
    let (key, inv) = acts
        .iter()
        .find_map(|a| match a {
            Action::Request { key, request, .. } => Some((key.clone(), request.clone())),
            _ => None,
        })
        .expect("INVITE to the agent");
    assert_eq!(header(&inv.headers, "X-CF-Linkedid"), None, "not to phones");
    let ok = b_response(&inv, 200, "agent", &sdp("10.0.0.2", 6000, "sendrecv"));
    b.on_response(&key, ok, &mut media, Instant::now());
    let acts: Vec<Action> = std::iter::from_fn(|| b.poll_action()).collect();
    let ok = response(&acts, 200).expect("200 to the ACD");
    assert_eq!(
        header(&ok.headers, "X-CF-Uniqueid").as_deref(),
        Some("gw-a-7-1")
    );
    b.hangup(CallId(1), "test", &mut media, Instant::now());
    let record = std::iter::from_fn(|| b.poll_action())
        .find_map(|a| match a {
            Action::CallEnded { record, .. } => Some(record),
            _ => None,
        })
        .expect("call ended");
    assert_eq!(record.uniqueid, "gw-a-7-1");
    assert_eq!(record.linkedid, "gw-z-1-42", "the offer's linkedid");
}

#[test]
fn a_trunk_learns_the_linked_id_and_a_refused_offer_says_so() {
    let (mut b, mut media) = (b2b(), FakeMedia::default());
    let trunk = || Target::Peer {
        uri: "sip:800@10.0.0.9:5070".into(),
        dest: peer("10.0.0.9:5070"),
        credentials: None,
        fallbacks: Vec::new(),
    };
    let sent = |acts: &[Action]| {
        acts.iter()
            .find_map(|a| match a {
                Action::Request { request, .. } => header(&request.headers, "X-CF-Linkedid"),
                _ => None,
            })
            .expect("INVITE with X-CF-Linkedid")
    };
    // A call of its own: its uniqueid; a call that came with a linked id: that one.
    assert_eq!(
        sent(&run(&mut b, invite(""), trunk(), &mut media)),
        "gw-a-7-1"
    );
    let linked = "X-CF-Linkedid: gw-b-3-9\n";
    assert_eq!(
        sent(&run(&mut b, invite(linked), trunk(), &mut media)),
        "gw-b-3-9"
    );
    // Not an id: ignored.
    let bad = "X-CF-Linkedid: a;b\n";
    assert_eq!(
        sent(&run(&mut b, invite(bad), trunk(), &mut media)),
        "gw-a-7-3"
    );

    // The gateway's own refusal of an offer carries X-CF-Refused; of a plain call it does not.
    let offer = "X-CF-Offer: queue=support;linkedid=gw-b-3-9\n";
    let acts = run(&mut b, invite(offer), Target::Reject(480), &mut media);
    let r = response(&acts, 480).expect("480");
    assert_eq!(header(&r.headers, "X-CF-Refused").as_deref(), Some("480"));
    let refused = acts
        .iter()
        .find_map(|a| match a {
            Action::CallRefused { record, .. } => Some(record.clone()),
            _ => None,
        })
        .expect("a CDR for the refusal");
    assert_eq!(refused.linkedid, "gw-b-3-9");
    let acts = run(&mut b, invite(""), Target::Reject(480), &mut media);
    let r = response(&acts, 480).expect("480");
    assert_eq!(header(&r.headers, "X-CF-Refused"), None);
}

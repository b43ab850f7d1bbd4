//! RFC 3261 §17 transaction layer, in virtual time: every test takes one `Instant` as its
//! origin and advances it by hand.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rsip::prelude::*;
use rsip::{Header, Method, Request, Response, SipMessage};
use sip_core::transaction::{
    Config, Error, Event, Kind, State, TransactionKey, TransactionLayer, Transmit, Transport,
};

type Layer = TransactionLayer<SocketAddr>;

const UDP: Transport = Transport::Unreliable;
const TCP: Transport = Transport::Reliable;

fn uac() -> SocketAddr {
    "192.0.2.1:5060".parse().expect("address")
}

fn uas() -> SocketAddr {
    "192.0.2.2:5060".parse().expect("address")
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A request as a phone would send it; `via_params` is everything after sent-by
/// (e.g. `;branch=z9hG4bK1`, or empty for an RFC 2543 peer).
fn request_with(method: &str, via_params: &str, cseq: u32, call_id: &str, to: &str) -> Request {
    let text = format!(
        "{method} sip:bob@192.0.2.2 SIP/2.0\r\n\
         Via: SIP/2.0/UDP 192.0.2.1:5060{via_params}\r\n\
         Max-Forwards: 70\r\n\
         Route: <sip:proxy.example.com;lr>\r\n\
         From: Alice <sip:alice@example.com>;tag=fa1\r\n\
         To: {to}\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: {cseq} {method}\r\n\
         Content-Length: 0\r\n\r\n"
    );
    Request::try_from(text.as_str()).expect("test request parses")
}

fn request(method: &str, branch: &str) -> Request {
    request_with(
        method,
        &format!(";branch={branch}"),
        1,
        &format!("call-{branch}@192.0.2.1"),
        "Bob <sip:bob@example.com>",
    )
}

/// A response to `req` as a UAS core builds it (§8.2.6): Vias, From, To (+tag), Call-ID, CSeq.
fn response_to(req: &Request, code: u16, to_tag: Option<&str>) -> Response {
    let mut headers = rsip::Headers::default();
    for h in req.headers.iter() {
        match h {
            Header::Via(_) | Header::From(_) | Header::CallId(_) | Header::CSeq(_) => {
                headers.push(h.clone())
            }
            Header::To(to) => {
                let v = match to_tag {
                    Some(t) => format!("{};tag={t}", to.value()),
                    None => to.value().to_string(),
                };
                headers.push(Header::To(rsip::headers::To::new(v)));
            }
            _ => {}
        }
    }
    headers.push(Header::ContentLength(Default::default()));
    Response {
        status_code: code.into(),
        version: rsip::Version::V2,
        headers,
        body: vec![],
    }
}

fn transmits(l: &mut Layer) -> Vec<Transmit> {
    std::iter::from_fn(|| l.poll_transmit()).collect()
}

fn events(l: &mut Layer) -> Vec<Event> {
    std::iter::from_fn(|| l.poll_event()).collect()
}

/// Things that happened, with their offset from the test's origin.
type Timed<T> = Vec<(Duration, T)>;

/// Fires timers until `until` (inclusive); returns the transmits and events with the offset
/// from `t0` at which they happened.
fn run(l: &mut Layer, t0: Instant, until: Instant) -> (Timed<Transmit>, Timed<Event>) {
    let (mut tx, mut ev) = (vec![], vec![]);
    while let Some(t) = l.poll_timeout() {
        if t > until {
            break;
        }
        l.handle_timeout(t);
        tx.extend(transmits(l).into_iter().map(|m| (t - t0, m)));
        ev.extend(events(l).into_iter().map(|e| (t - t0, e)));
    }
    (tx, ev)
}

fn offsets<T>(v: &[(Duration, T)]) -> Vec<u64> {
    v.iter().map(|(d, _)| d.as_millis() as u64).collect()
}

fn status(m: &SipMessage) -> u16 {
    match m {
        SipMessage::Response(r) => r.status_code.code(),
        SipMessage::Request(_) => panic!("expected a response, got {m}"),
    }
}

fn as_request(m: &SipMessage) -> &Request {
    match m {
        SipMessage::Request(r) => r,
        SipMessage::Response(_) => panic!("expected a request, got {m}"),
    }
}

/// Delivers a layer's transmits to another layer through the wire format.
fn wire(from: &mut Layer, to: &mut Layer, source: SocketAddr, now: Instant) -> Vec<Transmit> {
    let sent = transmits(from);
    for t in &sent {
        let msg = SipMessage::try_from(t.message.to_string()).expect("own output parses");
        to.on_message(msg, source, t.transport, now)
            .expect("layer accepts");
    }
    sent
}

fn the_request_key(evs: &[Event]) -> TransactionKey {
    match evs {
        [Event::Request { key, .. }] => key.clone(),
        other => panic!("expected one Request event, got {other:?}"),
    }
}

fn header_text(m: &SipMessage, name: &str) -> Vec<String> {
    m.to_string()
        .lines()
        .filter(|l| {
            l.split_once(':')
                .is_some_and(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        })
        .map(|l| l.split_once(':').expect("header line").1.trim().to_string())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Non-INVITE client: timers E, F, K
// ---------------------------------------------------------------------------------------------

#[test]
fn timer_e_doubles_up_to_t2_and_timer_f_times_out_at_64_t1() {
    let t0 = Instant::now();
    let mut l = Layer::default();
    let key = l
        .send_request(request("OPTIONS", "z9hG4bKe1"), UDP, uas(), t0)
        .unwrap();
    assert_eq!(l.kind(&key), Some(Kind::NonInviteClient));
    assert_eq!(l.state(&key), Some(State::Trying));
    let first = transmits(&mut l);
    assert_eq!(first.len(), 1);
    assert!(!first[0].retransmission);
    assert_eq!(first[0].dest, uas());
    assert_eq!(first[0].key.as_ref(), Some(&key));
    assert_eq!(l.poll_timeout(), Some(t0 + ms(500)));

    // Nothing fires a millisecond early.
    l.handle_timeout(t0 + ms(499));
    assert!(transmits(&mut l).is_empty());

    let (tx, ev) = run(&mut l, t0, t0 + ms(31_999));
    // Intervals 500 ms, 1 s, 2 s, 4 s, then capped at T2 = 4 s.
    assert_eq!(
        offsets(&tx),
        [500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500]
    );
    assert!(tx
        .iter()
        .all(|(_, t)| t.retransmission && t.message == first[0].message && t.dest == uas()));
    assert!(ev.is_empty(), "no event before Timer F: {ev:?}");
    assert_eq!(l.state(&key), Some(State::Trying));

    let (tx, ev) = run(&mut l, t0, t0 + ms(40_000));
    assert!(tx.is_empty());
    assert_eq!(
        ev,
        [
            (ms(32_000), Event::Timeout { key: key.clone() }),
            (ms(32_000), Event::Terminated { key: key.clone() })
        ]
    );
    assert!(l.is_empty());
    assert_eq!(l.poll_timeout(), None);
}

#[test]
fn custom_t1_scales_timer_e_and_timer_f() {
    let t0 = Instant::now();
    let mut l = Layer::new(Config {
        t1: ms(100),
        ..Config::default()
    });
    let key = l
        .send_request(request("REGISTER", "z9hG4bKcustom"), UDP, uas(), t0)
        .unwrap();
    transmits(&mut l);
    let (tx, ev) = run(&mut l, t0, t0 + ms(6_399));
    assert_eq!(offsets(&tx), [100, 300, 700, 1500, 3100, 6300]);
    assert!(ev.is_empty());
    let (_, ev) = run(&mut l, t0, t0 + ms(6_400));
    assert_eq!(
        ev,
        [
            (ms(6_400), Event::Timeout { key: key.clone() }),
            (ms(6_400), Event::Terminated { key })
        ]
    );
}

#[test]
fn custom_t2_caps_timer_e() {
    let t0 = Instant::now();
    let mut l = Layer::new(Config {
        t1: ms(100),
        t2: ms(250),
        ..Config::default()
    });
    l.send_request(request("OPTIONS", "z9hG4bKt2"), UDP, uas(), t0)
        .unwrap();
    transmits(&mut l);
    let (tx, _) = run(&mut l, t0, t0 + ms(1_200));
    assert_eq!(offsets(&tx), [100, 300, 550, 800, 1050]);
}

/// Issue 16: with T1 configured below the RFC's 500 ms (the tests' gateways run 100 ms), a
/// completed non-INVITE server transaction still absorbs the retransmissions of a client on
/// the default T1: SIPp's fifth copy of a REGISTER, 7.5 s after the first, gets the final
/// response again instead of becoming a new request (re-authenticated: a nonce-count
/// "replay"). Timer J is 64·500 ms.
#[test]
fn custom_t1_does_not_shorten_timer_j_below_a_default_clients_retransmissions() {
    let t0 = Instant::now();
    let mut l = Layer::new(Config {
        t1: ms(100),
        ..Config::default()
    });
    let req = request("REGISTER", "z9hG4bKlatecopy");
    l.on_message(req.clone().into(), uac(), UDP, t0).unwrap();
    let key = the_request_key(&events(&mut l));
    let ok = response_to(&req, 200, Some("s"));
    let t_final = t0 + ms(200);
    l.send_response(&key, ok.clone(), t_final).unwrap();
    assert_eq!(status(&transmits(&mut l)[0].message), 200);
    // The client's copies (T1 = 500 ms, T2 = 4 s): 0.5, 1.5, 3.5, 7.5, 11.5 … 31.5 s.
    for at in [500, 1_500, 3_500, 7_500, 11_500, 31_500] {
        let (_, ev) = run(&mut l, t0, t0 + ms(at));
        assert!(
            ev.is_empty(),
            "the transaction ended before {at} ms: {ev:?}"
        );
        l.on_message(req.clone().into(), uac(), UDP, t0 + ms(at))
            .unwrap();
        assert!(
            events(&mut l).is_empty(),
            "the copy at {at} ms was a new request"
        );
        let again = transmits(&mut l);
        assert_eq!(again.len(), 1, "no final response again at {at} ms");
        assert_eq!(again[0].message, SipMessage::Response(ok.clone()));
        assert!(again[0].retransmission);
    }
    // Timer J = 64·500 ms after the final response.
    assert_eq!(
        Config {
            t1: ms(100),
            ..Config::default()
        }
        .timer_j(),
        ms(32_000)
    );
    let (_, ev) = run(&mut l, t0, t_final + ms(31_999));
    assert!(ev.is_empty());
    let (_, ev) = run(&mut l, t0, t_final + ms(32_000));
    assert_eq!(ev, [(ms(32_200), Event::Terminated { key })]);
    // A T1 above the RFC's still scales it.
    assert_eq!(
        Config {
            t1: ms(1_000),
            ..Config::default()
        }
        .timer_j(),
        ms(64_000)
    );
}

#[test]
fn non_invite_client_proceeding_uses_t2_then_completes_with_timer_k() {
    let t0 = Instant::now();
    let mut l = Layer::default();
    let req = request("OPTIONS", "z9hG4bKprc");
    let key = l.send_request(req.clone(), UDP, uas(), t0).unwrap();
    transmits(&mut l);

    let trying = response_to(&req, 100, None);
    l.on_message(trying.clone().into(), uas(), UDP, t0 + ms(200))
        .unwrap();
    assert_eq!(
        events(&mut l),
        [Event::Response {
            key: key.clone(),
            response: trying
        }]
    );
    assert_eq!(l.state(&key), Some(State::Proceeding));

    // E keeps its first deadline (500 ms), then retransmits every T2.
    let (tx, ev) = run(&mut l, t0, t0 + ms(9_000));
    assert_eq!(offsets(&tx), [500, 4500, 8500]);
    assert!(ev.is_empty());

    let ok = response_to(&req, 200, Some("ttt"));
    l.on_message(ok.clone().into(), uas(), UDP, t0 + ms(9_000))
        .unwrap();
    assert_eq!(
        events(&mut l),
        [Event::Response {
            key: key.clone(),
            response: ok.clone()
        }]
    );
    assert_eq!(l.state(&key), Some(State::Completed));
    // Completed absorbs retransmitted responses, sends nothing, reports nothing.
    l.on_message(ok.into(), uas(), UDP, t0 + ms(9_100)).unwrap();
    assert!(events(&mut l).is_empty());
    // Timer K = T4 after the final response; Timer F no longer runs.
    assert_eq!(l.poll_timeout(), Some(t0 + ms(14_000)));
    let (tx, ev) = run(&mut l, t0, t0 + ms(60_000));
    assert!(tx.is_empty());
    assert_eq!(ev, [(ms(14_000), Event::Terminated { key })]);
    assert!(l.is_empty());
}

// ---------------------------------------------------------------------------------------------
// INVITE client: timers A, B, D; ACK for non-2xx
// ---------------------------------------------------------------------------------------------

#[test]
fn timer_a_doubles_without_cap_and_timer_b_times_out_at_64_t1() {
    let t0 = Instant::now();
    let mut l = Layer::default();
    let key = l
        .send_request(request("INVITE", "z9hG4bKb"), UDP, uas(), t0)
        .unwrap();
    assert_eq!(l.state(&key), Some(State::Calling));
    assert_eq!(transmits(&mut l).len(), 1);
    let (tx, ev) = run(&mut l, t0, t0 + ms(31_999));
    assert_eq!(offsets(&tx), [500, 1500, 3500, 7500, 15500, 31500]);
    assert!(tx.iter().all(|(_, t)| t.retransmission));
    assert!(ev.is_empty());
    let (_, ev) = run(&mut l, t0, t0 + ms(100_000));
    assert_eq!(
        ev,
        [
            (ms(32_000), Event::Timeout { key: key.clone() }),
            (ms(32_000), Event::Terminated { key })
        ]
    );
    assert!(l.is_empty());
}

#[test]
fn timer_a_stops_on_provisional_and_timer_b_no_longer_applies() {
    let t0 = Instant::now();
    let mut l = Layer::default();
    let req = request("INVITE", "z9hG4bKa1xx");
    let key = l.send_request(req.clone(), UDP, uas(), t0).unwrap();
    transmits(&mut l);
    let (tx, _) = run(&mut l, t0, t0 + ms(4_000));
    assert_eq!(offsets(&tx), [500, 1500, 3500]);

    let ringing = response_to(&req, 180, Some("uas1"));
    l.on_message(ringing.clone().into(), uas(), UDP, t0 + ms(4_000))
        .unwrap();
    assert_eq!(
        events(&mut l),
        [Event::Response {
            key: key.clone(),
            response: ringing
        }]
    );
    assert_eq!(l.state(&key), Some(State::Proceeding));
    // No retransmission and no Timer B: an INVITE may ring for as long as it likes.
    assert_eq!(l.poll_timeout(), None);
    let (tx, ev) = run(&mut l, t0, t0 + ms(600_000));
    assert!(tx.is_empty() && ev.is_empty());
    assert_eq!(l.state(&key), Some(State::Proceeding));
}

#[test]
fn abandoned_invite_is_never_retransmitted_but_a_late_1xx_can_still_be_cancelled() {
    let t0 = Instant::now();
    let mut l = Layer::default();
    let req = request("INVITE", "z9hG4bKabandon");
    let key = l.send_request(req.clone(), UDP, uas(), t0).unwrap();
    assert_eq!(transmits(&mut l).len(), 1);
    let (tx, _) = run(&mut l, t0, t0 + ms(600));
    assert_eq!(offsets(&tx), [500], "Timer A before the TU gives up");
    assert!(l.abandon(&key));
    // No retransmission ever again; Timer B still ends it if nothing arrives.
    let (tx, _) = run(&mut l, t0, t0 + ms(20_000));
    assert!(tx.is_empty(), "retransmitted after abandon: {tx:?}");
    assert_eq!(l.state(&key), Some(State::Calling));
    assert!(matches!(
        l.build_cancel(&key),
        Ok(c) if c.method == Method::Cancel
    ));
    // A late 180: reported, so the TU may now CANCEL (§9.1).
    let ringing = response_to(&req, 180, Some("late"));
    l.on_message(ringing.clone().into(), uas(), UDP, t0 + ms(20_000))
        .unwrap();
    assert_eq!(
        events(&mut l),
        [Event::Response {
            key: key.clone(),
            response: ringing
        }]
    );
    assert_eq!(l.state(&key), Some(State::Proceeding));
    // Only a Calling INVITE client transaction can be abandoned.
    assert!(!l.abandon(&key));
    let other = l
        .send_request(request("OPTIONS", "z9hG4bKopt"), UDP, uas(), t0)
        .unwrap();
    assert!(!l.abandon(&other));
}

#[test]
fn abandoned_invite_without_answer_times_out_at_timer_b() {
    let t0 = Instant::now();
    let mut l = Layer::default();
    let key = l
        .send_request(request("INVITE", "z9hG4bKab2"), UDP, uas(), t0)
        .unwrap();
    transmits(&mut l);
    assert!(l.abandon(&key));
    let (tx, ev) = run(&mut l, t0, t0 + ms(100_000));
    assert!(tx.is_empty());
    assert_eq!(
        ev,
        [
            (ms(32_000), Event::Timeout { key: key.clone() }),
            (ms(32_000), Event::Terminated { key })
        ]
    );
}

#[test]
fn client_invite_486_generates_ack_and_absorbs_retransmissions_until_timer_d() {
    let t0 = Instant::now();
    let mut l = Layer::default();
    let req = request("INVITE", "z9hG4bKbusy");
    let key = l.send_request(req.clone(), UDP, uas(), t0).unwrap();
    let invite = transmits(&mut l).remove(0);

    let busy = response_to(&req, 486, Some("busytag"));
    let t = t0 + ms(1_000);
    l.on_message(busy.clone().into(), uas(), UDP, t).unwrap();
    assert_eq!(
        events(&mut l),
        [Event::Response {
            key: key.clone(),
            response: busy.clone()
        }]
    );
    assert_eq!(l.state(&key), Some(State::Completed));

    let acks = transmits(&mut l);
    assert_eq!(acks.len(), 1);
    let ack_t = &acks[0];
    assert_eq!(ack_t.dest, uas());
    assert!(!ack_t.retransmission);
    let ack = as_request(&ack_t.message);
    assert_eq!(ack.method, Method::Ack);
    assert_eq!(ack.uri, req.uri);
    // Exactly one Via, equal to the INVITE's top Via (same branch).
    assert_eq!(
        header_text(&ack_t.message, "Via"),
        ["SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKbusy"]
    );
    assert_eq!(
        ack.via_header()
            .unwrap()
            .typed()
            .unwrap()
            .branch()
            .unwrap()
            .to_string(),
        "z9hG4bKbusy"
    );
    // To of the response (with its tag), From / Call-ID / Route of the INVITE, CSeq n ACK.
    assert_eq!(
        ack.to_header().unwrap().tag().unwrap().unwrap().to_string(),
        "busytag"
    );
    assert_eq!(
        header_text(&ack_t.message, "From"),
        header_text(&invite.message, "From")
    );
    assert_eq!(
        header_text(&ack_t.message, "Call-ID"),
        header_text(&invite.message, "Call-ID")
    );
    assert_eq!(
        header_text(&ack_t.message, "Route"),
        header_text(&invite.message, "Route")
    );
    assert_eq!(header_text(&ack_t.message, "CSeq"), ["1 ACK"]);
    // It survives the wire format.
    assert_eq!(
        SipMessage::try_from(ack_t.message.to_string()).unwrap(),
        ack_t.message
    );

    // The retransmitted 486 is absorbed, and answered with the same ACK.
    for i in 1..=3 {
        l.on_message(busy.clone().into(), uas(), UDP, t + ms(500 * i))
            .unwrap();
        assert!(events(&mut l).is_empty());
        let again = transmits(&mut l);
        assert_eq!(again.len(), 1);
        assert!(again[0].retransmission);
        assert_eq!(again[0].message, ack_t.message);
    }

    // Timer D: 32 s after the 486.
    let (tx, ev) = run(&mut l, t0, t + ms(31_999));
    assert!(tx.is_empty() && ev.is_empty());
    assert_eq!(l.state(&key), Some(State::Completed));
    let (_, ev) = run(&mut l, t0, t + ms(32_000));
    assert_eq!(ev, [(ms(33_000), Event::Terminated { key })]);
    assert!(l.is_empty());
}

#[test]
fn client_invite_2xx_accepted_passes_retransmissions_until_timer_m() {
    let t0 = Instant::now();
    let mut l = Layer::default();
    let req = request("INVITE", "z9hG4bKok");
    let key = l.send_request(req.clone(), UDP, uas(), t0).unwrap();
    transmits(&mut l);
    let ok = response_to(&req, 200, Some("oktag"));
    l.on_message(ok.clone().into(), uas(), UDP, t0 + ms(100))
        .unwrap();
    assert_eq!(l.state(&key), Some(State::Accepted));
    // No ACK from the transaction: the ACK for 2xx is the TU's.
    assert!(transmits(&mut l).is_empty());
    let expect = Event::Response {
        key: key.clone(),
        response: ok.clone(),
    };
    assert_eq!(events(&mut l), std::slice::from_ref(&expect));
    // A retransmitted 2xx is passed up again (the TU re-sends its ACK); no INVITE retransmit.
    l.on_message(ok.clone().into(), uas(), UDP, t0 + ms(600))
        .unwrap();
    assert_eq!(events(&mut l), [expect]);
    let (tx, ev) = run(&mut l, t0, t0 + ms(100_000));
    assert!(tx.is_empty());
    assert_eq!(ev, [(ms(32_100), Event::Terminated { key })]);
    // After that, a 2xx is a stray for the core (§18.1.2).
    l.on_message(ok.clone().into(), uas(), UDP, t0 + ms(40_000))
        .unwrap();
    assert_eq!(
        events(&mut l),
        [Event::StrayResponse {
            response: ok,
            source: uas(),
            transport: UDP
        }]
    );
}

#[test]
fn rfc3261_mode_ends_client_and_server_invite_on_2xx() {
    let t0 = Instant::now();
    let cfg = Config {
        accepted_state: false,
        ..Config::default()
    };
    let mut a = Layer::new(cfg.clone());
    let mut b = Layer::new(cfg);
    let req = request("INVITE", "z9hG4bK3261");
    let ck = a.send_request(req.clone(), UDP, uas(), t0).unwrap();
    wire(&mut a, &mut b, uac(), t0);
    let sk = the_request_key(&events(&mut b));
    b.send_response(&sk, response_to(&req, 200, Some("x")), t0)
        .unwrap();
    assert_eq!(events(&mut b), [Event::Terminated { key: sk }]);
    wire(&mut b, &mut a, uas(), t0);
    let ev = events(&mut a);
    assert!(
        matches!(&ev[..], [Event::Response { key, response }, Event::Terminated { key: k2 }]
        if *key == ck && *k2 == ck && response.status_code.code() == 200)
    );
    assert!(a.is_empty() && b.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Reliable transports
// ---------------------------------------------------------------------------------------------

#[test]
fn reliable_client_transactions_never_retransmit_and_end_at_once() {
    let t0 = Instant::now();
    let mut l = Layer::default();

    // Non-INVITE: only Timer F is armed.
    let opt = request("OPTIONS", "z9hG4bKtcp1");
    let k1 = l.send_request(opt.clone(), TCP, uas(), t0).unwrap();
    assert_eq!(transmits(&mut l)[0].transport, TCP);
    assert_eq!(l.poll_timeout(), Some(t0 + ms(32_000)));
    // A final response ends it at once (Timer K = 0).
    l.on_message(
        response_to(&opt, 200, Some("t")).into(),
        uas(),
        TCP,
        t0 + ms(10),
    )
    .unwrap();
    let ev = events(&mut l);
    assert!(matches!(&ev[..], [Event::Response { .. }, Event::Terminated { key }] if *key == k1));

    // INVITE: only Timer B; a 486 is ACKed and ends it at once (Timer D = 0).
    let inv = request("INVITE", "z9hG4bKtcp2");
    let k2 = l.send_request(inv.clone(), TCP, uas(), t0).unwrap();
    transmits(&mut l);
    assert_eq!(l.poll_timeout(), Some(t0 + ms(32_000)));
    l.on_message(
        response_to(&inv, 486, Some("t")).into(),
        uas(),
        TCP,
        t0 + ms(10),
    )
    .unwrap();
    let tx = transmits(&mut l);
    assert_eq!(tx.len(), 1);
    assert_eq!(as_request(&tx[0].message).method, Method::Ack);
    let ev = events(&mut l);
    assert!(matches!(&ev[..], [Event::Response { .. }, Event::Terminated { key }] if *key == k2));

    // Timeouts still apply, without any retransmission.
    let k3 = l
        .send_request(request("INVITE", "z9hG4bKtcp3"), TCP, uas(), t0)
        .unwrap();
    transmits(&mut l);
    let (tx, ev) = run(&mut l, t0, t0 + ms(100_000));
    assert!(tx.is_empty());
    assert_eq!(
        ev,
        [
            (ms(32_000), Event::Timeout { key: k3.clone() }),
            (ms(32_000), Event::Terminated { key: k3 })
        ]
    );
    assert!(l.is_empty());
}

#[test]
fn reliable_server_transactions_never_retransmit_and_end_at_once() {
    let t0 = Instant::now();
    let mut l = Layer::default();

    // Non-INVITE: Timer J = 0.
    let opt = request("OPTIONS", "z9hG4bKstcp1");
    l.on_message(opt.clone().into(), uac(), TCP, t0).unwrap();
    let k = the_request_key(&events(&mut l));
    l.send_response(&k, response_to(&opt, 200, Some("s")), t0)
        .unwrap();
    assert_eq!(transmits(&mut l).len(), 1);
    assert_eq!(events(&mut l), [Event::Terminated { key: k }]);

    // INVITE: no Timer G, Timer H armed; the ACK ends it at once (Timer I = 0).
    let inv = request("INVITE", "z9hG4bKstcp2");
    l.on_message(inv.clone().into(), uac(), TCP, t0).unwrap();
    let k = the_request_key(&events(&mut l));
    l.send_response(&k, response_to(&inv, 486, Some("s")), t0)
        .unwrap();
    assert_eq!(transmits(&mut l).len(), 1);
    assert_eq!(l.poll_timeout(), Some(t0 + ms(32_000)));
    let ack = request_with(
        "ACK",
        ";branch=z9hG4bKstcp2",
        1,
        "call-z9hG4bKstcp2@192.0.2.1",
        "Bob <sip:bob@example.com>;tag=s",
    );
    l.on_message(ack.into(), uac(), TCP, t0 + ms(50)).unwrap();
    assert_eq!(events(&mut l), [Event::Terminated { key: k }]);
    assert!(transmits(&mut l).is_empty());
    assert!(l.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Server transactions
// ---------------------------------------------------------------------------------------------

#[test]
fn non_invite_server_resends_last_response_on_retransmission_until_timer_j() {
    let t0 = Instant::now();
    let mut l = Layer::default();
    let req = request("OPTIONS", "z9hG4bKsrv");
    l.on_message(req.clone().into(), uac(), UDP, t0).unwrap();
    let evs = events(&mut l);
    let key = the_request_key(&evs);
    assert!(
        matches!(&evs[0], Event::Request { request, source, transport, .. }
        if *request == req && *source == uac() && *transport == UDP)
    );
    assert!(key.is_server() && key.method() == Method::Options);
    assert_eq!(l.state(&key), Some(State::Trying));

    // Trying: a retransmission is absorbed silently.
    l.on_message(req.clone().into(), uac(), UDP, t0 + ms(500))
        .unwrap();
    assert!(events(&mut l).is_empty() && transmits(&mut l).is_empty());

    // Proceeding: it re-sends the provisional.
    let trying = response_to(&req, 100, None);
    l.send_response(&key, trying.clone(), t0 + ms(600)).unwrap();
    assert_eq!(l.state(&key), Some(State::Proceeding));
    let sent = transmits(&mut l);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].dest, uac());
    l.on_message(req.clone().into(), uac(), UDP, t0 + ms(1_500))
        .unwrap();
    let again = transmits(&mut l);
    assert_eq!(again.len(), 1);
    assert!(again[0].retransmission);
    assert_eq!(status(&again[0].message), 100);

    // Completed: it re-sends the final response, and refuses another one.
    let ok = response_to(&req, 200, Some("s"));
    let t_final = t0 + ms(2_000);
    l.send_response(&key, ok.clone(), t_final).unwrap();
    assert_eq!(l.state(&key), Some(State::Completed));
    assert_eq!(status(&transmits(&mut l)[0].message), 200);
    for i in 1..=3 {
        l.on_message(req.clone().into(), uac(), UDP, t_final + ms(i * 1000))
            .unwrap();
        let again = transmits(&mut l);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].message, SipMessage::Response(ok.clone()));
        assert!(again[0].retransmission);
        assert!(events(&mut l).is_empty());
    }
    assert_eq!(
        l.send_response(&key, response_to(&req, 500, Some("s")), t_final),
        Err(Error::InvalidState {
            state: State::Completed,
            status: 500
        })
    );
    assert!(transmits(&mut l).is_empty());

    // Timer J = 64·T1 after the final response; no retransmission of its own.
    let (tx, ev) = run(&mut l, t0, t_final + ms(31_999));
    assert!(tx.is_empty() && ev.is_empty());
    let (_, ev) = run(&mut l, t0, t_final + ms(32_000));
    assert_eq!(ev, [(ms(34_000), Event::Terminated { key: key.clone() })]);

    // Only now would the same request be a new transaction.
    l.on_message(req.into(), uac(), UDP, t0 + ms(40_000))
        .unwrap();
    assert_eq!(the_request_key(&events(&mut l)), key);
}

#[test]
fn non_invite_server_never_answered_is_abandoned_after_the_bound_and_counted() {
    let t0 = Instant::now();
    let mut l = Layer::default();
    // 2·64·max(T1, 500 ms), checked every 8 s.
    assert_eq!(l.config().non_invite_abandon(), ms(64_000));
    let opt = request("OPTIONS", "z9hG4bKlost1");
    l.on_message(opt.clone().into(), uac(), UDP, t0).unwrap();
    let k1 = the_request_key(&events(&mut l));
    // A second one, answered only with a provisional (Proceeding), arrives 30 s later.
    let msg = request("MESSAGE", "z9hG4bKlost2");
    l.on_message(msg.clone().into(), uac(), UDP, t0 + ms(30_000))
        .unwrap();
    let k2 = the_request_key(&events(&mut l));
    l.send_response(&k2, response_to(&msg, 100, None), t0 + ms(30_000))
        .unwrap();
    assert_eq!(transmits(&mut l).len(), 1);

    // Before the bound: the client may still be retransmitting; nothing happens.
    let (tx, ev) = run(&mut l, t0, t0 + ms(63_999));
    assert!(tx.is_empty() && ev.is_empty());
    assert_eq!(l.state(&k1), Some(State::Trying));
    assert_eq!(l.abandoned(), 0);

    // At the bound: gone, nothing sent (the client gave up at its Timer F), counted.
    let (tx, ev) = run(&mut l, t0, t0 + ms(95_999));
    assert!(tx.is_empty());
    assert_eq!(ev, [(ms(64_000), Event::Terminated { key: k1.clone() })]);
    assert_eq!(l.state(&k1), None);
    assert_eq!(l.state(&k2), Some(State::Proceeding));
    assert_eq!(l.abandoned(), 1);
    assert_eq!(
        l.send_response(&k1, response_to(&opt, 200, Some("s")), t0 + ms(65_000)),
        Err(Error::UnknownTransaction(k1.clone()))
    );

    // The Proceeding one at the first sweep past its own bound (30 s + 64 s → 96 s).
    let (tx, ev) = run(&mut l, t0, t0 + ms(200_000));
    assert!(tx.is_empty());
    assert_eq!(ev, [(ms(96_000), Event::Terminated { key: k2 })]);
    assert_eq!(l.abandoned(), 2);
    assert!(l.is_empty());
    assert_eq!(l.poll_timeout(), None);
}

#[test]
fn non_invite_server_answered_just_before_the_bound_behaves_as_before() {
    let t0 = Instant::now();
    let mut l = Layer::default();
    let req = request("OPTIONS", "z9hG4bKlate");
    l.on_message(req.clone().into(), uac(), UDP, t0).unwrap();
    let key = the_request_key(&events(&mut l));
    let (tx, ev) = run(&mut l, t0, t0 + ms(63_999));
    assert!(tx.is_empty() && ev.is_empty());

    let ok = response_to(&req, 200, Some("s"));
    let t_final = t0 + ms(63_999);
    l.send_response(&key, ok.clone(), t_final).unwrap();
    assert_eq!(status(&transmits(&mut l)[0].message), 200);
    assert_eq!(l.state(&key), Some(State::Completed));

    // The sweep at 64 s finds nothing; Timer J (32 s) runs from the final response, and the
    // final response answers retransmissions until then.
    let (tx, ev) = run(&mut l, t0, t_final + ms(31_000));
    assert!(tx.is_empty() && ev.is_empty());
    l.on_message(req.clone().into(), uac(), UDP, t_final + ms(31_000))
        .unwrap();
    let again = transmits(&mut l);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].message, SipMessage::Response(ok));
    let (_, ev) = run(&mut l, t0, t_final + ms(40_000));
    assert_eq!(ev, [(ms(95_999), Event::Terminated { key })]);
    assert_eq!(l.abandoned(), 0);
    assert!(l.is_empty());
}

#[test]
fn invite_server_in_proceeding_is_not_abandoned_however_long_it_rings() {
    // The gateway has no ring bound of its own (a call rings as long as the caller waits),
    // so the layer never ends an INVITE server transaction the TU has not answered, even
    // while the sweep runs for a lost non-INVITE beside it.
    let t0 = Instant::now();
    let mut l = Layer::default();
    let inv = request("INVITE", "z9hG4bKring");
    l.on_message(inv.clone().into(), uac(), UDP, t0).unwrap();
    let ki = the_request_key(&events(&mut l));
    let opt = request("OPTIONS", "z9hG4bKlost3");
    l.on_message(opt.into(), uac(), UDP, t0).unwrap();
    let ko = the_request_key(&events(&mut l));

    let (tx, ev) = run(&mut l, t0, t0 + ms(600_000));
    assert_eq!(offsets(&tx), [200]);
    assert_eq!(status(&tx[0].1.message), 100);
    assert_eq!(ev, [(ms(64_000), Event::Terminated { key: ko })]);
    assert_eq!(l.state(&ki), Some(State::Proceeding));
    assert_eq!(l.abandoned(), 1);

    // Ten minutes on, the callee answers: the 2xx goes out as ever.
    l.send_response(&ki, response_to(&inv, 200, Some("c")), t0 + ms(600_000))
        .unwrap();
    assert_eq!(status(&transmits(&mut l)[0].message), 200);
    assert_eq!(l.state(&ki), Some(State::Accepted));
}

#[test]
fn invite_server_sends_100_after_200ms_and_resends_last_provisional() {
    let t0 = Instant::now();
    let mut l = Layer::default();
    let req = request("INVITE", "z9hG4bKinv100");
    l.on_message(req.clone().into(), uac(), UDP, t0).unwrap();
    let key = the_request_key(&events(&mut l));
    assert_eq!(l.kind(&key), Some(Kind::InviteServer));
    assert_eq!(l.state(&key), Some(State::Proceeding));
    assert_eq!(l.poll_timeout(), Some(t0 + ms(200)));

    // Nothing sent yet: a retransmission has nothing to repeat.
    l.on_message(req.clone().into(), uac(), UDP, t0 + ms(100))
        .unwrap();
    assert!(transmits(&mut l).is_empty() && events(&mut l).is_empty());

    l.handle_timeout(t0 + ms(200));
    let sent = transmits(&mut l);
    assert_eq!(sent.len(), 1);
    let trying = &sent[0].message;
    assert_eq!(status(trying), 100);
    assert_eq!(
        header_text(trying, "Via"),
        header_text(&req.clone().into(), "Via")
    );
    assert_eq!(header_text(trying, "CSeq"), ["1 INVITE"]);
    assert_eq!(
        header_text(trying, "Call-ID"),
        ["call-z9hG4bKinv100@192.0.2.1"]
    );
    assert_eq!(header_text(trying, "To"), ["Bob <sip:bob@example.com>"]);
    assert_eq!(SipMessage::try_from(trying.to_string()).unwrap(), *trying);

    l.on_message(req.clone().into(), uac(), UDP, t0 + ms(500))
        .unwrap();
    assert_eq!(status(&transmits(&mut l)[0].message), 100);

    l.send_response(&key, response_to(&req, 180, Some("r")), t0 + ms(600))
        .unwrap();
    transmits(&mut l);
    l.on_message(req.clone().into(), uac(), UDP, t0 + ms(1_500))
        .unwrap();
    let again = transmits(&mut l);
    assert_eq!(again.len(), 1);
    assert_eq!(status(&again[0].message), 180);
    assert!(again[0].retransmission);
    assert!(events(&mut l).is_empty());

    // A TU that answers within the delay suppresses the automatic 100.
    let req2 = request("INVITE", "z9hG4bKinv100b");
    l.on_message(req2.clone().into(), uac(), UDP, t0).unwrap();
    let k2 = the_request_key(&events(&mut l));
    l.send_response(&k2, response_to(&req2, 180, Some("r")), t0 + ms(50))
        .unwrap();
    assert_eq!(transmits(&mut l).len(), 1);
    l.handle_timeout(t0 + ms(300));
    assert!(transmits(&mut l).is_empty());
}

#[test]
fn invite_server_timer_g_retransmits_final_until_timer_h() {
    let t0 = Instant::now();
    let mut l = Layer::new(Config {
        trying_delay: None,
        ..Config::default()
    });
    let req = request("INVITE", "z9hG4bKgh");
    l.on_message(req.clone().into(), uac(), UDP, t0).unwrap();
    let key = the_request_key(&events(&mut l));
    let t = t0 + ms(1_000);
    l.send_response(&key, response_to(&req, 486, Some("g")), t)
        .unwrap();
    assert_eq!(l.state(&key), Some(State::Completed));
    let first = transmits(&mut l);
    assert_eq!(first.len(), 1);

    let (tx, ev) = run(&mut l, t0, t + ms(31_999));
    // G: T1, 2·T1, 4·T1, then T2.
    assert_eq!(
        offsets(&tx),
        [1500, 2500, 4500, 8500, 12500, 16500, 20500, 24500, 28500, 32500]
    );
    assert!(tx
        .iter()
        .all(|(_, m)| m.retransmission && m.message == first[0].message && m.dest == uac()));
    assert!(ev.is_empty());
    let (tx, ev) = run(&mut l, t0, t + ms(40_000));
    assert!(tx.is_empty());
    assert_eq!(
        ev,
        [
            (ms(33_000), Event::Timeout { key: key.clone() }),
            (ms(33_000), Event::Terminated { key })
        ]
    );
    assert!(l.is_empty());
}

#[test]
fn invite_server_ack_confirms_then_timer_i() {
    let t0 = Instant::now();
    let mut l = Layer::new(Config {
        trying_delay: None,
        ..Config::default()
    });
    let req = request("INVITE", "z9hG4bKack");
    l.on_message(req.clone().into(), uac(), UDP, t0).unwrap();
    let key = the_request_key(&events(&mut l));
    l.send_response(&key, response_to(&req, 603, Some("dec")), t0)
        .unwrap();
    transmits(&mut l);
    let (tx, _) = run(&mut l, t0, t0 + ms(2_000));
    assert_eq!(offsets(&tx), [500, 1500]);

    let ack = request_with(
        "ACK",
        ";branch=z9hG4bKack",
        1,
        "call-z9hG4bKack@192.0.2.1",
        "Bob <sip:bob@example.com>;tag=dec",
    );
    let t_ack = t0 + ms(2_100);
    l.on_message(ack.clone().into(), uac(), UDP, t_ack).unwrap();
    assert_eq!(l.state(&key), Some(State::Confirmed));
    // The ACK is absorbed: not passed to the TU.
    assert!(events(&mut l).is_empty());
    // Confirmed absorbs further ACKs and INVITE retransmissions without sending anything.
    l.on_message(ack.into(), uac(), UDP, t_ack + ms(10))
        .unwrap();
    l.on_message(req.into(), uac(), UDP, t_ack + ms(20))
        .unwrap();
    assert!(events(&mut l).is_empty() && transmits(&mut l).is_empty());
    // No more G, no H: only Timer I = T4.
    assert_eq!(l.poll_timeout(), Some(t_ack + ms(5_000)));
    let (tx, ev) = run(&mut l, t0, t0 + ms(60_000));
    assert!(tx.is_empty());
    assert_eq!(ev, [(ms(7_100), Event::Terminated { key })]);
}

#[test]
fn invite_server_accepted_absorbs_retransmissions_and_passes_acks_until_timer_l() {
    let t0 = Instant::now();
    let mut l = Layer::default();
    let req = request("INVITE", "z9hG4bKacc");
    l.on_message(req.clone().into(), uac(), UDP, t0).unwrap();
    let key = the_request_key(&events(&mut l));
    let ok = response_to(&req, 200, Some("acc"));
    l.send_response(&key, ok.clone(), t0 + ms(100)).unwrap();
    assert_eq!(l.state(&key), Some(State::Accepted));
    assert!(!transmits(&mut l)[0].retransmission);

    // The INVITE retransmission is absorbed (not a new request, no response re-sent).
    l.on_message(req.clone().into(), uac(), UDP, t0 + ms(200))
        .unwrap();
    assert!(events(&mut l).is_empty() && transmits(&mut l).is_empty());
    // The TU retransmits its 2xx through the transaction.
    l.send_response(&key, ok.clone(), t0 + ms(600)).unwrap();
    assert!(transmits(&mut l)[0].retransmission);
    // A non-2xx is refused now.
    assert!(matches!(
        l.send_response(&key, response_to(&req, 486, Some("acc")), t0 + ms(700)),
        Err(Error::InvalidState {
            state: State::Accepted,
            status: 486
        })
    ));
    // The ACK for the 2xx (new branch) is the TU's.
    let ack = request_with(
        "ACK",
        ";branch=z9hG4bKacc-ack",
        1,
        "call-z9hG4bKacc@192.0.2.1",
        "Bob <sip:bob@example.com>;tag=acc",
    );
    l.on_message(ack.clone().into(), uac(), UDP, t0 + ms(800))
        .unwrap();
    assert_eq!(
        events(&mut l),
        [Event::Ack {
            invite: None,
            request: ack,
            source: uac(),
            transport: UDP
        }]
    );
    let (_, ev) = run(&mut l, t0, t0 + ms(60_000));
    assert_eq!(ev, [(ms(32_100), Event::Terminated { key })]);
}

// ---------------------------------------------------------------------------------------------
// Matching: RFC 2543 fallback, CANCEL, method, role
// ---------------------------------------------------------------------------------------------

#[test]
fn rfc2543_invite_matching_without_magic_cookie() {
    let t0 = Instant::now();
    let mut l = Layer::new(Config {
        trying_delay: None,
        ..Config::default()
    });
    let to = "Bob <sip:bob@example.com>";
    // No branch at all, and a pre-3261 branch without the cookie.
    for (via_params, cid) in [("", "legacy-a"), (";branch=1234abcd", "legacy-b")] {
        let inv = request_with("INVITE", via_params, 7, cid, to);
        l.on_message(inv.clone().into(), uac(), UDP, t0).unwrap();
        let key = the_request_key(&events(&mut l));
        assert!(key.is_rfc2543() && key.branch().is_none());

        // Identical retransmission: absorbed.
        l.on_message(inv.clone().into(), uac(), UDP, t0 + ms(500))
            .unwrap();
        assert!(events(&mut l).is_empty());

        // Any differing field makes it another transaction.
        for other in [
            request_with("INVITE", via_params, 8, cid, to),
            request_with("INVITE", via_params, 7, "other@192.0.2.1", to),
            request_with("INVITE", via_params, 7, cid, &format!("{to};tag=x")),
            request_with("INVITE", ";branch=5678", 7, cid, to),
        ] {
            l.on_message(other.into(), uac(), UDP, t0 + ms(600))
                .unwrap();
            let k = the_request_key(&events(&mut l));
            assert_ne!(k, key);
        }

        // The non-2xx final response, retransmitted on the INVITE retransmission.
        l.send_response(&key, response_to(&inv, 486, Some("lt")), t0 + ms(700))
            .unwrap();
        transmits(&mut l);
        l.on_message(inv.clone().into(), uac(), UDP, t0 + ms(800))
            .unwrap();
        assert_eq!(status(&transmits(&mut l)[0].message), 486);

        // An ACK whose To tag is not the response's does not match (it goes to the TU).
        let ack = |tag: &str| request_with("ACK", via_params, 7, cid, &format!("{to};tag={tag}"));
        l.on_message(ack("wrong").into(), uac(), UDP, t0 + ms(900))
            .unwrap();
        assert!(matches!(
            &events(&mut l)[..],
            [Event::Ack { invite: None, .. }]
        ));
        assert_eq!(l.state(&key), Some(State::Completed));
        // The right one confirms the transaction.
        l.on_message(ack("lt").into(), uac(), UDP, t0 + ms(900))
            .unwrap();
        assert!(events(&mut l).is_empty());
        assert_eq!(l.state(&key), Some(State::Confirmed));
    }
}

#[test]
fn rfc2543_non_invite_and_cancel_matching() {
    let t0 = Instant::now();
    let mut l = Layer::default();
    let to = "Bob <sip:bob@example.com>";
    let opt = request_with("OPTIONS", "", 3, "legacy-opt", to);
    l.on_message(opt.clone().into(), uac(), UDP, t0).unwrap();
    let key = the_request_key(&events(&mut l));
    l.send_response(&key, response_to(&opt, 200, Some("o")), t0)
        .unwrap();
    transmits(&mut l);
    l.on_message(opt.into(), uac(), UDP, t0 + ms(500)).unwrap();
    assert_eq!(status(&transmits(&mut l)[0].message), 200);
    assert!(events(&mut l).is_empty());

    let inv = request_with("INVITE", "", 9, "legacy-inv", to);
    l.on_message(inv.into(), uac(), UDP, t0).unwrap();
    let ik = the_request_key(&events(&mut l));
    let cancel = request_with("CANCEL", "", 9, "legacy-inv", to);
    l.on_message(cancel.into(), uac(), UDP, t0 + ms(100))
        .unwrap();
    assert!(matches!(&events(&mut l)[..],
        [Event::Cancel { key, invite, .. }] if *invite == ik && key.method() == Method::Cancel));
    // A CANCEL for another CSeq matches nothing: a plain request (the TU answers 481).
    let stray = request_with("CANCEL", "", 10, "legacy-inv", to);
    l.on_message(stray.into(), uac(), UDP, t0 + ms(100))
        .unwrap();
    assert!(matches!(&events(&mut l)[..], [Event::Request { .. }]));
}

#[test]
fn cancel_end_to_end_between_two_layers() {
    let t0 = Instant::now();
    let mut a = Layer::default();
    let mut b = Layer::default();
    let inv = request("INVITE", "z9hG4bKcancelme");
    let ik = a.send_request(inv.clone(), UDP, uas(), t0).unwrap();

    // Nothing to cancel but a pending client INVITE.
    assert!(matches!(b.build_cancel(&ik), Err(Error::NotCancellable(_))));

    wire(&mut a, &mut b, uac(), t0);
    let sk = the_request_key(&events(&mut b));
    b.send_response(&sk, response_to(&inv, 180, Some("b")), t0 + ms(10))
        .unwrap();
    wire(&mut b, &mut a, uas(), t0 + ms(20));
    assert_eq!(events(&mut a).len(), 1);
    assert_eq!(a.state(&ik), Some(State::Proceeding));

    let cancel = a.build_cancel(&ik).unwrap();
    assert_eq!(cancel.method, Method::Cancel);
    assert_eq!(cancel.uri, inv.uri);
    let cancel_msg: SipMessage = cancel.clone().into();
    assert_eq!(
        header_text(&cancel_msg, "Via"),
        ["SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKcancelme"]
    );
    assert_eq!(header_text(&cancel_msg, "CSeq"), ["1 CANCEL"]);
    assert_eq!(
        header_text(&cancel_msg, "To"),
        ["Bob <sip:bob@example.com>"]
    );
    let ck = a.send_request(cancel, UDP, uas(), t0 + ms(30)).unwrap();
    assert_ne!(ck, ik);
    assert_eq!(a.kind(&ck), Some(Kind::NonInviteClient));

    wire(&mut a, &mut b, uac(), t0 + ms(40));
    let (cancel_key, invite_key, cancel_req) = match &events(&mut b)[..] {
        [Event::Cancel {
            key,
            invite,
            request,
            ..
        }] => (key.clone(), invite.clone(), request.clone()),
        other => panic!("expected Cancel, got {other:?}"),
    };
    assert_eq!(invite_key, sk);
    assert_eq!(b.state(&invite_key), Some(State::Proceeding));
    // A retransmitted CANCEL is absorbed by its own transaction.
    b.on_message(cancel_req.clone().into(), uac(), UDP, t0 + ms(45))
        .unwrap();
    assert!(events(&mut b).is_empty());

    // The TU: 200 to the CANCEL, 487 to the INVITE.
    b.send_response(
        &cancel_key,
        response_to(&cancel_req, 200, Some("b")),
        t0 + ms(50),
    )
    .unwrap();
    b.send_response(&sk, response_to(&inv, 487, Some("b")), t0 + ms(50))
        .unwrap();
    wire(&mut b, &mut a, uas(), t0 + ms(60));
    let ev = events(&mut a);
    let codes: Vec<(TransactionKey, u16)> = ev
        .iter()
        .filter_map(|e| match e {
            Event::Response { key, response } => Some((key.clone(), response.status_code.code())),
            _ => None,
        })
        .collect();
    assert_eq!(codes, [(ck.clone(), 200), (ik.clone(), 487)]);
    // The 487 was ACKed; the UAS is Confirmed.
    let acks = wire(&mut a, &mut b, uac(), t0 + ms(70));
    assert_eq!(acks.len(), 1);
    assert_eq!(as_request(&acks[0].message).method, Method::Ack);
    assert_eq!(b.state(&sk), Some(State::Confirmed));
    assert!(events(&mut b).is_empty());
}

#[test]
fn matching_distinguishes_method_sent_by_and_role() {
    let t0 = Instant::now();
    let mut l = Layer::default();
    // A request we send to ourselves: client and server transactions coexist.
    let req = request("OPTIONS", "z9hG4bKself");
    let ck = l.send_request(req.clone(), UDP, uac(), t0).unwrap();
    for t in transmits(&mut l) {
        l.on_message(t.message, uac(), UDP, t0).unwrap();
    }
    let sk = the_request_key(&events(&mut l));
    assert_ne!(ck, sk);
    assert!(ck.is_client() && sk.is_server());
    l.send_response(&sk, response_to(&req, 200, Some("me")), t0)
        .unwrap();
    for t in transmits(&mut l) {
        l.on_message(t.message, uac(), UDP, t0).unwrap();
    }
    assert!(matches!(&events(&mut l)[..], [Event::Response { key, .. }] if *key == ck));

    // Same branch, other method: another transaction.
    let mut info = request("INFO", "z9hG4bKself");
    info.uri = req.uri.clone();
    l.on_message(info.into(), uac(), UDP, t0).unwrap();
    assert_ne!(the_request_key(&events(&mut l)), sk);
    // Same branch, other sent-by: another transaction.
    let text = req
        .to_string()
        .replace("192.0.2.1:5060;branch", "192.0.2.77:5060;branch");
    l.on_message(SipMessage::try_from(text).unwrap(), uac(), UDP, t0)
        .unwrap();
    assert_ne!(the_request_key(&events(&mut l)), sk);
    // Branch case does not matter (RFC 3261 §7.3.1).
    let text = req.to_string().replace("z9hG4bKself", "Z9HG4BKSELF");
    l.on_message(SipMessage::try_from(text).unwrap(), uac(), UDP, t0)
        .unwrap();
    assert!(events(&mut l).is_empty());
}

#[test]
fn compact_header_forms_match() {
    let t0 = Instant::now();
    let mut l = Layer::default();
    let text = "OPTIONS sip:bob@192.0.2.2 SIP/2.0\r\n\
                v: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKcompact\r\n\
                f: <sip:alice@example.com>;tag=1\r\n\
                t: <sip:bob@example.com>\r\n\
                i: compact-call\r\n\
                CSeq: 1 OPTIONS\r\n\r\n";
    let msg = SipMessage::try_from(text).unwrap();
    l.on_message(msg.clone(), uac(), UDP, t0).unwrap();
    let key = the_request_key(&events(&mut l));
    assert_eq!(key.branch(), Some("z9hg4bkcompact"));
    l.on_message(msg, uac(), UDP, t0).unwrap();
    assert!(events(&mut l).is_empty());
}

// ---------------------------------------------------------------------------------------------
// Errors: never a panic, never a half-created transaction
// ---------------------------------------------------------------------------------------------

#[test]
fn bad_inputs_are_errors_and_change_nothing() {
    let t0 = Instant::now();
    let mut l = Layer::default();
    let good = request("OPTIONS", "z9hG4bKerr");
    let without = |name: &str| {
        let mut r = good.clone();
        r.headers.retain(|h| {
            !h.to_string()
                .split_once(':')
                .is_some_and(|(n, _)| n.eq_ignore_ascii_case(name))
        });
        r
    };

    assert_eq!(
        l.on_message(without("Via").into(), uac(), UDP, t0),
        Err(Error::MissingHeader("Via"))
    );
    assert_eq!(
        l.on_message(without("CSeq").into(), uac(), UDP, t0),
        Err(Error::MissingHeader("CSeq"))
    );
    let resp = response_to(&good, 200, None);
    let mut r = resp.clone();
    r.headers.retain(|h| !matches!(h, Header::Via(_)));
    assert_eq!(
        l.on_message(r.into(), uas(), UDP, t0),
        Err(Error::MissingHeader("Via"))
    );
    let mut r = resp.clone();
    r.headers.retain(|h| !matches!(h, Header::CSeq(_)));
    assert_eq!(
        l.on_message(r.into(), uas(), UDP, t0),
        Err(Error::MissingHeader("CSeq"))
    );
    let mut r = resp;
    r.status_code = 42.into();
    assert_eq!(
        l.on_message(r.into(), uas(), UDP, t0),
        Err(Error::InvalidStatus(42))
    );
    let mut bad_via = good.clone();
    bad_via.headers.retain(|h| !matches!(h, Header::Via(_)));
    bad_via
        .headers
        .push(Header::Via(rsip::headers::Via::new("garbage")));
    assert_eq!(
        l.on_message(bad_via.into(), uac(), UDP, t0),
        Err(Error::MalformedHeader("Via"))
    );
    let mismatch = SipMessage::try_from(good.to_string().replace("1 OPTIONS", "1 INVITE")).unwrap();
    assert!(matches!(
        l.on_message(mismatch, uac(), UDP, t0),
        Err(Error::CSeqMethodMismatch { .. })
    ));
    // RFC 2543 requests need Call-ID / From / To to be matched.
    let legacy = request_with("OPTIONS", "", 1, "c", "<sip:b@example.com>");
    let mut no_call_id = legacy.clone();
    no_call_id
        .headers
        .retain(|h| !matches!(h, Header::CallId(_)));
    assert!(matches!(
        l.on_message(no_call_id.into(), uac(), UDP, t0),
        Err(Error::MissingHeader(_))
    ));

    // Client side.
    let no_branch = request_with("OPTIONS", "", 1, "c", "<sip:b@example.com>");
    assert_eq!(
        l.send_request(no_branch, UDP, uas(), t0),
        Err(Error::NoRfc3261Branch)
    );
    assert_eq!(
        l.send_request(request("ACK", "z9hG4bKack"), UDP, uas(), t0),
        Err(Error::AckNotATransaction)
    );
    assert_eq!(
        l.send_request(without("Via"), UDP, uas(), t0),
        Err(Error::MissingHeader("Via"))
    );
    assert_eq!(l.len(), 0);
    assert!(l.poll_transmit().is_none() && l.poll_event().is_none());
    assert_eq!(l.poll_timeout(), None);

    let key = l.send_request(good.clone(), UDP, uas(), t0).unwrap();
    assert_eq!(
        l.send_request(good.clone(), UDP, uas(), t0),
        Err(Error::DuplicateTransaction(key.clone()))
    );
    assert_eq!(
        l.send_response(&key, response_to(&good, 200, None), t0),
        Err(Error::NotServerTransaction(key.clone()))
    );
    assert!(matches!(
        l.build_cancel(&key),
        Err(Error::NotCancellable(_))
    ));
    assert_eq!(l.len(), 1);
}

#[test]
fn transport_error_ends_the_transaction() {
    let t0 = Instant::now();
    let mut l = Layer::default();
    let key = l
        .send_request(request("INVITE", "z9hG4bKte"), TCP, uas(), t0)
        .unwrap();
    let t = transmits(&mut l).remove(0);
    assert!(l.transport_error(t.key.as_ref().unwrap()));
    assert_eq!(
        events(&mut l),
        [
            Event::TransportError { key: key.clone() },
            Event::Terminated { key: key.clone() }
        ]
    );
    assert!(!l.transport_error(&key));
    assert_eq!(l.poll_timeout(), None);
}

#[test]
fn mangled_messages_never_panic() {
    let t0 = Instant::now();
    let mut rng = XorShift::new(7);
    let mut l = Layer::default();
    let bases: Vec<SipMessage> = vec![
        request("INVITE", "z9hG4bKfuzz").into(),
        request_with("ACK", "", 1, "c", "<sip:b@h>;tag=1").into(),
        response_to(&request("INVITE", "z9hG4bKfuzz"), 486, Some("x")).into(),
    ];
    let junk = [
        "",
        ";",
        ",",
        "<",
        ">",
        "\"",
        "é",
        "SIP/2.0/",
        " ",
        ";branch=",
        ";tag=",
        "z9hG4bK",
        ":",
        "\u{1F600}",
        "/",
        "\\",
        "=",
    ];
    let mut accepted = 0;
    let mut created = vec![];
    for _ in 0..5_000 {
        let mut m = bases[rng.below(bases.len() as u64) as usize].clone();
        let hs: Vec<Header> = m.headers().clone().into_iter().collect();
        let mut out = vec![];
        for h in hs {
            match rng.below(6) {
                0 => {} // drop it
                1 => {
                    // Re-parse a mangled value under the same name.
                    let s = h.to_string();
                    let (name, value) = s.split_once(':').unwrap();
                    let mut v: Vec<char> = value.chars().collect();
                    let at = rng.below(v.len() as u64 + 1) as usize;
                    let cut = rng.below((v.len() - at) as u64 + 1) as usize;
                    v.splice(
                        at..at + cut,
                        junk[rng.below(junk.len() as u64) as usize].chars(),
                    );
                    let v: String = v.into_iter().collect();
                    out.push(Header::Other(name.to_string(), v.clone()));
                    if let Ok(SipMessage::Request(r)) =
                        SipMessage::try_from(format!("OPTIONS sip:x SIP/2.0\r\n{name}:{v}\r\n\r\n"))
                    {
                        out.extend(r.headers);
                    }
                }
                _ => out.push(h),
            }
        }
        *m.headers_mut() = out.into();
        if l.on_message(m, uac(), UDP, t0).is_ok() {
            accepted += 1;
        }
        while let Some(e) = l.poll_event() {
            if let Event::Request { key, .. } = e {
                created.push(key);
            }
        }
        while l.poll_transmit().is_some() {}
    }
    // Some survived mangling and some did not: both paths ran.
    assert!(accepted > 100 && accepted < 5_000, "{accepted}");
    run(&mut l, t0, t0 + ms(200_000));
    // All that is left are INVITE server transactions waiting for their TU.
    assert!(!created.is_empty());
    for key in &created {
        if let Some(state) = l.state(key) {
            assert_eq!(
                (l.kind(key), state),
                (Some(Kind::InviteServer), State::Proceeding)
            );
        }
    }
    assert_eq!(l.poll_timeout(), None);
}

// ---------------------------------------------------------------------------------------------
// Lossy network: a UAC and a UAS layer through a deterministic lossy, reordering, duplicating
// channel.
// ---------------------------------------------------------------------------------------------

struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Scenario {
    /// OPTIONS answered 200.
    NonInvite,
    /// INVITE answered 180 then 486 (ACK inside the transactions).
    InviteRejected,
    /// INVITE answered 180 then 200 (Accepted; the TUs retransmit 2xx and ACK it).
    InviteAccepted,
}

#[derive(Default, Debug)]
struct Outcome {
    /// Requests the UAS TU saw (Request events for the INVITE/OPTIONS).
    uas_requests: u32,
    /// Final responses the UAC TU saw.
    uac_finals: Vec<u16>,
    uac_final_at: Option<Instant>,
    uac_timeout_at: Option<Instant>,
    /// The UAC TU gave up on an INVITE stuck in Proceeding (every final response lost) and
    /// destroyed the transaction (as RFC 3261 §9.1 allows after an unanswered CANCEL).
    uac_abandoned: bool,
    uac_terminated: u32,
    uas_terminated: u32,
    uas_timeout_at: Option<Instant>,
    /// ACKs the channel delivered to the UAS, and when.
    acks_delivered: Vec<Instant>,
    /// Whether the UAS TU saw an ACK for its 2xx.
    uas_2xx_acked: bool,
    dropped: u32,
    retransmissions: u32,
    stray_requests: u32,
    stray_responses: u32,
}

struct Datagram {
    at: Instant,
    seq: u64,
    to_uas: bool,
    bytes: String,
    transport: Transport,
}

fn simulate(seed: u64, scenario: Scenario, loss: u64) -> Outcome {
    let t0 = Instant::now();
    let mut rng = XorShift::new(seed);
    let mut now = t0;
    let mut a = Layer::default();
    let mut b = Layer::default();
    let mut out = Outcome::default();
    let mut channel: Vec<Datagram> = vec![];
    let mut seq = 0u64;

    let method = match scenario {
        Scenario::NonInvite => "OPTIONS",
        _ => "INVITE",
    };
    let req = request(method, &format!("z9hG4bKsim{seed}"));
    let ck = a
        .send_request(req.clone(), UDP, uas(), now)
        .expect("send INVITE/OPTIONS");
    let final_code = match scenario {
        Scenario::InviteRejected => 486,
        _ => 200,
    };
    // The UAS TU answers after a random think time (longer than T1 in some runs, so that
    // request retransmissions reach a server transaction still in Trying / Proceeding).
    let think = ms(rng.below(if method == "INVITE" { 3_000 } else { 1_200 }));
    let mut uas_key: Option<TransactionKey> = None;
    let mut answer_at: Option<Instant> = None;
    // The UAS TU's own 2xx retransmission (RFC 3261 §13.3.1.4), and the UAC TU's ACK.
    let mut retx_2xx: Option<(Instant, Duration)> = None;
    let mut sent_2xx: Option<Response> = None;
    let mut ack_2xx: Option<Request> = None;
    let deadline = t0 + Duration::from_secs(300);
    let give_up = t0 + Duration::from_secs(100);

    loop {
        // Until quiet: put everything sent on the lossy wire, let the TUs react.
        let mut busy = true;
        while busy {
            busy = false;
            // Put everything sent on the lossy wire.
            for (from_uac, l) in [(true, &mut a), (false, &mut b)] {
                while let Some(t) = l.poll_transmit() {
                    busy = true;
                    assert_eq!(t.dest, if from_uac { uas() } else { uac() });
                    if t.retransmission {
                        out.retransmissions += 1;
                    }
                    let copies = if rng.percent(10) { 2 } else { 1 };
                    for _ in 0..copies {
                        if rng.percent(loss) {
                            out.dropped += 1;
                            continue;
                        }
                        seq += 1;
                        channel.push(Datagram {
                            at: now + ms(1 + rng.below(80)),
                            seq,
                            to_uas: from_uac,
                            bytes: t.message.to_string(),
                            transport: t.transport,
                        });
                    }
                }
            }
            // The UAS TU.
            while let Some(e) = b.poll_event() {
                busy = true;
                match e {
                    Event::Request { key, request, .. } if request.method.to_string() == method => {
                        out.uas_requests += 1;
                        if method == "INVITE" {
                            b.send_response(&key, response_to(&request, 180, Some("uas")), now)
                                .expect("UAS answers");
                        }
                        uas_key = Some(key);
                        answer_at = Some(now + think);
                    }
                    Event::Request { .. } | Event::Cancel { .. } => out.stray_requests += 1,
                    Event::Ack { .. } => out.uas_2xx_acked = true,
                    Event::Timeout { key } => {
                        assert_eq!(Some(&key), uas_key.as_ref());
                        out.uas_timeout_at = Some(now);
                    }
                    Event::Terminated { .. } => out.uas_terminated += 1,
                    other => panic!("UAS TU: unexpected {other:?}"),
                }
            }
            // The UAC TU.
            while let Some(e) = a.poll_event() {
                busy = true;
                match e {
                    Event::Response { key, response } => {
                        assert_eq!(key, ck);
                        let code = response.status_code.code();
                        if code >= 200 {
                            out.uac_finals.push(code);
                            out.uac_final_at.get_or_insert(now);
                        }
                        if (200..300).contains(&code) {
                            let ack = ack_2xx.get_or_insert_with(|| {
                                let to = response.to_header().expect("2xx has a To").clone();
                                let mut ack = request_with(
                                    "ACK",
                                    &format!(";branch=z9hG4bKsim{seed}ack"),
                                    1,
                                    &format!("call-z9hG4bKsim{seed}@192.0.2.1"),
                                    to.value(),
                                );
                                ack.uri = req.uri.clone();
                                ack
                            });
                            a.send_stateless(ack.clone().into(), uas(), UDP);
                        }
                    }
                    Event::StrayResponse { response, .. } => {
                        // A final response retransmitted after the client transaction ended
                        // (Timer B/F/D/M, or abandoned): the core ACKs a 2xx, drops the rest.
                        let code = response.status_code.code();
                        assert!(code == final_code || code == 180, "stray {code}");
                        out.stray_responses += 1;
                        if let (200, Some(ack)) = (code, &ack_2xx) {
                            a.send_stateless(ack.clone().into(), uas(), UDP);
                        }
                    }
                    Event::Timeout { key } => {
                        assert_eq!(key, ck);
                        out.uac_timeout_at = Some(now);
                    }
                    Event::Terminated { key } => {
                        assert_eq!(key, ck);
                        out.uac_terminated += 1;
                    }
                    other => panic!("UAC TU: unexpected {other:?}"),
                }
            }
        }

        let next = [
            a.poll_timeout(),
            b.poll_timeout(),
            channel.iter().map(|d| d.at).min(),
            answer_at,
            retx_2xx.map(|(t, _)| t),
            a.state(&ck).map(|_| give_up),
        ]
        .into_iter()
        .flatten()
        .min();
        let Some(next) = next else { break };
        assert!(next >= now);
        assert!(next < deadline, "seed {seed}: simulation does not settle");
        now = next;

        a.handle_timeout(now);
        if now >= give_up && a.state(&ck) == Some(State::Proceeding) {
            assert!(a.terminate(&ck));
            out.uac_abandoned = true;
        }
        b.handle_timeout(now);
        channel.sort_by_key(|d| (d.at, d.seq));
        while channel.first().is_some_and(|d| d.at <= now) {
            let d = channel.remove(0);
            let msg = SipMessage::try_from(d.bytes.as_str()).expect("wire bytes parse");
            if d.to_uas {
                if matches!(&msg, SipMessage::Request(r) if r.method == Method::Ack) {
                    out.acks_delivered.push(now);
                }
                b.on_message(msg, uac(), d.transport, now)
                    .expect("UAS accepts");
            } else {
                a.on_message(msg, uas(), d.transport, now)
                    .expect("UAC accepts");
            }
        }
        if answer_at.is_some_and(|t| t <= now) {
            answer_at = None;
            let key = uas_key.clone().expect("UAS key");
            let resp = response_to(
                b.request(&key).expect("UAS transaction"),
                final_code,
                Some("uas"),
            );
            // The TU keeps its 2xx to retransmit it (the transaction drops the request once
            // it is Accepted).
            sent_2xx = Some(resp.clone());
            b.send_response(&key, resp, now).expect("UAS answers");
            if scenario == Scenario::InviteAccepted {
                retx_2xx = Some((now + ms(500), ms(500)));
            }
        }
        if let Some((t, interval)) = retx_2xx {
            if t <= now {
                let key = uas_key.clone().expect("UAS key");
                // Retransmit until ACKed; give up when the transaction (Timer L) is gone.
                if out.uas_2xx_acked || b.state(&key).is_none() {
                    retx_2xx = None;
                } else {
                    let resp = sent_2xx.clone().expect("the 2xx sent");
                    b.send_response(&key, resp, now)
                        .expect("UAS retransmits 2xx");
                    let interval = (interval * 2).min(ms(4_000));
                    retx_2xx = Some((now + interval, interval));
                }
            }
        }
    }
    assert!(
        a.is_empty() && b.is_empty(),
        "seed {seed}: transactions left"
    );
    assert!(channel.is_empty());
    check(seed, scenario, t0, &out);
    out
}

/// What must hold for every seed.
fn check(seed: u64, scenario: Scenario, t0: Instant, o: &Outcome) {
    let ctx = format!("seed {seed} {scenario:?}: {o:?}");
    // The UAS TU saw the request at most once, and at least once unless every copy was lost
    // (and then the UAC timed out).
    assert!(o.uas_requests <= 1, "{ctx}");
    if o.uas_requests == 0 {
        assert!(o.uac_timeout_at.is_some(), "{ctx}");
    }
    assert_eq!(o.stray_requests, 0, "{ctx}");
    // The client transaction ended exactly once, either with a final response or with a
    // timeout at exactly 64·T1, never both.
    assert_eq!(o.uac_terminated, 1, "{ctx}");
    assert_eq!(o.uas_terminated, o.uas_requests, "{ctx}");
    match (o.uac_finals.first(), o.uac_timeout_at, o.uac_abandoned) {
        (Some(_), None, false) => {}
        (None, Some(t), false) => assert_eq!(t - t0, ms(32_000), "{ctx}"),
        // Only an INVITE that got a provisional can be stuck; its UAS then ended by Timer H
        // or L (the final response was retransmitted and lost every time).
        (None, None, true) => {
            assert_ne!(scenario, Scenario::NonInvite, "{ctx}");
            assert_eq!(o.uas_requests, 1, "{ctx}");
        }
        _ => panic!("final response xor timeout xor abandoned: {ctx}"),
    }
    match scenario {
        Scenario::NonInvite | Scenario::InviteRejected => {
            // Retransmitted finals are absorbed: the TU sees one.
            assert!(o.uac_finals.len() <= 1, "{ctx}");
            if let Some(&c) = o.uac_finals.first() {
                assert_eq!(
                    c,
                    if scenario == Scenario::NonInvite {
                        200
                    } else {
                        486
                    }
                );
            }
        }
        Scenario::InviteAccepted => {
            assert!(o.uac_finals.iter().all(|&c| c == 200), "{ctx}");
            // Every ACK that arrived reached the UAS TU (no transaction swallows it).
            assert_eq!(o.uas_2xx_acked, !o.acks_delivered.is_empty(), "{ctx}");
            if !o.uac_finals.is_empty() {
                assert!(o.uas_requests == 1, "{ctx}");
            }
        }
    }
    if scenario == Scenario::InviteRejected && o.uas_requests == 1 && o.uac_timeout_at.is_none() {
        // The UAS INVITE transaction ends by ACK (Confirmed, Timer I) or by Timer H iff no
        // ACK reached it in time.
        match o.uas_timeout_at {
            Some(h) => assert!(o.acks_delivered.iter().all(|&t| t >= h), "{ctx}"),
            None => assert!(!o.acks_delivered.is_empty(), "{ctx}"),
        }
    }
    if scenario != Scenario::InviteRejected {
        assert!(o.uas_timeout_at.is_none(), "{ctx}");
    }
}

fn lossy(scenario: Scenario) {
    let seeds = 300;
    let mut completed = 0;
    let mut retransmissions = 0;
    let mut dropped = 0;
    let mut uas_h = 0;
    for seed in 1..=seeds {
        let o = simulate(seed, scenario, 30);
        if !o.uac_finals.is_empty() {
            completed += 1;
        }
        retransmissions += o.retransmissions;
        dropped += o.dropped;
        uas_h += u32::from(o.uas_timeout_at.is_some());
    }
    // The channel really lost things, the layers really retransmitted, and the transactions
    // nearly always got through 30 % loss.
    assert!(dropped > seeds as u32, "{scenario:?}: dropped {dropped}");
    assert!(
        retransmissions > seeds as u32,
        "{scenario:?}: {retransmissions}"
    );
    assert!(
        completed >= seeds * 97 / 100,
        "{scenario:?}: only {completed}/{seeds} completed"
    );
    if scenario == Scenario::InviteRejected {
        // Timer H needs every ACK lost, and the UAC re-ACKs each retransmitted 486: rare.
        // (A UAC that ACKed only once would hit H in about 30 % of the runs.)
        assert!(
            uas_h * 50 <= seeds as u32,
            "Timer H fired in {uas_h}/{seeds} runs"
        );
    } else {
        assert_eq!(uas_h, 0);
    }
}

#[test]
fn lossy_network_non_invite() {
    lossy(Scenario::NonInvite);
}

#[test]
fn lossy_network_invite_rejected() {
    lossy(Scenario::InviteRejected);
}

#[test]
fn lossy_network_invite_accepted() {
    lossy(Scenario::InviteAccepted);
}

/// At 65 % loss many transactions fail: the invariants checked for every seed (exactly-once
/// delivery to the UAS TU, one clean end per transaction, Timer B/F at exactly 64·T1, Timer H
/// only without ACK) must hold on those paths too.
#[test]
fn very_lossy_network_fails_cleanly() {
    for scenario in [
        Scenario::NonInvite,
        Scenario::InviteRejected,
        Scenario::InviteAccepted,
    ] {
        let (mut completed, mut timed_out, mut uas_h) = (0, 0, 0);
        for seed in 1..=300 {
            let o = simulate(seed, scenario, 65);
            completed += u32::from(!o.uac_finals.is_empty());
            timed_out += u32::from(o.uac_timeout_at.is_some());
            uas_h += u32::from(o.uas_timeout_at.is_some());
        }
        assert!(completed > 100, "{scenario:?}: {completed}");
        assert!(timed_out > 0, "{scenario:?}: {timed_out}");
        if scenario == Scenario::InviteRejected {
            assert!(uas_h > 0, "Timer H never fired");
        }
    }
}

#[test]
fn lossless_network_takes_the_short_path() {
    for (scenario, uas_h) in [
        (Scenario::NonInvite, false),
        (Scenario::InviteRejected, false),
        (Scenario::InviteAccepted, false),
    ] {
        let o = simulate(1, scenario, 0);
        assert_eq!(o.uas_requests, 1);
        assert_eq!(o.dropped, 0);
        assert_eq!(
            o.uac_finals.first().copied(),
            Some(if scenario == Scenario::InviteRejected {
                486
            } else {
                200
            })
        );
        assert_eq!(o.uas_timeout_at.is_some(), uas_h);
    }
}

#[test]
fn total_loss_times_out_cleanly() {
    for scenario in [Scenario::NonInvite, Scenario::InviteRejected] {
        let o = simulate(5, scenario, 100);
        assert_eq!(o.uas_requests, 0);
        assert!(o.uac_finals.is_empty());
        assert!(o.uac_timeout_at.is_some());
    }
}

// ---------------------------------------------------------------------------------------------
// Compact completed non-INVITE server transactions (issue 16)
// ---------------------------------------------------------------------------------------------

/// A REGISTER as SIPp's register bench sends it (user `n`, its own Call-ID and branch), Via
/// stamped with `received`/`rport` as the transport does.
fn register(n: usize) -> Request {
    let text = format!(
        "REGISTER sip:127.0.0.1:5060 SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-31337-{n}-1;rport=5061;received=127.0.0.1\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:user{n:06}@127.0.0.1>;tag=31337SIPpTag00{n}\r\n\
         To: <sip:user{n:06}@127.0.0.1>\r\n\
         Call-ID: {n}-31337@127.0.0.1\r\n\
         CSeq: 2 REGISTER\r\n\
         Contact: <sip:user{n:06}@127.0.0.1:5061>\r\n\
         Expires: 3600\r\n\
         Authorization: Digest username=\"user{n:06}\",realm=\"callfabric\",nonce=\"AAAAZ3d2FmQ3Lw1nIK0oY2sP8xT2Ww\",uri=\"sip:127.0.0.1:5060\",response=\"6629fae49393a05397450978507c4ef1\",algorithm=MD5\r\n\
         Content-Length: 0\r\n\r\n"
    );
    Request::try_from(text.as_str()).expect("test request parses")
}

/// The registrar's 200 to it: the request's Via/From/To(+tag)/Call-ID/CSeq and the binding.
fn register_ok(req: &Request, n: usize) -> Response {
    let mut ok = response_to(req, 200, Some("as1f7a9e2c"));
    ok.headers
        .push(Header::Contact(rsip::headers::Contact::new(format!(
            "<sip:user{n:06}@127.0.0.1:5061>;expires=3600"
        ))));
    ok
}

/// Feeds REGISTERs `range` at `now` and answers each 200.
fn register_and_answer(l: &mut Layer, range: std::ops::Range<usize>, now: Instant) {
    for n in range {
        let req = register(n);
        l.on_message(req.clone().into(), uac(), UDP, now)
            .expect("REGISTER accepted");
        let key = the_request_key(&events(l));
        l.send_response(&key, register_ok(&req, n), now)
            .expect("200 sent");
        assert_eq!(transmits(l).len(), 1);
    }
}

#[test]
fn completed_non_invite_server_transaction_keeps_at_most_256_bytes() {
    let t0 = Instant::now();
    let mut l = Layer::default();
    const N: usize = 20_000;
    register_and_answer(&mut l, 0..N, t0);
    let sample = register_ok(&register(7), 7);
    let wire = sip_core::message::serialize_response(&sample).len();
    let (count, bytes) = l.completed_footprint();
    assert_eq!(count, N);
    assert_eq!(l.len(), N);
    let per = bytes / count;
    eprintln!("completed REGISTER transaction: {per} bytes each ({wire} of them the 200 OK)");
    assert!(per <= 256, "{per} bytes per completed transaction");
    // It keeps no parsed request, yet it is Completed and still answers a retransmission.
    let req = register(7);
    let key = {
        let mut probe = Layer::default();
        probe
            .on_message(req.clone().into(), uac(), UDP, t0)
            .unwrap();
        the_request_key(&events(&mut probe))
    };
    assert_eq!(l.state(&key), Some(State::Completed));
    assert_eq!(l.kind(&key), Some(Kind::NonInviteServer));
    assert!(l.request(&key).is_none());
    l.on_message(req.into(), uac(), UDP, t0 + ms(1_000))
        .unwrap();
    let again = transmits(&mut l);
    assert_eq!(again.len(), 1);
    assert!(again[0].retransmission && again[0].key.as_ref() == Some(&key));
    assert_eq!(again[0].message, SipMessage::Response(sample));
    assert!(events(&mut l).is_empty());
}

#[test]
fn a_request_matching_a_completed_transaction_with_other_fields_gets_nothing() {
    // Same branch and sent-by (so the same transaction, §17.2.3) but another Call-ID: not a
    // retransmission of the request the 200 answered, so that 200 is not sent for it.
    let t0 = Instant::now();
    let mut l = Layer::default();
    register_and_answer(&mut l, 0..1, t0);
    let text = register(0)
        .to_string()
        .replace("Call-ID: 0-31337", "Call-ID: 9-31337");
    let other = Request::try_from(text.as_str()).expect("parses");
    l.on_message(other.into(), uac(), UDP, t0 + ms(500))
        .unwrap();
    assert!(transmits(&mut l).is_empty());
    assert!(events(&mut l).is_empty());
    assert_eq!(l.mismatched_retransmissions(), 1);
    // The true retransmission is still answered, with its own 200.
    l.on_message(register(0).into(), uac(), UDP, t0 + ms(600))
        .unwrap();
    let again = transmits(&mut l);
    assert_eq!(again.len(), 1);
    assert_eq!(
        again[0].message,
        SipMessage::Response(register_ok(&register(0), 0))
    );
    assert_eq!(l.mismatched_retransmissions(), 1);
}

#[test]
fn completed_table_grows_while_answering_retransmissions_and_shrinks_after_the_ramp() {
    let t0 = Instant::now();
    let mut l = Layer::default();
    let idle = l.completed_capacity();
    // A ramp: 64 batches of 2,000 REGISTERs 250 ms apart (8,000/s), so the table grows several
    // times (1,024 → 131,072) while Timer J (32 s) has expired none; after every batch a
    // retransmission of a REGISTER from each earlier batch is still answered with its own 200,
    // wherever the incremental migration has got to.
    const BATCH: usize = 2_000;
    for b in 0..64usize {
        let now = t0 + ms(250 * b as u64);
        l.handle_timeout(now);
        assert!(events(&mut l).is_empty(), "nothing expires before Timer J");
        register_and_answer(&mut l, b * BATCH..(b + 1) * BATCH, now);
        for earlier in 0..=b {
            let n = earlier * BATCH + (b * 7919) % BATCH;
            l.on_message(register(n).into(), uac(), UDP, now).unwrap();
            let again = transmits(&mut l);
            assert_eq!(again.len(), 1, "REGISTER {n} after batch {b}");
            assert_eq!(
                again[0].message,
                SipMessage::Response(register_ok(&register(n), n))
            );
            assert!(events(&mut l).is_empty());
        }
    }
    let total = 64 * BATCH;
    assert_eq!(l.len(), total);
    let peak = l.completed_capacity();
    assert!(peak >= total, "{peak}");
    let (_, peak_bytes) = l.completed_footprint();
    // Every Timer J fires at 64·T1 after its final response, in order; then memory is back.
    let (_, ev) = run(&mut l, t0, t0 + ms(250 * 63 + 32_000));
    assert_eq!(ev.len(), total);
    assert!(ev
        .iter()
        .all(|(_, e)| matches!(e, Event::Terminated { key } if key.method() == Method::Register)));
    assert_eq!(ev[0].0, ms(32_000));
    assert_eq!(ev[total - 1].0, ms(250 * 63 + 32_000));
    assert!(l.is_empty());
    assert_eq!(l.poll_timeout(), None);
    let after = l.completed_capacity();
    eprintln!("completed table capacity: idle {idle}, peak {peak}, after the ramp {after}");
    assert!(
        after <= 2 * idle,
        "capacity {after} after the ramp (idle {idle})"
    );
    let (_, bytes) = l.completed_footprint();
    eprintln!("completed table footprint: {peak_bytes} bytes at the peak, {bytes} after the ramp");
    // Idle it keeps its minimum table and queue and one empty 64 KiB chunk of the byte ring.
    assert!(
        bytes < 256 * 1024 && bytes * 50 < peak_bytes,
        "{bytes} bytes held after the ramp (peak {peak_bytes})"
    );
}

#[test]
fn completed_transaction_ends_early_on_transport_error_or_terminate() {
    let t0 = Instant::now();
    let mut l = Layer::default();
    register_and_answer(&mut l, 0..2, t0);
    let keys: Vec<TransactionKey> = (0..2)
        .map(|n| {
            l.on_message(register(n).into(), uac(), UDP, t0 + ms(10))
                .unwrap();
            transmits(&mut l)
                .remove(0)
                .key
                .expect("retransmission has its key")
        })
        .collect();
    assert!(l.transport_error(&keys[0]));
    assert_eq!(
        events(&mut l),
        [
            Event::TransportError {
                key: keys[0].clone()
            },
            Event::Terminated {
                key: keys[0].clone()
            }
        ]
    );
    assert!(l.terminate(&keys[1]));
    assert_eq!(
        events(&mut l),
        [Event::Terminated {
            key: keys[1].clone()
        }]
    );
    assert!(!l.terminate(&keys[1]) && !l.transport_error(&keys[0]));
    assert!(l.is_empty());
    assert_eq!(l.poll_timeout(), None);
    // A new REGISTER with the same branch is a new transaction now.
    l.on_message(register(0).into(), uac(), UDP, t0 + ms(20))
        .unwrap();
    assert_eq!(the_request_key(&events(&mut l)), keys[0]);
}

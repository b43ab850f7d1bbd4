//! What a transaction costs in heap bytes once it lingers (issue 16), counted by the
//! allocator: this test binary's global allocator (`stats_alloc` over the system's) counts the
//! bytes live. One test only, so no other test's allocations run concurrently with the count.
//!
//! At 2,000 calls/s every answered call leaves two INVITE transactions in the gateway for 32 s
//! (the caller's server transaction in Timer L, the callee's client transaction in Timer M,
//! RFC 6026): 128,000 of them. They only absorb retransmissions and pass 2xx/ACK to the TU, so
//! they need neither the INVITE nor the 2xx (each with its SDP).

use std::alloc::System;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

use rsip::{Request, Response, SipMessage};
use sip_core::transaction::{Event, State, TransactionKey, TransactionLayer, Transport};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Bytes live now, relative to the region's start (a realloc's growth or shrinking is in
/// `bytes_allocated` / `bytes_deallocated` already).
fn live(region: &Region<'_, System>) -> isize {
    let c = region.change();
    c.bytes_allocated as isize - c.bytes_deallocated as isize
}

const UDP: Transport = Transport::Unreliable;

fn caller() -> SocketAddr {
    "192.0.2.1:5060".parse().expect("address")
}

fn callee() -> SocketAddr {
    "192.0.2.2:5060".parse().expect("address")
}

fn sdp(port: u16) -> String {
    format!(
        "v=0\r\no=user1 53655765 2353687637 IN IP4 192.0.2.1\r\ns=-\r\n\
         c=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio {port} RTP/AVP 0 8 101\r\n\
         a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n\
         a=fmtp:101 0-15\r\na=ptime:20\r\na=sendrecv\r\n"
    )
}

/// An INVITE with SDP as SIPp's UAC sends it (about 800 bytes on the wire).
fn invite(n: usize) -> Request {
    let body = sdp(6000);
    let text = format!(
        "INVITE sip:5551000@192.0.2.2:5060 SIP/2.0\r\n\
         Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-4242-{n}-0\r\n\
         From: sipp <sip:100{n}@192.0.2.1:5060>;tag=4242SIPpTag00{n}\r\n\
         To: <sip:5551000@192.0.2.2:5060>\r\n\
         Call-ID: {n}-4242@192.0.2.1\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: sip:sipp@192.0.2.1:5060\r\n\
         Max-Forwards: 70\r\n\
         Subject: Performance Test\r\n\
         Content-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    Request::try_from(text.as_str()).expect("INVITE parses")
}

/// The 2xx to `req`, with SDP, as a UAS core builds it.
fn ok(req: &Request, n: usize) -> Response {
    let body = sdp(7000);
    let mut text = String::from("SIP/2.0 200 OK\r\n");
    for h in req.headers.iter() {
        let line = h.to_string();
        if ["Via:", "From:", "Call-ID:", "CSeq:"]
            .iter()
            .any(|p| line.starts_with(p))
        {
            text.push_str(&line);
            text.push_str("\r\n");
        }
    }
    text.push_str(&format!(
        "To: <sip:5551000@192.0.2.2:5060>;tag=uas{n}\r\n\
         Contact: <sip:192.0.2.2:5060;transport=UDP>\r\n\
         Content-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    Response::try_from(text.as_str()).expect("200 parses")
}

fn drain(l: &mut TransactionLayer) -> Vec<Event> {
    while l.poll_transmit().is_some() {}
    std::iter::from_fn(|| l.poll_event()).collect()
}

/// Server: INVITE in, 200 out (Timer L). Client: INVITE out, 200 in (Timer M). Counted: what
/// the layers keep (their tables' growth included), the keys the test keeps (as the TU does).
#[test]
fn accepted_invite_transactions_keep_at_most_512_bytes_each() {
    const N: usize = 10_000;
    let t0 = Instant::now();
    let invites: Vec<Request> = (0..N).map(invite).collect();
    let oks: Vec<Response> = invites.iter().enumerate().map(|(n, r)| ok(r, n)).collect();
    let wire = invites[0].to_string().len() + oks[0].to_string().len();

    // The gateway's server side: the caller's INVITE transactions.
    let mut server = TransactionLayer::default();
    let mut client = TransactionLayer::default();
    // The keys of the 8th transactions, looked at after the count.
    let (mut key, mut client_key): (Option<TransactionKey>, Option<TransactionKey>) = (None, None);
    let region = Region::new(GLOBAL);
    let before = live(&region);
    // Each message is cloned inside the count and handed over: what the layer does not keep
    // is freed inside it too.
    for (n, (inv, ok)) in invites.iter().zip(&oks).enumerate() {
        server
            .on_message(inv.clone().into(), caller(), UDP, t0)
            .expect("INVITE accepted");
        let k = match drain(&mut server).as_slice() {
            [Event::Request { key, .. }] => key.clone(),
            other => panic!("expected the INVITE, got {other:?}"),
        };
        server.send_response(&k, ok.clone(), t0).expect("200 sent");
        drain(&mut server);
        if n == 7 {
            key = Some(k);
        }
    }
    let server_bytes = live(&region) - before;

    // The gateway's client side: the INVITE transactions to the callee.
    let before = live(&region);
    for (n, (inv, ok)) in invites.iter().zip(&oks).enumerate() {
        let k = client
            .send_request(inv.clone(), UDP, callee(), t0)
            .expect("INVITE sent");
        client
            .on_message(ok.clone().into(), callee(), UDP, t0)
            .expect("200 matched");
        assert!(matches!(
            drain(&mut client).as_slice(),
            [Event::Response { .. }]
        ));
        if n == 7 {
            client_key = Some(k);
        }
    }
    let client_bytes = live(&region) - before;

    let per_server = server_bytes / N as isize;
    let per_client = client_bytes / N as isize;
    eprintln!(
        "INVITE transaction in Timer L (server): {per_server} bytes; in Timer M (client): \
         {per_client} bytes; the INVITE and its 200 are {wire} bytes on the wire"
    );
    assert!(
        per_server <= 512,
        "{per_server} bytes per Accepted INVITE server transaction"
    );
    assert!(
        per_client <= 512,
        "{per_client} bytes per Accepted INVITE client transaction"
    );

    // Still RFC 6026's Accepted: an INVITE retransmission is absorbed (nothing re-sent, nothing
    // reported); the TU's retransmission of its 2xx goes out marked as one, another 2xx not.
    let key = &key.expect("the 8th INVITE's key");
    assert_eq!(server.state(key), Some(State::Accepted));
    assert!(server.request(key).is_none());
    server
        .on_message(
            invites[7].clone().into(),
            caller(),
            UDP,
            t0 + Duration::from_millis(500),
        )
        .expect("retransmission");
    assert!(server.poll_transmit().is_none());
    assert!(server.poll_event().is_none());
    let t1 = t0 + Duration::from_millis(500);
    server
        .send_response(key, oks[7].clone(), t1)
        .expect("2xx again");
    let again = server.poll_transmit().expect("the 2xx re-sent");
    assert!(again.retransmission);
    assert_eq!(again.message, SipMessage::Response(oks[7].clone()));
    let mut other = oks[7].clone();
    other.body = sdp(7002).into_bytes();
    server.send_response(key, other, t1).expect("another 2xx");
    assert!(!server.poll_transmit().expect("sent").retransmission);
    // The client passes a 2xx retransmission (or another fork's 2xx) to the TU until Timer M.
    let client_key = client_key.expect("the 8th INVITE's key");
    assert_eq!(client.state(&client_key), Some(State::Accepted));
    client
        .on_message(oks[7].clone().into(), callee(), UDP, t1)
        .expect("2xx again");
    assert!(matches!(
        drain(&mut client).as_slice(),
        [Event::Response { .. }]
    ));
    // Timer L and M end them all and the tables give their memory back.
    let end = t0 + Duration::from_secs(33);
    server.handle_timeout(end);
    client.handle_timeout(end);
    drain(&mut server);
    drain(&mut client);
    assert!(server.is_empty() && client.is_empty());
}

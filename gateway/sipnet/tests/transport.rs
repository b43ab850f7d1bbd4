//! SIP transports: the pure parts (framing, Via) and UDP/TCP on real loopback sockets.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use rsip::headers::UntypedHeader;
use sip_core::framing::{Frame, FramingError, StreamDecoder, PONG};
use sip_core::message::{parse, response_for, serialize, Header, Request, SipMessage};
use sip_core::via::{response_route, stamp_received, top_via, Destination, ResponseRoute};
use sipnet::{
    BadMessageError, Incoming, Target, Transport, TransportConfig, TransportEvent, Transports,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------------------------

fn options(id: &str, via: &str) -> Vec<u8> {
    format!(
        "OPTIONS sip:gw@example.com SIP/2.0\r\n\
         Via: {via};branch=z9hG4bK{id}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:1000@example.com>;tag=f{id}\r\n\
         To: <sip:gw@example.com>\r\n\
         Call-ID: {id}@example.com\r\n\
         CSeq: 1 OPTIONS\r\n\
         Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// An INVITE whose body contains a blank line and a line that looks like a start line.
fn invite(id: &str) -> Vec<u8> {
    let body = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=INVITE sip:x@y SIP/2.0\r\n\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
    format!(
        "INVITE sip:2000@example.com SIP/2.0\r\n\
         Via: SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bK{id};rport\r\n\
         Max-Forwards: 70\r\n\
         f: <sip:1000@example.com>;tag=f{id}\r\n\
         t: <sip:2000@example.com>\r\n\
         i: {id}@example.com\r\n\
         CSeq: 7 INVITE\r\n\
         Contact: <sip:1000@192.0.2.1>\r\n\
         c: application/sdp\r\n\
         l: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn response_200(id: &str) -> Vec<u8> {
    format!(
        "SIP/2.0 200 OK\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK{id}\r\n\
         From: <sip:gw@example.com>;tag=g{id}\r\n\
         To: <sip:1000@example.com>;tag=t{id}\r\n\
         Call-ID: {id}@example.com\r\n\
         CSeq: 2 OPTIONS\r\n\
         Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

fn via_value(headers: &rsip::Headers) -> String {
    headers
        .iter()
        .find_map(|h| match h {
            Header::Via(v) => Some(v.value().to_owned()),
            _ => None,
        })
        .expect("a Via")
}

fn request(bytes: &[u8]) -> Request {
    match parse(bytes).expect("parses") {
        SipMessage::Request(r) => r,
        SipMessage::Response(_) => panic!("not a request"),
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("address")
}

// ---------------------------------------------------------------------------------------------
// Framing (sans-IO)
// ---------------------------------------------------------------------------------------------

fn drain(d: &mut StreamDecoder) -> Vec<Frame> {
    std::iter::from_fn(|| d.next_frame()).collect()
}

fn feed_all(d: &mut StreamDecoder, bytes: &[u8]) -> Vec<Frame> {
    d.feed(bytes);
    drain(d)
}

fn messages(frames: &[Frame]) -> Vec<Vec<u8>> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::Message(m) => Some(m.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn framing_two_messages_in_one_chunk() {
    let (a, b) = (options("a", "SIP/2.0/TCP 192.0.2.1"), invite("b"));
    let mut d = StreamDecoder::new();
    let frames = feed_all(&mut d, &[a.clone(), b.clone()].concat());
    assert_eq!(frames, vec![Frame::Message(a), Frame::Message(b)]);
    assert_eq!(d.buffered(), 0);
}

#[test]
fn framing_byte_by_byte() {
    let stream = [invite("a"), b"\r\n".to_vec(), options("b", "SIP/2.0/TCP h")].concat();
    let mut d = StreamDecoder::new();
    let mut frames = Vec::new();
    for b in &stream {
        frames.extend(feed_all(&mut d, std::slice::from_ref(b)));
    }
    assert_eq!(
        frames,
        vec![
            Frame::Message(invite("a")),
            Frame::Message(options("b", "SIP/2.0/TCP h"))
        ]
    );
}

#[test]
fn framing_body_is_taken_by_content_length() {
    // The INVITE's body contains CRLF CRLF and a start-line-like line.
    let m = invite("x");
    let mut d = StreamDecoder::new();
    let frames = feed_all(&mut d, &m);
    assert_eq!(frames, vec![Frame::Message(m.clone())]);
    assert!(matches!(parse(&m), Ok(SipMessage::Request(_))));
}

#[test]
fn framing_skips_and_reports_garbage() {
    let a = options("a", "SIP/2.0/TCP h");
    let b = response_200("b");
    let junk = b"hello there\r\n\x00\x01\x02\r\n\r\nVia: SIP/2.0/UDP x\r\n\r\n";
    let stream = [a.clone(), junk.to_vec(), b.clone()].concat();
    let mut d = StreamDecoder::new();
    let frames = feed_all(&mut d, &stream);
    assert_eq!(messages(&frames), vec![a, b]);
    let garbage: usize = frames
        .iter()
        .map(|f| if let Frame::Garbage(n) = f { *n } else { 0 })
        .sum();
    assert_eq!(garbage, junk.len());
}

#[test]
fn framing_finds_a_start_line_after_junk_on_the_same_line() {
    let a = options("a", "SIP/2.0/TCP h");
    for junk in [&b"\x01\x02junk "[..], b"junk ", b"@@", b"\x7f", b"junk\x01"] {
        let stream = [junk, &a[..]].concat();
        let mut d = StreamDecoder::new();
        let frames = feed_all(&mut d, &stream);
        assert_eq!(
            frames,
            vec![Frame::Garbage(junk.len()), Frame::Message(a.clone())],
            "{junk:?}"
        );
    }
}

#[test]
fn framing_keepalive_ping_and_lone_crlf() {
    let a = options("a", "SIP/2.0/TCP h");
    let mut d = StreamDecoder::new();
    assert_eq!(feed_all(&mut d, b"\r\n\r\n"), vec![Frame::Ping]);
    // A lone CRLF between messages is skipped, nothing reported.
    assert_eq!(feed_all(&mut d, b"\r\n"), vec![]);
    assert_eq!(feed_all(&mut d, &a), vec![Frame::Message(a.clone())]);
    // Byte by byte: the ping is recognised only once complete.
    let mut frames = Vec::new();
    for b in b"\r\n\r\n" {
        frames.extend(feed_all(&mut d, &[*b]));
    }
    assert_eq!(frames, vec![Frame::Ping]);
    assert_eq!(PONG, b"\r\n");
}

#[test]
fn framing_oversize_declared_body_is_skipped_exactly() {
    let big = format!(
        "MESSAGE sip:a@example.com SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\n\
         From: <sip:b@example.com>;tag=1\r\nTo: <sip:a@example.com>\r\nCall-ID: big\r\n\
         CSeq: 1 MESSAGE\r\nContent-Length: 5000\r\n\r\n{}",
        // A body that looks like messages must not resynchronise into them.
        String::from_utf8(options("inner", "SIP/2.0/TCP h"))
            .expect("utf8")
            .repeat(40)[..5000]
            .to_owned()
    );
    let a = options("after", "SIP/2.0/TCP h");
    let stream = [big.as_bytes(), &a].concat();
    for chunk in [stream.len(), 1, 7, 1000] {
        let mut d = StreamDecoder::with_max_size(2048);
        let mut frames = Vec::new();
        for c in stream.chunks(chunk) {
            frames.extend(feed_all(&mut d, c));
        }
        assert_eq!(frames.len(), 2, "chunk {chunk}: {frames:?}");
        match &frames[0] {
            Frame::Error {
                error: FramingError::TooLarge { size, limit: 2048 },
                head: Some(head),
            } => {
                assert_eq!(*size, big.len());
                assert!(head.ends_with(b"Content-Length: 5000\r\n\r\n"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(frames[1], Frame::Message(a.clone()));
    }
}

#[test]
fn framing_endless_header_block_resyncs() {
    let mut stream = b"OPTIONS sip:a@example.com SIP/2.0\r\n".to_vec();
    for i in 0..200 {
        stream.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "x".repeat(20)).as_bytes());
    }
    let a = options("after", "SIP/2.0/TCP h");
    stream.extend_from_slice(b"\r\n");
    stream.extend_from_slice(&a);
    let mut d = StreamDecoder::with_max_size(1024);
    let frames = feed_all(&mut d, &stream);
    assert!(
        matches!(
            frames.first(),
            Some(Frame::Error {
                error: FramingError::TooLarge { .. },
                head: None
            })
        ),
        "{frames:?}"
    );
    assert_eq!(messages(&frames), vec![a]);
}

#[test]
fn framing_missing_or_bad_content_length() {
    let no_cl = b"OPTIONS sip:a@example.com SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\n\r\n";
    let bad_cl = b"OPTIONS sip:a@example.com SIP/2.0\r\nl: ten\r\n\r\n";
    let two_cl = b"OPTIONS sip:a@example.com SIP/2.0\r\nl: 1\r\nContent-Length: 2\r\n\r\nab";
    let a = options("a", "SIP/2.0/TCP h");
    let stream = [&no_cl[..], bad_cl, two_cl, b"\r\n", &a].concat();
    let mut d = StreamDecoder::new();
    let frames = feed_all(&mut d, &stream);
    let errors: Vec<&FramingError> = frames
        .iter()
        .filter_map(|f| match f {
            Frame::Error { error, .. } => Some(error),
            _ => None,
        })
        .collect();
    assert!(matches!(
        errors.as_slice(),
        [
            FramingError::MissingContentLength,
            FramingError::BadContentLength(_),
            FramingError::BadContentLength(_)
        ]
    ));
    assert_eq!(messages(&frames), vec![a]);
}

/// Deterministic xorshift64*.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A copy of `m` with one byte changed, never CR, LF or anything on the Content-Length line.
fn mutate(rng: &mut Rng, m: &[u8]) -> Vec<u8> {
    let mut out = m.to_vec();
    let cl = m
        .windows(3)
        .position(|w| w == b"\nl:")
        .or_else(|| m.windows(16).position(|w| w == b"\nContent-Length:"))
        .expect("messages carry Content-Length");
    let cl_end = cl + 1 + m[cl + 1..].iter().position(|&b| b == b'\n').expect("eol");
    loop {
        let i = rng.below(m.len());
        if (cl..=cl_end).contains(&i) || m[i] == b'\r' || m[i] == b'\n' {
            continue;
        }
        let b = rng.next() as u8;
        if b == b'\r' || b == b'\n' || b == m[i] {
            continue;
        }
        out[i] = b;
        return out;
    }
}

#[test]
fn framing_fuzz_chunkings_and_mutations() {
    let originals = [
        options("f1", "SIP/2.0/TCP 192.0.2.9:5060"),
        invite("f2"),
        response_200("f3"),
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut delivered_total = 0;
    for round in 0..4000 {
        let mut stream = Vec::new();
        let mut expected = Vec::new();
        for _ in 0..1 + rng.below(8) {
            match rng.below(6) {
                0..=2 => {
                    let m = &originals[rng.below(originals.len())];
                    stream.extend_from_slice(m);
                    expected.push(m.clone());
                }
                3 => {
                    let m = &originals[rng.below(originals.len())];
                    stream.extend(mutate(&mut rng, m));
                }
                4 => stream.extend_from_slice(if rng.below(2) == 0 {
                    b"\r\n\r\n"
                } else {
                    b"\r\n"
                }),
                _ => {
                    // A garbage line of random bytes.
                    for _ in 0..rng.below(60) {
                        stream.push(rng.next() as u8);
                    }
                    stream.extend_from_slice(b"\r\n");
                }
            }
        }
        let mut d = StreamDecoder::with_max_size(if round % 2 == 0 { 65536 } else { 700 });
        let max = if round % 2 == 0 { usize::MAX } else { 700 };
        let mut frames = Vec::new();
        let mut rest = &stream[..];
        while !rest.is_empty() {
            let n = match rng.below(4) {
                0 => 1,
                1 => 1 + rng.below(8),
                2 => 1 + rng.below(200),
                _ => rest.len(),
            }
            .min(rest.len());
            frames.extend(feed_all(&mut d, &rest[..n]));
            rest = &rest[n..];
        }
        let intact: Vec<Vec<u8>> = messages(&frames)
            .into_iter()
            .filter(|m| originals.contains(m))
            .collect();
        let expected: Vec<Vec<u8>> = expected.into_iter().filter(|m| m.len() <= max).collect();
        assert_eq!(intact, expected, "round {round}");
        delivered_total += intact.len();
        // Whatever was delivered parses or fails without panicking.
        for m in messages(&frames) {
            let _ = parse(&m);
        }
    }
    assert!(delivered_total > 4000);

    // Random bytes, random chunks: no panic, and the decoder recovers afterwards.
    for _ in 0..2000 {
        let mut d = StreamDecoder::with_max_size(1024);
        let len = rng.below(3000);
        let mut junk: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if rng.below(2) == 0 {
            // Splice pieces of real messages into the junk.
            let m = &originals[rng.below(originals.len())];
            let at = rng.below(junk.len() + 1);
            let cut = rng.below(m.len());
            junk.splice(at..at, m[..cut].iter().copied());
        }
        let mut rest = &junk[..];
        while !rest.is_empty() {
            let n = (1 + rng.below(300)).min(rest.len());
            let _ = feed_all(&mut d, &rest[..n]);
            rest = &rest[n..];
        }
        let _ = drain(&mut d);
    }
}

// ---------------------------------------------------------------------------------------------
// Via (pure)
// ---------------------------------------------------------------------------------------------

#[test]
fn via_received_added_when_sent_by_differs() {
    let mut req = request(&options("v1", "SIP/2.0/UDP phone.example.com:5062"));
    assert!(stamp_received(&mut req.headers, addr("198.51.100.7:40000")));
    assert_eq!(
        via_value(&req.headers),
        "SIP/2.0/UDP phone.example.com:5062;branch=z9hG4bKv1;received=198.51.100.7"
    );
}

#[test]
fn via_untouched_when_sent_by_is_the_source_ip() {
    let mut req = request(&options("v2", "SIP/2.0/UDP 198.51.100.7:5060"));
    let before = via_value(&req.headers);
    // The source port does not matter without rport.
    assert!(!stamp_received(
        &mut req.headers,
        addr("198.51.100.7:40000")
    ));
    assert_eq!(via_value(&req.headers), before);
}

#[test]
fn via_empty_rport_is_filled_and_received_added() {
    let bytes = options("v3", "SIP/2.0/UDP 198.51.100.7:5060;rport");
    let mut req = request(&bytes);
    assert!(stamp_received(&mut req.headers, addr("198.51.100.7:40000")));
    assert_eq!(
        via_value(&req.headers),
        "SIP/2.0/UDP 198.51.100.7:5060;rport=40000;branch=z9hG4bKv3;received=198.51.100.7"
    );
    // The stamped message still parses and serialises.
    let again = serialize(&SipMessage::Request(req));
    assert!(parse(&again).is_ok());
}

#[test]
fn via_rport_with_value_and_old_received_and_second_value() {
    let mut req = request(&options(
        "v4",
        "SIP/2.0/UDP 10.0.0.2;rport=1234;received=10.9.9.9, SIP/2.0/UDP proxy.example.com",
    ));
    assert!(stamp_received(&mut req.headers, addr("203.0.113.5:5070")));
    // rport with a value is left alone; received is replaced; the second value is kept.
    assert_eq!(
        via_value(&req.headers),
        "SIP/2.0/UDP 10.0.0.2;rport=1234;received=203.0.113.5, \
         SIP/2.0/UDP proxy.example.com;branch=z9hG4bKv4"
    );
}

#[test]
fn via_ipv6_source_and_sent_by() {
    let mut req = request(&options("v5", "SIP/2.0/UDP [2001:db8::1]:5060;rport"));
    assert!(stamp_received(&mut req.headers, addr("[2001:db8::2]:6000")));
    let top = top_via(&req.headers).expect("top via");
    assert_eq!(top.host, "2001:db8::1");
    assert_eq!(top.param("rport"), Some(Some("6000")));
    assert_eq!(top.param("received"), Some(Some("2001:db8::2")));
    assert_eq!(
        response_route(&top, false).destination,
        Destination::Addr(addr("[2001:db8::2]:6000"))
    );
}

fn route(via: &str, reliable: bool) -> ResponseRoute {
    let req = request(&options("r", via));
    response_route(&top_via(&req.headers).expect("top via"), reliable)
}

#[test]
fn response_routing_rules() {
    // RFC 3581: rport with a value → the received IP at that port.
    assert_eq!(
        route(
            "SIP/2.0/UDP 10.0.0.2:5060;rport=40000;received=203.0.113.5",
            false
        ),
        ResponseRoute {
            same_connection: false,
            destination: Destination::Addr(addr("203.0.113.5:40000")),
        }
    );
    // §18.2.2: received → that IP at the sent-by port.
    assert_eq!(
        route("SIP/2.0/UDP 10.0.0.2:5070;received=203.0.113.5", false).destination,
        Destination::Addr(addr("203.0.113.5:5070"))
    );
    // No received: the sent-by address, port 5060 by default.
    assert_eq!(
        route("SIP/2.0/UDP 203.0.113.5", false).destination,
        Destination::Addr(addr("203.0.113.5:5060"))
    );
    // A host name needs resolution; TLS defaults to 5061.
    assert_eq!(
        route("SIP/2.0/UDP phone.example.com", false).destination,
        Destination::Host("phone.example.com".into(), 5060)
    );
    assert_eq!(
        route("SIP/2.0/TLS phone.example.com", true).destination,
        Destination::Host("phone.example.com".into(), 5061)
    );
    // maddr wins for unreliable transports.
    assert_eq!(
        route(
            "SIP/2.0/UDP 10.0.0.2;maddr=239.1.1.1;received=203.0.113.5",
            false
        )
        .destination,
        Destination::Addr(addr("239.1.1.1:5060"))
    );
    // Reliable: the same connection, falling back to received at the sent-by port.
    assert_eq!(
        route(
            "SIP/2.0/TCP 10.0.0.2:5062;rport=40000;received=203.0.113.5",
            true
        ),
        ResponseRoute {
            same_connection: true,
            destination: Destination::Addr(addr("203.0.113.5:5062")),
        }
    );
}

// ---------------------------------------------------------------------------------------------
// I/O on loopback
// ---------------------------------------------------------------------------------------------

async fn within<T>(f: impl Future<Output = T>) -> T {
    timeout(WAIT, f).await.expect("timed out")
}

async fn next_event(rx: &mut mpsc::Receiver<TransportEvent>) -> TransportEvent {
    within(rx.recv()).await.expect("event channel open")
}

async fn next_incoming(rx: &mut mpsc::Receiver<TransportEvent>) -> Incoming {
    match next_event(rx).await {
        TransportEvent::Message(m) => m,
        TransportEvent::BadMessage(b) => panic!("unexpected bad message: {b:?}"),
    }
}

async fn wait_until(mut cond: impl FnMut() -> bool) {
    within(async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

async fn start(config: TransportConfig) -> (Transports, mpsc::Receiver<TransportEvent>) {
    Transports::bind(config).await.expect("bind")
}

fn loopback_config() -> TransportConfig {
    TransportConfig {
        udp: vec![addr("127.0.0.1:0")],
        tcp: vec![addr("127.0.0.1:0")],
        ..TransportConfig::default()
    }
}

fn call_id(msg: &SipMessage) -> String {
    let headers = match msg {
        SipMessage::Request(r) => &r.headers,
        SipMessage::Response(r) => &r.headers,
    };
    headers
        .iter()
        .find_map(|h| match h {
            Header::CallId(c) => Some(c.value().to_owned()),
            _ => None,
        })
        .expect("Call-ID")
}

/// Reads one framed message from a client stream.
async fn read_message(stream: &mut TcpStream, d: &mut StreamDecoder) -> Vec<u8> {
    within(async {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(f) = d.next_frame() {
                if let Frame::Message(m) = f {
                    return m;
                }
                continue;
            }
            let n = stream.read(&mut buf).await.expect("read");
            assert!(n > 0, "connection closed");
            d.feed(&buf[..n]);
        }
    })
    .await
}

#[tokio::test]
async fn udp_request_stamped_and_response_routed_to_rport() {
    let (t, mut rx) = start(loopback_config()).await;
    let gw = t.local_addrs().udp[0];
    let phone = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let phone_addr = phone.local_addr().expect("addr");
    // The phone believes it is 192.0.2.1:5060 (behind a NAT).
    phone
        .send_to(&options("u1", "SIP/2.0/UDP 192.0.2.1:5060;rport"), gw)
        .await
        .expect("send");
    let inc = next_incoming(&mut rx).await;
    assert_eq!(inc.source, phone_addr);
    assert_eq!(inc.transport, Transport::Udp);
    assert_eq!(inc.local, gw);
    let SipMessage::Request(req) = inc.message else {
        panic!("request expected")
    };
    assert_eq!(
        via_value(&req.headers),
        format!(
            "SIP/2.0/UDP 192.0.2.1:5060;rport={};branch=z9hG4bKu1;received=127.0.0.1",
            phone_addr.port()
        )
    );
    // The response goes to the source port (rport), not to 192.0.2.1:5060.
    let resp = response_for(&req, 200, "OK");
    let used = t
        .send_response(&resp, inc.transport, inc.local)
        .await
        .expect("send response");
    assert_eq!(used, None);
    let mut buf = vec![0u8; 65536];
    let (n, from) = within(phone.recv_from(&mut buf)).await.expect("recv");
    assert_eq!(from, gw);
    match parse(&buf[..n]).expect("parses") {
        SipMessage::Response(r) => assert_eq!(r.status_code.code(), 200),
        SipMessage::Request(_) => panic!("response expected"),
    }
}

#[tokio::test]
async fn udp_oversize_dropped_and_bad_datagram_answerable() {
    let (t, mut rx) = start(TransportConfig {
        max_message_size: 1024,
        ..loopback_config()
    })
    .await;
    let gw = t.local_addrs().udp[0];
    let phone = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let phone_addr = phone.local_addr().expect("addr");
    let mut big = options("big", "SIP/2.0/UDP 127.0.0.1");
    big.extend(std::iter::repeat_n(b'x', 2000));
    phone.send_to(&big, gw).await.expect("send");
    // A CSeq whose method differs from the request's: answerable with 400.
    let bad = String::from_utf8(options("bad", "SIP/2.0/UDP 127.0.0.1;rport"))
        .expect("utf8")
        .replace("CSeq: 1 OPTIONS", "CSeq: 1 INVITE");
    phone.send_to(bad.as_bytes(), gw).await.expect("send");
    phone.send_to(b"\r\n\r\n", gw).await.expect("send");
    phone
        .send_to(&options("ok", "SIP/2.0/UDP 127.0.0.1"), gw)
        .await
        .expect("send");
    match next_event(&mut rx).await {
        TransportEvent::BadMessage(b) => {
            assert_eq!(b.source, phone_addr);
            assert!(matches!(b.error, BadMessageError::Parse(_)));
            let reply = b.reply.expect("answerable");
            assert_eq!(reply.status_code.code(), 400);
            // The reply's Via is stamped, so it routes back to the phone's port.
            let top = top_via(&reply.headers).expect("via");
            assert_eq!(
                response_route(&top, false).destination,
                Destination::Addr(phone_addr)
            );
        }
        other => panic!("{other:?}"),
    }
    let inc = next_incoming(&mut rx).await;
    assert_eq!(call_id(&inc.message), "ok@example.com");
    assert_eq!(t.stats().udp_too_large, 1);
    assert_eq!(t.stats().udp_bad, 1);
}

#[tokio::test]
async fn tcp_two_messages_in_one_write_and_byte_by_byte() {
    let (t, mut rx) = start(loopback_config()).await;
    let gw = t.local_addrs().tcp[0];
    let mut phone = TcpStream::connect(gw).await.expect("connect");
    phone.set_nodelay(true).expect("nodelay");
    let phone_addr = phone.local_addr().expect("addr");
    let both = [invite("t1"), options("t2", "SIP/2.0/TCP 127.0.0.1")].concat();
    phone.write_all(&both).await.expect("write");
    let a = next_incoming(&mut rx).await;
    let b = next_incoming(&mut rx).await;
    assert_eq!(call_id(&a.message), "t1@example.com");
    assert_eq!(call_id(&b.message), "t2@example.com");
    assert_eq!(a.source, phone_addr);
    assert_eq!(a.local, gw);
    assert!(matches!(a.transport, Transport::Tcp(_)));
    assert_eq!(a.transport, b.transport);
    // The INVITE's top Via got received and rport.
    let SipMessage::Request(req) = &a.message else {
        panic!("request")
    };
    let top = top_via(&req.headers).expect("via");
    assert_eq!(top.param("received"), Some(Some("127.0.0.1")));
    assert_eq!(
        top.param("rport"),
        Some(Some(phone_addr.port().to_string().as_str()))
    );

    for b in invite("t3") {
        phone.write_all(&[b]).await.expect("write");
        phone.flush().await.expect("flush");
    }
    let c = next_incoming(&mut rx).await;
    assert_eq!(call_id(&c.message), "t3@example.com");
    assert_eq!(c.transport, a.transport);
}

#[tokio::test]
async fn tcp_garbage_ping_and_oversize() {
    let (t, mut rx) = start(TransportConfig {
        max_message_size: 2048,
        ..loopback_config()
    })
    .await;
    let gw = t.local_addrs().tcp[0];
    let mut phone = TcpStream::connect(gw).await.expect("connect");

    // Garbage between two messages.
    let junk = b"GET / HTTP/1.1\r\n\x00\x01\xff\r\n";
    phone
        .write_all(
            &[
                options("g1", "SIP/2.0/TCP h"),
                junk.to_vec(),
                options("g2", "SIP/2.0/TCP h"),
            ]
            .concat(),
        )
        .await
        .expect("write");
    assert_eq!(
        call_id(&next_incoming(&mut rx).await.message),
        "g1@example.com"
    );
    assert_eq!(
        call_id(&next_incoming(&mut rx).await.message),
        "g2@example.com"
    );
    assert_eq!(t.stats().tcp_garbage_bytes, junk.len() as u64);

    // CRLF CRLF ping → CRLF pong.
    phone.write_all(b"\r\n\r\n").await.expect("write");
    let mut pong = [0u8; 2];
    within(phone.read_exact(&mut pong)).await.expect("pong");
    assert_eq!(&pong, b"\r\n");
    assert_eq!(t.stats().pings, 1);

    // Oversize: answered with 513 from the header block, the body skipped, the stream goes on.
    let big = String::from_utf8(options("huge", "SIP/2.0/TCP h"))
        .expect("utf8")
        .replace("Content-Length: 0", "Content-Length: 5000");
    let mut stream = big.into_bytes();
    stream.extend(std::iter::repeat_n(b'z', 5000));
    stream.extend(options("g3", "SIP/2.0/TCP h"));
    phone.write_all(&stream).await.expect("write");
    match next_event(&mut rx).await {
        TransportEvent::BadMessage(b) => {
            assert!(matches!(
                b.error,
                BadMessageError::Framing(FramingError::TooLarge { .. })
            ));
            assert_eq!(b.reply.expect("answerable").status_code.code(), 513);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        call_id(&next_incoming(&mut rx).await.message),
        "g3@example.com"
    );
    assert_eq!(t.connection_count(), 1);
}

#[tokio::test]
async fn tcp_response_reuses_the_phones_connection() {
    let (t, mut rx) = start(loopback_config()).await;
    let gw = t.local_addrs().tcp[0];
    let mut phone = TcpStream::connect(gw).await.expect("connect");
    let phone_addr = phone.local_addr().expect("addr");
    // The Via names an address nobody listens on (the phone is behind a NAT).
    phone
        .write_all(&options("c1", "SIP/2.0/TCP 192.0.2.1:5060;rport"))
        .await
        .expect("write");
    let inc = next_incoming(&mut rx).await;
    let Transport::Tcp(id) = inc.transport else {
        panic!("tcp expected")
    };
    let SipMessage::Request(req) = &inc.message else {
        panic!("request")
    };
    let resp = response_for(req, 200, "OK");
    let used = t
        .send_response(&resp, inc.transport, inc.local)
        .await
        .expect("send");
    assert_eq!(used, Some(id));
    let mut d = StreamDecoder::new();
    let got = read_message(&mut phone, &mut d).await;
    assert!(matches!(parse(&got), Ok(SipMessage::Response(_))));

    // A new request to the phone's address reuses its connection too.
    assert_eq!(t.connection_to(phone_addr), Some(id));
    let req2 = options("c2", "SIP/2.0/TCP 127.0.0.1");
    let used = t.send(Target::Tcp(phone_addr), &req2).await.expect("send");
    assert_eq!(used, Some(id));
    assert_eq!(read_message(&mut phone, &mut d).await, req2);
    assert_eq!(t.connection_count(), 1);
    assert_eq!(t.stats().tcp_connected, 0);
}

#[tokio::test]
async fn tcp_outgoing_connection_is_reused_for_the_answer() {
    let (t, mut rx) = start(loopback_config()).await;
    let peer = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let peer_addr = peer.local_addr().expect("addr");
    let req = options("o1", "SIP/2.0/TCP 127.0.0.1");
    let (sent, accepted) = tokio::join!(t.send(Target::Tcp(peer_addr), &req), peer.accept());
    let id = sent.expect("send").expect("a connection");
    let (mut conn, _) = accepted.expect("accept");
    let mut d = StreamDecoder::new();
    assert_eq!(read_message(&mut conn, &mut d).await, req);
    // The peer answers on the same connection.
    conn.write_all(&response_200("o1")).await.expect("write");
    let inc = next_incoming(&mut rx).await;
    assert_eq!(inc.transport, Transport::Tcp(id));
    assert_eq!(inc.source, peer_addr);
    // A second send reuses it.
    let used = t.send(Target::Tcp(peer_addr), &req).await.expect("send");
    assert_eq!(used, Some(id));
    assert_eq!(read_message(&mut conn, &mut d).await, req);
    assert_eq!(t.stats().tcp_connected, 1);
}

#[tokio::test]
async fn tcp_idle_connection_closed() {
    let (t, mut rx) = start(TransportConfig {
        tcp_idle_timeout: Duration::from_millis(200),
        ..loopback_config()
    })
    .await;
    let gw = t.local_addrs().tcp[0];
    let mut phone = TcpStream::connect(gw).await.expect("connect");
    phone
        .write_all(&options("i1", "SIP/2.0/TCP 127.0.0.1"))
        .await
        .expect("write");
    let inc = next_incoming(&mut rx).await;
    assert_eq!(t.connection_count(), 1);
    // The gateway closes the connection: the phone reads EOF.
    let mut buf = [0u8; 16];
    let n = within(phone.read(&mut buf)).await.unwrap_or(0);
    assert_eq!(n, 0);
    wait_until(|| t.connection_count() == 0).await;
    assert_eq!(t.stats().tcp_idle_closed, 1);
    // Sending on the closed connection fails without a fallback.
    let Transport::Tcp(id) = inc.transport else {
        panic!("tcp")
    };
    assert!(t
        .send(Target::Connection { id, fallback: None }, b"x")
        .await
        .is_err());
}

#[tokio::test]
async fn several_listeners_share_one_event_stream() {
    let (t, mut rx) = start(TransportConfig {
        udp: vec![addr("127.0.0.1:0"), addr("127.0.0.1:0")],
        tcp: vec![addr("127.0.0.1:0"), addr("127.0.0.1:0")],
        ..TransportConfig::default()
    })
    .await;
    let l = t.local_addrs().clone();
    assert_eq!((l.udp.len(), l.tcp.len()), (2, 2));
    let phone = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    for (i, a) in l.udp.iter().enumerate() {
        phone
            .send_to(&options(&format!("m{i}"), "SIP/2.0/UDP 127.0.0.1"), a)
            .await
            .expect("send");
        let inc = next_incoming(&mut rx).await;
        assert_eq!(inc.local, *a);
    }
    for (i, a) in l.tcp.iter().enumerate() {
        let mut s = TcpStream::connect(a).await.expect("connect");
        s.write_all(&options(&format!("n{i}"), "SIP/2.0/TCP 127.0.0.1"))
            .await
            .expect("write");
        let inc = next_incoming(&mut rx).await;
        assert_eq!(inc.local, *a);
    }
}

#[test]
fn framing_pathological_garbage_is_cheap() {
    // Long lines of non-token bytes and many words: resynchronising must stay linear.
    let a = options("after", "SIP/2.0/TCP h");
    for shape in [&b"@"[..], b"@ ", b"a@ ", b"SIP/", b"SIP/2.0 ", b"x:y "] {
        let mut junk: Vec<u8> = shape.iter().copied().cycle().take(60_000).collect();
        junk.extend_from_slice(b"\r\n");
        let stream = [junk, a.clone()].concat();
        for chunk in [stream.len(), 100] {
            let mut d = StreamDecoder::new();
            let mut frames = Vec::new();
            for c in stream.chunks(chunk) {
                frames.extend(feed_all(&mut d, c));
            }
            assert_eq!(messages(&frames), vec![a.clone()], "{shape:?}");
        }
    }
}

#[tokio::test]
async fn dropping_the_handle_stops_everything() {
    let (t, mut rx) = start(loopback_config()).await;
    let gw = t.local_addrs().tcp[0];
    let mut phone = TcpStream::connect(gw).await.expect("connect");
    phone
        .write_all(&options("d1", "SIP/2.0/TCP 127.0.0.1"))
        .await
        .expect("write");
    let _ = next_incoming(&mut rx).await;
    drop(t);
    // Every task ends: the event stream ends and the connection is closed.
    assert!(within(rx.recv()).await.is_none());
    let mut buf = [0u8; 16];
    assert_eq!(within(phone.read(&mut buf)).await.unwrap_or(0), 0);
}

#[tokio::test]
async fn tcp_send_does_not_wait_for_a_stalled_reader() {
    // One event slot: the connection's reader stalls while the consumer is busy sending.
    let (t, mut rx) = start(TransportConfig {
        channel_capacity: 1,
        ..loopback_config()
    })
    .await;
    let gw = t.local_addrs().tcp[0];
    let mut phone = TcpStream::connect(gw).await.expect("connect");
    let phone_addr = phone.local_addr().expect("addr");
    let burst: Vec<u8> = (0..5)
        .flat_map(|i| options(&format!("s{i}"), "SIP/2.0/TCP 127.0.0.1"))
        .collect();
    phone.write_all(&burst).await.expect("write");
    let first = next_incoming(&mut rx).await;
    // Wait until the reader has filled the channel again and is blocked on the next event.
    wait_until(|| rx.len() == 1).await;
    let req = options("out", "SIP/2.0/TCP 127.0.0.1");
    let used = within(t.send(Target::Tcp(phone_addr), &req))
        .await
        .expect("send");
    assert_eq!(Some(first.transport), used.map(Transport::Tcp));
    let mut d = StreamDecoder::new();
    assert_eq!(read_message(&mut phone, &mut d).await, req);
    for i in 1..5 {
        let inc = next_incoming(&mut rx).await;
        assert_eq!(call_id(&inc.message), format!("s{i}@example.com"));
    }
}

/// Issue 16: a datagram that waited in the socket behind others while the listener was held
/// up carries that wait (`socket_wait`, from the kernel's stamp), and overload control counts
/// it even when the core's queue is empty; the first datagram after the listener woke does
/// not (its wait was the listener's wake-up, not a queue).
#[tokio::test]
async fn udp_socket_wait_is_what_a_datagram_waited_behind_others() {
    // One event slot: the listener stalls on the full channel while datagrams pile up.
    let (t, mut rx) = start(TransportConfig {
        channel_capacity: 1,
        ..loopback_config()
    })
    .await;
    let gw = t.local_addrs().udp[0];
    // The first socket to ask turns the kernel's arrival stamps on from a deferred work item
    // (until then a datagram is stamped when it is read): let it run.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let phone = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    for i in 0..6 {
        let m = options(&format!("w{i}"), "SIP/2.0/UDP 127.0.0.1");
        phone.send_to(&m, gw).await.expect("send");
    }
    tokio::time::sleep(Duration::from_millis(120)).await;
    let mut got = Vec::new();
    for _ in 0..6 {
        got.push(next_incoming(&mut rx).await);
    }
    let ids: Vec<String> = got.iter().map(|m| call_id(&m.message)).collect();
    let want: Vec<String> = (0..6).map(|i| format!("w{i}@example.com")).collect();
    assert_eq!(ids, want);
    let ms = Duration::from_millis;
    // The first was read as soon as the listener woke.
    assert_eq!(got[0].socket_wait, Duration::ZERO);
    // The last ones were read only once the consumer took events, 120 ms later.
    for m in &got[3..] {
        assert!(m.socket_wait >= ms(100), "{:?}", m.socket_wait);
        assert!(m.socket_wait < ms(1000), "{:?}", m.socket_wait);
        // The core read each with nothing queued behind it: the socket's wait counts; with
        // a queue behind it, the core's own wait (since the listener read it) does.
        assert_eq!(sipnet::queue_wait(m, 0), m.socket_wait);
        assert!(sipnet::queue_wait(m, 1) < m.socket_wait);
    }
    assert_eq!(t.stats().udp_kernel_drops, 0);
}

/// The kernel's drops at a full listener socket are counted (`SO_RXQ_OVFL`), learnt with the
/// next datagram read.
#[tokio::test]
async fn udp_kernel_drops_at_a_full_socket_are_counted() {
    let (t, mut rx) = start(TransportConfig {
        channel_capacity: 1,
        // The smallest buffer the kernel books (about 4.6 kB): a few datagrams.
        udp_recv_buffer: 1,
        ..loopback_config()
    })
    .await;
    let gw = t.local_addrs().udp[0];
    let phone = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    for i in 0..40 {
        let m = options(&format!("k{i}"), "SIP/2.0/UDP 127.0.0.1");
        phone.send_to(&m, gw).await.expect("send");
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut read = 0u64;
    while let Ok(Some(_)) = timeout(Duration::from_millis(300), rx.recv()).await {
        read += 1;
    }
    assert!(read < 40, "the buffer held every datagram: {read}");
    // One more datagram brings the count.
    phone
        .send_to(&options("last", "SIP/2.0/UDP 127.0.0.1"), gw)
        .await
        .expect("send");
    let last = next_incoming(&mut rx).await;
    assert_eq!(call_id(&last.message), "last@example.com");
    assert_eq!(t.stats().udp_kernel_drops, 40 - read);
}

// ---------------------------------------------------------------------------------------------
// The one event loop (`sipnet::drive`)
// ---------------------------------------------------------------------------------------------

/// A user agent that answers every request 200, has one timer and takes numbers as its own
/// input (99: it has finished); it reports what happened on `log`.
struct Echo {
    transports: Transports,
    tl: sip_core::transaction::TransactionLayer<sipnet::Peer>,
    deadline: Option<std::time::Instant>,
    fired: Vec<std::time::Instant>,
    inputs: mpsc::UnboundedReceiver<u32>,
    seen: Vec<u32>,
    log: mpsc::UnboundedSender<String>,
}

impl sipnet::UserAgent for Echo {
    type Input = u32;

    fn sip(
        &mut self,
    ) -> (
        &Transports,
        &mut sip_core::transaction::TransactionLayer<sipnet::Peer>,
    ) {
        (&self.transports, &mut self.tl)
    }

    fn next_deadline(&mut self) -> Option<std::time::Instant> {
        self.deadline
    }

    fn on_timer(&mut self, now: std::time::Instant) {
        if self.deadline.is_some_and(|d| d <= now) {
            self.deadline = None;
            self.fired.push(now);
            let _ = self.log.send("timer".into());
        }
    }

    async fn input(&mut self) -> Option<u32> {
        self.inputs.recv().await
    }

    fn on_input(&mut self, n: u32) {
        self.seen.push(n);
        let _ = self.log.send(format!("input {n}"));
    }

    fn on_event(
        &mut self,
        ev: sip_core::transaction::Event<sipnet::Peer>,
        now: std::time::Instant,
    ) {
        if let sip_core::transaction::Event::Request { key, request, .. } = ev {
            let id = call_id(&SipMessage::Request(request.clone()));
            let _ = self.log.send(format!("request {id}"));
            let ok = response_for(&request, 200, "OK");
            self.tl.send_response(&key, ok, now).expect("answered");
        }
    }

    async fn finished(&mut self) -> bool {
        self.seen.last() == Some(&99)
    }
}

#[tokio::test]
async fn drive_answers_messages_runs_timers_and_inputs_and_stops_when_finished() {
    let (transports, mut events, local) = Transports::bind_udp(addr("127.0.0.1:0"))
        .await
        .expect("bind");
    let (input_tx, inputs) = mpsc::unbounded_channel();
    let (log, mut log_rx) = mpsc::unbounded_channel();
    let deadline = std::time::Instant::now() + Duration::from_millis(300);
    let mut ua = Echo {
        transports,
        tl: sip_core::transaction::TransactionLayer::new(Default::default()),
        deadline: Some(deadline),
        fired: Vec::new(),
        inputs,
        seen: Vec::new(),
        log,
    };
    let task = tokio::spawn(async move {
        sipnet::drive(&mut ua, &mut events).await;
        ua
    });
    // A request is handed to the UA, its answer goes out.
    let phone = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let via = format!("SIP/2.0/UDP {}", phone.local_addr().expect("addr"));
    phone
        .send_to(&options("drv1", &via), local)
        .await
        .expect("send");
    let mut buf = vec![0u8; 4096];
    let (n, _) = within(phone.recv_from(&mut buf)).await.expect("recv");
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(text.starts_with("SIP/2.0 200 OK\r\n"), "{text}");
    assert!(text.contains("Call-ID: drv1@example.com"), "{text}");
    assert_eq!(
        within(log_rx.recv()).await.as_deref(),
        Some("request drv1@example.com")
    );
    // The UA's own timer fires at its deadline, once.
    assert_eq!(within(log_rx.recv()).await.as_deref(), Some("timer"));
    // Its own inputs reach it, in order; 99 finishes the loop.
    for n in [7, 99] {
        input_tx.send(n).expect("send");
    }
    assert_eq!(within(log_rx.recv()).await.as_deref(), Some("input 7"));
    assert_eq!(within(log_rx.recv()).await.as_deref(), Some("input 99"));
    let ua = within(task).await.expect("the loop ended");
    assert_eq!(ua.seen, vec![7, 99]);
    assert_eq!(ua.fired.len(), 1);
    assert!(ua.fired[0] >= deadline);

    // Its inputs ending ends the loop too.
    let (transports, mut events, _) = Transports::bind_udp(addr("127.0.0.1:0"))
        .await
        .expect("bind");
    let (input_tx, inputs) = mpsc::unbounded_channel();
    let (log, _log_rx) = mpsc::unbounded_channel();
    let mut ua = Echo {
        transports,
        tl: sip_core::transaction::TransactionLayer::new(Default::default()),
        deadline: None,
        fired: Vec::new(),
        inputs,
        seen: Vec::new(),
        log,
    };
    drop(input_tx);
    within(sipnet::drive(&mut ua, &mut events)).await;
    assert!(ua.seen.is_empty() && ua.fired.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Overload at ingress
// ---------------------------------------------------------------------------------------------

fn udp_request(method: &str, id: &str, to_tag: bool) -> Vec<u8> {
    let tag = if to_tag { ";tag=t1" } else { "" };
    format!(
        "{method} sip:example.com SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bK{id}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:1000@example.com>;tag=f{id}\r\n\
         To: <sip:1000@example.com>{tag}\r\n\
         Call-ID: {id}@example.com\r\n\
         CSeq: 1 {method}\r\n\
         Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

#[tokio::test]
async fn a_full_queue_refuses_new_work_at_the_socket_instead_of_leaving_it_to_the_kernel() {
    let (t, mut rx) = start(TransportConfig {
        channel_capacity: 2,
        ..loopback_config()
    })
    .await;
    let overload = sip_core::overload::Overload::default();
    let gate = overload.gate();
    t.set_overload_gate(gate.clone());
    let gw = t.local_addrs().udp[0];
    let phone = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    // The core reads nothing: two REGISTERs fill its queue.
    for i in 0..2 {
        let m = udp_request("REGISTER", &format!("q{i}"), false);
        phone.send_to(&m, gw).await.expect("send");
    }
    wait_until(|| rx.len() == 2).await;
    // The next new requests are answered 503 + Retry-After at once, an OPTIONS is dropped.
    phone
        .send_to(&udp_request("OPTIONS", "o1", false), gw)
        .await
        .expect("send");
    let mut buf = vec![0u8; 4096];
    for i in 2..5 {
        let m = udp_request("REGISTER", &format!("q{i}"), false);
        phone.send_to(&m, gw).await.expect("send");
        let (n, _) = within(phone.recv_from(&mut buf)).await.expect("a 503");
        let text = String::from_utf8_lossy(&buf[..n]).to_string();
        assert!(text.starts_with("SIP/2.0 503 "), "{text}");
        assert!(text.contains(&format!("q{i}@example.com")), "{text}");
        assert!(text.contains("Retry-After: 2"), "{text}");
    }
    // An in-dialog request is never refused: it waits for room and arrives.
    phone
        .send_to(&udp_request("BYE", "b1", true), gw)
        .await
        .expect("send");
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(call_id(&next_incoming(&mut rx).await.message));
    }
    assert_eq!(ids, ["q0@example.com", "q1@example.com", "b1@example.com"]);
    assert_eq!(gate.full_refusals(), 4);
    let c = gate.counters();
    assert_eq!((c.rejected, c.dropped_low), (3, 1));
}

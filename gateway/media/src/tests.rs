//! Relay tests on loopback with real UDP sockets. Every wait is for a condition, bounded by a
//! timeout; each test uses its own port block so that tests can run in parallel.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::time::timeout;

use super::*;

const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const WAIT: Duration = Duration::from_secs(3);

fn relay(min: u16, max: u16) -> MediaRelay {
    MediaRelay::new(RelayConfig::new(LO, LO, min, max)).unwrap()
}

async fn phone() -> UdpSocket {
    UdpSocket::bind((LO, 0)).await.unwrap()
}

fn addr(s: &UdpSocket) -> SocketAddr {
    s.local_addr().unwrap()
}

/// An RTP packet: version 2, `pt`, `seq`, `ts`, SSRC 0x11223344, then `payload`.
fn rtp(pt: u8, seq: u16, ts: u32, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, pt & 0x7f];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&ts.to_be_bytes());
    p.extend_from_slice(&0x1122_3344u32.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// An RTCP receiver report with no report blocks.
fn rtcp_rr(ssrc: u32) -> Vec<u8> {
    let mut p = vec![0x80, 201, 0, 1];
    p.extend_from_slice(&ssrc.to_be_bytes());
    p
}

async fn recv(s: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = [0u8; 4096];
    let (n, from) = timeout(WAIT, s.recv_from(&mut buf))
        .await
        .expect("timed out waiting for a datagram")
        .unwrap();
    (buf[..n].to_vec(), from)
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Two bridged legs, each with a phone whose SDP address is its real one.
async fn call(r: &MediaRelay) -> (Leg, Leg, UdpSocket, UdpSocket) {
    let (a, b) = (r.leg().await.unwrap(), r.leg().await.unwrap());
    let (pa, pb) = (phone().await, phone().await);
    a.set_remote(addr(&pa), None);
    b.set_remote(addr(&pb), None);
    bridge(&a, &b).unwrap();
    (a, b, pa, pb)
}

#[tokio::test]
async fn bridged_rtp_flows_both_ways_byte_identical() {
    let r = relay(21000, 21099);
    let (a, b, pa, pb) = call(&r).await;
    assert_eq!(a.local_rtp().port() % 2, 0);
    assert_eq!(a.local_rtcp().port(), a.local_rtp().port() + 1);
    for i in 0..20u16 {
        let p = rtp(0, 1000 + i, u32::from(i) * 160, &[i as u8; 160]);
        pa.send_to(&p, a.local_rtp()).await.unwrap();
        let (got, from) = recv(&pb).await;
        assert_eq!(got, p);
        assert_eq!(from, b.local_rtp(), "sent out of b's socket");
        let q = rtp(8, 7000 + i, u32::from(i) * 160, &[0xd5; 160]);
        pb.send_to(&q, b.local_rtp()).await.unwrap();
        let (got, from) = recv(&pa).await;
        assert_eq!(got, q);
        assert_eq!(from, a.local_rtp());
    }
    let (sa, sb) = (a.stats(), b.stats());
    assert_eq!((sa.rtp_packets_in, sa.rtp_packets_out), (20, 20));
    assert_eq!((sb.rtp_packets_in, sb.rtp_packets_out), (20, 20));
    assert_eq!(sa.rtp_bytes_in, 20 * 172);
    assert_eq!(sb.rtp_bytes_out, 20 * 172);
    assert_eq!((sa.expected, sa.lost), (20, 0));
    assert_eq!(sa.payload_types_seen, vec![0]);
    assert_eq!(sb.payload_types_seen, vec![8]);
    assert_eq!(sa.latched_source, Some(addr(&pa)));
}

#[tokio::test]
async fn rtcp_is_relayed_on_the_rtcp_ports() {
    let r = relay(21100, 21199);
    let (a, b) = (r.leg().await.unwrap(), r.leg().await.unwrap());
    let (pa_rtp, pa_rtcp, pb_rtp, pb_rtcp) =
        (phone().await, phone().await, phone().await, phone().await);
    a.set_remote(addr(&pa_rtp), Some(addr(&pa_rtcp)));
    b.set_remote(addr(&pb_rtp), Some(addr(&pb_rtcp)));
    bridge(&a, &b).unwrap();
    let rr = rtcp_rr(1);
    pa_rtcp.send_to(&rr, a.local_rtcp()).await.unwrap();
    let (got, from) = recv(&pb_rtcp).await;
    assert_eq!((got, from), (rr.clone(), b.local_rtcp()));
    let rr2 = rtcp_rr(2);
    pb_rtcp.send_to(&rr2, b.local_rtcp()).await.unwrap();
    let (got, from) = recv(&pa_rtcp).await;
    assert_eq!((got, from), (rr2, a.local_rtcp()));
    let (sa, sb) = (a.stats(), b.stats());
    assert_eq!((sa.rtcp_packets_in, sa.rtcp_packets_out), (1, 1));
    assert_eq!((sb.rtcp_packets_in, sb.rtcp_packets_out), (1, 1));
    assert_eq!(sa.rtp_packets_in, 0, "RTCP is not counted as RTP");
    assert_eq!(sa.latched_rtcp_source, Some(addr(&pa_rtcp)));
    // Default RTCP destination: the SDP RTP port + 1.
    let c = r.leg().await.unwrap();
    c.set_remote("127.0.0.1:4000".parse().unwrap(), None);
    assert_eq!(c.destination().1, Some("127.0.0.1:4001".parse().unwrap()));
}

#[tokio::test]
async fn latching_sends_back_to_the_real_source() {
    let r = relay(21200, 21299);
    let (a, b) = (r.leg().await.unwrap(), r.leg().await.unwrap());
    let pa = phone().await;
    // Phone B's SDP names one port, but its NAT sends from another.
    let (sdp_b, real_b) = (phone().await, phone().await);
    a.set_remote(addr(&pa), None);
    b.set_remote(addr(&sdp_b), None);
    bridge(&a, &b).unwrap();
    real_b
        .send_to(&rtp(0, 1, 0, b"hello"), b.local_rtp())
        .await
        .unwrap();
    assert_eq!(recv(&pa).await.0, rtp(0, 1, 0, b"hello"));
    assert_eq!(b.stats().latched_source, Some(addr(&real_b)));
    assert_eq!(b.destination().0, Some(addr(&real_b)));
    let p = rtp(0, 9, 160, b"to the NAT");
    pa.send_to(&p, a.local_rtp()).await.unwrap();
    let (got, from) = recv(&real_b).await;
    assert_eq!((got, from), (p, b.local_rtp()));
    // RTCP latches independently: still the SDP default (RTP port + 1) until RTCP arrives.
    assert_eq!(
        b.destination().1,
        Some(SocketAddr::new(LO, addr(&sdp_b).port() + 1))
    );
    assert_eq!(b.stats().latched_rtcp_source, None);
    // Nothing went to the SDP address: the first datagram it sees is a marker sent now.
    let marker = phone().await;
    marker.send_to(b"marker", addr(&sdp_b)).await.unwrap();
    assert_eq!(recv(&sdp_b).await.0, b"marker");
}

#[tokio::test]
async fn no_relatch_to_an_attacker_while_the_source_is_active() {
    // Default 2 s re-latch silence: the phone sends just before and after the attack.
    let r = relay(21300, 21399);
    let (a, b, pa, pb) = call(&r).await;
    let attacker = phone().await;
    pa.send_to(&rtp(0, 1, 0, b"legit"), a.local_rtp())
        .await
        .unwrap();
    assert_eq!(recv(&pb).await.0, rtp(0, 1, 0, b"legit"));
    for i in 0..5 {
        attacker
            .send_to(&rtp(0, 500 + i, 0, b"evil"), a.local_rtp())
            .await
            .unwrap();
    }
    wait_until("attacker packets rejected", || {
        a.stats().rejected_packets == 5
    })
    .await;
    pa.send_to(&rtp(0, 2, 160, b"legit2"), a.local_rtp())
        .await
        .unwrap();
    // B hears only the phone; replies still go to the phone.
    assert_eq!(recv(&pb).await.0, rtp(0, 2, 160, b"legit2"));
    pb.send_to(&rtp(0, 1, 0, b"reply"), b.local_rtp())
        .await
        .unwrap();
    assert_eq!(recv(&pa).await.0, rtp(0, 1, 0, b"reply"));
    let s = a.stats();
    assert_eq!(s.latched_source, Some(addr(&pa)));
    assert_eq!((s.rtp_packets_in, s.expected, s.lost), (2, 2, 0));
}

#[tokio::test]
async fn relatch_after_the_source_went_silent() {
    let mut cfg = RelayConfig::new(LO, LO, 21400, 21499);
    cfg.relatch_silence = Duration::from_millis(100);
    let r = MediaRelay::new(cfg).unwrap();
    let (a, _b, pa, pb) = call(&r).await;
    pa.send_to(&rtp(0, 1, 0, b"x"), a.local_rtp())
        .await
        .unwrap();
    recv(&pb).await;
    let moved = phone().await; // the phone's NAT binding changed
    wait_until("silence", || {
        a.idle_for(Instant::now()) >= Duration::from_millis(100)
    })
    .await;
    moved
        .send_to(&rtp(0, 2, 160, b"y"), a.local_rtp())
        .await
        .unwrap();
    assert_eq!(recv(&pb).await.0, rtp(0, 2, 160, b"y"));
    assert_eq!(a.stats().latched_source, Some(addr(&moved)));
}

#[tokio::test]
async fn strict_latching_rejects_other_ips() {
    let mut cfg = RelayConfig::new(LO, LO, 21500, 21599);
    cfg.strict_latching = true;
    let r = MediaRelay::new(cfg).unwrap();
    let (a, _b, pa, pb) = call(&r).await;
    // The SDP claims another IP: loopback sources are not accepted.
    a.set_remote("127.0.0.2:4000".parse().unwrap(), None);
    pa.send_to(&rtp(0, 1, 0, b"x"), a.local_rtp())
        .await
        .unwrap();
    wait_until("rejected", || a.stats().rejected_packets == 1).await;
    // Same IP, other port: latches.
    a.set_remote(SocketAddr::new(LO, 4000), None);
    pa.send_to(&rtp(0, 2, 0, b"y"), a.local_rtp())
        .await
        .unwrap();
    assert_eq!(recv(&pb).await.0, rtp(0, 2, 0, b"y"));
    assert_eq!(a.stats().latched_source, Some(addr(&pa)));
}

#[tokio::test]
async fn stats_for_a_stream_with_gaps() {
    let r = relay(21600, 21699);
    let (a, b, pa, pb) = call(&r).await;
    a.set_clock_rate(8000);
    assert!(a.stats().last_packet_at.is_none());
    // Sequence 65530..=65545 (wrapping) with 3 packets missing; timestamps 1 s apart but sent
    // back to back, so each transit difference is ~8000 units.
    let seqs: Vec<u16> = (0..16u16)
        .map(|i| 65530u16.wrapping_add(i))
        .filter(|s| ![65533, 0, 5].contains(s))
        .collect();
    assert_eq!(seqs.len(), 13);
    for (i, &seq) in seqs.iter().enumerate() {
        let p = rtp(
            if i % 2 == 0 { 0 } else { 101 },
            seq,
            8000 * u32::from(seq.wrapping_sub(65530)),
            b"abc",
        );
        pa.send_to(&p, a.local_rtp()).await.unwrap();
        recv(&pb).await;
    }
    wait_until("13 packets", || a.stats().rtp_packets_in == 13).await;
    let s = a.stats();
    assert_eq!(s.expected, 16);
    assert_eq!(s.lost, 3);
    assert_eq!(s.rtp_bytes_in, 13 * 15);
    assert_eq!(s.payload_types_seen, vec![0, 101]);
    assert_eq!(s.clock_rate, 8000);
    // Arrival gaps ~0, timestamp gaps 8000 (16000 across a missing packet): A.8 over these
    // 12 differences gives J = 5322.3 units; scheduling delays on the test box only lower
    // |D|, so allow 10 % (≈ 60 ms of accumulated stalls).
    assert!((s.jitter - 5322.3).abs() < 532.0, "{}", s.jitter);
    assert!((s.jitter_ms - s.jitter / 8.0).abs() < 1e-6);
    let last = s.last_packet_at.expect("last_packet_at");
    assert!(a.idle_for(last + Duration::from_secs(5)) == Duration::from_secs(5));
    assert_eq!(b.stats().rtp_packets_out, 13);
    assert_eq!(b.stats().rtp_packets_in, 0);
}

#[tokio::test]
async fn jitter_near_zero_for_a_steady_stream() {
    let r = relay(21700, 21799);
    let (a, _b, pa, pb) = call(&r).await;
    // Timestamps follow the actual send times (8 kHz), so a late timer wake-up on a loaded
    // box does not count as jitter: only the relay's own receive delays do.
    let start = Instant::now();
    for i in 0..25u16 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let ts = (start.elapsed().as_micros() * 8 / 1000) as u32;
        pa.send_to(&rtp(0, i, ts, b"z"), a.local_rtp())
            .await
            .unwrap();
        recv(&pb).await;
    }
    let s = a.stats();
    assert_eq!((s.expected, s.lost), (25, 0));
    // Loopback transit is µs; allow for scheduling noise on a loaded 2-core box.
    assert!(s.jitter_ms < 5.0, "{}", s.jitter_ms);
}

#[tokio::test]
async fn invalid_packets_are_counted_and_dropped() {
    let r = relay(21800, 21899);
    let (a, _b, pa, pb) = call(&r).await;
    let mut bad_padding = rtp(0, 1, 0, b"abc");
    bad_padding[0] |= 0x20; // padding flag, last byte ('c' = 99) longer than the packet
    let mut bad_ext = rtp(0, 1, 0, &[]);
    bad_ext[0] |= 0x10; // extension flag without an extension header
    let mut v1 = rtp(0, 1, 0, b"abc");
    v1[0] = 0x40;
    let too_big = rtp(0, 1, 0, &[0u8; 3000]);
    for junk in [
        &b"\x80\x00\x01"[..],
        &[],
        &v1,
        &bad_padding,
        &bad_ext,
        &too_big,
    ] {
        pa.send_to(junk, a.local_rtp()).await.unwrap();
    }
    // Junk on the RTCP port too (an RTP packet is not RTCP).
    pa.send_to(&rtp(0, 1, 0, b"x"), a.local_rtcp())
        .await
        .unwrap();
    let good = rtp(0, 42, 0, b"good");
    pa.send_to(&good, a.local_rtp()).await.unwrap();
    // The first thing B hears is the valid packet.
    assert_eq!(recv(&pb).await.0, good);
    wait_until("invalid counted", || a.stats().invalid_packets == 7).await;
    let s = a.stats();
    assert_eq!((s.rtp_packets_in, s.expected, s.lost), (1, 1, 0));
    assert_eq!(s.rtcp_packets_in, 0);
    assert_eq!(
        s.latched_source,
        Some(addr(&pa)),
        "latched by the valid packet"
    );
}

#[tokio::test]
async fn unbridged_legs_drop_media_but_count_and_latch() {
    let r = relay(21900, 21999);
    let (a, b) = (r.leg().await.unwrap(), r.leg().await.unwrap());
    let (pa, pb) = (phone().await, phone().await);
    a.set_remote("127.0.0.1:9".parse().unwrap(), None);
    b.set_remote(addr(&pb), None);
    pa.send_to(&rtp(0, 1, 0, b"dropped"), a.local_rtp())
        .await
        .unwrap();
    wait_until("counted", || a.stats().rtp_packets_in == 1).await;
    assert_eq!(a.stats().latched_source, Some(addr(&pa)));
    bridge(&a, &b).unwrap();
    pa.send_to(&rtp(0, 2, 0, b"bridged"), a.local_rtp())
        .await
        .unwrap();
    assert_eq!(
        recv(&pb).await.0,
        rtp(0, 2, 0, b"bridged"),
        "first packet was dropped"
    );
    unbridge(&b);
    pa.send_to(&rtp(0, 3, 0, b"dropped again"), a.local_rtp())
        .await
        .unwrap();
    wait_until("counted", || a.stats().rtp_packets_in == 3).await;
    bridge(&b, &a).unwrap();
    pa.send_to(&rtp(0, 4, 0, b"again"), a.local_rtp())
        .await
        .unwrap();
    assert_eq!(recv(&pb).await.0, rtp(0, 4, 0, b"again"));
    assert_eq!(b.stats().rtp_packets_out, 2);
    assert!(matches!(
        bridge(&a, &a.clone()),
        Err(MediaError::SelfBridge)
    ));
}

#[tokio::test]
async fn send_rtp_and_subscribe() {
    let r = relay(22000, 22099);
    let a = r.leg().await.unwrap();
    let p = phone().await;
    let prompt = rtp(0, 1, 0, &[0x7f; 160]);
    assert!(matches!(
        a.send_rtp(&prompt).await,
        Err(MediaError::NoRemote)
    ));
    a.set_remote(addr(&p), None);
    assert_eq!(a.send_rtp(&prompt).await.unwrap(), prompt.len());
    assert_eq!(recv(&p).await, (prompt.clone(), a.local_rtp()));
    assert_eq!(a.stats().rtp_packets_out, 1);

    let mut rec = a.subscribe();
    let mut rec2 = a.subscribe();
    let spoken = rtp(0, 10, 0, b"spoken");
    p.send_to(&spoken, a.local_rtp()).await.unwrap();
    let got = timeout(WAIT, rec.recv()).await.unwrap().unwrap();
    assert_eq!(got, spoken);
    assert_eq!(timeout(WAIT, rec2.recv()).await.unwrap().unwrap(), spoken);
    // Injection goes to the latched source; the non-waiting variant too.
    drop(rec2);
    a.send_rtp(&prompt).await.unwrap();
    assert_eq!(recv(&p).await.0, prompt);
    assert_eq!(a.try_send_rtp(&spoken).unwrap(), spoken.len());
    assert_eq!(recv(&p).await.0, spoken);
    assert_eq!(a.stats().rtp_packets_out, 3);

    a.close();
    assert!(a.is_closed());
    assert!(matches!(a.send_rtp(&prompt).await, Err(MediaError::Closed)));
    assert!(matches!(a.try_send_rtp(&prompt), Err(MediaError::Closed)));
    // The task ends: the subscription channel closes.
    assert_eq!(timeout(WAIT, rec.recv()).await.unwrap(), None);
}

#[tokio::test]
async fn ports_exhaust_and_are_reused_after_drop() {
    // 22100..=22105: three pairs, one held by "another process".
    let squatter = std::net::UdpSocket::bind((LO, 22103)).unwrap();
    let r = relay(22100, 22105);
    let a = r.leg().await.unwrap();
    let b = r.leg().await.unwrap();
    let mut ports = vec![a.local_rtp().port(), b.local_rtp().port()];
    ports.sort_unstable();
    assert_eq!(
        ports,
        vec![22100, 22104],
        "the pair with a busy RTCP port is skipped"
    );
    assert!(matches!(
        r.leg().await,
        Err(MediaError::PortsExhausted {
            min: 22100,
            max: 22105
        })
    ));
    assert_eq!(r.ports_in_use(), 2);
    drop(squatter);
    let c = r.leg().await.unwrap();
    assert_eq!(c.local_rtp().port(), 22102);
    // Dropping every handle of a leg (even while bridged) frees its pair.
    bridge(&a, &b).unwrap();
    let a_port = a.local_rtp().port();
    let a2 = a.clone();
    drop(a);
    assert_eq!(r.ports_in_use(), 3, "a clone still holds the leg");
    drop(a2);
    wait_until("pair released", || r.ports_in_use() == 2).await;
    let d = r.leg().await.unwrap();
    assert_eq!(d.local_rtp().port(), a_port);
    assert!(matches!(
        r.leg().await,
        Err(MediaError::PortsExhausted { .. })
    ));
    drop((b, c, d));
    wait_until("all released", || r.ports_in_use() == 0).await;
}

#[test]
fn leg_outside_a_runtime_is_an_error_not_a_panic() {
    let r = relay(22200, 22299);
    assert!(matches!(r.leg_now(), Err(MediaError::NoRuntime)));
    assert_eq!(r.ports_in_use(), 0);
}

/// A relay with its own thread relays without the caller's runtime (and from a plain
/// thread): two phones exchange a packet through a bridge.
#[test]
fn relay_on_its_own_thread() {
    let cfg = RelayConfig::new(
        "127.0.0.1".parse().expect("ip"),
        "127.0.0.1".parse().expect("ip"),
        22400,
        22499,
    );
    let r = MediaRelay::with_own_thread(cfg).expect("relay");
    let (a, b) = (r.leg_now().expect("leg a"), r.leg_now().expect("leg b"));
    let pa = std::net::UdpSocket::bind("127.0.0.1:0").expect("phone a");
    let pb = std::net::UdpSocket::bind("127.0.0.1:0").expect("phone b");
    pb.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    a.set_remote(pa.local_addr().expect("addr"), None);
    b.set_remote(pb.local_addr().expect("addr"), None);
    bridge(&a, &b).expect("bridge");
    let mut pkt = vec![0x80u8, 0, 0, 1, 0, 0, 0, 160, 0, 0, 0, 7];
    pkt.extend(std::iter::repeat_n(0xd5, 160));
    pa.send_to(&pkt, a.local_rtp()).expect("send");
    let mut buf = [0u8; 2048];
    let (n, from) = pb.recv_from(&mut buf).expect("relayed packet");
    assert_eq!(&buf[..n], &pkt[..]);
    assert_eq!(from, b.local_rtp());
}

/// A relay with a thread per core (issue 16) spreads its legs over the threads, the least
/// loaded first, and bridges legs that run on different threads in both directions.
#[test]
fn relay_threads_spread_legs_and_bridge_across_them() {
    let cfg = RelayConfig::new(
        "127.0.0.1".parse().expect("ip"),
        "127.0.0.1".parse().expect("ip"),
        22600,
        22699,
    );
    let r = MediaRelay::with_threads(cfg, 2).expect("relay");
    assert_eq!(r.legs_per_thread(), [0, 0]);
    let legs: Vec<_> = (0..4)
        .map(|i| r.leg_now().unwrap_or_else(|e| panic!("leg {i}: {e}")))
        .collect();
    assert_eq!(r.legs_per_thread(), [2, 2]);
    // Legs 0 and 1 went to different threads (each new leg to the least loaded one).
    relay_both_ways(&legs[0], &legs[1]);
    // Closing legs 0 and 2 (one per thread... or both on one): the next leg goes where
    // fewer legs remain.
    let mut legs = legs;
    drop(legs.remove(2));
    drop(legs.remove(0));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while r.legs_per_thread().iter().sum::<usize>() != 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            r.legs_per_thread()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let before = r.legs_per_thread();
    let _e = r.leg_now().expect("leg e");
    let after = r.legs_per_thread();
    let grown = (0..2)
        .find(|&i| after[i] == before[i] + 1)
        .expect("one thread grew");
    assert_eq!(before[grown], *before.iter().min().expect("two threads"));
}

/// Sends 20 packets each way through the bridge `a` ⇄ `b` and checks each arrives whole
/// from the right leg.
fn relay_both_ways(a: &Leg, b: &Leg) {
    let pa = std::net::UdpSocket::bind("127.0.0.1:0").expect("phone a");
    let pb = std::net::UdpSocket::bind("127.0.0.1:0").expect("phone b");
    for p in [&pa, &pb] {
        p.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
    }
    a.set_remote(pa.local_addr().expect("addr"), None);
    b.set_remote(pb.local_addr().expect("addr"), None);
    bridge(a, b).expect("bridge");
    let mut buf = [0u8; 2048];
    for seq in 1..=20u8 {
        let mut pkt = vec![0x80u8, 0, 0, seq, 0, 0, 0, 160, 0, 0, 0, 7];
        pkt.extend(std::iter::repeat_n(0xd5, 160));
        pa.send_to(&pkt, a.local_rtp()).expect("send a");
        let (n, from) = pb.recv_from(&mut buf).expect("relayed a → b");
        assert_eq!((&buf[..n], from), (&pkt[..], b.local_rtp()));
        pkt[1] = 8;
        pb.send_to(&pkt, b.local_rtp()).expect("send b");
        let (n, from) = pa.recv_from(&mut buf).expect("relayed b → a");
        assert_eq!((&buf[..n], from), (&pkt[..], a.local_rtp()));
    }
    // A send is counted just after it returns: the phone may read the packet first.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let counts = || {
        let (sa, sb) = (a.stats(), b.stats());
        [
            sa.rtp_packets_in,
            sa.rtp_packets_out,
            sb.rtp_packets_in,
            sb.rtp_packets_out,
        ]
    };
    while counts() != [20; 4] {
        assert!(
            std::time::Instant::now() < deadline,
            "counts {:?}",
            counts()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits (generously: the machine may be loaded) until the relay counts `want` legs.
fn wait_legs(r: &MediaRelay, want: &[usize]) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while r.legs_per_thread() != want {
        assert!(
            std::time::Instant::now() < deadline,
            "legs per thread {:?}, want {want:?}",
            r.legs_per_thread()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Issue 16: a stream's two legs share a thread. `leg_pair` puts both on the least loaded
/// thread, `leg_beside` puts a leg on its partner's thread however loaded that is, pairs
/// spread evenly, and a pair relays both ways on its thread.
#[test]
fn a_streams_legs_share_a_thread_and_streams_spread_over_the_threads() {
    let cfg = RelayConfig::new(LO, LO, 22800, 22899);
    let r = MediaRelay::with_threads(cfg, 3).expect("relay");
    let pairs: Vec<(Leg, Leg)> = (0..6)
        .map(|i| r.leg_pair().unwrap_or_else(|e| panic!("pair {i}: {e}")))
        .collect();
    for (a, b) in &pairs {
        let t = r.thread_of(a).expect("on a relay thread");
        assert_eq!(
            r.thread_of(b),
            Some(t),
            "both legs of a stream on one thread"
        );
    }
    assert_eq!(r.legs_per_thread(), [4, 4, 4]);
    // Round by round the pairs went to threads 0, 1, 2, 0, 1, 2.
    let threads: Vec<_> = pairs.iter().filter_map(|(a, _)| r.thread_of(a)).collect();
    assert_eq!(threads, [0, 1, 2, 0, 1, 2]);

    // Beside a leg of the busiest thread: there, not on the least loaded one.
    let extra = r.leg_now().expect("extra leg"); // thread 0: [5, 4, 4]
    assert_eq!(r.thread_of(&extra), Some(0));
    let partner = r.leg_beside(&extra).expect("partner");
    assert_eq!(r.thread_of(&partner), Some(0));
    assert_eq!(r.legs_per_thread(), [6, 4, 4]);
    relay_both_ways(&extra, &partner);

    // A leg of another relay places nothing here: the least loaded thread.
    let other = MediaRelay::with_threads(RelayConfig::new(LO, LO, 23400, 23499), 3).expect("relay");
    let foreign = other.leg_pair().expect("foreign pair").0;
    assert_eq!(r.thread_of(&foreign), None);
    let stranger = r.leg_beside(&foreign).expect("stranger");
    assert_eq!(r.thread_of(&stranger), Some(1));
    drop(stranger);
    wait_legs(&r, &[6, 4, 4]);

    // Closing thread 1's pairs: the next pair goes there.
    let mut pairs = pairs;
    for i in [4, 1] {
        let (a, b) = pairs.remove(i);
        a.close();
        b.close();
    }
    wait_legs(&r, &[6, 0, 4]);
    let (a, b) = r.leg_pair().expect("pair after closes");
    assert_eq!((r.thread_of(&a), r.thread_of(&b)), (Some(1), Some(1)));
    relay_both_ways(&a, &b);
}

/// Pairs opened from several threads at once: each pair on one thread, the threads
/// balanced (the choice and the count are made under one lock), no port handed out twice,
/// and every count back to zero once the legs are gone.
#[test]
fn pairs_opened_concurrently_stay_together_and_balanced() {
    let cfg = RelayConfig::new(LO, LO, 23000, 23399);
    let r = MediaRelay::with_threads(cfg, 4).expect("relay");
    let pairs: Vec<(Leg, Leg)> = std::thread::scope(|s| {
        let openers: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    (0..20)
                        .map(|_| r.leg_pair().expect("pair"))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        openers
            .into_iter()
            .flat_map(|h| h.join().expect("opener"))
            .collect()
    });
    let mut ports = std::collections::HashSet::new();
    for (a, b) in &pairs {
        assert_eq!(r.thread_of(a), r.thread_of(b));
        assert!(ports.insert(a.local_rtp().port()) && ports.insert(b.local_rtp().port()));
    }
    // A leg_pair's second leg may land after other openers' first legs: the threads end
    // within a few pairs of each other, not exactly even.
    let loads = r.legs_per_thread();
    assert_eq!(loads.iter().sum::<usize>(), 160, "{loads:?}");
    let spread = loads
        .iter()
        .max()
        .zip(loads.iter().min())
        .map(|(x, n)| x - n);
    assert!(spread.is_some_and(|d| d <= 8), "unbalanced: {loads:?}");
    assert_eq!(r.ports_in_use(), 160);
    drop(pairs);
    wait_legs(&r, &[0, 0, 0, 0]);
}

#[tokio::test]
async fn leg_now_works_inside_the_runtime() {
    let r = relay(22300, 22399);
    let a = r.leg_now().unwrap();
    let p = phone().await;
    a.set_remote(addr(&p), None);
    a.try_send_rtp(b"x").unwrap();
    assert_eq!(recv(&p).await.0, b"x");
}

#[tokio::test]
async fn invalid_range_is_an_error() {
    assert!(matches!(
        MediaRelay::new(RelayConfig::new(LO, LO, 30001, 30001)),
        Err(MediaError::InvalidPortRange { .. })
    ));
}

#[tokio::test]
async fn rtcp_latches_independently_of_rtp() {
    let r = relay(22400, 22499);
    let (a, b, pa, _pb) = call(&r).await;
    // B's SDP implies RTCP on its RTP port + 1; its NAT sends RTCP from elsewhere.
    let real_rtcp_b = phone().await;
    real_rtcp_b
        .send_to(&rtcp_rr(7), b.local_rtcp())
        .await
        .unwrap();
    wait_until("RTCP latched", || {
        b.stats().latched_rtcp_source == Some(addr(&real_rtcp_b))
    })
    .await;
    assert_eq!(b.stats().latched_source, None, "RTP not latched by RTCP");
    let rr = rtcp_rr(8);
    pa.send_to(&rr, a.local_rtcp()).await.unwrap();
    assert_eq!(recv(&real_rtcp_b).await, (rr, b.local_rtcp()));
}

#[tokio::test]
async fn random_datagrams_never_panic() {
    let r = relay(22500, 22599);
    let (a, _b, pa, pb) = call(&r).await;
    // xorshift: deterministic junk, a third of it with a version-2 first byte.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut buf = [0u8; 64];
    for i in 0..300u32 {
        let len = (next() % 64) as usize;
        for byte in buf.iter_mut().take(len) {
            *byte = next() as u8;
        }
        if i % 3 == 0 && len > 0 {
            buf[0] = 0x80 | (buf[0] & 0x3f);
        }
        let to = if i % 2 == 0 {
            a.local_rtp()
        } else {
            a.local_rtcp()
        };
        pa.send_to(&buf[..len], to).await.unwrap();
    }
    let good = rtp(0, 1, 0, b"still alive");
    pa.send_to(&good, a.local_rtp()).await.unwrap();
    // Whatever junk parsed as RTP/RTCP was relayed; the leg task survived to relay this.
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "valid packet never relayed");
        if recv(&pb).await.0 == good {
            break;
        }
    }
    // The RTCP port's junk may still be queued behind the RTP port's: wait for all of it.
    wait_until("every datagram accounted for", || {
        let s = a.stats();
        s.invalid_packets + s.rtp_packets_in + s.rtcp_packets_in + s.rejected_packets == 301
    })
    .await;
    assert!(a.stats().invalid_packets > 0);
}

/// Injected packets into a leg with an SDES key go out SRTP-protected (the key this leg's
/// phone receives with), relayed ones unchanged; a packet with the peer's SSRC is refused.
#[tokio::test]
async fn injected_rtp_is_srtp_on_a_keyed_leg_and_relayed_rtp_untouched() {
    use crate::srtp::{SdesKey, SrtpSender, Suite};
    let r = relay(22900, 22999);
    let (a, b, pa, pb) = call(&r).await;
    let key = SdesKey::new(1, Suite::AesCm128HmacSha1_80, [5; 16], [6; 14]);
    assert!(!b.has_srtp());
    b.set_srtp(Some(&key), Some(&a));
    assert!(b.has_srtp());
    // The peer's (ciphertext) packet crosses unchanged.
    let relayed = rtp(0, 1, 160, &[0x33; 170]);
    pa.send_to(&relayed, a.local_rtp()).await.unwrap();
    assert_eq!(recv(&pb).await.0, relayed);
    // Music on hold: protected exactly as an SRTP sender with that key does it.
    let mut moh = rtp(0, 7, 1120, &[0xd5; 160]);
    moh[8..12].copy_from_slice(&0x0bad_cafeu32.to_be_bytes());
    let mut reference = SrtpSender::new(&key);
    let want = reference.protect(&moh).unwrap();
    assert_eq!(b.try_send_rtp(&moh).unwrap(), want.len());
    assert_eq!(recv(&pb).await.0, want);
    assert_ne!(want[12..172], moh[12..]);
    // The peer phone's SSRC (0x11223344, under the same key) is refused: no keystream reuse.
    assert!(matches!(
        b.send_rtp(&rtp(0, 8, 1280, &[0xd5; 160])).await,
        Err(MediaError::Srtp(crate::srtp::SrtpError::PeerSsrc(
            0x1122_3344
        )))
    ));
    // Without a key, plain again.
    b.set_srtp(None, None);
    b.send_rtp(&moh).await.unwrap();
    assert_eq!(recv(&pb).await.0, moh);
}

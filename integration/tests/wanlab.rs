//! The WAN lab itself: the wire delays, loses and cuts traffic between the two namespaces, only
//! through the wire, and everything is gone after the lab is dropped.
//!
//! Needs root (CI runs as root). Elsewhere each test prints why it is skipped and passes.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Stdio;
use std::time::{Duration, Instant};

use integration::wanlab::{unavailable, Site, WanLab, WanSpec};
use integration::ServerKind;

fn lab(spec: WanSpec) -> Option<WanLab> {
    if let Some(why) = unavailable() {
        eprintln!("SKIPPED (WAN lab unavailable): {why}");
        return None;
    }
    Some(WanLab::start(spec).expect("start the WAN lab"))
}

/// UDP echo server in site B on port 9000 (a thread, in B's namespace), answering until the
/// socket's read times out for 30 s.
fn echo_in_b(lab: &WanLab) -> SocketAddr {
    let addr = lab.socket_addr(Site::B, 9000);
    let sock = lab
        .run_in(Site::B, move || UdpSocket::bind(addr).expect("bind in B"))
        .expect("run in B");
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(&buf[..n], from);
        }
    });
    addr
}

/// A UDP socket in site A.
fn socket_in_a(lab: &WanLab) -> UdpSocket {
    let sock = lab
        .run_in(Site::A, || {
            UdpSocket::bind((lab.addr(Site::A), 0)).expect("bind in A")
        })
        .expect("run in A");
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    sock
}

/// Sends one datagram and waits for its echo; the round-trip time, or None if none came.
fn ping(sock: &UdpSocket, to: SocketAddr, seq: u32) -> Option<Duration> {
    let t0 = Instant::now();
    sock.send_to(&seq.to_be_bytes(), to).ok()?;
    let mut buf = [0u8; 64];
    loop {
        match sock.recv_from(&mut buf) {
            Ok((4, _)) if buf[..4] == seq.to_be_bytes() => return Some(t0.elapsed()),
            Ok(_) => continue, // a late echo of an earlier probe
            Err(_) => return None,
        }
    }
}

#[test]
fn delay_is_applied_each_way_and_partition_drops_everything() {
    let Some(lab) = lab(WanSpec::new(40, 0.0)) else {
        return;
    };
    let echo = echo_in_b(&lab);
    let sock = socket_in_a(&lab);
    let mut rtts: Vec<Duration> = (0..20).filter_map(|i| ping(&sock, echo, i)).collect();
    assert!(
        rtts.len() >= 18,
        "only {} of 20 echoes without loss",
        rtts.len()
    );
    rtts.sort();
    let median = rtts[rtts.len() / 2];
    // 2 × 40 ms; the wire adds at most a timer tick per direction, a loaded box a little more.
    assert!(
        median >= Duration::from_millis(80) && median < Duration::from_millis(120),
        "median RTT {median:?} for 40 ms one way: {rtts:?}"
    );

    lab.partition();
    assert!(lab.is_partitioned());
    for i in 100..110 {
        assert_eq!(ping(&sock, echo, i), None, "an echo crossed the partition");
    }
    let cut = lab.stats().cut;
    assert!(cut[0] >= 10, "partitioned packets not counted: {cut:?}");

    lab.heal();
    let back = (200..220).find_map(|i| ping(&sock, echo, i));
    assert!(back.is_some(), "no echo after the heal");
}

#[test]
fn loss_drops_about_the_configured_share() {
    let Some(lab) = lab(WanSpec::new(1, 0.10)) else {
        return;
    };
    let echo = echo_in_b(&lab);
    let sock = socket_in_a(&lab);
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let n = 1000;
    let answered = (0..n).filter(|i| ping(&sock, echo, *i).is_some()).count();
    // Each echo crosses twice: P(answer) = 0.9² = 0.81; 1000 tries → σ ≈ 12.
    let share = answered as f64 / n as f64;
    assert!(
        (0.74..=0.88).contains(&share),
        "{answered} of {n} echoes at 10 % loss each way (expected ~810)"
    );
    let st = lab.stats();
    assert!(st.lost[0] > 50 && st.lost[1] > 30, "loss counters: {st:?}");
}

#[test]
fn sites_are_isolated_except_through_the_wire_and_cleaned_up_on_drop() {
    let Some(lab) = lab(WanSpec::new(5, 0.0)) else {
        return;
    };
    let (ns_a, ns_b) = (lab.netns(Site::A).to_owned(), lab.netns(Site::B).to_owned());
    // A site has no route anywhere but the other site (TEST-NET-1 stands for "outside").
    let outside = lab
        .run_in(Site::A, || {
            TcpStream::connect_timeout(
                &SocketAddr::from(([192, 0, 2, 1], 9)),
                Duration::from_millis(300),
            )
        })
        .expect("run in A");
    assert!(outside.is_err(), "site A reached the outside: {outside:?}");
    // A TCP connection from A to B works through the wire.
    let listener = lab
        .run_in(Site::B, || {
            TcpListener::bind((Ipv4Addr::UNSPECIFIED, 7000)).expect("listen in B")
        })
        .expect("run in B");
    let to = lab.socket_addr(Site::B, 7000);
    let stream = lab
        .run_in(Site::A, move || {
            TcpStream::connect_timeout(&to, Duration::from_secs(5))
        })
        .expect("run in A");
    assert!(stream.is_ok(), "A could not connect to B: {stream:?}");
    assert!(listener.accept().is_ok());
    // A process started in a site is killed when the lab goes.
    let mut sleeper = lab
        .command(Site::A, "sleep")
        .arg("600")
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn sleep in A");
    drop(lab);
    let deadline = Instant::now() + Duration::from_secs(10);
    while sleeper.try_wait().expect("try_wait").is_none() {
        assert!(
            Instant::now() < deadline,
            "process in the site survived the lab"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let list = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(
        !list.contains(&ns_a) && !list.contains(&ns_b),
        "namespaces left behind: {list}"
    );
}

#[test]
fn xmpp_server_in_site_a_is_reachable_from_site_b_over_the_wire() {
    let Some(lab) = lab(WanSpec::new(20, 0.0)) else {
        return;
    };
    let server = lab
        .xmpp_server(Site::A, ServerKind::Prosody, &["gw-b"], "secret")
        .expect("Prosody in site A");
    let addr = lab.socket_addr(Site::A, server.c2s_addr().port());
    let t0 = Instant::now();
    let ok = lab
        .run_in(Site::B, move || {
            integration::raw_xmpp::sasl_plain_login(
                addr,
                "fabric.test",
                "gw-b",
                "secret",
                Duration::from_secs(10),
            )
        })
        .expect("run in B")
        .expect("login exchange from B");
    assert!(ok, "gw-b could not log in from site B");
    // Several round trips at 40 ms each: the login really crossed the wire.
    assert!(
        t0.elapsed() >= Duration::from_millis(120),
        "{:?}",
        t0.elapsed()
    );
}

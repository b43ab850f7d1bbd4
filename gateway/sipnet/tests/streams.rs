//! Stream transports under attack and over TLS, on real loopback sockets: connection caps per
//! source and in total, the header timeout (silent and trickling peers), `sips:` only over TLS
//! (RFC 3261 §26.2), SIP over TLS both ways with certificate verification, and reload of the
//! certificate. Certificates are made by the openssl CLI in a private directory.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sip_core::message::{parse, response_for, SipMessage};
use sipnet::{
    BadMessageError, Target, TlsConfig, Transport, TransportConfig, TransportEvent, Transports,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(20);

fn options(id: &str, uri: &str, via: &str) -> Vec<u8> {
    format!(
        "OPTIONS {uri} SIP/2.0\r\n\
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

async fn within<T>(f: impl Future<Output = T>) -> T {
    timeout(WAIT, f).await.expect("timed out")
}

async fn next_event(rx: &mut mpsc::Receiver<TransportEvent>) -> TransportEvent {
    within(rx.recv()).await.expect("event channel open")
}

async fn wait_until(mut cond: impl FnMut() -> bool) {
    within(async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("address")
}

/// A TCP connection to `to` from `from_ip` (any loopback address: a distinct "source").
async fn connect_from(from_ip: &str, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().expect("socket");
    s.bind(addr(&format!("{from_ip}:0"))).expect("bind");
    s.connect(to).await.expect("connect")
}

/// Whether the peer closed `s` (EOF or reset) within `WAIT`.
async fn closed(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    loop {
        match timeout(WAIT, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Caps and timeouts
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn connections_capped_per_source_and_in_total() {
    let (t, mut rx) = Transports::bind(TransportConfig {
        tcp: vec![addr("127.0.0.1:0")],
        max_connections_per_source: 3,
        max_connections: 5,
        ..TransportConfig::default()
    })
    .await
    .expect("bind");
    let gw = t.local_addrs().tcp[0];
    // Five from 127.0.0.2: three admitted, two closed at once.
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(connect_from("127.0.0.2", gw).await);
    }
    wait_until(|| t.stats().tcp_refused == 2).await;
    assert_eq!(t.stats().tcp_accepted, 3);
    let mut refused = 0;
    for s in held.iter_mut().skip(3) {
        if closed(s).await {
            refused += 1;
        }
    }
    assert_eq!(refused, 2);
    // Another source still gets in and is served ...
    let mut phone = connect_from("127.0.0.1", gw).await;
    phone
        .write_all(&options(
            "c1",
            "sip:gw@example.com",
            "SIP/2.0/TCP 127.0.0.1",
        ))
        .await
        .expect("write");
    match next_event(&mut rx).await {
        TransportEvent::Message(m) => assert_eq!(m.source.ip().to_string(), "127.0.0.1"),
        e => panic!("unexpected {e:?}"),
    }
    // ... until the total cap: 3 + 1 + 1 = 5, the sixth is refused.
    let _fifth = connect_from("127.0.0.3", gw).await;
    wait_until(|| t.stats().tcp_accepted == 5).await;
    let mut sixth = connect_from("127.0.0.4", gw).await;
    assert!(closed(&mut sixth).await);
    assert_eq!(t.stats().tcp_refused, 3);
    // Closing admitted connections frees their places.
    held.truncate(0);
    let mut again = connect_from("127.0.0.2", gw).await;
    again
        .write_all(&options(
            "c2",
            "sip:gw@example.com",
            "SIP/2.0/TCP 127.0.0.2",
        ))
        .await
        .expect("write");
    match next_event(&mut rx).await {
        TransportEvent::Message(m) => assert_eq!(m.source.ip().to_string(), "127.0.0.2"),
        e => panic!("unexpected {e:?}"),
    }
}

#[tokio::test]
async fn silent_and_trickling_connections_closed_by_the_header_timeout() {
    let (t, mut rx) = Transports::bind(TransportConfig {
        tcp: vec![addr("127.0.0.1:0")],
        header_timeout: Duration::from_millis(1500),
        ..TransportConfig::default()
    })
    .await
    .expect("bind");
    let gw = t.local_addrs().tcp[0];
    // Silent: never sends a byte.
    let mut silent = TcpStream::connect(gw).await.expect("connect");
    // Keep-alives only: no message ever.
    let mut pinger = TcpStream::connect(gw).await.expect("connect");
    // Trickling: one byte of a real message every 300 ms.
    let mut trickler = TcpStream::connect(gw).await.expect("connect");
    // A phone: sends its message, then stays quiet (idle, not timed out).
    let mut phone = TcpStream::connect(gw).await.expect("connect");
    phone
        .write_all(&options(
            "h1",
            "sip:gw@example.com",
            "SIP/2.0/TCP 127.0.0.1",
        ))
        .await
        .expect("write");
    assert!(matches!(
        next_event(&mut rx).await,
        TransportEvent::Message(_)
    ));
    // Trickling after a complete first message: the next message is due as well.
    let mut late = TcpStream::connect(gw).await.expect("connect");
    late.write_all(&options(
        "h0",
        "sip:gw@example.com",
        "SIP/2.0/TCP 127.0.0.1",
    ))
    .await
    .expect("write");
    assert!(matches!(
        next_event(&mut rx).await,
        TransportEvent::Message(_)
    ));
    let msg = options("h2", "sip:gw@example.com", "SIP/2.0/TCP 127.0.0.1");
    let started = tokio::time::Instant::now();
    let trickle = async {
        let mut late_open = true;
        for (i, b) in msg.iter().enumerate() {
            if late_open && late.write_all(&[*b]).await.is_err() {
                late_open = false;
            }
            if trickler.write_all(&[*b]).await.is_err() {
                return i;
            }
            if i % 4 == 0 {
                let _ = pinger.write_all(b"\r\n\r\n").await;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        msg.len()
    };
    let sent = within(trickle).await;
    assert!(sent < msg.len(), "the whole trickled message was accepted");
    assert!(closed(&mut silent).await);
    assert!(closed(&mut pinger).await);
    assert!(closed(&mut late).await);
    assert!(started.elapsed() < Duration::from_secs(10));
    wait_until(|| t.stats().tcp_header_timeout == 4).await;
    assert_eq!(t.stats().tcp_idle_closed, 0);
    // The phone's connection, which completed its message, is still open.
    assert_eq!(t.connection_count(), 1);
    phone
        .write_all(&options(
            "h3",
            "sip:gw@example.com",
            "SIP/2.0/TCP 127.0.0.1",
        ))
        .await
        .expect("write");
    assert!(matches!(
        next_event(&mut rx).await,
        TransportEvent::Message(_)
    ));
}

// ---------------------------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------------------------

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a leaf for 127.0.0.1 and `gw.test` signed by it: (ca.pem, cert.pem, key.pem).
fn make_certs(dir: &Path, tag: &str) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = format!("{tag}-ca.key");
    let ca = format!("{tag}-ca.pem");
    let key = format!("{tag}-key.pem");
    let csr = format!("{tag}.csr");
    let cert = format!("{tag}-cert.pem");
    let ext = format!("{tag}.ext");
    std::fs::write(
        dir.join(&ext),
        "subjectAltName=IP:127.0.0.1,DNS:gw.test\nbasicConstraints=CA:FALSE\n",
    )
    .expect("ext");
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
    let mut a = vec!["req", "-x509", "-nodes", "-days", "2", "-subj"];
    let subj = format!("/CN={tag} test CA");
    a.push(&subj);
    a.extend(ec);
    a.extend(["-keyout", &ca_key, "-out", &ca]);
    openssl(dir, &a);
    let mut a = vec!["req", "-nodes", "-subj", "/CN=gw.test"];
    a.extend(ec);
    a.extend(["-keyout", &key, "-out", &csr]);
    openssl(dir, &a);
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &ext,
            "-out",
            &cert,
        ],
    );
    (dir.join(ca), dir.join(cert), dir.join(key))
}

fn tls_config(cert: &Path, key: &Path, ca: Option<&Path>) -> TlsConfig {
    TlsConfig {
        cert: cert.to_owned(),
        key: key.to_owned(),
        ca: ca.map(Path::to_owned),
        reload_interval: Duration::ZERO,
    }
}

async fn tls_pair(
    server: TlsConfig,
    client: TlsConfig,
) -> (
    Transports,
    mpsc::Receiver<TransportEvent>,
    Transports,
    mpsc::Receiver<TransportEvent>,
) {
    let (gw, gw_rx) = Transports::bind(TransportConfig {
        udp: vec![addr("127.0.0.1:0")],
        tls: vec![addr("127.0.0.1:0")],
        tls_files: Some(server),
        ..TransportConfig::default()
    })
    .await
    .expect("bind server");
    let (ua, ua_rx) = Transports::bind(TransportConfig {
        tls_files: Some(client),
        ..TransportConfig::default()
    })
    .await
    .expect("bind client");
    (gw, gw_rx, ua, ua_rx)
}

#[tokio::test]
async fn sip_over_tls_both_ways_and_sips_only_over_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, cert, key) = make_certs(dir.path(), "a");
    let (gw, mut gw_rx, ua, mut ua_rx) = tls_pair(
        tls_config(&cert, &key, None),
        tls_config(&cert, &key, Some(&ca)),
    )
    .await;
    let tls_addr = gw.local_addrs().tls[0];
    // A sips: request over TLS is delivered, on a Tls transport.
    let used = ua
        .send(
            Target::Tls(tls_addr),
            &options("t1", "sips:gw@example.com", "SIP/2.0/TLS 127.0.0.1"),
        )
        .await
        .expect("send over TLS");
    assert!(used.is_some());
    let inc = match next_event(&mut gw_rx).await {
        TransportEvent::Message(m) => m,
        e => panic!("unexpected {e:?}"),
    };
    assert!(matches!(inc.transport, Transport::Tls(_)));
    assert!(inc.transport.is_secure());
    assert_eq!(gw.stats().tls_accepted, 1);
    // The answer goes back over the same TLS connection.
    let SipMessage::Request(req) = inc.message else {
        panic!("request")
    };
    gw.send_response(&response_for(&req, 200, "OK"), inc.transport, inc.local)
        .await
        .expect("respond");
    match next_event(&mut ua_rx).await {
        TransportEvent::Message(m) => {
            assert!(matches!(m.message, SipMessage::Response(_)));
            assert!(m.transport.is_secure());
        }
        e => panic!("unexpected {e:?}"),
    }
    assert_eq!(ua.stats().tls_connected, 1);
    // The same sips: request over UDP gets 416 and is not delivered as a message.
    let sock = UdpSocket::bind("127.0.0.1:0").await.expect("udp");
    let udp = gw.local_addrs().udp[0];
    sock.send_to(
        &options("t2", "sips:gw@example.com", "SIP/2.0/UDP 127.0.0.1;rport"),
        udp,
    )
    .await
    .expect("send");
    match next_event(&mut gw_rx).await {
        TransportEvent::BadMessage(b) => {
            assert_eq!(b.error, BadMessageError::InsecureSips);
            let reply = b.reply.expect("a reply");
            assert_eq!(u16::from(reply.status_code.clone()), 416);
            gw.send_response(&reply, b.transport, b.local)
                .await
                .expect("reply");
        }
        e => panic!("unexpected {e:?}"),
    }
    let mut buf = [0u8; 2048];
    let (n, _) = within(sock.recv_from(&mut buf)).await.expect("recv");
    match parse(&buf[..n]).expect("parse") {
        SipMessage::Response(r) => assert_eq!(u16::from(r.status_code), 416),
        m => panic!("unexpected {m:?}"),
    }
    assert_eq!(gw.stats().sips_refused, 1);
}

#[tokio::test]
async fn tls_peer_certificate_verified_and_reloaded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca_a, cert_a, key_a) = make_certs(dir.path(), "a");
    let (ca_b, cert_b, key_b) = make_certs(dir.path(), "b");
    // The server's files: copies that are replaced in place later.
    let live_cert = dir.path().join("live-cert.pem");
    let live_key = dir.path().join("live-key.pem");
    std::fs::copy(&cert_a, &live_cert).expect("copy");
    std::fs::copy(&key_a, &live_key).expect("copy");
    let (gw, mut gw_rx, trusts_b, _rx_b) = tls_pair(
        tls_config(&live_cert, &live_key, None),
        tls_config(&cert_b, &key_b, Some(&ca_b)),
    )
    .await;
    let tls_addr = gw.local_addrs().tls[0];
    let (trusts_a, _rx_a) = Transports::bind(TransportConfig {
        tls_files: Some(tls_config(&cert_a, &key_a, Some(&ca_a))),
        ..TransportConfig::default()
    })
    .await
    .expect("bind");
    let msg = options("v1", "sip:gw@example.com", "SIP/2.0/TLS 127.0.0.1");
    // A client that trusts only CA b refuses the server's certificate (from CA a).
    assert!(trusts_b.send(Target::Tls(tls_addr), &msg).await.is_err());
    assert_eq!(trusts_b.stats().tls_failed, 1);
    trusts_a
        .send(Target::Tls(tls_addr), &msg)
        .await
        .expect("CA a is trusted");
    assert!(matches!(
        next_event(&mut gw_rx).await,
        TransportEvent::Message(_)
    ));
    // A broken key file: the reload fails and names the file; the old identity stays.
    std::fs::write(&live_key, b"not a key").expect("write");
    let err = gw.reload_tls().expect_err("a broken key is refused");
    assert!(err.to_string().contains("live-key.pem"), "{err}");
    // The certificate from CA b: after the reload, the trust flips.
    std::fs::copy(&cert_b, &live_cert).expect("copy");
    std::fs::copy(&key_b, &live_key).expect("copy");
    gw.reload_tls().expect("reload");
    trusts_b
        .send(
            Target::Tls(tls_addr),
            &options("v2", "sip:gw@example.com", "SIP/2.0/TLS 127.0.0.1"),
        )
        .await
        .expect("CA b is trusted now");
    assert!(matches!(
        next_event(&mut gw_rx).await,
        TransportEvent::Message(_)
    ));
    let (fresh_a, _rx) = Transports::bind(TransportConfig {
        tls_files: Some(tls_config(&cert_a, &key_a, Some(&ca_a))),
        ..TransportConfig::default()
    })
    .await
    .expect("bind");
    assert!(fresh_a.send(Target::Tls(tls_addr), &msg).await.is_err());
}

#[tokio::test]
async fn tls_files_reloaded_when_they_change() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_ca_a, cert_a, key_a) = make_certs(dir.path(), "a");
    let (ca_b, cert_b, key_b) = make_certs(dir.path(), "b");
    let live_cert = dir.path().join("live-cert.pem");
    let live_key = dir.path().join("live-key.pem");
    std::fs::copy(&cert_a, &live_cert).expect("copy");
    std::fs::copy(&key_a, &live_key).expect("copy");
    let mut server = tls_config(&live_cert, &live_key, None);
    server.reload_interval = Duration::from_millis(100);
    let (gw, mut gw_rx, trusts_b, _rx) =
        tls_pair(server, tls_config(&cert_b, &key_b, Some(&ca_b))).await;
    let tls_addr = gw.local_addrs().tls[0];
    let msg = options("w1", "sip:gw@example.com", "SIP/2.0/TLS 127.0.0.1");
    assert!(trusts_b.send(Target::Tls(tls_addr), &msg).await.is_err());
    // Written in place (a new modification time): picked up without a signal.
    std::thread::sleep(Duration::from_millis(20));
    std::fs::copy(&key_b, &live_key).expect("copy");
    std::fs::copy(&cert_b, &live_cert).expect("copy");
    within(async {
        while trusts_b.send(Target::Tls(tls_addr), &msg).await.is_err() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(matches!(
        next_event(&mut gw_rx).await,
        TransportEvent::Message(_)
    ));
}

#[tokio::test]
async fn tls_handshake_that_never_comes_is_timed_out_and_capped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_ca, cert, key) = make_certs(dir.path(), "a");
    let (gw, _rx) = Transports::bind(TransportConfig {
        tls: vec![addr("127.0.0.1:0")],
        tls_files: Some(tls_config(&cert, &key, None)),
        header_timeout: Duration::from_millis(800),
        max_connections_per_source: 2,
        ..TransportConfig::default()
    })
    .await
    .expect("bind");
    let tls_addr = gw.local_addrs().tls[0];
    let mut a = connect_from("127.0.0.2", tls_addr).await;
    let mut b = connect_from("127.0.0.2", tls_addr).await;
    let mut c = connect_from("127.0.0.2", tls_addr).await;
    assert!(closed(&mut c).await);
    assert!(closed(&mut a).await);
    assert!(closed(&mut b).await);
    wait_until(|| gw.stats().tls_failed == 2).await;
    assert_eq!(gw.stats().tcp_refused, 1);
    assert_eq!(gw.stats().tls_accepted, 0);
}

//! The front door of the real binary (issue 12, part B): SIP over TLS with SRTP between two
//! baresip phones, `sips:` refused over UDP, and a flood of idle and trickling TCP
//! connections closed or refused while a phone keeps working. Certificates are made by the
//! openssl CLI in a private directory (`integration::certs`).

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use integration::baresip::{AudioSource, Baresip, BaresipOptions, Ctrl};
use integration::certs::{self, Certs};
use integration::gateway::{GatewayProcess, GatewaySpec};
use media::audio::prompts::tone;
use media::audio::wav::{read_wav, write_wav, WavEncoding};

const STATE_TIMEOUT: Duration = Duration::from_secs(15);
const RATE: u32 = 8000;

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_callfabric"))
}

/// A gateway with a TLS listener on a free port and `extra` lines in `[gateway]`.
fn tls_gateway(certs: &Certs, users: &[&str], extra: &str) -> (GatewayProcess, SocketAddr) {
    let tls = SocketAddr::from(([127, 0, 0, 1], integration::free_tcp_port()));
    let mut spec = GatewaySpec::new("gw-tls", users);
    spec.qualify_interval_secs = 30.0;
    spec.extra = format!(
        "tls = [\"{tls}\"]\n{extra}\n[tls]\ncert = \"{}\"\nkey = \"{}\"\nca = \"{}\"\n",
        certs.cert.display(),
        certs.key.display(),
        certs.ca.display()
    );
    let gw = GatewayProcess::start(binary(), spec);
    assert!(
        gw.history.iter().any(|l| l.contains(&format!("tls={tls}"))),
        "ready line names the TLS listener: {:?}",
        gw.history
    );
    (gw, tls)
}

fn tone_wav(dir: &Path, name: &str, hz: f64) -> PathBuf {
    let path = dir.join(name);
    write_wav(&path, &tone(&[hz], 60_000, 0.3), WavEncoding::Pcm16).expect("write the tone");
    path
}

/// Goertzel power of `hz` in `x` (8 kHz samples).
fn goertzel(x: &[f64], hz: f64) -> f64 {
    let w = std::f64::consts::TAU * hz / f64::from(RATE);
    let c = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0, 0.0);
    for &v in x {
        let s = v + c * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    s1 * s1 + s2 * s2 - c * s1 * s2
}

/// 100 ms windows of `samples` whose strongest frequency (50 Hz grid) is `hz`.
fn windows_at(samples: &[i16], hz: f64) -> usize {
    samples
        .chunks_exact(RATE as usize / 10)
        .filter(|w| {
            let x: Vec<f64> = w.iter().map(|&s| f64::from(s)).collect();
            let rms = (x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64).sqrt();
            let peak = (2..=78)
                .map(|k| f64::from(k) * 50.0)
                .max_by(|a, b| goertzel(&x, *a).total_cmp(&goertzel(&x, *b)))
                .unwrap_or_default();
            rms > 300.0 && (peak - hz).abs() < 1.0
        })
        .count()
}

/// Samples in the phone's received-audio dump so far.
fn received_samples(phone: &Baresip) -> u64 {
    let size = phone
        .dumps("dec")
        .first()
        .and_then(|p| std::fs::metadata(p).ok())
        .map_or(0, |m| m.len());
    size.saturating_sub(44) / 2
}

fn wait_received(phone: &Baresip, samples: u64) {
    let deadline = Instant::now() + STATE_TIMEOUT;
    while received_samples(phone) < samples {
        assert!(
            Instant::now() < deadline,
            "only {} samples received in {}\n{}",
            received_samples(phone),
            phone.dir().display(),
            phone.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The phone's received audio once its dump is closed (sndfile writes the sizes at the end).
fn received_audio(phone: &Baresip, at_least: u64) -> Vec<i16> {
    let deadline = Instant::now() + STATE_TIMEOUT;
    loop {
        if let Some(path) = phone.dumps("dec").first() {
            if let Ok(s) = read_wav(path) {
                if s.len() as u64 >= at_least {
                    return s;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "no complete dump in {}",
            phone.dir().display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn tls_phone(certs: &Certs, user: &str, tls: SocketAddr, wav: PathBuf) -> Baresip {
    Baresip::start_with(
        user,
        "secret",
        &tls.to_string(),
        600,
        "tls",
        &BaresipOptions {
            audio_source: AudioSource::Wav {
                path: wav,
                rate: RATE,
                channels: 1,
            },
            dump_audio: true,
            sip_trace: true,
            tls_ca: Some(certs.ca.clone()),
            srtp: true,
            mwi: false,
        },
    )
    .expect("start baresip")
}

fn ctrl(phone: &Baresip) -> Ctrl {
    phone.ctrl(STATE_TIMEOUT).expect("ctrl_tcp")
}

#[test]
fn baresip_registers_and_calls_over_tls_with_srtp() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = certs::make(dir.path(), "site").expect("certificates");
    let (mut gw, tls) = tls_gateway(&certs, &["3001", "3002"], "");
    let mark = gw.mark();
    let a = tls_phone(&certs, "3001", tls, tone_wav(dir.path(), "a.wav", 1000.0));
    let b = tls_phone(&certs, "3002", tls, tone_wav(dir.path(), "b.wav", 600.0));
    gw.seen_since(mark, "DEVICE PJSIP/3001 NOT_INUSE", STATE_TIMEOUT);
    gw.seen_since(mark, "DEVICE PJSIP/3002 NOT_INUSE", STATE_TIMEOUT);
    let (mut ca, mut cb) = (ctrl(&a), ctrl(&b));
    ca.command("dial", &format!("sip:3002@{tls};transport=tls"))
        .expect("dial");
    for (c, p, who) in [(&mut ca, &a, "caller"), (&mut cb, &b, "callee")] {
        if let Err(e) = c.event("CALL_ESTABLISHED", STATE_TIMEOUT) {
            panic!("{who}: {e}\n{}\n{}", p.log(), gw.diag());
        }
    }
    // 3 s of audio each way, decrypted by each phone with the other's SDES key.
    wait_received(&b, 3 * u64::from(RATE));
    wait_received(&a, 3 * u64::from(RATE));
    ca.command("hangup", "").expect("hangup");
    let ended = gw.call_ended(STATE_TIMEOUT);
    ca.event("CALL_CLOSED", STATE_TIMEOUT)
        .expect("caller closed");
    cb.event("CALL_CLOSED", STATE_TIMEOUT)
        .expect("callee closed");
    assert!(
        ended.num("a_in") >= 150 && ended.num("b_in") >= 150,
        "{}",
        ended.line
    );
    // Signalling went over TLS only, and each phone got the other's SDES key through the
    // gateway: baresip enables SRTP on a stream only with the remote a=crypto (without it, as
    // when the gateway strips the keys, both phones fall back to plain RTP, and audio still
    // flows, so the audio check alone would not tell).
    for (p, who) in [(&a, "caller"), (&b, "callee")] {
        let log = p.log();
        assert!(log.contains("SIP/2.0/TLS"), "{who} used TLS:\n{log}");
        assert!(!log.contains("SIP/2.0/UDP"), "{who} never used UDP:\n{log}");
        assert!(
            log.contains("SRTP is Enabled (cryptosuite=AES_CM_128_HMAC_SHA1_80)"),
            "{who} has SRTP on its audio stream:\n{log}"
        );
    }
    let heard_by_b = windows_at(&received_audio(&b, 3 * u64::from(RATE)), 1000.0);
    let heard_by_a = windows_at(&received_audio(&a, 3 * u64::from(RATE)), 600.0);
    assert!(
        heard_by_b >= 20,
        "callee heard the caller's 1 kHz: {heard_by_b} windows"
    );
    assert!(
        heard_by_a >= 20,
        "caller heard the callee's 600 Hz: {heard_by_a} windows"
    );
}

/// An OPTIONS to `uri` over UDP to `to`; the status code of the answer.
fn udp_options(to: SocketAddr, uri: &str) -> u16 {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("udp");
    sock.set_read_timeout(Some(STATE_TIMEOUT)).expect("timeout");
    let me = sock.local_addr().expect("addr");
    let req = format!(
        "OPTIONS {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKsips{};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:probe@127.0.0.1>;tag=p1\r\nTo: <{uri}>\r\n\
         Call-ID: sips-{}@127.0.0.1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        me.port(),
        me.port()
    );
    sock.send_to(req.as_bytes(), to).expect("send");
    let mut buf = [0u8; 4096];
    let (n, _) = sock.recv_from(&mut buf).expect("an answer");
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not a response: {text}"))
}

#[test]
fn sips_over_udp_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = certs::make(dir.path(), "site").expect("certificates");
    let (gw, _tls) = tls_gateway(&certs, &["3001"], "");
    // The same request with a sip: URI is served, with sips: it is refused (RFC 3261 §26.2).
    let plain = udp_options(gw.udp, &format!("sip:3001@{}", gw.udp));
    assert_ne!(plain, 416);
    assert_eq!(udp_options(gw.udp, &format!("sips:3001@{}", gw.udp)), 416);
}

/// Opens `n` TCP connections from 127.0.0.2 (another source than the phone) to `to`;
/// returns those that connected, non-blocking.
fn flood(to: SocketAddr, n: usize) -> Vec<TcpStream> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut v = Vec::new();
        for _ in 0..n {
            let Ok(s) = tokio::net::TcpSocket::new_v4() else {
                continue;
            };
            if s.bind(SocketAddr::from(([127, 0, 0, 2], 0))).is_err() {
                continue;
            }
            if let Ok(Ok(c)) = tokio::time::timeout(Duration::from_secs(5), s.connect(to)).await {
                if let Ok(c) = c.into_std() {
                    v.push(c);
                }
            }
        }
        v
    })
}

/// Whether the gateway closed `s` (EOF or reset); `s` is non-blocking.
fn is_closed(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

#[test]
fn idle_and_trickling_connections_closed_or_refused_while_a_phone_works() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = certs::make(dir.path(), "site").expect("certificates");
    let (mut gw, tls) = tls_gateway(
        &certs,
        &["3001"],
        "header_timeout_secs = 2\nmax_connections_per_source = 40\nmax_connections = 200\n",
    );
    // 500 connections from one attacker address: 250 stay silent, 250 trickle one byte of a
    // REGISTER every second.
    let started = Instant::now();
    let mut conns = flood(gw.tcp, 500);
    assert_eq!(conns.len(), 500, "the kernel accepted every connection");
    // Meanwhile the phone registers over TLS and keeps working.
    let mark = gw.mark();
    let phone = tls_phone(&certs, "3001", tls, tone_wav(dir.path(), "p.wav", 1000.0));
    let trickle = b"REGISTER sip:gw SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.2\r\n";
    let mut open: Vec<bool> = vec![true; conns.len()];
    let mut registered = false;
    for step in 0..30 {
        for (i, c) in conns.iter_mut().enumerate() {
            if !open[i] {
                continue;
            }
            if i % 2 == 1 {
                if let Some(b) = trickle.get(step) {
                    let _ = c.write_all(&[*b]);
                }
            }
            if is_closed(c) {
                open[i] = false;
            }
        }
        if !registered {
            registered = gw
                .lines_until(Instant::now() + Duration::from_millis(200))
                .iter()
                .any(|l| l == "DEVICE PJSIP/3001 NOT_INUSE");
        }
        if registered && open.iter().all(|o| !o) {
            break;
        }
        std::thread::sleep(Duration::from_millis(800));
    }
    let still_open = open.iter().filter(|o| **o).count();
    assert_eq!(
        still_open,
        0,
        "{still_open} of 500 attacker connections still open after {:?}",
        started.elapsed()
    );
    if !registered {
        gw.seen_since(mark, "DEVICE PJSIP/3001 NOT_INUSE", STATE_TIMEOUT);
    }
    // Closed within the header timeout, not the 300 s idle timeout.
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    // The phone still works after the flood: it answers a qualify-free call attempt, i.e.
    // the gateway still reaches it over its own TLS connection.
    let mut c = ctrl(&phone);
    c.command("dial", &format!("sip:3001@{tls};transport=tls"))
        .expect("dial");
    // Calling oneself: the gateway rings 3001's contact over its TLS connection; baresip
    // auto-answers the incoming leg.
    c.event("CALL_ESTABLISHED", STATE_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", phone.log(), gw.diag()));
    c.command("hangup", "").expect("hangup");
    drop(conns.drain(..));
}

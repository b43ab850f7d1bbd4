//! The front door of the real binary (issue 12, part B): SIP over TLS with SRTP between two
//! baresip phones (and the gateway's music on hold to a held SRTP phone, SRTP too), `sips:`
//! refused over UDP, and a flood of idle and trickling TCP
//! connections closed or refused while a phone keeps working. Certificates are made by the
//! openssl CLI in a private directory (`integration::certs`).

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use integration::baresip::{AudioSource, Baresip, BaresipOptions, Ctrl};
use integration::certs::{self, Certs};
use integration::gateway::{GatewayProcess, GatewaySpec};
use integration::phones::{answering_phone, assert_passes, caller, scenario, uac_scenario};
use integration::sipp::run_scenario;
use media::audio::prompts::tone;
use media::audio::wav::{read_wav, write_wav, WavEncoding};

const STATE_TIMEOUT: Duration = Duration::from_secs(15);
const RATE: u32 = 8000;

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_callfabric"))
}

/// A gateway with a TLS listener on a free port and `extra` lines in `[gateway]`.
fn tls_gateway(certs: &Certs, users: &[&str], extra: &str) -> (GatewayProcess, SocketAddr) {
    tls_gateway_named("gw-tls", certs, users, extra, &[])
}

/// [`tls_gateway`] named `name`, with further TLS listeners `more`.
fn tls_gateway_named(
    name: &str,
    certs: &Certs,
    users: &[&str],
    extra: &str,
    more: &[SocketAddr],
) -> (GatewayProcess, SocketAddr) {
    let tls = SocketAddr::from(([127, 0, 0, 1], integration::free_tcp_port()));
    let mut spec = GatewaySpec::new(name, users);
    spec.qualify_interval_secs = 30.0;
    let more: String = more.iter().map(|a| format!(", \"{a}\"")).collect();
    spec.extra = format!(
        "tls = [\"{tls}\"{more}]\n{extra}\n[tls]\ncert = \"{}\"\nkey = \"{}\"\nca = \"{}\"\n",
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
    // The callee holds: the caller hears the gateway's music on hold, SRTP-protected with the
    // key the caller receives with (the callee's), under the player's own SSRC. baresip counts
    // a sender's packets (`rcvd`) only once its SRTP layer authenticated and decrypted them;
    // plain RTP, as before issue 12's fix, is dropped there ("failed to decrypt").
    let before = heard_from(&mut ca);
    cb.command("hold", "").expect("hold");
    let music = wait_new_sender(&mut ca, &before, 100, &gw);
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
    assert!(
        ended.num("a_moh") >= music,
        "the caller's {music} packets were the gateway's music: {}",
        ended.line
    );
    assert!(
        !a.log().contains("failed to decrypt"),
        "the caller decrypted everything:\n{}",
        a.log()
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

/// The senders (SSRC → packets received) in the phone's RTCP session, from `audio_debug`
/// (`member 0x…: … rcvd=N`): packets count there only after baresip's SRTP layer accepted
/// them.
fn heard_from(ctrl: &mut Ctrl) -> std::collections::HashMap<String, u64> {
    let r = ctrl.command("audio_debug", "").expect("audio_debug");
    let text = r["data"].as_str().unwrap_or_default().to_owned();
    let mut out = std::collections::HashMap::new();
    let mut member = None;
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("member ") {
            member = rest.split(':').next().map(str::to_owned);
        }
        if let (Some(m), Some(n)) = (&member, line.split("rcvd=").nth(1)) {
            if let Ok(n) = n.trim().parse::<u64>() {
                out.insert(m.clone(), n);
                member = None;
            }
        }
    }
    out
}

/// Waits until a sender not in `before` delivered at least `packets` packets to the phone;
/// returns how many.
fn wait_new_sender(
    ctrl: &mut Ctrl,
    before: &std::collections::HashMap<String, u64>,
    packets: u64,
    gw: &GatewayProcess,
) -> u64 {
    let deadline = Instant::now() + STATE_TIMEOUT;
    loop {
        let now = heard_from(ctrl);
        let new = now
            .iter()
            .filter(|(m, _)| !before.contains_key(*m))
            .map(|(_, n)| *n)
            .max()
            .unwrap_or(0);
        if new >= packets {
            return new;
        }
        assert!(
            Instant::now() < deadline,
            "no new sender with {packets} packets: before {before:?}, now {now:?}\n{}",
            gw.diag()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
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

/// Lines of the gateway's log (stderr) containing every one of `needles`.
fn log_lines(gw: &GatewayProcess, needles: &[&str]) -> Vec<String> {
    std::fs::read_to_string(gw.dir().join("gateway.stderr"))
        .unwrap_or_default()
        .lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .map(str::to_owned)
        .collect()
}

/// Waits until the log holds at least `n` lines with every one of `needles`.
fn wait_log(gw: &GatewayProcess, needles: &[&str], n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = log_lines(gw, needles);
        if found.len() >= n {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "{n} log lines with {needles:?} expected, {} seen\n{}",
            found.len(),
            gw.diag()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `call_rejected.xml` expecting final response `code`, written into the gateway's directory.
fn rejected_scenario(gw: &GatewayProcess, code: &str) -> PathBuf {
    let text = std::fs::read_to_string(scenario("call_rejected.xml")).expect("read scenario");
    let path = gw.dir().join(format!("call_rejected_{code}.xml"));
    std::fs::write(&path, text.replace("@CODE@", code)).expect("write scenario");
    path
}

/// A TLS trunk between two gateways (issue 12): gateway A keeps a registration over TLS at
/// gateway B (its "ITSP", where A's account is device 2999), the certificate of B verified
/// for `gw.test`, refreshed every few seconds on the same TLS connection; A's call to B's 2002
/// crosses the TLS trunk, and B's call to A's number 2999 comes back over the connection A
/// registered on. A second trunk to the same B, whose certificate must name `wrong.test`, is
/// refused: a clear log line names the peer and the expected name, the call gets 408 at once
/// and that trunk never registers.
#[test]
fn calls_and_registration_cross_a_verified_tls_trunk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = certs::make(dir.path(), "trunk").expect("certificates");
    // B listens for TLS twice: A's trunks name the peer's certificate per address.
    let tls_b2 = SocketAddr::from(([127, 0, 0, 1], integration::free_tcp_port()));
    let (mut gw_b, tls_b) =
        tls_gateway_named("gw-b", &certs, &["2002", "2999", "2998"], "", &[tls_b2]);
    for (user, extra) in [("2999", "--present-any"), ("2998", "--present-any")] {
        let out = std::process::Command::new(binary())
            .args(["devices", "add", "--config"])
            .arg(&gw_b.config)
            .args(["--user", user, "--password", "secret", extra])
            .output()
            .expect("devices add");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let trunks = format!(
        "\n[[gateway.trunk]]\nname = \"itsp\"\naddress = \"{tls_b}\"\nprefixes = [\"2\"]\n\
         transport = \"tls\"\ntls_name = \"gw.test\"\nusername = \"2999\"\npassword = \"secret\"\n\
         register = true\nregister_expires = 3\ndomain = \"gw-b.example\"\n\
         \n[[gateway.trunk]]\nname = \"impostor\"\naddress = \"{tls_b2}\"\nprefixes = [\"7\"]\n\
         strip = 1\ntransport = \"tls\"\ntls_name = \"wrong.test\"\nusername = \"2998\"\n\
         password = \"secret\"\nregister = true\nregister_expires = 3\ndomain = \"gw-b.example\"\n\
         \n[gateway.extensions]\n\"2999\" = \"1001\"\n"
    );
    let (mut gw_a, _tls_a) = tls_gateway_named("gw-a", &certs, &["1001"], &trunks, &[]);
    // A registers at B over TLS: its account shows up there, and the registration is
    // refreshed (expiry 3 s, refresh at 80 %): three successes on A in a row.
    wait_log(&gw_a, &["registered at the trunk", "itsp"], 1);
    gw_b.device("2999", "NOT_INUSE", STATE_TIMEOUT);
    wait_log(&gw_a, &["registered at the trunk", "itsp"], 3);
    // The impostor trunk: B's certificate does not name wrong.test; refused, said clearly.
    let refused = wait_log(&gw_a, &["TLS connection refused", "wrong.test"], 1);
    assert!(
        refused[0].contains(&tls_b2.to_string()) && refused[0].contains("certificate"),
        "{refused:?}"
    );
    assert!(
        log_lines(&gw_a, &["registered at the trunk", "impostor"]).is_empty(),
        "the impostor trunk never registers\n{}",
        gw_a.diag()
    );

    // Outbound over the TLS trunk: 1001 at A dials 2002 at B.
    let mut uas_b = answering_phone(&mut gw_b, "2002", "call_uas.xml", 1);
    gw_b.device("2002", "NOT_INUSE", STATE_TIMEOUT);
    let out = run_scenario(&uac_scenario(gw_a.dir()), gw_a.udp, caller("1001", "2002"))
        .expect("run sipp");
    assert_passes(&gw_a, &out, "outbound call over the TLS trunk");
    assert_passes(&gw_b, &uas_b.wait().expect("callee"), "B-side callee");
    let ended = gw_b.call_ended(STATE_TIMEOUT);
    assert!(ended.num("a_in") > 50, "media reached B: {}", ended.line);
    let ended = gw_a.call_ended(STATE_TIMEOUT);
    assert!(
        ended.num("b_in") > 50,
        "media came back to A: {}",
        ended.line
    );
    gw_b.seen_since(0, "DEVICE PJSIP/2999 INUSE", STATE_TIMEOUT);

    // Inbound: B's 2002 dials A's number; B reaches A over A's registration (TLS), A's DID
    // map rings 1001 there.
    let mut uas_a = answering_phone(&mut gw_a, "1001", "call_uas.xml", 1);
    gw_a.device("1001", "NOT_INUSE", STATE_TIMEOUT);
    let out = run_scenario(&uac_scenario(gw_b.dir()), gw_b.udp, caller("2002", "2999"))
        .expect("run sipp");
    assert_passes(&gw_b, &out, "inbound call over A's TLS registration");
    assert_passes(&gw_a, &uas_a.wait().expect("callee"), "A-side callee 1001");
    let ended = gw_a.call_ended(STATE_TIMEOUT);
    assert!(
        ended.num("b_out") > 50,
        "media reached 1001: {}",
        ended.line
    );

    // Over the impostor trunk the call fails at once: the handshake is refused.
    let started = Instant::now();
    let out = run_scenario(
        &rejected_scenario(&gw_a, "408"),
        gw_a.udp,
        caller("1001", "72002"),
    )
    .expect("run sipp");
    assert_passes(&gw_a, &out, "call over the impostor trunk refused");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    // Every connection A opened to B verified B for gw.test, and B never saw the impostor's
    // account: its device is not registered.
    gw_b.drain();
    assert!(
        !gw_b
            .history
            .iter()
            .any(|l| l.starts_with("DEVICE PJSIP/2998 NOT_INUSE")),
        "{}",
        gw_b.diag()
    );
}

/// A phone registered over TLS, then the gateway is killed and started again (issue 12).
/// The phone's TLS connection died with the gateway, and the gateway can reach a phone over
/// TLS only on the connection the phone opened (RFC 5626 §5.3; the phone has no certificate
/// a new connection could verify). The binding is restored, but the gateway does not pretend:
/// the device reads UNAVAILABLE and a call to it fails at once with 480 (Asterisk: a contact
/// that is unreachable → `CHANUNAVAIL`, 480), not after a 32 s timeout, until the phone
/// registers again; then the call reaches it over its new connection.
#[test]
fn restored_tls_registration_fails_fast_until_the_phone_registers_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = certs::make(dir.path(), "restart").expect("certificates");
    let (mut gw, tls) = tls_gateway(&certs, &["3001", "3002"], "");
    let options = BaresipOptions {
        audio_source: AudioSource::Sine(600),
        sip_trace: true,
        tls_ca: Some(certs.ca.clone()),
        ..BaresipOptions::default()
    };
    let phone = Baresip::start_with("3001", "secret", &tls.to_string(), 600, "tls", &options)
        .expect("start baresip");
    gw.device("3001", "NOT_INUSE", STATE_TIMEOUT);
    // The binding is committed before the 200 OK reaches the phone (durable registrations);
    // the phone saw it once its log says so.
    let deadline = Instant::now() + STATE_TIMEOUT;
    while !phone.log().contains("200 OK") {
        assert!(Instant::now() < deadline, "{}", phone.log());
        std::thread::sleep(Duration::from_millis(100));
    }

    gw.restart();
    let mark = gw.mark();
    // The binding came back from the database (the log starts anew with the process).
    wait_log(&gw, &["registrations restored", "contacts=1"], 1);
    // The device says so: UNAVAILABLE while its only binding is a dead TLS flow.
    gw.seen_since(mark, "DEVICE PJSIP/3001 UNAVAILABLE", STATE_TIMEOUT);
    // A call to it fails at once with 480.
    let started = Instant::now();
    let out = run_scenario(
        &rejected_scenario(&gw, "480"),
        gw.udp,
        caller("3002", "3001"),
    )
    .expect("run sipp");
    assert_passes(&gw, &out, "call to the restored TLS binding");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "failed fast: {:?}",
        started.elapsed()
    );
    gw.drain();
    assert!(
        !gw.history
            .iter()
            .skip(mark)
            .any(|l| l == "DEVICE PJSIP/3001 NOT_INUSE"),
        "never NOT_INUSE before the phone registers again\n{}",
        gw.diag()
    );

    // The phone registers again (here: it restarts, as a phone whose flow broke would
    // re-register); the device is back and a call reaches it over its new connection.
    drop(phone);
    let mark = gw.mark();
    let _phone = Baresip::start_with("3001", "secret", &tls.to_string(), 600, "tls", &options)
        .expect("start baresip");
    gw.seen_since(mark, "DEVICE PJSIP/3001 NOT_INUSE", STATE_TIMEOUT);
    let out =
        run_scenario(&uac_scenario(gw.dir()), gw.udp, caller("3002", "3001")).expect("run sipp");
    assert_passes(&gw, &out, "call to the phone after it registered again");
    let ended = gw.call_ended(STATE_TIMEOUT);
    assert!(ended.num("b_in") > 50, "the phone's audio: {}", ended.line);
}

//! End to end: a supervisor listens to, whispers to and barges into a call, through the real
//! `callfabric gateway` (issue 13; Asterisk's ChanSpy `q`, `w`, `B`).
//!
//! Device 1001 (a SIPp caller) calls 1002 (a SIPp UAS); 1003 is a supervisor
//! (`[supervisors] devices`), 1004 is not. Every party's SDP names a UDP socket of this test,
//! which sends that party's tone (caller 400 Hz, agent 1000 Hz, supervisor 1800 Hz, A-law, 20 ms
//! packets) to the gateway's relay port (each SIPp scenario writes the port from the SDP it got
//! into a file) and records what it hears. Who hears which tone is read with the Goertzel
//! algorithm over windows of each phase: listen (`*2221002`), the call alone again, whisper
//! (`*2231002`), a refused non-supervisor (403 with a reason, logged), then barge (`*2241002`)
//! until the caller hangs up, when the supervisor gets a BYE. Through the admin API and the CLI
//! (1005, made a supervisor by its device flag): listen, whisper and barge, audio checked the
//! same way.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use integration::free_udp_port;
use integration::gateway::{GatewayProcess, GatewaySpec};
use integration::phones::{assert_passes, caller_ports, scenario};
use integration::sipp::{run_scenario, SippOpts, SippProcess};
use media::audio::prompts::tone;
use media::audio::Codec;

const STATE_TIMEOUT: Duration = Duration::from_secs(10);
const CALLER_HZ: f64 = 400.0;
const AGENT_HZ: f64 = 1000.0;
const SUPERVISOR_HZ: f64 = 1800.0;
/// How long each supervisor stays in listen and whisper.
const PHASE_MS: u64 = 3000;

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_callfabric"))
}

/// What a party received: arrival time and decoded samples of each packet.
type Heard = Arc<Mutex<Vec<(Instant, Vec<i16>)>>>;

/// One party's media: a socket of the test sending a tone and recording what it hears.
struct Party {
    port: u16,
    port_file: PathBuf,
    stop: Arc<AtomicBool>,
    heard: Heard,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Party {
    /// Sends `hz` to the port named in `port_file` (read again every 100 ms; no file: silent)
    /// and records every RTP packet received.
    fn start(dir: &Path, name: &str, hz: f64) -> Party {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind a party's RTP socket");
        let port = sock.local_addr().expect("addr").port();
        sock.set_read_timeout(Some(Duration::from_millis(2)))
            .expect("timeout");
        let port_file = dir.join(format!("{name}.port"));
        let stop = Arc::new(AtomicBool::new(false));
        let heard = Arc::new(Mutex::new(Vec::new()));
        let audio = Codec::Pcma.encode(&tone(&[hz], 1000, 0.3));
        let (file, st, h) = (port_file.clone(), stop.clone(), heard.clone());
        let thread = std::thread::spawn(move || {
            let mut dest: Option<SocketAddr> = None;
            let mut checked = Instant::now() - Duration::from_secs(1);
            let mut due = Instant::now();
            let (mut seq, mut ts, mut pos) = (0u16, 0u32, 0usize);
            let mut buf = [0u8; 2048];
            while !st.load(Ordering::Relaxed) {
                let now = Instant::now();
                if now >= checked + Duration::from_millis(100) {
                    checked = now;
                    dest = std::fs::read_to_string(&file)
                        .ok()
                        .and_then(|t| t.trim().parse::<u16>().ok())
                        .map(|p| SocketAddr::from(([127, 0, 0, 1], p)));
                }
                if now >= due {
                    due += Duration::from_millis(20);
                    if due < now {
                        due = now + Duration::from_millis(20);
                    }
                    if let Some(d) = dest {
                        let mut p = vec![0x80, 8];
                        p.extend(seq.to_be_bytes());
                        p.extend(ts.to_be_bytes());
                        p.extend(0x5eed_0000u32.wrapping_add(u32::from(port)).to_be_bytes());
                        p.extend(&audio[pos..pos + 160]);
                        let _ = sock.send_to(&p, d);
                        seq = seq.wrapping_add(1);
                        ts = ts.wrapping_add(160);
                        pos = (pos + 160) % audio.len();
                    }
                }
                if let Ok((n, _)) = sock.recv_from(&mut buf) {
                    if n > 12 && buf[0] >> 6 == 2 {
                        let start = 12 + 4 * usize::from(buf[0] & 0x0f);
                        if let (Some(c), Some(payload)) =
                            (Codec::from_payload_type(buf[1] & 0x7f), buf.get(start..n))
                        {
                            let pcm = c.decode(payload);
                            h.lock().expect("lock").push((Instant::now(), pcm));
                        }
                    }
                }
            }
        });
        Party {
            port,
            port_file,
            stop,
            heard,
            thread: Some(thread),
        }
    }

    /// Waits until the party's SIPp wrote the gateway's port; when that happened.
    fn answered(&self, timeout: Duration) -> Instant {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if std::fs::read_to_string(&self.port_file)
                .ok()
                .and_then(|t| t.trim().parse::<u16>().ok())
                .is_some()
            {
                return Instant::now();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("{} never written", self.port_file.display());
    }

    /// Which of (caller, agent, supervisor)'s tones this party heard in `[from, to)`, with
    /// the powers for messages.
    fn tones(&self, from: Instant, to: Instant) -> ([bool; 3], String) {
        let heard = self.heard.lock().expect("lock");
        let window: Vec<&(Instant, Vec<i16>)> = heard
            .iter()
            .filter(|(t, _)| *t >= from && *t < to)
            .collect();
        let pcm: Vec<i16> = window.iter().flat_map(|(_, p)| p.iter().copied()).collect();
        let gap = window
            .windows(2)
            .map(|w| w[1].0 - w[0].0)
            .max()
            .unwrap_or_default();
        assert!(
            pcm.len() >= 8000,
            "under 1 s of audio in the window ({} samples in {} packets, first {:?} last {:?} \
             after the window's start, largest gap {gap:?}; {} packets heard in all)",
            pcm.len(),
            window.len(),
            window.first().map(|(t, _)| *t - from),
            window.last().map(|(t, _)| *t - from),
            heard.len(),
        );
        let p = [CALLER_HZ, AGENT_HZ, SUPERVISOR_HZ].map(|f| goertzel(&pcm, f));
        (
            p.map(|x| x > 1e5),
            format!("{:.2e} {:.2e} {:.2e}", p[0], p[1], p[2]),
        )
    }
}

impl Drop for Party {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Goertzel power of `freq` in `pcm` (8 kHz), normalised by the length: about (A/2)² for a
/// tone of amplitude A (0.3 full scale: 2.4e7), near 0 without it.
fn goertzel(pcm: &[i16], freq: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * freq / 8000.0;
    let c = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &x in pcm {
        let s = f64::from(x) + c * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    (s1 * s1 + s2 * s2 - c * s1 * s2) / (pcm.len().max(1) as f64).powi(2)
}

/// `call_uac.xml` that writes the gateway's RTP port to `port_file` after its ACK (instead of
/// streaming), stays `pause_ms`, then hangs up; `wait_bye`: instead of hanging up it waits for
/// the gateway's BYE (up to `pause_ms`) and answers it.
fn uac(dir: &Path, name: &str, port_file: &Path, pause_ms: u64, wait_bye: bool) -> PathBuf {
    let text = std::fs::read_to_string(scenario("call_uac.xml")).expect("read scenario");
    let mut text = text
        .replace(
            r#"<ereg regexp="m=audio [0-9]+" search_in="body" check_it="true" assign_to="m_line"/>"#,
            r#"<ereg regexp="m=audio ([0-9]+)" search_in="body" check_it="true" assign_to="m_line,gw_port"/>"#,
        )
        .replace(
            r#"<exec rtp_stream="@RTP_FILE@,1,8"/>"#,
            &format!(
                r#"<exec command="echo [$gw_port] > {}"/>"#,
                port_file.display()
            ),
        )
        .replace("<Reference variables=\"m_line\"/>", "<Reference variables=\"m_line,gw_port\"/>");
    if wait_bye {
        let start = text.find("<pause milliseconds=\"5500\"/>").expect("pause");
        let end = text.find("<Reference").expect("reference");
        text.replace_range(
            start..end,
            &format!(
                r#"<recv request="BYE" timeout="{pause_ms}"/>
  <send>
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

    ]]>
  </send>
  "#
            ),
        );
    } else {
        text = text.replace(
            "<pause milliseconds=\"5500\"/>",
            &format!("<pause milliseconds=\"{pause_ms}\"/>"),
        );
    }
    let path = dir.join(format!("{name}.xml"));
    std::fs::write(&path, text).expect("write scenario");
    path
}

/// The agent 1002: `call_uas.xml` answering with `rtp_port` in its SDP and writing the
/// gateway's port into `port_file`, registered by a second SIPp.
fn agent_phone(gw: &mut GatewayProcess, rtp_port: u16, port_file: &Path) -> SippProcess {
    uas_phone(gw, "1002", None, 1, rtp_port, port_file)
}

/// Device `user`'s phone: `call_uas.xml` (or, with `hangup_ms`, `call_uas_hangup.xml` hanging
/// up that long after the ACK) answering `calls` calls one after the other with `rtp_port` in
/// its SDP and writing the gateway's port into `port_file`, registered by a second SIPp.
fn uas_phone(
    gw: &mut GatewayProcess,
    user: &str,
    hangup_ms: Option<u64>,
    calls: u32,
    rtp_port: u16,
    port_file: &Path,
) -> SippProcess {
    let base = match hangup_ms {
        Some(_) => "call_uas_hangup.xml",
        None => "call_uas.xml",
    };
    let text = std::fs::read_to_string(scenario(base)).expect("read scenario");
    let text = text
        .replace(
            r#"<pause milliseconds="1500"/>"#,
            &format!(r#"<pause milliseconds="{}"/>"#, hangup_ms.unwrap_or(1500)),
        )
        .replace(
            r#"assign_to="c_line"/>"#,
            &format!(
                r#"assign_to="c_line"/>
      <ereg regexp="m=audio ([0-9]+)" search_in="body" check_it="true" assign_to="m_line,gw_port"/>
      <exec command="echo [$gw_port] > {}"/>"#,
                port_file.display()
            ),
        )
        .replace("[media_port]", &rtp_port.to_string())
        .replace(
            "<Reference variables=\"c_line\"/>",
            "<Reference variables=\"c_line,m_line,gw_port\"/>",
        );
    let path = gw.dir().join(format!("uas-{user}.xml"));
    std::fs::write(&path, text).expect("write scenario");
    let sip_port = free_udp_port();
    let uas = SippProcess::spawn(
        &path,
        None,
        &SippOpts {
            local_port: Some(sip_port),
            calls,
            timeout: Duration::from_secs(90),
            extra_args: vec!["-mp".into(), integration::free_media_port().to_string()],
            ..SippOpts::default()
        },
    )
    .expect("start the agent's SIPp");
    let reg = run_scenario(
        &scenario("register_contact.xml"),
        gw.udp,
        SippOpts {
            keys: vec![("contact_port".into(), sip_port.to_string())],
            ..SippOpts::user(user, "secret")
        },
    )
    .expect("run sipp");
    assert_passes(gw, &reg, &format!("registration of {user}"));
    gw.device(user, "NOT_INUSE", STATE_TIMEOUT);
    uas
}

const TOKEN: &str = "spy-test-token-0123456789abcdef";

/// The admin API's address (`http ready …`, maybe read already).
fn http_addr(gw: &mut GatewayProcess) -> String {
    gw.drain();
    if let Some(a) = gw
        .history
        .iter()
        .find_map(|l| l.strip_prefix("http ready "))
    {
        return a.trim().to_owned();
    }
    gw.wait_for(STATE_TIMEOUT, "the http ready line", |l| {
        l.starts_with("http ready ")
    })
    .trim_start_matches("http ready ")
    .to_owned()
}

/// One admin request with the token; (status, JSON body).
fn admin(
    gw: &mut GatewayProcess,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    use std::io::{Read as _, Write as _};
    let addr = http_addr(gw);
    let mut conn = std::net::TcpStream::connect(addr.as_str()).expect("connect to the API");
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        conn,
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\
         Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("request");
    let mut text = String::new();
    conn.read_to_string(&mut text).expect("response");
    let status = text
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text}"));
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let v = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text}"));
    (status, v)
}

/// `callfabric call spy <call> --supervisor <sup> --mode <mode>` against the gateway's API:
/// (exit success, stdout + stderr).
fn cli_spy(gw: &mut GatewayProcess, call: u64, sup: &str, mode: &str) -> (bool, String) {
    let url = format!("http://{}", http_addr(gw));
    let out = std::process::Command::new(binary())
        .args(["call", "spy", &call.to_string(), "--supervisor", sup])
        .args(["--mode", mode, "--url", &url, "--token", TOKEN])
        .output()
        .expect("run the CLI");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A supervisor call from 1003's party: `dial`, `pause_ms` in the call (or until the gateway's
/// BYE); returns the SIPp process and when the call was answered.
fn supervise(
    gw: &GatewayProcess,
    dir: &Path,
    sup: &Party,
    dial: &str,
    pause_ms: u64,
    wait_bye: bool,
) -> (SippProcess, Instant) {
    let _ = std::fs::remove_file(&sup.port_file);
    let path = uac(
        dir,
        &format!("sup-{dial}"),
        &sup.port_file,
        pause_ms,
        wait_bye,
    );
    let opts = SippOpts {
        timeout: Duration::from_secs(60),
        ..caller_ports("1003", dial, sup.port, free_udp_port())
    };
    let p = SippProcess::spawn(&path, Some(gw.udp), &opts).expect("start the supervisor");
    let answered = sup.answered(STATE_TIMEOUT);
    (p, answered)
}

#[track_caller]
fn check(party: &Party, who: &str, phase: &str, from: Instant, to: Instant, want: [bool; 3]) {
    let (got, powers) = party.tones(from, to);
    eprintln!("{phase}: {who} powers {powers}");
    assert_eq!(
        got, want,
        "{phase}: the {who} heard [caller, agent, supervisor] = {got:?}, expected {want:?} \
         (Goertzel powers {powers})"
    );
}

#[test]
fn supervisor_listens_whispers_barges_and_others_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = GatewaySpec::new("gw-spy", &["1001", "1002", "1003", "1004", "1005"]);
    // A SIPp UAS cannot answer OPTIONS outside its scenario.
    spec.qualify_interval_secs = 300.0;
    spec.extra = format!(
        "\n[supervisors]\ndevices = [\"1003\"]\n\n[http]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n"
    );
    let mut gw = GatewayProcess::start(binary(), spec);

    let caller = Party::start(dir.path(), "caller", CALLER_HZ);
    let agent = Party::start(dir.path(), "agent", AGENT_HZ);
    let sup = Party::start(dir.path(), "supervisor", SUPERVISOR_HZ);
    let mut agent_sipp = agent_phone(&mut gw, agent.port, &agent.port_file);
    // 1005: not a supervisor until its device flag is set through the admin API; its phone
    // answers the gateway's three calls (listen, whisper, barge through the API) and hangs up
    // each after a phase.
    let mut api_sup_sipp = uas_phone(&mut gw, "1005", Some(PHASE_MS), 3, sup.port, &sup.port_file);

    // The call: long enough for every phase; the caller hangs up during the barge.
    let call_ms = 40_000;
    let uac_path = uac(dir.path(), "caller", &caller.port_file, call_ms, false);
    let mut caller_sipp = SippProcess::spawn(
        &uac_path,
        Some(gw.udp),
        &SippOpts {
            timeout: Duration::from_secs(90),
            ..caller_ports("1001", "1002", caller.port, free_udp_port())
        },
    )
    .expect("start the caller");
    let call_up = caller.answered(STATE_TIMEOUT);
    agent.answered(STATE_TIMEOUT);
    let ms = Duration::from_millis;

    // Listen: the supervisor hears both; nobody hears it.
    let (mut s, t) = supervise(&gw, dir.path(), &sup, "*2221002", PHASE_MS, false);
    let out = s.wait().expect("supervisor outcome");
    assert_passes(&gw, &out, "listen");
    let (a, b) = (t + ms(700), t + ms(PHASE_MS - 300));
    check(&sup, "supervisor", "listen", a, b, [true, true, false]);
    check(&caller, "caller", "listen", a, b, [false, true, false]);
    check(&agent, "agent", "listen", a, b, [true, false, false]);

    // Whisper: the agent hears the supervisor with the caller; the caller does not.
    let (mut s, t) = supervise(&gw, dir.path(), &sup, "*2231002", PHASE_MS, false);
    let out = s.wait().expect("supervisor outcome");
    let left = Instant::now();
    assert_passes(&gw, &out, "whisper");
    let (a, b) = (t + ms(700), t + ms(PHASE_MS - 300));
    check(&sup, "supervisor", "whisper", a, b, [true, true, false]);
    check(&caller, "caller", "whisper", a, b, [false, true, false]);
    check(&agent, "agent", "whisper", a, b, [true, false, true]);

    // Not a supervisor: 403, with the reason, logged.
    let rejected = std::fs::read_to_string(scenario("call_rejected.xml"))
        .expect("scenario")
        .replace("@CODE@", "403");
    let rejected_path = dir.path().join("rejected.xml");
    std::fs::write(&rejected_path, rejected).expect("write scenario");
    let mut opts = SippOpts::user("1004", "secret");
    opts.keys = vec![("callee".into(), "*2241002".into())];
    let out = run_scenario(&rejected_path, gw.udp, opts).expect("run sipp");
    assert_passes(&gw, &out, "a non-supervisor is refused with 403");
    assert!(
        out.messages.contains("not a supervisor"),
        "the 403 names the reason:\n{}",
        out.describe()
    );
    let stderr = gw.dir().join("gateway.stderr");
    let deadline = Instant::now() + STATE_TIMEOUT;
    while !std::fs::read_to_string(&stderr)
        .unwrap_or_default()
        .lines()
        .any(|l| l.contains("SPY REFUSED") && l.contains("1004"))
    {
        assert!(
            Instant::now() < deadline,
            "refusal not logged\n{}",
            gw.diag()
        );
        std::thread::sleep(ms(50));
    }

    // The call goes on undisturbed after the whisper: the two parties hear each other only
    // (a window of 1.5 s that starts 0.5 s after the supervisor left).
    let (a, b) = (left + ms(500), left + ms(2000));
    while Instant::now() < b + ms(100) {
        std::thread::sleep(ms(50));
    }
    check(
        &caller,
        "caller",
        "after whisper",
        a,
        b,
        [false, true, false],
    );
    check(&agent, "agent", "after whisper", a, b, [true, false, false]);

    // The admin API (issue 13): the call by its number; a bad mode, an unknown call and a
    // device that is not a supervisor are refused with a JSON error.
    let (status, calls) = admin(&mut gw, "GET", "/admin/calls", None);
    assert_eq!(status, 200, "{calls}");
    let call = calls["gateway"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["callee_device"] == "PJSIP/1002"))
        .and_then(|c| c["call"].as_u64())
        .unwrap_or_else(|| panic!("the call 1001 -> 1002 in {calls}"));
    let spy = |sup: &str, mode: &str| Some(serde_json::json!({"supervisor": sup, "mode": mode}));
    let path = format!("/admin/calls/{call}/spy");
    let (status, e) = admin(&mut gw, "POST", &path, spy("1003", "snoop"));
    assert_eq!(status, 400, "a bad mode: {e}");
    assert!(e["error"].as_str().unwrap_or("").contains("mode"), "{e}");
    let (status, e) = admin(
        &mut gw,
        "POST",
        &format!("/admin/calls/{}/spy", call + 1000),
        spy("1003", "listen"),
    );
    assert_eq!(status, 404, "an unknown call: {e}");
    let (status, e) = admin(&mut gw, "POST", &path, spy("1005", "listen"));
    assert_eq!(status, 403, "1005 is no supervisor yet: {e}");
    assert!(
        e["error"]
            .as_str()
            .unwrap_or("")
            .contains("is not a supervisor"),
        "{e}"
    );
    // Its device flag set through the admin API: a supervisor without a restart (the gateway
    // reads the flag from its device cache, reloaded every 0.2 s here); `callfabric call spy`
    // asks, the gateway calls 1005's phone.
    let (status, e) = admin(
        &mut gw,
        "POST",
        "/admin/devices",
        Some(serde_json::json!({"user": "1005", "password": "secret", "supervisor": true})),
    );
    assert_eq!(status, 200, "{e}");
    let _ = std::fs::remove_file(&sup.port_file);
    let deadline = Instant::now() + STATE_TIMEOUT;
    loop {
        let (ok, out) = cli_spy(&mut gw, call, "1005", "listen");
        if ok {
            assert!(out.contains("calling 1005"), "{out}");
            break;
        }
        assert!(out.contains("403"), "only the flag may be missing: {out}");
        assert!(
            Instant::now() < deadline,
            "the supervisor flag never took effect: {out}"
        );
        std::thread::sleep(ms(100));
    }
    // Listen through the API: the supervisor hears both parties, nobody hears it.
    let t = sup.answered(STATE_TIMEOUT);
    let (a, b) = (t + ms(700), t + ms(PHASE_MS - 300));
    while Instant::now() < b + ms(100) {
        std::thread::sleep(ms(50));
    }
    check(&sup, "supervisor", "API listen", a, b, [true, true, false]);
    check(&caller, "caller", "API listen", a, b, [false, true, false]);
    check(&agent, "agent", "API listen", a, b, [true, false, false]);
    let log = std::fs::read_to_string(&stderr).unwrap_or_default();
    assert!(
        log.lines()
            .any(|l| l.contains("SPY STARTED") && l.contains("api") && l.contains("1005")),
        "the API spy is logged\n{}",
        gw.diag()
    );
    // Whisper (`POST /admin/calls/{call}/spy`) and barge (`callfabric call spy --mode barge`)
    // through the API, each once 1005's previous session ended (its phone hung up): in whisper
    // the agent hears the supervisor and the caller does not; in barge both do.
    let ended = |gw: &GatewayProcess, n: usize| {
        let deadline = Instant::now() + STATE_TIMEOUT;
        loop {
            let log = std::fs::read_to_string(&stderr).unwrap_or_default();
            let count = log
                .lines()
                .filter(|l| l.contains("SPY ENDED") && l.contains("1005") && l.contains("hung up"))
                .count();
            if count >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "1005's spy session {n} never ended\n{}",
                gw.diag()
            );
            std::thread::sleep(ms(50));
        }
    };
    let api_modes = [
        ("whisper", [false, true, false], [true, false, true]),
        ("barge", [false, true, true], [true, false, true]),
    ];
    for (n, (mode, caller_hears, agent_hears)) in api_modes.into_iter().enumerate() {
        ended(&gw, n + 1);
        let _ = std::fs::remove_file(&sup.port_file);
        if mode == "whisper" {
            let (status, e) = admin(&mut gw, "POST", &path, spy("1005", mode));
            assert_eq!(status, 202, "API whisper: {e}");
            assert_eq!(e["mode"], "whisper", "{e}");
        } else {
            let (ok, out) = cli_spy(&mut gw, call, "1005", mode);
            assert!(ok && out.contains("calling 1005"), "API barge: {out}");
        }
        let t = sup.answered(STATE_TIMEOUT);
        let (a, b) = (t + ms(700), t + ms(PHASE_MS - 300));
        while Instant::now() < b + ms(100) {
            std::thread::sleep(ms(50));
        }
        let phase = format!("API {mode}");
        check(&sup, "supervisor", &phase, a, b, [true, true, false]);
        check(&caller, "caller", &phase, a, b, caller_hears);
        check(&agent, "agent", &phase, a, b, agent_hears);
    }
    let out = api_sup_sipp.wait().expect("API supervisor outcome");
    assert_passes(&gw, &out, "the supervisor's phone called through the API");
    let log = std::fs::read_to_string(&stderr).unwrap_or_default();
    for mode in ["whisper", "barge"] {
        assert!(
            log.lines().any(|l| l.contains("SPY STARTED")
                && l.contains("api")
                && l.contains("1005")
                && l.contains(mode)),
            "the API {mode} is logged\n{}",
            gw.diag()
        );
    }

    // Barge: all three hear each other, until the caller hangs up; then the supervisor gets
    // a BYE.
    let end = call_up + ms(call_ms);
    assert!(
        Instant::now() + ms(2500) < end,
        "the machine is too slow: the call ends before the barge could be checked"
    );
    let (mut s, t) = supervise(&gw, dir.path(), &sup, "*2241002", 60_000, true);
    let (a, b) = (t + ms(700), (t + ms(2700)).min(end - ms(300)));
    while Instant::now() < b + ms(100) {
        std::thread::sleep(ms(50));
    }
    check(&sup, "supervisor", "barge", a, b, [true, true, false]);
    check(&caller, "caller", "barge", a, b, [false, true, true]);
    check(&agent, "agent", "barge", a, b, [true, false, true]);

    let out = caller_sipp.wait().expect("caller outcome");
    assert_passes(&gw, &out, "the spied call");
    let ended = gw.call_ended(STATE_TIMEOUT);
    assert_eq!(ended.reason, "bye-a", "{}", ended.line);
    let out = s.wait().expect("supervisor outcome");
    assert_passes(
        &gw,
        &out,
        "barge: the supervisor gets a BYE when the call ends",
    );
    let log = std::fs::read_to_string(&stderr).unwrap_or_default();
    assert!(
        log.lines()
            .any(|l| l.contains("SPY ENDED") && l.contains("spied call ended")),
        "the barge ends with the call\n{}",
        gw.diag()
    );
    assert!(
        !log.contains("no ACK for the 200"),
        "every supervisor ACKed our 200\n{}",
        gw.diag()
    );
    let out = agent_sipp.wait().expect("agent outcome");
    assert_passes(&gw, &out, "the agent");
}

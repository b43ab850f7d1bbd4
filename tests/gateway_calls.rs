//! End to end: calls through the real `callfabric gateway` (B2BUA + RTP relay), with SIPp as
//! the calling phone (digest-authenticated INVITE, streams G.711 A-law with `rtp_stream`) and SIPp as the called
//! phone (registered by a second SIPp, answers, echoes RTP with `-rtp_echo`).
//!
//! Media is checked on the relay's own figures, printed by the gateway when the call ends
//! (`CALL <n> ENDED <reason> a_in=… b_out=…`): every packet of the stream arrives on leg A and
//! leaves on leg B, and the echo comes back the other way, byte for byte in volume.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use integration::free_udp_port;
use integration::gateway::{GatewayProcess, GatewaySpec};
use integration::phones::{
    answering_phone, assert_passes, caller_ports, scenario, uac_scenario, STREAM_PACKETS,
};
use integration::sipp::{run_scenario, SippOpts, SippProcess};

const STATE_TIMEOUT: Duration = Duration::from_secs(10);

/// A gateway with devices 1001 and 1002; qualify is slow because a SIPp UAS cannot answer
/// OPTIONS outside its scenario.
fn spec(name: &str) -> GatewaySpec {
    let mut s = GatewaySpec::new(name, &["1001", "1002"]);
    s.qualify_interval_secs = 300.0;
    s
}

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_callfabric"))
}

/// A callee phone (SIPp UAS running `uas`) registered as `user`; waits until it reads
/// NOT_INUSE.
fn callee(gw: &mut GatewayProcess, user: &str, uas: &str) -> SippProcess {
    let phone = answering_phone(gw, user, uas, 1);
    gw.device(user, "NOT_INUSE", STATE_TIMEOUT);
    phone
}

/// `call_rejected.xml` expecting final response `code` (SIPp cannot take a response code
/// from a variable), written into the gateway's directory.
fn rejected_scenario(gw: &GatewayProcess, code: &str) -> PathBuf {
    let text = std::fs::read_to_string(scenario("call_rejected.xml")).expect("read scenario");
    let path = gw.dir().join(format!("call_rejected_{code}.xml"));
    std::fs::write(&path, text.replace("@CODE@", code)).expect("write scenario");
    path
}

#[test]
fn sipp_call_relays_media_both_ways_and_tracks_device_state() {
    let expected = STREAM_PACKETS;
    let mut with_recording = spec("gw-a");
    with_recording.extra = "record_dir = \"rec\"\n".into();
    let mut gw = GatewayProcess::start(binary(), with_recording);
    let mut uas = callee(&mut gw, "1002", "call_uas.xml");

    let media_port = free_udp_port();
    let uac = SippProcess::spawn(
        &uac_scenario(gw.dir()),
        Some(gw.udp),
        &caller_ports("1001", "1002", media_port, media_port),
    );
    let mut uac = uac.expect("start the caller SIPp");
    gw.device("1002", "RINGING", STATE_TIMEOUT);
    gw.device("1002", "INUSE", STATE_TIMEOUT);
    let mark = gw.mark();
    let out = uac.wait().expect("caller outcome");
    assert_passes(&gw, &out, "caller");
    let ended = gw.call_ended(STATE_TIMEOUT);
    gw.seen_since(mark, "DEVICE PJSIP/1002 NOT_INUSE", STATE_TIMEOUT);
    let out = uas.wait().expect("callee outcome");
    assert_passes(&gw, &out, "callee");

    assert_eq!(ended.reason, "bye-a", "{}", ended.line);
    // Leg A: the caller's stream in, the echo out; leg B: the stream out, the echo in.
    assert_eq!(
        ended.num("a_in"),
        expected,
        "every packet of the stream reached the relay: {}",
        ended.line
    );
    assert_eq!(
        ended.num("b_out"),
        expected,
        "and was relayed to the callee: {}",
        ended.line
    );
    assert_eq!(
        ended.num("a_in_bytes"),
        ended.num("b_out_bytes"),
        "{}",
        ended.line
    );
    let echoed = ended.num("b_in");
    assert!(
        echoed * 100 >= expected * 95,
        "the callee's echo came back: {}",
        ended.line
    );
    // The echo may still be in flight through the relay when the BYE closes it: a packet
    // counted in on leg B and not yet out on leg A. Allow one or two.
    assert!(
        echoed.abs_diff(ended.num("a_out")) <= 2,
        "and was relayed to the caller: {}",
        ended.line
    );
    assert_eq!(ended.num("a_lost"), 0, "{}", ended.line);
    let latched: SocketAddr = ended
        .get("a_latched")
        .and_then(|a| a.parse().ok())
        .expect("a_latched");
    assert_eq!(latched.port(), media_port, "{}", ended.line);

    // The call was recorded: the caller's leg holds its 4 s of 440 Hz tone.
    let path = gw.dir().join("rec").join("call-1-caller.wav");
    let deadline = std::time::Instant::now() + STATE_TIMEOUT;
    let pcm = loop {
        match media::audio::wav::read_wav(&path) {
            Ok(p) if !p.is_empty() => break p,
            _ if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            other => panic!("no recording at {}: {other:?}", path.display()),
        }
    };
    let secs = pcm.len() as f64 / 8000.0;
    assert!((3.9..=4.1).contains(&secs), "{secs} s recorded");
    let at = |f: f64| goertzel(&pcm[8000..16000], f);
    assert!(at(440.0) > 20.0 * at(1000.0), "the recorded tone is 440 Hz");
}

/// Power of `freq` (Hz) in 8 kHz samples.
fn goertzel(x: &[i16], freq: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * freq / 8000.0;
    let (mut s1, mut s2) = (0.0, 0.0);
    for &v in x {
        let s0 = f64::from(v) + 2.0 * w.cos() * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    s1 * s1 + s2 * s2 - 2.0 * w.cos() * s1 * s2
}

#[test]
fn caller_sending_from_another_port_than_its_sdp_still_gets_audio() {
    let mut gw = GatewayProcess::start(binary(), spec("gw-a"));
    let mut uas = callee(&mut gw, "1002", "call_uas.xml");
    let media_port = free_udp_port();
    // The SDP names a port nothing listens on; RTP really comes from (and goes back to) media_port.
    let wrong = free_udp_port();
    let out = run_scenario(
        &uac_scenario(gw.dir()),
        gw.udp,
        caller_ports("1001", "1002", wrong, media_port),
    )
    .expect("run sipp");
    assert_passes(&gw, &out, "caller");
    let ended = gw.call_ended(STATE_TIMEOUT);
    let callee_out = uas.wait().expect("callee");
    assert_passes(&gw, &callee_out, "callee: answered, echoed, got the BYE");
    let latched: SocketAddr = ended
        .get("a_latched")
        .and_then(|a| a.parse().ok())
        .expect("a_latched");
    assert_eq!(
        latched.port(),
        media_port,
        "latched on the real source: {}",
        ended.line
    );
    assert!(
        ended.num("a_out") > 50,
        "the echo was sent to the real source: {}",
        ended.line
    );
    assert!(
        ended.num("a_out").abs_diff(ended.num("b_in")) <= 2,
        "echo relayed (give or take packets in flight at hang-up): {}",
        ended.line
    );
}

#[test]
fn unknown_number_404_unregistered_480_and_wrong_password_challenged_again() {
    let mut gw = GatewayProcess::start(binary(), spec("gw-a"));
    // 1002 exists but is not registered → 480; 7777 does not exist → 404.
    for (callee, code) in [("1002", "480"), ("7777", "404")] {
        let out = run_scenario(
            &rejected_scenario(&gw, code),
            gw.udp,
            SippOpts {
                keys: vec![("callee".into(), callee.into())],
                ..SippOpts::user("1001", "secret")
            },
        )
        .expect("run sipp");
        assert_passes(&gw, &out, &format!("call to {callee} → {code}"));
    }
    // A wrong password gets a fresh 407, never a call.
    let out = run_scenario(
        &rejected_scenario(&gw, "407"),
        gw.udp,
        SippOpts {
            keys: vec![("callee".into(), "1002".into())],
            ..SippOpts::user("1001", "wrong")
        },
    )
    .expect("run sipp");
    assert_passes(&gw, &out, "wrong password");
    gw.drain();
    assert!(
        !gw.history.iter().any(|l| l.starts_with("CALL ")),
        "no call was set up: {}",
        gw.diag()
    );
}

#[test]
fn hold_and_resume_show_onhold_then_inuse() {
    let mut gw = GatewayProcess::start(binary(), spec("gw-a"));
    let mut uas = callee(&mut gw, "1002", "call_uas_hold.xml");
    let media_port = free_udp_port();
    let out = run_scenario(
        &scenario("call_uac_hold.xml"),
        gw.udp,
        caller_ports("1001", "1002", media_port, media_port),
    )
    .expect("run sipp");
    assert_passes(&gw, &out, "caller holds and resumes");
    let out = uas.wait().expect("callee outcome");
    assert_passes(&gw, &out, "callee");
    // The calling device (1001, in a call though not registered) reads UNAVAILABLE from the
    // gateway's start (no contact yet), goes INUSE, ONHOLD while it holds, INUSE again on
    // resume, and UNAVAILABLE (no registration) after the call.
    let want = [
        "DEVICE PJSIP/1001 UNAVAILABLE",
        "DEVICE PJSIP/1001 INUSE",
        "DEVICE PJSIP/1001 ONHOLD",
        "DEVICE PJSIP/1001 INUSE",
        "DEVICE PJSIP/1001 UNAVAILABLE",
    ];
    let ended = gw.call_ended(STATE_TIMEOUT);
    assert_eq!(ended.reason, "bye-a", "{}", ended.line);
    gw.seen_since(0, "DEVICE PJSIP/1001 UNAVAILABLE", STATE_TIMEOUT);
    let seen: Vec<&str> = gw
        .history
        .iter()
        .map(|l| l.trim())
        .filter(|l| l.starts_with("DEVICE PJSIP/1001 "))
        .collect();
    assert_eq!(seen, want, "{}", gw.diag());
}

#[test]
fn cancel_while_ringing_gives_487_and_frees_the_callee() {
    let mut gw = GatewayProcess::start(binary(), spec("gw-a"));
    let mut uas = callee(&mut gw, "1002", "call_uas_cancel.xml");
    let media_port = free_udp_port();
    let out = run_scenario(
        &scenario("call_uac_cancel.xml"),
        gw.udp,
        caller_ports("1001", "1002", media_port, media_port),
    )
    .expect("run sipp");
    assert_passes(
        &gw,
        &out,
        "caller cancels: 200 for the CANCEL, 487 for the INVITE",
    );
    let out = uas.wait().expect("callee outcome");
    assert_passes(&gw, &out, "callee sees CANCEL, answers 487, gets the ACK");
    let ended = gw.call_ended(STATE_TIMEOUT);
    assert_eq!(ended.reason, "cancel", "{}", ended.line);
    gw.seen_since(0, "DEVICE PJSIP/1002 RINGING", STATE_TIMEOUT);
    let mark = gw
        .history
        .iter()
        .position(|l| l.trim() == "DEVICE PJSIP/1002 RINGING")
        .unwrap_or(0);
    gw.seen_since(mark, "DEVICE PJSIP/1002 NOT_INUSE", STATE_TIMEOUT);
}

/// A callee that says 100 Trying and nothing more, and a caller that CANCELs: RFC 3261 §9.1
/// allows the CANCEL after any provisional response, a 100 included, so the gateway CANCELs
/// the callee at once (its scenario fails if no CANCEL comes within 5 s; before, it came only
/// at Timer C, 181 s), the caller gets 487 and the callee's 487 ends the call.
#[test]
fn cancel_after_only_100_trying_cancels_the_callee_at_once() {
    let mut gw = GatewayProcess::start(binary(), spec("gw-a"));
    let mut uas = callee(&mut gw, "1002", "call_uas_trying_cancel.xml");
    let media_port = free_udp_port();
    let started = std::time::Instant::now();
    let out = run_scenario(
        &scenario("call_uac_cancel_trying.xml"),
        gw.udp,
        caller_ports("1001", "1002", media_port, media_port),
    )
    .expect("run sipp");
    assert_passes(
        &gw,
        &out,
        "caller cancels after 100: 200 for the CANCEL, 487 for the INVITE",
    );
    let out = uas.wait().expect("callee outcome");
    assert_passes(
        &gw,
        &out,
        "callee said 100, got the CANCEL, answered 487, got the ACK",
    );
    let ended = gw.call_ended(STATE_TIMEOUT);
    let took = started.elapsed();
    eprintln!(
        "call ended {:.2} s after the caller's first INVITE",
        took.as_secs_f64()
    );
    assert_eq!(ended.reason, "cancel", "{}", ended.line);
    assert!(took < Duration::from_secs(5), "ended after {took:?}");
    gw.seen_since(0, "DEVICE PJSIP/1002 RINGING", STATE_TIMEOUT);
    let mark = gw
        .history
        .iter()
        .position(|l| l.trim() == "DEVICE PJSIP/1002 RINGING")
        .unwrap_or(0);
    gw.seen_since(mark, "DEVICE PJSIP/1002 NOT_INUSE", STATE_TIMEOUT);
}

#[test]
fn busy_callee_gives_486_to_the_caller() {
    let mut gw = GatewayProcess::start(binary(), spec("gw-a"));
    let mut uas = callee(&mut gw, "1002", "call_uas_busy.xml");
    let out = run_scenario(
        &rejected_scenario(&gw, "486"),
        gw.udp,
        SippOpts {
            keys: vec![("callee".into(), "1002".into())],
            ..SippOpts::user("1001", "secret")
        },
    )
    .expect("run sipp");
    assert_passes(&gw, &out, "caller gets 486");
    let out = uas.wait().expect("callee outcome");
    assert_passes(&gw, &out, "callee said 486 and got its ACK");
    let ended = gw.call_ended(STATE_TIMEOUT);
    assert_eq!(ended.reason, "486", "{}", ended.line);
}

/// Site A's phone dials a DID of site B: gateway A routes the number by prefix over a trunk
/// to gateway B (which knows A's address as a trunk: no digest), B maps the DID to its
/// extension 2002 and rings the registered phone. Both gateways anchor the media; the echo comes back across both relays.
#[test]
fn call_across_two_gateways_over_a_trunk() {
    let (port_a, port_b) = (free_udp_port(), free_udp_port());
    let mut a_spec = spec("gw-a");
    a_spec.udp_port = Some(port_a);
    a_spec.extra = format!(
        "\n[[gateway.trunk]]\nname = \"site-b\"\naddress = \"127.0.0.1:{port_b}\"\nprefixes = [\"2\", \"555\"]\n"
    );
    let mut b_spec = GatewaySpec::new("gw-b", &["2002"]);
    b_spec.qualify_interval_secs = 300.0;
    b_spec.udp_port = Some(port_b);
    b_spec.extra = format!(
        "\n[[gateway.trunk]]\nname = \"site-a\"\naddress = \"127.0.0.1:{port_a}\"\nprefixes = [\"1\"]\n\n[gateway.extensions]\n\"5551234\" = \"2002\"\n"
    );
    let mut gw_a = GatewayProcess::start(binary(), a_spec);
    let mut gw_b = GatewayProcess::start(binary(), b_spec);
    let mut uas = callee(&mut gw_b, "2002", "call_uas.xml");

    let media_port = free_udp_port();
    let out = run_scenario(
        &uac_scenario(gw_a.dir()),
        gw_a.udp,
        caller_ports("1001", "5551234", media_port, media_port),
    )
    .expect("run sipp");
    assert_passes(&gw_a, &out, "caller at site A dials site B's DID 5551234");
    let out = uas.wait().expect("callee outcome");
    assert_passes(&gw_b, &out, "callee at site B");
    let a = gw_a.call_ended(STATE_TIMEOUT);
    let b = gw_b.call_ended(STATE_TIMEOUT);
    assert_eq!(a.reason, "bye-a", "{}", a.line);
    assert_eq!(
        b.reason, "bye-a",
        "site B sees the BYE from the trunk: {}",
        b.line
    );
    // The stream crosses both relays, and the echo comes back across both.
    assert_eq!(a.num("a_in"), STREAM_PACKETS, "{}", a.line);
    assert_eq!(a.num("b_out"), STREAM_PACKETS, "{}", a.line);
    assert_eq!(b.num("a_in"), STREAM_PACKETS, "{}", b.line);
    assert_eq!(b.num("b_out"), STREAM_PACKETS, "{}", b.line);
    assert!(b.num("b_in") * 100 >= STREAM_PACKETS * 95, "{}", b.line);
    assert_eq!(
        a.num("a_out"),
        b.num("b_in"),
        "echo relayed back to the caller: {} / {}",
        a.line,
        b.line
    );
    gw_b.seen_since(0, "DEVICE PJSIP/2002 RINGING", STATE_TIMEOUT);
    gw_b.seen_since(0, "DEVICE PJSIP/2002 INUSE", STATE_TIMEOUT);
}

/// An ITSP trunk: gateway A keeps a registration at the "ITSP" (gateway B, where A's account
/// is device 2999) with digest auth; A's outbound call is challenged by the ITSP (407) and A
/// answers with its account; the ITSP's inbound call to A's number arrives through the
/// registration and A's dial plan maps the DID to extension 1001.
#[test]
fn itsp_trunk_registers_answers_challenges_and_delivers_dids() {
    let (port_a, port_b) = (free_udp_port(), free_udp_port());
    let mut a_spec = spec("gw-a");
    a_spec.udp_port = Some(port_a);
    a_spec.extra = format!(
        "\n[[gateway.trunk]]\nname = \"itsp\"\naddress = \"127.0.0.1:{port_b}\"\nprefixes = [\"2\"]\n\
         username = \"2999\"\npassword = \"secret\"\nregister = true\nregister_expires = 60\n\
         domain = \"gw-b.example\"\n\n[gateway.extensions]\n\"2999\" = \"1001\"\n"
    );
    let mut b_spec = GatewaySpec::new("gw-b", &["2002", "2999"]);
    b_spec.qualify_interval_secs = 300.0;
    b_spec.udp_port = Some(port_b);
    let mut gw_a = GatewayProcess::start(binary(), a_spec);
    let mut gw_b = GatewayProcess::start(binary(), b_spec);
    // A's account at the ITSP carries its users' numbers in From (a PBX behind a device
    // account): it may present identities other than 2999 (issue 12: else 403).
    let out = std::process::Command::new(binary())
        .args(["devices", "add", "--config"])
        .arg(&gw_b.config)
        .args(["--user", "2999", "--password", "secret", "--present-any"])
        .output()
        .expect("devices add");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A registers at the ITSP: its account shows up there.
    gw_b.device("2999", "NOT_INUSE", Duration::from_secs(15));

    // Outbound: 1001 at A dials 2002 at the ITSP; the ITSP challenges A, A authenticates.
    let mut uas_b = callee(&mut gw_b, "2002", "call_uas.xml");
    let media_port = free_udp_port();
    let out = run_scenario(
        &uac_scenario(gw_a.dir()),
        gw_a.udp,
        caller_ports("1001", "2002", media_port, media_port),
    )
    .expect("run sipp");
    assert_passes(&gw_a, &out, "outbound call through the ITSP");
    assert_passes(
        &gw_b,
        &uas_b.wait().expect("callee outcome"),
        "ITSP-side callee",
    );
    let a = gw_a.call_ended(STATE_TIMEOUT);
    let b = gw_b.call_ended(STATE_TIMEOUT);
    assert_eq!(
        b.num("a_in"),
        STREAM_PACKETS,
        "media reached the ITSP: {}",
        b.line
    );
    assert_eq!(a.num("a_in"), STREAM_PACKETS, "{}", a.line);
    // The ITSP saw the call as coming from A's account.
    gw_b.seen_since(0, "DEVICE PJSIP/2999 INUSE", STATE_TIMEOUT);

    // Inbound: 2002 at the ITSP dials A's number 2999; it reaches A through the registration,
    // and A's DID map rings extension 1001 (a SIPp UAS registered at A).
    let mut uas_a = callee(&mut gw_a, "1001", "call_uas.xml");
    let media_port = free_udp_port();
    let out = run_scenario(
        &uac_scenario(gw_b.dir()),
        gw_b.udp,
        caller_ports("2002", "2999", media_port, media_port),
    )
    .expect("run sipp");
    assert_passes(&gw_b, &out, "inbound DID call from the ITSP");
    assert_passes(
        &gw_a,
        &uas_a.wait().expect("callee outcome"),
        "site-A callee 1001",
    );
    let a = gw_a.call_ended(STATE_TIMEOUT);
    assert_eq!(
        a.num("b_out"),
        STREAM_PACKETS,
        "media reached extension 1001: {}",
        a.line
    );
}

/// SHA-256 digest end to end (SIPp and baresip only do MD5): a gateway registers at a
/// registrar that offers SHA-256 only, as its ITSP client does, and the account reads
/// NOT_INUSE there.
#[test]
fn registration_with_sha256_digest() {
    let (port_a, port_b) = (free_udp_port(), free_udp_port());
    let mut a_spec = spec("gw-a");
    a_spec.udp_port = Some(port_a);
    a_spec.extra = format!(
        "\n[[gateway.trunk]]\nname = \"itsp\"\naddress = \"127.0.0.1:{port_b}\"\n\
         username = \"2999\"\npassword = \"secret\"\nregister = true\nregister_expires = 60\n"
    );
    let mut b_spec = GatewaySpec::new("gw-b", &["2999"]);
    b_spec.digest_algorithms = vec!["SHA-256".into()];
    b_spec.udp_port = Some(port_b);
    let _gw_a = GatewayProcess::start(binary(), a_spec);
    let mut gw_b = GatewayProcess::start(binary(), b_spec);
    gw_b.device("2999", "NOT_INUSE", Duration::from_secs(15));
}

/// Media timeout: a call in which nobody sends RTP is hung up on both sides after
/// `media_timeout_secs` (each phone gets a BYE).
#[test]
fn silent_call_is_hung_up_on_both_sides_after_the_media_timeout() {
    let mut s = spec("gw-a");
    s.extra = "media_timeout_secs = 2\n".into();
    let mut gw = GatewayProcess::start(binary(), s);
    // The callee answers and waits for a BYE; the caller (call_uac_feature.xml) answers the
    // gateway's BYE too. Neither sends RTP.
    let mut uas = callee(&mut gw, "1002", "call_uas.xml");
    let started = std::time::Instant::now();
    let out = run_scenario(
        &scenario("call_uac_feature.xml"),
        gw.udp,
        caller_ports("1001", "1002", free_udp_port(), free_udp_port()),
    )
    .expect("run sipp");
    assert_passes(&gw, &out, "caller gets the gateway's BYE");
    assert_passes(
        &gw,
        &uas.wait().expect("callee"),
        "callee gets the gateway's BYE",
    );
    let ended = gw.call_ended(STATE_TIMEOUT);
    assert_eq!(ended.reason, "media-timeout", "{}", ended.line);
    let after = started.elapsed();
    assert!(
        after >= Duration::from_secs(2) && after < Duration::from_secs(8),
        "hung up after {after:?}"
    );
}

/// `call_uac_unanswered.xml` expecting a 180 then final response `code`, written into the
/// gateway's directory.
fn unanswered_scenario(gw: &GatewayProcess, code: &str) -> PathBuf {
    let text = std::fs::read_to_string(scenario("call_uac_unanswered.xml")).expect("read scenario");
    let path = gw.dir().join(format!("call_uac_unanswered_{code}.xml"));
    std::fs::write(&path, text.replace("@CODE@", code)).expect("write scenario");
    path
}

/// The value of counter `name` on the gateway's `/metrics` (its `[http]` listener).
fn counter(gw: &mut GatewayProcess, name: &str) -> f64 {
    use std::io::{Read as _, Write as _};
    gw.drain();
    let ready = |l: &str| l.trim().starts_with("http ready ");
    let line = match gw.history.iter().find(|l| ready(l)) {
        Some(l) => l.clone(),
        None => gw.wait_for(STATE_TIMEOUT, "the http ready line", ready),
    };
    let addr = line.trim().trim_start_matches("http ready ").to_owned();
    let mut conn = std::net::TcpStream::connect(addr.as_str()).expect("connect to /metrics");
    write!(
        conn,
        "GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut text = String::new();
    conn.read_to_string(&mut text).expect("response");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics: {text}"))
}

/// Issue 16: a phone that sends 180 and then nothing. With `timer_c_secs = 3` the gateway
/// CANCELs it 3 s after its 180 (the SIPp callee answers the CANCEL 200 and the INVITE 487)
/// and the caller gets 408 within the bound; with `ring_timeout_secs = 2` (and the default
/// Timer C) the caller gets 480 after 2 s. Each is counted on `/metrics`.
#[test]
fn a_phone_that_rings_forever_is_cancelled_by_timer_c_or_the_ring_limit() {
    for (extra, code, reason, bound, metric) in [
        (
            "timer_c_secs = 3\n",
            "408",
            "no-answer",
            3.0,
            "callfabric_gateway_invite_timer_c_total",
        ),
        (
            "ring_timeout_secs = 2\n",
            "480",
            "ring-timeout",
            2.0,
            "callfabric_gateway_ring_timeouts_total",
        ),
    ] {
        let mut s = spec("gw-a");
        s.extra =
            format!("{extra}[http]\nlisten = \"127.0.0.1:0\"\ntoken = \"a-token-for-the-tests\"\n");
        let mut gw = GatewayProcess::start(binary(), s);
        let mut uas = callee(&mut gw, "1002", "call_uas_cancel.xml");
        let started = std::time::Instant::now();
        let out = run_scenario(
            &unanswered_scenario(&gw, code),
            gw.udp,
            SippOpts {
                keys: vec![("callee".into(), "1002".into())],
                ..SippOpts::user("1001", "secret")
            },
        )
        .expect("run sipp");
        let took = started.elapsed().as_secs_f64();
        eprintln!("{code} to the caller {took:.2} s after its first INVITE");
        assert_passes(&gw, &out, &format!("caller hears 180, then gets {code}"));
        let out = uas.wait().expect("callee outcome");
        assert_passes(&gw, &out, "callee rang, got the CANCEL, answered 200 + 487");
        // SIPp's run includes its registration-free start, the 407 round and a 300 ms
        // timewait: the final response came after the bound and well before twice it.
        assert!(
            took >= bound && took < bound + 3.0,
            "{code} after {took:.1} s, bound {bound} s"
        );
        let ended = gw.call_ended(STATE_TIMEOUT);
        assert_eq!(ended.reason, reason, "{}", ended.line);
        assert_eq!(counter(&mut gw, metric), 1.0, "{metric}");
        let ringing = (gw.history.iter())
            .position(|l| l.trim() == "DEVICE PJSIP/1002 RINGING")
            .expect("the phone rang");
        gw.seen_since(ringing, "DEVICE PJSIP/1002 NOT_INUSE", STATE_TIMEOUT);
    }
}

//! End to end through the real `callfabric gateway` binary, the gateway-side behaviour that no
//! other test exercised through the process: a call over TCP (SIPp caller over TCP, baresip
//! callee registered over TCP), `GET /calls` on the status API during and after a call, the
//! outbound (ITSP) registration's 423 / refresh / retry timing against a SIPp registrar, CDR
//! rows on PostgreSQL, the per-device call limit (BUSY, 486) and a re-INVITE glare (491, RFC
//! 3261 §14.1), and a phone back on a new address after a restart (available at once).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gateway::devices::{DeviceRecord, DeviceStore};
use gateway::records::Cdr;
use integration::baresip::{AudioSource, Baresip, BaresipOptions};
use integration::gateway::{GatewayProcess, GatewaySpec};
use integration::phones::{
    answering_phone, assert_passes, caller, caller_ports, scenario, uac_scenario, STREAM_PACKETS,
};
use integration::postgres::Postgres;
use integration::sipp::{run_scenario, SippOpts, SippProcess, SippTransport};
use integration::{free_udp_port, wait_until};

const STATE_TIMEOUT: Duration = Duration::from_secs(10);

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_callfabric"))
}

/// A gateway with devices `devices`; qualify is slow because a SIPp UAS cannot answer OPTIONS
/// outside its scenario; the status API on a free port.
fn spec(devices: &[&str]) -> GatewaySpec {
    let mut s = GatewaySpec::new("gw-a", devices);
    s.qualify_interval_secs = 300.0;
    s.extra = "\n[http]\nlisten = \"127.0.0.1:0\"\n".into();
    s
}

/// A callee phone (SIPp UAS running `uas`) registered as `user`; waits until it reads
/// NOT_INUSE.
fn callee(gw: &mut GatewayProcess, user: &str, uas: &str) -> SippProcess {
    let phone = answering_phone(gw, user, uas, 1);
    gw.device(user, "NOT_INUSE", STATE_TIMEOUT);
    phone
}

/// `call_rejected.xml` expecting final response `code`, written into the gateway's directory.
fn rejected_scenario(gw: &GatewayProcess, code: &str) -> PathBuf {
    let text = std::fs::read_to_string(scenario("call_rejected.xml")).expect("read scenario");
    let path = gw.dir().join(format!("call_rejected_{code}.xml"));
    std::fs::write(&path, text.replace("@CODE@", code)).expect("write scenario");
    path
}

/// `GET path` on the status API, as JSON.
fn api(gw: &mut GatewayProcess, path: &str) -> serde_json::Value {
    gw.api(path, STATE_TIMEOUT)
}

/// One message of a SIPp `-trace_msg` log.
#[derive(Debug)]
struct Traced {
    /// Seconds since the epoch (the log's wall clock).
    at: f64,
    received: bool,
    /// The SIP message.
    text: String,
}

impl Traced {
    fn start_line(&self) -> &str {
        self.text.lines().next().unwrap_or("").trim()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.text.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then_some(v.trim())
        })
    }
}

/// Splits a SIPp message log (`----- <date> <hh:mm:ss.micros>` separators).
fn traced(log: &str) -> Vec<Traced> {
    let mut out = Vec::new();
    for block in log
        .split("-----------------------------------------------")
        .skip(1)
    {
        let mut lines = block.lines();
        let stamp = lines.next().unwrap_or("").trim();
        let mut fields = stamp.split_whitespace();
        let (Some(date), Some(time)) = (fields.next(), fields.next()) else {
            continue;
        };
        // The date too: an interval across midnight is not a day negative.
        let Some(at) = integration::clock::epoch_secs(date, time) else {
            continue;
        };
        let Some(kind) = lines.next() else { continue };
        let received = kind.contains("received");
        let text = lines
            .skip_while(|l| l.trim().is_empty())
            .collect::<Vec<_>>()
            .join("\n");
        out.push(Traced { at, received, text });
    }
    out
}

/// A call over TCP on both sides: SIPp calls over TCP (`-t t1`) and streams its tone; the
/// callee is baresip registered over TCP, so the gateway's INVITE goes down the connection the
/// REGISTER came in on. Media both ways, on the relay's figures and in the callee's ears.
#[test]
fn call_over_tcp_relays_media_both_ways() {
    let mut gw = GatewayProcess::start(binary(), spec(&["1001", "1002"]));
    let phone = Baresip::start_with(
        "1002",
        "secret",
        &gw.tcp.to_string(),
        60,
        "tcp",
        &BaresipOptions {
            audio_source: AudioSource::Sine(600),
            dump_audio: true,
            sip_trace: true,
            ..BaresipOptions::default()
        },
    )
    .expect("start baresip");
    gw.device("1002", "NOT_INUSE", STATE_TIMEOUT);

    let out = run_scenario(
        &uac_scenario(gw.dir()),
        gw.tcp,
        SippOpts {
            transport: SippTransport::Tcp,
            ..caller("1001", "1002")
        },
    )
    .expect("run sipp");
    assert_passes(&gw, &out, "caller over TCP");
    assert!(
        out.messages.contains("SIP/2.0/TCP"),
        "the caller spoke TCP: {}",
        out.describe()
    );
    let ended = gw.call_ended(STATE_TIMEOUT);
    assert_eq!(ended.reason, "bye-a", "{}", ended.line);
    assert_eq!(ended.num("a_in"), STREAM_PACKETS, "{}", ended.line);
    assert_eq!(ended.num("b_out"), STREAM_PACKETS, "{}", ended.line);
    // baresip talks for the whole call (~5.5 s of 20 ms packets).
    let back = ended.num("b_in");
    assert!(
        back >= 200,
        "the callee's audio reached the relay: {}",
        ended.line
    );
    // baresip talks until the BYE: what leg B takes in after leg A closed (the legs close one
    // after the other, slower on a loaded machine) is counted in but not relayed (measured: 3).
    assert!(
        back.abs_diff(ended.num("a_out")) <= 5,
        "and was relayed to the caller: {}",
        ended.line
    );
    // The INVITE reached baresip over TCP from the gateway's TCP listener.
    let log = phone.log();
    assert!(
        log.contains("INVITE sip:") && log.contains(&format!("SIP/2.0/TCP {}", gw.tcp)),
        "the gateway's INVITE came over TCP:\n{log}"
    );
    // What baresip heard is the caller's 440 Hz tone.
    let deadline = Instant::now() + STATE_TIMEOUT;
    let heard = loop {
        let pcm = phone
            .dumps("dec")
            .first()
            .and_then(|p| media::audio::wav::read_wav(p).ok())
            .unwrap_or_default();
        if pcm.len() >= 24_000 {
            break pcm;
        }
        assert!(
            Instant::now() < deadline,
            "no received-audio dump in {}: {:?}",
            phone.dir().display(),
            phone.dumps("dec")
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let second = &heard[8000..16000];
    assert!(
        goertzel(second, 440.0) > 20.0 * goertzel(second, 600.0),
        "the callee heard the caller's 440 Hz tone"
    );
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

/// `GET /calls` during a call shows who calls whom and the relay's live figures; after the
/// call it is empty again.
#[test]
fn status_api_lists_the_call_with_parties_and_rtp_figures() {
    let mut gw = GatewayProcess::start(binary(), spec(&["1001", "1002"]));
    let mut uas = callee(&mut gw, "1002", "call_uas.xml");
    assert_eq!(api(&mut gw, "/calls"), serde_json::json!([]), "no call yet");

    let media_port = free_udp_port();
    let mut uac = SippProcess::spawn(
        &uac_scenario(gw.dir()),
        Some(gw.udp),
        &caller_ports("1001", "1002", media_port, media_port),
    )
    .expect("start the caller SIPp");
    // Poll until both directions have flowed for a while (the echo: ≥ 50 packets back).
    let mut live = serde_json::Value::Null;
    wait_until(STATE_TIMEOUT, "50 packets each way on GET /calls", || {
        live = api(&mut gw, "/calls");
        live[0]["a"]["rtp_packets_in"].as_u64().unwrap_or(0) >= 50
            && live[0]["b"]["rtp_packets_in"].as_u64().unwrap_or(0) >= 50
    })
    .unwrap_or_else(|e| panic!("{e}: {live}\n{}", gw.diag()));
    let calls = live.as_array().expect("an array");
    assert_eq!(calls.len(), 1, "{live}");
    let c = &calls[0];
    assert_eq!(c["caller"], "1001", "{c}");
    assert_eq!(c["dialled"], "1002", "{c}");
    assert_eq!(c["caller_device"], "PJSIP/1001", "{c}");
    assert_eq!(c["callee_device"], "PJSIP/1002", "{c}");
    let latched: SocketAddr = c["a"]["latched_source"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("a latched source: {c}"));
    assert_eq!(latched.port(), media_port, "{c}");
    assert_eq!(c["a"]["payload_types"], serde_json::json!([8]), "{c}");
    let a_in = c["a"]["rtp_packets_in"].as_u64().unwrap_or(0);
    assert!(
        a_in <= STREAM_PACKETS,
        "at most the stream: {a_in} of {STREAM_PACKETS}"
    );
    // 160 bytes of A-law a packet (plus the header when counted).
    let a_bytes = c["a"]["rtp_bytes_in"].as_u64().unwrap_or(0);
    assert!(a_bytes >= a_in * 160, "{c}");
    assert!(
        c["b"]["rtp_packets_out"].as_u64().unwrap_or(0) + 2 >= a_in,
        "relayed to the callee: {c}"
    );
    assert_eq!(c["a"]["lost"], 0, "{c}");

    assert_passes(&gw, &uac.wait().expect("caller outcome"), "caller");
    assert_passes(&gw, &uas.wait().expect("callee outcome"), "callee");
    let ended = gw.call_ended(STATE_TIMEOUT);
    assert_eq!(ended.num("a_in"), STREAM_PACKETS, "{}", ended.line);
    assert!(ended.num("a_in") >= a_in);
    let mut after = serde_json::Value::Null;
    wait_until(STATE_TIMEOUT, "GET /calls empty after the call", || {
        after = api(&mut gw, "/calls");
        after == serde_json::json!([])
    })
    .unwrap_or_else(|e| panic!("{e}: {after}"));
}

/// The gateway's registration at an ITSP (a SIPp registrar): a 423 is answered at once with
/// the registrar's Min-Expires; the granted 10 s are refreshed at 80 % (8 s, not at expiry nor
/// 1 s before it); failures (503, 500) are retried after the retry interval (3 s here:
/// `min(30 s, 30 × qualify interval)`), not at once and not never.
#[test]
fn itsp_registration_423_refresh_at_80_percent_and_retry_spacing() {
    let port = free_udp_port();
    let mut registrar = SippProcess::spawn(
        &scenario("itsp_registrar.xml"),
        None,
        &SippOpts {
            local_port: Some(port),
            timeout: Duration::from_secs(60),
            ..SippOpts::default()
        },
    )
    .expect("start the SIPp registrar");
    let mut s = spec(&["1001"]);
    s.qualify_interval_secs = 0.1;
    s.extra = format!(
        "\n[[gateway.trunk]]\nname = \"itsp\"\naddress = \"127.0.0.1:{port}\"\n\
         username = \"2999\"\npassword = \"secret\"\nregister = true\nregister_expires = 2\n\
         domain = \"itsp.example\"\n"
    );
    let gw = GatewayProcess::start(binary(), s);
    let out = registrar.wait().expect("registrar outcome");
    assert_passes(&gw, &out, "the registrar's scenario");
    let log = traced(&out.messages);
    // Each REGISTER once (by CSeq: a retransmission is not a new attempt), and each answer.
    let mut registers: Vec<&Traced> = Vec::new();
    for m in log
        .iter()
        .filter(|m| m.received && m.start_line().starts_with("REGISTER "))
    {
        if !registers
            .iter()
            .any(|r| r.header("CSeq") == m.header("CSeq"))
        {
            registers.push(m);
        }
    }
    let answers: Vec<&Traced> = log
        .iter()
        .filter(|m| !m.received && m.start_line().starts_with("SIP/2.0 "))
        .collect();
    let codes: Vec<&str> = answers
        .iter()
        .map(|m| m.start_line().split_whitespace().nth(1).unwrap_or(""))
        .collect();
    assert_eq!(
        codes,
        ["423", "200", "503", "500", "200"],
        "{}",
        out.describe()
    );
    assert_eq!(registers.len(), 5, "{}", out.describe());
    let expires: Vec<&str> = registers
        .iter()
        .map(|r| r.header("Expires").unwrap_or(""))
        .collect();
    assert_eq!(
        expires,
        ["2", "10", "10", "10", "10"],
        "asks for 2 s, then the Min-Expires of the 423"
    );
    let gap = |i: usize| registers[i + 1].at - answers[i].at;
    assert!(
        gap(0) < 1.0,
        "re-REGISTER after the 423 at once: {:.2} s",
        gap(0)
    );
    assert!(
        (7.6..=8.8).contains(&gap(1)),
        "refresh at 80 % of the granted 10 s: after {:.2} s",
        gap(1)
    );
    for i in [2, 3] {
        assert!(
            (2.7..=4.0).contains(&gap(i)),
            "retry {:.2} s after the {} (retry interval 3 s)",
            gap(i),
            codes[i]
        );
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// With the device database on PostgreSQL, an answered call and one refused because the callee
/// is not registered (480, no call set up) each leave a `cdr` row with the right parties,
/// disposition and billable seconds.
#[test]
fn cdr_rows_on_postgresql() {
    let pg = Postgres::start().expect("postgres");
    let mut s = spec(&["1001", "1002", "1003"]);
    s.database = Some(pg.url());
    let mut gw = GatewayProcess::start(binary(), s);
    let mut uas = callee(&mut gw, "1002", "call_uas.xml");
    let out =
        run_scenario(&uac_scenario(gw.dir()), gw.udp, caller("1001", "1002")).expect("run sipp");
    assert_passes(&gw, &out, "answered call");
    assert_passes(&gw, &uas.wait().expect("callee outcome"), "callee");
    // 1003 exists but is not registered: 480, never answered.
    let out = run_scenario(
        &rejected_scenario(&gw, "480"),
        gw.udp,
        SippOpts {
            keys: vec![("callee".into(), "1003".into())],
            ..SippOpts::user("1001", "secret")
        },
    )
    .expect("run sipp");
    assert_passes(&gw, &out, "call to an unregistered phone");
    let rt = runtime();
    let store = rt
        .block_on(DeviceStore::open(&pg.url()))
        .expect("open the database");
    let mut rows: Vec<Cdr> = Vec::new();
    wait_until(STATE_TIMEOUT, "two CDR rows", || {
        rows = rt.block_on(store.cdrs()).expect("read cdr");
        rows.len() >= 2
    })
    .unwrap_or_else(|e| panic!("{e}: {rows:?}\n{}", gw.diag()));
    assert_eq!(rows.len(), 2, "{rows:?}");
    let answered = rows
        .iter()
        .find(|r| r.dst == "1002")
        .unwrap_or_else(|| panic!("a row for the call to 1002: {rows:?}"));
    assert_eq!(answered.src, "1001", "{answered:?}");
    assert_eq!(answered.src_device.as_deref(), Some("PJSIP/1001"));
    assert_eq!(answered.dst_device.as_deref(), Some("PJSIP/1002"));
    assert_eq!(answered.disposition, "ANSWERED", "{answered:?}");
    assert_eq!(answered.reason, "bye-a", "{answered:?}");
    assert_eq!(answered.node, "gw-a");
    // The caller hangs up 5.5 s after its ACK.
    assert!((5..=7).contains(&answered.billsec), "{answered:?}");
    assert!(answered.duration >= answered.billsec, "{answered:?}");
    assert!(answered.duration <= answered.billsec + 2, "{answered:?}");
    assert!(answered.answer_time.is_some(), "{answered:?}");
    assert_eq!(answered.rtp_in_a, STREAM_PACKETS as i64, "{answered:?}");
    assert!(
        answered.rtp_in_b * 100 >= STREAM_PACKETS as i64 * 95,
        "{answered:?}"
    );
    let unanswered = rows
        .iter()
        .find(|r| r.dst == "1003")
        .unwrap_or_else(|| panic!("a row for the call to 1003: {rows:?}"));
    assert_eq!(unanswered.src, "1001", "{unanswered:?}");
    assert_eq!(unanswered.disposition, "NO ANSWER", "{unanswered:?}");
    assert_eq!(unanswered.reason, "480", "{unanswered:?}");
    assert_eq!(unanswered.billsec, 0, "{unanswered:?}");
    assert_eq!(unanswered.answer_time, None, "{unanswered:?}");
    assert_ne!(answered.uniqueid, unanswered.uniqueid);
}

/// A device whose call limit is 1 reads BUSY (on the bus and on the status API) while in one
/// call, and a further call to it gets 486 without ringing it (and a BUSY CDR); it is NOT_INUSE
/// afterwards.
#[test]
fn device_at_its_call_limit_is_busy_and_a_further_call_gets_486() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("devices.db").display());
    let mut s = spec(&["1001", "1003"]);
    s.database = Some(url.clone());
    let mut limited = DeviceRecord::with_password("1002", &s.realm, "secret");
    limited.call_limit = 1;
    runtime().block_on(async {
        let store = DeviceStore::open(&url).await.expect("create the database");
        store.upsert(&limited).await.expect("add 1002");
        store.close().await;
    });
    let mut gw = GatewayProcess::start(binary(), s);
    let mut uas = callee(&mut gw, "1002", "call_uas.xml");
    let mark = gw.mark();
    let mut first = SippProcess::spawn(
        &uac_scenario(gw.dir()),
        Some(gw.udp),
        &caller("1001", "1002"),
    )
    .expect("start the caller SIPp");
    gw.device("1002", "BUSY", STATE_TIMEOUT);
    assert_eq!(api(&mut gw, "/devices")["PJSIP/1002"], "BUSY");

    let out = run_scenario(
        &rejected_scenario(&gw, "486"),
        gw.udp,
        SippOpts {
            keys: vec![("callee".into(), "1002".into())],
            ..SippOpts::user("1003", "secret")
        },
    )
    .expect("run sipp");
    assert_passes(&gw, &out, "a second call to the busy device gets 486");

    assert_passes(&gw, &first.wait().expect("caller outcome"), "first caller");
    // The callee SIPp takes one call only: a second INVITE would have failed it.
    assert_passes(&gw, &uas.wait().expect("callee outcome"), "callee");
    let ended = gw.call_ended(STATE_TIMEOUT);
    assert_eq!(ended.reason, "bye-a", "{}", ended.line);
    gw.seen_since(mark, "DEVICE PJSIP/1002 NOT_INUSE", STATE_TIMEOUT);
    let states: Vec<&str> = gw
        .history
        .iter()
        .skip(mark)
        .map(|l| l.trim())
        .filter(|l| l.starts_with("DEVICE PJSIP/1002 "))
        .collect();
    assert_eq!(
        states,
        ["DEVICE PJSIP/1002 BUSY", "DEVICE PJSIP/1002 NOT_INUSE"],
        "{}",
        gw.diag()
    );
    let calls = gw
        .history
        .iter()
        .filter(|l| l.starts_with("CALL ") && l.contains(" ENDED "))
        .count();
    assert_eq!(calls, 1, "the refused call never started: {}", gw.diag());
    // The refusal still leaves a CDR: BUSY, never answered.
    let rt = runtime();
    let store = rt
        .block_on(DeviceStore::open(&url))
        .expect("open the database");
    let mut rows: Vec<Cdr> = Vec::new();
    wait_until(STATE_TIMEOUT, "two CDR rows", || {
        rows = rt.block_on(store.cdrs()).expect("read cdr");
        rows.len() >= 2
    })
    .unwrap_or_else(|e| panic!("{e}: {rows:?}"));
    let refused = rows
        .iter()
        .find(|r| r.src == "1003")
        .unwrap_or_else(|| panic!("a row for 1003's call: {rows:?}"));
    assert_eq!(refused.dst, "1002", "{refused:?}");
    assert_eq!(refused.dst_device.as_deref(), Some("PJSIP/1002"));
    assert_eq!(refused.disposition, "BUSY", "{refused:?}");
    assert_eq!(refused.reason, "486", "{refused:?}");
    assert_eq!(refused.billsec, 0, "{refused:?}");
}

/// Re-INVITE glare (RFC 3261 §14.1): the callee's re-INVITE is relayed to the caller, whose own
/// re-INVITE crosses it. The gateway, with an offer pending on the call, answers the caller
/// 491 at once and does not relay its INVITE; the caller's 491 for the relayed one goes back to
/// the callee. Both retry as §14.1 says (non-owner of the Call-ID within 2 s, owner after
/// 2.1-4 s) and both retries go through.
#[test]
fn reinvite_glare_gets_491_on_both_sides_and_the_retries_go_through() {
    let mut gw = GatewayProcess::start(binary(), spec(&["1001", "1002"]));
    let mut uas = callee(&mut gw, "1002", "call_uas_glare.xml");
    let media_port = free_udp_port();
    let out = run_scenario(
        &scenario("call_uac_glare.xml"),
        gw.udp,
        caller_ports("1001", "1002", media_port, media_port),
    )
    .expect("run sipp");
    assert_passes(&gw, &out, "caller: crossing re-INVITEs, 491, retry");
    let callee_out = uas.wait().expect("callee outcome");
    assert_passes(&gw, &callee_out, "callee: 491 relayed, retry");
    let ended = gw.call_ended(STATE_TIMEOUT);
    assert_eq!(ended.reason, "bye-a", "{}", ended.line);

    let a = traced(&out.messages);
    let b = traced(&callee_out.messages);
    let sent_invite = |log: &[Traced], cseq: &str| -> f64 {
        log.iter()
            .find(|m| {
                !m.received
                    && m.start_line().starts_with("INVITE ")
                    && m.header("CSeq") == Some(cseq)
            })
            .map(|m| m.at)
            .unwrap_or_else(|| panic!("no INVITE {cseq} sent"))
    };
    let got_491 = |log: &[Traced]| -> f64 {
        log.iter()
            .find(|m| m.received && m.start_line().starts_with("SIP/2.0 491"))
            .map(|m| m.at)
            .expect("a 491")
    };
    // The gateway answered the crossing INVITE itself, at once (not after a timeout).
    let crossing = sent_invite(&a, "3 INVITE");
    assert!(
        got_491(&a) - crossing < 0.5,
        "491 for the crossing re-INVITE after {:.2} s",
        got_491(&a) - crossing
    );
    // The callee's 491 is the caller's, relayed.
    let relayed = got_491(&b) - sent_invite(&b, "101 INVITE");
    assert!(
        relayed < 1.0,
        "491 relayed to the callee after {relayed:.2} s"
    );
    // The retries went through in §14.1's order: the callee's first, then the caller's.
    let b_retry = sent_invite(&b, "102 INVITE") - got_491(&b);
    let a_retry = sent_invite(&a, "4 INVITE") - got_491(&a);
    assert!((0.0..=2.0).contains(&b_retry), "{b_retry:.2} s");
    assert!((2.1..=4.0).contains(&a_retry), "{a_retry:.2} s");
}

/// A phone back on a new address after the gateway was killed and started again: its restored
/// binding (the old address, where nothing answers now) waits for a qualify, and the REGISTER
/// from the new address makes the device NOT_INUSE at once although the AOR was registered
/// already (no registrar event); a call then reaches the phone at its new address.
#[test]
fn phone_registering_from_a_new_address_after_a_restart_is_available_at_once() {
    let mut gw = GatewayProcess::start(binary(), spec(&["1001", "1002"]));
    let old_phone = callee(&mut gw, "1002", "call_uas.xml");
    drop(old_phone);
    gw.restart();
    let mark = gw.mark();
    let mut uas = answering_phone(&mut gw, "1002", "call_uas.xml", 1);
    gw.seen_since(mark, "DEVICE PJSIP/1002 NOT_INUSE", STATE_TIMEOUT);
    assert_eq!(api(&mut gw, "/devices")["PJSIP/1002"], "NOT_INUSE");
    let out =
        run_scenario(&uac_scenario(gw.dir()), gw.udp, caller("1001", "1002")).expect("run sipp");
    assert_passes(&gw, &out, "call to the phone at its new address");
    assert_passes(&gw, &uas.wait().expect("callee outcome"), "callee");
    let ended = gw.call_ended(STATE_TIMEOUT);
    assert_eq!(ended.reason, "bye-a", "{}", ended.line);
}

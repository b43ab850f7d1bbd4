//! End to end through the real `callfabric gateway` binary, the SIP extensions trunks and PBXes
//! use (issue 11, item 7): late-offer calls from a phone and from a trunk (the caller's INVITE
//! has no SDP: the gateway offers in its 200 and takes the answer from the ACK), a 100rel call
//! (reliable 183 with SDP from the callee, PRACKed on both legs), and session timers (RFC 4028):
//! refreshes keep a call up past its interval, and a missing refresh ends it with BYE on both
//! legs.
//!
//! SIPp plays both phones and the trunk (`tests/sipp/call_uac_*.xml`, `call_uas_*.xml`,
//! `call_trunk_late_offer.xml`); media is checked on the relay's own figures (`CALL <n> ENDED <reason> a_in=… b_out=…`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use integration::free_udp_port;
use integration::gateway::{CallEnded, GatewayProcess, GatewaySpec};
use integration::phones::{assert_passes, caller, scenario, uac_scenario, STREAM_PACKETS};
use integration::sipp::{run_scenario, SippOpts, SippProcess};

const STATE_TIMEOUT: Duration = Duration::from_secs(10);

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_callfabric"))
}

/// A gateway with devices 1001 and 1002 (slow qualify: a SIPp UAS cannot answer OPTIONS
/// outside its scenario) and `extra` lines in `[gateway]`.
fn spec(extra: &str) -> GatewaySpec {
    let mut s = GatewaySpec::new("gw-x", &["1001", "1002"]);
    s.qualify_interval_secs = 300.0;
    s.extra = extra.into();
    s
}

/// `name` with the caller's A-law file (written by `uac_scenario`) in place of `@RTP_FILE@`,
/// copied into the gateway's directory.
fn caller_scenario(gw: &GatewayProcess, name: &str) -> PathBuf {
    uac_scenario(gw.dir());
    let audio = gw.dir().join("caller.alaw");
    let text = std::fs::read_to_string(scenario(name)).expect("read scenario");
    let path = gw.dir().join(name);
    std::fs::write(
        &path,
        text.replace("@RTP_FILE@", &audio.display().to_string()),
    )
    .expect("write scenario");
    path
}

/// A callee (SIPp UAS running `uas` with `keys`, echoing RTP) registered as 1002; waits until
/// the device reads NOT_INUSE.
fn callee(gw: &mut GatewayProcess, uas: &str, keys: &[(&str, &str)]) -> SippProcess {
    let sip_port = free_udp_port();
    let media_port = integration::free_media_port();
    let phone = SippProcess::spawn(
        &scenario(uas),
        None,
        &SippOpts {
            local_port: Some(sip_port),
            timeout: Duration::from_secs(60),
            keys: keys
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            extra_args: vec!["-rtp_echo".into(), "-mp".into(), media_port.to_string()],
            ..SippOpts::default()
        },
    )
    .expect("start the answering SIPp");
    let reg = run_scenario(
        &scenario("register_contact.xml"),
        gw.udp,
        SippOpts {
            keys: vec![("contact_port".into(), sip_port.to_string())],
            ..SippOpts::user("1002", "secret")
        },
    )
    .expect("run sipp");
    assert_passes(gw, &reg, "registration of the answering phone");
    gw.device("1002", "NOT_INUSE", STATE_TIMEOUT);
    phone
}

/// Runs the caller scenario `uac` (with `keys`) against a callee already registered; returns
/// the call's end line after both phones passed.
fn call(
    gw: &mut GatewayProcess,
    mut callee: SippProcess,
    uac: &str,
    keys: &[(&str, &str)],
) -> CallEnded {
    let mut opts = caller("1001", "1002");
    opts.keys
        .extend(keys.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    let out = run_scenario(&caller_scenario(gw, uac), gw.udp, opts).expect("run sipp");
    assert_passes(gw, &out, "caller");
    let ended = gw.call_ended(STATE_TIMEOUT);
    let out = callee.wait().expect("callee outcome");
    assert_passes(gw, &out, "callee");
    ended
}

/// Every packet of the caller's stream crossed the relay to the callee, and the callee's echo
/// came back to the caller.
#[track_caller]
fn media_both_ways(ended: &CallEnded) {
    assert_eq!(ended.num("a_in"), STREAM_PACKETS, "{}", ended.line);
    assert_eq!(ended.num("b_out"), STREAM_PACKETS, "{}", ended.line);
    let echoed = ended.num("b_in");
    assert!(
        echoed * 100 >= STREAM_PACKETS * 95,
        "the callee's echo came back: {}",
        ended.line
    );
    assert!(
        echoed.abs_diff(ended.num("a_out")) <= 2,
        "and was relayed to the caller: {}",
        ended.line
    );
}

#[test]
fn late_offer_call_completes_with_media_both_ways() {
    let mut gw = GatewayProcess::start(binary(), spec(""));
    let phone = callee(&mut gw, "call_uas.xml", &[]);
    let ended = call(&mut gw, phone, "call_uac_late_offer.xml", &[]);
    assert_eq!(ended.reason, "bye-a", "{}", ended.line);
    media_both_ways(&ended);
}

#[test]
fn late_offer_from_a_trunk_reaches_a_phone_with_media_both_ways() {
    // The trunk is a SIPp UAC on a known port, identified by its address (no digest); it
    // dials the DID 5551234, which the dial plan maps to 1002.
    let trunk_port = free_udp_port();
    let mut gw = GatewayProcess::start(
        binary(),
        spec(&format!(
            "\n[[gateway.trunk]]\nname = \"pbx\"\naddress = \"127.0.0.1:{trunk_port}\"\n\
             prefixes = [\"9\"]\n\n[gateway.extensions]\n\"5551234\" = \"1002\"\n"
        )),
    );
    let mut phone = callee(&mut gw, "call_uas.xml", &[]);
    let media = integration::free_media_port();
    let opts = SippOpts {
        local_port: Some(trunk_port),
        keys: vec![
            ("callee".into(), "5551234".into()),
            ("sdp_port".into(), media.to_string()),
        ],
        timeout: Duration::from_secs(40),
        extra_args: vec!["-mp".into(), media.to_string()],
        ..SippOpts::default()
    };
    let out = run_scenario(
        &caller_scenario(&gw, "call_trunk_late_offer.xml"),
        gw.udp,
        opts,
    )
    .expect("run sipp");
    assert_passes(&gw, &out, "trunk");
    let ended = gw.call_ended(STATE_TIMEOUT);
    let out = phone.wait().expect("callee outcome");
    assert_passes(&gw, &out, "callee");
    assert_eq!(ended.reason, "bye-a", "{}", ended.line);
    media_both_ways(&ended);
}

#[test]
fn reliable_183_with_early_media_is_pracked_on_both_legs_and_the_call_completes() {
    let mut gw = GatewayProcess::start(binary(), spec(""));
    let phone = callee(&mut gw, "call_uas_100rel.xml", &[]);
    let ended = call(&mut gw, phone, "call_uac_100rel.xml", &[]);
    assert_eq!(ended.reason, "bye-a", "{}", ended.line);
    media_both_ways(&ended);
}

/// Session timers of 10 s (Min-SE 2 s: below RFC 4028's 90 s floor, for a short test).
const TIMERS: &str = "session_expires_secs = 10\nsession_min_se_secs = 2\n";

#[test]
fn session_refreshes_keep_a_call_up_past_its_interval() {
    let mut gw = GatewayProcess::start(binary(), spec(TIMERS));
    // The callee makes us the refresher of leg B (UPDATEs at 5 s and 10 s); the caller
    // refreshes leg A itself at 4 s and 8 s and hangs up at ~12.5 s, beyond the 10 s interval
    // and the 6.7 s by which a refresh is due.
    let phone = callee(&mut gw, "call_uas_timer.xml", &[("se", "10")]);
    let started = Instant::now();
    let ended = call(&mut gw, phone, "call_uac_timer.xml", &[("se", "10")]);
    assert_eq!(ended.reason, "bye-a", "{}", ended.line);
    assert!(
        started.elapsed() >= Duration::from_secs(12),
        "the call outlived its session interval"
    );
    media_both_ways(&ended);
}

#[test]
fn a_missing_session_refresh_ends_the_call_with_bye_on_both_legs() {
    let mut gw = GatewayProcess::start(binary(), spec(TIMERS));
    let phone = callee(&mut gw, "call_uas.xml", &[]);
    let started = Instant::now();
    // The caller is granted 10 s with itself as refresher and never refreshes: by
    // 10 − 10/3 ≈ 6.7 s both phones get the gateway's BYE (both scenarios expect it).
    let ended = call(&mut gw, phone, "call_uac_timer_silent.xml", &[("se", "10")]);
    let took = started.elapsed();
    assert_eq!(ended.reason, "session-expired", "{}", ended.line);
    assert!(
        took >= Duration::from_secs(6),
        "not before the refresh was due: {took:?}"
    );
    assert_eq!(ended.num("a_in"), STREAM_PACKETS, "{}", ended.line);
}

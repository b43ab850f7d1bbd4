//! SIPp phones for end-to-end call tests: a calling phone that authenticates and streams a
//! 4 s G.711 A-law tone (`tests/sipp/call_uac.xml` + `rtp_stream`), and answering phones (a
//! SIPp UAS registered by a second SIPp, echoing RTP with `-rtp_echo`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::gateway::GatewayProcess;
use crate::sipp::{run_scenario, SippOpts, SippOutcome, SippProcess};
use crate::{free_udp_port, repo_root};

/// RTP packets in the calling phone's stream: 4 s of A-law, 20 ms a packet.
pub const STREAM_PACKETS: u64 = 200;

/// A SIPp scenario of `tests/sipp/`.
pub fn scenario(name: &str) -> PathBuf {
    repo_root().join("tests").join("sipp").join(name)
}

/// `call_uac.xml` with its RTP file (4 s of a 440 Hz tone, raw A-law, written into `dir`:
/// SIPp's `rtp_stream` sends it from the caller's media port).
pub fn uac_scenario(dir: &Path) -> PathBuf {
    let pcm = media::audio::prompts::tone(&[440.0], 4000, 0.3);
    let alaw = media::audio::Codec::Pcma.encode(&pcm);
    assert_eq!(alaw.len() as u64, STREAM_PACKETS * 160);
    let audio = dir.join("caller.alaw");
    std::fs::write(&audio, alaw).expect("write the caller's audio");
    let text = std::fs::read_to_string(scenario("call_uac.xml")).expect("read scenario");
    let path = dir.join("call_uac.xml");
    std::fs::write(
        &path,
        text.replace("@RTP_FILE@", &audio.display().to_string()),
    )
    .expect("write scenario");
    path
}

/// Fails with the SIPp outcome and the gateway's output.
#[track_caller]
pub fn assert_passes(gw: &GatewayProcess, out: &SippOutcome, what: &str) {
    assert!(
        out.passed(),
        "{what}: SIPp scenario failed\n{}\n{}",
        out.describe(),
        gw.diag()
    );
}

/// An answering phone registered as `user` at `gw`: a SIPp UAS running `uas_scenario` for
/// `calls` calls (echoing RTP), registered by a second SIPp with its address as Contact.
pub fn answering_phone(
    gw: &mut GatewayProcess,
    user: &str,
    uas_scenario: &str,
    calls: u32,
) -> SippProcess {
    let sip_port = free_udp_port();
    let media_port = crate::free_media_port_beside(sip_port);
    let uas = SippProcess::spawn(
        &scenario(uas_scenario),
        None,
        &SippOpts {
            local_port: Some(sip_port),
            calls,
            timeout: Duration::from_secs(60),
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
            ..SippOpts::user(user, "secret")
        },
    )
    .expect("run sipp");
    assert_passes(gw, &reg, "registration of the answering phone");
    uas
}

/// Options for the calling phone `user` (password `secret`) dialling `dial`; its SDP names
/// `sdp_port` while RTP comes from `media_port` (equal unless testing latching).
pub fn caller_ports(user: &str, dial: &str, sdp_port: u16, media_port: u16) -> SippOpts {
    SippOpts {
        keys: vec![
            ("callee".into(), dial.into()),
            ("sdp_port".into(), sdp_port.to_string()),
        ],
        timeout: Duration::from_secs(40),
        extra_args: vec!["-mp".into(), media_port.to_string()],
        ..SippOpts::user(user, "secret")
    }
}

/// [`caller_ports`] with a fresh media port.
pub fn caller(user: &str, dial: &str) -> SippOpts {
    let port = crate::free_media_port();
    caller_ports(user, dial, port, port)
}

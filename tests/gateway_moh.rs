//! End to end: music on hold for the held party, through the real `callfabric gateway`.
//!
//! A SIPp caller (device 1001, digest-authenticated) calls device 1002 and streams 10 s of a
//! 440 Hz A-law tone (`rtp_stream`); it holds (re-INVITE `sendonly`) for 2.5 s, resumes and
//! talks 2 s more. The callee is a SIPp UAS whose SDP points its media at a UDP socket of
//! this test, which records every RTP packet the gateway sends it. The held party must get:
//! the caller's packets, byte for byte, before the hold; then, while held, the music on hold
//! configured for the holding device (each packet's payload the A-law encoding of the WAV's
//! samples, in order, looping) and none of the caller's packets; then the caller's packets
//! again after the resume, and no more music. A second call carries `X-CF-Offer: queue=sales`
//! (as an ACD's offer does): the queue's music wins over the holding device's.

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use integration::free_udp_port;
use integration::gateway::{GatewayProcess, GatewaySpec};
use integration::phones::{assert_passes, caller_ports, scenario};
use integration::sipp::{run_scenario, SippOpts, SippProcess};
use media::audio::prompts::tone;
use media::audio::wav::{write_wav, WavEncoding};
use media::audio::Codec;

const STATE_TIMEOUT: Duration = Duration::from_secs(10);

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_callfabric"))
}

/// One RTP packet as the held party received it.
#[derive(Debug, Clone)]
struct Packet {
    ssrc: u32,
    seq: u16,
    pt: u8,
    payload: Vec<u8>,
}

fn parse(b: &[u8]) -> Option<Packet> {
    if b.len() < 12 || b[0] >> 6 != 2 {
        return None;
    }
    let cc = usize::from(b[0] & 0x0f);
    let start = 12 + 4 * cc;
    Some(Packet {
        pt: b[1] & 0x7f,
        seq: u16::from_be_bytes([b[2], b[3]]),
        ssrc: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
        payload: b.get(start..)?.to_vec(),
    })
}

/// Records what arrives on `sock` until `stop` is set.
fn recorder(sock: UdpSocket, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<Packet>> {
    std::thread::spawn(move || {
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("read timeout");
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((n, _)) = sock.recv_from(&mut buf) {
                got.extend(parse(&buf[..n]));
            }
        }
        got
    })
}

/// A WAV file of `pcm` (16-bit PCM) at `path`.
fn wav(path: PathBuf, pcm: &[i16]) -> PathBuf {
    write_wav(&path, pcm, WavEncoding::Pcm16).expect("write wav");
    path
}

/// "Music": a 2 s loop of four two-note chords, distinct from the caller's 440 Hz.
fn music(freqs: [[f64; 2]; 4]) -> Vec<i16> {
    freqs.iter().flat_map(|f| tone(f, 500, 0.3)).collect()
}

/// The callee: `call_uas_hold.xml` with its SDP's media port replaced by `rtp_port` (the test's
/// socket), registered as `user` by a second SIPp.
fn held_phone(gw: &mut GatewayProcess, user: &str, rtp_port: u16) -> SippProcess {
    let text = std::fs::read_to_string(scenario("call_uas_hold.xml")).expect("read scenario");
    let path = gw.dir().join("call_uas_hold_moh.xml");
    std::fs::write(&path, text.replace("[media_port]", &rtp_port.to_string()))
        .expect("write scenario");
    let sip_port = free_udp_port();
    let uas = SippProcess::spawn(
        &path,
        None,
        &SippOpts {
            local_port: Some(sip_port),
            calls: 1,
            timeout: Duration::from_secs(60),
            extra_args: vec!["-mp".into(), integration::free_media_port().to_string()],
            ..SippOpts::default()
        },
    )
    .expect("start the callee SIPp");
    let reg = run_scenario(
        &scenario("register_contact.xml"),
        gw.udp,
        SippOpts {
            keys: vec![("contact_port".into(), sip_port.to_string())],
            ..SippOpts::user(user, "secret")
        },
    )
    .expect("run sipp");
    assert_passes(gw, &reg, "registration of the callee");
    gw.device(user, "NOT_INUSE", STATE_TIMEOUT);
    uas
}

/// Device 1001 calls 1002, streams, holds 2.5 s and resumes (a SIPp caller; the callee's
/// media goes to a socket of the test). `extra`: the gateway's config lines; `offer`: an
/// `X-CF-Offer` value on the caller's INVITEs (as an ACD sends). Returns every RTP packet
/// the held party received, and the caller's A-law stream.
fn hold_call(dir: &Path, extra: String, offer: Option<&str>) -> (Vec<Packet>, Vec<u8>) {
    let mut spec = GatewaySpec::new("gw-moh", &["1001", "1002"]);
    // A SIPp UAS cannot answer OPTIONS outside its scenario.
    spec.qualify_interval_secs = 300.0;
    spec.extra = extra;
    let mut gw = GatewayProcess::start(binary(), spec);

    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind the callee's RTP socket");
    let rtp_port = sock.local_addr().expect("addr").port();
    let stop = Arc::new(AtomicBool::new(false));
    let rec = recorder(sock, stop.clone());
    let mut uas = held_phone(&mut gw, "1002", rtp_port);

    // The caller streams 10 s of 440 Hz A-law (longer than the call).
    let caller_audio = Codec::Pcma.encode(&tone(&[440.0], 10_000, 0.3));
    let audio_path = dir.join("caller.alaw");
    std::fs::write(&audio_path, &caller_audio).expect("write the caller's audio");
    let text = std::fs::read_to_string(scenario("call_uac_hold_moh.xml")).expect("scenario");
    let uac_path = dir.join("call_uac_hold_moh.xml");
    let mut text = text.replace("@RTP_FILE@", &audio_path.display().to_string());
    if let Some(offer) = offer {
        text = text.replace(
            "      Max-Forwards: 70\n",
            &format!("      Max-Forwards: 70\n      X-CF-Offer: {offer}\n"),
        );
    }
    std::fs::write(&uac_path, text).expect("write scenario");
    let media_port = free_udp_port();
    let out = run_scenario(
        &uac_path,
        gw.udp,
        caller_ports("1001", "1002", media_port, media_port),
    )
    .expect("run sipp");
    assert_passes(&gw, &out, "caller streams, holds and resumes");
    let ended = gw.call_ended(STATE_TIMEOUT);
    assert_eq!(ended.reason, "bye-a", "{}", ended.line);
    let out = uas.wait().expect("callee outcome");
    assert_passes(&gw, &out, "callee");
    gw.seen_since(0, "DEVICE PJSIP/1001 ONHOLD", STATE_TIMEOUT);
    stop.store(true, Ordering::Relaxed);
    let got = rec.join().expect("recorder");

    (got, caller_audio)
}

/// Checks what the held party heard: the caller's packets byte for byte, then only `music`
/// (every packet the A-law of its samples at its offset, looping; none of `not_music`), then
/// the caller again.
fn check_held_party(got: &[Packet], caller_audio: &[u8], music: &[i16], not_music: &[i16]) {
    // Split the stream by source: the caller's SSRC is the first one heard (before the hold).
    let first = got.first().unwrap_or_else(|| panic!("no RTP at all"));
    let caller_ssrc = first.ssrc;
    let first_music = got
        .iter()
        .position(|p| p.ssrc != caller_ssrc)
        .unwrap_or_else(|| panic!("no music on hold: {} packets, all the caller's", got.len()));
    let last_music = got
        .iter()
        .rposition(|p| p.ssrc != caller_ssrc)
        .unwrap_or(first_music);
    let (before, rest) = got.split_at(first_music);
    let (held, after) = rest.split_at(last_music + 1 - first_music);

    // The caller's packets are relayed unchanged: payload = the caller's file at its offset.
    let caller_ok = |p: &Packet| {
        let k = usize::from(p.seq.wrapping_sub(first.seq)) * 160;
        p.ssrc == caller_ssrc && caller_audio.get(k..k + 160) == Some(&p.payload[..])
    };
    assert!(
        before.len() >= 50 && before.iter().all(caller_ok),
        "before the hold: {} packets, all the caller's own",
        before.len()
    );

    // While held: the holding device's music, one stream, in the held phone's law (A-law),
    // every packet the source's samples at its offset; the caller is not relayed.
    let music_ssrc = held[0].ssrc;
    let from_caller = held.iter().filter(|p| p.ssrc == caller_ssrc).count();
    assert!(
        from_caller <= 2,
        "{from_caller} caller packets relayed during the hold"
    );
    let packets: Vec<&Packet> = held.iter().filter(|p| p.ssrc != caller_ssrc).collect();
    assert!(
        packets.iter().all(|p| p.ssrc == music_ssrc && p.pt == 8),
        "one A-law music stream"
    );
    let want = Codec::Pcma.encode(music);
    let matching = packets
        .iter()
        .filter(|p| {
            let k = usize::from(p.seq.wrapping_sub(packets[0].seq)) * 160 % want.len();
            want.get(k..k + 160) == Some(&p.payload[..])
        })
        .count();
    // 2.5 s of hold is 125 packets; allow for signalling time on a loaded machine.
    assert!(
        packets.len() >= 75 && matching == packets.len(),
        "music on hold: {matching} of {} packets are the expected source",
        packets.len()
    );
    let default_alaw = Codec::Pcma.encode(not_music);
    assert!(
        !packets
            .iter()
            .any(|p| default_alaw.chunks(160).any(|w| w == &p.payload[..])),
        "the wrong music was played"
    );

    // After the resume: the caller again, relayed unchanged, no more music.
    assert!(
        after.len() >= 50 && after.iter().all(caller_ok),
        "after the resume: {} packets, all the caller's own",
        after.len()
    );
}

fn device_and_queue_music() -> (Vec<i16>, Vec<i16>, Vec<i16>) {
    let device = music([
        [523.0, 659.0],
        [587.0, 740.0],
        [659.0, 831.0],
        [698.0, 880.0],
    ]);
    let queue = music([
        [392.0, 494.0],
        [440.0, 554.0],
        [349.0, 440.0],
        [392.0, 494.0],
    ]);
    let default = music([[300.0, 900.0]; 4]);
    (device, queue, default)
}

#[test]
fn held_party_hears_the_holding_devices_music_then_the_caller_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (device, _, default) = device_and_queue_music();
    let extra = format!(
        "music_on_hold = {:?}\n\n[gateway.music_on_hold_devices]\n\"1001\" = {:?}\n",
        wav(dir.path().join("default.wav"), &default)
            .display()
            .to_string(),
        wav(dir.path().join("moh-1001.wav"), &device)
            .display()
            .to_string(),
    );
    let (got, caller_audio) = hold_call(dir.path(), extra, None);
    check_held_party(&got, &caller_audio, &device, &default);
}

/// A call an ACD offered for queue `sales` (`X-CF-Offer: queue=sales`): the queue's music
/// wins over the holding device's.
#[test]
fn held_party_of_a_queue_call_hears_the_queues_music() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (device, queue, _) = device_and_queue_music();
    let extra = format!(
        "[gateway.music_on_hold_devices]\n\"1001\" = {:?}\n\n\
         [gateway.music_on_hold_queues]\nsales = {:?}\n",
        wav(dir.path().join("moh-1001.wav"), &device)
            .display()
            .to_string(),
        wav(dir.path().join("moh-sales.wav"), &queue)
            .display()
            .to_string(),
    );
    let (got, caller_audio) = hold_call(dir.path(), extra, Some("queue=sales"));
    check_held_party(&got, &caller_audio, &queue, &device);
}

//! Two real softphones (baresip 1.0, headless) call each other through the gateway: the caller
//! authenticates its INVITE (407, MD5 digest), the callee auto-answers, and the media goes
//! through the gateway's RTP relay. Each phone's microphone is a WAV tone (caller 1 kHz, callee
//! 600 Hz, both G.711); each phone dumps what it receives (`sndfile`), and the test checks that
//! the other side's tone arrived, by its dominant frequency. The caller then holds and resumes
//! the call (re-INVITE sendonly / sendrecv), which the gateway shows as ONHOLD then INUSE; the
//! callee hears music on hold meanwhile (`b_moh`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use integration::baresip::{AudioSource, Baresip, BaresipOptions, Ctrl};
use integration::gateway::{GatewayProcess, GatewaySpec};
use media::audio::prompts::tone;
use media::audio::wav::{read_wav, write_wav, WavEncoding};

const STATE_TIMEOUT: Duration = Duration::from_secs(10);
const RATE: u32 = 8000;
const CALLER_HZ: f64 = 1000.0;
const CALLEE_HZ: f64 = 600.0;
/// Received audio each phone collects before the hold.
const TALK_SAMPLES: u64 = 3 * RATE as u64;
/// How long they talk after the resume.
const TALK_AFTER_RESUME: Duration = Duration::from_secs(2);

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_callfabric"))
}

/// A 60 s tone (longer than the call: baresip hangs up when an `aufile` source ends).
fn tone_wav(dir: &Path, name: &str, hz: f64) -> PathBuf {
    let path = dir.join(name);
    write_wav(&path, &tone(&[hz], 60_000, 0.3), WavEncoding::Pcm16).expect("write the tone");
    path
}

fn phone(gw: &GatewayProcess, user: &str, wav: PathBuf) -> Baresip {
    Baresip::start_with(
        user,
        "secret",
        &gw.udp.to_string(),
        60,
        "udp",
        &BaresipOptions {
            audio_source: AudioSource::Wav {
                path: wav,
                rate: RATE,
                channels: 1,
            },
            dump_audio: true,
            sip_trace: true,
            ..BaresipOptions::default()
        },
    )
    .expect("start baresip")
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

/// Per 100 ms window with audible signal (rms > 300), the strongest frequency on a 50 Hz grid
/// from 100 to 3900 Hz. Returns the number of windows whose peak is `hz`, and the number of
/// audible windows.
fn windows_dominated_by(samples: &[i16], hz: f64) -> (usize, usize) {
    let (mut matching, mut audible) = (0, 0);
    for w in samples.chunks_exact(RATE as usize / 10) {
        let x: Vec<f64> = w.iter().map(|&s| f64::from(s)).collect();
        let rms = (x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64).sqrt();
        if rms < 300.0 {
            continue;
        }
        audible += 1;
        let peak = (2..=78)
            .map(|k| f64::from(k) * 50.0)
            .max_by(|a, b| goertzel(&x, *a).total_cmp(&goertzel(&x, *b)))
            .unwrap_or_default();
        if (peak - hz).abs() < 1.0 {
            matching += 1;
        }
    }
    (matching, audible)
}

/// The phone's one received-audio dump (8 kHz mono after G.711 decoding).
fn received(phone: &Baresip) -> PathBuf {
    let dumps = phone.dumps("dec");
    assert_eq!(dumps.len(), 1, "one received-audio dump: {dumps:?}");
    dumps.into_iter().next().unwrap_or_default()
}

/// Samples in the phone's received-audio dump so far (16-bit PCM after a 44-byte header; the
/// header's sizes are only filled in when the call ends, so this goes by the file size).
fn received_samples(phone: &Baresip) -> u64 {
    let size = phone
        .dumps("dec")
        .first()
        .and_then(|p| std::fs::metadata(p).ok())
        .map_or(0, |m| m.len());
    size.saturating_sub(44) / 2
}

/// Polls until the phone's received-audio dump holds `samples` samples.
fn wait_received(phone: &Baresip, samples: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let got = received_samples(phone);
        if got >= samples {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {got} of {samples} samples of received audio after {timeout:?} in {}\n{}",
            phone.dir().display(),
            phone.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The phone's received audio once its dump is complete: sndfile fills in the WAV header's
/// sizes when it closes the file, just after the call's CALL_CLOSED event, so poll until the
/// header covers at least `TALK_SAMPLES`.
fn received_audio(phone: &Baresip, what: &str) -> Vec<i16> {
    let deadline = Instant::now() + STATE_TIMEOUT;
    loop {
        let path = received(phone);
        let samples = read_wav(&path).unwrap_or_else(|e| panic!("{what}: {}: {e}", path.display()));
        if samples.len() as u64 >= TALK_SAMPLES {
            return samples;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: only {} samples in {}",
            samples.len(),
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[track_caller]
fn check_tone(phone: &Baresip, hz: f64, what: &str) {
    let samples = received_audio(phone, what);
    let (matching, audible) = windows_dominated_by(&samples, hz);
    // ≥ 2 s of the tone, and it is what was heard nearly all the time.
    assert!(
        matching >= 20 && matching * 10 >= audible * 9,
        "{what}: {matching} of {audible} audible 100 ms windows peak at {hz} Hz ({} samples in {})",
        samples.len(),
        phone.dir().display()
    );
}

fn ctrl(phone: &Baresip) -> Ctrl {
    phone.ctrl(STATE_TIMEOUT).expect("ctrl_tcp")
}

#[test]
fn two_baresip_phones_talk_through_the_relay_and_hold() {
    let started = Instant::now();
    let mut spec = GatewaySpec::new("gw-a", &["2001", "2002"]);
    // baresip answers OPTIONS; a slow qualify keeps the SIP trace readable.
    spec.qualify_interval_secs = 30.0;
    spec.extra = "\n[http]\nlisten = \"127.0.0.1:0\"\n".into();
    let mut gw = GatewayProcess::start(binary(), spec);
    let dir = tempfile::tempdir().expect("tempdir");

    let a = phone(&gw, "2001", tone_wav(dir.path(), "a.wav", CALLER_HZ));
    let mark = gw.mark();
    let b = phone(&gw, "2002", tone_wav(dir.path(), "b.wav", CALLEE_HZ));
    gw.seen_since(mark, "DEVICE PJSIP/2001 NOT_INUSE", STATE_TIMEOUT);
    gw.seen_since(mark, "DEVICE PJSIP/2002 NOT_INUSE", STATE_TIMEOUT);
    let (mut ca, mut cb) = (ctrl(&a), ctrl(&b));

    // A dials B through the gateway; B answers by itself (answermode=auto).
    let mark = gw.mark();
    ca.command("dial", &format!("sip:2002@{}", gw.udp))
        .expect("dial");
    gw.device("2002", "RINGING", STATE_TIMEOUT);
    gw.device("2002", "INUSE", STATE_TIMEOUT);
    gw.seen_since(mark, "DEVICE PJSIP/2001 INUSE", STATE_TIMEOUT);
    for (c, p, who) in [(&mut ca, &a, "caller"), (&mut cb, &b, "callee")] {
        if let Err(e) = c.event("CALL_ESTABLISHED", STATE_TIMEOUT) {
            panic!("{who}: {e}\n{}\n{}", p.log(), gw.diag());
        }
    }

    // Talk until each side has received 3 s of audio.
    wait_received(&b, TALK_SAMPLES, STATE_TIMEOUT);
    wait_received(&a, TALK_SAMPLES, STATE_TIMEOUT);

    // Hold and resume from the caller: re-INVITE sendonly, then sendrecv.
    ca.command("hold", "").expect("hold");
    gw.device("2001", "ONHOLD", STATE_TIMEOUT);
    // Resume once music on hold reaches the callee (resuming at once raced the first MoH
    // packet: a CI run saw `b_moh=0`). While held the legs are unbridged, so what the relay
    // sends the callee now is the music: 25 more packets (0.5 s) on `GET /calls`.
    let b_out = |gw: &mut GatewayProcess| {
        gw.api("/calls", STATE_TIMEOUT)[0]["b"]["rtp_packets_out"]
            .as_u64()
            .unwrap_or(0)
    };
    let held_at = b_out(&mut gw);
    integration::wait_until(STATE_TIMEOUT, "music on hold to the callee", || {
        b_out(&mut gw) >= held_at + 25
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", gw.diag()));
    ca.command("resume", "").expect("resume");
    gw.device("2001", "INUSE", STATE_TIMEOUT);
    // They talk on for a while after the resume. (baresip 1.0's `sndfile` dumps stop growing
    // at the first re-INVITE, on both phones, so media after the resume is checked on the
    // relay's packet counts below, not on the dumps.)
    let resumed = Instant::now();
    std::thread::sleep(TALK_AFTER_RESUME);

    // A hangs up.
    let mark = gw.mark();
    ca.command("hangup", "").expect("hangup");
    let ended = gw.call_ended(STATE_TIMEOUT);
    gw.seen_since(mark, "DEVICE PJSIP/2002 NOT_INUSE", STATE_TIMEOUT);
    gw.seen_since(mark, "DEVICE PJSIP/2001 NOT_INUSE", STATE_TIMEOUT);
    ca.event("CALL_CLOSED", STATE_TIMEOUT)
        .expect("caller closed");
    cb.event("CALL_CLOSED", STATE_TIMEOUT)
        .expect("callee closed");

    assert_eq!(ended.reason, "bye-a", "{}", ended.line);
    // 20 ms packets each way, relayed one for one: the 3 s before the hold (150 packets) and
    // most of the talk after the resume (at least 80 % of it: 40 more packets).
    let after = resumed.elapsed().min(TALK_AFTER_RESUME).as_millis() as u64;
    let want = 150 + after * 50 / 1000 * 8 / 10;
    // While the caller holds, the callee hears music on hold instead of the caller
    // (`b_moh` of `b_out`): what was relayed is `b_out - b_moh`; every 20 ms the callee got
    // one or the other.
    assert!(ended.num("b_moh") > 0, "music on hold: {}", ended.line);
    assert_eq!(ended.num("a_moh"), 0, "{}", ended.line);
    for (inn, out, moh) in [("a_in", "b_out", "b_moh"), ("b_in", "a_out", "a_moh")] {
        assert!(ended.num(inn) >= want, "{inn} ≥ {want}: {}", ended.line);
        let (i, o) = (ended.num(inn), ended.num(out));
        let relayed = o.saturating_sub(ended.num(moh));
        assert!(
            relayed <= i && o + 5 >= i,
            "{out} ≈ {inn} (relayed one for one): {}",
            ended.line
        );
    }
    check_tone(&b, CALLER_HZ, "callee hears the caller");
    check_tone(&a, CALLEE_HZ, "caller hears the callee");
    eprintln!("call test took {:?}: {}", started.elapsed(), ended.line);
}

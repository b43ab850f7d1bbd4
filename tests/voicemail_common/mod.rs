//! The voicemail caller shared by `voicemail.rs` and `mwi.rs`: a SIPp UAC whose media is a UDP
//! socket of the test (greeting, beep, tone, RFC 4733 keys), and the tone detector.
#![allow(dead_code)]

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use integration::gateway::GatewayProcess;
use integration::phones::{assert_passes, scenario};
use integration::sipp::{SippOpts, SippProcess};
use media::audio::Codec;

pub const WAIT: Duration = Duration::from_secs(20);

/// `call_uac.xml` up to the ACK of the 200, then: wait for the far end's BYE and answer it.
pub fn uac_until_bye(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(scenario("call_uac.xml")).expect("read call_uac.xml");
    let head = text
        .split("  <nop>")
        .next()
        .expect("call_uac.xml has a <nop>");
    let tail = r#"  <recv request="BYE" timeout="90000"/>
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
  <Reference variables="m_line"/>
</scenario>
"#;
    let path = dir.join("call_uac_until_bye.xml");
    std::fs::write(&path, format!("{head}{tail}")).expect("write scenario");
    path
}

/// Power of `freq` in a frame (Goertzel), normalised by the frame's energy: 1 for a pure tone.
pub fn tone_share(frame: &[i16], freq: f64) -> f64 {
    let k = 2.0 * (2.0 * std::f64::consts::PI * freq / 8000.0).cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    let mut energy = 0.0;
    for &x in frame {
        let x = f64::from(x);
        energy += x * x;
        let s = x + k * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    if energy < 1e3 * frame.len() as f64 {
        return 0.0; // silence
    }
    let power = s1 * s1 + s2 * s2 - k * s1 * s2;
    2.0 * power / (energy * frame.len() as f64)
}

/// 20 ms frames of `pcm` that are mostly `freq`.
pub fn tone_frames(pcm: &[i16], freq: f64) -> usize {
    pcm.chunks_exact(160)
        .filter(|f| tone_share(f, freq) > 0.6)
        .count()
}

/// The caller's media, played by the test: a UDP socket its SDP names.
pub struct Media {
    pub sock: UdpSocket,
    /// The gateway's relay leg (learned from its first packet).
    pub peer: Option<SocketAddr>,
    pub seq: u16,
    pub ts: u32,
    /// Decoded audio received (A-law, as the SDP offers), with arrival times.
    pub heard: Vec<(Instant, Vec<i16>)>,
}

impl Media {
    pub fn new() -> Media {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind media socket");
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .expect("read timeout");
        Media {
            sock,
            peer: None,
            seq: 1,
            ts: 8000,
            heard: Vec::new(),
        }
    }

    pub fn port(&self) -> u16 {
        self.sock.local_addr().expect("local addr").port()
    }

    /// Reads what arrived until `deadline`.
    pub fn pump(&mut self, deadline: Instant) {
        let mut buf = [0u8; 2048];
        while Instant::now() < deadline {
            if let Ok((n, from)) = self.sock.recv_from(&mut buf) {
                self.peer = Some(from);
                let p = &buf[..n];
                if n > 12 && p[0] >> 6 == 2 && p[1] & 0x7f == 8 {
                    self.heard
                        .push((Instant::now(), Codec::Pcma.decode(&p[12..])));
                }
            }
        }
    }

    /// Waits until `done` holds for what was heard so far.
    pub fn until(&mut self, what: &str, done: impl Fn(&[i16]) -> bool) {
        self.until_since(Instant::now() - Duration::from_secs(600), what, done)
    }

    /// Waits until `done` holds for what was heard since `from`.
    pub fn until_since(&mut self, from: Instant, what: &str, done: impl Fn(&[i16]) -> bool) {
        let end = Instant::now() + WAIT;
        while Instant::now() < end {
            self.pump(Instant::now() + Duration::from_millis(50));
            let all: Vec<i16> = self.heard_since(from);
            if done(&all) {
                return;
            }
        }
        panic!("not heard within {WAIT:?}: {what}");
    }

    /// Waits for the beep (15 frames of 1 kHz) and then silence: voicemail sends nothing
    /// while it records.
    pub fn until_after_beep(&mut self) {
        self.until_after_beep_since(Instant::now() - Duration::from_secs(600));
    }

    /// [`until_after_beep`](Self::until_after_beep) for a beep heard after `from`.
    pub fn until_after_beep_since(&mut self, from: Instant) {
        self.until_since(from, "the beep", |a| tone_frames(a, 1000.0) >= 10);
        let end = Instant::now() + WAIT;
        while Instant::now() < end {
            self.pump(Instant::now() + Duration::from_millis(50));
            if self
                .heard
                .last()
                .is_some_and(|(t, _)| t.elapsed() >= Duration::from_millis(300))
            {
                return;
            }
        }
        panic!("voicemail went on sending after the beep");
    }

    pub fn send(&mut self, pt: u8, marker: bool, ts: u32, payload: &[u8]) {
        let Some(peer) = self.peer else {
            panic!("nothing heard from the gateway: no address to send to");
        };
        let mut p = vec![0x80, pt | if marker { 0x80 } else { 0 }];
        p.extend_from_slice(&self.seq.to_be_bytes());
        p.extend_from_slice(&ts.to_be_bytes());
        p.extend_from_slice(&0x5eed_0001u32.to_be_bytes());
        p.extend_from_slice(payload);
        self.sock.send_to(&p, peer).expect("send RTP");
        self.seq = self.seq.wrapping_add(1);
    }

    /// `ms` of a 440 Hz tone, paced at 20 ms.
    pub fn tone(&mut self, ms: u32) {
        self.tone_at(440.0, ms)
    }

    /// `ms` of a `freq` tone, paced at 20 ms.
    pub fn tone_at(&mut self, freq: f64, ms: u32) {
        let alaw = Codec::Pcma.encode(&media::audio::prompts::tone(&[freq], ms, 0.3));
        let start = Instant::now();
        for (i, chunk) in alaw.chunks(160).enumerate() {
            let ts = self.ts;
            self.send(8, i == 0, ts, chunk);
            self.ts = self.ts.wrapping_add(160);
            let due = start + Duration::from_millis(20 * (i as u64 + 1));
            self.pump(due);
        }
    }

    /// One key by RFC 4733: three packets growing, three end packets, one timestamp.
    pub fn key(&mut self, key: char) {
        let code = match key {
            '0'..='9' => key as u8 - b'0',
            '*' => 10,
            '#' => 11,
            _ => panic!("no such key {key}"),
        };
        let ts = self.ts;
        for i in 1..=6u16 {
            let end = i > 3;
            let duration = 160 * i.min(4);
            let mut ev = vec![code, if end { 0x80 | 10 } else { 10 }];
            ev.extend_from_slice(&duration.to_be_bytes());
            self.send(101, i == 1, ts, &ev);
            self.pump(Instant::now() + Duration::from_millis(20));
        }
        self.ts = self.ts.wrapping_add(1600);
    }

    /// Retrieval login: waits for the password prompt (keys are taken while it plays; its first
    /// packet gives the relay's address), then sends `pin` and `#` as RFC 4733 events.
    pub fn login(&mut self, pin: &str) {
        self.until("the password prompt", |a| a.len() >= 1600);
        for k in pin.chars().chain(std::iter::once('#')) {
            self.key(k);
        }
    }

    /// Listens (up to 40 s) until a message of a `freq` tone was heard: at least `min_frames`
    /// 20-ms frames of it since now, and ended (none in the last 100 ms).
    pub fn hear_message(&mut self, freq: f64, min_frames: usize) {
        let from = Instant::now();
        let end = from + Duration::from_secs(40);
        loop {
            self.pump(Instant::now() + Duration::from_millis(100));
            let heard = self.heard_since(from);
            let frames = tone_frames(&heard, freq);
            let tail = &heard[heard.len().saturating_sub(800)..];
            if frames >= min_frames && tone_frames(tail, freq) == 0 {
                return;
            }
            assert!(
                Instant::now() < end,
                "the message was not heard: {frames} frames of {freq} Hz"
            );
        }
    }

    /// Waits (up to `wait`) until voicemail has been silent for 1.5 s: a menu ended and a key is
    /// awaited.
    pub fn until_quiet(&mut self, what: &str, wait: Duration) {
        let end = Instant::now() + wait;
        while self
            .heard
            .last()
            .is_none_or(|(t, _)| t.elapsed() < Duration::from_millis(1500))
        {
            assert!(Instant::now() < end, "{what} did not end");
            self.pump(Instant::now() + Duration::from_millis(50));
        }
    }

    /// All the audio heard since `from`.
    pub fn heard_since(&self, from: Instant) -> Vec<i16> {
        self.heard
            .iter()
            .filter(|(t, _)| *t >= from)
            .flat_map(|(_, s)| s.iter().copied())
            .collect()
    }
}

/// Runs `uac_until_bye.xml` as `user` dialling `dial` with the test playing its media
/// (`script`), then checks SIPp's outcome.
pub fn call(
    gw: &mut GatewayProcess,
    dir: &Path,
    user: &str,
    dial: &str,
    script: impl FnOnce(&mut Media),
) -> Media {
    let mut m = Media::new();
    let opts = SippOpts {
        keys: vec![
            ("callee".into(), dial.into()),
            ("sdp_port".into(), m.port().to_string()),
        ],
        timeout: Duration::from_secs(90),
        ..SippOpts::user(user, "secret")
    };
    let mut sipp =
        SippProcess::spawn(&uac_until_bye(dir), Some(gw.udp), &opts).expect("start SIPp");
    script(&mut m);
    let out = sipp.wait().expect("SIPp outcome");
    assert_passes(gw, &out, &format!("{user} calling {dial}"));
    m
}

/// The first stdout line since `mark` that satisfies `pred` (already read or not): lines of
/// the bus and of voicemail come from different tasks, in no fixed order.
pub fn line_since(
    gw: &mut GatewayProcess,
    mark: usize,
    what: &str,
    pred: impl Fn(&str) -> bool,
) -> String {
    gw.drain();
    if let Some(l) = gw.history.iter().skip(mark).find(|l| pred(l.trim())) {
        return l.trim().to_owned();
    }
    gw.wait_for(WAIT, what, pred)
}

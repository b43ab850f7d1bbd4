//! DTMF detection, sans-IO: RFC 4733 telephone-events in RTP, and the SIP INFO bodies phones
//! send instead (`application/dtmf-relay`, `application/dtmf`).
//!
//! RFC 4733 §2.5: every packet of one event carries the same RTP timestamp (the event's start)
//! and a growing duration; the end is marked by the E bit, and the end packet is sent three
//! times. [`DtmfDetector`] reports each event once, when its first end packet arrives (with the
//! duration it carries), and drops the repeated end packets and any late packet of an event it
//! already reported by its timestamp (the last [`RECENT`] events per SSRC are remembered). An
//! event whose end packets were all lost is reported when the next event (another timestamp)
//! starts, or by [`DtmfDetector::expire`] once nothing was heard of it for [`END_TIMEOUT`].
//!
//! Nothing a packet holds can panic the detector: anything shorter than an RTP header plus
//! four payload bytes, not RTP version 2, of another payload type, or an event code that is
//! not a DTMF key (0–15) is ignored.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The dynamic payload type most phones offer for telephone-event.
pub const DEFAULT_PAYLOAD_TYPE: u8 = 101;
/// How many reported events (by timestamp) are remembered to drop their late packets.
pub const RECENT: usize = 16;
/// An event with no packet for this long is over even without an end packet.
pub const END_TIMEOUT: Duration = Duration::from_millis(800);

/// One DTMF key press.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Digit {
    /// `0`–`9`, `*`, `#`, `A`–`D`.
    pub key: char,
    /// Duration in RTP timestamp units (8 kHz: 160 per 20 ms), as the last packet said.
    pub duration: u16,
    /// RTP timestamp of the event (its start).
    pub timestamp: u32,
}

/// The key of RFC 4733 event code `code` (0–15), if it is a DTMF key.
pub fn key_of(code: u8) -> Option<char> {
    match code {
        0..=9 => Some(char::from(b'0' + code)),
        10 => Some('*'),
        11 => Some('#'),
        12..=15 => Some(char::from(b'A' + code - 12)),
        _ => None,
    }
}

/// The event in progress (packets seen, no end yet).
#[derive(Debug, Clone, Copy)]
struct Current {
    timestamp: u32,
    code: u8,
    duration: u16,
    last_heard: Instant,
}

/// RFC 4733 telephone-event detector for one RTP stream (see the module doc).
#[derive(Debug, Clone)]
pub struct DtmfDetector {
    payload_type: u8,
    ssrc: Option<u32>,
    current: Option<Current>,
    /// Timestamps of events already reported, newest last.
    recent: VecDeque<u32>,
    /// Packets ignored (not RTP, too short, not a DTMF code).
    ignored: u64,
    /// Packets of events already reported (repeated end packets, late packets).
    duplicates: u64,
}

impl Default for DtmfDetector {
    fn default() -> Self {
        Self::new(DEFAULT_PAYLOAD_TYPE)
    }
}

impl DtmfDetector {
    /// A detector for telephone-events of payload type `payload_type` (from the SDP's
    /// `a=rtpmap:<pt> telephone-event/8000`).
    pub fn new(payload_type: u8) -> Self {
        DtmfDetector {
            payload_type,
            ssrc: None,
            current: None,
            recent: VecDeque::with_capacity(RECENT),
            ignored: 0,
            duplicates: 0,
        }
    }

    /// The payload type it looks for.
    pub fn payload_type(&self) -> u8 {
        self.payload_type
    }

    /// Packets ignored as not RTP, too short, or not a DTMF event (other payload types are
    /// not counted: they are the audio).
    pub fn ignored(&self) -> u64 {
        self.ignored
    }

    /// Packets dropped as belonging to an event already reported.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// One received RTP datagram (any payload type); the key pressed, when this packet ends
    /// an event (or starts a new one while the previous never ended). At most one digit per
    /// packet: a new event that ends in its first packet while an unfinished one is pending
    /// reports the pending one now and the new one at its next end packet or by
    /// [`expire`](Self::expire).
    pub fn push(&mut self, packet: &[u8], now: Instant) -> Option<Digit> {
        let Some((pt, ssrc, timestamp, payload)) = rtp_fields(packet) else {
            self.ignored += 1;
            return None;
        };
        if pt != self.payload_type {
            return None;
        }
        let [code, flags, d0, d1, ..] = *payload else {
            self.ignored += 1;
            return None;
        };
        if key_of(code).is_none() {
            self.ignored += 1;
            return None;
        }
        if self.ssrc != Some(ssrc) {
            // A new stream (the phone restarted it): what we remember is of no use.
            self.ssrc = Some(ssrc);
            self.recent.clear();
            self.current = None;
        }
        let end = flags & 0x80 != 0;
        let duration = u16::from_be_bytes([d0, d1]);
        if self.recent.contains(&timestamp) {
            self.duplicates += 1;
            return None;
        }
        let mut out = None;
        match self.current.as_mut() {
            Some(c) if c.timestamp == timestamp => {
                c.duration = c.duration.max(duration);
                c.last_heard = now;
            }
            _ => {
                // Another event started: the one pending lost its end packets.
                out = self.take_current();
                self.current = Some(Current {
                    timestamp,
                    code,
                    duration,
                    last_heard: now,
                });
            }
        }
        if end {
            if out.is_some() {
                // Report the pending one now; this one stays current and is reported by its
                // next end packet (they come three times) or by `expire`.
                return out;
            }
            return self.take_current();
        }
        out
    }

    /// The event in progress, reported if nothing was heard of it for [`END_TIMEOUT`].
    pub fn expire(&mut self, now: Instant) -> Option<Digit> {
        let c = self.current?;
        if now.saturating_duration_since(c.last_heard) >= END_TIMEOUT {
            return self.take_current();
        }
        None
    }

    /// When [`expire`](Self::expire) may next report something.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.current.map(|c| c.last_heard + END_TIMEOUT)
    }

    fn take_current(&mut self) -> Option<Digit> {
        let c = self.current.take()?;
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(c.timestamp);
        Some(Digit {
            key: key_of(c.code)?,
            duration: c.duration,
            timestamp: c.timestamp,
        })
    }
}

/// (payload type, SSRC, timestamp, payload) of an RTP v2 packet, padding and extension
/// respected; `None` for anything else.
fn rtp_fields(p: &[u8]) -> Option<(u8, u32, u32, &[u8])> {
    let r = rtp_rs::RtpReader::new(p).ok()?;
    if r.version() != 2 {
        return None;
    }
    Some((r.payload_type(), r.ssrc(), r.timestamp(), r.payload()))
}

/// The key of a SIP INFO body: `application/dtmf-relay` (`Signal=5` / `Duration=160` lines,
/// Cisco style) or `application/dtmf` (the key alone). `content_type` is the Content-Type
/// value (parameters allowed). Bodies over 1 KiB, other types and anything that is not one
/// DTMF key give `None`.
pub fn parse_info(content_type: &str, body: &[u8]) -> Option<char> {
    if body.len() > 1024 {
        return None;
    }
    let ct = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let text = std::str::from_utf8(body).ok()?;
    let value = match ct.as_str() {
        "application/dtmf-relay" => text.lines().find_map(|l| {
            let (k, v) = l.split_once('=')?;
            k.trim().eq_ignore_ascii_case("signal").then(|| v.trim())
        })?,
        "application/dtmf" => text.trim(),
        _ => return None,
    };
    match value {
        "10" => Some('*'),
        "11" => Some('#'),
        v if v.chars().count() == 1 => {
            let c = v.chars().next()?.to_ascii_uppercase();
            matches!(c, '0'..='9' | '*' | '#' | 'A'..='D').then_some(c)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, RngCore, SeedableRng};

    /// An RFC 4733 packet: `seq`, `ts`, event `code`, end bit, duration.
    pub(crate) fn event(seq: u16, ts: u32, code: u8, end: bool, duration: u16) -> Vec<u8> {
        let mut p = vec![0x80, 101, 0, 0, 0, 0, 0, 0, 0x11, 0x22, 0x33, 0x44];
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        p[4..8].copy_from_slice(&ts.to_be_bytes());
        p.push(code);
        p.push(if end { 0x80 | 10 } else { 10 });
        p.extend_from_slice(&duration.to_be_bytes());
        p
    }

    /// One key press as a phone sends it: start packets every 20 ms, three end packets.
    fn press(seq: &mut u16, ts: u32, code: u8, packets: u16) -> Vec<Vec<u8>> {
        let mut v = Vec::new();
        for i in 1..=packets {
            v.push(event(*seq, ts, code, false, i * 160));
            *seq = seq.wrapping_add(1);
        }
        for _ in 0..3 {
            v.push(event(*seq, ts, code, true, (packets + 1) * 160));
            *seq = seq.wrapping_add(1);
        }
        v
    }

    #[test]
    fn one_report_per_event_at_its_end_with_its_duration() {
        let mut d = DtmfDetector::default();
        let now = Instant::now();
        let mut seq = 1;
        let mut got = Vec::new();
        for (ts, code) in [(1000u32, 1u8), (5000, 2), (9000, 3), (13000, 11)] {
            for p in press(&mut seq, ts, code, 5) {
                got.extend(d.push(&p, now));
            }
        }
        let keys: String = got.iter().map(|d| d.key).collect();
        assert_eq!(keys, "123#");
        assert!(got.iter().all(|d| d.duration == 960), "{got:?}");
        assert_eq!(d.duplicates(), 8, "two repeated end packets per event");
    }

    #[test]
    fn the_same_key_twice_is_two_events() {
        let mut d = DtmfDetector::default();
        let now = Instant::now();
        let mut seq = 1;
        let mut keys = String::new();
        for ts in [1000u32, 3000] {
            for p in press(&mut seq, ts, 5, 3) {
                keys.extend(d.push(&p, now).map(|d| d.key));
            }
        }
        assert_eq!(keys, "55");
    }

    #[test]
    fn lost_end_packets_reported_at_the_next_event_or_by_expiry() {
        let mut d = DtmfDetector::default();
        let t0 = Instant::now();
        assert_eq!(d.push(&event(1, 100, 7, false, 160), t0), None);
        // Next event starts: 7 is reported (its end packets were lost).
        let got = d.push(&event(2, 900, 8, false, 160), t0);
        assert_eq!(got.map(|d| d.key), Some('7'));
        assert_eq!(d.expire(t0 + END_TIMEOUT / 2), None);
        assert_eq!(d.poll_timeout(), Some(t0 + END_TIMEOUT));
        let got = d.expire(t0 + END_TIMEOUT);
        assert_eq!(got.map(|d| (d.key, d.duration)), Some(('8', 160)));
        // Its late end packet is a duplicate now.
        assert_eq!(d.push(&event(3, 900, 8, true, 480), t0), None);
        assert_eq!(d.duplicates(), 1);
    }

    #[test]
    fn end_only_event_and_late_start_packets() {
        let mut d = DtmfDetector::default();
        let now = Instant::now();
        // Only an end packet arrives: reported at once.
        let got = d.push(&event(10, 4000, 0, true, 800), now);
        assert_eq!(got.map(|d| d.key), Some('0'));
        // A reordered start packet of the same event after its end: dropped.
        assert_eq!(d.push(&event(9, 4000, 0, false, 640), now), None);
    }

    #[test]
    fn a_new_ssrc_forgets_the_old_stream() {
        let mut d = DtmfDetector::default();
        let now = Instant::now();
        assert!(d.push(&event(1, 100, 4, true, 800), now).is_some());
        let mut p = event(1, 100, 4, true, 800);
        p[8] = 0x99; // another SSRC, same timestamp: a new event
        assert_eq!(d.push(&p, now).map(|d| d.key), Some('4'));
    }

    #[test]
    fn audio_and_garbage_are_ignored() {
        let mut d = DtmfDetector::default();
        let now = Instant::now();
        let mut audio = event(1, 100, 4, true, 800);
        audio[1] = 0; // PCMU
        assert_eq!(d.push(&audio, now), None);
        assert_eq!(d.ignored(), 0, "audio is not counted as ignored");
        assert_eq!(d.push(&[0x80, 101, 0], now), None);
        let mut bad = event(2, 200, 16, true, 800); // flash, not a DTMF key
        assert_eq!(d.push(&bad, now), None);
        bad.truncate(14); // 2 payload bytes
        bad[12] = 1;
        assert_eq!(d.push(&bad, now), None);
        assert_eq!(d.ignored(), 3);
    }

    #[test]
    fn sip_info_bodies() {
        assert_eq!(
            parse_info("application/dtmf-relay", b"Signal=5\r\nDuration=160\r\n"),
            Some('5')
        );
        assert_eq!(
            parse_info("Application/DTMF-Relay", b"Signal= #\r\n"),
            Some('#')
        );
        assert_eq!(
            parse_info("application/dtmf-relay", b"Signal=10\r\n"),
            Some('*')
        );
        assert_eq!(parse_info("application/dtmf", b"9"), Some('9'));
        assert_eq!(parse_info("application/dtmf;x=1", b" 11 "), Some('#'));
        assert_eq!(parse_info("application/dtmf", b"12"), None);
        assert_eq!(parse_info("application/dtmf", b"x"), None);
        assert_eq!(parse_info("text/plain", b"5"), None);
        assert_eq!(parse_info("application/dtmf-relay", b"Duration=160"), None);
        assert_eq!(parse_info("application/dtmf", &[0xff, 0xfe]), None);
        assert_eq!(parse_info("application/dtmf", &[b'1'; 2000]), None);
    }

    /// Fuzz: random bytes, and random RTP-shaped packets, never panic.
    #[test]
    fn fuzz_random_packets_never_panic() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(4733);
        let mut d = DtmfDetector::default();
        let t0 = Instant::now();
        for i in 0..200_000u32 {
            let len = rng.random_range(0..40);
            let mut p = vec![0u8; len];
            rng.fill_bytes(&mut p);
            if i % 2 == 0 && len >= 2 {
                p[0] = 0x80 | (p[0] & 0x3f);
                p[1] = 101 | (p[1] & 0x80);
            }
            let now = t0 + Duration::from_millis(u64::from(i));
            if let Some(dg) = d.push(&p, now) {
                assert!(key_of(0).is_some() && "0123456789*#ABCD".contains(dg.key));
            }
            let _ = d.expire(now);
        }
        for i in 0..20_000 {
            let len = rng.random_range(0..1100);
            let mut b = vec![0u8; len];
            rng.fill_bytes(&mut b);
            let ct = ["application/dtmf", "application/dtmf-relay", "x"][i % 3];
            let _ = parse_info(ct, &b);
        }
    }

    /// Fuzz: random key sequences sent with random duplication, reordering within an event
    /// and lost end packets are detected exactly once each, in order.
    #[test]
    fn fuzz_lossy_streams_report_each_press_once() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2833);
        for _ in 0..500 {
            let mut d = DtmfDetector::default();
            let t0 = Instant::now();
            let mut seq = rng.random::<u16>();
            let mut ts = rng.random::<u32>();
            let mut sent = String::new();
            let mut got = String::new();
            let mut now = t0;
            for _ in 0..rng.random_range(1..12) {
                let code = rng.random_range(0..16u8);
                sent.push(key_of(code).unwrap_or('?'));
                let mut packets = press(&mut seq, ts, code, rng.random_range(1..8));
                // Lose some (never all) packets, duplicate others, swap neighbours.
                packets.retain(|_| rng.random_bool(0.8));
                if packets.is_empty() {
                    packets.push(event(seq, ts, code, rng.random_bool(0.5), 320));
                }
                for _ in 0..rng.random_range(0..3) {
                    let i = rng.random_range(0..packets.len());
                    let p = packets[i].clone();
                    packets.insert(i, p);
                }
                if packets.len() > 1 && rng.random_bool(0.3) {
                    let i = rng.random_range(0..packets.len() - 1);
                    packets.swap(i, i + 1);
                }
                for p in packets {
                    now += Duration::from_millis(20);
                    got.extend(d.push(&p, now).map(|d| d.key));
                    got.extend(d.expire(now).map(|d| d.key));
                }
                ts = ts.wrapping_add(rng.random_range(800..20_000));
            }
            now += END_TIMEOUT;
            got.extend(d.expire(now).map(|d| d.key));
            assert_eq!(got, sent);
        }
    }
}

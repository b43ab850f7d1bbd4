//! Sans-IO RTP recorder: rebuilds 8 kHz PCM from the RTP packets of one call leg.

use std::collections::BTreeMap;
use std::path::Path;

use rtp_rs::{RtpReader, Seq};

use super::error::AudioError;
use super::g711::Codec;
use super::wav::{encode_wav, write_wav, WavEncoding};
use super::SAMPLE_RATE;

/// Limits of an [`RtpRecorder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecorderConfig {
    /// Packets held back to undo reordering (5 = 100 ms at 20 ms packets). Packets arriving
    /// later than this are dropped.
    pub reorder_window: usize,
    /// Largest timestamp gap filled with silence; a larger jump (or a jump backwards) is taken
    /// as a discontinuity and recording continues right after what is already recorded.
    pub max_gap_samples: u32,
    /// Recording stops growing after this many samples.
    pub max_samples: usize,
}

impl Default for RecorderConfig {
    fn default() -> Self {
        RecorderConfig {
            reorder_window: 5,
            max_gap_samples: 60 * SAMPLE_RATE,
            max_samples: 4 * 3600 * SAMPLE_RATE as usize,
        }
    }
}

/// What [`RtpRecorder::push`] did with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushResult {
    /// Accepted into the reorder buffer.
    Buffered,
    /// Same sequence number as a packet already buffered or written; dropped.
    Duplicate,
    /// Arrived after its place was already written (outside the reorder window); dropped.
    Late,
    /// Not PCMU/PCMA (e.g. telephone-event 101, comfort noise 13); ignored.
    IgnoredPayloadType(u8),
    /// Not a valid RTP v2 packet; ignored.
    Malformed,
    /// The recording reached [`RecorderConfig::max_samples`]; dropped.
    Full,
}

#[derive(Debug)]
struct Pending {
    timestamp: u32,
    samples: Vec<i16>,
}

#[derive(Debug)]
struct Stream {
    ssrc: u32,
    /// Highest extended sequence number seen.
    highest: i64,
    /// Extended sequence number of the last packet written.
    last_written: Option<i64>,
    /// (timestamp, output position) of the last packet written.
    anchor: Option<(u32, usize)>,
    buffer: BTreeMap<i64, Pending>,
    /// Sequence number that would confirm a sequence reset (RFC 3550 A.1 `bad_seq`).
    bad_seq: Option<u16>,
}

impl Stream {
    /// Extends a 16-bit sequence number relative to the highest seen (wrap-safe).
    fn extend(&self, seq: Seq) -> i64 {
        let highest_seq = Seq::from(self.highest.rem_euclid(65536) as u16);
        self.highest + i64::from(seq - highest_seq)
    }
}

/// Packets behind the last written one beyond which a packet may signal a sequence reset.
const MAX_MISORDER: i64 = 100;

/// Records one direction of a call leg from raw RTP packets.
///
/// Packets may arrive in any order: they are held in a small reorder buffer keyed by
/// (extended) sequence number, duplicates are dropped, and each packet is placed in the output
/// by its RTP timestamp, so lost packets (and DTX / comfort-noise periods) become silence. A new
/// SSRC flushes the previous stream and appends the new one right after it. Only PCMU (0) and
/// PCMA (8) are decoded; other payload types, such as telephone-event, are ignored.
#[derive(Debug)]
pub struct RtpRecorder {
    config: RecorderConfig,
    pcm: Vec<i16>,
    stream: Option<Stream>,
    full: bool,
}

impl Default for RtpRecorder {
    fn default() -> Self {
        Self::new(RecorderConfig::default())
    }
}

impl RtpRecorder {
    /// Creates an empty recorder.
    pub fn new(config: RecorderConfig) -> Self {
        RtpRecorder {
            config,
            pcm: Vec::new(),
            stream: None,
            full: false,
        }
    }

    /// Feeds one received RTP packet (header included). Never panics on malformed input.
    pub fn push(&mut self, packet: &[u8]) -> PushResult {
        let Ok(reader) = RtpReader::new(packet) else {
            return PushResult::Malformed;
        };
        let pt = reader.payload_type();
        let Some(codec) = Codec::from_payload_type(pt) else {
            return PushResult::IgnoredPayloadType(pt);
        };
        if self.full {
            return PushResult::Full;
        }
        let ssrc = reader.ssrc();
        let seq = reader.sequence_number();
        if self.stream.as_ref().is_some_and(|s| s.ssrc != ssrc) {
            tracing::debug!(ssrc, "RTP SSRC changed, restarting stream");
            self.restart();
        }
        if let Some(stream) = self.stream.as_mut() {
            let ext = stream.extend(seq);
            if stream.last_written.is_some_and(|w| ext < w - MAX_MISORDER) {
                // Far behind: a sender that reset its sequence numbers, or a stray packet.
                // As in RFC 3550 A.1, restart only if the next packet follows this one.
                if stream.bad_seq == Some(u16::from(seq)) {
                    tracing::debug!(ssrc, "RTP sequence reset, restarting stream");
                    self.restart();
                } else {
                    stream.bad_seq = Some(u16::from(seq).wrapping_add(1));
                    return PushResult::Late;
                }
            }
        }
        let stream = self.stream.get_or_insert_with(|| Stream {
            ssrc,
            highest: i64::from(u16::from(seq)),
            last_written: None,
            anchor: None,
            buffer: BTreeMap::new(),
            bad_seq: None,
        });
        let ext = stream.extend(seq);
        if stream.last_written.is_some_and(|w| ext <= w) {
            // Either a duplicate of a written packet or too late to be placed.
            return if stream.last_written == Some(ext) {
                PushResult::Duplicate
            } else {
                PushResult::Late
            };
        }
        if stream.buffer.contains_key(&ext) {
            return PushResult::Duplicate;
        }
        stream.highest = stream.highest.max(ext);
        stream.buffer.insert(
            ext,
            Pending {
                timestamp: reader.timestamp(),
                samples: codec.decode(reader.payload()),
            },
        );
        while self
            .stream
            .as_ref()
            .is_some_and(|s| s.buffer.len() > self.config.reorder_window)
        {
            self.flush_one();
        }
        PushResult::Buffered
    }

    /// Writes the oldest buffered packet to the output.
    fn flush_one(&mut self) {
        let Some(stream) = self.stream.as_mut() else {
            return;
        };
        let Some((ext, p)) = stream.buffer.pop_first() else {
            return;
        };
        stream.last_written = Some(ext);
        let cursor = self.pcm.len();
        let pos = match stream.anchor {
            None => cursor,
            Some((ts, at)) => {
                let delta = i64::from(p.timestamp.wrapping_sub(ts) as i32);
                let pos = at as i64 + delta;
                let gap = pos - cursor as i64;
                if delta < 0 || gap > i64::from(self.config.max_gap_samples) {
                    tracing::debug!(delta, "RTP timestamp discontinuity");
                    cursor
                } else {
                    // pos >= at >= 0 here.
                    pos as usize
                }
            }
        };
        stream.anchor = Some((p.timestamp, pos));
        // Overlap with what is already written (e.g. a bogus timestamp): keep the new tail only.
        let skip = cursor.saturating_sub(pos);
        let room = self.config.max_samples.saturating_sub(cursor);
        let fill = pos.saturating_sub(cursor).min(room);
        self.pcm.resize(cursor + fill, 0);
        let room = room - fill;
        let tail = p.samples.get(skip..).unwrap_or(&[]);
        let take = tail.len().min(room);
        self.pcm.extend_from_slice(&tail[..take]);
        if self.pcm.len() >= self.config.max_samples {
            if !self.full {
                tracing::warn!(samples = self.pcm.len(), "recording reached its size limit");
            }
            self.full = true;
        }
    }

    /// Writes out the current stream and forgets it; the next packet starts a new one.
    fn restart(&mut self) {
        self.flush_all();
        self.stream = None;
    }

    fn flush_all(&mut self) {
        while self.stream.as_ref().is_some_and(|s| !s.buffer.is_empty()) {
            self.flush_one();
        }
    }

    /// Samples written so far (excluding the reorder buffer).
    pub fn len(&self) -> usize {
        self.pcm.len()
    }

    /// True if nothing has been written yet.
    pub fn is_empty(&self) -> bool {
        self.pcm.is_empty()
    }

    /// Flushes the reorder buffer and returns the recorded 8 kHz PCM.
    pub fn finish(mut self) -> Vec<i16> {
        self.flush_all();
        self.pcm
    }

    /// Flushes and returns the recording as WAV bytes.
    pub fn finish_wav(self, encoding: WavEncoding) -> Result<Vec<u8>, AudioError> {
        encode_wav(&self.finish(), encoding)
    }

    /// Flushes and writes the recording to `path` as WAV.
    pub fn finish_to_path(self, path: &Path, encoding: WavEncoding) -> Result<(), AudioError> {
        write_wav(path, &self.finish(), encoding)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::player::{PlayerConfig, RtpPlayer};
    use crate::audio::wav::decode_wav;
    use rtp_rs::RtpPacketBuilder;
    use std::time::Instant;

    fn source(n: usize) -> Vec<i16> {
        (0..n)
            .map(|i| ((i as f64 * 0.05).sin() * 12000.0 + (i % 7) as f64 * 300.0) as i16)
            .collect()
    }

    fn packets(codec: Codec, ssrc: u32, seq: u16, ts: u32, pcm: Vec<i16>) -> Vec<Vec<u8>> {
        let cfg = PlayerConfig {
            codec,
            ssrc,
            initial_seq: seq,
            initial_timestamp: ts,
            looping: false,
        };
        let mut p = RtpPlayer::new(cfg, pcm, Instant::now());
        std::iter::from_fn(|| p.next_packet()).collect()
    }

    #[test]
    fn rebuilds_in_order() {
        for codec in [Codec::Pcmu, Codec::Pcma] {
            let src = source(1600);
            let mut r = RtpRecorder::default();
            for p in packets(codec, 7, 65530, u32::MAX - 500, src.clone()) {
                assert_eq!(r.push(&p), PushResult::Buffered);
            }
            assert_eq!(r.finish(), codec.round_trip(&src));
        }
    }

    #[test]
    fn reorder_duplicates_loss_and_dtmf() {
        let src = source(160 * 12);
        let pk = packets(Codec::Pcmu, 1, 65533, 1000, src.clone());
        let dtmf = RtpPacketBuilder::new()
            .payload_type(101)
            .ssrc(1)
            .sequence(Seq::from(40))
            .timestamp(1000)
            .payload(&[1, 0x80, 0, 160])
            .build()
            .unwrap();
        let order = [0usize, 2, 1, 1, 4, 3, 6, 7, 0, 5, 9, 10, 11, 11];
        // Packet 8 is lost; 0 and 1 and 11 are duplicated.
        let mut r = RtpRecorder::default();
        let mut results = vec![];
        for (i, &k) in order.iter().enumerate() {
            if i == 5 {
                assert_eq!(r.push(&dtmf), PushResult::IgnoredPayloadType(101));
            }
            results.push(r.push(&pk[k]));
        }
        assert_eq!(
            results
                .iter()
                .filter(|&&x| x == PushResult::Duplicate)
                .count(),
            2
        );
        // Packet 0 came back after the window had moved on.
        assert!(results.contains(&PushResult::Late));
        let out = r.finish();
        let mut expect = Codec::Pcmu.round_trip(&src);
        expect[8 * 160..9 * 160].fill(0);
        assert_eq!(out.len(), expect.len());
        assert_eq!(out, expect);
    }

    #[test]
    fn ssrc_change_restarts_and_wav_output() {
        let a = source(320);
        let b: Vec<i16> = source(480).iter().map(|s| s / 2).collect();
        let mut r = RtpRecorder::default();
        for p in packets(Codec::Pcma, 1, 100, 5000, a.clone()) {
            r.push(&p);
        }
        // New SSRC, unrelated seq/timestamp (e.g. after a re-INVITE): appended right after.
        for p in packets(Codec::Pcmu, 2, 9, 77, b.clone()) {
            r.push(&p);
        }
        let mut expect = Codec::Pcma.round_trip(&a);
        expect.extend(Codec::Pcmu.round_trip(&b));
        let wav = r.finish_wav(WavEncoding::Pcm16).unwrap();
        assert_eq!(decode_wav(&wav, "rec.wav").unwrap(), expect);
    }

    #[test]
    fn timestamp_jump_is_discontinuity_not_huge_fill() {
        let cfg = RecorderConfig {
            max_gap_samples: 8000,
            ..Default::default()
        };
        let mut r = RtpRecorder::new(cfg);
        let mut pk = packets(Codec::Pcmu, 3, 0, 0, source(320));
        let far = packets(Codec::Pcmu, 3, 2, 1_000_000, source(160));
        pk.extend(far);
        let small_gap = packets(Codec::Pcmu, 3, 3, 1_000_000 + 160 + 800, source(160));
        pk.extend(small_gap);
        for p in &pk {
            r.push(p);
        }
        assert_eq!(r.finish().len(), 320 + 160 + 800 + 160);
    }

    #[test]
    fn sequence_reset_same_ssrc_restarts_after_two_packets() {
        let a = source(160 * 200);
        let b = source(160 * 3);
        let mut r = RtpRecorder::default();
        for p in packets(Codec::Pcmu, 5, 30000, 0, a.clone()) {
            r.push(&p);
        }
        let pb = packets(Codec::Pcmu, 5, 0, 0, b.clone());
        let res: Vec<_> = pb.iter().map(|p| r.push(p)).collect();
        assert_eq!(
            res,
            [PushResult::Late, PushResult::Buffered, PushResult::Buffered]
        );
        let mut expect = Codec::Pcmu.round_trip(&a);
        expect.extend(&Codec::Pcmu.round_trip(&b)[160..]);
        assert_eq!(r.finish(), expect);
    }

    #[test]
    fn malformed_is_ignored() {
        let mut r = RtpRecorder::default();
        assert_eq!(r.push(&[]), PushResult::Malformed);
        assert_eq!(r.push(&[0x80, 0, 0]), PushResult::Malformed);
        let mut p = packets(Codec::Pcmu, 1, 0, 0, source(160)).remove(0);
        p[0] = 0x40; // version 1
        assert_eq!(r.push(&p), PushResult::Malformed);
        p[0] = 0xA0; // padding flag, last byte is a bogus pad length
        let last = p.len() - 1;
        p[last] = 255;
        assert_eq!(r.push(&p), PushResult::Malformed);
        assert!(r.finish().is_empty());
    }

    #[test]
    fn size_limit() {
        let cfg = RecorderConfig {
            max_samples: 500,
            reorder_window: 0,
            ..Default::default()
        };
        let mut r = RtpRecorder::new(cfg);
        let res: Vec<_> = packets(Codec::Pcmu, 1, 0, 0, source(1600))
            .iter()
            .map(|p| r.push(p))
            .collect();
        assert_eq!(res.last(), Some(&PushResult::Full));
        assert_eq!(r.finish().len(), 500);
    }

    /// Deterministic xorshift so the fuzz loop needs no extra crate.
    fn xorshift(s: &mut u64) -> u64 {
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        *s
    }

    #[test]
    fn fuzz_random_bytes_never_panics() {
        let cfg = RecorderConfig {
            max_samples: 8000 * 600,
            ..Default::default()
        };
        let mut r = RtpRecorder::new(cfg);
        let mut seed = 0x1234_5678_9abc_def0u64;
        for i in 0..50_000 {
            let len = (xorshift(&mut seed) % 300) as usize;
            let mut buf: Vec<u8> = (0..len).map(|_| xorshift(&mut seed) as u8).collect();
            // Bias towards plausible headers so the decode path is exercised too.
            if i % 2 == 0 && len > 1 {
                buf[0] = 0x80 | (buf[0] & 0x3F);
                let pt: u8 = if i % 4 == 0 { 0 } else { 8 };
                buf[1] = pt | (buf[1] & 0x80);
            }
            r.push(&buf);
        }
        assert!(r.finish().len() <= 8000 * 600);
    }
}

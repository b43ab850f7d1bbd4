//! Audio mixing for supervisor listen / whisper / barge (Asterisk's ChanSpy with `q`, `w`,
//! `B`).
//!
//! * [`Mixer`] (sans-IO): up to [`MAX_PARTIES`] parties; each RTP packet received from a party
//!   is decoded (G.711 µ-law or A-law by its payload type) into that party's bounded jitter
//!   buffer; every 20 ms [`Mixer::tick`] takes one frame (160 samples) from each party and, for
//!   each listener, sums the frames of the parties it hears (never its own audio), saturating
//!   at the 16-bit range, and encodes the sum in the listener's law as one RTP packet of a
//!   stream of its own (SSRC, sequence numbers and timestamps continuous).
//! * [`SpyMode`]: who hears whom in each mode, with [`SpyMode::plan`].
//! * [`Spy`] (tokio): drives a [`Mixer`] over three relay [`Leg`]s (the spied call's two legs
//!   and the supervisor's), on a 20 ms interval.
//!
//! Jitter: a party's frames start playing once two frames (40 ms) are buffered, and again
//! after the buffer ran dry; a buffer holds at most [`MAX_BUFFERED_FRAMES`] frames, the
//! oldest samples beyond it are dropped (bounded delay); a packet older than the last one
//! accepted from the party (reordered past the buffer, or duplicated) is dropped. Everything
//! dropped is counted ([`MixerStats`]). Nothing from the network can panic: RTP is read with
//! `rtp-rs`'s checked reader, payload types other than 0 and 8 (telephone-event, comfort
//! noise) are ignored.

use std::collections::VecDeque;
use std::time::Duration;

use rtp_rs::{RtpPacketBuilder, RtpReader, Seq};
use tokio::sync::{mpsc, watch};

use crate::audio::{Codec, SAMPLES_PER_PACKET};
use crate::relay::{bridge, unbridge, Leg};

/// Parties of one mix (the spied call's two parties and the supervisor).
pub const MAX_PARTIES: usize = 3;

/// Frames (20 ms each) a party's jitter buffer holds at most.
pub const MAX_BUFFERED_FRAMES: usize = 8;

/// Frames buffered before a party starts (or restarts after running dry) playing.
pub const PREBUFFER_FRAMES: usize = 2;

/// The mix's period.
pub const FRAME: Duration = Duration::from_millis(20);

/// Party indices of a spy mix.
pub mod party {
    /// The other party of the spied call (the caller of an agent).
    pub const CALLER: usize = 0;
    /// The spied device (the agent).
    pub const AGENT: usize = 1;
    /// The supervisor.
    pub const SUPERVISOR: usize = 2;
}

/// What a supervisor does to a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpyMode {
    /// The supervisor hears both parties; nobody hears the supervisor (ChanSpy `q`).
    Listen,
    /// The supervisor hears both parties; the agent hears the supervisor mixed with the caller;
    /// the caller does not hear the supervisor (ChanSpy `w`).
    Whisper,
    /// All three hear each other (ChanSpy `B`).
    Barge,
}

impl SpyMode {
    /// The mode's name as in the admin API and the logs.
    pub fn as_str(self) -> &'static str {
        match self {
            SpyMode::Listen => "listen",
            SpyMode::Whisper => "whisper",
            SpyMode::Barge => "barge",
        }
    }

    /// Reads `listen`, `whisper` or `barge` (ASCII case-insensitive).
    pub fn parse(s: &str) -> Option<SpyMode> {
        [SpyMode::Listen, SpyMode::Whisper, SpyMode::Barge]
            .into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(s.trim()))
    }

    /// `hears[listener][source]` for the three [`party`] indices, and whether the spied call's
    /// legs stay bridged (in listen mode the call's own media path is not touched: the mixer
    /// only feeds the supervisor).
    pub fn plan(self) -> ([[bool; MAX_PARTIES]; MAX_PARTIES], bool) {
        use party::{AGENT as A, CALLER as C, SUPERVISOR as S};
        let mut h = [[false; MAX_PARTIES]; MAX_PARTIES];
        h[S][C] = true;
        h[S][A] = true;
        match self {
            SpyMode::Listen => return (h, true),
            SpyMode::Whisper => {
                h[A][C] = true;
                h[A][S] = true;
                h[C][A] = true;
            }
            SpyMode::Barge => {
                h[A][C] = true;
                h[A][S] = true;
                h[C][A] = true;
                h[C][S] = true;
            }
        }
        (h, false)
    }
}

/// What [`Mixer::push`] did with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Decoded into the party's buffer.
    Buffered,
    /// Not RTP, or a party index out of range: dropped.
    Malformed,
    /// Not G.711 (telephone-event, comfort noise, …): ignored.
    Ignored,
    /// Older than (or the same as) the last accepted packet of the party: dropped.
    Late,
}

/// Counters of a [`Mixer`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MixerStats {
    /// Packets decoded into a buffer.
    pub packets_in: u64,
    /// Malformed packets (or for an unknown party).
    pub malformed: u64,
    /// Packets of another payload type than G.711.
    pub ignored: u64,
    /// Late or duplicate packets dropped.
    pub late: u64,
    /// Samples dropped because a buffer was full.
    pub overflow_samples: u64,
    /// Ticks at which a playing party had no frame (it restarts prebuffering).
    pub underruns: u64,
    /// Packets produced.
    pub packets_out: u64,
}

#[derive(Debug, Default)]
struct Source {
    buf: VecDeque<i16>,
    playing: bool,
    last_seq: Option<u16>,
    ssrc: Option<u32>,
    /// The law this party sends (its listeners get the same back).
    codec: Option<Codec>,
}

#[derive(Debug)]
struct Output {
    ssrc: u32,
    seq: u16,
    timestamp: u32,
}

/// The sans-IO mixer: see the module doc.
#[derive(Debug)]
pub struct Mixer {
    sources: Vec<Source>,
    outputs: Vec<Output>,
    hears: [[bool; MAX_PARTIES]; MAX_PARTIES],
    stats: MixerStats,
}

impl Mixer {
    /// A mixer where nobody hears anybody yet; `seed` makes the output SSRCs, sequence numbers
    /// and timestamps (use a random value).
    pub fn new(seed: u64) -> Mixer {
        let mut x = seed | 1;
        let mut next = || {
            // xorshift64: distinct, unpredictable enough starting points per output.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let outputs = (0..MAX_PARTIES)
            .map(|_| {
                let v = next();
                Output {
                    ssrc: v as u32,
                    seq: (v >> 32) as u16,
                    timestamp: (v >> 16) as u32,
                }
            })
            .collect();
        Mixer {
            sources: (0..MAX_PARTIES).map(|_| Source::default()).collect(),
            outputs,
            hears: [[false; MAX_PARTIES]; MAX_PARTIES],
            stats: MixerStats::default(),
        }
    }

    /// A mixer set up for `mode` ([`SpyMode::plan`]).
    pub fn for_mode(mode: SpyMode, seed: u64) -> Mixer {
        let mut m = Mixer::new(seed);
        m.hears = mode.plan().0;
        m
    }

    /// Whether `listener` hears `source` (a party never hears itself).
    pub fn set_hears(&mut self, listener: usize, source: usize, hears: bool) {
        if listener < MAX_PARTIES && source < MAX_PARTIES && listener != source {
            self.hears[listener][source] = hears;
        }
    }

    /// Whether `listener` hears `source`.
    pub fn hears(&self, listener: usize, source: usize) -> bool {
        self.hears
            .get(listener)
            .and_then(|r| r.get(source))
            .copied()
            .unwrap_or(false)
    }

    /// Whether anybody hears `source` (its packets are worth pushing).
    pub fn heard(&self, source: usize) -> bool {
        (0..MAX_PARTIES).any(|l| self.hears(l, source))
    }

    /// Whether `listener` hears anybody (it gets a packet every tick).
    pub fn listens(&self, listener: usize) -> bool {
        (0..MAX_PARTIES).any(|s| self.hears(listener, s))
    }

    /// The counters.
    pub fn stats(&self) -> MixerStats {
        self.stats
    }

    /// Feeds one RTP packet received from `party`.
    pub fn push(&mut self, party: usize, packet: &[u8]) -> Pushed {
        let Some(src) = self.sources.get_mut(party) else {
            self.stats.malformed += 1;
            return Pushed::Malformed;
        };
        let Ok(rtp) = RtpReader::new(packet) else {
            self.stats.malformed += 1;
            return Pushed::Malformed;
        };
        let Some(codec) = Codec::from_payload_type(rtp.payload_type()) else {
            self.stats.ignored += 1;
            return Pushed::Ignored;
        };
        let seq: u16 = rtp.sequence_number().into();
        let ssrc = rtp.ssrc();
        if src.ssrc != Some(ssrc) {
            // A new stream (or the first): its numbering starts afresh.
            src.ssrc = Some(ssrc);
            src.last_seq = None;
        }
        if let Some(last) = src.last_seq {
            // RFC 1982 serial comparison: 0 is a duplicate, "negative" is older.
            let delta = seq.wrapping_sub(last) as i16;
            if delta <= 0 {
                self.stats.late += 1;
                return Pushed::Late;
            }
        }
        src.last_seq = Some(seq);
        src.codec = Some(codec);
        src.buf
            .extend(rtp.payload().iter().map(|&c| codec.decode_sample(c)));
        let max = MAX_BUFFERED_FRAMES * SAMPLES_PER_PACKET;
        if src.buf.len() > max {
            let over = src.buf.len() - max;
            src.buf.drain(..over);
            self.stats.overflow_samples += over as u64;
        }
        self.stats.packets_in += 1;
        Pushed::Buffered
    }

    /// One 20 ms step: `out[listener]` is the RTP packet for that listener (for every listener
    /// that hears somebody, silence when nobody it hears speaks), `None` for the others.
    pub fn tick(&mut self) -> [Option<Vec<u8>>; MAX_PARTIES] {
        // One frame from each party that is heard.
        let mut frames: [Option<[i16; SAMPLES_PER_PACKET]>; MAX_PARTIES] = [None; MAX_PARTIES];
        for (i, frame) in frames.iter_mut().enumerate() {
            if !self.heard(i) {
                continue;
            }
            let src = &mut self.sources[i];
            if !src.playing {
                if src.buf.len() >= PREBUFFER_FRAMES * SAMPLES_PER_PACKET {
                    src.playing = true;
                } else {
                    continue;
                }
            }
            if src.buf.len() < SAMPLES_PER_PACKET {
                // Ran dry: play what is left, then prebuffer again.
                self.stats.underruns += 1;
                src.playing = false;
                if src.buf.is_empty() {
                    continue;
                }
            }
            let mut f = [0i16; SAMPLES_PER_PACKET];
            for (d, s) in f
                .iter_mut()
                .zip(src.buf.drain(..SAMPLES_PER_PACKET.min(src.buf.len())))
            {
                *d = s;
            }
            *frame = Some(f);
        }
        let mut out: [Option<Vec<u8>>; MAX_PARTIES] = [None, None, None];
        for (l, slot) in out.iter_mut().enumerate() {
            if !self.listens(l) {
                continue;
            }
            let mut sum = [0i32; SAMPLES_PER_PACKET];
            for (s, frame) in frames.iter().enumerate() {
                if let (true, Some(f)) = (self.hears(l, s), frame) {
                    for (acc, &x) in sum.iter_mut().zip(f.iter()) {
                        *acc += i32::from(x);
                    }
                }
            }
            let codec = self.codec_for(l);
            let payload: Vec<u8> = sum
                .iter()
                .map(|&x| {
                    codec.encode_sample(x.clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16)
                })
                .collect();
            let o = &mut self.outputs[l];
            let built = RtpPacketBuilder::new()
                .payload_type(codec.payload_type())
                .ssrc(o.ssrc)
                .sequence(Seq::from(o.seq))
                .timestamp(o.timestamp)
                .payload(&payload)
                .build();
            o.seq = o.seq.wrapping_add(1);
            o.timestamp = o.timestamp.wrapping_add(SAMPLES_PER_PACKET as u32);
            if let Ok(p) = built {
                self.stats.packets_out += 1;
                *slot = Some(p);
            }
        }
        out
    }

    /// The law `listener` gets: the one it sends, else the one of a party it hears, else µ-law.
    fn codec_for(&self, listener: usize) -> Codec {
        self.sources[listener]
            .codec
            .or_else(|| {
                (0..MAX_PARTIES)
                    .filter(|&s| self.hears(listener, s))
                    .find_map(|s| self.sources[s].codec)
            })
            .unwrap_or(Codec::Pcmu)
    }
}

/// Why a [`Spy`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpyEnd {
    /// [`Spy::stop`] (the supervisor hung up, or the owner stopped it).
    Stopped,
    /// A leg closed (the spied call or the supervisor's call ended).
    LegClosed,
}

/// A running spy: a task mixing the spied call's legs and the supervisor's leg as its
/// [`SpyMode`] says. Dropping it stops it as [`Spy::stop`] does.
#[derive(Debug)]
pub struct Spy {
    stop: watch::Sender<bool>,
    done: watch::Receiver<Option<(SpyEnd, MixerStats)>>,
    mode: SpyMode,
}

impl Spy {
    /// Starts mixing on the current tokio runtime. `legs` are indexed by [`party`]: the spied
    /// call's caller-side leg, its agent-side leg, the supervisor's leg. Except in listen mode
    /// the call's two legs are unbridged while the spy runs and bridged again when it stops, if
    /// both are still open (the call goes on as before).
    pub fn start(mode: SpyMode, legs: [Leg; MAX_PARTIES], seed: u64) -> Spy {
        let (stop, mut stop_rx) = watch::channel(false);
        let (done_tx, done) = watch::channel(None);
        let mut mixer = Mixer::for_mode(mode, seed);
        let (_, keep_bridge) = mode.plan();
        let mut rx: Vec<Option<mpsc::Receiver<Vec<u8>>>> = legs
            .iter()
            .enumerate()
            .map(|(i, l)| mixer.heard(i).then(|| l.subscribe()))
            .collect();
        if !keep_bridge {
            unbridge(&legs[party::CALLER]);
        }
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(FRAME);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let end = loop {
                tokio::select! {
                    _ = stop_rx.changed() => break SpyEnd::Stopped,
                    _ = tick.tick() => {
                        // Everything that arrived since the last tick, then one frame out.
                        let mut closed = false;
                        for (i, r) in rx.iter_mut().enumerate() {
                            let Some(r) = r else { continue };
                            loop {
                                match r.try_recv() {
                                    Ok(p) => {
                                        mixer.push(i, &p);
                                    }
                                    Err(mpsc::error::TryRecvError::Empty) => break,
                                    Err(mpsc::error::TryRecvError::Disconnected) => {
                                        closed = true;
                                        break;
                                    }
                                }
                            }
                        }
                        if closed || legs.iter().any(Leg::is_closed) {
                            break SpyEnd::LegClosed;
                        }
                        for (i, p) in mixer.tick().into_iter().enumerate() {
                            if let Some(p) = p {
                                let _ = legs[i].try_send_rtp(&p);
                            }
                        }
                    }
                }
            };
            drop(rx);
            let (caller, agent) = (&legs[party::CALLER], &legs[party::AGENT]);
            if !keep_bridge && !caller.is_closed() && !agent.is_closed() {
                if let Err(e) = bridge(caller, agent) {
                    tracing::warn!(error = %e, "spied call not bridged again");
                }
            }
            let _ = done_tx.send(Some((end, mixer.stats())));
        });
        Spy { stop, done, mode }
    }

    /// The mode.
    pub fn mode(&self) -> SpyMode {
        self.mode
    }

    /// Stops mixing (the spied call's legs are bridged again, see [`Spy::start`]).
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Waits until the task has ended; why, and its counters.
    pub async fn finished(&mut self) -> (SpyEnd, MixerStats) {
        loop {
            if let Some(r) = *self.done.borrow_and_update() {
                return r;
            }
            if self.done.changed().await.is_err() {
                return (SpyEnd::Stopped, MixerStats::default());
            }
        }
    }

    /// Whether the task has ended.
    pub fn is_finished(&self) -> bool {
        self.done.borrow().is_some()
    }
}

impl Drop for Spy {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::prompts::tone;

    /// Goertzel power of `freq` in `pcm` (8 kHz), normalised by the length.
    pub(crate) fn goertzel(pcm: &[i16], freq: f64) -> f64 {
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

    fn packets(codec: Codec, pcm: &[i16], ssrc: u32) -> Vec<Vec<u8>> {
        pcm.chunks(SAMPLES_PER_PACKET)
            .enumerate()
            .map(|(i, c)| {
                RtpPacketBuilder::new()
                    .payload_type(codec.payload_type())
                    .ssrc(ssrc)
                    .sequence(Seq::from(i as u16))
                    .timestamp((i * SAMPLES_PER_PACKET) as u32)
                    .payload(&codec.encode(c))
                    .build()
                    .expect("packet")
            })
            .collect()
    }

    fn decode(p: &[u8]) -> Vec<i16> {
        let r = RtpReader::new(p).expect("rtp");
        Codec::from_payload_type(r.payload_type())
            .expect("g711")
            .decode(r.payload())
    }

    const FREQS: [f64; 3] = [400.0, 1000.0, 1800.0];

    /// Runs `mode` for 1 s with each party sending its tone; what each party heard.
    fn run(mode: SpyMode, codecs: [Codec; 3]) -> [Vec<i16>; 3] {
        let mut m = Mixer::for_mode(mode, 42);
        let streams: Vec<Vec<Vec<u8>>> = (0..3)
            .map(|i| packets(codecs[i], &tone(&[FREQS[i]], 1000, 0.3), i as u32 + 7))
            .collect();
        let mut heard: [Vec<i16>; 3] = Default::default();
        for t in 0..50 {
            for (i, s) in streams.iter().enumerate() {
                m.push(i, &s[t]);
            }
            for (i, p) in m.tick().into_iter().enumerate() {
                if let Some(p) = p {
                    heard[i].extend(decode(&p));
                }
            }
        }
        heard
    }

    /// Which of the three tones are present in `pcm`.
    fn tones(pcm: &[i16]) -> [bool; 3] {
        let skip = pcm.len().min(800);
        let p = &pcm[skip..];
        FREQS.map(|f| goertzel(p, f) > 1e5)
    }

    #[test]
    fn each_mode_mixes_who_hears_whom() {
        let u = [Codec::Pcmu; 3];
        let h = run(SpyMode::Listen, u);
        assert!(
            h[0].is_empty() && h[1].is_empty(),
            "listen: only the supervisor is fed"
        );
        assert_eq!(tones(&h[2]), [true, true, false]);

        let h = run(SpyMode::Whisper, u);
        assert_eq!(
            tones(&h[0]),
            [false, true, false],
            "caller hears the agent only"
        );
        assert_eq!(
            tones(&h[1]),
            [true, false, true],
            "agent hears caller + supervisor"
        );
        assert_eq!(tones(&h[2]), [true, true, false], "supervisor hears both");

        let h = run(SpyMode::Barge, [Codec::Pcmu, Codec::Pcma, Codec::Pcmu]);
        assert_eq!(tones(&h[0]), [false, true, true]);
        assert_eq!(tones(&h[1]), [true, false, true]);
        assert_eq!(tones(&h[2]), [true, true, false]);
    }

    #[test]
    fn output_is_in_the_listeners_law_with_continuous_numbering() {
        let mut m = Mixer::for_mode(SpyMode::Listen, 1);
        let c = packets(Codec::Pcmu, &tone(&[400.0], 200, 0.3), 1);
        let s = packets(Codec::Pcma, &tone(&[1800.0], 200, 0.3), 2);
        let mut outs = Vec::new();
        for t in 0..10 {
            m.push(0, &c[t]);
            m.push(2, &s[t]);
            if let [None, None, Some(p)] = m.tick() {
                outs.push(p);
            } else {
                panic!("only the supervisor gets audio in listen mode");
            }
        }
        let r: Vec<_> = outs
            .iter()
            .map(|p| RtpReader::new(p).expect("rtp"))
            .collect();
        assert!(r
            .iter()
            .all(|r| r.payload_type() == 8 && r.payload().len() == 160));
        for w in r.windows(2) {
            assert_eq!(
                u16::from(w[1].sequence_number()),
                u16::from(w[0].sequence_number()).wrapping_add(1)
            );
            assert_eq!(w[1].timestamp(), w[0].timestamp().wrapping_add(160));
            assert_eq!(w[1].ssrc(), w[0].ssrc());
        }
    }

    #[test]
    fn sums_saturate() {
        let mut m = Mixer::for_mode(SpyMode::Listen, 3);
        let loud = vec![30_000i16; 160];
        for (i, ssrc) in [(0usize, 1u32), (1, 2)] {
            for p in packets(Codec::Pcmu, &[loud.clone(), loud.clone()].concat(), ssrc) {
                m.push(i, &p);
            }
        }
        let out = m.tick()[2].clone().expect("out");
        let pcm = decode(&out);
        // µ-law's largest magnitude is 32124: a wrapped sum would be negative.
        assert!(pcm.iter().all(|&x| x > 30_000), "{:?}", &pcm[..4]);
    }

    #[test]
    fn jitter_buffer_prebuffers_bounds_and_drops_late_packets() {
        let mut m = Mixer::for_mode(SpyMode::Listen, 5);
        let c = packets(Codec::Pcmu, &tone(&[400.0], 1000, 0.3), 9);
        assert_eq!(m.push(0, &c[0]), Pushed::Buffered);
        // One frame is not enough to start: silence.
        let p = m.tick()[2].clone().expect("out");
        assert!(decode(&p).iter().all(|&x| x.abs() < 10));
        assert_eq!(m.push(0, &c[1]), Pushed::Buffered);
        let p = m.tick()[2].clone().expect("out");
        assert!(goertzel(&decode(&p), 400.0) > 1e5);
        // Late and duplicate packets are dropped.
        assert_eq!(m.push(0, &c[1]), Pushed::Late);
        assert_eq!(m.push(0, &c[0]), Pushed::Late);
        // A burst beyond the bound keeps the newest frames only.
        for p in &c[2..30] {
            m.push(0, p);
        }
        assert!(m.stats().overflow_samples >= 160 * (28 - MAX_BUFFERED_FRAMES as u64));
        // Garbage and other payload types.
        assert_eq!(m.push(0, &[0u8; 5]), Pushed::Malformed);
        assert_eq!(m.push(7, &c[40]), Pushed::Malformed);
        let mut dtmf = c[40].clone();
        dtmf[1] = 101;
        assert_eq!(m.push(0, &dtmf), Pushed::Ignored);
        // A new SSRC restarts the numbering.
        let other = packets(Codec::Pcmu, &tone(&[400.0], 100, 0.3), 99);
        assert_eq!(m.push(0, &other[0]), Pushed::Buffered);
    }

    #[test]
    fn modes_parse() {
        assert_eq!(SpyMode::parse("Whisper"), Some(SpyMode::Whisper));
        assert_eq!(SpyMode::parse("x"), None);
        assert!(SpyMode::Listen.plan().1 && !SpyMode::Barge.plan().1);
    }
}

//! Sans-IO RTP player: turns PCM prompts into paced 20 ms G.711 RTP packets.

use std::time::Instant;

use rtp_rs::{RtpPacketBuilder, Seq};

use super::g711::Codec;
use super::{PACKET_DURATION, SAMPLES_PER_PACKET};

/// Stream parameters of an [`RtpPlayer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlayerConfig {
    /// Codec; its static payload type (0 or 8) is used.
    pub codec: Codec,
    /// SSRC of the outgoing stream.
    pub ssrc: u32,
    /// Sequence number of the first packet.
    pub initial_seq: u16,
    /// RTP timestamp of the first packet.
    pub initial_timestamp: u32,
    /// Restart the playlist from its first item when it ends (music on hold).
    pub looping: bool,
}

/// Produces RTP packets of 160 samples from a playlist of PCM prompts (8 kHz mono).
///
/// The player never reads a clock: the caller gives the start [`Instant`] and asks
/// [`next_due`](Self::next_due) when the next packet should go out. Items of the playlist are
/// played back to back without gaps (a packet may span two items); the last packet of a
/// non-looping playlist is padded with silence. Sequence numbers and timestamps stay continuous
/// across [`replace_source`](Self::replace_source) / [`enqueue`](Self::enqueue).
#[derive(Debug, Clone)]
pub struct RtpPlayer {
    config: PlayerConfig,
    seq: u16,
    timestamp: u32,
    due: Instant,
    emitted: u64,
    playlist: Vec<Vec<i16>>,
    item: usize,
    pos: usize,
    marker: bool,
    finished: bool,
}

impl RtpPlayer {
    /// Player for a single source, first packet due at `start`.
    pub fn new(config: PlayerConfig, source: Vec<i16>, start: Instant) -> Self {
        Self::with_playlist(config, vec![source], start)
    }

    /// Player for several prompts played in a row (e.g. "you are caller number" + digits).
    pub fn with_playlist(config: PlayerConfig, playlist: Vec<Vec<i16>>, start: Instant) -> Self {
        RtpPlayer {
            config,
            seq: config.initial_seq,
            timestamp: config.initial_timestamp,
            due: start,
            emitted: 0,
            playlist,
            item: 0,
            pos: 0,
            marker: true,
            finished: false,
        }
    }

    /// Replaces what is playing by `source` from the next packet on (e.g. an announcement
    /// interrupting music on hold, then music on hold again). Seq/timestamp continue; the first
    /// packet of the new source carries the marker bit (a new talkspurt). Revives a finished
    /// player.
    pub fn replace_source(&mut self, source: Vec<i16>) {
        self.replace_playlist(vec![source]);
    }

    /// Like [`replace_source`](Self::replace_source) with several prompts in a row.
    pub fn replace_playlist(&mut self, playlist: Vec<Vec<i16>>) {
        self.playlist = playlist;
        self.item = 0;
        self.pos = 0;
        self.marker = true;
        self.finished = false;
    }

    /// Appends a prompt to the end of the playlist (played without a gap). Revives a finished
    /// player, in which case the prompt starts a new talkspurt.
    pub fn enqueue(&mut self, source: Vec<i16>) {
        if self.finished {
            self.replace_source(source);
        } else {
            self.playlist.push(source);
        }
    }

    /// Turns looping of the whole playlist on or off.
    pub fn set_looping(&mut self, looping: bool) {
        self.config.looping = looping;
    }

    /// When the next packet is due (start + 20 ms per packet emitted so far).
    pub fn next_due(&self) -> Instant {
        self.due
    }

    /// Re-anchors the schedule so the next packet is due at `now`, dropping any backlog
    /// (used after a long stall instead of bursting many packets). Seq/timestamp are unchanged.
    pub fn rebase(&mut self, now: Instant) {
        self.due = now;
    }

    /// Packets produced so far.
    pub fn packets_sent(&self) -> u64 {
        self.emitted
    }

    /// Sequence number the next packet will carry.
    pub fn next_seq(&self) -> u16 {
        self.seq
    }

    /// RTP timestamp the next packet will carry.
    pub fn next_timestamp(&self) -> u32 {
        self.timestamp
    }

    /// Stream parameters.
    pub fn config(&self) -> &PlayerConfig {
        &self.config
    }

    /// True once a non-looping playlist has been fully sent.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Copies up to one packet of samples into `frame`; returns how many came from the source.
    fn fill(&mut self, frame: &mut [i16]) -> usize {
        let mut n = 0;
        let mut wrapped = false;
        while n < frame.len() {
            let Some(cur) = self.playlist.get(self.item) else {
                // End of playlist: loop once per fill at most (guards all-empty playlists).
                if self.config.looping && !wrapped {
                    wrapped = true;
                    self.item = 0;
                    self.pos = 0;
                    continue;
                }
                break;
            };
            let rest = cur.get(self.pos..).unwrap_or(&[]);
            if rest.is_empty() {
                self.item += 1;
                self.pos = 0;
                continue;
            }
            let take = rest.len().min(frame.len() - n);
            frame[n..n + take].copy_from_slice(&rest[..take]);
            n += take;
            self.pos += take;
            if take > 0 {
                wrapped = false;
            }
        }
        n
    }

    /// The next RTP packet, or `None` when a non-looping playlist is exhausted.
    ///
    /// Call when [`next_due`](Self::next_due) has passed; each call advances seq by 1, the
    /// timestamp by 160 and the schedule by 20 ms.
    pub fn next_packet(&mut self) -> Option<Vec<u8>> {
        if self.finished {
            return None;
        }
        let mut frame = [0i16; SAMPLES_PER_PACKET];
        if self.fill(&mut frame) == 0 {
            self.finished = true;
            return None;
        }
        let payload = self.config.codec.encode(&frame);
        let packet = RtpPacketBuilder::new()
            .payload_type(self.config.codec.payload_type())
            .ssrc(self.config.ssrc)
            .sequence(Seq::from(self.seq))
            .timestamp(self.timestamp)
            .marked(self.marker)
            .payload(&payload)
            .build();
        let packet = match packet {
            Ok(p) => p,
            Err(e) => {
                // Unreachable with payload types 0/8; never panic in the media path.
                tracing::error!(?e, "RTP packet build failed");
                self.finished = true;
                return None;
            }
        };
        self.marker = false;
        self.seq = self.seq.wrapping_add(1);
        self.timestamp = self.timestamp.wrapping_add(SAMPLES_PER_PACKET as u32);
        self.emitted += 1;
        self.due += PACKET_DURATION;
        Some(packet)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtp_rs::RtpReader;
    use std::time::Duration;

    fn cfg(looping: bool) -> PlayerConfig {
        PlayerConfig {
            codec: Codec::Pcmu,
            ssrc: 0xDEAD_BEEF,
            initial_seq: 65534,
            initial_timestamp: u32::MAX - 159,
            looping,
        }
    }

    /// (seq, ts, marker, payload) of a packet.
    fn parse(p: &[u8]) -> (u16, u32, bool, u8, Vec<u8>) {
        let r = RtpReader::new(p).unwrap();
        assert_eq!(r.ssrc(), 0xDEAD_BEEF);
        (
            u16::from(r.sequence_number()),
            r.timestamp(),
            r.mark(),
            r.payload_type(),
            r.payload().to_vec(),
        )
    }

    fn drain(p: &mut RtpPlayer, max: usize) -> Vec<(u16, u32, bool, u8, Vec<u8>)> {
        std::iter::from_fn(|| p.next_packet())
            .take(max)
            .map(|x| parse(&x))
            .collect()
    }

    #[test]
    fn spacing_seq_ts_marker_and_end() {
        let start = Instant::now();
        let src: Vec<i16> = (0..400).map(|i| i as i16 * 10).collect();
        let mut p = RtpPlayer::new(cfg(false), src.clone(), start);
        assert_eq!(p.next_due(), start);
        let mut dues = vec![];
        let mut pkts = vec![];
        while let Some(pkt) = {
            dues.push(p.next_due());
            p.next_packet()
        } {
            pkts.push(parse(&pkt));
        }
        assert_eq!(pkts.len(), 3); // 400 samples = 2.5 packets
        assert!(p.is_finished() && p.next_packet().is_none());
        for (i, d) in dues.iter().take(3).enumerate() {
            assert_eq!(*d, start + Duration::from_millis(20 * i as u64));
        }
        let seqs: Vec<u16> = pkts.iter().map(|p| p.0).collect();
        assert_eq!(seqs, [65534, 65535, 0]);
        let tss: Vec<u32> = pkts.iter().map(|p| p.1).collect();
        assert_eq!(tss, [u32::MAX - 159, 0, 160]);
        let marks: Vec<bool> = pkts.iter().map(|p| p.2).collect();
        assert_eq!(marks, [true, false, false]);
        assert!(pkts.iter().all(|p| p.3 == 0 && p.4.len() == 160));
        let decoded: Vec<i16> = pkts.iter().flat_map(|p| Codec::Pcmu.decode(&p.4)).collect();
        assert_eq!(&decoded[..400], &Codec::Pcmu.round_trip(&src)[..]);
        assert!(decoded[400..].iter().all(|&s| s == 0));
    }

    #[test]
    fn loops_without_gap() {
        let src: Vec<i16> = (0..100).map(|i| i as i16 * 100).collect();
        let mut p = RtpPlayer::new(cfg(true), src.clone(), Instant::now());
        let pkts = drain(&mut p, 10);
        assert_eq!(pkts.len(), 10);
        let decoded: Vec<i16> = pkts.iter().flat_map(|p| Codec::Pcmu.decode(&p.4)).collect();
        let expect: Vec<i16> = Codec::Pcmu
            .round_trip(&src)
            .into_iter()
            .cycle()
            .take(1600)
            .collect();
        assert_eq!(decoded, expect);
        assert_eq!(pkts.iter().filter(|p| p.2).count(), 1);
        p.set_looping(false);
        assert!(drain(&mut p, 100).len() <= 1);
        assert!(p.is_finished());
    }

    #[test]
    fn empty_looping_source_ends() {
        let mut p = RtpPlayer::with_playlist(cfg(true), vec![vec![], vec![]], Instant::now());
        assert!(p.next_packet().is_none());
        assert!(p.is_finished());
    }

    #[test]
    fn replace_source_is_continuous_and_playlist_back_to_back() {
        let start = Instant::now();
        let moh = vec![1000i16; 160];
        let mut p = RtpPlayer::new(cfg(true), moh, start);
        let a = drain(&mut p, 3);
        let ann1 = vec![-2000i16; 200];
        let ann2 = vec![3000i16; 120];
        p.replace_playlist(vec![ann1, ann2]);
        p.set_looping(false);
        let b = drain(&mut p, 100);
        assert_eq!(b.len(), 2); // 320 samples
        assert_eq!(p.next_due(), start + Duration::from_millis(100));
        p.replace_source(vec![1000i16; 160]);
        p.set_looping(true);
        let c = drain(&mut p, 2);
        let all: Vec<_> = a.iter().chain(&b).chain(&c).collect();
        for w in all.windows(2) {
            assert_eq!(w[1].0, w[0].0.wrapping_add(1));
            assert_eq!(w[1].1, w[0].1.wrapping_add(160));
        }
        let marks: Vec<bool> = all.iter().map(|p| p.2).collect();
        assert_eq!(marks, [true, false, false, true, false, true, false]);
        let d: Vec<i16> = b.iter().flat_map(|p| Codec::Pcmu.decode(&p.4)).collect();
        let q = |x: i16| Codec::Pcmu.round_trip(&[x])[0];
        assert!(d[..200].iter().all(|&s| s == q(-2000)));
        assert!(d[200..320].iter().all(|&s| s == q(3000)));
    }

    #[test]
    fn enqueue_revives_and_rebase() {
        let start = Instant::now();
        let mut p = RtpPlayer::new(cfg(false), vec![5; 160], start);
        assert_eq!(drain(&mut p, 10).len(), 1);
        assert!(p.is_finished());
        p.enqueue(vec![6; 160]);
        let x = drain(&mut p, 10);
        assert_eq!(x.len(), 1);
        assert!(x[0].2);
        let later = start + Duration::from_secs(5);
        p.rebase(later);
        assert_eq!(p.next_due(), later);
        assert_eq!(p.packets_sent(), 2);
        assert_eq!(p.next_seq(), 0);
    }

    #[test]
    fn pcma_payload_type() {
        let mut c = cfg(false);
        c.codec = Codec::Pcma;
        let mut p = RtpPlayer::new(c, vec![0; 160], Instant::now());
        let pkt = drain(&mut p, 1);
        assert_eq!(pkt[0].3, 8);
        assert!(pkt[0].4.iter().all(|&b| b == 0xD5));
    }
}

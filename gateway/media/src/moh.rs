//! Music on hold for the held party of a relayed call.
//!
//! When one party of a call holds (a re-INVITE with `sendonly`/`inactive`/`c=0.0.0.0`), the
//! other one hears music from the media engine instead of silence, as with Asterisk: the two
//! legs are unbridged (what the holder still sends is dropped) and a looping
//! [`RtpPlayer`](crate::audio::RtpPlayer) is pumped into the held party's leg. When the holder
//! resumes, the music stops and the legs are bridged again. If both parties hold, both hear
//! music until both resume.
//!
//! * [`HoldState`] (sans-IO): from each party's hold flag, who hears music and whether the
//!   legs are bridged ([`MohPlan`]).
//! * [`MohSources`]: the music to play, chosen per queue (the `queue=` of an ACD's
//!   `X-CF-Offer`), per holding device, or the default ([`MohSources::select`]).
//! * [`codec_for`] (sans-IO): the G.711 law the held phone gets (the one it sends, else the one
//!   it was receiving from the other party, else µ-law).
//! * [`CallMoh`] (tokio): one call's hold state and players, driving a pair of [`Leg`]s.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;

use super::relay::{bridge, unbridge, Leg};
use crate::audio::{play, Codec, PlayerConfig, RtpPlayer, RtpSink, PT_PCMA, PT_PCMU};

/// The two parties of a call, as indices: the caller's leg (0) and the callee's leg (1).
pub type Party = usize;

/// What the media of a call should be, given who holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MohPlan {
    /// The legs relay to each other (nobody holds).
    pub bridged: bool,
    /// `music[p]`: party `p` hears music on hold (the other party holds).
    pub music: [bool; 2],
}

/// Each party's hold flag (sans-IO).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HoldState {
    holding: [bool; 2],
}

impl HoldState {
    /// Party `p` holds (`true`) or resumes (`false`); returns the plan before and after. An
    /// index above 1 is ignored.
    pub fn set(&mut self, p: Party, holding: bool) -> (MohPlan, MohPlan) {
        let before = self.plan();
        if let Some(h) = self.holding.get_mut(p) {
            *h = holding;
        }
        (before, self.plan())
    }

    /// Whether party `p` holds.
    pub fn holding(&self, p: Party) -> bool {
        self.holding.get(p).copied().unwrap_or(false)
    }

    /// The plan for the current flags: music to the party whose peer holds, bridged when
    /// nobody holds.
    pub fn plan(&self) -> MohPlan {
        let [a, b] = self.holding;
        MohPlan {
            bridged: !a && !b,
            music: [b, a],
        }
    }
}

/// The G.711 law to play to a held phone: the first G.711 payload type among those the held
/// phone sent (`held_sent`), else among those it was sent by the other party (`peer_sent`,
/// relayed to it before the hold), else µ-law.
pub fn codec_for(held_sent: &[u8], peer_sent: &[u8]) -> Codec {
    let g711 = |pts: &[u8]| {
        pts.iter()
            .copied()
            .find(|pt| *pt == PT_PCMU || *pt == PT_PCMA)
            .and_then(Codec::from_payload_type)
    };
    g711(held_sent)
        .or_else(|| g711(peer_sent))
        .unwrap_or(Codec::Pcmu)
}

/// Where the music on hold comes from: 8 kHz mono PCM (loaded by the binary from WAV files).
#[derive(Debug, Clone)]
pub struct MohSources {
    /// Played when neither a queue nor the holding device names a source.
    pub default: Arc<Vec<i16>>,
    /// By the holding device's user name (`2001`).
    pub devices: HashMap<String, Arc<Vec<i16>>>,
    /// By queue name, for calls offered by an ACD (`X-CF-Offer: queue=…`).
    pub queues: HashMap<String, Arc<Vec<i16>>>,
}

impl Default for MohSources {
    /// The generated music on hold of [`crate::audio::prompts::music_on_hold`].
    fn default() -> Self {
        MohSources {
            default: Arc::new(crate::audio::prompts::music_on_hold()),
            devices: HashMap::new(),
            queues: HashMap::new(),
        }
    }
}

impl MohSources {
    /// The source for a hold: the call's queue's, else the holding device's, else the
    /// default. An empty source is skipped (nothing to loop).
    pub fn select(&self, queue: Option<&str>, holder_device: Option<&str>) -> Arc<Vec<i16>> {
        queue
            .and_then(|q| self.queues.get(q))
            .or_else(|| holder_device.and_then(|d| self.devices.get(d)))
            .filter(|s| !s.is_empty())
            .unwrap_or(&self.default)
            .clone()
    }
}

/// A running music-on-hold player; stopping it or dropping it (with its [`CallMoh`]) ends the
/// task.
#[derive(Debug)]
struct Player {
    stop: watch::Sender<bool>,
}

/// One call's music on hold: the hold flags, the players, and what selects the music.
#[derive(Debug, Default)]
pub struct CallMoh {
    state: HoldState,
    players: [Option<Player>; 2],
    /// The queue of an ACD's offer, if the call is one.
    pub queue: Option<String>,
    /// Device user names of the parties (`2001`), when they are ours.
    pub devices: [Option<String>; 2],
    /// Music-on-hold streams started so far (both parties).
    pub started: u64,
    /// Music-on-hold packets sent to each party so far.
    sent: [Arc<AtomicU64>; 2],
}

impl CallMoh {
    /// Music-on-hold packets sent to each party so far (caller's leg, callee's leg).
    pub fn packets(&self) -> [u64; 2] {
        [0, 1].map(|p| self.sent[p].load(Ordering::Relaxed))
    }

    /// Whether party `p` hears music now.
    pub fn playing(&self, p: Party) -> bool {
        self.players.get(p).is_some_and(Option::is_some)
    }

    /// Party `holder` holds or resumes: starts or stops the music of the other party and
    /// unbridges or re-bridges `legs` (caller's, callee's). Must run inside a tokio runtime.
    pub fn set_hold(
        &mut self,
        holder: Party,
        holding: bool,
        legs: [&Leg; 2],
        sources: &MohSources,
        now: Instant,
    ) {
        let (before, after) = self.state.set(holder, holding);
        if before == after {
            return;
        }
        if !after.bridged {
            unbridge(legs[0]);
        }
        for p in 0..2 {
            match (before.music[p], after.music[p]) {
                (false, true) => {
                    let peer = 1 - p;
                    let source =
                        sources.select(self.queue.as_deref(), self.devices[peer].as_deref());
                    let codec = codec_for(
                        &legs[p].stats().payload_types_seen,
                        &legs[peer].stats().payload_types_seen,
                    );
                    let sink = LegSink(legs[p].clone(), self.sent[p].clone());
                    self.players[p] = Some(start(sink, &source, codec, now));
                    self.started += 1;
                }
                (true, false) => {
                    if let Some(player) = self.players[p].take() {
                        player.stop.send_replace(true);
                    }
                }
                _ => {}
            }
        }
        if after.bridged && !before.bridged {
            if let Err(e) = bridge(legs[0], legs[1]) {
                tracing::warn!(error = %e, "cannot bridge call media after hold");
            }
        }
    }

    /// Stops every player (the call ends).
    pub fn stop(&mut self) {
        for p in &mut self.players {
            if let Some(player) = p.take() {
                player.stop.send_replace(true);
            }
        }
    }
}

/// A leg as the player's sink, counting what it sends.
struct LegSink(Leg, Arc<AtomicU64>);

impl RtpSink for LegSink {
    fn send_rtp(&self, packet: &[u8]) {
        if self.0.try_send_rtp(packet).is_ok() {
            self.1.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn start(sink: LegSink, source: &[i16], codec: Codec, now: Instant) -> Player {
    let config = PlayerConfig {
        codec,
        ssrc: rand::random(),
        initial_seq: rand::random(),
        initial_timestamp: rand::random(),
        looping: true,
    };
    let player = RtpPlayer::new(config, source.to_vec(), now);
    let (stop, rx) = watch::channel(false);
    tokio::spawn(play(Arc::new(sink), player, rx));
    Player { stop }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn music_goes_to_the_party_whose_peer_holds() {
        let mut s = HoldState::default();
        assert_eq!(
            s.plan(),
            MohPlan {
                bridged: true,
                music: [false, false]
            }
        );
        // The caller holds: the callee hears music, nothing is relayed.
        let (before, after) = s.set(0, true);
        assert!(before.bridged);
        assert_eq!(
            after,
            MohPlan {
                bridged: false,
                music: [false, true]
            }
        );
        // The callee holds too: both hear music.
        let (_, after) = s.set(1, true);
        assert_eq!(after.music, [true, true]);
        assert!(!after.bridged);
        // The caller resumes: the callee still holds, so only the caller hears music.
        let (_, after) = s.set(0, false);
        assert_eq!(
            after,
            MohPlan {
                bridged: false,
                music: [true, false]
            }
        );
        // The callee resumes: bridged again, no music.
        let (_, after) = s.set(1, false);
        assert_eq!(
            after,
            MohPlan {
                bridged: true,
                music: [false, false]
            }
        );
        // A repeated resume (a refresh re-INVITE) changes nothing; a bad index is ignored.
        let (before, after) = s.set(0, false);
        assert_eq!(before, after);
        let (before, after) = s.set(7, true);
        assert_eq!(before, after);
        assert!(!s.holding(7));
    }

    #[test]
    fn codec_follows_the_held_phone() {
        assert_eq!(codec_for(&[8, 101], &[0]), Codec::Pcma);
        assert_eq!(codec_for(&[101], &[96, 8]), Codec::Pcma);
        assert_eq!(codec_for(&[0], &[8]), Codec::Pcmu);
        assert_eq!(codec_for(&[], &[]), Codec::Pcmu);
        assert_eq!(codec_for(&[18], &[9]), Codec::Pcmu);
    }

    #[test]
    fn source_by_queue_then_holding_device_then_default() {
        let mut s = MohSources {
            default: Arc::new(vec![1; 160]),
            devices: HashMap::new(),
            queues: HashMap::new(),
        };
        s.devices.insert("2001".into(), Arc::new(vec![2; 160]));
        s.queues.insert("sales".into(), Arc::new(vec![3; 160]));
        s.queues.insert("empty".into(), Arc::new(Vec::new()));
        assert_eq!(s.select(Some("sales"), Some("2001"))[0], 3);
        assert_eq!(s.select(Some("support"), Some("2001"))[0], 2);
        assert_eq!(s.select(None, Some("2002"))[0], 1);
        assert_eq!(s.select(Some("empty"), None)[0], 1);
    }

    /// Two bridged legs on loopback: the caller holds, the callee's phone gets the music (the
    /// source's samples, in the law it sends) and none of the caller's packets; the caller
    /// resumes, the music stops and the caller's packets are relayed again.
    #[tokio::test]
    async fn held_party_hears_the_source_then_the_caller_again() {
        use crate::{MediaRelay, RelayConfig};
        use std::net::{IpAddr, Ipv4Addr};
        use std::time::Duration;
        use tokio::net::UdpSocket;
        const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let relay = MediaRelay::new(RelayConfig::new(LO, LO, 22700, 22799)).unwrap();
        let (a, b) = (relay.leg().await.unwrap(), relay.leg().await.unwrap());
        let pa = UdpSocket::bind((LO, 0)).await.unwrap();
        let pb = UdpSocket::bind((LO, 0)).await.unwrap();
        a.set_remote(pa.local_addr().unwrap(), None);
        b.set_remote(pb.local_addr().unwrap(), None);
        bridge(&a, &b).unwrap();
        let caller = |seq: u16| {
            let mut p = vec![0x80, 8];
            p.extend_from_slice(&seq.to_be_bytes());
            p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
            p.extend_from_slice(&0x1122_3344u32.to_be_bytes());
            p.extend_from_slice(&[0xd5; 160]);
            p
        };
        async fn next(s: &UdpSocket) -> Vec<u8> {
            let mut buf = [0u8; 2048];
            let (n, _) = tokio::time::timeout(Duration::from_secs(3), s.recv_from(&mut buf))
                .await
                .expect("a packet")
                .unwrap();
            buf[..n].to_vec()
        }
        // The callee sends A-law: the music must be A-law too.
        let mut callee = caller(1);
        callee[8..12].copy_from_slice(&0x5566_7788u32.to_be_bytes());
        pb.send_to(&callee, b.local_rtp()).await.unwrap();
        assert_eq!(&next(&pa).await[8..12], &0x5566_7788u32.to_be_bytes());
        pa.send_to(&caller(1), a.local_rtp()).await.unwrap();
        assert_eq!(&next(&pb).await[8..12], &0x1122_3344u32.to_be_bytes());

        let source: Vec<i16> = (0..1600).map(|i| ((i * 37) % 2000 - 1000) as i16).collect();
        let sources = MohSources {
            default: Arc::new(source.clone()),
            devices: HashMap::new(),
            queues: HashMap::new(),
        };
        let mut moh = CallMoh::default();
        moh.set_hold(0, true, [&a, &b], &sources, Instant::now());
        assert!(moh.playing(1) && !moh.playing(0));
        // 20 packets of music; what the caller sends meanwhile is not relayed.
        let want = Codec::Pcma.encode(&source);
        for i in 0..20u16 {
            pa.send_to(&caller(2 + i), a.local_rtp()).await.unwrap();
            let p = next(&pb).await;
            assert_eq!(p[1] & 0x7f, PT_PCMA, "music in the callee's law");
            assert_ne!(
                &p[8..12],
                &0x1122_3344u32.to_be_bytes(),
                "caller relayed on hold"
            );
            let k = usize::from(i) * 160 % source.len(); // it loops
            assert_eq!(&p[12..], &want[k..k + 160], "packet {i} is the source");
        }
        // Resume: the music stops, the caller is heard again.
        moh.set_hold(0, false, [&a, &b], &sources, Instant::now());
        assert!(!moh.playing(1));
        let mut heard_caller = false;
        for i in 0..50u16 {
            pa.send_to(&caller(100 + i), a.local_rtp()).await.unwrap();
            if next(&pb).await[8..12] == 0x1122_3344u32.to_be_bytes() {
                heard_caller = true;
                break;
            }
        }
        assert!(heard_caller, "the caller is relayed after the resume");
        assert_eq!(moh.started, 1);
        assert!(moh.packets()[1] >= 20 && moh.packets()[0] == 0);
    }
}

//! The node's side of [`Media`] and [`Fabric`]: relay legs on the RTP relay, media scripts
//! (music on hold interrupted by announcements) as tokio tasks, and the state fabric read
//! through the bus.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use media::audio::{self, Codec, PlayerConfig, RtpPlayer};
use media::{self, Leg, MediaRelay};
use statebus::{Bus, DeviceState, Eid};
use tokio::sync::{mpsc, watch};
use tracing::warn;

use crate::call::{Fabric, LegId, Media};

/// What a caller's media script is told.
enum MediaCmd {
    /// Play these prompts once, then go back to music on hold.
    Announce(Vec<Vec<i16>>),
}

/// Relay legs and the media scripts playing into them.
pub(super) struct RelayMedia {
    relay: MediaRelay,
    legs: HashMap<LegId, Leg>,
    scripts: HashMap<LegId, mpsc::Sender<MediaCmd>>,
    music: Arc<Vec<i16>>,
    prompts: audio::PromptSet,
    /// Where scripts report the end of an announcement.
    done: mpsc::UnboundedSender<LegId>,
    /// Where DTMF keys are reported (`watch_dtmf`).
    pub(super) dtmf: Option<mpsc::UnboundedSender<(LegId, char)>>,
}

impl RelayMedia {
    pub(super) fn new(
        relay: MediaRelay,
        music: Vec<i16>,
        prompts: audio::PromptSet,
        done: mpsc::UnboundedSender<LegId>,
    ) -> Self {
        RelayMedia {
            relay,
            legs: HashMap::new(),
            scripts: HashMap::new(),
            music: Arc::new(music),
            prompts,
            done,
            dtmf: None,
        }
    }

    /// Starts music on hold on `leg` in `codec`.
    pub(super) fn music(&mut self, leg: LegId, codec: Codec) {
        let Some(l) = self.legs.get(&leg) else {
            return;
        };
        let player = RtpPlayer::new(
            PlayerConfig {
                codec,
                ssrc: rand::random(),
                initial_seq: rand::random(),
                initial_timestamp: rand::random(),
                looping: true,
            },
            self.music.to_vec(),
            Instant::now(),
        );
        let script = spawn_script(
            leg,
            l.clone(),
            player,
            self.music.clone(),
            self.done.clone(),
        );
        self.scripts.insert(leg, script);
    }

    /// Interrupts the music of `leg` with `prompts` (missing ones skipped).
    pub(super) fn announce(&mut self, leg: LegId, prompts: &[String]) {
        let list: Vec<Vec<i16>> = prompts
            .iter()
            .filter_map(|n| self.prompts.get(n).map(<[i16]>::to_vec))
            .collect();
        if let Some(s) = self.scripts.get(&leg) {
            if s.try_send(MediaCmd::Announce(list)).is_err() {
                warn!(?leg, "media script busy: announcement dropped");
            }
        }
    }

    /// Opens `leg` on the relay, on `beside`'s relay thread if that leg is open.
    fn open_on(&mut self, leg: LegId, beside: Option<LegId>) -> Option<SocketAddr> {
        let opened = match beside.and_then(|b| self.legs.get(&b)) {
            Some(other) => self.relay.leg_beside(other),
            None => self.relay.leg_now(),
        };
        match opened {
            Ok(l) => {
                let addr = l.local_rtp();
                self.legs.insert(leg, l);
                Some(addr)
            }
            Err(e) => {
                warn!(error = %e, "no media port");
                None
            }
        }
    }

    /// Stops the script of `leg` (dropping its sender ends it).
    pub(super) fn stop(&mut self, leg: LegId) {
        self.scripts.remove(&leg);
    }
}

impl Media for RelayMedia {
    fn open(&mut self, leg: LegId) -> Option<SocketAddr> {
        self.open_on(leg, None)
    }

    fn open_beside(&mut self, leg: LegId, beside: LegId) -> Option<SocketAddr> {
        self.open_on(leg, Some(beside))
    }

    fn set_remote(&mut self, leg: LegId, rtp: SocketAddr, rtcp: Option<SocketAddr>) {
        if let Some(l) = self.legs.get(&leg) {
            l.set_remote(rtp, rtcp);
        }
    }

    fn bridge(&mut self, a: LegId, b: LegId) -> bool {
        match (self.legs.get(&a), self.legs.get(&b)) {
            (Some(a), Some(b)) => media::bridge(a, b)
                .inspect_err(|e| warn!(error = %e, "bridge"))
                .is_ok(),
            _ => false,
        }
    }

    fn close(&mut self, leg: LegId) {
        self.scripts.remove(&leg);
        if let Some(l) = self.legs.remove(&leg) {
            l.close();
        }
    }

    fn watch_dtmf(&mut self, leg: LegId, payload_type: u8) {
        let (Some(l), Some(tx)) = (self.legs.get(&leg), self.dtmf.clone()) else {
            return;
        };
        // A copy of each packet the leg receives, until the leg closes (the relay drops
        // copies rather than wait for us).
        let mut rx = l.subscribe();
        tokio::spawn(async move {
            let mut detector = crate::call::Rfc4733::new(payload_type);
            while let Some(packet) = rx.recv().await {
                if let Some(key) = detector.push(&packet) {
                    if tx.send((leg, key)).is_err() {
                        break;
                    }
                }
            }
        });
    }
}

/// The media script of one caller: music on hold in a loop, interrupted by announcements,
/// with seq/timestamps continuous across switches; reports each announcement's end. Ends when
/// its sender is dropped.
fn spawn_script(
    id: LegId,
    leg: Leg,
    mut player: RtpPlayer,
    music: Arc<Vec<i16>>,
    done: mpsc::UnboundedSender<LegId>,
) -> mpsc::Sender<MediaCmd> {
    let (tx, mut rx) = mpsc::channel::<MediaCmd>(4);
    tokio::spawn(async move {
        let sink: Arc<dyn audio::RtpSink> = Arc::new(leg);
        let mut announcing = false;
        loop {
            let (stop_tx, stop_rx) = watch::channel(false);
            let play = audio::play(sink.clone(), player, stop_rx);
            tokio::pin!(play);
            let cmd = tokio::select! {
                (p, _) = &mut play => {
                    // An announcement finished: back to the music.
                    player = p;
                    player.replace_source(music.to_vec());
                    player.set_looping(true);
                    player.rebase(Instant::now());
                    if std::mem::take(&mut announcing) {
                        let _ = done.send(id);
                    }
                    continue;
                }
                cmd = rx.recv() => cmd,
            };
            let _ = stop_tx.send(true);
            let (p, _) = play.await;
            player = p;
            match cmd {
                Some(MediaCmd::Announce(list)) if !list.is_empty() => {
                    player.replace_playlist(list);
                    player.set_looping(false);
                    player.rebase(Instant::now());
                    announcing = true;
                }
                Some(MediaCmd::Announce(_)) => {
                    // Nothing to say (prompts missing): done at once.
                    player.rebase(Instant::now());
                    let _ = done.send(id);
                }
                None => return,
            }
        }
    });
    tx
}

/// The state fabric through the bus.
pub(super) struct BusFabric(pub(super) Arc<dyn Bus>);

impl Fabric for BusFabric {
    fn publishers(&self, device: &str) -> Vec<(Eid, DeviceState)> {
        self.0.device_detail(device)
    }

    fn sip_members(&self) -> Vec<(Eid, SocketAddr, bool)> {
        self.0
            .snapshot()
            .peers
            .into_iter()
            .filter_map(|(eid, (hb, alive))| {
                let addr = hb.sip.as_deref()?.parse::<SocketAddr>().ok()?;
                Some((eid, addr, alive))
            })
            .collect()
    }
}

//! Async glue: paces an [`RtpPlayer`] on tokio timers into an [`RtpSink`].

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

use super::player::RtpPlayer;
use super::PACKET_DURATION;

/// Most packets sent back to back on one wake-up when the task fell behind.
pub const MAX_BURST: usize = 5;
/// If the schedule is further behind than this, the backlog is dropped (the player is rebased
/// to "now") instead of being burst out.
pub const MAX_LAG: Duration = Duration::from_millis(200);

/// Where the packets of a player go (typically the RTP socket of a call leg).
pub trait RtpSink: Send + Sync {
    /// Sends one RTP packet; must not block (drop on a full queue).
    fn send_rtp(&self, packet: &[u8]);
}

/// Why [`play`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlayEnd {
    /// A non-looping playlist was fully sent.
    Finished,
    /// `true` was sent on the stop channel, or its sender was dropped.
    Stopped,
}

/// Sends `player`'s packets to `sink` at their due times until the playlist ends (non-looping)
/// or `stop` becomes `true` (a dropped sender also stops, so a looping music-on-hold task can
/// never leak).
///
/// The player's schedule ([`RtpPlayer::next_due`], a `std::time::Instant`) drives pacing: a
/// 20 ms `tokio::time::interval` ([`MissedTickBehavior::Skip`], re-armed at the next due time
/// after every wake-up) wakes the task. After a stall the due backlog is caught up in bursts of
/// at most [`MAX_BURST`] packets (checking `stop` in between); if the task is more than
/// [`MAX_LAG`] late, the backlog is dropped by rebasing the schedule instead (seq/timestamps
/// stay continuous), so a catch-up never exceeds about `MAX_LAG` worth of packets. Returns the player (to continue the same RTP stream later) and why it ended.
pub async fn play(
    sink: Arc<dyn RtpSink>,
    mut player: RtpPlayer,
    mut stop: watch::Receiver<bool>,
) -> (RtpPlayer, PlayEnd) {
    let first = Instant::from_std(player.next_due());
    let mut ticker = tokio::time::interval_at(first, PACKET_DURATION);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        if *stop.borrow_and_update() {
            return (player, PlayEnd::Stopped);
        }
        tokio::select! {
            biased;
            changed = stop.changed() => {
                if changed.is_err() {
                    return (player, PlayEnd::Stopped);
                }
            }
            _ = ticker.tick() => {
                let now = Instant::now().into_std();
                if now.saturating_duration_since(player.next_due()) > MAX_LAG {
                    tracing::debug!("RTP playout fell behind, dropping backlog");
                    player.rebase(now);
                }
                let mut sent = 0;
                while sent < MAX_BURST && player.next_due() <= now {
                    match player.next_packet() {
                        Some(p) => sink.send_rtp(&p),
                        None => return (player, PlayEnd::Finished),
                    }
                    sent += 1;
                }
                // Wake exactly when the next packet is due (keeps the interval on the player's
                // grid after a rebase; fires at once if a burst was cut short).
                ticker.reset_at(Instant::from_std(player.next_due()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::g711::Codec;
    use crate::audio::player::PlayerConfig;
    use rtp_rs::RtpReader;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Capture(Mutex<Vec<(Instant, u16)>>);

    impl RtpSink for Capture {
        fn send_rtp(&self, packet: &[u8]) {
            let seq = RtpReader::new(packet).map(|r| u16::from(r.sequence_number()));
            self.0.lock().unwrap().push((Instant::now(), seq.unwrap()));
        }
    }

    fn player(samples: usize, looping: bool, start: Instant) -> RtpPlayer {
        let cfg = PlayerConfig {
            codec: Codec::Pcmu,
            ssrc: 1,
            initial_seq: 10,
            initial_timestamp: 0,
            looping,
        };
        RtpPlayer::new(cfg, vec![100; samples], start.into_std())
    }

    #[tokio::test(start_paused = true)]
    async fn paces_until_end_then_until_stop() {
        let start = Instant::now();
        let cap = Arc::new(Capture::default());
        let (tx, rx) = watch::channel(false);
        // Non-looping: 5 packets 20 ms apart, then Finished.
        let (p, end) = play(cap.clone(), player(800, false, start), rx.clone()).await;
        assert_eq!(end, PlayEnd::Finished);
        assert_eq!(p.packets_sent(), 5);
        {
            let got = cap.0.lock().unwrap();
            assert_eq!(got.len(), 5);
            for (i, (t, seq)) in got.iter().enumerate() {
                assert_eq!(*t - start, PACKET_DURATION * i as u32);
                assert_eq!(*seq, 10 + i as u16);
            }
        }
        // Looping: stopped after ~1 s.
        cap.0.lock().unwrap().clear();
        let t0 = Instant::now();
        let task = tokio::spawn(play(cap.clone(), player(160, true, t0), rx));
        tokio::time::sleep(Duration::from_millis(1010)).await;
        tx.send(true).unwrap();
        let (_, end) = task.await.unwrap();
        assert_eq!(end, PlayEnd::Stopped);
        assert_eq!(cap.0.lock().unwrap().len(), 51); // t = 0, 20, ..., 1000 ms

        // Behind schedule by 100 ms: caught up in bursts of MAX_BURST, then on the 20 ms grid.
        let (tx, rx) = watch::channel(false);
        cap.0.lock().unwrap().clear();
        let t0 = Instant::now();
        let late = player(160, true, t0 - Duration::from_millis(100));
        let task = tokio::spawn(play(cap.clone(), late, rx.clone()));
        tokio::time::sleep(Duration::from_millis(50)).await;
        tx.send(true).unwrap();
        let (p, _) = task.await.unwrap();
        let at: Vec<u128> = cap
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|(t, _)| (*t - t0).as_millis())
            .collect();
        assert_eq!(at, [0, 0, 0, 0, 0, 0, 20, 40]);

        // Behind by 1 s (> MAX_LAG): backlog dropped, seq continues, no burst.
        let (_tx, rx) = watch::channel(false);
        cap.0.lock().unwrap().clear();
        let seq = p.next_seq();
        let mut stale = p;
        stale.set_looping(false);
        stale.replace_source(vec![1; 480]);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let t1 = Instant::now();
        let (_, end) = play(cap.clone(), stale, rx).await;
        assert_eq!(end, PlayEnd::Finished);
        let got = cap.0.lock().unwrap().clone();
        let at: Vec<u128> = got.iter().map(|(t, _)| (*t - t1).as_millis()).collect();
        assert_eq!(at, [0, 20, 40]);
        assert_eq!(got[0].1, seq);
    }
}

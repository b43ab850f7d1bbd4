//! What a waiting caller hears: the prompt names of a position (and hold-time)
//! announcement, as app_queue says them.

use std::time::Duration;

use media::audio;

use crate::engine::QueueConfig;

/// The node's position announcements, for queues that set neither `announce-frequency` nor
/// `announce-holdtime` (each queue may override either).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Announcements {
    /// Announce position (and hold time) this often (`None`: never).
    pub frequency: Option<Duration>,
    /// Include the estimated hold time.
    pub holdtime: bool,
}

impl Announcements {
    /// How often callers of `queue` hear their position: its `announce-frequency` (0: never),
    /// else ours.
    pub fn every(&self, queue: Option<&QueueConfig>) -> Option<Duration> {
        match queue.and_then(|q| q.announce_frequency) {
            Some(0) => None,
            Some(secs) => Some(Duration::from_secs(secs)),
            None => self.frequency,
        }
    }

    /// Whether callers of `queue` hear the estimated hold time: its `announce-holdtime`, else
    /// ours.
    pub fn holdtime(&self, queue: Option<&QueueConfig>) -> bool {
        queue
            .and_then(|q| q.announce_holdtime)
            .unwrap_or(self.holdtime)
    }
}

/// Prompts for a caller at `position` (1 = next); `holdtime` is the estimated hold time in
/// seconds when the queue announces it (nothing is said for 0).
pub fn position(position: usize, holdtime: Option<u64>) -> Vec<String> {
    let mut names: Vec<String> = if position == 1 {
        vec!["queue-youarenext".into()]
    } else {
        let mut v = vec!["queue-thereare".to_string()];
        v.extend(audio::say_number(
            u32::try_from(position).unwrap_or(u32::MAX),
        ));
        v.push("queue-callswaiting".into());
        v
    };
    if let Some(secs) = holdtime.filter(|s| *s > 0) {
        names.push("queue-holdtime".into());
        let minutes = secs.div_ceil(60);
        if minutes <= 1 {
            names.push("queue-lessthan".into());
            names.extend(audio::say_number(2));
        } else {
            names.extend(audio::say_number(
                u32::try_from(minutes).unwrap_or(u32::MAX),
            ));
        }
        names.push("queue-minutes".into());
    }
    names.push("queue-thankyou".into());
    names
}

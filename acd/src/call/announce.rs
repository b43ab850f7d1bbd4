//! What a waiting caller hears: the prompt names of a position (and hold-time)
//! announcement, as app_queue says them.

use media::audio;

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

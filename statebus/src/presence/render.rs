//! What a supervisor's client shows for one agent/device: XMPP `show` + `status`, from the
//! device state on the bus and what the ACD side says about the agent. Sans-IO.

use crate::DeviceState;
use std::time::{Duration, Instant};

/// What the ACD side knows about the agent at one device (pause, wrap-up, queue of the call).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentInfo {
    /// Paused, with its reason and since when.
    pub paused: Option<Pause>,
    /// In wrap-up after a call from this queue (the queue may be unknown).
    pub wrapup: Option<Option<String>>,
    /// The queue of the agent's current (or last offered) call.
    pub queue: Option<String>,
}

/// A pause with its reason (Asterisk's `PAUSE` reason; empty when none was given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pause {
    /// The reason, e.g. `Lunch`.
    pub reason: String,
    /// When the pause began (monotonic).
    pub since: Instant,
}

/// XMPP `<show/>` values used: never `xa` (some clients show it as offline).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    /// No `<show/>`: available.
    Online,
    /// `away`: wrap-up.
    Away,
    /// `dnd`: on a call, on hold, or paused.
    Dnd,
}

impl Show {
    /// The `<show/>` text, `None` for plain available.
    pub fn as_xml(self) -> Option<&'static str> {
        match self {
            Show::Online => None,
            Show::Away => Some("away"),
            Show::Dnd => Some("dnd"),
        }
    }
}

/// One rendered presence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// `false`: `type='unavailable'` (the phone is unreachable or unknown).
    pub available: bool,
    /// `<show/>`.
    pub show: Show,
    /// `<status/>`, e.g. `On call · support`, `Paused: Lunch 12m`.
    pub status: String,
}

/// Minutes (and hours) of a duration as shown in a status: `0m`, `12m`, `1h05m`.
pub fn minutes(d: Duration) -> String {
    let m = d.as_secs() / 60;
    if m < 60 {
        format!("{m}m")
    } else {
        format!("{}h{:02}m", m / 60, m % 60)
    }
}

fn with_queue(base: &str, queue: Option<&str>) -> String {
    match queue {
        Some(q) if !q.is_empty() => format!("{base} · {q}"),
        _ => base.to_string(),
    }
}

fn pause_text(p: &Pause, now: Instant) -> String {
    let t = minutes(now.saturating_duration_since(p.since));
    if p.reason.is_empty() {
        format!("Paused {t}")
    } else {
        format!("Paused: {} {t}", p.reason)
    }
}

/// The presence of one agent/device. `state` is the device's aggregate on the bus (`None`:
/// never heard of).
pub fn render(state: Option<DeviceState>, agent: Option<&AgentInfo>, now: Instant) -> Rendered {
    let none = AgentInfo::default();
    let a = agent.unwrap_or(&none);
    let queue = a.queue.as_deref();
    let call = |base: &str| {
        let mut s = with_queue(base, queue);
        if let Some(p) = &a.paused {
            s = format!(
                "{s} ({})",
                pause_text(p, now).replacen("Paused", "paused", 1)
            );
        }
        s
    };
    match state.unwrap_or(DeviceState::Unknown) {
        DeviceState::Unknown | DeviceState::Invalid | DeviceState::Unavailable => Rendered {
            available: false,
            show: Show::Online,
            status: "Offline".into(),
        },
        DeviceState::Ringing | DeviceState::RingInUse => Rendered {
            available: true,
            show: Show::Online,
            status: call("Ringing"),
        },
        DeviceState::InUse | DeviceState::Busy => Rendered {
            available: true,
            show: Show::Dnd,
            status: call("On call"),
        },
        DeviceState::OnHold => Rendered {
            available: true,
            show: Show::Dnd,
            status: call("On hold"),
        },
        DeviceState::NotInUse => {
            if let Some(p) = &a.paused {
                Rendered {
                    available: true,
                    show: Show::Dnd,
                    status: pause_text(p, now),
                }
            } else if let Some(q) = &a.wrapup {
                Rendered {
                    available: true,
                    show: Show::Away,
                    status: with_queue("Wrap-up", q.as_deref()),
                }
            } else {
                Rendered {
                    available: true,
                    show: Show::Online,
                    status: "Available".into(),
                }
            }
        }
    }
}

/// When a rendering that shows a pause's minutes next changes (`None`: it shows no time).
pub fn next_tick(agent: Option<&AgentInfo>, now: Instant) -> Option<Instant> {
    let p = agent?.paused.as_ref()?;
    let elapsed = now.saturating_duration_since(p.since).as_secs();
    Some(p.since + Duration::from_secs((elapsed / 60 + 1) * 60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_and_pause() {
        let t0 = Instant::now();
        let r = render(Some(DeviceState::NotInUse), None, t0);
        assert_eq!(
            (r.available, r.show, r.status.as_str()),
            (true, Show::Online, "Available")
        );
        let r = render(Some(DeviceState::Unavailable), None, t0);
        assert!(!r.available);
        let q = AgentInfo {
            queue: Some("support".into()),
            ..AgentInfo::default()
        };
        let r = render(Some(DeviceState::InUse), Some(&q), t0);
        assert_eq!(
            (r.show, r.status.as_str()),
            (Show::Dnd, "On call · support")
        );
        let r = render(Some(DeviceState::Ringing), Some(&q), t0);
        assert_eq!(
            (r.show, r.status.as_str()),
            (Show::Online, "Ringing · support")
        );
        let p = AgentInfo {
            paused: Some(Pause {
                reason: "Lunch".into(),
                since: t0,
            }),
            ..AgentInfo::default()
        };
        let now = t0 + Duration::from_secs(12 * 60 + 5);
        let r = render(Some(DeviceState::NotInUse), Some(&p), now);
        assert_eq!(
            (r.show, r.status.as_str()),
            (Show::Dnd, "Paused: Lunch 12m")
        );
        assert_eq!(
            next_tick(Some(&p), now),
            Some(t0 + Duration::from_secs(13 * 60))
        );
        let w = AgentInfo {
            wrapup: Some(Some("sales".into())),
            ..AgentInfo::default()
        };
        let r = render(Some(DeviceState::NotInUse), Some(&w), t0);
        assert_eq!((r.show, r.status.as_str()), (Show::Away, "Wrap-up · sales"));
        assert_eq!(minutes(Duration::from_secs(3725)), "1h02m");
    }
}

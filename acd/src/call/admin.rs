//! Operator actions on the call core (the admin API's pause/unpause, members, penalties,
//! reload), the live calls it reports, and agent self-service from the phone: dial
//! `<pause><reason code>` to pause in all queues with the reason the code names, and
//! `<unpause>` to unpause (app_queue's PauseQueueMember/UnpauseQueueMember from a dialplan).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tracing::info;

use super::{CallControl, Fabric, Feature, Media};
use crate::engine::{EngineConfig, EngineError, MemberConfig, ReloadReport};

/// Feature codes for hot-desking from the phone: `<login><queue number>` adds the calling
/// device to that queue as a dynamic member, `<logout><queue number>` removes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HotDesk {
    /// Login prefix (empty: none).
    pub login: String,
    /// Logout prefix (empty: none).
    pub logout: String,
}

impl HotDesk {
    /// A dialled `number` that is a hot-desking code: (login, the queue number after it).
    pub fn parse<'a>(&self, number: &'a str) -> Option<(bool, &'a str)> {
        let strip = |code: &str| number.strip_prefix(code).filter(|_| !code.is_empty());
        match (strip(&self.login), strip(&self.logout)) {
            (Some(rest), _) => Some((true, rest)),
            (None, Some(rest)) => Some((false, rest)),
            (None, None) => None,
        }
    }
}

/// Feature codes for pausing from the phone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PauseCodes {
    /// Prefix: `<pause><reason code>` pauses the calling device in all its queues (empty:
    /// none). `<pause>` alone pauses without a reason.
    pub pause: String,
    /// `<unpause>` unpauses the calling device in all its queues (empty: none).
    pub unpause: String,
    /// Reason code → reason (`"1" = "Lunch"`). An unknown code is refused (404).
    pub reasons: HashMap<String, String>,
}

/// Where a live caller is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallState {
    /// In the queue, hearing music on hold.
    Waiting,
    /// In the queue, offered to an agent now.
    Ringing,
    /// Talking to an agent.
    Connected,
    /// A feature-code call (login, logout, pause).
    Feature,
}

impl CallState {
    /// Lower-case name (API).
    pub fn as_str(self) -> &'static str {
        match self {
            CallState::Waiting => "waiting",
            CallState::Ringing => "ringing",
            CallState::Connected => "connected",
            CallState::Feature => "feature",
        }
    }
}

/// A call in the ACD node: the caller, its queue and the agent it talks to (or is offered).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveCall {
    /// Caller id (queue_log's callid).
    pub caller: String,
    /// The caller's number.
    pub from: String,
    /// Queue (empty for a feature-code call).
    pub queue: String,
    /// State.
    pub state: CallState,
    /// The agent's interface (connected, or offered now).
    pub agent: Option<String>,
    /// Time since we answered the caller.
    pub duration: Duration,
}

impl<M: Media, F: Fabric> CallControl<M, F> {
    /// Pauses `interface` in `queue` or (None) in all its queues, with a reason (queue_log
    /// PAUSEALL/PAUSE as app_queue writes them).
    pub fn pause(
        &mut self,
        interface: &str,
        queue: Option<&str>,
        reason: &str,
        now: Instant,
    ) -> Result<(), EngineError> {
        let r = self.engine.pause(self.t(now), interface, queue, reason);
        self.pump(now);
        r
    }

    /// Unpauses (UNPAUSEALL/UNPAUSE).
    pub fn unpause(
        &mut self,
        interface: &str,
        queue: Option<&str>,
        reason: &str,
        now: Instant,
    ) -> Result<(), EngineError> {
        let r = self.engine.unpause(self.t(now), interface, queue, reason);
        self.pump(now);
        r
    }

    /// Adds a dynamic member at run time (ADDMEMBER).
    pub fn add_member(
        &mut self,
        queue: &str,
        member: MemberConfig,
        now: Instant,
    ) -> Result<(), EngineError> {
        let r = self.engine.add_member(self.t(now), queue, member);
        self.sync_reachability(None, now);
        self.pump(now);
        r
    }

    /// Removes a dynamic member (REMOVEMEMBER).
    pub fn remove_member(
        &mut self,
        queue: &str,
        interface: &str,
        now: Instant,
    ) -> Result<(), EngineError> {
        let r = self.engine.remove_member(self.t(now), queue, interface);
        self.pump(now);
        r
    }

    /// Sets a member's penalty in one queue or all (PENALTY).
    pub fn set_penalty(
        &mut self,
        interface: &str,
        queue: Option<&str>,
        penalty: i32,
        now: Instant,
    ) -> Result<(), EngineError> {
        let r = self
            .engine
            .set_penalty(self.t(now), interface, queue, penalty);
        self.pump(now);
        r
    }

    /// Re-applies stored runtime member state (`Engine::restore_members`); returns what was
    /// skipped and why.
    pub fn restore_members(
        &mut self,
        rows: &[crate::engine::RuntimeMember],
        now: Instant,
    ) -> Vec<String> {
        let skipped = self.engine.restore_members(self.t(now), rows);
        self.sync_reachability(None, now);
        self.pump(now);
        skipped
    }

    /// Applies a new queue configuration and number plan without a restart.
    pub fn reload(
        &mut self,
        engine: EngineConfig,
        numbers: HashMap<String, String>,
        now: Instant,
    ) -> Result<ReloadReport, EngineError> {
        let r = self.engine.reload(self.t(now), &engine)?;
        // Kept queues stay known to the announcements and the ringinuse lookups.
        let mut cfg = engine;
        for q in &r.kept_queues {
            if let Some(old) = self.cfg.engine.queues.iter().find(|c| c.name == *q) {
                cfg.queues.push(old.clone());
            }
        }
        self.cfg.engine = cfg;
        if !numbers.is_empty() {
            self.cfg.numbers = numbers;
        }
        self.sync_reachability(None, now);
        self.pump(now);
        Ok(r)
    }

    /// The calls in the node now, oldest first.
    pub fn live_calls(&self, now: Instant) -> Vec<LiveCall> {
        let mut v: Vec<(Instant, LiveCall)> = self
            .callers
            .iter()
            .map(|(n, c)| {
                let agent_of = |offer| self.agents.get(&offer).map(|a| a.interface.clone());
                let (state, agent) = if let Some(offer) = c.connected {
                    (CallState::Connected, agent_of(offer))
                } else if c.queue.is_empty() {
                    (CallState::Feature, None)
                } else {
                    let offered = self
                        .agents
                        .values()
                        .find(|a| a.caller == *n && !a.cancelled)
                        .map(|a| a.interface.clone());
                    match offered {
                        Some(a) => (CallState::Ringing, Some(a)),
                        None => (CallState::Waiting, None),
                    }
                };
                (
                    c.since,
                    LiveCall {
                        caller: c.id.clone(),
                        from: c.from.clone(),
                        queue: c.queue.clone(),
                        state,
                        agent,
                        duration: now.saturating_duration_since(c.since),
                    },
                )
            })
            .collect();
        v.sort_by_key(|(t, c)| (*t, c.caller.clone()));
        v.into_iter().map(|(_, c)| c).collect()
    }

    /// `<pause><code>` / `<unpause>` from a phone (see the module documentation).
    pub(super) fn pause_code(&mut self, number: &str, from_user: &str, now: Instant) -> Feature {
        let codes = &self.cfg.pause_codes;
        let (pause, reason) = if !codes.unpause.is_empty() && number == codes.unpause {
            (false, String::new())
        } else if let Some(code) = number
            .strip_prefix(codes.pause.as_str())
            .filter(|_| !codes.pause.is_empty())
        {
            let reason = if code.is_empty() {
                String::new()
            } else {
                match codes.reasons.get(code) {
                    Some(r) => r.clone(),
                    None => return Feature::Refused(404),
                }
            };
            (true, reason)
        } else {
            return Feature::None;
        };
        if from_user.is_empty() {
            return Feature::Refused(403);
        }
        let iface = format!("{}{from_user}", self.cfg.device_prefix);
        let t = self.t(now);
        let r = if pause {
            self.engine.pause(t, &iface, None, &reason)
        } else {
            self.engine.unpause(t, &iface, None, "")
        };
        match r {
            Ok(()) => {
                info!(%iface, pause, %reason, "pause from the phone");
                Feature::Done("auth-thankyou".into())
            }
            Err(e) => {
                info!(%iface, error = %e, "pause code refused");
                Feature::Refused(404)
            }
        }
    }
}

//! Supervisor views and operator inputs of the engine: waiting callers with position, wait and
//! priority; members with device state, pause reason and time in state; autopause after missed
//! offers; reloading the queue configuration at run time.

use std::time::Duration;

/// How an offer was missed, for autopause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Missed {
    /// Not answered in time (always counts).
    NoAnswer,
    /// Refused by the phone (counts with `autopausebusy`).
    Busy,
    /// Failed for want of the phone (counts with `autopauseunavail`).
    Unavailable,
}

use statebus::DeviceState;

use super::{
    normalize_key, AgentId, AutoPause, Engine, EngineConfig, EngineError, QueueConfig, QueueId,
    Time,
};

/// The pause reason app_queue gives an automatic pause.
pub const AUTO_PAUSE_REASON: &str = "Auto-Pause";

/// A caller waiting in a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitingCaller {
    /// Caller id (queue_log's callid).
    pub caller: String,
    /// Position now (1-based).
    pub position: usize,
    /// Position on entering.
    pub original_position: usize,
    /// QUEUE_PRIO.
    pub priority: i32,
    /// Time waited so far.
    pub wait: Duration,
    /// Being offered to a member now.
    pub ringing: bool,
}

/// A member of a queue as a supervisor sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentView {
    /// Interface (`PJSIP/2001`).
    pub interface: String,
    /// Member name.
    pub name: String,
    /// Device state as the engine sees it (UNAVAILABLE when its gateway is unreachable, INUSE
    /// while the engine connected it).
    pub state: DeviceState,
    /// Time since the device state last changed.
    pub state_for: Duration,
    /// Paused, with the reason and for how long.
    pub paused: Option<(String, Duration)>,
    /// Being offered a caller now.
    pub ringing: bool,
    /// In wrap-up.
    pub wrapup: bool,
    /// Could take a call now.
    pub available: bool,
    /// Penalty.
    pub penalty: i32,
    /// Added at run time.
    pub dynamic: bool,
    /// Completed calls.
    pub calls: u64,
    /// Time since the last call ended.
    pub last_call_ago: Option<Duration>,
}

/// What a reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// Queues created.
    pub added_queues: Vec<String>,
    /// Queues whose settings or static members were replaced.
    pub updated_queues: Vec<String>,
    /// Queues no longer in the configuration: kept (with their callers and dynamic members)
    /// until the next restart.
    pub kept_queues: Vec<String>,
}

impl Engine {
    /// Callers waiting in `queue`, in position order.
    pub fn waiting(&self, queue: &str) -> Vec<WaitingCaller> {
        let Ok(q) = self.qid(queue) else {
            return Vec::new();
        };
        self.queues[q]
            .callers
            .iter()
            .filter_map(|k| self.callers.get(k))
            .enumerate()
            .map(|(i, c)| WaitingCaller {
                caller: c.id.clone(),
                position: i + 1,
                original_position: c.opos,
                priority: c.priority,
                wait: self.now.saturating_sub(c.joined),
                ringing: matches!(c.phase, super::Phase::Ringing { .. }),
            })
            .collect()
    }

    /// The members of `queue` with their state, in member order.
    pub fn agents(&self, queue: &str) -> Vec<AgentView> {
        let Ok(q) = self.qid(queue) else {
            return Vec::new();
        };
        let qu = &self.queues[q];
        qu.members
            .iter()
            .enumerate()
            .map(|(mi, m)| {
                let ag = &self.agents[m.agent];
                let dev = &self.devices[ag.device];
                AgentView {
                    interface: ag.interface.clone(),
                    name: m.name.clone(),
                    state: self.effective_state(m.agent),
                    state_for: self.now.saturating_sub(dev.since),
                    paused: m.paused.then(|| (m.reason.clone(), m.paused_for(self.now))),
                    ringing: ag.offering.is_some(),
                    wrapup: self.in_wrapup(q, mi),
                    available: self.member_available(q, mi),
                    penalty: m.penalty,
                    dynamic: m.dynamic,
                    calls: m.calls,
                    last_call_ago: m.last_call.map(|t| self.now.saturating_sub(t)),
                }
            })
            .collect()
    }

    /// The queue's configuration as loaded (or last reloaded).
    pub fn queue_config(&self, queue: &str) -> Option<&QueueConfig> {
        self.qid(queue).ok().map(|q| &self.queues[q].cfg)
    }

    /// Queues `interface` is a member of (highest weight first).
    pub fn queues_of(&self, interface: &str) -> Vec<String> {
        self.agent_by_key
            .get(&normalize_key(interface))
            .map(|a| {
                self.agents[*a]
                    .queues
                    .iter()
                    .map(|q| self.queues[*q].cfg.name.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// An offer to `a` in queue `q` was missed (no answer; refused as busy with
    /// `autopausebusy`; failed for want of the phone with `autopauseunavail`): after
    /// `autopause_after` in a row, the member is paused with app_queue's reason `Auto-Pause`,
    /// in this queue (`autopause = yes`) or in all of its queues (`all`, with PAUSEALL). Within
    /// `autopausedelay` seconds of the end of the member's last call in this queue a miss does
    /// not count (app_queue's `rna()`: no autopause while `lastcall` is that recent). No
    /// dispatch here: pausing never frees anyone, and the callers dispatch after the offer's
    /// end anyway.
    pub(super) fn missed_offer(&mut self, q: QueueId, a: AgentId, why: Missed) {
        let cfg = &self.queues[q].cfg;
        let counts = match why {
            Missed::NoAnswer => true,
            Missed::Busy => cfg.autopausebusy,
            Missed::Unavailable => cfg.autopauseunavail,
        };
        if cfg.autopause == AutoPause::No || !counts {
            return;
        }
        let (mode, after) = (cfg.autopause, cfg.autopause_after.max(1));
        let delay = Duration::from_secs(cfg.autopausedelay);
        let Some(mi) = self.queues[q].index.get(&a).copied() else {
            return;
        };
        let now = self.now;
        let m = &mut self.queues[q].members[mi];
        if m.paused {
            return;
        }
        if m.last_call.is_some_and(|l| now.saturating_sub(l) < delay) {
            return;
        }
        m.missed = m.missed.saturating_add(1);
        if m.missed < after {
            return;
        }
        m.missed = 0;
        let interface = self.agents[a].interface.clone();
        let targets: Vec<(QueueId, usize)> = match mode {
            AutoPause::All => self.agents[a]
                .queues
                .iter()
                .filter_map(|q2| self.queues[*q2].index.get(&a).map(|mi| (*q2, *mi)))
                .collect(),
            _ => vec![(q, mi)],
        };
        self.mark_paused(
            &interface,
            mode == AutoPause::All,
            &targets,
            AUTO_PAUSE_REASON,
            true,
        );
    }

    /// Applies a new queue configuration without a restart (Asterisk's `queue reload`):
    /// queues not known yet are created; for known ones the settings are replaced and the
    /// static members reconciled (new ones added, removed ones dropped unless on a call or
    /// offered one right now, changed penalties applied); dynamic members, pauses, callers
    /// and statistics stay. Queues missing from the new configuration are kept (their callers
    /// are served) and reported. Penalty rules are replaced. Logs CONFIGRELOAD, as Asterisk's
    /// logger does.
    pub fn reload(&mut self, now: Time, cfg: &EngineConfig) -> Result<ReloadReport, EngineError> {
        self.advance(now);
        let rules = cfg.parsed_rules()?;
        let mut report = ReloadReport::default();
        let mut seen = std::collections::HashSet::new();
        for qc in &cfg.queues {
            seen.insert(qc.name.to_ascii_lowercase());
            let Ok(q) = self.qid(&qc.name) else {
                self.add_queue(now, qc.clone())?;
                report.added_queues.push(qc.name.clone());
                continue;
            };
            report.updated_queues.push(qc.name.clone());
            // Static members no longer configured leave, unless busy with a call of ours.
            let keep: std::collections::HashSet<String> = qc
                .members
                .iter()
                .map(|m| normalize_key(&m.interface))
                .collect();
            let gone: Vec<usize> = self.queues[q]
                .members
                .iter()
                .enumerate()
                .filter(|(_, m)| {
                    let ag = &self.agents[m.agent];
                    !m.dynamic
                        && !keep.contains(&normalize_key(&ag.interface))
                        && ag.offering.is_none()
                        && ag.in_calls == 0
                })
                .map(|(mi, _)| mi)
                .collect();
            for mi in gone.into_iter().rev() {
                let qu = &mut self.queues[q];
                let m = qu.members.remove(mi);
                qu.index.remove(&m.agent);
                for (i, mm) in qu.members.iter().enumerate().skip(mi) {
                    qu.index.insert(mm.agent, i);
                }
                if mi < qu.rrpos {
                    qu.rrpos -= 1;
                }
                self.agents[m.agent].queues.retain(|x| *x != q);
            }
            for mc in &qc.members {
                let a = self.agent_for(&mc.interface, mc.state_interface.as_deref());
                match self.queues[q].index.get(&a).copied() {
                    Some(mi) => {
                        let m = &mut self.queues[q].members[mi];
                        m.penalty = mc.penalty;
                        m.ringinuse = mc.ringinuse;
                        m.wrapuptime = mc.wrapuptime;
                        if let Some(n) = &mc.name {
                            m.name = n.clone();
                        }
                    }
                    None => {
                        let _ = self.insert_member(q, mc.clone(), false, false);
                    }
                }
            }
            let mut new_cfg = qc.clone();
            new_cfg.name = self.queues[q].cfg.name.clone();
            self.queues[q].cfg = new_cfg;
            if self.queues.iter().any(|o| o.cfg.weight != qc.weight) {
                self.weights_differ = true;
            }
        }
        for qu in &self.queues {
            if !seen.contains(&qu.cfg.name.to_ascii_lowercase()) {
                report.kept_queues.push(qu.cfg.name.clone());
            }
        }
        self.rules = rules;
        self.shared_lastcall = cfg.shared_lastcall;
        self.log("NONE", "NONE", "NONE", "CONFIGRELOAD", vec![String::new()]);
        for q in 0..self.queues.len() {
            self.dispatch(q);
        }
        Ok(report)
    }
}

//! Runtime member state worth keeping across a restart (Asterisk's `persistentmembers`):
//! dynamic members, and members whose pause or penalty differs from the configuration. The
//! node stores it (`crate::member_state`) and gives it back to a fresh engine with
//! [`Engine::restore_members`].

use super::{normalize_key, Engine, MemberConfig, Time};

/// One member's runtime state in one queue.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RuntimeMember {
    /// Queue.
    pub queue: String,
    /// Interface (`PJSIP/2001`).
    pub interface: String,
    /// Member name.
    pub name: String,
    /// Device watched for state, when not the interface.
    pub state_interface: Option<String>,
    /// Added at run time (not from the configuration).
    pub dynamic: bool,
    /// Penalty.
    pub penalty: i32,
    /// Paused, with this reason.
    pub paused: Option<String>,
    /// Per-member wrap-up time.
    pub wrapuptime: Option<u64>,
    /// Per-member ringinuse.
    pub ringinuse: Option<bool>,
}

impl Engine {
    /// Dynamic members, and static members paused, unpaused or with a penalty other than
    /// their configuration says, in queue then member order.
    pub fn runtime_members(&self) -> Vec<RuntimeMember> {
        let mut out = Vec::new();
        for qu in &self.queues {
            for m in &qu.members {
                let ag = &self.agents[m.agent];
                let configured = (!m.dynamic)
                    .then(|| {
                        let key = normalize_key(&ag.interface);
                        qu.cfg
                            .members
                            .iter()
                            .find(|c| normalize_key(&c.interface) == key)
                    })
                    .flatten();
                if let Some(c) = configured {
                    if c.penalty == m.penalty && !c.paused && !m.paused {
                        continue;
                    }
                }
                let dev_key = self
                    .device_by_key
                    .iter()
                    .find(|(_, d)| **d == ag.device)
                    .map(|(k, _)| k.clone());
                out.push(RuntimeMember {
                    queue: qu.cfg.name.clone(),
                    interface: ag.interface.clone(),
                    name: m.name.clone(),
                    state_interface: dev_key.filter(|k| *k != normalize_key(&ag.interface)),
                    dynamic: m.dynamic,
                    penalty: m.penalty,
                    paused: m.paused.then(|| m.reason.clone()),
                    wrapuptime: m.wrapuptime,
                    ringinuse: m.ringinuse,
                });
            }
        }
        out
    }

    /// Re-applies stored runtime state to an engine built from the configuration: dynamic
    /// members not yet members are added, penalties set, pauses set or lifted. A row whose
    /// queue is gone, or a static member's row whose member the configuration no longer has,
    /// is skipped: the returned lines say which and why.
    pub fn restore_members(&mut self, now: Time, rows: &[RuntimeMember]) -> Vec<String> {
        let mut skipped = Vec::new();
        for r in rows {
            let Ok(q) = self.qid(&r.queue) else {
                skipped.push(format!(
                    "{} in {}: queue not configured",
                    r.interface, r.queue
                ));
                continue;
            };
            let member = self.membership(q, &r.interface).ok();
            let result = match member {
                None if !r.dynamic => {
                    skipped.push(format!(
                        "{} in {}: no longer a member in the configuration",
                        r.interface, r.queue
                    ));
                    continue;
                }
                None => self.add_member(
                    now,
                    &r.queue,
                    MemberConfig {
                        interface: r.interface.clone(),
                        penalty: r.penalty,
                        name: Some(r.name.clone()),
                        state_interface: r.state_interface.clone(),
                        ringinuse: r.ringinuse,
                        wrapuptime: r.wrapuptime,
                        paused: false,
                    },
                ),
                Some((_, mi)) if self.queues[q].members[mi].penalty != r.penalty => {
                    self.set_penalty(now, &r.interface, Some(&r.queue), r.penalty)
                }
                Some(_) => Ok(()),
            };
            let paused = self
                .membership(q, &r.interface)
                .ok()
                .is_some_and(|(_, mi)| self.queues[q].members[mi].paused);
            let result = result.and_then(|()| match &r.paused {
                Some(reason) => self.pause(now, &r.interface, Some(&r.queue), reason),
                None if paused => self.unpause(now, &r.interface, Some(&r.queue), ""),
                None => Ok(()),
            });
            if let Err(e) = result {
                skipped.push(format!("{} in {}: {e}", r.interface, r.queue));
            }
        }
        skipped
    }
}

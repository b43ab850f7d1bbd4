//! Runtime member state worth keeping across a restart (Asterisk's `persistentmembers`):
//! dynamic members, and members whose pause or penalty differs from the configuration. The
//! node stores it (`crate::member_state`) and gives it back to a fresh engine with
//! [`Engine::restore_members`].

use super::{normalize_key, Engine, MemberConfig, Time};

/// One member's runtime state in one queue: the member as a configuration line would give it
/// (its name always set, `paused` left false), whether it was added at run time, and its pause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeMember {
    /// Queue.
    pub queue: String,
    /// Interface, name, state interface, penalty, wrap-up and ringinuse as they are now.
    pub member: MemberConfig,
    /// Added at run time (not from the configuration).
    pub dynamic: bool,
    /// Paused, with this reason.
    pub paused: Option<String>,
    /// How long it has been paused (zero when not paused), so that a restart does not restart
    /// the pause's clock.
    pub paused_for: Time,
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
                    member: MemberConfig {
                        interface: ag.interface.clone(),
                        penalty: m.penalty,
                        name: Some(m.name.clone()),
                        state_interface: dev_key.filter(|k| *k != normalize_key(&ag.interface)),
                        ringinuse: m.ringinuse,
                        wrapuptime: m.wrapuptime,
                        paused: false,
                    },
                    dynamic: m.dynamic,
                    paused: m.paused.then(|| m.reason.clone()),
                    paused_for: m.paused_for(self.now),
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
            let (queue, interface) = (&r.queue, &r.member.interface);
            let Ok(q) = self.qid(queue) else {
                skipped.push(format!("{interface} in {queue}: queue not configured"));
                continue;
            };
            let member = self.membership(q, interface).ok();
            let result = match member {
                None if !r.dynamic => {
                    skipped.push(format!(
                        "{interface} in {queue}: no longer a member in the configuration"
                    ));
                    continue;
                }
                None => self.add_member(now, queue, r.member.clone()),
                Some((_, mi)) if self.queues[q].members[mi].penalty != r.member.penalty => {
                    self.set_penalty(now, interface, Some(queue), r.member.penalty)
                }
                Some(_) => Ok(()),
            };
            let paused = self
                .membership(q, interface)
                .ok()
                .is_some_and(|(_, mi)| self.queues[q].members[mi].paused);
            let result = result.and_then(|()| match &r.paused {
                Some(reason) => self.pause(now, interface, Some(queue), reason),
                None if paused => self.unpause(now, interface, Some(queue), ""),
                None => Ok(()),
            });
            if let Err(e) = result {
                skipped.push(format!("{interface} in {queue}: {e}"));
                continue;
            }
            if r.paused.is_some() {
                if let Ok((_, mi)) = self.membership(q, interface) {
                    let m = &mut self.queues[q].members[mi];
                    m.paused_since = Some(now);
                    m.paused_before = r.paused_for;
                }
            }
        }
        skipped
    }
}

//! Wiring of the presence component (statebus::presence) into the binary: started next to the
//! bus when the config has a `[presence]` section.

use crate::config::Loaded;
use anyhow::Result;
use statebus::presence::{PresenceConfig, PresenceService};
use statebus::Bus;
use std::sync::Arc;

/// Starts the component (needs the runtime); `None` without `[presence]`.
pub fn start(
    loaded: &Loaded,
    cfg: Option<PresenceConfig>,
    bus: Arc<dyn Bus>,
) -> Result<Option<PresenceService>> {
    let Some(cfg) = cfg else { return Ok(None) };
    let jid = cfg.jid.clone();
    let svc = PresenceService::start(cfg, bus).map_err(|e| loaded.explain_presence(&e))?;
    eprintln!("presence component {jid}");
    Ok(Some(svc))
}

/// What was last fed to the component about one agent.
#[derive(Default, Clone, PartialEq)]
struct Fed {
    paused: Option<String>,
    wrapup: Option<String>,
    queue: Option<String>,
}

/// Feeds the ACD node's view of its agents to the component: pause with its reason and time,
/// wrap-up with its queue, and the queue of the agent's current call. On every change of the
/// node's floor, only what differs from the last feed is sent.
pub async fn feed_from_acd(node: Arc<acd::node::AcdNode>, svc: PresenceService) {
    use statebus::presence::AgentInput;
    use std::collections::HashMap;
    let mut changes = node.changes();
    let mut last: HashMap<String, Fed> = HashMap::new();
    loop {
        let Some(floor) = node.floor().await else {
            return;
        };
        let now = std::time::Instant::now();
        let mut current: HashMap<String, Fed> = HashMap::new();
        let mut paused_for = HashMap::new();
        for q in &floor.queues {
            for a in &q.agents {
                let f = current.entry(a.interface.clone()).or_default();
                if let Some((reason, for_)) = &a.paused {
                    f.paused = Some(reason.clone());
                    paused_for.insert(a.interface.clone(), *for_);
                }
                if a.wrapup {
                    f.wrapup = Some(q.name.clone());
                }
            }
        }
        for c in &floor.calls {
            if let (Some(agent), false) = (&c.agent, c.queue.is_empty()) {
                current.entry(agent.clone()).or_default().queue = Some(c.queue.clone());
            }
        }
        // An agent gone from the floor (removed, or nothing left to say) is reset.
        for device in last.keys() {
            current.entry(device.clone()).or_default();
        }
        for (device, f) in &current {
            let old = last.get(device).cloned().unwrap_or_default();
            if *f == old {
                continue;
            }
            if f.paused != old.paused {
                svc.agent(match &f.paused {
                    Some(reason) => AgentInput::Paused {
                        device: device.clone(),
                        reason: reason.clone(),
                        since: paused_for.get(device).and_then(|d| now.checked_sub(*d)),
                    },
                    None => AgentInput::Unpaused {
                        device: device.clone(),
                    },
                });
            }
            if f.wrapup != old.wrapup {
                svc.agent(match &f.wrapup {
                    Some(q) => AgentInput::WrapUp {
                        device: device.clone(),
                        queue: Some(q.clone()),
                    },
                    None => AgentInput::WrapUpEnded {
                        device: device.clone(),
                    },
                });
            }
            if f.queue != old.queue {
                svc.agent(AgentInput::Queue {
                    device: device.clone(),
                    queue: f.queue.clone(),
                });
            }
        }
        current.retain(|_, f| *f != Fed::default());
        last = current;
        if changes.changed().await.is_err() {
            return;
        }
    }
}

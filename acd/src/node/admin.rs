//! The node's operator commands (pause, members, penalties, reload) and the floor view
//! (queues, waiting callers, agents, live calls) for the admin API, the CLI and the wallboard.
//! The logic is in the call core and the engine; here: the handle's methods and the task's
//! side. `changes` ticks after everything that may change the floor (device states, commands,
//! queue_log lines), so a wallboard pushes within one round trip of the change.

use std::collections::HashMap;
use std::time::Instant;

use tokio::sync::{oneshot, watch};

use super::{AcdNode, Command, Node};
use crate::call::LiveCall;
use crate::engine::{
    AgentView, EngineConfig, EngineError, MemberConfig, QueueStats, ReloadReport, WaitingCaller,
};

/// An operator command.
#[derive(Debug, Clone)]
pub enum AdminOp {
    /// Pause in one queue or (None) all, with a reason.
    Pause {
        /// Member interface.
        interface: String,
        /// Queue, or all.
        queue: Option<String>,
        /// Reason (queue_log PAUSE data).
        reason: String,
    },
    /// Unpause.
    Unpause {
        /// Member interface.
        interface: String,
        /// Queue, or all.
        queue: Option<String>,
        /// Reason (queue_log UNPAUSE data, usually empty).
        reason: String,
    },
    /// Add a dynamic member (log an agent in).
    AddMember {
        /// Queue.
        queue: String,
        /// Member.
        member: MemberConfig,
    },
    /// Remove a dynamic member (log an agent out).
    RemoveMember {
        /// Queue.
        queue: String,
        /// Member interface.
        interface: String,
    },
    /// Set a penalty in one queue or all.
    Penalty {
        /// Member interface.
        interface: String,
        /// Queue, or all.
        queue: Option<String>,
        /// New penalty.
        penalty: i32,
    },
    /// Apply a new queue configuration (and number plan, unless empty).
    Reload {
        /// Queues, members, rules.
        engine: EngineConfig,
        /// Dialled number → queue.
        numbers: HashMap<String, String>,
    },
}

/// What a command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminReply {
    /// Done.
    Done,
    /// Reloaded.
    Reloaded(ReloadReport),
}

/// One queue on the floor.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueFloor {
    /// Name.
    pub name: String,
    /// Strategy (queues.conf spelling).
    pub strategy: String,
    /// Service level threshold, seconds.
    pub servicelevel: u64,
    /// Weight.
    pub weight: i32,
    /// maxlen (0: unlimited).
    pub maxlen: usize,
    /// Counters.
    pub stats: QueueStats,
    /// Callers in position order.
    pub waiting: Vec<WaitingCaller>,
    /// Members in member order.
    pub agents: Vec<AgentView>,
}

impl QueueFloor {
    /// Answered within the service level, of all answered, in percent (0 with none).
    pub fn service_level_pct(&self) -> f64 {
        if self.stats.answered == 0 {
            0.0
        } else {
            100.0 * self.stats.answered_within_sl as f64 / self.stats.answered as f64
        }
    }
}

/// The whole floor of the node, now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Floor {
    /// Queues, by name.
    pub queues: Vec<QueueFloor>,
    /// Calls in the node.
    pub calls: Vec<LiveCall>,
}

impl AcdNode {
    /// Runs an operator command. `None` if the node stopped.
    pub async fn admin(&self, op: AdminOp) -> Option<Result<AdminReply, EngineError>> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Admin(op, tx)).await.ok()?;
        rx.await.ok()
    }

    /// The floor now. `None` if the node stopped.
    pub async fn floor(&self) -> Option<Floor> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Floor(tx)).await.ok()?;
        rx.await.ok()
    }

    /// Ticks whenever the floor may have changed.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

impl Node {
    pub(super) fn admin(&mut self, op: AdminOp) -> Result<AdminReply, EngineError> {
        let now = Instant::now();
        let c = &mut self.core;
        let r = match op {
            AdminOp::Pause {
                interface,
                queue,
                reason,
            } => c.pause(&interface, queue.as_deref(), &reason, now),
            AdminOp::Unpause {
                interface,
                queue,
                reason,
            } => c.unpause(&interface, queue.as_deref(), &reason, now),
            AdminOp::AddMember { queue, member } => c.add_member(&queue, member, now),
            AdminOp::RemoveMember { queue, interface } => c.remove_member(&queue, &interface, now),
            AdminOp::Penalty {
                interface,
                queue,
                penalty,
            } => c.set_penalty(&interface, queue.as_deref(), penalty, now),
            AdminOp::Reload { engine, numbers } => {
                return c.reload(engine, numbers, now).map(AdminReply::Reloaded);
            }
        };
        r.map(|()| AdminReply::Done)
    }

    pub(super) fn floor(&mut self) -> Floor {
        let now = Instant::now();
        // Times in state are computed at the engine's `now`: bring it to the present.
        self.core.handle_timeout(now);
        let e = self.core.engine();
        let mut queues: Vec<QueueFloor> = e
            .queue_names()
            .filter_map(|q| {
                let cfg = e.queue_config(q)?;
                Some(QueueFloor {
                    name: q.to_owned(),
                    strategy: cfg.strategy.to_string(),
                    servicelevel: cfg.servicelevel,
                    weight: cfg.weight,
                    maxlen: cfg.maxlen,
                    stats: e.queue_stats(q).cloned().unwrap_or_default(),
                    waiting: e.waiting(q),
                    agents: e.agents(q),
                })
            })
            .collect();
        queues.sort_by(|a, b| a.name.cmp(&b.name));
        Floor {
            queues,
            calls: self.core.live_calls(now),
        }
    }

    /// The floor may have changed.
    pub(super) fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }
}

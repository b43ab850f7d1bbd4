//! Agent presence for supervisors: an XEP-0114 external component whose domain (e.g.
//! `agents.example.com`) holds every agent/device as a JID (`1000@agents.example.com`).
//! Supervisors add those JIDs to their rosters from any XMPP client and see the agent's state
//! as presence: `show` (none: available or ringing; `dnd`: on a call, on hold, paused; `away`:
//! wrap-up; never `xa`) and `status` (`On call · support`, `Paused: Lunch 12m`).
//!
//! Inputs: device states from the [`Bus`](crate::Bus), and what the ACD side knows about agents
//! (pause with reason, wrap-up, queue of the call) as [`AgentInput`]s through
//! [`PresenceService::agent_input`]. Subscriptions are persisted in a file, so a restart keeps
//! them. `core.rs` is the sans-IO logic, `component.rs` the connection.

mod component;
pub mod core;
pub mod header;
pub mod out;
pub mod render;
pub mod store;

pub use self::component::{PresenceConfig, PresenceError, PresenceService};
pub use self::core::PresenceStats;
use std::time::Instant;

/// What the ACD side tells the presence component about the agent at a device (the device
/// key as on the bus, e.g. `PJSIP/1000`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentInput {
    /// The agent paused, with a reason (empty: none), since `since` (`None`: now).
    Paused {
        /// device key
        device: String,
        /// pause reason, e.g. `Lunch`
        reason: String,
        /// when the pause began
        since: Option<Instant>,
    },
    /// The agent unpaused.
    Unpaused {
        /// device key
        device: String,
    },
    /// Wrap-up after a call (from `queue`, if known) began.
    WrapUp {
        /// device key
        device: String,
        /// the call's queue
        queue: Option<String>,
    },
    /// Wrap-up ended.
    WrapUpEnded {
        /// device key
        device: String,
    },
    /// The queue of the agent's current call (`None`: not a queue call).
    Queue {
        /// device key
        device: String,
        /// queue name
        queue: Option<String>,
    },
}

impl AgentInput {
    /// The device key this input is about.
    pub fn device(&self) -> &str {
        match self {
            AgentInput::Paused { device, .. }
            | AgentInput::Unpaused { device }
            | AgentInput::WrapUp { device, .. }
            | AgentInput::WrapUpEnded { device }
            | AgentInput::Queue { device, .. } => device,
        }
    }
}

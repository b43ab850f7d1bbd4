//! ACD: queues whose agents sit at any site (issue 5).
//!
//! [`engine`] is the queue engine as pure, sans-IO logic following Asterisk's app_queue: the
//! driver feeds it device states (statebus aggregates), callers, offer outcomes and member
//! changes, each with the current time, and polls [`Action`]s and the next timeout.

pub mod call;
pub mod engine;
pub mod global_sim;
pub mod member_state;
pub mod node;
pub mod queue_log;
pub mod reach;

pub use engine::{
    Action, CompletedBy, EmptyConditions, Engine, EngineConfig, EngineError, ExitReason, Join,
    MemberConfig, MemberStats, OfferId, OfferOutcome, QueueConfig, QueueLogEvent, QueueStats,
    Strategy, Time,
};
pub use statebus::DeviceState;

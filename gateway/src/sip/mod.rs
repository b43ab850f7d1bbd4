//! SIP: the message model (on rsip) and the RFC 3261 §17 transaction layer.

pub mod dialog;
pub mod message;
pub mod prack;
pub mod transaction;

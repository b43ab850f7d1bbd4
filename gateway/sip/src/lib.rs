//! SIP, sans-IO: the message model (on rsip), the RFC 3261 §17 transaction layer, dialogs,
//! stream framing, Via routing, digest authentication and the `X-CF-Offer` header.

pub mod builder;
pub mod dialog;
pub mod digest;
pub mod framing;
pub mod message;
pub mod offer;
pub mod overload;
pub mod prack;
#[cfg(any(test, feature = "test-util"))]
pub mod test_util;
pub mod transaction;
pub mod trust;
pub mod ua;
pub mod via;

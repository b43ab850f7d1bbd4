//! The site gateway: SIP to phones, trunks and other sites.
//!
//! Protocol cores here are sans-IO: no sockets, no tokio, time passed in as `now`.

pub mod devices;
pub mod registrar;
pub mod sip;

//! The site gateway: SIP to phones, trunks and other sites.
//!
//! Protocol cores here are sans-IO: no sockets, no tokio, time passed in as `now`
//! (`sip::message`, `sip::transaction`, `registrar`, `transport::framing`, `transport::via`).
//! The I/O lives at the edges: `transport` (tokio UDP/TCP listeners) and `devices` (sqlx).

pub mod audio;
pub mod b2bua;
pub mod devices;
pub mod dns;
pub mod media;
pub mod offer;
pub mod records;
pub mod registrar;
pub mod sdp;
pub mod server;
pub mod sip;
pub mod transport;

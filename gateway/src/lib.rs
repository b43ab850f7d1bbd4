//! The site gateway: SIP to phones, trunks and other sites.
//!
//! The application on top of the stack crates `sip-core` (sans-IO SIP), `sipnet` (tokio
//! transports), `sdp` and `media` (relay and audio engine): the registrar, the B2BUA, devices,
//! CDRs and the gateway process. Sans-IO here: `registrar`, `b2bua`; the I/O lives in `server`
//! and `devices` (sqlx).

pub mod b2bua;
pub mod devices;
pub mod dns;
pub mod mwi;
pub mod records;
pub mod registrar;
pub mod security;
pub mod server;
pub mod voicemail;

// The stack crates under the module names the application's code uses.
use ::media;
use ::sdp;
use media::audio;
use sip_core as sip;
use sip_core::offer;
pub use sipnet as transport;

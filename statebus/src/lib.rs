//! callfabric's state fabric: Asterisk's device-state and MWI model, the res_xmpp wire format,
//! and the [`Bus`] that carries them between sites (in-process or over XMPP PubSub).
//!
//! Only this crate knows XMPP. Everything above it sees [`DeviceState`], [`Mwi`], [`Change`]
//! and the [`Bus`] trait.

mod bus;
mod cache;
mod cscan;
mod eid;
pub mod fill;
pub mod guard;
mod local;
mod mwi;
pub mod presence;
pub mod servers;
pub mod services;
mod state;
pub mod waiting;
pub mod wire;
pub mod xmpp;

pub use bus::{recv, Bus, BusEvent, BusStatus};
pub use cache::{Change, Heartbeat, Snapshot, StateCache};
pub use eid::{Eid, EidParseError};
pub use local::LocalBus;
pub use mwi::Mwi;
pub use services::QueueProvider;
pub use state::{Aggregate, DeviceState};
pub use waiting::WaitingCaller;
pub use xmpp::{TlsMode, XmppBus, XmppBusConfig, XmppBusError, XmppBusStats};

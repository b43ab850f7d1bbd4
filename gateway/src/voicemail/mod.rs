//! Voicemail (issue 14): a user agent the gateway diverts calls to (no answer, busy,
//! unavailable, per device), messages recorded to WAV in a mailbox directory with their
//! metadata in SQL, retrieval by feature code with a PIN by DTMF, the counts published on the
//! bus as Asterisk's MWI (new/old), and e-mail notification with the WAV attached.
//!
//! * [`menu`] (sans-IO): the dialogue (deposit; PIN, listen, save, delete, greeting).
//! * [`store`]: messages in SQL and WAV files.
//! * [`mail`]: the e-mail (lettre, SMTP).
//! * `ua`: the SIP user agent and the per-call tasks ([`Voicemail`]).
//! * [`Routes`]: what the gateway needs to divert calls and route the feature code
//!   (`gateway/src/server/voicemail.rs`, `gateway/src/b2bua/divert.rs`).

pub mod mail;
pub mod menu;
pub mod store;
mod ua;

pub use mail::SmtpConfig;
pub use ua::{Voicemail, MAX_SESSIONS};

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// One mailbox and its device's diversion settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxConfig {
    /// Mailbox number (`1000`; its MWI key is `1000@<context>`).
    pub mailbox: String,
    /// The device (user name) whose calls go to it and whose feature code opens it.
    pub device: String,
    /// PIN for retrieval (digits).
    pub pin: String,
    /// Where new messages are mailed (with `[voicemail.smtp]`).
    pub email: Option<String>,
    /// Divert when the device is busy (486/600 from the phone, or at its call limit).
    pub busy: bool,
    /// Divert when the device is not registered (or no contact answers qualify).
    pub unavailable: bool,
    /// Divert when the device rings this long unanswered (or its INVITE times out).
    pub no_answer: Option<Duration>,
}

/// Everything the voicemail user agent needs; built by the binary from `[voicemail]`.
#[derive(Debug, Clone)]
pub struct VoicemailConfig {
    /// SIP listener (UDP), usually loopback: only the gateway talks to it.
    pub listen: SocketAddr,
    /// RTP address.
    pub rtp_ip: IpAddr,
    /// RTP port range (inclusive), apart from the gateway's.
    pub rtp_ports: (u16, u16),
    /// Mailbox directory.
    pub dir: PathBuf,
    /// Database URL (the gateway's by default; PostgreSQL for a central server).
    pub database: String,
    /// Voicemail context (`default`).
    pub context: String,
    /// Feature code for retrieval (`*98`).
    pub retrieval_code: String,
    /// Most messages per mailbox (more are not recorded).
    pub max_messages: usize,
    /// Recording and menu limits.
    pub limits: menu::Limits,
    /// The mailboxes.
    pub mailboxes: Vec<MailboxConfig>,
    /// E-mail notification.
    pub smtp: Option<SmtpConfig>,
    /// SIP timer T1.
    pub t1: Duration,
}

/// What the gateway needs to send calls to voicemail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routes {
    /// The voicemail user agent.
    pub address: SocketAddr,
    /// Feature code for retrieval.
    pub retrieval_code: String,
    /// Device user name → its mailbox settings.
    pub devices: HashMap<String, MailboxConfig>,
}

impl VoicemailConfig {
    /// The gateway's routes to the user agent listening at `address`.
    pub fn routes(&self, address: SocketAddr) -> Routes {
        Routes {
            address,
            retrieval_code: self.retrieval_code.clone(),
            devices: self
                .mailboxes
                .iter()
                .map(|m| (m.device.clone(), m.clone()))
                .collect(),
        }
    }
}

/// Something voicemail reports (the binary prints these).
#[derive(Debug, Clone)]
pub enum VoicemailEvent {
    /// A message was stored.
    Deposited {
        /// Mailbox.
        mailbox: String,
        /// Message id.
        id: String,
        /// The WAV file.
        path: PathBuf,
        /// Its length.
        duration: Duration,
    },
    /// A message was deleted.
    Deleted {
        /// Mailbox.
        mailbox: String,
        /// Message id.
        id: String,
    },
    /// The owner recorded a greeting.
    Greeting {
        /// Mailbox.
        mailbox: String,
    },
    /// The e-mail of a new message was sent (or failed).
    Mailed {
        /// Mailbox.
        mailbox: String,
        /// Message id.
        id: String,
        /// Recipient.
        to: String,
        /// Accepted by the SMTP server.
        ok: bool,
    },
    /// The counts were published on the bus.
    Mwi {
        /// Mailbox.
        mailbox: String,
        /// New messages.
        new: u32,
        /// Old messages.
        old: u32,
    },
}

/// Errors starting voicemail.
#[derive(Debug, thiserror::Error)]
pub enum VoicemailError {
    /// The store.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The listener.
    #[error("voicemail SIP listener: {0}")]
    Io(#[from] std::io::Error),
    /// The RTP relay.
    #[error("voicemail media: {0}")]
    Media(#[from] crate::media::MediaError),
    /// A shipped prompt.
    #[error("voicemail prompt: {0}")]
    Audio(#[from] crate::audio::AudioError),
}

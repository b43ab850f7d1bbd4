//! E-mail notification of a new message, the WAV attached, over SMTP (`lettre`).

use lettre::message::header::ContentType;
use lettre::message::{Attachment, MultiPart, SinglePart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use std::time::Duration;

/// Where notifications go out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpConfig {
    /// SMTP server host name or address.
    pub host: String,
    /// Its port (25, or 587 for a submission port).
    pub port: u16,
    /// The sender (`From:`), e.g. `voicemail@example.com`.
    pub from: String,
    /// Give up on a server that does not answer within this.
    pub timeout: Duration,
}

/// Errors sending a notification.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// An address does not parse.
    #[error("e-mail address {0:?}: {1}")]
    Address(String, lettre::address::AddressError),
    /// Building the message.
    #[error("building the e-mail: {0}")]
    Build(#[from] lettre::error::Error),
    /// The SMTP exchange.
    #[error("SMTP: {0}")]
    Smtp(#[from] lettre::transport::smtp::Error),
}

/// What a notification says.
#[derive(Debug, Clone)]
pub struct Notice<'a> {
    /// Mailbox (`1000`).
    pub mailbox: &'a str,
    /// Caller.
    pub caller: &'a str,
    /// Message length.
    pub duration: Duration,
    /// Message id (the attachment's name).
    pub id: &'a str,
}

/// Sends `wav` to `to` as a new-voicemail notice.
pub async fn notify(
    smtp: &SmtpConfig,
    to: &str,
    notice: &Notice<'_>,
    wav: Vec<u8>,
) -> Result<(), MailError> {
    let from = smtp
        .from
        .parse()
        .map_err(|e| MailError::Address(smtp.from.clone(), e))?;
    let rcpt = to
        .parse()
        .map_err(|e| MailError::Address(to.to_owned(), e))?;
    let text = format!(
        "A new voicemail message ({} s) from {} is in mailbox {}. It is attached.\r\n",
        notice.duration.as_secs(),
        notice.caller,
        notice.mailbox
    );
    let wav_type = ContentType::parse("audio/wav").unwrap_or(ContentType::TEXT_PLAIN);
    let email = lettre::Message::builder()
        .from(from)
        .to(rcpt)
        .subject(format!(
            "New voicemail from {} in mailbox {}",
            notice.caller, notice.mailbox
        ))
        .multipart(
            MultiPart::mixed()
                .singlepart(SinglePart::plain(text))
                .singlepart(Attachment::new(format!("{}.wav", notice.id)).body(wav, wav_type)),
        )?;
    let mailer = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&smtp.host)
        .port(smtp.port)
        .timeout(Some(smtp.timeout))
        .build();
    mailer.send(email).await?;
    Ok(())
}

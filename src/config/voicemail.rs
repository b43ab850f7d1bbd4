//! The `[voicemail]` section (issue 14): the voicemail user agent, its mailboxes
//! (`[[voicemail.mailbox]]`: device, PIN, e-mail, when to divert) and `[voicemail.smtp]`.

use anyhow::{anyhow, Result};
use gateway::voicemail::{menu::Limits, MailboxConfig, SmtpConfig, VoicemailConfig};
use serde::Deserialize;
use std::path::Path;
use std::time::Duration;

use super::Loaded;

/// `[voicemail]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoicemailSection {
    /// SIP listener of the voicemail user agent (default `127.0.0.1:0`, any free port).
    pub listen: Option<String>,
    /// Mailbox directory, relative to the config file (default `voicemail`).
    pub dir: Option<String>,
    /// Database URL (default: the gateway's).
    pub database: Option<String>,
    /// Voicemail context (default `default`).
    pub context: Option<String>,
    /// Feature code for retrieval (default `*98`).
    pub retrieval_code: Option<String>,
    /// RTP port range (default `30000-30999`).
    pub rtp_ports: Option<String>,
    /// Most messages per mailbox (default 100, at most 999).
    pub max_messages: Option<usize>,
    /// Longest message (default 180).
    pub max_message_secs: Option<f64>,
    /// Longest greeting (default 60).
    pub max_greeting_secs: Option<f64>,
    /// Menus hang up after this long without a key (default 30).
    pub idle_secs: Option<f64>,
    /// E-mail notification.
    pub smtp: Option<SmtpSection>,
    /// The mailboxes.
    #[serde(default)]
    pub mailbox: Vec<MailboxSection>,
}

/// `[voicemail.smtp]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpSection {
    /// `host:port` of the SMTP server.
    pub server: String,
    /// Sender address.
    pub from: String,
    /// Give up after this long (default 10).
    pub timeout_secs: Option<f64>,
}

/// `[[voicemail.mailbox]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailboxSection {
    /// The device (user name).
    pub device: String,
    /// Mailbox number (default: the device's user name).
    pub mailbox: Option<String>,
    /// Retrieval PIN (digits).
    pub pin: String,
    /// Where new messages are mailed.
    pub email: Option<String>,
    /// Divert on busy (default true).
    pub busy: Option<bool>,
    /// Divert when not registered (default true).
    pub unavailable: Option<bool>,
    /// Divert after ringing this long (default 20; 0: never on no answer).
    pub no_answer_secs: Option<f64>,
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl Loaded {
    /// The validated `[voicemail]` section, if any; `gateway_db` is the gateway's database.
    pub fn voicemail(&self, gateway_db: &str, t1: Duration) -> Result<Option<VoicemailConfig>> {
        let Some(v) = &self.config.voicemail else {
            return Ok(None);
        };
        let s = "voicemail";
        let listen = match &v.listen {
            None => std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            Some(l) => l.parse().map_err(|_| {
                anyhow!(
                    "{}: {l:?} is not an address like 127.0.0.1:5070",
                    self.at(s, "listen")
                )
            })?,
        };
        let retrieval_code = v.retrieval_code.clone().unwrap_or_else(|| "*98".into());
        if retrieval_code.is_empty()
            || retrieval_code.len() > 16
            || !retrieval_code
                .chars()
                .all(|c| c.is_ascii_digit() || c == '*' || c == '#')
        {
            return Err(anyhow!(
                "{}: retrieval_code {retrieval_code:?} must be 1 to 16 of 0-9, * and #",
                self.at(s, "retrieval_code")
            ));
        }
        let context = v.context.clone().unwrap_or_else(|| "default".into());
        if !is_token(&context) {
            return Err(anyhow!(
                "{}: context {context:?} must be letters, digits, '-', '_' or '.'",
                self.at(s, "context")
            ));
        }
        let max_messages = match v.max_messages {
            None => 100,
            Some(n) if (1..=999).contains(&n) => n,
            Some(n) => {
                return Err(anyhow!(
                    "{}: max_messages = {n} must be between 1 and 999",
                    self.at(s, "max_messages")
                ))
            }
        };
        let limits = Limits {
            max_message: self.duration(
                s,
                "max_message_secs",
                v.max_message_secs,
                Duration::from_secs(180),
            )?,
            max_greeting: self.duration(
                s,
                "max_greeting_secs",
                v.max_greeting_secs,
                Duration::from_secs(60),
            )?,
            idle: self.duration(s, "idle_secs", v.idle_secs, Duration::from_secs(30))?,
        };
        let smtp = match &v.smtp {
            None => None,
            Some(m) => {
                let (host, port) = m
                    .server
                    .rsplit_once(':')
                    .and_then(|(h, p)| Some((h.trim_matches(['[', ']']), p.parse::<u16>().ok()?)))
                    .filter(|(h, p)| !h.is_empty() && *p > 0)
                    .ok_or_else(|| {
                        anyhow!(
                            "{}: server {:?} is not host:port (e.g. mail.example.com:25)",
                            self.at("voicemail.smtp", "server"),
                            m.server
                        )
                    })?;
                if !m.from.contains('@') {
                    return Err(anyhow!(
                        "{}: from {:?} is not an e-mail address",
                        self.at("voicemail.smtp", "from"),
                        m.from
                    ));
                }
                Some(SmtpConfig {
                    host: host.to_owned(),
                    port,
                    from: m.from.clone(),
                    timeout: self.duration(
                        "voicemail.smtp",
                        "timeout_secs",
                        m.timeout_secs,
                        Duration::from_secs(10),
                    )?,
                })
            }
        };
        let mut mailboxes: Vec<MailboxConfig> = Vec::new();
        for (n, b) in v.mailbox.iter().enumerate() {
            let at = |key: &str| self.at_nth("voicemail.mailbox", n, key);
            let mailbox = b.mailbox.clone().unwrap_or_else(|| b.device.clone());
            if !is_token(&b.device) {
                return Err(anyhow!(
                    "{}: device {:?} is not a user name",
                    at("device"),
                    b.device
                ));
            }
            if !is_token(&mailbox) {
                return Err(anyhow!(
                    "{}: mailbox {mailbox:?} must be letters, digits, '-', '_' or '.'",
                    at("mailbox")
                ));
            }
            if b.pin.is_empty() || b.pin.len() > 16 || !b.pin.chars().all(|c| c.is_ascii_digit()) {
                return Err(anyhow!("{}: pin must be 1 to 16 digits", at("pin")));
            }
            if let Some(e) = &b.email {
                if !e.contains('@') {
                    return Err(anyhow!(
                        "{}: email {e:?} is not an e-mail address",
                        at("email")
                    ));
                }
                if smtp.is_none() {
                    return Err(anyhow!(
                        "{}: email needs a [voicemail.smtp] section",
                        at("email")
                    ));
                }
            }
            if mailboxes.iter().any(|m| m.device == b.device) {
                return Err(anyhow!(
                    "{}: device {:?} has a mailbox already",
                    at("device"),
                    b.device
                ));
            }
            if mailboxes.iter().any(|m| m.mailbox == mailbox) {
                return Err(anyhow!(
                    "{}: mailbox {mailbox:?} is defined twice",
                    at("mailbox")
                ));
            }
            let no_answer = match b.no_answer_secs {
                Some(0.0) => None,
                v => Some(self.duration(
                    "voicemail.mailbox",
                    "no_answer_secs",
                    v,
                    Duration::from_secs(20),
                )?),
            };
            mailboxes.push(MailboxConfig {
                mailbox,
                device: b.device.clone(),
                pin: b.pin.clone(),
                email: b.email.clone(),
                busy: b.busy.unwrap_or(true),
                unavailable: b.unavailable.unwrap_or(true),
                no_answer,
            });
        }
        let rtp_ports = match &v.rtp_ports {
            None => (30000, 30999),
            Some(r) => self.port_range(s, "rtp_ports", r)?,
        };
        let dir = self
            .path
            .parent()
            .unwrap_or(Path::new("."))
            .join(v.dir.as_deref().unwrap_or("voicemail"));
        Ok(Some(VoicemailConfig {
            rtp_ip: listen.ip(),
            listen,
            rtp_ports,
            dir,
            database: v.database.clone().unwrap_or_else(|| gateway_db.to_owned()),
            context,
            retrieval_code,
            max_messages,
            limits,
            mailboxes,
            smtp,
            t1,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::super::Loaded;
    use std::path::Path;
    use std::time::Duration;

    const BASE: &str = "[node]\nname = \"a\"\n[gateway]\nudp = [\"127.0.0.1:5060\"]\nrealm = \"r\"\ndatabase = \"sqlite://x.db\"\n";

    fn load(extra: &str) -> anyhow::Result<Option<gateway::voicemail::VoicemailConfig>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("vm.toml");
        std::fs::write(&path, format!("{BASE}{extra}"))?;
        Loaded::read(&path)?.voicemail("sqlite://x.db", Duration::from_millis(500))
    }

    #[test]
    fn defaults_and_a_mailbox() {
        let v = load(
            "[voicemail]\n[voicemail.smtp]\nserver = \"127.0.0.1:2525\"\nfrom = \"vm@x.example\"\n\
             [[voicemail.mailbox]]\ndevice = \"1000\"\npin = \"1234\"\nemail = \"a@x.example\"\nno_answer_secs = 0\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(v.retrieval_code, "*98");
        assert_eq!(v.context, "default");
        assert_eq!(v.database, "sqlite://x.db");
        assert_eq!(v.mailboxes[0].mailbox, "1000");
        assert_eq!(v.mailboxes[0].no_answer, None);
        assert!(v.mailboxes[0].busy && v.mailboxes[0].unavailable);
        let smtp = v.smtp.unwrap();
        assert_eq!((smtp.host.as_str(), smtp.port), ("127.0.0.1", 2525));
        assert!(v.dir.ends_with(Path::new("voicemail")));
        assert!(load("").unwrap().is_none());
    }

    #[test]
    fn errors_name_file_line_and_problem() {
        let cases = [
            ("[voicemail]\nretrieval_code = \"98x\"\n", ":8: retrieval_code"),
            ("[voicemail]\n[[voicemail.mailbox]]\ndevice = \"1000\"\npin = \"12a\"\n", ":10: pin must be"),
            (
                "[voicemail]\n[[voicemail.mailbox]]\ndevice = \"1000\"\npin = \"1\"\nemail = \"a@b\"\n",
                ":11: email needs a [voicemail.smtp]",
            ),
            (
                "[voicemail]\n[[voicemail.mailbox]]\ndevice = \"1\"\npin = \"1\"\n[[voicemail.mailbox]]\ndevice = \"1\"\npin = \"2\"\n",
                ":12: device \"1\" has a mailbox already",
            ),
            ("[voicemail]\n[voicemail.smtp]\nserver = \"nohost\"\nfrom = \"a@b\"\n", ":9: server"),
            ("[voicemail]\nmax_messages = 0\n", ":8: max_messages = 0"),
            ("[voicemail]\nbogus = 1\n", ":8: unknown field"),
        ];
        for (text, want) in cases {
            let e = format!("{:#}", load(text).unwrap_err());
            assert!(e.contains("vm.toml") && e.contains(want), "{text:?}: {e}");
        }
    }
}

//! Starts the voicemail user agent next to a gateway (`[voicemail]`) and prints its events:
//! `VOICEMAIL DEPOSIT <mailbox> <id> <wav> <ms>`, `VOICEMAIL DELETED <mailbox> <id>`,
//! `VOICEMAIL GREETING <mailbox>`, `VOICEMAIL MAILED <mailbox> <id> <to> ok|failed`.

use anyhow::{Context as _, Result};
use gateway::voicemail::{Voicemail, VoicemailConfig, VoicemailEvent};
use statebus::Bus;
use std::sync::Arc;

/// The running user agent and its printer (both stop on drop).
pub struct Running {
    _vm: Voicemail,
    printer: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.printer.abort();
    }
}

fn line(ev: &VoicemailEvent) -> Option<String> {
    Some(match ev {
        VoicemailEvent::Deposited {
            mailbox,
            id,
            path,
            duration,
        } => format!(
            "VOICEMAIL DEPOSIT {mailbox} {id} {} {}",
            path.display(),
            duration.as_millis()
        ),
        VoicemailEvent::Deleted { mailbox, id } => format!("VOICEMAIL DELETED {mailbox} {id}"),
        VoicemailEvent::Greeting { mailbox } => format!("VOICEMAIL GREETING {mailbox}"),
        VoicemailEvent::Mailed {
            mailbox,
            id,
            to,
            ok,
        } => format!(
            "VOICEMAIL MAILED {mailbox} {id} {to} {}",
            if *ok { "ok" } else { "failed" }
        ),
        VoicemailEvent::Mwi { .. } => return None,
    })
}

/// Starts voicemail (if configured) and points the gateway's routes at it.
pub async fn start(
    cfg: Option<VoicemailConfig>,
    gateway: &mut gateway::server::GatewayConfig,
    bus: Arc<dyn Bus>,
) -> Result<Option<Running>> {
    let Some(cfg) = cfg else {
        return Ok(None);
    };
    let vm = Voicemail::start(cfg.clone(), bus)
        .await
        .context("starting voicemail")?;
    gateway.voicemail = Some(cfg.routes(vm.local));
    eprintln!("voicemail listening on {}", vm.local);
    let mut rx = vm.events.subscribe();
    let printer = tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(ev) => {
                    if let Some(l) = line(&ev) {
                        println!("{l}");
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "voicemail events dropped")
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            }
        }
    });
    Ok(Some(Running { _vm: vm, printer }))
}

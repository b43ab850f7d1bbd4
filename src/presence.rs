//! Wiring of the presence component (statebus::presence) into the binary: started next to the
//! bus when the config has a `[presence]` section.

use crate::config::Loaded;
use anyhow::Result;
use statebus::presence::{PresenceConfig, PresenceService};
use statebus::Bus;
use std::sync::Arc;

/// Starts the component (needs the runtime); `None` without `[presence]`.
pub fn start(
    loaded: &Loaded,
    cfg: Option<PresenceConfig>,
    bus: Arc<dyn Bus>,
) -> Result<Option<PresenceService>> {
    let Some(cfg) = cfg else { return Ok(None) };
    let jid = cfg.jid.clone();
    let svc = PresenceService::start(cfg, bus).map_err(|e| loaded.explain_presence(&e))?;
    eprintln!("presence component {jid}");
    Ok(Some(svc))
}

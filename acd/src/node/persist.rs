//! Runtime member state across restarts (Asterisk's `persistentmembers`): after every
//! queue_log line that changes it (PAUSE, UNPAUSE, ADDMEMBER, REMOVEMEMBER, PENALTY: from the
//! admin API, the phone's feature codes or autopause; CONFIGRELOAD) the node writes the engine's
//! [`crate::engine::RuntimeMember`]s to `queue_member_state` under its name, off the call
//! path, one write after the other; on start it reads them back and re-applies them to the
//! engine built from the configuration.

use std::time::Instant;

use tracing::{info, warn};

use super::Node;
use crate::call::{CallControl, Fabric, Media};
use crate::member_state::MemberStateStore;

/// queue_log events after which the member state is written (a reload may set static
/// members' penalties back to the config's).
const CHANGES: [&str; 8] = [
    "PAUSE",
    "PAUSEALL",
    "UNPAUSE",
    "UNPAUSEALL",
    "ADDMEMBER",
    "REMOVEMEMBER",
    "PENALTY",
    "CONFIGRELOAD",
];

/// Reads `node`'s stored member state and re-applies it; rows the configuration no longer
/// allows are logged and skipped. A database error is logged: the node starts from its
/// configuration.
pub(super) async fn restore<M: Media, F: Fabric>(
    store: &MemberStateStore,
    node: &str,
    core: &mut CallControl<M, F>,
    now: Instant,
) {
    let rows = match store.load(node).await {
        Ok(rows) => rows,
        Err(e) => {
            warn!(error = %e, node, "member state not restored");
            return;
        }
    };
    let restored = rows.len();
    for why in core.restore_members(&rows, now) {
        warn!(node, "stored member state skipped: {why}");
    }
    info!(node, rows = restored, "member state restored");
}

impl Node {
    /// A queue_log line: was it a change of member state?
    pub(super) fn member_event(&mut self, event: &str) {
        if CHANGES.contains(&event) {
            self.members_dirty = true;
        }
    }

    /// Writes the member state if it changed, after the previous write.
    pub(super) fn save_members(&mut self) {
        if !std::mem::take(&mut self.members_dirty) {
            return;
        }
        let Some((store, name)) = self.member_store.clone() else {
            return;
        };
        let rows = self.core.engine().runtime_members();
        let previous = self.member_save.take();
        self.member_save = Some(tokio::spawn(async move {
            if let Some(p) = previous {
                let _ = p.await;
            }
            if let Err(e) = store.save(&name, &rows).await {
                warn!(error = %e, "member state not written");
            }
        }));
    }
}

//! Graceful shutdown of an ACD node, driven by the binary (see `src/main.rs`); the call logic
//! is sans-IO in [`crate::call`] (`CallControl::drain`, `finish`, `is_idle`). Here: the
//! handle's commands, the caller count for the binary's drain loop, and the end of the
//! finish: once call control is idle every queue_log row write is awaited, the file flushed,
//! the report sent and the node's task ends.

use tokio::sync::oneshot;
use tracing::info;

use super::{AcdNode, Command, Node};
pub use crate::call::FinishReport;

impl AcdNode {
    /// Starts draining (or changes its Retry-After): new callers get 503 with
    /// `Retry-After: retry_after`.
    pub fn drain(&self, retry_after: u32) {
        let _ = self.commands.try_send(Command::Drain(retry_after));
    }

    /// Callers in the node now (waiting or connected).
    pub fn active_calls(&self) -> usize {
        *self.active.borrow()
    }

    /// Hangs up every caller, writes every queue_log row and stops the node. `None` if it had
    /// stopped already.
    pub async fn finish(&self) -> Option<FinishReport> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Finish(tx)).await.ok()?;
        rx.await.ok()
    }
}

impl Node {
    /// After every step of the node: the caller count for the handle, finished queue_log
    /// writes dropped; once a finish is over, the writes awaited and the report sent. True
    /// when the node must stop.
    pub(super) async fn shutdown_step(&mut self) -> bool {
        let _ = self.active.send(self.core.callers());
        self.writes.retain(|h| !h.is_finished());
        if self.finish_reply.is_none() || !self.core.is_idle() {
            return false;
        }
        let mut report = self.core.finish_report().unwrap_or_default();
        let writes = std::mem::take(&mut self.writes);
        report.rows_written = writes.len();
        for w in writes {
            let _ = w.await;
        }
        if let Some(w) = self.member_save.take() {
            let _ = w.await;
        }
        if let Some(log) = self.log.as_mut() {
            let _ = std::io::Write::flush(log);
        }
        info!(pending = report.rows_written, "shutdown: queue_log written");
        if let Some(done) = self.finish_reply.take() {
            let _ = done.send(report);
        }
        info!("shutdown: ACD node stopped");
        true
    }
}

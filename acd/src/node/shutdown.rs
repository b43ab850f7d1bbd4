//! Graceful shutdown of an ACD node, driven by the binary (see `src/main.rs`):
//!
//! 1. **Drain** ([`AcdNode::drain`]): new callers are refused with `503` and `Retry-After`;
//!    waiting callers stay queued (a draining gateway refuses the offers, as it refuses every
//!    new INVITE, so in `site` mode they wait); connected calls go on.
//! 2. **Finish** ([`AcdNode::finish`]): every caller left is hung up (BYE). A connected one
//!    ends as a caller hang-up does (COMPLETECALLER, the agent gets a BYE too); a waiting one
//!    leaves the queue (ABANDON; ringing offers cancelled). The BYEs are given until they are
//!    answered (at most 64·T1, capped at 5 s), every queue_log row write is awaited, and the
//!    node's task ends. A log line is written at each step.

use super::{AcdNode, Command, Core};
use crate::engine::CompletedBy;
use gateway::sip::dialog::Dialog;
use gateway::sip::message::{self, Method, Request};
use gateway::sip::transaction::{self as tx, State, TransactionKey};
use rsip::headers::UntypedHeader as _;
use std::collections::HashSet;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tracing::{info, warn};

/// Longest wait for the BYEs of the finish.
const BYE_WAIT_CAP: Duration = Duration::from_secs(5);

/// What the finish did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FinishReport {
    /// Callers hung up (connected or waiting).
    pub callers_ended: usize,
    /// BYEs without a final response in time.
    pub byes_unanswered: usize,
    /// queue_log row writes awaited.
    pub rows_written: usize,
}

#[derive(Default)]
pub(super) struct ShutdownState {
    /// Refusing new callers, with this Retry-After.
    draining: Option<u32>,
    /// Pending queue_log row writes.
    pub(super) writes: Vec<tokio::task::JoinHandle<()>>,
    finishing: Option<Finishing>,
}

struct Finishing {
    done: oneshot::Sender<FinishReport>,
    byes: HashSet<TransactionKey>,
    deadline: Instant,
    report: FinishReport,
}

impl AcdNode {
    /// Starts draining (or shortens it): new callers get 503 with `Retry-After: retry_after`.
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

impl Core {
    pub(super) fn start_drain(&mut self, retry_after: u32) {
        if self.shutdown.draining.is_none() {
            info!(
                callers = self.callers.len(),
                "shutdown: draining; new callers are refused with 503"
            );
        }
        self.shutdown.draining = Some(retry_after);
    }

    /// While draining, a new caller gets 503 with Retry-After; true when it was refused.
    pub(super) fn refused_while_draining(&mut self, key: &TransactionKey, req: &Request) -> bool {
        let Some(retry_after) = self.shutdown.draining else {
            return false;
        };
        info!("shutdown: new caller refused (503)");
        let mut r = message::response_for(req, 503, "Service Unavailable");
        r.headers
            .push(rsip::Header::RetryAfter(rsip::headers::RetryAfter::new(
                retry_after.to_string(),
            )));
        self.respond(key, r);
        true
    }

    fn send_bye(
        &mut self,
        dialog: &mut Dialog,
        peer: gateway::server::Peer,
    ) -> Option<TransactionKey> {
        let branch = format!("z9hG4bKacd{:016x}", self.rand());
        let via = format!("SIP/2.0/UDP {};branch={branch};rport", self.local);
        let bye = dialog.request(Method::Bye, &via);
        self.by_dialog
            .remove(&(dialog.call_id.clone(), dialog.local_tag.clone()));
        self.tl
            .send_request(bye, tx::Transport::Unreliable, peer, Instant::now())
            .ok()
    }

    pub(super) fn start_finish(&mut self, done: oneshot::Sender<FinishReport>) {
        self.shutdown.draining.get_or_insert(0);
        let mut ids: Vec<u64> = self.callers.keys().copied().collect();
        ids.sort_unstable();
        info!(
            callers = ids.len(),
            "shutdown: drain over; hanging up the callers left"
        );
        let mut byes = HashSet::new();
        let now = super::engine_now();
        for id in &ids {
            let Some(mut c) = self.callers.remove(id) else {
                continue;
            };
            c.media = None;
            c.leg.close();
            let connected = c.connected;
            match connected {
                Some(offer) => {
                    let _ = self.engine.call_completed(now, &c.id, CompletedBy::Caller);
                    if let Some(mut a) = self.agents.remove(&offer) {
                        a.leg.close();
                        if let Some(mut d) = a.dialog.take() {
                            byes.extend(self.send_bye(&mut d, a.peer.clone()));
                        }
                    }
                }
                None => {
                    // Ringing offers are cancelled by the engine (CancelOffer actions).
                    let _ = self.engine.leave(now, &c.id);
                }
            }
            let peer = c.peer.clone();
            byes.extend(self.send_bye(&mut c.dialog, peer));
        }
        let t1 = self.tl.config().t1;
        self.shutdown.finishing = Some(Finishing {
            done,
            byes,
            deadline: Instant::now() + t1.saturating_mul(64).min(BYE_WAIT_CAP),
            report: FinishReport {
                callers_ended: ids.len(),
                ..FinishReport::default()
            },
        });
    }

    /// After every step of the node: the caller count for the handle; while finishing, whether
    /// the BYEs are done. True when the node must stop.
    pub(super) async fn shutdown_step(&mut self) -> bool {
        let _ = self.active.send(self.callers.len());
        self.shutdown.writes.retain(|h| !h.is_finished());
        let Some(f) = self.shutdown.finishing.as_mut() else {
            return false;
        };
        let tl = &self.tl;
        f.byes
            .retain(|k| matches!(tl.state(k), Some(State::Trying | State::Proceeding)));
        if !f.byes.is_empty() && Instant::now() < f.deadline {
            return false;
        }
        let Some(mut f) = self.shutdown.finishing.take() else {
            return false;
        };
        f.report.byes_unanswered = f.byes.len();
        if f.byes.is_empty() {
            info!("shutdown: every BYE answered");
        } else {
            warn!(
                unanswered = f.byes.len(),
                "shutdown: BYEs not answered in time"
            );
        }
        let writes = std::mem::take(&mut self.shutdown.writes);
        f.report.rows_written = writes.len();
        for w in writes {
            let _ = w.await;
        }
        if let Some(log) = self.log.as_mut() {
            let _ = std::io::Write::flush(log);
        }
        info!(
            pending = f.report.rows_written,
            "shutdown: queue_log written"
        );
        let _ = f.done.send(f.report);
        true
    }
}

//! Graceful shutdown of the gateway, in two steps the binary drives (see `src/main.rs`):
//!
//! 1. **Drain** ([`Gateway::drain`]): every new INVITE is refused with `503 Service
//!    Unavailable` and `Retry-After`; calls in progress go on; REGISTER, OPTIONS and in-dialog
//!    requests are served as usual. A second call with an earlier instant shortens it.
//! 2. **Finish** ([`Gateway::finish`]): every call left is ended (BYE to each confirmed side;
//!    503 to a caller still waiting for an answer and CANCEL to its callee), the BYEs are given
//!    until they are answered (at most 64·T1, capped at 5 s), then every CDR write is awaited,
//!    the registrations are flushed to the database, each device state this gateway announced
//!    is withdrawn (UNAVAILABLE: its phones cannot be reached through a stopped gateway; a
//!    restart restores the registrations and republishes), and the core task ends.
//!
//! A log line is written at each step.

use super::{Core, Gateway};
use crate::sip::message::{self, Method, Request};
use crate::sip::transaction::{State, TransactionKey};
use rsip::headers::UntypedHeader as _;
use statebus::DeviceState;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tracing::{info, warn};

/// Longest wait for the BYEs of the calls ended at the finish.
const BYE_WAIT_CAP: Duration = Duration::from_secs(5);

/// A request to the core from the [`Gateway`] handle.
pub(super) enum Control {
    /// Refuse new calls (503) from now on; the drain ends at `until` at the latest.
    Drain { until: Instant, retry_after: u32 },
    /// End every call, write every record, stop.
    Finish(oneshot::Sender<FinishReport>),
    /// Call a supervisor's phone to spy on a call (`server/spy_api.rs`).
    Spy(
        super::SpyOrder,
        oneshot::Sender<Result<super::SpyCalling, super::SpyRefused>>,
    ),
}

/// What the finish did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FinishReport {
    /// Calls still in progress at the end of the drain, ended by the gateway.
    pub calls_ended: usize,
    /// BYEs that got no final response in time.
    pub byes_unanswered: usize,
    /// CDR writes awaited.
    pub cdrs_written: usize,
}

#[derive(Default)]
pub(super) struct ShutdownState {
    /// Refusing new calls, with this Retry-After.
    draining: Option<u32>,
    /// Pending CDR writes (finished ones pruned when the list has doubled, see `prune_at`).
    pub(super) writes: Vec<tokio::task::JoinHandle<()>>,
    /// `writes` is pruned once it reaches this length: twice what was left by the last pruning
    /// (at least 64), so the pruning costs O(1) per core step amortised. Pruning at every step
    /// walked every pending write each time: 7 % of the gateway's CPU at 750 calls/s, with the
    /// CDR writes queued behind SQLite (perf, `call_bench`).
    prune_at: usize,
    finishing: Option<Finishing>,
}

struct Finishing {
    done: oneshot::Sender<FinishReport>,
    byes: HashSet<TransactionKey>,
    deadline: Instant,
    report: FinishReport,
}

impl Gateway {
    /// Starts draining (or shortens it): new calls get 503 with `Retry-After: retry_after`.
    pub fn drain(&self, until: Instant, retry_after: u32) {
        let _ = self.control.send(Control::Drain { until, retry_after });
    }

    /// Calls in progress now.
    pub fn active_calls(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Ends every call, writes every CDR and the registrations, withdraws device states and
    /// stops the core. Returns once all that is done (`None` if the core had stopped already).
    pub async fn finish(&self) -> Option<FinishReport> {
        let (tx, rx) = oneshot::channel();
        self.control.send(Control::Finish(tx)).ok()?;
        let report = rx.await.ok();
        self.reloader.abort();
        report
    }
}

impl Core {
    pub(super) fn on_control(&mut self, c: Control) {
        match c {
            Control::Spy(order, reply) => {
                let _ = reply.send(self.spy_api(order, Instant::now()));
            }
            Control::Drain { until, retry_after } => {
                let left = until.saturating_duration_since(Instant::now());
                if self.shutdown.draining.is_none() {
                    info!(
                        calls = self.b2bua.len(),
                        drain_secs = left.as_secs_f64(),
                        "shutdown: draining; new calls are refused with 503"
                    );
                } else {
                    info!(
                        calls = self.b2bua.len(),
                        drain_secs = left.as_secs_f64(),
                        "shutdown: drain shortened"
                    );
                }
                self.shutdown.draining = Some(retry_after);
            }
            Control::Finish(done) => {
                let now = Instant::now();
                let retry_after = self.shutdown.draining.unwrap_or(0);
                self.shutdown.draining.get_or_insert(retry_after);
                let n = self.b2bua.len();
                info!(calls = n, "shutdown: drain over; ending the calls left");
                self.b2bua
                    .end_all("shutdown", retry_after, &mut self.media, now);
                let mut byes = HashSet::new();
                while let Some(a) = self.b2bua.poll_action() {
                    if let crate::b2bua::Action::Request { key, request, .. } = &a {
                        if request.method == Method::Bye {
                            byes.insert(key.clone());
                        }
                    }
                    self.on_b2bua_action(a);
                }
                self.shutdown.finishing = Some(Finishing {
                    done,
                    byes,
                    deadline: now + self.cfg.t1.saturating_mul(64).min(BYE_WAIT_CAP),
                    report: FinishReport {
                        calls_ended: n,
                        ..FinishReport::default()
                    },
                });
            }
        }
    }

    /// While finishing: when the wait for the BYEs ends ([`Core::shutdown_step`] then stops).
    pub(super) fn shutdown_deadline(&self) -> Option<Instant> {
        self.shutdown.finishing.as_ref().map(|f| f.deadline)
    }

    /// While draining, a new INVITE gets 503 with Retry-After; true when it was refused.
    pub(super) fn refused_while_draining(
        &mut self,
        key: &TransactionKey,
        req: &Request,
        now: Instant,
    ) -> bool {
        let Some(retry_after) = self.shutdown.draining else {
            return false;
        };
        info!(caller = %crate::b2bua::caller_user(req), "shutdown: new call refused (503)");
        let mut r = message::response_for(req, 503, "Service Unavailable");
        r.headers
            .push(rsip::Header::RetryAfter(rsip::headers::RetryAfter::new(
                retry_after.to_string(),
            )));
        let _ = self.tl.send_response(key, r, now);
        true
    }

    /// After every step of the core: the call count for the handle; while finishing, whether
    /// the BYEs are done. True when the core must stop (the finish is complete).
    pub(super) async fn shutdown_step(&mut self) -> bool {
        self.active.store(self.b2bua.len(), Ordering::Relaxed);
        if self.shutdown.writes.len() >= self.shutdown.prune_at {
            self.shutdown.writes.retain(|h| !h.is_finished());
            self.shutdown.prune_at = (2 * self.shutdown.writes.len()).max(64);
        }
        let Some(f) = self.shutdown.finishing.as_mut() else {
            return false;
        };
        let tl = &self.tl;
        f.byes.retain(|k| {
            matches!(
                tl.state(k),
                Some(State::Trying | State::Proceeding | State::Calling)
            )
        });
        let now = Instant::now();
        if !f.byes.is_empty() && now < f.deadline {
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
        // Calls may have ended by themselves meanwhile (their CallEnded actions are drained).
        self.shutdown.writes.retain(|h| !h.is_finished());
        let writes = std::mem::take(&mut self.shutdown.writes);
        f.report.cdrs_written = writes.len();
        for w in writes {
            let _ = w.await;
        }
        info!(pending = f.report.cdrs_written, "shutdown: CDRs written");
        // With the refreshes written behind: none waits any more.
        self.flush_registrations().await;
        // REGISTERs whose 200 OK waited for that commit get it now.
        while let Ok(seq) = self.durable.committed.try_recv() {
            self.committed(seq);
        }
        while let Some(t) = self.tl.poll_transmit() {
            self.transmit(t).await;
        }
        if let Some(shards) = self.shards.as_mut() {
            shards.close().await;
        }
        info!("shutdown: registrations stored");
        let keys = self.published.available();
        for k in &keys {
            self.published.set(k, DeviceState::Unavailable);
            self.bus.publish_device_state(k, DeviceState::Unavailable);
        }
        info!(devices = keys.len(), "shutdown: device states withdrawn");
        let _ = f.done.send(f.report);
        true
    }
}

//! Graceful shutdown of call control, sans-IO (the node wires it to the binary's signals):
//!
//! 1. **Drain** ([`CallControl::drain`]): new callers get `503` with `Retry-After`; waiting
//!    callers stay queued (a draining gateway refuses the offers, as it refuses every new
//!    INVITE, so in `site` mode they wait); connected calls go on.
//! 2. **Finish** ([`CallControl::finish`]): every caller left is hung up (BYE). A connected
//!    one ends as a caller hang-up does (COMPLETECALLER, the agent gets a BYE too); a waiting
//!    one leaves the queue (ABANDON; ringing offers cancelled). The BYEs are given until they
//!    are answered (a final response, a timeout or a transport error), at most 64·T1 capped at
//!    [`BYE_WAIT_CAP`]; then [`CallControl::is_idle`] says the node may stop.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use rsip::headers::UntypedHeader as _;
use sip_core::message::{self, Method, Request};
use sip_core::transaction::{self as tx, TransactionKey};
use sipnet::Peer;
use tracing::{info, warn};

use super::{CallControl, Fabric, Media, Output};
use sip_core::ua::ToSend;

/// Longest wait for the BYEs of the finish.
pub const BYE_WAIT_CAP: Duration = Duration::from_secs(5);

/// What the finish did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FinishReport {
    /// Callers hung up (connected or waiting).
    pub callers_ended: usize,
    /// BYEs without a final response in time.
    pub byes_unanswered: usize,
    /// queue_log row writes awaited (filled in by the node).
    pub rows_written: usize,
}

#[derive(Default)]
pub(super) struct Shutdown {
    /// Refusing new callers, with this Retry-After (seconds).
    draining: Option<u32>,
    finishing: Option<Finishing>,
}

struct Finishing {
    byes: HashSet<TransactionKey>,
    deadline: Instant,
    report: FinishReport,
    /// The BYEs are done (answered or given up).
    done: bool,
}

impl<M: Media, F: Fabric> CallControl<M, F> {
    /// Starts draining (or changes its Retry-After): new callers get 503 with
    /// `Retry-After: retry_after`.
    pub fn drain(&mut self, retry_after: u32) {
        if self.shutdown.draining.is_none() {
            info!(
                callers = self.callers.len(),
                "shutdown: draining; new callers are refused with 503"
            );
        }
        self.shutdown.draining = Some(retry_after);
    }

    /// Draining or finishing: new callers are refused.
    pub fn is_draining(&self) -> bool {
        self.shutdown.draining.is_some()
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

    /// Hangs up every caller left (BYE; COMPLETECALLER for a connected one, whose agent gets a
    /// BYE too; ABANDON for a waiting one) and keeps refusing new ones. The BYEs are watched
    /// until answered or until 64·T1 (at most [`BYE_WAIT_CAP`]); see [`CallControl::is_idle`].
    /// A second call does nothing more.
    pub fn finish(&mut self, now: Instant) {
        self.shutdown.draining.get_or_insert(0);
        if self.shutdown.finishing.is_some() {
            return;
        }
        let mut ids: Vec<u64> = self.callers.keys().copied().collect();
        ids.sort_unstable();
        info!(
            callers = ids.len(),
            "shutdown: drain over; hanging up the callers left"
        );
        let first = self.out.len();
        for &id in &ids {
            self.bye_caller(id);
            // As a caller's BYE: COMPLETECALLER and a BYE to the agent, or ABANDON.
            self.caller_gone(id, false, now);
        }
        self.pump(now);
        let byes: HashSet<TransactionKey> = (self.out.iter().skip(first))
            .filter_map(|o| match o {
                Output::Sip(ToSend::Request { key, request, .. })
                    if request.method == Method::Bye =>
                {
                    Some(key.clone())
                }
                _ => None,
            })
            .collect();
        let wait = self.cfg.timers.t1_x64().min(BYE_WAIT_CAP);
        let done = byes.is_empty();
        self.shutdown.finishing = Some(Finishing {
            byes,
            deadline: now + wait,
            report: FinishReport {
                callers_ended: ids.len(),
                ..FinishReport::default()
            },
            done,
        });
        if done {
            info!("shutdown: no BYE to wait for");
        }
    }

    /// Finishing and every BYE of the finish answered or given up: the node may stop.
    pub fn is_idle(&self) -> bool {
        self.shutdown.finishing.as_ref().is_some_and(|f| f.done)
    }

    /// What the finish did, once [`CallControl::is_idle`].
    pub fn finish_report(&self) -> Option<FinishReport> {
        let f = self.shutdown.finishing.as_ref().filter(|f| f.done)?;
        Some(f.report.clone())
    }

    /// When the wait for the finish's BYEs ends.
    pub(super) fn shutdown_timeout(&self) -> Option<Instant> {
        let f = self.shutdown.finishing.as_ref()?;
        (!f.done).then_some(f.deadline)
    }

    /// The wait for the BYEs is over at `now`: those left count as unanswered.
    pub(super) fn shutdown_timer(&mut self, now: Instant) {
        let Some(f) = self.shutdown.finishing.as_mut() else {
            return;
        };
        if f.done || now < f.deadline {
            return;
        }
        f.report.byes_unanswered = f.byes.len();
        f.byes.clear();
        f.done = true;
        warn!(
            unanswered = f.report.byes_unanswered,
            "shutdown: BYEs not answered in time"
        );
    }

    /// A transaction event: a final response, timeout or transport error of a finish BYE.
    pub(super) fn shutdown_tx_event(&mut self, ev: &tx::Event<Peer>) {
        let Some(f) = self.shutdown.finishing.as_mut() else {
            return;
        };
        let key = match ev {
            tx::Event::Response { key, response } if response.status_code.code() >= 200 => key,
            tx::Event::Timeout { key } | tx::Event::TransportError { key } => key,
            _ => return,
        };
        if !f.byes.remove(key) || f.done {
            return;
        }
        if !matches!(ev, tx::Event::Response { .. }) {
            f.report.byes_unanswered += 1;
        }
        if f.byes.is_empty() {
            f.done = true;
            info!(
                unanswered = f.report.byes_unanswered,
                "shutdown: every BYE ended"
            );
        }
    }
}

/// The `Retry-After` of a response, in seconds (tests).
#[cfg(test)]
pub(super) fn retry_after(r: &rsip::Response) -> Option<u32> {
    r.headers.iter().find_map(|h| match h {
        rsip::Header::RetryAfter(v) => v.value().trim().parse().ok(),
        _ => None,
    })
}

//! Fabric trust on the ACD (issue 15, `sip_core::trust`): who may hand the node a caller, and
//! a moved caller's place. A caller's INVITE is taken from a configured gateway (by address)
//! or from any fabric member that signed it with the fabric secret; only a signed INVITE's
//! `X-CF-Join` (original join time and priority, covered by the signature) is honoured, so a
//! caller moved off a dead node keeps their place. Offers the node sends are signed, so a
//! gateway at another site takes them without a trunk entry.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use sip_core::message::Request;
use sip_core::trust::{self, FabricKey, JoinPlace, ReplayCache};
use sipnet::Peer;
use tracing::{info, warn};

use super::{CallControl, Fabric, Media};
use crate::engine::Time;

/// Who handed us a caller.
pub(super) enum Admission {
    /// A configured gateway (by address), unsigned.
    Gateway,
    /// A fabric member (signed); the caller's original place, if it was moved.
    Member(Option<JoinPlace>),
    /// Refused with this status (logged).
    Refused(u16),
}

/// The node's fabric key and the signatures it accepted (replay window).
#[derive(Default)]
pub(super) struct Trust {
    key: Option<Arc<FabricKey>>,
    replay: ReplayCache,
}

fn unix(t: SystemTime) -> Duration {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default()
}

impl<M: Media, F: Fabric> CallControl<M, F> {
    /// Sets the fabric secret (`[fabric]`): signed INVITEs are trusted, offers are signed.
    pub fn set_fabric_key(&mut self, key: Option<Arc<FabricKey>>) {
        self.trust.key = key;
    }

    pub(super) fn admit(&mut self, req: &Request, source: &Peer) -> Admission {
        if trust::is_signed(req) {
            if let Some(key) = self.trust.key.clone() {
                let now = unix((self.wall)()).as_secs();
                return match key.verify(req, now, &mut self.trust.replay) {
                    Ok(by) => {
                        let place = trust::join_place(req);
                        info!(source = %source.addr, %by, moved = place.is_some(), "caller from a fabric member (signed)");
                        Admission::Member(place)
                    }
                    Err(e) => {
                        warn!(source = %source.addr, reason = e.token(), error = %e,
                            "FABRIC REFUSED a caller's INVITE signed for the fabric (same [fabric] secret on every member? clocks in sync?)");
                        Admission::Refused(403)
                    }
                };
            }
            warn!(source = %source.addr, "a signed INVITE, but this node has no [fabric] secret: treated as unsigned");
        }
        if self.cfg.gateways.contains(&source.addr) {
            return Admission::Gateway;
        }
        warn!(source = %source.addr,
            "INVITE from an unknown peer refused: neither a configured [[acd.gateway]] nor signed for the fabric (give every member the same [fabric] secret)");
        Admission::Refused(403)
    }

    /// Engine time of a wall-clock join (unix ms) `place`, at `now`: as long ago as it was.
    pub(super) fn joined_at(&self, place: JoinPlace, now: Instant) -> Time {
        let wall_ms = u64::try_from(unix((self.wall)()).as_millis()).unwrap_or(u64::MAX);
        let ago = Duration::from_millis(wall_ms.saturating_sub(place.joined_ms));
        self.t(now).saturating_sub(ago)
    }

    /// queue_log: the caller `caller` of `queue` arrived moved from a dead node, with the
    /// original join time (unix seconds) and priority: `MOVED|<joined>|<priority>`.
    pub(super) fn log_moved(&mut self, caller: &str, queue: &str, place: JoinPlace) {
        self.log(crate::engine::QueueLogEvent {
            time: Duration::ZERO,
            callid: caller.to_owned(),
            queue: queue.to_owned(),
            agent: "NONE".into(),
            event: "MOVED",
            data: vec![
                (place.joined_ms / 1000).to_string(),
                place.priority.to_string(),
            ],
        });
    }

    /// Signs an INVITE for a fabric member, when the node has a fabric secret.
    pub(super) fn sign(&self, mut req: Request) -> Request {
        if let Some(key) = &self.trust.key {
            key.sign(&mut req, unix((self.wall)()).as_secs());
        }
        req
    }
}

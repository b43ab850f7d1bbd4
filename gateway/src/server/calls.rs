//! What the B2BUA asks of the process ([`b2bua::Action`]): requests and responses into the
//! transaction layer, device-state changes to presence, failed trunk targets to their DNS
//! state, and the end of a call: its CDR (`cdr.rs`) and its [`GatewayEvent::CallEnded`].

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use tracing::{debug, info, warn};

use super::{Core, GatewayEvent};
use crate::b2bua;

/// Callee-side INVITEs ended by time (issue 16), as the handle reads them: branches Timer C
/// ended and calls the ring limit ended (`b2bua/ring.rs`), published by the loop after the
/// B2BUA's timers ran (the only place either happens).
#[derive(Debug, Default)]
pub(super) struct RingStats {
    timer_c: AtomicU64,
    ring_timeouts: AtomicU64,
}

impl RingStats {
    pub(super) fn publish(&self, b2bua: &b2bua::B2bua) {
        self.timer_c.store(b2bua.timer_c_fired(), Relaxed);
        self.ring_timeouts.store(b2bua.ring_timeouts(), Relaxed);
    }

    pub(super) fn read(&self) -> (u64, u64) {
        (self.timer_c.load(Relaxed), self.ring_timeouts.load(Relaxed))
    }
}

impl Core {
    pub(super) fn on_b2bua_action(&mut self, a: b2bua::Action) {
        let now = Instant::now();
        match a {
            b2bua::Action::Request { key, request, dest } => {
                let k = dest.tx_transport();
                match self.tl.send_request(request, k, dest, now) {
                    Ok(got) if got == key => {}
                    Ok(got) => warn!(%got, %key, "transaction key mismatch"),
                    Err(e) => {
                        warn!(error = %e, "cannot send a call request");
                        self.b2bua.on_timeout(&key, &mut self.media, now);
                        // No transaction exists to end later: forget its timers now.
                        self.b2bua.on_terminated(&key);
                    }
                }
            }
            b2bua::Action::Respond { key, response } => {
                if let Err(e) = self.tl.send_response(&key, response, now) {
                    debug!(error = %e, "call response not sent");
                }
            }
            b2bua::Action::Stateless { message, dest } => {
                let k = dest.tx_transport();
                self.tl.send_stateless(message, dest, k);
            }
            b2bua::Action::Cancel { key, dest } => match self.tl.build_cancel(&key) {
                Ok(cancel) => {
                    let k = dest.tx_transport();
                    if let Err(e) = self.tl.send_request(cancel, k, dest, now) {
                        debug!(error = %e, "CANCEL not sent");
                    }
                }
                Err(e) => debug!(error = %e, "nothing to cancel"),
            },
            b2bua::Action::Abandon { key } => {
                self.tl.abandon(&key);
            }
            b2bua::Action::Terminate { key } => {
                self.tl.terminate(&key);
            }
            b2bua::Action::DeviceChanged(key) => self.refresh_device(&key),
            b2bua::Action::TargetFailed(addr) => {
                let mut map = self.dns.lock().unwrap_or_else(|p| p.into_inner());
                for (name, t) in map.iter_mut().filter(|(_, t)| t.contains(&addr)) {
                    warn!(trunk = %name, %addr, "trunk target failed an INVITE; tried last for now");
                    t.mark_down(addr, now);
                }
            }
            b2bua::Action::CallEnded {
                call,
                reason,
                record,
            } => {
                self.spy_call_ended(call);
                let legs = self.media.closed.remove(&call);
                let moh = self.media.moh_closed.remove(&call).unwrap_or_default();
                info!(call = call.0, %reason, "call ended");
                // The agent who answered a caller through an ACD: its call is linked to the
                // caller's (the offer's linkedid) and may end before or after it.
                let agent = if record.linkedid == record.uniqueid {
                    self.linked_agents
                        .remove(&record.uniqueid)
                        .or_else(|| self.b2bua.answered_device_linked_to(&record.uniqueid))
                } else {
                    if let (Some(_), Some(d)) = (record.billsec, &record.callee_device) {
                        self.linked_agents
                            .insert(record.linkedid.clone(), d.clone());
                    }
                    None
                };
                let cdr = self.cdr(&call.0.to_string(), &reason, &record, legs.as_ref(), agent);
                self.write_cdr(cdr);
                let _ = self.events.send(GatewayEvent::CallEnded {
                    call: call.0,
                    reason,
                    a: legs.as_ref().map(|l| l.0.clone()),
                    b: legs.map(|l| l.1),
                    moh,
                });
            }
            b2bua::Action::CallRefused { code, record } => {
                self.refused += 1;
                info!(%code, caller = %record.caller, dialled = %record.dialled, "call refused");
                let cdr = self.cdr(
                    &format!("r{}", self.refused),
                    &code.to_string(),
                    &record,
                    None,
                    None,
                );
                self.write_cdr(cdr);
            }
        }
    }
}

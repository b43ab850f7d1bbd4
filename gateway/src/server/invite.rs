//! A new INVITE: who calls (a fabric member by signature, a trunk by source address, else a
//! device by digest), where it goes (supervisor feature codes, the dial plan, a live ACD node
//! for a queue number, the offer arbiter, voicemail), then handed to the B2BUA with its
//! parties for the relay.

use std::time::{Instant, SystemTime};

use tracing::debug;

use super::{unix_secs, user_of, Core, Parties};
use crate::b2bua::{self, Caller};
use crate::sip::message::Request;
use crate::sip::transaction::TransactionKey;
use crate::transport::Peer;

impl Core {
    /// A new INVITE: who calls (a trunk by source address, or a device by digest), and where
    /// to (dial plan: extension → device, device name, trunk prefix).
    pub(super) fn on_invite(
        &mut self,
        key: TransactionKey,
        req: Request,
        source: Peer,
        now: Instant,
    ) {
        let from_member = match self.fabric_check(&key, &req, &source, now) {
            Some(false) => return,
            Some(true) => true,
            None => false,
        };
        let caller = if from_member {
            Caller::default()
        } else if let Some(t) = self.calling_trunk(&source) {
            debug!(trunk = %t.name, "call from a trunk");
            Caller::default()
        } else {
            let auth = self.registrar.authorize(&req, SystemTime::now());
            self.auth_failures(&req, &source);
            match auth {
                Ok(user) => {
                    if let Err(r) = self.check_identity(&req, &user, &source) {
                        let _ = self.tl.send_response(&key, r, now);
                        return;
                    }
                    let key = self.device_key(&user.aor);
                    let limit = self
                        .devices
                        .get(user_of(&user.aor))
                        .map_or(0, |d| usize::try_from(d.call_limit.max(0)).unwrap_or(0));
                    Caller {
                        device: Some(key),
                        limit,
                    }
                }
                Err(challenge) => {
                    self.log_unsigned_offer(&req, &source);
                    self.send_challenge(&key, challenge, &source);
                    return;
                }
            }
        };
        if self.refused_while_draining(&key, &req, now) {
            return;
        }
        if self.spy_invite(&key, &req, &caller, &source, now) {
            return;
        }
        let mut target = self.route(&req, &source);
        // A queue number a live ACD node advertises goes there (signed), ahead of a static
        // trunk prefix; a device of that name still wins.
        let mut fabric_to = None;
        if !matches!(target, b2bua::Target::Device { .. }) {
            if let Some(t) = self.fabric_route(&req, &source) {
                if let b2bua::Target::Peer { dest, .. } = &t {
                    fabric_to = Some((b2bua::dialled_user(&req), dest.addr));
                }
                target = t;
                self.b2bua.sign_next = self.cfg.fabric.clone().map(|k| (k, unix_secs()));
            }
        }
        let Some(queue) = self.arbitrate_offer(&key, &req, &mut target, now) else {
            return;
        };
        let divert = self.voicemail_route(&caller, &req, &mut target);
        let invite_key = key.clone();
        self.media.incoming_queue = queue;
        self.media.incoming = Some(Parties {
            caller: b2bua::caller_user(&req),
            dialled: b2bua::dialled_user(&req),
            caller_device: caller.device.clone(),
            callee_device: match &target {
                b2bua::Target::Device { device, .. } => Some(device.clone()),
                _ => None,
            },
        });
        self.b2bua.on_invite(
            key,
            req,
            source,
            b2bua::Routed { caller, target },
            &mut self.media,
            now,
        );
        if let Some(d) = divert {
            self.b2bua.set_divert(&invite_key, d, now);
        }
        self.media.incoming = None;
        self.media.incoming_queue = None;
        self.b2bua.sign_next = None;
        if let Some((number, node)) = fabric_to {
            self.track_fabric_call(number, node);
        }
    }
}

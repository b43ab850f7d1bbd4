//! The gateway's voicemail hooks (issue 14): the retrieval feature code to the caller's own
//! mailbox, a device that is unavailable or at its call limit straight to its mailbox, and
//! the busy / no-answer diversion armed on the B2BUA for the rest ([`b2bua::Divert`]). Never
//! for an ACD's offer (`X-CF-Offer`): an agent's phone that does not answer goes back to the
//! queue, not to voicemail.

use super::*;

impl Core {
    /// The device user a Request-URI user names (dial plan, user name, extension).
    fn device_user(&self, dialled: &str) -> Option<String> {
        self.device_for(dialled).map(|d| d.username)
    }

    /// Rewrites `target` for voicemail where it applies; the diversion to arm once the call
    /// exists.
    pub(super) fn voicemail_route(
        &self,
        caller: &b2bua::Caller,
        req: &Request,
        target: &mut b2bua::Target,
    ) -> Option<b2bua::Divert> {
        let vm = self.cfg.voicemail.as_ref()?;
        let is_offer = req.headers.iter().any(|h| {
            matches!(h, rsip::Header::Other(n, _) if n.trim().eq_ignore_ascii_case(crate::offer::HEADER))
        });
        if is_offer {
            return None;
        }
        let dest = self.udp_peer(vm.address, vm.address);
        let to = |user: String| b2bua::Target::Peer {
            uri: format!("sip:{user}@{}", vm.address),
            dest: dest.clone(),
            credentials: None,
            fallbacks: Vec::new(),
        };
        let dialled = b2bua::dialled_user(req);
        if dialled == vm.retrieval_code {
            let own = caller
                .device
                .as_deref()
                .map(|d| d.strip_prefix(self.cfg.device_prefix.as_str()).unwrap_or(d))
                .and_then(|u| vm.devices.get(u));
            *target = match own {
                Some(b) => to(format!("vmmain-{}", b.mailbox)),
                None => b2bua::Target::Reject(404),
            };
            return None;
        }
        let user = self.device_user(&dialled)?;
        let mbox = vm.devices.get(&user)?;
        let to_box = to(format!("vm-{}", mbox.mailbox));
        match target {
            b2bua::Target::Reject(480) if mbox.unavailable => {
                info!(device = %user, mailbox = %mbox.mailbox, "unavailable: to voicemail");
                *target = to_box;
                None
            }
            b2bua::Target::Device { device, limit, .. } => {
                if mbox.busy && *limit > 0 && self.b2bua.calls_of(device) >= *limit {
                    info!(device = %user, mailbox = %mbox.mailbox, "at its call limit: to voicemail");
                    *target = to_box;
                    return None;
                }
                if !mbox.busy && mbox.no_answer.is_none() {
                    return None;
                }
                let b2bua::Target::Peer { uri, dest, .. } = to_box else {
                    return None;
                };
                Some(b2bua::Divert {
                    uri,
                    dest,
                    on_busy: mbox.busy,
                    no_answer: mbox.no_answer,
                })
            }
            _ => None,
        }
    }
}

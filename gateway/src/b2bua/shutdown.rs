//! Ending every call at once (graceful shutdown of the gateway).

use std::time::Instant;

use rsip::headers::UntypedHeader as _;
use rsip::Header;

use super::{B2bua, MediaControl, Phase};
use crate::sip::message::response_with_tag;

impl B2bua {
    /// Ends every call (the drain time of a shutdown is over): BYE to each confirmed side; a
    /// caller still waiting for an answer gets `503` with `Retry-After: retry_after` and its
    /// callee a CANCEL (once it sent a provisional response, a 100 included). Each call ends with `reason`
    /// ([`Action::CallEnded`], so its CDR is written). Returns how many calls were ended.
    pub fn end_all(
        &mut self,
        reason: &str,
        retry_after: u32,
        media: &mut dyn MediaControl,
        now: Instant,
    ) -> usize {
        let mut ids: Vec<_> = self.calls.keys().copied().collect();
        ids.sort();
        for id in &ids {
            let Some(call) = self.calls.get(id) else {
                continue;
            };
            if call.phase == Phase::Calling {
                let mut r = response_with_tag(&call.a_invite, 503, "", &call.a_tag);
                r.headers
                    .push(Header::RetryAfter(rsip::headers::RetryAfter::new(
                        retry_after.to_string(),
                    )));
                let a_key = call.a_invite_key.clone();
                let cancel = (!call.cancel_pending && call.b_responded)
                    .then(|| (call.b_invite_key.clone(), call.b.peer.clone()));
                self.respond(&a_key, r);
                if let Some((key, dest)) = cancel {
                    self.send_cancel(&key, dest, *id, now);
                }
                self.end(*id, reason, media, now);
            } else {
                self.hangup(*id, reason, media, now);
            }
        }
        ids.len()
    }
}

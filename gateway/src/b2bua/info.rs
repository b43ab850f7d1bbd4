//! SIP INFO across the B2BUA (issue 14: DTMF by `application/dtmf-relay` / `application/dtmf`,
//! the fallback for phones without RFC 4733): an INFO from one side is answered 200 at once and
//! sent on as a new INFO in the other side's confirmed dialog, with the same body and
//! Content-Type (bodies over [`MAX_INFO_BODY`] are not relayed). Its response is not awaited
//! (the client transaction is not mapped to the call).

use super::*;

/// Largest INFO body relayed.
pub const MAX_INFO_BODY: usize = 1024;

impl B2bua {
    /// Relays INFO `req`, received on `side` of call `id`, to the other side.
    pub(super) fn relay_info(&mut self, id: CallId, side: Side, req: &Request) {
        if req.body.len() > MAX_INFO_BODY {
            return;
        }
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let other = side.other();
        let peer = call.leg(other).peer.clone();
        let (via, branch) = via_for(&mut self.rng, &peer);
        let Some(d) = call.leg_mut(other).dialog.as_mut() else {
            return;
        };
        if d.state != DialogState::Confirmed {
            return;
        }
        let mut info = d.request(Method::Info, &via);
        if !req.body.is_empty() {
            let ct = dialog::content_type(&req.headers)
                .unwrap_or_else(|| "application/octet-stream".into());
            info = dialog::with_body(info, req.body.clone(), &ct);
        }
        self.actions.push_back(Action::Request {
            key: TransactionKey::client(&branch, Method::Info),
            request: info,
            dest: peer,
        });
    }
}

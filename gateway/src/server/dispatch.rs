//! What the transaction layer delivers, to whom: a new request screened
//! ([`crate::transport::screen`]) and then to message waiting (SUBSCRIBE), a supervisor's call
//! or the B2BUA (in dialog), the INVITE path (`invite.rs`) or the registrar; a final response
//! or a timeout to the MWI notifier, qualify, outbound registration or the B2BUA.

use std::time::{Instant, SystemTime};

use tracing::debug;

use super::Core;
use crate::b2bua;
use crate::registrar::Change;
use crate::sip::message::{self, Method, Request};
use crate::sip::transaction::{self as tx, TransactionKey};
use crate::transport::{Peer, Screened};

impl Core {
    pub(super) fn on_tx_event(&mut self, ev: tx::Event<Peer>) {
        let now = Instant::now();
        match ev {
            tx::Event::Request {
                key,
                request,
                source,
                ..
            } => match crate::transport::screen(&request, b2bua::EXTENSIONS) {
                Screened::Reject(r) => {
                    let _ = self.tl.send_response(&key, r, now);
                }
                Screened::New => self.on_request(key, request, source, false, now),
                Screened::InDialog => self.on_request(key, request, source, true, now),
            },
            tx::Event::Cancel {
                key,
                invite,
                request,
                ..
            } => {
                self.b2bua
                    .on_cancel(&key, &request, &invite, &mut self.media, now);
            }
            tx::Event::Response { key, response } => {
                if response.status_code.code() >= 200 {
                    if self.mwi_response(&key, Some(response.status_code.code())) {
                        return;
                    }
                    if let Some((aor, contact)) = self.qualify.answered(&key) {
                        self.qualified(&aor, &contact, true);
                        return;
                    }
                    if let Some(i) = self.outbound.take(&key) {
                        self.register_outbound(Some((i, Some(response))));
                        return;
                    }
                }
                if self.spy_api_response(&key, &response, now) {
                    return;
                }
                self.b2bua.on_response(&key, response, &mut self.media, now);
            }
            tx::Event::StrayResponse { response, .. } => {
                // A 2xx retransmission after the INVITE transaction ended: the dialog re-ACKs.
                let _ = response;
            }
            tx::Event::Timeout { key } | tx::Event::TransportError { key } => {
                if self.mwi_response(&key, None) || self.spy_api_failed(&key) {
                    return;
                }
                if let Some((aor, contact)) = self.qualify.answered(&key) {
                    self.qualified(&aor, &contact, false);
                    return;
                }
                if let Some(i) = self.outbound.take(&key) {
                    self.register_outbound(Some((i, None)));
                    return;
                }
                self.b2bua.on_timeout(&key, &mut self.media, now);
            }
            tx::Event::Ack { request, .. } if self.spy_ack(&request) => {}
            tx::Event::Ack { request, .. } => self.b2bua.on_ack(&request, &mut self.media, now),
            tx::Event::Terminated { key } => self.b2bua.on_terminated(&key),
        }
    }

    /// A new request, screened ([`Screened`]): SUBSCRIBE to message waiting, in-dialog ones to
    /// a supervisor's call or the B2BUA, INVITE to [`Core::on_invite`], REGISTER to the
    /// registrar, OPTIONS answered.
    fn on_request(
        &mut self,
        key: TransactionKey,
        request: Request,
        source: Peer,
        in_dialog: bool,
        now: Instant,
    ) {
        if request.method == Method::Subscribe {
            self.on_subscribe(key, request, source, now);
            return;
        }
        if in_dialog && request.method != Method::Register {
            if self.spy_in_dialog(&key, &request, now) {
                return;
            }
            if !self
                .b2bua
                .on_in_dialog(&key, request.clone(), &mut self.media, now)
            {
                let code = if request.method == Method::Options {
                    200
                } else {
                    481
                };
                let r = message::response_for(&request, code, "");
                let _ = self.tl.send_response(&key, r, now);
            }
            return;
        }
        if request.method == Method::Invite {
            self.on_invite(key, request, source, now);
            return;
        }
        let (resp, change) = self.handle_request(&request, source.clone());
        if request.method == Method::Register {
            self.auth_failures(&request, &source);
            if resp.status_code.code() == 401 {
                self.send_challenge(&key, resp, &source);
                return;
            }
            self.respond_register(super::durable::Responder::Core(key), &request, resp, change);
        } else if let Err(e) = self.tl.send_response(&key, resp, now) {
            debug!(error = %e, "response not sent");
        }
    }

    /// The response to an out-of-dialog request other than INVITE, and for a REGISTER what a
    /// 200 did to the binding set (`Change::Set` for anything else).
    pub(super) fn handle_request(
        &mut self,
        req: &Request,
        source: Peer,
    ) -> (message::Response, Change) {
        // The request passed `screen` (every check of `validate_parsed_request`, with the
        // B2BUA's option tags): what is left is `Require`, for which these methods support none.
        let checked = message::check_require(req, message::SUPPORTED_EXTENSIONS);
        debug_assert_eq!(
            checked.as_ref().err(),
            message::validate_parsed_request(req).err().as_ref()
        );
        if let Err(rej) = checked {
            return (rej.response(req), Change::Set);
        }
        match req.method {
            Method::Register => (self.registrar).handle_register(req, source, SystemTime::now()),
            Method::Options => (message::response_for(req, 200, "OK"), Change::Set),
            _ => (
                message::response_for(req, 501, "Not Implemented"),
                Change::Set,
            ),
        }
    }
}

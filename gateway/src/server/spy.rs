//! Supervisor listen / whisper / barge from the phone (Asterisk's ChanSpy with `q`, `w`, `B`).
//!
//! A device listed in `[supervisors] devices` dials a feature code and an extension
//! (`*222<ext>` listen, `*223<ext>` whisper, `*224<ext>` barge by default): the gateway answers
//! the call itself (a relay leg of its own, 200 OK with our SDP) and mixes it into the call the
//! extension's device is in ([`media::mixer::Spy`]). Anybody else gets 403 with a `Reason`
//! and a `Warning` saying why, and a `SPY REFUSED` log line; an extension that is not in a
//! call gets 480, an unknown one 404.
//!
//! The spied call never notices the supervisor leaving (its legs are bridged again); when the
//! spied call ends, the supervisor gets a BYE. Our 200 is retransmitted (T1 doubling up to
//! T2) until the supervisor's ACK; without an ACK in 64·T1 the session ends with a BYE
//! (RFC 3261 §13.3.1.4). Limits: at most [`MAX_SPIES`] at once; the supervisor's call has no
//! re-INVITE, no CDR, and does not count in the supervisor's device state.

use std::collections::HashMap;
use std::time::Instant;

use rsip::headers::UntypedHeader;
use rsip::{Header, Method, Request};
use tracing::{info, warn};

use super::Core;
use crate::b2bua::{self, Caller};
use crate::media::mixer::Spy;
use crate::media::Leg;
use crate::sdp::SessionDescription;
use crate::sip::builder::Local;
use crate::sip::dialog::{self, Dialog};
use crate::sip::message::{self, SipMessage};
use crate::sip::transaction::TransactionKey;
use crate::sip::ua::{UasEvent, UasInvite};
use crate::transport::Peer;

// Spying started from the admin API (the gateway calls the supervisor's phone).
#[path = "spy_api.rs"]
mod api;
pub use api::{SpyCalling, SpyMode, SpyOrder, SpyRefused};

/// Supervisor sessions at once; more are refused with 503.
pub const MAX_SPIES: usize = 64;

/// Who may spy and how they dial it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpyConfig {
    /// Feature code prefix for listen (default `*222`).
    pub listen: String,
    /// Feature code prefix for whisper (default `*223`).
    pub whisper: String,
    /// Feature code prefix for barge (default `*224`).
    pub barge: String,
    /// Device user names allowed to use them.
    pub supervisors: Vec<String>,
}

impl Default for SpyConfig {
    fn default() -> Self {
        SpyConfig {
            listen: "*222".into(),
            whisper: "*223".into(),
            barge: "*224".into(),
            supervisors: Vec::new(),
        }
    }
}

impl SpyConfig {
    /// The mode and the extension of a dialled number, if it starts with a feature code (the
    /// longest matching code wins).
    pub fn feature<'a>(&self, dialled: &'a str) -> Option<(SpyMode, &'a str)> {
        [
            (SpyMode::Listen, &self.listen),
            (SpyMode::Whisper, &self.whisper),
            (SpyMode::Barge, &self.barge),
        ]
        .into_iter()
        .filter(|(_, code)| !code.is_empty())
        .filter_map(|(m, code)| {
            dialled
                .strip_prefix(code.as_str())
                .map(|ext| (m, code.len(), ext))
        })
        .max_by_key(|(_, len, _)| *len)
        .map(|(m, _, ext)| (m, ext))
    }
}

/// One supervisor's call.
struct Session {
    dialog: Dialog,
    /// Where the supervisor's requests came from (its flow).
    peer: Peer,
    leg: Leg,
    spy: Spy,
    call: b2bua::CallId,
    supervisor: String,
    device: String,
    /// Our 200 until the ACK (retransmitted T1 doubling up to T2, given up after 64·T1).
    unacked: Option<UasInvite>,
}

/// The supervisors' calls, by dialog (Call-ID, our tag).
#[derive(Default)]
pub(super) struct Spies {
    sessions: HashMap<(String, String), Session>,
    /// Supervisors' phones being called for the admin API.
    dials: api::Dials,
}

impl Core {
    /// An INVITE from `caller` dialling a spy feature code: answered or refused here (`true`);
    /// `false` for any other number.
    pub(super) fn spy_invite(
        &mut self,
        key: &TransactionKey,
        req: &Request,
        caller: &Caller,
        source: &Peer,
        now: Instant,
    ) -> bool {
        let dialled = b2bua::dialled_user(req);
        let Some((mode, ext)) = self.cfg.spy.feature(&dialled) else {
            return false;
        };
        let supervisor = caller
            .device
            .as_deref()
            .map(|d| d.strip_prefix(self.cfg.device_prefix.as_str()).unwrap_or(d))
            .unwrap_or("")
            .to_owned();
        let refuse = |core: &mut Core, code: u16, why: &str| {
            info!(%supervisor, target = %ext, mode = mode.as_str(), %code, reason = why, "SPY REFUSED");
            let mut r = message::response_for(req, code, "");
            r.headers.push(Header::Other(
                "Reason".into(),
                format!("SIP;cause={code};text=\"{why}\""),
            ));
            r.headers
                .push(Header::Warning(rsip::headers::Warning::new(format!(
                    "399 callfabric \"{why}\""
                ))));
            let _ = core.tl.send_response(key, r, now);
            true
        };
        if supervisor.is_empty() || !self.is_supervisor(&supervisor) {
            return refuse(self, 403, "not a supervisor");
        }
        if self.spies.sessions.len() >= MAX_SPIES {
            return refuse(self, 503, "too many supervisor sessions");
        }
        let target = self
            .device_for(ext)
            .map(|d| format!("{}{}", self.cfg.device_prefix, d.username));
        let Some(device) = target else {
            return refuse(self, 404, "no such extension");
        };
        if caller.device.as_deref() == Some(device.as_str()) {
            return refuse(self, 403, "cannot spy on oneself");
        }
        // The spied call: the device's (answered) call; its leg is the agent's, the other the
        // caller's.
        let found = {
            let parties = self.media.parties.lock().unwrap_or_else(|p| p.into_inner());
            let legs = self.media.legs.lock().unwrap_or_else(|p| p.into_inner());
            let mut calls: Vec<_> = parties
                .iter()
                .filter_map(|(id, p)| {
                    let (a, b) = legs.get(id)?;
                    if p.callee_device.as_deref() == Some(device.as_str()) {
                        Some((*id, a.clone(), b.clone()))
                    } else if p.caller_device.as_deref() == Some(device.as_str()) {
                        Some((*id, b.clone(), a.clone()))
                    } else {
                        None
                    }
                })
                .filter(|(_, c, a)| c.destination().0.is_some() && a.destination().0.is_some())
                .collect();
            calls.sort_by_key(|(id, _, _)| *id);
            calls.pop()
        };
        let Some((call, caller_leg, agent_leg)) = found else {
            return refuse(self, 480, "extension not in a call");
        };
        let offer = (dialog::content_type(&req.headers).as_deref() == Some("application/sdp"))
            .then(|| SessionDescription::parse_bytes(&req.body).ok())
            .flatten();
        let Some(offer) = offer else {
            return refuse(self, 488, "an SDP offer is needed");
        };
        // On the spied call's relay thread, with the legs it is mixed with.
        let leg = match self.media.relay.leg_beside(&caller_leg) {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "no RTP ports for a supervisor");
                return refuse(self, 503, "no media ports");
            }
        };
        let local = leg.local_rtp();
        let Some(answer) = crate::sdp::answer(
            &offer,
            local.ip(),
            &[local.port()],
            &["PCMU", "PCMA", "telephone-event"],
            ("callfabric", rand::random::<u64>() >> 1, 1),
        ) else {
            return refuse(self, 488, "no common codec");
        };
        if let Some(rtp) = offer.rtp_endpoint(0) {
            leg.set_remote(rtp, offer.rtcp_endpoint(0));
        }
        let tag = spy_local(source).tag(&mut self.rng);
        let contact = match source.transport.uri_param() {
            Some(t) => format!("<sip:callfabric@{};transport={t}>", source.local),
            None => format!("<sip:callfabric@{}>", source.local),
        };
        let Ok(mut d) = Dialog::uas(req, &tag, &contact) else {
            return refuse(self, 400, "bad dialog headers");
        };
        d.state = dialog::DialogState::Confirmed;
        let mut ok = message::response_with_tag(req, 200, "", &tag);
        ok.headers
            .push(Header::Contact(rsip::headers::Contact::new(contact)));
        let ok = dialog::response_with_body(ok, answer.to_string().into_bytes(), "application/sdp");
        let unacked = Some(UasInvite::answered(ok.clone(), self.tl.config(), now));
        if let Err(e) = self.tl.send_response(key, ok, now) {
            warn!(error = %e, "supervisor's 200 not sent");
            return true;
        }
        let spy = Spy::start(mode, [caller_leg, agent_leg, leg.clone()], rand::random());
        info!(%supervisor, %device, call = call.0, mode = mode.as_str(), "SPY STARTED");
        self.spies.sessions.insert(
            (d.call_id.clone(), tag),
            Session {
                dialog: d,
                peer: source.clone(),
                leg,
                spy,
                call,
                supervisor,
                device,
                unacked,
            },
        );
        true
    }

    /// An ACK outside any transaction: the supervisor's ACK for our 200 (`true`), else `false`.
    pub(super) fn spy_ack(&mut self, ack: &Request) -> bool {
        match self
            .spies
            .sessions
            .values_mut()
            .find(|s| s.dialog.matches(ack))
        {
            Some(s) => {
                s.unacked = None;
                true
            }
            None => false,
        }
    }

    /// When [`Core::spy_retransmit`] next has something to do: a 200 to retransmit or give up.
    pub(super) fn spy_deadline(&self) -> Option<Instant> {
        (self.spies.sessions.values())
            .filter_map(|s| s.unacked.as_ref()?.poll_timeout())
            .chain(self.spy_api_deadline())
            .min()
    }

    /// Retransmits unacknowledged 200s that are due (T1 doubling, at most T2); a session
    /// whose 200 got no ACK within 64·T1 ends with a BYE.
    pub(super) fn spy_retransmit(&mut self, now: Instant) {
        self.spy_api_tick(now);
        let mut dead = Vec::new();
        for (id, s) in self.spies.sessions.iter_mut() {
            match s.unacked.as_mut().and_then(|u| u.handle_timeout(now)) {
                Some(UasEvent::AckTimeout) => dead.push(id.clone()),
                Some(UasEvent::Retransmit(ok)) => {
                    let k = s.peer.tx_transport();
                    self.tl
                        .send_stateless(SipMessage::Response(ok), s.peer.clone(), k);
                }
                None => {}
            }
        }
        for id in dead {
            if let Some(s) = self.spies.sessions.remove(&id) {
                end(&s, "no ACK for the 200");
                self.spy_bye(s, now);
            }
        }
    }

    /// A request inside a supervisor's call: handled here (`true`), else `false`.
    pub(super) fn spy_in_dialog(
        &mut self,
        key: &TransactionKey,
        req: &Request,
        now: Instant,
    ) -> bool {
        let Some(id) = self
            .spies
            .sessions
            .iter()
            .find(|(_, s)| s.dialog.matches(req))
            .map(|(k, _)| k.clone())
        else {
            return false;
        };
        let code = match req.method {
            Method::Bye => {
                if let Some(s) = self.spies.sessions.remove(&id) {
                    end(&s, "supervisor hung up");
                }
                200
            }
            Method::Ack => return true,
            Method::Options | Method::Info | Method::Notify => 200,
            _ => 488,
        };
        let r = message::response_for(req, code, "");
        let _ = self.tl.send_response(key, r, now);
        true
    }

    /// Call `call` ended: its supervisors get a BYE.
    pub(super) fn spy_call_ended(&mut self, call: b2bua::CallId) {
        self.spy_api_call_ended(call);
        let ids: Vec<_> = self
            .spies
            .sessions
            .iter()
            .filter(|(_, s)| s.call == call)
            .map(|(k, _)| k.clone())
            .collect();
        let now = Instant::now();
        for id in ids {
            let Some(s) = self.spies.sessions.remove(&id) else {
                continue;
            };
            end(&s, "spied call ended");
            self.spy_bye(s, now);
        }
    }

    /// Sends the supervisor a BYE.
    fn spy_bye(&mut self, mut s: Session, now: Instant) {
        let (via, _) = spy_local(&s.peer).new_via(&mut self.rng);
        let bye = s.dialog.request(Method::Bye, &via);
        let k = s.peer.tx_transport();
        if let Err(e) = self.tl.send_request(bye, k, s.peer.clone(), now) {
            warn!(error = %e, "BYE to the supervisor not sent");
        }
    }
}

/// Where our requests to a supervisor leave from (the flow its requests came in on).
fn spy_local(peer: &Peer) -> Local {
    Local {
        transport: peer.transport.via_name(),
        addr: peer.local,
        prefix: "cfspy",
    }
}

fn end(s: &Session, why: &str) {
    s.spy.stop();
    s.leg.close();
    info!(
        supervisor = %s.supervisor,
        device = %s.device,
        call = s.call.0,
        mode = s.spy.mode().as_str(),
        reason = why,
        "SPY ENDED"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feature_codes_pick_mode_and_extension() {
        let c = SpyConfig::default();
        assert_eq!(c.feature("*2221002"), Some((SpyMode::Listen, "1002")));
        assert_eq!(c.feature("*2231002"), Some((SpyMode::Whisper, "1002")));
        assert_eq!(c.feature("*224"), Some((SpyMode::Barge, "")));
        assert_eq!(c.feature("1002"), None);
        let c = SpyConfig {
            listen: "*22".into(),
            whisper: "*223".into(),
            barge: String::new(),
            supervisors: vec![],
        };
        assert_eq!(c.feature("*2231"), Some((SpyMode::Whisper, "1")));
        assert_eq!(c.feature("*2241"), Some((SpyMode::Listen, "41")));
    }
}

//! Callback that keeps the place (issue 15): a waiting caller presses its queue's
//! `callback_key` ([`CALLBACK_KEY`] by default; RFC 4733 DTMF in its RTP, `dtmf.rs`), we hang up its call and it stays in the queue, its
//! record on the fabric keeping its place in the global order. When its turn comes the engine
//! offers an agent as for anyone; once the agent answers (CONNECT), the agent hears music on
//! hold while we call the caller back through the gateway the call came from; when the caller
//! answers, both are bridged. queue_log: `CALLBACKREQ` (global position, number) at the key
//! press, `CALLBACK` (number, `ANSWER` or the failure's status code) at the call back. A
//! caller who does not answer the call back loses its place (the agent is released,
//! COMPLETECALLER).

use std::net::SocketAddr;
use std::time::Instant;

use media::audio::Codec;
use sdp::SessionDescription;
use sip_core::dialog::Dialog;
use sip_core::message::{Request, Response};
use sip_core::transaction::TransactionKey;
use tracing::{info, warn};

use super::{CallControl, Fabric, LegId, Media, Output, Party};
use crate::engine::{CompletedBy, OfferId, QueueLogEvent};
use sip_core::ua::ToSend;

/// The key a waiting caller presses to be called back, unless its queue sets `callback_key`.
pub const CALLBACK_KEY: char = '1';

/// A caller waiting for a call back.
#[derive(Debug)]
pub(super) struct Callback {
    /// Whom to call: the caller's number (From user).
    number: String,
    /// The gateway its call came from.
    gateway: SocketAddr,
    /// The call back, once placed: its INVITE, leg and the agent's offer.
    dialing: Option<Dialing>,
}

#[derive(Debug)]
struct Dialing {
    key: TransactionKey,
    invite: Request,
    leg: LegId,
    offer: OfferId,
    answered: bool,
}

impl<M: Media, F: Fabric> CallControl<M, F> {
    /// A DTMF key pressed on `leg` (reported by the media side).
    pub fn dtmf(&mut self, leg: LegId, key: char, now: Instant) {
        let Some(&n) = self.by_leg.get(&leg) else {
            return;
        };
        info!(?leg, %key, "DTMF");
        let eligible = self.callers.get(&n).is_some_and(|c| {
            c.connected.is_none() && c.callback.is_none() && c.hangup_at.is_none()
        });
        let callback_key = self
            .callers
            .get(&n)
            .and_then(|c| self.queue_cfg(&c.queue))
            .and_then(|q| q.callback_key)
            .unwrap_or(CALLBACK_KEY);
        if key == callback_key && eligible {
            self.request_callback(n);
        }
        self.pump(now);
    }

    fn cb_log(&mut self, caller: &str, queue: &str, event: &'static str, data: Vec<String>) {
        self.log(QueueLogEvent {
            time: std::time::Duration::ZERO,
            callid: caller.to_owned(),
            queue: queue.to_owned(),
            agent: "NONE".into(),
            event,
            data,
        });
    }

    /// The caller keeps its place and hangs up: we end its call now.
    fn request_callback(&mut self, n: u64) {
        let Some(c) = self.callers.get(&n) else {
            return;
        };
        let (id, queue, number) = (c.id.clone(), c.queue.clone(), c.from.clone());
        let pos = self.engine.global_position(&queue, &id).unwrap_or(0);
        info!(caller = %id, %queue, pos, "callback requested: hanging up, the place is kept");
        self.cb_log(
            &id,
            &queue,
            "CALLBACKREQ",
            vec![pos.to_string(), number.clone()],
        );
        self.bye_caller(n);
        let Some(c) = self.callers.get_mut(&n) else {
            return;
        };
        c.callback = Some(Callback {
            number,
            gateway: c.peer.addr,
            dialing: None,
        });
        c.next_announce = None;
        c.ok = None;
        let (leg, call_id, tag) = (c.leg, c.dialog.call_id.clone(), c.dialog.local_tag.clone());
        self.media.close(leg);
        self.by_leg.remove(&leg);
        self.by_dialog.remove(&(call_id, tag));
    }

    /// The agent answered a callback caller (`connect`): music to the agent, call the caller.
    /// Returns false when `n` is no callback caller.
    pub(super) fn connect_callback(&mut self, n: u64, offer: OfferId, agent_leg: LegId) -> bool {
        let Some(c) = self.callers.get(&n) else {
            return false;
        };
        let Some(cb) = &c.callback else {
            return false;
        };
        let (number, gateway, id, queue) =
            (cb.number.clone(), cb.gateway, c.id.clone(), c.queue.clone());
        // The relay does not transcode: call back in the codec the agent was offered.
        let codec_name = c
            .sdp
            .media()
            .first()
            .and_then(|m| m.codecs().into_iter().next())
            .map(|c| c.name.to_ascii_uppercase())
            .unwrap_or_else(|| "PCMU".into());
        let codec = match codec_name.as_str() {
            "PCMA" => Codec::Pcma,
            _ => Codec::Pcmu,
        };
        self.emit(Output::Music {
            leg: agent_leg,
            codec,
        });
        let leg = self.new_leg();
        // On the agent's relay thread: the two legs are bridged when the caller answers.
        let Some(local_rtp) = self.media.open_beside(leg, agent_leg) else {
            warn!("no media port for a call back");
            return self.callback_failed(n, "503");
        };
        let uri = format!("sip:{number}@{gateway}");
        let from = format!("<sip:acd@{}>", self.cfg.local);
        // Signed as offers are: a gateway of the fabric takes it without a trunk entry.
        let Some((req, branch)) =
            self.offer_invite(&uri, &from, local_rtp, &codec_name, queue, true, &id)
        else {
            self.media.close(leg);
            return self.callback_failed(n, "500");
        };
        info!(caller = %id, %number, %gateway, "calling the caller back");
        let peer = self.peer(gateway);
        let key = self.send(req.clone(), &branch, peer);
        self.callback_keys.insert(key.clone(), n);
        if let Some(cb) = self.callers.get_mut(&n).and_then(|c| c.callback.as_mut()) {
            cb.dialing = Some(Dialing {
                key,
                invite: req,
                leg,
                offer,
                answered: false,
            });
        }
        true
    }

    /// A response to a call back's INVITE; false when `key` is none of ours.
    pub(super) fn callback_response(
        &mut self,
        key: &TransactionKey,
        resp: &Response,
        now: Instant,
    ) -> bool {
        let Some(&n) = self.callback_keys.get(key) else {
            return false;
        };
        let code = resp.status_code.code();
        if code < 200 {
            return true;
        }
        if code >= 300 {
            self.callback_keys.remove(key);
            self.callback_failed(n, &code.to_string());
            self.pump(now);
            return true;
        }
        let Some(cb) = self
            .callers
            .get_mut(&n)
            .and_then(|c| c.callback.as_mut())
            .and_then(|cb| cb.dialing.as_mut())
        else {
            return true;
        };
        let Ok(d) = Dialog::uac(&cb.invite, resp) else {
            return true;
        };
        let first = !cb.answered;
        cb.answered = true;
        let (leg, offer) = (cb.leg, cb.offer);
        // ACK every 2xx (a retransmission too).
        let branch = self.new_branch();
        let ack = d.ack(1, &self.via(&branch));
        let Some(c) = self.callers.get(&n) else {
            return true;
        };
        let gateway = c.peer.addr;
        let dest = self.peer(gateway);
        self.emit_sip(ToSend::Stateless {
            message: ack.into(),
            dest,
        });
        if !first {
            return true;
        }
        if let Ok(answer) = SessionDescription::parse_bytes(&resp.body) {
            if let Some(rtp) = answer.rtp_endpoint(0) {
                self.media.set_remote(leg, rtp, answer.rtcp_endpoint(0));
            }
        }
        let Some(c) = self.callers.get_mut(&n) else {
            return true;
        };
        // From now on the call back is the caller's call: hang-ups on either side as usual.
        c.by_callback(d.clone(), leg);
        let (id, queue, number) = (
            c.id.clone(),
            c.queue.clone(),
            c.callback
                .as_ref()
                .map(|cb| cb.number.clone())
                .unwrap_or_default(),
        );
        self.by_leg.insert(leg, n);
        self.by_dialog
            .insert((d.call_id.clone(), d.local_tag.clone()), Party::Caller(n));
        if let Some(agent_leg) = self.agents.get(&offer).map(|a| a.leg) {
            self.emit(Output::StopMedia { leg: agent_leg });
            if !self.media.bridge(leg, agent_leg) {
                warn!("cannot bridge the called-back caller and the agent");
            }
        }
        info!(caller = %id, "called back and connected to the agent");
        self.cb_log(&id, &queue, "CALLBACK", vec![number, "ANSWER".into()]);
        true
    }

    /// The call back's INVITE timed out or could not be sent; false when none of ours.
    pub(super) fn callback_timeout(&mut self, key: &TransactionKey, now: Instant) -> bool {
        let Some(n) = self.callback_keys.remove(key) else {
            return false;
        };
        let answered = self
            .callers
            .get(&n)
            .and_then(|c| c.callback.as_ref())
            .and_then(|cb| cb.dialing.as_ref())
            .is_some_and(|d| d.answered);
        if !answered {
            self.callback_failed(n, "408");
            self.pump(now);
        }
        true
    }

    /// The caller could not be called back: release the agent, the caller is gone.
    fn callback_failed(&mut self, n: u64, why: &str) -> bool {
        let Some(c) = self.forget_caller(n) else {
            return true;
        };
        let number = c
            .callback
            .as_ref()
            .map(|cb| cb.number.clone())
            .unwrap_or_default();
        if let Some(d) = c.callback.as_ref().and_then(|cb| cb.dialing.as_ref()) {
            self.media.close(d.leg);
        }
        info!(caller = %c.id, %why, "call back failed");
        self.cb_log(&c.id, &c.queue, "CALLBACK", vec![number, why.to_owned()]);
        let now = self.epoch + self.engine.now();
        let _ = self
            .engine
            .call_completed(self.t(now), &c.id, CompletedBy::Caller);
        if let Some(offer) = c.connected {
            self.hangup_agent(offer);
        }
        true
    }

    /// The agent hung up while the call back was still ringing: CANCEL it.
    pub(super) fn cancel_callback(&mut self, n: u64) {
        let Some(d) = self
            .callers
            .get(&n)
            .and_then(|c| c.callback.as_ref())
            .and_then(|cb| cb.dialing.as_ref())
            .filter(|d| !d.answered)
        else {
            return;
        };
        let (key, leg) = (d.key.clone(), d.leg);
        let Some(gateway) = self.callers.get(&n).map(|c| c.peer.addr) else {
            return;
        };
        let dest = self.peer(gateway);
        self.callback_keys.remove(&key);
        self.media.close(leg);
        self.emit_sip(ToSend::Cancel { key, dest });
    }
}

impl super::CallerCall {
    /// The answered call back replaces the caller's original call.
    fn by_callback(&mut self, d: Dialog, leg: LegId) {
        self.dialog = d;
        self.leg = leg;
    }
}

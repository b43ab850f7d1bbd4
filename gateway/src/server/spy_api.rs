//! Spying started from the admin API (`POST /admin/calls/{call}/spy`, issue 13): the gateway
//! calls the supervisor's phone and, once it answers, mixes it into call `{call}` in the chosen
//! mode exactly as the feature codes do ([`super`]): the same [`Spy`], the same session (BYE
//! from either side; a BYE to the supervisor when the spied call ends).
//!
//! Who may: a device listed in `[supervisors] devices` or whose `supervisor` flag is set in
//! the device table ([`Core::is_supervisor`], read from the device cache at each request, so a
//! change takes effect at the next cache reload, without a restart). The phone rung is the
//! supervisor's newest reachable contact (no forking); it rings for at most [`RING`], then the
//! INVITE is cancelled; if the spied call ends first, it is cancelled too (answered meanwhile:
//! ACK and BYE). The agent side (who hears a whisper) is the called party unless the order
//! names the calling one.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rsip::{Method, Request};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use super::{Session, MAX_SPIES};
use crate::b2bua::CallId;
use crate::media::mixer::Spy;
pub use crate::media::mixer::SpyMode;
use crate::media::Leg;
use crate::sdp::SessionDescription;
use crate::server::shutdown::Control;
use crate::server::{contact_dest, Core, Gateway};
use crate::sip::builder::{self, RequestBuilder};
use crate::sip::dialog::{self, Dialog};
use crate::sip::message::SipMessage;
use crate::sip::transaction::TransactionKey;
use crate::sip::ua::UacInvite;
use crate::transport::Peer;

/// How long the supervisor's phone rings before the INVITE is cancelled.
pub const RING: Duration = Duration::from_secs(30);

/// A request to spy on a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpyOrder {
    /// The gateway's call number (`call` in `GET /admin/calls`).
    pub call: u64,
    /// The supervisor's device user name (`2001`; `PJSIP/2001` reads the same).
    pub supervisor: String,
    /// Listen, whisper or barge.
    pub mode: SpyMode,
    /// The agent's device user name, when it is the calling party of the call (the party
    /// that hears a whisper); default: the called party.
    pub agent: Option<String>,
}

/// The supervisor's phone is being called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpyCalling {
    /// The spied call.
    pub call: u64,
    /// The supervisor's device user name.
    pub supervisor: String,
    /// The mode.
    pub mode: SpyMode,
    /// The contact rung.
    pub contact: String,
    /// Call-ID of the INVITE to the supervisor.
    pub call_id: String,
}

/// Why a spy order was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpyRefused {
    /// Neither listed in `[supervisors] devices` nor flagged in the device table.
    #[error(
        "{0:?} is not a supervisor: list it in [supervisors] devices or set the device's supervisor flag"
    )]
    NotSupervisor(String),
    /// No call with that number.
    #[error("no call {0} in progress")]
    UnknownCall(u64),
    /// The call has not been answered yet.
    #[error("call {0} is not answered yet")]
    NotAnswered(u64),
    /// The agent named is not a party of the call.
    #[error("{agent:?} is not a device in call {call}")]
    NotAParty {
        /// The call.
        call: u64,
        /// The agent named.
        agent: String,
    },
    /// The supervisor is a party of the call.
    #[error("the supervisor {0:?} is a party of that call")]
    OwnCall(String),
    /// The supervisor is listed but has no device row.
    #[error("no device {0:?}")]
    UnknownDevice(String),
    /// The supervisor's phone has no reachable registration.
    #[error("the supervisor's phone {0:?} is not registered (or does not answer OPTIONS)")]
    NotRegistered(String),
    /// [`MAX_SPIES`] sessions (answered or ringing) already.
    #[error("too many supervisor sessions (at most {MAX_SPIES})")]
    TooMany,
    /// The RTP port range is exhausted.
    #[error("no RTP ports for the supervisor")]
    NoPorts,
    /// The INVITE could not be sent.
    #[error("the INVITE to the supervisor could not be sent: {0}")]
    Send(String),
    /// The gateway's core has stopped.
    #[error("the gateway stopped")]
    Stopped,
}

/// A supervisor's phone being called.
struct Dialing {
    invite: Request,
    dest: Peer,
    leg: Leg,
    mode: SpyMode,
    call: CallId,
    /// The spied call's caller-side and agent-side legs.
    parties: [Leg; 2],
    supervisor: String,
    /// The agent side's device key (or the dialled number).
    device: String,
    ring_until: Instant,
    provisional: bool,
    /// Why the INVITE is being cancelled (the CANCEL goes once a provisional response came).
    cancel: Option<&'static str>,
    cancel_sent: bool,
}

/// The supervisors' phones being called, by INVITE transaction.
#[derive(Default)]
pub(super) struct Dials {
    pending: HashMap<TransactionKey, Dialing>,
    /// The ACK of each answered INVITE, re-sent on its 2xx retransmissions until 64·T1.
    acked: HashMap<TransactionKey, (SipMessage, Peer, Instant)>,
}

impl Gateway {
    /// Calls `order.supervisor`'s phone to spy on call `order.call`; returns once the INVITE
    /// is sent (the phone is ringing or about to), or why it is refused.
    pub async fn spy(&self, order: SpyOrder) -> Result<SpyCalling, SpyRefused> {
        let (tx, rx) = oneshot::channel();
        self.control
            .send(Control::Spy(order, tx))
            .map_err(|_| SpyRefused::Stopped)?;
        rx.await.map_err(|_| SpyRefused::Stopped)?
    }
}

/// A fresh Via for a request to the supervisor's phone at `peer`.
fn via(rng: &mut StdRng, peer: &Peer) -> String {
    super::spy_local(peer).new_via(rng).0
}

impl Core {
    /// Whether device user `user` may spy: listed in `[supervisors] devices`, or its device
    /// row's `supervisor` flag is set (as the cache holds it now).
    pub(super) fn is_supervisor(&self, user: &str) -> bool {
        self.cfg.spy.supervisors.iter().any(|s| s == user)
            || self.devices.get(user).is_some_and(|d| d.supervisor)
    }

    /// An order from the admin API: checked, then the supervisor's phone is called.
    pub(in crate::server) fn spy_api(
        &mut self,
        order: SpyOrder,
        now: Instant,
    ) -> Result<SpyCalling, SpyRefused> {
        let r = self.spy_api_start(&order, now);
        if let Err(e) = &r {
            info!(supervisor = %order.supervisor, call = order.call, mode = order.mode.as_str(),
                  reason = %e, via = "api", "SPY REFUSED");
        }
        r
    }

    fn spy_api_start(&mut self, order: &SpyOrder, now: Instant) -> Result<SpyCalling, SpyRefused> {
        let prefix = self.cfg.device_prefix.clone();
        let bare = |u: &str| u.strip_prefix(prefix.as_str()).unwrap_or(u).to_owned();
        let user = bare(&order.supervisor);
        if user.is_empty() || !self.is_supervisor(&user) {
            return Err(SpyRefused::NotSupervisor(user));
        }
        let id = CallId(order.call);
        let legs = self
            .media
            .legs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned();
        let Some((a, b)) = legs else {
            return Err(SpyRefused::UnknownCall(order.call));
        };
        if a.destination().0.is_none() || b.destination().0.is_none() {
            return Err(SpyRefused::NotAnswered(order.call));
        }
        let parties = self
            .media
            .parties
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
            .unwrap_or_default();
        let sup_key = format!("{prefix}{user}");
        if [&parties.caller_device, &parties.callee_device]
            .iter()
            .any(|d| d.as_deref() == Some(sup_key.as_str()))
        {
            return Err(SpyRefused::OwnCall(user));
        }
        let (caller_leg, agent_leg, device) = match order.agent.as_deref().map(bare) {
            None => (
                a,
                b,
                parties.callee_device.clone().unwrap_or(parties.dialled),
            ),
            Some(agent) => {
                let key = format!("{prefix}{agent}");
                if parties.callee_device.as_deref() == Some(key.as_str()) {
                    (a, b, key)
                } else if parties.caller_device.as_deref() == Some(key.as_str()) {
                    (b, a, key)
                } else {
                    return Err(SpyRefused::NotAParty {
                        call: order.call,
                        agent,
                    });
                }
            }
        };
        if self.spies.sessions.len() + self.spies.dials.pending.len() >= MAX_SPIES {
            return Err(SpyRefused::TooMany);
        }
        let Some(dev) = self.devices.get(&user) else {
            return Err(SpyRefused::UnknownDevice(user));
        };
        let aor = format!("sip:{}@{}", dev.username, self.cfg.realm);
        let Some((contact, dest)) = self
            .reachable_contacts(&aor)
            .first()
            .map(|b| (b.uri.clone(), contact_dest(&b.uri, &b.source)))
        else {
            return Err(SpyRefused::NotRegistered(user));
        };
        let leg = self.media.relay.leg_now().map_err(|e| {
            warn!(error = %e, "no RTP ports for a supervisor");
            SpyRefused::NoPorts
        })?;
        let local = leg.local_rtp();
        let offer = crate::sdp::offer(
            local.ip(),
            local.port(),
            &["PCMA", "PCMU", "telephone-event"],
            ("callfabric", rand::random::<u64>() >> 1, 1),
        );
        let local = super::spy_local(&dest);
        let (via, _) = local.new_via(&mut self.rng);
        let tag = local.tag(&mut self.rng);
        let call_id = local.call_id(&mut self.rng);
        let our = match dest.transport.uri_param() {
            Some(t) => format!("<sip:callfabric@{};transport={t}>", dest.local),
            None => format!("<sip:callfabric@{}>", dest.local),
        };
        let from = format!(
            "\"{} call {}\" <sip:spy@{}>",
            order.mode.as_str(),
            order.call,
            self.cfg.realm
        );
        let built = builder::parse_uri(&contact).and_then(|uri| {
            RequestBuilder::new(Method::Invite, uri, via)
                .from(&from, Some(&tag))
                .to(&format!("<{aor}>"), None)
                .call_id(call_id.clone())
                .contact(our)
                .field("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS")
        });
        let invite = match built {
            Ok(b) => b
                .body(offer.to_string().into_bytes(), "application/sdp")
                .build(),
            Err(e) => {
                leg.close();
                return Err(SpyRefused::Send(format!(
                    "no valid INVITE to the contact {contact:?}: {e}"
                )));
            }
        };
        let key = self
            .tl
            .send_request(invite.clone(), dest.tx_transport(), dest.clone(), now)
            .map_err(|e| {
                leg.close();
                SpyRefused::Send(e.to_string())
            })?;
        info!(supervisor = %user, %device, call = order.call, mode = order.mode.as_str(),
              %contact, "SPY CALLING");
        self.spies.dials.pending.insert(
            key,
            Dialing {
                invite,
                dest,
                leg,
                mode: order.mode,
                call: id,
                parties: [caller_leg, agent_leg],
                supervisor: user.clone(),
                device,
                ring_until: now + RING,
                provisional: false,
                cancel: None,
                cancel_sent: false,
            },
        );
        Ok(SpyCalling {
            call: order.call,
            supervisor: user,
            mode: order.mode,
            contact,
            call_id,
        })
    }

    /// A response to an INVITE to a supervisor's phone: handled here (`true`), else `false`.
    pub(in crate::server) fn spy_api_response(
        &mut self,
        key: &TransactionKey,
        resp: &rsip::Response,
        now: Instant,
    ) -> bool {
        let code = resp.status_code.code();
        if let Some((ack, dest, _)) = self.spies.dials.acked.get(key) {
            if (200..300).contains(&code) {
                let k = dest.tx_transport();
                self.tl.send_stateless(ack.clone(), dest.clone(), k);
            }
            return true;
        }
        let Some(d) = self.spies.dials.pending.get_mut(key) else {
            return false;
        };
        if code < 200 {
            d.provisional = true;
            if d.cancel.is_some() && !d.cancel_sent {
                self.spy_api_send_cancel(key, now);
            }
            return true;
        }
        let Some(d) = self.spies.dials.pending.remove(key) else {
            return true;
        };
        if code >= 300 {
            d.leg.close();
            info!(supervisor = %d.supervisor, device = %d.device, call = d.call.0,
                  mode = d.mode.as_str(), %code, reason = d.cancel.unwrap_or("refused by the phone"),
                  "SPY FAILED");
            return true;
        }
        let Ok(mut dlg) = Dialog::uac(&d.invite, resp) else {
            d.leg.close();
            warn!(supervisor = %d.supervisor, "the supervisor's 2xx makes no dialog (no To tag)");
            return true;
        };
        let rng = &mut self.rng;
        let ack: SipMessage = UacInvite::new(&d.invite)
            .ack(&dlg, || via(rng, &d.dest))
            .into();
        let k = d.dest.tx_transport();
        self.tl.send_stateless(ack.clone(), d.dest.clone(), k);
        self.spies
            .dials
            .acked
            .insert(key.clone(), (ack, d.dest.clone(), now + self.cfg.t1 * 64));
        let answer = (dialog::content_type(&resp.headers).as_deref() == Some("application/sdp"))
            .then(|| SessionDescription::parse_bytes(&resp.body).ok())
            .flatten();
        let live = self
            .media
            .legs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&d.call);
        let rtp = answer.as_ref().and_then(|a| a.rtp_endpoint(0));
        let gone = match (d.cancel, live, rtp) {
            (Some(why), _, _) => Some(why),
            (None, false, _) => Some("spied call ended"),
            (None, true, None) => Some("no SDP answer"),
            (None, true, Some(_)) => None,
        };
        if let Some(why) = gone {
            d.leg.close();
            let bye = dlg.request(Method::Bye, &via(&mut self.rng, &d.dest));
            if let Err(e) = self.tl.send_request(bye, k, d.dest.clone(), now) {
                warn!(error = %e, "BYE to the supervisor not sent");
            }
            info!(supervisor = %d.supervisor, device = %d.device, call = d.call.0,
                  mode = d.mode.as_str(), reason = why, "SPY ENDED");
            return true;
        }
        if let (Some(rtp), Some(a)) = (rtp, &answer) {
            d.leg.set_remote(rtp, a.rtcp_endpoint(0));
        }
        let [caller_leg, agent_leg] = d.parties;
        let spy = Spy::start(
            d.mode,
            [caller_leg, agent_leg, d.leg.clone()],
            rand::random(),
        );
        info!(supervisor = %d.supervisor, device = %d.device, call = d.call.0,
              mode = d.mode.as_str(), via = "api", "SPY STARTED");
        self.spies.sessions.insert(
            (dlg.call_id.clone(), dlg.local_tag.clone()),
            Session {
                dialog: dlg,
                peer: d.dest,
                leg: d.leg,
                spy,
                call: d.call,
                supervisor: d.supervisor,
                device: d.device,
                unacked: None,
            },
        );
        true
    }

    /// The INVITE to a supervisor's phone timed out or could not be sent: handled (`true`).
    pub(in crate::server) fn spy_api_failed(&mut self, key: &TransactionKey) -> bool {
        if self.spies.dials.acked.contains_key(key) {
            return true;
        }
        let Some(d) = self.spies.dials.pending.remove(key) else {
            return false;
        };
        d.leg.close();
        info!(supervisor = %d.supervisor, device = %d.device, call = d.call.0,
              mode = d.mode.as_str(), reason = "no answer from the supervisor's phone",
              "SPY FAILED");
        true
    }

    /// Cancels the INVITEs that rang for [`RING`]; forgets old ACKs.
    /// When [`Core::spy_api_tick`] next has something to do: a ring to give up, an
    /// acknowledged answer to forget.
    pub(super) fn spy_api_deadline(&self) -> Option<Instant> {
        let dials = &self.spies.dials;
        (dials.pending.values())
            .filter(|d| d.cancel.is_none())
            .map(|d| d.ring_until)
            .chain(dials.acked.values().map(|(_, _, until)| *until))
            .min()
    }

    pub(super) fn spy_api_tick(&mut self, now: Instant) {
        self.spies
            .dials
            .acked
            .retain(|_, (_, _, until)| *until > now);
        let due: Vec<TransactionKey> = self
            .spies
            .dials
            .pending
            .iter()
            .filter(|(_, d)| d.cancel.is_none() && now >= d.ring_until)
            .map(|(k, _)| k.clone())
            .collect();
        for k in due {
            self.spy_api_cancel(&k, "the supervisor did not answer", now);
        }
    }

    /// Call `call` ended: the supervisors' phones still ringing for it are cancelled.
    pub(super) fn spy_api_call_ended(&mut self, call: CallId) {
        let due: Vec<TransactionKey> = self
            .spies
            .dials
            .pending
            .iter()
            .filter(|(_, d)| d.call == call && d.cancel.is_none())
            .map(|(k, _)| k.clone())
            .collect();
        let now = Instant::now();
        for k in due {
            self.spy_api_cancel(&k, "spied call ended", now);
        }
    }

    fn spy_api_cancel(&mut self, key: &TransactionKey, why: &'static str, now: Instant) {
        let Some(d) = self.spies.dials.pending.get_mut(key) else {
            return;
        };
        d.cancel = Some(why);
        if d.provisional {
            self.spy_api_send_cancel(key, now);
        } else {
            // §9.1: no CANCEL before a provisional response; stop retransmitting instead (a
            // late 1xx gets the CANCEL, a late 2xx ACK and BYE, nothing: Timer B).
            self.tl.abandon(key);
        }
    }

    fn spy_api_send_cancel(&mut self, key: &TransactionKey, now: Instant) {
        let Some(d) = self.spies.dials.pending.get_mut(key) else {
            return;
        };
        d.cancel_sent = true;
        let dest = d.dest.clone();
        match self.tl.build_cancel(key) {
            Ok(cancel) => {
                if let Err(e) = self.tl.send_request(cancel, dest.tx_transport(), dest, now) {
                    debug!(error = %e, "CANCEL to the supervisor not sent");
                }
            }
            Err(e) => debug!(error = %e, "nothing to cancel"),
        }
    }
}

//! Session timers (RFC 4028) on each leg of a call, sans-IO.
//!
//! Leg A (we are the UAS of the caller's INVITE): a `Session-Expires` below our Min-SE gets
//! 422 with our `Min-SE`; a caller that sends `Session-Expires` or `Supported: timer` gets
//! the interval in our 2xx with the refresher it asked for (else itself when it supports
//! timers, else us). Leg B (we are the UAC): our INVITE carries `Supported: timer`,
//! `Session-Expires` and `Min-SE`; a 422 is answered once with the callee's Min-SE; a 2xx
//! with `Session-Expires` starts the leg's timer with the refresher it names (none: no timer).
//!
//! Each leg then runs on its own: where we refresh, an UPDATE (a re-INVITE with our current
//! SDP unchanged when the peer does not allow UPDATE) goes at half the interval; where the
//! peer refreshes, its re-INVITE or UPDATE (or an offer with an unchanged SDP version) is
//! answered on that leg alone, and without one by interval − min(32 s, interval/3) the call is
//! ended: BYE on both legs (reason `session-expired`). A re-INVITE/UPDATE relayed end to end
//! refreshes both legs. A refresh we send that times out or gets 408/481 ends the call too.

use std::time::{Duration, Instant};

use rsip::headers::UntypedHeader;
use rsip::{Header, Headers, Method, Response};

use super::{dialog, sdp_of, via_for, B2bua, CallId, Config, MediaControl, Phase, Resend, Side};
use crate::sip::prack;
use crate::sip::transaction::parse as tparse;
use crate::sip::transaction::TransactionKey;

/// Who refreshes, as named in a `refresher` parameter: the UAC or the UAS of the transaction
/// that carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresher {
    /// The transaction's client.
    Uac,
    /// The transaction's server.
    Uas,
}

/// A `Session-Expires` value (compact form `x`): seconds and the refresher, if named.
pub fn session_expires(headers: &Headers) -> Option<(u32, Option<Refresher>)> {
    let v = headers.iter().find_map(|h| match h {
        Header::Other(n, v)
            if n.trim().eq_ignore_ascii_case("session-expires")
                || n.trim().eq_ignore_ascii_case("x") =>
        {
            Some(v.as_str())
        }
        _ => None,
    })?;
    let mut parts = v.split(';');
    let secs: u32 = parts.next()?.trim().parse().ok()?;
    if secs == 0 {
        return None;
    }
    let mut refresher = None;
    for p in parts {
        if let Some((n, val)) = p.split_once('=') {
            if n.trim().eq_ignore_ascii_case("refresher") {
                refresher = match val.trim().to_ascii_lowercase().as_str() {
                    "uac" => Some(Refresher::Uac),
                    "uas" => Some(Refresher::Uas),
                    _ => None,
                };
            }
        }
    }
    Some((secs, refresher))
}

/// A `Min-SE` value in seconds.
pub fn min_se(headers: &Headers) -> Option<u32> {
    prack::other_header(headers, "Min-SE")?
        .split(';')
        .next()?
        .trim()
        .parse()
        .ok()
}

/// `Min-SE: <secs>`.
pub fn min_se_header(secs: u32) -> Header {
    Header::Other("Min-SE".into(), secs.to_string())
}

fn secs(d: Duration) -> u32 {
    d.as_secs().clamp(1, u32::MAX as u64) as u32
}

/// The session-timer fields of our INVITE to a callee (`Session-Expires`, `Min-SE`); none
/// when timers are off.
pub(super) fn request_headers(cfg: &Config) -> Vec<Header> {
    match cfg.session_expires {
        Some(se) => vec![
            Header::Other(
                "Session-Expires".into(),
                secs(se).max(secs(cfg.min_se)).to_string(),
            ),
            Header::Other("Min-SE".into(), secs(cfg.min_se).to_string()),
        ],
        None => Vec::new(),
    }
}

/// Whether a message's `Allow` lists UPDATE.
pub(super) fn allows_update(headers: &Headers) -> bool {
    headers.iter().any(|h| match h {
        Header::Allow(a) => a
            .value()
            .split(',')
            .any(|m| m.trim().eq_ignore_ascii_case("UPDATE")),
        _ => false,
    })
}

/// The timer granted to a caller in our 2xx.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Granted {
    interval: Duration,
    caller_refreshes: bool,
    caller_supports: bool,
}

impl Granted {
    /// Adds `Session-Expires` (and `Require: timer` when the caller supports timers) to our
    /// 2xx.
    pub(super) fn stamp(&self, headers: &mut Headers) {
        let who = if self.caller_refreshes { "uac" } else { "uas" };
        headers.push(Header::Other(
            "Session-Expires".into(),
            format!("{};refresher={who}", secs(self.interval)),
        ));
        if self.caller_supports {
            headers.push(Header::Require(rsip::headers::Require::new("timer")));
        }
    }

    /// The leg's running timer, from the 2xx sent at `now`.
    pub(super) fn start(self, now: Instant) -> SessionTimer {
        SessionTimer {
            interval: self.interval,
            we_refresh: !self.caller_refreshes,
            peer_supports: self.caller_supports,
            refreshed: now,
            in_flight: None,
            retry_at: None,
        }
    }
}

/// Leg A's negotiation: `Err(min_se)` to answer 422, `Ok(None)` for no timer.
pub(super) fn negotiate_uas(req: &rsip::Request, cfg: &Config) -> Result<Option<Granted>, u32> {
    let supports = prack::supports(&req.headers, "timer");
    let asked = session_expires(&req.headers);
    let ours = secs(cfg.min_se);
    if let Some((se, _)) = asked {
        if se < ours {
            return Err(ours);
        }
    }
    let Some(default) = cfg.session_expires else {
        return Ok(None);
    };
    if asked.is_none() && !supports {
        return Ok(None);
    }
    let interval = match asked {
        Some((se, _)) => Duration::from_secs(se.into()),
        None => default.max(cfg.min_se),
    };
    let caller_refreshes = match asked.and_then(|a| a.1) {
        Some(Refresher::Uac) => true,
        Some(Refresher::Uas) => false,
        None => supports,
    };
    Ok(Some(Granted {
        interval,
        caller_refreshes: caller_refreshes && supports,
        caller_supports: supports,
    }))
}

/// One leg's session timer.
#[derive(Debug, Clone)]
pub struct SessionTimer {
    interval: Duration,
    we_refresh: bool,
    peer_supports: bool,
    refreshed: Instant,
    /// Our refresh request in flight (client transaction, method).
    in_flight: Option<(TransactionKey, Method)>,
    retry_at: Option<Instant>,
}

impl SessionTimer {
    /// Leg B's timer from the callee's 2xx to our INVITE (None without `Session-Expires`).
    pub(super) fn from_uac_2xx(resp: &Response, now: Instant) -> Option<SessionTimer> {
        let (se, refresher) = session_expires(&resp.headers)?;
        Some(SessionTimer {
            interval: Duration::from_secs(se.into()),
            // In the 2xx to our INVITE, `uac` is us; RFC 4028 §7.2: absent means us too.
            we_refresh: refresher != Some(Refresher::Uas),
            peer_supports: true,
            refreshed: now,
            in_flight: None,
            retry_at: None,
        })
    }

    /// The negotiated interval.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Whether we are this leg's refresher.
    pub fn we_refresh(&self) -> bool {
        self.we_refresh
    }

    /// When the session expires without a refresh.
    pub fn expiry(&self) -> Instant {
        if self.we_refresh {
            self.refreshed + self.interval
        } else {
            // §10: the refresher has until interval − min(32 s, interval/3).
            self.refreshed + self.interval - (self.interval / 3).min(Duration::from_secs(32))
        }
    }

    fn refresh_at(&self) -> Option<Instant> {
        (self.we_refresh && self.in_flight.is_none())
            .then(|| self.retry_at.unwrap_or(self.refreshed + self.interval / 2))
    }

    fn due(&self) -> Instant {
        match self.refresh_at() {
            Some(r) => r.min(self.expiry()),
            None => self.expiry(),
        }
    }

    /// The session was refreshed at `now` (a 2xx to a re-INVITE/UPDATE on this leg).
    pub(super) fn refreshed(&mut self, now: Instant) {
        self.refreshed = now;
        self.retry_at = None;
    }

    /// A refresh request from the peer: it refreshes, and may renegotiate the interval and
    /// the refresher.
    pub(super) fn on_refresh_request(&mut self, headers: &Headers, now: Instant) {
        if let Some((se, refresher)) = session_expires(headers) {
            self.interval = Duration::from_secs(se.into());
            match refresher {
                Some(Refresher::Uac) => self.we_refresh = false,
                Some(Refresher::Uas) => self.we_refresh = true,
                None => {}
            }
        }
        self.refreshed(now);
    }

    /// `Session-Expires` (+ `Require: timer`) in our 2xx to a refresh from the peer.
    pub(super) fn stamp_response(&self, headers: &mut Headers) {
        let who = if self.we_refresh { "uas" } else { "uac" };
        headers.push(Header::Other(
            "Session-Expires".into(),
            format!("{};refresher={who}", secs(self.interval)),
        ));
        if self.peer_supports {
            headers.push(Header::Require(rsip::headers::Require::new("timer")));
        }
    }

    /// `Session-Expires` + `Supported: timer` in a re-INVITE/UPDATE we send on this leg.
    pub(super) fn stamp_request(&self, headers: &mut Headers) {
        let who = if self.we_refresh { "uac" } else { "uas" };
        headers.push(Header::Supported(rsip::headers::Supported::new("timer")));
        headers.push(Header::Other(
            "Session-Expires".into(),
            format!("{};refresher={who}", secs(self.interval)),
        ));
    }
}

impl super::Call {
    /// The call's earliest own deadline: the retransmission of its 200, either leg's session
    /// timer, the retransmission of a reliable provisional. One function: the B2BUA keeps it
    /// in its per-call deadline index (`due.rs`), read again after every input of the call;
    /// walking the calls at every wake-up instead cost 9 % of the gateway's CPU at 750
    /// calls/s when it was three walks (perf).
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let ok = self.ok.as_ref().and_then(|o| o.usage.poll_timeout());
        let legs = [&self.a, &self.b]
            .into_iter()
            .filter_map(|l| l.timer.as_ref().map(SessionTimer::due))
            .min();
        let rel = self.a_rel.as_ref().and_then(|r| r.poll_timeout());
        [ok, legs, rel].into_iter().flatten().min()
    }
}

impl B2bua {
    /// Sends the refreshes that are due and ends the calls whose session expired.
    pub(super) fn run_session_timers(
        &mut self,
        due: &[CallId],
        media: &mut dyn MediaControl,
        now: Instant,
    ) {
        self.run_reliable(due, media, now);
        let mut expired = Vec::new();
        let mut refresh = Vec::new();
        for id in due {
            let Some(c) = self.calls.get_mut(id) else {
                continue;
            };
            let busy = c.phase != Phase::Confirmed || c.pending.is_some() || c.ok.is_some();
            for side in [Side::A, Side::B] {
                let Some(t) = c.leg_mut(side).timer.as_mut() else {
                    continue;
                };
                if now >= t.expiry() {
                    expired.push(c.id);
                } else if t.refresh_at().is_some_and(|r| now >= r) {
                    if busy {
                        // A transaction of ours or theirs is under way on this call: retry
                        // shortly (a relayed one refreshes anyway).
                        t.retry_at = Some(now + Duration::from_secs(1));
                    } else {
                        refresh.push((c.id, side));
                    }
                }
            }
        }
        expired.dedup();
        for id in expired {
            self.hangup(id, "session-expired", media, now);
        }
        for (id, side) in refresh {
            self.send_refresh(id, side, now);
        }
    }

    /// Our refresh on `side`: UPDATE without a body, or a re-INVITE with our current SDP
    /// unchanged (same origin version: RFC 3264 §8) to a peer that does not allow UPDATE.
    fn send_refresh(&mut self, id: CallId, side: Side, now: Instant) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let leg = call.leg_mut(side);
        let peer = leg.peer.clone();
        let (via, branch) = via_for(&mut self.rng, &peer);
        let method = if leg.allows_update {
            Method::Update
        } else {
            Method::Invite
        };
        let sdp = leg.last_sdp.clone();
        let (Some(d), Some(t)) = (leg.dialog.as_mut(), leg.timer.as_mut()) else {
            return;
        };
        let mut req = d.request(method, &via);
        t.stamp_request(&mut req.headers);
        if method == Method::Invite {
            if let Some(sdp) = sdp {
                req = dialog::with_body(req, sdp.to_string().into_bytes(), "application/sdp");
            }
        }
        let key = TransactionKey::client(&branch, method);
        t.in_flight = Some((key.clone(), method));
        t.retry_at = None;
        let _ = now;
        self.by_client.insert(key.clone(), (id, side));
        self.actions.push_back(super::Action::Request {
            key,
            request: req,
            dest: peer,
        });
    }

    /// Whether `key` is our refresh in flight on `side` of call `id`.
    pub(super) fn refresh_in_flight(&self, id: CallId, side: Side, key: &TransactionKey) -> bool {
        self.calls
            .get(&id)
            .and_then(|c| c.leg(side).timer.as_ref())
            .and_then(|t| t.in_flight.as_ref())
            .is_some_and(|(k, _)| k == key)
    }

    /// A response to one of our refreshes (true), or not one (false).
    pub(super) fn on_refresh_response(
        &mut self,
        id: CallId,
        side: Side,
        key: &TransactionKey,
        resp: &Response,
        media: &mut dyn MediaControl,
        now: Instant,
    ) -> bool {
        if !self.refresh_in_flight(id, side, key) {
            return false;
        }
        let code = resp.status_code.code();
        if code < 200 {
            return true;
        }
        let Some(call) = self.calls.get_mut(&id) else {
            return true;
        };
        let peer = call.leg(side).peer.clone();
        let leg = call.leg_mut(side);
        let method = leg
            .timer
            .as_ref()
            .and_then(|t| t.in_flight.as_ref())
            .map_or(Method::Update, |(_, m)| *m);
        if (200..300).contains(&code) {
            let mut ack = None;
            if let Some(d) = leg.dialog.as_mut() {
                d.on_response(method, resp);
                if method == Method::Invite {
                    let seq = tparse::cseq(&resp.headers).map_or(d.local_seq, |c| c.seq);
                    let (via, _) = via_for(&mut self.rng, &peer);
                    ack = Some(d.ack(seq, &via));
                }
            }
            if let Some(answer) = sdp_of(&resp.headers, &resp.body) {
                if let Some(rtp) = answer.rtp_endpoint(0) {
                    media.set_remote(id, side, rtp, answer.rtcp_endpoint(0));
                }
                leg.remote_version = Some(answer.origin_version());
            }
            if let Some(t) = leg.timer.as_mut() {
                t.in_flight = None;
                t.refreshed(now);
                // The 2xx may move the refresher (`uac` is us here).
                if let Some((se, r)) = session_expires(&resp.headers) {
                    t.interval = Duration::from_secs(se.into());
                    t.we_refresh = r != Some(Refresher::Uas);
                }
            }
            if let Some(ack) = ack {
                self.actions.push_back(super::Action::Stateless {
                    message: ack.into(),
                    dest: peer,
                });
            }
            return true;
        }
        // (The transaction layer ACKs a non-2xx final response to a re-INVITE itself.)
        if let Some(t) = leg.timer.as_mut() {
            t.in_flight = None;
            // §10: 408 or 481 ends the session; 491 and others: try again shortly, the
            // session still expires on time if no refresh succeeds.
            t.retry_at = Some(now + Duration::from_secs(2));
        }
        if matches!(code, 408 | 481) {
            self.hangup(id, "session-refresh-failed", media, now);
        }
        true
    }

    /// The callee answered our INVITE with 422: the INVITE again with its Min-SE (RFC 4028
    /// §7.4). False when it cannot be retried.
    pub(super) fn retry_b_after_422(&mut self, id: CallId, resp: &Response, now: Instant) -> bool {
        let Some(theirs) = min_se(&resp.headers) else {
            return false;
        };
        if theirs > 86_400 {
            return false;
        }
        let Some(call) = self.calls.get_mut(&id) else {
            return false;
        };
        let peer = call.b.peer.clone();
        let (via, branch) = via_for(&mut self.rng, &peer);
        let retry = Resend::new(&call.b_invite, via)
            .next_cseq()
            .without(|h| {
                matches!(h, Header::Other(n, _)
                    if n.trim().eq_ignore_ascii_case("session-expires")
                        || n.trim().eq_ignore_ascii_case("min-se"))
            })
            .header(Header::Other("Session-Expires".into(), theirs.to_string()))
            .header(min_se_header(theirs))
            .build();
        let key = TransactionKey::client(&branch, Method::Invite);
        call.b_invite = retry.clone();
        call.b_invite_key = key.clone();
        self.by_client.insert(key.clone(), (id, Side::B));
        self.arm_timer_c(&key, id, now);
        self.actions.push_back(super::Action::Request {
            key,
            request: retry,
            dest: peer,
        });
        true
    }
}

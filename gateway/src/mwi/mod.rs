//! Message waiting for phones, sans-IO: the RFC 6665 notifier of the RFC 3842
//! `message-summary` event package, and unsolicited NOTIFYs.
//!
//! Inputs: a SUBSCRIBE already authenticated as a device (with the mailbox the device names),
//! the mailboxes' counts (from the state fabric), the final response or timeout of each NOTIFY
//! this core asked for, and `now`. Outputs: the response to each SUBSCRIBE, and NOTIFY requests
//! with their destination ([`MwiCore::poll_notify`]); expiry is a timer as data
//! ([`MwiCore::poll_timeout`], [`MwiCore::handle_timeout`]).
//!
//! Rules: at most one NOTIFY in flight per subscription (a change meanwhile is sent, as the
//! latest state, when it is answered); a NOTIFY answered with an error (481, 408, any failure)
//! or never answered ends the subscription on the spot, and nothing is sent on it again; an
//! expired subscription gets one `terminated;reason=timeout` NOTIFY and is gone whatever its
//! answer; subscriptions are capped per device and in total (over a cap: 403 / 503, counted).

pub mod body;

use crate::sip::builder::{self, RequestBuilder};
use crate::sip::message::{self, Method, Request, Response};
use crate::sip::transaction::parse as tparse;
use body::{Counts, Summary};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use rsip::headers::{Event, UntypedHeader as _};
use rsip::Header;
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

/// The event package.
pub const EVENT: &str = "message-summary";

/// Notifier settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Domain of the `Message-Account` URI and of unsolicited NOTIFYs' From.
    pub realm: String,
    /// Shortest subscription accepted (shorter: 423 with `Min-Expires`).
    pub min_expires: u32,
    /// Longest subscription granted (longer requests are shortened).
    pub max_expires: u32,
    /// Duration of a SUBSCRIBE without `Expires` (RFC 3842 §4: one hour).
    pub default_expires: u32,
    /// Most subscriptions per device (more: 403).
    pub max_per_device: usize,
    /// Most subscriptions in all (more: 503).
    pub max_total: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            realm: String::new(),
            min_expires: 60,
            max_expires: 3600,
            default_expires: 3600,
            max_per_device: 8,
            max_total: 100_000,
        }
    }
}

/// Where the NOTIFYs of a subscription or a contact go, and how our Via and Contact read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target<D> {
    /// The transport destination (the gateway's `Peer`).
    pub dest: D,
    /// Our sent-by (`ip:port` of the listener).
    pub local: String,
    /// Via transport token (`UDP`, `TCP`, `TLS`).
    pub proto: &'static str,
}

/// One NOTIFY to send; report its outcome with [`MwiCore::on_response`].
#[derive(Debug, Clone)]
pub struct Notify<D> {
    /// Its id.
    pub id: NotifyId,
    /// The request.
    pub request: Request,
    /// Where it goes.
    pub dest: D,
}

/// Identifies a NOTIFY this core asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NotifyId(pub u64);

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Subscriptions now active.
    pub active: usize,
    /// SUBSCRIBEs accepted (new subscriptions).
    pub subscribed: u64,
    /// New subscriptions refused over the per-device or total cap.
    pub over_cap: u64,
    /// Subscriptions ended by a NOTIFY's failure response (481, 408, …) or its timeout.
    pub failed: u64,
    /// Subscriptions that expired unrefreshed.
    pub expired: u64,
    /// NOTIFYs sent (in and out of subscriptions).
    pub notifies: u64,
    /// Unsolicited NOTIFYs answered with a failure or never answered.
    pub unsolicited_failed: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct DialogId {
    call_id: String,
    remote_tag: String,
    local_tag: String,
}

#[derive(Debug)]
struct Sub<D> {
    device: String,
    mailbox: String,
    /// Our From in NOTIFYs (their To, with our tag).
    local: String,
    /// Our To in NOTIFYs (their From, with their tag).
    remote: String,
    /// The subscriber's Contact: the NOTIFY's Request-URI.
    contact: String,
    /// Record-Route of the SUBSCRIBE, as Route headers.
    routes: Vec<String>,
    target: Target<D>,
    expires_at: Instant,
    cseq: u32,
    in_flight: Option<NotifyId>,
    /// A change arrived while a NOTIFY was in flight.
    dirty: bool,
    /// Ended: one final `terminated` NOTIFY (pending or in flight), then gone.
    ending: Option<&'static str>,
    /// When the final NOTIFY went out (a safety net removes it after 64 s whatever happens).
    ended_at: Option<Instant>,
}

/// What a NOTIFY in flight belongs to.
#[derive(Debug, Clone)]
enum Owner {
    Sub(DialogId),
    Unsolicited,
}

/// The notifier.
#[derive(Debug)]
pub struct MwiCore<D> {
    cfg: Config,
    subs: HashMap<DialogId, Sub<D>>,
    by_mailbox: HashMap<String, HashSet<DialogId>>,
    mailboxes: HashMap<String, Counts>,
    in_flight: HashMap<NotifyId, Owner>,
    out: VecDeque<Notify<D>>,
    next_id: u64,
    stats: Stats,
    /// Tags, Call-IDs and branches.
    rng: StdRng,
}

/// How long a subscription's final NOTIFY may stay unanswered before it is dropped anyway
/// (the transaction layer reports a timeout after 64·T1 = 32 s by default).
const FINAL_GRACE: Duration = Duration::from_secs(64);

impl<D: Clone> MwiCore<D> {
    /// A notifier without subscriptions.
    pub fn new(cfg: Config) -> Self {
        MwiCore {
            cfg,
            subs: HashMap::new(),
            by_mailbox: HashMap::new(),
            mailboxes: HashMap::new(),
            in_flight: HashMap::new(),
            out: VecDeque::new(),
            next_id: 0,
            stats: Stats::default(),
            rng: StdRng::from_os_rng(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        Stats {
            active: self.subs.values().filter(|s| s.ending.is_none()).count(),
            ..self.stats
        }
    }

    /// The counts known for `mailbox` (`mailbox@context`).
    pub fn mailbox(&self, mailbox: &str) -> Counts {
        self.mailboxes.get(mailbox).copied().unwrap_or_default()
    }

    /// The summary a phone gets for `mailbox`.
    pub fn summary(&self, mailbox: &str) -> Summary {
        let user = mailbox.split('@').next().unwrap_or(mailbox);
        let account = (!self.cfg.realm.is_empty() && !user.is_empty())
            .then(|| format!("sip:{user}@{}", self.cfg.realm));
        Summary::voice(account, self.mailbox(mailbox))
    }

    /// New counts for `mailbox`: a NOTIFY on each of its subscriptions (unless unchanged).
    /// Returns whether they changed (the caller then sends unsolicited NOTIFYs).
    pub fn set_mailbox(&mut self, mailbox: &str, counts: Counts, now: Instant) -> bool {
        if self.mailboxes.get(mailbox) == Some(&counts) {
            return false;
        }
        self.mailboxes.insert(mailbox.to_owned(), counts);
        let ids: Vec<DialogId> = self
            .by_mailbox
            .get(mailbox)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        for id in ids {
            self.notify(&id, now);
        }
        true
    }

    /// A device registered (again): each of its subscriptions gets the current state once
    /// more (a phone that lost its lamp on a re-registration gets it back).
    pub fn device_registered(&mut self, device: &str, now: Instant) {
        let ids: Vec<DialogId> = self
            .subs
            .iter()
            .filter(|(_, s)| s.device == device && s.ending.is_none())
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            self.notify(&id, now);
        }
    }

    /// A SUBSCRIBE from `device` (authenticated) whose mailbox is `mailbox`: the response to
    /// send. Accepted ones queue a NOTIFY with the current state.
    pub fn on_subscribe(
        &mut self,
        req: &Request,
        device: &str,
        mailbox: &str,
        target: Target<D>,
        now: Instant,
    ) -> Response {
        let event = header(req, "Event", Some("o")).unwrap_or_default();
        let package = event.split(';').next().unwrap_or("").trim();
        if package != EVENT {
            let mut r = message::response_for(req, 489, "Bad Event");
            push(&mut r, "Allow-Events", EVENT);
            return r;
        }
        if let Some(accept) = header(req, "Accept", None) {
            let ok = accept.split(',').any(|t| {
                let t = t
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase();
                t == body::CONTENT_TYPE || t == "application/*" || t == "*/*"
            });
            if !ok && !accept.trim().is_empty() {
                let mut r = message::response_for(req, 406, "Not Acceptable");
                push(&mut r, "Accept", body::CONTENT_TYPE);
                return r;
            }
        }
        let requested = match header(req, "Expires", None) {
            None => self.cfg.default_expires,
            Some(v) => match v.trim().parse::<u64>() {
                Ok(n) => u32::try_from(n).unwrap_or(u32::MAX),
                Err(_) => return message::response_for(req, 400, "Bad Expires"),
            },
        };
        if requested != 0 && requested < self.cfg.min_expires {
            let mut r = message::response_for(req, 423, "Interval Too Brief");
            push(&mut r, "Min-Expires", &self.cfg.min_expires.to_string());
            return r;
        }
        let expires = requested.min(self.cfg.max_expires);
        let Some(call_id) = header(req, "Call-ID", Some("i")).map(|c| c.trim().to_owned()) else {
            return message::response_for(req, 400, "Missing Call-ID");
        };
        let from = header(req, "From", Some("f")).unwrap_or_default();
        let to = header(req, "To", Some("t")).unwrap_or_default();
        let Some(remote_tag) = tparse::tag(&from) else {
            return message::response_for(req, 400, "Missing From tag");
        };
        let contact = header(req, "Contact", Some("m"))
            .and_then(|c| message::parse_addresses(&c, true))
            .and_then(|l| l.into_iter().next())
            .map(|a| a.uri);
        if let Some(local_tag) = tparse::tag(&to) {
            // A refresh or an unsubscribe within the dialog.
            let id = DialogId {
                call_id,
                remote_tag,
                local_tag,
            };
            let Some(sub) = self.subs.get_mut(&id).filter(|s| s.ending.is_none()) else {
                return message::response_for(req, 481, "Subscription Does Not Exist");
            };
            if sub.device != device {
                // Another device's dialog: only its own device may refresh or end it.
                return message::response_for(req, 403, "Forbidden");
            }
            if let Some(c) = contact {
                sub.contact = c;
            }
            sub.target = target;
            let mut r = message::response_for(req, 200, "OK");
            push(&mut r, "Expires", &expires.to_string());
            push(&mut r, "Contact", &our_contact(&sub.target));
            if expires == 0 {
                sub.expires_at = now;
                self.end(&id, "timeout", now);
            } else {
                sub.expires_at = now + Duration::from_secs(u64::from(expires));
                self.notify(&id, now);
            }
            return r;
        }
        // A new subscription.
        let Some(contact) = contact else {
            return message::response_for(req, 400, "Missing Contact");
        };
        // A fetch (expires 0, RFC 6665 §4.4.3) is one terminated NOTIFY with the state and no
        // subscription, so the caps do not apply to it.
        if expires != 0 {
            if let Some(r) = self.over_cap(req, device) {
                return r;
            }
        }
        let local_tag = random_tag(&mut self.rng);
        let r = self.accepted(req, &local_tag, expires, &target);
        let id = DialogId {
            call_id,
            remote_tag,
            local_tag: local_tag.clone(),
        };
        self.insert(
            id.clone(),
            device,
            mailbox,
            &to,
            &local_tag,
            from,
            contact,
            req,
            target,
            now,
        );
        if expires == 0 {
            self.end(&id, "timeout", now);
            return r;
        }
        if let Some(s) = self.subs.get_mut(&id) {
            s.expires_at = now + Duration::from_secs(u64::from(expires));
        }
        self.stats.subscribed += 1;
        self.notify(&id, now);
        r
    }

    /// The refusal of a new subscription over the total or the per-device cap (counted).
    fn over_cap(&mut self, req: &Request, device: &str) -> Option<Response> {
        if self.subs.len() >= self.cfg.max_total {
            self.stats.over_cap += 1;
            let mut r = message::response_for(req, 503, "Service Unavailable");
            push(&mut r, "Retry-After", "60");
            return Some(r);
        }
        let of_device = self
            .subs
            .values()
            .filter(|s| s.device == device && s.ending.is_none())
            .count();
        if of_device >= self.cfg.max_per_device {
            self.stats.over_cap += 1;
            let mut r = message::response_for(req, 403, "");
            r.status_code = rsip::StatusCode::Other(403, "Too Many Subscriptions".into());
            push(
                &mut r,
                "Warning",
                &format!(
                    "399 {} \"at most {} message-summary subscriptions per device\"",
                    self.cfg.realm.replace(['"', ' '], ""),
                    self.cfg.max_per_device
                ),
            );
            return Some(r);
        }
        None
    }

    #[allow(clippy::too_many_arguments)]
    fn insert(
        &mut self,
        id: DialogId,
        device: &str,
        mailbox: &str,
        to: &str,
        local_tag: &str,
        from: String,
        contact: String,
        req: &Request,
        target: Target<D>,
        now: Instant,
    ) {
        let routes = headers(req, "Record-Route", None);
        self.by_mailbox
            .entry(mailbox.to_owned())
            .or_default()
            .insert(id.clone());
        self.subs.insert(
            id,
            Sub {
                device: device.to_owned(),
                mailbox: mailbox.to_owned(),
                local: format!("{};tag={local_tag}", to.trim()),
                remote: from.trim().to_owned(),
                contact,
                routes,
                target,
                expires_at: now,
                cseq: 0,
                in_flight: None,
                dirty: false,
                ending: None,
                ended_at: None,
            },
        );
    }

    fn accepted(&self, req: &Request, tag: &str, expires: u32, target: &Target<D>) -> Response {
        let mut r = message::response_with_tag(req, 200, "OK", tag);
        push(&mut r, "Expires", &expires.to_string());
        push(&mut r, "Contact", &our_contact(target));
        r
    }

    /// Unsolicited NOTIFY of `mailbox`'s state to a registered contact of a device that asks
    /// for them (its `aor`; no subscription).
    pub fn unsolicited(&mut self, mailbox: &str, contact: &str, aor: &str, target: Target<D>) {
        let summary = self.summary(mailbox);
        let user = mailbox.split('@').next().unwrap_or(mailbox);
        let id = self.next_notify_id();
        let from = format!(
            "<sip:{user}@{realm}>;tag={tag}",
            realm = self.cfg.realm,
            tag = random_tag(&mut self.rng),
        );
        let (to, call_id) = (
            format!("<{aor}>"),
            format!("{}@{}", random_tag(&mut self.rng), target.local),
        );
        let head = NotifyHead {
            from: &from,
            to: &to,
            call_id: &call_id,
            cseq: 1,
            state: "active",
        };
        let built = build_notify(&mut self.rng, contact, &target, head, &[], &summary);
        if let Some(request) = built {
            self.in_flight.insert(id, Owner::Unsolicited);
            self.stats.notifies += 1;
            self.out.push_back(Notify {
                id,
                request,
                dest: target.dest,
            });
        }
    }

    /// The final response (`Some(code)`) or the timeout / transport failure (`None`) of a
    /// NOTIFY from [`poll_notify`](Self::poll_notify). Returns the device and mailbox of a
    /// subscription this failure ended.
    pub fn on_response(
        &mut self,
        id: NotifyId,
        code: Option<u16>,
        now: Instant,
    ) -> Option<(String, String)> {
        let owner = self.in_flight.remove(&id)?;
        let ok = code.is_some_and(|c| (200..300).contains(&c));
        let dialog = match owner {
            Owner::Unsolicited => {
                if !ok {
                    self.stats.unsolicited_failed += 1;
                }
                return None;
            }
            Owner::Sub(d) => d,
        };
        let sub = self.subs.get_mut(&dialog)?;
        sub.in_flight = None;
        if !ok {
            // RFC 6665 §4.2.2: 481, 408 or a timeout (and any other failure here) remove the
            // subscription at once; nothing more is sent on it.
            let ended = sub
                .ending
                .is_none()
                .then(|| (sub.device.clone(), sub.mailbox.clone()));
            if ended.is_some() {
                self.stats.failed += 1;
            }
            self.remove(&dialog);
            return ended;
        }
        if sub.ending.is_some() {
            if sub.ended_at.is_some() {
                self.remove(&dialog); // the final NOTIFY was answered
            } else {
                self.send_final(&dialog, now);
            }
            return None;
        }
        if std::mem::take(&mut sub.dirty) {
            self.notify(&dialog, now);
        }
        None
    }

    /// When [`handle_timeout`](Self::handle_timeout) has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.subs
            .values()
            .filter_map(|s| match (s.ended_at, s.ending) {
                (Some(t), _) => Some(t + FINAL_GRACE),
                // Ending, its final NOTIFY waiting for the one in flight: no timer of its own.
                (None, Some(_)) => None,
                (None, None) => Some(s.expires_at),
            })
            .min()
    }

    /// Expires subscriptions due at `now` (each gets its final NOTIFY) and drops final
    /// NOTIFYs that were never answered.
    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<DialogId> = self
            .subs
            .iter()
            .filter(|(_, s)| s.ending.is_none() && s.expires_at <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            self.stats.expired += 1;
            self.end(&id, "timeout", now);
        }
        let stale: Vec<DialogId> = self
            .subs
            .iter()
            .filter(|(_, s)| s.ended_at.is_some_and(|t| t + FINAL_GRACE <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in stale {
            self.remove(&id);
        }
    }

    /// The next NOTIFY to send.
    pub fn poll_notify(&mut self) -> Option<Notify<D>> {
        self.out.pop_front()
    }

    /// Ends a subscription: its final NOTIFY now, or once the one in flight is answered.
    fn end(&mut self, id: &DialogId, reason: &'static str, now: Instant) {
        let Some(sub) = self.subs.get_mut(id) else {
            return;
        };
        if sub.ending.is_some() {
            return;
        }
        sub.ending = Some(reason);
        if let Some(set) = self.by_mailbox.get_mut(&sub.mailbox) {
            set.remove(id);
        }
        if sub.in_flight.is_none() {
            self.send_final(id, now);
        }
    }

    fn send_final(&mut self, id: &DialogId, now: Instant) {
        let Some(sub) = self.subs.get_mut(id) else {
            return;
        };
        sub.ended_at = Some(now);
        let state = format!("terminated;reason={}", sub.ending.unwrap_or("timeout"));
        self.send(id, &state);
    }

    /// A NOTIFY with the current state on a live subscription (or later, if one is in flight).
    fn notify(&mut self, id: &DialogId, now: Instant) {
        let Some(sub) = self.subs.get_mut(id) else {
            return;
        };
        if sub.ending.is_some() {
            return;
        }
        if sub.in_flight.is_some() {
            sub.dirty = true;
            return;
        }
        // Rounded up, so a live subscription never reads `expires=0`.
        let left = sub.expires_at.saturating_duration_since(now);
        let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
        let state = format!("active;expires={}", secs.max(1));
        self.send(id, &state);
    }

    fn send(&mut self, id: &DialogId, state: &str) {
        let summary = {
            let Some(sub) = self.subs.get(id) else {
                return;
            };
            self.summary(&sub.mailbox)
        };
        let nid = self.next_notify_id();
        let Some(sub) = self.subs.get_mut(id) else {
            return;
        };
        sub.cseq += 1;
        let head = NotifyHead {
            from: &sub.local,
            to: &sub.remote,
            call_id: &id.call_id,
            cseq: sub.cseq,
            state,
        };
        let built = build_notify(
            &mut self.rng,
            &sub.contact,
            &sub.target,
            head,
            &sub.routes,
            &summary,
        );
        match built {
            Some(request) => {
                sub.in_flight = Some(nid);
                self.in_flight.insert(nid, Owner::Sub(id.clone()));
                self.stats.notifies += 1;
                self.out.push_back(Notify {
                    id: nid,
                    request,
                    dest: sub.target.dest.clone(),
                });
            }
            None => {
                // A contact we cannot write a request to: the subscription cannot work.
                self.remove(id);
            }
        }
    }

    fn remove(&mut self, id: &DialogId) {
        if let Some(sub) = self.subs.remove(id) {
            if let Some(set) = self.by_mailbox.get_mut(&sub.mailbox) {
                set.remove(id);
                if set.is_empty() {
                    self.by_mailbox.remove(&sub.mailbox);
                }
            }
            if let Some(n) = sub.in_flight {
                self.in_flight.remove(&n);
            }
        }
    }

    fn next_notify_id(&mut self) -> NotifyId {
        self.next_id += 1;
        NotifyId(self.next_id)
    }
}

/// Our Contact in 2xx responses to SUBSCRIBE.
fn our_contact(t: &Target<impl Clone>) -> String {
    match t.proto {
        "UDP" => format!("<sip:{}>", t.local),
        p => format!("<sip:{};transport={}>", t.local, p.to_ascii_lowercase()),
    }
}

/// The dialog fields of a NOTIFY.
struct NotifyHead<'a> {
    from: &'a str,
    to: &'a str,
    call_id: &'a str,
    cseq: u32,
    state: &'a str,
}

/// A NOTIFY, built by the one request builder; None when `uri` is not a URI we can send to.
fn build_notify<D: Clone>(
    rng: &mut StdRng,
    uri: &str,
    target: &Target<D>,
    head: NotifyHead<'_>,
    routes: &[String],
    summary: &Summary,
) -> Option<Request> {
    let branch = builder::branch(rng, "");
    let via = builder::via(target.proto, &target.local, &branch);
    let req = RequestBuilder::new(Method::Notify, builder::parse_uri(uri).ok()?, via)
        .routes(routes.iter().cloned())
        .from(head.from, None)
        .to(head.to, None)
        .call_id(head.call_id)
        .cseq(head.cseq)
        .contact(our_contact(target))
        .header(Header::Event(Event::new(EVENT)))
        .header(Header::Other(
            "Subscription-State".into(),
            head.state.to_owned(),
        ))
        .body(summary.to_body().into_bytes(), body::CONTENT_TYPE)
        .build();
    Some(req)
}

fn random_tag(rng: &mut StdRng) -> String {
    format!("{:016x}", rng.next_u64())
}

/// Values of header `name` (or its compact form), in order; comma lists kept whole.
fn headers(req: &Request, name: &str, compact: Option<&str>) -> Vec<String> {
    req.headers
        .iter()
        .filter_map(|h| {
            let text = h.to_string();
            let (n, v) = text.split_once(':')?;
            let n = n.trim();
            (n.eq_ignore_ascii_case(name) || compact.is_some_and(|c| n.eq_ignore_ascii_case(c)))
                .then(|| v.trim().to_owned())
        })
        .collect()
}

/// The first value of header `name`.
fn header(req: &Request, name: &str, compact: Option<&str>) -> Option<String> {
    headers(req, name, compact).into_iter().next()
}

fn push(r: &mut Response, name: &str, value: &str) {
    r.headers
        .push(rsip::Header::Other(name.to_owned(), value.to_owned()));
}

#[cfg(test)]
mod tests;

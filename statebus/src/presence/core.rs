//! The presence component's logic, sans-IO: stanzas in, stanzas out, time passed in.
//!
//! Contacts are `<node>@<component>`: `node` is a device key without the configured prefix,
//! lower-cased (`PJSIP/1000` → `1000@agents.example.com`); the agent logged in at that device
//! is shown on the same JID. A supervisor's `subscribe` is answered `subscribed` plus the
//! current presence (the supervisor's server then pushes the roster item to its clients), a
//! `probe` with the current presence (or `unsubscribed` to a non-subscriber), `unsubscribe`
//! with `unavailable`; every change is sent to every subscriber of the contact.

pub use super::out::{Out, Presence};
use super::render::{next_tick, render, AgentInfo, Pause, Rendered};
use super::store::Subscriptions;
use super::AgentInput;
use crate::DeviceState;
use minidom::rxml::NcName;
use minidom::{Element, ElementBuilder};
use std::collections::HashMap;
use std::time::Instant;
use tokio_xmpp::jid::Jid;

/// The component stream's namespace (XEP-0114).
pub const NS: &str = "jabber:component:accept";
const NS_DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
const NS_PING: &str = "urn:xmpp:ping";
const NS_STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
/// The resource our contacts' available presence comes from.
pub const RESOURCE: &str = "fabric";
/// Most subscriptions kept in all (more are refused with `unsubscribed` and counted).
pub const MAX_SUBSCRIPTIONS: usize = 100_000;
/// Longest contact node accepted (bytes).
pub const MAX_NODE: usize = 64;

/// Counters of the presence component.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PresenceStats {
    /// Subscriptions held now.
    pub subscriptions: usize,
    /// Presence stanzas sent for contacts (changes, probes, subscriptions).
    pub presences_sent: u64,
    /// Subscriptions refused (not allowed, bad contact, over [`MAX_SUBSCRIPTIONS`]).
    pub refused: u64,
    /// Stanzas ignored as malformed (bad JIDs, unknown types).
    pub ignored: u64,
    /// Stanzas the stanza guard replaced (over a size, depth or token bound).
    pub stanzas_dropped: u64,
    /// Agent inputs dropped because the component's queue was full.
    pub inputs_dropped: u64,
    /// Successful logins to the server.
    pub connects: u64,
}

/// The presence component's state.
#[derive(Debug)]
pub struct Core {
    component: String,
    prefix: String,
    allow: Vec<String>,
    subs: Subscriptions,
    devices: HashMap<String, DeviceState>,
    agents: HashMap<String, AgentInfo>,
    sent: HashMap<String, Rendered>,
    store_dirty: bool,
    stats: PresenceStats,
}

fn builder(name: &str) -> ElementBuilder {
    Element::builder(name, NS)
}

/// Adds an attribute (the names are constants, always valid NCNames).
fn attr(b: ElementBuilder, name: &str, value: &str) -> ElementBuilder {
    match NcName::try_from(name) {
        Ok(n) => b.attr(n, value),
        Err(_) => b,
    }
}

impl Core {
    /// A component `component` (e.g. `agents.example.com`) showing devices `prefix<node>`;
    /// `allow`: bare JIDs or domains whose users may subscribe (empty: the component's
    /// parent domain).
    pub fn new(component: &str, prefix: &str, allow: Vec<String>, subs: Subscriptions) -> Core {
        let allow = if allow.is_empty() {
            vec![component
                .split_once('.')
                .map(|(_, d)| d)
                .unwrap_or(component)
                .to_string()]
        } else {
            allow.into_iter().map(|a| a.to_lowercase()).collect()
        };
        let count = subs.values().map(|s| s.len()).sum();
        Core {
            component: component.to_string(),
            prefix: prefix.to_string(),
            allow,
            subs,
            devices: HashMap::new(),
            agents: HashMap::new(),
            sent: HashMap::new(),
            store_dirty: false,
            stats: PresenceStats {
                subscriptions: count,
                ..PresenceStats::default()
            },
        }
    }

    /// Counters.
    pub fn stats(&self) -> PresenceStats {
        self.stats
    }

    /// Mutable counters (the IO side counts drops and connects).
    pub fn stats_mut(&mut self) -> &mut PresenceStats {
        &mut self.stats
    }

    /// The subscriptions now.
    pub fn subscriptions(&self) -> &Subscriptions {
        &self.subs
    }

    /// `true` once after the subscriptions changed (the caller persists them).
    pub fn take_store_dirty(&mut self) -> bool {
        std::mem::take(&mut self.store_dirty)
    }

    /// The contact node of a device key, if it is one of ours and a valid JID node.
    pub fn node_of(&self, key: &str) -> Option<String> {
        let rest = if key.len() >= self.prefix.len()
            && key
                .get(..self.prefix.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(&self.prefix))
        {
            key.get(self.prefix.len()..)?
        } else {
            return None;
        };
        valid_node(rest).then(|| rest.to_lowercase())
    }

    fn contact(&self, node: &str) -> String {
        format!("{node}@{}", self.component)
    }

    fn rendering(&self, node: &str, now: Instant) -> Rendered {
        render(self.devices.get(node).copied(), self.agents.get(node), now)
    }

    fn presence(&mut self, node: &str, to: &str, r: &Rendered) -> Out {
        self.stats.presences_sent += 1;
        Out::Presence(Presence {
            from: format!("{}/{RESOURCE}", self.contact(node)),
            to: to.to_string(),
            kind: (!r.available).then_some("unavailable"),
            show: r.show.as_xml(),
            status: Some(r.status.clone()),
        })
    }

    fn typed(&self, node: &str, to: &str, ty: &'static str) -> Out {
        self.typed_raw(&self.contact(node), to, ty)
    }

    /// Sends the contact's presence to its subscribers if it changed since last sent.
    fn refresh(&mut self, node: &str, now: Instant, out: &mut Vec<Out>) {
        let Some(subs) = self.subs.get(node) else {
            return;
        };
        let r = self.rendering(node, now);
        if self.sent.get(node) == Some(&r) {
            return;
        }
        let subs: Vec<String> = subs.iter().cloned().collect();
        for s in &subs {
            let p = self.presence(node, s, &r);
            out.push(p);
        }
        self.sent.insert(node.to_string(), r);
    }

    /// Seed or resynchronise device states (a bus snapshot) without sending anything
    /// for unchanged contacts.
    pub fn devices(
        &mut self,
        all: impl IntoIterator<Item = (String, DeviceState)>,
        now: Instant,
    ) -> Vec<Out> {
        let mut out = Vec::new();
        let mut touched = Vec::new();
        for (key, st) in all {
            if let Some(node) = self.node_of(&key) {
                self.devices.insert(node.clone(), st);
                touched.push(node);
            }
        }
        for n in touched {
            self.refresh(&n, now, &mut out);
        }
        out
    }

    /// A device's aggregate changed on the bus.
    pub fn device_changed(&mut self, key: &str, state: DeviceState, now: Instant) -> Vec<Out> {
        let mut out = Vec::new();
        if let Some(node) = self.node_of(key) {
            self.devices.insert(node.clone(), state);
            self.refresh(&node, now, &mut out);
        }
        out
    }

    /// Something the ACD side says about an agent.
    pub fn agent(&mut self, input: AgentInput, now: Instant) -> Vec<Out> {
        let mut out = Vec::new();
        let Some(node) = self.node_of(input.device()) else {
            self.stats.ignored += 1;
            return out;
        };
        let a = self.agents.entry(node.clone()).or_default();
        match input {
            AgentInput::Paused { reason, since, .. } => {
                a.paused = Some(Pause {
                    reason,
                    since: since.unwrap_or(now),
                })
            }
            AgentInput::Unpaused { .. } => a.paused = None,
            AgentInput::WrapUp { queue, .. } => a.wrapup = Some(queue),
            AgentInput::WrapUpEnded { .. } => a.wrapup = None,
            AgentInput::Queue { queue, .. } => a.queue = queue,
        }
        if *a == AgentInfo::default() {
            self.agents.remove(&node);
        }
        self.refresh(&node, now, &mut out);
        out
    }

    /// Connected (again): every subscriber gets every contact's current presence.
    pub fn online(&mut self, now: Instant) -> Vec<Out> {
        self.sent.clear();
        let nodes: Vec<String> = self.subs.keys().cloned().collect();
        let mut out = Vec::new();
        for n in nodes {
            self.refresh(&n, now, &mut out);
        }
        out
    }

    /// The next time a shown pause duration changes.
    pub fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        self.agents
            .iter()
            .filter(|(n, _)| self.subs.contains_key(*n))
            .filter_map(|(_, a)| next_tick(Some(a), now))
            .min()
    }

    /// Time passed: refresh pause durations.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<Out> {
        let nodes: Vec<String> = self
            .agents
            .iter()
            .filter(|(_, a)| a.paused.is_some())
            .map(|(n, _)| n.clone())
            .collect();
        let mut out = Vec::new();
        for n in nodes {
            self.refresh(&n, now, &mut out);
        }
        out
    }

    fn allowed(&self, who: &Jid) -> bool {
        let bare = who.to_bare().to_string().to_lowercase();
        let domain = who.domain().as_str().to_lowercase();
        self.allow.iter().any(|a| *a == bare || *a == domain)
    }

    /// A stanza from the server.
    pub fn handle_stanza(&mut self, el: &Element, now: Instant) -> Vec<Out> {
        let mut out = Vec::new();
        if !el.has_ns(NS) {
            self.stats.ignored += 1;
            return out;
        }
        match el.name() {
            "presence" => self.on_presence(el, now, &mut out),
            "iq" => self.on_iq(el, &mut out),
            _ => {} // messages: nothing to say
        }
        out
    }

    fn on_presence(&mut self, el: &Element, now: Instant, out: &mut Vec<Out>) {
        let (Some(from), Some(to)) = (
            el.attr("from").and_then(|f| f.parse::<Jid>().ok()),
            el.attr("to").and_then(|t| t.parse::<Jid>().ok()),
        ) else {
            self.stats.ignored += 1;
            return;
        };
        if !to.domain().as_str().eq_ignore_ascii_case(&self.component) {
            self.stats.ignored += 1;
            return;
        }
        let node = to.node().map(|n| n.as_str().to_lowercase());
        let bare = from.to_bare().to_string();
        match el.attr("type") {
            Some("subscribe") => {
                let Some(node) = node.filter(|n| valid_node(n)) else {
                    self.stats.refused += 1;
                    out.push(self.typed_raw(&to.to_bare().to_string(), &bare, "unsubscribed"));
                    return;
                };
                let have = self.subs.get(&node).is_some_and(|s| s.contains(&bare));
                if !have && (!self.allowed(&from) || self.stats.subscriptions >= MAX_SUBSCRIPTIONS)
                {
                    self.stats.refused += 1;
                    out.push(self.typed(&node, &bare, "unsubscribed"));
                    return;
                }
                if !have {
                    self.subs
                        .entry(node.clone())
                        .or_default()
                        .insert(bare.clone());
                    self.stats.subscriptions += 1;
                    self.store_dirty = true;
                }
                out.push(self.typed(&node, &bare, "subscribed"));
                let r = self.rendering(&node, now);
                let p = self.presence(&node, &bare, &r);
                out.push(p);
            }
            Some("unsubscribe") => {
                let Some(node) = node else { return };
                let removed = self.subs.get_mut(&node).is_some_and(|s| s.remove(&bare));
                if removed {
                    if self.subs.get(&node).is_some_and(|s| s.is_empty()) {
                        self.subs.remove(&node);
                        self.sent.remove(&node);
                    }
                    self.stats.subscriptions -= 1;
                    self.store_dirty = true;
                }
                out.push(self.typed(&node, &bare, "unsubscribed"));
                let off = Rendered {
                    available: false,
                    show: super::render::Show::Online,
                    status: String::new(),
                };
                let mut p = self.presence(&node, &bare, &off);
                if let Out::Presence(p) = &mut p {
                    p.status = None;
                }
                out.push(p);
            }
            Some("probe") => {
                let Some(node) = node else { return };
                if self.subs.get(&node).is_some_and(|s| s.contains(&bare)) {
                    let r = self.rendering(&node, now);
                    let p = self.presence(&node, &from.to_string(), &r);
                    out.push(p);
                } else {
                    out.push(self.typed(&node, &bare, "unsubscribed"));
                }
            }
            // subscribed / unsubscribed (we subscribe to nobody), directed availability,
            // errors: nothing to do.
            Some("subscribed" | "unsubscribed" | "unavailable" | "error") | None => {}
            Some(_) => self.stats.ignored += 1,
        }
    }

    fn typed_raw(&self, from: &str, to: &str, ty: &'static str) -> Out {
        Out::Presence(Presence {
            from: from.to_string(),
            to: to.to_string(),
            kind: Some(ty),
            show: None,
            status: None,
        })
    }

    fn on_iq(&mut self, el: &Element, out: &mut Vec<Out>) {
        let (Some(from), Some(to)) = (el.attr("from"), el.attr("to")) else {
            self.stats.ignored += 1;
            return;
        };
        let id = el.attr("id").unwrap_or("");
        let ty = el.attr("type").unwrap_or("");
        if ty != "get" && ty != "set" {
            return; // results and errors (our pings' answers)
        }
        let reply = |ty: &str| {
            attr(
                attr(attr(attr(builder("iq"), "type", ty), "id", id), "from", to),
                "to",
                from,
            )
        };
        let payload = el.children().next();
        match payload {
            Some(p) if ty == "get" && p.is("ping", NS_PING) => {
                out.push(Out::Stanza(reply("result").build()))
            }
            Some(p) if ty == "get" && p.is("query", NS_DISCO_INFO) => {
                let mut ident = Element::builder("identity", NS_DISCO_INFO);
                for (k, v) in [
                    ("category", "gateway"),
                    ("type", "presence"),
                    ("name", "callfabric agents"),
                ] {
                    ident = attr(ident, k, v);
                }
                let mut q = Element::builder("query", NS_DISCO_INFO).append(ident.build());
                for f in [NS_DISCO_INFO, NS_PING] {
                    q = q
                        .append(attr(Element::builder("feature", NS_DISCO_INFO), "var", f).build());
                }
                out.push(Out::Stanza(reply("result").append(q.build()).build()));
            }
            _ => {
                let cond = Element::builder("service-unavailable", NS_STANZAS).build();
                let err = attr(builder("error"), "type", "cancel")
                    .append(cond)
                    .build();
                out.push(Out::Stanza(reply("error").append(err).build()));
            }
        }
    }
}

/// A device name usable as a JID node: not empty, at most [`MAX_NODE`] bytes, none of the
/// characters RFC 7622 forbids in a localpart, no white space or control characters.
pub fn valid_node(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NODE
        && !s
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "\"&'/:<>@".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn stanza(xml: &str) -> Element {
        xml.parse().expect("test stanza")
    }

    fn presence(ty: &str, from: &str, to: &str) -> Element {
        stanza(&format!(
            "<presence xmlns='{NS}' type='{ty}' from='{from}' to='{to}'/>"
        ))
    }

    fn core() -> Core {
        Core::new("agents.test", "PJSIP/", Vec::new(), Subscriptions::new())
    }

    fn status(out: &Out) -> String {
        out.to_element()
            .get_child("status", NS)
            .map(|s| s.text())
            .unwrap_or_default()
    }

    #[test]
    fn subscribe_probe_unsubscribe_and_refusals() {
        let t0 = Instant::now();
        let mut c = core();
        c.device_changed("PJSIP/1000", DeviceState::InUse, t0);
        let out = c.handle_stanza(
            &presence("subscribe", "boss@test/desk", "1000@agents.test"),
            t0,
        );
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[0].attr("type"), Some("subscribed"));
        assert_eq!(out[0].attr("to"), Some("boss@test"));
        assert_eq!(out[1].attr("from"), Some("1000@agents.test/fabric"));
        assert_eq!(status(&out[1]), "On call");
        assert!(c.take_store_dirty());
        assert!(!c.take_store_dirty());
        // a change goes to the subscriber once; an unchanged rendering is not resent
        let out = c.device_changed("PJSIP/1000", DeviceState::NotInUse, t0);
        assert_eq!(out.len(), 1);
        assert!(c
            .device_changed("PJSIP/1000", DeviceState::NotInUse, t0)
            .is_empty());
        assert!(c
            .device_changed("SIP/other", DeviceState::InUse, t0)
            .is_empty());
        // probes: the subscriber gets presence, a stranger `unsubscribed`
        let out = c.handle_stanza(&presence("probe", "boss@test", "1000@agents.test"), t0);
        assert_eq!(status(&out[0]), "Available");
        let out = c.handle_stanza(&presence("probe", "eve@test", "1000@agents.test"), t0);
        assert_eq!(out[0].attr("type"), Some("unsubscribed"));
        // outside `allow` (another domain), a bad node, a foreign domain: refused / ignored
        let out = c.handle_stanza(
            &presence("subscribe", "eve@evil.test", "1000@agents.test"),
            t0,
        );
        assert_eq!(out[0].attr("type"), Some("unsubscribed"));
        let out = c.handle_stanza(&presence("subscribe", "boss@test", "agents.test"), t0);
        assert_eq!(out[0].attr("type"), Some("unsubscribed"));
        assert!(c
            .handle_stanza(&presence("subscribe", "boss@test", "1000@other.test"), t0)
            .is_empty());
        assert_eq!(c.stats().refused, 2);
        assert_eq!(c.stats().subscriptions, 1);
        // unsubscribe: `unsubscribed` + unavailable, then nothing more
        let out = c.handle_stanza(
            &presence("unsubscribe", "boss@test", "1000@agents.test"),
            t0,
        );
        assert_eq!(out[1].attr("type"), Some("unavailable"));
        assert!(c.take_store_dirty());
        assert!(c
            .device_changed("PJSIP/1000", DeviceState::Ringing, t0)
            .is_empty());
        assert_eq!(c.stats().subscriptions, 0);
    }

    #[test]
    fn pause_minutes_advance_in_virtual_time() {
        let t0 = Instant::now();
        let mut c = core();
        c.device_changed("PJSIP/7", DeviceState::NotInUse, t0);
        c.handle_stanza(&presence("subscribe", "boss@test", "7@agents.test"), t0);
        assert_eq!(c.poll_timeout(t0), None);
        let out = c.agent(
            AgentInput::Paused {
                device: "PJSIP/7".into(),
                reason: "Lunch".into(),
                since: None,
            },
            t0,
        );
        assert_eq!(status(&out[0]), "Paused: Lunch 0m");
        assert_eq!(
            out[0].to_element().get_child("show", NS).map(|s| s.text()),
            Some("dnd".into())
        );
        let due = c.poll_timeout(t0).expect("a minute tick");
        assert_eq!(due, t0 + Duration::from_secs(60));
        assert!(c.handle_timeout(t0 + Duration::from_secs(59)).is_empty());
        let out = c.handle_timeout(due);
        assert_eq!(status(&out[0]), "Paused: Lunch 1m");
        let out = c.agent(
            AgentInput::Unpaused {
                device: "PJSIP/7".into(),
            },
            due,
        );
        assert_eq!(status(&out[0]), "Available");
        assert_eq!(c.poll_timeout(due), None);
    }

    #[test]
    fn iqs_get_an_answer_and_bounds_hold() {
        let t0 = Instant::now();
        let mut c = core();
        let q = |body: &str| {
            stanza(&format!(
                "<iq xmlns='{NS}' type='get' id='q1' from='boss@test/desk' to='agents.test'>{body}</iq>"
            ))
        };
        let out = c.handle_stanza(&q("<ping xmlns='urn:xmpp:ping'/>"), t0);
        assert_eq!(out[0].attr("type"), Some("result"));
        assert_eq!(out[0].attr("id"), Some("q1"));
        let out = c.handle_stanza(
            &q("<query xmlns='http://jabber.org/protocol/disco#info'/>"),
            t0,
        );
        assert!(out[0]
            .to_element()
            .children()
            .next()
            .is_some_and(|q| q.children().count() >= 2));
        let out = c.handle_stanza(&q("<vcard xmlns='vcard-temp'/>"), t0);
        assert_eq!(out[0].attr("type"), Some("error"));
        // results are not answered (no ping-pong)
        let r = stanza(&format!(
            "<iq xmlns='{NS}' type='result' id='p' from='test' to='agents.test'/>"
        ));
        assert!(c.handle_stanza(&r, t0).is_empty());
        // malformed JIDs are counted, never answered
        assert!(c
            .handle_stanza(&presence("subscribe", "@@", "1000@agents.test"), t0)
            .is_empty());
        assert_eq!(c.stats().ignored, 1);
        // the subscription bound
        let mut full = core();
        full.stats.subscriptions = MAX_SUBSCRIPTIONS;
        let out = full.handle_stanza(&presence("subscribe", "boss@test", "1@agents.test"), t0);
        assert_eq!(out[0].attr("type"), Some("unsubscribed"));
        assert!(!valid_node(&"x".repeat(MAX_NODE + 1)));
        assert!(!valid_node("a/b") && !valid_node("") && valid_node("1000"));
    }
}

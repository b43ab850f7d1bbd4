//! Callers waiting in ACD queues, as fabric records: what lets ACD nodes that serve one queue
//! offer agents in one global order (ARCHITECTURE.md, *One queue over several ACD nodes*).
//!
//! Each ACD node publishes one item per caller waiting at it on the flat PubSub node
//! [`NODE_WAITING`]: item id `EID/queue/caller`, payload
//! `<waiting xmlns='urn:callfabric:acd:waiting:0' eid='…' queue='…' caller='…' priority='0'
//! joined='<unix ms>'/>`. A caller that leaves (connected, abandoned, moved) is overwritten with
//! a tombstone (`gone='1'`, the same item id: a publish is notified by every server) and then
//! retracted (housekeeping). The [`WaitingTable`] keeps this member's records and everyone
//! else's, sans-IO and bounded ([`MAX_RECORDS`], [`MAX_FIELD`]; what is over is dropped and
//! counted). Only `statebus` knows this wire format; ACD nodes see [`WaitingCaller`]s.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};

use minidom::Element;

use crate::wire::{self, BuildError, NS_PUBSUB, NS_PUBSUB_EVENT};
use crate::Eid;

/// The PubSub node of waiting callers (flat, one item per caller).
pub const NODE_WAITING: &str = "acd_waiting";
/// Namespace of the `<waiting>` payload.
pub const NS_WAITING: &str = "urn:callfabric:acd:waiting:0";
/// Remote records held at most; newer ones beyond are dropped and counted.
pub const MAX_RECORDS: usize = 10_000;
/// Longest queue name or caller id accepted (bytes).
pub const MAX_FIELD: usize = 256;

/// One caller waiting in a queue at some ACD node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WaitingCaller {
    /// Queue name, lowercase (queues match case-insensitively).
    pub queue: String,
    /// The caller's id in the queue (queue_log callid).
    pub caller: String,
    /// Queue priority (higher first).
    pub priority: i32,
    /// Original join time, unix milliseconds (kept when a caller moves between nodes).
    pub joined_ms: u64,
    /// The ACD node holding the caller.
    pub eid: Eid,
}

/// Place in the global order: priority (higher first), then original join time, then the
/// node's EID, then the caller id (a deterministic tie-break every node computes alike).
pub type OrderKey = (Reverse<i32>, u64, Eid, String);

impl WaitingCaller {
    /// A record; the queue name is lowercased.
    pub fn new(queue: &str, caller: &str, priority: i32, joined_ms: u64, eid: Eid) -> Self {
        WaitingCaller {
            queue: queue.to_ascii_lowercase(),
            caller: caller.to_owned(),
            priority,
            joined_ms,
            eid,
        }
    }

    /// Its item id: `EID/queue/caller`.
    pub fn item_id(&self) -> String {
        item_id(self.eid, &self.queue, &self.caller)
    }

    /// Its place in the global order.
    pub fn order(&self) -> OrderKey {
        (
            Reverse(self.priority),
            self.joined_ms,
            self.eid,
            self.caller.clone(),
        )
    }
}

/// The item id of a record.
pub fn item_id(eid: Eid, queue: &str, caller: &str) -> String {
    format!("{eid}/{}/{caller}", queue.to_ascii_lowercase())
}

/// The `<pubsub>` child of the IQ that publishes `w`.
pub fn publish(w: &WaitingCaller) -> Result<Element, BuildError> {
    let payload = format!(
        "<waiting xmlns='{NS_WAITING}' eid='{}' queue='{}' caller='{}' priority='{}' joined='{}'/>",
        w.eid,
        wire::escape(&w.queue),
        wire::escape(&w.caller),
        w.priority,
        w.joined_ms
    );
    wire::parse(&wire::publish_xml(NODE_WAITING, &w.item_id(), &payload))
}

/// The `<pubsub>` child of the IQ that overwrites a record with a tombstone.
pub fn tombstone(eid: Eid, queue: &str, caller: &str) -> Result<Element, BuildError> {
    let queue = queue.to_ascii_lowercase();
    let payload = format!(
        "<waiting xmlns='{NS_WAITING}' eid='{eid}' queue='{}' caller='{}' gone='1'/>",
        wire::escape(&queue),
        wire::escape(caller),
    );
    wire::parse(&wire::publish_xml(
        NODE_WAITING,
        &item_id(eid, &queue, caller),
        &payload,
    ))
}

/// The `<pubsub>` child of the IQ that retracts a record (after its tombstone).
pub fn retract(item_id: &str) -> Result<Element, BuildError> {
    wire::retract(NODE_WAITING, item_id)
}

/// One decoded item of [`NODE_WAITING`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitingItem {
    /// A caller waits.
    Put(WaitingCaller),
    /// The record with this item id is gone (tombstone or retraction).
    Gone(String),
    /// Malformed, over a bound, or not ours to read. Never an error.
    Ignored(String),
}

fn field(el: &Element, name: &str) -> Result<String, String> {
    let v = el.attr(name).ok_or_else(|| format!("no {name}"))?;
    if v.is_empty() || v.len() > MAX_FIELD || v.contains('/') && name == "queue" {
        return Err(format!("bad {name}"));
    }
    Ok(v.to_owned())
}

/// Decode one `<item>`: its payload must name exactly its item id.
pub fn decode_item(item: &Element) -> WaitingItem {
    let Some(id) = item.attr("id").filter(|i| !i.is_empty()) else {
        return WaitingItem::Ignored("item without id".into());
    };
    let Some(p) = item.children().find(|c| c.is("waiting", NS_WAITING)) else {
        return WaitingItem::Ignored("no waiting payload".into());
    };
    let read = || -> Result<WaitingItem, String> {
        let eid: Eid = p
            .attr("eid")
            .ok_or("no eid")?
            .parse()
            .map_err(|_| "bad eid")?;
        let queue = field(p, "queue")?;
        let caller = field(p, "caller")?;
        if queue != queue.to_ascii_lowercase() {
            return Err("queue not lowercase".into());
        }
        if item_id(eid, &queue, &caller) != id {
            return Err("item id does not match its payload".into());
        }
        if p.attr("gone") == Some("1") {
            return Ok(WaitingItem::Gone(id.to_owned()));
        }
        let priority = p
            .attr("priority")
            .and_then(|v| v.parse().ok())
            .ok_or("bad priority")?;
        let joined_ms = p
            .attr("joined")
            .and_then(|v| v.parse().ok())
            .ok_or("bad joined")?;
        Ok(WaitingItem::Put(WaitingCaller {
            queue,
            caller,
            priority,
            joined_ms,
            eid,
        }))
    };
    read().unwrap_or_else(WaitingItem::Ignored)
}

/// The items of a PubSub `<event>` for [`NODE_WAITING`]; `None` when the event is for another
/// node (or not an event). Retractions are [`WaitingItem::Gone`].
pub fn decode_event(event: &Element) -> Option<Vec<WaitingItem>> {
    if !event.is("event", NS_PUBSUB_EVENT) {
        return None;
    }
    let items = event
        .children()
        .find(|c| c.name() == "items" && c.attr("node") == Some(NODE_WAITING))?;
    Some(
        items
            .children()
            .map(|it| match it.name() {
                "item" => decode_item(it),
                "retract" => match it.attr("id") {
                    Some(id) if !id.is_empty() => WaitingItem::Gone(id.to_owned()),
                    _ => WaitingItem::Ignored("retract without id".into()),
                },
                other => WaitingItem::Ignored(format!("{other} in items")),
            })
            .collect(),
    )
}

/// The items of an items result (`<pubsub><items node='acd_waiting'>…`).
pub fn decode_items_result(pubsub: &Element) -> Vec<WaitingItem> {
    if !pubsub.is("pubsub", NS_PUBSUB) {
        return Vec::new();
    }
    pubsub
        .children()
        .filter(|c| c.name() == "items" && c.attr("node") == Some(NODE_WAITING))
        .flat_map(|items| items.children().filter(|c| c.name() == "item"))
        .map(decode_item)
        .collect()
}

/// This member's waiting records and everyone else's. Sans-IO.
#[derive(Debug, Default)]
pub struct WaitingTable {
    local: BTreeMap<String, WaitingCaller>,
    remote: HashMap<String, WaitingCaller>,
    dropped: u64,
}

impl WaitingTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// A local caller waits (or its record changed). Returns its item id.
    pub fn set_local(&mut self, w: WaitingCaller) -> String {
        let id = w.item_id();
        self.local.insert(id.clone(), w);
        id
    }

    /// A local caller left; returns its item id (to withdraw) when it was held.
    pub fn remove_local(&mut self, eid: Eid, queue: &str, caller: &str) -> Option<String> {
        let id = item_id(eid, queue, caller);
        self.local.remove(&id).map(|_| id)
    }

    /// A local record by item id.
    pub fn local(&self, id: &str) -> Option<&WaitingCaller> {
        self.local.get(id)
    }

    /// Item ids of every local record.
    pub fn local_ids(&self) -> Vec<String> {
        self.local.keys().cloned().collect()
    }

    /// Apply items heard from the fabric; items of `own` are skipped (ours are local). Returns
    /// whether anything changed.
    pub fn apply(&mut self, own: Eid, items: impl IntoIterator<Item = WaitingItem>) -> bool {
        let mut changed = false;
        for it in items {
            match it {
                WaitingItem::Put(w) if w.eid == own => {}
                WaitingItem::Put(w) => {
                    let id = w.item_id();
                    if !self.remote.contains_key(&id) && self.remote.len() >= MAX_RECORDS {
                        self.dropped += 1;
                        continue;
                    }
                    if self.remote.get(&id) != Some(&w) {
                        self.remote.insert(id, w);
                        changed = true;
                    }
                }
                WaitingItem::Gone(id) => changed |= self.remote.remove(&id).is_some(),
                WaitingItem::Ignored(_) => {}
            }
        }
        changed
    }

    /// Forget every remote record (before applying a full fetch).
    pub fn clear_remote(&mut self) -> bool {
        let had = !self.remote.is_empty();
        self.remote.clear();
        had
    }

    /// Every record, local and remote, of members for which `alive` holds (local ones always).
    pub fn all(&self, alive: impl Fn(Eid) -> bool) -> Vec<WaitingCaller> {
        let mut v: Vec<WaitingCaller> = self.local.values().cloned().collect();
        v.extend(self.remote.values().filter(|w| alive(w.eid)).cloned());
        v
    }

    /// Remote records dropped because [`MAX_RECORDS`] were held.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eid(n: u8) -> Eid {
        Eid([2, 0, 0, 0, 0, n])
    }

    fn event(inner: &str) -> Element {
        format!(
            "<event xmlns='{NS_PUBSUB_EVENT}'><items node='{NODE_WAITING}'>{inner}</items></event>"
        )
        .parse()
        .unwrap()
    }

    #[test]
    fn a_published_record_reads_back_and_a_tombstone_removes_it() {
        let w = WaitingCaller::new("Support", "gw-1<&>'x", -3, 1_733_000_000_123, eid(1));
        assert_eq!(w.queue, "support");
        let el = publish(&w).unwrap();
        let item = el
            .children()
            .next()
            .unwrap()
            .children()
            .next()
            .unwrap()
            .clone();
        assert_eq!(decode_item(&item), WaitingItem::Put(w.clone()));
        let mut t = WaitingTable::new();
        assert!(t.apply(eid(9), [decode_item(&item)]));
        assert!(!t.apply(eid(9), [decode_item(&item)]), "same record twice");
        assert_eq!(t.all(|_| true), vec![w.clone()]);
        assert!(
            t.all(|e| e != eid(1)).is_empty(),
            "an expired member's records are hidden"
        );
        let gone = tombstone(eid(1), "support", "gw-1<&>'x").unwrap();
        let gi = gone.children().next().unwrap().children().next().unwrap();
        assert_eq!(decode_item(gi), WaitingItem::Gone(w.item_id()));
        assert!(t.apply(eid(9), [decode_item(gi)]));
        assert!(t.all(|_| true).is_empty());
    }

    #[test]
    fn events_retractions_and_hostile_items() {
        let ok = "<item id='02:00:00:00:00:01/q/c1'><waiting xmlns='urn:callfabric:acd:waiting:0' eid='02:00:00:00:00:01' queue='q' caller='c1' priority='0' joined='5'/></item>";
        let items = decode_event(&event(ok)).unwrap();
        assert!(matches!(&items[0], WaitingItem::Put(w) if w.joined_ms == 5));
        let items = decode_event(&event("<retract id='02:00:00:00:00:01/q/c1'/>")).unwrap();
        assert_eq!(
            items,
            vec![WaitingItem::Gone("02:00:00:00:00:01/q/c1".into())]
        );
        // Another node's event is not ours.
        let other: Element =
            format!("<event xmlns='{NS_PUBSUB_EVENT}'><items node='device_state'/></event>")
                .parse()
                .unwrap();
        assert!(decode_event(&other).is_none());
        // An item whose id names another record, a bad eid, a huge caller, no joined.
        let long = "c".repeat(MAX_FIELD + 1);
        for bad in [
            "<item id='02:00:00:00:00:01/q/OTHER'><waiting xmlns='urn:callfabric:acd:waiting:0' eid='02:00:00:00:00:01' queue='q' caller='c1' priority='0' joined='5'/></item>".to_owned(),
            "<item id='x/q/c1'><waiting xmlns='urn:callfabric:acd:waiting:0' eid='x' queue='q' caller='c1' priority='0' joined='5'/></item>".to_owned(),
            format!("<item id='02:00:00:00:00:01/q/{long}'><waiting xmlns='urn:callfabric:acd:waiting:0' eid='02:00:00:00:00:01' queue='q' caller='{long}' priority='0' joined='5'/></item>"),
            "<item id='02:00:00:00:00:01/q/c1'><waiting xmlns='urn:callfabric:acd:waiting:0' eid='02:00:00:00:00:01' queue='q' caller='c1' priority='0'/></item>".to_owned(),
            "<item id='02:00:00:00:00:01/q/c1'><state xmlns='http://asterisk.org' eid='02:00:00:00:00:01'>INUSE</state></item>".to_owned(),
        ] {
            let items = decode_event(&event(&bad)).unwrap();
            assert!(matches!(items[0], WaitingItem::Ignored(_)), "{bad}: {items:?}");
        }
    }

    #[test]
    fn the_table_is_bounded_and_skips_own_records() {
        let mut t = WaitingTable::new();
        assert!(!t.apply(
            eid(1),
            [WaitingItem::Put(WaitingCaller::new(
                "q",
                "own",
                0,
                1,
                eid(1)
            ))]
        ));
        let many = (0..MAX_RECORDS + 5).map(|i| {
            WaitingItem::Put(WaitingCaller::new(
                "q",
                &format!("c{i}"),
                0,
                i as u64,
                eid(2),
            ))
        });
        t.apply(eid(1), many);
        assert_eq!(t.all(|_| true).len(), MAX_RECORDS);
        assert_eq!(t.dropped(), 5);
        let id = t.set_local(WaitingCaller::new("q", "mine", 0, 1, eid(1)));
        assert!(t.local(&id).is_some());
        assert_eq!(t.remove_local(eid(1), "Q", "mine"), Some(id));
    }

    #[test]
    fn the_order_is_priority_then_join_time_then_node_then_caller() {
        let a = WaitingCaller::new("q", "a", 0, 10, eid(2));
        let b = WaitingCaller::new("q", "b", 5, 20, eid(2));
        let c = WaitingCaller::new("q", "c", 0, 10, eid(1));
        let mut v = [a.clone(), b.clone(), c.clone()];
        v.sort_by_key(|w| w.order());
        assert_eq!(v, [b, c, a]);
    }
}

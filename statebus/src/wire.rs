//! The Asterisk res_xmpp wire format (see `docs/wire-format.md` in the shared notes, §1).
//!
//! Every stanza fragment is first written as text exactly as res_xmpp writes it (single
//! quotes, Asterisk's attribute order, no whitespace between elements), which is what the golden
//! tests compare byte for byte, and then parsed into a `minidom::Element` for sending. Decoding
//! follows res_xmpp's parser (see [`decode_item`]): unknown payloads, retracts, purges and
//! malformed items are reported as [`WireItem::Ignored`], never as a panic.

use crate::{cscan, DeviceState, Eid, Heartbeat, Mwi};
use minidom::{Element, Node};

/// Asterisk's payload namespace.
pub const NS_ASTERISK: &str = "http://asterisk.org";
/// XEP-0060 namespaces.
pub const NS_PUBSUB: &str = "http://jabber.org/protocol/pubsub";
/// XEP-0060 event namespace.
pub const NS_PUBSUB_EVENT: &str = "http://jabber.org/protocol/pubsub#event";
/// XEP-0060 owner namespace.
pub const NS_PUBSUB_OWNER: &str = "http://jabber.org/protocol/pubsub#owner";
/// Our own heartbeat payload namespace (ignored by Asterisk, which never subscribes to it).
pub const NS_FABRIC: &str = "urn:callfabric:fabric:0";

/// Flat node for device state (Asterisk `collection_nodes=no`), and the collection in XEP-0248 mode.
pub const NODE_DEVICE_STATE: &str = "device_state";
/// Flat node for MWI, and the collection in XEP-0248 mode.
pub const NODE_MWI: &str = "message_waiting";
/// Flat node where each fabric member keeps one heartbeat item (item id = its EID).
pub const NODE_HEARTBEAT: &str = "fabric_heartbeat";

/// Node layout, Asterisk's `collection_nodes` option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeLayout {
    /// Two flat nodes, item id = key (the default; the only layout Prosody and ejabberd deliver).
    #[default]
    Flat,
    /// XEP-0248: one leaf per key under the `device_state` / `message_waiting` collections (Tigase).
    Collections,
}

/// Access model of the nodes we create.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessModel {
    /// Anyone on the service may subscribe.
    #[default]
    Open,
    /// Only affiliated JIDs (the configured fabric JIDs) may subscribe.
    Whitelist,
}

impl AccessModel {
    fn as_str(self) -> &'static str {
        match self {
            AccessModel::Open => "open",
            AccessModel::Whitelist => "whitelist",
        }
    }
}

/// Escape text for XML character data and single-quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            // Whitespace controls as character references: attribute-value normalisation would
            // turn raw ones into spaces, and rxml mis-reads a raw CR before a multi-byte
            // character (found by tests/wire_fuzz.rs).
            '\r' => out.push_str("&#13;"),
            '\n' => out.push_str("&#10;"),
            '\t' => out.push_str("&#9;"),
            // Characters XML 1.0 cannot carry at all, even escaped.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => out.push('\u{FFFD}'),
            '\u{FFFE}' | '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// A stanza fragment could not be built (only possible through a bug in this module, since
/// every value is escaped; reported instead of panicking).
#[derive(Debug, thiserror::Error)]
#[error("internal error building XML {xml:?}: {reason}")]
pub struct BuildError {
    xml: String,
    reason: String,
}

pub(crate) fn parse(xml: &str) -> Result<Element, BuildError> {
    xml.parse().map_err(|e: minidom::Error| BuildError {
        xml: xml.to_string(),
        reason: e.to_string(),
    })
}

/// `<state xmlns='http://asterisk.org' eid='…' cachable='1'>STATE</state>`
pub fn device_state_xml(eid: Eid, state: DeviceState, cachable: bool) -> String {
    format!(
        "<state xmlns='{NS_ASTERISK}' eid='{eid}' cachable='{}'>{}</state>",
        u8::from(cachable),
        state.as_wire()
    )
}

/// `<mailbox xmlns='http://asterisk.org' eid='…'><NEWMSGS>n</NEWMSGS><OLDMSGS>n</OLDMSGS></mailbox>`
///
/// Counts are clamped to `i32::MAX`: Asterisk reads them with `sscanf("%d")` into an `int`, and a
/// larger count would read back negative (and be ignored, by Asterisk and by us).
pub fn mwi_xml(eid: Eid, mwi: &Mwi) -> String {
    format!(
        "<mailbox xmlns='{NS_ASTERISK}' eid='{eid}'><NEWMSGS>{}</NEWMSGS><OLDMSGS>{}</OLDMSGS></mailbox>",
        wire_count(mwi.new),
        wire_count(mwi.old)
    )
}

/// A message count as Asterisk can read it back (an `int`).
pub fn wire_count(n: u32) -> u32 {
    n.min(i32::MAX as u32)
}

/// Our heartbeat payload (own namespace; Asterisk never sees it).
pub fn heartbeat_xml(hb: &Heartbeat) -> String {
    let sip = hb
        .sip
        .as_deref()
        .map(|s| format!(" sip='{}'", escape(s)))
        .unwrap_or_default();
    let queues = crate::services::encode(&hb.queues)
        .map(|q| format!(" queues='{}'", escape(&q)))
        .unwrap_or_default();
    format!(
        "<heartbeat xmlns='{NS_FABRIC}' eid='{}' site='{}' role='{}' version='{}' time='{}'{sip}{queues}/>",
        hb.eid,
        escape(&hb.site),
        escape(&hb.role),
        escape(&hb.version),
        hb.time
    )
}

/// The `<pubsub>` child of a publish IQ: `<publish node='…'><item id='…'>PAYLOAD</item></publish>`.
pub fn publish_xml(node: &str, item_id: &str, payload_xml: &str) -> String {
    format!(
        "<pubsub xmlns='{NS_PUBSUB}'><publish node='{}'><item id='{}'>{payload_xml}</item></publish></pubsub>",
        escape(node),
        escape(item_id)
    )
}

/// The node a device-state item is published to under `layout`.
pub fn device_node(layout: NodeLayout, key: &str) -> &str {
    match layout {
        NodeLayout::Flat => NODE_DEVICE_STATE,
        NodeLayout::Collections => key,
    }
}

/// The node an MWI item is published to under `layout`.
pub fn mwi_node(layout: NodeLayout, key: &str) -> &str {
    match layout {
        NodeLayout::Flat => NODE_MWI,
        NodeLayout::Collections => key,
    }
}

/// Separator of a per-EID item id: `KEY;eid=EID`.
pub const PER_EID_SEP: &str = ";eid=";

/// The item id a member uses for a key another publisher already holds under its plain id
/// (ejabberd lets only an item's creator overwrite it, and we never take over anyone's
/// item): `KEY;eid=EID`. Our decoder reads it back as `KEY` when `EID` is the payload's; an
/// Asterisk box reads it as a device (or mailbox context) of that literal name.
pub fn per_eid_item_id(key: &str, eid: Eid) -> String {
    format!("{key}{PER_EID_SEP}{eid}")
}

/// Publish a device state (flat: node `device_state`; collections: the device's leaf).
pub fn publish_device_state(
    layout: NodeLayout,
    eid: Eid,
    key: &str,
    state: DeviceState,
    cachable: bool,
) -> Result<Element, BuildError> {
    publish_device_state_as(layout, eid, key, key, state, cachable)
}

/// [`publish_device_state`] under an explicit item id (see [`per_eid_item_id`]).
pub fn publish_device_state_as(
    layout: NodeLayout,
    eid: Eid,
    key: &str,
    item_id: &str,
    state: DeviceState,
    cachable: bool,
) -> Result<Element, BuildError> {
    parse(&publish_xml(
        device_node(layout, key),
        item_id,
        &device_state_xml(eid, state, cachable),
    ))
}

/// Publish MWI counts (always cachable, never with publish-options).
pub fn publish_mwi(layout: NodeLayout, eid: Eid, mwi: &Mwi) -> Result<Element, BuildError> {
    publish_mwi_as(layout, eid, mwi, &mwi.key())
}

/// [`publish_mwi`] under an explicit item id (see [`per_eid_item_id`]).
pub fn publish_mwi_as(
    layout: NodeLayout,
    eid: Eid,
    mwi: &Mwi,
    item_id: &str,
) -> Result<Element, BuildError> {
    let key = mwi.key();
    parse(&publish_xml(
        mwi_node(layout, &key),
        item_id,
        &mwi_xml(eid, mwi),
    ))
}

/// Publish our heartbeat (item id = our EID).
pub fn publish_heartbeat(hb: &Heartbeat) -> Result<Element, BuildError> {
    parse(&publish_xml(
        NODE_HEARTBEAT,
        &hb.eid.to_string(),
        &heartbeat_xml(hb),
    ))
}

/// What kind of node to create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    /// A plain leaf (flat mode, and the heartbeat node).
    Flat,
    /// A XEP-0248 collection.
    Collection,
    /// A leaf inside the named collection.
    LeafIn(&'static str),
}

/// Node creation with an explicit, standard configuration form (one FORM_TYPE, unlike
/// Asterisk's two, which ejabberd rejects).
pub fn create_node_xml(node: &str, kind: NodeKind, access: AccessModel, max_items: u32) -> String {
    let mut fields = String::new();
    let mut field = |var: &str, val: &str| {
        fields.push_str(&format!(
            "<field var='{var}'><value>{}</value></field>",
            escape(val)
        ));
    };
    match kind {
        NodeKind::Flat => {}
        NodeKind::Collection => field("pubsub#node_type", "collection"),
        NodeKind::LeafIn(_) => field("pubsub#node_type", "leaf"),
    }
    field("pubsub#deliver_payloads", "1");
    field("pubsub#persist_items", "1");
    if kind != NodeKind::Collection {
        field("pubsub#max_items", &max_items.to_string());
    }
    field("pubsub#access_model", access.as_str());
    if let NodeKind::LeafIn(parent) = kind {
        field("pubsub#collection", parent);
    }
    format!(
        "<pubsub xmlns='{NS_PUBSUB}'><create node='{}'/><configure><x xmlns='jabber:x:data' type='submit'>\
<field var='FORM_TYPE' type='hidden'><value>{NS_PUBSUB}#node_config</value></field>{fields}</x></configure></pubsub>",
        escape(node)
    )
}

/// See [`create_node_xml`].
pub fn create_node(
    node: &str,
    kind: NodeKind,
    access: AccessModel,
    max_items: u32,
) -> Result<Element, BuildError> {
    parse(&create_node_xml(node, kind, access, max_items))
}

/// Owner affiliations for the fabric's JIDs, as Asterisk sets for its buddies.
pub fn affiliations_xml(node: &str, jids: &[String], affiliation: &str) -> String {
    let mut s = format!(
        "<pubsub xmlns='{NS_PUBSUB_OWNER}'><affiliations node='{}'>",
        escape(node)
    );
    for j in jids {
        s.push_str(&format!(
            "<affiliation jid='{}' affiliation='{affiliation}'/>",
            escape(j)
        ));
    }
    s.push_str("</affiliations></pubsub>");
    s
}

/// See [`affiliations_xml`].
pub fn affiliations(node: &str, jids: &[String], affiliation: &str) -> Result<Element, BuildError> {
    parse(&affiliations_xml(node, jids, affiliation))
}

/// Subscribe with the bare JID; in collections mode with Asterisk's subscribe options.
pub fn subscribe_xml(node: &str, bare_jid: &str, collection: bool) -> String {
    let options = if collection {
        "<options><x xmlns='jabber:x:data' type='submit'>\
<field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#subscribe_options</value></field>\
<field var='pubsub#subscription_type'><value>items</value></field>\
<field var='pubsub#subscription_depth'><value>all</value></field>\
<field var='pubsub#expire'><value>presence</value></field></x></options>"
    } else {
        ""
    };
    format!(
        "<pubsub xmlns='{NS_PUBSUB}'><subscribe jid='{}' node='{}'/>{options}</pubsub>",
        escape(bare_jid),
        escape(node)
    )
}

/// See [`subscribe_xml`].
pub fn subscribe(node: &str, bare_jid: &str, collection: bool) -> Result<Element, BuildError> {
    parse(&subscribe_xml(node, bare_jid, collection))
}

/// Unsubscribe the bare JID (clears stale subscriptions, as Asterisk does on connect).
pub fn unsubscribe(node: &str, bare_jid: &str) -> Result<Element, BuildError> {
    parse(&format!(
        "<pubsub xmlns='{NS_PUBSUB}'><unsubscribe jid='{}' node='{}'/></pubsub>",
        escape(bare_jid),
        escape(node)
    ))
}

/// Retract one item (an owner may retract anyone's item).
pub fn retract(node: &str, item_id: &str) -> Result<Element, BuildError> {
    parse(&format!(
        "<pubsub xmlns='{NS_PUBSUB}'><retract node='{}'><item id='{}'/></retract></pubsub>",
        escape(node),
        escape(item_id)
    ))
}

/// Fetch all items of a node.
pub fn items_request(node: &str) -> Result<Element, BuildError> {
    parse(&format!(
        "<pubsub xmlns='{NS_PUBSUB}'><items node='{}'/></pubsub>",
        escape(node)
    ))
}

/// One decoded item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireItem {
    /// A device state.
    Device {
        /// Item id: the device key.
        key: String,
        /// Publisher.
        eid: Eid,
        /// The state (unknown strings read UNKNOWN).
        state: DeviceState,
        /// `cachable` attribute; missing means cachable.
        cachable: bool,
    },
    /// Mailbox counts.
    Mwi {
        /// Publisher.
        eid: Eid,
        /// Counts (urgent is always 0 from the wire).
        mwi: Mwi,
    },
    /// A fabric heartbeat.
    Heartbeat(Heartbeat),
    /// Anything else: retracts, purges, unknown payloads, malformed items. Never an error.
    Ignored(String),
}

/// The text iksemel's `iks_find_cdata` returns for an element: its first child node when that
/// is text (adjacent text nodes merged, as iksemel merges them while parsing), else `None`.
fn first_cdata(el: &Element) -> Option<String> {
    let mut out: Option<String> = None;
    for node in el.nodes() {
        match node {
            Node::Text(t) => out.get_or_insert_with(String::new).push_str(t),
            Node::Element(_) => break,
        }
    }
    out
}

/// The key an item id names: a per-EID item id (`KEY;eid=EID`) names KEY when EID is the
/// payload's `eid` attribute, as written; any other id is the key itself.
fn key_of<'a>(raw_id: &'a str, payload: &Element) -> &'a str {
    match (raw_id.rsplit_once(PER_EID_SEP), payload.attr("eid")) {
        (Some((key, suffix)), Some(eid)) if suffix == eid && !key.is_empty() => key,
        _ => raw_id,
    }
}

/// Decode one `<item>` (from an event or from an items result).
///
/// A device state or mailbox payload is read exactly as res_xmpp's `xmpp_pubsub_handle_event`
/// reads it (iksemel, no namespaces; `sscanf`s with glibc's semantics, see `cscan`), and an
/// item Asterisk would crash on or read from uninitialised memory is `Ignored`. The table of
/// choices is in ARCHITECTURE.md (*Asterisk's parser*).
pub fn decode_item(item: &Element) -> WireItem {
    let raw_id = match item.attr("id") {
        Some("") => return WireItem::Ignored("item with an empty id".into()),
        Some(id) => id,
        None => return WireItem::Ignored("item without id".into()),
    };
    // res_xmpp's payload is `iks_child(item)`: the item's first node, text included.
    let payload = match item.nodes().next() {
        Some(Node::Element(p)) => p,
        Some(Node::Text(_)) => {
            return WireItem::Ignored(format!("item {raw_id:?}: text before the payload"))
        }
        None => return WireItem::Ignored(format!("item {raw_id:?} without payload")),
    };
    if payload.is("heartbeat", NS_FABRIC) {
        return decode_heartbeat(raw_id, payload);
    }
    let id = key_of(raw_id, payload);
    let Some(raw_eid) = payload.attr("eid") else {
        return WireItem::Ignored(format!("item {id:?}: payload without eid"));
    };
    let Some(eid) = cscan::eid(raw_eid).map(Eid) else {
        return WireItem::Ignored(format!("item {id:?}: invalid EID {raw_eid:?}"));
    };
    // Element names: the payload's compared case-insensitively (`strcasecmp`), its children's
    // exactly (`iks_find`); any namespace.
    let name = payload.name();
    if name.eq_ignore_ascii_case("state") {
        // `iks_find_cdata(item, "state")`: the item's first child named exactly `state`.
        let Some(text) = item
            .children()
            .find(|c| c.name() == "state")
            .and_then(first_cdata)
        else {
            return WireItem::Ignored(format!("item {id:?}: no text in a <state>"));
        };
        WireItem::Device {
            key: id.to_string(),
            eid,
            state: DeviceState::from_devstate_val(&text),
            cachable: cscan::cachable(payload.attr("cachable")),
        }
    } else if name.eq_ignore_ascii_case("mailbox") {
        let count = |name: &str| -> Option<i32> {
            let text = payload.children().find(|c| c.name() == name)?;
            cscan::count(&first_cdata(text)?)
        };
        match (count("NEWMSGS"), count("OLDMSGS")) {
            (Some(new), Some(old)) => match (u32::try_from(new), u32::try_from(old)) {
                (Ok(new), Ok(old)) => {
                    let (m, c) = Mwi::split_key(id);
                    WireItem::Mwi {
                        eid,
                        mwi: Mwi::new(m, c, new, old),
                    }
                }
                _ => WireItem::Ignored(format!("item {id:?}: negative message count")),
            },
            _ => WireItem::Ignored(format!("item {id:?}: mailbox without NEWMSGS/OLDMSGS")),
        }
    } else {
        WireItem::Ignored(format!(
            "item {id:?}: unknown payload {{{}}}{name}",
            payload.ns()
        ))
    }
}

/// Our heartbeat payload (not Asterisk's: its namespace and a canonical EID are required).
fn decode_heartbeat(id: &str, payload: &Element) -> WireItem {
    let eid = match payload.attr("eid").map(str::parse::<Eid>) {
        Some(Ok(e)) => e,
        Some(Err(e)) => return WireItem::Ignored(format!("item {id:?}: {e}")),
        None => return WireItem::Ignored(format!("item {id:?}: payload without eid")),
    };
    let a = |n: &str| payload.attr(n).unwrap_or("").to_string();
    WireItem::Heartbeat(Heartbeat {
        eid,
        site: a("site"),
        role: a("role"),
        version: a("version"),
        time: payload
            .attr("time")
            .and_then(|t| t.parse().ok())
            .unwrap_or(0),
        sip: payload.attr("sip").map(str::to_string),
        queues: payload
            .attr("queues")
            .map(crate::services::decode)
            .unwrap_or_default(),
    })
}

/// A payload is judged by the node it came from: a heartbeat only from `fabric_heartbeat`;
/// nothing else from it; in the flat layout a device state only from `device_state` and
/// mailbox counts only from `message_waiting` (any other node is a XEP-0248 leaf, named by
/// its key, and carries either). Anything else is `Ignored` (a forged heartbeat published on
/// `device_state` would otherwise expire a member's devices).
pub fn judge_by_node(node: Option<&str>, item: WireItem) -> WireItem {
    let Some(node) = node else {
        return match item {
            WireItem::Ignored(_) => item,
            _ => WireItem::Ignored("items without a node".into()),
        };
    };
    let ok = match &item {
        WireItem::Ignored(_) => true,
        WireItem::Heartbeat(_) => node == NODE_HEARTBEAT,
        WireItem::Device { .. } => node != NODE_HEARTBEAT && node != NODE_MWI,
        WireItem::Mwi { .. } => node != NODE_HEARTBEAT && node != NODE_DEVICE_STATE,
    };
    if ok {
        item
    } else {
        WireItem::Ignored(format!("payload not of node {node:?}: {item:?}"))
    }
}

/// Decode every `<item>` of a pubsub `<event>` (Asterisk reads only the first; we read all),
/// each judged by the event's node ([`judge_by_node`]). Retracts and purges yield `Ignored`.
/// Returns an empty list for a non-event element.
pub fn decode_event(event: &Element) -> Vec<WireItem> {
    if !event.is("event", NS_PUBSUB_EVENT) {
        return Vec::new();
    }
    let mut out = Vec::new();
    for child in event.children() {
        match child.name() {
            "items" => {
                let node = child.attr("node");
                for it in child.children() {
                    match it.name() {
                        "item" => out.push(judge_by_node(node, decode_item(it))),
                        other => out.push(WireItem::Ignored(format!("{other} in items"))),
                    }
                }
            }
            other => out.push(WireItem::Ignored(format!("event {other}"))),
        }
    }
    out
}

/// An item a given EID left on the server, as found in an items result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnItem {
    /// The node it is on.
    pub node: String,
    /// Its item id as stored (plain key or per-EID id).
    pub item_id: String,
    /// The key it names.
    pub key: String,
    /// A mailbox (true) or a device state (false).
    pub mwi: bool,
}

/// The device-state and mailbox items of an items result whose payload carries `eid`: what a
/// member left on the server before a restart.
pub fn items_of_eid(pubsub: &Element, eid: Eid) -> Vec<OwnItem> {
    let mut out = Vec::new();
    for items in pubsub.children().filter(|c| c.name() == "items") {
        let node = items.attr("node").unwrap_or_default();
        for item in items.children().filter(|i| i.name() == "item") {
            let mwi = match decode_item(item) {
                WireItem::Device { eid: e, .. } if e == eid => false,
                WireItem::Mwi { eid: e, .. } if e == eid => true,
                _ => continue,
            };
            let (Some(id), Some(Node::Element(payload))) = (item.attr("id"), item.nodes().next())
            else {
                continue;
            };
            out.push(OwnItem {
                node: node.to_string(),
                item_id: id.to_string(),
                key: key_of(id, payload).to_string(),
                mwi,
            });
        }
    }
    out
}

/// Decode the `<pubsub><items>` result of an items request.
pub fn decode_items_result(pubsub: &Element) -> Vec<WireItem> {
    pubsub
        .children()
        .filter(|c| c.name() == "items")
        .flat_map(|items| {
            let node = items.attr("node");
            items
                .children()
                .filter(|i| i.name() == "item")
                .map(move |i| judge_by_node(node, decode_item(i)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_eid_item_ids_name_the_key() {
        let other: Eid = "02:00:00:00:00:09".parse().unwrap();
        let id = per_eid_item_id("Custom:shared", eid());
        assert_eq!(id, "Custom:shared;eid=00:11:22:33:44:55");
        let el = publish_device_state_as(
            NodeLayout::Flat,
            eid(),
            "Custom:shared",
            &id,
            DeviceState::InUse,
            true,
        )
        .unwrap();
        let item = el.children().next().unwrap().children().next().unwrap();
        assert!(
            matches!(decode_item(item), WireItem::Device { key, .. } if key == "Custom:shared")
        );
        // Someone else's EID in the suffix: the id is taken literally.
        let forged = format!(
            "<item xmlns='{NS_PUBSUB}' id='{}'>{}</item>",
            per_eid_item_id("Custom:shared", other),
            device_state_xml(eid(), DeviceState::InUse, true)
        );
        assert!(
            matches!(decode_item(&forged.parse().unwrap()), WireItem::Device { key, .. } if key == "Custom:shared;eid=02:00:00:00:00:09")
        );
        let mwi = Mwi::new("1000", "default", 1, 2);
        let el = publish_mwi_as(
            NodeLayout::Flat,
            eid(),
            &mwi,
            &per_eid_item_id(&mwi.key(), eid()),
        )
        .unwrap();
        let item = el.children().next().unwrap().children().next().unwrap();
        assert_eq!(decode_item(item), WireItem::Mwi { eid: eid(), mwi });
    }

    #[test]
    fn payloads_are_judged_by_their_node() {
        let hb = format!(
            "<heartbeat xmlns='{NS_FABRIC}' eid='00:11:22:33:44:55' site='s' role='r' version='1' time='5'/>"
        );
        let st = device_state_xml(eid(), DeviceState::InUse, true);
        let mb = mwi_xml(eid(), &Mwi::new("1", "d", 1, 0));
        let ev = |node: &str, payload: &str| -> Vec<WireItem> {
            let x = format!(
                "<event xmlns='{NS_PUBSUB_EVENT}'><items node='{node}'><item id='k@d'>{payload}</item></items></event>"
            );
            let res = format!(
                "<pubsub xmlns='{NS_PUBSUB}'><items node='{node}'><item id='k@d'>{payload}</item></items></pubsub>"
            );
            let mut v = decode_event(&x.parse().unwrap());
            v.extend(decode_items_result(&res.parse().unwrap()));
            v
        };
        let accepted = |v: Vec<WireItem>| v.iter().all(|i| !matches!(i, WireItem::Ignored(_)));
        let refused = |v: Vec<WireItem>| v.iter().all(|i| matches!(i, WireItem::Ignored(_)));
        assert!(accepted(ev(NODE_HEARTBEAT, &hb)));
        assert!(
            refused(ev(NODE_DEVICE_STATE, &hb)),
            "forged heartbeat on device_state"
        );
        assert!(refused(ev(NODE_MWI, &hb)));
        assert!(refused(ev("PJSIP/1", &hb)));
        assert!(accepted(ev(NODE_DEVICE_STATE, &st)));
        assert!(refused(ev(NODE_HEARTBEAT, &st)));
        assert!(refused(ev(NODE_MWI, &st)));
        assert!(accepted(ev("PJSIP/1", &st)), "a XEP-0248 leaf");
        assert!(accepted(ev(NODE_MWI, &mb)));
        assert!(refused(ev(NODE_DEVICE_STATE, &mb)));
        assert!(refused(ev(NODE_HEARTBEAT, &mb)));
    }

    fn eid() -> Eid {
        "00:11:22:33:44:55".parse().unwrap()
    }

    /// Compact a multi-line document example: strip indentation and newlines between elements.
    fn compact(doc: &str) -> String {
        doc.lines().map(str::trim).collect::<Vec<_>>().join("")
    }

    // Golden: docs/wire-format.md §1.4, the device-state publish (flat mode, cachable).
    #[test]
    fn golden_device_state_publish_flat() {
        let doc = "<pubsub xmlns='http://jabber.org/protocol/pubsub'>
                     <publish node='device_state'>
                       <item id='PJSIP/1000'>
                         <state xmlns='http://asterisk.org' eid='00:11:22:33:44:55' cachable='1'>INUSE</state>
                       </item>
                     </publish>
                   </pubsub>";
        let ours = publish_xml(
            NODE_DEVICE_STATE,
            "PJSIP/1000",
            &device_state_xml(eid(), DeviceState::InUse, true),
        );
        assert_eq!(ours, compact(doc));
        let el = publish_device_state(
            NodeLayout::Flat,
            eid(),
            "PJSIP/1000",
            DeviceState::InUse,
            true,
        )
        .unwrap();
        assert_eq!(el, compact(doc).parse::<Element>().unwrap());
    }

    // Golden: §1.4, XEP-0248 mode changes only the publish node.
    #[test]
    fn golden_device_state_publish_collections() {
        let el = publish_device_state(
            NodeLayout::Collections,
            eid(),
            "PJSIP/1000",
            DeviceState::InUse,
            true,
        )
        .unwrap();
        let doc = "<pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='PJSIP/1000'><item id='PJSIP/1000'><state xmlns='http://asterisk.org' eid='00:11:22:33:44:55' cachable='1'>INUSE</state></item></publish></pubsub>";
        assert_eq!(el, doc.parse::<Element>().unwrap());
    }

    // Golden: §1.4, the MWI publish.
    #[test]
    fn golden_mwi_publish() {
        let doc = "<pubsub xmlns='http://jabber.org/protocol/pubsub'>
                     <publish node='message_waiting'>
                       <item id='1000@default'>
                         <mailbox xmlns='http://asterisk.org' eid='00:11:22:33:44:55'>
                           <NEWMSGS>2</NEWMSGS><OLDMSGS>5</OLDMSGS>
                         </mailbox>
                       </item>
                     </publish>
                   </pubsub>";
        let mwi = Mwi {
            urgent: 7,
            ..Mwi::new("1000", "default", 2, 5)
        };
        let ours = publish_xml(NODE_MWI, &mwi.key(), &mwi_xml(eid(), &mwi));
        assert_eq!(ours, compact(doc));
        assert_eq!(
            publish_mwi(NodeLayout::Flat, eid(), &mwi).unwrap(),
            compact(doc).parse::<Element>().unwrap()
        );
        let coll = publish_mwi(NodeLayout::Collections, eid(), &mwi).unwrap();
        assert_eq!(
            coll.children().next().unwrap().attr("node"),
            Some("1000@default")
        );
    }

    #[test]
    fn non_cachable_has_cachable_zero_and_no_publish_options() {
        let el = publish_device_state(
            NodeLayout::Flat,
            eid(),
            "Local/1@x",
            DeviceState::InUse,
            false,
        )
        .unwrap();
        assert!(String::from(&el).contains("cachable='0'"));
        assert!(el.get_child("publish-options", NS_PUBSUB).is_none());
    }

    // Golden: §1.10, the notification Asterisk accepts.
    #[test]
    fn golden_event_notification_decodes() {
        let msg = "<message xmlns='jabber:client' from='pubsub.example.com' to='server2@example.com/astvoip2' type='headline' id='x'>
  <event xmlns='http://jabber.org/protocol/pubsub#event'>
    <items node='device_state'>
      <item id='PJSIP/1000'><state xmlns='http://asterisk.org' eid='00:11:22:33:44:55' cachable='1'>INUSE</state></item>
    </items>
  </event>
</message>";
        let m: Element = msg.parse().unwrap();
        let ev = m.get_child("event", NS_PUBSUB_EVENT).unwrap();
        assert_eq!(
            decode_event(ev),
            vec![WireItem::Device {
                key: "PJSIP/1000".into(),
                eid: eid(),
                state: DeviceState::InUse,
                cachable: true
            }]
        );
    }

    #[test]
    fn decode_never_fails() {
        let ev = |inner: &str| -> Vec<WireItem> {
            let x = format!("<event xmlns='{NS_PUBSUB_EVENT}'>{inner}</event>");
            decode_event(&x.parse::<Element>().unwrap())
        };
        // cachable missing = 1, state case-insensitive, unknown string = UNKNOWN
        assert_eq!(
            ev("<items node='device_state'><item id='SIP/a'><state xmlns='http://asterisk.org' eid='0:1:2:3:4:5'>ringing</state></item></items>"),
            vec![WireItem::Device { key: "SIP/a".into(), eid: Eid([0, 1, 2, 3, 4, 5]), state: DeviceState::Ringing, cachable: true }]
        );
        assert!(matches!(
            ev("<items node='device_state'><item id='SIP/a'><state xmlns='http://asterisk.org' eid='00:11:22:33:44:55' cachable='0'>Weird</state></item></items>")[0],
            WireItem::Device { state: DeviceState::Unknown, cachable: false, .. }
        ));
        for bad in [
            "<items node='device_state'><retract id='SIP/a'/></items>",
            "<purge node='device_state'/>",
            "<delete node='device_state'/>",
            "<items node='device_state'><item id='SIP/a'><state xmlns='http://asterisk.org'>INUSE</state></item></items>",
            "<items node='device_state'><item id='SIP/a'><state xmlns='http://asterisk.org' eid='nope'>INUSE</state></item></items>",
            "<items node='device_state'><item id='SIP/a'/></items>",
            "<items node='device_state'><item><state xmlns='http://asterisk.org' eid='00:11:22:33:44:55'>INUSE</state></item></items>",
            "<items node='x'><item id='a'><geoloc xmlns='http://jabber.org/protocol/geoloc'/></item></items>",
            "<items node='message_waiting'><item id='1@d'><mailbox xmlns='http://asterisk.org' eid='00:11:22:33:44:55'><NEWMSGS>x</NEWMSGS><OLDMSGS>1</OLDMSGS></mailbox></item></items>",
            "<items node='message_waiting'><item id='1@d'><mailbox xmlns='http://asterisk.org' eid='00:11:22:33:44:55'><NEWMSGS>1</NEWMSGS></mailbox></item></items>",
        ] {
            let got = ev(bad);
            assert!(!got.is_empty() && got.iter().all(|i| matches!(i, WireItem::Ignored(_))), "{bad}: {got:?}");
        }
        // Like res_xmpp, the payload's namespace is not checked (statebus/tests/asterisk_parser.rs).
        assert!(matches!(
            ev("<items node='device_state'><item id='SIP/a'><state xmlns='urn:other' eid='00:11:22:33:44:55'>INUSE</state></item></items>")[0],
            WireItem::Device { state: DeviceState::InUse, .. }
        ));
    }

    #[test]
    fn mwi_and_heartbeat_round_trip() {
        let m = Mwi::new("1000", "default", 3, 4);
        let el = publish_mwi(NodeLayout::Flat, eid(), &m).unwrap();
        let item = el.children().next().unwrap().children().next().unwrap();
        assert_eq!(decode_item(item), WireItem::Mwi { eid: eid(), mwi: m });
        let hb = Heartbeat {
            eid: eid(),
            site: "a<&'b".into(),
            role: "gateway".into(),
            version: "0.1.0".into(),
            time: 1_700_000_000,
            sip: Some("udp:127.0.0.1:5060".into()),
            queues: vec!["800".into(), "*45".into()],
        };
        let el = publish_heartbeat(&hb).unwrap();
        let item = el.children().next().unwrap().children().next().unwrap();
        assert_eq!(item.attr("id"), Some("00:11:22:33:44:55"));
        assert_eq!(decode_item(item), WireItem::Heartbeat(hb));
    }

    #[test]
    fn keys_with_markup_are_escaped() {
        let el = publish_device_state(
            NodeLayout::Flat,
            eid(),
            "Custom:a'<&>\"",
            DeviceState::Busy,
            true,
        )
        .unwrap();
        let item = el.children().next().unwrap().children().next().unwrap();
        assert_eq!(item.attr("id"), Some("Custom:a'<&>\""));
    }

    #[test]
    fn create_form_has_one_form_type_and_explicit_config() {
        let x = create_node_xml(
            NODE_DEVICE_STATE,
            NodeKind::Flat,
            AccessModel::Whitelist,
            5000,
        );
        assert_eq!(x.matches("FORM_TYPE").count(), 1);
        for want in [
            "pubsub#persist_items'><value>1",
            "pubsub#deliver_payloads'><value>1",
            "pubsub#max_items'><value>5000",
            "pubsub#access_model'><value>whitelist",
        ] {
            assert!(x.contains(want), "{want} in {x}");
        }
        assert!(!x.contains("node_type"));
        let leaf = create_node_xml(
            "PJSIP/1",
            NodeKind::LeafIn(NODE_DEVICE_STATE),
            AccessModel::Open,
            10,
        );
        assert!(
            leaf.contains("pubsub#node_type'><value>leaf")
                && leaf.contains("pubsub#collection'><value>device_state")
        );
        let coll = create_node_xml(
            NODE_DEVICE_STATE,
            NodeKind::Collection,
            AccessModel::Open,
            10,
        );
        assert!(
            coll.contains("pubsub#node_type'><value>collection") && !coll.contains("max_items")
        );
        create_node(NODE_DEVICE_STATE, NodeKind::Flat, AccessModel::Open, 10).unwrap();
    }

    // Golden: §1.5 affiliations and §1.7 subscribe.
    #[test]
    fn golden_affiliations_and_subscribe() {
        assert_eq!(
            affiliations_xml("PJSIP/1000", &["server2@example.com/astvoip2".into()], "owner"),
            "<pubsub xmlns='http://jabber.org/protocol/pubsub#owner'><affiliations node='PJSIP/1000'><affiliation jid='server2@example.com/astvoip2' affiliation='owner'/></affiliations></pubsub>"
        );
        assert_eq!(
            subscribe_xml("device_state", "server1@example.com", false),
            "<pubsub xmlns='http://jabber.org/protocol/pubsub'><subscribe jid='server1@example.com' node='device_state'/></pubsub>"
        );
        let coll = subscribe_xml("device_state", "server1@example.com", true);
        assert!(
            coll.contains("subscription_depth'><value>all")
                && coll.contains("pubsub#expire'><value>presence")
        );
        subscribe("device_state", "a@b", true).unwrap();
        unsubscribe("device_state", "a@b").unwrap();
        items_request("device_state").unwrap();
    }

    #[test]
    fn items_result_decodes_all_items() {
        let res = format!(
            "<pubsub xmlns='{NS_PUBSUB}'><items node='device_state'>\
             <item id='A'>{}</item><item id='B'>{}</item></items></pubsub>",
            device_state_xml(eid(), DeviceState::InUse, true),
            device_state_xml(eid(), DeviceState::OnHold, true)
        );
        let got = decode_items_result(&res.parse().unwrap());
        assert_eq!(got.len(), 2);
        assert!(
            matches!(&got[1], WireItem::Device { key, state: DeviceState::OnHold, .. } if key == "B")
        );
    }
}

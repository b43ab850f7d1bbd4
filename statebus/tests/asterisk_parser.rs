//! Golden tests: a received PubSub item is read exactly as Asterisk's res_xmpp reads it
//! (`xmpp_pubsub_handle_event` on iksemel, `ast_str_to_eid`, `ast_devstate_val`, glibc's
//! `sscanf`), and an item Asterisk would crash on or read from uninitialised memory is ignored.
//! One test per choice listed in ARCHITECTURE.md (*Asterisk's parser*).

use minidom::Element;
use statebus::wire::{decode_event, decode_items_result, WireItem, NS_PUBSUB, NS_PUBSUB_EVENT};
use statebus::{DeviceState, Eid, Mwi};

const E: &str = "00:11:22:33:44:55";

fn eid() -> Eid {
    E.parse().expect("eid")
}

/// Decode `<item>` XML on `node` as a live notification and as an items result; both paths
/// must agree. Returns the single decoded item.
fn item_on(node: &str, item: &str) -> WireItem {
    let ev: Element =
        format!("<event xmlns='{NS_PUBSUB_EVENT}'><items node='{node}'>{item}</items></event>")
            .parse()
            .unwrap_or_else(|e| panic!("{item}: {e}"));
    let res: Element =
        format!("<pubsub xmlns='{NS_PUBSUB}'><items node='{node}'>{item}</items></pubsub>")
            .parse()
            .expect("items result");
    let a = decode_event(&ev);
    let b = decode_items_result(&res);
    assert_eq!(a.len(), 1, "{item}: {a:?}");
    assert_eq!(a, b, "{item}: event and items result differ");
    a.into_iter().next().expect("one item")
}

fn dev(item: &str) -> WireItem {
    item_on("device_state", item)
}

fn mwi(item: &str) -> WireItem {
    item_on("message_waiting", item)
}

fn device(key: &str, state: DeviceState, cachable: bool) -> WireItem {
    WireItem::Device {
        key: key.into(),
        eid: eid(),
        state,
        cachable,
    }
}

fn ignored(w: &WireItem) -> bool {
    matches!(w, WireItem::Ignored(_))
}

/// A `<state>` payload with the given attributes and content inside an item `k`.
fn st(attrs: &str, content: &str) -> String {
    format!("<item id='k'><state xmlns='http://asterisk.org' {attrs}>{content}</state></item>")
}

#[test]
fn asterisks_own_notification_reads_as_published() {
    assert_eq!(
        dev(&st(&format!("eid='{E}' cachable='1'"), "INUSE")),
        device("k", DeviceState::InUse, true)
    );
    assert_eq!(
        mwi(&format!("<item id='1000@default'><mailbox xmlns='http://asterisk.org' eid='{E}'><NEWMSGS>2</NEWMSGS><OLDMSGS>5</OLDMSGS></mailbox></item>")),
        WireItem::Mwi { eid: eid(), mwi: Mwi::new("1000", "default", 2, 5) }
    );
}

/// Item id: missing or empty is ignored (Asterisk passes NULL to `strsep` /
/// `ast_publish_device_state_full`, and asserts on an empty device name).
#[test]
fn item_id_missing_or_empty_is_ignored() {
    let p = format!("<state xmlns='http://asterisk.org' eid='{E}'>INUSE</state>");
    assert!(ignored(&dev(&format!("<item>{p}</item>"))));
    assert!(ignored(&dev(&format!("<item id=''>{p}</item>"))));
    // The id is taken as written (no trimming, any characters).
    assert_eq!(
        dev(&format!("<item id=' PJSIP/1000 '>{p}</item>")),
        device(" PJSIP/1000 ", DeviceState::InUse, true)
    );
}

/// The payload is the item's first node (`iks_child`): text before it, even white space, is
/// ignored (Asterisk would read the text node as an element: undefined behaviour).
#[test]
fn payload_is_the_first_node() {
    let p = format!("<state xmlns='http://asterisk.org' eid='{E}'>INUSE</state>");
    assert!(ignored(&dev(&format!("<item id='k'> {p}</item>"))));
    assert!(ignored(&dev(&format!("<item id='k'>\n{p}</item>"))));
    // Something after the payload is not read.
    assert_eq!(
        dev(&format!("<item id='k'>{p} <junk/></item>")),
        device("k", DeviceState::InUse, true)
    );
    assert!(ignored(&dev("<item id='k'/>")));
}

/// Namespace: not looked at (iksemel has none): `state` in another namespace, or in the
/// inherited pubsub namespace, is a device state.
#[test]
fn payload_namespace_is_not_checked() {
    for ns in ["xmlns='urn:other'", "xmlns=''", ""] {
        let item = format!("<item id='k'><state {ns} eid='{E}'>BUSY</state></item>");
        assert_eq!(dev(&item), device("k", DeviceState::Busy, true), "{item}");
    }
    assert!(matches!(
        mwi(&format!("<item id='1'><mailbox xmlns='urn:x' eid='{E}'><NEWMSGS>1</NEWMSGS><OLDMSGS>0</OLDMSGS></mailbox></item>")),
        WireItem::Mwi { .. }
    ));
}

/// Element names: the payload's is compared case-insensitively (`strcasecmp`), the children
/// res_xmpp then looks up exactly (`iks_find`): `<MAILBOX>` works; `<State>` alone is ignored
/// (Asterisk then passes NULL to `ast_devstate_val`), and the state text is read from the
/// item's first child named exactly `state`.
#[test]
fn element_name_case() {
    assert!(matches!(
        mwi(&format!("<item id='1@d'><MAILBOX xmlns='http://asterisk.org' eid='{E}'><NEWMSGS>4</NEWMSGS><OLDMSGS>0</OLDMSGS></MAILBOX></item>")),
        WireItem::Mwi { mwi, .. } if mwi.new == 4
    ));
    assert!(ignored(&mwi(&format!("<item id='1@d'><mailbox xmlns='http://asterisk.org' eid='{E}'><newmsgs>4</newmsgs><oldmsgs>0</oldmsgs></mailbox></item>"))));
    assert!(ignored(&dev(&format!(
        "<item id='k'><State xmlns='http://asterisk.org' eid='{E}'>INUSE</State></item>"
    ))));
    assert!(ignored(&dev(&format!(
        "<item id='k'><STATE xmlns='http://asterisk.org' eid='{E}'>INUSE</STATE></item>"
    ))));
    assert_eq!(
        dev(&format!("<item id='k'><STATE xmlns='http://asterisk.org' eid='{E}' cachable='0'>INUSE</STATE><state>RINGING</state></item>")),
        device("k", DeviceState::Ringing, false)
    );
    assert!(ignored(&dev(&format!(
        "<item id='k'><presence xmlns='http://asterisk.org' eid='{E}'>INUSE</presence></item>"
    ))));
}

/// Attribute names are exact (`strcmp`): `EID` is no eid (ignored: Asterisk passes NULL to
/// `sscanf`); `CACHABLE='0'` is no cachable attribute (cachable).
#[test]
fn attribute_name_case() {
    assert!(ignored(&dev(&st(&format!("EID='{E}'"), "INUSE"))));
    assert_eq!(
        dev(&st(&format!("eid='{E}' CACHABLE='0'"), "INUSE")),
        device("k", DeviceState::InUse, true)
    );
}

/// EID: `ast_str_to_eid`'s `%2x:%2x:%2x:%2x:%2x:%2x`. Missing: ignored (crash); not six fields:
/// ignored (Asterisk goes on with an uninitialised EID); what glibc accepts is accepted.
#[test]
fn eid_formats() {
    assert!(ignored(&dev(&st("", "INUSE"))));
    for bad in [
        "",
        "nope",
        "00:11:22:33:44",
        "00-11-22-33-44-55",
        "001:1:2:3:4:5",
    ] {
        assert!(
            ignored(&dev(&st(&format!("eid='{bad}'"), "INUSE"))),
            "{bad:?}"
        );
    }
    for same in [
        "00:11:22:33:44:55",
        "0:11:22:33:44:55",
        "00:11:22:33:44:55:66",
        " 00:11:22:33:44:55junk",
        "0x:11:22:33:44:55",
        "+0:11:22:33:44:55",
    ] {
        assert_eq!(
            dev(&st(&format!("eid='{same}'"), "INUSE")),
            device("k", DeviceState::InUse, true),
            "{same:?}"
        );
    }
    assert!(matches!(
        dev(&st("eid='-1:A:b:c:D:e'", "INUSE")),
        WireItem::Device {
            eid: Eid([0xff, 0xa, 0xb, 0xc, 0xd, 0xe]),
            ..
        }
    ));
}

/// State text: `ast_devstate_val` of the first text node of `<state>`: case-insensitive, not
/// trimmed, unknown strings are UNKNOWN; text after a child element is not read; no text at
/// all is ignored (Asterisk passes NULL to `strcasecmp`).
#[test]
fn state_text() {
    let e = format!("eid='{E}'");
    let of = |content: &str| dev(&st(&e, content));
    assert_eq!(of("inUse"), device("k", DeviceState::InUse, true));
    assert_eq!(of("not_inuse"), device("k", DeviceState::NotInUse, true));
    assert_eq!(of("UNKNOWN"), device("k", DeviceState::Unknown, true));
    assert_eq!(of("Weird"), device("k", DeviceState::Unknown, true));
    assert_eq!(of(" INUSE"), device("k", DeviceState::Unknown, true));
    assert_eq!(of("INUSE\n"), device("k", DeviceState::Unknown, true));
    // entity and CDATA text joins the text node, as iksemel merges adjacent character data
    assert_eq!(of("IN&#85;SE"), device("k", DeviceState::InUse, true));
    assert_eq!(
        of("IN<![CDATA[USE]]>"),
        device("k", DeviceState::InUse, true)
    );
    // nested text: only the first text node
    assert_eq!(of("IN<b/>USE"), device("k", DeviceState::Unknown, true));
    assert_eq!(of("INUSE<b>x</b>"), device("k", DeviceState::InUse, true));
    assert!(ignored(&of("<b/>INUSE")));
    assert!(ignored(&of("")));
    assert!(ignored(&dev(&format!("<item id='k'><state {e}/></item>"))));
}

/// `cachable`: `sscanf("%30u")` over a default of 1, cachable only when the value is 1.
#[test]
fn cachable_values() {
    let c = |v: &str| match dev(&st(&format!("eid='{E}' cachable='{v}'"), "INUSE")) {
        WireItem::Device { cachable, .. } => cachable,
        other => panic!("{v:?}: {other:?}"),
    };
    // no digits first ("", "true", "false0"): the default 1 stays
    for yes in ["1", " 1", "+1", "01", "1x", "", "true", "yes", "false0"] {
        assert!(c(yes), "{yes:?}");
    }
    for no in ["0", "00", "2", "-1", "10", " 0 "] {
        assert!(!c(no), "{no:?}");
    }
}

/// Mailbox counts: `sscanf("%10d")` of the first text node of `<NEWMSGS>`/`<OLDMSGS>`;
/// missing or not a number: ignored (crash or uninitialised variable in Asterisk); negative:
/// ignored (Asterisk publishes a negative count; ours are unsigned).
#[test]
fn mailbox_counts() {
    let m = |new: &str, old: &str| {
        mwi(&format!("<item id='1000@default'><mailbox xmlns='http://asterisk.org' eid='{E}'><NEWMSGS>{new}</NEWMSGS><OLDMSGS>{old}</OLDMSGS></mailbox></item>"))
    };
    let counts = |w: WireItem| match w {
        WireItem::Mwi { mwi, .. } => Some((mwi.new, mwi.old)),
        _ => None,
    };
    assert_eq!(counts(m(" 3", "+4")), Some((3, 4)));
    assert_eq!(counts(m("3 new", "0x7")), Some((3, 0)));
    assert_eq!(counts(m("12345678901", "0")), Some((1_234_567_890, 0)));
    for (new, old) in [("x", "1"), ("1", ""), ("-1", "0"), ("1", "<b/>2"), ("", "")] {
        assert_eq!(counts(m(new, old)), None, "{new:?} {old:?}");
    }
    assert!(ignored(&mwi(&format!("<item id='1'><mailbox xmlns='http://asterisk.org' eid='{E}'><NEWMSGS>1</NEWMSGS></mailbox></item>"))));
}

/// Mailbox id: split at the first `@` (`strsep`); no `@` is a mailbox without context.
#[test]
fn mailbox_id_split() {
    let of = |id: &str| {
        match mwi(&format!("<item id='{id}'><mailbox xmlns='http://asterisk.org' eid='{E}'><NEWMSGS>1</NEWMSGS><OLDMSGS>0</OLDMSGS></mailbox></item>")) {
        WireItem::Mwi { mwi, .. } => (mwi.mailbox, mwi.context),
        other => panic!("{id}: {other:?}"),
    }
    };
    assert_eq!(of("1000@a@b"), ("1000".into(), "a@b".into()));
    assert_eq!(of("1000"), ("1000".into(), String::new()));
}

/// Where we are looser than Asterisk, on purpose: every item of a notification or result is
/// read (Asterisk reads the first; servers send one per notification, a fetch returns many).
#[test]
fn every_item_is_read() {
    let ev: Element = format!(
        "<event xmlns='{NS_PUBSUB_EVENT}'><items node='device_state'>{}{}</items></event>",
        st(&format!("eid='{E}'"), "INUSE"),
        st(&format!("eid='{E}'"), "BUSY").replace("'k'", "'j'")
    )
    .parse()
    .unwrap();
    assert_eq!(
        decode_event(&ev),
        vec![
            device("k", DeviceState::InUse, true),
            device("j", DeviceState::Busy, true)
        ]
    );
}

//! The stanza guard (`statebus::guard`) on the live decoding path: raw server bytes → guard →
//! the XML parser tokio-xmpp uses (rxml with default options, xso's minidom builder) → the wire
//! decoder. Hostile items are dropped whole and reported; everything else passes byte for byte,
//! however the bytes are split; nothing panics or overflows a small stack.

use minidom::Element;
use statebus::guard::{Dropped, Guard, Violation};
use statebus::wire::{self, WireItem};
use statebus::{DeviceState, Eid};

const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' id='s1' from='fabric.test' version='1.0'>";

struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn eid() -> Eid {
    "00:11:22:33:44:55".parse().expect("eid")
}

fn good_item(key: &str) -> String {
    format!(
        "<item id='{key}' publisher='gw@fabric.test'>{}</item>",
        wire::device_state_xml(eid(), DeviceState::InUse, true)
    )
}

fn event(items: &str) -> String {
    format!(
        "<message from='pubsub.fabric.test' to='a@fabric.test' id='m1'><event xmlns='{}'><items node='device_state'>{items}</items></event></message>",
        wire::NS_PUBSUB_EVENT
    )
}

fn items_result(items: &str) -> String {
    format!(
        "<iq type='result' from='pubsub.fabric.test' id='cf7'><pubsub xmlns='{}'><items node='device_state'>{items}</items></pubsub></iq>",
        wire::NS_PUBSUB
    )
}

/// The hostile shapes, each an `<item>`, with the violation the guard must report (None: the
/// item is harmless and must pass).
fn hostile(kind: usize, n: usize) -> (String, Option<Violation>) {
    let st = |inner: &str| {
        format!("<state xmlns='http://asterisk.org' eid='00:11:22:33:44:55' cachable='1'>{inner}</state>")
    };
    match kind % 9 {
        0 => {
            let depth = 20 + n % 2000;
            let inner = format!("{}INUSE{}", "<a>".repeat(depth), "</a>".repeat(depth));
            (
                format!("<item id='deep{n}'>{}</item>", st(&inner)),
                Some(Violation::Depth),
            )
        }
        1 => (
            format!("<item id='{}'>{}</item>", "x".repeat(8193 + n % 60000), st("INUSE")),
            Some(Violation::Token),
        ),
        2 => (
            format!(
                "<item id='bigattr{n}'><state xmlns='http://asterisk.org' eid='00:11:22:33:44:55' junk='{}'>INUSE</state></item>",
                "&amp;".repeat(2000 + n % 20000)
            ),
            Some(Violation::Token),
        ),
        3 => (
            format!("<item id='ent{n}'>{}</item>", st("IN&#0;USE")),
            Some(Violation::Entity),
        ),
        4 => (
            format!("<item id='ent2-{n}'>{}</item>", st("&bogus;")),
            Some(Violation::Entity),
        ),
        5 => (
            format!("<item id='many{n}'>{}</item>", st(&"<x/>".repeat(100 + n % 500))),
            Some(Violation::Count),
        ),
        6 => (
            format!(
                "<item id='big{n}'>{}</item>",
                st(&"y".repeat(17 * 1024 + n % 4096))
            ),
            Some(Violation::Size),
        ),
        // Odd namespaces pass the guard; the decoder reads them as Asterisk does (namespace
        // ignored).
        7 => (
            format!(
                "<item id='odd{n}'><state xmlns='http://asterisk.org/evil' eid='00:11:22:33:44:55'>INUSE</state></item>"
            ),
            None,
        ),
        _ => (good_item(&format!("PJSIP/{n}")), None),
    }
}

/// Feed `input` split at random points; return the output and the reports.
fn run(input: &[u8], rng: &mut XorShift) -> (Vec<u8>, Vec<Dropped>) {
    let mut g = Guard::default();
    let mut out = Vec::new();
    let mut dropped = Vec::new();
    let mut i = 0;
    while i < input.len() {
        let span = if rng.below(4) == 0 { 3 } else { 4096 };
        let n = 1 + rng.below(span);
        let end = (i + n).min(input.len());
        g.feed(&input[i..end]);
        out.extend(g.take_output());
        dropped.extend(g.take_dropped());
        i = end;
    }
    (out, dropped)
}

/// Parse the guarded stream the way tokio-xmpp does (rxml default options, xso's minidom
/// builder per stanza) and decode every pubsub payload, on a deliberately small stack.
fn parse_and_decode(stream: Vec<u8>) -> Result<Vec<WireItem>, String> {
    std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || {
            let mut doc = stream;
            doc.extend_from_slice(b"</stream:stream>");
            let root = Element::from_reader(&doc[..]).map_err(|e| e.to_string())?;
            let mut items = Vec::new();
            for stanza in root.children() {
                // The stanza as xso builds it for tokio-xmpp (recursive builder).
                let bytes = String::from(stanza);
                let el: Element = xso::from_bytes(bytes.as_bytes()).map_err(|e| e.to_string())?;
                for p in el.children() {
                    items.extend(wire::decode_event(p));
                    if p.is("pubsub", wire::NS_PUBSUB) {
                        items.extend(wire::decode_items_result(p));
                    }
                }
            }
            Ok(items)
        })
        .expect("spawn")
        .join()
        .map_err(|_| "parser thread panicked".to_string())?
}

fn devices(items: &[WireItem]) -> Vec<String> {
    items
        .iter()
        .filter_map(|i| match i {
            WireItem::Device { key, .. } => Some(key.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn clean_stream_passes_byte_for_byte_however_split() {
    let mut rng = XorShift(7);
    let items: String = (0..50).map(|i| good_item(&format!("PJSIP/{i}"))).collect();
    let stream = format!(
        "{HEADER}<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>PLAIN</mechanism></mechanisms></stream:features>\n \
         {}{}<r xmlns='urn:xmpp:sm:3'/><!-- c --><message><body><![CDATA[a <b> ]]&gt; c]]></body></message>\
         <iq type='result' id='x' from=\"a&apos;b\"/>{HEADER}{}",
        event(&items),
        items_result(&items),
        event(&good_item("PJSIP/last"))
    );
    for _ in 0..50 {
        let (out, dropped) = run(stream.as_bytes(), &mut rng);
        assert_eq!(String::from_utf8_lossy(&out), stream);
        assert!(dropped.is_empty(), "{dropped:?}");
    }
}

#[test]
fn each_hostile_item_is_dropped_alone_and_reported() {
    let mut rng = XorShift(11);
    for kind in 0..9 {
        let (bad, why) = hostile(kind, 1000 + kind);
        let stream = format!(
            "{HEADER}{}{}",
            event(&format!(
                "{}{bad}{}",
                good_item("PJSIP/before"),
                good_item("PJSIP/after")
            )),
            items_result(&bad)
        );
        let (out, dropped) = run(stream.as_bytes(), &mut rng);
        let items = parse_and_decode(out).unwrap_or_else(|e| panic!("kind {kind}: {e}"));
        let keys = devices(&items);
        assert!(
            keys.contains(&"PJSIP/before".to_string()),
            "kind {kind}: {keys:?}"
        );
        assert!(
            keys.contains(&"PJSIP/after".to_string()),
            "kind {kind}: {keys:?}"
        );
        match why {
            Some(v) => {
                assert_eq!(keys.len(), 2, "kind {kind}: hostile item kept: {keys:?}");
                assert_eq!(dropped.len(), 2, "kind {kind}: {dropped:?}");
                assert!(
                    dropped.iter().all(|d| d.why == v && !d.stanza),
                    "kind {kind}: {dropped:?}"
                );
                assert!(dropped.iter().all(|d| d.item_id.len() <= 64));
            }
            None => assert!(dropped.is_empty(), "kind {kind}: {dropped:?}"),
        }
    }
}

#[test]
fn hostile_stanza_outside_items_is_replaced_by_an_empty_message() {
    let mut rng = XorShift(3);
    let long = "z".repeat(70_000);
    let stream = format!(
        "{HEADER}<message from='{long}'><body>x</body></message>{}<iq type='result' id='q'><pubsub xmlns='{}'><items node='{long}'>{}</items></pubsub></iq>{}",
        event(&good_item("PJSIP/1")),
        wire::NS_PUBSUB,
        good_item("PJSIP/lost"),
        event(&good_item("PJSIP/2"))
    );
    let (out, dropped) = run(stream.as_bytes(), &mut rng);
    assert_eq!(dropped.len(), 2, "{dropped:?}");
    assert!(dropped.iter().all(|d| d.stanza));
    let text = String::from_utf8_lossy(&out).to_string();
    assert_eq!(
        text.matches("<message/>").count(),
        2,
        "one placeholder per stanza"
    );
    let items = parse_and_decode(out).expect("parses");
    assert_eq!(devices(&items), vec!["PJSIP/1", "PJSIP/2"]);
}

#[test]
fn thousands_of_items_in_one_result_pass() {
    let items: String = (0..6000)
        .map(|i| good_item(&format!("PJSIP/{i}")))
        .collect();
    let stream = format!("{HEADER}{}", items_result(&items));
    let (out, dropped) = run(stream.as_bytes(), &mut XorShift(5));
    assert!(dropped.is_empty());
    assert_eq!(devices(&parse_and_decode(out).expect("parses")).len(), 6000);
}

/// Random mixes of good and hostile items in events and fetch results, split at random:
/// every good item decodes, every hostile one is reported and gone, the parser never fails.
#[test]
fn fuzz_generated_streams() {
    let mut rng = XorShift(0x5eed_1234_abcd_0001);
    for round in 0..60 {
        let mut stream = String::from(HEADER);
        let mut want_good = Vec::new();
        let mut want_dropped = 0;
        for s in 0..(1 + rng.below(6)) {
            let mut items = String::new();
            for i in 0..(1 + rng.below(12)) {
                let kind = rng.below(18);
                let n = round * 1000 + s * 100 + i + rng.below(3000);
                let (item, why) = hostile(kind, n);
                if why.is_some() {
                    want_dropped += 1;
                } else if kind % 9 == 8 {
                    want_good.push(format!("PJSIP/{}", round * 1000 + s * 100 + i));
                } else if kind % 9 == 7 {
                    // Asterisk ignores the payload's namespace, and so do we.
                    want_good.push(format!("odd{n}"));
                }
                if kind % 9 == 8 {
                    items.push_str(&good_item(&format!("PJSIP/{}", round * 1000 + s * 100 + i)));
                } else {
                    items.push_str(&item);
                }
            }
            stream.push_str(&if rng.below(2) == 0 {
                event(&items)
            } else {
                items_result(&items)
            });
        }
        let (out, dropped) = run(stream.as_bytes(), &mut rng);
        assert_eq!(dropped.len(), want_dropped, "round {round}");
        let items = parse_and_decode(out).unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(devices(&items), want_good, "round {round}");
    }
}

/// Random bytes and mutations of real stanzas: the guard never panics, holds back at most one
/// stanza, and whatever it lets through never overflows the parser's stack.
#[test]
fn fuzz_mutated_bytes_never_panic() {
    let mut rng = XorShift(0xdead_beef_0bad_f00d);
    let seed = format!(
        "{HEADER}{}{}",
        event(&format!("{}{}", good_item("PJSIP/1"), hostile(0, 500).0)),
        items_result(&hostile(2, 3).0)
    );
    let pieces: &[&[u8]] = &[
        b"<",
        b">",
        b"/>",
        b"'",
        b"\"",
        b"=",
        b"&",
        b";",
        b"&#",
        b"<!",
        b"<?",
        b"]]>",
        b"-->",
        b"<a>",
        b"</a>",
        b"<item id='",
        b"\xff",
    ];
    for _ in 0..300 {
        let mut bytes = seed.clone().into_bytes();
        for _ in 0..(1 + rng.below(20)) {
            let at = rng.below(bytes.len());
            match rng.below(3) {
                0 => {
                    let p = pieces[rng.below(pieces.len())];
                    bytes.splice(at..at, p.iter().copied());
                }
                1 => {
                    let end = (at + rng.below(50)).min(bytes.len());
                    bytes.drain(at..end);
                }
                _ => bytes[at] = rng.next() as u8,
            }
        }
        let (out, _) = run(&bytes, &mut rng);
        // Malformed input may fail to parse; it must never crash the parser.
        let _ = parse_and_decode(out);
    }
}

/// ejabberd refuses a resumption with `<failed/>` without `h` (allowed by XEP-0198); the
/// guard adds `h='0'` so that tokio-xmpp's parser accepts it and binds a fresh session.
#[test]
fn sm_failed_without_h_gets_one() {
    let failed = "<failed xmlns='urn:xmpp:sm:3'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><text xml:lang='en' xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>Previous session not found</text></failed>";
    let with_h = "<failed xmlns='urn:xmpp:sm:3' h='5'/>";
    let stream = format!("{HEADER}{failed}{with_h}");
    let (out, dropped) = run(stream.as_bytes(), &mut XorShift(9));
    assert!(dropped.is_empty());
    let want = format!(
        "{HEADER}{}{with_h}",
        failed.replacen("<failed", "<failed h='0'", 1)
    );
    assert_eq!(String::from_utf8_lossy(&out), want);
}

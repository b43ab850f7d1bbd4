//! Deterministic fuzzing of the wire decoders: mutated and random stanzas must never panic, and
//! whatever decodes as Asterisk state must re-encode to something that decodes the same.

use minidom::Element;
use statebus::wire::{self, WireItem};
use statebus::{DeviceState, Eid, Mwi};

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

fn seeds() -> Vec<String> {
    let eid: Eid = "00:11:22:33:44:55".parse().expect("eid");
    let ev = |inner: String| {
        format!(
            "<event xmlns='{}'><items node='device_state'>{inner}</items></event>",
            wire::NS_PUBSUB_EVENT
        )
    };
    vec![
        ev(format!("<item id='PJSIP/1000'>{}</item>", wire::device_state_xml(eid, DeviceState::InUse, true))),
        ev(format!("<item id='1000@default'>{}</item>", wire::mwi_xml(eid, &Mwi::new("1000", "default", 2, 5)))),
        ev("<retract id='PJSIP/1000'/>".into()),
        format!("<event xmlns='{}'><purge node='device_state'/></event>", wire::NS_PUBSUB_EVENT),
        format!(
            "<pubsub xmlns='{}'><items node='device_state'><item id='a'>{}</item><item id='b'>{}</item></items></pubsub>",
            wire::NS_PUBSUB,
            wire::device_state_xml(eid, DeviceState::RingInUse, false),
            wire::device_state_xml(eid, DeviceState::Unknown, true)
        ),
    ]
}

const TOKENS: &[&str] = &[
    "<",
    ">",
    "/>",
    "'",
    "\"",
    "=",
    "&amp;",
    "&#0;",
    "&#xFFFE;",
    "eid='",
    "cachable='0'",
    "<item id='x'>",
    "</item>",
    "<state xmlns='http://asterisk.org'>",
    "</state>",
    "<NEWMSGS>",
    "99999999999999999999",
    "-1",
    "\u{0}",
    "\u{FFFF}",
    "<mailbox xmlns='http://asterisk.org' eid='0:0:0:0:0:0'>",
    "xmlns='urn:x'",
    " ",
    "\n",
];

fn mutate(rng: &mut XorShift, s: &str) -> String {
    let mut b = s.as_bytes().to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(b.len() + 1);
        match rng.below(5) {
            0 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] = rng.next() as u8;
            }
            1 => b.truncate(at),
            2 => {
                let t = TOKENS[rng.below(TOKENS.len())].as_bytes();
                b.splice(at..at, t.iter().copied());
            }
            3 if !b.is_empty() => {
                let end = (at + rng.below(16)).min(b.len());
                let start = at.min(end);
                b.drain(start..end);
            }
            _ => {
                let dup = b[..at.min(b.len())].to_vec();
                b.extend_from_slice(&dup[..dup.len().min(64)]);
            }
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

fn check(el: &Element) {
    let mut items = wire::decode_event(el);
    items.extend(wire::decode_items_result(el));
    for c in el.children() {
        items.push(wire::decode_item(c));
    }
    for it in items {
        if let WireItem::Device {
            key,
            eid,
            state,
            cachable,
        } = it
        {
            let again =
                wire::publish_device_state(wire::NodeLayout::Flat, eid, &key, state, cachable)
                    .expect("re-encode");
            let item = again
                .children()
                .next()
                .and_then(|p| p.children().next())
                .expect("item");
            assert_eq!(
                wire::decode_item(item),
                WireItem::Device {
                    key,
                    eid,
                    state,
                    cachable
                }
            );
        }
    }
}

#[test]
fn mutated_stanzas_never_panic_and_round_trip() {
    let iterations: usize = std::env::var("FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30_000);
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let seeds = seeds();
    let mut parsed = 0;
    for _ in 0..iterations {
        let seed = &seeds[rng.below(seeds.len())];
        let s = mutate(&mut rng, seed);
        if let Ok(el) = s.parse::<Element>() {
            parsed += 1;
            check(&el);
        }
    }
    // The fuzzer must reach the decoders, not only the XML parser's error path.
    assert!(
        parsed > iterations / 20,
        "only {parsed} of {iterations} mutants parsed as XML"
    );
}

/// What XML 1.0 can carry of `s`: the encoder replaces every other character with U+FFFD.
fn xml_safe(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' => c,
            c if c >= '\u{10000}' => c,
            _ => '\u{FFFD}',
        })
        .collect()
}

#[test]
fn random_keys_and_values_round_trip() {
    let mut rng = XorShift(42);
    for _ in 0..5_000 {
        // Half ASCII (markup, quotes, controls), half anything up to the first astral planes.
        // 1..40 characters: an empty item id is ignored on the way in, as Asterisk does.
        let key: String = (0..1 + rng.below(39))
            .map(|_| {
                let c = if rng.below(2) == 0 {
                    rng.below(0x80)
                } else {
                    rng.below(0x11000)
                };
                char::from_u32(c as u32).unwrap_or('?')
            })
            .collect();
        let eid = Eid([rng.next() as u8, 0, 0, 0, 0, rng.next() as u8]);
        let st = DeviceState::ALL[rng.below(9)];
        let cachable = rng.below(2) == 0;
        let el = wire::publish_device_state(wire::NodeLayout::Flat, eid, &key, st, cachable)
            .expect("encode");
        let item = el
            .children()
            .next()
            .and_then(|p| p.children().next())
            .expect("item");
        assert_eq!(
            wire::decode_item(item),
            WireItem::Device {
                key: xml_safe(&key),
                eid,
                state: st,
                cachable
            },
            "{key:?}"
        );
        // MWI: the item id is mailbox@context, split at the first '@' on the way back.
        let mailbox = key.replace('@', "?");
        let (new, old) = (rng.next() as u32, rng.next() as u32);
        let mwi = Mwi::new(&mailbox, "ctx", new, old);
        let el = wire::publish_mwi(wire::NodeLayout::Collections, eid, &mwi).expect("encode mwi");
        let publish = el.children().next().expect("publish");
        assert_eq!(
            publish.attr("node"),
            Some(format!("{}@ctx", xml_safe(&mailbox)).as_str()),
            "collections: the node is the mailbox key"
        );
        let item = publish.children().next().expect("item");
        assert_eq!(
            wire::decode_item(item),
            WireItem::Mwi {
                eid,
                // Counts beyond an `int` are clamped on the way out (Asterisk reads `%d`).
                mwi: Mwi::new(
                    &xml_safe(&mailbox),
                    "ctx",
                    new.min(i32::MAX as u32),
                    old.min(i32::MAX as u32)
                )
            },
            "{mailbox:?}"
        );
    }
}

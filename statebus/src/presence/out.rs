//! What the presence core sends: a presence of one of our contacts, kept as plain fields and
//! written as text (the hot path: every device change, to every subscriber), or any other
//! stanza as an element (IQ replies, pings).
//!
//! Written as text because building a minidom element and serialising it through xso/rxml
//! and tokio-xmpp's writer cost more than the rest of a change's path together
//! (`presence_bench`, docs/BENCHMARKS.md); the text is the same XML.

use super::core::NS;
use crate::wire::escape;
use minidom::rxml::NcName;
use minidom::Element;

/// A presence from a contact of the component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    /// `from` (a contact, bare or with our resource).
    pub from: String,
    /// `to` (a supervisor's bare JID).
    pub to: String,
    /// `type` (`None`: available).
    pub kind: Option<&'static str>,
    /// `<show/>`.
    pub show: Option<&'static str>,
    /// `<status/>`.
    pub status: Option<String>,
}

/// A stanza to send.
#[derive(Debug, Clone, PartialEq)]
pub enum Out {
    /// A contact's presence.
    Presence(Presence),
    /// Anything else.
    Stanza(Element),
}

impl Out {
    /// An attribute of the stanza (`from`, `to`, `type`, `id`, …).
    pub fn attr<'a>(&'a self, name: &'a str) -> Option<&'a str> {
        match self {
            Out::Presence(p) => match name {
                "from" => Some(&p.from),
                "to" => Some(&p.to),
                "type" => p.kind,
                _ => None,
            },
            Out::Stanza(el) => el.attr(name),
        }
    }

    /// The stanza as an element (namespace [`NS`]).
    pub fn to_element(&self) -> Element {
        match self {
            Out::Stanza(el) => el.clone(),
            Out::Presence(p) => {
                let mut b = Element::builder("presence", NS);
                let attrs = [
                    ("from", Some(p.from.as_str())),
                    ("to", Some(&p.to)),
                    ("type", p.kind),
                ];
                for (k, v) in attrs {
                    if let (Ok(n), Some(v)) = (NcName::try_from(k), v) {
                        b = b.attr(n, v);
                    }
                }
                if let Some(s) = p.show {
                    b = b.append(Element::builder("show", NS).append(s).build());
                }
                if let Some(s) = &p.status {
                    b = b.append(Element::builder("status", NS).append(s.as_str()).build());
                }
                b.build()
            }
        }
    }

    /// Appends the stanza as XML text to `buf`, for a stream whose default namespace is
    /// [`NS`] (an element other than a presence declares it again, which XML allows).
    pub fn write_text(&self, buf: &mut Vec<u8>) {
        match self {
            Out::Stanza(el) => {
                if el.write_to(buf).is_err() {
                    // only for elements we did not build (names are constants): never sent
                    tracing::warn!("presence component: a stanza could not be serialised");
                }
            }
            Out::Presence(p) => {
                buf.extend_from_slice(b"<presence from='");
                buf.extend_from_slice(escape(&p.from).as_bytes());
                buf.extend_from_slice(b"' to='");
                buf.extend_from_slice(escape(&p.to).as_bytes());
                buf.push(b'\'');
                if let Some(t) = p.kind {
                    buf.extend_from_slice(b" type='");
                    buf.extend_from_slice(escape(t).as_bytes());
                    buf.push(b'\'');
                }
                if p.show.is_none() && p.status.is_none() {
                    buf.extend_from_slice(b"/>");
                    return;
                }
                buf.push(b'>');
                if let Some(s) = p.show {
                    buf.extend_from_slice(b"<show>");
                    buf.extend_from_slice(escape(s).as_bytes());
                    buf.extend_from_slice(b"</show>");
                }
                if let Some(s) = &p.status {
                    buf.extend_from_slice(b"<status>");
                    buf.extend_from_slice(escape(s).as_bytes());
                    buf.extend_from_slice(b"</status>");
                }
                buf.extend_from_slice(b"</presence>");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(o: &Out) -> Element {
        let mut buf = Vec::new();
        o.write_text(&mut buf);
        let text = String::from_utf8(buf).expect("utf-8");
        // as in the stream: the default namespace is the component's
        let wrapped = format!("<stream xmlns='{NS}'>{text}</stream>");
        let root: Element = wrapped.parse().expect("well-formed");
        root.children().next().expect("one stanza").clone()
    }

    #[test]
    fn text_is_the_same_stanza_as_the_element() {
        let cases = [
            Out::Presence(Presence {
                from: "1000@agents.test/fabric".into(),
                to: "boss@test".into(),
                kind: None,
                show: Some("dnd"),
                status: Some("Paused: <Lunch> & 'tea' \"12m\"\r".into()),
            }),
            Out::Presence(Presence {
                from: "1000@agents.test/fabric".into(),
                to: "boss@test".into(),
                kind: Some("unavailable"),
                show: None,
                status: Some("Offline".into()),
            }),
            Out::Presence(Presence {
                from: "1000@agents.test".into(),
                to: "boss@test".into(),
                kind: Some("subscribed"),
                show: None,
                status: None,
            }),
            Out::Stanza(
                Element::builder("iq", NS)
                    .attr(NcName::try_from("type").expect("name"), "result")
                    .append(Element::builder("query", "urn:x").build())
                    .build(),
            ),
        ];
        for o in &cases {
            assert_eq!(parsed(o), o.to_element(), "{o:?}");
        }
        assert_eq!(cases[1].attr("type"), Some("unavailable"));
        assert_eq!(cases[0].attr("from"), Some("1000@agents.test/fabric"));
        assert_eq!(cases[3].attr("type"), Some("result"));
    }
}

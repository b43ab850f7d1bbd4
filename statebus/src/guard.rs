//! The stanza guard: bounds on what the XMPP server sends, applied to the raw bytes *before*
//! tokio-xmpp's XML parser and minidom see them. Sans-IO: bytes in, bytes out.
//!
//! Why here and not in the parser: tokio-xmpp 6 builds every stanza with a fixed
//! `rxml::Parser::default()` (8,192-byte token limit, no depth limit, not configurable), and
//! xso's minidom builder recurses once per nesting level. So a PubSub item nested ~1,000 deep
//! overflows the task's stack, and an item id or attribute over 8,192 bytes is a parse error
//! that ends the stream (and, with stream management, comes back on every resumption).
//! The guard scans the byte stream with a small lexer and, per PubSub *item* (an element at
//! stream depth 5: `stream/message/event/items/item` or `stream/iq/pubsub/items/item`),
//! buffers the item and drops it whole if it breaks a limit. Whatever breaks a limit outside an
//! item replaces its whole stanza with an empty `<message/>`, so stream management still
//! counts one stanza. Everything else passes byte for byte.
//!
//! Servers re-serialise what they relay, so the input is well-formed XML; the lexer assumes
//! that and, on anything it does not understand, drops the enclosing item or stanza.

/// The limits the guard enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest element name, attribute name or attribute value, in raw bytes (rxml's own limit
    /// is 8,192 and ends the stream).
    pub max_token: usize,
    /// Deepest nesting inside a stanza (the stanza itself is level 1).
    pub max_stanza_depth: usize,
    /// Deepest nesting inside an item (the item itself is level 1).
    pub max_item_depth: usize,
    /// Largest item, in raw bytes.
    pub max_item_bytes: usize,
    /// Most elements in one item.
    pub max_item_elements: usize,
    /// Largest stanza, in raw bytes, once oversized items are dropped.
    pub max_stanza_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_token: 4096,
            max_stanza_depth: 16,
            max_item_depth: 8,
            max_item_bytes: 16 * 1024,
            max_item_elements: 64,
            max_stanza_bytes: 16 * 1024 * 1024,
        }
    }
}

/// Why something was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// A name or attribute value over `max_token`.
    Token,
    /// Nesting over a depth limit.
    Depth,
    /// An item over `max_item_bytes` or a stanza over `max_stanza_bytes`.
    Size,
    /// An item with more than `max_item_elements` elements.
    Count,
    /// An entity or character reference XML does not define.
    Entity,
    /// Markup the guard does not accept (DOCTYPE, `<` in an attribute value, …).
    Syntax,
}

/// One dropped item or stanza.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    /// The first limit it broke.
    pub why: Violation,
    /// Whole stanza (true) or one item (false).
    pub stanza: bool,
    /// The item's `id` (truncated to 64 bytes), if it was an item.
    pub item_id: String,
    /// Who published it: the item's `publisher` attribute, else the payload's `eid`, else the
    /// stanza's `from` (truncated to 64 bytes). Used to rate-limit logs per publisher.
    pub publisher: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lex {
    Text,
    /// After `&` in text (`attr == false`) or in an attribute value.
    Entity {
        attr: bool,
    },
    Lt,
    OpenName,
    CloseName,
    InTag,
    SelfClose,
    AttrName,
    AttrEq,
    AttrValue(u8),
    Pi {
        q: bool,
    },
    Bang,
    Comment {
        dashes: u8,
    },
    CData {
        brackets: u8,
    },
}

/// Stream depth of the elements that are buffered and dropped whole (PubSub items).
const ITEM_DEPTH: usize = 5;
/// Bytes of an attribute value kept for the drop report.
const KEEP: usize = 64;

/// The guard. Feed it what the server sent; read back what may reach the parser.
#[derive(Debug)]
pub struct Guard {
    limits: Limits,
    lex: Lex,
    /// Open elements (the stream header counts as one).
    depth: usize,
    /// Bytes ready for the parser.
    out: Vec<u8>,
    /// The stanza (or stream-level markup) being read.
    cur: Vec<u8>,
    /// Offset in `cur` of the `<` of the tag being read.
    tag_start: usize,
    /// Offset in `cur` where the current stanza starts.
    stanza_offset: usize,
    /// The quote of the attribute value being read.
    quote: u8,
    /// The first limit the current stanza broke outside an item.
    stanza_bad: Option<Violation>,
    /// Dropping the rest of the stanza (bytes scanned, not kept).
    stanza_discard: bool,
    /// The current item: where it starts in `cur`, and what is known so far.
    item: Option<Item>,
    /// The current tag's name (bounded) and, for the tags we report on, attributes.
    name: Vec<u8>,
    name_len: usize,
    attr_name: Vec<u8>,
    attr_name_len: usize,
    attr_value: Vec<u8>,
    attr_value_len: usize,
    entity: Vec<u8>,
    tag_attrs: Vec<(Vec<u8>, Vec<u8>)>,
    stanza_from: String,
    /// Offset in `cur` where ` h='0'` goes: an XEP-0198 `<failed/>` without `h` (see
    /// [`Guard::open_tag`]).
    sm_failed_without_h: Option<usize>,
    dropped: Vec<Dropped>,
}

#[derive(Debug)]
struct Item {
    start: usize,
    bad: Option<Violation>,
    elements: usize,
    id: String,
    publisher: String,
    /// Bytes are scanned but no longer kept (the item is being dropped).
    discard: bool,
}

fn truncated(v: &[u8]) -> String {
    String::from_utf8_lossy(&v[..v.len().min(KEEP)]).into_owned()
}

fn is_name_byte(b: u8) -> bool {
    !matches!(
        b,
        b' ' | b'\t' | b'\r' | b'\n' | b'/' | b'>' | b'=' | b'<' | b'\'' | b'"' | b'&'
    )
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn entity_ok(e: &[u8]) -> bool {
    match e {
        b"amp" | b"lt" | b"gt" | b"apos" | b"quot" => true,
        [b'#', b'x', hex @ ..] if !hex.is_empty() => std::str::from_utf8(hex)
            .ok()
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .is_some_and(xml_char),
        [b'#', dec @ ..] if !dec.is_empty() => std::str::from_utf8(dec)
            .ok()
            .filter(|d| d.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|d| d.parse::<u32>().ok())
            .is_some_and(xml_char),
        _ => false,
    }
}

fn xml_char(c: u32) -> bool {
    matches!(c, 0x9 | 0xA | 0xD | 0x20..=0xD7FF | 0xE000..=0xFFFD | 0x10000..=0x10FFFF)
}

impl Default for Guard {
    fn default() -> Self {
        Guard::new(Limits::default())
    }
}

impl Guard {
    /// A guard at the start of a stream.
    pub fn new(limits: Limits) -> Self {
        Guard {
            limits,
            lex: Lex::Text,
            depth: 0,
            out: Vec::new(),
            cur: Vec::new(),
            tag_start: 0,
            stanza_offset: 0,
            quote: b'\'',
            stanza_bad: None,
            stanza_discard: false,
            item: None,
            name: Vec::new(),
            name_len: 0,
            attr_name: Vec::new(),
            attr_name_len: 0,
            attr_value: Vec::new(),
            attr_value_len: 0,
            entity: Vec::new(),
            tag_attrs: Vec::new(),
            stanza_from: String::new(),
            sm_failed_without_h: None,
            dropped: Vec::new(),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Scan received bytes.
    pub fn feed(&mut self, input: &[u8]) {
        for &b in input {
            self.byte(b);
        }
        self.flush_stream_level();
    }

    /// Take the bytes that may go to the XML parser.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// Take the reports of what was dropped since the last call.
    pub fn take_dropped(&mut self) -> Vec<Dropped> {
        std::mem::take(&mut self.dropped)
    }

    /// Bytes held back (an incomplete stanza).
    pub fn buffered(&self) -> usize {
        self.cur.len()
    }

    fn in_stanza(&self) -> bool {
        self.depth >= 2 || (self.depth == 1 && self.lex != Lex::Text)
    }

    /// At stream level with no tag open: everything read so far may go.
    fn flush_stream_level(&mut self) {
        if !self.in_stanza() && matches!(self.lex, Lex::Text) && !self.cur.is_empty() {
            self.out.append(&mut self.cur);
        }
    }

    fn keep(&mut self, b: u8) {
        let discarding = self.stanza_discard || self.item.as_ref().is_some_and(|i| i.discard);
        if !discarding {
            self.cur.push(b);
        }
        if let Some(it) = &self.item {
            if !it.discard && self.cur.len() - it.start > self.limits.max_item_bytes {
                self.item_violation(Violation::Size);
            }
        } else if self.in_stanza()
            && !self.stanza_discard
            && self.cur.len() > self.limits.max_stanza_bytes
        {
            self.stanza_violation(Violation::Size);
        }
    }

    /// A limit broken: inside an item the item goes, elsewhere the stanza.
    fn violation(&mut self, v: Violation) {
        if self.item.is_some() {
            self.item_violation(v);
        } else if self.in_stanza() {
            self.stanza_violation(v);
        }
        // At stream level (stream header): nothing sane to do but let the parser judge.
    }

    fn item_violation(&mut self, v: Violation) {
        if let Some(it) = &mut self.item {
            if it.bad.is_none() {
                it.bad = Some(v);
            }
            if !it.discard {
                it.discard = true;
                self.cur.truncate(it.start);
            }
        }
    }

    fn stanza_violation(&mut self, v: Violation) {
        if self.stanza_bad.is_none() {
            self.stanza_bad = Some(v);
        }
        if !self.stanza_discard {
            self.stanza_discard = true;
            self.item = None;
            // Keep nothing of the stanza; a placeholder replaces it at its end.
            self.cur.truncate(self.stanza_offset);
        }
    }

    fn byte(&mut self, b: u8) {
        match self.lex {
            Lex::Text => match b {
                b'<' => {
                    if !self.in_stanza() {
                        self.flush_stream_level();
                        self.stanza_offset = self.cur.len();
                    }
                    self.tag_start = self.cur.len();
                    self.keep(b);
                    self.lex = Lex::Lt;
                }
                b'&' => {
                    self.keep(b);
                    self.entity.clear();
                    self.lex = Lex::Entity { attr: false };
                }
                _ => self.keep(b),
            },
            Lex::Entity { attr } => {
                let back = if attr {
                    Lex::AttrValue(self.quote)
                } else {
                    Lex::Text
                };
                if b == b';' {
                    self.keep(b);
                    if !entity_ok(&self.entity) {
                        self.violation(Violation::Entity);
                    }
                    self.lex = back;
                } else if self.entity.len() >= 10 || b == b'<' || b == b'&' || is_space(b) {
                    // Unterminated reference: judge it, then read this byte again.
                    self.violation(Violation::Entity);
                    self.lex = back;
                    self.byte(b);
                    return;
                } else {
                    self.keep(b);
                    self.entity.push(b);
                }
                if attr {
                    self.attr_value_len += 1;
                    if self.attr_value_len > self.limits.max_token {
                        self.violation(Violation::Token);
                    }
                }
            }
            Lex::Lt => {
                self.keep(b);
                match b {
                    b'/' => {
                        self.start_name();
                        self.lex = Lex::CloseName;
                    }
                    b'?' => self.lex = Lex::Pi { q: false },
                    b'!' => {
                        self.entity.clear();
                        self.lex = Lex::Bang;
                    }
                    _ if is_name_byte(b) => {
                        if self.depth == ITEM_DEPTH - 1 && !self.stanza_discard {
                            // This tag opens an item: whatever it breaks, even in its own
                            // attributes (a 64 kB id), drops the item only.
                            self.item = Some(Item {
                                start: self.tag_start,
                                bad: None,
                                elements: 0,
                                id: String::new(),
                                publisher: String::new(),
                                discard: false,
                            });
                        }
                        self.start_name();
                        self.tag_attrs.clear();
                        self.name_byte(b);
                        self.lex = Lex::OpenName;
                    }
                    _ => {
                        self.violation(Violation::Syntax);
                        self.lex = Lex::Text;
                    }
                }
            }
            Lex::OpenName => {
                self.keep(b);
                if is_name_byte(b) {
                    self.name_byte(b);
                } else if is_space(b) {
                    self.lex = Lex::InTag;
                } else if b == b'/' {
                    self.lex = Lex::SelfClose;
                } else if b == b'>' {
                    self.open_tag(false);
                } else {
                    self.violation(Violation::Syntax);
                    self.lex = Lex::InTag;
                }
            }
            Lex::CloseName => {
                self.keep(b);
                if b == b'>' {
                    self.close_tag();
                } else if is_name_byte(b) {
                    self.name_byte(b);
                } else if !is_space(b) {
                    self.violation(Violation::Syntax);
                }
            }
            Lex::InTag => {
                self.keep(b);
                match b {
                    _ if is_space(b) => {}
                    b'/' => self.lex = Lex::SelfClose,
                    b'>' => self.open_tag(false),
                    _ if is_name_byte(b) => {
                        self.attr_name.clear();
                        self.attr_name_len = 0;
                        self.attr_name_byte(b);
                        self.lex = Lex::AttrName;
                    }
                    _ => self.violation(Violation::Syntax),
                }
            }
            Lex::SelfClose => {
                self.keep(b);
                if b == b'>' {
                    self.open_tag(true);
                } else {
                    self.violation(Violation::Syntax);
                    self.lex = Lex::InTag;
                }
            }
            Lex::AttrName => {
                self.keep(b);
                if b == b'=' {
                    self.lex = Lex::AttrEq;
                } else if is_space(b) {
                    // `name =`: wait for '='.
                } else if is_name_byte(b) {
                    self.attr_name_byte(b);
                } else {
                    self.violation(Violation::Syntax);
                    self.lex = Lex::InTag;
                }
            }
            Lex::AttrEq => {
                self.keep(b);
                if b == b'\'' || b == b'"' {
                    self.quote = b;
                    self.attr_value.clear();
                    self.attr_value_len = 0;
                    self.lex = Lex::AttrValue(b);
                } else if !is_space(b) {
                    self.violation(Violation::Syntax);
                    self.lex = Lex::InTag;
                }
            }
            Lex::AttrValue(q) => {
                self.keep(b);
                if b == q {
                    let name = std::mem::take(&mut self.attr_name);
                    let value = std::mem::take(&mut self.attr_value);
                    self.tag_attrs.push((name, value));
                    self.lex = Lex::InTag;
                } else if b == b'<' {
                    self.violation(Violation::Syntax);
                } else {
                    if b == b'&' {
                        self.entity.clear();
                        self.lex = Lex::Entity { attr: true };
                    }
                    self.attr_value_len += 1;
                    if self.attr_value.len() < KEEP {
                        self.attr_value.push(b);
                    }
                    if self.attr_value_len > self.limits.max_token {
                        self.violation(Violation::Token);
                    }
                }
            }
            Lex::Pi { q } => {
                self.keep(b);
                if q && b == b'>' {
                    self.lex = Lex::Text;
                } else {
                    self.lex = Lex::Pi { q: b == b'?' };
                }
            }
            Lex::Bang => {
                self.keep(b);
                self.entity.push(b);
                let e = self.entity.as_slice();
                if e == b"--" {
                    self.lex = Lex::Comment { dashes: 0 };
                } else if e == b"[CDATA[" {
                    self.lex = Lex::CData { brackets: 0 };
                } else if !(b"--".starts_with(e) || b"[CDATA[".starts_with(e)) {
                    // DOCTYPE and the like: never in a stream.
                    self.violation(Violation::Syntax);
                    self.lex = Lex::Pi { q: true };
                }
            }
            Lex::Comment { dashes } => {
                self.keep(b);
                self.lex = match (b, dashes) {
                    (b'-', d) => Lex::Comment {
                        dashes: (d + 1).min(2),
                    },
                    (b'>', 2) => Lex::Text,
                    _ => Lex::Comment { dashes: 0 },
                };
            }
            Lex::CData { brackets } => {
                self.keep(b);
                self.lex = match (b, brackets) {
                    (b']', d) => Lex::CData {
                        brackets: (d + 1).min(2),
                    },
                    (b'>', 2) => Lex::Text,
                    _ => Lex::CData { brackets: 0 },
                };
            }
        }
    }

    fn start_name(&mut self) {
        self.name.clear();
        self.name_len = 0;
    }

    fn name_byte(&mut self, b: u8) {
        self.name_len += 1;
        if self.name.len() < KEEP {
            self.name.push(b);
        }
        if self.name_len > self.limits.max_token {
            self.violation(Violation::Token);
        }
    }

    fn attr_name_byte(&mut self, b: u8) {
        self.attr_name_len += 1;
        if self.attr_name.len() < KEEP {
            self.attr_name.push(b);
        }
        if self.attr_name_len > self.limits.max_token {
            self.violation(Violation::Token);
        }
    }

    fn attr(&self, name: &[u8]) -> Option<&[u8]> {
        self.tag_attrs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    fn is_stream_header(&self) -> bool {
        self.name == b"stream" || self.name.ends_with(b":stream")
    }

    fn open_tag(&mut self, empty: bool) {
        self.lex = Lex::Text;
        if self.depth <= 1 && self.is_stream_header() {
            // A stream header (the first one, or a restart after SASL): stream level. One that
            // broke a limit is passed truncated: the parser then ends the stream.
            self.depth = 1;
            self.stanza_discard = false;
            self.stanza_bad = None;
            return;
        }
        self.depth += 1;
        if self.depth == 2 {
            self.stanza_from = self.attr(b"from").map(truncated).unwrap_or_default();
            // XEP-0198 lets a server omit `h` on `<failed/>` (ejabberd does when it refuses a
            // resumption: "Previous session not found"); xmpp-parsers 0.23 requires it, so the
            // refusal read as a broken stream and tokio-xmpp retried the resumption forever.
            // With `h='0'` it parses, tokio-xmpp drops its stream-management state and binds a
            // fresh session (an `h` that does not match is ignored).
            self.sm_failed_without_h = (self.name == b"failed"
                && self.attr(b"xmlns") == Some(b"urn:xmpp:sm:3")
                && self.attr(b"h").is_none())
            .then_some(self.tag_start + 1 + self.name.len());
        }
        if self.depth.saturating_sub(1) > self.limits.max_stanza_depth {
            self.violation(Violation::Depth);
        }
        if self.depth == ITEM_DEPTH {
            let id = self.attr(b"id").map(truncated).unwrap_or_default();
            let publisher = self.attr(b"publisher").map(truncated).unwrap_or_default();
            if let Some(it) = &mut self.item {
                it.id = id;
                it.publisher = publisher;
            }
        }
        if self.depth > ITEM_DEPTH {
            if let Some(it) = &mut self.item {
                if self.depth == ITEM_DEPTH + 1 && it.publisher.is_empty() {
                    it.publisher = self
                        .tag_attrs
                        .iter()
                        .find(|(n, _)| n == b"eid")
                        .map(|(_, v)| truncated(v))
                        .unwrap_or_default();
                }
            }
            if self.depth - ITEM_DEPTH + 1 > self.limits.max_item_depth {
                self.violation(Violation::Depth);
            }
        }
        if let Some(it) = &mut self.item {
            it.elements += 1;
            if it.elements > self.limits.max_item_elements {
                self.item_violation(Violation::Count);
            }
        }
        if empty {
            self.end_element();
        }
    }

    fn close_tag(&mut self) {
        self.lex = Lex::Text;
        if self.depth <= 1 {
            // `</stream:stream>` (or garbage at stream level): the stream ends.
            self.depth = 0;
            return;
        }
        self.end_element();
    }

    fn end_element(&mut self) {
        if self.depth == ITEM_DEPTH {
            if let Some(it) = self.item.take() {
                if let Some(why) = it.bad {
                    if !it.discard {
                        self.cur.truncate(it.start);
                    }
                    let publisher = if it.publisher.is_empty() {
                        self.stanza_from.clone()
                    } else {
                        it.publisher
                    };
                    self.dropped.push(Dropped {
                        why,
                        stanza: false,
                        item_id: it.id,
                        publisher,
                    });
                }
            }
        }
        self.depth -= 1;
        if self.depth == 1 {
            self.end_stanza();
        }
    }

    fn end_stanza(&mut self) {
        if self.stanza_discard {
            self.cur.truncate(self.stanza_offset);
            self.cur.extend_from_slice(b"<message/>");
            self.dropped.push(Dropped {
                why: self.stanza_bad.unwrap_or(Violation::Syntax),
                stanza: true,
                item_id: String::new(),
                publisher: self.stanza_from.clone(),
            });
        }
        if let Some(at) = self.sm_failed_without_h.take() {
            if !self.stanza_discard && at <= self.cur.len() {
                self.cur.splice(at..at, *b" h='0'");
            }
        }
        self.stanza_discard = false;
        self.stanza_bad = None;
        self.item = None;
        self.out.append(&mut self.cur);
    }
}

//! A deliberately tiny XMPP client over a plain `std::net::TcpStream`: enough for readiness
//! probes (`<stream:features>`), SASL PLAIN checks and in-band registration (XEP-0077).
//!
//! It is not an XML parser: it scans the received text for the elements it waits for. That is
//! fine against Prosody and ejabberd, which answer these few requests with small, flat stanzas.

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// An open c2s stream that has received its (first) `<stream:features>`.
pub struct RawXmpp {
    stream: TcpStream,
    /// Received, not yet consumed text.
    buf: String,
    pending: Vec<u8>,
    deadline: Instant,
    features: String,
}

impl RawXmpp {
    /// Connects, opens a client stream to `domain` and reads the stream features. `timeout`
    /// bounds the connect and every later exchange on this stream.
    pub fn connect(addr: SocketAddr, domain: &str, timeout: Duration) -> anyhow::Result<RawXmpp> {
        let mut conn = RawXmpp::tcp(addr, timeout)?;
        conn.open_stream(domain)?;
        Ok(conn)
    }

    /// A TCP connection to `addr` (no delay), nothing sent yet; `timeout` bounds the connect
    /// and every later exchange.
    fn tcp(addr: SocketAddr, timeout: Duration) -> anyhow::Result<RawXmpp> {
        let deadline = Instant::now() + timeout;
        let stream = TcpStream::connect_timeout(&addr, timeout)
            .with_context(|| format!("connect to {addr}"))?;
        stream.set_nodelay(true).ok();
        Ok(RawXmpp {
            stream,
            buf: String::new(),
            pending: Vec::new(),
            deadline,
            features: String::new(),
        })
    }

    /// Connects as the XEP-0114 external component `jid` and logs in with `secret` (the
    /// handshake: hex SHA-1 of the server's stream id and the secret). The stream is then
    /// ready for stanzas in `jabber:component:accept` (a floor for the presence component).
    pub fn component(
        addr: SocketAddr,
        jid: &str,
        secret: &str,
        timeout: Duration,
    ) -> anyhow::Result<RawXmpp> {
        use sha1::Digest as _;
        let mut conn = RawXmpp::tcp(addr, timeout)?;
        conn.send(&format!(
            "<?xml version='1.0'?><stream:stream to='{}' xmlns='jabber:component:accept' \
             xmlns:stream='http://etherx.jabber.org/streams'>",
            escape(jid)
        ))?;
        let id = loop {
            if let Some(start) = conn.buf.find("<stream:stream") {
                if let Some(len) = conn.buf[start..].find('>') {
                    let tag = conn.buf[start..start + len].to_string();
                    conn.buf.drain(..start + len + 1);
                    break attr_value(&tag, "id")
                        .with_context(|| format!("no stream id in {tag}"))?;
                }
            }
            conn.fill()?;
        };
        let digest = sha1::Sha1::digest(format!("{id}{secret}").as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        conn.send(&format!("<handshake>{hex}</handshake>"))?;
        conn.read_element("handshake", |_| true)
            .with_context(|| format!("component handshake as {jid}"))?;
        Ok(conn)
    }

    fn open_stream(&mut self, domain: &str) -> anyhow::Result<()> {
        self.send(&format!(
            "<?xml version='1.0'?><stream:stream to='{}' version='1.0' xml:lang='en' \
             xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>",
            escape(domain)
        ))?;
        let features = self.read_element("stream:features", |_| true)?;
        self.features = features;
        Ok(())
    }

    /// The `<stream:features>…</stream:features>` element received last.
    pub fn features(&self) -> &str {
        &self.features
    }

    /// Another handle to the connection's socket (e.g. to write from a tokio task).
    pub fn try_clone_stream(&self) -> std::io::Result<TcpStream> {
        self.stream.try_clone()
    }

    /// The local address of the connection (e.g. to find it in `wanlab` flow counters).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.stream.local_addr()
    }

    /// Moves the deadline for the exchanges that follow.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.deadline = Instant::now() + timeout;
    }

    /// Sends raw text.
    pub fn send(&mut self, text: &str) -> anyhow::Result<()> {
        self.stream.set_write_timeout(Some(self.remaining()?)).ok();
        self.stream
            .write_all(text.as_bytes())
            .context("send to the XMPP server")?;
        Ok(())
    }

    fn remaining(&self) -> anyhow::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("XMPP exchange timed out; received so far: {}", self.buf);
        }
        Ok(left)
    }

    /// Reads more bytes into the buffer; errors on EOF, timeout or a stream error.
    fn fill(&mut self) -> anyhow::Result<()> {
        let left = self.remaining()?;
        self.stream.set_read_timeout(Some(left)).ok();
        let mut chunk = [0u8; 8192];
        let n = match self.stream.read(&mut chunk) {
            Ok(0) => bail!("XMPP server closed the connection; received: {}", self.buf),
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                bail!("XMPP exchange timed out; received so far: {}", self.buf)
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => 0,
            Err(e) => return Err(e).context("read from the XMPP server"),
        };
        self.pending.extend_from_slice(&chunk[..n]);
        // keep an incomplete UTF-8 sequence for the next read
        match std::str::from_utf8(&self.pending) {
            Ok(s) => {
                self.buf.push_str(s);
                self.pending.clear();
            }
            Err(e) if e.error_len().is_none() => {
                let valid = e.valid_up_to();
                self.buf
                    .push_str(&String::from_utf8_lossy(&self.pending[..valid]));
                self.pending.drain(..valid);
            }
            Err(_) => {
                self.buf.push_str(&String::from_utf8_lossy(&self.pending));
                self.pending.clear();
            }
        }
        if self.buf.contains("<stream:error") {
            bail!("XMPP stream error: {}", self.buf);
        }
        Ok(())
    }

    /// Waits for the first complete element named `name` whose start tag satisfies `pick`,
    /// returns it, and drops everything received up to its end.
    pub fn read_element(
        &mut self,
        name: &str,
        pick: impl Fn(&str) -> bool,
    ) -> anyhow::Result<String> {
        loop {
            if let Some((start, end)) = find_element(&self.buf, name, &pick) {
                let element = self.buf[start..end].to_string();
                self.buf.drain(..end);
                return Ok(element);
            }
            self.fill()?;
        }
    }

    /// Waits for the first complete element among `names`, returning (name, element).
    pub fn read_one_of(&mut self, names: &[&str]) -> anyhow::Result<(String, String)> {
        loop {
            let found = names
                .iter()
                .filter_map(|n| find_element(&self.buf, n, |_| true).map(|r| (*n, r)))
                .min_by_key(|(_, (start, _))| *start);
            if let Some((name, (start, end))) = found {
                let element = self.buf[start..end].to_string();
                self.buf.drain(..end);
                return Ok((name.to_string(), element));
            }
            self.fill()?;
        }
    }

    /// SASL PLAIN (RFC 4616) with `user` (localpart) and `password`. `Ok(true)` on
    /// `<success/>`, `Ok(false)` on `<failure/>`; on success the stream is restarted and the new
    /// features are read.
    pub fn sasl_plain(&mut self, domain: &str, user: &str, password: &str) -> anyhow::Result<bool> {
        if !self.features.contains(">PLAIN<") {
            bail!(
                "the server does not offer SASL PLAIN here; features: {}",
                self.features
            );
        }
        let token = base64(format!("\0{user}\0{password}").as_bytes());
        self.send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>"
        ))?;
        let (name, _) = self.read_one_of(&["success", "failure"])?;
        if name == "failure" {
            return Ok(false);
        }
        self.open_stream(domain)?;
        Ok(true)
    }

    /// Sends `<iq>` with the given type and payload, waits for the answer with the same id.
    /// Returns the whole answer; errors on `type='error'`.
    pub fn iq(&mut self, kind: &str, to: Option<&str>, payload: &str) -> anyhow::Result<String> {
        let id = next_id();
        let to = to
            .map(|t| format!(" to='{}'", escape(t)))
            .unwrap_or_default();
        self.send(&format!("<iq type='{kind}' id='{id}'{to}>{payload}</iq>"))?;
        let answer = self.read_element("iq", |tag| has_attr(tag, "id", &id))?;
        let start_tag = &answer[..answer.find('>').unwrap_or(answer.len())];
        if has_attr(start_tag, "type", "error") {
            bail!("iq {kind} failed: {answer}");
        }
        Ok(answer)
    }

    /// In-band registration (XEP-0077) of `user`@server with `password`, on a fresh stream.
    pub fn register(&mut self, user: &str, password: &str) -> anyhow::Result<()> {
        self.iq(
            "set",
            None,
            &format!(
                "<query xmlns='jabber:iq:register'><username>{}</username>\
                 <password>{}</password></query>",
                escape(user),
                escape(password)
            ),
        )
        .with_context(|| format!("in-band registration of {user}"))?;
        Ok(())
    }

    /// Gives up the parsing: the socket and the text received but not consumed yet (for
    /// benchmarks that only count bytes).
    pub fn into_parts(self) -> (TcpStream, String) {
        (self.stream, self.buf)
    }

    /// Closes the stream (best effort).
    pub fn close(mut self) {
        let _ = self.send("</stream:stream>");
    }
}

/// Connects to `addr` and returns the `<stream:features>` element the server sends for `domain`.
pub fn stream_features(
    addr: SocketAddr,
    domain: &str,
    timeout: Duration,
) -> anyhow::Result<String> {
    let conn = RawXmpp::connect(addr, domain, timeout)?;
    let features = conn.features().to_string();
    conn.close();
    Ok(features)
}

/// Logs in with SASL PLAIN over plaintext: `Ok(true)` if the server accepts the credentials,
/// `Ok(false)` if it answers `<failure/>`.
pub fn sasl_plain_login(
    addr: SocketAddr,
    domain: &str,
    user: &str,
    password: &str,
    timeout: Duration,
) -> anyhow::Result<bool> {
    let mut conn = RawXmpp::connect(addr, domain, timeout)?;
    let ok = conn.sasl_plain(domain, user, password)?;
    conn.close();
    Ok(ok)
}

/// Registers `user`@`domain` in-band (XEP-0077).
pub fn register_user(
    addr: SocketAddr,
    domain: &str,
    user: &str,
    password: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let mut conn = RawXmpp::connect(addr, domain, timeout)?;
    conn.register(user, password)?;
    conn.close();
    Ok(())
}

fn next_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1);
    format!("raw{}", N.fetch_add(1, Ordering::Relaxed))
}

/// The value of attribute `name` in a start tag (either quote; not unescaped).
fn attr_value(tag: &str, name: &str) -> Option<String> {
    for q in ['\'', '"'] {
        let key = format!(" {name}={q}");
        if let Some(i) = tag.find(&key) {
            let rest = &tag[i + key.len()..];
            return rest.find(q).map(|end| rest[..end].to_string());
        }
    }
    None
}

/// Does the start tag contain `name='value'` (either quote)?
fn has_attr(tag: &str, name: &str, value: &str) -> bool {
    tag.contains(&format!(" {name}='{value}'")) || tag.contains(&format!(" {name}=\"{value}\""))
}

/// Byte range of the first complete element `<name …>…</name>` or `<name …/>` whose start tag
/// satisfies `pick`. Nested elements of the same name are not supported (not needed here).
fn find_element(buf: &str, name: &str, pick: impl Fn(&str) -> bool) -> Option<(usize, usize)> {
    let open = format!("<{name}");
    let close = format!("</{name}>");
    let mut from = 0;
    while let Some(rel) = buf[from..].find(&open) {
        let start = from + rel;
        let after = start + open.len();
        // the name must end here: '<iq ' and not '<iqx'
        match buf[after..].chars().next() {
            None => return None,
            Some(c) if c == '>' || c == '/' || c.is_whitespace() => {}
            Some(_) => {
                from = after;
                continue;
            }
        }
        let tag_end = after + buf[after..].find('>')? + 1;
        let tag = &buf[start..tag_end];
        if !pick(tag) {
            from = tag_end;
            continue;
        }
        if tag.ends_with("/>") {
            return Some((start, tag_end));
        }
        let end = tag_end + buf[tag_end..].find(&close)? + close.len();
        return Some((start, end));
    }
    None
}

/// XML-escapes text for attributes and character data (the fabric's own escaping).
pub use statebus::wire::escape;

/// Standard base64 with padding.
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A session logged in with SASL PLAIN, bound to `resource`, with its initial presence sent
/// (so that notifications to the bare JID reach it).
pub fn bound_session(
    addr: SocketAddr,
    domain: &str,
    user: &str,
    password: &str,
    resource: &str,
    timeout: Duration,
) -> anyhow::Result<RawXmpp> {
    let mut c = RawXmpp::connect(addr, domain, timeout)?;
    if !c.sasl_plain(domain, user, password)? {
        bail!("login {user} refused");
    }
    c.iq(
        "set",
        None,
        &format!(
            "<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{resource}</resource></bind>"
        ),
    )?;
    c.send("<presence/>")?;
    Ok(c)
}

/// The raw XMPP floor of the benchmarks: one publisher and one subscriber session on a flat,
/// open node of their own; a round publishes one device-state item (the Asterisk wire format)
/// and times it until the subscriber holds the notification. What a fabric hop costs the
/// server and two clients that do nothing else.
pub struct Floor {
    publisher: RawXmpp,
    sub: RawXmpp,
    svc: String,
    node: String,
    timeout: Duration,
}

impl Floor {
    /// Creates `node` at `svc` from `publisher` and subscribes `sub` (whose bare JID is
    /// `sub_jid`) to it.
    pub fn new(
        mut publisher: RawXmpp,
        mut sub: RawXmpp,
        svc: &str,
        node: &str,
        sub_jid: &str,
        timeout: Duration,
    ) -> anyhow::Result<Floor> {
        use statebus::wire::{self, AccessModel, NodeKind};
        let create = wire::create_node_xml(node, NodeKind::Flat, AccessModel::Open, 10_000);
        publisher
            .iq("set", Some(svc), &create)
            .context("create the floor's node")?;
        sub.iq("set", Some(svc), &wire::subscribe_xml(node, sub_jid, false))
            .context("subscribe to the floor's node")?;
        Ok(Floor {
            publisher,
            sub,
            svc: svc.to_owned(),
            node: node.to_owned(),
            timeout,
        })
    }

    /// The publisher's local address (to tell its TCP flow apart).
    pub fn publisher_addr(&self) -> std::io::Result<SocketAddr> {
        self.publisher.local_addr()
    }

    /// One round: publish item `PJSIP/{i % 100}` (InUse / NotInUse alternately), time it to
    /// its notification, then read the publish result (not timed).
    pub fn round_trip(&mut self, i: usize) -> anyhow::Result<Duration> {
        use statebus::{wire, DeviceState, Eid};
        let st = if i.is_multiple_of(2) {
            DeviceState::InUse
        } else {
            DeviceState::NotInUse
        };
        let item = format!("PJSIP/{}", i % 100);
        let eid = Eid([2, 0, 0, 0, 0, 0x99]);
        let iq = format!(
            "<iq type='set' id='floor{i}' to='{}'>{}</iq>",
            self.svc,
            wire::publish_xml(&self.node, &item, &wire::device_state_xml(eid, st, true))
        );
        let want = format!("id='{item}'");
        let t0 = Instant::now();
        self.publisher.send(&iq)?;
        self.sub.set_timeout(self.timeout);
        let m = self
            .sub
            .read_element("message", |_| true)
            .with_context(|| format!("floor notification {i}"))?;
        let took = t0.elapsed();
        if !m.contains(&want) {
            bail!("unexpected notification {m}");
        }
        self.publisher.set_timeout(self.timeout);
        self.publisher
            .read_element("iq", |_| true)
            .with_context(|| format!("floor publish result {i}"))?;
        Ok(took)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in cases {
            assert_eq!(base64(plain.as_bytes()), encoded, "{plain:?}");
        }
        assert_eq!(base64(b"\0gw-a\0secret"), "AGd3LWEAc2VjcmV0");
    }

    #[test]
    fn find_element_handles_self_closing_names_and_picks() {
        let buf = "<iqx/><iq type='result' id='a'/><iq type='error' id=\"b\"><error/></iq>";
        let (s, e) = find_element(buf, "iq", |t| has_attr(t, "id", "a")).expect("a");
        assert_eq!(&buf[s..e], "<iq type='result' id='a'/>");
        let (s, e) = find_element(buf, "iq", |t| has_attr(t, "id", "b")).expect("b");
        assert_eq!(&buf[s..e], "<iq type='error' id=\"b\"><error/></iq>");
        assert!(find_element("<iq id='c'><query>", "iq", |_| true).is_none());
        assert!(
            find_element("<stream:features><mechanisms", "stream:features", |_| true).is_none()
        );
    }
}

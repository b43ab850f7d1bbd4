//! The glue every SIP user agent of a process runs on (the gateway, the ACD node, voicemail):
//! where a message came from or goes to ([`Peer`]), transport events into the sans-IO
//! transaction layer ([`receive`]), what it produces onto the wire ([`transmit`]), the deadline
//! helpers ([`earliest`], [`sleep_until`]) and the one event loop they all run on ([`drive`],
//! with the [`UserAgent`] each implements).

use std::future::Future;
use std::net::SocketAddr;
use std::time::Instant;

use tokio::sync::mpsc;

use sip_core::message::{self, SipMessage};
use sip_core::overload::Overload;
use sip_core::transaction::{self as tx, TransactionLayer};
use tracing::{debug, warn};

use crate::{Target, Transport, TransportEvent, Transports};

/// Where a message came from / goes to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Peer {
    /// Remote address.
    pub addr: SocketAddr,
    /// UDP, or the TCP connection.
    pub transport: Transport,
    /// Our listener it arrived at.
    pub local: SocketAddr,
}

impl Peer {
    /// The transaction layer's view of the transport: reliable over TCP.
    pub fn tx_transport(&self) -> tx::Transport {
        if self.transport.is_reliable() {
            tx::Transport::Reliable
        } else {
            tx::Transport::Unreliable
        }
    }
}

/// Feeds one transport event to the transaction layer; a message the transports refused is
/// logged and gets its ready reply (400, 505, 513 …). Shared by every SIP user agent of the
/// process (the gateway, the ACD node).
pub async fn receive(transports: &Transports, tl: &mut TransactionLayer<Peer>, ev: TransportEvent) {
    match ev {
        TransportEvent::Message(m) => {
            let peer = Peer {
                addr: m.source,
                transport: m.transport,
                local: m.local,
            };
            let kind = peer.tx_transport();
            if let Err(e) = tl.on_message(m.message, peer, kind, Instant::now()) {
                debug!(error = %e, source = %m.source, "message refused by the transaction layer");
            }
        }
        TransportEvent::BadMessage(b) => {
            if crate::loglimit::allow("bad-message", Some(b.source.ip())) {
                warn!(
                    source = %b.source,
                    error = %for_log(&b.error.to_string(), LOG_TEXT_MAX),
                    "bad SIP message"
                );
            } else {
                debug!(source = %b.source, "bad SIP message (warning rate-limited)");
            }
            if let Some(reply) = b.reply {
                let _ = transports.send_response(&reply, b.transport, b.local).await;
            }
        }
    }
}

/// [`receive`] behind overload control (issue 16): notes how long a message waited between
/// its transport and the core, and while shedding drops retransmissions of requests whose
/// transaction has not answered yet (the transaction would only absorb them). The transports
/// apply the rest of the policy at ingress ([`Transports::set_overload_gate`]).
///
/// `backlog` is how many events were still queued behind this one: a message that leaves the
/// queue empty did not wait behind a standing queue, whatever its wait (on a loaded machine
/// an idle core's wake-up alone can take tens of milliseconds), so it counts as no wait.
pub async fn receive_overload(
    transports: &Transports,
    tl: &mut TransactionLayer<Peer>,
    overload: &mut Overload,
    backlog: usize,
    ev: TransportEvent,
) {
    if let TransportEvent::Message(m) = &ev {
        overload.observe(Instant::now(), queue_wait(m, backlog));
        if let SipMessage::Request(req) = &m.message {
            if overload.drop_retransmission(|| tl.is_pending_retransmission(req)) {
                return;
            }
        }
    }
    receive(transports, tl, ev).await
}

/// How long `m` waited before the core read it, as overload control counts it: its wait
/// between its transport and the core when it left others queued behind it (`backlog` > 0);
/// when it left the queue empty, its wait in the kernel's socket
/// ([`crate::Incoming::socket_wait`], which has its own rule) and nothing for the core's
/// queue (see [`receive_overload`]). A core that falls behind keeps its queue full and its
/// listener blocked, the socket filling behind both: the core's wait measures that
/// overload, and adding the socket's would count it twice. A listener that falls behind
/// (its own CPU, a flood of datagrams it must read and parse) leaves the core's queue empty
/// while the socket's fills: only the socket's wait shows it.
pub fn queue_wait(m: &crate::Incoming, backlog: usize) -> std::time::Duration {
    if backlog == 0 {
        m.socket_wait
    } else {
        Instant::now().saturating_duration_since(m.received)
    }
}

/// What a user agent does with a new request the transaction layer delivered
/// ([`tx::Event::Request`]): the first step of every UA's dispatch (the gateway, the ACD node),
/// so that the checks and the dialog test are the same everywhere.
#[derive(Debug, Clone, PartialEq)]
pub enum Screened {
    /// Malformed, or requires an extension we lack: answer it with this response.
    Reject(message::Response),
    /// Outside any dialog: no To tag.
    New,
    /// Inside a dialog: a To tag.
    InDialog,
}

/// Screens a new request: validated (RFC 3261 §8.2, `extensions` our supported option tags),
/// then told apart by its To tag.
///
/// The request is one the transaction layer delivered, so it came off the wire through
/// [`message::parse`] (its top Via perhaps stamped with `received`/`rport`), which checked the
/// header grammar of every field: that is not checked a second time
/// ([`message::validate_parsed_request_with`]); every other check of
/// [`message::validate_request_with`] is made.
pub fn screen(request: &message::Request, extensions: &[&str]) -> Screened {
    if let Err(rej) = message::validate_parsed_request_with(request, extensions) {
        return Screened::Reject(rej.response(request));
    }
    let tag = tx::parse::field_tag(&request.headers, tx::parse::Field::To);
    if matches!(tag, Ok(Some(_))) {
        Screened::InDialog
    } else {
        Screened::New
    }
}

/// Most characters of wire-derived text in one log field.
pub const LOG_TEXT_MAX: usize = 200;

/// Text that came from the wire, made fit for a log line: control characters, quotes,
/// backslashes and non-ASCII escaped (`\n`, `\u{1b}`), cut after `max` characters with the
/// full length noted, so a hostile packet can neither forge log lines, carry terminal escape
/// sequences nor fill the disk.
pub fn for_log(text: &str, max: usize) -> String {
    let mut out = String::new();
    for (n, c) in text.chars().enumerate() {
        if n >= max {
            out.push_str(&format!("…({} bytes)", text.len()));
            break;
        }
        if c.is_ascii_graphic() || c == ' ' {
            out.push(c);
        } else {
            out.extend(c.escape_default());
        }
    }
    out
}

/// The earlier of two optional deadlines.
pub fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Sleeps until `at`; forever without a deadline.
pub async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
        None => std::future::pending().await,
    }
}

/// Puts what the transaction layer produced on the wire: a response back the way its request
/// came (§18.2.2, RFC 3581), a request to its peer (UDP from the listener it belongs to, or
/// the peer's TCP connection); a failure is reported to the transaction. Shared by every SIP
/// user agent of the process (the gateway, the ACD node).
pub async fn transmit(
    transports: &Transports,
    tl: &mut TransactionLayer<Peer>,
    t: tx::Transmit<Peer>,
) {
    let result = match &t.message {
        // send_response serialises the response itself.
        SipMessage::Response(r) => {
            transports
                .send_response(r, t.dest.transport, t.dest.local)
                .await
        }
        SipMessage::Request(req) => {
            let bytes = message::serialize_request(req);
            let target = match t.dest.transport {
                Transport::Udp => Target::Udp {
                    peer: t.dest.addr,
                    local: Some(t.dest.local),
                },
                Transport::Tcp(id) => Target::Connection {
                    id,
                    fallback: Some(t.dest.addr),
                },
                Transport::Tls(id) => Target::TlsConnection {
                    id,
                    fallback: Some(t.dest.addr),
                },
            };
            transports.send(target, &bytes).await
        }
    };
    if let Err(e) = result {
        debug!(error = %e, dest = %t.dest.addr, "send failed");
        if let Some(key) = t.key {
            tl.transport_error(&key);
        }
    }
}

/// A SIP user agent as [`drive`] runs it: it owns its transports and transaction layer and
/// the sans-IO cores above them; the loop feeds it messages, timers and its own inputs and
/// drains what they produce.
pub trait UserAgent: Send {
    /// What the application's own inputs deliver (bus changes, commands, media events …).
    type Input: Send;

    /// The transports and the transaction layer.
    fn sip(&mut self) -> (&Transports, &mut TransactionLayer<Peer>);

    /// When the application's own timers are next due (the transaction layer's are the
    /// loop's: both are waited for, whichever is earlier); `None`: none.
    fn next_deadline(&mut self) -> Option<Instant>;

    /// A deadline came: the application's timers at `now` (the transaction layer's have just
    /// run).
    fn on_timer(&mut self, now: Instant);

    /// A transport event with `backlog` more queued behind it. By default it goes to the
    /// transaction layer ([`receive`]); an application may screen or measure it first.
    fn on_datagram(
        &mut self,
        ev: TransportEvent,
        backlog: usize,
    ) -> impl Future<Output = ()> + Send {
        let _ = backlog;
        async move {
            let (transports, tl) = self.sip();
            receive(transports, tl, ev).await
        }
    }

    /// The next of the application's own inputs; `None` stops the loop. It must be
    /// cancel-safe: it is dropped whenever a message or a deadline comes first.
    fn input(&mut self) -> impl Future<Output = Option<Self::Input>> + Send;

    /// One of the application's inputs.
    fn on_input(&mut self, input: Self::Input);

    /// An event of the transaction layer (a request, a response, a timeout …) at `now`.
    fn on_event(&mut self, ev: tx::Event<Peer>, now: Instant);

    /// Hands on what the application's cores produced since (actions, requests to send …);
    /// true if there was anything. Called until nothing is left, between the transaction
    /// layer's events and its transmissions.
    fn poll_outputs(&mut self, now: Instant) -> bool {
        let _ = now;
        false
    }

    /// After each turn of the loop: true stops it (a graceful shutdown that completed).
    fn finished(&mut self) -> impl Future<Output = bool> + Send {
        async { false }
    }
}

/// The event loop of a SIP user agent: waits for a transport event, the earliest deadline
/// (the transaction layer's `poll_timeout` and [`UserAgent::next_deadline`]) or one of the
/// application's inputs, handles it, then drains the transaction layer and the application
/// until quiet (events in, outputs out, messages sent). Returns when the transports close,
/// the application's inputs end, or it says it has [`UserAgent::finished`].
pub async fn drive<U: UserAgent>(ua: &mut U, events: &mut mpsc::Receiver<TransportEvent>) {
    loop {
        let wake = earliest(ua.sip().1.poll_timeout(), ua.next_deadline());
        let stop = tokio::select! {
            ev = events.recv() => match ev {
                None => true,
                Some(ev) => {
                    let backlog = events.len();
                    ua.on_datagram(ev, backlog).await;
                    false
                }
            },
            _ = sleep_until(wake) => {
                let now = Instant::now();
                ua.sip().1.handle_timeout(now);
                ua.on_timer(now);
                false
            }
            input = ua.input() => match input {
                None => true,
                Some(input) => {
                    ua.on_input(input);
                    false
                }
            },
        };
        if stop {
            break;
        }
        drain(ua).await;
        if ua.finished().await {
            break;
        }
    }
}

/// Until quiet: the transaction layer's events into the application, its outputs out,
/// messages sent.
async fn drain<U: UserAgent>(ua: &mut U) {
    loop {
        let now = Instant::now();
        let mut progressed = false;
        while let Some(ev) = ua.sip().1.poll_event() {
            progressed = true;
            ua.on_event(ev, now);
        }
        while ua.poll_outputs(now) {
            progressed = true;
        }
        loop {
            let (transports, tl) = ua.sip();
            let Some(t) = tl.poll_transmit() else {
                break;
            };
            progressed = true;
            transmit(transports, tl, t).await;
        }
        if !progressed {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(text: &str) -> message::Request {
        match message::parse(text.as_bytes()) {
            Ok(SipMessage::Request(r)) => r,
            other => panic!("not a request: {other:?}"),
        }
    }

    const INVITE: &str = "INVITE sip:2001@example.com SIP/2.0\r\n\
        Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1\r\nMax-Forwards: 70\r\n\
        From: <sip:1001@example.com>;tag=a\r\nTo: <sip:2001@example.com>TOTAG\r\n\
        Call-ID: c1\r\nCSeq: 1 INVITE\r\nREQUIREContent-Length: 0\r\n\r\n";

    #[test]
    fn screening_tells_new_from_in_dialog_and_rejects_what_we_cannot_serve() {
        let new = request(&INVITE.replace("TOTAG", "").replace("REQUIRE", ""));
        assert_eq!(screen(&new, &[]), Screened::New);
        let in_dialog = request(&INVITE.replace("TOTAG", ";tag=b").replace("REQUIRE", ""));
        assert_eq!(screen(&in_dialog, &[]), Screened::InDialog);
        // An extension we do not support: 420 (§8.2.2.3), whatever the To tag.
        let timer = request(
            &INVITE
                .replace("TOTAG", ";tag=b")
                .replace("REQUIRE", "Require: timer\r\n"),
        );
        match screen(&timer, &[]) {
            Screened::Reject(r) => assert_eq!(r.status_code.code(), 420),
            other => panic!("{other:?}"),
        }
        assert_eq!(screen(&timer, &["timer"]), Screened::InDialog);
    }

    #[test]
    fn wire_text_is_escaped_and_cut() {
        assert_eq!(
            for_log("a\x1b[31mb\r\nX: y", 100),
            "a\\u{1b}[31mb\\r\\nX: y"
        );
        let long = "x".repeat(70_000);
        let l = for_log(&long, 200);
        assert!(l.len() < 230, "{}", l.len());
        assert!(l.ends_with("…(70000 bytes)"), "{l}");
    }
}

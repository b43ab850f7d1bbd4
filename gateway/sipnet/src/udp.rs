//! The UDP listener task.

use std::sync::Arc;

use tokio::net::UdpSocket;

use rsip::headers::UntypedHeader as _;
use sip_core::message::{self, SipMessage};
use sip_core::overload::Verdict;

use super::{bump, decode, note_refusal, Shared, Transport, TransportEvent};

/// Receives datagrams until shutdown: one datagram, one message (§18.3); oversize ones are
/// dropped and counted, CRLF-only keep-alives ignored, bad ones delivered as `BadMessage`.
pub(super) async fn run(shared: Arc<Shared>, sock: Arc<UdpSocket>) {
    let Ok(local) = sock.local_addr() else {
        return;
    };
    let max = shared.config.max_message_size;
    // One byte more than the limit, so that an oversize datagram is seen (it is truncated).
    let mut buf = vec![0u8; max + 1];
    let mut shutdown = shared.shutdown.clone();
    loop {
        let received = tokio::select! {
            _ = shutdown.changed() => return,
            r = sock.recv_from(&mut buf) => r,
        };
        let (n, source) = match received {
            Ok(r) => r,
            Err(e) => {
                // E.g. ICMP errors reported on the socket; the listener goes on.
                tracing::debug!(%local, error = %e, "UDP receive error");
                continue;
            }
        };
        if n > max {
            bump(&shared.counters.udp_too_large, 1);
            tracing::debug!(%local, %source, "oversize UDP datagram dropped");
            continue;
        }
        let bytes = &buf[..n];
        if bytes.iter().all(|&b| b == b'\r' || b == b'\n') {
            continue; // keep-alive
        }
        let event = decode(bytes, source, Transport::Udp, local);
        note_refusal(&shared, &event);
        if matches!(event, TransportEvent::BadMessage(_)) {
            bump(&shared.counters.udp_bad, 1);
        }
        if let (TransportEvent::Message(m), Some(gate)) = (&event, shared.gate.get()) {
            // A full queue: refuse new work here rather than stop reading, which would leave
            // the socket to the kernel's silent drops (each a 500 ms retransmission).
            let verdict = if shared.events.capacity() == 0 {
                gate.decide_full(&m.message)
            } else {
                gate.decide(&m.message, source)
            };
            match verdict {
                Verdict::Admit => {}
                Verdict::Drop => continue,
                Verdict::Reject { retry_after } => {
                    if let SipMessage::Request(req) = &m.message {
                        // Back where it came from (symmetric, as rport), never queued.
                        let _ = sock.send_to(&overloaded(req, retry_after), source).await;
                    }
                    continue;
                }
            }
        }
        if shared.events.send(event).await.is_err() {
            return;
        }
    }
}

/// `503 Service Unavailable` + `Retry-After` for a request refused by overload control.
fn overloaded(req: &rsip::Request, retry_after: u32) -> Vec<u8> {
    let mut r = message::response_for(req, 503, "Service Unavailable");
    r.headers
        .push(rsip::Header::RetryAfter(rsip::headers::RetryAfter::new(
            retry_after.to_string(),
        )));
    message::serialize_response(&r)
}

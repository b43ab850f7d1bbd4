//! The UDP listener task.

use std::sync::Arc;

use tokio::net::UdpSocket;

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
        if shared.events.send(event).await.is_err() {
            return;
        }
    }
}

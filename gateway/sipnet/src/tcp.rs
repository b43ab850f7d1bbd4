//! Stream connections (TCP, and TLS over TCP): listener, admission (caps per source and in
//! total), connection tasks with idle and header timeouts. TLS streams are framed exactly like
//! TCP ones.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, timeout, Instant};

use super::framing::{Frame, StreamDecoder, PONG};
use super::{
    bump, decode, framing_reply, BadMessage, BadMessageError, ConnectionId, Shared, Transport,
    TransportEvent, WriteRequest,
};

/// An admitted inbound connection's place in the caps; freed when dropped.
pub(super) struct Slot {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.shared.slots();
        s.total = s.total.saturating_sub(1);
        if let Some(n) = s.per_ip.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                s.per_ip.remove(&self.ip);
            }
        }
    }
}

/// Takes a slot for a connection from `ip`, or none when a cap is reached.
fn admit(shared: &Arc<Shared>, ip: IpAddr) -> Option<Slot> {
    let mut s = shared.slots();
    let mine = s.per_ip.get(&ip).copied().unwrap_or(0);
    if s.total >= shared.config.max_connections || mine >= shared.config.max_connections_per_source
    {
        return None;
    }
    s.total += 1;
    *s.per_ip.entry(ip).or_insert(0) += 1;
    drop(s);
    Some(Slot {
        shared: shared.clone(),
        ip,
    })
}

/// Accepts connections until shutdown; `secure`: a TLS listener (handshake first).
pub(super) async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, secure: bool) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                let Some(slot) = admit(&shared, peer.ip()) else {
                    // Over a cap: closed at once (dropping the stream), counted.
                    bump(&shared.counters.tcp_refused, 1);
                    if crate::loglimit::allow("connection-cap", Some(peer.ip())) {
                        tracing::warn!(%peer, "connection refused: over the connection cap");
                    }
                    continue;
                };
                bump(&shared.counters.tcp_accepted, 1);
                let _ = stream.set_nodelay(true);
                let Ok(local) = stream.local_addr() else {
                    continue;
                };
                if secure {
                    tokio::spawn(handshake(shared.clone(), stream, peer, local, slot));
                } else {
                    start(shared.clone(), stream, peer, local, Some(slot), false);
                }
            }
            Err(e) => {
                // E.g. out of file descriptors: back off a little instead of spinning.
                tracing::warn!(error = %e, "TCP accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// The server side of a TLS handshake, bounded by the header timeout.
async fn handshake(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    slot: Slot,
) {
    let Some(tls) = shared.tls.clone() else {
        return;
    };
    let acceptor = tls.acceptor();
    let mut shutdown = shared.shutdown.clone();
    let result = tokio::select! {
        _ = shutdown.changed() => return,
        r = timeout(shared.config.header_timeout, acceptor.accept(stream)) => r,
    };
    match result {
        Ok(Ok(s)) => {
            bump(&shared.counters.tls_accepted, 1);
            start(shared, s, peer, local, Some(slot), true);
        }
        Ok(Err(e)) => {
            bump(&shared.counters.tls_failed, 1);
            if crate::loglimit::allow("tls-handshake", Some(peer.ip())) {
                tracing::warn!(%peer, error = %e, "inbound TLS handshake failed");
            }
        }
        Err(_) => {
            bump(&shared.counters.tls_failed, 1);
            if crate::loglimit::allow("tls-handshake", Some(peer.ip())) {
                tracing::warn!(%peer, "inbound TLS handshake timed out");
            }
        }
    }
}

/// Opens a connection to `peer` (TLS when `secure`, its certificate verified against the
/// configured roots) and starts its task.
pub(super) async fn connect(
    shared: Arc<Shared>,
    peer: SocketAddr,
    secure: bool,
) -> io::Result<ConnectionId> {
    let limit = shared.config.connect_timeout;
    let stream = timeout(limit, TcpStream::connect(peer))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TCP connect timed out"))??;
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr()?;
    if !secure {
        bump(&shared.counters.tcp_connected, 1);
        return Ok(start(shared, stream, peer, local, None, false));
    }
    let connector = shared
        .tls
        .as_ref()
        .and_then(|t| t.connector())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::Unsupported,
                "TLS client: no CA roots configured",
            )
        })?;
    let name = shared.tls_name(peer);
    let name = super::tls::server_name(name.as_deref(), peer);
    let shown = format!("{name:?}");
    let s = match timeout(limit, connector.connect(name, stream)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            bump(&shared.counters.tls_failed, 1);
            // Said once per failure (we opened it: not attacker-driven, no flood), clearly:
            // which peer, which name its certificate had to carry, what rustls objected to.
            tracing::warn!(
                %peer,
                expected = %shown,
                error = %e,
                "TLS connection refused: the peer's certificate did not verify (or the handshake failed)"
            );
            return Err(e);
        }
        Err(_) => {
            bump(&shared.counters.tls_failed, 1);
            tracing::warn!(%peer, expected = %shown, "TLS connection refused: handshake timed out");
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "TLS handshake timed out",
            ));
        }
    };
    bump(&shared.counters.tls_connected, 1);
    Ok(start(shared, s, peer, local, None, true))
}

/// Registers the connection and starts its two tasks: the reader (framing, events, idle and
/// header timers) and the writer (sends and pongs). They are separate so that a consumer
/// awaiting [`super::Transports::send`] never waits for a reader stalled on a full event
/// channel. `slot`: an inbound connection's place in the caps, held until it closes.
fn start<S>(
    shared: Arc<Shared>,
    stream: S,
    peer: SocketAddr,
    local: SocketAddr,
    slot: Option<Slot>,
    secure: bool,
) -> ConnectionId
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (tx, rx) = mpsc::channel(64);
    let id = shared.register(peer, tx.clone(), secure);
    let transport = if secure {
        Transport::Tls(id)
    } else {
        Transport::Tcp(id)
    };
    let (rd, wr) = tokio::io::split(stream);
    let activity = Arc::new(Mutex::new(Instant::now()));
    // Dropped by the reader when it ends: stops the writer even in the middle of a write.
    let (closed_tx, closed_rx) = oneshot::channel::<()>();
    tokio::spawn(writer(
        shared.clone(),
        wr,
        rx,
        closed_rx,
        activity.clone(),
        id,
    ));
    tokio::spawn(async move {
        let conn = Conn {
            peer,
            local,
            id,
            transport,
            inbound: slot.is_some(),
        };
        if let Err(e) = reader(&shared, rd, tx, &conn, &activity).await {
            tracing::debug!(%peer, %id, error = %e, "connection ended");
        }
        shared.unregister(id);
        drop(closed_tx);
        drop(slot);
    });
    id
}

fn touch(activity: &Mutex<Instant>) {
    *activity.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
}

async fn writer<S: AsyncWrite>(
    shared: Arc<Shared>,
    mut wr: WriteHalf<S>,
    mut rx: mpsc::Receiver<WriteRequest>,
    mut closed: oneshot::Receiver<()>,
    activity: Arc<Mutex<Instant>>,
    id: ConnectionId,
) {
    loop {
        let request = tokio::select! {
            _ = &mut closed => return,
            r = rx.recv() => r,
        };
        let Some((bytes, done)) = request else { return };
        let result = tokio::select! {
            _ = &mut closed => return,
            r = async { wr.write_all(&bytes).await?; wr.flush().await } => r,
        };
        let failed = result.is_err();
        if let Some(done) = done {
            let _ = done.send(result);
        }
        if failed {
            // No more writes on this connection; the reader goes on until EOF or idle.
            shared.unregister(id);
            return;
        }
        touch(&activity);
    }
}

struct Conn {
    peer: SocketAddr,
    local: SocketAddr,
    id: ConnectionId,
    transport: Transport,
    /// Accepted by us (the header timeout applies from the start: a first message is due).
    inbound: bool,
}

async fn reader<S: AsyncRead>(
    shared: &Shared,
    mut rd: ReadHalf<S>,
    tx: mpsc::Sender<WriteRequest>,
    conn: &Conn,
    activity: &Mutex<Instant>,
) -> io::Result<()> {
    let Conn {
        peer,
        local,
        id,
        transport,
        ..
    } = *conn;
    let mut decoder = StreamDecoder::with_max_size(shared.config.max_message_size);
    let mut buf = vec![0u8; 16 * 1024];
    let idle = shared.config.tcp_idle_timeout;
    let header = shared.config.header_timeout;
    let mut shutdown = shared.shutdown.clone();
    // Since when a message has been due: an inbound connection owes its first one from the
    // start, any connection the rest of a message it began. A peer that trickles a message
    // (or sends only keep-alives before its first) is closed `header` after that.
    let mut due_since = conn.inbound.then(Instant::now);
    loop {
        let idle_at = *activity.lock().unwrap_or_else(|e| e.into_inner()) + idle;
        let deadline = match due_since {
            Some(t) => idle_at.min(t + header),
            None => idle_at,
        };
        tokio::select! {
            _ = shutdown.changed() => return Ok(()),
            _ = sleep_until(deadline) => {
                let now = Instant::now();
                if due_since.is_some_and(|t| t + header <= now) {
                    bump(&shared.counters.tcp_header_timeout, 1);
                    tracing::debug!(%peer, %id, "connection closed: message not complete in time");
                    return Ok(());
                }
                let last = *activity.lock().unwrap_or_else(|e| e.into_inner());
                if last + idle <= now {
                    bump(&shared.counters.tcp_idle_closed, 1);
                    tracing::debug!(%peer, %id, "idle connection closed");
                    return Ok(());
                }
            }
            r = rd.read(&mut buf) => {
                let n = r?;
                if n == 0 {
                    return Ok(());
                }
                touch(activity);
                decoder.feed(&buf[..n]);
                let mut delivered = false;
                while let Some(frame) = decoder.next_frame() {
                    let event = match frame {
                        Frame::Message(bytes) => {
                            delivered = true;
                            let ev = decode(&bytes, peer, transport, local, std::time::Duration::ZERO);
                            super::note_refusal(shared, &ev);
                            if matches!(ev, TransportEvent::BadMessage(_)) {
                                bump(&shared.counters.tcp_bad, 1);
                            }
                            ev
                        }
                        Frame::Ping => {
                            bump(&shared.counters.pings, 1);
                            // A full write queue means the pong is not needed to keep it alive.
                            let _ = tx.try_send((PONG.to_vec(), None));
                            continue;
                        }
                        Frame::Garbage(n) => {
                            bump(&shared.counters.tcp_garbage_bytes, n as u64);
                            tracing::debug!(%peer, %id, bytes = n, "garbage skipped");
                            continue;
                        }
                        Frame::Error { error, head } => {
                            delivered = true;
                            bump(&shared.counters.tcp_bad, 1);
                            TransportEvent::BadMessage(BadMessage {
                                source: peer,
                                transport,
                                local,
                                reply: framing_reply(&error, head.as_deref(), peer),
                                error: BadMessageError::Framing(error),
                            })
                        }
                    };
                    if shared.events.send(event).await.is_err() {
                        return Ok(());
                    }
                }
                let now = Instant::now();
                let pending = decoder.buffered() > 0;
                due_since = match (delivered, pending, due_since) {
                    (true, true, _) => Some(now),
                    (true, false, _) => None,
                    (false, true, None) => Some(now),
                    (false, _, t) => t,
                };
            }
        }
    }
}

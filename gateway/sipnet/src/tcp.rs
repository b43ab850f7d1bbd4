//! TCP listener and connection tasks.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, timeout, Instant};

use super::framing::{Frame, StreamDecoder, PONG};
use super::{
    bump, decode, framing_reply, BadMessage, BadMessageError, ConnectionId, Shared, Transport,
    TransportEvent, WriteRequest,
};

/// Accepts connections until shutdown.
pub(super) async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                bump(&shared.counters.tcp_accepted, 1);
                start(shared.clone(), stream, peer);
            }
            Err(e) => {
                // E.g. out of file descriptors: back off a little instead of spinning.
                tracing::warn!(error = %e, "TCP accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Opens a connection to `peer` and starts its task.
pub(super) async fn connect(shared: Arc<Shared>, peer: SocketAddr) -> io::Result<ConnectionId> {
    let stream = timeout(shared.config.connect_timeout, TcpStream::connect(peer))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TCP connect timed out"))??;
    bump(&shared.counters.tcp_connected, 1);
    Ok(start(shared, stream, peer))
}

/// Registers the connection and starts its two tasks: the reader (framing, events, idle timer)
/// and the writer (sends and pongs). They are separate so that a consumer awaiting
/// [`super::Transports::send`] never waits for a reader stalled on a full event channel.
fn start(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr) -> ConnectionId {
    let (tx, rx) = mpsc::channel(64);
    let id = shared.register(peer, tx.clone());
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().ok();
    let (rd, wr) = stream.into_split();
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
        if let Some(local) = local {
            if let Err(e) = reader(&shared, rd, tx, peer, local, id, &activity).await {
                tracing::debug!(%peer, %id, error = %e, "TCP connection ended");
            }
        }
        shared.unregister(id);
        drop(closed_tx);
    });
    id
}

fn touch(activity: &Mutex<Instant>) {
    *activity.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
}

async fn writer(
    shared: Arc<Shared>,
    mut wr: OwnedWriteHalf,
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
            r = wr.write_all(&bytes) => r,
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

async fn reader(
    shared: &Shared,
    mut rd: OwnedReadHalf,
    tx: mpsc::Sender<WriteRequest>,
    peer: SocketAddr,
    local: SocketAddr,
    id: ConnectionId,
    activity: &Mutex<Instant>,
) -> io::Result<()> {
    let mut decoder = StreamDecoder::with_max_size(shared.config.max_message_size);
    let mut buf = vec![0u8; 16 * 1024];
    let idle = shared.config.tcp_idle_timeout;
    let mut shutdown = shared.shutdown.clone();
    let transport = Transport::Tcp(id);
    loop {
        let deadline = *activity.lock().unwrap_or_else(|e| e.into_inner()) + idle;
        tokio::select! {
            _ = shutdown.changed() => return Ok(()),
            _ = sleep_until(deadline) => {
                let last = *activity.lock().unwrap_or_else(|e| e.into_inner());
                if last + idle <= Instant::now() {
                    bump(&shared.counters.tcp_idle_closed, 1);
                    tracing::debug!(%peer, %id, "idle TCP connection closed");
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
                while let Some(frame) = decoder.next_frame() {
                    let event = match frame {
                        Frame::Message(bytes) => {
                            let ev = decode(&bytes, peer, transport, local);
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
            }
        }
    }
}

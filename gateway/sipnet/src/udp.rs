//! The UDP listener task.
//!
//! Each datagram is read with `recvmsg` and two control messages the socket is asked for at
//! start: `SO_TIMESTAMPNS` (when the kernel received it) and `SO_RXQ_OVFL` (how many datagrams
//! the kernel has dropped at this socket because its receive buffer was full). The first
//! gives overload control the time a datagram waited in the socket before the listener read
//! it ([`crate::Incoming::socket_wait`]): without it a listener that falls behind leaves the
//! core's queue empty, overload control sees no wait, and the kernel drops at the tail of a
//! full buffer, silently, each drop a client's 500 ms retransmission (issue 16). The second is
//! counted ([`crate::Stats::udp_kernel_drops`]).
//!
//! The kernel stamps arrivals only once some socket asked for stamps, switching on from a
//! deferred work item: datagrams read before that are stamped when read and show no wait.

use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::socket::{
    recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, SockaddrLike as _, SockaddrStorage,
};
use nix::sys::time::TimeSpec;
use tokio::io::Interest;
use tokio::net::UdpSocket;

use rsip::headers::UntypedHeader as _;
use sip_core::message::{self, SipMessage};
use sip_core::overload::Verdict;

use super::{bump, decode, note_refusal, Shared, Transport, TransportEvent};

/// The longest socket wait believed: the kernel's buffer holds milliseconds of traffic, so a
/// longer one is the wall clock stepping between the kernel's stamp and ours.
pub(crate) const MAX_SOCKET_WAIT: Duration = Duration::from_secs(1);

/// One datagram as `recvmsg` handed it over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Datagram {
    /// Its length (more than the buffer when it was truncated).
    pub len: usize,
    /// Who sent it.
    pub source: SocketAddr,
    /// When the kernel received it (`SO_TIMESTAMPNS`), if the socket stamps.
    pub stamp: Option<SystemTime>,
    /// The socket's drops since it was opened (`SO_RXQ_OVFL`), when the kernel attached it
    /// (it does once there has been one).
    pub drops: Option<u32>,
}

/// Asks the kernel to stamp each datagram with its arrival time and the socket's drop count;
/// false when it refused the stamps (the listener then reads without them: no socket wait).
pub(crate) fn enable_stamps(sock: &UdpSocket) -> bool {
    let stamps = setsockopt(sock, sockopt::ReceiveTimestampns, &true);
    if let Err(e) = setsockopt(sock, sockopt::RxqOvfl, &1) {
        tracing::debug!(error = %e, "SO_RXQ_OVFL refused: kernel drops at this socket not counted");
    }
    match stamps {
        Ok(()) => true,
        Err(e) => {
            tracing::info!(error = %e, "SO_TIMESTAMPNS refused: overload control will not see the socket's queue");
            false
        }
    }
}

/// The control-message space [`recv`] needs.
pub(crate) fn control_buffer() -> Vec<u8> {
    nix::cmsg_space!(TimeSpec, u32)
}

/// Reads one datagram into `buf` (non-blocking: `WouldBlock` when the socket is empty).
pub(crate) fn recv(sock: &UdpSocket, buf: &mut [u8], control: &mut [u8]) -> io::Result<Datagram> {
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<SockaddrStorage>(
        sock.as_raw_fd(),
        &mut iov,
        Some(control),
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_TRUNC,
    )?;
    let source = msg.address.as_ref().and_then(std_addr).ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidData, "datagram without an IP source")
    })?;
    let (mut stamp, mut drops) = (None, None);
    // A truncated control buffer (MSG_CTRUNC) cannot be read; the datagram is kept.
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            match c {
                ControlMessageOwned::ScmTimestampns(ts) => stamp = system_time(ts),
                ControlMessageOwned::RxqOvfl(n) => drops = Some(n),
                _ => {}
            }
        }
    }
    Ok(Datagram {
        len: msg.bytes,
        source,
        stamp,
        drops,
    })
}

fn std_addr(a: &SockaddrStorage) -> Option<SocketAddr> {
    match a.family()? {
        nix::sys::socket::AddressFamily::Inet => {
            a.as_sockaddr_in().map(|s| SocketAddrV4::from(*s).into())
        }
        nix::sys::socket::AddressFamily::Inet6 => {
            a.as_sockaddr_in6().map(|s| SocketAddrV6::from(*s).into())
        }
        _ => None,
    }
}

fn system_time(ts: TimeSpec) -> Option<SystemTime> {
    let secs = u64::try_from(ts.tv_sec()).ok()?;
    let nanos = u32::try_from(ts.tv_nsec()).ok()?;
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

/// How long a datagram stamped `stamp` waited in the socket, read at `now`: zero for a stamp
/// in the future (the clock stepped back), at most [`MAX_SOCKET_WAIT`].
pub(crate) fn socket_wait(stamp: SystemTime, now: SystemTime) -> Duration {
    now.duration_since(stamp)
        .unwrap_or(Duration::ZERO)
        .min(MAX_SOCKET_WAIT)
}

/// Receives datagrams until shutdown: one datagram, one message (§18.3); oversize ones are
/// dropped and counted, CRLF-only keep-alives ignored, bad ones delivered as `BadMessage`.
///
/// A datagram's socket wait counts only when the listener found it behind another one, read
/// without the socket going empty in between: the first datagram after a wake-up waited for
/// the listener's task to be scheduled, which on a loaded machine alone takes milliseconds and
/// is no standing queue (the same rule as the core's, see [`crate::queue_wait`]).
pub(super) async fn run(shared: Arc<Shared>, sock: Arc<UdpSocket>) {
    let Ok(local) = sock.local_addr() else {
        return;
    };
    let max = shared.config.max_message_size;
    // One byte more than the limit, so that an oversize datagram is seen (it is truncated).
    let mut buf = vec![0u8; max + 1];
    let mut control = control_buffer();
    let stamps = enable_stamps(&sock);
    let mut shutdown = shared.shutdown.clone();
    let mut after_wake = true;
    let mut drops_seen = 0u32;
    loop {
        if shutdown.has_changed().unwrap_or(true) {
            return;
        }
        let d = match sock.try_io(Interest::READABLE, || recv(&sock, &mut buf, &mut control)) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                tokio::select! {
                    _ = shutdown.changed() => return,
                    r = sock.readable() => if let Err(e) = r {
                        tracing::warn!(%local, error = %e, "UDP listener stopped");
                        return;
                    },
                }
                after_wake = true;
                continue;
            }
            Err(e) => {
                // E.g. ICMP errors reported on the socket; the listener goes on.
                tracing::debug!(%local, error = %e, "UDP receive error");
                tokio::task::consume_budget().await;
                continue;
            }
        };
        // A flood read without the socket going empty must still let the worker's other
        // tasks run (`try_io` spends no budget of its own).
        tokio::task::consume_budget().await;
        if let Some(n) = d.drops {
            bump(
                &shared.counters.udp_kernel_drops,
                u64::from(n.wrapping_sub(drops_seen)),
            );
            drops_seen = n;
        }
        let socket_wait = match d.stamp {
            Some(stamp) if stamps && !after_wake => socket_wait(stamp, SystemTime::now()),
            _ => Duration::ZERO,
        };
        after_wake = false;
        let (n, source) = (d.len, d.source);
        if n > max {
            bump(&shared.counters.udp_too_large, 1);
            tracing::debug!(%local, %source, "oversize UDP datagram dropped");
            continue;
        }
        let bytes = &buf[..n];
        if bytes.iter().all(|&b| b == b'\r' || b == b'\n') {
            continue; // keep-alive
        }
        let event = decode(bytes, source, Transport::Udp, local, socket_wait);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Time for the kernel's deferred switch to arrival stamps (`net_enable_timestamp`).
    const STAMPS_ON: Duration = Duration::from_millis(100);

    #[test]
    fn a_socket_wait_is_never_negative_nor_longer_than_its_bound() {
        let t = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let ms = Duration::from_millis;
        assert_eq!(socket_wait(t, t + ms(35)), ms(35));
        assert_eq!(
            socket_wait(t + ms(5), t),
            Duration::ZERO,
            "clock stepped back"
        );
        assert_eq!(
            socket_wait(t, t + ms(3_600_000)),
            MAX_SOCKET_WAIT,
            "clock stepped on"
        );
    }

    #[test]
    fn a_timespec_becomes_a_system_time() {
        let ts = TimeSpec::new(1_800_000_000, 250_000_000);
        assert_eq!(
            system_time(ts),
            Some(UNIX_EPOCH + Duration::new(1_800_000_000, 250_000_000))
        );
        assert_eq!(system_time(TimeSpec::new(-1, 0)), None);
    }

    /// The kernel's stamp measures the time a datagram sat in the socket, and the drop count
    /// arrives with the first datagram read after a drop: real sockets, no listener task.
    #[tokio::test]
    async fn the_kernel_stamps_the_wait_and_reports_its_drops() {
        let rx = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        // The smallest buffer the kernel books (it doubles the ask, from a floor of ~2.3 kB).
        socket2::SockRef::from(&rx)
            .set_recv_buffer_size(1)
            .expect("SO_RCVBUF");
        assert!(enable_stamps(&rx), "SO_TIMESTAMPNS on Linux");
        // The first socket to ask turns the kernel's arrival stamps on from a deferred work
        // item (until then a datagram is stamped when it is read): let it run.
        tokio::time::sleep(STAMPS_ON).await;
        let tx = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let to = rx.local_addr().expect("addr");
        let payload = vec![b'x'; 600];
        for _ in 0..64 {
            tx.send_to(&payload, to).await.expect("send");
        }
        tokio::time::sleep(Duration::from_millis(60)).await;
        let (mut buf, mut control) = (vec![0u8; 2048], control_buffer());
        let mut read = Vec::new();
        while let Ok(d) = recv(&rx, &mut buf, &mut control) {
            read.push(d);
        }
        assert!(!read.is_empty() && read.len() < 64, "{} read", read.len());
        let first = read[0];
        assert_eq!(
            (first.len, first.source),
            (600, tx.local_addr().expect("addr"))
        );
        let waited = socket_wait(first.stamp.expect("stamped"), SystemTime::now());
        assert!(waited >= Duration::from_millis(55), "waited {waited:?}");
        // Nothing was dropped before the first datagram was queued.
        assert_eq!(first.drops, None);
        // One more datagram now carries the count of the ones the full buffer refused.
        tx.send_to(b"after", to).await.expect("send");
        rx.readable().await.expect("readable");
        let last = recv(&rx, &mut buf, &mut control).expect("recv");
        assert_eq!(last.len, 5);
        let dropped = 64 - read.len();
        assert_eq!(last.drops, Some(u32::try_from(dropped).expect("small")));
        assert!(
            socket_wait(last.stamp.expect("stamped"), SystemTime::now())
                < Duration::from_millis(50)
        );
    }
}

//! The relay threads' scheduling (`media::RelayScheduling`): a real-time priority is applied
//! when the system allows it and refused (logged, ordinary priority) when it does not; with
//! coalescing on (real-time threads only), every packet of a dense stream is still relayed,
//! in order. In a process of its own (an integration test), so the only relay threads it sees
//! are its own.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::time::Duration;

use media::{bridge, MediaRelay, RelayConfig, RelayScheduling};

const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// (tid, policy, rt_priority) of this process's threads named `rtp-relay-*`
/// (`/proc/self/task/*/stat` fields 40 and 41).
fn relay_threads() -> Vec<(u32, u32, u32)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let dir = task.expect("task").path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if !comm.starts_with("rtp-relay-") {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).expect("stat");
        // Fields after the command's closing parenthesis start at field 3 (state).
        let rest: Vec<&str> = stat[stat.rfind(')').expect(")") + 2..]
            .split_whitespace()
            .collect();
        let field = |n: usize| -> u32 { rest[n - 3].parse().expect("number") };
        let tid = dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse().ok())
            .expect("tid");
        out.push((tid, field(41), field(40)));
    }
    out
}

/// Whether this process may run a thread `SCHED_FIFO` (root, `CAP_SYS_NICE`, `RLIMIT_RTPRIO`).
fn may_run_realtime() -> bool {
    std::thread::spawn(|| {
        use thread_priority::*;
        set_thread_priority_and_policy(
            thread_native_id(),
            ThreadPriority::Crossplatform(ThreadPriorityValue::try_from(1u8).expect("1")),
            ThreadSchedulePolicy::Realtime(RealtimeThreadSchedulePolicy::Fifo),
        )
        .is_ok()
    })
    .join()
    .expect("probe")
}

fn config(sched: RelayScheduling) -> RelayConfig {
    let mut c = RelayConfig::new(LO, LO, 47300, 47399);
    c.scheduling = sched;
    c
}

/// RTP: version 2, PCMU, `seq`, 160 bytes of payload.
fn rtp(seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 0];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend_from_slice(&0x1234_5678u32.to_be_bytes());
    p.extend(std::iter::repeat_n(0xd5, 160));
    p
}

#[tokio::test(flavor = "multi_thread")]
async fn realtime_priority_when_allowed_and_every_packet_relayed_in_order_when_coalescing() {
    let before: HashSet<u32> = relay_threads().iter().map(|t| t.0).collect();
    let relay = MediaRelay::with_threads(
        config(RelayScheduling {
            realtime_priority: Some(7),
            coalesce: Duration::from_millis(5),
        }),
        2,
    )
    .expect("relay");
    let ours: Vec<(u32, u32, u32)> = relay_threads()
        .into_iter()
        .filter(|t| !before.contains(&t.0))
        .collect();
    assert_eq!(ours.len(), 2, "two relay threads: {ours:?}");
    const SCHED_OTHER: u32 = 0;
    const SCHED_FIFO: u32 = 1;
    let report = relay.threads_report();
    if may_run_realtime() {
        for t in &ours {
            assert_eq!((t.1, t.2), (SCHED_FIFO, 7), "thread {t:?}");
        }
        assert_eq!((report.realtime, report.ordinary), (2, 0), "{report:?}");
    } else {
        // Refused: logged, and the relay runs at the ordinary priority.
        for t in &ours {
            assert_eq!((t.1, t.2), (SCHED_OTHER, 0), "thread {t:?}");
        }
        assert_eq!((report.realtime, report.ordinary), (0, 2), "{report:?}");
    }
    assert_eq!(report.duty_sleeps, 0, "no flood here");

    // A dense stream (a packet every 0.5 ms, ten times a coalescing period's worth) through a
    // bridged pair: all of it arrives, in order.
    let (a, b) = relay.leg_pair().expect("pair");
    let tx = UdpSocket::bind((LO, 0)).expect("tx");
    let rx = UdpSocket::bind((LO, 0)).expect("rx");
    rx.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    a.set_remote(tx.local_addr().expect("tx addr"), None);
    b.set_remote(rx.local_addr().expect("rx addr"), None);
    bridge(&a, &b).expect("bridge");
    let dest = a.local_rtp();
    let sender = std::thread::spawn(move || {
        for seq in 0..200u16 {
            tx.send_to(&rtp(seq), dest).expect("send");
            std::thread::sleep(Duration::from_micros(500));
        }
    });
    let mut buf = [0u8; 512];
    for want in 0..200u16 {
        let (n, _) = rx.recv_from(&mut buf).expect("a relayed packet");
        assert_eq!(n, 172);
        assert_eq!(u16::from_be_bytes([buf[2], buf[3]]), want, "in order");
    }
    sender.join().expect("sender");
    // The counter is bumped just after the send: give the relay thread a moment to.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while b.stats().rtp_packets_out < 200 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(b.stats().rtp_packets_out, 200);
}

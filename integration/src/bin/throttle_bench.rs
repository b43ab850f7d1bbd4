//! Benchmark: the cost of the authentication defence (`gateway::security`) under a flood of
//! 10,000 wrong-password REGISTERs from one source, against the in-process gateway, with the
//! throttle off (every guess verified and answered 401) and on (banned at the 10th failure,
//! the rest dropped before the transaction layer); then the guard alone (sans-IO), per call.
//!
//! ```text
//! cargo run --release -p integration --bin throttle_bench -- [--requests 10000] [--rounds 3]
//! ```
//!
//! The flood is sent in bursts of 50 datagrams, at most 200 ahead of what the gateway has
//! processed (its own counters): as fast as it takes them, none lost in a socket buffer (which
//! would flatter the figures). CPU is
//! the whole process's (gateway and sender; the sender's share is the same in both modes),
//! divided by the requests the gateway processed (failures counted + requests dropped as
//! banned, from its own counters).

use anyhow::{bail, Context, Result};
use gateway::devices::{DeviceRecord, DeviceStore};
use gateway::registrar::digest::{self, Algorithm};
use gateway::security::{FailReason, Guard, SecurityConfig};
use gateway::server::Gateway;
use statebus::{Eid, LocalBus};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Outcome {
    processed: u64,
    answered: u64,
    cpu_s: f64,
    wall_s: f64,
    bans: u64,
}

fn register(local: SocketAddr, n: usize, auth: &str) -> String {
    format!(
        "REGISTER sip:bench SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKflood{n};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:1000@bench>;tag=f{n}\r\nTo: <sip:1000@bench>\r\n\
         Call-ID: flood-{n}\r\nCSeq: 1 REGISTER\r\nContact: <sip:1000@{local}>\r\n{auth}\
         Expires: 300\r\nContent-Length: 0\r\n\r\n"
    )
}

fn param(v: &str, name: &str) -> Option<String> {
    let at = v.find(&format!("{name}=\""))? + name.len() + 2;
    v.get(at..)?.split('"').next().map(str::to_owned)
}

async fn flood(
    security: SecurityConfig,
    requests: usize,
    dir: &std::path::Path,
) -> Result<Outcome> {
    let gw_addr = SocketAddr::from(([127, 0, 0, 1], integration::free_udp_port()));
    let db = format!("sqlite://{}", dir.join("throttle.db").display());
    {
        let store = DeviceStore::open(&db).await?;
        store
            .upsert(&DeviceRecord::with_password("1000", "bench", "secret"))
            .await?;
        store.close().await;
    }
    let mut cfg = integration::bench::gateway_config(gw_addr, db);
    cfg.security = security;
    let bus = Arc::new(LocalBus::new(Eid::derive("throttle-bench")));
    let gw = Gateway::start(cfg, bus).await?;
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    sock.set_read_timeout(Some(Duration::from_millis(2000)))?;
    let local = sock.local_addr()?;
    // One challenge; every guess answers it with a wrong password (a new transaction each).
    sock.send_to(register(local, 0, "").as_bytes(), gw_addr)?;
    let mut buf = vec![0u8; 65_536];
    let (n, _) = sock.recv_from(&mut buf).context("no challenge")?;
    let ch = String::from_utf8_lossy(&buf[..n]).into_owned();
    let nonce = param(&ch, "nonce").context("nonce")?;
    let opaque = param(&ch, "opaque").context("opaque")?;
    let datagrams: Vec<Vec<u8>> = (1..=requests)
        .map(|i| {
            let nc = format!("{i:08x}");
            let ha1 = digest::ha1(Algorithm::Md5, "1000", "bench", &format!("guess{i}"));
            let ha2 = digest::ha2(Algorithm::Md5, "REGISTER", "sip:bench");
            let resp = digest::response(Algorithm::Md5, &ha1, &nonce, &nc, "c", "auth", &ha2);
            let auth = format!(
                "Authorization: Digest username=\"1000\", realm=\"bench\", nonce=\"{nonce}\", \
                 uri=\"sip:bench\", response=\"{resp}\", algorithm=MD5, qop=auth, nc={nc}, \
                 cnonce=\"c\", opaque=\"{opaque}\"\r\n"
            );
            register(local, i, &auth).into_bytes()
        })
        .collect();
    let before = gw.security_stats();
    let pid = std::process::id();
    let cpu0 = integration::bench::cpu_secs(pid, false);
    let t0 = Instant::now();
    let receiver = {
        let sock = sock.try_clone()?;
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            let mut answered = 0u64;
            sock.set_read_timeout(Some(Duration::from_millis(1500)))
                .ok();
            while sock.recv_from(&mut buf).is_ok() {
                answered += 1;
            }
            answered
        })
    };
    let accounted = |gw: &Gateway| {
        let s = gw.security_stats();
        (s.failures - before.failures) + (s.dropped_banned - before.dropped_banned)
    };
    let mut sent = 0u64;
    for chunk in datagrams.chunks(50) {
        // At most 200 requests ahead of what the gateway has processed: the flood is as fast
        // as the gateway takes it, and none is lost in a socket buffer.
        while sent > accounted(&gw) + 150 {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        for d in chunk {
            sock.send_to(d, gw_addr)?;
        }
        sent += chunk.len() as u64;
    }
    // Done when the gateway has accounted for every request, or made no progress for 2 s
    // (a few may be lost before it: a socket buffer, the transports' queue).
    let (mut last, mut since) = (0, Instant::now());
    let processed = loop {
        let p = accounted(&gw);
        if p >= requests as u64 || since.elapsed() > Duration::from_secs(2) {
            break p;
        }
        if p != last {
            (last, since) = (p, Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let wall_end = if processed >= requests as u64 {
        t0.elapsed()
    } else {
        since.saturating_duration_since(t0)
    };
    let wall_s = wall_end.as_secs_f64();
    let cpu_s = integration::bench::cpu_secs(pid, false) - cpu0;
    let answered = tokio::task::spawn_blocking(move || receiver.join().unwrap_or(0)).await?;
    let bans = gw.security_stats().bans;
    gw.stop();
    Ok(Outcome {
        processed,
        answered,
        cpu_s,
        wall_s,
        bans,
    })
}

fn guard_alone(n: u32) {
    let t0 = Instant::now();
    let mut g = Guard::new(SecurityConfig::default());
    let now = Instant::now();
    for i in 0..n {
        let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
        g.admit(ip, now);
        g.failed(ip, 5060, "1000", "REGISTER", FailReason::WrongPassword, now);
    }
    let distinct = t0.elapsed().as_nanos() as f64 / f64::from(n);
    let banned = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    for _ in 0..10 {
        g.failed(
            banned,
            5060,
            "1000",
            "REGISTER",
            FailReason::WrongPassword,
            now,
        );
    }
    let t1 = Instant::now();
    let mut dropped = 0u32;
    for _ in 0..n {
        if !g.admit(banned, now) {
            dropped += 1;
        }
    }
    let admit = t1.elapsed().as_nanos() as f64 / f64::from(n);
    println!(
        "guard alone: admit+failed from {n} distinct sources {distinct:.0} ns/request; \
         admit of a banned source {admit:.0} ns/request ({dropped} dropped)"
    );
}

fn main() -> Result<()> {
    let requests = arg("--requests", 10_000);
    let rounds = arg("--rounds", 3);
    let profile = if cfg!(debug_assertions) {
        "DEBUG build"
    } else {
        "release build"
    };
    println!(
        "throttle_bench ({profile}): {requests} wrong-password REGISTERs from one source, {rounds} rounds, load {}",
        integration::bench::loadavg()
    );
    let rt = tokio::runtime::Runtime::new()?;
    for round in 1..=rounds {
        for (name, security) in [
            (
                "off",
                SecurityConfig {
                    max_failures_per_source: 0,
                    max_failures_per_user: 0,
                    challenges_per_sec: 0,
                    ..SecurityConfig::default()
                },
            ),
            ("on", SecurityConfig::default()),
        ] {
            let dir = tempfile::tempdir()?;
            let o = rt.block_on(flood(security, requests, dir.path()))?;
            if o.processed * 10 < requests as u64 * 9 {
                bail!(
                    "throttle {name}: the gateway accounted for {} of {requests} requests",
                    o.processed
                );
            }
            println!(
                "round {round} throttle {name:>3}: processed {} (lost before the gateway {}) answered {} \
                 bans {} wall {:.2} s cpu {:.2} s = {:.1} µs/request",
                o.processed,
                requests as u64 - o.processed.min(requests as u64),
                o.answered,
                o.bans,
                o.wall_s,
                o.cpu_s,
                o.cpu_s * 1e6 / o.processed as f64
            );
        }
    }
    guard_alone(u32::try_from(requests).unwrap_or(u32::MAX));
    Ok(())
}

//! Benchmark: the state fabric across the WAN lab (`integration::wanlab`). The XMPP server runs
//! in site A; a change is published in site B and its notification awaited in site A, so every
//! sample crosses the delayed (and lossy) link once each way it needs.
//!
//! * **publish→notify p50/p99**, callfabric's `XmppBus` (STARTTLS, as a member at a remote
//!   site must) against the raw floor (`integration::raw_xmpp`: no XML library, no cache, no
//!   coalescing, plaintext) on the same link and server, samples interleaved one for one;
//! * **recovery after a partition heals**: the link is cut for longer than the liveness TTL,
//!   B changes a device meanwhile; measured from the heal until A sees B's current state.
//! * **what crossed the link** during the publish→notify rounds, per round, for the raw
//!   publisher's and bus B's TCP connections (`WanLab::tcp_flow`): data segments and pure ACKs
//!   each way, and data segments lost B→A (each one holds back whatever B sends after it on that
//!   connection until it is retransmitted), and how many samples took over twice the floor's p50.
//!
//! ```text
//! cargo run --release -p integration --bin fabric_wan_bench -- [prosody|ejabberd] [ROUND_TRIPS] \
//!     [DELAY_MS] [LOSS] [PARTITIONS] [PARTITION_SECS] [sm|nosm]
//! ```
//! Defaults: prosody 300 40 0.01 3 30 nosm. `sm` lets the buses enable XEP-0198 stream
//! management (`XmppBusConfig::stream_management`, off by default). Needs root (network
//! namespaces).

use anyhow::{bail, Context, Result};
use integration::raw_xmpp::{self, Floor, RawXmpp};
use integration::wanlab::{Site, TcpFlowStats, WanLab, WanSpec};
use integration::{ServerKind, XmppServer};
use statebus::{Bus, BusEvent, Change, DeviceState, Eid, TlsMode, XmppBus, XmppBusConfig};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const PASSWORD: &str = "secret";
const T: Duration = Duration::from_secs(30);
const TTL: Duration = Duration::from_secs(10);

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A raw session logged in and bound, created inside `site` (its socket lives there).
fn raw_session(lab: &WanLab, site: Site, addr: SocketAddr, user: &str) -> Result<RawXmpp> {
    let user = user.to_owned();
    lab.run_in(site, move || {
        raw_xmpp::bound_session(addr, "fabric.test", &user, PASSWORD, "bench", T)
    })?
}

/// The raw floor (`integration::raw_xmpp::Floor`): publisher in B, subscriber in A, on node
/// `bench_raw`.
fn raw_floor(lab: &WanLab, s: &XmppServer, addr: SocketAddr) -> Result<Floor> {
    let svc = s.pubsub_service().to_string();
    let publisher = raw_session(lab, Site::B, addr, "raw-pub").context("raw-pub")?;
    let sub = raw_session(lab, Site::A, addr, "raw-sub").context("raw-sub")?;
    Floor::new(publisher, sub, &svc, "bench_raw", "raw-sub@fabric.test", T)
}

fn bus_config(addr: SocketAddr, user: &str, eid: Eid, sm: bool) -> XmppBusConfig {
    let mut c = XmppBusConfig::new(
        &format!("{user}@fabric.test"),
        PASSWORD,
        "pubsub.fabric.test",
        eid,
    );
    c.server = Some(addr.to_string());
    c.tls = TlsMode::StartTls;
    c.max_items = 10_000;
    c.heartbeat_interval = Duration::from_secs(1);
    c.liveness_ttl = TTL;
    c.iq_timeout = Duration::from_secs(5);
    c.keepalive = Duration::from_secs(5);
    c.reconnect_initial = Duration::from_millis(250);
    c.reconnect_max = Duration::from_secs(1);
    c.fabric_jids = vec!["bus-a@fabric.test".into(), "bus-b@fabric.test".into()];
    c.stream_management = sm;
    c
}

/// An `XmppBus` living on its own thread (and runtime) inside `site`.
fn bus_in(lab: &WanLab, site: Site, cfg: XmppBusConfig) -> Result<XmppBus> {
    let (tx, rx) = std::sync::mpsc::channel();
    lab.spawn_in(site, move || {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = tx.send(Err(anyhow::anyhow!("runtime: {e}")));
                return;
            }
        };
        rt.block_on(async move {
            match XmppBus::start(cfg) {
                Ok(b) => {
                    let _ = tx.send(Ok(b));
                    // keep the bus's task running until the process ends
                    std::future::pending::<()>().await
                }
                Err(e) => {
                    let _ = tx.send(Err(e.into()));
                }
            }
        })
    })?;
    rx.recv().context("bus thread ended")?
}

async fn wait_state(
    rx: &mut tokio::sync::broadcast::Receiver<BusEvent>,
    key: &str,
    want: DeviceState,
    timeout: Duration,
) -> Result<Instant> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, statebus::recv(rx)).await {
            Ok(Some(BusEvent::Changed(Change::Device { key: k, state })))
                if k == key && state == want =>
            {
                return Ok(Instant::now())
            }
            Ok(Some(BusEvent::Lagged(n))) => bail!("subscriber lagged by {n}"),
            Ok(Some(_)) => {}
            Ok(None) => bail!("bus closed"),
            Err(_) => bail!("timed out waiting for {key} = {want}"),
        }
    }
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("CALLFABRIC_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().collect();
    let kind = match args.get(1).map(String::as_str) {
        None | Some("prosody") => ServerKind::Prosody,
        Some("ejabberd") => ServerKind::Ejabberd,
        Some(other) => bail!("unknown server {other}; use prosody or ejabberd"),
    };
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or_else(|| default.into());
    let n: usize = arg(2, "300").parse().context("ROUND_TRIPS")?;
    let delay_ms: u64 = arg(3, "40").parse().context("DELAY_MS")?;
    let loss: f64 = arg(4, "0.01").parse().context("LOSS")?;
    let partitions: usize = arg(5, "3").parse().context("PARTITIONS")?;
    let partition_secs: u64 = arg(6, "30").parse().context("PARTITION_SECS")?;
    let sm = match arg(7, "nosm").as_str() {
        "sm" => true,
        "nosm" => false,
        other => bail!("unknown stream-management setting {other}; use sm or nosm"),
    };
    if let Some(why) = integration::wanlab::unavailable() {
        bail!("{why}");
    }
    let lab = WanLab::start(WanSpec::new(delay_ms, loss))?;
    // ejabberd's start outlasts its readiness bound now and then on a loaded machine: retry.
    let mut attempt = 1;
    let s = loop {
        match lab.xmpp_server(
            Site::A,
            kind,
            &["raw-pub", "raw-sub", "bus-a", "bus-b"],
            PASSWORD,
        ) {
            Ok(s) => break s,
            Err(e) if attempt < 3 => {
                eprintln!("{kind:?} did not start (attempt {attempt} of 3): {e:#}");
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    };
    let addr = lab.socket_addr(Site::A, s.c2s_addr().port());
    // rustls-native-certs reads SSL_CERT_FILE when a bus connects (set before any bus exists).
    std::env::set_var("SSL_CERT_FILE", s.ca_cert());
    println!(
        "server: {kind:?} in site A; link {delay_ms} ms one way, loss {:.1} %; \
         {n} interleaved round trips; {partitions} partitions of {partition_secs} s (TTL {TTL:?}); \
         buses' XEP-0198 stream management {}",
        loss * 100.0,
        if sm { "on" } else { "off" }
    );

    let mut raw = raw_floor(&lab, &s, addr)?;
    let a = bus_in(
        &lab,
        Site::A,
        bus_config(addr, "bus-a", Eid([2, 0, 0, 0, 0, 1]), sm),
    )?;
    let b = bus_in(
        &lab,
        Site::B,
        bus_config(addr, "bus-b", Eid([2, 0, 0, 0, 0, 2]), sm),
    )?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        if !(a.wait_online(T).await && b.wait_online(T).await) {
            bail!("buses did not come online");
        }
        Ok(())
    })?;
    let mut rx = a.subscribe();
    let server_port = addr.port();
    let raw_port = raw.publisher_addr()?.port();
    // Bus B's connection: the other one from B to the server (looked up after the rounds, in
    // case it reconnected; counted from here).
    let flows_before = lab.tcp_flows();

    // Publish→notify, interleaved: raw round, bus round, … (the first 20 of each are warm-up).
    let warm = 20;
    let (mut floor, mut ours) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..(n + warm) {
        let r = raw.round_trip(i)?;
        let key = format!("PJSIP/{}", i % 100);
        let st = match (i.is_multiple_of(2), b.device_state(&key)) {
            (true, Some(DeviceState::InUse)) | (false, Some(DeviceState::NotInUse)) => {
                DeviceState::Busy
            }
            (true, _) => DeviceState::InUse,
            (false, _) => DeviceState::NotInUse,
        };
        let t0 = Instant::now();
        b.publish_device_state(&key, st);
        let at = rt.block_on(wait_state(&mut rx, &key, st, T))?;
        if i >= warm {
            floor.push(r);
            ours.push(at - t0);
        }
    }
    let flows_after = lab.tcp_flows();
    floor.sort();
    ours.sort();
    println!(
        "{:<34} {:>10} {:>10}",
        "publish (B) → notify (A)", "p50 ms", "p99 ms"
    );
    for (name, v) in [
        ("raw client (floor, plaintext)", &floor),
        ("callfabric XmppBus (STARTTLS)", &ours),
    ] {
        println!(
            "{name:<34} {:>10.1} {:>10.1}",
            ms(percentile(v, 0.5)),
            ms(percentile(v, 0.99))
        );
    }
    println!(
        "ratio ours/raw: p50 {:.2}x  p99 {:.2}x  (target <= 1.2x)",
        percentile(&ours, 0.5).as_secs_f64() / percentile(&floor, 0.5).as_secs_f64(),
        percentile(&ours, 0.99).as_secs_f64() / percentile(&floor, 0.99).as_secs_f64()
    );
    let slow = 2 * percentile(&floor, 0.5);
    println!(
        "samples over {:.1} ms (2x the floor's p50, i.e. held back by a retransmission): \
         raw {} / {n}, XmppBus {} / {n}",
        ms(slow),
        floor.iter().filter(|d| **d > slow).count(),
        ours.iter().filter(|d| **d > slow).count(),
    );
    // What each connection put on the link during the rounds.
    let window = |f: &TcpFlowStats| {
        let before = flows_before
            .iter()
            .find(|b| (b.port_a, b.port_b) == (f.port_a, f.port_b))
            .copied()
            .unwrap_or(TcpFlowStats {
                port_a: f.port_a,
                port_b: f.port_b,
                ..TcpFlowStats::default()
            });
        f.since(&before)
    };
    let raw_flow = flows_after
        .iter()
        .find(|f| f.port_a == server_port && f.port_b == raw_port)
        .map(window);
    let bus_flows: Vec<TcpFlowStats> = flows_after
        .iter()
        .filter(|f| f.port_a == server_port && f.port_b != raw_port)
        .map(window)
        .filter(|f| f.data != [0, 0])
        .collect();
    let rounds = (n + warm) as f64;
    println!(
        "per round on the link ({} rounds incl. warm-up): data segments B->A / A->B, pure ACKs \
         B->A / A->B, data segments lost B->A / A->B",
        n + warm
    );
    for (name, f) in raw_flow
        .iter()
        .map(|f| ("raw publisher", f))
        .chain(bus_flows.iter().map(|f| ("XmppBus B", f)))
    {
        println!(
            "  {name:<14} (B port {:>5}): data {:.2} / {:.2}, pure {:.2} / {:.2}, lost {} / {}",
            f.port_b,
            f.data[1] as f64 / rounds,
            f.data[0] as f64 / rounds,
            f.pure[1] as f64 / rounds,
            f.pure[0] as f64 / rounds,
            f.data_lost[1],
            f.data_lost[0],
        );
    }

    // Recovery: B's device INUSE, cut, (A expires B after the TTL), B changes it, heal.
    let key = "PJSIP/9999";
    for round in 0..partitions {
        b.publish_device_state(key, DeviceState::InUse);
        rt.block_on(wait_state(&mut rx, key, DeviceState::InUse, T))?;
        lab.partition();
        let cut = Instant::now();
        // A missed expiry is a finding to print, not a reason to stop measuring.
        let expired = match rt.block_on(wait_state(&mut rx, key, DeviceState::Unavailable, TTL + T))
        {
            Ok(at) => format!("{:.1} s", (at - cut).as_secs_f64()),
            Err(e) => format!("NOT ({e:#})"),
        };
        b.publish_device_state(key, DeviceState::NotInUse);
        while cut.elapsed() < Duration::from_secs(partition_secs) {
            std::thread::sleep(Duration::from_millis(20));
        }
        lab.heal();
        let healed = Instant::now();
        let back = rt.block_on(wait_state(&mut rx, key, DeviceState::NotInUse, 2 * T))?;
        println!(
            "partition {}: {key} UNAVAILABLE at A {expired} after the cut; B's current state \
             at A {:.2} s after the heal",
            round + 1,
            (back - healed).as_secs_f64()
        );
    }
    println!("wire: {:?}", lab.stats());
    Ok(())
}

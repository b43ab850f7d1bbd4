//! Benchmark: the fabric on a two-node ejabberd cluster (issue 17).
//!
//! 1. Publish→notify latency with the publisher on node 0 and the subscriber on node 1, for
//!    callfabric's `XmppBus` and for a raw floor across the same two nodes (a minimal client,
//!    `integration::raw_xmpp`) on a node like the bus's `device_state` (same form, the
//!    publisher subscribed too, as many items), interleaved one by one in rounds. The
//!    bus is timed twice: from the bench's main thread (publish, then `block_on` the
//!    notification), and from a task on the bus's runtime ("in rt", keys `PJSIP/rt…`), which
//!    leaves out the two wake-ups of the main thread across threads.
//! 2. State changes per second through the cluster: a burst of distinct keys published by a bus
//!    on node 0 until a bus on node 1 has seen every change.
//! 3. Failover: a member that knows both nodes (`servers`) sits on node 0; node 0 is killed
//!    (SIGKILL) and the member publishes a change at once; measured: until the member is online
//!    on node 1, and until an observer on node 1 sees the change (reconverged state). Repeated
//!    with node 0 restarted (it rejoins) in between.
//!
//! ```text
//! cargo run --release -p integration --bin cluster_bench -- [ROUND_TRIPS] [BURST] [ROUNDS] [FAILOVERS] [SPLIT] [SHARED]
//! ```
//!
//! With SHARED = 1 the buses run on the bench's runtime (`dedicated_thread = false`) instead of
//! on threads of their own (the default), for comparing the two.
//!
//! With SPLIT = 1 the latency rounds also time each half of the bus on its own, against raw
//! clients on the bus's own `device_state` node: "send side" = the bus publishes (node 0), a raw
//! client subscribed on node 1 reads the notification; "receive side" = a raw client publishes
//! a bus-format item (node 0), the bus on node 1 emits the change. Each half minus the raw
//! floor is what that side of the bus adds. (The raw subscriber is one more subscriber of
//! `device_state`, so SPLIT runs are not the figures of record.)

use anyhow::{bail, Context, Result};
use integration::bench;
use integration::ejabberd_cluster::EjabberdCluster;
use integration::raw_xmpp::RawXmpp;
use statebus::wire::{self, AccessModel, NodeKind};
use statebus::{Bus, BusEvent, Change, DeviceState, Eid, TlsMode, XmppBus, XmppBusConfig};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const PASSWORD: &str = "secret";
const DOMAIN: &str = "fabric.test";
const SVC: &str = "pubsub.fabric.test";
const T: Duration = Duration::from_secs(60);
const RAW_NODE: &str = "bench_raw";
const USERS: &[&str] = &[
    "raw-pub",
    "raw-sub",
    "bus-pub",
    "bus-sub",
    "fail-a",
    "observer",
    "split-pub",
    "split-sub",
];

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

fn session(addr: SocketAddr, user: &str, resource: &str) -> Result<RawXmpp> {
    integration::raw_xmpp::bound_session(addr, DOMAIN, user, PASSWORD, resource, T)
}

/// The raw floor: publish on node 0, the notification arrives on node 1.
struct Raw {
    publisher: RawXmpp,
    sub: RawXmpp,
}

impl Raw {
    fn start(n0: SocketAddr, n1: SocketAddr) -> Result<Raw> {
        let mut publisher = session(n0, "raw-pub", "bench").context("raw-pub session")?;
        let create = wire::create_node_xml(RAW_NODE, NodeKind::Flat, AccessModel::Open, 10_000);
        publisher
            .iq("set", Some(SVC), &create)
            .context("create raw node")?;
        let mut sub = session(n1, "raw-sub", "bench").context("raw-sub session")?;
        sub.iq(
            "set",
            Some(SVC),
            &wire::subscribe_xml(RAW_NODE, &format!("raw-sub@{DOMAIN}"), false),
        )
        .context("raw-sub subscribe")?;
        // Like the bus's `device_state` (same form: flat, open, 10,000 items): the publisher
        // is subscribed too (every member subscribes to the node it publishes on, so the
        // server notifies two sessions per publish), and the node holds as many items as
        // `device_state` does in the latency rounds (keys `PJSIP/0..99` and `PJSIP/rt0..99`).
        publisher
            .iq(
                "set",
                Some(SVC),
                &wire::subscribe_xml(RAW_NODE, &format!("raw-pub@{DOMAIN}"), false),
            )
            .context("raw-pub subscribe")?;
        let eid = Eid([2, 0, 0, 0, 0, 0x99]);
        for k in 0..100 {
            let item = wire::device_state_xml(eid, DeviceState::NotInUse, true);
            publisher
                .iq(
                    "set",
                    Some(SVC),
                    &wire::publish_xml(RAW_NODE, &format!("PJSIP/rt{k}"), &item),
                )
                .context("raw node pre-fill")?;
        }
        Ok(Raw { publisher, sub })
    }

    fn round_trip(&mut self, i: usize) -> Result<Duration> {
        let eid = Eid([2, 0, 0, 0, 0, 0x99]);
        let st = if i.is_multiple_of(2) {
            DeviceState::InUse
        } else {
            DeviceState::NotInUse
        };
        let key = format!("PJSIP/{}", i % 100);
        let iq = format!(
            "<iq type='set' id='l{i}' to='{SVC}'>{}</iq>",
            wire::publish_xml(RAW_NODE, &key, &wire::device_state_xml(eid, st, true))
        );
        let want = format!("id='{key}'");
        let t0 = Instant::now();
        self.publisher.send(&iq)?;
        self.sub.set_timeout(T);
        loop {
            // the pre-fill's notifications (other keys) may still be queued at the start
            let m = self
                .sub
                .read_element("message", |_| true)
                .with_context(|| format!("raw notification {i}"))?;
            if m.contains(&want) {
                break;
            }
            if !m.contains("id='PJSIP/rt") {
                bail!("unexpected notification {m}");
            }
        }
        let took = t0.elapsed();
        self.publisher.set_timeout(T);
        self.publisher
            .read_element("iq", |_| true)
            .with_context(|| format!("raw publish result {i}"))?;
        Ok(took)
    }
}

/// Raw clients on the bus's own `device_state` node (SPLIT): one publishes bus-format items,
/// one reads notifications.
struct Split {
    publisher: RawXmpp,
    sub: RawXmpp,
}

impl Split {
    fn start(n0: SocketAddr, n1: SocketAddr) -> Result<Split> {
        let publisher = session(n0, "split-pub", "bench").context("split-pub session")?;
        let mut sub = session(n1, "split-sub", "bench").context("split-sub session")?;
        sub.iq(
            "set",
            Some(SVC),
            &wire::subscribe_xml(
                wire::NODE_DEVICE_STATE,
                &format!("split-sub@{DOMAIN}"),
                false,
            ),
        )
        .context("split-sub subscribe")?;
        Ok(Split { publisher, sub })
    }

    /// Waits until the raw subscriber has the notification of item `key`.
    fn wait_item(&mut self, key: &str) -> Result<()> {
        let want = format!("id='{key}'");
        let want2 = format!("id=\"{key}\"");
        self.sub.set_timeout(T);
        loop {
            let m = self
                .sub
                .read_element("message", |_| true)
                .with_context(|| format!("split notification {key}"))?;
            if m.contains(&want) || m.contains(&want2) {
                return Ok(());
            }
        }
    }

    /// Publishes a bus-format item for `key` to `device_state`, in the name of the live
    /// member bus-pub (EID ..:01: the subscriber counts items of live members only).
    fn publish(&mut self, i: usize, key: &str) -> Result<()> {
        let eid = Eid([2, 0, 0, 0, 0, 1]);
        let iq = format!(
            "<iq type='set' id='s{i}' to='{SVC}'>{}</iq>",
            wire::publish_xml(
                wire::NODE_DEVICE_STATE,
                key,
                &wire::device_state_xml(eid, DeviceState::InUse, true)
            )
        );
        self.publisher.send(&iq)
    }

    /// Reads the publish result (after the timed part).
    fn publish_result(&mut self) -> Result<()> {
        self.publisher.set_timeout(T);
        self.publisher.read_element("iq", |_| true)?;
        Ok(())
    }
}

fn bus_config(user: &str, eid: u8, servers: &[SocketAddr], shared: bool) -> XmppBusConfig {
    let mut c = XmppBusConfig::new(
        &format!("{user}@{DOMAIN}"),
        PASSWORD,
        SVC,
        Eid([2, 0, 0, 0, 0, eid]),
    );
    c.servers = servers.iter().map(ToString::to_string).collect();
    c.tls = TlsMode::Plaintext;
    c.heartbeat_interval = Duration::from_millis(500);
    c.liveness_ttl = Duration::from_secs(5);
    c.reconnect_initial = Duration::from_millis(100);
    c.reconnect_max = Duration::from_secs(1);
    c.dedicated_thread = !shared;
    c.fabric_jids = USERS
        .iter()
        .filter(|u| {
            u.starts_with("bus") || **u == "fail-a" || **u == "observer" || **u == "split-pub"
        })
        .map(|u| format!("{u}@{DOMAIN}"))
        .collect();
    c
}

async fn start_bus(c: XmppBusConfig) -> Result<XmppBus> {
    let user = c.jid.clone();
    let b = XmppBus::start(c)?;
    if !b.wait_online(T).await {
        bail!("{user} did not come online");
    }
    Ok(b)
}

async fn wait_change(
    rx: &mut tokio::sync::broadcast::Receiver<BusEvent>,
    key: &str,
    state: Option<DeviceState>,
) -> Result<()> {
    loop {
        match tokio::time::timeout(T, statebus::recv(rx)).await {
            Ok(Some(BusEvent::Changed(Change::Device {
                key: k, state: s, ..
            }))) if k == key && state.is_none_or(|want| want == s) => return Ok(()),
            Ok(Some(BusEvent::Lagged(n))) => bail!("subscriber lagged by {n}"),
            Ok(Some(_)) => {}
            Ok(None) => bail!("bus closed"),
            Err(_) => bail!("timed out waiting for {key}"),
        }
    }
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("CALLFABRIC_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, default: usize| -> Result<usize> {
        Ok(args
            .get(i)
            .map(|s| s.parse())
            .transpose()?
            .unwrap_or(default))
    };
    let (n, burst, rounds, failovers) = (arg(1, 500)?, arg(2, 1000)?, arg(3, 3)?, arg(4, 3)?);
    let split_on = arg(5, 0)? != 0;
    let shared = arg(6, 0)? != 0;
    if n == 0 || rounds == 0 {
        bail!("ROUND_TRIPS and ROUNDS must be > 0");
    }
    let t_start = Instant::now();
    let mut cluster = EjabberdCluster::start(2, USERS, PASSWORD)?;
    let (n0, n1) = (cluster.c2s_addr(0), cluster.c2s_addr(1));
    println!(
        "ejabberd cluster of 2 (node 0 {n0}, node 1 {n1}) ready in {:.1} s; {rounds} rounds of {n} \
         round trips per client (publisher on node 0, subscriber on node 1), interleaved; buses {}; load {}",
        t_start.elapsed().as_secs_f64(),
        if shared { "on the bench's runtime" } else { "on threads of their own" },
        bench::loadavg()
    );
    let rt = tokio::runtime::Runtime::new()?;
    let mut raw = Raw::start(n0, n1)?;
    let (a, b) = rt.block_on(async {
        let a = start_bus(bus_config("bus-pub", 1, &[n0], shared)).await?;
        let b = start_bus(bus_config("bus-sub", 2, &[n1], shared)).await?;
        anyhow::Ok((a, b))
    })?;
    let mut rx = b.subscribe();
    let bus_rt = |i: usize, rx: &mut tokio::sync::broadcast::Receiver<BusEvent>| {
        let key = format!("PJSIP/{}", i % 100);
        let st = if a.device_state(&key) == Some(DeviceState::InUse) {
            DeviceState::NotInUse
        } else {
            DeviceState::InUse
        };
        let t0 = Instant::now();
        a.publish_device_state(&key, st);
        rt.block_on(wait_change(rx, &key, Some(st)))?;
        anyhow::Ok(t0.elapsed())
    };
    // The same round trip timed inside the runtime: publish and wait from a task on it.
    let in_rt = |i: usize| {
        let key = format!("PJSIP/rt{}", i % 100);
        let st = if a.device_state(&key) == Some(DeviceState::InUse) {
            DeviceState::NotInUse
        } else {
            DeviceState::InUse
        };
        let (a, mut rx) = (a.clone(), b.subscribe());
        rt.block_on(rt.spawn(async move {
            let t0 = Instant::now();
            a.publish_device_state(&key, st);
            wait_change(&mut rx, &key, Some(st)).await?;
            anyhow::Ok(t0.elapsed())
        }))?
    };
    let mut split = if split_on {
        Some(Split::start(n0, n1)?)
    } else {
        None
    };
    // SPLIT, send side: the bus publishes a fresh key, the raw subscriber sees it.
    let send_side = |i: usize, sp: &mut Split| {
        let key = format!("PJSIP/ss{i}");
        let t0 = Instant::now();
        a.publish_device_state(&key, DeviceState::InUse);
        sp.wait_item(&key)?;
        anyhow::Ok(t0.elapsed())
    };
    // SPLIT, receive side: the raw publisher publishes a fresh key, the bus emits it.
    let recv_side =
        |i: usize, sp: &mut Split, rx: &mut tokio::sync::broadcast::Receiver<BusEvent>| {
            let key = format!("PJSIP/sr{i}");
            let t0 = Instant::now();
            sp.publish(i, &key)?;
            rt.block_on(wait_change(rx, &key, None))?;
            let took = t0.elapsed();
            sp.publish_result()?;
            anyhow::Ok(took)
        };
    // SPLIT, both raw on the bus's node: the floor of that node.
    let raw_ds = |i: usize, sp: &mut Split| {
        let key = format!("PJSIP/sf{i}");
        let t0 = Instant::now();
        sp.publish(i, &key)?;
        sp.wait_item(&key)?;
        let took = t0.elapsed();
        sp.publish_result()?;
        anyhow::Ok(took)
    };
    for i in 0..50 {
        raw.round_trip(i)?;
        bus_rt(i, &mut rx)?;
        in_rt(i)?;
        if let Some(sp) = split.as_mut() {
            send_side(i, sp)?;
            recv_side(i, sp, &mut rx)?;
            raw_ds(i, sp)?;
        }
    }
    let (mut lr, mut lo, mut li) = (Vec::new(), Vec::new(), Vec::new());
    let (mut ls, mut lv, mut lf) = (Vec::new(), Vec::new(), Vec::new());
    let sides = if split.is_some() { 6 } else { 3 };
    let mut i = 50;
    for round in 0..rounds {
        let (r0, o0, i0) = (lr.len(), lo.len(), li.len());
        for k in 0..n {
            for side in 0..sides {
                match (side + k + round) % sides {
                    0 => lr.push(raw.round_trip(i)?),
                    1 => lo.push(bus_rt(i, &mut rx)?),
                    2 => li.push(in_rt(i)?),
                    3 => {
                        if let Some(sp) = split.as_mut() {
                            ls.push(send_side(i, sp)?);
                        }
                    }
                    4 => {
                        if let Some(sp) = split.as_mut() {
                            lv.push(recv_side(i, sp, &mut rx)?);
                        }
                    }
                    _ => {
                        if let Some(sp) = split.as_mut() {
                            lf.push(raw_ds(i, sp)?);
                        }
                    }
                }
            }
            i += 1;
        }
        let mut t: Vec<_> = li[i0..].to_vec();
        t.sort();
        let mut r: Vec<_> = lr[r0..].to_vec();
        let mut o: Vec<_> = lo[o0..].to_vec();
        r.sort();
        o.sort();
        println!(
            "  round {}: raw p50 {:.3} p99 {:.3} ms, bus p50 {:.3} p99 {:.3} ms (ratio p50 {:.2}x); load {}",
            round + 1,
            ms(percentile(&r, 0.5)),
            ms(percentile(&r, 0.99)),
            ms(percentile(&o, 0.5)),
            ms(percentile(&o, 0.99)),
            percentile(&o, 0.5).as_secs_f64() / percentile(&r, 0.5).as_secs_f64(),
            bench::loadavg()
        );
        println!(
            "           bus in rt p50 {:.3} p99 {:.3} ms (ratio p50 {:.2}x)",
            ms(percentile(&t, 0.5)),
            ms(percentile(&t, 0.99)),
            percentile(&t, 0.5).as_secs_f64() / percentile(&r, 0.5).as_secs_f64(),
        );
    }
    drop(raw);
    lr.sort();
    lo.sort();
    let r50 = percentile(&lo, 0.5).as_secs_f64() / percentile(&lr, 0.5).as_secs_f64();
    let r99 = percentile(&lo, 0.99).as_secs_f64() / percentile(&lr, 0.99).as_secs_f64();
    println!(
        "LATENCY across nodes (pooled): raw p50 {:.3} p99 {:.3} ms; bus p50 {:.3} p99 {:.3} ms; \
         ours/raw p50 {r50:.2}x p99 {r99:.2}x (target <= 1.2x)",
        ms(percentile(&lr, 0.5)),
        ms(percentile(&lr, 0.99)),
        ms(percentile(&lo, 0.5)),
        ms(percentile(&lo, 0.99)),
    );
    if split.is_some() {
        ls.sort();
        lv.sort();
        lf.sort();
        println!(
            "SPLIT on device_state: raw -> raw p50 {:.3} p99 {:.3} ms; bus send side (bus -> raw) \
             p50 {:.3} p99 {:.3} ms; bus receive side (raw -> bus) p50 {:.3} p99 {:.3} ms; \
             (raw floor on its own node p50 {:.3} ms)",
            ms(percentile(&lf, 0.5)),
            ms(percentile(&lf, 0.99)),
            ms(percentile(&ls, 0.5)),
            ms(percentile(&ls, 0.99)),
            ms(percentile(&lv, 0.5)),
            ms(percentile(&lv, 0.99)),
            ms(percentile(&lr, 0.5)),
        );
    }
    drop(split);
    li.sort();
    println!(
        "LATENCY bus timed in its runtime: p50 {:.3} p99 {:.3} ms; ours/raw p50 {:.2}x p99 {:.2}x",
        ms(percentile(&li, 0.5)),
        ms(percentile(&li, 0.99)),
        percentile(&li, 0.5).as_secs_f64() / percentile(&lr, 0.5).as_secs_f64(),
        percentile(&li, 0.99).as_secs_f64() / percentile(&lr, 0.99).as_secs_f64(),
    );

    // Throughput: bursts of distinct keys, node 0 → node 1.
    let mut rates = Vec::new();
    for round in 0..rounds {
        if burst == 0 {
            break;
        }
        let first = 1000 + round * burst;
        let t0 = Instant::now();
        for k in 0..burst {
            a.publish_device_state(&format!("PJSIP/{}", first + k), DeviceState::InUse);
        }
        let mut seen = 0;
        rt.block_on(async {
            while seen < burst {
                match tokio::time::timeout(T, statebus::recv(&mut rx)).await {
                    Ok(Some(BusEvent::Changed(Change::Device { key, .. }))) => {
                        if key
                            .strip_prefix("PJSIP/")
                            .and_then(|k| k.parse::<usize>().ok())
                            .is_some_and(|k| (first..first + burst).contains(&k))
                        {
                            seen += 1;
                        }
                    }
                    Ok(Some(BusEvent::Lagged(n))) => bail!("subscriber lagged by {n}"),
                    Ok(Some(_)) => {}
                    Ok(None) => bail!("bus closed"),
                    Err(_) => bail!("burst: saw {seen} of {burst}"),
                }
            }
            Ok(())
        })?;
        let rate = burst as f64 / t0.elapsed().as_secs_f64();
        println!(
            "  burst round {}: {rate:.0} changes/s node 0 → node 1; load {}",
            round + 1,
            bench::loadavg()
        );
        rates.push(rate);
    }
    if !rates.is_empty() {
        println!(
            "THROUGHPUT through the cluster: median {:.0} changes/s (bursts of {burst})",
            bench::median(rates).unwrap_or(0.0)
        );
    }
    rt.block_on(async {
        a.shutdown().await;
        b.shutdown().await;
    });

    // Failover.
    let (mut online, mut converged) = (Vec::new(), Vec::new());
    for round in 0..failovers {
        let (fa, obs) = rt.block_on(async {
            let fa = start_bus(bus_config("fail-a", 3, &[n0, n1], shared)).await?;
            let obs = start_bus(bus_config("observer", 4, &[n1], shared)).await?;
            anyhow::Ok((fa, obs))
        })?;
        if fa.server() != Some(n0.to_string()) {
            bail!("the failing member is not on node 0: {:?}", fa.server());
        }
        let key = format!("PJSIP/fail{round}");
        let mut orx = obs.subscribe();
        fa.publish_device_state(&key, DeviceState::InUse);
        rt.block_on(async {
            let t0 = Instant::now();
            while obs.device_state(&key) != Some(DeviceState::InUse) {
                if t0.elapsed() > T {
                    bail!("observer never saw {key}");
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok(())
        })?;
        let connects = fa.stats().connects;
        cluster.kill(0)?;
        let t0 = Instant::now();
        fa.publish_device_state(&key, DeviceState::OnHold);
        let (t_online, t_conv) = rt.block_on(async {
            let mut t_online = None;
            let mut t_conv = None;
            while t_online.is_none() || t_conv.is_none() {
                if t0.elapsed() > T {
                    bail!("no failover within {T:?}: {:?}", fa.stats());
                }
                if t_online.is_none()
                    && fa.is_online()
                    && fa.stats().connects > connects
                    && fa.server() == Some(n1.to_string())
                {
                    t_online = Some(t0.elapsed());
                }
                if t_conv.is_none() && obs.device_state(&key) == Some(DeviceState::OnHold) {
                    t_conv = Some(t0.elapsed());
                }
                let _ =
                    tokio::time::timeout(Duration::from_millis(2), statebus::recv(&mut orx)).await;
            }
            Ok((t_online.unwrap_or_default(), t_conv.unwrap_or_default()))
        })?;
        println!(
            "  failover {}: member online on node 1 after {:.0} ms, its change seen on node 1 after {:.0} ms; load {}",
            round + 1,
            ms(t_online),
            ms(t_conv),
            bench::loadavg()
        );
        online.push(ms(t_online));
        converged.push(ms(t_conv));
        rt.block_on(async {
            fa.shutdown().await;
            obs.shutdown().await;
        });
        let t1 = Instant::now();
        cluster.restart(0)?;
        println!(
            "  node 0 back and rejoined in {:.1} s",
            t1.elapsed().as_secs_f64()
        );
    }
    if !online.is_empty() {
        println!(
            "FAILOVER (kill -9 of the member's node → state reconverged, {} runs): online on the \
             other node median {:.0} ms, max {:.0} ms; change seen median {:.0} ms, max {:.0} ms",
            online.len(),
            bench::median(online.clone()).unwrap_or(0.0),
            online.iter().cloned().fold(0.0, f64::max),
            bench::median(converged.clone()).unwrap_or(0.0),
            converged.iter().cloned().fold(0.0, f64::max),
        );
    }
    println!("load at the end: {}", bench::loadavg());
    Ok(())
}

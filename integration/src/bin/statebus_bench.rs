//! Benchmark: publish→notify latency and sustained state changes per second through a real XMPP
//! server, for callfabric's `XmppBus` side by side with a raw baseline measured in the same run
//! on the same server: a minimal client (`integration::raw_xmpp`, no XML library, no caches, no
//! coalescing) doing the same publish→notification round trip.
//!
//! The floor and the bus are interleaved so that both see the same machine state: round trips
//! alternate one by one (raw, bus, bus, raw, …), bursts alternate (the order flipped each
//! round), and the whole is repeated in rounds. Prints p50/p99 per round and pooled, the ratios,
//! the client CPU per round trip (all threads of this process during that client's round trips)
//! and the server's CPU per round trip for each, and this process's memory growth.
//!
//! ```text
//! cargo run --release -p integration --bin statebus_bench -- [prosody|ejabberd] [ROUND_TRIPS] [BURST] [ROUNDS]
//! ```

use anyhow::{bail, Context, Result};
use integration::bench;
use integration::raw_xmpp::{self, Floor, RawXmpp};
use integration::{ServerKind, XmppServer};
use statebus::wire;
use statebus::{Bus, BusEvent, Change, DeviceState, Eid, TlsMode, XmppBus, XmppBusConfig};
use std::time::{Duration, Instant};

const PASSWORD: &str = "secret";
const T: Duration = Duration::from_secs(30);

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

fn session(s: &XmppServer, user: &str, resource: &str) -> Result<RawXmpp> {
    raw_xmpp::bound_session(s.c2s_addr(), s.domain(), user, PASSWORD, resource, T)
}

const RAW_NODE: &str = "bench_raw";

/// A raw `<iq>` publishing device state `i` (alternating InUse/NotInUse) as item `PJSIP/{i}`.
fn raw_publish(svc: &str, i: usize, id: &str) -> String {
    let eid = Eid([2, 0, 0, 0, 0, 0x99]);
    let st = if i.is_multiple_of(2) {
        DeviceState::InUse
    } else {
        DeviceState::NotInUse
    };
    let item = format!("PJSIP/{i}");
    format!(
        "<iq type='set' id='{id}' to='{svc}'>{}</iq>",
        wire::publish_xml(RAW_NODE, &item, &wire::device_state_xml(eid, st, true))
    )
}

/// The raw floor (`integration::raw_xmpp::Floor`): publish on one session, the notification
/// arrives on the other.
fn floor(s: &XmppServer) -> Result<Floor> {
    let publisher = session(s, "raw-pub", "bench").context("raw-pub session")?;
    let sub = session(s, "raw-sub", "bench").context("raw-sub session")?;
    let svc = s.pubsub_service().to_string();
    Floor::new(
        publisher,
        sub,
        &svc,
        RAW_NODE,
        &format!("raw-sub@{}", s.domain()),
        T,
    )
}

/// A burst of `burst` distinct keys from `first` up, pipelined with up to 256 IQs in flight
/// (as the bus), on fresh sessions (resource `res`); the reader only counts closing tags.
/// Returns the changes per second.
fn raw_burst(s: &XmppServer, first: usize, burst: usize, res: &str) -> Result<f64> {
    let svc = s.pubsub_service().to_string();
    let publisher = session(s, "raw-pub", res).context("raw-pub burst session")?;
    let mut sub = session(s, "raw-sub", res).context("raw-sub burst session")?;
    // A notification goes to the bare JID, and reaches only resources whose initial presence
    // the server has processed (Prosody drops a headline with none available): one round trip
    // on this session after its presence, before the first publish, so that none of the burst
    // is lost and the reader does not wait for it until the timeout.
    sub.iq("get", None, "<query xmlns='jabber:iq:roster'/>")
        .context("raw-sub burst session: roster round trip")?;
    let (sub_sock, sub_buf) = sub.into_parts();
    let (mut pub_sock, pub_buf) = publisher.into_parts();
    let already = count(sub_buf.as_bytes(), b"</message>");
    let t0 = Instant::now();
    let reader = std::thread::spawn(move || -> Result<()> {
        let mut c = Counter::new(b"</message>");
        c.seen = already;
        c.read_until(sub_sock, burst)
    });
    use std::io::Write as _;
    let mut results = Counter::new(b"</iq>");
    results.seen = count(pub_buf.as_bytes(), b"</iq>") + count(pub_buf.as_bytes(), b"/>");
    let mut results_reader = pub_sock.try_clone()?;
    results_reader.set_read_timeout(Some(T))?;
    let mut sent = 0usize;
    let mut answered = 0usize;
    let mut batch = String::new();
    while sent < burst {
        while sent < burst && sent - answered < 256 {
            batch.push_str(&raw_publish(&svc, first + sent, &format!("b{res}-{sent}")));
            sent += 1;
        }
        pub_sock.write_all(batch.as_bytes())?;
        batch.clear();
        if sent < burst {
            answered += results.read_some(&mut results_reader)?;
        }
    }
    reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))??;
    Ok(burst as f64 / t0.elapsed().as_secs_f64())
}

/// Counts occurrences of a closing tag in a byte stream, across read boundaries.
struct Counter {
    pat: &'static [u8],
    tail: Vec<u8>,
    seen: usize,
}

fn count(hay: &[u8], pat: &[u8]) -> usize {
    hay.windows(pat.len()).filter(|w| *w == pat).count()
}

impl Counter {
    fn new(pat: &'static [u8]) -> Self {
        Counter {
            pat,
            tail: Vec::new(),
            seen: 0,
        }
    }

    /// Read once; return how many new occurrences arrived.
    fn read_some(&mut self, sock: &mut std::net::TcpStream) -> Result<usize> {
        use std::io::Read as _;
        let mut buf = [0u8; 65536];
        let n = sock.read(&mut buf).context("raw read")?;
        if n == 0 {
            bail!("connection closed");
        }
        self.tail.extend_from_slice(&buf[..n]);
        let found = count(&self.tail, self.pat);
        let keep = self.pat.len() - 1;
        if self.tail.len() > keep {
            self.tail.drain(..self.tail.len() - keep);
        }
        self.seen += found;
        Ok(found)
    }

    fn read_until(&mut self, mut sock: std::net::TcpStream, want: usize) -> Result<()> {
        sock.set_read_timeout(Some(T))?;
        while self.seen < want {
            self.read_some(&mut sock)?;
        }
        Ok(())
    }
}

fn bus_config(s: &XmppServer, user: &str, eid: Eid) -> XmppBusConfig {
    let mut c = XmppBusConfig::new(
        &format!("{user}@{}", s.domain()),
        PASSWORD,
        s.pubsub_service(),
        eid,
    );
    c.server = Some(s.c2s_addr().to_string());
    c.tls = TlsMode::Plaintext;
    c.max_items = 10_000;
    c.fabric_jids = vec![
        format!("bus-pub@{}", s.domain()),
        format!("bus-sub@{}", s.domain()),
    ];
    c
}

async fn wait_for(rx: &mut tokio::sync::broadcast::Receiver<BusEvent>, key: &str) -> Result<()> {
    loop {
        match tokio::time::timeout(T, statebus::recv(rx)).await {
            Ok(Some(BusEvent::Changed(Change::Device { key: k, .. }))) if k == key => return Ok(()),
            Ok(Some(BusEvent::Lagged(n))) => bail!("subscriber lagged by {n}"),
            Ok(Some(_)) => {}
            Ok(None) => bail!("bus closed"),
            Err(_) => bail!("timed out waiting for {key}"),
        }
    }
}

/// callfabric's two buses: publish on `a`, the change event arrives on `b`.
struct Ours {
    a: XmppBus,
    b: XmppBus,
    rx: tokio::sync::broadcast::Receiver<BusEvent>,
}

impl Ours {
    async fn start(s: &XmppServer) -> Result<Ours> {
        let a = XmppBus::start(bus_config(s, "bus-pub", Eid([2, 0, 0, 0, 0, 1])))?;
        let b = XmppBus::start(bus_config(s, "bus-sub", Eid([2, 0, 0, 0, 0, 2])))?;
        if !(a.wait_online(T).await && b.wait_online(T).await) {
            bail!("buses did not come online");
        }
        let rx = b.subscribe();
        Ok(Ours { a, b, rx })
    }

    /// One round trip: `publish_device_state` on `a` until `b`'s subscriber sees the change.
    async fn round_trip(&mut self, i: usize) -> Result<Duration> {
        let key = format!("PJSIP/{}", i % 100);
        let st = if i.is_multiple_of(2) {
            DeviceState::InUse
        } else {
            DeviceState::NotInUse
        };
        // Make sure this is a change for the aggregate.
        let st = if self.a.device_state(&key) == Some(st) {
            DeviceState::Busy
        } else {
            st
        };
        let t0 = Instant::now();
        self.a.publish_device_state(&key, st);
        wait_for(&mut self.rx, &key).await?;
        Ok(t0.elapsed())
    }

    /// A burst of `burst` distinct keys from `first` up; changes per second.
    async fn burst(&mut self, first: usize, burst: usize) -> Result<f64> {
        let t0 = Instant::now();
        for i in 0..burst {
            self.a
                .publish_device_state(&format!("PJSIP/{}", first + i), DeviceState::InUse);
        }
        let mut seen = 0;
        while seen < burst {
            match tokio::time::timeout(T, statebus::recv(&mut self.rx)).await {
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
        Ok(burst as f64 / t0.elapsed().as_secs_f64())
    }
}

/// CPU nanoseconds of every thread of this process (`/proc/self/task/*/schedstat`).
fn process_cpu_ns() -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("schedstat")).ok())
        .filter_map(|s| {
            s.split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
        })
        .sum()
}

/// The server's processes (its main process and direct children, found once).
struct ServerCpu(Vec<u32>);

impl ServerCpu {
    fn find(pid: Option<u32>) -> ServerCpu {
        let Some(pid) = pid else {
            return ServerCpu(Vec::new());
        };
        let mut pids = vec![pid];
        if let Ok(d) = std::fs::read_dir("/proc") {
            for e in d.filter_map(|e| e.ok()) {
                let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
                    continue;
                };
                let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
                let ppid = stat
                    .rfind(')')
                    .and_then(|i| stat[i + 1..].split_whitespace().nth(1))
                    .and_then(|v| v.parse::<u32>().ok());
                if ppid == Some(pid) {
                    pids.push(p);
                }
            }
        }
        ServerCpu(pids)
    }

    /// Their CPU seconds so far (clock ticks: summed over many operations).
    fn secs(&self) -> f64 {
        self.0.iter().map(|p| bench::cpu_secs(*p, false)).sum()
    }
}

/// Latencies, rates and CPU of one client.
#[derive(Default)]
struct Side {
    lat: Vec<Duration>,
    /// Per round: (p50, p99).
    rounds: Vec<(Duration, Duration)>,
    client_cpu_ns: u64,
    server_cpu_s: f64,
    ops: u64,
    rates: Vec<f64>,
}

impl Side {
    fn close_round(&mut self, from: usize) {
        let mut r = self.lat[from..].to_vec();
        r.sort();
        self.rounds
            .push((percentile(&r, 0.5), percentile(&r, 0.99)));
    }

    fn client_us(&self) -> f64 {
        self.client_cpu_ns as f64 / 1000.0 / self.ops.max(1) as f64
    }

    fn server_us(&self) -> f64 {
        self.server_cpu_s * 1e6 / self.ops.max(1) as f64
    }
}

fn vm_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
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
    let n: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(1000);
    let burst: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(1000);
    let rounds: usize = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(3);
    if n == 0 || rounds == 0 {
        bail!("ROUND_TRIPS and ROUNDS must be > 0");
    }
    let s = XmppServer::start(
        kind,
        &["raw-pub", "raw-sub", "bus-pub", "bus-sub"],
        PASSWORD,
    )?;
    let server_cpu = ServerCpu::find(s.pid());
    println!(
        "server: {kind:?} at {}; {rounds} rounds of {n} round trips per client, interleaved one \
         by one, and of a burst of {burst} distinct keys per client, alternating; load {}",
        s.c2s_addr(),
        bench::loadavg()
    );
    let rt = tokio::runtime::Runtime::new()?;
    let rss0 = vm_rss_kb();
    let mut raw = floor(&s)?;
    let mut ours = rt.block_on(Ours::start(&s))?;
    // Warm-up: 50 round trips each, not measured.
    for i in 0..50 {
        raw.round_trip(i)?;
        rt.block_on(ours.round_trip(i))?;
    }
    let (mut fr, mut fo) = (Side::default(), Side::default());
    let mut i = 50;
    for round in 0..rounds {
        let (r0, o0) = (fr.lat.len(), fo.lat.len());
        for k in 0..n {
            // raw, bus, bus, raw, …: neither always goes first.
            let raw_first = (k + round).is_multiple_of(2);
            for side in 0..2 {
                let is_raw = (side == 0) == raw_first;
                let c0 = process_cpu_ns();
                let s0 = server_cpu.secs();
                let took = if is_raw {
                    raw.round_trip(i)?
                } else {
                    rt.block_on(ours.round_trip(i))?
                };
                let f = if is_raw { &mut fr } else { &mut fo };
                f.client_cpu_ns += process_cpu_ns().saturating_sub(c0);
                f.server_cpu_s += server_cpu.secs() - s0;
                f.ops += 1;
                f.lat.push(took);
            }
            i += 1;
        }
        fr.close_round(r0);
        fo.close_round(o0);
        let (a, b) = (fr.rounds[round], fo.rounds[round]);
        println!(
            "  round {}: raw p50 {:.3} p99 {:.3} ms, bus p50 {:.3} p99 {:.3} ms (ratio p50 {:.2}x p99 {:.2}x); load {}",
            round + 1,
            ms(a.0),
            ms(a.1),
            ms(b.0),
            ms(b.1),
            b.0.as_secs_f64() / a.0.as_secs_f64(),
            b.1.as_secs_f64() / a.1.as_secs_f64(),
            bench::loadavg()
        );
    }
    // Bursts: the latency sessions close first (a burst's sessions are fresh ones of the same
    // accounts, and notifications to the bare JID would reach both).
    drop(raw);
    if burst > 0 {
        for round in 0..rounds {
            let first = 1000 + round * burst;
            for side in 0..2 {
                if (side + round).is_multiple_of(2) {
                    fr.rates
                        .push(raw_burst(&s, first, burst, &format!("burst{round}"))?);
                } else {
                    fo.rates.push(rt.block_on(ours.burst(first, burst))?);
                }
            }
            println!(
                "  burst round {}: raw {:.0}/s, bus {:.0}/s; load {}",
                round + 1,
                fr.rates[round],
                fo.rates[round],
                bench::loadavg()
            );
        }
    }
    let rss1 = vm_rss_kb();
    rt.block_on(async {
        ours.a.shutdown().await;
        ours.b.shutdown().await;
    });
    fr.lat.sort();
    fo.lat.sort();
    println!(
        "{:<22} {:>9} {:>9} {:>12} {:>17} {:>17}",
        "pooled", "p50 ms", "p99 ms", "changes/s", "client CPU µs/op", "server CPU µs/op"
    );
    let med = |v: &[f64]| bench::median(v.to_vec()).unwrap_or(0.0);
    for (name, f) in [("raw client (floor)", &fr), ("callfabric XmppBus", &fo)] {
        println!(
            "{:<22} {:>9.3} {:>9.3} {:>12.0} {:>17.1} {:>17.1}",
            name,
            ms(percentile(&f.lat, 0.5)),
            ms(percentile(&f.lat, 0.99)),
            med(&f.rates),
            f.client_us(),
            f.server_us()
        );
    }
    let r50 = percentile(&fo.lat, 0.5).as_secs_f64() / percentile(&fr.lat, 0.5).as_secs_f64();
    let r99 = percentile(&fo.lat, 0.99).as_secs_f64() / percentile(&fr.lat, 0.99).as_secs_f64();
    println!(
        "HEADLINE ours/raw (pooled over {rounds} rounds): p50 {r50:.2}x  p99 {r99:.2}x  (target <= 1.2x); \
         client CPU per round trip {:.2}x, server CPU per round trip {:.2}x; burst throughput {}{}",
        fo.client_us() / fr.client_us().max(1e-9),
        fo.server_us() / fr.server_us().max(1e-9),
        if burst > 0 {
            format!("{:.2}x (medians)", med(&fo.rates) / med(&fr.rates).max(1e-9))
        } else {
            "not measured (burst 0)".to_string()
        },
        if r50 < 1.0 || r99 < 1.0 {
            " -- NOTE: below 1.0x the floor was slower than the bus: it did not act as a floor there"
        } else {
            ""
        }
    );
    println!(
        "memory: this process's RSS grew {:.1} MB with both clients (the raw client holds only \
         its socket buffers; the buses their caches of {} keys)",
        rss1.saturating_sub(rss0) as f64 / 1024.0,
        100 + rounds * burst
    );
    println!("load at the end: {}", bench::loadavg());
    Ok(())
}

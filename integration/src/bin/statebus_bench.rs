//! Benchmark: publish→notify latency and sustained state changes per second through a real XMPP
//! server, for callfabric's `XmppBus` side by side with a raw baseline measured in the same run
//! on the same server: a minimal client (`integration::raw_xmpp`, no XML library, no caches, no
//! coalescing) doing the same publish→notification round trip.
//!
//! ```text
//! cargo run --release -p integration --bin statebus_bench -- [prosody|ejabberd] [ROUND_TRIPS] [BURST]
//! ```

use anyhow::{bail, Context, Result};
use integration::raw_xmpp::RawXmpp;
use integration::{ServerKind, XmppServer};
use statebus::wire::{self, AccessModel, NodeKind};
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

fn session(s: &XmppServer, user: &str) -> Result<RawXmpp> {
    let mut c = RawXmpp::connect(s.c2s_addr(), s.domain(), T)?;
    if !c.sasl_plain(s.domain(), user, PASSWORD)? {
        bail!("login {user} refused");
    }
    c.iq(
        "set",
        None,
        "<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>bench</resource></bind>",
    )?;
    c.send("<presence/>")?;
    Ok(c)
}

struct Figures {
    p50: Duration,
    p99: Duration,
    rate: f64,
}

/// The raw floor: publish on one connection, wait for the notification on another.
fn raw(s: &XmppServer, n: usize, burst: usize) -> Result<Figures> {
    let node = "bench_raw";
    let svc = s.pubsub_service().to_string();
    let mut publisher = session(s, "raw-pub").context("raw-pub session")?;
    let create = wire::create_node_xml(node, NodeKind::Flat, AccessModel::Open, 10_000);
    publisher
        .iq("set", Some(&svc), &create)
        .context("create raw node")?;
    let mut sub = session(s, "raw-sub").context("raw-sub session")?;
    sub.iq(
        "set",
        Some(&svc),
        &wire::subscribe_xml(node, &format!("raw-sub@{}", s.domain()), false),
    )
    .context("raw-sub subscribe")?;
    let eid = Eid([2, 0, 0, 0, 0, 0x99]);
    let publish = |i: usize, id: &str| -> String {
        let st = if i.is_multiple_of(2) {
            DeviceState::InUse
        } else {
            DeviceState::NotInUse
        };
        let item = format!("PJSIP/{i}");
        format!(
            "<iq type='set' id='{id}' to='{svc}'>{}</iq>",
            wire::publish_xml(node, &item, &wire::device_state_xml(eid, st, true))
        )
    };
    // Warm-up and latency: sequential round trips.
    let mut lat = Vec::with_capacity(n);
    for i in 0..(n + 50) {
        let item = format!("id='PJSIP/{}'", i % 100);
        let t0 = Instant::now();
        publisher.send(&publish(i % 100, &format!("l{i}")))?;
        sub.set_timeout(T);
        sub.read_element("message", |_| true)
            .with_context(|| format!("raw notification {i}"))
            .and_then(|m| {
                if m.contains(&item) {
                    Ok(())
                } else {
                    bail!("unexpected notification {m}")
                }
            })?;
        if i >= 50 {
            lat.push(t0.elapsed());
        }
        publisher.set_timeout(T);
        publisher
            .read_element("iq", |_| true)
            .with_context(|| format!("raw publish result {i}"))?;
    }
    lat.sort();
    // Throughput: a burst of distinct keys, pipelined with up to 256 IQs in flight (as the
    // bus). Raw sockets from here on: the reader only counts closing tags.
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
            batch.push_str(&publish(1000 + sent, &format!("b{sent}")));
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
    let rate = burst as f64 / t0.elapsed().as_secs_f64();
    Ok(Figures {
        p50: percentile(&lat, 0.5),
        p99: percentile(&lat, 0.99),
        rate,
    })
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

/// callfabric's bus: `publish_device_state` on one bus until the change event on another.
async fn ours(s: &XmppServer, n: usize, burst: usize) -> Result<Figures> {
    let a = XmppBus::start(bus_config(s, "bus-pub", Eid([2, 0, 0, 0, 0, 1])))?;
    let b = XmppBus::start(bus_config(s, "bus-sub", Eid([2, 0, 0, 0, 0, 2])))?;
    if !(a.wait_online(T).await && b.wait_online(T).await) {
        bail!("buses did not come online");
    }
    let mut rx = b.subscribe();
    let mut lat = Vec::with_capacity(n);
    for i in 0..(n + 50) {
        let key = format!("PJSIP/{}", i % 100);
        let st = if i.is_multiple_of(2) {
            DeviceState::InUse
        } else {
            DeviceState::NotInUse
        };
        // Make sure this is a change for the aggregate: alternate per round.
        let st = if a.device_state(&key) == Some(st) {
            DeviceState::Busy
        } else {
            st
        };
        let t0 = Instant::now();
        a.publish_device_state(&key, st);
        wait_for(&mut rx, &key).await?;
        if i >= 50 {
            lat.push(t0.elapsed());
        }
    }
    lat.sort();
    let t0 = Instant::now();
    for i in 0..burst {
        a.publish_device_state(&format!("PJSIP/{}", 1000 + i), DeviceState::InUse);
    }
    let mut seen = 0;
    while seen < burst {
        match tokio::time::timeout(T, statebus::recv(&mut rx)).await {
            Ok(Some(BusEvent::Changed(Change::Device { key, .. })))
                if key.starts_with("PJSIP/") =>
            {
                if key[6..]
                    .parse::<usize>()
                    .map(|k| k >= 1000)
                    .unwrap_or(false)
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
    let rate = burst as f64 / t0.elapsed().as_secs_f64();
    a.shutdown().await;
    b.shutdown().await;
    Ok(Figures {
        p50: percentile(&lat, 0.5),
        p99: percentile(&lat, 0.99),
        rate,
    })
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
    let burst: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(5000);
    let s = XmppServer::start(
        kind,
        &["raw-pub", "raw-sub", "bus-pub", "bus-sub"],
        PASSWORD,
    )?;
    let _keep = &s;
    println!(
        "server: {kind:?} at {}; {n} sequential round trips, burst of {burst} distinct keys",
        s.c2s_addr()
    );
    let raw = raw(&s, n, burst)?;
    let rt = tokio::runtime::Runtime::new()?;
    let ours = rt.block_on(ours(&s, n, burst))?;
    println!(
        "{:<28} {:>10} {:>10} {:>14}",
        "", "p50 ms", "p99 ms", "changes/s"
    );
    for (name, f) in [("raw client (floor)", &raw), ("callfabric XmppBus", &ours)] {
        println!(
            "{:<28} {:>10.3} {:>10.3} {:>14.0}",
            name,
            ms(f.p50),
            ms(f.p99),
            f.rate
        );
    }
    let r50 = ours.p50.as_secs_f64() / raw.p50.as_secs_f64();
    let r99 = ours.p99.as_secs_f64() / raw.p99.as_secs_f64();
    let rr = ours.rate / raw.rate;
    println!(
        "ratio ours/raw: p50 {r50:.2}x  p99 {r99:.2}x  (target <= 1.2x);  throughput {rr:.2}x"
    );
    Ok(())
}

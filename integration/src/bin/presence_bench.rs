//! Benchmark: device change → supervisor's client presence, through callfabric's presence
//! component (statebus::presence, XEP-0114) and a real XMPP server, against raw XMPP floors
//! measured in the same run on the same server, round trip by round trip:
//!
//! - `floor comp` (the like-for-like floor): a raw XEP-0114 component (`floor.fabric.test`,
//!   `integration::raw_xmpp`, hand-written strings) sends the same presence our component
//!   sends (`<show>`, `<status>`, from a contact's full JID) to the same supervisor's bare JID,
//!   the supervisor subscribed to that contact as to ours: the same server path.
//! - `floor c2s`: a raw client's directed presence to the supervisor's full JID (client →
//!   server → client), the floor recorded before.
//! - `ours rt`: `Bus::publish_device_state` (alternating INUSE / NOT_INUSE) on the in-process
//!   bus from a task on the runtime, as the gateway and the ACD publish → the component renders
//!   and sends the presence → server → the supervisor's socket. Timed from the publish.
//! - `ours ext`: the same publish from the bench's main thread, outside the runtime (what this
//!   bench measured before): one more cross-thread wake-up (a parked tokio worker) than the
//!   gateway pays.
//!
//! - `tokio comp`: the floor component's stanza written by a tokio task on the same runtime,
//!   handed over from a task as ours is (publish task → channel → writer task → socket): the
//!   task hop and tokio's I/O without our rendering and serialisation. Timed from the hand-over.
//!
//! The supervisor is a raw client. The five alternate in rotated order, in rounds.
//!
//! ```text
//! cargo run --release -p integration --bin presence_bench -- [prosody|ejabberd] [ROUND_TRIPS] [ROUNDS]
//! ```

use anyhow::{bail, Context as _, Result};
use integration::raw_xmpp::RawXmpp;
use integration::{ServerKind, XmppServer};
use statebus::presence::{PresenceConfig, PresenceService};
use statebus::{Bus, DeviceState, Eid, LocalBus};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PASSWORD: &str = "secret";
const T: Duration = Duration::from_secs(30);
const NAMES: [&str; K] = [
    "floor comp",
    "floor c2s",
    "ours rt",
    "ours ext",
    "tokio comp",
    "tokio core",
];
const K: usize = 6;

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
    integration::raw_xmpp::bound_session(s.c2s_addr(), s.domain(), user, PASSWORD, resource, T)
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn line(name: &str, v: &[Duration], floor: &[Duration]) -> String {
    let (p50, p99) = (percentile(v, 0.5), percentile(v, 0.99));
    format!(
        "{name:>10}: p50 {:.3} ms p99 {:.3} ms (x{:.2} / x{:.2} floor comp)",
        ms(p50),
        ms(p99),
        ms(p50) / ms(percentile(floor, 0.5)).max(1e-9),
        ms(p99) / ms(percentile(floor, 0.99)).max(1e-9),
    )
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let kind = match args.get(1).map(String::as_str) {
        None | Some("prosody") => ServerKind::Prosody,
        Some("ejabberd") => ServerKind::Ejabberd,
        Some(k) => bail!("unknown server {k:?} (prosody|ejabberd)"),
    };
    let n: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(200);
    let rounds: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(3);
    let s = XmppServer::start(kind, &["boss", "raw"], PASSWORD)?;
    let rt = tokio::runtime::Runtime::new()?;
    let bus: Arc<dyn Bus> = Arc::new(LocalBus::new(Eid([2, 0, 0, 0, 0, 9])));
    bus.publish_device_state("PJSIP/bench", DeviceState::NotInUse);
    let cfg = PresenceConfig::new(
        s.component_jid(),
        s.component_secret(),
        &format!("127.0.0.1:{}", s.component_port()),
    );
    let svc = rt.block_on(async { PresenceService::start(cfg, bus.clone()) })?;
    if !rt.block_on(svc.wait_online(T)) {
        bail!(
            "the presence component never came online:\n{}",
            s.log_tail()
        );
    }
    let contact = format!("bench@{}", s.component_jid());
    let mut boss = session(&s, "boss", "desk")?;
    boss.send(&format!("<presence type='subscribe' to='{contact}'/>"))?;
    let from_contact = format!("from='{contact}/");
    boss.read_element("presence", |t| {
        t.contains(&from_contact) && !t.contains("type=")
    })?;
    // The like-for-like floor: a raw component in the presence component's place, the
    // supervisor subscribed to its contact the same way.
    let comp_addr = std::net::SocketAddr::from(([127, 0, 0, 1], s.component_port()));
    let mut comp = RawXmpp::component(comp_addr, s.floor_component_jid(), s.component_secret(), T)
        .with_context(|| s.log_tail())?;
    let boss_bare = format!("boss@{}", s.domain());
    let floor_contact = format!("bench@{}", s.floor_component_jid());
    boss.send(&format!(
        "<presence type='subscribe' to='{floor_contact}'/>"
    ))?;
    comp.read_element("presence", |t| {
        t.contains("type='subscribe'") || t.contains("type=\"subscribe\"")
    })?;
    comp.send(&format!(
        "<presence type='subscribed' from='{floor_contact}' to='{boss_bare}'/>"
    ))?;
    let from_floor = format!("from='{floor_contact}/");
    let floor_presence = |i: usize| {
        if i.is_multiple_of(2) {
            format!("<presence from='{floor_contact}/fabric' to='{boss_bare}'><show>dnd</show><status>On call</status></presence>")
        } else {
            format!("<presence from='{floor_contact}/fabric' to='{boss_bare}'><status>Available</status></presence>")
        }
    };
    comp.send(&floor_presence(1))?;
    boss.read_element("presence", |t| t.contains(&from_floor))?;
    let mut raw = session(&s, "raw", "r")?;
    let boss_full = format!("boss@{}/desk", s.domain());
    let from_raw = format!("from='raw@{}/r'", s.domain());
    // Ours from the runtime: a task publishes when asked and returns when it did; for
    // `tokio comp` it hands the floor's stanza to a writer task instead.
    let (go_tx, mut go_rx) = tokio::sync::mpsc::unbounded_channel::<Result<DeviceState, String>>();
    let (hop_tx, mut hop_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let (t0_tx, t0_rx) = std::sync::mpsc::channel::<Instant>();
    let rt_bus = bus.clone();
    rt.spawn(async move {
        while let Some(go) = go_rx.recv().await {
            let t0 = Instant::now();
            match go {
                Ok(st) => rt_bus.publish_device_state("PJSIP/bench", st),
                Err(text) => {
                    let _ = hop_tx.send(text);
                }
            }
            if t0_tx.send(t0).is_err() {
                return;
            }
        }
    });
    let std_sock = comp.try_clone_stream()?;
    std_sock.set_nonblocking(true)?;
    let mut tokio_sock = rt.block_on(async { tokio::net::TcpStream::from_std(std_sock) })?;
    let floor_jid = s.floor_component_jid().to_string();
    let boss_for_core = boss_bare.clone();
    rt.spawn(async move {
        use tokio::io::AsyncWriteExt as _;
        let mut subs = std::collections::BTreeMap::new();
        subs.insert(
            "bench".to_string(),
            std::collections::BTreeSet::from([boss_for_core]),
        );
        let mut core = statebus::presence::core::Core::new(&floor_jid, "PJSIP/", vec![], subs);
        let mut in_use = false;
        while let Some(text) = hop_rx.recv().await {
            let text = if text.is_empty() {
                // `tokio core`: our core renders the change, written as text
                in_use = !in_use;
                let st = if in_use {
                    DeviceState::InUse
                } else {
                    DeviceState::NotInUse
                };
                let mut v = Vec::with_capacity(256);
                for o in core.device_changed("PJSIP/bench", st, Instant::now()) {
                    o.write_text(&mut v);
                }
                String::from_utf8(v).unwrap_or_default()
            } else {
                text
            };
            if tokio_sock.write_all(text.as_bytes()).await.is_err() {
                return;
            }
        }
    });
    let mut state_in_use = false;
    let mut ours_turn = |boss: &mut RawXmpp, in_rt: bool| -> Result<Duration> {
        state_in_use = !state_in_use;
        let (st, want) = if state_in_use {
            (DeviceState::InUse, "<show>dnd</show>")
        } else {
            (DeviceState::NotInUse, "<status>Available</status>")
        };
        let t0 = if in_rt {
            go_tx.send(Ok(st)).context("the publishing task ended")?;
            None
        } else {
            let t0 = Instant::now();
            bus.publish_device_state("PJSIP/bench", st);
            Some(t0)
        };
        let el = boss.read_element("presence", |t| t.contains(&from_contact))?;
        let t1 = Instant::now();
        let t0 = match t0 {
            Some(t) => t,
            None => t0_rx.recv_timeout(T).context("no publish time")?,
        };
        if !el.contains(want) {
            bail!("expected {want} in {el}");
        }
        Ok(t1 - t0)
    };
    let mut turn = |k: usize, i: usize, boss: &mut RawXmpp| -> Result<Duration> {
        match k {
            0 => {
                let t0 = Instant::now();
                comp.send(&floor_presence(i))?;
                boss.read_element("presence", |t| t.contains(&from_floor))?;
                Ok(t0.elapsed())
            }
            1 => {
                let t0 = Instant::now();
                raw.send(&format!(
                    "<presence to='{boss_full}'><show>dnd</show><status>r{i}</status></presence>"
                ))?;
                boss.read_element("presence", |t| t.contains(&from_raw))?;
                Ok(t0.elapsed())
            }
            2 => ours_turn(boss, true),
            3 => ours_turn(boss, false),
            _ => {
                let text = if k == 4 {
                    floor_presence(i)
                } else {
                    String::new()
                };
                go_tx.send(Err(text)).context("the publishing task ended")?;
                boss.read_element("presence", |t| t.contains(&from_floor))?;
                let t1 = Instant::now();
                Ok(t1 - t0_rx.recv_timeout(T).context("no hand-over time")?)
            }
        }
    };
    // warm-up
    for i in 0..50 {
        turn(i % K, i, &mut boss)?;
    }
    let mut all: [Vec<Duration>; K] = Default::default();
    println!(
        "server {kind}: {rounds} rounds of {n} round trips each ({} rotated), load {}",
        NAMES.join(", "),
        load()
    );
    for round in 0..rounds {
        let mut got: [Vec<Duration>; K] = Default::default();
        for i in 0..n {
            for j in 0..K {
                let k = (i + j) % K;
                got[k].push(turn(k, i, &mut boss)?);
            }
        }
        for v in got.iter_mut() {
            v.sort();
        }
        println!("round {round} (load {}):", load());
        for (k, v) in got.iter().enumerate() {
            println!("  {}", line(NAMES[k], v, &got[0]));
        }
        for (a, v) in all.iter_mut().zip(got) {
            a.extend(v);
        }
    }
    for v in all.iter_mut() {
        v.sort();
    }
    println!("pooled ({} each, load {}):", all[0].len(), load());
    for (k, v) in all.iter().enumerate() {
        println!("  {}", line(NAMES[k], v, &all[0]));
    }
    let st = svc.stats();
    println!(
        "component: presences_sent {} stanzas_dropped {} ignored {}",
        st.presences_sent, st.stanzas_dropped, st.ignored
    );
    rt.block_on(svc.shutdown());
    Ok(())
}

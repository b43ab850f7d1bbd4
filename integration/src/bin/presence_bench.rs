//! Benchmark: device change → supervisor's client presence, through callfabric's presence
//! component (statebus::presence, XEP-0114) and a real XMPP server, against the raw XMPP floor
//! measured in the same run on the same server: a minimal client (`integration::raw_xmpp`)
//! sending a directed presence to the same supervisor (client → server → client).
//!
//! Ours: `Bus::publish_device_state` on the in-process bus (alternating INUSE / NOT_INUSE) →
//! the component renders and sends the presence → server → the supervisor's socket. The
//! supervisor is a raw client subscribed to `bench@<component>`. Round trips alternate
//! (raw, ours, ours, raw, …) in rounds, so both see the same machine state.
//!
//! ```text
//! cargo run --release -p integration --bin presence_bench -- [prosody|ejabberd] [ROUND_TRIPS] [ROUNDS]
//! ```

use anyhow::{bail, Result};
use integration::raw_xmpp::RawXmpp;
use integration::{ServerKind, XmppServer};
use statebus::presence::{PresenceConfig, PresenceService};
use statebus::{Bus, DeviceState, Eid, LocalBus};
use std::sync::Arc;
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
    let mut c = RawXmpp::connect(s.c2s_addr(), s.domain(), T)?;
    if !c.sasl_plain(s.domain(), user, PASSWORD)? {
        bail!("login {user} refused");
    }
    c.iq(
        "set",
        None,
        &format!(
            "<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{resource}</resource></bind>"
        ),
    )?;
    c.send("<presence/>")?;
    Ok(c)
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
    let mut raw = session(&s, "raw", "r")?;
    let boss_full = format!("boss@{}/desk", s.domain());
    let from_raw = format!("from='raw@{}/r'", s.domain());
    // warm-up
    for i in 0..20 {
        raw.send(&format!(
            "<presence to='{boss_full}'><status>w{i}</status></presence>"
        ))?;
        boss.read_element("presence", |t| t.contains(&from_raw))?;
    }
    let mut state_in_use = false;
    let mut ours_all = Vec::new();
    let mut raw_all = Vec::new();
    println!("server {kind}: {rounds} rounds of {n} round trips each (raw and ours interleaved)");
    for round in 0..rounds {
        let mut ours = Vec::with_capacity(n);
        let mut floor = Vec::with_capacity(n);
        for i in 0..2 * n {
            let raw_turn = matches!(i % 4, 0 | 3);
            if raw_turn {
                let t0 = Instant::now();
                raw.send(&format!(
                    "<presence to='{boss_full}'><show>dnd</show><status>r{i}</status></presence>"
                ))?;
                boss.read_element("presence", |t| t.contains(&from_raw))?;
                floor.push(t0.elapsed());
            } else {
                state_in_use = !state_in_use;
                let (st, want) = if state_in_use {
                    (DeviceState::InUse, "<show>dnd</show>")
                } else {
                    (DeviceState::NotInUse, "<status>Available</status>")
                };
                let t0 = Instant::now();
                bus.publish_device_state("PJSIP/bench", st);
                let el = boss.read_element("presence", |t| t.contains(&from_contact))?;
                ours.push(t0.elapsed());
                if !el.contains(want) {
                    bail!("expected {want} in {el}");
                }
            }
        }
        ours.sort();
        floor.sort();
        println!(
            "round {round}: floor p50 {:.3} ms p99 {:.3} ms | ours p50 {:.3} ms p99 {:.3} ms | ratio p50 {:.2}",
            ms(percentile(&floor, 0.5)),
            ms(percentile(&floor, 0.99)),
            ms(percentile(&ours, 0.5)),
            ms(percentile(&ours, 0.99)),
            ms(percentile(&ours, 0.5)) / ms(percentile(&floor, 0.5)).max(1e-9),
        );
        ours_all.extend(ours);
        raw_all.extend(floor);
    }
    ours_all.sort();
    raw_all.sort();
    let (f50, f99) = (percentile(&raw_all, 0.5), percentile(&raw_all, 0.99));
    let (o50, o99) = (percentile(&ours_all, 0.5), percentile(&ours_all, 0.99));
    println!(
        "pooled ({} each): floor p50 {:.3} ms p99 {:.3} ms | ours p50 {:.3} ms p99 {:.3} ms | ratio p50 {:.2} p99 {:.2}",
        ours_all.len(),
        ms(f50),
        ms(f99),
        ms(o50),
        ms(o99),
        ms(o50) / ms(f50).max(1e-9),
        ms(o99) / ms(f99).max(1e-9),
    );
    let st = svc.stats();
    println!(
        "component: presences_sent {} stanzas_dropped {} ignored {}",
        st.presences_sent, st.stanzas_dropped, st.ignored
    );
    rt.block_on(svc.shutdown());
    Ok(())
}

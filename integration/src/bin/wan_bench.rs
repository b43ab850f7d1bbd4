//! Benchmark: how fast an ACD node notices that a gateway behind a WAN link is unreachable, and
//! how fast it offers that gateway's agent again after the heal (issue 19), in the WAN lab
//! (two network namespaces joined by a delayed, lossy userspace wire; a partition drops every
//! packet on it).
//!
//! Site A: the ACD node (`callfabric acd`, local bus) and a waiting caller (SIPp, no auth).
//! Site B: a gateway (`callfabric gateway`). The queue's one member, `PJSIP/2001`, is reached
//! through gateway B, which refuses the offers (no such device): the caller is offered again at
//! once, so an offer goes out about every round trip while B is reachable. Per round: cut the
//! link, time until `REACH <B> down` (detection); after PARTITION_SECS heal it, time until
//! `REACH <B> up` and until the first `OFFER … PJSIP/2001` (the agent offered again).
//!
//! ```text
//! cargo build -p callfabric && \
//! cargo run -p integration --bin wan_bench -- [ROUNDS] [PARTITION_SECS] [LOSS] [DELAYS_MS…]
//! ```
//! (defaults: 5 rounds, 5 s, loss 0, delays 40 150). Needs root (namespaces, TUN). Keep-alive
//! settings are the ACD's defaults (pipelined OPTIONS every 100 ms, unreachable after 700 ms
//! of silence or interval + SRTT + 4·RTTVAR if longer; offers given up after 800 ms without a
//! provisional response). `CARGO_BIN_EXE_callfabric` names the callfabric binary to run
//! (default: the one next to this benchmark).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use integration::gateway::callfabric_binary;
use integration::require_binary;
use integration::wanlab::{unavailable, Site, SiteProcess, WanLab, WanSpec};

const CALLER_PORT: u16 = 5090;
const ACD_PORT: u16 = 5070;
const GW_PORT: u16 = 5060;
const WAIT: Duration = Duration::from_secs(30);

fn config(dir: &Path, name: &str, body: &str) -> Result<String> {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!("[node]\nname = \"{name}\"\nsite = \"{name}\"\n\n[statebus]\nbackend = \"local\"\n\n{body}"),
    )?;
    Ok(path.display().to_string())
}

struct Round {
    detection: Duration,
    up: Duration,
    offer: Duration,
}

fn one_delay(delay_ms: u64, loss: f64, rounds: usize, partition: Duration) -> Result<Vec<Round>> {
    let lab = WanLab::start(WanSpec::new(delay_ms, loss))?;
    let dir = tempfile::tempdir()?;
    let bin = callfabric_binary();
    let bin = bin.to_str().context("binary path")?;
    let a = lab.addr(Site::A);
    let b = lab.socket_addr(Site::B, GW_PORT);
    let gw_cfg = config(
        dir.path(),
        "gw-b",
        &format!(
            "[gateway]\nudp = [\"{b}\"]\ntcp = [\"{tcp}\"]\nrealm = \"b.example\"\n\
             database = \"sqlite://{db}\"\nt1_ms = 100\n\n[[gateway.trunk]]\nname = \"acd\"\n\
             address = \"{a}:{ACD_PORT}\"\nprefixes = []\n",
            tcp = lab.socket_addr(Site::B, GW_PORT + 1),
            db = dir.path().join("gw-b.db").display(),
        ),
    )?;
    let acd_cfg = config(
        dir.path(),
        "acd-1",
        &format!(
            "[acd]\nudp = \"{a}:{ACD_PORT}\"\nrtp_ports = \"40000-40999\"\nt1_ms = 100\n\n\
             [acd.numbers]\n\"800\" = \"support\"\n\n\
             [[acd.gateway]]\nname = \"gw-b\"\naddress = \"{b}\"\n\n\
             [[acd.gateway]]\nname = \"caller\"\naddress = \"{a}:{CALLER_PORT}\"\n\n\
             [[acd.queue]]\nname = \"support\"\nstrategy = \"linear\"\ntimeout = 10\nretry = 0\n\
             members = [\"PJSIP/2001\"]\n"
        ),
    )?;
    let env = [("RUST_LOG", "warn")];
    let mut gw = lab.spawn(
        Site::B,
        "gw-b",
        bin,
        &["gateway", "--config", &gw_cfg],
        &env,
    )?;
    gw.wait_since(0, WAIT, "gateway ready", |l| l.starts_with("gateway ready"))?;
    let mut acd = lab.spawn(Site::A, "acd-1", bin, &["acd", "--config", &acd_cfg], &env)?;
    acd.wait_since(0, WAIT, "acd ready", |l| l.starts_with("acd ready"))?;
    // The same waiting caller as tests/acd_wan.rs.
    let scenario = integration::phones::scenario("call_uac_queue_wait.xml");
    let sipp = require_binary("sipp")?;
    let target = format!("{a}:{ACD_PORT}");
    let scenario = scenario.display().to_string();
    let port = CALLER_PORT.to_string();
    let ip = a.to_string();
    let _caller: SiteProcess = lab.spawn(
        Site::A,
        "caller",
        &sipp,
        &[
            "-sf", &scenario, &target, "-i", &ip, "-p", &port, "-m", "1", "-aa", "-nostdin",
        ],
        &[],
    )?;
    let is_offer = |l: &str| l.starts_with("OFFER acd-") && l.contains(" PJSIP/2001 ");
    acd.wait_since(0, WAIT, "the first offer", is_offer)?;
    let (down, up) = (format!("REACH {b} down"), format!("REACH {b} up"));
    let mut out = Vec::new();
    for _ in 0..rounds {
        // Let offers flow for a while, then cut.
        std::thread::sleep(Duration::from_secs(2));
        let mark = acd.mark();
        lab.partition();
        let cut = Instant::now();
        let (at, _) = acd.wait_since(mark, WAIT, "B unreachable", |l| l == down)?;
        let detection = at.saturating_duration_since(cut);
        std::thread::sleep(partition.saturating_sub(cut.elapsed()));
        let mark = acd.mark();
        lab.heal();
        let heal = Instant::now();
        let (at_up, _) = acd.wait_since(mark, WAIT, "B reachable", |l| l == up)?;
        let (at_offer, _) = acd.wait_since(mark, WAIT, "an offer after the heal", is_offer)?;
        out.push(Round {
            detection,
            up: at_up.saturating_duration_since(heal),
            offer: at_offer.saturating_duration_since(heal),
        });
    }
    if !gw.is_running() {
        bail!("gateway B exited\n{}", gw.diag());
    }
    Ok(out)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn summary(v: &mut [f64]) -> String {
    v.sort_by(f64::total_cmp);
    let med = v[v.len() / 2];
    format!(
        "{:>7.0} {:>7.0} {:>7.0}",
        v[0],
        med,
        v[v.len().saturating_sub(1)]
    )
}

fn main() -> Result<()> {
    if let Some(why) = unavailable() {
        bail!("{why}");
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rounds: usize = args
        .first()
        .and_then(|a| a.parse().ok())
        .unwrap_or(5)
        .max(1);
    let partition =
        Duration::from_secs_f64(args.get(1).and_then(|a| a.parse().ok()).unwrap_or(5.0));
    let loss: f64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(0.0);
    let mut delays: Vec<u64> = args.iter().skip(3).filter_map(|a| a.parse().ok()).collect();
    if delays.is_empty() {
        delays = vec![40, 150];
    }
    println!(
        "{rounds} rounds per delay, partitions of {partition:?}, loss {:.1} %; min / median / max in ms",
        loss * 100.0
    );
    println!(
        "{:>9} | {:>23} | {:>23} | {:>23}",
        "one way", "cut -> REACH down", "heal -> REACH up", "heal -> first offer"
    );
    for d in delays {
        let mut r = one_delay(d, loss, rounds, partition)?;
        let mut det: Vec<f64> = r.iter().map(|x| ms(x.detection)).collect();
        let mut up: Vec<f64> = r.iter().map(|x| ms(x.up)).collect();
        let mut off: Vec<f64> = r.iter_mut().map(|x| ms(x.offer)).collect();
        println!(
            "{:>6} ms | {} | {} | {}",
            d,
            summary(&mut det),
            summary(&mut up),
            summary(&mut off)
        );
    }
    Ok(())
}

//! Benchmark: digest-authenticated REGISTERs per second at < 0.1 % failure, SIPp against
//! callfabric's gateway and against Kamailio (registrar + usrloc + auth, same accounts) in the
//! same run; prints the ratio.
//!
//! ```text
//! cargo run --release -p integration --bin register_bench -- [USERS] [SECONDS_PER_STEP] [RATES…]
//! ```
//!
//! `register_bench --profile CALLS RATE` drives only the gateway (one account, one SIPp run of
//! CALLS calls at RATE/s) and exits: run it under `valgrind --tool=callgrind` twice with
//! different CALLS; the difference of the instruction counts divided by the difference of
//! CALLS is the gateway's cost per REGISTER pair, without start-up costs.

use anyhow::{bail, Context, Result};
use gateway::devices::{DeviceRecord, DeviceStore};
use gateway::server::Gateway;
use statebus::{Eid, LocalBus};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PASSWORD: &str = "secret";

struct Step {
    rate: u32,
    ok: u64,
    failed: u64,
    achieved: f64,
}

/// One SIPp run of `calls` calls at `rate` calls/s; success/failure counts from its stats.
fn sipp(target: SocketAddr, rate: u32, calls: u32, dir: &Path) -> Result<Step> {
    let scenario = integration::repo_root().join("integration/sipp/register_load.xml");
    let port = integration::free_udp_port();
    let cport = integration::free_udp_port();
    let t0 = Instant::now();
    let out = Command::new("sipp")
        .current_dir(dir)
        .arg("-sf")
        .arg(&scenario)
        .arg(target.to_string())
        .args(["-i", "127.0.0.1", "-mi", "127.0.0.1"])
        .args(["-p", &port.to_string(), "-cp", &cport.to_string()])
        .args(["-s", "1000", "-au", "1000", "-ap", PASSWORD])
        .args([
            "-r",
            &rate.to_string(),
            "-m",
            &calls.to_string(),
            "-l",
            "5000",
        ])
        .args([
            "-buff_size",
            "4194304",
            "-recv_timeout",
            "5000",
            "-timeout",
            "120",
            "-nostdin",
        ])
        .args(["-trace_stat", "-fd", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running sipp")?;
    let elapsed = t0.elapsed().as_secs_f64();
    // The last line of the stats CSV has the cumulative counters.
    let stat = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".csv"))
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .context("no SIPp stats file")?;
    let text = std::fs::read_to_string(&stat)?;
    std::fs::remove_file(&stat)?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split(';').collect();
    let last: Vec<&str> = text.lines().last().unwrap_or("").split(';').collect();
    let col = |name: &str| -> u64 {
        header
            .iter()
            .position(|h| *h == name)
            .and_then(|i| last.get(i))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let ok = col("SuccessfulCall(C)");
    let failed = col("FailedCall(C)") + (calls as u64).saturating_sub(ok + col("FailedCall(C)"));
    let _ = out;
    Ok(Step {
        rate,
        ok,
        failed,
        achieved: ok as f64 / elapsed,
    })
}

fn ramp(
    name: &str,
    target: SocketAddr,
    rates: &[u32],
    secs: u32,
    dir: &Path,
) -> Result<Option<Step>> {
    let mut best = None;
    for &rate in rates {
        let s = sipp(target, rate, rate * secs, dir)?;
        let fail_pct = 100.0 * s.failed as f64 / (s.ok + s.failed).max(1) as f64;
        println!(
            "  {name:<12} {:>6} req/s offered: {:>7} ok {:>6} failed ({fail_pct:.3} %), {:>7.0} registrations/s achieved",
            s.rate, s.ok, s.failed, s.achieved
        );
        if fail_pct >= 0.1 {
            break;
        }
        best = Some(s);
    }
    Ok(best)
}

fn kamailio_cfg(port: u16) -> String {
    format!(
        r#"#!KAMAILIO
debug=0
log_stderror=yes
fork=yes
children=2
auto_aliases=no
max_while_loops=20000
listen=udp:127.0.0.1:{port}
mpath="/usr/lib/x86_64-linux-gnu/kamailio/modules/"
loadmodule "kex.so"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "htable.so"
loadmodule "auth.so"
loadmodule "textops.so"
modparam("usrloc", "db_mode", 0)
modparam("htable", "htable", "users=>size=12;")
modparam("auth", "secret", "benchsecret")
event_route[htable:mod-init] {{
    $var(i) = 0;
    while ($var(i) < 10000) {{
        $sht(users=>$(var(i){{s.int}})) = "{PASSWORD}";
        $var(i) = $var(i) + 1;
    }}
}}
request_route {{
    if (!mf_process_maxfwd_header("10")) {{ sl_send_reply("483", "Too Many Hops"); exit; }}
    if (!is_method("REGISTER")) {{ sl_send_reply("405", "Method Not Allowed"); exit; }}
    if ($sht(users=>$fU) == $null) {{ auth_challenge("$fd", "1"); exit; }}
    if (!pv_auth_check("$fd", "$sht(users=>$fU)", "0", "1")) {{ auth_challenge("$fd", "1"); exit; }}
    if (!save("location")) {{ sl_reply_error(); }}
    exit;
}}
"#
    )
}

/// The gateway in-process on SQLite with `users` accounts from 1000 up (MD5 offered: SIPp 3.6
/// only answers the first challenge and only computes MD5).
async fn start_gateway(users: u32, dir: &Path) -> Result<(Gateway, SocketAddr)> {
    let gw_port = integration::free_udp_port();
    let gw_target = SocketAddr::from(([127, 0, 0, 1], gw_port));
    let db = format!("sqlite://{}", dir.join("bench.db").display());
    let store = DeviceStore::open(&db).await?;
    for u in 0..users {
        store
            .upsert(&DeviceRecord::with_password(
                &(1000 + u).to_string(),
                "bench",
                PASSWORD,
            ))
            .await?;
    }
    let cfg = integration::bench::gateway_config(gw_target, db.clone());
    let gw = Gateway::start(cfg, Arc::new(LocalBus::new(Eid([2, 0, 0, 0, 0, 9])))).await?;
    Ok((gw, gw_target))
}

/// `--profile CALLS RATE`: one SIPp run against the gateway only (see the module docs).
fn profile(calls: u32, rate: u32) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let rt = tokio::runtime::Runtime::new()?;
    let (gw, target) = rt.block_on(start_gateway(1, dir.path()))?;
    let step = sipp(target, rate, calls, dir.path())?;
    println!("{} ok, {} failed", step.ok, step.failed);
    gw.stop();
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--profile") {
        let calls: u32 = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(2000);
        let rate: u32 = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(100);
        return profile(calls, rate);
    }
    let users: u32 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(1000);
    let secs: u32 = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(5);
    let rates: Vec<u32> = if args.len() > 3 {
        args[3..]
            .iter()
            .map(|s| s.parse())
            .collect::<Result<_, _>>()?
    } else {
        vec![250, 500, 1000, 1500, 2000, 3000, 4000, 6000]
    };
    let dir = tempfile::tempdir()?;
    println!("{users} accounts provisioned; SIPp registers account 1000 with a new Call-ID per call; {secs} s per step, UDP, REGISTER → 401 → REGISTER (MD5, qop=auth) → 200");

    // callfabric: the gateway in-process on SQLite with the same accounts (MD5 offered:
    // SIPp 3.6 only answers the first challenge and only computes MD5).
    let rt = tokio::runtime::Runtime::new()?;
    let (gw, gw_target) = rt.block_on(start_gateway(users, dir.path()))?;
    println!("callfabric gateway on {gw_target}");
    let ours = ramp("callfabric", gw_target, &rates, secs, dir.path())?;
    gw.stop();
    drop(gw);
    drop(rt);

    // Kamailio 5.6, the same accounts, in the same run.
    let k_port = integration::free_udp_port();
    let k_target = SocketAddr::from(([127, 0, 0, 1], k_port));
    let cfg = dir.path().join("kamailio.cfg");
    std::fs::write(&cfg, kamailio_cfg(k_port))?;
    let mut kam = Command::new("kamailio")
        .args(["-DD", "-E", "-f"])
        .arg(&cfg)
        .args(["-P", &dir.path().join("kamailio.pid").display().to_string()])
        .args(["-Y", &dir.path().display().to_string(), "-m", "256"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("kamailio.log"))?)
        .spawn()
        .context("starting kamailio (apt-get install kamailio)")?;
    let t0 = Instant::now();
    while std::net::UdpSocket::bind(k_target).is_ok() {
        if t0.elapsed() > Duration::from_secs(10) {
            let _ = kam.kill();
            bail!(
                "kamailio did not start: {}",
                std::fs::read_to_string(dir.path().join("kamailio.log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("kamailio on {k_target}");
    let theirs = ramp("kamailio", k_target, &rates, secs, dir.path());
    let _ = Command::new("kill").arg(kam.id().to_string()).status();
    let _ = kam.wait();
    let theirs = theirs?;
    match (ours, theirs) {
        (Some(o), Some(k)) => println!(
            "highest step under 0.1 % failure: callfabric {} offered ({:.0}/s achieved), kamailio {} offered ({:.0}/s achieved); ratio {:.2}x (target >= 1.0x)",
            o.rate,
            o.achieved,
            k.rate,
            k.achieved,
            o.achieved / k.achieved
        ),
        (o, k) => println!("no clean step: callfabric {:?}, kamailio {:?}", o.map(|s| s.rate), k.map(|s| s.rate)),
    }
    Ok(())
}

//! Benchmark: call setups per second at < 0.1 % failure, SIPp UAC → system under test → SIPp
//! UAS, for callfabric's gateway (a B2BUA anchoring the media: two dialogs, two RTP port pairs
//! per call) and for Kamailio as a stateful, record-routing proxy, in the same run; prints both
//! ramps side by side and the ratio (target ≥ 0.5×: a B2BUA does about twice a proxy's work).
//!
//! ```text
//! cargo run --release -p integration --bin call_bench -- [SECONDS_PER_STEP] [HOLD_MS] [RATES…]
//! ```
//!
//! Each call: INVITE (SDP) → 100/180 → 200 (SDP) → ACK → HOLD_MS → BYE → 200, a new Call-ID per
//! call. `CALL_BENCH_TRACE=1` adds SIPp's `-trace_err` and keeps the working directory.

use anyhow::Result;
use gateway::server::{Gateway, GatewayConfig, TrunkConfig};
use integration::bench::{self, Kamailio, SippServer, SippStep, Step};
use statebus::{Eid, LocalBus};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The number the UAC dials (`-s`); routed by the trunk prefix / the proxy's `$du`.
const NUMBER: &str = "5551000";

/// Maximum simultaneous calls per SIPp UAC (`-l`), the same for both systems: keeps the
/// gateway under its RTP capacity (20 000 ports = 5 000 calls at 2 pairs a call).
const MAX_CALLS: u32 = 4000;

/// Ramps `rates` against `target` (whose callee is a SIPp UAS already running); `pid` is the
/// process of the system under test, whose CPU time (with its children's when `children`) is
/// measured per step.
#[allow(clippy::too_many_arguments)]
fn ramp(
    name: &str,
    target: SocketAddr,
    pid: u32,
    children: bool,
    rates: &[u32],
    secs: u32,
    hold: Duration,
    trace: bool,
    dir: &Path,
) -> Result<Vec<Step>> {
    let scenario = integration::repo_root().join("integration/sipp/call_load_uac.xml");
    let mut extra: Vec<String> = vec![
        "-s".into(),
        NUMBER.into(),
        "-d".into(),
        hold.as_millis().to_string(),
        "-l".into(),
        MAX_CALLS.to_string(),
    ];
    if trace {
        extra.extend([
            "-trace_err".into(),
            "-error_file".into(),
            format!("{name}-uac-errors.log"),
        ]);
    }
    bench::ramp(name, "calls", rates, |rate| {
        let cpu0 = bench::cpu_secs(pid, children);
        let mut step = bench::run_sipp_step(
            &SippStep {
                scenario: &scenario,
                target,
                rate,
                secs,
                hold,
                extra: extra.clone(),
            },
            name,
            dir,
        )?;
        step.sut_cpu = Some(bench::cpu_secs(pid, children) - cpu0);
        Ok(step)
    })
}

/// Starts the callee (a SIPp UAS) for one system.
fn uas(name: &str, trace: bool, dir: &Path) -> Result<SippServer> {
    let scenario = integration::repo_root().join("integration/sipp/call_load_uas.xml");
    let extra: Vec<String> = if trace {
        vec![
            "-trace_err".into(),
            "-error_file".into(),
            format!("{name}-uas-errors.log"),
        ]
    } else {
        Vec::new()
    };
    SippServer::start(&scenario, &format!("{name}-uas"), dir, &extra)
}

/// Kamailio 5.6 as a stateful proxy: record-routes the initial INVITE and relays it (tm) to the
/// UAS; in-dialog requests (ACK, BYE) follow the route set (`loose_route`).
fn kamailio_cfg(port: u16, uas: SocketAddr) -> String {
    format!(
        r#"#!KAMAILIO
debug=0
log_stderror=yes
fork=yes
children=2
auto_aliases=no
dns=no
rev_dns=no
listen=udp:127.0.0.1:{port}
mpath="/usr/lib/x86_64-linux-gnu/kamailio/modules/"
loadmodule "kex.so"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
request_route {{
    if (!mf_process_maxfwd_header("10")) {{ sl_send_reply("483", "Too Many Hops"); exit; }}
    if (has_totag()) {{
        if (loose_route()) {{
            if (!t_relay()) {{ sl_reply_error(); }}
            exit;
        }}
        if (is_method("ACK")) {{
            if (t_check_trans()) {{ t_relay(); }}
            exit;
        }}
        sl_send_reply("404", "Not here");
        exit;
    }}
    if (is_method("CANCEL")) {{
        if (t_check_trans()) {{ t_relay(); }}
        exit;
    }}
    if (!is_method("INVITE")) {{ sl_send_reply("405", "Method Not Allowed"); exit; }}
    t_check_trans();
    record_route();
    $du = "sip:{uas}";
    if (!t_relay()) {{ sl_reply_error(); }}
    exit;
}}
"#
    )
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let secs: u32 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(5);
    let hold_ms: u64 = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(1000);
    let hold = Duration::from_millis(hold_ms);
    let rates: Vec<u32> = if args.len() > 3 {
        args[3..]
            .iter()
            .map(|s| s.parse())
            .collect::<Result<_, _>>()?
    } else {
        vec![50, 100, 200, 300, 400, 600, 800, 1000, 1500, 2000]
    };
    let trace = std::env::var_os("CALL_BENCH_TRACE").is_some_and(|v| v == "1");
    let dir = tempfile::Builder::new().prefix("call_bench-").tempdir()?;
    println!(
        "{secs} s per step, UDP, SIPp uac -> system -> SIPp uas: INVITE (SDP) -> 100/180 -> 200 (SDP) -> ACK -> {hold_ms} ms -> BYE -> 200, a new Call-ID per call, at most {MAX_CALLS} calls in progress"
    );
    if trace {
        println!("working directory {}", dir.path().display());
    }

    // callfabric: the gateway in-process; the UAC's loopback source is a trusted trunk (no
    // digest, like the proxy) and the dialled number routes by prefix to the UAS.
    let ours = {
        let callee = uas("callfabric", trace, dir.path())?;
        let rt = tokio::runtime::Runtime::new()?;
        let gw_target = SocketAddr::from(([127, 0, 0, 1], integration::free_udp_port()));
        let db = format!("sqlite://{}", dir.path().join("bench.db").display());
        let gw = rt.block_on(async {
            let cfg = GatewayConfig {
                rtp_ports: (20000, 39999),
                trunks: vec![TrunkConfig {
                    name: "sipp-uas".into(),
                    address: callee.addr(),
                    prefixes: vec!["555".into()],
                    strip: 0,
                    inbound_from: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
                    credentials: None,
                    register: None,
                }],
                ..integration::bench::gateway_config(gw_target, db.clone())
            };
            anyhow::Ok(
                Gateway::start(cfg, Arc::new(LocalBus::new(Eid([2, 0, 0, 0, 0, 10])))).await?,
            )
        })?;
        println!(
            "callfabric gateway on {gw_target} (RTP 127.0.0.1:20000-39999), callee SIPp on {}",
            callee.addr()
        );
        let steps = ramp(
            "callfabric",
            gw_target,
            // In-process: this process (its children are the SIPps).
            std::process::id(),
            false,
            &rates,
            secs,
            hold,
            trace,
            dir.path(),
        );
        gw.stop();
        drop(gw);
        drop(rt);
        drop(callee);
        steps?
    };

    // Kamailio 5.6 on the same path, in the same run.
    let theirs = {
        let callee = uas("kamailio", trace, dir.path())?;
        let k_target = SocketAddr::from(([127, 0, 0, 1], integration::free_udp_port()));
        let kam = Kamailio::start(
            &kamailio_cfg(k_target.port(), callee.addr()),
            k_target,
            dir.path(),
        )?;
        println!(
            "kamailio (tm, record-routing) on {}, callee SIPp on {}",
            kam.addr(),
            callee.addr()
        );
        ramp(
            "kamailio",
            kam.addr(),
            kam.pid().unwrap_or(0),
            true,
            &rates,
            secs,
            hold,
            trace,
            dir.path(),
        )?
    };

    println!();
    println!(
        "{:>8} | {:>28} | {:>28}",
        "offered", "callfabric (B2BUA + media)", "kamailio (stateful proxy)"
    );
    println!(
        "{:>8} | {:>8} {:>7} {:>11} | {:>8} {:>7} {:>11}",
        "calls/s", "ok", "failed", "achieved/s", "ok", "failed", "achieved/s"
    );
    let cell = |s: Option<&Step>| match s {
        Some(s) => format!(
            "{:>8} {:>7} {:>11.0}{}",
            s.ok,
            s.failed,
            s.achieved(),
            if s.clean() { " " } else { "x" }
        ),
        None => format!("{:>8} {:>7} {:>11} ", "-", "-", "-"),
    };
    for &rate in &rates {
        let o = ours.iter().find(|s| s.rate == rate);
        let k = theirs.iter().find(|s| s.rate == rate);
        if o.is_none() && k.is_none() {
            continue;
        }
        println!("{rate:>8} | {}| {}", cell(o), cell(k));
    }
    println!(
        "(x: >= {} % failed, the ramp stopped there)",
        bench::MAX_FAIL_PCT
    );
    match (bench::best(&ours), bench::best(&theirs)) {
        (Some(o), Some(k)) => {
            let ratio = o.achieved() / k.achieved();
            let top = |steps: &[Step], b: &Step| {
                if steps.iter().all(Step::clean) && b.rate == *rates.iter().max().unwrap_or(&0) {
                    " (the top step: the limit is higher)"
                } else {
                    ""
                }
            };
            println!(
                "highest step under {} % failure: callfabric {} calls/s offered ({:.0}/s achieved){}, kamailio {} calls/s offered ({:.0}/s achieved){}; ratio {ratio:.2}x (target >= 0.5x: {})",
                bench::MAX_FAIL_PCT,
                o.rate,
                o.achieved(),
                top(&ours, o),
                k.rate,
                k.achieved(),
                top(&theirs, k),
                if ratio >= 0.5 { "met" } else { "NOT met" }
            );
        }
        (o, k) => println!(
            "no clean step: callfabric {:?}, kamailio {:?}",
            o.map(|s| s.rate),
            k.map(|s| s.rate)
        ),
    }
    if trace {
        let kept = dir.keep();
        println!("kept {}", kept.display());
    }
    Ok(())
}

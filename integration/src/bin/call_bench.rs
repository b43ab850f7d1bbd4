//! Benchmark: call setups per second and CPU per call, SIPp UAC → system under test → SIPp
//! UAS, for callfabric's gateway (a B2BUA anchoring the media: two dialogs, two RTP port pairs
//! per call) and for Kamailio as a stateful, record-routing proxy (one worker per core), in the
//! same run: the two systems' steps interleaved, the order rotated at every step, repeated in
//! rounds. Prints CPU per call (the headline, median over the rounds) beside the highest clean
//! rates, whether each is the server's limit or the load generator's, the ratios and both
//! systems' memory.
//!
//! ```text
//! cargo run --release -p integration --bin call_bench -- [SECONDS_PER_STEP] [HOLD_MS] [ROUNDS] [RATES…]
//! ```
//!
//! Each call: INVITE (SDP) → 100/180 → 200 (SDP) → ACK → HOLD_MS → BYE → 200, a new Call-ID per
//! call. A step is unclean at ≥ 0.1 % failed calls, retransmissions or unexpected messages at
//! either end (the UAS is started per step with `-m` and reports its own failures), or when a
//! SIPp exits other than 0/1. `CALL_BENCH_TRACE=1` adds SIPp's `-trace_err` and keeps the
//! working directory.

use anyhow::Result;
use gateway::server::{Gateway, GatewayConfig, TrunkConfig};
use integration::bench::{self, Callee, Kamailio, SippStep, Step};
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

/// One step against `target`, whose callee is a SIPp UAS started for the step on `uas_port`;
/// `pid` is the system under test (with its children when `children`), whose CPU is measured
/// over the step.
#[allow(clippy::too_many_arguments)]
fn step(
    name: &str,
    target: SocketAddr,
    uas_port: u16,
    (pid, children): (u32, bool),
    rate: u32,
    secs: u32,
    hold: Duration,
    trace: bool,
    dir: &Path,
) -> Result<Step> {
    let uac = integration::repo_root().join("integration/sipp/call_load_uac.xml");
    let uas = integration::repo_root().join("integration/sipp/call_load_uas.xml");
    let mut extra: Vec<String> = vec![
        "-s".into(),
        NUMBER.into(),
        "-d".into(),
        hold.as_millis().to_string(),
        "-l".into(),
        MAX_CALLS.to_string(),
    ];
    let mut uas_extra = Vec::new();
    if trace {
        extra.extend([
            "-trace_err".into(),
            "-error_file".into(),
            format!("{name}-{rate}-uac-errors.log"),
        ]);
        uas_extra.extend([
            "-trace_err".into(),
            "-error_file".into(),
            format!("{name}-{rate}-uas-errors.log"),
        ]);
    }
    if !bench::settle(pid, children) {
        println!("  ({name} still busy 15 s after its previous step)");
    }
    let cpu0 = bench::cpu_secs(pid, children);
    let mut s = bench::run_sipp_step(
        &SippStep {
            scenario: &uac,
            target,
            rate,
            secs,
            hold,
            extra,
            callers: Vec::new(),
            callee: Some(Callee {
                scenario: &uas,
                port: uas_port,
                extra: uas_extra,
            }),
        },
        name,
        dir,
    )?;
    s.sut_cpu = Some(bench::cpu_secs(pid, children) - cpu0);
    Ok(s)
}

/// Kamailio 5.6 as a stateful proxy: record-routes the initial INVITE and relays it (tm) to the
/// UAS; in-dialog requests (ACK, BYE) follow the route set (`loose_route`).
fn kamailio_cfg(port: u16, uas: SocketAddr) -> String {
    let children = bench::cores();
    format!(
        r#"#!KAMAILIO
debug=0
log_stderror=yes
fork=yes
children={children}
disable_tcp=yes
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
    let rounds: u32 = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(3);
    let hold = Duration::from_millis(hold_ms);
    let rates: Vec<u32> = if args.len() > 4 {
        args[4..]
            .iter()
            .map(|s| s.parse())
            .collect::<Result<_, _>>()?
    } else {
        vec![500, 1000, 1500, 2000, 2500, 3000]
    };
    if secs == 0 || rounds == 0 {
        anyhow::bail!("SECONDS_PER_STEP and ROUNDS must be > 0");
    }
    let trace = std::env::var_os("CALL_BENCH_TRACE").is_some_and(|v| v == "1");
    let dir = tempfile::Builder::new().prefix("call_bench-").tempdir()?;
    println!(
        "call_bench: {secs} s per step, {rounds} rounds, systems interleaved step by step, the order rotated; UDP, SIPp uac -> system -> SIPp uas (one per step): INVITE (SDP) -> 100/180 -> 200 (SDP) -> ACK -> {hold_ms} ms -> BYE -> 200, a new Call-ID per call, at most {MAX_CALLS} calls in progress; {} cores, load {}",
        bench::cores(),
        bench::loadavg()
    );
    if trace {
        println!("working directory {}", dir.path().display());
    }

    // callfabric: the gateway in-process; the UAC's loopback source is a trusted trunk (no
    // digest, like the proxy) and the dialled number routes by prefix to the UAS.
    let ours_uas = integration::free_udp_port();
    let rt = tokio::runtime::Runtime::new()?;
    let gw_target = SocketAddr::from(([127, 0, 0, 1], integration::free_udp_port()));
    let db = format!("sqlite://{}", dir.path().join("bench.db").display());
    let gw = rt.block_on(async {
        let cfg = GatewayConfig {
            rtp_ports: (20000, 39999),
            trunks: vec![TrunkConfig {
                name: "sipp-uas".into(),
                address: SocketAddr::from(([127, 0, 0, 1], ours_uas)),
                prefixes: vec!["555".into()],
                strip: 0,
                inbound_from: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
                credentials: None,
                register: None,
                domain: None,
                tls: None,
            }],
            ..integration::bench::gateway_config(gw_target, db.clone())
        };
        anyhow::Ok(Gateway::start(cfg, Arc::new(LocalBus::new(Eid([2, 0, 0, 0, 0, 10])))).await?)
    })?;
    // Kamailio 5.6 on the same path, one worker per core.
    let theirs_uas = loop {
        let p = integration::free_udp_port();
        if p != ours_uas {
            break p;
        }
    };
    let k_target = SocketAddr::from(([127, 0, 0, 1], integration::free_udp_port()));
    let kam = Kamailio::start(
        &kamailio_cfg(
            k_target.port(),
            SocketAddr::from(([127, 0, 0, 1], theirs_uas)),
        ),
        k_target,
        dir.path(),
    )?;
    let k_pid = kam.pid().unwrap_or(0);
    println!(
        "callfabric gateway on {gw_target} (in this process, RTP 127.0.0.1:20000-39999), callee on :{ours_uas}; kamailio (tm, record-routing, children={}) on {}, callee on :{theirs_uas}",
        bench::cores(),
        kam.addr()
    );
    let names = ["callfabric", "kamailio"];
    let runs = bench::interleaved_ramps(
        &names,
        "calls",
        rounds,
        &rates,
        // Timer B/F (64 × T1 = 32 s) and a margin.
        Duration::from_secs(40),
        |sys, rate| {
            if sys == 0 {
                // In-process: this process (its children are the SIPps).
                step(
                    "callfabric",
                    gw_target,
                    ours_uas,
                    (std::process::id(), false),
                    rate,
                    secs,
                    hold,
                    trace,
                    dir.path(),
                )
            } else {
                step(
                    "kamailio",
                    kam.addr(),
                    theirs_uas,
                    (k_pid, true),
                    rate,
                    secs,
                    hold,
                    trace,
                    dir.path(),
                )
            }
        },
    );
    let mem_ours = bench::pss_kb(std::process::id(), false);
    let mem_theirs = bench::pss_kb(k_pid, true);
    gw.stop();
    drop(gw);
    drop(rt);
    drop(kam);
    let runs = runs?;
    bench::summarize(&names, "call", &rates, &runs);
    println!(
        "memory after the run (PSS): callfabric {:.1} MB (the whole bench process: gateway, relay, SQLite, tokio), kamailio {:.1} MB (main + workers, shared memory counted once); ratio {:.2}x",
        mem_ours as f64 / 1024.0,
        mem_theirs as f64 / 1024.0,
        mem_ours as f64 / mem_theirs.max(1) as f64
    );
    println!("load at the end: {}", bench::loadavg());
    if trace {
        let kept = dir.keep();
        println!("kept {}", kept.display());
    }
    Ok(())
}

//! Benchmark: digest-authenticated REGISTERs per second, SIPp against callfabric's gateway and
//! against Kamailio (registrar + usrloc + auth, the same accounts) in the same run, the two
//! systems' steps interleaved and repeated in rounds; prints CPU per REGISTER (the headline:
//! it does not depend on the load generator's ceiling), the highest clean rates, whether each
//! is the server's limit or the load generator's, the ratios, and both systems' memory.
//!
//! ```text
//! cargo run --release -p integration --bin register_bench -- \
//!     [--users 1000] [--secs 5] [--sipp 2] [--rounds 3] [--kamailio-maxbuffer BYTES] [RATES…]
//! ```
//!
//! Each call registers the next account of an injection file (`-inf`, "user;password", each
//! account its own password): the `--users` accounts are dealt round-robin over the `--sipp`
//! SIPp processes, which share the offered rate (on two cores two SIPps offer up to ~22,000/s,
//! four up to ~34,000/s, by then taking about a core themselves). A step is unclean at ≥ 0.1 % failed calls,
//! retransmissions or unexpected messages, or when a SIPp exits other than 0/1.
//!
//! `--shards N` (issue 16): the gateway's register shards (`sip_shards`; `--profile` and
//! `--sustain` run the gateway with N shards). Without it the
//! gateway runs unsharded (1); with N > 1 the run has three systems, interleaved as above: the
//! gateway with N shards, the gateway unsharded (both in this process, the idle one
//! asleep), and Kamailio; each of the gateway's steps also prints its threads' CPU (from
//! `/proc/self/task`), which shows the load spread over cores.
//!
//! `register_bench --sustain RATE SECS [--double]` (issue 16): one SIPp step of SECS seconds
//! at RATE REGISTER/s against the gateway and one against Kamailio (the anchor, same run),
//! each system's memory sampled every second (PSS; for the in-process gateway also VmRSS and
//! VmHWM): before, highest during, right after, and 40 s later once Timer J has ended every
//! transaction; the goodput (successful registrations per second), the failed ones (503s
//! under overload), the retransmissions and the CPU per REGISTER. `--double` adds a step at
//! twice RATE (order of the systems reversed) during which a phone (an account the load does
//! not use) registers from its own port, retrying 2 s after each failure; it prints the
//! goodput at 2x as a share of the goodput at RATE.
//!
//! `register_bench --profile CALLS RATE` drives only the gateway (the same accounts, one SIPp
//! run of CALLS calls at RATE/s) and exits: run it under `valgrind --tool=callgrind` twice with
//! different CALLS; the difference of the instruction counts divided by the difference of
//! CALLS is the gateway's cost per REGISTER pair, without start-up costs.

use anyhow::{bail, Context, Result};
use gateway::devices::{DeviceRecord, DeviceStore};
use gateway::server::{Gateway, Transactions};
use integration::bench::{self, Kamailio, SippStep, Step};
use statebus::{Eid, LocalBus};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Accounts are 1000, 1001, …
const FIRST_USER: u32 = 1000;

/// Each account's own password.
fn password(user: u32) -> String {
    format!("pw{user}")
}

/// Writes `procs` injection files dealing accounts `FIRST_USER..FIRST_USER+users` round-robin;
/// returns their paths.
fn injection_files(users: u32, procs: u32, dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = vec![String::from("SEQUENTIAL\n"); procs as usize];
    for u in 0..users {
        let user = FIRST_USER + u;
        files[(u % procs) as usize].push_str(&format!("{user};{}\n", password(user)));
    }
    files
        .into_iter()
        .enumerate()
        .map(|(i, text)| {
            let p = dir.join(format!("users{i}.csv"));
            std::fs::write(&p, text)?;
            Ok(p)
        })
        .collect()
}

/// One step against `target` with one SIPp per injection file; `pid` is the system under
/// test (with its children when `children`), whose CPU is measured over the step.
fn step(
    name: &str,
    target: SocketAddr,
    (pid, children): (u32, bool),
    rate: u32,
    secs: u32,
    inf: &[PathBuf],
    dir: &Path,
) -> Result<Step> {
    let scenario = integration::repo_root().join("integration/sipp/register_load.xml");
    if !bench::settle(pid, children) {
        println!("  ({name} still busy 15 s after its previous step)");
    }
    let cpu0 = bench::cpu_secs(pid, children);
    let threads0 = (pid == std::process::id()).then(thread_ticks);
    let mut s = bench::run_sipp_step(
        &SippStep {
            scenario: &scenario,
            target,
            rate,
            secs,
            hold: Duration::ZERO,
            extra: vec!["-l".into(), "5000".into()],
            callers: inf
                .iter()
                .map(|f| vec!["-inf".into(), f.display().to_string()])
                .collect(),
            callee: None,
        },
        name,
        dir,
    )?;
    s.sut_cpu = Some(bench::cpu_secs(pid, children) - cpu0);
    if let Some(t0) = threads0 {
        print_thread_cpu(name, &t0, &thread_ticks(), secs);
    }
    Ok(s)
}

/// CPU clock ticks (utime + stime) of each thread of this process, by thread id, with its
/// name (`/proc/self/task/*/stat`).
fn thread_ticks() -> std::collections::HashMap<u32, (String, u64)> {
    let mut out = std::collections::HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[open + 1..close].to_owned();
        // After the name: state is field 3; utime and stime are fields 14 and 15.
        let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let tid = e.file_name().to_string_lossy().parse().unwrap_or(0);
        out.insert(tid, (name, ticks(11) + ticks(12)));
    }
    out
}

/// The threads that used at least 2 % of a core during a step of `secs` seconds, busiest
/// first, in cores (clock ticks of 10 ms).
fn print_thread_cpu(
    name: &str,
    before: &std::collections::HashMap<u32, (String, u64)>,
    after: &std::collections::HashMap<u32, (String, u64)>,
    secs: u32,
) {
    let mut busy: Vec<(String, f64)> = after
        .iter()
        .map(|(tid, (n, t))| {
            let t0 = before.get(tid).map_or(0, |b| b.1);
            (
                n.clone(),
                t.saturating_sub(t0) as f64 / 100.0 / f64::from(secs),
            )
        })
        .filter(|(_, cores)| *cores >= 0.02)
        .collect();
    busy.sort_by(|a, b| b.1.total_cmp(&a.1));
    let cells: Vec<String> = busy.iter().map(|(n, c)| format!("{n} {c:.2}")).collect();
    println!("    {name}: threads (cores): {}", cells.join(", "));
}

/// Kamailio's configuration. `maxbuffer`: its core parameter of that name (the largest UDP
/// receive buffer its start-up probe asks for; Kamailio's default is 256 KiB, the gateway asks
/// 1 MiB): `--kamailio-maxbuffer BYTES` gives it the gateway's buffer, so that neither wins
/// by a socket the other lacks.
fn kamailio_cfg(port: u16, users: u32, maxbuffer: Option<u32>) -> String {
    let children = bench::cores();
    let maxbuffer = maxbuffer.map_or(String::new(), |b| format!("maxbuffer={b}\n"));
    let last = FIRST_USER + users;
    format!(
        r#"#!KAMAILIO
debug=0
log_stderror=yes
fork=yes
children={children}
{maxbuffer}disable_tcp=yes
auto_aliases=no
dns=no
rev_dns=no
max_while_loops=100000
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
    $var(i) = {FIRST_USER};
    while ($var(i) < {last}) {{
        $sht(users=>$(var(i){{s.int}})) = "pw" + $(var(i){{s.int}});
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

/// The gateway in-process on SQLite with `users` accounts from 1000 up, each with its own
/// password (MD5 offered: SIPp 3.6 only answers the first challenge and only computes MD5).
async fn start_gateway(users: u32, dir: &Path) -> Result<(Gateway, SocketAddr)> {
    start_gateway_sharded(users, dir, 1).await
}

/// [`start_gateway`] with `shards` register shards (its own database file).
async fn start_gateway_sharded(
    users: u32,
    dir: &Path,
    shards: usize,
) -> Result<(Gateway, SocketAddr)> {
    let gw_port = integration::free_udp_port();
    let gw_target = SocketAddr::from(([127, 0, 0, 1], gw_port));
    let db = format!(
        "sqlite://{}",
        dir.join(format!("bench-{shards}.db")).display()
    );
    let store = DeviceStore::open(&db).await?;
    for u in 0..users {
        let user = FIRST_USER + u;
        store
            .upsert(&DeviceRecord::with_password(
                &user.to_string(),
                "bench",
                &password(user),
            ))
            .await?;
    }
    let mut cfg = integration::bench::gateway_config(gw_target, db.clone());
    cfg.sip_shards = shards;
    let gw = Gateway::start(cfg, Arc::new(LocalBus::new(Eid([2, 0, 0, 0, 0, 9])))).await?;
    Ok((gw, gw_target))
}

struct Args {
    users: u32,
    secs: u32,
    sipp: u32,
    rounds: u32,
    rates: Vec<u32>,
    profile: Option<(u32, u32)>,
    sustain: Option<(u32, u32)>,
    /// `--double`: with `--sustain`, a second step at twice the rate, with a phone.
    double: bool,
    /// `--shards N`: the gateway's register shards (1: unsharded only).
    shards: usize,
    /// `--kamailio-maxbuffer BYTES`: Kamailio's `maxbuffer` (see [`kamailio_cfg`]).
    kamailio_maxbuffer: Option<u32>,
}

fn parse_args(argv: &[String]) -> Result<Args> {
    let mut a = Args {
        users: 1000,
        secs: 5,
        sipp: 2,
        rounds: 3,
        rates: Vec::new(),
        profile: None,
        sustain: None,
        double: false,
        shards: 1,
        kamailio_maxbuffer: None,
    };
    let mut it = argv.iter();
    let num = |it: &mut std::slice::Iter<'_, String>, what: &str| -> Result<u32> {
        it.next()
            .with_context(|| format!("{what} needs a number"))?
            .parse()
            .with_context(|| format!("{what} needs a number"))
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--users" => a.users = num(&mut it, "--users")?,
            "--secs" => a.secs = num(&mut it, "--secs")?,
            "--sipp" => a.sipp = num(&mut it, "--sipp")?,
            "--rounds" => a.rounds = num(&mut it, "--rounds")?,
            "--profile" => {
                let calls = num(&mut it, "--profile CALLS RATE")?;
                let rate = num(&mut it, "--profile CALLS RATE")?;
                a.profile = Some((calls, rate));
            }
            "--double" => a.double = true,
            "--shards" => a.shards = num(&mut it, "--shards")? as usize,
            "--kamailio-maxbuffer" => {
                a.kamailio_maxbuffer = Some(num(&mut it, "--kamailio-maxbuffer BYTES")?)
            }
            "--sustain" => {
                let rate = num(&mut it, "--sustain RATE SECS")?;
                let secs = num(&mut it, "--sustain RATE SECS")?;
                a.sustain = Some((rate, secs));
            }
            r => a.rates.push(
                r.parse()
                    .with_context(|| format!("rate {r} is not a number"))?,
            ),
        }
    }
    if a.users == 0 || a.secs == 0 || a.sipp == 0 || a.rounds == 0 || a.shards == 0 {
        bail!("--users, --secs, --sipp, --rounds and --shards must be > 0");
    }
    if a.rates.is_empty() {
        a.rates = vec![2000, 4000, 6000, 8000, 10000, 12000, 14000];
    }
    Ok(a)
}

/// `--profile CALLS RATE`: one SIPp run against the gateway only (see the module docs).
fn profile(a: &Args, calls: u32, rate: u32) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let rt = tokio::runtime::Runtime::new()?;
    let (gw, target) = rt.block_on(start_gateway_sharded(a.users, dir.path(), a.shards))?;
    let inf = injection_files(a.users, 1, dir.path())?;
    // `secs` such that rate × secs = CALLS (CALLS a multiple of RATE).
    let secs = (calls / rate.max(1)).max(1);
    let s = step(
        "profile",
        target,
        (std::process::id(), false),
        rate,
        secs,
        &inf,
        dir.path(),
    )?;
    bench::print_step(1, "callfabric", "REGISTERs", &s);
    gw.stop();
    if !s.clean() {
        bail!("the profiled run was not clean: {}", s.flags());
    }
    Ok(())
}

/// A `VmRSS:`/`VmHWM:` figure of this process's status, kB.
fn status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Memory of a system under test, kB: PSS (shared pages counted once: Kamailio's workers and
/// shared memory), and for the in-process gateway this process's VmRSS.
fn memory(pid: u32, children: bool) -> (u64, u64) {
    let rss = if pid == std::process::id() {
        status_kb("VmRSS:")
    } else {
        0
    };
    (bench::pss_kb(pid, children), rss)
}

/// One sustained step of a system and what its memory did.
struct Sustained {
    name: &'static str,
    step: Step,
    /// (PSS, VmRSS) kB before, highest during (sampled each second), right after, 40 s later.
    mem: [(u64, u64); 4],
    /// The gateway's transactions at the same moments (the peak: when most were completed).
    txs: Option<[Transactions; 4]>,
    phone: Option<bench::Phone>,
}

#[allow(clippy::too_many_arguments)]
fn sustain_step(
    name: &'static str,
    target: SocketAddr,
    (pid, children): (u32, bool),
    gw: Option<&Gateway>,
    rate: u32,
    secs: u32,
    inf: &[PathBuf],
    phone_inf: Option<&Path>,
    dir: &Path,
) -> Result<Sustained> {
    let txs = || gw.map(Gateway::transactions).unwrap_or_default();
    let before = memory(pid, children);
    let tx_before = txs();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (s, peak, tx_peak, phone) = std::thread::scope(|scope| -> Result<_> {
        let sampler = scope.spawn(|| {
            let (mut peak, mut tx_peak) = ((0, 0), Transactions::default());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (pss, rss) = memory(pid, children);
                peak = (peak.0.max(pss), peak.1.max(rss));
                let t = txs();
                if t.completed >= tx_peak.completed {
                    tx_peak = t;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
            (peak, tx_peak)
        });
        let phone = phone_inf.map(|inf| bench::phone_during_step(scope, target, inf, dir, secs));
        let s = step(name, target, (pid, children), rate, secs, inf, dir);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (peak, tx_peak) = sampler.join().unwrap_or_default();
        let phone = phone.map(bench::join_phone);
        Ok((s?, peak, tx_peak, phone))
    })?;
    let after = memory(pid, children);
    let tx_after = txs();
    std::thread::sleep(Duration::from_secs(40));
    let later = memory(pid, children);
    let tx_later = txs();
    Ok(Sustained {
        name,
        step: s,
        mem: [before, peak, after, later],
        txs: gw.map(|_| [tx_before, tx_peak, tx_after, tx_later]),
        phone,
    })
}

fn print_sustained(users: u32, r: &Sustained) {
    let s = &r.step;
    bench::print_step(1, r.name, "REGISTERs", s);
    let cpu = s.sut_cpu.unwrap_or(0.0);
    println!(
        "  {}: offered {}/s for {:.0} s ({users} accounts): goodput {:.0} registrations/s ({} ok, {} failed, {} retransmissions, {} unexpected); CPU {:.0} µs per successful REGISTER pair, {:.2} cores; load {}",
        r.name,
        s.rate,
        s.busy_secs,
        s.ok as f64 / s.busy_secs.max(0.001),
        s.ok,
        s.failed,
        s.retransmissions,
        s.stray,
        cpu * 1e6 / s.ok.max(1) as f64,
        cpu / s.wall_secs.max(0.001),
        s.load
    );
    let mb = |kb: u64| kb as f64 / 1024.0;
    let [b, p, a, l] = r.mem;
    println!(
        "  {}: PSS {:.1} MB before, {:.1} MB highest during, {:.1} MB right after, {:.1} MB 40 s later",
        r.name,
        mb(b.0),
        mb(p.0),
        mb(a.0),
        mb(l.0)
    );
    if b.1 > 0 {
        println!(
            "  {}: VmRSS {:.1} MB before, {:.1} MB highest during, {:.1} MB right after, {:.1} MB 40 s later (Timer J over); VmHWM {:.1} MB",
            r.name,
            mb(b.1),
            mb(p.1),
            mb(a.1),
            mb(l.1),
            mb(status_kb("VmHWM:"))
        );
    }
    if let Some(t) = &r.txs {
        let f = |t: &Transactions| {
            format!(
                "{} live + {} completed (table capacity {})",
                t.live, t.completed, t.completed_capacity
            )
        };
        println!(
            "  {}: transactions: {} before, {} at the peak, {} right after, {} 40 s later",
            r.name,
            f(&t[0]),
            f(&t[1]),
            f(&t[2]),
            f(&t[3])
        );
    }
    if let Some(ph) = &r.phone {
        ph.print(r.name);
    }
}

/// `--sustain RATE SECS`: see the module docs.
fn sustain(a: &Args, rate: u32, secs: u32) -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("register_bench-")
        .tempdir()?;
    let rt = bench::gateway_runtime()?;
    // One more account than the load uses: the phone's.
    let phone_user = FIRST_USER + a.users;
    let (gw, gw_target) = rt.block_on(start_gateway_sharded(a.users + 1, dir.path(), a.shards))?;
    let k_target = SocketAddr::from(([127, 0, 0, 1], integration::free_udp_port()));
    let kam = Kamailio::start(
        &kamailio_cfg(k_target.port(), a.users + 1, a.kamailio_maxbuffer),
        k_target,
        dir.path(),
    )?;
    let k_pid = kam.pid().context("kamailio has no pid")?;
    let inf = injection_files(a.users, a.sipp, dir.path())?;
    let phone_inf = dir.path().join("phone.csv");
    std::fs::write(
        &phone_inf,
        format!("SEQUENTIAL\n{phone_user};{}\n", password(phone_user)),
    )?;
    let mut rates = vec![rate];
    if a.double {
        rates.push(rate.saturating_mul(2));
    }
    println!(
        "register_bench --sustain: {} accounts over {} SIPp processes, {secs} s per step at {rates:?} REGISTER/s, \
         callfabric (in this process, SQLite) and kamailio (children={}) alternated; {} cores, load {}",
        a.users,
        a.sipp,
        bench::cores(),
        bench::cores(),
        bench::loadavg()
    );
    let mut results = Vec::new();
    for (i, &r) in rates.iter().enumerate() {
        // The phone only at twice the rate (the overload step).
        let ph = (i == 1).then_some(phone_inf.as_path());
        let mut order = [0, 1];
        if i % 2 == 1 {
            order.reverse();
        }
        for sys in order {
            let res = if sys == 0 {
                sustain_step(
                    "callfabric",
                    gw_target,
                    (std::process::id(), false),
                    Some(&gw),
                    r,
                    secs,
                    &inf,
                    ph,
                    dir.path(),
                )?
            } else {
                sustain_step(
                    "kamailio",
                    kam.addr(),
                    (k_pid, true),
                    None,
                    r,
                    secs,
                    &inf,
                    ph,
                    dir.path(),
                )?
            };
            print_sustained(a.users, &res);
            results.push((i, res));
        }
    }
    if a.double {
        bench::print_goodput_at_double(
            &["callfabric", "kamailio"],
            rate,
            results.iter().map(|(i, r)| (*i, r.name, &r.step)),
        );
    }
    let (c, _) = gw.overload();
    println!(
        "callfabric overload control: {} admitted, {} refused (503), {} low-value dropped, {} retransmissions dropped",
        c.admitted, c.rejected, c.dropped_low, c.dropped_retransmissions
    );
    println!("load at the end: {}", bench::loadavg());
    gw.stop();
    Ok(())
}

fn main() -> Result<()> {
    // The in-process gateway's log (e.g. CALLFABRIC_LOG=warn: overload, security events).
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("CALLFABRIC_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let a = parse_args(&argv)?;
    if let Some((calls, rate)) = a.profile {
        return profile(&a, calls, rate);
    }
    if let Some((rate, secs)) = a.sustain {
        return sustain(&a, rate, secs);
    }
    let dir = tempfile::Builder::new()
        .prefix("register_bench-")
        .tempdir()?;
    let inf = injection_files(a.users, a.sipp, dir.path())?;
    println!(
        "register_bench: {} accounts (each its own password) dealt over {} SIPp processes sharing the offered rate; \
         {} s per step, {} rounds, systems interleaved step by step, the order rotated; UDP, \
         REGISTER -> 401 -> REGISTER (MD5, qop=auth) -> 200, a new Call-ID per call; {} cores, load {}",
        a.users,
        a.sipp,
        a.secs,
        a.rounds,
        bench::cores(),
        bench::loadavg()
    );

    // callfabric: the gateway in-process on SQLite.
    let rt = tokio::runtime::Runtime::new()?;
    let (gw, gw_target) = rt.block_on(start_gateway_sharded(a.users, dir.path(), a.shards))?;
    // With shards, the unsharded gateway too (its own port and database), the same run.
    let unsharded = if a.shards > 1 {
        Some(rt.block_on(start_gateway(a.users, dir.path()))?)
    } else {
        None
    };
    // Kamailio 5.6, the same accounts, one worker per core.
    let k_target = SocketAddr::from(([127, 0, 0, 1], integration::free_udp_port()));
    let kam = Kamailio::start(
        &kamailio_cfg(k_target.port(), a.users, a.kamailio_maxbuffer),
        k_target,
        dir.path(),
    )?;
    let k_pid = kam.pid().context("kamailio has no pid")?;
    println!(
        "callfabric gateway on {gw_target} (in this process); kamailio on {} (children={})",
        kam.addr(),
        bench::cores()
    );
    let sharded_name = format!("callfabric-{}-shards", a.shards);
    let names: Vec<&str> = if unsharded.is_some() {
        vec![&sharded_name, "callfabric-unsharded", "kamailio"]
    } else {
        vec!["callfabric", "kamailio"]
    };
    let kam_sys = names.len() - 1;
    let runs = bench::interleaved_ramps(
        &names,
        "REGISTERs",
        a.rounds,
        &a.rates,
        // Every step has fresh callers on fresh ports: nothing to wait for.
        Duration::ZERO,
        |sys, rate| {
            if sys != kam_sys {
                let target = match (&unsharded, sys) {
                    (Some((_, t)), 1) => *t,
                    _ => gw_target,
                };
                step(
                    names[sys],
                    target,
                    (std::process::id(), false),
                    rate,
                    a.secs,
                    &inf,
                    dir.path(),
                )
            } else {
                step(
                    "kamailio",
                    kam.addr(),
                    (k_pid, true),
                    rate,
                    a.secs,
                    &inf,
                    dir.path(),
                )
            }
        },
    )?;
    let mem_ours = bench::pss_kb(std::process::id(), false);
    let mem_theirs = bench::pss_kb(k_pid, true);
    gw.stop();
    drop(gw);
    drop(unsharded);
    drop(rt);
    drop(kam);
    bench::summarize(&names, "REGISTER", &a.rates, &runs);
    println!(
        "memory after the run (PSS): callfabric {:.1} MB (the whole bench process: gateway, SQLite, tokio), kamailio {:.1} MB (main + workers, shared memory counted once); ratio {:.2}x",
        mem_ours as f64 / 1024.0,
        mem_theirs as f64 / 1024.0,
        mem_ours as f64 / mem_theirs.max(1) as f64
    );
    println!("load at the end: {}", bench::loadavg());
    Ok(())
}

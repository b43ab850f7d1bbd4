//! Benchmark: media-anchored call setups per second and CPU per call, SIPp UAC → system under
//! test → SIPp UAS, for callfabric's gateway (a B2BUA anchoring the media: two dialogs, two RTP
//! port pairs per call) and, as its anchor, **Kamailio + rtpengine**: Kamailio 5.6 as a
//! stateful, record-routing proxy (`tm`, one worker per core, 256 MB of shared memory) whose
//! `rtpengine` module does offer/answer per call (`rtpengine_offer()` on the INVITE,
//! `rtpengine_answer()` on the 200, `rtpengine_delete()` on the BYE and in the failure route)
//! against a real rtpengine daemon the bench starts (userspace forwarding, one thread per core,
//! its own RTP ports on 127.0.0.1). With `--plain` the anchor is Kamailio alone (tm +
//! record-routing, no media): the older, not like-for-like comparison.
//!
//! Both systems in the same run: their steps interleaved, the order rotated at every step,
//! repeated in rounds, the first ramp counted (no warm-up). Prints per step the goodput
//! (successful calls per second), failed calls and CPU per call (the anchor's = Kamailio's
//! processes + rtpengine's); then CPU per call (median over the rounds) beside the highest
//! clean rates, whether each is the server's limit or the load generator's, the ratios, and
//! both systems' memory (PSS: peak sampled every second during the system's own steps, and
//! after the run). The gateway runs in the bench's process: its CPU is the process's minus the
//! bench's own threads (the main thread driving the SIPps, the memory sampler).
//!
//! ```text
//! cargo run --release -p integration --bin call_bench -- [--plain] [--users N] \
//!     [--kamailio-children N] [SECONDS_PER_STEP] [HOLD_MS] [ROUNDS] [RATES…]
//! ```
//!
//! ```text
//! call_bench --sustain RATE SECS [--double] [--users N] [HOLD_MS]
//! ```
//!
//! **Sustained and overload** (issue 16): one step of SECS seconds at RATE calls/s against each
//! system (alternated), each system's memory sampled every second; with `--double` a second
//! step at twice RATE (the order reversed) during which a phone (an account of the gateway's
//! device table that the load does not use) registers with the gateway from its own port,
//! retrying 2 s after each failure (Kamailio here is a proxy, not a registrar: no phone). Give
//! RATE = the gateway's capacity (the highest clean rate of a ramp): the summary prints each
//! system's goodput at 2× RATE as a share of its goodput at RATE (issue 16 asks ≥ 90 %).
//!
//! `--kamailio-children N` overrides Kamailio's `children` (default: the cores): its workers
//! wait for rtpengine's ng reply (offer, answer, delete: three round trips a call), so more
//! workers than cores is a fair sensitivity check of the anchor.
//!
//! Each call: INVITE (SDP) → 100/180 → 200 (SDP) → ACK → HOLD_MS → BYE → 200, a new Call-ID per
//! call, the caller the next of `--users` distinct From users (default 1000, `-inf`). **SDP
//! check**: the UAS fails a call whose INVITE's SDP, and the UAC one whose 200's SDP, does not
//! put the media on the anchoring system's RTP port range (the gateway 10000–19999, rtpengine
//! 20000–29999; the SIPps' own media ports are in the kernel's ephemeral range, checked to be
//! above both), and before the ramps each system carries a few checked calls: a system that did
//! not rewrite the SDP is refused and the bench exits. No RTP flows (SIPp sends none): the
//! bench measures setups with media anchored (ports allocated, SDP rewritten), not relaying.
//! A step is unclean at ≥ 0.1 % failed calls, retransmissions or unexpected messages at
//! either end (the UAS is started per step with `-m` and reports its own failures), or when a
//! SIPp exits other than 0/1. `CALL_BENCH_TRACE=1` adds SIPp's `-trace_err` and keeps the
//! working directory.

use anyhow::{bail, Context as _, Result};
use gateway::server::{Gateway, GatewayConfig, TrunkConfig};
use integration::bench::{self, Callee, Kamailio, SippStep, Step};
use integration::rtpengine::Rtpengine;
use statebus::{Eid, LocalBus};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The number the UAC dials (`-s`); routed by the trunk prefix / the proxy's `$du`.
const NUMBER: &str = "5551000";

/// The gateway's RTP ports, and the regular expression of an SDP port in that range.
const GW_RTP: (u16, u16) = (10000, 19999);
const GW_RTP_RE: &str = "1[0-9]{4}";
/// rtpengine's RTP ports, and the regular expression of an SDP port in that range.
const RTPE_RTP: (u16, u16) = (20000, 29999);
const RTPE_RTP_RE: &str = "2[0-9]{4}";
/// Any port: a system that does not anchor media (`--plain` Kamailio).
const ANY_PORT_RE: &str = "[0-9]+";

/// Maximum simultaneous calls per SIPp UAC (`-l`), the same for both systems: keeps each
/// anchor within its 10 000 RTP ports (4 a call: two legs, RTP and RTCP each).
const MAX_CALLS: u32 = 2400;

/// First caller (From user) of the injection file.
const FIRST_CALLER: u32 = 100_000;

/// The phone of `--sustain --double`: an account of the gateway's device table that no caller
/// of the load uses.
const PHONE_USER: &str = "99999";
const PHONE_PASSWORD: &str = "phone-99999-secret";

/// A system under test.
struct Sut {
    name: &'static str,
    target: SocketAddr,
    /// Where its callee (a SIPp UAS started per step) listens.
    uas_port: u16,
    /// Its processes, each with its direct children when true: CPU and memory are summed.
    procs: Vec<(u32, bool)>,
    /// Threads of this process whose CPU is the harness's, not the system's (the gateway runs
    /// in-process: the main thread driving the SIPps and the memory sampler are taken out).
    exclude: Vec<u32>,
    /// The SIPp scenarios with this system's SDP check.
    uac: PathBuf,
    uas: PathBuf,
}

impl Sut {
    fn cpu(&self) -> f64 {
        let me = std::process::id();
        let all: f64 = self.procs.iter().map(|&(p, c)| bench::cpu_secs(p, c)).sum();
        all - self
            .exclude
            .iter()
            .map(|&t| bench::thread_cpu_secs(me, t))
            .sum::<f64>()
    }

    fn pss_kb(&self) -> u64 {
        self.procs.iter().map(|&(p, c)| bench::pss_kb(p, c)).sum()
    }
}

/// Copies of the UAC and UAS scenarios with `port_re` as the SDP check (`ANCHOR_PORT_RE`).
fn scenarios(name: &str, port_re: &str, dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let mut out = Vec::new();
    for side in ["uac", "uas"] {
        let src = integration::repo_root().join(format!("integration/sipp/call_load_{side}.xml"));
        let text = std::fs::read_to_string(&src).with_context(|| src.display().to_string())?;
        if !text.contains("ANCHOR_PORT_RE") {
            bail!("{}: no ANCHOR_PORT_RE (the SDP check)", src.display());
        }
        let dst = dir.join(format!("{name}-{side}.xml"));
        std::fs::write(&dst, text.replace("ANCHOR_PORT_RE", port_re))?;
        out.push(dst);
    }
    Ok((out.remove(0), out.remove(0)))
}

/// The injection file: `users` distinct callers, one a line.
fn callers_file(users: u32, dir: &Path) -> Result<PathBuf> {
    let mut text = String::from("SEQUENTIAL\n");
    for u in 0..users {
        text.push_str(&format!("{}\n", FIRST_CALLER + u));
    }
    let p = dir.join("callers.csv");
    std::fs::write(&p, text)?;
    Ok(p)
}

/// One step against `sut`, whose callee is a SIPp UAS started for the step; the system's CPU
/// is measured over the step.
fn step(
    sut: &Sut,
    rate: u32,
    secs: u32,
    hold: Duration,
    (inf, trace): (&Path, bool),
    dir: &Path,
) -> Result<Step> {
    let name = sut.name;
    let mut extra: Vec<String> = vec![
        "-s".into(),
        NUMBER.into(),
        "-d".into(),
        hold.as_millis().to_string(),
        "-l".into(),
        MAX_CALLS.to_string(),
        "-inf".into(),
        inf.display().to_string(),
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
    for &(pid, children) in &sut.procs {
        if !bench::settle(pid, children) {
            println!("  ({name} (pid {pid}) still busy 15 s after its previous step)");
        }
    }
    let cpu0 = sut.cpu();
    let mut s = bench::run_sipp_step(
        &SippStep {
            scenario: &sut.uac,
            target: sut.target,
            rate,
            secs,
            hold,
            extra,
            callers: Vec::new(),
            callee: Some(Callee {
                scenario: &sut.uas,
                port: sut.uas_port,
                extra: uas_extra,
            }),
        },
        name,
        dir,
    )?;
    s.sut_cpu = Some(sut.cpu() - cpu0);
    Ok(s)
}

/// A few calls through `sut` with SIPp's error trace on: every one must succeed, so every SDP
/// passed the check. Refuses (an error naming the check) a system that did not rewrite the SDP.
fn preflight(sut: &Sut, inf: &Path, dir: &Path) -> Result<()> {
    let pre = dir.join(format!("preflight-{}", sut.name));
    std::fs::create_dir_all(&pre)?;
    let s = step(sut, 10, 1, Duration::from_millis(100), (inf, true), &pre)?;
    if s.clean() && s.ok == s.calls && s.calls > 0 {
        println!(
            "preflight: {}: {} of {} calls, the SDP both ways on its RTP ports",
            sut.name, s.ok, s.calls
        );
        return Ok(());
    }
    let mut logs = String::new();
    for side in ["uac", "uas"] {
        let f = pre.join(format!("{}-10-{side}-errors.log", sut.name));
        let tail = integration::tail_file(&f, 6);
        if !tail.is_empty() {
            logs.push_str(&format!("\n{side}: {tail}"));
        }
    }
    let sdp = if logs.contains("regexp") || logs.contains("Regexp") {
        "the SDP did not point at the system's own RTP ports (not anchored): "
    } else {
        ""
    };
    bail!(
        "{} refused: {sdp}{} of {} preflight calls ok ({}){logs}",
        sut.name,
        s.ok,
        s.calls,
        s.flags()
    )
}

/// One sustained step of a system: the step, its peak memory (PSS, sampled every second), and
/// the phone's outcome when one registered during it.
struct Sustained {
    name: &'static str,
    step: Step,
    pss_peak_kb: u64,
    phone: Option<bench::Phone>,
}

/// A step of `secs` at `rate` against `sut`; with `phone` (the registrar's address and the
/// phone's injection file), a phone registers during it (from 10 s in, until 25 s before the
/// end).
fn sustain_step(
    sut: &Sut,
    (rate, secs): (u32, u32),
    hold: Duration,
    inf: &Path,
    phone: Option<(SocketAddr, &Path)>,
    dir: &Path,
) -> Result<Sustained> {
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let mut peak = 0;
            while !stop.load(Ordering::Relaxed) {
                peak = peak.max(sut.pss_kb());
                std::thread::sleep(Duration::from_secs(1));
            }
            peak
        });
        let ph = phone.map(|(target, inf)| bench::phone_during_step(scope, target, inf, dir, secs));
        let s = step(sut, rate, secs, hold, (inf, false), dir);
        stop.store(true, Ordering::Relaxed);
        let pss_peak_kb = sampler.join().unwrap_or(0);
        let phone = ph.map(bench::join_phone);
        Ok(Sustained {
            name: sut.name,
            step: s?,
            pss_peak_kb,
            phone,
        })
    })
}

fn print_sustained(r: &Sustained) {
    let s = &r.step;
    bench::print_step(1, r.name, "calls", s);
    let cpu = s.sut_cpu.unwrap_or(0.0);
    println!(
        "  {}: offered {}/s for {:.0} s: goodput {:.0} calls/s ({} ok, {} failed, {} retransmissions, {} unexpected, {} failed at the callee); CPU {:.0} µs per successful call, {:.2} cores; PSS peak {:.1} MB; load {}",
        r.name,
        s.rate,
        s.busy_secs,
        s.ok as f64 / s.busy_secs.max(0.001),
        s.ok,
        s.failed,
        s.retransmissions,
        s.stray,
        s.callee_failed,
        cpu * 1e6 / s.ok.max(1) as f64,
        cpu / s.wall_secs.max(0.001),
        r.pss_peak_kb as f64 / 1024.0,
        s.load
    );
    if let Some(ph) = &r.phone {
        ph.print(r.name);
    }
}

/// `--sustain RATE SECS [--double]`: see the module docs.
fn sustain(
    suts: &[Sut; 2],
    (rate, secs): (u32, u32),
    double: bool,
    hold: Duration,
    (inf, phone_inf): (&Path, &Path),
    dir: &Path,
) -> Result<()> {
    let mut rates = vec![rate];
    if double {
        rates.push(rate.saturating_mul(2));
    }
    println!(
        "call_bench --sustain: {secs} s per step at {rates:?} calls/s, hold {} ms, the systems alternated{}",
        hold.as_millis(),
        if double {
            "; a phone registers with the gateway during its step at twice the rate"
        } else {
            ""
        }
    );
    let mut results: Vec<(usize, Sustained)> = Vec::new();
    for (i, &r) in rates.iter().enumerate() {
        let mut order = [0, 1];
        if i % 2 == 1 {
            order.reverse();
        }
        for sys in order {
            let sut = &suts[sys];
            // The phone: the gateway (the registrar) at twice the rate.
            let phone = (i == 1 && sys == 0).then_some((sut.target, phone_inf));
            let res = sustain_step(sut, (r, secs), hold, inf, phone, dir)?;
            print_sustained(&res);
            results.push((i, res));
        }
    }
    if double {
        let names: Vec<&str> = suts.iter().map(|s| s.name).collect();
        bench::print_goodput_at_double(
            &names,
            rate,
            results.iter().map(|(i, r)| (*i, r.name, &r.step)),
        );
    }
    Ok(())
}

/// Kamailio 5.6 as a stateful proxy: record-routes the initial INVITE and relays it (tm) to the
/// UAS; in-dialog requests (ACK, BYE) follow the route set (`loose_route`). With `rtpengine`
/// (its ng address), the media is anchored there: offer on the INVITE, answer on a reply with
/// SDP, delete on the BYE and when the INVITE fails.
fn kamailio_cfg(
    port: u16,
    uas: SocketAddr,
    rtpengine: Option<SocketAddr>,
    children: usize,
) -> String {
    let flags = "replace-origin replace-session-connection";
    let (module, offer, on_reply, delete, routes) = match rtpengine {
        Some(ng) => (
            format!(
                "loadmodule \"rtpengine.so\"\nmodparam(\"rtpengine\", \"rtpengine_sock\", \"udp:{ng}\")\n"
            ),
            format!(
                "if (has_body(\"application/sdp\") && !rtpengine_offer(\"{flags}\")) {{ sl_send_reply(\"503\", \"No media relay\"); exit; }}\n    t_on_reply(\"ANSWER\");\n    t_on_failure(\"FAILED\");\n"
            ),
            String::new(),
            "if (is_method(\"BYE\")) { rtpengine_delete(); }\n            ".to_string(),
            format!(
                r#"onreply_route[ANSWER] {{
    if (status =~ "^(18[03]|2[0-9][0-9])$" && has_body("application/sdp")) {{
        rtpengine_answer("{flags}");
    }}
}}
failure_route[FAILED] {{
    rtpengine_delete();
}}
"#
            ),
        ),
        None => (
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
        ),
    };
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
{module}request_route {{
    if (!mf_process_maxfwd_header("10")) {{ sl_send_reply("483", "Too Many Hops"); exit; }}
    if (has_totag()) {{
        if (loose_route()) {{
            {delete}if (!t_relay()) {{ sl_reply_error(); }}
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
    {offer}{on_reply}$du = "sip:{uas}";
    if (!t_relay()) {{ sl_reply_error(); }}
    exit;
}}
{routes}"#
    )
}

struct Args {
    secs: u32,
    hold: Duration,
    rounds: u32,
    rates: Vec<u32>,
    plain: bool,
    users: u32,
    /// Kamailio's `children` (default: the cores, its documented setting for UDP).
    children: usize,
    /// `--sustain RATE SECS`: see the module docs.
    sustain: Option<(u32, u32)>,
    /// `--double`: with `--sustain`, a step at twice RATE with a phone registering.
    double: bool,
}

fn parse_args() -> Result<Args> {
    let mut pos = Vec::new();
    let mut plain = false;
    let mut users = 1000;
    let mut children = bench::cores();
    let mut sustain = None;
    let mut double = false;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--plain" => plain = true,
            "--users" => {
                users = it
                    .next()
                    .context("--users needs a number")?
                    .parse()
                    .context("--users")?
            }
            "--kamailio-children" => {
                children = it
                    .next()
                    .context("--kamailio-children needs a number")?
                    .parse()
                    .context("--kamailio-children")?
            }
            "--double" => double = true,
            "--sustain" => {
                let mut num = |what: &str| -> Result<u32> {
                    it.next()
                        .context("--sustain RATE SECS")?
                        .parse()
                        .with_context(|| format!("--sustain {what}"))
                };
                let rate = num("RATE")?;
                let secs = num("SECS")?;
                if rate == 0 || secs == 0 {
                    bail!("--sustain RATE SECS: both > 0");
                }
                sustain = Some((rate, secs));
            }
            f if f.starts_with("--") => bail!("unknown flag {f}"),
            _ => pos.push(a),
        }
    }
    if sustain.is_some() {
        // `--sustain RATE SECS [HOLD_MS]`: the only positional argument is the hold.
        if pos.len() > 1 {
            bail!("--sustain RATE SECS takes one more argument at most: HOLD_MS");
        }
        pos.insert(0, "1".into());
    } else if double {
        bail!("--double needs --sustain RATE SECS");
    }
    let num = |i: usize, what: &str| -> Result<Option<u64>> {
        pos.get(i)
            .map(|s| s.parse::<u64>().with_context(|| format!("{what}: {s:?}")))
            .transpose()
    };
    let a = Args {
        secs: num(0, "SECONDS_PER_STEP")?.unwrap_or(5).try_into()?,
        hold: Duration::from_millis(num(1, "HOLD_MS")?.unwrap_or(1000)),
        rounds: num(2, "ROUNDS")?.unwrap_or(3).try_into()?,
        rates: if pos.len() > 3 {
            pos[3..]
                .iter()
                .map(|s| s.parse().with_context(|| format!("rate {s:?}")))
                .collect::<Result<_>>()?
        } else {
            vec![500, 1000, 1500, 2000, 2500, 3000]
        },
        plain,
        users,
        children,
        sustain,
        double,
    };
    if a.secs == 0 || a.rounds == 0 || a.users == 0 || a.children == 0 {
        bail!("SECONDS_PER_STEP, ROUNDS, --users and --kamailio-children must be > 0");
    }
    Ok(a)
}

/// The SDP check is sound only if the SIPps' media ports (the kernel's ephemeral range) lie
/// above both anchors' RTP ranges.
fn check_ephemeral_range() -> Result<u16> {
    let f = "/proc/sys/net/ipv4/ip_local_port_range";
    let text = std::fs::read_to_string(f).with_context(|| f.to_string())?;
    let low: u16 = text
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("{f}: cannot read {text:?}"))?;
    if low <= RTPE_RTP.1.max(GW_RTP.1) {
        bail!(
            "{f} starts at {low}: the SIPps' media ports could fall in the anchors' RTP ranges ({}-{}, {}-{}) and the SDP check would not tell",
            GW_RTP.0, GW_RTP.1, RTPE_RTP.0, RTPE_RTP.1
        );
    }
    Ok(low)
}

/// Two ports for the callees, free now, above the anchors' RTP ranges and below the kernel's
/// ephemeral range (from `ephemeral_low`): a callee's port is free between its steps, and one
/// in the ephemeral range can be taken meanwhile by any process binding a socket (the next
/// UAS then cannot bind, exits 254, and every call of the step fails: seen once here).
fn callee_ports(ephemeral_low: u16) -> Result<(u16, u16)> {
    let mut free = (RTPE_RTP.1.max(GW_RTP.1) + 1..ephemeral_low)
        .filter(|&p| std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, p)).is_ok());
    match (free.next(), free.next()) {
        (Some(a), Some(b)) => Ok((a, b)),
        _ => bail!(
            "no two free UDP ports between {} and {ephemeral_low} for the callees",
            RTPE_RTP.1.max(GW_RTP.1) + 1
        ),
    }
}

fn main() -> Result<()> {
    let a = parse_args()?;
    let (ours_uas, theirs_uas) = callee_ports(check_ephemeral_range()?)?;
    let (secs, hold, rounds) = (a.secs, a.hold, a.rounds);
    let trace = std::env::var_os("CALL_BENCH_TRACE").is_some_and(|v| v == "1");
    let dir = tempfile::Builder::new().prefix("call_bench-").tempdir()?;
    let anchor = if a.plain {
        "kamailio"
    } else {
        "kamailio+rtpengine"
    };
    let ramp_header = a.sustain.is_none();
    if ramp_header {
        println!(
        "call_bench: {secs} s per step, {rounds} rounds, systems interleaved step by step, the order rotated, the first ramp counted; UDP, SIPp uac -> system -> SIPp uas (one per step): INVITE (SDP) -> 100/180 -> 200 (SDP) -> ACK -> {} ms -> BYE -> 200, a new Call-ID per call, {} distinct callers, at most {MAX_CALLS} calls in progress, the SDP both ways checked to point at the anchor; {} cores, load {}",
        hold.as_millis(),
        a.users,
        bench::cores(),
        bench::loadavg()
    );
    }
    if trace {
        println!("working directory {}", dir.path().display());
    }
    let inf = callers_file(a.users, dir.path())?;

    // callfabric: the gateway in-process; the UAC's loopback source is a trusted trunk (no
    // digest, like the proxy) and the dialled number routes by prefix to the UAS.
    let rt = tokio::runtime::Runtime::new()?;
    let gw_target = SocketAddr::from(([127, 0, 0, 1], integration::free_udp_port()));
    let db = format!("sqlite://{}", dir.path().join("bench.db").display());
    let gw = rt.block_on(async {
        // The phone's account (`--sustain --double`).
        gateway::devices::DeviceStore::open(&db)
            .await?
            .upsert(&gateway::devices::DeviceRecord::with_password(
                PHONE_USER,
                "bench",
                PHONE_PASSWORD,
            ))
            .await?;
        let cfg = GatewayConfig {
            rtp_ports: GW_RTP,
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
    // The anchor: rtpengine (unless --plain), then Kamailio on the same path, one worker per
    // core.
    let rtpe = if a.plain {
        None
    } else {
        Some(Rtpengine::start(RTPE_RTP, Some(bench::cores()))?)
    };
    let k_target = SocketAddr::from(([127, 0, 0, 1], integration::free_udp_port()));
    let kam = Kamailio::start(
        &kamailio_cfg(
            k_target.port(),
            SocketAddr::from(([127, 0, 0, 1], theirs_uas)),
            rtpe.as_ref().map(Rtpengine::ng_addr),
            a.children,
        ),
        k_target,
        dir.path(),
    )?;
    let k_pid = kam.pid().unwrap_or(0);
    let (gw_uac, gw_uas) = scenarios("callfabric", GW_RTP_RE, dir.path())?;
    let (k_uac, k_uas) = scenarios(
        anchor,
        if a.plain { ANY_PORT_RE } else { RTPE_RTP_RE },
        dir.path(),
    )?;
    let mut k_procs = vec![(k_pid, true)];
    k_procs.extend(rtpe.as_ref().map(|r| (r.pid(), false)));
    let mut suts = [
        Sut {
            name: "callfabric",
            target: gw_target,
            uas_port: ours_uas,
            // In-process: this process (its children are the SIPps).
            procs: vec![(std::process::id(), false)],
            // The main thread's id is the process id.
            exclude: vec![std::process::id()],
            uac: gw_uac,
            uas: gw_uas,
        },
        Sut {
            name: anchor,
            target: kam.addr(),
            uas_port: theirs_uas,
            procs: k_procs,
            exclude: Vec::new(),
            uac: k_uac,
            uas: k_uas,
        },
    ];
    println!(
        "callfabric gateway on {gw_target} (in this process, RTP 127.0.0.1:{}-{}), callee on :{ours_uas}; {anchor}: kamailio (tm, record-routing, children={}, 256 MB shm) on {}{}, callee on :{theirs_uas}",
        GW_RTP.0,
        GW_RTP.1,
        a.children,
        kam.addr(),
        match &rtpe {
            Some(r) => format!(
                ", rtpengine (userspace, {} threads, offer/answer/delete per call over ng {}) RTP 127.0.0.1:{}-{}",
                bench::cores(),
                r.ng_addr(),
                RTPE_RTP.0,
                RTPE_RTP.1
            ),
            None => " (no media: --plain)".into(),
        }
    );
    for sut in &suts {
        preflight(sut, &inf, dir.path())?;
    }
    if let Some(rs) = a.sustain {
        let phone_inf = dir.path().join("phone.csv");
        std::fs::write(
            &phone_inf,
            format!("SEQUENTIAL\n{PHONE_USER};{PHONE_PASSWORD}\n"),
        )?;
        let res = sustain(&suts, rs, a.double, hold, (&inf, &phone_inf), dir.path());
        let (c, _) = gw.overload();
        println!(
            "callfabric overload control: {} admitted, {} refused (503), {} low-value dropped, {} retransmissions dropped",
            c.admitted, c.rejected, c.dropped_low, c.dropped_retransmissions
        );
        println!("load at the end: {}", bench::loadavg());
        gw.stop();
        drop(gw);
        drop(rt);
        drop(kam);
        drop(rtpe);
        return res;
    }

    // Peak memory of each system, sampled every second during its own steps (`current`).
    let peaks: Arc<Mutex<[u64; 2]>> = Arc::default();
    let current = Arc::new(AtomicUsize::new(usize::MAX));
    let done = Arc::new(AtomicBool::new(false));
    let procs: Vec<Vec<(u32, bool)>> = suts.iter().map(|s| s.procs.clone()).collect();
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let sampler = {
        let (peaks, current, done) = (peaks.clone(), current.clone(), done.clone());
        std::thread::spawn(move || {
            let _ = tid_tx.send(bench::current_tid());
            while !done.load(Ordering::Relaxed) {
                let i = current.load(Ordering::Relaxed);
                if let Some(p) = procs.get(i) {
                    let kb: u64 = p.iter().map(|&(p, c)| bench::pss_kb(p, c)).sum();
                    let mut g = peaks.lock().unwrap_or_else(|e| e.into_inner());
                    g[i] = g[i].max(kb);
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        })
    };
    // Its CPU is the harness's, not the gateway's.
    suts[0].exclude.push(tid_rx.recv()?);
    let names = [suts[0].name, suts[1].name];
    let runs = bench::interleaved_ramps(
        &names,
        "calls",
        rounds,
        &a.rates,
        // Timer B/F (64 × T1 = 32 s) and a margin.
        Duration::from_secs(40),
        |sys, rate| {
            current.store(sys, Ordering::Relaxed);
            let s = step(&suts[sys], rate, secs, hold, (&inf, trace), dir.path());
            current.store(usize::MAX, Ordering::Relaxed);
            s
        },
    );
    done.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let after = [suts[0].pss_kb(), suts[1].pss_kb()];
    let peak = *peaks.lock().unwrap_or_else(|e| e.into_inner());
    gw.stop();
    drop(gw);
    drop(rt);
    drop(kam);
    drop(rtpe);
    let runs = runs?;
    bench::summarize(&names, "call", &a.rates, &runs);
    let mb = |kb: u64| kb as f64 / 1024.0;
    println!(
        "memory (PSS) peak / after the run: callfabric {:.1} / {:.1} MB (the whole bench process: gateway, relay, SQLite, tokio), {anchor} {:.1} / {:.1} MB (kamailio main + workers, shared memory counted once{}); peak ratio {:.2}x",
        mb(peak[0]),
        mb(after[0]),
        mb(peak[1]),
        mb(after[1]),
        if a.plain { "" } else { ", + rtpengine" },
        peak[0] as f64 / peak[1].max(1) as f64
    );
    println!("load at the end: {}", bench::loadavg());
    if trace {
        let kept = dir.keep();
        println!("kept {}", kept.display());
    }
    Ok(())
}

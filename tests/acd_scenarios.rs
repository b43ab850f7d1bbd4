//! Queue behaviour end to end through `callfabric site` with real phones: SIPp callers dial
//! queue 800, SIPp UAS agents (registered at the site's gateway) answer. Each test checks who
//! was offered what, in which order and when, from the `QUEUELOG` lines the binary prints (and
//! the SIP outcome every phone saw): strategies (fewestcalls, rrmemory, rrordered, random, wrandom),
//! penalties, wrap-up time, maxlen, joinempty and leavewhenempty, and the queue_log table on a
//! real PostgreSQL.

use std::path::{Path, PathBuf};
use std::time::Duration;

use integration::free_udp_port;
use integration::gateway::{GatewayProcess, GatewaySpec};
use integration::phones::{assert_passes, caller, scenario, uac_scenario};
use integration::sipp::{run_scenario, SippOpts, SippOutcome, SippProcess};

const WAIT: Duration = Duration::from_secs(20);
/// How long a served caller stays after the ACD answers (it is connected to an agent well
/// within this, even on a loaded machine; a caller that hangs up first is an ABANDON and
/// fails the test).
const HOLD_MS: u32 = 3000;

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_callfabric"))
}

/// A site (gateway + ACD, in-process bus, SQLite) with devices 1001, 1002 (callers) and 2001,
/// 2002, 2003 (agents), and queue 800 "support" with `retry = 1`, `ringinuse = false` and the
/// given `queue` lines; `acd` lines go into `[acd]`.
fn site(queue: &str, acd: &str) -> GatewayProcess {
    let acd_port = free_udp_port();
    let mut spec = GatewaySpec::new("site-a", &["1001", "1002", "2001", "2002", "2003"]);
    spec.command = "site".into();
    spec.qualify_interval_secs = 300.0;
    spec.extra = format!(
        r#"
[acd]
udp = "127.0.0.1:{acd_port}"
rtp_ports = "43000-44999"
t1_ms = 100
{acd}
[acd.numbers]
"800" = "support"

[[acd.queue]]
name = "support"
retry = 1
ringinuse = false
{queue}
"#
    );
    let mut gw = GatewayProcess::start(binary(), spec);
    gw.wait_for(WAIT, "the acd ready line", |l| l.starts_with("acd ready"));
    gw
}

/// An agent phone: a SIPp UAS answering `calls` calls (echoing RTP) within `within`,
/// registered as `user` by a second SIPp; waits until the device reads NOT_INUSE.
fn agent(gw: &mut GatewayProcess, user: &str, calls: u32, within: Duration) -> SippProcess {
    let sip_port = free_udp_port();
    let media_port = integration::free_media_port_beside(sip_port);
    let uas = SippProcess::spawn(
        &scenario("call_uas.xml"),
        None,
        &SippOpts {
            local_port: Some(sip_port),
            calls,
            timeout: within,
            extra_args: vec!["-rtp_echo".into(), "-mp".into(), media_port.to_string()],
            ..SippOpts::default()
        },
    )
    .expect("start the agent's SIPp");
    register_contact(gw, user, sip_port, 3600);
    gw.device(user, "NOT_INUSE", WAIT);
    uas
}

/// `register_contact.xml` for `user` with Contact port `port` and `Expires: expires` (0
/// removes that binding).
fn register_contact(gw: &GatewayProcess, user: &str, port: u16, expires: u32) {
    let text = std::fs::read_to_string(scenario("register_contact.xml")).expect("read scenario");
    let path = gw.dir().join(format!("register_contact_{expires}.xml"));
    std::fs::write(
        &path,
        text.replace("Expires: 3600", &format!("Expires: {expires}")),
    )
    .expect("write scenario");
    let reg = run_scenario(
        &path,
        gw.udp,
        SippOpts {
            keys: vec![("contact_port".into(), port.to_string())],
            ..SippOpts::user(user, "secret")
        },
    )
    .expect("run sipp");
    assert_passes(gw, &reg, &format!("REGISTER {user} (Expires: {expires})"));
}

/// `call_uac.xml` (streams 4 s of tone) hanging up `hold_ms` after the answer.
fn caller_scenario(dir: &Path, hold_ms: u32) -> PathBuf {
    let base = uac_scenario(dir);
    let text = std::fs::read_to_string(&base).expect("read scenario");
    assert!(text.contains(r#"<pause milliseconds="5500"/>"#));
    let path = dir.join(format!("call_uac_{hold_ms}.xml"));
    std::fs::write(
        &path,
        text.replace(
            r#"<pause milliseconds="5500"/>"#,
            &format!(r#"<pause milliseconds="{hold_ms}"/>"#),
        ),
    )
    .expect("write scenario");
    path
}

/// `call_rejected.xml` expecting the final response `code`.
fn rejected_scenario(dir: &Path, code: u16) -> PathBuf {
    let text = std::fs::read_to_string(scenario("call_rejected.xml")).expect("read scenario");
    let path = dir.join(format!("call_rejected_{code}.xml"));
    std::fs::write(&path, text.replace("@CODE@", &code.to_string())).expect("write scenario");
    path
}

/// The first stdout line from `from` on (already read or not) satisfying `pred`, with its
/// index in the history.
fn line_since(
    gw: &mut GatewayProcess,
    from: usize,
    what: &str,
    pred: impl Fn(&str) -> bool,
) -> (usize, String) {
    gw.drain();
    if let Some((i, l)) = gw
        .history
        .iter()
        .enumerate()
        .skip(from)
        .find(|(_, l)| pred(l.trim()))
    {
        return (i, l.trim().to_owned());
    }
    let l = gw.wait_for(WAIT, what, &pred);
    (gw.history.len() - 1, l)
}

/// A `QUEUELOG time|callid|queue|agent|event|data…` line split into its fields (the first
/// is the time).
fn fields(line: &str) -> Vec<String> {
    line.trim_start_matches("QUEUELOG ")
        .split('|')
        .map(str::to_owned)
        .collect()
}

/// The first queue_log `event` from history index `from` on: (index, fields).
fn queue_log_since(gw: &mut GatewayProcess, from: usize, event: &str) -> (usize, Vec<String>) {
    let (i, l) = line_since(gw, from, &format!("QUEUELOG …|{event}"), |l| {
        l.starts_with("QUEUELOG ") && l.split('|').nth(4) == Some(event)
    });
    (i, fields(&l))
}

/// Every queue_log `event` printed so far (fields).
fn queue_log_all(gw: &mut GatewayProcess, event: &str) -> Vec<Vec<String>> {
    gw.drain();
    gw.history
        .iter()
        .filter(|l| l.starts_with("QUEUELOG ") && l.split('|').nth(4) == Some(event))
        .map(|l| fields(l))
        .collect()
}

/// One caller (`user`, hanging up `hold_ms` after the ACD answers) through queue 800, run to
/// the end; returns the agent it was connected to, after that agent's device reads NOT_INUSE
/// again (so the next call sees every agent free or in wrap-up, never still in the call).
fn queue_call(gw: &mut GatewayProcess, user: &str, hold_ms: u32) -> String {
    let mark = gw.mark();
    let out = run_scenario(
        &caller_scenario(gw.dir(), hold_ms),
        gw.udp,
        caller(user, "800"),
    )
    .expect("run sipp");
    assert_passes(gw, &out, &format!("caller {user} through the queue"));
    let (at, connect) = queue_log_since(gw, mark, "CONNECT");
    let agent = connect[3].clone();
    line_since(gw, at, &format!("the end of {agent}'s call"), |l| {
        l.starts_with("QUEUELOG ") && l.contains(&format!("|{agent}|COMPLETE"))
    });
    let idle = format!("DEVICE {agent} NOT_INUSE");
    line_since(gw, at, &format!("`{idle}`"), |l| l == idle);
    agent
}

fn assert_agent_done(gw: &GatewayProcess, phone: &mut SippProcess, who: &str) {
    let out: SippOutcome = phone.wait().expect("agent outcome");
    assert_passes(gw, &out, &format!("{who} answered all its calls"));
}

/// Serial callers through a queue with `strategy` and members 2001, 2002 (and 2003 when
/// `agents` is 3), every agent answering `answers[i]` calls; returns the agents connected,
/// in order.
fn serial(strategy: &str, agents: usize, answers: &[u32], calls: usize) -> Vec<String> {
    let users = ["2001", "2002", "2003"];
    let members = users[..agents]
        .iter()
        .map(|u| format!("\"PJSIP/{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let mut gw = site(
        &format!("strategy = \"{strategy}\"\ntimeout = 5\nmembers = [{members}]"),
        "",
    );
    let within = Duration::from_secs(30 + 10 * calls as u64);
    let mut phones: Vec<SippProcess> = users[..agents]
        .iter()
        .zip(answers)
        .map(|(u, n)| agent(&mut gw, u, *n, within))
        .collect();
    let order: Vec<String> = (0..calls)
        .map(|_| queue_call(&mut gw, "1001", HOLD_MS))
        .collect();
    // Nobody was offered a call and failed to answer it: each offer went to a free agent.
    assert!(
        queue_log_all(&mut gw, "RINGNOANSWER").is_empty(),
        "{order:?}\n{}",
        gw.diag()
    );
    for (u, p) in users.iter().zip(phones.iter_mut()) {
        assert_agent_done(&gw, p, u);
    }
    order
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|u| format!("PJSIP/{u}")).collect()
}

/// fewestcalls: the member with the fewest completed calls from this queue is offered first,
/// so two agents alternate (linear would give 2001 every time).
#[test]
fn fewestcalls_offers_the_agent_with_fewest_calls() {
    let order = serial("fewestcalls", 2, &[2, 2], 4);
    for pair in order.chunks(2) {
        assert_ne!(
            pair[0], pair[1],
            "the agent with fewer calls was skipped: {order:?}"
        );
    }
}

/// rrmemory: round robin remembering where the last caller's search stopped.
#[test]
fn rrmemory_goes_round_the_members() {
    let order = serial("rrmemory", 3, &[2, 1, 1], 4);
    assert_eq!(order, names(&["2001", "2002", "2003", "2001"]));
}

/// rrordered: the same round robin as rrmemory, over the members in their config order.
#[test]
fn rrordered_goes_round_the_members_in_config_order() {
    let order = serial("rrordered", 3, &[2, 1, 1], 4);
    assert_eq!(order, names(&["2001", "2002", "2003", "2001"]));
}

/// random and wrandom: over six calls both of two equal agents are chosen (a strategy that
/// always takes one member, or config order, cannot pass; with the engine's seeded RNG the
/// draws are the same every run).
#[test]
fn random_and_wrandom_use_both_agents() {
    for strategy in ["random", "wrandom"] {
        let users = ["2001", "2002"];
        let mut gw = site(
            &format!(
                "strategy = \"{strategy}\"\ntimeout = 5\nmembers = [\"PJSIP/2001\", \"PJSIP/2002\"]"
            ),
            "",
        );
        // Each agent phone answers any number of calls up to 6 (it is killed at the end).
        let mut phones: Vec<SippProcess> = users
            .iter()
            .map(|u| agent(&mut gw, u, 6, Duration::from_secs(120)))
            .collect();
        let order: Vec<String> = (0..6)
            .map(|_| queue_call(&mut gw, "1001", HOLD_MS))
            .collect();
        for u in users {
            assert!(
                order.iter().any(|a| a == &format!("PJSIP/{u}")),
                "{strategy}: {u} never chosen in {order:?}"
            );
        }
        assert_ne!(
            order,
            names(&["2001", "2002", "2001", "2002", "2001", "2002"]),
            "{strategy}: plain alternation"
        );
        phones.clear();
    }
}

/// Penalties: the lower-penalty member is offered first whatever the member order; the
/// higher-penalty one only while the lower tier is busy.
#[test]
fn lower_penalty_first_higher_tier_when_busy() {
    let mut gw = site(
        "strategy = \"linear\"\ntimeout = 5\nmembers = [\"PJSIP/2001,5\", \"PJSIP/2002,0\"]",
        "",
    );
    let mut a2001 = agent(&mut gw, "2001", 1, Duration::from_secs(90));
    let mut a2002 = agent(&mut gw, "2002", 1, Duration::from_secs(90));
    let mark = gw.mark();
    // The first caller stays 12 s: 2002 (penalty 0, listed second) takes it.
    let mut first = SippProcess::spawn(
        &caller_scenario(gw.dir(), 12_000),
        Some(gw.udp),
        &caller("1001", "800"),
    )
    .expect("first caller");
    let (at, c1) = queue_log_since(&mut gw, mark, "CONNECT");
    assert_eq!(c1[3], "PJSIP/2002", "{c1:?}\n{}", gw.diag());
    // While 2002 is in that call, the next caller goes to the penalty-5 tier: 2001.
    let out = run_scenario(
        &caller_scenario(gw.dir(), HOLD_MS),
        gw.udp,
        caller("1002", "800"),
    )
    .expect("second caller");
    assert_passes(&gw, &out, "second caller");
    let (_, c2) = queue_log_since(&mut gw, at + 1, "CONNECT");
    assert_eq!(c2[3], "PJSIP/2001", "{c2:?}\n{}", gw.diag());
    assert_passes(&gw, &first.wait().expect("first caller"), "first caller");
    assert_agent_done(&gw, &mut a2001, "2001");
    assert_agent_done(&gw, &mut a2002, "2002");
}

/// Wrap-up: after a call an agent is not offered another for `wrapuptime` seconds; a caller
/// arriving meanwhile goes to the other agent, and one arriving when both are in wrap-up is
/// offered the first agent when (and not before) its wrap-up ends.
#[test]
fn agent_in_wrapup_is_not_offered_again() {
    let mut gw = site(
        "strategy = \"linear\"\ntimeout = 5\nwrapuptime = 6\nmembers = [\"PJSIP/2001\", \"PJSIP/2002\"]",
        "",
    );
    let mut a2001 = agent(&mut gw, "2001", 2, Duration::from_secs(120));
    let mut a2002 = agent(&mut gw, "2002", 1, Duration::from_secs(120));
    assert_eq!(queue_call(&mut gw, "1001", HOLD_MS), "PJSIP/2001");
    gw.drain();
    let first_end = gw
        .history
        .iter()
        .rev()
        .find(|l| l.starts_with("QUEUELOG ") && l.contains("|PJSIP/2001|COMPLETE"))
        .map(|l| fields(l))
        .expect("2001's COMPLETE line");
    // 2001 is in wrap-up: linear order notwithstanding, 2002 takes the next caller.
    assert_eq!(queue_call(&mut gw, "1001", HOLD_MS), "PJSIP/2002");
    // Both in wrap-up now: this caller (staying 12 s after the ACD answers) waits for 2001's
    // wrap-up to end.
    let mark = gw.mark();
    let out = run_scenario(
        &caller_scenario(gw.dir(), 12_000),
        gw.udp,
        SippOpts {
            timeout: Duration::from_secs(60),
            ..caller("1001", "800")
        },
    )
    .expect("third caller");
    assert_passes(&gw, &out, "third caller");
    let (_, connect) = queue_log_since(&mut gw, mark, "CONNECT");
    assert_eq!(connect[3], "PJSIP/2001", "{connect:?}\n{}", gw.diag());
    let (t0, t1): (u64, u64) = (
        first_end[0].parse().expect("time"),
        connect[0].parse().expect("time"),
    );
    // queue_log times are whole seconds: allow one for rounding.
    assert!(
        t1 >= t0 + 5,
        "2001 offered {}s after its call ended, within wrapuptime = 6\n{}",
        t1 - t0,
        gw.diag()
    );
    assert_agent_done(&gw, &mut a2001, "2001");
    assert_agent_done(&gw, &mut a2002, "2002");
}

/// maxlen = 1: while one caller waits, the next is not queued: the ACD answers 486 Busy Here
/// (the gateway relays it) and no ENTERQUEUE is logged for it.
#[test]
fn caller_beyond_maxlen_is_refused_busy() {
    let mut gw = site(
        "strategy = \"ringall\"\ntimeout = 5\nmaxlen = 1\nmembers = [\"PJSIP/2001\"]",
        "",
    );
    // Nobody answers (2001 is not registered): the first caller waits 6 s and hangs up.
    let mut first = SippProcess::spawn(
        &caller_scenario(gw.dir(), 6000),
        Some(gw.udp),
        &caller("1001", "800"),
    )
    .expect("first caller");
    let (at, enter) = queue_log_since(&mut gw, 0, "ENTERQUEUE");
    assert_eq!(enter[7], "1", "position 1: {enter:?}");
    let out = run_scenario(
        &rejected_scenario(gw.dir(), 486),
        gw.udp,
        SippOpts {
            keys: vec![("callee".into(), "800".into())],
            ..SippOpts::user("1002", "secret")
        },
    )
    .expect("second caller");
    assert_passes(&gw, &out, "second caller refused with 486 (queue full)");
    assert_passes(&gw, &first.wait().expect("first caller"), "first caller");
    queue_log_since(&mut gw, at, "ABANDON");
    let entered = queue_log_all(&mut gw, "ENTERQUEUE");
    assert_eq!(entered.len(), 1, "{entered:?}");
    // Once the queue is empty again, a caller is queued as usual.
    let mark = gw.mark();
    let out = run_scenario(
        &caller_scenario(gw.dir(), 1000),
        gw.udp,
        caller("1002", "800"),
    )
    .expect("third caller");
    assert_passes(&gw, &out, "third caller");
    queue_log_since(&mut gw, mark, "ENTERQUEUE");
}

/// joinempty = unavailable: with every member unavailable (the agent's phone unregistered) a
/// caller is not queued (480); once the agent registers again, callers join and are connected.
#[test]
fn joinempty_refuses_callers_while_no_member_is_available() {
    let mut gw = site(
        "strategy = \"ringall\"\ntimeout = 5\njoinempty = \"unavailable\"\nmembers = [\"PJSIP/2001\"]",
        "",
    );
    // A device that never registered is never published (the ACD reads it UNKNOWN, which
    // only joinempty = unknown covers): the agent registers, then logs its phone off.
    let port = free_udp_port();
    register_contact(&gw, "2001", port, 3600);
    gw.device("2001", "NOT_INUSE", WAIT);
    register_contact(&gw, "2001", port, 0);
    gw.device("2001", "UNAVAILABLE", WAIT);
    let refused = run_scenario(
        &rejected_scenario(gw.dir(), 480),
        gw.udp,
        SippOpts {
            keys: vec![("callee".into(), "800".into())],
            ..SippOpts::user("1001", "secret")
        },
    )
    .expect("caller");
    assert_passes(&gw, &refused, "caller refused: queue empty (480)");
    assert!(queue_log_all(&mut gw, "ENTERQUEUE").is_empty());
    let mut a2001 = agent(&mut gw, "2001", 1, Duration::from_secs(60));
    assert_eq!(queue_call(&mut gw, "1001", HOLD_MS), "PJSIP/2001");
    assert_agent_done(&gw, &mut a2001, "2001");
}

/// leavewhenempty = unavailable: a waiting caller is taken out of the queue (EXITEMPTY) and
/// hung up when the last member becomes unavailable (its registration removed).
#[test]
fn leavewhenempty_hangs_up_waiting_callers_when_members_go() {
    let mut gw = site(
        "strategy = \"ringall\"\ntimeout = 2\nleavewhenempty = \"unavailable\"\nmembers = [\"PJSIP/2001\"]",
        "",
    );
    // 2001 registered at a port nobody answers on: offers fail, the caller keeps waiting.
    let dead_port = free_udp_port();
    register_contact(&gw, "2001", dead_port, 3600);
    gw.device("2001", "NOT_INUSE", WAIT);
    let mut waiting = SippProcess::spawn(
        &scenario("call_uac_kicked.xml"),
        Some(gw.udp),
        &SippOpts {
            timeout: Duration::from_secs(40),
            ..caller("1001", "800")
        },
    )
    .expect("caller");
    let (at, _) = queue_log_since(&mut gw, 0, "ENTERQUEUE");
    // Still waiting after an offer failed (RINGNOANSWER): not removed while a member is there.
    let (at, _) = queue_log_since(&mut gw, at, "RINGNOANSWER");
    assert!(
        queue_log_all(&mut gw, "EXITEMPTY").is_empty(),
        "{}",
        gw.diag()
    );
    register_contact(&gw, "2001", dead_port, 0);
    gw.device("2001", "UNAVAILABLE", WAIT);
    let (_, exit) = queue_log_since(&mut gw, at, "EXITEMPTY");
    assert_eq!(exit[2], "support", "{exit:?}");
    assert_passes(
        &gw,
        &waiting.wait().expect("caller"),
        "caller hung up by the ACD (BYE)",
    );
}

/// queue_log on PostgreSQL: every line the ACD prints for a queue call is a row of the
/// `queue_log` table in Asterisk's realtime layout (time, callid, queuename, agent, event,
/// data1…data5), read back with `psql`.
#[test]
fn queue_log_rows_on_postgresql() {
    let pg = integration::postgres::Postgres::start().expect("start PostgreSQL");
    let mut gw = site(
        "strategy = \"ringall\"\ntimeout = 5\nmembers = [\"PJSIP/2001\"]",
        &format!("database = {:?}\n", pg.url()),
    );
    let mut a2001 = agent(&mut gw, "2001", 1, Duration::from_secs(60));
    assert_eq!(queue_call(&mut gw, "1001", HOLD_MS), "PJSIP/2001");
    assert_agent_done(&gw, &mut a2001, "2001");
    gw.drain();
    let mut printed: Vec<Vec<String>> = gw
        .history
        .iter()
        .filter(|l| l.starts_with("QUEUELOG "))
        .map(|l| fields(l))
        .collect();
    let events: Vec<&str> = printed.iter().map(|f| f[4].as_str()).collect();
    assert_eq!(events, ["ENTERQUEUE", "CONNECT", "COMPLETECALLER"]);
    for p in &mut printed {
        p.resize(10, String::new());
    }
    printed.sort();
    let psql = |sql: &str| -> String {
        let out = std::process::Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &pg.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(["-d", "postgres", "-X", "-A", "-t", "-F", "|", "-c", sql])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let columns = psql(
        "SELECT column_name FROM information_schema.columns \
         WHERE table_name = 'queue_log' ORDER BY ordinal_position",
    );
    assert_eq!(
        columns.lines().collect::<Vec<_>>(),
        [
            "time",
            "callid",
            "queuename",
            "agent",
            "event",
            "data1",
            "data2",
            "data3",
            "data4",
            "data5"
        ]
    );
    // Rows are written off the call path: poll until all are there.
    let deadline = std::time::Instant::now() + WAIT;
    let rows = loop {
        let mut rows: Vec<Vec<String>> = psql(
            "SELECT time, callid, queuename, agent, event, data1, data2, data3, data4, data5 \
             FROM queue_log",
        )
        .lines()
        .map(|l| l.split('|').map(str::to_owned).collect())
        .collect();
        rows.sort();
        if rows.len() >= printed.len() || std::time::Instant::now() > deadline {
            break rows;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(rows, printed, "table vs printed queue_log\n{}", pg.log());
}

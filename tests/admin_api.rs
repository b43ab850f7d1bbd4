//! The admin API and CLI through the real binary (`callfabric site`, SIPp phones): pause and
//! unpause with a reason (API and CLI) decide who gets the next caller and write queue_log
//! lines as app_queue does; a member added at run time gets a call; the waiting list shows
//! callers in order; a phone pauses itself with a reason code; `/metrics` parses as Prometheus
//! text and moves with activity; the token is enforced.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use integration::free_udp_port;
use integration::gateway::{GatewayProcess, GatewaySpec};
use integration::phones::{answering_phone, assert_passes, caller, scenario, uac_scenario};
use integration::sipp::{run_scenario, SippOpts, SippProcess};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(15);
const TOKEN: &str = "test-token-0123456789abcdef";

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_callfabric"))
}

/// A site with devices 1001, 1002 (callers), 2001 and 2002 (agents), queue 800 "support"
/// (linear) with `members`, and the admin API on a free loopback port with [`TOKEN`].
fn site(members: &[&str], acd_extra: &str) -> GatewayProcess {
    site_with(members, acd_extra, "")
}

/// [`site`] with extra lines in the queue's section.
fn site_with(members: &[&str], acd_extra: &str, queue_extra: &str) -> GatewayProcess {
    let members = members
        .iter()
        .map(|m| format!("{m:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let acd_port = free_udp_port();
    let mut spec = GatewaySpec::new("site-a", &["1001", "1002", "2001", "2002"]);
    spec.command = "site".into();
    // `devices add --supervisor` (issue 13): checked in `devices_and_queue_reload`.
    spec.device_args = vec![("2002".into(), vec!["--supervisor".into()])];
    spec.qualify_interval_secs = 300.0;
    spec.extra = format!(
        r#"
[acd]
udp = "127.0.0.1:{acd_port}"
rtp_ports = "41000-41999"
t1_ms = 100
queue_log = "queue_log"
{acd_extra}
[acd.numbers]
"800" = "support"

[[acd.queue]]
name = "support"
strategy = "linear"
timeout = 5
retry = 1
ringinuse = false
servicelevel = 20
members = [{members}]
{queue_extra}

[http]
listen = "127.0.0.1:0"
token = "{TOKEN}"
"#
    );
    let mut gw = GatewayProcess::start(binary(), spec);
    gw.wait_for(WAIT, "the acd ready line", |l| l.starts_with("acd ready"));
    gw
}

fn http_addr(gw: &mut GatewayProcess) -> String {
    gw.drain();
    // The listener of the process now (port 0: a new one after a restart).
    let since = (gw.history.iter())
        .rposition(|l| l == "--- restart ---")
        .map_or(0, |i| i + 1);
    if let Some(a) = gw.history[since..]
        .iter()
        .find_map(|l| l.strip_prefix("http ready "))
    {
        return a.trim().to_owned();
    }
    gw.wait_for(WAIT, "the http ready line", |l| {
        l.starts_with("http ready ")
    })
    .trim_start_matches("http ready ")
    .to_owned()
}

/// One HTTP/1.1 request; (status, body).
fn http(
    gw: &mut GatewayProcess,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
    content_type: &str,
) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let addr = http_addr(gw);
    let mut conn = std::net::TcpStream::connect(addr.as_str()).expect("connect to the API");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let body = body.unwrap_or("");
    write!(
        conn,
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{auth}\
         Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("request");
    let mut text = String::new();
    conn.read_to_string(&mut text).expect("response");
    let status = text
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text}"));
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, body.to_owned())
}

/// An admin request that must succeed; its JSON answer.
fn admin(gw: &mut GatewayProcess, method: &str, path: &str, body: Option<Value>) -> Value {
    let b = body.map(|b| b.to_string());
    let (status, text) = http(
        gw,
        method,
        path,
        Some(TOKEN),
        b.as_deref(),
        "application/json",
    );
    assert_eq!(status, 200, "{method} {path}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// `callfabric <args> --config <the site's config> --url <its API>` (the token from the
/// config; the config listens on port 0, so the address comes from `--url`); its stdout (must
/// exit 0).
fn cli(gw: &mut GatewayProcess, args: &[&str]) -> String {
    let url = format!("http://{}", http_addr(gw));
    let out = Command::new(binary())
        .args(args)
        .arg("--config")
        .arg(gw.dir().join("site-a.toml"))
        .arg("--url")
        .arg(url)
        .output()
        .expect("run the CLI");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "callfabric {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn queue_log(gw: &mut GatewayProcess, tail: &str) -> String {
    gw.wait_for(WAIT, &format!("QUEUELOG …{tail}"), |l| {
        l.starts_with("QUEUELOG ") && l.contains(tail)
    })
}

/// The fields after the timestamp: `callid|queue|agent|event|data…`.
fn fields(line: &str) -> String {
    line.trim_start_matches("QUEUELOG ")
        .split_once('|')
        .map(|(_, r)| r.to_owned())
        .unwrap_or_default()
}

fn answered_by(gw: &mut GatewayProcess, user: &str) -> SippProcess {
    let phone = answering_phone(gw, user, "call_uas.xml", 1);
    gw.device(user, "NOT_INUSE", WAIT);
    phone
}

fn call_queue(gw: &mut GatewayProcess, from: &str) {
    let out = run_scenario(&uac_scenario(gw.dir()), gw.udp, caller(from, "800")).expect("sipp");
    assert_passes(gw, &out, "queued caller");
}

/// Pause via the API (reason Lunch) sends the next caller past the first member of a linear
/// queue; unpause via the CLI and pause of the other one via the CLI (reason Break) send the
/// following caller to the first. queue_log gets PAUSEALL/PAUSE/UNPAUSEALL/UNPAUSE as
/// app_queue writes them, in the file too.
#[test]
fn pause_and_unpause_via_api_and_cli_choose_the_next_agent() {
    let mut gw = site(&["PJSIP/2001", "PJSIP/2002"], "");
    let mut p2001 = answered_by(&mut gw, "2001");
    let mut p2002 = answered_by(&mut gw, "2002");
    admin(
        &mut gw,
        "POST",
        "/admin/pause",
        Some(json!({"interface": "PJSIP/2001", "reason": "Lunch"})),
    );
    let all = queue_log(&mut gw, "|PAUSEALL|");
    assert_eq!(fields(&all), "NONE|NONE|PJSIP/2001|PAUSEALL|");
    let p = queue_log(&mut gw, "|PAUSE|Lunch");
    assert_eq!(fields(&p), "NONE|support|PJSIP/2001|PAUSE|Lunch");
    let floor = admin(&mut gw, "GET", "/admin/queues", None);
    let a = &floor["queues"][0]["agents"][0];
    assert_eq!(
        (&a["interface"], &a["paused"], &a["pause_reason"]),
        (&json!("PJSIP/2001"), &json!(true), &json!("Lunch")),
        "{floor}"
    );
    let show = cli(&mut gw, &["queue", "show"]);
    assert!(
        show.contains("      PJSIP/2001 (paused:Lunch was "),
        "queue show:\n{show}"
    );
    call_queue(&mut gw, "1001");
    let c = queue_log(&mut gw, "|CONNECT|");
    assert!(
        c.contains("|support|PJSIP/2002|CONNECT|"),
        "{c}\n{}",
        gw.diag()
    );
    assert_passes(&gw, &p2002.wait().expect("2002"), "2002 answered");
    gw.device("2002", "NOT_INUSE", WAIT);

    assert!(cli(&mut gw, &["agent", "unpause", "2001"]).contains("PJSIP/2001 unpaused"));
    let u = queue_log(&mut gw, "|UNPAUSE|");
    assert_eq!(fields(&u), "NONE|support|PJSIP/2001|UNPAUSE|");
    cli(
        &mut gw,
        &[
            "agent",
            "pause",
            "PJSIP/2002",
            "--queue",
            "support",
            "--reason",
            "Break",
        ],
    );
    let p = queue_log(&mut gw, "|PAUSE|Break");
    assert_eq!(fields(&p), "NONE|support|PJSIP/2002|PAUSE|Break");
    call_queue(&mut gw, "1001");
    let c = queue_log(&mut gw, "|CONNECT|");
    assert!(
        c.contains("|support|PJSIP/2001|CONNECT|"),
        "{c}\n{}",
        gw.diag()
    );
    assert_passes(&gw, &p2001.wait().expect("2001"), "2001 answered");
    // The same lines in the queue_log file.
    let deadline = Instant::now() + WAIT;
    loop {
        let file = std::fs::read_to_string(gw.dir().join("queue_log")).unwrap_or_default();
        let rest: Vec<String> = file.lines().map(fields).collect();
        let want = [
            "NONE|NONE|PJSIP/2001|PAUSEALL|",
            "NONE|support|PJSIP/2001|PAUSE|Lunch",
            "NONE|NONE|PJSIP/2001|UNPAUSEALL|",
            "NONE|support|PJSIP/2001|UNPAUSE|",
            "NONE|support|PJSIP/2002|PAUSE|Break",
        ];
        if want.iter().all(|w| rest.iter().any(|r| r == w)) {
            break;
        }
        assert!(Instant::now() < deadline, "queue_log file:\n{file}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A member added at run time (API) gets the next caller; removed (CLI), it is gone.
#[test]
fn member_added_at_runtime_gets_a_call() {
    let mut gw = site(&["PJSIP/2001"], "");
    let mut p2002 = answered_by(&mut gw, "2002");
    admin(
        &mut gw,
        "POST",
        "/admin/members",
        Some(json!({"queue": "support", "interface": "PJSIP/2002", "penalty": 1})),
    );
    let add = queue_log(&mut gw, "|ADDMEMBER|");
    assert_eq!(fields(&add), "MANAGER|support|PJSIP/2002|ADDMEMBER|");
    // Adding again is a conflict.
    let (status, _) = http(
        &mut gw,
        "POST",
        "/admin/members",
        Some(TOKEN),
        Some(r#"{"queue": "support", "interface": "PJSIP/2002"}"#),
        "application/json",
    );
    assert_eq!(status, 409);
    call_queue(&mut gw, "1001");
    let c = queue_log(&mut gw, "|CONNECT|");
    assert!(
        c.contains("|support|PJSIP/2002|CONNECT|"),
        "{c}\n{}",
        gw.diag()
    );
    assert_passes(&gw, &p2002.wait().expect("2002"), "2002 answered");
    assert!(cli(&mut gw, &["member", "remove", "support", "PJSIP/2002"]).contains("removed"));
    let rm = queue_log(&mut gw, "|REMOVEMEMBER|");
    assert_eq!(fields(&rm), "MANAGER|support|PJSIP/2002|REMOVEMEMBER|");
    let floor = admin(&mut gw, "GET", "/admin/queues", None);
    let members: Vec<&str> = floor["queues"][0]["agents"]
        .as_array()
        .expect("agents")
        .iter()
        .filter_map(|a| a["interface"].as_str())
        .collect();
    assert_eq!(members, ["PJSIP/2001"]);
}

/// This node's rows of `queue_member_state` in the site database: (queue, interface,
/// dynamic, penalty, paused, reason), by interface.
fn member_state_rows(gw: &GatewayProcess) -> Vec<(String, String, i64, i64, i64, String)> {
    let url = format!("sqlite://{}", gw.dir().join("site-a.db").display());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(&url).await.expect("site database");
        let rows: Vec<(String, String, i64, i64, i64, String)> = sqlx::query_as(
            "SELECT queuename, interface, dynamic, penalty, paused, reason \
             FROM queue_member_state WHERE node = 'site-a' ORDER BY interface",
        )
        .fetch_all(&pool)
        .await
        .expect("queue_member_state");
        pool.close().await;
        rows
    })
}

/// Asterisk's persistentmembers: a pause with its reason (CLI), a member added at run time
/// (API) and a penalty changed at run time (CLI) are in the database once done, and after the
/// process is killed and started again `queue show` and the API still show them.
#[test]
fn pause_and_runtime_members_survive_a_restart() {
    let mut gw = site(&["PJSIP/2001", "PJSIP/2002"], "");
    cli(&mut gw, &["agent", "pause", "2001", "--reason", "Lunch"]);
    let paused = Instant::now();
    admin(
        &mut gw,
        "POST",
        "/admin/members",
        Some(json!({"queue": "support", "interface": "PJSIP/1002", "penalty": 3})),
    );
    cli(&mut gw, &["member", "penalty", "PJSIP/2002", "4"]);
    queue_log(&mut gw, "|PENALTY|4");
    let want = |i: &str, d: i64, p: i64, paused: i64, r: &str| {
        (
            "support".to_owned(),
            i.to_owned(),
            d,
            p,
            paused,
            r.to_owned(),
        )
    };
    let stored = vec![
        want("PJSIP/1002", 1, 3, 0, ""),
        want("PJSIP/2001", 0, 0, 1, "Lunch"),
        want("PJSIP/2002", 0, 4, 0, ""),
    ];
    // Written off the call path: wait for it before the kill.
    let deadline = Instant::now() + WAIT;
    while member_state_rows(&gw) != stored {
        assert!(
            Instant::now() < deadline,
            "queue_member_state: {:?}",
            member_state_rows(&gw)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The pause has lasted a while before the restart; its clock must not start again.
    std::thread::sleep(Duration::from_secs(5).saturating_sub(paused.elapsed()));
    gw.restart();
    gw.wait_for(WAIT, "the acd ready line", |l| l.starts_with("acd ready"));
    let show = cli(&mut gw, &["queue", "show"]);
    assert!(
        show.contains("      PJSIP/2001 (paused:Lunch was "),
        "queue show:\n{show}"
    );
    let floor = admin(&mut gw, "GET", "/admin/queues", None);
    let lunch = floor["queues"][0]["agents"][0]["paused_secs"].as_u64();
    let lower = paused.elapsed().as_secs().saturating_sub(3);
    assert!(
        lunch.is_some_and(|s| s >= 5 && s + 1 >= lower && s <= paused.elapsed().as_secs() + 1),
        "paused_secs {lunch:?} after {:?}: {floor}",
        paused.elapsed()
    );
    let agents: Vec<(String, bool, String, i64, bool)> = floor["queues"][0]["agents"]
        .as_array()
        .expect("agents")
        .iter()
        .map(|a| {
            (
                a["interface"].as_str().unwrap_or("").to_owned(),
                a["paused"].as_bool().unwrap_or(false),
                a["pause_reason"].as_str().unwrap_or("").to_owned(),
                a["penalty"].as_i64().unwrap_or(-1),
                a["dynamic"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    assert_eq!(
        agents,
        [
            ("PJSIP/2001".into(), true, "Lunch".into(), 0, false),
            ("PJSIP/2002".into(), false, String::new(), 4, false),
            ("PJSIP/1002".into(), false, String::new(), 3, true),
        ],
        "{floor}"
    );
}

/// Two callers wait (no agent registered): the waiting list has them in arrival order with
/// positions, waits and priorities; `queue show` prints them as app_queue does; the live calls
/// list them as waiting. Without the token, or with a wrong one, the admin API refuses.
#[test]
fn waiting_list_shows_callers_in_order() {
    let mut gw = site(&["PJSIP/2001"], "");
    // call_uac.xml, holding 30 s after the answer instead of 5.5.
    let text = std::fs::read_to_string(uac_scenario(gw.dir())).expect("scenario");
    assert!(text.contains(r#"<pause milliseconds="5500"/>"#));
    let long = gw.dir().join("call_uac_long.xml");
    std::fs::write(
        &long,
        text.replace(
            r#"<pause milliseconds="5500"/>"#,
            r#"<pause milliseconds="30000"/>"#,
        ),
    )
    .expect("write");
    let _c1 = SippProcess::spawn(&long, Some(gw.udp), &caller("1001", "800")).expect("caller 1");
    let first = queue_log(&mut gw, "|ENTERQUEUE||1001|1");
    let _c2 = SippProcess::spawn(&long, Some(gw.udp), &caller("1002", "800")).expect("caller 2");
    let second = queue_log(&mut gw, "|ENTERQUEUE||1002|2");
    let id = |l: &str| fields(l).split('|').next().unwrap_or("").to_owned();
    let (id1, id2) = (id(&first), id(&second));
    let w = admin(&mut gw, "GET", "/admin/queues/support/waiting", None);
    let got: Vec<(String, u64, i64)> = w
        .as_array()
        .expect("list")
        .iter()
        .map(|c| {
            (
                c["caller"].as_str().unwrap_or("").to_owned(),
                c["position"].as_u64().unwrap_or(0),
                c["priority"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    assert_eq!(got, [(id1.clone(), 1, 0), (id2.clone(), 2, 0)], "{w}");
    assert!(
        w[0]["wait_secs"].as_u64() >= w[1]["wait_secs"].as_u64(),
        "{w}"
    );
    let show = cli(&mut gw, &["queue", "show", "support"]);
    let p1 = show.find(&format!("      1. {id1} (wait: 0:"));
    let p2 = show.find(&format!("      2. {id2} (wait: 0:"));
    assert!(
        p1.is_some() && p2.is_some() && p1 < p2,
        "queue show:\n{show}"
    );
    assert!(
        show.starts_with("support has 2 calls (max unlimited) in 'linear' strategy"),
        "{show}"
    );
    let calls = admin(&mut gw, "GET", "/admin/calls", None);
    let states: Vec<(&str, &str, &str)> = calls["acd"]
        .as_array()
        .expect("acd calls")
        .iter()
        .map(|c| {
            (
                c["caller"].as_str().unwrap_or(""),
                c["from"].as_str().unwrap_or(""),
                c["state"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            (id1.as_str(), "1001", "waiting"),
            (id2.as_str(), "1002", "waiting")
        ]
    );
    // The token.
    for token in [None, Some("wrong-token-0123456789")] {
        let (status, body) = http(&mut gw, "GET", "/admin/queues", token, None, "text/plain");
        assert_eq!(status, 401, "{body}");
    }
}

/// The phone pauses itself: `*47` + reason code 1 ("Lunch") pauses it in all its queues;
/// `*48` unpauses.
#[test]
fn phone_pauses_with_a_reason_code() {
    let mut gw = site(&["PJSIP/2002"], "[acd.pause_reasons]\n\"1\" = \"Lunch\"\n");
    let dial = |gw: &GatewayProcess, code: &str| {
        run_scenario(
            &scenario("call_uac_feature.xml"),
            gw.udp,
            SippOpts {
                keys: vec![
                    ("callee".into(), code.into()),
                    ("sdp_port".into(), free_udp_port().to_string()),
                ],
                timeout: Duration::from_secs(20),
                ..SippOpts::user("2002", "secret")
            },
        )
        .expect("run sipp")
    };
    let out = dial(&gw, "*471");
    assert_passes(&gw, &out, "pause with *471");
    let p = queue_log(&mut gw, "|PAUSE|Lunch");
    assert_eq!(fields(&p), "NONE|support|PJSIP/2002|PAUSE|Lunch");
    let out = dial(&gw, "*48");
    assert_passes(&gw, &out, "unpause with *48");
    let u = queue_log(&mut gw, "|UNPAUSE|");
    assert_eq!(fields(&u), "NONE|support|PJSIP/2002|UNPAUSE|");
}

/// `/metrics` parses as Prometheus text; the reachable devices, the queue's joined counter,
/// the calls ended and overload control's admissions move with a registration and a call.
#[test]
fn metrics_parse_and_move_with_activity() {
    let mut gw = site(&["PJSIP/2001"], "");
    let scrape = |gw: &mut GatewayProcess| {
        let (status, text) = http(gw, "GET", "/metrics", None, None, "text/plain");
        assert_eq!(status, 200, "{text}");
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        prometheus_parse::Scrape::parse(lines).expect("Prometheus text")
    };
    let value = |s: &prometheus_parse::Scrape, name: &str, label: Option<(&str, &str)>| {
        s.samples
            .iter()
            .filter(|x| x.metric == name)
            .filter(|x| label.is_none_or(|(k, v)| x.labels.get(k) == Some(v)))
            .map(|x| match x.value {
                prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
            .sum::<f64>()
    };
    let before = scrape(&mut gw);
    assert_eq!(value(&before, "callfabric_bus_online", None), 1.0);
    assert_eq!(value(&before, "callfabric_devices_reachable", None), 0.0);
    assert_eq!(
        value(
            &before,
            "callfabric_queue_callers_total",
            Some(("event", "joined"))
        ),
        0.0
    );
    assert!(before
        .samples
        .iter()
        .any(|s| s.metric == "callfabric_queue_members"
            && s.labels.get("state") == Some("unavailable")));
    let mut p = answered_by(&mut gw, "2001");
    call_queue(&mut gw, "1001");
    queue_log(&mut gw, "|COMPLETECALLER|");
    assert_passes(&gw, &p.wait().expect("2001"), "2001 answered");
    let _ = gw.call_ended(WAIT);
    let after = scrape(&mut gw);
    assert!(value(&after, "callfabric_devices_reachable", None) >= 1.0);
    assert_eq!(
        value(
            &after,
            "callfabric_queue_callers_total",
            Some(("event", "answered"))
        ),
        1.0
    );
    assert!(value(&after, "callfabric_gateway_calls_ended_total", None) >= 2.0);
    assert!(value(&after, "callfabric_rtp_packets_in_total", None) > 100.0);
    assert!(after
        .samples
        .iter()
        .any(|s| s.metric == "callfabric_rtp_jitter_ms_count"));
    // Register shards: the default, unsharded (issue 16).
    assert_eq!(value(&after, "callfabric_gateway_sip_shards", None), 1.0);
    // The relay's threads: one per core, ordinary priority (no rtp_realtime_priority).
    let cores = media::relay_threads_per_core() as f64;
    assert_eq!(
        value(
            &after,
            "callfabric_rtp_relay_threads",
            Some(("scheduling", "ordinary"))
        ),
        cores
    );
    assert_eq!(
        value(
            &after,
            "callfabric_rtp_relay_threads",
            Some(("scheduling", "realtime"))
        ),
        0.0
    );
    assert_eq!(
        value(&after, "callfabric_rtp_relay_busy_cap_sleeps_total", None),
        0.0
    );
    assert_eq!(
        value(
            &after,
            "callfabric_gateway_register_shard_dropped_total",
            None
        ),
        0.0
    );
    // REGISTER 200s not held for their commit (held ones at their bound): exported, none.
    assert!(after
        .samples
        .iter()
        .any(|s| s.metric == "callfabric_gateway_register_unheld_total"));
    assert_eq!(
        value(&after, "callfabric_gateway_register_unheld_total", None),
        0.0
    );
    // REGISTER refreshes written as changes (those waiting to be written behind at their
    // bound): exported, none.
    assert!(after
        .samples
        .iter()
        .any(|s| s.metric == "callfabric_gateway_register_behind_full_total"));
    assert_eq!(
        value(
            &after,
            "callfabric_gateway_register_behind_full_total",
            None
        ),
        0.0
    );
    // Non-INVITE server transactions the gateway never answered (issue 16): exported, none.
    assert!(after
        .samples
        .iter()
        .any(|s| s.metric == "callfabric_gateway_sip_transactions_abandoned_total"));
    assert_eq!(
        value(
            &after,
            "callfabric_gateway_sip_transactions_abandoned_total",
            None
        ),
        0.0
    );
    // Authenticated REGISTERs answered 503 because the shards' queue to the core was full:
    // exported (also unsharded), none here.
    assert!(after
        .samples
        .iter()
        .any(|s| s.metric == "callfabric_gateway_register_core_queue_full_total"));
    assert_eq!(
        value(
            &after,
            "callfabric_gateway_register_core_queue_full_total",
            None
        ),
        0.0
    );
    // Overload control counts the new requests it admitted (the REGISTERs, the INVITEs);
    // nothing was shed on an idle gateway.
    let overload = |action| {
        value(
            &after,
            "callfabric_gateway_overload_total",
            Some(("action", action)),
        )
    };
    assert!(
        overload("admitted") >= 2.0,
        "admitted {}",
        overload("admitted")
    );
    assert_eq!(overload("rejected_503"), 0.0);
    assert_eq!(
        value(&after, "callfabric_gateway_overload_shedding", None),
        0.0
    );
    // Datagrams dropped before the core: a garbage one is counted as unparsable (a datagram
    // cannot exceed the default size limit, 64 KiB); the kernel dropped nothing at an idle
    // listener's socket.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    udp.send_to(b"GARBAGE / SIP/2.0\r\n\r\n", gw.udp)
        .expect("send");
    let dropped = |m: &prometheus_parse::Scrape, reason| {
        value(
            m,
            "callfabric_gateway_sip_datagrams_dropped_total",
            Some(("reason", reason)),
        )
    };
    let was = dropped(&after, "unparsable");
    let deadline = Instant::now() + WAIT;
    let last = loop {
        let m = scrape(&mut gw);
        if dropped(&m, "unparsable") > was {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "the garbage datagram was not counted"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(dropped(&last, "oversize"), 0.0);
    assert_eq!(dropped(&last, "socket_full"), 0.0);
    // The ACD node's listener has its own counts: none dropped.
    for reason in ["oversize", "unparsable", "socket_full"] {
        assert_eq!(
            value(
                &last,
                "callfabric_acd_sip_datagrams_dropped_total",
                Some(("reason", reason))
            ),
            0.0,
            "{reason}"
        );
    }
    assert!(last
        .samples
        .iter()
        .any(|s| s.metric == "callfabric_acd_sip_datagrams_dropped_total"));
}

/// Devices through the API: created, listed (without credentials), a CSV import checked whole
/// before anything is written (a bad line is named, nothing stored), then imported; deleted.
/// Queue reload: a member added to the config file is a member after `queue reload`
/// (CONFIGRELOAD), without a restart; a queue added with a new number takes calls on it.
#[test]
fn devices_and_queue_reload() {
    let mut gw = site(&["PJSIP/2001"], "");
    admin(
        &mut gw,
        "POST",
        "/admin/devices",
        Some(json!({"user": "3001", "password": "pw3001", "extension": "3001", "name": "Desk"})),
    );
    let users = |gw: &mut GatewayProcess| -> Vec<String> {
        admin(gw, "GET", "/admin/devices", None)
            .as_array()
            .expect("devices")
            .iter()
            .filter_map(|d| d["user"].as_str().map(str::to_owned))
            .collect()
    };
    assert!(users(&mut gw).contains(&"3001".to_owned()));
    let list = admin(&mut gw, "GET", "/admin/devices", None);
    assert!(!list.to_string().contains("ha1"), "{list}");
    // Message waiting (issue 14): a device's mailbox and MWI mode, default <user>@default.
    admin(
        &mut gw,
        "POST",
        "/admin/devices",
        Some(
            json!({"user": "3004", "password": "pw", "mailbox": "3001@default", "mwi": "unsolicited"}),
        ),
    );
    let list = admin(&mut gw, "GET", "/admin/devices", None);
    let dev = |u: &str| {
        list.as_array()
            .and_then(|a| a.iter().find(|d| d["user"] == u).cloned())
            .unwrap_or_else(|| panic!("no {u} in {list}"))
    };
    assert_eq!(dev("3004")["mailbox"], "3001@default", "{list}");
    assert_eq!(dev("3004")["mwi"], "unsolicited", "{list}");
    assert_eq!(dev("3001")["mailbox"], "3001@default", "{list}");
    assert_eq!(dev("3001")["mwi"], "subscribe", "{list}");
    // Sites (issue 17) and supervisors (issue 13): a device made through the API belongs to
    // this node's site unless it names one; the supervisor flag is stored, as `devices add
    // --supervisor` stores it. PUT is POST's alias.
    admin(
        &mut gw,
        "PUT",
        "/admin/devices",
        Some(json!({"user": "3006", "password": "pw", "site": "lyon", "supervisor": true})),
    );
    let list = admin(&mut gw, "GET", "/admin/devices", None);
    let dev = |u: &str| {
        list.as_array()
            .and_then(|a| a.iter().find(|d| d["user"] == u).cloned())
            .unwrap_or_else(|| panic!("no {u} in {list}"))
    };
    assert_eq!(dev("3001")["site"], "site-a", "{list}");
    assert_eq!(dev("3001")["supervisor"], false, "{list}");
    assert_eq!(dev("3006")["site"], "lyon", "{list}");
    assert_eq!(dev("3006")["supervisor"], true, "{list}");
    assert_eq!(
        dev("2002")["supervisor"],
        true,
        "devices add --supervisor: {list}"
    );
    assert_eq!(dev("2001")["supervisor"], false, "{list}");
    let (status, body) = http(
        &mut gw,
        "POST",
        "/admin/devices/import",
        Some(TOKEN),
        Some("user,password,site,supervisor\n3007,pw,lyon,yes\n3008,pw,lyon,often\n"),
        "text/csv",
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("CSV line 3") && body.contains("supervisor"),
        "{body}"
    );
    let (status, body) = http(
        &mut gw,
        "POST",
        "/admin/devices",
        Some(TOKEN),
        Some(r#"{"user": "3005", "password": "pw", "mwi": "sometimes"}"#),
        "application/json",
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("mwi"), "{body}");
    let bad = "user,password,extension\n3002,pw,3002\n3003,,3003\n";
    let (status, body) = http(
        &mut gw,
        "POST",
        "/admin/devices/import",
        Some(TOKEN),
        Some(bad),
        "text/csv",
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("CSV line 3"), "{body}");
    assert!(
        !users(&mut gw).contains(&"3002".to_owned()),
        "nothing written"
    );
    let good = "user,password,extension\n3002,pw,3002\n3003,pw,3003\n";
    let (status, body) = http(
        &mut gw,
        "POST",
        "/admin/devices/import",
        Some(TOKEN),
        Some(good),
        "text/csv",
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"imported\":2"), "{body}");
    let u = users(&mut gw);
    assert!(
        u.contains(&"3002".to_owned()) && u.contains(&"3003".to_owned()),
        "{u:?}"
    );
    let with_site = "user,password,site,supervisor\n3007,pw,lyon,yes\n3008,pw,,\n";
    let (status, body) = http(
        &mut gw,
        "POST",
        "/admin/devices/import",
        Some(TOKEN),
        Some(with_site),
        "text/csv",
    );
    assert_eq!(status, 200, "{body}");
    let list = admin(&mut gw, "GET", "/admin/devices", None);
    let dev = |u: &str| {
        list.as_array()
            .and_then(|a| a.iter().find(|d| d["user"] == u).cloned())
            .unwrap_or_else(|| panic!("no {u} in {list}"))
    };
    // A CSV without the columns (3002): this node's site, no supervisor.
    assert_eq!(dev("3002")["site"], "site-a", "{list}");
    assert_eq!(dev("3002")["supervisor"], false, "{list}");
    assert_eq!(dev("3007")["site"], "lyon", "{list}");
    assert_eq!(dev("3007")["supervisor"], true, "{list}");
    assert_eq!(
        dev("3008")["site"],
        "",
        "an empty site: every gateway's: {list}"
    );
    assert_eq!(dev("3008")["supervisor"], false, "{list}");
    admin(&mut gw, "DELETE", "/admin/devices/3001", None);
    assert!(!users(&mut gw).contains(&"3001".to_owned()));
    let (status, _) = http(
        &mut gw,
        "DELETE",
        "/admin/devices/3001",
        Some(TOKEN),
        None,
        "text/plain",
    );
    assert_eq!(status, 404);

    let cfg = gw.dir().join("site-a.toml");
    let text = std::fs::read_to_string(&cfg).expect("config");
    let changed = text
        .replace(
            r#"members = ["PJSIP/2001"]"#,
            r#"members = ["PJSIP/2001", "PJSIP/2002"]

[[acd.queue]]
name = "sales"
strategy = "linear"
timeout = 5
retry = 1
members = ["PJSIP/2001"]"#,
        )
        .replace(
            "\"800\" = \"support\"",
            "\"800\" = \"support\"\n\"801\" = \"sales\"",
        );
    assert_ne!(text, changed);
    std::fs::write(&cfg, changed).expect("write config");
    let out = cli(&mut gw, &["queue", "reload"]);
    assert!(out.contains("updated [\"support\"]"), "{out}");
    assert!(out.contains("added [\"sales\"]"), "{out}");
    let r = queue_log(&mut gw, "|CONFIGRELOAD|");
    assert_eq!(fields(&r), "NONE|NONE|NONE|CONFIGRELOAD|");
    let floor = admin(&mut gw, "GET", "/admin/queues", None);
    let support = floor["queues"]
        .as_array()
        .expect("queues")
        .iter()
        .find(|q| q["queue"] == "support")
        .expect("support");
    let members: Vec<&str> = support["agents"]
        .as_array()
        .expect("agents")
        .iter()
        .filter_map(|a| a["interface"].as_str())
        .collect();
    assert_eq!(members, ["PJSIP/2001", "PJSIP/2002"]);

    // The new queue's number is routed to the ACD at once: a caller on 801 reaches its agent.
    let mut agent = answered_by(&mut gw, "2001");
    let out = run_scenario(&uac_scenario(gw.dir()), gw.udp, caller("1001", "801")).expect("sipp");
    assert_passes(&gw, &out, "a caller on the reloaded queue's new number");
    queue_log(&mut gw, "|sales|PJSIP/2001|CONNECT|");
    let out = agent.wait().expect("agent outcome");
    assert_passes(&gw, &out, "the agent of the new queue");
}

/// Autopause through the binary: with `autopause = "yes"` and `autopausebusy`, the agent whose
/// phone refuses the offer (486) is paused with app_queue's reason `Auto-Pause`, and the
/// caller goes on to the next agent.
#[test]
fn agent_refusing_an_offer_is_autopaused() {
    let mut gw = site_with(
        &["PJSIP/2001", "PJSIP/2002"],
        "",
        "autopause = \"yes\"\nautopausebusy = true",
    );
    let _busy = answering_phone(&mut gw, "2001", "call_uas_busy.xml", 1);
    gw.device("2001", "NOT_INUSE", WAIT);
    let mut p2002 = answered_by(&mut gw, "2002");
    call_queue(&mut gw, "1001");
    let p = queue_log(&mut gw, "|PAUSE|");
    assert_eq!(fields(&p), "NONE|support|PJSIP/2001|PAUSE|Auto-Pause");
    let c = queue_log(&mut gw, "|CONNECT|");
    assert!(
        c.contains("|support|PJSIP/2002|CONNECT|"),
        "{c}\n{}",
        gw.diag()
    );
    assert_passes(&gw, &p2002.wait().expect("2002"), "2002 answered");
    let floor = admin(&mut gw, "GET", "/admin/queues", None);
    assert_eq!(
        floor["queues"][0]["agents"][0]["pause_reason"],
        json!("Auto-Pause"),
        "{floor}"
    );
}

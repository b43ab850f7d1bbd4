//! End to end: `callfabric site` (gateway + ACD in one process, in-process bus, SQLite) with
//! SIPp as the caller and as the agents' phones. Queue 800 "support" with agents 2001 and
//! 2002; the caller authenticates, the gateway routes 800 to the ACD, which answers with music
//! on hold and offers the call to an agent through the gateway; media is bridged.

use std::path::Path;
use std::time::Duration;

use integration::free_udp_port;
use integration::gateway::{GatewayProcess, GatewaySpec};
use integration::phones::{
    answering_phone, assert_passes, caller, scenario, uac_scenario, STREAM_PACKETS,
};
use integration::sipp::{run_scenario, SippOpts, SippProcess};

const WAIT: Duration = Duration::from_secs(15);

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_callfabric"))
}

/// A site with devices 1001 (caller), 2001 and 2002 (agents) and queue 800.
fn site(strategy: &str) -> GatewayProcess {
    site_with(strategy, &["PJSIP/2001", "PJSIP/2002"], "", "")
}

/// [`site`] with other members and extra `[acd]` lines.
fn site_with(
    strategy: &str,
    members: &[&str],
    acd_extra: &str,
    queue_extra: &str,
) -> GatewayProcess {
    let members = members
        .iter()
        .map(|m| format!("{m:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let acd_port = free_udp_port();
    let mut spec = GatewaySpec::new("site-a", &["1001", "2001", "2002"]);
    spec.command = "site".into();
    spec.qualify_interval_secs = 300.0;
    spec.extra = format!(
        r#"
[acd]
udp = "127.0.0.1:{acd_port}"
rtp_ports = "40000-40999"
t1_ms = 100
queue_log = "queue_log"
{acd_extra}
[acd.numbers]
"800" = "support"

[[acd.queue]]
name = "support"
strategy = "{strategy}"
timeout = 5
retry = 1
ringinuse = false
servicelevel = 20
members = [{members}]
{queue_extra}

[http]
listen = "127.0.0.1:0"
"#
    );
    let mut gw = GatewayProcess::start(binary(), spec);
    gw.wait_for(WAIT, "the acd ready line", |l| l.starts_with("acd ready"));
    gw
}

/// `GET path` on the status API, as JSON.
fn api(gw: &mut GatewayProcess, path: &str) -> serde_json::Value {
    gw.api(path, WAIT)
}

/// An agent phone (answers one call, echoes RTP) registered as `user`; waits until it reads
/// NOT_INUSE.
fn answered_by(gw: &mut GatewayProcess, user: &str) -> SippProcess {
    let phone = answering_phone(gw, user, "call_uas.xml", 1);
    gw.device(user, "NOT_INUSE", WAIT);
    phone
}

fn queue_log(gw: &mut GatewayProcess, event: &str) -> String {
    gw.wait_for(WAIT, &format!("QUEUELOG …|{event}"), |l| {
        l.starts_with("QUEUELOG ") && l.split('|').nth(4) == Some(event)
    })
}

#[test]
fn caller_is_queued_connected_to_an_agent_and_media_flows() {
    let mut gw = site("ringall");
    let mut agent_2001 = answered_by(&mut gw, "2001");
    let out =
        run_scenario(&uac_scenario(gw.dir()), gw.udp, caller("1001", "800")).expect("run sipp");
    assert_passes(&gw, &out, "caller through the queue");
    let enter = queue_log(&mut gw, "ENTERQUEUE");
    assert!(
        enter.contains("|support|NONE|ENTERQUEUE||1001|1"),
        "{enter}"
    );
    let connect = queue_log(&mut gw, "CONNECT");
    assert!(
        connect.contains("|support|PJSIP/2001|CONNECT|"),
        "{connect}"
    );
    let complete = queue_log(&mut gw, "COMPLETECALLER");
    assert!(
        complete.contains("|support|PJSIP/2001|COMPLETECALLER|"),
        "{complete}"
    );
    assert_passes(
        &gw,
        &agent_2001.wait().expect("agent outcome"),
        "agent 2001 answered",
    );
    // Two gateway calls: caller → ACD and ACD → agent. The agent's leg carried the caller's
    // stream (after the connect) and its echo came back.
    let first = gw.call_ended(WAIT);
    let second = gw.call_ended(WAIT);
    let (to_acd, to_agent) = if first.num("a_in") >= STREAM_PACKETS {
        (first, second)
    } else {
        (second, first)
    };
    assert_eq!(to_acd.num("a_in"), STREAM_PACKETS, "{}", to_acd.line);
    assert!(
        to_agent.num("b_out") > 50,
        "the caller's audio reached the agent: {}",
        to_agent.line
    );
    assert!(
        to_agent.num("b_in") > 50,
        "the agent's audio came back: {}",
        to_agent.line
    );
    assert!(
        to_acd.num("a_out") > to_agent.num("b_in"),
        "music on hold, then the agent: {}",
        to_acd.line
    );
    let log = std::fs::read_to_string(gw.dir().join("queue_log")).expect("queue_log file");
    assert!(
        log.lines().any(|l| l.ends_with("ENTERQUEUE||1001|1")),
        "{log}"
    );

    // The same queue_log in the database table, and one CDR per gateway call.
    let url = format!("sqlite://{}", gw.dir().join("site-a.db").display());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (rows, cdrs) = rt.block_on(async {
        let store = gateway::devices::DeviceStore::open(&url)
            .await
            .expect("open the site database");
        let queue_log = acd::queue_log::QueueLogStore::open(&url)
            .await
            .expect("open the site database's queue_log");
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let rows = queue_log.rows().await.expect("queue_log table");
            // ringall's offer to 2002 (not registered) is refused with 480: a CDR of its own.
            let cdrs: Vec<_> = store
                .cdrs()
                .await
                .expect("cdr table")
                .into_iter()
                .filter(|c| !(c.dst == "2002" && c.reason == "480"))
                .collect();
            let done = rows.iter().any(|r| r.event == "COMPLETECALLER") && cdrs.len() >= 2;
            if done || std::time::Instant::now() > deadline {
                break (rows, cdrs);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    // 2002 is not registered (UNAVAILABLE): no RINGNOANSWER for it (an offer the gateway
    // refused before ringing would not be one either: two_acd_nodes_never_both_get_one_agent).
    let events: Vec<&str> = rows.iter().map(|r| r.event.as_str()).collect();
    assert_eq!(
        events,
        ["ENTERQUEUE", "CONNECT", "COMPLETECALLER"],
        "{rows:?}"
    );
    assert!(
        rows.iter()
            .any(|r| r.event == "CONNECT" && r.agent == "PJSIP/2001"),
        "{rows:?}"
    );
    assert_eq!(cdrs.len(), 2, "{cdrs:?}");
    let to_queue = cdrs
        .iter()
        .find(|c| c.dst == "800")
        .expect("CDR of the call to 800");
    assert_eq!(to_queue.src, "1001");
    assert_eq!(to_queue.disposition, "ANSWERED");
    assert_eq!(to_queue.rtp_in_a, STREAM_PACKETS as i64, "{to_queue:?}");
    assert!(to_queue.billsec >= 4, "{to_queue:?}");
    let to_agent = cdrs
        .iter()
        .find(|c| c.dst == "2001")
        .expect("CDR of the offer to 2001");
    assert_eq!(to_agent.dst_device.as_deref(), Some("PJSIP/2001"));
    assert_eq!(to_agent.disposition, "ANSWERED");
    // Reporting as a supervisor expects (Asterisk's uniqueid/linkedid): the caller's call is
    // the first of the chain; the agent's call and every queue_log line carry its uniqueid;
    // the caller's row names the agent; CONNECT names the agent's call (its CDR's uniqueid).
    assert_eq!(to_queue.linkedid, to_queue.uniqueid, "{to_queue:?}");
    assert_eq!(to_agent.linkedid, to_queue.uniqueid, "{to_agent:?}");
    assert_ne!(to_agent.uniqueid, to_queue.uniqueid);
    assert_eq!(
        to_queue.agent.as_deref(),
        Some("PJSIP/2001"),
        "{to_queue:?}"
    );
    assert_eq!(to_agent.agent, None, "{to_agent:?}");
    assert!(
        rows.iter().all(|r| r.callid == to_queue.uniqueid),
        "queue_log callid = the caller's linked id {}: {rows:?}",
        to_queue.uniqueid
    );
    let connect = rows.iter().find(|r| r.event == "CONNECT").expect("CONNECT");
    assert_eq!(
        connect.data.get(1),
        Some(&to_agent.uniqueid),
        "CONNECT's bridged channel: {connect:?}"
    );

    // Per-queue and per-agent statistics on the status API.
    let queues = api(&mut gw, "/queues");
    let q = &queues[0];
    assert_eq!(q["queue"], "support", "{queues}");
    assert_eq!(q["joined"], 1, "{queues}");
    assert_eq!(q["answered"], 1, "{queues}");
    assert_eq!(q["abandoned"], 0, "{queues}");
    assert_eq!(q["completed"], 1, "{queues}");
    assert_eq!(q["service_level_pct"], 100.0, "{queues}");
    let m2001 = q["members"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["interface"] == "PJSIP/2001"))
        .expect("member 2001");
    assert_eq!(m2001["answered"], 1, "{queues}");
    assert_eq!(m2001["calls"], 1, "{queues}");
    let devices = api(&mut gw, "/devices");
    assert_eq!(devices["PJSIP/2001"], "NOT_INUSE", "{devices}");
}

#[test]
fn agent_busy_on_another_call_is_skipped() {
    let mut gw = site("linear");
    // 2001 is first in linear order but busy: the gateway refuses the offer (ringinuse=no),
    // and the call goes to 2002.
    let mut agent_2002 = answered_by(&mut gw, "2002");
    let mut busy_2001 = answered_by(&mut gw, "2001");
    let mut side_call = SippProcess::spawn(
        &uac_scenario(gw.dir()),
        Some(gw.udp),
        &caller("1001", "2001"),
    )
    .expect("side call");
    gw.device("2001", "INUSE", WAIT);
    let out =
        run_scenario(&uac_scenario(gw.dir()), gw.udp, caller("1001", "800")).expect("run sipp");
    assert_passes(&gw, &out, "queued caller");
    let connect = queue_log(&mut gw, "CONNECT");
    assert!(
        connect.contains("|support|PJSIP/2002|CONNECT|"),
        "the busy agent was skipped: {connect}\n{}",
        gw.diag()
    );
    assert_passes(&gw, &side_call.wait().expect("side call"), "side call");
    assert_passes(&gw, &busy_2001.wait().expect("2001"), "2001");
    assert_passes(&gw, &agent_2002.wait().expect("2002"), "2002");
}

#[test]
fn caller_hanging_up_while_waiting_is_abandon() {
    let mut gw = site("ringall");
    // No agent registered: the caller waits (music on hold) and hangs up after 5.5 s.
    let out =
        run_scenario(&uac_scenario(gw.dir()), gw.udp, caller("1001", "800")).expect("run sipp");
    assert_passes(&gw, &out, "caller waits and hangs up");
    let abandon = queue_log(&mut gw, "ABANDON");
    // ABANDON|position|original position|waittime
    let fields: Vec<&str> = abandon.split('|').collect();
    assert_eq!(fields.get(5..7), Some(&["1", "1"][..]), "{abandon}");
    let wait: u64 = fields
        .get(7)
        .and_then(|w| w.parse().ok())
        .expect("waittime");
    assert!((4..=8).contains(&wait), "{abandon}");
    let ended = gw.call_ended(WAIT);
    assert!(
        ended.num("a_out") > 150,
        "the caller heard music on hold: {}",
        ended.line
    );
}

/// The claim race: two ACD nodes (separate processes, each with its own caller in its own
/// queue) offer the same single agent at the same moment. The owning gateway is the arbiter:
/// it lets one offer ring and refuses the other (486 + X-CF-Refused), so the agent never has two
/// calls; the refused node logs no RINGNOANSWER for it (the phone never rang: app_queue logs
/// nothing for a member it could not ring) and gets the agent once the first call is over. The agent's
/// phone hangs up each call after 1.5 s, so the refused node's caller is still waiting then.
#[test]
fn two_acd_nodes_never_both_get_one_agent() {
    let (acd1, acd2, gw_port) = (free_udp_port(), free_udp_port(), free_udp_port());
    let mut spec = GatewaySpec::new("gw-a", &["1001", "1002", "2001"]);
    spec.qualify_interval_secs = 300.0;
    spec.udp_port = Some(gw_port);
    spec.extra = format!(
        "\n[[gateway.trunk]]\nname = \"acd1\"\naddress = \"127.0.0.1:{acd1}\"\nprefixes = [\"800\"]\n\
         \n[[gateway.trunk]]\nname = \"acd2\"\naddress = \"127.0.0.1:{acd2}\"\nprefixes = [\"801\"]\n"
    );
    let mut gw = GatewayProcess::start(binary(), spec);
    let node = |name: &str, port: u16, number: &str, rtp: &str| {
        let mut s = GatewaySpec::new(name, &[]);
        s.command = "acd".into();
        s.extra = format!(
            r#"
[acd]
udp = "127.0.0.1:{port}"
rtp_ports = "{rtp}"
t1_ms = 100

[acd.numbers]
"{number}" = "support"

[[acd.gateway]]
name = "gw-a"
address = "127.0.0.1:{gw_port}"

[[acd.queue]]
name = "support"
strategy = "ringall"
timeout = 10
retry = 1
ringinuse = false
members = ["PJSIP/2001"]
"#
        );
        GatewayProcess::start(binary(), s)
    };
    let mut n1 = node("acd-1", acd1, "800", "41000-41499");
    let mut n2 = node("acd-2", acd2, "801", "41500-41999");

    // The agent's phone answers one call at a time and hangs each up after 1.5 s: the offer
    // that got through, then the refused node's later one.
    let sip_port = free_udp_port();
    let media_port = integration::free_media_port();
    let mut phone = SippProcess::spawn(
        &scenario("call_uas_hangup.xml"),
        None,
        &SippOpts {
            local_port: Some(sip_port),
            calls: 2,
            timeout: Duration::from_secs(60),
            extra_args: vec!["-rtp_echo".into(), "-mp".into(), media_port.to_string()],
            ..SippOpts::default()
        },
    )
    .expect("agent phone");
    let reg = run_scenario(
        &scenario("register_contact.xml"),
        gw.udp,
        SippOpts {
            keys: vec![("contact_port".into(), sip_port.to_string())],
            ..SippOpts::user("2001", "secret")
        },
    )
    .expect("register");
    assert_passes(&gw, &reg, "agent registration");

    // Both callers at once; each waits (silent) until its ACD hangs up on it, which happens
    // when the agent hangs up, so both pass only if both got the agent.
    let feature = scenario("call_uac_feature.xml");
    let mut c1 =
        SippProcess::spawn(&feature, Some(gw.udp), &caller("1001", "800")).expect("caller 1");
    let mut c2 = SippProcess::spawn(
        &feature,
        Some(gw.udp),
        &SippOpts {
            service: Some("1002".into()),
            auth_user: Some("1002".into()),
            ..caller("1001", "801")
        },
    )
    .expect("caller 2");
    let out1 = c1.wait().expect("caller 1");
    let out2 = c2.wait().expect("caller 2");
    assert_passes(
        &gw,
        &out1,
        "caller 1: queued, then hung up after its agent call",
    );
    assert_passes(
        &gw,
        &out2,
        "caller 2: queued, then hung up after its agent call",
    );
    let agent = phone.wait().expect("agent phone");
    assert_passes(
        &gw,
        &agent,
        "the agent's phone: two calls, each hung up by it",
    );
    assert_eq!(
        agent.successful,
        2,
        "the agent's phone took one call per node\n{}",
        agent.describe()
    );

    // Each node's queue_log outcomes, in order, once its agent call is complete.
    let outcomes = |n: &mut GatewayProcess| -> Vec<String> {
        n.drain();
        if !n.history.iter().any(|l| l.contains("|COMPLETEAGENT|")) {
            n.wait_for(WAIT, "COMPLETEAGENT", |l| l.contains("|COMPLETEAGENT|"));
        }
        n.history
            .iter()
            .filter_map(|l| l.strip_prefix("QUEUELOG ")?.split('|').nth(4))
            .filter(|e| {
                [
                    "RINGNOANSWER",
                    "RINGCANCELED",
                    "CONNECT",
                    "COMPLETEAGENT",
                    "COMPLETECALLER",
                    "ABANDON",
                ]
                .contains(e)
            })
            .map(str::to_owned)
            .collect()
    };
    let (o1, o2) = (outcomes(&mut n1), outcomes(&mut n2));
    let won = ["CONNECT", "COMPLETEAGENT"];
    // Both nodes: connected, one after the other; the arbiter's refusals are no RINGNOANSWER.
    assert!(
        o1 == won && o2 == won,
        "expected both nodes to connect ({won:?}) without RINGNOANSWER for the refusals: \
         acd-1 {o1:?}, acd-2 {o2:?}\n{}\n{}",
        n1.diag(),
        n2.diag()
    );
    // Every refusal was the gateway's arbiter (486), seen by a node as "never rang".
    gw.drain();
    let log = std::fs::read_to_string(gw.dir().join("gateway.stderr")).unwrap_or_default();
    let refused = log
        .matches("offer refused: the agent is already in a call")
        .count();
    let refusals: usize = [&n1, &n2]
        .iter()
        .map(|n| {
            std::fs::read_to_string(n.dir().join("gateway.stderr"))
                .unwrap_or_default()
                .matches("offer refused before ringing the agent")
                .count()
        })
        .sum();
    assert!(
        refused >= 1,
        "the claim race refused no offer\n{}",
        gw.diag()
    );
    assert_eq!(
        refused,
        refusals,
        "the gateway refused {refused} offers; the nodes saw {refusals} refusals before ringing\n{}",
        gw.diag()
    );
    // The agent's device: UNAVAILABLE from the gateway's start until it registers, then two
    // calls, one after the other, never two at once (RINGINUSE/BUSY).
    let want = [
        "UNAVAILABLE",
        "NOT_INUSE",
        "INUSE",
        "NOT_INUSE",
        "INUSE",
        "NOT_INUSE",
    ];
    let deadline = std::time::Instant::now() + WAIT;
    let states = loop {
        gw.drain();
        let mut states: Vec<String> = gw
            .history
            .iter()
            .filter_map(|l| l.strip_prefix("DEVICE PJSIP/2001 "))
            .map(|s| s.trim().to_owned())
            .filter(|s| s != "RINGING")
            .collect();
        states.dedup();
        if states == want || std::time::Instant::now() >= deadline {
            break states;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        states,
        want,
        "the agent's device states (RINGING left out)\n{}",
        gw.diag()
    );
    // The agent hung up first each time (its call ended before the caller's): the callers'
    // CDRs still name it, and each agent call is linked to its caller's.
    let url = format!("sqlite://{}", gw.dir().join("gw-a.db").display());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let cdrs = rt.block_on(async {
        let store = gateway::devices::DeviceStore::open(&url)
            .await
            .expect("open the gateway database");
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let cdrs = store.cdrs().await.expect("cdr table");
            let answered = cdrs.iter().filter(|c| c.disposition == "ANSWERED").count();
            if answered >= 4 || std::time::Instant::now() > deadline {
                break cdrs;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let callers: Vec<_> = cdrs
        .iter()
        .filter(|c| c.dst == "800" || c.dst == "801")
        .collect();
    assert_eq!(callers.len(), 2, "{cdrs:?}");
    for c in callers {
        assert_eq!(c.agent.as_deref(), Some("PJSIP/2001"), "{c:?}");
        assert!(
            cdrs.iter().any(|a| a.dst == "2001"
                && a.disposition == "ANSWERED"
                && a.linkedid == c.uniqueid),
            "no answered agent call linked to {}: {cdrs:?}",
            c.uniqueid
        );
    }
}

/// The README's main command works as shipped: `callfabric site --config examples/site.toml`
/// (copied into a private directory so its SQLite file lands there) starts the gateway and the
/// ACD.
#[test]
fn example_site_config_starts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("site.toml");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("examples").join("site.toml")).expect("example");
    // Its prompt directory is relative to examples/; the copy points at the same one, and the
    // status API takes any free port.
    let prompts = root.join("acd").join("prompts").join("en");
    let text = text
        .replace(
            "\"../acd/prompts/en\"",
            &format!("{:?}", prompts.display().to_string()),
        )
        .replace("127.0.0.1:8088", "127.0.0.1:0");
    std::fs::write(&config, text).expect("write the copy");
    let mut child = std::process::Command::new(binary())
        .args(["site", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start callfabric site");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for l in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    while !(seen.iter().any(|l: &String| l.starts_with("gateway ready"))
        && seen.iter().any(|l: &String| l.starts_with("acd ready")))
    {
        match rx.recv_timeout(WAIT) {
            Ok(l) => seen.push(l),
            Err(e) => {
                let _ = child.kill();
                panic!("no ready lines ({e}): {seen:?}");
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        dir.path().join("site-a.db").exists(),
        "the SQLite file was created beside the config"
    );
}

/// Hot-desking from any phone: 2002 dials *45800 and becomes a dynamic member of the queue
/// (ADDMEMBER; the ACD confirms and hangs up); the next caller is offered to it; *46800 logs
/// it out again (REMOVEMEMBER).
#[test]
fn hot_desking_by_feature_code() {
    let mut gw = site_with("ringall", &["PJSIP/2001"], "", "");
    let mut agent_2002 = answered_by(&mut gw, "2002");
    let login = |gw: &GatewayProcess, code: &str| {
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
    let out = login(&gw, "*45800");
    assert_passes(
        &gw,
        &out,
        "log in with *45800 (answered, confirmed, hung up)",
    );
    let add = queue_log(&mut gw, "ADDMEMBER");
    assert!(add.contains("|support|PJSIP/2002|ADDMEMBER"), "{add}");
    // The next caller reaches the dynamic member (2001 is not registered: 480, skipped).
    let out =
        run_scenario(&uac_scenario(gw.dir()), gw.udp, caller("1001", "800")).expect("run sipp");
    assert_passes(&gw, &out, "caller");
    let connect = queue_log(&mut gw, "CONNECT");
    assert!(connect.contains("|PJSIP/2002|CONNECT|"), "{connect}");
    assert_passes(
        &gw,
        &agent_2002.wait().expect("2002"),
        "dynamic member answered",
    );
    let out = login(&gw, "*46800");
    assert_passes(&gw, &out, "log out with *46800");
    let remove = queue_log(&mut gw, "REMOVEMEMBER");
    assert!(
        remove.contains("|support|PJSIP/2002|REMOVEMEMBER"),
        "{remove}"
    );
}

/// Hot-desking names the member with the configured `device_prefix`, not a hard-coded
/// `PJSIP/`.
#[test]
fn hot_desking_uses_the_configured_device_prefix() {
    let mut gw = site_with("ringall", &["SIP/2001"], "device_prefix = \"SIP/\"", "");
    let out = run_scenario(
        &scenario("call_uac_feature.xml"),
        gw.udp,
        SippOpts {
            keys: vec![
                ("callee".into(), "*45800".into()),
                ("sdp_port".into(), free_udp_port().to_string()),
            ],
            timeout: Duration::from_secs(20),
            ..SippOpts::user("2002", "secret")
        },
    )
    .expect("run sipp");
    assert_passes(&gw, &out, "log in with *45800");
    let add = queue_log(&mut gw, "ADDMEMBER");
    assert!(add.contains("|support|SIP/2002|ADDMEMBER"), "{add}");
}

/// Waiting callers hear their position: with the queue's announce_frequency = 1 (overriding
/// the node's 60 s) and the shipped prompts, a lone caller is told "you are now first in
/// line" every second.
#[test]
fn waiting_caller_hears_position_announcements() {
    let prompts = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("acd")
        .join("prompts")
        .join("en");
    let mut gw = site_with(
        "ringall",
        &["PJSIP/2001"],
        &format!(
            "prompts = {:?}\nannounce_frequency_secs = 60\n",
            prompts.display().to_string()
        ),
        "announce_frequency = 1",
    );
    let out =
        run_scenario(&uac_scenario(gw.dir()), gw.udp, caller("1001", "800")).expect("run sipp");
    assert_passes(&gw, &out, "caller waits 5.5 s and hangs up");
    gw.drain();
    let announced: Vec<&String> = gw
        .history
        .iter()
        .filter(|l| l.starts_with("ANNOUNCE "))
        .collect();
    assert!(announced.len() >= 3, "{}", gw.diag());
    assert!(
        announced
            .iter()
            .all(|l| l.ends_with(" queue-youarenext,queue-thankyou")),
        "{announced:?}"
    );
    let stderr = std::fs::read_to_string(gw.dir().join("gateway.stderr")).unwrap_or_default();
    assert!(
        !stderr.contains(" skipped: "),
        "a shipped prompt was rejected:\n{stderr}"
    );
}

/// A status API that cannot listen (port taken) stops the process with an error naming it,
/// instead of running on without it.
#[test]
fn status_api_port_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("gw.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\nname = \"gw\"\n\n[gateway]\nudp = [\"127.0.0.1:{}\"]\nrealm = \"r\"\n\
             database = \"sqlite://gw.db\"\n\n[http]\nlisten = \"127.0.0.1:{port}\"\n",
            free_udp_port()
        ),
    )
    .expect("config");
    let mut child = std::process::Command::new(binary())
        .args(["gateway", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start");
    let deadline = std::time::Instant::now() + WAIT;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the gateway kept running without its status API");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err)
        .expect("read");
    assert!(!status.success(), "{err}");
    assert!(
        err.contains(&format!("status API on 127.0.0.1:{port}")),
        "{err}"
    );
}

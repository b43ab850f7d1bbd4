//! One queue over two ACD nodes in one global order (issue 15), through the binary: a gateway
//! and two ACD nodes (`callfabric acd`), each its own process, on one XMPP server (Prosody and
//! ejabberd). The gateway routes 800 to node 1 and 801 to node 2, both numbers queue
//! `support`; callers arrive alternately at both nodes while the only agent is not
//! registered, then the agent registers and takes them one by one: they must be answered
//! strictly in the order they joined, whichever node holds them.

use std::path::Path;
use std::time::Duration;

use integration::free_udp_port;
use integration::gateway::{GatewayProcess, GatewaySpec};
use integration::phones::{assert_passes, caller, scenario};
use integration::sipp::{run_scenario, SippOpts, SippProcess};
use integration::site::Bus;
use integration::xmpp_server::{ServerKind, XmppServer};

const WAIT: Duration = Duration::from_secs(30);

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_callfabric"))
}

/// The gateway (callers 1001–1010, agent 2001) and the two nodes, all on `xmpp`.
struct Fabric {
    gw: GatewayProcess,
    nodes: [GatewayProcess; 2],
}

/// `queue_extra`: more lines of queue `support` (at both nodes).
fn fabric(xmpp: &XmppServer, rtp: [&str; 2], queue_extra: &str) -> Fabric {
    let members = ["gw-a", "acd-1", "acd-2"];
    let bus = Bus::new(5.0, &members);
    let (acd1, acd2, gw_port) = (free_udp_port(), free_udp_port(), free_udp_port());
    // Callers 1001–1010 (a device takes two calls at a time), agent 2001.
    let mut devices: Vec<String> = (1001..=1010).map(|u| u.to_string()).collect();
    devices.push("2001".into());
    let devices: Vec<&str> = devices.iter().map(String::as_str).collect();
    let mut spec = GatewaySpec::new("gw-a", &devices);
    spec.qualify_interval_secs = 300.0;
    spec.udp_port = Some(gw_port);
    spec.statebus = bus.section(xmpp, "gw-a");
    spec.node_extra = format!("sip_address = \"127.0.0.1:{gw_port}\"");
    // Waiting callers send no RTP: no media timeout.
    spec.extra = format!(
        "media_timeout_secs = 0\n\
         \n[[gateway.trunk]]\nname = \"acd1\"\naddress = \"127.0.0.1:{acd1}\"\nprefixes = [\"800\"]\n\
         \n[[gateway.trunk]]\nname = \"acd2\"\naddress = \"127.0.0.1:{acd2}\"\nprefixes = [\"801\"]\n"
    );
    let gw = GatewayProcess::start(binary(), spec);
    let node = |name: &str, port: u16, number: &str, rtp: &str| {
        let mut s = GatewaySpec::new(name, &[]);
        s.command = "acd".into();
        s.statebus = bus.section(xmpp, name);
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
strategy = "leastrecent"
timeout = 10
retry = 1
ringinuse = false
members = ["PJSIP/2001"]
{queue_extra}
"#
        );
        GatewayProcess::start(binary(), s)
    };
    let n1 = node("acd-1", acd1, "800", rtp[0]);
    let n2 = node("acd-2", acd2, "801", rtp[1]);
    Fabric {
        gw,
        nodes: [n1, n2],
    }
}

/// A caller at the gateway who waits silently until the ACD hangs up on it.
fn waiting_caller(gw: &GatewayProcess, user: &str, dial: &str) -> SippProcess {
    SippProcess::spawn(
        &scenario("call_uac_feature.xml"),
        Some(gw.udp),
        &SippOpts {
            service: Some(user.into()),
            auth_user: Some(user.into()),
            timeout: Duration::from_secs(150),
            ..caller(user, dial)
        },
    )
    .expect("start a caller")
}

/// The agent's phone 2001: answers `calls` calls one at a time, hanging each up after 1.5 s.
fn agent(gw: &mut GatewayProcess, calls: u32) -> SippProcess {
    let sip_port = free_udp_port();
    let media_port = integration::free_media_port_beside(sip_port);
    let phone = SippProcess::spawn(
        &scenario("call_uas_hangup.xml"),
        None,
        &SippOpts {
            local_port: Some(sip_port),
            calls,
            timeout: Duration::from_secs(150),
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
    assert_passes(gw, &reg, "agent registration");
    phone
}

/// `QUEUELOG time|callid|queue|agent|EVENT|…`: (time, callid).
fn fields(line: &str) -> (u64, String) {
    let body = line.trim_start_matches("QUEUELOG ");
    let p: Vec<&str> = body.split('|').collect();
    (
        p[0].parse().unwrap_or(0),
        p.get(1).unwrap_or(&"").to_string(),
    )
}

#[test]
fn twenty_callers_at_two_nodes_are_answered_in_global_join_order() {
    global_order(ServerKind::Prosody, ["43000-43499", "43500-43999"]);
}

#[test]
fn twenty_callers_at_two_nodes_are_answered_in_global_join_order_on_ejabberd() {
    global_order(ServerKind::Ejabberd, ["44000-44499", "44500-44999"]);
}

fn global_order(kind: ServerKind, rtp: [&str; 2]) {
    const N: usize = 20;
    let xmpp = XmppServer::start(kind, &["gw-a", "acd-1", "acd-2"], "secret")
        .unwrap_or_else(|e| panic!("start {kind}: {e:#}"));
    let Fabric { mut gw, mut nodes } = fabric(&xmpp, rtp, "");
    // The agent is not registered yet: its phone reads UNAVAILABLE on both nodes.
    for n in nodes.iter_mut() {
        n.wait_for(WAIT, "2001 unavailable", |l| {
            l == "DEVICE PJSIP/2001 UNAVAILABLE"
        });
    }
    // Callers alternately at node 1 (dialling 800) and node 2 (801); each is queued before
    // the next one dials, so the join order is known.
    let mut callers = Vec::new();
    let mut order: Vec<(usize, String)> = Vec::new();
    for i in 0..N {
        let (node, dial) = if i % 2 == 0 { (0, "800") } else { (1, "801") };
        let user = (1001 + i / 2).to_string();
        let c = waiting_caller(&gw, &user, dial);
        let line = nodes[node]
            .try_wait_for(WAIT, |l| l.contains("|ENTERQUEUE|"))
            .unwrap_or_else(|why| {
                gw.drain();
                panic!(
                    "{why} waiting for caller {i} ({user} dialling {dial}) to be queued\n{}\n{}\n{}",
                    nodes[node].diag(),
                    gw.diag(),
                    c.output_so_far()
                )
            });
        callers.push(c);
        order.push((node, fields(&line).1));
    }
    // Each node knows every caller of the queue, its own and the other node's.
    for n in nodes.iter_mut() {
        n.wait_for(WAIT, "all callers known", |l| {
            l == format!("WAITING support {N}")
        });
    }

    let mut phone = agent(&mut gw, N as u32);
    // Answered strictly in join order: each node connects its own callers in order, and
    // CONNECTs across both nodes follow the join order (one agent, each call ≥ 1.5 s: the
    // queue_log's seconds strictly increase from one CONNECT to the next).
    let mut last = 0u64;
    for (i, (node, id)) in order.iter().enumerate() {
        let line = nodes[*node].wait_for(Duration::from_secs(60), "CONNECT", |l| {
            l.contains("|CONNECT|")
        });
        let (t, got) = fields(&line);
        assert_eq!(
            &got, id,
            "caller {i} (joined at node {}) was not the next one answered there: {line}\nnode 1:\n{}\nnode 2:\n{}",
            node + 1,
            nodes[0].diag(),
            nodes[1].diag()
        );
        assert!(
            t > last,
            "caller {i} answered at {t}, not after the caller before it ({last}): out of global order\nnode 1:\n{}\nnode 2:\n{}",
            nodes[0].diag(),
            nodes[1].diag()
        );
        last = t;
    }
    for (i, mut c) in callers.into_iter().enumerate() {
        assert_passes(&gw, &c.wait().expect("caller"), &format!("caller {i}"));
    }
    assert_passes(&gw, &phone.wait().expect("agent"), "agent phone");
}

/// Media both ways on a gateway call (`CALL … ENDED … b_in=… b_out=…`).
fn media_both_ways(line: &str, min: u64) -> bool {
    let num = |k: &str| {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(k))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    num("b_in=") > min && num("b_out=") > min
}

#[test]
fn a_callback_caller_is_called_back_at_its_place_and_connected() {
    callback(ServerKind::Prosody, ["45000-45499", "45500-45999"], None);
}

/// On ejabberd, with the queue's `callback_key` set to `#` (the caller presses `#`).
#[test]
fn a_callback_caller_is_called_back_at_its_place_and_connected_on_ejabberd() {
    callback(
        ServerKind::Ejabberd,
        ["48000-48499", "48500-48999"],
        Some('#'),
    );
}

/// The caller's scenario pressing `key` (RFC 4733, SIPp's pcap of that key).
fn callback_scenario(dir: &Path, key: Option<char>) -> std::path::PathBuf {
    let base = scenario("call_uac_callback.xml");
    let Some(key) = key else {
        return base;
    };
    let name = match key {
        '#' => "pound".to_owned(),
        '*' => "star".to_owned(),
        k => k.to_string(),
    };
    let text = std::fs::read_to_string(&base).expect("read scenario");
    assert!(text.contains("dtmf_2833_1.pcap"), "the scenario presses 1");
    let path = dir.join("call_uac_callback.xml");
    std::fs::write(
        &path,
        text.replace("dtmf_2833_1.pcap", &format!("dtmf_2833_{name}.pcap")),
    )
    .expect("write scenario");
    path
}

fn callback(kind: ServerKind, rtp: [&str; 2], key: Option<char>) {
    let xmpp = XmppServer::start(kind, &["gw-a", "acd-1", "acd-2"], "secret")
        .unwrap_or_else(|e| panic!("start {kind}: {e:#}"));
    let extra = key.map_or(String::new(), |k| format!("callback_key = \"{k}\""));
    let Fabric { mut gw, mut nodes } = fabric(&xmpp, rtp, &extra);
    for n in nodes.iter_mut() {
        n.wait_for(WAIT, "2001 unavailable", |l| {
            l == "DEVICE PJSIP/2001 UNAVAILABLE"
        });
    }
    // The caller's phone 1001 answers the call back and talks (plays audio).
    let mut customer =
        integration::phones::answering_phone(&mut gw, "1001", "call_uas_callback.xml", 1);
    // 1001 calls the queue at node 1, presses the callback key and is hung up on, its place
    // kept.
    let mut asking = SippProcess::spawn(
        &callback_scenario(gw.dir(), key),
        Some(gw.udp),
        &SippOpts {
            service: Some("1001".into()),
            auth_user: Some("1001".into()),
            timeout: Duration::from_secs(60),
            ..caller("1001", "800")
        },
    )
    .expect("start the caller");
    let (_, first) = fields(&nodes[0].wait_for(WAIT, "ENTERQUEUE", |l| l.contains("|ENTERQUEUE|")));
    let req = nodes[0].wait_for(WAIT, "CALLBACKREQ", |l| l.contains("|CALLBACKREQ|"));
    assert!(
        req.ends_with(&format!("|{first}|support|NONE|CALLBACKREQ|1|1001"))
            || req.contains(&format!("|{first}|support|NONE|CALLBACKREQ|1|1001")),
        "{req}"
    );
    assert_passes(
        &gw,
        &asking.wait().expect("caller"),
        "the caller hung up on",
    );
    // A caller at node 2 joins after it: second in line, behind the absent caller.
    let mut later = waiting_caller(&gw, "1002", "801");
    let (_, second) =
        fields(&nodes[1].wait_for(WAIT, "ENTERQUEUE", |l| l.contains("|ENTERQUEUE|")));
    nodes[1].wait_for(WAIT, "both callers known", |l| l == "WAITING support 2");

    // The agent comes: the called-back caller first (agent answers, then the caller is
    // called back and bridged), then the later caller at node 2.
    let mut phone = agent(&mut gw, 2);
    let (t1, got) = fields(&nodes[0].wait_for(Duration::from_secs(60), "CONNECT", |l| {
        l.contains("|CONNECT|")
    }));
    assert_eq!(got, first, "node 1:\n{}", nodes[0].diag());
    let back = nodes[0].wait_for(WAIT, "CALLBACK", |l| l.contains("|CALLBACK|"));
    assert!(
        back.contains(&format!("|{first}|support|NONE|CALLBACK|1001|ANSWER")),
        "{back}\n{}",
        nodes[0].diag()
    );
    let (t2, got) = fields(&nodes[1].wait_for(Duration::from_secs(60), "CONNECT", |l| {
        l.contains("|CONNECT|")
    }));
    assert_eq!(got, second, "node 2:\n{}", nodes[1].diag());
    assert!(t2 >= t1, "the later caller was answered first");
    assert_passes(&gw, &customer.wait().expect("customer"), "the call back");
    assert_passes(
        &gw,
        &later.wait().expect("later caller"),
        "the later caller",
    );
    assert_passes(&gw, &phone.wait().expect("agent"), "agent phone");
    // Connected: the call back and the agent's call both carried audio both ways (the
    // caller's audio, echoed by the agent's phone).
    let mut ended = Vec::new();
    while ended.len() < 5 {
        ended.push(gw.call_ended(WAIT).line);
    }
    let talking = ended.iter().filter(|l| media_both_ways(l, 20)).count();
    assert!(
        talking >= 2,
        "calls with media both ways:\n{}",
        ended.join("\n")
    );
}

//! Issue 15 (part 1), end to end through the real binary on the files of `examples/two-site/`:
//! two gateways and two ACD nodes that know each other only through the fabric (Prosody and
//! ejabberd). The example configs run as they are, with only what a test must change
//! substituted (see [`example`]): ports, the XMPP server's address and domain, its CA file,
//! the RTP range, and the qualify interval (SIPp agents cannot answer OPTIONS).
//!
//! * Queue number 800 has no trunk anywhere: gw-a sends it to the live ACD node that
//!   advertises it, of its own site first (acd-1); three callers wait there.
//! * `kill -9` of acd-1: gw-a sees it expire within the liveness TTL and moves the three
//!   callers to acd-2 with their original join times (queue_log `MOVED`); 800 dialled then
//!   goes to the standby node acd-2. The agent at gw-b, which has no trunk entry for any ACD,
//!   takes acd-2's offers (signed) and answers all four callers in their original order; no
//!   `ABANDON` anywhere.
//! * Fabric trust refusals are answered and logged: an unsigned offer from a stranger is
//!   challenged and logged, a forged signature gets 403 and is logged.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use integration::gateway::{GatewayProcess, GatewaySpec};
use integration::phones::{answering_phone, assert_passes, caller};
use integration::sipp::SippProcess;
use integration::xmpp_server::{ServerKind, XmppServer};
use integration::{free_udp_port, tail_file};

const WAIT: Duration = Duration::from_secs(30);
/// `liveness_ttl_secs` of the example files.
const TTL: Duration = Duration::from_secs(5);

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_callfabric"))
}

/// Ports of the four members (the examples' 5060, 5062, 5070, 5072).
struct Ports {
    gw_a: u16,
    gw_b: u16,
    acd_1: u16,
    acd_2: u16,
}

/// `examples/two-site/<name>.toml` with the test's ports, XMPP server, CA file and RTP range
/// substituted (and nothing else but the qualify interval); panics if a value meant to be
/// substituted is missing from the file, so the examples and the test cannot drift apart.
fn example(name: &str, xmpp: &XmppServer, p: &Ports, rtp: &[&str; 2]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("examples/two-site/{name}.toml"));
    let mut text = std::fs::read_to_string(&path).expect("read the example");
    let domain = xmpp.domain();
    assert_eq!(xmpp.pubsub_service(), format!("pubsub.{domain}"));
    let subs: Vec<(String, String)> = vec![
        (
            "xmpp.fabric.example.com:5222".into(),
            xmpp.c2s_addr().to_string(),
        ),
        ("fabric.example.com".into(), domain.to_owned()),
        ("certs/ca.pem".into(), xmpp.ca_cert().display().to_string()),
        ("127.0.0.1:5060".into(), format!("127.0.0.1:{}", p.gw_a)),
        ("127.0.0.1:5062".into(), format!("127.0.0.1:{}", p.gw_b)),
        ("127.0.0.1:5070".into(), format!("127.0.0.1:{}", p.acd_1)),
        ("127.0.0.1:5072".into(), format!("127.0.0.1:{}", p.acd_2)),
        ("30000-30999".into(), rtp[0].into()),
        ("31000-31999".into(), rtp[1].into()),
        (
            "qualify_interval_secs = 30".into(),
            "qualify_interval_secs = 300".into(),
        ),
    ];
    let mut used = 0;
    for (from, to) in &subs {
        if text.contains(from.as_str()) {
            used += 1;
            text = text.replace(from.as_str(), to);
        }
    }
    assert!(used >= 4, "{name}: too few substitutions ({used})");
    for left in [
        "example.com",
        ":5060\"",
        ":5062\"",
        ":5070\"",
        ":5072\"",
        ":5222\"",
    ] {
        assert!(
            !text.contains(left),
            "{name}: {left} left unsubstituted:\n{text}"
        );
    }
    text
}

const SECRET: &str = "a-fabric-secret-for-the-two-site-test";

fn start(name: &str, command: &str, devices: &[&str], port: u16, text: &str) -> GatewayProcess {
    let mut spec = GatewaySpec::new(name, devices);
    spec.command = command.into();
    spec.udp_port = Some(port);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    GatewayProcess::start_config(
        binary(),
        spec,
        text,
        &[("fabric.key", SECRET), ("xmpp.password", "secret")],
        addr,
        addr,
    )
}

#[test]
fn queue_numbers_follow_the_fabric_and_fail_over_to_the_standby_node() {
    queue_routing(ServerKind::Prosody, ["46000-46499", "46500-46999"]);
}

#[test]
fn queue_numbers_follow_the_fabric_and_fail_over_to_the_standby_node_on_ejabberd() {
    queue_routing(ServerKind::Ejabberd, ["47000-47499", "47500-47999"]);
}

fn queue_routing(kind: ServerKind, rtp: [&str; 2]) {
    let xmpp = XmppServer::start(kind, &["gw-a", "gw-b", "acd-1", "acd-2"], "secret")
        .unwrap_or_else(|e| panic!("start {kind}: {e:#}"));
    let p = Ports {
        gw_a: free_udp_port(),
        gw_b: free_udp_port(),
        acd_1: free_udp_port(),
        acd_2: free_udp_port(),
    };
    let mut gw_a = start(
        "gw-a",
        "gateway",
        &["1001", "1002", "1003", "1004", "1005"],
        p.gw_a,
        &example("gw-a", &xmpp, &p, &rtp),
    );
    let mut gw_b = start(
        "gw-b",
        "gateway",
        &["2001"],
        p.gw_b,
        &example("gw-b", &xmpp, &p, &rtp),
    );
    let mut acd_1 = start(
        "acd-1",
        "acd",
        &[],
        p.acd_1,
        &example("acd-1", &xmpp, &p, &rtp),
    );
    let mut acd_2 = start(
        "acd-2",
        "acd",
        &[],
        p.acd_2,
        &example("acd-2", &xmpp, &p, &rtp),
    );

    // gw-a hears both nodes advertise 800 (in their heartbeats); acd-1 is of its site.
    let up_1 = seen(&mut gw_a, "acd-1's advertisement", |l| {
        l.starts_with("PEER ") && l.contains("site=a role=acd queues=800")
    });
    seen(&mut gw_a, "acd-2's advertisement", |l| {
        l.starts_with("PEER ") && l.contains("site=b role=acd queues=800")
    });
    seen(&mut gw_b, "an advertisement", |l| {
        l.contains("role=acd queues=800")
    });
    let eid_1 = up_1.split_whitespace().nth(1).expect("eid").to_owned();

    // 1. Three callers dial 800 at site A, no trunk anywhere: each goes to acd-1 (the live
    // node of gw-a's site) and waits there (the only agent, 2001, is not registered yet).
    let scenario = wait_scenario(gw_a.dir());
    let mut callers = Vec::new();
    let mut order = Vec::new();
    for i in 0..3 {
        callers.push(waiting_caller(
            &scenario,
            gw_a.udp,
            &format!("100{}", [1, 3, 4][i]),
        ));
        let l = acd_1.wait_for(WAIT, "a caller queued at acd-1", |l| {
            l.contains("|ENTERQUEUE|")
        });
        order.push(callid(&l));
        assert_eq!(order.len(), i + 1);
    }
    assert!(
        !acd_2.history.iter().any(|l| l.contains("|ENTERQUEUE|")),
        "the standby took a caller while acd-1 was alive\n{}",
        acd_2.diag()
    );

    // 2. kill -9 of acd-1: gw-a sees it expire within the TTL (plus scheduling slack on a
    // loaded machine) and moves each caller to acd-2 with their original join time.
    let killed = Instant::now();
    acd_1.kill();
    gw_a.wait_for(TTL * 3, "acd-1 expiring", |l| {
        l == format!("PEER {eid_1} expired")
    });
    let took = killed.elapsed();
    assert!(
        took <= TTL + Duration::from_secs(3),
        "acd-1 expired {took:?} after its death (TTL {TTL:?})"
    );
    let mut moved = Vec::new();
    while moved.len() < 3 {
        let l = acd_2.wait_for(WAIT, "a moved caller at acd-2", |l| l.contains("|MOVED|"));
        moved.push(callid(&l));
    }
    moved.sort();
    let mut want = order.clone();
    want.sort();
    assert_eq!(
        moved,
        want,
        "the moved callers are acd-1's callers\n{}",
        acd_2.diag()
    );

    // 3. 800 dialled now, after acd-1 died, goes to the standby acd-2 (and queues behind the
    // moved callers, who joined earlier).
    callers.push(waiting_caller(&scenario, gw_a.udp, "1005"));
    let l = acd_2.wait_for(WAIT, "the new caller at acd-2", |l| {
        l.contains("|ENTERQUEUE|") && !order.contains(&callid(l))
    });
    order.push(callid(&l));

    // 4. The agent at site B comes: acd-2's offers reach it through gw-b, which has no trunk
    // entry for any ACD (they are signed), in the callers' original order.
    let mut agent = answering_phone(&mut gw_b, "2001", "call_uas_hangup.xml", 4);
    let mut connected = Vec::new();
    while connected.len() < 4 {
        let l = acd_2.wait_for(WAIT * 2, "a CONNECT at acd-2", |l| l.contains("|CONNECT|"));
        assert!(l.contains("|PJSIP/2001|CONNECT|"), "{l}");
        connected.push(callid(&l));
    }
    assert_eq!(
        connected,
        order,
        "answered in the original order\n{}",
        acd_2.diag()
    );
    for (i, mut c) in callers.into_iter().enumerate() {
        assert_passes(&gw_a, &c.wait().expect("caller"), &format!("caller {i}"));
    }
    assert_passes(
        &gw_b,
        &agent.wait().expect("agent"),
        "the agent answered four calls",
    );
    // The moved callers heard music on hold from gw-a while they moved (callers 1 and 2 were
    // answered by acd-1 before it died; caller 3 may have been, or retried unanswered).
    let ended: Vec<_> = (0..4).map(|_| gw_a.call_ended(WAIT)).collect();
    let with_music = ended.iter().filter(|c| c.num("a_moh") > 0).count();
    assert!(
        with_music >= 2,
        "music on hold to the moved callers: {:?}",
        ended.iter().map(|c| &c.line).collect::<Vec<_>>()
    );
    for node in [&acd_1, &acd_2] {
        let log = std::fs::read_to_string(node.dir().join("queue_log")).unwrap_or_default();
        assert!(!log.contains("|ABANDON|"), "a caller was lost:\n{log}");
    }
    let log_b = tail_file(&gw_b.dir().join("gateway.stderr"), 400);
    assert!(
        log_b.contains("FABRIC trusted INVITE"),
        "gw-b did not take the offers as signed fabric INVITEs\n{}",
        gw_b.diag()
    );

    // 5. Refusals are answered and logged.
    trust_refusals(&gw_b);
}

/// queue_log's callid field of a `QUEUELOG time|callid|…` line.
fn callid(line: &str) -> String {
    line.split('|').nth(1).unwrap_or_default().to_owned()
}

/// `call_uac_wait_bye.xml` with its RTP file (a tone, raw A-law, looped while waiting).
fn wait_scenario(dir: &Path) -> std::path::PathBuf {
    let pcm = media::audio::prompts::tone(&[440.0], 4000, 0.3);
    let audio = dir.join("waiting.alaw");
    std::fs::write(&audio, media::audio::Codec::Pcma.encode(&pcm)).expect("write audio");
    let text = std::fs::read_to_string(integration::phones::scenario("call_uac_wait_bye.xml"))
        .expect("read scenario");
    let path = dir.join("call_uac_wait_bye.xml");
    std::fs::write(
        &path,
        text.replace("@RTP_FILE@", &audio.display().to_string()),
    )
    .expect("write scenario");
    path
}

/// Caller `user` dialling 800 at `gw` and waiting until the far side hangs up (one call per
/// device: a device's call limit would refuse more).
fn waiting_caller(scenario: &Path, gw: SocketAddr, user: &str) -> SippProcess {
    let mut opts = caller(user, "800");
    opts.timeout = Duration::from_secs(180);
    SippProcess::spawn(scenario, Some(gw), &opts).expect("start a caller")
}

/// The first stdout line (so far or within [`WAIT`]) that satisfies `pred`.
fn seen(gw: &mut GatewayProcess, what: &str, pred: impl Fn(&str) -> bool) -> String {
    gw.drain();
    if let Some(l) = gw.history.iter().find(|l| pred(l.trim())) {
        return l.trim().to_owned();
    }
    gw.wait_for(WAIT, what, pred)
}

/// An INVITE to `to` from a fresh socket; the final (or 407) status code.
fn raw_invite(to: SocketAddr, extra: &str) -> u16 {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let me = sock.local_addr().expect("addr");
    let msg = format!(
        "INVITE sip:2001@{to} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:acd@{me}>;tag=x1\r\nTo: <sip:2001@{to}>\r\n\
         Call-ID: forged-{}@test\r\nCSeq: 1 INVITE\r\nContact: <sip:acd@{me}>\r\n{extra}\
         Content-Length: 0\r\n\r\n",
        me.port(),
        me.port()
    );
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        sock.send_to(msg.as_bytes(), to).expect("send");
        let mut buf = [0u8; 4096];
        while let Ok((n, _)) = sock.recv_from(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]);
            let code: u16 = text
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            if code >= 200 {
                return code;
            }
        }
    }
    panic!("no final response from {to}");
}

fn trust_refusals(gw: &GatewayProcess) {
    let offer = "X-CF-Offer: queue=support;ringinuse=no\r\n";
    assert_eq!(
        raw_invite(gw.udp, offer),
        407,
        "an unsigned offer from a stranger"
    );
    let forged = format!(
        "{offer}X-CF-Fabric: t={};by=acd-1;mac={}\r\n",
        unix(),
        "0".repeat(64)
    );
    assert_eq!(
        raw_invite(gw.udp, &forged),
        403,
        "a forged fabric signature"
    );
    let deadline = Instant::now() + WAIT;
    loop {
        let log = tail_file(&gw.dir().join("gateway.stderr"), 400);
        if log.contains("FABRIC REFUSED an ACD offer")
            && log.contains("FABRIC REFUSED an INVITE signed")
        {
            break;
        }
        assert!(Instant::now() < deadline, "refusals not logged:\n{log}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

//! Issue 15 (part 1), end to end through the real binary on the files of `examples/two-site/`:
//! two gateways and two ACD nodes that know each other only through the fabric (Prosody and
//! ejabberd). The example configs run as they are, with only what a test must change
//! substituted (see [`example`]): ports, the XMPP server's address and domain, its CA file,
//! the RTP range, and the qualify interval (SIPp agents cannot answer OPTIONS).
//!
//! * Queue number 800 has no trunk anywhere: gw-a sends it to the live ACD node that
//!   advertises it, of its own site first (acd-1); acd-1's offer to the agent at gw-b is taken
//!   without a trunk entry because it is signed with the fabric secret.
//! * `kill -9` of acd-1: gw-a sees it expire within the liveness TTL, and 800 dialled then goes
//!   to the standby node acd-2.
//! * Fabric trust refusals are answered and logged: an unsigned offer from a stranger is
//!   challenged and logged, a forged signature gets 403 and is logged.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use integration::gateway::{GatewayProcess, GatewaySpec};
use integration::phones::{answering_phone, assert_passes, caller, uac_scenario};
use integration::sipp::run_scenario;
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
        &["1001", "1002"],
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

    // gw-a hears both nodes advertise 800 (in their heartbeats).
    let up_1 = seen(&mut gw_a, "acd-1's advertisement", |l| {
        l.starts_with("PEER ") && l.contains("site=a role=acd queues=800")
    });
    seen(&mut gw_a, "acd-2's advertisement", |l| {
        l.starts_with("PEER ") && l.contains("site=b role=acd queues=800")
    });
    let eid_1 = up_1.split_whitespace().nth(1).expect("eid").to_owned();
    // The fabric is up everywhere (registering while members still log in is slow enough
    // on a loaded machine for SIPp to retransmit its REGISTER).
    seen(&mut gw_b, "an advertisement", |l| {
        l.contains("role=acd queues=800")
    });

    // The only agent, 2001, at site B; both nodes must see it before a caller comes.
    let mut agent = answering_phone(&mut gw_b, "2001", "call_uas.xml", 2);
    gw_b.device("2001", "NOT_INUSE", WAIT);
    for node in [&mut acd_1, &mut acd_2] {
        node.seen_since(0, "DEVICE PJSIP/2001 NOT_INUSE", WAIT);
    }

    // 1. 800 from site A goes to acd-1 (same site); its offer reaches the agent at site B,
    // whose gateway has no trunk entry for any ACD: the offer is signed.
    let out =
        run_scenario(&uac_scenario(gw_a.dir()), gw_a.udp, caller("1001", "800")).expect("run sipp");
    assert_passes(&gw_a, &out, "first caller");
    let c = acd_1.wait_for(WAIT, "acd-1's CONNECT", |l| l.contains("|CONNECT|"));
    assert!(c.contains("|PJSIP/2001|CONNECT|"), "{c}\n{}", acd_1.diag());
    assert!(
        !acd_2.history.iter().any(|l| l.contains("|ENTERQUEUE|")),
        "the standby took a caller while acd-1 was alive\n{}",
        acd_2.diag()
    );
    let stderr_b = tail_file(&gw_b.dir().join("gateway.stderr"), 400);
    assert!(
        stderr_b.contains("FABRIC trusted INVITE"),
        "gw-b did not take acd-1's offer as a signed fabric INVITE\n{}",
        gw_b.diag()
    );

    // 2. kill -9 of acd-1: gw-a notices within the TTL (plus scheduling slack on a loaded
    // machine), and 800 then goes to the standby, acd-2.
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
    let out =
        run_scenario(&uac_scenario(gw_a.dir()), gw_a.udp, caller("1001", "800")).expect("run sipp");
    assert_passes(&gw_a, &out, "second caller");
    let c = acd_2.wait_for(WAIT, "acd-2's CONNECT", |l| l.contains("|CONNECT|"));
    assert!(c.contains("|PJSIP/2001|CONNECT|"), "{c}\n{}", acd_2.diag());
    assert_passes(
        &gw_b,
        &agent.wait().expect("agent"),
        "the agent answered twice",
    );

    // 3. Refusals are answered and logged.
    trust_refusals(&gw_b);
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

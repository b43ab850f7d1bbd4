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
//!
//! The same files across the WAN lab (40 ms one way, 1 % loss; the XMPP server, gw-a and acd-1
//! in site A, gw-b, acd-2 and the agent in site B; once on Prosody, once on ejabberd): twenty callers at both nodes answered in
//! global join order, the first of them called back at its place, then the failover above
//! (see [`wan_lab_global_order_callback_and_failover_across_a_lossy_link`]).

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use integration::gateway::{CallEnded, GatewayProcess, GatewaySpec};
use integration::phones::{assert_passes, caller, scenario};
use integration::sipp::{run_scenario, SippOpts, SippProcess};
use integration::wanlab::{Site, WanLab, WanSpec};
use integration::xmpp_server::{ServerKind, XmppServer};
use integration::{free_udp_port, tail_file};

const WAIT: Duration = Duration::from_secs(30);
/// `liveness_ttl_secs` of the example files.
const TTL: Duration = Duration::from_secs(5);

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_callfabric"))
}

/// SIP addresses of the four members (the examples' 127.0.0.1:5060, 5062, 5070, 5072) and the
/// XMPP server's address as they reach it.
struct Ports {
    gw_a: SocketAddr,
    gw_b: SocketAddr,
    acd_1: SocketAddr,
    acd_2: SocketAddr,
    xmpp: SocketAddr,
}

impl Ports {
    /// Free ports on `place`'s addresses (site A: gw-a and acd-1, site B: gw-b and acd-2).
    fn new(place: &Place<'_>, xmpp: &XmppServer) -> Ports {
        let at = |site: Site| {
            let ip = place.ip(site);
            place.run(site, move || SocketAddr::from((ip, free_udp_port())))
        };
        Ports {
            gw_a: at(Site::A),
            gw_b: at(Site::B),
            acd_1: at(Site::A),
            acd_2: at(Site::B),
            xmpp: SocketAddr::from((place.ip(Site::A), xmpp.c2s_addr().port())),
        }
    }
}

/// Where the members run: on the test's loopback, or on either side of a WAN lab's link (site
/// A: the XMPP server, gw-a and acd-1; site B: gw-b and acd-2).
struct Place<'a> {
    lab: Option<&'a WanLab>,
}

impl Place<'_> {
    /// `f` run in `site` (sockets it opens and processes it starts live there).
    fn run<T: Send>(&self, site: Site, f: impl FnOnce() -> T + Send) -> T {
        match self.lab {
            None => f(),
            Some(lab) => lab
                .run_in(site, f)
                .unwrap_or_else(|e| panic!("in site {site:?}: {e:#}")),
        }
    }

    /// The address members of `site` listen on.
    fn ip(&self, site: Site) -> std::net::IpAddr {
        match self.lab {
            None => [127, 0, 0, 1].into(),
            Some(lab) => lab.addr(site).into(),
        }
    }
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
        ("xmpp.fabric.example.com:5222".into(), p.xmpp.to_string()),
        ("fabric.example.com".into(), domain.to_owned()),
        ("certs/ca.pem".into(), xmpp.ca_cert().display().to_string()),
        ("127.0.0.1:5060".into(), p.gw_a.to_string()),
        ("127.0.0.1:5062".into(), p.gw_b.to_string()),
        ("127.0.0.1:5070".into(), p.acd_1.to_string()),
        ("127.0.0.1:5072".into(), p.acd_2.to_string()),
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

fn start(
    name: &str,
    command: &str,
    devices: &[&str],
    addr: SocketAddr,
    text: &str,
) -> GatewayProcess {
    let mut spec = GatewaySpec::new(name, devices);
    spec.command = command.into();
    spec.udp_port = Some(addr.port());
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
    let place = Place { lab: None };
    let mut m = Members::start(&place, &xmpp, rtp, &[], &[]);
    let eid_1 = m.advertised();
    failover(&place, &mut m, &eid_1);
    // Refusals are answered and logged.
    trust_refusals(&m.gw_b);
}

/// The four members of `examples/two-site/`, each started in its site.
struct Members {
    gw_a: GatewayProcess,
    gw_b: GatewayProcess,
    acd_1: GatewayProcess,
    acd_2: GatewayProcess,
}

impl Members {
    /// gw-a with devices 1001–1005 and `more_a`, gw-b with 2001 and `more_b`, both nodes.
    fn start(
        place: &Place<'_>,
        xmpp: &XmppServer,
        rtp: [&str; 2],
        more_a: &[&str],
        more_b: &[&str],
    ) -> Members {
        let p = Ports::new(place, xmpp);
        let mut dev_a = vec!["1001", "1002", "1003", "1004", "1005"];
        dev_a.extend_from_slice(more_a);
        let mut dev_b = vec!["2001"];
        dev_b.extend_from_slice(more_b);
        let (gw_a, gw_b) = (
            example("gw-a", xmpp, &p, &rtp),
            example("gw-b", xmpp, &p, &rtp),
        );
        let (acd_1, acd_2) = (
            example("acd-1", xmpp, &p, &rtp),
            example("acd-2", xmpp, &p, &rtp),
        );
        Members {
            gw_a: place.run(Site::A, || start("gw-a", "gateway", &dev_a, p.gw_a, &gw_a)),
            gw_b: place.run(Site::B, || start("gw-b", "gateway", &dev_b, p.gw_b, &gw_b)),
            acd_1: place.run(Site::A, || start("acd-1", "acd", &[], p.acd_1, &acd_1)),
            acd_2: place.run(Site::B, || start("acd-2", "acd", &[], p.acd_2, &acd_2)),
        }
    }

    /// Waits until gw-a hears both nodes advertise 800 (in their heartbeats; acd-1 is of its
    /// site) and gw-b hears one; returns acd-1's EID.
    fn advertised(&mut self) -> String {
        let up_1 = seen(&mut self.gw_a, "acd-1's advertisement", |l| {
            l.starts_with("PEER ") && l.contains("site=a role=acd queues=800")
        });
        seen(&mut self.gw_a, "acd-2's advertisement", |l| {
            l.starts_with("PEER ") && l.contains("site=b role=acd queues=800")
        });
        seen(&mut self.gw_b, "an advertisement", |l| {
            l.contains("role=acd queues=800")
        });
        up_1.split_whitespace().nth(1).expect("eid").to_owned()
    }
}

/// The failover scenario: three callers at gw-a wait at acd-1 (the agent 2001 at gw-b is not
/// registered), acd-1 is killed (-9), gw-a moves them to acd-2 with their join times and sends
/// a fourth caller there; then 2001 registers and answers all four in their original order.
fn failover(place: &Place<'_>, m: &mut Members, eid_1: &str) {
    let Members {
        gw_a,
        gw_b,
        acd_1,
        acd_2,
    } = m;
    // 1. Three callers dial 800 at site A, no trunk anywhere: each goes to acd-1 (the live
    // node of gw-a's site) and waits there (the only agent, 2001, is not registered).
    let scenario = wait_scenario(gw_a.dir());
    let gw_a_udp = gw_a.udp;
    let call = |user: &str| place.run(Site::A, || waiting_caller(&scenario, gw_a_udp, user));
    let ended_before = gw_a.mark();
    let mut callers = Vec::new();
    let mut order = Vec::new();
    let standby_before = acd_2.mark();
    for (i, user) in ["1001", "1003", "1004"].iter().enumerate() {
        callers.push(call(user));
        let l = acd_1.wait_for(WAIT, "a caller queued at acd-1", |l| {
            l.contains("|ENTERQUEUE|")
        });
        order.push(callid(&l));
        assert_eq!(order.len(), i + 1);
    }
    acd_2.drain();
    assert!(
        !acd_2.history[standby_before..]
            .iter()
            .any(|l| l.contains("|ENTERQUEUE|")),
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
    let routed = Instant::now();
    callers.push(call("1005"));
    let l = acd_2.wait_for(WAIT, "the new caller at acd-2", |l| {
        l.contains("|ENTERQUEUE|") && !order.contains(&callid(l))
    });
    println!(
        "standby: acd-1 expired {took:?} after kill -9, a new caller queued at acd-2 {:?} after dialling",
        routed.elapsed()
    );
    order.push(callid(&l));

    // 4. The agent at site B comes: acd-2's offers reach it through gw-b, which has no trunk
    // entry for any ACD (they are signed), in the callers' original order.
    let mut agent = place.run(Site::B, || {
        phone(
            gw_b,
            "2001",
            "call_uas_hangup.xml",
            4,
            Duration::from_secs(120),
        )
    });
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
        assert_passes(gw_a, &c.wait().expect("caller"), &format!("caller {i}"));
    }
    assert_passes(
        gw_b,
        &agent.wait().expect("agent"),
        "the agent answered four calls",
    );
    // The moved callers heard music on hold from gw-a while they moved (callers 1 and 2 were
    // answered by acd-1 before it died; caller 3 may have been, or retried unanswered).
    let ended = calls_ended_since(gw_a, ended_before, 4);
    let with_music = ended.iter().filter(|c| c.num("a_moh") > 0).count();
    assert!(
        with_music >= 2,
        "music on hold to the moved callers: {:?}",
        ended.iter().map(|c| &c.line).collect::<Vec<_>>()
    );
    for node in [&*acd_1, &*acd_2] {
        let log = std::fs::read_to_string(node.dir().join("queue_log")).unwrap_or_default();
        assert!(!log.contains("|ABANDON|"), "a caller was lost:\n{log}");
    }
    let log_b = tail_file(&gw_b.dir().join("gateway.stderr"), 400);
    assert!(
        log_b.contains("FABRIC trusted INVITE"),
        "gw-b did not take the offers as signed fabric INVITEs\n{}",
        gw_b.diag()
    );
}

/// The first `n` `CALL … ENDED …` lines of `gw` from history index `mark` on (waiting for them).
fn calls_ended_since(gw: &mut GatewayProcess, mark: usize, n: usize) -> Vec<CallEnded> {
    let is_end = |l: &str| l.starts_with("CALL ") && l.contains(" ENDED ");
    let deadline = Instant::now() + WAIT;
    loop {
        gw.drain();
        let got: Vec<CallEnded> = gw.history[mark.min(gw.history.len())..]
            .iter()
            .map(|l| l.trim())
            .filter(|l| is_end(l))
            .map(|l| CallEnded {
                line: l.to_owned(),
                reason: l.split_whitespace().nth(3).unwrap_or_default().to_owned(),
            })
            .take(n)
            .collect();
        if got.len() == n {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} calls ended at {}\n{}",
            got.len(),
            gw.spec.name,
            gw.diag()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
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

/// Issue 15's scenarios across the WAN lab (`integration::wanlab`): 40 ms one way, 1 % loss
/// each way. Site A holds the XMPP server, gw-a and acd-1; site B gw-b and acd-2, and the agent 2001
/// (at gw-b). One lab, one XMPP server and one set of members for all three scenarios:
///
/// * global order and callback: a callback caller at A first, then 19 callers alternately at
///   gw-b (queued at acd-2) and gw-a (acd-1); the agent answers all 20 in join order, the
///   absent caller called back at its place (first) and connected (media both ways);
/// * the agent unregisters; then the failover scenario of the loopback tests: three callers at
///   acd-1, `kill -9`, moved to acd-2 across the link, a new caller routed to the standby,
///   all four answered in their original order, no ABANDON.
///
/// Skipped (with the reason) where the lab cannot run (not root, no TUN).
#[test]
fn wan_lab_global_order_callback_and_failover_across_a_lossy_link() {
    wan_lab(ServerKind::Prosody);
}

/// The same across the WAN lab with ejabberd in site A (each lab has namespaces of its own, so
/// the two run side by side with the same ports).
#[test]
fn wan_lab_global_order_callback_and_failover_across_a_lossy_link_on_ejabberd() {
    wan_lab(ServerKind::Ejabberd);
}

fn wan_lab(kind: ServerKind) {
    if let Some(why) = integration::wanlab::unavailable() {
        eprintln!("SKIPPED (WAN lab unavailable): {why}");
        return;
    }
    let lab = WanLab::start(WanSpec::new(40, 0.01)).expect("start the WAN lab");
    let xmpp = lab
        .xmpp_server(Site::A, kind, &["gw-a", "gw-b", "acd-1", "acd-2"], "secret")
        .unwrap_or_else(|e| panic!("{kind} in site A: {e:#}"));
    let place = Place { lab: Some(&lab) };
    let more_a: Vec<String> = (1006..=1011).map(|u| u.to_string()).collect();
    let more_b: Vec<String> = (2002..=2011).map(|u| u.to_string()).collect();
    let more_a: Vec<&str> = more_a.iter().map(String::as_str).collect();
    let more_b: Vec<&str> = more_b.iter().map(String::as_str).collect();
    let mut m = Members::start(
        &place,
        &xmpp,
        ["40000-40499", "40500-40999"],
        &more_a,
        &more_b,
    );
    let eid_1 = m.advertised();
    global_order_with_callback(&place, &mut m);

    // The agent leaves: both nodes see it unavailable again before the next scenario.
    // (REGISTER `Contact: *` with `Expires: 0`: every binding of 2001 removed.)
    let gw_b_udp = m.gw_b.udp;
    let text = std::fs::read_to_string(scenario("register_contact.xml")).expect("read scenario");
    let unregister = m.gw_b.dir().join("unregister_all.xml");
    std::fs::write(
        &unregister,
        text.replace("<sip:[service]@[local_ip]:[contact_port]>", "*")
            .replace("Expires: 3600", "Expires: 0"),
    )
    .expect("write scenario");
    let reg = place.run(Site::B, || {
        run_scenario(&unregister, gw_b_udp, SippOpts::user("2001", "secret")).expect("run sipp")
    });
    assert_passes(&m.gw_b, &reg, "the agent unregistered");
    for n in [&mut m.acd_1, &mut m.acd_2] {
        n.wait_for(WAIT, "2001 unavailable again", |l| {
            l == "DEVICE PJSIP/2001 UNAVAILABLE"
        });
    }
    failover(&place, &mut m, &eid_1);
    let s = lab.stats();
    println!("WAN wire: {s:?}");
    assert!(
        s.lost[0] > 0 && s.lost[1] > 0,
        "the link lost nothing in one direction: not the 1 % loss asked for ({s:?})"
    );
}

/// An answering phone `user` at `gw` (echoing RTP) for `calls` calls, its SIPp waiting up to
/// `timeout` in all.
fn phone(
    gw: &mut GatewayProcess,
    user: &str,
    uas: &str,
    calls: u32,
    timeout: Duration,
) -> SippProcess {
    let sip_port = free_udp_port();
    let media_port = integration::free_media_port_beside(sip_port);
    let uas = uas_at(gw, uas);
    let p = SippProcess::spawn(
        &uas,
        None,
        &SippOpts {
            local_port: Some(sip_port),
            calls,
            timeout,
            extra_args: vec!["-rtp_echo".into(), "-mp".into(), media_port.to_string()],
            ..SippOpts::default()
        },
    )
    .expect("start a phone");
    let reg = run_scenario(
        &scenario("register_contact.xml"),
        gw.udp,
        SippOpts {
            keys: vec![("contact_port".into(), sip_port.to_string())],
            ..SippOpts::user(user, "secret")
        },
    )
    .expect("run sipp");
    assert_passes(gw, &reg, &format!("registration of {user}"));
    p
}

/// The UAS scenario `name` written beside `gw`'s config, its check that the INVITE's SDP
/// points at the gateway's relay naming `gw`'s address (127.0.0.1 in the scenario files).
fn uas_at(gw: &GatewayProcess, name: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(scenario(name)).expect("read scenario");
    let ip = gw.udp.ip().to_string().replace('.', "\\.");
    let path = gw.dir().join(format!("uas-{name}"));
    std::fs::write(
        &path,
        text.replace("c=IN IP4 127\\.0\\.0\\.1", &format!("c=IN IP4 {ip}")),
    )
    .expect("write scenario");
    path
}

/// The queue_log time of a `QUEUELOG time|…` line.
fn qtime(line: &str) -> u64 {
    line.trim_start_matches("QUEUELOG ")
        .split('|')
        .next()
        .and_then(|t| t.parse().ok())
        .unwrap_or(0)
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

/// Twenty callers of queue `support` at both nodes, the first of them (1001 at gw-a) asking to
/// be called back; the agent 2001 (at gw-b, not registered until all are queued) answers them
/// strictly in join order, the absent caller called back first and connected.
fn global_order_with_callback(place: &Place<'_>, m: &mut Members) {
    const N: usize = 20;
    for n in [&mut m.acd_1, &mut m.acd_2] {
        seen(n, "2001 unavailable", |l| {
            l == "DEVICE PJSIP/2001 UNAVAILABLE"
        });
    }
    let (gw_a_udp, gw_b_udp) = (m.gw_a.udp, m.gw_b.udp);
    let calls_before = m.gw_a.mark();
    // The customer's phone 1001 answers the call back and talks (plays audio).
    let gw_a = &mut m.gw_a;
    let mut customer = place.run(Site::A, || {
        phone(
            gw_a,
            "1001",
            "call_uas_callback.xml",
            1,
            Duration::from_secs(180),
        )
    });
    // 1001 calls 800 at gw-a (queued at acd-1), presses 1 and is hung up on, its place kept.
    let mut asking = place.run(Site::A, || {
        SippProcess::spawn(
            &scenario("call_uac_callback.xml"),
            Some(gw_a_udp),
            &SippOpts {
                service: Some("1001".into()),
                auth_user: Some("1001".into()),
                timeout: Duration::from_secs(60),
                ..caller("1001", "800")
            },
        )
        .expect("start the caller")
    });
    let first = callid(
        &m.acd_1
            .wait_for(WAIT, "ENTERQUEUE", |l| l.contains("|ENTERQUEUE|")),
    );
    let req = m
        .acd_1
        .wait_for(WAIT, "CALLBACKREQ", |l| l.contains("|CALLBACKREQ|"));
    assert!(
        req.contains(&format!("|{first}|support|NONE|CALLBACKREQ|1|1001")),
        "{req}"
    );
    assert_passes(
        &m.gw_a,
        &asking.wait().expect("caller"),
        "the caller hung up on",
    );

    // 19 callers alternately at gw-b (acd-2) and gw-a (acd-1), each queued before the next
    // dials, so the join order is known.
    let wait = wait_scenario(m.gw_a.dir());
    let mut order: Vec<(usize, String)> = vec![(0, first.clone())];
    let mut callers = Vec::new();
    let (mut next_a, mut next_b) = (1003, 2002);
    for i in 1..N {
        let (site, node, gw, user) = if i % 2 == 1 {
            next_b += 1;
            (Site::B, 1, gw_b_udp, next_b - 1)
        } else {
            next_a += 1;
            (Site::A, 0, gw_a_udp, next_a - 1)
        };
        let user = user.to_string();
        callers.push((node, place.run(site, || waiting_caller(&wait, gw, &user))));
        let acd = if node == 0 {
            &mut m.acd_1
        } else {
            &mut m.acd_2
        };
        let l = acd.wait_for(WAIT, "ENTERQUEUE", |l| l.contains("|ENTERQUEUE|"));
        order.push((node, callid(&l)));
    }
    // Each node knows every caller of the queue, its own and the other node's.
    for n in [&mut m.acd_1, &mut m.acd_2] {
        n.wait_for(WAIT, "all callers known", |l| {
            l == format!("WAITING support {N}")
        });
    }

    let gw_b = &mut m.gw_b;
    let mut agent = place.run(Site::B, || {
        phone(
            gw_b,
            "2001",
            "call_uas_hangup.xml",
            N as u32,
            Duration::from_secs(300),
        )
    });
    // Strictly in join order: each node connects its own callers in order, and the queue_log
    // seconds of the CONNECTs across both nodes strictly increase (one agent, each call
    // ≥ 1.5 s).
    let mut last = 0u64;
    for (i, (node, id)) in order.iter().enumerate() {
        let acd = if *node == 0 {
            &mut m.acd_1
        } else {
            &mut m.acd_2
        };
        let line = acd.wait_for(Duration::from_secs(60), "CONNECT", |l| {
            l.contains("|CONNECT|")
        });
        assert_eq!(
            &callid(&line),
            id,
            "caller {i} (joined at acd-{}) was not the next one answered there: {line}\n{}\n{}",
            node + 1,
            m.acd_1.diag(),
            m.acd_2.diag()
        );
        let t = qtime(&line);
        assert!(
            t > last,
            "caller {i} answered at {t}, not after the caller before it ({last})\n{}\n{}",
            m.acd_1.diag(),
            m.acd_2.diag()
        );
        last = t;
    }
    let back = seen(&mut m.acd_1, "CALLBACK", |l| l.contains("|CALLBACK|"));
    assert!(
        back.contains(&format!("|{first}|support|NONE|CALLBACK|1001|ANSWER")),
        "{back}\n{}",
        m.acd_1.diag()
    );
    for (node, mut c) in callers {
        let gw = if node == 0 { &m.gw_a } else { &m.gw_b };
        assert_passes(gw, &c.wait().expect("caller"), "a waiting caller");
    }
    assert_passes(
        &m.gw_a,
        &customer.wait().expect("customer"),
        "the call back",
    );
    assert_passes(&m.gw_b, &agent.wait().expect("agent"), "the agent's phone");
    // Connected: the call back at gw-a carried the customer's audio both ways (echoed by the
    // agent's phone across the link). gw-a's calls: the request, the call back, 9 callers.
    let ended = calls_ended_since(&mut m.gw_a, calls_before, 11);
    assert!(
        ended.iter().any(|c| media_both_ways(&c.line, 20)),
        "no call at gw-a with media both ways:\n{}",
        ended
            .iter()
            .map(|c| c.line.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

//! Offers across a broken link (issue 19), through the real binaries: a Prosody, gateway A
//! (the caller 1001 and agent 1002), gateway B (agent 2001) and an ACD node, each its own
//! process. Gateway B stops answering (SIGSTOP: its SIP and XMPP sockets go silent, as behind a
//! cut link; datagrams sent to it wait in its socket buffer, as on a slow link) and comes back
//! (SIGCONT, the heal). The fabric's liveness TTL is longer than the partition, so the ACD
//! learns that B is unreachable only from its own SIP keep-alives and offers.
//!
//! Queue `support` is linear over 2001 (B) then 1002 (A): every caller tries 2001 first.
//!
//! The last two tests run across the WAN lab instead (network namespaces joined by a delayed,
//! lossy wire): a partition at 150 ms one way with 3 % loss, and late answers to abandoned
//! offers over a link slower than the offer bound.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use integration::free_udp_port;
use integration::gateway::GatewayProcess;
use integration::phones::{answering_phone, assert_passes, caller, uac_scenario};
use integration::sipp::{SippOpts, SippProcess};
use integration::site::{Bus, TwoSites};
use integration::xmpp_server::{ServerKind, XmppServer};

const WAIT: Duration = Duration::from_secs(20);

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_callfabric"))
}

struct Lab {
    _xmpp: XmppServer,
    gw_a: GatewayProcess,
    gw_b: GatewayProcess,
    node: GatewayProcess,
    agent_a: SippProcess,
    agent_b: SippProcess,
}

/// Starts everything; `acd_extra` goes into `[acd]` (keep-alive settings).
fn lab(acd_extra: &str, agent_a_calls: u32) -> Lab {
    let xmpp = XmppServer::start(ServerKind::Prosody, &["gw-a", "gw-b", "acd-1"], "secret")
        .expect("start Prosody");
    let mut sites = TwoSites::new(
        &xmpp,
        &Bus::new(90.0, &["gw-a", "gw-b", "acd-1"]),
        "43000-43999",
        acd_extra,
        "strategy = \"linear\"\ntimeout = 10\nretry = 1\nringinuse = false\n\
         members = [\"PJSIP/2001\", \"PJSIP/1002\"]",
    );
    // The callers stream 4 s of audio then stay silent while they wait and talk.
    sites.gw_a.extra = format!("media_timeout_secs = 120\n{}", sites.gw_a.extra);
    let (mut gw_a, mut gw_b, mut node) = sites.start(binary());
    let agent_b = answering_phone(&mut gw_b, "2001", "call_uas.xml", 1);
    let agent_a = answering_phone(&mut gw_a, "1002", "call_uas.xml", agent_a_calls);
    node.seen_since(0, "DEVICE PJSIP/2001 NOT_INUSE", WAIT);
    node.seen_since(0, "DEVICE PJSIP/1002 NOT_INUSE", WAIT);
    Lab {
        _xmpp: xmpp,
        gw_a,
        gw_b,
        node,
        agent_a,
        agent_b,
    }
}

fn signal(p: &GatewayProcess, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &p.pid().to_string()])
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "kill {sig} {}", p.pid());
}

/// A caller at gateway A dialling the queue, in the background; it hangs up `talk` after the
/// ACD answers it (waiting in the queue included).
fn spawn_caller(gw_a: &GatewayProcess, talk: Duration) -> SippProcess {
    let base = uac_scenario(gw_a.dir());
    let text = std::fs::read_to_string(&base).expect("read scenario");
    let path: PathBuf = gw_a
        .dir()
        .join(format!("call_uac_{}.xml", talk.as_millis()));
    std::fs::write(
        &path,
        text.replace(
            "<pause milliseconds=\"5500\"/>",
            &format!("<pause milliseconds=\"{}\"/>", talk.as_millis()),
        ),
    )
    .expect("write scenario");
    let opts = SippOpts {
        timeout: talk + Duration::from_secs(60),
        ..caller("1001", "800")
    };
    SippProcess::spawn(&path, Some(gw_a.udp), &opts).expect("start the caller")
}

/// The first line (printed already, or waited for) that satisfies `pred`.
fn seen(p: &mut GatewayProcess, what: &str, pred: impl Fn(&str) -> bool) -> String {
    p.drain();
    if let Some(l) = p.history.iter().map(|l| l.trim()).find(|l| pred(l)) {
        return l.to_owned();
    }
    p.wait_for(WAIT, what, pred)
}

fn caller_of(offer_line: &str) -> String {
    offer_line
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn partition_skips_the_cut_agent_answers_with_a_reachable_one_and_returns_after_the_heal() {
    const PARTITION: Duration = Duration::from_secs(30);
    let mut lab = lab("offer_provisional_timeout_ms = 800", 1);
    let gw_b = lab.gw_b.udp.to_string();
    let down = format!("REACH {gw_b} down");
    let up = format!("REACH {gw_b} up");

    // The cut. A caller arrives at once: 2001 may still be offered before the keep-alives
    // notice (its INVITE then gets no provisional response, is given up and 1002 answers).
    signal(&lab.gw_b, "-STOP");
    let cut = Instant::now();
    let mut caller1 = spawn_caller(&lab.gw_a, PARTITION + Duration::from_secs(5));
    lab.node
        .wait_for(WAIT, "gateway B unreachable", |l| l == down);
    let detection = cut.elapsed();
    // Every line read from here on was printed after the detection.
    let detected = lab.node.history.len();
    println!("detection of the unreachable gateway: {detection:?}");
    assert!(
        detection < Duration::from_secs(1),
        "B declared unreachable {detection:?} after the cut\n{}",
        lab.node.diag()
    );
    let connect = seen(&mut lab.node, "caller 1 connected", |l| {
        l.contains("|CONNECT|")
    });
    assert!(
        connect.contains("|PJSIP/1002|CONNECT|"),
        "caller 1 answered by the reachable agent: {connect}\n{}",
        lab.node.diag()
    );
    // Any offer to 2001 so far was given up, its INVITE waiting in B's socket.
    let early_offer_to_b = lab
        .node
        .history
        .iter()
        .any(|l| integration::gateway::is_offer_line(l, "PJSIP/2001"));

    // During the partition a second caller waits (1002 talks to caller 1, 2001 is
    // unreachable): never offered to 2001, although the fabric still says NOT_INUSE.
    let mut caller2 = spawn_caller(&lab.gw_a, PARTITION + Duration::from_secs(8));
    let during = lab.node.lines_until(cut + PARTITION);
    // From the detection (under a second after the cut) to the heal: no offer to 2001.
    let offers_to_b: Vec<String> = lab.node.history[detected..]
        .iter()
        .map(|l| l.trim().to_owned())
        .filter(|l| integration::gateway::is_offer_line(l, "PJSIP/2001"))
        .collect();
    assert!(
        offers_to_b.is_empty(),
        "offered to the agent behind the cut link after the first second: {offers_to_b:?}\n{}",
        lab.node.diag()
    );
    assert!(
        !during.iter().any(|l| l.contains("|CONNECT|")),
        "caller 2 connected during the partition\n{}",
        lab.node.diag()
    );

    // The heal: B's agent is offered caller 2 within 2 s, and answers.
    signal(&lab.gw_b, "-CONT");
    let heal = Instant::now();
    let offer = lab
        .node
        .wait_for(WAIT, "an offer to 2001 after the heal", |l| {
            integration::gateway::is_offer_line(l, "PJSIP/2001")
        });
    let back = heal.elapsed();
    println!("heal to the remote agent's first offer: {back:?}");
    assert!(
        lab.node.history.iter().any(|l| l.trim() == up),
        "offered before B was reachable again\n{}",
        lab.node.diag()
    );
    assert!(
        back < Duration::from_secs(2),
        "remote agent offered {back:?} after the heal\n{}",
        lab.node.diag()
    );
    let c2 = caller_of(&offer);
    let connect = lab
        .node
        .wait_for(WAIT, "caller 2 connected", |l| l.contains("|CONNECT|"));
    assert!(
        connect.contains(&format!("|{c2}|support|PJSIP/2001|CONNECT|")),
        "{connect}\n{}",
        lab.node.diag()
    );
    // The agent phones answered exactly the calls they were meant to: no ghost rang 2001
    // first (its SIPp takes one call).
    assert_passes(
        &lab.gw_b,
        &lab.agent_b.wait().expect("agent at B"),
        "agent at B",
    );
    assert_passes(
        &lab.gw_a,
        &caller2.wait().expect("caller 2"),
        "caller 2 answered after the heal",
    );
    assert_passes(
        &lab.gw_a,
        &caller1.wait().expect("caller 1"),
        "caller 1 answered during the partition",
    );
    assert_passes(
        &lab.gw_a,
        &lab.agent_a.wait().expect("agent at A"),
        "agent at A",
    );
    if early_offer_to_b {
        // Caller 1's abandoned INVITE waited in B's socket: refused for its deadline.
        lab.gw_b.wait_for(WAIT, "the stale offer refused", |l| {
            l.starts_with("OFFER REFUSED PJSIP/2001 deadline")
        });
    }
}

#[test]
fn an_abandoned_offer_never_rings_the_agent_after_the_heal() {
    // Keep-alives every 60 s: the offer itself finds out that B does not answer.
    let mut lab = lab(
        "keepalive_interval_ms = 60000\nkeepalive_timeout_ms = 60000\noffer_provisional_timeout_ms = 800",
        1,
    );
    signal(&lab.gw_b, "-STOP");
    let mut caller1 = spawn_caller(&lab.gw_a, Duration::from_secs(6));
    let offer = lab.node.wait_for(WAIT, "the offer to 2001", |l| {
        integration::gateway::is_offer_line(l, "PJSIP/2001")
    });
    let sent = Instant::now();
    lab.node.wait_for(WAIT, "no provisional response", |l| {
        l.starts_with("OFFER UNANSWERED PJSIP/2001 ")
    });
    let given_up = sent.elapsed();
    assert!(
        given_up < Duration::from_secs(3),
        "offer given up after {given_up:?}"
    );
    // The next member answers caller 1.
    let connect = lab
        .node
        .wait_for(WAIT, "caller 1 connected", |l| l.contains("|CONNECT|"));
    assert!(
        connect.contains(&format!(
            "|{}|support|PJSIP/1002|CONNECT|",
            caller_of(&offer)
        )),
        "{connect}\n{}",
        lab.node.diag()
    );
    assert_passes(
        &lab.gw_a,
        &caller1.wait().expect("caller 1"),
        "caller 1 answered by the next member",
    );
    // The heal, well after the offer's deadline: B reads the INVITE that waited in its socket
    // (sent once: never retransmitted after it was given up) and refuses it.
    signal(&lab.gw_b, "-CONT");
    let refused = lab.gw_b.wait_for(WAIT, "the stale offer refused", |l| {
        l.starts_with("OFFER REFUSED PJSIP/2001 deadline")
    });
    let late: u64 = refused
        .rsplit("late_ms=")
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(late >= 500, "{refused}");
    // 2001's phone never rang for it: its one call is the next caller's.
    let mut caller2 = spawn_caller(&lab.gw_a, Duration::from_secs(4));
    let connect = lab
        .node
        .wait_for(WAIT, "caller 2 connected", |l| l.contains("|CONNECT|"));
    assert!(connect.contains("|PJSIP/2001|CONNECT|"), "{connect}");
    assert_passes(
        &lab.gw_b,
        &lab.agent_b.wait().expect("agent at B"),
        "agent at B answered only the live offer",
    );
    assert_passes(&lab.gw_a, &caller2.wait().expect("caller 2"), "caller 2");
    let b_calls = lab
        .gw_b
        .history
        .iter()
        .filter(|l| l.starts_with("CALL ") && l.contains(" ENDED "))
        .count();
    assert!(
        b_calls <= 1,
        "gateway B ran {b_calls} calls\n{}",
        lab.gw_b.diag()
    );
    drop(lab.agent_a);
}

/// The same across the WAN lab (network namespaces joined by a wire with 150 ms one way and
/// 3 % loss; the partition drops every packet): site A runs the ACD and a waiting caller,
/// site B a gateway through which the queue's agent is reached (it refuses each offer, so the
/// caller is offered again about every round trip while B is reachable). During a 30 s
/// partition the agent is never offered after the first second (B is declared unreachable
/// within it); after the heal it is offered again within 2 s. Skipped (with the reason) where the lab cannot run (not root, no TUN).
#[test]
fn wan_lab_partition_at_150_ms_one_way() {
    use integration::wanlab::{unavailable, Site, WanLab, WanSpec};
    if let Some(why) = unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    let lab = WanLab::start(WanSpec::new(150, 0.03)).expect("start the WAN lab");
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = binary().to_str().expect("binary path");
    let a = lab.addr(Site::A);
    let b = lab.socket_addr(Site::B, 5060);
    let write = |name: &str, body: String| {
        let p = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &p,
            format!("[node]\nname = \"{name}\"\nsite = \"{name}\"\n\n[statebus]\nbackend = \"local\"\n\n{body}"),
        )
        .expect("write config");
        p.display().to_string()
    };
    let gw_cfg = write(
        "gw-b",
        format!(
            "[gateway]\nudp = [\"{b}\"]\ntcp = [\"{tcp}\"]\nrealm = \"b.example\"\n\
             database = \"sqlite://{db}\"\nt1_ms = 100\n\n[[gateway.trunk]]\nname = \"acd\"\n\
             address = \"{a}:5070\"\nprefixes = []\n",
            tcp = lab.socket_addr(Site::B, 5061),
            db = dir.path().join("gw-b.db").display(),
        ),
    );
    let acd_cfg = write(
        "acd-1",
        format!(
            "[acd]\nudp = \"{a}:5070\"\nrtp_ports = \"40000-40999\"\nt1_ms = 100\n\n\
             [acd.numbers]\n\"800\" = \"support\"\n\n\
             [[acd.gateway]]\nname = \"gw-b\"\naddress = \"{b}\"\n\n\
             [[acd.gateway]]\nname = \"caller\"\naddress = \"{a}:5090\"\n\n\
             [[acd.queue]]\nname = \"support\"\nstrategy = \"linear\"\ntimeout = 10\nretry = 0\n\
             members = [\"PJSIP/2001\"]\n"
        ),
    );
    let env = [("RUST_LOG", "info")];
    let mut gw = lab
        .spawn(
            Site::B,
            "gw-b",
            bin,
            &["gateway", "--config", &gw_cfg],
            &env,
        )
        .expect("gateway B");
    gw.wait_since(0, WAIT, "gateway ready", |l| l.starts_with("gateway ready"))
        .expect("gateway B ready");
    let mut acd = lab
        .spawn(Site::A, "acd-1", bin, &["acd", "--config", &acd_cfg], &env)
        .expect("ACD");
    acd.wait_since(0, WAIT, "acd ready", |l| l.starts_with("acd ready"))
        .expect("ACD ready");
    // A caller who answers OPTIONS (-aa) and waits in the queue for an hour.
    let scenario = integration::phones::scenario("call_uac_queue_wait.xml");
    let sipp = integration::require_binary("sipp").expect("sipp");
    let (target, ip) = (format!("{a}:5070"), a.to_string());
    let scenario = scenario.display().to_string();
    let _caller = lab
        .spawn(
            Site::A,
            "caller",
            &sipp,
            &[
                "-sf", &scenario, &target, "-i", &ip, "-p", "5090", "-m", "1", "-aa", "-nostdin",
            ],
            &[],
        )
        .expect("caller");
    let is_offer = |l: &str| integration::gateway::is_offer_line(l, "PJSIP/2001");
    acd.wait_since(0, WAIT, "the first offer", is_offer)
        .expect("offered while B is reachable");

    let (down, up) = (format!("REACH {b} down"), format!("REACH {b} up"));
    let mark = acd.mark();
    lab.partition();
    let cut = Instant::now();
    let (at, _) = acd
        .wait_since(mark, WAIT, "B unreachable", |l| l == down)
        .expect("B declared unreachable");
    let detection = at.saturating_duration_since(cut);
    println!("150 ms one way: unreachable {detection:?} after the cut");
    assert!(detection < Duration::from_secs(1), "{}", acd.diag());
    // Offers read from the ACD's stdout from the first second after the cut to the heal.
    let first_second = cut + Duration::from_secs(1);
    while cut.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(200));
        acd.drain();
        let late: Vec<&String> = acd.history[mark..]
            .iter()
            .filter(|(t, l)| *t >= first_second && is_offer(l.trim()))
            .map(|(_, l)| l)
            .collect();
        assert!(
            late.is_empty(),
            "offered behind the cut link after the first second: {late:?}\n{}",
            acd.diag()
        );
    }
    let mark = acd.mark();
    lab.heal();
    let heal = Instant::now();
    let (at_offer, _) = acd
        .wait_since(mark, WAIT, "an offer after the heal", is_offer)
        .expect("offered again after the heal");
    let back = at_offer.saturating_duration_since(heal);
    println!("150 ms one way: offered again {back:?} after the heal");
    assert!(acd.lines_since(mark).contains(&up), "{}", acd.diag());
    assert!(back < Duration::from_secs(2), "{}", acd.diag());
    assert!(gw.is_running(), "{}", gw.diag());
}

/// Site A: the ACD (offers given up after 1.5 s without a provisional response, T1 100 ms, so
/// Timer B ends an abandoned INVITE after 6.4 s) and, once `call` is called, a caller waiting
/// in queue 800 (linear over `phones`, retry 60 s); site B: a gateway (T1 `gw_t1_ms`) and one
/// SIPp phone per `(user, scenario)`, registered there. The link: 1 s one way, no loss.
struct LateLab {
    lab: integration::wanlab::WanLab,
    _dir: tempfile::TempDir,
    gw: integration::wanlab::SiteProcess,
    acd: integration::wanlab::SiteProcess,
    phones: Vec<SippProcess>,
    caller: Option<integration::wanlab::SiteProcess>,
}

impl LateLab {
    fn start(phones: &[(&str, &str)], gw_t1_ms: u64) -> Option<LateLab> {
        use integration::sipp::run_scenario;
        use integration::wanlab::{unavailable, Site, WanLab, WanSpec};
        if let Some(why) = unavailable() {
            eprintln!("skipped: {why}");
            return None;
        }
        let lab = WanLab::start(WanSpec::new(1000, 0.0)).expect("start the WAN lab");
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = binary().to_str().expect("binary path");
        let a = lab.addr(Site::A);
        let b = lab.socket_addr(Site::B, 5060);
        let write = |name: &str, body: String| {
            let p = dir.path().join(format!("{name}.toml"));
            std::fs::write(
                &p,
                format!("[node]\nname = \"{name}\"\nsite = \"{name}\"\n\n[statebus]\nbackend = \"local\"\n\n{body}"),
            )
            .expect("write config");
            p.display().to_string()
        };
        let gw_cfg = write(
            "gw-b",
            format!(
                "[gateway]\nudp = [\"{b}\"]\ntcp = [\"{tcp}\"]\nrealm = \"b.example\"\n\
                 database = \"sqlite://{db}\"\nt1_ms = {gw_t1_ms}\ndigest_algorithms = [\"MD5\"]\n\
                 qualify_interval_secs = 300\n\n[[gateway.trunk]]\nname = \"acd\"\n\
                 address = \"{a}:5070\"\nprefixes = []\n",
                tcp = lab.socket_addr(Site::B, 5061),
                db = dir.path().join("gw-b.db").display(),
            ),
        );
        for (user, _) in phones {
            integration::gateway::devices_add(binary(), Path::new(&gw_cfg), user, "secret");
        }
        let members: Vec<String> = phones
            .iter()
            .map(|(u, _)| format!("\"PJSIP/{u}\""))
            .collect();
        let acd_cfg = write(
            "acd-1",
            format!(
                "[acd]\nudp = \"{a}:5070\"\nrtp_ports = \"40000-40999\"\nt1_ms = 100\n\
                 offer_provisional_timeout_ms = 1500\n\n\
                 [acd.numbers]\n\"800\" = \"support\"\n\n\
                 [[acd.gateway]]\nname = \"gw-b\"\naddress = \"{b}\"\n\n\
                 [[acd.gateway]]\nname = \"caller\"\naddress = \"{a}:5090\"\n\n\
                 [[acd.queue]]\nname = \"support\"\nstrategy = \"linear\"\ntimeout = 10\nretry = 60\n\
                 members = [{}]\n",
                members.join(", ")
            ),
        );
        let env = [("RUST_LOG", "info")];
        let mut gw = lab
            .spawn(
                Site::B,
                "gw-b",
                bin,
                &["gateway", "--config", &gw_cfg],
                &env,
            )
            .expect("gateway B");
        gw.wait_since(0, WAIT, "gateway ready", |l| l.starts_with("gateway ready"))
            .expect("gateway B ready");
        // The phones, inside site B (SIPp on its loopback), registered at B.
        let phone = |user: &str, uas: &str| -> SippProcess {
            let sip_port = free_udp_port();
            let media_port = integration::free_media_port_beside(sip_port);
            let uas = SippProcess::spawn(
                &integration::phones::scenario(uas),
                None,
                &SippOpts {
                    local_port: Some(sip_port),
                    calls: 1,
                    timeout: Duration::from_secs(90),
                    extra_args: vec!["-mp".into(), media_port.to_string()],
                    ..SippOpts::default()
                },
            )
            .expect("start a phone");
            let reg = run_scenario(
                &integration::phones::scenario("register_contact.xml"),
                b,
                SippOpts {
                    keys: vec![("contact_port".into(), sip_port.to_string())],
                    ..SippOpts::user(user, "secret")
                },
            )
            .expect("run sipp");
            assert!(reg.passed(), "registration of {user}\n{}", reg.describe());
            uas
        };
        let phones = lab
            .run_in(Site::B, || {
                phones
                    .iter()
                    .map(|(u, sc)| phone(u, sc))
                    .collect::<Vec<_>>()
            })
            .expect("phones at B");
        let mut acd = lab
            .spawn(Site::A, "acd-1", bin, &["acd", "--config", &acd_cfg], &env)
            .expect("ACD");
        acd.wait_since(0, WAIT, "acd ready", |l| l.starts_with("acd ready"))
            .expect("ACD ready");
        // B answers its first keep-alive after 2 s (it was declared unreachable at 0.7 s):
        // from then on the 2 s round trip is known, and B stays reachable.
        let up = format!("REACH {b} up");
        acd.wait_since(0, WAIT, "B reachable", |l| l == up)
            .expect("B reachable over the slow link");
        Some(LateLab {
            lab,
            _dir: dir,
            gw,
            acd,
            phones,
            caller: None,
        })
    }

    /// The caller dials the queue (and waits in it for an hour).
    fn call(&mut self) {
        use integration::wanlab::Site;
        let a = self.lab.addr(Site::A);
        let scenario = integration::phones::scenario("call_uac_queue_wait.xml");
        let sipp = integration::require_binary("sipp").expect("sipp");
        let (target, ip) = (format!("{a}:5070"), a.to_string());
        let scenario = scenario.display().to_string();
        self.caller = Some(
            self.lab
                .spawn(
                    Site::A,
                    "caller",
                    &sipp,
                    &[
                        "-sf", &scenario, &target, "-i", &ip, "-p", "5090", "-m", "1", "-aa",
                        "-nostdin",
                    ],
                    &[],
                )
                .expect("caller"),
        );
    }

    /// Waits for the offer to `user` and for the ACD giving it up; returns when it was sent.
    fn offered_and_given_up(&mut self, user: &str) -> Instant {
        let iface = format!(" PJSIP/{user} ");
        let (at, _) = self
            .acd
            .wait_since(0, WAIT, "the offer", |l| {
                l.starts_with("OFFER acd-") && l.contains(&iface)
            })
            .expect("offered");
        let unanswered = format!("OFFER UNANSWERED PJSIP/{user} ");
        self.acd
            .wait_since(0, WAIT, "the offer given up", |l| {
                l.starts_with(&unanswered)
            })
            .expect("given up without a provisional response");
        at
    }

    /// Phone `i`'s SIPp scenario passed.
    fn phone_passes(&mut self, i: usize, what: &str) {
        let out = self.phones[i].wait().expect("phone");
        assert!(
            out.passed(),
            "{what}\n{}\n{}\n{}",
            out.describe(),
            self.gw.diag(),
            self.acd.diag()
        );
    }

    /// The `n`th (0-based) `CALL … ENDED …` line of gateway B and when it was read.
    fn call_ended(&mut self, n: usize) -> (Instant, String) {
        let is_end = |l: &str| l.starts_with("CALL ") && l.contains(" ENDED ");
        let mut mark = 0;
        for _ in 0..n {
            self.gw
                .wait_since(mark, WAIT, "a call's end", is_end)
                .expect("B's call ended");
            mark = self
                .gw
                .history
                .iter()
                .enumerate()
                .skip(mark)
                .find(|(_, (_, l))| is_end(l.trim()))
                .map_or(mark, |(i, _)| i + 1);
        }
        let (at, line) = self
            .gw
            .wait_since(mark, Duration::from_secs(60), "a call's end", is_end)
            .expect("B's call ended");
        println!("{line}");
        (at, line)
    }

    fn never_connected(&mut self) {
        assert!(
            !self
                .acd
                .lines_since(0)
                .iter()
                .any(|l| l.contains("|CONNECT|")),
            "the caller was connected to an abandoned offer\n{}",
            self.acd.diag()
        );
    }
}

/// Late answers to offers the ACD gave up, produced for real: across the WAN lab at 1 s one
/// way, an offer reaches gateway B before its deadline (1.5 s after it was sent) but B's
/// answers come back 2 s after it was sent, after the ACD gave it up (no provisional response
/// within 1.5 s) and moved on. Queue `support` is linear over 2001 then 2002, both phones at B:
/// 2001 keeps ringing (its late 180 must be CANCELled), 2002 answers at once (its late 200 must
/// be ACKed and BYEd). Neither phone may ring or stay in a call: each of B's calls ends within
/// 5 s of its offer (one round trip and a half; gateway B would give up an unacknowledged 200
/// by itself only after 6.4 s, and never on a ringing phone), and the caller is connected to
/// no one. Skipped (with the reason) where the lab cannot run (not root, no TUN).
#[test]
fn wan_lab_late_answers_to_abandoned_offers_are_cancelled_or_hung_up() {
    let Some(mut l) = LateLab::start(
        &[
            ("2001", "call_uas_cancel.xml"),
            ("2002", "call_uas_answer_now.xml"),
        ],
        100,
    ) else {
        return;
    };
    l.call();
    let offered = [
        l.offered_and_given_up("2001"),
        l.offered_and_given_up("2002"),
    ];
    // The late 180 from 2001 got a CANCEL (its phone saw CANCEL, answered 487), the late 200
    // from 2002 an ACK and a BYE.
    l.phone_passes(0, "the ringing phone was not cancelled");
    l.phone_passes(1, "the answering phone got no ACK and BYE");
    let ends = [l.call_ended(0), l.call_ended(1)];
    assert!(ends[0].1.contains(" ENDED cancel "), "{}", ends[0].1);
    // Hung up by the ACD (side a), not given up by gateway B.
    assert!(ends[1].1.contains(" ENDED bye-a "), "{}", ends[1].1);
    for (user, (offer, (end, _))) in ["2001", "2002"].iter().zip(offered.iter().zip(&ends)) {
        let took = end.saturating_duration_since(*offer);
        println!("{user}: B's call ended {took:?} after the offer");
        assert!(
            took < Duration::from_secs(5),
            "{user}'s call at B ended {took:?} after the offer\n{}\n{}",
            l.gw.diag(),
            l.acd.diag()
        );
    }
    l.never_connected();
}

/// A 200 after the heal: the phone at B answers an offer the moment it arrives, then the link
/// is cut (B's 100, 180 and 200 are lost). The ACD gives the offer up (1.5 s) and its INVITE
/// transaction ends (Timer B, 6.4 s). Gateway B (T1 500 ms) retransmits its 200 for 32 s. After
/// the heal (8 s after the offer) the next retransmission reaches the ACD, which matches no
/// transaction: the ACD still ACKs it and sends a BYE, so the phone's call ends within 7 s of
/// the heal, long before gateway B would give up the unacknowledged 200 (32 s after the answer).
#[test]
fn wan_lab_a_200_after_the_heal_is_acked_and_hung_up() {
    let Some(mut l) = LateLab::start(&[("2001", "call_uas_answer_now.xml")], 500) else {
        return;
    };
    l.call();
    let (offer, _) = l
        .acd
        .wait_since(0, WAIT, "the offer", |s| {
            s.starts_with("OFFER acd-") && s.contains(" PJSIP/2001 ")
        })
        .expect("offered");
    // The phone answered (B publishes INUSE) about 1 s after the offer: B's answers are still
    // on the wire for one more second, and the cut drops them.
    l.gw.wait_since(0, WAIT, "the phone answered", |s| {
        s == "DEVICE PJSIP/2001 INUSE"
    })
    .expect("answered at B");
    l.lab.partition();
    assert!(
        offer.elapsed() < Duration::from_millis(1900),
        "the cut came too late to drop B's answers"
    );
    l.acd
        .wait_since(0, WAIT, "the offer given up", |s| {
            s.starts_with("OFFER UNANSWERED PJSIP/2001 ")
        })
        .expect("given up without a provisional response");
    // Past the ACD's Timer B (6.4 s after the offer), inside B's 32 s of 200 retransmissions.
    while offer.elapsed() < Duration::from_secs(8) {
        std::thread::sleep(Duration::from_millis(100));
    }
    l.lab.heal();
    let heal = Instant::now();
    l.phone_passes(0, "the answering phone got no ACK and BYE");
    let (end, line) = l.call_ended(0);
    assert!(line.contains(" ENDED bye-a "), "{line}");
    let took = end.saturating_duration_since(heal);
    println!("B's call ended {took:?} after the heal");
    assert!(
        took < Duration::from_secs(7),
        "the call at B ended {took:?} after the heal\n{}\n{}",
        l.gw.diag(),
        l.acd.diag()
    );
    l.never_connected();
}

//! The state fabric's failure handling end to end, through `callfabric` processes and a real
//! XMPP server (each scenario on Prosody and on ejabberd): a site gateway killed with SIGKILL
//! while another site and an ACD watch (its devices expire after the liveness TTL and the ACD
//! stops offering them; they return when it is restarted), and the XMPP server frozen with
//! SIGSTOP under a running member (it probes the silent stream with an XEP-0199 ping,
//! reports the fabric offline within its keepalive and IQ timeouts, and resyncs once the server
//! runs again).

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use integration::gateway::GatewayProcess;
use integration::phones::{answering_phone, assert_passes, caller, uac_scenario};
use integration::sipp::run_scenario;
use integration::site::{Bus, BusTls, TwoSites};
use integration::xmpp_server::{ServerKind, XmppServer};

const WAIT: Duration = Duration::from_secs(20);
/// `liveness_ttl_secs` of every member (heartbeats every 0.5 s).
const TTL: Duration = Duration::from_secs(5);

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_callfabric"))
}

macro_rules! on_both_servers {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn prosody() {
                super::$name(integration::xmpp_server::ServerKind::Prosody)
            }
            #[test]
            fn ejabberd() {
                super::$name(integration::xmpp_server::ServerKind::Ejabberd)
            }
        }
    )*};
}

on_both_servers!(
    killed_gateway_expires_after_the_ttl_and_returns_when_restarted,
    frozen_server_is_detected_offline_and_resynced_after,
);

/// The fabric of every scenario here: plain TCP, heartbeats every 0.5 s, liveness TTL [`TTL`];
/// `extra` goes into `[statebus]`.
fn bus(extra: &str) -> Bus {
    Bus {
        tls: BusTls::Plaintext,
        extra: extra.to_owned(),
        ..Bus::new(TTL.as_secs_f64(), &["gw-a", "gw-b", "acd-1", "watcher"])
    }
}

/// Site A (caller 1001, agent 1002) and site B (agent 2001) gateways and an ACD node, all on
/// the fabric; queue 800 is linear over 2001 (site B) then 1002 (site A). Site B's gateway is
/// killed (SIGKILL): the ACD and site A read 2001 UNAVAILABLE once the TTL has passed since
/// its last heartbeat (not before), and the next caller is offered to 1002 without an offer to
/// the dead site (no RINGNOANSWER for 2001). Site B's gateway is started again and 2001's
/// phone registers: both watchers read 2001 NOT_INUSE within the TTL of the registration, and
/// the next caller is connected to 2001 through site B again.
fn killed_gateway_expires_after_the_ttl_and_returns_when_restarted(kind: ServerKind) {
    let xmpp = XmppServer::start(kind, &["gw-a", "gw-b", "acd-1", "watcher"], "secret")
        .unwrap_or_else(|e| panic!("start {kind}: {e:#}"));
    let sites = TwoSites::new(
        &xmpp,
        &bus(""),
        "45000-45999",
        "",
        "strategy = \"linear\"\ntimeout = 10\nretry = 1\nringinuse = false\n\
         members = [\"PJSIP/2001\", \"PJSIP/1002\"]",
    );
    let (mut gw_a, mut gw_b, mut node) = sites.start(binary());

    let old_phone_b = answering_phone(&mut gw_b, "2001", "call_uas.xml", 1);
    let mut agent_a = answering_phone(&mut gw_a, "1002", "call_uas.xml", 1);
    for user in ["2001", "1002"] {
        node.seen_since(0, &format!("DEVICE PJSIP/{user} NOT_INUSE"), WAIT);
    }
    gw_a.seen_since(0, "DEVICE PJSIP/2001 NOT_INUSE", WAIT);
    let (mark_node, mark_a) = (node.mark(), gw_a.mark());

    let killed = Instant::now();
    gw_b.kill();
    node.seen_since(mark_node, "DEVICE PJSIP/2001 UNAVAILABLE", WAIT);
    let took = killed.elapsed();
    // The last heartbeat left about one interval (0.5 s) before the kill, but on a loaded machine
    // a starved gateway's heartbeats come late (in a fresh-clone run under load the last one was
    // heard 1.2 s before the kill). Half the TTL still tells expiry by the TTL from the ways a
    // member could be expired early: the ACD's reachability probe (0.7 s) or the server's
    // unavailable presence (at once).
    assert!(
        took >= TTL / 2,
        "2001 expired {took:?} after the kill, before the {TTL:?} TTL\n{}",
        node.diag()
    );
    // The expiry timer fires at the TTL after the member was last heard (measured 4.9-5.0 s
    // under load): 3 s of slack, not a silent member read as alive much longer.
    assert!(
        took < TTL + Duration::from_secs(3),
        "expired only after {took:?}\n{}",
        node.diag()
    );
    gw_a.seen_since(mark_a, "DEVICE PJSIP/2001 UNAVAILABLE", WAIT);
    eprintln!("2001 read UNAVAILABLE at the ACD {took:?} after SIGKILL (TTL {TTL:?})");

    let out =
        run_scenario(&uac_scenario(gw_a.dir()), gw_a.udp, caller("1001", "800")).expect("run sipp");
    assert_passes(&gw_a, &out, "caller at site A");
    let connect = node.wait_for(WAIT, "the CONNECT", |l| l.contains("|CONNECT|"));
    assert!(
        connect.contains("|PJSIP/1002|CONNECT|"),
        "{connect}\n{}",
        node.diag()
    );
    node.drain();
    assert!(
        !node.history.iter().any(|l| l.contains("|PJSIP/2001|")),
        "the ACD offered the dead site's agent\n{}",
        node.diag()
    );
    assert_passes(
        &gw_a,
        &agent_a.wait().expect("agent at A"),
        "agent 1002 answered",
    );

    // Site B comes back: its gateway starts again (same config, database and ports) and 2001's
    // phone registers again. The old phone went down with the site (so the contact the gateway
    // restores from its database leads nowhere).
    drop(old_phone_b);
    let (mark_node, mark_a) = (node.mark(), gw_a.mark());
    gw_b.restart();
    let mark_b = gw_b.mark();
    let mut agent_b = answering_phone(&mut gw_b, "2001", "call_uas.xml", 1);
    let registered = Instant::now();
    gw_b.seen_since(mark_b, "DEVICE PJSIP/2001 NOT_INUSE", WAIT);
    node.seen_since(mark_node, "DEVICE PJSIP/2001 NOT_INUSE", WAIT);
    let back = registered.elapsed();
    gw_a.seen_since(mark_a, "DEVICE PJSIP/2001 NOT_INUSE", WAIT);
    eprintln!(
        "2001 read NOT_INUSE at the ACD {back:?} after it registered at the restarted gateway"
    );
    // A revived member's items are fetched as soon as its first fresh heartbeat is heard (it
    // beats on connect, then every 0.5 s): not after a TTL, nor at the next resync.
    assert!(
        back < TTL,
        "2001 came back at the ACD only {back:?} after registering\n{}",
        node.diag()
    );
    // Linear: 2001 is first again, reached through the restarted gateway, with media.
    let mark_node = node.mark();
    let out =
        run_scenario(&uac_scenario(gw_a.dir()), gw_a.udp, caller("1001", "800")).expect("run sipp");
    assert_passes(&gw_a, &out, "caller after site B came back");
    let connect = line_since(&mut node, mark_node, "the CONNECT", |l| {
        l.contains("|CONNECT|")
    });
    assert!(
        connect.contains("|PJSIP/2001|CONNECT|"),
        "{connect}\n{}",
        node.diag()
    );
    assert_passes(
        &gw_b,
        &agent_b.wait().expect("agent at B"),
        "agent 2001 answered at the restarted site",
    );
    let at_b = gw_b.call_ended(WAIT);
    assert!(
        at_b.num("b_out") > 50 && at_b.num("b_in") > 50,
        "media at site B: {}",
        at_b.line
    );
}

/// The first stdout line of `p` from history index `from` on (already read or not) that
/// satisfies `pred`.
fn line_since(
    p: &mut GatewayProcess,
    from: usize,
    what: &str,
    pred: impl Fn(&str) -> bool,
) -> String {
    p.drain();
    if let Some(l) = p.history.iter().skip(from).find(|l| pred(l.trim())) {
        return l.trim().to_owned();
    }
    p.wait_for(WAIT, what, pred)
}

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends SIGCONT to a process on drop (a failed test must not leave a frozen server behind).
struct Frozen(u32);

impl Frozen {
    fn freeze(pid: u32) -> Frozen {
        signal("-STOP", pid);
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        signal("-CONT", self.0);
    }
}

fn signal(sig: &str, pid: u32) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill {sig} {pid}");
}

fn write_config(dir: &Path, name: &str, eid: &str, statebus: &str) -> std::path::PathBuf {
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(
        &p,
        format!("[node]\nname = \"{name}\"\neid = \"{eid}\"\n\n[statebus]\n{statebus}"),
    )
    .expect("write config");
    p
}

/// Waits for a JSON line of `callfabric statebus watch --json` equal to `want`; on timeout,
/// fails with what came and the tail of the watcher's log `err`.
fn wait_json(
    (rx, err): (&mpsc::Receiver<String>, &Path),
    seen: &mut Vec<serde_json::Value>,
    want: &serde_json::Value,
    timeout: Duration,
) -> Instant {
    if seen.contains(want) {
        return Instant::now();
    }
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).unwrap_or_else(|e| {
            panic!(
                "no {want} from the watcher ({e}); got {seen:?}\n{}",
                integration::tail_file(err, 40)
            )
        });
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        seen.push(v.clone());
        if &v == want {
            return Instant::now();
        }
    }
}

/// The server stops answering (SIGSTOP) under a running member (`callfabric statebus watch`,
/// keepalive 2 s, IQ timeout 2 s): the member reports the fabric offline and, once the TTL
/// has passed, reads the other members' devices UNAVAILABLE. After SIGCONT it is back online
/// and resynced: the device of a member that stayed up reads INUSE again, and a state
/// published by another member while the server was frozen arrives. (Prosody reconnects;
/// ejabberd too: the member does not enable XEP-0198 stream management.)
fn frozen_server_is_detected_offline_and_resynced_after(kind: ServerKind) {
    let mut xmpp = XmppServer::start(kind, &["gw-a", "gw-b", "watcher"], "secret")
        .unwrap_or_else(|e| panic!("start {kind}: {e:#}"));
    let dir = tempfile::tempdir().expect("tempdir");
    let fast = "keepalive_secs = 2\niq_timeout_secs = 2\nreconnect_max_secs = 2\n";
    let watcher = write_config(
        dir.path(),
        "watcher",
        "02:00:00:00:00:77",
        &bus(fast).section(&xmpp, "watcher"),
    );
    let gw_a = write_config(
        dir.path(),
        "gw-a",
        "02:00:00:00:00:0a",
        &bus(fast).section(&xmpp, "gw-a"),
    );
    let gw_b = write_config(
        dir.path(),
        "gw-b",
        "02:00:00:00:00:0b",
        &bus(fast).section(&xmpp, "gw-b"),
    );
    let publisher = |cfg: &Path, device: &str, hold: bool| {
        let mut c = Command::new(binary());
        c.args(["statebus", "publish", "--config"])
            .arg(cfg)
            .args(["--device", device])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if hold {
            c.arg("--hold");
        }
        Proc(c.spawn().expect("spawn callfabric statebus publish"))
    };
    let _a = publisher(&gw_a, "PJSIP/500=INUSE", true);
    let err = dir.path().join("watch.stderr");
    let mut watch = Proc(
        Command::new(binary())
            .args(["statebus", "watch", "--json", "--config"])
            .arg(&watcher)
            // tokio-xmpp's debug lines say how a silent stream was probed.
            .env("CALLFABRIC_LOG", "info,tokio_xmpp=debug")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&err).expect("stderr file"))
            .spawn()
            .expect("spawn callfabric statebus watch"),
    );
    let stdout = watch.0.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let device =
        |key: &str, state: &str| serde_json::json!({"type": "device", "key": key, "state": state});
    let status = |s: &str| serde_json::json!({"type": "status", "status": s});
    wait_json((&rx, &err), &mut seen, &device("PJSIP/500", "INUSE"), WAIT);
    wait_json((&rx, &err), &mut seen, &status("online"), WAIT);
    // gw-a's heartbeat too: only members that heartbeat are subject to liveness.
    let gw_a_up = serde_json::json!({"type": "peer", "eid": "02:00:00:00:00:0a", "alive": true,
        "site": "default", "role": "node"});
    wait_json((&rx, &err), &mut seen, &gw_a_up, WAIT);
    assert!(!seen.contains(&status("offline")), "{seen:?}");

    let pid = xmpp.pid().expect("server pid");
    let frozen = Frozen::freeze(pid);
    let stopped = Instant::now();
    seen.clear();
    let offline_at = wait_json((&rx, &err), &mut seen, &status("offline"), WAIT);
    let detect = offline_at - stopped;
    // Silent for keepalive (2 s), then unanswered for iq_timeout (2 s) more: offline. The
    // stream last heard something at most a heartbeat (0.5 s) before the freeze.
    assert!(
        (Duration::from_secs(3)..Duration::from_secs(8)).contains(&detect),
        "offline {detect:?} after SIGSTOP, not after keepalive + iq_timeout (4 s)\n{}",
        integration::tail_file(&err, 40)
    );
    // The silence was probed before the stream was given up, with an XEP-0199 ping on both
    // servers: the bus leaves XEP-0198 stream management off (on ejabberd it would probe with
    // an `<r/>` instead).
    let probe = "Stream Management is not enabled, enqueueing ping IQ";
    let log = std::fs::read_to_string(&err).unwrap_or_default();
    assert!(
        log.contains(probe),
        "no `{probe}` in the watcher's log\n{}",
        integration::tail_file(&err, 40)
    );
    // Kept frozen until the member has expired gw-a (no heartbeat for the TTL): its device
    // reads UNAVAILABLE, and only a resync can bring it back.
    wait_json(
        (&rx, &err),
        &mut seen,
        &device("PJSIP/500", "UNAVAILABLE"),
        WAIT,
    );
    // Another member publishes while the server is frozen (held until it answers again).
    let mut b = publisher(&gw_b, "PJSIP/501=BUSY", false);
    drop(frozen);
    let resumed = Instant::now();
    wait_json(
        (&rx, &err),
        &mut seen,
        &status("online"),
        Duration::from_secs(40),
    );
    wait_json((&rx, &err), &mut seen, &device("PJSIP/501", "BUSY"), WAIT);
    let back = resumed.elapsed();
    let published = b.0.wait().expect("publisher");
    assert!(published.success(), "the publisher failed: {published}");
    // gw-a never stopped publishing: the resync reads its device (and its heartbeat) again.
    wait_json((&rx, &err), &mut seen, &device("PJSIP/500", "INUSE"), WAIT);
    // How the member noticed, for the test log (`--nocapture`).
    let log = std::fs::read_to_string(&err).unwrap_or_default();
    for l in log.lines().filter(|l| {
        [
            "stalled",
            "lost",
            "timed out",
            "answers again",
            "connected to",
            "resumed",
        ]
        .iter()
        .any(|w| l.contains(w))
    }) {
        eprintln!("watcher: {l}");
    }
    eprintln!("offline {detect:?} after SIGSTOP; resynced {back:?} after SIGCONT");
    assert!(xmpp.is_running());
}

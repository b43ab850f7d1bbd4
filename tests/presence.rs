//! Agent presence for supervisors (statebus::presence, an XEP-0114 component) with real peers:
//! a private Prosody or ejabberd, slixmpp supervisors (`tests/peers/presence_supervisor.py`),
//! and, through the real binary, a gateway whose phones are SIPp.
//!
//! - `gateway_calls_show_*`: a supervisor subscribed to `1002@presence.fabric.test` sees the
//!   phone offline, available, ringing, on a call (dnd), available again; a user outside
//!   `allow` is refused; after a `kill -9` and restart of the gateway the stored subscription
//!   still gets presence.
//! - `pause_reason_*`: the ACD-side input type (pause with reason, wrap-up, queue of the
//!   call) fed to a component started from the library, shown as `dnd`/`away` with the reason,
//!   the minutes and the queue; a probe is answered; stanzas over the guard's bounds (depth,
//!   size) are dropped and counted without harm; unsubscribe stops the presence.
//! - `acd_pause_*`: through the real binary in site mode, an agent paused with a reason through
//!   the admin API shows as `dnd` "Paused: Lunch 0m" on the supervisor's roster and as
//!   available again once unpaused (the ACD node feeds the component).

use integration::gateway::{GatewayProcess, GatewaySpec};
use integration::phones::{answering_phone, caller, uac_scenario};
use integration::sipp::SippProcess;
use integration::{python, repo_root, ServerKind, XmppServer};
use statebus::presence::{AgentInput, PresenceConfig, PresenceService};
use statebus::{Bus, DeviceState, Eid, LocalBus};
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PASSWORD: &str = "secret";
const T: Duration = Duration::from_secs(30);

/// One `PRESENCE <ms> <from> <type> <show> <status…>` line.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    from: String,
    ty: String,
    show: String,
    status: String,
}

fn parse(line: &str) -> Option<Seen> {
    let rest = line.strip_prefix("PRESENCE ")?;
    let mut w = rest.splitn(5, ' ');
    let _ms = w.next()?;
    Some(Seen {
        from: w.next()?.to_string(),
        ty: w.next()?.to_string(),
        show: w.next()?.to_string(),
        status: w.next().unwrap_or("").to_string(),
    })
}

/// A slixmpp supervisor; killed on drop.
struct Supervisor {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    history: Vec<String>,
}

impl Supervisor {
    fn start(s: &XmppServer, user: &str, contacts: &[&str]) -> Supervisor {
        let py = python().expect("python with slixmpp (run scripts/install-peers.sh)");
        let mut child = Command::new(py)
            .arg(repo_root().join("tests/peers/presence_supervisor.py"))
            .arg("127.0.0.1")
            .arg(s.c2s_addr().port().to_string())
            .arg(format!("{user}@{}/desk", s.domain()))
            .arg(PASSWORD)
            .args(contacts)
            .env("PYTHONIOENCODING", "utf-8")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the slixmpp supervisor");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        let mut sup = Supervisor {
            child,
            stdin,
            lines,
            history: Vec::new(),
        };
        sup.wait("READY", |l| l == "READY");
        sup
    }

    /// Consumes lines until one satisfies `pred`; panics with everything seen on timeout.
    fn wait(&mut self, what: &str, mut pred: impl FnMut(&str) -> bool) -> String {
        let deadline = Instant::now() + T;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.history.push(l.clone());
                    if pred(&l) {
                        return l;
                    }
                }
                Err(_) => panic!(
                    "supervisor: no {what} within {T:?}; seen:\n{}",
                    self.history.join("\n")
                ),
            }
        }
    }

    /// Waits for a presence from `from` matching (type, show, status).
    fn presence(&mut self, from: &str, ty: &str, show: &str, status: &str) -> Seen {
        let what = format!("presence {from} {ty} {show} {status:?}");
        let l = self.wait(&what, |l| {
            parse(l).is_some_and(|p| {
                p.from == from && p.ty == ty && p.show == show && p.status == status
            })
        });
        parse(&l).expect("parsed")
    }

    fn send(&mut self, cmd: &str) {
        let stdin = self.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{cmd}").expect("write to the supervisor");
        stdin.flush().expect("flush");
    }

    /// Presence lines from `from` received so far (consumes what is pending, waiting `for_`).
    fn presences_within(&mut self, from: &str, for_: Duration) -> Vec<Seen> {
        let deadline = Instant::now() + for_;
        while let Ok(l) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.history.push(l);
        }
        self.history
            .iter()
            .filter_map(|l| parse(l))
            .filter(|p| p.from == from)
            .collect()
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn server(kind: ServerKind) -> XmppServer {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("CALLFABRIC_LOG"))
        .with_test_writer()
        .try_init();
    XmppServer::start(kind, &["boss", "mallory"], PASSWORD)
        .unwrap_or_else(|e| panic!("starting {kind:?}: {e:#}"))
}

fn presence_section(s: &XmppServer, store: &Path) -> String {
    format!(
        "\n[presence]\njid = \"{}\"\nsecret = \"{}\"\nserver = \"127.0.0.1:{}\"\nstore = \"{}\"\n\
         allow = [\"boss@{}\"]\nreconnect_max_secs = 1\n",
        s.component_jid(),
        s.component_secret(),
        s.component_port(),
        store.display(),
        s.domain()
    )
}

/// Polls the gateway's stderr for the component's login.
fn wait_component_online(gw: &GatewayProcess, after: usize) {
    let log = gw.dir().join("gateway.stderr");
    let deadline = Instant::now() + T;
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.matches("presence component online").count() > after {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the presence component never came online:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn gateway_calls_show_on_the_supervisors_roster(kind: ServerKind) {
    let s = server(kind);
    let store_dir = tempfile::tempdir().expect("tempdir");
    let store = store_dir.path().join("presence.subs");
    let mut spec = GatewaySpec::new("gw-a", &["1001", "1002"]);
    spec.qualify_interval_secs = 300.0; // a SIPp UAS cannot answer OPTIONS
    spec.extra = presence_section(&s, &store);
    let mut gw = GatewayProcess::start(Path::new(env!("CARGO_BIN_EXE_callfabric")), spec);
    wait_component_online(&gw, 0);

    let agent = format!("1002@{}", s.component_jid());
    let mut boss = Supervisor::start(&s, "boss", &[&agent]);
    // subscribe → subscribed, a roster push with subscription 'to', the current presence
    boss.wait("roster push", |l| l == format!("ROSTER {agent} to -"));
    boss.presence(&agent, "unavailable", "-", "Offline");
    assert!(
        std::fs::read_to_string(&store)
            .unwrap_or_default()
            .contains(&format!("1002 boss@{}", s.domain())),
        "subscription not stored"
    );

    // a user outside `allow` is refused
    let mut mallory = Supervisor::start(&s, "mallory", &[&agent]);
    mallory.wait("refusal", |l| {
        parse(l).is_some_and(|p| p.from == agent && p.ty == "unsubscribed")
    });

    let mut uas = answering_phone(&mut gw, "1002", "call_uas.xml", 1);
    boss.presence(&agent, "available", "-", "Available");
    let mut uac = SippProcess::spawn(
        &uac_scenario(gw.dir()),
        Some(gw.udp),
        &caller("1001", "1002"),
    )
    .expect("start the caller SIPp");
    boss.presence(&agent, "available", "-", "Ringing");
    boss.presence(&agent, "available", "dnd", "On call");
    boss.presence(&agent, "available", "-", "Available");
    assert!(uac.wait().expect("caller").passed(), "the call failed");
    assert!(uas.wait().expect("callee").passed(), "the callee failed");
    assert!(
        !mallory
            .presences_within(&agent, Duration::from_millis(200))
            .iter()
            .any(|p| p.ty == "available"),
        "a refused user got presence"
    );

    // kill -9 and restart: the stored subscription still gets presence
    let before = boss.history.len();
    gw.restart();
    wait_component_online(&gw, 0);
    boss.wait("presence after the restart", |l| {
        parse(l).is_some_and(|p| p.from == agent)
    });
    assert!(boss.history.len() > before);
}

#[test]
fn gateway_calls_show_on_the_supervisors_roster_prosody() {
    gateway_calls_show_on_the_supervisors_roster(ServerKind::Prosody);
}

#[test]
fn gateway_calls_show_on_the_supervisors_roster_ejabberd() {
    gateway_calls_show_on_the_supervisors_roster(ServerKind::Ejabberd);
}

fn pause_reason_and_wrapup(kind: ServerKind) {
    let s = server(kind);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let bus: Arc<dyn Bus> = Arc::new(LocalBus::new(Eid([2, 0, 0, 0, 0, 1])));
    let mut cfg = PresenceConfig::new(
        s.component_jid(),
        s.component_secret(),
        &format!("127.0.0.1:{}", s.component_port()),
    );
    cfg.reconnect_max = Duration::from_secs(1);
    let svc = rt
        .block_on(async {
            let svc = PresenceService::start(cfg, bus.clone())?;
            Ok::<_, statebus::presence::PresenceError>(svc)
        })
        .expect("start the component");
    assert!(rt.block_on(svc.wait_online(T)), "component never online");
    bus.publish_device_state("PJSIP/2001", DeviceState::NotInUse);

    let agent = format!("2001@{}", s.component_jid());
    let mut boss = Supervisor::start(&s, "boss", &[&agent]);
    boss.presence(&agent, "available", "-", "Available");

    let since = Instant::now()
        .checked_sub(Duration::from_secs(12 * 60 + 3))
        .expect("a monotonic clock 12 minutes old");
    svc.agent(AgentInput::Paused {
        device: "PJSIP/2001".into(),
        reason: "Lunch".into(),
        since: Some(since),
    });
    boss.presence(&agent, "available", "dnd", "Paused: Lunch 12m");
    svc.agent(AgentInput::Unpaused {
        device: "PJSIP/2001".into(),
    });
    boss.presence(&agent, "available", "-", "Available");
    svc.agent(AgentInput::Queue {
        device: "PJSIP/2001".into(),
        queue: Some("support".into()),
    });
    bus.publish_device_state("PJSIP/2001", DeviceState::InUse);
    boss.presence(&agent, "available", "dnd", "On call · support");
    svc.agent(AgentInput::WrapUp {
        device: "PJSIP/2001".into(),
        queue: Some("support".into()),
    });
    bus.publish_device_state("PJSIP/2001", DeviceState::NotInUse);
    boss.presence(&agent, "available", "away", "Wrap-up · support");
    // hostile input: a presence nested deeper than the guard's bound and one with an
    // oversized status are dropped and counted; the component goes on
    let deep = format!(
        "<presence to='{agent}'>{}{}</presence>",
        "<x xmlns='urn:x'>".repeat(40),
        "</x>".repeat(40)
    );
    boss.send(&format!("raw {deep}"));
    boss.send(&format!(
        "raw <presence to='{agent}'><status>{}</status></presence>",
        "z".repeat(100_000)
    ));
    assert!(
        rt.block_on(async {
            let deadline = tokio::time::Instant::now() + T;
            while svc.stats().stanzas_dropped < 2 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            svc.stats().stanzas_dropped >= 2
        }),
        "hostile stanzas not dropped: {:?}",
        svc.stats()
    );
    // a probe is answered with the current presence
    boss.send(&format!("probe {agent}"));
    boss.presence(&agent, "available", "away", "Wrap-up · support");
    // unsubscribe: unavailable, then nothing more
    boss.send(&format!("unsubscribe {agent}"));
    boss.wait("unavailable after unsubscribe", |l| {
        parse(l).is_some_and(|p| p.from == agent && p.ty == "unavailable")
    });
    assert!(rt.block_on(async {
        let deadline = tokio::time::Instant::now() + T;
        while svc.stats().subscriptions != 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        svc.stats().subscriptions == 0
    }));
    let sent = svc.stats().presences_sent;
    bus.publish_device_state("PJSIP/2001", DeviceState::Ringing);
    let later = boss.presences_within(&agent, Duration::from_millis(500));
    assert!(
        !later.iter().any(|p| p.status.starts_with("Ringing")),
        "presence after unsubscribe: {later:?}"
    );
    assert_eq!(svc.stats().presences_sent, sent);
    rt.block_on(svc.shutdown());
}

#[test]
fn pause_reason_and_wrapup_prosody() {
    pause_reason_and_wrapup(ServerKind::Prosody);
}

#[test]
fn pause_reason_and_wrapup_ejabberd() {
    pause_reason_and_wrapup(ServerKind::Ejabberd);
}

/// One admin API request to the site (`POST path`, JSON body, bearer token); the status.
fn admin_post(gw: &mut GatewayProcess, path: &str, body: &str, token: &str) -> u16 {
    use std::io::Read as _;
    gw.drain();
    let known = gw
        .history
        .iter()
        .find_map(|l| l.strip_prefix("http ready "))
        .map(|a| a.trim().to_owned());
    let addr = known.unwrap_or_else(|| {
        gw.wait_for(T, "the http ready line", |l| l.starts_with("http ready "))
            .trim_start_matches("http ready ")
            .trim()
            .to_owned()
    });
    let mut conn = std::net::TcpStream::connect(addr.as_str()).expect("connect to the API");
    write!(
        conn,
        "POST {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\
         Authorization: Bearer {token}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("request");
    let mut text = String::new();
    conn.read_to_string(&mut text).expect("response");
    text.get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text}"))
}

fn acd_pause_shows_on_the_supervisors_roster(kind: ServerKind) {
    const TOKEN: &str = "presence-test-token-0123456789";
    let s = server(kind);
    let store_dir = tempfile::tempdir().expect("tempdir");
    let store = store_dir.path().join("presence.subs");
    let acd_port = integration::free_udp_port();
    let mut spec = GatewaySpec::new("site-a", &["1001", "2001"]);
    spec.command = "site".into();
    spec.qualify_interval_secs = 300.0; // a SIPp UAS cannot answer OPTIONS
    spec.extra = format!(
        r#"
[acd]
udp = "127.0.0.1:{acd_port}"
rtp_ports = "41000-41999"
t1_ms = 100

[acd.numbers]
"800" = "support"

[[acd.queue]]
name = "support"
strategy = "linear"
timeout = 5
members = ["PJSIP/2001"]

[http]
listen = "127.0.0.1:0"
token = "{TOKEN}"
{}"#,
        presence_section(&s, &store)
    );
    let mut gw = GatewayProcess::start(Path::new(env!("CARGO_BIN_EXE_callfabric")), spec);
    gw.wait_for(T, "the acd ready line", |l| l.starts_with("acd ready"));
    wait_component_online(&gw, 0);

    let agent = format!("2001@{}", s.component_jid());
    let mut boss = Supervisor::start(&s, "boss", &[&agent]);
    boss.presence(&agent, "unavailable", "-", "Offline");
    let _phone = answering_phone(&mut gw, "2001", "call_uas.xml", 1);
    boss.presence(&agent, "available", "-", "Available");

    let body = r#"{"interface":"PJSIP/2001","reason":"Lunch"}"#;
    assert_eq!(admin_post(&mut gw, "/admin/pause", body, TOKEN), 200);
    boss.presence(&agent, "available", "dnd", "Paused: Lunch 0m");
    let body = r#"{"interface":"PJSIP/2001"}"#;
    assert_eq!(admin_post(&mut gw, "/admin/unpause", body, TOKEN), 200);
    boss.presence(&agent, "available", "-", "Available");
}

#[test]
fn acd_pause_shows_on_the_supervisors_roster_prosody() {
    acd_pause_shows_on_the_supervisors_roster(ServerKind::Prosody);
}

#[test]
fn acd_pause_shows_on_the_supervisors_roster_ejabberd() {
    acd_pause_shows_on_the_supervisors_roster(ServerKind::Ejabberd);
}

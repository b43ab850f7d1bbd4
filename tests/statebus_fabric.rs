//! The state fabric against real XMPP servers (Prosody and ejabberd), started per test by the
//! harness in `integration` on free loopback ports. Every wait is on a condition, with a timeout.

use integration::{python, repo_root, ServerKind, XmppServer};
use statebus::wire;
use statebus::{Bus, BusEvent, Change, DeviceState, Eid, Mwi, TlsMode, XmppBus, XmppBusConfig};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const PASSWORD: &str = "secret";
const USERS: &[&str] = &["gw-a", "gw-b", "acd-1", "watcher", "asterisk"];
const T: Duration = Duration::from_secs(20);

fn eid(n: u8) -> Eid {
    Eid([0x02, 0, 0, 0, 0, n])
}

fn server(kind: ServerKind) -> XmppServer {
    // CALLFABRIC_LOG=debug shows the buses' logs in failing tests.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("CALLFABRIC_LOG"))
        .with_test_writer()
        .try_init();
    XmppServer::start(kind, USERS, PASSWORD).unwrap_or_else(|e| panic!("starting {kind:?}: {e:#}"))
}

fn config(s: &XmppServer, user: &str, eid: Eid) -> XmppBusConfig {
    let mut c = XmppBusConfig::new(
        &format!("{user}@{}", s.domain()),
        PASSWORD,
        s.pubsub_service(),
        eid,
    );
    c.server = Some(s.c2s_addr().to_string());
    c.tls = TlsMode::Plaintext;
    c.heartbeat_interval = Duration::from_millis(500);
    c.liveness_ttl = Duration::from_secs(3);
    c.iq_timeout = Duration::from_secs(5);
    c.keepalive = Duration::from_secs(10);
    // Backoff capped low: the restart test measures convergence, not the backoff (at the
    // default 15 s cap a loaded machine can miss the 20 s window).
    c.reconnect_max = Duration::from_secs(2);
    c.site = user.into();
    c.fabric_jids = fabric_jids(s);
    c
}

fn fabric_jids(s: &XmppServer) -> Vec<String> {
    USERS
        .iter()
        .map(|u| format!("{u}@{}", s.domain()))
        .collect()
}

async fn bus(s: &XmppServer, user: &str, eid: Eid) -> XmppBus {
    let b = XmppBus::start(config(s, user, eid)).expect("bus config");
    assert!(
        b.wait_online(T).await,
        "{user} never came online on {:?}:\n{}",
        s.kind(),
        s.log_tail()
    );
    b
}

/// Wait until `f` holds, polling; panics with `what` on timeout.
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = tokio::time::Instant::now();
    while !f() {
        assert!(t0.elapsed() < T, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn until_state(b: &XmppBus, key: &str, want: DeviceState) {
    until(
        &format!("{key} = {want} (now {:?})", b.device_state(key)),
        || b.device_state(key) == Some(want),
    )
    .await;
}

macro_rules! on_both_servers {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn prosody() {
                super::$name(integration::ServerKind::Prosody).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn ejabberd() {
                super::$name(integration::ServerKind::Ejabberd).await
            }
        }
    )*};
}

on_both_servers!(
    two_buses_see_each_other_and_drop_own_echo,
    aggregation_across_eids,
    late_joiner_sees_full_state,
    server_restart_converges,
    killed_publisher_expires_after_ttl,
    asterisk_items_both_ways,
    watch_over_starttls,
);

async fn two_buses_see_each_other_and_drop_own_echo(kind: ServerKind) {
    let s = server(kind);
    let a = bus(&s, "gw-a", eid(1)).await;
    let b = bus(&s, "gw-b", eid(2)).await;
    let mut rx = b.subscribe();
    a.publish_device_state("PJSIP/100", DeviceState::InUse);
    until_state(&b, "PJSIP/100", DeviceState::InUse).await;
    b.publish_mwi(Mwi::new("200", "default", 3, 1));
    until("A sees B's MWI", || {
        a.snapshot().mwi.get("200@default").map(|m| (m.new, m.old)) == Some((3, 1))
    })
    .await;
    // B's subscriber saw exactly the aggregate change (plus peer/status events).
    let mut saw = false;
    while let Ok(ev) = rx.try_recv() {
        if ev
            == BusEvent::Changed(Change::Device {
                key: "PJSIP/100".into(),
                state: DeviceState::InUse,
            })
        {
            saw = true;
        }
    }
    assert!(saw, "B's subscriber did not get the change event");
    // Own echo dropped: A received its own notification (the server sends it to every
    // subscriber) but keeps only its local entry; B knows only A's entry for the device.
    until("A received its own echo", || a.stats().items_received >= 1).await;
    assert_eq!(
        a.device_detail("PJSIP/100"),
        vec![(eid(1), DeviceState::InUse)]
    );
    assert_eq!(
        b.device_detail("PJSIP/100"),
        vec![(eid(1), DeviceState::InUse)]
    );
    assert_eq!(b.device_detail("200@default"), vec![]);
    // Each sees the other as a live member through heartbeats.
    until("A sees B alive", || {
        a.snapshot().peers.get(&eid(2)).map(|p| p.1) == Some(true)
    })
    .await;
    a.shutdown().await;
    b.shutdown().await;
}

async fn aggregation_across_eids(kind: ServerKind) {
    let s = server(kind);
    let a = bus(&s, "gw-a", eid(1)).await;
    let b = bus(&s, "gw-b", eid(2)).await;
    let w = bus(&s, "watcher", eid(3)).await;
    a.publish_device_state("Custom:x", DeviceState::InUse);
    b.publish_device_state("Custom:x", DeviceState::NotInUse);
    for x in [&a, &b, &w] {
        until_state(x, "Custom:x", DeviceState::InUse).await;
    }
    until("w has both entries", || {
        w.device_detail("Custom:x").len() == 2
    })
    .await;
    b.publish_device_state("Custom:x", DeviceState::Ringing);
    for x in [&a, &b, &w] {
        until_state(x, "Custom:x", DeviceState::RingInUse).await;
    }
    a.publish_device_state("Custom:x", DeviceState::NotInUse);
    for x in [&a, &b, &w] {
        until_state(x, "Custom:x", DeviceState::Ringing).await;
    }
    b.publish_device_state("Custom:x", DeviceState::Unavailable);
    for x in [&a, &b, &w] {
        until_state(x, "Custom:x", DeviceState::NotInUse).await;
    }
    assert_eq!(
        w.device_detail("Custom:x"),
        vec![
            (eid(1), DeviceState::NotInUse),
            (eid(2), DeviceState::Unavailable)
        ]
    );
}

async fn late_joiner_sees_full_state(kind: ServerKind) {
    let s = server(kind);
    let a = bus(&s, "gw-a", eid(1)).await;
    let states = [
        DeviceState::NotInUse,
        DeviceState::InUse,
        DeviceState::Busy,
        DeviceState::OnHold,
    ];
    for i in 0..200u32 {
        a.publish_device_state(&format!("PJSIP/{}", 1000 + i), states[i as usize % 4]);
    }
    a.publish_mwi(Mwi::new("1000", "default", 2, 5));
    until("A's 201 publishes confirmed", || {
        a.stats().publish_acked >= 201
    })
    .await;
    // C connects only now: everything must come from the item fetch.
    let c = bus(&s, "acd-1", eid(9)).await;
    until("C has all 200 devices", || {
        c.snapshot().devices.len() == 200
    })
    .await;
    let snap = c.snapshot();
    for i in 0..200u32 {
        assert_eq!(
            snap.devices[&format!("PJSIP/{}", 1000 + i)],
            states[i as usize % 4]
        );
    }
    until("C has the MWI", || {
        c.snapshot().mwi.contains_key("1000@default")
    })
    .await;
    assert_eq!(
        c.snapshot().mwi["1000@default"],
        Mwi::new("1000", "default", 2, 5)
    );
    assert_eq!(
        c.snapshot().peers.get(&eid(1)).map(|p| p.1),
        Some(true),
        "A's heartbeat fetched as alive"
    );
}

async fn server_restart_converges(kind: ServerKind) {
    let mut s = server(kind);
    let a = bus(&s, "gw-a", eid(1)).await;
    let b = bus(&s, "gw-b", eid(2)).await;
    a.publish_device_state("PJSIP/1", DeviceState::InUse);
    until_state(&b, "PJSIP/1", DeviceState::InUse).await;
    let connects = (a.stats().connects, b.stats().connects);
    s.stop().expect("stop server");
    // Mid-outage changes on both sides; only the last value of each key may win.
    for st in [
        DeviceState::Ringing,
        DeviceState::OnHold,
        DeviceState::NotInUse,
    ] {
        a.publish_device_state("PJSIP/1", st);
    }
    a.publish_device_state("PJSIP/2", DeviceState::Busy);
    b.publish_device_state("PJSIP/3", DeviceState::InUse);
    b.publish_mwi(Mwi::new("3", "default", 1, 0));
    s.start_again().expect("restart server");
    until("both reconnected", || {
        a.stats().connects > connects.0 && b.stats().connects > connects.1
    })
    .await;
    until_state(&b, "PJSIP/1", DeviceState::NotInUse).await;
    until_state(&b, "PJSIP/2", DeviceState::Busy).await;
    until_state(&a, "PJSIP/3", DeviceState::InUse).await;
    until("A sees B's MWI", || {
        a.snapshot().mwi.contains_key("3@default")
    })
    .await;
    // And the fabric keeps working after the restart.
    b.publish_device_state("PJSIP/3", DeviceState::NotInUse);
    until_state(&a, "PJSIP/3", DeviceState::NotInUse).await;
    // The server's own copy converged too: a fresh joiner reads the final values.
    let c = bus(&s, "acd-1", eid(9)).await;
    until_state(&c, "PJSIP/1", DeviceState::NotInUse).await;
    until_state(&c, "PJSIP/2", DeviceState::Busy).await;
}

fn write_config(
    s: &XmppServer,
    dir: &std::path::Path,
    name: &str,
    user: &str,
    eid: &str,
    tls: &str,
    ca: bool,
) -> std::path::PathBuf {
    let ca_line = if ca {
        format!("ca_file = {:?}\n", s.ca_cert().display().to_string())
    } else {
        String::new()
    };
    let text = format!(
        "[node]\nname = \"{name}\"\nsite = \"b\"\nrole = \"gateway\"\neid = \"{eid}\"\n\n[statebus]\nbackend = \"xmpp\"\n\
         jid = \"{user}@{}\"\npassword = \"{PASSWORD}\"\nserver = \"{}\"\npubsub_service = \"{}\"\ntls = \"{tls}\"\n{ca_line}\
         heartbeat_interval_secs = 0.5\nliveness_ttl_secs = 3\nfabric_jids = {:?}\n",
        s.domain(),
        s.c2s_addr(),
        s.pubsub_service(),
        fabric_jids(s)
    );
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, text).expect("write config");
    p
}

fn callfabric() -> Command {
    Command::new(env!("CARGO_BIN_EXE_callfabric"))
}

async fn killed_publisher_expires_after_ttl(kind: ServerKind) {
    let s = server(kind);
    let dir = tempfile::tempdir().expect("tempdir");
    let w = bus(&s, "watcher", eid(3)).await;
    let cfg = write_config(
        &s,
        dir.path(),
        "gw-b",
        "gw-b",
        "02:00:00:00:00:0b",
        "plaintext",
        false,
    );
    let mut child = callfabric()
        .args(["statebus", "publish", "--config"])
        .arg(&cfg)
        .args(["--device", "PJSIP/900=INUSE", "--hold"])
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn callfabric");
    let b_eid: Eid = "02:00:00:00:00:0b".parse().expect("eid");
    until_state(&w, "PJSIP/900", DeviceState::InUse).await;
    until("publisher alive", || {
        w.snapshot().peers.get(&b_eid).map(|p| p.1) == Some(true)
    })
    .await;
    // While it lives, heartbeats keep its state: two full TTLs later it still reads INUSE.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        w.device_state("PJSIP/900"),
        Some(DeviceState::InUse),
        "expired while alive"
    );
    let mut rx = w.subscribe();
    let killed_at = tokio::time::Instant::now();
    child.kill().expect("kill -9 the publisher");
    let _ = child.wait();
    until_state(&w, "PJSIP/900", DeviceState::Unavailable).await;
    let took = killed_at.elapsed();
    assert!(
        took >= Duration::from_millis(2000),
        "expired after {took:?}, before the 3 s TTL could pass"
    );
    assert!(took < Duration::from_secs(8), "expired only after {took:?}");
    let mut saw_expiry = false;
    while let Ok(ev) = rx.try_recv() {
        saw_expiry |= ev == BusEvent::Changed(Change::PeerExpired(b_eid));
    }
    assert!(saw_expiry, "no PeerExpired event");
    // A late joiner reads the dead member's device as UNAVAILABLE too (stale heartbeat item).
    let late = bus(&s, "acd-1", eid(9)).await;
    until_state(&late, "PJSIP/900", DeviceState::Unavailable).await;
}

fn asterisk_peer(s: &XmppServer, action: &str) -> String {
    let py = python().expect("python with slixmpp (run scripts/install-peers.sh)");
    let out = Command::new(py)
        .arg(repo_root().join("tests/peers/asterisk_peer.py"))
        .args([
            "127.0.0.1".to_string(),
            s.c2s_addr().port().to_string(),
            format!("asterisk@{}/astvoip1", s.domain()),
            PASSWORD.to_string(),
            s.pubsub_service().to_string(),
            action.to_string(),
        ])
        .output()
        .expect("run slixmpp peer");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "slixmpp {action} failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

async fn asterisk_items_both_ways(kind: ServerKind) {
    let s = server(kind);
    let a = bus(&s, "gw-a", eid(1)).await;
    // 1. Items shaped exactly as a real Asterisk publishes them reach the bus.
    let out = asterisk_peer(&s, "publish");
    assert!(out.contains("PUBLISHED"), "{out}");
    until_state(&a, "PJSIP/1000", DeviceState::InUse).await;
    let ast: Eid = "00:11:22:33:44:55".parse().expect("eid");
    assert_eq!(
        a.device_detail("PJSIP/1000"),
        vec![(ast, DeviceState::InUse)]
    );
    until("MWI from Asterisk", || {
        a.snapshot().mwi.get("1000@default") == Some(&Mwi::new("1000", "default", 2, 5))
    })
    .await;
    // 2. Our items, fetched raw by slixmpp, are exactly Asterisk's payloads.
    a.publish_device_state("PJSIP/2000", DeviceState::OnHold);
    a.publish_mwi(Mwi {
        urgent: 9,
        ..Mwi::new("2000", "default", 1, 4)
    });
    until("acks", || a.stats().publish_acked >= 2).await;
    let out = asterisk_peer(&s, "fetch");
    let item = |node: &str, id: &str| -> minidom::Element {
        let prefix = format!("ITEM {node} {id} ");
        let line = out
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no {node}/{id} in {out}"));
        let xml = &line[prefix.len()..];
        assert!(
            !xml.contains("> <") && !xml.contains(">\n"),
            "payload not compact: {xml}"
        );
        xml.parse().unwrap_or_else(|e| panic!("{xml}: {e}"))
    };
    let want_state: minidom::Element = wire::device_state_xml(eid(1), DeviceState::OnHold, true)
        .parse()
        .expect("xml");
    assert_eq!(item("device_state", "PJSIP/2000"), want_state);
    assert_eq!(
        wire::device_state_xml(eid(1), DeviceState::OnHold, true),
        "<state xmlns='http://asterisk.org' eid='02:00:00:00:00:01' cachable='1'>ONHOLD</state>"
    );
    let want_mwi: minidom::Element = "<mailbox xmlns='http://asterisk.org' eid='02:00:00:00:00:01'><NEWMSGS>1</NEWMSGS><OLDMSGS>4</OLDMSGS></mailbox>"
        .parse()
        .expect("xml");
    assert_eq!(item("message_waiting", "2000@default"), want_mwi);
    // The Asterisk item is still there untouched, next to ours (flat layout, item id = key).
    assert_eq!(
        item("device_state", "PJSIP/1000"),
        wire::device_state_xml(ast, DeviceState::InUse, true)
            .parse::<minidom::Element>()
            .expect("xml")
    );
    // Flat layout: one item per key, item id = key, in the two shared nodes, and nothing else
    // there (no item per EID, no leftover from the urgent count).
    let ids = |node: &str| -> Vec<&str> {
        let prefix = format!("ITEM {node} ");
        let mut ids: Vec<&str> = out
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix)?.split(' ').next())
            .collect();
        ids.sort_unstable();
        ids
    };
    assert_eq!(ids("device_state"), ["PJSIP/1000", "PJSIP/2000"], "{out}");
    assert_eq!(
        ids("message_waiting"),
        ["1000@default", "2000@default"],
        "{out}"
    );
}

async fn watch_over_starttls(kind: ServerKind) {
    let s = server(kind);
    let dir = tempfile::tempdir().expect("tempdir");
    let a = bus(&s, "gw-a", eid(1)).await;
    a.publish_device_state("PJSIP/77", DeviceState::Busy);
    a.publish_mwi(Mwi::new("77", "default", 4, 0));
    until("acks", || a.stats().publish_acked >= 2).await;
    let cfg = write_config(
        &s,
        dir.path(),
        "watch",
        "watcher",
        "02:00:00:00:00:77",
        "starttls",
        true,
    );
    let errlog = dir.path().join("watch.stderr");
    let mut child = callfabric()
        .args([
            "statebus",
            "watch",
            "--json",
            "--duration",
            "30",
            "--config",
        ])
        .arg(&cfg)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&errlog).expect("stderr file"))
        .spawn()
        .expect("spawn watch");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let mut lines = Vec::new();
    let mut next = async |lines: &mut Vec<String>| -> String {
        let l = tokio::time::timeout(T, rx.recv())
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| {
                let err = std::fs::read_to_string(&errlog).unwrap_or_default();
                panic!("watch output ended; got {lines:?}; stderr:\n{err}")
            });
        lines.push(l.clone());
        l
    };
    // Snapshot from the fetch: the device, the mailbox; then a live change.
    let mut want = vec![
        r#"{"key":"PJSIP/77","state":"BUSY","type":"device"}"#.to_string(),
        r#"{"key":"77@default","new":4,"old":0,"type":"mwi"}"#.to_string(),
        r#"{"status":"online","type":"status"}"#.to_string(),
    ];
    while !want.is_empty() {
        let l = next(&mut lines).await;
        want.retain(|w| *w != l);
    }
    a.publish_device_state("PJSIP/77", DeviceState::NotInUse);
    loop {
        if next(&mut lines).await == r#"{"key":"PJSIP/77","state":"NOT_INUSE","type":"device"}"# {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let err = std::fs::read_to_string(&errlog).unwrap_or_default();
    assert!(!err.contains("TLS error"), "{err}");
}

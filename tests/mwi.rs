//! Message waiting through the real binary (issue 14): a mailbox's counts published on the
//! fabric light the phones of the devices that show it, on Prosody and on ejabberd.
//!
//! One gateway (site A, `gw-a`) on the XMPP fabric with three devices: 1001 (SIPp, SUBSCRIBEs to
//! `message-summary`), 1002 (baresip with its `mwi` module; its mailbox is 1001@default) and
//! 1003 (`--mwi unsolicited`: a SIPp UAS on its registered Contact gets NOTIFYs without
//! subscribing). The mailbox changes come from an Asterisk-shaped publisher (res_xmpp's item,
//! `tests/peers/asterisk_publish.py`) and from a second fabric member, site B (`gw-b`, the
//! binary's `statebus publish`: the same bus code a gateway's voicemail publishes with).
//! Checked: the NOTIFYs' bodies at the phones; a re-registration re-sends the current state;
//! a NOTIFY answered 481 ends the subscription and nothing is sent on it after, while the other
//! phone of the same mailbox still gets the next change.

mod fabric_common;

use fabric_common::{asterisk_publish, server, T};
use integration::baresip::{Baresip, BaresipOptions};
use integration::gateway::{GatewayProcess, GatewaySpec};
use integration::sipp::{run_scenario, SippOpts, SippProcess};
use integration::site::Bus;
use integration::{repo_root, wait_until, ServerKind, XmppServer};
use statebus::Bus as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

fn scenario(name: &str) -> PathBuf {
    repo_root().join("tests/sipp").join(name)
}

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_callfabric"))
}

/// Asterisk publishes `pairs` (`mailbox:KEY=NEW/OLD`), retried until the service accepts (the
/// gateway creates the nodes and their affiliations when it comes online).
fn asterisk(s: &XmppServer, pairs: &[&str]) {
    let mut last = String::new();
    let ok = wait_until(
        T,
        "Asterisk's publish to be accepted",
        || match asterisk_publish(s, pairs) {
            Ok(()) => true,
            Err(e) => {
                last = e;
                std::thread::sleep(Duration::from_millis(300));
                false
            }
        },
    );
    assert!(
        ok.is_ok(),
        "Asterisk's publish of {pairs:?} refused: {last}"
    );
}

/// Site B publishes `mwi` (`KEY=NEW/OLD`) as fabric member gw-b and exits once the service
/// confirmed it.
fn site_b_publishes(s: &XmppServer, bus: &Bus, dir: &std::path::Path, mwi: &str) {
    let cfg = dir.join("gw-b.toml");
    let text = format!(
        "[node]\nname = \"gw-b\"\nsite = \"gw-b\"\nrole = \"gateway\"\n\n[statebus]\n{}",
        bus.section(s, "gw-b")
    );
    std::fs::write(&cfg, text).expect("write gw-b config");
    let out = Command::new(binary())
        .args(["statebus", "publish", "--config"])
        .arg(&cfg)
        .args(["--mwi", mwi])
        .output()
        .expect("run callfabric statebus publish");
    assert!(
        out.status.success(),
        "site B's publish failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The message-summary bodies of the NOTIFYs in a SIPp message log, in order of arrival.
fn bodies(log: &str) -> Vec<String> {
    log.split("NOTIFY sip:")
        .skip(1)
        .filter_map(|m| {
            let start = m.find("Messages-Waiting:")?;
            let body = &m[start..];
            let end = body
                .find("\n\n")
                .or_else(|| body.find("\r\n\r\n"))
                .unwrap_or(body.len());
            let text = body[..end].replace('\r', "");
            Some(
                text.lines()
                    .filter(|l| l.starts_with("Messages-Waiting") || l.starts_with("Voice-Message"))
                    .collect::<Vec<_>>()
                    .join(" "),
            )
        })
        .collect()
}

fn message_waiting(kind: ServerKind) {
    let xmpp = server(kind);
    let dir = tempfile::tempdir().expect("tempdir");
    // A watcher member first: it creates the nodes with every member's affiliation (on
    // ejabberd, Asterisk's first publish would otherwise create message_waiting as its own).
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let _in_runtime = rt.enter();
    let watcher = rt.block_on(fabric_common::bus(&xmpp, "watcher", fabric_common::eid(3)));
    // A member's own MWI publish reaches its own subscribers at once, urgent count included
    // (what the gateway's notifier subscribes to; the in-process bus: statebus's local.rs test).
    let mut own = watcher.subscribe();
    watcher.publish_mwi(statebus::Mwi {
        urgent: 2,
        ..statebus::Mwi::new("7777", "default", 3, 1)
    });
    let ev = rt
        .block_on(tokio::time::timeout(T, statebus::recv(&mut own)))
        .expect("the own publish's event");
    assert!(
        matches!(&ev, Some(statebus::BusEvent::Changed(statebus::Change::Mwi(m)))
            if m.key() == "7777@default" && (m.new, m.old, m.urgent) == (3, 1, 2)),
        "own publish: {ev:?}"
    );
    let bus = Bus::new(5.0, &["gw-a", "gw-b", "asterisk", "watcher"]);
    let mut spec = GatewaySpec::new("gw-a", &["1001", "1002", "1003"]);
    spec.statebus = bus.section(&xmpp, "gw-a");
    // SIPp answers no OPTIONS in the middle of its scenario: no qualify during the test.
    spec.qualify_interval_secs = 600.0;
    spec.device_args = vec![
        (
            "1002".into(),
            vec!["--mailbox".into(), "1001@default".into()],
        ),
        ("1003".into(), vec!["--mwi".into(), "unsolicited".into()]),
    ];
    let mut gw = GatewayProcess::start(&binary(), spec);
    let registrar = gw.udp;
    wait_until(T, "gw-a's device states on the fabric", || {
        watcher.device_state("PJSIP/1001").is_some()
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", gw.diag()));

    // The phones.
    let mark = gw.mark();
    let mut phone = Baresip::start_with(
        "1002",
        "secret",
        &registrar.to_string(),
        3600,
        "udp",
        &BaresipOptions {
            mwi: true,
            ..BaresipOptions::default()
        },
    )
    .expect("start baresip");
    let mut ctrl = phone.ctrl(T).expect("baresip ctrl_tcp");
    let mut subscriber = SippProcess::spawn(
        &scenario("mwi_subscribe.xml"),
        Some(registrar),
        &SippOpts {
            timeout: Duration::from_secs(90),
            ..SippOpts::user("1001", "secret")
        },
    )
    .expect("start the SIPp subscriber");
    let mut unsolicited = SippProcess::spawn(
        &scenario("mwi_notify_uas.xml"),
        None,
        &SippOpts {
            calls: 3,
            timeout: Duration::from_secs(90),
            ..SippOpts::default()
        },
    )
    .expect("start the SIPp UAS of 1003");
    let register_1003 = || {
        let out = run_scenario(
            &scenario("register_contact.xml"),
            registrar,
            SippOpts {
                keys: vec![("contact_port".into(), unsolicited.local_port().to_string())],
                ..SippOpts::user("1003", "secret")
            },
        )
        .expect("run sipp");
        assert!(out.passed(), "1003's REGISTER: {}", out.describe());
    };
    let notifies = |p: &SippProcess| p.messages_so_far().matches("NOTIFY sip:").count();
    register_1003();
    wait_until(T, "1003's first unsolicited NOTIFY", || {
        notifies(&unsolicited) >= 1
    })
    .expect("unsolicited NOTIFY after the registration");
    gw.seen_since(mark, "MWI SUBSCRIBED 1001 1001@default", T);
    gw.seen_since(mark, "MWI SUBSCRIBED 1002 1001@default", T);

    // An Asterisk box publishes 1001@default = 1/0 and 1003@default = 1/0.
    asterisk(
        &xmpp,
        &["mailbox:1001@default=1/0", "mailbox:1003@default=1/0"],
    );
    let has = |v: &serde_json::Value, counts: &str| {
        v["type"] == "MWI_NOTIFY"
            && v["param"].as_str().is_some_and(|p| {
                p.contains("Messages-Waiting: yes")
                    && p.contains(&format!("Voice-Message: {counts} "))
            })
    };
    ctrl.wait(T, "baresip's MWI_NOTIFY yes 1/0", |v| has(v, "1/0"))
        .unwrap_or_else(|e| panic!("{e:#}\n{}\n{}", phone.log(), gw.diag()));
    wait_until(T, "1003's NOTIFY after the change", || {
        notifies(&unsolicited) >= 2
    })
    .expect("unsolicited NOTIFY on a change");
    // 1003 registers again: the current state again.
    register_1003();
    let out = unsolicited.wait().expect("SIPp UAS of 1003");
    assert!(
        out.passed(),
        "1003's unsolicited NOTIFYs: {}",
        out.describe()
    );
    assert_eq!(
        bodies(&out.messages),
        [
            "Messages-Waiting: no Voice-Message: 0/0 (0/0)",
            "Messages-Waiting: yes Voice-Message: 1/0 (0/0)",
            "Messages-Waiting: yes Voice-Message: 1/0 (0/0)",
        ],
        "1003's lamp: off at registration, on at the change, on again at the re-registration\n{}",
        out.messages
    );

    // Site B's member publishes 2/0 for the same mailbox: the latest counts win.
    site_b_publishes(&xmpp, &bus, dir.path(), "1001@default=2/0");
    ctrl.wait(T, "baresip's MWI_NOTIFY yes 2/0", |v| has(v, "2/0"))
        .unwrap_or_else(|e| panic!("{e:#}\n{}", gw.diag()));
    // The SIPp phone re-registers after its 2/0 and gets 2/0 again.
    wait_until(
        T,
        "the SIPp phone's NOTIFY after its re-registration",
        || {
            subscriber
                .messages_so_far()
                .matches("Voice-Message: 2/0")
                .count()
                >= 2
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}\n{}", subscriber.messages_so_far(), gw.diag()));

    // 3/0: the SIPp phone answers 481; its subscription ends.
    let mark = gw.mark();
    asterisk(&xmpp, &["mailbox:1001@default=3/0"]);
    gw.seen_since(mark, "MWI ENDED 481 1001 1001@default", T);
    // 4/0 reaches baresip (the change went round) but no NOTIFY reaches the SIPp phone.
    asterisk(&xmpp, &["mailbox:1001@default=4/0"]);
    ctrl.wait(T, "baresip's MWI_NOTIFY yes 4/0", |v| has(v, "4/0"))
        .unwrap_or_else(|e| panic!("{e:#}\n{}", gw.diag()));
    let out = subscriber.wait().expect("SIPp subscriber");
    assert!(
        out.passed(),
        "the SIPp subscriber: {}\n{}",
        out.describe(),
        gw.diag()
    );
    let seen = bodies(&out.messages);
    assert_eq!(
        seen.len(),
        5,
        "initial, 1/0, 2/0, 2/0 after the re-registration, 3/0 (answered 481), nothing after: {seen:?}"
    );
    assert!(!out.messages.contains("Voice-Message: 4/0"));
    phone.kill();
}

#[test]
fn message_waiting_on_prosody() {
    message_waiting(ServerKind::Prosody);
}

#[test]
fn message_waiting_on_ejabberd() {
    message_waiting(ServerKind::Ejabberd);
}

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
mod voicemail_common;

use fabric_common::{asterisk_publish, server, T};
use integration::baresip::{Baresip, BaresipOptions};
use integration::gateway::{GatewayProcess, GatewaySpec};
use integration::phones::answering_phone;
use integration::sipp::{run_scenario, SippOpts, SippProcess};
use integration::site::Bus;
use integration::{repo_root, wait_until, ServerKind, XmppServer};
use statebus::Bus as _;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use std::time::Instant;
use voicemail_common::{call, line_since, tone_frames};

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

/// When `p`'s message log first holds `what` `n` times (polled every 2 ms), or `None` once
/// `stop` is set.
fn first_seen(p: &SippProcess, what: &str, n: usize, stop: &AtomicBool) -> Option<Instant> {
    while !stop.load(Ordering::Relaxed) {
        if p.messages_so_far().matches(what).count() >= n {
            return Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    None
}

/// `mwi_subscribe.xml` up to its first NOTIFY (with its REGISTER when `register`; without it a
/// phone whose device is registered elsewhere only SUBSCRIBEs), then: answer every NOTIFY 200
/// until 120 s without one (the test reads the log and ends SIPp).
fn subscribe_and_answer(dir: &std::path::Path, register: bool) -> PathBuf {
    let text =
        std::fs::read_to_string(scenario("mwi_subscribe.xml")).expect("read mwi_subscribe.xml");
    let first_notify = text.find("  <recv request=\"NOTIFY\">").expect("a NOTIFY");
    let head = if register {
        text[..first_notify].to_owned()
    } else {
        let first_send = text.find("  <send").expect("a send");
        let subscribe = text.find("SUBSCRIBE sip:").expect("a SUBSCRIBE");
        let send = text[..subscribe].rfind("  <send").expect("its send");
        format!("{}{}", &text[..first_send], &text[send..first_notify])
    };
    let tail = r#"  <label id="loop"/>
  <recv request="NOTIFY" timeout="120000" ontimeout="done"/>
  <send next="loop">
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:[service]@[local_ip]:[local_port];transport=[transport]>
      Content-Length: 0

    ]]>
  </send>
  <label id="done"/>
  <pause milliseconds="10"/>
  <Reference variables="expires"/>
</scenario>
"#;
    let path = dir.join(if register {
        "mwi_subscribe_loop.xml"
    } else {
        "mwi_subscribe_only_loop.xml"
    });
    std::fs::write(&path, format!("{head}{tail}")).expect("write scenario");
    path
}

/// Issue 14 across sites, through two real gateways on one XMPP fabric: voicemail at site B
/// (`gw-b`; mailbox 1000@default, PIN 4321) takes a message for its busy device 1000; a phone
/// at site A (`gw-a`, device 2000 `--mailbox 1000@default`, SIPp subscribed to
/// message-summary) and the owner's phone at B (SIPp, SUBSCRIBE only: 1000's registration is
/// the busy phone) both get `yes 1/0`; the owner retrieves the message with the PIN by RFC 4733
/// and deletes it: both lamps go off. Prints the time from the message's end (the caller's `#`)
/// to the NOTIFY at site A, and from the delete key (`7`) to the lamp off at A.
fn voicemail_across_sites(kind: ServerKind) {
    let xmpp = server(kind);
    let dir = tempfile::tempdir().expect("tempdir");
    let bus = Bus::new(5.0, &["gw-a", "gw-b"]);
    let mut spec_b = GatewaySpec::new("gw-b", &["1000", "1001"]);
    spec_b.statebus = bus.section(&xmpp, "gw-b");
    spec_b.qualify_interval_secs = 600.0;
    // Voicemail's RTP range: under the kernel's ephemeral ports (32768–) and apart from
    // voicemail.rs's (31000–32019); one per server kind, as both tests run in one process.
    let lo =
        29000 + (std::process::id() % 40) * 40 + if kind == ServerKind::Prosody { 0 } else { 20 };
    spec_b.extra = format!(
        "\n[voicemail]\ndir = \"vm\"\nmax_message_secs = 30\nrtp_ports = \"{lo}-{hi}\"\n\
         [[voicemail.mailbox]]\ndevice = \"1000\"\npin = \"4321\"\nno_answer_secs = 0\n",
        hi = lo + 19,
    );
    let mut spec_a = GatewaySpec::new("gw-a", &["2000"]);
    spec_a.statebus = bus.section(&xmpp, "gw-a");
    spec_a.qualify_interval_secs = 600.0;
    spec_a.device_args = vec![(
        "2000".into(),
        vec!["--mailbox".into(), "1000@default".into()],
    )];
    let mut gw_b = GatewayProcess::start(&binary(), spec_b);
    let mut gw_a = GatewayProcess::start(&binary(), spec_a);
    gw_a.wait_for(T, "site B's heartbeat at site A", |l| {
        l.starts_with("PEER ") && l.contains(" up site=gw-b ")
    });
    gw_b.wait_for(T, "site A's heartbeat at site B", |l| {
        l.starts_with("PEER ") && l.contains(" up site=gw-a ")
    });

    // Voicemail published the mailbox's counts at startup (before the printer subscribed).
    gw_b.seen_since(0, "MWI 1000@default new=0 old=0", T);

    // The lamps: 2000 at site A, the owner's phone at site B.
    let (mark_a, mark_b) = (gw_a.mark(), gw_b.mark());
    let lamp_a = SippProcess::spawn(
        &subscribe_and_answer(dir.path(), true),
        Some(gw_a.udp),
        &SippOpts {
            timeout: Duration::from_secs(180),
            ..SippOpts::user("2000", "secret")
        },
    )
    .expect("start the SIPp subscriber at site A");
    // The owner's phone at B is busy: its calls are answered 486.
    let _busy = answering_phone(&mut gw_b, "1000", "call_uas_busy.xml", 1);
    let lamp_b = SippProcess::spawn(
        &subscribe_and_answer(dir.path(), false),
        Some(gw_b.udp),
        &SippOpts {
            timeout: Duration::from_secs(180),
            ..SippOpts::user("1000", "secret")
        },
    )
    .expect("start the SIPp subscriber at site B");
    gw_a.seen_since(mark_a, "MWI SUBSCRIBED 2000 1000@default", T);
    gw_b.seen_since(mark_b, "MWI SUBSCRIBED 1000 1000@default", T);
    let count = |p: &SippProcess, what: &str| p.messages_so_far().matches(what).count();
    wait_until(T, "the initial NOTIFYs", || {
        count(&lamp_a, "NOTIFY sip:") >= 1 && count(&lamp_b, "NOTIFY sip:") >= 1
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}\n{}", gw_a.diag(), gw_b.diag()));

    // A caller at B reaches the busy 1000's mailbox and leaves 1.5 s of tone. The message
    // ends with the first packet of its `#`; a watcher thread notes when site A's NOTIFY is in.
    let mark_b = gw_b.mark();
    let mut ended = None;
    let stop = AtomicBool::new(false);
    let lit_at = std::thread::scope(|s| {
        let watch = s.spawn(|| first_seen(&lamp_a, "Voice-Message: 1/0 ", 1, &stop));
        call(&mut gw_b, dir.path(), "1001", "1000", |m| {
            m.until_after_beep();
            m.tone(1500);
            ended = Some(Instant::now());
            m.key('#');
        });
        let seen = wait_until(T, "site A's NOTIFY yes 1/0", || watch.is_finished());
        stop.store(true, Ordering::Relaxed);
        let at = watch.join().expect("the watcher thread");
        seen.ok().and(at)
    });
    let deposit = line_since(&mut gw_b, mark_b, "the deposit", |l| {
        l.starts_with("VOICEMAIL DEPOSIT 1000 ")
    });
    let wav = PathBuf::from(deposit.split_whitespace().nth(4).expect("the WAV's path"));
    let pcm = media::audio::wav::read_wav(&wav).expect("the message's WAV");
    let frames = tone_frames(&pcm, 440.0);
    assert!(
        (65..=80).contains(&frames),
        "{frames} frames of 440 Hz in {}, not ~75 (1.5 s)",
        wav.display()
    );
    let lit_a = lit_at
        .zip(ended)
        .map(|(at, end)| at - end)
        .unwrap_or_else(|| {
            panic!(
                "no NOTIFY yes 1/0 at site A within {T:?} of the message's end\n{}\n{}\n{}",
                lamp_a.messages_so_far(),
                gw_a.diag(),
                gw_b.diag()
            )
        });
    gw_a.seen_since(mark_a, "MWI 1000@default new=1 old=0", T);
    wait_until(T, "the lamp of the owner's phone at B", || {
        count(&lamp_b, "Voice-Message: 1/0 ") >= 1
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}\n{}", lamp_b.messages_so_far(), gw_b.diag()));

    // The owner dials *98 at B, enters the PIN by RFC 4733, hears the message, deletes it.
    let mark_b = gw_b.mark();
    let off_before = count(&lamp_a, "Voice-Message: 0/0 ");
    let mut deleted = None;
    let stop = AtomicBool::new(false);
    let off_at = std::thread::scope(|s| {
        let watch = s.spawn(|| first_seen(&lamp_a, "Voice-Message: 0/0 ", off_before + 1, &stop));
        call(&mut gw_b, dir.path(), "1000", "*98", |m| {
            m.login("4321");
            m.hear_message(440.0, 65);
            deleted = Some(Instant::now());
            m.key('7');
            // "deleted", "no more messages", the main menu; then `*`: goodbye, BYE.
            m.until_quiet("the main menu", T);
            m.key('*');
        });
        let seen = wait_until(T, "site A's NOTIFY 0/0", || watch.is_finished());
        stop.store(true, Ordering::Relaxed);
        let at = watch.join().expect("the watcher thread");
        seen.ok().and(at)
    });
    line_since(&mut gw_b, mark_b, "the delete", |l| {
        l.starts_with("VOICEMAIL DELETED 1000 ")
    });
    let off_a = off_at
        .zip(deleted)
        .map(|(at, d)| at - d)
        .unwrap_or_else(|| {
            panic!(
                "no NOTIFY 0/0 at site A after the delete\n{}\n{}\n{}",
                lamp_a.messages_so_far(),
                gw_a.diag(),
                gw_b.diag()
            )
        });
    assert!(!wav.exists(), "the deleted message's file is gone");
    wait_until(T, "the lamp off at B", || {
        bodies(&lamp_b.messages_so_far()).last().map(String::as_str)
            == Some("Messages-Waiting: no Voice-Message: 0/0 (0/0)")
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}\n{}", lamp_b.messages_so_far(), gw_b.diag()));

    // Each lamp: off, on at 1/0, (off at 0/1 once heard,) off at 0/0.
    for (site, lamp) in [("A", &lamp_a), ("B", &lamp_b)] {
        let seen = bodies(&lamp.messages_so_far());
        let on = seen
            .iter()
            .position(|b| b == "Messages-Waiting: yes Voice-Message: 1/0 (0/0)");
        assert!(
            seen.first().map(String::as_str)
                == Some("Messages-Waiting: no Voice-Message: 0/0 (0/0)")
                && on.is_some_and(|i| seen[..i].iter().all(|b| b == &seen[0])
                    && seen[i + 1..]
                        .iter()
                        .all(|b| b.starts_with("Messages-Waiting: no ")))
                && seen.last().map(String::as_str)
                    == Some("Messages-Waiting: no Voice-Message: 0/0 (0/0)"),
            "site {site}'s lamp: off, on at 1/0, off after the delete: {seen:?}"
        );
    }
    println!(
        "issue 14 ({kind:?}): message end (#) -> NOTIFY yes at site A: {} ms; delete key (7) -> NOTIFY 0/0 at site A: {} ms",
        lit_a.as_millis(),
        off_a.as_millis()
    );
}

#[test]
fn voicemail_at_site_b_lights_site_a_on_prosody() {
    voicemail_across_sites(ServerKind::Prosody);
}

#[test]
fn voicemail_at_site_b_lights_site_a_on_ejabberd() {
    voicemail_across_sites(ServerKind::Ejabberd);
}

#[test]
fn message_waiting_on_prosody() {
    message_waiting(ServerKind::Prosody);
}

#[test]
fn message_waiting_on_ejabberd() {
    message_waiting(ServerKind::Ejabberd);
}

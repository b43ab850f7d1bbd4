//! Durable registrations through the real binary: `callfabric site` (gateway + ACD, SQLite)
//! with three real softphones (baresip, registering once an hour). Before any phone registers
//! the configured queue members are not available. Phone 2003 is killed, the gateway is killed
//! (SIGKILL) and started again: 2001 and 2002 are NOT_INUSE again (their restored contacts
//! answer the qualify) without registering again, a direct call reaches 2002 with audio back,
//! and a queue call goes to 2001; 2003, whose phone never came back, stays UNAVAILABLE and is
//! never offered the caller although it is first in the queue's linear order.

use std::path::Path;
use std::time::Duration;

use integration::baresip::{AudioSource, Baresip, BaresipOptions};
use integration::free_udp_port;
use integration::gateway::{GatewayProcess, GatewaySpec};
use integration::phones::{assert_passes, caller, scenario, uac_scenario};
use integration::sipp::{run_scenario, SippOpts};

const WAIT: Duration = Duration::from_secs(20);

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_callfabric"))
}

/// `GET path` on the status API, as JSON.
fn api(gw: &mut GatewayProcess, path: &str) -> serde_json::Value {
    gw.api(path, WAIT)
}

/// Whether member `iface` of the first queue is available, per `/queues`.
fn available(gw: &mut GatewayProcess, iface: &str) -> bool {
    let q = api(gw, "/queues");
    q[0]["members"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["interface"] == iface))
        .unwrap_or_else(|| panic!("member {iface} in {q}"))["available"]
        .as_bool()
        .unwrap_or_else(|| panic!("available of {iface} in {q}"))
}

fn phone(gw: &GatewayProcess, user: &str) -> Baresip {
    Baresip::start_with(
        user,
        "secret",
        &gw.udp.to_string(),
        3600,
        "udp",
        &BaresipOptions {
            audio_source: AudioSource::Sine(600),
            dump_audio: false,
            sip_trace: true,
            ..BaresipOptions::default()
        },
    )
    .expect("start baresip")
}

/// The stored registrations of the site (`registrations` table): (AOR, Call-ID, CSeq,
/// absolute expiry in ms), sorted. A phone registering again changes its row's expiry.
fn stored(gw: &GatewayProcess) -> Vec<(String, String, u32, i64)> {
    use gateway::registrar::store::unix_ms;
    let url = format!("sqlite://{}", gw.dir().join("site-r.db").display());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut rows: Vec<_> = rt
        .block_on(async {
            let store = gateway::devices::DeviceStore::open(&url)
                .await
                .expect("open the site database");
            store
                .load_bindings("site-r", std::time::SystemTime::now())
                .await
                .expect("registrations table")
        })
        .into_iter()
        .map(|b| (b.aor, b.call_id, b.cseq, unix_ms(b.expires_at)))
        .collect();
    rows.sort();
    rows
}

#[test]
fn registrations_survive_a_restart_and_a_dead_phone_is_never_offered() {
    let acd_port = free_udp_port();
    let mut spec = GatewaySpec::new("site-r", &["1001", "2001", "2002", "2003"]);
    spec.command = "site".into();
    spec.qualify_interval_secs = 1.0;
    spec.extra = format!(
        r#"
[acd]
udp = "127.0.0.1:{acd_port}"
rtp_ports = "43000-43499"
t1_ms = 100

[acd.numbers]
"800" = "support"

[[acd.queue]]
name = "support"
strategy = "linear"
timeout = 10
retry = 1
members = ["PJSIP/2003", "PJSIP/2001", "PJSIP/2999"]

[http]
listen = "127.0.0.1:0"
"#
    );
    let mut gw = GatewayProcess::start(binary(), spec);
    gw.wait_for(WAIT, "the acd ready line", |l| l.starts_with("acd ready"));
    // First start, no phone yet: configured members are not available.
    assert!(!available(&mut gw, "PJSIP/2001"), "{}", gw.diag());
    assert!(!available(&mut gw, "PJSIP/2003"), "{}", gw.diag());
    // A member no gateway ever published a state for (not provisioned here) neither.
    assert!(!available(&mut gw, "PJSIP/2999"), "{}", gw.diag());

    let mark0 = gw.mark();
    let p2001 = phone(&gw, "2001");
    let p2002 = phone(&gw, "2002");
    let mut p2003 = phone(&gw, "2003");
    for user in ["2001", "2002", "2003"] {
        gw.seen_since(mark0, &format!("DEVICE PJSIP/{user} NOT_INUSE"), WAIT);
    }
    p2003.kill();
    // The 200 OKs were sent once the bindings were committed (device states are published
    // before the commit, so poll): all three are stored.
    let deadline = std::time::Instant::now() + WAIT;
    let before = loop {
        let rows = stored(&gw);
        if rows.len() >= 3 || std::time::Instant::now() > deadline {
            break rows;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let aors: Vec<&str> = before.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(
        aors,
        [
            "sip:2001@site-r.example",
            "sip:2002@site-r.example",
            "sip:2003@site-r.example"
        ],
        "{before:?}"
    );

    gw.restart();
    let mark = gw.mark();
    gw.seen_since(mark, "DEVICE PJSIP/2001 NOT_INUSE", WAIT);
    gw.seen_since(mark, "DEVICE PJSIP/2002 NOT_INUSE", WAIT);
    assert!(
        gw.history
            .iter()
            .skip(mark)
            .all(|l| l.trim() != "DEVICE PJSIP/2003 NOT_INUSE"),
        "{}",
        gw.diag()
    );
    // A call to the dead phone: its restored contact is not rung before it answers a qualify
    // (per-contact qualify: a contact marked failed is skipped), so with no other contact the
    // caller gets 480 at once; the device never rings and stays UNAVAILABLE.
    let text = std::fs::read_to_string(scenario("call_rejected.xml")).expect("read scenario");
    let rejected = gw.dir().join("call_rejected_480.xml");
    std::fs::write(&rejected, text.replace("@CODE@", "480")).expect("write scenario");
    let out = run_scenario(&rejected, gw.udp, caller("1001", "2003")).expect("run sipp");
    assert_passes(&gw, &out, "call to the dead phone: 480");
    gw.drain();
    assert!(
        gw.history
            .iter()
            .skip(mark)
            .all(|l| l.trim() != "DEVICE PJSIP/2003 RINGING"),
        "the dead phone's contact was rung: {}",
        gw.diag()
    );
    assert!(
        gw.history
            .iter()
            .skip(mark)
            .all(|l| l.trim() != "DEVICE PJSIP/2003 NOT_INUSE"),
        "{}",
        gw.diag()
    );
    let devices = api(&mut gw, "/devices");
    assert_eq!(devices["PJSIP/2003"], "UNAVAILABLE", "{devices}");
    assert!(available(&mut gw, "PJSIP/2001"), "{}", gw.diag());
    assert!(!available(&mut gw, "PJSIP/2003"), "{}", gw.diag());

    // A direct call reaches 2002 through its restored contact; its audio comes back.
    let out =
        run_scenario(&uac_scenario(gw.dir()), gw.udp, caller("1001", "2002")).expect("run sipp");
    assert_passes(&gw, &out, "call to 2002 after the restart");
    let ended = loop {
        let e = gw.call_ended(WAIT);
        if e.reason != "no-answer" {
            break e;
        }
    };
    assert!(ended.num("b_in") > 50, "2002's audio: {}", ended.line);

    // A queue call: 2003 comes first in linear order but is UNAVAILABLE: never offered.
    let out =
        run_scenario(&uac_scenario(gw.dir()), gw.udp, caller("1001", "800")).expect("run sipp");
    assert_passes(&gw, &out, "queue call after the restart");
    gw.seen_since(mark, "DEVICE PJSIP/2001 INUSE", WAIT);
    gw.drain();
    let after: Vec<&String> = gw.history.iter().skip(mark).collect();
    assert!(
        after
            .iter()
            .any(|l| l.starts_with("QUEUELOG ") && l.contains("|support|PJSIP/2001|CONNECT|")),
        "{}",
        gw.diag()
    );
    assert!(
        !after
            .iter()
            .any(|l| l.contains("PJSIP/2003")
                && (l.starts_with("OFFER") || l.starts_with("QUEUELOG"))),
        "the dead phone was offered a caller\n{}",
        gw.diag()
    );
    // No phone registered again: the stored bindings are the ones from before the restart.
    assert_eq!(stored(&gw), before);
    drop((p2001, p2002));
}

/// A phone registered over TCP: its connection dies with the gateway. After the restart the
/// gateway reaches the restored contact over a new TCP connection to the Contact address
/// (baresip listens there): qualified back to NOT_INUSE and a call reaches it.
#[test]
fn tcp_phone_is_reached_over_a_new_connection_after_a_restart() {
    let mut spec = GatewaySpec::new("site-r", &["1001", "2001"]);
    spec.qualify_interval_secs = 1.0;
    let mut gw = GatewayProcess::start(binary(), spec);
    let mark0 = gw.mark();
    let p2001 = Baresip::start_with(
        "2001",
        "secret",
        &gw.tcp.to_string(),
        3600,
        "tcp",
        &BaresipOptions {
            audio_source: AudioSource::Sine(600),
            dump_audio: false,
            sip_trace: true,
            ..BaresipOptions::default()
        },
    )
    .expect("start baresip");
    gw.seen_since(mark0, "DEVICE PJSIP/2001 NOT_INUSE", WAIT);
    let deadline = std::time::Instant::now() + WAIT;
    let before = loop {
        let rows = stored(&gw);
        if !rows.is_empty() || std::time::Instant::now() > deadline {
            break rows;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(before.len(), 1, "{before:?}");

    gw.restart();
    let mark = gw.mark();
    gw.seen_since(mark, "DEVICE PJSIP/2001 NOT_INUSE", WAIT);
    let out =
        run_scenario(&uac_scenario(gw.dir()), gw.udp, caller("1001", "2001")).expect("run sipp");
    assert_passes(&gw, &out, "call to the TCP phone after the restart");
    let ended = gw.call_ended(WAIT);
    assert!(ended.num("b_in") > 50, "2001's audio: {}", ended.line);
    assert_eq!(
        stored(&gw),
        before,
        "the phone did not register again\n{}",
        p2001.log()
    );
}

/// Refreshes written behind (issue 16, `server/durable.rs`): a REGISTER that adds the binding is
/// stored before its 200 OK; a refresh (same contact from the same address and port, later
/// expiry) is stored within about a second (`WRITE_BEHIND`, 1 s); after a `kill -9` the first
/// REGISTER of the restored binding is stored before its 200 OK again; a refresh answered just
/// before a SIGTERM is stored by the shutdown.
#[test]
fn a_refresh_is_stored_behind_within_a_second_and_by_the_shutdown() {
    let mut gw = GatewayProcess::start(binary(), GatewaySpec::new("site-r", &["1001"]));
    let (port, contact_port) = (free_udp_port(), free_udp_port());
    let register = |gw: &GatewayProcess, what: &str| {
        let opts = SippOpts {
            keys: vec![("contact_port".into(), contact_port.to_string())],
            local_port: Some(port),
            ..SippOpts::user("1001", "secret")
        };
        let out = run_scenario(&scenario("register_contact.xml"), gw.udp, opts).expect("sipp");
        assert_passes(gw, &out, what);
        std::time::Instant::now()
    };
    // The expiry stored for 1001, polled until it is later than `after` (or `WAIT` passed).
    let expiry_after = |gw: &GatewayProcess, after: i64| {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let rows = stored(gw);
            let e = rows.first().map_or(0, |r| r.3);
            if e > after || std::time::Instant::now() > deadline {
                assert_eq!(rows.len(), 1, "{rows:?}");
                return e;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };

    register(&gw, "first registration");
    // A change: committed before the 200 OK, so there without waiting.
    let first = stored(&gw);
    assert_eq!(first.len(), 1, "{first:?}");

    // A refresh: answered at once, stored behind, within the interval (plus a commit, on a
    // loaded machine).
    let answered = register(&gw, "refresh");
    let refreshed = expiry_after(&gw, first[0].3);
    let took = answered.elapsed();
    assert!(refreshed > first[0].3, "the refresh was never stored");
    assert!(
        took < Duration::from_secs(3),
        "the refresh was stored after {took:?}"
    );

    // Restored after a kill -9: the first REGISTER is stored before its 200 OK.
    gw.restart();
    register(&gw, "refresh after the restart");
    let again = stored(&gw);
    assert!(again[0].3 > refreshed, "{again:?} vs {refreshed}");

    // A refresh, then SIGTERM at once: the shutdown stores it.
    register(&gw, "refresh before the shutdown");
    gw.signal("TERM");
    assert!(gw.wait_exit(WAIT).is_some(), "{}", gw.diag());
    let last = stored(&gw);
    assert!(last[0].3 > again[0].3, "{last:?} vs {again:?}");
}

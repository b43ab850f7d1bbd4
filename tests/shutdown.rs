//! Graceful shutdown of `callfabric site` (gateway + ACD in one process) on SIGTERM, with SIPp
//! phones: a direct call (1002 → 2002) and a queue call (1001 → 800 → agent 2001) are up; a
//! new call during the drain gets 503; when the drain time is over every party gets a BYE, the
//! process exits 0, and the CDR rows and the queue_log COMPLETECALLER row are in the database
//! (SQLite, and PostgreSQL).

use std::path::{Path, PathBuf};
use std::time::Duration;

use integration::free_udp_port;
use integration::gateway::{GatewayProcess, GatewaySpec};
use integration::phones::{answering_phone, assert_passes, caller, scenario};
use integration::sipp::{run_scenario, SippOpts, SippProcess};

const WAIT: Duration = Duration::from_secs(20);

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_callfabric"))
}

fn site(database: Option<String>, drain_secs: u32) -> GatewayProcess {
    let acd_port = free_udp_port();
    let mut spec = GatewaySpec::new("site-s", &["1001", "1002", "2001", "2002"]);
    spec.command = "site".into();
    spec.qualify_interval_secs = 300.0;
    spec.database = database;
    spec.extra = format!(
        r#"media_timeout_secs = 0

[acd]
udp = "127.0.0.1:{acd_port}"
rtp_ports = "42000-42499"
t1_ms = 100

[acd.numbers]
"800" = "support"

[[acd.queue]]
name = "support"
strategy = "ringall"
timeout = 10
retry = 1
members = ["PJSIP/2001"]

[shutdown]
drain_secs = {drain_secs}
retry_after_secs = 7
"#
    );
    let mut gw = GatewayProcess::start(binary(), spec);
    gw.wait_for(WAIT, "the acd ready line", |l| l.starts_with("acd ready"));
    gw
}

/// `call_rejected.xml` expecting `code`.
fn rejected_scenario(dir: &Path, code: u16) -> PathBuf {
    let text = std::fs::read_to_string(scenario("call_rejected.xml")).expect("read scenario");
    let path = dir.join(format!("call_rejected_{code}.xml"));
    std::fs::write(&path, text.replace("@CODE@", &code.to_string())).expect("write scenario");
    path
}

/// A phone that calls `dial` as `user` and then waits, silent, for the far end's BYE.
fn waiting_caller(gw: &GatewayProcess, user: &str, dial: &str) -> SippProcess {
    SippProcess::spawn(
        &scenario("call_uac_feature.xml"),
        Some(gw.udp),
        &SippOpts {
            service: Some(user.into()),
            auth_user: Some(user.into()),
            timeout: Duration::from_secs(60),
            ..caller(user, dial)
        },
    )
    .expect("start the calling SIPp")
}

/// `second_signal`: the drain is long (120 s) and a SIGINT after the SIGTERM ends it at once.
fn sigterm_during_two_calls(database: Option<String>, second_signal: bool) {
    let mut gw = site(database.clone(), if second_signal { 120 } else { 3 });
    let mut agent = answering_phone(&mut gw, "2001", "call_uas.xml", 1);
    gw.device("2001", "NOT_INUSE", WAIT);
    let mut callee = answering_phone(&mut gw, "2002", "call_uas.xml", 1);
    gw.device("2002", "NOT_INUSE", WAIT);

    let mut direct = waiting_caller(&gw, "1002", "2002");
    gw.device("2002", "INUSE", WAIT);
    let mut queued = waiting_caller(&gw, "1001", "800");
    gw.wait_for(WAIT, "QUEUELOG …|CONNECT", |l| {
        l.starts_with("QUEUELOG ") && l.contains("|support|PJSIP/2001|CONNECT|")
    });

    gw.signal("TERM");
    gw.wait_for(WAIT, "the SHUTDOWN line", |l| {
        l.starts_with("SHUTDOWN SIGTERM: draining")
    });
    // Draining: the calls go on, a new one is refused with 503.
    let refused = run_scenario(
        &rejected_scenario(gw.dir(), 503),
        gw.udp,
        caller("1002", "2001"),
    )
    .expect("run sipp");
    assert_passes(&gw, &refused, "a new call during the drain gets 503");

    let over = if second_signal {
        gw.signal("INT");
        gw.wait_for(WAIT, "the second SHUTDOWN line", |l| {
            l.starts_with("SHUTDOWN SIGINT again: drain ended")
        });
        "SHUTDOWN SIGINT again"
    } else {
        "SHUTDOWN drain time over with"
    };
    // Well within the 120 s drain when a second signal ended it.
    let status = gw.wait_exit(Duration::from_secs(if second_signal { 30 } else { 60 }));
    assert!(
        status.is_some_and(|s| s.success()),
        "callfabric exits 0 after the drain: {status:?}\n{}",
        gw.diag()
    );
    // Every party got a BYE (each scenario ends by answering it).
    for (name, p) in [
        ("caller 1002 (direct call)", &mut direct),
        ("callee 2002", &mut callee),
        ("caller 1001 (queue call)", &mut queued),
        ("agent 2001", &mut agent),
    ] {
        assert_passes(&gw, &p.wait().expect("sipp outcome"), name);
    }
    let h = gw.history.join("\n");
    for want in [
        over,
        "SHUTDOWN acd finished callers=1 byes_unanswered=0",
        "SHUTDOWN gateway finished",
        "SHUTDOWN done",
    ] {
        assert!(h.contains(want), "`{want}` missing\n{}", gw.diag());
    }
    assert!(
        h.lines().any(
            |l| l.starts_with("QUEUELOG ") && l.contains("|support|PJSIP/2001|COMPLETECALLER|")
        ),
        "{}",
        gw.diag()
    );

    // The records are in the database after the exit.
    let url =
        database.unwrap_or_else(|| format!("sqlite://{}", gw.dir().join("site-s.db").display()));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (cdrs, rows) = rt.block_on(async {
        let store = gateway::devices::DeviceStore::open(&url)
            .await
            .expect("open the site database");
        let queue_log = acd::queue_log::QueueLogStore::open(&url)
            .await
            .expect("open the queue_log table");
        (
            store.cdrs().await.expect("cdr table"),
            queue_log.rows().await.expect("queue_log table"),
        )
    });
    for (src, dst) in [("1002", "2002"), ("1001", "800"), ("800", "2001")] {
        let found = cdrs
            .iter()
            .any(|c| (c.src == src || src == "800") && c.dst == dst && c.disposition == "ANSWERED");
        assert!(found, "an ANSWERED CDR {src} → {dst}: {cdrs:#?}");
    }
    let events: Vec<&str> = rows.iter().map(|r| r.event.as_str()).collect();
    assert_eq!(
        events,
        ["ENTERQUEUE", "CONNECT", "COMPLETECALLER"],
        "{rows:?}"
    );
}

#[test]
fn sigterm_during_two_calls_sqlite() {
    sigterm_during_two_calls(None, false);
}

#[test]
fn second_signal_ends_the_drain_and_the_records_are_still_written() {
    sigterm_during_two_calls(None, true);
}

#[test]
fn sigterm_during_two_calls_postgresql() {
    let pg = integration::postgres::Postgres::start().expect("start PostgreSQL");
    sigterm_during_two_calls(Some(pg.url()), false);
}

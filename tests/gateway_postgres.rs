//! The gateway on PostgreSQL (the multi-site database): registers against devices read from a
//! real server; keeps answering from its cache while the server is down; picks up a password
//! changed in the database once the server is back.

use integration::postgres::Postgres;
use integration::sipp::{run_scenario, SippOpts, SippOutcome};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

struct Gw(Child);
impl Drop for Gw {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn devices_add(cfg: &Path, user: &str, password: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_callfabric"))
        .args(["devices", "add", "--config"])
        .arg(cfg)
        .args(["--user", user, "--password", password])
        .output()
        .expect("devices add");
    assert!(
        out.status.success(),
        "devices add: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a REGISTER scenario of `tests/sipp/` as 1000 with `password`.
fn sipp_register(target: SocketAddr, scenario: &str, password: &str) -> SippOutcome {
    let scenario = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sipp")
        .join(scenario);
    run_scenario(
        &scenario,
        target,
        SippOpts {
            timeout: Duration::from_secs(10),
            ..SippOpts::user("1000", password)
        },
    )
    .expect("sipp")
}

/// REGISTER → 401 → REGISTER with the digest of `password` → 200.
fn register(target: SocketAddr, password: &str) -> SippOutcome {
    sipp_register(target, "register_ok.xml", password)
}

/// REGISTER → 401 → REGISTER with the digest of `password` → 401 again: the refusal itself, so
/// a gateway that does not answer (or answers anything else) fails it.
fn refused(target: SocketAddr, password: &str) -> SippOutcome {
    sipp_register(target, "register_wrong_password.xml", password)
}

#[test]
fn postgres_outage_is_survived_and_edits_apply_when_it_returns() {
    let mut pg = Postgres::start().expect("postgres");
    let dir = tempfile::tempdir().expect("tempdir");
    let port = integration::free_udp_port();
    let target = SocketAddr::from(([127, 0, 0, 1], port));
    let cfg = dir.path().join("gw.toml");
    std::fs::write(
        &cfg,
        format!(
            "[node]\nname = \"gw-a\"\n[statebus]\nbackend = \"local\"\n[gateway]\nudp = [\"{target}\"]\n\
             realm = \"site-a\"\ndatabase = \"{}\"\ndigest_algorithms = [\"MD5\"]\ndb_reload_secs = 0.2\n\
             qualify_interval_secs = 60\n",
            pg.url()
        ),
    )
    .expect("config");
    devices_add(&cfg, "1000", "secret");
    let errlog = dir.path().join("gw.stderr");
    let mut child = Command::new(env!("CARGO_BIN_EXE_callfabric"))
        .args(["gateway", "--config"])
        .arg(&cfg)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&errlog).expect("stderr"))
        .spawn()
        .expect("gateway");
    let stdout = child.stdout.take().expect("stdout");
    let _gw = Gw(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let ready = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("ready line");
    assert!(ready.starts_with("gateway ready"), "{ready}");

    let out = register(target, "secret");
    assert!(
        out.passed(),
        "register with the database up\n{}",
        out.describe()
    );

    // The database goes down: the gateway says so loudly and keeps serving from its cache.
    pg.stop().expect("stop postgres");
    let t0 = Instant::now();
    while !std::fs::read_to_string(&errlog)
        .unwrap_or_default()
        .contains("DEVICE DATABASE UNREACHABLE")
    {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no outage warning in the gateway log"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = register(target, "secret");
    assert!(
        out.passed(),
        "register while the database is down (cache)\n{}",
        out.describe()
    );
    let out = refused(target, "wrong");
    assert!(
        out.passed(),
        "a wrong password is still refused (401, 401) while the database is down\n{}",
        out.describe()
    );

    // It comes back; a password changed there is live within the reload interval.
    pg.start_again().expect("restart postgres");
    devices_add(&cfg, "1000", "changed");
    let t0 = Instant::now();
    while !register(target, "changed").passed() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "new password never accepted: {}",
            pg.log()
        );
    }
    let out = refused(target, "secret");
    assert!(
        out.passed(),
        "the old password is refused (401, 401) after the change\n{}",
        out.describe()
    );
}

/// Issue 17: sites share one device table. Each gateway publishes the state of its own site's
/// devices only (`devices add` records the config's `[node] site`): at start a gateway used to
/// publish every device of the table as UNAVAILABLE, the other sites' devices too.
#[test]
fn gateways_sharing_a_table_publish_only_their_own_sites_devices() {
    use integration::gateway::{GatewayProcess, GatewaySpec};
    let pg = Postgres::start().expect("postgres");
    let binary = Path::new(env!("CARGO_BIN_EXE_callfabric"));
    let spec = |name: &str, user: &str| {
        let mut s = GatewaySpec::new(name, &[user]);
        s.database = Some(pg.url());
        s.qualify_interval_secs = 300.0; // the SIPp UAS answers no OPTIONS
        s
    };
    let mut gw_a = GatewayProcess::start(binary, spec("gw-a", "1001"));
    let mut gw_b = GatewayProcess::start(binary, spec("gw-b", "2001"));
    // gw-b started with both devices in the table; gw-a reads it again from a fresh start.
    gw_a.restart();
    for (gw, own, other) in [(&mut gw_a, "1001", "2001"), (&mut gw_b, "2001", "1001")] {
        let mark = gw.mark();
        let _phone = integration::phones::answering_phone(gw, own, "call_uas.xml", 1);
        // What the start published came before this (one loop, before any REGISTER is read).
        gw.seen_since(
            mark,
            &format!("DEVICE PJSIP/{own} NOT_INUSE"),
            Duration::from_secs(30),
        );
        let history = gw.history.join("\n");
        assert!(
            history.contains(&format!("DEVICE PJSIP/{own} UNAVAILABLE")),
            "{}: its own device was not announced at start:\n{history}",
            gw.spec.name
        );
        assert!(
            !history.contains(&format!("PJSIP/{other} ")),
            "{} published the other site's device {other}:\n{history}",
            gw.spec.name
        );
    }
    // The site is in the table, as `devices list` shows it.
    let out = Command::new(binary)
        .args(["devices", "list", "--config"])
        .arg(&gw_a.config)
        .output()
        .expect("devices list");
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(
        list.contains("1001 realm=gw-a.example site=gw-a")
            && list.contains("2001 realm=gw-b.example site=gw-b"),
        "{list}"
    );
}

/// Voicemail's store on PostgreSQL (a central voicemail server): the migrations apply, a
/// message is counted new, then old, then gone with its file; the mailbox limit holds.
#[test]
fn voicemail_store_on_postgres() {
    use gateway::voicemail::store::{MailboxStore, StoreError};
    let pg = Postgres::start().expect("postgres");
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let store = MailboxStore::open(&pg.url(), dir.path(), "default", 2)
            .await
            .expect("open the store on PostgreSQL");
        let tone = media::audio::prompts::tone(&[440.0], 1000, 0.3);
        let m = store.deposit("1000", "1001", &tone).await.expect("deposit");
        assert!(m.path.is_file(), "the WAV is on disk");
        assert_eq!(m.duration, Duration::from_secs(1));
        assert_eq!(store.counts("1000").await.expect("counts"), (1, 0));
        assert_eq!(store.counts("1001").await.expect("counts"), (0, 0));
        store.mark_old("1000", &m.id).await.expect("mark old");
        assert_eq!(store.counts("1000").await.expect("counts"), (0, 1));
        let second = store.deposit("1000", "1002", &tone).await.expect("deposit");
        let list = store.list("1000").await.expect("list");
        assert_eq!(
            list.iter()
                .map(|m| (m.id.as_str(), m.new))
                .collect::<Vec<_>>(),
            vec![(second.id.as_str(), true), (m.id.as_str(), false)],
            "new first"
        );
        assert!(matches!(
            store.deposit("1000", "1003", &tone).await,
            Err(StoreError::Full(_))
        ));
        store.delete("1000", &m.id).await.expect("delete");
        assert!(!m.path.exists(), "the file is gone");
        assert_eq!(store.counts("1000").await.expect("counts"), (1, 0));
    });
}

#[allow(dead_code)]
#[path = "../gateway/tests/support/big_batch.rs"]
mod big_batch;

/// Durable registrations on PostgreSQL: a batch larger than one statement of each kind reads
/// back exactly (the SQLite run is `gateway/tests/registrations_store.rs`).
#[test]
fn registration_batches_on_postgres() {
    let pg = Postgres::start().expect("postgres");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let store = gateway::devices::DeviceStore::open(&pg.url())
            .await
            .expect("open the device store on PostgreSQL");
        big_batch::round_trip(&store).await;
    });
}

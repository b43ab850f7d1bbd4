//! The gateway on PostgreSQL (the multi-site database): registers against devices read from a
//! real server; keeps answering from its cache while the server is down; picks up a password
//! changed in the database once the server is back.

use integration::postgres::Postgres;
use integration::sipp::{run_scenario, SippOpts};
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

fn register(target: SocketAddr, password: &str) -> bool {
    let scenario = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sipp/register_ok.xml");
    let out = run_scenario(
        &scenario,
        target,
        SippOpts {
            timeout: Duration::from_secs(10),
            ..SippOpts::user("1000", password)
        },
    )
    .expect("sipp");
    out.passed()
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

    assert!(register(target, "secret"), "register with the database up");

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
    assert!(
        register(target, "secret"),
        "register while the database is down (cache)"
    );
    assert!(
        !register(target, "wrong"),
        "a wrong password is still refused while the database is down"
    );

    // It comes back; a password changed there is live within the reload interval.
    pg.start_again().expect("restart postgres");
    devices_add(&cfg, "1000", "changed");
    let t0 = Instant::now();
    while !register(target, "changed") {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "new password never accepted: {}",
            pg.log()
        );
    }
    assert!(
        !register(target, "secret"),
        "the old password is refused after the change"
    );
}

//! The gateway with a real softphone: baresip registers with its account (digest), the device
//! reads NOT_INUSE; the phone is killed without unregistering, OPTIONS qualify goes unanswered
//! and the device reads UNAVAILABLE.

use integration::baresip::Baresip;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

struct Gateway {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Gateway {
    fn wait_line(&mut self, pred: impl Fn(&str) -> bool, what: &str, timeout: Duration) -> String {
        let t0 = Instant::now();
        loop {
            let left = timeout.checked_sub(t0.elapsed()).unwrap_or_default();
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if pred(&l) {
                        return l;
                    }
                }
                Err(_) => panic!(
                    "timed out waiting for {what}; gateway printed {:?}",
                    self.seen
                ),
            }
        }
    }
}

fn start_gateway(dir: &std::path::Path, algorithms: &str) -> (Gateway, u16) {
    let port = integration::free_udp_port();
    let cfg = dir.join("gw.toml");
    std::fs::write(
        &cfg,
        format!(
            "[node]\nname = \"gw-a\"\nsite = \"a\"\nrole = \"gateway\"\n[statebus]\nbackend = \"local\"\n\
             [gateway]\nudp = [\"127.0.0.1:{port}\"]\nrealm = \"site-a\"\ndatabase = \"sqlite://gw.db\"\n\
             digest_algorithms = {algorithms}\nmin_expires = 2\nqualify_interval_secs = 1\nt1_ms = 100\n"
        ),
    )
    .expect("config");
    let exe = env!("CARGO_BIN_EXE_callfabric");
    let out = Command::new(exe)
        .args(["devices", "add", "--config"])
        .arg(&cfg)
        .args(["--user", "1000", "--password", "secret"])
        .output()
        .expect("devices add");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut child = Command::new(exe)
        .args(["gateway", "--config"])
        .arg(&cfg)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("gw.log")).expect("log"))
        .spawn()
        .expect("gateway");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let mut gw = Gateway {
        child,
        lines,
        seen: Vec::new(),
    };
    gw.wait_line(
        |l| l.starts_with("gateway ready"),
        "gateway ready",
        Duration::from_secs(20),
    );
    (gw, port)
}

#[test]
fn baresip_registers_and_goes_unavailable_when_killed() {
    let dir = tempfile::tempdir().expect("tempdir");
    // baresip 1.0 (libre) computes MD5 digests only, and it answers the *first* challenge: with
    // SHA-256 offered first (RFC 8760 order, the default) it never registers (measured). The
    // gateway is therefore configured MD5-only here, as an operator would for such phones.
    let (mut gw, port) = start_gateway(dir.path(), r#"["MD5"]"#);
    let mut phone =
        Baresip::start("1000", "secret", &format!("127.0.0.1:{port}"), 60, "udp").expect("baresip");
    gw.wait_line(
        |l| l == "DEVICE PJSIP/1000 NOT_INUSE",
        "registration",
        Duration::from_secs(20),
    );
    // The phone answers OPTIONS while alive: still NOT_INUSE after several qualify rounds.
    std::thread::sleep(Duration::from_secs(3));
    while let Ok(l) = gw.lines.try_recv() {
        assert_ne!(
            l,
            "DEVICE PJSIP/1000 UNAVAILABLE",
            "a live phone was marked unavailable: {}",
            phone.log()
        );
    }
    let killed = Instant::now();
    phone.kill();
    gw.wait_line(
        |l| l == "DEVICE PJSIP/1000 UNAVAILABLE",
        "qualify failure",
        Duration::from_secs(20),
    );
    // Timer F is 64·T1 = 6.4 s; the qualify interval adds up to 1 s.
    assert!(
        killed.elapsed() < Duration::from_secs(12),
        "took {:?}",
        killed.elapsed()
    );
}

//! End to end: the real `callfabric gateway` as a registrar, driven by SIPp over UDP and TCP.
//!
//! Every test starts its own gateway (own ports, own SQLite file, local bus) and reads its stdout:
//! `gateway ready udp=... tcp=...` once listening, then one `DEVICE PJSIP/<user> <STATE>` line per
//! published device-state change.
//!
//! SIPp 3.6.1 implements digest MD5 only, and its `[authentication]` answers the *first*
//! `WWW-Authenticate` of the 401: with our default order (SHA-256 first, RFC 8760) it stops with
//! "createAuthHeader: authentication must use MD5 or AKAv1-MD5". The SIPp tests therefore run the
//! gateway with `digest_algorithms = ["MD5"]`; `default_challenge_order` checks the default order.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use integration::sipp::{run_scenario, SippOpts, SippOutcome, SippProcess, SippTransport};
use integration::{free_tcp_port, free_udp_port, tail_file};

const START_TIMEOUT: Duration = Duration::from_secs(30);
const STATE_TIMEOUT: Duration = Duration::from_secs(10);

fn scenario(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("sipp")
        .join(name)
}

fn callfabric() -> Command {
    Command::new(env!("CARGO_BIN_EXE_callfabric"))
}

/// A running `callfabric gateway`, killed on drop.
struct Gateway {
    child: Child,
    lines: Receiver<String>,
    history: Vec<String>,
    dir: tempfile::TempDir,
    config: PathBuf,
    udp: SocketAddr,
    tcp: SocketAddr,
}

impl Gateway {
    /// Writes the config, seeds users 1000 and 1001 (password "secret"), starts the gateway and
    /// waits for its ready line.
    fn start(digest_algorithms: &[&str]) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let udp = SocketAddr::from(([127, 0, 0, 1], free_udp_port()));
        let tcp = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
        let algorithms = digest_algorithms
            .iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let config = dir.path().join("gw-a.toml");
        let text = format!(
            r#"[node]
name = "gw-a"
site = "a"
role = "gateway"

[statebus]
backend = "local"

[gateway]
udp = ["{udp}"]
tcp = ["{tcp}"]
realm = "site-a"
database = "sqlite://{db}"
min_expires = 2
default_expires = 3600
max_expires = 7200
digest_algorithms = [{algorithms}]
db_reload_secs = 0.2
qualify_interval_secs = 1
t1_ms = 100
"#,
            db = dir.path().join("gw-a.db").display(),
        );
        std::fs::write(&config, text).expect("write config");
        devices_add(&config, "1000", "secret");
        devices_add(&config, "1001", "secret");

        let stderr = std::fs::File::create(dir.path().join("gateway.stderr")).expect("stderr file");
        let mut child = callfabric()
            .arg("gateway")
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start callfabric gateway");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut gw = Gateway {
            child,
            lines,
            history: Vec::new(),
            dir,
            config,
            udp,
            tcp,
        };
        let ready = gw.wait_for(START_TIMEOUT, "the ready line", |l| {
            l.starts_with("gateway ready")
        });
        assert!(
            ready.contains(&udp.to_string()) && ready.contains(&tcp.to_string()),
            "ready line {ready:?} does not name udp={udp} tcp={tcp}"
        );
        gw
    }

    /// Consumes stdout lines until one satisfies `pred`; panics (with the stdout history and
    /// the stderr tail) on timeout or when the gateway exits.
    fn wait_for(&mut self, timeout: Duration, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.history.push(line.clone());
                    if pred(line.trim()) {
                        return line.trim().to_owned();
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "timed out after {timeout:?} waiting for {what}\n{}",
                        self.diag()
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.try_wait();
                    panic!(
                        "gateway closed stdout ({status:?}) while waiting for {what}\n{}",
                        self.diag()
                    )
                }
            }
        }
    }

    /// Waits for `DEVICE PJSIP/<user> <state>`; returns when it was seen.
    fn device(&mut self, user: &str, state: &str, timeout: Duration) -> Instant {
        let want = format!("DEVICE PJSIP/{user} {state}");
        self.wait_for(timeout, &format!("`{want}`"), |l| l == want);
        Instant::now()
    }

    /// Lines already printed (and not yet consumed) without waiting.
    fn drain(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.history.push(line);
        }
    }

    fn diag(&self) -> String {
        format!(
            "--- gateway stdout ---\n{}\n--- gateway stderr (tail) ---\n{}",
            self.history.join("\n"),
            tail_file(&self.dir.path().join("gateway.stderr"), 40)
        )
    }

    fn sipp(&self, name: &str, transport: SippTransport, opts: SippOpts) -> SippOutcome {
        let target = match transport {
            SippTransport::Udp => self.udp,
            SippTransport::Tcp => self.tcp,
        };
        run_scenario(&scenario(name), target, SippOpts { transport, ..opts }).expect("run sipp")
    }

    #[track_caller]
    fn assert_passes(&self, out: &SippOutcome, what: &str) {
        assert!(
            out.passed(),
            "{what}: SIPp scenario failed\n{}\n{}",
            out.describe(),
            self.diag()
        );
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn devices_add(config: &Path, user: &str, password: &str) {
    let out = callfabric()
        .args(["devices", "add", "--config"])
        .arg(config)
        .args(["--user", user, "--password", password])
        .stdin(Stdio::null())
        .output()
        .expect("run callfabric devices add");
    assert!(
        out.status.success(),
        "callfabric devices add --user {user} failed: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Status line and header names of every 401 SIPp received (from its `-trace_msg` log).
fn received_401_shapes(messages: &str) -> Vec<Vec<String>> {
    let mut shapes = Vec::new();
    for block in messages.split("message received") {
        let mut lines = block.lines().skip_while(|l| !l.starts_with("SIP/2.0"));
        let Some(status) = lines.next() else { continue };
        if !status.starts_with("SIP/2.0 401") {
            continue;
        }
        let mut shape = vec![status.trim().to_owned()];
        for l in lines {
            let l = l.trim();
            if l.is_empty() || l.starts_with("---") {
                break;
            }
            if let Some((name, value)) = l.split_once(':') {
                let mut name = name.trim().to_ascii_lowercase();
                if name == "www-authenticate" {
                    // the algorithm of each challenge, in order
                    let alg = value
                        .split(',')
                        .find_map(|p| p.trim().strip_prefix("algorithm="))
                        .unwrap_or("?");
                    name = format!("{name} {alg}");
                }
                shape.push(name);
            }
        }
        shapes.push(shape);
    }
    shapes
}

#[test]
fn register_md5_over_udp_and_tcp() {
    let mut gw = Gateway::start(&["MD5"]);

    let out = gw.sipp(
        "register_ok.xml",
        SippTransport::Udp,
        SippOpts::user("1000", "secret"),
    );
    gw.assert_passes(&out, "REGISTER 1000 over UDP");
    gw.device("1000", "NOT_INUSE", STATE_TIMEOUT);

    let out = gw.sipp(
        "register_ok.xml",
        SippTransport::Tcp,
        SippOpts::user("1001", "secret"),
    );
    gw.assert_passes(&out, "REGISTER 1001 over TCP");
    gw.device("1001", "NOT_INUSE", STATE_TIMEOUT);
}

#[test]
fn wrong_password_and_unknown_user_get_the_same_401s() {
    let mut gw = Gateway::start(&["MD5"]);

    let wrong = gw.sipp(
        "register_wrong_password.xml",
        SippTransport::Udp,
        SippOpts::user("1000", "not-the-password"),
    );
    gw.assert_passes(&wrong, "1000 with a wrong password: 401, then 401 again");

    let unknown = gw.sipp(
        "register_wrong_password.xml",
        SippTransport::Udp,
        SippOpts::user("9999", "secret"),
    );
    gw.assert_passes(&unknown, "unknown user 9999: 401, then 401 again");

    let (a, b) = (
        received_401_shapes(&wrong.messages),
        received_401_shapes(&unknown.messages),
    );
    assert_eq!(a.len(), 2, "two 401s expected\n{}", wrong.describe());
    assert_eq!(
        a, b,
        "the 401s for a wrong password and an unknown user differ in shape"
    );

    gw.drain();
    assert!(
        !gw.history.iter().any(|l| l.starts_with("DEVICE ")),
        "no device state expected after failed registrations\n{}",
        gw.diag()
    );
}

#[test]
fn unregister_makes_the_device_unavailable() {
    let mut gw = Gateway::start(&["MD5"]);
    for transport in [SippTransport::Udp, SippTransport::Tcp] {
        let out = gw.sipp(
            "unregister.xml",
            transport,
            SippOpts::user("1000", "secret"),
        );
        gw.assert_passes(
            &out,
            &format!("{transport:?}: register, then Expires: 0 -> 200 without contacts"),
        );
        gw.device("1000", "NOT_INUSE", STATE_TIMEOUT);
        gw.device("1000", "UNAVAILABLE", STATE_TIMEOUT);
    }
}

#[test]
fn registration_expires() {
    let mut gw = Gateway::start(&["MD5"]);
    // SIPp stays online for 12 s after its 200 and answers the gateway's OPTIONS (-aa), so a
    // failed qualify cannot be what makes the device unavailable.
    let mut opts = SippOpts::user("1000", "secret");
    opts.extra_args = ["-aa", "-d", "12000"].map(String::from).to_vec();
    opts.timeout = Duration::from_secs(30);
    let mut sipp = SippProcess::spawn(&scenario("register_expires.xml"), Some(gw.udp), &opts)
        .expect("start sipp");

    let registered = gw.device("1000", "NOT_INUSE", STATE_TIMEOUT);
    let expired = gw.device("1000", "UNAVAILABLE", Duration::from_secs(12));
    let after = expired - registered;
    assert!(
        after >= Duration::from_millis(4000),
        "unavailable {after:?} after registering with Expires: 5: too early\n{}",
        gw.diag()
    );

    eprintln!("registration with Expires: 5 lapsed after {after:?}");

    let out = sipp.wait().expect("sipp");
    gw.assert_passes(&out, "REGISTER with Expires: 5 granted expires=5");
}

#[test]
fn password_change_applies_within_a_second() {
    let mut gw = Gateway::start(&["MD5"]);
    let out = gw.sipp(
        "register_ok.xml",
        SippTransport::Udp,
        SippOpts::user("1000", "secret"),
    );
    gw.assert_passes(&out, "REGISTER with the first password");
    gw.device("1000", "NOT_INUSE", STATE_TIMEOUT);

    devices_add(&gw.config, "1000", "changed");
    let changed = Instant::now();

    // The old password stops working ...
    let deadline = changed + Duration::from_secs(3);
    let old_rejected_after = loop {
        let out = gw.sipp(
            "register_wrong_password.xml",
            SippTransport::Udp,
            SippOpts::user("1000", "secret"),
        );
        if out.passed() {
            break changed.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "old password still accepted 3 s after the change\n{}\n{}",
            out.describe(),
            gw.diag()
        );
    };
    // ... and the new one works.
    let out = gw.sipp(
        "register_ok.xml",
        SippTransport::Udp,
        SippOpts::user("1000", "changed"),
    );
    gw.assert_passes(&out, "REGISTER with the new password");
    assert!(
        old_rejected_after <= Duration::from_millis(1500),
        "the password change took {old_rejected_after:?} to apply (db_reload_secs = 0.2)"
    );
    eprintln!("password change applied after {old_rejected_after:?}");
}

/// With the default `["SHA-256", "MD5"]` the 401 carries both challenges, SHA-256 first; SIPp
/// (MD5 only) answers the first one, so it gives up (fatal error, exit 255) on the re-REGISTER.
#[test]
fn default_challenge_order() {
    let gw = Gateway::start(&["SHA-256", "MD5"]);
    let out = gw.sipp(
        "register_ok.xml",
        SippTransport::Udp,
        SippOpts::user("1000", "secret"),
    );
    let shapes = received_401_shapes(&out.messages);
    let first = shapes.first().unwrap_or_else(|| {
        panic!("no 401 received\n{}\n{}", out.describe(), gw.diag());
    });
    let challenges: Vec<&String> = first
        .iter()
        .filter(|h| h.starts_with("www-authenticate"))
        .collect();
    assert_eq!(
        challenges,
        ["www-authenticate SHA-256", "www-authenticate MD5"],
        "{}",
        out.describe()
    );
    assert!(
        !out.passed() && out.errors.contains("must use MD5"),
        "SIPp 3.6.1 was expected to refuse the SHA-256 challenge\n{}",
        out.describe()
    );
}

/// Qualify: a phone that answers the gateway's OPTIONS (SIPp with `-oocsf options_answer.xml`)
/// stays NOT_INUSE; once it goes away, the device becomes UNAVAILABLE.
#[test]
fn qualify_answered_then_gone() {
    let mut gw = Gateway::start(&["MD5"]);
    let mut opts = SippOpts::user("1000", "secret");
    opts.extra_args = vec![
        "-oocsf".into(),
        scenario("options_answer.xml").display().to_string(),
        "-d".into(),
        "4000".into(),
    ];
    let mut sipp =
        SippProcess::spawn(&scenario("register_ok.xml"), Some(gw.udp), &opts).expect("start sipp");
    let registered = gw.device("1000", "NOT_INUSE", STATE_TIMEOUT);
    let out = sipp.wait().expect("sipp");
    gw.assert_passes(&out, "REGISTER, then answer OPTIONS for 4 s");
    let gone = gw.device("1000", "UNAVAILABLE", Duration::from_secs(15));
    let after = gone - registered;
    eprintln!("answering phone: UNAVAILABLE {after:?} after registering (SIPp online 4 s)");
    assert!(
        after >= Duration::from_millis(3500),
        "UNAVAILABLE after {after:?} although SIPp answered OPTIONS for 4 s\n{}\n{}",
        out.describe(),
        gw.diag()
    );
    assert!(
        out.messages.contains("OPTIONS sip:"),
        "the gateway sent no OPTIONS in 4 s (qualify_interval_secs = 1)\n{}",
        out.describe()
    );
}

/// Qualify: a registered phone that never answers OPTIONS (`-oocsf options_silent.xml`) becomes
/// UNAVAILABLE while its registration is still valid.
#[test]
fn qualify_unanswered() {
    let mut gw = Gateway::start(&["MD5"]);
    let mut opts = SippOpts::user("1000", "secret");
    opts.extra_args = vec![
        "-oocsf".into(),
        scenario("options_silent.xml").display().to_string(),
        "-d".into(),
        "15000".into(),
    ];
    opts.timeout = Duration::from_secs(30);
    let mut sipp =
        SippProcess::spawn(&scenario("register_ok.xml"), Some(gw.udp), &opts).expect("start sipp");
    let registered = gw.device("1000", "NOT_INUSE", STATE_TIMEOUT);
    let gone = gw.device("1000", "UNAVAILABLE", Duration::from_secs(14));
    assert!(
        sipp.is_running(),
        "SIPp exited before the device became UNAVAILABLE: not a qualify timeout\n{}",
        sipp.wait().map(|o| o.describe()).unwrap_or_default()
    );
    eprintln!(
        "silent phone: UNAVAILABLE {:?} after registering",
        gone - registered
    );
}

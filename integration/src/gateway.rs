//! Runs the real `callfabric gateway` binary for end-to-end tests: a private directory with its
//! config and SQLite file, free loopback ports, seeded devices, and its stdout read line by line
//! (`gateway ready udp=… tcp=…`, `DEVICE <key> <STATE>`, `CALL <n> ENDED <reason> …`).

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use crate::{free_tcp_port, free_udp_port, tail_file};

/// How to start a gateway.
#[derive(Debug, Clone)]
pub struct GatewaySpec {
    /// Node name (also the config file name).
    pub name: String,
    /// Digest realm.
    pub realm: String,
    /// `digest_algorithms` (SIPp and baresip answer only the first challenge, MD5 only).
    pub digest_algorithms: Vec<String>,
    /// Devices to add before starting: (user, password).
    pub devices: Vec<(String, String)>,
    /// `qualify_interval_secs` (1 s by default, to see unreachable phones quickly; a SIPp UAS
    /// cannot answer OPTIONS outside its scenario, so call tests make it long).
    pub qualify_interval_secs: f64,
    /// Body of the `[statebus]` section (default `backend = "local"`).
    pub statebus: String,
    /// Extra lines for the `[node]` section (e.g. `sip_address = "…"` for heartbeats).
    pub node_extra: String,
    /// The subcommand: `gateway` (default), `site` (gateway and ACD in one process) or `acd`
    /// (an ACD node alone; it waits for `acd ready`). The `[acd]` section goes into `extra`.
    pub command: String,
    /// UDP listener port (a free one when `None`): set it when other gateways' trunks must
    /// know it before this one starts.
    pub udp_port: Option<u16>,
    /// Extra lines for the `[gateway]` section (and sections after it, e.g. `[[gateway.trunk]]`).
    pub extra: String,
    /// Device database URL (`postgres://…`, `sqlite://…`); `None`: a SQLite file in the
    /// private directory.
    pub database: Option<String>,
    /// More `devices add` arguments per device user (e.g. `--mwi unsolicited`).
    pub device_args: Vec<(String, Vec<String>)>,
    /// `sip_shards` (issue 16: register shards; 1 = the unsharded core); `None`: the
    /// binary's default, one per core.
    pub sip_shards: Option<usize>,
}

impl GatewaySpec {
    /// A site gateway named `name` with MD5 digest, fast timers (T1 100 ms, qualify 1 s) and
    /// `devices` with password `secret`.
    pub fn new(name: &str, devices: &[&str]) -> Self {
        GatewaySpec {
            name: name.to_owned(),
            realm: format!("{name}.example"),
            digest_algorithms: vec!["MD5".into()],
            devices: devices
                .iter()
                .map(|d| ((*d).to_owned(), "secret".to_owned()))
                .collect(),
            qualify_interval_secs: 1.0,
            udp_port: None,
            command: "gateway".into(),
            statebus: "backend = \"local\"".into(),
            node_extra: String::new(),
            extra: String::new(),
            database: None,
            device_args: Vec::new(),
            sip_shards: None,
        }
    }
}

/// One `CALL <n> ENDED <reason> key=value…` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallEnded {
    /// The line as printed.
    pub line: String,
    /// Why the call ended.
    pub reason: String,
}

impl CallEnded {
    /// The value of `key=` on the line.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.line
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
    }

    /// A numeric value (0 when absent).
    pub fn num(&self, key: &str) -> u64 {
        self.get(key).and_then(|v| v.parse().ok()).unwrap_or(0)
    }
}

/// A running gateway, killed on drop.
pub struct GatewayProcess {
    child: Child,
    lines: Receiver<String>,
    /// Every stdout line read so far.
    pub history: Vec<String>,
    dir: tempfile::TempDir,
    /// Its config file.
    pub config: PathBuf,
    /// UDP listener.
    pub udp: SocketAddr,
    /// TCP listener.
    pub tcp: SocketAddr,
    /// The spec it was started with.
    pub spec: GatewaySpec,
    /// History index after the last CALL line [`call_ended`](Self::call_ended) returned.
    call_cursor: usize,
    binary: PathBuf,
}

/// Starts `callfabric <command> --config <config>` with stdout read line by line.
fn spawn(binary: &Path, command: &str, config: &Path, dir: &Path) -> (Child, Receiver<String>) {
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("gateway.stderr"))
        .expect("stderr file");
    let mut child = Command::new(binary)
        .arg(command)
        .arg("--config")
        .arg(config)
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
    (child, lines)
}

/// The `callfabric` binary next to the test executables (`target/<profile>/callfabric`).
pub fn callfabric_binary() -> PathBuf {
    if let Ok(p) = std::env::var("CARGO_BIN_EXE_callfabric") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join("callfabric")
}

impl GatewayProcess {
    /// Writes the config, adds the devices, starts `callfabric gateway` and waits for its
    /// ready line. `binary` is the callfabric executable (`env!("CARGO_BIN_EXE_callfabric")`).
    pub fn start(binary: &Path, spec: GatewaySpec) -> GatewayProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        let udp = SocketAddr::from(([127, 0, 0, 1], spec.udp_port.unwrap_or_else(free_udp_port)));
        let tcp = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
        let algorithms = spec
            .digest_algorithms
            .iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let config = dir.path().join(format!("{}.toml", spec.name));
        let text = format!(
            r#"[node]
name = "{name}"
site = "{name}"
role = "gateway"
{node_extra}

[statebus]
{statebus}

[gateway]
udp = ["{udp}"]
tcp = ["{tcp}"]
realm = "{realm}"
database = "{db}"
min_expires = 2
default_expires = 3600
max_expires = 7200
digest_algorithms = [{algorithms}]
db_reload_secs = 0.2
qualify_interval_secs = {qualify}
t1_ms = 100
{shards}
{extra}
"#,
            name = spec.name,
            realm = spec.realm,
            db = spec.database.clone().unwrap_or_else(|| format!(
                "sqlite://{}",
                dir.path().join(format!("{}.db", spec.name)).display()
            )),
            extra = spec.extra,
            shards = spec
                .sip_shards
                .map(|n| format!("sip_shards = {n}"))
                .unwrap_or_default(),
            qualify = spec.qualify_interval_secs,
            node_extra = spec.node_extra,
            statebus = spec.statebus,
        );
        std::fs::write(&config, text).expect("write config");
        for (user, password) in &spec.devices {
            let extra: Vec<&str> = spec
                .device_args
                .iter()
                .filter(|(u, _)| u == user)
                .flat_map(|(_, a)| a.iter().map(String::as_str))
                .collect();
            devices_add_with(binary, &config, user, password, &extra);
        }
        let (child, lines) = spawn(binary, &spec.command, &config, dir.path());
        let mut gw = GatewayProcess {
            child,
            lines,
            history: Vec::new(),
            dir,
            config,
            udp,
            tcp,
            spec,
            call_cursor: 0,
            binary: binary.to_path_buf(),
        };
        gw.wait_ready();
        gw
    }

    /// Starts `callfabric <spec.command>` on a config the caller wrote (`text`, e.g. an example
    /// file with its ports and paths substituted), with `files` (name, contents) beside it in
    /// the private directory; adds `spec.devices` first. A gateway's ready line must name
    /// `udp` and `tcp`.
    pub fn start_config(
        binary: &Path,
        spec: GatewaySpec,
        text: &str,
        files: &[(&str, &str)],
        udp: SocketAddr,
        tcp: SocketAddr,
    ) -> GatewayProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join(format!("{}.toml", spec.name));
        std::fs::write(&config, text).expect("write config");
        for (name, contents) in files {
            std::fs::write(dir.path().join(name), contents)
                .expect("write a file beside the config");
        }
        for (user, password) in &spec.devices {
            devices_add(binary, &config, user, password);
        }
        let (child, lines) = spawn(binary, &spec.command, &config, dir.path());
        let mut gw = GatewayProcess {
            child,
            lines,
            history: Vec::new(),
            dir,
            config,
            udp,
            tcp,
            spec,
            call_cursor: 0,
            binary: binary.to_path_buf(),
        };
        gw.wait_ready();
        gw
    }

    fn wait_ready(&mut self) {
        let (udp, tcp) = (self.udp, self.tcp);
        let gw = self;
        if gw.spec.command == "acd" {
            gw.wait_for(Duration::from_secs(30), "the acd ready line", |l| {
                l.starts_with("acd ready")
            });
            return;
        }
        let ready = gw.wait_for(Duration::from_secs(30), "the ready line", |l| {
            l.starts_with("gateway ready")
        });
        assert!(
            ready.contains(&udp.to_string()) && ready.contains(&tcp.to_string()),
            "ready line {ready:?} does not name udp={udp} tcp={tcp}"
        );
    }

    /// Kills the process (SIGKILL: no shutdown of any kind) and starts it again on the same
    /// config, database and ports; waits for its ready line. The stdout history goes on (a
    /// `--- restart ---` line marks the point).
    pub fn restart(&mut self) {
        self.kill();
        self.drain();
        self.history.push("--- restart ---".into());
        self.call_cursor = self.history.len();
        let (child, lines) = spawn(
            &self.binary,
            &self.spec.command,
            &self.config,
            self.dir.path(),
        );
        self.child = child;
        self.lines = lines;
        self.wait_ready();
    }

    /// Sends `signal` (`TERM`, `INT`, …) to the process.
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -{signal} {} failed", self.child.id());
    }

    /// Waits for the process to exit by itself (reading its stdout meanwhile); its status, or
    /// `None` on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            self.drain();
            if let Ok(Some(st)) = self.child.try_wait() {
                // The reader thread may still hold lines printed just before the exit.
                let _ = self.lines_until(Instant::now() + Duration::from_millis(300));
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The private directory (config, database, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Consumes stdout lines until one satisfies `pred`; panics (with the stdout history and
    /// the stderr tail) on timeout or when the gateway exits.
    pub fn wait_for(
        &mut self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        match self.try_wait_for(timeout, pred) {
            Ok(line) => line,
            Err(why) => panic!("{why} waiting for {what}\n{}", self.diag()),
        }
    }

    /// [`wait_for`](Self::wait_for) that returns why it gave up (timed out, or the gateway
    /// closed its stdout) instead of panicking, for a test that adds its own diagnostics.
    pub fn try_wait_for(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.history.push(line.clone());
                    if pred(line.trim()) {
                        return Ok(line.trim().to_owned());
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!("timed out after {timeout:?}"))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.try_wait();
                    return Err(format!("gateway closed stdout ({status:?})"));
                }
            }
        }
    }

    /// A mark in the stdout history, for [`seen_since`](Self::seen_since).
    pub fn mark(&mut self) -> usize {
        self.drain();
        self.history.len()
    }

    /// Waits until a line equal to `want` has been printed since `mark` (already read or not):
    /// for lines printed by different tasks whose order is not fixed.
    pub fn seen_since(&mut self, mark: usize, want: &str, timeout: Duration) {
        self.drain();
        if self.history.iter().skip(mark).any(|l| l.trim() == want) {
            return;
        }
        self.wait_for(timeout, &format!("`{want}`"), |l| l == want);
    }

    /// `GET path` on the status API (its address from the `http ready` line printed since the
    /// last restart, waited for up to `timeout`), as JSON; panics unless it answers 200 with
    /// JSON.
    pub fn api(&mut self, path: &str, timeout: Duration) -> serde_json::Value {
        use std::io::{Read as _, Write as _};
        self.drain();
        let addr = match self
            .history
            .iter()
            .rev()
            .take_while(|l| *l != "--- restart ---")
            .find_map(|l| l.trim().strip_prefix("http ready "))
        {
            Some(a) => a.trim().to_owned(),
            None => self
                .wait_for(timeout, "the http ready line", |l| {
                    l.starts_with("http ready ")
                })
                .trim_start_matches("http ready ")
                .to_owned(),
        };
        let mut conn =
            std::net::TcpStream::connect(addr.as_str()).expect("connect to the status API");
        write!(
            conn,
            "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
        )
        .expect("request");
        let mut text = String::new();
        conn.read_to_string(&mut text).expect("response");
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
    }

    /// Waits for `DEVICE PJSIP/<user> <state>`.
    pub fn device(&mut self, user: &str, state: &str, timeout: Duration) -> Instant {
        let want = format!("DEVICE PJSIP/{user} {state}");
        self.wait_for(timeout, &format!("`{want}`"), |l| l == want);
        Instant::now()
    }

    /// The next `CALL … ENDED …` line not returned before (already read while waiting for
    /// something else, or waited for).
    pub fn call_ended(&mut self, timeout: Duration) -> CallEnded {
        let is_call = |l: &str| l.starts_with("CALL ") && l.contains(" ENDED ");
        self.drain();
        let seen = self
            .history
            .iter()
            .enumerate()
            .skip(self.call_cursor)
            .find(|(_, l)| is_call(l.trim()))
            .map(|(i, l)| (i, l.trim().to_owned()));
        let line = match seen {
            Some((i, l)) => {
                self.call_cursor = i + 1;
                l
            }
            None => {
                let l = self.wait_for(timeout, "a CALL … ENDED line", is_call);
                self.call_cursor = self.history.len();
                l
            }
        };
        let reason = line
            .split_whitespace()
            .nth(3)
            .unwrap_or_default()
            .to_owned();
        CallEnded { line, reason }
    }

    /// The process id (to stop and continue it: a gateway that stops answering).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every stdout line printed until `deadline` (read meanwhile; also kept in the history).
    pub fn lines_until(&mut self, deadline: Instant) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return out;
            }
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.history.push(line.clone());
                    out.push(line.trim().to_owned());
                }
                Err(_) => return out,
            }
        }
    }

    /// Reads lines already printed without waiting.
    pub fn drain(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.history.push(line);
        }
    }

    /// Stdout history and the stderr tail, for failure messages.
    pub fn diag(&self) -> String {
        format!(
            "--- {} stdout ---\n{}\n--- {} stderr (tail) ---\n{}",
            self.spec.name,
            self.history.join("\n"),
            self.spec.name,
            tail_file(&self.dir.path().join("gateway.stderr"), 60)
        )
    }

    /// Kills the process (also done on drop).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `callfabric devices add --config … --user … --password …`.
pub fn devices_add(binary: &Path, config: &Path, user: &str, password: &str) {
    devices_add_with(binary, config, user, password, &[]);
}

/// [`devices_add`] with more arguments (`--mailbox …`, `--mwi …`, `--extension …`).
pub fn devices_add_with(binary: &Path, config: &Path, user: &str, password: &str, extra: &[&str]) {
    let out = Command::new(binary)
        .args(["devices", "add", "--config"])
        .arg(config)
        .args(["--user", user, "--password", password])
        .args(extra)
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

/// Whether `line` is an ACD node's `OFFER <caller> <interface> <gateway>` line for `interface`
/// (not `OFFER UNANSWERED …` nor a gateway's `OFFER REFUSED …`). The caller is the call's
/// linked id when its gateway sent one, else the node's own `acd-…` id.
pub fn is_offer_line(line: &str, interface: &str) -> bool {
    let p: Vec<&str> = line.split_whitespace().collect();
    p.len() == 4
        && p[0] == "OFFER"
        && !matches!(p[1], "UNANSWERED" | "REFUSED")
        && p[2] == interface
}

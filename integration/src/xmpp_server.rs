//! Private, loopback-only XMPP servers (Prosody 0.12, ejabberd 23) for tests.
//!
//! Each [`XmppServer`] lives in its own temporary directory (config, certificates, data, logs),
//! listens on free 127.0.0.1 ports, and is stopped by PID, so tests can run many in parallel.
//! The configuration is rendered from the templates in `<repo>/tigase-config/`.
//!
//! * Prosody: `prosody -F --config <dir>/prosody.cfg.lua`, the child is the server.
//! * ejabberd: `erl … -s ejabberd`, the command line `ejabberdctl foreground` builds, run
//!   directly as the current user: `erl` execs `beam.smp`, so the child's PID *is* the VM and
//!   SIGTERM to it stops ejabberd (a SIGTERM to an `ejabberdctl`/`su` wrapper would orphan
//!   `beam.smp`). No epmd: the Erlang distribution listens on a private loopback port, with a
//!   unique node name and cookie, and the rendered `ejabberdctl.cfg` lets you attach manually.
//!
//! Users are registered in-band (XEP-0077) in parallel right after the server is ready; that
//! is much faster than one `prosodyctl`/`ejabberdctl` VM per user.

use std::fmt::{self, Write as _};
use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};

use crate::raw_xmpp;
use crate::{free_tcp_port, repo_root, require_binary, tail_file, INSTALL_HINT};

const DOMAIN: &str = "fabric.test";
const PUBSUB: &str = "pubsub.fabric.test";
/// How long a stop (SIGTERM) may take before the harness falls back to SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// Attempts with fresh ports when a start fails because a port was taken meanwhile.
const START_ATTEMPTS: usize = 3;

/// Which XMPP server implementation to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServerKind {
    Prosody,
    Ejabberd,
}

impl ServerKind {
    /// Every kind, for tests that run against each server.
    pub const ALL: [ServerKind; 2] = [ServerKind::Prosody, ServerKind::Ejabberd];

    /// "prosody" or "ejabberd".
    pub fn name(self) -> &'static str {
        match self {
            ServerKind::Prosody => "prosody",
            ServerKind::Ejabberd => "ejabberd",
        }
    }

    fn ready_timeout(self) -> Duration {
        match self {
            ServerKind::Prosody => Duration::from_secs(15),
            // An Erlang VM booting ejabberd on a saturated machine (load 20+ on 2 cores, 4
            // nodes of two cluster tests booting at once) was seen still progressing at 45 s:
            // 9 s to load the config, Mnesia tables created at 28 s. It only waits longer
            // when the start is slow; a server that fails still fails at once (port conflict,
            // exit).
            ServerKind::Ejabberd => Duration::from_secs(90),
        }
    }
}

impl fmt::Display for ServerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Ports of one instance (fixed for its lifetime, so `start_again` reuses them).
#[derive(Debug, Clone, Copy)]
struct Ports {
    c2s: u16,
    c2s_tls: u16,
    component: u16,
    /// Erlang distribution (ejabberd only).
    dist: u16,
}

impl Ports {
    fn allocate(kind: ServerKind) -> Ports {
        Ports {
            c2s: free_tcp_port(),
            c2s_tls: free_tcp_port(),
            component: free_tcp_port(),
            dist: if kind == ServerKind::Ejabberd {
                free_tcp_port()
            } else {
                0
            },
        }
    }
}

/// How to start a server (beyond kind and users).
#[derive(Debug, Clone, Copy, Default)]
pub struct StartOptions {
    /// Listen on every interface instead of 127.0.0.1 only. Only for a server started inside a
    /// private network namespace (the WAN lab, [`crate::wanlab`]), where "every interface" is
    /// that namespace's loopback and wire.
    pub all_interfaces: bool,
}

/// A running (or stopped) private XMPP server. Dropping it stops the server and deletes its
/// directory.
pub struct XmppServer {
    kind: ServerKind,
    ports: Ports,
    options: StartOptions,
    secret: String,
    /// ejabberd node name (unique per instance), "" for Prosody.
    node: String,
    cookie: String,
    /// ejabberd cluster member: the private epmd's port (see [`crate::ejabberd_cluster`]);
    /// `None`: a single node without epmd.
    epmd_port: Option<u16>,
    ca_cert: PathBuf,
    /// The accounts the harness registered (user names, password), for
    /// [`XmppServer::restore_accounts`].
    accounts: std::sync::Mutex<(Vec<String>, String)>,
    child: Option<Child>,
    // last: removed after the child is stopped (see Drop)
    dir: tempfile::TempDir,
}

impl fmt::Debug for XmppServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XmppServer")
            .field("kind", &self.kind)
            .field("c2s", &self.ports.c2s)
            .field("component", &self.ports.component)
            .field("dir", &self.dir.path())
            .field("pid", &self.pid())
            .finish()
    }
}

impl XmppServer {
    /// Starts a fresh server of `kind` for `fabric.test`, with the accounts `users` (all with
    /// `password`), and waits until its c2s port answers with `<stream:features>` and every
    /// user is registered.
    pub fn start(kind: ServerKind, users: &[&str], password: &str) -> anyhow::Result<XmppServer> {
        XmppServer::start_with(kind, users, password, StartOptions::default())
    }

    /// [`XmppServer::start`] with options.
    pub fn start_with(
        kind: ServerKind,
        users: &[&str],
        password: &str,
        options: StartOptions,
    ) -> anyhow::Result<XmppServer> {
        check_installed(kind)?;
        let mut last_err = None;
        for _ in 0..START_ATTEMPTS {
            let mut server = XmppServer::prepare(kind, options)?;
            match server.spawn_and_wait() {
                Ok(()) => {
                    if let Err(e) = server.register_users(users, password) {
                        let tail = server.log_tail();
                        return Err(e.context(format!("{kind}: log tail:\n{tail}")));
                    }
                    return Ok(server);
                }
                Err(e) => {
                    let port_taken = server.port_conflict();
                    let _ = server.kill();
                    let e = e.context(format!(
                        "{kind} did not start in {}; log tail:\n{}",
                        server.dir.path().display(),
                        server.log_tail()
                    ));
                    if !port_taken {
                        return Err(e);
                    }
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow!("{kind} did not start")))
    }

    /// Starts an ejabberd node for a cluster ([`crate::ejabberd_cluster`]): Erlang node
    /// `node_name`@localhost with `cookie`, found by its peers through the epmd on
    /// 127.0.0.1:`epmd_port`, and serving the certificates of `certs_of` (so that one CA
    /// verifies every node) when given. Registers `users` like [`XmppServer::start`].
    /// [`XmppServer::ejabberdctl`] does not reach such a node (it uses the epmd-less settings).
    pub(crate) fn start_cluster_member(
        users: &[&str],
        password: &str,
        node_name: &str,
        cookie: &str,
        epmd_port: u16,
        certs_of: Option<&XmppServer>,
    ) -> anyhow::Result<XmppServer> {
        let kind = ServerKind::Ejabberd;
        check_installed(kind)?;
        let mut last_err = None;
        for _ in 0..START_ATTEMPTS {
            let mut server = XmppServer::prepare(kind, StartOptions::default())?;
            server.node = format!("{node_name}@localhost");
            server.cookie = cookie.to_owned();
            server.epmd_port = Some(epmd_port);
            if let Some(first) = certs_of {
                let (from, to) = (first.dir().join("certs"), server.dir().join("certs"));
                for f in [
                    "ca.crt",
                    "fabric.test.crt",
                    "fabric.test.key",
                    "fabric.test.pem",
                ] {
                    fs::copy(from.join(f), to.join(f)).with_context(|| format!("copy {f}"))?;
                }
            }
            server.render_ejabberd()?;
            match server.spawn_and_wait() {
                Ok(()) => {
                    if let Err(e) = server.register_users(users, password) {
                        let tail = server.log_tail();
                        return Err(e.context(format!("{kind}: log tail:\n{tail}")));
                    }
                    return Ok(server);
                }
                Err(e) => {
                    let port_taken = server.port_conflict();
                    let _ = server.kill();
                    let e = e.context(format!(
                        "{kind} cluster member did not start in {}; log tail:\n{}",
                        server.dir.path().display(),
                        server.log_tail()
                    ));
                    if !port_taken {
                        return Err(e);
                    }
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow!("{kind} did not start")))
    }

    /// The cookie of an ejabberd node ("" for Prosody).
    pub fn erlang_cookie(&self) -> &str {
        &self.cookie
    }

    /// Waits until the c2s port answers with stream features again (after a cluster join,
    /// which restarts ejabberd's application inside the node).
    pub fn wait_ready(&mut self) -> anyhow::Result<()> {
        let addr = self.c2s_addr();
        let deadline = Instant::now() + self.kind.ready_timeout();
        loop {
            match raw_xmpp::stream_features(addr, DOMAIN, Duration::from_secs(2)) {
                Ok(features) if features.contains("mechanisms") => return Ok(()),
                Ok(_) | Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Ok(f) => bail!("{addr}: features without SASL mechanisms: {f}"),
                Err(e) => return Err(e.context(format!("{addr} not ready again"))),
            }
        }
    }

    /// Which server this is.
    pub fn kind(&self) -> ServerKind {
        self.kind
    }

    /// Client-to-server address, 127.0.0.1:port (STARTTLS offered, not required).
    pub fn c2s_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.ports.c2s))
    }

    /// Direct-TLS (XEP-0368) client port on 127.0.0.1.
    pub fn c2s_tls_port(&self) -> u16 {
        self.ports.c2s_tls
    }

    /// XEP-0114 external component port on 127.0.0.1 (for `presence.fabric.test`).
    pub fn component_port(&self) -> u16 {
        self.ports.component
    }

    /// Shared secret of the `presence.fabric.test` component.
    pub fn component_secret(&self) -> &str {
        &self.secret
    }

    /// The component JID the server accepts on [`Self::component_port`].
    pub fn component_jid(&self) -> &str {
        "presence.fabric.test"
    }

    /// A second component JID on [`Self::component_port`] with the same secret, for
    /// benchmark floors (a raw client standing where the presence component stands).
    pub fn floor_component_jid(&self) -> &str {
        "floor.fabric.test"
    }

    /// The XMPP domain, "fabric.test".
    pub fn domain(&self) -> &str {
        DOMAIN
    }

    /// The PubSub service JID, "pubsub.fabric.test".
    pub fn pubsub_service(&self) -> &str {
        PUBSUB
    }

    /// PEM of the CA that signed the server certificate (SAN fabric.test, *.fabric.test,
    /// localhost, 127.0.0.1, ::1). Point `SSL_CERT_FILE` at it to verify STARTTLS.
    pub fn ca_cert(&self) -> &Path {
        &self.ca_cert
    }

    /// The instance directory (config, certs, data, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// PID of the server process (beam.smp for ejabberd), if it is running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Is the server process alive?
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Erlang node name of an ejabberd instance ("" for Prosody).
    pub fn erlang_node(&self) -> &str {
        &self.node
    }

    /// Runs `ejabberdctl ARGS…` against this (running) ejabberd node and returns its stdout.
    /// As root, ejabberdctl runs as user `ejabberd`: the instance directory is made
    /// world-readable for that (its parents, normally /tmp, must be traversable). Each call
    /// boots an Erlang VM (about 0.5 s).
    pub fn ejabberdctl(&self, args: &[&str]) -> anyhow::Result<String> {
        if self.kind != ServerKind::Ejabberd {
            bail!(
                "ejabberdctl needs an ejabberd server, this is {}",
                self.kind
            );
        }
        let dir = self.dir.path();
        let out = Command::new(require_binary("ejabberdctl")?)
            .arg("--config-dir")
            .arg(dir)
            .arg("--config")
            .arg(dir.join("ejabberd.yml"))
            .arg("--ctl-config")
            .arg(dir.join("ejabberdctl.cfg"))
            .arg("--logs")
            .arg(dir.join("logs"))
            .arg("--spool")
            .arg(dir.join("db"))
            .arg("--node")
            .arg(&self.node)
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .context("run ejabberdctl")?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "ejabberdctl {} failed ({}): {stdout}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(stdout)
    }

    /// Stops the server with SIGTERM and waits for the process to exit (SIGKILL after 20 s).
    /// Does nothing if it is not running.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        let pid = child.id();
        let sent = Command::new("sh")
            .args(["-c", &format!("kill -s TERM {pid}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !matches!(sent, Ok(s) if s.success()) {
            // already gone, or no shell: fall back to SIGKILL
            let _ = child.kill();
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                child.wait()?;
                bail!(
                    "{} (pid {pid}) ignored SIGTERM for {STOP_TIMEOUT:?}; killed",
                    self.kind
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the server with SIGKILL (a crash) and reaps it. Does nothing if it is not running.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if child.try_wait()?.is_none() {
            let _ = child.kill();
            child.wait()?;
        }
        Ok(())
    }

    /// Starts the server again in the same directory, on the same ports, with the same data
    /// (accounts, PubSub nodes and items); waits until it is ready. Stops it first if running.
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        self.stop()?;
        self.spawn_and_wait().map_err(|e| {
            let _ = self.kill();
            e.context(format!(
                "{} did not start again; log tail:\n{}",
                self.kind,
                self.log_tail()
            ))
        })
    }

    /// The last lines of the server's logs, for test failure messages.
    pub fn log_tail(&self) -> String {
        const LINES: usize = 40;
        let dir = self.dir.path();
        let files: Vec<PathBuf> = match self.kind {
            ServerKind::Prosody => vec![dir.join("prosody.log"), dir.join("stdout.log")],
            ServerKind::Ejabberd => vec![
                dir.join("logs").join("ejabberd.log"),
                dir.join("logs").join("error.log"),
                dir.join("stdout.log"),
            ],
        };
        let mut out = String::new();
        for file in files {
            let tail = tail_file(&file, LINES);
            if !tail.trim().is_empty() {
                let _ = writeln!(out, "==> {} <==\n{tail}", file.display());
            }
        }
        if out.is_empty() {
            out.push_str("(no log output)");
        }
        out
    }

    // ---- internals ----

    /// Makes the instance directory, certificate and configuration; does not start anything.
    fn prepare(kind: ServerKind, options: StartOptions) -> anyhow::Result<XmppServer> {
        let mut builder = tempfile::Builder::new();
        let prefix = format!("callfabric-{}-", kind.name());
        builder.prefix(&prefix);
        // Prosody's SQLite store commits (and fsyncs) once per publish: on the shared test
        // disk 5,000 publishes took 151 s, on tmpfs 38 s. Its instance lives in /dev/shm when
        // there is one; a kill -9 keeps the data either way (only the OS crashing loses it).
        let shm = Path::new("/dev/shm");
        let dir = if kind == ServerKind::Prosody && shm.is_dir() {
            builder.tempdir_in(shm)
        } else {
            builder.tempdir()
        }
        .context("create the server's temporary directory")?;
        let path = dir.path().to_path_buf();
        let ca_cert = generate_certs(&path.join("certs"))?;
        let token = random_hex(6);
        let mut server = XmppServer {
            kind,
            ports: Ports::allocate(kind),
            options,
            secret: format!("compsecret-{token}"),
            node: String::new(),
            cookie: String::new(),
            epmd_port: None,
            ca_cert,
            accounts: Default::default(),
            child: None,
            dir,
        };
        match kind {
            ServerKind::Prosody => {
                fs::create_dir_all(path.join("data"))?;
                server.render_prosody()?;
            }
            ServerKind::Ejabberd => {
                // `ejabberdctl` as root su's to user ejabberd, which must read the config
                fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
                fs::create_dir_all(path.join("db"))?;
                fs::create_dir_all(path.join("logs"))?;
                server.node = format!("callfabric-{token}@localhost");
                server.cookie = random_hex(16);
                server.render_ejabberd()?;
            }
        }
        Ok(server)
    }

    fn template(name: &str) -> anyhow::Result<String> {
        let path = repo_root().join("tigase-config").join(name);
        fs::read_to_string(&path).with_context(|| format!("read template {}", path.display()))
    }

    fn substitutions(&self) -> Vec<(&'static str, String)> {
        let dir = self.dir.path().display().to_string();
        vec![
            ("@DIR@", dir),
            ("@DOMAIN@", DOMAIN.to_string()),
            ("@C2S_PORT@", self.ports.c2s.to_string()),
            ("@C2S_TLS_PORT@", self.ports.c2s_tls.to_string()),
            ("@COMP_PORT@", self.ports.component.to_string()),
            ("@DIST_PORT@", self.ports.dist.to_string()),
            ("@SECRET@", self.secret.clone()),
            ("@COOKIE@", self.cookie.clone()),
            (
                "@INTERFACES@",
                if self.options.all_interfaces {
                    "\"*\""
                } else {
                    "\"127.0.0.1\""
                }
                .to_string(),
            ),
            (
                "@LISTEN_IP@",
                if self.options.all_interfaces {
                    "0.0.0.0"
                } else {
                    "127.0.0.1"
                }
                .to_string(),
            ),
            ("@AUTOCREATE@", "false".to_string()),
            (
                "@PLUGIN_DIR@",
                repo_root()
                    .join("tigase-config")
                    .join("prosody-plugins")
                    .display()
                    .to_string(),
            ),
            ("@LOGLEVEL@", "info".to_string()),
        ]
    }

    fn render(&self, template: &str, out: &str) -> anyhow::Result<()> {
        let mut text = Self::template(template)?;
        for (key, value) in self.substitutions() {
            text = text.replace(key, &value);
        }
        if let Some(pos) = text.find('@').and_then(|p| {
            let rest = &text[p + 1..];
            let end = rest.find('@')?;
            let word = &rest[..end];
            (!word.is_empty() && word.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
                .then_some(p)
        }) {
            bail!(
                "template {template}: unknown placeholder near {:?}",
                &text[pos..]
            );
        }
        let path = self.dir.path().join(out);
        fs::write(&path, text).with_context(|| format!("write {}", path.display()))
    }

    fn render_prosody(&self) -> anyhow::Result<()> {
        self.render("prosody.cfg.lua.in", "prosody.cfg.lua")
    }

    fn render_ejabberd(&self) -> anyhow::Result<()> {
        self.render("ejabberd.yml.in", "ejabberd.yml")?;
        self.render("ejabberdctl.cfg.in", "ejabberdctl.cfg")?;
        let dir = self.dir.path();
        fs::write(
            dir.join("inetrc"),
            "{lookup,[\"file\",\"native\"]}.\n\
             {host,{127,0,0,1}, [\"localhost\",\"hostalias\"]}.\n\
             {file, resolv, \"/etc/resolv.conf\"}.\n",
        )?;
        fs::write(dir.join("node"), format!("{}\n", self.node))?;
        // for manual debugging: `sh <dir>/ctl.sh registered_users fabric.test`
        fs::write(
            dir.join("ctl.sh"),
            format!(
                "#!/bin/sh\n# ejabberdctl for this private node\n\
                 exec ejabberdctl --config-dir '{d}' --config '{d}/ejabberd.yml' \
                 --ctl-config '{d}/ejabberdctl.cfg' --logs '{d}/logs' --spool '{d}/db' \
                 --node '{n}' \"$@\"\n",
                d = dir.display(),
                n = self.node
            ),
        )?;
        Ok(())
    }

    fn command(&self) -> anyhow::Result<Command> {
        let dir = self.dir.path();
        let mut cmd = match self.kind {
            ServerKind::Prosody => {
                let mut cmd = Command::new(require_binary("prosody")?);
                cmd.arg("-F")
                    .arg("--config")
                    .arg(dir.join("prosody.cfg.lua"));
                cmd
            }
            ServerKind::Ejabberd => {
                let mut cmd = Command::new(require_binary("erl")?);
                cmd.env("ERL_LIBS", ejabberd_erl_libs()?)
                    .env("EJABBERD_CONFIG_PATH", dir.join("ejabberd.yml"))
                    .env("EJABBERD_LOG_PATH", dir.join("logs").join("ejabberd.log"))
                    .env("EJABBERD_PID_PATH", dir.join("ejabberd.pid"))
                    .env("ERL_INETRC", dir.join("inetrc"))
                    .env("ERL_CRASH_DUMP", dir.join("logs").join("erl_crash.dump"))
                    .env("ERL_CRASH_DUMP_BYTES", "0")
                    .env("ERL_EPMD_ADDRESS", "127.0.0.1")
                    .env("HOME", dir)
                    .args(["-sname", &self.node, "-setcookie", &self.cookie, "-noinput"])
                    .args(["+K", "true", "+P", "250000"])
                    .args(["-kernel", "inet_dist_use_interface", "{127,0,0,1}"]);
                match self.epmd_port {
                    // a cluster member finds its peers through the cluster's private epmd
                    Some(port) => cmd
                        .env("ERL_EPMD_PORT", port.to_string())
                        .args(["-start_epmd", "false"]),
                    None => cmd.args([
                        "-erl_epmd_port",
                        &self.ports.dist.to_string(),
                        "-start_epmd",
                        "false",
                    ]),
                };
                cmd.args([
                    "-mnesia",
                    "dir",
                    &format!("\"{}\"", dir.join("db").display()),
                ])
                .args(["-s", "ejabberd"]);
                cmd
            }
        };
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("stdout.log"))
            .context("open stdout.log")?;
        cmd.current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        Ok(cmd)
    }

    /// Spawns the server and waits until the c2s port answers with stream features.
    fn spawn_and_wait(&mut self) -> anyhow::Result<()> {
        let mut cmd = self.command()?;
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {:?}", cmd.get_program()))?;
        self.child = Some(child);
        let addr = self.c2s_addr();
        let deadline = Instant::now() + self.kind.ready_timeout();
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    self.child = None;
                    bail!("{} exited during startup ({status})", self.kind);
                }
            }
            let why = match raw_xmpp::stream_features(addr, DOMAIN, Duration::from_secs(2)) {
                Ok(features) if features.contains("mechanisms") => break,
                Ok(features) => anyhow!("features without SASL mechanisms: {features}"),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                bail!(
                    "{} not ready on {addr} after {:?}: {why:#}",
                    self.kind,
                    self.kind.ready_timeout()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Prosody does not exit when a port is taken: it logs and runs on without it. Then the
        // probe might have reached someone else's server on that port.
        if self.port_conflict() {
            bail!("{}: a listening port was already in use", self.kind);
        }
        Ok(())
    }

    /// Does the log say that one of our ports was taken?
    fn port_conflict(&self) -> bool {
        let log = self.log_tail().to_ascii_lowercase();
        log.contains("address already in use") || log.contains("eaddrinuse")
    }

    /// After a `kill` and `start_again`: registers again every account the harness registered
    /// that the crash lost, and returns how many. ejabberd's Mnesia log is an Erlang
    /// `disk_log`, which holds writes in the VM for up to 2 s before writing them to the file
    /// (`?TIMEOUT` of `disk_log_1`'s write cache), so a `kill -9` that soon after the accounts
    /// were registered loses them and the members are refused (`not-authorized`) for good.
    /// Tests whose subject is the fabric, not the server's durability, call this.
    pub fn restore_accounts(&self) -> anyhow::Result<usize> {
        let (users, password) = self
            .accounts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let addr = self.c2s_addr();
        let mut lost = Vec::new();
        for user in &users {
            if !raw_xmpp::sasl_plain_login(addr, DOMAIN, user, &password, Duration::from_secs(10))
                .with_context(|| format!("log in as {user}@{DOMAIN} on {}", self.kind))?
            {
                lost.push(user.as_str());
            }
        }
        if !lost.is_empty() {
            eprintln!(
                "{}: the crash lost the accounts {lost:?}; registering them again",
                self.kind
            );
            self.register_users(&lost, &password)?;
        }
        Ok(lost.len())
    }

    fn register_users(&self, users: &[&str], password: &str) -> anyhow::Result<()> {
        {
            let mut accounts = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
            for u in users {
                if !accounts.0.iter().any(|a| a == u) {
                    accounts.0.push(u.to_string());
                }
            }
            accounts.1 = password.to_string();
        }
        let addr = self.c2s_addr();
        std::thread::scope(|scope| {
            let handles: Vec<_> = users
                .iter()
                .map(|user| {
                    scope.spawn(move || {
                        raw_xmpp::register_user(
                            addr,
                            DOMAIN,
                            user,
                            password,
                            Duration::from_secs(10),
                        )
                        .with_context(|| format!("register {user}@{DOMAIN} on {}", self.kind))
                    })
                })
                .collect();
            for handle in handles {
                handle
                    .join()
                    .map_err(|_| anyhow!("registration thread panicked"))??;
            }
            Ok(())
        })
    }
}

impl Drop for XmppServer {
    fn drop(&mut self) {
        if self.stop().is_err() {
            let _ = self.kill();
        }
    }
}

fn check_installed(kind: ServerKind) -> anyhow::Result<()> {
    require_binary("openssl")?;
    match kind {
        ServerKind::Prosody => {
            require_binary("prosody")?;
        }
        ServerKind::Ejabberd => {
            require_binary("erl")?;
            require_binary("ejabberdctl")?;
            ejabberd_erl_libs()?;
        }
    }
    Ok(())
}

/// The `ERL_LIBS` directory holding `ejabberd-<version>/`: what `/usr/sbin/ejabberdctl` sets,
/// or the first matching directory under /usr/lib.
fn ejabberd_erl_libs() -> anyhow::Result<PathBuf> {
    let has_ejabberd = |dir: &Path| {
        fs::read_dir(dir).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("ejabberd-"))
        })
    };
    if let Some(ctl) = crate::find_binary("ejabberdctl") {
        if let Ok(script) = fs::read_to_string(ctl) {
            for line in script.lines() {
                if let Some(value) = line.trim().strip_prefix("ERL_LIBS=") {
                    let dir = PathBuf::from(value.trim_matches(|c| c == '\'' || c == '"'));
                    if has_ejabberd(&dir) {
                        return Ok(dir);
                    }
                }
            }
        }
    }
    let mut candidates = vec![PathBuf::from("/usr/lib/erlang/lib")];
    if let Ok(entries) = fs::read_dir("/usr/lib") {
        candidates.extend(entries.flatten().map(|e| e.path()));
    }
    candidates
        .into_iter()
        .find(|dir| has_ejabberd(dir))
        .with_context(|| format!("ejabberd's Erlang libraries not found: {INSTALL_HINT}"))
}

/// A small CA and a server certificate for fabric.test signed by it (a self-signed leaf would
/// be rejected by webpki/rustls as "CA used as end entity"). Writes `ca.crt`,
/// `fabric.test.{crt,key,pem}` (pem = key + cert, for ejabberd) into `dir`; returns the CA path.
fn generate_certs(dir: &Path) -> anyhow::Result<PathBuf> {
    fs::create_dir_all(dir)?;
    let openssl = require_binary("openssl")?;
    let run = |args: &[&str]| -> anyhow::Result<()> {
        let out = Command::new(&openssl)
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .context("run openssl")?;
        if !out.status.success() {
            bail!(
                "openssl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-days",
            "3650",
            "-sha256",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-subj",
            "/CN=callfabric test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    ]
    .concat())?;
    run(&[
        &["req", "-new"][..],
        &ec,
        &[
            "-keyout",
            "fabric.test.key",
            "-out",
            "fabric.test.csr",
            "-subj",
            "/CN=fabric.test",
        ],
    ]
    .concat())?;
    fs::write(
        dir.join("leaf.ext"),
        "basicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth,clientAuth\n\
         subjectAltName=DNS:fabric.test,DNS:*.fabric.test,DNS:localhost,IP:127.0.0.1,IP:::1\n",
    )?;
    let serial = format!("0x{}", random_hex(8));
    run(&[
        "x509",
        "-req",
        "-in",
        "fabric.test.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-set_serial",
        &serial,
        "-days",
        "3650",
        "-sha256",
        "-extfile",
        "leaf.ext",
        "-out",
        "fabric.test.crt",
    ])?;
    let key = fs::read_to_string(dir.join("fabric.test.key"))?;
    let crt = fs::read_to_string(dir.join("fabric.test.crt"))?;
    // ejabberd wants key and certificate in one file (and `ca_file: ca.crt` to trust it)
    let pem = dir.join("fabric.test.pem");
    fs::write(&pem, format!("{key}{crt}"))?;
    fs::set_permissions(&pem, fs::Permissions::from_mode(0o600))?;
    Ok(dir.join("ca.crt"))
}

/// `2 * bytes` hex digits from /dev/urandom (falls back to time and PID).
pub(crate) fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    let ok = fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut buf))
        .is_ok();
    if !ok {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let seed = nanos ^ (u128::from(std::process::id()) << 64);
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (seed >> ((i % 16) * 8)) as u8;
        }
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

//! Helpers shared by the fabric scenarios (`fabric_restart.rs`, `fabric_hostile.rs`): private
//! Prosody/ejabberd instances from `integration`, buses, the `callfabric` binary, polling waits.
#![allow(dead_code)]

use integration::{python, repo_root, ServerKind, XmppServer};
use statebus::{Bus, DeviceState, Eid, TlsMode, XmppBus, XmppBusConfig};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const PASSWORD: &str = "secret";
pub const USERS: &[&str] = &["gw-a", "gw-b", "acd-1", "watcher", "asterisk", "mallory"];
pub const T: Duration = Duration::from_secs(30);

pub fn eid(n: u8) -> Eid {
    Eid([0x02, 0, 0, 0, 0, n])
}

pub fn server(kind: ServerKind) -> XmppServer {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("CALLFABRIC_LOG"))
        .with_test_writer()
        .try_init();
    XmppServer::start(kind, USERS, PASSWORD).unwrap_or_else(|e| panic!("starting {kind:?}: {e:#}"))
}

/// The fabric's members (mallory is an account on the server, not a member).
pub fn fabric_jids(s: &XmppServer) -> Vec<String> {
    USERS
        .iter()
        .filter(|u| **u != "mallory")
        .map(|u| format!("{u}@{}", s.domain()))
        .collect()
}

pub fn config(s: &XmppServer, user: &str, eid: Eid) -> XmppBusConfig {
    let mut c = XmppBusConfig::new(
        &format!("{user}@{}", s.domain()),
        PASSWORD,
        s.pubsub_service(),
        eid,
    );
    c.server = Some(s.c2s_addr().to_string());
    c.tls = TlsMode::Plaintext;
    c.heartbeat_interval = Duration::from_millis(500);
    c.liveness_ttl = Duration::from_secs(3);
    // Generous: under load a fetch of thousands of items takes seconds, and a timed-out fetch
    // leaves the bus online with a partial cache.
    c.iq_timeout = Duration::from_secs(20);
    c.keepalive = Duration::from_secs(10);
    c.reconnect_max = Duration::from_secs(2);
    c.site = user.into();
    c.fabric_jids = fabric_jids(s);
    c
}

pub async fn bus(s: &XmppServer, user: &str, eid: Eid) -> XmppBus {
    bus_with(s, user, eid, |_| {}).await
}

/// [`bus`] with a config tweak.
pub async fn bus_with(
    s: &XmppServer,
    user: &str,
    eid: Eid,
    tweak: impl FnOnce(&mut XmppBusConfig),
) -> XmppBus {
    let mut c = config(s, user, eid);
    tweak(&mut c);
    let b = XmppBus::start(c).expect("bus config");
    assert!(
        b.wait_online(T).await,
        "{user} never came online on {:?}:\n{}",
        s.kind(),
        s.log_tail()
    );
    b
}

/// Wait until `f` holds, polling; panics with `what` on timeout.
pub async fn until(what: impl std::fmt::Display, mut f: impl FnMut() -> bool) {
    let t0 = tokio::time::Instant::now();
    while !f() {
        assert!(t0.elapsed() < T, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn until_state(b: &XmppBus, key: &str, want: DeviceState) {
    let t0 = tokio::time::Instant::now();
    while b.device_state(key) != Some(want) {
        assert!(
            t0.elapsed() < T,
            "timed out waiting for {key} = {want} (now {:?}, detail {:?})",
            b.device_state(key),
            b.device_detail(key)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A `statebus` config file for the binary.
pub fn write_config(s: &XmppServer, dir: &Path, user: &str, eid: &str, extra: &str) -> PathBuf {
    let text = format!(
        "[node]\nname = \"{user}\"\nsite = \"{user}\"\nrole = \"gateway\"\neid = \"{eid}\"\n\n[statebus]\nbackend = \"xmpp\"\n\
         jid = \"{user}@{}\"\npassword = \"{PASSWORD}\"\nserver = \"{}\"\npubsub_service = \"{}\"\ntls = \"plaintext\"\n\
         heartbeat_interval_secs = 0.5\nliveness_ttl_secs = 3\nfabric_jids = {:?}\n{extra}",
        s.domain(),
        s.c2s_addr(),
        s.pubsub_service(),
        fabric_jids(s)
    );
    let p = dir.join(format!("{user}.toml"));
    std::fs::write(&p, text).expect("write config");
    p
}

pub fn callfabric() -> Command {
    Command::new(env!("CARGO_BIN_EXE_callfabric"))
}

/// `callfabric statebus publish --hold` with the given devices; killed on drop.
pub struct Member(pub Child, pub PathBuf);

impl Member {
    pub fn publish(cfg: &Path, devices: &[&str]) -> Member {
        let mut c = callfabric();
        c.args(["statebus", "publish", "--config"]).arg(cfg);
        for d in devices {
            c.args(["--device", d]);
        }
        let log = cfg.with_extension("log");
        let err = std::fs::File::create(&log).expect("member log");
        c.arg("--hold").stdout(Stdio::null()).stderr(err);
        Member(c.spawn().expect("spawn callfabric"), log)
    }

    /// Still running (a stack overflow or panic would have ended it).
    pub fn alive(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }

    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// The member's log (stderr) so far.
    pub fn stderr(&mut self) -> String {
        std::fs::read_to_string(&self.1).unwrap_or_default()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Run the slixmpp Asterisk stand-in (`tests/peers/asterisk_peer.py`) once.
pub fn asterisk_peer(s: &XmppServer, action: &str, args: &[&str]) -> String {
    let py = python().expect("python with slixmpp (run scripts/install-peers.sh)");
    let out = Command::new(py)
        .arg(repo_root().join("tests/peers/asterisk_peer.py"))
        .args([
            "127.0.0.1".to_string(),
            s.c2s_addr().port().to_string(),
            format!("asterisk@{}/astvoip1", s.domain()),
            PASSWORD.to_string(),
            s.pubsub_service().to_string(),
            action.to_string(),
        ])
        .args(args)
        .output()
        .expect("run slixmpp peer");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "slixmpp {action} failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

pub fn kinds() -> [ServerKind; 2] {
    [ServerKind::Prosody, ServerKind::Ejabberd]
}

/// Publish device states as an Asterisk box (`tests/peers/asterisk_publish.py`, slixmpp):
/// `Ok` when every publish was accepted, `Err(output)` when one was refused.
pub fn asterisk_publish(s: &XmppServer, pairs: &[&str]) -> Result<(), String> {
    let py = python().expect("python with slixmpp (run scripts/install-peers.sh)");
    let out = Command::new(py)
        .arg(repo_root().join("tests/peers/asterisk_publish.py"))
        .args([
            "127.0.0.1".to_string(),
            s.c2s_addr().port().to_string(),
            format!("asterisk@{}/astvoip1", s.domain()),
            PASSWORD.to_string(),
            s.pubsub_service().to_string(),
        ])
        .args(pairs)
        .output()
        .expect("run slixmpp publisher");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The Asterisk stand-in's EID.
pub fn asterisk_eid() -> Eid {
    "00:11:22:33:44:55".parse().expect("eid")
}

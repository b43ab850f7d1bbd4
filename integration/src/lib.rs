//! Test harness for callfabric's multi-site lab: real third-party peers (Prosody, ejabberd, ...)
//! started as private, loopback-only processes on free ports.
//!
//! Everything here is blocking `std` code (no async runtime needed). The peers are installed by
//! `scripts/install-peers.sh`; when one is missing, the error says so.
//!
//! ```no_run
//! use integration::{ServerKind, XmppServer};
//! let mut server = XmppServer::start(ServerKind::Prosody, &["gw-a", "acd-1"], "secret")?;
//! println!("c2s on {}", server.c2s_addr());
//! server.stop()?;
//! # Ok::<(), anyhow::Error>(())
//! ```

/// The allocator of the `callfabric` binary, so that the benchmarks (which run the gateway and
/// the ACD in-process) measure what ships. The `system-alloc` feature leaves the system's
/// malloc in place, for heap profilers that hook it (`heaptrack`, valgrind's massif).
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod baresip;
pub mod bench;
pub mod certs;
pub mod chromium;
pub mod clock;
pub mod dns;
pub mod ejabberd_cluster;
pub mod gateway;
pub mod phones;
pub mod postgres;
pub mod raw_xmpp;
pub mod rtpengine;
pub mod sipp;
pub mod site;
pub mod wanlab;
pub mod xmpp_server;

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

pub use xmpp_server::{ServerKind, XmppServer};

/// The command that installs every peer the harness uses.
pub const INSTALL_HINT: &str = "run `scripts/install-peers.sh` (as root) to install the test peers";

/// Root of the callfabric repository (the parent of the `integration` crate).
pub fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Ports handed out by this process, so that two servers started in parallel by the same test
/// binary never get the same port (the OS may hand out a just-released port twice).
fn handed_out() -> &'static Mutex<HashSet<(bool, u16)>> {
    static PORTS: OnceLock<Mutex<HashSet<(bool, u16)>>> = OnceLock::new();
    PORTS.get_or_init(|| Mutex::new(HashSet::new()))
}

fn claim(tcp: bool, port: u16) -> bool {
    let mut set = match handed_out().lock() {
        Ok(set) => set,
        Err(poisoned) => poisoned.into_inner(),
    };
    set.insert((tcp, port))
}

/// A TCP port on 127.0.0.1 that was free a moment ago and that this process has not handed out
/// before.
pub fn free_tcp_port() -> u16 {
    loop {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("cannot bind an ephemeral TCP port on 127.0.0.1");
        if claim(true, port) {
            return port;
        }
    }
}

/// A UDP port on 127.0.0.1 that was free a moment ago and that this process has not handed out
/// before.
pub fn free_udp_port() -> u16 {
    loop {
        let port = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|s| s.local_addr())
            .map(|a| a.port())
            .expect("cannot bind an ephemeral UDP port on 127.0.0.1");
        if claim(false, port) {
            return port;
        }
    }
}

/// A free UDP port `p` for a SIPp `-mp`: SIPp binds `p..p+4` (audio and video, RTP and RTCP)
/// and exits at once when one of them is taken, so all four are checked free (and claimed) here,
/// not only the first (a caller whose `p+1` was an ACD's RTP port never dialled, seen in CI).
pub fn free_media_port() -> u16 {
    loop {
        let p = free_udp_port();
        if p > 65530 {
            continue;
        }
        let rest_free = (p + 1..p + 4)
            .all(|q| UdpSocket::bind((Ipv4Addr::LOCALHOST, q)).is_ok() && claim(false, q));
        if rest_free {
            return p;
        }
    }
}

/// [`free_media_port`] whose range stays clear of `sip_port`.
pub fn free_media_port_beside(sip_port: u16) -> u16 {
    loop {
        let p = free_media_port();
        if !(p..p.saturating_add(4)).contains(&sip_port) {
            return p;
        }
    }
}

/// Polls `f` every 10 ms until it returns true; errors after `timeout`, naming `what`.
pub fn wait_until(
    timeout: Duration,
    what: &str,
    mut f: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        if f() {
            return Ok(());
        }
        if start.elapsed() >= timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The Python of the peers venv (with slixmpp): `$CALLFABRIC_VENV/bin/python`, or
/// `<repo>/target/peers-venv/bin/python`.
pub fn python() -> anyhow::Result<PathBuf> {
    let venv = match std::env::var_os("CALLFABRIC_VENV") {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => repo_root().join("target").join("peers-venv"),
    };
    let python = venv.join("bin").join("python");
    if !python.exists() {
        bail!("no Python venv at {}: {INSTALL_HINT}", venv.display());
    }
    let status = std::process::Command::new(&python)
        .args(["-c", "import slixmpp"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .with_context(|| format!("cannot run {}", python.display()))?;
    if !status.success() {
        bail!(
            "slixmpp is not installed in {}: {INSTALL_HINT}",
            venv.display()
        );
    }
    Ok(python)
}

/// Finds an executable by name in `PATH`, then in the sbin/bin directories (`PATH` of a
/// non-root user often lacks `/usr/sbin`).
pub fn find_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(
            [
                "/usr/local/sbin",
                "/usr/local/bin",
                "/usr/sbin",
                "/usr/bin",
                "/sbin",
                "/bin",
            ]
            .map(PathBuf::from),
        )
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// [`find_binary`], or an error telling to run the installer.
pub fn require_binary(name: &str) -> anyhow::Result<PathBuf> {
    find_binary(name).with_context(|| format!("`{name}` not found: {INSTALL_HINT}"))
}

/// Last `n` lines of a text file ("" when it doesn't exist).
pub fn tail_file(path: &Path, n: usize) -> String {
    let Ok(bytes) = std::fs::read(path) else {
        return String::new();
    };
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

//! A private PostgreSQL server for tests: `initdb` into a temp dir, `postgres` on a free
//! loopback port, run as the `postgres` system user (the server refuses root), stopped by PID.

use anyhow::{bail, Context as _, Result};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running (or stopped) private server.
pub struct Postgres {
    child: Option<Child>,
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// Its TCP port on 127.0.0.1.
    pub port: u16,
}

fn bindir() -> Result<PathBuf> {
    let root = std::path::Path::new("/usr/lib/postgresql");
    let mut versions: Vec<_> = std::fs::read_dir(root)
        .with_context(|| {
            format!(
                "no PostgreSQL server under {}; {}",
                root.display(),
                crate::INSTALL_HINT
            )
        })?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("postgres").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .with_context(|| format!("no postgres binary; {}", crate::INSTALL_HINT))
}

fn as_postgres(bin: &std::path::Path) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
        .arg(bin);
    c
}

impl Postgres {
    /// `initdb` (trust auth, user `postgres`) and start.
    pub fn start() -> Result<Postgres> {
        let bin = bindir()?;
        let dir = tempfile::Builder::new()
            .prefix("callfabric-pg-")
            .tempdir()?;
        let st = Command::new("chown")
            .arg("postgres:postgres")
            .arg(dir.path())
            .status()?;
        if !st.success() {
            bail!("chown postgres {}", dir.path().display());
        }
        let out = as_postgres(&bin.join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "-D"])
            .arg(dir.path().join("data"))
            .output()
            .context("initdb")?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let mut pg = Postgres {
            child: None,
            dir,
            bin,
            port: crate::free_tcp_port(),
        };
        pg.start_again()?;
        Ok(pg)
    }

    /// Start the same cluster again (after [`Postgres::stop`]), same port.
    pub fn start_again(&mut self) -> Result<()> {
        let log = std::fs::File::create(self.dir.path().join("postgres.log"))?;
        let child = as_postgres(&self.bin.join("postgres"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args([
                "-p",
                &self.port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
            ])
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.dir.path().display()
            ))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting postgres")?;
        self.child = Some(child);
        let t0 = Instant::now();
        loop {
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ready {
                return Ok(());
            }
            if t0.elapsed() > Duration::from_secs(30) {
                bail!("postgres not ready: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The server log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    /// Fast shutdown (SIGINT), waiting until the port is closed.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-INT", &c.id().to_string()])
                .status();
            let t0 = Instant::now();
            while c.try_wait()?.is_none() {
                if t0.elapsed() > Duration::from_secs(20) {
                    let _ = c.kill();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.wait();
        }
        let t0 = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            && t0.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

//! A private DNS server for tests: `dnsmasq` on a free loopback UDP/TCP port, serving only the
//! records given on its command line (`--no-resolv --no-hosts`, no config file, no upstream),
//! logging its queries into its own directory. Killed on drop.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::{free_udp_port, require_binary, tail_file};

/// A running dnsmasq.
pub struct DnsServer {
    child: Child,
    dir: tempfile::TempDir,
    /// Where it answers (UDP and TCP).
    pub addr: SocketAddr,
}

impl DnsServer {
    /// Starts dnsmasq on `127.0.0.1:<free port>` with `records`: dnsmasq options such as
    /// `--srv-host=_sip._udp.example.test,sip1.example.test,5070,10,100`,
    /// `--host-record=sip1.example.test,127.0.0.1` or
    /// `--naptr-record=example.test,10,50,s,SIP+D2U,,_sip._udp.example.test`. Every answer
    /// has TTL `ttl_secs` (`--local-ttl`). Waits until it answers on its port.
    pub fn start(records: &[String], ttl_secs: u32) -> anyhow::Result<DnsServer> {
        let bin = require_binary("dnsmasq")?;
        let dir = tempfile::Builder::new().prefix("dnsmasq-").tempdir()?;
        let port = free_udp_port();
        let log = dir.path().join("dnsmasq.log");
        let mut cmd = Command::new(bin);
        cmd.arg("--keep-in-foreground")
            .arg("--conf-file=/dev/null")
            .arg("--no-resolv")
            .arg("--no-hosts")
            .arg("--no-poll")
            .arg("--bind-interfaces")
            .arg("--listen-address=127.0.0.1")
            .arg(format!("--port={port}"))
            .arg(format!("--local-ttl={ttl_secs}"))
            .arg(format!(
                "--pid-file={}",
                dir.path().join("dnsmasq.pid").display()
            ))
            .arg(format!("--log-facility={}", log.display()))
            .arg("--log-queries")
            .args(records)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.path().join("stderr.log"))
                    .context("dnsmasq stderr file")?,
            ));
        let child = cmd.spawn().context("cannot start dnsmasq")?;
        let mut server = DnsServer {
            child,
            dir,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        server.wait_ready(Duration::from_secs(10))?;
        Ok(server)
    }

    /// Polls until dnsmasq answers a query on its port (any answer).
    fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0")?;
        sock.set_read_timeout(Some(Duration::from_millis(100)))?;
        // A query for `ready.test. A`, id 0x4242, RD.
        let mut q = vec![0x42, 0x42, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in ["ready", "test"] {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 512];
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("dnsmasq exited ({status}): {}", self.diag());
            }
            let _ = sock.send_to(&q, self.addr);
            if let Ok((n, _)) = sock.recv_from(&mut buf) {
                if n >= 2 && buf[..2] == [0x42, 0x42] {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("dnsmasq does not answer on {}: {}", self.addr, self.diag());
            }
        }
    }

    /// Its directory (logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The end of its query log and stderr.
    pub fn diag(&self) -> String {
        format!(
            "dnsmasq log:\n{}\nstderr:\n{}",
            tail_file(&self.dir.path().join("dnsmasq.log"), 40),
            tail_file(&self.dir.path().join("stderr.log"), 20)
        )
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! The `[tls]` section and the stream-connection settings of `[gateway]` (issue 12): TLS
//! listeners, certificate, key and CA files (relative to the config file), their reload, and
//! the bounds on TCP/TLS connections.

use anyhow::{anyhow, Result};
use serde::Deserialize;
use std::path::Path;
use std::time::Duration;

use super::{GatewaySection, Loaded};

/// `[tls]`: the identity of this node's SIP over TLS, and the roots its TLS peers chain to.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// PEM certificate chain, leaf first.
    pub cert: String,
    /// PEM private key.
    pub key: String,
    /// PEM CA certificates that a TLS trunk's certificate must chain to (without it, TLS
    /// trunks are refused).
    pub ca: Option<String>,
    /// How often the files are checked for changes (default 5; 0: only on SIGHUP).
    pub reload_secs: Option<f64>,
}

impl Loaded {
    fn file(&self, key: &str, p: &str) -> Result<std::path::PathBuf> {
        let path = self.path.parent().unwrap_or(Path::new(".")).join(p);
        if !path.is_file() {
            return Err(anyhow!(
                "{}: {} is not a readable file",
                self.at("tls", key),
                path.display()
            ));
        }
        Ok(path)
    }

    /// The gateway's TLS listeners and files, and its connection bounds.
    pub(super) fn streams(&self, g: &GatewaySection) -> Result<gateway::transport::StreamConfig> {
        let mut s = gateway::transport::StreamConfig::default();
        for a in &g.tls {
            // `ip` alone: the SIPS default port, 5061.
            let addr = a
                .parse::<std::net::SocketAddr>()
                .or_else(|_| {
                    a.parse::<std::net::IpAddr>()
                        .map(|ip| std::net::SocketAddr::new(ip, 5061))
                })
                .map_err(|_| {
                    anyhow!(
                        "{}: {a:?} is not an address like 127.0.0.1:5061",
                        self.at("gateway", "tls")
                    )
                })?;
            s.tls.push(addr);
        }
        let wants_tls = !s.tls.is_empty()
            || g.trunk
                .iter()
                .any(|t| t.transport.as_deref() == Some("tls"));
        s.tls_files = match &self.config.tls {
            None if wants_tls => {
                return Err(anyhow!(
                    "{}: TLS listeners or TLS trunks need a [tls] section (cert, key)",
                    self.at("gateway", "tls")
                ))
            }
            None => None,
            Some(t) => Some(gateway::transport::TlsConfig {
                cert: self.file("cert", &t.cert)?,
                key: self.file("key", &t.key)?,
                ca: t.ca.as_deref().map(|c| self.file("ca", c)).transpose()?,
                reload_interval: match t.reload_secs {
                    Some(0.0) => Duration::ZERO,
                    v => self.duration("tls", "reload_secs", v, Duration::from_secs(5))?,
                },
            }),
        };
        s.idle_timeout = self.duration(
            "gateway",
            "idle_timeout_secs",
            g.idle_timeout_secs,
            s.idle_timeout,
        )?;
        s.header_timeout = self.duration(
            "gateway",
            "header_timeout_secs",
            g.header_timeout_secs,
            s.header_timeout,
        )?;
        let count = |v: Option<usize>, key: &str, d: usize| -> Result<usize> {
            match v {
                None => Ok(d),
                Some(n) if n >= 1 => Ok(n),
                Some(n) => Err(anyhow!(
                    "{}: {key} = {n}: must be at least 1",
                    self.at("gateway", key)
                )),
            }
        };
        s.max_connections = count(g.max_connections, "max_connections", s.max_connections)?;
        s.max_connections_per_source = count(
            g.max_connections_per_source,
            "max_connections_per_source",
            s.max_connections_per_source,
        )?;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::super::Loaded;
    use std::path::Path;
    use std::time::Duration;

    const BASE: &str = "[node]\nname = \"a\"\n[gateway]\nudp = [\"127.0.0.1:5060\"]\nrealm = \"r\"\ndatabase = \"sqlite://x.db\"\n";

    fn load_in(dir: &Path, text: &str) -> Loaded {
        let p = dir.join("site.toml");
        std::fs::write(&p, text).expect("write");
        Loaded::read(&p).expect("parses")
    }

    fn err(dir: &Path, text: &str) -> String {
        match load_in(dir, text).gateway() {
            Ok(_) => panic!("an error expected for:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn tls_and_connection_bounds_are_read_and_errors_name_the_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("cert.pem"), "x").expect("write");
        std::fs::write(dir.path().join("key.pem"), "x").expect("write");
        let ok = format!(
            "{BASE}tls = [\"127.0.0.1\"]\nheader_timeout_secs = 2\nmax_connections_per_source = 5\n\
             [tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n"
        );
        let g = load_in(dir.path(), &ok).gateway().expect("valid");
        assert_eq!(g.streams.tls, vec!["127.0.0.1:5061".parse().expect("addr")]);
        assert_eq!(g.streams.header_timeout, Duration::from_secs(2));
        assert_eq!(g.streams.max_connections_per_source, 5);
        let files = g.streams.tls_files.expect("files");
        assert_eq!(files.cert, dir.path().join("cert.pem"));
        assert_eq!(files.reload_interval, Duration::from_secs(5));
        // A TLS listener without [tls]: line 7 (tls = …).
        let e = err(dir.path(), &format!("{BASE}tls = [\"127.0.0.1:5061\"]\n"));
        assert!(e.contains("site.toml:7:") && e.contains("[tls]"), "{e}");
        // A missing key file: its line (11) and path.
        let e = err(
            dir.path(),
            &format!(
                "{BASE}tls = [\"127.0.0.1\"]\n[tls]\ncert = \"cert.pem\"\nkey = \"nokey.pem\"\n"
            ),
        );
        assert!(
            e.contains("site.toml:10:") && e.contains("nokey.pem"),
            "{e}"
        );
        // A cap of 0, and a bad listener address.
        let e = err(dir.path(), &format!("{BASE}max_connections = 0\n"));
        assert!(
            e.contains("site.toml:7:") && e.contains("max_connections"),
            "{e}"
        );
        let e = err(dir.path(), &format!("{BASE}tls = [\"here\"]\n"));
        assert!(e.contains("site.toml:7:") && e.contains("\"here\""), "{e}");
        // A trunk transport that is neither udp nor tls.
        let e = err(
            dir.path(),
            &format!("{BASE}[[gateway.trunk]]\nname = \"t\"\naddress = \"192.0.2.1:5061\"\ntransport = \"sctp\"\n"),
        );
        assert!(e.contains("site.toml:10:") && e.contains("sctp"), "{e}");
    }
}

//! SIP over TLS (RFC 3261 §26.3.1, RFC 5246/8446) with rustls: the server identity (certificate
//! chain and key from PEM files), the roots a client side verifies its peer against, and their
//! reload while running ([`TlsState::reload`]: on demand, e.g. on SIGHUP, and when a file's
//! modification time changes). A reload that fails keeps the previous configuration.
//!
//! A TLS connection is framed exactly like a TCP one (`tcp.rs`, [`sip_core::framing`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Where the TLS identity and trust come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM file with our certificate chain (leaf first).
    pub cert: PathBuf,
    /// PEM file with our private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM file with the CA certificates a peer we connect to must chain to. Without it the
    /// client side refuses to connect (no peer is ever trusted blindly).
    pub ca: Option<PathBuf>,
    /// How often the files' modification times are checked for a reload (zero: never).
    pub reload_interval: Duration,
}

/// Why the TLS configuration could not be (re)loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file holds no usable PEM item of the expected kind.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        what: String,
    },
    /// rustls refused the certificate/key pair or the roots.
    #[error("{path}: {source}")]
    Rustls {
        /// The file concerned.
        path: PathBuf,
        /// Why.
        source: rustls::Error,
    },
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            what: format!("bad PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            what: "no CERTIFICATE in the file".into(),
        });
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::Pem {
        path: path.to_owned(),
        what: format!("no usable PRIVATE KEY: {e}"),
    })
}

/// The loaded configuration: an acceptor, and a connector when roots are configured.
#[derive(Clone)]
struct Loaded {
    acceptor: TlsAcceptor,
    connector: Option<TlsConnector>,
    stamps: Vec<Option<SystemTime>>,
}

fn stamps(cfg: &TlsConfig) -> Vec<Option<SystemTime>> {
    [Some(&cfg.cert), Some(&cfg.key), cfg.ca.as_ref()]
        .into_iter()
        .flatten()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

fn load(cfg: &TlsConfig) -> Result<Loaded, TlsError> {
    let stamps = stamps(cfg);
    let chain = certs(&cfg.cert)?;
    let key = key(&cfg.key)?;
    let server = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls {
            path: cfg.cert.clone(),
            source,
        })?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|source| TlsError::Rustls {
            path: cfg.key.clone(),
            source,
        })?;
    let connector = match &cfg.ca {
        None => None,
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs(ca)? {
                roots.add(c).map_err(|source| TlsError::Rustls {
                    path: ca.clone(),
                    source,
                })?;
            }
            let client = rustls::ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(|source| TlsError::Rustls {
                    path: ca.clone(),
                    source,
                })?
                .with_root_certificates(roots)
                .with_no_client_auth();
            Some(TlsConnector::from(Arc::new(client)))
        }
    };
    Ok(Loaded {
        acceptor: TlsAcceptor::from(Arc::new(server)),
        connector,
        stamps,
    })
}

/// The live TLS configuration of a [`crate::Transports`], reloadable.
pub struct TlsState {
    config: TlsConfig,
    loaded: RwLock<Loaded>,
}

impl std::fmt::Debug for TlsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsState")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl TlsState {
    /// Loads the files (an error names the file and what is wrong).
    pub fn new(config: TlsConfig) -> Result<TlsState, TlsError> {
        let loaded = load(&config)?;
        Ok(TlsState {
            config,
            loaded: RwLock::new(loaded),
        })
    }

    fn current(&self) -> Loaded {
        self.loaded
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reloads the files now; on error the previous configuration stays in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = load(&self.config)?;
        *self.loaded.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }

    /// Reloads if a file's modification time changed since the last load. `Ok(true)`: reloaded.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        if stamps(&self.config) == self.current().stamps {
            return Ok(false);
        }
        self.reload().map(|()| true)
    }

    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        self.current().acceptor
    }

    pub(crate) fn connector(&self) -> Option<TlsConnector> {
        self.current().connector
    }

    pub(crate) fn reload_interval(&self) -> Duration {
        self.config.reload_interval
    }
}

/// The name a peer's certificate is checked against: the configured one for that address,
/// else its IP address (the certificate then needs an IP SAN).
pub(crate) fn server_name(name: Option<&str>, peer: SocketAddr) -> ServerName<'static> {
    name.and_then(|n| ServerName::try_from(n.to_owned()).ok())
        .unwrap_or_else(|| ServerName::IpAddress(peer.ip().into()))
}

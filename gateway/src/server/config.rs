//! The gateway's configuration as the binary hands it over (the binary reads the file), and
//! the errors of starting it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::SpyConfig;
use crate::registrar::client::ClientCredentials;
use crate::registrar::digest::Algorithm;
use crate::transport;

/// Everything the gateway needs; built by the binary from its config file.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// UDP listeners.
    pub udp: Vec<SocketAddr>,
    /// TCP listeners.
    pub tcp: Vec<SocketAddr>,
    /// Digest realm (and the domain of the AORs).
    pub realm: String,
    /// Database URL (`sqlite://…` or `postgres://…`).
    pub database: String,
    /// Secret for nonces.
    pub secret: Vec<u8>,
    /// Registration expiry bounds.
    pub min_expires: u32,
    /// Default expiry.
    pub default_expires: u32,
    /// Maximum expiry.
    pub max_expires: u32,
    /// Most registered contacts per user (more are refused: 403 with a `Warning`).
    pub max_contacts: usize,
    /// Digest algorithms offered, in order.
    pub algorithms: Vec<Algorithm>,
    /// How often the device table is re-read.
    pub db_reload: Duration,
    /// How often registered contacts are qualified with OPTIONS.
    pub qualify_interval: Duration,
    /// SIP timer T1 (Timer F, the qualify timeout, is 64·T1).
    pub t1: Duration,
    /// Device-state key prefix, e.g. `PJSIP/`.
    pub device_prefix: String,
    /// This gateway's site (`[node] site`): of a device table shared by several sites it
    /// publishes the state of this site's devices only (see `DeviceRecord::of_site`); queue
    /// numbers go to an ACD node of the same site first.
    pub site: String,
    /// Node name (in CDR unique ids).
    pub node: String,
    /// Address the RTP relay binds and puts in SDP.
    pub rtp_ip: std::net::IpAddr,
    /// RTP port range (inclusive).
    pub rtp_ports: (u16, u16),
    /// Relay threads (1 to `media::MAX_RELAY_THREADS`); a call's two legs share one, calls
    /// spread over them. The binary's default: one per core (`media::relay_threads_per_core`).
    pub rtp_threads: usize,
    /// How the relay threads are scheduled (real-time priority, coalescing under load). The
    /// binary's default: ordinary priority (coalescing, for real-time threads only, 200 µs).
    pub rtp_scheduling: media::RelayScheduling,
    /// Register shards (issue 16): out-of-dialog REGISTERs are handled on this many tasks,
    /// by Call-ID (`server/shards.rs`); 1: none, the core handles everything. The binary's
    /// default: 1 (`[gateway] sip_shards`).
    pub sip_shards: usize,
    /// Hang up calls after this long without RTP.
    pub media_timeout: Option<Duration>,
    /// Timer C of every INVITE the B2BUA sends to a callee (RFC 3261 §16.6 step 11; default
    /// [`crate::b2bua::DEFAULT_TIMER_C`], 181 s).
    pub timer_c: Duration,
    /// Ring limit of calls to this site's devices (480 to the caller when it passes; None: none).
    pub ring_timeout: Option<Duration>,
    /// Session timers (RFC 4028): the Session-Expires we ask for and grant (None: off).
    pub session_expires: Option<Duration>,
    /// Session timers: our Min-SE (a smaller Session-Expires gets 422).
    pub session_min_se: Duration,
    /// Dialled number → device user.
    pub extensions: HashMap<String, String>,
    /// Static SIP peers.
    pub trunks: Vec<TrunkConfig>,
    /// Record every call's two legs to WAV files here (`call-<n>-caller.wav`,
    /// `call-<n>-callee.wav`: what each side sent), if set.
    pub record_dir: Option<std::path::PathBuf>,
    /// Music on hold for the held party (per queue, per holding device, default).
    pub moh: Arc<crate::media::moh::MohSources>,
    /// Name servers for trunks named by a domain (the binary reads the system's when the
    /// config names none).
    pub dns_servers: Vec<SocketAddr>,
    /// Authentication defence: failure counts, bans, challenge rate (`[security]`).
    pub security: crate::security::SecurityConfig,
    /// TLS listeners and files; bounds and timeouts of TCP/TLS connections.
    pub streams: transport::StreamConfig,
    /// Voicemail: where diverted calls and the retrieval code go (`server/voicemail.rs`).
    pub voicemail: Option<crate::voicemail::Routes>,

    /// The fabric secret: INVITEs signed with it are trusted, INVITEs to fabric members
    /// (queue numbers) are signed (`sip_core::trust`, `server/fabric.rs`).
    pub fabric: Option<Arc<crate::sip::trust::FabricKey>>,

    /// Overload control (issue 16): standing-queue target, Retry-After of its 503s.
    pub overload: sip_core::overload::Config,

    /// Supervisor listen / whisper / barge: feature codes and who may use them.
    pub spy: SpyConfig,
}

/// A static SIP peer: another site's gateway, a legacy PBX, an ITSP without registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrunkConfig {
    /// Name (logs).
    pub name: String,
    /// Where its calls go (UDP).
    pub address: SocketAddr,
    /// Dialled prefixes routed to it (longest wins).
    pub prefixes: Vec<String>,
    /// Leading digits stripped before sending.
    pub strip: usize,
    /// Further source IPs accepted as this trunk for inbound calls (no digest); a request
    /// from exactly `address` (IP and port) always is.
    pub inbound_from: Vec<std::net::IpAddr>,
    /// Our account at the peer (an ITSP): challenges to our INVITEs are answered with it.
    pub credentials: Option<ClientCredentials>,
    /// Keep a registration at the peer with these credentials: (domain of the AOR, expires).
    pub register: Option<(String, u32)>,
    /// The peer named by a domain (and a port, if given): located by RFC 3263 (NAPTR, SRV,
    /// A/AAAA; [`crate::dns`]) instead of `address`, which is then unused.
    pub domain: Option<(String, Option<u16>)>,
    /// Reach it over TLS (its certificate verified against the configured CA roots), for the
    /// name `Some(name)`, or for its IP address when `Some("")`; `None`: UDP.
    pub tls: Option<String>,
}

impl TrunkConfig {
    /// The peer's host as in its URIs: the domain (with its port, if given), else `address`.
    pub fn host(&self) -> String {
        match &self.domain {
            Some((name, Some(port))) => format!("{name}:{port}"),
            Some((name, None)) => name.clone(),
            None => self.address.to_string(),
        }
    }
}

/// Errors starting the gateway.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The database could not be opened.
    #[error(transparent)]
    Db(#[from] crate::devices::DbError),
    /// A listener could not be bound.
    #[error("binding SIP listeners: {0}")]
    Bind(#[from] std::io::Error),
    /// The RTP relay could not be set up.
    #[error("RTP relay: {0}")]
    Media(#[from] crate::media::MediaError),
    /// The DNS resolver for trunks could not be set up.
    #[error(transparent)]
    Dns(#[from] crate::dns::DnsError),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trunk(domain: Option<(&str, Option<u16>)>) -> TrunkConfig {
        TrunkConfig {
            name: "itsp".into(),
            address: "192.0.2.7:5080".parse().expect("address"),
            prefixes: vec!["0".into()],
            strip: 1,
            inbound_from: vec![],
            credentials: None,
            register: None,
            domain: domain.map(|(d, p)| (d.to_owned(), p)),
            tls: None,
        }
    }

    #[test]
    fn a_trunk_host_is_its_domain_with_port_else_its_address() {
        assert_eq!(trunk(None).host(), "192.0.2.7:5080");
        assert_eq!(
            trunk(Some(("sip.example.net", None))).host(),
            "sip.example.net"
        );
        assert_eq!(
            trunk(Some(("sip.example.net", Some(5061)))).host(),
            "sip.example.net:5061"
        );
    }
}

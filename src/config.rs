//! Configuration files. Only the binary reads files and the environment; libraries get typed
//! values. Every error names the file, the line and what is wrong.

use anyhow::{anyhow, Result};
use serde::Deserialize;
use statebus::wire::{AccessModel, NodeLayout};
use statebus::{Eid, TlsMode, XmppBusConfig};
use std::path::{Path, PathBuf};
use std::time::Duration;

mod fabric;
mod overload;

mod relay_threads;
mod security;
mod sip_shards;
pub use security::check_device_credentials;
mod spy;
mod streams;
pub use streams::TlsSection;
mod voicemail;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Identity of this process in the fabric.
    pub node: NodeSection,
    /// The state fabric.
    #[serde(default)]
    pub statebus: StatebusSection,
    /// The SIP gateway (`callfabric gateway`, `callfabric devices`).
    pub gateway: Option<GatewaySection>,
    /// The ACD node (`callfabric acd`; with `[gateway]`, `callfabric site`).
    pub acd: Option<AcdSection>,
    /// The status API (JSON over HTTP) of a gateway, ACD or site.
    pub http: Option<HttpSection>,
    /// Graceful shutdown on SIGINT/SIGTERM (gateway, ACD, site).
    #[serde(default)]
    pub shutdown: ShutdownSection,
    /// Authentication defence of the gateway (`config/security.rs`).
    pub security: Option<security::SecuritySection>,
    /// SIP over TLS: certificate, key, CA roots (`config/streams.rs`).
    pub tls: Option<TlsSection>,
    /// Agent presence for supervisors (an XEP-0114 component), in any mode with a bus.
    pub presence: Option<PresenceSection>,
    /// Voicemail (`config/voicemail.rs`).
    pub voicemail: Option<voicemail::VoicemailSection>,

    /// The secret fabric members sign their SIP to each other with (`config/fabric.rs`).
    pub fabric: Option<fabric::FabricSection>,

    /// Supervisors: listen / whisper / barge from the phone (`config/spy.rs`).
    pub supervisors: Option<spy::SupervisorsSection>,

    /// SIP overload control of the gateway (`config/overload.rs`).
    pub overload: Option<overload::OverloadSection>,
}

/// `[presence]`: agents and devices as JIDs of an external component.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresenceSection {
    /// The component's domain, e.g. `agents.example.com`.
    pub jid: String,
    /// Its shared secret on the server.
    pub secret: String,
    /// The server's component port, `host:port`.
    pub server: String,
    /// File keeping the supervisors' subscriptions across restarts.
    pub store: Option<PathBuf>,
    /// Device keys shown (`PJSIP/` by default): `PJSIP/1000` is `1000@<jid>`.
    pub device_prefix: Option<String>,
    /// Bare JIDs or domains whose users may subscribe (default: the component's parent domain).
    #[serde(default)]
    pub allow: Vec<String>,
    pub keepalive_secs: Option<f64>,
    pub reconnect_max_secs: Option<f64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ShutdownSection {
    /// Calls in progress may go on this long after the first signal (default 30; 0: end them
    /// at once). A second signal ends the drain at once.
    pub drain_secs: Option<f64>,
    /// `Retry-After` of the 503 that refuses new calls meanwhile (default 60).
    pub retry_after_secs: Option<i64>,
}

/// The validated `[shutdown]` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shutdown {
    pub drain: Duration,
    pub retry_after: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    /// `ip:port` to listen on (port 0: any free port, printed as `http ready <addr>`; default
    /// `127.0.0.1:8088`, loopback).
    pub listen: Option<String>,
    /// Bearer token of the admin API (`/admin/…`): `Authorization: Bearer <token>`. Without a
    /// token (here or in `token_file`) the admin API answers 403.
    pub token: Option<String>,
    /// A file holding the token (first line; relative to the config file).
    pub token_file: Option<String>,
    /// With `token_file`: when the file does not exist, a node (not the CLI) writes a fresh
    /// random token into it (mode 0600) as it starts; the CLI then reads it with `--config`.
    #[serde(default)]
    pub create_token_file: bool,
    /// The name of an environment variable holding the token (instead of `token`/`token_file`).
    pub token_env: Option<String>,
}

/// The validated `[http]` section.
#[derive(Debug, Clone)]
pub struct Http {
    pub listen: std::net::SocketAddr,
    pub token: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcdSection {
    /// SIP listener (UDP) the gateways send callers to.
    pub udp: String,
    /// Address of the ACD's media endpoint (default: the listener's IP).
    pub media_ip: Option<String>,
    /// RTP port range, `"30000-30999"`.
    pub rtp_ports: Option<String>,
    /// Relay threads (default: one per core).
    pub rtp_threads: Option<i64>,
    /// Relay threads at this `SCHED_FIFO` priority, 1 to 99 (default: ordinary priority).
    pub rtp_realtime_priority: Option<i64>,
    /// Real-time relay threads: under load one turn at most every this many µs, 0 to 1000
    /// (default 200; 0: none).
    pub rtp_coalesce_us: Option<i64>,
    pub t1_ms: Option<u64>,
    /// SIP OPTIONS keep-alives to each gateway: one every this many ms, pipelined (default
    /// 100)…
    pub keepalive_interval_ms: Option<u64>,
    /// …and the gateway is unreachable once nothing was heard from it for this many ms, or for
    /// interval + SRTT + 4·RTTVAR of the keep-alives if longer (default 700).
    pub keepalive_timeout_ms: Option<u64>,
    /// An offer without a provisional response after this many ms is given up and the next
    /// member tried; also the offer's deadline at the gateway (default 800).
    pub offer_provisional_timeout_ms: Option<u64>,
    /// queue_log file (relative to the config file).
    pub queue_log: Option<String>,
    /// Database for the queue_log table (`sqlite://…` relative to the config file, or
    /// `postgres://…`); in site mode the gateway's database by default.
    pub database: Option<String>,
    /// Music on hold: an 8 kHz mono WAV (PCM, µ-law or A-law); default: generated.
    pub music_on_hold: Option<String>,
    /// Directory of voice prompts (8 kHz mono WAVs named as Asterisk's sounds; the project
    /// ships `acd/prompts/en`), relative to the config file.
    pub prompts: Option<String>,
    /// Announce position (and hold time) to waiting callers every this many seconds.
    pub announce_frequency_secs: Option<f64>,
    /// Include the estimated hold time in announcements (default yes).
    pub announce_holdtime: Option<bool>,
    /// Hot-desking: dial `<login_code><queue number>` to log in (default `*45`)…
    pub login_code: Option<String>,
    /// …and `<logout_code><queue number>` to log out (default `*46`).
    pub logout_code: Option<String>,
    /// Agent self-service: dial `<pause_code><reason code>` to pause in all queues (default
    /// `*47`; `*47` alone: no reason)…
    pub pause_code: Option<String>,
    /// …and `<unpause_code>` to unpause (default `*48`).
    pub unpause_code: Option<String>,
    /// Reason code → pause reason (`"1" = "Lunch"`), written to queue_log PAUSE.
    #[serde(default)]
    pub pause_reasons: std::collections::BTreeMap<String, String>,
    /// Device name prefix of the gateways' users (default: `[gateway]`'s, else `PJSIP/`).
    pub device_prefix: Option<String>,
    /// Dialled number → queue name.
    #[serde(default)]
    pub numbers: std::collections::BTreeMap<String, String>,
    /// Gateways callers come from and offers go to (in `site` mode: the local gateway).
    #[serde(default)]
    pub gateway: Vec<AcdGatewaySection>,
    /// Queues (app_queue semantics).
    #[serde(default)]
    pub queue: Vec<acd::QueueConfig>,
    /// Penalty rules: name → `seconds,max[,min[,raise]]` lines.
    #[serde(default)]
    pub rules: std::collections::HashMap<String, Vec<String>>,
    #[serde(default)]
    pub shared_lastcall: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcdGatewaySection {
    pub name: String,
    pub address: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySection {
    #[serde(default)]
    pub udp: Vec<String>,
    #[serde(default)]
    pub tcp: Vec<String>,
    /// TLS listeners (`ip:port`, or `ip` for port 5061); need `[tls]`.
    #[serde(default)]
    pub tls: Vec<String>,
    /// A TCP/TLS connection without traffic for this long is closed (default 300).
    pub idle_timeout_secs: Option<f64>,
    /// A TCP/TLS connection whose message (or first message, or TLS handshake) is not complete
    /// this long after it began is closed (default 10).
    pub header_timeout_secs: Option<f64>,
    /// Inbound TCP + TLS connections at once (default 4096); more are closed at accept.
    pub max_connections: Option<usize>,
    /// Inbound TCP + TLS connections at once from one IP address (default 32).
    pub max_connections_per_source: Option<usize>,
    pub realm: String,
    /// `sqlite://file.db` (relative to the config file) or `postgres://…`.
    pub database: String,
    pub nonce_secret: Option<String>,
    pub min_expires: Option<u32>,
    pub default_expires: Option<u32>,
    pub max_expires: Option<u32>,
    /// Most registered contacts per user (Asterisk's `max_contacts`; default 10). All of a
    /// device's reachable contacts ring in parallel.
    pub max_contacts: Option<usize>,
    pub digest_algorithms: Option<Vec<String>>,
    pub db_reload_secs: Option<f64>,
    pub qualify_interval_secs: Option<f64>,
    pub t1_ms: Option<u64>,
    pub device_prefix: Option<String>,
    /// Address the RTP relay binds and announces in SDP (default: the first listener's IP).
    pub rtp_ip: Option<String>,
    /// RTP port range, `"20000-29999"`.
    pub rtp_ports: Option<String>,
    /// Relay threads (default: one per core): a call's two legs share one, calls spread.
    pub rtp_threads: Option<i64>,
    /// Relay threads at this `SCHED_FIFO` priority, 1 to 99 (default: ordinary priority).
    pub rtp_realtime_priority: Option<i64>,
    /// Real-time relay threads: under load one turn at most every this many µs, 0 to 1000
    /// (default 200; 0: none).
    pub rtp_coalesce_us: Option<i64>,
    /// Register shards of the SIP core (default: one per core; 1: unsharded).
    pub sip_shards: Option<i64>,
    /// Hang up a call after this long without RTP (0: never).
    pub media_timeout_secs: Option<f64>,
    /// Timer C of every INVITE the B2BUA sends to a callee, restarted by each provisional
    /// response (RFC 3261 §16.6 step 11; default 181: "greater than 3 minutes").
    pub timer_c_secs: Option<f64>,
    /// Ring limit of calls to this site's devices: unanswered after this long, the caller
    /// gets 480 (0 or absent: none).
    pub ring_timeout_secs: Option<f64>,
    /// Session timers (RFC 4028): Session-Expires asked of callees and granted to callers
    /// (0: no session timers; default 1800).
    pub session_expires_secs: Option<f64>,
    /// Session timers: our Min-SE (default 90, RFC 4028's floor; less only for tests).
    pub session_min_se_secs: Option<f64>,
    /// Extra dialled numbers → device user, e.g. `"100" = "1001"`.
    #[serde(default)]
    pub extensions: std::collections::BTreeMap<String, String>,
    /// Static SIP peers: other sites' gateways, a legacy PBX, an ITSP.
    #[serde(default)]
    pub trunk: Vec<TrunkSection>,
    /// Record every call's legs to WAV files in this directory (relative to the config file).
    pub record_dir: Option<String>,
    /// Music on hold for a held party: an 8 kHz mono WAV (PCM, µ-law or A-law) relative to the
    /// config file; default: generated.
    pub music_on_hold: Option<String>,
    /// Music on hold by holding device (user name → WAV).
    #[serde(default)]
    pub music_on_hold_devices: std::collections::BTreeMap<String, String>,
    /// Music on hold by queue (for calls an ACD offers with `X-CF-Offer: queue=…`).
    #[serde(default)]
    pub music_on_hold_queues: std::collections::BTreeMap<String, String>,
    /// Name servers (`ip:port`) for trunks named by a domain; default: the system's.
    #[serde(default)]
    pub dns_servers: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrunkSection {
    pub name: String,
    /// `ip:port` of the peer (UDP), or a domain (`itsp.example`: NAPTR/SRV/A, RFC 3263;
    /// `itsp.example:5080`: A/AAAA only).
    pub address: String,
    /// Dialled-number prefixes routed to this trunk (longest prefix wins).
    #[serde(default)]
    pub prefixes: Vec<String>,
    /// Strip this many leading digits before sending.
    #[serde(default)]
    pub strip: usize,
    /// Further source IPs trusted as this trunk for inbound calls (requests from exactly
    /// `address` always are).
    #[serde(default)]
    pub inbound_from: Vec<String>,
    /// Our account at the peer (an ITSP): digest user name and password, used to answer
    /// challenges to our INVITEs and to register.
    pub username: Option<String>,
    pub password: Option<String>,
    /// The password in a file (relative to the config file) or an environment variable.
    pub password_file: Option<String>,
    pub password_env: Option<String>,
    /// Keep a registration at the peer (needs username and password).
    #[serde(default)]
    pub register: bool,
    /// Registration expiry asked for (default 600 s).
    pub register_expires: Option<u32>,
    /// Domain of the registered AOR (default: the peer's address).
    pub domain: Option<String>,
    /// `"udp"` (default) or `"tls"`: calls go over TLS, the peer's certificate verified
    /// against `[tls] ca` for `tls_name` (default: its IP address).
    pub transport: Option<String>,
    /// The name the peer's certificate must carry (TLS).
    pub tls_name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// Node name, unique in the fabric (also the seed of the default EID).
    pub name: String,
    /// Site this node belongs to.
    #[serde(default = "default_site")]
    pub site: String,
    /// Role shown in heartbeats.
    #[serde(default = "default_role")]
    pub role: String,
    /// Explicit EID; by default derived from the host name and the node name (stable per node).
    pub eid: Option<Eid>,
    /// SIP address announced in heartbeats (gateways).
    pub sip_address: Option<String>,
}

fn default_site() -> String {
    "default".into()
}
fn default_role() -> String {
    "node".into()
}

#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// In-process bus (one site, no XMPP server).
    #[default]
    Local,
    /// XMPP PubSub.
    Xmpp,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StatebusSection {
    #[serde(default)]
    pub backend: Backend,
    pub jid: Option<String>,
    pub password: Option<String>,
    /// The password in a file (relative to the config file) or an environment variable.
    pub password_file: Option<String>,
    pub password_env: Option<String>,
    /// One server `host:port` (the single-address form).
    pub server: Option<String>,
    /// Several nodes of a clustered XMPP service, tried in order when one cannot be reached.
    #[serde(default)]
    pub servers: Vec<String>,
    /// Name servers (`ip:port`) for the SRV lookup of the JID's domain when neither `server`
    /// nor `servers` is set; default: the system's.
    #[serde(default)]
    pub dns_servers: Vec<String>,
    pub pubsub_service: Option<String>,
    #[serde(default)]
    pub tls: TlsMode,
    /// PEM file of extra CA certificates for STARTTLS (exported as SSL_CERT_FILE).
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub layout: NodeLayout,
    #[serde(default)]
    pub access_model: AccessModel,
    #[serde(default)]
    pub fabric_jids: Vec<String>,
    pub max_items: Option<u32>,
    pub heartbeat_interval_secs: Option<f64>,
    pub liveness_ttl_secs: Option<f64>,
    pub iq_timeout_secs: Option<f64>,
    pub keepalive_secs: Option<f64>,
    pub reconnect_initial_secs: Option<f64>,
    pub reconnect_max_secs: Option<f64>,
}

/// A loaded file: the parsed config plus what is needed to point at its lines.
pub struct Loaded {
    pub config: Config,
    pub path: PathBuf,
    text: String,
}

/// `host` or `host:port` where `host` is a domain name (letters, digits, `-`, dots between
/// non-empty labels, not all digits) and `port` is not 0.
fn parse_domain(s: &str) -> Option<(String, Option<u16>)> {
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h, Some(p.parse::<u16>().ok().filter(|p| *p != 0)?)),
        None => (s, None),
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    let labels_ok = host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    let numeric = host.chars().all(|c| c.is_ascii_digit() || c == '.');
    (labels_ok && !numeric).then(|| (host.to_ascii_lowercase(), port))
}

/// The system's name servers (`nameserver` lines of `/etc/resolv.conf`, port 53).
fn system_name_servers() -> Result<Vec<std::net::SocketAddr>> {
    let text = std::fs::read_to_string("/etc/resolv.conf")
        .map_err(|e| anyhow!("cannot read /etc/resolv.conf: {e}"))?;
    let v: Vec<std::net::SocketAddr> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|ip| ip.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| std::net::SocketAddr::new(ip, 53))
        .collect();
    if v.is_empty() {
        return Err(anyhow!("/etc/resolv.conf lists no nameserver"));
    }
    Ok(v)
}

fn line_of_offset(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

impl Loaded {
    pub fn read(path: &Path) -> Result<Loaded> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow!("{}: cannot read config file: {e}", path.display()))?;
        let config: Config = toml::from_str(&text).map_err(|e| {
            let line = e
                .span()
                .map(|s| line_of_offset(&text, s.start))
                .unwrap_or(0);
            anyhow!("{}:{line}: {}", path.display(), e.message())
        })?;
        Ok(Loaded {
            config,
            path: path.to_path_buf(),
            text,
        })
    }

    /// A `*_secs` value: absent → `default`; otherwise at least one millisecond (a timer of
    /// zero panics in `tokio::time::interval`) and below one day, or an error naming the file
    /// and line.
    fn duration(
        &self,
        section: &str,
        key: &str,
        v: Option<f64>,
        default: Duration,
    ) -> Result<Duration> {
        match v {
            None => Ok(default),
            Some(x) if x.is_finite() && (0.001..86_400.0).contains(&x) => {
                Ok(Duration::from_secs_f64(x))
            }
            Some(x) => Err(anyhow!(
                "{}: {key} = {x} is not a duration between 0.001 and 86400 seconds",
                self.at(section, key)
            )),
        }
    }

    /// SIP timer T1 in `t1_ms`: absent → 500 ms; otherwise 1 to 10000 ms (64·T1 and the
    /// retransmission doublings must stay small), or an error naming the file and line.
    fn t1(&self, section: &str, v: Option<u64>) -> Result<Duration> {
        match v {
            None => Ok(Duration::from_millis(500)),
            Some(ms) if (1..=10_000).contains(&ms) => Ok(Duration::from_millis(ms)),
            Some(ms) => Err(anyhow!(
                "{}: t1_ms = {ms} is not between 1 and 10000 milliseconds",
                self.at(section, "t1_ms")
            )),
        }
    }

    /// `file:line` of `key` inside `[section]` (line 0 when absent).
    fn at(&self, section: &str, key: &str) -> String {
        self.at_nth(section, 0, key)
    }

    /// `file:line` of `key` inside the `nth` (from 0) `[[section]]` table of an array; the
    /// table's header line when the key is absent from it.
    fn at_nth(&self, section: &str, nth: usize, key: &str) -> String {
        let mut in_section = false;
        let mut seen = 0;
        let mut header = None;
        for (i, l) in self.text.lines().enumerate() {
            let t = l.trim();
            if t.starts_with('[') {
                in_section = false;
                if t.trim_matches(|c| c == '[' || c == ']').trim() == section {
                    in_section = seen == nth;
                    if in_section {
                        header = Some(i + 1);
                    }
                    seen += 1;
                }
                continue;
            }
            if in_section && t.split('=').next().map(str::trim) == Some(key) {
                return format!("{}:{}", self.path.display(), i + 1);
            }
        }
        match header {
            Some(line) => format!("{}:{line}: [{section}] {key}", self.path.display()),
            None => format!("{}: [{section}] {key}", self.path.display()),
        }
    }

    pub fn eid(&self) -> Eid {
        let n = &self.config.node;
        n.eid.unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
                .or_else(|| std::env::var("HOSTNAME").ok())
                .unwrap_or_else(|| "localhost".into());
            Eid::derive(&format!("{host}/{}", n.name))
        })
    }

    /// The presence component's configuration (`None` without `[presence]`).
    pub fn presence(&self) -> Result<Option<statebus::presence::PresenceConfig>> {
        let Some(p) = &self.config.presence else {
            return Ok(None);
        };
        if p.server
            .rsplit_once(':')
            .and_then(|(_, port)| port.parse::<u16>().ok())
            .is_none()
        {
            return Err(anyhow!(
                "{}: server = {:?} is not host:port",
                self.at("presence", "server"),
                p.server
            ));
        }
        if p.secret.is_empty() {
            return Err(anyhow!(
                "{}: secret is empty",
                self.at("presence", "secret")
            ));
        }
        let mut c = statebus::presence::PresenceConfig::new(&p.jid, &p.secret, &p.server);
        c.store = p.store.clone();
        if let Some(pre) = &p.device_prefix {
            c.device_prefix = pre.clone();
        }
        c.allow = p.allow.clone();
        c.keepalive = self.duration("presence", "keepalive_secs", p.keepalive_secs, c.keepalive)?;
        c.reconnect_max = self.duration(
            "presence",
            "reconnect_max_secs",
            p.reconnect_max_secs,
            c.reconnect_max,
        )?;
        Ok(Some(c))
    }

    /// Points a presence start-up error at its line.
    pub fn explain_presence(&self, e: &statebus::presence::PresenceError) -> anyhow::Error {
        use statebus::presence::PresenceError as E;
        match e {
            E::Jid(..) => anyhow!("{}: {e}", self.at("presence", "jid")),
            E::Allow(..) => anyhow!("{}: {e}", self.at("presence", "allow")),
            E::Store(_) => anyhow!("{}: {e}", self.at("presence", "store")),
        }
    }

    /// The XMPP bus configuration, validated, with errors pointing at lines.
    pub fn xmpp_bus(&self) -> Result<XmppBusConfig> {
        let s = &self.config.statebus;
        let need = |v: &Option<String>, key: &str| -> Result<String> {
            v.clone().ok_or_else(|| {
                anyhow!(
                    "{}: [statebus] {key} is required when backend = \"xmpp\"",
                    self.path.display()
                )
            })
        };
        let jid = need(&s.jid, "jid")?;
        let password = need(
            &self.secret(
                &self.at("statebus", "password"),
                "password",
                s.password.as_ref(),
                s.password_file.as_ref(),
                s.password_env.as_ref(),
            )?,
            "password",
        )?;
        let service = need(&s.pubsub_service, "pubsub_service")?;
        let mut c = XmppBusConfig::new(&jid, &password, &service, self.eid());
        if s.server.is_some() && !s.servers.is_empty() {
            return Err(anyhow!(
                "{}: set either server or servers, not both",
                self.at("statebus", "servers")
            ));
        }
        for a in s.server.iter().chain(s.servers.iter()) {
            let ok = a.parse::<std::net::SocketAddr>().is_ok()
                || parse_domain(a).is_some()
                || a.parse::<std::net::IpAddr>().is_ok();
            if !ok {
                let key = if s.servers.is_empty() {
                    "server"
                } else {
                    "servers"
                };
                return Err(anyhow!(
                    "{}: {a:?} is not a server address like xmpp1.example.com:5222 or 127.0.0.1:5222",
                    self.at("statebus", key)
                ));
            }
        }
        c.server = s.server.clone();
        c.servers = s.servers.clone();
        c.dns_servers = s
            .dns_servers
            .iter()
            .map(|a| {
                a.parse().map_err(|_| {
                    anyhow!(
                        "{}: {a:?} is not an address like 127.0.0.1:53",
                        self.at("statebus", "dns_servers")
                    )
                })
            })
            .collect::<Result<_>>()?;
        if c.server.is_none() && c.servers.is_empty() && c.dns_servers.is_empty() {
            // SRV lookup of the JID's domain through the system's name servers; if they cannot
            // be read, tokio-xmpp's own lookup of the system configuration.
            c.dns_servers = system_name_servers().unwrap_or_default();
        }
        c.tls = s.tls;
        c.layout = s.layout;
        c.access_model = s.access_model;
        c.fabric_jids = s.fabric_jids.clone();
        c.site = self.config.node.site.clone();
        c.role = self.config.node.role.clone();
        c.sip_address = self.config.node.sip_address.clone().or_else(|| {
            // An ACD node is reached where it listens (queue advertisements).
            let a = self
                .config
                .acd
                .as_ref()
                .filter(|_| self.config.gateway.is_none())?;
            Some(a.udp.clone())
        });
        if let Some(m) = s.max_items {
            if m == 0 {
                return Err(anyhow!(
                    "{}: max_items must be at least 1",
                    self.at("statebus", "max_items")
                ));
            }
            c.max_items = m;
        }
        let secs = |v: Option<f64>, key: &str, default: Duration| {
            self.duration("statebus", key, v, default)
        };
        c.heartbeat_interval = secs(
            s.heartbeat_interval_secs,
            "heartbeat_interval_secs",
            c.heartbeat_interval,
        )?;
        c.liveness_ttl = secs(s.liveness_ttl_secs, "liveness_ttl_secs", c.liveness_ttl)?;
        c.iq_timeout = secs(s.iq_timeout_secs, "iq_timeout_secs", c.iq_timeout)?;
        c.keepalive = secs(s.keepalive_secs, "keepalive_secs", c.keepalive)?;
        c.reconnect_initial = secs(
            s.reconnect_initial_secs,
            "reconnect_initial_secs",
            c.reconnect_initial,
        )?;
        c.reconnect_max = secs(s.reconnect_max_secs, "reconnect_max_secs", c.reconnect_max)?;
        if let Some(ca) = &s.ca_file {
            let ca = if ca.is_relative() {
                self.path.parent().unwrap_or(Path::new(".")).join(ca)
            } else {
                ca.clone()
            };
            if !ca.is_file() {
                return Err(anyhow!(
                    "{}: ca_file {} does not exist",
                    self.at("statebus", "ca_file"),
                    ca.display()
                ));
            }
            // rustls-native-certs (used by tokio-xmpp) reads SSL_CERT_FILE. Set before any
            // thread of the runtime reads the environment.
            std::env::set_var("SSL_CERT_FILE", &ca);
        }
        Ok(c)
    }

    /// The database URL, with a relative SQLite path resolved against the config file.
    pub fn database_url(&self) -> Result<String> {
        let g = self.gateway_section()?;
        Ok(self.resolve_sqlite(&g.database))
    }

    /// A `sqlite://` path relative to the config file made absolute; other URLs unchanged.
    fn resolve_sqlite(&self, url: &str) -> String {
        match url.strip_prefix("sqlite://") {
            Some(p) if !p.starts_with('/') => {
                let dir = self.path.parent().unwrap_or(Path::new("."));
                format!("sqlite://{}", dir.join(p).display())
            }
            _ => url.to_owned(),
        }
    }

    fn gateway_section(&self) -> Result<&GatewaySection> {
        self.config.gateway.as_ref().ok_or_else(|| {
            anyhow!(
                "{}: a [gateway] section is required for this command",
                self.path.display()
            )
        })
    }

    /// The gateway configuration, validated.
    pub fn gateway(&self) -> Result<gateway::server::GatewayConfig> {
        use gateway::registrar::digest::Algorithm;
        let g = self.gateway_section()?;
        let addrs = |list: &[String], key: &str| -> Result<Vec<std::net::SocketAddr>> {
            list.iter()
                .map(|a| {
                    a.parse().map_err(|_| {
                        anyhow!(
                            "{}: {a:?} is not an address like 127.0.0.1:5060",
                            self.at("gateway", key)
                        )
                    })
                })
                .collect()
        };
        let udp = addrs(&g.udp, "udp")?;
        let tcp = addrs(&g.tcp, "tcp")?;
        let streams = self.streams(g)?;
        if udp.is_empty() && tcp.is_empty() {
            return Err(anyhow!(
                "{}: [gateway] needs at least one udp or tcp listener",
                self.path.display()
            ));
        }
        let algorithms = match &g.digest_algorithms {
            None => vec![Algorithm::Sha256, Algorithm::Md5],
            Some(list) => list
                .iter()
                .map(|t| {
                    Algorithm::from_token(t).ok_or_else(|| {
                        anyhow!(
                            "{}: unknown digest algorithm {t:?} (SHA-256, MD5)",
                            self.at("gateway", "digest_algorithms")
                        )
                    })
                })
                .collect::<Result<_>>()?,
        };
        if algorithms.is_empty() {
            return Err(anyhow!(
                "{}: digest_algorithms is empty",
                self.at("gateway", "digest_algorithms")
            ));
        }
        let (min, def, max) = (
            g.min_expires.unwrap_or(60),
            g.default_expires.unwrap_or(3600),
            g.max_expires.unwrap_or(7200),
        );
        if !(min <= def && def <= max) {
            return Err(anyhow!(
                "{}: need min_expires <= default_expires <= max_expires",
                self.at("gateway", "min_expires")
            ));
        }
        let max_contacts = g.max_contacts.unwrap_or(10);
        if !(1..=gateway::b2bua::fork::MAX_BRANCHES).contains(&max_contacts) {
            return Err(anyhow!(
                "{}: max_contacts = {max_contacts}: must be 1 to {} (every contact rings at once)",
                self.at("gateway", "max_contacts"),
                gateway::b2bua::fork::MAX_BRANCHES
            ));
        }
        let secs = |v: Option<f64>, key: &str, d: f64| {
            self.duration("gateway", key, v, Duration::from_secs_f64(d))
        };
        let secret = match &g.nonce_secret {
            Some(s) => s.as_bytes().to_vec(),
            None => {
                let mut b = [0u8; 32];
                getrandom(&mut b);
                b.to_vec()
            }
        };
        let rtp_ip: std::net::IpAddr = match &g.rtp_ip {
            Some(ip) => ip.parse().map_err(|_| {
                anyhow!(
                    "{}: {ip:?} is not an IP address",
                    self.at("gateway", "rtp_ip")
                )
            })?,
            None => {
                let ip = udp.iter().chain(tcp.iter()).map(|a| a.ip()).next();
                match ip {
                    Some(ip) if !ip.is_unspecified() => ip,
                    _ => {
                        return Err(anyhow!(
                            "{}: listeners bind a wildcard address: set rtp_ip to the address phones reach",
                            self.path.display()
                        ))
                    }
                }
            }
        };
        let rtp_ports = match &g.rtp_ports {
            None => (20000, 29999),
            Some(r) => self.port_range("gateway", "rtp_ports", r)?,
        };
        let rtp_threads = self.rtp_threads("gateway", g.rtp_threads)?;
        let rtp_scheduling =
            self.rtp_scheduling("gateway", g.rtp_realtime_priority, g.rtp_coalesce_us)?;
        let sip_shards = self.sip_shards(g.sip_shards)?;
        let mut trunks: Vec<gateway::server::TrunkConfig> = Vec::new();
        for (n, t) in g.trunk.iter().enumerate() {
            let (address, domain) = match t.address.parse::<std::net::SocketAddr>() {
                Ok(a) => (a, None),
                Err(_) => match parse_domain(&t.address) {
                    Some(d) => (std::net::SocketAddr::from(([0, 0, 0, 0], 0)), Some(d)),
                    None => {
                        return Err(anyhow!(
                            "{}: trunk {:?}: {:?} is neither an address like 192.0.2.7:5060 \
                             nor a domain like itsp.example or itsp.example:5060",
                            self.at_nth("gateway.trunk", n, "address"),
                            t.name,
                            t.address
                        ))
                    }
                },
            };
            let inbound_from = {
                t.inbound_from
                    .iter()
                    .map(|ip| {
                        ip.parse().map_err(|_| {
                            anyhow!(
                                "{}: trunk {:?}: {ip:?} is not an IP address",
                                self.at_nth("gateway.trunk", n, "inbound_from"),
                                t.name
                            )
                        })
                    })
                    .collect::<Result<_>>()?
            };
            let password = self.secret(
                &self.at_nth("gateway.trunk", n, "password"),
                "password",
                t.password.as_ref(),
                t.password_file.as_ref(),
                t.password_env.as_ref(),
            )?;
            let credentials = match (&t.username, &password) {
                (Some(u), Some(p)) => Some(gateway::registrar::client::ClientCredentials {
                    username: u.clone(),
                    password: p.clone(),
                }),
                (None, None) => None,
                _ => {
                    return Err(anyhow!(
                        "{}: trunk {:?}: username and password go together",
                        self.at_nth("gateway.trunk", n, "username"),
                        t.name
                    ))
                }
            };
            if t.register && credentials.is_none() {
                return Err(anyhow!(
                    "{}: trunk {:?}: register = true needs username and password",
                    self.at_nth("gateway.trunk", n, "register"),
                    t.name
                ));
            }
            let register = t.register.then(|| {
                (
                    t.domain.clone().unwrap_or_else(|| {
                        domain
                            .as_ref()
                            .map_or_else(|| address.to_string(), |(d, _)| d.clone())
                    }),
                    t.register_expires.unwrap_or(600),
                )
            });
            let tls = match t.transport.as_deref() {
                None | Some("udp") => None,
                Some("tls") if domain.is_none() => Some(t.tls_name.clone().unwrap_or_default()),
                Some(other) => {
                    return Err(anyhow!(
                        "{}: trunk {:?}: transport {other:?}: \"udp\", or \"tls\" with an \
                         address like 192.0.2.7:5061",
                        self.at_nth("gateway.trunk", n, "transport"),
                        t.name
                    ))
                }
            };
            // The name a TLS peer's certificate must carry is kept per address: two TLS trunks
            // to one address with different names would silently verify against one of them.
            if let Some(name) = &tls {
                if let Some(other) = trunks
                    .iter()
                    .find(|o| o.address == address && o.tls.as_ref().is_some_and(|n| n != name))
                {
                    return Err(anyhow!(
                        "{}: trunk {:?}: tls_name {name:?} differs from trunk {:?}'s {:?} at the                          same address {address}: a peer's certificate is verified for one name",
                        self.at_nth("gateway.trunk", n, "tls_name"),
                        t.name,
                        other.name,
                        other.tls.as_deref().unwrap_or_default()
                    ));
                }
            }
            trunks.push(gateway::server::TrunkConfig {
                name: t.name.clone(),
                address,
                prefixes: t.prefixes.clone(),
                strip: t.strip,
                inbound_from,
                credentials,
                register,
                domain,
                tls,
            });
        }
        Ok(gateway::server::GatewayConfig {
            fabric: self.fabric_key()?,
            udp,
            tcp,
            realm: g.realm.clone(),
            database: self.database_url()?,
            secret,
            min_expires: min,
            default_expires: def,
            max_expires: max,
            max_contacts,
            algorithms,
            db_reload: secs(g.db_reload_secs, "db_reload_secs", 5.0)?,
            qualify_interval: secs(g.qualify_interval_secs, "qualify_interval_secs", 30.0)?,
            t1: self.t1("gateway", g.t1_ms)?,
            device_prefix: g.device_prefix.clone().unwrap_or_else(|| "PJSIP/".into()),
            site: self.config.node.site.clone(),
            node: self.config.node.name.clone(),
            rtp_ip,
            rtp_ports,
            rtp_threads,
            rtp_scheduling,
            sip_shards,
            media_timeout: match g.media_timeout_secs {
                Some(0.0) => None,
                v => Some(secs(v, "media_timeout_secs", 30.0)?),
            },
            timer_c: secs(
                g.timer_c_secs,
                "timer_c_secs",
                gateway::b2bua::DEFAULT_TIMER_C.as_secs_f64(),
            )?,
            ring_timeout: match g.ring_timeout_secs {
                None | Some(0.0) => None,
                v => Some(secs(v, "ring_timeout_secs", 0.0)?),
            },
            session_expires: match g.session_expires_secs {
                Some(0.0) => None,
                v => Some(secs(v, "session_expires_secs", 1800.0)?),
            },
            session_min_se: {
                let min = secs(g.session_min_se_secs, "session_min_se_secs", 90.0)?;
                let se = g.session_expires_secs.unwrap_or(1800.0);
                if se != 0.0 && min.as_secs_f64() > se {
                    return Err(anyhow!(
                        "{}: session_min_se_secs ({}) must not exceed session_expires_secs ({se})",
                        self.at("gateway", "session_min_se_secs"),
                        min.as_secs_f64()
                    ));
                }
                min
            },
            extensions: g.extensions.clone().into_iter().collect(),
            moh: std::sync::Arc::new(self.gateway_moh(g)?),
            dns_servers: match addrs(&g.dns_servers, "dns_servers")? {
                v if v.is_empty() && g.trunk.iter().any(|t| parse_domain(&t.address).is_some()) => {
                    system_name_servers().map_err(|e| {
                        anyhow!(
                            "{}: a trunk is named by a domain and no dns_servers are set: {e}",
                            self.at("gateway", "dns_servers")
                        )
                    })?
                }
                v => v,
            },
            trunks,
            security: self.security()?,
            streams,
            // Filled in by the binary once the voicemail user agent listens.
            voicemail: None,

            overload: self.overload()?,

            spy: self.spy()?,
            record_dir: match &g.record_dir {
                None => None,
                Some(d) => {
                    let dir = self.path.parent().unwrap_or(Path::new(".")).join(d);
                    std::fs::create_dir_all(&dir).map_err(|e| {
                        anyhow!(
                            "{}: cannot create {}: {e}",
                            self.at("gateway", "record_dir"),
                            dir.display()
                        )
                    })?;
                    Some(dir)
                }
            },
        })
    }

    /// The gateway's music on hold: every WAV read now, an unreadable or empty one an error
    /// naming the file and line.
    fn gateway_moh(&self, g: &GatewaySection) -> Result<media::moh::MohSources> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let read = |file: &str, at: String| -> Result<std::sync::Arc<Vec<i16>>> {
            let pcm = media::audio::wav::read_wav(&dir.join(file))
                .map_err(|e| anyhow!("{at}: music on hold {file:?}: {e}"))?;
            if pcm.is_empty() {
                return Err(anyhow!("{at}: music on hold {file:?} holds no audio"));
            }
            Ok(std::sync::Arc::new(pcm))
        };
        let mut moh = media::moh::MohSources::default();
        if let Some(f) = &g.music_on_hold {
            moh.default = read(f, self.at("gateway", "music_on_hold"))?;
        }
        for (table, map, out) in [
            (
                "gateway.music_on_hold_devices",
                &g.music_on_hold_devices,
                &mut moh.devices,
            ),
            (
                "gateway.music_on_hold_queues",
                &g.music_on_hold_queues,
                &mut moh.queues,
            ),
        ] {
            for (key, file) in map {
                let quoted = self.at(table, &format!("\"{key}\""));
                let at = if quoted.contains(&format!("[{table}]")) {
                    self.at(table, key)
                } else {
                    quoted
                };
                out.insert(key.clone(), read(file, at)?);
            }
        }
        Ok(moh)
    }

    /// The ACD node configuration, validated; `site_gateway` is the local gateway's address
    /// in `site` mode (used when no `[[acd.gateway]]` is listed).
    pub fn acd(&self, site_gateway: Option<std::net::SocketAddr>) -> Result<acd::node::NodeConfig> {
        let a = self.config.acd.as_ref().ok_or_else(|| {
            anyhow!(
                "{}: an [acd] section is required for this command",
                self.path.display()
            )
        })?;
        let udp: std::net::SocketAddr = a.udp.parse().map_err(|_| {
            anyhow!(
                "{}: {:?} is not an address like 127.0.0.1:5070",
                self.at("acd", "udp"),
                a.udp
            )
        })?;
        let media_ip = match &a.media_ip {
            Some(ip) => ip.parse().map_err(|_| {
                anyhow!(
                    "{}: {ip:?} is not an IP address",
                    self.at("acd", "media_ip")
                )
            })?,
            None if !udp.ip().is_unspecified() => udp.ip(),
            None => {
                return Err(anyhow!(
                    "{}: udp binds a wildcard address: set media_ip",
                    self.at("acd", "udp")
                ))
            }
        };
        let rtp_ports = match &a.rtp_ports {
            None => (30000, 39999),
            Some(r) => self.port_range("acd", "rtp_ports", r)?,
        };
        let rtp_threads = self.rtp_threads("acd", a.rtp_threads)?;
        let rtp_scheduling =
            self.rtp_scheduling("acd", a.rtp_realtime_priority, a.rtp_coalesce_us)?;
        let mut gateways = Vec::new();
        for (n, g) in a.gateway.iter().enumerate() {
            let address = g.address.parse().map_err(|_| {
                anyhow!(
                    "{}: gateway {:?}: {:?} is not an address like 127.0.0.1:5060",
                    self.at_nth("acd.gateway", n, "address"),
                    g.name,
                    g.address
                )
            })?;
            gateways.push(acd::node::GatewayRoute {
                name: g.name.clone(),
                address,
            });
        }
        if gateways.is_empty() {
            match site_gateway {
                Some(address) => gateways.push(acd::node::GatewayRoute {
                    name: "local".into(),
                    address,
                }),
                None => {
                    return Err(anyhow!(
                        "{}: [acd] needs at least one [[acd.gateway]]",
                        self.path.display()
                    ))
                }
            }
        }
        for (number, queue) in &a.numbers {
            if !a.queue.iter().any(|q| &q.name == queue) {
                return Err(anyhow!(
                    "{}: number {number:?} routes to unknown queue {queue:?}",
                    self.at("acd.numbers", &format!("\"{number}\""))
                ));
            }
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let music = match &a.music_on_hold {
            None => media::audio::prompts::music_on_hold(),
            Some(p) => media::audio::wav::read_wav(&dir.join(p))
                .map_err(|e| anyhow!("{}: {e}", self.at("acd", "music_on_hold")))?,
        };
        let prompts = match &a.prompts {
            None => media::audio::PromptSet::new(),
            Some(p) => {
                let set = media::audio::load_prompt_dir(&dir.join(p))
                    .map_err(|e| anyhow!("{}: {e}", self.at("acd", "prompts")))?;
                for (file, why) in set.rejected() {
                    eprintln!(
                        "{}: prompt {} skipped: {why}",
                        self.at("acd", "prompts"),
                        file.display()
                    );
                }
                set
            }
        };
        let announce_frequency = match a.announce_frequency_secs {
            None | Some(0.0) => None,
            Some(v) => {
                Some(self.duration("acd", "announce_frequency_secs", Some(v), Duration::ZERO)?)
            }
        };
        let ms = |key: &str, v: Option<u64>, default: u64| -> Result<Duration> {
            match v {
                None => Ok(Duration::from_millis(default)),
                Some(x) if (1..=60_000).contains(&x) => Ok(Duration::from_millis(x)),
                Some(x) => Err(anyhow!(
                    "{}: {key} = {x} is not between 1 and 60000 milliseconds",
                    self.at("acd", key)
                )),
            }
        };
        let reach = acd::reach::ReachConfig {
            interval: ms("keepalive_interval_ms", a.keepalive_interval_ms, 100)?,
            timeout: ms("keepalive_timeout_ms", a.keepalive_timeout_ms, 700)?,
        };
        let offer_provisional_timeout = ms(
            "offer_provisional_timeout_ms",
            a.offer_provisional_timeout_ms,
            800,
        )?;
        self.check_callback_keys(&a.queue)?;
        let engine = acd::EngineConfig {
            queues: a.queue.clone(),
            rules: a.rules.clone(),
            shared_lastcall: a.shared_lastcall,
            seed: 0,
        };
        acd::Engine::new(&engine).map_err(|e| anyhow!("{}: {e}", self.at("acd", "queue")))?;
        Ok(acd::node::NodeConfig {
            name: self.config.node.name.clone(),
            fabric: self.fabric_key()?,
            udp,
            media_ip,
            rtp_ports,
            rtp_threads,
            rtp_scheduling,
            t1: self.t1("acd", a.t1_ms)?,
            engine,
            numbers: a.numbers.clone().into_iter().collect(),
            gateways,
            queue_log: a.queue_log.as_ref().map(|p| dir.join(p)),
            database: match &a.database {
                Some(url) => Some(self.resolve_sqlite(url)),
                None if site_gateway.is_some() => self.database_url().ok(),
                None => None,
            },
            music,
            prompts,
            announce: acd::call::Announcements {
                frequency: announce_frequency,
                holdtime: a.announce_holdtime.unwrap_or(true),
            },
            hot_desk: acd::call::HotDesk {
                login: a.login_code.clone().unwrap_or_else(|| "*45".into()),
                logout: a.logout_code.clone().unwrap_or_else(|| "*46".into()),
            },
            pause_codes: acd::call::PauseCodes {
                pause: a.pause_code.clone().unwrap_or_else(|| "*47".into()),
                unpause: a.unpause_code.clone().unwrap_or_else(|| "*48".into()),
                reasons: a.pause_reasons.clone().into_iter().collect(),
            },
            reach,
            offer_provisional_timeout,
            device_prefix: (a.device_prefix.clone())
                .or_else(|| self.config.gateway.as_ref()?.device_prefix.clone())
                .unwrap_or_else(|| "PJSIP/".into()),
            unheard_unavailable: site_gateway.is_some()
                || self.config.statebus.backend == Backend::Xmpp,
        })
    }

    fn port_range(&self, section: &str, key: &str, r: &str) -> Result<(u16, u16)> {
        r.split_once('-')
            .and_then(|(a, b)| Some((a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?)))
            .filter(|(a, b)| a < b && *a >= 1024)
            .ok_or_else(|| {
                anyhow!(
                    "{}: {r:?} is not a port range like \"20000-29999\" (from >= 1024, from < to)",
                    self.at(section, key)
                )
            })
    }

    /// The HTTP API (status, admin, wallboard, metrics), if configured: listen address
    /// (loopback by default) and the admin token. A listener that is not on loopback needs a
    /// token.
    pub fn http(&self) -> Result<Option<Http>> {
        let Some(h) = &self.config.http else {
            return Ok(None);
        };
        let listen: std::net::SocketAddr = match &h.listen {
            None => ([127, 0, 0, 1], 8088).into(),
            Some(l) => l.parse().map_err(|_| {
                anyhow!(
                    "{}: {l:?} is not an address like 127.0.0.1:8088",
                    self.at("http", "listen")
                )
            })?,
        };
        if h.create_token_file && h.token_file.is_none() {
            return Err(anyhow!(
                "{}: create_token_file needs token_file",
                self.at("http", "create_token_file")
            ));
        }
        let token = match (&h.token, &h.token_file) {
            _ if h.token_env.is_some() && (h.token.is_some() || h.token_file.is_some()) => {
                return Err(anyhow!(
                    "{}: give one of token, token_file and token_env",
                    self.at("http", "token_env")
                ))
            }
            (Some(_), Some(_)) => {
                return Err(anyhow!(
                    "{}: give token or token_file, not both",
                    self.at("http", "token_file")
                ))
            }
            (None, None) if h.token_env.is_some() => {
                let name = h.token_env.as_deref().unwrap_or_default();
                match std::env::var(name) {
                    Ok(v) if !v.trim().is_empty() => Some(v.trim().to_owned()),
                    _ => {
                        return Err(anyhow!(
                        "{}: the environment variable {name} holding the admin token is not set",
                        self.at("http", "token_env")
                    ))
                    }
                }
            }
            (Some(t), None) => Some(t.trim().to_owned()),
            (None, Some(f)) => {
                let dir = self.path.parent().unwrap_or(Path::new("."));
                let text = std::fs::read_to_string(dir.join(f)).map_err(|e| {
                    anyhow!(
                        "{}: cannot read token file {f:?}: {e}",
                        self.at("http", "token_file")
                    )
                })?;
                Some(text.lines().next().unwrap_or("").trim().to_owned())
            }
            (None, None) => None,
        };
        if let Some(t) = &token {
            if t.len() < 16 {
                return Err(anyhow!(
                    "{}: the admin token must be at least 16 characters",
                    self.at(
                        "http",
                        if h.token.is_some() {
                            "token"
                        } else if h.token_env.is_some() {
                            "token_env"
                        } else {
                            "token_file"
                        }
                    )
                ));
            }
        }
        if !listen.ip().is_loopback() && token.is_none() {
            return Err(anyhow!(
                "{}: {listen} is not a loopback address: set token (or token_file) first",
                self.at("http", "listen")
            ));
        }
        Ok(Some(Http { listen, token }))
    }

    /// `[http] create_token_file`: writes a random admin token (32 hex digits, mode 0600) into
    /// `token_file` if that file does not exist yet; returns its path when it wrote one.
    pub fn create_token_file(&self) -> Result<Option<PathBuf>> {
        let Some(h) = &self.config.http else {
            return Ok(None);
        };
        let (true, Some(f)) = (h.create_token_file, &h.token_file) else {
            return Ok(None);
        };
        let path = self.path.parent().unwrap_or(Path::new(".")).join(f);
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut file = match opts.open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(None),
            Err(e) => {
                return Err(anyhow!(
                    "{}: cannot create token file {}: {e}",
                    self.at("http", "token_file"),
                    path.display()
                ))
            }
        };
        let token = format!("{:032x}\n", rand::random::<u128>());
        std::io::Write::write_all(&mut file, token.as_bytes()).map_err(|e| {
            anyhow!(
                "{}: cannot write token file {}: {e}",
                self.at("http", "token_file"),
                path.display()
            )
        })?;
        Ok(Some(path))
    }

    /// The queues and number plan of `[acd]` as they are in the file now (for a reload).
    pub fn acd_queues(
        &self,
    ) -> Result<(acd::EngineConfig, std::collections::HashMap<String, String>)> {
        let a = self
            .config
            .acd
            .as_ref()
            .ok_or_else(|| anyhow!("{}: no [acd] section", self.path.display()))?;
        for (number, queue) in &a.numbers {
            if !a.queue.iter().any(|q| &q.name == queue) {
                return Err(anyhow!(
                    "{}: number {number:?} routes to unknown queue {queue:?}",
                    self.at("acd.numbers", &format!("\"{number}\""))
                ));
            }
        }
        self.check_callback_keys(&a.queue)?;
        let engine = acd::EngineConfig {
            queues: a.queue.clone(),
            rules: a.rules.clone(),
            shared_lastcall: a.shared_lastcall,
            seed: 0,
        };
        acd::Engine::new(&engine).map_err(|e| anyhow!("{}: {e}", self.at("acd", "queue")))?;
        Ok((engine, a.numbers.clone().into_iter().collect()))
    }

    /// Each queue's `callback_key` is one DTMF key (issue 15).
    fn check_callback_keys(&self, queues: &[acd::QueueConfig]) -> Result<()> {
        for (i, q) in queues.iter().enumerate() {
            if let Some(k) = q.callback_key.filter(|k| !"0123456789*#".contains(*k)) {
                return Err(anyhow!(
                    "{}: callback_key = {k:?} in queue {:?} is not a DTMF key (0-9, *, #)",
                    self.at_nth("acd.queue", i, "callback_key"),
                    q.name
                ));
            }
        }
        Ok(())
    }

    /// `[shutdown]`: drain 0 to 86400 s (default 30), Retry-After 1 to 86400 s (default 60).
    pub fn shutdown(&self) -> Result<Shutdown> {
        let s = &self.config.shutdown;
        let drain = match s.drain_secs {
            None => Duration::from_secs(30),
            Some(x) if x.is_finite() && (0.0..=86_400.0).contains(&x) => Duration::from_secs_f64(x),
            Some(x) => {
                return Err(anyhow!(
                    "{}: drain_secs = {x} is not a duration between 0 and 86400 seconds",
                    self.at("shutdown", "drain_secs")
                ))
            }
        };
        let retry_after = match s.retry_after_secs {
            None => 60,
            Some(x) if (1..=86_400).contains(&x) => u32::try_from(x).unwrap_or(60),
            Some(x) => {
                return Err(anyhow!(
                    "{}: retry_after_secs = {x} is not between 1 and 86400 seconds",
                    self.at("shutdown", "retry_after_secs")
                ))
            }
        };
        Ok(Shutdown { drain, retry_after })
    }

    /// Map a statebus start error to the line that caused it.
    pub fn explain(&self, e: &statebus::XmppBusError) -> anyhow::Error {
        use statebus::XmppBusError as E;
        let key = match e {
            E::Jid(..) => "jid",
            E::PlaintextNotLoopback(_) | E::PlaintextNeedsServer => "tls",
            E::BadServer(_) if self.config.statebus.server.is_some() => "server",
            E::BadServer(_) => "servers",
            E::Resolver(_) => "dns_servers",
            E::TtlTooShort { .. } => "liveness_ttl_secs",
            // Not the config's fault: the system refused a thread.
            E::Thread(_) => return anyhow!("{e}"),
        };
        anyhow!("{}: {e}", self.at("statebus", key))
    }
}

/// Random bytes for a per-start nonce secret (from the OS; falls back to time and PID).
fn getrandom(buf: &mut [u8]) {
    use std::io::Read;
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .is_ok()
    {
        return;
    }
    let seed = format!("{:?}{}", std::time::SystemTime::now(), std::process::id());
    for (i, b) in buf.iter_mut().enumerate() {
        *b = seed.as_bytes()[i % seed.len()] ^ (i as u8);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Loaded> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("site-a.toml");
        std::fs::write(&p, text)?;
        Loaded::read(&p)
    }

    /// The error `get` gives for the config `text` (which must load).
    fn error_of<T>(text: &str, get: impl Fn(&Loaded) -> Result<T>) -> String {
        match get(&load(text).expect("loads")) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    /// Each `(line, msg)`: `base` + `line` loads, and `get` refuses it with an error that names
    /// `at` (file:line) and contains `msg`.
    fn refused_at<T>(
        base: &str,
        at: &str,
        cases: &[(&str, &str)],
        get: impl Fn(&Loaded) -> Result<T>,
    ) {
        for (line, msg) in cases {
            let l = load(&format!("{base}{line}\n")).unwrap();
            let e = match get(&l) {
                Ok(_) => panic!("{line} accepted"),
                Err(e) => e.to_string(),
            };
            assert!(e.contains(at) && e.contains(msg), "{line}: {e}");
        }
    }

    #[test]
    fn trunk_domains_and_dns_servers_are_validated() {
        assert_eq!(parse_domain("itsp.test"), Some(("itsp.test".into(), None)));
        assert_eq!(
            parse_domain("SIP.Itsp.test.:5080"),
            Some(("sip.itsp.test".into(), Some(5080)))
        );
        for bad in [
            "", "a..b", "-a.b", "a.b:0", "a.b:x", "10.0.0.1", "a_b.c", "a b",
        ] {
            assert_eq!(parse_domain(bad), None, "{bad:?}");
        }
        let base = "[node]\nname = \"a\"\n\n[gateway]\nudp = [\"127.0.0.1:5060\"]\n\
                    realm = \"r\"\ndatabase = \"sqlite://x.db\"\n";
        let e = error_of(
            &format!("{base}dns_servers = [\"localhost\"]\n"),
            Loaded::gateway,
        );
        assert!(
            e.contains("site-a.toml:8:") && e.contains("localhost"),
            "{e}"
        );
        let e = error_of(
            &format!("{base}\n[[gateway.trunk]]\nname = \"t\"\naddress = \"bad host\"\n"),
            Loaded::gateway,
        );
        assert!(
            e.contains("site-a.toml:11:") && e.contains("bad host"),
            "{e}"
        );
        let l = load(&format!(
            "{base}dns_servers = [\"127.0.0.1:5353\"]\n\n[[gateway.trunk]]\nname = \"t\"\n\
             address = \"itsp.test\"\n"
        ))
        .unwrap();
        let g = l.gateway().unwrap();
        assert_eq!(g.dns_servers, ["127.0.0.1:5353".parse().unwrap()]);
        assert_eq!(g.trunks[0].domain, Some(("itsp.test".into(), None)));
    }

    /// `callback_key`: one DTMF key per queue, default none (the node's `1`); errors name the
    /// file and line.
    #[test]
    fn callback_keys_are_validated_with_file_and_line() {
        let base = "[node]\nname = \"a\"\n\n[acd]\nudp = \"127.0.0.1:5070\"\n\n\
                    [[acd.gateway]]\nname = \"gw\"\naddress = \"127.0.0.1:5060\"\n\n\
                    [[acd.queue]]\nname = \"sales\"\n\n[[acd.queue]]\nname = \"support\"\n";
        let l = load(&format!("{base}callback_key = \"#\"\n")).unwrap();
        let (engine, _) = l.acd_queues().unwrap();
        assert_eq!(engine.queues[0].callback_key, None);
        assert_eq!(engine.queues[1].callback_key, Some('#'));
        assert!(l.acd(None).is_ok(), "{:?}", l.acd(None).err());
        let l = load(&format!("{base}callback_key = \"x\"\n")).unwrap();
        for e in [
            l.acd_queues().err().unwrap().to_string(),
            l.acd(None).err().unwrap().to_string(),
        ] {
            assert!(
                e.contains("site-a.toml:16:") && e.contains("'x'") && e.contains("support"),
                "{e}"
            );
        }
        // Not one character: refused by the parser, with the line.
        let e = load(&format!("{base}callback_key = \"12\"\n"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("site-a.toml:16:"), "{e}");
    }

    /// Two TLS trunks to one address must expect the same certificate name.
    #[test]
    fn tls_trunks_at_one_address_share_their_certificate_name() {
        let base = "[node]\nname = \"a\"\n\n[gateway]\nudp = [\"127.0.0.1:5060\"]\n\
                    realm = \"r\"\ndatabase = \"sqlite://x.db\"\n";
        let dir = tempfile::tempdir().expect("tempdir");
        for f in ["c.pem", "k.pem", "ca.pem"] {
            std::fs::write(dir.path().join(f), "").expect("write");
        }
        let load = |text: &str| {
            let p = dir.path().join("site-a.toml");
            std::fs::write(&p, text)?;
            Loaded::read(&p)
        };
        let trunk = |name: &str, tls_name: &str| {
            format!(
                "\n[[gateway.trunk]]\nname = \"{name}\"\naddress = \"192.0.2.7:5061\"\n\
                 transport = \"tls\"\ntls_name = \"{tls_name}\"\n"
            )
        };
        let tls = "\n[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\nca = \"ca.pem\"\n";
        let same = format!(
            "{base}{}{}{tls}",
            trunk("a", "gw.test"),
            trunk("b", "gw.test")
        );
        if let Err(e) = load(&same).and_then(|l| l.gateway()) {
            panic!("{e:#}");
        }
        let other = format!(
            "{base}{}{}{tls}",
            trunk("a", "gw.test"),
            trunk("b", "wrong.test")
        );
        let e = load(&other)
            .and_then(|l| l.gateway())
            .expect_err("refused")
            .to_string();
        assert!(
            e.contains("site-a.toml:19:") && e.contains("wrong.test") && e.contains("gw.test"),
            "{e}"
        );
    }

    #[test]
    fn music_on_hold_errors_name_file_and_line() {
        let base = "[node]\nname = \"a\"\n\n[gateway]\nudp = [\"127.0.0.1:5060\"]\n\
                    realm = \"r\"\ndatabase = \"sqlite://x.db\"\n";
        let e = error_of(
            &format!("{base}music_on_hold = \"nope.wav\"\n"),
            Loaded::gateway,
        );
        assert!(
            e.contains("site-a.toml:8:") && e.contains("nope.wav"),
            "{e}"
        );
        let e = error_of(
            &format!("{base}\n[gateway.music_on_hold_devices]\n\"2001\" = \"gone.wav\"\n"),
            Loaded::gateway,
        );
        assert!(
            e.contains("site-a.toml:10:") && e.contains("gone.wav"),
            "{e}"
        );
        let e = error_of(
            &format!("{base}\n[gateway.music_on_hold_queues]\nsales = \"gone.wav\"\n"),
            Loaded::gateway,
        );
        assert!(
            e.contains("site-a.toml:10:") && e.contains("gone.wav"),
            "{e}"
        );
    }

    #[test]
    fn syntax_and_type_errors_name_file_and_line() {
        let e = load("[node]\nname = \"a\"\n\n[statebus]\nbackend = \"carrier-pigeon\"\n")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("site-a.toml:5:"), "{e}");
        assert!(e.contains("carrier-pigeon") || e.contains("variant"), "{e}");
        let e = load("[node]\nname = \"a\"\nbogus = 1\n")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("site-a.toml:3:") && e.contains("bogus"), "{e}");
        let e = load("[node]\nname = \"a\"\neid = \"zz\"\n")
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("site-a.toml:3:") && e.contains("invalid EID"),
            "{e}"
        );
    }

    #[test]
    fn semantic_errors_name_the_line() {
        let l = load("[node]\nname = \"a\"\n[statebus]\nbackend = \"xmpp\"\njid = \"a@b\"\npassword = \"x\"\npubsub_service = \"pubsub.b\"\nliveness_ttl_secs = -3\n").unwrap();
        let e = l.xmpp_bus().err().unwrap().to_string();
        assert!(
            e.contains("site-a.toml:8") && e.contains("liveness_ttl_secs"),
            "{e}"
        );
        let l = load("[node]\nname = \"a\"\n[statebus]\nbackend = \"xmpp\"\njid = \"a@b\"\npubsub_service = \"pubsub.b\"\n").unwrap();
        let e = l.xmpp_bus().err().unwrap().to_string();
        assert!(e.contains("password is required"), "{e}");
    }

    const GATEWAY: &str = "[node]\nname = \"a\"\n[gateway]\nudp = [\"127.0.0.1:5060\"]\nrealm = \"r\"\ndatabase = \"sqlite://x.db\"\n";

    #[test]
    fn trunk_errors_name_that_trunks_line() {
        // Lines 7-9: a good trunk; 10-12: a bad address; then 10-13: a bad inbound_from.
        let text = format!(
            "{GATEWAY}[[gateway.trunk]]\nname = \"ok\"\naddress = \"192.0.2.1:5060\"\n\
             [[gateway.trunk]]\nname = \"bad\"\naddress = \"no where\"\n"
        );
        let e = error_of(&text, Loaded::gateway);
        assert!(
            e.contains("site-a.toml:12:") && e.contains("\"bad\""),
            "{e}"
        );
        let text = format!(
            "{GATEWAY}[[gateway.trunk]]\nname = \"ok\"\naddress = \"192.0.2.1:5060\"\n\
             [[gateway.trunk]]\nname = \"b\"\naddress = \"192.0.2.2:5060\"\ninbound_from = [\"x\"]\n"
        );
        let e = error_of(&text, Loaded::gateway);
        assert!(
            e.contains("site-a.toml:13:") && e.contains("trunk \"b\""),
            "{e}"
        );
        // A key absent from the trunk: its header line.
        let text = format!(
            "{GATEWAY}[[gateway.trunk]]\nname = \"ok\"\naddress = \"192.0.2.1:5060\"\nusername = \"u\"\npassword = \"p\"\n\
             [[gateway.trunk]]\nname = \"c\"\naddress = \"192.0.2.2:5060\"\npassword = \"p\"\n"
        );
        let e = error_of(&text, Loaded::gateway);
        assert!(
            e.contains("site-a.toml:12:") && e.contains("go together"),
            "{e}"
        );
    }

    #[test]
    fn durations_too_small_to_be_timers_are_refused_with_their_line() {
        let base = format!("{GATEWAY}min_expires = 60\n");
        let g = load(&format!("{base}db_reload_secs = 0.001\n"))
            .unwrap()
            .gateway()
            .unwrap();
        assert_eq!(g.db_reload, Duration::from_millis(1));
        // Each rounds to a zero Duration (tokio::time::interval panics) or overflows a timer.
        refused_at(
            &base,
            "site-a.toml:8:",
            &[
                (
                    "qualify_interval_secs = 1e-12",
                    "qualify_interval_secs = 0.000000000001",
                ),
                ("db_reload_secs = 0.0000001", "db_reload_secs"),
                ("media_timeout_secs = 1e-10", "media_timeout_secs"),
                ("t1_ms = 0", "t1_ms = 0"),
                ("t1_ms = 9223372036854775807", "t1_ms"),
            ],
            Loaded::gateway,
        );
        let l = load("[node]\nname = \"a\"\n[statebus]\nbackend = \"xmpp\"\njid = \"a@b\"\npassword = \"x\"\npubsub_service = \"pubsub.b\"\nkeepalive_secs = 1e-300\n").unwrap();
        let e = l.xmpp_bus().err().unwrap().to_string();
        assert!(
            e.contains("site-a.toml:8") && e.contains("keepalive_secs"),
            "{e}"
        );
    }

    #[test]
    fn timer_c_and_ring_timeout_are_configurable_and_checked_with_their_line() {
        let base = format!("{GATEWAY}min_expires = 60\n");
        let g = load(&base).unwrap().gateway().unwrap();
        assert_eq!(
            (g.timer_c, g.ring_timeout),
            (Duration::from_secs(181), None),
            "defaults: Timer C over 3 minutes, no ring limit"
        );
        let g = load(&format!("{base}timer_c_secs = 3\nring_timeout_secs = 25\n"))
            .unwrap()
            .gateway()
            .unwrap();
        assert_eq!(
            (g.timer_c, g.ring_timeout),
            (Duration::from_secs(3), Some(Duration::from_secs(25)))
        );
        let g = load(&format!("{base}ring_timeout_secs = 0\n"))
            .unwrap()
            .gateway()
            .unwrap();
        assert_eq!(g.ring_timeout, None, "0: no ring limit");
        refused_at(
            &base,
            "site-a.toml:8:",
            &[
                ("timer_c_secs = 0", "timer_c_secs"),
                ("timer_c_secs = -1", "timer_c_secs"),
                ("ring_timeout_secs = -5", "ring_timeout_secs"),
                ("ring_timeout_secs = 1e9", "ring_timeout_secs"),
            ],
            Loaded::gateway,
        );
    }

    #[test]
    fn max_contacts_is_configurable_and_bounded() {
        let base = format!("{GATEWAY}min_expires = 60\n");
        assert_eq!(load(&base).unwrap().gateway().unwrap().max_contacts, 10);
        let g = load(&format!("{base}max_contacts = 3\n"))
            .unwrap()
            .gateway()
            .unwrap();
        assert_eq!(g.max_contacts, 3);
        refused_at(
            &base,
            "site-a.toml:8:",
            &[
                ("max_contacts = 0", "max_contacts"),
                ("max_contacts = 17", "max_contacts"),
            ],
            Loaded::gateway,
        );
    }

    #[test]
    fn a_created_token_file_is_random_private_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("site.toml");
        std::fs::write(
            &p,
            "[node]\nname = \"a\"\n[http]\ntoken_file = \"admin.token\"\ncreate_token_file = true\n",
        )
        .unwrap();
        let l = Loaded::read(&p).unwrap();
        let written = l.create_token_file().unwrap().expect("written");
        let token = l.http().unwrap().unwrap().token.expect("token");
        assert_eq!(token.len(), 32);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&written).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A second start keeps it.
        assert_eq!(l.create_token_file().unwrap(), None);
        assert_eq!(l.http().unwrap().unwrap().token, Some(token));
    }

    #[test]
    fn http_section_defaults_to_loopback_and_guards_the_token() {
        let h = load("[node]\nname = \"a\"\n[http]\n")
            .unwrap()
            .http()
            .unwrap()
            .unwrap();
        assert_eq!(h.listen.to_string(), "127.0.0.1:8088");
        assert_eq!(h.token, None);
        let h = load("[node]\nname = \"a\"\n[http]\ntoken = \"0123456789abcdef\"\n")
            .unwrap()
            .http()
            .unwrap()
            .unwrap();
        assert_eq!(h.token.as_deref(), Some("0123456789abcdef"));
        refused_at(
            "[node]\nname = \"a\"\n[http]\n",
            "site-a.toml:4:",
            &[
                ("listen = \"0.0.0.0:8088\"", "not a loopback address"),
                ("token = \"short\"", "at least 16 characters"),
                ("token_file = \"missing.token\"", "cannot read token file"),
                (
                    "token_env = \"CALLFABRIC_TEST_UNSET_TOKEN\"",
                    "CALLFABRIC_TEST_UNSET_TOKEN",
                ),
                (
                    "token_env = \"X\"\ntoken = \"0123456789abcdef\"",
                    "one of token",
                ),
                ("create_token_file = true", "needs token_file"),
            ],
            Loaded::http,
        );
    }

    #[test]
    fn overload_section_is_validated_with_its_line() {
        let d = load("[node]\nname = \"a\"\n").unwrap().overload().unwrap();
        assert_eq!(d, sip_core::overload::Config::default());
        let ok = load(
            "[node]\nname = \"a\"\n[overload]\ntarget_ms = 50\nhard_delay_ms = 400\n\
             min_admit = 0.1\nretry_after_secs = 7\ninterval_ms = 200\n",
        )
        .unwrap()
        .overload()
        .unwrap();
        assert_eq!(ok.target, Duration::from_millis(50));
        assert_eq!(ok.hard_delay, Duration::from_millis(400));
        assert_eq!(ok.interval, Duration::from_millis(200));
        assert_eq!(ok.min_admit, 0.1);
        assert_eq!(ok.retry_after, 7);
        refused_at(
            "[node]\nname = \"a\"\n[overload]\n",
            "site-a.toml:4:",
            &[
                ("target_ms = 0", "target_ms = 0"),
                ("interval_ms = 600000", "interval_ms = 600000"),
                ("min_admit = 0", "min_admit = 0"),
                ("retry_after_secs = 0", "retry_after_secs = 0"),
                (
                    "hard_delay_ms = 5",
                    "hard_delay_ms (5) must not be below target_ms (20)",
                ),
            ],
            Loaded::overload,
        );
        let e = load("[node]\nname = \"a\"\n[overload]\ntarget = 3\n")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("site-a.toml:4:"), "{e}");
    }

    #[test]
    fn shutdown_section_is_validated_with_its_line() {
        let d = load("[node]\nname = \"a\"\n").unwrap().shutdown().unwrap();
        assert_eq!(d.drain, Duration::from_secs(30));
        assert_eq!(d.retry_after, 60);
        let ok = load("[node]\nname = \"a\"\n[shutdown]\ndrain_secs = 2.5\nretry_after_secs = 5\n")
            .unwrap()
            .shutdown()
            .unwrap();
        assert_eq!(ok.drain, Duration::from_millis(2500));
        assert_eq!(ok.retry_after, 5);
        refused_at(
            "[node]\nname = \"a\"\n[shutdown]\n",
            "site-a.toml:4:",
            &[
                ("drain_secs = -1", "drain_secs = -1"),
                ("retry_after_secs = 0", "retry_after_secs = 0"),
            ],
            Loaded::shutdown,
        );
        let e = load("[node]\nname = \"a\"\n[shutdown]\ndrain = 3\n")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("site-a.toml:4:"), "{e}");
    }

    #[test]
    fn presence_errors_name_file_and_line() {
        let base = "[node]\nname = \"a\"\n\n[presence]\njid = \"agents.test\"\nsecret = \"s\"\n";
        let l = load(&format!("{base}server = \"127.0.0.1:5347\"\n")).unwrap();
        let c = l.presence().unwrap().expect("a [presence] section");
        assert_eq!(c.device_prefix, "PJSIP/");
        assert!(load("[node]\nname = \"a\"\n")
            .unwrap()
            .presence()
            .unwrap()
            .is_none());
        let e = error_of(&format!("{base}server = \"nohost\"\n"), Loaded::presence);
        assert!(
            e.contains("site-a.toml:7:") && e.contains("host:port"),
            "{e}"
        );
        let e = error_of(
            &format!("{base}server = \"127.0.0.1:5347\"\nkeepalive_secs = 0\n"),
            Loaded::presence,
        );
        assert!(e.contains("site-a.toml:8:"), "{e}");
        // an unreadable subscription store: the config line and the store's own line
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("subs");
        std::fs::write(&store, "1000 boss@test\nnot-a-line\n").unwrap();
        let l = load(&format!(
            "{base}server = \"127.0.0.1:5347\"\nstore = \"{}\"\n",
            store.display()
        ))
        .unwrap();
        let cfg = l.presence().unwrap().expect("section");
        let bus: std::sync::Arc<dyn statebus::Bus> =
            std::sync::Arc::new(statebus::LocalBus::new(l.eid()));
        let e = statebus::presence::PresenceService::start(cfg, bus).unwrap_err();
        let e = l.explain_presence(&e).to_string();
        assert!(
            e.contains("site-a.toml:8:") && e.contains(&format!("{}:2:", store.display())),
            "{e}"
        );
    }

    #[test]
    fn eid_is_stable_by_default_and_explicit_when_set() {
        let a = load("[node]\nname = \"gw-a\"\n").unwrap();
        let b = load("[node]\nname = \"gw-a\"\n").unwrap();
        let c = load("[node]\nname = \"gw-b\"\n").unwrap();
        assert_eq!(a.eid(), b.eid());
        assert_ne!(a.eid(), c.eid());
        let d = load("[node]\nname = \"x\"\neid = \"00:11:22:33:44:55\"\n").unwrap();
        assert_eq!(d.eid().to_string(), "00:11:22:33:44:55");
    }

    #[test]
    fn xmpp_server_list_and_srv() {
        let base = "[node]\nname = \"a\"\n[statebus]\nbackend = \"xmpp\"\njid = \"a@fabric.test\"\npassword = \"x\"\npubsub_service = \"pubsub.fabric.test\"\n";
        // the single-address form stays valid
        let c = load(&format!("{base}server = \"127.0.0.1:5222\"\n"))
            .unwrap()
            .xmpp_bus()
            .unwrap();
        assert_eq!(c.server.as_deref(), Some("127.0.0.1:5222"));
        assert!(c.servers.is_empty());
        // a cluster: several addresses, in order
        let c = load(&format!(
            "{base}servers = [\"xmpp1.fabric.test:5222\", \"127.0.0.1:6222\"]\n"
        ))
        .unwrap()
        .xmpp_bus()
        .unwrap();
        assert_eq!(c.server, None);
        assert_eq!(c.servers, ["xmpp1.fabric.test:5222", "127.0.0.1:6222"]);
        // both forms at once, a bad address, a bad name server: errors naming the line
        let e = error_of(
            &format!("{base}server = \"127.0.0.1:1\"\nservers = [\"127.0.0.1:2\"]\n"),
            Loaded::xmpp_bus,
        );
        assert!(
            e.contains("site-a.toml:9:") && e.contains("not both"),
            "{e}"
        );
        let e = error_of(
            &format!("{base}servers = [\"127.0.0.1:2\", \"no such:x\"]\n"),
            Loaded::xmpp_bus,
        );
        assert!(
            e.contains("site-a.toml:8:") && e.contains("no such:x"),
            "{e}"
        );
        let e = error_of(
            &format!("{base}dns_servers = [\"dns.example\"]\n"),
            Loaded::xmpp_bus,
        );
        assert!(
            e.contains("site-a.toml:8:") && e.contains("dns.example"),
            "{e}"
        );
        // SRV through the given name servers
        let c = load(&format!("{base}dns_servers = [\"127.0.0.1:5353\"]\n"))
            .unwrap()
            .xmpp_bus()
            .unwrap();
        assert_eq!(c.dns_servers, ["127.0.0.1:5353".parse().unwrap()]);
        assert!(c.server.is_none() && c.servers.is_empty());
    }
}

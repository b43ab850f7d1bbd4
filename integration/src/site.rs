//! Two sites and an ACD node on one XMPP server, each its own `callfabric` process: the set-up
//! the multi-site tests share. Site A's gateway (`gw-a`: caller 1001, agent 1002) routes 800 to
//! the ACD node (`acd-1`); site B's gateway (`gw-b`: agent 2001) sends it nothing but knows the
//! ACD as a trunk (offers come from it). The ACD's config names only gw-a: it finds gw-b through
//! the fabric (the publisher of the device's state and its heartbeat's SIP address). Queue
//! `support` (number 800) has the members and strategy the test gives.
//!
//! ```no_run
//! use integration::site::{Bus, TwoSites};
//! use integration::{ServerKind, XmppServer};
//! let xmpp = XmppServer::start(ServerKind::Prosody, &["gw-a", "gw-b", "acd-1"], "secret")?;
//! let bus = Bus::new(5.0, &["gw-a", "gw-b", "acd-1"]);
//! let sites = TwoSites::new(&xmpp, &bus, "42000-42999", "", "strategy = \"linear\"\n\
//!     timeout = 10\nretry = 1\nringinuse = false\nmembers = [\"PJSIP/2001\", \"PJSIP/1002\"]");
//! let binary = integration::gateway::callfabric_binary();
//! let (gw_a, gw_b, node) = sites.start(&binary);
//! # Ok::<(), anyhow::Error>(())
//! ```

use std::path::Path;

use crate::free_udp_port;
use crate::gateway::{GatewayProcess, GatewaySpec};
use crate::xmpp_server::XmppServer;

/// How members reach the XMPP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusTls {
    /// STARTTLS, trusting the server's own CA file.
    StartTls,
    /// Plain TCP.
    Plaintext,
}

/// The `[statebus]` section shared by every member of a test fabric (password `secret`).
#[derive(Debug, Clone)]
pub struct Bus {
    /// STARTTLS or plain TCP (default STARTTLS).
    pub tls: BusTls,
    /// `heartbeat_interval_secs` (default 0.5).
    pub heartbeat_secs: f64,
    /// `liveness_ttl_secs`.
    pub ttl_secs: f64,
    /// More `[statebus]` lines (e.g. `keepalive_secs = 2`).
    pub extra: String,
    /// The users of `fabric_jids` (at the server's domain).
    pub members: Vec<String>,
}

impl Bus {
    /// STARTTLS, heartbeats every 0.5 s, liveness TTL `ttl_secs`, fabric of `members`.
    pub fn new(ttl_secs: f64, members: &[&str]) -> Bus {
        Bus {
            tls: BusTls::StartTls,
            heartbeat_secs: 0.5,
            ttl_secs,
            extra: String::new(),
            members: members.iter().map(|m| (*m).to_owned()).collect(),
        }
    }

    /// The `[statebus]` body for member `user` of a fabric on `xmpp`.
    pub fn section(&self, xmpp: &XmppServer, user: &str) -> String {
        let domain = xmpp.domain();
        let tls = match self.tls {
            BusTls::StartTls => format!(
                "tls = \"starttls\"\nca_file = {:?}\n",
                xmpp.ca_cert().display().to_string()
            ),
            BusTls::Plaintext => "tls = \"plaintext\"\n".to_owned(),
        };
        let jids = self
            .members
            .iter()
            .map(|m| format!("\"{m}@{domain}\""))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "backend = \"xmpp\"\njid = \"{user}@{domain}\"\npassword = \"secret\"\n\
             server = \"{server}\"\npubsub_service = \"{pubsub}\"\n{tls}\
             heartbeat_interval_secs = {hb}\nliveness_ttl_secs = {ttl}\n{extra}\
             fabric_jids = [{jids}]\n",
            server = xmpp.c2s_addr(),
            pubsub = xmpp.pubsub_service(),
            hb = self.heartbeat_secs,
            ttl = self.ttl_secs,
            extra = self.extra,
        )
    }
}

/// The specs of site A's and site B's gateways and of the ACD node, on free UDP ports, ready
/// to adjust (their fields are public) and [`start`](Self::start).
#[derive(Debug, Clone)]
pub struct TwoSites {
    /// Site A's gateway: devices 1001 and 1002; 800 goes to the ACD.
    pub gw_a: GatewaySpec,
    /// Site B's gateway: device 2001.
    pub gw_b: GatewaySpec,
    /// The ACD node (`callfabric acd`).
    pub acd: GatewaySpec,
}

impl TwoSites {
    /// Both gateways (qualify every 300 s: SIPp agents cannot answer OPTIONS outside their
    /// scenario) and the ACD node on `xmpp` with `bus`; the ACD relays media on `rtp_ports`
    /// (give parallel tests disjoint ranges), `acd_extra` goes into `[acd]` and `queue` into
    /// queue `support` (after its name).
    pub fn new(
        xmpp: &XmppServer,
        bus: &Bus,
        rtp_ports: &str,
        acd_extra: &str,
        queue: &str,
    ) -> TwoSites {
        let (port_a, port_b, port_acd) = (free_udp_port(), free_udp_port(), free_udp_port());
        let trunk_to_acd = |prefixes: &str| {
            format!(
                "\n[[gateway.trunk]]\nname = \"acd\"\naddress = \"127.0.0.1:{port_acd}\"\n\
                 prefixes = [{prefixes}]\n"
            )
        };
        let gateway = |name: &str, devices: &[&str], port: u16, prefixes: &str| {
            let mut s = GatewaySpec::new(name, devices);
            s.qualify_interval_secs = 300.0;
            s.udp_port = Some(port);
            s.statebus = bus.section(xmpp, name);
            s.node_extra = format!("sip_address = \"127.0.0.1:{port}\"");
            s.extra = trunk_to_acd(prefixes);
            s
        };
        let mut acd = GatewaySpec::new("acd-1", &[]);
        acd.command = "acd".into();
        acd.statebus = bus.section(xmpp, "acd-1");
        acd.extra = format!(
            r#"
[acd]
udp = "127.0.0.1:{port_acd}"
rtp_ports = "{rtp_ports}"
t1_ms = 100
{acd_extra}

[acd.numbers]
"800" = "support"

[[acd.gateway]]
name = "gw-a"
address = "127.0.0.1:{port_a}"

[[acd.queue]]
name = "support"
{queue}
"#
        );
        TwoSites {
            gw_a: gateway("gw-a", &["1001", "1002"], port_a, "\"800\""),
            gw_b: gateway("gw-b", &["2001"], port_b, ""),
            acd,
        }
    }

    /// Starts gw-a, gw-b and the ACD node (in that order), each once ready.
    pub fn start(self, binary: &Path) -> (GatewayProcess, GatewayProcess, GatewayProcess) {
        let gw_a = GatewayProcess::start(binary, self.gw_a);
        let gw_b = GatewayProcess::start(binary, self.gw_b);
        let node = GatewayProcess::start(binary, self.acd);
        (gw_a, gw_b, node)
    }
}

//! Where the XMPP servers are: a fabric member may know several nodes of a clustered XMPP
//! service, from its configuration (a list of `host:port`) or from DNS SRV
//! (`_xmpp-client._tcp.<domain>`, RFC 6120 §3.2.1, ordered as RFC 2782 says).
//!
//! * [`order_srv`] (sans-IO): RFC 2782 order (priority, then a weighted random draw).
//! * [`Rotation`] (sans-IO): which server to try first. The one we were connected to comes
//!   first (a brief cut does not move a member), then the others in their order; a server that
//!   refused the connection, timed out or failed the login is tried last for [`DOWN_FOR`]. So a
//!   member whose server dies tries it once (refused at once, or [`CONNECT_TIMEOUT`] when it
//!   drops packets) and logs in on the next node of the cluster.
//! * [`SrvResolver`] (tokio): the SRV and address lookups with `hickory-resolver`, against the
//!   given name servers (the binary passes the system's when the config names none).
//!
//! [`CONNECT_TIMEOUT`]: crate::xmpp

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::TokioResolver;

/// The XMPP client port (RFC 6120), used when the domain has no SRV record.
pub const XMPP_CLIENT_PORT: u16 = 5222;
/// How long a server that failed is tried after the others.
pub const DOWN_FOR: Duration = Duration::from_secs(30);
/// Most servers used (configured or found by SRV); what is over is dropped and logged.
pub const MAX_SERVERS: usize = 16;

/// One SRV record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Srv {
    /// Priority (lowest first).
    pub priority: u16,
    /// Weight within a priority.
    pub weight: u16,
    /// Port.
    pub port: u16,
    /// Target host.
    pub target: String,
}

/// RFC 2782 order: by priority; within a priority, a weighted random draw (`rand(n)` returns a
/// number in `0..n`), zero-weight records having a small chance only. A target of `.` ("no
/// service", RFC 6120 §3.2.1) is dropped.
pub fn order_srv(mut records: Vec<Srv>, mut rand: impl FnMut(u32) -> u32) -> Vec<Srv> {
    records.retain(|r| r.target != "." && !r.target.is_empty());
    records.sort_by_key(|r| (r.priority, r.weight != 0));
    let mut out = Vec::with_capacity(records.len());
    while !records.is_empty() {
        let prio = records[0].priority;
        let n = records.iter().take_while(|r| r.priority == prio).count();
        let mut group: Vec<Srv> = records.drain(..n).collect();
        while !group.is_empty() {
            let total: u32 = group.iter().map(|r| u32::from(r.weight)).sum();
            let pick = if total == 0 {
                0
            } else {
                let x = rand(total + 1);
                let mut sum = 0;
                group
                    .iter()
                    .position(|r| {
                        sum += u32::from(r.weight);
                        sum >= x
                    })
                    .unwrap_or(0)
            };
            out.push(group.remove(pick));
        }
    }
    out
}

/// Which server to try first (sans-IO; `now` is passed in).
#[derive(Debug, Default, Clone)]
pub struct Rotation {
    /// The server of the last connection that logged in.
    current: Option<String>,
    /// Servers that failed, until when they go last.
    down: HashMap<String, Instant>,
}

impl Rotation {
    /// A rotation with no history: `candidates` in their order.
    pub fn new() -> Self {
        Self::default()
    }

    /// The order to try `candidates` in: the current server (unless it failed since), then the
    /// others that have not failed in the last [`DOWN_FOR`], in their order, then those that
    /// did, in their order. Duplicates are tried once.
    pub fn order(&self, candidates: &[String], now: Instant) -> Vec<String> {
        let is_down = |c: &String| self.down.get(c).is_some_and(|until| *until > now);
        let mut out: Vec<String> = Vec::with_capacity(candidates.len());
        let push = |c: &String, out: &mut Vec<String>| {
            if !out.contains(c) {
                out.push(c.clone());
            }
        };
        if let Some(cur) = &self.current {
            if candidates.contains(cur) && !is_down(cur) {
                push(cur, &mut out);
            }
        }
        for c in candidates.iter().filter(|c| !is_down(c)) {
            push(c, &mut out);
        }
        for c in candidates.iter().filter(|c| is_down(c)) {
            push(c, &mut out);
        }
        out
    }

    /// A connection to `server` logged in: it becomes the current one.
    pub fn connected(&mut self, server: &str) {
        self.down.remove(server);
        self.current = Some(server.to_owned());
    }

    /// `server` refused, timed out or failed the login: tried last until `now + DOWN_FOR`.
    pub fn failed(&mut self, server: &str, now: Instant) {
        // bounded: entries past their time are dropped, and there are at most as many live
        // entries as servers were ever tried within DOWN_FOR
        self.down.retain(|_, until| *until > now);
        if self.down.len() >= 4 * MAX_SERVERS {
            self.down.clear();
        }
        self.down.insert(server.to_owned(), now + DOWN_FOR);
        if self.current.as_deref() == Some(server) {
            self.current = None;
        }
    }

    /// The server of the last successful login, if any.
    pub fn current(&self) -> Option<&str> {
        self.current.as_deref()
    }
}

/// Errors setting up or using the SRV resolver.
#[derive(Debug, thiserror::Error)]
pub enum ServersError {
    /// The resolver could not be built.
    #[error("DNS resolver: {0}")]
    Setup(String),
}

/// Looks up `_xmpp-client._tcp.<domain>` with `hickory-resolver`.
#[derive(Clone)]
pub struct SrvResolver {
    resolver: TokioResolver,
}

impl std::fmt::Debug for SrvResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SrvResolver").finish_non_exhaustive()
    }
}

impl SrvResolver {
    /// A resolver asking `servers` (UDP, TCP for truncated answers). Each query times out
    /// after `timeout`, tried twice.
    pub fn new(servers: &[SocketAddr], timeout: Duration) -> Result<Self, ServersError> {
        if servers.is_empty() {
            return Err(ServersError::Setup("no name servers".into()));
        }
        let config = ResolverConfig::from_name_servers(
            servers
                .iter()
                .map(|s| {
                    let mut ns = NameServerConfig::udp_and_tcp(s.ip());
                    for c in &mut ns.connections {
                        c.port = s.port();
                    }
                    ns
                })
                .collect(),
        );
        let mut builder =
            TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
        let opts: &mut ResolverOpts = builder.options_mut();
        opts.timeout = timeout;
        opts.attempts = 2;
        let resolver = builder
            .build()
            .map_err(|e| ServersError::Setup(e.to_string()))?;
        Ok(SrvResolver { resolver })
    }

    /// The servers of `domain` as `host:port` strings, in RFC 2782 order: the targets of
    /// `_xmpp-client._tcp.<domain>`; without SRV records (or when the lookup fails), the
    /// domain itself on 5222 (RFC 6120 §3.2.2). At most [`MAX_SERVERS`].
    pub async fn servers(&self, domain: &str) -> Vec<String> {
        let name = format!("_xmpp-client._tcp.{domain}.");
        let records = match self.resolver.lookup(name.as_str(), RecordType::SRV).await {
            Ok(lookup) => lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::SRV(s) => Some(Srv {
                        priority: s.priority,
                        weight: s.weight,
                        port: s.port,
                        target: s.target.to_string(),
                    }),
                    _ => None,
                })
                .collect(),
            Err(e) => {
                tracing::debug!(%domain, error = %e, "no SRV record for the XMPP domain");
                Vec::new()
            }
        };
        if records.is_empty() {
            return vec![format!("{domain}:{XMPP_CLIENT_PORT}")];
        }
        let mut ordered = order_srv(records, |n| rand::random_range(0..n.max(1)));
        if ordered.len() > MAX_SERVERS {
            tracing::warn!(%domain, dropped = ordered.len() - MAX_SERVERS, "too many SRV records; the lowest-ranked dropped");
            ordered.truncate(MAX_SERVERS);
        }
        ordered
            .into_iter()
            .map(|s| format!("{}:{}", s.target.trim_end_matches('.'), s.port))
            .collect()
    }

    /// The addresses of `host:port` (an IP literal needs no lookup).
    pub async fn addresses(&self, server: &str) -> Result<Vec<SocketAddr>, String> {
        if let Ok(sa) = server.parse::<SocketAddr>() {
            return Ok(vec![sa]);
        }
        let (host, port) = split_host_port(server)?;
        let lookup = self
            .resolver
            .lookup_ip(host)
            .await
            .map_err(|e| e.to_string())?;
        let addrs: Vec<SocketAddr> = lookup.iter().map(|ip| SocketAddr::new(ip, port)).collect();
        if addrs.is_empty() {
            return Err(format!("no address for {host}"));
        }
        Ok(addrs)
    }
}

/// `host:port` (`[v6]:port` too) split; the port must be given and not 0.
pub fn split_host_port(server: &str) -> Result<(&str, u16), String> {
    let (host, port) = server
        .rsplit_once(':')
        .ok_or_else(|| format!("{server:?}: no port (host:port)"))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{server:?}: bad port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("{server:?}: no host"));
    }
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn first_connection_follows_the_list() {
        let r = Rotation::new();
        let now = Instant::now();
        assert_eq!(r.order(&s(&["a:1", "b:2", "a:1"]), now), s(&["a:1", "b:2"]));
    }

    #[test]
    fn the_current_server_first_then_the_others() {
        let mut r = Rotation::new();
        let now = Instant::now();
        let list = s(&["a:1", "b:2", "c:3"]);
        r.connected("b:2");
        assert_eq!(r.order(&list, now), s(&["b:2", "a:1", "c:3"]));
        assert_eq!(r.current(), Some("b:2"));
    }

    #[test]
    fn a_failed_server_goes_last_until_down_for_passed() {
        let mut r = Rotation::new();
        let t0 = Instant::now();
        let list = s(&["a:1", "b:2", "c:3"]);
        r.connected("a:1");
        // the node dies: the reconnect tries it, it refuses
        r.failed("a:1", t0);
        assert_eq!(r.current(), None);
        assert_eq!(r.order(&list, t0), s(&["b:2", "c:3", "a:1"]));
        r.connected("b:2");
        assert_eq!(r.order(&list, t0), s(&["b:2", "c:3", "a:1"]));
        // b dies too: c, then the two failed ones in list order
        r.failed("b:2", t0 + Duration::from_secs(1));
        assert_eq!(
            r.order(&list, t0 + Duration::from_secs(1)),
            s(&["c:3", "a:1", "b:2"])
        );
        // after DOWN_FOR, a is an ordinary candidate again
        let later = t0 + DOWN_FOR + Duration::from_millis(1);
        assert_eq!(r.order(&list, later), s(&["a:1", "c:3", "b:2"]));
    }

    #[test]
    fn a_current_server_no_longer_listed_is_skipped() {
        let mut r = Rotation::new();
        r.connected("old:1");
        assert_eq!(
            r.order(&s(&["a:1", "b:2"]), Instant::now()),
            s(&["a:1", "b:2"])
        );
    }

    #[test]
    fn the_down_map_stays_bounded() {
        let mut r = Rotation::new();
        let now = Instant::now();
        for i in 0..10_000 {
            r.failed(&format!("h{i}:1"), now);
        }
        assert!(r.down.len() <= 4 * MAX_SERVERS);
    }

    #[test]
    fn srv_by_priority_then_weight() {
        let srv = |priority, weight, target: &str| Srv {
            priority,
            weight,
            port: 5222,
            target: target.into(),
        };
        let recs = vec![
            srv(20, 0, "backup"),
            srv(10, 1, "light"),
            srv(10, 0, "zero"),
            srv(10, 9, "heavy"),
            srv(5, 0, "."),
        ];
        // the draw always picks the heaviest remaining: `rand` returns n - 1
        let order: Vec<String> = order_srv(recs.clone(), |n| n - 1)
            .into_iter()
            .map(|r| r.target)
            .collect();
        assert_eq!(order, ["heavy", "light", "zero", "backup"]);
        let order: Vec<String> = order_srv(recs, |_| 0)
            .into_iter()
            .map(|r| r.target)
            .collect();
        assert_eq!(order, ["zero", "light", "heavy", "backup"]);
    }

    #[test]
    fn host_port_split() {
        assert_eq!(
            split_host_port("xmpp1.example:5222"),
            Ok(("xmpp1.example", 5222))
        );
        assert_eq!(split_host_port("[::1]:5222"), Ok(("::1", 5222)));
        assert!(split_host_port("xmpp1.example").is_err());
        assert!(split_host_port("x:0").is_err());
        assert!(split_host_port(":5222").is_err());
    }
}

//! Locating a trunk named by a domain (RFC 3263 §4, UDP): NAPTR → SRV → A/AAAA.
//!
//! * [`naptr_srv_name`] (sans-IO): the SRV name the NAPTR records of a domain point to for SIP
//!   over UDP (`SIP+D2U`, flag `s`), in order/preference order.
//! * [`order_srv`] (sans-IO): RFC 2782 ordering (priority, then weighted random).
//! * [`TrunkTargets`] (sans-IO): a trunk's resolved targets, their expiry (the smallest TTL
//!   of the records used), when to resolve again, and targets marked down after a timeout
//!   or a 503 (tried last until they expire).
//! * [`TrunkResolver`] (tokio): the lookups with `hickory-resolver`, against the given name
//!   servers (`[gateway] dns_servers`, else the system's, read by the binary). Its answer cache
//!   respects TTLs too.
//!
//! A trunk given with a port (`pbx.example:5080`) is looked up with A/AAAA only (RFC 3263
//! §4.2); without one, NAPTR first, then `_sip._udp.<domain>` SRV when no NAPTR record offers
//! SIP over UDP, then A/AAAA on port 5060.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::TokioResolver;

/// Default SIP port (RFC 3261).
pub const SIP_PORT: u16 = 5060;
/// Shortest time a resolution is kept (a TTL of 0 would resolve before every request).
pub const MIN_TTL: Duration = Duration::from_secs(1);
/// Longest time a resolution is kept, whatever the TTL.
pub const MAX_TTL: Duration = Duration::from_secs(3600);
/// How long a target that timed out or answered 503 is tried last.
pub const DOWN_FOR: Duration = Duration::from_secs(30);
/// Most addresses used per trunk (what is over is dropped).
pub const MAX_TARGETS: usize = 16;
/// Most SRV records looked at per trunk (each costs an A/AAAA lookup); what is over is
/// dropped and logged with its count.
pub const MAX_SRV: usize = 32;

/// Errors resolving a trunk's host.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The resolver could not be set up (e.g. no usable system configuration).
    #[error("DNS resolver: {0}")]
    Setup(String),
    /// No address found for the host.
    #[error("no SIP server found for {host}: {why}")]
    NotFound {
        /// The trunk's host.
        host: String,
        /// The last lookup's failure.
        why: String,
    },
}

/// One NAPTR record, as far as SIP location needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Naptr {
    /// Order (lowest first).
    pub order: u16,
    /// Preference within an order (lowest first).
    pub preference: u16,
    /// Flags (`s`: the replacement is an SRV name).
    pub flags: String,
    /// Service (`SIP+D2U`, `SIPS+D2T`, …).
    pub services: String,
    /// The replacement domain.
    pub replacement: String,
}

/// The SRV name to use for SIP over UDP among `records`: the first, by order then preference,
/// with service `SIP+D2U` and flag `s` (RFC 3263 §4.1); `None` if there is none.
pub fn naptr_srv_name(records: &[Naptr]) -> Option<String> {
    let mut v: Vec<&Naptr> = records
        .iter()
        .filter(|r| r.services.eq_ignore_ascii_case("SIP+D2U"))
        .filter(|r| r.flags.eq_ignore_ascii_case("s"))
        .filter(|r| !r.replacement.is_empty() && r.replacement != ".")
        .collect();
    v.sort_by_key(|r| (r.order, r.preference));
    v.first().map(|r| r.replacement.clone())
}

// RFC 2782 ordering is shared with the fabric's XMPP server discovery (one implementation, in
// the crate both depend on).
pub use statebus::servers::{order_srv, Srv};

/// A trunk's resolved targets (sans-IO).
#[derive(Debug, Clone, Default)]
pub struct TrunkTargets {
    /// Targets in RFC 3263 order.
    targets: Vec<SocketAddr>,
    /// When the resolution expires (the smallest TTL used).
    valid_until: Option<Instant>,
    /// Targets that failed (timeout, 503), until when.
    down: HashMap<SocketAddr, Instant>,
    /// Resolutions that failed in a row (back-off).
    failures: u32,
    /// When to resolve again.
    next_resolution: Option<Instant>,
}

impl TrunkTargets {
    /// A resolution arrived at `now`: `targets` in order, valid for `ttl` (clamped to
    /// [`MIN_TTL`]..[`MAX_TTL`]). Down marks of targets still listed are kept.
    pub fn resolved(&mut self, targets: Vec<SocketAddr>, ttl: Duration, now: Instant) {
        let ttl = ttl.clamp(MIN_TTL, MAX_TTL);
        self.targets = targets;
        self.targets.truncate(MAX_TARGETS);
        self.down.retain(|a, _| self.targets.contains(a));
        self.valid_until = Some(now + ttl);
        self.next_resolution = Some(now + ttl);
        self.failures = 0;
    }

    /// A resolution failed at `now`: the last good targets are kept (stale) and the next
    /// attempt is backed off (1 s doubling to 30 s).
    pub fn failed(&mut self, now: Instant) {
        let delay = Duration::from_secs(1 << self.failures.min(5)).min(Duration::from_secs(30));
        self.failures += 1;
        self.next_resolution = Some(now + delay);
    }

    /// When to resolve again (`None`: at once, nothing resolved yet).
    pub fn next_resolution(&self) -> Option<Instant> {
        self.next_resolution
    }

    /// Whether the resolution has expired at `now` (or none was made).
    pub fn expired(&self, now: Instant) -> bool {
        self.valid_until.is_none_or(|t| now >= t)
    }

    /// Target `addr` timed out or answered 503 at `now`: it is tried last for [`DOWN_FOR`].
    pub fn mark_down(&mut self, addr: SocketAddr, now: Instant) {
        if self.targets.contains(&addr) {
            self.down.insert(addr, now + DOWN_FOR);
        }
    }

    /// The targets to try at `now`, in order: those up in RFC 3263 order, then those marked
    /// down (in the same order). Stale targets are still returned (better than nothing).
    pub fn ordered(&self, now: Instant) -> Vec<SocketAddr> {
        let is_down = |a: &SocketAddr| self.down.get(a).is_some_and(|t| now < *t);
        let (down, up): (Vec<SocketAddr>, Vec<SocketAddr>) =
            self.targets.iter().copied().partition(is_down);
        up.into_iter().chain(down).collect()
    }

    /// Whether `addr` is one of the targets (a request from it comes from the trunk).
    pub fn contains(&self, addr: &SocketAddr) -> bool {
        self.targets.contains(addr)
    }
}

/// Looks up trunk hosts with `hickory-resolver`.
#[derive(Clone)]
pub struct TrunkResolver {
    resolver: TokioResolver,
}

impl std::fmt::Debug for TrunkResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrunkResolver").finish_non_exhaustive()
    }
}

impl TrunkResolver {
    /// A resolver asking `servers` (UDP, then TCP for truncated answers; the library reads
    /// no system file: the binary passes the system's servers when the config names none).
    /// Each query times out after `timeout`, tried twice.
    pub fn new(servers: &[SocketAddr], timeout: Duration) -> Result<Self, DnsError> {
        if servers.is_empty() {
            return Err(DnsError::Setup("no name servers".into()));
        }
        let provider = TokioRuntimeProvider::default();
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
        let mut builder = TokioResolver::builder_with_config(config, provider);
        let opts: &mut ResolverOpts = builder.options_mut();
        opts.timeout = timeout;
        opts.attempts = 2;
        let resolver = builder
            .build()
            .map_err(|e| DnsError::Setup(e.to_string()))?;
        Ok(TrunkResolver { resolver })
    }

    /// The targets of `host` (a domain) in RFC 3263 order and the smallest TTL of the
    /// records used. `port`: given with the host (then A/AAAA only).
    pub async fn resolve(
        &self,
        host: &str,
        port: Option<u16>,
    ) -> Result<(Vec<SocketAddr>, Duration), DnsError> {
        let not_found = |why: String| DnsError::NotFound {
            host: host.to_owned(),
            why,
        };
        if let Some(port) = port {
            return self.addresses(host, port).await.map_err(not_found);
        }
        let mut ttl = MAX_TTL;
        // NAPTR (RFC 3263 §4.1): where SIP over UDP lives, if the domain says so.
        let mut srv_name = format!("_sip._udp.{host}");
        if let Ok(lookup) = self.resolver.lookup(host, RecordType::NAPTR).await {
            let mut records = Vec::new();
            for r in lookup.answers() {
                if let RData::NAPTR(n) = &r.data {
                    ttl = ttl.min(Duration::from_secs(u64::from(r.ttl)));
                    records.push(Naptr {
                        order: n.order,
                        preference: n.preference,
                        flags: String::from_utf8_lossy(&n.flags).into_owned(),
                        services: String::from_utf8_lossy(&n.services).into_owned(),
                        replacement: n.replacement.to_string(),
                    });
                }
            }
            if let Some(name) = naptr_srv_name(&records) {
                srv_name = name;
            }
        }
        // SRV (§4.2), else the domain's own addresses on 5060.
        let srv = match self
            .resolver
            .lookup(srv_name.as_str(), RecordType::SRV)
            .await
        {
            Ok(lookup) => {
                let mut v = Vec::new();
                for r in lookup.answers() {
                    if let RData::SRV(s) = &r.data {
                        ttl = ttl.min(Duration::from_secs(u64::from(r.ttl)));
                        v.push(Srv {
                            priority: s.priority,
                            weight: s.weight,
                            port: s.port,
                            target: s.target.to_string(),
                        });
                    }
                }
                v
            }
            Err(_) => Vec::new(),
        };
        if srv.is_empty() {
            let (addrs, t) = self.addresses(host, SIP_PORT).await.map_err(not_found)?;
            return Ok((addrs, ttl.min(t)));
        }
        let mut targets = Vec::new();
        let mut last_error = String::new();
        let mut ordered = order_srv(srv, |n| rand::random_range(0..n.max(1)));
        if ordered.len() > MAX_SRV {
            tracing::warn!(
                %host,
                dropped = ordered.len() - MAX_SRV,
                "too many SRV records; the lowest-ranked dropped"
            );
            ordered.truncate(MAX_SRV);
        }
        for s in ordered {
            if targets.len() >= MAX_TARGETS {
                break;
            }
            match self.addresses(&s.target, s.port).await {
                Ok((addrs, t)) => {
                    ttl = ttl.min(t);
                    for a in addrs {
                        if !targets.contains(&a) {
                            targets.push(a);
                        }
                    }
                }
                Err(e) => last_error = e,
            }
        }
        if targets.is_empty() {
            return Err(not_found(last_error));
        }
        Ok((targets, ttl))
    }

    /// A/AAAA of `host` with `port`, and their smallest TTL.
    async fn addresses(
        &self,
        host: &str,
        port: u16,
    ) -> Result<(Vec<SocketAddr>, Duration), String> {
        let lookup = self
            .resolver
            .lookup_ip(host)
            .await
            .map_err(|e| e.to_string())?;
        let ttl = lookup
            .as_lookup()
            .answers()
            .iter()
            .map(|r| Duration::from_secs(u64::from(r.ttl)))
            .min()
            .unwrap_or(MIN_TTL);
        let addrs: Vec<SocketAddr> = lookup
            .iter()
            .map(|ip: IpAddr| SocketAddr::new(ip, port))
            .collect();
        if addrs.is_empty() {
            return Err(format!("no address for {host}"));
        }
        Ok((addrs, ttl))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naptr(order: u16, pref: u16, flags: &str, services: &str, repl: &str) -> Naptr {
        Naptr {
            order,
            preference: pref,
            flags: flags.into(),
            services: services.into(),
            replacement: repl.into(),
        }
    }

    #[test]
    fn naptr_picks_sip_over_udp_by_order_then_preference() {
        let records = [
            naptr(20, 10, "s", "SIP+D2U", "_sip._udp.late.example."),
            naptr(10, 50, "s", "SIP+D2U", "_sip._udp.b.example."),
            naptr(10, 10, "s", "SIPS+D2T", "_sips._tcp.a.example."),
            naptr(10, 20, "S", "sip+d2u", "_sip._udp.a.example."),
            naptr(5, 10, "u", "SIP+D2U", "!^.*$!sip:x@y!"),
        ];
        assert_eq!(
            naptr_srv_name(&records).as_deref(),
            Some("_sip._udp.a.example.")
        );
        assert_eq!(
            naptr_srv_name(&[naptr(1, 1, "s", "SIP+D2T", "_sip._tcp.x.")]),
            None
        );
        assert_eq!(naptr_srv_name(&[]), None);
    }

    fn srv(priority: u16, weight: u16, target: &str) -> Srv {
        Srv {
            priority,
            weight,
            port: 5060,
            target: target.into(),
        }
    }

    #[test]
    fn srv_by_priority_then_weight() {
        let records = vec![
            srv(20, 0, "c."),
            srv(10, 60, "a."),
            srv(10, 40, "b."),
            srv(30, 5, "."),
        ];
        let names = |v: Vec<Srv>| v.into_iter().map(|s| s.target).collect::<Vec<_>>();
        // A draw of 0..=60 picks `a` (the running sum reaches it first), above picks `b`.
        assert_eq!(
            names(order_srv(records.clone(), |_| 10)),
            ["a.", "b.", "c."]
        );
        assert_eq!(
            names(order_srv(records.clone(), |_| 90)),
            ["b.", "a.", "c."]
        );
        // Over many draws, weight 60 goes first about 60 % of the time.
        let mut seed = 12345u64;
        let mut lcg = |n: u32| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 33) as u32) % n
        };
        let firsts = (0..2000)
            .filter(|_| order_srv(records.clone(), &mut lcg)[0].target == "a.")
            .count();
        assert!((1050..1350).contains(&firsts), "{firsts}");
    }

    #[test]
    fn targets_expire_with_the_ttl_and_failed_ones_go_last() {
        let t0 = Instant::now();
        let a: SocketAddr = "192.0.2.1:5060".parse().unwrap();
        let b: SocketAddr = "192.0.2.2:5070".parse().unwrap();
        let mut t = TrunkTargets::default();
        assert!(t.expired(t0) && t.next_resolution().is_none());
        assert!(t.ordered(t0).is_empty());
        t.resolved(vec![a, b], Duration::from_secs(60), t0);
        assert!(!t.expired(t0 + Duration::from_secs(59)));
        assert!(t.expired(t0 + Duration::from_secs(60)));
        assert_eq!(t.next_resolution(), Some(t0 + Duration::from_secs(60)));
        assert_eq!(t.ordered(t0), [a, b]);
        // `a` times out: `b` first for DOWN_FOR, then `a` again.
        t.mark_down(a, t0);
        assert_eq!(t.ordered(t0 + Duration::from_secs(1)), [b, a]);
        assert_eq!(t.ordered(t0 + DOWN_FOR), [a, b]);
        // A TTL of 0 is kept for MIN_TTL; a huge one for MAX_TTL.
        t.resolved(vec![b], Duration::ZERO, t0);
        assert!(!t.expired(t0) && t.expired(t0 + MIN_TTL));
        t.resolved(vec![b], Duration::from_secs(1 << 30), t0);
        assert!(t.expired(t0 + MAX_TTL));
        // A failed resolution keeps the stale targets and backs off 1, 2, 4 … 30 s.
        for want in [1, 2, 4, 8, 16, 30, 30] {
            t.failed(t0);
            assert_eq!(t.next_resolution(), Some(t0 + Duration::from_secs(want)));
        }
        assert_eq!(t.ordered(t0), [b]);
        assert!(t.contains(&b) && !t.contains(&a));
    }
}

//! Trunks at run time: where a trunk is now (its address, or a domain trunk's targets resolved
//! by RFC 3263 and re-resolved as their TTL runs out), which listener and transport reach it,
//! and which trunk an unauthenticated INVITE comes from.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tracing::{info, warn};

use super::{Core, TrunkConfig};
use crate::transport::{self, Peer};

/// The trunk a request from `source` comes from: a trunk's exact address (IP and port), one
/// of its `inbound_from` IPs, or one of a domain trunk's resolved targets (`resolved`).
pub(super) fn identify(
    trunks: &[TrunkConfig],
    source: SocketAddr,
    resolved: impl Fn(&TrunkConfig) -> Vec<SocketAddr>,
) -> Option<&TrunkConfig> {
    trunks.iter().find(|t| {
        (t.domain.is_none() && t.address == source)
            || t.inbound_from.contains(&source.ip())
            || (t.domain.is_some() && resolved(t).contains(&source))
    })
}

/// Resolved targets of the trunks named by a domain, by trunk name.
pub(super) type TrunkDns = Arc<std::sync::Mutex<HashMap<String, crate::dns::TrunkTargets>>>;

/// Resolves trunk `name`'s `host` now and again when its TTL runs out (or, after a failure,
/// with back-off), into `dns`.
pub(super) fn spawn_trunk_dns(
    resolver: crate::dns::TrunkResolver,
    name: String,
    (host, port): (String, Option<u16>),
    dns: TrunkDns,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let result = resolver.resolve(&host, port).await;
            let now = Instant::now();
            let next = {
                let mut map = dns.lock().unwrap_or_else(|p| p.into_inner());
                let t = map.entry(name.clone()).or_default();
                match result {
                    Ok((targets, ttl)) => {
                        info!(trunk = %name, %host, ?targets, ttl_s = ttl.as_secs(), "trunk resolved");
                        t.resolved(targets, ttl, now);
                    }
                    Err(e) => {
                        warn!(trunk = %name, error = %e, "trunk not resolved; retrying");
                        t.failed(now);
                    }
                }
                t.next_resolution().unwrap_or(now + crate::dns::MIN_TTL)
            };
            tokio::time::sleep_until(next.into()).await;
        }
    })
}

impl Core {
    /// The trunk an INVITE from `source` comes from ([`identify`]).
    pub(super) fn calling_trunk(&self, source: &Peer) -> Option<&TrunkConfig> {
        identify(&self.cfg.trunks, source.addr, |t| self.trunk_addrs(t))
    }

    /// Where trunk `t` is now: its address, or a domain trunk's resolved targets in RFC 3263
    /// order (failed ones last; none before the first resolution).
    pub(super) fn trunk_addrs(&self, t: &TrunkConfig) -> Vec<SocketAddr> {
        if t.domain.is_none() {
            return vec![t.address];
        }
        let map = self.dns.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&t.name)
            .map(|d| d.ordered(Instant::now()))
            .unwrap_or_default()
    }

    /// `addr` over UDP from our first UDP listener (`fallback` when we have none): a fabric
    /// member, voicemail.
    pub(super) fn udp_peer(&self, addr: SocketAddr, fallback: SocketAddr) -> Peer {
        let local = self.transports.local_addrs().udp.first().copied();
        Peer {
            addr,
            transport: transport::Transport::Udp,
            local: local.unwrap_or(fallback),
        }
    }

    /// The listener and transport a trunk is reached over: UDP, or TLS over a new (or the
    /// existing) connection when the trunk is configured `tls`.
    pub(super) fn trunk_transport(
        &self,
        t: &TrunkConfig,
        fallback: SocketAddr,
    ) -> (SocketAddr, transport::Transport) {
        let addrs = self.transports.local_addrs();
        if t.tls.is_some() {
            let local = addrs.tls.first().copied().unwrap_or(fallback);
            // A connection id never issued: the transports open (or reuse) a TLS connection.
            (
                local,
                transport::Transport::Tls(transport::ConnectionId(u64::MAX)),
            )
        } else {
            let local = addrs.udp.first().copied().unwrap_or(fallback);
            (local, transport::Transport::Udp)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trunk(name: &str, address: &str, domain: bool, inbound_from: &[&str]) -> TrunkConfig {
        TrunkConfig {
            name: name.into(),
            address: address.parse().expect("address"),
            prefixes: vec![],
            strip: 0,
            inbound_from: inbound_from
                .iter()
                .map(|i| i.parse().expect("ip"))
                .collect(),
            credentials: None,
            register: None,
            domain: domain.then(|| ("sip.example.net".to_owned(), None)),
            tls: None,
        }
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("address")
    }

    #[test]
    fn a_trunk_is_known_by_its_address_its_inbound_ips_or_its_resolved_targets() {
        let trunks = [
            trunk("pbx", "192.0.2.10:5060", false, &["198.51.100.7"]),
            trunk("itsp", "0.0.0.0:5060", true, &[]),
        ];
        let resolved = |t: &TrunkConfig| {
            if t.name == "itsp" {
                vec![addr("203.0.113.5:5060"), addr("203.0.113.6:5080")]
            } else {
                vec![]
            }
        };
        let name = |src: &str| identify(&trunks, addr(src), resolved).map(|t| t.name.as_str());
        assert_eq!(name("192.0.2.10:5060"), Some("pbx"));
        // The address is IP and port: another port of that host is not the trunk.
        assert_eq!(name("192.0.2.10:5070"), None);
        // Any port of an inbound_from IP is.
        assert_eq!(name("198.51.100.7:40000"), Some("pbx"));
        assert_eq!(name("203.0.113.6:5080"), Some("itsp"));
        assert_eq!(name("203.0.113.6:5060"), None);
        // A domain trunk's configured address is unused.
        assert_eq!(name("0.0.0.0:5060"), None);
        assert_eq!(name("192.0.2.99:5060"), None);
    }
}

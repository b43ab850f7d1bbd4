//! The gateway's side of the fabric (issue 15): queue numbers routed to a live ACD node that
//! advertises them ([`statebus::services`]), and fabric trust (`sip_core::trust`): INVITEs
//! signed by another member are taken without digest or trunk entry, INVITEs to members are
//! signed, and what is refused is logged so an operator sees why.

use super::{unix_secs, Core};
use crate::b2bua;
use crate::sip::message::{self, Request};
use crate::sip::transaction::TransactionKey;
use crate::sip::trust::{self, TrustError};
use crate::transport::Peer;
use std::net::SocketAddr;
use std::time::Instant;
use tracing::{info, warn};

impl Core {
    /// A signed INVITE: `Some(true)` when the signature is good, `Some(false)` when it is not
    /// (403 sent, logged); `None` when it is unsigned or we have no fabric secret.
    pub(super) fn fabric_check(
        &mut self,
        key: &TransactionKey,
        req: &Request,
        source: &Peer,
        now: Instant,
    ) -> Option<bool> {
        if !trust::is_signed(req) {
            return None;
        }
        let Some(fk) = self.cfg.fabric.clone() else {
            warn!(src = %source.addr, "FABRIC a signed INVITE, but this gateway has no [fabric] secret: treated as unsigned");
            return None;
        };
        match fk.verify(req, unix_secs(), &mut self.replay) {
            Ok(by) => {
                info!(src = %source.addr, %by, "FABRIC trusted INVITE from a fabric member");
                Some(true)
            }
            Err(e) => {
                warn!(src = %source.addr, reason = e.token(), error = %e,
                    "FABRIC REFUSED an INVITE signed for the fabric: 403 (same [fabric] secret on every member? clocks in sync?)");
                let code = if matches!(e, TrustError::Overloaded) {
                    503
                } else {
                    403
                };
                let mut r = message::response_for(req, code, "");
                r.headers.push(rsip::Header::Other(
                    "Warning".into(),
                    format!("399 callfabric \"fabric trust: {}\"", e.token()),
                ));
                let _ = self.tl.send_response(key, r, now);
                Some(false)
            }
        }
    }

    /// An INVITE neither from a trunk nor signed is about to be challenged: an ACD's offer
    /// (`X-CF-Offer`) never answers a challenge, so say why it will fail.
    pub(super) fn log_unsigned_offer(&self, req: &Request, source: &Peer) {
        let offer = req.headers.iter().any(|h| {
            matches!(h, rsip::Header::Other(n, _) if n.trim().eq_ignore_ascii_case(crate::offer::HEADER))
        });
        if offer {
            warn!(src = %source.addr, has_secret = self.cfg.fabric.is_some(),
                "FABRIC REFUSED an ACD offer from a peer that is neither a trunk nor signed for the fabric: challenged (give every member the same [fabric] secret)");
        }
    }

    /// Where a queue number goes when a live fabric member advertises it: the members of our
    /// own site first (the others are standby), then EID order; the rest are fallbacks (tried
    /// on a timeout or a 503 before any provisional). `None` when nobody advertises it.
    pub(super) fn fabric_route(&self, req: &Request, source: &Peer) -> Option<b2bua::Target> {
        let dialled = req.uri.auth.as_ref().map(|a| a.user.clone())?;
        let mut providers: Vec<(bool, SocketAddr)> = self
            .bus
            .queue_providers(&dialled)
            .into_iter()
            .filter(|p| !p.local)
            .filter_map(|p| {
                let addr = p.sip.as_deref().and_then(parse_sip_addr)?;
                Some((p.site != self.cfg.site, addr))
            })
            .collect();
        providers.sort_by_key(|p| p.0);
        let mut dests = providers.into_iter().map(|(_, addr)| Peer {
            addr,
            transport: crate::transport::Transport::Udp,
            local: self
                .transports
                .local_addrs()
                .udp
                .first()
                .copied()
                .unwrap_or(source.local),
        });
        let dest = dests.next()?;
        info!(number = %dialled, node = %dest.addr, "queue number routed to a live ACD node that serves it");
        Some(b2bua::Target::Peer {
            uri: format!("sip:{dialled}@{}", dest.addr),
            dest,
            credentials: None,
            fallbacks: dests.collect(),
        })
    }
}

/// A heartbeat's SIP address: `127.0.0.1:5070`, `udp:127.0.0.1:5070` or `sip:127.0.0.1:5070`.
fn parse_sip_addr(s: &str) -> Option<SocketAddr> {
    let s = s.trim();
    let s = s
        .strip_prefix("udp:")
        .or_else(|| s.strip_prefix("sip:"))
        .unwrap_or(s);
    s.parse().ok()
}

//! The gateway's side of the fabric (issue 15): queue numbers routed to a live ACD node that
//! advertises them ([`statebus::services`]), and fabric trust (`sip_core::trust`): INVITEs
//! signed by another member are taken without digest or trunk entry, INVITEs to members are
//! signed, and what is refused is logged so an operator sees why.

use super::{unix_secs, Core};
use crate::b2bua;
use crate::sip::message::{self, Request};
use crate::sip::transaction::TransactionKey;
use crate::sip::trust::{self, JoinPlace, TrustError};
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

    /// The live fabric members that serve `number` (its SIP addresses): our own site's
    /// first (the others are standby), then EID order.
    fn providers(&self, number: &str) -> Vec<SocketAddr> {
        let mut providers: Vec<(bool, SocketAddr)> = self
            .bus
            .queue_providers(number)
            .into_iter()
            .filter(|p| !p.local)
            .filter_map(|p| {
                let addr = p.sip.as_deref().and_then(parse_sip_addr)?;
                Some((p.site != self.cfg.site, addr))
            })
            .collect();
        providers.sort_by_key(|p| p.0);
        providers.into_iter().map(|(_, a)| a).collect()
    }

    fn member_peer(&self, addr: SocketAddr, fallback: SocketAddr) -> Peer {
        self.udp_peer(addr, fallback)
    }

    /// Where a queue number goes when a live fabric member advertises it ([`Self::providers`];
    /// the rest are fallbacks, tried on a timeout or a 503 before any provisional). `None` when
    /// nobody advertises it.
    pub(super) fn fabric_route(&self, req: &Request, source: &Peer) -> Option<b2bua::Target> {
        let dialled = req.uri.auth.as_ref().map(|a| a.user.clone())?;
        let mut dests = self
            .providers(&dialled)
            .into_iter()
            .map(|a| self.member_peer(a, source.local));
        let dest = dests.next()?;
        info!(number = %dialled, node = %dest.addr, "queue number routed to a live ACD node that serves it");
        Some(b2bua::Target::Peer {
            uri: format!("sip:{dialled}@{}", dest.addr),
            dest,
            credentials: None,
            fallbacks: dests.collect(),
        })
    }

    /// The call just set up went to a fabric member for queue `number`: remember where, and
    /// when the caller joined, to move them if that node dies.
    pub(super) fn track_fabric_call(&mut self, number: String, node: SocketAddr) {
        let Some(id) = self.b2bua.newest_call() else {
            return;
        };
        let joined_ms = u64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis(),
        )
        .unwrap_or(u64::MAX);
        self.fabric_calls.insert(
            id,
            FabricCall {
                number,
                node,
                place: JoinPlace {
                    joined_ms,
                    priority: 0,
                },
            },
        );
    }

    /// No caller lost: each answered call whose ACD node no longer serves its queue number
    /// (expired: silent past the liveness TTL) is moved to a live node that does, with its
    /// original join time (`X-CF-Join`, signed); music on hold meanwhile.
    pub(super) fn move_orphans(&mut self) {
        let ids: Vec<b2bua::CallId> = self.fabric_calls.keys().copied().collect();
        for id in ids {
            if !self.b2bua.has_call(id) {
                self.fabric_calls.remove(&id);
                continue;
            }
            let calling = self.b2bua.is_calling(id);
            if !calling && !self.b2bua.is_answered(id) {
                continue;
            }
            let Some(fc) = self.fabric_calls.get(&id) else {
                continue;
            };
            let live = self.providers(&fc.number);
            if live.contains(&fc.node) {
                continue;
            }
            let Some(&next) = live.first() else {
                continue; // nobody serves it now: the caller stays where they are until one does
            };
            let (number, old, place) = (fc.number.clone(), fc.node, fc.place);
            let fallback = self.member_peer(next, next);
            let dest = self.member_peer(next, fallback.local);
            if calling {
                // Never answered by the dead node: the same INVITE goes to the next node now
                // rather than after Timer B.
                if self
                    .b2bua
                    .retarget(id, dest, Some(place), std::time::Instant::now())
                {
                    info!(call = id.0, %number, from = %old, to = %next,
                        "FABRIC RETRY the caller's ACD node died before answering: INVITE sent to a live node");
                    if let Some(fc) = self.fabric_calls.get_mut(&id) {
                        fc.node = next;
                    }
                }
                continue;
            }
            let signer = self.cfg.fabric.clone().map(|k| (k, unix_secs()));
            if self.b2bua.move_b(
                id,
                &format!("sip:{number}@{next}"),
                dest,
                Some(place),
                signer,
                &mut self.media,
                std::time::Instant::now(),
            ) {
                info!(call = id.0, %number, from = %old, to = %next, joined_ms = place.joined_ms,
                    "FABRIC MOVE the caller's ACD node died: moved to a live node with their original join time");
                if let Some(fc) = self.fabric_calls.get_mut(&id) {
                    fc.node = next;
                }
            }
        }
    }
}

/// A call routed to a fabric member (`Core::fabric_calls`).
#[derive(Debug, Clone)]
pub(super) struct FabricCall {
    number: String,
    node: SocketAddr,
    place: JoinPlace,
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

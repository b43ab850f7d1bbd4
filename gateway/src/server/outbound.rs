//! Outbound registration: the gateway's own registrations at ITSPs (`[[gateway.trunk]]` with
//! `register`), one [`OutboundRegistration`] state machine each, driven here: their REGISTERs
//! sent over the trunk's transport to its (resolved) address, their answers fed back, a
//! domain trunk's failing target tried last.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::{Core, TrunkConfig};
use crate::registrar::client::{OutboundRegistration, OutboundState};
use crate::sip::message;
use crate::sip::transaction::{self as tx, TransactionKey};
use crate::transport::{LocalAddrs, Peer};

/// The registrations at trunks and their REGISTERs in flight.
#[derive(Debug)]
pub(super) struct Outbound {
    /// (trunk name, state machine).
    pub(super) regs: Vec<(String, OutboundRegistration)>,
    /// REGISTERs in flight → index in `regs`.
    pub(super) in_flight: HashMap<TransactionKey, usize>,
    /// Where each registration's last REGISTER went (a domain trunk's target).
    pub(super) dest: HashMap<usize, SocketAddr>,
}

impl Outbound {
    /// A registration for each trunk with `register` and `credentials`, from our first UDP
    /// listener (a TLS trunk: over TLS, from our first TLS listener, when we have one); a
    /// failed one is retried after 30 s at most (30 qualify intervals when shorter).
    pub(super) fn new(
        trunks: &[TrunkConfig],
        local: &LocalAddrs,
        qualify_interval: Duration,
        now: Instant,
    ) -> Outbound {
        let regs = trunks
            .iter()
            .filter_map(|t| {
                let (domain, expires) = t.register.clone()?;
                let creds = t.credentials.clone()?;
                // A TLS trunk registers over TLS, with our TLS listener in the Contact.
                let tls = t.tls.is_some() && !local.tls.is_empty();
                let from = if tls { &local.tls } else { &local.udp };
                let reg = OutboundRegistration::new(
                    &format!("sip:{}", t.host()),
                    &domain,
                    creds,
                    from.first().copied()?,
                    expires,
                    Duration::from_secs(30).min(qualify_interval * 30),
                    now,
                );
                Some((t.name.clone(), if tls { reg.over_tls() } else { reg }))
            })
            .collect();
        Outbound {
            regs,
            in_flight: HashMap::new(),
            dest: HashMap::new(),
        }
    }

    /// The registration whose REGISTER `key` ended; `None`: not one of ours.
    pub(super) fn take(&mut self, key: &TransactionKey) -> Option<usize> {
        self.in_flight.remove(key)
    }

    /// When the next REGISTER is due.
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        self.regs.iter().filter_map(|(_, r)| r.poll_timeout()).min()
    }
}

/// RFC 3263 §4.3: a target that timed out (`None`) or answered 503 is tried last from now on.
pub(super) fn target_failed(resp: Option<&message::Response>) -> bool {
    resp.is_none_or(|r| r.status_code.code() == 503)
}

impl Core {
    /// Drives the outbound registrations: `done` is the final response (or `None`: no answer)
    /// of registration `i`'s REGISTER; then every due REGISTER is sent.
    pub(super) fn register_outbound(&mut self, done: Option<(usize, Option<message::Response>)>) {
        let now = Instant::now();
        let mut to_send = Vec::new();
        if let Some((i, resp)) = done {
            // RFC 3263 §4.3: a domain trunk's target that timed out or answered 503 is tried
            // last from now on (for a while).
            if target_failed(resp.as_ref()) {
                if let (Some(addr), Some((name, _))) =
                    (self.outbound.dest.get(&i), self.outbound.regs.get(i))
                {
                    let mut map = self.dns.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(t) = map.get_mut(name) {
                        warn!(trunk = %name, %addr, "trunk target failed; trying the next");
                        t.mark_down(*addr, now);
                    }
                }
            }
            if let Some((name, reg)) = self.outbound.regs.get_mut(i) {
                let retry = match &resp {
                    Some(r) => reg.on_response(r, now),
                    None => {
                        reg.on_timeout(now);
                        None
                    }
                };
                match reg.state() {
                    OutboundState::Registered(_) => info!(trunk = %name, "registered at the trunk"),
                    OutboundState::Unregistered => warn!(
                        trunk = %name,
                        why = reg.last_failure().unwrap_or("?"),
                        "registration at the trunk failed; retrying later"
                    ),
                    OutboundState::Pending => {}
                }
                if let Some(r) = retry {
                    to_send.push((i, r));
                }
            }
        }
        for (i, (_, reg)) in self.outbound.regs.iter_mut().enumerate() {
            if let Some(r) = reg.poll_request(now) {
                to_send.push((i, r));
            }
        }
        for (i, req) in to_send {
            let Some(t) = self
                .outbound
                .regs
                .get(i)
                .and_then(|(name, _)| self.cfg.trunks.iter().find(|t| &t.name == name))
            else {
                continue;
            };
            let Some(addr) = self.trunk_addrs(t).first().copied() else {
                debug!(trunk = %t.name, "trunk not resolved yet: REGISTER postponed");
                if let Some((_, reg)) = self.outbound.regs.get_mut(i) {
                    reg.on_timeout(now);
                }
                continue;
            };
            self.outbound.dest.insert(i, addr);
            // Over the trunk's transport: UDP, or TLS (the existing connection or a new one).
            let (local, transport) = self.trunk_transport(t, addr);
            let dest = Peer {
                addr,
                transport,
                local,
            };
            let kind = if transport.is_reliable() {
                tx::Transport::Reliable
            } else {
                tx::Transport::Unreliable
            };
            match self.tl.send_request(req, kind, dest, now) {
                Ok(key) => {
                    self.outbound.in_flight.insert(key, i);
                }
                Err(e) => {
                    warn!(error = %e, "cannot send REGISTER to the trunk");
                    if let Some((_, reg)) = self.outbound.regs.get_mut(i) {
                        reg.on_timeout(now);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registrar::client::ClientCredentials;

    fn trunk(name: &str, register: bool, credentials: bool, tls: bool) -> TrunkConfig {
        TrunkConfig {
            name: name.into(),
            address: "192.0.2.50:5060".parse().expect("address"),
            prefixes: vec![],
            strip: 0,
            inbound_from: vec![],
            credentials: credentials.then(|| ClientCredentials {
                username: "acct".into(),
                password: "pw".into(),
            }),
            register: register.then(|| ("itsp.example.net".to_owned(), 600)),
            domain: None,
            tls: tls.then(String::new),
        }
    }

    fn local() -> LocalAddrs {
        LocalAddrs {
            udp: vec!["192.0.2.1:5060".parse().expect("address")],
            tcp: vec![],
            tls: vec!["192.0.2.1:5061".parse().expect("address")],
        }
    }

    #[test]
    fn trunks_that_register_get_a_registration_from_the_right_listener() {
        let now = Instant::now();
        let trunks = [
            trunk("plain", true, true, false),
            trunk("no-register", false, true, false),
            trunk("no-credentials", true, false, false),
            trunk("secure", true, true, true),
        ];
        let mut o = Outbound::new(&trunks, &local(), Duration::from_secs(60), now);
        let names: Vec<&str> = o.regs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["plain", "secure"]);
        assert!(
            o.poll_timeout().is_some_and(|t| t <= now),
            "the first REGISTERs are due"
        );
        let text = |r: message::Request| {
            String::from_utf8_lossy(&message::serialize_request(&r)).into_owned()
        };
        let plain = text(o.regs[0].1.poll_request(now).expect("REGISTER"));
        assert!(
            plain.starts_with("REGISTER sip:192.0.2.50:5060 SIP/2.0"),
            "{plain}"
        );
        assert!(plain.contains("SIP/2.0/UDP 192.0.2.1:5060"), "{plain}");
        let secure = text(o.regs[1].1.poll_request(now).expect("REGISTER"));
        assert!(secure.contains("SIP/2.0/TLS 192.0.2.1:5061"), "{secure}");
        // Without a TLS listener a TLS trunk registers over UDP.
        let udp_only = LocalAddrs {
            tls: vec![],
            ..local()
        };
        let mut o = Outbound::new(&trunks[3..], &udp_only, Duration::from_secs(60), now);
        let r = text(o.regs[0].1.poll_request(now).expect("REGISTER"));
        assert!(r.contains("SIP/2.0/UDP 192.0.2.1:5060"), "{r}");
    }

    #[test]
    fn a_timeout_or_a_503_fails_the_target() {
        let resp = |code: u16| {
            let text = format!(
                "SIP/2.0 {code} X\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\n\
                 From: <sip:a@x>;tag=1\r\nTo: <sip:a@x>\r\nCall-ID: c\r\n\
                 CSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n"
            );
            match message::parse(text.as_bytes()) {
                Ok(message::SipMessage::Response(r)) => r,
                other => panic!("{other:?}"),
            }
        };
        assert!(target_failed(None));
        assert!(target_failed(Some(&resp(503))));
        assert!(!target_failed(Some(&resp(401))));
        assert!(!target_failed(Some(&resp(200))));
    }
}

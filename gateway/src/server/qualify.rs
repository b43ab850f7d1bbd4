//! Qualify: every registered contact gets an OPTIONS each `qualify_interval`; one that does
//! not answer (Timer F) is not rung and does not make its device available until it answers
//! again. Also where a request for a registered contact is sent ([`contact_dest`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use tracing::{debug, info, warn};

use super::Core;
use crate::sip::builder::{Local, RequestBuilder};
use crate::sip::message::{self, Method, Request};
use crate::sip::transaction::TransactionKey;
use crate::transport::Peer;

/// OPTIONS in flight and what each contact's last one showed.
#[derive(Debug, Default)]
pub(super) struct Qualify {
    /// OPTIONS in flight: transaction → (AOR, binding key).
    in_flight: HashMap<TransactionKey, (String, String)>,
    /// AOR → binding key → whether its last qualify was answered (absent: not qualified yet;
    /// restored bindings start `false` until verified, `durable.rs`).
    pub(super) marks: HashMap<String, HashMap<String, bool>>,
}

impl Qualify {
    /// Whether binding `contact` of `aor` has an OPTIONS in flight.
    pub(super) fn pending(&self, aor: &str, contact: &str) -> bool {
        self.in_flight
            .values()
            .any(|(a, c)| a == aor && c == contact)
    }

    /// Notes the OPTIONS `key` sent to binding `contact` of `aor`.
    pub(super) fn sent(&mut self, key: TransactionKey, aor: String, contact: String) {
        self.in_flight.insert(key, (aor, contact));
    }

    /// The binding whose OPTIONS `key` ended (answered or not); `None`: not a qualify.
    pub(super) fn answered(&mut self, key: &TransactionKey) -> Option<(String, String)> {
        self.in_flight.remove(key)
    }

    /// Whether binding `contact` of `aor` failed its last qualify.
    pub(super) fn failed(&self, aor: &str, contact: &str) -> bool {
        self.marks.get(aor).and_then(|m| m.get(contact)) == Some(&false)
    }

    /// Records the outcome `ok` of a qualify of binding `contact` of `aor` whose live bindings
    /// are `live` (the others are forgotten); returns the mark it had before.
    pub(super) fn mark(
        &mut self,
        aor: &str,
        contact: &str,
        ok: bool,
        live: &[String],
    ) -> Option<bool> {
        let marks = self.marks.entry(aor.to_owned()).or_default();
        let before = marks.insert(contact.to_owned(), ok);
        marks.retain(|k, _| live.contains(k));
        before
    }

    /// Forgets every mark of `aor` (it registered or unregistered: a fresh start).
    pub(super) fn forget(&mut self, aor: &str) {
        self.marks.remove(aor);
    }
}

impl Core {
    /// The bindings of `aor` that did not fail their last qualify, the newest first.
    pub(super) fn reachable_contacts(&self, aor: &str) -> Vec<&crate::registrar::Binding<Peer>> {
        self.registrar
            .contacts(aor)
            .iter()
            .rev()
            .filter(|b| !self.qualify.failed(aor, &b.key))
            .collect()
    }

    /// OPTIONS to every binding of every registered AOR.
    pub(super) fn qualify_all(&mut self) {
        let mut todo = Vec::new();
        for aor in self.registrar.location().aors() {
            for b in self.registrar.contacts(aor) {
                if !self.qualify.pending(aor, &b.key) {
                    let pending = (aor.to_owned(), b.key.clone());
                    todo.push((pending, b.uri.clone(), contact_dest(&b.uri, &b.source)));
                }
            }
        }
        for ((aor, contact), uri, dest) in todo {
            let Some(req) = self.options_request(&aor, &uri, &dest) else {
                continue;
            };
            let kind = dest.tx_transport();
            match self.tl.send_request(req, kind, dest, Instant::now()) {
                Ok(key) => self.qualify.sent(key, aor, contact),
                Err(e) => debug!(error = %e, "cannot qualify"),
            }
        }
    }

    /// The qualify OPTIONS for binding `contact` of `aor`, sent over `via` (out of dialog, from
    /// the core's random source). `None`: the contact is not a URI.
    pub(super) fn options_request(
        &mut self,
        aor: &str,
        contact: &str,
        via: &Peer,
    ) -> Option<Request> {
        let local = Local {
            transport: via.transport.via_name(),
            addr: via.local,
            prefix: "cf",
        };
        let from = format!("<sip:qualify@{}>", self.cfg.realm);
        let to = format!("<{aor}>");
        match RequestBuilder::out_of_dialog(
            &mut self.rng,
            &local,
            Method::Options,
            contact,
            &from,
            &to,
        ) {
            Ok(b) => Some(b.build()),
            Err(e) => {
                debug!(error = %e, %contact, "cannot qualify");
                None
            }
        }
    }

    /// The qualify of binding `contact` (its key) of `aor` was answered (`ok`) or not.
    pub(super) fn qualified(&mut self, aor: &str, contact: &str, ok: bool) {
        if !self.registrar.is_registered(aor) {
            return;
        }
        if ok {
            self.durable.verified(aor, contact);
        }
        // Bindings that are gone are forgotten.
        let live: Vec<String> = self
            .registrar
            .contacts(aor)
            .iter()
            .map(|b| b.key.clone())
            .collect();
        let before = self.qualify.mark(aor, contact, ok, &live);
        if before != Some(ok) {
            if ok && before == Some(false) {
                info!(%aor, %contact, "contact answers OPTIONS again");
            } else if !ok {
                warn!(%aor, %contact, "contact does not answer OPTIONS: not rung until it does");
            }
            let key = self.device_key(aor);
            self.refresh_device(&key);
        }
    }
}

/// Where to send a request for a registered contact. Over TCP: the phone's connection. Over
/// UDP: the address in the Contact when it is the very IP the REGISTER came from (the phone
/// is not behind a NAT and said where it listens), otherwise the REGISTER's source (a NAT'd
/// phone is reachable only through the pinhole its REGISTER opened; RFC 3581 symmetry).
pub(super) fn contact_dest(contact: &str, source: &Peer) -> Peer {
    if source.transport.is_reliable() {
        return source.clone();
    }
    let Some(uri) = message::parse_uri(contact) else {
        return source.clone();
    };
    let ip = match &uri.host_with_port.host {
        rsip::Host::IpAddr(ip) => *ip,
        rsip::Host::Domain(d) => match d.to_string().parse::<std::net::IpAddr>() {
            Ok(ip) => ip,
            Err(_) => return source.clone(),
        },
    };
    if ip != source.addr.ip() {
        return source.clone();
    }
    let port = uri.host_with_port.port.map(|p| *p.value()).unwrap_or(5060);
    Peer {
        addr: SocketAddr::new(ip, port),
        ..source.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::{ConnectionId, Transport};

    fn peer(addr: &str, transport: Transport) -> Peer {
        Peer {
            addr: addr.parse().expect("address"),
            transport,
            local: "192.0.2.1:5060".parse().expect("address"),
        }
    }

    #[test]
    fn requests_to_a_contact_go_where_it_can_be_reached() {
        let udp = peer("198.51.100.7:40000", Transport::Udp);
        // Not behind a NAT: the Contact's own port.
        assert_eq!(
            contact_dest("sip:2001@198.51.100.7:5062", &udp).addr,
            "198.51.100.7:5062".parse().expect("address")
        );
        assert_eq!(
            contact_dest("sip:2001@198.51.100.7", &udp).addr,
            "198.51.100.7:5060".parse().expect("address")
        );
        // Behind a NAT (the Contact names another IP): the REGISTER's source.
        assert_eq!(contact_dest("sip:2001@10.0.0.5:5060", &udp), udp);
        assert_eq!(contact_dest("sip:2001@phone.example.com", &udp), udp);
        assert_eq!(contact_dest("not a uri", &udp), udp);
        // Over TCP: the phone's connection, whatever the Contact says.
        let tcp = peer("198.51.100.7:40000", Transport::Tcp(ConnectionId(3)));
        assert_eq!(contact_dest("sip:2001@198.51.100.7:5062", &tcp), tcp);
    }

    #[test]
    fn marks_record_the_last_outcome_and_forget_bindings_gone() {
        let mut q = Qualify::default();
        let aor = "sip:2001@example.com";
        let live = ["a".to_owned(), "b".to_owned()];
        assert_eq!(q.mark(aor, "a", false, &live), None);
        assert!(q.failed(aor, "a"));
        assert!(!q.failed(aor, "b"), "never qualified is not failed");
        assert_eq!(q.mark(aor, "b", true, &live), None);
        assert_eq!(q.mark(aor, "a", true, &live), Some(false));
        assert!(!q.failed(aor, "a"));
        q.mark(aor, "b", false, &live);
        // "b" is no longer a binding: its mark goes.
        assert_eq!(q.mark(aor, "a", true, &live[..1]), Some(true));
        assert!(!q.marks[aor].contains_key("b"));
        q.forget(aor);
        assert!(!q.marks.contains_key(aor));
    }

    #[test]
    fn one_options_in_flight_per_binding() {
        let mut q = Qualify::default();
        let key = TransactionKey::client("z9hG4bK1", crate::sip::message::Method::Options);
        assert!(!q.pending("sip:a@x", "k"));
        q.sent(key.clone(), "sip:a@x".into(), "k".into());
        assert!(q.pending("sip:a@x", "k"));
        assert!(!q.pending("sip:a@x", "other"));
        assert_eq!(q.answered(&key), Some(("sip:a@x".into(), "k".into())));
        assert!(!q.pending("sip:a@x", "k"));
        assert_eq!(q.answered(&key), None);
    }
}

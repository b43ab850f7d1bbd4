//! Message waiting in the gateway process: SUBSCRIBEs (digest-authenticated as devices) and
//! the fabric's mailbox changes into the sans-IO notifier (`crate::mwi`), its NOTIFYs out
//! through the transaction layer, unsolicited NOTIFYs after every registration.

use super::{contact_dest, user_of, Core, GatewayEvent};
use crate::devices::MwiMode;
use crate::mwi::{body::Counts, Config, MwiCore, NotifyId, Target};
use crate::sip::message::{self, Request, Response};
use crate::sip::transaction::TransactionKey;
use crate::transport::Peer;
use statebus::{Bus, BusEvent, Change, Mwi};
use std::collections::HashMap;
use std::time::{Instant, SystemTime};
use tracing::{debug, info};

/// The notifier, the NOTIFYs in flight and the fabric's event feed.
pub(super) struct MwiState {
    core: MwiCore<Peer>,
    pending: HashMap<TransactionKey, NotifyId>,
    pub(super) rx: tokio::sync::broadcast::Receiver<BusEvent>,
}

impl MwiState {
    /// Subscribed to `bus` first, then seeded from its snapshot, so no change falls between.
    pub(super) fn new(realm: &str, bus: &dyn Bus) -> MwiState {
        let rx = bus.subscribe();
        let mut core = MwiCore::new(Config {
            realm: realm.to_owned(),
            ..Config::default()
        });
        let now = Instant::now();
        for (key, m) in bus.snapshot().mwi {
            core.set_mailbox(&key, counts(&m), now);
        }
        MwiState {
            core,
            pending: HashMap::new(),
            rx,
        }
    }
}

/// Urgent counts travel only in-process (Asterisk's wire format has none): a remote mailbox
/// reads urgent 0; ours carry what our voicemail said, never more than the new ones.
fn counts(m: &Mwi) -> Counts {
    Counts {
        new: m.new,
        old: m.old,
        urgent_new: m.urgent.min(m.new),
        urgent_old: 0,
    }
}

fn target(dest: Peer) -> Target<Peer> {
    Target {
        local: dest.local.to_string(),
        proto: dest.transport.via_name(),
        dest,
    }
}

impl Core {
    /// A SUBSCRIBE: authenticated as a device (407 otherwise), then the notifier decides.
    pub(super) fn on_subscribe(
        &mut self,
        key: TransactionKey,
        req: Request,
        source: Peer,
        now: Instant,
    ) {
        let auth = self.registrar.authorize(&req, SystemTime::now());
        self.auth_failures(&req, &source);
        let user = match auth {
            Ok(u) => u,
            Err(challenge) => {
                self.send_challenge(&key, challenge, &source);
                return;
            }
        };
        let name = user_of(&user.aor).to_owned();
        let Some(device) = self.devices.get(&name) else {
            let r = message::response_for(&req, 404, "Not Found");
            let _ = self.tl.send_response(&key, r, now);
            return;
        };
        if device.mwi_mode() == MwiMode::Off {
            let r = message::response_for(&req, 403, "Forbidden");
            let _ = self.tl.send_response(&key, r, now);
            return;
        }
        let mailbox = device.mailbox_key();
        let contact = req
            .headers
            .iter()
            .find_map(|h| match h {
                rsip::Header::Contact(c) => Some(rsip::headers::UntypedHeader::value(c).to_owned()),
                _ => None,
            })
            .and_then(|c| message::parse_addresses(&c, true))
            .and_then(|l| l.into_iter().next())
            .map(|a| a.uri);
        let dest = match &contact {
            Some(c) => contact_dest(c, &source),
            None => source.clone(),
        };
        let before = self.mwi.core.stats();
        let resp: Response = self
            .mwi
            .core
            .on_subscribe(&req, &name, &mailbox, target(dest), now);
        let code = resp.status_code.code();
        let after = self.mwi.core.stats();
        if after.subscribed > before.subscribed {
            info!(device = %name, %mailbox, "MWI subscription");
            self.mwi_event(&name, &mailbox, "SUBSCRIBED");
        } else if after.over_cap > before.over_cap {
            info!(device = %name, %mailbox, code, "MWI subscription refused over the cap");
            self.mwi_event(&name, &mailbox, "REFUSED");
        }
        if let Err(e) = self.tl.send_response(&key, resp, now) {
            debug!(error = %e, "SUBSCRIBE response not sent");
        }
        self.flush_notifies(now);
    }

    /// A final response (`Some`) or a timeout (`None`) for a transaction: true if it was one
    /// of our NOTIFYs.
    pub(super) fn mwi_response(&mut self, key: &TransactionKey, code: Option<u16>) -> bool {
        let Some(id) = self.mwi.pending.remove(key) else {
            return false;
        };
        let now = Instant::now();
        if let Some((device, mailbox)) = self.mwi.core.on_response(id, code, now) {
            let code = code.map_or("timeout".to_owned(), |c| c.to_string());
            info!(%code, %device, "MWI subscription ended by its NOTIFY's answer");
            self.mwi_event(&device, &mailbox, &format!("ENDED {code}"));
        }
        self.flush_notifies(now);
        true
    }

    /// A fabric event: a mailbox's counts changed (here or anywhere on the fabric).
    pub(super) fn on_mwi_bus(&mut self, ev: BusEvent) {
        let now = Instant::now();
        match ev {
            BusEvent::Changed(Change::Mwi(m)) => self.mailbox_changed(&m.key(), counts(&m), now),
            BusEvent::Lagged(_) => {
                for (key, m) in self.bus.snapshot().mwi {
                    self.mailbox_changed(&key, counts(&m), now);
                }
            }
            _ => {}
        }
    }

    fn mailbox_changed(&mut self, mailbox: &str, c: Counts, now: Instant) {
        if !self.mwi.core.set_mailbox(mailbox, c, now) {
            return;
        }
        info!(%mailbox, new = c.new, old = c.old, "MWI changed");
        // Unsolicited NOTIFYs to the registered contacts of the devices showing it.
        for user in self.devices.usernames() {
            let Some(d) = self.devices.get(&user) else {
                continue;
            };
            if d.mwi_mode() == MwiMode::Unsolicited && d.mailbox_key() == mailbox {
                self.unsolicited(&user, mailbox);
            }
        }
        self.flush_notifies(now);
    }

    fn unsolicited(&mut self, user: &str, mailbox: &str) {
        let aor = super::presence::realm_aor(user, &self.cfg.realm);
        let contacts: Vec<(String, Peer)> = self
            .registrar
            .contacts(&aor)
            .iter()
            .map(|b| (b.uri.clone(), contact_dest(&b.uri, &b.source)))
            .collect();
        for (uri, dest) in contacts {
            self.mwi.core.unsolicited(mailbox, &uri, &aor, target(dest));
        }
    }

    /// A REGISTER's 200 went out: the phone gets the current state again (unsolicited to its
    /// contacts, or on each of its subscriptions), so a lamp survives a re-registration.
    pub(super) fn mwi_after_register(&mut self, resp: &Response) {
        if let Some((user, d)) = self.mwi_device(resp) {
            self.mwi_registered(&user, &d);
        }
    }

    /// [`Core::mwi_after_register`] for `user`'s device `d`, read from the 200 before it
    /// went out ([`Core::mwi_device`]).
    pub(super) fn mwi_registered(&mut self, user: &str, d: &crate::devices::DeviceRecord) {
        let now = Instant::now();
        if d.mwi_mode() == MwiMode::Unsolicited {
            self.unsolicited(user, &d.mailbox_key());
        }
        self.mwi.core.device_registered(user, now);
        self.flush_notifies(now);
    }

    /// Whether [`Core::mwi_after_register`] has anything to do after `resp` (a register
    /// shard reports the 200 sent only then).
    pub(super) fn mwi_after_register_wanted(&self, resp: &Response) -> bool {
        self.mwi_device(resp).is_some()
    }

    /// The registered user and its device, when `resp` is a 200 with bindings for a device
    /// with message waiting on.
    pub(super) fn mwi_device(
        &self,
        resp: &Response,
    ) -> Option<(String, crate::devices::DeviceRecord)> {
        let mut to = None;
        let mut bound = false;
        for h in resp.headers.iter() {
            match h {
                rsip::Header::To(v) => to = Some(rsip::headers::UntypedHeader::value(v)),
                rsip::Header::Contact(_) => bound = true,
                _ => {}
            }
        }
        if resp.status_code.code() != 200 || !bound {
            return None;
        }
        let user = to
            .and_then(message::address_uri)
            .map(|uri| user_of(uri).to_owned())?;
        let d = self.devices.get(&user)?;
        (d.mwi_mode() != MwiMode::Off).then_some((user, d))
    }

    /// When the notifier next has a subscription to expire or a NOTIFY to retry.
    pub(super) fn mwi_deadline(&self) -> Option<Instant> {
        self.mwi.core.poll_timeout()
    }

    /// Expiry of subscriptions (called from housekeeping when due, `timers.rs`).
    pub(super) fn mwi_tick(&mut self) {
        let now = Instant::now();
        if self.mwi.core.poll_timeout().is_some_and(|t| t <= now) {
            self.mwi.core.handle_timeout(now);
            self.flush_notifies(now);
        }
    }

    /// Hands the notifier's NOTIFYs to the transaction layer.
    fn flush_notifies(&mut self, now: Instant) {
        while let Some(n) = self.mwi.core.poll_notify() {
            let kind = n.dest.tx_transport();
            match self.tl.send_request(n.request, kind, n.dest, now) {
                Ok(key) => {
                    self.mwi.pending.insert(key, n.id);
                }
                Err(e) => {
                    debug!(error = %e, "NOTIFY not sent");
                    let _ = self.mwi.core.on_response(n.id, None, now);
                }
            }
        }
    }

    fn mwi_event(&self, device: &str, mailbox: &str, what: &str) {
        let _ = self.events.send(GatewayEvent::Mwi {
            line: format!("MWI {what} {device} {mailbox}"),
        });
    }
}

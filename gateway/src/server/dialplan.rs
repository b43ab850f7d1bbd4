//! The dial plan: where a new INVITE goes by the number dialled (its Request-URI user). In
//! order: a device (the `extensions` map, a device's user name, a device's extension) rung on
//! every reachable contact; else the trunk with the longest matching prefix (configured, or
//! set at run time for a site's ACD numbers), with its leading digits stripped; else 404.
//! Supervisor feature codes (`spy.rs`), queue numbers of live ACD nodes (`fabric.rs`) and
//! voicemail (`voicemail.rs`) are tried around it by `Core::on_invite`.

use std::collections::HashMap;

use tracing::info;

use super::qualify::contact_dest;
use super::{Core, TrunkConfig};
use crate::b2bua;
use crate::devices::DeviceRecord;
use crate::sip::message::Request;
use crate::transport::Peer;

/// The device number `dialled` names: through the `extensions` map, else a user name, else an
/// extension (`get`: by user name, `by_extension`).
pub(super) fn device_for(
    extensions: &HashMap<String, String>,
    dialled: &str,
    get: impl Fn(&str) -> Option<DeviceRecord>,
    by_extension: impl Fn(&str) -> Option<DeviceRecord>,
) -> Option<DeviceRecord> {
    extensions
        .get(dialled)
        .and_then(|u| get(u))
        .or_else(|| get(dialled))
        .or_else(|| by_extension(dialled))
}

/// The trunk `dialled` goes to (longest prefix, `extra` prefixes by trunk name counting as
/// its own) and the number sent to it (its `strip` leading digits removed).
pub(super) fn trunk_for<'a, 'd>(
    trunks: &'a [TrunkConfig],
    extra: &HashMap<String, Vec<String>>,
    dialled: &'d str,
) -> Option<(&'a TrunkConfig, &'d str)> {
    let trunk = trunks
        .iter()
        .flat_map(|t| {
            let more = extra.get(&t.name).into_iter().flatten();
            t.prefixes.iter().chain(more).map(move |p| (t, p))
        })
        .filter(|(_, p)| dialled.starts_with(p.as_str()))
        .max_by_key(|(_, p)| p.len())
        .map(|(t, _)| t)?;
    Some((
        trunk,
        dialled.get(trunk.strip.min(dialled.len())..).unwrap_or(""),
    ))
}

impl Core {
    /// The device a dialled number names ([`device_for`] on the device table).
    pub(super) fn device_for(&self, dialled: &str) -> Option<DeviceRecord> {
        device_for(
            &self.cfg.extensions,
            dialled,
            |u| self.devices.get(u),
            |e| self.devices.by_extension(e),
        )
    }

    /// Where a new INVITE goes (see the module's documentation).
    pub(super) fn route(&self, req: &Request, source: &Peer) -> b2bua::Target {
        let dialled = b2bua::dialled_user(req);
        if dialled.is_empty() {
            return b2bua::Target::Reject(404);
        }
        if let Some(d) = self.device_for(&dialled) {
            // Forking: every contact that did not fail its qualify, the newest first.
            let aor = format!("sip:{}@{}", d.username, self.cfg.realm);
            let mut contacts =
                self.reachable_contacts(&aor)
                    .into_iter()
                    .map(|b| b2bua::ForkTarget {
                        contact: b.uri.clone(),
                        dest: contact_dest(&b.uri, &b.source),
                    });
            let Some(first) = contacts.next() else {
                return b2bua::Target::Reject(480);
            };
            return b2bua::Target::Device {
                device: self.device_key(&aor),
                contact: first.contact,
                dest: first.dest,
                limit: usize::try_from(d.call_limit.max(0)).unwrap_or(0),
                forks: contacts.collect(),
            };
        }
        let extra = self
            .extra_prefixes
            .read()
            .unwrap_or_else(|p| p.into_inner());
        let Some((t, number)) = trunk_for(&self.cfg.trunks, &extra, &dialled) else {
            return b2bua::Target::Reject(404);
        };
        let (local, kind) = self.trunk_transport(t, source.local);
        let mut dests = self.trunk_addrs(t).into_iter().map(|addr| Peer {
            addr,
            transport: kind,
            local,
        });
        let Some(dest) = dests.next() else {
            info!(trunk = %t.name, "trunk not resolved (yet): 503");
            return b2bua::Target::Reject(503);
        };
        b2bua::Target::Peer {
            credentials: t.credentials.clone(),
            uri: format!("sip:{number}@{}", t.host()),
            dest,
            fallbacks: dests.collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trunk(name: &str, prefixes: &[&str], strip: usize) -> TrunkConfig {
        TrunkConfig {
            name: name.into(),
            address: "192.0.2.1:5060".parse().expect("address"),
            prefixes: prefixes.iter().map(|p| p.to_string()).collect(),
            strip,
            inbound_from: vec![],
            credentials: None,
            register: None,
            domain: None,
            tls: None,
        }
    }

    fn device(user: &str, ext: &str) -> DeviceRecord {
        let mut d = DeviceRecord::with_password(user, "example.com", "secret");
        d.extension = Some(ext.to_owned());
        d
    }

    #[test]
    fn a_device_is_found_by_map_user_name_or_extension() {
        let table = [device("alice", "2001"), device("bob", "2002")];
        let get = |u: &str| table.iter().find(|d| d.username == u).cloned();
        let by_ext = |e: &str| {
            table
                .iter()
                .find(|d| d.extension.as_deref() == Some(e))
                .cloned()
        };
        let map: HashMap<String, String> = [("100".to_owned(), "bob".to_owned())].into();
        let user = |n: &str| device_for(&map, n, get, by_ext).map(|d| d.username);
        assert_eq!(user("100").as_deref(), Some("bob"));
        assert_eq!(user("alice").as_deref(), Some("alice"));
        assert_eq!(user("2001").as_deref(), Some("alice"));
        assert_eq!(user("2003"), None);
    }

    #[test]
    fn the_longest_prefix_wins_and_its_digits_are_stripped() {
        let trunks = [trunk("national", &["0"], 1), trunk("mobile", &["07"], 0)];
        let none = HashMap::new();
        let pick = |n: &'static str, extra: &HashMap<String, Vec<String>>| {
            trunk_for(&trunks, extra, n).map(|(t, number)| (t.name.clone(), number))
        };
        assert_eq!(pick("0301234", &none), Some(("national".into(), "301234")));
        assert_eq!(pick("07700900", &none), Some(("mobile".into(), "07700900")));
        assert_eq!(pick("4711", &none), None);
        // Stripping more digits than dialled leaves an empty number, never a panic.
        let short = [trunk("t", &["9"], 5)];
        assert_eq!(trunk_for(&short, &none, "9").map(|(_, n)| n), Some(""));
    }

    #[test]
    fn run_time_prefixes_route_like_configured_ones() {
        let trunks = [trunk("national", &["0"], 1), trunk("acd", &[], 0)];
        let extra: HashMap<String, Vec<String>> =
            [("acd".to_owned(), vec!["600".to_owned(), "0600".to_owned()])].into();
        let pick =
            |n: &'static str| trunk_for(&trunks, &extra, n).map(|(t, n)| (t.name.clone(), n));
        assert_eq!(pick("600"), Some(("acd".into(), "600")));
        assert_eq!(pick("06001"), Some(("acd".into(), "06001")));
        assert_eq!(pick("0700"), Some(("national".into(), "700")));
    }
}

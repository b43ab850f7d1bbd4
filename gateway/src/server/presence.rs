//! Device presence: one state per device from its registrations, their qualify and its calls,
//! published on the state bus when it changes.

use std::collections::HashMap;

use statebus::DeviceState;
use tracing::info;

use super::Core;

/// A device's state: what its calls make it while it is in one (`in_call`: the B2BUA's view;
/// a phone can call without being registered); otherwise NOT_INUSE with a registered contact
/// that did not fail its qualify (`reachable`), UNAVAILABLE without.
pub(super) fn state(in_call: Option<DeviceState>, reachable: bool) -> DeviceState {
    match in_call {
        Some(s) => s,
        None if reachable => DeviceState::NotInUse,
        None => DeviceState::Unavailable,
    }
}

/// `sip:<user>@<realm>` (the AOR of a user of this registrar), built without `format!`: it runs
/// several times per REGISTER.
pub(super) fn realm_aor(user: &str, realm: &str) -> String {
    let mut aor = String::with_capacity(5 + user.len() + realm.len());
    aor.push_str("sip:");
    aor.push_str(user);
    aor.push('@');
    aor.push_str(realm);
    aor
}

/// The user part of an AOR (`sip:2001@example.com` → `2001`).
pub(super) fn user_of(aor: &str) -> &str {
    aor.split_once(':')
        .map(|(_, r)| r.split('@').next().unwrap_or(r))
        .unwrap_or(aor)
}

/// The state last published for each device key.
#[derive(Debug, Default)]
pub(super) struct Published(HashMap<String, DeviceState>);

impl Published {
    /// Records `state` for `key` and says whether to publish it: not when unchanged, nor an
    /// UNAVAILABLE for a device never announced (nothing to withdraw).
    pub(super) fn change(&mut self, key: &str, state: DeviceState) -> bool {
        if self.0.get(key) == Some(&state) {
            return false;
        }
        if state == DeviceState::Unavailable && !self.0.contains_key(key) {
            return false;
        }
        self.0.insert(key.to_owned(), state);
        true
    }

    /// Records `state` for `key` as published (at start and at shutdown, unconditionally).
    pub(super) fn set(&mut self, key: &str, state: DeviceState) {
        self.0.insert(key.to_owned(), state);
    }

    /// The devices published as anything but UNAVAILABLE.
    pub(super) fn available(&self) -> Vec<String> {
        self.0
            .iter()
            .filter(|(_, s)| **s != DeviceState::Unavailable)
            .map(|(k, _)| k.clone())
            .collect()
    }
}

impl Core {
    pub(super) fn device_key(&self, aor: &str) -> String {
        let user = user_of(aor);
        let mut key = String::with_capacity(self.cfg.device_prefix.len() + user.len());
        key.push_str(&self.cfg.device_prefix);
        key.push_str(user);
        key
    }

    /// Publishes a device's state if it changed: what its calls make it while it is in a call
    /// (a phone can call without being registered); otherwise NOT_INUSE with a live, reachable
    /// contact and UNAVAILABLE without.
    pub(super) fn refresh_device(&mut self, key: &str) {
        let Some(user) = key.strip_prefix(self.cfg.device_prefix.as_str()) else {
            return;
        };
        let aor = realm_aor(user, &self.cfg.realm);
        let in_call = (self.b2bua.calls_of(key) > 0).then(|| self.b2bua.device_state(key));
        // A reachable contact is a binding, so this is "registered with a reachable contact"
        // (one look-up, nothing collected).
        let reachable = self
            .registrar
            .contacts(&aor)
            .iter()
            .any(|b| !self.qualify.failed(&aor, &b.key));
        let state = state(in_call, reachable);
        if !self.published.change(key, state) {
            return;
        }
        info!(%key, %state, "device state");
        self.bus.publish_device_state(key, state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_win_then_reachability() {
        assert_eq!(state(Some(DeviceState::InUse), false), DeviceState::InUse);
        assert_eq!(
            state(Some(DeviceState::Ringing), true),
            DeviceState::Ringing
        );
        assert_eq!(state(None, true), DeviceState::NotInUse);
        assert_eq!(state(None, false), DeviceState::Unavailable);
    }

    #[test]
    fn only_changes_are_published_and_never_a_withdrawal_of_the_unknown() {
        let mut p = Published::default();
        assert!(
            !p.change("PJSIP/2001", DeviceState::Unavailable),
            "never announced"
        );
        assert!(p.change("PJSIP/2001", DeviceState::NotInUse));
        assert!(!p.change("PJSIP/2001", DeviceState::NotInUse), "unchanged");
        assert!(p.change("PJSIP/2001", DeviceState::InUse));
        assert_eq!(p.available(), vec!["PJSIP/2001".to_owned()]);
        assert!(p.change("PJSIP/2001", DeviceState::Unavailable));
        assert!(p.available().is_empty());
        // Announced UNAVAILABLE at start: later changes publish as usual.
        p.set("PJSIP/2002", DeviceState::Unavailable);
        assert!(!p.change("PJSIP/2002", DeviceState::Unavailable));
        assert!(p.change("PJSIP/2002", DeviceState::NotInUse));
    }

    #[test]
    fn the_user_of_an_aor() {
        assert_eq!(user_of("sip:2001@example.com"), "2001");
        assert_eq!(user_of("sip:2001"), "2001");
        assert_eq!(user_of("2001"), "2001");
    }
}

//! Device state from calls, as Asterisk's chan_pjsip computes it: each call a device takes part
//! in is a channel with a state (ringing, in use, on hold); the device's state is the
//! aggregate of its channels (`ast_devstate_aggregate`: RINGING together with INUSE/ONHOLD
//! gives RINGINUSE), BUSY once the number of calls reaches the device's limit
//! (`device_state_busy_at`), and NOT_INUSE with no call. Registration (UNAVAILABLE when no
//! contact is live) is combined on top of this by the gateway.

use std::collections::HashMap;

use statebus::{Aggregate, DeviceState};

use super::CallId;

/// The state of one device's part in one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// The device is being called (alerting).
    Ringing,
    /// The device is dialling or talking.
    InUse,
    /// The device has put the call on hold.
    OnHold,
}

impl Channel {
    fn state(self) -> DeviceState {
        match self {
            Channel::Ringing => DeviceState::Ringing,
            Channel::InUse => DeviceState::InUse,
            Channel::OnHold => DeviceState::OnHold,
        }
    }
}

/// Channels per device.
#[derive(Debug, Default)]
pub struct DeviceCalls {
    devices: HashMap<String, Vec<(CallId, Channel)>>,
}

impl DeviceCalls {
    /// Sets `device`'s channel in `call`; returns true if the channel changed.
    pub fn set(&mut self, device: &str, call: CallId, ch: Channel) -> bool {
        let list = self.devices.entry(device.to_owned()).or_default();
        match list.iter_mut().find(|(c, _)| *c == call) {
            Some((_, old)) if *old == ch => false,
            Some((_, old)) => {
                *old = ch;
                true
            }
            None => {
                list.push((call, ch));
                true
            }
        }
    }

    /// Removes `device`'s channel in `call`; returns true if there was one.
    pub fn remove(&mut self, device: &str, call: CallId) -> bool {
        let Some(list) = self.devices.get_mut(device) else {
            return false;
        };
        let before = list.len();
        list.retain(|(c, _)| *c != call);
        let removed = list.len() != before;
        if list.is_empty() {
            self.devices.remove(device);
        }
        removed
    }

    /// Number of calls `device` is in.
    pub fn count(&self, device: &str) -> usize {
        self.devices.get(device).map_or(0, Vec::len)
    }

    /// The device's state from its calls; `busy_at` (0: never) makes it BUSY at that many
    /// calls. NOT_INUSE with no call.
    pub fn state(&self, device: &str, busy_at: usize) -> DeviceState {
        let Some(list) = self.devices.get(device) else {
            return DeviceState::NotInUse;
        };
        if busy_at > 0 && list.len() >= busy_at {
            return DeviceState::Busy;
        }
        Aggregate::of(list.iter().map(|(_, ch)| ch.state()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregates_like_asterisk() {
        let mut d = DeviceCalls::default();
        assert_eq!(d.state("PJSIP/1", 0), DeviceState::NotInUse);
        assert!(d.set("PJSIP/1", CallId(1), Channel::Ringing));
        assert!(!d.set("PJSIP/1", CallId(1), Channel::Ringing));
        assert_eq!(d.state("PJSIP/1", 0), DeviceState::Ringing);
        d.set("PJSIP/1", CallId(2), Channel::InUse);
        assert_eq!(d.state("PJSIP/1", 0), DeviceState::RingInUse);
        assert_eq!(d.state("PJSIP/1", 2), DeviceState::Busy);
        d.set("PJSIP/1", CallId(1), Channel::OnHold);
        assert_eq!(d.state("PJSIP/1", 0), DeviceState::InUse);
        d.remove("PJSIP/1", CallId(2));
        assert_eq!(d.state("PJSIP/1", 0), DeviceState::OnHold);
        assert!(d.remove("PJSIP/1", CallId(1)));
        assert!(!d.remove("PJSIP/1", CallId(1)));
        assert_eq!(d.count("PJSIP/1"), 0);
        assert_eq!(d.state("PJSIP/1", 1), DeviceState::NotInUse);
    }
}

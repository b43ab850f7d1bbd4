//! In-process bus for a single site with no XMPP server.

use crate::bus::Core;
use crate::{Bus, BusEvent, Change, DeviceState, Eid, Mwi, Snapshot, StateCache, WaitingCaller};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, watch};

/// A bus whose only member is this process: the aggregate is the local state.
#[derive(Debug, Clone)]
pub struct LocalBus {
    eid: Eid,
    core: Arc<Core>,
}

impl LocalBus {
    /// A new, empty bus for the node `eid`.
    pub fn new(eid: Eid) -> Self {
        LocalBus {
            eid,
            core: Core::new(StateCache::new(eid, Duration::MAX)),
        }
    }
}

impl Bus for LocalBus {
    fn eid(&self) -> Eid {
        self.eid
    }

    fn publish_device_state_full(&self, key: &str, state: DeviceState, cachable: bool) {
        let change = if cachable {
            self.core.cache().set_local_device(key, state)
        } else {
            Some(Change::Device {
                key: key.to_string(),
                state,
            })
        };
        if let Some(c) = change {
            self.core.emit(c);
        }
    }

    fn publish_mwi(&self, mwi: Mwi) {
        let change = self.core.cache().set_local_mwi(mwi);
        if let Some(c) = change {
            self.core.emit(c);
        }
    }

    fn subscribe(&self) -> broadcast::Receiver<BusEvent> {
        self.core.subscribe()
    }

    fn snapshot(&self) -> Snapshot {
        self.core.cache().snapshot()
    }

    fn device_state(&self, key: &str) -> Option<DeviceState> {
        self.core.cache().device(key)
    }

    fn device_detail(&self, key: &str) -> Vec<(Eid, DeviceState)> {
        self.core.cache().device_detail(key)
    }

    fn advertise_queues(&self, numbers: &[String]) {
        self.core.set_queues(numbers);
    }

    fn queue_providers(&self, number: &str) -> Vec<crate::QueueProvider> {
        self.core.queue_providers(number)
    }

    fn publish_waiting(&self, caller: WaitingCaller) {
        self.core.waiting().set_local(caller);
        self.core.waiting_changed();
    }

    fn withdraw_waiting(&self, queue: &str, caller: &str) {
        let gone = self.core.waiting().remove_local(self.eid, queue, caller);
        if gone.is_some() {
            self.core.waiting_changed();
        }
    }

    fn waiting(&self) -> Vec<WaitingCaller> {
        self.core.waiting_all()
    }

    fn waiting_changes(&self) -> Option<watch::Receiver<u64>> {
        Some(self.core.waiting_changes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn publishes_reach_subscribers_only_on_change() {
        let bus = LocalBus::new(Eid([2, 0, 0, 0, 0, 1]));
        let mut rx = bus.subscribe();
        bus.publish_device_state("PJSIP/1000", DeviceState::InUse);
        bus.publish_device_state("PJSIP/1000", DeviceState::InUse);
        bus.publish_device_state("PJSIP/1000", DeviceState::NotInUse);
        bus.publish_mwi(Mwi::new("1000", "default", 1, 0));
        let want = [
            BusEvent::Changed(Change::Device {
                key: "PJSIP/1000".into(),
                state: DeviceState::InUse,
            }),
            BusEvent::Changed(Change::Device {
                key: "PJSIP/1000".into(),
                state: DeviceState::NotInUse,
            }),
            BusEvent::Changed(Change::Mwi(Mwi::new("1000", "default", 1, 0))),
        ];
        for w in want {
            assert_eq!(rx.recv().await.unwrap(), w);
        }
        assert!(rx.try_recv().is_err());
        assert_eq!(bus.device_state("PJSIP/1000"), Some(DeviceState::NotInUse));
        assert_eq!(bus.snapshot().mwi["1000@default"].new, 1);
    }

    #[test]
    fn advertised_queues_make_this_process_their_provider() {
        let bus = LocalBus::new(Eid([2, 0, 0, 0, 0, 1]));
        assert!(bus.queue_providers("800").is_empty());
        bus.advertise_queues(&["800".into(), "bad number".into()]);
        let p = bus.queue_providers("800");
        assert!(p.len() == 1 && p[0].local && p[0].eid == bus.eid(), "{p:?}");
        assert!(bus.queue_providers("bad number").is_empty());
        bus.advertise_queues(&[]);
        assert!(bus.queue_providers("800").is_empty());
    }
}

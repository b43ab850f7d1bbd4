//! The [`Bus`] trait: what gateways and ACD nodes see of the state fabric.

use crate::waiting::WaitingTable;
use crate::{Change, DeviceState, Eid, Mwi, QueueProvider, Snapshot, StateCache, WaitingCaller};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{broadcast, watch};

/// What a subscriber receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusEvent {
    /// An aggregate changed (or a peer came up or expired).
    Changed(Change),
    /// The connection to the fabric went up or down. After `Online`, a snapshot is consistent
    /// with the server again.
    Status(BusStatus),
    /// This subscriber fell behind and lost events; it should resynchronise from
    /// [`Bus::snapshot`]. (Produced by [`recv`], not sent by buses.)
    Lagged(u64),
}

/// Connection status of a bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusStatus {
    /// Connected; nodes ensured, subscriptions renewed, local state republished.
    Online,
    /// Not connected; local publishes are kept and sent on reconnect.
    Offline,
}

/// The state fabric, as its users see it. All methods are non-blocking: a publish updates the
/// local cache at once and is carried to the fabric in the background, coalesced per key (last
/// state wins; nothing older is ever sent after something newer).
pub trait Bus: Send + Sync {
    /// This node's EID.
    fn eid(&self) -> Eid;
    /// Publish a cachable device state for a local device.
    fn publish_device_state(&self, key: &str, state: DeviceState) {
        self.publish_device_state_full(key, state, true)
    }
    /// Publish a device state; non-cachable states are sent once and not republished.
    fn publish_device_state_full(&self, key: &str, state: DeviceState, cachable: bool);
    /// Publish a local mailbox's counts.
    fn publish_mwi(&self, mwi: Mwi);
    /// Receive aggregate changes from now on.
    fn subscribe(&self) -> broadcast::Receiver<BusEvent>;
    /// Everything known now (aggregates).
    fn snapshot(&self) -> Snapshot;
    /// The aggregate state of one device.
    fn device_state(&self, key: &str) -> Option<DeviceState>;
    /// The per-EID states of one device: which members publish it (an ACD finds the gateway
    /// that holds an agent's registration through this and the members' heartbeats).
    fn device_detail(&self, key: &str) -> Vec<(Eid, DeviceState)>;
    /// Advertise the queue numbers this member serves (replacing what it advertised before);
    /// carried in its heartbeat, so they live as long as it does ([`crate::services`]).
    fn advertise_queues(&self, numbers: &[String]);
    /// The live members that serve queue `number`: this process first if it does, then the
    /// others in EID order ([`crate::services::providers`]).
    fn queue_providers(&self, number: &str) -> Vec<QueueProvider>;
    /// Publish (or update) a caller waiting at this member ([`crate::waiting`]). A bus
    /// without waiting records ignores it.
    fn publish_waiting(&self, _caller: WaitingCaller) {}
    /// Withdraw this member's record of a caller that left `queue`.
    fn withdraw_waiting(&self, _queue: &str, _caller: &str) {}
    /// Every waiting record known now: this member's and those of live members.
    fn waiting(&self) -> Vec<WaitingCaller> {
        Vec::new()
    }
    /// Ticks whenever [`Bus::waiting`] may have changed (a record, or a member's liveness);
    /// `None` for a bus without waiting records.
    fn waiting_changes(&self) -> Option<watch::Receiver<u64>> {
        None
    }
    /// The publish → notify delay between members this bus bounds: an ACD node lets a new
    /// caller wait this long before offering it an agent, so that an earlier caller at another
    /// node is heard of first. Zero for a bus with no other members.
    fn settle(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}

/// Receive the next event, turning a lag into [`BusEvent::Lagged`]; `None` when the bus is gone.
pub async fn recv(rx: &mut broadcast::Receiver<BusEvent>) -> Option<BusEvent> {
    match rx.recv().await {
        Ok(ev) => Some(ev),
        Err(broadcast::error::RecvError::Lagged(n)) => Some(BusEvent::Lagged(n)),
        Err(broadcast::error::RecvError::Closed) => None,
    }
}

/// State shared by both bus backends: the cache and the event fan-out.
#[derive(Debug)]
pub(crate) struct Core {
    cache: Mutex<StateCache>,
    events: broadcast::Sender<BusEvent>,
    /// The queue numbers this member advertises.
    queues: Mutex<Vec<String>>,
    waiting: Mutex<WaitingTable>,
    waiting_tick: watch::Sender<u64>,
}

impl Core {
    pub(crate) fn new(cache: StateCache) -> Arc<Core> {
        let (events, _) = broadcast::channel(4096);
        Arc::new(Core {
            cache: Mutex::new(cache),
            events,
            queues: Mutex::new(Vec::new()),
            waiting: Mutex::new(WaitingTable::new()),
            waiting_tick: watch::channel(0).0,
        })
    }

    pub(crate) fn cache(&self) -> MutexGuard<'_, StateCache> {
        // A poisoned lock means a panic elsewhere while holding it; the cache itself is still
        // consistent (every mutation is a single insert), so keep serving.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the advertised queue numbers (bounded: [`crate::services::sanitize`]); whether
    /// they changed.
    pub(crate) fn set_queues(&self, numbers: &[String]) -> bool {
        let new = crate::services::sanitize(numbers.iter().map(String::as_str));
        let mut q = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let changed = *q != new;
        *q = new;
        changed
    }

    /// The advertised queue numbers.
    pub(crate) fn queues(&self) -> Vec<String> {
        self.queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The live providers of `number` (see [`Bus::queue_providers`]).
    pub(crate) fn queue_providers(&self, number: &str) -> Vec<QueueProvider> {
        let own = self.queues();
        let cache = self.cache();
        crate::services::providers((cache.own_eid(), &own), cache.peers(), number)
    }

    pub(crate) fn emit(&self, change: Change) {
        let _ = self.events.send(BusEvent::Changed(change));
    }

    pub(crate) fn emit_all(&self, changes: impl IntoIterator<Item = Change>) {
        for c in changes {
            self.emit(c);
        }
    }

    pub(crate) fn status(&self, s: BusStatus) {
        let _ = self.events.send(BusEvent::Status(s));
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<BusEvent> {
        self.events.subscribe()
    }

    pub(crate) fn waiting(&self) -> MutexGuard<'_, WaitingTable> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tell [`Bus::waiting_changes`] subscribers to read the records again.
    pub(crate) fn waiting_changed(&self) {
        self.waiting_tick.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub(crate) fn waiting_changes(&self) -> watch::Receiver<u64> {
        self.waiting_tick.subscribe()
    }

    /// Every record: ours, and those of members not expired.
    pub(crate) fn waiting_all(&self) -> Vec<WaitingCaller> {
        let cache = self.cache();
        self.waiting().all(|e| !cache.is_expired(e))
    }
}

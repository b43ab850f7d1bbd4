//! The per-(key, EID) state cache with Asterisk's cross-server aggregate, plus peer liveness.
//!
//! Sans-IO: time is passed in as `now`, so TTL expiry is tested in virtual time.

use crate::{Aggregate, DeviceState, Eid, Mwi};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// A fabric member's liveness announcement, published to the heartbeat node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// The member's EID (also the item id).
    pub eid: Eid,
    /// Site name, e.g. `a`.
    pub site: String,
    /// `gateway`, `acd`, `site`, `watch`, ...
    pub role: String,
    /// Software version.
    pub version: String,
    /// Wall-clock time of the beat, seconds since the Unix epoch.
    pub time: u64,
    /// Optional SIP address of this member (gateways), so ACD nodes can route to it.
    pub sip: Option<String>,
    /// Queue numbers this member serves (ACD nodes; [`crate::services`]).
    pub queues: Vec<String>,
}

/// Something a subscriber should hear about: only aggregate changes are reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The aggregate state of a device changed.
    Device {
        /// Device key, e.g. `PJSIP/1000`.
        key: String,
        /// The new aggregate.
        state: DeviceState,
    },
    /// A mailbox's counts changed.
    Mwi(Mwi),
    /// A fabric member was heard for the first time, or again after it had expired.
    PeerUp(Heartbeat),
    /// A fabric member stayed silent past the TTL; its devices now read UNAVAILABLE.
    PeerExpired(Eid),
}

#[derive(Debug, Default)]
struct DeviceEntry {
    /// The latest state each EID published, kept as published even while the EID is expired
    /// (it counts as UNAVAILABLE then), so a revived member reads its latest state at once.
    per_eid: BTreeMap<Eid, DeviceState>,
    aggregate: Option<DeviceState>,
}

/// What one EID's entry counts as: UNAVAILABLE while the member is expired.
fn effective(peers: &HashMap<Eid, Peer>, eid: Eid, state: DeviceState) -> DeviceState {
    match peers.get(&eid) {
        Some(p) if p.expired => DeviceState::Unavailable,
        _ => state,
    }
}

impl DeviceEntry {
    fn recompute(&mut self, peers: &HashMap<Eid, Peer>) -> Option<DeviceState> {
        let agg = Aggregate::of(
            self.per_eid
                .iter()
                .map(|(eid, st)| effective(peers, *eid, *st)),
        );
        if self.aggregate != Some(agg) {
            self.aggregate = Some(agg);
            Some(agg)
        } else {
            None
        }
    }
}

#[derive(Debug, Default)]
struct MwiEntry {
    per_eid: BTreeMap<Eid, Mwi>,
    latest: Option<Mwi>,
}

#[derive(Debug)]
struct Peer {
    info: Heartbeat,
    last_heard: Instant,
    expired: bool,
}

/// A consistent copy of everything the cache knows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Aggregate state per device key.
    pub devices: BTreeMap<String, DeviceState>,
    /// Latest counts per mailbox key.
    pub mwi: BTreeMap<String, Mwi>,
    /// Known fabric members and whether each is alive.
    pub peers: BTreeMap<Eid, (Heartbeat, bool)>,
}

/// Per-(key, EID) device and MWI state, folded into one aggregate per key.
#[derive(Debug)]
pub struct StateCache {
    own: Eid,
    ttl: Duration,
    devices: HashMap<String, DeviceEntry>,
    mwi: HashMap<String, MwiEntry>,
    peers: HashMap<Eid, Peer>,
    /// (key, EID) pairs held: about one server item each ([`StateCache::item_counts`]).
    device_items: usize,
    mwi_items: usize,
}

impl StateCache {
    /// A cache for the node `own`; members silent for longer than `ttl` are expired.
    pub fn new(own: Eid, ttl: Duration) -> Self {
        StateCache {
            own,
            ttl,
            devices: HashMap::new(),
            mwi: HashMap::new(),
            peers: HashMap::new(),
            device_items: 0,
            mwi_items: 0,
        }
    }

    /// This node's EID.
    pub fn own_eid(&self) -> Eid {
        self.own
    }

    /// Record a local device state. Returns the change of the aggregate, if any.
    pub fn set_local_device(&mut self, key: &str, state: DeviceState) -> Option<Change> {
        let own = self.own;
        self.set_device(own, key, state)
    }

    /// Record a device state heard from `eid`. Own echoes are dropped. A non-cachable state
    /// is not stored and is passed on as the aggregate directly (as Asterisk does).
    pub fn set_remote_device(
        &mut self,
        eid: Eid,
        key: &str,
        state: DeviceState,
        cachable: bool,
        now: Instant,
    ) -> Option<Change> {
        if eid == self.own {
            return None;
        }
        let expired = self.heard(eid, now);
        if !cachable {
            return (!expired).then(|| Change::Device {
                key: key.to_string(),
                state,
            });
        }
        // Stored as published; it counts as UNAVAILABLE until a fresh heartbeat revives the
        // member (see `heard`).
        self.set_device(eid, key, state)
    }

    /// Record a device state read back from the server's items on (re)connect. It proves
    /// nothing about the publisher's liveness: if the publisher is an expired member, the
    /// entry counts as UNAVAILABLE until a fresh heartbeat revives it.
    pub fn set_fetched_device(
        &mut self,
        eid: Eid,
        key: &str,
        state: DeviceState,
    ) -> Option<Change> {
        if eid == self.own {
            return None;
        }
        self.set_device(eid, key, state)
    }

    /// Record mailbox counts read back from the server's items (no liveness effect).
    pub fn set_fetched_mwi(&mut self, eid: Eid, mwi: Mwi) -> Option<Change> {
        if eid == self.own {
            return None;
        }
        self.set_mwi(eid, mwi)
    }

    fn set_device(&mut self, eid: Eid, key: &str, state: DeviceState) -> Option<Change> {
        let entry = self.devices.entry(key.to_string()).or_default();
        if entry.per_eid.insert(eid, state).is_none() {
            self.device_items += 1;
        }
        entry.recompute(&self.peers).map(|state| Change::Device {
            key: key.to_string(),
            state,
        })
    }

    /// Record this node's own mailbox counts.
    pub fn set_local_mwi(&mut self, mwi: Mwi) -> Option<Change> {
        let own = self.own;
        self.set_mwi(own, mwi)
    }

    /// Record mailbox counts heard from `eid` (own echoes dropped).
    pub fn set_remote_mwi(&mut self, eid: Eid, mwi: Mwi, now: Instant) -> Option<Change> {
        if eid == self.own {
            return None;
        }
        // An expired member's counts are kept as they are: MWI has no UNAVAILABLE.
        let _expired = self.heard(eid, now);
        self.set_mwi(eid, mwi)
    }

    fn set_mwi(&mut self, eid: Eid, mwi: Mwi) -> Option<Change> {
        let entry = self.mwi.entry(mwi.key()).or_default();
        if entry.per_eid.insert(eid, mwi.clone()).is_none() {
            self.mwi_items += 1;
        }
        if entry.latest.as_ref() == Some(&mwi) {
            return None;
        }
        entry.latest = Some(mwi.clone());
        Some(Change::Mwi(mwi))
    }

    /// Any live item from a tracked member proves it alive.
    /// A live item from `eid`: it counts as a sign of life for a member that has not expired.
    /// Returns whether `eid` is an expired member: only a fresh heartbeat revives one (after
    /// a partition, XEP-0198 resends what the member queued while cut off, stale states
    /// included; reviving on those showed an old INUSE, measured on ejabberd), so its live
    /// items count as UNAVAILABLE until then. A member republishes its whole state before its
    /// first heartbeat on a new stream, so at revival its entries hold its present state.
    fn heard(&mut self, eid: Eid, now: Instant) -> bool {
        if let Some(p) = self.peers.get_mut(&eid) {
            if p.expired {
                return true;
            }
            if now > p.last_heard {
                p.last_heard = now;
            }
        }
        false
    }

    /// A heartbeat from a member, `age` old (zero for a live notification; for an item fetched
    /// on reconnect, how long ago it was sent). Own heartbeats are ignored.
    /// (device, mailbox) (key, EID) pairs held, own included: what the flat nodes hold, about
    /// (one item per pair; two publishers of a plain id on Prosody share one item).
    pub fn item_counts(&self) -> (usize, usize) {
        (self.device_items, self.mwi_items)
    }

    /// Whether `eid` is a known member that expired (silent past the TTL).
    pub fn is_expired(&self, eid: Eid) -> bool {
        self.peers.get(&eid).is_some_and(|p| p.expired)
    }

    pub fn heartbeat(&mut self, hb: Heartbeat, age: Duration, now: Instant) -> Vec<Change> {
        if hb.eid == self.own {
            return Vec::new();
        }
        let at = now.checked_sub(age).unwrap_or(now);
        let mut out = Vec::new();
        match self.peers.get_mut(&hb.eid) {
            Some(p) => {
                p.info = hb.clone();
                if at > p.last_heard {
                    p.last_heard = at;
                }
                if p.expired && deadline(at, self.ttl).is_none_or(|d| d > now) {
                    p.expired = false;
                    out.push(Change::PeerUp(hb.clone()));
                    out.extend(self.recompute_of(hb.eid));
                }
            }
            None => {
                let expired = deadline(at, self.ttl).is_some_and(|d| d <= now);
                self.peers.insert(
                    hb.eid,
                    Peer {
                        info: hb.clone(),
                        last_heard: at,
                        expired: false,
                    },
                );
                if !expired {
                    out.push(Change::PeerUp(hb));
                }
            }
        }
        out.extend(self.expire(now));
        out
    }

    /// Expire members silent past the TTL: each of their device entries becomes UNAVAILABLE,
    /// so a dead site's devices never read a stale INUSE. EIDs that never sent a heartbeat
    /// (a plain Asterisk box) are not subject to liveness.
    pub fn expire(&mut self, now: Instant) -> Vec<Change> {
        let mut dead = Vec::new();
        for (eid, p) in self.peers.iter_mut() {
            if !p.expired && deadline(p.last_heard, self.ttl).is_some_and(|d| d <= now) {
                p.expired = true;
                dead.push(*eid);
            }
        }
        let mut out = Vec::new();
        for eid in dead {
            out.push(Change::PeerExpired(eid));
            out.extend(self.recompute_of(eid));
        }
        out
    }

    /// Recompute every device `eid` has an entry for (it expired or was revived).
    fn recompute_of(&mut self, eid: Eid) -> Vec<Change> {
        let peers = &self.peers;
        let mut out = Vec::new();
        for (key, entry) in self.devices.iter_mut() {
            if entry.per_eid.contains_key(&eid) {
                if let Some(state) = entry.recompute(peers) {
                    out.push(Change::Device {
                        key: key.clone(),
                        state,
                    });
                }
            }
        }
        out
    }

    /// The earliest instant at which `expire` could change something.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.peers
            .values()
            .filter(|p| !p.expired)
            .filter_map(|p| deadline(p.last_heard, self.ttl))
            .min()
    }

    /// Every member heard from: its latest heartbeat and whether it is alive.
    pub fn peers(&self) -> impl Iterator<Item = (&Heartbeat, bool)> {
        self.peers.values().map(|p| (&p.info, !p.expired))
    }

    /// Whether `eid` is a tracked member that is currently alive (`None` if never heard).
    pub fn peer_alive(&self, eid: Eid) -> Option<bool> {
        self.peers.get(&eid).map(|p| !p.expired)
    }

    /// The aggregate state of one device.
    pub fn device(&self, key: &str) -> Option<DeviceState> {
        self.devices.get(key).and_then(|e| e.aggregate)
    }

    /// The per-EID entries of one device as they count (UNAVAILABLE for an expired member),
    /// what `core show hints` debugging shows in Asterisk.
    pub fn device_detail(&self, key: &str) -> Vec<(Eid, DeviceState)> {
        self.devices
            .get(key)
            .map(|e| {
                e.per_eid
                    .iter()
                    .map(|(k, v)| (*k, effective(&self.peers, *k, *v)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The latest counts of one mailbox.
    pub fn mwi(&self, key: &str) -> Option<&Mwi> {
        self.mwi.get(key).and_then(|e| e.latest.as_ref())
    }

    /// This node's own device states (republished on every reconnect).
    pub fn local_devices(&self) -> Vec<(String, DeviceState)> {
        self.devices
            .iter()
            .filter_map(|(k, e)| e.per_eid.get(&self.own).map(|s| (k.clone(), *s)))
            .collect()
    }

    /// This node's own mailbox states.
    pub fn local_mwi(&self) -> Vec<Mwi> {
        self.mwi
            .values()
            .filter_map(|e| e.per_eid.get(&self.own).cloned())
            .collect()
    }

    /// This node's own state of one device.
    pub fn local_device(&self, key: &str) -> Option<DeviceState> {
        self.devices
            .get(key)
            .and_then(|e| e.per_eid.get(&self.own).copied())
    }

    /// This node's own counts of one mailbox.
    pub fn local_mwi_of(&self, key: &str) -> Option<Mwi> {
        self.mwi
            .get(key)
            .and_then(|e| e.per_eid.get(&self.own).cloned())
    }

    /// Everything, aggregated.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            devices: self
                .devices
                .iter()
                .filter_map(|(k, e)| e.aggregate.map(|a| (k.clone(), a)))
                .collect(),
            mwi: self
                .mwi
                .iter()
                .filter_map(|(k, e)| e.latest.clone().map(|m| (k.clone(), m)))
                .collect(),
            peers: self
                .peers
                .iter()
                .map(|(k, p)| (*k, (p.info.clone(), !p.expired)))
                .collect(),
        }
    }
}

/// When a member last heard at `at` expires; `None` (never) when the TTL reaches past what an
/// `Instant` can hold (`LocalBus` uses `Duration::MAX`).
fn deadline(at: Instant, ttl: Duration) -> Option<Instant> {
    at.checked_add(ttl)
}

#[cfg(test)]
mod tests {
    use super::*;
    use DeviceState::*;

    const A: Eid = Eid([0, 0, 0, 0, 0, 0xa]);
    const B: Eid = Eid([0, 0, 0, 0, 0, 0xb]);
    const C: Eid = Eid([0, 0, 0, 0, 0, 0xc]);

    fn hb(eid: Eid) -> Heartbeat {
        Heartbeat {
            eid,
            site: "b".into(),
            role: "gateway".into(),
            version: "0".into(),
            time: 0,
            sip: None,
            queues: Vec::new(),
        }
    }

    fn dev(key: &str, state: DeviceState) -> Option<Change> {
        Some(Change::Device {
            key: key.into(),
            state,
        })
    }

    #[test]
    fn own_echo_is_dropped() {
        let t = Instant::now();
        let mut c = StateCache::new(A, Duration::from_secs(10));
        assert_eq!(c.set_remote_device(A, "PJSIP/1", InUse, true, t), None);
        assert_eq!(c.device("PJSIP/1"), None);
        assert_eq!(c.set_remote_mwi(A, Mwi::new("1", "d", 1, 0), t), None);
    }

    #[test]
    fn aggregate_across_eids_signals_only_changes() {
        let t = Instant::now();
        let mut c = StateCache::new(A, Duration::from_secs(10));
        assert_eq!(
            c.set_local_device("Custom:x", NotInUse),
            dev("Custom:x", NotInUse)
        );
        assert_eq!(
            c.set_remote_device(B, "Custom:x", InUse, true, t),
            dev("Custom:x", InUse)
        );
        // C says NOT_INUSE: aggregate stays INUSE, no change signalled.
        assert_eq!(c.set_remote_device(C, "Custom:x", NotInUse, true, t), None);
        assert_eq!(
            c.set_remote_device(C, "Custom:x", Ringing, true, t),
            dev("Custom:x", RingInUse)
        );
        assert_eq!(
            c.set_remote_device(B, "Custom:x", NotInUse, true, t),
            dev("Custom:x", Ringing)
        );
        assert_eq!(
            c.device_detail("Custom:x"),
            vec![(A, NotInUse), (B, NotInUse), (C, Ringing)]
        );
        assert_eq!(c.local_devices(), vec![("Custom:x".to_string(), NotInUse)]);
    }

    #[test]
    fn non_cachable_states_pass_through_uncached() {
        let t = Instant::now();
        let mut c = StateCache::new(A, Duration::from_secs(10));
        assert_eq!(
            c.set_remote_device(B, "Local/1@x", InUse, false, t),
            dev("Local/1@x", InUse)
        );
        assert_eq!(c.device("Local/1@x"), None);
    }

    #[test]
    fn silent_peer_expires_to_unavailable_in_virtual_time() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(15);
        let mut c = StateCache::new(A, ttl);
        let up = c.heartbeat(hb(B), Duration::ZERO, t0);
        assert_eq!(up, vec![Change::PeerUp(hb(B))]);
        c.set_remote_device(B, "PJSIP/200", InUse, true, t0);
        c.set_remote_device(C, "PJSIP/300", InUse, true, t0); // C never heartbeats
        assert!(c.expire(t0 + Duration::from_secs(14)).is_empty());
        // A beat at 10 s pushes expiry to 25 s.
        c.heartbeat(hb(B), Duration::ZERO, t0 + Duration::from_secs(10));
        assert!(c.expire(t0 + Duration::from_secs(24)).is_empty());
        assert_eq!(c.next_expiry(), Some(t0 + Duration::from_secs(25)));
        let ch = c.expire(t0 + Duration::from_secs(25));
        assert_eq!(
            ch,
            vec![
                Change::PeerExpired(B),
                dev("PJSIP/200", Unavailable).unwrap()
            ]
        );
        assert_eq!(c.device("PJSIP/200"), Some(Unavailable));
        assert_eq!(
            c.device("PJSIP/300"),
            Some(InUse),
            "non-heartbeating EIDs never expire"
        );
        assert_eq!(c.peer_alive(B), Some(false));
        // A live item alone (a stream-management resend of what B queued while cut off) does
        // not revive it: stored as UNAVAILABLE, no change.
        assert_eq!(
            c.set_remote_device(B, "PJSIP/200", InUse, true, t0 + Duration::from_secs(29)),
            None
        );
        assert_eq!(c.device("PJSIP/200"), Some(Unavailable));
        assert_eq!(c.peer_alive(B), Some(false));
        // A stale heartbeat (older than the TTL) does not either.
        let stale = c.heartbeat(hb(B), Duration::from_secs(16), t0 + Duration::from_secs(29));
        assert!(!stale.contains(&Change::PeerUp(hb(B))));
        assert_eq!(c.peer_alive(B), Some(false));
        // On its new stream it republishes its present state (still counted UNAVAILABLE),
        // then a fresh heartbeat revives it: the latest published state counts at once.
        assert_eq!(
            c.set_remote_device(B, "PJSIP/200", NotInUse, true, t0 + Duration::from_secs(30)),
            None
        );
        assert_eq!(c.device_detail("PJSIP/200"), vec![(B, Unavailable)]);
        let back = c.heartbeat(hb(B), Duration::ZERO, t0 + Duration::from_secs(30));
        assert_eq!(
            back,
            vec![Change::PeerUp(hb(B)), dev("PJSIP/200", NotInUse).unwrap()]
        );
        assert_eq!(
            c.set_remote_device(B, "PJSIP/200", Ringing, true, t0 + Duration::from_secs(31)),
            dev("PJSIP/200", Ringing)
        );
    }

    #[test]
    fn ttl_past_the_end_of_time_never_expires_and_never_overflows() {
        let t0 = Instant::now();
        let mut c = StateCache::new(A, Duration::MAX);
        let up = c.heartbeat(hb(B), Duration::ZERO, t0);
        assert_eq!(up, vec![Change::PeerUp(hb(B))]);
        assert_eq!(c.next_expiry(), None);
        assert!(c.expire(t0 + Duration::from_secs(1_000_000_000)).is_empty());
        assert_eq!(c.peer_alive(B), Some(true));
        // A heartbeat fetched a long time after it was sent is still alive.
        let up = c.heartbeat(hb(C), Duration::from_secs(1_000_000), t0);
        assert_eq!(up, vec![Change::PeerUp(hb(C))]);
        assert_eq!(c.peer_alive(C), Some(true));
    }

    #[test]
    fn fetched_stale_heartbeat_expires_at_once() {
        let t0 = Instant::now() + Duration::from_secs(100);
        let mut c = StateCache::new(A, Duration::from_secs(15));
        c.set_fetched_device(B, "PJSIP/200", InUse);
        let ch = c.heartbeat(hb(B), Duration::from_secs(60), t0);
        assert!(!ch.contains(&Change::PeerUp(hb(B))));
        assert!(ch.contains(&Change::PeerExpired(B)));
        assert_eq!(c.device("PJSIP/200"), Some(Unavailable));
        // Items fetched after the stale heartbeat stay UNAVAILABLE and do not revive it.
        c.set_fetched_device(B, "PJSIP/201", InUse);
        assert_eq!(c.device("PJSIP/201"), Some(Unavailable));
        assert_eq!(c.peer_alive(B), Some(false));
        // A fresh fetched heartbeat (5 s old) is alive.
        let ch = c.heartbeat(hb(C), Duration::from_secs(5), t0);
        assert_eq!(ch, vec![Change::PeerUp(hb(C))]);
        assert_eq!(c.next_expiry(), Some(t0 + Duration::from_secs(10)));
    }

    #[test]
    fn mwi_latest_wins_and_repeats_are_silent() {
        let t = Instant::now();
        let mut c = StateCache::new(A, Duration::from_secs(10));
        let m = Mwi::new("1000", "default", 2, 5);
        assert_eq!(
            c.set_remote_mwi(B, m.clone(), t),
            Some(Change::Mwi(m.clone()))
        );
        assert_eq!(c.set_remote_mwi(B, m.clone(), t), None);
        assert_eq!(c.mwi("1000@default"), Some(&m));
        assert_eq!(c.snapshot().mwi.len(), 1);
    }
}

//! Completed non-INVITE server transactions, kept compact (issue 16).
//!
//! Over UDP a non-INVITE server transaction that sent its final response lingers for Timer J
//! (64·T1, 32 s) only to answer retransmissions of its request with that response again. A
//! registrar at 12,000 REGISTER/s holds ~400,000 of them, so each keeps just its key, the
//! encoded final response, the peer and the transport: no parsed request, no parsed response,
//! no timer-heap entry (Timer J is the same for all of them, so their deadlines arrive in
//! insertion order and a FIFO queue holds them, referring to the table by hash and sequence
//! number instead of a second copy of the key).
//!
//! **Growth without stalls.** A hash table that doubles moves every entry at once. Here, when
//! the table is full, it becomes the *old* table and a table of twice its capacity takes new
//! entries; every insert and every expiry then moves two entries from the old table to the new
//! one (in queue order), so the old one is empty before the new one fills. Lookups look in
//! both. **No ratchet.** When expiries leave the table under a quarter full it is migrated the
//! same way into one half its size (never below the initial capacity), so memory follows the
//! load down.

use std::collections::VecDeque;
use std::hash::{BuildHasher, RandomState};
use std::time::{Duration, Instant};

use hashbrown::HashTable;

use super::{TransactionKey, Transport};

/// Entries moved from the old table to the new one per insert or expiry.
const MIGRATE_PER_OP: usize = 2;

/// What a completed transaction keeps (boxed: a table slot is one pointer, so the tables'
/// spare capacity costs 8 bytes a slot).
pub(super) struct Absorber<D> {
    pub(super) key: TransactionKey,
    /// The final response as sent (serialised).
    pub(super) response: Box<[u8]>,
    pub(super) peer: D,
    /// Timer J, in [`Ms`].
    deadline: Ms,
    pub(super) transport: Transport,
}

/// Milliseconds since the first insert, wrapping (every 49 days): entries live at most
/// [`MAX_LINGER`], so two deadlines are compared by their wrapping difference.
type Ms = u32;

/// Transactions with a longer Timer J are not made compact.
pub(super) const MAX_LINGER: Duration = Duration::from_secs(24 * 3600);

/// A queue entry: the table hash and the deadline, packed into 12 bytes.
#[derive(Clone, Copy)]
#[repr(C, packed(4))]
struct Due {
    hash: u64,
    deadline: Ms,
}

pub(super) struct Completed<D> {
    hasher: RandomState,
    table: HashTable<Box<Absorber<D>>>,
    /// The table being emptied into `table` (after a grow or a shrink).
    old: Option<HashTable<Box<Absorber<D>>>>,
    /// Entries at a queue position below this one may still be in `old`.
    old_below: u64,
    /// The next queue position to move out of `old`.
    cursor: u64,
    /// Timer J of every entry, in insertion (= deadline) order. An entry whose transaction was
    /// removed early stays until it reaches the front, where it is skipped. Positions are
    /// absolute: the front is at `popped`.
    queue: VecDeque<Due>,
    popped: u64,
    /// The clock origin of [`Ms`], and the newest deadline as an `Instant` and in `Ms` (to turn
    /// a queued deadline back into an `Instant`).
    base: Option<Instant>,
    newest: Option<(Instant, Ms)>,
    min_capacity: usize,
}

impl<D> Completed<D> {
    pub(super) fn with_capacity(min_capacity: usize) -> Self {
        let min_capacity = min_capacity.max(16);
        Self {
            hasher: RandomState::new(),
            table: HashTable::with_capacity(min_capacity),
            old: None,
            old_below: 0,
            cursor: 0,
            queue: VecDeque::with_capacity(min_capacity),
            popped: 0,
            base: None,
            newest: None,
            min_capacity,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.table.len() + self.old.as_ref().map_or(0, HashTable::len)
    }

    fn hash(&self, key: &TransactionKey) -> u64 {
        self.hasher.hash_one(key)
    }

    pub(super) fn get(&self, key: &TransactionKey) -> Option<&Absorber<D>> {
        let hash = self.hash(key);
        self.table
            .find(hash, |a| a.key == *key)
            .or_else(|| self.old.as_ref()?.find(hash, |a| a.key == *key))
            .map(|a| &**a)
    }

    /// `t` in `Ms` (rounded up: Timer J never fires early) and as the `Instant` it was
    /// rounded up to.
    fn ms(&mut self, t: Instant) -> (Ms, Instant) {
        let base = *self.base.get_or_insert(t);
        let nanos = t.saturating_duration_since(base).as_nanos();
        let up = (1_000_000 - nanos % 1_000_000) % 1_000_000;
        let exact = t.checked_add(Duration::from_nanos(up as u64)).unwrap_or(t);
        (nanos.div_ceil(1_000_000) as Ms, exact)
    }

    fn instant(&self, ms: Ms) -> Option<Instant> {
        let (at, newest) = self.newest?;
        at.checked_sub(Duration::from_millis(u64::from(newest.wrapping_sub(ms))))
    }

    /// Adds a completed transaction whose Timer J fires at `deadline`. The caller makes sure
    /// the key is not already present (it was a live transaction until now).
    pub(super) fn insert(
        &mut self,
        key: TransactionKey,
        response: Box<[u8]>,
        peer: D,
        transport: Transport,
        deadline: Instant,
    ) {
        if self.old.is_none() && self.table.len() >= self.table.capacity() {
            self.resize(self.table.capacity().saturating_mul(2));
        }
        self.migrate(MIGRATE_PER_OP);
        let hash = self.hash(&key);
        let (ms, exact) = self.ms(deadline);
        self.newest = Some((exact, ms));
        let hasher = &self.hasher;
        self.table.insert_unique(
            hash,
            Box::new(Absorber {
                key,
                response,
                peer,
                deadline: ms,
                transport,
            }),
            |a| hasher.hash_one(&a.key),
        );
        self.queue.push_back(Due { hash, deadline: ms });
    }

    /// Removes a transaction before its Timer J (transport error, terminate).
    pub(super) fn remove(&mut self, key: &TransactionKey) -> Option<Absorber<D>> {
        let hash = self.hash(key);
        if let Ok(e) = self.table.find_entry(hash, |a| a.key == *key) {
            return Some(*e.remove().0);
        }
        let e = self
            .old
            .as_mut()?
            .find_entry(hash, |a| a.key == *key)
            .ok()?;
        Some(*e.remove().0)
    }

    /// Takes the entry of queue item `due` out of whichever table holds it. An entry with the
    /// same hash and deadline is the same transaction or one that ends at the same time.
    fn take(&mut self, due: Due) -> Option<Absorber<D>> {
        let (hash, deadline) = (due.hash, due.deadline);
        // The table compares only 7 bits of the hash before asking: check all of it.
        let hasher = &self.hasher;
        let is = |a: &Absorber<D>| a.deadline == deadline && hasher.hash_one(&a.key) == hash;
        if let Ok(e) = self.table.find_entry(hash, |b| is(b)) {
            return Some(*e.remove().0);
        }
        let old = self.old.as_mut()?;
        let e = old.find_entry(hash, |b| is(b)).ok()?;
        Some(*e.remove().0)
    }

    fn contains(&self, due: Due) -> bool {
        let (hash, deadline) = (due.hash, due.deadline);
        let is = |a: &Absorber<D>| a.deadline == deadline && self.hash(&a.key) == hash;
        self.table.find(hash, |b| is(b)).is_some()
            || self
                .old
                .as_ref()
                .is_some_and(|o| o.find(hash, |b| is(b)).is_some())
    }

    fn pop_front(&mut self) {
        if self.queue.pop_front().is_some() {
            self.popped += 1;
        }
    }

    /// The earliest Timer J still armed.
    pub(super) fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(&due) = self.queue.front() {
            if self.contains(due) {
                return self.instant(due.deadline);
            }
            self.pop_front();
        }
        None
    }

    /// Removes every transaction whose Timer J is `<= now`, in deadline order, into `out`.
    pub(super) fn expire(&mut self, now: Instant, out: &mut Vec<(Instant, TransactionKey)>) {
        let mut expired: usize = 0;
        while let Some(&due) = self.queue.front() {
            let Some(at) = self.instant(due.deadline) else {
                break;
            };
            if at > now {
                break;
            }
            self.pop_front();
            if let Some(a) = self.take(due) {
                out.push((at, a.key));
                expired += 1;
            }
        }
        if expired == 0 {
            return;
        }
        self.migrate(expired.saturating_mul(MIGRATE_PER_OP));
        let len = self.len();
        let cap = self.table.capacity();
        if self.old.is_none() && cap > self.min_capacity && len < cap / 4 {
            self.resize((len * 2).max(self.min_capacity));
        }
        if self.queue.capacity() > self.min_capacity && self.queue.len() < self.queue.capacity() / 4
        {
            self.queue
                .shrink_to((self.queue.len() * 2).max(self.min_capacity));
        }
    }

    /// Starts moving everything into a new table that holds `capacity` entries.
    fn resize(&mut self, capacity: usize) {
        if self.old.is_some() {
            return;
        }
        let old = std::mem::replace(&mut self.table, HashTable::with_capacity(capacity));
        if old.is_empty() {
            return;
        }
        self.old = Some(old);
        self.old_below = self.popped + self.queue.len() as u64;
        self.cursor = self.popped;
    }

    /// Moves up to `n` entries from the old table into the current one.
    fn migrate(&mut self, n: usize) {
        let Some(old) = self.old.as_mut() else {
            return;
        };
        let front = self.popped;
        self.cursor = self.cursor.max(front);
        let mut moved = 0;
        while moved < n && self.cursor < self.old_below && !old.is_empty() {
            let i = (self.cursor - front) as usize;
            self.cursor += 1;
            let Some(&due) = self.queue.get(i) else {
                break;
            };
            let (hash, deadline) = (due.hash, due.deadline);
            let hasher = &self.hasher;
            let is = |a: &Absorber<D>| a.deadline == deadline && hasher.hash_one(&a.key) == hash;
            if let Ok(e) = old.find_entry(hash, |b| is(b)) {
                let a = e.remove().0;
                let hasher = &self.hasher;
                self.table
                    .insert_unique(hash, a, |a| hasher.hash_one(&a.key));
                moved += 1;
            }
        }
        if old.is_empty() || self.cursor >= self.old_below {
            // Anything left (none in queue order) is moved now; normally nothing is.
            if let Some(old) = self.old.take() {
                let hasher = &self.hasher;
                for a in old {
                    let h = hasher.hash_one(&a.key);
                    self.table.insert_unique(h, a, |a| hasher.hash_one(&a.key));
                }
            }
        }
    }

    /// Bytes held: both tables (slots and control bytes), the queue, and each entry's heap.
    pub(super) fn footprint(&self, key_heap: impl Fn(&TransactionKey) -> usize) -> usize {
        let slot = std::mem::size_of::<Box<Absorber<D>>>() + 1;
        let tables = std::iter::once(&self.table).chain(self.old.as_ref());
        let mut bytes = 0;
        for t in tables {
            // hashbrown keeps buckets = capacity·8/7 rounded up to a power of two.
            let buckets = if t.capacity() == 0 {
                0
            } else {
                (t.capacity() * 8 / 7).next_power_of_two()
            };
            bytes += buckets * slot;
            bytes += t
                .iter()
                .map(|a| std::mem::size_of::<Absorber<D>>() + a.response.len() + key_heap(&a.key))
                .sum::<usize>();
        }
        bytes + self.queue.capacity() * std::mem::size_of::<Due>()
    }

    pub(super) fn capacity(&self) -> usize {
        self.table.capacity() + self.old.as_ref().map_or(0, HashTable::capacity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: usize) -> TransactionKey {
        TransactionKey::client(&format!("z9hG4bK{n}"), rsip::Method::Register)
    }

    #[test]
    fn every_entry_is_found_through_growth_and_shrink() {
        let t0 = Instant::now();
        let mut c: Completed<()> = Completed::with_capacity(16);
        let j = Duration::from_secs(32);
        for n in 0..80_000usize {
            let now = t0 + Duration::from_millis(250 * (n as u64 / 2000));
            c.insert(key(n), Box::new([]), (), Transport::Unreliable, now + j);
            if n % 64 != 0 {
                continue;
            }
            for m in (0..=n).step_by(997).chain([n]) {
                assert!(c.get(&key(m)).is_some(), "{m} missing after inserting {n}");
            }
        }
        let mut out = vec![];
        c.expire(t0 + j + Duration::from_millis(250), &mut out);
        assert_eq!(out.len(), 4_000);
        for n in 4_000..80_000usize {
            assert!(c.get(&key(n)).is_some(), "{n} missing after expiry");
        }
    }
}

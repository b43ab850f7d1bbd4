//! Completed non-INVITE server transactions, kept compact (issue 16).
//!
//! Over UDP a non-INVITE server transaction that sent its final response lingers for Timer J
//! (64·T1, 32 s) only to answer retransmissions of its request with that response again. A
//! registrar at 12,000 REGISTER/s holds ~400,000 of them, so each keeps only:
//!
//! * a fixed entry in a FIFO queue: the key's hash, Timer J, the peer, the transport, the
//!   method, and where its bytes are. Timer J is the same for all of them, so their deadlines
//!   arrive in insertion order: no timer-heap entry, no second copy of the key;
//! * its bytes, appended to a ring of 64 KiB chunks: the key's branch and sent-by, and the final
//!   response as what differs from the request it answers (`delta.rs`: ~150 bytes for a
//!   REGISTER's 200 OK instead of ~400). The chunks are freed from the front as Timer J expires
//!   the entries, so these bytes cost no allocation each and leave the allocator no holes;
//! * a table slot (8 bytes: the entry's queue position) to find it by key.
//!
//! A request whose header fields differ from those the response was built from is not a true
//! retransmission; it gets nothing from here (`delta.rs`).
//!
//! **Growth without stalls.** A hash table that doubles moves every entry at once. Here, when
//! the table is full, it becomes the *old* table and a table of twice its capacity takes new
//! entries; every insert and every expiry then moves two entries from the old table to the new
//! one (in queue order), so the old one is empty before the new one fills. Lookups look in
//! both. **No ratchet.** When expiries leave the table under a quarter full it is migrated the
//! same way into one half its size (never below the initial capacity), so memory follows the
//! load down; the queue shrinks the same way and the chunks go as their entries expire.

use std::collections::VecDeque;
use std::hash::{BuildHasher, RandomState};
use std::time::{Duration, Instant};

use hashbrown::HashTable;
use rsip::Method;

use super::delta::{self, Lines};
use super::{Role, TransactionKey, Transport};

/// Entries moved from the old table to the new one per insert or expiry.
const MIGRATE_PER_OP: usize = 2;

/// Size of a chunk of the byte ring (an entry larger than this gets a chunk of its own size).
const CHUNK: usize = 64 * 1024;

/// Milliseconds since the first insert, wrapping (every 49 days): entries live at most
/// [`MAX_LINGER`], so two deadlines are compared by their wrapping difference.
type Ms = u32;

/// Transactions with a longer Timer J are not made compact.
pub(super) const MAX_LINGER: Duration = Duration::from_secs(24 * 3600);

/// What a completed transaction keeps outside the byte ring.
struct Entry<D> {
    hash: u64,
    /// Absolute number of the chunk holding its bytes, their offset and length there.
    chunk: u64,
    offset: u32,
    len: u32,
    /// Timer J, in [`Ms`].
    deadline: Ms,
    peer: D,
    transport: Transport,
    method: Method,
    /// False once removed before its Timer J (it stays queued until it reaches the front).
    live: bool,
}

/// An entry's bytes: branch length, key text length, the key text (branch then sent-by), the
/// response's check, the encoded response.
struct Parts<'a> {
    at: usize,
    key: &'a str,
    check: u64,
    response: &'a [u8],
}

impl<'a> Parts<'a> {
    fn read(data: &'a [u8]) -> Option<Self> {
        let mut pos = 0;
        let at = delta::take(data, &mut pos)?;
        let key_len = delta::take(data, &mut pos)?;
        let key = std::str::from_utf8(delta::bytes(data, &mut pos, key_len)?).ok()?;
        let check = u64::from_le_bytes(delta::bytes(data, &mut pos, 8)?.try_into().ok()?);
        Some(Self {
            at,
            key,
            check,
            response: data.get(pos..)?,
        })
    }
}

/// The response to a retransmission that matched a completed transaction.
pub(super) enum Reply<D> {
    /// The final response again (serialised), to the peer the first one went to.
    Again {
        bytes: Vec<u8>,
        peer: D,
        transport: Transport,
    },
    /// The request's header fields are not those the response was built from.
    Mismatch,
}

pub(super) struct Completed<D> {
    hasher: RandomState,
    /// Queue positions (absolute) of the live entries.
    table: HashTable<u64>,
    /// The table being emptied into `table` (after a grow or a shrink).
    old: Option<HashTable<u64>>,
    /// Entries at a queue position below this one may still be in `old`.
    old_below: u64,
    /// The next queue position to move out of `old`.
    cursor: u64,
    /// Every entry, in insertion (= deadline) order. Positions are absolute: the front is at
    /// `popped`.
    queue: VecDeque<Entry<D>>,
    popped: u64,
    /// The byte ring; the front chunk is number `chunks_popped`.
    chunks: VecDeque<Vec<u8>>,
    chunks_popped: u64,
    /// One freed chunk kept for the next.
    spare: Option<Vec<u8>>,
    scratch: Vec<u8>,
    /// The clock origin of [`Ms`], and the newest deadline as an `Instant` and in `Ms` (to turn
    /// a queued deadline back into an `Instant`).
    base: Option<Instant>,
    newest: Option<(Instant, Ms)>,
    min_capacity: usize,
}

impl<D: Clone> Completed<D> {
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
            chunks: VecDeque::new(),
            chunks_popped: 0,
            spare: None,
            scratch: Vec::new(),
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

    fn entry(&self, seq: u64) -> Option<&Entry<D>> {
        self.queue
            .get(usize::try_from(seq.checked_sub(self.popped)?).ok()?)
    }

    fn data(&self, e: &Entry<D>) -> Option<&[u8]> {
        let i = usize::try_from(e.chunk.checked_sub(self.chunks_popped)?).ok()?;
        let start = e.offset as usize;
        self.chunks.get(i)?.get(start..start + e.len as usize)
    }

    /// The entry (queue position) of `key`, if it is here.
    fn find(&self, key: &TransactionKey) -> Option<u64> {
        let (role, method, branch, sent_by) = key.branch_parts()?;
        if role != Role::Server {
            return None;
        }
        let hash = self.hash(key);
        let is = |&seq: &u64| {
            self.entry(seq).is_some_and(|e| {
                e.live
                    && e.hash == hash
                    && e.method == method
                    && self.data(e).and_then(Parts::read).is_some_and(|p| {
                        p.at == branch.len()
                            && p.key.len() == branch.len() + sent_by.len()
                            && p.key.starts_with(branch)
                            && p.key.ends_with(sent_by)
                    })
            })
        };
        self.table
            .find(hash, is)
            .or_else(|| self.old.as_ref()?.find(hash, is))
            .copied()
    }

    pub(super) fn contains(&self, key: &TransactionKey) -> bool {
        self.find(key).is_some()
    }

    /// What to send for `request`, a retransmission of the request of completed transaction
    /// `key`; `None` if `key` is not here.
    pub(super) fn reply(&self, key: &TransactionKey, request: &rsip::Request) -> Option<Reply<D>> {
        let e = self.entry(self.find(key)?)?;
        let p = self.data(e).and_then(Parts::read)?;
        Some(
            match delta::decode(
                p.response,
                &Lines::of(&request.headers),
                &self.hasher,
                p.check,
            ) {
                Some(bytes) => Reply::Again {
                    bytes,
                    peer: e.peer.clone(),
                    transport: e.transport,
                },
                None => Reply::Mismatch,
            },
        )
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

    /// Whether [`insert`](Self::insert) takes a transaction with this key: RFC 3261 server
    /// transactions (an RFC 2543 one lingers as a live transaction instead).
    pub(super) fn takes(key: &TransactionKey) -> bool {
        key.branch_parts()
            .is_some_and(|(role, ..)| role == Role::Server)
    }

    /// Adds a completed transaction whose Timer J fires at `deadline`: `response` is the final
    /// response as sent, `request` the request it answered. The caller makes sure the key is
    /// not already present (it was a live transaction until now) and that [`takes`](Self::takes)
    /// it; returns false (and keeps nothing) if not.
    pub(super) fn insert(
        &mut self,
        key: &TransactionKey,
        request: &rsip::Request,
        response: &[u8],
        peer: D,
        transport: Transport,
        deadline: Instant,
    ) -> bool {
        let Some((Role::Server, method, branch, sent_by)) = key.branch_parts() else {
            return false;
        };
        let mut data = std::mem::take(&mut self.scratch);
        data.clear();
        delta::put(&mut data, branch.len());
        delta::put(&mut data, branch.len() + sent_by.len());
        data.extend_from_slice(branch.as_bytes());
        data.extend_from_slice(sent_by.as_bytes());
        let at = data.len();
        data.extend_from_slice(&[0; 8]);
        let check = delta::encode(
            response,
            &Lines::of(&request.headers),
            &self.hasher,
            &mut data,
        );
        data[at..at + 8].copy_from_slice(&check.to_le_bytes());
        let Ok(len) = u32::try_from(data.len()) else {
            self.scratch = data;
            return false;
        };
        let (chunk, offset) = self.append(&data);
        self.scratch = data;
        self.scratch.clear();
        if self.scratch.capacity() > 4 * 1024 {
            self.scratch.shrink_to(1024);
        }

        if self.old.is_none() && self.table.len() >= self.table.capacity() {
            self.resize(self.table.capacity().saturating_mul(2));
        }
        self.migrate(MIGRATE_PER_OP);
        let hash = self.hash(key);
        let (ms, exact) = self.ms(deadline);
        self.newest = Some((exact, ms));
        let seq = self.popped + self.queue.len() as u64;
        self.queue.push_back(Entry {
            hash,
            chunk,
            offset,
            len,
            deadline: ms,
            peer,
            transport,
            method,
            live: true,
        });
        let (queue, popped) = (&self.queue, self.popped);
        self.table
            .insert_unique(hash, seq, |&s| hash_of(queue, popped, s));
        true
    }

    /// Appends `data` to the byte ring: (chunk number, offset).
    fn append(&mut self, data: &[u8]) -> (u64, u32) {
        let fits = self
            .chunks
            .back()
            .is_some_and(|c| c.capacity() - c.len() >= data.len());
        if !fits {
            let chunk = match self.spare.take() {
                Some(c) if c.capacity() >= data.len() => c,
                _ => Vec::with_capacity(CHUNK.max(data.len())),
            };
            self.chunks.push_back(chunk);
        }
        let number = self.chunks_popped + self.chunks.len() as u64 - 1;
        let Some(c) = self.chunks.back_mut() else {
            return (number, 0);
        };
        let offset = c.len() as u32;
        c.extend_from_slice(data);
        (number, offset)
    }

    /// Removes a transaction before its Timer J (transport error, terminate).
    pub(super) fn remove(&mut self, key: &TransactionKey) -> Option<TransactionKey> {
        let seq = self.find(key)?;
        let hash = self.entry(seq)?.hash;
        self.unindex(hash, seq);
        let i = usize::try_from(seq - self.popped).ok()?;
        self.queue.get_mut(i)?.live = false;
        Some(key.clone())
    }

    /// Takes queue position `seq` out of whichever table holds it.
    fn unindex(&mut self, hash: u64, seq: u64) -> bool {
        if let Ok(e) = self.table.find_entry(hash, |&s| s == seq) {
            e.remove();
            return true;
        }
        self.old
            .as_mut()
            .and_then(|o| o.find_entry(hash, |&s| s == seq).ok())
            .map(|e| e.remove())
            .is_some()
    }

    /// The key of entry `e` (for its [`Terminated`](super::Event::Terminated) event).
    fn key_of(&self, e: &Entry<D>) -> Option<TransactionKey> {
        let p = self.data(e).and_then(Parts::read)?;
        let (branch, sent_by) = p.key.split_at_checked(p.at)?;
        Some(TransactionKey::server_branch(e.method, branch, sent_by))
    }

    /// Drops the front entry, and the chunks no entry refers to any more.
    fn pop_front(&mut self) -> Option<Entry<D>> {
        let e = self.queue.pop_front()?;
        self.popped += 1;
        let keep_from = match self.queue.front() {
            Some(f) => f.chunk,
            None => self.chunks_popped + self.chunks.len().saturating_sub(1) as u64,
        };
        while self.chunks_popped < keep_from {
            let Some(mut c) = self.chunks.pop_front() else {
                break;
            };
            self.chunks_popped += 1;
            if self.spare.is_none() && c.capacity() == CHUNK {
                c.clear();
                self.spare = Some(c);
            }
        }
        if self.queue.is_empty() {
            // Idle: one empty chunk stays for the next entry, nothing else.
            if let Some(c) = self.chunks.back_mut() {
                c.clear();
            }
            self.spare = None;
        }
        Some(e)
    }

    /// The earliest Timer J still armed.
    pub(super) fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(e) = self.queue.front() {
            if e.live {
                return self.instant(e.deadline);
            }
            self.pop_front();
        }
        None
    }

    /// Removes every transaction whose Timer J is `<= now`, in deadline order, into `out`.
    pub(super) fn expire(&mut self, now: Instant, out: &mut Vec<(Instant, TransactionKey)>) {
        let mut expired: usize = 0;
        while let Some(e) = self.queue.front() {
            let Some(at) = self.instant(e.deadline) else {
                break;
            };
            if at > now {
                break;
            }
            let (live, hash, key) = (e.live, e.hash, self.key_of(e));
            let seq = self.popped;
            if live && self.unindex(hash, seq) {
                if let Some(key) = key {
                    out.push((at, key));
                }
                expired += 1;
            }
            self.pop_front();
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
        let (queue, popped) = (&self.queue, self.popped);
        self.cursor = self.cursor.max(popped);
        let mut moved = 0;
        while moved < n && self.cursor < self.old_below && !old.is_empty() {
            let seq = self.cursor;
            self.cursor += 1;
            let Some(e) = queue.get((seq - popped) as usize) else {
                break;
            };
            if let Ok(o) = old.find_entry(e.hash, |&s| s == seq) {
                o.remove();
                self.table
                    .insert_unique(e.hash, seq, |&s| hash_of(queue, popped, s));
                moved += 1;
            }
        }
        if old.is_empty() || self.cursor >= self.old_below {
            // Anything left (none in queue order) is moved now; normally nothing is.
            if let Some(old) = self.old.take() {
                for seq in old {
                    let h = hash_of(queue, popped, seq);
                    self.table
                        .insert_unique(h, seq, |&s| hash_of(queue, popped, s));
                }
            }
        }
    }

    /// Bytes held: both tables (slots and control bytes), the queue and the byte ring.
    pub(super) fn footprint(&self) -> usize {
        let slot = std::mem::size_of::<u64>() + 1;
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
        }
        let ring: usize = self
            .chunks
            .iter()
            .chain(self.spare.as_ref())
            .map(Vec::capacity)
            .sum();
        bytes
            + ring
            + self.scratch.capacity()
            + self.queue.capacity() * std::mem::size_of::<Entry<D>>()
    }

    pub(super) fn capacity(&self) -> usize {
        self.table.capacity() + self.old.as_ref().map_or(0, HashTable::capacity)
    }
}

/// The hash of the entry at queue position `seq` (for rehashing a table of positions).
fn hash_of<D>(queue: &VecDeque<Entry<D>>, popped: u64, seq: u64) -> u64 {
    seq.checked_sub(popped)
        .and_then(|i| queue.get(usize::try_from(i).ok()?))
        .map_or(0, |e| e.hash)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{parse, response_for, serialize_response};
    use rsip::{Request, SipMessage};

    fn key(n: usize) -> TransactionKey {
        TransactionKey::server_branch(Method::Register, &format!("z9hg4bk{n}"), "192.0.2.1:5060")
    }

    fn request() -> Request {
        let text = "REGISTER sip:example.com SIP/2.0\r\n\
             Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1\r\n\
             To: <sip:1000@example.com>\r\n\
             From: <sip:1000@example.com>;tag=1928301774\r\n\
             Call-ID: a84b4c76e66710@pc33.example.com\r\n\
             CSeq: 314159 REGISTER\r\n\
             Content-Length: 0\r\n\r\n";
        match parse(text.as_bytes()).unwrap() {
            SipMessage::Request(r) => r,
            SipMessage::Response(_) => unreachable!(),
        }
    }

    #[test]
    fn every_entry_is_found_through_growth_and_shrink() {
        let t0 = Instant::now();
        let mut c: Completed<()> = Completed::with_capacity(16);
        let j = Duration::from_secs(32);
        let req = request();
        let ok = serialize_response(&response_for(&req, 200, "OK"));
        for n in 0..80_000usize {
            let now = t0 + Duration::from_millis(250 * (n as u64 / 2000));
            assert!(c.insert(&key(n), &req, &ok, (), Transport::Unreliable, now + j));
            if n % 64 != 0 {
                continue;
            }
            for m in (0..=n).step_by(997).chain([n]) {
                assert!(c.contains(&key(m)), "{m} missing after inserting {n}");
            }
        }
        let mut out = vec![];
        c.expire(t0 + j + Duration::from_millis(250), &mut out);
        assert_eq!(out.len(), 4_000);
        assert!(out.iter().enumerate().all(|(n, (_, k))| *k == key(n)));
        for n in 4_000..80_000usize {
            assert!(c.contains(&key(n)), "{n} missing after expiry");
        }
        let Some(Reply::Again { bytes, .. }) = c.reply(&key(79_999), &req) else {
            panic!("no reply");
        };
        assert_eq!(bytes, ok);
        // Removed early: gone at once, and its queue entry is skipped at its Timer J.
        assert_eq!(c.remove(&key(5_000)), Some(key(5_000)));
        assert!(!c.contains(&key(5_000)));
        c.expire(t0 + j + Duration::from_secs(60), &mut out);
        assert_eq!(out.len(), 80_000 - 1);
        assert_eq!(c.len(), 0);
        assert_eq!(c.next_deadline(), None);
        assert!(c.footprint() < 2 * CHUNK + 64 * 1024, "{}", c.footprint());
    }

    #[test]
    fn only_rfc3261_server_transactions_are_taken() {
        let mut c: Completed<()> = Completed::with_capacity(16);
        let req = request();
        let ok = serialize_response(&response_for(&req, 200, "OK"));
        let client = TransactionKey::client("z9hG4bK1", Method::Register);
        assert!(!Completed::<()>::takes(&client));
        let t = Instant::now();
        assert!(!c.insert(&client, &req, &ok, (), Transport::Unreliable, t));
        assert!(Completed::<()>::takes(&key(1)));
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn an_entry_bigger_than_a_chunk_gets_its_own() {
        let mut c: Completed<u8> = Completed::with_capacity(16);
        let req = request();
        let mut big = response_for(&req, 200, "OK");
        big.body = vec![b'x'; 3 * CHUNK];
        let big = serialize_response(&big);
        let ok = serialize_response(&response_for(&req, 200, "OK"));
        let t = Instant::now();
        for (n, r) in [&ok, &big, &ok].into_iter().enumerate() {
            assert!(c.insert(&key(n), &req, r, n as u8, Transport::Unreliable, t));
        }
        for (n, r) in [&ok, &big, &ok].into_iter().enumerate() {
            let Some(Reply::Again { bytes, peer, .. }) = c.reply(&key(n), &req) else {
                panic!("{n}");
            };
            assert_eq!((&bytes, peer), (r, n as u8));
        }
    }
}

//! One worker's keyspace: string values with optional deadlines, expired lazily on access and
//! actively by sampling, as Redis does.
//!
//! Times are milliseconds on the worker's monotonic clock (`Host::now_ms`). The keyspace is an
//! insertion-ordered hash map: a key's position gives `SCAN` a cursor and active expiry a random
//! pick in O(1). Keys with a deadline are also kept in a second set, the one active expiry samples.

use std::collections::{HashMap, HashSet};

use indexmap::{IndexMap, IndexSet};

use crate::glob::glob_match;

/// A deadline that never comes.
pub const NEVER: u64 = u64::MAX;

/// Keys sampled per round of active expiry (Redis: `ACTIVE_EXPIRE_CYCLE_KEYS_PER_LOOP`).
pub const EXPIRE_SAMPLE: usize = 20;
/// Another round follows while more than this percentage of a sample had expired
/// (Redis: `ACTIVE_EXPIRE_CYCLE_ACCEPTABLE_STALE`).
const EXPIRE_STALE_PERCENT: usize = 10;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub value: Vec<u8>,
    /// When the key expires, or [`NEVER`].
    pub expires_at: u64,
}

/// The keyspace.
#[derive(Debug)]
pub struct Store {
    map: IndexMap<Box<[u8]>, Entry>,
    /// The keys of `map` that have a deadline.
    volatile: IndexSet<Box<[u8]>>,
    /// xorshift64 state, for sampling.
    rng: u64,
    /// Keys removed because they expired, since the start.
    pub expired_keys: u64,
    /// The keys some connection `WATCH`es: when each was last changed (a stamp from `changes`),
    /// and how many watches it has. Only watched keys are tracked.
    watched: HashMap<Box<[u8]>, Watched>,
    /// Counts the changes of watched keys.
    changes: u64,
    /// While a hand-over's pre-copy is under way (`precopy`): how far it got, and the keys it
    /// copied that changed since.
    dirty: Option<Dirty>,
}

/// A pre-copy's record. The copy walks the positions upwards: those below `cursor` are copied.
/// Only a change the copy already passed is recorded (every change goes through
/// [`Store::touch`] or [`Store::touch_removed`]):
///
/// - a write (value or deadline) to the key at position `i < cursor`;
/// - a removal (delete, expiry) at `j < cursor`: the removed key (a tombstone), and the key
///   `swap_remove` moved from the last position into `j` (it comes from the part not copied, or
///   was copied at the end and is recorded needlessly; either way the copy will not reach it
///   again);
/// - nothing else: a key at or past the cursor was never copied (a copied key keeps its position
///   until removed, or moves down into a removed one's), a new key is appended past it and the
///   copy reaches it itself.
///
/// So at any time, staged steps overwritten by the recorded keys' current entries, plus the
/// positions from the cursor on, are the keyspace. A flush sets `flushed` and the cursor to 0:
/// the replacement drops what it staged.
#[derive(Debug, Default)]
pub struct Dirty {
    pub keys: HashSet<Box<[u8]>>,
    /// The bytes of `keys` and of their values when recorded, with a rough per-key overhead
    /// (what a round or the last part will carry, and the set's memory).
    pub bytes: usize,
    pub flushed: bool,
    /// The positions below it are copied.
    pub cursor: usize,
}

impl Dirty {
    fn record(&mut self, key: &[u8], value_len: usize) {
        if !self.keys.contains(key) {
            self.bytes += key.len() + value_len + DIRTY_KEY_OVERHEAD;
            self.keys.insert(key.into());
        }
    }
}

/// What one recorded key is counted as beyond its bytes (the set's slot and the box).
const DIRTY_KEY_OVERHEAD: usize = 48;

#[derive(Debug, Clone, Copy)]
struct Watched {
    stamp: u64,
    watchers: u32,
}

impl Default for Store {
    fn default() -> Self {
        Store::new(0x9e37_79b9_7f4a_7c15)
    }
}

impl Store {
    /// An empty keyspace; `seed` drives the sampling of keys to expire.
    pub fn new(seed: u64) -> Self {
        Store {
            map: IndexMap::new(),
            volatile: IndexSet::new(),
            rng: seed | 1,
            expired_keys: 0,
            watched: HashMap::new(),
            changes: 0,
            dirty: None,
        }
    }

    /// A copy of the keys and values (tests).
    #[cfg(test)]
    pub fn clone_for_test(&self) -> Store {
        Store { map: self.map.clone(), volatile: self.volatile.clone(), ..Store::default() }
    }

    /// Starts recording the keys that change (a pre-copy began); what was recorded before goes.
    pub fn start_recording(&mut self) {
        self.dirty = Some(Dirty::default());
    }

    /// Stops recording and returns what was (None: nothing was).
    pub fn stop_recording(&mut self) -> Option<Dirty> {
        self.dirty.take()
    }

    /// Takes the keys recorded so far (a round of the copy carries them) and records afresh from
    /// the same cursor.
    pub fn take_recorded(&mut self) -> Option<Dirty> {
        let dirty = self.dirty.as_mut()?;
        let cursor = dirty.cursor;
        Some(std::mem::replace(dirty, Dirty { cursor, ..Dirty::default() }))
    }

    /// Whether the keyspace was flushed since the copy began or its last round.
    pub fn flushed_since_round(&self) -> bool {
        self.dirty.as_ref().is_some_and(|d| d.flushed)
    }

    /// Where the copy stands: the positions below it are copied (None: no copy).
    pub fn copy_cursor(&self) -> Option<usize> {
        self.dirty.as_ref().map(|d| d.cursor)
    }

    /// Moves the copy's cursor to `to` (the positions below it were written in a step).
    pub fn advance_copy(&mut self, to: usize) {
        if let Some(dirty) = &mut self.dirty {
            dirty.cursor = to.min(self.map.len());
        }
    }

    /// The bytes the recorded keys take (0 when nothing is recorded).
    pub fn dirty_bytes(&self) -> usize {
        self.dirty.as_ref().map_or(0, |d| d.bytes)
    }

    /// The key and entry at position `i` of the keyspace's order (expired ones included).
    pub fn get_index(&self, i: usize) -> Option<(&[u8], &Entry)> {
        self.map.get_index(i).map(|(k, e)| (&**k, e))
    }

    /// The entry of `key` as it is (an expired one included, nothing removed).
    pub fn peek(&self, key: &[u8]) -> Option<&Entry> {
        self.map.get(key)
    }

    /// The position and entry of `key` as it is (an expired one included, nothing removed).
    pub fn peek_full(&self, key: &[u8]) -> Option<(usize, &Entry)> {
        self.map.get_full(key).map(|(i, _, e)| (i, e))
    }

    /// Puts an entry in from a hand-over's step or last part, replacing the key's entry: a later
    /// record of a key is newer than an earlier one.
    pub fn put_moved(&mut self, key: Box<[u8]>, value: Vec<u8>, expires_at: u64) {
        match self.map.entry(key) {
            indexmap::map::Entry::Occupied(mut slot) => {
                let was = slot.get().expires_at;
                match (was == NEVER, expires_at == NEVER) {
                    (true, false) => {
                        self.volatile.insert(slot.key().clone());
                    }
                    (false, true) => {
                        self.volatile.swap_remove(slot.key());
                    }
                    _ => {}
                }
                slot.insert(Entry { value, expires_at });
            }
            indexmap::map::Entry::Vacant(slot) => {
                if expires_at != NEVER {
                    self.volatile.insert(slot.key().clone());
                }
                slot.insert(Entry { value, expires_at });
            }
        }
    }

    /// Takes a key out as a hand-over's tombstone says (deleted or expired in the old worker).
    pub fn remove_moved(&mut self, key: &[u8]) {
        if let Some(entry) = self.map.swap_remove(key) {
            if entry.expires_at != NEVER {
                self.volatile.swap_remove(key);
            }
        }
    }

    /// Takes in a keyspace staged by a hand-over's steps (and its last part): as it is when
    /// this one is empty (a replacement serves no one before), else entry by entry, the keys
    /// this one has staying (they are newer).
    pub fn adopt_staged(&mut self, staged: Store) {
        if self.map.is_empty() {
            self.map = staged.map;
            self.volatile = staged.volatile;
            return;
        }
        self.reserve(staged.map.len());
        for (key, entry) in staged.map {
            self.insert_moved(key, entry.value, entry.expires_at);
        }
    }

    /// Starts watching `key` (`WATCH`): returns its change stamp, which [`Store::changed_since`]
    /// compares. An expired key is removed first, so its expiry does not count as a change later.
    pub fn watch(&mut self, key: &[u8], now: u64) -> u64 {
        self.live_index(key, now);
        let w = self.watched.entry(key.into()).or_insert(Watched { stamp: 0, watchers: 0 });
        w.watchers += 1;
        w.stamp
    }

    /// Ends one watch of `key` (`UNWATCH`, `EXEC`, `DISCARD`, the connection closing).
    pub fn unwatch(&mut self, key: &[u8]) {
        if let Some(w) = self.watched.get_mut(key) {
            w.watchers -= 1;
            if w.watchers == 0 {
                self.watched.remove(key);
            }
        }
    }

    /// Whether `key`, watched since `stamp`, was written, removed or expired since.
    pub fn changed_since(&self, key: &[u8], stamp: u64) -> bool {
        self.watched.get(key).is_some_and(|w| w.stamp != stamp)
    }

    /// Records a change of `key`, at position `at`, for its watchers (Redis'
    /// `signalModifiedKey`), and for a pre-copy under way ([`Dirty`]): every write of a key that
    /// is in the keyspace afterwards comes through here.
    fn touch(&mut self, key: &[u8], at: usize) {
        if let Some(dirty) = &mut self.dirty {
            if at < dirty.cursor {
                dirty.record(key, self.map.get_index(at).map_or(0, |(_, e)| e.value.len()));
            }
        }
        self.signal(key);
    }

    /// As [`Store::touch`] for a key `swap_remove` just took out of position `at` (deleted or
    /// expired): before the cursor, the copy records it and the key moved into `at`.
    fn touch_removed(&mut self, key: &[u8], at: usize) {
        if let Some(dirty) = &mut self.dirty {
            if at < dirty.cursor {
                dirty.record(key, 0);
                if let Some((moved, e)) = self.map.get_index(at) {
                    dirty.record(moved, e.value.len());
                }
            }
            dirty.cursor = dirty.cursor.min(self.map.len());
        }
        self.signal(key);
    }

    /// A change of `key` for its watchers.
    fn signal(&mut self, key: &[u8]) {
        if self.watched.is_empty() {
            return;
        }
        if let Some(w) = self.watched.get_mut(key) {
            self.changes += 1;
            w.stamp = self.changes;
        }
    }

    /// Keys, expired ones not yet removed included (as Redis' `DBSIZE`).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The bytes of keys and values (`INFO`'s `used_memory_dataset`, without overhead).
    pub fn dataset_bytes(&self) -> usize {
        self.map.iter().map(|(k, e)| k.len() + e.value.len()).sum()
    }

    /// About [`Store::dataset_bytes`] in O(1): exact up to 4,096 keys, else the mean of 1,024
    /// keys at evenly spaced positions times the count (a pre-copy's bound, set while clients
    /// wait: a pass over a million keys would take them ~10 ms).
    pub fn estimated_bytes(&self) -> usize {
        const SAMPLE: usize = 1024;
        let len = self.map.len();
        if len <= 4 * SAMPLE {
            return self.dataset_bytes();
        }
        let sampled: usize = (0..SAMPLE)
            .filter_map(|n| self.map.get_index(n * len / SAMPLE))
            .map(|(k, e)| k.len() + e.value.len())
            .sum();
        sampled / SAMPLE * len
    }

    /// Every entry in the keyspace's order, expired ones not yet removed included (a hand-over
    /// writes them out).
    pub fn entries(&self) -> impl Iterator<Item = (&[u8], &Entry)> {
        self.map.iter().map(|(k, e)| (&**k, e))
    }

    /// Makes room for `keys` more keys (a hand-over knows how many come: the table is sized
    /// once instead of doubling ~20 times).
    pub fn reserve(&mut self, keys: usize) {
        self.map.reserve(keys);
    }

    /// Where the keyspace stands before a hand-over's entries go in ([`Store::undo_moved`]).
    pub fn moved_mark(&self) -> (usize, usize) {
        (self.map.len(), self.volatile.len())
    }

    /// Takes out again every entry [`Store::insert_moved`] put in since `mark` (a state that
    /// turned out unreadable half-way): they are the last ones in both tables, as it appends
    /// and nothing else ran meanwhile.
    pub fn undo_moved(&mut self, (keys, volatile): (usize, usize)) {
        self.map.truncate(keys);
        self.volatile.truncate(volatile);
        self.map.shrink_to_fit();
        self.volatile.shrink_to_fit();
    }

    /// Puts an entry in as it came from a hand-over (`expires_at` on this worker's clock, or
    /// [`NEVER`]). A key this worker has already is newer (written since it started serving):
    /// it stays. One hash lookup.
    pub fn insert_moved(&mut self, key: Box<[u8]>, value: Vec<u8>, expires_at: u64) {
        if let indexmap::map::Entry::Vacant(slot) = self.map.entry(key) {
            if expires_at != NEVER {
                self.volatile.insert(slot.key().clone());
            }
            slot.insert(Entry { value, expires_at });
        }
    }

    /// Keys with a deadline.
    pub fn volatile_len(&self) -> usize {
        self.volatile.len()
    }

    /// The live entry of `key`; an expired one is removed first.
    pub fn get(&mut self, key: &[u8], now: u64) -> Option<&Entry> {
        let i = self.live_index(key, now)?;
        self.map.get_index(i).map(|(_, e)| e)
    }

    /// The live entry of `key`, to change it (its watchers see a change).
    pub fn get_mut(&mut self, key: &[u8], now: u64) -> Option<&mut Entry> {
        let i = self.live_index(key, now)?;
        self.touch(key, i);
        self.map.get_index_mut(i).map(|(_, e)| e)
    }

    pub fn contains(&mut self, key: &[u8], now: u64) -> bool {
        self.live_index(key, now).is_some()
    }

    fn live_index(&mut self, key: &[u8], now: u64) -> Option<usize> {
        let (i, _, entry) = self.map.get_full(key)?;
        if now >= entry.expires_at {
            self.remove_expired(i);
            return None;
        }
        Some(i)
    }

    fn remove_expired(&mut self, i: usize) {
        if let Some((key, _)) = self.map.swap_remove_index(i) {
            self.volatile.swap_remove(&key);
            self.expired_keys += 1;
            self.touch_removed(&key, i);
        }
    }

    /// Stores `value` under `key` with the deadline `expires_at` ([`NEVER`]: none), or keeping the
    /// key's current deadline when `expires_at` is `None` (`KEEPTTL`). An existing value's
    /// allocation is reused.
    pub fn set(&mut self, key: &[u8], value: &[u8], expires_at: Option<u64>, now: u64) {
        match self.get_mut(key, now) {
            Some(entry) => {
                entry.value.clear();
                entry.value.extend_from_slice(value);
                if let Some(at) = expires_at {
                    self.set_deadline(key, at);
                }
            }
            None => {
                let at = expires_at.unwrap_or(NEVER);
                if at != NEVER {
                    self.volatile.insert(key.into());
                }
                let (i, _) = self.map.insert_full(key.into(), Entry { value: value.to_vec(), expires_at: at });
                self.touch(key, i);
            }
        }
    }

    /// The entry of `key`, created empty (without a deadline) when missing or expired.
    pub fn entry(&mut self, key: &[u8], now: u64) -> &mut Entry {
        let i = match self.live_index(key, now) {
            Some(i) => i,
            None => self.map.insert_full(key.into(), Entry { value: Vec::new(), expires_at: NEVER }).0,
        };
        self.touch(key, i);
        &mut self.map[i]
    }

    /// Sets the deadline of an existing key ([`NEVER`]: none). False when the key is missing.
    pub fn set_deadline(&mut self, key: &[u8], at: u64) -> bool {
        let Some((i, _, entry)) = self.map.get_full_mut(key) else { return false };
        let was = std::mem::replace(&mut entry.expires_at, at);
        if was != at {
            self.touch(key, i);
        }
        match (was == NEVER, at == NEVER) {
            (true, false) => {
                self.volatile.insert(key.into());
            }
            (false, true) => {
                self.volatile.swap_remove(key);
            }
            _ => {}
        }
        true
    }

    /// Removes `key`; false when it was missing (or had expired).
    pub fn remove(&mut self, key: &[u8], now: u64) -> bool {
        let Some((i, _, entry)) = self.map.swap_remove_full(key) else { return false };
        self.touch_removed(key, i);
        if entry.expires_at != NEVER {
            self.volatile.swap_remove(key);
        }
        if now >= entry.expires_at {
            self.expired_keys += 1;
            return false;
        }
        true
    }

    /// Removes `key` and returns its live value.
    pub fn take(&mut self, key: &[u8], now: u64) -> Option<Vec<u8>> {
        self.live_index(key, now)?;
        let (i, _, entry) = self.map.swap_remove_full(key)?;
        self.touch_removed(key, i);
        if entry.expires_at != NEVER {
            self.volatile.swap_remove(key);
        }
        Some(entry.value)
    }

    pub fn clear(&mut self) {
        // The watched keys that exist change (Redis: `touchAllWatchedKeysInDb`).
        let existing: Vec<Box<[u8]>> = self.watched.keys().filter(|k| self.map.contains_key(&***k)).cloned().collect();
        for key in existing {
            self.signal(&key);
        }
        // A pre-copy's last part says so: the replacement drops what was copied before.
        if let Some(dirty) = &mut self.dirty {
            *dirty = Dirty { flushed: true, ..Dirty::default() };
        }
        self.map = IndexMap::new();
        self.volatile = IndexSet::new();
    }

    /// Every live key matching `pattern`.
    pub fn keys<'a>(&'a self, pattern: &'a [u8], now: u64) -> impl Iterator<Item = &'a [u8]> + 'a {
        let all = pattern == b"*";
        self.map
            .iter()
            .filter(move |(k, e)| now < e.expires_at && (all || glob_match(pattern, k, false)))
            .map(|(k, _)| &**k)
    }

    /// One step of `SCAN`: visits up to `count` keys below `cursor` (0: from the end) and passes
    /// the live ones matching `pattern` to `found`; returns the next cursor (0: done).
    ///
    /// Keys are visited from the last position down. Removing a key moves the last key into its
    /// place, that is from the visited part into the unvisited one (it may be returned twice, which
    /// SCAN allows), never the other way; new keys are appended to the visited part. So every key
    /// present for the whole iteration is returned, as Redis guarantees.
    pub fn scan(
        &self,
        cursor: u64,
        count: usize,
        pattern: Option<&[u8]>,
        now: u64,
        mut found: impl FnMut(&[u8]),
    ) -> u64 {
        let len = self.map.len() as u64;
        let mut i = if cursor == 0 { len } else { cursor.min(len) };
        let mut visited = 0;
        while i > 0 && visited < count.max(1) {
            i -= 1;
            visited += 1;
            let (key, entry) = self.map.get_index(i as usize).expect("below len");
            if now < entry.expires_at && pattern.is_none_or(|p| glob_match(p, key, false)) {
                found(key);
            }
        }
        i
    }

    /// Redis' active expiry: rounds of [`EXPIRE_SAMPLE`] random keys with a deadline, removing
    /// the expired ones, while more than 10% of a round had expired and at most `max_rounds`
    /// rounds. Returns how many keys were removed, and whether the last round still found more
    /// than 10% expired (another cycle would be worth it).
    pub fn expire_cycle(&mut self, now: u64, max_rounds: usize) -> (usize, bool) {
        let mut removed = 0;
        for _ in 0..max_rounds {
            let sample = self.volatile.len().min(EXPIRE_SAMPLE);
            if sample == 0 {
                break;
            }
            let mut expired = 0;
            for _ in 0..sample {
                let n = self.volatile.len();
                if n == 0 {
                    break;
                }
                let pick = (self.next_random() % n as u64) as usize;
                let key = &self.volatile[pick];
                let Some((i, _, entry)) = self.map.get_full(&**key) else {
                    // Cannot happen (both sets change together); heal rather than loop.
                    self.volatile.swap_remove_index(pick);
                    continue;
                };
                if now >= entry.expires_at {
                    self.remove_expired(i);
                    expired += 1;
                }
            }
            removed += expired;
            if expired * 100 <= sample * EXPIRE_STALE_PERCENT {
                return (removed, false);
            }
        }
        (removed, !self.volatile.is_empty())
    }

    fn next_random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expired_keys_vanish_on_access() {
        let mut s = Store::default();
        s.set(b"a", b"1", Some(100), 0);
        s.set(b"b", b"2", None, 0);
        assert_eq!(s.get(b"a", 99).map(|e| e.value.clone()), Some(b"1".to_vec()));
        assert_eq!(s.volatile_len(), 1);
        assert!(s.get(b"a", 100).is_none());
        assert_eq!((s.len(), s.volatile_len(), s.expired_keys), (1, 0, 1));
        assert!(s.contains(b"b", u64::MAX - 1));
    }

    #[test]
    fn set_keeps_or_replaces_the_deadline() {
        let mut s = Store::default();
        s.set(b"k", b"v", Some(50), 0);
        s.set(b"k", b"w", None, 10);
        assert_eq!(s.get(b"k", 10).unwrap().expires_at, 50, "KEEPTTL");
        s.set(b"k", b"x", Some(NEVER), 10);
        assert_eq!(s.get(b"k", 10).unwrap().expires_at, NEVER);
        assert_eq!(s.volatile_len(), 0);
        assert!(s.set_deadline(b"k", 20));
        assert_eq!(s.volatile_len(), 1);
        assert!(s.remove(b"k", 10));
        assert_eq!((s.len(), s.volatile_len()), (0, 0));
        assert!(!s.set_deadline(b"k", 20));
    }

    #[test]
    fn active_expiry_removes_expired_keys_in_bounded_rounds() {
        let mut s = Store::new(7);
        for i in 0..1000u32 {
            s.set(&i.to_be_bytes(), b"v", Some(if i < 900 { 10 } else { 1000 }), 0);
        }
        for i in 0..100u32 {
            s.set(&(5000 + i).to_be_bytes(), b"v", None, 0);
        }
        // One round samples at most 20 keys.
        let (first, more) = s.expire_cycle(10, 1);
        assert!(more);
        assert!(first > 0 && first <= EXPIRE_SAMPLE, "{first}");
        // Enough rounds remove every expired key and nothing else.
        while s.expire_cycle(10, 16).1 {}
        let left = s.volatile_len();
        assert!((100..120).contains(&left), "{left} keys with a deadline left");
        let mut live = 0;
        for i in 0..1000u32 {
            live += usize::from(s.contains(&i.to_be_bytes(), 10));
        }
        assert_eq!(live, 100);
        assert_eq!(s.len(), 200);
    }

    fn scan_all(s: &mut Store, count: usize, mut between: impl FnMut(&mut Store, usize)) -> Vec<Vec<u8>> {
        let mut seen = Vec::new();
        let mut cursor = 0;
        let mut step = 0;
        loop {
            cursor = s.scan(cursor, count, None, 0, |k| seen.push(k.to_vec()));
            if cursor == 0 {
                return seen;
            }
            between(s, step);
            step += 1;
        }
    }

    #[test]
    fn scan_returns_every_key_present_throughout() {
        let mut s = Store::default();
        for i in 0..100u32 {
            s.set(format!("k{i}").as_bytes(), b"v", None, 0);
        }
        assert_eq!(scan_all(&mut s, 7, |_, _| {}).len(), 100);
        // Remove some keys and add others while scanning: every key never removed is seen.
        let mut removed = Vec::new();
        let seen = scan_all(&mut s, 7, |s, step| {
            let gone = format!("k{}", step * 3).into_bytes();
            s.remove(&gone, 0);
            removed.push(gone);
            s.set(format!("new{step}").as_bytes(), b"v", None, 0);
        });
        assert!(removed.len() > 10);
        for i in 0..100u32 {
            let key = format!("k{i}").into_bytes();
            assert!(removed.contains(&key) || seen.contains(&key), "k{i} was never returned");
        }
        let mut matched = Vec::new();
        s.scan(0, 1000, Some(b"k9?"), 0, |k| matched.push(k.to_vec()));
        assert_eq!(matched.len(), 10);
    }

    #[test]
    fn the_estimate_of_the_bytes_is_close() {
        let mut s = Store::default();
        for i in 0..100_000u32 {
            let value = vec![b'v'; (i % 200) as usize];
            s.set(format!("key:{i}").as_bytes(), &value, None, 0);
        }
        let (exact, estimate) = (s.dataset_bytes(), s.estimated_bytes());
        assert!(estimate.abs_diff(exact) * 20 < exact, "{estimate} against {exact}");
        s.remove(b"key:1", 0);
        let mut small = Store::default();
        small.set(b"k", b"12345", None, 0);
        assert_eq!(small.estimated_bytes(), 6, "exact when small");
    }

    #[test]
    fn keys_filters_by_pattern_and_expiry() {
        let mut s = Store::default();
        s.set(b"user:1", b"a", None, 0);
        s.set(b"user:2", b"b", Some(5), 0);
        s.set(b"other", b"c", None, 0);
        let mut k: Vec<&[u8]> = s.keys(b"user:*", 1).collect();
        k.sort();
        assert_eq!(k, [&b"user:1"[..], b"user:2"]);
        assert_eq!(s.keys(b"user:*", 5).count(), 1);
        assert_eq!(s.keys(b"*", 5).count(), 2);
    }
}

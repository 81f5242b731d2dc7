//! [`MemoryFront`]: the most recently used entries in memory, bounded in bytes, in front of
//! a store: a warm hit is a hash lookup under a lock, with no I/O.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use crate::entry::Entry;
use crate::key::CacheKey;

/// Entries by key, least recently used evicted first once `max_bytes` is reached.
pub struct MemoryFront {
    max_bytes: usize,
    inner: Mutex<Lru>,
}

#[derive(Default)]
struct Lru {
    slots: HashMap<CacheKey, Slot>,
    /// Use tick → key, oldest first.
    order: BTreeMap<u64, CacheKey>,
    tick: u64,
    bytes: usize,
}

struct Slot {
    entry: Arc<Entry>,
    tick: u64,
    size: usize,
}

/// What the front holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FrontStats {
    pub entries: usize,
    pub bytes: usize,
}

impl MemoryFront {
    pub fn new(max_bytes: usize) -> MemoryFront {
        MemoryFront {
            max_bytes,
            inner: Mutex::new(Lru::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lru> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The entry under `key`, now the most recently used.
    pub fn get(&self, key: &CacheKey) -> Option<Arc<Entry>> {
        let mut lru = self.lock();
        let Lru {
            slots, order, tick, ..
        } = &mut *lru;
        let slot = slots.get_mut(key)?;
        order.remove(&slot.tick);
        *tick += 1;
        slot.tick = *tick;
        order.insert(*tick, *key);
        Some(slot.entry.clone())
    }

    /// Keeps `entry` under `key` (replacing what was there), evicting the least recently
    /// used entries beyond the bound. An entry larger than the whole bound is not kept.
    pub fn insert(&self, key: CacheKey, entry: Arc<Entry>) {
        let size = entry.size();
        let mut lru = self.lock();
        lru.remove(&key);
        if size > self.max_bytes {
            return;
        }
        while lru.bytes + size > self.max_bytes {
            let Some((_, oldest)) = lru.order.pop_first() else {
                break;
            };
            if let Some(slot) = lru.slots.remove(&oldest) {
                lru.bytes -= slot.size;
            }
        }
        lru.tick += 1;
        let tick = lru.tick;
        lru.order.insert(tick, key);
        lru.bytes += size;
        lru.slots.insert(key, Slot { entry, tick, size });
    }

    pub fn remove(&self, key: &CacheKey) {
        self.lock().remove(key);
    }

    /// Drops every entry `purge` says to; returns how many.
    pub fn purge(&self, purge: impl Fn(&Entry) -> bool) -> usize {
        let mut lru = self.lock();
        let doomed: Vec<CacheKey> = lru
            .slots
            .iter()
            .filter(|(_, s)| purge(&s.entry))
            .map(|(k, _)| *k)
            .collect();
        for key in &doomed {
            lru.remove(key);
        }
        doomed.len()
    }

    pub fn stats(&self) -> FrontStats {
        let lru = self.lock();
        FrontStats {
            entries: lru.slots.len(),
            bytes: lru.bytes,
        }
    }
}

impl Lru {
    fn remove(&mut self, key: &CacheKey) {
        if let Some(slot) = self.slots.remove(key) {
            self.order.remove(&slot.tick);
            self.bytes -= slot.size;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::entry::StoredAnswer;
    use bytes::Bytes;
    use proptest::prelude::*;

    fn entry(body_len: usize) -> Arc<Entry> {
        Arc::new(Entry::new(
            "t",
            "m",
            "application/json",
            None,
            StoredAnswer::Completion(Bytes::from(vec![b'x'; body_len])),
        ))
    }

    fn key(i: u8) -> CacheKey {
        CacheKey([i; 32])
    }

    #[test]
    fn the_least_recently_used_goes_first() {
        let one = entry(100).size();
        let front = MemoryFront::new(3 * one);
        for i in 0..3 {
            front.insert(key(i), entry(100));
        }
        // Touch 0: 1 is now the oldest.
        assert!(front.get(&key(0)).is_some());
        front.insert(key(3), entry(100));
        assert!(front.get(&key(1)).is_none());
        for i in [0, 2, 3] {
            assert!(front.get(&key(i)).is_some(), "{i}");
        }
        assert_eq!(
            front.stats(),
            FrontStats {
                entries: 3,
                bytes: 3 * one
            }
        );
    }

    #[test]
    fn an_entry_larger_than_the_bound_is_not_kept_and_replaces_nothing_else() {
        let front = MemoryFront::new(1000);
        front.insert(key(1), entry(10));
        front.insert(key(2), entry(5000));
        assert!(front.get(&key(2)).is_none());
        assert!(front.get(&key(1)).is_some());
    }

    #[test]
    fn purge_drops_what_matches() {
        let front = MemoryFront::new(1 << 20);
        front.insert(key(1), entry(1));
        front.insert(
            key(2),
            Arc::new(Entry::new(
                "u",
                "m",
                "application/json",
                None,
                StoredAnswer::Stream(vec![]),
            )),
        );
        assert_eq!(front.purge(|e| e.tenant == "u"), 1);
        assert!(front.get(&key(2)).is_none());
        assert!(front.get(&key(1)).is_some());
    }

    proptest! {
        /// Whatever the operations, the byte count is the sum of what is held, within the
        /// bound, and the order index matches the slots.
        #[test]
        fn the_bound_and_the_books_hold(ops in prop::collection::vec((0u8..3, 0u8..12, 0usize..400), 1..200)) {
            let front = MemoryFront::new(2000);
            for (op, k, len) in ops {
                match op {
                    0 => front.insert(key(k), entry(len)),
                    1 => { front.get(&key(k)); }
                    _ => front.remove(&key(k)),
                }
                let lru = front.lock();
                let sum: usize = lru.slots.values().map(|s| s.size).sum();
                prop_assert_eq!(lru.bytes, sum);
                prop_assert!(lru.bytes <= 2000);
                prop_assert_eq!(lru.order.len(), lru.slots.len());
            }
        }
    }
}

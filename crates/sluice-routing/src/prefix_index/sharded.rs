//! [`ShardedMap`]: a hash map split into many small tables, so that no one insert pays for
//! reorganising a large one.
//!
//! A hash table grows by moving every entry into a table twice its size, and it clears the
//! tombstones that removals leave by rehashing every entry — both inside the one insert that
//! finds no room left. The index does its inserts under its write lock, and an engine in
//! steady state removes a block for every block it stores, so its tables keep filling with
//! tombstones: with millions of blocks, that one insert held the lock for tens of
//! milliseconds, and every match waited (docs/benchmarks.md, "At scale"). Split into many
//! tables picked by bits of the key's hash, the same work comes in pieces a shard's size,
//! each done within one insert and the lock handed over between them as usual.

use std::hash::{BuildHasher, Hash};

use hashbrown::hash_table::{Entry, HashTable};
use hashbrown::DefaultHashBuilder;

pub(crate) struct ShardedMap<K, V> {
    hasher: DefaultHashBuilder,
    /// A power of two of them.
    shards: Box<[HashTable<(K, V)>]>,
    len: usize,
}

impl<K: Hash + Eq, V> ShardedMap<K, V> {
    /// An empty map of `shards` tables (a power of two); none allocates until it is used.
    pub(crate) fn new(shards: usize) -> ShardedMap<K, V> {
        assert!(shards.is_power_of_two(), "shards: {shards}");
        ShardedMap {
            hasher: DefaultHashBuilder::default(),
            shards: (0..shards).map(|_| HashTable::new()).collect(),
            len: 0,
        }
    }

    /// The key's hash and its shard. A table finds a key's bucket by the hash's low bits
    /// and tells keys apart within a group by its top seven: the shard is picked from bits
    /// in between, so the keys of one shard still differ in both.
    fn locate(&self, key: &K) -> (u64, usize) {
        let hash = self.hasher.hash_one(key);
        let shard = (hash >> 32) as usize & (self.shards.len() - 1);
        (hash, shard)
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Bytes the tables take, spare room included (what the entries point to aside).
    pub(crate) fn allocation_size(&self) -> usize {
        let tables: usize = self.shards.iter().map(HashTable::allocation_size).sum();
        tables + std::mem::size_of_val(&*self.shards)
    }

    pub(crate) fn get(&self, key: &K) -> Option<&V> {
        let (hash, shard) = self.locate(key);
        self.shards[shard]
            .find(hash, |(k, _)| k == key)
            .map(|(_, v)| v)
    }

    pub(crate) fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let (hash, shard) = self.locate(key);
        self.shards[shard]
            .find_mut(hash, |(k, _)| k == key)
            .map(|(_, v)| v)
    }

    pub(crate) fn contains_key(&self, key: &K) -> bool {
        self.get(key).is_some()
    }

    /// The value under `key`, made by `make` if there is none.
    pub(crate) fn get_or_insert_with(&mut self, key: K, make: impl FnOnce() -> V) -> &mut V {
        let (hash, shard) = self.locate(&key);
        let hasher = &self.hasher;
        match self.shards[shard].entry(hash, |(k, _)| *k == key, |(k, _)| hasher.hash_one(k)) {
            Entry::Occupied(e) => &mut e.into_mut().1,
            Entry::Vacant(e) => {
                self.len += 1;
                &mut e.insert((key, make())).into_mut().1
            }
        }
    }

    /// Puts `value` under `key`; returns what was there.
    pub(crate) fn insert(&mut self, key: K, value: V) -> Option<V> {
        let (hash, shard) = self.locate(&key);
        let hasher = &self.hasher;
        match self.shards[shard].entry(hash, |(k, _)| *k == key, |(k, _)| hasher.hash_one(k)) {
            Entry::Occupied(mut e) => Some(std::mem::replace(&mut e.get_mut().1, value)),
            Entry::Vacant(e) => {
                self.len += 1;
                e.insert((key, value));
                None
            }
        }
    }

    pub(crate) fn remove(&mut self, key: &K) -> Option<V> {
        let (hash, shard) = self.locate(key);
        match self.shards[shard].find_entry(hash, |(k, _)| k == key) {
            Ok(e) => {
                self.len -= 1;
                Some(e.remove().0 .1)
            }
            Err(_) => None,
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.shards.iter().flatten().map(|(k, v)| (k, v))
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }

    /// Everything taken out, the map left empty with as many shards.
    pub(crate) fn take(&mut self) -> ShardedMap<K, V> {
        let empty = ShardedMap::new(self.shards.len());
        std::mem::replace(self, empty)
    }
}

impl<K, V> IntoIterator for ShardedMap<K, V> {
    type Item = (K, V);
    type IntoIter = std::iter::Flatten<std::vec::IntoIter<HashTable<(K, V)>>>;

    fn into_iter(self) -> Self::IntoIter {
        self.shards.into_vec().into_iter().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Random inserts, overwrites and removes, checked against std's map after each.
    #[test]
    fn behaves_as_a_map() {
        let mut sharded = ShardedMap::new(8);
        let mut plain = HashMap::new();
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        for step in 0..20_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let key = x % 500;
            match x % 4 {
                0 | 1 => assert_eq!(sharded.insert(key, step), plain.insert(key, step)),
                2 => assert_eq!(sharded.remove(&key), plain.remove(&key)),
                _ => {
                    *sharded.get_or_insert_with(key, || 0) += 1;
                    *plain.entry(key).or_insert(0) += 1;
                }
            }
            assert_eq!(sharded.len(), plain.len());
            assert_eq!(sharded.get(&key), plain.get(&key));
        }
        assert!(sharded.allocation_size() >= sharded.len() * std::mem::size_of::<(u64, u32)>());
        let mut all: Vec<_> = sharded.iter().map(|(&k, &v)| (k, v)).collect();
        all.sort_unstable();
        let mut expected: Vec<_> = plain.into_iter().collect();
        expected.sort_unstable();
        assert_eq!(all, expected);
        let taken = sharded.take();
        assert_eq!(sharded.len(), 0);
        assert_eq!(sharded.get(&expected[0].0), None);
        let mut drained: Vec<_> = taken.into_iter().collect();
        drained.sort_unstable();
        assert_eq!(drained, expected);
    }

    /// The keys spread over every shard (the shard bits are not constant), and a shard's
    /// keys keep distinct tags (the top bits are not the shard's).
    #[test]
    fn keys_spread_over_the_shards() {
        let mut map = ShardedMap::new(64);
        for k in 0..64_000u64 {
            map.insert(k, ());
        }
        let sizes: Vec<usize> = map.shards.iter().map(HashTable::len).collect();
        assert!(sizes.iter().all(|&n| n > 500 && n < 1_500), "{sizes:?}");
        let tags: std::collections::HashSet<u64> = map.shards[0]
            .iter()
            .map(|(k, _)| map.hasher.hash_one(k) >> 57)
            .collect();
        assert!(tags.len() > 100, "{} distinct tags", tags.len());
    }
}

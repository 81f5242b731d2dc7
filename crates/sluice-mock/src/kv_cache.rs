//! A simulated prefix KV cache, after vLLM's automatic prefix caching: the prompt is cut into
//! full blocks of `block_size` tokens, each block is named by a hash chained over every token
//! before it, and a request skips prefill for the leading run of its blocks already cached.
//!
//! Insertion reports which block hashes were stored and which were evicted, the events an
//! engine publishes for KV-aware routing.

use std::collections::{BTreeMap, HashMap};

use xxhash_rust::xxh3::Xxh3;

/// Parent hash of a prompt's first block.
const ROOT_PARENT_HASH: u64 = 0x5C1C_E000_0000_0001;

/// What one insertion changed, in the order it happened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CacheUpdate {
    /// Newly cached blocks, in prompt order.
    pub stored: Vec<u64>,
    /// Blocks evicted to make room, least recently used first.
    pub removed: Vec<u64>,
}

/// A prompt's full blocks: their hashes, and (when the engine publishes KV events, which
/// carry them) their tokens.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PromptBlocks {
    pub hashes: Vec<u64>,
    pub tokens: Vec<u32>,
}

/// Chained hashes of the full blocks of `tokens`: block i hashes its parent's hash
/// (little-endian) followed by its token ids (little-endian u32 each), so equal blocks after
/// different prefixes get different hashes. The first block's parent is `salt` mixed into a
/// constant: as vLLM seeds its hash per process, two engines name the same block
/// differently. A `block_size` of 0 is taken as 1.
pub(crate) fn block_hashes(block_size: usize, salt: u64, tokens: &[u32]) -> Vec<u64> {
    let mut parent = ROOT_PARENT_HASH ^ salt;
    tokens
        .chunks_exact(block_size.max(1))
        .map(|block| {
            let mut h = Xxh3::new();
            h.update(&parent.to_le_bytes());
            for t in block {
                h.update(&t.to_le_bytes());
            }
            parent = h.digest();
            parent
        })
        .collect()
}

#[derive(Debug)]
pub(crate) struct PrefixCache {
    block_size: usize,
    capacity: usize,
    /// Block hash → its last-use stamp.
    stamps: HashMap<u64, u64>,
    /// Last-use stamp → block hash; the first entry is the eviction candidate.
    by_stamp: BTreeMap<u64, u64>,
    clock: u64,
}

impl PrefixCache {
    /// A `block_size` of 0 is taken as 1.
    pub(crate) fn new(block_size: usize, capacity: usize) -> Self {
        PrefixCache {
            block_size: block_size.max(1),
            capacity,
            stamps: HashMap::new(),
            by_stamp: BTreeMap::new(),
            clock: 0,
        }
    }

    pub(crate) fn block_size(&self) -> usize {
        self.block_size
    }

    pub(crate) fn len(&self) -> usize {
        self.stamps.len()
    }

    #[cfg(test)]
    fn block_hashes(&self, tokens: &[u32]) -> Vec<u64> {
        block_hashes(self.block_size, 0, tokens)
    }

    /// How many leading blocks of a prompt of `prompt_len` tokens (with block hashes
    /// `hashes`) are cached. As in vLLM the last prompt token is always computed, so only
    /// the blocks lying entirely within the first `prompt_len - 1` tokens count.
    pub(crate) fn cached_prefix_blocks(&self, hashes: &[u64], prompt_len: usize) -> usize {
        let cacheable = prompt_len.saturating_sub(1) / self.block_size;
        hashes
            .iter()
            .take(cacheable)
            .take_while(|h| self.stamps.contains_key(h))
            .count()
    }

    /// Caches the blocks of a prompt that was just prefilled and marks them all most recently
    /// used, evicting least recently used blocks beyond capacity.
    pub(crate) fn insert(&mut self, hashes: &[u64]) -> CacheUpdate {
        let mut update = CacheUpdate::default();
        if self.capacity == 0 {
            return update;
        }
        // Stamped last block first, so the chain's tail is evicted before its head: a
        // partial eviction then leaves a usable shorter prefix, as vLLM's free order does.
        for &hash in hashes.iter().rev() {
            self.clock += 1;
            match self.stamps.insert(hash, self.clock) {
                Some(old) => {
                    self.by_stamp.remove(&old);
                }
                None => update.stored.push(hash),
            }
            self.by_stamp.insert(self.clock, hash);
        }
        update.stored.reverse();
        while self.stamps.len() > self.capacity {
            let Some((_, hash)) = self.by_stamp.pop_first() else {
                break;
            };
            self.stamps.remove(&hash);
            update.removed.push(hash);
        }
        update
    }

    /// Drops every block; returns how many there were.
    pub(crate) fn clear(&mut self) -> usize {
        let n = self.stamps.len();
        self.stamps.clear();
        self.by_stamp.clear();
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(n: u32, offset: u32) -> Vec<u32> {
        (offset..offset + n).collect()
    }

    #[test]
    fn only_full_blocks_are_hashed() {
        let c = PrefixCache::new(4, 100);
        assert_eq!(c.block_hashes(&tokens(11, 0)).len(), 2);
        assert_eq!(c.block_hashes(&tokens(3, 0)).len(), 0);
    }

    #[test]
    fn hashes_are_chained() {
        let c = PrefixCache::new(2, 100);
        let a = c.block_hashes(&[1, 2, 9, 9]);
        let b = c.block_hashes(&[3, 4, 9, 9]);
        // Same second block content, different parents.
        assert_ne!(a[1], b[1]);
        // Same prefix, same hashes.
        assert_eq!(c.block_hashes(&[1, 2, 7, 7])[0], a[0]);
    }

    #[test]
    fn hits_count_the_leading_run_and_keep_one_token_uncached() {
        let mut c = PrefixCache::new(4, 100);
        let prompt = tokens(12, 0);
        let hashes = c.block_hashes(&prompt);
        assert_eq!(c.cached_prefix_blocks(&hashes, prompt.len()), 0);
        let update = c.insert(&hashes);
        assert_eq!(update.stored, hashes);
        assert!(update.removed.is_empty());
        // 12 tokens, all 3 blocks cached, but (12 - 1) / 4 = 2 may be used.
        assert_eq!(c.cached_prefix_blocks(&hashes, prompt.len()), 2);
        // 13 tokens: 3 full blocks within the first 12.
        let longer = tokens(13, 0);
        let lh = c.block_hashes(&longer);
        assert_eq!(c.cached_prefix_blocks(&lh, longer.len()), 3);
        // A different first block breaks the run even if later blocks were cached.
        let mut other = prompt.clone();
        other[0] = 99;
        let oh = c.block_hashes(&other);
        assert_eq!(c.cached_prefix_blocks(&oh, other.len()), 0);
        assert_eq!(c.cached_prefix_blocks(&[], 0), 0);
        assert_eq!(c.cached_prefix_blocks(&hashes, 1), 0);
    }

    #[test]
    fn reinserting_stores_nothing_new() {
        let mut c = PrefixCache::new(4, 100);
        let h = c.block_hashes(&tokens(8, 0));
        c.insert(&h);
        assert_eq!(c.insert(&h), CacheUpdate::default());
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn lru_eviction_order_and_capacity() {
        let mut c = PrefixCache::new(1, 4);
        let a = c.block_hashes(&[1, 2]);
        let b = c.block_hashes(&[3, 4]);
        let d = c.block_hashes(&[5, 6]);
        c.insert(&a);
        c.insert(&b);
        // Touch a: b becomes least recently used.
        c.insert(&a);
        let update = c.insert(&d);
        assert_eq!(update.stored, d);
        // b's tail goes before its head.
        assert_eq!(update.removed, vec![b[1], b[0]]);
        assert_eq!(c.len(), 4);
        assert_eq!(c.cached_prefix_blocks(&a, 3), 2);
        assert_eq!(c.cached_prefix_blocks(&b, 3), 0);
    }

    #[test]
    fn partial_eviction_keeps_the_head_of_a_chain() {
        let mut c = PrefixCache::new(1, 3);
        let a = c.block_hashes(&[1, 2, 3]);
        c.insert(&a);
        let update = c.insert(&c.block_hashes(&[7]));
        assert_eq!(update.removed, vec![a[2]]);
        assert_eq!(c.cached_prefix_blocks(&a, 4), 2);
    }

    #[test]
    fn capacity_is_never_exceeded() {
        let mut c = PrefixCache::new(2, 10);
        for i in 0..50 {
            let h = c.block_hashes(&tokens(8, i * 8));
            let update = c.insert(&h);
            assert!(c.len() <= 10);
            assert_eq!(update.stored.len(), 4);
            if i >= 3 {
                assert_eq!(update.removed.len(), 4);
            }
        }
        let mut none = PrefixCache::new(2, 0);
        let h = none.block_hashes(&tokens(8, 0));
        assert_eq!(none.insert(&h), CacheUpdate::default());
        assert_eq!(none.len(), 0);
    }

    proptest::proptest! {
        #[test]
        fn stored_minus_removed_is_what_is_cached(
            prompts in proptest::collection::vec(proptest::collection::vec(0u32..4, 0..24), 1..40),
            capacity in 0usize..12,
        ) {
            let mut c = PrefixCache::new(2, capacity);
            let mut live = std::collections::HashSet::new();
            for p in &prompts {
                let update = c.insert(&c.block_hashes(p));
                live.extend(update.stored.iter().copied());
                for h in &update.removed {
                    proptest::prop_assert!(live.remove(h), "removed a block never stored");
                }
                proptest::prop_assert!(c.len() <= capacity);
                proptest::prop_assert_eq!(c.len(), live.len());
            }
        }
    }

    #[test]
    fn clear_empties() {
        let mut c = PrefixCache::new(2, 10);
        let h = c.block_hashes(&tokens(8, 0));
        c.insert(&h);
        assert_eq!(c.clear(), 4);
        assert_eq!(c.cached_prefix_blocks(&h, 9), 0);
    }
}

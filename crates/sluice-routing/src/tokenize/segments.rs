//! A conversation's earlier turns, tokenized once.
//!
//! Every turn of a chat resends its whole history, and a model's tokenizer costs about a
//! microsecond a token: a 30 000-token agent conversation would cost 30 ms of a core at
//! every turn to learn what the gateway already knew from the turn before.
//!
//! Hugging Face's tokenizer first cuts the text at its added tokens (`<|im_start|>`,
//! `<|im_end|>`, ... those matched before normalizing), then tokenizes each piece between
//! them on its own. A chat template writes those tokens around every message, so the pieces
//! of earlier turns come back unchanged, and the ids of a piece can be kept by its text.
//! [`SegmentSplitter`] cuts where the tokenizer cuts (the same Aho-Corasick automaton, same
//! leftmost-longest matching over the same tokens); [`SegmentCache`] keeps the ids of the
//! pieces, bounded in memory.
//!
//! Tokenizing the pieces apart gives the ids of the whole only when no piece's tokens depend
//! on where it stands. [`SegmentSplitter::new`] refuses the tokenizers where they can:
//! - an added token with `lstrip`, `rstrip` or `single_word` (its match looks at, or takes,
//!   the text beside it);
//! - a Metaspace pre-tokenizer with `prepend_scheme: "first"` (it prepends `▁` to the piece at
//!   the start of the text only);
//! - special tokens set to be encoded as text (matches are then skipped, not absent).
//!
//! The rest of the pipeline (normalizer, pre-tokenizer, model) runs piece by piece in the
//! tokenizer itself, which is why the ids of a piece tokenized alone are those it gets in
//! the whole. The tests check that against the whole on generated texts.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use daachorse::{DoubleArrayAhoCorasick, DoubleArrayAhoCorasickBuilder, MatchKind};
use parking_lot::Mutex;
use xxhash_rust::xxh3::xxh3_128_with_seed;

/// Cuts a prompt where the tokenizer cuts it: at the added tokens matched before
/// normalizing.
pub struct SegmentSplitter {
    /// `None`: the tokenizer has no such tokens; the text is one piece.
    tokens: Option<DoubleArrayAhoCorasick<u32>>,
}

/// One piece of a prompt, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece<'a> {
    /// An added token: its id.
    Added(u32),
    /// The text between two added tokens (never empty).
    Text(&'a str),
}

impl SegmentSplitter {
    /// The splitter for `tokenizer`, or why its pieces could tokenize differently apart.
    pub fn new(tokenizer: &tokenizers::Tokenizer) -> Result<SegmentSplitter, String> {
        if tokenizer.get_encode_special_tokens() {
            return Err("it encodes special tokens as text".into());
        }
        let mut patterns: Vec<(String, u32)> = Vec::new();
        for (id, token) in tokenizer.get_added_tokens_decoder() {
            if token.normalized {
                // Matched inside each piece, after normalizing: the tokenizer does that
                // itself when given the piece.
                continue;
            }
            if token.lstrip || token.rstrip || token.single_word {
                return Err(format!(
                    "its added token {:?} takes or looks at the text beside it (lstrip, rstrip \
                     or single_word)",
                    token.content
                ));
            }
            patterns.push((token.content, id));
        }
        if let Some(pre) = tokenizer.get_pre_tokenizer() {
            let json = serde_json::to_value(pre).map_err(|e| e.to_string())?;
            if prepends_to_first_piece(&json) {
                return Err(
                    "its Metaspace pre-tokenizer prepends to the first piece only \
                     (prepend_scheme \"first\")"
                        .into(),
                );
            }
        }
        if patterns.is_empty() {
            return Ok(SegmentSplitter { tokens: None });
        }
        let tokens = DoubleArrayAhoCorasickBuilder::new()
            .match_kind(MatchKind::LeftmostLongest)
            .build_with_values(patterns)
            .map_err(|e| format!("its added tokens do not build a matcher: {e}"))?;
        Ok(SegmentSplitter {
            tokens: Some(tokens),
        })
    }

    /// The pieces of `text`, in order.
    pub fn pieces<'a>(&'a self, text: &'a str) -> impl Iterator<Item = Piece<'a>> + 'a {
        let mut matches = self
            .tokens
            .as_ref()
            .map(|t| t.leftmost_find_iter(text.as_bytes()));
        let mut at = 0;
        let mut pending: Option<u32> = None;
        std::iter::from_fn(move || {
            if let Some(id) = pending.take() {
                return Some(Piece::Added(id));
            }
            match matches.as_mut().and_then(Iterator::next) {
                Some(m) => {
                    let before = &text[at..m.start()];
                    at = m.end();
                    if before.is_empty() {
                        Some(Piece::Added(m.value()))
                    } else {
                        pending = Some(m.value());
                        Some(Piece::Text(before))
                    }
                }
                None if at < text.len() => {
                    let rest = &text[at..];
                    at = text.len();
                    Some(Piece::Text(rest))
                }
                None => None,
            }
        })
    }
}

/// Whether a pre-tokenizer (as its JSON) holds a Metaspace with `prepend_scheme: "first"`.
fn prepends_to_first_piece(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Object(o) => {
            let first = o.get("type").and_then(|t| t.as_str()) == Some("Metaspace")
                && o.get("prepend_scheme").and_then(|s| s.as_str()) == Some("first");
            first || o.values().any(prepends_to_first_piece)
        }
        serde_json::Value::Array(items) => items.iter().any(prepends_to_first_piece),
        _ => false,
    }
}

/// What an entry costs beyond its ids: the key, the pointer, the shared header and the
/// table's slot, rounded up.
const ENTRY_OVERHEAD_BYTES: u64 = 80;
const SHARDS: usize = 16;

/// The ids of prompt pieces by their text, within a memory budget.
///
/// Keys are 128-bit hashes of the text with a seed drawn at start, so that a client cannot
/// choose a text whose hash is another's (a hit on the wrong entry would only misroute, as
/// the tokens serve routing alone, but it should not be possible to aim for).
///
/// Eviction keeps two generations per shard: entries go into the young one, a hit in the
/// old one moves the entry to the young one, and when the young one holds half the shard's
/// budget the old one is dropped and the young one becomes old. What was used since the
/// last turnover stays; the cost is one hash lookup or two.
pub struct SegmentCache {
    shards: Box<[Mutex<Generations>]>,
    /// Per shard; a generation turns over at half of it.
    shard_budget: u64,
    seed: u64,
    hits: AtomicU64,
    misses: AtomicU64,
}

#[derive(Default)]
struct Generations {
    young: hashbrown::HashMap<u128, Arc<[u32]>>,
    young_bytes: u64,
    old: hashbrown::HashMap<u128, Arc<[u32]>>,
    old_bytes: u64,
}

impl Generations {
    fn insert(&mut self, key: u128, ids: Arc<[u32]>, turnover_at: u64) {
        let bytes = entry_bytes(&ids);
        if self.young_bytes + bytes > turnover_at {
            self.old = std::mem::take(&mut self.young);
            self.old_bytes = std::mem::take(&mut self.young_bytes);
        }
        if let Some(replaced) = self.young.insert(key, ids) {
            self.young_bytes -= entry_bytes(&replaced);
        }
        self.young_bytes += bytes;
    }
}

fn entry_bytes(ids: &[u32]) -> u64 {
    ids.len() as u64 * 4 + ENTRY_OVERHEAD_BYTES
}

/// A cache's counts, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SegmentCacheStats {
    /// Pieces whose ids came from the cache.
    pub hits: u64,
    /// Pieces tokenized (and then kept).
    pub misses: u64,
    /// Memory the kept ids take (approximately: ids plus a fixed cost an entry).
    pub bytes: u64,
}

impl SegmentCache {
    /// A cache holding at most about `budget_bytes`. A piece larger than a generation's
    /// share (`budget_bytes / 32`) is tokenized each time, not kept.
    pub fn new(budget_bytes: u64) -> SegmentCache {
        let seed = RandomState::new().hash_one(0x5e9_u64);
        SegmentCache {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            shard_budget: budget_bytes / SHARDS as u64,
            seed,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn key(&self, text: &str) -> u128 {
        xxh3_128_with_seed(text.as_bytes(), self.seed)
    }

    fn shard(&self, key: u128) -> &Mutex<Generations> {
        // The low bits pick the shard; the tables inside use the hash's other bits too.
        &self.shards[(key as usize) % SHARDS]
    }

    /// The ids of `text`: kept ones, or `tokenize(text)`'s, then kept.
    pub fn get_or_tokenize<E>(
        &self,
        text: &str,
        tokenize: impl FnOnce(&str) -> Result<Vec<u32>, E>,
        out: &mut Vec<u32>,
    ) -> Result<(), E> {
        let key = self.key(text);
        let turnover_at = self.shard_budget / 2;
        {
            let mut shard = self.shard(key).lock();
            if let Some(ids) = shard.young.get(&key) {
                out.extend_from_slice(ids);
                self.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            if let Some(ids) = shard.old.remove(&key) {
                shard.old_bytes -= entry_bytes(&ids);
                out.extend_from_slice(&ids);
                shard.insert(key, ids, turnover_at);
                self.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
        }
        // Tokenized outside the lock: two requests may tokenize the same new piece at
        // once, which costs time, never a wrong answer.
        let ids = tokenize(text)?;
        self.misses.fetch_add(1, Ordering::Relaxed);
        out.extend_from_slice(&ids);
        if entry_bytes(&ids) <= turnover_at {
            self.shard(key)
                .lock()
                .insert(key, Arc::from(ids), turnover_at);
        }
        Ok(())
    }

    pub fn stats(&self) -> SegmentCacheStats {
        let bytes = self
            .shards
            .iter()
            .map(|s| {
                let s = s.lock();
                s.young_bytes + s.old_bytes
            })
            .sum();
        SegmentCacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cache_stays_within_its_budget_and_keeps_what_is_used() {
        // 16 shards of 16 KiB: a generation turns over at 8 KiB a shard.
        let cache = SegmentCache::new(256 * 1024);
        let tokenize = |t: &str| Ok::<_, ()>(vec![t.len() as u32; 100]);
        let mut out = Vec::new();
        cache.get_or_tokenize("kept", tokenize, &mut out).unwrap();
        for i in 0..10_000 {
            cache
                .get_or_tokenize(&format!("piece {i}"), tokenize, &mut out)
                .unwrap();
            // Used all along: never evicted.
            cache.get_or_tokenize("kept", tokenize, &mut out).unwrap();
            assert!(cache.stats().bytes <= 256 * 1024, "over budget at {i}");
        }
        let s = cache.stats();
        assert_eq!(s.misses, 10_001);
        assert_eq!(s.hits, 10_000);
        // Evicted long ago: tokenized again.
        cache
            .get_or_tokenize("piece 0", tokenize, &mut out)
            .unwrap();
        assert_eq!(cache.stats().misses, 10_002);
        assert_eq!(out.len(), 20_002 * 100);
    }

    #[test]
    fn a_piece_larger_than_a_generation_is_not_kept() {
        let cache = SegmentCache::new(16 * 1024);
        let tokenize = |_: &str| Ok::<_, ()>(vec![7; 1000]);
        let mut out = Vec::new();
        cache.get_or_tokenize("big", tokenize, &mut out).unwrap();
        cache.get_or_tokenize("big", tokenize, &mut out).unwrap();
        assert_eq!(cache.stats().misses, 2);
        assert_eq!(cache.stats().bytes, 0);
        assert_eq!(out, vec![7; 2000]);
    }

    #[test]
    fn an_error_is_passed_on_and_nothing_kept() {
        let cache = SegmentCache::new(1 << 20);
        let mut out = Vec::new();
        let r = cache.get_or_tokenize("x", |_| Err::<Vec<u32>, _>("refused"), &mut out);
        assert_eq!(r, Err("refused"));
        assert_eq!(cache.stats().bytes, 0);
        assert!(out.is_empty());
    }

    #[test]
    fn prepend_scheme_first_is_found_inside_a_sequence() {
        let pre = serde_json::json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"String": " "}, "behavior": "Isolated"},
            {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": true}
        ]});
        assert!(prepends_to_first_piece(&pre));
        let always = serde_json::json!({"type": "Metaspace", "prepend_scheme": "always"});
        assert!(!prepends_to_first_piece(&always));
    }
}

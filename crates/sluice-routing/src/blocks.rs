//! The gateway's name for a block of tokens: a hash of the block's tokens chained on the
//! hash of the block before it, so equal names mean equal prefixes up to and including the
//! block. xxh3 (64 bits): fast, and at 2^-64 per pair, collisions between real prompts do not
//! happen in practice; a collision would cost one routing decision, never a wrong answer.
//!
//! The chain starts from a root per LoRA adapter, so an adapter's blocks never match the base
//! model's.

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed, Xxh3};

/// A block's name in the prefix index.
pub type OwnHash = u64;

/// Hashes token blocks of one size (the engine's block size: only full blocks are cached).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockHasher {
    block_size: usize,
}

impl BlockHasher {
    /// `block_size` is at least 1.
    pub fn new(block_size: usize) -> BlockHasher {
        BlockHasher {
            block_size: block_size.max(1),
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// The parent of a sequence's first block, for the base model (`None`) or an adapter.
    pub fn root(&self, lora: Option<&str>) -> OwnHash {
        match lora {
            None => 0x736c_7569_6365_0000, // "sluice\0\0"
            Some(name) => xxh3_64(name.as_bytes()) | 1,
        }
    }

    /// The name of the block `tokens` whose parent is named `parent`.
    pub fn next(&self, parent: OwnHash, tokens: &[u32]) -> OwnHash {
        // Tokens as little-endian bytes, through a buffer on the stack.
        let mut bytes = [0u8; 4 * 64];
        let fill = |bytes: &mut [u8; 256], part: &[u32]| {
            for (chunk, t) in bytes.chunks_exact_mut(4).zip(part) {
                chunk.copy_from_slice(&t.to_le_bytes());
            }
            4 * part.len()
        };
        if tokens.len() <= 64 {
            let n = fill(&mut bytes, tokens);
            return xxh3_64_with_seed(&bytes[..n], parent);
        }
        let mut state = Xxh3::with_seed(parent);
        for part in tokens.chunks(64) {
            let n = fill(&mut bytes, part);
            state.update(&bytes[..n]);
        }
        state.digest()
    }

    /// The names of every full block of `tokens`, first to last.
    pub fn chain(&self, lora: Option<&str>, tokens: &[u32]) -> Vec<OwnHash> {
        let mut parent = self.root(lora);
        tokens
            .chunks_exact(self.block_size)
            .map(|block| {
                parent = self.next(parent, block);
                parent
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_names_mean_equal_prefixes() {
        let h = BlockHasher::new(4);
        let a = h.chain(None, &[1, 2, 3, 4, 5, 6, 7, 8, 9]);
        assert_eq!(a.len(), 2, "the partial last block is not named");
        let b = h.chain(None, &[1, 2, 3, 4, 5, 6, 7, 0]);
        assert_eq!(a[0], b[0]);
        assert_ne!(a[1], b[1]);
        // The same block after a different prefix is a different block.
        let c = h.chain(None, &[0, 2, 3, 4, 5, 6, 7, 8]);
        assert_ne!(a[1], c[1]);
        // An adapter's blocks are its own.
        assert_ne!(h.chain(Some("sql"), &[1, 2, 3, 4])[0], a[0]);
        // Long blocks hash all their tokens.
        let long = BlockHasher::new(100);
        let t: Vec<u32> = (0..100).collect();
        let mut u = t.clone();
        u[99] = 0;
        assert_ne!(long.chain(None, &t), long.chain(None, &u));
        // Hashed in pieces, the same as at once.
        let bytes: Vec<u8> = t.iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(long.next(7, &t), xxh3_64_with_seed(&bytes, 7));
    }
}

//! Where a request goes.
//!
//! - [`blocks`]: the gateway's own chained hash over a prompt's token blocks. Engines hash
//!   blocks with a seeded hash no one else can recompute, so the index names every block by
//!   this hash of its tokens and keeps, per engine, the engine's names for them.
//! - [`PrefixIndex`]: which engine (pod) holds which blocks, fed by the engines' KV events and
//!   by what was routed; answers how many leading blocks of a prompt each candidate holds.

pub mod blocks;
mod prefix_index;

pub use blocks::{BlockHasher, OwnHash};
pub use prefix_index::{Applied, PodId, PodSummary, PrefixIndex, Rejected};

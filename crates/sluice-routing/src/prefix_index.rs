//! [`PrefixIndex`]: which pods hold which blocks of one model's prompts.
//!
//! Two sources feed it. A pod's KV events ([`PrefixIndex::apply`]) say what its engine
//! stored and evicted: each stored block is named by the gateway's own chained hash of its
//! tokens ([`BlockHasher`]), and the pod keeps a map from the engine's hash to that name, to
//! place the next event's parent and to remove what the engine names in `BlockRemoved`.
//! Routing ([`PrefixIndex::insert_routed`]) says what a pod is about to hold: the prompt just
//! sent to it, counted until an expiry — short for pods that publish events (their events
//! take over), long for pods that do not (routing is then all the index knows).
//!
//! Everything a pod holds is its own: removing, clearing or purging one pod never touches what
//! another holds.
//!
//! One lock over the whole index: a match takes it shared once for the whole prompt; an event
//! batch takes it exclusively, but hands it to waiting readers every [`YIELD_EVERY`] blocks
//! ([`Exclusive`]), so a match waits for at most that many blocks of work, however large the
//! batch (a long prompt's chain, a replay), and never behind a run of batches.

use hashbrown::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};

use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use sluice_api::kv_events::{BlockHash, BlockStored, KvEvent};
use smallvec::SmallVec;
use thiserror::Error;

use crate::blocks::{BlockHasher, OwnHash};
use sharded::ShardedMap;

mod sharded;

/// A pod (one engine's cache) as the index knows it. Never reused within an index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodId(u32);

/// At most this many routed blocks are remembered per pod; beyond it, routing adds nothing
/// until expired ones are swept (a bound on memory, whatever the traffic).
const MAX_ROUTED_PER_POD: usize = 1 << 20;

/// At most this many blocks an engine reported are held per pod (about 220 MB at 106 bytes
/// a block; a large GPU's cache is some hundred thousand). Beyond it, new blocks are refused
/// until the engine reports some removed: an engine that never does cannot grow the index
/// without end.
const MAX_STORED_PER_POD: usize = 1 << 21;

/// Blocks of work done under the write lock between two hand-overs to waiting readers: about
/// 100 µs when the index is far larger than the CPU caches (docs/benchmarks.md, "At scale").
const YIELD_EVERY: u32 = 48;

/// Tables the index's map of blocks is split into: at 2.3 M blocks (50 engines), one
/// reorganised in one insert holds some 2 300 (docs/benchmarks.md, "At scale").
const BLOCK_SHARDS: usize = 1024;

/// Tables each pod's maps are split into: a pod of 50 000 blocks has some 200 a table.
const POD_SHARDS: usize = 256;

/// The write lock held over work of many blocks, handed to waiting readers every
/// [`YIELD_EVERY`] blocks and when the work ends. Whoever got it meanwhile may have changed
/// anything: after a hand-over the work re-checks what it relies on (the pod's epoch).
struct Exclusive<'a> {
    guard: RwLockWriteGuard<'a, State>,
    readers_waiting: &'a AtomicU32,
    since_yield: u32,
}

impl Exclusive<'_> {
    /// Counts one block of work; returns whether the lock was handed over just now.
    fn step(&mut self) -> bool {
        self.since_yield += 1;
        if self.since_yield < YIELD_EVERY {
            return false;
        }
        self.since_yield = 0;
        self.hand_over();
        true
    }

    /// A parked reader gets the lock from a fair unlock. A reader still spinning has not
    /// parked yet, and it may share this thread's core (a thread waking from sleep is often
    /// put beside the one that runs): unless this thread gives up the core while the lock
    /// is free, that reader waits out a whole time slice of batches (4 ms measured,
    /// docs/benchmarks.md, "At scale").
    fn hand_over(&mut self) {
        if self.readers_waiting.load(Ordering::Relaxed) > 0 {
            RwLockWriteGuard::unlocked_fair(&mut self.guard, std::thread::yield_now);
        } else {
            RwLockWriteGuard::bump(&mut self.guard);
        }
    }
}

impl Drop for Exclusive<'_> {
    /// The work's end is a hand-over too: otherwise the next batch's writer can take the
    /// lock again before a waiting reader runs, and a run of short batches would keep it.
    /// Costs one load when no reader waits.
    fn drop(&mut self) {
        self.hand_over();
    }
}

#[derive(Debug, Clone, Copy)]
struct Holder {
    pod: PodId,
    /// How many of the pod's engine blocks carry this name (usually 1).
    stored: u32,
    /// Held on routing's word until this time (ms on the caller's clock; 0: not).
    routed_until: u64,
}

impl Holder {
    fn holds(&self, now_ms: u64) -> bool {
        self.stored > 0 || self.routed_until > now_ms
    }
}

type Holders = SmallVec<[Holder; 2]>;

struct Pod {
    name: String,
    /// The engine's hash of each block it reported stored → the block's name here.
    engine: ShardedMap<BlockHash, OwnHash>,
    /// Blocks routed to the pod → until when they count.
    routed: ShardedMap<OwnHash, u64>,
    /// Raised when the pod is retired (its endpoint removed): a follower of the old endpoint
    /// still running cannot write into the pod after that ([`PrefixIndex::apply_from`]).
    epoch: u64,
}

struct State {
    blocks: ShardedMap<OwnHash, Holders>,
    pods: Vec<Pod>,
    by_name: HashMap<String, PodId>,
}

impl Default for State {
    fn default() -> State {
        State {
            blocks: ShardedMap::new(BLOCK_SHARDS),
            pods: Vec::new(),
            by_name: HashMap::new(),
        }
    }
}

impl State {
    fn holders(&mut self, own: OwnHash, pod: PodId) -> &mut Holder {
        let holders = self.blocks.get_or_insert_with(own, Holders::new);
        let at = match holders.iter().position(|h| h.pod == pod) {
            Some(at) => at,
            None => {
                holders.push(Holder {
                    pod,
                    stored: 0,
                    routed_until: 0,
                });
                holders.len() - 1
            }
        };
        &mut holders[at]
    }

    /// Drops what `keep` says `pod` no longer holds of `own`.
    fn forget(&mut self, own: OwnHash, pod: PodId, keep: impl Fn(&mut Holder) -> bool) {
        let Some(holders) = self.blocks.get_mut(&own) else {
            return;
        };
        if let Some(at) = holders.iter().position(|h| h.pod == pod) {
            if !keep(&mut holders[at]) {
                holders.swap_remove(at);
            }
        }
        if holders.is_empty() {
            self.blocks.remove(&own);
        }
    }

    /// Returns whether the block is new to the pod.
    fn store(&mut self, pod: PodId, engine_hash: BlockHash, own: OwnHash) -> bool {
        match self.pods[pod.0 as usize].engine.insert(engine_hash, own) {
            Some(old) if old == own => return false,
            Some(old) => self.release(pod, old),
            None => {}
        }
        self.holders(own, pod).stored += 1;
        true
    }

    fn release(&mut self, pod: PodId, own: OwnHash) {
        self.forget(own, pod, |h| {
            h.stored = h.stored.saturating_sub(1);
            h.stored > 0 || h.routed_until > 0
        });
    }

    fn remove(&mut self, pod: PodId, engine_hash: BlockHash) -> bool {
        match self.pods[pod.0 as usize].engine.remove(&engine_hash) {
            Some(own) => {
                self.release(pod, own);
                true
            }
            None => false,
        }
    }
}

/// Drops everything `pod` holds (its engine restarted or cleared its cache, or the pod
/// left), handing the lock over as a batch does: a pod of 50 000 blocks takes some
/// milliseconds. The pod's maps are emptied at once; each name taken from them is then let
/// go by exactly what it counted, so what is stored or routed to the pod during a hand-over
/// stays.
fn purge_pod(ex: &mut Exclusive<'_>, pod: PodId) {
    let p = &mut ex.guard.pods[pod.0 as usize];
    let engine = p.engine.take();
    let routed = p.routed.take();
    for (_, own) in engine {
        ex.guard.release(pod, own);
        ex.step();
    }
    for (own, _) in routed {
        if !ex.guard.pods[pod.0 as usize].routed.contains_key(&own) {
            ex.guard.forget(own, pod, |h| {
                h.routed_until = 0;
                h.stored > 0
            });
        }
        ex.step();
    }
}

/// What one call of [`PrefixIndex::apply`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Blocks newly held.
    pub stored: u64,
    /// Blocks no longer held.
    pub removed: u64,
    /// `AllBlocksCleared` events.
    pub cleared: u64,
    /// Events that do not concern routing: other media than GPU memory, other KV groups
    /// than full attention, event types not known.
    pub ignored: u64,
    /// Events refused, with the first reason.
    pub rejected: u64,
    pub first_rejection: Option<Rejected>,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Rejected {
    #[error("a BlockStored of {blocks} blocks of {block_size} tokens carries {tokens} tokens")]
    TokenCount {
        blocks: usize,
        block_size: u32,
        tokens: usize,
    },
    #[error("the engine stores blocks of {engine} tokens but the index hashes blocks of {index}; set the model's block_size to {engine}")]
    BlockSize { engine: u32, index: usize },
    #[error("the pod holds {limit} blocks already, the most kept per pod; new ones are refused until the engine reports some removed")]
    PodFull { limit: usize },
}

/// A pod's part of the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSummary {
    pub name: String,
    /// Blocks its engine reported stored.
    pub stored_blocks: u64,
    /// Blocks routed to it, still counting or not yet swept.
    pub routed_blocks: u64,
}

pub struct PrefixIndex {
    hasher: BlockHasher,
    state: RwLock<State>,
    /// Readers blocked on the lock (or about to be), for the writer's hand-over.
    readers_waiting: AtomicU32,
    max_stored_per_pod: usize,
}

impl PrefixIndex {
    pub fn new(hasher: BlockHasher) -> PrefixIndex {
        PrefixIndex {
            hasher,
            state: RwLock::new(State::default()),
            readers_waiting: AtomicU32::new(0),
            max_stored_per_pod: MAX_STORED_PER_POD,
        }
    }

    /// The same index holding at most `blocks` engine blocks per pod (default 2 M).
    pub fn with_max_stored_per_pod(mut self, blocks: usize) -> PrefixIndex {
        self.max_stored_per_pod = blocks;
        self
    }

    pub fn hasher(&self) -> BlockHasher {
        self.hasher
    }

    /// The lock, shared; a reader that has to wait says so, for [`Exclusive::hand_over`].
    fn shared(&self) -> RwLockReadGuard<'_, State> {
        if let Some(state) = self.state.try_read() {
            return state;
        }
        self.readers_waiting.fetch_add(1, Ordering::Relaxed);
        let state = self.state.read();
        self.readers_waiting.fetch_sub(1, Ordering::Relaxed);
        state
    }

    fn exclusive(&self) -> Exclusive<'_> {
        Exclusive {
            guard: self.state.write(),
            readers_waiting: &self.readers_waiting,
            since_yield: 0,
        }
    }

    /// The pod named `name` (an endpoint's label), known from now on.
    pub fn pod(&self, name: &str) -> PodId {
        if let Some(&id) = self.shared().by_name.get(name) {
            return id;
        }
        let mut state = self.state.write();
        if let Some(&id) = state.by_name.get(name) {
            return id;
        }
        let id = PodId(state.pods.len() as u32);
        state.pods.push(Pod {
            name: name.to_owned(),
            engine: ShardedMap::new(POD_SHARDS),
            routed: ShardedMap::new(POD_SHARDS),
            epoch: 0,
        });
        state.by_name.insert(name.to_owned(), id);
        id
    }

    /// The pod's epoch now: what a follower starting now passes to
    /// [`PrefixIndex::apply_from`].
    pub fn epoch(&self, pod: PodId) -> u64 {
        self.state
            .read()
            .pods
            .get(pod.0 as usize)
            .map_or(0, |p| p.epoch)
    }

    /// Drops everything `pod` holds and refuses, from now on, what followers started before
    /// (the pod's endpoint was removed; one re-added under its name starts afresh).
    pub fn retire(&self, pod: PodId) {
        let mut ex = self.exclusive();
        if (pod.0 as usize) < ex.guard.pods.len() {
            // First: a follower of the old epoch stops at its next hand-over, even one
            // made by this purge.
            ex.guard.pods[pod.0 as usize].epoch += 1;
            purge_pod(&mut ex, pod);
        }
    }

    /// Applies one batch's events from `pod`'s engine, unless the pod was retired since
    /// `epoch` (then nothing, and `None`).
    /// (Retired while the batch was being applied: what was applied is purged, and
    /// `None`.)
    pub fn apply_from(&self, pod: PodId, epoch: u64, events: &[KvEvent]) -> Option<Applied> {
        let current =
            |state: &State| state.pods.get(pod.0 as usize).map(|p| p.epoch) == Some(epoch);
        let mut ex = self.exclusive();
        if !current(&ex.guard) {
            return None;
        }
        self.apply_locked(&mut ex, pod, events, current)
    }

    /// [`PrefixIndex::purge`], unless the pod was retired since `epoch`.
    pub fn purge_from(&self, pod: PodId, epoch: u64) {
        let mut ex = self.exclusive();
        if ex
            .guard
            .pods
            .get(pod.0 as usize)
            .is_some_and(|p| p.epoch == epoch)
        {
            purge_pod(&mut ex, pod);
        }
    }

    /// Applies one batch's events from `pod`'s engine.
    pub fn apply(&self, pod: PodId, events: &[KvEvent]) -> Applied {
        let mut ex = self.exclusive();
        if pod.0 as usize >= ex.guard.pods.len() {
            return Applied::default();
        }
        // Pods are never dropped from the index: it stays valid.
        self.apply_locked(&mut ex, pod, events, |_| true)
            .unwrap_or_default()
    }

    /// `valid` is asked again after each hand-over of the lock; once it says no, the rest
    /// of the batch is dropped and `None` returned.
    fn apply_locked(
        &self,
        ex: &mut Exclusive<'_>,
        pod: PodId,
        events: &[KvEvent],
        valid: impl Fn(&State) -> bool,
    ) -> Option<Applied> {
        let mut applied = Applied::default();
        for event in events {
            match event {
                KvEvent::BlockStored(s) => {
                    if !for_routing(s.medium.as_deref(), s.kv_cache_spec_kind.as_deref()) {
                        applied.ignored += 1;
                        continue;
                    }
                    match self.store(ex, pod, s, &mut applied, &valid) {
                        Ok(true) => {}
                        Ok(false) => return None,
                        Err(e) => {
                            applied.rejected += 1;
                            applied.first_rejection.get_or_insert(e);
                        }
                    }
                }
                KvEvent::BlockRemoved(r) => {
                    if !for_routing(r.medium.as_deref(), None) {
                        applied.ignored += 1;
                        continue;
                    }
                    for h in &r.block_hashes {
                        applied.removed += ex.guard.remove(pod, *h) as u64;
                        if ex.step() && !valid(&ex.guard) {
                            return None;
                        }
                    }
                }
                KvEvent::AllBlocksCleared => {
                    purge_pod(ex, pod);
                    applied.cleared += 1;
                    if !valid(&ex.guard) {
                        return None;
                    }
                }
                KvEvent::Other(_) => applied.ignored += 1,
            }
        }
        Some(applied)
    }

    /// `Ok(false)`: `valid` said no after a hand-over of the lock (the rest is dropped).
    fn store(
        &self,
        ex: &mut Exclusive<'_>,
        pod: PodId,
        s: &BlockStored,
        applied: &mut Applied,
        valid: impl Fn(&State) -> bool,
    ) -> Result<bool, Rejected> {
        let size = self.hasher.block_size();
        if s.block_size as usize != size {
            return Err(Rejected::BlockSize {
                engine: s.block_size,
                index: size,
            });
        }
        if s.token_ids.len() != s.block_hashes.len() * size {
            return Err(Rejected::TokenCount {
                blocks: s.block_hashes.len(),
                block_size: s.block_size,
                tokens: s.token_ids.len(),
            });
        }
        let adapter = adapter(s);
        // A parent the pod never reported (its event lost, or from before the replay
        // buffer): the chain is stored as a new root rather than dropped.
        let mut parent = s
            .parent_block_hash
            .and_then(|p| ex.guard.pods[pod.0 as usize].engine.get(&p).copied())
            .unwrap_or_else(|| self.hasher.root(adapter.as_deref()));
        for (engine_hash, tokens) in s.block_hashes.iter().zip(s.token_ids.chunks_exact(size)) {
            let engine = &ex.guard.pods[pod.0 as usize].engine;
            if engine.len() >= self.max_stored_per_pod && !engine.contains_key(engine_hash) {
                return Err(Rejected::PodFull {
                    limit: self.max_stored_per_pod,
                });
            }
            let own = self.hasher.next(parent, tokens);
            applied.stored += ex.guard.store(pod, *engine_hash, own) as u64;
            parent = own;
            if ex.step() && !valid(&ex.guard) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Drops everything `pod` holds (its engine restarted or cleared its cache, or the pod
    /// left).
    pub fn purge(&self, pod: PodId) {
        let mut ex = self.exclusive();
        if (pod.0 as usize) < ex.guard.pods.len() {
            purge_pod(&mut ex, pod);
        }
    }

    /// Counts `blocks` (a prompt's names, first to last) as held by `pod` until `until_ms`.
    pub fn insert_routed(&self, pod: PodId, blocks: &[OwnHash], until_ms: u64) {
        let mut state = self.state.write();
        let Some(p) = state.pods.get(pod.0 as usize) else {
            return;
        };
        let room = MAX_ROUTED_PER_POD.saturating_sub(p.routed.len());
        for &own in blocks.iter().take(room) {
            let holder = state.holders(own, pod);
            holder.routed_until = holder.routed_until.max(until_ms);
            let until = holder.routed_until;
            state.pods[pod.0 as usize].routed.insert(own, until);
        }
    }

    /// Forgets routed blocks whose time has passed. A pod's routed blocks are looked
    /// through under the shared lock; only the expired ones are dropped under the exclusive
    /// one, handing it over as a batch does.
    pub fn sweep(&self, now_ms: u64) {
        let pods = self.shared().pods.len();
        for i in 0..pods {
            let pod = PodId(i as u32);
            let expired: Vec<OwnHash> = self.shared().pods[i]
                .routed
                .iter()
                .filter(|(_, &until)| until <= now_ms)
                .map(|(&own, _)| own)
                .collect();
            if expired.is_empty() {
                continue;
            }
            let mut ex = self.exclusive();
            for own in expired {
                // Routed again since it was looked at: it counts on.
                let routed = &mut ex.guard.pods[i].routed;
                if routed.get(&own).is_none_or(|&until| until > now_ms) {
                    continue;
                }
                routed.remove(&own);
                ex.guard.forget(own, pod, |h| {
                    if h.routed_until <= now_ms {
                        h.routed_until = 0;
                    }
                    h.stored > 0 || h.routed_until > 0
                });
                ex.step();
            }
        }
    }

    /// For each of `candidates`, how many of `blocks` (a prompt's names, first to last) it
    /// holds in a row from the first.
    pub fn match_prefix(&self, blocks: &[OwnHash], candidates: &[PodId], now_ms: u64) -> Vec<u32> {
        let mut matched = vec![0u32; candidates.len()];
        let state = self.shared();
        // Each pod's bits among the candidates, by pod id (ids are places in `pods`): a
        // holder's bit is one load, not a search of the candidates for every block.
        let mut bits_of: SmallVec<[u64; 64]> = SmallVec::from_elem(0, state.pods.len());
        for (chunk, out) in candidates.chunks(64).zip(matched.chunks_mut(64)) {
            bits_of.iter_mut().for_each(|b| *b = 0);
            for (i, c) in chunk.iter().enumerate() {
                if let Some(b) = bits_of.get_mut(c.0 as usize) {
                    *b |= 1 << i;
                }
            }
            // Bit i: candidate i has held every block so far.
            let mut alive: u64 = u64::MAX >> (64 - chunk.len());
            let mut depth = 0u32;
            for own in blocks {
                let mut present = 0u64;
                if let Some(holders) = state.blocks.get(own) {
                    for h in holders.iter().filter(|h| h.holds(now_ms)) {
                        present |= bits_of[h.pod.0 as usize];
                    }
                }
                let dropped = alive & !present;
                for_each_bit(dropped, |i| out[i] = depth);
                alive &= present;
                if alive == 0 {
                    break;
                }
                depth += 1;
            }
            for_each_bit(alive, |i| out[i] = depth);
        }
        matched
    }

    /// Distinct blocks held by any pod.
    pub fn blocks(&self) -> usize {
        self.shared().blocks.len()
    }

    pub fn summary(&self) -> Vec<PodSummary> {
        let state = self.shared();
        state
            .pods
            .iter()
            .map(|p| PodSummary {
                name: p.name.clone(),
                stored_blocks: p.engine.len() as u64,
                routed_blocks: p.routed.len() as u64,
            })
            .collect()
    }

    /// Bytes the index's tables take (allocated, spare room included; the pods' names
    /// aside).
    pub fn memory_bytes(&self) -> usize {
        let state = self.shared();
        let mut bytes = state.blocks.allocation_size();
        bytes += state
            .blocks
            .values()
            .filter(|h| h.spilled())
            .map(|h| h.capacity() * std::mem::size_of::<Holder>())
            .sum::<usize>();
        for p in &state.pods {
            bytes += p.engine.allocation_size() + p.routed.allocation_size();
        }
        bytes
    }
}

fn for_each_bit(mut bits: u64, mut f: impl FnMut(usize)) {
    while bits != 0 {
        f(bits.trailing_zeros() as usize);
        bits &= bits - 1;
    }
}

/// Only blocks in GPU memory of the full-attention group decide where a prompt is cheapest
/// (engines that do not say are taken to mean those).
fn for_routing(medium: Option<&str>, kind: Option<&str>) -> bool {
    medium.is_none_or(|m| m.eq_ignore_ascii_case("gpu"))
        && kind.is_none_or(|k| k == "full_attention")
}

/// The adapter a block belongs to: by name; by number when the engine gives no name (such
/// blocks then match no request, which names adapters).
fn adapter(s: &BlockStored) -> Option<String> {
    match (&s.lora_name, s.lora_id) {
        (Some(name), _) => Some(name.clone()),
        (None, Some(id)) => Some(format!("#{id}")),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests;

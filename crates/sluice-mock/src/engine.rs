//! The engine's shared state: options, prefix cache, fault settings and counters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use crate::faults::{FaultDraw, Faults};
use crate::kv_cache::{self, PrefixCache, PromptBlocks};
use crate::kv_events::KvPublisher;
use crate::options::MockOptions;
use crate::request_log::RequestLog;
use crate::stats::{Counters, MockStats, RequestGuard};

/// One simulated engine replica. Cheap to share: handlers hold it in an `Arc`.
#[derive(Debug)]
pub struct MockEngine {
    options: MockOptions,
    cache: Mutex<PrefixCache>,
    faults: Mutex<Faults>,
    /// Requests whose faults were drawn since the faults were last set: the `n` of the draw.
    fault_draws: AtomicU64,
    /// Numbers completion ids.
    completions: AtomicU64,
    counters: Arc<Counters>,
    requests: RequestLog,
    /// Provider-side limits; `None` when none is set (no lock on the hot path).
    gate: Option<Arc<crate::provider_limits::ProviderGate>>,
    /// Publishes the cache's changes, when the options ask for KV events.
    kv_events: OnceLock<KvPublisher>,
    /// Mixed into block hashes: per engine "process", as vLLM seeds its hash.
    hash_salt: AtomicU64,
}

fn new_salt() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(0u64)
}

/// Whether a prompt hit the cache: how many of its tokens need no prefill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CacheLookup {
    pub cached_tokens: usize,
}

impl MockEngine {
    pub fn new(options: MockOptions) -> Arc<Self> {
        let cache = PrefixCache::new(
            options.kv_cache.block_size,
            options.kv_cache.capacity_blocks,
        );
        let gate = (!options.limits.is_unlimited())
            .then(|| Arc::new(crate::provider_limits::ProviderGate::new(options.limits)));
        Arc::new(MockEngine {
            faults: Mutex::new(options.faults.clone()),
            cache: Mutex::new(cache),
            options,
            fault_draws: AtomicU64::new(0),
            completions: AtomicU64::new(0),
            counters: Arc::new(Counters::default()),
            requests: RequestLog::default(),
            gate,
            kv_events: OnceLock::new(),
            hash_salt: AtomicU64::new(new_salt()),
        })
    }

    /// The HTTP API: `/v1/chat/completions`, `/v1/models`, `/health` and `/admin/*`.
    pub fn router(self: &Arc<Self>) -> axum::Router {
        crate::routes::router(self.clone())
    }

    pub fn stats(&self) -> MockStats {
        self.counters.snapshot()
    }

    pub fn faults(&self) -> Faults {
        self.faults
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the fault settings and restarts the request numbering the fault draws use,
    /// so the same settings give the same sequence of faults from here on. Settings are not
    /// validated here (see [`Faults::validate`]); out-of-range rates act as clamped.
    pub fn set_faults(&self, faults: Faults) {
        let mut current = self.faults.lock().unwrap_or_else(PoisonError::into_inner);
        *current = faults;
        self.fault_draws.store(0, Ordering::Relaxed);
    }

    /// Applies `change` to the fault settings under the lock, so concurrent partial updates
    /// do not lose each other's fields. The settings stay unchanged when `change` fails.
    pub(crate) fn update_faults<E>(
        &self,
        change: impl FnOnce(&Faults) -> Result<Faults, E>,
    ) -> Result<Faults, E> {
        let mut current = self.faults.lock().unwrap_or_else(PoisonError::into_inner);
        let next = change(&current)?;
        *current = next.clone();
        self.fault_draws.store(0, Ordering::Relaxed);
        Ok(next)
    }

    /// The fault settings in force and the faults drawn for the next request.
    pub(crate) fn draw_faults(&self) -> (Faults, FaultDraw) {
        let faults = self.faults.lock().unwrap_or_else(PoisonError::into_inner);
        let n = self.fault_draws.fetch_add(1, Ordering::Relaxed);
        let draw = faults.draw(n);
        (faults.clone(), draw)
    }

    pub(crate) fn options(&self) -> &MockOptions {
        &self.options
    }

    pub(crate) fn counters(&self) -> &Counters {
        &self.counters
    }

    pub(crate) fn request_log(&self) -> &RequestLog {
        &self.requests
    }

    pub(crate) fn provider_gate(&self) -> Option<&Arc<crate::provider_limits::ProviderGate>> {
        self.gate.as_ref()
    }

    pub(crate) fn begin_request(&self) -> RequestGuard {
        RequestGuard::begin(self.counters.clone())
    }

    pub(crate) fn next_completion_number(&self) -> u64 {
        self.completions.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn prompt_blocks(&self, prompt: &[u32]) -> PromptBlocks {
        let size = self.options.kv_cache.block_size.max(1);
        let salt = self.hash_salt.load(Ordering::Relaxed);
        PromptBlocks {
            hashes: kv_cache::block_hashes(size, salt, prompt),
            // Events carry the blocks' tokens; without events they are not needed.
            tokens: match self.kv_events.get() {
                Some(_) => prompt[..prompt.len() / size * size].to_vec(),
                None => Vec::new(),
            },
        }
    }

    /// Starts publishing the cache's changes through `publisher` (once; later calls are
    /// ignored).
    pub fn attach_kv_events(&self, publisher: KvPublisher) {
        let _ = self.kv_events.set(publisher);
    }

    pub fn kv_events(&self) -> Option<&KvPublisher> {
        self.kv_events.get()
    }

    /// As if the engine process restarted: an empty cache (no event says so), new block
    /// hashes, and event sequence numbers from 0.
    pub fn restart_kv(&self) {
        let mut cache = self.cache();
        cache.clear();
        self.hash_salt.store(new_salt(), Ordering::Relaxed);
        if let Some(kv) = self.kv_events.get() {
            kv.restart();
        }
    }

    pub(crate) fn lookup_prefix(&self, hashes: &[u64], prompt_len: usize) -> CacheLookup {
        let cache = self.cache();
        CacheLookup {
            cached_tokens: cache.cached_prefix_blocks(hashes, prompt_len) * cache.block_size(),
        }
    }

    /// Records a finished prefill: the prompt's blocks become (most recently used) cache
    /// entries.
    pub(crate) fn store_prefix(&self, blocks: &PromptBlocks) {
        if blocks.hashes.is_empty() {
            return;
        }
        let mut cache = self.cache();
        let update = cache.insert(&blocks.hashes);
        // Published under the cache's lock, so batches follow the cache's order.
        if let Some(kv) = self.kv_events.get() {
            kv.cache_updated(blocks, &update);
        }
        drop(cache);
        tracing::trace!(
            stored = update.stored.len(),
            removed = update.removed.len(),
            "kv cache updated"
        );
    }

    /// Blocks in the prefix cache now.
    pub fn cached_blocks(&self) -> usize {
        self.cache().len()
    }

    /// Empties the prefix cache; returns how many blocks it held.
    pub(crate) fn reset_prefix_cache(&self) -> usize {
        let mut cache = self.cache();
        let n = cache.clear();
        if let Some(kv) = self.kv_events.get() {
            kv.publish(vec![sluice_api::kv_events::KvEvent::AllBlocksCleared]);
        }
        n
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, PrefixCache> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

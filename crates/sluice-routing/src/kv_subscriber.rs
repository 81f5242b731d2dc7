//! [`KvSubscriber`]: one engine's KV events, kept applied to the prefix index.
//!
//! A SUB connection to the engine's publisher and, when the engine has one, a DEALER to its
//! replay socket. What it guarantees the index, batch by batch:
//! - on (re)connecting, it asks for everything it has not applied (from 0 the first time: a
//!   subscriber misses what was published before it joined);
//! - a sequence number that skips ahead (batches the publisher dropped) is filled from the
//!   replay before the batch is applied;
//! - a sequence number that goes back means the engine restarted: the pod's blocks are
//!   purged and rebuilt from what the engine publishes (and replays) from then on. A batch
//!   received twice (live after the replay that already had it) is told from a restart by
//!   its payload, and skipped;
//! - a connection that failed, stalled mid-message, or stayed silent past the idle timeout
//!   is dropped and made again, after a backoff.
//!
//! Without a replay socket, gaps are counted (the index may then hold blocks the engine has
//! evicted, or miss some it stored, until they change again).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sluice_api::kv_events::{decode_batch, frames, KvEvent};
use tokio::task::JoinHandle;
use xxhash_rust::xxh3::xxh3_64;

use crate::prefix_index::{PodId, PrefixIndex};
use crate::zmtp::{Connection, ConnectionLimits, SocketType, ZmtpError};

/// Where one engine publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvSource {
    /// The engine's PUB socket, `tcp://HOST:PORT`.
    pub events: String,
    /// Its replay ROUTER socket, when it has one.
    pub replay: Option<String>,
    /// Subscribe to messages whose topic starts with this (empty: all).
    pub topic: Vec<u8>,
}

#[derive(Debug, Clone, Copy)]
pub struct SubscriberSettings {
    pub connection: ConnectionLimits,
    /// With no message for this long, the connection is made again (and what was missed
    /// is replayed): a silent engine and a dead one look alike on a SUB socket.
    pub idle_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// The most batches one replay may bring.
    pub max_replay_batches: u64,
    /// The most payload bytes one replay may hold at once (each frame is bounded by the
    /// connection's limit; this bounds their sum).
    pub max_replay_bytes: u64,
}

impl Default for SubscriberSettings {
    fn default() -> Self {
        SubscriberSettings {
            connection: ConnectionLimits::default(),
            idle_timeout: Duration::from_secs(30),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            max_replay_batches: 100_000,
            max_replay_bytes: 256 << 20,
        }
    }
}

/// What a subscriber has seen, for metrics and the admin view.
#[derive(Debug, Default)]
pub struct SubscriberStats {
    pub connected: AtomicBool,
    pub connects: AtomicU64,
    pub connect_failures: AtomicU64,
    pub batches: AtomicU64,
    pub stored_events: AtomicU64,
    pub removed_events: AtomicU64,
    pub cleared_events: AtomicU64,
    /// Events of types not known, other media or other KV groups.
    pub ignored_events: AtomicU64,
    /// Events the index refused (a block size or token count that does not fit).
    pub rejected_events: AtomicU64,
    pub decode_errors: AtomicU64,
    pub gaps: AtomicU64,
    pub replays: AtomicU64,
    pub replayed_batches: AtomicU64,
    /// Replays that could not bring everything asked (the engine's buffer had dropped it).
    pub replay_shortfalls: AtomicU64,
    pub replay_failures: AtomicU64,
    /// The pod's blocks dropped because its engine restarted.
    pub purges: AtomicU64,
    /// The last batch applied (`u64::MAX`: none yet).
    pub last_seq: AtomicU64,
    /// How old the last batch was when applied, by the engine's clock (ms).
    pub last_lag_ms: AtomicU64,
}

impl SubscriberStats {
    pub fn new() -> SubscriberStats {
        SubscriberStats {
            last_seq: AtomicU64::new(u64::MAX),
            ..SubscriberStats::default()
        }
    }

    pub fn last_seq(&self) -> Option<u64> {
        match self.last_seq.load(Ordering::Relaxed) {
            u64::MAX => None,
            seq => Some(seq),
        }
    }
}

/// The subscriber's task; stops when dropped.
pub struct KvSubscriber {
    task: JoinHandle<()>,
    pub stats: Arc<SubscriberStats>,
}

impl Drop for KvSubscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl KvSubscriber {
    /// Starts following `source` into `index` as `pod`, on the current tokio runtime.
    pub fn spawn(
        index: Arc<PrefixIndex>,
        pod: PodId,
        source: KvSource,
        settings: SubscriberSettings,
    ) -> KvSubscriber {
        let stats = Arc::new(SubscriberStats::new());
        let follower = Follower {
            epoch: index.epoch(pod),
            index,
            pod,
            stats: stats.clone(),
            settings,
            last: None,
            recent: VecDeque::new(),
            replay: None,
        };
        let task = tokio::spawn(follower.run(source));
        KvSubscriber { task, stats }
    }
}

/// How many applied batches are remembered to recognise one received twice.
const RECENT: usize = 4096;

struct Follower {
    index: Arc<PrefixIndex>,
    pod: PodId,
    /// The pod's epoch when this follower started: once the pod is retired, what this
    /// follower still applies is refused.
    epoch: u64,
    stats: Arc<SubscriberStats>,
    settings: SubscriberSettings,
    /// The last batch applied.
    last: Option<u64>,
    /// (seq, payload hash) of recently applied batches.
    recent: VecDeque<(u64, u64)>,
    replay: Option<Connection>,
}

impl Follower {
    async fn run(mut self, source: KvSource) {
        let mut backoff = self.settings.backoff_min;
        loop {
            match self.follow(&source).await {
                Ok(()) => backoff = self.settings.backoff_min,
                Err(e) => {
                    tracing::debug!(pod = ?self.pod, endpoint = %source.events, error = %e, "kv events: connection ended");
                }
            }
            self.stats.connected.store(false, Ordering::Relaxed);
            // Jitter, so a fleet of gateways does not reconnect in step.
            let jitter = xxh3_64(&self.stats.connects.load(Ordering::Relaxed).to_le_bytes()) % 100;
            tokio::time::sleep(backoff.mul_f64(0.9 + jitter as f64 / 500.0)).await;
            backoff = (backoff * 2).min(self.settings.backoff_max);
        }
    }

    /// One SUB connection's life. `Ok` when it ended by the idle timeout after working.
    async fn follow(&mut self, source: &KvSource) -> Result<(), ZmtpError> {
        let mut sub =
            match Connection::connect(&source.events, SocketType::Sub, self.settings.connection)
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    self.stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                    return Err(e);
                }
            };
        sub.subscribe(&source.topic).await?;
        self.stats.connects.fetch_add(1, Ordering::Relaxed);
        self.stats.connected.store(true, Ordering::Relaxed);
        // What was published before the subscription took, or while away.
        self.resume(source).await;
        loop {
            let message = match sub.recv(self.settings.idle_timeout).await {
                Ok(m) => m,
                Err(ZmtpError::Timeout("waiting for a message")) => return Ok(()),
                Err(e) => return Err(e),
            };
            let parts: Vec<&[u8]> = message.iter().map(Bytes::as_ref).collect();
            let live = match frames::live(&parts) {
                Ok(l) => l,
                Err(e) => {
                    self.stats.decode_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(pod = ?self.pod, error = %e, "kv events: not a batch");
                    continue;
                }
            };
            self.on_live(source, live.seq, live.payload).await;
        }
    }

    async fn on_live(&mut self, source: &KvSource, seq: u64, payload: &[u8]) {
        match self.last {
            Some(last) if seq == last + 1 => {}
            Some(last) if seq > last + 1 => {
                self.stats.gaps.fetch_add(1, Ordering::Relaxed);
                self.fill(source, last + 1, Some(seq)).await;
            }
            Some(_) => {
                let hash = xxh3_64(payload);
                if self.recent.iter().any(|&(s, h)| s == seq && h == hash) {
                    return; // already applied, from a replay
                }
                // The sequence went back: a new engine process.
                self.restarted();
                if seq > 0 {
                    self.fill(source, 0, Some(seq)).await;
                }
            }
            None if seq > 0 => self.fill(source, 0, Some(seq)).await,
            None => {}
        }
        // A replay may have brought this very batch already.
        if self.last.is_none_or(|l| seq > l) {
            self.apply(seq, payload);
        }
    }

    fn apply(&mut self, seq: u64, payload: &[u8]) {
        self.last = Some(seq);
        self.stats.last_seq.store(seq, Ordering::Relaxed);
        self.recent.push_back((seq, xxh3_64(payload)));
        if self.recent.len() > RECENT {
            self.recent.pop_front();
        }
        let batch = match decode_batch(payload) {
            Ok(b) => b,
            Err(e) => {
                self.stats.decode_errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(pod = ?self.pod, seq, error = %e, "kv events: undecodable batch skipped");
                return;
            }
        };
        let s = &self.stats;
        s.batches.fetch_add(1, Ordering::Relaxed);
        for e in &batch.events {
            let counter = match e {
                KvEvent::BlockStored(_) => &s.stored_events,
                KvEvent::BlockRemoved(_) => &s.removed_events,
                KvEvent::AllBlocksCleared => &s.cleared_events,
                KvEvent::Other(_) => &s.ignored_events,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        let applied = self
            .index
            .apply_from(self.pod, self.epoch, &batch.events)
            .unwrap_or_default();
        s.rejected_events
            .fetch_add(applied.rejected, Ordering::Relaxed);
        if let Some(e) = applied.first_rejection {
            tracing::warn!(pod = ?self.pod, seq, error = %e, "kv events: events refused");
        }
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let made_ms = (batch.ts.max(0.0) * 1000.0) as u64;
        s.last_lag_ms
            .store(now_ms.saturating_sub(made_ms), Ordering::Relaxed);
    }

    /// Applies the engine's buffered batches from `from` (up to `until`, exclusive, when
    /// given). Without a replay socket, nothing: the gap stays.
    async fn fill(&mut self, source: &KvSource, from: u64, until: Option<u64>) {
        let Some(batches) = self.fetch(source, from).await else {
            return;
        };
        let first = batches.first().map(|(seq, _)| *seq);
        if first.map_or(until.is_some_and(|u| u > from), |f| f > from) {
            self.stats.replay_shortfalls.fetch_add(1, Ordering::Relaxed);
        }
        for (seq, payload) in batches {
            if until.is_none_or(|u| seq < u) && self.last.is_none_or(|l| seq > l) {
                self.stats.replayed_batches.fetch_add(1, Ordering::Relaxed);
                self.apply(seq, &payload);
            }
        }
    }

    /// After a reconnection: what was missed, if the engine is the process it was. The
    /// replay is asked from the last batch applied, whose payload must come back the same;
    /// if it does not (or the engine has nothing buffered from there), the engine restarted
    /// while we were away: the pod is rebuilt from what it has.
    async fn resume(&mut self, source: &KvSource) {
        let Some(last) = self.last else {
            return self.fill(source, 0, None).await;
        };
        let Some(batches) = self.fetch(source, last).await else {
            return;
        };
        let recorded = self
            .recent
            .back()
            .filter(|(seq, _)| *seq == last)
            .map(|(_, hash)| *hash);
        let continues = batches
            .first()
            .is_some_and(|(seq, payload)| *seq == last && Some(xxh3_64(payload)) == recorded);
        if !continues {
            self.restarted();
            if batches.first().is_some_and(|(seq, _)| *seq > 0) {
                self.stats.replay_shortfalls.fetch_add(1, Ordering::Relaxed);
            }
        }
        for (seq, payload) in batches {
            if self.last.is_none_or(|l| seq > l) {
                self.stats.replayed_batches.fetch_add(1, Ordering::Relaxed);
                self.apply(seq, &payload);
            }
        }
    }

    /// The engine is a new process: what the pod held is gone.
    fn restarted(&mut self) {
        self.index.purge_from(self.pod, self.epoch);
        self.stats.purges.fetch_add(1, Ordering::Relaxed);
        self.last = None;
        self.recent.clear();
    }

    /// Every batch the engine has buffered from `from` on; `None` without a replay socket
    /// or when the replay failed (counted; the connection is dropped).
    async fn fetch(&mut self, source: &KvSource, from: u64) -> Option<Vec<(u64, Bytes)>> {
        let address = source.replay.as_deref()?;
        self.stats.replays.fetch_add(1, Ordering::Relaxed);
        match self.replay_from(address, from).await {
            Ok(batches) => Some(batches),
            Err(e) => {
                // Never read again a connection whose exchange did not end cleanly.
                self.replay = None;
                self.stats.replay_failures.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(pod = ?self.pod, error = %e, "kv events: replay failed");
                None
            }
        }
    }

    async fn replay_from(
        &mut self,
        address: &str,
        from: u64,
    ) -> Result<Vec<(u64, Bytes)>, ZmtpError> {
        if self.replay.is_none() {
            self.replay = Some(
                Connection::connect(address, SocketType::Dealer, self.settings.connection).await?,
            );
        }
        let Some(conn) = self.replay.as_mut() else {
            return Ok(Vec::new());
        };
        let [empty, start] = frames::replay_request(from);
        conn.send(&[&empty, &start]).await?;
        let mut batches: Vec<(u64, Bytes)> = Vec::new();
        let mut bytes = 0u64;
        loop {
            let message = conn.recv(self.settings.connection.io_timeout).await?;
            let parts: Vec<&[u8]> = message.iter().map(Bytes::as_ref).collect();
            match frames::replay(&parts).map_err(|e| ZmtpError::Protocol(e.to_string()))? {
                frames::ReplayMessage::End => return Ok(batches),
                frames::ReplayMessage::Batch { seq, payload } => {
                    if batches.len() as u64 >= self.settings.max_replay_batches {
                        return Err(ZmtpError::Protocol(format!(
                            "a replay of more than {} batches",
                            self.settings.max_replay_batches
                        )));
                    }
                    if batches.last().is_some_and(|(prev, _)| seq <= *prev) {
                        return Err(ZmtpError::Protocol("a replay out of order".into()));
                    }
                    bytes += payload.len() as u64;
                    if bytes > self.settings.max_replay_bytes {
                        return Err(ZmtpError::Protocol(format!(
                            "a replay of more than {} bytes",
                            self.settings.max_replay_bytes
                        )));
                    }
                    if seq >= from {
                        batches.push((seq, Bytes::copy_from_slice(payload)));
                    }
                }
            }
        }
    }
}

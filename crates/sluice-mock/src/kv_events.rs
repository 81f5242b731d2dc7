//! The engine's KV events, published as vLLM publishes them: every change of the simulated
//! prefix cache becomes a `BlockStored`, `BlockRemoved` or `AllBlocksCleared` event in a
//! numbered batch on a ZMQ PUB socket (`[topic, seq, payload]`), and a ROUTER socket replays
//! buffered batches on request (`[empty, start seq]` → every batch from there, then the end
//! marker). Both encodings of the events are available.
//!
//! Tests can make the engine lose batches (sent to no one but kept for replay, as a full
//! publisher queue drops them) and simulate a restart (sequence from 0, empty cache and
//! buffer, new block hashes).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use sluice_api::kv_events::{
    encode_batch, frames, BlockRemoved, BlockStored, EventBatch, HashForm, KvEncoding, KvEvent,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use zeromq::{Socket, SocketRecv, SocketSend, ZmqMessage};

use crate::kv_cache::{CacheUpdate, PromptBlocks};

/// Where and how the engine publishes its KV events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEventOptions {
    /// The PUB socket's address, `tcp://HOST:PORT` (port 0 picks a free one).
    pub publish: String,
    /// The replay ROUTER socket's address, when there is one.
    pub replay: Option<String>,
    pub encoding: KvEncoding,
    /// The first frame of every live message (vLLM's default is empty).
    pub topic: String,
    /// Batches kept for replay (vLLM's default: 10 000).
    pub replay_buffer: usize,
}

impl Default for KvEventOptions {
    fn default() -> Self {
        KvEventOptions {
            publish: "tcp://127.0.0.1:0".into(),
            replay: Some("tcp://127.0.0.1:0".into()),
            encoding: KvEncoding::Current,
            topic: String::new(),
            replay_buffer: 10_000,
        }
    }
}

#[derive(Default)]
struct Log {
    next_seq: u64,
    buffer: VecDeque<(u64, Bytes)>,
    /// Live batches still to lose (kept for replay only).
    to_drop: u32,
}

/// The publishing side, held by the engine.
pub struct KvPublisher {
    options: KvEventOptions,
    block_size: usize,
    log: Arc<Mutex<Log>>,
    live: mpsc::UnboundedSender<(u64, Bytes)>,
    /// The addresses the sockets are bound to (a port 0 resolved).
    pub publish_endpoint: String,
    pub replay_endpoint: Option<String>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for KvPublisher {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl std::fmt::Debug for KvPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvPublisher")
            .field("publish", &self.publish_endpoint)
            .field("replay", &self.replay_endpoint)
            .finish()
    }
}

impl KvPublisher {
    /// Binds the sockets and starts their tasks (on the current tokio runtime).
    pub async fn start(
        options: KvEventOptions,
        block_size: usize,
    ) -> Result<KvPublisher, zeromq::ZmqError> {
        let log = Arc::new(Mutex::new(Log::default()));
        let mut publisher = zeromq::PubSocket::new();
        let publish_endpoint = publisher.bind(&options.publish).await?.to_string();
        let (live, mut outgoing) = mpsc::unbounded_channel::<(u64, Bytes)>();
        let topic = Bytes::from(options.topic.clone().into_bytes());
        let mut tasks = vec![tokio::spawn({
            let topic = topic.clone();
            async move {
                while let Some((seq, payload)) = outgoing.recv().await {
                    let frames = vec![
                        topic.clone(),
                        Bytes::copy_from_slice(&seq.to_be_bytes()),
                        payload,
                    ];
                    if let Ok(m) = ZmqMessage::try_from(frames) {
                        if let Err(e) = publisher.send(m).await {
                            tracing::debug!(error = %e, "kv events: publishing failed");
                        }
                    }
                }
            }
        })];
        let mut replay_endpoint = None;
        if let Some(address) = &options.replay {
            let mut router = zeromq::RouterSocket::new();
            replay_endpoint = Some(router.bind(address).await?.to_string());
            tasks.push(tokio::spawn(serve_replays(router, log.clone(), topic)));
        }
        Ok(KvPublisher {
            options,
            block_size: block_size.max(1),
            log,
            live,
            publish_endpoint,
            replay_endpoint,
            tasks,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Publishes one batch of `events` (none: nothing is published).
    pub(crate) fn publish(&self, events: Vec<KvEvent>) {
        if events.is_empty() {
            return;
        }
        let batch = EventBatch {
            ts: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            events,
            data_parallel_rank: Some(0),
        };
        let payload = Bytes::from(encode_batch(&batch, self.options.encoding, HashForm::Int));
        let mut log = self.lock();
        let seq = log.next_seq;
        log.next_seq += 1;
        log.buffer.push_back((seq, payload.clone()));
        while log.buffer.len() > self.options.replay_buffer {
            log.buffer.pop_front();
        }
        if log.to_drop > 0 {
            log.to_drop -= 1;
            return;
        }
        // In order: the log's lock is held while queueing.
        let _ = self.live.send((seq, payload));
    }

    /// The events of one cache insertion: each run of newly stored blocks as a chain on the
    /// block before it, then what was evicted.
    pub(crate) fn cache_updated(&self, prompt: &PromptBlocks, update: &CacheUpdate) {
        let mut events = Vec::new();
        let bs = self.block_size;
        let mut i = 0;
        while i < update.stored.len() {
            let Some(first) = prompt.hashes.iter().position(|h| *h == update.stored[i]) else {
                i += 1;
                continue;
            };
            let mut n = 1;
            while i + n < update.stored.len()
                && prompt.hashes.get(first + n) == Some(&update.stored[i + n])
            {
                n += 1;
            }
            if let Some(tokens) = prompt.tokens.get(first * bs..(first + n) * bs) {
                events.push(KvEvent::BlockStored(BlockStored {
                    block_hashes: update.stored[i..i + n].to_vec(),
                    parent_block_hash: first.checked_sub(1).map(|p| prompt.hashes[p]),
                    token_ids: tokens.to_vec(),
                    block_size: bs as u32,
                    medium: Some("GPU".into()),
                    ..BlockStored::default()
                }));
            }
            i += n;
        }
        if !update.removed.is_empty() {
            events.push(KvEvent::BlockRemoved(BlockRemoved {
                block_hashes: update.removed.clone(),
                medium: Some("GPU".into()),
                group_idx: None,
            }));
        }
        self.publish(events);
    }

    /// The next `n` live batches reach no subscriber (they stay in the replay buffer).
    pub fn drop_next(&self, n: u32) {
        self.lock().to_drop += n;
    }

    /// As after a process restart: sequence from 0, nothing to replay.
    pub(crate) fn restart(&self) {
        let mut log = self.lock();
        log.next_seq = 0;
        log.buffer.clear();
        log.to_drop = 0;
    }

    /// The sequence number the next batch gets.
    pub fn next_seq(&self) -> u64 {
        self.lock().next_seq
    }
}

async fn serve_replays(mut router: zeromq::RouterSocket, log: Arc<Mutex<Log>>, topic: Bytes) {
    loop {
        let request = match router.recv().await {
            Ok(m) => m.into_vec(),
            Err(e) => {
                tracing::debug!(error = %e, "kv events: replay socket failed");
                return;
            }
        };
        // [identity, empty, start seq]
        let [identity, empty, start] = &request[..] else {
            continue;
        };
        let Ok(start) = <[u8; 8]>::try_from(&start[..]) else {
            continue;
        };
        if !empty.is_empty() {
            continue;
        }
        let start = u64::from_be_bytes(start);
        let batches: Vec<(u64, Bytes)> = log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .buffer
            .iter()
            .filter(|(seq, _)| *seq >= start)
            .cloned()
            .collect();
        let mut answers: Vec<Vec<Bytes>> = batches
            .into_iter()
            .map(|(seq, payload)| {
                let [e, t, s, p] = frames::replay_batch(&topic, seq, &payload);
                vec![identity.clone(), e.into(), t.into(), s.into(), p.into()]
            })
            .collect();
        let [e, t, s, p] = frames::replay_end();
        answers.push(vec![
            identity.clone(),
            e.into(),
            t.into(),
            s.into(),
            p.into(),
        ]);
        for frames in answers {
            if let Ok(m) = ZmqMessage::try_from(frames) {
                if router.send(m).await.is_err() {
                    break;
                }
            }
        }
    }
}

//! A KV-event subscriber following real mock engines over real ZMQ sockets: the index holds
//! what each engine's cache holds, through a late join, lost batches, evictions, a cache
//! reset and an engine restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use sluice_api::chat::ChatCompletionRequest;
use sluice_api::mock_tokenizer;
use sluice_mock::{KvCacheOptions, KvEncoding, KvEventOptions, MockOptions, MockServer};
use sluice_routing::{BlockHasher, KvSource, KvSubscriber, PrefixIndex, SubscriberSettings};

async fn engine(encoding: KvEncoding, capacity_blocks: usize) -> MockServer {
    let options = MockOptions {
        kv_cache: KvCacheOptions {
            block_size: 16,
            capacity_blocks,
        },
        kv_events: Some(KvEventOptions {
            encoding,
            ..KvEventOptions::default()
        }),
        ..MockOptions::zero_timing()
    };
    MockServer::start(options, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

/// Sends a conversation whose prompt is `turns` long paragraphs (several blocks each);
/// returns its prompt's tokens, as the mock engine tokenizes them.
async fn chat(mock: &MockServer, topic: &str, turns: usize) -> Vec<u32> {
    let messages: Vec<_> = (0..turns)
        .map(|i| json!({"role": "user", "content": format!("{topic} paragraph {i}: {}", "lorem ipsum dolor sit amet ".repeat(12))}))
        .collect();
    let body = json!({"model": "m", "messages": messages, "max_tokens": 4});
    let r = reqwest::Client::new()
        .post(format!("{}/chat/completions", mock.base_url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let request = ChatCompletionRequest::from_slice(body.to_string().as_bytes()).unwrap();
    mock_tokenizer::encode_chat(&request)
}

/// How many leading blocks of `tokens` each pod holds, by the index.
fn matched(index: &PrefixIndex, tokens: &[u32], pods: &[&str]) -> Vec<u32> {
    let ids: Vec<_> = pods.iter().map(|p| index.pod(p)).collect();
    index.match_prefix(&index.hasher().chain(None, tokens), &ids, 0)
}

fn follow(mock: &MockServer, index: &Arc<PrefixIndex>, name: &str) -> KvSubscriber {
    let kv = mock.engine().kv_events().unwrap();
    KvSubscriber::spawn(
        index.clone(),
        index.pod(name),
        KvSource {
            events: kv.publish_endpoint.clone(),
            replay: kv.replay_endpoint.clone(),
            topic: Vec::new(),
        },
        SubscriberSettings {
            idle_timeout: Duration::from_secs(2),
            ..SubscriberSettings::default()
        },
    )
}

fn stored(index: &PrefixIndex, name: &str) -> u64 {
    index
        .summary()
        .iter()
        .find(|p| p.name == name)
        .map_or(0, |p| p.stored_blocks)
}

/// Waits until the subscriber has applied everything the engine published and the index
/// holds exactly what the engine's cache holds.
async fn in_step(mock: &MockServer, index: &PrefixIndex, sub: &KvSubscriber, name: &str) {
    let kv = mock.engine().kv_events().unwrap();
    // Up to 30 s: a busy CI machine is slow, never wrong.
    for _ in 0..1500 {
        let published = kv.next_seq();
        let caught_up = published == 0 || sub.stats.last_seq() == Some(published - 1);
        if caught_up && stored(index, name) == mock.engine().cached_blocks() as u64 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "not in step: engine published {} batches and holds {} blocks; subscriber at {:?}, index holds {}",
        kv.next_seq(),
        mock.engine().cached_blocks(),
        sub.stats.last_seq(),
        stored(index, name)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_subscriber_replays_from_zero_and_follows_both_encodings() {
    for encoding in [KvEncoding::Current, KvEncoding::Legacy] {
        let mock = engine(encoding, 8192).await;
        // Published before anyone listens: only the replay has these.
        chat(&mock, "early", 3).await;
        let prompt = chat(&mock, "early", 4).await;
        let index = Arc::new(PrefixIndex::new(BlockHasher::new(16)));
        let sub = follow(&mock, &index, "a");
        in_step(&mock, &index, &sub, "a").await;
        // Every full block of the prompt, named by the gateway's own hash of the tokens.
        assert_eq!(
            matched(&index, &prompt, &["a"]),
            vec![(prompt.len() / 16) as u32]
        );
        assert!(sub.stats.replayed_batches.load(Ordering::Relaxed) >= 2);
        // And live from there: a conversation's next turn adds its new blocks only.
        let before = stored(&index, "a");
        chat(&mock, "early", 5).await;
        in_step(&mock, &index, &sub, "a").await;
        assert!(stored(&index, "a") > before);
        assert_eq!(sub.stats.decode_errors.load(Ordering::Relaxed), 0);
        assert_eq!(sub.stats.gaps.load(Ordering::Relaxed), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_batches_are_replayed_and_evictions_removed() {
    // 40 blocks of cache: conversations evict each other.
    let mock = engine(KvEncoding::Current, 40).await;
    let index = Arc::new(PrefixIndex::new(BlockHasher::new(16)));
    let sub = follow(&mock, &index, "a");
    chat(&mock, "warm", 1).await;
    in_step(&mock, &index, &sub, "a").await;
    mock.engine().kv_events().unwrap().drop_next(3);
    for topic in ["one", "two", "three", "four", "five"] {
        chat(&mock, topic, 3).await;
    }
    in_step(&mock, &index, &sub, "a").await;
    assert!(sub.stats.gaps.load(Ordering::Relaxed) >= 1);
    assert!(sub.stats.replayed_batches.load(Ordering::Relaxed) >= 3);
    assert!(
        sub.stats.removed_events.load(Ordering::Relaxed) >= 1,
        "the cache evicted"
    );
    assert_eq!(stored(&index, "a"), mock.engine().cached_blocks() as u64);
    assert!(stored(&index, "a") <= 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_reset_clears_and_an_engine_restart_purges_only_that_pod() {
    let (m1, m2) = (
        engine(KvEncoding::Current, 8192).await,
        engine(KvEncoding::Current, 8192).await,
    );
    let index = Arc::new(PrefixIndex::new(BlockHasher::new(16)));
    let (s1, s2) = (follow(&m1, &index, "a"), follow(&m2, &index, "b"));
    let shared = chat(&m1, "shared", 3).await;
    chat(&m2, "shared", 3).await;
    let own = chat(&m2, "own", 2).await;
    in_step(&m1, &index, &s1, "a").await;
    in_step(&m2, &index, &s2, "b").await;
    let blocks = |t: &[u32]| (t.len() / 16) as u32;
    // Both engines hold the shared conversation, only b the other: though the engines name
    // the same blocks differently.
    assert_eq!(
        matched(&index, &shared, &["a", "b"]),
        vec![blocks(&shared); 2]
    );
    assert_eq!(matched(&index, &own, &["a", "b"]), vec![0, blocks(&own)]);
    let held = stored(&index, "b");
    assert!(held > 0);

    // AllBlocksCleared.
    reqwest::Client::new()
        .post(format!(
            "{}/admin/kv-cache/reset",
            m1.base_url().trim_end_matches("/v1")
        ))
        .send()
        .await
        .unwrap();
    in_step(&m1, &index, &s1, "a").await;
    assert_eq!(stored(&index, "a"), 0);
    assert_eq!(s1.stats.cleared_events.load(Ordering::Relaxed), 1);

    // A restart: sequence numbers start again at 0 and the engine names blocks anew.
    chat(&m1, "before", 2).await;
    in_step(&m1, &index, &s1, "a").await;
    m1.engine().restart_kv();
    chat(&m1, "after", 2).await;
    in_step(&m1, &index, &s1, "a").await;
    assert_eq!(s1.stats.purges.load(Ordering::Relaxed), 1);
    assert_eq!(stored(&index, "b"), held, "the other pod kept its blocks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_that_goes_away_is_reconnected_with_backoff() {
    let mock = engine(KvEncoding::Current, 8192).await;
    let index = Arc::new(PrefixIndex::new(BlockHasher::new(16)));
    // Nothing listens on this address: connecting fails, and is tried again.
    let dead = KvSubscriber::spawn(
        index.clone(),
        index.pod("dead"),
        KvSource {
            events: "tcp://127.0.0.1:9".into(),
            replay: None,
            topic: Vec::new(),
        },
        SubscriberSettings::default(),
    );
    let sub = follow(&mock, &index, "a");
    chat(&mock, "x", 2).await;
    in_step(&mock, &index, &sub, "a").await;
    for _ in 0..100 {
        if dead.stats.connect_failures.load(Ordering::Relaxed) >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(dead.stats.connect_failures.load(Ordering::Relaxed) >= 2);
    assert!(!dead.stats.connected.load(Ordering::Relaxed));
    assert!(sub.stats.connected.load(Ordering::Relaxed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_over_its_byte_bound_is_refused_and_counted() {
    let mock = engine(KvEncoding::Current, 8192).await;
    for topic in ["one", "two", "three"] {
        chat(&mock, topic, 3).await;
    }
    let kv = mock.engine().kv_events().unwrap();
    let index = Arc::new(PrefixIndex::new(BlockHasher::new(16)));
    let sub = KvSubscriber::spawn(
        index.clone(),
        index.pod("a"),
        KvSource {
            events: kv.publish_endpoint.clone(),
            replay: kv.replay_endpoint.clone(),
            topic: Vec::new(),
        },
        SubscriberSettings {
            // Less than the three batches already published hold.
            max_replay_bytes: 256,
            ..SubscriberSettings::default()
        },
    );
    for _ in 0..1500 {
        if sub.stats.replay_failures.load(Ordering::Relaxed) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(sub.stats.replay_failures.load(Ordering::Relaxed) > 0);
    assert_eq!(sub.stats.replayed_batches.load(Ordering::Relaxed), 0);
    assert_eq!(
        stored(&index, "a"),
        0,
        "nothing of the refused replay was applied"
    );
}

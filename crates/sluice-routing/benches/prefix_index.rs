//! The prefix index: ingesting engines' events, matching prompts, and matching while events
//! arrive.
//!
//! - `ingest`: `BlockStored` events of 4 blocks of 16 tokens, each chained on the last, as an
//!   engine publishes them while it prefills; reported per block (target ≥ 1 M blocks/s on a
//!   core). Decoding the events' MessagePack is measured beside it.
//! - `match`: a 64-block prompt (1 024 tokens) over 8 pods holding prefixes of it of
//!   different lengths, in an index of 8 × 20 000 blocks (target p50 ≤ 2 µs); naming the
//!   prompt's blocks (hashing its tokens) beside it.
//! - match p50/p99 with and without a thread applying events as fast as it can, printed from
//!   single timed calls: how long a read waits on ingestion.
//!
//! `cargo bench -p sluice-routing --bench prefix_index`
#![allow(clippy::expect_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sluice_api::kv_events::{
    decode_batch, encode_batch, BlockStored, EventBatch, HashForm, KvEncoding, KvEvent,
};
use sluice_routing::{BlockHasher, PodId, PrefixIndex};

const BLOCK: usize = 16;

/// `events` BlockStored events of 4 blocks each, one chain of distinct tokens per pod.
fn chain_events(seed: u32, events: usize) -> Vec<KvEvent> {
    let mut parent = None;
    (0..events)
        .map(|e| {
            let hashes: Vec<u64> = (0..4)
                .map(|b| ((seed as u64) << 40) | (e * 4 + b) as u64)
                .collect();
            let tokens = (0..4 * BLOCK)
                .map(|t| {
                    seed.wrapping_mul(7919)
                        .wrapping_add((e * 4 * BLOCK + t) as u32)
                })
                .collect();
            let event = KvEvent::BlockStored(BlockStored {
                block_hashes: hashes.clone(),
                parent_block_hash: parent,
                token_ids: tokens,
                block_size: BLOCK as u32,
                medium: Some("GPU".into()),
                ..BlockStored::default()
            });
            parent = hashes.last().copied();
            event
        })
        .collect()
}

/// 8 pods; pod i holds the first 8·i blocks of the shared 64-block prompt plus 20 000 blocks
/// of its own.
fn populated() -> (PrefixIndex, Vec<PodId>, Vec<u32>) {
    let ix = PrefixIndex::new(BlockHasher::new(BLOCK));
    let prompt: Vec<u32> = (0..64 * BLOCK as u32).map(|t| t * 31 + 7).collect();
    let pods: Vec<PodId> = (0..8).map(|i| ix.pod(&format!("pod-{i}"))).collect();
    for (i, &pod) in pods.iter().enumerate() {
        let shared = 8 * i;
        if shared > 0 {
            ix.apply(
                pod,
                &[KvEvent::BlockStored(BlockStored {
                    block_hashes: (0..shared as u64).map(|b| 1_000_000 + b).collect(),
                    parent_block_hash: None,
                    token_ids: prompt[..shared * BLOCK].to_vec(),
                    block_size: BLOCK as u32,
                    ..BlockStored::default()
                })],
            );
        }
        ix.apply(pod, &chain_events(i as u32 + 1, 5_000));
    }
    (ix, pods, prompt)
}

fn percentiles(mut ns: Vec<u64>) -> (u64, u64) {
    ns.sort_unstable();
    (ns[ns.len() / 2], ns[ns.len() * 99 / 100])
}

fn timed_matches(ix: &PrefixIndex, names: &[u64], pods: &[PodId], n: usize) -> (u64, u64) {
    let ns = (0..n)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(ix.match_prefix(names, pods, 0));
            t.elapsed().as_nanos() as u64
        })
        .collect();
    percentiles(ns)
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("ingest");
    let events = chain_events(1, 1_000);
    g.throughput(Throughput::Elements(4 * 1_000));
    g.bench_function("apply 1000 BlockStored of 4 blocks", |b| {
        b.iter_batched(
            || {
                let ix = PrefixIndex::new(BlockHasher::new(BLOCK));
                let pod = ix.pod("pod");
                (ix, pod)
            },
            |(ix, pod)| {
                for e in events.chunks(16) {
                    ix.apply(pod, e);
                }
                ix
            },
            criterion::BatchSize::LargeInput,
        )
    });
    let payload = encode_batch(
        &EventBatch {
            ts: 0.0,
            events: events[..16].to_vec(),
            data_parallel_rank: Some(0),
        },
        KvEncoding::Current,
        HashForm::Int,
    );
    g.throughput(Throughput::Elements(16 * 4));
    g.bench_function("decode a batch of 16 BlockStored (map form)", |b| {
        b.iter(|| decode_batch(std::hint::black_box(&payload)).expect("decodes"))
    });
    g.finish();

    let (ix, pods, prompt) = populated();
    let names = ix.hasher().chain(None, &prompt);
    assert_eq!(
        ix.match_prefix(&names, &pods, 0),
        vec![0, 8, 16, 24, 32, 40, 48, 56]
    );
    let mut g = c.benchmark_group("match");
    g.bench_function("64-block prompt over 8 pods", |b| {
        b.iter(|| ix.match_prefix(std::hint::black_box(&names), &pods, 0))
    });
    g.bench_function("name the 64 blocks of a 1024-token prompt", |b| {
        b.iter(|| ix.hasher().chain(None, std::hint::black_box(&prompt)))
    });
    g.finish();

    // Single calls, idle and while another thread applies events without pause.
    let ix = Arc::new(ix);
    let idle = timed_matches(&ix, &names, &pods, 200_000);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (ix, stop) = (ix.clone(), stop.clone());
        std::thread::spawn(move || {
            let pod = ix.pod("busy");
            let mut applied = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for e in chain_events(99, 1_000).chunks(16) {
                    ix.apply(pod, e);
                    applied += 64;
                }
                ix.purge(pod);
            }
            applied
        })
    };
    let busy = timed_matches(&ix, &names, &pods, 200_000);
    stop.store(true, Ordering::Relaxed);
    let applied = writer.join().expect("writer");
    println!(
        "match (single calls): idle p50 {} ns p99 {} ns; while a thread applies events: p50 {} ns p99 {} ns ({applied} blocks applied meanwhile); index {} blocks, {:.1} MB",
        idle.0,
        idle.1,
        busy.0,
        busy.1,
        ix.blocks(),
        ix.memory_bytes() as f64 / 1e6
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);

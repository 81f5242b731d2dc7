//! One gateway's share of a large fleet, simulated: `--pods` engines publish KV events at
//! `--blocks-per-sec` each (stored, and removed once their `--cache-blocks` cache is full:
//! an engine in steady state), while requests are routed at `--match-per-sec`, each a
//! 64-block prompt matched over `--candidates` pods (one model's). The events are real
//! batches in vLLM's encoding, decoded and applied to one `PrefixIndex` as a gateway's
//! subscribers would; nothing is sent over sockets (their cost is in docs/routing.md).
//!
//! Reported: the index's memory per pod, the share of one core ingestion takes, match
//! latency p50/p99/max under that ingestion, and whether ingestion kept up. Every gateway in
//! a fleet where each follows every pod pays all of this; G gateways pay it G times.
//!
//! `cargo run --release -p sluice-routing --example at_scale -- --pods 500 --seconds 20`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_api::kv_events::{
    decode_batch, encode_batch, BlockRemoved, BlockStored, EventBatch, HashForm, KvEncoding,
    KvEvent,
};
use sluice_routing::{BlockHasher, PodId, PrefixIndex};

const BLOCK: usize = 16;
/// Blocks in a prompt a request routes by.
const PROMPT_BLOCKS: usize = 64;
/// How often each engine publishes a batch.
const TICK: Duration = Duration::from_millis(100);

struct Args {
    pods: usize,
    cache_blocks: usize,
    blocks_per_sec: usize,
    match_per_sec: usize,
    candidates: usize,
    seconds: u64,
}

fn args() -> Args {
    let mut a = Args {
        pods: 500,
        cache_blocks: 20_000,
        blocks_per_sec: 300,
        match_per_sec: 1_000,
        candidates: 16,
        seconds: 20,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value: usize = it
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{flag} needs a number"));
        match flag.as_str() {
            "--pods" => a.pods = value,
            "--cache-blocks" => a.cache_blocks = value,
            "--blocks-per-sec" => a.blocks_per_sec = value,
            "--match-per-sec" => a.match_per_sec = value,
            "--candidates" => a.candidates = value,
            "--seconds" => a.seconds = value as u64,
            _ => panic!("unknown flag {flag}; see the example's doc comment"),
        }
    }
    a.candidates = a.candidates.clamp(1, a.pods);
    a
}

/// A small deterministic generator (no dependency for a simulation's dice).
struct Dice(u64);

impl Dice {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The tokens of block `b` of conversation `c`: conversations share their first blocks in
/// families of 16 (a common system prompt), then differ.
fn block_tokens(c: u64, b: usize) -> Vec<u32> {
    let family = if b < 4 { c / 16 } else { c };
    (0..BLOCK)
        .map(|t| (family as u32).wrapping_mul(2_654_435_761) ^ ((b * BLOCK + t) as u32))
        .collect()
}

/// One engine: what it caches (engine hashes, oldest first) and its next hash.
struct Engine {
    cached: VecDeque<u64>,
    next_hash: u64,
    seq: u64,
}

impl Engine {
    /// The batch this engine publishes in one tick: prefixes of conversations it serves,
    /// stored as chains of 4 blocks; the oldest blocks removed when its cache is full.
    fn tick(&mut self, dice: &mut Dice, blocks: usize, cache_blocks: usize, pod: usize) -> Vec<u8> {
        let mut events = Vec::new();
        let mut left = blocks;
        while left > 0 {
            let n = left.min(4);
            let c = dice.below(100_000) as u64;
            let start = dice.below(PROMPT_BLOCKS - 4);
            let hashes: Vec<u64> = (0..n)
                .map(|_| {
                    self.next_hash += 1;
                    ((pod as u64) << 40) | self.next_hash
                })
                .collect();
            let tokens = (start..start + n)
                .flat_map(|b| block_tokens(c, b))
                .collect();
            events.push(KvEvent::BlockStored(BlockStored {
                block_hashes: hashes.clone(),
                parent_block_hash: None,
                token_ids: tokens,
                block_size: BLOCK as u32,
                medium: Some("GPU".into()),
                ..BlockStored::default()
            }));
            self.cached.extend(hashes);
            left -= n;
        }
        let over = self.cached.len().saturating_sub(cache_blocks);
        if over > 0 {
            let gone: Vec<u64> = self.cached.drain(..over).collect();
            events.push(KvEvent::BlockRemoved(BlockRemoved {
                block_hashes: gone,
                medium: Some("GPU".into()),
                group_idx: None,
            }));
        }
        self.seq += 1;
        let batch = EventBatch {
            ts: 0.0,
            events,
            data_parallel_rank: None,
        };
        encode_batch(&batch, KvEncoding::Current, HashForm::Int)
    }
}

fn main() {
    let a = args();
    let ix = Arc::new(PrefixIndex::new(BlockHasher::new(BLOCK)));
    let pods: Vec<PodId> = (0..a.pods).map(|i| ix.pod(&format!("pod-{i}"))).collect();
    let mut engines: Vec<Engine> = (0..a.pods)
        .map(|_| Engine {
            cached: VecDeque::new(),
            next_hash: 0,
            seq: 0,
        })
        .collect();
    let mut dice = Dice(0x9E37_79B9_7F4A_7C15);

    // Warm every engine's cache to full first, untimed: the steady state is what is measured.
    eprintln!(
        "warming {} pods to {} blocks each...",
        a.pods, a.cache_blocks
    );
    for (i, e) in engines.iter_mut().enumerate() {
        while e.cached.len() < a.cache_blocks {
            let payload = e.tick(&mut dice, 400, a.cache_blocks, i);
            ix.apply(pods[i], &decode_batch(&payload).unwrap().events);
        }
    }
    let memory = ix.memory_bytes();

    // What the engines will publish, made beforehand: encoding is the engines' work, on
    // their machines; here only decoding and applying are timed.
    let per_tick = (a.blocks_per_sec as f64 * TICK.as_secs_f64()).round() as usize;
    let ticks = (a.seconds as f64 / TICK.as_secs_f64()) as u32;
    eprintln!("making {ticks} ticks of batches...");
    let published: Vec<Vec<Vec<u8>>> = (0..ticks)
        .map(|_| {
            engines
                .iter_mut()
                .enumerate()
                .map(|(i, e)| e.tick(&mut dice, per_tick, a.cache_blocks, i))
                .collect()
        })
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let matcher = {
        let (ix, stop, pods) = (ix.clone(), stop.clone(), pods.clone());
        let (rate, candidates) = (a.match_per_sec, a.candidates);
        std::thread::spawn(move || {
            let mut dice = Dice(7);
            let mut took = Vec::new();
            let every = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                let c = dice.below(100_000) as u64;
                let prompt: Vec<u32> = (0..PROMPT_BLOCKS)
                    .flat_map(|b| block_tokens(c, b))
                    .collect();
                let first = dice.below(pods.len() - candidates + 1);
                let started = Instant::now();
                let blocks = ix.hasher().chain(None, &prompt);
                let m = ix.match_prefix(&blocks, &pods[first..first + candidates], 0);
                took.push(started.elapsed().as_nanos() as u64);
                std::hint::black_box(m);
                next += every;
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            took
        })
    };

    // Ingestion: every pod's batch of the tick, decoded and applied as its subscriber would.
    eprintln!("running...");
    let started = Instant::now();
    let mut busy = Duration::ZERO;
    let mut behind = 0u32;
    let mut blocks_in = 0u64;
    // Each apply's time: the write lock is held for most of it, so it bounds how long a
    // match can wait for one batch.
    let mut applies = Vec::with_capacity(published.len() * a.pods);
    for (t, payloads) in published.iter().enumerate() {
        let t = t as u32;
        let work = Instant::now();
        for (i, payload) in payloads.iter().enumerate() {
            let batch = decode_batch(payload).unwrap();
            let applying = Instant::now();
            ix.apply(pods[i], &batch.events);
            applies.push(applying.elapsed().as_nanos() as u64);
        }
        busy += work.elapsed();
        blocks_in += (per_tick * a.pods) as u64;
        let due = started + TICK * (t + 1);
        match due.checked_duration_since(Instant::now()) {
            Some(wait) => std::thread::sleep(wait),
            None => behind += 1,
        }
    }
    let wall = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut took = matcher.join().unwrap();
    took.sort_unstable();
    applies.sort_unstable();
    let pct_of = |v: &[u64], p: f64| v[((v.len() - 1) as f64 * p) as usize] as f64 / 1000.0;
    let pct = |p: f64| pct_of(&took, p);

    println!(
        "pods {} · cache {} blocks each · {} blocks/s each ({} blocks/s in all) · {} matches/s over {} candidates · {} s",
        a.pods,
        a.cache_blocks,
        a.blocks_per_sec,
        a.blocks_per_sec * a.pods,
        a.match_per_sec,
        a.candidates,
        a.seconds
    );
    println!(
        "index: {} blocks, {:.1} MB — {:.2} MB a pod, {:.0} bytes a block",
        ix.blocks(),
        memory as f64 / 1e6,
        memory as f64 / 1e6 / a.pods as f64,
        memory as f64 / (a.pods * a.cache_blocks) as f64
    );
    println!(
        "ingestion: {:.1} % of one core ({} blocks applied, {:.0} ns a block, decoding included); ticks late: {behind} of {ticks}",
        100.0 * busy.as_secs_f64() / wall.as_secs_f64(),
        blocks_in,
        busy.as_nanos() as f64 / blocks_in.max(1) as f64
    );
    println!(
        "one batch applied (index lock held): p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs",
        pct_of(&applies, 0.5),
        pct_of(&applies, 0.99),
        pct_of(&applies, 1.0)
    );
    println!(
        "match (naming + matching a {PROMPT_BLOCKS}-block prompt) under ingestion: {} calls, p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs",
        took.len(),
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
}

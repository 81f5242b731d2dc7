use super::*;
use proptest::prelude::*;
use sluice_api::kv_events::BlockRemoved;
use std::collections::{BTreeMap, HashMap as StdMap};

const BS: usize = 4;

fn index() -> PrefixIndex {
    PrefixIndex::new(BlockHasher::new(BS))
}

fn stored(hashes: &[u64], parent: Option<u64>, tokens: &[u32]) -> KvEvent {
    KvEvent::BlockStored(BlockStored {
        block_hashes: hashes.to_vec(),
        parent_block_hash: parent,
        token_ids: tokens.to_vec(),
        block_size: BS as u32,
        medium: Some("GPU".into()),
        ..BlockStored::default()
    })
}

fn removed(hashes: &[u64]) -> KvEvent {
    KvEvent::BlockRemoved(BlockRemoved {
        block_hashes: hashes.to_vec(),
        medium: Some("GPU".into()),
        group_idx: None,
    })
}

/// 0..n as tokens: blocks [0..4], [4..8], ...
fn prompt(n: u32) -> Vec<u32> {
    (0..n).collect()
}

fn matched(ix: &PrefixIndex, tokens: &[u32], pods: &[PodId]) -> Vec<u32> {
    ix.match_prefix(&ix.hasher().chain(None, tokens), pods, 0)
}

#[test]
fn a_multi_block_event_chains_each_block_on_the_one_before() {
    let ix = index();
    let a = ix.pod("a");
    let p = prompt(16);
    let applied = ix.apply(a, &[stored(&[10, 11], None, &p[..8])]);
    assert_eq!(applied.stored, 2);
    assert_eq!(matched(&ix, &p, &[a]), vec![2]);
    // The next event continues the chain from its parent, the engine's name for block 2.
    ix.apply(a, &[stored(&[12], Some(11), &p[8..12])]);
    assert_eq!(matched(&ix, &p, &[a]), vec![3]);
    // Had the second block been chained on the event's parent, block 2's tokens after
    // block 0 would match; they do not.
    let skipped: Vec<u32> = p[..4].iter().chain(&p[8..12]).copied().collect();
    assert_eq!(matched(&ix, &skipped, &[a]), vec![1]);
}

#[test]
fn a_retired_pod_refuses_what_followers_started_before_apply_but_not_new_ones() {
    let ix = index();
    let (a, b) = (ix.pod("a"), ix.pod("b"));
    let p = prompt(8);
    let old = ix.epoch(a);
    assert!(ix
        .apply_from(a, old, &[stored(&[1, 2], None, &p)])
        .is_some());
    ix.apply(b, &[stored(&[7], None, &p[..4])]);
    ix.retire(a);
    assert_eq!(
        matched(&ix, &p, &[a, b]),
        vec![0, 1],
        "only a's blocks went"
    );
    // The old follower, still running a moment: refused, and its purge too.
    assert_eq!(ix.apply_from(a, old, &[stored(&[1, 2], None, &p)]), None);
    assert_eq!(matched(&ix, &p, &[a]), vec![0]);
    // The endpoint back under its name: a new follower writes again.
    let new = ix.epoch(a);
    assert_ne!(new, old);
    assert!(ix
        .apply_from(a, new, &[stored(&[3, 4], None, &p)])
        .is_some());
    ix.purge_from(a, old);
    assert_eq!(
        matched(&ix, &p, &[a]),
        vec![2],
        "a stale purge leaves the new data"
    );
    ix.purge_from(a, new);
    assert_eq!(matched(&ix, &p, &[a]), vec![0]);
}

/// A chain of `blocks` blocks named `first..`, its tokens distinct from every other chain's.
fn long_chain(first: u64, blocks: usize) -> KvEvent {
    let tokens: Vec<u32> = (0..(blocks * BS) as u32)
        .map(|t| t + first as u32)
        .collect();
    let hashes: Vec<u64> = (first..first + blocks as u64).collect();
    stored(&hashes, None, &tokens)
}

#[test]
fn a_long_batch_stops_where_a_hand_over_of_the_lock_made_it_invalid() {
    let ix = index();
    let a = ix.pod("a");
    let blocks = 10 * YIELD_EVERY as usize;
    // Valid until the first hand-over, as if the pod were retired while the lock was away.
    let asked = std::cell::Cell::new(0);
    let mut ex = ix.exclusive();
    let out = ix.apply_locked(&mut ex, a, &[long_chain(1, blocks)], |_| {
        asked.set(asked.get() + 1);
        false
    });
    drop(ex);
    assert_eq!(out, None);
    assert_eq!(asked.get(), 1, "asked once, at the first hand-over");
    assert_eq!(ix.summary()[0].stored_blocks, u64::from(YIELD_EVERY));
    // Removals hand over too.
    let hashes: Vec<u64> = (1..=u64::from(YIELD_EVERY)).collect();
    let mut ex = ix.exclusive();
    let out = ix.apply_locked(&mut ex, a, &[removed(&hashes)], |_| false);
    drop(ex);
    assert_eq!(out, None);
    assert_eq!(ix.summary()[0].stored_blocks, 0);
    // Valid throughout: the whole batch.
    let applied = ix.apply(a, &[long_chain(1, blocks)]);
    assert_eq!(applied.stored, blocks as u64);
}

#[test]
fn a_reader_waiting_on_endless_work_gets_the_lock_at_a_hand_over() {
    // The writer steps through work that only ends once the reader is through; without
    // hand-overs the reader could never get in. The bound is far above what a hand-over
    // every YIELD_EVERY steps needs, whatever the scheduling: a parked reader is given the
    // lock by the fair unlock, a spinning one parks after a few spins.
    let ix = std::sync::Arc::new(index());
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut ex = ix.exclusive();
    let reader = {
        let (ix, done) = (ix.clone(), done.clone());
        std::thread::spawn(move || {
            let blocks = ix.blocks();
            done.store(true, Ordering::Release);
            blocks
        })
    };
    let mut steps = 0u64;
    while !done.load(Ordering::Acquire) {
        assert!(steps < 50_000_000, "the reader never got the lock");
        ex.step();
        steps += 1;
    }
    drop(ex);
    assert_eq!(reader.join().unwrap(), 0);
    assert_eq!(ix.readers_waiting.load(Ordering::Relaxed), 0);
}

#[test]
fn a_pod_retired_while_its_long_batches_apply_keeps_nothing_of_them() {
    // Whenever the retire lands (before, between or inside batches, at a hand-over of the
    // lock), nothing the old follower applied survives it.
    for round in 0..20u64 {
        let ix = std::sync::Arc::new(index());
        let a = ix.pod("a");
        let epoch = ix.epoch(a);
        let follower = {
            let ix = ix.clone();
            std::thread::spawn(move || {
                for batch in 0..20u64 {
                    let first = (round * 100 + batch) * 100_000;
                    ix.apply_from(a, epoch, &[long_chain(first, 2_000)]);
                }
            })
        };
        std::thread::sleep(std::time::Duration::from_micros(round * 500));
        ix.retire(a);
        follower.join().unwrap();
        assert_eq!(ix.summary()[0].stored_blocks, 0, "round {round}");
        assert_eq!(ix.blocks(), 0, "round {round}");
    }
}

/// Every holder says exactly what its pod's maps say: `stored` is the number of the pod's
/// engine blocks carrying the name, `routed_until` the pod's routed entry (0 without one),
/// and no holder holds nothing.
fn assert_consistent(ix: &PrefixIndex) {
    let state = ix.state.read();
    let mut expected: StdMap<(OwnHash, PodId), (u32, u64)> = StdMap::new();
    for (i, p) in state.pods.iter().enumerate() {
        let pod = PodId(i as u32);
        for own in p.engine.values() {
            expected.entry((*own, pod)).or_default().0 += 1;
        }
        for (own, until) in p.routed.iter() {
            expected.entry((*own, pod)).or_default().1 = *until;
        }
    }
    let mut actual = StdMap::new();
    for (own, holders) in state.blocks.iter() {
        assert!(!holders.is_empty(), "an empty holder list is kept");
        for h in holders {
            actual.insert((*own, h.pod), (h.stored, h.routed_until));
        }
    }
    assert_eq!(actual, expected);
}

#[test]
fn what_is_stored_or_routed_to_a_pod_while_it_is_purged_stays() {
    // The purge hands the lock over; a router (and a follower of another pod) run meanwhile.
    // The router routes windows of 8 names a stride of 4 apart, so each name is routed
    // twice, the second time possibly while a purge that took the first is under way, and
    // never again (nothing later would mend what such a purge got wrong). Whatever
    // interleaving happened, the index agrees with the pods' maps after.
    for round in 0..5u64 {
        let ix = std::sync::Arc::new(index());
        let (a, b) = (ix.pod("a"), ix.pod("b"));
        let chain = |first| long_chain(first, 2_000);
        let names = ix.hasher().chain(None, &prompt(40_000 * BS as u32));
        let purger = {
            let ix = ix.clone();
            std::thread::spawn(move || {
                for i in 0..20 {
                    ix.apply(a, &[chain(i * 10_000)]);
                    if i % 2 == 0 {
                        ix.purge(a);
                    } else {
                        ix.apply(a, &[KvEvent::AllBlocksCleared]);
                    }
                }
            })
        };
        // b holds a's first chain's names on and off.
        let b_hashes: Vec<u64> = (0..2_000).collect();
        let mut i = 0;
        while !purger.is_finished() && (i + 2) * 4 <= names.len() {
            ix.insert_routed(a, &names[i * 4..i * 4 + 8], 1_000 + round);
            if i % 100 == 0 {
                ix.apply(b, &[chain(0)]);
            } else if i % 100 == 50 {
                ix.apply(b, &[removed(&b_hashes)]);
            }
            i += 1;
        }
        purger.join().unwrap();
        assert_consistent(&ix);
        ix.purge(a);
        ix.purge(b);
        assert_consistent(&ix);
        assert_eq!(ix.blocks(), 0, "round {round}");
    }
}

#[test]
fn a_pod_holds_at_most_its_bound_and_takes_more_once_some_are_removed() {
    let ix = PrefixIndex::new(BlockHasher::new(BS)).with_max_stored_per_pod(3);
    let (a, b) = (ix.pod("a"), ix.pod("b"));
    let p = prompt(20);
    let applied = ix.apply(a, &[stored(&[1, 2, 3, 4, 5], None, &p)]);
    assert_eq!((applied.stored, applied.rejected), (3, 1));
    assert!(matches!(
        applied.first_rejection,
        Some(Rejected::PodFull { limit: 3 })
    ));
    assert_eq!(matched(&ix, &p, &[a]), vec![3]);
    // Another pod has its own bound; a block already held is no new one.
    assert_eq!(ix.apply(b, &[stored(&[9], None, &p[..4])]).stored, 1);
    assert_eq!(ix.apply(a, &[stored(&[1], None, &p[..4])]).rejected, 0);
    ix.apply(a, &[removed(&[3])]);
    assert_eq!(ix.apply(a, &[stored(&[6], Some(2), &p[8..12])]).stored, 1);
}

#[test]
fn removing_a_block_from_one_pod_leaves_the_others() {
    let ix = index();
    let (a, b) = (ix.pod("a"), ix.pod("b"));
    let p = prompt(8);
    ix.apply(a, &[stored(&[1, 2], None, &p)]);
    // Engines seed their hashes per process: b names the same blocks differently.
    ix.apply(b, &[stored(&[7, 8], None, &p)]);
    assert_eq!(matched(&ix, &p, &[a, b]), vec![2, 2]);
    assert_eq!(ix.apply(b, &[removed(&[7])]).removed, 1);
    assert_eq!(
        matched(&ix, &p, &[a, b]),
        vec![2, 0],
        "b lost its first block, a kept both"
    );
    // a's names mean nothing for b.
    assert_eq!(ix.apply(b, &[removed(&[1, 2])]).removed, 0);
    assert_eq!(matched(&ix, &p, &[a, b]), vec![2, 0]);
    assert_eq!(ix.blocks(), 2);
}

#[test]
fn a_chain_whose_parent_is_unknown_is_kept_as_a_new_root() {
    let ix = index();
    let a = ix.pod("a");
    let p = prompt(8);
    let applied = ix.apply(a, &[stored(&[5], Some(404), &p[4..8])]);
    assert_eq!(applied.stored, 1);
    assert_eq!(matched(&ix, &p[4..8], &[a]), vec![1]);
    assert_eq!(matched(&ix, &p, &[a]), vec![0]);
    // It can be removed by its engine name.
    assert_eq!(ix.apply(a, &[removed(&[5])]).removed, 1);
    assert_eq!(ix.blocks(), 0);
}

#[test]
fn clearing_or_purging_a_pod_drops_only_that_pod() {
    let ix = index();
    let (a, b) = (ix.pod("a"), ix.pod("b"));
    let p = prompt(8);
    ix.apply(a, &[stored(&[1, 2], None, &p)]);
    ix.apply(b, &[stored(&[1, 2], None, &p)]);
    ix.insert_routed(a, &ix.hasher().chain(None, &prompt(12)), 1_000);
    assert_eq!(ix.apply(a, &[KvEvent::AllBlocksCleared]).cleared, 1);
    assert_eq!(matched(&ix, &p, &[a, b]), vec![0, 2]);
    assert_eq!(ix.summary()[0].stored_blocks, 0);
    assert_eq!(ix.summary()[0].routed_blocks, 0);
    ix.purge(b);
    assert_eq!(matched(&ix, &p, &[a, b]), vec![0, 0]);
    assert_eq!(ix.blocks(), 0);
}

#[test]
fn routed_blocks_count_until_their_expiry_and_are_swept_after() {
    let ix = index();
    let (a, b) = (ix.pod("a"), ix.pod("b"));
    let p = prompt(12);
    let names = ix.hasher().chain(None, &p);
    ix.insert_routed(a, &names, 500);
    assert_eq!(ix.match_prefix(&names, &[a, b], 499), vec![3, 0]);
    assert_eq!(
        ix.match_prefix(&names, &[a, b], 500),
        vec![0, 0],
        "expired: no longer counted"
    );
    // The engine confirms the first two; the sweep drops only what routing alone said.
    ix.apply(a, &[stored(&[1, 2], None, &p[..8])]);
    ix.sweep(500);
    assert_eq!(ix.match_prefix(&names, &[a], 0), vec![2]);
    assert_eq!(ix.blocks(), 2);
    assert_eq!(ix.summary()[0].routed_blocks, 0);
}

#[test]
fn events_of_other_media_groups_and_sizes_are_not_applied() {
    let ix = index();
    let a = ix.pod("a");
    let p = prompt(8);
    let mut cpu = BlockStored {
        block_hashes: vec![1],
        token_ids: p[..4].to_vec(),
        block_size: BS as u32,
        medium: Some("CPU".into()),
        ..BlockStored::default()
    };
    let sliding = KvEvent::BlockStored(BlockStored {
        medium: None,
        kv_cache_spec_kind: Some("sliding_window".into()),
        ..cpu.clone()
    });
    let other = KvEvent::Other("BlockPinned".into());
    let applied = ix.apply(a, &[KvEvent::BlockStored(cpu.clone()), sliding, other]);
    assert_eq!((applied.ignored, applied.stored), (3, 0));
    cpu.medium = None;
    cpu.block_size = 16;
    let applied = ix.apply(a, &[KvEvent::BlockStored(cpu.clone())]);
    assert_eq!(applied.rejected, 1);
    assert_eq!(
        applied.first_rejection.unwrap().to_string(),
        "the engine stores blocks of 16 tokens but the index hashes blocks of 4; set the model's block_size to 16"
    );
    cpu.block_size = BS as u32;
    cpu.token_ids = p[..5].to_vec();
    let applied = ix.apply(a, &[KvEvent::BlockStored(cpu)]);
    assert_eq!(
        applied.first_rejection,
        Some(Rejected::TokenCount {
            blocks: 1,
            block_size: 4,
            tokens: 5
        })
    );
    assert_eq!(ix.blocks(), 0);
}

#[test]
fn adapters_blocks_match_only_that_adapter() {
    let ix = index();
    let a = ix.pod("a");
    let p = prompt(4);
    let lora = KvEvent::BlockStored(BlockStored {
        block_hashes: vec![1],
        token_ids: p.clone(),
        block_size: BS as u32,
        lora_name: Some("sql".into()),
        lora_id: Some(1),
        ..BlockStored::default()
    });
    ix.apply(a, &[lora]);
    assert_eq!(matched(&ix, &p, &[a]), vec![0]);
    let h = ix.hasher();
    assert_eq!(ix.match_prefix(&h.chain(Some("sql"), &p), &[a], 0), vec![1]);
}

#[test]
fn more_than_64_candidates_are_all_answered() {
    let ix = index();
    let pods: Vec<PodId> = (0..130).map(|i| ix.pod(&format!("p{i}"))).collect();
    let p = prompt(8);
    for (i, &pod) in pods.iter().enumerate() {
        let hashes: &[u64] = if i % 2 == 0 { &[1, 2] } else { &[1] };
        ix.apply(pod, &[stored(hashes, None, &p[..4 * hashes.len()])]);
    }
    let m = matched(&ix, &p, &pods);
    assert_eq!(m.len(), 130);
    assert!(m
        .iter()
        .enumerate()
        .all(|(i, &n)| n == if i % 2 == 0 { 2 } else { 1 }));
}

// ---- against a plain model -----------------------------------------------------------

/// The index's meaning, without hashes: each engine name a pod reported stands for a whole
/// token prefix (the block and everything before it).
#[derive(Default)]
struct Plain {
    pods: BTreeMap<usize, StdMap<u64, Vec<u32>>>,
}

impl Plain {
    fn apply(&mut self, pod: usize, event: &Op) {
        let held = self.pods.entry(pod).or_default();
        match event {
            Op::Store {
                hashes,
                parent,
                tokens,
            } => {
                let mut prefix = parent
                    .and_then(|p| held.get(&p).cloned())
                    .unwrap_or_default();
                for (h, block) in hashes.iter().zip(tokens.chunks_exact(BS)) {
                    prefix.extend_from_slice(block);
                    held.insert(*h, prefix.clone());
                }
            }
            Op::Remove(hashes) => {
                for h in hashes {
                    held.remove(h);
                }
            }
            Op::Clear => held.clear(),
        }
    }

    fn matched(&self, pod: usize, tokens: &[u32]) -> u32 {
        let Some(held) = self.pods.get(&pod) else {
            return 0;
        };
        let mut n = 0;
        while (n + 1) * BS <= tokens.len() && held.values().any(|p| p[..] == tokens[..(n + 1) * BS])
        {
            n += 1;
        }
        n as u32
    }
}

#[derive(Debug, Clone)]
enum Op {
    Store {
        hashes: Vec<u64>,
        parent: Option<u64>,
        tokens: Vec<u32>,
    },
    Remove(Vec<u64>),
    Clear,
}

fn op() -> impl Strategy<Value = (usize, Op)> {
    // Few names and a tiny alphabet, so chains meet, names repeat and prefixes overlap.
    let name = 0u64..12;
    let store = (
        prop::collection::vec(name.clone(), 1..4),
        prop::option::of(name.clone()),
    )
        .prop_flat_map(|(hashes, parent)| {
            let n = hashes.len() * BS;
            (
                Just(hashes),
                Just(parent),
                prop::collection::vec(0u32..2, n),
            )
        })
        .prop_map(|(hashes, parent, tokens)| Op::Store {
            hashes,
            parent,
            tokens,
        });
    let op = prop_oneof![
        6 => store,
        3 => prop::collection::vec(name, 1..3).prop_map(Op::Remove),
        1 => Just(Op::Clear),
    ];
    (0usize..3, op)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn the_index_matches_what_a_plain_model_of_held_prefixes_says(
        ops in prop::collection::vec(op(), 1..40),
        probes in prop::collection::vec(prop::collection::vec(0u32..2, 0..20), 8),
        // The candidates as a request names them: any order, some left out, some twice.
        asked in prop::collection::vec(0usize..3, 1..6),
    ) {
        let ix = index();
        let pods: Vec<PodId> = (0..3).map(|i| ix.pod(&format!("p{i}"))).collect();
        let mut plain = Plain::default();
        for (pod, op) in &ops {
            let event = match op {
                Op::Store { hashes, parent, tokens } => stored(hashes, *parent, tokens),
                Op::Remove(hashes) => removed(hashes),
                Op::Clear => KvEvent::AllBlocksCleared,
            };
            ix.apply(pods[*pod], &[event]);
            plain.apply(*pod, op);
            for probe in &probes {
                let want: Vec<u32> = (0..3).map(|p| plain.matched(p, probe)).collect();
                prop_assert_eq!(matched(&ix, probe, &pods), want, "after {:?} on {}, probe {:?}", op, pod, probe);
                let candidates: Vec<PodId> = asked.iter().map(|&p| pods[p]).collect();
                let want: Vec<u32> = asked.iter().map(|&p| plain.matched(p, probe)).collect();
                prop_assert_eq!(matched(&ix, probe, &candidates), want, "candidates {:?}", asked);
            }
        }
        // Every pod purged: nothing is left anywhere.
        for pod in &pods {
            ix.purge(*pod);
        }
        prop_assert_eq!(ix.blocks(), 0);
    }
}

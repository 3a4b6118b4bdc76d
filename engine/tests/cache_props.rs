//! Property test of the chunk cache: random sequences of inserts, reads, holds, releases,
//! evictions and reopens against a model of what must hold.
//!
//! Invariants after every step: a read returns exactly the bytes inserted (or nothing); a chunk
//! present while held stays present; after an eviction (explicit or after an insert) the cache is
//! within its limit unless only held chunks remain; the index's byte and chunk counts equal the
//! files on disk.

use std::collections::HashMap;
use std::path::Path;

use bvfs_engine::cache::{CacheLimits, ChunkCache};
use bvfs_engine::chunking::ChunkId;
use proptest::prelude::*;

const POOL: usize = 12;
const MAX_BYTES: u64 = 12_000;

/// The pool of contents the operations pick from: sizes from tiny to a third of the limit.
fn pool() -> Vec<(ChunkId, Vec<u8>)> {
    (0..POOL)
        .map(|n| {
            let len = 50 + n * 350;
            let data: Vec<u8> = (0..len)
                .map(|i| (i * 31 + n * 7) as u8 ^ (i >> 8) as u8)
                .collect();
            (ChunkId::of(&data), data)
        })
        .collect()
}

#[derive(Debug, Clone)]
enum Op {
    Insert(usize),
    Get(usize),
    Hold(usize),
    Release(usize),
    Remove(usize),
    Evict,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    let k = 0..POOL;
    prop_oneof![
        6 => k.clone().prop_map(Op::Insert),
        4 => k.clone().prop_map(Op::Get),
        2 => k.clone().prop_map(Op::Hold),
        2 => k.clone().prop_map(Op::Release),
        1 => k.prop_map(Op::Remove),
        1 => Just(Op::Evict),
        1 => Just(Op::Reopen),
    ]
}

fn on_disk(dir: &Path) -> (u64, u64) {
    let (mut bytes, mut files) = (0, 0);
    for shard in std::fs::read_dir(dir.join("chunks")).unwrap() {
        for file in std::fs::read_dir(shard.unwrap().path()).unwrap() {
            bytes += file.unwrap().metadata().unwrap().len();
            files += 1;
        }
    }
    (bytes, files)
}

fn open(dir: &Path) -> ChunkCache {
    let limits = CacheLimits {
        max_bytes: MAX_BYTES,
        min_free_bytes: 0,
        low_water: 0.75,
    };
    ChunkCache::open(dir, limits).unwrap()
}

fn within_limit(cache: &ChunkCache) -> bool {
    let usage = cache.usage();
    usage.bytes <= MAX_BYTES || usage.bytes == usage.held_bytes
}

/// `default` cases, or `PROPTEST_CASES` for a longer run.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(64), ..ProptestConfig::default() })]

    #[test]
    fn cache_keeps_its_invariants(ops in prop::collection::vec(op(), 1..80)) {
        let pool = pool();
        let dir = tempfile::tempdir().unwrap();
        let mut cache = open(dir.path());
        // Hold counts, and the chunks that must stay present because they were present while held.
        let mut holds: HashMap<usize, u32> = HashMap::new();
        let mut pinned_present: Vec<bool> = vec![false; POOL];

        for op in ops {
            match op {
                Op::Insert(k) => {
                    cache.insert(pool[k].0, &pool[k].1).unwrap();
                    if holds.contains_key(&k) {
                        pinned_present[k] = true;
                    }
                    prop_assert!(within_limit(&cache), "over the limit after an insert: {:?}", cache.usage());
                }
                Op::Get(k) => {
                    if let Some(data) = cache.get(&pool[k].0).unwrap() {
                        prop_assert_eq!(&data, &pool[k].1);
                    }
                }
                Op::Hold(k) => {
                    cache.hold([pool[k].0]);
                    *holds.entry(k).or_default() += 1;
                    if cache.contains(&pool[k].0) {
                        pinned_present[k] = true;
                    }
                }
                Op::Release(k) => {
                    if let Some(count) = holds.get_mut(&k) {
                        cache.release([pool[k].0]);
                        *count -= 1;
                        if *count == 0 {
                            holds.remove(&k);
                            pinned_present[k] = false;
                        }
                    }
                }
                Op::Remove(k) => {
                    cache.remove(&pool[k].0).unwrap();
                }
                Op::Evict => {
                    let stats = cache.evict();
                    prop_assert!(within_limit(&cache), "over the limit after evict: {stats:?}");
                }
                Op::Reopen => {
                    let before: Vec<bool> = pool.iter().map(|(id, _)| cache.contains(id)).collect();
                    drop(cache);
                    cache = open(dir.path());
                    let after: Vec<bool> = pool.iter().map(|(id, _)| cache.contains(id)).collect();
                    prop_assert_eq!(before, after, "reopen changed the contents");
                    // Holds live in memory: their owner re-establishes them after a restart.
                    for (&k, &count) in &holds {
                        cache.hold(std::iter::repeat_n(pool[k].0, count as usize));
                    }
                }
            }
            for (k, must) in pinned_present.iter().enumerate() {
                if *must {
                    prop_assert!(cache.contains(&pool[k].0), "held chunk {k} was evicted");
                }
            }
            let usage = cache.usage();
            prop_assert_eq!((usage.bytes, usage.chunks), on_disk(dir.path()));
            let held: u64 = pool
                .iter()
                .enumerate()
                .filter(|(k, (id, _))| holds.contains_key(k) && cache.contains(id))
                .map(|(_, (_, data))| data.len() as u64)
                .sum();
            prop_assert_eq!(usage.held_bytes, held);
        }
        for (k, (id, data)) in pool.iter().enumerate() {
            match cache.get(id).unwrap() {
                Some(got) => prop_assert_eq!(&got, data),
                None => prop_assert!(!pinned_present[k], "held chunk {} unreadable", k),
            }
        }
    }
}

//! The chunk cache on a real directory: round trips, LRU eviction with hysteresis, holds, the
//! free-space floor, corruption, recovery after losing the index, and concurrent use.

use std::path::Path;
use std::sync::Arc;

use bvfs_engine::cache::{CacheLimits, ChunkCache, Removal};
use bvfs_engine::chunking::ChunkId;

/// Deterministic content number `n` of `len` bytes, and its id.
fn chunk(n: u32, len: usize) -> (ChunkId, Vec<u8>) {
    let mut data = Vec::with_capacity(len);
    let mut state = n.wrapping_mul(2_654_435_761).wrapping_add(1);
    while data.len() < len {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        data.push(state as u8);
    }
    (ChunkId::of(&data), data)
}

/// Limits without a free-space floor, so tests do not depend on the machine's disk.
fn limits(max_bytes: u64, low_water: f64) -> CacheLimits {
    CacheLimits {
        max_bytes,
        min_free_bytes: 0,
        low_water,
    }
}

/// Bytes and number of chunk files actually on disk.
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

fn assert_accounting(cache: &ChunkCache) {
    let usage = cache.usage();
    assert_eq!(
        (usage.bytes, usage.chunks),
        on_disk(cache.dir()),
        "index and disk disagree"
    );
}

#[test]
fn insert_then_get_round_trips_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let cache = ChunkCache::open(dir.path(), limits(1 << 20, 0.9)).unwrap();
    let (id, data) = chunk(1, 5000);
    let (absent, _) = chunk(2, 10);
    assert_eq!(cache.get(&id).unwrap(), None);
    cache.insert(id, &data).unwrap();
    cache.insert(id, &data).unwrap();
    assert!(cache.contains(&id));
    assert!(!cache.contains(&absent));
    assert_eq!(cache.get(&id).unwrap().as_deref(), Some(&data[..]));
    let usage = cache.usage();
    assert_eq!(
        (usage.bytes, usage.chunks, usage.held_bytes, usage.max_bytes),
        (5000, 1, 0, 1 << 20)
    );
    assert_accounting(&cache);
    assert!(temp_files(dir.path()).is_empty(), "no temp file left");
}

#[test]
fn eviction_takes_least_recently_used_first_down_to_low_water() {
    let dir = tempfile::tempdir().unwrap();
    let cache = ChunkCache::open(dir.path(), limits(10_000, 0.6)).unwrap();
    let chunks: Vec<_> = (0..11).map(|n| chunk(n, 1000)).collect();
    for (id, data) in &chunks[..10] {
        cache.insert(*id, data).unwrap();
    }
    assert_eq!(
        cache.usage().chunks,
        10,
        "at the limit, not over it: nothing evicted"
    );
    cache.get(&chunks[0].0).unwrap().unwrap();
    assert!(cache.contains(&chunks[1].0));
    cache.insert(chunks[1].0, &chunks[1].1).unwrap(); // an idempotent insert refreshes too

    cache.insert(chunks[10].0, &chunks[10].1).unwrap(); // 11 000 > 10 000: evict to 6 000
    let kept: Vec<usize> = (0..11).filter(|&n| cache.contains(&chunks[n].0)).collect();
    assert_eq!(kept, vec![0, 1, 7, 8, 9, 10]);
    assert_eq!(cache.usage().bytes, 6000);
    assert_accounting(&cache);
}

#[test]
fn hysteresis_starts_over_the_limit_and_stops_at_low_water() {
    let dir = tempfile::tempdir().unwrap();
    let cache = ChunkCache::open(dir.path(), limits(10_000, 0.5)).unwrap();
    for n in 0..11 {
        let (id, data) = chunk(n, 1000);
        cache.insert(id, &data).unwrap();
    }
    assert_eq!(
        cache.usage().bytes,
        5000,
        "one insert over the limit drains to low water"
    );
    for n in 11..16 {
        let (id, data) = chunk(n, 1000);
        cache.insert(id, &data).unwrap();
    }
    assert_eq!(
        cache.usage().bytes,
        10_000,
        "back under the limit, nothing more is evicted"
    );
    let stats = cache.evict();
    assert_eq!(
        (stats.evicted_chunks, stats.remaining_bytes),
        (0, 10_000),
        "not over: evict does nothing"
    );
    assert_accounting(&cache);
}

#[test]
fn the_limit_holds_after_many_inserts_of_mixed_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let max = 64 * 1024;
    let cache = ChunkCache::open(dir.path(), limits(max, 0.8)).unwrap();
    let mut inserted = Vec::new();
    for n in 0..400u32 {
        let (id, data) = chunk(n, 100 + (n as usize * 7919) % 4000);
        cache.insert(id, &data).unwrap();
        inserted.push((id, data));
        assert!(
            cache.usage().bytes <= max,
            "over the limit after insert {n}"
        );
    }
    assert_accounting(&cache);
    // The most recent insert is always kept, and whatever is kept is intact.
    assert!(cache.contains(&inserted.last().unwrap().0));
    for (id, data) in &inserted {
        if let Some(got) = cache.get(id).unwrap() {
            assert_eq!(&got, data);
        }
    }
}

#[test]
fn held_chunks_are_never_evicted_and_holds_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(ChunkCache::open(dir.path(), limits(4000, 0.5)).unwrap());
    let (pinned, pinned_data) = chunk(100, 1000);
    let (open, open_data) = chunk(101, 1000);
    // A hold may come before the chunk is cached (a pinned file about to be hydrated).
    cache.hold([pinned]);
    cache.hold([pinned]);
    cache.insert(pinned, &pinned_data).unwrap();
    let guard = cache.hold_guard(vec![open]);
    cache.insert(open, &open_data).unwrap();
    assert_eq!(cache.usage().held_bytes, 2000);

    for n in 0..50 {
        let (id, data) = chunk(n, 1000);
        cache.insert(id, &data).unwrap();
    }
    assert!(cache.contains(&pinned) && cache.contains(&open));
    assert!(cache.usage().bytes <= 4000);

    cache.release([pinned]);
    drop(guard);
    for n in 50..60 {
        let (id, data) = chunk(n, 1000);
        cache.insert(id, &data).unwrap();
    }
    assert!(cache.contains(&pinned), "one holder is left");
    assert!(
        !cache.contains(&open),
        "released by the guard, then evicted"
    );
    cache.release([pinned]);
    for n in 60..70 {
        let (id, data) = chunk(n, 1000);
        cache.insert(id, &data).unwrap();
    }
    assert!(!cache.contains(&pinned));
    assert_accounting(&cache);
}

#[test]
fn eviction_stops_and_reports_when_only_held_chunks_remain() {
    let dir = tempfile::tempdir().unwrap();
    let cache = ChunkCache::open(dir.path(), limits(2500, 0.9)).unwrap();
    let held: Vec<_> = (0..4).map(|n| chunk(n, 1000)).collect();
    cache.hold(held.iter().map(|(id, _)| *id));
    for (id, data) in &held {
        cache.insert(*id, data).unwrap();
    }
    let (loose, loose_data) = chunk(9, 500);
    cache.insert(loose, &loose_data).unwrap();
    assert!(!cache.contains(&loose), "the only evictable chunk went");
    let stats = cache.evict();
    assert!(stats.blocked_by_holds);
    assert_eq!((stats.evicted_chunks, stats.remaining_bytes), (0, 4000));
    assert_eq!(cache.usage().held_bytes, 4000);
    assert!(held.iter().all(|(id, _)| cache.contains(id)));
}

#[test]
fn the_free_space_floor_shrinks_the_cache_but_never_takes_held_chunks() {
    let dir = tempfile::tempdir().unwrap();
    // A floor no disk can meet: every insert finds the cache over its effective limit.
    let floor = CacheLimits {
        max_bytes: 1 << 30,
        min_free_bytes: u64::MAX / 2,
        low_water: 0.9,
    };
    let cache = ChunkCache::open(dir.path(), floor).unwrap();
    let (held, held_data) = chunk(1, 1000);
    cache.hold([held]);
    cache.insert(held, &held_data).unwrap();
    for n in 2..6 {
        let (id, data) = chunk(n, 1000);
        cache.insert(id, &data).unwrap();
        assert!(!cache.contains(&id));
    }
    assert!(cache.contains(&held));
    assert_eq!(cache.usage().bytes, 1000);
    assert_accounting(&cache);
}

#[test]
fn remove_deletes_unheld_chunks_only() {
    let dir = tempfile::tempdir().unwrap();
    let cache = ChunkCache::open(dir.path(), limits(1 << 20, 0.9)).unwrap();
    let (a, a_data) = chunk(1, 300);
    let (b, b_data) = chunk(2, 300);
    cache.insert(a, &a_data).unwrap();
    cache.insert(b, &b_data).unwrap();
    cache.hold([b]);
    assert_eq!(cache.remove(&a).unwrap(), Removal::Removed);
    assert_eq!(cache.remove(&a).unwrap(), Removal::Absent);
    assert_eq!(cache.remove(&b).unwrap(), Removal::Held);
    assert_eq!(cache.get(&b).unwrap().as_deref(), Some(&b_data[..]));
    assert_accounting(&cache);
}

#[test]
fn a_corrupt_or_truncated_file_is_a_miss_and_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let cache = ChunkCache::open(dir.path(), limits(1 << 20, 0.9)).unwrap();
    let (flipped, flipped_data) = chunk(1, 4096);
    let (short, short_data) = chunk(2, 4096);
    let (gone, gone_data) = chunk(3, 4096);
    for (id, data) in [
        (flipped, &flipped_data),
        (short, &short_data),
        (gone, &gone_data),
    ] {
        cache.insert(id, data).unwrap();
    }

    let mut bytes = std::fs::read(cache.chunk_path(&flipped)).unwrap();
    bytes[1234] ^= 0x40;
    std::fs::write(cache.chunk_path(&flipped), &bytes).unwrap();
    std::fs::write(cache.chunk_path(&short), &short_data[..100]).unwrap();
    std::fs::remove_file(cache.chunk_path(&gone)).unwrap();

    for id in [flipped, short, gone] {
        assert_eq!(cache.get(&id).unwrap(), None);
        assert!(!cache.contains(&id));
        assert!(!cache.chunk_path(&id).exists());
    }
    assert_eq!(cache.usage().bytes, 0);
    // The cache heals: inserting the good bytes again serves them.
    cache.insert(flipped, &flipped_data).unwrap();
    assert_eq!(
        cache.get(&flipped).unwrap().as_deref(),
        Some(&flipped_data[..])
    );
}

#[test]
fn reopening_keeps_contents_and_recency() {
    let dir = tempfile::tempdir().unwrap();
    let chunks: Vec<_> = (0..10).map(|n| chunk(n, 1000)).collect();
    {
        let cache = ChunkCache::open(dir.path(), limits(10_000, 0.8)).unwrap();
        for (id, data) in &chunks {
            cache.insert(*id, data).unwrap();
        }
        cache.get(&chunks[0].0).unwrap().unwrap();
    }
    let cache = ChunkCache::open(dir.path(), limits(10_000, 0.8)).unwrap();
    assert!(
        !dir.path().join("index").exists(),
        "the snapshot is consumed on open"
    );
    for (id, data) in &chunks {
        assert_eq!(cache.get(id).unwrap().as_deref(), Some(&data[..]));
    }
    // Reads above touched every chunk in order 0..10; touch 0 last, so 1 and 2 are the coldest.
    cache.get(&chunks[0].0).unwrap();
    let (extra, extra_data) = chunk(99, 1000);
    cache.insert(extra, &extra_data).unwrap();
    let kept: Vec<usize> = (0..10).filter(|&n| cache.contains(&chunks[n].0)).collect();
    assert_eq!(kept, vec![0, 4, 5, 6, 7, 8, 9]);
}

#[test]
fn recency_survives_a_reopen_without_reads() {
    let dir = tempfile::tempdir().unwrap();
    let chunks: Vec<_> = (0..10).map(|n| chunk(n, 1000)).collect();
    {
        let cache = ChunkCache::open(dir.path(), limits(10_000, 0.9)).unwrap();
        for (id, data) in &chunks {
            cache.insert(*id, data).unwrap();
        }
        cache.get(&chunks[0].0).unwrap().unwrap();
    }
    let cache = ChunkCache::open(dir.path(), limits(10_000, 0.9)).unwrap();
    let (extra, extra_data) = chunk(99, 1000);
    cache.insert(extra, &extra_data).unwrap();
    let kept: Vec<usize> = (0..10).filter(|&n| cache.contains(&chunks[n].0)).collect();
    assert_eq!(
        kept,
        vec![0, 3, 4, 5, 6, 7, 8, 9],
        "1 and 2 were the least recently used"
    );
}

#[test]
fn losing_or_damaging_the_index_rebuilds_it_from_the_chunk_files() {
    let dir = tempfile::tempdir().unwrap();
    let chunks: Vec<_> = (0..20).map(|n| chunk(n, 700 + n as usize)).collect();
    let total: u64 = chunks.iter().map(|(_, d)| d.len() as u64).sum();
    {
        let cache = ChunkCache::open(dir.path(), limits(1 << 20, 0.9)).unwrap();
        for (id, data) in &chunks {
            cache.insert(*id, data).unwrap();
        }
    }
    std::fs::remove_file(dir.path().join("index")).unwrap();
    // An unfinished write in a shard, and one in the `tmp/` directory of earlier versions.
    let shard = std::fs::read_dir(dir.path().join("chunks"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::write(shard.join(".tmp.7"), b"partial").unwrap();
    std::fs::create_dir(dir.path().join("tmp")).unwrap();
    std::fs::write(dir.path().join("tmp").join("half-written"), b"partial").unwrap();
    std::fs::write(dir.path().join("chunks").join("not-a-chunk"), b"stray").unwrap();
    {
        let cache = ChunkCache::open(dir.path(), limits(1 << 20, 0.9)).unwrap();
        assert_eq!((cache.usage().bytes, cache.usage().chunks), (total, 20));
        for (id, data) in &chunks {
            assert_eq!(cache.get(id).unwrap().as_deref(), Some(&data[..]));
        }
        assert!(temp_files(dir.path()).is_empty(), "temp files cleared");
        assert!(
            !dir.path().join("tmp").exists(),
            "the old temp directory is gone"
        );
        assert!(
            dir.path().join("chunks").join("not-a-chunk").exists(),
            "unknown files are left alone"
        );
    }
    std::fs::write(
        dir.path().join("index"),
        b"BVFSCIX1 but then garbage that is long enough to parse",
    )
    .unwrap();
    let cache = ChunkCache::open(dir.path(), limits(1 << 20, 0.9)).unwrap();
    assert_eq!(cache.usage().chunks, 20);
    assert!(chunks.iter().all(|(id, _)| cache.contains(id)));
}

#[test]
fn a_stale_index_entry_is_corrected_on_read() {
    let dir = tempfile::tempdir().unwrap();
    let (id, data) = chunk(1, 2000);
    {
        let cache = ChunkCache::open(dir.path(), limits(1 << 20, 0.9)).unwrap();
        cache.insert(id, &data).unwrap();
    }
    // The file vanishes while the cache is closed: the snapshot still lists it.
    let hex = id.to_hex();
    std::fs::remove_file(dir.path().join("chunks").join(&hex[..2]).join(&hex)).unwrap();
    let cache = ChunkCache::open(dir.path(), limits(1 << 20, 0.9)).unwrap();
    assert_eq!(cache.get(&id).unwrap(), None);
    assert_eq!(cache.usage().bytes, 0);
}

#[test]
fn one_directory_serves_one_cache_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let cache = ChunkCache::open(dir.path(), CacheLimits::default()).unwrap();
    let err = ChunkCache::open(dir.path(), CacheLimits::default()).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
    assert!(err.to_string().contains("in use"), "{err}");
    drop(cache);
    ChunkCache::open(dir.path(), CacheLimits::default()).unwrap();
}

#[test]
fn concurrent_inserts_reads_holds_and_evictions_stay_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(ChunkCache::open(dir.path(), limits(40_000, 0.7)).unwrap());
    let chunks: Arc<Vec<_>> = Arc::new(
        (0..64)
            .map(|n| chunk(n, 500 + (n as usize % 7) * 300))
            .collect(),
    );
    let pinned = chunks[0].0;
    cache.hold([pinned]);
    cache.insert(pinned, &chunks[0].1).unwrap();
    let threads: Vec<_> = (0..8u32)
        .map(|t| {
            let (cache, chunks) = (Arc::clone(&cache), Arc::clone(&chunks));
            std::thread::spawn(move || {
                let mut state = t + 1;
                for _ in 0..400 {
                    state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                    let (id, data) = &chunks[(state >> 8) as usize % chunks.len()];
                    match (state >> 4) % 8 {
                        0..=3 => cache.insert(*id, data).unwrap(),
                        4 => {
                            cache.hold([*id]);
                            cache.release([*id]);
                        }
                        5 => {
                            cache.evict();
                        }
                        _ => {
                            if let Some(got) = cache.get(id).unwrap() {
                                assert_eq!(&got, data, "served wrong bytes");
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert!(cache.contains(&pinned));
    cache.evict();
    assert_accounting(&cache);
    assert!(cache.usage().bytes <= 40_000);
}

#[test]
fn an_unreadable_chunk_file_is_an_error_not_a_panic_and_is_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let cache = ChunkCache::open(dir.path(), limits(1 << 20, 0.9)).unwrap();
    let (id, data) = chunk(1, 3000);
    cache.insert(id, &data).unwrap();
    // A directory where the file should be: reading fails with EISDIR, a real I/O error.
    let path = cache.chunk_path(&id);
    std::fs::remove_file(&path).unwrap();
    std::fs::create_dir(&path).unwrap();
    std::fs::write(path.join("x"), b"x").unwrap();

    assert!(cache.get(&id).is_err());
    assert!(
        !cache.contains(&id),
        "forgotten, so that the next insert rewrites it"
    );
    assert_eq!(cache.usage().bytes, 0);
    std::fs::remove_dir_all(&path).unwrap();
    cache.insert(id, &data).unwrap();
    assert_eq!(cache.get(&id).unwrap().as_deref(), Some(&data[..]));
}

/// Unfinished chunk writes (`.tmp.*` in a shard directory) under a cache directory.
fn temp_files(cache_dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut temps = Vec::new();
    for shard in std::fs::read_dir(cache_dir.join("chunks")).unwrap() {
        let shard = shard.unwrap().path();
        if !shard.is_dir() {
            continue;
        }
        for file in std::fs::read_dir(&shard).unwrap() {
            let file = file.unwrap();
            if file.file_name().to_string_lossy().starts_with(".tmp.") {
                temps.push(file.path());
            }
        }
    }
    temps
}

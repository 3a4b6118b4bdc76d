//! The on-disk chunk cache: content-addressed chunks under one directory, with a size limit, a
//! free-space floor, LRU eviction with hysteresis, and holds that protect chunks from eviction.
//!
//! # Why it is shaped this way
//!
//! - **Files are the truth, bytes are verified on every read.** Each chunk is one file named by its
//!   BLAKE3 id, written to a temp file in its own shard directory and renamed into place, so a
//!   partial chunk is never visible under its name. (Temps in one shared directory made every insert
//!   contend for that directory's lock, and the cross-directory rename for two.)
//!   [`ChunkCache::get`] hashes the bytes before returning them; a corrupt or truncated file is
//!   removed and reported as a miss, so the caller refetches. Bad bytes are never served.
//! - **The index is in memory** (`index.rs`): an LRU list of present chunks plus hold counts, under one
//!   mutex held for O(1) bookkeeping only, never across file I/O. A read costs no database write (an
//!   SQLite index would turn every cache hit into a write to keep recency). Memory is about 100 bytes
//!   per chunk: 1M chunks (≈64 GiB of cached content at the 64 KiB average) take ≈100 MB.
//! - **Recovery needs no index** (`persist.rs`): a clean close writes the LRU order to `index`, which
//!   the next open loads and deletes at once. After a crash there is no `index`, and the open rebuilds
//!   it by scanning `chunks/` (one `stat` per file; insert time stands in for recency). Losing or
//!   damaging `index` therefore costs one scan, never correctness. Temp files are deleted on open.
//! - **Per-chunk file operations are serialized by a striped lock**: publishing a chunk (rename +
//!   index update) and evicting it (index check + unlink) take the same stripe, so an eviction can
//!   never unlink a file that a concurrent insert has just re-published.
//! - **Holds are counted and live in memory only.** Pinned, unsynced or open content is held by its
//!   owner, who re-holds after a restart before inserting anything (eviction only runs on insert or
//!   on an explicit [`ChunkCache::evict`]). A chunk may be held before it is cached.
//!
//! Writes of content that exists nowhere else (not yet uploaded) use [`ChunkCache::insert_durable`],
//! which fsyncs; chunks fetched from the server use [`ChunkCache::insert`], which does not: after a
//! power loss a damaged file is caught by verification and refetched.

mod index;
mod persist;

pub use persist::{BadIndex, decode_index, encode_index};

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::chunking::ChunkId;
use index::Index;

/// How much the cache may use.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CacheLimits {
    /// The most bytes of chunks the cache keeps (held chunks may push it over).
    pub max_bytes: u64,
    /// Free space to leave on the cache's filesystem; the cache shrinks to keep it.
    pub min_free_bytes: u64,
    /// The fraction of the limit eviction shrinks to once it starts, so that it does not run again
    /// on the very next insert (hysteresis). Clamped to `0.0..=1.0`.
    pub low_water: f64,
}

impl Default for CacheLimits {
    /// 10 GiB, a 1 GiB free-space floor, evict down to 90 %.
    fn default() -> Self {
        Self {
            max_bytes: 10 << 30,
            min_free_bytes: 1 << 30,
            low_water: 0.9,
        }
    }
}

impl CacheLimits {
    fn low_water(&self) -> f64 {
        if self.low_water.is_nan() {
            0.9
        } else {
            self.low_water.clamp(0.0, 1.0)
        }
    }
}

/// What the cache holds now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheUsage {
    /// Bytes of all cached chunks.
    pub bytes: u64,
    /// Number of cached chunks.
    pub chunks: u64,
    /// Bytes of cached chunks that are held (not evictable).
    pub held_bytes: u64,
    /// The configured limit.
    pub max_bytes: u64,
}

/// What one eviction did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EvictStats {
    pub evicted_chunks: u64,
    pub evicted_bytes: u64,
    /// The size eviction aimed for (0 when it did not need to run).
    pub target_bytes: u64,
    /// Bytes cached when it stopped.
    pub remaining_bytes: u64,
    /// It stopped above the target because every remaining chunk is held.
    pub blocked_by_holds: bool,
    /// Files that could not be removed (logged); their space is lost until the next rescan.
    pub errors: u64,
}

/// What [`ChunkCache::remove`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    Removed,
    /// The chunk was not cached.
    Absent,
    /// The chunk is held; it was left in place.
    Held,
}

// Shared by FUSE worker threads and tokio tasks.
const _: fn() = || {
    fn shareable<T: Send + Sync>() {}
    shareable::<ChunkCache>();
    shareable::<HoldGuard>();
};

/// How many stripes serialize per-chunk file operations (a power of two).
const STRIPES: usize = 64;
/// The most victims one insert evicts before returning; a drain to low water is spread over the
/// following inserts so that no single read pays for a huge eviction.
const EVICT_STEP: usize = 64;
/// Chunk files larger than this are corrupt whatever the chunking parameters (never read whole).
const MAX_CHUNK_FILE: u64 = 64 << 20;

/// Content-addressed chunks on disk. `Send + Sync`: share it in an `Arc`.
pub struct ChunkCache {
    dir: PathBuf,
    chunks_dir: PathBuf,
    limits: CacheLimits,
    index: Mutex<Index>,
    stripes: Box<[Mutex<()>]>,
    /// One evictor at a time; inserts skip eviction while another thread runs it.
    evicting: Mutex<()>,
    /// Set while a drain towards low water is in progress (hysteresis across inserts).
    draining: AtomicBool,
    tmp_seq: AtomicU64,
    /// The directory lock, released when the cache is dropped.
    _lock: File,
}

impl std::fmt::Debug for ChunkCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkCache")
            .field("dir", &self.dir)
            .field("usage", &self.usage())
            .finish_non_exhaustive()
    }
}

impl ChunkCache {
    /// Opens (creating if needed) the cache in `dir` and recovers its index: from the snapshot of the
    /// last clean close if there is a valid one, else by scanning the chunk files. Does not evict:
    /// the owner re-establishes holds first.
    pub fn open(dir: &Path, limits: CacheLimits) -> io::Result<Self> {
        let chunks_dir = dir.join("chunks");
        fs::create_dir_all(&chunks_dir)?;
        let lock = persist::lock_exclusive(&dir.join("lock"))?;
        // Caches written by earlier versions kept their unfinished writes in `tmp/`.
        let old_tmp = dir.join("tmp");
        if old_tmp.is_dir() {
            fs::remove_dir_all(&old_tmp)?;
        }

        let index_path = dir.join("index");
        let mut index = Index::new();
        let entries = match persist::load_index(&index_path) {
            Ok(Some(entries)) => {
                // Consume the snapshot before anything changes, so that a crash in this session
                // leads to a rescan instead of a stale index.
                fs::remove_file(&index_path)?;
                persist::sync_dir(dir)?;
                Some(entries)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), "the chunk cache index is unusable ({e}); rebuilding it");
                let _ = fs::remove_file(&index_path);
                None
            }
        };
        let entries = match entries {
            Some(entries) => entries,
            None => {
                let scan = persist::scan_chunks(&chunks_dir)?;
                if scan.temps > 0 {
                    tracing::info!(dir = %dir.display(), "removed {} unfinished chunk writes", scan.temps);
                }
                if scan.strays > 0 {
                    tracing::warn!(dir = %chunks_dir.display(), "ignoring {} files that are not chunks", scan.strays);
                }
                scan.entries
            }
        };
        for (id, len) in entries {
            index.add(id, len);
        }
        tracing::debug!(dir = %dir.display(), chunks = index.chunks(), bytes = index.bytes(), "opened chunk cache");

        Ok(Self {
            dir: dir.to_path_buf(),
            chunks_dir,
            limits,
            index: Mutex::new(index),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            evicting: Mutex::new(()),
            draining: AtomicBool::new(false),
            tmp_seq: AtomicU64::new(0),
            _lock: lock,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn limits(&self) -> CacheLimits {
        self.limits
    }

    /// Where the chunk `id` lives (whether or not it is cached).
    pub fn chunk_path(&self, id: &ChunkId) -> PathBuf {
        let hex = id.to_hex();
        self.chunks_dir.join(&hex[..2]).join(hex)
    }

    /// Caches `data` as chunk `id` (its BLAKE3 hash). Idempotent. Afterwards evicts, a bounded
    /// number of chunks per call, if the cache is over its limit or the disk under its floor. On a
    /// full disk it evicts and retries once.
    pub fn insert(&self, id: ChunkId, data: &[u8]) -> io::Result<()> {
        self.insert_with(id, data, false)
    }

    /// [`ChunkCache::insert`] that returns only once the chunk is on stable storage: for content that
    /// exists nowhere else yet (written locally, not uploaded). Hold it too, or it may be evicted.
    pub fn insert_durable(&self, id: ChunkId, data: &[u8]) -> io::Result<()> {
        self.insert_with(id, data, true)
    }

    fn insert_with(&self, id: ChunkId, data: &[u8], durable: bool) -> io::Result<()> {
        debug_assert_eq!(ChunkId::of(data), id, "inserting bytes under the wrong id");
        let len = u32::try_from(data.len()).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, "a chunk cannot exceed 4 GiB")
        })?;
        // Already cached: only its recency changes. A durable insert still rewrites, since the
        // existing file may not have been synced. Either way the eviction check runs: a release
        // since the last insert may have made an over-limit cache evictable.
        if !durable && self.index.lock().touch(&id).is_some() {
            self.evict_step();
            return Ok(());
        }
        match self.publish(id, data, len, durable) {
            Err(e) if persist::is_out_of_space(&e) => {
                tracing::warn!(dir = %self.dir.display(), "disk full while caching a chunk; evicting and retrying");
                let stats = self.evict_for_space();
                tracing::info!(?stats, "evicted for space");
                self.publish(id, data, len, durable)?;
            }
            result => result?,
        }
        self.evict_step();
        Ok(())
    }

    /// Writes a temp file and renames it into place, then records it. Never leaves a partial chunk
    /// under its name; removes its temp file on failure.
    fn publish(&self, id: ChunkId, data: &[u8], len: u32, durable: bool) -> io::Result<()> {
        let seq = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let path = self.chunk_path(&id);
        let shard = path.parent().expect("chunk paths have a parent");
        let tmp = shard.join(format!("{}{seq}", persist::TEMP_PREFIX));
        let result = (|| {
            let mut file = match File::create_new(&tmp) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    // The shard directory does not exist yet (created lazily).
                    fs::create_dir_all(shard)?;
                    File::create_new(&tmp)?
                }
                other => other?,
            };
            file.write_all(data)?;
            if durable {
                file.sync_all()?;
            }
            drop(file);
            let _stripe = self.stripe(&id).lock();
            fs::rename(&tmp, &path)?;
            if durable {
                persist::sync_dir(shard)?;
            }
            self.index.lock().add(id, len);
            Ok(())
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// The bytes of chunk `id`, verified against its id, or `None` if it is not cached. A corrupt
    /// or truncated file is removed, logged and reported as a miss. Marks the chunk recently used.
    pub fn get(&self, id: &ChunkId) -> io::Result<Option<Vec<u8>>> {
        let Some(len) = self.index.lock().touch(id) else {
            return Ok(None);
        };
        match self.read_verified(id) {
            Ok(Ok(data)) => {
                if data.len() as u64 != u64::from(len) {
                    // The index had a wrong length (stale snapshot); the verified file is the truth.
                    self.index.lock().add(*id, data.len() as u32);
                }
                Ok(Some(data))
            }
            Ok(Err(problem)) => self.discard_bad(id, problem),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Deleted behind our back (or evicted since the lookup): forget it unless it is back.
                let _stripe = self.stripe(id).lock();
                if !self.chunk_path(id).exists() {
                    self.index.lock().remove(id);
                }
                Ok(None)
            }
            Err(e) => {
                // Unreadable (EIO…). Forget it unless held, so that the next insert rewrites it and
                // the cache heals; the file stays, since the error may be transient and held content
                // may exist nowhere else.
                let _stripe = self.stripe(id).lock();
                let mut index = self.index.lock();
                if !index.is_held(id) {
                    index.remove(id);
                }
                Err(e)
            }
        }
    }

    /// Reads a chunk file and checks it: the outer error is I/O, the inner one a content problem.
    fn read_verified(&self, id: &ChunkId) -> io::Result<Result<Vec<u8>, String>> {
        let mut file = File::open(self.chunk_path(id))?;
        let size = file.metadata()?.len();
        if size > MAX_CHUNK_FILE {
            return Ok(Err(format!("{size} bytes is too large for a chunk")));
        }
        let mut data = Vec::with_capacity(size as usize);
        Read::by_ref(&mut file)
            .take(MAX_CHUNK_FILE)
            .read_to_end(&mut data)?;
        if ChunkId::of(&data) != *id {
            return Ok(Err(format!(
                "its {} bytes do not hash to its name",
                data.len()
            )));
        }
        Ok(Ok(data))
    }

    /// Removes a chunk file found corrupt, unless it was replaced by a good copy meanwhile.
    fn discard_bad(&self, id: &ChunkId, problem: String) -> io::Result<Option<Vec<u8>>> {
        let _stripe = self.stripe(id).lock();
        // Re-check under the stripe: a concurrent insert may have published a good copy.
        if let Ok(Ok(data)) = self.read_verified(id) {
            return Ok(Some(data));
        }
        let held = self.index.lock().is_held(id);
        tracing::warn!(chunk = %id, held, "cached chunk is corrupt ({problem}); removed it");
        match fs::remove_file(self.chunk_path(id)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(chunk = %id, "cannot remove corrupt chunk file: {e}"),
        }
        self.index.lock().remove(id);
        Ok(None)
    }

    /// Whether the index lists `id` (no I/O, recency untouched). [`ChunkCache::get`] is the authority:
    /// a listed file may still turn out corrupt or deleted.
    pub fn contains(&self, id: &ChunkId) -> bool {
        self.index.lock().peek(id).is_some()
    }

    /// Removes chunk `id` unless it is held.
    pub fn remove(&self, id: &ChunkId) -> io::Result<Removal> {
        let _stripe = self.stripe(id).lock();
        {
            let mut index = self.index.lock();
            if index.is_held(id) {
                return Ok(if index.peek(id).is_some() {
                    Removal::Held
                } else {
                    Removal::Absent
                });
            }
            if index.remove(id).is_none() {
                return Ok(Removal::Absent);
            }
        }
        match fs::remove_file(self.chunk_path(id)) {
            Ok(()) => Ok(Removal::Removed),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Removal::Absent),
            Err(e) => Err(e),
        }
    }

    /// What the cache holds now.
    pub fn usage(&self) -> CacheUsage {
        let index = self.index.lock();
        CacheUsage {
            bytes: index.bytes(),
            chunks: index.chunks(),
            held_bytes: index.held_bytes(),
            max_bytes: self.limits.max_bytes,
        }
    }

    /// Adds one hold on each of `ids`: held chunks are never evicted. Holds are counted (two holders
    /// need two releases) and may be taken before a chunk is cached. Take the hold before checking
    /// [`ChunkCache::contains`], so that presence cannot change between the check and the hold.
    pub fn hold(&self, ids: impl IntoIterator<Item = ChunkId>) {
        let mut index = self.index.lock();
        for id in ids {
            index.hold(id);
        }
    }

    /// Drops one hold on each of `ids`. Released chunks become evictable at the next insert or
    /// [`ChunkCache::evict`] (release itself does no file I/O). Releasing a chunk that is not held
    /// is a caller bug: logged (and an assertion failure in debug builds).
    pub fn release(&self, ids: impl IntoIterator<Item = ChunkId>) {
        let mut index = self.index.lock();
        for id in ids {
            if !index.release(&id) {
                tracing::warn!(chunk = %id, "released a chunk that was not held");
                debug_assert!(false, "released {id:?}, which was not held");
            }
        }
    }

    /// Holds `ids` until the returned guard is dropped.
    pub fn hold_guard(self: &Arc<Self>, ids: Vec<ChunkId>) -> HoldGuard {
        self.hold(ids.iter().copied());
        HoldGuard {
            cache: Arc::clone(self),
            ids,
        }
    }

    /// Evicts least recently used, unheld chunks if the cache is over its limit or the disk under
    /// its floor, down to `low_water` of the (effective) limit. Stops early if only held chunks are
    /// left.
    pub fn evict(&self) -> EvictStats {
        let _evicting = self.evicting.lock();
        let stats = match self.eviction_target() {
            Some(target) => self.evict_to(target, usize::MAX),
            None => EvictStats {
                remaining_bytes: self.index.lock().bytes(),
                ..EvictStats::default()
            },
        };
        self.draining.store(false, Ordering::Relaxed);
        stats
    }

    /// The incremental eviction run after each insert: at most [`EVICT_STEP`] victims, continuing a
    /// drain started by an earlier insert. Skipped if another thread is evicting.
    fn evict_step(&self) {
        let Some(_evicting) = self.evicting.try_lock() else {
            return;
        };
        let target = match self.eviction_target() {
            Some(target) => target,
            None if self.draining.load(Ordering::Relaxed) => {
                self.low_water_of(self.effective_limit())
            }
            None => return,
        };
        let stats = self.evict_to(target, EVICT_STEP);
        let done = stats.remaining_bytes <= target || stats.blocked_by_holds;
        self.draining.store(!done, Ordering::Relaxed);
        if stats.blocked_by_holds {
            tracing::warn!(
                held_bytes = self.index.lock().held_bytes(),
                max_bytes = self.limits.max_bytes,
                "the chunk cache is over its limit with only held chunks left"
            );
        }
    }

    /// After ENOSPC: shrink to low water of what the cache holds now, whatever the limits say.
    fn evict_for_space(&self) -> EvictStats {
        let _evicting = self.evicting.lock();
        let bytes = self.index.lock().bytes();
        let target = self.low_water_of(bytes.min(self.effective_limit()));
        self.evict_to(target, usize::MAX)
    }

    /// The size the cache may have now: its limit, lowered so that the free-space floor holds.
    fn effective_limit(&self) -> u64 {
        let max = self.limits.max_bytes;
        if self.limits.min_free_bytes == 0 {
            return max;
        }
        match persist::free_bytes(&self.dir) {
            Ok(free) if free < self.limits.min_free_bytes => {
                let bytes = self.index.lock().bytes();
                // Freed cache bytes become free space: this is the size at which the floor holds.
                max.min((bytes + free).saturating_sub(self.limits.min_free_bytes))
            }
            Ok(_) => max,
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), "cannot read free disk space: {e}");
                max
            }
        }
    }

    fn low_water_of(&self, limit: u64) -> u64 {
        (limit as f64 * self.limits.low_water()) as u64
    }

    /// The size to evict down to if eviction should start now (over the limit or under the floor).
    fn eviction_target(&self) -> Option<u64> {
        let limit = self.effective_limit();
        (self.index.lock().bytes() > limit).then(|| self.low_water_of(limit))
    }

    /// Evicts least recently used unheld chunks until at most `target` bytes are cached, at most
    /// `max_victims` of them. Victims leave the index under its lock (in small batches); their files
    /// are unlinked afterwards under their stripes.
    fn evict_to(&self, target: u64, max_victims: usize) -> EvictStats {
        const BATCH: usize = 256;
        let mut stats = EvictStats {
            target_bytes: target,
            ..EvictStats::default()
        };
        let mut budget = max_victims;
        loop {
            let victims: Vec<(ChunkId, u32)> = {
                let mut index = self.index.lock();
                let mut victims = Vec::new();
                while index.bytes() > target && victims.len() < BATCH.min(budget) {
                    match index.pop_lru() {
                        Some(victim) => victims.push(victim),
                        None => {
                            stats.blocked_by_holds = true;
                            break;
                        }
                    }
                }
                victims
            };
            if victims.is_empty() {
                break;
            }
            budget -= victims.len();
            for (id, len) in victims {
                let _stripe = self.stripe(&id).lock();
                if self.index.lock().peek(&id).is_some() {
                    // Re-published by an insert since it was picked: its file is live again.
                    continue;
                }
                match fs::remove_file(self.chunk_path(&id)) {
                    Ok(()) => {
                        stats.evicted_chunks += 1;
                        stats.evicted_bytes += u64::from(len);
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        stats.errors += 1;
                        tracing::warn!(chunk = %id, "cannot evict cached chunk: {e}");
                    }
                }
            }
            if budget == 0 {
                break;
            }
        }
        stats.remaining_bytes = self.index.lock().bytes();
        if stats.evicted_chunks > 0 {
            tracing::debug!(?stats, "evicted cached chunks");
        }
        stats
    }

    fn stripe(&self, id: &ChunkId) -> &Mutex<()> {
        &self.stripes[usize::from(id.0[31]) % STRIPES]
    }
}

impl Drop for ChunkCache {
    /// Saves the LRU order for the next open (a failure only costs that open a rescan).
    fn drop(&mut self) {
        let entries = self.index.get_mut().entries();
        if let Err(e) = persist::save_index(&self.dir.join("index"), &entries) {
            tracing::warn!(dir = %self.dir.display(), "cannot save the chunk cache index: {e}");
        }
    }
}

/// Holds chunks in a [`ChunkCache`] until dropped.
#[must_use = "the chunks are released when the guard is dropped"]
pub struct HoldGuard {
    cache: Arc<ChunkCache>,
    ids: Vec<ChunkId>,
}

impl HoldGuard {
    pub fn ids(&self) -> &[ChunkId] {
        &self.ids
    }
}

impl Drop for HoldGuard {
    fn drop(&mut self) {
        self.cache.release(self.ids.iter().copied());
    }
}

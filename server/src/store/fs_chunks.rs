//! The embedded chunk store: one file per chunk under `DIR/<tenant>/<first byte>/<id hex>`.
//!
//! A chunk is written to a temporary file, fsynced and renamed into place, so a reader never sees a
//! partial chunk; [`ChunkStore::sync`] fsyncs the directories that received renames. A chunk is
//! visible (to `FindMissingChunks`, to a commit's check) from its rename on, before its directory entry
//! is durable, so every commit calls `sync` before its transaction: a commit never lands naming a chunk
//! a crash could still take away (issue 15, item 3), whatever happened to the upload that stored it.
//! Tenants have separate directories: dedup is per tenant and one tenant can never reach another's
//! bytes.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use super::{ChunkKey, ChunkStore, StoreError, StoreResult, StoredChunk, TenantId};

/// Chunks as files in a directory tree.
pub struct FsChunkStore {
    root: PathBuf,
    tmp: PathBuf,
    /// Directories with renames not yet fsynced.
    unsynced_dirs: Mutex<BTreeSet<PathBuf>>,
    /// Held while a [`ChunkStore::sync`] fsyncs: a second caller waits for the first to finish, so
    /// that when `sync` returns, every rename before the call is durable (not merely being fsynced by
    /// someone else).
    syncing: Mutex<()>,
    tmp_counter: AtomicU64,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::ChunkIo {
        path: path.display().to_string(),
        source,
    }
}

impl FsChunkStore {
    /// Opens the store rooted at `root`, creating it if needed. Temporary files are left alone: a
    /// server beside this caller (an admin command) may be writing them; the server clears them with
    /// [`FsChunkStore::clear_temporary`] once it holds the data directory alone.
    pub fn open(root: &Path) -> StoreResult<Self> {
        let tmp = root.join("tmp");
        fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        Ok(Self {
            root: root.to_owned(),
            tmp,
            unsynced_dirs: Mutex::new(BTreeSet::new()),
            syncing: Mutex::new(()),
            tmp_counter: AtomicU64::new(0),
        })
    }

    /// Removes temporary files left by an earlier crash. Only for the one process that serves this
    /// store (it holds the data directory's lock): anyone else could remove an upload in flight.
    pub fn clear_temporary(&self) -> StoreResult<()> {
        for entry in fs::read_dir(&self.tmp).map_err(io_err(&self.tmp))? {
            let path = entry.map_err(io_err(&self.tmp))?.path();
            fs::remove_file(&path).map_err(io_err(&path))?;
        }
        Ok(())
    }

    /// Directories holding renames that are not yet durable (for tests and diagnostics): empty right
    /// after a [`ChunkStore::sync`].
    pub fn unsynced_dirs(&self) -> Vec<PathBuf> {
        self.unsynced_dirs.lock().iter().cloned().collect()
    }

    /// The ids of the chunks stored for `tenant` (names that are not chunk ids are skipped).
    pub fn chunks_of(&self, tenant: TenantId) -> StoreResult<Vec<ChunkKey>> {
        Ok(self.list(tenant)?.into_iter().map(|c| c.id).collect())
    }

    fn chunk_path(&self, tenant: TenantId, id: &ChunkKey) -> PathBuf {
        let hex = hex::encode(id);
        self.root.join(tenant.to_string()).join(&hex[..2]).join(hex)
    }
}

impl ChunkStore for FsChunkStore {
    fn stored_len(&self, tenant: TenantId, id: &ChunkKey) -> StoreResult<Option<u64>> {
        let path = self.chunk_path(tenant, id);
        match fs::metadata(&path) {
            Ok(meta) => Ok(Some(meta.len())),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    fn put(&self, tenant: TenantId, id: &ChunkKey, data: &[u8]) -> StoreResult<bool> {
        let path = self.chunk_path(tenant, id);
        if self.stored_len(tenant, id)? == Some(data.len() as u64) {
            return Ok(false);
        }
        let dir = path.parent().expect("chunk paths have a parent");
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let tmp = self.tmp.join(format!("{}-{n}", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut file = File::create(&tmp)?;
            file.write_all(data)?;
            file.sync_all()
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(io_err(&tmp)(e));
        }
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        // The chunk's directory holds the new entry; its parents may hold newly created directories.
        let mut unsynced = self.unsynced_dirs.lock();
        unsynced.extend(dir.ancestors().take(3).map(Path::to_owned));
        Ok(true)
    }

    fn sync(&self) -> StoreResult<()> {
        let _syncing = self.syncing.lock();
        let dirs = std::mem::take(&mut *self.unsynced_dirs.lock());
        let mut dirs = dirs.into_iter();
        while let Some(dir) = dirs.next() {
            if let Err(e) = File::open(&dir).and_then(|d| d.sync_all()) {
                // Not durable yet: keep this one and the rest for the next sync.
                let mut unsynced = self.unsynced_dirs.lock();
                unsynced.insert(dir.clone());
                unsynced.extend(dirs);
                return Err(io_err(&dir)(e));
            }
        }
        Ok(())
    }

    fn get(&self, tenant: TenantId, id: &ChunkKey) -> StoreResult<Option<Vec<u8>>> {
        let path = self.chunk_path(tenant, id);
        match fs::read(&path) {
            Ok(data) => Ok(Some(data)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    fn list(&self, tenant: TenantId) -> StoreResult<Vec<StoredChunk>> {
        let dir = self.root.join(tenant.to_string());
        let mut chunks = Vec::new();
        let shards = match fs::read_dir(&dir) {
            Ok(shards) => shards,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(chunks),
            Err(e) => return Err(io_err(&dir)(e)),
        };
        for shard in shards {
            let shard = shard.map_err(io_err(&dir))?.path();
            if !shard.is_dir() {
                continue;
            }
            for entry in fs::read_dir(&shard).map_err(io_err(&shard))? {
                let entry = entry.map_err(io_err(&shard))?;
                let Some(id) = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| hex::decode(n).ok())
                    .and_then(|b| ChunkKey::try_from(b).ok())
                else {
                    continue;
                };
                let meta = match entry.metadata() {
                    Ok(meta) => meta,
                    // Deleted since the directory was read.
                    Err(e) if e.kind() == ErrorKind::NotFound => continue,
                    Err(e) => return Err(io_err(&entry.path())(e)),
                };
                chunks.push(StoredChunk {
                    id,
                    len: meta.len(),
                    stored_at: meta.modified().map_err(io_err(&entry.path()))?,
                });
            }
        }
        Ok(chunks)
    }

    fn delete(&self, tenant: TenantId, id: &ChunkKey) -> StoreResult<bool> {
        let path = self.chunk_path(tenant, id);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_err(&path)(e)),
        }
        // Durable now (a chunk coming back after a crash would only be collected again, but a
        // caller reporting bytes freed should mean it).
        let dir = path.parent().expect("chunk paths have a parent");
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))?;
        Ok(true)
    }
}

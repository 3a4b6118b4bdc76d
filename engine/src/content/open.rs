//! The mount's side of content ownership: opening a file for writing (a single-flight build of its
//! copy), closing and committing what was written, opening it for reading, and unlinking it.
//!
//! Every method registers with [`super::Contents`] *before* it reads the LOCAL entry, so the sync
//! round, which reserves inodes under the state lock, always sees the handles that may hold a version.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use super::{Contents, WriteCounter, WriteStart};
use crate::api::{Engine, EngineError, EngineResult};
use crate::chunking::Manifest;
use crate::faults::FaultPoint;
use crate::model::NodeKind;
use crate::state::local::{LocalEntry, LocalError};

/// A file opened for writing: its copy, open read-write.
pub struct WriteOpen {
    pub file: File,
    /// Where the copy is (tools and tests that write it by path, as the mount writes its handle).
    pub path: PathBuf,
    /// Bump on every write through this handle.
    pub counter: WriteCounter,
    /// Whether the kernel may keep its cached pages of the inode.
    pub keep_cache: bool,
}

/// Where a reading handle gets its bytes.
pub enum ReadSource {
    /// The materialized copy.
    Copy(File),
    /// The chunks of this manifest (the LOCAL content at open).
    Chunks(Manifest),
}

/// A file opened for reading.
pub struct ReadOpen {
    pub entry: LocalEntry,
    pub source: ReadSource,
    /// Whether the kernel may keep its cached pages of the inode.
    pub keep_cache: bool,
    /// Held while the handle is open; dropping it ends the registration.
    pub lease: ReadLease,
}

/// A registered reader of one inode; dropping it unregisters.
pub struct ReadLease {
    contents: Arc<Contents>,
    ino: u64,
    /// The copy (and its owner record) to remove if this is the last holder of an unlinked inode.
    copy_paths: [PathBuf; 2],
}

impl ReadLease {
    pub fn ino(&self) -> u64 {
        self.ino
    }
}

impl Drop for ReadLease {
    fn drop(&mut self) {
        if self.contents.end_read(self.ino)
            && let Err(e) = crate::files::remove_copy_files(&self.copy_paths)
        {
            tracing::warn!(
                ino = self.ino,
                "cannot remove the copy of an unlinked file: {e}"
            );
        }
    }
}

impl Engine {
    /// Opens `ino` for writing and returns its copy: the existing one, or one built now from the
    /// file's chunks (empty when `truncate`). Concurrent first opens build one copy between them.
    pub async fn open_write(&self, ino: u64, truncate: bool) -> EngineResult<WriteOpen> {
        let counter = match self.contents.begin_write(ino, &self.files)? {
            WriteStart::Joined(counter) => {
                if let Err(e) = self.writable_entry(ino) {
                    self.close_write(ino, false, None)?;
                    return Err(e);
                }
                counter
            }
            WriteStart::Build => {
                let built = self.build_copy(ino, truncate).await;
                let counter = self.contents.finish_materialize(ino, built.is_ok());
                built?;
                counter.expect("a successful build registers its writer")
            }
        };
        let opened = File::options()
            .read(true)
            .write(true)
            .open(self.files.path(ino))
            .and_then(|file| {
                if truncate {
                    file.set_len(0)?;
                    counter.wrote();
                }
                Ok(file)
            });
        match opened {
            Ok(file) => Ok(WriteOpen {
                file,
                path: self.files.path(ino),
                counter,
                keep_cache: self.contents.keep_pages(ino),
            }),
            Err(e) => {
                // Registered as a writer: unregister, committing nothing new.
                self.close_write(ino, truncate, None)?;
                Err(e.into())
            }
        }
    }

    /// [`Engine::open_write`] for threads outside the runtime (FUSE workers).
    pub fn open_write_blocking(
        &self,
        handle: &tokio::runtime::Handle,
        ino: u64,
        truncate: bool,
    ) -> EngineResult<WriteOpen> {
        handle.block_on(self.open_write(ino, truncate))
    }

    fn writable_entry(&self, ino: u64) -> EngineResult<LocalEntry> {
        let entry = self.getattr(ino)?.ok_or(LocalError::NotFound)?;
        if entry.node.kind != NodeKind::File {
            return Err(LocalError::IsDir.into());
        }
        Ok(entry)
    }

    /// Builds the copy of `ino` from its LOCAL content (or empty): fetches what is not cached, writes
    /// a temporary file, fsyncs it and renames it into place, never over another copy.
    async fn build_copy(&self, ino: u64, truncate: bool) -> EngineResult<()> {
        let entry = self.writable_entry(ino)?;
        let mut pending = self.files.begin(ino)?;
        if !truncate {
            use std::io::Write;
            let manifest = self.manifest(&entry)?;
            // One batched, concurrent fetch of whatever is not cached, then the copy in order.
            self.fetcher
                .hydrate(manifest.chunks.iter().map(|c| c.id))
                .await?;
            for chunk in &manifest.chunks {
                let bytes = self
                    .fetcher
                    .chunk(chunk.id, crate::fetch::Priority::OnDemand)
                    .await?;
                pending.file().write_all(&bytes)?;
            }
        }
        pending.commit()?;
        self.config.faults.reach(FaultPoint::CopyBuilt);
        self.files.set_owner(ino, entry.node.id, &entry.node.name)?;
        Ok(())
    }

    /// A writing handle of `ino` closed, after writing if `wrote`. When the last one closes and the
    /// copy holds bytes LOCAL does not, they are committed (re-chunked and made the LOCAL content)
    /// before this returns; the round cannot touch the copy in between.
    pub fn close_write(&self, ino: u64, wrote: bool, mtime_ns: Option<i64>) -> EngineResult<()> {
        let result = if self.contents.end_write(ino, wrote) {
            self.commit_written(ino, mtime_ns).map(drop)
        } else {
            Ok(())
        };
        self.remove_if_unlinked(ino)?;
        result
    }

    /// Re-chunks the copy of `ino` and makes it the LOCAL content (fsync, the last close, recovery).
    /// One commit per inode runs at a time. Returns the entry, or `None` if there is nothing to
    /// record (no copy, the node is gone, or a write landed while chunking: the copy stays dirty and
    /// a later commit records it).
    pub fn commit_written(
        &self,
        ino: u64,
        mtime_ns: Option<i64>,
    ) -> EngineResult<Option<LocalEntry>> {
        let Some((before, counter)) = self.contents.begin_commit(ino, &self.files)? else {
            return Ok(None);
        };
        let result = self.record_copy(ino, mtime_ns, before, &counter);
        let recorded = matches!(result, Ok((_, true)));
        self.contents.finish_commit(ino, before, recorded);
        self.remove_if_unlinked(ino)?;
        result.map(|(entry, _)| entry)
    }

    /// Chunks the copy and records it. Returns the entry and whether the copy is now recorded.
    fn record_copy(
        &self,
        ino: u64,
        mtime_ns: Option<i64>,
        before: u64,
        counter: &WriteCounter,
    ) -> EngineResult<(Option<LocalEntry>, bool)> {
        let manifest = match self.files.chunk(ino, |_, _| Ok(())) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((None, true)),
            Err(e) => return Err(e.into()),
        };
        self.config.faults.reach(FaultPoint::CommitChunked);
        if counter.load() != before {
            // Chunked while being written: the manifest may mix two states of the file.
            tracing::debug!(
                ino,
                "the copy changed while it was chunked; committing it later"
            );
            return Ok((None, false));
        }
        // The copy's own mtime: the kernel sets it on every write, and a utimens while the file was
        // open set it too (cp -p, rsync -a, tar x set times before or after writing).
        let now = self.clock.now_ns();
        let entry = self.mutate(|t| {
            let Some(entry) = t.local_by_ino(ino)? else {
                return Ok(None);
            };
            // Read inside the transaction: a utimens racing this commit (touch -d right after
            // close) sets the copy's time before its own transaction, so whichever of the two
            // transactions comes last records the time it set.
            let copy_times = self.files.times_ns(ino);
            let mtime = mtime_ns
                .or(copy_times.map(|(mtime, _)| mtime))
                .unwrap_or(now);
            // The change time is the copy's, not this commit's: a write sets both of the copy's
            // times to one instant, so a file written and closed reports ctime == mtime here and on
            // every other device (which has no change time of its own for it: git compares both).
            let ctime = copy_times
                .map_or(now, |(_, ctime)| ctime)
                .max(mtime.min(now));
            if entry.node.attrs.content == Some(manifest.hash)
                && entry.node.attrs.size == manifest.size
            {
                return Ok(Some(entry));
            }
            t.put_manifest(&manifest)?;
            let mut attrs = entry.node.attrs.clone();
            attrs.content = Some(manifest.hash);
            attrs.size = manifest.size;
            attrs.mtime_ns = mtime;
            t.local_touch_ctime(ino, ctime)?;
            t.local_set_attrs(ino, attrs).map(Some)
        })?;
        self.config.faults.reach(FaultPoint::CommitRecorded);
        if let Some(entry) = entry.as_ref().filter(|e| e.pinned) {
            self.pin_hold(
                entry.ino,
                Some(manifest.chunks.iter().map(|c| c.id).collect()),
            );
        }
        Ok((entry, true))
    }

    /// Removes the copy of an unlinked inode once nothing holds it any more.
    fn remove_if_unlinked(&self, ino: u64) -> EngineResult<()> {
        if self.contents.after_unlinked(ino) {
            // The removal that unlinked the node must be on disk before its copy goes.
            self.flush_relaxed()?;
            self.files.remove(ino)?;
        }
        Ok(())
    }

    /// The node of `ino` left LOCAL (unlink, rmdir, replaced by a rename): its copy goes now, or with
    /// the last writer.
    pub(crate) fn drop_local_copy(&self, ino: u64) -> EngineResult<()> {
        if self.contents.unlink(ino) {
            // The removal that unlinked the node must be on disk before its copy goes.
            self.flush_relaxed()?;
            self.files.remove(ino)?;
        }
        Ok(())
    }

    /// Opens `ino` for reading: its copy if it has one, else the chunks of its LOCAL content, which
    /// the handle keeps reading until it closes (a remote update moves the node to a new inode).
    pub fn open_read(&self, ino: u64) -> EngineResult<ReadOpen> {
        let keep_cache = self.contents.begin_read(ino)?;
        let lease = ReadLease {
            contents: self.contents.clone(),
            ino,
            copy_paths: self.files.copy_paths(ino),
        };
        let entry = self.getattr(ino)?.ok_or(LocalError::NotFound)?;
        match entry.node.kind {
            NodeKind::File => {}
            NodeKind::Directory => return Err(LocalError::IsDir.into()),
            NodeKind::Symlink => return Err(LocalError::Invalid("a symlink has no content").into()),
        }
        let source = match self.reader_copy(ino) {
            Some(file) => ReadSource::Copy(file),
            None => ReadSource::Chunks(self.manifest(&entry)?),
        };
        Ok(ReadOpen {
            entry,
            source,
            keep_cache,
            lease,
        })
    }

    /// The copy of `ino` opened for reading, if it has one that may be read now. A reader of the
    /// chunks switches to it when a local writer made one: it holds the same file, written since.
    pub fn reader_copy(&self, ino: u64) -> Option<File> {
        if !self.contents.copy_readable(ino) {
            return None;
        }
        File::open(self.files.path(ino)).ok()
    }

    /// How many commits of written files have ended (see [`Engine::newer_copy`]): read it before
    /// reading a LOCAL entry whose size and mtime may come from a copy.
    pub fn content_epoch(&self) -> u64 {
        self.contents.settled()
    }

    /// The copy of `ino` when it may hold bytes newer than LOCAL (a writer is open or a commit is
    /// due): its size and mtime are what the user just wrote. When this says `None`, an entry read
    /// before a commit that ended meanwhile is stale: compare [`Engine::content_epoch`] from before
    /// the entry was read with its value after this call.
    pub fn newer_copy(&self, ino: u64) -> Option<PathBuf> {
        self.contents
            .copy_is_newer(ino)
            .then(|| self.files.path(ino))
    }

    /// Commits the copies whose last commit was skipped or failed (called by each round).
    pub(crate) fn commit_dirty_copies(&self) {
        for ino in self.contents.dirty_idle() {
            if let Err(e) = self.commit_written(ino, None) {
                tracing::warn!(ino, "committing a written file failed again: {e}");
            }
        }
    }
}

impl From<super::ContentError> for EngineError {
    fn from(e: super::ContentError) -> Self {
        EngineError::Io(std::io::Error::other(e.to_string()))
    }
}

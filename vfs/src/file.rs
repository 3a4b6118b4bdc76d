//! Files: open, read, write, truncate, fsync, release.
//!
//! A handle reads either the materialized copy (once the file was written here) or the chunks of the
//! content as it was at open: a remote change while the file is open does not alter what this handle
//! reads until it is closed. Chunks are held in the cache while a handle reads them, fetched only for
//! the ranges read, with read-ahead for sequential access.
//!
//! Writing materializes the file first (copy-on-write; `O_TRUNC` and truncation to zero download
//! nothing). Writes go to the copy; the last writing handle's release hands the new content to the
//! engine, which uploads it after a short debounce. `fsync` makes the bytes durable and records them.

use std::fs::File;
use std::os::unix::fs::FileExt;

use bvfs_engine::EngineError;
use bvfs_engine::cache::HoldGuard;
use bvfs_engine::chunking::Manifest;
use bvfs_engine::content::{ReadLease, ReadSource, WriteCounter};
use bvfs_engine::fetch::{FetchError, ReadAhead};
use bvfs_engine::model::NodeKind;
use bvfs_engine::state::local::LocalError;

use crate::{Attr, Errno, Handle, Vfs, VfsResult};

enum Source {
    /// The materialized copy.
    Copy(File),
    /// The chunks of the content at open time.
    Chunks {
        name: String,
        manifest: Manifest,
        offsets: Vec<u64>,
        readahead: ReadAhead,
        mtime_ns: i64,
        _hold: HoldGuard,
    },
}

pub(crate) struct FileHandle {
    ino: u64,
    source: Source,
    /// Set for a writing handle: counts its writes for the content owner.
    writer: Option<WriteCounter>,
    wrote: bool,
    /// Set for a reading handle: registered with the content owner until the handle goes.
    _reader: Option<ReadLease>,
}

/// How a file is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenMode {
    pub write: bool,
    pub truncate: bool,
}

impl OpenMode {
    /// From `open(2)` flags.
    pub fn from_flags(flags: i32) -> Self {
        let acc = flags & libc::O_ACCMODE;
        Self {
            write: acc == libc::O_WRONLY || acc == libc::O_RDWR,
            truncate: flags & libc::O_TRUNC != 0,
        }
    }
}

impl Vfs {
    /// Logs why content could not be read (naming the file) and maps it to an errno.
    fn content_error(&self, ino: u64, error: bvfs_engine::EngineError) -> Errno {
        let name = self.entry(ino).map(|e| e.node.name).unwrap_or_default();
        match &error {
            bvfs_engine::EngineError::Fetch(FetchError::Offline(why)) => {
                tracing::warn!(file = %name, "cannot read: the server is unreachable and these bytes are not cached ({why})");
            }
            other => tracing::warn!(file = %name, "cannot read: {other}"),
        }
        Errno::from(error)
    }

    /// `open`: returns the handle and whether the kernel may keep its cached pages of the file (not
    /// after the engine changed its content since the last open).
    pub fn open(&self, ino: u64, mode: OpenMode) -> VfsResult<(u64, bool)> {
        let stale = |e: EngineError| match e {
            // The inode left LOCAL (deleted, or a new version moved to a new inode): the kernel
            // looks the name up again on ESTALE.
            EngineError::Local(LocalError::NotFound) => Errno::ESTALE,
            EngineError::Local(LocalError::IsDir) => Errno::EISDIR,
            EngineError::Local(LocalError::Invalid(_)) => Errno::EINVAL,
            other => self.content_error(ino, other),
        };
        // A remote update of this inode may still be on its way to the kernel's caches.
        self.engine.await_kernel_invalidation(ino);
        let (handle, keep_cache) = if mode.write {
            self.writable()?;
            if self.entry(ino)?.node.kind != NodeKind::File {
                return Err(Errno::EISDIR);
            }
            let open = self
                .engine
                .open_write_blocking(&self.runtime, ino, mode.truncate)
                .map_err(stale)?;
            let handle = FileHandle {
                ino,
                source: Source::Copy(open.file),
                writer: Some(open.counter),
                wrote: mode.truncate,
                _reader: None,
            };
            (handle, open.keep_cache)
        } else {
            let open = self.engine.open_read(ino).map_err(stale)?;
            let source = match open.source {
                ReadSource::Copy(file) => Source::Copy(file),
                ReadSource::Chunks(manifest) => {
                    let hold = self
                        .engine
                        .cache()
                        .hold_guard(manifest.chunks.iter().map(|c| c.id).collect());
                    Source::Chunks {
                        name: open.entry.node.name.clone(),
                        offsets: manifest.offsets(),
                        manifest,
                        readahead: ReadAhead::default(),
                        mtime_ns: open.entry.node.attrs.mtime_ns,
                        _hold: hold,
                    }
                }
            };
            let handle = FileHandle {
                ino,
                source,
                writer: None,
                wrote: false,
                _reader: Some(open.lease),
            };
            (handle, open.keep_cache)
        };
        Ok((self.insert_handle(Handle::File(handle)), keep_cache))
    }

    /// `create`: a new empty file with permission bits `mode` (the caller's umask already applied),
    /// owned by `caller`, opened for writing.
    pub fn create(
        &self,
        parent: u64,
        name: &str,
        mode: u32,
        caller: crate::Caller,
    ) -> VfsResult<(Attr, u64)> {
        self.writable()?;
        let new = self.new_node(parent, NodeKind::File, mode, caller, None)?;
        let read_at = self.engine.content_epoch();
        let entry = self
            .engine
            .create_with(parent, name, NodeKind::File, new)
            .map_err(Errno::from)?;
        let (fh, _) = self.open(
            entry.ino,
            OpenMode {
                write: true,
                truncate: false,
            },
        )?;
        Ok((self.attr_of(&entry, read_at), fh))
    }

    /// `read`.
    pub fn read(&self, fh: u64, offset: u64, size: u32) -> VfsResult<Vec<u8>> {
        self.read_by(fh, offset, size, 0)
    }

    /// `read` by process `pid` (0: unknown): a process the hydration guard names gets `EACCES`
    /// for bytes that are not on this device, at once.
    pub fn read_by(&self, fh: u64, offset: u64, size: u32, pid: u32) -> VfsResult<Vec<u8>> {
        let handle = self.handle(fh)?;
        let mut guard = handle.lock();
        let Handle::File(file) = &mut *guard else {
            return Err(Errno::EISDIR);
        };
        // A copy made by a local writer since this handle opened holds newer bytes: read those. (A
        // remote version never arrives under this inode while the handle is open.)
        if matches!(file.source, Source::Chunks { .. })
            && let Some(copy) = self.engine.reader_copy(file.ino)
        {
            file.source = Source::Copy(copy);
        }
        if let Source::Chunks {
            name,
            manifest,
            offsets,
            ..
        } = &file.source
            && let Some(guard) = self.guard.get()
            && let Some(process) = guard.guarded(pid)
        {
            let wanted = bvfs_engine::chunking::Manifest::chunks_covering(
                offsets,
                manifest.size,
                offset,
                u64::from(size),
            );
            let cache = self.engine.cache();
            if !manifest.chunks[wanted]
                .iter()
                .all(|c| cache.contains(&c.id))
            {
                tracing::info!(
                    file = %name,
                    process = %process,
                    pid,
                    "hydration guard: refused a read of bytes that are not on this device"
                );
                return Err(Errno::EACCES);
            }
        }
        match &mut file.source {
            Source::Copy(f) => read_at(f, offset, size),
            Source::Chunks { name, manifest, offsets, readahead, .. } => self
                .engine
                .fetcher()
                .read_blocking(&self.runtime, manifest, offsets, offset, size, Some(readahead))
                .map_err(|e| {
                    if matches!(e, FetchError::Offline(_)) {
                        tracing::warn!(file = %name, "cannot read: the server is unreachable and these bytes are not cached");
                    } else {
                        tracing::warn!(file = %name, "cannot read: {e}");
                    }
                    Errno(e.errno())
                }),
        }
    }

    /// Runs `change` on the copy behind a writing handle, counted as a write (so a commit chunking
    /// the copy meanwhile records nothing) and marking the handle as having written.
    fn change_copy<T>(&self, fh: u64, change: impl FnOnce(&File) -> VfsResult<T>) -> VfsResult<T> {
        let handle = self.handle(fh)?;
        let mut guard = handle.lock();
        let Handle::File(file) = &mut *guard else {
            return Err(Errno::EISDIR);
        };
        let (Source::Copy(f), Some(counter)) = (&file.source, &file.writer) else {
            return Err(Errno::EBADF);
        };
        counter.wrote();
        let value = change(f)?;
        file.wrote = true;
        Ok(value)
    }

    /// `write`.
    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> VfsResult<u32> {
        self.change_copy(fh, |f| {
            f.write_all_at(data, offset)?;
            Ok(data.len() as u32)
        })
    }

    /// `fallocate` on a file open for writing: mode 0 (reserve and extend) and
    /// `FALLOC_FL_KEEP_SIZE` (reserve only) go to the file's local copy, as ext4 does them; other
    /// modes (punching or collapsing holes, zeroing ranges) answer `EOPNOTSUPP`.
    pub fn fallocate(&self, fh: u64, offset: u64, length: u64, mode: i32) -> VfsResult<()> {
        if mode & !libc::FALLOC_FL_KEEP_SIZE != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        let (Ok(offset), Ok(length)) = (i64::try_from(offset), i64::try_from(length)) else {
            return Err(Errno(libc::EFBIG));
        };
        self.change_copy(fh, |f| {
            // SAFETY: `f` is an open file; fallocate only reads its arguments.
            let done = unsafe {
                libc::fallocate(std::os::fd::AsRawFd::as_raw_fd(f), mode, offset, length)
            };
            match done {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error().into()),
            }
        })
    }

    /// `fsync`: the written bytes are durable and recorded as the file's content when this returns,
    /// and so is every change made through the mount before it (names, metadata: the mount's
    /// changes are atomic at once and durable at fsync, fsyncdir or after the next round).
    pub fn fsync(&self, fh: u64) -> VfsResult<()> {
        let handle = self.handle(fh)?;
        let guard = handle.lock();
        let Handle::File(file) = &*guard else {
            return self.engine.make_durable().map_err(Errno::from);
        };
        if let Source::Copy(f) = &file.source
            && file.writer.is_some()
        {
            f.sync_all()?;
            if file.wrote {
                self.engine
                    .commit_written(file.ino, None)
                    .map_err(Errno::from)?;
            }
        }
        self.engine.make_durable().map_err(Errno::from)
    }

    /// `fsyncdir`: every change made through the mount so far is durable when this returns.
    pub fn fsyncdir(&self) -> VfsResult<()> {
        self.engine.make_durable().map_err(Errno::from)
    }

    /// `release`: the last writing handle commits what was written.
    pub fn release(&self, fh: u64) -> VfsResult<()> {
        let handle = self.take_handle(fh)?;
        let guard = handle.lock();
        let Handle::File(file) = &*guard else {
            return Ok(());
        };
        if file.writer.is_some() {
            self.engine
                .close_write(file.ino, file.wrote, None)
                .map_err(Errno::from)?;
        }
        Ok(())
    }

    /// Releases every handle still open, returning how many. Once the mount has ended the kernel
    /// sends no more `release`s (an unmount can even drop ones it had queued), so content written
    /// through handles still open is handed to the engine here, before the last sync.
    pub fn release_all(&self) -> usize {
        let open: Vec<u64> = self.handles.lock().keys().copied().collect();
        let mut released = 0;
        for fh in open {
            match self.release(fh) {
                Ok(()) => released += 1,
                Err(e) => tracing::warn!(fh, errno = e.0, "cannot release a handle left open"),
            }
        }
        released
    }

    /// Truncates (or extends) `ino` to `size`. Truncating to zero downloads nothing.
    pub(crate) fn truncate(&self, ino: u64, size: u64) -> VfsResult<()> {
        let entry = match self.entry(ino) {
            Err(Errno::ENOENT) => return self.truncate_orphan(ino, size),
            other => other?,
        };
        if entry.node.kind != NodeKind::File {
            return Err(Errno::EISDIR);
        }
        let open = self
            .engine
            .open_write_blocking(&self.runtime, ino, size == 0)
            .map_err(|e| self.content_error(ino, e))?;
        open.counter.wrote();
        let result = open.file.set_len(size).map_err(Errno::from);
        self.engine
            .close_write(ino, true, None)
            .map_err(Errno::from)?;
        result
    }
}

impl Vfs {
    /// The attributes of an inode that was unlinked while open: POSIX keeps it usable through its
    /// descriptors (`fstat`, `ftruncate`, reads and writes) until the last one closes.
    pub(crate) fn orphan_attr(&self, ino: u64) -> Option<Attr> {
        let handles: Vec<_> = self.handles.lock().values().cloned().collect();
        for handle in handles {
            let guard = handle.lock();
            let Handle::File(file) = &*guard else {
                continue;
            };
            if file.ino != ino {
                continue;
            }
            let (size, mtime) = match &file.source {
                Source::Copy(f) => {
                    let meta = f.metadata().ok()?;
                    (meta.len(), meta.modified().unwrap_or(std::time::UNIX_EPOCH))
                }
                Source::Chunks {
                    manifest, mtime_ns, ..
                } => (manifest.size, crate::attr::time_of(*mtime_ns)),
            };
            return Some(Attr {
                ino,
                size,
                blocks: size.div_ceil(512),
                atime: mtime,
                mtime,
                ctime: mtime,
                kind: crate::FileKind::File,
                perm: 0o644,
                nlink: 0,
                uid: self.options.uid,
                gid: self.options.gid,
                rdev: 0,
            });
        }
        None
    }

    /// Truncates an unlinked-but-open inode through one of its writable handles.
    pub(crate) fn truncate_orphan(&self, ino: u64, size: u64) -> VfsResult<()> {
        let handles: Vec<_> = self.handles.lock().values().cloned().collect();
        for handle in handles {
            let guard = handle.lock();
            if let Handle::File(FileHandle {
                ino: i,
                source: Source::Copy(f),
                writer: Some(counter),
                ..
            }) = &*guard
                && *i == ino
            {
                counter.wrote();
                return Ok(f.set_len(size)?);
            }
        }
        Err(Errno::ENOENT)
    }
}

pub(crate) fn read_at(file: &File, offset: u64, size: u32) -> VfsResult<Vec<u8>> {
    let mut buf = vec![0; size as usize];
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64)? {
            0 => break,
            n => filled += n,
        }
    }
    buf.truncate(filled);
    Ok(buf)
}

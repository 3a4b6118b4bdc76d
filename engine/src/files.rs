//! Materialized files: the writable local copies of files written through the mount, one per inode
//! under `DIR/<ino>`.
//!
//! The first write to a file copies its content here (copy-on-write from its chunks); reads and writes
//! then go to this file until the engine has uploaded it. A copy is always built in a temporary file,
//! fsynced and renamed into place (ADR-0027), so a crash never leaves a partial copy under the real
//! name. After a crash the engine re-chunks every copy before trusting it (D5: hashing is truth).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::chunking::{ChunkId, ChunkParams, Manifest, chunk_reader};

/// The directory of materialized files.
pub struct LocalFiles {
    dir: PathBuf,
    tmp_counter: AtomicU64,
}

impl LocalFiles {
    /// Opens the directory, creating it, and removes temporary files a crash left behind.
    pub fn open(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "tmp") {
                fs::remove_file(&path)?;
            }
        }
        Ok(Self {
            dir: dir.to_owned(),
            tmp_counter: AtomicU64::new(0),
        })
    }

    /// Where the copy of `ino` lives (whether or not it exists).
    pub fn path(&self, ino: u64) -> PathBuf {
        self.dir.join(ino.to_string())
    }

    /// The files that make up `ino`'s copy: the bytes and the owner record (remove them with
    /// [`remove_copy_files`]).
    pub(crate) fn copy_paths(&self, ino: u64) -> [PathBuf; 2] {
        [self.path(ino), self.owner_path(ino)]
    }

    /// Where the owner record of `ino`'s copy lives (see [`LocalFiles::set_owner`]).
    pub(crate) fn owner_path(&self, ino: u64) -> PathBuf {
        self.dir.join(format!("{ino}.owner"))
    }

    /// The copy of `ino`'s modification and status-change times (ns since the epoch), from one
    /// `stat`, if it has a copy. The kernel sets both to one instant on every write; a utimens or
    /// chmod of the copy moves the change time too.
    pub fn times_ns(&self, ino: u64) -> Option<(i64, i64)> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(self.path(ino)).ok()?;
        Some((
            meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
        ))
    }

    pub fn exists(&self, ino: u64) -> bool {
        self.path(ino).exists()
    }

    /// Every inode with a copy on disk.
    pub fn list(&self) -> io::Result<Vec<u64>> {
        let mut inos = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            if let Some(ino) = entry?.file_name().to_str().and_then(|n| n.parse().ok()) {
                inos.push(ino);
            }
        }
        Ok(inos)
    }

    /// Atomically creates the copy of `ino`, filling it with `fill` (temp file, fsync, rename).
    pub fn create(
        &self,
        ino: u64,
        fill: impl FnOnce(&mut File) -> io::Result<()>,
    ) -> io::Result<PathBuf> {
        let mut pending = self.begin(ino)?;
        fill(pending.file())?;
        pending.commit()
    }

    /// Creates an empty copy of a new file (never over an existing one), dated `mtime_ns` like the
    /// node (a copy's mtime is what the file shows while it is open, and what its commit records).
    /// No fsync: if a crash loses it, the file's LOCAL content is the empty content anyway, which
    /// reads the same without a copy.
    pub(crate) fn create_empty(&self, ino: u64, mtime_ns: i64) -> io::Result<PathBuf> {
        let path = self.path(ino);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        let when = if mtime_ns >= 0 {
            std::time::UNIX_EPOCH + std::time::Duration::from_nanos(mtime_ns as u64)
        } else {
            std::time::UNIX_EPOCH - std::time::Duration::from_nanos(mtime_ns.unsigned_abs())
        };
        file.set_modified(when)?;
        Ok(path)
    }

    /// Starts building the copy of `ino` in a temporary file; [`PendingCopy::commit`] puts it in place.
    /// Dropped without commit, the temporary file is removed.
    pub(crate) fn begin(&self, ino: u64) -> io::Result<PendingCopy> {
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let tmp = self.dir.join(format!("{ino}.{n}.tmp"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        Ok(PendingCopy {
            file,
            tmp,
            path: self.path(ino),
            dir: self.dir.clone(),
            done: false,
        })
    }

    /// Removes the copy of `ino`, if any. An open descriptor keeps reading its old bytes. Durable
    /// after [`LocalFiles::sync_dir`].
    pub(crate) fn remove(&self, ino: u64) -> io::Result<()> {
        remove_copy_files(&self.copy_paths(ino))
    }

    /// Gives the copy of `from` to `to` (a conflicted copy takes the local bytes). Never replaces a
    /// copy `to` already has.
    pub(crate) fn rename(&self, from: u64, to: u64) -> io::Result<()> {
        rename_no_replace(&self.path(from), &self.path(to))?;
        match fs::rename(self.owner_path(from), self.owner_path(to)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        File::open(&self.dir)?.sync_all()
    }

    /// Gives a copy of `from`'s bytes to `to`, then removes `from`: descriptors open on `from` keep
    /// reading what they read, whatever is written to `to` later.
    pub(crate) fn copy_then_remove(&self, from: u64, to: u64) -> io::Result<()> {
        let mut source = File::open(self.path(from))?;
        let mut pending = self.begin(to)?;
        io::copy(&mut source, pending.file())?;
        pending.commit()?;
        match fs::copy(self.owner_path(from), self.owner_path(to)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        self.remove(from)
    }

    /// fsyncs the directory: removals and renames done so far are durable.
    pub(crate) fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }

    /// Chunks the copy of `ino`, calling `sink` with each chunk.
    pub fn chunk(
        &self,
        ino: u64,
        sink: impl FnMut(&crate::chunking::ChunkRef, &[u8]) -> io::Result<()>,
    ) -> io::Result<Manifest> {
        let file = File::open(self.path(ino))?;
        chunk_reader(file, ChunkParams::default(), sink)
    }

    /// Reads the bytes `[offset, offset + len)` of the copy of `ino` and returns them only if they are
    /// still the chunk `expected` (the file may have been written since it was chunked).
    pub fn read_chunk(
        &self,
        ino: u64,
        offset: u64,
        len: u32,
        expected: ChunkId,
    ) -> io::Result<Option<Vec<u8>>> {
        let mut file = match File::open(self.path(ino)) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        file.seek(SeekFrom::Start(offset))?;
        let mut data = vec![0; len as usize];
        let mut filled = 0;
        while filled < data.len() {
            match file.read(&mut data[filled..])? {
                0 => return Ok(None),
                n => filled += n,
            }
        }
        Ok((ChunkId::of(&data) == expected).then_some(data))
    }
}

/// A copy being built; see [`LocalFiles::begin`].
pub struct PendingCopy {
    file: File,
    tmp: PathBuf,
    path: PathBuf,
    dir: PathBuf,
    done: bool,
}

impl PendingCopy {
    pub fn file(&mut self) -> &mut File {
        &mut self.file
    }

    /// fsyncs the bytes, renames the copy into place (never over another copy: one inode has one
    /// copy, built once) and fsyncs the directory.
    pub fn commit(mut self) -> io::Result<PathBuf> {
        self.file.sync_all()?;
        rename_no_replace(&self.tmp, &self.path)?;
        File::open(&self.dir)?.sync_all()?;
        self.done = true;
        Ok(self.path.clone())
    }
}

impl Drop for PendingCopy {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// `rename(2)` that fails with `EEXIST` instead of replacing `to`.
#[cfg(target_os = "linux")]
fn rename_no_replace(from: &Path, to: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let cstr = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path holds a NUL byte"))
    };
    let (from, to) = (cstr(from)?, cstr(to)?);
    // SAFETY: both are valid NUL-terminated paths; AT_FDCWD makes them relative to the cwd.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `rename(2)` that fails with `EEXIST` instead of replacing `to` (racy where the OS has no
/// no-replace rename; the content owner serializes every change of one inode's copy anyway).
#[cfg(not(target_os = "linux"))]
fn rename_no_replace(from: &Path, to: &Path) -> io::Result<()> {
    if to.exists() {
        return Err(io::Error::from(io::ErrorKind::AlreadyExists));
    }
    fs::rename(from, to)
}

/// Removes the files of a copy ([`LocalFiles::copy_paths`]); those already gone are fine.
pub(crate) fn remove_copy_files(paths: &[PathBuf]) -> io::Result<()> {
    for path in paths {
        match fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

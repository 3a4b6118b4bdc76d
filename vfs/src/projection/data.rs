//! File data for ProjFS's `GetFileData(path, offset, length)`.
//!
//! ProjFS has no open or close for the provider's reads: it asks for a range of a placeholder and
//! expects exactly those bytes. [`FileData`] resolves the path once and reads exact ranges of the
//! content as it was then: from the materialized copy if this device wrote the file, else from the
//! chunks, fetching only the chunks a range touches (from the cache, else the server), with no
//! read-ahead (ProjFS says precisely what it wants). Its read lease keeps a copy alive while it
//! reads, as an open handle does.
//!
//! [`DataStream`] hands a long range out as a reader, one piece of [`PIECE`] at a time, so that a
//! whole-file request (ProjFS hydrates whole files) never holds the whole file in memory.

use std::fs::File;
use std::io::{self, Read};
use std::sync::Arc;

use bvfs_engine::EngineError;
use bvfs_engine::chunking::Manifest;
use bvfs_engine::content::{ReadLease, ReadSource};
use bvfs_engine::state::local::LocalError;

use super::{ProjectedPath, Projection};
use crate::{Errno, Vfs, VfsResult};

/// The size of the pieces [`DataStream`] reads.
pub const PIECE: u32 = 1 << 20;

/// The content of one file, open for exact range reads.
pub struct FileData {
    vfs: Arc<Vfs>,
    name: String,
    size: u64,
    source: Source,
    _lease: ReadLease,
}

enum Source {
    Copy(File),
    Chunks {
        manifest: Manifest,
        offsets: Vec<u64>,
    },
}

impl Projection {
    /// The content of the file at `path`, for `GetFileData`.
    pub fn file_data(&self, path: &str) -> VfsResult<FileData> {
        let entry = self.resolve(&ProjectedPath::parse(path)?)?;
        let open = self
            .vfs
            .engine()
            .open_read(entry.ino)
            .map_err(|e| match e {
                EngineError::Local(LocalError::Invalid(_)) => Errno::EINVAL,
                other => Errno::from(other),
            })?;
        let (source, size) = match open.source {
            ReadSource::Copy(file) => {
                let size = file.metadata()?.len();
                (Source::Copy(file), size)
            }
            ReadSource::Chunks(manifest) => {
                let size = manifest.size;
                let offsets = manifest.offsets();
                (Source::Chunks { manifest, offsets }, size)
            }
        };
        Ok(FileData {
            vfs: self.vfs.clone(),
            name: open.entry.node.name,
            size,
            source,
            _lease: open.lease,
        })
    }

    /// `GetFileData`: `length` bytes of the file at `path` from `offset` (fewer at its end).
    pub fn read(&self, path: &str, offset: u64, length: u32) -> VfsResult<Vec<u8>> {
        self.file_data(path)?.read(offset, length)
    }
}

impl FileData {
    /// The size of the content this reads.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// `length` bytes from `offset` (fewer at the end of the content).
    pub fn read(&self, offset: u64, length: u32) -> VfsResult<Vec<u8>> {
        match &self.source {
            Source::Copy(file) => crate::file::read_at(file, offset, length),
            Source::Chunks { manifest, offsets } => self
                .vfs
                .engine()
                .fetcher()
                .read_blocking(&self.vfs.runtime, manifest, offsets, offset, length, None)
                .map_err(|e| {
                    tracing::warn!(file = %self.name, "cannot read: {e}");
                    Errno(e.errno())
                }),
        }
    }

    /// A reader of `[offset, offset + length)`, read piece by piece. It ends early at the end of
    /// the content.
    pub fn stream(self, offset: u64, length: u64) -> DataStream {
        DataStream {
            data: self,
            next: offset,
            end: offset.saturating_add(length),
            piece: Vec::new(),
            taken: 0,
        }
    }
}

/// Why a [`DataStream`] read failed: the errno inside its `io::Error`, for an adapter to map to
/// its platform's codes (an errno is not a Windows error code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadFailed(pub Errno);

impl std::fmt::Display for ReadFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot read the file's data (errno {})", self.0.0)
    }
}

impl std::error::Error for ReadFailed {}

/// A range of a file as a reader ([`FileData::stream`]).
pub struct DataStream {
    data: FileData,
    /// Where the next piece starts.
    next: u64,
    end: u64,
    piece: Vec<u8>,
    /// How much of `piece` was handed out.
    taken: usize,
}

impl Read for DataStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.taken == self.piece.len() {
            let want = (self.end.saturating_sub(self.next)).min(u64::from(PIECE)) as u32;
            if want == 0 {
                return Ok(0);
            }
            self.piece = self
                .data
                .read(self.next, want)
                .map_err(|e| io::Error::other(ReadFailed(e)))?;
            self.taken = 0;
            self.next += self.piece.len() as u64;
            if self.piece.is_empty() {
                // The content ends before the range does.
                self.end = self.next;
                return Ok(0);
            }
        }
        let n = buf.len().min(self.piece.len() - self.taken);
        buf[..n].copy_from_slice(&self.piece[self.taken..self.taken + n]);
        self.taken += n;
        Ok(n)
    }
}

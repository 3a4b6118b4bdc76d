//! File attributes as the kernel sees them, made from LOCAL entries.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bvfs_engine::model::NodeKind;
use bvfs_engine::state::local::LocalEntry;

use crate::{Errno, Vfs, VfsResult};

/// What a node is, for `stat` and `readdir`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    File,
    Directory,
    Symlink,
}

/// The attributes of one inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub size: u64,
    pub blocks: u64,
    pub mtime: SystemTime,
    pub kind: FileKind,
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
}

pub(crate) fn kind_of(kind: NodeKind) -> FileKind {
    match kind {
        NodeKind::File => FileKind::File,
        NodeKind::Directory => FileKind::Directory,
        NodeKind::Symlink => FileKind::Symlink,
    }
}

pub(crate) fn time_of(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

impl Vfs {
    /// The attributes of an entry. A file's size is that of its materialized copy when one is open for
    /// writing (the bytes the user just wrote), else the LOCAL size.
    pub(crate) fn attr_of(&self, entry: &LocalEntry) -> Attr {
        let kind = kind_of(entry.node.kind);
        let mut size = entry.node.attrs.size;
        let mut mtime = time_of(entry.node.attrs.mtime_ns);
        if kind == FileKind::File
            && let Some(path) = self.engine.newer_copy(entry.ino)
            && let Ok(meta) = std::fs::metadata(path)
        {
            size = meta.len();
            mtime = meta.modified().unwrap_or(mtime).max(mtime);
        }
        let perm = match kind {
            FileKind::Directory => 0o755,
            FileKind::Symlink => 0o777,
            FileKind::File if entry.node.attrs.executable => 0o755,
            FileKind::File => 0o644,
        };
        Attr {
            ino: entry.ino,
            size,
            blocks: size.div_ceil(512),
            mtime,
            kind,
            perm,
            nlink: if kind == FileKind::Directory { 2 } else { 1 },
            uid: self.options.uid,
            gid: self.options.gid,
        }
    }

    pub(crate) fn entry(&self, ino: u64) -> VfsResult<LocalEntry> {
        self.engine
            .getattr(ino)
            .map_err(Errno::from)?
            .ok_or(Errno::ENOENT)
    }

    /// `lookup`: the entry `name` in `parent`.
    pub fn lookup(&self, parent: u64, name: &str) -> VfsResult<Attr> {
        let entry = self
            .engine
            .lookup(parent, name)
            .map_err(Errno::from)?
            .ok_or(Errno::ENOENT)?;
        Ok(self.attr_of(&entry))
    }

    /// `getattr`, also for an inode unlinked while open.
    pub fn getattr(&self, ino: u64) -> VfsResult<Attr> {
        match self.entry(ino) {
            Ok(entry) => Ok(self.attr_of(&entry)),
            Err(Errno::ENOENT) => self.orphan_attr(ino).ok_or(Errno::ENOENT),
            Err(e) => Err(e),
        }
    }

    /// `readlink`.
    pub fn readlink(&self, ino: u64) -> VfsResult<String> {
        let entry = self.entry(ino)?;
        entry.node.attrs.symlink_target.ok_or(Errno::EINVAL)
    }

    /// `setattr`: size (truncate), the executable bit (from the mode), mtime. Ownership and other
    /// mode bits are not kept by BitVault and are ignored, as on other sync folders.
    pub fn setattr(
        &self,
        ino: u64,
        size: Option<u64>,
        mode: Option<u32>,
        mtime_ns: Option<i64>,
    ) -> VfsResult<Attr> {
        if size.is_some() || mode.is_some() || mtime_ns.is_some() {
            self.writable()?;
        }
        if let Some(size) = size {
            self.truncate(ino, size)?;
        }
        let executable = mode.map(|m| m & 0o111 != 0);
        if (executable.is_some() || mtime_ns.is_some()) && self.entry(ino).is_ok() {
            self.engine
                .set_attrs(ino, executable, mtime_ns)
                .map_err(Errno::from)?;
            if let Some(ns) = mtime_ns
                && let Some(path) = self.engine.newer_copy(ino)
                && let Ok(file) = std::fs::File::options().write(true).open(path)
            {
                let _ = file.set_modified(time_of(ns));
            }
        }
        self.getattr(ino)
    }
}

//! File attributes as the kernel sees them, made from LOCAL entries.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bvfs_engine::model::NodeKind;
use bvfs_engine::state::local::LocalEntry;
use bvfs_engine::state::specials::{Special, SpecialKind};

use crate::{Errno, Vfs, VfsResult};

/// What a node is, for `stat` and `readdir`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    File,
    Directory,
    Symlink,
    /// This device's special files (never synced).
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

/// The attributes of one inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub size: u64,
    pub blocks: u64,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
    pub kind: FileKind,
    /// Permission bits, setuid/setgid/sticky included (`st_mode & 07777`).
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    /// The device number of a device special file.
    pub rdev: u32,
}

/// A `setattr` request: what to change (chmod, chown, truncate, utimens); `None` stays.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SetAttr {
    pub size: Option<u64>,
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub atime_ns: Option<i64>,
    pub mtime_ns: Option<i64>,
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
    /// The attributes of an entry. A file's size and mtime are those of its materialized copy when
    /// one may hold newer bytes (the ones the user just wrote, or a time just set), else LOCAL's.
    /// Ownership, access and change times, and a directory's mtime are this device's own.
    ///
    /// `read_at` is [`bvfs_engine::Engine::content_epoch`] from before `entry` was read: a commit
    /// of written bytes that ended after the read (the file's last close, on another FUSE thread)
    /// makes the entry's size stale while its copy no longer counts as newer, so the entry is read
    /// again. Answering the stale size made the kernel cache it: `chmod` right after `close` showed
    /// an empty file (git's objects read back empty after a clone).
    pub(crate) fn attr_of(&self, entry: &LocalEntry, read_at: u64) -> Attr {
        let kind = kind_of(entry.node.kind);
        let own = &entry.own;
        let mut size = entry.node.attrs.size;
        let mut mtime = match (kind, own.dir_mtime_ns) {
            (FileKind::Directory, Some(ns)) => time_of(ns),
            _ => time_of(entry.node.attrs.mtime_ns),
        };
        if kind == FileKind::File {
            match self.engine.newer_copy(entry.ino) {
                Some(path) => {
                    if let Ok(meta) = std::fs::metadata(path) {
                        size = meta.len();
                        mtime = meta.modified().unwrap_or(mtime);
                    }
                }
                None if self.engine.content_epoch() != read_at => {
                    if let Ok(Some(fresh)) = self.engine.getattr(entry.ino) {
                        size = fresh.node.attrs.size;
                        mtime = time_of(fresh.node.attrs.mtime_ns);
                    }
                }
                None => {}
            }
        }
        let ctime = own.ctime_ns.map_or(mtime, time_of);
        Attr {
            ino: entry.ino,
            size,
            blocks: size.div_ceil(512),
            atime: own.atime_ns.map_or(mtime, time_of),
            mtime,
            // A write moves the mtime past the recorded change time: so does the change time.
            ctime: ctime.max(mtime.min(SystemTime::now())),
            kind,
            perm: match kind {
                FileKind::Symlink => 0o777,
                _ => (entry.node.attrs.mode & 0o7777) as u16,
            },
            nlink: if kind == FileKind::Directory { 2 } else { 1 },
            uid: own.uid.unwrap_or(self.options.uid),
            gid: own.gid.unwrap_or(self.options.gid),
            rdev: 0,
        }
    }

    /// The attributes of one of this device's special files.
    pub(crate) fn special_attr(&self, special: &Special) -> Attr {
        Attr {
            ino: special.ino,
            size: 0,
            blocks: 0,
            atime: time_of(special.atime_ns),
            mtime: time_of(special.mtime_ns),
            ctime: time_of(special.ctime_ns),
            kind: match special.kind {
                SpecialKind::Fifo => FileKind::Fifo,
                SpecialKind::Socket => FileKind::Socket,
                SpecialKind::CharDevice => FileKind::CharDevice,
                SpecialKind::BlockDevice => FileKind::BlockDevice,
            },
            perm: (special.mode & 0o7777) as u16,
            nlink: 1,
            uid: special.uid.unwrap_or(self.options.uid),
            gid: special.gid.unwrap_or(self.options.gid),
            rdev: special.rdev,
        }
    }

    pub(crate) fn entry(&self, ino: u64) -> VfsResult<LocalEntry> {
        self.engine
            .getattr(ino)
            .map_err(Errno::from)?
            .ok_or(Errno::ENOENT)
    }

    /// `lookup`: the entry `name` in `parent` (a synced node, or one of this device's special
    /// files).
    pub fn lookup(&self, parent: u64, name: &str) -> VfsResult<Attr> {
        let read_at = self.engine.content_epoch();
        if let Some(entry) = self.engine.lookup(parent, name).map_err(Errno::from)? {
            return Ok(self.attr_of(&entry, read_at));
        }
        let special = self
            .engine
            .special_lookup(parent, name)
            .map_err(Errno::from)?
            .ok_or(Errno::ENOENT)?;
        Ok(self.special_attr(&special))
    }

    /// `getattr`, also for special files and an inode unlinked while open.
    pub fn getattr(&self, ino: u64) -> VfsResult<Attr> {
        let read_at = self.engine.content_epoch();
        match self.entry(ino) {
            Ok(entry) => Ok(self.attr_of(&entry, read_at)),
            Err(Errno::ENOENT) => {
                if let Some(special) = self.engine.special(ino).map_err(Errno::from)? {
                    return Ok(self.special_attr(&special));
                }
                self.orphan_attr(ino).ok_or(Errno::ENOENT)
            }
            Err(e) => Err(e),
        }
    }

    /// `readlink`.
    pub fn readlink(&self, ino: u64) -> VfsResult<String> {
        let entry = self.entry(ino)?;
        entry.node.attrs.symlink_target.ok_or(Errno::EINVAL)
    }

    /// `setattr`: truncate, chmod (every permission bit; they sync), chown (kept on this device:
    /// user ids mean nothing on another machine), utimens (a file's mtime syncs, to the nanosecond;
    /// the access time and a directory's mtime stay here). The kernel checks who may do what
    /// (`default_permissions`) and clears setuid/setgid where POSIX says before it asks.
    pub fn setattr(&self, ino: u64, change: SetAttr) -> VfsResult<Attr> {
        if change != SetAttr::default() {
            self.writable()?;
        }
        let meta = bvfs_engine::api::MetaChange {
            mode: change.mode,
            uid: change.uid,
            gid: change.gid,
            atime_ns: change.atime_ns,
            mtime_ns: change.mtime_ns,
        };
        let only_size = meta == bvfs_engine::api::MetaChange::default();
        // Whether `ino` has an entry (not a special file, nor a file unlinked while open).
        let has_entry = self.engine.getattr(ino).map_err(Errno::from)?.is_some();
        if !has_entry && let Some(special) = self.engine.special(ino).map_err(Errno::from)? {
            if change.size.is_some() {
                return Err(Errno::EINVAL);
            }
            let special = self
                .engine
                .set_special_meta(special.ino, meta)
                .map_err(Errno::from)?;
            return Ok(self.special_attr(&special));
        }
        if let Some(size) = change.size {
            self.truncate(ino, size)?;
        }
        if !only_size && has_entry {
            // A file being written keeps the time in its copy, which the last close records (a
            // write after it moves it on, as on any disk). The copy first, then LOCAL: a commit
            // of the copy racing this (the close's release) reads the copy's time inside its
            // transaction, so it records this time if it comes after, and this transaction
            // overwrites its time if it comes before.
            if let Some(ns) = change.mtime_ns
                && let Some(path) = self.engine.newer_copy(ino)
                && let Ok(file) = std::fs::File::options().write(true).open(path)
            {
                let _ = file.set_modified(time_of(ns));
            }
            let read_at = self.engine.content_epoch();
            let entry = self.engine.set_meta(ino, meta).map_err(Errno::from)?;
            return Ok(self.attr_of(&entry, read_at));
        }
        self.getattr(ino)
    }
}

#[cfg(test)]
mod tests {
    use crate::Caller;

    /// An entry read before a commit of written bytes ended (on another FUSE thread: the close's
    /// release) is not trusted for the size once the copy no longer counts as newer: without this,
    /// `chmod` right after `close` answered, and the kernel cached, an empty file.
    #[test]
    fn an_entry_read_before_a_commit_ended_is_read_again() {
        let (vfs, _dir, _runtime) = crate::testing::local_vfs();
        let (attr, fh) = vfs
            .create(1, "object", 0o644, Caller { uid: 0, gid: 0 })
            .unwrap();
        vfs.write(fh, 0, b"hello, world").unwrap();

        let read_at = vfs.engine.content_epoch();
        let stale = vfs.entry(attr.ino).unwrap();
        assert_eq!(stale.node.attrs.size, 0, "nothing committed yet");
        vfs.release(fh).unwrap(); // the last close commits the copy
        assert!(vfs.engine.newer_copy(attr.ino).is_none());

        assert_eq!(vfs.attr_of(&stale, read_at).size, 12);
        assert_eq!(vfs.getattr(attr.ino).unwrap().size, 12);
    }
}

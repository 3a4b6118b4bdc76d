//! Directories: creating and removing entries, renames, and streamed listings.
//!
//! A listing is read in pages from the LOCAL tree in name order; the handle keeps the entries the
//! kernel has not taken yet and where the next page starts, so a directory of 100,000 entries is read
//! once, page by page, never loaded whole.

use std::collections::VecDeque;

use bvfs_engine::model::NodeKind;
use bvfs_engine::state::specials::SpecialKind;

use crate::attr::kind_of;
use crate::{Attr, Caller, Errno, FileKind, Handle, Vfs, VfsResult};

/// Entries fetched from the engine per page.
const PAGE: usize = 512;

/// One `readdir` entry. `offset` is what the kernel passes back to continue after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub ino: u64,
    pub offset: u64,
    pub kind: FileKind,
    pub name: String,
    /// For `readdirplus`.
    pub attr: Attr,
}

/// Where a listing is. Entries fetched from the engine but not yet taken by the kernel wait in
/// `pending`, so a listing advances exactly as far as the kernel's buffer went.
pub(crate) struct DirHandle {
    ino: u64,
    /// The offset of the last entry the kernel took (0: none yet).
    position: u64,
    /// Fetched entries not yet taken, in order.
    pending: VecDeque<DirEntry>,
    /// The name the next engine page starts after, and the offset its first entry gets.
    after: Option<String>,
    next_offset: u64,
    /// Whether the engine has no more entries.
    exhausted: bool,
    /// Whether this device's special files in the directory were listed (after the rest).
    specials_listed: bool,
}

/// Offsets 1 and 2 are `.` and `..`; entries count from 3.
const FIRST_ENTRY: u64 = 3;

impl DirHandle {
    fn new(ino: u64) -> Self {
        Self {
            ino,
            position: 0,
            pending: VecDeque::new(),
            after: None,
            next_offset: FIRST_ENTRY,
            exhausted: false,
            specials_listed: false,
        }
    }
}

impl Vfs {
    /// `opendir`.
    pub fn opendir(&self, ino: u64) -> VfsResult<u64> {
        let entry = self.entry(ino)?;
        if entry.node.kind != NodeKind::Directory {
            return Err(Errno::ENOTDIR);
        }
        Ok(self.insert_handle(Handle::Dir(DirHandle::new(ino))))
    }

    /// `releasedir`.
    pub fn releasedir(&self, fh: u64) -> VfsResult<()> {
        self.take_handle(fh).map(drop)
    }

    /// Fetches the next page of entries into `pending`.
    fn fill(&self, dir: &mut DirHandle) -> VfsResult<()> {
        if dir.exhausted {
            if !dir.specials_listed {
                dir.specials_listed = true;
                for special in self.engine.specials(dir.ino).map_err(Errno::from)? {
                    let attr = self.special_attr(&special);
                    dir.pending.push_back(DirEntry {
                        ino: special.ino,
                        offset: dir.next_offset,
                        kind: attr.kind,
                        name: special.name,
                        attr,
                    });
                    dir.next_offset += 1;
                }
            }
            return Ok(());
        }
        let read_at = self.engine.content_epoch();
        let page = self
            .engine
            .list(dir.ino, dir.after.as_deref(), PAGE)
            .map_err(Errno::from)?;
        dir.exhausted = page.len() < PAGE;
        for entry in page {
            dir.after = Some(entry.node.name.clone());
            dir.pending.push_back(DirEntry {
                ino: entry.ino,
                offset: dir.next_offset,
                kind: kind_of(entry.node.kind),
                name: entry.node.name.clone(),
                attr: self.attr_of(&entry, read_at),
            });
            dir.next_offset += 1;
        }
        Ok(())
    }

    /// `readdir`/`readdirplus` from `offset`: hands entries to `add` until it returns true (the
    /// kernel's buffer is full); the entry it refused is offered again next time.
    pub fn readdir(
        &self,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(&DirEntry) -> bool,
    ) -> VfsResult<()> {
        let handle = self.handle(fh)?;
        let mut guard = handle.lock();
        let Handle::Dir(dir) = &mut *guard else {
            return Err(Errno::EBADF);
        };
        if offset != dir.position {
            // A rewind or a seek (rare): start over and skip to the wanted position.
            *dir = DirHandle::new(dir.ino);
            while dir.position < offset {
                if dir.position + 1 < FIRST_ENTRY {
                    dir.position += 1;
                    continue;
                }
                if dir.pending.is_empty() {
                    self.fill(dir)?;
                }
                match dir.pending.pop_front() {
                    Some(entry) => dir.position = entry.offset,
                    None => return Ok(()),
                }
            }
        }
        if dir.position < FIRST_ENTRY - 1 {
            // Not `getattr`: for a directory removed while listed it would look for an open file
            // among the handles, locking each one, this listing's own included (a deadlock).
            let read_at = self.engine.content_epoch();
            let entry = match self.entry(dir.ino) {
                Ok(entry) => entry,
                // Removed while open: the listing is empty, as ext4 answers (not even dots).
                Err(Errno::ENOENT) => return Ok(()),
                Err(e) => return Err(e),
            };
            let this = self.attr_of(&entry, read_at);
            let parent = self
                .engine
                .getattr_by_id(entry.node.parent)
                .ok()
                .flatten()
                .map_or(this, |p| self.attr_of(&p, read_at));
            let dots = [(1, ".", this), (2, "..", parent)];
            let start = dir.position;
            for (off, name, attr) in dots.into_iter().filter(|(off, ..)| *off > start) {
                let entry = DirEntry {
                    ino: attr.ino,
                    offset: off,
                    kind: FileKind::Directory,
                    name: name.into(),
                    attr,
                };
                if add(&entry) {
                    return Ok(());
                }
                dir.position = off;
            }
        }
        loop {
            if dir.pending.is_empty() {
                self.fill(dir)?;
            }
            let Some(entry) = dir.pending.front() else {
                return Ok(());
            };
            if add(entry) {
                return Ok(());
            }
            dir.position = entry.offset;
            dir.pending.pop_front();
        }
    }

    /// `mkdir` with permission bits `mode` (the caller's umask already applied), owned by `caller`.
    pub fn mkdir(&self, parent: u64, name: &str, mode: u32, caller: Caller) -> VfsResult<Attr> {
        self.writable()?;
        let new = self.new_node(parent, NodeKind::Directory, mode, caller, None)?;
        let read_at = self.engine.content_epoch();
        let entry = self
            .engine
            .create_with(parent, name, NodeKind::Directory, new)
            .map_err(Errno::from)?;
        Ok(self.attr_of(&entry, read_at))
    }

    /// `symlink`, owned by `caller`.
    pub fn symlink(
        &self,
        parent: u64,
        name: &str,
        target: &str,
        caller: Caller,
    ) -> VfsResult<Attr> {
        self.writable()?;
        if target.is_empty() || target.len() > 4096 {
            return Err(Errno::EINVAL);
        }
        let new = self.new_node(
            parent,
            NodeKind::Symlink,
            0o777,
            caller,
            Some(target.to_string()),
        )?;
        let read_at = self.engine.content_epoch();
        let entry = self
            .engine
            .create_with(parent, name, NodeKind::Symlink, new)
            .map_err(Errno::from)?;
        Ok(self.attr_of(&entry, read_at))
    }

    /// What a node made by `caller` in `parent` starts with, as POSIX has it: the caller owns it,
    /// except that a directory with the setgid bit gives its group to what is made in it (and the
    /// bit itself to a subdirectory). Ownership equal to the mounting user's is left implicit.
    pub(crate) fn new_node(
        &self,
        parent: u64,
        kind: NodeKind,
        mode: u32,
        caller: Caller,
        symlink_target: Option<String>,
    ) -> VfsResult<bvfs_engine::api::NewNode> {
        let read_at = self.engine.content_epoch();
        let dir = self.entry(parent)?;
        let dir_attr = self.attr_of(&dir, read_at);
        let setgid_dir = u32::from(dir_attr.perm) & 0o2000 != 0;
        let gid = if setgid_dir { dir_attr.gid } else { caller.gid };
        let mut mode = mode & 0o7777;
        if kind == NodeKind::Directory && setgid_dir {
            mode |= 0o2000;
        }
        Ok(bvfs_engine::api::NewNode {
            mode,
            uid: (caller.uid != self.options.uid).then_some(caller.uid),
            gid: (gid != self.options.gid).then_some(gid),
            symlink_target,
        })
    }

    /// `unlink` (`dir = false`) or `rmdir` (`dir = true`).
    pub fn remove(&self, parent: u64, name: &str, dir: bool) -> VfsResult<()> {
        self.writable()?;
        match self.engine.remove(parent, name, dir).map_err(Errno::from) {
            Err(Errno::ENOENT) => {
                if self
                    .engine
                    .special_lookup(parent, name)
                    .map_err(Errno::from)?
                    .is_none()
                {
                    return Err(Errno::ENOENT);
                }
                if dir {
                    return Err(Errno::ENOTDIR);
                }
                self.engine
                    .remove_special(parent, name)
                    .map_err(Errno::from)?;
                Ok(())
            }
            other => other.map(drop),
        }
    }

    /// `rename`, with `RENAME_NOREPLACE` as `no_replace`. A rename is one node mutation: O(1) whatever
    /// the subtree, and never a download.
    pub fn rename(
        &self,
        parent: u64,
        name: &str,
        new_parent: u64,
        new_name: &str,
        no_replace: bool,
    ) -> VfsResult<()> {
        self.writable()?;
        match self.engine.lookup(parent, name).map_err(Errno::from)? {
            Some(entry) => self
                .engine
                .rename(entry.ino, new_parent, new_name, no_replace)
                .map_err(Errno::from),
            None => {
                let special = self
                    .engine
                    .special_lookup(parent, name)
                    .map_err(Errno::from)?
                    .ok_or(Errno::ENOENT)?;
                self.engine
                    .rename_special(special.ino, new_parent, new_name, no_replace)
                    .map_err(Errno::from)
            }
        }
    }

    /// `mknod`: a FIFO, socket or device (this device's only, never synced), or an empty regular
    /// file. `mode` carries the file type bits and the permission bits (umask applied).
    pub fn mknod(
        &self,
        parent: u64,
        name: &str,
        mode: u32,
        rdev: u32,
        caller: Caller,
    ) -> VfsResult<Attr> {
        self.writable()?;
        let kind = match mode & libc::S_IFMT {
            libc::S_IFREG | 0 => {
                let (attr, fh) = self.create(parent, name, mode, caller)?;
                self.release(fh)?;
                return Ok(attr);
            }
            libc::S_IFIFO => SpecialKind::Fifo,
            libc::S_IFSOCK => SpecialKind::Socket,
            libc::S_IFCHR => SpecialKind::CharDevice,
            libc::S_IFBLK => SpecialKind::BlockDevice,
            _ => return Err(Errno::EINVAL),
        };
        let new = self.new_node(parent, NodeKind::File, mode, caller, None)?;
        let special = self
            .engine
            .mknod(parent, name, kind, rdev, new)
            .map_err(Errno::from)?;
        Ok(self.special_attr(&special))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use crate::Caller;

    /// A directory removed while a process lists it: the listing ends (empty, as on ext4) instead
    /// of deadlocking. The dot entries once came from `getattr`, which for a removed inode looks
    /// for an open file by locking every handle, the listing's own (held by `readdir`) included;
    /// a `rm -rf` racing a `find` hung the whole mount.
    #[test]
    fn a_directory_removed_while_listed_ends_its_listing_without_a_deadlock() {
        let (vfs, _dir, _runtime) = crate::testing::local_vfs();
        let vfs = Arc::new(vfs);
        let root = Caller { uid: 0, gid: 0 };
        let gone = vfs.mkdir(1, "gone", 0o755, root).unwrap();
        vfs.mkdir(gone.ino, "child", 0o755, root).unwrap();
        let fh = vfs.opendir(gone.ino).unwrap();
        vfs.remove(gone.ino, "child", true).unwrap();
        vfs.remove(1, "gone", true).unwrap();

        let (done, finished) = std::sync::mpsc::channel();
        let listing = vfs.clone();
        std::thread::spawn(move || {
            let mut names = Vec::new();
            let result = listing.readdir(fh, 0, |entry| {
                names.push(entry.name.clone());
                false
            });
            let _ = done.send((result, names));
        });
        let (result, names) = finished
            .recv_timeout(Duration::from_secs(10))
            .expect("readdir of a removed directory deadlocked");
        result.unwrap();
        assert!(names.is_empty(), "{names:?}");
        vfs.releasedir(fh).unwrap();
    }
}

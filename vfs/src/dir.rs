//! Directories: creating and removing entries, renames, and streamed listings.
//!
//! A listing is read in pages from the LOCAL tree in name order; the handle remembers where the last
//! page ended, so a directory of 100,000 entries is read once, page by page, never loaded whole.

use bvfs_engine::model::NodeKind;

use crate::attr::kind_of;
use crate::{Attr, Errno, FileKind, Handle, Vfs, VfsResult};

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

/// Where a listing is: the next offset, and the name to continue after.
pub(crate) struct DirHandle {
    ino: u64,
    next_offset: u64,
    after: Option<String>,
}

/// Offsets 1 and 2 are `.` and `..`; entries count from 3.
const FIRST_ENTRY: u64 = 3;

impl Vfs {
    /// `opendir`.
    pub fn opendir(&self, ino: u64) -> VfsResult<u64> {
        let entry = self.entry(ino)?;
        if entry.node.kind != NodeKind::Directory {
            return Err(Errno::ENOTDIR);
        }
        Ok(self.insert_handle(Handle::Dir(DirHandle {
            ino,
            next_offset: 0,
            after: None,
        })))
    }

    /// `releasedir`.
    pub fn releasedir(&self, fh: u64) -> VfsResult<()> {
        self.take_handle(fh).map(drop)
    }

    /// `readdir` from `offset`: up to one page of entries. An empty result ends the listing.
    pub fn readdir(&self, fh: u64, offset: u64) -> VfsResult<Vec<DirEntry>> {
        let handle = self.handle(fh)?;
        let mut guard = handle.lock();
        let Handle::Dir(dir) = &mut *guard else {
            return Err(Errno::EBADF);
        };
        let mut out = Vec::new();
        if offset < FIRST_ENTRY {
            let this = self.getattr(dir.ino)?;
            let parent_ino = self
                .entry(dir.ino)
                .ok()
                .and_then(|e| self.engine.getattr_by_id(e.node.parent).ok().flatten())
                .map_or(dir.ino, |p| p.ino);
            let parent = self.getattr(parent_ino).unwrap_or(this);
            if offset < 1 {
                out.push(DirEntry { ino: this.ino, offset: 1, kind: FileKind::Directory, name: ".".into(), attr: this });
            }
            out.push(DirEntry { ino: parent.ino, offset: 2, kind: FileKind::Directory, name: "..".into(), attr: parent });
            dir.next_offset = FIRST_ENTRY;
            dir.after = None;
        } else if offset != dir.next_offset {
            // A seek back (rare): walk again from the start to the wanted position.
            dir.after = None;
            dir.next_offset = FIRST_ENTRY;
            while dir.next_offset < offset {
                let skip = ((offset - dir.next_offset) as usize).min(PAGE);
                let page = self.engine.list(dir.ino, dir.after.as_deref(), skip).map_err(Errno::from)?;
                let Some(last) = page.last() else { return Ok(out) };
                dir.after = Some(last.node.name.clone());
                dir.next_offset += page.len() as u64;
            }
        }
        let page = self.engine.list(dir.ino, dir.after.as_deref(), PAGE).map_err(Errno::from)?;
        for entry in page {
            dir.next_offset += 1;
            dir.after = Some(entry.node.name.clone());
            out.push(DirEntry {
                ino: entry.ino,
                offset: dir.next_offset,
                kind: kind_of(entry.node.kind),
                name: entry.node.name.clone(),
                attr: self.attr_of(&entry),
            });
        }
        Ok(out)
    }

    /// `mkdir`.
    pub fn mkdir(&self, parent: u64, name: &str) -> VfsResult<Attr> {
        self.writable()?;
        let entry = self
            .engine
            .create(parent, name, NodeKind::Directory, false, None)
            .map_err(Errno::from)?;
        Ok(self.attr_of(&entry))
    }

    /// `symlink`.
    pub fn symlink(&self, parent: u64, name: &str, target: &str) -> VfsResult<Attr> {
        self.writable()?;
        if target.is_empty() || target.len() > 4096 {
            return Err(Errno::EINVAL);
        }
        let entry = self
            .engine
            .create(parent, name, NodeKind::Symlink, false, Some(target.to_string()))
            .map_err(Errno::from)?;
        Ok(self.attr_of(&entry))
    }

    /// `unlink` (`dir = false`) or `rmdir` (`dir = true`).
    pub fn remove(&self, parent: u64, name: &str, dir: bool) -> VfsResult<()> {
        self.writable()?;
        self.engine.remove(parent, name, dir).map_err(Errno::from)?;
        Ok(())
    }

    /// `rename`, with `RENAME_NOREPLACE` as `no_replace`. A rename is one node mutation: O(1) whatever
    /// the subtree, and never a download.
    pub fn rename(&self, parent: u64, name: &str, new_parent: u64, new_name: &str, no_replace: bool) -> VfsResult<()> {
        self.writable()?;
        let entry = self.engine.lookup(parent, name).map_err(Errno::from)?.ok_or(Errno::ENOENT)?;
        self.engine
            .rename(entry.ino, new_parent, new_name, no_replace)
            .map_err(Errno::from)
    }
}

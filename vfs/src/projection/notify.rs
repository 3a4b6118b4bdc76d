//! ProjFS's notifications: what happened on disk, fed into the LOCAL tree exactly as the FUSE
//! adapter's calls feed it; and, before a delete or a rename, the chance to refuse it.
//!
//! On Windows the bytes a user writes land in the file on disk (ProjFS makes it "full"); the
//! provider hears of them when the last handle closes (`FILE_HANDLE_CLOSED_FILE_MODIFIED`). Then
//! [`Projection::modified`] copies the file into the engine through the same calls a FUSE `open`
//! with `O_TRUNC`, `write`s and the `release` make, so the engine re-chunks it and uploads it as it
//! does for the mount. New files and directories, renames (within the root, into it, out of it)
//! and deletes become the same LOCAL mutations as `create`, `mkdir`, `rename`, `unlink`, `rmdir`.
//!
//! **Vetoes.** A delete that went through cannot be undone here: `windows-projfs` cannot remove
//! the tombstone ProjFS leaves, so a file brought back later would stay hidden. So the checks that
//! guard a delete on Linux after the fact act here before it ([`Veto`]):
//!
//! - *the bulk-delete brake*: a delete (or a move out of the root, as the Recycle Bin does) is
//!   refused while the brake holds deletes for confirmation, or when it would leave more deletes
//!   waiting for the server than the brake lets through in one plan
//!   ([`bvfs_engine::planner::DeleteBrake`], 500 or half the namespace by default). As the server
//!   takes the pending deletes, more are let through;
//! - *unsynced content*: a file whose current content is an edit the server has not stored yet
//!   (it holds an older version, or a writer is still open) is not deleted until the upload lands,
//!   so every delete through the projection can be undone from the server's history. A file made
//!   here that the server never saw is deleted at once: temporary files come and go that way, and
//!   there is no older version to keep.
//!
//! A rename inside the root is never refused: it loses nothing (a replaced target's versions stay
//! in the server's history, as with `rename(2)` on the FUSE mount).

use std::fs::File;
use std::io::Read;

use bvfs_engine::model::NodeKind;
use bvfs_engine::presence::ContentOnServer;
use bvfs_engine::state::local::LocalEntry;

use super::enumeration::PAGE;
use super::{POLICY, ProjectedPath, Projection};
use crate::{Errno, OpenMode, VfsResult};

/// The size of the reads that copy a modified file into the engine.
const COPY_PIECE: usize = 1 << 20;

/// Why a delete or a rename was refused before it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Veto {
    /// The bulk-delete brake: it holds `held` deletes for confirmation, or `pending` deletes wait
    /// for the server and `adding` more would pass what it lets through.
    Brake {
        pending: u64,
        adding: u64,
        held: u64,
    },
    /// The file at `path` holds an edit the server has not stored yet.
    UnsyncedEdit { path: String },
    /// The directory still has entries (ProjFS may not have shown them yet).
    NotEmpty,
    /// The mount is read-only.
    ReadOnly,
    /// Hard links are not supported (as on the FUSE mount).
    HardLink,
    /// The state could not be read, or the path is not one that may go.
    Failed(Errno),
}

impl std::fmt::Display for Veto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Veto::Brake { held, .. } if *held > 0 => write!(
                f,
                "the bulk-delete brake holds {held} deletes for confirmation; confirm or reject them first"
            ),
            Veto::Brake {
                pending, adding, ..
            } => write!(
                f,
                "{pending} deletes are waiting for the server and {adding} more would pass the bulk-delete brake; \
                 retry once they have synced"
            ),
            Veto::UnsyncedEdit { path } => write!(
                f,
                "{path} holds changes the server has not stored yet; retry once it has synced"
            ),
            Veto::NotEmpty => f.write_str("the directory is not empty"),
            Veto::ReadOnly => f.write_str("the mount is read-only"),
            Veto::HardLink => f.write_str("hard links are not supported"),
            Veto::Failed(e) => write!(f, "cannot check this operation (errno {})", e.0),
        }
    }
}

impl Projection {
    /// `PRE_DELETE`: whether the entry at `path` may be deleted.
    pub fn pre_delete(&self, path: &str) -> Result<(), Veto> {
        if self.vfs.options.read_only {
            return Err(Veto::ReadOnly);
        }
        let path = ProjectedPath::parse(path).map_err(Veto::Failed)?;
        let entry = match self.resolve(&path) {
            Ok(entry) => entry,
            // Not in the namespace (made on disk while notifications were off): nothing to keep.
            Err(Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(Veto::Failed(e)),
        };
        if entry.node.id.is_root() {
            return Err(Veto::Failed(Errno::EPERM));
        }
        if entry.node.kind == NodeKind::Directory && !self.children(entry.ino, 1)?.is_empty() {
            return Err(Veto::NotEmpty);
        }
        self.weigh_removal(&path, entry)
    }

    /// `PRE_RENAME` from `from` to `to` (`None` or empty: outside the root). A move out of the
    /// root removes the whole subtree from the namespace and is weighed as its deletes.
    pub fn pre_rename(&self, from: Option<&str>, to: Option<&str>) -> Result<(), Veto> {
        if self.vfs.options.read_only {
            return Err(Veto::ReadOnly);
        }
        let (Some(from), None) = (non_empty(from), non_empty(to)) else {
            return Ok(());
        };
        let path = ProjectedPath::parse(from).map_err(Veto::Failed)?;
        match self.resolve(&path) {
            Ok(entry) => self.weigh_removal(&path, entry),
            Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(Veto::Failed(e)),
        }
    }

    /// `PRE_SET_HARDLINK`: always refused.
    pub fn pre_hardlink(&self, _path: &str) -> Result<(), Veto> {
        Err(Veto::HardLink)
    }

    /// `NEW_FILE_CREATED`: a new file (empty until its first close after writing) or directory.
    /// A name the namespace already holds, in any case, is taken as that entry: ProjFS had not
    /// shown it yet, and the new bytes become its next version.
    pub fn created(&self, path: &str, is_dir: bool) -> VfsResult<()> {
        self.vfs.writable()?;
        let path = ProjectedPath::parse(path)?;
        let (dir, name) = self.resolve_parent(&path)?;
        POLICY.check(name).map_err(|_| Errno::EINVAL)?;
        if let Some(existing) = self.lookup(dir.ino, name)? {
            return match (existing.node.kind == NodeKind::Directory, is_dir) {
                (true, true) | (false, false) => Ok(()),
                _ => Err(Errno::EEXIST),
            };
        }
        if is_dir {
            // Windows has no POSIX modes: what a directory made on disk would get.
            self.vfs.mkdir(dir.ino, name, 0o755, self.vfs.owner())?;
        } else {
            self.vfs
                .engine()
                .create(dir.ino, name, NodeKind::File, false, None)
                .map_err(Errno::from)?;
        }
        Ok(())
    }

    /// `FILE_HANDLE_CLOSED_FILE_MODIFIED`: the file at `path` on disk holds new content. It is
    /// handed to the engine as a FUSE `open(O_TRUNC)`, `write`s and `release` would, so it is
    /// recorded and uploaded as any write through the mount (nothing is downloaded first). A file
    /// the namespace lacks is created.
    pub fn modified(&self, path: &str) -> VfsResult<()> {
        self.vfs.writable()?;
        let path = ProjectedPath::parse(path)?;
        let entry = match self.resolve(&path) {
            Ok(entry) => entry,
            Err(Errno::ENOENT) => {
                self.created(&path.to_string(), false)?;
                self.resolve(&path)?
            }
            Err(e) => return Err(e),
        };
        if entry.node.kind != NodeKind::File {
            return Ok(());
        }
        let disk = File::open(path.on_disk(&self.root))?;
        let (fh, _) = self.vfs.open(
            entry.ino,
            OpenMode {
                write: true,
                truncate: true,
            },
        )?;
        let copied = self.copy_into(disk, fh);
        let released = self.vfs.release(fh);
        copied.and(released)
    }

    /// `FILE_RENAMED` from `from` to `to` (`None` or empty: outside the root): a rename in the
    /// namespace, or a move in (imported from disk) or out (removed with everything below it).
    pub fn renamed(&self, from: Option<&str>, to: Option<&str>, is_dir: bool) -> VfsResult<()> {
        self.vfs.writable()?;
        match (non_empty(from), non_empty(to)) {
            (None, None) => Ok(()),
            (None, Some(to)) => self.import(&ProjectedPath::parse(to)?, is_dir),
            (Some(from), None) => self.remove_tree(&ProjectedPath::parse(from)?),
            (Some(from), Some(to)) => {
                let (from, to) = (ProjectedPath::parse(from)?, ProjectedPath::parse(to)?);
                match self.resolve(&from) {
                    Ok(entry) => self.rename_entry(&entry, &to),
                    // The namespace never had it (made while notifications were off): take it now.
                    Err(Errno::ENOENT) => self.import(&to, is_dir),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// `FILE_HANDLE_CLOSED_FILE_DELETED`: the entry at `path` is gone (with anything the namespace
    /// still had below it).
    pub fn deleted(&self, path: &str) -> VfsResult<()> {
        self.vfs.writable()?;
        self.remove_tree(&ProjectedPath::parse(path)?)
    }

    /// Moves `entry` to `to`. Windows replaces a target whose name differs only in case; the
    /// engine compares exactly, so the target is replaced under its own name first (one
    /// transaction, as `rename(2)`), then the entry takes the new name's case.
    fn rename_entry(&self, entry: &LocalEntry, to: &ProjectedPath) -> VfsResult<()> {
        let (dir, name) = self.resolve_parent(to)?;
        POLICY.check(name).map_err(|_| Errno::EINVAL)?;
        let engine = self.vfs.engine();
        if let Some(target) = self.lookup(dir.ino, name)?
            && target.ino != entry.ino
            && target.node.name != name
        {
            engine
                .rename(entry.ino, dir.ino, &target.node.name, false)
                .map_err(Errno::from)?;
        }
        engine
            .rename(entry.ino, dir.ino, name, false)
            .map_err(Errno::from)
    }

    /// Takes what is on disk at `path` (moved in from outside the root) into the namespace.
    fn import(&self, path: &ProjectedPath, is_dir: bool) -> VfsResult<()> {
        if !is_dir {
            return self.modified(&path.to_string());
        }
        self.created(&path.to_string(), true)?;
        for item in std::fs::read_dir(path.on_disk(&self.root))? {
            let item = item?;
            let Ok(name) = item.file_name().into_string() else {
                tracing::warn!(dir = %path, "a name that is not Unicode was left out");
                continue;
            };
            self.import(&path.join(&name), item.file_type()?.is_dir())?;
        }
        Ok(())
    }

    /// Removes the entry at `path` and everything below it from the namespace (children first, as
    /// `unlink` and `rmdir` would). A path the namespace lacks is already gone.
    fn remove_tree(&self, path: &ProjectedPath) -> VfsResult<()> {
        let entry = match self.resolve(path) {
            Ok(entry) => entry,
            Err(Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(e),
        };
        let (dir, _) = self.resolve_parent(path)?;
        self.remove_entry(dir.ino, &entry)
    }

    fn remove_entry(&self, parent: u64, entry: &LocalEntry) -> VfsResult<()> {
        let is_dir = entry.node.kind == NodeKind::Directory;
        if is_dir {
            loop {
                let children = self.children(entry.ino, PAGE)?;
                if children.is_empty() {
                    break;
                }
                for child in &children {
                    self.remove_entry(entry.ino, child)?;
                }
            }
        }
        self.vfs.remove(parent, &entry.node.name, is_dir)
    }

    /// Refuses removing `entry` (at `path`) and its subtree if it would take an edit the server has
    /// not stored, or pass the bulk-delete brake.
    fn weigh_removal(&self, path: &ProjectedPath, entry: LocalEntry) -> Result<(), Veto> {
        let engine = self.vfs.engine();
        let brake = engine.config().brake;
        // Past this many nodes the brake engages whatever else is pending: stop counting.
        let enough = brake.max_deletes.saturating_add(1);
        let mut count = 0u64;
        let mut stack = vec![(path.clone(), entry)];
        while let Some((path, entry)) = stack.pop() {
            count += 1;
            if entry.node.kind == NodeKind::File
                && engine.content_on_server(&entry).map_err(fail)? == ContentOnServer::Edited
            {
                return Err(Veto::UnsyncedEdit {
                    path: path.to_string(),
                });
            }
            if count >= enough {
                break;
            }
            if entry.node.kind == NodeKind::Directory {
                let mut after: Option<String> = None;
                loop {
                    let page = engine
                        .list(entry.ino, after.as_deref(), PAGE)
                        .map_err(fail)?;
                    let Some(last) = page.last() else { break };
                    after = Some(last.node.name.clone());
                    stack.extend(page.into_iter().map(|c| (path.join(&c.node.name), c)));
                }
            }
        }
        let pending = engine.pending_deletes().map_err(fail)?;
        if pending.held > 0 || brake.engages(pending.unsynced + count, pending.namespace_size) {
            return Err(Veto::Brake {
                pending: pending.unsynced,
                adding: count,
                held: pending.held,
            });
        }
        Ok(())
    }

    /// Up to `limit` children of the directory `dir`, in the engine's order.
    fn children(&self, dir: u64, limit: usize) -> VfsResult<Vec<LocalEntry>> {
        self.vfs
            .engine()
            .list(dir, None, limit)
            .map_err(Errno::from)
    }

    /// Copies `disk` into the open writing handle `fh`.
    fn copy_into(&self, mut disk: File, fh: u64) -> VfsResult<()> {
        let mut buf = vec![0; COPY_PIECE];
        let mut offset = 0u64;
        loop {
            let n = match disk.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            self.vfs.write(fh, offset, &buf[..n])?;
            offset += n as u64;
        }
    }
}

fn non_empty(path: Option<&str>) -> Option<&str> {
    path.filter(|p| !p.is_empty())
}

fn fail(e: bvfs_engine::EngineError) -> Veto {
    Veto::Failed(Errno::from(e))
}

impl From<Errno> for Veto {
    fn from(e: Errno) -> Self {
        Veto::Failed(e)
    }
}

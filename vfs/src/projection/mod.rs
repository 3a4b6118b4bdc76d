//! The namespace as ProjFS asks for it: a platform-neutral projection layer over [`Vfs`].
//!
//! Windows' Projected File System does not call a filesystem by inode, as FUSE does. It asks a
//! *provider* questions about paths relative to the virtualization root and tells it what happened
//! on disk afterwards:
//!
//! - **enumeration** of a directory, in sessions (start, get, end) keyed by a GUID, with a search
//!   expression and a restart flag, filled into a buffer of bounded size, resumed where the previous
//!   call stopped ([`enumeration`]);
//! - **placeholder info** for one path ([`Projection::placeholder_info`]);
//! - **file data** for `(path, offset, length)` ([`data`]): from the materialized copy or the
//!   chunks, fetching only the chunks the range touches;
//! - **notifications** ([`notify`]): a new file or directory, a file closed after modification (its
//!   bytes are then in the full file on disk, which this layer hands to the engine as a FUSE
//!   `release` does), a rename, a delete; and, before a delete or rename, the chance to refuse it
//!   (the bulk-delete brake, and edits the server has not stored yet).
//!
//! Everything here is plain Rust over the engine, so a harness on Linux drives the same callback
//! sequences ProjFS issues (`tests/projection.rs`); the Windows adapter
//! (`bvfs_platform::windows`, behind the `projfs` feature) only translates types.
//!
//! Names follow ProjFS: lookups fold case ([`bvfs_engine::model::NamePolicy::Windows`]),
//! listings come in `PrjFileNameCompare` order, search expressions match as `PrjFileNameMatch` does
//! ([`names`]). The engine must run with the Windows name policy, so that names Windows cannot show
//! (reserved characters and device names, trailing dots or spaces, names equal but for case) stay
//! remote-only and are reported by the planner ([`Projection::remote_only`]) instead of reaching
//! ProjFS; entries that break the policy anyway (a state made under another policy) are hidden.

pub mod data;
pub mod enumeration;
pub mod names;
pub mod notify;
pub mod path;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use bvfs_engine::Invalidation;
use bvfs_engine::model::{NamePolicy, NodeKind};
use bvfs_engine::planner::Report;
use bvfs_engine::state::ROOT_INO;
use bvfs_engine::state::local::LocalEntry;
use parking_lot::Mutex;

use crate::{Errno, FileKind, Vfs, VfsResult};

pub use data::{DataStream, FileData};
pub use enumeration::{EnumerationId, EnumerationRequest};
pub use notify::Veto;
pub use path::ProjectedPath;

/// The name policy of a projection: ProjFS is case-insensitive and Windows-named.
pub const POLICY: NamePolicy = NamePolicy::Windows;

/// What ProjFS is told about one entry (a directory listing's entry, or a placeholder's info).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectedEntry {
    /// The name as the namespace spells it (whatever case the request used).
    pub name: String,
    pub kind: FileKind,
    /// The size of the content (of a copy being written, the bytes written so far).
    pub size: u64,
    pub mtime: SystemTime,
    /// The inode of the entry in the vfs (stable across renames).
    pub ino: u64,
    /// Set on a read-only mount.
    pub read_only: bool,
    /// A symlink's target.
    pub symlink_target: Option<String>,
}

/// The projection of one mount's namespace.
pub struct Projection {
    vfs: Arc<Vfs>,
    /// The virtualization root on disk: where ProjFS keeps placeholders and the files it made full
    /// (modified locally), which notifications read new content from.
    root: PathBuf,
    sessions: Mutex<HashMap<EnumerationId, Arc<Mutex<enumeration::Session>>>>,
}

impl Projection {
    /// A projection of `vfs`'s namespace at `root`. The engine must have been opened with the
    /// Windows name policy (`EngineConfig::names`), or names ProjFS cannot show would reach it:
    /// `EINVAL` otherwise.
    pub fn new(vfs: Arc<Vfs>, root: impl Into<PathBuf>) -> VfsResult<Self> {
        if vfs.engine().config().names != POLICY {
            tracing::error!("a projection needs an engine opened with the Windows name policy");
            return Err(Errno::EINVAL);
        }
        Ok(Self {
            vfs,
            root: root.into(),
            sessions: Mutex::new(HashMap::new()),
        })
    }

    pub fn vfs(&self) -> &Arc<Vfs> {
        &self.vfs
    }

    /// The virtualization root on disk.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// What the last sync round kept remote-only and why: names Windows cannot show, names that
    /// collide after case folding, and what lies under them.
    pub fn remote_only(&self) -> Vec<Report> {
        self.vfs
            .engine()
            .reported()
            .into_iter()
            .filter(|r| {
                matches!(
                    r,
                    Report::InvalidName { .. }
                        | Report::NameCollision { .. }
                        | Report::UnderRemoteOnly { .. }
                )
            })
            .collect()
    }

    /// The paths whose projection on disk may be stale since the last call: entries the engine
    /// changed, renamed or removed on its own (a remote change). A provider with
    /// `PrjUpdateFileIfNeeded` and `PrjDeleteFile` updates or removes their placeholders;
    /// `windows-projfs` 0.1.8 has neither (see `docs/windows-projfs.md`). Sorted, without repeats.
    pub fn take_stale_paths(&self) -> Vec<String> {
        let mut paths: Vec<String> = self
            .vfs
            .take_invalidations()
            .into_iter()
            .filter_map(|item| match item {
                Invalidation::Inode(ino) => self.path_of(ino),
                Invalidation::Entry { parent, name } => {
                    let dir = self.path_of(parent)?;
                    Some(match dir.is_empty() {
                        true => name,
                        false => format!("{dir}\\{name}"),
                    })
                }
            })
            .collect();
        paths.sort();
        paths.dedup();
        paths
    }

    /// The ProjFS path of inode `ino`, if it is in the namespace.
    fn path_of(&self, ino: u64) -> Option<String> {
        let engine = self.vfs.engine();
        let mut entry = engine.getattr(ino).ok()??;
        let mut names = Vec::new();
        while !entry.node.id.is_root() {
            names.push(entry.node.name.clone());
            entry = engine.getattr_by_id(entry.node.parent).ok()??;
        }
        names.reverse();
        Some(names.join("\\"))
    }

    /// `GetPlaceholderInfo`: what `path` is, without touching its content.
    pub fn placeholder_info(&self, path: &str) -> VfsResult<ProjectedEntry> {
        let read_at = self.vfs.engine().content_epoch();
        let entry = self.resolve(&ProjectedPath::parse(path)?)?;
        Ok(self.projected(&entry, read_at))
    }

    /// The entry a ProjFS view of `entry` shows.
    fn projected(&self, entry: &LocalEntry, read_at: u64) -> ProjectedEntry {
        let attr = self.vfs.attr_of(entry, read_at);
        ProjectedEntry {
            name: entry.node.name.clone(),
            kind: attr.kind,
            size: attr.size,
            mtime: attr.mtime,
            ino: entry.ino,
            read_only: self.vfs.options.read_only,
            symlink_target: entry.node.attrs.symlink_target.clone(),
        }
    }

    /// The child `name` of directory `dir` as ProjFS names it: whatever its case, and only if
    /// Windows can show it.
    fn lookup(&self, dir: u64, name: &str) -> VfsResult<Option<LocalEntry>> {
        let entry = self
            .vfs
            .engine()
            .lookup_folded(dir, name, POLICY)
            .map_err(Errno::from)?;
        Ok(entry.filter(|e| POLICY.check(&e.node.name).is_ok()))
    }

    /// The LOCAL entry at `path`.
    pub(crate) fn resolve(&self, path: &ProjectedPath) -> VfsResult<LocalEntry> {
        let mut entry = self.vfs.entry(ROOT_INO)?;
        for name in path.names() {
            if entry.node.kind != NodeKind::Directory {
                return Err(Errno::ENOTDIR);
            }
            entry = self.lookup(entry.ino, name)?.ok_or(Errno::ENOENT)?;
        }
        Ok(entry)
    }

    /// The directory holding `path` and the last name of `path` (`EINVAL` for the root).
    pub(crate) fn resolve_parent<'p>(
        &self,
        path: &'p ProjectedPath,
    ) -> VfsResult<(LocalEntry, &'p str)> {
        let (parent, name) = path.split_last().ok_or(Errno::EINVAL)?;
        let mut dir = self.vfs.entry(ROOT_INO)?;
        for step in parent {
            dir = self.lookup(dir.ino, step)?.ok_or(Errno::ENOENT)?;
        }
        if dir.node.kind != NodeKind::Directory {
            return Err(Errno::ENOTDIR);
        }
        Ok((dir, name))
    }
}

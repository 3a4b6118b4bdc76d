//! [`Engine`]: the sync engine as the mount and the CLI use it.
//!
//! The mount calls the methods here from many threads: lookups and listings read the LOCAL tree; every
//! mutation is one SQLite transaction, durable before it returns (D9), and wakes the sync loop; reads
//! come from the materialized copy or from chunks (cache, else server). The sync loop
//! ([`Engine::sync_round`], driven by [`crate::runtime`]) reconciles LOCAL with the server.
//!
//! Concurrency: one `parking_lot` mutex guards the state database; it is never held across network
//! I/O or an `.await`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};

use parking_lot::Mutex;

use crate::cache::{CacheLimits, ChunkCache};
use crate::chunking::Manifest;
use crate::fetch::ChunkFetcher;
use crate::files::LocalFiles;
use crate::model::{Attrs, NamePolicy, NodeId, NodeKind};
use crate::planner::DeleteBrake;
use crate::remote::Remote;
use crate::state::local::{LocalEntry, LocalError, OwnAttrs};
use crate::state::specials::{Special, SpecialKind};
use crate::state::{State, StateError, Table};

/// Where the engine keeps its files and how it behaves.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Holds `state.sqlite`, `files/` (materialized copies) and, by default, `chunks/`.
    pub dir: PathBuf,
    /// The chunk cache directory (default: `dir/chunks`).
    pub cache_dir: Option<PathBuf>,
    pub cache_limits: CacheLimits,
    /// This device's name, shown in conflicted-copy names.
    pub device: String,
    pub brake: DeleteBrake,
    /// How many uploads or downloads run at once.
    pub transfer_concurrency: usize,
    /// At most this many ops per commit.
    pub commit_batch: usize,
    /// Crash injection at durability points (tests; none in production).
    pub faults: crate::faults::FaultPoints,
    /// What names the local platform can show (`Posix` for FUSE; `Windows` for a ProjFS
    /// projection): the planner keeps remote names that break it remote-only and reports them.
    pub names: NamePolicy,
}

impl EngineConfig {
    pub fn new(dir: impl Into<PathBuf>, device: impl Into<String>) -> Self {
        Self {
            dir: dir.into(),
            cache_dir: None,
            cache_limits: CacheLimits::default(),
            device: device.into(),
            brake: DeleteBrake::default(),
            transfer_concurrency: 4,
            commit_batch: 1000,
            faults: crate::faults::FaultPoints::default(),
            names: NamePolicy::default(),
        }
    }
}

/// The source of time (conflicted-copy names, mtimes of new nodes). Simulations inject their own.
pub trait Clock: Send + Sync + 'static {
    fn now_ns(&self) -> i64;
}

/// The system clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ns(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0)
    }
}

/// The source of new node ids. Simulations inject a seeded one.
pub trait IdSource: Send + Sync + 'static {
    fn new_id(&self) -> NodeId;
}

/// Random UUIDv4 ids.
pub struct RandomIds;

impl IdSource for RandomIds {
    fn new_id(&self) -> NodeId {
        NodeId::new_random()
    }
}

/// Why an engine call failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Local(#[from] LocalError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("local file I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Fetch(#[from] crate::fetch::FetchError),
    #[error("the content of this file is not known locally (manifest {0} missing)")]
    UnknownContent(String),
    /// The server's history no longer holds this device's position (restored from an older
    /// backup): the pull re-bases ([`Engine::rebase`]).
    #[error("the server's history diverged from this device's: {0}")]
    Diverged(String),
    /// The server serves another namespace than the one this state belongs to.
    #[error(
        "the server now serves another namespace ({found}) than the one this device's state belongs \
         to ({expected}); nothing is synced with it. Mount that server with its own state \
         (`bvfs mount --data EMPTY_DIR`)"
    )]
    OtherNamespace { expected: String, found: String },
}

impl From<crate::state::pull::PullError> for EngineError {
    fn from(e: crate::state::pull::PullError) -> Self {
        match e {
            crate::state::pull::PullError::State(s) => EngineError::State(s),
            other => EngineError::Io(std::io::Error::other(other.to_string())),
        }
    }
}

pub type EngineResult<T> = Result<T, EngineError>;

/// What the mount must tell the kernel to forget after the engine changed LOCAL on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidation {
    /// The attributes or content of an inode changed.
    Inode(u64),
    /// The name `name` in directory `parent` now points elsewhere or nowhere.
    Entry { parent: u64, name: String },
}

/// The sync engine of one device.
pub struct Engine {
    pub(crate) state: Mutex<State>,
    pub(crate) remote: Arc<dyn Remote>,
    pub(crate) files: LocalFiles,
    pub(crate) cache: Arc<ChunkCache>,
    pub(crate) fetcher: Arc<ChunkFetcher>,
    pub(crate) config: EngineConfig,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) ids: Arc<dyn IdSource>,
    /// The one owner of every inode's local content: handles, copies, commits, replacements (D10).
    pub(crate) contents: Arc<crate::content::Contents>,
    pub(crate) invalidations: crate::invalidations::KernelInvalidations,
    /// Nodes whose content is being uploaded right now.
    pub(crate) uploading: Mutex<std::collections::HashSet<NodeId>>,
    /// The chunks held in the cache for each pinned file, so every release matches a hold.
    pub(crate) pin_holds: Mutex<HashMap<u64, Vec<crate::chunking::ChunkId>>>,
    /// Wakes the sync loop after a local change.
    pub(crate) wake: tokio::sync::Notify,
    pub(crate) online: AtomicBool,
    /// When the last round succeeded (ns since the epoch; 0: none yet), for `bvfs status`.
    pub(crate) last_sync_ns: AtomicI64,
    /// Set once the server refused a commit for missing chunks: from then on uploads ask about every
    /// chunk and send whole chunk lists, instead of trusting that the server still stores the chunks
    /// of a file's current version.
    pub(crate) full_chunk_checks: AtomicBool,
    /// Copies found at start-up that no LOCAL node holds, waiting (while the rebuild mark is set)
    /// for the first pull to place them. Only these are orphans: a copy the mount unlinks while a
    /// handle still has it open also has no node, and it belongs to that handle, not to recovery.
    pub(crate) orphans: Mutex<Vec<u64>>,
    /// Re-bases since the engine was opened (`crate::lineage`).
    pub(crate) rebases: AtomicU64,
    /// The most ops per commit the server took, once it refused a batch as too large (0: no cap
    /// learnt; `EngineConfig::commit_batch` applies).
    pub(crate) commit_cap: AtomicUsize,
    /// What the last plan left as it is and why ([`Engine::reported`]).
    pub(crate) reported: Mutex<Vec<crate::planner::Report>>,
}

impl Engine {
    /// Opens the engine's state in `config.dir`, creating it on first use.
    pub fn open(config: EngineConfig, remote: Arc<dyn Remote>) -> EngineResult<Arc<Self>> {
        Self::open_with(config, remote, Arc::new(SystemClock), Arc::new(RandomIds))
    }

    /// [`Engine::open`] with an injected clock and id source (simulations).
    pub fn open_with(
        config: EngineConfig,
        remote: Arc<dyn Remote>,
        clock: Arc<dyn Clock>,
        ids: Arc<dyn IdSource>,
    ) -> EngineResult<Arc<Self>> {
        std::fs::create_dir_all(&config.dir)?;
        let state = open_or_rebuild(&config.dir.join("state.sqlite"))?;
        let files = LocalFiles::open(&config.dir.join("files"))?;
        let cache_dir = config
            .cache_dir
            .clone()
            .unwrap_or_else(|| config.dir.join("chunks"));
        let cache = Arc::new(ChunkCache::open(&cache_dir, config.cache_limits)?);
        let fetcher = Arc::new(ChunkFetcher::new(cache.clone(), remote.clone()));
        let engine = Arc::new(Self {
            state: Mutex::new(state),
            remote,
            files,
            cache,
            fetcher,
            config,
            clock,
            ids,
            contents: Arc::new(crate::content::Contents::new()),
            invalidations: Default::default(),
            pin_holds: Mutex::new(HashMap::new()),
            uploading: Mutex::new(std::collections::HashSet::new()),
            wake: tokio::sync::Notify::new(),
            online: AtomicBool::new(false),
            last_sync_ns: AtomicI64::new(0),
            full_chunk_checks: AtomicBool::new(false),
            rebases: AtomicU64::new(0),
            commit_cap: AtomicUsize::new(0),
            orphans: Mutex::new(Vec::new()),
            reported: Mutex::new(Vec::new()),
        });
        engine.replay_file_intents(true)?;
        engine.recover_materialized()?;
        engine.hold_pinned_content()?;
        Ok(engine)
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub fn dir(&self) -> &Path {
        &self.config.dir
    }

    /// Whether the last exchange with the server succeeded.
    pub fn is_online(&self) -> bool {
        self.online.load(Ordering::Relaxed)
    }

    pub fn cache(&self) -> &Arc<ChunkCache> {
        &self.cache
    }

    pub fn fetcher(&self) -> &Arc<ChunkFetcher> {
        &self.fetcher
    }

    /// Kernel-cache invalidations queued since the last call.
    pub fn take_invalidations(&self) -> Vec<Invalidation> {
        self.invalidations.take()
    }

    /// The queued kernel-cache invalidations, for a mount that acknowledges their delivery with
    /// [`Engine::invalidations_delivered`] (opens of an inode wait for its invalidation, briefly).
    pub fn take_invalidations_for_delivery(&self) -> (Vec<Invalidation>, u64) {
        self.invalidations.take_for_delivery()
    }

    /// The invalidations taken up to `through` reached the kernel.
    pub fn invalidations_delivered(&self, through: u64) {
        self.invalidations.delivered(through);
    }

    /// The mount stops delivering invalidations: opens no longer wait for them.
    pub fn stop_waiting_for_invalidations(&self) {
        self.invalidations.stop_waiting();
    }

    /// Waits (briefly) until the kernel has taken the invalidation of `ino` the round queued, so an
    /// open after a change never reads new bytes against the old cached size.
    pub fn await_kernel_invalidation(&self, ino: u64) {
        self.invalidations.wait_for(ino);
    }

    pub(crate) fn invalidate(&self, items: impl IntoIterator<Item = Invalidation>) {
        self.invalidations.push(items);
    }

    fn changed_locally(&self) {
        self.wake.notify_one();
    }

    // ----- reads of the LOCAL tree -----

    /// The entry `name` in directory `parent`.
    pub fn lookup(&self, parent: u64, name: &str) -> EngineResult<Option<LocalEntry>> {
        Ok(self.state.lock().read(|t| t.local_lookup(parent, name))?)
    }

    /// The entry `name` in directory `parent` as a platform that folds names (see
    /// [`NamePolicy::fold`]) finds it: the exact name first, else the one entry whose fold is equal.
    /// Under a policy that does not fold, the same as [`Engine::lookup`].
    pub fn lookup_folded(
        &self,
        parent: u64,
        name: &str,
        policy: NamePolicy,
    ) -> EngineResult<Option<LocalEntry>> {
        Ok(self
            .state
            .lock()
            .read(|t| t.local_lookup_folded(parent, name, policy))?)
    }

    /// The LOCAL entry with this node id.
    pub fn getattr_by_id(&self, id: NodeId) -> EngineResult<Option<LocalEntry>> {
        Ok(self.state.lock().read(|t| t.local_by_id(id))?)
    }

    /// The entry with inode `ino`.
    pub fn getattr(&self, ino: u64) -> EngineResult<Option<LocalEntry>> {
        Ok(self.state.lock().read(|t| t.local_by_ino(ino))?)
    }

    /// Up to `limit` children of `dir` after the name `after`, in name order.
    pub fn list(
        &self,
        dir: u64,
        after: Option<&str>,
        limit: usize,
    ) -> EngineResult<Vec<LocalEntry>> {
        Ok(self
            .state
            .lock()
            .read(|t| t.local_children(dir, after, limit))?)
    }

    /// The manifest of a file's current content.
    pub fn manifest(&self, entry: &LocalEntry) -> EngineResult<Manifest> {
        let Some(hash) = entry.node.attrs.content else {
            return Ok(Manifest::empty());
        };
        self.state
            .lock()
            .manifest(&hash)?
            .ok_or_else(|| EngineError::UnknownContent(hash.to_hex()))
    }

    // ----- mutations through the mount -----

    pub(crate) fn mutate<T>(
        &self,
        f: impl FnOnce(&crate::state::Txn<'_>) -> Result<T, LocalError>,
    ) -> EngineResult<T> {
        // Atomic now, durable at fsync/fsyncdir or after the next round (see `State::relaxed_transaction`).
        let value = self.state.lock().relaxed_transaction(f)?;
        self.changed_locally();
        Ok(value)
    }

    /// Makes every change made through the mount so far durable, with the copies' directory:
    /// `fsync` and `fsyncdir` end here. Cheap when nothing waits.
    pub fn make_durable(&self) -> EngineResult<()> {
        self.state.lock().sync_wal()?;
        self.files.sync_dir()?;
        Ok(())
    }

    /// Makes the mount's committed changes durable (not the copies' directory): before a copy file
    /// is removed, the state that no longer needs it must be on disk, and after each round, so that
    /// changes are durable within a bounded time even when nobody calls fsync.
    pub(crate) fn flush_relaxed(&self) -> EngineResult<()> {
        Ok(self.state.lock().sync_wal()?)
    }

    /// Creates a file, directory or symlink in `parent` with the default permission bits (0755 or
    /// 0644 for files after `executable`), owned by the mounting user.
    pub fn create(
        &self,
        parent: u64,
        name: &str,
        kind: NodeKind,
        executable: bool,
        symlink_target: Option<String>,
    ) -> EngineResult<LocalEntry> {
        self.create_with(
            parent,
            name,
            kind,
            NewNode {
                mode: crate::model::default_mode(kind, executable),
                symlink_target,
                ..NewNode::default()
            },
        )
    }

    /// Creates a file, directory or symlink in `parent` as `new` says (permission bits, owner).
    pub fn create_with(
        &self,
        parent: u64,
        name: &str,
        kind: NodeKind,
        new: NewNode,
    ) -> EngineResult<LocalEntry> {
        let now = self.clock.now_ns();
        let mode = new.mode & bvfs_proto::MODE_BITS;
        let attrs = match kind {
            NodeKind::File => Attrs {
                size: 0,
                mtime_ns: now,
                mode,
                content: Some(Manifest::empty().hash),
                ..Attrs::default()
            },
            NodeKind::Directory => Attrs {
                mtime_ns: now,
                mode,
                ..Attrs::default()
            },
            NodeKind::Symlink => {
                let target = new.symlink_target.unwrap_or_default();
                Attrs {
                    size: target.len() as u64,
                    mtime_ns: now,
                    mode: 0o777,
                    symlink_target: Some(target),
                    ..Attrs::default()
                }
            }
        };
        let own = OwnAttrs {
            uid: new.uid,
            gid: new.gid,
            atime_ns: Some(now),
            ctime_ns: Some(now),
            dir_mtime_ns: (kind == NodeKind::Directory).then_some(now),
        };
        let id = self.ids.new_id();
        let entry = self.mutate(|t| {
            if kind == NodeKind::File {
                t.put_manifest(&Manifest::empty())?;
            }
            let entry = t.local_create(parent, name, kind, attrs, id)?;
            t.local_set_own(entry.ino, own)?;
            t.local_touch_dir(parent, now)?;
            Ok(LocalEntry { own, ..entry })
        })?;
        if kind == NodeKind::File {
            // An empty copy: the file exists locally from now on and needs no download.
            self.files.create_empty(entry.ino, now)?;
            self.files.set_owner(entry.ino, entry.node.id, name)?;
        }
        Ok(entry)
    }

    /// Sets the executable bit and/or mtime of `ino`.
    pub fn set_attrs(
        &self,
        ino: u64,
        executable: Option<bool>,
        mtime_ns: Option<i64>,
    ) -> EngineResult<LocalEntry> {
        let mode = match executable {
            None => None,
            Some(x) => {
                let entry = self.getattr(ino)?.ok_or(LocalError::NotFound)?;
                let mode = entry.node.attrs.mode;
                Some(if x { mode | 0o111 } else { mode & !0o111 })
            }
        };
        self.set_meta(
            ino,
            MetaChange {
                mode,
                mtime_ns,
                ..MetaChange::default()
            },
        )
    }

    /// Creates a special file (FIFO, socket, device) in `parent`: this device's only, never synced
    /// (see [`crate::state::specials`]).
    pub fn mknod(
        &self,
        parent: u64,
        name: &str,
        kind: SpecialKind,
        rdev: u32,
        new: NewNode,
    ) -> EngineResult<Special> {
        let now = self.clock.now_ns();
        Ok(self
            .state
            .lock()
            .transaction(|t| -> Result<_, LocalError> {
                let special = t.special_create(
                    parent,
                    Special {
                        ino: 0,
                        parent: NodeId::ROOT,
                        name: name.to_string(),
                        kind,
                        rdev,
                        mode: new.mode & bvfs_proto::MODE_BITS,
                        uid: new.uid,
                        gid: new.gid,
                        atime_ns: now,
                        mtime_ns: now,
                        ctime_ns: now,
                    },
                )?;
                t.local_touch_dir(parent, now)?;
                Ok(special)
            })?)
    }

    /// The special file with inode `ino`, if it is one.
    pub fn special(&self, ino: u64) -> EngineResult<Option<Special>> {
        Ok(self.state.lock().read(|t| t.special_by_ino(ino))?)
    }

    /// The special file `name` in `parent`, if there is one.
    pub fn special_lookup(&self, parent: u64, name: &str) -> EngineResult<Option<Special>> {
        Ok(self.state.lock().read(|t| t.special_lookup(parent, name))?)
    }

    /// The special files in `parent`, by name.
    pub fn specials(&self, parent: u64) -> EngineResult<Vec<Special>> {
        Ok(self.state.lock().read(|t| t.specials_in(parent))?)
    }

    /// Removes the special file `name` in `parent`.
    pub fn remove_special(&self, parent: u64, name: &str) -> EngineResult<Special> {
        let now = self.clock.now_ns();
        Ok(self
            .state
            .lock()
            .transaction(|t| -> Result<_, LocalError> {
                let special = t
                    .special_lookup(parent, name)?
                    .ok_or(LocalError::NotFound)?;
                t.special_remove(special.ino)?;
                t.local_touch_dir(parent, now)?;
                Ok(special)
            })?)
    }

    /// Renames the special file `ino` to `name` in `new_parent` (rename(2) semantics: a file or
    /// special file under the name is replaced, a directory is `EISDIR`).
    pub fn rename_special(
        &self,
        ino: u64,
        new_parent: u64,
        name: &str,
        no_replace: bool,
    ) -> EngineResult<()> {
        crate::model::validate_name(name).map_err(LocalError::InvalidName)?;
        let now = self.clock.now_ns();
        let replaced = self.mutate(|t| {
            let mut special = t.special_by_ino(ino)?.ok_or(LocalError::NotFound)?;
            let old_parent = t.local_ino(special.parent)?;
            let dir = t.local_by_ino(new_parent)?.ok_or(LocalError::NotFound)?;
            if dir.node.kind != NodeKind::Directory {
                return Err(LocalError::NotDir);
            }
            let mut replaced = None;
            if let Some(target) = t.local_lookup(new_parent, name)? {
                if no_replace {
                    return Err(LocalError::Exists);
                }
                if target.node.kind == NodeKind::Directory {
                    return Err(LocalError::IsDir);
                }
                replaced = Some(t.local_remove(target.ino)?);
            } else if let Some(target) = t.special_lookup(new_parent, name)? {
                if target.ino == ino {
                    return Ok(None);
                }
                if no_replace {
                    return Err(LocalError::Exists);
                }
                t.special_remove(target.ino)?;
            }
            special.parent = dir.node.id;
            special.name = name.to_string();
            special.ctime_ns = now;
            t.special_put(&special)?;
            t.local_touch_dir(new_parent, now)?;
            if let Some(old_parent) = old_parent {
                t.local_touch_dir(old_parent, now)?;
            }
            Ok(replaced)
        })?;
        if let Some(replaced) = replaced {
            self.drop_local_copy(replaced.ino)?;
        }
        Ok(())
    }

    /// Changes the metadata of the special file `ino` (chmod, chown, utimens).
    pub fn set_special_meta(&self, ino: u64, change: MetaChange) -> EngineResult<Special> {
        let now = self.clock.now_ns();
        Ok(self
            .state
            .lock()
            .transaction(|t| -> Result<_, LocalError> {
                let mut special = t.special_by_ino(ino)?.ok_or(LocalError::NotFound)?;
                if let Some(mode) = change.mode {
                    special.mode = mode & bvfs_proto::MODE_BITS;
                }
                if let Some(uid) = change.uid {
                    special.uid = Some(uid);
                }
                if let Some(gid) = change.gid {
                    special.gid = Some(gid);
                }
                if let Some(atime) = change.atime_ns {
                    special.atime_ns = atime;
                }
                if let Some(mtime) = change.mtime_ns {
                    special.mtime_ns = mtime;
                }
                special.ctime_ns = now;
                t.special_put(&special)?;
                Ok(special)
            })?)
    }

    /// Replaces the extended attributes of `ino` that sync (`user.`); the change time becomes now.
    pub fn set_xattrs(&self, ino: u64, xattrs: crate::model::Xattrs) -> EngineResult<LocalEntry> {
        let now = self.clock.now_ns();
        self.mutate(|t| {
            let entry = t.local_by_ino(ino)?.ok_or(LocalError::NotFound)?;
            if entry.node.id.is_root() {
                return Err(LocalError::Invalid(
                    "the mount's root has no node on the server to carry attributes",
                ));
            }
            let mut attrs = entry.node.attrs.clone();
            attrs.xattrs = xattrs;
            let entry = t.local_set_attrs(ino, attrs)?;
            t.local_touch_ctime(ino, now)?;
            let own = OwnAttrs {
                ctime_ns: Some(now),
                ..entry.own
            };
            Ok(LocalEntry { own, ..entry })
        })
    }

    /// Changes the metadata of `ino` (chmod, chown, utimens): whatever `change` sets. Ownership and
    /// the access time stay on this device, as does a directory's modification time; the mode and a
    /// file's or symlink's mtime sync. The change time becomes now.
    pub fn set_meta(&self, ino: u64, change: MetaChange) -> EngineResult<LocalEntry> {
        let now = self.clock.now_ns();
        self.mutate(|t| {
            let entry = t.local_by_ino(ino)?.ok_or(LocalError::NotFound)?;
            let mut attrs = entry.node.attrs.clone();
            let mut own = entry.own;
            if let Some(mode) = change.mode {
                attrs.mode = mode & bvfs_proto::MODE_BITS;
            }
            if let Some(mtime) = change.mtime_ns {
                if entry.node.kind == NodeKind::Directory {
                    own.dir_mtime_ns = Some(mtime);
                } else {
                    attrs.mtime_ns = mtime;
                }
            }
            if let Some(atime) = change.atime_ns {
                own.atime_ns = Some(atime);
            }
            if let Some(uid) = change.uid {
                own.uid = Some(uid);
            }
            if let Some(gid) = change.gid {
                own.gid = Some(gid);
            }
            own.ctime_ns = Some(now);
            let entry = if attrs == entry.node.attrs {
                entry
            } else if entry.node.id.is_root() {
                // The root's mode is the mount's: it has no node on the server to carry it.
                return Err(LocalError::Invalid(
                    "the mount's root keeps its permission bits",
                ));
            } else {
                t.local_set_attrs(ino, attrs)?
            };
            t.local_set_own(ino, own)?;
            Ok(LocalEntry { own, ..entry })
        })
    }

    /// Renames `ino` to `name` in `new_parent` (rename(2) semantics; see [`crate::state::Txn::local_rename`]).
    pub fn rename(
        &self,
        ino: u64,
        new_parent: u64,
        name: &str,
        no_replace: bool,
    ) -> EngineResult<()> {
        let now = self.clock.now_ns();
        let replaced = self.mutate(|t| {
            let old_parent = t
                .local_by_ino(ino)?
                .and_then(|e| t.local_ino(e.node.parent).transpose())
                .transpose()?;
            let replaced = t.local_rename(ino, new_parent, name, no_replace)?;
            // The node's change time and both directories' times move (kept on this device).
            t.local_touch_ctime(ino, now)?;
            t.local_touch_dir(new_parent, now)?;
            if let Some(old_parent) = old_parent {
                t.local_touch_dir(old_parent, now)?;
            }
            Ok(replaced)
        })?;
        if let Some(replaced) = replaced {
            self.config
                .faults
                .reach(crate::faults::FaultPoint::Unlinked);
            self.drop_local_copy(replaced.ino)?;
        }
        Ok(())
    }

    /// Removes a file or symlink (unlink) or an empty directory (rmdir).
    pub fn remove(&self, parent: u64, name: &str, dir: bool) -> EngineResult<LocalEntry> {
        let now = self.clock.now_ns();
        let entry = self.mutate(|t| {
            let entry = t.local_lookup(parent, name)?.ok_or(LocalError::NotFound)?;
            match (dir, entry.node.kind == NodeKind::Directory) {
                (true, false) => return Err(LocalError::NotDir),
                (false, true) => return Err(LocalError::IsDir),
                _ => {}
            }
            let removed = t.local_remove(entry.ino)?;
            t.local_touch_dir(parent, now)?;
            Ok(removed)
        })?;
        self.config
            .faults
            .reach(crate::faults::FaultPoint::Unlinked);
        self.drop_local_copy(entry.ino)?;
        Ok(entry)
    }

    /// Pins (keeps local, recursively, inherited by new children) or unpins `ino`. Pinned files' chunks
    /// are held in the cache and fetched in the background. Returns how many nodes changed.
    pub fn set_pinned(&self, ino: u64, pinned: bool) -> EngineResult<usize> {
        let changed = self
            .state
            .lock()
            .transaction(|t| t.local_set_pinned(ino, pinned))?;
        let mut fetch = Vec::new();
        for entry in changed.iter().filter(|e| e.node.kind == NodeKind::File) {
            let ids = match (pinned, self.manifest(entry)) {
                (true, Ok(manifest)) => {
                    Some(manifest.chunks.iter().map(|c| c.id).collect::<Vec<_>>())
                }
                _ => None,
            };
            fetch.extend(ids.iter().flatten().copied());
            self.pin_hold(entry.ino, ids);
        }
        self.fetcher.prefetch(fetch);
        Ok(changed.len())
    }

    /// Makes `ids` the chunks held for the pinned file `ino` (`None`: it holds nothing any more).
    pub(crate) fn pin_hold(&self, ino: u64, ids: Option<Vec<crate::chunking::ChunkId>>) {
        let mut holds = self.pin_holds.lock();
        if let Some(ids) = &ids {
            self.cache.hold(ids.iter().copied());
        }
        let previous = match ids {
            Some(ids) => holds.insert(ino, ids),
            None => holds.remove(&ino),
        };
        if let Some(previous) = previous {
            self.cache.release(previous);
        }
    }

    // ----- content -----

    /// Holds in the cache every chunk of every pinned file: pinned content is never evicted. Holds live
    /// in memory, so this runs at every start.
    fn hold_pinned_content(&self) -> EngineResult<()> {
        let pinned: Vec<(u64, Vec<u8>)> = {
            let state = self.state.lock();
            let mut stmt = state
                .conn()
                .prepare("SELECT ino, content FROM local WHERE pinned = 1 AND kind = 2 AND content IS NOT NULL")
                .map_err(|e| state.sql_err(e))?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)))
                .map_err(|e| state.sql_err(e))?;
            rows.collect::<Result<_, _>>()
                .map_err(|e| state.sql_err(e))?
        };
        for (ino, hash) in pinned {
            let manifest = match crate::model::ContentHash::from_slice(&hash) {
                Some(hash) => self.state.lock().manifest(&hash)?,
                None => None,
            };
            if let Some(manifest) = manifest {
                self.pin_hold(ino, Some(manifest.chunks.iter().map(|c| c.id).collect()));
            }
        }
        Ok(())
    }

    /// Reads `[offset, offset+len)` of `ino`'s current content: from the materialized copy, else from
    /// chunks (cache, else server).
    pub async fn read(&self, entry: &LocalEntry, offset: u64, len: u32) -> EngineResult<Vec<u8>> {
        let open = self.open_read(entry.ino)?;
        match &open.source {
            crate::content::ReadSource::Copy(file) => Ok(read_file_range(file, offset, len)?),
            crate::content::ReadSource::Chunks(manifest) => {
                let offsets = manifest.offsets();
                Ok(self.fetcher.read(manifest, &offsets, offset, len).await?)
            }
        }
    }

    // ----- the bulk-delete brake -----

    /// Deletes the brake holds: (side that would lose the node, path).
    pub fn held_deletes(&self) -> EngineResult<Vec<(String, String)>> {
        Ok(self.state.lock().read(|t| t.held_deletes())?)
    }

    /// Deletes made here that the server has not taken yet, and what the brake weighs them against:
    /// a platform that can refuse a delete before it happens (ProjFS) keeps them under the brake.
    /// Costs grow with the pending changes, not with the namespace.
    pub fn pending_deletes(&self) -> EngineResult<PendingDeletes> {
        let state = self.state.lock();
        let count = |sql: &str| -> EngineResult<u64> {
            Ok(state
                .conn()
                .query_row(sql, [], |r| r.get::<_, i64>(0))
                .map_err(|e| state.sql_err(e))? as u64)
        };
        let unsynced = count(
            "SELECT count(*) FROM changed c WHERE NOT EXISTS (SELECT 1 FROM local l WHERE l.id = c.id) \
             AND EXISTS (SELECT 1 FROM synced s WHERE s.id = c.id)",
        )?;
        let held = count("SELECT count(*) FROM held_deletes")?;
        let namespace_size =
            crate::round::brake_namespace_size(&self.config.brake, &state.tree(Table::Remote))?;
        Ok(PendingDeletes {
            unsynced,
            held,
            namespace_size,
        })
    }

    /// What the last plan left as it is and why: remote names this platform cannot show, names
    /// that collide after its folding, nodes under those, held moves. They stay remote-only and are
    /// planned again with every round, so this is current after each round.
    pub fn reported(&self) -> Vec<crate::planner::Report> {
        self.reported.lock().clone()
    }

    /// Confirms or rejects every held delete; returns how many there were.
    pub fn resolve_held_deletes(&self, confirm: bool) -> EngineResult<usize> {
        let ids = self.ids.clone();
        let n = self
            .state
            .lock()
            .transaction(|t| t.resolve_held_deletes(confirm, || ids.new_id()))?;
        self.wake.notify_one();
        Ok(n)
    }

    // ----- status -----

    /// A summary for `bvfs status` and the mount's xattrs.
    pub fn status(&self) -> EngineResult<Status> {
        let state = self.state.lock();
        let conn = state.conn();
        let count = |sql: &str| -> EngineResult<u64> {
            Ok(conn
                .query_row(sql, [], |r| r.get::<_, i64>(0))
                .map_err(|e| state.sql_err(e))? as u64)
        };
        Ok(Status {
            online: self.is_online(),
            cursor: state.meta_u64(crate::state::pull::CURSOR)?.unwrap_or(0),
            pending_changes: count("SELECT count(*) FROM changed")?,
            conflicts: count("SELECT count(*) FROM conflicts")?,
            held_deletes: count("SELECT count(*) FROM held_deletes")?,
            errors: count("SELECT count(*) FROM sync_errors")?,
            local_nodes: state.tree(Table::Local).count()?,
            cache: self.cache.usage(),
        })
    }
}

/// Opens the state database; a missing one is created, a corrupt one is moved aside and replaced (the
/// engine then rebuilds from the server and its materialized copies). A new database is marked for
/// rebuild at once, in its first transaction, so a crash right after cannot lose the mark.
fn open_or_rebuild(path: &Path) -> EngineResult<State> {
    let existed = path.exists();
    let mark = |mut state: State| -> EngineResult<State> {
        state.transaction(|t| t.set_meta(crate::recover::REBUILD_PENDING, 1i64))?;
        Ok(state)
    };
    match State::open(path) {
        Ok(state) if existed => Ok(state),
        Ok(state) => mark(state),
        Err(e @ StateError::Schema(_)) => Err(e.into()),
        Err(e) => {
            let aside = path.with_extension(format!(
                "corrupt-{}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0)
            ));
            tracing::error!(
                "the engine database cannot be used ({e}); keeping it as {} and rebuilding",
                aside.display()
            );
            std::fs::rename(path, &aside)?;
            for suffix in ["-wal", "-shm"] {
                let side = PathBuf::from(format!("{}{suffix}", path.display()));
                let _ = std::fs::remove_file(side);
            }
            mark(State::open(path)?)
        }
    }
}

/// What a new node starts with ([`Engine::create_with`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewNode {
    /// Permission bits (symlinks are always 0777).
    pub mode: u32,
    /// Owner on this device; `None`: the mounting user.
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub symlink_target: Option<String>,
}

/// A metadata change ([`Engine::set_meta`]); `None` fields stay as they are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetaChange {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub atime_ns: Option<i64>,
    pub mtime_ns: Option<i64>,
}

/// Deletes waiting for the server ([`Engine::pending_deletes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingDeletes {
    /// Nodes deleted here (SYNCED has them, LOCAL no longer) that the server has not taken yet.
    pub unsynced: u64,
    /// Deletes the brake holds for confirmation.
    pub held: u64,
    /// The namespace's size as the brake's fraction rule counts it (capped where the rule stops
    /// mattering).
    pub namespace_size: u64,
}

/// The engine's summary.
#[derive(Debug, Clone)]
pub struct Status {
    pub online: bool,
    pub cursor: u64,
    pub pending_changes: u64,
    pub conflicts: u64,
    pub held_deletes: u64,
    pub errors: u64,
    pub local_nodes: u64,
    pub cache: crate::cache::CacheUsage,
}

fn read_file_range(file: &std::fs::File, offset: u64, len: u32) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0; len as usize];
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

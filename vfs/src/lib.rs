//! The platform-neutral filesystem core of bvfs.
//!
//! [`Vfs`] turns filesystem calls (by inode number, as FUSE and ProjFS speak) into engine calls:
//! lookups and listings read the LOCAL tree, so `stat`, `ls` and `find` never download content;
//! reads come from a materialized copy or from chunks (hydrating only what they touch, with
//! read-ahead); the first write materializes the file (copy-on-write; `O_TRUNC` downloads nothing);
//! the last close hands the new content to the engine. Every call is blocking and thread-safe:
//! platform adapters run the slow ones (reads, opens, fsyncs) off their dispatch threads.
//!
//! Errors are errno values ([`Errno`]), chosen where POSIX says so.
//!
//! [`projection`] speaks ProjFS's path-based callback model (Windows) over the same core.

mod attr;
mod dir;
mod errno;
mod file;
pub mod guard;
pub mod projection;
#[cfg(test)]
mod testing;
mod xattr;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bvfs_engine::Engine;
use parking_lot::Mutex;

pub use attr::{Attr, FileKind, SetAttr};
/// The longest name (bytes) a node may have; longer ones are `ENAMETOOLONG` everywhere.
pub use bvfs_proto::names::MAX_NAME_BYTES;
pub use dir::DirEntry;
pub use errno::{Errno, VfsResult};
pub use file::OpenMode;
pub use xattr::XATTR_NAMES;

/// How long the kernel may cache names and attributes. Long, because the engine invalidates them
/// explicitly when a remote change lands.
pub const TTL: Duration = Duration::from_secs(300);

/// Who asks: the calling process's user and group (new nodes belong to them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

/// Mount-wide settings.
#[derive(Debug, Clone)]
pub struct VfsOptions {
    /// Refuse every change with `EROFS`.
    pub read_only: bool,
    /// Owner shown for every node (the mounting user).
    pub uid: u32,
    pub gid: u32,
}

/// An open file or directory.
enum Handle {
    File(file::FileHandle),
    Dir(dir::DirHandle),
}

/// The filesystem core over one engine.
pub struct Vfs {
    engine: Arc<Engine>,
    runtime: tokio::runtime::Handle,
    options: VfsOptions,
    handles: Mutex<HashMap<u64, Arc<Mutex<Handle>>>>,
    next_handle: AtomicU64,
    /// Callers that may not hydrate ([`Vfs::set_hydration_guard`]); none by default.
    guard: std::sync::OnceLock<guard::HydrationGuard>,
}

impl Vfs {
    /// The mounting user, who owns every node that does not say otherwise.
    pub fn owner(&self) -> Caller {
        Caller {
            uid: self.options.uid,
            gid: self.options.gid,
        }
    }

    /// A core over `engine`; `runtime` runs its network work (not the calling threads).
    pub fn new(engine: Arc<Engine>, runtime: tokio::runtime::Handle, options: VfsOptions) -> Self {
        Self {
            engine,
            runtime,
            options,
            handles: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            guard: std::sync::OnceLock::new(),
        }
    }

    /// Keeps the processes `guard` names from hydrating content (see [`guard`]). Set once, before
    /// the mount serves; later calls are ignored.
    pub fn set_hydration_guard(&self, guard: guard::HydrationGuard) {
        let _ = self.guard.set(guard);
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    fn writable(&self) -> VfsResult<()> {
        if self.options.read_only {
            return Err(Errno::EROFS);
        }
        Ok(())
    }

    fn insert_handle(&self, handle: Handle) -> u64 {
        let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().insert(fh, Arc::new(Mutex::new(handle)));
        fh
    }

    fn handle(&self, fh: u64) -> VfsResult<Arc<Mutex<Handle>>> {
        self.handles.lock().get(&fh).cloned().ok_or(Errno::EBADF)
    }

    fn take_handle(&self, fh: u64) -> VfsResult<Arc<Mutex<Handle>>> {
        self.handles.lock().remove(&fh).ok_or(Errno::EBADF)
    }

    /// Kernel-cache invalidations the engine queued since the last call.
    pub fn take_invalidations(&self) -> Vec<bvfs_engine::Invalidation> {
        self.engine.take_invalidations()
    }

    /// Filesystem statistics: space of the cache's filesystem, and the namespace's node count.
    pub fn statfs(&self) -> VfsResult<Statfs> {
        let status = self.engine.status().map_err(Errno::from)?;
        let (blocks, bfree, bavail, bsize) =
            disk_space(self.engine.cache().dir()).unwrap_or((0, 0, 0, 4096));
        Ok(Statfs {
            blocks,
            bfree,
            bavail,
            // Inodes are not a limited resource here: report plenty free, and a total that is the
            // used ones plus the free ones (`df -i` computes used = files - ffree).
            files: status.local_nodes.saturating_add(FREE_INODES),
            ffree: FREE_INODES,
            bsize,
            namelen: bvfs_proto::names::MAX_NAME_BYTES as u32,
        })
    }
}

/// The free inode count `statfs` reports.
const FREE_INODES: u64 = u32::MAX as u64;

/// What `statfs` reports.
#[derive(Debug, Clone, Copy)]
pub struct Statfs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
}

fn disk_space(path: &std::path::Path) -> Option<(u64, u64, u64, u32)> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is a valid NUL-terminated string and stat a valid out-pointer.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    Some((
        stat.f_blocks,
        stat.f_bfree,
        stat.f_bavail,
        stat.f_frsize as u32,
    ))
}

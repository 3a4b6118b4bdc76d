//! The Linux FUSE adapter: `fuser`'s `Filesystem` over [`bvfs_vfs::Vfs`].
//!
//! fuser 0.18 calls every op with `&self` from its dispatch threads. Ops that can wait on the network
//! or on heavy local I/O (open, read, fsync, release, truncation) move to tokio's blocking pool and
//! reply from there, so a cold read of one file never stalls `ls` elsewhere. Metadata ops answer from
//! the local database at once.
//!
//! Kernel caches use long TTLs; [`spawn_invalidator`] forwards the engine's invalidations through
//! fuser's notifier from its own thread (never from inside a callback, which could deadlock).

use std::ffi::OsStr;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bvfs_vfs::{Attr, Caller, Errno as VfsErrno, FileKind, OpenMode, SetAttr, TTL, Vfs};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, Notifier, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};

/// The filesystem handed to fuser.
pub struct BvfsFuse {
    vfs: Arc<Vfs>,
    runtime: tokio::runtime::Handle,
    offloaded: Arc<Offloaded>,
}

impl BvfsFuse {
    /// `offloaded` counts the ops still running on the blocking pool, which outlive fuser's session:
    /// whoever ends the mount waits for them before the last sync (a `release` that hands over a
    /// file's new content may still be running when the kernel has already let the unmount through).
    pub fn new(vfs: Arc<Vfs>, runtime: tokio::runtime::Handle, offloaded: Arc<Offloaded>) -> Self {
        Self {
            vfs,
            runtime,
            offloaded,
        }
    }

    /// Runs `work` on the blocking pool; it replies itself.
    fn offload(&self, work: impl FnOnce(&Vfs) + Send + 'static) {
        let vfs = self.vfs.clone();
        let running = self.offloaded.start();
        self.runtime.spawn_blocking(move || {
            work(&vfs);
            drop(running);
        });
    }
}

/// How many offloaded ops are still running, and a way to wait until none is.
#[derive(Debug, Default)]
pub struct Offloaded {
    running: parking_lot::Mutex<usize>,
    idle: parking_lot::Condvar,
}

/// One running offloaded op; dropping it (even by a panic) ends it.
struct Running(Arc<Offloaded>);

impl Drop for Running {
    fn drop(&mut self) {
        let mut running = self.0.running.lock();
        *running -= 1;
        if *running == 0 {
            self.0.idle.notify_all();
        }
    }
}

impl Offloaded {
    fn start(self: &Arc<Self>) -> Running {
        *self.running.lock() += 1;
        Running(self.clone())
    }

    /// Waits until no offloaded op is running, or `timeout` passes; returns how many still run.
    pub fn wait_idle(&self, timeout: Duration) -> usize {
        let deadline = std::time::Instant::now() + timeout;
        let mut running = self.running.lock();
        while *running > 0 {
            if self.idle.wait_until(&mut running, deadline).timed_out() {
                break;
            }
        }
        *running
    }
}

fn errno(e: VfsErrno) -> Errno {
    Errno::from_i32(e.0)
}

fn file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::File => FileType::RegularFile,
        FileKind::Directory => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
    }
}

fn file_attr(attr: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(attr.ino),
        size: attr.size,
        blocks: attr.blocks,
        atime: attr.atime,
        mtime: attr.mtime,
        ctime: attr.ctime,
        crtime: attr.ctime,
        kind: file_type(attr.kind),
        perm: attr.perm,
        nlink: attr.nlink,
        uid: attr.uid,
        gid: attr.gid,
        rdev: attr.rdev,
        blksize: 64 * 1024,
        flags: 0,
    }
}

/// A name from the kernel as a BitVault name. One longer than 255 bytes is `ENAMETOOLONG` on every
/// call, as on a local filesystem. Names are UTF-8 (the wire carries strings), so other bytes name
/// nothing that exists (`ENOENT` for lookups and removals) and cannot be created (`EILSEQ`,
/// "illegal byte sequence", for creates and rename targets).
fn name_str(name: &OsStr) -> Result<&str, Errno> {
    if name.len() > bvfs_vfs::MAX_NAME_BYTES {
        return Err(Errno::ENAMETOOLONG);
    }
    name.to_str().ok_or(Errno::ENOENT)
}

/// A name for something new: see [`name_str`].
fn new_name_str(name: &OsStr) -> Result<&str, Errno> {
    if name.len() > bvfs_vfs::MAX_NAME_BYTES {
        return Err(Errno::ENAMETOOLONG);
    }
    name.to_str().ok_or(Errno::EILSEQ)
}

/// Who made the request (new nodes belong to them).
fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
    }
}

fn time_ns(time: TimeOrNow) -> i64 {
    let at = match time {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    };
    match at.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i64,
        Err(e) => -(e.duration().as_nanos() as i64),
    }
}

fn reply_entry(reply: ReplyEntry, result: Result<Attr, VfsErrno>) {
    match result {
        Ok(attr) => reply.entry(&TTL, &file_attr(&attr), Generation(0)),
        Err(e) => reply.error(errno(e)),
    }
}

fn reply_empty(reply: ReplyEmpty, result: Result<(), VfsErrno>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(e)),
    }
}

fn reply_xattr(reply: ReplyXattr, size: u32, result: Result<Vec<u8>, VfsErrno>) {
    match result {
        Ok(value) if size == 0 => reply.size(value.len() as u32),
        Ok(value) if value.len() > size as usize => reply.error(Errno::ERANGE),
        Ok(value) => reply.data(&value),
        Err(e) => reply.error(errno(e)),
    }
}

impl Filesystem for BvfsFuse {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // Larger reads and writes mean fewer round trips through the kernel.
        let _ = config.set_max_write(1024 * 1024);
        let _ = config.set_max_readahead(128 * 1024);
        for wanted in [
            // open(O_TRUNC) arrives as one open with O_TRUNC, not open + truncate: no download.
            InitFlags::FUSE_ATOMIC_O_TRUNC,
            // ls -l and find get attributes with the listing, on every page of it: without
            // READDIRPLUS_AUTO, whose heuristic lists a large directory's later pages without
            // attributes, so that a `stat` of each of their entries costs a LOOKUP (find + stat
            // over 100,000 files in directories of 1,000 made 61,706 requests; 20,000 files in
            // directories of 200 made 406). bvfs computes the attributes for every page anyway.
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_PARALLEL_DIROPS,
            // Cached pages go when a getattr shows a new size or mtime (remote changes).
            InitFlags::FUSE_AUTO_INVAL_DATA,
        ] {
            if config.add_capabilities(wanted).is_err() {
                tracing::debug!(?wanted, "the kernel does not offer this FUSE capability");
            }
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match name_str(name) {
            Ok(name) => reply_entry(reply, self.vfs.lookup(parent.0, name)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.vfs.getattr(ino.0) {
            Ok(attr) => reply.attr(&TTL, &file_attr(&attr)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let change = SetAttr {
            size,
            mode: mode.map(|m| m & 0o7777),
            uid,
            gid,
            atime_ns: atime.map(time_ns),
            mtime_ns: mtime.map(time_ns),
        };
        // Truncation may download (when not to zero): off the dispatch thread.
        self.offload(move |vfs| match vfs.setattr(ino.0, change) {
            Ok(attr) => reply.attr(&TTL, &file_attr(&attr)),
            Err(e) => reply.error(errno(e)),
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.vfs.readlink(ino.0) {
            Ok(target) => reply.data(target.as_bytes()),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        match new_name_str(name) {
            Ok(name) => reply_entry(reply, self.vfs.mkdir(parent.0, name, mode, caller(req))),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match name_str(name) {
            Ok(name) => reply_empty(reply, self.vfs.remove(parent.0, name, false)),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match name_str(name) {
            Ok(name) => reply_empty(reply, self.vfs.remove(parent.0, name, true)),
            Err(e) => reply.error(e),
        }
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        match (new_name_str(link_name), target.to_str()) {
            (Ok(name), Some(target)) => {
                reply_entry(reply, self.vfs.symlink(parent.0, name, target, caller(req)))
            }
            _ => reply.error(Errno::EILSEQ),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.contains(RenameFlags::RENAME_EXCHANGE)
            || flags.contains(RenameFlags::RENAME_WHITEOUT)
        {
            // An atomic swap of two names cannot be one BitVault commit of independent moves.
            reply.error(Errno::EINVAL);
            return;
        }
        let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        match (name_str(name), new_name_str(newname)) {
            (Ok(name), Ok(newname)) => reply_empty(
                reply,
                self.vfs
                    .rename(parent.0, name, newparent.0, newname, no_replace),
            ),
            (Err(e), _) | (_, Err(e)) => reply.error(e),
        }
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        // Hard links have no BitVault representation.
        reply.error(Errno::EPERM);
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        match new_name_str(name) {
            Ok(name) => reply_entry(
                reply,
                self.vfs.mknod(parent.0, name, mode, rdev, caller(req)),
            ),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let mode = OpenMode::from_flags(flags.0);
        self.offload(move |vfs| match vfs.open(ino.0, mode) {
            // Cached pages are kept unless the engine changed the content since the last open (then
            // the kernel drops them at this open). A remote version never arrives under an inode that
            // has handles open: it gets a new inode, so one page cache never mixes two versions.
            Ok((fh, true)) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
            Ok((fh, false)) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno(e)),
        });
    }

    fn read(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        // The reader's pid, for the hydration guard (indexers must not download everything).
        let pid = req.pid();
        self.offload(move |vfs| match vfs.read_by(fh.0, offset, size, pid) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errno(e)),
        });
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.vfs.write(fh.0, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.vfs.fallocate(fh.0, offset, length, mode));
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Content is committed when the last handle is released, or on fsync.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.offload(move |vfs| reply_empty(reply, vfs.release(fh.0)));
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.offload(move |vfs| reply_empty(reply, vfs.fsync(fh.0)));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.vfs.opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let result = self.vfs.readdir(fh.0, offset, |entry| {
            reply.add(
                INodeNo(entry.ino),
                entry.offset,
                file_type(entry.kind),
                &entry.name,
            )
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let result = self.vfs.readdir(fh.0, offset, |entry| {
            let attr = file_attr(&entry.attr);
            reply.add(
                INodeNo(entry.ino),
                entry.offset,
                &entry.name,
                &TTL,
                &attr,
                Generation(0),
            )
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.vfs.releasedir(fh.0));
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // The mount's changes are atomic at once and durable from here (an fsync of the log).
        self.offload(move |vfs| reply_empty(reply, vfs.fsyncdir()));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.vfs.statfs() {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.bsize,
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        // Attribute names are not path components: their limits are the vfs's (ERANGE).
        match name.to_str() {
            Some(name) => reply_empty(reply, self.vfs.setxattr(ino.0, name, value, flags)),
            None => reply.error(Errno::ENOTSUP),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match name.to_str() {
            Some(name) => reply_xattr(reply, size, self.vfs.getxattr(ino.0, name)),
            None => reply.error(Errno::ENODATA),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        reply_xattr(reply, size, self.vfs.listxattr(ino.0));
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match name.to_str() {
            Some(name) => reply_empty(reply, self.vfs.removexattr(ino.0, name)),
            None => reply.error(Errno::ENODATA),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // Permission checks are the kernel's (the mount is private to its user unless --allow-other).
        reply_empty(reply, self.vfs.getattr(ino.0).map(drop));
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let name = match new_name_str(name) {
            Ok(name) => name.to_string(),
            Err(e) => return reply.error(e),
        };
        match self.vfs.create(parent.0, &name, mode, caller(req)) {
            Ok((attr, fh)) => reply.created(
                &TTL,
                &file_attr(&attr),
                Generation(0),
                FileHandle(fh),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(errno(e)),
        }
    }
}

/// Forwards the engine's invalidations to the kernel until `stop` is set.
pub fn spawn_invalidator(
    vfs: Arc<Vfs>,
    notifier: Notifier,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("bvfs-invalidate".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let (items, through) = vfs.engine().take_invalidations_for_delivery();
                for item in items {
                    let result = match &item {
                        bvfs_engine::Invalidation::Inode(ino) => {
                            notifier.inval_inode(INodeNo(*ino), 0, 0)
                        }
                        bvfs_engine::Invalidation::Entry { parent, name } => {
                            notifier.inval_entry(INodeNo(*parent), OsStr::new(name))
                        }
                    };
                    // ENOENT: the kernel had nothing cached for it, which is fine.
                    if let Err(e) = result
                        && e.raw_os_error() != Some(libc::ENOENT)
                    {
                        tracing::debug!(?item, "kernel invalidation failed: {e}");
                    }
                }
                vfs.engine().invalidations_delivered(through);
                std::thread::sleep(Duration::from_millis(20));
            }
            vfs.engine().stop_waiting_for_invalidations();
        })
        .expect("spawn the invalidation thread")
}

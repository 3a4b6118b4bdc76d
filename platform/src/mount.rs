//! Mounting and unmounting, and cleaning up after a daemon that died while mounted.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bvfs_vfs::Vfs;
use fuser::{BackgroundSession, Config, MountOption, SessionACL};

use crate::fuse::{BvfsFuse, Offloaded, spawn_invalidator};

/// How to mount.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// Let other users enter the mount (off: only the mounting user may).
    pub allow_other: bool,
    pub read_only: bool,
    /// Dispatch threads.
    pub threads: usize,
}

impl Default for MountOptions {
    fn default() -> Self {
        Self {
            allow_other: false,
            read_only: false,
            threads: 4,
        }
    }
}

/// A live mount; [`Mounted::unmount`] ends it.
pub struct Mounted {
    session: Option<BackgroundSession>,
    stop: Arc<AtomicBool>,
    invalidator: Option<std::thread::JoinHandle<()>>,
    offloaded: Arc<Offloaded>,
    vfs: Arc<Vfs>,
    mountpoint: PathBuf,
}

/// How long an unmount waits for ops still running on the blocking pool (a `release` chunking a large
/// file, a read waiting on the network, which times out well within this).
const OFFLOADED_GRACE: std::time::Duration = std::time::Duration::from_secs(120);

/// Mounts `vfs` at `mountpoint`. Returns when the kernel has completed the handshake: the mount is
/// usable from then on.
pub fn mount(
    vfs: Arc<Vfs>,
    runtime: tokio::runtime::Handle,
    mountpoint: &Path,
    options: &MountOptions,
) -> io::Result<Mounted> {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("bvfs".into()),
        MountOption::Subtype("bvfs".into()),
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::NoAtime,
        // The kernel checks permissions against the modes and owners bvfs reports (as a local
        // filesystem does), including who may chmod, chown and set times.
        MountOption::DefaultPermissions,
        if options.read_only {
            MountOption::RO
        } else {
            MountOption::RW
        },
    ];
    config.acl = if options.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(options.threads.max(1));
    config.clone_fd = true;
    let offloaded = Arc::new(Offloaded::default());
    let fs = BvfsFuse::new(vfs.clone(), runtime, offloaded.clone());
    let session = fuser::Session::new(fs, mountpoint, &config)?.spawn()?;
    let stop = Arc::new(AtomicBool::new(false));
    let invalidator = spawn_invalidator(vfs.clone(), session.notifier(), stop.clone());
    Ok(Mounted {
        session: Some(session),
        stop,
        invalidator: Some(invalidator),
        offloaded,
        vfs,
        mountpoint: mountpoint.to_owned(),
    })
}

impl Mounted {
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Whether the session ended on its own (someone ran `umount`).
    pub fn is_finished(&self) -> bool {
        self.session.as_ref().is_none_or(|s| s.guard.is_finished())
    }

    /// Unmounts (if still mounted) and waits for the dispatch threads.
    pub fn unmount(mut self) -> io::Result<()> {
        self.finish()
    }

    fn finish(&mut self) -> io::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.invalidator.take() {
            let _ = handle.join();
        }
        let result = match self.session.take() {
            // Unmounted from outside (`bvfs umount`): only the threads are left to join.
            Some(session) if session.guard.is_finished() || !is_fuse_mounted(&self.mountpoint) => {
                session.join()
            }
            Some(session) => session.umount_and_join(),
            None => Ok(()),
        };
        // The kernel may let an unmount through while a `release` it sent is still being handled.
        let still = self.offloaded.wait_idle(OFFLOADED_GRACE);
        if still > 0 {
            tracing::warn!("{still} file operation(s) still running after the unmount");
        }
        let released = self.vfs.release_all();
        if released > 0 {
            tracing::info!("released {released} handle(s) the kernel left open at the unmount");
        }
        result
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(e) = self.finish() {
            tracing::warn!("unmounting {}: {e}", self.mountpoint.display());
        }
    }
}

/// Whether a FUSE filesystem is mounted at `path` (per `/proc/mounts`).
pub fn is_fuse_mounted(path: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return false;
    };
    let wanted = path.to_string_lossy();
    mounts.lines().any(|line| {
        let mut fields = line.split_whitespace();
        let (_, Some(point), Some(fstype)) = (fields.next(), fields.next(), fields.next()) else {
            return false;
        };
        // /proc/mounts escapes spaces and other characters as octal.
        point.replace("\\040", " ") == wanted && fstype.starts_with("fuse")
    })
}

/// If `path` holds a FUSE mount whose daemon is gone (every access fails with ENOTCONN), unmounts it
/// and returns true.
pub fn clean_stale_mount(path: &Path) -> io::Result<bool> {
    if !is_fuse_mounted(path) {
        return Ok(false);
    }
    // statfs always asks the daemon (a stat may be answered from the kernel's attribute cache,
    // which a mount with long TTLs and default_permissions keeps after its daemon died).
    let probe = std::fs::metadata(path).and_then(|_| statfs(path));
    match probe {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            tracing::warn!(
                "{} is a stale mount of a daemon that is gone; unmounting it",
                path.display()
            );
            unmount(path, true)?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// `statfs(2)` of `path`, for its error only.
fn statfs(path: &Path) -> io::Result<()> {
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: a valid NUL-terminated path and a zeroed statfs buffer the call fills.
    let rc = unsafe {
        let mut buf: libc::statfs = std::mem::zeroed();
        libc::statfs(c_path.as_ptr(), &mut buf)
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Unmounts `path`: umount2(2) as root, else `fusermount3 -u`. `lazy` detaches a busy mount.
pub fn unmount(path: &Path, lazy: bool) -> io::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let c_path = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
        let flags = if lazy { libc::MNT_DETACH } else { 0 };
        // SAFETY: c_path is a valid NUL-terminated path.
        if unsafe { libc::umount2(c_path.as_ptr(), flags) } != 0 {
            return Err(io::Error::last_os_error());
        }
        return Ok(());
    }
    let mut command = std::process::Command::new("fusermount3");
    command.arg("-u");
    if lazy {
        command.arg("-z");
    }
    let status = command.arg(path).status()?;
    if !status.success() {
        return Err(io::Error::other(format!(
            "fusermount3 -u {} failed ({status})",
            path.display()
        )));
    }
    Ok(())
}

//! Windows: the namespace as a ProjFS virtualization root, through `windows-projfs` 0.1.8.
//!
//! Compiled only with `cfg(all(windows, feature = "projfs"))`. The `projfs` feature is off by
//! default because `windows-projfs` is GPL-2.0: a binary built with it is GPL-2.0 as a whole.
//! **Not compiled or tested on the project's machines** (no Windows target there): it is written
//! against the crate's 0.1.8 source (`ProjectedFileSystem::new`, `ProjectedFileSystemSource`,
//! `Notification`), and all of its logic lives in the platform-neutral
//! [`bvfs_vfs::projection`] layer, which is tested on Linux by issuing the same callbacks.
//!
//! This adapter only translates: paths to ProjFS strings, [`ProjectedEntry`] to the crate's
//! `DirectoryEntry` (times as FILETIME), errno values to Win32 error codes, notifications to the
//! projection's calls and vetoes to `ControlFlow::Break` (the crate then fails the operation with
//! `STATUS_CANNOT_DELETE`).
//!
//! What the crate cannot do (see `docs/windows-projfs.md`):
//! - update or remove a placeholder or a hydrated file after a remote change
//!   (`PrjUpdateFileIfNeeded`, `PrjDeleteFile` through the `windows` crate would): the changed
//!   paths are logged ([`Projection::take_stale_paths`]), and ProjFS keeps showing what it cached;
//! - keep enumeration sessions of its own kind: it asks for whole listings and sorts them itself,
//!   so [`Projection::list_all`] reads a directory in batches into one list per enumeration;
//! - project symlinks (it writes no `PRJ_EXTENDED_INFO`): they are left out of listings;
//! - run callbacks concurrently: it holds one lock around every callback.

use std::io::{self, Read};
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bvfs_vfs::projection::data::ReadFailed;
use bvfs_vfs::projection::{ProjectedEntry, Projection, Veto};
use bvfs_vfs::{Errno, FileKind};
use windows_projfs::{
    DirectoryEntry, DirectoryInfo, FileCloseAction, FileInfo, FileRenameInfo, Notification,
    ProjectedFileSystem, ProjectedFileSystemSource,
};

/// Win32 file attributes (`winnt.h`).
const FILE_ATTRIBUTE_READONLY: u32 = 0x1;
const FILE_ATTRIBUTE_DIRECTORY: u32 = 0x10;
const FILE_ATTRIBUTE_NORMAL: u32 = 0x80;

/// Win32 error codes (`winerror.h`) the projection's errno values map to.
const ERROR_FILE_NOT_FOUND: i32 = 2;
const ERROR_ACCESS_DENIED: i32 = 5;
const ERROR_WRITE_PROTECT: i32 = 19;
const ERROR_INVALID_PARAMETER: i32 = 87;
const ERROR_DISK_FULL: i32 = 112;
const ERROR_DIRECTORY: i32 = 267;
const ERROR_IO_DEVICE: i32 = 1117;
const ERROR_NETWORK_UNREACHABLE: i32 = 1231;

/// 100-ns intervals from 1601-01-01 (FILETIME's epoch) to 1970-01-01.
const FILETIME_UNIX_EPOCH: u64 = 116_444_736_000_000_000;

/// How often the paths the engine changed are collected (and logged: the crate cannot apply them).
const STALE_EVERY: Duration = Duration::from_secs(1);

/// A running ProjFS virtualization of a projection's root. Dropping it stops ProjFS, which waits
/// for the callbacks in flight.
pub struct ProjfsMount {
    _fs: ProjectedFileSystem,
    stop: Arc<AtomicBool>,
}

impl Drop for ProjfsMount {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Starts ProjFS at `projection.root()` (created if missing; it keeps the placeholders and full
/// files of earlier runs) with `projection` as the provider.
pub fn mount(projection: Arc<Projection>) -> io::Result<ProjfsMount> {
    let root = projection.root().to_path_buf();
    std::fs::create_dir_all(&root)?;
    let source = ProjfsSource {
        projection: projection.clone(),
    };
    let fs = ProjectedFileSystem::new(&root, source)
        .map_err(|e| io::Error::other(format!("cannot start ProjFS at {}: {e}", root.display())))?;
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    std::thread::Builder::new()
        .name("bvfs-stale".into())
        .spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                for path in projection.take_stale_paths() {
                    tracing::debug!(
                        path = %path,
                        "changed by the engine; ProjFS keeps its cached view (windows-projfs cannot update placeholders)"
                    );
                }
                std::thread::sleep(STALE_EVERY);
            }
        })?;
    Ok(ProjfsMount { _fs: fs, stop })
}

/// The provider `windows-projfs` calls.
struct ProjfsSource {
    projection: Arc<Projection>,
}

impl ProjectedFileSystemSource for ProjfsSource {
    fn list_directory(&self, path: &Path) -> Vec<DirectoryEntry> {
        match self.projection.list_all(&projfs_path(path)) {
            Ok(entries) => entries.iter().filter_map(directory_entry).collect(),
            Err(e) => {
                tracing::warn!(path = %path.display(), errno = e.0, "cannot list");
                Vec::new()
            }
        }
    }

    fn get_directory_entry(&self, path: &Path) -> Option<DirectoryEntry> {
        let entry = self.projection.placeholder_info(&projfs_path(path)).ok()?;
        directory_entry(&entry)
    }

    fn stream_file_content(
        &self,
        path: &Path,
        byte_offset: usize,
        length: usize,
    ) -> io::Result<Box<dyn Read>> {
        let data = self
            .projection
            .file_data(&projfs_path(path))
            .map_err(win32_error)?;
        Ok(Box::new(Win32Errors(
            data.stream(byte_offset as u64, length as u64),
        )))
    }

    fn handle_notification(&self, notification: &Notification) -> ControlFlow<()> {
        let p = &self.projection;
        match notification {
            Notification::PreFileDelete(file) => veto(p.pre_delete(&projfs_path(&file.path))),
            Notification::PreFileRename(FileRenameInfo {
                source,
                destination,
            }) => veto(p.pre_rename(
                source.as_deref().map(projfs_path).as_deref(),
                destination.as_deref().map(projfs_path).as_deref(),
            )),
            Notification::PreSetHardlink(file) => veto(p.pre_hardlink(&projfs_path(&file.path))),
            Notification::FileCreated(file) => {
                applied(p.created(&projfs_path(&file.path), file.is_directory))
            }
            Notification::FileClosed(file, FileCloseAction::Modified) if !file.is_directory => {
                applied(p.modified(&projfs_path(&file.path)))
            }
            Notification::FileClosed(file, FileCloseAction::Deleted) => {
                applied(p.deleted(&projfs_path(&file.path)))
            }
            Notification::FileRenamed(FileRenameInfo {
                source,
                destination,
            }) => {
                // The crate drops ProjFS's isDirectory for renames: ask the disk.
                let is_dir = destination
                    .as_deref()
                    .is_some_and(|d| p.root().join(d).is_dir());
                applied(p.renamed(
                    source.as_deref().map(projfs_path).as_deref(),
                    destination.as_deref().map(projfs_path).as_deref(),
                    is_dir,
                ))
            }
            // Opens, closes without change, overwrites (the content follows with the close),
            // conversions to full files and hard links (refused before) need nothing.
            _ => ControlFlow::Continue(()),
        }
    }
}

/// A veto becomes `Break` (the crate fails the operation); letting it through, `Continue`.
fn veto(decision: Result<(), Veto>) -> ControlFlow<()> {
    match decision {
        Ok(()) => ControlFlow::Continue(()),
        Err(why) => {
            tracing::warn!("refused: {why}");
            ControlFlow::Break(())
        }
    }
}

/// Logs a notification the namespace could not take (it happened on disk regardless).
fn applied(result: Result<(), Errno>) -> ControlFlow<()> {
    if let Err(e) = result {
        tracing::warn!(
            errno = e.0,
            "a change made in the folder could not be recorded"
        );
    }
    ControlFlow::Continue(())
}

/// A path as the projection takes it (ProjFS's relative form, `\`-separated).
fn projfs_path(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// The crate's entry for `entry`; `None` for a symlink (the crate cannot project one).
fn directory_entry(entry: &ProjectedEntry) -> Option<DirectoryEntry> {
    let time = filetime(entry.mtime);
    let read_only = if entry.read_only {
        FILE_ATTRIBUTE_READONLY
    } else {
        0
    };
    match entry.kind {
        FileKind::Directory => Some(
            DirectoryInfo {
                directory_name: entry.name.clone(),
                directory_attributes: FILE_ATTRIBUTE_DIRECTORY | read_only,
                creation_time: time,
                last_access_time: time,
                last_write_time: time,
            }
            .into(),
        ),
        FileKind::File => Some(
            FileInfo {
                file_name: entry.name.clone(),
                file_size: entry.size,
                file_attributes: if read_only != 0 {
                    read_only
                } else {
                    FILE_ATTRIBUTE_NORMAL
                },
                creation_time: time,
                last_access_time: time,
                last_write_time: time,
            }
            .into(),
        ),
        FileKind::Symlink => None,
    }
}

/// A time as FILETIME: 100-ns intervals since 1601-01-01 UTC.
fn filetime(time: SystemTime) -> u64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(since) => FILETIME_UNIX_EPOCH + (since.as_nanos() / 100) as u64,
        Err(before) => {
            FILETIME_UNIX_EPOCH.saturating_sub((before.duration().as_nanos() / 100) as u64)
        }
    }
}

/// An errno as the Win32 error the crate turns into an HRESULT (`raw_os_error` on Windows is a
/// Win32 code, not an errno).
fn win32_error(e: Errno) -> io::Error {
    let code = match e {
        Errno::ENOENT | Errno::ESTALE => ERROR_FILE_NOT_FOUND,
        Errno::ENOTDIR => ERROR_DIRECTORY,
        Errno::EISDIR | Errno::EPERM => ERROR_ACCESS_DENIED,
        Errno(libc::EACCES) => ERROR_ACCESS_DENIED,
        Errno::EROFS => ERROR_WRITE_PROTECT,
        Errno::EINVAL => ERROR_INVALID_PARAMETER,
        Errno::ENOSPC => ERROR_DISK_FULL,
        Errno::ENETUNREACH => ERROR_NETWORK_UNREACHABLE,
        _ => ERROR_IO_DEVICE,
    };
    io::Error::from_raw_os_error(code)
}

/// A data stream whose errors carry Win32 codes.
struct Win32Errors<R>(R);

impl<R: Read> Read for Win32Errors<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf).map_err(|e| {
            match e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<ReadFailed>())
            {
                Some(ReadFailed(errno)) => win32_error(*errno),
                None => e,
            }
        })
    }
}

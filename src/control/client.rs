//! The CLI side of the control channel: finds the mount daemon of a path and exchanges messages.
//!
//! A path's daemon is found by walking up from the path (made absolute, symlinks in its parents
//! resolved as the mount resolved its mountpoint) to the first directory that has a control socket
//! ([`super::socket_path`]). A socket that refuses connections is a daemon that died (the mount is
//! then stale).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use super::protocol::{self, MountPath, Progress, Reply, Request};

/// The exit code of every command when no running bvfs mount could be reached.
pub const EXIT_NO_MOUNT: u8 = 3;

/// Why the CLI could not reach a mount daemon (exit code [`EXIT_NO_MOUNT`]).
#[derive(Debug, thiserror::Error)]
pub enum Unreachable {
    #[error(
        "{0} is not inside a bvfs mount. Run the command on a path inside the mounted folder, or \
         name the mount with --mount DIR (`bvfs mount DIR` starts one)"
    )]
    NotInMount(PathBuf),
    #[error(
        "the bvfs daemon of {0} is not running (it stopped or was killed; the folder is a stale \
         mount). Run `bvfs umount {0}` and then `bvfs mount {0}` again: nothing written before it \
         stopped is lost"
    )]
    DaemonGone(PathBuf),
}

/// A path inside a running mount.
#[derive(Debug, Clone)]
pub struct Target {
    pub mountpoint: PathBuf,
    /// Its path from the mount's root (`""`: the root).
    pub path: MountPath,
}

/// An absolute form of `path` without `.` and `..`: its parent canonicalized when that works (as
/// `bvfs mount` canonicalizes its mountpoint's parent), else lexically (a dead mount cannot be
/// entered, but its socket must still be found).
fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    let path = &if path.is_absolute() {
        path.to_owned()
    } else {
        current_dir()?.join(path)
    };
    if let Ok(full) = std::fs::canonicalize(path) {
        // A symlink inside the mount is named by its own path, not its target's.
        if let (Some(parent), Some(name)) = (path.parent(), path.file_name())
            && std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
            && let Ok(parent) = std::fs::canonicalize(parent)
        {
            return Ok(parent.join(name));
        }
        return Ok(full);
    }
    let mut clean = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                clean.pop();
            }
            Component::CurDir => {}
            other => clean.push(other),
        }
    }
    Ok(clean)
}

/// The current directory. Inside a mount the kernel may have dropped the directory's name from its
/// cache (a sync round changed it), and then `getcwd` fails although the directory is fine: the
/// shell's `$PWD` is used when it names the same directory.
fn current_dir() -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let error = match std::env::current_dir() {
        Ok(dir) => return Ok(dir),
        Err(e) => e,
    };
    let same = |pwd: &PathBuf| {
        let (Ok(here), Ok(there)) = (std::fs::metadata("."), std::fs::metadata(pwd)) else {
            return false;
        };
        here.dev() == there.dev() && here.ino() == there.ino()
    };
    std::env::var_os("PWD")
        .map(PathBuf::from)
        .filter(|pwd| pwd.is_absolute() && same(pwd))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "cannot tell the current directory ({error}); give an absolute path or --mount DIR"
            )
        })
}

/// Finds the mount holding `path` (or, with `mount`, checks that `path` is inside it).
pub fn locate(path: &Path, mount: Option<&Path>) -> anyhow::Result<Target> {
    let full = absolute(path)?;
    let mountpoint = match mount {
        Some(mount) => {
            let mount = absolute(mount)?;
            if !full.starts_with(&mount) {
                anyhow::bail!(
                    "{} is not inside the mount {} given with --mount",
                    path.display(),
                    mount.display()
                );
            }
            if !super::socket_path(&mount).exists() {
                return Err(Unreachable::NotInMount(mount).into());
            }
            mount
        }
        None => full
            .ancestors()
            .find(|dir| super::socket_path(dir).exists())
            .map(Path::to_owned)
            .ok_or_else(|| Unreachable::NotInMount(path.to_owned()))?,
    };
    let relative = full
        .strip_prefix(&mountpoint)
        .expect("the mountpoint is an ancestor");
    let mut names = Vec::new();
    for component in relative.components() {
        let name = component.as_os_str().to_str().ok_or_else(|| {
            anyhow::anyhow!(
                "{} is not valid UTF-8; bvfs names are always UTF-8",
                path.display()
            )
        })?;
        names.push(name);
    }
    Ok(Target {
        mountpoint,
        path: names.join("/"),
    })
}

/// One request's exchange with a daemon.
pub struct Exchange {
    reader: BufReader<std::io::Take<UnixStream>>,
}

impl Exchange {
    /// Connects to the daemon of `mountpoint` and sends `request`.
    pub fn start(mountpoint: &Path, request: &Request) -> anyhow::Result<Self> {
        let socket = super::socket_path(mountpoint);
        let mut stream = match UnixStream::connect(&socket) {
            Ok(stream) => stream,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
                ) =>
            {
                return Err(Unreachable::DaemonGone(mountpoint.to_owned()).into());
            }
            Err(e) => {
                return Err(anyhow::anyhow!(
                    "cannot reach the bvfs daemon of {} at {}: {e}",
                    mountpoint.display(),
                    socket.display()
                ));
            }
        };
        let mut line = serde_json::to_vec(request)?;
        anyhow::ensure!(
            line.len() <= protocol::MAX_REQUEST_BYTES,
            "the request is too long ({} bytes; a path inside the mount is at most a few KiB)",
            line.len()
        );
        line.push(b'\n');
        stream.set_write_timeout(Some(Duration::from_secs(10)))?;
        stream.write_all(&line)?;
        // Replies may take long (a hydration); each line is bounded.
        Ok(Self {
            reader: BufReader::new(stream.take(u64::MAX)),
        })
    }

    /// The next reply line: progress, the answer or the daemon's error.
    fn next(&mut self) -> anyhow::Result<Reply> {
        let mut line = Vec::new();
        self.reader
            .get_mut()
            .set_limit(protocol::MAX_REPLY_BYTES as u64 + 1);
        self.reader.read_until(b'\n', &mut line)?;
        if line.is_empty() {
            anyhow::bail!(
                "the bvfs daemon closed the connection without answering (it may have stopped; \
                 see `bvfs status`)"
            );
        }
        if line.last() != Some(&b'\n') {
            anyhow::bail!("the bvfs daemon's answer is cut short or too long");
        }
        serde_json::from_slice(&line)
            .map_err(|e| anyhow::anyhow!("the bvfs daemon's answer is not understood ({e}); is it the same version as this CLI?"))
    }

    /// Reads replies until the answer, passing progress to `on_progress`.
    pub fn finish<T: serde::de::DeserializeOwned>(
        mut self,
        mut on_progress: impl FnMut(Progress),
    ) -> anyhow::Result<T> {
        loop {
            match self.next()? {
                Reply::Progress(progress) => on_progress(progress),
                Reply::Done(value) => {
                    return serde_json::from_value(value).map_err(|e| {
                        anyhow::anyhow!("the bvfs daemon's answer is not understood ({e})")
                    });
                }
                Reply::Error(message) => anyhow::bail!("{message}"),
            }
        }
    }
}

/// Sends `request` to the daemon of `mountpoint` and returns its answer (no progress expected).
pub fn ask<T: serde::de::DeserializeOwned>(
    mountpoint: &Path,
    request: &Request,
) -> anyhow::Result<T> {
    Exchange::start(mountpoint, request)?.finish(|_| {})
}

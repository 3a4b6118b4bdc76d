//! The mount daemon's log file (`daemon.log` in the mount's state directory), rotated by size so a
//! daemon that runs for months never fills the disk: past [`MAX_BYTES`] it becomes `daemon.log.1`
//! (older ones shift up to `.KEEP`, the oldest goes) and a new file takes stderr.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// The size past which the log is rotated.
pub const MAX_BYTES: u64 = 16 << 20;
/// How many rotated logs are kept.
pub const KEEP: u32 = 3;

fn numbered(log: &Path, n: u32) -> PathBuf {
    let mut name = log.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// Rotates `log` if it is larger than `max` bytes, keeping `keep` old ones. Returns whether it did.
pub fn rotate_if_large(log: &Path, max: u64, keep: u32) -> std::io::Result<bool> {
    match std::fs::metadata(log) {
        Ok(meta) if meta.len() > max => {}
        Ok(_) => return Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    }
    let _ = std::fs::remove_file(numbered(log, keep.max(1)));
    for n in (1..keep.max(1)).rev() {
        let from = numbered(log, n);
        if from.exists() {
            std::fs::rename(&from, numbered(log, n + 1))?;
        }
    }
    std::fs::rename(log, numbered(log, 1))?;
    Ok(true)
}

/// Sends this process's stderr (the logs) to `log`, appending.
pub fn attach_stderr(log: &Path) -> std::io::Result<()> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    // SAFETY: dup2 onto stderr with a descriptor we own; the old stderr is replaced atomically.
    if unsafe { libc::dup2(file.as_raw_fd(), 2) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Rotates the daemon's log if it grew too large and reopens stderr on the new file.
pub fn rotate_daemon_log(log: &Path) {
    match rotate_if_large(log, MAX_BYTES, KEEP) {
        Ok(true) => {
            if let Err(e) = attach_stderr(log) {
                tracing::warn!("cannot reopen the log {}: {e}", log.display());
            } else {
                tracing::info!("rotated the log (older ones: {}.1 …)", log.display());
            }
        }
        Ok(false) => {}
        Err(e) => tracing::warn!("cannot rotate the log {}: {e}", log.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_log_is_rotated_and_only_the_newest_old_ones_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("daemon.log");
        assert!(!rotate_if_large(&log, 10, 2).unwrap(), "no log yet");
        std::fs::write(&log, b"small").unwrap();
        assert!(!rotate_if_large(&log, 10, 2).unwrap());
        for round in 0..4u8 {
            std::fs::write(&log, vec![b'a' + round; 20]).unwrap();
            assert!(rotate_if_large(&log, 10, 2).unwrap());
            assert!(!log.exists());
        }
        assert_eq!(std::fs::read(numbered(&log, 1)).unwrap(), vec![b'd'; 20]);
        assert_eq!(std::fs::read(numbered(&log, 2)).unwrap(), vec![b'c'; 20]);
        assert!(!numbered(&log, 3).exists(), "only two are kept");
    }
}

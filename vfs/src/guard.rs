//! The hydration guard: file indexers, thumbnailers and scanners (tracker, baloo, tumbler,
//! `updatedb`, antivirus) open every file they see, which on a files-on-demand mount would download
//! the user's whole namespace. Their reads of bytes that are not on this device fail at once with
//! `EACCES` and a log line; what is local reads normally, and `stat`/`readdir` never download
//! anything anyway. OneDrive does the same; rclone users ask for it (rclone issue #6465).
//!
//! A caller is recognised by the FUSE request's pid: its command name (`/proc/PID/comm`, which the
//! kernel cuts at 15 bytes) or its executable's file name (`/proc/PID/exe`), against a list with
//! sensible defaults ([`DEFAULT_GUARDED`]) that the mount's options extend or replace. Answers are
//! remembered per pid for a few seconds (a pid can be reused), in a bounded map.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Processes that must not hydrate content: indexers, thumbnailers, `updatedb`, virus scanners.
pub const DEFAULT_GUARDED: &[&str] = &[
    "tracker-miner-fs",
    "tracker-miner-fs-3",
    "tracker-extract",
    "tracker-extract-3",
    "baloo_file",
    "baloo_file_extractor",
    "tumblerd",
    "gnome-thumbnail-factory",
    "totem-video-thumbnailer",
    "ffmpegthumbnailer",
    "evince-thumbnailer",
    "gdk-pixbuf-thumbnailer",
    "gnome-desktop-thumbnailer",
    "updatedb",
    "updatedb.mlocate",
    "updatedb.plocate",
    "plocate-build",
    "clamd",
    "clamscan",
    "clamdscan",
];

/// How long a pid's answer is trusted.
const REMEMBER: Duration = Duration::from_secs(5);
/// The most pids remembered (the map is cleared when full).
const MAX_REMEMBERED: usize = 4096;

/// Decides which callers may not hydrate.
#[derive(Debug)]
pub struct HydrationGuard {
    names: Vec<String>,
    seen: Mutex<HashMap<u32, (Option<String>, Instant)>>,
}

impl HydrationGuard {
    /// A guard against the processes named in `names` (command or executable file names).
    pub fn new(names: impl IntoIterator<Item = String>) -> Self {
        Self {
            names: names.into_iter().filter(|n| !n.is_empty()).collect(),
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// The names it guards against.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The guarded name `pid` runs as, if it is one of the guarded processes.
    pub fn guarded(&self, pid: u32) -> Option<String> {
        if pid == 0 || self.names.is_empty() {
            return None;
        }
        if let Some((answer, at)) = self.seen.lock().get(&pid)
            && at.elapsed() < REMEMBER
        {
            return answer.clone();
        }
        let answer = self.lookup(pid);
        let mut seen = self.seen.lock();
        if seen.len() >= MAX_REMEMBERED {
            seen.clear();
        }
        seen.insert(pid, (answer.clone(), Instant::now()));
        answer
    }

    fn lookup(&self, pid: u32) -> Option<String> {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok();
        let comm = comm.as_deref().map(str::trim_end);
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
        let exe = exe
            .as_ref()
            .and_then(|p| p.file_name())
            .and_then(|n| n.to_str())
            .map(|n| n.trim_end_matches(" (deleted)"));
        self.names
            .iter()
            .find(|name| {
                exe == Some(name.as_str())
                    || comm.is_some_and(|c| {
                        c == name.as_str() || (c.len() == 15 && name.starts_with(c))
                    })
            })
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_recognised_by_its_own_name_only() {
        let me = std::process::id();
        let comm = std::fs::read_to_string(format!("/proc/{me}/comm")).unwrap();
        let guard = HydrationGuard::new([comm.trim().to_string()]);
        assert_eq!(guard.guarded(me).as_deref(), Some(comm.trim()));
        let defaults = HydrationGuard::new(DEFAULT_GUARDED.iter().map(|s| s.to_string()));
        assert_eq!(
            defaults.guarded(me),
            None,
            "a test binary is not an indexer"
        );
        assert_eq!(defaults.guarded(0), None, "pid 0: the kernel itself");
        assert_eq!(HydrationGuard::new([]).guarded(me), None);
    }
}

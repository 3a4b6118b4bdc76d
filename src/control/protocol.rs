//! The control channel's messages: one JSON request line from the CLI, then reply lines from the
//! daemon (any number of [`Reply::Progress`], then one [`Reply::Done`] or [`Reply::Error`]).
//!
//! Every message is bounded: a request is one path (at most [`MAX_REQUEST_BYTES`] encoded; the CLI
//! sends one request per path argument), and every list in a reply is capped ([`MAX_LISTED`]) with
//! the full count beside it, so a reply line stays far below [`MAX_REPLY_BYTES`].

use serde::{Deserialize, Serialize};

/// The longest request line the daemon reads (the newline excluded); longer ones are refused.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// The longest reply line the CLI reads.
pub const MAX_REPLY_BYTES: usize = 16 * 1024 * 1024;
/// The most items a reply lists (refusals, held deletes); the total count is always given.
pub const MAX_LISTED: usize = 1_000;

/// A path inside the mount: `/`-separated names from its root (`""`: the root itself).
pub type MountPath = String;

/// What the CLI asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    /// The mount's summary ([`MountStatus`]).
    Status,
    /// One path's state ([`PathStatus`]).
    PathStatus { path: MountPath },
    /// Pin (then fetch everything under it, with progress) or unpin ([`PinDone`]).
    Pin { path: MountPath, pinned: bool },
    /// Fetch every chunk under the path, with progress ([`HydrateDone`]).
    Hydrate { path: MountPath },
    /// Free the local bytes of synced files under the path ([`EvictDone`]).
    Evict { path: MountPath },
    /// The conflict log ([`ConflictList`]).
    Conflicts,
    /// The held bulk deletes, optionally confirming or restoring them ([`DeletesDone`]).
    Deletes { action: DeletesAction },
    /// Every version of the path the server keeps ([`HistoryList`]).
    History { path: MountPath },
    /// Make a version current again (`None`: the newest one with other content) ([`RestoreDone`]).
    Restore {
        path: MountPath,
        version: Option<u64>,
        /// Restore as a new file here instead of in place.
        #[serde(default)]
        as_path: Option<MountPath>,
    },
    /// The deleted nodes that were under the path ([`TrashList`]).
    Trash { path: MountPath },
    /// Bring back the node most recently deleted at the path ([`UndeleteDone`]).
    Undelete { path: MountPath },
    /// What waits to be uploaded and what is being downloaded ([`Queue`]).
    Queue,
}

/// What `bvfs deletes` does with the held deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeletesAction {
    List,
    Confirm,
    Restore,
}

/// A line the daemon sends.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reply {
    Progress(Progress),
    /// The answer: one of the `…Done`/status types below, as the request says.
    Done(serde_json::Value),
    /// What went wrong and what to do, for the user.
    Error(String),
}

/// How far a transfer is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub files_total: u64,
    pub files_done: u64,
    pub bytes_total: u64,
    pub bytes_done: u64,
}

/// The mount's summary (`bvfs status`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MountStatus {
    pub mountpoint: String,
    pub server: String,
    pub online: bool,
    /// The namespace's sync state, as the root's `user.bvfs.sync` says.
    pub sync: String,
    /// When the last sync round succeeded (RFC 3339, UTC), if one did since the mount started.
    pub last_sync: Option<String>,
    /// Nodes with a change the sync has not finished with.
    pub pending_changes: u64,
    pub pending_uploads: Transfer,
    pub uploads_running: u64,
    /// Chunks being fetched now.
    pub downloads_in_flight: u64,
    /// Files open for writing or written and not yet recorded.
    pub files_being_written: u64,
    pub conflicts: u64,
    pub held_deletes: u64,
    pub errors: u64,
    /// The paths the server keeps refusing, with why (at most [`MAX_ERRORS_LISTED`]).
    pub failing: Vec<Refusal>,
    pub cache: CacheStatus,
}

/// How many failing paths `bvfs status` lists.
pub const MAX_ERRORS_LISTED: usize = 20;

/// A count of files and their bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    pub files: u64,
    pub bytes: u64,
}

/// The chunk cache's use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheStatus {
    pub used_bytes: u64,
    /// Held (pinned, unsynced or open) and so not evictable.
    pub held_bytes: u64,
    pub limit_bytes: u64,
    pub chunks: u64,
}

/// One path's state (`bvfs status PATH`), as the `user.bvfs.*` xattrs say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathStatus {
    pub path: MountPath,
    /// `file`, `directory` or `symlink`.
    pub kind: String,
    pub size: u64,
    /// `online-only`, `partial`, `local` or `pinned` (`user.bvfs.state`).
    pub state: String,
    /// `synced`, `pending`, `uploading`, `conflict` or `error` (`user.bvfs.sync`).
    pub sync: String,
    pub pinned: bool,
    /// Why it cannot sync, when `sync` is `error`.
    pub error: Option<String>,
}

/// `bvfs pin`/`unpin`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinDone {
    pub path: MountPath,
    pub pinned: bool,
    /// Nodes whose pin changed.
    pub changed: u64,
    /// What was fetched to make the pinned files local (pins only).
    pub fetched: Option<HydrateDone>,
}

/// `bvfs hydrate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HydrateDone {
    pub path: MountPath,
    /// Files under the path.
    pub files: u64,
    /// Files that needed a download.
    pub fetched_files: u64,
    pub fetched_bytes: u64,
}

/// `bvfs evict`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvictDone {
    pub path: MountPath,
    /// Files whose local bytes were freed (or had none).
    pub evicted_files: u64,
    pub freed_bytes: u64,
    /// Files kept, with why (at most [`MAX_LISTED`]).
    pub refused: Vec<Refusal>,
    pub refused_total: u64,
}

/// A file left as it was, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub path: MountPath,
    pub reason: String,
}

/// `bvfs conflicts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConflictList {
    /// Newest first.
    pub conflicts: Vec<Conflict>,
}

/// One conflict the sync resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    /// When (RFC 3339, UTC).
    pub time: String,
    /// The original's path now (`None`: deleted since).
    pub original: Option<MountPath>,
    /// The conflicted copy's path now, if one was made and is still there.
    pub copy: Option<MountPath>,
    /// The device whose version became the copy (from the copy's name).
    pub device: Option<String>,
    /// What happened and why.
    pub description: String,
}

/// `bvfs deletes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletesDone {
    pub action: DeletesAction,
    /// The deletes held before the action (at most [`MAX_LISTED`]).
    pub held: Vec<HeldDelete>,
    pub held_total: u64,
    /// How many the action confirmed or restored.
    pub resolved: u64,
}

/// A delete the bulk-delete brake holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldDelete {
    /// Where the node would be lost: `local` (deleted on the server) or `remote` (deleted here).
    pub side: String,
    pub path: MountPath,
}

/// `bvfs queue`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Queue {
    /// Files new or edited here that the server does not have yet, by path (at most
    /// [`MAX_LISTED`]).
    pub uploads: Vec<QueuedUpload>,
    /// All of them: count and bytes.
    pub uploads_total: Transfer,
    /// Chunks being fetched from the server now (reads, read-ahead, pins, hydration).
    pub downloads_in_flight: u64,
}

/// A file in the upload queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedUpload {
    pub path: MountPath,
    pub size: u64,
    /// `uploading` now, or `waiting` for the next sync round (or for the server).
    pub state: String,
}

/// `bvfs history`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryList {
    pub path: MountPath,
    /// Newest first (at most [`MAX_LISTED`]).
    pub versions: Vec<Version>,
}

/// One version of a node on the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// What `bvfs restore --version` takes.
    pub version: u64,
    /// When it was committed (RFC 3339, UTC).
    pub time: String,
    pub device: String,
    pub name: String,
    pub size: u64,
    /// BLAKE3 of the content, hex (files only).
    pub hash: Option<String>,
    /// This change deleted the node.
    pub deleted: bool,
}

/// `bvfs restore`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreDone {
    pub path: MountPath,
    /// Where the version was restored to, when not in place.
    pub as_path: Option<MountPath>,
    /// The version made current again.
    pub version: u64,
}

/// `bvfs trash`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrashList {
    pub path: MountPath,
    /// Newest deletion first (at most [`MAX_LISTED`]).
    pub deleted: Vec<Deleted>,
}

/// One deleted node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deleted {
    /// Where it was (`None`: its folder is deleted too; only `name` is known).
    pub path: Option<MountPath>,
    pub name: String,
    pub directory: bool,
    pub size: u64,
    /// The device that deleted it, and when (RFC 3339, UTC).
    pub device: String,
    pub time: String,
}

/// `bvfs undelete`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UndeleteDone {
    pub path: MountPath,
    pub directory: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_bad_ones_are_errors_not_panics() {
        let requests = [
            Request::Status,
            Request::PathStatus { path: "a/b".into() },
            Request::Pin {
                path: String::new(),
                pinned: true,
            },
            Request::Deletes {
                action: DeletesAction::Confirm,
            },
        ];
        for request in requests {
            let line = serde_json::to_string(&request).unwrap();
            assert!(!line.contains('\n'));
            assert_eq!(serde_json::from_str::<Request>(&line).unwrap(), request);
        }
        for bad in [
            "",
            "{}",
            "{\"op\":\"format-disk\"}",
            "{\"op\":\"pin\",\"path\":3}",
            "[1,2",
        ] {
            assert!(serde_json::from_str::<Request>(bad).is_err(), "{bad}");
        }
    }
}

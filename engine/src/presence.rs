//! The files-on-demand states a file manager or script sees (as xattrs through the mount): whether a
//! file's bytes are here, and whether its latest version has reached the server.

use crate::api::{Engine, EngineResult};
use crate::model::{Node, NodeKind};
use crate::state::Table;
use crate::state::local::LocalEntry;

/// Where a node's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hydration {
    /// Nothing downloaded: reading needs the server.
    OnlineOnly,
    /// Some chunks are cached.
    Partial,
    /// Every byte is on this device.
    Local,
    /// Kept local on purpose, and fetched in the background when it changes.
    Pinned,
}

impl Hydration {
    pub fn as_str(self) -> &'static str {
        match self {
            Hydration::OnlineOnly => "online-only",
            Hydration::Partial => "partial",
            Hydration::Local => "local",
            Hydration::Pinned => "pinned",
        }
    }
}

/// Whether a node's local state has reached the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncState {
    Synced,
    Pending,
    Uploading,
    /// Recently involved in a conflict (it is a conflicted copy, or the original of one).
    Conflict,
    /// The server keeps refusing this node's changes; the message says why.
    Error(String),
}

impl SyncState {
    pub fn as_str(&self) -> &'static str {
        match self {
            SyncState::Synced => "synced",
            SyncState::Pending => "pending",
            SyncState::Uploading => "uploading",
            SyncState::Conflict => "conflict",
            SyncState::Error(_) => "error",
        }
    }
}

/// How long a conflict stays visible in `user.bvfs.sync`.
const CONFLICT_VISIBLE_NS: i64 = 3600 * 1_000_000_000;

fn same_state(a: &Node, b: &Node) -> bool {
    a.parent == b.parent && a.name == b.name && a.kind == b.kind && a.attrs == b.attrs
}

impl Engine {
    /// Where the bytes of `entry` are.
    pub fn hydration(&self, entry: &LocalEntry) -> EngineResult<Hydration> {
        if entry.pinned {
            return Ok(Hydration::Pinned);
        }
        if entry.node.kind != NodeKind::File {
            return Ok(Hydration::Local);
        }
        if self.files.exists(entry.ino) {
            return Ok(Hydration::Local);
        }
        let manifest = self.manifest(entry)?;
        let cached = manifest
            .chunks
            .iter()
            .filter(|c| self.cache.contains(&c.id))
            .count();
        Ok(match cached {
            _ if manifest.chunks.is_empty() => Hydration::Local,
            0 => Hydration::OnlineOnly,
            n if n == manifest.chunks.len() => Hydration::Local,
            _ => Hydration::Partial,
        })
    }

    /// Whether `entry`'s local state has reached the server.
    pub fn sync_state(&self, entry: &LocalEntry) -> EngineResult<SyncState> {
        let id = entry.node.id;
        if self.uploading.lock().contains(&id) {
            return Ok(SyncState::Uploading);
        }
        let state = self.state.lock();
        if let Some(message) = state.read(|t| t.sync_error(id))? {
            return Ok(SyncState::Error(message));
        }
        let recent_conflict: bool = state
            .conn()
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM conflicts WHERE (node = ?1 OR copy = ?1) AND at_ns > ?2)",
                rusqlite::params![&id.to_bytes()[..], self.clock.now_ns() - CONFLICT_VISIBLE_NS],
                |r| r.get(0),
            )
            .map_err(|e| state.sql_err(e))?;
        if recent_conflict {
            return Ok(SyncState::Conflict);
        }
        let synced = state.tree(Table::Synced).node(id)?;
        let remote = state.tree(Table::Remote).node(id)?;
        Ok(match (synced, remote) {
            (Some(s), Some(r)) if same_state(&s, &entry.node) && same_state(&s, &r) => {
                SyncState::Synced
            }
            _ => SyncState::Pending,
        })
    }
}

/// Whether the server stores the content a file has here ([`Engine::content_on_server`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentOnServer {
    /// The server holds this content (it is the synced or the server's current version), or the
    /// node is not a file.
    Stored,
    /// An edit made here that the server has not stored yet; it holds an older version.
    Edited,
    /// A file created here that the server has never seen.
    New,
}

impl Engine {
    /// Whether the server stores `entry`'s current content: what a platform that can refuse a
    /// delete before it happens (ProjFS) weighs so that a delete never takes the only copy of an
    /// edit with it.
    pub fn content_on_server(&self, entry: &LocalEntry) -> EngineResult<ContentOnServer> {
        if entry.node.kind != NodeKind::File {
            return Ok(ContentOnServer::Stored);
        }
        let id = entry.node.id;
        let state = self.state.lock();
        let synced = state.tree(Table::Synced).node(id)?;
        let remote = state.tree(Table::Remote).node(id)?;
        drop(state);
        let content = &entry.node.attrs.content;
        let known = synced.is_some() || remote.is_some();
        let stored = [&synced, &remote]
            .into_iter()
            .flatten()
            .any(|node| &node.attrs.content == content);
        // A copy open for writing (or written and not recorded yet) holds bytes newer than LOCAL.
        let writing = self.newer_copy(entry.ino).is_some();
        Ok(match (known, stored && !writing) {
            (false, _) => ContentOnServer::New,
            (true, true) => ContentOnServer::Stored,
            (true, false) => ContentOnServer::Edited,
        })
    }
}

/// What a device has not synced yet, for the mount's root and for `bvfs umount`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Unsynced {
    /// Nodes with a change (either side) the sync has not finished with.
    pub changes: u64,
    /// Deletes the bulk-delete brake holds for confirmation.
    pub held_deletes: u64,
    /// Nodes whose changes the server keeps refusing.
    pub errors: u64,
    /// Files open for writing, or written and not yet recorded.
    pub writing: u64,
    /// Uploads running now.
    pub uploading: u64,
}

impl Unsynced {
    /// Whether everything is synced.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The namespace's state, as the root's `user.bvfs.sync` shows it: `error` if any node keeps
    /// failing, `uploading` while an upload runs, `pending` while anything else waits.
    pub fn state(&self) -> SyncState {
        if self.errors > 0 {
            SyncState::Error(format!("{} items cannot sync", self.errors))
        } else if self.uploading > 0 {
            SyncState::Uploading
        } else if self.is_empty() {
            SyncState::Synced
        } else {
            SyncState::Pending
        }
    }
}

impl std::fmt::Display for Unsynced {
    /// E.g. `3 changes, 1 file being written, 2 held deletes`; `nothing` when all is synced.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = [
            (self.changes, "change", "changes"),
            (self.writing, "file being written", "files being written"),
            (self.uploading, "upload running", "uploads running"),
            (
                self.held_deletes,
                "held delete (see user.bvfs.held-deletes)",
                "held deletes (see user.bvfs.held-deletes)",
            ),
            (
                self.errors,
                "item the server refuses",
                "items the server refuses",
            ),
        ]
        .into_iter()
        .filter(|(n, _, _)| *n > 0)
        .map(|(n, one, many)| format!("{n} {}", if n == 1 { one } else { many }))
        .collect();
        if parts.is_empty() {
            f.write_str("nothing")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

impl Engine {
    /// What this device has not synced yet.
    pub fn unsynced(&self) -> EngineResult<Unsynced> {
        let status = self.status()?;
        Ok(Unsynced {
            changes: status.pending_changes,
            held_deletes: status.held_deletes,
            errors: status.errors,
            writing: self.contents.unrecorded() as u64,
            uploading: self.uploading.lock().len() as u64,
        })
    }
}

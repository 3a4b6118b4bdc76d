//! What `bvfs status` and `bvfs conflicts` show that the sync state alone does not: when the last
//! round succeeded, what waits to be uploaded (files and bytes), what is being downloaded, and the
//! log of conflicts with the paths they concern now.

use std::sync::atomic::Ordering;

use crate::api::{Engine, EngineResult};
use crate::model::NodeId;
use crate::state::Table;

/// Files waiting to be uploaded ([`Engine::pending_uploads`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PendingUploads {
    /// Files whose content here differs from what was last synced (new or edited).
    pub files: u64,
    /// Their sizes, summed: an upper bound of the bytes to send (only missing chunks travel).
    pub bytes: u64,
}

/// One logged conflict ([`Engine::conflicts`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConflictRecord {
    /// When it was resolved (ns since the epoch).
    pub at_ns: i64,
    /// Where the original is now, from the mount's root (`None`: it is gone since).
    pub original: Option<String>,
    /// Where the conflicted copy is now, if one was made and is still there.
    pub copy: Option<String>,
    /// What happened and why, as the planner described it.
    pub description: String,
}

/// A file waiting to be uploaded ([`Engine::upload_queue`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedUpload {
    /// From the mount's root.
    pub path: String,
    pub size: u64,
    /// Its upload is running now (else it waits for the next round).
    pub uploading: bool,
}

/// A `conflicts` row: time, node id, copy id, description.
type ConflictRow = (i64, Vec<u8>, Option<Vec<u8>>, String);

/// The most conflicts [`Engine::conflicts`] returns (the newest): a reply stays bounded.
pub const MAX_CONFLICTS: usize = 1_000;

impl Engine {
    /// When the last sync round succeeded (ns since the epoch), if one did since the mount started.
    pub fn last_sync_ns(&self) -> Option<i64> {
        match self.last_sync_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(ns),
        }
    }

    /// Files new or edited here whose content the server does not have yet.
    pub fn pending_uploads(&self) -> EngineResult<PendingUploads> {
        let state = self.state.lock();
        let (files, bytes) = state
            .conn()
            .query_row(
                "SELECT count(*), coalesce(sum(l.size), 0) FROM changed c \
                 JOIN local l ON l.id = c.id LEFT JOIN synced s ON s.id = l.id \
                 WHERE l.kind = 2 AND (s.id IS NULL OR s.content IS NOT l.content)",
                [],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
            )
            .map_err(|e| state.sql_err(e))?;
        Ok(PendingUploads {
            files: files as u64,
            bytes: bytes as u64,
        })
    }

    /// The files new or edited here that the server does not have yet (at most `max`, by path),
    /// and whether each is being uploaded now.
    pub fn upload_queue(&self, max: usize) -> EngineResult<Vec<QueuedUpload>> {
        let rows: Vec<(Vec<u8>, i64)> = {
            let state = self.state.lock();
            let mut stmt = state
                .conn()
                .prepare(
                    "SELECT l.id, l.size FROM changed c \
                     JOIN local l ON l.id = c.id LEFT JOIN synced s ON s.id = l.id \
                     WHERE l.kind = 2 AND (s.id IS NULL OR s.content IS NOT l.content) \
                     ORDER BY c.seq LIMIT ?1",
                )
                .map_err(|e| state.sql_err(e))?;
            let rows = stmt
                .query_map([max as i64], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(|e| state.sql_err(e))?;
            rows.collect::<Result<_, _>>()
                .map_err(|e| state.sql_err(e))?
        };
        let uploading = self.uploading.lock().clone();
        let state = self.state.lock();
        let local = state.tree(Table::Local);
        let mut queue = Vec::with_capacity(rows.len());
        for (id, size) in rows {
            let Some(id) = NodeId::from_bytes(&id) else {
                continue;
            };
            let Some(path) = local.path_of(id)? else {
                continue;
            };
            queue.push(QueuedUpload {
                path: path.trim_start_matches('/').to_string(),
                size: size as u64,
                uploading: uploading.contains(&id),
            });
        }
        queue.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(queue)
    }

    /// Up to `max` nodes the server keeps refusing, by path (from the mount's root), with the
    /// last reason.
    pub fn failing(&self, max: usize) -> EngineResult<Vec<(String, String)>> {
        let state = self.state.lock();
        let rows: Vec<(Vec<u8>, String)> = {
            let mut stmt = state
                .conn()
                .prepare("SELECT id, message FROM sync_errors LIMIT ?1")
                .map_err(|e| state.sql_err(e))?;
            let rows = stmt
                .query_map([max as i64], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(|e| state.sql_err(e))?;
            rows.collect::<Result<_, _>>()
                .map_err(|e| state.sql_err(e))?
        };
        let local = state.tree(Table::Local);
        let remote = state.tree(Table::Remote);
        let mut out = Vec::with_capacity(rows.len());
        for (id, message) in rows {
            let Some(id) = NodeId::from_bytes(&id) else {
                continue;
            };
            let path = match local.path_of(id)? {
                Some(path) => path,
                None => remote
                    .path_of(id)?
                    .unwrap_or_else(|| format!("(node {id:?})")),
            };
            out.push((path.trim_start_matches('/').to_string(), message));
        }
        out.sort();
        Ok(out)
    }

    /// Chunks being fetched from the server now (reads, read-ahead, pins, hydration).
    pub fn downloads_in_flight(&self) -> u64 {
        self.fetcher.flights() as u64
    }

    /// The logged conflicts, newest first (at most [`MAX_CONFLICTS`]), with the current paths of
    /// the original and its conflicted copy.
    pub fn conflicts(&self) -> EngineResult<Vec<ConflictRecord>> {
        let state = self.state.lock();
        let rows: Vec<ConflictRow> = {
            let mut stmt = state
                .conn()
                .prepare(
                    "SELECT at_ns, node, copy, description FROM conflicts ORDER BY seq DESC LIMIT ?1",
                )
                .map_err(|e| state.sql_err(e))?;
            let rows = stmt
                .query_map([MAX_CONFLICTS as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })
                .map_err(|e| state.sql_err(e))?;
            rows.collect::<Result<_, _>>()
                .map_err(|e| state.sql_err(e))?
        };
        let local = state.tree(Table::Local);
        let path = |bytes: &[u8]| -> EngineResult<Option<String>> {
            match NodeId::from_bytes(bytes) {
                // Relative to the mount's root, as the CLI names paths.
                Some(id) => Ok(local
                    .path_of(id)?
                    .map(|p| p.trim_start_matches('/').to_string())),
                None => Ok(None),
            }
        };
        rows.into_iter()
            .map(|(at_ns, node, copy, description)| {
                Ok(ConflictRecord {
                    at_ns,
                    original: path(&node)?,
                    copy: match copy {
                        Some(copy) => path(&copy)?,
                        None => None,
                    },
                    description,
                })
            })
            .collect()
    }
}

//! Start-up recovery (D4, D5): hashing is truth, and the database is a rebuildable cache.
//!
//! - After a crash, every materialized copy is re-chunked before it is trusted: a copy whose bytes
//!   differ from its LOCAL content holds writes that were acknowledged by fsync/close but not yet
//!   recorded, and becomes the LOCAL content now.
//! - If the database is missing or corrupt, the engine starts a new one (the old file is kept aside),
//!   pulls REMOTE again and rebuilds LOCAL from it; every materialized copy it can no longer place is
//!   kept as a conflicted copy next to the node it belonged to. Nothing is deleted.

use std::io::Write;

use crate::api::{Engine, EngineResult};
use crate::model::{Attrs, NodeId, NodeKind};
use crate::planner::ConflictTime;
use crate::state::Table;

/// Meta key set while orphaned copies wait to be adopted after a rebuild.
pub const REBUILD_PENDING: &str = "rebuild_pending";

impl Engine {
    /// Re-chunks materialized copies left by a previous run and records what differs.
    pub(crate) fn recover_materialized(&self) -> EngineResult<()> {
        let inos = self.files.list()?;
        // A rebuilt database numbers inodes afresh: never hand out one that a kept copy still uses.
        if !inos.is_empty() {
            self.state.lock().transaction(|t| t.reserve_inos(&inos))?;
        }
        for ino in inos {
            let known = self.getattr(ino)?.is_some();
            if !known {
                if self.state.lock().meta_u64(REBUILD_PENDING)?.is_none() {
                    tracing::info!(ino, "removing the copy of a file that no longer exists");
                    self.files.remove(ino)?;
                } else {
                    self.orphans.lock().push(ino);
                }
                continue;
            }
            if let Some(entry) = self.commit_written(ino, None)? {
                tracing::debug!(ino, content = ?entry.node.attrs.content, "materialized copy verified");
            }
        }
        Ok(())
    }

    /// After a rebuild has pulled REMOTE: gives every copy found at start-up without a LOCAL node
    /// a place, as a conflicted copy beside the node it belonged to (or at the root).
    ///
    /// Only the copies [`Engine::recover_materialized`] listed: any other copy without a node was
    /// unlinked through the mount while a handle keeps it open, and is that handle's until it
    /// closes (adopting it would move the writer's file under a new name behind its back).
    pub(crate) fn adopt_orphans(&self) -> EngineResult<()> {
        if self.state.lock().meta_u64(REBUILD_PENDING)?.is_none() {
            return Ok(());
        }
        // Each orphan leaves the list only once placed: a failure part-way keeps the rest (and the
        // rebuild mark) for the next round.
        let orphans = self.orphans.lock().clone();
        for ino in orphans {
            self.adopt_orphan(ino)?;
            self.orphans.lock().retain(|&orphan| orphan != ino);
        }
        self.state
            .lock()
            .transaction(|t| t.delete_meta(REBUILD_PENDING))?;
        self.wake.notify_one();
        Ok(())
    }

    /// Places one start-up orphan: removed if REMOTE holds exactly its bytes, else kept as a
    /// conflicted copy.
    fn adopt_orphan(&self, ino: u64) -> EngineResult<()> {
        debug_assert!(
            !self.contents.is_reserved(ino),
            "a start-up orphan cannot have an owner yet: nothing can look it up"
        );
        if self.getattr(ino)?.is_some() || !self.files.exists(ino) {
            return Ok(());
        }
        let manifest = self.files.chunk(ino, |_, _| Ok(()))?;
        let owner = self.files.owner(ino)?;
        let synced = {
            let state = self.state.lock();
            owner
                .as_ref()
                .and_then(|(id, _)| state.tree(Table::Remote).node(*id).ok().flatten())
                .is_some_and(|node| node.attrs.content == Some(manifest.hash))
        };
        if synced {
            self.files.remove(ino)?;
            return Ok(());
        }
        self.keep_as_conflicted_copy(
            ino,
            &manifest,
            "recovered after the local database was lost",
        )
    }

    /// Keeps the copy `ino`, whose bytes no node holds, as a new conflicted copy beside the node it
    /// belonged to (found in LOCAL, else REMOTE, else at the root). Recovery only: it moves the copy.
    pub(crate) fn keep_copy_aside(&self, ino: u64) -> EngineResult<()> {
        let manifest = self.files.chunk(ino, |_, _| Ok(()))?;
        self.keep_as_conflicted_copy(
            ino,
            &manifest,
            "a local copy whose pending change found other bytes than expected",
        )
    }

    fn keep_as_conflicted_copy(
        &self,
        ino: u64,
        manifest: &crate::chunking::Manifest,
        why: &str,
    ) -> EngineResult<()> {
        let owner = self.files.owner(ino)?;
        let (parent, name) = {
            let state = self.state.lock();
            let node = owner.as_ref().and_then(|(id, _)| {
                [Table::Local, Table::Remote]
                    .into_iter()
                    .find_map(|table| state.tree(table).node(*id).ok().flatten())
            });
            match node {
                Some(node) => (node.parent, node.name.clone()),
                None => (
                    NodeId::ROOT,
                    owner
                        .map(|(_, name)| name)
                        .unwrap_or_else(|| format!("recovered-{ino}")),
                ),
            }
        };
        let when = ConflictTime::from_unix_utc(self.clock.now_ns().div_euclid(1_000_000_000));
        let copy_name = self.free_name(
            parent,
            &crate::planner::conflicted_copy_name(&name, &self.config.device, when),
        )?;
        let now = self.clock.now_ns();
        let id = self.ids.new_id();
        let entry = self.state.lock().transaction(|t| -> EngineResult<_> {
            t.put_manifest(manifest)?;
            let parent_ino = t.local_ino(parent)?.unwrap_or(crate::state::ROOT_INO);
            let attrs = Attrs {
                size: manifest.size,
                mtime_ns: now,
                mode: crate::model::default_mode(NodeKind::File, false),
                content: Some(manifest.hash),
                ..Attrs::default()
            };
            let entry = t.local_create(parent_ino, &copy_name, NodeKind::File, attrs, id)?;
            t.record_conflict(now, id, Some(id), &format!("{why}: {copy_name:?}"))?;
            Ok(entry)
        })?;
        self.files.rename(ino, entry.ino)?;
        tracing::warn!(name = %copy_name, "kept a local copy as a conflicted copy ({why})");
        Ok(())
    }

    /// `name`, or `name 2`, `name 3`… whichever is free in both LOCAL and REMOTE.
    fn free_name(&self, parent: NodeId, name: &str) -> EngineResult<String> {
        let state = self.state.lock();
        let (local, remote) = (state.tree(Table::Local), state.tree(Table::Remote));
        for n in 1.. {
            let candidate = if n == 1 {
                name.to_string()
            } else {
                format!("{name} {n}")
            };
            if local.child_id(parent, &candidate)?.is_none()
                && remote.child_id(parent, &candidate)?.is_none()
            {
                return Ok(candidate);
            }
        }
        unreachable!()
    }
}

impl crate::files::LocalFiles {
    /// Records which node a copy belongs to, so a rebuild can place it.
    pub fn set_owner(&self, ino: u64, id: NodeId, name: &str) -> std::io::Result<()> {
        let mut file = std::fs::File::create(self.owner_path(ino))?;
        file.write_all(&id.to_bytes())?;
        file.write_all(name.as_bytes())?;
        Ok(())
    }

    /// The node a copy belonged to, if recorded.
    pub fn owner(&self, ino: u64) -> std::io::Result<Option<(NodeId, String)>> {
        match std::fs::read(self.owner_path(ino)) {
            Ok(bytes) if bytes.len() >= 16 => Ok(NodeId::from_bytes(&bytes[..16])
                .map(|id| (id, String::from_utf8_lossy(&bytes[16..]).into_owned()))),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

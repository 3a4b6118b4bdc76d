//! What plans and their execution leave behind for the user and the next round: SYNCED advancing per
//! op, held deletes, reported nodes, conflicts, and nodes that keep failing.

use rusqlite::{OptionalExtension, params};

use super::{StateResult, Table, Txn};
use crate::model::{NodeId, NodeIdSet};
use crate::planner::{Plan, Side, SyncedChange};

/// After this many refusals for a reason a retry cannot fix, a node's ops wait for a new local change.
pub const MAX_ATTEMPTS: i64 = 3;

impl Txn<'_> {
    /// Applies an op's SYNCED change. SYNCED's revision becomes `revision` (a commit's new revision)
    /// or else the node's current REMOTE revision (0 when REMOTE lacks it), as the planner's reference
    /// executor (`planner::ThreeTrees`) does.
    pub fn apply_synced(&self, change: &SyncedChange, revision: Option<u64>) -> StateResult<()> {
        let Some(id) = change.node() else {
            return Ok(());
        };
        let remote_revision = match revision {
            Some(r) => r,
            None => self.tree(Table::Remote).node(id)?.map_or(0, |n| n.revision),
        };
        let synced = self.tree(Table::Synced);
        match change {
            SyncedChange::Unchanged => {}
            SyncedChange::Put(node) => {
                let mut node = node.clone();
                node.revision = remote_revision;
                self.put_node(Table::Synced, &node)?;
            }
            SyncedChange::Place { id, parent, name } => {
                if let Some(mut node) = synced.node(*id)? {
                    node.parent = *parent;
                    node.name = name.clone();
                    node.revision = remote_revision;
                    self.put_node(Table::Synced, &node)?;
                } else {
                    debug_assert!(false, "SYNCED lacks {id} for a Place change");
                }
            }
            SyncedChange::SetAttrs { id, attrs } => {
                if let Some(mut node) = synced.node(*id)? {
                    node.attrs = attrs.clone();
                    node.revision = remote_revision;
                    self.put_node(Table::Synced, &node)?;
                } else {
                    debug_assert!(false, "SYNCED lacks {id} for a SetAttrs change");
                }
            }
            SyncedChange::Remove(id) => {
                self.remove_node(Table::Synced, *id)?;
                self.conn()
                    .execute(
                        "DELETE FROM confirmed_deletes WHERE id = ?1",
                        [&id.to_bytes()[..]],
                    )
                    .map_err(|e| self.err(e))?;
            }
            SyncedChange::Reidentify { old, new } => {
                if let Some(mut node) = synced.node(*old)? {
                    self.remove_node(Table::Synced, *old)?;
                    node.id = *new;
                    node.revision = remote_revision;
                    self.put_node(Table::Synced, &node)?;
                    self.conn()
                        .execute(
                            "UPDATE synced SET parent = ?2 WHERE parent = ?1 AND id != ?1",
                            params![&old.to_bytes()[..], &new.to_bytes()[..]],
                        )
                        .map_err(|e| self.err(e))?;
                }
            }
        }
        Ok(())
    }

    /// Replaces the held deletes with the plan's, so `bvfs status` shows what waits for confirmation.
    /// Also forgets the sync errors of nodes that exist on neither side any more (a temporary file
    /// deleted before it was uploaded): nothing is left to sync, so nothing is in error.
    pub fn record_plan_outcome(&self, plan: &Plan) -> StateResult<()> {
        self.conn()
            .execute("DELETE FROM held_deletes", [])
            .map_err(|e| self.err(e))?;
        self.conn()
            .execute(
                "DELETE FROM sync_errors
                 WHERE NOT EXISTS (SELECT 1 FROM local WHERE local.id = sync_errors.id)
                 AND NOT EXISTS (SELECT 1 FROM remote WHERE remote.id = sync_errors.id)",
                [],
            )
            .map_err(|e| self.err(e))?;
        let local = self.tree(Table::Local);
        let remote = self.tree(Table::Remote);
        for held in &plan.held_deletes {
            let (tree, side) = match held.side {
                Side::Local => (&local, "local"),
                Side::Remote => (&remote, "remote"),
            };
            let path = tree.path_of(held.id)?.unwrap_or_else(|| held.name.clone());
            self.conn()
                .execute(
                    "INSERT OR REPLACE INTO held_deletes (id, side, path) VALUES (?1, ?2, ?3)",
                    params![&held.id.to_bytes()[..], side, path],
                )
                .map_err(|e| self.err(e))?;
        }
        for report in &plan.reported {
            tracing::debug!(?report, "left as is by the plan");
        }
        Ok(())
    }

    /// Deletes the user confirmed past the brake.
    pub fn confirmed_deletes(&self) -> StateResult<NodeIdSet> {
        self.id_set("SELECT id FROM confirmed_deletes")
    }

    /// Lets these deletes through the brake from now on, and drops them from the held list.
    pub fn confirm_deletes(&self, ids: &[NodeId]) -> StateResult<()> {
        for id in ids {
            let bytes = id.to_bytes();
            self.conn()
                .execute(
                    "INSERT OR IGNORE INTO confirmed_deletes (id) VALUES (?1)",
                    [&bytes[..]],
                )
                .map_err(|e| self.err(e))?;
            self.conn()
                .execute("DELETE FROM held_deletes WHERE id = ?1", [&bytes[..]])
                .map_err(|e| self.err(e))?;
            self.mark_changed(*id)?;
        }
        Ok(())
    }

    /// The held deletes: (side that would lose the node, path).
    pub fn held_deletes(&self) -> StateResult<Vec<(String, String)>> {
        let mut stmt = self
            .conn()
            .prepare("SELECT side, path FROM held_deletes ORDER BY path")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Confirms every held delete (the brake lets them through), or rejects them: a node deleted here
    /// comes back from SYNCED (a placeholder of the last agreed state); a node deleted on the server
    /// stays here under a new id, and is uploaded again as a new node. `fresh_id` mints ids.
    pub fn resolve_held_deletes(
        &self,
        confirm: bool,
        mut fresh_id: impl FnMut() -> NodeId,
    ) -> StateResult<usize> {
        let held: Vec<(Vec<u8>, String)> = {
            let mut stmt = self
                .conn()
                .prepare("SELECT id, side FROM held_deletes")
                .map_err(|e| self.err(e))?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(|e| self.err(e))?;
            rows.collect::<Result<_, _>>().map_err(|e| self.err(e))?
        };
        let mut restore = Vec::new();
        for (bytes, side) in &held {
            let id = NodeId::from_bytes(bytes)
                .ok_or_else(|| self.corrupt("an id that is not 16 bytes"))?;
            if confirm {
                self.conn()
                    .execute(
                        "INSERT OR IGNORE INTO confirmed_deletes (id) VALUES (?1)",
                        [&bytes[..]],
                    )
                    .map_err(|e| self.err(e))?;
            } else if side == "remote" {
                if let Some(node) = self.tree(Table::Synced).node(id)? {
                    restore.push(node);
                }
            } else if self
                .local_by_id(id)
                .map_err(|e| self.corrupt(&e.to_string()))?
                .is_some()
            {
                let new = fresh_id();
                self.reidentify_local(id, new)?;
                self.mark_changed(new)?;
            }
            self.mark_changed(id)?;
        }
        // Parents before children: restore in depth order.
        let synced = self.tree(Table::Synced);
        let mut by_depth = Vec::new();
        for node in restore {
            let depth = synced
                .path_of(node.id)?
                .map_or(0, |p| p.matches('/').count());
            by_depth.push((depth, node));
        }
        by_depth.sort_by_key(|(depth, _)| *depth);
        for (_, node) in by_depth {
            if self
                .local_by_id(node.id)
                .map_err(|e| self.corrupt(&e.to_string()))?
                .is_none()
            {
                self.insert_local(&node)?;
            }
        }
        self.conn()
            .execute("DELETE FROM held_deletes", [])
            .map_err(|e| self.err(e))?;
        Ok(held.len())
    }

    /// Nodes whose ops are parked after repeated refusals.
    pub fn blocked_ids(&self) -> StateResult<NodeIdSet> {
        self.id_set(&format!(
            "SELECT id FROM sync_errors WHERE attempts >= {MAX_ATTEMPTS}"
        ))
    }

    /// Counts a refusal against a node.
    pub fn record_sync_error(&self, id: NodeId, message: &str) -> StateResult<()> {
        self.conn()
            .execute(
                "INSERT INTO sync_errors (id, message, attempts) VALUES (?1, ?2, 1)
                 ON CONFLICT (id) DO UPDATE SET message = ?2, attempts = attempts + 1",
                params![&id.to_bytes()[..], message],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub fn clear_sync_error(&self, id: NodeId) -> StateResult<()> {
        self.conn()
            .prepare_cached("DELETE FROM sync_errors WHERE id = ?1")
            .and_then(|mut s| s.execute([&id.to_bytes()[..]]))
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The last refusal message of a node, if it has one.
    pub fn sync_error(&self, id: NodeId) -> StateResult<Option<String>> {
        self.conn()
            .prepare_cached("SELECT message FROM sync_errors WHERE id = ?1")
            .and_then(|mut s| s.query_row([&id.to_bytes()[..]], |r| r.get(0)).optional())
            .map_err(|e| self.err(e))
    }

    /// Logs a conflict for the user.
    pub fn record_conflict(
        &self,
        at_ns: i64,
        node: NodeId,
        copy: Option<NodeId>,
        description: &str,
    ) -> StateResult<()> {
        self.conn()
            .execute(
                "INSERT INTO conflicts (at_ns, node, copy, description) VALUES (?1, ?2, ?3, ?4)",
                params![
                    at_ns,
                    &node.to_bytes()[..],
                    copy.map(|c| c.to_bytes().to_vec()),
                    description
                ],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// A meta value stored as bytes.
    pub fn meta_blob(&self, key: &str) -> StateResult<Option<Vec<u8>>> {
        self.conn()
            .prepare_cached("SELECT value FROM meta WHERE key = ?1")
            .and_then(|mut s| s.query_row([key], |r| r.get(0)).optional())
            .map_err(|e| self.err(e))
    }

    fn id_set(&self, sql: &str) -> StateResult<NodeIdSet> {
        let mut stmt = self.conn().prepare_cached(sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| r.get::<_, Vec<u8>>(0))
            .map_err(|e| self.err(e))?;
        let mut set = NodeIdSet::default();
        for row in rows {
            let bytes = row.map_err(|e| self.err(e))?;
            set.insert(
                NodeId::from_bytes(&bytes)
                    .ok_or_else(|| self.corrupt("an id that is not 16 bytes"))?,
            );
        }
        Ok(set)
    }
}

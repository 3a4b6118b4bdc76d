//! A first sync in bulk: when LOCAL and SYNCED hold only the root, LOCAL and SYNCED become REMOTE.
//!
//! On a fresh device (or after a rebuild that found no local copies) every REMOTE node is a remote
//! create. The planner would emit one `LocalCreate` per node, a placeholder (metadata only) with
//! SYNCED advancing to the REMOTE node, and the executor would insert them one by one. For a namespace
//! of a million nodes that costs minutes and gigabytes for a result known in advance, so
//! [`Txn::bootstrap_from_remote`] writes the same rows with three SQL statements instead.
//!
//! It applies only where the planner's result is certain without planning, and declines otherwise
//! (the caller then plans as usual):
//! - LOCAL and SYNCED hold nothing but the root, so every node is a plain remote create: no merge,
//!   no conflict, no delete, nothing for the bulk-delete brake;
//! - the root is not pinned, so no placeholder inherits a pin or needs its content fetched
//!   (`LocalCreate::fetch_content` is false for all of them, as for a non-resident parent);
//! - no node is parked by sync errors (the executor would skip its ops), and no commit of ours is in
//!   flight (its outcome, when it shows up, advances SYNCED);
//! - the platform compares names byte for byte and every REMOTE name is valid on it (otherwise the
//!   planner keeps some nodes remote-only or renames them);
//! - every REMOTE node hangs from the root (the executor cannot place a node whose parent is missing).
//!
//! What the rows hold is what the executor would write for each `LocalCreate { node, fetch_content:
//! false }` with `SyncedChange::Put(node)`: LOCAL gets the REMOTE node (same id, place, attributes and
//! revision), unpinned, with a fresh inode number; SYNCED gets the REMOTE node with its REMOTE
//! revision. Inode numbers are handed out in id order (the executor hands them out in plan order);
//! they are never reused either way. The ids the pull marked as changed are cleared: the trees agree
//! on all of them, which is what the next round's plan would find.

use rusqlite::{OptionalExtension, params};

use super::inode_numbers::STABLE_INO_SQL;
use super::{StateResult, Txn};
use crate::model::{NamePolicy, NodeId};

const ROW: &str = super::trees::NODE_COLUMNS;

/// What a bulk first sync did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bootstrap {
    /// How many nodes LOCAL and SYNCED received.
    pub created: u64,
    /// The names created directly in the root. The root is the only directory the kernel can have
    /// cached entries (or negative entries) for: every other directory is a new inode.
    pub in_root: Vec<String>,
}

impl Txn<'_> {
    /// Makes LOCAL and SYNCED copies of REMOTE when the planner would (see the module docs), and
    /// clears the changed ids marked at or before `changed_through`. `None`: it does not apply, and
    /// nothing was written.
    pub fn bootstrap_from_remote(
        &self,
        policy: NamePolicy,
        changed_through: i64,
    ) -> StateResult<Option<Bootstrap>> {
        let root = NodeId::ROOT.to_bytes();
        let root = &root[..];
        let conn = self.conn();
        let err = |e| self.err(e);
        let exists = |sql: &str| -> StateResult<bool> {
            conn.query_row(sql, [root], |r| r.get(0)).map_err(err)
        };
        if policy.folds()
            || exists("SELECT EXISTS (SELECT 1 FROM local WHERE id != ?1)")?
            || exists("SELECT EXISTS (SELECT 1 FROM synced WHERE id != ?1)")?
            || !exists("SELECT EXISTS (SELECT 1 FROM remote WHERE id != ?1)")?
            || conn
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM sync_errors) OR EXISTS (SELECT 1 FROM inflight)",
                    [],
                    |r| r.get::<_, bool>(0),
                )
                .map_err(err)?
        {
            return Ok(None);
        }
        let root_pinned: Option<bool> = conn
            .query_row("SELECT pinned FROM local WHERE id = ?1", [root], |r| {
                r.get(0)
            })
            .optional()
            .map_err(err)?;
        if root_pinned != Some(false) {
            return Ok(None);
        }

        // Every row well formed and every name valid here, and how many nodes there are.
        let mut total = 0u64;
        {
            let mut stmt = conn
                .prepare(
                    "SELECT name, length(id) = 16 AND length(parent) = 16 AND kind IN (1, 2, 3)
                            AND (content IS NULL OR length(content) = 32)
                     FROM remote WHERE id != ?1",
                )
                .map_err(err)?;
            let mut rows = stmt.query([root]).map_err(err)?;
            while let Some(row) = rows.next().map_err(err)? {
                let well_formed: bool = row.get(1).map_err(err)?;
                let name = row
                    .get_ref(0)
                    .map_err(err)?
                    .as_str()
                    .map_err(|e| err(e.into()))?;
                if !well_formed || policy.check(name).is_err() {
                    return Ok(None);
                }
                total += 1;
            }
        }
        // Every node reachable from the root (depth first, so the queue stays small).
        let reachable: i64 = conn
            .query_row(
                "WITH RECURSIVE walk(id, depth) AS (
                     SELECT ?1, 0
                     UNION ALL
                     SELECT r.id, walk.depth + 1 FROM walk JOIN remote r ON r.parent = walk.id AND r.id != r.parent
                     ORDER BY 2 DESC
                 )
                 SELECT count(*) - 1 FROM walk",
                [root],
                |r| r.get(0),
            )
            .map_err(err)?;
        if reachable as u64 != total {
            return Ok(None);
        }

        let next_ino = self.sequence_next()?;
        // The first write: if it fails on a constraint (two REMOTE siblings with one name, which the
        // server never allows, or two ids with one stable inode number), the statement leaves
        // nothing behind and the planner takes over. Each node gets its stable inode number unless
        // this device handed that out before; then a number of the sequence, which this reserves
        // for every row (gaps are harmless).
        let inserted = match conn.execute(
            &format!(
                "INSERT INTO local ({ROW}, ino, pinned)
                 SELECT {ROW},
                        CASE WHEN {STABLE_INO_SQL}(id) IN (SELECT ino FROM stable_inos)
                             THEN ?2 + row_number() OVER (ORDER BY id) - 1
                             ELSE {STABLE_INO_SQL}(id) END,
                        0
                 FROM remote WHERE id != ?1"
            ),
            params![root, next_ino as i64],
        ) {
            Ok(n) => n,
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                return Ok(None);
            }
            Err(e) => return Err(err(e)),
        };
        conn.execute(
            &format!("INSERT INTO synced ({ROW}) SELECT {ROW} FROM remote WHERE id != ?1"),
            [root],
        )
        .map_err(err)?;
        self.set_sequence_next(next_ino + inserted as u64)?;
        self.record_stable_inos()?;
        conn.execute("DELETE FROM changed WHERE seq <= ?1", [changed_through])
            .map_err(err)?;
        let in_root = {
            let mut stmt = conn
                .prepare("SELECT name FROM remote WHERE parent = ?1 AND id != ?1 ORDER BY name")
                .map_err(err)?;
            let names = stmt.query_map([root], |r| r.get(0)).map_err(err)?;
            names.collect::<Result<Vec<String>, _>>().map_err(err)?
        };
        Ok(Some(Bootstrap {
            created: inserted as u64,
            in_root,
        }))
    }
}

//! A write transaction of one namespace database: the [`MetaTxn`] the commit rules run against.

use bvfs_proto::v1::Node;
use prost::Message;
use rusqlite::{OptionalExtension, params};

use super::meta_err;
use super::rows::{decode_node, key, read_floor, read_head, read_tag};
use crate::store::{JournalEntry, MetaTxn, NodeKey, ROOT_ID, StoreResult, TenantId};

pub(super) struct SqliteTxn<'a> {
    tx: &'a rusqlite::Transaction<'a>,
    tenant: TenantId,
}

impl<'a> SqliteTxn<'a> {
    pub(super) fn new(tx: &'a rusqlite::Transaction<'a>, tenant: TenantId) -> Self {
        Self { tx, tenant }
    }
}

impl MetaTxn for SqliteTxn<'_> {
    fn gc_epoch(&mut self) -> StoreResult<u64> {
        let epoch: i64 = self
            .tx
            .prepare_cached("SELECT gc_epoch FROM heads WHERE tenant_id = ?1")
            .map_err(meta_err)?
            .query_row(params![self.tenant], |r| r.get(0))
            .map_err(meta_err)?;
        Ok(epoch as u64)
    }

    fn set_gc_epoch(&mut self, epoch: u64) -> StoreResult<()> {
        let value = i64::try_from(epoch)
            .map_err(|_| crate::store::StoreError::Meta(format!("gc epoch {epoch} too large")))?;
        self.tx
            .prepare_cached("UPDATE heads SET gc_epoch = ?2 WHERE tenant_id = ?1")
            .map_err(meta_err)?
            .execute(params![self.tenant, value])
            .map_err(meta_err)?;
        Ok(())
    }

    fn node(&mut self, id: &NodeKey) -> StoreResult<Option<Node>> {
        let blob: Option<Vec<u8>> = self
            .tx
            .prepare_cached("SELECT node FROM nodes WHERE tenant_id = ?1 AND id = ?2")
            .map_err(meta_err)?
            .query_row(params![self.tenant, &id[..]], |r| r.get(0))
            .optional()
            .map_err(meta_err)?;
        blob.map(|b| decode_node(&b)).transpose()
    }

    fn id_ever_used(&mut self, id: &NodeKey) -> StoreResult<bool> {
        if *id == ROOT_ID || self.node(id)?.is_some() {
            return Ok(true);
        }
        // A node whose every entry retention dropped keeps its id retired, never reused.
        self.tx
            .prepare_cached(
                "SELECT 1 FROM journal WHERE tenant_id = ?1 AND node_id = ?2
                 UNION ALL SELECT 1 FROM retired_ids WHERE tenant_id = ?1 AND id = ?2 LIMIT 1",
            )
            .map_err(meta_err)?
            .exists(params![self.tenant, &id[..]])
            .map_err(meta_err)
    }

    fn child_by_name(&mut self, parent: &NodeKey, name: &str) -> StoreResult<Option<NodeKey>> {
        let id: Option<Vec<u8>> = self
            .tx
            .prepare_cached(
                "SELECT id FROM nodes WHERE tenant_id = ?1 AND parent_id = ?2 AND name = ?3",
            )
            .map_err(meta_err)?
            .query_row(params![self.tenant, &parent[..], name], |r| r.get(0))
            .optional()
            .map_err(meta_err)?;
        id.map(key).transpose()
    }

    fn has_children(&mut self, dir: &NodeKey) -> StoreResult<bool> {
        self.tx
            .prepare_cached(
                "SELECT 1 FROM nodes WHERE tenant_id = ?1 AND parent_id = ?2 AND id != ?2 LIMIT 1",
            )
            .map_err(meta_err)?
            .exists(params![self.tenant, &dir[..]])
            .map_err(meta_err)
    }

    fn put_node(&mut self, node: &Node) -> StoreResult<()> {
        self.tx
            .prepare_cached(
                "INSERT OR REPLACE INTO nodes (tenant_id, id, parent_id, name, node) VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .map_err(meta_err)?
            .execute(params![
                self.tenant,
                &node.id,
                &node.parent_id,
                &node.name,
                node.encode_to_vec()
            ])
            .map_err(meta_err)?;
        Ok(())
    }

    fn remove_node(&mut self, id: &NodeKey) -> StoreResult<()> {
        self.tx
            .prepare_cached("DELETE FROM nodes WHERE tenant_id = ?1 AND id = ?2")
            .map_err(meta_err)?
            .execute(params![self.tenant, &id[..]])
            .map_err(meta_err)?;
        Ok(())
    }

    fn head(&mut self) -> StoreResult<u64> {
        read_head(self.tx, self.tenant)
    }

    fn tag_at(&mut self, seq: u64) -> StoreResult<Option<u64>> {
        read_tag(self.tx, self.tenant, seq)
    }

    fn last_seq_of(&mut self, id: &NodeKey) -> StoreResult<Option<u64>> {
        let seq: Option<i64> = self
            .tx
            .prepare_cached("SELECT MAX(seq) FROM journal WHERE tenant_id = ?1 AND node_id = ?2")
            .map_err(meta_err)?
            .query_row(params![self.tenant, &id[..]], |r| r.get(0))
            .map_err(meta_err)?;
        Ok(seq.map(|s| s as u64))
    }

    fn parent_of(&mut self, id: &NodeKey) -> StoreResult<Option<NodeKey>> {
        let parent: Option<Vec<u8>> = self
            .tx
            .prepare_cached("SELECT parent_id FROM nodes WHERE tenant_id = ?1 AND id = ?2")
            .map_err(meta_err)?
            .query_row(params![self.tenant, &id[..]], |r| r.get(0))
            .optional()
            .map_err(meta_err)?;
        parent.map(key).transpose()
    }

    fn append(&mut self, entry: &JournalEntry) -> StoreResult<()> {
        self.tx
            .prepare_cached(
                "INSERT INTO journal (tenant_id, seq, node_id, kind, node, device, committed_ns, tag)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .map_err(meta_err)?
            .execute(params![
                self.tenant,
                entry.seq as i64,
                &entry.node.id,
                entry.kind as i64,
                entry.node.encode_to_vec(),
                &entry.device,
                entry.committed_at_ns,
                entry.tag as i64
            ])
            .map_err(meta_err)?;
        Ok(())
    }

    fn set_head(&mut self, head: u64) -> StoreResult<()> {
        self.tx
            .prepare_cached("UPDATE heads SET head = ?2 WHERE tenant_id = ?1")
            .map_err(meta_err)?
            .execute(params![self.tenant, head as i64])
            .map_err(meta_err)?;
        Ok(())
    }

    fn retention(&mut self) -> StoreResult<Option<u64>> {
        let keep: Option<i64> = self
            .tx
            .prepare_cached("SELECT keep_versions_s FROM heads WHERE tenant_id = ?1")
            .map_err(meta_err)?
            .query_row(params![self.tenant], |r| r.get(0))
            .map_err(meta_err)?;
        Ok(keep.map(|k| k.max(0) as u64))
    }

    fn set_retention(&mut self, keep_secs: Option<u64>) -> StoreResult<()> {
        let keep = keep_secs.map(|k| i64::try_from(k).unwrap_or(i64::MAX));
        self.tx
            .prepare_cached("UPDATE heads SET keep_versions_s = ?2 WHERE tenant_id = ?1")
            .map_err(meta_err)?
            .execute(params![self.tenant, keep])
            .map_err(meta_err)?;
        Ok(())
    }

    fn journal_floor(&mut self) -> StoreResult<u64> {
        read_floor(self.tx, self.tenant)
    }

    fn has_entry(&mut self, seq: u64) -> StoreResult<bool> {
        let Ok(seq) = i64::try_from(seq) else {
            return Ok(false);
        };
        self.tx
            .prepare_cached("SELECT 1 FROM journal WHERE tenant_id = ?1 AND seq = ?2")
            .map_err(meta_err)?
            .exists(params![self.tenant, seq])
            .map_err(meta_err)
    }

    fn compact(&mut self, floor: u64, after: u64, upto: u64) -> StoreResult<u64> {
        let as_i64 = |v: u64| {
            i64::try_from(v)
                .map_err(|_| crate::store::StoreError::Meta(format!("sequence {v} too large")))
        };
        let (floor, after, upto) = (as_i64(floor)?, as_i64(after)?, as_i64(upto.min(floor))?);
        self.tx
            .prepare_cached(
                "UPDATE heads SET journal_floor = MAX(journal_floor, ?2) WHERE tenant_id = ?1",
            )
            .map_err(meta_err)?
            .execute(params![self.tenant, floor])
            .map_err(meta_err)?;
        // The doomed entries' tags first (the selection reads the journal before anything of it
        // is deleted), then the ids of deleted nodes, then the entries themselves.
        self.tx
            .prepare_cached(
                "INSERT OR IGNORE INTO dropped_tags (tenant_id, seq, tag)
                 SELECT j.tenant_id, j.seq, j.tag FROM journal j
                 WHERE j.tenant_id = ?1 AND j.seq > ?2 AND j.seq <= ?3
                   AND (j.kind = 2 OR EXISTS (SELECT 1 FROM journal k
                        WHERE k.tenant_id = ?1 AND k.node_id = j.node_id
                          AND k.seq > j.seq AND k.seq <= ?4))",
            )
            .map_err(meta_err)?
            .execute(params![self.tenant, after, upto, floor])
            .map_err(meta_err)?;
        self.tx
            .prepare_cached(
                "INSERT OR IGNORE INTO retired_ids (tenant_id, id)
                 SELECT tenant_id, node_id FROM journal
                 WHERE tenant_id = ?1 AND seq > ?2 AND seq <= ?3 AND kind = 2",
            )
            .map_err(meta_err)?
            .execute(params![self.tenant, after, upto])
            .map_err(meta_err)?;
        let dropped = self
            .tx
            .prepare_cached(
                "DELETE FROM journal WHERE tenant_id = ?1 AND seq IN
                   (SELECT seq FROM dropped_tags WHERE tenant_id = ?1 AND seq > ?2 AND seq <= ?3)",
            )
            .map_err(meta_err)?
            .execute(params![self.tenant, after, upto])
            .map_err(meta_err)?;
        Ok(dropped as u64)
    }
}

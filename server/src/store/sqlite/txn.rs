//! A write transaction of one namespace database: the [`MetaTxn`] the commit rules run against.

use bvfs_proto::v1::Node;
use prost::Message;
use rusqlite::{OptionalExtension, params};

use super::meta_err;
use super::rows::{decode_node, key, read_head, read_tag};
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
        self.tx
            .prepare_cached("SELECT 1 FROM journal WHERE tenant_id = ?1 AND node_id = ?2 LIMIT 1")
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
}

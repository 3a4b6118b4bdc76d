//! A commit's transaction on PostgreSQL: the [`MetaTxn`] the commit rules run against, once its
//! tenant's `heads` row is locked.

use bvfs_proto::v1::Node;
use deadpool_postgres::Transaction;
use prost::Message;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::{col, pg_err};
use crate::store::io_runtime::IoRuntime;
use crate::store::records::{decode_node, key};
use crate::store::{JournalEntry, MetaTxn, NodeKey, ROOT_ID, StoreError, StoreResult, TenantId};

pub(super) struct PgTxn<'a> {
    tx: &'a Transaction<'a>,
    rt: &'a IoRuntime,
    tenant: TenantId,
    /// The head: as locked at the start, then as set.
    head: u64,
    /// Record the new head in the outbox for the cross-process notifier.
    outbox: bool,
    /// The collection epoch as locked at the start.
    gc_epoch: u64,
}

impl<'a> PgTxn<'a> {
    pub(super) fn new(
        tx: &'a Transaction<'a>,
        rt: &'a IoRuntime,
        tenant: TenantId,
        (head, gc_epoch): (u64, u64),
        outbox: bool,
    ) -> Self {
        Self {
            tx,
            rt,
            tenant,
            head,
            outbox,
            gc_epoch,
        }
    }

    /// Runs one statement of the transaction (prepared once per connection).
    fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> StoreResult<Vec<Row>> {
        self.rt
            .block_on(async {
                let statement = self.tx.prepare_cached(sql).await?;
                self.tx.query(&statement, params).await
            })
            .map_err(pg_err)
    }

    fn query_first(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> StoreResult<Option<Row>> {
        Ok(self.query(sql, params)?.into_iter().next())
    }
}

impl MetaTxn for PgTxn<'_> {
    fn node(&mut self, id: &NodeKey) -> StoreResult<Option<Node>> {
        self.query_first(
            "SELECT node FROM nodes WHERE tenant_id = $1 AND id = $2",
            &[&self.tenant, &&id[..]],
        )?
        .map(|row| decode_node(col(&row, 0)?))
        .transpose()
    }

    fn id_ever_used(&mut self, id: &NodeKey) -> StoreResult<bool> {
        if *id == ROOT_ID {
            return Ok(true);
        }
        Ok(self
            .query_first(
                "SELECT 1 WHERE EXISTS (SELECT 1 FROM nodes WHERE tenant_id = $1 AND id = $2)
                    OR EXISTS (SELECT 1 FROM journal WHERE tenant_id = $1 AND node_id = $2)
                    OR EXISTS (SELECT 1 FROM retired_ids WHERE tenant_id = $1 AND id = $2)",
                &[&self.tenant, &&id[..]],
            )?
            .is_some())
    }

    fn child_by_name(&mut self, parent: &NodeKey, name: &str) -> StoreResult<Option<NodeKey>> {
        self.query_first(
            "SELECT id FROM nodes WHERE tenant_id = $1 AND parent_id = $2 AND name = $3",
            &[&self.tenant, &&parent[..], &name],
        )?
        .map(|row| key(col(&row, 0)?))
        .transpose()
    }

    fn has_children(&mut self, dir: &NodeKey) -> StoreResult<bool> {
        Ok(self
            .query_first(
                "SELECT 1 FROM nodes WHERE tenant_id = $1 AND parent_id = $2 AND id <> $2 LIMIT 1",
                &[&self.tenant, &&dir[..]],
            )?
            .is_some())
    }

    fn put_node(&mut self, node: &Node) -> StoreResult<()> {
        self.query(
            "INSERT INTO nodes (tenant_id, id, parent_id, name, node) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (tenant_id, id) DO UPDATE
             SET parent_id = EXCLUDED.parent_id, name = EXCLUDED.name, node = EXCLUDED.node",
            &[
                &self.tenant,
                &node.id,
                &node.parent_id,
                &node.name,
                &node.encode_to_vec(),
            ],
        )?;
        Ok(())
    }

    fn remove_node(&mut self, id: &NodeKey) -> StoreResult<()> {
        self.query(
            "DELETE FROM nodes WHERE tenant_id = $1 AND id = $2",
            &[&self.tenant, &&id[..]],
        )?;
        Ok(())
    }

    fn head(&mut self) -> StoreResult<u64> {
        Ok(self.head)
    }

    fn tag_at(&mut self, seq: u64) -> StoreResult<Option<u64>> {
        if seq == 0 {
            return Ok(Some(0));
        }
        if seq > i64::MAX as u64 {
            return Ok(None);
        }
        self.query_first(super::reads::TAG_AT, &[&self.tenant, &(seq as i64)])?
            .map(|row| Ok(col::<i64>(&row, 0)? as u64))
            .transpose()
    }

    fn last_seq_of(&mut self, id: &NodeKey) -> StoreResult<Option<u64>> {
        self.query_first(
            "SELECT seq FROM journal WHERE tenant_id = $1 AND node_id = $2
             ORDER BY seq DESC LIMIT 1",
            &[&self.tenant, &&id[..]],
        )?
        .map(|row| Ok(col::<i64>(&row, 0)? as u64))
        .transpose()
    }

    fn parent_of(&mut self, id: &NodeKey) -> StoreResult<Option<NodeKey>> {
        self.query_first(
            "SELECT parent_id FROM nodes WHERE tenant_id = $1 AND id = $2",
            &[&self.tenant, &&id[..]],
        )?
        .map(|row| key(col(&row, 0)?))
        .transpose()
    }

    fn append(&mut self, entry: &JournalEntry) -> StoreResult<()> {
        self.query(
            "INSERT INTO journal (tenant_id, seq, node_id, kind, node, device, committed_ns, tag)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[
                &self.tenant,
                &(entry.seq as i64),
                &entry.node.id,
                &(entry.kind as i16),
                &entry.node.encode_to_vec(),
                &entry.device,
                &entry.committed_at_ns,
                &(entry.tag as i64),
            ],
        )?;
        Ok(())
    }

    fn set_head(&mut self, head: u64) -> StoreResult<()> {
        self.query(
            "UPDATE heads SET head = $2 WHERE tenant_id = $1",
            &[&self.tenant, &(head as i64)],
        )?;
        if self.outbox {
            // Durable with the commit: a notifier that dies before publishing leaves it for the
            // next one (any server process) to publish.
            self.query(
                "INSERT INTO outbox (tenant_id, head) VALUES ($1, $2)
                 ON CONFLICT (tenant_id) DO UPDATE SET head = GREATEST(outbox.head, EXCLUDED.head)",
                &[&self.tenant, &(head as i64)],
            )?;
        }
        self.head = head;
        Ok(())
    }

    fn gc_epoch(&mut self) -> StoreResult<u64> {
        Ok(self.gc_epoch)
    }

    fn set_gc_epoch(&mut self, epoch: u64) -> StoreResult<()> {
        let value = i64::try_from(epoch)
            .map_err(|_| StoreError::Meta(format!("gc epoch {epoch} too large")))?;
        self.query(
            "UPDATE heads SET gc_epoch = $2 WHERE tenant_id = $1",
            &[&self.tenant, &value],
        )?;
        self.gc_epoch = epoch;
        Ok(())
    }

    fn retention(&mut self) -> StoreResult<Option<u64>> {
        let row = self
            .query_first(
                "SELECT keep_versions_s FROM heads WHERE tenant_id = $1",
                &[&self.tenant],
            )?
            .ok_or_else(|| StoreError::Meta(format!("no head for tenant {}", self.tenant)))?;
        Ok(col::<Option<i64>>(&row, 0)?.map(|k| k.max(0) as u64))
    }

    fn set_retention(&mut self, keep_secs: Option<u64>) -> StoreResult<()> {
        let keep = keep_secs.map(|k| i64::try_from(k).unwrap_or(i64::MAX));
        self.query(
            "UPDATE heads SET keep_versions_s = $2 WHERE tenant_id = $1",
            &[&self.tenant, &keep],
        )?;
        Ok(())
    }

    fn journal_floor(&mut self) -> StoreResult<u64> {
        let row = self
            .query_first(
                "SELECT journal_floor FROM heads WHERE tenant_id = $1",
                &[&self.tenant],
            )?
            .ok_or_else(|| StoreError::Meta(format!("no head for tenant {}", self.tenant)))?;
        Ok(col::<i64>(&row, 0)? as u64)
    }

    fn has_entry(&mut self, seq: u64) -> StoreResult<bool> {
        let Ok(seq) = i64::try_from(seq) else {
            return Ok(false);
        };
        Ok(self
            .query_first(
                "SELECT 1 FROM journal WHERE tenant_id = $1 AND seq = $2",
                &[&self.tenant, &seq],
            )?
            .is_some())
    }

    fn compact(&mut self, floor: u64, after: u64, upto: u64) -> StoreResult<u64> {
        let as_i64 = |v: u64| {
            i64::try_from(v).map_err(|_| StoreError::Meta(format!("sequence {v} too large")))
        };
        let (floor, after, upto) = (as_i64(floor)?, as_i64(after)?, as_i64(upto.min(floor))?);
        self.query(
            "UPDATE heads SET journal_floor = GREATEST(journal_floor, $2) WHERE tenant_id = $1",
            &[&self.tenant, &floor],
        )?;
        // One statement: the data-modifying CTEs all see the journal as it was before the delete.
        let row = self
            .query_first(
                "WITH doomed AS (
                     DELETE FROM journal j
                     WHERE j.tenant_id = $1 AND j.seq > $2 AND j.seq <= $3
                       AND (j.kind = 2 OR EXISTS (SELECT 1 FROM journal k
                            WHERE k.tenant_id = $1 AND k.node_id = j.node_id
                              AND k.seq > j.seq AND k.seq <= $4))
                     RETURNING j.seq, j.tag, j.kind, j.node_id
                 ), tags AS (
                     INSERT INTO dropped_tags (tenant_id, seq, tag)
                     SELECT $1, seq, tag FROM doomed ON CONFLICT DO NOTHING
                 ), retired AS (
                     INSERT INTO retired_ids (tenant_id, id)
                     SELECT DISTINCT $1::bigint, node_id FROM doomed WHERE kind = 2
                     ON CONFLICT DO NOTHING
                 )
                 SELECT COUNT(*) FROM doomed",
                &[&self.tenant, &after, &upto, &floor],
            )?
            .ok_or_else(|| StoreError::Meta("compaction returned no row".into()))?;
        Ok(col::<i64>(&row, 0)? as u64)
    }
}

//! The embedded metadata store: one SQLite database in WAL mode.
//!
//! Live nodes sit in `nodes`; every change is a row of `journal` holding the node's full state after it,
//! so the journal is at once the change feed, the version history and the source of snapshots at a
//! cursor. One write transaction per commit (`BEGIN IMMEDIATE`, `synchronous=FULL`), so an
//! acknowledged commit survives a crash. Reads use a small pool of separate connections, which WAL lets
//! run beside the writer.

use std::path::Path;
use std::time::Duration;

use bvfs_proto::v1::{ChangeKind, Node, NodeAttrs, NodeKind};
use parking_lot::Mutex;
use prost::Message;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{
    JournalEntry, MetaStore, MetaTxn, NodeKey, Principal, ROOT_ID, StoreError, StoreResult,
    TenantId, WriteFn,
};

/// Version 2 added each namespace's `namespace_id` and each journal entry's lineage `tag`.
const SCHEMA_VERSION: i64 = 2;

const SCHEMA: &str = "
CREATE TABLE tenants (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_ns INTEGER NOT NULL,
    namespace_id BLOB NOT NULL
);
CREATE TABLE tokens (
    hash BLOB PRIMARY KEY,
    tenant_id INTEGER NOT NULL REFERENCES tenants(id),
    device TEXT NOT NULL,
    created_ns INTEGER NOT NULL
);
CREATE TABLE heads (
    tenant_id INTEGER PRIMARY KEY REFERENCES tenants(id),
    head INTEGER NOT NULL
);
CREATE TABLE nodes (
    tenant_id INTEGER NOT NULL,
    id BLOB NOT NULL,
    parent_id BLOB NOT NULL,
    name TEXT NOT NULL,
    node BLOB NOT NULL,
    PRIMARY KEY (tenant_id, id)
) WITHOUT ROWID;
CREATE UNIQUE INDEX nodes_by_name ON nodes (tenant_id, parent_id, name);
CREATE TABLE journal (
    tenant_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    node_id BLOB NOT NULL,
    kind INTEGER NOT NULL,
    node BLOB NOT NULL,
    device TEXT NOT NULL,
    committed_ns INTEGER NOT NULL,
    tag INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, seq)
) WITHOUT ROWID;
CREATE INDEX journal_by_node ON journal (tenant_id, node_id, seq);
CREATE INDEX journal_deletes ON journal (tenant_id, seq) WHERE kind = 2;
";

/// From schema version 1: every namespace gets its identity and every journal entry a tag (random,
/// odd so never 0). Clients that synced before keep working: their positions carry tag 0, which is
/// not checked, and they learn tags from the next page.
const MIGRATE_1_TO_2: &str = "
ALTER TABLE tenants ADD COLUMN namespace_id BLOB NOT NULL DEFAULT x'';
UPDATE tenants SET namespace_id = randomblob(16);
ALTER TABLE journal ADD COLUMN tag INTEGER NOT NULL DEFAULT 0;
UPDATE journal SET tag = random() | 1;
";

/// The columns of a journal row, in the order [`entry_from_row`] reads them.
const ENTRY: &str = "seq, kind, node, device, committed_ns, tag";

// The partial index and the deleted-nodes query spell the delete kind as the literal 2.
const _: () = assert!(ChangeKind::Delete as i32 == 2);

/// How many read connections to keep open.
const READERS: usize = 4;

/// The SQLite metadata store.
pub struct SqliteMetaStore {
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    path: std::path::PathBuf,
}

fn meta_err(e: rusqlite::Error) -> StoreError {
    StoreError::Meta(e.to_string())
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn open_connection(path: &Path) -> StoreResult<Connection> {
    let conn = Connection::open(path).map_err(meta_err)?;
    conn.busy_timeout(Duration::from_secs(30))
        .map_err(meta_err)?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;",
    )
    .map_err(meta_err)?;
    Ok(conn)
}

fn decode_node(bytes: &[u8]) -> StoreResult<Node> {
    Node::decode(bytes).map_err(|e| StoreError::Corrupt(format!("undecodable node record: {e}")))
}

fn decode_kind(kind: i64) -> StoreResult<ChangeKind> {
    ChangeKind::try_from(kind as i32)
        .ok()
        .filter(|k| *k != ChangeKind::Unspecified)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown journal kind {kind}")))
}

fn key(bytes: Vec<u8>) -> StoreResult<NodeKey> {
    bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt("node id is not 16 bytes".into()))
}

fn root_node() -> Node {
    Node {
        id: ROOT_ID.to_vec(),
        parent_id: Vec::new(),
        name: String::new(),
        kind: NodeKind::Directory as i32,
        attrs: Some(NodeAttrs::default()),
        revision: 0,
    }
}

/// A journal row as read: seq, kind, node record, device, commit time, tag.
type EntryRow = (i64, i64, Vec<u8>, String, i64, i64);

fn entry_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<EntryRow> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
    ))
}

fn to_entry(
    (seq, kind, node, device, committed_at_ns, tag): EntryRow,
) -> StoreResult<JournalEntry> {
    Ok(JournalEntry {
        seq: seq as u64,
        kind: decode_kind(kind)?,
        node: decode_node(&node)?,
        device,
        committed_at_ns,
        tag: tag as u64,
    })
}

/// Journal rows as entries until their stored node records add up to `max_bytes` (the row that
/// reaches it included, so at least one). The flag says whether the byte budget cut the read short.
fn read_bounded(
    rows: impl Iterator<Item = rusqlite::Result<EntryRow>>,
    max_bytes: usize,
) -> StoreResult<(Vec<JournalEntry>, bool)> {
    let (mut entries, mut bytes) = (Vec::new(), 0usize);
    for row in rows {
        let row = row.map_err(meta_err)?;
        bytes = bytes.saturating_add(row.2.len());
        entries.push(to_entry(row)?);
        if bytes >= max_bytes {
            return Ok((entries, true));
        }
    }
    Ok((entries, false))
}

impl SqliteMetaStore {
    /// Opens (creating or migrating) the database at `path`.
    pub fn open(path: &Path) -> StoreResult<Self> {
        let mut writer = open_connection(path)?;
        migrate(&mut writer)?;
        Ok(Self {
            writer: Mutex::new(writer),
            readers: Mutex::new(Vec::new()),
            path: path.to_owned(),
        })
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> StoreResult<T>) -> StoreResult<T> {
        let conn = match self.readers.lock().pop() {
            Some(conn) => conn,
            None => open_connection(&self.path)?,
        };
        let result = f(&conn);
        let mut readers = self.readers.lock();
        if readers.len() < READERS {
            readers.push(conn);
        }
        result
    }
}

fn migrate(conn: &mut Connection) -> StoreResult<()> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(meta_err)?;
    match version {
        0 => {
            let tx = conn.transaction().map_err(meta_err)?;
            tx.execute_batch(SCHEMA).map_err(meta_err)?;
            tx.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))
                .map_err(meta_err)?;
            tx.commit().map_err(meta_err)
        }
        1 => {
            let tx = conn.transaction().map_err(meta_err)?;
            tx.execute_batch(MIGRATE_1_TO_2).map_err(meta_err)?;
            tx.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))
                .map_err(meta_err)?;
            tx.commit().map_err(meta_err)
        }
        SCHEMA_VERSION => Ok(()),
        newer => Err(StoreError::Meta(format!(
            "the database has schema version {newer}, newer than this bvfs understands ({SCHEMA_VERSION}); \
             upgrade bvfs"
        ))),
    }
}

impl MetaStore for SqliteMetaStore {
    fn create_tenant(&self, name: &str) -> StoreResult<TenantId> {
        let mut conn = self.writer.lock();
        let tx = conn.transaction().map_err(meta_err)?;
        tx.execute(
            "INSERT INTO tenants (name, created_ns, namespace_id) VALUES (?1, ?2, ?3)",
            params![name, now_ns(), &rand::random::<[u8; 16]>()[..]],
        )
        .map_err(meta_err)?;
        let tenant = tx.last_insert_rowid();
        tx.execute(
            "INSERT INTO heads (tenant_id, head) VALUES (?1, 0)",
            [tenant],
        )
        .map_err(meta_err)?;
        let root = root_node();
        tx.execute(
            "INSERT INTO nodes (tenant_id, id, parent_id, name, node) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![tenant, &ROOT_ID[..], &ROOT_ID[..], "", root.encode_to_vec()],
        )
        .map_err(meta_err)?;
        tx.commit().map_err(meta_err)?;
        Ok(tenant)
    }

    fn tenant_by_name(&self, name: &str) -> StoreResult<Option<TenantId>> {
        self.read(|c| {
            c.query_row("SELECT id FROM tenants WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()
            .map_err(meta_err)
        })
    }

    fn tenants(&self) -> StoreResult<Vec<(TenantId, String)>> {
        self.read(|c| {
            let mut stmt = c
                .prepare("SELECT id, name FROM tenants ORDER BY name")
                .map_err(meta_err)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(meta_err)?;
            rows.collect::<Result<_, _>>().map_err(meta_err)
        })
    }

    fn add_token(&self, tenant: TenantId, token_hash: &[u8; 32], device: &str) -> StoreResult<()> {
        self.writer
            .lock()
            .execute(
                "INSERT INTO tokens (hash, tenant_id, device, created_ns) VALUES (?1, ?2, ?3, ?4)",
                params![&token_hash[..], tenant, device, now_ns()],
            )
            .map_err(meta_err)?;
        Ok(())
    }

    fn principal(&self, token_hash: &[u8; 32]) -> StoreResult<Option<Principal>> {
        self.read(|c| {
            c.query_row(
                "SELECT t.tenant_id, n.name, t.device FROM tokens t JOIN tenants n ON n.id = t.tenant_id
                 WHERE t.hash = ?1",
                [&token_hash[..]],
                |r| {
                    Ok(Principal {
                        tenant: r.get(0)?,
                        tenant_name: r.get(1)?,
                        device: r.get(2)?,
                    })
                },
            )
            .optional()
            .map_err(meta_err)
        })
    }

    fn head(&self, tenant: TenantId) -> StoreResult<u64> {
        self.read(|c| read_head(c, tenant))
    }

    fn namespace_id(&self, tenant: TenantId) -> StoreResult<[u8; 16]> {
        self.read(|c| {
            let id: Vec<u8> = c
                .query_row(
                    "SELECT namespace_id FROM tenants WHERE id = ?1",
                    [tenant],
                    |r| r.get(0),
                )
                .map_err(meta_err)?;
            id.try_into()
                .map_err(|_| StoreError::Corrupt(format!("tenant {tenant} has no namespace id")))
        })
    }

    fn tag_at(&self, tenant: TenantId, seq: u64) -> StoreResult<Option<u64>> {
        self.read(|c| read_tag(c, tenant, seq))
    }

    fn changes_after(
        &self,
        tenant: TenantId,
        cursor: u64,
        limit: usize,
        max_bytes: usize,
    ) -> StoreResult<Vec<JournalEntry>> {
        self.read(|c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {ENTRY} FROM journal
                     WHERE tenant_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"
                ))
                .map_err(meta_err)?;
            let rows = stmt
                .query_map(params![tenant, cursor as i64, limit as i64], entry_from_row)
                .map_err(meta_err)?;
            Ok(read_bounded(rows, max_bytes)?.0)
        })
    }

    fn snapshot_page(
        &self,
        tenant: TenantId,
        at: u64,
        after: Option<&NodeKey>,
        limit: usize,
        max_bytes: usize,
    ) -> StoreResult<(Vec<Node>, Option<NodeKey>)> {
        self.read(|c| {
            let mut nodes = Vec::new();
            if after.is_none() {
                nodes.push(root_node());
            }
            let after = after.copied().unwrap_or(ROOT_ID);
            // The last journal entry of each node at or before `at` is its state then; a delete means
            // it did not exist. The page is cut by nodes examined, so deleted ones do not stall paging.
            let mut stmt = c
                .prepare_cached(
                    "SELECT last.node_id, j.kind, j.node FROM
                       (SELECT node_id, MAX(seq) AS seq FROM journal
                        WHERE tenant_id = ?1 AND node_id > ?2 AND seq <= ?3
                        GROUP BY node_id ORDER BY node_id LIMIT ?4) AS last
                     JOIN journal j ON j.tenant_id = ?1 AND j.seq = last.seq
                     ORDER BY last.node_id",
                )
                .map_err(meta_err)?;
            let mut rows = stmt
                .query(params![tenant, &after[..], at as i64, limit as i64])
                .map_err(meta_err)?;
            let (mut examined, mut bytes, mut full) = (0, 0, false);
            let mut last = None;
            while let Some(row) = rows.next().map_err(meta_err)? {
                examined += 1;
                last = Some(key(row.get(0).map_err(meta_err)?)?);
                if decode_kind(row.get(1).map_err(meta_err)?)? == ChangeKind::Upsert {
                    let blob: Vec<u8> = row.get(2).map_err(meta_err)?;
                    bytes += blob.len();
                    nodes.push(decode_node(&blob)?);
                }
                if bytes >= max_bytes {
                    full = true;
                    break;
                }
            }
            let next = if examined == limit || full {
                last
            } else {
                None
            };
            Ok((nodes, next))
        })
    }

    fn versions(&self, tenant: TenantId, id: &NodeKey) -> StoreResult<Vec<JournalEntry>> {
        self.read(|c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {ENTRY} FROM journal
                     WHERE tenant_id = ?1 AND node_id = ?2 ORDER BY seq DESC"
                ))
                .map_err(meta_err)?;
            let rows = stmt
                .query_map(params![tenant, &id[..]], entry_from_row)
                .map_err(meta_err)?;
            rows.map(|r| r.map_err(meta_err).and_then(to_entry))
                .collect()
        })
    }

    fn versions_page(
        &self,
        tenant: TenantId,
        id: &NodeKey,
        before: u64,
        limit: usize,
        max_bytes: usize,
    ) -> StoreResult<(Vec<JournalEntry>, bool)> {
        self.read(|c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {ENTRY} FROM journal
                     WHERE tenant_id = ?1 AND node_id = ?2 AND seq < ?3 ORDER BY seq DESC LIMIT ?4"
                ))
                .map_err(meta_err)?;
            let rows = stmt
                .query_map(
                    params![tenant, &id[..], before as i64, limit as i64],
                    entry_from_row,
                )
                .map_err(meta_err)?;
            let (entries, full) = read_bounded(rows, max_bytes)?;
            let more = full || entries.len() == limit;
            Ok((entries, more))
        })
    }

    fn entry(&self, tenant: TenantId, seq: u64) -> StoreResult<Option<JournalEntry>> {
        self.read(|c| {
            c.query_row(
                &format!("SELECT {ENTRY} FROM journal WHERE tenant_id = ?1 AND seq = ?2"),
                params![tenant, seq as i64],
                entry_from_row,
            )
            .optional()
            .map_err(meta_err)?
            .map(to_entry)
            .transpose()
        })
    }

    fn deleted(
        &self,
        tenant: TenantId,
        before: u64,
        limit: usize,
        max_bytes: usize,
    ) -> StoreResult<(Vec<JournalEntry>, bool)> {
        self.read(|c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT j.seq, j.kind, j.node, j.device, j.committed_ns, j.tag FROM journal j
                     WHERE j.tenant_id = ?1 AND j.kind = 2 AND j.seq < ?2
                       AND NOT EXISTS (SELECT 1 FROM nodes n WHERE n.tenant_id = ?1 AND n.id = j.node_id)
                       AND j.seq = (SELECT MAX(seq) FROM journal k
                                    WHERE k.tenant_id = ?1 AND k.node_id = j.node_id)
                     ORDER BY j.seq DESC LIMIT ?3",
                )
                .map_err(meta_err)?;
            let rows = stmt
                .query_map(
                    params![tenant, before as i64, limit as i64],
                    entry_from_row,
                )
                .map_err(meta_err)?;
            let (entries, full) = read_bounded(rows, max_bytes)?;
            let more = full || entries.len() == limit;
            Ok((entries, more))
        })
    }

    fn write(&self, tenant: TenantId, f: &mut WriteFn<'_>) -> Result<(), tonic::Status> {
        let mut conn = self.writer.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| store_status(meta_err(e)))?;
        let mut txn = SqliteTxn { tx: &tx, tenant };
        f(&mut txn)?;
        tx.commit().map_err(|e| store_status(meta_err(e)))
    }
}

/// How a store failure is reported to a client: the details go to the log, not the wire.
pub(crate) fn store_status(err: StoreError) -> tonic::Status {
    tracing::error!(error = %err, "storage failure");
    tonic::Status::internal("the server could not access its storage; try again later")
}

fn read_head(c: &Connection, tenant: TenantId) -> StoreResult<u64> {
    let head: Option<i64> = c
        .query_row(
            "SELECT head FROM heads WHERE tenant_id = ?1",
            [tenant],
            |r| r.get(0),
        )
        .optional()
        .map_err(meta_err)?;
    Ok(head.unwrap_or(0) as u64)
}

/// The tag of the journal entry at `seq` (`Some(0)` for 0, the empty journal's position).
fn read_tag(c: &Connection, tenant: TenantId, seq: u64) -> StoreResult<Option<u64>> {
    if seq == 0 {
        return Ok(Some(0));
    }
    let tag: Option<i64> = c
        .prepare_cached("SELECT tag FROM journal WHERE tenant_id = ?1 AND seq = ?2")
        .map_err(meta_err)?
        .query_row(params![tenant, seq as i64], |r| r.get(0))
        .optional()
        .map_err(meta_err)?;
    Ok(tag.map(|t| t as u64))
}

struct SqliteTxn<'a> {
    tx: &'a rusqlite::Transaction<'a>,
    tenant: TenantId,
}

impl MetaTxn for SqliteTxn<'_> {
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

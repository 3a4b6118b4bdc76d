//! The embedded metadata store on SQLite: a catalog (`meta.sqlite`: tenants, tokens) and one
//! database per tenant's namespace (`namespaces/<tenant>.sqlite`), each with its own writer, so
//! commits of different tenants run side by side ([`schema`] has the layout and migrations).
//!
//! Live nodes sit in `nodes`; every change is a row of `journal` holding the node's full state after it,
//! so the journal is at once the change feed, the version history and the source of snapshots at a
//! cursor. One write transaction per commit (`BEGIN IMMEDIATE`, `synchronous=FULL`), so an
//! acknowledged commit survives a crash. Reads use a small pool of separate connections per database,
//! which WAL lets run beside the writer.

mod pool;
mod rows;
mod schema;
mod txn;

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bvfs_proto::v1::{ChangeKind, Node};
use parking_lot::Mutex;
use rusqlite::{OptionalExtension, TransactionBehavior, params};

use super::{
    Device, JournalEntry, MetaStore, NodeKey, Principal, ROOT_ID, StoreError, StoreResult,
    TenantId, WriteFn,
};
use pool::{Pool, open_connection};
use rows::{
    ENTRY, decode_kind, decode_node, entry_from_row, key, read_bounded, read_floor, read_head,
    read_tag, root_node, to_entry,
};
use txn::SqliteTxn;

/// Idle read connections kept per database.
const READERS: usize = 4;
/// Namespace databases kept open (least recently used ones are closed beyond it; one in use stays
/// open for its user).
const OPEN_NAMESPACES: usize = 256;

/// The SQLite metadata store.
pub struct SqliteMetaStore {
    catalog: Pool,
    /// Where the namespace databases live.
    namespaces_dir: PathBuf,
    namespaces: Mutex<lru::LruCache<TenantId, Arc<Pool>>>,
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

impl SqliteMetaStore {
    /// Opens (creating or migrating) the catalog at `path`; namespaces live beside it in
    /// `namespaces/`.
    pub fn open(path: &Path) -> StoreResult<Self> {
        let namespaces_dir = path
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .join("namespaces");
        let mut catalog = open_connection(path)?;
        schema::migrate_catalog(&mut catalog, &namespaces_dir)?;
        std::fs::create_dir_all(&namespaces_dir)
            .map_err(|e| StoreError::Meta(format!("{}: {e}", namespaces_dir.display())))?;
        Ok(Self {
            catalog: Pool::new(catalog, path, READERS),
            namespaces_dir,
            namespaces: Mutex::new(lru::LruCache::new(
                NonZeroUsize::new(OPEN_NAMESPACES).expect("non-zero"),
            )),
        })
    }

    /// A tenant's name, creation time and namespace id (for `bvfs admin migrate`).
    pub fn tenant_record(&self, tenant: TenantId) -> StoreResult<(String, i64, [u8; 16])> {
        let (name, created_ns, id): (String, i64, Vec<u8>) = self.catalog.read(|c| {
            c.query_row(
                "SELECT name, created_ns, namespace_id FROM tenants WHERE id = ?1",
                [tenant],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .map_err(meta_err)
        })?;
        let id = id
            .try_into()
            .map_err(|_| StoreError::Corrupt(format!("tenant {tenant} has no namespace id")))?;
        Ok((name, created_ns, id))
    }

    /// A tenant's tokens as stored: hash, device, creation time (for `bvfs admin migrate`).
    pub fn token_records(&self, tenant: TenantId) -> StoreResult<Vec<([u8; 32], String, i64)>> {
        let rows: Vec<(Vec<u8>, String, i64)> = self.catalog.read(|c| {
            let mut stmt = c
                .prepare("SELECT hash, device, created_ns FROM tokens WHERE tenant_id = ?1 ORDER BY created_ns")
                .map_err(meta_err)?;
            let rows = stmt
                .query_map([tenant], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .map_err(meta_err)?;
            rows.collect::<Result<_, _>>().map_err(meta_err)
        })?;
        rows.into_iter()
            .map(|(hash, device, created)| {
                let hash = hash
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("a token hash is not 32 bytes".into()))?;
                Ok((hash, device, created))
            })
            .collect()
    }

    /// A tenant's retention state as stored (for `bvfs admin migrate`).
    pub fn retention_state(&self, tenant: TenantId) -> StoreResult<super::RetentionState> {
        self.namespace(tenant)?.read(|c| {
            let (keep, floor): (Option<i64>, i64) = c
                .query_row(
                    "SELECT keep_versions_s, journal_floor FROM heads WHERE tenant_id = ?1",
                    [tenant],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map_err(meta_err)?;
            let mut stmt = c
                .prepare("SELECT seq, tag FROM dropped_tags WHERE tenant_id = ?1 ORDER BY seq")
                .map_err(meta_err)?;
            let dropped_tags = stmt
                .query_map([tenant], |r| {
                    Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
                })
                .map_err(meta_err)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(meta_err)?;
            let mut stmt = c
                .prepare("SELECT id FROM retired_ids WHERE tenant_id = ?1 ORDER BY id")
                .map_err(meta_err)?;
            let retired_ids = stmt
                .query_map([tenant], |r| r.get::<_, Vec<u8>>(0))
                .map_err(meta_err)?
                .map(|id| id.map_err(meta_err).and_then(key))
                .collect::<StoreResult<Vec<_>>>()?;
            Ok(super::RetentionState {
                keep_secs: keep.map(|k| k.max(0) as u64),
                floor: floor as u64,
                dropped_tags,
                retired_ids,
            })
        })
    }

    /// The database of `tenant`'s namespace, opened (and created, for a new tenant) on first use.
    fn namespace(&self, tenant: TenantId) -> StoreResult<Arc<Pool>> {
        if let Some(pool) = self.namespaces.lock().get(&tenant) {
            return Ok(pool.clone());
        }
        let path = schema::namespace_path(&self.namespaces_dir, tenant);
        let mut writer = open_connection(&path)?;
        schema::ensure_namespace(&mut writer, tenant)?;
        let pool = Arc::new(Pool::new(writer, &path, READERS));
        // Another thread may have opened it meanwhile: keep one (two would still be correct, as
        // SQLite serialises their writers, but would waste connections).
        let mut open = self.namespaces.lock();
        Ok(open.get_or_insert(tenant, || pool).clone())
    }
}

impl MetaStore for SqliteMetaStore {
    fn create_tenant(&self, name: &str) -> StoreResult<TenantId> {
        let tenant = {
            let conn = self.catalog.writer.lock();
            conn.execute(
                "INSERT INTO tenants (name, created_ns, namespace_id) VALUES (?1, ?2, ?3)",
                params![name, now_ns(), &rand::random::<[u8; 16]>()[..]],
            )
            .map_err(meta_err)?;
            conn.last_insert_rowid()
        };
        // Its namespace database, with the root (made again on first use if this is cut short).
        self.namespace(tenant)?;
        Ok(tenant)
    }

    fn tenant_by_name(&self, name: &str) -> StoreResult<Option<TenantId>> {
        self.catalog.read(|c| {
            c.query_row("SELECT id FROM tenants WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()
            .map_err(meta_err)
        })
    }

    fn tenants(&self) -> StoreResult<Vec<(TenantId, String)>> {
        self.catalog.read(|c| {
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
        self.catalog
            .writer
            .lock()
            .execute(
                "INSERT INTO tokens (hash, tenant_id, device, created_ns) VALUES (?1, ?2, ?3, ?4)",
                params![&token_hash[..], tenant, device, now_ns()],
            )
            .map_err(meta_err)?;
        Ok(())
    }

    fn principal(&self, token_hash: &[u8; 32]) -> StoreResult<Option<Principal>> {
        self.catalog.read(|c| {
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

    fn devices(&self, tenant: TenantId) -> StoreResult<Vec<Device>> {
        self.catalog.read(|c| {
            let mut stmt = c
                .prepare(
                    "SELECT device, COUNT(*), MIN(created_ns) FROM tokens WHERE tenant_id = ?1
                     GROUP BY device ORDER BY MIN(created_ns), device",
                )
                .map_err(meta_err)?;
            let rows = stmt
                .query_map([tenant], |r| {
                    Ok(Device {
                        name: r.get(0)?,
                        tokens: r.get::<_, i64>(1)? as usize,
                        created_ns: r.get(2)?,
                    })
                })
                .map_err(meta_err)?;
            rows.collect::<Result<_, _>>().map_err(meta_err)
        })
    }

    fn revoke(&self, tenant: TenantId, device: &str) -> StoreResult<usize> {
        self.catalog
            .writer
            .lock()
            .execute(
                "DELETE FROM tokens WHERE tenant_id = ?1 AND device = ?2",
                params![tenant, device],
            )
            .map_err(meta_err)
    }

    fn head(&self, tenant: TenantId) -> StoreResult<u64> {
        self.namespace(tenant)?.read(|c| read_head(c, tenant))
    }

    fn namespace_id(&self, tenant: TenantId) -> StoreResult<[u8; 16]> {
        self.catalog.read(|c| {
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
        self.namespace(tenant)?.read(|c| read_tag(c, tenant, seq))
    }

    fn changes_after(
        &self,
        tenant: TenantId,
        cursor: u64,
        limit: usize,
        max_bytes: usize,
    ) -> StoreResult<Vec<JournalEntry>> {
        self.namespace(tenant)?.read(|c| {
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
        self.namespace(tenant)?.read(|c| {
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
        self.namespace(tenant)?.read(|c| {
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
        self.namespace(tenant)?.read(|c| {
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
        self.namespace(tenant)?.read(|c| {
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
        self.namespace(tenant)?.read(|c| {
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

    fn journal_floor(&self, tenant: TenantId) -> StoreResult<u64> {
        self.namespace(tenant)?.read(|c| read_floor(c, tenant))
    }

    fn settled_before(&self, tenant: TenantId, cutoff_ns: i64) -> StoreResult<u64> {
        self.namespace(tenant)?.read(|c| {
            // The head first: an entry committed after this read comes after it.
            let head = read_head(c, tenant)?;
            let first_recent: Option<i64> = c
                .prepare_cached(
                    "SELECT MIN(seq) FROM journal WHERE tenant_id = ?1 AND committed_ns >= ?2",
                )
                .map_err(meta_err)?
                .query_row(params![tenant, cutoff_ns], |r| r.get(0))
                .map_err(meta_err)?;
            Ok(match first_recent {
                Some(seq) => head.min((seq as u64).saturating_sub(1)),
                None => head,
            })
        })
    }

    fn gc_lock(&self) -> StoreResult<Option<Box<dyn crate::store::GcLock>>> {
        let dir = self.namespaces_dir.parent().unwrap_or(Path::new("."));
        let path = dir.join("gc.lock");
        let file = std::fs::File::create(&path)
            .map_err(|e| StoreError::Meta(format!("{}: {e}", path.display())))?;
        Ok(file
            .try_lock()
            .ok()
            .map(|()| Box::new(FileGcLock(file)) as Box<dyn crate::store::GcLock>))
    }

    fn write(&self, tenant: TenantId, f: &mut WriteFn<'_>) -> Result<(), tonic::Status> {
        let pool = self.namespace(tenant).map_err(store_status)?;
        let mut conn = pool.writer.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| store_status(meta_err(e)))?;
        let mut txn = SqliteTxn::new(&tx, tenant);
        f(&mut txn)?;
        tx.commit().map_err(|e| store_status(meta_err(e)))
    }
}

/// The collection lock of an embedded store: an exclusive lock on `gc.lock` beside the catalog,
/// released by the kernel when the file is closed, also by a process that dies.
struct FileGcLock(#[allow(dead_code)] std::fs::File);

impl crate::store::GcLock for FileGcLock {
    fn check(&self) -> StoreResult<()> {
        Ok(())
    }
}

/// How a store failure is reported to a client: the details go to the log, not the wire.
pub(crate) fn store_status(err: StoreError) -> tonic::Status {
    tracing::error!(error = %err, "storage failure");
    tonic::Status::internal("the server could not access its storage; try again later")
}

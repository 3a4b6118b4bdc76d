//! The metadata store on PostgreSQL, shared by any number of `bvfs serve` processes.
//!
//! Same model as the embedded store: live nodes in `nodes`, every change a row of `journal` holding
//! the node's full state after it, a head per tenant, namespace ids and lineage tags.
//!
//! **One writer per tenant, across processes.** A commit is one transaction that first locks its
//! tenant's `heads` row (`SELECT … FOR UPDATE`): commits of one tenant, from any server process,
//! run one after another, and each reads the namespace as the previous one left it (READ COMMITTED
//! takes a fresh snapshot per statement, after the lock is granted). The new entries take sequences
//! head + 1, …, and the head row moves in the same transaction, so the journal stays gap-free; its
//! primary key refuses a duplicate sequence whatever happens. Commits of different tenants lock
//! different rows and never wait for each other. A server killed mid-commit drops its connection and
//! PostgreSQL rolls the transaction back, releasing the lock.
//!
//! **Outbox.** With a cross-process notifier, each commit also upserts its tenant's new head into
//! `outbox` in the same transaction ([`crate::notify::relay`] publishes and clears it), so no commit
//! is acknowledged without its notification being durable too.
//!
//! Calls are synchronous (the commit rules run on the blocking pool); they drive tokio-postgres on
//! the store's own [`IoRuntime`]. Page reads are bounded in bytes inside the database (a running sum
//! of record sizes), so a page of huge records is never read whole into memory.

mod reads;
mod schema;
mod txn;

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bvfs_proto::v1::Node;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use parking_lot::Mutex;
use prost::Message;
use tokio_postgres::NoTls;
use tokio_postgres::config::SslMode;

use super::io_runtime::IoRuntime;
use super::records::{now_ns, root_node};
use super::{
    Device, JournalEntry, MetaStore, NodeKey, Principal, ROOT_ID, StoreError, StoreResult,
    TenantId, WriteFn,
};
use crate::store::sqlite::store_status;
use txn::PgTxn;

/// Connections each server process keeps at most. A commit holds one for its transaction (also
/// while it waits for its tenant's lock), a read for one query.
pub const POOL_SIZE: usize = 32;
/// How long a request waits for a free connection before it fails.
const POOL_WAIT: Duration = Duration::from_secs(30);
/// How long opening a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Server-side limits on every session (unless the URL sets `options`): no statement runs for more
/// than a minute, and a transaction left idle (its server process hung or cut off) is ended, so a
/// tenant's lock is never held for long by a process that is gone.
const SESSION_OPTIONS: &str =
    "-c statement_timeout=60000 -c idle_in_transaction_session_timeout=30000";

/// An error with its causes ("db error: ERROR: password authentication failed …"): the driver's
/// own message alone rarely says what went wrong.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message = format!("{message}: {text}");
        }
        source = cause.source();
    }
    message
}

pub(crate) fn pg_err(e: tokio_postgres::Error) -> StoreError {
    StoreError::Meta(format!("PostgreSQL: {}", with_causes(&e)))
}

/// Column `idx` of `row`; a type the schema does not promise is corruption, not a panic.
pub(crate) fn col<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a tokio_postgres::Row,
    idx: usize,
) -> StoreResult<T> {
    row.try_get(idx)
        .map_err(|e| StoreError::Corrupt(format!("PostgreSQL column {idx}: {e}")))
}

fn pool_err(e: deadpool_postgres::PoolError) -> StoreError {
    StoreError::Meta(format!("PostgreSQL connection pool: {}", with_causes(&e)))
}

/// The PostgreSQL metadata store.
pub struct PgMetaStore {
    pool: Pool,
    /// Whether commits write their head to the outbox (a cross-process notifier drains it).
    outbox: bool,
    /// Namespace ids by tenant: fixed at creation, read on every page, so remembered.
    namespace_ids: Mutex<HashMap<TenantId, [u8; 16]>>,
    /// This process's commits in progress, one gate per tenant. Correctness comes from the
    /// database lock; the gate only makes a tenant's queued commits wait here, holding no pooled
    /// connection, so one tenant's burst cannot take every connection from the others.
    writers: Mutex<HashMap<TenantId, Arc<Mutex<()>>>>,
    /// Declared last: the pool's connections run on it.
    rt: Arc<IoRuntime>,
}

/// `url` with its password, if any, replaced by `***`, for messages and logs.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, tail) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            let hidden = if userinfo.contains(':') { ":***" } else { "" };
            format!("{scheme}://{user}{hidden}@{host}{tail}")
        }
        None => url.to_string(),
    }
}

impl PgMetaStore {
    /// Connects to the database at `url` (`postgres://user:password@host:port/db`, libpq-style
    /// parameters; `sslmode=require` for TLS verified against the system's CA certificates; the
    /// password may come from `PGPASSWORD`) and applies pending schema migrations. `outbox`: commits record their
    /// new head for a cross-process notifier.
    pub fn connect(url: &str, outbox: bool) -> StoreResult<Self> {
        let mut config = tokio_postgres::Config::from_str(url).map_err(|e| {
            StoreError::Meta(format!("invalid PostgreSQL URL {}: {e}", redact(url)))
        })?;
        // As libpq does: a password from the environment keeps it out of URLs and process lists.
        if config.get_password().is_none()
            && let Some(password) = std::env::var_os("PGPASSWORD")
        {
            config.password(password.as_encoded_bytes());
        }
        if config.get_options().is_none() {
            config.options(SESSION_OPTIONS);
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.keepalives_idle(Duration::from_secs(30));
        config.application_name("bvfs");
        let recycling = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match config.get_ssl_mode() {
            // TLS, verified against the system's CA certificates (`SSL_CERT_FILE` adds one).
            SslMode::Require => {
                let _ = rustls::crypto::ring::default_provider().install_default();
                let (tls, _unreadable) =
                    tokio_postgres_rustls::MakeRustlsConnect::with_native_certs().map_err(|e| {
                        StoreError::Meta(format!(
                            "sslmode=require, but no CA certificate could be read from the system store or SSL_CERT_FILE: {e:?}"
                        ))
                    })?;
                Manager::from_config(config, tls, recycling)
            }
            // `prefer` (the default) and `disable`: plaintext, for a database on a trusted
            // network or this host; ask for `sslmode=require` otherwise.
            _ => Manager::from_config(config, NoTls, recycling),
        };
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Meta(format!("PostgreSQL connection pool: {e}")))?;
        let rt = Arc::new(IoRuntime::new("bvfs-pg", 2)?);
        rt.block_on(async {
            let mut client = pool.get().await.map_err(|e| {
                StoreError::Meta(format!(
                    "cannot connect to PostgreSQL at {}: {}",
                    redact(url),
                    with_causes(&e)
                ))
            })?;
            schema::migrate(&mut client).await
        })?;
        Ok(Self {
            pool,
            outbox,
            namespace_ids: Mutex::default(),
            writers: Mutex::default(),
            rt,
        })
    }

    /// The runtime the store's connections run on (the notifier's relay runs there too).
    pub fn runtime(&self) -> Arc<IoRuntime> {
        self.rt.clone()
    }

    /// Runs one query on a pooled connection.
    fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> StoreResult<Vec<tokio_postgres::Row>> {
        self.rt.block_on(async {
            let client = self.pool.get().await.map_err(pool_err)?;
            let statement = client.prepare_cached(sql).await.map_err(pg_err)?;
            client.query(&statement, params).await.map_err(pg_err)
        })
    }

    /// Runs one query expecting at most one row.
    fn query_opt(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> StoreResult<Option<tokio_postgres::Row>> {
        let mut rows = self.query(sql, params)?;
        match rows.len() {
            0 | 1 => Ok(rows.pop()),
            n => Err(StoreError::Corrupt(format!(
                "{n} rows where one was expected"
            ))),
        }
    }

    /// Every tenant's outbox row: the newest head each has committed and not yet had published.
    pub fn outbox_pending(&self, limit: i64) -> StoreResult<Vec<(TenantId, u64)>> {
        let rows = self.query(
            "SELECT tenant_id, head FROM outbox ORDER BY tenant_id LIMIT $1",
            &[&limit],
        )?;
        rows.iter()
            .map(|r| Ok((col(r, 0)?, col::<i64>(r, 1)? as u64)))
            .collect()
    }

    /// Clears outbox rows whose head has been published (a newer head committed meanwhile stays).
    /// Rows that a commit in flight holds are skipped, not waited for: that commit publishes again.
    pub fn outbox_published(&self, published: &[(TenantId, u64)]) -> StoreResult<u64> {
        if published.is_empty() {
            return Ok(0);
        }
        let tenants: Vec<i64> = published.iter().map(|(t, _)| *t).collect();
        let heads: Vec<i64> = published.iter().map(|(_, h)| *h as i64).collect();
        let deleted = self.query(
            "DELETE FROM outbox WHERE tenant_id IN (
                 SELECT o.tenant_id FROM outbox o
                 JOIN unnest($1::bigint[], $2::bigint[]) AS p (tenant_id, head)
                   ON o.tenant_id = p.tenant_id AND o.head <= p.head
                 FOR UPDATE OF o SKIP LOCKED)
             RETURNING tenant_id",
            &[&tenants, &heads],
        )?;
        Ok(deleted.len() as u64)
    }

    /// The heads of `tenants` (those without a head row are left out).
    pub fn heads_of(&self, tenants: &[TenantId]) -> StoreResult<Vec<(TenantId, u64)>> {
        let rows = self.query(
            "SELECT tenant_id, head FROM heads WHERE tenant_id = ANY($1::bigint[])",
            &[&tenants],
        )?;
        rows.iter()
            .map(|r| Ok((col(r, 0)?, col::<i64>(r, 1)? as u64)))
            .collect()
    }
}

/// One tenant being copied in by `bvfs admin migrate`, inside one transaction.
pub struct TenantImport<'a> {
    tx: &'a deadpool_postgres::Transaction<'a>,
    rt: &'a IoRuntime,
    tenant: TenantId,
}

impl TenantImport<'_> {
    fn run(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> StoreResult<()> {
        self.rt
            .block_on(async {
                let statement = self.tx.prepare_cached(sql).await?;
                self.tx.execute(&statement, params).await
            })
            .map(drop)
            .map_err(pg_err)
    }

    /// A device token, by its hash.
    pub fn token(&self, hash: &[u8; 32], device: &str, created_ns: i64) -> StoreResult<()> {
        self.run(
            "INSERT INTO tokens (hash, tenant_id, device, created_ns) VALUES ($1, $2, $3, $4)",
            &[&&hash[..], &self.tenant, &device, &created_ns],
        )
    }

    /// The retention state ([`crate::retention`]): the window, the journal floor, the tags of
    /// dropped entries and the retired node ids.
    pub fn retention(&self, state: &crate::store::RetentionState) -> StoreResult<()> {
        let keep = state
            .keep_secs
            .map(|k| i64::try_from(k).unwrap_or(i64::MAX));
        self.run(
            "UPDATE heads SET keep_versions_s = $2, journal_floor = $3 WHERE tenant_id = $1",
            &[&self.tenant, &keep, &(state.floor as i64)],
        )?;
        for &(seq, tag) in &state.dropped_tags {
            self.run(
                "INSERT INTO dropped_tags (tenant_id, seq, tag) VALUES ($1, $2, $3)",
                &[&self.tenant, &(seq as i64), &(tag as i64)],
            )?;
        }
        for id in &state.retired_ids {
            self.run(
                "INSERT INTO retired_ids (tenant_id, id) VALUES ($1, $2)",
                &[&self.tenant, &&id[..]],
            )?;
        }
        Ok(())
    }

    /// A live node (the root included).
    pub fn node(&self, node: &Node) -> StoreResult<()> {
        self.run(
            "INSERT INTO nodes (tenant_id, id, parent_id, name, node) VALUES ($1, $2, $3, $4, $5)",
            &[
                &self.tenant,
                &node.id,
                // The root's parent is itself, as stored at creation.
                &if node.id == ROOT_ID {
                    ROOT_ID.to_vec()
                } else {
                    node.parent_id.clone()
                },
                &node.name,
                &node.encode_to_vec(),
            ],
        )
    }

    /// A journal entry, with its sequence and tag unchanged.
    pub fn entry(&self, entry: &JournalEntry) -> StoreResult<()> {
        self.run(
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
        )
    }
}

impl PgMetaStore {
    /// A new tenant id, never handed out again (for [`PgMetaStore::import_tenant`], whose chunks
    /// are copied under it first).
    pub fn reserve_tenant_id(&self) -> StoreResult<TenantId> {
        let row = self
            .query_opt(
                "SELECT nextval(pg_get_serial_sequence('tenants', 'id'))",
                &[],
            )?
            .ok_or_else(|| StoreError::Meta("nextval returned nothing".into()))?;
        col(&row, 0)
    }

    /// Copies in tenant `tenant` (from [`PgMetaStore::reserve_tenant_id`]) from another store with
    /// its identity intact (name, namespace id, head,
    /// and through `fill` its tokens, live nodes and journal with their sequences and tags), so its
    /// devices carry on as if nothing happened. One transaction: all of it or nothing. Fails if
    /// the name is taken.
    pub fn import_tenant(
        &self,
        tenant: TenantId,
        name: &str,
        created_ns: i64,
        namespace_id: &[u8; 16],
        head: u64,
        fill: &mut dyn FnMut(&TenantImport<'_>) -> StoreResult<()>,
    ) -> StoreResult<()> {
        let rt = &self.rt;
        let mut client = rt.block_on(self.pool.get()).map_err(pool_err)?;
        let tx = rt.block_on(client.transaction()).map_err(pg_err)?;
        rt.block_on(tx.execute(
            "INSERT INTO tenants (id, name, created_ns, namespace_id) VALUES ($1, $2, $3, $4)",
            &[&tenant, &name, &created_ns, &&namespace_id[..]],
        ))
        .map_err(pg_err)?;
        rt.block_on(tx.execute(
            "INSERT INTO heads (tenant_id, head) VALUES ($1, $2)",
            &[&tenant, &(head as i64)],
        ))
        .map_err(pg_err)?;
        fill(&TenantImport {
            tx: &tx,
            rt,
            tenant,
        })?;
        rt.block_on(tx.commit()).map_err(pg_err)
    }
}

impl MetaStore for PgMetaStore {
    fn create_tenant(&self, name: &str) -> StoreResult<TenantId> {
        let namespace_id = rand::random::<[u8; 16]>();
        self.rt.block_on(async {
            let mut client = self.pool.get().await.map_err(pool_err)?;
            // The tenant, its head and its root in one transaction: never half a tenant.
            let tx = client.transaction().await.map_err(pg_err)?;
            let tenant: i64 = tx
                .query_one(
                    "INSERT INTO tenants (name, created_ns, namespace_id) VALUES ($1, $2, $3)
                     RETURNING id",
                    &[&name, &now_ns(), &&namespace_id[..]],
                )
                .await
                .map_err(pg_err)
                .and_then(|row| col(&row, 0))?;
            tx.execute(
                "INSERT INTO heads (tenant_id, head) VALUES ($1, 0)",
                &[&tenant],
            )
            .await
            .map_err(pg_err)?;
            tx.execute(
                "INSERT INTO nodes (tenant_id, id, parent_id, name, node) VALUES ($1, $2, $2, '', $3)",
                &[&tenant, &&ROOT_ID[..], &root_node().encode_to_vec()],
            )
            .await
            .map_err(pg_err)?;
            tx.commit().await.map_err(pg_err)?;
            Ok(tenant)
        })
    }

    fn tenant_by_name(&self, name: &str) -> StoreResult<Option<TenantId>> {
        self.query_opt("SELECT id FROM tenants WHERE name = $1", &[&name])?
            .map(|r| col(&r, 0))
            .transpose()
    }

    fn tenants(&self) -> StoreResult<Vec<(TenantId, String)>> {
        let rows = self.query("SELECT id, name FROM tenants ORDER BY name", &[])?;
        rows.iter().map(|r| Ok((col(r, 0)?, col(r, 1)?))).collect()
    }

    fn add_token(&self, tenant: TenantId, token_hash: &[u8; 32], device: &str) -> StoreResult<()> {
        self.query(
            "INSERT INTO tokens (hash, tenant_id, device, created_ns) VALUES ($1, $2, $3, $4)",
            &[&&token_hash[..], &tenant, &device, &now_ns()],
        )?;
        Ok(())
    }

    fn principal(&self, token_hash: &[u8; 32]) -> StoreResult<Option<Principal>> {
        self.query_opt(
            "SELECT t.tenant_id, n.name, t.device FROM tokens t JOIN tenants n ON n.id = t.tenant_id
             WHERE t.hash = $1",
            &[&&token_hash[..]],
        )?
        .map(|r| {
            Ok(Principal {
                tenant: col(&r, 0)?,
                tenant_name: col(&r, 1)?,
                device: col(&r, 2)?,
            })
        })
        .transpose()
    }

    fn devices(&self, tenant: TenantId) -> StoreResult<Vec<Device>> {
        let rows = self.query(
            "SELECT device, COUNT(*), MIN(created_ns) FROM tokens WHERE tenant_id = $1
             GROUP BY device ORDER BY MIN(created_ns), device",
            &[&tenant],
        )?;
        rows.iter()
            .map(|r| {
                Ok(Device {
                    name: col(r, 0)?,
                    tokens: col::<i64>(r, 1)? as usize,
                    created_ns: col(r, 2)?,
                })
            })
            .collect()
    }

    fn revoke(&self, tenant: TenantId, device: &str) -> StoreResult<usize> {
        let rows = self.query(
            "DELETE FROM tokens WHERE tenant_id = $1 AND device = $2 RETURNING hash",
            &[&tenant, &device],
        )?;
        Ok(rows.len())
    }

    fn head(&self, tenant: TenantId) -> StoreResult<u64> {
        match self.query_opt("SELECT head FROM heads WHERE tenant_id = $1", &[&tenant])? {
            Some(row) => Ok(col::<i64>(&row, 0)? as u64),
            None => Ok(0),
        }
    }

    fn namespace_id(&self, tenant: TenantId) -> StoreResult<[u8; 16]> {
        if let Some(id) = self.namespace_ids.lock().get(&tenant) {
            return Ok(*id);
        }
        let row = self
            .query_opt("SELECT namespace_id FROM tenants WHERE id = $1", &[&tenant])?
            .ok_or_else(|| StoreError::Meta(format!("no tenant {tenant}")))?;
        let id: Vec<u8> = col(&row, 0)?;
        let id: [u8; 16] = id
            .try_into()
            .map_err(|_| StoreError::Corrupt(format!("tenant {tenant} has no namespace id")))?;
        self.namespace_ids.lock().insert(tenant, id);
        Ok(id)
    }

    fn tag_at(&self, tenant: TenantId, seq: u64) -> StoreResult<Option<u64>> {
        if seq == 0 {
            return Ok(Some(0));
        }
        if seq > i64::MAX as u64 {
            return Ok(None);
        }
        self.query_opt(reads::TAG_AT, &[&tenant, &(seq as i64)])?
            .map(|r| Ok(col::<i64>(&r, 0)? as u64))
            .transpose()
    }

    fn changes_after(
        &self,
        tenant: TenantId,
        cursor: u64,
        limit: usize,
        max_bytes: usize,
    ) -> StoreResult<Vec<JournalEntry>> {
        let rows = self.query(
            &reads::bounded_entries("tenant_id = $1 AND seq > $2", "seq", "$3", "$4"),
            &[
                &tenant,
                &(cursor as i64),
                &(limit as i64),
                &reads::budget(max_bytes),
            ],
        )?;
        Ok(reads::entries(&rows, max_bytes)?.0)
    }

    fn snapshot_page(
        &self,
        tenant: TenantId,
        at: u64,
        after: Option<&NodeKey>,
        limit: usize,
        max_bytes: usize,
    ) -> StoreResult<(Vec<Node>, Option<NodeKey>)> {
        let mut nodes = Vec::new();
        if after.is_none() {
            nodes.push(root_node());
        }
        let after = after.copied().unwrap_or(ROOT_ID);
        let rows = self.query(
            reads::SNAPSHOT_PAGE,
            &[
                &tenant,
                &&after[..],
                &(at as i64),
                &(limit as i64),
                &reads::budget(max_bytes),
            ],
        )?;
        let next = reads::snapshot_nodes(&rows, &mut nodes, limit, max_bytes)?;
        Ok((nodes, next))
    }

    fn versions(&self, tenant: TenantId, id: &NodeKey) -> StoreResult<Vec<JournalEntry>> {
        let rows = self.query(
            &format!(
                "SELECT {} FROM journal WHERE tenant_id = $1 AND node_id = $2
                 ORDER BY seq DESC",
                reads::ENTRY
            ),
            &[&tenant, &&id[..]],
        )?;
        rows.iter().map(reads::entry).collect()
    }

    fn versions_page(
        &self,
        tenant: TenantId,
        id: &NodeKey,
        before: u64,
        limit: usize,
        max_bytes: usize,
    ) -> StoreResult<(Vec<JournalEntry>, bool)> {
        let before = before.min(i64::MAX as u64) as i64;
        let rows = self.query(
            &reads::bounded_entries(
                "tenant_id = $1 AND node_id = $2 AND seq < $3",
                "seq DESC",
                "$4",
                "$5",
            ),
            &[
                &tenant,
                &&id[..],
                &before,
                &(limit as i64),
                &reads::budget(max_bytes),
            ],
        )?;
        let (entries, full) = reads::entries(&rows, max_bytes)?;
        let more = full || entries.len() == limit;
        Ok((entries, more))
    }

    fn entry(&self, tenant: TenantId, seq: u64) -> StoreResult<Option<JournalEntry>> {
        if seq > i64::MAX as u64 {
            return Ok(None);
        }
        self.query_opt(
            &format!(
                "SELECT {} FROM journal WHERE tenant_id = $1 AND seq = $2",
                reads::ENTRY
            ),
            &[&tenant, &(seq as i64)],
        )?
        .as_ref()
        .map(reads::entry)
        .transpose()
    }

    fn deleted(
        &self,
        tenant: TenantId,
        before: u64,
        limit: usize,
        max_bytes: usize,
    ) -> StoreResult<(Vec<JournalEntry>, bool)> {
        let before = before.min(i64::MAX as u64) as i64;
        let rows = self.query(
            &reads::bounded_entries(
                "tenant_id = $1 AND kind = 2 AND seq < $2
                 AND NOT EXISTS (SELECT 1 FROM nodes n WHERE n.tenant_id = $1 AND n.id = j.node_id)
                 AND seq = (SELECT MAX(k.seq) FROM journal k
                            WHERE k.tenant_id = $1 AND k.node_id = j.node_id)",
                "seq DESC",
                "$3",
                "$4",
            ),
            &[&tenant, &before, &(limit as i64), &reads::budget(max_bytes)],
        )?;
        let (entries, full) = reads::entries(&rows, max_bytes)?;
        let more = full || entries.len() == limit;
        Ok((entries, more))
    }

    fn journal_floor(&self, tenant: TenantId) -> StoreResult<u64> {
        match self.query_opt(
            "SELECT journal_floor FROM heads WHERE tenant_id = $1",
            &[&tenant],
        )? {
            Some(row) => Ok(col::<i64>(&row, 0)? as u64),
            None => Ok(0),
        }
    }

    fn settled_before(&self, tenant: TenantId, cutoff_ns: i64) -> StoreResult<u64> {
        // The head first: an entry committed after this read comes after it.
        let head = self.head(tenant)?;
        let row = self.query_opt(
            "SELECT MIN(seq) FROM journal WHERE tenant_id = $1 AND committed_ns >= $2",
            &[&tenant, &cutoff_ns],
        )?;
        let first_recent = match row {
            Some(row) => col::<Option<i64>>(&row, 0)?,
            None => None,
        };
        Ok(match first_recent {
            Some(seq) => head.min((seq as u64).saturating_sub(1)),
            None => head,
        })
    }

    fn gc_lock(&self) -> StoreResult<Option<Box<dyn crate::store::GcLock>>> {
        let client = self.rt.block_on(self.pool.get()).map_err(pool_err)?;
        let row = self
            .rt
            .block_on(client.query_one("SELECT pg_try_advisory_lock($1)", &[&GC_LOCK]))
            .map_err(pg_err)?;
        if !col::<bool>(&row, 0)? {
            return Ok(None);
        }
        Ok(Some(Box::new(PgGcLock {
            client: Some(client),
            rt: self.rt.clone(),
        })))
    }

    fn write(&self, tenant: TenantId, f: &mut WriteFn<'_>) -> Result<(), tonic::Status> {
        let gate = self.writers.lock().entry(tenant).or_default().clone();
        let result = {
            let _turn = gate.lock();
            self.write_locked(tenant, f)
        };
        // The last one out removes the tenant's gate (others clone it only under the map's lock).
        let mut writers = self.writers.lock();
        if Arc::strong_count(&gate) == 2 {
            writers.remove(&tenant);
        }
        result
    }
}

/// `pg_advisory_lock` key of the collection lock ("bvgc" in ASCII).
const GC_LOCK: i64 = 0x6276_6763;

/// The collection lock on PostgreSQL: a session advisory lock on a connection of its own, so it
/// goes when the connection does (also when the process dies); unlocked explicitly when dropped.
struct PgGcLock {
    client: Option<deadpool_postgres::Object>,
    rt: Arc<IoRuntime>,
}

impl crate::store::GcLock for PgGcLock {
    fn check(&self) -> StoreResult<()> {
        let client = self
            .client
            .as_ref()
            .ok_or_else(|| StoreError::Meta("the collection lock was released".into()))?;
        self.rt
            .block_on(client.simple_query("SELECT 1"))
            .map(drop)
            .map_err(|e| StoreError::Meta(format!("the collection lock's connection: {e}")))
    }
}

impl Drop for PgGcLock {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            // Unlocked first: PostgreSQL ends a closed session asynchronously, so a collection
            // starting right after this one could still find the lock held. (If the unlock fails,
            // the connection is broken and its end releases the lock.)
            if let Err(e) = self
                .rt
                .block_on(client.execute("SELECT pg_advisory_unlock($1)", &[&GC_LOCK]))
            {
                tracing::debug!("unlocking the collection lock: {e}");
            }
            // Closed, not returned to the pool: a session that held the lock does not serve on.
            drop(deadpool_postgres::Object::take(client));
        }
    }
}

impl PgMetaStore {
    /// [`MetaStore::write`] once this process's turn for the tenant has come.
    fn write_locked(&self, tenant: TenantId, f: &mut WriteFn<'_>) -> Result<(), tonic::Status> {
        let rt = &self.rt;
        let mut client = rt
            .block_on(self.pool.get())
            .map_err(|e| store_status(pool_err(e)))?;
        let tx = rt
            .block_on(client.transaction())
            .map_err(|e| store_status(pg_err(e)))?;
        // The tenant's writer lock, held until commit or rollback, whichever process holds it.
        let row = rt
            .block_on(async {
                let statement = tx
                    .prepare_cached(
                        "SELECT head, gc_epoch FROM heads WHERE tenant_id = $1 FOR UPDATE",
                    )
                    .await?;
                tx.query_opt(&statement, &[&tenant]).await
            })
            .map_err(|e| store_status(pg_err(e)))?
            .ok_or_else(|| {
                store_status(StoreError::Meta(format!("no head for tenant {tenant}")))
            })?;
        let head = col::<i64>(&row, 0).map_err(store_status)? as u64;
        let gc_epoch = col::<i64>(&row, 1).map_err(store_status)? as u64;
        let mut txn = PgTxn::new(&tx, rt, tenant, (head, gc_epoch), self.outbox);
        // On an error the transaction is dropped, which rolls it back.
        f(&mut txn)?;
        rt.block_on(tx.commit())
            .map_err(|e| store_status(pg_err(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_are_hidden_from_messages() {
        assert_eq!(
            redact("postgres://bvfs:s3cret@db.example:5432/bvfs?sslmode=require"),
            "postgres://bvfs:***@db.example:5432/bvfs?sslmode=require"
        );
        assert_eq!(redact("postgres://bvfs@db/bvfs"), "postgres://bvfs@db/bvfs");
        assert_eq!(redact("postgres://a:b:c@h/d"), "postgres://a:***@h/d");
        assert_eq!(redact("postgres://h/d"), "postgres://h/d");
        assert_eq!(redact("/srv/meta.sqlite"), "/srv/meta.sqlite");
    }
}

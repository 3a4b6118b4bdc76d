//! The PostgreSQL tables and their versioned migrations, applied at start.
//!
//! Every server process runs [`migrate`] when it opens the store; an advisory lock taken inside the
//! migration's transaction makes concurrent starters apply each version once, in order, and a
//! version's DDL commits with its row in `bvfs_schema` (PostgreSQL DDL is transactional), so a crash
//! part-way leaves the previous version whole. A database newer than this bvfs is refused.
//!
//! Layout: one set of tables for every tenant, each row carrying its `tenant_id` and every query
//! scoped by it. A tenant's namespace (head, live nodes, journal) is keyed by `tenant_id` first, so
//! sharding by tenant keeps a commit a single-shard transaction. `heads` holds one row per tenant:
//! locking it `FOR UPDATE` is the tenant's writer lock across every server process. `outbox` holds
//! the newest unpublished head of each tenant for the cross-process notifier.

use deadpool_postgres::Client;

use super::{col, pg_err};
use crate::store::{StoreError, StoreResult};

/// `pg_advisory_xact_lock` key serialising migrations ("bvfs" in ASCII).
const MIGRATION_LOCK: i64 = 0x6276_6673;

/// Version 1: tenants, tokens, heads, nodes, journal, outbox.
///
/// Names are compared byte-wise (`COLLATE "C"`), as the embedded store does, so the sibling-name
/// index agrees with the commit rules whatever the database's default collation.
const V1: &str = r#"
CREATE TABLE tenants (
    id bigserial PRIMARY KEY,
    name text COLLATE "C" NOT NULL UNIQUE,
    created_ns bigint NOT NULL,
    namespace_id bytea NOT NULL CHECK (length(namespace_id) = 16)
);
CREATE TABLE tokens (
    hash bytea PRIMARY KEY,
    tenant_id bigint NOT NULL REFERENCES tenants (id),
    device text COLLATE "C" NOT NULL,
    created_ns bigint NOT NULL
);
CREATE INDEX tokens_by_device ON tokens (tenant_id, device);
CREATE TABLE heads (
    tenant_id bigint PRIMARY KEY REFERENCES tenants (id),
    head bigint NOT NULL CHECK (head >= 0)
);
CREATE TABLE nodes (
    tenant_id bigint NOT NULL,
    id bytea NOT NULL,
    parent_id bytea NOT NULL,
    name text COLLATE "C" NOT NULL,
    node bytea NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
CREATE UNIQUE INDEX nodes_by_name ON nodes (tenant_id, parent_id, name);
CREATE TABLE journal (
    tenant_id bigint NOT NULL,
    seq bigint NOT NULL CHECK (seq > 0),
    node_id bytea NOT NULL,
    kind smallint NOT NULL,
    node bytea NOT NULL,
    device text NOT NULL,
    committed_ns bigint NOT NULL,
    tag bigint NOT NULL CHECK (tag <> 0),
    PRIMARY KEY (tenant_id, seq)
);
CREATE INDEX journal_by_node ON journal (tenant_id, node_id, seq);
CREATE INDEX journal_deletes ON journal (tenant_id, seq) WHERE kind = 2;
CREATE TABLE outbox (
    tenant_id bigint PRIMARY KEY,
    head bigint NOT NULL
);
"#;

/// Version 2: each tenant's collection epoch (`crate::gc`), beside its head so the commit's
/// `FOR UPDATE` of the head row reads it at no cost.
const V2: &str = r#"
ALTER TABLE heads ADD COLUMN gc_epoch bigint NOT NULL DEFAULT 0 CHECK (gc_epoch >= 0);
"#;

/// Version 3: retention (`crate::retention`): each tenant's window (NULL keeps everything) and
/// journal floor beside its head, the tags of dropped entries (positions below the floor are
/// still checked) and the ids of nodes whose every entry was dropped (never reused).
const V3: &str = r#"
ALTER TABLE heads ADD COLUMN journal_floor bigint NOT NULL DEFAULT 0 CHECK (journal_floor >= 0);
ALTER TABLE heads ADD COLUMN keep_versions_s bigint CHECK (keep_versions_s >= 0);
CREATE TABLE dropped_tags (
    tenant_id bigint NOT NULL,
    seq bigint NOT NULL,
    tag bigint NOT NULL,
    PRIMARY KEY (tenant_id, seq)
);
CREATE TABLE retired_ids (
    tenant_id bigint NOT NULL,
    id bytea NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
"#;

/// Every version in order; the last is the current one.
const MIGRATIONS: &[(i32, &str)] = &[(1, V1), (2, V2), (3, V3)];

/// Brings the database to the current schema version.
pub(super) async fn migrate(client: &mut Client) -> StoreResult<()> {
    let tx = client.transaction().await.map_err(pg_err)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg_err)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS bvfs_schema (
             version integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await
    .map_err(pg_err)?;
    let row = tx
        .query_one("SELECT COALESCE(MAX(version), 0) FROM bvfs_schema", &[])
        .await
        .map_err(pg_err)?;
    let current: i32 = col(&row, 0)?;
    let latest = MIGRATIONS.last().map_or(0, |(v, _)| *v);
    if current > latest {
        return Err(StoreError::Meta(format!(
            "the PostgreSQL database has bvfs schema version {current}, newer than this bvfs \
             understands ({latest}); upgrade bvfs"
        )));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        tx.batch_execute(sql).await.map_err(pg_err)?;
        tx.execute("INSERT INTO bvfs_schema (version) VALUES ($1)", &[version])
            .await
            .map_err(pg_err)?;
        tracing::info!(version, "applied a PostgreSQL schema migration");
    }
    tx.commit().await.map_err(pg_err)
}

//! The embedded metadata store's tables and their migrations.
//!
//! Layout (catalog version 2): `meta.sqlite` is the catalog (tenants with their namespace ids, and
//! device tokens); each tenant's namespace (its journal head, live nodes and journal) is a database
//! of its own, `namespaces/<tenant id>.sqlite`, with its own writer, so that commits of different
//! tenants never wait for each other (issue 15, item 6: one tenant's slow commits once held every
//! other tenant's behind a single writer).
//!
//! Version 1 kept everything in `meta.sqlite`, without namespace ids or lineage tags. Migrating gives
//! every namespace a random id and every journal entry a random odd tag (clients that synced before
//! hold tag 0, which is not checked, and learn tags from their next page), then moves each tenant's
//! rows to its own database: built under a temporary name, fsynced and renamed into place, so a
//! crash part-way redoes only the tenants not yet moved; the old tables are dropped last.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, params};

use super::meta_err;
use super::rows::root_node;
use crate::store::{ROOT_ID, StoreError, StoreResult, TenantId};
use prost::Message;

/// The catalog's schema version.
const CATALOG_VERSION: i64 = 2;

const CATALOG: &str = "
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
";

/// A namespace database's schema version. Version 2 added `heads.gc_epoch` (`crate::gc`);
/// version 3 the retention policy, the journal floor, the tags of dropped entries and the retired
/// node ids (`crate::retention`).
const NAMESPACE_VERSION: i64 = 3;

/// From namespace version 1 to 2.
const NAMESPACE_V2: &str = "ALTER TABLE heads ADD COLUMN gc_epoch INTEGER NOT NULL DEFAULT 0;";

/// From namespace version 2 to 3: `keep_versions_s` (NULL: keep everything), `journal_floor` (no
/// position below it can be listed or snapshotted), the tags of dropped entries (positions below
/// the floor are still checked) and the ids of nodes whose every entry was dropped (never reused).
const NAMESPACE_V3: &str = "
ALTER TABLE heads ADD COLUMN journal_floor INTEGER NOT NULL DEFAULT 0;
ALTER TABLE heads ADD COLUMN keep_versions_s INTEGER;
CREATE TABLE dropped_tags (
    tenant_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    tag INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, seq)
) WITHOUT ROWID;
CREATE TABLE retired_ids (
    tenant_id INTEGER NOT NULL,
    id BLOB NOT NULL,
    PRIMARY KEY (tenant_id, id)
) WITHOUT ROWID;
";

/// A namespace's tables. Rows keep their tenant id (one value per database), so the queries read
/// the same as when all tenants shared one database.
const NAMESPACE: &str = "
CREATE TABLE heads (
    tenant_id INTEGER PRIMARY KEY,
    head INTEGER NOT NULL,
    gc_epoch INTEGER NOT NULL DEFAULT 0
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

/// Version 1 → 2, in the catalog: namespace ids and lineage tags (the rows move afterwards).
const IDS_AND_TAGS: &str = "
ALTER TABLE tenants ADD COLUMN namespace_id BLOB NOT NULL DEFAULT x'';
UPDATE tenants SET namespace_id = randomblob(16);
ALTER TABLE journal ADD COLUMN tag INTEGER NOT NULL DEFAULT 0;
UPDATE journal SET tag = random() | 1;
";

const JOURNAL_COLUMNS: &str = "tenant_id, seq, node_id, kind, node, device, committed_ns, tag";

fn user_version(conn: &Connection) -> StoreResult<i64> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(meta_err)
}

/// Brings the catalog at `conn` to the current version, moving version 1's namespaces into their
/// own databases under `namespaces`.
pub(super) fn migrate_catalog(conn: &mut Connection, namespaces: &Path) -> StoreResult<()> {
    match user_version(conn)? {
        0 => {
            let tx = conn.transaction().map_err(meta_err)?;
            tx.execute_batch(CATALOG).map_err(meta_err)?;
            tx.execute_batch(&format!("PRAGMA user_version = {CATALOG_VERSION}"))
                .map_err(meta_err)?;
            tx.commit().map_err(meta_err)?;
        }
        1 => {
            let tx = conn.transaction().map_err(meta_err)?;
            tx.execute_batch(IDS_AND_TAGS).map_err(meta_err)?;
            tx.execute_batch(&format!("PRAGMA user_version = {CATALOG_VERSION}"))
                .map_err(meta_err)?;
            tx.commit().map_err(meta_err)?;
        }
        CATALOG_VERSION => {}
        newer => {
            return Err(StoreError::Meta(format!(
                "the database has schema version {newer}, newer than this bvfs understands \
                 ({CATALOG_VERSION}); upgrade bvfs"
            )));
        }
    }
    let unsplit: bool = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'journal')",
            [],
            |r| r.get(0),
        )
        .map_err(meta_err)?;
    if unsplit {
        split_namespaces(conn, namespaces)?;
    }
    Ok(())
}

/// The database file of `tenant`'s namespace.
pub(super) fn namespace_path(namespaces: &Path, tenant: TenantId) -> PathBuf {
    namespaces.join(format!("{tenant}.sqlite"))
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> StoreError + '_ {
    move |e| StoreError::Meta(format!("{}: {e}", path.display()))
}

/// Moves every tenant's rows from the catalog into its own namespace database (version 1 layout).
fn split_namespaces(conn: &mut Connection, namespaces: &Path) -> StoreResult<()> {
    std::fs::create_dir_all(namespaces).map_err(io_err(namespaces))?;
    let tenants: Vec<TenantId> = {
        let mut stmt = conn
            .prepare("SELECT id FROM tenants ORDER BY id")
            .map_err(meta_err)?;
        let rows = stmt.query_map([], |r| r.get(0)).map_err(meta_err)?;
        rows.collect::<Result<_, _>>().map_err(meta_err)?
    };
    for tenant in tenants {
        let path = namespace_path(namespaces, tenant);
        if path.exists() {
            continue; // Moved before a crash: complete, as it was renamed into place.
        }
        let tmp = path.with_extension("sqlite.split");
        let _ = std::fs::remove_file(&tmp);
        let _ = std::fs::remove_file(tmp.with_extension("split-journal"));
        {
            // Rollback journal, not WAL: the file is renamed once complete, and a WAL would be left
            // behind under the old name.
            let fresh = Connection::open(&tmp).map_err(meta_err)?;
            fresh
                .execute_batch(&format!(
                    "PRAGMA journal_mode = DELETE; {NAMESPACE} {NAMESPACE_V3} PRAGMA user_version = {NAMESPACE_VERSION};"
                ))
                .map_err(meta_err)?;
        }
        let tmp_str = tmp
            .to_str()
            .ok_or_else(|| StoreError::Meta(format!("{} is not UTF-8", tmp.display())))?;
        conn.execute("ATTACH DATABASE ?1 AS ns", [tmp_str])
            .map_err(meta_err)?;
        let copied = (|| {
            let tx = conn.transaction().map_err(meta_err)?;
            tx.execute(
                "INSERT INTO ns.heads (tenant_id, head) SELECT tenant_id, head FROM main.heads
                 WHERE tenant_id = ?1",
                [tenant],
            )
            .map_err(meta_err)?;
            tx.execute(
                "INSERT INTO ns.nodes (tenant_id, id, parent_id, name, node)
                 SELECT tenant_id, id, parent_id, name, node FROM main.nodes WHERE tenant_id = ?1",
                [tenant],
            )
            .map_err(meta_err)?;
            tx.execute(
                &format!(
                    "INSERT INTO ns.journal ({JOURNAL_COLUMNS})
                     SELECT {JOURNAL_COLUMNS} FROM main.journal WHERE tenant_id = ?1"
                ),
                [tenant],
            )
            .map_err(meta_err)?;
            tx.commit().map_err(meta_err)
        })();
        conn.execute("DETACH DATABASE ns", []).map_err(meta_err)?;
        copied?;
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
        std::fs::File::open(namespaces)
            .and_then(|d| d.sync_all())
            .map_err(io_err(namespaces))?;
        tracing::info!(tenant, "moved a namespace into its own database");
    }
    let tx = conn.transaction().map_err(meta_err)?;
    tx.execute_batch("DROP TABLE journal; DROP TABLE nodes; DROP TABLE heads;")
        .map_err(meta_err)?;
    tx.commit().map_err(meta_err)
}

/// Makes sure the namespace database at `conn` has its tables, its head and its root (a new tenant,
/// or one whose creation was cut short after its catalog row).
pub(super) fn ensure_namespace(conn: &mut Connection, tenant: TenantId) -> StoreResult<()> {
    match user_version(conn)? {
        0 => {
            let tx = conn.transaction().map_err(meta_err)?;
            tx.execute_batch(NAMESPACE).map_err(meta_err)?;
            tx.execute_batch(NAMESPACE_V3).map_err(meta_err)?;
            tx.execute(
                "INSERT INTO heads (tenant_id, head) VALUES (?1, 0)",
                [tenant],
            )
            .map_err(meta_err)?;
            tx.execute(
                "INSERT INTO nodes (tenant_id, id, parent_id, name, node) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![tenant, &ROOT_ID[..], &ROOT_ID[..], "", root_node().encode_to_vec()],
            )
            .map_err(meta_err)?;
            tx.execute_batch(&format!("PRAGMA user_version = {NAMESPACE_VERSION}"))
                .map_err(meta_err)?;
            tx.commit().map_err(meta_err)
        }
        old @ (1 | 2) => {
            // Immediate, and checked again inside: a server and an admin command may both open
            // the database; one of them upgrades it.
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(meta_err)?;
            if user_version(&tx)? != old {
                return Ok(());
            }
            if old == 1 {
                tx.execute_batch(NAMESPACE_V2).map_err(meta_err)?;
            }
            tx.execute_batch(NAMESPACE_V3).map_err(meta_err)?;
            tx.execute_batch(&format!("PRAGMA user_version = {NAMESPACE_VERSION}"))
                .map_err(meta_err)?;
            tx.commit().map_err(meta_err)
        }
        NAMESPACE_VERSION => Ok(()),
        newer => Err(StoreError::Meta(format!(
            "namespace database of tenant {tenant} has schema version {newer}, newer than this bvfs \
             understands ({NAMESPACE_VERSION}); upgrade bvfs"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A namespace database of version 1 (before collection epochs) gains `heads.gc_epoch` at 0,
    /// its head kept.
    #[test]
    fn a_version_1_namespace_gains_the_collection_epoch() {
        let mut conn = Connection::open_in_memory().unwrap();
        ensure_namespace(&mut conn, 7).unwrap();
        conn.execute_batch(
            "UPDATE heads SET head = 5; ALTER TABLE heads DROP COLUMN gc_epoch; \
             ALTER TABLE heads DROP COLUMN journal_floor; \
             ALTER TABLE heads DROP COLUMN keep_versions_s; \
             DROP TABLE dropped_tags; DROP TABLE retired_ids; PRAGMA user_version = 1;",
        )
        .unwrap();
        ensure_namespace(&mut conn, 7).unwrap();
        assert_eq!(user_version(&conn).unwrap(), NAMESPACE_VERSION);
        let (head, epoch): (i64, i64) = conn
            .query_row(
                "SELECT head, gc_epoch FROM heads WHERE tenant_id = 7",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((head, epoch), (5, 0));
        ensure_namespace(&mut conn, 7).unwrap();
    }

    /// A namespace database of version 2 gains the retention columns (keep everything, floor 0)
    /// and the tables of dropped tags and retired ids, its head and epoch kept.
    #[test]
    fn a_version_2_namespace_gains_retention() {
        let mut conn = Connection::open_in_memory().unwrap();
        ensure_namespace(&mut conn, 7).unwrap();
        conn.execute_batch(
            "UPDATE heads SET head = 9, gc_epoch = 4; \
             ALTER TABLE heads DROP COLUMN journal_floor; \
             ALTER TABLE heads DROP COLUMN keep_versions_s; \
             DROP TABLE dropped_tags; DROP TABLE retired_ids; PRAGMA user_version = 2;",
        )
        .unwrap();
        ensure_namespace(&mut conn, 7).unwrap();
        assert_eq!(user_version(&conn).unwrap(), NAMESPACE_VERSION);
        let row: (i64, i64, i64, Option<i64>) = conn
            .query_row(
                "SELECT head, gc_epoch, journal_floor, keep_versions_s FROM heads",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .unwrap();
        assert_eq!(row, (9, 4, 0, None));
        let tables: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE name IN ('dropped_tags', 'retired_ids')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(tables, 2);
    }
}

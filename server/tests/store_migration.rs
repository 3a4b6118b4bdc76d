//! The metadata store's migration from version 1 (one database for every tenant, no namespace ids,
//! no lineage tags) to the current layout (a catalog and one database per namespace): every row
//! arrives, every namespace gets its own id and every journal entry a tag, and a migration cut short
//! after some namespaces moved finishes the rest.

use bvfs_proto::v1::{ChangeKind, Node, NodeAttrs, NodeKind};
use bvfs_server::store::sqlite::SqliteMetaStore;
use bvfs_server::store::{MetaStore, ROOT_ID};
use prost::Message;
use rusqlite::{Connection, params};

/// The version 1 schema, as `bvfs serve` created it until the store was split.
const V1: &str = "
CREATE TABLE tenants (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_ns INTEGER NOT NULL
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
    PRIMARY KEY (tenant_id, seq)
) WITHOUT ROWID;
CREATE INDEX journal_by_node ON journal (tenant_id, node_id, seq);
CREATE INDEX journal_deletes ON journal (tenant_id, seq) WHERE kind = 2;
";

fn node(id: u8, name: &str, revision: u64) -> Node {
    Node {
        id: [id; 16].to_vec(),
        parent_id: ROOT_ID.to_vec(),
        name: name.into(),
        kind: NodeKind::Directory as i32,
        attrs: Some(NodeAttrs::default()),
        revision,
    }
}

/// A version 1 database with two tenants: `alice` with `entries` journal entries, `bob` with one.
fn version_1(path: &std::path::Path, entries: u8) {
    let conn = Connection::open(path).unwrap();
    conn.execute_batch(V1).unwrap();
    conn.execute_batch("PRAGMA user_version = 1").unwrap();
    for (tenant, name, count) in [(1i64, "alice", entries), (2, "bob", 1)] {
        conn.execute(
            "INSERT INTO tenants (id, name, created_ns) VALUES (?1, ?2, 0)",
            params![tenant, name],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO tokens (hash, tenant_id, device, created_ns) VALUES (?1, ?2, 'laptop', 0)",
            params![vec![tenant as u8; 32], tenant],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO heads (tenant_id, head) VALUES (?1, ?2)",
            params![tenant, count as i64],
        )
        .unwrap();
        let root = Node {
            id: ROOT_ID.to_vec(),
            parent_id: vec![],
            name: String::new(),
            kind: NodeKind::Directory as i32,
            attrs: Some(NodeAttrs::default()),
            revision: 0,
        };
        conn.execute(
            "INSERT INTO nodes (tenant_id, id, parent_id, name, node) VALUES (?1, ?2, ?2, '', ?3)",
            params![tenant, &ROOT_ID[..], root.encode_to_vec()],
        )
        .unwrap();
        for seq in 1..=count {
            let n = node(seq, &format!("{name}-{seq}"), seq as u64);
            conn.execute(
                "INSERT INTO nodes (tenant_id, id, parent_id, name, node) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![tenant, &n.id, &n.parent_id, &n.name, n.encode_to_vec()],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO journal (tenant_id, seq, node_id, kind, node, device, committed_ns)
                 VALUES (?1, ?2, ?3, 1, ?4, 'laptop', 0)",
                params![tenant, seq as i64, &n.id, n.encode_to_vec()],
            )
            .unwrap();
        }
    }
}

fn check_migrated(store: &SqliteMetaStore, entries: u8) {
    let alice = store.tenant_by_name("alice").unwrap().unwrap();
    let bob = store.tenant_by_name("bob").unwrap().unwrap();
    assert_eq!(store.head(alice).unwrap(), entries as u64);
    assert_eq!(store.head(bob).unwrap(), 1);
    let ids = (
        store.namespace_id(alice).unwrap(),
        store.namespace_id(bob).unwrap(),
    );
    assert_ne!(ids.0, ids.1, "each namespace has its own id");
    assert_ne!(ids.0, [0; 16]);
    let journal = store.changes_after(alice, 0, 1000, usize::MAX).unwrap();
    assert_eq!(journal.len(), entries as usize);
    for (i, entry) in journal.iter().enumerate() {
        assert_eq!(entry.seq, i as u64 + 1);
        assert_eq!(entry.kind, ChangeKind::Upsert);
        assert_eq!(entry.node.name, format!("alice-{}", i + 1));
        assert_ne!(entry.tag, 0, "every entry has a tag");
        assert_eq!(store.tag_at(alice, entry.seq).unwrap(), Some(entry.tag));
    }
    let (nodes, _) = store.snapshot_page(bob, 1, None, 100, usize::MAX).unwrap();
    assert_eq!(nodes.len(), 2, "bob's root and node: {nodes:?}");
    assert!(
        store.principal(&[1; 32]).unwrap().is_some(),
        "tokens stay in the catalog"
    );
}

#[test]
fn a_version_1_store_is_split_into_namespaces_with_ids_and_tags() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.sqlite");
    version_1(&path, 5);
    let store = SqliteMetaStore::open(&path).unwrap();
    check_migrated(&store, 5);
    let catalog = Connection::open(&path).unwrap();
    let tables: Vec<String> = catalog
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(tables, ["tenants", "tokens"]);
    drop(store);
    // Opening again changes nothing.
    let ids_before = Connection::open(&path)
        .unwrap()
        .query_row(
            "SELECT namespace_id FROM tenants WHERE name = 'alice'",
            [],
            |r| r.get::<_, Vec<u8>>(0),
        )
        .unwrap();
    let store = SqliteMetaStore::open(&path).unwrap();
    check_migrated(&store, 5);
    let alice = store.tenant_by_name("alice").unwrap().unwrap();
    assert_eq!(store.namespace_id(alice).unwrap().to_vec(), ids_before);
}

#[test]
fn a_split_cut_short_finishes_the_namespaces_not_yet_moved() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.sqlite");
    version_1(&path, 3);
    // A first run that moved alice's namespace and died before bob's: alice's database exists
    // (renamed into place, so complete) and the catalog still has every tenant's rows.
    let partial = tempfile::tempdir().unwrap();
    std::fs::copy(&path, partial.path().join("meta.sqlite")).unwrap();
    SqliteMetaStore::open(&partial.path().join("meta.sqlite")).unwrap();
    std::fs::create_dir_all(dir.path().join("namespaces")).unwrap();
    std::fs::copy(
        partial.path().join("namespaces/1.sqlite"),
        dir.path().join("namespaces/1.sqlite"),
    )
    .unwrap();
    // A half-built temporary file of bob's is redone.
    std::fs::write(dir.path().join("namespaces/2.sqlite.split"), b"garbage").unwrap();
    let store = SqliteMetaStore::open(&path).unwrap();
    check_migrated(&store, 3);
}

//! The bulk first sync (`bvfs_engine::state::bootstrap`) against the planner it stands in for: a device
//! whose LOCAL and SYNCED are empty takes REMOTE in bulk, and must end with exactly the rows the
//! planner and executor give a device that plans the same first sync (one local node keeps it off the
//! bulk path). Inode numbers may differ (they are handed out in another order); nothing else may.

mod common;

use std::path::Path;
use std::sync::Arc;

use bvfs_engine::model::NodeKind;
use bvfs_engine::remote::{GrpcRemote, RemoteConfig, SyncApi};
use bvfs_engine::state::ROOT_INO;
use bvfs_engine::{Engine, EngineConfig, Invalidation};
use bvfs_proto::v1;
use common::*;
use rand::{RngExt, SeedableRng};

/// A tree row without its inode: id, parent, name, kind, size, mtime, mode, content, symlink,
/// revision, pinned (LOCAL only), extended attributes.
type Row = (
    Vec<u8>,
    Vec<u8>,
    String,
    i64,
    i64,
    i64,
    i64,
    Option<Vec<u8>>,
    Option<String>,
    i64,
    Option<bool>,
    Option<Vec<u8>>,
);

fn rows(db: &Path, table: &str, skip: &[u8]) -> Vec<Row> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let pinned = if table == "local" { "pinned" } else { "NULL" };
    let mut stmt = conn
        .prepare(&format!(
            "SELECT id, parent, name, kind, size, mtime_ns, mode, content, symlink, revision, {pinned}, xattrs
             FROM {table} ORDER BY id"
        ))
        .unwrap();
    stmt.query_map([], |r| {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
            r.get(6)?,
            r.get(7)?,
            r.get(8)?,
            r.get(9)?,
            r.get(10)?,
            r.get(11)?,
        ))
    })
    .unwrap()
    .map(Result::unwrap)
    .filter(|row: &Row| row.0 != skip)
    .collect()
}

/// The names invalidated in the root directory (the only directory the kernel can know before a first
/// sync), sorted.
fn root_entries(invalidations: &[Invalidation], skip: &str) -> Vec<String> {
    let mut names: Vec<String> = invalidations
        .iter()
        .filter_map(|i| match i {
            Invalidation::Entry { parent, name } if *parent == ROOT_INO && name != skip => {
                Some(name.clone())
            }
            _ => None,
        })
        .collect();
    names.sort();
    names
}

/// A random tree of directories, files with and without content (some executable), and symlinks.
async fn random_tree(api: &mut SyncApi, seed: u64, nodes: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut dirs = vec![root()];
    let mut ops = Vec::new();
    for i in 0..nodes {
        let parent = dirs[rng.random_range(0..dirs.len())].clone();
        let id = new_id();
        let name = format!("n{i} é{}", rng.random_range(0..1000));
        match rng.random_range(0..4) {
            0 => {
                ops.push(mkdir(&id, &parent, &name));
                dirs.push(id);
            }
            1 => {
                let data: Vec<u8> = (0..rng.random_range(1..200))
                    .map(|_| rng.random())
                    .collect();
                put_blob(api, &data).await;
                let mut attrs = file_attrs(&data);
                attrs.executable = rng.random();
                attrs.mtime_ns = rng.random_range(0..i64::MAX);
                ops.push(create(&id, &parent, &name, v1::NodeKind::File, attrs));
            }
            2 => ops.push(create(
                &id,
                &parent,
                &name,
                v1::NodeKind::File,
                file_attrs(b""),
            )),
            _ => {
                let attrs = v1::NodeAttrs {
                    size: 3,
                    mtime_ns: 5,
                    symlink_target: "a/b".into(),
                    ..Default::default()
                };
                ops.push(create(&id, &parent, &name, v1::NodeKind::Symlink, attrs));
            }
        }
        if ops.len() == 37 {
            commit(api, std::mem::take(&mut ops)).await.unwrap();
        }
    }
    commit(api, ops).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_first_sync_equals_the_planned_one() {
    for seed in 0..4u64 {
        let dir = tempfile::tempdir().unwrap();
        let server_dir = dir.path().join("server");
        let seeder = add_user(&server_dir, "u", "seeder");
        let bulk_token = add_user(&server_dir, "u", "bulk");
        let planned_token = add_user(&server_dir, "u", "planned");
        let server = ServerProcess::start(&server_dir, &[]);
        let mut api = client(&server.url, &seeder).await;
        random_tree(&mut api, seed, 200 + seed * 100).await;
        let open = |name: &str, token: &str| {
            let remote = Arc::new(GrpcRemote::new(&RemoteConfig::new(&server.url, token)).unwrap());
            Engine::open(EngineConfig::new(dir.path().join(name), name), remote).unwrap()
        };

        // LOCAL and SYNCED empty: the bulk path.
        let bulk = open("bulk", &bulk_token);
        let report = bulk.sync_round().await.unwrap();
        assert_eq!(report.local_applied as u64, 200 + seed * 100, "{report:?}");
        let bulk_invalidations = bulk.take_invalidations();
        assert!(
            bulk.sync_round().await.unwrap().idle(),
            "the next round has nothing to do"
        );

        // One local node first: the planner plans the same first sync (and uploads that node).
        let planned = open("planned", &planned_token);
        let extra = planned
            .create(ROOT_INO, "local only", NodeKind::Directory, false, None)
            .unwrap();
        planned.sync_round().await.unwrap();
        let planned_invalidations = planned.take_invalidations();
        drop((bulk, planned));

        let extra = extra.node.id.to_bytes();
        for table in ["local", "synced", "remote"] {
            let a = rows(&dir.path().join("bulk/state.sqlite"), table, &extra);
            let b = rows(&dir.path().join("planned/state.sqlite"), table, &extra);
            assert_eq!(a.len(), b.len(), "seed {seed}: {table} row counts");
            for (x, y) in a.iter().zip(&b) {
                assert_eq!(x, y, "seed {seed}: a {table} row");
            }
        }
        assert_eq!(
            root_entries(&bulk_invalidations, "local only"),
            root_entries(&planned_invalidations, "local only"),
            "seed {seed}: the kernel hears of the same names in the root"
        );
    }
}

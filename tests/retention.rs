//! The retention policy (issue 12, "Storage lifecycle") against real `bvfs serve` processes and
//! `bvfs admin` commands: by default nothing is dropped; with a window, `bvfs admin gc` drops old
//! versions and deleted files past it and frees the chunks only they named, while the current
//! version and versions inside the window keep theirs; a device whose position fell below the
//! journal floor starts again from a snapshot and keeps its local edits; and no chunk a kept
//! version names is deleted while commits race the collector.

mod common;

use std::path::Path;
use std::time::Duration;

use bvfs_engine::remote::SyncApi;
use bvfs_engine::state::ROOT_INO;
use bvfs_proto::v1;
use common::engine_devices::{device, files, write};
use common::*;

/// `bvfs admin retention alice ARGS --json --data DATA`, parsed.
fn retention(data: &Path, args: &[&str]) -> serde_json::Value {
    let out = bvfs()
        .args(["admin", "retention", "alice", "--json", "--data"])
        .arg(data)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "retention failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("retention's JSON")
}

/// `bvfs admin gc --grace 0s --json --data DATA`, parsed.
fn gc(data: &Path) -> serde_json::Value {
    common::gc_race::run_gc_report(&["--data".into(), data.display().to_string()], &[], "0s")
}

/// Uploads `data` and commits it as a new file `name` in the root; returns its id and revision.
async fn new_file(api: &mut SyncApi, name: &str, data: &[u8]) -> (Vec<u8>, u64) {
    put_blob(api, data).await;
    let id = new_id();
    let op = create(&id, &root(), name, v1::NodeKind::File, file_attrs(data));
    (id, commit(api, vec![op]).await.expect("create").cursor)
}

/// Uploads `data` and commits it as the content of `id` at `base`; returns the new revision.
async fn edit(api: &mut SyncApi, id: &[u8], base: u64, data: &[u8]) -> u64 {
    put_blob(api, data).await;
    commit(api, vec![update(id, base, file_attrs(data))])
        .await
        .expect("update")
        .cursor
}

async fn versions(api: &mut SyncApi, id: &[u8]) -> Vec<u64> {
    api.list_versions(v1::ListVersionsRequest {
        id: id.to_vec(),
        ..Default::default()
    })
    .await
    .expect("list versions")
    .into_inner()
    .versions
    .iter()
    .map(|v| v.seq)
    .collect()
}

/// The bytes of a one-chunk blob, if the server still holds it.
async fn read_blob(api: &mut SyncApi, data: &[u8]) -> Option<Vec<u8>> {
    let mut stream = api
        .get_chunks(v1::GetChunksRequest {
            ids: vec![blake3::hash(data).as_bytes().to_vec()],
        })
        .await
        .ok()?
        .into_inner();
    stream.message().await.ok().flatten().map(|c| c.data)
}

async fn list_changes(api: &mut SyncApi, cursor: u64) -> Result<v1::ListChangesResponse, String> {
    api.list_changes(v1::ListChangesRequest {
        cursor,
        limit: 0,
        ..Default::default()
    })
    .await
    .map(tonic::Response::into_inner)
    .map_err(|status| reason(&status))
}

/// With no policy set, `bvfs admin gc` drops no version and deletes no chunk a version names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_every_version_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let token = add_user(&data, "alice", "laptop");
    let server = ServerProcess::start(&data, &[]);
    let mut api = client(&server.url, &token).await;
    let (id, mut rev) = new_file(&mut api, "f", b"version 0").await;
    for v in 1..4 {
        rev = edit(&mut api, &id, rev, format!("version {v}").as_bytes()).await;
    }
    let (gone, gone_rev) = new_file(&mut api, "g", b"deleted file").await;
    commit(&mut api, vec![delete(&gone, gone_rev)])
        .await
        .unwrap();

    let shown = retention(&data, &[]);
    assert_eq!(shown["keep_all"], true, "{shown}");
    assert_eq!(shown["journal_floor"], 0, "{shown}");
    let report = gc(&data);
    assert_eq!(report["versions_dropped"], 0, "{report}");
    assert_eq!(report["chunks_deleted"], 0, "{report}");
    assert_eq!(report["users_with_retention"], 0, "{report}");
    assert_eq!(versions(&mut api, &id).await.len(), 4);
    for v in 0..4 {
        let content = format!("version {v}");
        assert!(read_blob(&mut api, content.as_bytes()).await.is_some());
    }
    assert!(read_blob(&mut api, b"deleted file").await.is_some());
    assert_eq!(all_changes(&mut api, 0).await.len(), 6);
}

/// Versions and deleted files older than the window are dropped by `bvfs admin gc` and their
/// chunks freed (bytes reported); the current version and the versions inside the window keep
/// theirs. Positions below the floor are refused as compacted, dropped versions cannot be
/// restored, and a dropped node's id is never used again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_past_the_window_are_dropped_and_their_chunks_freed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let token = add_user(&data, "alice", "laptop");
    let server = ServerProcess::start(&data, &[]);
    let mut api = client(&server.url, &token).await;

    // Old: f's first two versions, g created and deleted.
    let (f, f1) = new_file(&mut api, "f", b"f, first version (old)").await;
    let f2 = edit(
        &mut api,
        &f,
        f1,
        b"f, second version (old, last before the window)",
    )
    .await;
    let (g, g1) = new_file(&mut api, "g", b"g, deleted long ago").await;
    let g_deleted = commit(&mut api, vec![delete(&g, g1)]).await.unwrap().cursor;
    let old_cursor = g_deleted;
    // A window of 8 s: what follows (two fsynced edits, two CLI runs) must end inside it even on a
    // slow machine, or f3 would fall out of the window too.
    std::thread::sleep(Duration::from_millis(9_000));
    // Inside the window: two more versions of f.
    let f3 = edit(&mut api, &f, f2, b"f, third version (recent)").await;
    let f4 = edit(&mut api, &f, f3, b"f, fourth version (current)").await;

    let set = retention(&data, &["--window-secs", "8"]);
    assert_eq!(set["keep_versions_s"], 8, "{set}");
    let report = gc(&data);
    // f's first version, and g's create and delete.
    assert_eq!(report["versions_dropped"], 3, "{report}");
    assert_eq!(report["chunks_deleted"], 2, "{report}");
    let freed = (b"f, first version (old)".len() + b"g, deleted long ago".len()) as u64;
    assert_eq!(report["bytes_freed"], freed, "{report}");

    assert_eq!(versions(&mut api, &f).await, [f4, f3, f2]);
    for content in [
        &b"f, second version (old, last before the window)"[..],
        b"f, third version (recent)",
        b"f, fourth version (current)",
    ] {
        assert_eq!(
            read_blob(&mut api, content).await.as_deref(),
            Some(content),
            "a kept version's chunk reads back"
        );
    }
    assert!(
        read_blob(&mut api, b"f, first version (old)")
            .await
            .is_none()
    );
    assert!(read_blob(&mut api, b"g, deleted long ago").await.is_none());

    // The floor is the last entry before the cutoff.
    let shown = retention(&data, &[]);
    assert_eq!(shown["journal_floor"], old_cursor, "{shown}");
    assert_eq!(
        list_changes(&mut api, 0).await.unwrap_err(),
        "journal-compacted"
    );
    assert_eq!(
        list_changes(&mut api, old_cursor - 1).await.unwrap_err(),
        "journal-compacted"
    );
    let rest = list_changes(&mut api, old_cursor).await.unwrap();
    let seqs: Vec<u64> = rest.changes.iter().map(|c| c.seq).collect();
    assert_eq!(seqs, [f3, f4], "the journal above the floor is whole");
    // A snapshot at the floor or above is exact; below it is refused.
    let snapshot = api
        .snapshot(v1::SnapshotRequest {
            at_cursor: old_cursor,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = snapshot.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["", "f"]);
    assert_eq!(snapshot.nodes[1].revision, f2);
    let below = api
        .snapshot(v1::SnapshotRequest {
            at_cursor: old_cursor - 1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&below), "journal-compacted");

    // Dropped versions are gone for good, with a reason that says so.
    let restore = api
        .restore_version(v1::RestoreVersionRequest {
            id: f.clone(),
            seq: f1,
            base_revision: f4,
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&restore), "expired", "{restore:?}");
    let undelete = api
        .undelete(v1::UndeleteRequest {
            id: g.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&undelete), "expired", "{undelete:?}");
    let deleted = api
        .list_deleted(v1::ListDeletedRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(deleted.nodes.is_empty(), "{deleted:?}");
    // g's id stays used: a create with it is refused.
    put_blob(&mut api, b"reuse").await;
    let reuse = commit(
        &mut api,
        vec![create(
            &g,
            &root(),
            "g2",
            v1::NodeKind::File,
            file_attrs(b"reuse"),
        )],
    )
    .await
    .unwrap_err();
    assert_eq!(reason(&reuse), "duplicate-id", "{reuse:?}");
    // A kept older version can still be restored.
    let restored = api
        .restore_version(v1::RestoreVersionRequest {
            id: f.clone(),
            seq: f2,
            base_revision: f4,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(restored.cursor > f4);

    // Nothing more to drop right away; keep-all stops further drops.
    let again = gc(&data);
    assert_eq!(again["versions_dropped"], 0, "{again}");
    assert_eq!(
        again["chunks_deleted"], 1,
        "only the refused upload: {again}"
    );
    let kept = retention(&data, &["--keep-all"]);
    assert_eq!(kept["keep_all"], true, "{kept}");
    assert_eq!(
        kept["journal_floor"], old_cursor,
        "the floor never goes back"
    );
}

/// `bvfs admin retention`: days with fractions, keep-all, and clear errors.
#[test]
fn the_retention_command_sets_and_shows_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    add_user(&data, "alice", "laptop");
    assert_eq!(
        retention(&data, &["--days", "1.5"])["keep_versions_s"],
        129_600
    );
    assert_eq!(retention(&data, &[])["keep_versions_s"], 129_600);
    let out = bvfs()
        .args(["admin", "retention", "alice", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("kept for 36 hour(s)"), "{text}");
    assert_eq!(
        retention(&data, &["--keep-all"])["keep_versions_s"],
        serde_json::Value::Null
    );
    for bad in [
        &["admin", "retention", "alice", "--days", "-1"][..],
        &["admin", "retention", "alice", "--days", "NaN"],
        &["admin", "retention", "alice", "--days", "3", "--keep-all"],
        &["admin", "retention", "bob", "--days", "3"],
    ] {
        let out = bvfs().args(bad).arg("--data").arg(&data).output().unwrap();
        assert!(!out.status.success(), "{bad:?} must fail");
        assert!(!out.stderr.is_empty(), "{bad:?} says why");
    }
}

/// A device that was away while the server dropped the history after its position (window 0)
/// finds its position refused as compacted, starts again from a snapshot, keeps and uploads its
/// local edits made meanwhile, and converges with the other device without conflicted copies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_below_the_floor_starts_again_and_keeps_its_local_edits() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let token_a = add_user(&data, "alice", "laptop");
    let token_b = add_user(&data, "alice", "desktop");
    let server = ServerProcess::start(&data, &[]);
    let a = device(dir.path(), "laptop", &server.url, &token_a);
    let b = device(dir.path(), "desktop", &server.url, &token_b);
    for name in ["f1", "f2", "f3"] {
        write(&a, name, format!("{name} as first written").as_bytes()).await;
    }
    a.sync_until_idle(10).await.unwrap();
    b.sync_until_idle(10).await.unwrap();

    // B goes away. A edits f1 three times, writes f4 and removes f3.
    for round in 1..=3 {
        write(
            &a,
            "f1",
            format!("f1 edited by the laptop, round {round}").as_bytes(),
        )
        .await;
        a.sync_until_idle(10).await.unwrap();
    }
    write(&a, "f4", b"f4 from the laptop").await;
    a.remove(ROOT_INO, "f3", false).unwrap();
    a.sync_until_idle(10).await.unwrap();
    // Meanwhile B edits f2 and makes b1, not synced yet.
    write(&b, "f2", b"f2 edited on the desktop while away").await;
    write(&b, "b1", b"b1 made on the desktop while away").await;

    retention(&data, &["--window-secs", "0"]);
    std::thread::sleep(Duration::from_millis(50));
    let report = gc(&data);
    assert!(
        report["versions_dropped"].as_u64().unwrap() >= 3,
        "{report}"
    );
    let floor = retention(&data, &[])["journal_floor"].as_u64().unwrap();
    assert!(floor > 3, "the floor is past B's position: {floor}");

    b.sync_until_idle(20).await.unwrap();
    assert!(b.rebase_count() >= 1, "B started again from a snapshot");
    a.sync_until_idle(20).await.unwrap();
    assert_eq!(
        a.rebase_count(),
        0,
        "A, at the floor, carried on from its cursor"
    );
    b.sync_until_idle(20).await.unwrap();

    let on_a = files(&a).await;
    let on_b = files(&b).await;
    assert_eq!(on_a, on_b, "the devices converge");
    let expected: Vec<(String, String)> = [
        ("b1", "b1 made on the desktop while away"),
        ("f1", "f1 edited by the laptop, round 3"),
        ("f2", "f2 edited on the desktop while away"),
        ("f4", "f4 from the laptop"),
    ]
    .iter()
    .map(|(n, c)| (n.to_string(), c.to_string()))
    .collect();
    assert_eq!(
        on_a, expected,
        "B's edits kept, A's changes in, no conflicted copies"
    );
    for device in [&a, &b] {
        let status = device.status().unwrap();
        assert_eq!(status.errors, 0, "no sync errors: {status:?}");
    }
}

/// Commits racing `bvfs admin gc` with a retention window of 0 (every superseded version is
/// dropped at once), some of them naming the content of a version just dropped without
/// uploading it: every chunk a kept version names is still stored afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_a_kept_version_names_is_never_deleted_under_concurrent_commits() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let token = add_user(&data, "alice", "laptop");
    let server = ServerProcess::start(&data, &[]);
    retention(&data, &["--window-secs", "0"]);
    let mut api = client(&server.url, &token).await;
    let args = vec!["--data".to_string(), data.display().to_string()];
    let stats = common::gc_race::commits_racing_retention(&mut api, args, vec![], 8).await;
    eprintln!("{stats:?}");
    assert!(stats.commits > 20, "{stats:?}");
    assert!(stats.gc_runs > 3, "{stats:?}");
    assert!(stats.versions_dropped > 0, "{stats:?}");
    assert!(
        stats.chunks_deleted > 0,
        "dropped versions' chunks were freed: {stats:?}"
    );
}

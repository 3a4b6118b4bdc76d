//! A server restored from a backup (issue 15, item 2), with real `bvfs serve` processes whose data
//! directory is put back from a copy: devices that saw the lost history notice it, re-base on the
//! server's, and upload again what the server lost; nothing acknowledged is lost, and a recreated
//! (not restored) namespace is refused rather than merged.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use bvfs_engine::remote::{GrpcRemote, RemoteConfig};
use bvfs_engine::{Engine, EngineConfig};
use common::engine_devices::{device, files, write};
use common::*;

fn names(files: &[(String, String)]) -> Vec<&str> {
    files.iter().map(|(name, _)| name.as_str()).collect()
}

fn content<'a>(files: &'a [(String, String)], name: &str) -> &'a str {
    files
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, c)| c.as_str())
        .unwrap_or_else(|| panic!("no {name} in {files:?}"))
}

fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "cp -a {} {}",
        from.display(),
        to.display()
    );
}

/// Stops the server cleanly, runs `between` on its stopped data directory, and starts it again on
/// the same address.
fn restart_with(server: &mut ServerProcess, between: impl FnOnce(&Path)) {
    assert!(server.terminate().success(), "the server stops cleanly");
    let data = server.data.clone();
    between(&data);
    let listen = server
        .url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    *server = ServerProcess::start(&data, &["--listen", &listen]);
}

/// The scenario of the issue: A syncs, the server is backed up, A syncs more (acknowledged), the
/// backup is restored and B commits new work. A must notice, re-base and upload again what the
/// server lost (its new files as they were, its lost edit of an untouched file as an edit, its lost
/// edit of a file B changed since as a conflicted copy), and keep everything B did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restored_from_a_backup_gets_back_what_it_lost_and_keeps_what_came_after() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let backup = dir.path().join("backup");
    let token_a = add_user(&data, "alice", "laptop");
    let token_b = add_user(&data, "alice", "desktop");
    let mut server = ServerProcess::start(&data, &[]);
    let a = device(dir.path(), "laptop", &server.url, &token_a);

    for name in ["f1", "f2", "f3"] {
        write(&a, name, format!("{name} as first written").as_bytes()).await;
    }
    a.sync_until_idle(10).await.unwrap();
    restart_with(&mut server, |data| copy_dir(data, &backup));

    // After the backup: five new files and two edits, all acknowledged by the server.
    for i in 1..=5 {
        write(
            &a,
            &format!("g{i}"),
            format!("g{i}, lost by the server").as_bytes(),
        )
        .await;
    }
    write(&a, "f1", b"f1 edited on the laptop after the backup").await;
    write(&a, "f2", b"f2 edited on the laptop after the backup").await;
    a.sync_until_idle(10).await.unwrap();
    let acknowledged = files(&a).await;
    assert_eq!(acknowledged.len(), 8);

    restart_with(&mut server, |data| copy_dir(&backup, data));

    // B starts from the restored server and commits six files and an edit.
    let b = device(dir.path(), "desktop", &server.url, &token_b);
    b.sync_until_idle(10).await.unwrap();
    assert_eq!(names(&files(&b).await), ["f1", "f2", "f3"]);
    for i in 1..=6 {
        write(
            &b,
            &format!("h{i}"),
            format!("h{i} from the desktop").as_bytes(),
        )
        .await;
    }
    write(&b, "f2", b"f2 edited on the desktop after the restore").await;
    b.sync_until_idle(10).await.unwrap();

    a.sync_until_idle(20).await.unwrap();
    assert!(a.rebase_count() >= 1, "A noticed the server's lost history");
    b.sync_until_idle(20).await.unwrap();
    a.sync_until_idle(20).await.unwrap();

    let on_a = files(&a).await;
    let on_b = files(&b).await;
    assert_eq!(on_a, on_b, "the devices converge");
    // Everything A had acknowledged is back on the server.
    for i in 1..=5 {
        let name = format!("g{i}");
        assert_eq!(content(&on_b, &name), format!("g{i}, lost by the server"));
    }
    // A's lost edit of a file nobody touched since is an edit again, not a conflict.
    assert_eq!(
        content(&on_b, "f1"),
        "f1 edited on the laptop after the backup"
    );
    // Where B changed the file since, both versions stay: B's under the name, A's as a conflicted
    // copy.
    assert_eq!(
        content(&on_b, "f2"),
        "f2 edited on the desktop after the restore"
    );
    let copies: Vec<_> = on_b
        .iter()
        .filter(|(name, _)| name.starts_with("f2 (conflicted copy from laptop"))
        .collect();
    assert_eq!(copies.len(), 1, "one conflicted copy of f2: {on_b:?}");
    assert_eq!(copies[0].1, "f2 edited on the laptop after the backup");
    // B's work after the restore is all there, and nothing else is conflicted.
    for i in 1..=6 {
        let name = format!("h{i}");
        assert_eq!(content(&on_a, &name), format!("h{i} from the desktop"));
    }
    assert_eq!(on_a.len(), 3 + 5 + 6 + 1, "{:?}", names(&on_a));
    for device in [&a, &b] {
        let status = device.status().unwrap();
        assert_eq!(status.errors, 0, "no sync errors: {status:?}");
    }
}

/// The server is restored and nothing is committed after: the device's cursor is past the head
/// (`cursor-ahead`). It re-bases and uploads again what it had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_rewound_below_the_cursor_gets_back_what_it_lost() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let backup = dir.path().join("backup");
    let token_a = add_user(&data, "alice", "laptop");
    let token_b = add_user(&data, "alice", "desktop");
    let mut server = ServerProcess::start(&data, &[]);
    let a = device(dir.path(), "laptop", &server.url, &token_a);
    write(&a, "kept", b"in the backup").await;
    a.sync_until_idle(10).await.unwrap();
    restart_with(&mut server, |data| copy_dir(data, &backup));
    write(&a, "lost", b"after the backup").await;
    write(&a, "kept", b"kept, edited after the backup").await;
    a.sync_until_idle(10).await.unwrap();
    restart_with(&mut server, |data| copy_dir(&backup, data));

    a.sync_until_idle(20).await.unwrap();
    assert!(a.rebase_count() >= 1);
    let b = device(dir.path(), "desktop", &server.url, &token_b);
    b.sync_until_idle(10).await.unwrap();
    let on_b = files(&b).await;
    assert_eq!(
        on_b,
        [
            (
                "kept".to_string(),
                "kept, edited after the backup".to_string()
            ),
            ("lost".to_string(), "after the backup".to_string()),
        ]
    );
    assert_eq!(files(&a).await, on_b);
}

/// A commit acknowledged just before the restore, which the device has not pulled yet: its cursor
/// is still in the common history, so only the missing entry at its own commit's sequence can tell.
/// Without that check the device would take another device's entry for its own, keep its file as
/// synced, and then delete it as removed by the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_commit_that_the_restored_server_lost_is_uploaded_again() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let backup = dir.path().join("backup");
    let token_a = add_user(&data, "alice", "laptop");
    let token_b = add_user(&data, "alice", "desktop");
    let mut server = ServerProcess::start(&data, &[]);
    let a = device(dir.path(), "laptop", &server.url, &token_a);
    write(&a, "base", b"in the backup").await;
    a.sync_until_idle(10).await.unwrap();
    restart_with(&mut server, |data| copy_dir(data, &backup));

    // One round: pull (nothing new), plan, commit. The answer is in; the pull that would show the
    // commit in the journal has not run.
    write(&a, "mine", b"acknowledged, then lost by the server").await;
    let round = a.sync_round().await.unwrap();
    assert_eq!(round.committed, 1);
    restart_with(&mut server, |data| copy_dir(&backup, data));

    // B commits one change: the restored journal gets an entry at the sequence A's commit had.
    let b = device(dir.path(), "desktop", &server.url, &token_b);
    b.sync_until_idle(10).await.unwrap();
    write(&b, "theirs", b"from the desktop").await;
    b.sync_until_idle(10).await.unwrap();

    a.sync_until_idle(20).await.unwrap();
    assert!(a.rebase_count() >= 1);
    b.sync_until_idle(10).await.unwrap();
    let on_a = files(&a).await;
    assert_eq!(
        on_a,
        [
            ("base".to_string(), "in the backup".to_string()),
            (
                "mine".to_string(),
                "acknowledged, then lost by the server".to_string()
            ),
            ("theirs".to_string(), "from the desktop".to_string()),
        ]
    );
    assert_eq!(files(&b).await, on_a);
}

/// A namespace recreated under the same tenant name (the server's data lost, not restored) is
/// another namespace: a device bound to the old one refuses to sync with it and keeps its files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_namespace_of_the_same_name_is_refused_and_nothing_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let token = add_user(&data, "alice", "laptop");
    let mut server = ServerProcess::start(&data, &[]);
    let a = device(dir.path(), "laptop", &server.url, &token);
    write(&a, "precious", b"only here now").await;
    a.sync_until_idle(10).await.unwrap();

    let mut new_token = String::new();
    restart_with(&mut server, |data| {
        std::fs::remove_dir_all(data).unwrap();
        new_token = add_user(data, "alice", "laptop");
    });
    // The device's token is gone with the old server: it talks with a token of the new one.
    drop(a);
    let remote = Arc::new(GrpcRemote::new(&RemoteConfig::new(&server.url, &new_token)).unwrap());
    let a = Engine::open(
        EngineConfig::new(dir.path().join("laptop"), "laptop"),
        remote,
    )
    .unwrap();
    let error = a.sync_round().await.unwrap_err().to_string();
    assert!(
        error.contains("another namespace") && error.contains("--data"),
        "the refusal says why and what to do: {error}"
    );
    assert_eq!(
        files(&a).await,
        [("precious".to_string(), "only here now".to_string())]
    );
    assert!(a.sync_round().await.is_err(), "and keeps refusing");
    assert_eq!(files(&a).await.len(), 1);
}

/// From the code: a device interrupted in a snapshot at cursor N, when the server is then rewound
/// below N, used to ask for that snapshot forever (`cursor-ahead` on every page). It re-bases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_above_a_rewound_head_starts_over() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let token = add_user(&data, "alice", "laptop");
    let server = ServerProcess::start(&data, &[]);
    let a = device(dir.path(), "laptop", &server.url, &token);
    write(&a, "one", b"1").await;
    write(&a, "two", b"2").await;
    a.sync_until_idle(10).await.unwrap();
    drop(a);
    // As if a snapshot at 50 had begun before the server lost its history past its head (2).
    {
        let db = rusqlite::Connection::open(dir.path().join("laptop/state.sqlite")).unwrap();
        db.execute_batch(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('snapshot_at', 50);
             INSERT OR REPLACE INTO meta (key, value) VALUES ('snapshot_at_tag', 12345);",
        )
        .unwrap();
    }
    let a = device(dir.path(), "laptop", &server.url, &token);
    a.sync_until_idle(10).await.unwrap();
    assert_eq!(a.rebase_count(), 1);
    assert_eq!(
        files(&a).await,
        [
            ("one".to_string(), "1".to_string()),
            ("two".to_string(), "2".to_string())
        ]
    );
    assert_eq!(a.status().unwrap().errors, 0);
}

//! Commits racing `bvfs admin gc --grace 0`: the collector runs again and again in its own
//! process while a device uploads chunks and commits files naming them, as fast as it can.
//! Afterwards every chunk an acknowledged commit named must still be stored.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bvfs_proto::v1;

use super::*;

/// What a race did.
#[derive(Debug, Default)]
pub struct RaceStats {
    pub commits: usize,
    /// Commits refused with `missing-chunks` (a collection deleted a chunk the commit had
    /// checked) and retried after uploading again.
    pub refused_missing: usize,
    /// Files given up on: with no grace period a collection can delete a fresh upload before
    /// every attempt to commit it (what the grace period is for); never acknowledged, so not
    /// checked.
    pub starved: usize,
    pub gc_runs: usize,
    pub chunks_deleted: u64,
}

/// Runs one `bvfs admin gc --json` with `args`; returns how many chunks it deleted.
pub fn run_gc(args: &[String], env: &[(String, String)], grace: &str) -> u64 {
    run_gc_report(args, env, grace)["chunks_deleted"]
        .as_u64()
        .expect("chunks_deleted")
}

/// Uploads and commits for `secs` seconds through `api` while `bvfs admin gc --grace 0` (with
/// `gc_args`, e.g. `--data DIR` or `--metadata … --chunks …`) runs in a loop; then checks that
/// every chunk an acknowledged commit named can be read back.
pub async fn commits_racing_gc(
    api: &mut SyncApi,
    gc_args: Vec<String>,
    gc_env: Vec<(String, String)>,
    secs: u64,
) -> RaceStats {
    let stop = Arc::new(AtomicBool::new(false));
    let collector = {
        let (stop, args, env) = (stop.clone(), gc_args.clone(), gc_env.clone());
        std::thread::spawn(move || {
            let (mut runs, mut deleted) = (0, 0);
            while !stop.load(Ordering::Relaxed) {
                deleted += run_gc(&args, &env, "0s");
                runs += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            (runs, deleted)
        })
    };

    let mut stats = RaceStats::default();
    let mut named = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut i = 0u64;
    while Instant::now() < deadline {
        i += 1;
        let data = format!("chunk {i} {}", uuid::Uuid::new_v4()).repeat(64);
        let orphan = format!("orphan {i} {}", uuid::Uuid::new_v4()).repeat(16);
        put_blob(api, orphan.as_bytes()).await;
        let id = new_id();
        let give_up = Instant::now() + Duration::from_secs(5);
        let committed = loop {
            put_blob(api, data.as_bytes()).await;
            let op = create(
                &id,
                &root(),
                &format!("f{i}"),
                v1::NodeKind::File,
                file_attrs(data.as_bytes()),
            );
            match commit(api, vec![op]).await {
                Ok(_) => break true,
                Err(status) if reason(&status) == "missing-chunks" => {
                    stats.refused_missing += 1;
                    if Instant::now() > give_up {
                        break false;
                    }
                }
                Err(status) => panic!("commit {i} failed: {status:?}"),
            }
        };
        if !committed {
            stats.starved += 1;
            continue;
        }
        stats.commits += 1;
        named.push(blake3::hash(data.as_bytes()).as_bytes().to_vec());
    }
    stop.store(true, Ordering::Relaxed);
    let (runs, deleted) = collector.join().expect("the collector thread");
    stats.gc_runs = runs;
    stats.chunks_deleted = deleted + run_gc(&gc_args, &gc_env, "0s");

    for chunk in named {
        let mut stream = api
            .get_chunks(v1::GetChunksRequest {
                ids: vec![chunk.clone()],
            })
            .await
            .expect("get chunks")
            .into_inner();
        let got = stream.message().await.unwrap_or_else(|status| {
            panic!(
                "chunk {} named by an acknowledged commit is gone: {status:?} ({stats:?})",
                hex::encode(&chunk)
            )
        });
        assert!(got.is_some(), "chunk {} is gone", hex::encode(&chunk));
    }
    stats
}

/// Runs one `bvfs admin gc --json` with `args` and `--grace grace`; returns its report.
pub fn run_gc_report(args: &[String], env: &[(String, String)], grace: &str) -> serde_json::Value {
    let out = bvfs()
        .args(["admin", "gc", "--json", "--grace", grace])
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("run bvfs admin gc");
    assert!(
        out.status.success(),
        "gc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("gc's JSON")
}

/// What a retention race did.
#[derive(Debug, Default)]
pub struct RetentionRaceStats {
    pub commits: usize,
    /// Commits naming old content without uploading it again, refused with `missing-chunks`
    /// (its last version was dropped and collected) and retried after uploading.
    pub refused_missing: usize,
    /// Commits of old content that went through without an upload (its chunk was still stored).
    pub reused_without_upload: usize,
    pub gc_runs: usize,
    pub versions_dropped: u64,
    pub chunks_deleted: u64,
}

/// The chunk ids a node names.
fn chunks_of(node: &v1::Node) -> Vec<Vec<u8>> {
    node.attrs
        .as_ref()
        .and_then(|a| a.content.as_ref())
        .map(|c| c.chunks.iter().map(|c| c.id.clone()).collect())
        .unwrap_or_default()
}

/// Whether the server holds chunk `id` (a `GetChunks` of it succeeds).
async fn chunk_readable(api: &mut SyncApi, id: &[u8]) -> bool {
    let Ok(response) = api
        .get_chunks(v1::GetChunksRequest {
            ids: vec![id.to_vec()],
        })
        .await
    else {
        return false;
    };
    matches!(response.into_inner().message().await, Ok(Some(_)))
}

/// Edits a few files through `api` for `secs` seconds, as fast as it can, while `bvfs admin gc
/// --grace 0` (with `gc_args`) runs in a loop with the user's retention window already set to 0:
/// every superseded version is dropped and its chunks collected as soon as a collection sees it.
/// Some edits bring back the content of a version edited away a moment ago *without uploading
/// it again* (the client believes the server has it), which is exactly the commit that races the
/// deletion of a chunk only a dropped version named. Afterwards every chunk named by a version
/// the server still lists (current or not) must be stored.
pub async fn commits_racing_retention(
    api: &mut SyncApi,
    gc_args: Vec<String>,
    gc_env: Vec<(String, String)>,
    secs: u64,
) -> RetentionRaceStats {
    let mut stats = RetentionRaceStats::default();
    // Four files: (id, revision, contents committed so far).
    let mut files: Vec<(Vec<u8>, u64, Vec<String>)> = Vec::new();
    for k in 0..4 {
        let (id, data) = (
            new_id(),
            format!("file {k} v0 {}", uuid::Uuid::new_v4()).repeat(32),
        );
        put_blob(api, data.as_bytes()).await;
        let op = create(
            &id,
            &root(),
            &format!("r{k}"),
            v1::NodeKind::File,
            file_attrs(data.as_bytes()),
        );
        let done = commit(api, vec![op]).await.expect("create");
        files.push((id, done.cursor, vec![data]));
    }
    // The collector starts once the files exist (their first uploads are not raced).
    let stop = Arc::new(AtomicBool::new(false));
    let collector = {
        let (stop, args, env) = (stop.clone(), gc_args.clone(), gc_env.clone());
        std::thread::spawn(move || {
            let (mut runs, mut dropped, mut deleted) = (0, 0, 0);
            while !stop.load(Ordering::Relaxed) {
                let report = run_gc_report(&args, &env, "0s");
                dropped += report["versions_dropped"]
                    .as_u64()
                    .expect("versions_dropped");
                deleted += report["chunks_deleted"].as_u64().expect("chunks_deleted");
                runs += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            (runs, dropped, deleted)
        })
    };

    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut i = 0usize;
    while Instant::now() < deadline {
        i += 1;
        let k = i % files.len();
        // Every third edit brings back the content of two versions ago, not uploaded again.
        let (data, uploaded) = if i.is_multiple_of(3) && files[k].2.len() >= 2 {
            (files[k].2[files[k].2.len() - 2].clone(), false)
        } else {
            let data = format!("file {k} v{i} {}", uuid::Uuid::new_v4()).repeat(32);
            put_blob(api, data.as_bytes()).await;
            (data, true)
        };
        let mut retried = false;
        let give_up = Instant::now() + Duration::from_secs(10);
        let done = loop {
            assert!(
                Instant::now() < give_up,
                "edit {i} could not be committed in 10 s ({stats:?})"
            );
            let op = update(&files[k].0, files[k].1, file_attrs(data.as_bytes()));
            match commit(api, vec![op]).await {
                Ok(done) => break done,
                Err(status) if reason(&status) == "missing-chunks" && !retried => {
                    stats.refused_missing += 1;
                    retried = true;
                    put_blob(api, data.as_bytes()).await;
                }
                Err(status) if reason(&status) == "missing-chunks" => {
                    // The collector deleted the fresh upload again (no grace period): once more.
                    put_blob(api, data.as_bytes()).await;
                }
                Err(status) => panic!("commit {i} failed: {status:?}"),
            }
        };
        if !uploaded && !retried {
            stats.reused_without_upload += 1;
        }
        stats.commits += 1;
        files[k].1 = done.cursor;
        files[k].2.push(data);
    }
    stop.store(true, Ordering::Relaxed);
    let (runs, dropped, deleted) = collector.join().expect("the collector thread");
    let last = run_gc_report(&gc_args, &gc_env, "0s");
    stats.gc_runs = runs + 1;
    stats.versions_dropped = dropped + last["versions_dropped"].as_u64().unwrap_or(0);
    stats.chunks_deleted = deleted + last["chunks_deleted"].as_u64().unwrap_or(0);

    for (id, revision, contents) in &files {
        let versions = api
            .list_versions(v1::ListVersionsRequest {
                id: id.clone(),
                ..Default::default()
            })
            .await
            .expect("list versions")
            .into_inner()
            .versions;
        let newest = versions.first().expect("a live file has a version");
        assert_eq!(newest.seq, *revision, "the current version is kept");
        let current = blake3::hash(contents.last().unwrap().as_bytes());
        assert_eq!(
            chunks_of(newest.node.as_ref().unwrap()),
            vec![current.as_bytes().to_vec()]
        );
        for version in &versions {
            for chunk in chunks_of(version.node.as_ref().unwrap()) {
                assert!(
                    chunk_readable(api, &chunk).await,
                    "chunk {} of kept version {} is gone ({stats:?})",
                    hex::encode(&chunk),
                    version.seq
                );
            }
        }
    }
    stats
}

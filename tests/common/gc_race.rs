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
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("gc's JSON");
    report["chunks_deleted"].as_u64().expect("chunks_deleted")
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

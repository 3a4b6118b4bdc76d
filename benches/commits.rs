//! Commit throughput of a real `bvfs serve` process on loopback, beside the storage limit measured in
//! the same run: bare SQLite transactions with the same durability (WAL, synchronous=FULL) on the same
//! disk.
//!
//! Run: `cargo bench --bench commits` (builds the release binary). Prints creates/s for 100,000
//! creates in batches of 1,000, and single-op commits/s, each with its baseline and the ratio.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;

const BATCHED_CREATES: usize = 100_000;
const BATCH: usize = 1_000;
const SINGLE_OP_WINDOW: Duration = Duration::from_secs(5);

/// The baseline: the same number of rows inserted by bare SQLite, one transaction per batch.
fn sqlite_baseline(dir: &std::path::Path, rows: usize, batch: usize) -> f64 {
    let conn = rusqlite::Connection::open(dir.join("baseline.sqlite")).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;
         CREATE TABLE t (id BLOB PRIMARY KEY, parent BLOB, name TEXT, node BLOB) WITHOUT ROWID;",
    )
    .unwrap();
    let start = Instant::now();
    let mut conn = conn;
    for b in 0..rows / batch {
        let tx = conn.transaction().unwrap();
        for i in 0..batch {
            tx.execute(
                "INSERT INTO t VALUES (?1, ?2, ?3, ?4)",
                rusqlite::params![new_id(), root(), format!("n{b}-{i}"), vec![0u8; 64]],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }
    rows as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("commits: benchmark");
        return;
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let token = add_user(dir.path(), "bench", "bench");
    let server = ServerProcess::start(dir.path(), &[]);
    runtime.block_on(async {
        let mut api = client(&server.url, &token).await;

        let start = Instant::now();
        for b in 0..BATCHED_CREATES / BATCH {
            let ops = (0..BATCH)
                .map(|i| mkdir(&new_id(), &root(), &format!("b{b}-{i}")))
                .collect();
            commit(&mut api, ops).await.unwrap();
        }
        let batched = BATCHED_CREATES as f64 / start.elapsed().as_secs_f64();
        let batched_base = sqlite_baseline(dir.path(), BATCHED_CREATES, BATCH);
        println!(
            "{BATCHED_CREATES} creates in batches of {BATCH}: {batched:.0} creates/s \
             (bare SQLite {batched_base:.0} rows/s, ratio {:.2})",
            batched / batched_base
        );

        let start = Instant::now();
        let mut single = 0usize;
        while start.elapsed() < SINGLE_OP_WINDOW {
            commit(
                &mut api,
                vec![mkdir(&new_id(), &root(), &format!("s{single}"))],
            )
            .await
            .unwrap();
            single += 1;
        }
        let single_rate = single as f64 / start.elapsed().as_secs_f64();
        let base_dir = tempfile::tempdir().unwrap();
        let single_base = sqlite_baseline(base_dir.path(), 2_000, 1);
        println!(
            "single-op commits: {single_rate:.0} commits/s (bare SQLite one row per transaction \
             {single_base:.0}/s, ratio {:.2})",
            single_rate / single_base
        );
    });
}

//! Durability: kill -9 the server during a stream of commits, restart it, and check that every
//! acknowledged commit is there, the journal has no gap, and cursors continue.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bvfs_proto::v1;
use common::*;

#[tokio::test]
async fn acknowledged_commits_survive_kill_9() {
    let data = tempfile::tempdir().unwrap();
    let token = add_user(data.path(), "alice", "laptop");
    let mut server = ServerProcess::start(data.path(), &[]);
    let url = server.url.clone();

    // Four writers commit single creates as fast as they can; each remembers what was acknowledged.
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (url, token) = (url.clone(), token.clone());
        let acknowledged = Arc::clone(&acknowledged);
        writers.push(tokio::spawn(async move {
            let mut api = client(&url, &token).await;
            let mut acked: Vec<(Vec<u8>, u64)> = Vec::new();
            for i in 0.. {
                let id = new_id();
                match commit(&mut api, vec![mkdir(&id, &root(), &format!("w{w}-{i}"))]).await {
                    Ok(resp) => {
                        acked.push((id, resp.nodes[0].revision));
                        acknowledged.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => return acked,
                }
            }
            unreachable!()
        }));
    }
    // Let commits flow (a few hundred milliseconds more once 40 are in, however slow the disk),
    // then crash the server mid-stream.
    let deadline = Instant::now() + Duration::from_secs(60);
    while acknowledged.load(Ordering::Relaxed) < 40 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.kill9();
    let mut acked = HashMap::new();
    for writer in writers {
        for (id, rev) in writer.await.unwrap() {
            acked.insert(id, rev);
        }
    }
    assert!(
        acked.len() >= 40,
        "only {} commits were acknowledged before the crash",
        acked.len()
    );

    let server = ServerProcess::start(data.path(), &[]);
    let mut api = client(&server.url, &token).await;
    let head = api
        .hello(v1::HelloRequest {})
        .await
        .unwrap()
        .into_inner()
        .head;
    let changes = all_changes(&mut api, 0).await;
    // Gap-free, in order, up to the head.
    assert_eq!(changes.len() as u64, head);
    for (i, change) in changes.iter().enumerate() {
        assert_eq!(change.seq, i as u64 + 1, "the journal has a gap");
    }
    // Every acknowledged commit is there, with the revision it was acknowledged with.
    let journal: HashMap<_, _> = changes
        .iter()
        .map(|c| (c.node.as_ref().unwrap().id.clone(), c.seq))
        .collect();
    for (id, rev) in &acked {
        assert_eq!(
            journal.get(id),
            Some(rev),
            "an acknowledged commit was lost"
        );
    }
    let max_acked = acked.values().max().copied().unwrap();
    assert!(head >= max_acked);
    // The cursor continues right after the head.
    let next = commit(&mut api, vec![mkdir(&new_id(), &root(), "after-restart")])
        .await
        .unwrap();
    assert_eq!(next.cursor, head + 1);
}

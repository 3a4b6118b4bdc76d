//! The sync engine against a real `bvfs serve` process: two devices converge, offline edits catch up
//! after the server comes back, and an edit in the middle of a 1 GiB file uploads only nearby chunks.

mod common;

use std::io::{Seek, SeekFrom, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bvfs_engine::chunking::ChunkId;
use bvfs_engine::model::NodeKind;
use bvfs_engine::remote::{
    GrpcRemote, HeadStream, Hello, Position, Remote, RemoteConfig, RemoteError,
};
use bvfs_engine::state::ROOT_INO;
use bvfs_engine::{Engine, EngineConfig};
use bvfs_proto::v1;
use common::*;

/// Passes every call to the real server and counts the chunk bytes uploaded.
struct CountingRemote {
    inner: GrpcRemote,
    uploaded: AtomicU64,
}

#[async_trait::async_trait]
impl Remote for CountingRemote {
    async fn hello(&self) -> Result<Hello, RemoteError> {
        self.inner.hello().await
    }
    async fn commit(
        &self,
        ops: Vec<v1::Op>,
        at: Position,
    ) -> Result<v1::CommitResponse, RemoteError> {
        self.inner.commit(ops, at).await
    }
    async fn list_changes(
        &self,
        from: Position,
        limit: u32,
    ) -> Result<v1::ListChangesResponse, RemoteError> {
        self.inner.list_changes(from, limit).await
    }
    async fn snapshot(
        &self,
        at: Position,
        after: Vec<u8>,
        limit: u32,
    ) -> Result<v1::SnapshotResponse, RemoteError> {
        self.inner.snapshot(at, after, limit).await
    }
    async fn subscribe(&self, cursor: u64) -> Result<HeadStream, RemoteError> {
        self.inner.subscribe(cursor).await
    }
    async fn find_missing(&self, ids: Vec<ChunkId>) -> Result<Vec<ChunkId>, RemoteError> {
        self.inner.find_missing(ids).await
    }
    async fn put_chunks(&self, chunks: Vec<(ChunkId, Vec<u8>)>) -> Result<(), RemoteError> {
        let bytes: usize = chunks.iter().map(|(_, d)| d.len()).sum();
        self.uploaded.fetch_add(bytes as u64, Ordering::Relaxed);
        self.inner.put_chunks(chunks).await
    }
    async fn get_chunks(&self, ids: Vec<ChunkId>) -> Result<Vec<(ChunkId, Vec<u8>)>, RemoteError> {
        self.inner.get_chunks(ids).await
    }
    fn last_progress(&self) -> Option<std::time::Instant> {
        self.inner.last_progress()
    }
    async fn get_manifest(
        &self,
        id: Vec<u8>,
        revision: u64,
    ) -> Result<Vec<bvfs_engine::chunking::ChunkRef>, RemoteError> {
        self.inner.get_manifest(id, revision).await
    }
    async fn put_manifest(
        &self,
        chunks: Vec<bvfs_engine::chunking::ChunkRef>,
    ) -> Result<Vec<u8>, RemoteError> {
        self.inner.put_manifest(chunks).await
    }
}

fn device(
    dir: &std::path::Path,
    name: &str,
    url: &str,
    token: &str,
) -> (Arc<Engine>, Arc<CountingRemote>) {
    let remote = Arc::new(CountingRemote {
        inner: GrpcRemote::new(&RemoteConfig::new(url, token)).unwrap(),
        uploaded: AtomicU64::new(0),
    });
    let engine = Engine::open(EngineConfig::new(dir.join(name), name), remote.clone()).unwrap();
    (engine, remote)
}

/// Writes `data` as the whole content of `ino` through the engine, as the mount does.
async fn write(engine: &Engine, ino: u64, data: &[u8]) {
    let path = engine.open_write(ino, true).await.unwrap().path;
    std::fs::write(path, data).unwrap();
    engine.close_write(ino, true, None).unwrap();
}

async fn read_all(engine: &Engine, ino: u64) -> Vec<u8> {
    let entry = engine.getattr(ino).unwrap().unwrap();
    engine
        .read(&entry, 0, entry.node.attrs.size as u32)
        .await
        .unwrap()
}

fn tree(engine: &Engine) -> Vec<(String, NodeKind, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![(ROOT_INO, String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        for entry in engine.list(dir, None, 10_000).unwrap() {
            let path = format!("{prefix}/{}", entry.node.name);
            if entry.node.kind == NodeKind::Directory {
                stack.push((entry.ino, path.clone()));
            }
            out.push((path, entry.node.kind, entry.node.attrs.size));
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_devices_converge() {
    let dir = tempfile::tempdir().unwrap();
    let token_a = add_user(&dir.path().join("server"), "alice", "laptop");
    let token_b = add_user(&dir.path().join("server"), "alice", "desktop");
    let server = ServerProcess::start(&dir.path().join("server"), &[]);
    let (a, _) = device(dir.path(), "laptop", &server.url, &token_a);
    let (b, _) = device(dir.path(), "desktop", &server.url, &token_b);

    // A builds a small tree; B sees it all as placeholders.
    let docs = a
        .create(ROOT_INO, "Docs", NodeKind::Directory, false, None)
        .unwrap();
    let notes = a
        .create(docs.ino, "notes.txt", NodeKind::File, false, None)
        .unwrap();
    write(&a, notes.ino, b"first version").await;
    let script = a
        .create(ROOT_INO, "run.sh", NodeKind::File, true, None)
        .unwrap();
    write(&a, script.ino, b"#!/bin/sh\necho hi\n").await;
    a.create(
        ROOT_INO,
        "link",
        NodeKind::Symlink,
        false,
        Some("Docs/notes.txt".into()),
    )
    .unwrap();
    a.sync_until_idle(10).await.unwrap();
    b.sync_until_idle(10).await.unwrap();
    assert_eq!(tree(&a), tree(&b));
    let b_notes = b
        .lookup(
            b.lookup(ROOT_INO, "Docs").unwrap().unwrap().ino,
            "notes.txt",
        )
        .unwrap()
        .unwrap();
    assert_eq!(read_all(&b, b_notes.ino).await, b"first version");
    assert!(
        b.lookup(ROOT_INO, "run.sh")
            .unwrap()
            .unwrap()
            .node
            .attrs
            .executable()
    );
    assert_eq!(
        b.lookup(ROOT_INO, "link")
            .unwrap()
            .unwrap()
            .node
            .attrs
            .symlink_target
            .as_deref(),
        Some("Docs/notes.txt")
    );

    // B renames and edits; A follows.
    b.rename(b_notes.ino, ROOT_INO, "renamed.txt", false)
        .unwrap();
    write(&b, b_notes.ino, b"second version, from the desktop").await;
    b.sync_until_idle(10).await.unwrap();
    a.sync_until_idle(10).await.unwrap();
    assert_eq!(tree(&a), tree(&b));
    let a_renamed = a.lookup(ROOT_INO, "renamed.txt").unwrap().unwrap();
    assert_eq!(a_renamed.ino, notes.ino, "a rename keeps the inode");
    assert_eq!(
        read_all(&a, a_renamed.ino).await,
        b"second version, from the desktop"
    );

    // Concurrent edits: exactly one conflicted copy, no bytes lost.
    write(&a, a_renamed.ino, b"edit from the laptop").await;
    write(&b, b_notes.ino, b"edit from the desktop").await;
    a.sync_until_idle(10).await.unwrap();
    b.sync_until_idle(10).await.unwrap();
    a.sync_until_idle(10).await.unwrap();
    assert_eq!(tree(&a), tree(&b));
    let names: Vec<String> = b
        .list(ROOT_INO, None, 100)
        .unwrap()
        .into_iter()
        .map(|e| e.node.name)
        .collect();
    let copies: Vec<_> = names
        .iter()
        .filter(|n| n.contains("conflicted copy from desktop"))
        .collect();
    assert_eq!(copies.len(), 1, "{names:?}");
    let original = b.lookup(ROOT_INO, "renamed.txt").unwrap().unwrap();
    let copy = b.lookup(ROOT_INO, copies[0]).unwrap().unwrap();
    assert_eq!(
        read_all(&b, original.ino).await,
        b"edit from the laptop",
        "the server's version keeps the path"
    );
    assert_eq!(
        read_all(&b, copy.ino).await,
        b"edit from the desktop",
        "the loser's bytes are kept"
    );

    // Deletes propagate.
    a.remove(ROOT_INO, "run.sh", false).unwrap();
    a.sync_until_idle(10).await.unwrap();
    b.sync_until_idle(10).await.unwrap();
    assert!(b.lookup(ROOT_INO, "run.sh").unwrap().is_none());
    assert_eq!(tree(&a), tree(&b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_edits_sync_after_reconnect() {
    let dir = tempfile::tempdir().unwrap();
    let server_dir = dir.path().join("server");
    let token_a = add_user(&server_dir, "alice", "laptop");
    let token_b = add_user(&server_dir, "alice", "desktop");
    let mut server = ServerProcess::start(&server_dir, &[]);
    let url = server.url.clone();
    let port = url.rsplit(':').next().unwrap().to_string();
    let (a, _) = device(dir.path(), "laptop", &url, &token_a);
    let (b, _) = device(dir.path(), "desktop", &url, &token_b);
    let file = a
        .create(ROOT_INO, "report.txt", NodeKind::File, false, None)
        .unwrap();
    write(&a, file.ino, b"written online").await;
    a.sync_until_idle(10).await.unwrap();

    // The server goes away: rounds fail fast and say so; local work goes on and is durable.
    server.terminate();
    assert!(a.sync_round().await.is_err());
    assert!(!a.is_online());
    write(&a, file.ino, b"written offline").await;
    let dir_entry = a
        .create(ROOT_INO, "made offline", NodeKind::Directory, false, None)
        .unwrap();
    let inner = a
        .create(dir_entry.ino, "inner.txt", NodeKind::File, false, None)
        .unwrap();
    write(&a, inner.ino, b"also offline").await;
    // Hydrated content stays readable offline.
    assert_eq!(read_all(&a, file.ino).await, b"written offline");

    // The server comes back on the same address; everything catches up.
    let server = ServerProcess::start(&server_dir, &["--listen", &format!("127.0.0.1:{port}")]);
    let _ = &server;
    a.sync_until_idle(20).await.unwrap();
    assert!(a.is_online());
    b.sync_until_idle(10).await.unwrap();
    assert_eq!(tree(&a), tree(&b));
    let b_file = b.lookup(ROOT_INO, "report.txt").unwrap().unwrap();
    assert_eq!(read_all(&b, b_file.ino).await, b"written offline");
    let b_dir = b.lookup(ROOT_INO, "made offline").unwrap().unwrap();
    let b_inner = b.lookup(b_dir.ino, "inner.txt").unwrap().unwrap();
    assert_eq!(read_all(&b, b_inner.ino).await, b"also offline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_the_middle_of_a_1gib_file_uploads_only_nearby_chunks() {
    const GIB: u64 = 1 << 30;
    const MIB: usize = 1 << 20;
    let dir = tempfile::tempdir().unwrap();
    let server_dir = dir.path().join("server");
    let token = add_user(&server_dir, "alice", "laptop");
    let server = ServerProcess::start(&server_dir, &[]);
    let (engine, remote) = device(dir.path(), "laptop", &server.url, &token);
    let file = engine
        .create(ROOT_INO, "disk.img", NodeKind::File, false, None)
        .unwrap();

    // 1 GiB of pseudo-random bytes, written in 8 MiB pieces.
    let path = engine.open_write(file.ino, true).await.unwrap().path;
    {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut piece = vec![0u8; 8 * MIB];
        for _ in 0..(GIB as usize / piece.len()) {
            for word in piece.chunks_exact_mut(8) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                word.copy_from_slice(&state.to_le_bytes());
            }
            out.write_all(&piece).unwrap();
        }
    }
    engine.close_write(file.ino, true, None).unwrap();
    engine.sync_until_idle(10).await.unwrap();
    let first = remote.uploaded.swap(0, Ordering::Relaxed);
    assert!(
        first >= GIB,
        "the first upload sends the whole file ({first} bytes)"
    );

    // Overwrite 1 MiB in the middle.
    let path = engine.open_write(file.ino, false).await.unwrap().path;
    {
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.seek(SeekFrom::Start(GIB / 2)).unwrap();
        // Random bytes: a run of one byte would deduplicate into a single chunk.
        let edit: Vec<u8> = (0..MIB)
            .map(|i| {
                (i as u64)
                    .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    .rotate_left(17) as u8
            })
            .collect();
        f.write_all(&edit).unwrap();
    }
    engine.close_write(file.ino, true, None).unwrap();
    engine.sync_until_idle(10).await.unwrap();
    let second = remote.uploaded.load(Ordering::Relaxed);
    println!("a 1 MiB edit in a 1 GiB file uploaded {second} bytes");
    assert!(
        second <= 3 * MIB as u64 / 2,
        "uploaded {second} bytes for a 1 MiB edit (limit 1.5 MiB)"
    );
    assert!(
        second >= MIB as u64,
        "the edited bytes themselves must be sent ({second})"
    );
}

/// The real remote tells the fetcher when chunk bytes arrive (so a slow download is waited for
/// rather than taken for an unreachable server); uploads do not count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_downloads_report_progress_to_the_fetcher() {
    let data = tempfile::tempdir().unwrap();
    let token = add_user(data.path(), "alice", "laptop");
    let server = ServerProcess::start(data.path(), &[]);
    let remote = GrpcRemote::new(&RemoteConfig::new(&server.url, &token)).unwrap();
    assert!(remote.last_progress().is_none());
    let chunk: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let id = ChunkId::of(&chunk);
    remote.put_chunks(vec![(id, chunk.clone())]).await.unwrap();
    assert!(
        remote.last_progress().is_none(),
        "an upload is not a download"
    );
    let asked = std::time::Instant::now();
    assert_eq!(
        remote.get_chunks(vec![id]).await.unwrap(),
        vec![(id, chunk)]
    );
    assert!(remote.last_progress().is_some_and(|at| at >= asked));
}

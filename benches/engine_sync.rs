//! The sync engine's targets of issue 4, measured against a real release `bvfs serve` on loopback, each
//! beside a baseline from the same run:
//!
//! 1. bytes on the wire for a 1 MiB edit (random bytes) in the middle of a 1 GiB file. Every byte the
//!    engine's connection carries is counted by a TCP proxy between it and the server, so metadata
//!    (`FindMissingChunks`, the commit's manifest, the pull that follows) counts too, not only chunk
//!    payload. Baselines: the edit itself and the whole file.
//! 2. first sync of an N-node namespace (metadata only) on a fresh device, a restart with the warm DB
//!    (engine open + one idle round), and the client's RSS. The client runs in a child process (this
//!    executable again), so neither the server nor the process that populated the namespace is counted.
//!    Baseline: listing the same nodes with raw `Snapshot` pages, at the engine's page size.
//! 3. propagation latency: device A commits (a raw client) → device B, running `SyncLoop`, shows the
//!    node in LOCAL (`Engine::lookup`, polled every 1 ms). Baselines: A's commit round trip, and the
//!    time until a raw `Subscribe` stream reports the new head (the push floor).
//!
//! Run: `cargo bench --bench engine_sync`. Environment:
//! - `BVFS_BENCH_NODES` (default 1,000,000): namespace size, a multiple of 1,000 (dirs of 999 files);
//! - `BVFS_BENCH_FILE_MIB` (default 1024): size of the large file;
//! - `BVFS_BENCH_SAMPLES` (default 100): latency samples per configuration;
//! - `BVFS_BENCH_PARTS` (default `wire,namespace,latency`): which parts to run;
//! - `TMPDIR`: where the server, the devices and the large file live.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bvfs_engine::chunking::ChunkId;
use bvfs_engine::model::NodeKind;
use bvfs_engine::remote::{
    GrpcRemote, HeadStream, Hello, Position, Remote, RemoteConfig, RemoteError, SyncApi,
};
use bvfs_engine::runtime::{LoopTiming, SyncLoop};
use bvfs_engine::state::ROOT_INO;
use bvfs_engine::{Engine, EngineConfig};
use bvfs_proto::v1;
use common::*;
use rand::{Rng, RngExt, SeedableRng};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::StreamExt;

const MIB: u64 = 1 << 20;
/// The server's limit of ops per commit.
const COMMIT_OPS: usize = 10_000;
/// Each directory of the namespace holds this many empty files: 1,000 nodes per directory.
const FILES_PER_DIR: usize = 999;
/// The engine's snapshot page size (`round.rs`), used by the raw-listing baseline too.
const SNAPSHOT_PAGE: u32 = 50_000;
const RESULT_PREFIX: &str = "BENCH-RESULT ";

fn env_usize(key: &str, default: usize) -> usize {
    match std::env::var(key) {
        Ok(v) => v
            .replace(['_', ','], "")
            .parse()
            .unwrap_or_else(|_| panic!("{key}={v:?} is not a number")),
        Err(_) => default,
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.3} MiB", bytes as f64 / MIB as f64)
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

/// `VmRSS` and `VmHWM` of this process, in bytes.
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn dir_size(path: &Path) -> u64 {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

// ----- counting: payload per call, and every byte of the TCP connection -----

/// Passes every call to the real server and counts what the engine asked for and sent.
struct CountingRemote {
    inner: GrpcRemote,
    chunk_bytes_up: AtomicU64,
    chunk_bytes_down: AtomicU64,
    find_missing_ids: AtomicU64,
    commit_manifest_refs: AtomicU64,
}

impl CountingRemote {
    fn new(url: &str, token: &str) -> Arc<Self> {
        Arc::new(Self {
            inner: GrpcRemote::new(&RemoteConfig::new(url, token)).unwrap(),
            chunk_bytes_up: AtomicU64::new(0),
            chunk_bytes_down: AtomicU64::new(0),
            find_missing_ids: AtomicU64::new(0),
            commit_manifest_refs: AtomicU64::new(0),
        })
    }

    fn reset(&self) {
        for counter in [
            &self.chunk_bytes_up,
            &self.chunk_bytes_down,
            &self.find_missing_ids,
            &self.commit_manifest_refs,
        ] {
            counter.store(0, Ordering::Relaxed);
        }
    }
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
        let refs: usize = ops
            .iter()
            .filter_map(|op| match &op.op {
                Some(v1::op::Op::Create(c)) => c.attrs.as_ref(),
                Some(v1::op::Op::Update(u)) => u.attrs.as_ref(),
                _ => None,
            })
            .filter_map(|a| a.content.as_ref())
            .map(|c| c.chunks.len())
            .sum();
        self.commit_manifest_refs
            .fetch_add(refs as u64, Ordering::Relaxed);
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
        self.find_missing_ids
            .fetch_add(ids.len() as u64, Ordering::Relaxed);
        self.inner.find_missing(ids).await
    }
    async fn put_chunks(&self, chunks: Vec<(ChunkId, Vec<u8>)>) -> Result<(), RemoteError> {
        let bytes: usize = chunks.iter().map(|(_, d)| d.len()).sum();
        self.chunk_bytes_up
            .fetch_add(bytes as u64, Ordering::Relaxed);
        self.inner.put_chunks(chunks).await
    }
    async fn get_chunks(&self, ids: Vec<ChunkId>) -> Result<Vec<(ChunkId, Vec<u8>)>, RemoteError> {
        let chunks = self.inner.get_chunks(ids).await?;
        let bytes: usize = chunks.iter().map(|(_, d)| d.len()).sum();
        self.chunk_bytes_down
            .fetch_add(bytes as u64, Ordering::Relaxed);
        Ok(chunks)
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

/// A loopback TCP proxy in front of the server that counts every byte in each direction.
struct WireCounter {
    url: String,
    up: Arc<AtomicU64>,
    down: Arc<AtomicU64>,
}

impl WireCounter {
    async fn start(server_url: &str) -> Self {
        let upstream = server_url.trim_start_matches("http://").to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (up, down) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (up2, down2) = (up.clone(), down.clone());
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let server = tokio::net::TcpStream::connect(&upstream).await.unwrap();
                client.set_nodelay(true).unwrap();
                server.set_nodelay(true).unwrap();
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(pump(client_read, server_write, up2.clone()));
                tokio::spawn(pump(server_read, client_write, down2.clone()));
            }
        });
        Self { url, up, down }
    }

    fn take(&self) -> (u64, u64) {
        (
            self.up.swap(0, Ordering::Relaxed),
            self.down.swap(0, Ordering::Relaxed),
        )
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    count: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => {
                count.fetch_add(n as u64, Ordering::Relaxed);
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

// ----- 1. bytes on the wire for a 1 MiB edit in a 1 GiB file -----

async fn wire_bench(server_url: &str, token: &str, work: &Path, file_mib: u64) {
    let size = file_mib * MIB;
    println!(
        "\n## 1. bytes on the wire: 1 MiB of random bytes written in the middle of a {file_mib} MiB file"
    );
    let proxy = WireCounter::start(server_url).await;
    let remote = CountingRemote::new(&proxy.url, token);
    let engine = Engine::open(
        EngineConfig::new(work.join("wire-device"), "laptop"),
        remote.clone(),
    )
    .unwrap();
    let file = engine
        .create(ROOT_INO, "disk.img", NodeKind::File, false, None)
        .unwrap();

    let path = engine.open_write(file.ino, true).await.unwrap().path;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    {
        let mut out = std::fs::File::create(&path).unwrap();
        let mut piece = vec![0u8; 8 * MIB as usize];
        let mut left = size;
        while left > 0 {
            let n = left.min(piece.len() as u64) as usize;
            rng.fill_bytes(&mut piece[..n]);
            out.write_all(&piece[..n]).unwrap();
            left -= n as u64;
        }
    }
    let start = Instant::now();
    engine.close_write(file.ino, true, None).unwrap();
    let chunked = start.elapsed();
    engine.sync_until_idle(10).await.unwrap();
    let first_time = start.elapsed();
    let (first_up, first_down) = proxy.take();
    let first_chunks = remote.chunk_bytes_up.load(Ordering::Relaxed);
    let manifest_len = engine
        .manifest(&engine.getattr(file.ino).unwrap().unwrap())
        .unwrap()
        .chunks
        .len();
    remote.reset();

    // The edit: 1 MiB of random bytes at the middle, through the materialized copy as the mount writes.
    let path = engine.open_write(file.ino, false).await.unwrap().path;
    {
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.seek(SeekFrom::Start(size / 2)).unwrap();
        let mut edit = vec![0u8; MIB as usize];
        rand::rng().fill(&mut edit[..]);
        f.write_all(&edit).unwrap();
        f.sync_all().unwrap();
    }
    // Counting starts here: whatever crossed before (keepalives) is not the edit's.
    proxy.take();
    let start = Instant::now();
    engine.close_write(file.ino, true, None).unwrap();
    let rechunk = start.elapsed();
    engine.sync_until_idle(10).await.unwrap();
    let edit_time = start.elapsed();
    let (up, down) = proxy.take();
    let chunks_up = remote.chunk_bytes_up.load(Ordering::Relaxed);
    let ids = remote.find_missing_ids.load(Ordering::Relaxed);
    let refs = remote.commit_manifest_refs.load(Ordering::Relaxed);
    let status = engine.status().unwrap();
    assert_eq!(status.pending_changes, 0, "the edit is synced");

    println!(
        "first upload of the whole file: {} up, {} down ({manifest_len} chunks; chunked in {}, synced in {})",
        mib(first_up),
        mib(first_down),
        secs(chunked),
        secs(first_time)
    );
    println!(
        "  chunk payload {} (ratio to the file {:.4})",
        mib(first_chunks),
        first_chunks as f64 / size as f64
    );
    println!(
        "the 1 MiB edit ({} to re-chunk, {} until synced):",
        secs(rechunk),
        secs(edit_time)
    );
    println!("| what | bytes | vs the edit (1 MiB) | vs the whole file |");
    println!("| --- | --- | --- | --- |");
    let row = |what: &str, bytes: u64| {
        println!(
            "| {what} | {} | {:.2} | {:.5} |",
            mib(bytes),
            bytes as f64 / MIB as f64,
            bytes as f64 / size as f64
        )
    };
    row("baseline: the edit", MIB);
    row("baseline: the whole file", size);
    row("**engine → server, all TCP bytes**", up);
    row("  of which chunk payload (PutChunks data)", chunks_up);
    row(
        &format!("  of which FindMissingChunks ids ({ids} × 32 B)"),
        ids * 32,
    );
    row(
        &format!("  of which the commit's manifest ({refs} chunk refs × 36 B)"),
        refs * 36,
    );
    row("server → engine, all TCP bytes", down);
    let verdict = if up <= 3 * MIB / 2 { "MET" } else { "MISSED" };
    println!("target ≤ 1.5 MiB up for the edit: {verdict} ({})", mib(up));
    drop(engine);
    let _ = std::fs::remove_dir_all(work.join("wire-device"));
}

// ----- 2. first sync of a large namespace, restart, RSS -----

/// Creates `dirs` directories of [`FILES_PER_DIR`] empty files under the root, in commits of
/// [`COMMIT_OPS`] ops. Returns how many nodes were created.
async fn populate(api: &mut SyncApi, dirs: usize) -> usize {
    let dir_ids: Vec<Vec<u8>> = (0..dirs).map(|_| new_id()).collect();
    let mut ops: Vec<v1::Op> = dir_ids
        .iter()
        .enumerate()
        .map(|(i, id)| mkdir(id, &root(), &format!("d{i:05}")))
        .collect();
    for id in &dir_ids {
        for j in 0..FILES_PER_DIR {
            ops.push(create(
                &new_id(),
                id,
                &format!("f{j:03}.txt"),
                v1::NodeKind::File,
                file_attrs(b""),
            ));
        }
    }
    let total = ops.len();
    let mut rest = ops.into_iter().peekable();
    while rest.peek().is_some() {
        let batch: Vec<v1::Op> = rest.by_ref().take(COMMIT_OPS).collect();
        commit(api, batch).await.expect("populate commit");
    }
    total
}

/// Lists the whole namespace with raw `Snapshot` pages: the wire floor of a first sync.
async fn raw_snapshot(api: &mut SyncApi) -> (usize, Duration) {
    let start = Instant::now();
    let (mut at, mut after, mut count) = (0, Vec::new(), 0);
    loop {
        let page = api
            .snapshot(v1::SnapshotRequest {
                at_cursor: at,
                after_id: after,
                limit: SNAPSHOT_PAGE,
                ..Default::default()
            })
            .await
            .expect("snapshot page")
            .into_inner();
        at = page.at_cursor;
        count += page.nodes.len();
        if page.next_after_id.is_empty() {
            return (count, start.elapsed());
        }
        after = page.next_after_id;
    }
}

fn run_child(args: &[&str]) -> Value {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .arg("--child")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the client process");
    let mut result = None;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        match line.strip_prefix(RESULT_PREFIX) {
            Some(json) => result = Some(serde_json::from_str(json).unwrap()),
            None => println!("{line}"),
        }
    }
    assert!(
        child.wait().unwrap().success(),
        "the client process {args:?} failed"
    );
    result.expect("a result line from the client process")
}

async fn namespace_bench(
    server_url: &str,
    seeder: &str,
    fresh: &str,
    writer: &str,
    work: &Path,
    nodes: usize,
    samples: usize,
) {
    let dirs = nodes.div_ceil(FILES_PER_DIR + 1);
    println!(
        "\n## 2. first sync of a {}-node namespace (metadata only), restart, RSS",
        dirs * (FILES_PER_DIR + 1)
    );
    let mut api = client(server_url, seeder).await;
    let start = Instant::now();
    let created = populate(&mut api, dirs).await;
    let populate_time = start.elapsed();
    println!(
        "populated {created} nodes ({dirs} dirs × {FILES_PER_DIR} empty files) in {} ({:.0} creates/s)",
        secs(populate_time),
        created as f64 / populate_time.as_secs_f64()
    );
    let (listed, raw) = raw_snapshot(&mut api).await;
    assert_eq!(
        listed,
        created + 1,
        "the snapshot lists every node and the root"
    );

    let device = work.join("ns-device");
    let dir = device.to_str().unwrap();
    let first = run_child(&["first-sync", server_url, fresh, dir]);
    let restart = run_child(&[
        "restart",
        server_url,
        fresh,
        dir,
        writer,
        &samples.to_string(),
    ]);

    let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or_else(|| panic!("no {k} in {v}"));
    let first_total = f(&first, "total_s");
    let restart_total = f(&restart, "total_s");
    let peak = f(&first, "hwm_after") as u64;
    println!("| what | time | vs raw Snapshot listing |");
    println!("| --- | --- | --- |");
    println!(
        "| baseline: raw `Snapshot` pages of {SNAPSHOT_PAGE}, {listed} nodes | {} | 1.00 |",
        secs(raw)
    );
    println!(
        "| **first sync** (open + pull + plan + apply, {} LOCAL nodes) | {:.3} s | {:.1} |",
        f(&first, "local_nodes"),
        first_total,
        first_total / raw.as_secs_f64()
    );
    println!("|   of which open | {:.3} s | |", f(&first, "open_s"));
    println!(
        "|   of which pull (snapshot into REMOTE) | {:.3} s | {:.1} |",
        f(&first, "pull_s"),
        f(&first, "pull_s") / raw.as_secs_f64()
    );
    println!(
        "|   of which plan + apply (rounds until idle: {}) | {:.3} s | |",
        f(&first, "rounds"),
        f(&first, "plan_apply_s")
    );
    println!(
        "| **restart with the warm DB** (new process: open + one idle round) | {restart_total:.3} s | |"
    );
    println!("|   of which open | {:.3} s | |", f(&restart, "open_s"));
    println!(
        "|   of which the idle round | {:.3} s | |",
        f(&restart, "round_s")
    );
    println!(
        "| in-process reopen + idle round (after the first sync) | {:.3} s | |",
        f(&first, "reopen_s")
    );
    println!(
        "client RSS (its own process; the server and the populating client are other processes):"
    );
    println!("| when | VmRSS | VmHWM (peak) |");
    println!("| --- | --- | --- |");
    println!(
        "| baseline: the client process before opening the engine | {} | {} |",
        mib(f(&first, "rss_before") as u64),
        mib(f(&first, "hwm_before") as u64)
    );
    println!(
        "| after the first sync | {} | {} |",
        mib(f(&first, "rss_after") as u64),
        mib(peak)
    );
    println!(
        "| after a restart (open + idle round) | {} | {} |",
        mib(f(&restart, "rss_after_round") as u64),
        mib(f(&restart, "hwm_after_round") as u64)
    );
    println!(
        "| after the latency run on this namespace | {} | {} |",
        mib(f(&restart, "rss_after_latency") as u64),
        mib(f(&restart, "hwm_after_latency") as u64)
    );
    println!(
        "engine database on disk: {}",
        mib(f(&first, "db_bytes") as u64)
    );
    let verdict = |ok: bool| if ok { "MET" } else { "MISSED" };
    println!(
        "target first sync ≤ 30 s: {} ({first_total:.1} s)",
        verdict(first_total <= 30.0)
    );
    println!(
        "target restart ≤ 1 s: {} ({restart_total:.3} s)",
        verdict(restart_total <= 1.0)
    );
    println!(
        "target client RSS ≤ 300 MB: {} (peak {:.0} MB)",
        verdict(peak <= 300_000_000),
        peak as f64 / 1e6
    );
    print_latency(
        "propagation on this namespace (B restarted on the warm DB, default LoopTiming)",
        &restart["latency"],
    );
    let _ = std::fs::remove_dir_all(&device);
}

// ----- 3. propagation latency -----

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summary(samples_ms: &[f64]) -> Value {
    let mut s = samples_ms.to_vec();
    s.sort_by(f64::total_cmp);
    json!({"n": s.len(), "p50": percentile(&s, 50.0), "p90": percentile(&s, 90.0), "max": s[s.len() - 1], "min": s[0]})
}

fn print_latency(title: &str, value: &Value) {
    println!("{title}:");
    println!("| path | n | min | p50 | p90 | max |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for (key, label) in [
        ("commit_rtt", "baseline: A's Commit round trip"),
        (
            "push_floor",
            "baseline: A's commit start → raw Subscribe event",
        ),
        ("engine", "**A's commit start → B's LOCAL shows it**"),
    ] {
        if let Some(v) = value.get(key) {
            println!(
                "| {label} | {} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms |",
                v["n"],
                v["min"].as_f64().unwrap(),
                v["p50"].as_f64().unwrap(),
                v["p90"].as_f64().unwrap(),
                v["max"].as_f64().unwrap()
            );
        }
    }
    if let Some(p50) = value.pointer("/engine/p50").and_then(Value::as_f64) {
        println!(
            "target p50 ≤ 200 ms: {} ({p50:.1} ms)",
            if p50 <= 200.0 { "MET" } else { "MISSED" }
        );
    }
}

/// A pause of 5–25 ms between samples, so samples do not lock onto a periodic effect.
async fn gap() {
    let ms = rand::rng().random_range(5..25u64);
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// `samples` commits by A, each timed until B's LOCAL shows the new directory (polled every 1 ms),
/// with B running `SyncLoop` with `timing`. Also the baselines: A's commit round trip, and commit start
/// → a raw Subscribe event reporting the new head (run with no engine listening).
async fn latency(
    engine: &Arc<Engine>,
    a: &SyncApi,
    tag: &str,
    samples: usize,
    timing: LoopTiming,
    floors: bool,
) -> Value {
    let mut out = serde_json::Map::new();
    if floors {
        let mut rtt = Vec::new();
        let mut push = Vec::new();
        let hello = a
            .clone()
            .hello(v1::HelloRequest {})
            .await
            .unwrap()
            .into_inner();
        let mut stream = a
            .clone()
            .subscribe(v1::SubscribeRequest { cursor: hello.head })
            .await
            .unwrap()
            .into_inner();
        for i in 0..samples {
            gap().await;
            let start = Instant::now();
            let response = commit(
                &mut a.clone(),
                vec![mkdir(&new_id(), &root(), &format!("{tag}-floor-{i}"))],
            )
            .await
            .unwrap();
            rtt.push(start.elapsed().as_secs_f64() * 1e3);
            loop {
                let event = tokio::time::timeout(Duration::from_secs(10), stream.next())
                    .await
                    .expect("a Subscribe event within 10 s")
                    .expect("the stream is open")
                    .unwrap();
                if event.head >= response.cursor {
                    break;
                }
            }
            push.push(start.elapsed().as_secs_f64() * 1e3);
        }
        out.insert("commit_rtt".into(), summary(&rtt));
        out.insert("push_floor".into(), summary(&push));
    }
    engine.sync_until_idle(100).await.unwrap();
    let sync_loop = SyncLoop::start(engine.clone(), timing);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut arrivals = Vec::with_capacity(samples);
    for i in 0..samples {
        gap().await;
        let name = format!("{tag}-{i}");
        let mut api = a.clone();
        let op = mkdir(&new_id(), &root(), &name);
        let start = Instant::now();
        let committed = tokio::spawn(async move { commit(&mut api, vec![op]).await.unwrap() });
        loop {
            if engine.lookup(ROOT_INO, &name).unwrap().is_some() {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "B never showed {name}"
            );
            // A blocking sleep on this (non-worker) thread: the loop and the commit run on the workers.
            std::thread::sleep(Duration::from_millis(1));
        }
        arrivals.push(start.elapsed().as_secs_f64() * 1e3);
        committed.await.unwrap();
    }
    sync_loop.stop().await;
    out.insert("engine".into(), summary(&arrivals));
    Value::Object(out)
}

async fn latency_bench(
    server_url: &str,
    a_token: &str,
    b_token: &str,
    work: &Path,
    samples: usize,
) {
    println!("\n## 3. propagation latency, device A commit → device B LOCAL (small namespace)");
    let a = client(server_url, a_token).await;
    let remote = Arc::new(GrpcRemote::new(&RemoteConfig::new(server_url, b_token)).unwrap());
    let engine = Engine::open(
        EngineConfig::new(work.join("lat-device"), "desktop"),
        remote,
    )
    .unwrap();
    let default = latency(&engine, &a, "default", samples, LoopTiming::default(), true).await;
    print_latency(
        "B with LoopTiming::default() (pushes coalesced for 5 ms; local changes debounced 200 ms)",
        &default,
    );
    let no_coalescing = LoopTiming {
        push_coalesce: Duration::ZERO,
        ..LoopTiming::default()
    };
    let diag = latency(&engine, &a, "nocoalesce", samples, no_coalescing, false).await;
    print_latency("diagnostic: the same with pushes not coalesced", &diag);
    drop(engine);
    let _ = std::fs::remove_dir_all(work.join("lat-device"));
}

// ----- the client process of part 2 -----

fn child(args: &[String]) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (rss_before, hwm_before) = rss();
    let result = runtime.block_on(async {
        match args {
            [what, url, token, dir] if what == "first-sync" => {
                let dir = PathBuf::from(dir);
                let start = Instant::now();
                let remote = Arc::new(GrpcRemote::new(&RemoteConfig::new(url.as_str(), token.as_str())).unwrap());
                let engine = Engine::open(EngineConfig::new(&dir, "fresh"), remote.clone()).unwrap();
                let open = start.elapsed();
                let pulled = engine.pull().await.unwrap();
                let pull = start.elapsed() - open;
                let rounds = engine.sync_until_idle(100).await.unwrap();
                let total = start.elapsed();
                let (rss_after, hwm_after) = rss();
                let status = engine.status().unwrap();
                assert_eq!(status.pending_changes, 0);
                drop(engine);
                let db_bytes = dir_size(&dir);
                let start = Instant::now();
                let engine = Engine::open(EngineConfig::new(&dir, "fresh"), remote).unwrap();
                let report = engine.sync_round().await.unwrap();
                let reopen = start.elapsed();
                assert!(report.idle(), "a warm restart has nothing to do: {report:?}");
                json!({
                    "open_s": open.as_secs_f64(), "pull_s": pull.as_secs_f64(), "pulled": pulled,
                    "plan_apply_s": (total - open - pull).as_secs_f64(), "rounds": rounds,
                    "total_s": total.as_secs_f64(), "local_nodes": status.local_nodes,
                    "rss_before": rss_before, "hwm_before": hwm_before, "rss_after": rss_after, "hwm_after": hwm_after,
                    "db_bytes": db_bytes, "reopen_s": reopen.as_secs_f64(),
                })
            }
            [what, url, token, dir, writer, samples] if what == "restart" => {
                let dir = PathBuf::from(dir);
                let start = Instant::now();
                let remote = Arc::new(GrpcRemote::new(&RemoteConfig::new(url.as_str(), token.as_str())).unwrap());
                let engine = Engine::open(EngineConfig::new(&dir, "fresh"), remote).unwrap();
                let open = start.elapsed();
                let report = engine.sync_round().await.unwrap();
                let total = start.elapsed();
                assert!(report.idle(), "a warm restart has nothing to do: {report:?}");
                let (rss_after_round, hwm_after_round) = rss();
                let a = client(url, writer).await;
                let latency = latency(&engine, &a, "big", samples.parse().unwrap(), LoopTiming::default(), false).await;
                let (rss_after_latency, hwm_after_latency) = rss();
                json!({
                    "open_s": open.as_secs_f64(), "round_s": (total - open).as_secs_f64(), "total_s": total.as_secs_f64(),
                    "rss_after_round": rss_after_round, "hwm_after_round": hwm_after_round,
                    "rss_after_latency": rss_after_latency, "hwm_after_latency": hwm_after_latency,
                    "latency": latency,
                })
            }
            // Not used by the benchmark itself: fills a server for profiling the client by hand.
            [what, url, token, dirs] if what == "populate" => {
                let mut api = client(url, token).await;
                json!({ "created": populate(&mut api, dirs.parse().unwrap()).await })
            }
            other => panic!("unknown child command {other:?}"),
        }
    });
    println!("{RESULT_PREFIX}{result}");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        println!("engine_sync: benchmark");
        return;
    }
    if let Some(at) = args.iter().position(|a| a == "--child") {
        return child(&args[at + 1..]);
    }
    let nodes = env_usize("BVFS_BENCH_NODES", 1_000_000);
    let file_mib = env_usize("BVFS_BENCH_FILE_MIB", 1024) as u64;
    let samples = env_usize("BVFS_BENCH_SAMPLES", 100);
    let parts =
        std::env::var("BVFS_BENCH_PARTS").unwrap_or_else(|_| "wire,namespace,latency".into());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("server");
    let tokens: Vec<String> = [
        ("wire", "laptop"),
        ("ns", "seeder"),
        ("ns", "fresh"),
        ("ns", "writer"),
        ("lat", "laptop"),
        ("lat", "desktop"),
    ]
    .iter()
    .map(|(user, device)| add_user(&data, user, device))
    .collect();
    let server = ServerProcess::start(&data, &[]);
    println!(
        "# bvfs engine benchmarks: release `bvfs serve` at {} (data in {}), nodes={nodes}, file={file_mib} MiB, samples={samples}",
        server.url,
        work.path().display()
    );
    runtime.block_on(async {
        if parts.contains("wire") {
            wire_bench(&server.url, &tokens[0], work.path(), file_mib).await;
        }
        if parts.contains("namespace") {
            namespace_bench(
                &server.url,
                &tokens[1],
                &tokens[2],
                &tokens[3],
                work.path(),
                nodes,
                samples,
            )
            .await;
        }
        if parts.contains("latency") {
            latency_bench(&server.url, &tokens[4], &tokens[5], work.path(), samples).await;
        }
    });
    drop(server);
}

//! Presigned chunk transfer (ADR-0011, `bvfs serve --presigned-transfer`) against real `bvfs serve`
//! processes on S3 (moto) and real devices (`bvfs-engine`):
//!
//! - a device syncs a file through a presigned server and another device reads it back byte-exact,
//!   and the chunk bytes never crossed gRPC (`PutChunks`/`GetChunks` counted nothing);
//! - bytes that do not hash to the chunk id (or are too many), PUT through a presigned URL, are
//!   refused at confirmation (`invalid-chunk`), discarded, and no commit may name the chunk;
//! - URLs and pending uploads are scoped to the tenant: another tenant can neither read a chunk
//!   through its own URLs nor confirm someone else's upload;
//! - confirming an upload that is not there (never uploaded, collected by `bvfs admin gc` after
//!   its grace period) is refused with `not-found`;
//! - the flag is refused without an S3 chunk store; a server without it says so in `Hello` and
//!   refuses the calls; a device whose presigned requests fail at the HTTP level syncs through
//!   the gRPC streams instead;
//! - the device checks what it downloads: bytes altered in the store are never returned;
//! - two scale-out servers (PostgreSQL, S3, NATS): uploaded through one, read through the other.
//!
//! moto 5 authenticates only header-signed requests: with its IAM checks on, it answers any
//! presigned (query-signed) request 500 (`KeyError: 'HTTP_AUTHORIZATION'`). The tests that move
//! bytes through presigned URLs therefore turn its signature checks off
//! ([`Moto::stop_checking_signatures`]), and the last test uses exactly that refusal as an object
//! store failing the presigned path. Scoping does not rest on the store checking signatures: every
//! key is made by the server from the authenticated tenant.

mod common;

use std::sync::Arc;

use bvfs_engine::model::NodeKind;
use bvfs_engine::presigned::{HttpError, HttpTransfer};
use bvfs_engine::remote::{GrpcRemote, RemoteConfig, SyncApi};
use bvfs_engine::state::ROOT_INO;
use bvfs_engine::{Engine, EngineConfig};
use bvfs_proto::v1;
use common::scrape::{sample, scrape};
use common::services::{Moto, free_port};
use common::*;

const CHUNKS: &str = "s3://bvfs/team";

/// A server on embedded metadata and moto's S3, offering presigned transfer (or not).
struct PresignedServer {
    server: ServerProcess,
    metrics: String,
    dir: tempfile::TempDir,
    s3: Moto,
}

impl PresignedServer {
    fn start(presigned: bool, check_signatures: bool) -> Self {
        let s3 = Moto::start();
        if !check_signatures {
            s3.stop_checking_signatures();
        }
        let dir = tempfile::tempdir().unwrap();
        let metrics = format!("127.0.0.1:{}", free_port());
        let mut backends = vec!["--chunks".to_string(), CHUNKS.to_string()];
        if presigned {
            backends.push("--presigned-transfer".into());
        }
        let server = ServerProcess::start_with(
            &dir.path().join("server"),
            &["--metrics", &metrics],
            &backends,
            &s3.env(),
        );
        Self {
            server,
            metrics,
            dir,
            s3,
        }
    }

    fn add_user(&self, user: &str, device: &str) -> String {
        add_user(&self.dir.path().join("server"), user, device)
    }

    /// `bvfs admin gc --json` on this server's backends with `--grace grace`: its report.
    fn gc(&self, grace: &str) -> serde_json::Value {
        let data = self.dir.path().join("server");
        let args = [
            "--chunks".to_string(),
            CHUNKS.to_string(),
            "--data".to_string(),
            data.display().to_string(),
        ];
        common::gc_race::run_gc_report(&args, &self.s3.env(), grace)
    }

    fn counter(&self, name: &str) -> f64 {
        sample(&scrape(&self.metrics), name)
    }

    fn device(&self, name: &str, token: &str) -> (Arc<Engine>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let remote =
            Arc::new(GrpcRemote::new(&RemoteConfig::new(&self.server.url, token)).unwrap());
        let engine = Engine::open(EngineConfig::new(dir.path().join(name), name), remote).unwrap();
        (engine, dir)
    }
}

/// Random-looking bytes (so chunks do not repeat).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

async fn write_file(engine: &Engine, name: &str, data: &[u8]) {
    let file = engine
        .create(ROOT_INO, name, NodeKind::File, false, None)
        .unwrap();
    let path = engine.open_write(file.ino, true).await.unwrap().path;
    std::fs::write(path, data).unwrap();
    engine.close_write(file.ino, true, None).unwrap();
}

async fn read_file(engine: &Engine, name: &str) -> Vec<u8> {
    let entry = engine
        .lookup(ROOT_INO, name)
        .unwrap()
        .unwrap_or_else(|| panic!("{name} did not reach the device"));
    engine
        .read(&entry, 0, entry.node.attrs.size as u32)
        .await
        .unwrap()
}

async fn presign_upload(api: &mut SyncApi, id: &[u8], length: u32) -> v1::PresignedUpload {
    let mut answer = api
        .presign_uploads(v1::PresignUploadsRequest {
            chunks: vec![v1::ChunkRef {
                id: id.to_vec(),
                length,
            }],
        })
        .await
        .expect("presign an upload")
        .into_inner();
    assert_eq!(answer.expires_in_seconds, 900);
    answer.uploads.pop().unwrap()
}

async fn confirm(
    api: &mut SyncApi,
    upload: &v1::PresignedUpload,
) -> Result<v1::ConfirmUploadsResponse, tonic::Status> {
    api.confirm_uploads(v1::ConfirmUploadsRequest {
        uploads: vec![v1::PendingUpload {
            id: upload.id.clone(),
            upload_ref: upload.upload_ref.clone(),
        }],
    })
    .await
    .map(|r| r.into_inner())
}

async fn presign_download(api: &mut SyncApi, id: &[u8]) -> String {
    api.presign_downloads(v1::PresignDownloadsRequest {
        ids: vec![id.to_vec()],
    })
    .await
    .expect("presign a download")
    .into_inner()
    .downloads
    .pop()
    .unwrap()
    .url
}

async fn missing(api: &mut SyncApi, id: &[u8]) -> bool {
    !api.find_missing_chunks(v1::FindMissingChunksRequest {
        ids: vec![id.to_vec()],
    })
    .await
    .unwrap()
    .into_inner()
    .missing
    .is_empty()
}

/// The object key of a presigned URL (its path, without the query that signs it).
fn key_of(url: &str) -> &str {
    let path = url.split_once("://").unwrap().1;
    let path = &path[path.find('/').unwrap()..];
    path.split_once('?').map_or(path, |(p, _)| p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_syncs_through_the_object_store_without_crossing_grpc() {
    let s = PresignedServer::start(true, false);
    let token_a = s.add_user("alice", "laptop");
    let token_b = add_user(&s.dir.path().join("server"), "alice", "desktop");
    let (laptop, _a) = s.device("laptop", &token_a);
    let (desktop, _b) = s.device("desktop", &token_b);

    // ~40 chunks of 16-256 KiB.
    let data = noise(3 * 1024 * 1024 + 12_345, 7);
    write_file(&laptop, "big.bin", &data).await;
    laptop.sync_until_idle(10).await.unwrap();
    desktop.sync_until_idle(10).await.unwrap();
    assert!(read_file(&desktop, "big.bin").await == data, "byte-exact");

    // Every byte went to S3 and back directly: the server verified them, never relayed them.
    assert_eq!(s.counter("bvfs_chunk_bytes_received_total"), 0.0);
    assert_eq!(s.counter("bvfs_chunk_bytes_sent_total"), 0.0);
    assert_eq!(
        s.counter("bvfs_chunk_bytes_confirmed_total"),
        data.len() as f64
    );
    assert!(s.counter("bvfs_presigned_urls_total{method=\"PUT\"}") >= 12.0);
    assert!(s.counter("bvfs_presigned_urls_total{method=\"GET\"}") >= 12.0);

    // Confirmed uploads left no pending objects behind.
    let report = s.gc("0s");
    assert_eq!(report["pending_uploads_deleted"], 0, "{report}");
    assert_eq!(report["chunks_deleted"], 0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_that_do_not_hash_to_the_id_are_refused_and_cannot_be_committed() {
    let s = PresignedServer::start(true, false);
    let token = s.add_user("mallory", "laptop");
    let mut api = client(&s.server.url, &token).await;
    let http = HttpTransfer::new().unwrap();

    let good = noise(40_000, 1);
    let id = blake3::hash(&good).as_bytes().to_vec();
    let upload = presign_upload(&mut api, &id, good.len() as u32).await;
    let mut forged = good.clone();
    forged[123] ^= 1;
    http.put(&upload.url, forged).await.unwrap();
    let refused = confirm(&mut api, &upload).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::DataLoss, "{refused:?}");
    assert_eq!(reason(&refused), "invalid-chunk");
    assert!(refused.message().contains(&hex::encode(&id)), "{refused:?}");
    assert_eq!(
        s.counter("bvfs_chunk_uploads_refused_total{reason=\"hash-mismatch\"}"),
        1.0
    );

    // Not stored: still missing, and a commit naming it is refused.
    assert!(missing(&mut api, &id).await);
    let mut attrs = file_attrs(&good);
    attrs.content.as_mut().unwrap().chunks[0].id = id.clone();
    let denied = commit(
        &mut api,
        vec![create(
            &new_id(),
            &root(),
            "f",
            v1::NodeKind::File,
            attrs.clone(),
        )],
    )
    .await
    .unwrap_err();
    assert_eq!(reason(&denied), "missing-chunks");
    // The bad upload was discarded: confirming it again finds nothing.
    assert_eq!(
        reason(&confirm(&mut api, &upload).await.unwrap_err()),
        "not-found"
    );

    // Too many bytes for a chunk (whatever the length asked for) are refused unread.
    let upload = presign_upload(&mut api, &id, good.len() as u32).await;
    http.put(&upload.url, vec![0; bvfs_proto::MAX_CHUNK_BYTES + 1])
        .await
        .unwrap();
    assert_eq!(
        reason(&confirm(&mut api, &upload).await.unwrap_err()),
        "invalid-chunk"
    );
    assert!(missing(&mut api, &id).await);

    // The right bytes are stored, once; a second upload of them is "already present".
    let upload = presign_upload(&mut api, &id, good.len() as u32).await;
    http.put(&upload.url, good.clone()).await.unwrap();
    let stored = confirm(&mut api, &upload).await.unwrap();
    assert_eq!((stored.stored, stored.already_present), (1, 0));
    let again = presign_upload(&mut api, &id, good.len() as u32).await;
    http.put(&again.url, good.clone()).await.unwrap();
    let again = confirm(&mut api, &again).await.unwrap();
    assert_eq!((again.stored, again.already_present), (0, 1));
    assert!(!missing(&mut api, &id).await);
    commit(
        &mut api,
        vec![create(&new_id(), &root(), "f", v1::NodeKind::File, attrs)],
    )
    .await
    .unwrap();
    let url = presign_download(&mut api, &id).await;
    assert!(http.get(&url).await.unwrap() == good);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn urls_and_pending_uploads_are_scoped_to_the_tenant() {
    let s = PresignedServer::start(true, false);
    let mut alice = client(&s.server.url, &s.add_user("alice", "laptop")).await;
    let mut bob = client(&s.server.url, &s.add_user("bob", "laptop")).await;
    let http = HttpTransfer::new().unwrap();

    let data = noise(10_000, 3);
    let id = blake3::hash(&data).as_bytes().to_vec();
    let upload = presign_upload(&mut alice, &id, data.len() as u32).await;
    // Uploads go to a pending key, never to a chunk's.
    let pending = key_of(&upload.url);
    assert!(pending.contains("/team/pending/"), "{pending}");
    assert!(!pending.contains("/chunks/"), "{pending}");
    assert!(pending.contains(&hex::encode(&id)), "{pending}");
    http.put(&upload.url, data.clone()).await.unwrap();

    // Bob cannot confirm Alice's upload (his confirm looks in his own pending space)...
    assert_eq!(
        reason(&confirm(&mut bob, &upload).await.unwrap_err()),
        "not-found"
    );
    assert!(missing(&mut bob, &id).await);
    // ...and it is still Alice's to confirm.
    confirm(&mut alice, &upload).await.unwrap();

    // Bob's URL for the same id names his own key, where nothing is.
    let alices = presign_download(&mut alice, &id).await;
    let bobs = presign_download(&mut bob, &id).await;
    assert_ne!(key_of(&alices), key_of(&bobs));
    assert!(key_of(&alices).contains("/team/chunks/"), "{alices}");
    assert!(http.get(&alices).await.unwrap() == data);
    assert_eq!(http.get(&bobs).await.unwrap_err(), HttpError::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_collected_uploads_are_refused_at_confirmation() {
    let s = PresignedServer::start(true, false);
    let mut api = client(&s.server.url, &s.add_user("alice", "laptop")).await;
    let http = HttpTransfer::new().unwrap();
    let data = noise(5_000, 5);
    let id = blake3::hash(&data).as_bytes().to_vec();

    // Never uploaded.
    let upload = presign_upload(&mut api, &id, data.len() as u32).await;
    assert_eq!(
        reason(&confirm(&mut api, &upload).await.unwrap_err()),
        "not-found"
    );
    // A ref the server never drew.
    let forged = v1::PresignedUpload {
        upload_ref: vec![9; 16],
        ..upload.clone()
    };
    assert_eq!(
        reason(&confirm(&mut api, &forged).await.unwrap_err()),
        "not-found"
    );
    // Malformed refs and oversized requests are refused before the store is asked.
    let short = v1::PresignedUpload {
        upload_ref: vec![9; 3],
        ..upload.clone()
    };
    assert_eq!(
        reason(&confirm(&mut api, &short).await.unwrap_err()),
        "malformed"
    );
    let too_many = api
        .presign_downloads(v1::PresignDownloadsRequest {
            ids: vec![id.clone(); bvfs_proto::MAX_PRESIGN_CHUNKS + 1],
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&too_many), "too-large");

    // Uploaded, never confirmed, and collected after its grace period by `bvfs admin gc`.
    http.put(&upload.url, data.clone()).await.unwrap();
    assert_eq!(
        s.gc("1h")["pending_uploads_deleted"],
        0,
        "within the grace period"
    );
    let report = s.gc("0s");
    assert_eq!(report["pending_uploads_deleted"], 1, "{report}");
    assert_eq!(report["pending_bytes_freed"], data.len(), "{report}");
    assert_eq!(
        reason(&confirm(&mut api, &upload).await.unwrap_err()),
        "not-found"
    );
    assert!(missing(&mut api, &id).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_option_needs_s3_and_a_server_without_it_refuses_the_calls() {
    let dir = tempfile::tempdir().unwrap();
    let out = bvfs()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--presigned-transfer",
            "--data",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs --chunks s3://"), "{err}");
    assert!(
        !dir.path().join("meta.sqlite").exists(),
        "refused before opening anything"
    );
    // The same from the configuration file.
    let config = dir.path().join("server.toml");
    std::fs::write(&config, "presigned_transfer = true\n").unwrap();
    let out = bvfs()
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path())
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs --chunks s3://"), "{err}");

    let plain = ServerProcess::start(&dir.path().join("plain"), &[]);
    let mut api = client(&plain.url, &add_user(&dir.path().join("plain"), "a", "d")).await;
    let hello = api.hello(v1::HelloRequest {}).await.unwrap().into_inner();
    assert!(!hello.presigned_transfer);
    let refused = api
        .presign_downloads(v1::PresignDownloadsRequest { ids: vec![] })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert_eq!(reason(&refused), "presign-unavailable");
}

/// moto with its IAM checks on answers every presigned request 500: the device falls back to the
/// gRPC streams, syncs all the same, and the server relayed the bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_falls_back_to_grpc_when_the_store_refuses_presigned_requests() {
    let s = PresignedServer::start(true, true);
    let token_a = s.add_user("alice", "laptop");
    let token_b = add_user(&s.dir.path().join("server"), "alice", "desktop");
    let (laptop, _a) = s.device("laptop", &token_a);
    let (desktop, _b) = s.device("desktop", &token_b);
    let mut api = client(&s.server.url, &token_a).await;
    assert!(
        api.hello(v1::HelloRequest {})
            .await
            .unwrap()
            .into_inner()
            .presigned_transfer
    );

    let data = noise(600_000, 11);
    write_file(&laptop, "f.bin", &data).await;
    laptop.sync_until_idle(10).await.unwrap();
    desktop.sync_until_idle(10).await.unwrap();
    assert!(read_file(&desktop, "f.bin").await == data, "byte-exact");
    assert!(s.counter("bvfs_presigned_urls_total{method=\"PUT\"}") >= 1.0);
    assert_eq!(
        s.counter("bvfs_chunk_bytes_received_total"),
        data.len() as f64
    );
    assert_eq!(s.counter("bvfs_chunk_bytes_sent_total"), data.len() as f64);
    assert_eq!(s.counter("bvfs_chunk_bytes_confirmed_total"), 0.0);
}

/// Presigned downloads tell the fetcher when bytes arrive, as gRPC ones do (a slow store is waited
/// for, not taken for an unreachable server).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presigned_downloads_report_progress_to_the_fetcher() {
    use bvfs_engine::chunking::ChunkId;
    use bvfs_engine::remote::Remote;
    let s = PresignedServer::start(true, false);
    let token = s.add_user("alice", "laptop");
    let remote = GrpcRemote::new(&RemoteConfig::new(&s.server.url, &token)).unwrap();
    let chunk = noise(100_000, 3);
    let id = ChunkId::of(&chunk);
    remote.put_chunks(vec![(id, chunk.clone())]).await.unwrap();
    assert!(remote.last_progress().is_none());
    let asked = std::time::Instant::now();
    assert!(remote.get_chunks(vec![id]).await.unwrap() == vec![(id, chunk)]);
    assert!(remote.last_progress().is_some_and(|at| at >= asked));
    assert_eq!(
        s.counter("bvfs_chunk_bytes_sent_total"),
        0.0,
        "the bytes came from the store"
    );
}

/// The device checks what it downloads through a presigned URL, as it does over gRPC: bytes
/// altered in the store (here written over the chunk's object directly) are never returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_altered_in_the_store_is_refused_by_the_reading_device() {
    let s = PresignedServer::start(true, false);
    let token_a = s.add_user("alice", "laptop");
    let token_b = add_user(&s.dir.path().join("server"), "alice", "desktop");
    let (laptop, _a) = s.device("laptop", &token_a);
    let (desktop, _b) = s.device("desktop", &token_b);
    let data = noise(9_000, 13);
    write_file(&laptop, "f.bin", &data).await;
    laptop.sync_until_idle(10).await.unwrap();
    desktop.sync_until_idle(10).await.unwrap();

    // Overwrite the chunk's object, as someone with access to the bucket could: moto's signature
    // checks are off, so the GET URL's credentials pass for a PUT (S3 itself would refuse it).
    let mut api = client(&s.server.url, &token_a).await;
    let id = blake3::hash(&data).as_bytes().to_vec();
    let url = presign_download(&mut api, &id).await;
    let mut altered = data.clone();
    altered[0] ^= 0xff;
    let http = HttpTransfer::new().unwrap();
    http.put(&url, altered.clone()).await.unwrap();
    assert!(
        http.get(&url).await.unwrap() == altered,
        "the store now serves other bytes"
    );

    let entry = desktop.lookup(ROOT_INO, "f.bin").unwrap().unwrap();
    let read = desktop.read(&entry, 0, data.len() as u32).await;
    assert!(read.is_err(), "altered bytes were returned");
    assert!(s.counter("bvfs_presigned_urls_total{method=\"GET\"}") >= 1.0);
}

/// Scale-out: two servers on PostgreSQL, S3 and NATS, both offering presigned transfer. A pending
/// upload is named by the store alone (no server remembers it), so a file uploaded through one
/// server is read through the other, and neither relays chunk bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_scale_out_servers_share_presigned_transfer() {
    let services = common::services::ScaleOut::start();
    services.s3.stop_checking_signatures();
    let dir = tempfile::tempdir().unwrap();
    let mut args = services.serve_args();
    args.push("--presigned-transfer".into());
    let metrics: Vec<String> = (0..2)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let servers: Vec<ServerProcess> = (0..2)
        .map(|i| {
            ServerProcess::start_with(
                &dir.path().join(format!("server{i}")),
                &["--metrics", &metrics[i]],
                &args,
                &services.s3.env(),
            )
        })
        .collect();
    let device = |i: usize, name: &str| {
        let token = add_user_with(dir.path(), &args, "alice", name);
        let state = tempfile::tempdir().unwrap();
        let remote =
            Arc::new(GrpcRemote::new(&RemoteConfig::new(&servers[i].url, &token)).unwrap());
        let engine =
            Engine::open(EngineConfig::new(state.path().join(name), name), remote).unwrap();
        (engine, state)
    };
    let (laptop, _a) = device(0, "laptop");
    let (desktop, _b) = device(1, "desktop");

    let data = noise(1024 * 1024 + 77, 17);
    write_file(&laptop, "shared.bin", &data).await;
    laptop.sync_until_idle(10).await.unwrap();
    desktop.sync_until_idle(10).await.unwrap();
    assert!(
        read_file(&desktop, "shared.bin").await == data,
        "byte-exact"
    );

    let scrapes: Vec<_> = metrics.iter().map(|m| scrape(m)).collect();
    for samples in &scrapes {
        assert_eq!(sample(samples, "bvfs_chunk_bytes_received_total"), 0.0);
        assert_eq!(sample(samples, "bvfs_chunk_bytes_sent_total"), 0.0);
    }
    assert_eq!(
        sample(&scrapes[0], "bvfs_chunk_bytes_confirmed_total"),
        data.len() as f64
    );
    assert!(sample(&scrapes[1], "bvfs_presigned_urls_total{method=\"GET\"}") >= 1.0);
}

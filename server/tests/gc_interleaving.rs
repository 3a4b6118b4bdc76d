//! The collector (`gc.rs`) against a commit at the exact moment that matters: after the commit
//! checked its chunks are stored and before its transaction. A chunk store wrapper runs the
//! interloper in `ChunkStore::sync`, which a commit calls right between the two.

use std::sync::Arc;
use std::time::Duration;

use bvfs_proto::v1::sync_server::Sync;
use bvfs_proto::v1::{self, NodeKind};
use bvfs_server::service::SyncService;
use bvfs_server::store::fs_chunks::FsChunkStore;
use bvfs_server::store::{ChunkKey, ChunkStore, MetaStore, StoreResult, StoredChunk, TenantId};

type Hook = Box<dyn FnOnce() + Send>;

/// A chunk store that runs a hook once, at the next `sync`.
struct Interposed {
    inner: Arc<FsChunkStore>,
    hook: parking_lot::Mutex<Option<Hook>>,
}

impl ChunkStore for Interposed {
    fn stored_len(&self, tenant: TenantId, id: &ChunkKey) -> StoreResult<Option<u64>> {
        self.inner.stored_len(tenant, id)
    }
    fn put(&self, tenant: TenantId, id: &ChunkKey, data: &[u8]) -> StoreResult<bool> {
        self.inner.put(tenant, id, data)
    }
    fn sync(&self) -> StoreResult<()> {
        if let Some(hook) = self.hook.lock().take() {
            hook();
        }
        self.inner.sync()
    }
    fn get(&self, tenant: TenantId, id: &ChunkKey) -> StoreResult<Option<Vec<u8>>> {
        self.inner.get(tenant, id)
    }
    fn list(&self, tenant: TenantId) -> StoreResult<Vec<StoredChunk>> {
        self.inner.list(tenant)
    }
    fn delete(&self, tenant: TenantId, id: &ChunkKey) -> StoreResult<bool> {
        self.inner.delete(tenant, id)
    }
}

struct Fixture {
    service: SyncService,
    meta: Arc<dyn MetaStore>,
    chunks: Arc<Interposed>,
    tenant: TenantId,
    token: String,
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = bvfs_server::DataDir::open(&dir.path().join("server")).unwrap();
        let device = bvfs_server::auth::add_device(data.meta.as_ref(), "alice", "laptop").unwrap();
        let meta: Arc<dyn MetaStore> = data.meta.clone();
        let chunks = Arc::new(Interposed {
            inner: data.chunks.clone(),
            hook: parking_lot::Mutex::new(None),
        });
        let service = SyncService::new(meta.clone(), chunks.clone(), Arc::default());
        Self {
            service,
            meta,
            chunks,
            tenant: device.tenant,
            token: device.token,
            _dir: dir,
        }
    }

    async fn commit(&self, ops: Vec<v1::Op>) -> Result<v1::CommitResponse, tonic::Status> {
        let mut request = tonic::Request::new(v1::CommitRequest {
            ops,
            ..Default::default()
        });
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", self.token).parse().unwrap(),
        );
        self.service
            .commit(request)
            .await
            .map(tonic::Response::into_inner)
    }

    /// Stores `data` as a chunk and returns a create op of a file holding it.
    fn upload_file(&self, name: &str, data: &[u8]) -> v1::Op {
        let id = blake3::hash(data);
        self.chunks.put(self.tenant, id.as_bytes(), data).unwrap();
        create(name, NodeKind::File, file_attrs(data))
    }
}

fn create(name: &str, kind: NodeKind, attrs: v1::NodeAttrs) -> v1::Op {
    v1::Op {
        op: Some(v1::op::Op::Create(v1::CreateOp {
            id: uuid::Uuid::new_v4().as_bytes().to_vec(),
            parent_id: vec![0; 16],
            name: name.to_string(),
            kind: kind as i32,
            attrs: Some(attrs),
        })),
    }
}

fn file_attrs(data: &[u8]) -> v1::NodeAttrs {
    v1::NodeAttrs {
        size: data.len() as u64,
        mtime_ns: 1,
        content: Some(v1::Content {
            hash: blake3::hash(data).as_bytes().to_vec(),
            chunks: vec![v1::ChunkRef {
                id: blake3::hash(data).as_bytes().to_vec(),
                length: data.len() as u32,
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn reason(status: &tonic::Status) -> &str {
    status
        .metadata()
        .get("bvfs-reason")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// A whole collection runs after the commit checked its chunk and before its transaction: the
/// chunk is deleted (nothing named it yet), and the commit sees the epoch moved and is refused
/// with `missing-chunks` instead of naming a chunk that is gone. Uploading again, it commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collection_between_check_and_transaction_refuses_the_commit() {
    let f = Fixture::new();
    // A first commit: the service remembers the (even) epoch, so only the move can force a
    // re-check.
    f.commit(vec![create(
        "d",
        NodeKind::Directory,
        v1::NodeAttrs::default(),
    )])
    .await
    .unwrap();

    let data = vec![7u8; 5000];
    let op = f.upload_file("f", &data);
    let (meta, inner, tenant) = (f.meta.clone(), f.chunks.inner.clone(), f.tenant);
    *f.chunks.hook.lock() = Some(Box::new(move || {
        let mut report = bvfs_server::gc::Report::default();
        let lock = meta.gc_lock().unwrap().expect("the collection lock");
        bvfs_server::gc::collect_tenant(
            meta.as_ref(),
            inner.as_ref(),
            lock.as_ref(),
            tenant,
            Duration::ZERO,
            &mut report,
        )
        .unwrap();
        assert_eq!(report.chunks_deleted, 1, "{report:?}");
    }));
    let refused = f.commit(vec![op.clone()]).await.unwrap_err();
    assert_eq!(reason(&refused), "missing-chunks", "{refused:?}");
    assert!(f.chunks.hook.lock().is_none(), "the collection ran");
    assert_eq!(f.meta.head(f.tenant).unwrap(), 1, "nothing was committed");

    f.upload_file("f", &data);
    f.commit(vec![op]).await.unwrap();
    let mut report = bvfs_server::gc::Report::default();
    let lock = f.meta.gc_lock().unwrap().expect("the collection lock");
    bvfs_server::gc::collect_tenant(
        f.meta.as_ref(),
        f.chunks.as_ref(),
        lock.as_ref(),
        f.tenant,
        Duration::ZERO,
        &mut report,
    )
    .unwrap();
    assert_eq!(report.chunks_deleted, 0, "the committed chunk is kept");
    assert_eq!(report.chunks_referenced, 1);
}

/// A collection that died while deleting leaves the epoch odd: every commit then re-checks its
/// chunks under the writer lock, so one whose chunk that collection deleted after the check is
/// refused. The next collection (one at a time) makes the epoch even again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_epoch_left_odd_makes_every_commit_recheck() {
    let f = Fixture::new();
    f.meta
        .write(f.tenant, &mut |txn| {
            txn.set_gc_epoch(1)
                .map_err(|e| tonic::Status::internal(e.to_string()))
        })
        .unwrap();
    f.commit(vec![create(
        "d",
        NodeKind::Directory,
        v1::NodeAttrs::default(),
    )])
    .await
    .unwrap();

    let data = vec![9u8; 3000];
    let op = f.upload_file("f", &data);
    let (inner, tenant, id) = (
        f.chunks.inner.clone(),
        f.tenant,
        *blake3::hash(&data).as_bytes(),
    );
    *f.chunks.hook.lock() = Some(Box::new(move || {
        assert!(inner.delete(tenant, &id).unwrap());
    }));
    let refused = f.commit(vec![op]).await.unwrap_err();
    assert_eq!(reason(&refused), "missing-chunks", "{refused:?}");

    let mut report = bvfs_server::gc::Report::default();
    let lock = f.meta.gc_lock().unwrap().expect("the collection lock");
    assert!(
        f.meta.gc_lock().unwrap().is_none(),
        "one collection at a time"
    );
    let refused = bvfs_server::gc::collect(
        f.meta.as_ref(),
        f.chunks.as_ref(),
        Duration::ZERO,
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(refused.contains("another `bvfs admin gc`"), "{refused}");
    // Nothing to delete: the odd epoch the dead collector left ends.
    bvfs_server::gc::collect_tenant(
        f.meta.as_ref(),
        f.chunks.as_ref(),
        lock.as_ref(),
        f.tenant,
        Duration::ZERO,
        &mut report,
    )
    .unwrap();
    let epoch = |meta: &Arc<dyn MetaStore>| {
        let mut epoch = 0;
        meta.write(tenant, &mut |txn| {
            epoch = txn.gc_epoch().unwrap();
            Ok(())
        })
        .unwrap();
        epoch
    };
    assert_eq!(epoch(&f.meta), 2);
    // A collection with something to delete goes odd (3), then even.
    f.upload_file("orphan", &[1u8; 100]);
    bvfs_server::gc::collect_tenant(
        f.meta.as_ref(),
        f.chunks.as_ref(),
        lock.as_ref(),
        f.tenant,
        Duration::ZERO,
        &mut report,
    )
    .unwrap();
    assert_eq!(report.chunks_deleted, 1);
    assert_eq!(epoch(&f.meta), 4);
}

impl Fixture {
    /// A request of this fixture's device.
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", self.token).parse().unwrap(),
        );
        request
    }

    /// Stores `data` as a chunk and returns an update of `id` at `base` to hold it.
    fn upload_update(&self, id: &[u8], base: u64, data: &[u8]) -> v1::Op {
        self.chunks
            .put(self.tenant, blake3::hash(data).as_bytes(), data)
            .unwrap();
        update(id, base, data)
    }

    /// Retention with window 0 as of a second from now (every entry so far is past it), then a
    /// whole collection with no grace period; returns the collection's report.
    fn compact_and_collect(
        meta: &dyn MetaStore,
        chunks: &dyn ChunkStore,
        tenant: TenantId,
    ) -> bvfs_server::gc::Report {
        let lock = meta.gc_lock().unwrap().expect("the collection lock");
        bvfs_server::retention::set_window(meta, tenant, Some(Duration::ZERO)).unwrap();
        let later = std::time::SystemTime::now() + Duration::from_secs(1);
        let done = bvfs_server::retention::compact_tenant(meta, tenant, later).unwrap();
        let mut report = bvfs_server::gc::Report {
            versions_dropped: done.dropped,
            ..Default::default()
        };
        bvfs_server::gc::collect_tenant(
            meta,
            chunks,
            lock.as_ref(),
            tenant,
            Duration::ZERO,
            &mut report,
        )
        .unwrap();
        report
    }
}

fn update(id: &[u8], base: u64, data: &[u8]) -> v1::Op {
    v1::Op {
        op: Some(v1::op::Op::Update(v1::UpdateOp {
            id: id.to_vec(),
            base_revision: base,
            attrs: Some(file_attrs(data)),
        })),
    }
}

fn op_id(op: &v1::Op) -> Vec<u8> {
    match &op.op {
        Some(v1::op::Op::Create(c)) => c.id.clone(),
        _ => panic!("not a create"),
    }
}

/// Retention drops the only version naming a chunk, and the collection deletes it, after a commit
/// checked that chunk (it brings back that content without uploading it) and before its
/// transaction: the commit is refused with `missing-chunks`, never acknowledged naming a chunk
/// that is gone. Uploaded again, it commits, and its chunk is kept by later collections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_between_check_and_transaction_refuses_the_commit() {
    let f = Fixture::new();
    let old = vec![3u8; 4000];
    let create = f.upload_file("f", &old);
    let id = op_id(&create);
    let v1 = f.commit(vec![create]).await.unwrap().cursor;
    let v2 = f
        .commit(vec![f.upload_update(&id, v1, &[4u8; 4000])])
        .await
        .unwrap()
        .cursor;

    let (meta, inner, tenant) = (f.meta.clone(), f.chunks.inner.clone(), f.tenant);
    *f.chunks.hook.lock() = Some(Box::new(move || {
        let report = Fixture::compact_and_collect(meta.as_ref(), inner.as_ref(), tenant);
        assert_eq!(report.versions_dropped, 1, "{report:?}");
        assert_eq!(report.chunks_deleted, 1, "{report:?}");
        assert_eq!(report.bytes_freed, 4000, "{report:?}");
    }));
    // Back to the old content, trusting the server still has its chunk.
    let refused = f.commit(vec![update(&id, v2, &old)]).await.unwrap_err();
    assert_eq!(reason(&refused), "missing-chunks", "{refused:?}");
    assert!(
        f.chunks.hook.lock().is_none(),
        "retention and the collection ran"
    );
    assert_eq!(f.meta.head(f.tenant).unwrap(), v2, "nothing was committed");

    let v3 = f
        .commit(vec![f.upload_update(&id, v2, &old)])
        .await
        .unwrap()
        .cursor;
    let report = Fixture::compact_and_collect(f.meta.as_ref(), f.chunks.as_ref(), f.tenant);
    assert_eq!(report.versions_dropped, 1, "v2 is superseded: {report:?}");
    assert_eq!(report.chunks_deleted, 1, "v2's chunk: {report:?}");
    let versions = f
        .meta
        .versions(f.tenant, &id.clone().try_into().unwrap())
        .unwrap();
    assert_eq!(versions.iter().map(|v| v.seq).collect::<Vec<_>>(), [v3]);
    let chunk = *blake3::hash(&old).as_bytes();
    assert_eq!(f.chunks.get(f.tenant, &chunk).unwrap(), Some(old));
}

/// `RestoreVersion` and `Undelete` read the version they copy before their transaction: if
/// retention drops it in between (and a collection may then delete its chunks), they are refused
/// with `expired` inside the transaction instead of naming chunks that may be gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restoring_a_version_dropped_meanwhile_is_refused() {
    let f = Fixture::new();
    let create = f.upload_file("f", &[5u8; 100]);
    let id = op_id(&create);
    let key: [u8; 16] = id.clone().try_into().unwrap();
    let v1 = f.commit(vec![create]).await.unwrap().cursor;
    let v2 = f
        .commit(vec![f.upload_update(&id, v1, &[6u8; 100])])
        .await
        .unwrap()
        .cursor;
    let gone = f.upload_file("g", &[7u8; 100]);
    let gone_id = op_id(&gone);
    let g1 = f.commit(vec![gone]).await.unwrap().cursor;
    let deleted = f
        .commit(vec![v1::Op {
            op: Some(v1::op::Op::Delete(v1::DeleteOp {
                id: gone_id.clone(),
                base_revision: g1,
            })),
        }])
        .await
        .unwrap()
        .cursor;
    // Read as the service does, before its transaction.
    let old_version = f.meta.entry(f.tenant, v1).unwrap().unwrap();
    let last_of_gone = f.meta.entry(f.tenant, deleted).unwrap().unwrap();

    let report = Fixture::compact_and_collect(f.meta.as_ref(), f.chunks.as_ref(), f.tenant);
    assert_eq!(report.versions_dropped, 3, "{report:?}");

    let mut refusals = Vec::new();
    let result = f.meta.write(f.tenant, &mut |txn| {
        bvfs_server::namespace::restore_version(txn, &old_version, v2, "laptop", 1).map(drop)
    });
    refusals.push(result.unwrap_err());
    let result = f.meta.write(f.tenant, &mut |txn| {
        bvfs_server::namespace::undelete(txn, &last_of_gone, None, None, "laptop", 1).map(drop)
    });
    refusals.push(result.unwrap_err());
    for refused in &refusals {
        assert_eq!(reason(refused), "expired", "{refused:?}");
    }
    // Through the service, the dropped version is refused the same way.
    let refused = f
        .service
        .restore_version(f.request(v1::RestoreVersionRequest {
            id: id.clone(),
            seq: v1,
            base_revision: v2,
        }))
        .await
        .unwrap_err();
    assert_eq!(reason(&refused), "expired", "{refused:?}");
    assert_eq!(
        f.meta.head(f.tenant).unwrap(),
        deleted,
        "nothing was committed"
    );
    assert_eq!(f.meta.versions(f.tenant, &key).unwrap().len(), 1);
}

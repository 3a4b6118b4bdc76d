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

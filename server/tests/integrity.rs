//! Server integrity (issue 15, items 3, 5, 6 and 7) against the real service on a loopback port,
//! with the real SQLite and file stores: chunks a commit names are durable before its transaction,
//! departed subscribers are noticed without a commit and subscriptions are capped per tenant, a
//! commit's cost is bounded (one update per node, a cap on its resolved chunk lists, bounded tree
//! walks), and one tenant's commits never wait for another's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bvfs_proto::v1::sync_client::SyncClient;
use bvfs_proto::v1::sync_server::SyncServer;
use bvfs_proto::v1::{self, NodeKind, op::Op as OpKind};
use bvfs_server::notify::{HeadNotifier, MAX_SUBSCRIPTIONS_PER_TENANT};
use bvfs_server::service::SyncService;
use bvfs_server::store::fs_chunks::FsChunkStore;
use bvfs_server::store::{
    ChunkStore, JournalEntry, MetaStore, NodeKey, Principal, StoreResult, TenantId, WriteFn,
};
use parking_lot::Mutex;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// The metadata store with a probe: before each write transaction, records the chunk store's
/// directories whose renames are not yet durable.
struct Probe {
    inner: Arc<dyn MetaStore>,
    chunks: Arc<FsChunkStore>,
    unsynced_at_write: Mutex<Vec<usize>>,
}

impl MetaStore for Probe {
    fn create_tenant(&self, name: &str) -> StoreResult<TenantId> {
        self.inner.create_tenant(name)
    }
    fn tenant_by_name(&self, name: &str) -> StoreResult<Option<TenantId>> {
        self.inner.tenant_by_name(name)
    }
    fn tenants(&self) -> StoreResult<Vec<(TenantId, String)>> {
        self.inner.tenants()
    }
    fn gc_lock(&self) -> StoreResult<Option<Box<dyn bvfs_server::store::GcLock>>> {
        self.inner.gc_lock()
    }
    fn add_token(&self, tenant: TenantId, hash: &[u8; 32], device: &str) -> StoreResult<()> {
        self.inner.add_token(tenant, hash, device)
    }
    fn principal(&self, hash: &[u8; 32]) -> StoreResult<Option<Principal>> {
        self.inner.principal(hash)
    }
    fn devices(&self, tenant: TenantId) -> StoreResult<Vec<bvfs_server::store::Device>> {
        self.inner.devices(tenant)
    }
    fn revoke(&self, tenant: TenantId, device: &str) -> StoreResult<usize> {
        self.inner.revoke(tenant, device)
    }
    fn head(&self, tenant: TenantId) -> StoreResult<u64> {
        self.inner.head(tenant)
    }
    fn namespace_id(&self, tenant: TenantId) -> StoreResult<[u8; 16]> {
        self.inner.namespace_id(tenant)
    }
    fn tag_at(&self, tenant: TenantId, seq: u64) -> StoreResult<Option<u64>> {
        self.inner.tag_at(tenant, seq)
    }
    fn changes_after(
        &self,
        tenant: TenantId,
        cursor: u64,
        limit: usize,
        max_bytes: usize,
    ) -> StoreResult<Vec<JournalEntry>> {
        self.inner.changes_after(tenant, cursor, limit, max_bytes)
    }
    fn snapshot_page(
        &self,
        tenant: TenantId,
        at: u64,
        after: Option<&NodeKey>,
        limit: usize,
        max_bytes: usize,
    ) -> StoreResult<(Vec<v1::Node>, Option<NodeKey>)> {
        self.inner
            .snapshot_page(tenant, at, after, limit, max_bytes)
    }
    fn versions(&self, tenant: TenantId, id: &NodeKey) -> StoreResult<Vec<JournalEntry>> {
        self.inner.versions(tenant, id)
    }
    fn versions_page(
        &self,
        tenant: TenantId,
        id: &NodeKey,
        before: u64,
        limit: usize,
        max_bytes: usize,
    ) -> StoreResult<(Vec<JournalEntry>, bool)> {
        self.inner
            .versions_page(tenant, id, before, limit, max_bytes)
    }
    fn entry(&self, tenant: TenantId, seq: u64) -> StoreResult<Option<JournalEntry>> {
        self.inner.entry(tenant, seq)
    }
    fn deleted(
        &self,
        tenant: TenantId,
        before: u64,
        limit: usize,
        max_bytes: usize,
    ) -> StoreResult<(Vec<JournalEntry>, bool)> {
        self.inner.deleted(tenant, before, limit, max_bytes)
    }
    fn journal_floor(&self, tenant: TenantId) -> StoreResult<u64> {
        self.inner.journal_floor(tenant)
    }
    fn settled_before(&self, tenant: TenantId, cutoff_ns: i64) -> StoreResult<u64> {
        self.inner.settled_before(tenant, cutoff_ns)
    }
    fn write(&self, tenant: TenantId, f: &mut WriteFn<'_>) -> Result<(), tonic::Status> {
        self.unsynced_at_write
            .lock()
            .push(self.chunks.unsynced_dirs().len());
        self.inner.write(tenant, f)
    }
}

/// Adds the bearer token to every request.
type Auth = Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send>;

type Client = SyncClient<InterceptedService<Channel, Auth>>;

/// The service on a loopback port, with handles on its parts.
struct Server {
    url: String,
    token: String,
    tenant: TenantId,
    probe: Arc<Probe>,
    chunks: Arc<FsChunkStore>,
    heads: Arc<HeadNotifier>,
    _stop: tokio::sync::oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

/// The upload idle limit of the test server (the real one waits 20 s).
const UPLOAD_IDLE_IN_TESTS: Duration = Duration::from_secs(1);

async fn start() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let data = bvfs_server::DataDir::open(&dir.path().join("server")).unwrap();
    let device = bvfs_server::auth::add_device(data.meta.as_ref(), "alice", "laptop").unwrap();
    let probe = Arc::new(Probe {
        inner: data.meta.clone(),
        chunks: data.chunks.clone(),
        unsynced_at_write: Mutex::default(),
    });
    let heads = Arc::new(HeadNotifier::default());
    let chunks: Arc<dyn ChunkStore> = data.chunks.clone();
    let service = SyncService::new(probe.clone(), chunks, heads.clone())
        .with_upload_idle(UPLOAD_IDLE_IN_TESTS);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(SyncServer::new(service))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = stopped.await;
                },
            )
            .await
            .unwrap();
    });
    Server {
        url,
        token: device.token,
        tenant: device.tenant,
        probe,
        chunks: data.chunks.clone(),
        heads,
        _stop: stop,
        _dir: dir,
    }
}

async fn client(server: &Server) -> Client {
    client_with(server, &server.token).await
}

/// A client with another token (another device, or another tenant's).
async fn client_with(server: &Server, token: &str) -> Client {
    let channel = Channel::from_shared(server.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let header: tonic::metadata::MetadataValue<_> = format!("Bearer {token}").parse().unwrap();
    let auth: Auth = Box::new(move |mut request: tonic::Request<()>| {
        request
            .metadata_mut()
            .insert("authorization", header.clone());
        Ok(request)
    });
    SyncClient::new(InterceptedService::new(channel, auth))
}

fn reason(status: &tonic::Status) -> &str {
    status
        .metadata()
        .get("bvfs-reason")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

fn chunk(i: u32) -> Vec<u8> {
    format!("chunk number {i}").into_bytes()
}

fn chunk_ref(data: &[u8]) -> v1::ChunkRef {
    v1::ChunkRef {
        id: blake3::hash(data).as_bytes().to_vec(),
        length: data.len() as u32,
    }
}

fn file_attrs(chunks: Vec<v1::ChunkRef>) -> v1::NodeAttrs {
    v1::NodeAttrs {
        size: chunks.iter().map(|c| u64::from(c.length)).sum(),
        content: Some(v1::Content {
            hash: vec![9; 32],
            chunks,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn create_file(id: u8, chunks: Vec<v1::ChunkRef>) -> v1::Op {
    v1::Op {
        op: Some(OpKind::Create(v1::CreateOp {
            id: vec![id; 16],
            parent_id: vec![0; 16],
            name: format!("f{id}"),
            kind: NodeKind::File as i32,
            attrs: Some(file_attrs(chunks)),
        })),
    }
}

fn update(id: u8, base_revision: u64, content: v1::Content) -> v1::Op {
    v1::Op {
        op: Some(OpKind::Update(v1::UpdateOp {
            id: vec![id; 16],
            base_revision,
            attrs: Some(v1::NodeAttrs {
                content: Some(content),
                ..Default::default()
            }),
        })),
    }
}

async fn commit(
    client: &mut Client,
    ops: Vec<v1::Op>,
) -> Result<v1::CommitResponse, tonic::Status> {
    client
        .commit(v1::CommitRequest {
            ops,
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

/// Item 3: a PutChunks stream stores a chunk and then fails on a corrupted one. The stored chunk is
/// visible at once (FindMissingChunks reports it present), so a client commits a file naming it; its
/// directory entry must be durable before that commit's transaction, not merely visible.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_never_lands_before_the_chunks_it_names_are_durable() {
    let server = start().await;
    let mut client = client(&server).await;
    let (good, bad) = (chunk(1), chunk(2));
    let messages = vec![
        v1::PutChunkRequest {
            id: chunk_ref(&good).id,
            data: good.clone(),
        },
        v1::PutChunkRequest {
            id: chunk_ref(&bad).id,
            data: b"not the bytes of that id".to_vec(),
        },
    ];
    let failed = client
        .put_chunks(tokio_stream::iter(messages))
        .await
        .unwrap_err();
    assert_eq!(failed.code(), tonic::Code::DataLoss, "{failed:?}");

    let missing = client
        .find_missing_chunks(v1::FindMissingChunksRequest {
            ids: vec![chunk_ref(&good).id, chunk_ref(&bad).id],
        })
        .await
        .unwrap()
        .into_inner()
        .missing;
    assert_eq!(
        missing,
        vec![chunk_ref(&bad).id],
        "the good chunk is present"
    );

    commit(&mut client, vec![create_file(1, vec![chunk_ref(&good)])])
        .await
        .unwrap();
    assert_eq!(
        server.probe.unsynced_at_write.lock().as_slice(),
        &[0],
        "every directory entry was fsynced before the commit's transaction"
    );
    assert!(server.chunks.unsynced_dirs().is_empty());
}

/// Item 7: subscriptions of clients that went away end without any commit, and a tenant holds at
/// most [`MAX_SUBSCRIPTIONS_PER_TENANT`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn departed_subscribers_are_noticed_and_subscriptions_are_capped() {
    let server = start().await;
    let mut client = client(&server).await;
    let n = 40;
    let mut streams = Vec::new();
    for _ in 0..n {
        let stream = client
            .subscribe(v1::SubscribeRequest { cursor: 0 })
            .await
            .unwrap()
            .into_inner();
        streams.push(stream);
    }
    assert_eq!(server.heads.subscribers(server.tenant), n);
    drop(streams);
    let deadline = Instant::now() + Duration::from_secs(1);
    while server.heads.subscribers(server.tenant) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        server.heads.subscribers(server.tenant),
        0,
        "dropped subscriptions are gone within a second, with no commit"
    );

    // Up to the cap they are accepted (over a few connections: HTTP/2 limits streams per
    // connection); the next is refused precisely.
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(self::client(&server).await);
    }
    let mut held = Vec::new();
    for i in 0..MAX_SUBSCRIPTIONS_PER_TENANT {
        let c = &mut clients[i % 4];
        held.push(
            c.subscribe(v1::SubscribeRequest { cursor: 0 })
                .await
                .unwrap()
                .into_inner(),
        );
    }
    let refused = client
        .subscribe(v1::SubscribeRequest { cursor: 0 })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert_eq!(reason(&refused), "too-many-subscriptions");
    assert!(refused.message().contains("256"), "{}", refused.message());
    // A slot freed is a slot usable again.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(1);
    while server.heads.subscribers(server.tenant) >= MAX_SUBSCRIPTIONS_PER_TENANT
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    client
        .subscribe(v1::SubscribeRequest { cursor: 0 })
        .await
        .unwrap();
}

/// Stores `chunks` with one PutChunks stream.
async fn put(client: &mut Client, chunks: &[Vec<u8>]) {
    let messages: Vec<_> = chunks
        .iter()
        .map(|data| v1::PutChunkRequest {
            id: chunk_ref(data).id,
            data: data.clone(),
        })
        .collect();
    client
        .put_chunks(tokio_stream::iter(messages))
        .await
        .unwrap();
}

/// Item 5: a second update of one node in one commit is refused (its edit would resolve against the
/// first's result, not the content at the base revision), and so is a create followed by an update;
/// one update per node still commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_is_updated_at_most_once_per_commit() {
    let server = start().await;
    let mut client = client(&server).await;
    let data: Vec<_> = (0..4).map(chunk).collect();
    put(&mut client, &data).await;
    let refs: Vec<_> = data.iter().map(|d| chunk_ref(d)).collect();
    let created = commit(&mut client, vec![create_file(1, refs[..2].to_vec())])
        .await
        .unwrap();
    let rev = created.cursor;
    let edit = |keep_prefix: u32, new: &v1::ChunkRef| v1::Content {
        hash: vec![8; 32],
        chunks: vec![new.clone()],
        keep_prefix,
        ..Default::default()
    };
    // Sizes are checked against the resolved list: first edit keeps 1 of 2 and adds one; the second,
    // resolved against the first's result, would keep 2.
    let mut first = update(1, rev, edit(1, &refs[2]));
    let mut second = update(1, rev, edit(2, &refs[3]));
    for (op, size) in [(&mut first, 2), (&mut second, 3)] {
        if let Some(OpKind::Update(u)) = &mut op.op {
            u.attrs.as_mut().unwrap().size = data[0].len() as u64 * size;
        }
    }
    let refused = commit(&mut client, vec![first.clone(), second])
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert_eq!(reason(&refused), "repeated-update");
    assert!(
        refused.message().starts_with("op 1:"),
        "{}",
        refused.message()
    );

    let refused = commit(
        &mut client,
        vec![
            create_file(2, refs[..1].to_vec()),
            update(2, 0, edit(1, &refs[1])),
        ],
    )
    .await
    .unwrap_err();
    assert_eq!(reason(&refused), "repeated-update");

    // Nothing of either landed; a single update commits.
    let head = commit(&mut client, vec![first]).await.unwrap().cursor;
    assert_eq!(head, rev + 1);
}

/// Item 5: a commit of several ops whose resolved chunk lists add up past MAX_COMMIT_CHUNKS is
/// refused, counting each edit's kept chunks, while one file of that length alone commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_is_bounded_in_resolved_chunks() {
    use bvfs_proto::{MAX_COMMIT_CHUNKS, MAX_OPS_PER_COMMIT};
    let server = start().await;
    let mut client = client(&server).await;
    let data = chunk(7);
    put(&mut client, std::slice::from_ref(&data)).await;
    let one = chunk_ref(&data);
    // A large file staged with PutManifest (one distinct chunk, named many times).
    let half = MAX_COMMIT_CHUNKS / 2 + 1;
    let stage = |n: usize| {
        let pages: Vec<_> = vec![one.clone(); n]
            .chunks(bvfs_proto::MANIFEST_PAGE_CHUNKS)
            .map(|c| v1::ManifestPage { chunks: c.to_vec() })
            .collect();
        pages
    };
    let staged_create = |id: u8, manifest_ref: Vec<u8>, n: usize| v1::Op {
        op: Some(OpKind::Create(v1::CreateOp {
            id: vec![id; 16],
            parent_id: vec![0; 16],
            name: format!("big{id}"),
            kind: NodeKind::File as i32,
            attrs: Some(v1::NodeAttrs {
                size: (data.len() * n) as u64,
                content: Some(v1::Content {
                    hash: vec![id; 32],
                    manifest_ref,
                    chunk_count: n as u64,
                    ..Default::default()
                }),
                ..Default::default()
            }),
        })),
    };
    let mut refs = Vec::new();
    for _ in 0..2 {
        refs.push(
            client
                .put_manifest(tokio_stream::iter(stage(half)))
                .await
                .unwrap()
                .into_inner()
                .manifest_ref,
        );
    }
    let ops = vec![
        staged_create(1, refs[0].clone(), half),
        staged_create(2, refs[1].clone(), half),
    ];
    let refused = commit(&mut client, ops).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert_eq!(reason(&refused), "too-large");
    assert!(
        refused.message().contains("MAX_COMMIT_CHUNKS"),
        "{}",
        refused.message()
    );
    assert!(
        refused.message().starts_with("op 1:"),
        "{}",
        refused.message()
    );

    // Alone, each commits; and an edit keeping them all counts them all.
    let mut heads = Vec::new();
    for id in [1, 2] {
        let manifest_ref = client
            .put_manifest(tokio_stream::iter(stage(half)))
            .await
            .unwrap()
            .into_inner()
            .manifest_ref;
        heads.push(
            commit(&mut client, vec![staged_create(id, manifest_ref, half)])
                .await
                .unwrap()
                .cursor,
        );
    }
    let keep_all = |id: u8, base: u64| {
        let mut op = update(
            id,
            base,
            v1::Content {
                hash: vec![id + 10; 32],
                chunks: vec![one.clone()],
                keep_prefix: half as u32,
                ..Default::default()
            },
        );
        if let Some(OpKind::Update(u)) = &mut op.op {
            u.attrs.as_mut().unwrap().size = (data.len() * (half + 1)) as u64;
        }
        op
    };
    let refused = commit(
        &mut client,
        vec![keep_all(1, heads[0]), keep_all(2, heads[1])],
    )
    .await
    .unwrap_err();
    assert_eq!(reason(&refused), "too-large", "{refused:?}");
    commit(&mut client, vec![keep_all(1, heads[0])])
        .await
        .unwrap();

    // The op cap names its limit.
    let ops: Vec<_> = (0..=MAX_OPS_PER_COMMIT)
        .map(|_| v1::Op {
            op: Some(OpKind::Delete(v1::DeleteOp {
                id: vec![1; 16],
                base_revision: 1,
            })),
        })
        .collect();
    let refused = commit(&mut client, ops).await.unwrap_err();
    assert_eq!(reason(&refused), "too-large");
    assert!(refused.message().contains(&MAX_OPS_PER_COMMIT.to_string()));
}

/// The id of the `i`th directory of a chain.
fn chain_id(i: usize) -> Vec<u8> {
    let mut id = vec![0xd0; 16];
    id[..8].copy_from_slice(&(i as u64).to_le_bytes());
    id
}

fn mkdir(id: Vec<u8>, parent: Vec<u8>, name: &str) -> v1::Op {
    v1::Op {
        op: Some(OpKind::Create(v1::CreateOp {
            id,
            parent_id: parent,
            name: name.into(),
            kind: NodeKind::Directory as i32,
            attrs: Some(v1::NodeAttrs::default()),
        })),
    }
}

fn mv(id: Vec<u8>, base_revision: u64, parent: Vec<u8>, name: &str) -> v1::Op {
    v1::Op {
        op: Some(OpKind::Move(v1::MoveOp {
            id,
            base_revision,
            new_parent_id: parent,
            new_name: name.into(),
        })),
    }
}

/// Item 6: a tree is at most MAX_TREE_DEPTH levels deep, and a commit's walks up the tree (cycle
/// and depth checks) are bounded together. The attack, 300 moves to the bottom of a
/// 20,000-deep chain, once held the server's only writer for 7-11 s: the chain cannot be built past
/// the bound, and the moves are refused as one commit's walking past MAX_COMMIT_WALK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_is_bounded_in_depth_and_a_commit_in_walking() {
    use bvfs_proto::{MAX_COMMIT_WALK, MAX_TREE_DEPTH};
    let server = start().await;
    let mut client = client(&server).await;
    // A chain of MAX_TREE_DEPTH directories in one commit: each create under the one before walks
    // one step (depths are remembered within a commit).
    let chain: Vec<v1::Op> = (0..MAX_TREE_DEPTH)
        .map(|i| {
            let parent = if i == 0 { vec![0; 16] } else { chain_id(i - 1) };
            mkdir(chain_id(i), parent, "d")
        })
        .collect();
    commit(&mut client, chain).await.unwrap();
    let bottom = chain_id(MAX_TREE_DEPTH - 1);
    let refused = commit(
        &mut client,
        vec![mkdir(vec![0xee; 16], bottom.clone(), "deeper")],
    )
    .await
    .unwrap_err();
    assert_eq!(reason(&refused), "too-deep", "{refused:?}");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);

    // A cycle is still found at full depth: the chain's top moved under its bottom.
    let refused = commit(
        &mut client,
        vec![mv(chain_id(0), 1, bottom.clone(), "loop")],
    )
    .await
    .unwrap_err();
    assert_eq!(reason(&refused), "cycle", "{refused:?}");

    // Directories to move down the chain, then many moves in one commit: each walks the whole
    // chain, and together they pass MAX_COMMIT_WALK.
    let movers = 300;
    let dirs: Vec<v1::Op> = (0..movers)
        .map(|i| {
            mkdir(
                vec![
                    0xa0,
                    i as u8,
                    (i >> 8) as u8,
                    1,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                ],
                vec![0; 16],
                &format!("m{i}"),
            )
        })
        .collect();
    let made = commit(&mut client, dirs).await.unwrap();
    let base = made.cursor - movers as u64;
    let moves: Vec<v1::Op> = (0..movers)
        .map(|i| {
            let id = vec![
                0xa0,
                i as u8,
                (i >> 8) as u8,
                1,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
            ];
            mv(
                id,
                base + 1 + i as u64,
                chain_id(MAX_TREE_DEPTH - 2),
                &format!("m{i}"),
            )
        })
        .collect();
    assert!(movers * (MAX_TREE_DEPTH - 2) > MAX_COMMIT_WALK);
    let started = Instant::now();
    let refused = commit(&mut client, moves).await.unwrap_err();
    assert_eq!(reason(&refused), "too-large", "{refused:?}");
    assert!(refused.message().contains("split"), "{refused:?}");
    println!(
        "{movers} moves to depth {} refused after {:?}",
        MAX_TREE_DEPTH - 1,
        started.elapsed()
    );
    // Split as asked, the moves go through.
    let per_commit = MAX_COMMIT_WALK / MAX_TREE_DEPTH;
    let mut ops: Vec<v1::Op> = (0..movers)
        .map(|i| {
            let id = vec![
                0xa0,
                i as u8,
                (i >> 8) as u8,
                1,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
            ];
            mv(
                id,
                base + 1 + i as u64,
                chain_id(MAX_TREE_DEPTH - 2),
                &format!("m{i}"),
            )
        })
        .collect();
    while !ops.is_empty() {
        let rest = ops.split_off(ops.len().min(per_commit));
        commit(&mut client, ops).await.unwrap();
        ops = rest;
    }
}

/// Item 6: tenants do not share a writer. While one tenant's write transaction is held open (as a
/// long commit would), another tenant's commit goes through; a commit of the same tenant waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenant_never_waits_for_another_tenants_commit() {
    let server = start().await;
    let bob = bvfs_server::auth::add_device(server.probe.inner.as_ref(), "bob", "phone").unwrap();
    let mut alice = client(&server).await;
    let mut bob_client = client_with(&server, &bob.token).await;
    commit(&mut alice, vec![mkdir(vec![1; 16], vec![0; 16], "before")])
        .await
        .unwrap();

    // Alice's namespace writer, held by a transaction that waits to be released.
    let (started_tx, started) = std::sync::mpsc::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let meta = server.probe.inner.clone();
    let tenant = server.tenant;
    let holder = std::thread::spawn(move || {
        meta.write(tenant, &mut |_| {
            started_tx.send(()).unwrap();
            released.recv().unwrap();
            Ok(())
        })
        .unwrap();
    });
    started.recv().unwrap();

    let bobs = tokio::time::timeout(
        Duration::from_secs(20),
        commit(
            &mut bob_client,
            vec![mkdir(vec![2; 16], vec![0; 16], "bob's")],
        ),
    )
    .await
    .expect("bob's commit does not wait for alice's transaction");
    assert_eq!(bobs.unwrap().cursor, 1);

    // Alice's own next commit does wait, and lands once the transaction ends.
    let mut alices = Box::pin(commit(
        &mut alice,
        vec![mkdir(vec![3; 16], vec![0; 16], "after")],
    ));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut alices)
            .await
            .is_err(),
        "a commit of the same tenant waits for its writer"
    );
    release.send(()).unwrap();
    assert_eq!(alices.await.unwrap().cursor, 2);
    holder.join().unwrap();
}

/// From the code: `Undelete` reads the node's last version before its transaction. If the node was
/// undeleted and deleted again meanwhile, that version is not the last any more, and the undelete is
/// refused instead of bringing back an older state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undelete_from_a_stale_read_is_refused() {
    let server = start().await;
    let mut client = client(&server).await;
    let id = vec![7; 16];
    commit(&mut client, vec![mkdir(id.clone(), vec![0; 16], "dir")])
        .await
        .unwrap();
    let deleted = commit(
        &mut client,
        vec![v1::Op {
            op: Some(OpKind::Delete(v1::DeleteOp {
                id: id.clone(),
                base_revision: 1,
            })),
        }],
    )
    .await
    .unwrap();
    let meta = server.probe.inner.clone();
    let key: NodeKey = id.clone().try_into().unwrap();
    // What an Undelete read before its transaction: the delete at 2.
    let stale = meta
        .versions_page(server.tenant, &key, u64::MAX >> 1, 1, usize::MAX)
        .unwrap()
        .0
        .remove(0);
    assert_eq!(stale.seq, deleted.cursor);
    // Meanwhile: undeleted, renamed and deleted again.
    client
        .undelete(v1::UndeleteRequest {
            id: id.clone(),
            name: "renamed".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    commit(
        &mut client,
        vec![v1::Op {
            op: Some(OpKind::Delete(v1::DeleteOp {
                id: id.clone(),
                base_revision: 3,
            })),
        }],
    )
    .await
    .unwrap();
    let mut result = None;
    let refused = meta.write(server.tenant, &mut |txn| {
        result = Some(bvfs_server::namespace::undelete(
            txn, &stale, None, None, "laptop", 0,
        )?);
        Ok(())
    });
    let refused = refused.expect_err("the stale undelete is refused");
    assert_eq!(reason(&refused), "stale-revision", "{refused:?}");
    assert_eq!(meta.head(server.tenant).unwrap(), 4, "nothing was written");
}

/// From the code: `bvfs admin` opens the data directory beside a running server; it must not clear
/// the chunk store's temporary files, which are uploads in flight. Only the serving process, holding
/// the directory's lock, clears them (leftovers of a crash) when it starts.
#[test]
fn an_admin_command_beside_a_server_leaves_uploads_in_flight_alone() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let serving = bvfs_server::DataDir::open_exclusive(&data).unwrap();
    let in_flight = data.join("chunks/tmp/upload-in-flight");
    std::fs::write(&in_flight, b"half an upload").unwrap();
    let admin = bvfs_server::DataDir::open(&data).unwrap();
    bvfs_server::auth::add_device(admin.meta.as_ref(), "carol", "tablet").unwrap();
    assert!(
        in_flight.exists(),
        "the admin command left the upload alone"
    );
    assert!(
        bvfs_server::DataDir::open_exclusive(&data).is_err(),
        "one server per data directory"
    );
    drop(serving);
    // A server starting after a crash clears what was left.
    let _serving = bvfs_server::DataDir::open_exclusive(&data).unwrap();
    assert!(!in_flight.exists());
}

/// Issue 14: a chunk larger than the chunker makes is refused, and an upload stream that stalls
/// (or declares a message it never sends) is cut off after the idle limit, keeping (and making
/// durable) what it stored before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_chunks_and_stalled_uploads_are_refused() {
    let server = start().await;
    let mut client = client(&server).await;
    let big = vec![7u8; bvfs_proto::MAX_CHUNK_BYTES + 2];
    let refused = client
        .put_chunks(tokio_stream::iter(vec![v1::PutChunkRequest {
            id: blake3::hash(&big).as_bytes().to_vec(),
            data: big,
        }]))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains("chunker"), "{refused:?}");

    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let first = chunk(77);
    tx.send(v1::PutChunkRequest {
        id: blake3::hash(&first).as_bytes().to_vec(),
        data: first.clone(),
    })
    .await
    .unwrap();
    let started = Instant::now();
    let stalled = client
        .put_chunks(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(stalled.code(), tonic::Code::DeadlineExceeded, "{stalled:?}");
    assert!(started.elapsed() < UPLOAD_IDLE_IN_TESTS * 10);
    drop(tx);
    let missing = client
        .find_missing_chunks(v1::FindMissingChunksRequest {
            ids: vec![blake3::hash(&first).as_bytes().to_vec()],
        })
        .await
        .unwrap()
        .into_inner()
        .missing;
    assert!(missing.is_empty(), "what arrived before the stall is kept");
    assert!(server.chunks.unsynced_dirs().is_empty(), "and durable");
}

/// Issue 14: one tenant holds at most MAX_REQUESTS_PER_TENANT requests in flight; past that it
/// is told to slow down, while another tenant is served as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_flooding_the_server_is_capped_and_others_are_served() {
    use bvfs_server::service::MAX_REQUESTS_PER_TENANT;
    let server = start().await;
    let bob = bvfs_server::auth::add_device(server.probe.inner.as_ref(), "bob", "phone").unwrap();
    let mut alice = client(&server).await;
    // Large chunks, so that an unread download stream fills its window and stays in flight.
    let chunks: Vec<Vec<u8>> = (0..8u8)
        .map(|i| vec![i; bvfs_proto::MAX_CHUNK_BYTES])
        .collect();
    put(&mut alice, &chunks).await;
    let ids: Vec<Vec<u8>> = (0..40)
        .map(|i| blake3::hash(&chunks[i % chunks.len()]).as_bytes().to_vec())
        .collect();
    let mut held = Vec::new();
    for _ in 0..MAX_REQUESTS_PER_TENANT {
        let mut c = client(&server).await;
        let stream = c
            .get_chunks(v1::GetChunksRequest { ids: ids.clone() })
            .await
            .unwrap()
            .into_inner();
        held.push((c, stream));
    }
    let refused = alice.hello(v1::HelloRequest {}).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert_eq!(reason(&refused), "too-many-requests");
    let mut bob_client = client_with(&server, &bob.token).await;
    let answered = tokio::time::timeout(
        Duration::from_secs(10),
        bob_client.hello(v1::HelloRequest {}),
    )
    .await
    .expect("another tenant is answered");
    assert_eq!(answered.unwrap().into_inner().tenant, "bob");
    // Once alice's downloads end, she is served again.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match alice.hello(v1::HelloRequest {}).await {
            Ok(_) => break,
            Err(e) if e.code() == tonic::Code::ResourceExhausted && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("alice is not served again: {e:?}"),
        }
    }
}

//! The gRPC `Sync` service: authentication, request limits, and the glue between the wire and the
//! namespace rules. Storage calls are blocking (SQLite, files) and run on tokio's blocking pool.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use bvfs_proto::v1::sync_server::Sync;
use bvfs_proto::v1::{
    self, Change, ChunkData, CommitRequest, CommitResponse, ConfirmUploadsRequest,
    ConfirmUploadsResponse, DeletedNode, FindMissingChunksRequest, FindMissingChunksResponse,
    GetChunksRequest, GetManifestRequest, HelloRequest, HelloResponse, ListChangesRequest,
    ListChangesResponse, ListDeletedRequest, ListDeletedResponse, ListVersionsRequest,
    ListVersionsResponse, ManifestPage, PresignDownloadsRequest, PresignDownloadsResponse,
    PresignUploadsRequest, PresignUploadsResponse, PresignedDownload, PresignedUpload,
    PutChunkRequest, PutChunksResponse, PutManifestResponse, RestoreVersionRequest,
    SnapshotRequest, SnapshotResponse, SubscribeEvent, SubscribeRequest, UndeleteRequest, Version,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use bvfs_proto::{MANIFEST_PAGE_CHUNKS, PAGE_BUDGET_BYTES};

use crate::auth::{authenticate, authorization_header};
use crate::bounds::{elide, elide_response, fitting, fitting_elided};
use crate::metrics::{Metrics, UploadRefusal};
use crate::namespace::{self, MAX_CHUNK_BYTES, Reason, chunk_key, node_key, reject};
use crate::notify::{HeadNotifier, MAX_SUBSCRIPTIONS_PER_TENANT};
use crate::presign;
use crate::staging::{MAX_MANIFEST_CHUNKS, Staging, check_chunk_ref};
use crate::store::s3::{ConfirmError, Confirmed, PRESIGN_EXPIRY, S3ChunkStore};
use crate::store::sqlite::store_status;
use crate::store::{ChunkStore, JournalEntry, MetaStore, Principal, ROOT_ID, StoreError, TenantId};

/// Default and largest page of `ListChanges`.
const CHANGES_PAGE: (u32, u32) = (1_000, 10_000);
/// Default and largest page of `Snapshot`.
const SNAPSHOT_PAGE: (u32, u32) = (5_000, 50_000);
/// Default and largest page of `ListDeleted`.
const DELETED_PAGE: (u32, u32) = (100, 1_000);
/// Default and largest page of `ListVersions`.
const VERSIONS_PAGE: (u32, u32) = (100, 1_000);
/// Bytes of a page's fields besides its entries (cursors, flags), counted generously.
const PAGE_OVERHEAD: usize = 64;
/// How often a live `Subscribe` stream checks that its token is still valid.
const REAUTH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);
/// The most ids in one `FindMissingChunks` or `GetChunks` request.
const MAX_IDS_PER_REQUEST: usize = 10_000;

/// The most requests one tenant may have in flight at once (a device uses about 16 at its busiest:
/// reads, read-ahead, uploads and a commit).
pub const MAX_REQUESTS_PER_TENANT: usize = 64;
/// How long a `PutChunks` or `PutManifest` stream may go without a message before it is cut off
/// (a client that stalls, or declares a message it never sends, would otherwise hold its request
/// until the overall request timeout).
pub const UPLOAD_IDLE: std::time::Duration = std::time::Duration::from_secs(20);

/// The service state shared by all requests.
pub struct SyncService {
    meta: Arc<dyn MetaStore>,
    chunks: Arc<dyn ChunkStore>,
    heads: Arc<HeadNotifier>,
    staging: Arc<Staging>,
    /// Requests in flight per tenant.
    in_flight: parking_lot::Mutex<HashMap<TenantId, Arc<Semaphore>>>,
    upload_idle: std::time::Duration,
    metrics: Arc<Metrics>,
    /// The collection epoch each tenant's commits saw last ([`crate::gc`]).
    gc_epochs: Arc<crate::gc::EpochMemory>,
    /// The store that signs transfer URLs, when presigned transfer is offered ([`crate::presign`]).
    presign: Option<Arc<S3ChunkStore>>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn page(limit: u32, (default, max): (u32, u32)) -> usize {
    if limit == 0 {
        default as usize
    } else {
        limit.min(max) as usize
    }
}

/// A journal entry on the wire, its chunk list elided if long.
fn change(mut entry: JournalEntry) -> Change {
    elide(&mut entry.node, false);
    Change {
        seq: entry.seq,
        kind: entry.kind as i32,
        node: Some(entry.node),
        device: entry.device,
        committed_at_ns: entry.committed_at_ns,
        tag: entry.tag,
    }
}

/// A page of changes after `cursor`: at most `limit`, and as many as fit [`PAGE_BUDGET_BYTES`]
/// once their chunk lists are elided. The store is read in runs bounded by their stored size (which
/// counts the lists in full), so a page of changes to large files is still filled, while what is held
/// at once stays near the budget.
fn changes_page(
    meta: &dyn MetaStore,
    tenant: crate::store::TenantId,
    cursor: u64,
    limit: usize,
) -> Result<Vec<Change>, StoreError> {
    let (mut changes, mut bytes, mut after) = (Vec::<Change>::new(), PAGE_OVERHEAD, cursor);
    while changes.len() < limit {
        let entries =
            meta.changes_after(tenant, after, limit - changes.len(), PAGE_BUDGET_BYTES)?;
        let Some(last) = entries.last() else { break };
        after = last.seq;
        for entry in entries {
            let change = change(entry);
            let len = crate::bounds::repeated_len(&change);
            if !changes.is_empty() && bytes + len > PAGE_BUDGET_BYTES {
                return Ok(changes);
            }
            bytes += len;
            changes.push(change);
        }
    }
    Ok(changes)
}

/// Runs blocking storage work off the async runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        Status::internal(format!("the server failed while handling the request: {e}"))
    })?
}

/// Checks a client's position against the tenant's journal as it stands now (outside a write
/// transaction: a read answers from one consistent view, and a position the journal holds stays held,
/// as the journal only grows). Returns the head.
fn check_read_position(
    meta: &dyn MetaStore,
    tenant: crate::store::TenantId,
    cursor: u64,
    tag: u64,
) -> Result<u64, Status> {
    let head = meta.head(tenant).map_err(store_status)?;
    namespace::check_position(cursor, tag, head, |seq| {
        meta.tag_at(tenant, seq).map_err(store_status)
    })?;
    Ok(head)
}

/// Refuses a read position below the tenant's journal floor (`journal-compacted`); the caller reads
/// the floor after the data it answers with ([`crate::retention`]).
fn check_floor(
    meta: &dyn MetaStore,
    tenant: crate::store::TenantId,
    cursor: u64,
) -> Result<(), Status> {
    let floor = meta.journal_floor(tenant).map_err(store_status)?;
    if cursor < floor {
        return Err(namespace::compacted(cursor, floor));
    }
    Ok(())
}

/// The tag of the entry at `seq`, which the caller knows exists (at or below a head it read).
fn tag_of(meta: &dyn MetaStore, tenant: crate::store::TenantId, seq: u64) -> Result<u64, Status> {
    meta.tag_at(tenant, seq)
        .map_err(store_status)?
        .ok_or_else(|| {
            store_status(StoreError::Corrupt(format!(
                "journal entry {seq} is missing"
            )))
        })
}

/// The refusal of a subscription past [`MAX_SUBSCRIPTIONS_PER_TENANT`].
fn too_many_subscriptions() -> Status {
    let mut status = Status::resource_exhausted(format!(
        "this tenant already holds {MAX_SUBSCRIPTIONS_PER_TENANT} live Subscribe streams, the most \
         allowed; close unused ones (each device needs one) and retry later"
    ));
    status.metadata_mut().insert(
        namespace::REASON_KEY,
        "too-many-subscriptions".parse().expect("ASCII"),
    );
    status
}

impl SyncService {
    pub fn new(
        meta: Arc<dyn MetaStore>,
        chunks: Arc<dyn ChunkStore>,
        heads: Arc<HeadNotifier>,
    ) -> Self {
        Self {
            meta,
            chunks,
            heads,
            staging: Arc::default(),
            in_flight: Default::default(),
            upload_idle: UPLOAD_IDLE,
            metrics: Arc::default(),
            gc_epochs: Arc::default(),
            presign: None,
        }
    }

    /// The same service offering presigned chunk transfer through `store` (ADR-0011), which must
    /// be the service's chunk store.
    pub fn with_presigned_transfer(mut self, store: Option<Arc<S3ChunkStore>>) -> Self {
        self.presign = store;
        self
    }

    /// The presigning store, or the refusal of a server that offers none.
    fn presigner(&self) -> Result<Arc<S3ChunkStore>, Status> {
        self.presign.clone().ok_or_else(presign::unavailable)
    }

    /// The same service counting into `metrics` (shared with the rest of the process).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// The same service with another upload idle limit (tests use a short one).
    pub fn with_upload_idle(mut self, idle: std::time::Duration) -> Self {
        self.upload_idle = idle;
        self
    }

    /// Authenticates a request and counts it against its tenant's requests in flight (at most
    /// [`MAX_REQUESTS_PER_TENANT`]; past that `RESOURCE_EXHAUSTED` `too-many-requests`), so one
    /// tenant's flood cannot take every worker from the others. The permit is held until the
    /// request (or the stream it answers with) is done.
    async fn admit<T>(
        &self,
        request: &Request<T>,
    ) -> Result<(Principal, OwnedSemaphorePermit), Status> {
        let who = self.principal(request).await?;
        let limit = self
            .in_flight
            .lock()
            .entry(who.tenant)
            .or_insert_with(|| Arc::new(Semaphore::new(MAX_REQUESTS_PER_TENANT)))
            .clone();
        let permit = limit.try_acquire_owned().map_err(|_| {
            let mut status = Status::resource_exhausted(format!(
                "this account has {MAX_REQUESTS_PER_TENANT} requests in flight, the most allowed; \
                 retry when some have finished"
            ));
            status.metadata_mut().insert(
                namespace::REASON_KEY,
                "too-many-requests".parse().expect("ASCII"),
            );
            status
        })?;
        Ok((who, permit))
    }

    async fn principal<T>(&self, request: &Request<T>) -> Result<Principal, Status> {
        let meta = self.meta.clone();
        let header = authorization_header(request);
        blocking(move || authenticate(meta.as_ref(), header.as_deref())).await
    }

    /// Stores the chunks of one `PutChunks` stream, counting them in `reply`; stops at the first bad
    /// message. Nothing here syncs: the caller does, whether this succeeds or not.
    async fn receive_chunks(
        &self,
        tenant: crate::store::TenantId,
        mut incoming: Streaming<PutChunkRequest>,
        reply: &mut PutChunksResponse,
    ) -> Result<(), Status> {
        while let Some(message) = self.next_upload_message(&mut incoming).await? {
            let PutChunkRequest { id, data } = message;
            let key = chunk_key(&id, "chunk id", None)
                .inspect_err(|_| self.metrics.record_upload_refused(UploadRefusal::Malformed))?;
            if data.is_empty() || data.len() > MAX_CHUNK_BYTES {
                self.metrics.record_upload_refused(UploadRefusal::Malformed);
                return Err(reject(
                    Reason::Malformed,
                    None,
                    format!(
                        "chunk {}: a chunk is 1 byte to {MAX_CHUNK_BYTES} bytes (the chunker's maximum), got {}",
                        hex::encode(key),
                        data.len()
                    ),
                ));
            }
            let (chunks, metrics) = (self.chunks.clone(), self.metrics.clone());
            let len = data.len() as u64;
            let stored = blocking(move || {
                let actual = blake3::hash(&data);
                if actual.as_bytes() != &key {
                    metrics.record_upload_refused(UploadRefusal::HashMismatch);
                    return Err(Status::data_loss(format!(
                        "chunk {}: its bytes hash to {}; the upload was corrupted, send it again",
                        hex::encode(key),
                        actual.to_hex()
                    )));
                }
                chunks.put(tenant, &key, &data).map_err(|e| {
                    metrics.record_upload_refused(UploadRefusal::Store);
                    store_status(e)
                })
            })
            .await?;
            self.metrics.chunk_bytes_received.inc_by(len);
            if stored {
                reply.stored += 1;
            } else {
                reply.already_present += 1;
            }
        }
        Ok(())
    }

    /// The next message of an upload stream, or an error if none arrives within the idle limit.
    async fn next_upload_message<M>(
        &self,
        incoming: &mut Streaming<M>,
    ) -> Result<Option<M>, Status> {
        match tokio::time::timeout(self.upload_idle, incoming.next()).await {
            Ok(next) => next.transpose(),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "no message arrived for {} s; the upload was cut off (what arrived before is kept)",
                self.upload_idle.as_secs()
            ))),
        }
    }

    async fn meta_call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn MetaStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, Status> {
        let meta = self.meta.clone();
        blocking(move || f(meta.as_ref()).map_err(store_status)).await
    }
}

#[tonic::async_trait]
impl Sync for SyncService {
    async fn hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloResponse>, Status> {
        let (who, _admitted) = self.admit(&request).await?;
        let tenant = who.tenant;
        let (head, head_tag, namespace_id) = blocking({
            let meta = self.meta.clone();
            move || {
                let head = meta.head(tenant).map_err(store_status)?;
                let tag = tag_of(meta.as_ref(), tenant, head)?;
                Ok((head, tag, meta.namespace_id(tenant).map_err(store_status)?))
            }
        })
        .await?;
        Ok(Response::new(HelloResponse {
            tenant: who.tenant_name,
            device: who.device,
            root_id: ROOT_ID.to_vec(),
            head,
            namespace_id: namespace_id.to_vec(),
            head_tag,
            presigned_transfer: self.presign.is_some(),
        }))
    }

    async fn commit(
        &self,
        request: Request<CommitRequest>,
    ) -> Result<Response<CommitResponse>, Status> {
        let (who, _admitted) = self.admit(&request).await?;
        let CommitRequest {
            mut ops,
            cursor,
            cursor_tag,
        } = request.into_inner();
        let (meta, chunks, staging) =
            (self.meta.clone(), self.chunks.clone(), self.staging.clone());
        let gc_epochs = self.gc_epochs.clone();
        let op_count = ops.len();
        let applied = blocking(move || {
            // Staged lists can be millions of chunks: turned into the ops' lists off the runtime.
            staging.resolve(who.tenant, &mut ops)?;
            // Read before the check: if a collection deletes chunks after it, the transaction
            // sees another epoch (or an odd one) and checks again (`crate::gc`).
            let remembered = gc_epochs.remembered(who.tenant);
            namespace::check_chunks_stored(chunks.as_ref(), who.tenant, &ops)?;
            // A chunk is visible from its rename, durable only once its directory is fsynced (an
            // upload that failed midway never synced): make every chunk this commit names durable
            // before the transaction that names it.
            chunks.sync().map_err(store_status)?;
            let mut result = None;
            meta.write(who.tenant, &mut |txn| {
                let epoch = txn.gc_epoch().map_err(store_status)?;
                gc_epochs.saw(who.tenant, epoch);
                if crate::gc::must_recheck(remembered, epoch) {
                    // Under the writer lock: no collection deletes anything until this ends.
                    namespace::check_chunks_stored(chunks.as_ref(), who.tenant, &ops)?;
                }
                result = Some(namespace::apply_commit(
                    txn,
                    &ops,
                    (cursor, cursor_tag),
                    &who.device,
                    now_ns(),
                )?);
                Ok(())
            })?;
            let applied = result.expect("a committed write produced a result");
            tracing::debug!(tenant = who.tenant, device = %who.device, ops = ops.len(), cursor = applied.cursor, "commit");
            Ok((who.tenant, applied))
        })
        .await;
        self.metrics.record_commit(&applied, op_count);
        let (tenant, mut applied) = applied?;
        self.heads.publish(tenant, applied.cursor);
        elide_response(&mut applied.nodes);
        Ok(Response::new(CommitResponse {
            cursor: applied.cursor,
            nodes: applied.nodes,
            tag: applied.tag,
        }))
    }

    async fn list_changes(
        &self,
        request: Request<ListChangesRequest>,
    ) -> Result<Response<ListChangesResponse>, Status> {
        let (who, _admitted) = self.admit(&request).await?;
        let req = request.into_inner();
        let limit = page(req.limit, CHANGES_PAGE);
        let meta = self.meta.clone();
        let tenant = who.tenant;
        let (changes, head, namespace_id, cursor_tag) = blocking(move || {
            let head = check_read_position(meta.as_ref(), tenant, req.cursor, req.cursor_tag)?;
            let changes =
                changes_page(meta.as_ref(), tenant, req.cursor, limit).map_err(store_status)?;
            // Read after the changes: if retention dropped any of them, the floor it raised first
            // is seen here (it only grows), so a compacted page is never sent.
            check_floor(meta.as_ref(), tenant, req.cursor)?;
            let cursor_tag = match changes.last() {
                Some(_) => 0,
                None => tag_of(meta.as_ref(), tenant, req.cursor)?,
            };
            let namespace_id = meta.namespace_id(tenant).map_err(store_status)?;
            Ok((changes, head, namespace_id, cursor_tag))
        })
        .await?;
        let next_cursor = changes.last().map_or(req.cursor, |e| e.seq);
        let next_cursor_tag = changes.last().map_or(cursor_tag, |e| e.tag);
        debug_assert!(
            changes
                .iter()
                .zip(req.cursor + 1..)
                .all(|(e, seq)| e.seq == seq),
            "the journal has a gap after {}",
            req.cursor
        );
        Ok(Response::new(ListChangesResponse {
            has_more: next_cursor < head,
            changes,
            next_cursor,
            namespace_id: namespace_id.to_vec(),
            next_cursor_tag,
        }))
    }

    async fn snapshot(
        &self,
        request: Request<SnapshotRequest>,
    ) -> Result<Response<SnapshotResponse>, Status> {
        let (who, _admitted) = self.admit(&request).await?;
        let req = request.into_inner();
        let after = if req.after_id.is_empty() {
            None
        } else {
            Some(node_key(&req.after_id, "after_id", None)?)
        };
        let limit = page(req.limit, SNAPSHOT_PAGE);
        let meta = self.meta.clone();
        let tenant = who.tenant;
        let (at, at_tag, namespace_id, nodes, next) = blocking(move || {
            let m = meta.as_ref();
            let at = match req.at_cursor {
                0 => m.head(tenant).map_err(store_status)?,
                at => at,
            };
            // A snapshot at a cursor the journal no longer holds (rewound below it, or another
            // entry there) would mix two histories across its pages.
            check_read_position(m, tenant, at, req.at_cursor_tag)?;
            let at_tag = tag_of(m, tenant, at)?;
            let (nodes, next) = m
                .snapshot_page(tenant, at, after.as_ref(), limit, PAGE_BUDGET_BYTES)
                .map_err(store_status)?;
            // After the page, as for changes: a snapshot below the floor is no longer exact.
            check_floor(m, tenant, at)?;
            let namespace_id = m.namespace_id(tenant).map_err(store_status)?;
            Ok((at, at_tag, namespace_id, nodes, next))
        })
        .await?;
        let mut nodes = nodes;
        nodes.iter_mut().for_each(|n| elide(n, false));
        let mut next_after_id = next.map(|k| k.to_vec()).unwrap_or_default();
        let fit = fitting(&nodes, PAGE_OVERHEAD).min(fitting_elided(&nodes));
        if fit < nodes.len() {
            nodes.truncate(fit);
            // Continue after the last node sent; the ones examined past it are examined again.
            next_after_id = nodes.last().map(|n| n.id.clone()).unwrap_or_default();
        }
        Ok(Response::new(SnapshotResponse {
            at_cursor: at,
            nodes,
            next_after_id,
            namespace_id: namespace_id.to_vec(),
            at_cursor_tag: at_tag,
        }))
    }

    type SubscribeStream = BoxStream<SubscribeEvent>;

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let who = self.principal(&request).await?;
        let token = authorization_header(&request);
        let mut cursor = request.into_inner().cursor;
        let tenant = who.tenant;
        let head = self.meta_call(move |m| m.head(tenant)).await?;
        let mut heads = self
            .heads
            .subscribe(tenant, head)
            .map_err(|_| too_many_subscriptions())?;
        // A commit through another server process between the read above and the subscription
        // was delivered to nobody here: read the head once more, now that this stream listens.
        let head = self.meta_call(move |m| m.head(tenant)).await?;
        self.heads.deliver(tenant, head);
        let meta = self.meta.clone();
        let stream = async_stream(move |tx| async move {
            // A stream outlives any one request: its token is checked again now and then, so a
            // revoked device stops hearing about the namespace within REAUTH_INTERVAL.
            let mut reauth = tokio::time::interval(REAUTH_INTERVAL);
            reauth.tick().await;
            loop {
                let head = *heads.borrow_and_update();
                if head > cursor {
                    cursor = head;
                    if tx.send(Ok(SubscribeEvent { head })).await.is_err() {
                        return;
                    }
                }
                // A client that goes away closes the channel: end now, not at the next commit, so an
                // idle tenant does not keep a task (and a subscription slot) per departed client.
                tokio::select! {
                    changed = heads.changed() => if changed.is_err() { return },
                    () = tx.closed() => return,
                    _ = reauth.tick() => {
                        let (meta, token) = (meta.clone(), token.clone());
                        let still = blocking(move || authenticate(meta.as_ref(), token.as_deref())).await;
                        if let Err(status) = still {
                            let _ = tx.send(Err(status)).await;
                            return;
                        }
                    }
                }
            }
        });
        Ok(Response::new(stream))
    }

    async fn find_missing_chunks(
        &self,
        request: Request<FindMissingChunksRequest>,
    ) -> Result<Response<FindMissingChunksResponse>, Status> {
        let (who, _admitted) = self.admit(&request).await?;
        let ids = request.into_inner().ids;
        if ids.len() > MAX_IDS_PER_REQUEST {
            return Err(reject(
                Reason::TooLarge,
                None,
                format!(
                    "at most {MAX_IDS_PER_REQUEST} ids per request, got {}",
                    ids.len()
                ),
            ));
        }
        let keys = ids
            .iter()
            .map(|id| chunk_key(id, "chunk id", None))
            .collect::<Result<Vec<_>, _>>()?;
        let chunks = self.chunks.clone();
        let missing = blocking(move || {
            let mut missing = Vec::new();
            for key in keys {
                if chunks
                    .stored_len(who.tenant, &key)
                    .map_err(store_status)?
                    .is_none()
                {
                    missing.push(key.to_vec());
                }
            }
            Ok(missing)
        })
        .await?;
        Ok(Response::new(FindMissingChunksResponse { missing }))
    }

    async fn put_chunks(
        &self,
        request: Request<Streaming<PutChunkRequest>>,
    ) -> Result<Response<PutChunksResponse>, Status> {
        let (who, _admitted) = self.admit(&request).await?;
        let mut reply = PutChunksResponse::default();
        let received = self
            .receive_chunks(who.tenant, request.into_inner(), &mut reply)
            .await;
        // Also after a failed stream: what it stored is visible already and must become durable.
        let chunks = self.chunks.clone();
        let synced = blocking(move || chunks.sync().map_err(store_status)).await;
        received?;
        synced?;
        Ok(Response::new(reply))
    }

    type GetChunksStream = BoxStream<ChunkData>;

    async fn get_chunks(
        &self,
        request: Request<GetChunksRequest>,
    ) -> Result<Response<Self::GetChunksStream>, Status> {
        let (who, admitted) = self.admit(&request).await?;
        let ids = request.into_inner().ids;
        if ids.len() > MAX_IDS_PER_REQUEST {
            return Err(reject(
                Reason::TooLarge,
                None,
                format!(
                    "at most {MAX_IDS_PER_REQUEST} ids per request, got {}",
                    ids.len()
                ),
            ));
        }
        let keys = ids
            .iter()
            .map(|id| chunk_key(id, "chunk id", None))
            .collect::<Result<Vec<_>, _>>()?;
        let (chunks, metrics) = (self.chunks.clone(), self.metrics.clone());
        let stream = async_stream(move |tx| async move {
            // The request counts against its tenant until its last chunk is sent.
            let _admitted = admitted;
            for key in keys {
                let chunks = chunks.clone();
                let result = blocking(move || {
                    let data = chunks
                        .get(who.tenant, &key)
                        .map_err(store_status)?
                        .ok_or_else(|| {
                            Status::not_found(format!("chunk {} is not stored", hex::encode(key)))
                        })?;
                    if blake3::hash(&data).as_bytes() != &key {
                        tracing::error!(chunk = %hex::encode(key), "stored chunk is corrupt");
                        return Err(Status::data_loss(format!(
                            "chunk {} is corrupt in the server's store",
                            hex::encode(key)
                        )));
                    }
                    Ok(ChunkData {
                        id: key.to_vec(),
                        data,
                    })
                })
                .await;
                let failed = result.is_err();
                let len = result.as_ref().map_or(0, |chunk| chunk.data.len() as u64);
                if tx.send(result).await.is_err() || failed {
                    return;
                }
                // Handed to the connection (counted as sent even if the client leaves now).
                metrics.chunk_bytes_sent.inc_by(len);
            }
        });
        Ok(Response::new(stream))
    }

    async fn list_versions(
        &self,
        request: Request<ListVersionsRequest>,
    ) -> Result<Response<ListVersionsResponse>, Status> {
        let (who, _admitted) = self.admit(&request).await?;
        let req = request.into_inner();
        let id = node_key(&req.id, "id", None)?;
        let limit = page(req.limit, VERSIONS_PAGE);
        let before = if req.before_seq == 0 {
            u64::MAX >> 1
        } else {
            req.before_seq
        };
        let (entries, more) = self
            .meta_call(move |m| m.versions_page(who.tenant, &id, before, limit, PAGE_BUDGET_BYTES))
            .await?;
        if entries.is_empty() && req.before_seq == 0 {
            return Err(reject(Reason::NotFound, None, "no such node"));
        }
        let mut versions: Vec<Version> = entries
            .into_iter()
            .map(|mut e| {
                elide(&mut e.node, false);
                Version {
                    seq: e.seq,
                    kind: e.kind as i32,
                    node: Some(e.node),
                    device: e.device,
                    committed_at_ns: e.committed_at_ns,
                }
            })
            .collect();
        let fit = fitting(&versions, PAGE_OVERHEAD);
        let more = more || fit < versions.len();
        versions.truncate(fit);
        let next_before_seq = match versions.last() {
            Some(last) if more => last.seq,
            _ => 0,
        };
        Ok(Response::new(ListVersionsResponse {
            versions,
            next_before_seq,
        }))
    }

    async fn restore_version(
        &self,
        request: Request<RestoreVersionRequest>,
    ) -> Result<Response<CommitResponse>, Status> {
        let (who, _admitted) = self.admit(&request).await?;
        let req = request.into_inner();
        let id = node_key(&req.id, "id", None)?;
        let meta = self.meta.clone();
        let tenant = who.tenant;
        let applied = blocking(move || {
            let entry = meta.entry(who.tenant, req.seq).map_err(store_status)?;
            if entry.is_none() && req.seq <= meta.journal_floor(who.tenant).map_err(store_status)? {
                return Err(namespace::expired_version(req.seq));
            }
            let version = entry
                .filter(|e| e.node.id == id && e.kind == v1::ChangeKind::Upsert)
                .ok_or_else(|| reject(Reason::NotFound, None, "no such version of this node"))?;
            let mut result = None;
            meta.write(who.tenant, &mut |txn| {
                result = Some(namespace::restore_version(
                    txn,
                    &version,
                    req.base_revision,
                    &who.device,
                    now_ns(),
                )?);
                Ok(())
            })?;
            Ok(result.expect("a committed write produced a result"))
        })
        .await;
        self.metrics.record_commit(&applied, 1);
        let applied = applied?;
        self.heads.publish(tenant, applied.cursor);
        let mut applied = applied;
        elide_response(&mut applied.nodes);
        Ok(Response::new(CommitResponse {
            cursor: applied.cursor,
            nodes: applied.nodes,
            tag: applied.tag,
        }))
    }

    async fn list_deleted(
        &self,
        request: Request<ListDeletedRequest>,
    ) -> Result<Response<ListDeletedResponse>, Status> {
        let (who, _admitted) = self.admit(&request).await?;
        let req = request.into_inner();
        let limit = page(req.limit, DELETED_PAGE);
        let before = if req.before_seq == 0 {
            u64::MAX >> 1
        } else {
            req.before_seq
        };
        let (entries, more) = self
            .meta_call(move |m| m.deleted(who.tenant, before, limit, PAGE_BUDGET_BYTES))
            .await?;
        let mut nodes: Vec<DeletedNode> = entries
            .into_iter()
            .map(|mut e| {
                elide(&mut e.node, false);
                DeletedNode {
                    deleted_seq: e.seq,
                    node: Some(e.node),
                    device: e.device,
                    deleted_at_ns: e.committed_at_ns,
                }
            })
            .collect();
        let fit = fitting(&nodes, PAGE_OVERHEAD);
        let more = more || fit < nodes.len();
        nodes.truncate(fit);
        let next_before_seq = match nodes.last() {
            Some(last) if more => last.deleted_seq,
            _ => 0,
        };
        Ok(Response::new(ListDeletedResponse {
            nodes,
            next_before_seq,
        }))
    }

    async fn undelete(
        &self,
        request: Request<UndeleteRequest>,
    ) -> Result<Response<CommitResponse>, Status> {
        let (who, _admitted) = self.admit(&request).await?;
        let req = request.into_inner();
        let id = node_key(&req.id, "id", None)?;
        let parent = if req.parent_id.is_empty() {
            None
        } else {
            Some(node_key(&req.parent_id, "parent id", None)?)
        };
        let name = (!req.name.is_empty()).then_some(req.name);
        let meta = self.meta.clone();
        let tenant = who.tenant;
        let applied = blocking(move || {
            // Only the newest version: a node's history can hold many large lists.
            let last = meta
                .versions_page(who.tenant, &id, u64::MAX >> 1, 1, usize::MAX)
                .map_err(store_status)?
                .0
                .into_iter()
                .next();
            let Some(last) = last else {
                // No entry left: a node retention dropped (its id retired), or none at all. Only
                // asked (under the writer) once retention has dropped something.
                let mut retired = false;
                if meta.journal_floor(who.tenant).map_err(store_status)? > 0 {
                    meta.write(who.tenant, &mut |txn| {
                        retired = txn.node(&id).map_err(store_status)?.is_none()
                            && txn.id_ever_used(&id).map_err(store_status)?;
                        Ok(())
                    })?;
                }
                return Err(if retired {
                    namespace::expired_node(&id)
                } else {
                    reject(Reason::NotFound, None, "no such node")
                });
            };
            let mut result = None;
            meta.write(who.tenant, &mut |txn| {
                result = Some(namespace::undelete(
                    txn,
                    &last,
                    parent,
                    name.as_deref(),
                    &who.device,
                    now_ns(),
                )?);
                Ok(())
            })?;
            Ok(result.expect("a committed write produced a result"))
        })
        .await;
        self.metrics.record_commit(&applied, 1);
        let applied = applied?;
        self.heads.publish(tenant, applied.cursor);
        let mut applied = applied;
        elide_response(&mut applied.nodes);
        Ok(Response::new(CommitResponse {
            cursor: applied.cursor,
            nodes: applied.nodes,
            tag: applied.tag,
        }))
    }

    type GetManifestStream = BoxStream<ManifestPage>;

    async fn get_manifest(
        &self,
        request: Request<GetManifestRequest>,
    ) -> Result<Response<Self::GetManifestStream>, Status> {
        let (who, admitted) = self.admit(&request).await?;
        let req = request.into_inner();
        let id = node_key(&req.id, "id", None)?;
        let entry = self
            .meta_call(move |m| m.entry(who.tenant, req.revision))
            .await?
            .filter(|e| e.node.id == id)
            .ok_or_else(|| reject(Reason::NotFound, None, "no such version of this node"))?;
        let chunks = entry
            .node
            .attrs
            .and_then(|a| a.content)
            .map(|c| c.chunks)
            .ok_or_else(|| reject(Reason::KindMismatch, None, "that version has no content"))?;
        let stream = async_stream(move |tx| async move {
            // The request counts against its tenant until its last chunk is sent.
            let _admitted = admitted;
            let mut chunks = chunks.into_iter();
            loop {
                let page: Vec<_> = chunks.by_ref().take(MANIFEST_PAGE_CHUNKS).collect();
                if page.is_empty() {
                    return;
                }
                if tx.send(Ok(ManifestPage { chunks: page })).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(stream))
    }

    async fn put_manifest(
        &self,
        request: Request<Streaming<ManifestPage>>,
    ) -> Result<Response<PutManifestResponse>, Status> {
        let (who, _admitted) = self.admit(&request).await?;
        let mut incoming = request.into_inner();
        let mut chunks = Vec::new();
        while let Some(page) = self.next_upload_message(&mut incoming).await? {
            if page.chunks.len() > MANIFEST_PAGE_CHUNKS {
                return Err(reject(
                    Reason::TooLarge,
                    None,
                    format!(
                        "a manifest page holds at most {MANIFEST_PAGE_CHUNKS} chunks, got {}",
                        page.chunks.len()
                    ),
                ));
            }
            if chunks.len() + page.chunks.len() > MAX_MANIFEST_CHUNKS {
                return Err(reject(
                    Reason::TooLarge,
                    None,
                    format!("a manifest has at most {MAX_MANIFEST_CHUNKS} chunks"),
                ));
            }
            let start = chunks.len();
            for (i, chunk) in page.chunks.iter().enumerate() {
                chunks.push(check_chunk_ref(chunk, start + i)?);
            }
        }
        let chunk_count = chunks.len() as u64;
        let key = self.staging.put(who.tenant, chunks)?;
        Ok(Response::new(PutManifestResponse {
            manifest_ref: key.to_vec(),
            chunk_count,
        }))
    }

    async fn presign_uploads(
        &self,
        request: Request<PresignUploadsRequest>,
    ) -> Result<Response<PresignUploadsResponse>, Status> {
        let (who, _admitted) = self.admit(&request).await?;
        let store = self.presigner()?;
        let keys = presign::upload_keys(&request.into_inner().chunks)?;
        let signed = blocking({
            let keys = keys.clone();
            move || {
                store
                    .presign_uploads(who.tenant, &keys)
                    .map_err(store_status)
            }
        })
        .await?;
        self.metrics.record_presigned("PUT", signed.len());
        let uploads = keys
            .iter()
            .zip(signed)
            .map(|(id, (url, upload))| PresignedUpload {
                id: id.to_vec(),
                url,
                upload_ref: upload.to_vec(),
            })
            .collect();
        Ok(Response::new(PresignUploadsResponse {
            uploads,
            expires_in_seconds: PRESIGN_EXPIRY.as_secs() as u32,
        }))
    }

    async fn confirm_uploads(
        &self,
        request: Request<ConfirmUploadsRequest>,
    ) -> Result<Response<ConfirmUploadsResponse>, Status> {
        let (who, _admitted) = self.admit(&request).await?;
        let store = self.presigner()?;
        let uploads = presign::pending_uploads(&request.into_inner().uploads)?;
        let outcomes = blocking({
            let uploads = uploads.clone();
            move || Ok(store.confirm_uploads(who.tenant, &uploads))
        })
        .await?;
        // Every outcome counts, also those after a refusal: they are stored (or discarded) already.
        let mut reply = ConfirmUploadsResponse::default();
        let mut refusal = None;
        for ((id, _), outcome) in uploads.iter().zip(outcomes) {
            match outcome {
                Ok((how, len)) => {
                    self.metrics.chunk_bytes_confirmed.inc_by(len);
                    match how {
                        Confirmed::Stored => reply.stored += 1,
                        Confirmed::AlreadyPresent => reply.already_present += 1,
                    }
                }
                Err(error) => {
                    let why = match error {
                        ConfirmError::Missing => None,
                        ConfirmError::Store(_) => Some(UploadRefusal::Store),
                        ConfirmError::TooLarge(_) => Some(UploadRefusal::Malformed),
                        ConfirmError::Mismatch(_) => Some(UploadRefusal::HashMismatch),
                    };
                    if let Some(why) = why {
                        self.metrics.record_upload_refused(why);
                    }
                    if refusal.is_none() {
                        refusal = Some(presign::confirm_refusal(id, error));
                    }
                }
            }
        }
        match refusal {
            Some(status) => Err(status),
            None => Ok(Response::new(reply)),
        }
    }

    async fn presign_downloads(
        &self,
        request: Request<PresignDownloadsRequest>,
    ) -> Result<Response<PresignDownloadsResponse>, Status> {
        let (who, _admitted) = self.admit(&request).await?;
        let store = self.presigner()?;
        let keys = presign::download_keys(&request.into_inner().ids)?;
        let urls = blocking({
            let keys = keys.clone();
            move || {
                store
                    .presign_downloads(who.tenant, &keys)
                    .map_err(store_status)
            }
        })
        .await?;
        self.metrics.record_presigned("GET", urls.len());
        let downloads = keys
            .iter()
            .zip(urls)
            .map(|(id, url)| PresignedDownload {
                id: id.to_vec(),
                url,
            })
            .collect();
        Ok(Response::new(PresignDownloadsResponse {
            downloads,
            expires_in_seconds: PRESIGN_EXPIRY.as_secs() as u32,
        }))
    }
}

/// A response stream fed by a task through a small channel; the task stops when the client goes away.
fn async_stream<T, F, Fut>(producer: F) -> BoxStream<T>
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<Result<T, Status>>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(producer(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

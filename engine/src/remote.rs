//! The engine's connection to a BitVault server: the gRPC `Sync` client with the device token attached
//! to every call, and TLS verification for `https://` URLs (system roots, or a private CA).
//!
//! Chunk bytes take the presigned path (ADR-0011) when the server offers it (`Hello`): uploads are
//! PUT to the object store and confirmed (the server verifies them), downloads are GET from it. If
//! that fails at the HTTP level (or the server stops offering it), the same chunks go through the
//! gRPC streams instead, and the presigned path rests for [`PRESIGNED_REST`].

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use bvfs_proto::v1::{self, sync_client::SyncClient};
use bvfs_proto::{AUTHORIZATION, MAX_MESSAGE_BYTES};
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::chunking::{ChunkId, ChunkRef};
use crate::presigned::{HttpError, HttpTransfer};

/// How long the presigned path rests after an HTTP-level failure (chunks go through the server).
pub const PRESIGNED_REST: Duration = Duration::from_secs(60);
/// Presigned transfers one call runs at once.
const PRESIGNED_CONCURRENCY: usize = 8;

/// Where the server is and how to prove who we are.
#[derive(Debug, Clone)]
pub struct RemoteConfig {
    /// `http://host:port` (loopback or trusted networks) or `https://host:port`.
    pub url: String,
    /// The device token from `bvfs admin add-user`.
    pub token: String,
    /// A PEM file with the CA that signed the server certificate, for private CAs. Without it,
    /// `https://` servers are verified against the system's trusted roots.
    pub ca_cert: Option<PathBuf>,
    /// How long to wait for a TCP/TLS connection.
    pub connect_timeout: Duration,
}

impl RemoteConfig {
    pub fn new(url: impl Into<String>, token: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            token: token.into(),
            ca_cert: None,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// Why the client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid server URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("the token contains characters that cannot be sent in a header")]
    BadToken,
    #[error("cannot read the CA certificate {path}: {source}")]
    CaCert {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS setup failed: {0}")]
    Tls(String),
    #[error("cannot connect to {url}: {reason}")]
    Unreachable { url: String, reason: String },
}

/// Adds `authorization: Bearer <token>` to each request.
#[derive(Clone)]
pub struct BearerToken(MetadataValue<tonic::metadata::Ascii>);

impl Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request.metadata_mut().insert(AUTHORIZATION, self.0.clone());
        Ok(request)
    }
}

/// The generated client with authentication attached. Cheap to clone; clones share one connection.
pub type SyncApi = SyncClient<InterceptedService<Channel, BearerToken>>;

/// Builds the endpoint (URL, TLS, timeouts) for a configuration.
fn endpoint(config: &RemoteConfig) -> Result<Endpoint, ConnectError> {
    let bad_url = |reason: String| ConnectError::BadUrl {
        url: config.url.clone(),
        reason,
    };
    let mut endpoint =
        Endpoint::from_shared(config.url.clone()).map_err(|e| bad_url(e.to_string()))?;
    match endpoint.uri().scheme_str() {
        Some("https") => {
            let mut tls = ClientTlsConfig::new();
            tls = match &config.ca_cert {
                Some(path) => {
                    let pem = std::fs::read(path).map_err(|source| ConnectError::CaCert {
                        path: path.clone(),
                        source,
                    })?;
                    tls.ca_certificate(Certificate::from_pem(pem))
                }
                None => tls.with_native_roots(),
            };
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| ConnectError::Tls(e.to_string()))?;
        }
        Some("http") => {}
        other => {
            return Err(bad_url(format!(
                "the scheme must be http or https, not {other:?}"
            )));
        }
    }
    Ok(endpoint
        .connect_timeout(config.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true))
}

fn api(channel: Channel, token: BearerToken) -> SyncApi {
    SyncClient::with_interceptor(channel, token)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

fn bearer(config: &RemoteConfig) -> Result<BearerToken, ConnectError> {
    format!("Bearer {}", config.token)
        .parse()
        .map(BearerToken)
        .map_err(|_| ConnectError::BadToken)
}

/// Connects now, failing if the server cannot be reached.
pub async fn connect(config: &RemoteConfig) -> Result<SyncApi, ConnectError> {
    let token = bearer(config)?;
    let channel = endpoint(config)?
        .connect()
        .await
        .map_err(|e| ConnectError::Unreachable {
            url: config.url.clone(),
            reason: error_chain(&e),
        })?;
    Ok(api(channel, token))
}

/// A client that connects on first use and reconnects after failures: what an offline-tolerant engine
/// wants, since the server may be down when the engine starts.
pub fn connect_lazy(config: &RemoteConfig) -> Result<SyncApi, ConnectError> {
    let token = bearer(config)?;
    Ok(api(endpoint(config)?.connect_lazy(), token))
}

/// An error and its causes on one line (transport errors hide the useful part in their sources).
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// What went wrong talking to the server, in the terms the engine acts on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RemoteError {
    /// The server could not be reached or did not answer: go offline, retry later. The request may or
    /// may not have been applied.
    #[error("the server is unreachable: {0}")]
    Unavailable(String),
    /// The server refused the request; `reason` is its `bvfs-reason` (e.g. `stale-revision`).
    #[error("the server refused the request ({reason}): {message}")]
    Rejected {
        code: tonic::Code,
        reason: String,
        message: String,
        op_index: Option<usize>,
    },
    /// The token is not valid: the user must fix the configuration.
    #[error("the server does not accept this device's token: {0}")]
    Unauthenticated(String),
    /// Data arrived corrupted (a chunk's bytes do not match its id), or the server reports corruption.
    #[error("corrupt data: {0}")]
    Corrupt(String),
}

impl RemoteError {
    /// Whether retrying later may succeed without anything else changing.
    pub fn is_transient(&self) -> bool {
        matches!(self, RemoteError::Unavailable(_) | RemoteError::Corrupt(_))
    }

    /// Whether a message was over gRPC's size limit (the server's answer or our request): the caller
    /// should ask for less, not repeat the same request (see [`crate::bounded::PageLimit`]).
    pub fn is_too_large(&self) -> bool {
        match self {
            RemoteError::Rejected {
                code,
                reason,
                message,
                ..
            } => reason == "too-large" || bvfs_proto::is_message_too_large(*code, message),
            // gRPC's RESOURCE_EXHAUSTED maps to `Unavailable`.
            RemoteError::Unavailable(message) => {
                bvfs_proto::is_message_too_large(tonic::Code::ResourceExhausted, message)
            }
            _ => false,
        }
    }

    /// Whether the server itself refused the request, so nothing of it was applied: a status carrying
    /// the server's `bvfs-reason`, which its handlers set on every refusal. Anything else after a
    /// commit was sent (transport errors, an answer over the message limit, `INTERNAL`, `UNKNOWN`,
    /// deadlines, cancellation) may follow a commit that landed; only the journal can tell.
    pub fn is_refusal(&self) -> bool {
        matches!(self, RemoteError::Rejected { reason, .. } if !reason.is_empty())
    }

    /// Whether the server refused a commit because a base revision was stale.
    pub fn is_stale(&self) -> bool {
        matches!(self, RemoteError::Rejected { reason, .. } if reason == "stale-revision")
    }

    /// Whether the server refused a request because it no longer holds the journal position the
    /// request came from (`journal-diverged`, `cursor-ahead`): it was restored from an older backup or
    /// otherwise rewound, and this device must re-base its view on the server's (see
    /// `Engine::rebase`).
    pub fn is_diverged(&self) -> bool {
        matches!(self, RemoteError::Rejected { reason, .. }
            if reason == "journal-diverged" || reason == "cursor-ahead")
    }
}

impl From<tonic::Status> for RemoteError {
    fn from(status: tonic::Status) -> Self {
        let meta = |key: &str| {
            status
                .metadata()
                .get(key)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        match status.code() {
            tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Cancelled
            | tonic::Code::Unknown
            | tonic::Code::Internal
            | tonic::Code::ResourceExhausted => {
                RemoteError::Unavailable(status.message().to_string())
            }
            tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
                RemoteError::Unauthenticated(status.message().to_string())
            }
            tonic::Code::DataLoss => RemoteError::Corrupt(status.message().to_string()),
            code => RemoteError::Rejected {
                code,
                reason: meta("bvfs-reason").unwrap_or_default(),
                message: status.message().to_string(),
                op_index: meta("bvfs-op-index").and_then(|i| i.parse().ok()),
            },
        }
    }
}

/// A position in a namespace's journal: a cursor and the lineage tag of the entry there, which
/// together name one history of the journal (see the proto's "Identity and lineage"). Tag 0 is not
/// checked by the server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Position {
    pub cursor: u64,
    pub tag: u64,
}

impl Position {
    pub fn new(cursor: u64, tag: u64) -> Self {
        Self { cursor, tag }
    }
}

/// Who the server says we are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub tenant: String,
    pub device: String,
    pub head: u64,
    /// The tag of the entry at `head`.
    pub head_tag: u64,
    /// The namespace's identity (empty from a server that predates it).
    pub namespace: Vec<u8>,
    /// Whether the server offers presigned chunk transfer (ADR-0011).
    pub presigned_transfer: bool,
}

/// A stream of "the namespace advanced to N" notifications.
pub type HeadStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<u64, RemoteError>> + Send>>;

/// The engine's view of the server. The real one is [`GrpcRemote`]; simulations wrap it to inject
/// faults. Chunk bytes returned by [`Remote::get_chunks`] are NOT yet verified: callers check them.
#[async_trait::async_trait]
pub trait Remote: Send + Sync + 'static {
    async fn hello(&self) -> Result<Hello, RemoteError>;
    /// Commits `ops`, planned from REMOTE at position `at`.
    async fn commit(
        &self,
        ops: Vec<v1::Op>,
        at: Position,
    ) -> Result<v1::CommitResponse, RemoteError>;
    /// The journal after `from`.
    async fn list_changes(
        &self,
        from: Position,
        limit: u32,
    ) -> Result<v1::ListChangesResponse, RemoteError>;
    /// A page of the snapshot at `at`.
    async fn snapshot(
        &self,
        at: Position,
        after_id: Vec<u8>,
        limit: u32,
    ) -> Result<v1::SnapshotResponse, RemoteError>;
    async fn subscribe(&self, cursor: u64) -> Result<HeadStream, RemoteError>;
    /// Which of these chunks the server lacks.
    async fn find_missing(&self, ids: Vec<ChunkId>) -> Result<Vec<ChunkId>, RemoteError>;
    /// Uploads whole chunks (one stream).
    async fn put_chunks(&self, chunks: Vec<(ChunkId, Vec<u8>)>) -> Result<(), RemoteError>;
    /// Downloads chunks, in the order asked.
    async fn get_chunks(&self, ids: Vec<ChunkId>) -> Result<Vec<(ChunkId, Vec<u8>)>, RemoteError>;
    /// When chunk bytes last arrived from the server, on any call (`None`: not tracked). The
    /// fetcher lets a download run past its timeout while this stays recent: a server that is
    /// slow (a thin link, a loaded store) is not an unreachable one.
    fn last_progress(&self) -> Option<Instant> {
        None
    }
    /// The whole chunk list of node `id` at journal sequence `revision` (for a list the server
    /// elided). Remotes that do not pass it on refuse it, so content past the inline bound fails.
    async fn get_manifest(&self, id: Vec<u8>, revision: u64) -> Result<Vec<ChunkRef>, RemoteError> {
        let _ = (id, revision);
        Err(unimplemented_call("GetManifest"))
    }
    /// Stages a chunk list for a commit; returns its `manifest_ref`.
    async fn put_manifest(&self, chunks: Vec<ChunkRef>) -> Result<Vec<u8>, RemoteError> {
        let _ = chunks;
        Err(unimplemented_call("PutManifest"))
    }
    /// A page of node `id`'s recorded versions, newest first, older than `before_seq` (0: from
    /// the newest). Remotes that do not pass it on refuse it (`bvfs history` then says so).
    async fn list_versions(
        &self,
        id: Vec<u8>,
        before_seq: u64,
        limit: u32,
    ) -> Result<v1::ListVersionsResponse, RemoteError> {
        let _ = (id, before_seq, limit);
        Err(unimplemented_call("ListVersions"))
    }
    /// Makes version `seq` of node `id` current again, compared against `base_revision`.
    async fn restore_version(
        &self,
        id: Vec<u8>,
        seq: u64,
        base_revision: u64,
    ) -> Result<v1::CommitResponse, RemoteError> {
        let _ = (id, seq, base_revision);
        Err(unimplemented_call("RestoreVersion"))
    }
    /// A page of the deleted nodes, newest deletion first, older than `before_seq`.
    async fn list_deleted(
        &self,
        before_seq: u64,
        limit: u32,
    ) -> Result<v1::ListDeletedResponse, RemoteError> {
        let _ = (before_seq, limit);
        Err(unimplemented_call("ListDeleted"))
    }
    /// Brings deleted node `id` back under its last parent and name.
    async fn undelete(&self, id: Vec<u8>) -> Result<v1::CommitResponse, RemoteError> {
        let _ = id;
        Err(unimplemented_call("Undelete"))
    }
}

fn unimplemented_call(call: &str) -> RemoteError {
    RemoteError::Rejected {
        code: tonic::Code::Unimplemented,
        reason: String::new(),
        message: format!("this remote does not support {call}"),
        op_index: None,
    }
}

/// The real server over gRPC.
#[derive(Clone)]
pub struct GrpcRemote {
    api: SyncApi,
    presigned: Arc<PresignedPath>,
    /// When chunk bytes last arrived ([`Remote::last_progress`]), stamped by every download
    /// message and presigned GET.
    progress: Arc<parking_lot::Mutex<Option<Instant>>>,
}

/// Stamps `progress` with now: chunk bytes arrived.
fn mark_progress(progress: &parking_lot::Mutex<Option<Instant>>) {
    *progress.lock() = Some(Instant::now());
}

/// Whether, and how, chunk bytes take the presigned path.
#[derive(Default)]
struct PresignedPath {
    /// What the server's last `Hello` said: [`UNKNOWN`], [`OFFERED`] or [`NOT_OFFERED`].
    offered: AtomicU8,
    /// The HTTP client, made on first use (`Err`: it could not be set up; gRPC only).
    http: std::sync::OnceLock<Result<HttpTransfer, String>>,
    /// Until when the path rests after a failure.
    resting_until: parking_lot::Mutex<Option<Instant>>,
}

const UNKNOWN: u8 = 0;
const OFFERED: u8 = 1;
const NOT_OFFERED: u8 = 2;

/// Why the presigned path did not move the chunks.
enum PresignedFailure {
    /// Send them through the server instead (after this reason, logged).
    Fallback(String),
    /// The store lacks a chunk asked for: the server's own answer says which (no fault of the path).
    NotStored,
    /// The server no longer offers presigned transfer (restarted without it): gRPC from now on,
    /// until a `Hello` says otherwise.
    Withdrawn,
    /// A failure the gRPC path would share (the server is unreachable, the token refused).
    Remote(RemoteError),
}

impl From<RemoteError> for PresignedFailure {
    fn from(error: RemoteError) -> Self {
        match error {
            RemoteError::Rejected { ref reason, .. } if reason == "presign-unavailable" => {
                PresignedFailure::Withdrawn
            }
            // A pending upload the server did not find or refused (`not-found`, `invalid-chunk`:
            // changed on its way through the store): the gRPC path sends and checks them again.
            RemoteError::Rejected { ref reason, .. }
                if reason == "not-found" || reason == "invalid-chunk" =>
            {
                PresignedFailure::Fallback(error.to_string())
            }
            RemoteError::Corrupt(message) => PresignedFailure::Fallback(message),
            other => PresignedFailure::Remote(other),
        }
    }
}

impl GrpcRemote {
    /// A remote that connects lazily and reconnects on its own, so the engine can start offline.
    pub fn new(config: &RemoteConfig) -> Result<Self, ConnectError> {
        Ok(Self::from_api(connect_lazy(config)?))
    }

    pub fn from_api(api: SyncApi) -> Self {
        Self {
            api,
            presigned: Arc::default(),
            progress: Arc::default(),
        }
    }

    /// The HTTP client of the presigned path, if the server offers it and it is not resting. Asks
    /// the server (`Hello`) once if no answer told yet.
    async fn presigned_http(&self) -> Option<HttpTransfer> {
        let path = &self.presigned;
        if path.offered.load(Ordering::Relaxed) == UNKNOWN && self.hello().await.is_err() {
            return None;
        }
        if path.offered.load(Ordering::Relaxed) != OFFERED {
            return None;
        }
        if let Some(until) = *path.resting_until.lock()
            && Instant::now() < until
        {
            return None;
        }
        let http = path.http.get_or_init(|| {
            HttpTransfer::new().inspect_err(|e| {
                tracing::warn!("presigned transfer is off: {e}; chunks go through the server");
            })
        });
        http.as_ref().ok().cloned()
    }

    /// What the caller does after the presigned path failed: rest it, forget it, or neither.
    fn after_failure(&self, what: &str, failure: PresignedFailure) -> Result<(), RemoteError> {
        match failure {
            PresignedFailure::Remote(e) => return Err(e),
            PresignedFailure::Fallback(reason) => self.rest_presigned(what, &reason),
            PresignedFailure::NotStored => {}
            PresignedFailure::Withdrawn => {
                tracing::info!("the server no longer offers presigned transfer; using gRPC");
                self.presigned.offered.store(NOT_OFFERED, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Logs why the presigned path failed and rests it.
    fn rest_presigned(&self, what: &str, reason: &str) {
        tracing::warn!(
            "presigned {what} failed ({reason}); sending the chunks through the server, and so for \
             the next {} s",
            PRESIGNED_REST.as_secs()
        );
        *self.presigned.resting_until.lock() = Some(Instant::now() + PRESIGNED_REST);
    }

    /// Uploads `chunks` through presigned PUTs, then has the server verify and store them.
    async fn put_presigned(
        &self,
        http: &HttpTransfer,
        chunks: &[(ChunkId, Vec<u8>)],
    ) -> Result<(), PresignedFailure> {
        use futures::{StreamExt, TryStreamExt};
        for group in chunks.chunks(bvfs_proto::MAX_PRESIGN_CHUNKS) {
            let request = v1::PresignUploadsRequest {
                chunks: group
                    .iter()
                    .map(|(id, data)| v1::ChunkRef {
                        id: id.0.to_vec(),
                        length: data.len() as u32,
                    })
                    .collect(),
            };
            let answer = self
                .api
                .clone()
                .presign_uploads(request)
                .await
                .map_err(RemoteError::from)?
                .into_inner();
            if answer.uploads.len() != group.len()
                || answer
                    .uploads
                    .iter()
                    .zip(group)
                    .any(|(u, (id, _))| u.id != id.0)
            {
                return Err(PresignedFailure::Fallback(
                    "the server's PresignUploads answer does not match the request".into(),
                ));
            }
            // Owned URLs and bytes: `async_trait`'s boxed future cannot hold closures over borrows.
            let puts: Vec<(String, Vec<u8>)> = answer
                .uploads
                .iter()
                .zip(group)
                .map(|(upload, (_, data))| (upload.url.clone(), data.clone()))
                .collect();
            futures::stream::iter(puts)
                .map(|(url, data)| {
                    let http = http.clone();
                    async move { http.put(&url, data).await }
                })
                .buffer_unordered(PRESIGNED_CONCURRENCY)
                .try_collect::<Vec<()>>()
                .await
                .map_err(|e| PresignedFailure::Fallback(e.to_string()))?;
            let confirm = v1::ConfirmUploadsRequest {
                uploads: answer
                    .uploads
                    .into_iter()
                    .map(|u| v1::PendingUpload {
                        id: u.id,
                        upload_ref: u.upload_ref,
                    })
                    .collect(),
            };
            self.api
                .clone()
                .confirm_uploads(confirm)
                .await
                .map_err(RemoteError::from)?;
        }
        Ok(())
    }

    /// Downloads `ids` through presigned GETs, in order, unverified (as [`Remote::get_chunks`]).
    async fn get_presigned(
        &self,
        http: &HttpTransfer,
        ids: &[ChunkId],
    ) -> Result<Vec<(ChunkId, Vec<u8>)>, PresignedFailure> {
        use futures::{StreamExt, TryStreamExt};
        let mut out = Vec::with_capacity(ids.len());
        for group in ids.chunks(bvfs_proto::MAX_PRESIGN_CHUNKS) {
            let answer = self
                .api
                .clone()
                .presign_downloads(v1::PresignDownloadsRequest {
                    ids: group.iter().map(|id| id.0.to_vec()).collect(),
                })
                .await
                .map_err(RemoteError::from)?
                .into_inner();
            if answer.downloads.len() != group.len()
                || answer
                    .downloads
                    .iter()
                    .zip(group)
                    .any(|(d, id)| d.id != id.0)
            {
                return Err(PresignedFailure::Fallback(
                    "the server's PresignDownloads answer does not match the request".into(),
                ));
            }
            let urls: Vec<String> = answer.downloads.into_iter().map(|d| d.url).collect();
            let fetched: Vec<Vec<u8>> = futures::stream::iter(urls)
                .map(|url| {
                    let (http, progress) = (http.clone(), Arc::clone(&self.progress));
                    async move {
                        let got = http.get(&url).await;
                        if got.is_ok() {
                            mark_progress(&progress);
                        }
                        got
                    }
                })
                .buffered(PRESIGNED_CONCURRENCY)
                .try_collect()
                .await
                .map_err(|e| match e {
                    HttpError::NotFound => PresignedFailure::NotStored,
                    HttpError::Failed(reason) => PresignedFailure::Fallback(reason),
                })?;
            out.extend(group.iter().copied().zip(fetched));
        }
        Ok(out)
    }

    /// The gRPC `PutChunks` stream.
    async fn put_chunks_grpc(&self, chunks: Vec<(ChunkId, Vec<u8>)>) -> Result<(), RemoteError> {
        let messages: Vec<_> = chunks
            .into_iter()
            .map(|(id, data)| v1::PutChunkRequest {
                id: id.0.to_vec(),
                data,
            })
            .collect();
        self.api
            .clone()
            .put_chunks(futures::stream::iter(messages))
            .await?;
        Ok(())
    }

    /// The gRPC `GetChunks` stream.
    async fn get_chunks_grpc(
        &self,
        ids: Vec<ChunkId>,
    ) -> Result<Vec<(ChunkId, Vec<u8>)>, RemoteError> {
        use futures::StreamExt;
        let mut stream = self
            .api
            .clone()
            .get_chunks(v1::GetChunksRequest {
                ids: ids.iter().map(|id| id.0.to_vec()).collect(),
            })
            .await?
            .into_inner();
        mark_progress(&self.progress);
        let mut out = Vec::with_capacity(ids.len());
        while let Some(message) = stream.next().await {
            let message = message?;
            mark_progress(&self.progress);
            out.push((chunk_id(&message.id)?, message.data));
        }
        if out.len() != ids.len() {
            return Err(RemoteError::Unavailable(format!(
                "the chunk stream ended after {} of {} chunks",
                out.len(),
                ids.len()
            )));
        }
        Ok(out)
    }
}

fn chunk_id(bytes: &[u8]) -> Result<ChunkId, RemoteError> {
    ChunkId::from_slice(bytes)
        .ok_or_else(|| RemoteError::Corrupt("the server sent a malformed chunk id".into()))
}

#[async_trait::async_trait]
impl Remote for GrpcRemote {
    async fn hello(&self) -> Result<Hello, RemoteError> {
        let reply = self
            .api
            .clone()
            .hello(v1::HelloRequest {})
            .await?
            .into_inner();
        let offered = if reply.presigned_transfer {
            OFFERED
        } else {
            NOT_OFFERED
        };
        self.presigned.offered.store(offered, Ordering::Relaxed);
        Ok(Hello {
            tenant: reply.tenant,
            device: reply.device,
            head: reply.head,
            head_tag: reply.head_tag,
            namespace: reply.namespace_id,
            presigned_transfer: reply.presigned_transfer,
        })
    }

    async fn commit(
        &self,
        ops: Vec<v1::Op>,
        at: Position,
    ) -> Result<v1::CommitResponse, RemoteError> {
        Ok(self
            .api
            .clone()
            .commit(v1::CommitRequest {
                ops,
                cursor: at.cursor,
                cursor_tag: at.tag,
            })
            .await?
            .into_inner())
    }

    async fn list_changes(
        &self,
        from: Position,
        limit: u32,
    ) -> Result<v1::ListChangesResponse, RemoteError> {
        Ok(self
            .api
            .clone()
            .list_changes(v1::ListChangesRequest {
                cursor: from.cursor,
                cursor_tag: from.tag,
                limit,
            })
            .await?
            .into_inner())
    }

    async fn snapshot(
        &self,
        at: Position,
        after_id: Vec<u8>,
        limit: u32,
    ) -> Result<v1::SnapshotResponse, RemoteError> {
        Ok(self
            .api
            .clone()
            .snapshot(v1::SnapshotRequest {
                at_cursor: at.cursor,
                after_id,
                limit,
                at_cursor_tag: at.tag,
            })
            .await?
            .into_inner())
    }

    async fn subscribe(&self, cursor: u64) -> Result<HeadStream, RemoteError> {
        use futures::StreamExt;
        let stream = self
            .api
            .clone()
            .subscribe(v1::SubscribeRequest { cursor })
            .await?
            .into_inner();
        Ok(Box::pin(stream.map(|event| {
            event.map(|e| e.head).map_err(RemoteError::from)
        })))
    }

    async fn find_missing(&self, ids: Vec<ChunkId>) -> Result<Vec<ChunkId>, RemoteError> {
        let ids = ids.iter().map(|id| id.0.to_vec()).collect();
        let reply = self
            .api
            .clone()
            .find_missing_chunks(v1::FindMissingChunksRequest { ids })
            .await?
            .into_inner();
        reply.missing.iter().map(|id| chunk_id(id)).collect()
    }

    async fn put_chunks(&self, chunks: Vec<(ChunkId, Vec<u8>)>) -> Result<(), RemoteError> {
        if let Some(http) = self.presigned_http().await {
            match self.put_presigned(&http, &chunks).await {
                Ok(()) => return Ok(()),
                Err(failure) => self.after_failure("upload", failure)?,
            }
        }
        self.put_chunks_grpc(chunks).await
    }

    async fn get_chunks(&self, ids: Vec<ChunkId>) -> Result<Vec<(ChunkId, Vec<u8>)>, RemoteError> {
        if let Some(http) = self.presigned_http().await {
            match self.get_presigned(&http, &ids).await {
                Ok(chunks) => return Ok(chunks),
                // A chunk the store lacks: the gRPC answer says which.
                Err(failure) => self.after_failure("download", failure)?,
            }
        }
        self.get_chunks_grpc(ids).await
    }

    fn last_progress(&self) -> Option<Instant> {
        *self.progress.lock()
    }

    async fn get_manifest(&self, id: Vec<u8>, revision: u64) -> Result<Vec<ChunkRef>, RemoteError> {
        use futures::StreamExt;
        let mut stream = self
            .api
            .clone()
            .get_manifest(v1::GetManifestRequest { id, revision })
            .await?
            .into_inner();
        let mut out = Vec::new();
        while let Some(page) = stream.next().await {
            for chunk in page?.chunks {
                out.push(ChunkRef {
                    id: chunk_id(&chunk.id)?,
                    len: chunk.length,
                });
            }
        }
        Ok(out)
    }

    async fn list_versions(
        &self,
        id: Vec<u8>,
        before_seq: u64,
        limit: u32,
    ) -> Result<v1::ListVersionsResponse, RemoteError> {
        Ok(self
            .api
            .clone()
            .list_versions(v1::ListVersionsRequest {
                id,
                before_seq,
                limit,
            })
            .await?
            .into_inner())
    }

    async fn restore_version(
        &self,
        id: Vec<u8>,
        seq: u64,
        base_revision: u64,
    ) -> Result<v1::CommitResponse, RemoteError> {
        Ok(self
            .api
            .clone()
            .restore_version(v1::RestoreVersionRequest {
                id,
                seq,
                base_revision,
            })
            .await?
            .into_inner())
    }

    async fn list_deleted(
        &self,
        before_seq: u64,
        limit: u32,
    ) -> Result<v1::ListDeletedResponse, RemoteError> {
        Ok(self
            .api
            .clone()
            .list_deleted(v1::ListDeletedRequest { before_seq, limit })
            .await?
            .into_inner())
    }

    async fn undelete(&self, id: Vec<u8>) -> Result<v1::CommitResponse, RemoteError> {
        Ok(self
            .api
            .clone()
            .undelete(v1::UndeleteRequest {
                id,
                parent_id: Vec::new(),
                name: String::new(),
            })
            .await?
            .into_inner())
    }

    async fn put_manifest(&self, chunks: Vec<ChunkRef>) -> Result<Vec<u8>, RemoteError> {
        let count = chunks.len() as u64;
        let chunks = std::sync::Arc::new(chunks);
        let pages = chunks.len().div_ceil(bvfs_proto::MANIFEST_PAGE_CHUNKS);
        // Pages are encoded one at a time as the stream is polled, not all up front.
        let stream = futures::stream::iter((0..pages).map(move |page| {
            let start = page * bvfs_proto::MANIFEST_PAGE_CHUNKS;
            let end = (start + bvfs_proto::MANIFEST_PAGE_CHUNKS).min(chunks.len());
            v1::ManifestPage {
                chunks: chunks[start..end]
                    .iter()
                    .map(|c| v1::ChunkRef {
                        id: c.id.0.to_vec(),
                        length: c.len,
                    })
                    .collect(),
            }
        }));
        let reply = self.api.clone().put_manifest(stream).await?.into_inner();
        if reply.chunk_count != count {
            return Err(RemoteError::Corrupt(format!(
                "the server staged {} of the manifest's {count} chunks",
                reply.chunk_count
            )));
        }
        Ok(reply.manifest_ref)
    }
}

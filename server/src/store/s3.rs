//! Chunks in an S3-compatible object store: one object per chunk at
//! `PREFIX/chunks/<tenant>/<first byte>/<id hex>`.
//!
//! Keys are content addresses scoped by tenant, so dedup is per tenant and one tenant never reaches
//! another's bytes. Puts are idempotent and never overwrite: `If-None-Match: *` (a second upload of
//! a chunk is answered "already exists"; a store that ignores the header rewrites the same bytes),
//! with a SHA-256 checksum the store verifies on receipt. The service has checked the chunk's BLAKE3
//! before [`ChunkStore::put`] and checks it again on every read.
//!
//! Durability: a successful PUT is durable (S3's contract), so a chunk `stored_len` reports is
//! already safe and [`ChunkStore::sync`] has nothing to do. If the store is unreachable, every call
//! fails (after a few quick retries) and the service refuses the upload or the commit: nothing is
//! acknowledged that is not stored. Chunks are at most `MAX_CHUNK_BYTES` (256 KiB), so a single PUT
//! always fits; multipart uploads are never needed.
//!
//! Presigned transfer (ADR-0011, `--presigned-transfer`): clients PUT chunks to *pending* objects at
//! `PREFIX/pending/<tenant>/<id hex>/<upload ref hex>` through URLs this store signs, never to a
//! chunk's key; [`S3ChunkStore::confirm_uploads`] reads a pending object, checks its size and BLAKE3,
//! stores the verified bytes under the chunk's key and deletes it. Downloads are presigned GETs of
//! chunk keys. Every key is made here from the authenticated tenant and a 32-byte id (and a ref the
//! server drew), so no URL reaches another tenant's objects. Pending objects nobody confirmed are
//! deleted by `bvfs admin gc` ([`ChunkStore::sweep_pending`]).
//!
//! Configuration comes from the standard environment: `AWS_ENDPOINT_URL` (any S3-compatible
//! service; plain `http://` is allowed for it), `AWS_REGION`, `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN` (or the instance's role when no keys are given).

use std::sync::Arc;
use std::time::Duration;

use bvfs_proto::MAX_CHUNK_BYTES;
use object_store::aws::{AmazonS3, AmazonS3Builder, Checksum};
use object_store::path::Path;
use object_store::signer::{Method, Signer};
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
    RetryConfig,
};

use super::io_runtime::IoRuntime;
use super::{ChunkKey, ChunkStore, PendingSweep, StoreError, StoreResult, StoredChunk, TenantId};

/// How long a presigned URL stays valid: long enough for a batch of chunks on a slow link, short
/// enough that a leaked URL is soon worthless.
pub const PRESIGN_EXPIRY: Duration = Duration::from_secs(15 * 60);

/// Pending uploads one `ConfirmUploads` verifies at once (each a GET, a PUT and a DELETE).
const CONFIRM_CONCURRENCY: usize = 8;

/// Names one pending upload: 16 random bytes the server drew when it signed the URL.
pub type UploadRef = [u8; 16];

/// How a verified pending upload ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirmed {
    /// Stored under the chunk's key.
    Stored,
    /// The chunk was stored already (by another upload); nothing written.
    AlreadyPresent,
}

/// Why a pending upload was not stored.
#[derive(Debug, thiserror::Error)]
pub enum ConfirmError {
    /// No such pending object: never uploaded, confirmed already, or collected after expiring.
    #[error(
        "no pending upload of this chunk under this ref (never uploaded, already confirmed, or expired)"
    )]
    Missing,
    /// The pending object is larger than any chunk (deleted).
    #[error("the uploaded object is {0} bytes; a chunk is 1 to {MAX_CHUNK_BYTES}")]
    TooLarge(u64),
    /// The bytes do not hash to the id (deleted).
    #[error("the uploaded bytes hash to {0}, not to the chunk id")]
    Mismatch(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How long one request may take before it is abandoned (a chunk is at most 256 KiB).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Retries of a failed request, all within [`RETRY_WINDOW`]: enough for a blip, short enough
/// that an unreachable store fails a request well within the client's patience.
const RETRIES: usize = 3;
const RETRY_WINDOW: Duration = Duration::from_secs(10);

/// Where chunks live: `s3://BUCKET[/PREFIX]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    pub bucket: String,
    /// Without leading or trailing slashes; may be empty.
    pub prefix: String,
}

impl S3Location {
    /// Parses `s3://BUCKET[/PREFIX]`.
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| format!("{url:?} is not an s3://BUCKET[/PREFIX] URL"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(format!("{url:?} names no bucket (s3://BUCKET[/PREFIX])"));
        }
        Ok(Self {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
        })
    }
}

impl std::fmt::Display for S3Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.prefix.as_str() {
            "" => write!(f, "s3://{}", self.bucket),
            prefix => write!(f, "s3://{}/{prefix}", self.bucket),
        }
    }
}

/// Chunks in an S3 bucket.
pub struct S3ChunkStore {
    store: Arc<AmazonS3>,
    location: S3Location,
    rt: Arc<IoRuntime>,
}

fn s3_err(what: &str, e: object_store::Error) -> StoreError {
    StoreError::Chunks(format!("{what}: {e}"))
}

impl S3ChunkStore {
    /// Opens the bucket at `location` with the configuration in the environment, and checks that
    /// it answers (a missing bucket or a refused key fails here, not at the first upload).
    pub fn open(location: S3Location, rt: Arc<IoRuntime>) -> StoreResult<Self> {
        // reqwest's rustls needs a process-wide provider: ring, as tonic uses (no aws-lc). Already
        // installed is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&location.bucket)
            .with_checksum_algorithm(Checksum::SHA256)
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(100),
                    max_backoff: Duration::from_secs(2),
                    base: 2.0,
                },
                max_retries: RETRIES,
                retry_timeout: RETRY_WINDOW,
            });
        let mut client = ClientOptions::new()
            .with_timeout(REQUEST_TIMEOUT)
            .with_connect_timeout(CONNECT_TIMEOUT);
        if let Ok(endpoint) = std::env::var("AWS_ENDPOINT_URL") {
            if endpoint.starts_with("http://") {
                client = client.with_allow_http(true);
            }
            builder = builder.with_endpoint(endpoint);
        }
        if std::env::var_os("AWS_REGION").is_none()
            && std::env::var_os("AWS_DEFAULT_REGION").is_none()
        {
            builder = builder.with_region("us-east-1");
        }
        let store = builder
            .with_client_options(client)
            .build()
            .map_err(|e| s3_err(&format!("cannot configure {location}"), e))?;
        let this = Self {
            store: Arc::new(store),
            location,
            rt,
        };
        this.check_reachable()?;
        Ok(this)
    }

    /// A HEAD of a key that does not exist: "not found" proves the bucket and the credentials work.
    fn check_reachable(&self) -> StoreResult<()> {
        let probe = self.path_of("probe");
        match self.rt.block_on(self.store.head(&probe)) {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(s3_err(
                &format!(
                    "cannot reach {} (check AWS_ENDPOINT_URL, AWS_REGION and the access keys)",
                    self.location
                ),
                e,
            )),
        }
    }

    fn path_of(&self, key: &str) -> Path {
        match self.location.prefix.as_str() {
            "" => Path::from(key),
            prefix => Path::from(format!("{prefix}/{key}")),
        }
    }

    fn chunk_path(&self, tenant: TenantId, id: &ChunkKey) -> Path {
        let hex = hex::encode(id);
        self.path_of(&format!("chunks/{tenant}/{}/{hex}", &hex[..2]))
    }

    /// Where a client's presigned PUT of chunk `id` lands: beside, never at, the chunk's key.
    fn pending_path(&self, tenant: TenantId, id: &ChunkKey, upload: &UploadRef) -> Path {
        self.path_of(&format!(
            "pending/{tenant}/{}/{}",
            hex::encode(id),
            hex::encode(upload)
        ))
    }

    /// Signs a URL; refuses one longer than a client accepts (the server's misconfiguration).
    async fn sign(&self, method: Method, path: &Path) -> StoreResult<String> {
        let url = self
            .store
            .signed_url(method.clone(), path, PRESIGN_EXPIRY)
            .await
            .map_err(|e| s3_err(&format!("cannot sign {method} {path}"), e))?;
        let url = String::from(url);
        if url.len() > bvfs_proto::MAX_PRESIGNED_URL_BYTES {
            return Err(StoreError::Chunks(format!(
                "the presigned URL of {path} is {} bytes, over {}",
                url.len(),
                bvfs_proto::MAX_PRESIGNED_URL_BYTES
            )));
        }
        Ok(url)
    }

    /// Presigned PUT URLs for chunks `ids` of `tenant`, each to a new pending object, with the refs
    /// that name them for [`S3ChunkStore::confirm_uploads`].
    pub fn presign_uploads(
        &self,
        tenant: TenantId,
        ids: &[ChunkKey],
    ) -> StoreResult<Vec<(String, UploadRef)>> {
        self.rt.block_on(async {
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                let upload: UploadRef = rand::random();
                let url = self
                    .sign(Method::PUT, &self.pending_path(tenant, id, &upload))
                    .await?;
                out.push((url, upload));
            }
            Ok(out)
        })
    }

    /// Presigned GET URLs of chunks `ids` of `tenant` (whether stored or not: a missing one answers
    /// 404, exactly as another tenant's does).
    pub fn presign_downloads(
        &self,
        tenant: TenantId,
        ids: &[ChunkKey],
    ) -> StoreResult<Vec<String>> {
        self.rt.block_on(async {
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                out.push(self.sign(Method::GET, &self.chunk_path(tenant, id)).await?);
            }
            Ok(out)
        })
    }

    /// Verifies pending uploads and stores them as chunks (see `confirm_upload`), a
    /// few at a time; one outcome per upload, in order.
    pub fn confirm_uploads(
        &self,
        tenant: TenantId,
        uploads: &[(ChunkKey, UploadRef)],
    ) -> Vec<Result<(Confirmed, u64), ConfirmError>> {
        use futures::StreamExt;
        self.rt.block_on(
            futures::stream::iter(uploads)
                .map(|(id, upload)| self.confirm_upload(tenant, id, upload))
                .buffered(CONFIRM_CONCURRENCY)
                .collect(),
        )
    }

    /// Verifies a pending upload and stores it as chunk `id`: refuses an object over
    /// `MAX_CHUNK_BYTES` without reading it, hashes what it read, and stores exactly those bytes
    /// (not a server-side copy: the client's URL stays valid, and a copy could take bytes it
    /// uploaded after the check). The pending object is deleted whether it was good or bad.
    /// Returns how it ended and the chunk's length.
    async fn confirm_upload(
        &self,
        tenant: TenantId,
        id: &ChunkKey,
        upload: &UploadRef,
    ) -> Result<(Confirmed, u64), ConfirmError> {
        let pending = self.pending_path(tenant, id, upload);
        let found = match self.store.get(&pending).await {
            Ok(found) => found,
            Err(object_store::Error::NotFound { .. }) => return Err(ConfirmError::Missing),
            Err(e) => return Err(s3_err(&format!("GET {pending}"), e).into()),
        };
        let verdict = if found.meta.size > MAX_CHUNK_BYTES as u64 {
            Err(ConfirmError::TooLarge(found.meta.size))
        } else {
            let data = found
                .bytes()
                .await
                .map_err(|e| s3_err(&format!("GET {pending}"), e))?;
            let actual = blake3::hash(&data);
            if data.is_empty() || data.len() > MAX_CHUNK_BYTES {
                Err(ConfirmError::TooLarge(data.len() as u64))
            } else if actual.as_bytes() != id {
                Err(ConfirmError::Mismatch(actual.to_hex().to_string()))
            } else {
                let len = data.len() as u64;
                match self.put_async(tenant, id, PutPayload::from(data)).await {
                    Ok(true) => Ok((Confirmed::Stored, len)),
                    Ok(false) => Ok((Confirmed::AlreadyPresent, len)),
                    Err(e) => Err(e.into()),
                }
            }
        };
        // A store failure leaves the object for the client's retry (or the sweep).
        if !matches!(verdict, Err(ConfirmError::Store(_))) {
            match self.store.delete(&pending).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                // The chunk is stored (or refused) either way; the sweep removes it later.
                Err(e) => tracing::warn!(%pending, "cannot delete a pending upload: {e}"),
            }
        }
        verdict
    }

    async fn stored_len_async(&self, path: &Path) -> StoreResult<Option<u64>> {
        match self.store.head(path).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(s3_err(&format!("HEAD {path}"), e)),
        }
    }

    /// [`ChunkStore::put`] on the I/O runtime.
    async fn put_async(
        &self,
        tenant: TenantId,
        id: &ChunkKey,
        payload: PutPayload,
    ) -> StoreResult<bool> {
        let path = self.chunk_path(tenant, id);
        let len = payload.content_length() as u64;
        let options = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self.store.put_opts(&path, payload, options).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => {
                // Stored before, or being stored by a concurrent upload (S3 answers a conditional
                // write racing another with a conflict): only "present with this length" counts.
                match self.stored_len_async(&path).await? {
                    Some(stored) if stored == len => Ok(false),
                    other => Err(StoreError::Chunks(format!(
                        "PUT {path}: the store says the chunk exists, but it holds {other:?} bytes \
                         of {len}"
                    ))),
                }
            }
            Err(e) => Err(s3_err(&format!("PUT {path}"), e)),
        }
    }
}

impl ChunkStore for S3ChunkStore {
    fn stored_len(&self, tenant: TenantId, id: &ChunkKey) -> StoreResult<Option<u64>> {
        let path = self.chunk_path(tenant, id);
        self.rt.block_on(self.stored_len_async(&path))
    }

    fn put(&self, tenant: TenantId, id: &ChunkKey, data: &[u8]) -> StoreResult<bool> {
        let payload = PutPayload::from(data.to_vec());
        self.rt.block_on(self.put_async(tenant, id, payload))
    }

    fn sync(&self) -> StoreResult<()> {
        // A successful PUT is durable: nothing is pending.
        Ok(())
    }

    fn get(&self, tenant: TenantId, id: &ChunkKey) -> StoreResult<Option<Vec<u8>>> {
        let path = self.chunk_path(tenant, id);
        let read = self.rt.block_on(async {
            let result = self.store.get(&path).await?;
            result.bytes().await
        });
        match read {
            Ok(bytes) => Ok(Some(bytes.to_vec())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(s3_err(&format!("GET {path}"), e)),
        }
    }

    fn list(&self, tenant: TenantId) -> StoreResult<Vec<StoredChunk>> {
        use futures::TryStreamExt;
        let prefix = self.path_of(&format!("chunks/{tenant}"));
        let objects: Vec<object_store::ObjectMeta> = self
            .rt
            .block_on(self.store.list(Some(&prefix)).try_collect())
            .map_err(|e| s3_err(&format!("LIST {prefix}"), e))?;
        Ok(objects
            .into_iter()
            .filter_map(|object| {
                let id = object
                    .location
                    .filename()
                    .and_then(|n| hex::decode(n).ok())
                    .and_then(|b| ChunkKey::try_from(b).ok())?;
                let secs = u64::try_from(object.last_modified.timestamp()).unwrap_or(0);
                Some(StoredChunk {
                    id,
                    len: object.size,
                    stored_at: std::time::UNIX_EPOCH + Duration::from_secs(secs),
                })
            })
            .collect())
    }

    fn sweep_pending(&self, older_than: Duration) -> StoreResult<PendingSweep> {
        use futures::TryStreamExt;
        let prefix = self.path_of("pending");
        let cutoff = chrono_cutoff(older_than);
        self.rt.block_on(async {
            // Deleted as listed: nothing bounds how many uploads were never confirmed.
            let mut objects = self.store.list(Some(&prefix));
            let mut sweep = PendingSweep::default();
            while let Some(object) = objects
                .try_next()
                .await
                .map_err(|e| s3_err(&format!("LIST {prefix}"), e))?
            {
                if object.last_modified.timestamp() > cutoff {
                    sweep.kept += 1;
                    continue;
                }
                match self.store.delete(&object.location).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                        sweep.deleted += 1;
                        sweep.bytes += object.size;
                    }
                    Err(e) => return Err(s3_err(&format!("DELETE {}", object.location), e)),
                }
            }
            Ok(sweep)
        })
    }

    fn delete(&self, tenant: TenantId, id: &ChunkKey) -> StoreResult<bool> {
        let path = self.chunk_path(tenant, id);
        // S3 answers a DELETE of a missing key with success: ask first, for an honest count.
        if self.stored_len(tenant, id)?.is_none() {
            return Ok(false);
        }
        match self.rt.block_on(self.store.delete(&path)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(true),
            Err(e) => Err(s3_err(&format!("DELETE {path}"), e)),
        }
    }
}

/// The last-modified time (seconds since the epoch) at or before which a pending object is older
/// than `older_than`.
fn chrono_cutoff(older_than: Duration) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.saturating_sub(older_than).as_secs()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store with static keys and no network use: signing is local.
    fn offline(prefix: &str) -> S3ChunkStore {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let store = AmazonS3Builder::new()
            .with_bucket_name("vault")
            .with_region("us-east-1")
            .with_access_key_id("AKIDEXAMPLE")
            .with_secret_access_key("secret")
            .with_endpoint("http://127.0.0.1:9")
            .with_client_options(ClientOptions::new().with_allow_http(true))
            .build()
            .unwrap();
        S3ChunkStore {
            store: Arc::new(store),
            location: S3Location {
                bucket: "vault".into(),
                prefix: prefix.into(),
            },
            rt: Arc::new(IoRuntime::new("test-s3", 1).unwrap()),
        }
    }

    fn key_and_query(url: &str) -> (String, String) {
        let url = object_store::signer::Url::parse(url).unwrap();
        (
            url.path().to_string(),
            url.query().unwrap_or_default().to_string(),
        )
    }

    /// Uploads are signed for a new pending key of the tenant (never the chunk's), downloads for
    /// the tenant's chunk key; both expire after 15 minutes and sign only what the key names.
    #[test]
    fn presigned_urls_name_the_tenants_own_keys() {
        let store = offline("team");
        let id = [0xab; 32];
        let hex = hex::encode(id);
        let uploads = store.presign_uploads(7, &[id, id]).unwrap();
        assert_ne!(uploads[0].1, uploads[1].1, "each upload gets its own ref");
        for (url, upload) in &uploads {
            let (key, query) = key_and_query(url);
            assert_eq!(
                key,
                format!("/vault/team/pending/7/{hex}/{}", hex::encode(upload))
            );
            assert!(query.contains("X-Amz-Expires=900"), "{query}");
            assert!(query.contains("X-Amz-Signature="), "{query}");
            assert!(url.len() <= bvfs_proto::MAX_PRESIGNED_URL_BYTES);
        }
        let downloads = store.presign_downloads(7, &[id]).unwrap();
        let (key, query) = key_and_query(&downloads[0]);
        assert_eq!(key, format!("/vault/team/chunks/7/ab/{hex}"));
        assert!(query.contains("X-Amz-Signature="), "{query}");
        let (other, _) = key_and_query(&store.presign_downloads(8, &[id]).unwrap()[0]);
        assert_eq!(other, format!("/vault/team/chunks/8/ab/{hex}"));
    }

    #[test]
    fn the_sweep_cutoff_is_the_grace_period_ago() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let cutoff = chrono_cutoff(Duration::from_secs(3600));
        assert!((now - 3600 - cutoff).abs() <= 1, "{now} {cutoff}");
        assert_eq!(chrono_cutoff(Duration::from_secs(u64::MAX)), 0);
    }

    #[test]
    fn locations_parse_with_and_without_a_prefix() {
        let plain = S3Location::parse("s3://vault").unwrap();
        assert_eq!(
            (plain.bucket.as_str(), plain.prefix.as_str()),
            ("vault", "")
        );
        assert_eq!(plain.to_string(), "s3://vault");
        let nested = S3Location::parse("s3://vault/team/a/").unwrap();
        assert_eq!(nested.prefix, "team/a");
        assert_eq!(nested.to_string(), "s3://vault/team/a");
        assert!(S3Location::parse("s3:///x").is_err());
        assert!(S3Location::parse("/srv/chunks").is_err());
    }
}

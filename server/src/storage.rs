//! Choosing and opening the server's backends from `--metadata`, `--chunks` and `--notify`.
//!
//! | flag | embedded (default) | scale-out |
//! | --- | --- | --- |
//! | `--metadata` | a SQLite catalog path (`DATA/meta.sqlite`) | `postgres://…` |
//! | `--chunks` | a directory (`DATA/chunks`) | `s3://BUCKET[/PREFIX]` |
//! | `--notify` | absent: in-process | `nats://…` (needs PostgreSQL) |
//!
//! Embedded parts belong to one server process: serving takes a lock in the directory of each
//! (`lock` beside the catalog, beside the chunk directory), which is the data directory's `lock`
//! in the default layout. Shared parts (PostgreSQL, S3, NATS) take no lock: any number of server
//! processes use them at once. Secrets in URLs never reach the output or the logs ([`Storage::describe`]).

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};

use crate::notify::relay::{self, Outbox};
use crate::store::fs_chunks::FsChunkStore;
use crate::store::io_runtime::IoRuntime;
use crate::store::postgres::{PgMetaStore, redact};
use crate::store::s3::{S3ChunkStore, S3Location};
use crate::store::sqlite::SqliteMetaStore;
use crate::store::{ChunkStore, MetaStore};

/// Where the server keeps its state, as given on the command line.
#[derive(Debug, Clone, Default)]
pub struct StorageUrls {
    /// The data directory of the embedded parts' defaults.
    pub data: PathBuf,
    /// `postgres://…` or a SQLite catalog path; `None`: `DATA/meta.sqlite`.
    pub metadata: Option<String>,
    /// `s3://BUCKET[/PREFIX]` or a directory; `None`: `DATA/chunks`.
    pub chunks: Option<String>,
    /// `nats://…`; `None`: notifications stay in this process.
    pub notify: Option<String>,
}

/// The metadata backend a URL names.
enum MetadataUrl {
    Sqlite(PathBuf),
    Postgres(String),
}

/// The chunk backend a URL names.
enum ChunksUrl {
    Dir(PathBuf),
    S3(S3Location),
}

impl StorageUrls {
    fn chunks(&self) -> anyhow::Result<ChunksUrl> {
        Ok(match self.chunks.as_deref() {
            Some(url) if url.starts_with("s3://") => {
                ChunksUrl::S3(S3Location::parse(url).map_err(anyhow::Error::msg)?)
            }
            Some(dir) => ChunksUrl::Dir(PathBuf::from(dir)),
            None => ChunksUrl::Dir(self.data.join("chunks")),
        })
    }

    fn metadata(&self) -> MetadataUrl {
        match self.metadata.as_deref() {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                MetadataUrl::Postgres(url.to_string())
            }
            Some(path) => MetadataUrl::Sqlite(PathBuf::from(path)),
            None => MetadataUrl::Sqlite(self.data.join("meta.sqlite")),
        }
    }

    /// Whether nothing is embedded (so no data directory is needed).
    pub fn all_shared(&self) -> bool {
        matches!(self.metadata(), MetadataUrl::Postgres(_))
            && self
                .chunks
                .as_deref()
                .is_some_and(|c| c.starts_with("s3://"))
    }

    /// Checks that presigned chunk transfer (`--presigned-transfer`) can be offered: only on an S3
    /// chunk store, where clients can be handed URLs of the object store.
    pub fn check_presigned(&self) -> anyhow::Result<()> {
        match self.chunks()? {
            ChunksUrl::S3(_) => Ok(()),
            ChunksUrl::Dir(dir) => bail!(
                "--presigned-transfer hands clients URLs of an object store; it needs \
                 --chunks s3://BUCKET[/PREFIX], but chunks are in the directory {}",
                dir.display()
            ),
        }
    }

    /// Opens only the metadata store (for `bvfs admin`, beside running servers).
    pub fn open_metadata(&self) -> anyhow::Result<Arc<dyn MetaStore>> {
        Ok(match self.metadata() {
            MetadataUrl::Postgres(url) => Arc::new(
                PgMetaStore::connect(&url, false)
                    .with_context(|| format!("cannot open the metadata at {}", redact(&url)))?,
            ),
            MetadataUrl::Sqlite(path) => Arc::new(sqlite(&path)?),
        })
    }
}

impl StorageUrls {
    /// Opens only the chunk store (for `bvfs admin gc`, beside running servers): no lock taken and
    /// no temporary files cleared (a server's uploads in flight are its own).
    pub fn open_chunks(&self) -> anyhow::Result<Arc<dyn ChunkStore>> {
        Ok(match self.chunks()? {
            ChunksUrl::Dir(dir) => Arc::new(
                FsChunkStore::open(&dir)
                    .with_context(|| format!("cannot open the chunk store in {}", dir.display()))?,
            ),
            ChunksUrl::S3(location) => {
                let rt = Arc::new(IoRuntime::new("bvfs-s3", 2)?);
                Arc::new(S3ChunkStore::open(location, rt)?)
            }
        })
    }
}

fn sqlite(path: &Path) -> anyhow::Result<SqliteMetaStore> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent)
            .with_context(|| format!("cannot create the directory {}", parent.display()))?;
    }
    SqliteMetaStore::open(path)
        .with_context(|| format!("cannot open the metadata database {}", path.display()))
}

/// How commits reach other server processes' subscribers.
pub enum Notify {
    /// Only this process's subscribers (one server process, or clients polling).
    InProcess,
    /// Over NATS, through the outbox.
    Nats {
        url: String,
        outbox: Arc<dyn Outbox>,
    },
}

/// The opened backends of a serving process.
pub struct Storage {
    pub meta: Arc<dyn MetaStore>,
    pub chunks: Arc<dyn ChunkStore>,
    pub notify: Notify,
    /// The S3 chunk store, when chunks are there (the same store as `chunks`).
    s3: Option<Arc<S3ChunkStore>>,
    /// Set by [`Storage::offer_presigned`]: the store that signs clients' transfer URLs.
    pub presign: Option<Arc<S3ChunkStore>>,
    description: Vec<(&'static str, String)>,
    /// Held while serving: one process per embedded part.
    _locks: Vec<File>,
}

impl Storage {
    /// Opens the backends for serving: takes the embedded parts' locks first (before migrating a
    /// database or clearing temporary chunk files), connects the shared ones (applying pending
    /// PostgreSQL migrations, checking the bucket answers).
    pub fn open_serving(urls: &StorageUrls) -> anyhow::Result<Self> {
        let metadata = urls.metadata();
        let chunk_url = urls.chunks()?;
        if urls.notify.is_some() && !matches!(metadata, MetadataUrl::Postgres(_)) {
            bail!(
                "--notify nats://… relays commits between server processes sharing one database; \
                 it needs --metadata postgres://… (an embedded SQLite store serves one process, \
                 which notifies its clients itself)"
            );
        }
        if let Some(notify) = urls.notify.as_deref()
            && !(notify.starts_with("nats://") || notify.starts_with("tls://"))
        {
            bail!("--notify {} is not a nats:// URL", relay::redact(notify));
        }

        let mut lock_dirs = BTreeSet::new();
        if let MetadataUrl::Sqlite(path) = &metadata {
            lock_dirs.insert(parent_dir(path));
        }
        if let ChunksUrl::Dir(dir) = &chunk_url {
            lock_dirs.insert(parent_dir(dir));
        }
        let locks = lock_dirs
            .iter()
            .map(|dir| lock(dir))
            .collect::<anyhow::Result<Vec<_>>>()?;

        let mut description = Vec::new();
        let (meta, outbox): (Arc<dyn MetaStore>, Option<Arc<dyn Outbox>>) = match &metadata {
            MetadataUrl::Postgres(url) => {
                description.push(("metadata", redact(url)));
                let store = Arc::new(
                    PgMetaStore::connect(url, urls.notify.is_some())
                        .with_context(|| format!("cannot open the metadata at {}", redact(url)))?,
                );
                (store.clone(), Some(store))
            }
            MetadataUrl::Sqlite(path) => {
                description.push(("metadata", path.display().to_string()));
                (Arc::new(sqlite(path)?), None)
            }
        };
        let mut s3 = None;
        let chunks: Arc<dyn ChunkStore> = match chunk_url {
            ChunksUrl::Dir(dir) => {
                description.push(("chunks", dir.display().to_string()));
                let store = FsChunkStore::open(&dir)
                    .with_context(|| format!("cannot open the chunk store in {}", dir.display()))?;
                store.clear_temporary().with_context(|| {
                    format!("cannot clear temporary chunk files in {}", dir.display())
                })?;
                Arc::new(store)
            }
            ChunksUrl::S3(location) => {
                description.push(("chunks", location.to_string()));
                let rt = Arc::new(IoRuntime::new("bvfs-s3", 2)?);
                let store = Arc::new(S3ChunkStore::open(location, rt)?);
                s3 = Some(store.clone());
                store
            }
        };
        let notify = match (urls.notify.as_deref(), outbox) {
            (Some(url), Some(outbox)) => {
                description.push(("notify", relay::redact(url)));
                Notify::Nats {
                    url: url.to_string(),
                    outbox,
                }
            }
            _ => Notify::InProcess,
        };
        Ok(Self {
            meta,
            chunks,
            notify,
            s3,
            presign: None,
            description,
            _locks: locks,
        })
    }

    /// Offers presigned chunk transfer (ADR-0011): clients move chunk bytes to and from the S3
    /// store directly. Refused unless chunks are in S3.
    pub fn offer_presigned(&mut self) -> anyhow::Result<()> {
        let Some(s3) = &self.s3 else {
            bail!(
                "--presigned-transfer hands clients URLs of an object store; it needs --chunks \
                 s3://BUCKET[/PREFIX]"
            );
        };
        self.presign = Some(s3.clone());
        self.description
            .push(("transfer", "presigned (clients reach S3 directly)".into()));
        Ok(())
    }

    /// The backends, secrets hidden: `(name, where)` pairs for the start-up line.
    pub fn describe(&self) -> &[(&'static str, String)] {
        &self.description
    }

    /// Starts the cross-process relay, if any (on the current runtime).
    pub(crate) async fn start_relay(
        &self,
        heads: Arc<crate::notify::HeadNotifier>,
        committed: tokio::sync::mpsc::UnboundedReceiver<(crate::store::TenantId, u64)>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> anyhow::Result<Option<relay::Relay>> {
        match &self.notify {
            Notify::InProcess => Ok(None),
            Notify::Nats { url, outbox } => relay::start(
                url,
                relay::RelayParts {
                    meta: self.meta.clone(),
                    outbox: outbox.clone(),
                    heads,
                    committed,
                    outbox_pending: metrics.relay_outbox_pending.clone(),
                },
            )
            .await
            .map(Some),
        }
    }
}

/// The directory that holds `path` (its lock lives there).
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// Takes `DIR/lock`, creating the directory if needed; fails if another server holds it.
pub(crate) fn lock(dir: &Path) -> anyhow::Result<File> {
    fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
    let lock_path = dir.join("lock");
    let lock = File::create(&lock_path)
        .with_context(|| format!("cannot create {}", lock_path.display()))?;
    if lock.try_lock().is_err() {
        bail!(
            "another bvfs server is using {}; stop it or choose another --data directory",
            dir.display()
        );
    }
    Ok(lock)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// NATS relays between processes sharing PostgreSQL; with an embedded catalog it is refused
    /// before anything is opened or locked.
    #[test]
    fn nats_without_postgres_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let urls = StorageUrls {
            data: dir.path().to_owned(),
            notify: Some("nats://127.0.0.1:4222".into()),
            ..StorageUrls::default()
        };
        let err = Storage::open_serving(&urls).err().unwrap().to_string();
        assert!(err.contains("needs --metadata postgres://"), "{err}");
        assert!(!dir.path().join("lock").exists());
    }

    /// Presigned transfer needs an object store to sign URLs of: refused on a chunk directory,
    /// before anything is opened, and on opened embedded storage too.
    #[test]
    fn presigned_transfer_without_s3_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let urls = StorageUrls {
            data: dir.path().to_owned(),
            ..StorageUrls::default()
        };
        let err = urls.check_presigned().unwrap_err().to_string();
        assert!(err.contains("needs --chunks s3://"), "{err}");
        let mut storage = Storage::open_serving(&urls).unwrap();
        let err = storage.offer_presigned().unwrap_err().to_string();
        assert!(err.contains("needs --chunks s3://"), "{err}");
        assert!(storage.presign.is_none());
        let s3 = StorageUrls {
            chunks: Some("s3://vault/team".into()),
            ..urls
        };
        s3.check_presigned().unwrap();
    }

    /// The default layout is today's data directory: one lock, the catalog and the chunks inside.
    #[test]
    fn the_default_layout_is_the_data_directory() {
        let dir = tempfile::tempdir().unwrap();
        let urls = StorageUrls {
            data: dir.path().to_owned(),
            ..StorageUrls::default()
        };
        let storage = Storage::open_serving(&urls).unwrap();
        assert!(dir.path().join("meta.sqlite").exists());
        assert!(dir.path().join("chunks").is_dir());
        assert!(matches!(storage.notify, Notify::InProcess));
        assert!(
            Storage::open_serving(&urls).is_err(),
            "a second server on the same directory is refused"
        );
    }
}

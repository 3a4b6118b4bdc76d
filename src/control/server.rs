//! The daemon side of the control channel: a Unix socket listener on the mount's runtime, answering
//! each connection's one request from the engine.
//!
//! Ownership: [`ControlServer`] owns the listener task and the socket file (removed when it stops);
//! each connection task owns its stream. The engine is shared (`Arc`) and only called through its
//! public API; blocking engine calls run on tokio's blocking pool, so the runtime that serves FUSE
//! reads never waits for them. Bounds: at most [`MAX_CONNECTIONS`] connections are served at once
//! (more wait in the listen backlog), a request is one line of at most
//! [`protocol::MAX_REQUEST_BYTES`] that must arrive within [`REQUEST_TIMEOUT`], and every reply
//! list is capped.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bvfs_engine::Engine;
use bvfs_engine::model::NodeKind;
use bvfs_engine::space::Evicted;
use bvfs_engine::state::local::LocalEntry;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::protocol::{
    self, CacheStatus, Conflict, ConflictList, Deleted, DeletesAction, DeletesDone, EvictDone,
    HeldDelete, HistoryList, HydrateDone, MountStatus, PathStatus, PinDone, Progress, Queue,
    QueuedUpload, Refusal, Reply, Request, RestoreDone, Transfer, TrashList, UndeleteDone, Version,
};

/// How many connections are served at once.
const MAX_CONNECTIONS: usize = 16;
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Chunks fetched between two progress lines of a hydration.
const HYDRATE_BATCH: usize = 16;
/// How many deleted nodes `bvfs trash` looks through (newest first) for those under its path.
const TRASH_SEARCH: usize = 10_000;
/// The mount's root inode.
const ROOT_INO: u64 = 1;

/// What the handlers need to know about the mount.
pub struct MountInfo {
    pub engine: Arc<Engine>,
    pub mountpoint: PathBuf,
    /// The server, as the user should read it (`embedded (URL)` for the embedded one).
    pub server: String,
}

/// The running listener; [`ControlServer::stop`] ends it and removes the socket.
pub struct ControlServer {
    task: tokio::task::JoinHandle<()>,
    socket: PathBuf,
}

impl ControlServer {
    /// Binds the mount's socket (replacing a stale one left by a daemon that was killed: the mount
    /// is ours now) and serves it on the current runtime.
    pub fn start(info: MountInfo) -> anyhow::Result<Self> {
        let socket = super::socket_path(&info.mountpoint);
        let dir = socket.parent().context("a socket path has a parent")?;
        crate::privacy::private_dir(dir, "the runtime directory")?;
        match std::fs::remove_file(&socket) {
            Ok(()) => tracing::info!(socket = %socket.display(), "removed a stale control socket"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).context("cannot remove a stale control socket"),
        }
        let listener = UnixListener::bind(&socket)
            .with_context(|| format!("cannot listen on {}", socket.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))?;
        tracing::info!(socket = %socket.display(), "control channel listening");
        let task = tokio::spawn(serve(listener, Arc::new(info)));
        Ok(Self { task, socket })
    }

    /// Stops listening (connections in progress end with it) and removes the socket.
    pub fn stop(self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.socket);
    }
}

async fn serve(listener: UnixListener, info: Arc<MountInfo>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!("control channel: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let info = info.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(stream, &info).await {
                tracing::debug!("control connection ended: {e}");
            }
            drop(permit);
        });
    }
}

/// Whether the peer may use the channel: the daemon's own user, or root.
fn peer_allowed(stream: &UnixStream) -> bool {
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    stream
        .peer_cred()
        .is_ok_and(|cred| cred.uid() == me || cred.uid() == 0)
}

async fn connection(stream: UnixStream, info: &MountInfo) -> std::io::Result<()> {
    if !peer_allowed(&stream) {
        tracing::warn!("control channel: refused a connection from another user");
        return Ok(());
    }
    let (read, mut write) = stream.into_split();
    let mut line = Vec::new();
    let mut read = BufReader::new(read).take(protocol::MAX_REQUEST_BYTES as u64 + 1);
    let got = tokio::time::timeout(REQUEST_TIMEOUT, read.read_until(b'\n', &mut line)).await;
    let request = match got {
        Err(_) => Err("no request arrived in time".to_string()),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(_)) if line.last() != Some(&b'\n') => Err(if line.len() > protocol::MAX_REQUEST_BYTES {
            format!(
                "the request is longer than {} bytes",
                protocol::MAX_REQUEST_BYTES
            )
        } else {
            "the request ended before its newline".to_string()
        }),
        Ok(Ok(_)) => serde_json::from_slice::<Request>(&line)
            .map_err(|e| format!("not a request this daemon understands ({e}); is the bvfs CLI the same version as the mount?")),
    };
    let mut out = Replies { write: &mut write };
    match request {
        Err(message) => out.send(&Reply::Error(message)).await,
        Ok(request) => {
            tracing::debug!(?request, "control request");
            match handle(request, info, &mut out).await {
                Ok(done) => out.send(&Reply::Done(done)).await,
                Err(Failure::User(message)) => out.send(&Reply::Error(message)).await,
                Err(Failure::Gone(e)) => Err(e),
            }
        }
    }
}

/// Writes reply lines to one client.
struct Replies<'a> {
    write: &'a mut tokio::net::unix::OwnedWriteHalf,
}

impl Replies<'_> {
    async fn send(&mut self, reply: &Reply) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(reply).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.write.write_all(&line).await?;
        self.write.flush().await
    }

    /// Sends a progress line; fails when the client is gone.
    async fn progress(&mut self, progress: Progress) -> Result<(), Failure> {
        self.send(&Reply::Progress(progress))
            .await
            .map_err(Failure::Gone)
    }
}

/// Why a request produced no answer.
enum Failure {
    /// Something the user is told.
    User(String),
    /// The client went away (Ctrl-C): the work stops.
    Gone(std::io::Error),
}

impl From<bvfs_engine::EngineError> for Failure {
    fn from(e: bvfs_engine::EngineError) -> Self {
        Failure::User(e.to_string())
    }
}

type Handled = Result<serde_json::Value, Failure>;

fn done<T: serde::Serialize>(value: &T) -> Handled {
    serde_json::to_value(value).map_err(|e| Failure::User(e.to_string()))
}

/// Runs a blocking engine call on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Failure> + Send + 'static,
) -> Result<T, Failure> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Failure::User(format!("the daemon failed to answer: {e}")))?
}

async fn handle(request: Request, info: &MountInfo, out: &mut Replies<'_>) -> Handled {
    let engine = info.engine.clone();
    match request {
        Request::Status => {
            let status = status(info).await?;
            done(&status)
        }
        Request::PathStatus { path } => {
            let status = blocking(move || path_status(&engine, &path)).await?;
            done(&status)
        }
        Request::Pin { path, pinned } => {
            let (entry, changed) = {
                let path = path.clone();
                let engine = engine.clone();
                blocking(move || {
                    let entry = resolve(&engine, &path)?;
                    let changed = engine.set_pinned(entry.ino, pinned)?;
                    Ok((entry, changed as u64))
                })
                .await?
            };
            let fetched = if pinned {
                Some(hydrate(&engine, entry, path.clone(), out).await?)
            } else {
                None
            };
            done(&PinDone {
                path,
                pinned,
                changed,
                fetched,
            })
        }
        Request::Hydrate { path } => {
            let entry = {
                let path = path.clone();
                let engine = engine.clone();
                blocking(move || resolve(&engine, &path)).await?
            };
            let hydrated = hydrate(&engine, entry, path, out).await?;
            done(&hydrated)
        }
        Request::Evict { path } => {
            let evicted = blocking(move || evict(&engine, path)).await?;
            done(&evicted)
        }
        Request::Conflicts => {
            let list = blocking(move || {
                let conflicts = engine.conflicts()?;
                Ok(ConflictList {
                    conflicts: conflicts
                        .into_iter()
                        .map(|c| Conflict {
                            time: rfc3339(c.at_ns),
                            original: c.original,
                            device: c.copy.as_deref().and_then(copy_device),
                            copy: c.copy,
                            description: c.description,
                        })
                        .collect(),
                })
            })
            .await?;
            done(&list)
        }
        Request::History { path } => {
            let versions = history(&engine, &path).await?;
            done(&HistoryList { path, versions })
        }
        Request::Restore {
            path,
            version,
            as_path,
        } => {
            let version = restore(&engine, &path, version, as_path.as_deref()).await?;
            done(&RestoreDone {
                path,
                as_path,
                version,
            })
        }
        Request::Trash { path } => {
            let deleted = engine
                .deleted(TRASH_SEARCH)
                .await?
                .map_err(history_failure)?;
            let prefix = format!("{path}/");
            let deleted = deleted
                .into_iter()
                .filter(|d| {
                    path.is_empty()
                        || d.path
                            .as_deref()
                            .is_some_and(|p| p == path || p.starts_with(&prefix))
                })
                .take(protocol::MAX_LISTED)
                .map(|d| Deleted {
                    path: d.path,
                    name: d.name,
                    directory: d.directory,
                    size: d.size,
                    device: d.device,
                    time: rfc3339(d.at_ns),
                })
                .collect();
            done(&TrashList { path, deleted })
        }
        Request::Undelete { path } => {
            let found = engine.undelete(&path).await?.map_err(history_failure)?;
            done(&UndeleteDone {
                path,
                directory: found.directory,
            })
        }
        Request::Queue => {
            let queue = blocking(move || {
                let total = engine.pending_uploads()?;
                let uploads = engine.upload_queue(protocol::MAX_LISTED)?;
                Ok(Queue {
                    uploads: uploads
                        .into_iter()
                        .map(|u| QueuedUpload {
                            path: u.path,
                            size: u.size,
                            state: if u.uploading { "uploading" } else { "waiting" }.to_string(),
                        })
                        .collect(),
                    uploads_total: Transfer {
                        files: total.files,
                        bytes: total.bytes,
                    },
                    downloads_in_flight: engine.downloads_in_flight(),
                })
            })
            .await?;
            done(&queue)
        }
        Request::Deletes { action } => {
            let result = blocking(move || {
                let held = engine.held_deletes()?;
                let held_total = held.len() as u64;
                let resolved = match action {
                    DeletesAction::List => 0,
                    DeletesAction::Confirm => engine.resolve_held_deletes(true)? as u64,
                    DeletesAction::Restore => engine.resolve_held_deletes(false)? as u64,
                };
                Ok(DeletesDone {
                    action,
                    held: held
                        .into_iter()
                        .take(protocol::MAX_LISTED)
                        .map(|(side, path)| HeldDelete {
                            side,
                            path: path.trim_start_matches('/').to_string(),
                        })
                        .collect(),
                    held_total,
                    resolved,
                })
            })
            .await?;
            done(&result)
        }
    }
}

/// A refusal of the history calls, for the user.
fn history_failure(e: bvfs_engine::history::HistoryError) -> Failure {
    Failure::User(e.to_string())
}

async fn history(engine: &Arc<Engine>, path: &str) -> Result<Vec<Version>, Failure> {
    let entry = {
        let engine = engine.clone();
        let path = path.to_string();
        blocking(move || resolve(&engine, &path)).await?
    };
    let versions = engine
        .versions(&entry)
        .await?
        .map_err(|e| Failure::User(format!("{path}: {e}")))?;
    Ok(versions
        .into_iter()
        .map(|v| Version {
            version: v.seq,
            time: rfc3339(v.at_ns),
            device: v.device,
            name: v.name,
            size: v.size,
            hash: v.hash,
            deleted: v.deleted,
        })
        .collect())
}

/// Restores `version` of `path` (`None`: the newest version whose content differs from the
/// current one); returns the version restored.
async fn restore(
    engine: &Arc<Engine>,
    path: &str,
    version: Option<u64>,
    as_path: Option<&str>,
) -> Result<u64, Failure> {
    let entry = {
        let engine = engine.clone();
        let path = path.to_string();
        blocking(move || resolve(&engine, &path)).await?
    };
    let version = match version {
        Some(version) => version,
        None => {
            let current = entry.node.attrs.content.map(|h| h.to_hex());
            let versions = engine
                .versions(&entry)
                .await?
                .map_err(|e| Failure::User(format!("{path}: {e}")))?;
            versions
                .into_iter()
                .find(|v| !v.deleted && v.hash != current)
                .map(|v| v.seq)
                .ok_or_else(|| {
                    Failure::User(format!(
                        "{path} has no earlier version with other content (see `bvfs history`)"
                    ))
                })?
        }
    };
    let restored = match as_path {
        None => engine.restore_version(&entry, version).await?.map(|_| ()),
        Some(new) => {
            let (parent, name) = match new.rsplit_once('/') {
                Some((parent, name)) => (parent.to_string(), name.to_string()),
                None => (String::new(), new.to_string()),
            };
            let parent = {
                let engine = engine.clone();
                blocking(move || resolve(&engine, &parent)).await?
            };
            if engine.lookup(parent.ino, &name)?.is_some() {
                return Err(Failure::User(format!(
                    "{new} exists; restore never replaces a file: choose another name"
                )));
            }
            engine.restore_as(&entry, version, &parent, &name).await?
        }
    };
    restored.map_err(|e| Failure::User(format!("{path}: {e}")))?;
    Ok(version)
}

async fn status(info: &MountInfo) -> Result<MountStatus, Failure> {
    let engine = info.engine.clone();
    let mountpoint = info.mountpoint.display().to_string();
    let server = info.server.clone();
    blocking(move || {
        let status = engine.status()?;
        let unsynced = engine.unsynced()?;
        let uploads = engine.pending_uploads()?;
        Ok(MountStatus {
            mountpoint,
            server,
            online: status.online,
            sync: unsynced.state().as_str().to_string(),
            last_sync: engine.last_sync_ns().map(rfc3339),
            pending_changes: status.pending_changes,
            pending_uploads: Transfer {
                files: uploads.files,
                bytes: uploads.bytes,
            },
            uploads_running: unsynced.uploading,
            downloads_in_flight: engine.downloads_in_flight(),
            files_being_written: unsynced.writing,
            conflicts: status.conflicts,
            held_deletes: status.held_deletes,
            errors: status.errors,
            failing: engine
                .failing(protocol::MAX_ERRORS_LISTED)?
                .into_iter()
                .map(|(path, reason)| Refusal { path, reason })
                .collect(),
            cache: CacheStatus {
                used_bytes: status.cache.bytes,
                held_bytes: status.cache.held_bytes,
                limit_bytes: status.cache.max_bytes,
                chunks: status.cache.chunks,
            },
        })
    })
    .await
}

/// The device in a conflicted copy's name: `NAME (conflicted copy from DEVICE YYYY-MM-DD HHMMSS)`.
fn copy_device(copy: &str) -> Option<String> {
    let rest = copy.rsplit_once("(conflicted copy from ")?.1;
    let inside = rest.split_once(')')?.0;
    // The last two words are the date and the time; the device name may hold spaces.
    let mut words: Vec<&str> = inside.split(' ').collect();
    if words.len() < 3 {
        return None;
    }
    words.truncate(words.len() - 2);
    Some(words.join(" "))
}

/// RFC 3339 (UTC, seconds) of a time in ns since the epoch.
fn rfc3339(ns: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns))
        .ok()
        .and_then(|t| {
            t.replace_nanosecond(0)
                .ok()?
                .format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ns.to_string())
}

/// The LOCAL entry at `path` (names from the root).
fn resolve(engine: &Engine, path: &str) -> Result<LocalEntry, Failure> {
    let mut entry = engine
        .getattr(ROOT_INO)?
        .ok_or_else(|| Failure::User("the mount has no root".into()))?;
    for name in path.split('/').filter(|n| !n.is_empty()) {
        if name == "." || name == ".." {
            return Err(Failure::User(format!("{path:?} is not a plain path")));
        }
        entry = engine.lookup(entry.ino, name)?.ok_or_else(|| {
            Failure::User(format!(
                "{path} does not exist in the mount (or is a special file, which stays local)"
            ))
        })?;
    }
    Ok(entry)
}

fn kind_name(kind: NodeKind) -> &'static str {
    match kind {
        NodeKind::File => "file",
        NodeKind::Directory => "directory",
        NodeKind::Symlink => "symlink",
    }
}

fn path_status(engine: &Engine, path: &str) -> Result<PathStatus, Failure> {
    let entry = resolve(engine, path)?;
    let sync = if entry.ino == ROOT_INO {
        engine.unsynced()?.state()
    } else {
        engine.sync_state(&entry)?
    };
    Ok(PathStatus {
        path: path.to_string(),
        kind: kind_name(entry.node.kind).to_string(),
        size: entry.node.attrs.size,
        state: engine.hydration(&entry)?.as_str().to_string(),
        sync: sync.as_str().to_string(),
        pinned: entry.pinned,
        error: match sync {
            bvfs_engine::presence::SyncState::Error(message) => Some(message),
            _ => None,
        },
    })
}

/// Calls `visit` with every node under `entry` (itself included) and its path, depth first.
/// Listings are paged, so a huge directory never loads at once.
fn walk(
    engine: &Engine,
    entry: LocalEntry,
    path: String,
    visit: &mut dyn FnMut(&LocalEntry, &str) -> Result<(), Failure>,
) -> Result<(), Failure> {
    const PAGE: usize = 1_000;
    let mut stack = vec![(entry, path)];
    while let Some((entry, path)) = stack.pop() {
        visit(&entry, &path)?;
        if entry.node.kind != NodeKind::Directory {
            continue;
        }
        let mut after: Option<String> = None;
        loop {
            let page = engine.list(entry.ino, after.as_deref(), PAGE)?;
            let full = page.len() == PAGE;
            after = page.last().map(|e| e.node.name.clone());
            for child in page {
                let child_path = if path.is_empty() {
                    child.node.name.clone()
                } else {
                    format!("{path}/{}", child.node.name)
                };
                stack.push((child, child_path));
            }
            if !full {
                break;
            }
        }
    }
    Ok(())
}

fn evict(engine: &Engine, path: String) -> Result<EvictDone, Failure> {
    let entry = resolve(engine, &path)?;
    let mut result = EvictDone {
        path: path.clone(),
        evicted_files: 0,
        freed_bytes: 0,
        refused: Vec::new(),
        refused_total: 0,
    };
    walk(engine, entry, path, &mut |entry, path| {
        if entry.node.kind != NodeKind::File {
            return Ok(());
        }
        match engine.evict(entry)? {
            Evicted::Freed(bytes) => {
                result.evicted_files += 1;
                result.freed_bytes += bytes;
            }
            Evicted::Refused(why) => {
                result.refused_total += 1;
                if result.refused.len() < protocol::MAX_LISTED {
                    result.refused.push(Refusal {
                        path: path.to_string(),
                        reason: why.message().to_string(),
                    });
                }
            }
        }
        Ok(())
    })?;
    Ok(result)
}

/// Fetches every chunk of every file under `entry`, sending progress after each batch. Stops
/// when the client goes away (its progress line cannot be written).
async fn hydrate(
    engine: &Arc<Engine>,
    entry: LocalEntry,
    path: String,
    out: &mut Replies<'_>,
) -> Result<HydrateDone, Failure> {
    let plan = {
        let engine = engine.clone();
        let path = path.clone();
        blocking(move || {
            let mut files = 0u64;
            let mut wanted = Vec::new();
            walk(&engine, entry, path, &mut |entry, path| {
                if entry.node.kind == NodeKind::File {
                    files += 1;
                    let missing = engine.missing_chunks(entry)?;
                    if !missing.is_empty() {
                        wanted.push((path.to_string(), missing));
                    }
                }
                Ok(())
            })?;
            Ok((files, wanted))
        })
        .await?
    };
    let (files, wanted) = plan;
    let mut progress = Progress {
        files_total: wanted.len() as u64,
        bytes_total: wanted
            .iter()
            .flat_map(|(_, chunks)| chunks.iter().map(|(_, len)| u64::from(*len)))
            .sum(),
        ..Progress::default()
    };
    out.progress(progress).await?;
    for (file, chunks) in &wanted {
        for batch in chunks.chunks(HYDRATE_BATCH) {
            let ids: Vec<_> = batch.iter().map(|(id, _)| *id).collect();
            engine.hydrate(&ids).await.map_err(|e| {
                Failure::User(format!(
                    "cannot fetch {file}: {e}. What was fetched so far stays local; run the \
                     command again when the server is reachable (see `bvfs status`)"
                ))
            })?;
            progress.bytes_done += batch.iter().map(|(_, len)| u64::from(*len)).sum::<u64>();
            out.progress(progress).await?;
        }
        progress.files_done += 1;
    }
    out.progress(progress).await?;
    Ok(HydrateDone {
        path,
        files,
        fetched_files: progress.files_done,
        fetched_bytes: progress.bytes_done,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_device_is_read_from_a_conflicted_copy_name() {
        assert_eq!(
            copy_device("a/shared (conflicted copy from my laptop 2026-12-06 081901).txt")
                .as_deref(),
            Some("my laptop")
        );
        assert_eq!(
            copy_device("notes (conflicted copy from desktop 2026-12-06 081901) 2").as_deref(),
            Some("desktop")
        );
        assert_eq!(copy_device("plain.txt"), None);
        assert_eq!(copy_device("x (conflicted copy from )"), None);
    }
}

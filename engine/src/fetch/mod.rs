//! The chunk fetcher: chunk bytes from the [`ChunkCache`], else from the server, verified, with one
//! fetch per chunk however many readers want it, priorities, batching, read-ahead and a fast failure
//! when the server is unreachable.
//!
//! # How a request flows
//!
//! Every wanted chunk gets a *flight* (`scheduler.rs`; single-flight: later requests for the same
//! chunk join it as waiters). A new flight first *probes* the cache (a blocking read on tokio's
//! blocking pool); a miss queues it by [`Priority`]. Dispatch takes up to
//! [`FetchConfig::batch_chunks`] queued chunks of one priority into one `get_chunks` call (a chunk is
//! at most 256 KiB, so a batch of 8 is at most 2 MiB) and runs it as its own task, so a fetch
//! completes and fills the cache even if every waiter gave up. Bytes are verified (BLAKE3) and
//! inserted into the cache before the flight is resolved, so a request arriving after a flight ends
//! always finds the chunk in the cache: one remote fetch per chunk, not one per reader.
//!
//! # Priorities
//!
//! Three queues, always drained in order: [`Priority::OnDemand`] (a reader is waiting),
//! [`Priority::ReadAhead`] (a reader will soon wait), [`Priority::Background`] (pinned files
//! hydrating). At most [`FetchConfig::max_calls`] calls run at once; read-ahead may use at most
//! [`FetchConfig::readahead_calls`] of them and background work [`FetchConfig::background_calls`],
//! so calls stay free for on-demand reads however long the background queue is. A queued chunk that
//! becomes wanted on demand moves to the on-demand queue.
//!
//! # Failure
//!
//! Each call has a timeout that grows with its size. A call that fails as unreachable (or times
//! out) marks the server offline for [`FetchConfig::offline_backoff`]: meanwhile requests that miss
//! the cache fail at once with [`FetchError::Offline`] instead of waiting. A read of an uncached
//! file while offline therefore fails at once when the connection is refused, within the call
//! timeout (1.25 s for one chunk by default) when the server is silent, and never hangs. Corrupt bytes are retried once,
//! then reported as [`FetchError::Corrupt`]; they are never cached or returned.

mod readahead;
mod scheduler;

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::{Handle, RuntimeFlavor};

use crate::cache::ChunkCache;
use crate::chunking::{ChunkId, ChunkRef, Manifest};
use crate::remote::{Remote, RemoteError};
pub use readahead::ReadAhead;
use scheduler::Shared;

/// How urgently a chunk is wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Priority {
    /// A reader is blocked on it.
    OnDemand,
    /// A sequential reader will want it soon.
    ReadAhead,
    /// Hydration of pinned content; yields to everything else.
    Background,
}

impl Priority {
    const ALL: [Priority; 3] = [
        Priority::OnDemand,
        Priority::ReadAhead,
        Priority::Background,
    ];

    /// The queue index: lower is more urgent.
    fn rank(self) -> usize {
        match self {
            Priority::OnDemand => 0,
            Priority::ReadAhead => 1,
            Priority::Background => 2,
        }
    }
}

/// Tuning of the fetcher.
#[derive(Debug, Clone)]
pub struct FetchConfig {
    /// Chunks per `get_chunks` call.
    pub batch_chunks: usize,
    /// Calls in flight at once.
    pub max_calls: usize,
    /// Of those, how many read-ahead may use.
    pub readahead_calls: usize,
    /// Of those, how many background hydration may use.
    pub background_calls: usize,
    /// Timeout of a call: this plus `per_chunk_timeout` for each chunk in it. A call past it goes
    /// on, a timeout at a time, while the server delivered chunk bytes (to any call) within
    /// `stall_timeout` ([`crate::remote::Remote::last_progress`]), up to `max_call_time`: a slow
    /// server or a thin link is not an unreachable server.
    pub call_timeout: Duration,
    pub per_chunk_timeout: Duration,
    pub stall_timeout: Duration,
    pub max_call_time: Duration,
    /// After the server is found unreachable, how long requests fail at once without trying it.
    pub offline_backoff: Duration,
    /// How many chunks [`ChunkFetcher::hydrate`] has in flight at once.
    pub hydrate_window: usize,
}

impl Default for FetchConfig {
    fn default() -> Self {
        Self {
            batch_chunks: 8,
            max_calls: 10,
            readahead_calls: 8,
            background_calls: 2,
            call_timeout: Duration::from_millis(1000),
            per_chunk_timeout: Duration::from_millis(250),
            stall_timeout: Duration::from_secs(5),
            max_call_time: Duration::from_secs(300),
            offline_backoff: Duration::from_secs(2),
            hydrate_window: 64,
        }
    }
}

/// Why chunk bytes could not be provided.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    /// The server is unreachable (or did not answer in time) and the chunk is not cached.
    #[error(
        "the server is unreachable and this data is not cached locally ({0}); try again when online"
    )]
    Offline(String),
    /// The server sent bytes that do not match the chunk's id, twice.
    #[error("chunk {0} arrived corrupted from the server twice; it was not used")]
    Corrupt(ChunkId),
    /// The server refused to send a chunk (for example, it does not have it).
    #[error("the server refused to send the data: {0}")]
    Rejected(String),
    /// The device token is not accepted.
    #[error("the server does not accept this device's token ({0}); sign in again")]
    Unauthenticated(String),
    /// The manifest is inconsistent (offsets, sizes or chunk lengths disagree).
    #[error("the file's chunk list is inconsistent: {0}")]
    Manifest(String),
    /// The chunk arrived but could not be kept in the cache (only reported by
    /// [`ChunkFetcher::hydrate`], whose whole point is keeping it).
    #[error("cannot store chunk {id} in the local cache: {reason}")]
    Cache { id: ChunkId, reason: String },
    /// The fetcher's task ended before answering (runtime shutting down).
    #[error("the fetch was abandoned before it finished (shutting down?)")]
    Abandoned,
    /// A blocking entry point was called from inside a current-thread runtime, where it would
    /// deadlock.
    #[error(
        "a blocking read was called from inside a current-thread async runtime; use the async read"
    )]
    InsideRuntime,
}

impl FetchError {
    /// The errno a filesystem should answer with.
    pub fn errno(&self) -> i32 {
        match self {
            FetchError::Offline(_) => libc::ENETUNREACH,
            FetchError::Unauthenticated(_) => libc::EACCES,
            _ => libc::EIO,
        }
    }

    fn from_remote(err: RemoteError) -> Self {
        match err {
            RemoteError::Unavailable(message) => FetchError::Offline(message),
            RemoteError::Unauthenticated(message) => FetchError::Unauthenticated(message),
            RemoteError::Rejected {
                message, reason, ..
            } if reason.is_empty() => FetchError::Rejected(message),
            RemoteError::Rejected {
                message, reason, ..
            } => FetchError::Rejected(format!("{reason}: {message}")),
            RemoteError::Corrupt(message) => {
                FetchError::Rejected(format!("the server reports corruption: {message}"))
            }
        }
    }
}

type Outcome = Result<Arc<Vec<u8>>, FetchError>;

// Shared by FUSE worker threads and tokio tasks.
const _: fn() = || {
    fn shareable<T: Send + Sync>() {}
    shareable::<ChunkFetcher>();
};

/// Fetches chunks through the cache. Cheap to share (`Arc`); usable from tokio tasks and, through
/// [`ChunkFetcher::read_blocking`], from plain threads.
pub struct ChunkFetcher {
    shared: Arc<Shared>,
}

impl ChunkFetcher {
    /// A fetcher with the default configuration.
    pub fn new(cache: Arc<ChunkCache>, remote: Arc<dyn Remote>) -> Self {
        Self::with_config(cache, remote, FetchConfig::default())
    }

    pub fn with_config(
        cache: Arc<ChunkCache>,
        remote: Arc<dyn Remote>,
        config: FetchConfig,
    ) -> Self {
        Self {
            shared: Arc::new(Shared::new(cache, remote, config)),
        }
    }

    pub fn cache(&self) -> &Arc<ChunkCache> {
        &self.shared.cache
    }

    /// How many chunks are wanted from the server now (queued or being fetched).
    pub fn flights(&self) -> usize {
        self.shared.flights()
    }

    /// Whether the last call found the server unreachable (and the backoff has not passed).
    pub fn is_offline(&self) -> bool {
        self.shared.is_offline()
    }

    /// Forgets that the server was unreachable, e.g. when the sync loop has reconnected, so that
    /// the next miss tries it at once.
    pub fn mark_online(&self) {
        self.shared.mark_online();
    }

    /// The verified bytes of chunk `id`, from the cache or the server.
    pub async fn chunk(&self, id: ChunkId, priority: Priority) -> Result<Arc<Vec<u8>>, FetchError> {
        let mut outcomes = self.shared.load(&[id], priority).await;
        outcomes.pop().unwrap_or(Err(FetchError::Abandoned))
    }

    /// The bytes of `[offset, offset + len)` of `manifest`'s content (shorter at the end of the
    /// content), fetching only the chunks that cover the range, concurrently. `offsets` are
    /// [`Manifest::offsets`].
    pub async fn read(
        &self,
        manifest: &Manifest,
        offsets: &[u64],
        offset: u64,
        len: u32,
    ) -> Result<Vec<u8>, FetchError> {
        let span = Span::new(manifest, offsets, offset, len)?;
        let ids = span.ids(manifest);
        let outcomes = self.shared.load(&ids, Priority::OnDemand).await;
        span.assemble(manifest, offsets, outcomes)
    }

    /// [`ChunkFetcher::read`] for one open file whose access pattern `readahead` tracks: when the
    /// reads are sequential, the chunks after the range are prefetched in the background.
    pub async fn read_with_readahead(
        &self,
        manifest: &Manifest,
        offsets: &[u64],
        offset: u64,
        len: u32,
        readahead: &mut ReadAhead,
    ) -> Result<Vec<u8>, FetchError> {
        let span = Span::new(manifest, offsets, offset, len)?;
        self.read_ahead(manifest, &span, readahead);
        let outcomes = self
            .shared
            .load(&span.ids(manifest), Priority::OnDemand)
            .await;
        span.assemble(manifest, offsets, outcomes)
    }

    /// [`ChunkFetcher::read`] (with optional read-ahead) for threads that cannot `.await`, such as
    /// FUSE workers: the cached prefix of the range is read on the calling thread; the rest waits on
    /// `runtime`. Meant for threads outside the runtime; inside a multi-threaded runtime it uses
    /// `block_in_place`. Inside a current-thread runtime it would deadlock, so it returns
    /// [`FetchError::InsideRuntime`] there.
    pub fn read_blocking(
        &self,
        runtime: &Handle,
        manifest: &Manifest,
        offsets: &[u64],
        offset: u64,
        len: u32,
        readahead: Option<&mut ReadAhead>,
    ) -> Result<Vec<u8>, FetchError> {
        if let Ok(current) = Handle::try_current()
            && current.runtime_flavor() == RuntimeFlavor::CurrentThread
        {
            return Err(FetchError::InsideRuntime);
        }
        self.shared.remember(runtime);
        let span = Span::new(manifest, offsets, offset, len)?;
        if let Some(readahead) = readahead {
            self.read_ahead(manifest, &span, readahead);
        }
        let ids = span.ids(manifest);
        // Fast path: the cached prefix of the range, read right here without the runtime.
        let mut outcomes: Vec<Outcome> = Vec::with_capacity(ids.len());
        for id in &ids {
            match self.shared.cache.get(id) {
                Ok(Some(data)) => outcomes.push(Ok(Arc::new(data))),
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(chunk = %id, "cannot read cached chunk, fetching it instead: {e}");
                    break;
                }
            }
        }
        if outcomes.len() < ids.len() {
            let rest = &ids[outcomes.len()..];
            let fetched = tokio::task::block_in_place(|| {
                runtime.block_on(self.shared.load(rest, Priority::OnDemand))
            });
            outcomes.extend(fetched);
        }
        span.assemble(manifest, offsets, outcomes)
    }

    /// Queues `ids` for background fetching into the cache (pinned files) and returns at once;
    /// cached chunks are skipped. Callable from any thread: work starts on the current runtime, else
    /// on the last one the fetcher was used from (if none yet, with the next async call).
    pub fn prefetch(&self, ids: impl IntoIterator<Item = ChunkId>) {
        self.shared.enqueue(ids, Priority::Background);
    }

    /// Fetches every chunk of `ids` into the cache at background priority and returns once they are
    /// all cached, or with the first error. Hold the chunks first (pinned content), or eviction may
    /// remove them again; such a chunk is reported as [`FetchError::Cache`].
    pub async fn hydrate(&self, ids: impl IntoIterator<Item = ChunkId>) -> Result<(), FetchError> {
        let ids: Vec<ChunkId> = ids.into_iter().collect();
        let mut first_error = None;
        for window in ids.chunks(self.shared.config.hydrate_window.max(1)) {
            let missing: Vec<ChunkId> = window
                .iter()
                .copied()
                .filter(|id| !self.shared.cache.contains(id))
                .collect();
            if missing.is_empty() {
                continue;
            }
            for outcome in self.shared.load(&missing, Priority::Background).await {
                if let Err(e) = outcome {
                    first_error.get_or_insert(e);
                }
            }
            if let Some(e) = first_error {
                return Err(e);
            }
        }
        match ids.iter().find(|id| !self.shared.cache.contains(id)) {
            Some(id) => Err(FetchError::Cache {
                id: *id,
                reason: "it was evicted again or could not be written; is it held?".into(),
            }),
            None => Ok(()),
        }
    }

    /// Lets `readahead` see this read and queues what it asks for.
    fn read_ahead(&self, manifest: &Manifest, span: &Span, readahead: &mut ReadAhead) {
        let len = u32::try_from(span.end - span.offset).unwrap_or(u32::MAX);
        let ahead = readahead.advance(span.offset, len, span.chunks.clone(), manifest.chunks.len());
        if !ahead.is_empty() && !self.shared.is_offline() {
            self.shared.enqueue(
                manifest.chunks[ahead].iter().map(|c| c.id),
                Priority::ReadAhead,
            );
        }
    }
}

/// The chunks covering a byte range of a manifest, checked against it.
struct Span {
    chunks: Range<usize>,
    offset: u64,
    end: u64,
}

impl Span {
    /// Checks that `offsets` fits `manifest` (cheap checks: a wrong manifest gives an error, never a
    /// panic) and finds the chunks covering the range.
    fn new(
        manifest: &Manifest,
        offsets: &[u64],
        offset: u64,
        len: u32,
    ) -> Result<Self, FetchError> {
        if offsets.len() != manifest.chunks.len() {
            return Err(FetchError::Manifest(format!(
                "{} offsets for {} chunks",
                offsets.len(),
                manifest.chunks.len()
            )));
        }
        let consistent = match (offsets.first(), offsets.last(), manifest.chunks.last()) {
            (Some(&first), Some(&last), Some(chunk)) => {
                first == 0 && last + u64::from(chunk.len) == manifest.size
            }
            _ => manifest.size == 0,
        };
        if !consistent {
            return Err(FetchError::Manifest(format!(
                "the chunks do not add up to the size {}",
                manifest.size
            )));
        }
        let chunks = Manifest::chunks_covering(offsets, manifest.size, offset, u64::from(len));
        if chunks.start > chunks.end || chunks.end > manifest.chunks.len() {
            return Err(FetchError::Manifest(
                "the chunk offsets are out of order".into(),
            ));
        }
        let end = offset.saturating_add(u64::from(len)).min(manifest.size);
        // A read that starts past the end is empty (not a negative length).
        let offset = offset.min(end);
        Ok(Self {
            chunks,
            offset,
            end,
        })
    }

    fn ids(&self, manifest: &Manifest) -> Vec<ChunkId> {
        manifest.chunks[self.chunks.clone()]
            .iter()
            .map(|c| c.id)
            .collect()
    }

    /// Cuts the range out of the covering chunks' bytes (in order).
    fn assemble(
        &self,
        manifest: &Manifest,
        offsets: &[u64],
        outcomes: Vec<Outcome>,
    ) -> Result<Vec<u8>, FetchError> {
        if self.chunks.is_empty() {
            return Ok(Vec::new());
        }
        debug_assert_eq!(outcomes.len(), self.chunks.len());
        let mut out = Vec::with_capacity((self.end - self.offset) as usize);
        for (index, outcome) in self.chunks.clone().zip(outcomes) {
            let data = outcome?;
            let ChunkRef { id, len } = manifest.chunks[index];
            if data.len() != len as usize {
                return Err(FetchError::Manifest(format!(
                    "chunk {id} has {} bytes, the manifest says {len}",
                    data.len()
                )));
            }
            let start = offsets[index];
            let from = self.offset.saturating_sub(start) as usize;
            let to = self.end.saturating_sub(start).min(u64::from(len)) as usize;
            let piece = data.get(from..to).ok_or_else(|| {
                FetchError::Manifest(format!("offsets out of order at chunk {index}"))
            })?;
            out.extend_from_slice(piece);
        }
        if out.len() as u64 != self.end - self.offset {
            return Err(FetchError::Manifest(
                "the chunk offsets are out of order".into(),
            ));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::Span;
    use crate::chunking::{ChunkParams, chunk_bytes};

    #[test]
    fn a_read_past_the_end_is_empty_not_a_panic() {
        let manifest = chunk_bytes(&[7u8; 100_000], ChunkParams::default());
        let offsets = manifest.offsets();
        for (offset, len) in [(100_000, 10), (150_000, 4096), (u64::MAX - 1, u32::MAX)] {
            let span = Span::new(&manifest, &offsets, offset, len).unwrap();
            assert!(span.chunks.is_empty(), "{offset}+{len}");
            assert_eq!(span.end - span.offset, 0, "{offset}+{len}");
        }
    }
}

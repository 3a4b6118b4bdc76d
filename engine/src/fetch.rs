//! The chunk fetcher: chunk bytes from the [`ChunkCache`], else from the server, verified, with one
//! fetch per chunk however many readers want it, priorities, batching, read-ahead and a fast failure
//! when the server is unreachable.
//!
//! # How a request flows
//!
//! Every wanted chunk gets a *flight* in the [`Scheduler`] (single-flight: later requests for the same
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
//! the cache fail at once with [`FetchError::Offline`] instead of waiting, so a read of an uncached
//! file while offline fails within about a second and never hangs. Corrupt bytes are retried once,
//! then reported as [`FetchError::Corrupt`]; they are never cached or returned.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::oneshot;

use crate::cache::ChunkCache;
use crate::chunking::{ChunkId, ChunkRef, Manifest};
use crate::remote::{Remote, RemoteError};

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
    const ALL: [Priority; 3] = [Priority::OnDemand, Priority::ReadAhead, Priority::Background];

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
    /// Timeout of a call: this plus `per_chunk_timeout` for each chunk in it.
    pub call_timeout: Duration,
    pub per_chunk_timeout: Duration,
    /// After the server is found unreachable, how long requests fail at once without trying it.
    pub offline_backoff: Duration,
    /// How many chunks [`ChunkFetcher::hydrate`] has in flight at once.
    pub hydrate_window: usize,
}

impl Default for FetchConfig {
    fn default() -> Self {
        Self {
            batch_chunks: 8,
            max_calls: 6,
            readahead_calls: 4,
            background_calls: 2,
            call_timeout: Duration::from_millis(1000),
            per_chunk_timeout: Duration::from_millis(250),
            offline_backoff: Duration::from_secs(2),
            hydrate_window: 64,
        }
    }
}

/// Why chunk bytes could not be provided.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    /// The server is unreachable (or did not answer in time) and the chunk is not cached.
    #[error("the server is unreachable and this data is not cached locally ({0}); try again when online")]
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
    #[error("a blocking read was called from inside a current-thread async runtime; use the async read")]
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
            RemoteError::Rejected { message, reason, .. } if reason.is_empty() => FetchError::Rejected(message),
            RemoteError::Rejected { message, reason, .. } => FetchError::Rejected(format!("{reason}: {message}")),
            RemoteError::Corrupt(message) => FetchError::Rejected(format!("the server reports corruption: {message}")),
        }
    }
}

type Outcome = Result<Arc<Vec<u8>>, FetchError>;

/// Fetches chunks through the cache. Cheap to share (`Arc`); usable from tokio tasks and, through
/// [`ChunkFetcher::read_blocking`], from plain threads.
pub struct ChunkFetcher {
    shared: Arc<Shared>,
}

struct Shared {
    cache: Arc<ChunkCache>,
    remote: Arc<dyn Remote>,
    config: FetchConfig,
    sched: Mutex<Scheduler>,
    /// Until when the server counts as unreachable.
    offline_until: Mutex<Option<Instant>>,
    /// The runtime that runs probes and calls: the one current at construction, or the first one an
    /// async method or `read_blocking` runs on.
    runtime: OnceLock<Handle>,
}

impl ChunkFetcher {
    /// A fetcher with the default configuration.
    pub fn new(cache: Arc<ChunkCache>, remote: Arc<dyn Remote>) -> Self {
        Self::with_config(cache, remote, FetchConfig::default())
    }

    pub fn with_config(cache: Arc<ChunkCache>, remote: Arc<dyn Remote>, config: FetchConfig) -> Self {
        let runtime = OnceLock::new();
        if let Ok(handle) = Handle::try_current() {
            let _ = runtime.set(handle);
        }
        Self {
            shared: Arc::new(Shared {
                cache,
                remote,
                config,
                sched: Mutex::new(Scheduler::default()),
                offline_until: Mutex::new(None),
                runtime,
            }),
        }
    }

    pub fn cache(&self) -> &Arc<ChunkCache> {
        &self.shared.cache
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
        self.shared.remember_runtime();
        let mut outcomes = self.shared.load(&[id], priority).await;
        outcomes.pop().unwrap_or(Err(FetchError::Abandoned))
    }

    /// The bytes of `[offset, offset + len)` of `manifest`'s content (shorter at the end of the
    /// content), fetching only the chunks that cover the range, concurrently. `offsets` are
    /// [`Manifest::offsets`].
    pub async fn read(&self, manifest: &Manifest, offsets: &[u64], offset: u64, len: u32) -> Result<Vec<u8>, FetchError> {
        self.shared.remember_runtime();
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
        self.shared.remember_runtime();
        self.read_ahead(manifest, offsets, offset, len, readahead)?;
        self.read(manifest, offsets, offset, len).await
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
        let _ = self.shared.runtime.set(runtime.clone());
        let span = Span::new(manifest, offsets, offset, len)?;
        if let Some(readahead) = readahead {
            self.read_ahead(manifest, offsets, offset, len, readahead)?;
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
            let fetched =
                tokio::task::block_in_place(|| runtime.block_on(self.shared.load(rest, Priority::OnDemand)));
            outcomes.extend(fetched);
        }
        span.assemble(manifest, offsets, outcomes)
    }

    /// Queues `ids` for background fetching into the cache (pinned files) and returns at once;
    /// cached chunks are skipped. Work starts on the fetcher's runtime; if none is known yet, it
    /// starts with the next async call.
    pub fn prefetch(&self, ids: impl IntoIterator<Item = ChunkId>) {
        self.shared.enqueue(ids, Priority::Background);
    }

    /// Fetches every chunk of `ids` into the cache at background priority and returns once they are
    /// all cached, or with the first error. Hold the chunks first (pinned content), or eviction may
    /// remove them again; such a chunk is reported as [`FetchError::Cache`].
    pub async fn hydrate(&self, ids: impl IntoIterator<Item = ChunkId>) -> Result<(), FetchError> {
        self.shared.remember_runtime();
        let ids: Vec<ChunkId> = ids.into_iter().collect();
        let mut first_error = None;
        for window in ids.chunks(self.shared.config.hydrate_window.max(1)) {
            let missing: Vec<ChunkId> = window.iter().copied().filter(|id| !self.shared.cache.contains(id)).collect();
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

    /// Lets `readahead` see this read and prefetches what it asks for.
    fn read_ahead(
        &self,
        manifest: &Manifest,
        offsets: &[u64],
        offset: u64,
        len: u32,
        readahead: &mut ReadAhead,
    ) -> Result<(), FetchError> {
        let span = Span::new(manifest, offsets, offset, len)?;
        let ahead = readahead.advance(offset, len, span.chunks.clone(), manifest.chunks.len());
        if !ahead.is_empty() && !self.shared.is_offline() {
            self.shared
                .enqueue(manifest.chunks[ahead].iter().map(|c| c.id), Priority::ReadAhead);
        }
        Ok(())
    }
}

/// Detects sequential access on one open file and says which chunks to prefetch. Keep one per file
/// handle; reset it (or make a new one) when the handle's content changes.
///
/// A read counts as sequential when it starts within [`ReadAhead::SLACK`] of where the previous one
/// ended (multi-threaded FUSE reads arrive slightly out of order), or at offset 0 on first use. The
/// window starts at 2 chunks after the read and doubles with each sequential read up to the maximum;
/// a random read resets it.
#[derive(Debug, Clone)]
pub struct ReadAhead {
    /// Where the previous read ended.
    next: Option<u64>,
    /// The current window, in chunks (0: not sequential).
    window: usize,
    /// Chunks before this index have been requested already.
    requested_to: usize,
    max_window: usize,
}

impl Default for ReadAhead {
    /// Up to 16 chunks (≈1 MiB at the average chunk size) ahead.
    fn default() -> Self {
        Self::new(16)
    }
}

impl ReadAhead {
    /// How far from the previous read's end a read may start and still count as sequential.
    pub const SLACK: u64 = 256 * 1024;

    /// Prefetches at most `max_window` chunks ahead (0 disables read-ahead).
    pub fn new(max_window: usize) -> Self {
        Self {
            next: None,
            window: 0,
            requested_to: 0,
            max_window,
        }
    }

    /// Records a read of `[offset, offset + len)` covering chunks `covering` of `total`, and returns
    /// the chunk indexes to prefetch now (none already asked for).
    pub fn advance(&mut self, offset: u64, len: u32, covering: Range<usize>, total: usize) -> Range<usize> {
        let sequential = match self.next {
            Some(next) => offset.abs_diff(next) <= Self::SLACK,
            None => offset == 0,
        };
        self.next = Some(offset.saturating_add(u64::from(len)));
        if !sequential || self.max_window == 0 {
            self.window = 0;
            self.requested_to = 0;
            return 0..0;
        }
        self.window = (self.window * 2).clamp(2, self.max_window.max(2)).min(self.max_window);
        let start = covering.end.max(self.requested_to);
        let end = covering.end.saturating_add(self.window).min(total);
        if start >= end {
            return 0..0;
        }
        self.requested_to = end;
        start..end
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
    fn new(manifest: &Manifest, offsets: &[u64], offset: u64, len: u32) -> Result<Self, FetchError> {
        if offsets.len() != manifest.chunks.len() {
            return Err(FetchError::Manifest(format!(
                "{} offsets for {} chunks",
                offsets.len(),
                manifest.chunks.len()
            )));
        }
        let consistent = match (offsets.first(), offsets.last(), manifest.chunks.last()) {
            (Some(&first), Some(&last), Some(chunk)) => first == 0 && last + u64::from(chunk.len) == manifest.size,
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
            return Err(FetchError::Manifest("the chunk offsets are out of order".into()));
        }
        let end = offset.saturating_add(u64::from(len)).min(manifest.size);
        Ok(Self { chunks, offset, end })
    }

    fn ids(&self, manifest: &Manifest) -> Vec<ChunkId> {
        manifest.chunks[self.chunks.clone()].iter().map(|c| c.id).collect()
    }

    /// Cuts the range out of the covering chunks' bytes (in order).
    fn assemble(&self, manifest: &Manifest, offsets: &[u64], outcomes: Vec<Outcome>) -> Result<Vec<u8>, FetchError> {
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
            let piece = data
                .get(from..to)
                .ok_or_else(|| FetchError::Manifest(format!("offsets out of order at chunk {index}")))?;
            out.extend_from_slice(piece);
        }
        if out.len() as u64 != self.end - self.offset {
            return Err(FetchError::Manifest("the chunk offsets are out of order".into()));
        }
        Ok(out)
    }
}

// ----- the scheduler -----

/// Where a flight is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Its cache lookup is running.
    Probing,
    /// Waiting in the queue of its priority.
    Queued,
    /// Part of a running call.
    Running,
}

/// All requests for one chunk, served by one fetch.
struct Flight {
    priority: Priority,
    stage: Stage,
    waiters: Vec<oneshot::Sender<Outcome>>,
}

/// Flights, their queues and the running calls, under one short-held lock.
#[derive(Default)]
struct Scheduler {
    flights: HashMap<ChunkId, Flight>,
    /// Per priority rank. An id is live in a queue only while its flight is `Queued` at that queue's
    /// priority; entries left behind by a priority upgrade are skipped.
    queues: [VecDeque<ChunkId>; 3],
    /// Calls running, per priority rank.
    running: [usize; 3],
}

impl Scheduler {
    fn can_start(&self, priority: Priority, config: &FetchConfig) -> bool {
        let total: usize = self.running.iter().sum();
        let cap = match priority {
            Priority::OnDemand => config.max_calls,
            Priority::ReadAhead => config.readahead_calls,
            Priority::Background => config.background_calls,
        };
        total < config.max_calls.max(1) && self.running[priority.rank()] < cap.max(1)
    }

    /// Takes up to `max` live queued chunks of `priority`, marking them running.
    fn take_batch(&mut self, priority: Priority, max: usize) -> Vec<ChunkId> {
        let mut batch = Vec::new();
        while batch.len() < max.max(1) {
            let Some(id) = self.queues[priority.rank()].pop_front() else {
                break;
            };
            if let Some(flight) = self.flights.get_mut(&id)
                && flight.stage == Stage::Queued
                && flight.priority == priority
            {
                flight.stage = Stage::Running;
                batch.push(id);
            }
        }
        batch
    }

    /// Raises the priority of `id`'s flight to `priority` if that is more urgent, moving it to the
    /// more urgent queue if it is queued. Returns whether it moved (the caller then pumps).
    fn upgrade(&mut self, id: ChunkId, priority: Priority) -> bool {
        let Some(flight) = self.flights.get_mut(&id) else {
            return false;
        };
        if priority.rank() >= flight.priority.rank() {
            return false;
        }
        flight.priority = priority;
        if flight.stage != Stage::Queued {
            return false;
        }
        // The entry in the old queue goes stale: `take_batch` skips it.
        self.queues[priority.rank()].push_back(id);
        true
    }

    /// Queues a flight that missed the cache.
    fn queue(&mut self, id: ChunkId) {
        if let Some(flight) = self.flights.get_mut(&id) {
            flight.stage = Stage::Queued;
            self.queues[flight.priority.rank()].push_back(id);
        }
    }

    /// Ends a flight, handing back its waiters.
    fn finish(&mut self, id: &ChunkId) -> Vec<oneshot::Sender<Outcome>> {
        self.flights.remove(id).map(|f| f.waiters).unwrap_or_default()
    }
}

fn send_all(waiters: Vec<oneshot::Sender<Outcome>>, outcome: &Outcome) {
    for waiter in waiters {
        // A waiter that gave up has dropped its receiver; nothing to do.
        let _ = waiter.send(outcome.clone());
    }
}

impl Shared {
    fn remember_runtime(&self) {
        if self.runtime.get().is_none()
            && let Ok(handle) = Handle::try_current()
        {
            let _ = self.runtime.set(handle);
        }
    }

    fn is_offline(&self) -> bool {
        matches!(*self.offline_until.lock(), Some(until) if Instant::now() < until)
    }

    fn mark_offline(&self, reason: &str) {
        let mut until = self.offline_until.lock();
        if until.is_none() {
            tracing::warn!("the server is unreachable ({reason}); reads of uncached data fail until it answers");
        }
        *until = Some(Instant::now() + self.config.offline_backoff);
    }

    fn mark_online(&self) {
        if self.offline_until.lock().take().is_some() {
            tracing::info!("the server answers again");
        }
    }

    /// Joins or creates the flights of `ids` and waits for their outcomes, in order.
    async fn load(self: &Arc<Self>, ids: &[ChunkId], priority: Priority) -> Vec<Outcome> {
        let mut receivers = Vec::with_capacity(ids.len());
        let mut probes = Vec::new();
        let mut upgraded = false;
        {
            let mut sched = self.sched.lock();
            for &id in ids {
                let (tx, rx) = oneshot::channel();
                receivers.push(rx);
                match sched.flights.get_mut(&id) {
                    Some(flight) => {
                        flight.waiters.push(tx);
                        upgraded |= sched.upgrade(id, priority);
                    }
                    None => {
                        sched.flights.insert(
                            id,
                            Flight {
                                priority,
                                stage: Stage::Probing,
                                waiters: vec![tx],
                            },
                        );
                        probes.push(id);
                    }
                }
            }
        }
        if upgraded {
            self.pump();
        }
        if !probes.is_empty() {
            // A task of its own: the flights must progress even if this caller is cancelled.
            match self.runtime.get() {
                Some(runtime) => {
                    runtime.spawn(Arc::clone(self).probe(probes));
                }
                None => self.fail(&probes, &FetchError::Abandoned),
            }
        }
        let mut outcomes = Vec::with_capacity(receivers.len());
        for rx in receivers {
            outcomes.push(rx.await.unwrap_or(Err(FetchError::Abandoned)));
        }
        outcomes
    }

    /// Queues uncached `ids` without waiting for them (prefetch, read-ahead). No cache probe: the
    /// `contains` filter is enough, and a chunk cached meanwhile is merely fetched twice.
    fn enqueue(self: &Arc<Self>, ids: impl IntoIterator<Item = ChunkId>, priority: Priority) {
        let ids: Vec<ChunkId> = ids.into_iter().filter(|id| !self.cache.contains(id)).collect();
        if ids.is_empty() {
            return;
        }
        {
            let mut sched = self.sched.lock();
            for id in ids {
                match sched.flights.get(&id) {
                    Some(_) => {
                        sched.upgrade(id, priority);
                    }
                    None => {
                        sched.flights.insert(
                            id,
                            Flight {
                                priority,
                                stage: Stage::Queued,
                                waiters: Vec::new(),
                            },
                        );
                        sched.queues[priority.rank()].push_back(id);
                    }
                }
            }
        }
        self.pump();
    }

    /// Looks the new flights up in the cache: hits are answered, misses queued.
    async fn probe(self: Arc<Self>, ids: Vec<ChunkId>) {
        let cache = Arc::clone(&self.cache);
        let lookup = {
            let ids = ids.clone();
            tokio::task::spawn_blocking(move || ids.iter().map(|id| cache.get(id)).collect::<Vec<_>>())
        };
        let found = match lookup.await {
            Ok(found) => found,
            Err(e) => {
                tracing::error!("cache lookup task failed: {e}");
                self.fail(&ids, &FetchError::Abandoned);
                return;
            }
        };
        let offline = self.is_offline();
        let mut answered = Vec::new();
        {
            let mut sched = self.sched.lock();
            for (id, result) in ids.into_iter().zip(found) {
                let hit = match result {
                    Ok(hit) => hit,
                    Err(e) => {
                        tracing::warn!(chunk = %id, "cannot read cached chunk, fetching it instead: {e}");
                        None
                    }
                };
                match hit {
                    Some(data) => answered.push((sched.finish(&id), Ok(Arc::new(data)))),
                    None if offline => answered.push((sched.finish(&id), Err(self.offline_error()))),
                    None => sched.queue(id),
                }
            }
        }
        for (waiters, outcome) in answered {
            send_all(waiters, &outcome);
        }
        self.pump();
    }

    fn offline_error(&self) -> FetchError {
        FetchError::Offline("it did not answer recently".into())
    }

    /// Ends the flights of `ids` with `error`.
    fn fail(&self, ids: &[ChunkId], error: &FetchError) {
        let waiters: Vec<_> = {
            let mut sched = self.sched.lock();
            ids.iter().map(|id| sched.finish(id)).collect()
        };
        let outcome = Err(error.clone());
        for waiters in waiters {
            send_all(waiters, &outcome);
        }
    }

    /// Starts as many calls as the limits allow, most urgent queue first. While offline, fails
    /// everything queued instead.
    fn pump(self: &Arc<Self>) {
        let Some(runtime) = self.runtime.get() else {
            return;
        };
        let offline = self.is_offline();
        let mut batches = Vec::new();
        let mut dropped = Vec::new();
        {
            let mut sched = self.sched.lock();
            for priority in Priority::ALL {
                while offline || sched.can_start(priority, &self.config) {
                    let batch = sched.take_batch(priority, self.config.batch_chunks);
                    if batch.is_empty() {
                        break;
                    }
                    if offline {
                        dropped.extend(batch.iter().map(|id| sched.finish(id)));
                    } else {
                        sched.running[priority.rank()] += 1;
                        batches.push((priority, batch));
                    }
                }
            }
        }
        let outcome = Err(self.offline_error());
        for waiters in dropped {
            send_all(waiters, &outcome);
        }
        for (priority, batch) in batches {
            tracing::trace!(?priority, chunks = batch.len(), "fetching chunks");
            let call = Call {
                shared: Arc::clone(self),
                priority,
                ids: batch,
            };
            runtime.spawn(call.run());
        }
    }

    /// `get_chunks` with a timeout; updates the online state.
    async fn get_chunks(&self, ids: &[ChunkId]) -> Result<Vec<(ChunkId, Vec<u8>)>, RemoteError> {
        let limit = self.config.call_timeout + self.config.per_chunk_timeout * ids.len() as u32;
        let result = match tokio::time::timeout(limit, self.remote.get_chunks(ids.to_vec())).await {
            Ok(result) => result,
            Err(_) => Err(RemoteError::Unavailable(format!("no answer within {limit:?}"))),
        };
        match &result {
            Err(RemoteError::Unavailable(reason)) => self.mark_offline(reason),
            _ => self.mark_online(),
        }
        result
    }

    /// Fetches `ids`, verifies and caches them, retrying corrupt ones once. Splits a refused batch
    /// into single chunks so one missing chunk does not fail the others.
    async fn fetch(&self, ids: &[ChunkId]) -> Vec<(ChunkId, Outcome)> {
        match self.fetch_verified(ids).await {
            Ok(outcomes) => outcomes,
            Err(RemoteError::Rejected { .. }) if ids.len() > 1 => {
                let mut outcomes = Vec::with_capacity(ids.len());
                for id in ids {
                    match self.fetch_verified(std::slice::from_ref(id)).await {
                        Ok(mut one) => outcomes.append(&mut one),
                        Err(e) => outcomes.push((*id, Err(FetchError::from_remote(e)))),
                    }
                }
                outcomes
            }
            Err(e) => {
                let error = FetchError::from_remote(e);
                ids.iter().map(|id| (*id, Err(error.clone()))).collect()
            }
        }
    }

    /// One call plus one retry of whatever arrived corrupt. A failed call is returned as is.
    async fn fetch_verified(&self, ids: &[ChunkId]) -> Result<Vec<(ChunkId, Outcome)>, RemoteError> {
        let mut outcomes = Vec::with_capacity(ids.len());
        let mut pending = ids.to_vec();
        for attempt in 1..=2 {
            match self.get_chunks(&pending).await {
                Ok(items) => {
                    let (good, bad) = self.verify_and_store(pending, items).await;
                    outcomes.extend(good);
                    pending = bad;
                }
                Err(RemoteError::Corrupt(reason)) if attempt == 1 => {
                    tracing::warn!(chunks = pending.len(), "the server reports corrupt data ({reason}); retrying once");
                }
                Err(RemoteError::Corrupt(_)) => break,
                Err(e) => return Err(e),
            }
            if pending.is_empty() {
                break;
            }
            if attempt == 1 {
                tracing::warn!(chunks = pending.len(), "chunks arrived corrupted; retrying once");
            }
        }
        outcomes.extend(pending.into_iter().map(|id| (id, Err(FetchError::Corrupt(id)))));
        Ok(outcomes)
    }

    /// Checks each returned chunk against its id and caches the good ones (on the blocking pool:
    /// hashing and file writes). Returns the good outcomes and the ids to retry.
    async fn verify_and_store(
        &self,
        wanted: Vec<ChunkId>,
        items: Vec<(ChunkId, Vec<u8>)>,
    ) -> (Vec<(ChunkId, Outcome)>, Vec<ChunkId>) {
        let cache = Arc::clone(&self.cache);
        let ids = wanted.clone();
        let work = move || {
            let mut arrived: HashMap<ChunkId, Vec<u8>> = items.into_iter().collect();
            let mut good = Vec::with_capacity(wanted.len());
            let mut bad = Vec::new();
            for id in wanted {
                match arrived.remove(&id) {
                    Some(data) if ChunkId::of(&data) == id => {
                        if let Err(e) = cache.insert(id, &data) {
                            // The bytes are good; the reader gets them, the next one refetches.
                            tracing::warn!(chunk = %id, "cannot cache a fetched chunk: {e}");
                        }
                        good.push((id, Ok(Arc::new(data))));
                    }
                    Some(data) => {
                        tracing::warn!(chunk = %id, len = data.len(), "the server sent bytes that do not match the chunk id");
                        bad.push(id);
                    }
                    None => {
                        tracing::warn!(chunk = %id, "the server's answer lacks a requested chunk");
                        bad.push(id);
                    }
                }
            }
            (good, bad)
        };
        match tokio::task::spawn_blocking(work).await {
            Ok(result) => result,
            Err(e) => {
                tracing::error!("chunk verification task failed: {e}");
                (ids.into_iter().map(|id| (id, Err(FetchError::Abandoned))).collect(), Vec::new())
            }
        }
    }
}

/// One running `get_chunks` call. Dropping it, finished or not, frees its slot, fails the flights
/// it did not answer (so no waiter hangs, even if the task is cancelled) and starts queued work.
struct Call {
    shared: Arc<Shared>,
    priority: Priority,
    ids: Vec<ChunkId>,
}

impl Call {
    async fn run(mut self) {
        let outcomes = self.shared.fetch(&self.ids).await;
        let answered: Vec<_> = {
            let mut sched = self.shared.sched.lock();
            outcomes
                .into_iter()
                .map(|(id, outcome)| (id, sched.finish(&id), outcome))
                .collect()
        };
        // Only what was not answered is left for Drop to fail. (After `finish`, a new flight for the
        // same chunk may start; Drop must not touch it.)
        self.ids.retain(|id| !answered.iter().any(|(done, _, _)| done == id));
        for (_, waiters, outcome) in answered {
            send_all(waiters, &outcome);
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        let unanswered: Vec<_> = {
            let mut sched = self.shared.sched.lock();
            sched.running[self.priority.rank()] -= 1;
            let mut unanswered = Vec::new();
            for id in &self.ids {
                if sched.flights.get(id).is_some_and(|f| f.stage == Stage::Running) {
                    unanswered.push(sched.finish(id));
                }
            }
            unanswered
        };
        let outcome = Err(FetchError::Abandoned);
        for waiters in unanswered {
            send_all(waiters, &outcome);
        }
        self.shared.pump();
    }
}

//! The fetcher's machinery: flights (one per wanted chunk, shared by all its waiters), the priority
//! queues, the calls to the server with their limits, timeouts and retries, and verification.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

use super::{FetchConfig, FetchError, Outcome, Priority};
use crate::cache::ChunkCache;
use crate::chunking::ChunkId;
use crate::remote::{Remote, RemoteError};

/// The fetcher's state, shared by its handle and its tasks.
pub(super) struct Shared {
    pub(super) cache: Arc<ChunkCache>,
    remote: Arc<dyn Remote>,
    pub(super) config: FetchConfig,
    sched: Mutex<Scheduler>,
    /// Until when the server counts as unreachable.
    offline_until: Mutex<Option<Instant>>,
    /// The runtime last used, for work started from plain threads (`prefetch`).
    runtime: Mutex<Option<Handle>>,
}

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
        self.flights
            .remove(id)
            .map(|f| f.waiters)
            .unwrap_or_default()
    }
}

fn send_all(waiters: Vec<oneshot::Sender<Outcome>>, outcome: &Outcome) {
    for waiter in waiters {
        // A waiter that gave up has dropped its receiver; nothing to do.
        let _ = waiter.send(outcome.clone());
    }
}

impl Shared {
    pub(super) fn new(
        cache: Arc<ChunkCache>,
        remote: Arc<dyn Remote>,
        config: FetchConfig,
    ) -> Self {
        Self {
            cache,
            remote,
            config,
            sched: Mutex::new(Scheduler::default()),
            offline_until: Mutex::new(None),
            runtime: Mutex::new(Handle::try_current().ok()),
        }
    }

    /// Remembers `runtime` for work started from plain threads.
    pub(super) fn remember(&self, runtime: &Handle) {
        *self.runtime.lock() = Some(runtime.clone());
    }

    /// Where to spawn: the current runtime (remembered for later), else the last one used.
    fn spawner(&self) -> Option<Handle> {
        match Handle::try_current() {
            Ok(current) => {
                let mut remembered = self.runtime.lock();
                if remembered.as_ref().is_none_or(|h| h.id() != current.id()) {
                    *remembered = Some(current.clone());
                }
                Some(current)
            }
            Err(_) => self.runtime.lock().clone(),
        }
    }

    /// Chunks wanted from the server now: queued, probing the cache or being fetched.
    pub(super) fn flights(&self) -> usize {
        self.sched.lock().flights.len()
    }

    pub(super) fn is_offline(&self) -> bool {
        matches!(*self.offline_until.lock(), Some(until) if Instant::now() < until)
    }

    fn mark_offline(&self, reason: &str) {
        let mut until = self.offline_until.lock();
        if until.is_none() {
            tracing::warn!(
                "the server is unreachable ({reason}); reads of uncached data fail until it answers"
            );
        }
        *until = Some(Instant::now() + self.config.offline_backoff);
    }

    pub(super) fn mark_online(&self) {
        if self.offline_until.lock().take().is_some() {
            tracing::info!("the server answers again");
        }
    }

    /// Joins or creates the flights of `ids` and waits for their outcomes, in order.
    pub(super) async fn load(
        self: &Arc<Self>,
        ids: &[ChunkId],
        priority: Priority,
    ) -> Vec<Outcome> {
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
            match self.spawner() {
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
    pub(super) fn enqueue(
        self: &Arc<Self>,
        ids: impl IntoIterator<Item = ChunkId>,
        priority: Priority,
    ) {
        let ids: Vec<ChunkId> = ids
            .into_iter()
            .filter(|id| !self.cache.contains(id))
            .collect();
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
            tokio::task::spawn_blocking(move || {
                ids.iter().map(|id| cache.get(id)).collect::<Vec<_>>()
            })
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
                    None if offline => {
                        answered.push((sched.finish(&id), Err(self.offline_error())))
                    }
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
        let Some(runtime) = self.spawner() else {
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
                finished: false,
            };
            runtime.spawn(call.run());
        }
    }

    /// `get_chunks` with a timeout; updates the online state. Past its timeout the call goes on
    /// while the server still delivers chunk bytes (see [`FetchConfig::stall_timeout`]).
    async fn get_chunks(&self, ids: &[ChunkId]) -> Result<Vec<(ChunkId, Vec<u8>)>, RemoteError> {
        let limit = self.config.call_timeout + self.config.per_chunk_timeout * ids.len() as u32;
        let started = Instant::now();
        let call = self.remote.get_chunks(ids.to_vec());
        tokio::pin!(call);
        let result = loop {
            match tokio::time::timeout(limit, &mut call).await {
                Ok(result) => break result,
                Err(_) if self.still_delivering(started) => {
                    tracing::debug!(
                        chunks = ids.len(),
                        elapsed = ?started.elapsed(),
                        "a slow chunk download goes on: the server is still sending"
                    );
                }
                Err(_) => {
                    break Err(RemoteError::Unavailable(format!(
                        "no answer within {:?}",
                        started.elapsed()
                    )));
                }
            }
        };
        match &result {
            Err(RemoteError::Unavailable(reason)) => self.mark_offline(reason),
            _ => self.mark_online(),
        }
        result
    }

    /// Whether a call that started at `started` and is past its timeout may go on: the server
    /// delivered chunk bytes within the stall timeout, and the call is not past its longest.
    fn still_delivering(&self, started: Instant) -> bool {
        started.elapsed() < self.config.max_call_time
            && self
                .remote
                .last_progress()
                .is_some_and(|at| at.elapsed() < self.config.stall_timeout)
    }

    /// Fetches `ids`, verifies and caches them; an outcome for every id. Chunks that arrive corrupt
    /// are asked for once more, then reported corrupt. A refused batch is split into single chunks,
    /// so that one chunk the server lacks does not fail the others. Once the server is found
    /// unreachable (or refuses the token), everything left fails at once instead of timing out
    /// again and again.
    async fn fetch(&self, ids: &[ChunkId]) -> Vec<(ChunkId, Outcome)> {
        let mut outcomes = Vec::with_capacity(ids.len());
        // Groups of ids still to ask for, with whether they are a corrupt retry.
        let mut work: Vec<(Vec<ChunkId>, bool)> = vec![(ids.to_vec(), false)];
        while let Some((group, retry)) = work.pop() {
            let bad = match self.attempt(&group).await {
                Ok((good, bad)) => {
                    outcomes.extend(good);
                    bad
                }
                Err(RemoteError::Corrupt(reason)) => {
                    tracing::warn!(
                        chunks = group.len(),
                        "the server reports corrupt data: {reason}"
                    );
                    group
                }
                Err(RemoteError::Rejected { .. }) if group.len() > 1 => {
                    work.extend(group.into_iter().map(|id| (vec![id], retry)));
                    continue;
                }
                Err(e) => {
                    let fatal = matches!(
                        e,
                        RemoteError::Unavailable(_) | RemoteError::Unauthenticated(_)
                    );
                    let error = FetchError::from_remote(e);
                    let rest = if fatal {
                        std::mem::take(&mut work)
                    } else {
                        Vec::new()
                    };
                    let failed = group
                        .into_iter()
                        .chain(rest.into_iter().flat_map(|(g, _)| g));
                    outcomes.extend(failed.map(|id| (id, Err(error.clone()))));
                    continue;
                }
            };
            if bad.is_empty() {
                continue;
            }
            if retry {
                outcomes.extend(bad.into_iter().map(|id| (id, Err(FetchError::Corrupt(id)))));
            } else {
                tracing::warn!(
                    chunks = bad.len(),
                    "chunks arrived corrupted; asking once more"
                );
                work.push((bad, true));
            }
        }
        debug_assert_eq!(
            outcomes.len(),
            ids.len(),
            "every chunk of a call gets an outcome"
        );
        outcomes
    }

    /// One `get_chunks` call: the verified (and cached) chunks, and the ids that arrived bad.
    async fn attempt(
        &self,
        ids: &[ChunkId],
    ) -> Result<(Vec<(ChunkId, Outcome)>, Vec<ChunkId>), RemoteError> {
        let items = self.get_chunks(ids).await?;
        Ok(self.verify_and_store(ids.to_vec(), items).await)
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
                (
                    ids.into_iter()
                        .map(|id| (id, Err(FetchError::Abandoned)))
                        .collect(),
                    Vec::new(),
                )
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
    /// Whether `run` completed. A call dropped unfinished means the runtime is going away: it must
    /// not start more work (spawning on a dead runtime drops the task at once, which would recurse).
    finished: bool,
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
        self.ids
            .retain(|id| !answered.iter().any(|(done, _, _)| done == id));
        for (_, waiters, outcome) in answered {
            send_all(waiters, &outcome);
        }
        self.finished = true;
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        let unanswered: Vec<_> = {
            let mut sched = self.shared.sched.lock();
            sched.running[self.priority.rank()] -= 1;
            let mut unanswered = Vec::new();
            for id in &self.ids {
                if sched
                    .flights
                    .get(id)
                    .is_some_and(|f| f.stage == Stage::Running)
                {
                    unanswered.push(sched.finish(id));
                }
            }
            unanswered
        };
        let outcome = Err(FetchError::Abandoned);
        for waiters in unanswered {
            send_all(waiters, &outcome);
        }
        if self.finished {
            self.shared.pump();
        }
    }
}

//! The background sync loop: when to run a round.
//!
//! A round runs when a local change wakes the engine (after a short debounce, so a burst of writes
//! becomes one upload; while local changes keep coming, the next round waits for them to pause, up
//! to `burst_max`, instead of running back to back with the writer), when the server pushes
//! "namespace advanced" (`Subscribe`, a hint only; after a much shorter window, since another
//! device's change should show up here at once), and periodically as a safety net. Failures back
//! off exponentially with jitter, up to a minute; the first success after an outage brings the
//! device back online and catches up on everything.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::api::Engine;
use crate::round::RoundError;

/// Timing of the loop.
#[derive(Debug, Clone, Copy)]
pub struct LoopTiming {
    /// Wait this long after a local change for more before syncing.
    pub debounce: Duration,
    /// Wait this long after the server reports a new head, so that a burst of commits elsewhere is
    /// pulled in one round. A push also cuts a local debounce short.
    pub push_coalesce: Duration,
    /// Run a round at least this often even without any signal.
    pub poll: Duration,
    /// After a round that did work, the next one waits until local changes pause for `debounce`,
    /// but never longer than this (a long burst still syncs as it goes).
    pub burst_max: Duration,
    /// First and largest wait after a failure.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl Default for LoopTiming {
    fn default() -> Self {
        Self {
            debounce: Duration::from_millis(200),
            push_coalesce: Duration::from_millis(5),
            poll: Duration::from_secs(30),
            burst_max: Duration::from_secs(2),
            backoff_min: Duration::from_millis(250),
            backoff_max: Duration::from_secs(60),
        }
    }
}

/// The running loop; dropping it does not stop it, [`SyncLoop::stop`] does.
pub struct SyncLoop {
    stop: watch::Sender<bool>,
    rounds: JoinHandle<()>,
    notifications: JoinHandle<()>,
}

impl SyncLoop {
    /// Starts the loop on the current tokio runtime.
    pub fn start(engine: Arc<Engine>, timing: LoopTiming) -> Self {
        let (stop, stop_rx) = watch::channel(false);
        let pushed = Arc::new(Notify::new());
        let notifications = tokio::spawn(listen_for_heads(
            engine.clone(),
            pushed.clone(),
            stop_rx.clone(),
            timing,
        ));
        let rounds = tokio::spawn(async move {
            run_rounds(engine.clone(), pushed, stop_rx, timing).await;
            // Stopping (unmount): nothing the mount acknowledged stays volatile.
            if let Err(e) = engine.make_durable() {
                tracing::error!("cannot make local changes durable: {e}");
            }
        });
        Self {
            stop,
            rounds,
            notifications,
        }
    }

    /// Stops the loop after the round in progress (if any) and waits for it.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.rounds.await;
        self.notifications.abort();
        let _ = self.notifications.await;
    }
}

/// A wait in `[d/2, d]`, so that devices retrying after one outage do not all come back at once.
fn jittered(d: Duration) -> Duration {
    let nanos = d.as_nanos() as u64;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos() as u64)
        .unwrap_or(0);
    Duration::from_nanos(nanos / 2 + seed % (nanos / 2 + 1))
}

/// Runs rounds while there is work; then waits for a local change (`engine.wake`), a push from the
/// server (`pushed`), the poll interval, or `stop`.
async fn run_rounds(
    engine: Arc<Engine>,
    pushed: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
    timing: LoopTiming,
) {
    let mut backoff = timing.backoff_min;
    loop {
        if *stop.borrow() {
            return;
        }
        let outcome = engine.sync_round().await;
        // Whatever the round did (offline, it commits nothing), the mount's changes so far become
        // durable now: "within a bounded time" is the debounce plus one round.
        if let Err(e) = engine.flush_relaxed() {
            tracing::error!("cannot make local changes durable: {e}");
        }
        let wait = match outcome {
            Ok(report) if !report.idle() => {
                backoff = timing.backoff_min;
                tracing::debug!(?report, "sync round");
                if !report.more && settle_burst(&engine, &pushed, &mut stop, &timing).await {
                    return;
                }
                continue;
            }
            Ok(_) => {
                backoff = timing.backoff_min;
                None
            }
            Err(RoundError::Remote(e)) if e.is_transient() => {
                tracing::info!("offline: {e}; retrying in about {backoff:?}");
                Some(backoff)
            }
            Err(e) => {
                tracing::error!("sync round failed: {e}");
                Some(backoff)
            }
        };
        if let Some(wait) = wait {
            backoff = (backoff * 2).min(timing.backoff_max);
            tokio::select! {
                _ = tokio::time::sleep(jittered(wait)) => {}
                _ = engine.wake.notified() => {}
                _ = pushed.notified() => {}
                _ = stop.changed() => return,
            }
            continue;
        }
        // Idle: wait for a local change (debounced, unless a push comes meanwhile), a push
        // (briefly coalesced), or the poll interval.
        tokio::select! {
            _ = engine.wake.notified() => {
                tokio::select! {
                    _ = tokio::time::sleep(timing.debounce) => {}
                    _ = pushed.notified() => tokio::time::sleep(timing.push_coalesce).await,
                    _ = stop.changed() => return,
                }
            }
            _ = pushed.notified() => tokio::time::sleep(timing.push_coalesce).await,
            _ = tokio::time::sleep(timing.poll) => {}
            _ = stop.changed() => return,
        }
    }
}

/// After a round that did work and has nothing left to run at once: waits until local changes
/// pause for the debounce (a change during the round or the wait restarts it), at most
/// `burst_max`, or a push comes. A burst of writes (an untar, a build, a clone) is then synced in a
/// few large rounds instead of many small ones whose fsynced transactions compete with the writer.
/// True if the loop must stop.
async fn settle_burst(
    engine: &Engine,
    pushed: &Notify,
    stop: &mut watch::Receiver<bool>,
    timing: &LoopTiming,
) -> bool {
    let deadline = tokio::time::Instant::now() + timing.burst_max;
    loop {
        let pause = tokio::time::sleep(timing.debounce);
        tokio::select! {
            _ = pause => return false,
            _ = tokio::time::sleep_until(deadline) => return false,
            _ = engine.wake.notified() => continue,
            _ = pushed.notified() => return false,
            _ = stop.changed() => return true,
        }
    }
}

/// Keeps a `Subscribe` stream open and tells the round loop (`pushed`) of every head it reports.
async fn listen_for_heads(
    engine: Arc<Engine>,
    pushed: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
    timing: LoopTiming,
) {
    let mut backoff = timing.backoff_min;
    loop {
        let cursor = engine.cursor().unwrap_or(0);
        match engine.remote.subscribe(cursor).await {
            Ok(mut stream) => {
                backoff = timing.backoff_min;
                loop {
                    tokio::select! {
                        event = stream.next() => match event {
                            // A head this device already knows of (its own commits, mostly)
                            // is no news: waking for it would cut a local debounce short.
                            Some(Ok(head)) => {
                                if engine.known_head().is_none_or(|known| head > known) {
                                    pushed.notify_one();
                                }
                            }
                            Some(Err(e)) => {
                                tracing::debug!("notification stream ended: {e}");
                                break;
                            }
                            None => break,
                        },
                        _ = stop.changed() => return,
                    }
                }
            }
            Err(e) => tracing::debug!("cannot subscribe to notifications: {e}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(jittered(backoff)) => {}
            _ = stop.changed() => return,
        }
        backoff = (backoff * 2).min(timing.backoff_max);
    }
}

impl Engine {
    /// The cursor REMOTE has reached.
    pub fn cursor(&self) -> crate::state::StateResult<u64> {
        Ok(self
            .state
            .lock()
            .meta_u64(crate::state::pull::CURSOR)?
            .unwrap_or(0))
    }

    /// The newest journal position this device knows of: its cursor, or a commit of its own that
    /// the cursor has not reached yet. `None` if the state cannot be read.
    fn known_head(&self) -> Option<u64> {
        let state = self.state.lock();
        let cursor = state.meta_u64(crate::state::pull::CURSOR).ok()?;
        let target = state.meta_u64(crate::state::pull::PULL_TARGET).ok()?;
        Some(cursor.unwrap_or(0).max(target.unwrap_or(0)))
    }

    /// Runs rounds until one finds nothing to do (or `max_rounds`), for tests and `bvfs sync --once`.
    pub async fn sync_until_idle(&self, max_rounds: usize) -> Result<usize, RoundError> {
        for round in 1..=max_rounds {
            if self.sync_round().await?.idle() {
                return Ok(round);
            }
        }
        Ok(max_rounds)
    }
}

//! One sync round: pull the server's journal into REMOTE, plan, run the plan.
//!
//! A round is idempotent and re-entrant (ADR-0022): it can stop at any point (crash, network loss) and
//! the next round recomputes the plan from the persisted trees. It never plans from a half-pulled
//! REMOTE: our own commits raise a pull target, and planning waits until the cursor reaches it.
//!
//! Execution order follows the plan's dependencies. Local ops are database changes (placeholders) and
//! run at once under the state lock, in plan order. Remote ops run after them: content is uploaded
//! first (only chunks the server lacks), then the ops are committed in order, in batches, each batch one
//! transaction on the server. Ops that depend on something not run this round wait for the next round.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use bvfs_proto::v1;

use crate::api::{Engine, EngineError};
use crate::execute::LocalEffects;
use crate::model::{NodeId, NodeIdSet};
use crate::planner::{
    ConflictTime, OpId, OpKind, Plan, PlanContext, PlannedOp, Planner, Report, Side,
};
use crate::remote::Position;
use crate::remote::RemoteError;
use crate::residency::StateResidency;
use crate::state::Table;
use crate::state::pull::{
    PULL_TARGET, PULL_TARGET_TAG, PullError, SNAPSHOT_AFTER, SNAPSHOT_AT, SNAPSHOT_AT_TAG,
};
use crate::upload::Uploaded;

/// How a round ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoundReport {
    /// Journal changes applied to REMOTE.
    pub pulled: usize,
    /// Ops planned.
    pub planned: usize,
    /// Local ops applied.
    pub local_applied: usize,
    /// Remote ops committed.
    pub committed: usize,
    /// Whether another round right away can make progress (a commit was refused and the server's
    /// newer state must be pulled and planned against).
    pub more: bool,
}

impl RoundReport {
    /// Whether the round changed nothing and another one now would not either: the trees have
    /// converged, or what is left waits for the user (held deletes) or for a new change.
    pub fn idle(&self) -> bool {
        self.pulled == 0 && self.local_applied == 0 && self.committed == 0 && !self.more
    }
}

/// Why a round stopped early.
#[derive(Debug, thiserror::Error)]
pub enum RoundError {
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl From<crate::state::StateError> for RoundError {
    fn from(e: crate::state::StateError) -> Self {
        RoundError::Engine(e.into())
    }
}

impl From<PullError> for RoundError {
    fn from(e: PullError) -> Self {
        RoundError::Engine(e.into())
    }
}

/// How many times one pull may re-base before giving up (a server that keeps refusing the position
/// a fresh snapshot gave is broken, not restored).
const MAX_REBASES_PER_PULL: usize = 2;

/// Page sizes of pulls, as upper bounds: the server cuts pages by bytes too, and the client halves
/// its limit after an answer too large to carry ([`crate::bounded::PageLimit`]). Snapshot pages are
/// the server's maximum: a first sync of a large namespace wants few, large requests.
const CHANGES_PAGE: u32 = 1_000;
const SNAPSHOT_PAGE: u32 = 50_000;
/// Snapshot nodes applied per transaction. Every transaction writes each index page it touched to the
/// WAL, and a page of nodes in id order touches REMOTE's (parent, name) index all over, so fewer,
/// larger transactions write far less (a first sync of a million nodes: 35 s of SQLite at 5,000 nodes
/// per transaction, 14 s at 50,000, 5 s in one). Each batch is held in memory: 100,000 nodes plus the
/// page fetched ahead cost about 75 MB at the peak.
const SNAPSHOT_BATCH: usize = 100_000;
/// The most chunks the manifests of one snapshot batch may add up to (about 36 bytes each in memory):
/// lists the server elided are fetched before their page is applied, and a batch of large files must
/// not hold them all at once.
const SNAPSHOT_BATCH_CHUNKS: usize = 4 * 1024 * 1024;
/// Snapshot pages fetched ahead of the batch being applied.
const SNAPSHOT_AHEAD: usize = 1;

/// A snapshot page, parsed.
struct SnapshotPage {
    /// The namespace the page says it belongs to.
    namespace: Vec<u8>,
    nodes: Vec<(crate::model::Node, Option<crate::chunking::Manifest>)>,
    /// The id to continue after; `None` on the last page.
    next: Option<NodeId>,
}

impl SnapshotPage {
    /// Parses a page and fetches the chunk lists the server elided from it.
    async fn fetch(
        remote: &dyn crate::remote::Remote,
        page: v1::SnapshotResponse,
    ) -> Result<SnapshotPage, RoundError> {
        let mut manifests = Vec::new();
        for node in &page.nodes {
            manifests.push(crate::bounded::fetch_elided(remote, node).await?);
        }
        let mut parsed = Self::parse(page)?;
        for ((_, manifest), fetched) in parsed.nodes.iter_mut().zip(manifests) {
            if fetched.is_some() {
                *manifest = fetched;
            }
        }
        Ok(parsed)
    }

    fn parse(page: v1::SnapshotResponse) -> Result<SnapshotPage, RoundError> {
        let bad = |e: crate::wire::WireError| {
            RoundError::Engine(EngineError::Io(std::io::Error::other(e)))
        };
        let next = match page.next_after_id.is_empty() {
            true => None,
            false => Some(crate::wire::node_id(&page.next_after_id).map_err(bad)?),
        };
        let nodes = page
            .nodes
            .iter()
            .map(crate::wire::node_from_proto)
            .collect::<Result<_, _>>()
            .map_err(bad)?;
        Ok(SnapshotPage {
            namespace: page.namespace_id,
            nodes,
            next,
        })
    }
}

/// The namespace size to plan with. The planner uses it only for the brake's fraction rule, and above
/// `max_deletes / max_fraction` nodes that rule cannot engage for any plan the count rule lets through,
/// so the brake decides the same with the size capped there. Counting stops at the cap: a plan's cost
/// stays independent of the namespace (D1) rather than scanning a million-node REMOTE every round.
pub(crate) fn brake_namespace_size(
    brake: &crate::planner::DeleteBrake,
    remote: &crate::state::SqlTree<'_>,
) -> crate::state::StateResult<u64> {
    Ok(match brake_size_cap(brake) {
        Some(cap) => remote.count_up_to(cap)?,
        None => remote.count()?,
    })
}

/// The size from which the brake's fraction rule cannot matter any more (`None`: no such size).
fn brake_size_cap(brake: &crate::planner::DeleteBrake) -> Option<u64> {
    let cap = (brake.max_deletes as f64 / brake.max_fraction).ceil();
    (cap.is_finite() && cap >= 0.0 && cap < (u64::MAX / 2) as f64).then(|| cap as u64 + 1)
}

/// A remote op made ready to commit, or why not.
enum Prepared {
    Op(Box<v1::Op>),
    /// The local content moved on since planning.
    Replan,
    /// Content the server lacks is not on this device.
    Unavailable(crate::chunking::ChunkId),
}

/// Aborts a background task when its owner is dropped (a round cancelled mid-pull).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A commit's failure that is not the server's refusal, as the transient error it is: the round ends
/// offline-like and the next one learns from the journal whether the commit landed.
fn outcome_unknown(error: RemoteError) -> RemoteError {
    match error {
        RemoteError::Rejected { code, message, .. } => RemoteError::Unavailable(format!(
            "the commit's answer was lost ({code:?}: {message}); whether it landed shows in the journal"
        )),
        other => other,
    }
}

impl Engine {
    /// Runs one round: pull, plan, execute. Errors leave everything consistent; call again later.
    pub async fn sync_round(&self) -> Result<RoundReport, RoundError> {
        let mut report = RoundReport::default();
        let result = self.round(&mut report).await;
        match &result {
            Err(RoundError::Remote(e)) if e.is_transient() => {
                self.online.store(false, Ordering::Relaxed)
            }
            Err(_) => {}
            Ok(()) => {
                self.online.store(true, Ordering::Relaxed);
                self.last_sync_ns
                    .store(self.clock.now_ns(), Ordering::Relaxed);
                self.fetcher.mark_online();
            }
        }
        result.map(|()| report)
    }

    async fn round(&self, report: &mut RoundReport) -> Result<(), RoundError> {
        // Content left behind by failures: copy changes that failed on disk, commits that failed or
        // saw a write land while chunking. Both must be settled before planning over those files.
        self.replay_file_intents(false)?;
        self.commit_dirty_copies();
        report.pulled = self.pull().await?;
        self.adopt_orphans()?;
        let plan = self.plan_and_apply_local(report)?;
        let Some(plan) = plan else {
            return Ok(());
        };
        self.run_remote_ops(&plan, report).await
    }

    /// Pulls until REMOTE is at (or past) the pull target and the journal head seen. Returns how many
    /// changes were applied. A server that no longer holds this device's position (restored from an
    /// older backup) makes it re-base first ([`Engine::rebase`]).
    pub async fn pull(&self) -> Result<usize, RoundError> {
        let mut applied = 0;
        let mut rebases = 0;
        let mut limit = crate::bounded::PageLimit::new(CHANGES_PAGE);
        loop {
            let (diverged, compacted) = match self.pull_step(&mut limit, &mut applied).await {
                Ok(true) => return Ok(applied),
                Ok(false) => continue,
                Err(RoundError::Remote(e)) if e.is_diverged() => (e.to_string(), false),
                // Below the server's journal floor (retention): a snapshot, local edits kept.
                Err(RoundError::Remote(e)) if e.is_compacted() => (e.to_string(), true),
                Err(RoundError::Engine(EngineError::Diverged(why))) => (why, false),
                Err(e) => return Err(e),
            };
            rebases += 1;
            if rebases > MAX_REBASES_PER_PULL {
                return Err(RemoteError::Unavailable(format!(
                    "the server keeps refusing this device's journal position after {MAX_REBASES_PER_PULL} re-bases: {diverged}"
                ))
                .into());
            }
            if compacted {
                self.restart_after_compaction(&diverged).await?;
            } else {
                self.rebase(&diverged).await?;
            }
        }
    }

    /// One step of [`Engine::pull`]: a Hello, a snapshot, or a page of changes. `Ok(true)` when the
    /// pull is done.
    async fn pull_step(
        &self,
        limit: &mut crate::bounded::PageLimit,
        applied: &mut usize,
    ) -> Result<bool, RoundError> {
        let (from, snapshot_at, target) = {
            let state = self.state.lock();
            let from = state.read(|t| t.position())?;
            let snapshot_at = match state.meta_u64(SNAPSHOT_AT)? {
                Some(at) => Some(Position::new(
                    at,
                    state.meta_u64(SNAPSHOT_AT_TAG)?.unwrap_or(0),
                )),
                None => None,
            };
            (from, snapshot_at, state.meta_u64(PULL_TARGET)?.unwrap_or(0))
        };
        if from.cursor == 0 && snapshot_at.is_none() {
            // First sync (or a rebuild, or a re-base): a consistent snapshot rather than the history.
            let hello = self.remote.hello().await?;
            self.online.store(true, Ordering::Relaxed);
            self.check_namespace(&hello.namespace)?;
            if hello.head > 0 {
                self.start_snapshot(Position::new(hello.head, hello.head_tag))?;
                return Ok(false);
            }
            if target > 0 {
                return Err(EngineError::Diverged(format!(
                    "the server's journal is empty, but it acknowledged a commit of this device at {target}"
                ))
                .into());
            }
            return Ok(true);
        }
        if let Some(at) = snapshot_at {
            *applied += self.pull_snapshot(at).await?;
            return Ok(false);
        }
        let page = match self.remote.list_changes(from, limit.get()).await {
            Err(e) if e.is_too_large() && limit.shrink() => {
                tracing::info!(
                    cursor = from.cursor,
                    limit = limit.get(),
                    "a page of changes was too large to carry; asking for fewer"
                );
                return Ok(false);
            }
            other => other?,
        };
        self.online.store(true, Ordering::Relaxed);
        self.check_namespace(&page.namespace_id)?;
        limit.grow();
        self.fetch_elided_changes(&page.changes).await?;
        *applied += page.changes.len();
        let result = self.state.lock().transaction(|t| {
            t.apply_changes(&page.changes, page.next_cursor, page.next_cursor_tag)
        });
        match result {
            Err(PullError::Diverged { seq }) => {
                return Err(EngineError::Diverged(format!(
                    "the server's journal entry {seq} is not the commit it acknowledged to this device there"
                ))
                .into());
            }
            other => other?,
        }
        if !page.has_more && page.next_cursor < target {
            // The whole journal is in, and a commit the server acknowledged is not in it.
            return Err(EngineError::Diverged(format!(
                "the server's journal ends at {}, before the commit it acknowledged to this device at {target}",
                page.next_cursor
            ))
            .into());
        }
        Ok(!page.has_more && page.next_cursor >= target)
    }

    fn start_snapshot(&self, at: Position) -> Result<(), RoundError> {
        self.state.lock().transaction(|t| {
            // REMOTE is rebuilt from the snapshot: forget what it held, planning each id again.
            let ids = t.tree(Table::Remote).all_ids()?;
            for id in ids.into_iter().filter(|id| !id.is_root()) {
                t.remove_node(Table::Remote, id)?;
                t.mark_changed(id)?;
            }
            t.set_meta(SNAPSHOT_AT_TAG, at.tag as i64)?;
            t.set_meta(SNAPSHOT_AT, at.cursor as i64)
        })?;
        Ok(())
    }

    /// Pulls the rest of the snapshot at `at` into REMOTE. A task fetches and parses the pages in order,
    /// ahead of the transactions (so the server's work and ours overlap); they are applied
    /// [`SNAPSHOT_BATCH`] nodes per transaction, each recording how far it got, so a crash resumes after
    /// the last one. Returns how many nodes were applied.
    async fn pull_snapshot(&self, at: Position) -> Result<usize, RoundError> {
        let after = self
            .state
            .lock()
            .read(|t| t.meta_blob(SNAPSHOT_AFTER))?
            .unwrap_or_default();
        let (pages_tx, mut pages) = tokio::sync::mpsc::channel(SNAPSHOT_AHEAD);
        let remote = self.remote.clone();
        // Stops after the last page or the first failure; dropped (aborted) with this future.
        let _fetcher = AbortOnDrop(tokio::spawn(async move {
            let mut after = after;
            let mut limit = crate::bounded::PageLimit::new(SNAPSHOT_PAGE);
            loop {
                let page = match remote.snapshot(at, after.clone(), limit.get()).await {
                    Err(e) if e.is_too_large() && limit.shrink() => continue,
                    Ok(page) if at.tag != 0 && page.at_cursor_tag != 0 && page.at_cursor_tag != at.tag => {
                        Err(EngineError::Diverged(format!(
                            "the server's journal entry {} changed while this device took a snapshot at it",
                            at.cursor
                        ))
                        .into())
                    }
                    Ok(page) => {
                        limit.grow();
                        SnapshotPage::fetch(remote.as_ref(), page).await
                    }
                    Err(e) => Err(e.into()),
                };
                let next = match &page {
                    Ok(SnapshotPage {
                        next: Some(next), ..
                    }) => Some(next.to_bytes().to_vec()),
                    _ => None,
                };
                if pages_tx.send(page).await.is_err() {
                    return;
                }
                match next {
                    Some(next) => after = next,
                    None => return,
                }
            }
        }));
        let mut applied = 0;
        loop {
            let (mut batch, mut nodes, mut failure, mut complete) = (Vec::new(), 0, None, false);
            let mut chunks = 0;
            while nodes < SNAPSHOT_BATCH && chunks < SNAPSHOT_BATCH_CHUNKS && !complete {
                match pages.recv().await {
                    Some(Ok(page)) => {
                        if let Err(e) = self.check_namespace(&page.namespace) {
                            failure = Some(e);
                            break;
                        }
                        complete = page.next.is_none();
                        nodes += page.nodes.len();
                        chunks += page
                            .nodes
                            .iter()
                            .filter_map(|(_, m)| m.as_ref())
                            .map(|m| m.chunks.len())
                            .sum::<usize>();
                        batch.push(page);
                    }
                    Some(Err(e)) => {
                        failure = Some(e);
                        break;
                    }
                    None => {
                        failure = Some(
                            RemoteError::Unavailable("the snapshot fetch stopped early".into())
                                .into(),
                        );
                        break;
                    }
                }
            }
            if !batch.is_empty() {
                self.state.lock().transaction(|t| {
                    batch
                        .iter()
                        .try_for_each(|page| t.apply_snapshot_page(&page.nodes, page.next))
                })?;
                applied += nodes;
            }
            if let Some(e) = failure {
                return Err(e);
            }
            if complete {
                return Ok(applied);
            }
        }
    }

    /// Plans and applies the local side. Returns the plan when remote ops remain to run.
    fn plan_and_apply_local(&self, report: &mut RoundReport) -> Result<Option<Plan>, RoundError> {
        let mut state = self.state.lock();
        let (changed, mark) = state.changed_ids()?;
        if changed.is_empty() {
            return Ok(None);
        }
        let names = self.config.names;
        // A first sync: if LOCAL and SYNCED are empty, they take REMOTE as it is, in bulk (exactly what
        // the plan would do, see `state::bootstrap`).
        if let Some(bulk) = state.transaction(|t| t.bootstrap_from_remote(names, mark))? {
            report.planned = bulk.created as usize;
            report.local_applied = bulk.created as usize;
            state.transaction(|t| t.record_plan_outcome(&Plan::default()))?;
            drop(state);
            self.invalidate(
                bulk.in_root
                    .into_iter()
                    .map(|name| crate::api::Invalidation::Entry {
                        parent: crate::state::ROOT_INO,
                        name,
                    }),
            );
            return Ok(None);
        }
        // One read transaction for the whole plan: one snapshot, and SQLite's locks taken once
        // rather than for each of the plan's point reads.
        let plan = state.reading(|state| -> Result<Plan, RoundError> {
            let confirmed: NodeIdSet = state.read(|t| t.confirmed_deletes())?;
            let remote = state.tree(Table::Remote);
            let local = state.tree(Table::Local);
            let synced = state.tree(Table::Synced);
            let residency = StateResidency::new(state, &self.cache, &self.files);
            let ctx = PlanContext {
                device: &self.config.device,
                conflict_time: ConflictTime::from_unix_utc(
                    self.clock.now_ns().div_euclid(1_000_000_000),
                ),
                names,
                brake: self.config.brake,
                namespace_size: brake_namespace_size(&self.config.brake, &remote)?,
                residency: &residency,
                confirmed_deletes: &confirmed,
            };
            let plan = Planner::plan(&remote, &local, &synced, changed, &ctx);
            for view in [&remote, &local, &synced] {
                if let Some(e) = view.take_error() {
                    return Err(e.into());
                }
            }
            Ok(plan)
        })?;
        let blocked: NodeIdSet = state.read(|t| t.blocked_ids())?;
        report.planned = plan.ops.len();
        for op in &plan.ops {
            tracing::trace!(device = %self.config.device, op = ?op.kind, "planned");
        }
        state.transaction(|t| t.record_plan_outcome(&plan))?;
        *self.reported.lock() = plan.reported.clone();
        // The brake guards the server against mass deletes made here. Deletes that come from the
        // server were made (and, past the brake, confirmed) on the device where they happened, and
        // the server keeps every deleted version: this device follows them without asking again.
        let remote_origin: Vec<NodeId> = plan
            .held_deletes
            .iter()
            .filter(|held| held.side == Side::Local)
            .map(|held| held.id)
            .collect();
        if !remote_origin.is_empty() {
            state.transaction(|t| t.confirm_deletes(&remote_origin))?;
            report.more = true;
        }
        if plan.ops.is_empty() {
            let keep: Vec<NodeId> = plan
                .held_deletes
                .iter()
                .map(|h| h.id)
                .chain(plan.reported.iter().map(Report::node))
                .collect();
            state.transaction(|t| t.clear_changed_through(mark, &keep))?;
            return Ok(None);
        }
        let mut done: HashSet<OpId> = HashSet::new();
        let mut effects = LocalEffects::default();
        let applied = state.transaction(|t| -> Result<(), EngineError> {
            for op in &plan.ops {
                if op.kind.side() == Some(Side::Remote) || !op.deps.iter().all(|d| done.contains(d))
                {
                    continue;
                }
                if op.kind.node().is_some_and(|id| blocked.contains(&id)) {
                    continue;
                }
                if self.apply_local_op(t, op, &mut effects)? {
                    done.insert(op.id);
                    report.local_applied += 1;
                }
            }
            Ok(())
        });
        drop(state);
        let files = std::mem::take(&mut effects.files);
        if let Err(e) = applied {
            // Rolled back: no LOCAL change happened, so no file change is due.
            self.abandon_file_changes(files);
            return Err(e.into());
        }
        self.finish_file_changes(files);
        for (ino, ids) in effects.pins {
            self.pin_hold(ino, ids);
        }
        self.invalidate(effects.invalidations);
        if !effects.fetch.is_empty() {
            self.fetcher.prefetch(effects.fetch);
        }
        let remote_left = plan.ops.iter().any(|op| !done.contains(&op.id));
        if !remote_left {
            return Ok(None);
        }
        // Remote ops see the local ops done this round as satisfied dependencies.
        let mut plan = plan;
        for op in &mut plan.ops {
            op.deps.retain(|d| !done.contains(d));
        }
        plan.ops.retain(|op| !done.contains(&op.id));
        Ok(Some(plan))
    }

    /// Runs the remote ops whose dependencies are met, in plan order: upload, then commit in batches.
    async fn run_remote_ops(
        &self,
        plan: &Plan,
        report: &mut RoundReport,
    ) -> Result<(), RoundError> {
        let mut runnable: Vec<&PlannedOp> = Vec::new();
        let mut in_batch: HashSet<OpId> = HashSet::new();
        let blocked = self.state.lock().read(|t| t.blocked_ids())?;
        for op in &plan.ops {
            let ready = op.kind.side() == Some(Side::Remote)
                && op.deps.iter().all(|d| in_batch.contains(d))
                && !op.kind.node().is_some_and(|id| blocked.contains(&id));
            if ready {
                in_batch.insert(op.id);
                runnable.push(op);
            }
        }
        let mut wire_ops = Vec::with_capacity(runnable.len());
        let mut committed_ops = Vec::with_capacity(runnable.len());
        // Ops left out this round, and so every op that depends on them.
        let mut left_out: HashSet<OpId> = HashSet::new();
        for op in runnable {
            if op.deps.iter().any(|d| left_out.contains(d)) {
                left_out.insert(op.id);
                continue;
            }
            match self.prepare_remote_op(op).await? {
                Prepared::Op(wire) => {
                    wire_ops.push(*wire);
                    committed_ops.push(op);
                }
                // The local content moved on since planning: the next round plans the new content.
                Prepared::Replan => break,
                Prepared::Unavailable(chunk) => {
                    let id = op.kind.node().expect("an upload is for a node");
                    tracing::warn!(node = %id, %chunk, "content the server lacks is not on this device");
                    self.state.lock().transaction(|t| {
                        t.record_sync_error(
                            id,
                            &format!(
                                "content-unavailable: the server does not have chunk {chunk} of this \
                                 file and this device never downloaded it (was the server restored \
                                 from an older backup?); the device that wrote the file uploads it \
                                 again when it syncs"
                            ),
                        )
                    })?;
                    left_out.insert(op.id);
                    report.more = true;
                }
            }
        }
        let batch_ops = match self.commit_cap.load(Ordering::Relaxed) {
            0 => self.config.commit_batch,
            cap => cap.min(self.config.commit_batch),
        };
        let batches = crate::bounded::commit_batches(
            &wire_ops,
            batch_ops,
            crate::bounded::COMMIT_BUDGET_BYTES,
        );
        for batch in batches {
            let (wire, ops) = (&wire_ops[batch.clone()], &committed_ops[batch]);
            self.record_inflight(ops)?;
            // The position REMOTE (and so every base revision) comes from: the server refuses it if
            // its history no longer holds it.
            let at = self.state.lock().read(|t| t.position())?;
            match self.remote.commit(wire.to_vec(), at).await {
                Ok(response) => {
                    report.committed += ops.len();
                    self.record_commit(ops, &response)?;
                }
                Err(e) if e.is_refusal() => {
                    if matches!(&e, RemoteError::Rejected { reason, .. } if reason == "missing-chunks")
                    {
                        tracing::warn!(
                            "the server lacks chunks of a file's current version: {e}; checking every chunk from now on"
                        );
                        self.full_chunk_checks.store(true, Ordering::Relaxed);
                    }
                    // Refused as a whole: nothing of it landed.
                    self.state.lock().transaction(|t| {
                        ops.iter()
                            .filter_map(|op| op.kind.node())
                            .try_for_each(|id| t.clear_inflight(id))
                    })?;
                    if e.is_diverged() {
                        // Not about these ops: the server lost the history they were planned on.
                        self.rebase(&e.to_string()).await?;
                        report.more = true;
                        return Ok(());
                    }
                    if e.is_too_large() && ops.len() > 1 {
                        // The batch as a whole is over a server bound (its walking, its chunk
                        // lists, its size): not any one op's fault. Smaller batches from now on.
                        let cap = (ops.len() / 2).max(1);
                        self.commit_cap.store(cap, Ordering::Relaxed);
                        tracing::info!(
                            ops = ops.len(),
                            cap,
                            "a commit was too large for the server: {e}; committing in smaller batches"
                        );
                        report.more = true;
                        return Ok(());
                    }
                    self.record_rejection(ops, &e)?;
                    report.more = true;
                    // Whatever changed on the server, the next round pulls it and plans again.
                    return Ok(());
                }
                // The commit may have landed (its answer was lost or too large to receive): keep the
                // in-flight records, as for an unreachable server; the journal says which.
                Err(e) => return Err(outcome_unknown(e).into()),
            }
        }
        Ok(())
    }

    /// The wire op for a remote op, after uploading its content.
    async fn prepare_remote_op(&self, op: &PlannedOp) -> Result<Prepared, RoundError> {
        use v1::op::Op as W;
        let wire = match &op.kind {
            OpKind::RemoteCreate { node, upload } => {
                let manifest = self.content_manifest(node.kind, &node.attrs)?;
                if *upload {
                    match self.upload(node.id, manifest.as_ref(), None).await? {
                        Uploaded::Done => {}
                        Uploaded::Changed => return Ok(Prepared::Replan),
                        Uploaded::Unavailable(chunk) => return Ok(Prepared::Unavailable(chunk)),
                    }
                }
                let mut attrs = crate::wire::attrs_to_proto(node.kind, &node.attrs, None);
                if let Some(m) = &manifest {
                    attrs.content = Some(self.content_for_commit(m, None).await?);
                }
                W::Create(v1::CreateOp {
                    id: node.id.to_bytes().to_vec(),
                    parent_id: node.parent.to_bytes().to_vec(),
                    name: node.name.clone(),
                    kind: crate::wire::kind_to_proto(node.kind) as i32,
                    attrs: Some(attrs),
                })
            }
            OpKind::RemoteUpdate {
                id,
                base_revision,
                attrs,
                upload,
            } => {
                let kind = self.remote_kind(*id)?;
                let manifest = self.content_manifest(kind, attrs)?;
                let base = self.base_manifest(*id, *base_revision)?;
                if *upload {
                    match self.upload(*id, manifest.as_ref(), base.as_ref()).await? {
                        Uploaded::Done => {}
                        Uploaded::Changed => return Ok(Prepared::Replan),
                        Uploaded::Unavailable(chunk) => return Ok(Prepared::Unavailable(chunk)),
                    }
                }
                let mut wire_attrs = crate::wire::attrs_to_proto(kind, attrs, None);
                wire_attrs.content = match &manifest {
                    Some(m) => Some(self.content_for_commit(m, base.as_ref()).await?),
                    None => None,
                };
                W::Update(v1::UpdateOp {
                    id: id.to_bytes().to_vec(),
                    base_revision: *base_revision,
                    attrs: Some(wire_attrs),
                })
            }
            OpKind::RemoteMove {
                id,
                base_revision,
                parent,
                name,
            } => W::Move(v1::MoveOp {
                id: id.to_bytes().to_vec(),
                base_revision: *base_revision,
                new_parent_id: parent.to_bytes().to_vec(),
                new_name: name.clone(),
            }),
            OpKind::RemoteDelete { id, base_revision } => W::Delete(v1::DeleteOp {
                id: id.to_bytes().to_vec(),
                base_revision: *base_revision,
            }),
            _ => unreachable!("only remote ops are prepared"),
        };
        Ok(Prepared::Op(Box::new(v1::Op { op: Some(wire) })))
    }

    fn remote_kind(&self, id: NodeId) -> Result<crate::model::NodeKind, RoundError> {
        let state = self.state.lock();
        let node = state.tree(Table::Remote).node(id)?;
        let node = match node {
            Some(n) => n,
            None => state
                .tree(Table::Local)
                .node(id)?
                .ok_or_else(|| EngineError::Local(crate::state::local::LocalError::NotFound))?,
        };
        Ok(node.kind)
    }

    /// The content manifest of file `id` at `base_revision` as REMOTE holds it, if REMOTE is at
    /// that revision: the server stores every chunk it names, and an update can be sent as an edit
    /// of it. `None` when the node is not a file, not in REMOTE, or at another revision (the
    /// commit would be stale anyway) or a manifest is not at hand.
    fn base_manifest(
        &self,
        id: NodeId,
        base_revision: u64,
    ) -> Result<Option<crate::chunking::Manifest>, RoundError> {
        if self.full_chunk_checks.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let state = self.state.lock();
        let Some(node) = state.tree(Table::Remote).node(id)? else {
            return Ok(None);
        };
        if node.revision != base_revision || node.kind != crate::model::NodeKind::File {
            return Ok(None);
        }
        match node.attrs.content {
            Some(hash) => Ok(state.manifest(&hash)?),
            None => Ok(None),
        }
    }

    fn content_manifest(
        &self,
        kind: crate::model::NodeKind,
        attrs: &crate::model::Attrs,
    ) -> Result<Option<crate::chunking::Manifest>, RoundError> {
        if kind != crate::model::NodeKind::File {
            return Ok(None);
        }
        let hash = attrs
            .content
            .unwrap_or(crate::chunking::Manifest::empty().hash);
        let manifest = self.state.lock().manifest(&hash)?;
        match manifest {
            Some(m) => Ok(Some(m)),
            None if hash == crate::chunking::Manifest::empty().hash => {
                Ok(Some(crate::chunking::Manifest::empty()))
            }
            None => Err(EngineError::UnknownContent(hash.to_hex()).into()),
        }
    }

    /// Records what each op of a commit about to be sent should leave on the server.
    fn record_inflight(&self, ops: &[&PlannedOp]) -> Result<(), RoundError> {
        self.state
            .lock()
            .transaction(|t| -> Result<(), EngineError> {
                for op in ops {
                    let expected = match &op.kind {
                        OpKind::RemoteCreate { node, .. } => Some(Some(node.clone())),
                        OpKind::RemoteUpdate { id, attrs, .. } => {
                            t.tree(Table::Remote).node(*id)?.map(|mut n| {
                                n.attrs = attrs.clone();
                                Some(n)
                            })
                        }
                        OpKind::RemoteMove {
                            id, parent, name, ..
                        } => t.tree(Table::Remote).node(*id)?.map(|mut n| {
                            n.parent = *parent;
                            n.name = name.clone();
                            Some(n)
                        }),
                        OpKind::RemoteDelete { .. } => Some(None),
                        _ => None,
                    };
                    if let (Some(expected), Some(id)) = (expected, op.kind.node()) {
                        t.record_inflight(id, &expected)?;
                    }
                }
                Ok(())
            })?;
        Ok(())
    }

    /// Records a successful commit: REMOTE and SYNCED take the committed states.
    fn record_commit(
        &self,
        ops: &[&PlannedOp],
        response: &v1::CommitResponse,
    ) -> Result<(), RoundError> {
        self.state
            .lock()
            .transaction(|t| -> Result<(), EngineError> {
                for (op, node) in ops.iter().zip(&response.nodes) {
                    let (node, manifest) = crate::wire::node_from_proto(node)
                        .map_err(|e| EngineError::Io(std::io::Error::other(e)))?;
                    if let Some(m) = &manifest {
                        t.put_manifest(m)?;
                    }
                    if matches!(op.kind, OpKind::RemoteDelete { .. }) {
                        t.remove_node(Table::Remote, node.id)?;
                    } else {
                        t.put_node(Table::Remote, &node)?;
                    }
                    t.apply_synced(&op.synced, Some(node.revision))?;
                    t.clear_inflight(node.id)?;
                    t.clear_sync_error(node.id)?;
                    t.mark_changed(node.id)?;
                }
                if response.cursor > t.meta_u64(PULL_TARGET)?.unwrap_or(0) {
                    t.set_meta(PULL_TARGET, response.cursor as i64)?;
                    t.set_meta(PULL_TARGET_TAG, response.tag as i64)?;
                }
                Ok(())
            })?;
        Ok(())
    }

    /// Records a refused commit against the op it names, so a node that keeps failing for a reason a
    /// retry cannot fix stops blocking the others.
    fn record_rejection(&self, ops: &[&PlannedOp], error: &RemoteError) -> Result<(), RoundError> {
        let RemoteError::Rejected {
            op_index,
            reason,
            message,
            ..
        } = error
        else {
            return Ok(());
        };
        tracing::info!(%reason, %message, "the server refused a commit; pulling and planning again");
        if error.is_stale() {
            return Ok(());
        }
        let op = op_index.and_then(|i| ops.get(i)).or(ops.first());
        if reason == "duplicate-id"
            && let Some(OpKind::RemoteCreate { node, .. }) = op.map(|op| &op.kind)
        {
            // The server used this id before: our create reached it unheard and was deleted since, or a
            // delayed copy of it was; or SYNCED knew the node and REMOTE has pulled its deletion while
            // this device kept it (as a conflicted copy). Ids are never reused, so the local node
            // lives on under a fresh id and is created anew; SYNCED's record of the old id, if any,
            // then plans as deleted on both sides.
            let fresh = self.ids.new_id();
            self.state
                .lock()
                .transaction(|t| -> Result<(), EngineError> {
                    let deleted_there = match t.tree(Table::Synced).node(node.id)? {
                        None => true,
                        Some(_) => t.tree(Table::Remote).node(node.id)?.is_none(),
                    };
                    if t.local_by_id(node.id)?.is_some() && deleted_there {
                        t.reidentify_local(node.id, fresh)?;
                        t.mark_changed(node.id)?;
                        t.mark_changed(fresh)?;
                    }
                    Ok(())
                })?;
            return Ok(());
        }
        if let Some(id) = op.and_then(|op| op.kind.node()) {
            self.state
                .lock()
                .transaction(|t| t.record_sync_error(id, &format!("{reason}: {message}")))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::planner::DeleteBrake;

    #[test]
    fn the_brake_decides_the_same_with_the_namespace_size_capped() {
        let brakes = [
            DeleteBrake::default(),
            DeleteBrake::OFF,
            DeleteBrake {
                max_deletes: 0,
                max_fraction: 0.5,
                fraction_floor: 0,
            },
            DeleteBrake {
                max_deletes: 7,
                max_fraction: 0.3,
                fraction_floor: 2,
            },
            DeleteBrake {
                max_deletes: 100,
                max_fraction: 0.0,
                fraction_floor: 1,
            },
            DeleteBrake {
                max_deletes: 1_000,
                max_fraction: 1.0,
                fraction_floor: 10,
            },
        ];
        for brake in brakes {
            let Some(cap) = super::brake_size_cap(&brake) else {
                continue;
            };
            for size in (0..3 * cap + 3).chain([10 * cap, 1_000_000, u64::MAX / 4]) {
                for deletes in
                    (0..2 * cap + 3).chain([brake.max_deletes.saturating_add(1), 1_000_000])
                {
                    assert_eq!(
                        brake.engages(deletes, size),
                        brake.engages(deletes, size.min(cap)),
                        "{brake:?}: {deletes} deletes of {size} nodes (capped at {cap})"
                    );
                }
            }
        }
    }
}

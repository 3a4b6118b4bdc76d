//! Collecting uploaded chunks that no version names (`bvfs admin gc`).
//!
//! A device uploads chunks before the commit that names them; a commit that never comes (a crash,
//! an edit superseded before it was committed, a refused commit) leaves chunks nobody references.
//! The collector deletes them, for every backend, tenant by tenant.
//!
//! # The rule: a chunk named by any kept version is never deleted
//!
//! Every version of every node (live, older, deleted) is a journal entry holding the node's whole
//! chunk list, and versions are dropped only by the retention policy ([`crate::retention`], which
//! [`collect`] runs first, tenant by tenant), so "referenced" means "named by some journal entry
//! the journal still holds". A chunk is deleted only if it is named by no journal entry up to
//! the head seen *while holding the tenant's writer lock*, and only while that lock is still held.
//!
//! The race to close is a commit that checked its chunks were stored (outside its transaction,
//! where the check costs a round trip per chunk) before the collector deleted one of them, and
//! whose transaction comes after. It is closed by the tenant's **collection epoch**, a counter in
//! the tenant's head row that commits read inside their transaction for free (the scale-out store
//! reads it with the `FOR UPDATE` of the head):
//!
//! 0. One collection at a time: the collector takes the metadata's collection lock
//!    ([`MetaStore::gc_lock`]: an advisory lock on PostgreSQL, a file lock beside the SQLite
//!    catalog), which goes with its process; a second `bvfs admin gc` is refused.
//! 1. The collector scans the journal (no lock) and lists stored chunks; candidates are chunks
//!    named by no entry up to the head it saw and stored longer ago than the grace period.
//! 2. Transaction A (writer lock): the epoch becomes the next **odd** number. Odd means "a
//!    collection may be deleting".
//! 3. Per batch, one transaction (writer lock held throughout): check the collection lock is still
//!    held, read the journal entries committed since the last scan, drop every candidate they name,
//!    delete the rest from the chunk store.
//! 4. Transaction B (writer lock): the epoch becomes the next **even** number. As only the lock's
//!    holder deletes, this also ends an odd run left by a collector that died; a collection with
//!    nothing to delete still does it when it finds the epoch odd.
//!
//! A commit remembers the epoch it last saw for its tenant (per process; in memory) *before* it
//! checks its chunks, and inside its transaction re-checks them (under the writer lock, where no
//! deletion can run) whenever the epoch is odd or differs from the remembered one. So a commit
//! whose check may have raced a deletion always re-checks, and one that names a chunk deleted
//! meanwhile is refused with `missing-chunks` (the client uploads it again); a commit whose
//! transaction comes before a batch is seen by that batch's journal read. Epochs only grow, so a
//! remembered value can only be older than the current one. If the collector dies between A and
//! B, the epoch stays odd: commits keep re-checking (slower, still safe) until the next
//! collection completes.
//!
//! The grace period is not what makes deletion safe; it keeps uploads whose commit is about to
//! come from being deleted under a client (which would have to upload them again). Times are the
//! chunk store's (file modification time, object last-modified), so the grace period should be
//! hours, not seconds, when clocks may differ.
//!
//! A journal entry whose chunk list is not whole (elided or staged: the store never keeps such a
//! list, but if it did the collector could not see its references) stops the collection for that
//! tenant with an error, before anything is deleted.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use bvfs_proto::v1::Node;

use crate::store::{
    ChunkKey, ChunkStore, GcLock, MetaStore, MetaTxn, StoreError, StoredChunk, TenantId,
};

/// The default grace period of `bvfs admin gc`.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(24 * 3600);
/// Chunks deleted per transaction (the tenant's commits wait while a batch is deleted).
pub const BATCH: usize = 500;
/// Journal entries read per page while scanning references.
const SCAN_PAGE: usize = 1_000;
/// Bytes of stored records read per page while scanning references.
const SCAN_PAGE_BYTES: usize = 16 << 20;

/// Whether a commit must check its chunks again inside its transaction: the epoch it read there is
/// odd (a collection may be deleting) or not the one it remembered before its first check.
pub fn must_recheck(remembered: Option<u64>, current: u64) -> bool {
    current % 2 == 1 || remembered != Some(current)
}

/// The collection epoch each tenant's last commit in this process saw.
#[derive(Default)]
pub struct EpochMemory {
    seen: parking_lot::Mutex<HashMap<TenantId, u64>>,
}

impl EpochMemory {
    /// What the tenant's commits saw last (read before a commit checks its chunks).
    pub fn remembered(&self, tenant: TenantId) -> Option<u64> {
        self.seen.lock().get(&tenant).copied()
    }

    /// Remembers an epoch read inside a transaction (never moving backwards).
    pub fn saw(&self, tenant: TenantId, epoch: u64) {
        let mut seen = self.seen.lock();
        let entry = seen.entry(tenant).or_insert(epoch);
        *entry = (*entry).max(epoch);
    }
}

/// What one collection did, per tenant and in all.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub tenants: usize,
    /// Chunks stored, over the tenants examined.
    pub chunks_stored: usize,
    /// Chunks named by at least one version.
    pub chunks_referenced: usize,
    /// Unreferenced chunks kept because they are younger than the grace period.
    pub chunks_young: usize,
    /// Unreferenced chunks older than the grace period when listed: what a run deletes (less any
    /// a commit names meanwhile), what a dry run would.
    pub chunks_unreferenced: usize,
    pub bytes_unreferenced: u64,
    pub chunks_deleted: usize,
    pub bytes_freed: u64,
    /// Journal entries (old versions, deleted files) the retention policy dropped.
    pub versions_dropped: u64,
    /// Tenants with a retention window (the others keep every version).
    pub tenants_with_retention: usize,
}

/// Only counts what [`collect`] would delete: no lock, no epoch change, nothing deleted. Versions
/// the retention policy would drop are not simulated: their chunks count as referenced.
pub fn survey(
    meta: &dyn MetaStore,
    chunks: &dyn ChunkStore,
    grace: Duration,
) -> anyhow::Result<Report> {
    let mut report = Report::default();
    for (tenant, name) in meta.tenants()? {
        candidates(meta, chunks, tenant, grace, &mut report)
            .map_err(|e| anyhow::anyhow!("user {name:?}: {e}"))?;
    }
    Ok(report)
}

/// Collects every tenant's unreferenced chunks older than `grace` (see the module's rules), under
/// the collection lock. `progress` hears one line per tenant that had something to delete.
pub fn collect(
    meta: &dyn MetaStore,
    chunks: &dyn ChunkStore,
    grace: Duration,
    progress: &mut dyn FnMut(&str),
) -> anyhow::Result<Report> {
    let lock = meta.gc_lock()?.ok_or_else(|| {
        anyhow::anyhow!(
            "another `bvfs admin gc` is running on this metadata; run again when it has finished"
        )
    })?;
    let mut report = Report::default();
    for (tenant, name) in meta.tenants()? {
        let before = report.clone();
        // Retention first: the versions it drops no longer hold their chunks.
        if crate::retention::window(meta, tenant)?.is_some() {
            let compaction = crate::retention::compact_tenant(meta, tenant, SystemTime::now())
                .map_err(|e| anyhow::anyhow!("user {name:?}: retention: {e}"))?;
            report.tenants_with_retention += 1;
            report.versions_dropped += compaction.dropped;
            if compaction.dropped > 0 {
                progress(&format!(
                    "{name}: dropped {} version(s) past the retention period (journal floor {})",
                    compaction.dropped, compaction.floor
                ));
            }
        }
        collect_tenant(meta, chunks, lock.as_ref(), tenant, grace, &mut report)
            .map_err(|e| anyhow::anyhow!("user {name:?}: {e}"))?;
        if report.chunks_deleted > before.chunks_deleted {
            progress(&format!(
                "{name}: deleted {} chunk(s), {} bytes",
                report.chunks_deleted - before.chunks_deleted,
                report.bytes_freed - before.bytes_freed
            ));
        }
    }
    Ok(report)
}

/// One tenant's collection; the caller holds the collection lock `lock`.
pub fn collect_tenant(
    meta: &dyn MetaStore,
    chunks: &dyn ChunkStore,
    lock: &dyn GcLock,
    tenant: TenantId,
    grace: Duration,
    report: &mut Report,
) -> anyhow::Result<()> {
    let (candidates, mut referenced, mut scanned) =
        candidates(meta, chunks, tenant, grace, report)?;
    if candidates.is_empty() {
        // Nothing to delete; an odd epoch left by a collector that died ends here.
        return write(meta, tenant, &mut |txn| {
            let epoch = txn.gc_epoch()?;
            if epoch % 2 == 1 {
                txn.set_gc_epoch(epoch + 1)?;
            }
            Ok(())
        });
    }

    // 2. Odd: commits re-check their chunks inside their transaction from now on.
    write(meta, tenant, &mut |txn| {
        let epoch = txn.gc_epoch()?;
        txn.set_gc_epoch(if epoch % 2 == 1 { epoch + 2 } else { epoch + 1 })
    })?;

    // 3. Batches under the writer lock: what was committed since the last read counts too.
    for batch in candidates.chunks(BATCH) {
        let mut deleted = (0usize, 0u64);
        write(meta, tenant, &mut |_txn| {
            deleted = (0, 0);
            // Deleting without the lock could race another collector's step 4.
            lock.check()?;
            // Read through the store (another connection): with the writer lock held, nothing
            // of this tenant commits meanwhile, so this sees every committed entry.
            scanned = scan_references(meta, tenant, scanned, &mut referenced)?;
            for chunk in batch.iter().filter(|c| !referenced.contains(&c.id)) {
                if chunks.delete(tenant, &chunk.id)? {
                    deleted.0 += 1;
                    deleted.1 += chunk.len;
                }
            }
            Ok(())
        })?;
        report.chunks_deleted += deleted.0;
        report.bytes_freed += deleted.1;
    }

    // 4. Even again: no collector deletes anything without the lock this one holds.
    write(meta, tenant, &mut |txn| {
        let epoch = txn.gc_epoch()?;
        txn.set_gc_epoch(epoch + epoch % 2)
    })
}

/// Step 1: the references up to a head, then the chunks stored (in this order: a chunk stored
/// after the scan is younger than the grace period, or named by an entry the batches read).
/// Returns the candidates, the references and the last sequence scanned.
fn candidates(
    meta: &dyn MetaStore,
    chunks: &dyn ChunkStore,
    tenant: TenantId,
    grace: Duration,
    report: &mut Report,
) -> Result<(Vec<StoredChunk>, HashSet<ChunkKey>, u64), StoreError> {
    report.tenants += 1;
    let mut referenced = HashSet::new();
    let scanned = scan_references(meta, tenant, 0, &mut referenced)?;
    let stored = chunks.list(tenant)?;
    let now = SystemTime::now();
    report.chunks_stored += stored.len();
    let mut candidates: Vec<StoredChunk> = Vec::new();
    for chunk in stored {
        if referenced.contains(&chunk.id) {
            report.chunks_referenced += 1;
        } else if now.duration_since(chunk.stored_at).unwrap_or_default() < grace {
            report.chunks_young += 1;
        } else {
            report.chunks_unreferenced += 1;
            report.bytes_unreferenced += chunk.len;
            candidates.push(chunk);
        }
    }
    Ok((candidates, referenced, scanned))
}

/// Runs `f` in a write transaction of the tenant, store errors as they are.
fn write(
    meta: &dyn MetaStore,
    tenant: TenantId,
    f: &mut dyn FnMut(&mut dyn MetaTxn) -> Result<(), StoreError>,
) -> anyhow::Result<()> {
    let mut failure = None;
    let result = meta.write(tenant, &mut |txn| {
        f(txn).map_err(|e| {
            let status = tonic::Status::internal(e.to_string());
            failure = Some(e);
            status
        })
    });
    match (result, failure) {
        (Ok(()), _) => Ok(()),
        (Err(_), Some(e)) => Err(e.into()),
        (Err(status), None) => Err(anyhow::anyhow!("{}", status.message())),
    }
}

/// Adds the chunks named by the tenant's journal entries after `after` to `referenced`; returns
/// the last sequence read.
fn scan_references(
    meta: &dyn MetaStore,
    tenant: TenantId,
    mut after: u64,
    referenced: &mut HashSet<ChunkKey>,
) -> Result<u64, StoreError> {
    loop {
        let entries = meta.changes_after(tenant, after, SCAN_PAGE, SCAN_PAGE_BYTES)?;
        let Some(last) = entries.last() else {
            return Ok(after);
        };
        after = last.seq;
        for entry in &entries {
            add_chunks(&entry.node, entry.seq, referenced)?;
        }
    }
}

/// Adds the chunks a stored node names; an incomplete list is an error (its references unknown).
fn add_chunks(node: &Node, seq: u64, referenced: &mut HashSet<ChunkKey>) -> Result<(), StoreError> {
    let Some(content) = node.attrs.as_ref().and_then(|a| a.content.as_ref()) else {
        return Ok(());
    };
    if content.chunks_elided || !content.manifest_ref.is_empty() {
        return Err(StoreError::Corrupt(format!(
            "journal entry {seq} does not hold its whole chunk list; nothing was collected"
        )));
    }
    for chunk in &content.chunks {
        let id = ChunkKey::try_from(chunk.id.as_slice()).map_err(|_| {
            StoreError::Corrupt(format!(
                "journal entry {seq} names a chunk id of {} bytes",
                chunk.id.len()
            ))
        })?;
        referenced.insert(id);
    }
    Ok(())
}

/// Parses a duration such as `24h`, `90m`, `7d`, `30s` or `0` (for `--grace`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 24h, 90m, 7d or 30s"))?;
    let unit_secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: the unit is one of s, m, h, d")),
    };
    n.checked_mul(unit_secs)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{text:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_rechecks_whenever_a_collection_may_have_run() {
        assert!(!must_recheck(Some(0), 0));
        assert!(!must_recheck(Some(4), 4));
        assert!(must_recheck(None, 0), "nothing remembered yet");
        assert!(must_recheck(Some(4), 5), "a collection is running");
        assert!(must_recheck(Some(5), 5), "still running");
        assert!(must_recheck(Some(4), 6), "one ran since the check");
    }

    #[test]
    fn remembered_epochs_never_go_back() {
        let memory = EpochMemory::default();
        assert_eq!(memory.remembered(1), None);
        memory.saw(1, 4);
        memory.saw(1, 2);
        assert_eq!(memory.remembered(1), Some(4));
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("90m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        for bad in ["", "h", "-1h", "1w", "1.5h", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}

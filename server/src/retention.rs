//! The retention policy for old versions and deleted files (issue 12): journal compaction.
//!
//! Every version of a node is a journal entry holding its whole chunk list, and the collector
//! ([`crate::gc`]) deletes only chunks that no entry names. Retention therefore drops journal
//! entries; the collection that follows frees the chunks only they named.
//!
//! # What is dropped
//!
//! A tenant's window (`keep_versions_s`, set with `bvfs admin retention`; none, the default, keeps
//! everything) gives a cutoff, now − window. The **floor** F is the highest sequence such that
//! every entry at or below it was committed before the cutoff ([`MetaStore::settled_before`]:
//! an entry inside the window is never below F, whatever order the clocks of several servers
//! gave the commit times). Among the entries at or below F:
//! - an entry superseded by a later entry of its node at or below F is dropped (an old version);
//! - a delete is dropped, and with it every earlier entry of its node (a file deleted before the
//!   cutoff), its id kept in `retired_ids` so it is never used again;
//! - the last entry at or below F of a node that was live at F is kept.
//!
//! So, for every node, the last entry at or below any position ≥ F is unchanged or (for a node
//! deleted then) absent: a snapshot at any position ≥ F is still exact, and entries above F are
//! untouched, so the change feed from any position ≥ F is whole. Positions below F are not:
//! `ListChanges` and `Snapshot` refuse them with `journal-compacted`, and the device starts again
//! from a snapshot (its re-base, which keeps its local edits). The tags of dropped entries are
//! kept (`dropped_tags`), so a position below the floor is still checked against the device's
//! history first (`journal-diverged` if it is not this server's).
//!
//! # Order and safety
//!
//! The floor is raised (never lowered) in the same transaction as the first entries are dropped,
//! and the service reads the floor *after* the entries or snapshot page it answers with, so an
//! answer that saw a dropped entry always sees the floor above it. Compaction runs in bounded
//! steps ([`STEP`] sequences each), each one write transaction of the tenant (commits interleave
//! between steps), before the collection, under the collection lock. A step's choice depends only
//! on entries at or below F, which commits (always above the head) never add; so a run cut short
//! is completed by the next. Once an entry is dropped its chunks are collected under the usual
//! rules: a commit naming one of them concurrently is either seen by the collector's journal read
//! or re-checks its chunks (the collection epoch); `RestoreVersion` and `Undelete` check inside
//! their transaction that the entry they copy is still in the journal.
//!
//! Commit times are the committing server's clock; with several servers, their clocks should
//! agree to well within the window.

use std::time::{Duration, SystemTime};

use crate::store::{MetaStore, MetaTxn, StoreError, TenantId};

/// Journal sequences examined per compaction transaction.
pub const STEP: u64 = 2_000;

/// What one tenant's compaction did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Compaction {
    /// The journal floor after the run (0: nothing below it is dropped).
    pub floor: u64,
    /// Journal entries dropped by this run.
    pub dropped: u64,
}

/// The tenant's retention window (`None`: keep every version).
pub fn window(meta: &dyn MetaStore, tenant: TenantId) -> anyhow::Result<Option<Duration>> {
    let mut keep = None;
    write(meta, tenant, &mut |txn| {
        keep = txn.retention()?;
        Ok(())
    })?;
    Ok(keep.map(Duration::from_secs))
}

/// Sets the tenant's retention window (`None`: keep every version). Nothing is dropped until the
/// next `bvfs admin gc`.
pub fn set_window(
    meta: &dyn MetaStore,
    tenant: TenantId,
    keep: Option<Duration>,
) -> anyhow::Result<()> {
    write(meta, tenant, &mut |txn| {
        txn.set_retention(keep.map(|k| k.as_secs()))
    })
}

/// Compacts the tenant's journal for its retention window as of `now` (see the module docs);
/// does nothing for a tenant that keeps everything. The caller holds the collection lock.
pub fn compact_tenant(
    meta: &dyn MetaStore,
    tenant: TenantId,
    now: SystemTime,
) -> anyhow::Result<Compaction> {
    let current = meta.journal_floor(tenant)?;
    let Some(keep) = window(meta, tenant)? else {
        return Ok(Compaction {
            floor: current,
            dropped: 0,
        });
    };
    // A cutoff before 1970 (a window longer than the clock's age) drops nothing.
    let cutoff_ns = match now.checked_sub(keep) {
        Some(cutoff) => cutoff
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)),
        None => 0,
    };
    let floor = meta.settled_before(tenant, cutoff_ns)?.max(current);
    let mut dropped = 0;
    let mut after = 0;
    while after < floor {
        let upto = after.saturating_add(STEP).min(floor);
        write(meta, tenant, &mut |txn| {
            dropped += txn.compact(floor, after, upto)?;
            Ok(())
        })?;
        after = upto;
    }
    Ok(Compaction { floor, dropped })
}

/// Runs `f` in a write transaction of the tenant, store errors as they are.
fn write(
    meta: &dyn MetaStore,
    tenant: TenantId,
    f: &mut dyn FnMut(&mut dyn MetaTxn) -> Result<(), StoreError>,
) -> anyhow::Result<()> {
    let mut failure = None;
    let mut body = |txn: &mut dyn MetaTxn| {
        f(txn).map_err(|e| {
            let status = tonic::Status::internal(e.to_string());
            failure = Some(e);
            status
        })
    };
    match (meta.write(tenant, &mut body), failure) {
        (Ok(()), _) => Ok(()),
        (Err(_), Some(e)) => Err(e.into()),
        (Err(status), None) => Err(anyhow::anyhow!("{}", status.message())),
    }
}

//! Which history of the server's journal this device's view comes from, and re-basing on another.
//!
//! Every journal entry carries a random lineage tag, fixed when it is committed; a position (cursor
//! and tag) names one history (see the proto's "Identity and lineage"). A server restored from an
//! older backup keeps the entries up to its backup and then writes new ones with other tags: a device
//! that saw the lost entries finds its position refused (`journal-diverged`, `cursor-ahead`), or one
//! of its own acknowledged commits missing from the journal when its pull reaches it.
//!
//! It then **re-bases**: REMOTE is rebuilt from a snapshot, and SYNCED (the base of every three-way
//! merge) keeps only what the server's history still vouches for. The device remembers a few
//! checkpoints (`(cursor, tag)` pairs its pulls reached, [`Checkpoints`]); the newest one the
//! server still holds is the *common point* P, found with one cheap probe per step of a binary search.
//! When the snapshot is complete ([`Txn::finish_rebase`]):
//! - a SYNCED row at a revision ≤ P is a state of the common history: it stays the base;
//! - a SYNCED row past P was lost with the server's history. If REMOTE's node is still at a revision
//!   ≤ P, that is the node's state at P, an ancestor of what this device synced: it becomes the base
//!   (so an edit lost on the server is uploaded again as an edit, not as a conflict). Otherwise (the
//!   node changed since the restore, or is gone) no base is known and the row goes: the planner then
//!   treats the local node as a local create, or, where the server has another version, makes a
//!   conflicted copy of the local one. Nothing local is deleted for lack of a base.
//!
//! In-flight commit records, held and confirmed deletes and sync errors belong to the lost history and
//! are dropped; LOCAL, the copies and the cache are untouched.

use super::{StateResult, Txn};
use crate::model::NodeId;
use crate::state::pull::{
    CURSOR, CURSOR_TAG, PULL_TARGET, PULL_TARGET_TAG, SNAPSHOT_AFTER, SNAPSHOT_AT, SNAPSHOT_AT_TAG,
};

/// Meta key of the checkpoints (a blob of 16-byte `(seq, tag)` pairs, oldest first).
pub const CHECKPOINTS: &str = "lineage_checkpoints";
/// Meta key of the common point while a re-base waits for its snapshot.
pub const REBASE_POINT: &str = "rebase_point";
/// Meta key of the namespace identity this state belongs to.
pub const NAMESPACE: &str = "namespace_id";

/// A bounded list of `(seq, tag)` positions this device saw, dense near the newest and sparse
/// towards the oldest (like an exponential backoff), so a restore from a recent backup finds a common
/// point close to it and one from an old backup still finds one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checkpoints {
    /// Ascending by sequence; tags are never 0.
    points: Vec<(u64, u64)>,
}

impl Checkpoints {
    /// The most checkpoints kept.
    pub const MAX: usize = 48;

    pub fn points(&self) -> &[(u64, u64)] {
        &self.points
    }

    /// Records a position (ignored for tag 0, which names nothing, and for a sequence not past the
    /// newest: positions only move forward between re-bases).
    pub fn push(&mut self, seq: u64, tag: u64) {
        if tag == 0 || self.points.last().is_some_and(|&(last, _)| seq <= last) {
            return;
        }
        self.points.push((seq, tag));
        if self.points.len() > Self::MAX {
            self.thin();
        }
    }

    /// Drops one checkpoint so the spacing stays roughly geometric (gaps about proportional to age):
    /// among all but the oldest (the deepest fallback) and the newest few, the one whose removal
    /// leaves the smallest gap relative to its age.
    fn thin(&mut self) {
        let keep_newest = 8;
        let candidates = self.points.len().saturating_sub(keep_newest);
        let newest = self.points.last().map_or(0, |p| p.0);
        let victim = (1..candidates).min_by_key(|&i| {
            let merged = self.points[i + 1].0 - self.points[i - 1].0;
            let age = newest - self.points[i].0;
            // merged / (age + 1), compared without division.
            (u128::from(merged) << 64) / (u128::from(age) + 1)
        });
        if let Some(victim) = victim {
            self.points.remove(victim);
        }
    }

    fn encode(&self) -> Vec<u8> {
        self.points
            .iter()
            .flat_map(|&(seq, tag)| seq.to_le_bytes().into_iter().chain(tag.to_le_bytes()))
            .collect()
    }

    /// Decodes a stored list; a damaged one is empty (checkpoints only make a re-base finer).
    fn decode(bytes: &[u8]) -> Self {
        if !bytes.len().is_multiple_of(16) {
            return Self::default();
        }
        let mut points: Vec<(u64, u64)> = bytes
            .chunks_exact(16)
            .map(|p| {
                let (seq, tag) = p.split_at(8);
                (
                    u64::from_le_bytes(seq.try_into().expect("8 bytes")),
                    u64::from_le_bytes(tag.try_into().expect("8 bytes")),
                )
            })
            .filter(|&(_, tag)| tag != 0)
            .collect();
        points.sort_unstable();
        points.dedup_by_key(|p| p.0);
        Self { points }
    }
}

impl Txn<'_> {
    /// The checkpoints recorded so far.
    pub fn checkpoints(&self) -> StateResult<Checkpoints> {
        Ok(self
            .meta_blob(CHECKPOINTS)?
            .map(|b| Checkpoints::decode(&b))
            .unwrap_or_default())
    }

    /// Records a position a pull reached (a page's end, a snapshot's cursor).
    pub fn record_checkpoint(&self, seq: u64, tag: u64) -> StateResult<()> {
        let mut points = self.checkpoints()?;
        let before = points.points.len();
        points.push(seq, tag);
        if points.points.len() != before || points.points.last() != Some(&(seq, tag)) {
            self.set_meta(CHECKPOINTS, points.encode())?;
        }
        Ok(())
    }

    /// The namespace identity this state belongs to, once known.
    pub fn namespace(&self) -> StateResult<Option<Vec<u8>>> {
        self.meta_blob(NAMESPACE)
    }

    /// Starts a re-base on common point `point` (0: nothing in common): REMOTE is emptied and
    /// rebuilt by the next pull's snapshot, every node is planned again, and what belonged to the
    /// lost history is dropped. SYNCED is settled when the snapshot completes
    /// ([`Txn::finish_rebase`]). Returns how many nodes will be planned again.
    pub fn begin_rebase(&self, point: u64) -> StateResult<u64> {
        let root = NodeId::ROOT.to_bytes();
        let conn = self.conn();
        let err = |e| self.err(e);
        let marked = conn
            .execute(
                "INSERT OR REPLACE INTO changed (id)
                 SELECT id FROM local WHERE id != ?1
                 UNION SELECT id FROM synced WHERE id != ?1
                 UNION SELECT id FROM remote WHERE id != ?1",
                [&root[..]],
            )
            .map_err(err)?;
        conn.execute("DELETE FROM remote WHERE id != ?1", [&root[..]])
            .map_err(err)?;
        conn.execute_batch(
            "DELETE FROM inflight;
             DELETE FROM held_deletes;
             DELETE FROM confirmed_deletes;
             DELETE FROM sync_errors;",
        )
        .map_err(err)?;
        for key in [
            CURSOR,
            CURSOR_TAG,
            SNAPSHOT_AT,
            SNAPSHOT_AT_TAG,
            SNAPSHOT_AFTER,
            PULL_TARGET,
            PULL_TARGET_TAG,
        ] {
            self.delete_meta(key)?;
        }
        // Positions past the common point name the lost history.
        let mut points = self.checkpoints()?;
        points.points.retain(|&(seq, _)| seq <= point);
        self.set_meta(CHECKPOINTS, points.encode())?;
        self.set_meta(REBASE_POINT, point as i64)?;
        Ok(marked as u64)
    }

    /// Settles SYNCED after a re-base's snapshot is in REMOTE (see the module docs). Called in the
    /// transaction of the snapshot's last page; does nothing outside a re-base.
    pub fn finish_rebase(&self) -> StateResult<()> {
        let Some(point) = self.meta_u64(REBASE_POINT)? else {
            return Ok(());
        };
        let point = point as i64;
        let conn = self.conn();
        let err = |e| self.err(e);
        const ROW: &str = super::trees::NODE_COLUMNS;
        conn.execute(
            &format!(
                "INSERT OR REPLACE INTO synced ({ROW})
                 SELECT {ROW} FROM remote
                 WHERE revision <= ?1 AND id IN (SELECT id FROM synced WHERE revision > ?1)"
            ),
            [point],
        )
        .map_err(err)?;
        let dropped = conn
            .execute("DELETE FROM synced WHERE revision > ?1", [point])
            .map_err(err)?;
        tracing::info!(
            common_point = point,
            dropped,
            "re-base: SYNCED settled on the server's history"
        );
        self.delete_meta(REBASE_POINT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_stay_bounded_dense_near_the_newest_and_keep_the_oldest() {
        let mut points = Checkpoints::default();
        for seq in 1..=10_000u64 {
            points.push(seq, seq * 7 + 1);
        }
        let kept = points.points();
        assert_eq!(kept.len(), Checkpoints::MAX);
        assert_eq!(kept[0].0, 1, "the oldest is the deepest fallback");
        assert_eq!(kept.last().unwrap().0, 10_000);
        // The newest few are consecutive; gaps grow towards the past.
        let gaps: Vec<u64> = kept.windows(2).map(|w| w[1].0 - w[0].0).collect();
        assert!(gaps[gaps.len() - 7..].iter().all(|&g| g == 1), "{gaps:?}");
        assert!(
            gaps.windows(2).all(|w| w[0] >= w[1]),
            "gaps shrink towards the newest: {gaps:?}"
        );
        assert!(gaps[1] >= 512, "old checkpoints are sparse: {gaps:?}");
        assert!(kept.iter().all(|&(seq, tag)| tag == seq * 7 + 1));
    }

    #[test]
    fn checkpoints_ignore_tag_zero_and_positions_that_do_not_advance() {
        let mut points = Checkpoints::default();
        points.push(5, 0);
        points.push(5, 11);
        points.push(5, 12);
        points.push(3, 13);
        assert_eq!(points.points(), &[(5, 11)]);
    }

    #[test]
    fn checkpoints_round_trip_and_a_damaged_blob_is_empty() {
        let mut points = Checkpoints::default();
        for seq in [2, 9, 40] {
            points.push(seq, seq + 100);
        }
        assert_eq!(Checkpoints::decode(&points.encode()), points);
        assert_eq!(Checkpoints::decode(&[1, 2, 3]), Checkpoints::default());
    }
}

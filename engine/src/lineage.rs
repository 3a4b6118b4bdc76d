//! The device's side of namespace identity and journal lineage (see [`crate::state::lineage`]):
//! every answer must come from the namespace this state belongs to, and a server whose history no
//! longer holds this device's position (restored from an older backup) makes it re-base.

use std::sync::atomic::Ordering;

use crate::api::{Engine, EngineError};
use crate::remote::{Position, RemoteError};
use crate::round::RoundError;

impl RemoteError {
    /// Whether the server refused a position below its journal floor (`journal-compacted`): its
    /// retention policy dropped the old entries there. The history is the same; the device starts
    /// again from a snapshot by the re-base path ([`Engine::rebase`]), which keeps its local edits.
    pub fn is_compacted(&self) -> bool {
        matches!(self, RemoteError::Rejected { reason, .. } if reason == "journal-compacted")
    }
}

/// A namespace id as people read it (hex).
fn show(id: &[u8]) -> String {
    hex::encode(id)
}

impl Engine {
    /// Checks that an answer comes from this state's namespace, recording the namespace on first
    /// contact. An empty id (a server that predates namespace ids) is not checked.
    pub(crate) fn check_namespace(&self, namespace: &[u8]) -> Result<(), RoundError> {
        if namespace.is_empty() {
            return Ok(());
        }
        let mut state = self.state.lock();
        match state.read(|t| t.namespace())? {
            Some(known) if known == namespace => Ok(()),
            Some(known) => Err(EngineError::OtherNamespace {
                expected: show(&known),
                found: show(namespace),
            }
            .into()),
            None => {
                state.transaction(|t| {
                    t.set_meta(crate::state::lineage::NAMESPACE, namespace.to_vec())
                })?;
                Ok(())
            }
        }
    }

    /// Re-bases this device's view on the server's history after `why` showed it diverged: finds
    /// the common point (the newest checkpoint the server still holds), then starts over from a
    /// snapshot with SYNCED kept only as far as that point vouches for it. What the server lost is
    /// planned again: uploaded anew, or kept as a conflicted copy where the server has something
    /// else. See [`crate::state::lineage`].
    pub async fn rebase(&self, why: &str) -> Result<(), RoundError> {
        let point = self.common_point().await?;
        let replanned = self.state.lock().transaction(|t| t.begin_rebase(point))?;
        self.rebases.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            common_point = point,
            replanned,
            "the server's history diverged from this device's ({why}); it was probably restored \
             from an older backup. Re-basing on a snapshot: whatever the server lost is uploaded again"
        );
        Ok(())
    }

    /// Starts again from a snapshot after the server refused this device's position as below its
    /// journal floor (`why`: its retention policy dropped the old entries there). Same path as a
    /// re-base ([`Engine::rebase`]): the server still holds this device's history (a compacted
    /// probe counts as held), so the common point is the newest checkpoint, SYNCED stays the
    /// merge base and local edits are uploaded after the snapshot.
    pub async fn restart_after_compaction(&self, why: &str) -> Result<(), RoundError> {
        let point = self.common_point().await?;
        let replanned = self.state.lock().transaction(|t| t.begin_rebase(point))?;
        self.rebases.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            common_point = point,
            replanned,
            "the server dropped journal entries older than its retention period ({why}); starting \
             again from a snapshot"
        );
        Ok(())
    }

    /// How many times this engine re-based since it was opened.
    pub fn rebase_count(&self) -> u64 {
        self.rebases.load(Ordering::Relaxed)
    }

    /// The newest checkpoint the server still holds (0 if none). The journal is append-only, so if
    /// the server holds a position it holds every earlier one of the same history: a binary search
    /// with one one-change `ListChanges` probe per step.
    async fn common_point(&self) -> Result<u64, RoundError> {
        let points = self.state.lock().read(|t| t.checkpoints())?;
        let points = points.points();
        let (mut held, mut lost) = (0, points.len());
        while held < lost {
            let mid = (held + lost) / 2;
            let (cursor, tag) = points[mid];
            match self
                .remote
                .list_changes(Position::new(cursor, tag), 1)
                .await
            {
                // Below the floor but checked against its kept tag: the same history.
                Ok(_) => held = mid + 1,
                Err(e) if e.is_compacted() => held = mid + 1,
                Err(e) if e.is_diverged() => lost = mid,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(match held {
            0 => 0,
            n => points[n - 1].0,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::remote::RemoteError;

    fn rejected(reason: &str) -> RemoteError {
        RemoteError::from({
            let mut status = tonic::Status::out_of_range("refused");
            status
                .metadata_mut()
                .insert("bvfs-reason", reason.parse().unwrap());
            status
        })
    }

    /// A position below the server's journal floor is told apart from a diverged history: both
    /// start again from a snapshot, but only a divergence means the server lost changes.
    #[test]
    fn a_compacted_position_is_not_a_divergence() {
        let compacted = rejected("journal-compacted");
        assert!(compacted.is_compacted());
        assert!(!compacted.is_diverged());
        assert!(compacted.is_refusal());
        for other in ["cursor-ahead", "journal-diverged", "expired", ""] {
            assert!(!rejected(other).is_compacted(), "{other}");
        }
        assert!(!RemoteError::Unavailable("journal-compacted".into()).is_compacted());
    }
}

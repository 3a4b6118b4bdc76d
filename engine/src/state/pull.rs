//! Applying what the server says to the REMOTE tree: journal pages (`ListChanges`) and snapshot pages
//! (first sync). A journal page, or a batch of snapshot pages, is one transaction together with the
//! position it reaches, so a crash resumes from the last applied one and the cursor never moves
//! backwards.

use bvfs_proto::v1;

use super::{StateResult, Table, Txn};
use crate::chunking::Manifest;
use crate::model::{Node, NodeId, NodeKind};
use crate::wire::{WireError, node_from_proto};

/// Meta keys of the pull position: the cursor and the lineage tag of the entry there
/// ([`super::lineage`]).
pub const CURSOR: &str = "cursor";
pub const CURSOR_TAG: &str = "cursor_tag";
/// While a first sync runs: the cursor the snapshot is taken at, its tag, and the id to continue
/// after.
pub const SNAPSHOT_AT: &str = "snapshot_at";
pub const SNAPSHOT_AT_TAG: &str = "snapshot_at_tag";
pub const SNAPSHOT_AFTER: &str = "snapshot_after";
/// The lowest cursor REMOTE must reach before the next plan (set by our own commits), and the tag
/// the journal entry there must carry: the one our commit's answer gave.
pub const PULL_TARGET: &str = "pull_target";
pub const PULL_TARGET_TAG: &str = "pull_target_tag";

/// Why a page could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    State(#[from] super::StateError),
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("the server's journal jumped from cursor {cursor} to {seq}: refusing a gap")]
    Gap { cursor: u64, seq: u64 },
    /// The journal entry at `seq` is not the one our own commit made there: the server lost that
    /// commit (restored from an older backup), and this device must re-base.
    #[error("the server's journal entry {seq} is not the commit this device made there")]
    Diverged { seq: u64 },
}

impl Txn<'_> {
    /// The cursor: the last journal sequence applied to REMOTE.
    pub fn cursor(&self) -> StateResult<u64> {
        Ok(self.meta_u64(CURSOR)?.unwrap_or(0))
    }

    /// The cursor with the tag of its entry (0 if unknown).
    pub fn position(&self) -> StateResult<crate::remote::Position> {
        Ok(crate::remote::Position::new(
            self.cursor()?,
            self.meta_u64(CURSOR_TAG)?.unwrap_or(0),
        ))
    }

    /// Applies one page of journal changes in order and advances the cursor to `next_cursor`, whose
    /// entry carries `next_tag` (0 if the server did not say). A change at our pull target must
    /// carry the tag our commit's answer gave, or the server lost that commit
    /// ([`PullError::Diverged`]).
    pub fn apply_changes(
        &self,
        changes: &[v1::Change],
        next_cursor: u64,
        next_tag: u64,
    ) -> Result<(), PullError> {
        let mut cursor = self.cursor()?;
        let mut tag = self.meta_u64(CURSOR_TAG)?.unwrap_or(0);
        let target = self.meta_u64(PULL_TARGET)?.unwrap_or(0);
        let target_tag = self.meta_u64(PULL_TARGET_TAG)?.unwrap_or(0);
        let last = crate::bounded::last_change_of_each_node(changes);
        for (i, change) in changes.iter().enumerate() {
            if change.seq <= cursor {
                continue; // Already applied (a repeated page after a lost response).
            }
            if change.seq != cursor + 1 {
                return Err(PullError::Gap {
                    cursor,
                    seq: change.seq,
                });
            }
            if change.seq == target && target_tag != 0 && change.tag != target_tag {
                return Err(PullError::Diverged { seq: change.seq });
            }
            let node = change
                .node
                .as_ref()
                .ok_or_else(|| WireError(format!("change {} has no node", change.seq)))?;
            let (node, manifest) = node_from_proto(node)?;
            if node.id.is_root() {
                return Err(WireError("a change to the root".into()).into());
            }
            if let Some(manifest) = &manifest {
                self.put_manifest(manifest)?;
            }
            match v1::ChangeKind::try_from(change.kind) {
                Ok(v1::ChangeKind::Upsert) => {
                    // An elided list must have been fetched (`GetManifest`) before the page is
                    // applied, unless a later change of the page supersedes this one.
                    if manifest.is_none()
                        && last.contains(&i)
                        && let Some(hash) =
                            node.attrs.content.filter(|_| node.kind == NodeKind::File)
                        && !self.has_manifest(&hash)?
                    {
                        return Err(WireError(format!(
                            "change {}: the chunk list of content {hash} was elided and not fetched",
                            change.seq
                        ))
                        .into());
                    }
                    self.put_node(Table::Remote, &node)?;
                    self.adopt_if_inflight(node.id, Some(&node))?;
                }
                Ok(v1::ChangeKind::Delete) => {
                    self.remove_node(Table::Remote, node.id)?;
                    self.adopt_if_inflight(node.id, None)?;
                }
                _ => {
                    return Err(
                        WireError(format!("change {} has an unknown kind", change.seq)).into(),
                    );
                }
            }
            self.mark_changed(node.id)?;
            cursor = change.seq;
            tag = change.tag;
        }
        if next_cursor > cursor {
            return Err(PullError::Gap {
                cursor,
                seq: next_cursor,
            });
        }
        if next_cursor == cursor && next_tag != 0 {
            tag = next_tag;
        }
        self.set_meta(CURSOR, cursor as i64)?;
        self.set_meta(CURSOR_TAG, tag as i64)?;
        self.record_checkpoint(cursor, tag)?;
        Ok(())
    }

    /// Applies one snapshot page (parsed): every node in it is put into REMOTE as of the snapshot
    /// cursor, and the page's end is recorded (`next_after`, or `None` for the last page).
    pub fn apply_snapshot_page(
        &self,
        nodes: &[(Node, Option<Manifest>)],
        next_after: Option<NodeId>,
    ) -> StateResult<()> {
        for (node, manifest) in nodes {
            if node.id.is_root() {
                continue;
            }
            if let Some(manifest) = manifest {
                self.put_manifest(manifest)?;
            }
            self.put_node(Table::Remote, node)?;
            self.adopt_if_inflight(node.id, Some(node))?;
            self.mark_changed(node.id)?;
        }
        match next_after {
            Some(id) => self.set_meta(SNAPSHOT_AFTER, id.to_bytes().to_vec())?,
            None => {
                // The snapshot is complete: the cursor is its cursor, and the journal continues from it.
                let at = self.meta_u64(SNAPSHOT_AT)?.unwrap_or(0);
                let tag = self.meta_u64(SNAPSHOT_AT_TAG)?.unwrap_or(0);
                self.set_meta(CURSOR, at as i64)?;
                self.set_meta(CURSOR_TAG, tag as i64)?;
                self.record_checkpoint(at, tag)?;
                self.delete_meta(SNAPSHOT_AT)?;
                self.delete_meta(SNAPSHOT_AT_TAG)?;
                self.delete_meta(SNAPSHOT_AFTER)?;
                self.finish_rebase()?;
            }
        }
        Ok(())
    }
}

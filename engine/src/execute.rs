//! Applying the planner's local ops to the LOCAL tree (placeholders: database rows) and the
//! materialized copies, and advancing SYNCED as each op says.
//!
//! Local ops run inside the round's transaction. An op that changes the content of a file first
//! reserves its inode with the content owner ([`crate::content`]): if a writer, uncommitted bytes or a
//! commit hold it, the op waits for a later round. File moves and removals are recorded as intents
//! in the transaction and done after it commits ([`crate::content::FileChanges`]), so a failed
//! transaction never leaves files moved for rows that were not, and a crash never leaves a stale
//! copy that could pass for a local edit. A content change under open handles moves the node to a
//! fresh inode, so the old handles' kernel page cache never mixes with the new version.

use crate::api::{Engine, EngineError, Invalidation};
use crate::chunking::ChunkId;
use crate::content::{FileChanges, FileOp, Reservation};
use crate::model::{NodeId, NodeKind};
use crate::planner::{OpKind, PlannedOp};
use crate::state::Txn;
use crate::state::local::LocalEntry;

/// What applying local ops produced besides database changes.
#[derive(Default)]
pub struct LocalEffects {
    pub invalidations: Vec<Invalidation>,
    pub fetch: Vec<ChunkId>,
    pub files: FileChanges,
    /// Pinned files whose content changed: the chunks to hold for each inode now (`None`: none).
    pub pins: Vec<(u64, Option<Vec<ChunkId>>)>,
}

impl LocalEffects {
    /// Records that the pinned file `ino` now holds `attrs`' content (or nothing).
    fn repin(
        &mut self,
        t: &Txn<'_>,
        ino: u64,
        attrs: Option<&crate::model::Attrs>,
    ) -> Result<(), EngineError> {
        let ids = match attrs.and_then(|a| a.content) {
            Some(hash) => t
                .manifest(&hash)?
                .map(|m| m.chunks.iter().map(|c| c.id).collect()),
            None => None,
        };
        self.pins.push((ino, ids));
        Ok(())
    }
}

fn entry_of(t: &Txn<'_>, id: NodeId) -> Result<Option<LocalEntry>, EngineError> {
    Ok(t.local_by_id(id)?)
}

fn ino_of(t: &Txn<'_>, id: NodeId) -> Result<Option<u64>, EngineError> {
    Ok(t.local_ino(id)?)
}

/// Whether `name` in the LOCAL directory `parent` is free (or already `id`'s).
fn name_free(t: &Txn<'_>, parent: NodeId, name: &str, id: NodeId) -> Result<bool, EngineError> {
    let taken = t.tree(crate::state::Table::Local).child_id(parent, name)?;
    Ok(taken.is_none_or(|other| other == id))
}

impl Engine {
    fn queue_fetch(
        &self,
        t: &Txn<'_>,
        attrs: &crate::model::Attrs,
        fetch: &mut Vec<ChunkId>,
    ) -> Result<(), EngineError> {
        if let Some(hash) = attrs.content
            && let Some(manifest) = t.manifest(&hash)?
        {
            fetch.extend(manifest.chunks.iter().map(|c| c.id));
        }
        Ok(())
    }

    /// Applies one local op. Returns false if it has to wait for a later round.
    pub(crate) fn apply_local_op(
        &self,
        t: &Txn<'_>,
        op: &PlannedOp,
        fx: &mut LocalEffects,
    ) -> Result<bool, EngineError> {
        match &op.kind {
            OpKind::LocalCreate {
                node,
                fetch_content,
            } => {
                if let Some(existing) = entry_of(t, node.id)? {
                    // Re-running an op whose effect is already there (a round interrupted after it).
                    debug_assert_eq!(existing.node.kind, node.kind);
                } else {
                    let Some(parent_ino) = ino_of(t, node.parent)? else {
                        return Ok(false);
                    };
                    if !name_free(t, node.parent, &node.name, node.id)? {
                        tracing::warn!(id = %node.id, name = %node.name, "the planned local create finds its name taken; waiting");
                        return Ok(false);
                    }
                    let ino = t.insert_local(node)?;
                    if t.local_by_id(node.id)?.is_some_and(|e| e.pinned) {
                        // Created under a pinned directory: pinned too, so kept local.
                        fx.repin(t, ino, Some(&node.attrs))?;
                        self.queue_fetch(t, &node.attrs, &mut fx.fetch)?;
                    }
                    fx.invalidations.push(Invalidation::Entry {
                        parent: parent_ino,
                        name: node.name.clone(),
                    });
                }
                if *fetch_content {
                    self.queue_fetch(t, &node.attrs, &mut fx.fetch)?;
                }
            }
            OpKind::LocalUpdate {
                id,
                attrs,
                fetch_content,
            } => {
                let Some(mut entry) = entry_of(t, *id)? else {
                    return Ok(false);
                };
                let content_changes = !entry.node.attrs.same_content(attrs);
                let old_ino = entry.ino;
                let mut ino = entry.ino;
                if content_changes && entry.node.kind == NodeKind::File {
                    let Some(reservation) = self.reserve_content(&mut fx.files, entry.ino) else {
                        return Ok(false);
                    };
                    if self.files.exists(entry.ino) {
                        let op = FileOp::Remove {
                            ino: entry.ino,
                            expected: entry.node.attrs.content,
                        };
                        self.plan_file_op(t, &mut fx.files, op)?;
                    }
                    ino = self.place_new_version(t, fx, &entry, reservation)?;
                }
                if content_changes && entry.pinned {
                    fx.repin(t, ino, Some(attrs))?;
                }
                entry.node.attrs = attrs.clone();
                t.update_local(&entry.node)?;
                if *fetch_content {
                    self.queue_fetch(t, attrs, &mut fx.fetch)?;
                }
                fx.invalidations.push(Invalidation::Inode(old_ino));
            }
            OpKind::LocalMove { id, parent, name } => {
                let Some(mut entry) = entry_of(t, *id)? else {
                    return Ok(false);
                };
                let (Some(old_parent_ino), Some(new_parent_ino)) =
                    (ino_of(t, entry.node.parent)?, ino_of(t, *parent)?)
                else {
                    return Ok(false);
                };
                if !name_free(t, *parent, name, *id)? {
                    return Ok(false);
                }
                fx.invalidations.push(Invalidation::Entry {
                    parent: old_parent_ino,
                    name: entry.node.name.clone(),
                });
                entry.node.parent = *parent;
                entry.node.name = name.clone();
                t.update_local(&entry.node)?;
                fx.invalidations.push(Invalidation::Entry {
                    parent: new_parent_ino,
                    name: name.clone(),
                });
            }
            OpKind::LocalDelete { id } => {
                let Some(entry) = entry_of(t, *id)? else {
                    return Ok(true);
                };
                if entry.node.kind == NodeKind::Directory
                    && !t.local_children(entry.ino, None, 1)?.is_empty()
                {
                    return Ok(false);
                }
                if entry.node.kind == NodeKind::File {
                    if self.reserve_content(&mut fx.files, entry.ino).is_none() {
                        return Ok(false);
                    }
                    if self.files.exists(entry.ino) {
                        let op = FileOp::Remove {
                            ino: entry.ino,
                            expected: entry.node.attrs.content,
                        };
                        self.plan_file_op(t, &mut fx.files, op)?;
                    }
                }
                let parent_ino = ino_of(t, entry.node.parent)?;
                if entry.pinned {
                    fx.repin(t, entry.ino, None)?;
                }
                t.remove_node(crate::state::Table::Local, *id)?;
                if let Some(parent) = parent_ino {
                    fx.invalidations.push(Invalidation::Entry {
                        parent,
                        name: entry.node.name.clone(),
                    });
                }
                fx.invalidations.push(Invalidation::Inode(entry.ino));
            }
            OpKind::LocalConflictCopy {
                original,
                copy,
                original_attrs,
                fetch_content,
            } => {
                let Some(mut entry) = entry_of(t, *original)? else {
                    return Ok(false);
                };
                let Some(reservation) = self.reserve_content(&mut fx.files, entry.ino) else {
                    return Ok(false);
                };
                let Some(parent_ino) = ino_of(t, copy.parent)? else {
                    return Ok(false);
                };
                if entry_of(t, copy.id)?.is_none() {
                    if !name_free(t, copy.parent, &copy.name, copy.id)? {
                        return Ok(false);
                    }
                    let copy_ino = t.insert_local(copy)?;
                    if self.files.exists(entry.ino) {
                        debug_assert_eq!(copy.attrs.content, entry.node.attrs.content);
                        let op = FileOp::Rename {
                            from: entry.ino,
                            to: copy_ino,
                            expected: entry.node.attrs.content,
                        };
                        self.plan_file_op(t, &mut fx.files, op)?;
                    }
                    fx.invalidations.push(Invalidation::Entry {
                        parent: parent_ino,
                        name: copy.name.clone(),
                    });
                    t.record_conflict(
                        self.clock.now_ns(),
                        *original,
                        Some(copy.id),
                        &format!(
                            "edited here and on another device: this device's version is now {:?}",
                            copy.name
                        ),
                    )?;
                    tracing::warn!(name = %copy.name, "conflict: kept this device's version as a conflicted copy");
                }
                let old_ino = entry.ino;
                if !entry.node.attrs.same_content(original_attrs) {
                    let ino = self.place_new_version(t, fx, &entry, reservation)?;
                    if entry.pinned {
                        fx.repin(t, ino, Some(original_attrs))?;
                    }
                }
                entry.node.attrs = original_attrs.clone();
                t.update_local(&entry.node)?;
                // The copy is a new local node: the next plan uploads it.
                t.mark_changed(copy.id)?;
                if *fetch_content {
                    self.queue_fetch(t, original_attrs, &mut fx.fetch)?;
                }
                fx.invalidations.push(Invalidation::Inode(old_ino));
            }
            OpKind::LocalReidentify {
                old,
                new,
                parent,
                name,
                attrs,
            } => {
                if entry_of(t, *new)?.is_none() {
                    if entry_of(t, *old)?.is_none() {
                        return Ok(false);
                    }
                    t.reidentify_local(*old, *new)?;
                }
                let Some(mut entry) = entry_of(t, *new)? else {
                    return Ok(false);
                };
                let (Some(old_parent_ino), Some(new_parent_ino)) =
                    (ino_of(t, entry.node.parent)?, ino_of(t, *parent)?)
                else {
                    return Ok(false);
                };
                if !name_free(t, *parent, name, *new)? {
                    return Ok(false);
                }
                fx.invalidations.push(Invalidation::Entry {
                    parent: old_parent_ino,
                    name: entry.node.name.clone(),
                });
                entry.node.parent = *parent;
                entry.node.name = name.clone();
                if let Some(attrs) = attrs {
                    // A merge of two creates of equal content: the copy stays valid.
                    debug_assert!(
                        entry.node.kind != NodeKind::File || entry.node.attrs.same_content(attrs)
                    );
                    if entry.node.kind == NodeKind::File && !entry.node.attrs.same_content(attrs) {
                        let Some(reservation) = self.reserve_content(&mut fx.files, entry.ino)
                        else {
                            return Ok(false);
                        };
                        if self.files.exists(entry.ino) {
                            let op = FileOp::Remove {
                                ino: entry.ino,
                                expected: entry.node.attrs.content,
                            };
                            self.plan_file_op(t, &mut fx.files, op)?;
                        }
                        self.place_new_version(t, fx, &entry, reservation)?;
                    }
                    entry.node.attrs = attrs.clone();
                }
                t.update_local(&entry.node)?;
                t.mark_changed(*old)?;
                fx.invalidations.push(Invalidation::Entry {
                    parent: new_parent_ino,
                    name: name.clone(),
                });
                fx.invalidations.push(Invalidation::Inode(entry.ino));
            }
            OpKind::RecordSynced => {}
            OpKind::RemoteCreate { .. }
            | OpKind::RemoteUpdate { .. }
            | OpKind::RemoteMove { .. }
            | OpKind::RemoteDelete { .. } => unreachable!("remote ops are not applied locally"),
        }
        t.apply_synced(&op.synced, None)?;
        if let Some(id) = op.kind.node().or(op.synced.node()) {
            t.mark_changed(id)?;
        }
        Ok(true)
    }

    /// Where the new content of a reserved file goes: in place when no handle is open on it (its
    /// next open drops the kernel's cached pages), else under a fresh inode, so the open handles keep
    /// the old inode, its version and its page cache (rule 4 of [`crate::content`]). Returns the
    /// inode the node has now.
    fn place_new_version(
        &self,
        t: &Txn<'_>,
        fx: &mut LocalEffects,
        entry: &LocalEntry,
        reservation: Reservation,
    ) -> Result<u64, EngineError> {
        if reservation != Reservation::Held {
            self.content_changed_in_place(&mut fx.files, entry.ino);
            return Ok(entry.ino);
        }
        let (old, new) = t.renumber_local(entry.node.id)?;
        debug_assert_eq!(old, entry.ino);
        tracing::debug!(
            name = %entry.node.name,
            old,
            new,
            "a new version of a file open here: it moves to a new inode"
        );
        if let Some(parent) = ino_of(t, entry.node.parent)? {
            fx.invalidations.push(Invalidation::Entry {
                parent,
                name: entry.node.name.clone(),
            });
        }
        if entry.pinned {
            fx.pins.push((old, None));
        }
        Ok(new)
    }
}

//! Stage 3: the operations that take REMOTE and LOCAL to each node's target, and how SYNCED follows.
//!
//! SYNCED records what both sides agree on, one aspect of a node at a time (existence, place,
//! attributes). So an op advances SYNCED only for the aspect it completes: when both sides need a change
//! to the same aspect, the local op runs first and the remote op that follows it carries the SYNCED
//! change. If the plan stops between the two, SYNCED still holds the old base, and re-planning finds the
//! same target again. For a node held where LOCAL has it (a remote place this platform cannot show),
//! SYNCED keeps LOCAL's place, so that the remote move stays the change still to make.
//!
//! A node gets at most one remote op per plan, because each commit names the revision it was planned
//! against: a node that needs both a move and an update is moved now and updated by the next plan.

use crate::model::{Attrs, Node, NodeId, NodeIdMap, NodeKind};

use super::context::PlanContext;
use super::merge::{Derived, Entries, Entry, Fate, Loc, Target};
use super::{OpId, OpKind, PlannedOp, SyncedChange};

/// The ops of a plan before scheduling: their ids and dependencies come later, from what they change.
/// The ops are already [`PlannedOp`]s so that scheduling orders them in place.
pub(super) struct Drafts {
    pub ops: Vec<PlannedOp>,
    /// For each op, an op on the same node that must run first.
    pub after: Vec<Option<u32>>,
}

pub(super) fn emit(entries: &Entries<'_>, ctx: &PlanContext<'_>) -> Drafts {
    let capacity = entries.len() + entries.len() / 4;
    let mut emitter = Emitter {
        entries,
        ctx,
        drafts: Drafts {
            ops: Vec::with_capacity(capacity),
            after: Vec::with_capacity(capacity),
        },
        forks: NodeIdMap::default(),
    };
    for entry in &entries.list {
        match (&entry.fate, entry.derived) {
            (Fate::Kept(target), None) => emitter.kept(entry, target),
            (Fate::Kept(target), Some(Derived::Reborn { from })) => {
                emitter.reborn(entry, target, from)
            }
            (Fate::Kept(target), Some(Derived::ConflictCopy { of })) => {
                emitter.conflicted_copy(entry, target, of)
            }
            (Fate::Gone, _) => emitter.gone(entry),
            (Fate::TentativelyGone { .. }, _) => {
                unreachable!("stage 2 settles every tentative delete")
            }
            // A remote node this device cannot show: SYNCED forgets it, so that it reads as remote-only
            // rather than as deleted here.
            (Fate::RemoteOnly, _) if entry.synced.is_some() => {
                emitter.push(OpKind::RecordSynced, SyncedChange::Remove(entry.id), None);
            }
            // Handled by the node they turn into, or left alone.
            (Fate::RebornAs(_) | Fate::MergedInto | Fate::RemoteOnly | Fate::Skipped, _) => {}
        }
    }
    emitter.drafts
}

struct Emitter<'e, 't> {
    entries: &'e Entries<'t>,
    ctx: &'e PlanContext<'e>,
    drafts: Drafts,
    /// The conflicted-copy op of each original, for the copy's upload to follow.
    forks: NodeIdMap<usize>,
}

impl Emitter<'_, '_> {
    fn push(&mut self, kind: OpKind, synced: SyncedChange, after: Option<usize>) -> usize {
        let position = self.drafts.ops.len();
        let id = OpId(position as u32);
        self.drafts.ops.push(PlannedOp {
            id,
            deps: Vec::new(),
            kind,
            synced,
        });
        self.drafts.after.push(after.map(|after| after as u32));
        position
    }

    /// Sets how SYNCED changes when op `position` succeeds.
    fn set_synced(&mut self, position: usize, synced: SyncedChange) {
        self.drafts.ops[position].synced = synced;
    }

    fn resident(&self, id: NodeId) -> bool {
        self.ctx.residency.is_resident(id)
    }

    /// A node that exists somewhere now and stays.
    fn kept(&mut self, entry: &Entry<'_>, target: &Target) {
        let id = entry.id;
        let (remote, synced) = (entry.remote.as_deref(), entry.synced.as_deref());
        let revision = remote.map_or(0, |remote| remote.revision);
        let node_at = |loc: &Loc<'_>| node(id, loc, entry.kind, &target.attrs, revision);

        let Some(local) = entry.local.as_deref() else {
            // A remote create, or a remote node coming back after a local delete: REMOTE has it as is.
            debug_assert!(
                remote
                    .is_some_and(|remote| target.remote.is(remote) && remote.attrs == target.attrs)
            );
            debug_assert_eq!(target.local, target.remote);
            let node = node_at(&target.local);
            let kind = match target.merged_from {
                Some(old) => OpKind::LocalReidentify {
                    old,
                    new: id,
                    parent: target.local.parent,
                    name: target.local.name.to_string(),
                    attrs: Some(target.attrs.clone()),
                },
                None => OpKind::LocalCreate {
                    fetch_content: entry.kind == NodeKind::File
                        && self.resident(target.local.parent),
                    node: node.clone(),
                },
            };
            self.push(kind, SyncedChange::Put(node), None);
            return;
        };

        let local_move = (!self.entries.is_local_at(entry, &target.local)).then(|| {
            let (parent, name) = (target.local.parent, target.local.name.to_string());
            self.push(
                OpKind::LocalMove { id, parent, name },
                SyncedChange::Unchanged,
                None,
            )
        });
        let local_attrs = if let Some(copy) = target.copy {
            let copy_target = self
                .entries
                .get(copy)
                .and_then(Entry::target)
                .expect("copies are kept");
            let op = OpKind::LocalConflictCopy {
                original: id,
                copy: Box::new(node(
                    copy,
                    &copy_target.local,
                    entry.kind,
                    &copy_target.attrs,
                    0,
                )),
                original_attrs: target.attrs.clone(),
                fetch_content: entry.kind == NodeKind::File && self.resident(id),
            };
            let fork = self.push(op, SyncedChange::Unchanged, None);
            self.forks.insert(id, fork);
            Some(fork)
        } else if target.attrs != local.attrs {
            let fetch_content = entry.kind == NodeKind::File
                && !target.attrs.same_content(&local.attrs)
                && self.resident(id);
            let op = OpKind::LocalUpdate {
                id,
                attrs: target.attrs.clone(),
                fetch_content,
            };
            Some(self.push(op, SyncedChange::Unchanged, None))
        } else {
            None
        };

        let Some(remote) = remote else {
            // A local create: one op carries place and attributes, after a rename if the name was taken.
            debug_assert!(local_attrs.is_none() && target.from_local);
            let node = node_at(&target.remote);
            let upload = entry.kind == NodeKind::File;
            self.push(
                OpKind::RemoteCreate {
                    node: node.clone(),
                    upload,
                },
                SyncedChange::Put(node),
                local_move,
            );
            return;
        };
        let base_revision = remote.revision;
        let remote_move = (!target.remote.is(remote)).then(|| {
            let (parent, name) = (target.remote.parent, target.remote.name.to_string());
            self.push(
                OpKind::RemoteMove {
                    id,
                    base_revision,
                    parent,
                    name,
                },
                SyncedChange::Unchanged,
                local_move,
            )
        });
        let remote_update_needed = target.attrs != remote.attrs;
        // One remote op per node and plan: an update waits for the next plan when the node also moves.
        let update_deferred = remote_update_needed && remote_move.is_some();
        let remote_update = (remote_update_needed && !update_deferred).then(|| {
            let upload = entry.kind == NodeKind::File && !target.attrs.same_content(&remote.attrs);
            let op = OpKind::RemoteUpdate {
                id,
                base_revision,
                attrs: target.attrs.clone(),
                upload,
            };
            self.push(op, SyncedChange::Unchanged, local_attrs)
        });

        let Some(synced) = synced else {
            // Both sides have a node SYNCED lacks: record it once they agree on everything.
            let agree = [local_move, local_attrs, remote_move, remote_update]
                .iter()
                .all(Option::is_none)
                && !update_deferred
                && target.local == target.remote;
            if agree {
                self.push(
                    OpKind::RecordSynced,
                    SyncedChange::Put(node_at(&target.remote)),
                    None,
                );
            }
            return;
        };

        // The place: the last op that changes it records it. A node held where LOCAL has it records
        // LOCAL's place, so that the next plan still sees the remote move as the one to make.
        let held = target.local != target.remote;
        let synced_place = if held { &target.local } else { &target.remote };
        let mut record_place = false;
        if !synced_place.is(synced) {
            match remote_move.or(local_move).filter(|_| !held) {
                Some(last) => {
                    let (parent, name) = (target.remote.parent, target.remote.name.to_string());
                    self.set_synced(last, SyncedChange::Place { id, parent, name });
                }
                None => record_place = true,
            }
        }
        // The attributes, likewise, unless REMOTE's update waits for the next plan.
        let mut record_attrs = false;
        if !update_deferred && target.attrs != synced.attrs {
            match remote_update.or(local_attrs) {
                Some(last) => {
                    let attrs = target.attrs.clone();
                    self.set_synced(last, SyncedChange::SetAttrs { id, attrs });
                }
                None => record_attrs = true,
            }
        }
        let record = match (record_place, record_attrs) {
            (true, true) => SyncedChange::Put(node_at(synced_place)),
            (true, false) => SyncedChange::Place {
                id,
                parent: synced_place.parent,
                name: synced_place.name.to_string(),
            },
            (false, true) => SyncedChange::SetAttrs {
                id,
                attrs: target.attrs.clone(),
            },
            (false, false) => return,
        };
        self.push(OpKind::RecordSynced, record, None);
    }

    /// A local node that survives a remote delete comes back as a new node, then is uploaded. SYNCED
    /// re-identifies it too, so what SYNCED holds under it (say, a node held where LOCAL has it) follows.
    fn reborn(&mut self, entry: &Entry<'_>, target: &Target, from: NodeId) {
        let (parent, name) = (target.local.parent, target.local.name.to_string());
        let op = OpKind::LocalReidentify {
            old: from,
            new: entry.id,
            parent,
            name,
            attrs: None,
        };
        let reidentify = self.push(
            op,
            SyncedChange::Reidentify {
                old: from,
                new: entry.id,
            },
            None,
        );
        self.upload_new(entry, target, reidentify);
    }

    /// A conflicted copy exists locally once its fork ran; then it is uploaded.
    fn conflicted_copy(&mut self, entry: &Entry<'_>, target: &Target, of: NodeId) {
        let fork = self.forks[&of];
        self.upload_new(entry, target, fork);
    }

    fn upload_new(&mut self, entry: &Entry<'_>, target: &Target, after: usize) {
        let node = node(entry.id, &target.remote, entry.kind, &target.attrs, 0);
        let upload = entry.kind == NodeKind::File;
        self.push(
            OpKind::RemoteCreate {
                node: node.clone(),
                upload,
            },
            SyncedChange::Put(node),
            Some(after),
        );
    }

    /// A node deleted on one side (or both): delete it where it is left.
    fn gone(&mut self, entry: &Entry<'_>) {
        let id = entry.id;
        let (remote, local, synced) = (
            entry.remote.as_deref(),
            entry.local.as_deref(),
            entry.synced.as_deref(),
        );
        let forget = if synced.is_some() {
            SyncedChange::Remove(id)
        } else {
            SyncedChange::Unchanged
        };
        // Delete safety: only what the deleting side saw (SYNCED's content) is ever deleted.
        let unchanged =
            |node: &Node| synced.is_some_and(|synced| synced.attrs.same_content(&node.attrs));
        match (remote, local) {
            (Some(remote), None) => {
                debug_assert!(unchanged(remote), "deleting changed content of {id:?}");
                self.push(
                    OpKind::RemoteDelete {
                        id,
                        base_revision: remote.revision,
                    },
                    forget,
                    None,
                );
            }
            (None, Some(local)) => {
                debug_assert!(unchanged(local), "deleting changed content of {id:?}");
                self.push(OpKind::LocalDelete { id }, forget, None);
            }
            (None, None) if synced.is_some() => {
                self.push(OpKind::RecordSynced, forget, None);
            }
            _ => unreachable!("a node both sides have is never gone"),
        }
    }
}

fn node(id: NodeId, loc: &Loc<'_>, kind: NodeKind, attrs: &Attrs, revision: u64) -> Node {
    Node {
        id,
        parent: loc.parent,
        name: loc.name.to_string(),
        kind,
        attrs: attrs.clone(),
        revision,
    }
}

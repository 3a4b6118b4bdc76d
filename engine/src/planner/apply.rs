//! What each op means, as a reference executor over three in-memory trees: a perfect server (remote ops
//! commit at once and get the next journal sequence as revision) and a perfect filesystem. The
//! property tests and simulations run plans through it; the real executor must agree with it.

use crate::model::{Node, NodeId, NodeIdSet};
use crate::tree::{Tree, TreeError};

use super::merge::same_state;
use super::{OpKind, PlannedOp, SyncedChange};

/// Why an op could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("the server is at revision {actual} of {id}, the op was planned against {expected}")]
    StaleRevision {
        id: NodeId,
        expected: u64,
        actual: u64,
    },
    #[error("REMOTE: {0}")]
    Remote(TreeError),
    #[error("LOCAL: {0}")]
    Local(TreeError),
    #[error("SYNCED: {0}")]
    Synced(TreeError),
}

/// REMOTE, LOCAL and SYNCED in memory, and the server's journal head.
#[derive(Debug, Clone)]
pub struct ThreeTrees {
    pub remote: Tree,
    pub local: Tree,
    pub synced: Tree,
    /// The last journal sequence the server handed out.
    pub head: u64,
}

impl ThreeTrees {
    pub fn new(remote: Tree, local: Tree, synced: Tree) -> ThreeTrees {
        let head = remote.iter().map(|node| node.revision).max().unwrap_or(0);
        ThreeTrees {
            remote,
            local,
            synced,
            head,
        }
    }

    /// Runs one op as if it succeeded: its side changes, then SYNCED as the op says. Not atomic: on an
    /// error the trees may be partly changed.
    pub fn apply(&mut self, op: &PlannedOp) -> Result<(), ApplyError> {
        self.apply_to_side(&op.kind)?;
        self.apply_to_synced(&op.synced).map_err(ApplyError::Synced)
    }

    fn apply_to_side(&mut self, kind: &OpKind) -> Result<(), ApplyError> {
        let local = &mut self.local;
        match kind {
            OpKind::LocalCreate { node, .. } => local.insert(node.clone()),
            OpKind::LocalUpdate { id, attrs, .. } => local.set_attrs(*id, attrs.clone()),
            OpKind::LocalMove { id, parent, name } => local.move_to(*id, *parent, name),
            OpKind::LocalDelete { id } => local.remove(*id).map(drop),
            OpKind::LocalConflictCopy {
                original,
                copy,
                original_attrs,
                ..
            } => local
                .insert(Node::clone(copy))
                .and_then(|()| local.set_attrs(*original, original_attrs.clone())),
            OpKind::LocalReidentify {
                old,
                new,
                parent,
                name,
                attrs,
            } => local
                .reidentify(*old, *new)
                .and_then(|()| local.move_to(*new, *parent, name))
                .and_then(|()| {
                    attrs
                        .as_ref()
                        .map_or(Ok(()), |attrs| local.set_attrs(*new, attrs.clone()))
                }),
            OpKind::RecordSynced => Ok(()),
            remote_op => return self.commit(remote_op),
        }
        .map_err(ApplyError::Local)
    }

    /// A remote op on a perfect server: compare-and-swap on the base revision, then the next revision.
    fn commit(&mut self, kind: &OpKind) -> Result<(), ApplyError> {
        let base = match kind {
            OpKind::RemoteUpdate {
                id, base_revision, ..
            }
            | OpKind::RemoteMove {
                id, base_revision, ..
            }
            | OpKind::RemoteDelete { id, base_revision } => Some((*id, *base_revision)),
            _ => None,
        };
        if let Some((id, expected)) = base {
            let actual = self
                .remote
                .get(id)
                .ok_or(ApplyError::Remote(TreeError::NotFound(id)))?
                .revision;
            if actual != expected {
                return Err(ApplyError::StaleRevision {
                    id,
                    expected,
                    actual,
                });
            }
        }
        let revision = self.head + 1;
        let remote = &mut self.remote;
        match kind {
            OpKind::RemoteCreate { node, .. } => {
                let mut node = node.clone();
                node.revision = revision;
                remote.insert(node)
            }
            OpKind::RemoteUpdate { id, attrs, .. } => remote
                .set_attrs(*id, attrs.clone())
                .and_then(|()| remote.set_revision(*id, revision)),
            OpKind::RemoteMove {
                id, parent, name, ..
            } => remote
                .move_to(*id, *parent, name)
                .and_then(|()| remote.set_revision(*id, revision)),
            OpKind::RemoteDelete { id, .. } => remote.remove(*id).map(drop),
            _ => unreachable!("only remote ops are committed"),
        }
        .map_err(ApplyError::Remote)?;
        self.head = revision;
        Ok(())
    }

    fn apply_to_synced(&mut self, change: &SyncedChange) -> Result<(), TreeError> {
        let synced = &mut self.synced;
        match change {
            SyncedChange::Unchanged => return Ok(()),
            SyncedChange::Put(node) => synced.put(node.clone())?,
            SyncedChange::Place { id, parent, name } => synced.move_to(*id, *parent, name)?,
            SyncedChange::SetAttrs { id, attrs } => synced.set_attrs(*id, attrs.clone())?,
            SyncedChange::Remove(id) => return synced.remove(*id).map(drop),
            SyncedChange::Reidentify { old, new } => synced.reidentify(*old, *new)?,
        }
        let id = change.node().expect("a change names its node");
        self.synced
            .set_revision(id, self.remote.get(id).map_or(0, |remote| remote.revision))
    }

    /// The ids whose states are not equal in all three trees (revisions aside): what a plan needs as
    /// its changed set. Compares whole trees; for tests and simulations.
    pub fn differing_ids(&self) -> Vec<NodeId> {
        let all: NodeIdSet = [&self.remote, &self.local, &self.synced]
            .iter()
            .flat_map(|tree| tree.iter().map(|node| node.id))
            .collect();
        let mut differing: Vec<NodeId> = all
            .into_iter()
            .filter(
                |&id| match (self.remote.get(id), self.local.get(id), self.synced.get(id)) {
                    (Some(remote), Some(local), Some(synced)) => {
                        !(same_state(remote, local) && same_state(remote, synced))
                    }
                    _ => true,
                },
            )
            .collect();
        differing.sort_unstable();
        differing
    }
}

//! The three-tree planner (DESIGN D1, D7, D8 and §5): REMOTE, LOCAL and SYNCED in, operations out.
//!
//! SYNCED is the merge base, the last state both sides agreed on. For every changed node the planner
//! makes a three-way merge of where the node is, what it holds and whether it exists, resolves what
//! the merged tree cannot hold as is (conflicting edits, names taken twice, moves that close a cycle,
//! names this platform cannot show, deletes of directories that still hold something new), and emits
//! the operations that take REMOTE and LOCAL to the merged tree. Each operation says how SYNCED
//! advances when it succeeds, so re-planning from any point of a partially applied plan reaches the
//! same place.
//!
//! The planner is pure: no I/O, no clock, no randomness. Everything impure comes in a
//! [`PlanContext`]. Its cost grows with the number of changed ids (plus the children of the
//! directories they delete or create, and the ancestors of what they move), not with the namespace.
//!
//! The stages, one module each:
//! - `merge`: the per-node three-way merge (each changed node's fate: kept where, gone, …).
//! - `resolve`: what the merged tree cannot hold as is: directories kept alive by what is inside them,
//!   local-platform names, cycles, name collisions and conflicted copies.
//! - `emit`: the operations for each node, with how SYNCED advances.
//! - `schedule`: dependencies between operations, cycles among them, the bulk-delete brake.
//! - `apply`: what each operation means, as a reference executor over in-memory trees
//!   ([`ThreeTrees`]).

mod apply;
mod conflict_name;
mod context;
mod emit;
mod merge;
mod resolve;
mod schedule;

use crate::model::{Attrs, NameError, NamePolicy, Node, NodeId, NodeKind};
use crate::tree::TreeView;

pub use apply::{ApplyError, ThreeTrees};
pub use context::{ConflictTime, DeleteBrake, NothingResident, PlanContext, Residency};

/// `NAME (conflicted copy from DEVICE YYYY-MM-DD HHMMSS).EXT` for a file called `name` (DESIGN D7),
/// for code outside the planner that keeps a local copy aside; making it unique among siblings is the
/// caller's job.
pub fn conflicted_copy_name(name: &str, device: &str, when: ConflictTime) -> String {
    conflict_name::ConflictNamer::new(device, when, NamePolicy::Posix).name(
        name,
        NodeKind::File,
        |_| true,
    )
}

/// Plans the operations that converge REMOTE, LOCAL and SYNCED.
pub struct Planner;

impl Planner {
    /// Plans from the three trees and the ids of the nodes that may differ between them.
    ///
    /// `changed` must include every id whose REMOTE, LOCAL and SYNCED states are not all equal; extra
    /// ids cost a lookup each. The planner reads the trees only around these ids.
    pub fn plan<T: TreeView>(
        remote: &T,
        local: &T,
        synced: &T,
        changed: impl IntoIterator<Item = NodeId>,
        ctx: &PlanContext<'_>,
    ) -> Plan {
        let trees = merge::Trees {
            remote,
            local,
            synced,
        };
        let mut entries = merge::Entries::collect(&trees, changed);
        let reported = resolve::resolve(&trees, &mut entries, ctx);
        let drafts = emit::emit(&entries, ctx);
        schedule::schedule(&trees, drafts, reported, ctx)
    }
}

/// What the planner decided: operations to run, deletes the brake holds, and what it could not do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// In dependency order: every op comes after the ops it depends on. Ops whose dependencies have all
    /// succeeded may run concurrently.
    pub ops: Vec<PlannedOp>,
    /// Deletes the bulk-delete brake holds until the user confirms them (see
    /// [`PlanContext::confirmed_deletes`]). Ops that depend on them wait too.
    pub held_deletes: Vec<HeldDelete>,
    /// Nodes the plan leaves as they are, and why.
    pub reported: Vec<Report>,
}

/// The index of an op in [`Plan::ops`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpId(pub u32);

/// One operation of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedOp {
    pub id: OpId,
    /// Ops that must succeed before this one starts.
    pub deps: Vec<OpId>,
    pub kind: OpKind,
    /// How SYNCED changes once this op has succeeded.
    pub synced: SyncedChange,
}

/// Which side an operation changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Side {
    Local,
    Remote,
}

/// What an operation does. `Local*` ops change the local filesystem and the LOCAL tree; `Remote*` ops
/// are commits to the server (compare-and-swap on `base_revision`, the REMOTE revision the plan saw).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpKind {
    /// Create `node` locally. A file arrives as a placeholder (metadata only) unless `fetch_content`.
    LocalCreate { node: Node, fetch_content: bool },
    /// Give a local node these attributes. If the content hash changes and `fetch_content` is false,
    /// the file stays a placeholder of the new content.
    LocalUpdate {
        id: NodeId,
        attrs: Attrs,
        fetch_content: bool,
    },
    /// Move and/or rename a local node. `name` can be a temporary `.bvfs-park-<id>` name that breaks a
    /// cycle among the plan's moves (two nodes trading names); a later plan moves the node on.
    LocalMove {
        id: NodeId,
        parent: NodeId,
        name: String,
    },
    /// Delete a local node; a directory is empty by then (its children's deletes come first).
    LocalDelete { id: NodeId },
    /// An edit/edit conflict: the local bytes of `original` become the new node `copy` (a conflicted
    /// copy, uploaded by a later op), then `original` takes the remote version, `original_attrs`.
    LocalConflictCopy {
        original: NodeId,
        /// Boxed: conflicts are rare, and every op pays for the largest variant's size.
        copy: Box<Node>,
        original_attrs: Attrs,
        fetch_content: bool,
    },
    /// The local node `old` becomes `new` in place (its children follow), then sits at `parent`/`name`;
    /// with `attrs`, it also takes these attributes (same content, so nothing is fetched). Used when a
    /// locally changed node survives a remote delete (it comes back as a new node), and when a local
    /// create merges into an equal remote create.
    LocalReidentify {
        old: NodeId,
        new: NodeId,
        parent: NodeId,
        name: String,
        attrs: Option<Attrs>,
    },
    /// Create `node` on the server, uploading its content first when `upload` (files).
    RemoteCreate { node: Node, upload: bool },
    /// Give a remote node these attributes, uploading the content first when `upload`.
    RemoteUpdate {
        id: NodeId,
        base_revision: u64,
        attrs: Attrs,
        upload: bool,
    },
    /// Move and/or rename a remote node (the name can be temporary, as for [`OpKind::LocalMove`]).
    RemoteMove {
        id: NodeId,
        base_revision: u64,
        parent: NodeId,
        name: String,
    },
    /// Delete a remote node; a directory is empty by then.
    RemoteDelete { id: NodeId, base_revision: u64 },
    /// REMOTE and LOCAL already agree: only SYNCED advances.
    RecordSynced,
}

impl OpKind {
    /// The node the op is about (for a conflicted copy, the original; for a re-identification, the
    /// new id; for [`OpKind::RecordSynced`], see [`SyncedChange::node`]).
    pub fn node(&self) -> Option<NodeId> {
        match self {
            OpKind::LocalCreate { node, .. } | OpKind::RemoteCreate { node, .. } => Some(node.id),
            OpKind::LocalUpdate { id, .. }
            | OpKind::LocalMove { id, .. }
            | OpKind::LocalDelete { id }
            | OpKind::RemoteUpdate { id, .. }
            | OpKind::RemoteMove { id, .. }
            | OpKind::RemoteDelete { id, .. } => Some(*id),
            OpKind::LocalConflictCopy { original, .. } => Some(*original),
            OpKind::LocalReidentify { new, .. } => Some(*new),
            OpKind::RecordSynced => None,
        }
    }

    /// The side the op changes; `None` for [`OpKind::RecordSynced`].
    pub fn side(&self) -> Option<Side> {
        match self {
            OpKind::LocalCreate { .. }
            | OpKind::LocalUpdate { .. }
            | OpKind::LocalMove { .. }
            | OpKind::LocalDelete { .. }
            | OpKind::LocalConflictCopy { .. }
            | OpKind::LocalReidentify { .. } => Some(Side::Local),
            OpKind::RemoteCreate { .. }
            | OpKind::RemoteUpdate { .. }
            | OpKind::RemoteMove { .. }
            | OpKind::RemoteDelete { .. } => Some(Side::Remote),
            OpKind::RecordSynced => None,
        }
    }

    /// Whether the op deletes a node (what the bulk-delete brake counts).
    pub fn is_delete(&self) -> bool {
        matches!(
            self,
            OpKind::LocalDelete { .. } | OpKind::RemoteDelete { .. }
        )
    }

    /// Whether the op moves file content over the network.
    pub fn transfers_content(&self) -> bool {
        match self {
            OpKind::LocalCreate { fetch_content, .. }
            | OpKind::LocalUpdate { fetch_content, .. }
            | OpKind::LocalConflictCopy { fetch_content, .. } => *fetch_content,
            OpKind::RemoteCreate { upload, .. } | OpKind::RemoteUpdate { upload, .. } => *upload,
            _ => false,
        }
    }
}

/// How SYNCED changes when an op succeeds. The executor also sets the node's SYNCED revision to its
/// REMOTE revision at that moment (for a remote op: the revision the server just assigned; for a node
/// REMOTE lacks, 0), so the `revision` inside [`SyncedChange::Put`] is only the planner's guess.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncedChange {
    Unchanged,
    /// Insert the node, or bring SYNCED's node with this id to exactly this state.
    Put(Node),
    Place {
        id: NodeId,
        parent: NodeId,
        name: String,
    },
    SetAttrs {
        id: NodeId,
        attrs: Attrs,
    },
    Remove(NodeId),
    /// SYNCED's node `old` becomes `new` in place (its children follow), with revision 0: the node
    /// `new` is not on the server yet, so REMOTE lacking it is no delete.
    Reidentify {
        old: NodeId,
        new: NodeId,
    },
}

impl SyncedChange {
    pub fn node(&self) -> Option<NodeId> {
        match self {
            SyncedChange::Unchanged => None,
            SyncedChange::Put(node) => Some(node.id),
            SyncedChange::Place { id, .. }
            | SyncedChange::SetAttrs { id, .. }
            | SyncedChange::Remove(id)
            | SyncedChange::Reidentify { new: id, .. } => Some(*id),
        }
    }
}

/// A delete the bulk-delete brake holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldDelete {
    /// The side the node would be deleted from.
    pub side: Side,
    pub id: NodeId,
    pub parent: NodeId,
    pub name: String,
}

/// Something the plan leaves undone, for the user to see. Reports repeat in every plan until the cause
/// goes away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// A remote name this platform cannot show. A new node (and everything under it) stays remote-only;
    /// a node that already exists locally keeps its local name and place.
    InvalidName {
        id: NodeId,
        name: String,
        error: NameError,
    },
    /// A remote node whose name collides, after this platform's folding, with `kept`; it is handled
    /// like an invalid name.
    NameCollision {
        id: NodeId,
        name: String,
        kept: NodeId,
    },
    /// A remote node that would land under a node that stays remote-only.
    UnderRemoteOnly { id: NodeId },
    /// A remote move this device cannot mirror without closing a cycle through a held node.
    HeldMove { id: NodeId },
    /// REMOTE and LOCAL disagree on what kind of node this id is; it is left alone.
    KindMismatch { id: NodeId },
}

impl Report {
    pub fn node(&self) -> NodeId {
        match self {
            Report::InvalidName { id, .. }
            | Report::NameCollision { id, .. }
            | Report::UnderRemoteOnly { id }
            | Report::HeldMove { id }
            | Report::KindMismatch { id } => *id,
        }
    }
}

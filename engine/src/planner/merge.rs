//! Stage 1: gather the nodes a plan touches and merge each one three ways.
//!
//! For every changed id the planner reads the node from REMOTE, LOCAL and SYNCED and decides its
//! [`Fate`] in the converged tree: kept (with a target place and attributes), gone, or one of the
//! in-between states that later stages settle. The rules are DESIGN §5 applied per aspect:
//!
//! - existence: a delete wins over an unchanged node; an edit (content differs from SYNCED) wins over
//!   a delete; a directory deleted on one side waits for [`super::resolve`] to know whether something
//!   that stays is inside it;
//! - place: a one-sided move wins; when both sides moved, the server's order wins (REMOTE) and the
//!   local move is undone;
//! - attributes: content (hash and symlink target) merges three ways and both-sides-changed is a
//!   conflict, settled by a conflicted copy of the local version; mtime, the permission bits and the
//!   extended attributes (as a whole) merge field by field, REMOTE winning a tie.

use std::borrow::Cow;
use std::ops::Deref;

use crate::model::{Attrs, Node, NodeId, NodeIdMap, NodeKind};
use crate::tree::TreeView;

use super::{Report, Side};

/// The three trees a plan reads.
pub(super) struct Trees<'t, T> {
    pub remote: &'t T,
    pub local: &'t T,
    pub synced: &'t T,
}

/// One of the three trees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum TreeRole {
    Remote,
    Local,
    Synced,
}

impl<'t, T: TreeView> Trees<'t, T> {
    pub(super) fn get(&self, role: TreeRole) -> &'t T {
        match role {
            TreeRole::Remote => self.remote,
            TreeRole::Local => self.local,
            TreeRole::Synced => self.synced,
        }
    }
}

/// A node as one tree holds it: borrowed from an in-memory tree, or boxed when a view had to build it
/// (boxing keeps entries small: a plan over a million changes holds three of these per change).
pub(super) enum NodeRef<'t> {
    Borrowed(&'t Node),
    Owned(Box<Node>),
}

impl<'t> From<Cow<'t, Node>> for NodeRef<'t> {
    fn from(node: Cow<'t, Node>) -> NodeRef<'t> {
        match node {
            Cow::Borrowed(node) => NodeRef::Borrowed(node),
            Cow::Owned(node) => NodeRef::Owned(Box::new(node)),
        }
    }
}

impl Deref for NodeRef<'_> {
    type Target = Node;

    fn deref(&self) -> &Node {
        match self {
            NodeRef::Borrowed(node) => node,
            NodeRef::Owned(node) => node,
        }
    }
}

/// A place in a tree: parent directory and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Loc<'t> {
    pub parent: NodeId,
    /// Borrowed from the tree where it can be: most targets keep a name some tree has already.
    pub name: Cow<'t, str>,
}

impl<'t> Loc<'t> {
    /// Where `node` is.
    pub(super) fn of(node: &NodeRef<'t>) -> Loc<'t> {
        let name = match node {
            NodeRef::Borrowed(node) => Cow::Borrowed(node.name.as_str()),
            NodeRef::Owned(node) => Cow::Owned(node.name.clone()),
        };
        Loc {
            parent: node.parent,
            name,
        }
    }

    /// Whether `node` sits exactly here.
    pub(super) fn is(&self, node: &Node) -> bool {
        self.parent == node.parent && *self.name == *node.name
    }
}

/// Where a kept node ends up and what it holds.
#[derive(Debug, Clone)]
pub(super) struct Target<'t> {
    /// Its place in REMOTE after the plan.
    pub remote: Loc<'t>,
    /// Its place in LOCAL after the plan: the same as `remote`, unless this platform cannot show the
    /// remote place and the node is held where LOCAL has it.
    pub local: Loc<'t>,
    pub attrs: Attrs,
    /// The place came from LOCAL (a local create or move): such a place yields to the server's.
    pub from_local: bool,
    /// The conflicted copy that takes the local content (edit/edit conflict).
    pub copy: Option<NodeId>,
    /// A local create with the same name and content that merges into this remote create.
    pub merged_from: Option<NodeId>,
    /// REMOTE deleted the node but LOCAL keeps it: it comes back under a new id (minted once the plan's
    /// shape is settled, see [`Entries::mint_reborn`]).
    pub reborn: bool,
}

/// What becomes of a node.
#[derive(Debug, Clone)]
#[expect(
    clippy::large_enum_variant,
    reason = "most entries are kept; boxing would allocate for each"
)]
pub(super) enum Fate<'t> {
    Kept(Target<'t>),
    /// Deleted wherever it still exists.
    Gone,
    /// Deleted by one side and unchanged on the other; gone unless something that stays ends up inside.
    TentativelyGone {
        deleted_by: Side,
    },
    /// Deleted remotely but kept locally: the local node comes back as this new node.
    RebornAs(NodeId),
    /// A local create that becomes the equal remote create (whose target names it in `merged_from`).
    MergedInto,
    /// A remote node this device cannot show (see [`Entry::report`]).
    RemoteOnly,
    /// Left alone (see [`Entry::report`]).
    Skipped,
}

/// How a node the planner mints comes about.
#[derive(Debug, Clone, Copy)]
pub(super) enum Derived {
    /// The local node `from` survives a remote delete under this new id.
    Reborn { from: NodeId },
    /// The conflicted copy of `of`'s local version.
    ConflictCopy { of: NodeId },
}

/// One node the plan touches.
pub(super) struct Entry<'t> {
    pub id: NodeId,
    pub kind: NodeKind,
    pub remote: Option<NodeRef<'t>>,
    pub local: Option<NodeRef<'t>>,
    pub synced: Option<NodeRef<'t>>,
    pub fate: Fate<'t>,
    /// Set for nodes that exist in none of the trees yet.
    pub derived: Option<Derived>,
    /// Why the node is (partly) held, for [`super::Plan::reported`].
    /// Boxed: reports are rare, and every entry pays for the field's size.
    pub report: Option<Box<Report>>,
    /// For a directory one side deleted while the other left it unchanged: that side. Whether it stays
    /// depends on what ends up inside, see [`super::resolve`].
    pub deleted_by: Option<Side>,
}

impl<'t> Entry<'t> {
    pub(super) fn target(&self) -> Option<&Target<'t>> {
        match &self.fate {
            Fate::Kept(target) => Some(target),
            _ => None,
        }
    }

    pub(super) fn target_mut(&mut self) -> Option<&mut Target<'t>> {
        match &mut self.fate {
            Fate::Kept(target) => Some(target),
            _ => None,
        }
    }

    /// The node as `role`'s tree holds it now.
    pub(super) fn in_tree(&self, role: TreeRole) -> Option<&Node> {
        match role {
            TreeRole::Remote => self.remote.as_deref(),
            TreeRole::Local => self.local.as_deref(),
            TreeRole::Synced => self.synced.as_deref(),
        }
    }
}

/// The entries of a plan, with an index by id: the changed ids in id order, then what they drag in,
/// then the nodes the planner mints. The order is a function of the input, so plans are deterministic.
pub(super) struct Entries<'t> {
    pub list: Vec<Entry<'t>>,
    index: NodeIdMap<usize>,
    /// Local nodes that a plan op re-identifies (re-created or merged), old id → new id.
    renamed: NodeIdMap<NodeId>,
    /// The same, new id → old id.
    renamed_from: NodeIdMap<NodeId>,
}

impl<'t> Entries<'t> {
    /// Reads the changed ids from the trees, adds what deleting or creating a directory drags in (its
    /// children on the sides that have it), and merges each node.
    pub(super) fn collect<T: TreeView>(
        trees: &Trees<'t, T>,
        changed: impl IntoIterator<Item = NodeId>,
    ) -> Entries<'t> {
        let mut pending: Vec<NodeId> = changed.into_iter().filter(|id| !id.is_root()).collect();
        pending.sort_unstable();
        pending.dedup();
        let mut entries = Entries {
            list: Vec::with_capacity(pending.len()),
            index: NodeIdMap::default(),
            renamed: NodeIdMap::default(),
            renamed_from: NodeIdMap::default(),
        };
        entries.index.reserve(pending.len());
        let mut next = 0;
        while next < pending.len() {
            let id = pending[next];
            next += 1;
            if entries.index.contains_key(&id) {
                continue;
            }
            let remote = trees.remote.get(id).map(NodeRef::from);
            let local = trees.local.get(id).map(NodeRef::from);
            let synced = trees.synced.get(id).map(NodeRef::from);
            let present = [&remote, &local, &synced].map(Option::is_some);
            if present == [false; 3] || unchanged(&remote, &local, &synced) {
                continue;
            }
            // A directory that exists on some sides only: what is under it must be decided too.
            if present.contains(&false) {
                for (role, node) in [
                    (TreeRole::Remote, &remote),
                    (TreeRole::Local, &local),
                    (TreeRole::Synced, &synced),
                ] {
                    if node.as_ref().is_some_and(|node| node.is_dir()) {
                        pending.extend(trees.get(role).children(id));
                    }
                }
            }
            entries.index.insert(id, entries.list.len());
            entries.list.push(Entry {
                id,
                kind: NodeKind::File,
                remote,
                local,
                synced,
                fate: Fate::Gone,
                derived: None,
                report: None,
                deleted_by: None,
            });
        }
        for position in 0..entries.list.len() {
            entries.merge(trees, position);
        }
        entries
    }

    pub(super) fn len(&self) -> usize {
        self.list.len()
    }

    pub(super) fn position(&self, id: NodeId) -> Option<usize> {
        self.index.get(&id).copied()
    }

    pub(super) fn get(&self, id: NodeId) -> Option<&Entry<'t>> {
        self.index.get(&id).map(|&position| &self.list[position])
    }

    /// Records that the local node `old` becomes `new` (the plan re-identifies it).
    pub(super) fn rename(&mut self, old: NodeId, new: NodeId) {
        self.renamed.insert(old, new);
        self.renamed_from.insert(new, old);
    }

    /// The id a local node has once the plan's re-identifications ran.
    pub(super) fn local_id_after(&self, id: NodeId) -> NodeId {
        self.renamed.get(&id).copied().unwrap_or(id)
    }

    /// The id LOCAL has now for a node the plan re-identifies into `id`.
    pub(super) fn local_id_now(&self, id: NodeId) -> NodeId {
        self.renamed_from.get(&id).copied().unwrap_or(id)
    }

    /// Where LOCAL has this node, with its parent's id after re-identifications.
    pub(super) fn local_place(&self, entry: &Entry<'t>) -> Option<Loc<'t>> {
        let local = entry.local.as_ref()?;
        let mut place = Loc::of(local);
        place.parent = self.local_id_after(place.parent);
        Some(place)
    }

    /// Whether LOCAL already has the node at `loc` (re-identifications aside).
    pub(super) fn is_local_at(&self, entry: &Entry<'_>, loc: &Loc<'_>) -> bool {
        entry.local.as_deref().is_some_and(|local| {
            *local.name == *loc.name && self.local_id_after(local.parent) == loc.parent
        })
    }

    /// Points targets under re-identified local nodes at their new ids.
    pub(super) fn remap_parents(&mut self) {
        if self.renamed.is_empty() {
            return;
        }
        let renamed = &self.renamed;
        for entry in &mut self.list {
            if let Fate::Kept(target) = &mut entry.fate {
                for loc in [&mut target.remote, &mut target.local] {
                    if let Some(&new) = renamed.get(&loc.parent) {
                        loc.parent = new;
                    }
                }
            }
        }
    }

    /// Adds a node the planner mints (a conflicted copy or a re-created node).
    pub(super) fn push_derived(
        &mut self,
        id: NodeId,
        kind: NodeKind,
        derived: Derived,
        target: Target<'t>,
    ) {
        debug_assert!(!self.index.contains_key(&id), "minted id {id:?} twice");
        self.index.insert(id, self.list.len());
        self.list.push(Entry {
            id,
            kind,
            remote: None,
            local: None,
            synced: None,
            fate: Fate::Kept(target),
            derived: Some(derived),
            report: None,
            deleted_by: None,
        });
    }

    /// Gives every node that comes back after a remote delete its new id: a new entry takes over its
    /// target, and targets under it follow.
    pub(super) fn mint_reborn<T: TreeView>(&mut self, trees: &Trees<'t, T>) {
        for position in 0..self.list.len() {
            let entry = &self.list[position];
            let Some(target) = entry.target().filter(|target| target.reborn) else {
                continue;
            };
            let new_id = self.mint(trees, "re-created", &[&entry.id.to_bytes()]);
            let (old_id, kind) = (entry.id, entry.kind);
            let target = Target {
                reborn: false,
                ..target.clone()
            };
            self.list[position].fate = Fate::RebornAs(new_id);
            self.rename(old_id, new_id);
            self.push_derived(new_id, kind, Derived::Reborn { from: old_id }, target);
        }
        self.remap_parents();
    }

    /// A new id, derived from `parts` (so re-planning mints the same one), that no tree and no entry
    /// has yet.
    fn mint<T: TreeView>(&self, trees: &Trees<'t, T>, purpose: &str, parts: &[&[u8]]) -> NodeId {
        (0u64..)
            .map(|attempt| {
                let attempt = attempt.to_le_bytes();
                let parts: Vec<&[u8]> = parts.iter().copied().chain([&attempt[..]]).collect();
                NodeId::derive(purpose, &parts)
            })
            .find(|&id| {
                !self.index.contains_key(&id)
                    && !trees.remote.contains(id)
                    && !trees.local.contains(id)
                    && !trees.synced.contains(id)
            })
            .expect("some attempt is free")
    }

    /// Stage 1 for one node.
    fn merge<T: TreeView>(&mut self, trees: &Trees<'t, T>, position: usize) {
        let entry = &self.list[position];
        let (id, remote, local, synced) = (
            entry.id,
            entry.remote.as_deref(),
            entry.local.as_deref(),
            entry.synced.as_deref(),
        );
        let kind = [remote, local, synced]
            .into_iter()
            .flatten()
            .next()
            .expect("present somewhere")
            .kind;
        let same_kind_base = |node: &Node| synced.filter(|base| base.kind == node.kind);
        let decision = match (remote, local) {
            (Some(remote), Some(local)) if remote.kind != local.kind => Decision::KindMismatch,
            (Some(remote), Some(local)) => {
                let base = same_kind_base(remote);
                let from_local = place_from_local(base, remote, local);
                let side = if from_local {
                    &entry.local
                } else {
                    &entry.remote
                };
                let place = Loc::of(side.as_ref().expect("both sides have it"));
                let merged = merge_attrs(base.map(|base| &base.attrs), &remote.attrs, &local.attrs);
                let conflict = merged.is_none();
                let target = Target {
                    remote: place.clone(),
                    local: place,
                    attrs: merged.unwrap_or_else(|| remote.attrs.clone()),
                    from_local,
                    copy: None,
                    merged_from: None,
                    reborn: false,
                };
                if conflict {
                    Decision::EditConflict {
                        target,
                        local_attrs: local.attrs.clone(),
                    }
                } else {
                    Decision::Fate(Fate::Kept(target))
                }
            }
            (Some(remote), None) => Decision::Fate(match same_kind_base(remote) {
                Some(base) if remote.attrs.same_content(&base.attrs) => {
                    if remote.is_dir() {
                        Fate::TentativelyGone {
                            deleted_by: Side::Local,
                        }
                    } else {
                        Fate::Gone
                    }
                }
                // A remote create, or a remote edit that beats the local delete.
                _ => Fate::Kept(kept_as_is(entry.remote.as_ref().expect("present"), false)),
            }),
            (None, Some(local)) => match same_kind_base(local) {
                // Revision 0: SYNCED knows it, but it never reached the server (a re-created node).
                Some(base) if base.revision == 0 => Decision::Fate(Fate::Kept(kept_as_is(
                    entry.local.as_ref().expect("present"),
                    true,
                ))),
                Some(base) if local.attrs.same_content(&base.attrs) => {
                    Decision::Fate(if local.is_dir() {
                        Fate::TentativelyGone {
                            deleted_by: Side::Remote,
                        }
                    } else {
                        Fate::Gone
                    })
                }
                None if synced.is_none() => Decision::Fate(Fate::Kept(kept_as_is(
                    entry.local.as_ref().expect("present"),
                    true,
                ))),
                // A local edit that beats the remote delete: it comes back as a new node.
                _ => Decision::Reborn,
            },
            (None, None) => Decision::Fate(Fate::Gone),
        };
        self.list[position].kind = kind;
        match decision {
            Decision::Fate(fate) => {
                if let Fate::TentativelyGone { deleted_by } = fate {
                    self.list[position].deleted_by = Some(deleted_by);
                }
                self.list[position].fate = fate;
            }
            Decision::KindMismatch => {
                let entry = &mut self.list[position];
                entry.fate = Fate::Skipped;
                entry.report = Some(Box::new(Report::KindMismatch { id }));
            }
            Decision::Reborn => {
                let local = self.list[position].local.as_ref().expect("a local edit");
                let target = Target {
                    reborn: true,
                    ..kept_as_is(local, true)
                };
                self.list[position].fate = Fate::Kept(target);
            }
            Decision::EditConflict {
                target,
                local_attrs,
            } => {
                self.list[position].fate = Fate::Kept(target);
                self.fork_conflicted_copy(trees, position, local_attrs);
            }
        }
    }

    /// Edit/edit: the local version becomes a new node next to the original, which takes the remote
    /// version. The copy's place is settled with the other names in [`super::resolve`].
    fn fork_conflicted_copy<T: TreeView>(
        &mut self,
        trees: &Trees<'t, T>,
        position: usize,
        local_attrs: Attrs,
    ) {
        let entry = &self.list[position];
        // Named by the versions in conflict, not by revisions, so any history to this state mints it.
        let versions = [entry.synced.as_deref(), entry.remote.as_deref()]
            .map(|node| node.map_or_else(Vec::new, |node| content_key(&node.attrs)));
        let local = content_key(&local_attrs);
        let copy_id = self.mint(
            trees,
            "conflicted copy",
            &[&entry.id.to_bytes(), &versions[0], &versions[1], &local],
        );
        let (of, kind) = (entry.id, entry.kind);
        let placeholder = Loc {
            parent: NodeId::ROOT,
            name: Cow::Borrowed(""),
        };
        let copy = Target {
            remote: placeholder.clone(),
            local: placeholder,
            attrs: local_attrs,
            from_local: true,
            copy: None,
            merged_from: None,
            reborn: false,
        };
        self.push_derived(copy_id, kind, Derived::ConflictCopy { of }, copy);
        if let Some(target) = self.list[position].target_mut() {
            target.copy = Some(copy_id);
        }
    }
}

/// Stage 1's verdict on one node, before it is written back.
enum Decision<'t> {
    Fate(Fate<'t>),
    KindMismatch,
    Reborn,
    EditConflict {
        target: Target<'t>,
        local_attrs: Attrs,
    },
}

/// The bytes that identify a version's content.
fn content_key(attrs: &Attrs) -> Vec<u8> {
    let mut key = attrs.content.map_or_else(Vec::new, |hash| hash.0.to_vec());
    key.extend(attrs.symlink_target.as_deref().unwrap_or("").as_bytes());
    key
}

fn kept_as_is<'t>(node: &NodeRef<'t>, from_local: bool) -> Target<'t> {
    Target {
        remote: Loc::of(node),
        local: Loc::of(node),
        attrs: node.attrs.clone(),
        from_local,
        copy: None,
        merged_from: None,
        reborn: false,
    }
}

/// Whether the three states agree on everything the planner compares (revisions aside).
fn unchanged(
    remote: &Option<NodeRef<'_>>,
    local: &Option<NodeRef<'_>>,
    synced: &Option<NodeRef<'_>>,
) -> bool {
    match (remote.as_deref(), local.as_deref(), synced.as_deref()) {
        (Some(remote), Some(local), Some(synced)) => {
            same_state(remote, local) && same_state(remote, synced)
        }
        _ => false,
    }
}

/// Equal place, kind and attributes.
pub(super) fn same_state(a: &Node, b: &Node) -> bool {
    a.parent == b.parent && a.name == b.name && a.kind == b.kind && a.attrs == b.attrs
}

/// Whether a node both sides have takes LOCAL's place (else REMOTE's).
fn place_from_local(base: Option<&Node>, remote: &Node, local: &Node) -> bool {
    let same = |a: &Node, b: &Node| a.parent == b.parent && a.name == b.name;
    // Both moved it: the move the server committed first wins; the local one is undone.
    !(same(remote, local) || base.is_some_and(|base| same(base, local)))
        && base.is_some_and(|base| same(base, remote))
}

/// The merged attributes, or `None` when both sides changed the content differently.
fn merge_attrs(base: Option<&Attrs>, remote: &Attrs, local: &Attrs) -> Option<Attrs> {
    let changed = |side: &Attrs| base.is_none_or(|base| !side.same_content(base));
    let mut merged = if remote.same_content(local) {
        Attrs {
            size: three_way(base.map(|base| base.size), remote.size, local.size),
            mtime_ns: three_way(
                base.map(|base| base.mtime_ns),
                remote.mtime_ns,
                local.mtime_ns,
            ),
            ..remote.clone()
        }
    } else if !changed(local) {
        remote.clone()
    } else if !changed(remote) {
        // The content, its size and its mtime travel together.
        local.clone()
    } else {
        return None;
    };
    merged.mode = three_way(base.map(|base| base.mode), remote.mode, local.mode);
    merged.xattrs = three_way(base.map(|base| &base.xattrs), &remote.xattrs, &local.xattrs).clone();
    Some(merged)
}

/// One field, three ways: a one-sided change wins; when both changed it differently, REMOTE wins.
fn three_way<V: PartialEq>(base: Option<V>, remote: V, local: V) -> V {
    match base {
        Some(base) if remote == base => local,
        _ => remote,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ContentHash;

    fn attrs(content: u8, mtime_ns: i64, executable: bool) -> Attrs {
        Attrs {
            size: 1,
            mtime_ns,
            mode: if executable { 0o755 } else { 0o644 },
            content: Some(ContentHash::of(&[content])),
            ..Attrs::default()
        }
    }

    #[test]
    fn one_sided_content_changes_win_and_carry_their_mtime() {
        let base = attrs(1, 10, false);
        assert_eq!(
            merge_attrs(Some(&base), &attrs(2, 20, false), &base),
            Some(attrs(2, 20, false))
        );
        assert_eq!(
            merge_attrs(Some(&base), &base, &attrs(3, 30, false)),
            Some(attrs(3, 30, false))
        );
    }

    #[test]
    fn metadata_merges_field_by_field() {
        let base = attrs(1, 10, false);
        let remote = attrs(1, 20, false);
        let local = attrs(1, 10, true);
        assert_eq!(
            merge_attrs(Some(&base), &remote, &local),
            Some(attrs(1, 20, true))
        );
        // Both changed the mtime: the server's wins, the executable bit still merges.
        assert_eq!(
            merge_attrs(Some(&base), &remote, &attrs(1, 30, true)),
            Some(attrs(1, 20, true))
        );
    }

    #[test]
    fn different_edits_on_both_sides_conflict_and_equal_ones_do_not() {
        let base = attrs(1, 10, false);
        assert_eq!(
            merge_attrs(Some(&base), &attrs(2, 20, false), &attrs(3, 30, false)),
            None
        );
        assert_eq!(
            merge_attrs(Some(&base), &attrs(2, 20, false), &attrs(2, 30, false)),
            Some(attrs(2, 20, false))
        );
        assert_eq!(
            merge_attrs(None, &attrs(2, 20, false), &attrs(3, 20, false)),
            None
        );
    }
}

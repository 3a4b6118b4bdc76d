//! Stage 2: make the merged tree one that both sides can hold.
//!
//! The per-node merge of [`super::merge`] can produce a tree that is not well formed or not
//! representable here. This stage settles, in order:
//!
//! 1. directories deleted on one side: kept (re-created, or re-downloaded) when something that stays
//!    ends up inside, deleted otherwise — a directory is never deleted with new content in it;
//! 2. remote names this platform cannot show: the node stays remote-only, or where LOCAL has it;
//! 3. cycles: a local move that, with the remote moves, would put a directory inside itself is undone;
//! 4. names taken twice: a local create or move that lands on a name the server's tree keeps becomes a
//!    conflicted copy (or merges into an equal remote create); remote names that fold together here
//!    keep one and hold the others;
//! 5. conflicted copies of edit/edit conflicts get their names last, next to the original.
//!
//! Steps 1 to 4 can unsettle each other (an undone move can leave a deleted directory empty, a held
//! node stays where it was and may then be in the way), so they repeat until nothing changes: step 1
//! decides afresh each time, and steps 2 to 4 only ever hold, undo or merge something more, so this
//! ends; in the common case the first pass is the last. Re-created nodes get their new ids only then.
//!
//! Only nodes that arrive somewhere (created, moved or renamed on one side) take part in steps 2 to 4,
//! so a plan of a million edits does not walk a million nodes four times.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::model::{NamePolicy, NodeId, NodeIdHasher, NodeIdMap, NodeIdSet};
use crate::tree::TreeView;

use super::Report;
use super::Side;
use super::conflict_name::ConflictNamer;
use super::context::PlanContext;
use super::merge::{Derived, Entries, Fate, Loc, Target, TreeRole, Trees};

/// Runs stage 2 and returns what the plan reports.
pub(super) fn resolve<'t, T: TreeView>(
    trees: &Trees<'t, T>,
    entries: &mut Entries<'t>,
    ctx: &PlanContext<'_>,
) -> Vec<Report> {
    let namer = ConflictNamer::new(ctx.device, ctx.conflict_time, ctx.names);
    let deleted: Vec<usize> = (0..entries.len())
        .filter(|&position| entries.list[position].deleted_by.is_some())
        .collect();
    let names = loop {
        settle_deleted_directories(trees, entries, &deleted);
        let movers = movers(entries);
        let mut again = hold_unplaceable(entries, &movers, ctx.names);
        again |= undo_cycles(trees, entries, &movers, TreeRole::Remote);
        again |= undo_cycles(trees, entries, &movers, TreeRole::Local);
        let (names, changed) = settle_names(trees, entries, &movers, ctx.names, &namer);
        if !(again || changed) {
            break names;
        }
    };
    name_conflicted_copies(trees, entries, ctx.names, &namer, names);
    entries.mint_reborn(trees);
    for entry in &mut entries.list {
        if matches!(entry.fate, Fate::TentativelyGone { .. }) {
            entry.fate = Fate::Gone;
        }
    }
    entries
        .list
        .iter()
        .filter_map(|entry| entry.report.as_deref().cloned())
        .collect()
}

/// The positions of the kept nodes that arrive somewhere (created, moved or renamed on one side at
/// least): only they can be held, close a cycle or take a name twice.
fn movers(entries: &Entries<'_>) -> Vec<usize> {
    (0..entries.len())
        .filter(|&position| {
            let entry = &entries.list[position];
            arrives(entries, entry, TreeRole::Remote).is_some()
                || arrives(entries, entry, TreeRole::Local).is_some()
        })
        .collect()
}

/// The place `target` has in `role`'s tree after the plan (SYNCED follows REMOTE).
fn place<'a, 't>(target: &'a Target<'t>, role: TreeRole) -> &'a Loc<'t> {
    match role {
        TreeRole::Local => &target.local,
        TreeRole::Remote | TreeRole::Synced => &target.remote,
    }
}

// --- 1. directories deleted on one side --------------------------------------------------------------

/// Whether a child, as far as it is decided, stays inside a tentatively deleted directory.
enum ChildVerdict {
    Stays,
    Leaves,
    /// A tentatively deleted directory itself: it stays if something stays inside it.
    StaysIfKept,
}

/// Keeps every directory deleted on one side that something staying ends up in (deleted remotely, it
/// comes back as a new node; deleted locally, it is downloaded back), and lets go of the others.
/// Decided afresh on every pass, from the targets as they stand.
fn settle_deleted_directories<T: TreeView>(
    trees: &Trees<'_, T>,
    entries: &mut Entries<'_>,
    deleted: &[usize],
) {
    let mut memo = NodeIdMap::default();
    let verdicts: Vec<bool> = deleted
        .iter()
        .map(|&position| {
            holds_something_that_stays(trees, entries, entries.list[position].id, &mut memo)
        })
        .collect();
    for (&position, stays) in deleted.iter().zip(verdicts) {
        let entry = &mut entries.list[position];
        let deleted_by = entry.deleted_by.expect("deleted directories are marked");
        let kept = !matches!(entry.fate, Fate::TentativelyGone { .. });
        if stays == kept {
            continue;
        }
        entry.report = None;
        entry.fate = if !stays {
            Fate::TentativelyGone { deleted_by }
        } else {
            let (node, from_local) = match deleted_by {
                Side::Local => (
                    entry
                        .remote
                        .as_ref()
                        .expect("deleted locally, so REMOTE has it"),
                    false,
                ),
                Side::Remote => (
                    entry
                        .local
                        .as_ref()
                        .expect("deleted remotely, so LOCAL has it"),
                    true,
                ),
            };
            Fate::Kept(Target {
                remote: Loc::of(node),
                local: Loc::of(node),
                attrs: node.attrs.clone(),
                from_local,
                copy: None,
                merged_from: None,
                reborn: deleted_by == Side::Remote,
            })
        };
    }
}

/// Whether anything that stays ends up inside the directory `dir` that one side deleted, looking through
/// nested deleted directories (iteratively: deleted trees can be deep).
fn holds_something_that_stays<T: TreeView>(
    trees: &Trees<'_, T>,
    entries: &Entries<'_>,
    dir: NodeId,
    memo: &mut NodeIdMap<bool>,
) -> bool {
    struct Frame {
        dir: NodeId,
        children: Vec<NodeId>,
        next: usize,
        found: bool,
    }
    let frame = |dir: NodeId| {
        let deleted_by = entries
            .get(dir)
            .and_then(|entry| entry.deleted_by)
            .expect("a deleted directory");
        let survivor = match deleted_by {
            Side::Local => trees.remote,
            Side::Remote => trees.local,
        };
        Frame {
            dir,
            children: survivor.children(dir).collect(),
            next: 0,
            found: false,
        }
    };
    if let Some(&known) = memo.get(&dir) {
        return known;
    }
    let mut stack = vec![frame(dir)];
    loop {
        let top = stack
            .last_mut()
            .expect("the stack ends with its first frame");
        if top.found || top.next == top.children.len() {
            let done = stack.pop().expect("non-empty");
            memo.insert(done.dir, done.found);
            match stack.last_mut() {
                Some(parent) => parent.found |= done.found,
                None => return done.found,
            }
            continue;
        }
        let child = top.children[top.next];
        top.next += 1;
        match child_verdict(entries, top.dir, child) {
            ChildVerdict::Stays => top.found = true,
            ChildVerdict::Leaves => {}
            ChildVerdict::StaysIfKept => match memo.get(&child) {
                Some(&known) => top.found |= known,
                None => stack.push(frame(child)),
            },
        }
    }
}

fn child_verdict(entries: &Entries<'_>, dir: NodeId, child: NodeId) -> ChildVerdict {
    let Some(entry) = entries.get(child) else {
        // Unchanged under a deleted directory cannot happen with a complete change set; keep it safe.
        return ChildVerdict::Stays;
    };
    let survivor = match entries.get(dir).and_then(|dir| dir.deleted_by) {
        Some(Side::Local) => TreeRole::Remote,
        Some(Side::Remote) => TreeRole::Local,
        None => unreachable!("only deleted directories are searched"),
    };
    if entry.deleted_by.is_some() {
        return ChildVerdict::StaysIfKept;
    }
    match &entry.fate {
        Fate::Kept(target) if place(target, survivor).parent == dir => ChildVerdict::Stays,
        Fate::RemoteOnly if survivor == TreeRole::Remote => ChildVerdict::Stays,
        Fate::Skipped => ChildVerdict::Stays,
        Fate::Kept(_)
        | Fate::RebornAs(_)
        | Fate::TentativelyGone { .. }
        | Fate::RemoteOnly
        | Fate::Gone
        | Fate::MergedInto => ChildVerdict::Leaves,
    }
}

// --- 2. names this platform cannot show --------------------------------------------------------------

/// Holds remote nodes whose local place is impossible: an invalid name here, or a parent that stays
/// remote-only. Returns whether it held anything.
fn hold_unplaceable(entries: &mut Entries<'_>, movers: &[usize], policy: NamePolicy) -> bool {
    let mut held = false;
    for &position in movers {
        let entry = &entries.list[position];
        let Some(target) = entry.target() else {
            continue;
        };
        let moves_in = match entry.local {
            None => target.merged_from.is_none(),
            Some(_) => !entries.is_local_at(entry, &target.local),
        };
        if target.from_local || !moves_in {
            continue;
        }
        let report = if let Err(error) = policy.check(&target.local.name) {
            Report::InvalidName {
                id: entry.id,
                name: target.local.name.to_string(),
                error,
            }
        } else if entries
            .get(target.local.parent)
            .is_some_and(|parent| matches!(parent.fate, Fate::RemoteOnly | Fate::Skipped))
        {
            Report::UnderRemoteOnly { id: entry.id }
        } else {
            continue;
        };
        hold_locally(entries, position, report);
        held = true;
    }
    held
}

/// The remote state of this node is not mirrored locally: a new node stays remote-only, an existing one
/// stays where LOCAL has it.
fn hold_locally(entries: &mut Entries<'_>, position: usize, report: Report) {
    let here = entries.local_place(&entries.list[position]);
    let entry = &mut entries.list[position];
    match here {
        None => entry.fate = Fate::RemoteOnly,
        Some(here) => entry.target_mut().expect("only kept nodes are held").local = here,
    }
    entry.report = Some(Box::new(report));
}

// --- 3. cycles ----------------------------------------------------------------------------------------

/// Where the walk up the target tree ended.
enum WalkEnd {
    Root,
    /// Back at the start: the path is a cycle.
    Cycle,
    /// In a cycle that does not include the start, or at a node with no place.
    Elsewhere,
}

/// The parent `entry` has in `role`'s tree now (for LOCAL, with re-identified parents' new ids).
fn current_parent(
    entries: &Entries<'_>,
    entry: &super::merge::Entry<'_>,
    role: TreeRole,
) -> Option<NodeId> {
    let parent = entry.in_tree(role)?.parent;
    Some(if role == TreeRole::Local {
        entries.local_id_after(parent)
    } else {
        parent
    })
}

/// The parent `id` has in `role`'s tree after the plan.
fn target_parent<T: TreeView>(
    trees: &Trees<'_, T>,
    entries: &Entries<'_>,
    role: TreeRole,
    id: NodeId,
) -> Option<NodeId> {
    let Some(entry) = entries.get(id) else {
        // Unchanged: the same parent in every tree.
        return trees.get(role).get(id).map(|node| node.parent);
    };
    match &entry.fate {
        Fate::Kept(target) => Some(place(target, role).parent),
        Fate::RebornAs(new) => target_parent(trees, entries, role, *new),
        Fate::RemoteOnly | Fate::Skipped => current_parent(entries, entry, role),
        Fate::TentativelyGone { .. } => entry
            .remote
            .as_deref()
            .or(entry.local.as_deref())
            .map(|node| node.parent),
        Fate::Gone | Fate::MergedInto => None,
    }
}

/// Undoes local moves that close a cycle in `role`'s target tree. Returns whether it changed anything.
fn undo_cycles<T: TreeView>(
    trees: &Trees<'_, T>,
    entries: &mut Entries<'_>,
    movers: &[usize],
    role: TreeRole,
) -> bool {
    let mut reaches_root = NodeIdSet::default();
    let mut changed = false;
    let mut path = Vec::new();
    for &position in movers {
        let entry = &entries.list[position];
        let (Some(target), Some(current), None) = (
            entry.target(),
            current_parent(entries, entry, role),
            entry.derived,
        ) else {
            continue;
        };
        let parent = place(target, role).parent;
        if parent == current {
            continue;
        }
        path.clear();
        path.push(entry.id);
        let mut cursor = parent;
        let end = loop {
            if cursor == entry.id {
                break WalkEnd::Cycle;
            }
            if cursor.is_root() || reaches_root.contains(&cursor) {
                break WalkEnd::Root;
            }
            // Ancestor chains are short; a long one is a cycle elsewhere, found from its own mover.
            if path.len() > 64 && path.contains(&cursor) {
                break WalkEnd::Elsewhere;
            }
            path.push(cursor);
            match target_parent(trees, entries, role, cursor) {
                Some(next) => cursor = next,
                None => break WalkEnd::Elsewhere,
            }
        };
        match end {
            WalkEnd::Root => reaches_root.extend(path.iter().copied()),
            WalkEnd::Elsewhere => {}
            WalkEnd::Cycle => {
                if undo_cycle(entries, &path, role) {
                    changed = true;
                    reaches_root.clear();
                }
            }
        }
    }
    changed
}

/// Breaks one cycle by undoing one local move to another directory in it (the node goes back where
/// REMOTE has it): the one of the lowest id, so that a plan interrupted half-way and planned again picks the same one (the other
/// local moves of the cycle can only have become agreed since). A cycle in LOCAL's target made only of
/// remote moves runs through a held node; then one of those remote moves is held too.
fn undo_cycle(entries: &mut Entries<'_>, cycle: &[NodeId], role: TreeRole) -> bool {
    let lowest = |qualifies: &dyn Fn(&super::merge::Entry<'_>) -> bool| {
        cycle
            .iter()
            .filter_map(|&id| entries.position(id))
            .filter(|&position| qualifies(&entries.list[position]))
            .min_by_key(|&position| entries.list[position].id)
    };
    // Only a move to another directory can close a cycle; a rename is no part of it.
    let local_move =
        |entry: &super::merge::Entry<'_>| match (entry.remote.as_deref(), entry.target()) {
            (Some(remote), Some(target)) => {
                entry.derived.is_none()
                    && target.from_local
                    && target.remote.parent != remote.parent
            }
            _ => false,
        };
    if let Some(position) = lowest(&local_move) {
        let entry = &mut entries.list[position];
        let remote = Loc::of(
            entry
                .remote
                .as_ref()
                .expect("a local move of a remote node"),
        );
        let target = entry.target_mut().expect("kept");
        target.remote = remote.clone();
        target.local = remote;
        target.from_local = false;
        return true;
    }
    debug_assert_eq!(
        role,
        TreeRole::Local,
        "a cycle in REMOTE's target without a local move: {cycle:?}"
    );
    let held_move = |entry: &super::merge::Entry<'_>| {
        let here = entries.local_place(entry);
        matches!((here, entry.target()), (Some(here), Some(target)) if here.parent != target.local.parent)
    };
    match lowest(&held_move) {
        Some(position) => {
            let id = entries.list[position].id;
            hold_locally(entries, position, Report::HeldMove { id });
            true
        }
        None => {
            debug_assert!(false, "an unbreakable cycle in LOCAL's target: {cycle:?}");
            false
        }
    }
}

// --- 4. names taken twice -----------------------------------------------------------------------------

type PairHasher = BuildHasherDefault<NodeIdHasher>;

/// Nodes that arrive at a name (in one tree), keyed by parent and a hash of the (folded) name; the
/// buckets chain through entry positions, so the index stores no strings.
struct Arrivals {
    heads: HashMap<(NodeId, u64), u32, PairHasher>,
    next: Vec<u32>,
}

const END: u32 = u32::MAX;

impl Arrivals {
    fn new(len: usize) -> Arrivals {
        Arrivals {
            heads: HashMap::default(),
            next: vec![END; len],
        }
    }

    fn insert(&mut self, parent: NodeId, name_hash: u64, position: usize) {
        let head = self.heads.entry((parent, name_hash)).or_insert(END);
        self.next[position] = *head;
        *head = position as u32;
    }

    /// Positions that may arrive at this parent and name hash (compare the names to be sure).
    fn at(&self, parent: NodeId, name_hash: u64) -> impl Iterator<Item = usize> + '_ {
        let mut cursor = self.heads.get(&(parent, name_hash)).copied().unwrap_or(END);
        std::iter::from_fn(move || {
            (cursor != END).then(|| {
                let position = cursor as usize;
                cursor = self.next[position];
                position
            })
        })
    }
}

fn name_hash(name: &str) -> u64 {
    let mut hasher = NodeIdHasher::default();
    hasher.write(name.as_bytes());
    hasher.finish()
}

/// What the name pass knows about taken names, kept for naming conflicted copies afterwards.
struct NameSpace {
    remote: Arrivals,
    local: Arrivals,
    /// Names handed out in this pass, by parent and folded name.
    assigned: HashMap<NodeId, Vec<String>, PairHasher>,
}

/// Where `entry` arrives in `role`'s tree, unless it is there already (or is a conflicted copy still
/// without a name).
fn arrives<'e, 't>(
    entries: &Entries<'_>,
    entry: &'e super::merge::Entry<'t>,
    role: TreeRole,
) -> Option<&'e Loc<'t>> {
    let target = entry.target()?;
    let loc = place(target, role);
    let there = match role {
        TreeRole::Local => entries.is_local_at(entry, loc),
        TreeRole::Remote | TreeRole::Synced => {
            entry.in_tree(role).is_some_and(|current| loc.is(current))
        }
    };
    let unnamed =
        matches!(entry.derived, Some(Derived::ConflictCopy { .. })) && loc.name.is_empty();
    (!there && !unnamed).then_some(loc)
}

fn index_arrivals(
    entries: &Entries<'_>,
    movers: &[usize],
    role: TreeRole,
    policy: NamePolicy,
) -> Arrivals {
    let mut index = Arrivals::new(entries.len());
    for &position in movers {
        if let Some(loc) = arrives(entries, &entries.list[position], role) {
            let name = if role == TreeRole::Local {
                policy.fold(&loc.name)
            } else {
                Cow::Borrowed(&*loc.name)
            };
            index.insert(loc.parent, name_hash(&name), position);
        }
    }
    index
}

/// The nodes LOCAL has under `parent` whose names fold to `name`'s.
fn local_occupants<'a, T: TreeView>(
    trees: &'a Trees<'_, T>,
    policy: NamePolicy,
    parent: NodeId,
    name: &'a str,
) -> Box<dyn Iterator<Item = NodeId> + 'a> {
    if policy.folds() {
        let folded = policy.fold(name).into_owned();
        Box::new(trees.local.children(parent).filter(move |&child| {
            trees
                .local
                .get(child)
                .is_some_and(|node| policy.fold(&node.name) == folded)
        }))
    } else {
        Box::new(trees.local.child_by_name(parent, name).into_iter())
    }
}

impl NameSpace {
    /// Whether nothing has, gets or was given `name` under `parent`, in either tree.
    fn is_free<T: TreeView>(
        &self,
        trees: &Trees<'_, T>,
        entries: &Entries<'_>,
        policy: NamePolicy,
        parent: NodeId,
        name: &str,
    ) -> bool {
        let folded = policy.fold(name);
        let remote_arrival = self.remote.at(parent, name_hash(name)).any(|position| {
            arrives(entries, &entries.list[position], TreeRole::Remote)
                .is_some_and(|loc| loc.name == name)
        });
        let local_arrival = self.local.at(parent, name_hash(&folded)).any(|position| {
            arrives(entries, &entries.list[position], TreeRole::Local)
                .is_some_and(|loc| policy.fold(&loc.name) == folded)
        });
        let assigned = self
            .assigned
            .get(&parent)
            .is_some_and(|names| names.iter().any(|taken| *taken == *folded));
        !remote_arrival
            && !local_arrival
            && !assigned
            && trees.remote.child_by_name(parent, name).is_none()
            && local_occupants(trees, policy, entries.local_id_now(parent), name)
                .next()
                .is_none()
    }

    fn assign(&mut self, policy: NamePolicy, parent: NodeId, name: &str) {
        self.assigned
            .entry(parent)
            .or_default()
            .push(policy.fold(name).into_owned());
    }
}

/// Settles names taken twice. Returns the name space (for the conflicted copies) and whether it held or
/// merged anything (which can unsettle the earlier steps).
fn settle_names<'t, T: TreeView>(
    trees: &Trees<'t, T>,
    entries: &mut Entries<'t>,
    movers: &[usize],
    policy: NamePolicy,
    namer: &ConflictNamer,
) -> (NameSpace, bool) {
    let mut names = NameSpace {
        remote: index_arrivals(entries, movers, TreeRole::Remote, policy),
        local: index_arrivals(entries, movers, TreeRole::Local, policy),
        assigned: HashMap::default(),
    };
    let mut changed = false;

    // REMOTE: a local create or move that lands on a name the server keeps yields.
    for &position in movers {
        let Some(loc) = arrives(entries, &entries.list[position], TreeRole::Remote).cloned() else {
            continue;
        };
        let Some(keeper) = remote_keeper(trees, entries, &names, position, &loc) else {
            continue;
        };
        if merges_into(entries, position, keeper) {
            let id = entries.list[position].id;
            entries.list[position].fate = Fate::MergedInto;
            let keeper_position = entries.position(keeper).expect("merge targets are entries");
            entries.list[keeper_position]
                .target_mut()
                .expect("kept")
                .merged_from = Some(id);
            entries.rename(id, keeper);
            changed = true;
            continue;
        }
        let kind = entries.list[position].kind;
        let name = namer.name(&loc.name, kind, |candidate| {
            names.is_free(trees, entries, policy, loc.parent, candidate)
        });
        debug_assert_eq!(policy.check(&name), Ok(()));
        names.assign(policy, loc.parent, &name);
        let target = entries.list[position]
            .target_mut()
            .expect("arrivals are kept");
        debug_assert_eq!(
            target.local.parent, target.remote.parent,
            "a local place is the same on both sides"
        );
        target.remote.name = Cow::Owned(name.clone());
        target.local.name = Cow::Owned(name);
    }
    if changed {
        // Merged directories brought their children together: settle REMOTE's names again first.
        entries.remap_parents();
        return (names, true);
    }

    // LOCAL: names that fold together here keep one node; the other remote nodes are held.
    names.local = index_arrivals(entries, movers, TreeRole::Local, policy);
    for &position in movers {
        let Some(loc) = arrives(entries, &entries.list[position], TreeRole::Local).cloned() else {
            continue;
        };
        let keeper = local_keeper(trees, entries, &names.local, policy, &loc);
        let entry = &entries.list[position];
        if keeper == entry.id {
            continue;
        }
        debug_assert!(
            !entry.target().is_some_and(|target| target.from_local),
            "local places were settled above"
        );
        let report = Report::NameCollision {
            id: entry.id,
            name: loc.name.to_string(),
            kept: keeper,
        };
        hold_locally(entries, position, report);
        changed = true;
    }
    (names, changed)
}

/// The node that keeps REMOTE's `loc`, if it is not the arriving node at `position`: the node there now
/// (if it stays), else the first arrival there in entry order.
fn remote_keeper<T: TreeView>(
    trees: &Trees<'_, T>,
    entries: &Entries<'_>,
    names: &NameSpace,
    position: usize,
    loc: &Loc<'_>,
) -> Option<NodeId> {
    let id = entries.list[position].id;
    if let Some(occupant) = trees.remote.child_by_name(loc.parent, &loc.name)
        && occupant != id
        && stays_in_remote(entries, occupant, loc)
    {
        return Some(occupant);
    }
    names
        .remote
        .at(loc.parent, name_hash(&loc.name))
        .filter(|&other| other < position)
        .find(|&other| {
            arrives(entries, &entries.list[other], TreeRole::Remote)
                .is_some_and(|other| other == loc)
        })
        .map(|other| entries.list[other].id)
}

/// Whether the node REMOTE has at `loc` is still there after the plan.
fn stays_in_remote(entries: &Entries<'_>, id: NodeId, loc: &Loc<'_>) -> bool {
    match entries.get(id).map(|entry| &entry.fate) {
        None | Some(Fate::RemoteOnly | Fate::Skipped) => true,
        Some(Fate::Kept(target)) => target.remote == *loc,
        Some(Fate::Gone | Fate::TentativelyGone { .. } | Fate::RebornAs(_) | Fate::MergedInto) => {
            false
        }
    }
}

/// Create/create at one name with equal content (any two directories are equal): one node, the
/// server's, instead of a conflicted copy.
fn merges_into(entries: &Entries<'_>, position: usize, keeper: NodeId) -> bool {
    let entry = &entries.list[position];
    let Some(keeper) = entries.get(keeper) else {
        return false;
    };
    let (Some(local), Some(remote)) = (entry.local.as_deref(), keeper.remote.as_deref()) else {
        return false;
    };
    let local_create = entry.remote.is_none() && entry.synced.is_none() && entry.derived.is_none();
    let remote_create = keeper.local.is_none()
        && keeper.synced.is_none()
        && keeper
            .target()
            .is_some_and(|target| !target.from_local && target.merged_from.is_none());
    local_create
        && remote_create
        && local.kind == remote.kind
        && (local.is_dir() || local.attrs.same_content(&remote.attrs))
}

/// The node that keeps LOCAL's `loc` (compared after folding): a node staying there beats a node taking
/// over a local node's place, which beats a local place, which beats the remote arrivals (lowest id
/// first).
fn local_keeper<T: TreeView>(
    trees: &Trees<'_, T>,
    entries: &Entries<'_>,
    arrivals: &Arrivals,
    policy: NamePolicy,
    loc: &Loc<'_>,
) -> NodeId {
    let folded = policy.fold(&loc.name);
    let staying = local_occupants(trees, policy, entries.local_id_now(loc.parent), &loc.name).find(
        |&occupant| match entries.get(occupant) {
            None => true,
            Some(entry) => match &entry.fate {
                Fate::Kept(target) => entries.is_local_at(entry, &target.local),
                Fate::Skipped => true,
                _ => false,
            },
        },
    );
    if let Some(occupant) = staying {
        return occupant;
    }
    let rank = |position: usize| {
        let entry = &entries.list[position];
        let target = entry.target().expect("arrivals are kept");
        let takes_over =
            target.merged_from.is_some() || matches!(entry.derived, Some(Derived::Reborn { .. }));
        (!takes_over, !target.from_local, entry.id)
    };
    arrivals
        .at(loc.parent, name_hash(&folded))
        .filter(|&position| {
            arrives(entries, &entries.list[position], TreeRole::Local).is_some_and(|other| {
                other.parent == loc.parent && policy.fold(&other.name) == folded
            })
        })
        .min_by_key(|&position| rank(position))
        .map(|position| entries.list[position].id)
        .expect("the arriving node itself is an arrival")
}

// --- 5. conflicted copies -----------------------------------------------------------------------------

/// Names each conflicted copy after its original's final name, in the original's final directory.
fn name_conflicted_copies<T: TreeView>(
    trees: &Trees<'_, T>,
    entries: &mut Entries<'_>,
    policy: NamePolicy,
    namer: &ConflictNamer,
    mut names: NameSpace,
) {
    for position in 0..entries.len() {
        let Some(Derived::ConflictCopy { of }) = entries.list[position].derived else {
            continue;
        };
        let original = entries
            .get(of)
            .and_then(|original| original.target())
            .expect("the original is kept");
        let parent = original.local.parent;
        let kind = entries.list[position].kind;
        let name = namer.name(&original.local.name, kind, |candidate| {
            names.is_free(trees, entries, policy, parent, candidate)
        });
        names.assign(policy, parent, &name);
        let target = entries.list[position]
            .target_mut()
            .expect("copies are kept");
        target.remote = Loc {
            parent,
            name: Cow::Owned(name.clone()),
        };
        target.local = Loc {
            parent,
            name: Cow::Owned(name),
        };
    }
}

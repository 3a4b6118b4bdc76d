//! Stage 4: order the ops. Dependencies come from what each op does to each tree (REMOTE, LOCAL and
//! SYNCED alike, since SYNCED must stay a well-formed tree too):
//!
//! - a node is placed under a parent only once the parent exists (parent creates first);
//! - a node takes a name only once the node there left it (move-outs before move-ins, deletes before
//!   creates at the same name);
//! - a directory is removed only once its children left (children deletes first);
//! - a node moves into a directory only after every moving directory above the destination moved, so
//!   that no order of running the ops ever makes a cycle;
//! - the second op on one node follows the first ([`Drafts::after`]).
//!
//! Ops whose dependency is missing from the plan (the node in the way stays, for now) are dropped with
//! everything that depends on them; the next plan picks them up. Then the bulk-delete brake holds the
//! deletes of an oversize plan (and what depends on them). Dependencies that form a cycle (two nodes
//! swapping names, a directory taking the name of a file that moves into it) are broken last, see
//! [`DepGraph::break_cycles`].

use std::collections::VecDeque;

use crate::model::{NamePolicy, Node, NodeId, NodeIdMap};
use crate::tree::TreeView;

use super::conflict_name::park_name;
use super::context::PlanContext;
use super::emit::Drafts;
use super::merge::{TreeRole, Trees};
use super::{HeldDelete, OpId, OpKind, Plan, PlannedOp, Report, Side, SyncedChange};

pub(super) fn schedule<T: TreeView>(
    trees: &Trees<'_, T>,
    mut drafts: Drafts,
    reported: Vec<Report>,
    ctx: &PlanContext<'_>,
) -> Plan {
    let index = EffectIndex::build(trees, &drafts.ops);
    let mut graph = DepGraph::derive(trees, &drafts, &index, ctx.names);
    // Held deletes go first, so no cycle is broken for the sake of ops that wait for them anyway.
    let held_deletes = graph.brake(trees, &drafts.ops, ctx);
    graph.break_cycles(trees, &index, ctx.names, &mut drafts);
    graph.into_plan(drafts.ops, held_deletes, reported)
}

/// What an op does to the shape of one tree.
#[derive(Debug, Clone, Copy)]
enum Effect<'d> {
    /// The node is at `parent`/`name` afterwards (created or moved there).
    Place {
        id: NodeId,
        parent: NodeId,
        name: &'d str,
    },
    Remove {
        id: NodeId,
    },
    /// The node `old` becomes `new`, then sits at `place` (LOCAL), or stays where it is (SYNCED).
    Reidentify {
        old: NodeId,
        new: NodeId,
        place: Option<(NodeId, &'d str)>,
    },
}

/// The shape changes of an op: at most one on its side and one on SYNCED.
fn effects(draft: &PlannedOp) -> [Option<(TreeRole, Effect<'_>)>; 2] {
    let place = |id, parent, name| Effect::Place { id, parent, name };
    let on_side = match &draft.kind {
        OpKind::LocalCreate { node, .. } => Some((
            TreeRole::Local,
            place(node.id, node.parent, node.name.as_str()),
        )),
        OpKind::LocalMove { id, parent, name } => {
            Some((TreeRole::Local, place(*id, *parent, name)))
        }
        OpKind::LocalDelete { id } => Some((TreeRole::Local, Effect::Remove { id: *id })),
        OpKind::LocalConflictCopy { copy, .. } => {
            Some((TreeRole::Local, place(copy.id, copy.parent, &copy.name)))
        }
        OpKind::LocalReidentify {
            old,
            new,
            parent,
            name,
            ..
        } => Some((
            TreeRole::Local,
            Effect::Reidentify {
                old: *old,
                new: *new,
                place: Some((*parent, name)),
            },
        )),
        OpKind::RemoteCreate { node, .. } => {
            Some((TreeRole::Remote, place(node.id, node.parent, &node.name)))
        }
        OpKind::RemoteMove {
            id, parent, name, ..
        } => Some((TreeRole::Remote, place(*id, *parent, name))),
        OpKind::RemoteDelete { id, .. } => Some((TreeRole::Remote, Effect::Remove { id: *id })),
        OpKind::LocalUpdate { .. } | OpKind::RemoteUpdate { .. } | OpKind::RecordSynced => None,
    };
    let on_synced = match &draft.synced {
        SyncedChange::Put(node) => {
            Some((TreeRole::Synced, place(node.id, node.parent, &node.name)))
        }
        SyncedChange::Place { id, parent, name } => {
            Some((TreeRole::Synced, place(*id, *parent, name)))
        }
        SyncedChange::Remove(id) => Some((TreeRole::Synced, Effect::Remove { id: *id })),
        SyncedChange::Reidentify { old, new } => Some((
            TreeRole::Synced,
            Effect::Reidentify {
                old: *old,
                new: *new,
                place: None,
            },
        )),
        SyncedChange::Unchanged | SyncedChange::SetAttrs { .. } => None,
    };
    [on_side, on_synced]
}

fn slot(role: TreeRole) -> usize {
    match role {
        TreeRole::Remote => 0,
        TreeRole::Local => 1,
        TreeRole::Synced => 2,
    }
}

/// How one tree's node ends up placed by a plan.
#[derive(Debug, Clone, Copy)]
struct Placement {
    /// The op that makes the node exist in the tree (a create or a re-identification), if it does not.
    created_by: Option<u32>,
    /// The last op that moves it, if one does.
    moved_by: Option<u32>,
    /// Its parent after the plan.
    parent: NodeId,
}

/// Which ops place, and which op moves away, each node in each tree.
struct EffectIndex {
    placed: [NodeIdMap<Placement>; 3],
    /// Nodes that leave their current place (moved, removed, renamed by a re-identification).
    leaving: [NodeIdMap<u32>; 3],
    /// Nodes the plan re-identifies: new id → old id.
    reidentified: [NodeIdMap<NodeId>; 3],
    /// The same, old id → new id.
    renamed: [NodeIdMap<NodeId>; 3],
}

impl EffectIndex {
    fn build<T: TreeView>(trees: &Trees<'_, T>, drafts: &[PlannedOp]) -> EffectIndex {
        let mut index = EffectIndex {
            placed: Default::default(),
            leaving: Default::default(),
            reidentified: Default::default(),
            renamed: Default::default(),
        };
        for draft in drafts {
            for (role, effect) in effects(draft).into_iter().flatten() {
                if let Effect::Reidentify { old, new, .. } = effect {
                    index.reidentified[slot(role)].insert(new, old);
                    index.renamed[slot(role)].insert(old, new);
                }
            }
        }
        for (op, draft) in drafts.iter().enumerate() {
            let op = op as u32;
            for (role, effect) in effects(draft).into_iter().flatten() {
                let tree = trees.get(role);
                let (id, parent, name, holder) = match effect {
                    Effect::Remove { id } => {
                        index.leaving[slot(role)].insert(id, op);
                        continue;
                    }
                    Effect::Place { id, parent, name } => {
                        (id, parent, name, index.holder(role, id))
                    }
                    Effect::Reidentify { old, new, place } => {
                        let Some(now) = tree.get(old) else { continue };
                        let (parent, name) = place.unwrap_or((now.parent, now.name.as_str()));
                        let placement = Placement {
                            created_by: Some(op),
                            moved_by: None,
                            parent,
                        };
                        index.placed[slot(role)].insert(new, placement);
                        if now.name != name {
                            index.leaving[slot(role)].entry(old).or_insert(op);
                        }
                        continue;
                    }
                };
                // Under a parent that is re-identified, the node still needs that op first: not "in place".
                let now = tree.get(holder);
                if now
                    .as_ref()
                    .is_some_and(|now| now.parent == parent && now.name == name)
                {
                    continue;
                }
                let placed = &mut index.placed[slot(role)];
                match now {
                    Some(_) => {
                        index.leaving[slot(role)].entry(holder).or_insert(op);
                        let placement = placed.entry(id).or_insert(Placement {
                            created_by: None,
                            moved_by: None,
                            parent,
                        });
                        debug_assert!(
                            placement.moved_by.is_none(),
                            "{id:?} moved twice in {role:?}"
                        );
                        placement.moved_by = Some(op);
                        placement.parent = parent;
                    }
                    None => {
                        let previous = placed.insert(
                            id,
                            Placement {
                                created_by: Some(op),
                                moved_by: None,
                                parent,
                            },
                        );
                        debug_assert!(previous.is_none(), "{id:?} created twice in {role:?}");
                    }
                }
            }
        }
        index
    }

    /// The id `role`'s tree holds `id` under now (before the plan's re-identifications).
    fn holder(&self, role: TreeRole, id: NodeId) -> NodeId {
        self.reidentified[slot(role)]
            .get(&id)
            .copied()
            .unwrap_or(id)
    }

    /// Where this tree holds the children of `parent` now.
    fn now(&self, role: TreeRole, parent: NodeId) -> NodeId {
        self.holder(role, parent)
    }

    /// The id `role`'s node `id` has once the plan's re-identifications ran.
    fn after(&self, role: TreeRole, id: NodeId) -> NodeId {
        self.renamed[slot(role)].get(&id).copied().unwrap_or(id)
    }
}

/// Why an op waits for another, and in which tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    /// The other op is the first of two on one node.
    Chain,
    /// It creates the parent.
    Parent(TreeRole),
    /// It moves away the node holding the name.
    Vacate(TreeRole),
    /// It moves a directory above the destination.
    Ancestor(TreeRole),
    /// It moves away or removes a child of the directory being removed.
    Emptied(TreeRole),
}

impl Why {
    fn tree(self) -> Option<TreeRole> {
        match self {
            Why::Chain => None,
            Why::Parent(role) | Why::Vacate(role) | Why::Ancestor(role) | Why::Emptied(role) => {
                Some(role)
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Edge {
    /// The op that waits.
    from: u32,
    /// The op it waits for.
    on: u32,
    why: Why,
    live: bool,
}

/// Edge indices grouped by op.
struct Adjacency {
    start: Vec<u32>,
    edges: Vec<u32>,
}

impl Adjacency {
    fn build(ops: usize, edges: &[Edge], key: impl Fn(&Edge) -> u32) -> Adjacency {
        let mut start = vec![0u32; ops + 1];
        for edge in edges {
            start[key(edge) as usize + 1] += 1;
        }
        for op in 0..ops {
            start[op + 1] += start[op];
        }
        let mut fill = start.clone();
        let mut grouped = vec![0u32; edges.len()];
        for (position, edge) in edges.iter().enumerate() {
            let op = key(edge) as usize;
            grouped[fill[op] as usize] = position as u32;
            fill[op] += 1;
        }
        Adjacency {
            start,
            edges: grouped,
        }
    }

    fn of(&self, op: u32) -> &[u32] {
        &self.edges[self.start[op as usize] as usize..self.start[op as usize + 1] as usize]
    }
}

struct DepGraph {
    edges: Vec<Edge>,
    /// Edges by the op that waits.
    waits: Adjacency,
    /// Edges by the op waited for.
    awaited: Adjacency,
    dropped: Vec<bool>,
    /// Ops turned into a move to a temporary name (at most once each).
    parked: Vec<bool>,
    /// Ops that let go of their SYNCED change (at most once each).
    detached: Vec<bool>,
}

/// Adds the dependencies of one op to `edges`; false if one of them is missing from the plan.
fn waits_of<T: TreeView>(
    trees: &Trees<'_, T>,
    index: &EffectIndex,
    policy: NamePolicy,
    (op, draft, after): (u32, &PlannedOp, Option<u32>),
    edges: &mut Vec<Edge>,
    dropped: &[bool],
) -> bool {
    let mut waits = Waits {
        op,
        edges,
        dropped,
        satisfiable: true,
    };
    if let Some(after) = after {
        waits.on(Some(after), Why::Chain);
    }
    for (role, effect) in effects(draft).into_iter().flatten() {
        let tree = trees.get(role);
        let (placed, leaving) = (&index.placed[slot(role)], &index.leaving[slot(role)]);
        let (id, parent, name, holder) = match effect {
            Effect::Remove { id } => {
                for child in tree.children(id) {
                    waits.on(leaving.get(&child).copied(), Why::Emptied(role));
                }
                continue;
            }
            Effect::Place { id, parent, name } => (id, parent, name, index.holder(role, id)),
            Effect::Reidentify {
                old,
                new,
                place: Some((parent, name)),
            } => (new, parent, name, old),
            // In place: nothing moves.
            Effect::Reidentify { place: None, .. } => continue,
        };
        // Under a parent that is re-identified, the node still needs that op first: not "in place".
        let current = tree.get(holder);
        if current
            .as_ref()
            .is_some_and(|node| node.parent == parent && node.name == name)
        {
            continue;
        }
        let reidentifies = matches!(effect, Effect::Reidentify { .. });
        // A node another op re-identifies moves only once it has its new id.
        if holder != id && !reidentifies {
            waits.on(
                placed.get(&id).and_then(|placement| placement.created_by),
                Why::Chain,
            );
        }
        if !tree.contains(parent) {
            waits.on(
                placed
                    .get(&parent)
                    .and_then(|placement| placement.created_by),
                Why::Parent(role),
            );
        }
        for_each_occupant(
            tree,
            role,
            policy,
            index.now(role, parent),
            name,
            |occupant| {
                if occupant != id && occupant != holder {
                    waits.on(leaving.get(&occupant).copied(), Why::Vacate(role));
                }
            },
        );
        let moves = current.is_some_and(|node| node.parent != index.now(role, parent));
        if moves && !reidentifies && !waits.after_moving_ancestors(tree, role, placed, id, parent) {
            waits.satisfiable = false;
        }
    }
    waits.satisfiable
}

/// Far more steps than any real directory depth: a longer walk means the plan would close a cycle.
const MAX_DEPTH: usize = 1 << 16;

impl DepGraph {
    fn derive<T: TreeView>(
        trees: &Trees<'_, T>,
        drafts: &Drafts,
        index: &EffectIndex,
        policy: NamePolicy,
    ) -> DepGraph {
        let ops = drafts.ops.len();
        let mut edges = Vec::with_capacity(ops);
        let unsatisfiable: Vec<u32> = (0..ops as u32)
            .filter(|&op| {
                let draft = (op, &drafts.ops[op as usize], drafts.after[op as usize]);
                !waits_of(trees, index, policy, draft, &mut edges, &[])
            })
            .collect();
        let mut graph = DepGraph {
            waits: Adjacency::build(ops, &edges, |edge| edge.from),
            awaited: Adjacency::build(ops, &edges, |edge| edge.on),
            edges,
            dropped: vec![false; ops],
            parked: vec![false; ops],
            detached: vec![false; ops],
        };
        graph.drop_with_dependents(unsatisfiable);
        graph
    }

    fn reindex(&mut self) {
        let ops = self.dropped.len();
        self.waits = Adjacency::build(ops, &self.edges, |edge| edge.from);
        self.awaited = Adjacency::build(ops, &self.edges, |edge| edge.on);
    }

    /// Drops these ops and, transitively, every op waiting for them.
    fn drop_with_dependents(&mut self, ops: impl IntoIterator<Item = u32>) {
        let mut stack: Vec<u32> = ops.into_iter().collect();
        while let Some(op) = stack.pop() {
            if std::mem::replace(&mut self.dropped[op as usize], true) {
                continue;
            }
            for &edge in self.awaited.of(op) {
                let edge = self.edges[edge as usize];
                if edge.live && !self.dropped[edge.from as usize] {
                    stack.push(edge.from);
                }
            }
        }
    }

    fn is_live(&self, edge: &Edge) -> bool {
        edge.live && !self.dropped[edge.from as usize] && !self.dropped[edge.on as usize]
    }

    /// Breaks every dependency cycle. Where the cycle runs through SYNCED, an op lets go of its SYNCED
    /// change (the next plan records it); this is invisible to the user. Otherwise one move of the
    /// cycle is parked under a temporary name, which needs nobody else's name, and the next plan moves
    /// it on: a move that waits for a name in the cycle parks in its target directory (so what waits
    /// for it to arrive there still can); else a move whose name the cycle waits for parks where it is.
    fn break_cycles<T: TreeView>(
        &mut self,
        trees: &Trees<'_, T>,
        index: &EffectIndex,
        policy: NamePolicy,
        drafts: &mut Drafts,
    ) {
        loop {
            let cycles = self.cycles();
            if cycles.is_empty() {
                return;
            }
            for cycle in cycles {
                if cycle.iter().any(|&op| self.dropped[op as usize]) {
                    continue; // Broken already by an earlier change; the next pass looks again.
                }
                let in_cycle = |edge: &Edge| {
                    self.is_live(edge) && cycle.contains(&edge.on) && cycle.contains(&edge.from)
                };
                // Whether every edge by which `op` waits inside the cycle is of this kind.
                let waits_only_for = |op: u32, why: fn(Why) -> bool| {
                    self.waits
                        .of(op)
                        .iter()
                        .map(|&edge| self.edges[edge as usize])
                        .filter(in_cycle)
                        .all(|edge| why(edge.why))
                };
                let name_awaited = |op: u32| {
                    self.awaited
                        .of(op)
                        .iter()
                        .map(|&edge| self.edges[edge as usize])
                        .any(|edge| in_cycle(&edge) && matches!(edge.why, Why::Vacate(_)))
                };
                let first = |candidates: Vec<(u32, Parked)>| {
                    candidates
                        .into_iter()
                        .min_by_key(|(op, _)| (drafts.ops[*op as usize].kind.node(), *op))
                };
                let unchanged = |op: &&u32| !self.parked[**op as usize];
                let detach = first(
                    cycle
                        .iter()
                        .filter(|&&op| {
                            !self.detached[op as usize]
                                && drafts.ops[op as usize].kind != OpKind::RecordSynced
                        })
                        .filter(|&&op| {
                            waits_only_for(op, |why| why.tree() == Some(TreeRole::Synced))
                        })
                        .filter_map(|&op| {
                            detached(trees, index, &drafts.ops[op as usize])
                                .map(|parked| (op, parked))
                        })
                        .collect(),
                );
                let park = |park: Park, qualifies: &dyn Fn(u32) -> bool| {
                    first(
                        cycle
                            .iter()
                            .filter(unchanged)
                            .filter(|&&op| qualifies(op))
                            .filter_map(|&op| {
                                parked(trees, index, &drafts.ops[op as usize], park)
                                    .map(|parked| (op, parked))
                            })
                            .collect(),
                    )
                };
                let choice = detach
                    .or_else(|| {
                        park(Park::InTarget, &|op| {
                            waits_only_for(op, |why| matches!(why, Why::Vacate(_)))
                        })
                    })
                    .or_else(|| park(Park::InPlace, &name_awaited))
                    .or_else(|| park(Park::InRoot, &|_| true));
                match choice {
                    Some((op, parked)) => self.park(trees, index, policy, drafts, op, parked),
                    None => {
                        let ops: Vec<&PlannedOp> =
                            cycle.iter().map(|&op| &drafts.ops[op as usize]).collect();
                        debug_assert!(false, "a dependency cycle that nothing breaks: {ops:#?}");
                        self.drop_with_dependents(cycle);
                    }
                }
            }
            self.reindex();
        }
    }

    fn park<T: TreeView>(
        &mut self,
        trees: &Trees<'_, T>,
        index: &EffectIndex,
        policy: NamePolicy,
        drafts: &mut Drafts,
        op: u32,
        parked: Parked,
    ) {
        let doomed: Vec<u32> = self
            .awaited
            .of(op)
            .iter()
            .map(|&edge| self.edges[edge as usize])
            .filter(|edge| self.is_live(edge) && !parked.still_serves(edge.why))
            .map(|edge| edge.from)
            .collect();
        let draft = &mut drafts.ops[op as usize];
        draft.kind = parked.kind;
        draft.synced = parked.synced;
        if parked.park != Park::SyncedOnly {
            drafts.after[op as usize] = None;
        }
        match parked.park {
            Park::SyncedOnly => self.detached[op as usize] = true,
            Park::InTarget | Park::InPlace | Park::InRoot => self.parked[op as usize] = true,
        }
        for &edge in self.waits.of(op) {
            self.edges[edge as usize].live = false;
        }
        self.drop_with_dependents(doomed);
        let draft = (op, &drafts.ops[op as usize], drafts.after[op as usize]);
        if !waits_of(trees, index, policy, draft, &mut self.edges, &self.dropped) {
            self.drop_with_dependents([op]);
        }
    }

    /// The strongly connected components with more than one op (Tarjan, iteratively).
    fn cycles(&self) -> Vec<Vec<u32>> {
        let mut tarjan = Tarjan::new(self.dropped.len());
        let mut found = Vec::new();
        for root in 0..self.dropped.len() as u32 {
            if self.dropped[root as usize] || tarjan.seen(root) {
                continue;
            }
            tarjan.visit(root);
            while let Some(&(op, next)) = tarjan.calls.last() {
                let waits = self.waits.of(op);
                if next < waits.len() {
                    tarjan.calls.last_mut().expect("non-empty").1 += 1;
                    let edge = self.edges[waits[next] as usize];
                    if !self.is_live(&edge) {
                        continue;
                    }
                    if !tarjan.seen(edge.on) {
                        tarjan.visit(edge.on);
                    } else if tarjan.on_stack[edge.on as usize] {
                        tarjan.low[op as usize] =
                            tarjan.low[op as usize].min(tarjan.order[edge.on as usize]);
                    }
                    continue;
                }
                tarjan.calls.pop();
                if let Some(&(caller, _)) = tarjan.calls.last() {
                    tarjan.low[caller as usize] =
                        tarjan.low[caller as usize].min(tarjan.low[op as usize]);
                }
                if tarjan.low[op as usize] == tarjan.order[op as usize] {
                    let component = tarjan.pop_component(op);
                    if component.len() > 1 {
                        found.push(component);
                    }
                }
            }
        }
        found
    }

    /// Holds the deletes of a plan that deletes too much (DESIGN D8), unless the user confirmed them.
    fn brake<T: TreeView>(
        &mut self,
        trees: &Trees<'_, T>,
        drafts: &[PlannedOp],
        ctx: &PlanContext<'_>,
    ) -> Vec<HeldDelete> {
        let deletes: Vec<u32> = (0..drafts.len() as u32)
            .filter(|&op| !self.dropped[op as usize] && drafts[op as usize].kind.is_delete())
            .collect();
        if !ctx.brake.engages(deletes.len() as u64, ctx.namespace_size) {
            return Vec::new();
        }
        let mut held = Vec::new();
        let mut holds = Vec::new();
        for op in deletes {
            let (side, id) = match drafts[op as usize].kind {
                OpKind::LocalDelete { id } => (Side::Local, id),
                OpKind::RemoteDelete { id, .. } => (Side::Remote, id),
                _ => unreachable!("only deletes are braked"),
            };
            if ctx.confirmed_deletes.contains(&id) {
                continue;
            }
            let tree = match side {
                Side::Local => trees.local,
                Side::Remote => trees.remote,
            };
            let node = tree.get(id).expect("a delete's node exists");
            held.push(HeldDelete {
                side,
                id,
                parent: node.parent,
                name: node.name.clone(),
            });
            holds.push(op);
        }
        self.drop_with_dependents(holds);
        held
    }

    /// The live ops in dependency order, renumbered. The ops are ordered in place: a plan over a
    /// million changes does not copy them once more.
    fn into_plan(
        self,
        mut ops: Vec<PlannedOp>,
        held_deletes: Vec<HeldDelete>,
        reported: Vec<Report>,
    ) -> Plan {
        let count = ops.len();
        let mut waiting = vec![0u32; count];
        for edge in self.edges.iter().filter(|edge| self.is_live(edge)) {
            waiting[edge.from as usize] += 1;
        }
        let mut ready: VecDeque<u32> = (0..count as u32)
            .filter(|&op| !self.dropped[op as usize] && waiting[op as usize] == 0)
            .collect();
        // Where each op goes: live ops in dependency order, then the dropped ones (cut off below).
        let mut position = vec![u32::MAX; count];
        let mut placed = 0u32;
        while let Some(op) = ready.pop_front() {
            position[op as usize] = placed;
            placed += 1;
            for &edge in self.awaited.of(op) {
                let edge = self.edges[edge as usize];
                if self.is_live(&edge) {
                    waiting[edge.from as usize] -= 1;
                    if waiting[edge.from as usize] == 0 {
                        ready.push_back(edge.from);
                    }
                }
            }
        }
        let live = placed as usize;
        debug_assert_eq!(
            live,
            self.dropped.iter().filter(|dropped| !**dropped).count(),
            "cycle left"
        );
        for op in 0..count {
            if position[op] == u32::MAX {
                position[op] = placed;
                placed += 1;
                continue;
            }
            let mut deps: Vec<OpId> = self
                .waits
                .of(op as u32)
                .iter()
                .map(|&edge| self.edges[edge as usize])
                .filter(|edge| self.is_live(edge))
                .map(|edge| OpId(position[edge.on as usize]))
                .collect();
            deps.sort_unstable();
            deps.dedup();
            ops[op].id = OpId(position[op]);
            ops[op].deps = deps;
        }
        // Apply the permutation by cycles: each swap puts one op in its final place.
        for start in 0..count {
            while position[start] as usize != start {
                let target = position[start] as usize;
                ops.swap(start, target);
                position.swap(start, target);
            }
        }
        ops.truncate(live);
        Plan {
            ops,
            held_deletes,
            reported,
        }
    }
}

/// The state of Tarjan's strongly-connected-components walk.
struct Tarjan {
    order: Vec<u32>,
    low: Vec<u32>,
    on_stack: Vec<bool>,
    stack: Vec<u32>,
    /// The walk's call stack: an op and the next of its edges to follow.
    calls: Vec<(u32, usize)>,
    counter: u32,
}

impl Tarjan {
    const UNSEEN: u32 = u32::MAX;

    fn new(ops: usize) -> Tarjan {
        Tarjan {
            order: vec![Tarjan::UNSEEN; ops],
            low: vec![0; ops],
            on_stack: vec![false; ops],
            stack: Vec::new(),
            calls: Vec::new(),
            counter: 0,
        }
    }

    fn seen(&self, op: u32) -> bool {
        self.order[op as usize] != Tarjan::UNSEEN
    }

    fn visit(&mut self, op: u32) {
        self.order[op as usize] = self.counter;
        self.low[op as usize] = self.counter;
        self.counter += 1;
        self.stack.push(op);
        self.on_stack[op as usize] = true;
        self.calls.push((op, 0));
    }

    fn pop_component(&mut self, root: u32) -> Vec<u32> {
        let mut component = Vec::new();
        loop {
            let member = self.stack.pop().expect("the root is on the stack");
            self.on_stack[member as usize] = false;
            component.push(member);
            if member == root {
                return component;
            }
        }
    }
}

/// Collects the dependencies of one op; a dependency on an op the plan lacks makes it unsatisfiable.
struct Waits<'a> {
    op: u32,
    edges: &'a mut Vec<Edge>,
    /// Ops dropped already: waiting for one is unsatisfiable.
    dropped: &'a [bool],
    satisfiable: bool,
}

impl Waits<'_> {
    fn on(&mut self, other: Option<u32>, why: Why) {
        match other {
            Some(other) if self.dropped.get(other as usize).copied().unwrap_or(false) => {
                self.satisfiable = false
            }
            Some(other) if other != self.op => self.edges.push(Edge {
                from: self.op,
                on: other,
                why,
                live: true,
            }),
            Some(_) => {}
            None => self.satisfiable = false,
        }
    }

    /// Waits for every move of a directory above `parent` (as the plan leaves it). False if `id` is
    /// itself above `parent`, which would close a cycle.
    fn after_moving_ancestors<T: TreeView>(
        &mut self,
        tree: &T,
        role: TreeRole,
        placed: &NodeIdMap<Placement>,
        id: NodeId,
        parent: NodeId,
    ) -> bool {
        let mut cursor = parent;
        for _ in 0..MAX_DEPTH {
            if cursor == id {
                return false;
            }
            if cursor.is_root() {
                return true;
            }
            cursor = match placed.get(&cursor) {
                Some(placement) => {
                    if let Some(mover) = placement.moved_by {
                        self.on(Some(mover), Why::Ancestor(role));
                    }
                    placement.parent
                }
                None => match tree.get(cursor) {
                    Some(node) => node.parent,
                    None => return true,
                },
            };
        }
        false
    }
}

/// The nodes `tree` has under `parent` whose name is `name` (after folding, in LOCAL).
fn for_each_occupant<T: TreeView>(
    tree: &T,
    role: TreeRole,
    policy: NamePolicy,
    parent: NodeId,
    name: &str,
    mut found: impl FnMut(NodeId),
) {
    if role == TreeRole::Local && policy.folds() {
        let folded = policy.fold(name);
        for child in tree.children(parent) {
            if tree
                .get(child)
                .is_some_and(|node| policy.fold(&node.name) == folded)
            {
                found(child);
            }
        }
    } else if let Some(child) = tree.child_by_name(parent, name) {
        found(child);
    }
}

/// How an op changes to break a dependency cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Park {
    /// A move goes to its target directory under a temporary name.
    InTarget,
    /// A move goes to a temporary name in the directory it is in now.
    InPlace,
    /// A move goes to a temporary name in the root: out of its directory, without waiting for anything.
    InRoot,
    /// Only SYNCED's change is let go: a place in SYNCED becomes a temporary name where SYNCED has the
    /// node; any other change waits for the next plan.
    SyncedOnly,
}

/// An op changed to break a dependency cycle. Parks drop the op's [`Drafts::after`]; a detached op
/// keeps it.
struct Parked {
    kind: OpKind,
    synced: SyncedChange,
    park: Park,
    /// The trees in which the parked op still frees the node's current name.
    vacates: Vec<TreeRole>,
}

impl Parked {
    /// Whether an op that waited for the original move can still wait for the parked one.
    fn still_serves(&self, why: Why) -> bool {
        match why {
            Why::Vacate(role) => self.vacates.contains(&role),
            // Parked in its target directory, the node is where its descendants-to-be expect it.
            Why::Ancestor(role) | Why::Emptied(role) => match self.park {
                Park::InTarget => role != TreeRole::Synced || self.vacates.contains(&role),
                Park::InRoot => matches!(why, Why::Emptied(_)) && self.vacates.contains(&role),
                Park::InPlace => false,
                Park::SyncedOnly => role != TreeRole::Synced,
            },
            Why::Parent(role) if self.park == Park::SyncedOnly => role != TreeRole::Synced,
            Why::Chain | Why::Parent(_) => false,
        }
    }
}

/// The op with its SYNCED change let go, if that change can wait: SYNCED parks the node in place
/// (where it has it), or changes nothing and the next plan records what both sides agree on.
fn detached<T: TreeView>(
    trees: &Trees<'_, T>,
    index: &EffectIndex,
    draft: &PlannedOp,
) -> Option<Parked> {
    let synced = match &draft.synced {
        SyncedChange::Put(Node { id, .. }) | SyncedChange::Place { id, .. } => {
            match trees.synced.get(index.holder(TreeRole::Synced, *id)) {
                Some(now) => {
                    let parent = index.after(TreeRole::Synced, now.parent);
                    SyncedChange::Place {
                        id: *id,
                        parent,
                        name: park_name(*id),
                    }
                }
                None => SyncedChange::Unchanged,
            }
        }
        SyncedChange::Remove(_) => SyncedChange::Unchanged,
        SyncedChange::Unchanged
        | SyncedChange::SetAttrs { .. }
        | SyncedChange::Reidentify { .. } => return None,
    };
    let side = draft.kind.side().map(|side| match side {
        Side::Local => TreeRole::Local,
        Side::Remote => TreeRole::Remote,
    });
    let vacates = side
        .into_iter()
        .chain((synced != SyncedChange::Unchanged).then_some(TreeRole::Synced))
        .collect();
    Some(Parked {
        kind: draft.kind.clone(),
        synced,
        park: Park::SyncedOnly,
        vacates,
    })
}

/// The parked form of a move. SYNCED takes the temporary place too, so that the next plan still sees
/// the same change to make: after a local move LOCAL equals SYNCED and REMOTE's place wins again; after
/// a remote move REMOTE equals SYNCED and LOCAL's place wins again. Where SYNCED cannot follow, or where
/// the node is parked there already (parking again would change nothing, plan after plan), the move is
/// not parked.
fn parked<T: TreeView>(
    trees: &Trees<'_, T>,
    index: &EffectIndex,
    draft: &PlannedOp,
    park: Park,
) -> Option<Parked> {
    let (role, id, target) = match &draft.kind {
        OpKind::RemoteMove { id, parent, .. } => (TreeRole::Remote, *id, *parent),
        OpKind::LocalMove { id, parent, .. } => (TreeRole::Local, *id, *parent),
        OpKind::RecordSynced => match &draft.synced {
            SyncedChange::Put(node) => (TreeRole::Synced, node.id, node.parent),
            SyncedChange::Place { id, parent, .. } => (TreeRole::Synced, *id, *parent),
            _ => return None,
        },
        _ => return None,
    };
    let now = trees.get(role).get(index.holder(role, id))?;
    let parent = match park {
        Park::InTarget => target,
        Park::InPlace => index.after(role, now.parent),
        Park::InRoot => NodeId::ROOT,
        Park::SyncedOnly => return None,
    };
    let name = park_name(id);
    if now.parent == parent && now.name == name {
        return None;
    }
    let synced_parent = index.holder(TreeRole::Synced, parent);
    let synced = match trees.synced.get(index.holder(TreeRole::Synced, id)) {
        Some(_) if park == Park::InTarget || trees.synced.contains(synced_parent) => {
            SyncedChange::Place {
                id,
                parent,
                name: name.clone(),
            }
        }
        Some(_) => return None,
        // SYNCED lacks it: next time both sides differ from SYNCED and REMOTE wins again; a remote move
        // cannot park that way (REMOTE would win with the temporary name).
        None if role == TreeRole::Local => SyncedChange::Unchanged,
        None => return None,
    };
    let kind = match draft.kind {
        OpKind::RemoteMove { base_revision, .. } => OpKind::RemoteMove {
            id,
            base_revision,
            parent,
            name,
        },
        OpKind::LocalMove { .. } => OpKind::LocalMove { id, parent, name },
        _ => OpKind::RecordSynced,
    };
    let side = (role != TreeRole::Synced).then_some(role);
    let vacates = side
        .into_iter()
        .chain((synced != SyncedChange::Unchanged).then_some(TreeRole::Synced))
        .collect();
    Some(Parked {
        kind,
        synced,
        park,
        vacates,
    })
}

//! Shared by the planner tests: a small world of three trees with path-based editing, and a simulator
//! that runs plans to a fixed point in random dependency orders, checking invariants after every op.

#![allow(dead_code)] // Each test binary uses a different part of this module.

use std::collections::{BTreeMap, HashMap};

use bvfs_engine::model::{Attrs, ContentHash, NamePolicy, Node, NodeId, NodeIdSet, NodeKind};
use bvfs_engine::planner::{
    ConflictTime, DeleteBrake, NothingResident, OpKind, Plan, PlanContext, Planner, Report,
    ThreeTrees,
};
use bvfs_engine::tree::{Tree, TreeView};

/// The device name conflicted copies carry in tests.
pub const DEVICE: &str = "laptop";

pub fn conflict_time() -> ConflictTime {
    ConflictTime {
        year: 2025,
        month: 3,
        day: 4,
        hour: 5,
        minute: 6,
        second: 7,
    }
}

/// The planner's settings, owned.
#[derive(Debug, Clone)]
pub struct Settings {
    pub names: NamePolicy,
    pub brake: DeleteBrake,
    pub confirmed: NodeIdSet,
    pub resident: NodeIdSet,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            names: NamePolicy::Posix,
            brake: DeleteBrake::OFF,
            confirmed: NodeIdSet::default(),
            resident: NodeIdSet::default(),
        }
    }
}

impl Settings {
    pub fn plan(&self, trees: &ThreeTrees) -> Plan {
        let nothing = NothingResident;
        let ctx = PlanContext {
            device: DEVICE,
            conflict_time: conflict_time(),
            names: self.names,
            brake: self.brake,
            namespace_size: trees.remote.node_count() as u64,
            residency: if self.resident.is_empty() {
                &nothing
            } else {
                &self.resident
            },
            confirmed_deletes: &self.confirmed,
        };
        Planner::plan(
            &trees.remote,
            &trees.local,
            &trees.synced,
            trees.differing_ids(),
            &ctx,
        )
    }
}

pub fn id(value: u128) -> NodeId {
    NodeId::from_u128(value)
}

/// File attributes holding `label` as content.
pub fn file_attrs(label: &str) -> Attrs {
    Attrs {
        size: label.len() as u64,
        mtime_ns: 0,
        mode: 0o644,
        content: Some(ContentHash::of(label.as_bytes())),
        ..Attrs::default()
    }
}

pub fn symlink_attrs(target: &str) -> Attrs {
    Attrs {
        size: target.len() as u64,
        symlink_target: Some(target.to_owned()),
        ..Attrs::default()
    }
}

/// Edits one tree (or all three at once) the way a user or another device would.
pub struct Editor<'a> {
    trees: Vec<&'a mut Tree>,
    /// For REMOTE: the journal head, bumped on every change.
    head: Option<&'a mut u64>,
    labels: &'a mut HashMap<ContentHash, String>,
}

impl Editor<'_> {
    /// The (first) tree being edited.
    pub fn tree(&self) -> &Tree {
        self.trees[0]
    }

    fn revision(&mut self) -> u64 {
        match self.head.as_deref_mut() {
            Some(head) => {
                *head += 1;
                *head
            }
            None => 0,
        }
    }

    /// The node at `path` (`/a/b`).
    pub fn lookup(&self, path: &str) -> NodeId {
        let tree = self.tree();
        path.split('/')
            .filter(|part| !part.is_empty())
            .fold(NodeId::ROOT, |parent, name| {
                tree.child_by_name(parent, name)
                    .unwrap_or_else(|| panic!("no {name:?} in {path:?}"))
            })
    }

    fn split(&self, path: &str) -> (NodeId, String) {
        let (dir, name) = path.rsplit_once('/').expect("an absolute path");
        (self.lookup(dir), name.to_owned())
    }

    /// Creates a node under `parent`; false if the name is taken.
    pub fn create(
        &mut self,
        id: NodeId,
        parent: NodeId,
        name: &str,
        kind: NodeKind,
        attrs: Attrs,
    ) -> bool {
        let revision = self.revision();
        let node = Node {
            id,
            parent,
            name: name.to_owned(),
            kind,
            attrs,
            revision,
        };
        self.trees
            .iter_mut()
            .all(|tree| tree.insert(node.clone()).is_ok())
    }

    pub fn mkdir(&mut self, id: u128, path: &str) {
        let (parent, name) = self.split(path);
        assert!(
            self.create(
                self::id(id),
                parent,
                &name,
                NodeKind::Directory,
                Attrs::default()
            ),
            "mkdir {path}"
        );
    }

    pub fn file(&mut self, id: u128, path: &str, content: &str) {
        let (parent, name) = self.split(path);
        let attrs = self.label(content);
        assert!(
            self.create(self::id(id), parent, &name, NodeKind::File, attrs),
            "create {path}"
        );
    }

    pub fn symlink(&mut self, id: u128, path: &str, target: &str) {
        let (parent, name) = self.split(path);
        assert!(
            self.create(
                self::id(id),
                parent,
                &name,
                NodeKind::Symlink,
                symlink_attrs(target)
            ),
            "ln {path}"
        );
    }

    fn label(&mut self, content: &str) -> Attrs {
        let attrs = file_attrs(content);
        self.labels
            .insert(attrs.content.expect("a file"), content.to_owned());
        attrs
    }

    fn update(&mut self, id: NodeId, change: impl Fn(&mut Attrs)) {
        let revision = self.revision();
        for tree in &mut self.trees {
            let mut attrs = tree.get(id).expect("the node exists").attrs.clone();
            change(&mut attrs);
            tree.set_attrs(id, attrs).expect("the node exists");
            if revision > 0 {
                tree.set_revision(id, revision).expect("the node exists");
            }
        }
    }

    /// New content (a file) or a new target (a symlink); the mtime moves on.
    pub fn write(&mut self, id: u128, content: &str) {
        self.write_id(self::id(id), content);
    }

    pub fn write_id(&mut self, id: NodeId, content: &str) {
        let kind = self.tree().get(id).expect("the node exists").kind;
        let new = match kind {
            NodeKind::File => self.label(content),
            NodeKind::Symlink => symlink_attrs(content),
            NodeKind::Directory => return,
        };
        self.update(id, |attrs| {
            let mtime_ns = attrs.mtime_ns + 1;
            *attrs = Attrs {
                mtime_ns,
                mode: attrs.mode,
                ..new.clone()
            };
        });
    }

    pub fn chmod_x(&mut self, id: u128) {
        self.toggle_executable(self::id(id));
    }

    pub fn toggle_executable(&mut self, id: NodeId) {
        self.update(id, |attrs| attrs.mode ^= 0o111);
    }

    pub fn touch(&mut self, id: NodeId, mtime_ns: i64) {
        self.update(id, |attrs| attrs.mtime_ns = mtime_ns);
    }

    /// Moves or renames a node; false if the move is impossible.
    pub fn move_to(&mut self, id: NodeId, parent: NodeId, name: &str) -> bool {
        let revision = self.revision();
        self.trees.iter_mut().all(|tree| {
            tree.move_to(id, parent, name).is_ok()
                && (revision == 0 || tree.set_revision(id, revision).is_ok())
        })
    }

    pub fn mv(&mut self, id: u128, path: &str) {
        let (parent, name) = self.split(path);
        assert!(self.move_to(self::id(id), parent, &name), "mv to {path}");
    }

    /// Deletes a node and everything under it.
    pub fn rm(&mut self, id: u128) {
        self.remove_tree(self::id(id));
    }

    pub fn remove_tree(&mut self, id: NodeId) {
        let mut order = vec![id];
        let mut next = 0;
        while next < order.len() {
            order.extend(self.tree().children(order[next]));
            next += 1;
        }
        for &node in order.iter().rev() {
            for tree in &mut self.trees {
                tree.remove(node).expect("children go first");
            }
        }
    }
}

/// Three trees plus what the tests need around them.
pub struct World {
    pub trees: ThreeTrees,
    pub settings: Settings,
    labels: HashMap<ContentHash, String>,
}

impl Default for World {
    fn default() -> World {
        World::new()
    }
}

impl World {
    pub fn new() -> World {
        World {
            trees: ThreeTrees::new(Tree::new(), Tree::new(), Tree::new()),
            settings: Settings::default(),
            labels: HashMap::new(),
        }
    }

    /// Edits all three trees alike: the state both sides agreed on (committed at revision 1).
    pub fn base(&mut self, edit: impl FnOnce(&mut Editor)) {
        let ThreeTrees {
            remote,
            local,
            synced,
            head,
        } = &mut self.trees;
        edit(&mut Editor {
            trees: vec![remote, local, synced],
            head: None,
            labels: &mut self.labels,
        });
        *head = (*head).max(1);
        for tree in [
            &mut self.trees.remote,
            &mut self.trees.local,
            &mut self.trees.synced,
        ] {
            for node in tree.iter().map(|node| node.id).collect::<Vec<_>>() {
                tree.set_revision(node, 1).expect("listed");
            }
        }
    }

    /// Changes made by another device, already pulled into REMOTE.
    pub fn remote(&mut self, edit: impl FnOnce(&mut Editor)) {
        let ThreeTrees { remote, head, .. } = &mut self.trees;
        edit(&mut Editor {
            trees: vec![remote],
            head: Some(head),
            labels: &mut self.labels,
        });
    }

    /// Changes made through the mount on this device.
    pub fn local(&mut self, edit: impl FnOnce(&mut Editor)) {
        edit(&mut Editor {
            trees: vec![&mut self.trees.local],
            head: None,
            labels: &mut self.labels,
        });
    }

    pub fn plan(&self) -> Plan {
        self.settings.plan(&self.trees)
    }

    /// Runs plans (in order) to the fixed point; returns the plans that had ops.
    pub fn sync(&mut self) -> Vec<Plan> {
        let mut plans = Vec::new();
        for _ in 0..MAX_ROUNDS {
            let plan = self.plan();
            if plan.ops.is_empty() {
                return plans;
            }
            for op in &plan.ops {
                check_delete_safety(&self.trees, &op.kind).unwrap();
                self.trees
                    .apply(op)
                    .unwrap_or_else(|error| panic!("{op:?}: {error}"));
                check_trees(&self.trees, self.settings.names).unwrap();
            }
            plans.push(plan);
        }
        panic!("no fixed point within {MAX_ROUNDS} rounds");
    }

    /// The node at `path` in `tree`.
    pub fn at(&self, tree: &Tree, path: &str) -> Option<NodeId> {
        path.split('/')
            .filter(|part| !part.is_empty())
            .try_fold(NodeId::ROOT, |parent, name| {
                tree.child_by_name(parent, name)
            })
    }

    /// One tree as sorted lines: `/dir/`, `/file = content`, `/file = content (x)`, `/link -> target`.
    pub fn listing(&self, tree: &Tree) -> Vec<String> {
        let mut lines: Vec<String> = tree
            .iter()
            .filter(|node| !node.id.is_root())
            .map(|node| {
                let path = tree.path(node.id).expect("connected");
                match node.kind {
                    NodeKind::Directory => format!("{path}/"),
                    NodeKind::Symlink => format!(
                        "{path} -> {}",
                        node.attrs.symlink_target.as_deref().unwrap_or("")
                    ),
                    NodeKind::File => {
                        let hash = node.attrs.content.expect("files have content");
                        let label = self
                            .labels
                            .get(&hash)
                            .cloned()
                            .unwrap_or_else(|| format!("{hash:?}"));
                        let x = if node.attrs.executable() { " (x)" } else { "" };
                        format!("{path} = {label}{x}")
                    }
                }
            })
            .collect();
        lines.sort();
        lines
    }

    /// The converged tree, after checking that all three trees agree.
    pub fn converged(&self) -> Vec<String> {
        let local = self.listing(&self.trees.local);
        assert_eq!(
            self.listing(&self.trees.remote),
            local,
            "REMOTE and LOCAL differ"
        );
        assert_eq!(self.listing(&self.trees.synced), local, "SYNCED lags");
        local
    }
}

pub const MAX_ROUNDS: usize = 200;

/// Delete safety, checked just before a delete runs: the node holds what SYNCED holds, and a directory
/// is empty (nothing is deleted recursively).
pub fn check_delete_safety(trees: &ThreeTrees, kind: &OpKind) -> Result<(), String> {
    let (tree, id) = match kind {
        OpKind::LocalDelete { id } => (&trees.local, *id),
        OpKind::RemoteDelete { id, .. } => (&trees.remote, *id),
        _ => return Ok(()),
    };
    let node = tree.get(id).ok_or(format!("deleting missing {id:?}"))?;
    let synced = trees
        .synced
        .get(id)
        .ok_or(format!("deleting {id:?}, which was never synced"))?;
    if !node.attrs.same_content(&synced.attrs) {
        return Err(format!("deleting {id:?} whose content differs from SYNCED"));
    }
    if tree.children(id).next().is_some() {
        return Err(format!("deleting non-empty directory {id:?}"));
    }
    Ok(())
}

/// Well-formed trees (unique ids, parents exist and are directories, no cycles, unique sibling names)
/// and, in LOCAL, only names this platform can hold.
pub fn check_trees(trees: &ThreeTrees, policy: NamePolicy) -> Result<(), String> {
    for (role, tree) in [
        ("REMOTE", &trees.remote),
        ("LOCAL", &trees.local),
        ("SYNCED", &trees.synced),
    ] {
        tree.check_invariants()
            .map_err(|error| format!("{role}: {error}"))?;
    }
    if policy != NamePolicy::Posix {
        let mut seen = BTreeMap::new();
        for node in trees.local.iter().filter(|node| !node.id.is_root()) {
            policy
                .check(&node.name)
                .map_err(|error| format!("LOCAL holds {:?}: {error}", node.name))?;
            let key = (node.parent, policy.fold(&node.name).into_owned());
            if let Some(other) = seen.insert(key, node.id) {
                return Err(format!(
                    "LOCAL holds {:?} and {other:?} under one folded name",
                    node.id
                ));
            }
        }
    }
    Ok(())
}

/// A small deterministic random source (SplitMix64), so shuffles come from the test case's seed.
pub struct Shuffle(u64);

impl Shuffle {
    pub fn new(seed: u64) -> Shuffle {
        Shuffle(seed)
    }

    pub fn below(&mut self, bound: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) % bound as u64) as usize
    }
}

/// A random order of a plan's ops that respects their dependencies.
pub fn shuffled_order(plan: &Plan, shuffle: &mut Shuffle) -> Vec<usize> {
    let mut waiting: Vec<usize> = plan.ops.iter().map(|op| op.deps.len()).collect();
    let mut dependents = vec![Vec::new(); plan.ops.len()];
    for op in &plan.ops {
        for dep in &op.deps {
            dependents[dep.0 as usize].push(op.id.0 as usize);
        }
    }
    let mut ready: Vec<usize> = (0..plan.ops.len()).filter(|&op| waiting[op] == 0).collect();
    let mut order = Vec::with_capacity(plan.ops.len());
    while !ready.is_empty() {
        let op = ready.swap_remove(shuffle.below(ready.len()));
        order.push(op);
        for &dependent in &dependents[op] {
            waiting[dependent] -= 1;
            if waiting[dependent] == 0 {
                ready.push(dependent);
            }
        }
    }
    assert_eq!(
        order.len(),
        plan.ops.len(),
        "the plan's dependencies have a cycle"
    );
    order
}

/// How much of each plan a simulated round runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rounds {
    /// Every op of every plan (in a random dependency order).
    Whole,
    /// A random, dependency-closed part of every plan, then re-plan (a crash or a restart).
    Interrupted,
}

/// The end of a simulation.
#[derive(Debug)]
pub struct Outcome {
    pub trees: ThreeTrees,
    pub rounds: usize,
    /// Reports of the last (empty) plan: what stays different.
    pub reported: Vec<Report>,
    pub held: NodeIdSet,
    /// Every op that ran.
    pub ops: Vec<OpKind>,
}

/// Plans and applies (shuffled) until a plan is empty, checking invariants after every op.
pub fn simulate(
    mut trees: ThreeTrees,
    settings: &Settings,
    rounds: Rounds,
    seed: u64,
) -> Result<Outcome, String> {
    let mut shuffle = Shuffle::new(seed);
    let mut ops = Vec::new();
    let limit = match rounds {
        Rounds::Whole => MAX_ROUNDS,
        Rounds::Interrupted => MAX_ROUNDS * 4,
    };
    let trace = std::env::var_os("BVFS_PLANNER_TRACE").is_some();
    for round in 0..limit {
        let plan = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| settings.plan(&trees)))
            .map_err(|panic| {
                let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
                format!(
                    "round {round}: the planner panicked: {message}\n{}",
                    describe(&trees)
                )
            })?;
        if trace {
            eprintln!("--- round {round}\n{}{plan:#?}", describe(&trees));
        }
        if plan != settings.plan(&trees) {
            return Err("the same trees gave two different plans".into());
        }
        for op in &plan.ops {
            if op.deps.iter().any(|dep| dep.0 >= op.id.0) {
                return Err(format!("op {:?} comes before a dependency", op.id));
            }
        }
        if plan.ops.is_empty() {
            let held = plan.held_deletes.iter().map(|held| held.id).collect();
            return Ok(Outcome {
                trees,
                rounds: round,
                reported: plan.reported,
                held,
                ops,
            });
        }
        let order = shuffled_order(&plan, &mut shuffle);
        let run = match rounds {
            Rounds::Whole => order.len(),
            Rounds::Interrupted => 1 + shuffle.below(order.len()),
        };
        for &position in &order[..run] {
            let op = &plan.ops[position];
            check_delete_safety(&trees, &op.kind)?;
            trees
                .apply(op)
                .map_err(|error| format!("round {round}: {op:?}: {error}"))?;
            check_trees(&trees, settings.names)
                .map_err(|error| format!("round {round}, after {op:?}: {error}"))?;
            ops.push(op.kind.clone());
        }
    }
    Err(format!("no fixed point within {limit} rounds"))
}

/// All three trees as text, for failure messages: `#id /path kind content`.
pub fn describe(trees: &ThreeTrees) -> String {
    [
        ("REMOTE", &trees.remote),
        ("LOCAL", &trees.local),
        ("SYNCED", &trees.synced),
    ]
    .iter()
    .map(|(role, tree)| format!("{role}:\n{}", describe_tree(tree)))
    .collect()
}

/// One tree as text, one node a line, by path.
pub fn describe_tree(tree: &Tree) -> String {
    let mut lines: Vec<(String, String)> = tree
        .iter()
        .filter(|node| !node.id.is_root())
        .map(|node| {
            let what = match node.kind {
                NodeKind::Directory => "/".to_owned(),
                NodeKind::Symlink => {
                    format!("-> {}", node.attrs.symlink_target.as_deref().unwrap_or(""))
                }
                NodeKind::File => {
                    format!(
                        "= {}",
                        node.attrs
                            .content
                            .map(|hash| hash.to_hex()[..6].to_owned())
                            .unwrap_or_default()
                    )
                }
            };
            let x = if node.attrs.executable() { " x" } else { "" };
            let path = tree.path(node.id).unwrap_or_default();
            let line = format!(
                "  {:?} {path} {what}{x} mtime={}\n",
                node.id, node.attrs.mtime_ns
            );
            (path, line)
        })
        .collect();
    lines.sort();
    lines.into_iter().map(|(_, line)| line).collect()
}

/// A tree without revisions, for comparing end states.
pub fn shape(tree: &Tree) -> BTreeMap<NodeId, (NodeId, String, NodeKind, Attrs)> {
    tree.iter()
        .map(|node| {
            (
                node.id,
                (
                    node.parent,
                    node.name.clone(),
                    node.kind,
                    node.attrs.clone(),
                ),
            )
        })
        .collect()
}

//! Property tests of the planner, CanopyCheck style: one random tree, mutated twice into correlated
//! REMOTE and LOCAL trees (SYNCED is the original), planned and applied in random dependency orders
//! until a plan is empty. Every case asserts the seven properties of issue 3:
//!
//! 1. a fixed point within 200 rounds, no panic ([`planner_support::simulate`]);
//! 2. convergence: REMOTE = LOCAL = SYNCED, except what the plan reports as held ([`converged`]);
//! 3. no content lost ([`nothing_lost`]);
//! 4. one-sided changes arrive unchanged, identical changes transfer nothing ([`one_sided`]);
//! 5. well-formed trees after every op ([`planner_support::check_trees`], inside `simulate`);
//! 6. re-entrancy: another shuffle, and a run interrupted and re-planned after every partial plan,
//!    end in the same trees ([`same_end`]);
//! 7. delete safety, checked before every delete ([`planner_support::check_delete_safety`]), and the
//!    bulk-delete brake ([`the_brake_holds_deletes_until_confirmed`]).
//!
//! `BVFS_PLANNER_CASES=1000000 cargo test -p bvfs-engine --release --test planner_props` runs the long
//! mode; the default is 10,000 cases.

mod planner_support;

use std::collections::HashSet;

use bvfs_engine::model::{Attrs, NamePolicy, Node, NodeId, NodeIdSet, NodeKind};
use bvfs_engine::planner::{DeleteBrake, OpKind, Report, ThreeTrees};
use bvfs_engine::tree::{Tree, TreeView};
use planner_support::{
    Editor, Outcome, Rounds, Settings, World, file_attrs, shape, simulate, symlink_attrs,
};
use proptest::collection::vec;
use proptest::prelude::*;

/// Names that collide often: exactly, after case folding ("a"/"A"), or not at all on Windows. The
/// first tree also uses a few more, so that it grows larger than seven nodes per directory.
const NAMES: [&str; 7] = ["a", "b", "c", "a.txt", "A", "con", "x:y"];
const MORE_NAMES: [&str; 6] = ["d", "e", "f", "g", "h", "i"];

#[derive(Debug, Clone, Copy)]
enum Kind {
    File,
    Directory,
    Symlink,
}

/// One user action; numbers pick nodes, directories and names modulo what exists.
#[derive(Debug, Clone)]
enum Edit {
    Create {
        parent: u8,
        name: u8,
        kind: Kind,
        content: u8,
    },
    Write {
        node: u8,
        content: u8,
    },
    Chmod {
        node: u8,
    },
    Touch {
        node: u8,
        mtime: u8,
    },
    Move {
        node: u8,
        parent: u8,
        name: u8,
    },
    Delete {
        node: u8,
    },
    /// Delete a node and create one of another kind at its name.
    Replace {
        node: u8,
        kind: Kind,
        content: u8,
    },
    /// Two nodes trade places (through a temporary name, as a user would).
    Swap {
        node: u8,
        other: u8,
    },
}

/// Which sides change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Both,
    RemoteOnly,
    LocalOnly,
    /// The same changes on both sides (same new ids too).
    Identical,
}

#[derive(Debug, Clone)]
struct Case {
    base: Vec<Edit>,
    remote: Vec<Edit>,
    local: Vec<Edit>,
    mode: Mode,
    windows: bool,
    seed: u64,
}

/// A case in one line, to replay it: `BVFS_PLANNER_REPLAY='<line>' cargo test -p bvfs-engine --test
/// planner_props replay -- --ignored --nocapture` (with `BVFS_PLANNER_TRACE=1` to print every plan).
impl std::fmt::Display for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = |kind: &Kind| match kind {
            Kind::File => 'F',
            Kind::Directory => 'D',
            Kind::Symlink => 'S',
        };
        let edits = |edits: &[Edit]| {
            edits
                .iter()
                .map(|edit| match edit {
                    Edit::Create {
                        parent,
                        name,
                        kind: k,
                        content,
                    } => format!("c{parent},{name},{},{content}", kind(k)),
                    Edit::Write { node, content } => format!("w{node},{content}"),
                    Edit::Chmod { node } => format!("x{node}"),
                    Edit::Touch { node, mtime } => format!("t{node},{mtime}"),
                    Edit::Move { node, parent, name } => format!("m{node},{parent},{name}"),
                    Edit::Delete { node } => format!("d{node}"),
                    Edit::Replace {
                        node,
                        kind: k,
                        content,
                    } => format!("r{node},{},{content}", kind(k)),
                    Edit::Swap { node, other } => format!("s{node},{other}"),
                })
                .collect::<Vec<_>>()
                .join(";")
        };
        let mode = match self.mode {
            Mode::Both => 'B',
            Mode::RemoteOnly => 'R',
            Mode::LocalOnly => 'L',
            Mode::Identical => 'I',
        };
        write!(
            f,
            "{}|{}|{}|{mode}|{}|{}",
            edits(&self.base),
            edits(&self.remote),
            edits(&self.local),
            u8::from(self.windows),
            self.seed
        )
    }
}

impl std::str::FromStr for Case {
    type Err = String;

    fn from_str(line: &str) -> Result<Case, String> {
        let fields: Vec<&str> = line.trim().split('|').collect();
        let [base, remote, local, mode, windows, seed] = fields[..] else {
            return Err("six fields".into());
        };
        let kind = |text: &str| match text {
            "F" => Ok(Kind::File),
            "D" => Ok(Kind::Directory),
            "S" => Ok(Kind::Symlink),
            other => Err(format!("kind {other:?}")),
        };
        let edits = |text: &str| -> Result<Vec<Edit>, String> {
            text.split(';')
                .filter(|edit| !edit.is_empty())
                .map(|edit| {
                    let (tag, rest) = edit.split_at(1);
                    let parts: Vec<&str> = rest.split(',').collect();
                    let n = |i: usize| {
                        parts
                            .get(i)
                            .and_then(|part| part.parse::<u8>().ok())
                            .ok_or(format!("bad {edit:?}"))
                    };
                    Ok(match tag {
                        "c" => Edit::Create {
                            parent: n(0)?,
                            name: n(1)?,
                            kind: kind(parts[2])?,
                            content: n(3)?,
                        },
                        "w" => Edit::Write {
                            node: n(0)?,
                            content: n(1)?,
                        },
                        "x" => Edit::Chmod { node: n(0)? },
                        "t" => Edit::Touch {
                            node: n(0)?,
                            mtime: n(1)?,
                        },
                        "m" => Edit::Move {
                            node: n(0)?,
                            parent: n(1)?,
                            name: n(2)?,
                        },
                        "d" => Edit::Delete { node: n(0)? },
                        "r" => Edit::Replace {
                            node: n(0)?,
                            kind: kind(parts[1])?,
                            content: n(2)?,
                        },
                        "s" => Edit::Swap {
                            node: n(0)?,
                            other: n(1)?,
                        },
                        other => return Err(format!("edit {other:?}")),
                    })
                })
                .collect()
        };
        let mode = match mode {
            "B" => Mode::Both,
            "R" => Mode::RemoteOnly,
            "L" => Mode::LocalOnly,
            "I" => Mode::Identical,
            other => return Err(format!("mode {other:?}")),
        };
        Ok(Case {
            base: edits(base)?,
            remote: edits(remote)?,
            local: edits(local)?,
            mode,
            windows: windows == "1",
            seed: seed.parse().map_err(|_| "seed")?,
        })
    }
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![3 => Just(Kind::File), 2 => Just(Kind::Directory), 1 => Just(Kind::Symlink)]
}

fn create() -> impl Strategy<Value = Edit> {
    (any::<u8>(), any::<u8>(), kind(), any::<u8>()).prop_map(|(parent, name, kind, content)| {
        Edit::Create {
            parent,
            name,
            kind,
            content,
        }
    })
}

/// Picks a node: mostly among the first few, so both sides often touch the same ones.
fn node() -> impl Strategy<Value = u8> {
    prop_oneof![2 => 0u8..6, 1 => any::<u8>()]
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        3 => create(),
        3 => (node(), any::<u8>()).prop_map(|(node, content)| Edit::Write { node, content }),
        1 => node().prop_map(|node| Edit::Chmod { node }),
        1 => (node(), any::<u8>()).prop_map(|(node, mtime)| Edit::Touch { node, mtime }),
        4 => (node(), node(), any::<u8>()).prop_map(|(node, parent, name)| Edit::Move { node, parent, name }),
        2 => node().prop_map(|node| Edit::Delete { node }),
        1 => (node(), kind(), any::<u8>()).prop_map(|(node, kind, content)| Edit::Replace { node, kind, content }),
        1 => (node(), node()).prop_map(|(node, other)| Edit::Swap { node, other }),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    let mode = prop_oneof![7 => Just(Mode::Both), 1 => Just(Mode::RemoteOnly), 1 => Just(Mode::LocalOnly), 1 => Just(Mode::Identical)];
    (
        vec(create(), 0..32),
        vec(edit(), 0..12),
        vec(edit(), 0..12),
        mode,
        prop::bool::weighted(0.2),
        any::<u64>(),
    )
        .prop_map(|(base, remote, local, mode, windows, seed)| Case {
            base,
            remote,
            local,
            mode,
            windows,
            seed,
        })
}

/// Applies generated edits to one side, picking nodes by number.
struct User<'e, 'a> {
    editor: &'e mut Editor<'a>,
    /// The platform rule this side's names obey (REMOTE: the server's only).
    policy: Option<NamePolicy>,
    /// How many names creates pick from.
    names: usize,
    next_id: &'e mut u128,
}

impl User<'_, '_> {
    fn nodes(&self) -> Vec<NodeId> {
        let mut nodes: Vec<NodeId> = self
            .editor
            .tree()
            .iter()
            .map(|node| node.id)
            .filter(|id| !id.is_root())
            .collect();
        nodes.sort_unstable();
        nodes
    }

    fn dirs(&self) -> Vec<NodeId> {
        let mut dirs: Vec<NodeId> = self
            .editor
            .tree()
            .iter()
            .filter(|node| node.is_dir())
            .map(|node| node.id)
            .collect();
        dirs.sort_unstable();
        dirs
    }

    fn pick(list: &[NodeId], selector: u8) -> Option<NodeId> {
        (!list.is_empty()).then(|| list[selector as usize % list.len()])
    }

    /// Whether this side may call a child of `parent` `name` (other than `id` itself).
    fn name_ok(&self, parent: NodeId, name: &str, id: Option<NodeId>) -> bool {
        let Some(policy) = self.policy else {
            return true;
        };
        let tree = self.editor.tree();
        policy.check(name).is_ok()
            && tree.children(parent).all(|child| {
                Some(child) == id
                    || policy.fold(&tree.get(child).expect("a child").name) != policy.fold(name)
            })
    }

    fn create(&mut self, parent: NodeId, name: &str, kind: Kind, content: u8) {
        if !self.name_ok(parent, name, None) {
            return;
        }
        let (kind, attrs) = match kind {
            Kind::File => (NodeKind::File, file_attrs(&format!("c{}", content % 6))),
            Kind::Directory => (NodeKind::Directory, Attrs::default()),
            Kind::Symlink => (
                NodeKind::Symlink,
                symlink_attrs(&format!("t{}", content % 3)),
            ),
        };
        *self.next_id += 1;
        self.editor
            .create(NodeId::from_u128(*self.next_id), parent, name, kind, attrs);
    }

    fn apply(&mut self, edit: &Edit) {
        let (nodes, dirs) = (self.nodes(), self.dirs());
        match *edit {
            Edit::Create {
                parent,
                name,
                kind,
                content,
            } => {
                let parent = Self::pick(&dirs, parent).expect("the root is a directory");
                let name = name as usize % self.names;
                let name = NAMES
                    .get(name)
                    .unwrap_or_else(|| &MORE_NAMES[name - NAMES.len()]);
                self.create(parent, name, kind, content);
            }
            Edit::Write { node, content } => {
                if let Some(node) = Self::pick(&nodes, node) {
                    let is_file = self
                        .editor
                        .tree()
                        .get(node)
                        .is_some_and(|node| node.kind == NodeKind::File);
                    let label = if is_file {
                        format!("c{}", content % 6)
                    } else {
                        format!("t{}", content % 3)
                    };
                    self.editor.write_id(node, &label);
                }
            }
            Edit::Chmod { node } => {
                if let Some(node) = Self::pick(&nodes, node) {
                    self.editor.toggle_executable(node);
                }
            }
            Edit::Touch { node, mtime } => {
                if let Some(node) = Self::pick(&nodes, node) {
                    self.editor.touch(node, i64::from(mtime));
                }
            }
            Edit::Move { node, parent, name } => {
                let (Some(node), Some(parent)) =
                    (Self::pick(&nodes, node), Self::pick(&dirs, parent))
                else {
                    return;
                };
                let name = NAMES[name as usize % NAMES.len()];
                if self.name_ok(parent, name, Some(node)) {
                    self.editor.move_to(node, parent, name);
                }
            }
            Edit::Delete { node } => {
                if let Some(node) = Self::pick(&nodes, node) {
                    self.editor.remove_tree(node);
                }
            }
            Edit::Replace {
                node,
                kind,
                content,
            } => {
                let Some(node) = Self::pick(&nodes, node) else {
                    return;
                };
                let old: Node = self.editor.tree().get(node).expect("picked").clone();
                self.editor.remove_tree(node);
                let kind = match (kind, old.kind) {
                    (Kind::Directory, NodeKind::Directory) => Kind::File,
                    (Kind::File, NodeKind::File) | (Kind::Symlink, NodeKind::Symlink) => {
                        Kind::Directory
                    }
                    (kind, _) => kind,
                };
                self.create(old.parent, &old.name, kind, content);
            }
            Edit::Swap { node, other } => {
                let (Some(a), Some(b)) = (Self::pick(&nodes, node), Self::pick(&nodes, other))
                else {
                    return;
                };
                let tree = self.editor.tree();
                let (Some(a_node), Some(b_node)) = (tree.get(a).cloned(), tree.get(b).cloned())
                else {
                    return;
                };
                if a == b || tree.is_within(a_node.parent, b) || tree.is_within(b_node.parent, a) {
                    return;
                }
                let parked = "swap";
                if self.name_ok(a_node.parent, parked, Some(a))
                    && self.editor.move_to(a, a_node.parent, parked)
                {
                    self.editor.move_to(b, a_node.parent, &a_node.name);
                    self.editor.move_to(a, b_node.parent, &b_node.name);
                }
            }
        }
    }
}

/// The three trees of a case.
fn build(case: &Case) -> (ThreeTrees, Settings) {
    let policy = if case.windows {
        NamePolicy::Windows
    } else {
        NamePolicy::Posix
    };
    let local_rule = case.windows.then_some(NamePolicy::Windows);
    let mut world = World::new();
    let mut next_base = 0;
    world.base(|editor| {
        let mut user = User {
            editor,
            policy: local_rule,
            names: NAMES.len() + MORE_NAMES.len(),
            next_id: &mut next_base,
        };
        case.base.iter().for_each(|edit| user.apply(edit));
    });
    let (mut next_remote, mut next_local) = (1000, 2000);
    let (remote, local): (&[Edit], &[Edit]) = match case.mode {
        Mode::Both => (&case.remote, &case.local),
        Mode::RemoteOnly => (&case.remote, &[]),
        Mode::LocalOnly => (&[], &case.local),
        Mode::Identical => (&case.remote, &[]),
    };
    // Identical changes happen on both sides, so they obey this platform's rule too.
    let remote_rule = if case.mode == Mode::Identical {
        local_rule
    } else {
        None
    };
    world.remote(|editor| {
        let mut user = User {
            editor,
            policy: remote_rule,
            names: NAMES.len(),
            next_id: &mut next_remote,
        };
        remote.iter().for_each(|edit| user.apply(edit));
    });
    world.local(|editor| {
        let mut user = User {
            editor,
            policy: local_rule,
            names: NAMES.len(),
            next_id: &mut next_local,
        };
        local.iter().for_each(|edit| user.apply(edit));
    });
    if case.mode == Mode::Identical {
        world.trees.local = world.trees.remote.clone();
    }
    (
        world.trees,
        Settings {
            names: policy,
            ..Settings::default()
        },
    )
}

/// Property 2: all three trees agree, except nodes the last plan reports as held.
fn converged(outcome: &Outcome, policy: NamePolicy) -> Result<(), String> {
    let trees = &outcome.trees;
    if policy == NamePolicy::Posix && !outcome.reported.is_empty() {
        return Err(format!("reports on Linux: {:?}", outcome.reported));
    }
    let (mut skip, mut placed_elsewhere) = (NodeIdSet::default(), NodeIdSet::default());
    for report in &outcome.reported {
        let id = report.node();
        match report {
            Report::KindMismatch { .. } => {
                skip.insert(id);
            }
            _ if trees.local.get(id).is_none() => skip.extend(subtree(&trees.remote, id)),
            _ => {
                placed_elsewhere.insert(id);
            }
        }
    }
    let all: NodeIdSet = [&trees.remote, &trees.local, &trees.synced]
        .iter()
        .flat_map(|tree| tree.iter().map(|node| node.id))
        .filter(|id| !skip.contains(id))
        .collect();
    for id in all {
        let (Some(remote), Some(local), Some(synced)) = (
            trees.remote.get(id),
            trees.local.get(id),
            trees.synced.get(id),
        ) else {
            return Err(format!(
                "{id:?} is only in some trees: {:?}",
                [&trees.remote, &trees.local, &trees.synced].map(|tree| tree.get(id))
            ));
        };
        let same_place = |a: &Node, b: &Node| a.parent == b.parent && a.name == b.name;
        let agree = remote.kind == local.kind
            && remote.attrs == local.attrs
            && remote.attrs == synced.attrs
            && (placed_elsewhere.contains(&id)
                || (same_place(remote, local) && same_place(remote, synced)));
        if !agree {
            return Err(format!(
                "{id:?} differs: {remote:?} / {local:?} / {synced:?}"
            ));
        }
    }
    Ok(())
}

fn subtree(tree: &Tree, id: NodeId) -> Vec<NodeId> {
    let mut nodes = vec![id];
    let mut next = 0;
    while next < nodes.len() {
        nodes.extend(tree.children(nodes[next]));
        next += 1;
    }
    nodes
}

/// What a file or symlink holds.
fn content(node: &Node) -> Option<(NodeKind, Attrs)> {
    (!node.is_dir()).then(|| {
        let attrs = Attrs {
            content: node.attrs.content,
            symlink_target: node.attrs.symlink_target.clone(),
            ..Attrs::default()
        };
        (node.kind, attrs)
    })
}

/// Property 3: every content live at the start is live at the end, unless the other side replaced or
/// deleted it after seeing it (it equals SYNCED's).
fn nothing_lost(start: &ThreeTrees, end: &ThreeTrees) -> Result<(), String> {
    let live: HashSet<(NodeKind, Attrs)> = end
        .remote
        .iter()
        .chain(end.local.iter())
        .filter_map(content)
        .collect();
    for (side, other) in [(&start.remote, &start.local), (&start.local, &start.remote)] {
        for node in side.iter() {
            let Some(held) = content(node) else { continue };
            let seen = start.synced.get(node.id).is_some_and(|synced| {
                synced.kind == node.kind && synced.attrs.same_content(&node.attrs)
            });
            let replaced = other
                .get(node.id)
                .is_none_or(|other| !other.attrs.same_content(&node.attrs));
            let deleted_knowingly = seen && replaced;
            if !deleted_knowingly && !live.contains(&held) {
                return Err(format!("the content of {node:?} is lost"));
            }
        }
    }
    Ok(())
}

/// Property 4.
fn one_sided(mode: Mode, start: &ThreeTrees, outcome: &Outcome) -> Result<(), String> {
    let end = shape(&outcome.trees.local);
    let sides = |side| {
        outcome
            .ops
            .iter()
            .filter(move |kind| kind.side() == Some(side))
    };
    match mode {
        Mode::Both => Ok(()),
        Mode::LocalOnly if end != shape(&start.local) => {
            Err("a local-only change did not arrive unchanged".into())
        }
        Mode::LocalOnly => match sides(bvfs_engine::planner::Side::Local).next() {
            Some(op) => Err(format!("local-only changes made a local op: {op:?}")),
            None => Ok(()),
        },
        Mode::RemoteOnly if !outcome.reported.is_empty() => Ok(()),
        Mode::RemoteOnly if end != shape(&start.remote) => {
            Err("a remote-only change did not arrive unchanged".into())
        }
        Mode::RemoteOnly => match sides(bvfs_engine::planner::Side::Remote).next() {
            Some(op) => Err(format!("remote-only changes made a remote op: {op:?}")),
            None => Ok(()),
        },
        Mode::Identical if end != shape(&start.remote) => {
            Err("identical changes changed something".into())
        }
        Mode::Identical => match outcome
            .ops
            .iter()
            .find(|kind| **kind != OpKind::RecordSynced)
        {
            Some(op) => Err(format!("identical changes made {op:?}")),
            None => Ok(()),
        },
    }
}

/// Property 6: two runs end in the same trees.
fn same_end(a: &Outcome, b: &Outcome, what: &str) -> Result<(), String> {
    for (tree_a, tree_b, role) in [
        (&a.trees.remote, &b.trees.remote, "REMOTE"),
        (&a.trees.local, &b.trees.local, "LOCAL"),
        (&a.trees.synced, &b.trees.synced, "SYNCED"),
    ] {
        if shape(tree_a) != shape(tree_b) {
            let (a, b) = (shape(tree_a), shape(tree_b));
            let differing: Vec<_> = a
                .iter()
                .filter(|(id, node)| b.get(id) != Some(node))
                .map(|(id, node)| (id, node, b.get(id)))
                .collect();
            let only_b: Vec<_> = b.keys().filter(|id| !a.contains_key(id)).collect();
            return Err(format!(
                "{what} ends with another {role}: {differing:?}, and only in the other: {only_b:?}"
            ));
        }
    }
    Ok(())
}

fn check(case: &Case) -> Result<(), String> {
    let (start, settings) = build(case);
    check_from(&start, &settings, case).map_err(|error| {
        format!(
            "{error}\n{}replay: BVFS_PLANNER_REPLAY='{case}'",
            planner_support::describe(&start)
        )
    })
}

/// The brake (property 7) with `max_deletes`: held deletes never run, content still syncs, and once the
/// user confirms them the trees converge.
fn check_brake(case: &Case, max_deletes: u64) -> Result<(), String> {
    let (start, mut settings) = build(case);
    let context = |error: String| {
        format!("{error}\nreplay: BVFS_PLANNER_BRAKE={max_deletes} BVFS_PLANNER_REPLAY='{case}'")
    };
    settings.brake = DeleteBrake {
        max_deletes,
        max_fraction: f64::INFINITY,
        fraction_floor: u64::MAX,
    };
    let braked = simulate(start, &settings, Rounds::Whole, case.seed).map_err(context)?;
    for kind in &braked.ops {
        if let OpKind::LocalDelete { id } | OpKind::RemoteDelete { id, .. } = kind
            && braked.held.contains(id)
        {
            return Err(context(format!("held delete of {id:?} ran")));
        }
    }
    for local in braked.trees.local.iter() {
        // Content syncs while deletes wait, unless it waits for a move that waits for a delete.
        if let Some(remote) = braked.trees.remote.get(local.id)
            && remote.parent == local.parent
            && remote.name == local.name
            && local.attrs != remote.attrs
        {
            return Err(context(format!(
                "content of {:?} waits for the brake",
                local.id
            )));
        }
    }
    settings.confirmed = braked.held.clone();
    settings.brake = DeleteBrake::OFF;
    let done = simulate(braked.trees, &settings, Rounds::Whole, case.seed).map_err(context)?;
    converged(&done, settings.names).map_err(context)
}

/// Replays one case given on one line (see [`Case`]'s `Display`); with `BVFS_PLANNER_BRAKE`, the brake
/// property.
#[test]
#[ignore]
fn replay() {
    let line = std::env::var("BVFS_PLANNER_REPLAY").expect("BVFS_PLANNER_REPLAY holds a case");
    let case: Case = line.parse().expect("a case line");
    let result = match std::env::var("BVFS_PLANNER_BRAKE") {
        Ok(max_deletes) => check_brake(&case, max_deletes.parse().expect("a number")),
        Err(_) => check(&case),
    };
    if let Err(error) = result {
        panic!("{error}");
    }
}

fn check_from(start: &ThreeTrees, settings: &Settings, case: &Case) -> Result<(), String> {
    let start = start.clone();
    planner_support::check_trees(&start, settings.names)
        .map_err(|error| format!("generated: {error}"))?;
    let whole = simulate(start.clone(), settings, Rounds::Whole, case.seed)?;
    converged(&whole, settings.names)?;
    nothing_lost(&start, &whole.trees)?;
    one_sided(case.mode, &start, &whole)?;
    let reshuffled = simulate(start.clone(), settings, Rounds::Whole, !case.seed)
        .map_err(|error| format!("reshuffled: {error}"))?;
    same_end(&whole, &reshuffled, "another shuffle")?;
    let interrupted = simulate(start, settings, Rounds::Interrupted, case.seed)
        .map_err(|error| format!("interrupted: {error}"))?;
    same_end(&whole, &interrupted, "an interrupted run")
}

fn cases() -> u32 {
    std::env::var("BVFS_PLANNER_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(10_000)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        max_shrink_iters: 20_000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn plans_converge_without_losing_anything(case in case()) {
        check(&case).map_err(TestCaseError::fail)?;
    }

    /// Property 7, the brake: deletes beyond the threshold wait (while everything else syncs) until the
    /// user confirms them; then the trees converge.
    #[test]
    fn the_brake_holds_deletes_until_confirmed(case in case(), max_deletes in 0u64..3) {
        check_brake(&case, max_deletes).map_err(TestCaseError::fail)?;
    }
}

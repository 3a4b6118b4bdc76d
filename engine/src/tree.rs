//! One tree of nodes: the read interface the planner consumes, and an in-memory implementation.
//!
//! The planner reads REMOTE, LOCAL and SYNCED through [`TreeView`], one node or one directory at a time,
//! so a SQLite-backed view can serve it without loading or copying whole trees. [`Tree`] is the in-memory
//! implementation used by tests, benchmarks and simulations; its mutations check the invariants every
//! tree keeps (unique ids, parents exist and are directories, unique names among siblings, no cycles,
//! only empty directories are removed).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use crate::model::{Attrs, NameError, Node, NodeId, NodeIdMap, validate_name};

/// Read access to one tree: what the planner needs and nothing that scans the whole tree.
pub trait TreeView {
    /// The node with this id, if the tree has it.
    fn get(&self, id: NodeId) -> Option<Cow<'_, Node>>;

    /// The child of `parent` called exactly `name`.
    fn child_by_name(&self, parent: NodeId, name: &str) -> Option<NodeId>;

    /// The ids of `parent`'s children, in name order (the planner relies on a deterministic order).
    fn children(&self, parent: NodeId) -> impl Iterator<Item = NodeId> + '_;

    fn contains(&self, id: NodeId) -> bool {
        self.get(id).is_some()
    }
}

/// Why a tree refused a mutation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TreeError {
    #[error("node {0} does not exist")]
    NotFound(NodeId),
    #[error("node {0} already exists")]
    AlreadyExists(NodeId),
    #[error("the root cannot be moved, renamed, re-identified or removed")]
    Root,
    #[error("parent {0} does not exist")]
    ParentNotFound(NodeId),
    #[error("parent {0} is not a directory")]
    ParentNotDirectory(NodeId),
    #[error("{parent} already has a child called {name:?} ({taken_by})")]
    NameTaken {
        parent: NodeId,
        name: String,
        taken_by: NodeId,
    },
    #[error("invalid name {name:?}: {error}")]
    InvalidName { name: String, error: NameError },
    #[error("moving {id} under {parent} would put it inside itself")]
    Cycle { id: NodeId, parent: NodeId },
    #[error("directory {0} is not empty; remove its children first")]
    NotEmpty(NodeId),
    #[error("node {0} cannot change kind; delete it and create a new node")]
    KindChange(NodeId),
}

/// An in-memory tree. Cloning it is a deep copy.
#[derive(Clone)]
pub struct Tree {
    nodes: NodeIdMap<Node>,
    /// Children of each non-empty directory, by name.
    children: NodeIdMap<BTreeMap<Box<str>, NodeId>>,
}

impl Default for Tree {
    fn default() -> Tree {
        Tree::new()
    }
}

impl fmt::Debug for Tree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut nodes: Vec<&Node> = self.nodes.values().collect();
        nodes.sort_by_key(|node| node.id);
        f.debug_list().entries(nodes).finish()
    }
}

impl Tree {
    /// A tree holding only the root.
    pub fn new() -> Tree {
        let mut nodes = NodeIdMap::default();
        nodes.insert(NodeId::ROOT, Node::root());
        Tree {
            nodes,
            children: NodeIdMap::default(),
        }
    }

    /// How many nodes the tree holds, the root included.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    pub fn get(&self, id: NodeId) -> Option<&Node> {
        self.nodes.get(&id)
    }

    /// Every node, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }

    /// The slash-separated path of `id` from the root (`/` for the root itself).
    pub fn path(&self, id: NodeId) -> Option<String> {
        let mut names = Vec::new();
        let mut current = self.nodes.get(&id)?;
        while !current.id.is_root() {
            names.push(current.name.as_str());
            current = self.nodes.get(&current.parent)?;
        }
        names.reverse();
        Some(format!("/{}", names.join("/")))
    }

    /// Whether `ancestor` is `id` itself or one of its ancestors.
    pub fn is_within(&self, id: NodeId, ancestor: NodeId) -> bool {
        let mut current = id;
        loop {
            if current == ancestor {
                return true;
            }
            if current.is_root() {
                return false;
            }
            match self.nodes.get(&current) {
                Some(node) => current = node.parent,
                None => return false,
            }
        }
    }

    /// Adds a node under an existing directory, at a free name.
    pub fn insert(&mut self, node: Node) -> Result<(), TreeError> {
        if self.nodes.contains_key(&node.id) {
            return Err(TreeError::AlreadyExists(node.id));
        }
        self.check_place(node.id, node.parent, &node.name)?;
        self.link(node.parent, &node.name, node.id);
        self.nodes.insert(node.id, node);
        Ok(())
    }

    /// Replaces a node's attributes.
    pub fn set_attrs(&mut self, id: NodeId, attrs: Attrs) -> Result<(), TreeError> {
        self.nodes
            .get_mut(&id)
            .ok_or(TreeError::NotFound(id))?
            .attrs = attrs;
        Ok(())
    }

    pub fn set_revision(&mut self, id: NodeId, revision: u64) -> Result<(), TreeError> {
        self.nodes
            .get_mut(&id)
            .ok_or(TreeError::NotFound(id))?
            .revision = revision;
        Ok(())
    }

    /// Moves and/or renames a node; its subtree comes along.
    pub fn move_to(&mut self, id: NodeId, parent: NodeId, name: &str) -> Result<(), TreeError> {
        if id.is_root() {
            return Err(TreeError::Root);
        }
        let node = self.nodes.get(&id).ok_or(TreeError::NotFound(id))?;
        if node.parent == parent && node.name == name {
            return Ok(());
        }
        self.check_place(id, parent, name)?;
        if self.is_within(parent, id) {
            return Err(TreeError::Cycle { id, parent });
        }
        let (old_parent, old_name) = (node.parent, node.name.clone());
        self.unlink(old_parent, &old_name);
        self.link(parent, name, id);
        let node = self.nodes.get_mut(&id).expect("checked above");
        node.parent = parent;
        node.name = name.to_owned();
        Ok(())
    }

    /// Removes one node. A directory must be empty: the tree never deletes recursively.
    pub fn remove(&mut self, id: NodeId) -> Result<Node, TreeError> {
        if id.is_root() {
            return Err(TreeError::Root);
        }
        if self.children.contains_key(&id) {
            return Err(TreeError::NotEmpty(id));
        }
        let node = self.nodes.remove(&id).ok_or(TreeError::NotFound(id))?;
        self.unlink(node.parent, &node.name);
        Ok(node)
    }

    /// Gives a node a new id in place; its children follow it.
    pub fn reidentify(&mut self, old: NodeId, new: NodeId) -> Result<(), TreeError> {
        if old.is_root() || new.is_root() {
            return Err(TreeError::Root);
        }
        if self.nodes.contains_key(&new) {
            return Err(TreeError::AlreadyExists(new));
        }
        let mut node = self.nodes.remove(&old).ok_or(TreeError::NotFound(old))?;
        node.id = new;
        *self
            .children
            .get_mut(&node.parent)
            .and_then(|siblings| siblings.get_mut(node.name.as_str()))
            .expect("a node is linked under its parent") = new;
        if let Some(children) = self.children.remove(&old) {
            for &child in children.values() {
                self.nodes.get_mut(&child).expect("children exist").parent = new;
            }
            self.children.insert(new, children);
        }
        self.nodes.insert(new, node);
        Ok(())
    }

    /// Inserts the node, or brings an existing node with its id to exactly this state.
    pub fn put(&mut self, node: Node) -> Result<(), TreeError> {
        let Some(existing) = self.nodes.get(&node.id) else {
            return self.insert(node);
        };
        if existing.kind != node.kind {
            return Err(TreeError::KindChange(node.id));
        }
        self.move_to(node.id, node.parent, &node.name)?;
        let existing = self.nodes.get_mut(&node.id).expect("checked above");
        existing.attrs = node.attrs;
        existing.revision = node.revision;
        Ok(())
    }

    /// Checks every invariant over the whole tree (for tests; O(n)).
    pub fn check_invariants(&self) -> Result<(), String> {
        let root = self.nodes.get(&NodeId::ROOT).ok_or("the root is missing")?;
        if root.parent != NodeId::ROOT || !root.is_dir() {
            return Err(format!("malformed root {root:?}"));
        }
        let mut linked = 0;
        for (parent, children) in &self.children {
            if children.is_empty() {
                return Err(format!("empty child index kept for {parent:?}"));
            }
            for (name, child) in children {
                let node = self
                    .nodes
                    .get(child)
                    .ok_or(format!("dangling child {child:?}"))?;
                if node.parent != *parent || *node.name != **name {
                    return Err(format!("child index disagrees with {node:?}"));
                }
                linked += 1;
            }
        }
        if linked != self.nodes.len() - 1 {
            return Err(format!(
                "{} nodes but {linked} linked under parents",
                self.nodes.len()
            ));
        }
        for node in self.nodes.values() {
            if node.id.is_root() {
                continue;
            }
            validate_name(&node.name).map_err(|error| format!("{node:?}: {error}"))?;
            let parent = self
                .nodes
                .get(&node.parent)
                .ok_or(format!("orphan {node:?}"))?;
            if !parent.is_dir() {
                return Err(format!("{node:?} is under a non-directory"));
            }
            // Walking up must reach the root within as many steps as there are nodes.
            let mut current = node.parent;
            let mut steps = 0;
            while !current.is_root() {
                current = self.nodes[&current].parent;
                steps += 1;
                if steps > self.nodes.len() {
                    return Err(format!("{node:?} is in a cycle"));
                }
            }
        }
        Ok(())
    }

    /// Whether `id` may sit at `parent`/`name` (ignoring `id`'s current place).
    fn check_place(&self, id: NodeId, parent: NodeId, name: &str) -> Result<(), TreeError> {
        validate_name(name).map_err(|error| TreeError::InvalidName {
            name: name.to_owned(),
            error,
        })?;
        let parent_node = self
            .nodes
            .get(&parent)
            .ok_or(TreeError::ParentNotFound(parent))?;
        if !parent_node.is_dir() {
            return Err(TreeError::ParentNotDirectory(parent));
        }
        match self.child_by_name(parent, name) {
            Some(taken_by) if taken_by != id => Err(TreeError::NameTaken {
                parent,
                name: name.to_owned(),
                taken_by,
            }),
            _ => Ok(()),
        }
    }

    fn link(&mut self, parent: NodeId, name: &str, id: NodeId) {
        let previous = self
            .children
            .entry(parent)
            .or_default()
            .insert(name.into(), id);
        debug_assert!(previous.is_none(), "linked {id:?} over {previous:?}");
    }

    fn unlink(&mut self, parent: NodeId, name: &str) {
        let siblings = self
            .children
            .get_mut(&parent)
            .expect("a node is linked under its parent");
        siblings.remove(name);
        if siblings.is_empty() {
            self.children.remove(&parent);
        }
    }
}

impl TreeView for Tree {
    fn get(&self, id: NodeId) -> Option<Cow<'_, Node>> {
        self.nodes.get(&id).map(Cow::Borrowed)
    }

    fn child_by_name(&self, parent: NodeId, name: &str) -> Option<NodeId> {
        self.children.get(&parent)?.get(name).copied()
    }

    fn children(&self, parent: NodeId) -> impl Iterator<Item = NodeId> + '_ {
        self.children
            .get(&parent)
            .into_iter()
            .flat_map(|children| children.values().copied())
    }

    fn contains(&self, id: NodeId) -> bool {
        self.nodes.contains_key(&id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NodeKind;

    fn node(id: u128, parent: u128, name: &str, kind: NodeKind) -> Node {
        Node {
            id: NodeId::from_u128(id),
            parent: NodeId::from_u128(parent),
            name: name.into(),
            kind,
            attrs: Attrs::default(),
            revision: 0,
        }
    }

    fn id(value: u128) -> NodeId {
        NodeId::from_u128(value)
    }

    #[test]
    fn mutations_keep_the_invariants() {
        let mut tree = Tree::new();
        tree.insert(node(1, 0, "docs", NodeKind::Directory))
            .unwrap();
        tree.insert(node(2, 1, "a.txt", NodeKind::File)).unwrap();
        tree.insert(node(3, 0, "b", NodeKind::Directory)).unwrap();
        assert_eq!(tree.path(id(2)).as_deref(), Some("/docs/a.txt"));

        assert!(matches!(
            tree.insert(node(4, 1, "a.txt", NodeKind::File)),
            Err(TreeError::NameTaken { .. })
        ));
        assert_eq!(
            tree.insert(node(4, 2, "x", NodeKind::File)),
            Err(TreeError::ParentNotDirectory(id(2)))
        );
        assert_eq!(
            tree.move_to(id(1), id(1), "loop"),
            Err(TreeError::Cycle {
                id: id(1),
                parent: id(1)
            })
        );
        assert_eq!(tree.remove(id(1)), Err(TreeError::NotEmpty(id(1))));
        assert_eq!(tree.remove(NodeId::ROOT), Err(TreeError::Root));

        tree.move_to(id(1), id(3), "docs2").unwrap();
        assert_eq!(tree.path(id(2)).as_deref(), Some("/b/docs2/a.txt"));
        tree.reidentify(id(1), id(9)).unwrap();
        assert_eq!(tree.get(id(2)).unwrap().parent, id(9));
        assert_eq!(tree.child_by_name(id(3), "docs2"), Some(id(9)));
        tree.remove(id(2)).unwrap();
        tree.remove(id(9)).unwrap();
        tree.check_invariants().unwrap();
        assert_eq!(tree.node_count(), 2);
    }

    #[test]
    fn children_come_in_name_order() {
        let mut tree = Tree::new();
        for (id, name) in [(1, "c"), (2, "a"), (3, "b")] {
            tree.insert(node(id, 0, name, NodeKind::File)).unwrap();
        }
        let names: Vec<_> = TreeView::children(&tree, NodeId::ROOT)
            .map(|c| tree.get(c).unwrap().name.clone())
            .collect();
        assert_eq!(names, ["a", "b", "c"]);
    }
}

//! The three trees as tables: rows ⇄ [`Node`], the planner's [`TreeView`] over SQLite, and the writes
//! that executing an op makes.
//!
//! The view reads rows on demand through cached statements, so the planner touches only the nodes
//! around the changed ids, never the whole namespace.

use std::borrow::Cow;
use std::cell::RefCell;
use std::path::Path;

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::{StateError, StateResult, Txn};
use crate::model::{
    Attrs, ContentHash, Node, NodeId, NodeKind, Xattrs, decode_xattrs, encode_xattrs,
};
use crate::tree::TreeView;

/// Which of the three trees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    Remote,
    Local,
    Synced,
}

impl Table {
    pub fn name(self) -> &'static str {
        match self {
            Table::Remote => "remote",
            Table::Local => "local",
            Table::Synced => "synced",
        }
    }
}

/// The columns of a tree row, in the order [`node_from_row`] reads them.
pub(crate) const NODE_COLUMNS: &str =
    "id, parent, name, kind, size, mtime_ns, mode, content, symlink, revision, xattrs";

fn kind_code(kind: NodeKind) -> i64 {
    match kind {
        NodeKind::Directory => 1,
        NodeKind::File => 2,
        NodeKind::Symlink => 3,
    }
}

fn kind_from_code(code: i64) -> Option<NodeKind> {
    match code {
        1 => Some(NodeKind::Directory),
        2 => Some(NodeKind::File),
        3 => Some(NodeKind::Symlink),
        _ => None,
    }
}

pub(crate) fn kind_code_of(kind: NodeKind) -> i64 {
    kind_code(kind)
}

pub(crate) fn kind_from_code_of(code: i64) -> Option<NodeKind> {
    kind_from_code(code)
}

/// Reads a node from a row selected with [`NODE_COLUMNS`]; `None` if the row is malformed.
pub(crate) fn node_from_row(row: &Row<'_>) -> rusqlite::Result<Option<Node>> {
    let id: Vec<u8> = row.get(0)?;
    let parent: Vec<u8> = row.get(1)?;
    let content: Option<Vec<u8>> = row.get(7)?;
    let xattrs: Option<Vec<u8>> = row.get(10)?;
    let Some(xattrs) = xattrs.map_or(Some(Xattrs::new()), |b| decode_xattrs(&b)) else {
        return Ok(None);
    };
    let (Some(id), Some(parent), Some(kind)) = (
        NodeId::from_bytes(&id),
        NodeId::from_bytes(&parent),
        kind_from_code(row.get(3)?),
    ) else {
        return Ok(None);
    };
    let content = match content {
        None => None,
        Some(bytes) => match ContentHash::from_slice(&bytes) {
            Some(hash) => Some(hash),
            None => return Ok(None),
        },
    };
    Ok(Some(Node {
        id,
        parent,
        name: row.get(2)?,
        kind,
        attrs: Attrs {
            size: row.get::<_, i64>(4)? as u64,
            mtime_ns: row.get(5)?,
            mode: row.get::<_, i64>(6)? as u32,
            content,
            symlink_target: row.get(8)?,
            xattrs,
        },
        revision: row.get::<_, i64>(9)? as u64,
    }))
}

/// Reads one node by id from a table.
pub(crate) fn get_node(
    conn: &Connection,
    table: Table,
    id: NodeId,
    path: &Path,
) -> StateResult<Option<Node>> {
    let err = |source| StateError::Sqlite {
        path: path.to_owned(),
        source,
    };
    let sql = format!("SELECT {NODE_COLUMNS} FROM {} WHERE id = ?1", table.name());
    let row = conn
        .prepare_cached(&sql)
        .map_err(err)?
        .query_row([&id.to_bytes()[..]], node_from_row)
        .optional()
        .map_err(err)?;
    match row {
        None => Ok(None),
        Some(Some(node)) => Ok(Some(node)),
        Some(None) => Err(StateError::Corrupt {
            path: path.to_owned(),
            detail: format!("a malformed row for node {id} in {}", table.name()),
        }),
    }
}

/// A tree read from its table. Implements the planner's [`TreeView`].
///
/// `TreeView` cannot return errors, so a database failure while planning is remembered and the view
/// answers as if the row were absent; the caller must check [`SqlTree::take_error`] and discard the plan.
pub struct SqlTree<'a> {
    conn: &'a Connection,
    table: Table,
    path: &'a Path,
    error: RefCell<Option<StateError>>,
}

impl<'a> SqlTree<'a> {
    pub(crate) fn new(conn: &'a Connection, table: Table, path: &'a Path) -> Self {
        Self {
            conn,
            table,
            path,
            error: RefCell::new(None),
        }
    }

    /// The node with this id.
    pub fn node(&self, id: NodeId) -> StateResult<Option<Node>> {
        get_node(self.conn, self.table, id, self.path)
    }

    /// The first database error a `TreeView` call swallowed.
    pub fn take_error(&self) -> Option<StateError> {
        self.error.borrow_mut().take()
    }

    fn remember<T>(&self, result: StateResult<T>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(e) => {
                self.error.borrow_mut().get_or_insert(e);
                None
            }
        }
    }

    /// The child of `parent` called `name`.
    pub fn child_id(&self, parent: NodeId, name: &str) -> StateResult<Option<NodeId>> {
        let err = |source| StateError::Sqlite {
            path: self.path.to_owned(),
            source,
        };
        let sql = format!(
            "SELECT id FROM {} WHERE parent = ?1 AND name = ?2 AND id != ?1",
            self.table.name()
        );
        let id: Option<Vec<u8>> = self
            .conn
            .prepare_cached(&sql)
            .map_err(err)?
            .query_row(params![&parent.to_bytes()[..], name], |r| r.get(0))
            .optional()
            .map_err(err)?;
        Ok(id.and_then(|b| NodeId::from_bytes(&b)))
    }

    /// The children of `parent`, in name order.
    pub fn child_nodes(&self, parent: NodeId) -> StateResult<Vec<Node>> {
        let err = |source| StateError::Sqlite {
            path: self.path.to_owned(),
            source,
        };
        let sql = format!(
            "SELECT {NODE_COLUMNS} FROM {} WHERE parent = ?1 AND id != ?1 ORDER BY name",
            self.table.name()
        );
        let mut stmt = self.conn.prepare_cached(&sql).map_err(err)?;
        let rows = stmt
            .query_map([&parent.to_bytes()[..]], node_from_row)
            .map_err(err)?;
        let mut nodes = Vec::new();
        for row in rows {
            match row.map_err(err)? {
                Some(node) => nodes.push(node),
                None => {
                    return Err(StateError::Corrupt {
                        path: self.path.to_owned(),
                        detail: format!(
                            "a malformed child row of {parent} in {}",
                            self.table.name()
                        ),
                    });
                }
            }
        }
        Ok(nodes)
    }

    /// Every id in the tree (for rebuilds; reads the whole table).
    pub fn all_ids(&self) -> StateResult<Vec<NodeId>> {
        let err = |source| StateError::Sqlite {
            path: self.path.to_owned(),
            source,
        };
        let mut stmt = self
            .conn
            .prepare(&format!("SELECT id FROM {}", self.table.name()))
            .map_err(err)?;
        let rows = stmt
            .query_map([], |r| r.get::<_, Vec<u8>>(0))
            .map_err(err)?;
        let mut ids = Vec::new();
        for row in rows {
            let bytes = row.map_err(err)?;
            ids.push(
                NodeId::from_bytes(&bytes).ok_or_else(|| StateError::Corrupt {
                    path: self.path.to_owned(),
                    detail: "an id that is not 16 bytes".into(),
                })?,
            );
        }
        Ok(ids)
    }

    /// How many nodes the tree holds, the root included.
    pub fn count(&self) -> StateResult<u64> {
        self.conn
            .query_row(
                &format!("SELECT count(*) FROM {}", self.table.name()),
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(|source| StateError::Sqlite {
                path: self.path.to_owned(),
                source,
            })
    }

    /// How many nodes the tree holds, the root included, counting no further than `limit`: the
    /// answer is `min(count, limit)`, at the cost of `limit` rows rather than the whole table.
    pub fn count_up_to(&self, limit: u64) -> StateResult<u64> {
        let sql = format!(
            "SELECT count(*) FROM (SELECT 1 FROM {} LIMIT ?1)",
            self.table.name()
        );
        self.conn
            .prepare_cached(&sql)
            .and_then(|mut s| {
                s.query_row([limit.min(i64::MAX as u64) as i64], |r| r.get::<_, i64>(0))
            })
            .map(|n| n as u64)
            .map_err(|source| StateError::Sqlite {
                path: self.path.to_owned(),
                source,
            })
    }

    /// The slash-separated path of a node from the root.
    pub fn path_of(&self, id: NodeId) -> StateResult<Option<String>> {
        let mut names = Vec::new();
        let mut current = id;
        let mut depth = 0;
        while !current.is_root() {
            let Some(node) = self.node(current)? else {
                return Ok(None);
            };
            names.push(node.name);
            current = node.parent;
            depth += 1;
            if depth > 10_000 {
                return Err(StateError::Corrupt {
                    path: self.path.to_owned(),
                    detail: format!("a parent cycle above {id} in {}", self.table.name()),
                });
            }
        }
        names.reverse();
        Ok(Some(format!("/{}", names.join("/"))))
    }
}

impl TreeView for SqlTree<'_> {
    fn get(&self, id: NodeId) -> Option<Cow<'_, Node>> {
        self.remember(self.node(id)).flatten().map(Cow::Owned)
    }

    fn child_by_name(&self, parent: NodeId, name: &str) -> Option<NodeId> {
        self.remember(self.child_id(parent, name)).flatten()
    }

    fn children(&self, parent: NodeId) -> impl Iterator<Item = NodeId> + '_ {
        let nodes = self.remember(self.child_nodes(parent)).unwrap_or_default();
        nodes.into_iter().map(|n| n.id)
    }
}

impl Txn<'_> {
    /// Inserts or replaces a node in REMOTE or SYNCED.
    pub fn put_node(&self, table: Table, node: &Node) -> StateResult<()> {
        debug_assert_ne!(
            table,
            Table::Local,
            "LOCAL rows carry an inode: use put_local"
        );
        let sql = format!(
            "INSERT OR REPLACE INTO {} ({NODE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            table.name()
        );
        self.conn()
            .prepare_cached(&sql)
            .and_then(|mut s| {
                s.execute(params![
                    &node.id.to_bytes()[..],
                    &node.parent.to_bytes()[..],
                    node.name,
                    kind_code(node.kind),
                    node.attrs.size as i64,
                    node.attrs.mtime_ns,
                    i64::from(node.attrs.mode),
                    node.attrs.content.map(|c| c.0.to_vec()),
                    node.attrs.symlink_target,
                    node.revision as i64,
                    encode_xattrs(&node.attrs.xattrs),
                ])
            })
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Removes a node from a tree (LOCAL included); a no-op if absent. A directory leaving LOCAL
    /// takes this device's special files in it along (they are never synced).
    pub fn remove_node(&self, table: Table, id: NodeId) -> StateResult<()> {
        let sql = format!("DELETE FROM {} WHERE id = ?1", table.name());
        self.conn()
            .prepare_cached(&sql)
            .and_then(|mut s| s.execute([&id.to_bytes()[..]]))
            .map_err(|e| self.err(e))?;
        if table == Table::Local {
            self.conn()
                .prepare_cached("DELETE FROM specials WHERE parent = ?1")
                .and_then(|mut s| s.execute([&id.to_bytes()[..]]))
                .map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// Updates the LOCAL row of an existing node (place and attributes), keeping its inode and pin.
    pub fn update_local(&self, node: &Node) -> StateResult<()> {
        let changed = self
            .conn()
            .prepare_cached(
                "UPDATE local SET parent = ?2, name = ?3, kind = ?4, size = ?5, mtime_ns = ?6, mode = ?7,
                 content = ?8, symlink = ?9, revision = ?10, xattrs = ?11 WHERE id = ?1",
            )
            .and_then(|mut s| {
                s.execute(params![
                    &node.id.to_bytes()[..],
                    &node.parent.to_bytes()[..],
                    node.name,
                    kind_code(node.kind),
                    node.attrs.size as i64,
                    node.attrs.mtime_ns,
                    i64::from(node.attrs.mode),
                    node.attrs.content.map(|c| c.0.to_vec()),
                    node.attrs.symlink_target,
                    node.revision as i64,
                    encode_xattrs(&node.attrs.xattrs),
                ])
            })
            .map_err(|e| self.err(e))?;
        if changed != 1 {
            return Err(self.corrupt(&format!("local node {} vanished during an update", node.id)));
        }
        Ok(())
    }

    /// Inserts a new LOCAL node with a fresh inode number (its stable one where it can:
    /// [`super::inode_numbers`]); it inherits its parent's pin.
    pub fn insert_local(&self, node: &Node) -> StateResult<u64> {
        let ino = self.ino_for_new_node(node.id)?;
        self.conn()
            .prepare_cached(
                "INSERT INTO local (id, parent, name, kind, size, mtime_ns, mode, content, symlink, revision, xattrs, ino, pinned)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12,
                         coalesce((SELECT pinned FROM local WHERE id = ?2), 0))",
            )
            .and_then(|mut s| {
                s.execute(params![
                    &node.id.to_bytes()[..],
                    &node.parent.to_bytes()[..],
                    node.name,
                    kind_code(node.kind),
                    node.attrs.size as i64,
                    node.attrs.mtime_ns,
                    i64::from(node.attrs.mode),
                    node.attrs.content.map(|c| c.0.to_vec()),
                    node.attrs.symlink_target,
                    node.revision as i64,
                    encode_xattrs(&node.attrs.xattrs),
                    ino as i64,
                ])
            })
            .map_err(|e| self.err(e))?;
        Ok(ino)
    }

    /// Gives the LOCAL node `id` a fresh inode number and returns (old, new). The round does this when
    /// it changes the content of a file that handles hold open: they keep the old inode and its
    /// kernel page cache, new opens find the new one.
    pub fn renumber_local(&self, id: NodeId) -> StateResult<(u64, u64)> {
        let old = self
            .local_ino(id)?
            .ok_or_else(|| self.corrupt(&format!("renumbering {id}, which LOCAL lacks")))?;
        let new = self.next_ino()?;
        self.conn()
            .prepare_cached("UPDATE local SET ino = ?2 WHERE id = ?1")
            .and_then(|mut s| s.execute(params![&id.to_bytes()[..], new as i64]))
            .map_err(|e| self.err(e))?;
        Ok((old, new))
    }

    /// Gives the LOCAL node `old` the id `new` (its inode stays), and re-parents its children.
    pub fn reidentify_local(&self, old: NodeId, new: NodeId) -> StateResult<()> {
        let (old_b, new_b) = (old.to_bytes(), new.to_bytes());
        self.conn()
            .execute(
                "UPDATE local SET id = ?2 WHERE id = ?1",
                params![&old_b[..], &new_b[..]],
            )
            .map_err(|e| self.err(e))?;
        self.conn()
            .execute(
                "UPDATE local SET parent = ?2 WHERE parent = ?1 AND id != ?2",
                params![&old_b[..], &new_b[..]],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The inode of a LOCAL node.
    pub fn local_ino(&self, id: NodeId) -> StateResult<Option<u64>> {
        self.conn()
            .prepare_cached("SELECT ino FROM local WHERE id = ?1")
            .and_then(|mut s| {
                s.query_row([&id.to_bytes()[..]], |r| r.get::<_, i64>(0))
                    .optional()
            })
            .map(|v| v.map(|v| v as u64))
            .map_err(|e| self.err(e))
    }
}

//! The LOCAL tree as the mount sees it: lookups by inode and name, and the mutations a filesystem
//! call makes (create, set attributes, rename, remove). Each mutation runs inside the caller's
//! transaction and marks the ids it touched as changed, so the next plan sees them.
//!
//! Errors are the POSIX conditions a filesystem reports ([`LocalError`]); the mount maps them to errno.

use rusqlite::{OptionalExtension, params};

use super::trees::node_from_row;
use super::{StateError, Table, Txn};
use crate::model::{Attrs, NameError, NamePolicy, Node, NodeId, NodeKind};

/// A LOCAL node with what only this device knows about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalEntry {
    pub node: Node,
    pub ino: u64,
    pub pinned: bool,
    /// What this device keeps for itself (never synced).
    pub own: OwnAttrs,
}

/// A node's attributes that stay on this device: uid/gid mean nothing on another machine, and
/// access, change and directory modification times follow what happens here (POSIX updates a
/// directory's mtime for every entry made in it; syncing that would make every create two changes).
/// `None`: the default (the mounting user; the node's mtime).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OwnAttrs {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub atime_ns: Option<i64>,
    pub ctime_ns: Option<i64>,
    /// Directories only: their modification time here.
    pub dir_mtime_ns: Option<i64>,
}

/// Why a local mutation was refused.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("no such file or directory")]
    NotFound,
    #[error("the name is taken")]
    Exists,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("the directory is not empty")]
    NotEmpty,
    #[error("invalid name: {0}")]
    InvalidName(NameError),
    #[error("invalid operation: {0}")]
    Invalid(&'static str),
    #[error(transparent)]
    State(#[from] StateError),
}

pub type LocalResult<T> = Result<T, LocalError>;

const ENTRY_COLUMNS: &str = "id, parent, name, kind, size, mtime_ns, mode, content, symlink, revision, xattrs, \
     ino, pinned, uid, gid, atime_ns, ctime_ns, dir_mtime_ns";

fn entry_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Option<LocalEntry>> {
    let Some(node) = node_from_row(row)? else {
        return Ok(None);
    };
    Ok(Some(LocalEntry {
        node,
        ino: row.get::<_, i64>(11)? as u64,
        pinned: row.get(12)?,
        own: OwnAttrs {
            uid: row.get::<_, Option<i64>>(13)?.map(|v| v as u32),
            gid: row.get::<_, Option<i64>>(14)?.map(|v| v as u32),
            atime_ns: row.get(15)?,
            ctime_ns: row.get(16)?,
            dir_mtime_ns: row.get(17)?,
        },
    }))
}

impl Txn<'_> {
    fn local_query(
        &self,
        filter: &str,
        params: impl rusqlite::Params,
    ) -> LocalResult<Option<LocalEntry>> {
        let sql = format!("SELECT {ENTRY_COLUMNS} FROM local WHERE {filter}");
        let row = self
            .conn()
            .prepare_cached(&sql)
            .and_then(|mut s| s.query_row(params, entry_from_row).optional())
            .map_err(|e| self.err(e))?;
        match row {
            None => Ok(None),
            Some(Some(entry)) => Ok(Some(entry)),
            Some(None) => Err(self.corrupt("a malformed local row").into()),
        }
    }

    /// The LOCAL node with this inode.
    pub fn local_by_ino(&self, ino: u64) -> LocalResult<Option<LocalEntry>> {
        self.local_query("ino = ?1", [ino as i64])
    }

    /// The LOCAL node with this id.
    pub fn local_by_id(&self, id: NodeId) -> LocalResult<Option<LocalEntry>> {
        self.local_query("id = ?1", [&id.to_bytes()[..]])
    }

    /// The child `name` of the directory with inode `parent`.
    pub fn local_lookup(&self, parent: u64, name: &str) -> LocalResult<Option<LocalEntry>> {
        let dir = self.local_dir(parent)?;
        self.local_query(
            "parent = ?1 AND name = ?2 AND id != ?1",
            params![&dir.node.id.to_bytes()[..], name],
        )
    }

    /// The child of `parent` whose name `policy` sees as `name`: the exact name first, else the
    /// child whose [`NamePolicy::fold`] equals `name`'s (LOCAL holds at most one under a folding
    /// policy: the planner keeps colliding remote names remote-only).
    ///
    /// Names are stored and indexed byte for byte, so the name is spelled out one character at a
    /// time in each case the directory holds a prefix of (an index seek per prefix): a few dozen
    /// seeks whatever the directory's size, where comparing every child (`COLLATE NOCASE`, which
    /// folds ASCII only anyway) took 100 ms in a directory of 100,000. A character's cases are its
    /// single-character upper and lower case; a stored name whose case differs otherwise (the
    /// Kelvin sign, `İ`) is found by its exact name only.
    pub fn local_lookup_folded(
        &self,
        parent: u64,
        name: &str,
        policy: NamePolicy,
    ) -> LocalResult<Option<LocalEntry>> {
        if let Some(exact) = self.local_lookup(parent, name)? {
            return Ok(Some(exact));
        }
        if !policy.folds() {
            return Ok(None);
        }
        let dir = self.local_dir(parent)?.node.id.to_bytes();
        let mut prefixes = vec![String::new()];
        for c in name.chars() {
            let mut longer = Vec::new();
            for prefix in &prefixes {
                for case in cases(c) {
                    let candidate = format!("{prefix}{case}");
                    if self.local_has_prefix(&dir, &candidate)? {
                        longer.push(candidate);
                    }
                }
            }
            if longer.is_empty() {
                return Ok(None);
            }
            prefixes = longer;
        }
        let wanted = policy.fold(name);
        for candidate in prefixes {
            let found = self.local_query(
                "parent = ?1 AND name = ?2 AND id != ?1",
                params![&dir[..], candidate],
            )?;
            if let Some(entry) = found.filter(|e| policy.fold(&e.node.name) == wanted) {
                return Ok(Some(entry));
            }
        }
        Ok(None)
    }

    /// Whether the directory with id `dir` has a child whose name starts with `prefix`.
    fn local_has_prefix(&self, dir: &[u8], prefix: &str) -> LocalResult<bool> {
        // Every name starting with `prefix` sorts between it and it followed by the last char.
        let end = format!("{prefix}{}", char::MAX);
        self.conn()
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM local WHERE parent = ?1 AND name >= ?2 AND name <= ?3)",
            )
            .and_then(|mut s| s.query_row(params![dir, prefix, end], |r| r.get(0)))
            .map_err(|e| self.err(e).into())
    }

    /// Children of the directory `parent` with names after `after`, in name order, at most `limit`.
    pub fn local_children(
        &self,
        parent: u64,
        after: Option<&str>,
        limit: usize,
    ) -> LocalResult<Vec<LocalEntry>> {
        let dir = self.local_dir(parent)?;
        let sql = format!(
            "SELECT {ENTRY_COLUMNS} FROM local WHERE parent = ?1 AND id != ?1 AND name > ?2 ORDER BY name LIMIT ?3"
        );
        let mut stmt = self.conn().prepare_cached(&sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(
                params![
                    &dir.node.id.to_bytes()[..],
                    after.unwrap_or(""),
                    limit as i64
                ],
                entry_from_row,
            )
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            out.push(
                row.map_err(|e| self.err(e))?
                    .ok_or_else(|| self.corrupt("a malformed local row"))?,
            );
        }
        Ok(out)
    }

    fn local_dir(&self, ino: u64) -> LocalResult<LocalEntry> {
        let dir = self.local_by_ino(ino)?.ok_or(LocalError::NotFound)?;
        if dir.node.kind != NodeKind::Directory {
            return Err(LocalError::NotDir);
        }
        Ok(dir)
    }

    /// Creates a LOCAL node `name` in directory `parent` with a new id. The node has revision 0 until
    /// the server accepts it.
    pub fn local_create(
        &self,
        parent: u64,
        name: &str,
        kind: NodeKind,
        attrs: Attrs,
        id: NodeId,
    ) -> LocalResult<LocalEntry> {
        crate::model::validate_name(name).map_err(LocalError::InvalidName)?;
        let dir = self.local_dir(parent)?;
        if self.local_lookup(parent, name)?.is_some()
            || self.special_ino_at(dir.node.id, name)?.is_some()
        {
            return Err(LocalError::Exists);
        }
        let node = Node {
            id,
            parent: dir.node.id,
            name: name.to_string(),
            kind,
            attrs,
            revision: 0,
        };
        let ino = self.insert_local(&node)?;
        self.mark_changed(id)?;
        Ok(LocalEntry {
            node,
            ino,
            pinned: dir.pinned,
            own: OwnAttrs::default(),
        })
    }

    /// Stores what LOCAL keeps of `ino` for this device only (no sync follows).
    pub fn local_set_own(&self, ino: u64, own: OwnAttrs) -> LocalResult<()> {
        self.conn()
            .prepare_cached(
                "UPDATE local SET uid = ?2, gid = ?3, atime_ns = ?4, ctime_ns = ?5, dir_mtime_ns = ?6
                 WHERE ino = ?1",
            )
            .and_then(|mut s| {
                s.execute(rusqlite::params![
                    ino as i64,
                    own.uid.map(i64::from),
                    own.gid.map(i64::from),
                    own.atime_ns,
                    own.ctime_ns,
                    own.dir_mtime_ns,
                ])
            })
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// An entry was added to or removed from directory `dir`: its modification and change times
    /// (kept on this device) become `now`.
    pub fn local_touch_dir(&self, dir: u64, now: i64) -> LocalResult<()> {
        self.conn()
            .prepare_cached("UPDATE local SET dir_mtime_ns = ?2, ctime_ns = ?2 WHERE ino = ?1")
            .and_then(|mut s| s.execute(rusqlite::params![dir as i64, now]))
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The node `ino` itself changed (renamed, linked, written): its change time becomes `now`.
    pub fn local_touch_ctime(&self, ino: u64, now: i64) -> LocalResult<()> {
        self.conn()
            .prepare_cached("UPDATE local SET ctime_ns = ?2 WHERE ino = ?1")
            .and_then(|mut s| s.execute(rusqlite::params![ino as i64, now]))
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Replaces the attributes of the LOCAL node `ino`.
    pub fn local_set_attrs(&self, ino: u64, attrs: Attrs) -> LocalResult<LocalEntry> {
        let mut entry = self.local_by_ino(ino)?.ok_or(LocalError::NotFound)?;
        if entry.node.id.is_root() {
            return Err(LocalError::Invalid("the root's attributes are fixed"));
        }
        entry.node.attrs = attrs;
        self.update_local(&entry.node)?;
        self.mark_changed(entry.node.id)?;
        Ok(entry)
    }

    /// Moves `ino` to `name` in directory `new_parent`. An existing target is replaced as rename(2)
    /// does (a file by a file, a directory by an empty directory) unless `no_replace`; the replaced
    /// entry is returned so the caller can drop its local content.
    pub fn local_rename(
        &self,
        ino: u64,
        new_parent: u64,
        name: &str,
        no_replace: bool,
    ) -> LocalResult<Option<LocalEntry>> {
        crate::model::validate_name(name).map_err(LocalError::InvalidName)?;
        let mut entry = self.local_by_ino(ino)?.ok_or(LocalError::NotFound)?;
        if entry.node.id.is_root() {
            return Err(LocalError::Invalid("the root cannot be moved"));
        }
        let dir = self.local_dir(new_parent)?;
        // Refuse to move a directory into itself or below itself.
        let local = self.tree(Table::Local);
        let mut cursor = dir.node.id;
        loop {
            if cursor == entry.node.id {
                return Err(LocalError::Invalid("a directory cannot move inside itself"));
            }
            if cursor.is_root() {
                break;
            }
            cursor = local.node(cursor)?.ok_or(LocalError::NotFound)?.parent;
        }
        let replaced = match self.local_lookup(new_parent, name)? {
            Some(target) if target.ino == ino => return Ok(None),
            Some(_) if no_replace => return Err(LocalError::Exists),
            Some(target) => {
                match (
                    entry.node.kind == NodeKind::Directory,
                    target.node.kind == NodeKind::Directory,
                ) {
                    (false, true) => return Err(LocalError::IsDir),
                    (true, false) => return Err(LocalError::NotDir),
                    _ => {}
                }
                self.local_remove(target.ino)?;
                Some(target)
            }
            None => {
                // A special file of this device under the name: replaced like any file.
                if let Some(special) = self.special_ino_at(dir.node.id, name)? {
                    if no_replace {
                        return Err(LocalError::Exists);
                    }
                    if entry.node.kind == NodeKind::Directory {
                        return Err(LocalError::NotDir);
                    }
                    self.special_remove(special)?;
                }
                None
            }
        };
        entry.node.parent = dir.node.id;
        entry.node.name = name.to_string();
        self.update_local(&entry.node)?;
        self.mark_changed(entry.node.id)?;
        Ok(replaced)
    }

    /// Removes the LOCAL node `ino` (unlink, or rmdir of an empty directory).
    pub fn local_remove(&self, ino: u64) -> LocalResult<LocalEntry> {
        let entry = self.local_by_ino(ino)?.ok_or(LocalError::NotFound)?;
        if entry.node.id.is_root() {
            return Err(LocalError::Invalid("the root cannot be removed"));
        }
        if entry.node.kind == NodeKind::Directory
            && (!self.local_children(ino, None, 1)?.is_empty()
                || self.has_specials(entry.node.id)?)
        {
            return Err(LocalError::NotEmpty);
        }
        self.remove_node(Table::Local, entry.node.id)?;
        self.mark_changed(entry.node.id)?;
        Ok(entry)
    }

    /// Sets the pin of `ino` and, for a directory, of everything below it (new children inherit it).
    /// Returns the entries whose pin changed.
    pub fn local_set_pinned(&self, ino: u64, pinned: bool) -> LocalResult<Vec<LocalEntry>> {
        let root = self.local_by_ino(ino)?.ok_or(LocalError::NotFound)?;
        let mut changed = Vec::new();
        let mut stack = vec![root];
        while let Some(mut entry) = stack.pop() {
            if entry.pinned != pinned {
                self.conn()
                    .prepare_cached("UPDATE local SET pinned = ?2 WHERE ino = ?1")
                    .and_then(|mut s| s.execute(params![entry.ino as i64, pinned]))
                    .map_err(|e| self.err(e))?;
                entry.pinned = pinned;
                changed.push(entry.clone());
            }
            if entry.node.kind == NodeKind::Directory {
                let mut after: Option<String> = None;
                loop {
                    let page = self.local_children(entry.ino, after.as_deref(), 1000)?;
                    let Some(last) = page.last() else { break };
                    after = Some(last.node.name.clone());
                    stack.extend(page);
                }
            }
        }
        Ok(changed)
    }
}

/// The spellings of `c` a case-folding lookup tries: itself and its single-character upper and
/// lower case.
fn cases(c: char) -> Vec<char> {
    fn single(mut chars: impl Iterator<Item = char>) -> Option<char> {
        let first = chars.next()?;
        chars.next().is_none().then_some(first)
    }
    let mut out = vec![c];
    for other in [single(c.to_uppercase()), single(c.to_lowercase())]
        .into_iter()
        .flatten()
    {
        if !out.contains(&other) {
            out.push(other);
        }
    }
    out
}

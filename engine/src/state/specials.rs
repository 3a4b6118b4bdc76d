//! Special files (FIFOs, Unix sockets, character and block devices): created and usable on this
//! device, never synced. A sync client has nothing to send for them (their "content" is a kernel
//! object of this machine), so they live beside the three trees, not in them: the planner never
//! sees them. They sit in a directory by its node id (so they follow its renames), take inode
//! numbers from the same sequence as LOCAL, and share its names: a name held by one cannot be
//! created in the other here. A synced item that arrives under a special file's name shadows it
//! (lookups find the synced one); a directory removed by a sync takes its special files with it.

use rusqlite::{OptionalExtension, params};

use super::Txn;
use super::local::{LocalError, LocalResult};
use crate::model::NodeId;

/// What a special file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecialKind {
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

impl SpecialKind {
    fn code(self) -> i64 {
        match self {
            SpecialKind::Fifo => 1,
            SpecialKind::Socket => 2,
            SpecialKind::CharDevice => 3,
            SpecialKind::BlockDevice => 4,
        }
    }

    fn from_code(code: i64) -> Option<SpecialKind> {
        Some(match code {
            1 => SpecialKind::Fifo,
            2 => SpecialKind::Socket,
            3 => SpecialKind::CharDevice,
            4 => SpecialKind::BlockDevice,
            _ => return None,
        })
    }
}

/// A special file of this device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Special {
    pub ino: u64,
    /// The directory holding it (a LOCAL node).
    pub parent: NodeId,
    pub name: String,
    pub kind: SpecialKind,
    /// The device number (devices only).
    pub rdev: u32,
    /// Permission bits.
    pub mode: u32,
    /// `None`: the mounting user.
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub atime_ns: i64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

const COLUMNS: &str = "ino, parent, name, kind, rdev, mode, uid, gid, atime_ns, mtime_ns, ctime_ns";

fn special_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Option<Special>> {
    let parent: Vec<u8> = row.get(1)?;
    let (Some(parent), Some(kind)) = (
        NodeId::from_bytes(&parent),
        SpecialKind::from_code(row.get(3)?),
    ) else {
        return Ok(None);
    };
    Ok(Some(Special {
        ino: row.get::<_, i64>(0)? as u64,
        parent,
        name: row.get(2)?,
        kind,
        rdev: row.get::<_, i64>(4)? as u32,
        mode: row.get::<_, i64>(5)? as u32,
        uid: row.get::<_, Option<i64>>(6)?.map(|v| v as u32),
        gid: row.get::<_, Option<i64>>(7)?.map(|v| v as u32),
        atime_ns: row.get(8)?,
        mtime_ns: row.get(9)?,
        ctime_ns: row.get(10)?,
    }))
}

impl Txn<'_> {
    fn special_query(
        &self,
        filter: &str,
        params: impl rusqlite::Params,
    ) -> LocalResult<Vec<Special>> {
        let sql = format!("SELECT {COLUMNS} FROM specials WHERE {filter}");
        let mut stmt = self.conn().prepare_cached(&sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params, special_from_row)
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            if let Some(special) = row.map_err(|e| self.err(e))? {
                out.push(special);
            }
        }
        Ok(out)
    }

    /// The special file with inode `ino`.
    pub fn special_by_ino(&self, ino: u64) -> LocalResult<Option<Special>> {
        Ok(self
            .special_query("ino = ?1", [ino as i64])?
            .into_iter()
            .next())
    }

    /// The special file `name` in directory `parent` (an inode).
    pub fn special_lookup(&self, parent: u64, name: &str) -> LocalResult<Option<Special>> {
        let Some(dir) = self.local_by_ino(parent)? else {
            return Ok(None);
        };
        Ok(self
            .special_query(
                "parent = ?1 AND name = ?2",
                params![&dir.node.id.to_bytes()[..], name],
            )?
            .into_iter()
            .next())
    }

    /// The special files in directory `parent` (an inode), by name.
    pub fn specials_in(&self, parent: u64) -> LocalResult<Vec<Special>> {
        let Some(dir) = self.local_by_ino(parent)? else {
            return Ok(Vec::new());
        };
        self.special_query("parent = ?1 ORDER BY name", [&dir.node.id.to_bytes()[..]])
    }

    /// Whether directory `dir` (a node id) holds special files.
    pub fn has_specials(&self, dir: NodeId) -> LocalResult<bool> {
        self.conn()
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM specials WHERE parent = ?1)")
            .and_then(|mut s| s.query_row([&dir.to_bytes()[..]], |r| r.get(0)))
            .map_err(|e| self.err(e).into())
    }

    /// Creates a special file `name` in directory `parent` (an inode); the name must be free.
    pub fn special_create(&self, parent: u64, mut special: Special) -> LocalResult<Special> {
        crate::model::validate_name(&special.name).map_err(LocalError::InvalidName)?;
        let dir = self.local_by_ino(parent)?.ok_or(LocalError::NotFound)?;
        if dir.node.kind != crate::model::NodeKind::Directory {
            return Err(LocalError::NotDir);
        }
        if self.local_lookup(parent, &special.name)?.is_some()
            || self.special_lookup(parent, &special.name)?.is_some()
        {
            return Err(LocalError::Exists);
        }
        special.ino = self.next_ino()?;
        special.parent = dir.node.id;
        self.special_put(&special)?;
        Ok(special)
    }

    /// Stores a special file (new or changed).
    pub fn special_put(&self, s: &Special) -> LocalResult<()> {
        self.conn()
            .prepare_cached(&format!(
                "INSERT OR REPLACE INTO specials ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
            ))
            .and_then(|mut stmt| {
                stmt.execute(params![
                    s.ino as i64,
                    &s.parent.to_bytes()[..],
                    s.name,
                    s.kind.code(),
                    i64::from(s.rdev),
                    i64::from(s.mode),
                    s.uid.map(i64::from),
                    s.gid.map(i64::from),
                    s.atime_ns,
                    s.mtime_ns,
                    s.ctime_ns,
                ])
            })
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Removes the special file with inode `ino`.
    pub fn special_remove(&self, ino: u64) -> LocalResult<()> {
        self.conn()
            .prepare_cached("DELETE FROM specials WHERE ino = ?1")
            .and_then(|mut s| s.execute([ino as i64]))
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The inode of a special file named `name` in `parent` (an inode), if any (cheap check for
    /// the LOCAL mutations that must not take a special file's name).
    pub(crate) fn special_ino_at(&self, parent: NodeId, name: &str) -> LocalResult<Option<u64>> {
        self.conn()
            .prepare_cached("SELECT ino FROM specials WHERE parent = ?1 AND name = ?2")
            .and_then(|mut s| {
                s.query_row(params![&parent.to_bytes()[..], name], |r| {
                    r.get::<_, i64>(0)
                })
                .optional()
            })
            .map(|ino| ino.map(|i| i as u64))
            .map_err(|e| self.err(e).into())
    }
}

//! The engine's durable state in SQLite (DESIGN D1, D4, D9): the three trees, the cursor, stable inode
//! numbers, pins, manifests, the set of changed ids, materialized files, conflicts, held deletes.
//!
//! One connection, used under the engine's lock, in WAL mode. Transactions are `synchronous=FULL`
//! (durable when they commit) except [`State::relaxed_transaction`]s, the mount's own mutations,
//! which are atomic at once and durable at the next [`State::sync_wal`] or FULL commit: a crash of
//! the process loses none of them (the WAL is written before the commit returns), a power loss may
//! roll back the newest of them, always a suffix, never a hole. The database is a rebuildable cache
//! of the server and the materialized files ([`crate::rebuild`]).
//!
//! Submodules: [`schema`] (tables, migrations), [`trees`] (row ⇄ node, the planner's `TreeView`),
//! [`local`] (the mutations the mount makes), [`pull`] (applying the server's journal to REMOTE).

pub mod bootstrap;
pub mod inflight;
pub mod inode_numbers;
pub mod intents;
pub mod lineage;
pub mod local;
pub mod outcomes;
pub mod pull;
pub mod schema;
pub mod specials;
pub mod trees;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use crate::chunking::{ChunkId, ChunkRef, Manifest};
use crate::model::{ContentHash, NodeId};

pub use trees::{SqlTree, Table};

/// Failures of the state database.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("engine database {path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("engine database {path} is corrupt: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error("{0}")]
    Schema(String),
}

pub type StateResult<T> = Result<T, StateError>;

/// The engine database.
pub struct State {
    conn: Connection,
    path: PathBuf,
    /// Relaxed transactions have committed since the WAL was last made durable.
    relaxed_pending: bool,
}

/// Inode number of the root directory (FUSE's root id).
pub const ROOT_INO: u64 = 1;

impl State {
    /// Opens or creates the database at `path` and checks it is sound.
    pub fn open(path: &Path) -> StateResult<Self> {
        let err = |source| StateError::Sqlite {
            path: path.to_owned(),
            source,
        };
        let mut conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(err)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA cache_size = -32768;
             PRAGMA temp_store = MEMORY;",
        )
        .map_err(err)?;
        let quick: String = conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(err)?;
        if quick != "ok" {
            return Err(StateError::Corrupt {
                path: path.to_owned(),
                detail: quick,
            });
        }
        schema::migrate(&mut conn)
            .map_err(err)?
            .map_err(StateError::Schema)?;
        inode_numbers::register(&conn).map_err(err)?;
        let state = Self {
            conn,
            path: path.to_owned(),
            relaxed_pending: false,
        };
        state.ensure_roots()?;
        Ok(state)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The raw connection, for the modules of this crate.
    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }

    pub(crate) fn sql_err(&self, source: rusqlite::Error) -> StateError {
        StateError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// Runs `f` in one transaction (`BEGIN IMMEDIATE`): everything or nothing, durable on return.
    /// An error from `f` rolls the transaction back.
    pub fn transaction<T, E: From<StateError>>(
        &mut self,
        f: impl FnOnce(&Txn<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let path = self.path.clone();
        let err = |source| StateError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(err)?;
        let txn = Txn {
            tx: TxHandle::Own(tx),
            path: &path,
        };
        let value = f(&txn)?;
        if let TxHandle::Own(tx) = txn.tx {
            tx.commit().map_err(err)?;
            // A FULL commit fsyncs the WAL, and with it every relaxed commit before it.
            self.relaxed_pending = false;
        }
        Ok(value)
    }

    /// Runs `f` in one transaction like [`State::transaction`], committed with `synchronous=NORMAL`:
    /// atomic and safe from a crash of the process when this returns, durable against a power loss
    /// at the next [`State::sync_wal`] or FULL transaction. For the mount's mutations, which promise
    /// what a local filesystem does: durable at `fsync`/`fsyncdir`, or within a bounded time.
    pub fn relaxed_transaction<T, E: From<StateError>>(
        &mut self,
        f: impl FnOnce(&Txn<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        self.set_synchronous("NORMAL")?;
        let result = self.transaction(f);
        if result.is_ok() {
            self.relaxed_pending = true;
        }
        // Back to FULL whatever happened: every other transaction must stay durable on commit.
        self.set_synchronous("FULL")?;
        result
    }

    fn set_synchronous(&self, level: &str) -> StateResult<()> {
        self.conn
            .pragma_update(None, "synchronous", level)
            .map_err(|e| self.sql_err(e))
    }

    /// Whether relaxed transactions wait for [`State::sync_wal`] to be durable.
    pub fn relaxed_pending(&self) -> bool {
        self.relaxed_pending
    }

    /// Makes every committed transaction durable: fsyncs the write-ahead log (where relaxed commits
    /// sit until a checkpoint, which fsyncs the log before copying it). Cheap when nothing waits.
    pub fn sync_wal(&mut self) -> StateResult<()> {
        if !self.relaxed_pending {
            return Ok(());
        }
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        let synced = match std::fs::File::open(&wal) {
            Ok(file) => file.sync_all(),
            // No log: everything is in the database file, which checkpoints fsync.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        };
        synced.map_err(|e| {
            self.sql_err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR_FSYNC),
                Some(format!(
                    "cannot fsync {}: {e}",
                    std::path::Path::new(&wal).display()
                )),
            ))
        })?;
        self.relaxed_pending = false;
        Ok(())
    }

    /// Runs `f` in a read transaction: a consistent view, no writes expected. Inside another read
    /// (see [`State::reading`]) it joins that one.
    pub fn read<T, E: From<StateError>>(
        &self,
        f: impl FnOnce(&Txn<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        if !self.conn.is_autocommit() {
            // Only reads can be open here (a write transaction borrows the state mutably): the
            // enclosing read's snapshot serves this one too.
            return f(&Txn {
                tx: TxHandle::Enclosing(&self.conn),
                path: &self.path,
            });
        }
        let tx = self
            .conn
            .unchecked_transaction()
            .map_err(|e| self.sql_err(e))?;
        let txn = Txn {
            tx: TxHandle::Own(tx),
            path: &self.path,
        };
        let value = f(&txn);
        // Nothing was written: ending the transaction either way releases the snapshot.
        if let TxHandle::Own(tx) = txn.tx {
            let _ = tx.rollback();
        }
        value
    }

    /// Runs `f` with `self` inside one read transaction, so that everything it reads through the
    /// state (tree views, [`State::read`]) sees one snapshot and SQLite takes its locks once rather
    /// than once per statement (a plan makes millions of point reads).
    pub fn reading<T, E: From<StateError>>(
        &self,
        f: impl FnOnce(&State) -> Result<T, E>,
    ) -> Result<T, E> {
        self.read(|_| f(self))
    }

    /// A read-only view of one tree.
    pub fn tree(&self, table: Table) -> SqlTree<'_> {
        SqlTree::new(&self.conn, table, &self.path)
    }

    fn ensure_roots(&self) -> StateResult<()> {
        let root = NodeId::ROOT.to_bytes();
        for table in [Table::Remote, Table::Synced] {
            self.conn
                .execute(
                    &format!(
                        "INSERT OR IGNORE INTO {} (id, parent, name, kind, size, mtime_ns, mode, revision)
                         VALUES (?1, ?1, '', 1, 0, 0, 493, 0)",
                        table.name()
                    ),
                    [&root[..]],
                )
                .map_err(|e| self.sql_err(e))?;
        }
        self.conn
            .execute(
                "INSERT OR IGNORE INTO local (id, parent, name, kind, size, mtime_ns, mode, revision, ino)
                 VALUES (?1, ?1, '', 1, 0, 0, 493, 0, ?2)",
                params![&root[..], ROOT_INO as i64],
            )
            .map_err(|e| self.sql_err(e))?;
        // The root has no synced times: it shows when this device first held it, not 1970.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64);
        self.conn
            .execute(
                "UPDATE local SET dir_mtime_ns = ?2, ctime_ns = ?2 WHERE id = ?1 AND dir_mtime_ns IS NULL",
                params![&root[..], now],
            )
            .map_err(|e| self.sql_err(e))?;
        Ok(())
    }

    /// A meta value.
    pub fn meta_u64(&self, key: &str) -> StateResult<Option<u64>> {
        meta_u64(&self.conn, key).map_err(|e| self.sql_err(e))
    }

    pub fn meta_text(&self, key: &str) -> StateResult<Option<String>> {
        self.conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(|e| self.sql_err(e))
    }

    /// The manifest of a content hash, if known.
    pub fn manifest(&self, hash: &ContentHash) -> StateResult<Option<Manifest>> {
        manifest(&self.conn, hash, &self.path)
    }

    /// Whether the manifest of a content hash is stored (without reading it).
    pub fn has_manifest(&self, hash: &ContentHash) -> StateResult<bool> {
        has_manifest(&self.conn, hash, &self.path)
    }

    /// How many ids are waiting to be planned.
    pub fn changed_count(&self) -> StateResult<u64> {
        self.conn
            .query_row("SELECT count(*) FROM changed", [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(|e| self.sql_err(e))
    }

    /// The ids waiting to be planned, and the highest mark among them.
    pub fn changed_ids(&self) -> StateResult<(Vec<NodeId>, i64)> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT seq, id FROM changed ORDER BY seq")
            .map_err(|e| self.sql_err(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))
            .map_err(|e| self.sql_err(e))?;
        let (mut ids, mut last) = (Vec::new(), 0);
        for row in rows {
            let (seq, bytes) = row.map_err(|e| self.sql_err(e))?;
            ids.push(
                NodeId::from_bytes(&bytes)
                    .ok_or_else(|| self.corrupt("a changed id is not 16 bytes"))?,
            );
            last = seq;
        }
        Ok((ids, last))
    }

    pub(crate) fn corrupt(&self, detail: &str) -> StateError {
        StateError::Corrupt {
            path: self.path.clone(),
            detail: detail.to_string(),
        }
    }
}

/// One transaction of the state database (a write, or a read from [`State::read`]).
pub struct Txn<'a> {
    tx: TxHandle<'a>,
    path: &'a Path,
}

/// The transaction a [`Txn`] runs in: its own, or the enclosing read it joined.
enum TxHandle<'a> {
    Own(rusqlite::Transaction<'a>),
    Enclosing(&'a Connection),
}

impl std::ops::Deref for TxHandle<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        match self {
            TxHandle::Own(tx) => tx,
            TxHandle::Enclosing(conn) => conn,
        }
    }
}

impl Txn<'_> {
    pub(crate) fn conn(&self) -> &Connection {
        &self.tx
    }

    pub(crate) fn err(&self, source: rusqlite::Error) -> StateError {
        StateError::Sqlite {
            path: self.path.to_owned(),
            source,
        }
    }

    pub(crate) fn corrupt(&self, detail: &str) -> StateError {
        StateError::Corrupt {
            path: self.path.to_owned(),
            detail: detail.to_string(),
        }
    }

    pub fn tree(&self, table: Table) -> SqlTree<'_> {
        SqlTree::new(&self.tx, table, self.path)
    }

    /// Marks an id for the next plan.
    pub fn mark_changed(&self, id: NodeId) -> StateResult<()> {
        self.tx
            .prepare_cached("INSERT OR REPLACE INTO changed (id) VALUES (?1)")
            .and_then(|mut s| s.execute([&id.to_bytes()[..]]))
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Forgets the ids marked at or before `seq` (a plan covering them found nothing to do), except
    /// `keep` (ids the plan held or reported, which stay pending).
    pub fn clear_changed_through(&self, seq: i64, keep: &[NodeId]) -> StateResult<()> {
        self.tx
            .execute("DELETE FROM changed WHERE seq <= ?1", [seq])
            .map_err(|e| self.err(e))?;
        for id in keep {
            self.tx
                .prepare_cached("INSERT OR IGNORE INTO changed (id) VALUES (?1)")
                .and_then(|mut s| s.execute([&id.to_bytes()[..]]))
                .map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    pub fn set_meta(&self, key: &str, value: impl rusqlite::ToSql) -> StateResult<()> {
        self.tx
            .prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")
            .and_then(|mut s| s.execute(params![key, value]))
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub fn meta_u64(&self, key: &str) -> StateResult<Option<u64>> {
        meta_u64(&self.tx, key).map_err(|e| self.err(e))
    }

    pub fn delete_meta(&self, key: &str) -> StateResult<()> {
        self.tx
            .execute("DELETE FROM meta WHERE key = ?1", [key])
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Stores a manifest (idempotent).
    pub fn put_manifest(&self, manifest: &Manifest) -> StateResult<()> {
        let mut packed = Vec::with_capacity(manifest.chunks.len() * 36);
        for chunk in &manifest.chunks {
            packed.extend_from_slice(&chunk.id.0);
            packed.extend_from_slice(&chunk.len.to_le_bytes());
        }
        self.tx
            .prepare_cached(
                "INSERT OR IGNORE INTO manifests (hash, size, chunks) VALUES (?1, ?2, ?3)",
            )
            .and_then(|mut s| {
                s.execute(params![&manifest.hash.0[..], manifest.size as i64, packed])
            })
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub fn manifest(&self, hash: &ContentHash) -> StateResult<Option<Manifest>> {
        manifest(&self.tx, hash, self.path)
    }

    /// Whether the manifest of a content hash is stored (without reading it).
    pub fn has_manifest(&self, hash: &ContentHash) -> StateResult<bool> {
        has_manifest(&self.tx, hash, self.path)
    }
}

fn has_manifest(conn: &Connection, hash: &ContentHash, path: &Path) -> StateResult<bool> {
    conn.prepare_cached("SELECT 1 FROM manifests WHERE hash = ?1")
        .and_then(|mut s| s.exists([&hash.0[..]]))
        .map_err(|source| StateError::Sqlite {
            path: path.to_owned(),
            source,
        })
}

fn meta_u64(conn: &Connection, key: &str) -> rusqlite::Result<Option<u64>> {
    conn.prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row([key], |r| r.get::<_, i64>(0))
        .optional()
        .map(|v| v.map(|v| v as u64))
}

fn manifest(conn: &Connection, hash: &ContentHash, path: &Path) -> StateResult<Option<Manifest>> {
    let err = |source| StateError::Sqlite {
        path: path.to_owned(),
        source,
    };
    let row: Option<(i64, Vec<u8>)> = conn
        .prepare_cached("SELECT size, chunks FROM manifests WHERE hash = ?1")
        .map_err(err)?
        .query_row([&hash.0[..]], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
        .map_err(err)?;
    let Some((size, packed)) = row else {
        return Ok(None);
    };
    unpack_manifest(*hash, size, &packed)
        .map(Some)
        .map_err(|detail| StateError::Corrupt {
            path: path.to_owned(),
            detail,
        })
}

/// Decodes a stored manifest (untrusted: it comes from disk): 36-byte chunk records whose lengths
/// add up to `size`. Never panics; the error says what is wrong.
pub fn unpack_manifest(hash: ContentHash, size: i64, packed: &[u8]) -> Result<Manifest, String> {
    if !packed.len().is_multiple_of(36) {
        return Err(format!(
            "manifest {hash} is {} bytes, not a multiple of 36",
            packed.len()
        ));
    }
    let chunks: Vec<ChunkRef> = packed
        .chunks_exact(36)
        .map(|c| ChunkRef {
            id: ChunkId(c[..32].try_into().expect("36-byte record")),
            len: u32::from_le_bytes(c[32..].try_into().expect("36-byte record")),
        })
        .collect();
    let total: u64 = chunks.iter().map(|c| u64::from(c.len)).sum();
    if size < 0 || total != size as u64 {
        return Err(format!(
            "manifest {hash} says {size} bytes but its chunks add up to {total}"
        ));
    }
    Ok(Manifest {
        hash,
        size: size as u64,
        chunks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synchronous(state: &State) -> i64 {
        state
            .conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap()
    }

    /// A sync error about a node that exists on neither side any more (a temporary file deleted
    /// before its upload) is forgotten by the next plan's outcome; one about a live node stays.
    #[test]
    fn sync_errors_of_vanished_nodes_are_forgotten() {
        use crate::model::{Attrs, NodeId, NodeKind};
        let dir = tempfile::tempdir().unwrap();
        let mut state = State::open(&dir.path().join("state.sqlite")).unwrap();
        let vanished = NodeId::new_random();
        let live = NodeId::new_random();
        state
            .transaction(|t| -> Result<(), Box<dyn std::error::Error>> {
                t.local_create(ROOT_INO, "kept.txt", NodeKind::File, Attrs::default(), live)?;
                t.record_sync_error(vanished, "content-unavailable: gone")?;
                t.record_sync_error(live, "refused")?;
                t.record_plan_outcome(&crate::planner::Plan::default())?;
                assert_eq!(t.sync_error(vanished)?, None);
                assert_eq!(t.sync_error(live)?.as_deref(), Some("refused"));
                Ok(())
            })
            .unwrap();
    }

    /// Relaxed commits wait for `sync_wal` (or a FULL commit) to be durable, and never leave the
    /// connection relaxed for the transactions after them, even when they fail.
    #[test]
    fn relaxed_transactions_are_flushed_and_leave_full_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.sqlite");
        let mut state = State::open(&path).unwrap();
        const FULL: i64 = 2;
        assert_eq!(synchronous(&state), FULL);
        assert!(!state.relaxed_pending());

        state
            .relaxed_transaction(|t| t.set_meta("k", 1i64))
            .unwrap();
        assert!(state.relaxed_pending());
        assert_eq!(synchronous(&state), FULL);
        state.sync_wal().unwrap();
        assert!(!state.relaxed_pending());

        let failed: StateResult<()> =
            state.relaxed_transaction(|_| Err(StateError::Schema("refused".into())));
        assert!(failed.is_err());
        assert!(
            !state.relaxed_pending(),
            "a rolled-back transaction waits for nothing"
        );
        assert_eq!(synchronous(&state), FULL);

        state
            .relaxed_transaction(|t| t.set_meta("k", 2i64))
            .unwrap();
        state.transaction(|t| t.set_meta("j", 3i64)).unwrap();
        assert!(
            !state.relaxed_pending(),
            "a FULL commit fsyncs the log before it"
        );

        // A crash of the process (the connection dropped without a checkpoint) keeps relaxed commits.
        state
            .relaxed_transaction(|t| t.set_meta("k", 4i64))
            .unwrap();
        std::mem::forget(state);
        let state = State::open(&path).unwrap();
        let k: i64 = state
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'k'", [], |r| r.get(0))
            .unwrap();
        assert_eq!(k, 4);
    }
}

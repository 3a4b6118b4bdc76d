//! One SQLite database file with its connections: a writer behind a mutex (SQLite has one writer per
//! database) and a small pool of readers, which WAL lets run beside it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use parking_lot::Mutex;
use rusqlite::Connection;

use super::meta_err;
use crate::store::StoreResult;

/// One database: its writer and its idle readers.
pub(super) struct Pool {
    pub(super) writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    max_readers: usize,
    path: PathBuf,
}

/// Opens a connection in WAL mode with `synchronous=FULL` (an acknowledged commit survives a crash).
pub(super) fn open_connection(path: &Path) -> StoreResult<Connection> {
    let conn = Connection::open(path).map_err(meta_err)?;
    conn.busy_timeout(Duration::from_secs(30))
        .map_err(meta_err)?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;",
    )
    .map_err(meta_err)?;
    Ok(conn)
}

impl Pool {
    /// A pool over `writer`, the database at `path`, keeping up to `max_readers` idle readers.
    pub(super) fn new(writer: Connection, path: &Path, max_readers: usize) -> Self {
        Self {
            writer: Mutex::new(writer),
            readers: Mutex::new(Vec::new()),
            max_readers,
            path: path.to_owned(),
        }
    }

    /// Runs `f` on a reader connection.
    pub(super) fn read<T>(&self, f: impl FnOnce(&Connection) -> StoreResult<T>) -> StoreResult<T> {
        let conn = match self.readers.lock().pop() {
            Some(conn) => conn,
            None => open_connection(&self.path)?,
        };
        let result = f(&conn);
        let mut readers = self.readers.lock();
        if readers.len() < self.max_readers {
            readers.push(conn);
        }
        result
    }
}

//! File intents: changes to materialized copies that a committed round transaction decided but that
//! happen on disk after it (remove a stale copy, move local bytes to a conflicted copy). Each is
//! recorded in the same transaction as the LOCAL change that needs it and deleted once done, so a
//! crash in between is replayed at start-up instead of the stale copy being taken for a local edit.

use rusqlite::params;

use super::{StateResult, Txn};
use crate::content::FileOp;
use crate::model::ContentHash;

impl Txn<'_> {
    /// Records that `op` must happen (in the transaction that makes it necessary).
    pub fn record_file_intent(&self, op: &FileOp) -> StateResult<()> {
        let (ino, to, expected) = match *op {
            FileOp::Remove { ino, expected } => (ino, None, expected),
            FileOp::Rename { from, to, expected } => (from, Some(to), expected),
        };
        self.conn()
            .prepare_cached(
                "INSERT OR REPLACE INTO file_intents (ino, to_ino, expected) VALUES (?1, ?2, ?3)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    ino as i64,
                    to.map(|t| t as i64),
                    expected.map(|h| h.0.to_vec())
                ])
            })
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Every intent not yet done.
    pub fn file_intents(&self) -> StateResult<Vec<FileOp>> {
        let mut stmt = self
            .conn()
            .prepare_cached("SELECT ino, to_ino, expected FROM file_intents ORDER BY ino")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    r.get::<_, Option<i64>>(1)?.map(|t| t as u64),
                    r.get::<_, Option<Vec<u8>>>(2)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut ops = Vec::new();
        for row in rows {
            let (ino, to, expected) = row.map_err(|e| self.err(e))?;
            let expected = match expected {
                None => None,
                Some(bytes) => Some(
                    ContentHash::from_slice(&bytes)
                        .ok_or_else(|| self.corrupt("a file intent's hash is not 32 bytes"))?,
                ),
            };
            ops.push(match to {
                None => FileOp::Remove { ino, expected },
                Some(to) => FileOp::Rename {
                    from: ino,
                    to,
                    expected,
                },
            });
        }
        Ok(ops)
    }

    /// Forgets the intent of the copy `ino` (done).
    pub fn delete_file_intent(&self, ino: u64) -> StateResult<()> {
        self.conn()
            .prepare_cached("DELETE FROM file_intents WHERE ino = ?1")
            .and_then(|mut s| s.execute([ino as i64]))
            .map_err(|e| self.err(e))?;
        Ok(())
    }
}

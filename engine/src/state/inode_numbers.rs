//! Inode numbers of LOCAL nodes: the same on every device where possible, never reused.
//!
//! Tools that compare stat data across machines (git's index records `st_ino` and `st_ctime`
//! with each file) see a file synced to two devices as one file only if both report the same
//! numbers. So a node's first inode number on a device is **stable**: derived from its node id
//! alone ([`stable_ino_of`]), in `[STABLE_INO_BASE, 2^63)`, which every device computes alike.
//!
//! Inode numbers are never reused on a device (a kernel may still hold an old one, and copies
//! are named by inode), so a stable number is handed out at most once: `stable_inos` records
//! every one ever given. When a node cannot have its stable number (two ids hashing alike, the
//! same node inserted again after it was removed, a number still used by a kept copy) or moves
//! to a fresh one (a new version under open handles: `renumber_local`), it takes the next number
//! of the device's **sequence**, which starts at [`ROOT_INO`]` + 1` and stays below
//! [`STABLE_INO_BASE`]. Numbers stay below 2^63 so they fit SQLite's signed integers and every
//! signed 64-bit `ino_t` consumer.

use rusqlite::functions::FunctionFlags;
use rusqlite::{Connection, params};

use super::{ROOT_INO, StateResult, Txn};
use crate::model::NodeId;

/// The first stable inode number; the sequence stays below it.
pub const STABLE_INO_BASE: u64 = 1 << 62;

/// The `meta` key of the sequence's next number.
const SEQUENCE_NEXT: &str = "next_ino";

/// The SQL name of [`stable_ino_of`] on the state's connection (for bulk inserts).
pub const STABLE_INO_SQL: &str = "bvfs_stable_ino";

/// The stable inode number of node `id`: 62 bits of BLAKE3 of its id above [`STABLE_INO_BASE`].
pub fn stable_ino_of(id: NodeId) -> u64 {
    let hash = blake3::hash(&id.to_bytes());
    let mut low = [0u8; 8];
    low.copy_from_slice(&hash.as_bytes()[..8]);
    STABLE_INO_BASE | (u64::from_le_bytes(low) & (STABLE_INO_BASE - 1))
}

/// Registers [`STABLE_INO_SQL`]`(id BLOB) -> INTEGER` on `conn` (NULL for a blob that is not an id).
pub(super) fn register(conn: &Connection) -> rusqlite::Result<()> {
    conn.create_scalar_function(
        STABLE_INO_SQL,
        1,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            let id = ctx.get_raw(0).as_blob().ok().and_then(NodeId::from_bytes);
            Ok(id.map(|id| stable_ino_of(id) as i64))
        },
    )
}

impl Txn<'_> {
    /// The inode number for a node `id` being inserted into LOCAL: its stable number unless that
    /// was ever handed out on this device, else the next of the sequence.
    pub(crate) fn ino_for_new_node(&self, id: NodeId) -> StateResult<u64> {
        let stable = stable_ino_of(id);
        let claimed = self
            .conn()
            .prepare_cached("INSERT OR IGNORE INTO stable_inos (ino) VALUES (?1)")
            .and_then(|mut s| s.execute([stable as i64]))
            .map_err(|e| self.err(e))?;
        if claimed == 1 {
            Ok(stable)
        } else {
            self.next_ino()
        }
    }

    /// The sequence's next number, not handed out yet.
    pub(crate) fn sequence_next(&self) -> StateResult<u64> {
        Ok(self.meta_u64(SEQUENCE_NEXT)?.unwrap_or(ROOT_INO + 1))
    }

    /// Moves the sequence on: numbers below `next` count as handed out.
    pub(crate) fn set_sequence_next(&self, next: u64) -> StateResult<()> {
        self.set_meta(SEQUENCE_NEXT, next as i64)
    }

    /// The next number of the device's sequence (persisted, never reused).
    pub(crate) fn next_ino(&self) -> StateResult<u64> {
        let next = self.sequence_next()?;
        if next >= STABLE_INO_BASE {
            return Err(self.corrupt("the inode sequence reached the stable numbers"));
        }
        self.set_sequence_next(next + 1)?;
        Ok(next)
    }

    /// Makes sure none of `inos` (numbers kept copies still use) is ever handed out again.
    pub fn reserve_inos(&self, inos: &[u64]) -> StateResult<()> {
        if let Some(&max) = inos.iter().filter(|&&i| i < STABLE_INO_BASE).max()
            && self.sequence_next()? <= max
        {
            self.set_sequence_next(max + 1)?;
        }
        let mut insert = self
            .conn()
            .prepare_cached("INSERT OR IGNORE INTO stable_inos (ino) VALUES (?1)")
            .map_err(|e| self.err(e))?;
        for &ino in inos.iter().filter(|&&i| i >= STABLE_INO_BASE) {
            insert
                .execute(params![ino as i64])
                .map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// Records as handed out every stable number LOCAL holds (after a bulk insert).
    pub(crate) fn record_stable_inos(&self) -> StateResult<()> {
        self.conn()
            .execute(
                "INSERT OR IGNORE INTO stable_inos (ino) SELECT ino FROM local WHERE ino >= ?1",
                [STABLE_INO_BASE as i64],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_numbers_depend_on_the_id_alone_and_stay_in_their_range() {
        for n in [
            1u128,
            2,
            u128::MAX,
            0x1234_5678_9abc_def0_1122_3344_5566_7788,
        ] {
            let id = NodeId::from_bytes(&n.to_be_bytes()).unwrap();
            let ino = stable_ino_of(id);
            assert_eq!(ino, stable_ino_of(id));
            assert!((STABLE_INO_BASE..1 << 63).contains(&ino), "{ino:#x}");
        }
        assert_ne!(
            stable_ino_of(NodeId::from_bytes(&1u128.to_be_bytes()).unwrap()),
            stable_ino_of(NodeId::from_bytes(&2u128.to_be_bytes()).unwrap())
        );
    }
}

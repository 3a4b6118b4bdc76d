//! The engine database schema and its migrations (`PRAGMA user_version`).

use rusqlite::Connection;

/// The schema this build writes.
pub const VERSION: i64 = 4;

/// The three trees share one shape; LOCAL adds the per-device columns.
const TREE_COLUMNS: &str = "
    id BLOB PRIMARY KEY,
    parent BLOB NOT NULL,
    name TEXT NOT NULL,
    kind INTEGER NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    executable INTEGER NOT NULL,
    content BLOB,
    symlink TEXT,
    revision INTEGER NOT NULL";

fn v1() -> String {
    format!(
        "
CREATE TABLE remote ({TREE_COLUMNS}) WITHOUT ROWID;
CREATE INDEX remote_children ON remote (parent, name);
CREATE TABLE synced ({TREE_COLUMNS}) WITHOUT ROWID;
CREATE INDEX synced_children ON synced (parent, name);
CREATE TABLE local ({TREE_COLUMNS},
    -- Stable inode number of this local object (kept across renames and re-identification).
    ino INTEGER NOT NULL UNIQUE,
    -- Pinned: keep the content local; new children inherit it.
    pinned INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE UNIQUE INDEX local_children ON local (parent, name);

-- Chunk manifests by content hash: chunks is the packed list of (32-byte id, 4-byte LE length).
CREATE TABLE manifests (
    hash BLOB PRIMARY KEY,
    size INTEGER NOT NULL,
    chunks BLOB NOT NULL
) WITHOUT ROWID;

-- Ids whose REMOTE, LOCAL and SYNCED states may differ: the planner's input. Marking an id again
-- gives it a new seq, so a round clears only what it planned (seq <= the seq it started from).
CREATE TABLE changed (seq INTEGER PRIMARY KEY AUTOINCREMENT, id BLOB NOT NULL UNIQUE);

-- Files with a writable local copy (cache/files/<ino>): written through the mount.
CREATE TABLE materialized (
    ino INTEGER PRIMARY KEY,
    -- The content hash the copy held when last chunked (NULL: never chunked yet).
    content BLOB
);

-- Commits sent whose answer has not arrived: the state each op should leave its node in (deleted = 1
-- for deletes). When the journal shows a node in exactly that state, the commit did land (its answer
-- was lost): SYNCED takes that state instead of the planner seeing a conflict with ourselves.
CREATE TABLE inflight (
    id BLOB PRIMARY KEY,
    parent BLOB,
    name TEXT,
    kind INTEGER,
    content BLOB,
    symlink TEXT,
    deleted INTEGER NOT NULL
) WITHOUT ROWID;

-- Single values: cursor, snapshot progress, identity.
CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;

-- What happened that the user should know about.
CREATE TABLE conflicts (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ns INTEGER NOT NULL,
    node BLOB NOT NULL,
    copy BLOB,
    description TEXT NOT NULL
);

-- Deletes the bulk-delete brake holds, and the ones the user confirmed.
CREATE TABLE held_deletes (
    id BLOB PRIMARY KEY,
    side TEXT NOT NULL,
    path TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE confirmed_deletes (id BLOB PRIMARY KEY) WITHOUT ROWID;

-- Nodes that failed to sync for a reason that retrying will not fix, with the reason.
CREATE TABLE sync_errors (
    id BLOB PRIMARY KEY,
    message TEXT NOT NULL,
    attempts INTEGER NOT NULL
) WITHOUT ROWID;
"
    )
}

/// Version 2: file intents (see `state::intents`); the unused `materialized` table goes.
const V2: &str = "
CREATE TABLE file_intents (
    -- The copy the change is about (files/<ino>).
    ino INTEGER PRIMARY KEY,
    -- NULL: remove the copy; else rename it to files/<to_ino> (a conflicted copy takes the bytes).
    to_ino INTEGER,
    -- The content hash the copy held when the change was decided.
    expected BLOB
);
DROP TABLE IF EXISTS materialized;
";

/// Version 3 (issue 9): the permission bits replace the executable bit (`mode`), extended
/// attributes sync with the node (`xattrs`), and LOCAL keeps what is per device: ownership, access
/// and change times, and a directory's modification time.
const V3: &str = "
ALTER TABLE remote RENAME COLUMN executable TO mode;
ALTER TABLE synced RENAME COLUMN executable TO mode;
ALTER TABLE local RENAME COLUMN executable TO mode;
UPDATE remote SET mode = CASE kind WHEN 1 THEN 493 WHEN 3 THEN 511 ELSE CASE mode WHEN 0 THEN 420 ELSE 493 END END;
UPDATE synced SET mode = CASE kind WHEN 1 THEN 493 WHEN 3 THEN 511 ELSE CASE mode WHEN 0 THEN 420 ELSE 493 END END;
UPDATE local SET mode = CASE kind WHEN 1 THEN 493 WHEN 3 THEN 511 ELSE CASE mode WHEN 0 THEN 420 ELSE 493 END END;
ALTER TABLE remote ADD COLUMN xattrs BLOB;
ALTER TABLE synced ADD COLUMN xattrs BLOB;
ALTER TABLE local ADD COLUMN xattrs BLOB;
-- Per device (NULL: the mounting user, or the node's synced times).
ALTER TABLE local ADD COLUMN uid INTEGER;
ALTER TABLE local ADD COLUMN gid INTEGER;
ALTER TABLE local ADD COLUMN atime_ns INTEGER;
ALTER TABLE local ADD COLUMN ctime_ns INTEGER;
ALTER TABLE local ADD COLUMN dir_mtime_ns INTEGER;
-- Special files (FIFOs, sockets, devices): this device's only, never synced (`state::specials`).
CREATE TABLE specials (
    ino INTEGER PRIMARY KEY,
    parent BLOB NOT NULL,
    name TEXT NOT NULL,
    kind INTEGER NOT NULL,
    rdev INTEGER NOT NULL,
    mode INTEGER NOT NULL,
    uid INTEGER,
    gid INTEGER,
    atime_ns INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL
);
CREATE UNIQUE INDEX specials_by_name ON specials (parent, name);
";

/// Version 4: stable inode numbers ([`super::inode_numbers`]). Numbers already in LOCAL are from
/// the sequence, so nothing moves.
const V4: &str = "
-- Every stable inode number ever handed out on this device (never handed out twice).
CREATE TABLE stable_inos (ino INTEGER PRIMARY KEY);
";

/// Brings the database to [`VERSION`].
pub fn migrate(conn: &mut Connection) -> rusqlite::Result<Result<(), String>> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    match version {
        0..=3 => {
            let tx = conn.transaction()?;
            if version == 0 {
                tx.execute_batch(&v1())?;
            }
            if version <= 1 {
                tx.execute_batch(V2)?;
            }
            if version <= 2 {
                tx.execute_batch(V3)?;
            }
            tx.execute_batch(V4)?;
            tx.execute_batch(&format!("PRAGMA user_version = {VERSION}"))?;
            tx.commit()?;
            Ok(Ok(()))
        }
        VERSION => Ok(Ok(())),
        newer => Ok(Err(format!(
            "the engine database has schema version {newer}, newer than this bvfs understands ({VERSION})"
        ))),
    }
}

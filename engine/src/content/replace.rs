//! The sync round's side of content ownership: reserving the inodes whose copies its local ops
//! change, recording each change as a durable intent in the round's transaction, doing the changes
//! on disk after it commits, and replaying intents a crash or a failure left behind.
//!
//! Order of durable steps for a remote update, delete or conflict over a copy:
//! 1. [`super::Contents::reserve`] (no writer, nothing uncommitted, no step running; opens now wait);
//! 2. one transaction: LOCAL takes the new state and `file_intents` the change, with the content
//!    hash the copy holds;
//! 3. the change on disk (unlink, or a rename that never replaces), then an fsync of the directory;
//! 4. the intents are deleted, the reservations released, and the openers woken.
//!
//! After a crash between 2 and 4, recovery finds the intent and redoes the change if the copy still
//! holds the expected bytes (hashing is truth, D5); a copy that holds anything else is kept as a
//! conflicted copy. Nothing ever records a stale copy as a local edit.

use std::collections::{HashMap, HashSet};

use super::Reservation;
use crate::api::{Engine, EngineError, EngineResult};
use crate::faults::FaultPoint;
use crate::model::ContentHash;
use crate::state::Txn;

/// A change to the materialized copies, done after the round's transaction commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileOp {
    /// The copy of this inode is stale (its node's content changed or the node is gone): drop it.
    Remove {
        ino: u64,
        expected: Option<ContentHash>,
    },
    /// The copy moves to another inode (a conflicted copy takes the local bytes).
    Rename {
        from: u64,
        to: u64,
        expected: Option<ContentHash>,
    },
}

impl FileOp {
    /// The inode whose copy the change is about.
    pub fn ino(&self) -> u64 {
        match *self {
            FileOp::Remove { ino, .. } => ino,
            FileOp::Rename { from, .. } => from,
        }
    }

    fn expected(&self) -> Option<ContentHash> {
        match *self {
            FileOp::Remove { expected, .. } | FileOp::Rename { expected, .. } => expected,
        }
    }
}

/// The inodes one round reserved and the file changes it decided.
#[derive(Default)]
pub struct FileChanges {
    reserved: HashMap<u64, Reservation>,
    ops: Vec<FileOp>,
    /// Inodes whose content changed in place: their next open drops the kernel's cached pages.
    stale_pages: Vec<u64>,
    /// Copies that readers hold open and that a conflicted copy takes: the conflicted copy gets a
    /// copy of the bytes, so what the readers read never changes under them.
    copy_for_readers: HashSet<u64>,
}

impl FileChanges {
    /// Whether the round has anything to finish.
    pub fn is_empty(&self) -> bool {
        self.reserved.is_empty() && self.ops.is_empty()
    }

    /// The changes decided (tests, logs).
    pub fn ops(&self) -> &[FileOp] {
        &self.ops
    }
}

impl Engine {
    /// Reserves `ino` for a change of its content in this round; `None` if something holds it (the
    /// op waits for a later round).
    pub(crate) fn reserve_content(
        &self,
        changes: &mut FileChanges,
        ino: u64,
    ) -> Option<Reservation> {
        if let Some(r) = changes.reserved.get(&ino) {
            return Some(*r);
        }
        match self.contents.reserve(ino) {
            Reservation::Busy => None,
            r => {
                changes.reserved.insert(ino, r);
                Some(r)
            }
        }
    }

    /// Decides `op` inside the round's transaction (its inode must be reserved): recorded as an
    /// intent, done after the commit.
    pub(crate) fn plan_file_op(
        &self,
        t: &Txn<'_>,
        changes: &mut FileChanges,
        op: FileOp,
    ) -> EngineResult<()> {
        debug_assert!(changes.reserved.contains_key(&op.ino()));
        if let FileOp::Rename { from, to, .. } = op {
            if changes.reserved.get(&from) == Some(&Reservation::Held) {
                changes.copy_for_readers.insert(from);
            }
            // The conflicted copy's inode is new, but visible once the transaction commits: opens of
            // it wait until its bytes are in place.
            let reserved = self.reserve_content(changes, to);
            debug_assert!(reserved.is_some(), "a fresh inode {to} is held");
        }
        t.record_file_intent(&op)?;
        changes.ops.push(op);
        Ok(())
    }

    /// The content of reserved `ino` changed in place (no handle was open on it).
    pub(crate) fn content_changed_in_place(&self, changes: &mut FileChanges, ino: u64) {
        changes.stale_pages.push(ino);
    }

    /// Releases the reservations of a round whose transaction failed: nothing changed.
    pub(crate) fn abandon_file_changes(&self, changes: FileChanges) {
        for ino in changes.reserved.keys() {
            self.contents.release(*ino, true);
        }
    }

    /// Does the file changes of a committed round transaction, then forgets their intents and
    /// releases the reservations. A change that fails leaves its inode unusable (opens fail with
    /// `EIO`) until [`Engine::replay_file_intents`] succeeds.
    pub(crate) fn finish_file_changes(&self, changes: FileChanges) {
        let faults = &self.config.faults;
        faults.reach(FaultPoint::LocalOpsCommitted);
        let mut failed: HashSet<u64> = HashSet::new();
        for op in &changes.ops {
            let done = match *op {
                FileOp::Rename { from, to, .. } if changes.copy_for_readers.contains(&from) => {
                    self.files.copy_then_remove(from, to)
                }
                _ => self.do_file_op(op),
            };
            faults.reach(FaultPoint::CopyChanged);
            if let Err(e) = done {
                tracing::error!(?op, "a change to a local copy failed: {e}; retrying later");
                failed.insert(op.ino());
                if let FileOp::Rename { to, .. } = op {
                    failed.insert(*to);
                }
            }
        }
        let synced = changes.ops.is_empty() || self.files.sync_dir().is_ok();
        faults.reach(FaultPoint::CopiesSynced);
        let forgotten = synced
            && self
                .state
                .lock()
                .transaction(|t| {
                    changes
                        .ops
                        .iter()
                        .filter(|op| !failed.contains(&op.ino()))
                        .try_for_each(|op| t.delete_file_intent(op.ino()))
                })
                .is_ok();
        faults.reach(FaultPoint::IntentsForgotten);
        for ino in &changes.stale_pages {
            self.contents.mark_pages_stale(*ino);
        }
        for ino in changes.reserved.keys() {
            let ok = forgotten && !failed.contains(ino);
            self.contents.release(*ino, ok);
        }
    }

    /// Does one file change, idempotently (a replay may find it done).
    fn do_file_op(&self, op: &FileOp) -> std::io::Result<()> {
        match *op {
            FileOp::Remove { ino, .. } => self.files.remove(ino),
            FileOp::Rename { from, to, .. } => match self.files.exists(from) {
                true => self.files.rename(from, to),
                false => Ok(()),
            },
        }
    }

    /// Replays the intents left in the database: at start-up (a crash between a round's
    /// transaction and its file changes), and at each round for changes that failed. A copy whose
    /// bytes are not the expected ones is kept as a conflicted copy rather than dropped or moved.
    pub(crate) fn replay_file_intents(&self, startup: bool) -> EngineResult<()> {
        let intents = self.state.lock().read(|t| t.file_intents())?;
        for op in intents {
            let mut held = vec![op.ino()];
            if let FileOp::Rename { to, .. } = op {
                held.push(to);
            }
            // At run time only changes that failed are left (their inodes are broken); at start-up
            // nothing else runs yet.
            if !startup && !self.contents.take_broken(op.ino()) {
                continue;
            }
            if !startup && let FileOp::Rename { to, .. } = op {
                self.contents.take_broken(to);
            }
            let result = self.replay_one(&op);
            if let Err(e) = &result {
                tracing::error!(?op, "replaying a change to a local copy failed: {e}");
            }
            if !startup {
                for ino in held {
                    if self.contents.is_reserved(ino) {
                        self.contents.release(ino, result.is_ok());
                    }
                }
            }
        }
        Ok(())
    }

    fn replay_one(&self, op: &FileOp) -> EngineResult<()> {
        let ino = op.ino();
        if self.files.exists(ino) {
            let found = self.files.chunk(ino, |_, _| Ok(()))?.hash;
            let target_taken = matches!(*op, FileOp::Rename { to, .. } if self.files.exists(to));
            if op.expected().is_some_and(|e| e != found) || target_taken {
                tracing::warn!(
                    ?op,
                    "a local copy does not hold the bytes its pending change expects; keeping it as a conflicted copy"
                );
                self.keep_copy_aside(ino)?;
            } else {
                self.do_file_op(op)?;
            }
            self.files.sync_dir()?;
        }
        self.state
            .lock()
            .transaction(|t| t.delete_file_intent(ino))
            .map_err(EngineError::from)
    }
}

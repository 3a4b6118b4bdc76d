//! The one owner of every inode's local content (DESIGN D10).
//!
//! A file's bytes live in the chunks of its LOCAL content (a placeholder, hydrated through the chunk
//! cache) and, once it is written through the mount, in a materialized copy `files/<ino>`. Everything
//! that creates, writes, re-chunks, replaces or removes a copy goes through [`Contents`]: the FUSE
//! handlers (open, write, fsync, release, truncate, unlink), the sync round (a remote update, delete
//! or conflicted copy over a copy) and start-up recovery. Nothing else calls the mutating methods of
//! [`crate::files::LocalFiles`].
//!
//! Per inode, one [`InodeContent`] under one mutex says who holds it:
//!
//! - `writers`/`readers`: open handles. A reader registers *before* it reads the LOCAL entry, so the
//!   round always knows whether a handle may hold the version it is about to replace.
//! - `dirty`: the copy may hold bytes LOCAL does not record yet (a writer closed, or a commit was
//!   skipped or failed). A dirty copy is never replaced: it is committed first.
//! - `step`: the exclusive step running without the lock held: `Materializing` (single flight: other
//!   openers wait for it), `Committing` (one re-chunk at a time), `Replacing` (the round reserved the
//!   inode for a file change; openers wait) or `Broken` (that change failed on disk; opens fail with
//!   `EIO` until recovery replays it).
//!
//! The rules (ARCHITECTURE.md, "Content ownership"):
//!
//! 1. The round replaces or removes a copy only after [`Contents::reserve`] succeeded, which needs no
//!    writer, no dirty bytes and no step running. Otherwise the op waits for a later round, by which
//!    time the local bytes are committed and the planner sees a conflict instead of an update.
//! 2. A reservation is held from before the round's transaction until its file changes are done;
//!    the transaction records each change as an intent (`file_intents`), so a crash in between is
//!    replayed by recovery instead of being mistaken for a local edit.
//! 3. A copy is built once (`Materializing` is single flight) and never renamed over another copy.
//! 4. When the round changes the content of an inode that has open handles, the node gets a fresh
//!    inode number: the old handles keep the old inode (and its kernel page cache), new opens get the
//!    new one, so no page cache ever mixes two versions. An inode whose content changed while nothing
//!    held it is opened next without the kernel's cached pages ([`Contents::begin_read`]).
//! 5. A commit that saw a write land while it chunked the copy records nothing (the copy stays
//!    dirty): LOCAL never takes a state the file was never in.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::files::LocalFiles;

mod open;
mod replace;

pub use open::{ReadLease, ReadOpen, ReadSource, WriteOpen};
pub use replace::{FileChanges, FileOp};

/// The exclusive step an inode is in.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    #[default]
    Idle,
    Materializing,
    Committing,
    Replacing,
    Broken,
}

/// Who holds one inode's content.
#[derive(Debug, Default)]
struct InodeContent {
    writers: usize,
    readers: usize,
    dirty: bool,
    step: Step,
    /// Unlinked while a writer or a step held the copy: removed when the last one is done.
    unlinked: bool,
    /// Bumped by every write through a handle (see [`WriteCounter`]).
    writes: Arc<AtomicU64>,
}

impl InodeContent {
    fn is_idle(&self) -> bool {
        self.writers == 0
            && self.readers == 0
            && !self.dirty
            && self.step == Step::Idle
            && !self.unlinked
    }
}

/// Counts the writes of one inode; a handle bumps it on every write, so a commit can tell whether
/// the copy changed while it was being chunked.
#[derive(Debug, Clone)]
pub struct WriteCounter(Arc<AtomicU64>);

impl WriteCounter {
    pub fn wrote(&self) {
        self.0.fetch_add(1, Ordering::Release);
    }

    pub(crate) fn load(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

/// Why an inode's content cannot be used right now.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    #[error(
        "a change to the local copy of inode {0} failed on disk; it is retried at the next sync round"
    )]
    Broken(u64),
}

/// What [`Contents::begin_write`] found.
pub(crate) enum WriteStart {
    /// A copy exists; the caller is registered as a writer.
    Joined(WriteCounter),
    /// No copy: the caller builds it, then calls [`Contents::finish_materialize`].
    Build,
}

/// What [`Contents::reserve`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reservation {
    /// Reserved, and no handle is open: the content may change in place.
    Free,
    /// Reserved, but handles are open on it: a content change must move the node to a fresh inode.
    Held,
    /// A writer, uncommitted bytes or a step hold the content: the op waits.
    Busy,
}

/// The content owner of all inodes of one engine.
pub(crate) struct Contents {
    inner: Mutex<Inner>,
    changed: Condvar,
    /// Bumped by every commit as it ends, before its inode stops counting as "copy newer" (see
    /// [`Contents::settled`]).
    settled: AtomicU64,
}

#[derive(Default)]
struct Inner {
    inodes: HashMap<u64, InodeContent>,
    /// Inodes whose content changed while nothing held them: their next open drops the kernel's
    /// cached pages (they may hold the previous version).
    stale_pages: HashSet<u64>,
}

impl Inner {
    fn get(&mut self, ino: u64) -> &mut InodeContent {
        self.inodes.entry(ino).or_default()
    }

    /// Forgets an inode whose content nothing holds (its state is the default again).
    fn tidy(&mut self, ino: u64) {
        if self.inodes.get(&ino).is_some_and(InodeContent::is_idle) {
            self.inodes.remove(&ino);
        }
    }
}

impl Contents {
    pub fn new() -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            changed: Condvar::new(),
            settled: AtomicU64::new(0),
        }
    }

    /// How many commits have ended. A LOCAL entry read when this was `n` may predate a commit that
    /// ended since, whose inode no longer shows a newer copy: whoever derives a file's size from
    /// "the copy if newer, else the entry" reads this before the entry and again after asking
    /// [`Contents::copy_is_newer`], and reads the entry again if it moved.
    pub fn settled(&self) -> u64 {
        self.settled.load(Ordering::SeqCst)
    }

    fn wait(&self, guard: &mut MutexGuard<'_, Inner>) {
        self.changed.wait(guard);
    }

    /// Registers a writer of `ino`. Waits while the copy is being built or replaced.
    pub fn begin_write(&self, ino: u64, files: &LocalFiles) -> Result<WriteStart, ContentError> {
        let mut inner = self.inner.lock();
        loop {
            let c = inner.get(ino);
            match c.step {
                Step::Broken => return Err(ContentError::Broken(ino)),
                Step::Materializing | Step::Replacing => self.wait(&mut inner),
                Step::Idle | Step::Committing if files.exists(ino) => {
                    c.writers += 1;
                    return Ok(WriteStart::Joined(WriteCounter(c.writes.clone())));
                }
                Step::Idle | Step::Committing => {
                    debug_assert_eq!(c.writers, 0, "writers of inode {ino} without a copy");
                    // A commit cannot run without a copy: it was removed (unlinked) meanwhile.
                    if c.step == Step::Committing {
                        self.wait(&mut inner);
                        continue;
                    }
                    c.step = Step::Materializing;
                    return Ok(WriteStart::Build);
                }
            }
        }
    }

    /// Ends a build begun by [`Contents::begin_write`]: on success the builder is a writer.
    pub fn finish_materialize(&self, ino: u64, built: bool) -> Option<WriteCounter> {
        let mut inner = self.inner.lock();
        let c = inner.get(ino);
        debug_assert_eq!(c.step, Step::Materializing);
        c.step = Step::Idle;
        let counter = built.then(|| {
            c.writers += 1;
            WriteCounter(c.writes.clone())
        });
        inner.tidy(ino);
        self.changed.notify_all();
        counter
    }

    /// A writer closed, after writing if `wrote`. Returns whether the caller must commit now (the
    /// last writer closed and the copy holds uncommitted bytes).
    pub fn end_write(&self, ino: u64, wrote: bool) -> bool {
        let mut inner = self.inner.lock();
        let c = inner.get(ino);
        debug_assert!(c.writers > 0, "a writer of inode {ino} closed twice");
        c.writers = c.writers.saturating_sub(1);
        c.dirty |= wrote;
        c.writers == 0 && c.dirty && !c.unlinked
    }

    /// Starts a commit of `ino`'s copy: waits for another commit or a build. Returns the write count
    /// now and the counter, to compare after chunking, or `None` if the copy is gone or was unlinked.
    pub fn begin_commit(
        &self,
        ino: u64,
        files: &LocalFiles,
    ) -> Result<Option<(u64, WriteCounter)>, ContentError> {
        let mut inner = self.inner.lock();
        loop {
            let c = inner.get(ino);
            match c.step {
                Step::Broken => return Err(ContentError::Broken(ino)),
                Step::Materializing | Step::Committing | Step::Replacing => self.wait(&mut inner),
                Step::Idle => {
                    if c.unlinked || !files.exists(ino) {
                        c.dirty = false;
                        inner.tidy(ino);
                        return Ok(None);
                    }
                    c.step = Step::Committing;
                    let counter = WriteCounter(c.writes.clone());
                    return Ok(Some((counter.load(), counter)));
                }
            }
        }
    }

    /// Ends a commit. `recorded`: LOCAL now holds the content chunked from the copy, and `before` is
    /// the write count [`Contents::begin_commit`] returned. The copy is clean only if no write landed
    /// since then and no writer is open. Returns whether the copy must be removed now (it was
    /// unlinked while committing and nothing holds it any more).
    pub fn finish_commit(&self, ino: u64, before: u64, recorded: bool) -> bool {
        let mut inner = self.inner.lock();
        // Before the step leaves Committing: see `settled`.
        self.settled.fetch_add(1, Ordering::SeqCst);
        let c = inner.get(ino);
        debug_assert_eq!(c.step, Step::Committing);
        c.step = Step::Idle;
        let untouched = c.writes.load(Ordering::Acquire) == before;
        if recorded && untouched && c.writers == 0 {
            c.dirty = false;
        } else if !recorded || !untouched {
            c.dirty = true;
        }
        let remove = c.unlinked && c.writers == 0 && c.readers == 0;
        self.changed.notify_all();
        remove
    }

    /// Marks `ino` unlinked (its node is gone from LOCAL). Returns true if nothing holds the copy, so
    /// the caller removes it now; otherwise the last holder does ([`Contents::after_unlinked`]).
    /// Readers hold it too: a reader of the chunks switches to the copy a local writer made, and
    /// must still find it after the writer closed an unlinked file (as on a local filesystem).
    pub fn unlink(&self, ino: u64) -> bool {
        let mut inner = self.inner.lock();
        let c = inner.get(ino);
        if c.writers == 0 && c.readers == 0 && c.step == Step::Idle {
            c.dirty = false;
            inner.tidy(ino);
            true
        } else {
            c.unlinked = true;
            false
        }
    }

    /// Whether an unlinked inode's copy can go now; clears the mark if so.
    pub fn after_unlinked(&self, ino: u64) -> bool {
        let mut inner = self.inner.lock();
        let c = inner.get(ino);
        let done = c.unlinked && c.writers == 0 && c.readers == 0 && c.step == Step::Idle;
        if done {
            c.unlinked = false;
            c.dirty = false;
        }
        inner.tidy(ino);
        done
    }

    /// Registers a reader of `ino` before it reads the LOCAL entry. Waits while the round replaces
    /// the content. Returns whether the kernel may keep its cached pages of the inode.
    pub fn begin_read(&self, ino: u64) -> Result<bool, ContentError> {
        let mut inner = self.inner.lock();
        loop {
            let c = inner.get(ino);
            match c.step {
                Step::Broken => return Err(ContentError::Broken(ino)),
                Step::Replacing => self.wait(&mut inner),
                _ => {
                    c.readers += 1;
                    return Ok(!inner.stale_pages.remove(&ino));
                }
            }
        }
    }

    /// A reader of `ino` closed. Returns true if it was the last holder of an unlinked inode's
    /// copy, which the caller removes now.
    pub fn end_read(&self, ino: u64) -> bool {
        let mut inner = self.inner.lock();
        let c = inner.get(ino);
        debug_assert!(c.readers > 0, "a reader of inode {ino} closed twice");
        c.readers = c.readers.saturating_sub(1);
        let remove = c.unlinked && c.writers == 0 && c.readers == 0 && c.step == Step::Idle;
        if remove {
            c.unlinked = false;
            c.dirty = false;
        }
        inner.tidy(ino);
        remove
    }

    /// Whether the kernel may keep its cached pages for a writer's open of `ino` (consumes the mark).
    pub fn keep_pages(&self, ino: u64) -> bool {
        !self.inner.lock().stale_pages.remove(&ino)
    }

    /// Whether `ino`'s copy may hold bytes newer than LOCAL (a writer is open, or bytes wait to be
    /// committed): then its size and mtime are the copy's.
    pub fn copy_is_newer(&self, ino: u64) -> bool {
        let inner = self.inner.lock();
        inner
            .inodes
            .get(&ino)
            .is_some_and(|c| c.writers > 0 || c.dirty || c.step == Step::Committing)
    }

    /// Whether `ino`'s copy, if any, may be read (not being replaced, not stale after a failure).
    pub fn copy_readable(&self, ino: u64) -> bool {
        let inner = self.inner.lock();
        inner
            .inodes
            .get(&ino)
            .is_none_or(|c| !matches!(c.step, Step::Replacing | Step::Broken))
    }

    /// Reserves `ino` for the round's file change (rule 1). Never waits.
    pub fn reserve(&self, ino: u64) -> Reservation {
        let mut inner = self.inner.lock();
        let c = inner.get(ino);
        if c.writers > 0 || c.dirty || c.step != Step::Idle || c.unlinked {
            inner.tidy(ino);
            return Reservation::Busy;
        }
        c.step = Step::Replacing;
        if c.readers > 0 {
            Reservation::Held
        } else {
            Reservation::Free
        }
    }

    /// Ends a reservation: `ok` if its file change is done (or there was none), else the copy stays
    /// unusable until recovery replays the change.
    pub fn release(&self, ino: u64, ok: bool) {
        let mut inner = self.inner.lock();
        let c = inner.get(ino);
        debug_assert!(matches!(c.step, Step::Replacing | Step::Broken));
        c.step = if ok { Step::Idle } else { Step::Broken };
        inner.tidy(ino);
        self.changed.notify_all();
    }

    /// Takes a reserved or broken inode back to replay its change (recovery, or a later round).
    pub fn take_broken(&self, ino: u64) -> bool {
        let mut inner = self.inner.lock();
        match inner.inodes.get_mut(&ino) {
            Some(c) if c.step == Step::Broken => {
                c.step = Step::Replacing;
                true
            }
            _ => false,
        }
    }

    /// Whether `ino` is reserved by the round (or a replay).
    pub fn is_reserved(&self, ino: u64) -> bool {
        self.inner
            .lock()
            .inodes
            .get(&ino)
            .is_some_and(|c| c.step == Step::Replacing)
    }

    /// The content of `ino` changed while nothing held it: its next open drops the cached pages.
    pub fn mark_pages_stale(&self, ino: u64) {
        self.inner.lock().stale_pages.insert(ino);
    }

    /// Inodes whose copy holds uncommitted bytes and that nobody is writing or committing: a commit
    /// failed or was skipped (a write landed while chunking), and must be retried.
    pub fn dirty_idle(&self) -> Vec<u64> {
        let inner = self.inner.lock();
        inner
            .inodes
            .iter()
            .filter(|(_, c)| c.dirty && c.writers == 0 && c.step == Step::Idle && !c.unlinked)
            .map(|(ino, _)| *ino)
            .collect()
    }

    /// How many inodes have a copy whose bytes may not be recorded yet: open for writing, dirty or
    /// being committed (unlinked ones excepted: their bytes are going nowhere).
    pub fn unrecorded(&self) -> usize {
        let inner = self.inner.lock();
        inner
            .inodes
            .values()
            .filter(|c| !c.unlinked && (c.writers > 0 || c.dirty || c.step == Step::Committing))
            .count()
    }

    /// The step `ino` is in (tests and assertions).
    #[cfg(test)]
    pub fn step(&self, ino: u64) -> Step {
        self.inner
            .lock()
            .inodes
            .get(&ino)
            .map_or(Step::Idle, |c| c.step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> (tempfile::TempDir, LocalFiles) {
        let dir = tempfile::tempdir().unwrap();
        let files = LocalFiles::open(&dir.path().join("files")).unwrap();
        (dir, files)
    }

    #[test]
    fn a_copy_is_built_once_and_later_writers_join_it() {
        let (_dir, files) = files();
        let contents = Contents::new();
        assert!(matches!(
            contents.begin_write(5, &files).unwrap(),
            WriteStart::Build
        ));
        files.create_empty(5, 0).unwrap();
        let first = contents.finish_materialize(5, true).unwrap();
        let WriteStart::Joined(second) = contents.begin_write(5, &files).unwrap() else {
            panic!("the second writer must join the copy, not build another");
        };
        first.wrote();
        assert_eq!(second.load(), 1, "both writers count on one counter");
    }

    #[test]
    fn the_round_cannot_reserve_an_inode_that_is_written_or_dirty_or_committing() {
        let (_dir, files) = files();
        let contents = Contents::new();
        files.create_empty(7, 0).unwrap();
        assert!(matches!(
            contents.begin_write(7, &files).unwrap(),
            WriteStart::Joined(_)
        ));
        assert_eq!(contents.reserve(7), Reservation::Busy, "open for writing");
        assert!(contents.end_write(7, true), "the last writer commits");
        assert_eq!(contents.reserve(7), Reservation::Busy, "dirty");
        let (before, _) = contents.begin_commit(7, &files).unwrap().unwrap();
        assert_eq!(contents.reserve(7), Reservation::Busy, "committing");
        assert!(!contents.finish_commit(7, before, true));
        assert_eq!(contents.reserve(7), Reservation::Free, "clean");
        contents.release(7, true);
        assert_eq!(contents.step(7), Step::Idle);
    }

    #[test]
    fn a_commit_that_saw_a_write_leaves_the_copy_dirty() {
        let (_dir, files) = files();
        let contents = Contents::new();
        files.create_empty(9, 0).unwrap();
        let WriteStart::Joined(counter) = contents.begin_write(9, &files).unwrap() else {
            panic!()
        };
        let (before, _) = contents.begin_commit(9, &files).unwrap().unwrap();
        counter.wrote();
        contents.finish_commit(9, before, true);
        contents.end_write(9, false);
        assert_eq!(contents.reserve(9), Reservation::Busy);
        assert_eq!(contents.dirty_idle(), vec![9]);
    }

    #[test]
    fn an_unlinked_copy_stays_until_its_last_writer_and_reader_close() {
        // Found by the vfs simulation (seed 251): a reader of the chunks opened before a local writer
        // made a copy; the writer unlinked and closed; the copy went with the writer and the reader
        // then read the old (empty) version instead of the bytes the file holds.
        let (_dir, files) = files();
        let contents = Contents::new();
        assert!(contents.begin_read(4).unwrap());
        files.create_empty(4, 0).unwrap();
        assert!(matches!(
            contents.begin_write(4, &files).unwrap(),
            WriteStart::Joined(_)
        ));
        assert!(!contents.unlink(4), "held by a writer and a reader");
        assert!(!contents.end_write(4, false));
        assert!(!contents.after_unlinked(4), "still held by the reader");
        assert!(contents.end_read(4), "the last holder removes the copy");
        assert_eq!(
            contents.reserve(4),
            Reservation::Free,
            "nothing holds the inode any more"
        );
    }

    #[test]
    fn readers_make_a_reservation_held_and_replacing_makes_opens_wait() {
        let (_dir, files) = files();
        let contents = Arc::new(Contents::new());
        assert!(contents.begin_read(3).unwrap());
        assert_eq!(contents.reserve(3), Reservation::Held);
        let waiter = {
            let contents = contents.clone();
            std::thread::spawn(move || contents.begin_read(3).unwrap())
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(
            !waiter.is_finished(),
            "an open waits while the round replaces"
        );
        contents.mark_pages_stale(3);
        contents.release(3, true);
        assert!(
            !waiter.join().unwrap(),
            "the first open after a change drops the cached pages"
        );
        let _ = files;
    }

    #[test]
    fn a_failed_replacement_refuses_opens_until_replayed() {
        let (_dir, files) = files();
        let contents = Contents::new();
        assert_eq!(contents.reserve(4), Reservation::Free);
        contents.release(4, false);
        assert!(contents.begin_read(4).is_err());
        assert!(contents.begin_write(4, &files).is_err());
        assert!(contents.take_broken(4));
        contents.release(4, true);
        assert!(contents.begin_read(4).is_ok());
    }
}

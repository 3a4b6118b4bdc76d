//! Directory enumeration in ProjFS's sessions.
//!
//! ProjFS enumerates a directory in a session: `StartDirectoryEnumeration` with a GUID, then
//! `GetDirectoryEnumeration` calls, each filling a buffer of bounded size with the next entries in
//! `PrjFileNameCompare` order, then `EndDirectoryEnumeration`. The first `Get` (and any with the
//! restart-scan flag) carries the search expression the whole session uses; a `Get` may also ask
//! for a single entry. When the buffer is full, the entry that did not fit comes first next time.
//!
//! A session lists its directory when its first `Get` arrives (or on a restart): the names and
//! inodes only, read from the engine in pages of [`PAGE`], then sorted in ProjFS's order (the
//! engine keeps names in byte order, and the case-insensitive order of a whole directory is only
//! known once all of it is read). Each `Get` then hands out at most [`BATCH`] entries, reading
//! their attributes fresh from LOCAL: an entry removed or moved since the listing is skipped, and
//! nothing reads content, so listing downloads nothing. The memory a session holds is its names:
//! about 50 bytes an entry, 5 MB for 100,000.

use std::sync::Arc;

use bvfs_engine::model::{NodeId, NodeKind};
use parking_lot::Mutex;

use super::{POLICY, ProjectedEntry, ProjectedPath, Projection, names};
use crate::{Errno, VfsResult};

/// Entries read from the engine per page while listing.
pub const PAGE: usize = 1024;
/// The most entries one `GetDirectoryEnumeration` hands out, however large the buffer.
pub const BATCH: usize = 1024;

/// An enumeration session's id: ProjFS's enumeration GUID, as 128 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EnumerationId(pub u128);

/// What one `GetDirectoryEnumeration` callback asks.
#[derive(Debug, Clone, Copy, Default)]
pub struct EnumerationRequest<'a> {
    /// The search expression passed with the call. The session keeps the one of its first call and
    /// of each restart; the others are ignored, as ProjFS asks of a provider.
    pub search: Option<&'a str>,
    /// `PRJ_CB_DATA_FLAG_ENUM_RESTART_SCAN`: start again from the first entry, with a fresh
    /// listing and this call's expression.
    pub restart_scan: bool,
    /// `PRJ_CB_DATA_FLAG_ENUM_RETURN_SINGLE_ENTRY`: hand out at most one entry.
    pub single_entry: bool,
}

/// One listed entry: enough to order, filter and look it up again.
struct Listed {
    name: String,
    ino: u64,
}

/// The state of one enumeration session.
pub(crate) struct Session {
    dir: u64,
    dir_id: NodeId,
    /// The directory's entries in ProjFS order; `None` until the first `Get` (or after a restart).
    listing: Option<Vec<Listed>>,
    /// The index in `listing` of the next entry to offer.
    next: usize,
    /// The session's search expression (`None`: every entry).
    expression: Option<String>,
    /// Whether a `Get` has arrived (the first one sets the expression).
    started: bool,
}

impl Projection {
    /// `StartDirectoryEnumeration` of the directory at `path`.
    pub fn start_enumeration(&self, id: EnumerationId, path: &str) -> VfsResult<()> {
        let session = self.new_session(path)?;
        if self
            .sessions
            .lock()
            .insert(id, Arc::new(Mutex::new(session)))
            .is_some()
        {
            tracing::warn!(
                id = id.0,
                "an enumeration id was reused; the old session is gone"
            );
        }
        Ok(())
    }

    /// `GetDirectoryEnumeration`: offers the next entries to `fill` until it refuses one (the
    /// buffer is full; that entry comes first next time), the request's limits are reached, or the
    /// directory is exhausted. Returns how many entries `fill` took; 0 means the end (or a buffer
    /// too small for one entry). `EINVAL` for an unknown session.
    pub fn get_enumeration(
        &self,
        id: EnumerationId,
        request: EnumerationRequest<'_>,
        mut fill: impl FnMut(&ProjectedEntry) -> bool,
    ) -> VfsResult<usize> {
        let session = self
            .sessions
            .lock()
            .get(&id)
            .cloned()
            .ok_or(Errno::EINVAL)?;
        let mut session = session.lock();
        self.offer(&mut session, request, &mut fill)
    }

    /// `EndDirectoryEnumeration`. `EINVAL` for an unknown session.
    pub fn end_enumeration(&self, id: EnumerationId) -> VfsResult<()> {
        self.sessions
            .lock()
            .remove(&id)
            .map(drop)
            .ok_or(Errno::EINVAL)
    }

    /// How many enumeration sessions are open (started and not ended).
    pub fn open_enumerations(&self) -> usize {
        self.sessions.lock().len()
    }

    /// Every entry of the directory at `path` in ProjFS order, batch by batch as a session hands
    /// them out: for a library that keeps its own sessions and asks for whole listings
    /// (`windows-projfs` 0.1.8 does).
    pub fn list_all(&self, path: &str) -> VfsResult<Vec<ProjectedEntry>> {
        let mut session = self.new_session(path)?;
        let mut out = Vec::new();
        while self.offer(&mut session, EnumerationRequest::default(), &mut |e| {
            out.push(e.clone());
            true
        })? > 0
        {}
        Ok(out)
    }

    fn new_session(&self, path: &str) -> VfsResult<Session> {
        let dir = self.resolve(&ProjectedPath::parse(path)?)?;
        if dir.node.kind != NodeKind::Directory {
            return Err(Errno::ENOTDIR);
        }
        Ok(Session {
            dir: dir.ino,
            dir_id: dir.node.id,
            listing: None,
            next: 0,
            expression: None,
            started: false,
        })
    }

    /// One `GetDirectoryEnumeration` of `session` (see [`Projection::get_enumeration`]).
    fn offer(
        &self,
        session: &mut Session,
        request: EnumerationRequest<'_>,
        fill: &mut dyn FnMut(&ProjectedEntry) -> bool,
    ) -> VfsResult<usize> {
        if request.restart_scan || !session.started {
            session.started = true;
            session.expression = request
                .search
                .filter(|s| !s.is_empty() && *s != "*")
                .map(str::to_string);
            session.listing = None;
            session.next = 0;
        }
        if session.listing.is_none() {
            session.listing = Some(self.list_sorted(session.dir)?);
        }
        let limit = if request.single_entry { 1 } else { BATCH };
        let mut taken = 0;
        while taken < limit {
            let Some(listed) = session.listing.as_ref().and_then(|l| l.get(session.next)) else {
                break;
            };
            let wanted = session
                .expression
                .as_deref()
                .is_none_or(|e| names::matches(&listed.name, e));
            let read_at = self.vfs.engine().content_epoch();
            let current = match wanted {
                true => self.vfs.engine().getattr(listed.ino).map_err(Errno::from)?,
                false => None,
            };
            // Gone or moved since the listing: not in this directory any more.
            let Some(entry) =
                current.filter(|e| e.node.parent == session.dir_id && e.node.name == listed.name)
            else {
                session.next += 1;
                continue;
            };
            if !fill(&self.projected(&entry, read_at)) {
                break;
            }
            session.next += 1;
            taken += 1;
        }
        Ok(taken)
    }

    /// The names and inodes of `dir`'s entries that Windows can show, in `PrjFileNameCompare`
    /// order; of names equal but for case (possible only in a state made under another policy),
    /// the first in byte order.
    fn list_sorted(&self, dir: u64) -> VfsResult<Vec<Listed>> {
        let mut keyed: Vec<(Vec<u16>, Listed)> = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .vfs
                .engine()
                .list(dir, after.as_deref(), PAGE)
                .map_err(Errno::from)?;
            let full = page.len() == PAGE;
            for entry in page {
                after = Some(entry.node.name.clone());
                if POLICY.check(&entry.node.name).is_ok() {
                    let name = entry.node.name;
                    keyed.push((
                        names::sort_key(&name),
                        Listed {
                            name,
                            ino: entry.ino,
                        },
                    ));
                }
            }
            if !full {
                break;
            }
        }
        // Stable: among equal keys, byte order (the engine's) decides which one is kept.
        keyed.sort_by(|a, b| a.0.cmp(&b.0));
        keyed.dedup_by(|later, earlier| later.0 == earlier.0);
        Ok(keyed.into_iter().map(|(_, listed)| listed).collect())
    }
}

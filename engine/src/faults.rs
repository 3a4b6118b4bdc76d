//! Named durability points where tests inject crashes (in the spirit of CrashMonkey and ALICE).
//!
//! The engine calls [`FaultPoints::reach`] right after each step that makes something durable or
//! visible on the way between the mount and the server: a copy renamed into place, a commit chunked
//! or recorded, the round's transaction committed, each change to a copy, the directory fsynced, the
//! intents forgotten. In production no hook is set and a point costs one branch. A simulation sets a
//! hook that panics at a chosen point: the panic unwinds out of the engine call, the simulation drops
//! the engine (a crash: nothing after the point happens) and reopens it from its directory.

use std::sync::Arc;

/// A step the engine just completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultPoint {
    /// A materialized copy was renamed into place (its owner record not yet written).
    CopyBuilt,
    /// A copy was chunked; its LOCAL record is not written yet.
    CommitChunked,
    /// A copy's content was recorded as LOCAL.
    CommitRecorded,
    /// An unlink or rename committed in LOCAL; the copy of the removed inode is still there.
    Unlinked,
    /// The round's local transaction committed (LOCAL and the file intents); no copy changed yet.
    LocalOpsCommitted,
    /// One change to a copy was done (unlink or rename), not yet fsynced.
    CopyChanged,
    /// The copies' directory was fsynced; the intents are still recorded.
    CopiesSynced,
    /// The intents were deleted; the reservations are still held.
    IntentsForgotten,
}

impl FaultPoint {
    /// Every point, for simulations that pick one.
    pub const ALL: [FaultPoint; 8] = [
        FaultPoint::CopyBuilt,
        FaultPoint::CommitChunked,
        FaultPoint::CommitRecorded,
        FaultPoint::Unlinked,
        FaultPoint::LocalOpsCommitted,
        FaultPoint::CopyChanged,
        FaultPoint::CopiesSynced,
        FaultPoint::IntentsForgotten,
    ];
}

/// What runs at each point (tests only).
pub type FaultHook = Arc<dyn Fn(FaultPoint) + Send + Sync>;

/// The hook of one engine, if any.
#[derive(Clone, Default)]
pub struct FaultPoints(Option<FaultHook>);

impl FaultPoints {
    pub fn new(hook: FaultHook) -> Self {
        Self(Some(hook))
    }

    /// The engine completed `point`.
    #[inline]
    pub(crate) fn reach(&self, point: FaultPoint) {
        if let Some(hook) = &self.0 {
            hook(point);
        }
    }
}

impl std::fmt::Debug for FaultPoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "FaultPoints(hooked)"
        } else {
            "FaultPoints(none)"
        })
    }
}

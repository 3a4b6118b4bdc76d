//! Local space on the user's request (`bvfs evict`, `bvfs hydrate`): freeing the bytes of a file
//! that the server holds, and fetching every chunk of a file ahead of its reads.
//!
//! Eviction never loses data: it refuses a file whose bytes exist only here (an edit or a create
//! the server has not stored yet, an upload running, a copy open or waiting to be committed), and a
//! pinned file (the pin says "keep it here"; unpin it first). Of a file it may evict, it removes the
//! materialized copy (through the content owner, D10: only a clean, unheld copy goes) and the cached
//! chunks of its content that nothing holds. The node stays: it lists and opens as before, and the
//! next read fetches what it touches.

use crate::api::{Engine, EngineError, EngineResult};
use crate::chunking::{ChunkId, Manifest};
use crate::content::Reservation;
use crate::model::NodeKind;
use crate::presence::ContentOnServer;
use crate::state::local::LocalEntry;

/// Why a file's local bytes were kept ([`Engine::evict`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EvictRefusal {
    /// Pinned files stay local: unpin first.
    Pinned,
    /// The file holds an edit (or is new) that the server has not stored yet.
    Unsynced,
    /// The file is open, being written or being changed by a sync round.
    Busy,
}

impl EvictRefusal {
    /// What the user reads.
    pub fn message(&self) -> &'static str {
        match self {
            EvictRefusal::Pinned => "it is pinned (kept local on purpose); unpin it first",
            EvictRefusal::Unsynced => {
                "its latest content has not reached the server yet; evicting it would lose it \
                 (wait for the upload, see `bvfs status`)"
            }
            EvictRefusal::Busy => {
                "it is open or being synced right now; try again when it is closed"
            }
        }
    }
}

/// What [`Engine::evict`] did to one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Evicted {
    /// Freed this many bytes (0: nothing of it was local).
    Freed(u64),
    /// Kept, and why.
    Refused(EvictRefusal),
}

impl Engine {
    /// Frees the local bytes of the file `entry` (see the module docs). Not a file: nothing to do.
    pub fn evict(&self, entry: &LocalEntry) -> EngineResult<Evicted> {
        if entry.node.kind != NodeKind::File {
            return Ok(Evicted::Freed(0));
        }
        if entry.pinned {
            return Ok(Evicted::Refused(EvictRefusal::Pinned));
        }
        if self.uploading.lock().contains(&entry.node.id) {
            return Ok(Evicted::Refused(EvictRefusal::Busy));
        }
        if self.content_on_server(entry)? != ContentOnServer::Stored {
            return Ok(Evicted::Refused(EvictRefusal::Unsynced));
        }
        let manifest = self.manifest(entry)?;
        let mut freed = 0;
        if self.files.exists(entry.ino) {
            // The copy goes only if no handle holds it and it has no uncommitted bytes (rule 1 of
            // `content`): the reservation keeps openers out while it is removed.
            match self.contents.reserve(entry.ino) {
                Reservation::Free => {}
                Reservation::Held => {
                    // Readers have it open: leave it to them.
                    self.contents.release(entry.ino, true);
                    return Ok(Evicted::Refused(EvictRefusal::Busy));
                }
                Reservation::Busy => return Ok(Evicted::Refused(EvictRefusal::Busy)),
            }
            // Re-read under the reservation: the content must still be what the server stores.
            let current = self.getattr(entry.ino)?;
            let unchanged = current
                .as_ref()
                .is_some_and(|c| c.node.attrs.content == entry.node.attrs.content);
            if !unchanged {
                self.contents.release(entry.ino, true);
                return Ok(Evicted::Refused(EvictRefusal::Busy));
            }
            let size = std::fs::metadata(self.files.path(entry.ino))
                .map(|m| m.len())
                .unwrap_or(0);
            let removed = self.files.remove(entry.ino);
            self.contents.release(entry.ino, true);
            removed?;
            // The kernel may hold pages of the copy; they are the same bytes, so they may stay.
            freed += size;
            tracing::info!(ino = entry.ino, size, "evicted a local copy");
        }
        freed += self.evict_chunks(&manifest)?;
        Ok(Evicted::Freed(freed))
    }

    /// Removes the cached chunks of `manifest` that nothing holds; returns the bytes freed.
    fn evict_chunks(&self, manifest: &Manifest) -> EngineResult<u64> {
        let mut freed = 0;
        for chunk in &manifest.chunks {
            if self.cache.remove(&chunk.id)? == crate::cache::Removal::Removed {
                freed += u64::from(chunk.len);
            }
        }
        Ok(freed)
    }

    /// The chunks of `entry`'s content that are not local yet, with their lengths (nothing for a
    /// file with a materialized copy, a directory or a symlink): what [`Engine::hydrate`] fetches.
    pub fn missing_chunks(&self, entry: &LocalEntry) -> EngineResult<Vec<(ChunkId, u32)>> {
        if entry.node.kind != NodeKind::File || self.files.exists(entry.ino) {
            return Ok(Vec::new());
        }
        let manifest = self.manifest(entry)?;
        let mut seen = std::collections::HashSet::new();
        Ok(manifest
            .chunks
            .iter()
            .filter(|c| seen.insert(c.id) && !self.cache.contains(&c.id))
            .map(|c| (c.id, c.len))
            .collect())
    }

    /// Fetches `chunks` into the cache (a one-off prefetch: they stay until evicted like any other
    /// cached chunk). Held while they are fetched, so a small cache cannot evict the first ones
    /// before the last arrive.
    pub async fn hydrate(&self, chunks: &[ChunkId]) -> EngineResult<()> {
        let _hold = self.cache.hold_guard(chunks.to_vec());
        self.fetcher
            .hydrate(chunks.iter().copied())
            .await
            .map_err(EngineError::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(flavor = "multi_thread")]
    async fn an_unsynced_file_is_refused_and_a_pinned_one_too() {
        let dir = tempfile::tempdir().unwrap();
        // Nothing listens there: eviction must decide without the server.
        let remote = crate::remote::GrpcRemote::new(&crate::remote::RemoteConfig::new(
            "http://127.0.0.1:9",
            "token",
        ))
        .unwrap();
        let engine = Engine::open(
            crate::EngineConfig::new(dir.path(), "test"),
            Arc::new(remote),
        )
        .unwrap();
        let file = engine
            .create(1, "new.txt", NodeKind::File, false, None)
            .unwrap();
        assert!(engine.files.exists(file.ino), "a new file has a copy");
        assert_eq!(
            engine.evict(&file).unwrap(),
            Evicted::Refused(EvictRefusal::Unsynced),
            "the only copy of a new file is never evicted"
        );
        assert!(engine.files.exists(file.ino), "the copy is still there");
        engine.set_pinned(file.ino, true).unwrap();
        let pinned = engine.getattr(file.ino).unwrap().unwrap();
        assert_eq!(
            engine.evict(&pinned).unwrap(),
            Evicted::Refused(EvictRefusal::Pinned)
        );
        let folder = engine
            .create(1, "folder", NodeKind::Directory, false, None)
            .unwrap();
        assert_eq!(engine.evict(&folder).unwrap(), Evicted::Freed(0));
        assert!(engine.missing_chunks(&folder).unwrap().is_empty());
        assert!(
            engine.missing_chunks(&file).unwrap().is_empty(),
            "a file with a copy needs no download"
        );
    }
}

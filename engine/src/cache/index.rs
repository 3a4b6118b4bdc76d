//! The in-memory index of the chunk cache: which chunks are present, their recency, who holds them,
//! and how many bytes they take. Pure bookkeeping, no I/O, so it can be locked briefly and tested
//! alone.
//!
//! Held chunks live outside the LRU list. Eviction therefore only ever sees evictable chunks: it can
//! never pick a held one, and it never scans past held chunks at the cold end (O(1) per victim however
//! many files are pinned).

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use lru::LruCache;

use crate::chunking::ChunkId;

/// A held chunk: how many holders, and its length when its file is present.
#[derive(Debug, Clone, Copy)]
struct Held {
    count: u32,
    len: Option<u32>,
}

/// Present chunks (by recency), holds and byte counts.
pub(super) struct Index {
    /// Present, unheld chunks with their lengths, most recently used first: the eviction candidates.
    lru: LruCache<ChunkId, u32>,
    /// Held chunks, present or not. A chunk may be held before it is cached (a pinned file about to be
    /// hydrated), so holds are counted independently of presence.
    held: HashMap<ChunkId, Held>,
    /// Bytes of all present chunks (in `lru` or held with a length).
    bytes: u64,
    /// Bytes of the present chunks that are held.
    held_bytes: u64,
    /// How many held chunks are present.
    held_present: u64,
}

impl Index {
    pub(super) fn new() -> Self {
        Self {
            lru: LruCache::unbounded(),
            held: HashMap::new(),
            bytes: 0,
            held_bytes: 0,
            held_present: 0,
        }
    }

    pub(super) fn bytes(&self) -> u64 {
        self.bytes
    }

    pub(super) fn held_bytes(&self) -> u64 {
        self.held_bytes
    }

    /// How many chunks are present.
    pub(super) fn chunks(&self) -> u64 {
        self.lru.len() as u64 + self.held_present
    }

    /// The length of `id` if present, without touching its recency.
    pub(super) fn peek(&self, id: &ChunkId) -> Option<u32> {
        match self.held.get(id) {
            Some(held) => held.len,
            None => self.lru.peek(id).copied(),
        }
    }

    /// The length of `id` if present, marking it most recently used.
    pub(super) fn touch(&mut self, id: &ChunkId) -> Option<u32> {
        match self.held.get(id) {
            Some(held) => held.len,
            None => self.lru.get(id).copied(),
        }
    }

    /// Records `id` as present with `len` bytes (most recently used). Returns whether it was absent.
    /// Re-adding a present chunk updates its length (the file on disk is the truth).
    pub(super) fn add(&mut self, id: ChunkId, len: u32) -> bool {
        let previous = match self.held.get_mut(&id) {
            Some(held) => {
                let previous = held.len.replace(len);
                match previous {
                    Some(old) => {
                        self.held_bytes = self.held_bytes - u64::from(old) + u64::from(len)
                    }
                    None => {
                        self.held_bytes += u64::from(len);
                        self.held_present += 1;
                    }
                }
                previous
            }
            None => self.lru.put(id, len),
        };
        self.bytes = self.bytes - previous.map_or(0, u64::from) + u64::from(len);
        self.debug_check();
        previous.is_none()
    }

    /// Forgets `id`'s presence (its holds stay). Returns its length if it was present.
    pub(super) fn remove(&mut self, id: &ChunkId) -> Option<u32> {
        let len = match self.held.get_mut(id) {
            Some(held) => {
                let len = held.len.take();
                if let Some(len) = len {
                    self.held_bytes -= u64::from(len);
                    self.held_present -= 1;
                }
                len
            }
            None => self.lru.pop(id),
        };
        if let Some(len) = len {
            self.bytes -= u64::from(len);
        }
        self.debug_check();
        len
    }

    /// Adds one hold on `id`; the first hold takes it out of the eviction order.
    pub(super) fn hold(&mut self, id: ChunkId) {
        match self.held.entry(id) {
            Entry::Occupied(mut entry) => {
                let held = entry.get_mut();
                held.count = held.count.saturating_add(1);
            }
            Entry::Vacant(entry) => {
                let len = self.lru.pop(&id);
                if let Some(len) = len {
                    self.held_bytes += u64::from(len);
                    self.held_present += 1;
                }
                entry.insert(Held { count: 1, len });
            }
        }
        self.debug_check();
    }

    /// Drops one hold on `id`; the last one returns it (if present) to the eviction order as most
    /// recently used. Returns false if `id` was not held.
    pub(super) fn release(&mut self, id: &ChunkId) -> bool {
        let Some(held) = self.held.get_mut(id) else {
            return false;
        };
        held.count -= 1;
        if held.count == 0 {
            let len = held.len;
            self.held.remove(id);
            if let Some(len) = len {
                self.held_bytes -= u64::from(len);
                self.held_present -= 1;
                let displaced = self.lru.put(*id, len);
                debug_assert!(displaced.is_none(), "a held chunk was also in the LRU list");
            }
        }
        self.debug_check();
        true
    }

    pub(super) fn is_held(&self, id: &ChunkId) -> bool {
        self.held.contains_key(id)
    }

    /// Removes and returns the least recently used unheld chunk.
    pub(super) fn pop_lru(&mut self) -> Option<(ChunkId, u32)> {
        let (id, len) = self.lru.pop_lru()?;
        debug_assert!(
            !self.held.contains_key(&id),
            "eviction candidate {id:?} is held"
        );
        self.bytes -= u64::from(len);
        self.debug_check();
        Some((id, len))
    }

    /// Every present chunk, least recently used first; held chunks last (they were in use most
    /// recently, or will be again).
    pub(super) fn entries(&self) -> Vec<(ChunkId, u32)> {
        let mut out = Vec::with_capacity(self.chunks() as usize);
        out.extend(self.lru.iter().rev().map(|(id, len)| (*id, *len)));
        out.extend(
            self.held
                .iter()
                .filter_map(|(id, held)| held.len.map(|len| (*id, len))),
        );
        out
    }

    /// O(1) consistency checks, run after every mutation in debug builds.
    fn debug_check(&self) {
        debug_assert!(self.held_bytes <= self.bytes, "held bytes exceed all bytes");
        debug_assert!(self.held_present as usize <= self.held.len());
        debug_assert!(self.lru.is_empty() || self.bytes >= self.held_bytes);
    }

    /// Full recount: every counter equals what the entries say. O(n); for tests.
    #[cfg(test)]
    fn audit(&self) {
        let lru_bytes: u64 = self.lru.iter().map(|(_, len)| u64::from(*len)).sum();
        let held_bytes: u64 = self
            .held
            .values()
            .filter_map(|h| h.len)
            .map(u64::from)
            .sum();
        let held_present = self.held.values().filter(|h| h.len.is_some()).count() as u64;
        assert_eq!(self.held_bytes, held_bytes);
        assert_eq!(self.held_present, held_present);
        assert_eq!(self.bytes, lru_bytes + held_bytes);
        assert!(self.held.values().all(|h| h.count > 0));
        assert!(self.lru.iter().all(|(id, _)| !self.held.contains_key(id)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ChunkId {
        ChunkId([n; 32])
    }

    #[test]
    fn eviction_order_is_least_recent_first_and_skips_held() {
        let mut index = Index::new();
        for n in 0..4 {
            index.add(id(n), 10);
        }
        index.touch(&id(0));
        index.hold(id(1));
        assert_eq!(index.pop_lru(), Some((id(2), 10)));
        assert_eq!(index.pop_lru(), Some((id(3), 10)));
        assert_eq!(index.pop_lru(), Some((id(0), 10)));
        assert_eq!(index.pop_lru(), None, "only the held chunk is left");
        assert_eq!(
            (index.bytes(), index.held_bytes(), index.chunks()),
            (10, 10, 1)
        );
        index.audit();
    }

    #[test]
    fn holds_are_counted_and_may_precede_presence() {
        let mut index = Index::new();
        index.hold(id(7));
        index.hold(id(7));
        assert_eq!(index.peek(&id(7)), None);
        assert!(index.add(id(7), 5));
        assert!(!index.add(id(7), 5), "adding twice is idempotent");
        assert_eq!((index.bytes(), index.held_bytes()), (5, 5));
        assert!(index.release(&id(7)));
        assert_eq!(index.pop_lru(), None, "one holder is left");
        assert!(index.release(&id(7)));
        assert!(!index.release(&id(7)));
        assert_eq!(index.held_bytes(), 0);
        assert_eq!(index.pop_lru(), Some((id(7), 5)));
        index.audit();
    }

    #[test]
    fn remove_keeps_holds_and_fixes_counts() {
        let mut index = Index::new();
        index.add(id(1), 3);
        index.add(id(2), 4);
        index.hold(id(2));
        assert_eq!(index.remove(&id(2)), Some(4));
        assert_eq!(index.remove(&id(2)), None);
        assert!(index.is_held(&id(2)));
        assert!(!index.add(id(1), 6));
        assert_eq!(
            (index.bytes(), index.held_bytes(), index.chunks()),
            (6, 0, 1)
        );
        assert_eq!(index.entries(), vec![(id(1), 6)]);
        index.audit();
    }
}

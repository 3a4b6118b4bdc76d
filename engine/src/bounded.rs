//! The client's half of the protocol's byte bounds (see `docs/protocol-bounds.md`): page limits that
//! shrink when an answer is too large, chunk lists the server elided fetched with `GetManifest`, long
//! lists of our own staged with `PutManifest`, and commit batches cut by encoded size.
//!
//! A device that was offline while large files changed many times must still catch up: a count
//! alone never bounds a message, because each change carries a chunk list.

use std::ops::Range;

use bvfs_proto::v1;
use bvfs_proto::{MAX_INLINE_CHUNKS, PAGE_BUDGET_BYTES};
use prost::Message;

use crate::api::{Engine, EngineError};
use crate::chunking::Manifest;
use crate::remote::{Remote, RemoteError};
use crate::round::RoundError;
use crate::wire::{self, WireError};

/// A page size that halves after an answer too large for a message and grows back after successes,
/// so that a client never repeats a request the transport cannot carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageLimit {
    current: u32,
    max: u32,
    /// Successful pages in a row at the current size.
    successes: u32,
}

/// Successful pages in a row before the limit doubles again: growing after every success would
/// make every other request fail while pages stay large.
const GROW_AFTER: u32 = 4;

impl PageLimit {
    /// Starts at `max` (at least 1).
    pub const fn new(max: u32) -> Self {
        let max = if max == 0 { 1 } else { max };
        Self {
            current: max,
            max,
            successes: 0,
        }
    }

    /// The limit to ask with now.
    pub fn get(&self) -> u32 {
        self.current
    }

    /// After a too-large answer: halves the limit. False when it is 1 already, so asking again
    /// cannot help and the caller must give up with the error.
    pub fn shrink(&mut self) -> bool {
        self.successes = 0;
        if self.current <= 1 {
            return false;
        }
        self.current /= 2;
        true
    }

    /// After a successful page: every few successes in a row, doubles the limit back towards the
    /// maximum.
    pub fn grow(&mut self) {
        self.successes += 1;
        if self.successes >= GROW_AFTER {
            self.successes = 0;
            self.current = self.current.saturating_mul(2).min(self.max);
        }
    }
}

/// Splits `ops` into consecutive commit batches under the server's caps: at most `max_ops` ops (and
/// never more than [`bvfs_proto::MAX_OPS_PER_COMMIT`]), at most `budget` encoded bytes, resolved
/// chunk lists of at most [`bvfs_proto::MAX_COMMIT_CHUNKS`] chunks together, and no node created or
/// updated twice (the server refuses that with `repeated-update`). An op over a budget alone goes in a
/// batch of its own.
pub fn commit_batches(ops: &[v1::Op], max_ops: usize, budget: usize) -> Vec<Range<usize>> {
    let max_ops = max_ops.clamp(1, bvfs_proto::MAX_OPS_PER_COMMIT);
    let mut batches = Vec::new();
    let (mut start, mut bytes, mut chunks) = (0, 0usize, 0usize);
    let mut set: std::collections::HashSet<&[u8]> = Default::default();
    for (i, op) in ops.iter().enumerate() {
        let (len, cost, node) = (
            crate_repeated_len(op),
            resolved_chunks(op),
            attrs_target(op),
        );
        let repeated = node.is_some_and(|id| set.contains(id));
        let full = i - start >= max_ops
            || bytes + len > budget
            || chunks.saturating_add(cost) > bvfs_proto::MAX_COMMIT_CHUNKS;
        if i > start && (full || repeated) {
            batches.push(start..i);
            (start, bytes, chunks) = (i, 0, 0);
            set.clear();
        }
        bytes += len;
        chunks = chunks.saturating_add(cost);
        set.extend(node);
    }
    if start < ops.len() {
        batches.push(start..ops.len());
    }
    batches
}

/// The id of the node whose attributes `op` sets (a create or an update).
fn attrs_target(op: &v1::Op) -> Option<&[u8]> {
    match &op.op {
        Some(v1::op::Op::Create(c)) => Some(&c.id),
        Some(v1::op::Op::Update(u)) => Some(&u.id),
        _ => None,
    }
}

/// How many chunks the server stores for `op`: the whole resolved list of its content (an edit's
/// kept chunks included, a staged list's `chunk_count`).
fn resolved_chunks(op: &v1::Op) -> usize {
    let content = match &op.op {
        Some(v1::op::Op::Create(c)) => c.attrs.as_ref().and_then(|a| a.content.as_ref()),
        Some(v1::op::Op::Update(u)) => u.attrs.as_ref().and_then(|a| a.content.as_ref()),
        _ => None,
    };
    content.map_or(0, |c| {
        (c.keep_prefix as usize)
            .saturating_add(c.keep_suffix as usize)
            .saturating_add(c.chunks.len())
            .saturating_add(usize::try_from(c.chunk_count).unwrap_or(usize::MAX))
    })
}

/// The bytes a message takes as an element of a repeated field (key, length, body).
fn crate_repeated_len(message: &impl Message) -> usize {
    let len = message.encoded_len();
    1 + prost::length_delimiter_len(len) + len
}

/// The index of each node's last change in a page (later changes supersede earlier ones).
pub fn last_change_of_each_node(changes: &[v1::Change]) -> std::collections::HashSet<usize> {
    let mut last = std::collections::HashMap::new();
    for (i, change) in changes.iter().enumerate() {
        if let Some(node) = &change.node {
            last.insert(node.id.as_slice(), i);
        }
    }
    last.into_values().collect()
}

/// The byte budget of one commit request.
pub const COMMIT_BUDGET_BYTES: usize = PAGE_BUDGET_BYTES;

fn wire_err(e: WireError) -> RoundError {
    RoundError::Engine(EngineError::Io(std::io::Error::other(e)))
}

/// The manifest of `node` when the server elided its chunk list, fetched with `GetManifest` and
/// checked against the count and size the node states. `None` when the list was inline.
pub(crate) async fn fetch_elided(
    remote: &dyn Remote,
    node: &v1::Node,
) -> Result<Option<Manifest>, RoundError> {
    let Some(elided) = wire::elided_content(node) else {
        return Ok(None);
    };
    let elided = elided.map_err(wire_err)?;
    let chunks = remote.get_manifest(node.id.clone(), node.revision).await?;
    Ok(Some(
        wire::fetched_manifest(elided, chunks).map_err(wire_err)?,
    ))
}

impl Engine {
    /// Fetches and stores the elided chunk lists of the upserts in `changes` that this device does
    /// not hold yet, so that the page can then be applied in one transaction. Only each node's last
    /// change in the page counts: a file saved many times while this device was away costs one list,
    /// not one per version.
    pub(crate) async fn fetch_elided_changes(
        &self,
        changes: &[v1::Change],
    ) -> Result<(), RoundError> {
        let last = last_change_of_each_node(changes);
        for (i, change) in changes.iter().enumerate() {
            if change.kind != v1::ChangeKind::Upsert as i32 || !last.contains(&i) {
                continue;
            }
            let Some(node) = &change.node else { continue };
            let Some(elided) = wire::elided_content(node) else {
                continue;
            };
            let (hash, _, _) = elided.map_err(wire_err)?;
            if self.state.lock().has_manifest(&hash)? {
                continue;
            }
            if let Some(manifest) = fetch_elided(self.remote.as_ref(), node).await? {
                self.state
                    .lock()
                    .transaction(|t| t.put_manifest(&manifest))?;
            }
        }
        Ok(())
    }

    /// The wire content of `manifest` for a create (`base` `None`) or an update of `base`: inline
    /// (whole, or as an edit of `base`) while the list sent stays within [`MAX_INLINE_CHUNKS`],
    /// otherwise staged with `PutManifest` and named by reference (or, for a server that predates
    /// `PutManifest`, inline after all while the list stays under the page budget).
    pub(crate) async fn content_for_commit(
        &self,
        manifest: &Manifest,
        base: Option<&Manifest>,
    ) -> Result<v1::Content, RoundError> {
        let inline = match base {
            Some(base) => wire::manifest_edit_to_proto(manifest, base),
            None => wire::manifest_to_proto(manifest),
        };
        if inline.chunks.len() <= MAX_INLINE_CHUNKS {
            return Ok(inline);
        }
        match self.remote.put_manifest(manifest.chunks.clone()).await {
            Ok(manifest_ref) => Ok(wire::staged_content(manifest, manifest_ref)),
            // A server from before PutManifest: inline, as it always took, while the list fits.
            Err(RemoteError::Rejected {
                code: tonic::Code::Unimplemented,
                ..
            }) if inline.encoded_len() < PAGE_BUDGET_BYTES => Ok(inline),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_halves_to_one_then_gives_up_and_grows_back() {
        let mut limit = PageLimit::new(1_000);
        let mut seen = vec![limit.get()];
        while limit.shrink() {
            seen.push(limit.get());
        }
        assert_eq!(seen, [1_000, 500, 250, 125, 62, 31, 15, 7, 3, 1]);
        assert!(!limit.shrink());
        assert_eq!(limit.get(), 1);
        for _ in 0..GROW_AFTER - 1 {
            limit.grow();
        }
        assert_eq!(limit.get(), 1, "not after each success");
        limit.grow();
        assert_eq!(limit.get(), 2);
        for _ in 0..100 {
            limit.grow();
        }
        assert_eq!(limit.get(), 1_000);
        assert_eq!(PageLimit::new(0).get(), 1);
    }

    /// A create of a fresh node with a name of `name_len` bytes.
    fn op(name_len: usize) -> v1::Op {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        v1::Op {
            op: Some(v1::op::Op::Create(v1::CreateOp {
                id: u128::from(id).to_be_bytes().to_vec(),
                name: "x".repeat(name_len),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn commit_batches_respect_count_and_bytes() {
        let ops: Vec<_> = (0..10).map(|_| op(100)).collect();
        let one = crate_repeated_len(&ops[0]);
        assert_eq!(commit_batches(&ops, 1_000, usize::MAX), vec![0..10]);
        assert_eq!(commit_batches(&ops, 4, usize::MAX), vec![0..4, 4..8, 8..10]);
        assert_eq!(
            commit_batches(&ops, 1_000, 3 * one),
            vec![0..3, 3..6, 6..9, 9..10]
        );
        // An op over the budget goes alone; nothing is dropped.
        let ops = vec![op(10), op(5_000), op(10)];
        assert_eq!(commit_batches(&ops, 1_000, 1_000), vec![0..1, 1..2, 2..3]);
        assert!(commit_batches(&[], 10, 10).is_empty());
    }

    fn update(id: u8, keep_prefix: u32, chunk_count: u64) -> v1::Op {
        v1::Op {
            op: Some(v1::op::Op::Update(v1::UpdateOp {
                id: vec![id; 16],
                attrs: Some(v1::NodeAttrs {
                    content: Some(v1::Content {
                        keep_prefix,
                        chunk_count,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn commit_batches_respect_the_chunk_cap_and_one_update_per_node() {
        let max = bvfs_proto::MAX_COMMIT_CHUNKS as u32;
        // Edits count their whole resolved lists, kept chunks included.
        let ops = vec![
            update(1, max / 2, 0),
            update(2, max / 2, 0),
            update(3, 1, 0),
        ];
        assert_eq!(commit_batches(&ops, 1_000, usize::MAX), vec![0..2, 2..3]);
        // A staged list counts its chunk_count; one past the cap goes alone.
        let ops = vec![
            update(1, 0, 1),
            update(2, 0, u64::from(max) + 1),
            update(3, 0, 1),
        ];
        assert_eq!(
            commit_batches(&ops, 1_000, usize::MAX),
            vec![0..1, 1..2, 2..3]
        );
        // A node set twice starts a new batch at its second op.
        let ops = vec![
            update(1, 0, 0),
            update(2, 0, 0),
            update(1, 0, 0),
            update(3, 0, 0),
        ];
        assert_eq!(commit_batches(&ops, 1_000, usize::MAX), vec![0..2, 2..4]);
        // Never past the server's op cap, whatever the configuration says.
        let ops: Vec<_> = (0..bvfs_proto::MAX_OPS_PER_COMMIT + 1)
            .map(|_| op(1))
            .collect();
        assert_eq!(commit_batches(&ops, usize::MAX, usize::MAX).len(), 2);
    }
}

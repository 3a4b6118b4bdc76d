//! Chunk lists staged by `PutManifest` for a later commit: a list of any length is uploaded in
//! bounded pages and then named by a short reference in a `Content`, so no `CommitRequest` has to
//! carry it.
//!
//! Staged lists live in memory, per tenant, until the commit that names them takes them (whether it
//! then succeeds or not: a client stages again for its next try) or until they expire. A restart
//! forgets them; a commit naming a forgotten one is refused with `unknown-manifest` and the client
//! stages again. Memory is bounded per tenant by [`MAX_STAGED_CHUNKS`] (36 bytes a chunk): staging
//! past it drops the tenant's oldest staged lists (left behind by failed commits, most likely).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bvfs_proto::v1::{self, ChunkRef, op::Op as OpKind};
use parking_lot::Mutex;
use tonic::Status;

use crate::namespace::{MAX_CHUNK_BYTES, Reason, reject};
use crate::store::TenantId;

/// The longest chunk list one file may have: 16 Mi chunks (1 TiB at the 64 KiB average chunk, more
/// with larger chunks). The bound is the metadata store's: a node's record holds its whole list.
pub const MAX_MANIFEST_CHUNKS: usize = 16 * 1024 * 1024;
/// Chunks one tenant may hold staged at once (576 MiB at 36 bytes a chunk).
pub const MAX_STAGED_CHUNKS: usize = MAX_MANIFEST_CHUNKS;
/// How long a staged list waits for its commit.
pub const STAGED_TTL: Duration = Duration::from_secs(3600);
/// The length of a manifest reference.
pub const REF_LEN: usize = 16;

/// A chunk reference as staged: its id and length, 36 bytes.
pub type StagedChunk = ([u8; 32], u32);

struct Staged {
    chunks: Vec<StagedChunk>,
    at: Instant,
    /// The order of staging (older first), for dropping the oldest.
    order: u64,
}

/// The staged lists of every tenant.
#[derive(Default)]
pub struct Staging {
    lists: Mutex<HashMap<(TenantId, [u8; REF_LEN]), Staged>>,
    next_order: std::sync::atomic::AtomicU64,
}

/// Checks one chunk reference of a list to stage; `index` is its place in the list.
pub fn check_chunk_ref(chunk: &ChunkRef, index: usize) -> Result<StagedChunk, Status> {
    let id: [u8; 32] = chunk.id.as_slice().try_into().map_err(|_| {
        reject(
            Reason::Malformed,
            None,
            format!(
                "chunk {index} of the manifest: the id must be 32 bytes, got {}",
                chunk.id.len()
            ),
        )
    })?;
    if chunk.length == 0 || chunk.length as usize > MAX_CHUNK_BYTES {
        return Err(reject(
            Reason::Malformed,
            None,
            format!(
                "chunk {index} of the manifest: a chunk length must be between 1 byte and 4 MiB"
            ),
        ));
    }
    Ok((id, chunk.length))
}

impl Staging {
    /// Stages `chunks` for `tenant` and returns its reference. Expired lists are dropped, and so are
    /// the tenant's oldest ones while it would hold more than [`MAX_STAGED_CHUNKS`].
    pub fn put(&self, tenant: TenantId, chunks: Vec<StagedChunk>) -> Result<[u8; REF_LEN], Status> {
        if chunks.len() > MAX_STAGED_CHUNKS {
            return Err(reject(
                Reason::TooLarge,
                None,
                format!("a manifest has at most {MAX_MANIFEST_CHUNKS} chunks"),
            ));
        }
        let mut lists = self.lists.lock();
        let now = Instant::now();
        lists.retain(|_, s| now.duration_since(s.at) < STAGED_TTL);
        let mut mine: Vec<_> = lists
            .iter()
            .filter(|((t, _), _)| *t == tenant)
            .map(|(key, s)| (s.order, *key, s.chunks.len()))
            .collect();
        mine.sort_unstable_by_key(|(order, _, _)| *order);
        let mut held: usize = mine.iter().map(|(_, _, n)| n).sum();
        for (_, key, n) in mine {
            if held + chunks.len() <= MAX_STAGED_CHUNKS {
                break;
            }
            lists.remove(&key);
            held -= n;
            tracing::info!(
                tenant,
                "dropped a staged manifest to make room for a new one"
            );
        }
        let key = *uuid::Uuid::new_v4().as_bytes();
        let order = self
            .next_order
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        lists.insert(
            (tenant, key),
            Staged {
                chunks,
                at: now,
                order,
            },
        );
        Ok(key)
    }

    /// Replaces every `manifest_ref` in the ops' contents by the staged list it names, taking it
    /// out of staging. Refuses elided contents (only the server elides) and refs that are unknown,
    /// another tenant's, expired, or whose `chunk_count` does not match.
    pub fn resolve(&self, tenant: TenantId, ops: &mut [v1::Op]) -> Result<(), Status> {
        for (i, op) in ops.iter_mut().enumerate() {
            let content = match &mut op.op {
                Some(OpKind::Create(c)) => c.attrs.as_mut().and_then(|a| a.content.as_mut()),
                Some(OpKind::Update(u)) => u.attrs.as_mut().and_then(|a| a.content.as_mut()),
                _ => None,
            };
            let Some(content) = content else { continue };
            if content.chunks_elided {
                return Err(reject(
                    Reason::Malformed,
                    Some(i),
                    "an elided chunk list cannot be committed; send the chunks or a manifest_ref",
                ));
            }
            if content.manifest_ref.is_empty() {
                content.chunk_count = 0;
                continue;
            }
            if !content.chunks.is_empty() || content.keep_prefix != 0 || content.keep_suffix != 0 {
                return Err(reject(
                    Reason::Malformed,
                    Some(i),
                    "a content with a manifest_ref has no chunks and no edit of its own",
                ));
            }
            let key: [u8; REF_LEN] = content.manifest_ref.as_slice().try_into().map_err(|_| {
                reject(
                    Reason::Malformed,
                    Some(i),
                    format!(
                        "a manifest_ref is {REF_LEN} bytes, got {}",
                        content.manifest_ref.len()
                    ),
                )
            })?;
            let staged = self
                .lists
                .lock()
                .remove(&(tenant, key))
                .filter(|s| s.at.elapsed() < STAGED_TTL)
                .ok_or_else(|| {
                    reject(
                        Reason::UnknownManifest,
                        Some(i),
                        "the manifest_ref names no staged manifest (expired, used, or lost in a \
                         server restart); stage it again with PutManifest",
                    )
                })?;
            if staged.chunks.len() as u64 != content.chunk_count {
                return Err(reject(
                    Reason::Malformed,
                    Some(i),
                    format!(
                        "the content says {} chunks, its staged manifest has {}",
                        content.chunk_count,
                        staged.chunks.len()
                    ),
                ));
            }
            content.chunks = staged
                .chunks
                .into_iter()
                .map(|(id, length)| ChunkRef {
                    id: id.to_vec(),
                    length,
                })
                .collect();
            content.manifest_ref = Vec::new();
            content.chunk_count = 0;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op_with_ref(key: &[u8], count: u64) -> v1::Op {
        v1::Op {
            op: Some(OpKind::Create(v1::CreateOp {
                attrs: Some(v1::NodeAttrs {
                    content: Some(v1::Content {
                        manifest_ref: key.to_vec(),
                        chunk_count: count,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn a_ref_resolves_once_for_its_tenant_only() {
        let staging = Staging::default();
        let key = staging.put(1, vec![([7; 32], 5); 3]).unwrap();
        assert!(staging.resolve(2, &mut [op_with_ref(&key, 3)]).is_err());
        let mut ops = [op_with_ref(&key, 3)];
        staging.resolve(1, &mut ops).unwrap();
        let Some(OpKind::Create(c)) = &ops[0].op else {
            unreachable!()
        };
        let content = c.attrs.as_ref().unwrap().content.as_ref().unwrap();
        assert_eq!(content.chunks.len(), 3);
        assert!(content.manifest_ref.is_empty() && content.chunk_count == 0);
        assert!(staging.resolve(1, &mut [op_with_ref(&key, 3)]).is_err());
    }

    #[test]
    fn staging_past_the_bound_drops_the_oldest_lists() {
        let staging = Staging::default();
        let half = MAX_STAGED_CHUNKS / 2;
        let first = staging.put(1, vec![([1; 32], 1); half]).unwrap();
        let second = staging.put(1, vec![([2; 32], 1); half]).unwrap();
        let other = staging.put(2, vec![([3; 32], 1); half]).unwrap();
        let third = staging.put(1, vec![([4; 32], 1); 1]).unwrap();
        assert!(
            staging
                .resolve(1, &mut [op_with_ref(&first, half as u64)])
                .is_err()
        );
        staging
            .resolve(1, &mut [op_with_ref(&second, half as u64)])
            .unwrap();
        staging.resolve(1, &mut [op_with_ref(&third, 1)]).unwrap();
        staging
            .resolve(2, &mut [op_with_ref(&other, half as u64)])
            .unwrap();
        assert!(
            staging
                .put(1, vec![([5; 32], 1); MAX_STAGED_CHUNKS + 1])
                .is_err()
        );
    }
}

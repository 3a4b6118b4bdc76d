//! Chunk lists staged by `PutManifest` for a later commit: a list of any length is uploaded in
//! bounded pages and then named by a short reference in a `Content`, so no `CommitRequest` has to
//! carry it.
//!
//! Staged lists live in memory, per tenant, until the commit that names them takes them (whether it
//! then succeeds or not: a client stages again for its next try) or until they expire. A restart
//! forgets them; a commit naming a forgotten one is refused with `unknown-manifest` and the client
//! stages again. Memory is bounded per tenant by [`MAX_STAGED_CHUNKS`].

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
/// Chunks one tenant may hold staged at once.
pub const MAX_STAGED_CHUNKS: usize = 2 * MAX_MANIFEST_CHUNKS;
/// How long a staged list waits for its commit.
pub const STAGED_TTL: Duration = Duration::from_secs(3600);
/// The length of a manifest reference.
pub const REF_LEN: usize = 16;

struct Staged {
    chunks: Vec<ChunkRef>,
    at: Instant,
}

/// The staged lists of every tenant.
#[derive(Default)]
pub struct Staging {
    lists: Mutex<HashMap<(TenantId, [u8; REF_LEN]), Staged>>,
}

/// Checks one chunk reference of a staged list.
pub fn check_chunk_ref(chunk: &ChunkRef, index: usize) -> Result<(), Status> {
    if chunk.id.len() != bvfs_proto::HASH_LEN {
        return Err(reject(
            Reason::Malformed,
            None,
            format!(
                "chunk {index} of the manifest: the id must be 32 bytes, got {}",
                chunk.id.len()
            ),
        ));
    }
    if chunk.length == 0 || chunk.length as usize > MAX_CHUNK_BYTES {
        return Err(reject(
            Reason::Malformed,
            None,
            format!(
                "chunk {index} of the manifest: a chunk length must be between 1 byte and 4 MiB"
            ),
        ));
    }
    Ok(())
}

impl Staging {
    /// Stages `chunks` for `tenant` and returns its reference.
    pub fn put(&self, tenant: TenantId, chunks: Vec<ChunkRef>) -> Result<[u8; REF_LEN], Status> {
        let mut lists = self.lists.lock();
        let now = Instant::now();
        lists.retain(|_, s| now.duration_since(s.at) < STAGED_TTL);
        let held: usize = lists
            .iter()
            .filter(|((t, _), _)| *t == tenant)
            .map(|(_, s)| s.chunks.len())
            .sum();
        if held.saturating_add(chunks.len()) > MAX_STAGED_CHUNKS {
            return Err(reject(
                Reason::TooLarge,
                None,
                format!(
                    "this tenant already has {held} chunks staged for commits; commit them or wait \
                     for them to expire"
                ),
            ));
        }
        let key = *uuid::Uuid::new_v4().as_bytes();
        lists.insert((tenant, key), Staged { chunks, at: now });
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
            content.chunks = staged.chunks;
            content.manifest_ref = Vec::new();
            content.chunk_count = 0;
        }
        Ok(())
    }
}

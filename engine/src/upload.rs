//! Uploading content before the commit that names it (never "commit first, upload later").
//!
//! Only chunks the server lacks are sent (`FindMissingChunks`), so an interrupted upload resumes
//! without resending what was stored, and an edit in the middle of a large file sends only the chunks
//! around it. Chunk bytes come from the file's materialized copy (checked against the chunk id: the
//! file may have been written since it was chunked) or from the chunk cache.

use std::collections::HashSet;

use futures::{StreamExt, TryStreamExt};

use crate::api::{Engine, EngineError};
use crate::chunking::{ChunkId, Manifest};
use crate::model::NodeId;
use crate::round::RoundError;

/// What became of an upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Uploaded {
    /// The server has every chunk.
    Done,
    /// The file's copy was written since it was chunked: plan again.
    Changed,
    /// A chunk the server lacks is on this device neither in a copy nor in the cache: the content
    /// is lost to this device (a server restored from an older backup forgot content this device
    /// never downloaded). Another device may still hold it.
    Unavailable(ChunkId),
}

/// Chunks per `PutChunks` stream, and bytes at most.
const PUT_BATCH_CHUNKS: usize = 16;
const PUT_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Ids per `FindMissingChunks` request.
const FIND_BATCH: usize = 10_000;

impl Engine {
    /// Makes sure the server has every chunk of `manifest`, the content of node `id`. Chunks of
    /// `stored` (the node's version on the server, whose chunks the server keeps with its history)
    /// are not asked about, so a small edit of a large file costs a few ids, not the whole list.
    pub(crate) async fn upload(
        &self,
        id: NodeId,
        manifest: Option<&Manifest>,
        stored: Option<&Manifest>,
    ) -> Result<Uploaded, RoundError> {
        let Some(manifest) = manifest.filter(|m| !m.chunks.is_empty()) else {
            return Ok(Uploaded::Done);
        };
        let mut unique = Vec::new();
        let mut seen: HashSet<ChunkId> = stored
            .map(|m| m.chunks.iter().map(|c| c.id).collect())
            .unwrap_or_default();
        for chunk in &manifest.chunks {
            if seen.insert(chunk.id) {
                unique.push(chunk.id);
            }
        }
        if unique.is_empty() {
            return Ok(Uploaded::Done);
        }
        let mut missing: HashSet<ChunkId> = HashSet::new();
        for batch in unique.chunks(FIND_BATCH) {
            missing.extend(self.remote.find_missing(batch.to_vec()).await?);
        }
        if missing.is_empty() {
            return Ok(Uploaded::Done);
        }
        let ino = self.state.lock().read(|t| t.local_ino(id))?;
        self.uploading.lock().insert(id);
        let result = self.send_missing(id, ino, manifest, missing).await;
        self.uploading.lock().remove(&id);
        result
    }

    async fn send_missing(
        &self,
        id: NodeId,
        ino: Option<u64>,
        manifest: &Manifest,
        mut missing: HashSet<ChunkId>,
    ) -> Result<Uploaded, RoundError> {
        // Collect the missing chunks in manifest order, in batches, reading their bytes lazily.
        let mut batches: Vec<Vec<(ChunkId, u64, u32)>> = vec![Vec::new()];
        let mut batch_bytes = 0;
        let mut offset = 0u64;
        for chunk in &manifest.chunks {
            if missing.remove(&chunk.id) {
                let batch = batches.last_mut().expect("never empty");
                if batch.len() >= PUT_BATCH_CHUNKS
                    || batch_bytes + chunk.len as usize > PUT_BATCH_BYTES
                {
                    batches.push(Vec::new());
                    batch_bytes = 0;
                }
                batches
                    .last_mut()
                    .expect("never empty")
                    .push((chunk.id, offset, chunk.len));
                batch_bytes += chunk.len as usize;
            }
            offset += u64::from(chunk.len);
        }
        let sent = futures::stream::iter(batches.into_iter().filter(|b| !b.is_empty()))
            .map(|batch| self.put_batch(id, manifest, ino, batch))
            .buffer_unordered(self.config.transfer_concurrency.max(1))
            .try_collect::<Vec<Uploaded>>()
            .await?;
        Ok(sent
            .into_iter()
            .find(|outcome| *outcome != Uploaded::Done)
            .unwrap_or(Uploaded::Done))
    }

    async fn put_batch(
        &self,
        node: NodeId,
        manifest: &Manifest,
        ino: Option<u64>,
        batch: Vec<(ChunkId, u64, u32)>,
    ) -> Result<Uploaded, RoundError> {
        let mut chunks = Vec::with_capacity(batch.len());
        for (id, offset, len) in batch {
            let has_copy = ino.is_some_and(|ino| self.files.exists(ino));
            let from_copy = match ino {
                Some(ino) if has_copy => self
                    .files
                    .read_chunk(ino, offset, len, id)
                    .map_err(EngineError::from)?,
                _ => None,
            };
            let data = match from_copy {
                Some(data) => data,
                None => match self.cache.get(&id).map_err(EngineError::from)? {
                    Some(data) => data,
                    None if has_copy => {
                        tracing::info!(chunk = %id, "content changed since it was chunked; planning again");
                        return Ok(Uploaded::Changed);
                    }
                    // The file was removed, renamed over or rewritten since it was planned (a
                    // temporary file of git or an editor): not lost, just not this content any
                    // more. Lost only if LOCAL still says this content and no copy holds it.
                    None if self.content_moved_on(node, manifest, ino)? => {
                        tracing::info!(chunk = %id, "the file changed since it was planned; planning again");
                        return Ok(Uploaded::Changed);
                    }
                    None => return Ok(Uploaded::Unavailable(id)),
                },
            };
            chunks.push((id, data));
        }
        self.remote.put_chunks(chunks).await?;
        Ok(Uploaded::Done)
    }

    /// Whether node `node` no longer has the content `manifest` with the copy state seen when its
    /// upload began (`ino`): gone from LOCAL, another content, or a copy now.
    fn content_moved_on(
        &self,
        node: NodeId,
        manifest: &Manifest,
        ino: Option<u64>,
    ) -> Result<bool, RoundError> {
        let current = self.getattr_by_id(node)?;
        Ok(match current {
            None => true,
            Some(entry) => {
                entry.node.attrs.content != Some(manifest.hash)
                    || Some(entry.ino) != ino
                    || self.files.exists(entry.ino)
            }
        })
    }
}

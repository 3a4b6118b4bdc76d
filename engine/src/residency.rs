//! Which local files keep their bytes on this device, as the planner asks it (`Residency`).
//!
//! A file is resident when it is pinned, has a materialized copy, or has every chunk in the cache.
//! A remote change to a resident file fetches the new content at once; to any other file it is
//! metadata only, and the next read hydrates what it touches.

use crate::cache::ChunkCache;
use crate::files::LocalFiles;
use crate::model::{NodeId, NodeKind};
use crate::planner::Residency;
use crate::state::State;

/// [`Residency`] answered from the state database, the cache and the materialized files.
pub struct StateResidency<'a> {
    state: &'a State,
    cache: &'a ChunkCache,
    files: &'a LocalFiles,
}

impl<'a> StateResidency<'a> {
    pub fn new(state: &'a State, cache: &'a ChunkCache, files: &'a LocalFiles) -> Self {
        Self {
            state,
            cache,
            files,
        }
    }

    fn resident(&self, id: NodeId) -> crate::state::StateResult<bool> {
        self.state.read(|t| {
            let Some(entry) = t.local_by_id(id).map_err(|e| match e {
                crate::state::local::LocalError::State(s) => s,
                other => crate::state::StateError::Schema(other.to_string()),
            })?
            else {
                return Ok(false);
            };
            if entry.pinned {
                return Ok(true);
            }
            if entry.node.kind != NodeKind::File {
                return Ok(false);
            }
            if self.files.exists(entry.ino) {
                return Ok(true);
            }
            let Some(hash) = entry.node.attrs.content else {
                return Ok(false);
            };
            Ok(match t.manifest(&hash)? {
                Some(manifest) => {
                    !manifest.chunks.is_empty()
                        && manifest.chunks.iter().all(|c| self.cache.contains(&c.id))
                }
                None => false,
            })
        })
    }
}

impl Residency for StateResidency<'_> {
    fn is_resident(&self, id: NodeId) -> bool {
        self.resident(id).unwrap_or(false)
    }
}

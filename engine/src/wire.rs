//! Conversions between the wire types of `bvfs-proto` and the engine's model.
//!
//! Everything from the network is checked here: a malformed id, hash or kind becomes a
//! [`WireError`], never a panic.

use bvfs_proto::v1;

use crate::chunking::{ChunkId, ChunkRef, Manifest};
use crate::model::{Attrs, ContentHash, Node, NodeId, NodeKind};

/// A message from the server that does not fit the model.
#[derive(Debug, Clone, thiserror::Error)]
#[error("malformed data from the server: {0}")]
pub struct WireError(pub String);

fn bad(what: impl Into<String>) -> WireError {
    WireError(what.into())
}

pub fn kind_from_proto(kind: i32) -> Result<NodeKind, WireError> {
    match v1::NodeKind::try_from(kind) {
        Ok(v1::NodeKind::File) => Ok(NodeKind::File),
        Ok(v1::NodeKind::Directory) => Ok(NodeKind::Directory),
        Ok(v1::NodeKind::Symlink) => Ok(NodeKind::Symlink),
        _ => Err(bad(format!("unknown node kind {kind}"))),
    }
}

pub fn kind_to_proto(kind: NodeKind) -> v1::NodeKind {
    match kind {
        NodeKind::File => v1::NodeKind::File,
        NodeKind::Directory => v1::NodeKind::Directory,
        NodeKind::Symlink => v1::NodeKind::Symlink,
    }
}

pub fn node_id(bytes: &[u8]) -> Result<NodeId, WireError> {
    NodeId::from_bytes(bytes).ok_or_else(|| bad(format!("a node id of {} bytes", bytes.len())))
}

/// A manifest from its wire form, checking sizes.
pub fn manifest_from_proto(content: &v1::Content, size: u64) -> Result<Manifest, WireError> {
    if content.keep_prefix != 0 || content.keep_suffix != 0 || !content.manifest_ref.is_empty() {
        return Err(bad("a content edit where the whole chunk list belongs"));
    }
    if content.chunks_elided {
        return Err(bad("an elided chunk list where the whole list belongs"));
    }
    let hash = ContentHash::from_slice(&content.hash)
        .ok_or_else(|| bad("a content hash that is not 32 bytes"))?;
    let chunks = content
        .chunks
        .iter()
        .map(|c| {
            Ok(ChunkRef {
                id: ChunkId::from_slice(&c.id)
                    .ok_or_else(|| bad("a chunk id that is not 32 bytes"))?,
                len: c.length,
            })
        })
        .collect::<Result<Vec<_>, WireError>>()?;
    let total: u64 = chunks.iter().map(|c| u64::from(c.len)).sum();
    if total != size {
        return Err(bad(format!(
            "a manifest of {total} bytes for a file of {size}"
        )));
    }
    Ok(Manifest { hash, size, chunks })
}

pub fn manifest_to_proto(manifest: &Manifest) -> v1::Content {
    content_to_proto(manifest, 0, 0)
}

/// `manifest`'s wire form for an update whose base content is `base`: as an edit of `base` (see
/// `Content` in the protocol) when the two share leading or trailing chunks, so that a small edit of
/// a large file sends the chunks around the edit, not the whole list.
pub fn manifest_edit_to_proto(manifest: &Manifest, base: &Manifest) -> v1::Content {
    let (new, old) = (&manifest.chunks, &base.chunks);
    let prefix = new.iter().zip(old).take_while(|(a, b)| a == b).count();
    // The suffix may not overlap the prefix in either list.
    let room = new.len().min(old.len()) - prefix;
    let suffix = new
        .iter()
        .rev()
        .zip(old.iter().rev())
        .take(room)
        .take_while(|(a, b)| a == b)
        .count();
    debug_assert!(prefix + suffix <= new.len() && prefix + suffix <= old.len());
    content_to_proto(manifest, prefix, suffix)
}

/// The wire form of `manifest` that keeps its first `prefix` and last `suffix` chunks out of the
/// list (0 and 0: the whole list). A count beyond `u32` sends the whole list instead.
fn content_to_proto(manifest: &Manifest, prefix: usize, suffix: usize) -> v1::Content {
    let (Ok(keep_prefix), Ok(keep_suffix)) = (u32::try_from(prefix), u32::try_from(suffix)) else {
        return content_to_proto(manifest, 0, 0);
    };
    let chunks = &manifest.chunks[prefix..manifest.chunks.len() - suffix];
    v1::Content {
        hash: manifest.hash.0.to_vec(),
        chunks: chunks
            .iter()
            .map(|c| v1::ChunkRef {
                id: c.id.0.to_vec(),
                length: c.len,
            })
            .collect(),
        keep_prefix,
        keep_suffix,
        ..Default::default()
    }
}

/// The wire content of a list staged with `PutManifest` (`manifest_ref`), for a create or update.
pub fn staged_content(manifest: &Manifest, manifest_ref: Vec<u8>) -> v1::Content {
    v1::Content {
        hash: manifest.hash.0.to_vec(),
        chunk_count: manifest.chunks.len() as u64,
        manifest_ref,
        ..Default::default()
    }
}

/// What a node's content says about a chunk list the server left out (`chunks_elided`): the content
/// hash, the file size and the number of chunks to fetch with `GetManifest`. `None` when the list is
/// inline (or the node has no content).
pub fn elided_content(node: &v1::Node) -> Option<Result<(ContentHash, u64, u64), WireError>> {
    let attrs = node.attrs.as_ref()?;
    let content = attrs.content.as_ref().filter(|c| c.chunks_elided)?;
    Some(
        ContentHash::from_slice(&content.hash)
            .map(|hash| (hash, attrs.size, content.chunk_count))
            .ok_or_else(|| bad("a content hash that is not 32 bytes")),
    )
}

/// The manifest of an elided list fetched with `GetManifest`, checked against what the node said.
pub fn fetched_manifest(
    (hash, size, count): (ContentHash, u64, u64),
    chunks: Vec<ChunkRef>,
) -> Result<Manifest, WireError> {
    if chunks.len() as u64 != count {
        return Err(bad(format!(
            "a manifest of {} chunks where the node said {count}",
            chunks.len()
        )));
    }
    let total: u64 = chunks.iter().map(|c| u64::from(c.len)).sum();
    if total != size {
        return Err(bad(format!(
            "a manifest of {total} bytes for a file of {size}"
        )));
    }
    Ok(Manifest { hash, size, chunks })
}

/// A node (and its manifest, for files) from the wire. A file whose list the server elided comes
/// with no manifest (its hash is in the attributes): fetch it first ([`elided_content`]).
pub fn node_from_proto(node: &v1::Node) -> Result<(Node, Option<Manifest>), WireError> {
    let id = node_id(&node.id)?;
    let parent = if node.parent_id.is_empty() {
        if !id.is_root() {
            return Err(bad(format!("node {id} has no parent")));
        }
        NodeId::ROOT
    } else {
        node_id(&node.parent_id)?
    };
    let kind = kind_from_proto(node.kind)?;
    let attrs = node.attrs.clone().unwrap_or_default();
    let mut elided = None;
    let manifest = match (kind, &attrs.content) {
        (NodeKind::File, Some(content)) if content.chunks_elided => {
            elided = Some(
                ContentHash::from_slice(&content.hash)
                    .ok_or_else(|| bad("a content hash that is not 32 bytes"))?,
            );
            None
        }
        (NodeKind::File, Some(content)) => Some(manifest_from_proto(content, attrs.size)?),
        (NodeKind::File, None) => return Err(bad(format!("file {id} has no content"))),
        _ => None,
    };
    let model = Node {
        id,
        parent,
        name: node.name.clone(),
        kind,
        attrs: Attrs {
            size: attrs.size,
            mtime_ns: attrs.mtime_ns,
            mode: bvfs_proto::effective_mode(kind_to_proto(kind), &attrs),
            content: manifest.as_ref().map(|m| m.hash).or(elided),
            symlink_target: (kind == NodeKind::Symlink).then(|| attrs.symlink_target.clone()),
            xattrs: xattrs_from_proto(&attrs.xattrs)?,
        },
        revision: node.revision,
    };
    Ok((model, manifest))
}

/// Extended attributes from the wire, held to the protocol's bounds (the server enforces them;
/// a client never trusts that).
fn xattrs_from_proto(
    xattrs: &std::collections::HashMap<String, Vec<u8>>,
) -> Result<crate::model::Xattrs, WireError> {
    let mut total = 0usize;
    for (name, value) in xattrs {
        if !name.starts_with(bvfs_proto::SYNCED_XATTR_PREFIX)
            || name.len() > 255
            || value.len() > bvfs_proto::MAX_XATTR_VALUE_BYTES
        {
            return Err(bad("an extended attribute out of the protocol's bounds"));
        }
        total += name.len() + value.len();
    }
    if total > bvfs_proto::MAX_XATTR_BYTES {
        return Err(bad("extended attributes past the protocol's bound"));
    }
    Ok(xattrs.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

/// The attributes of a node on the wire; `manifest` is required for files.
pub fn attrs_to_proto(kind: NodeKind, attrs: &Attrs, manifest: Option<&Manifest>) -> v1::NodeAttrs {
    v1::NodeAttrs {
        size: attrs.size,
        mtime_ns: attrs.mtime_ns,
        executable: attrs.executable() && kind == NodeKind::File,
        content: match kind {
            NodeKind::File => manifest.map(manifest_to_proto),
            _ => None,
        },
        symlink_target: attrs.symlink_target.clone().unwrap_or_default(),
        mode: Some(attrs.mode & bvfs_proto::MODE_BITS),
        xattrs: attrs
            .xattrs
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn manifest(ids: &[u8]) -> Manifest {
        Manifest {
            hash: ContentHash([0; 32]),
            size: ids.len() as u64,
            chunks: ids
                .iter()
                .map(|&i| ChunkRef {
                    id: ChunkId([i; 32]),
                    len: 1,
                })
                .collect(),
        }
    }

    /// What the server does with an edit: keep the prefix and suffix of the base around the chunks.
    fn resolve(edit: &v1::Content, base: &Manifest) -> Vec<u8> {
        let (prefix, suffix) = (edit.keep_prefix as usize, edit.keep_suffix as usize);
        assert!(
            prefix + suffix <= base.chunks.len(),
            "keeps too much: {edit:?}"
        );
        let ids = |chunks: &[ChunkRef]| chunks.iter().map(|c| c.id.0[0]).collect::<Vec<_>>();
        let mut out = ids(&base.chunks[..prefix]);
        out.extend(edit.chunks.iter().map(|c| c.id[0]));
        out.extend(ids(&base.chunks[base.chunks.len() - suffix..]));
        out
    }

    #[test]
    fn an_edit_in_the_middle_sends_only_the_middle() {
        let edit = manifest_edit_to_proto(&manifest(&[1, 2, 9, 4, 5]), &manifest(&[1, 2, 3, 4, 5]));
        assert_eq!((edit.keep_prefix, edit.keep_suffix), (2, 2));
        assert_eq!(edit.chunks.len(), 1);
        // Repeated chunks: prefix and suffix never overlap.
        let edit = manifest_edit_to_proto(&manifest(&[7]), &manifest(&[7, 7, 7]));
        assert_eq!(edit.keep_prefix + edit.keep_suffix, 1);
        assert_eq!(resolve(&edit, &manifest(&[7, 7, 7])), vec![7]);
    }

    proptest! {
        /// Applying the edit to its base gives the new chunk list, whatever the two lists are.
        #[test]
        fn an_edit_applied_to_its_base_gives_the_new_list(
            base in proptest::collection::vec(0u8..4, 0..12),
            new in proptest::collection::vec(0u8..4, 0..12),
        ) {
            let (base, new_manifest) = (manifest(&base), manifest(&new));
            let edit = manifest_edit_to_proto(&new_manifest, &base);
            prop_assert_eq!(resolve(&edit, &base), new);
        }
    }
}

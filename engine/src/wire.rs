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
    v1::Content {
        hash: manifest.hash.0.to_vec(),
        chunks: manifest
            .chunks
            .iter()
            .map(|c| v1::ChunkRef {
                id: c.id.0.to_vec(),
                length: c.len,
            })
            .collect(),
    }
}

/// A node (and its manifest, for files) from the wire.
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
    let manifest = match (kind, &attrs.content) {
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
            executable: attrs.executable,
            content: manifest.as_ref().map(|m| m.hash),
            symlink_target: (kind == NodeKind::Symlink).then(|| attrs.symlink_target.clone()),
        },
        revision: node.revision,
    };
    Ok((model, manifest))
}

/// The attributes of a node on the wire; `manifest` is required for files.
pub fn attrs_to_proto(kind: NodeKind, attrs: &Attrs, manifest: Option<&Manifest>) -> v1::NodeAttrs {
    v1::NodeAttrs {
        size: attrs.size,
        mtime_ns: attrs.mtime_ns,
        executable: attrs.executable && kind == NodeKind::File,
        content: match kind {
            NodeKind::File => manifest.map(manifest_to_proto),
            _ => None,
        },
        symlink_target: attrs.symlink_target.clone().unwrap_or_default(),
    }
}

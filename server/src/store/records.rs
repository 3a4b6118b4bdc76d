//! Stored node records and journal kinds, shared by every metadata backend: a node is stored as its
//! protobuf encoding, a journal kind as its enum number.

use bvfs_proto::v1::{ChangeKind, Node, NodeAttrs, NodeKind};
use prost::Message;

use super::{NodeKey, ROOT_ID, StoreError, StoreResult};

/// Decodes a stored node record.
pub fn decode_node(bytes: &[u8]) -> StoreResult<Node> {
    Node::decode(bytes).map_err(|e| StoreError::Corrupt(format!("undecodable node record: {e}")))
}

/// Decodes a stored journal kind (never `Unspecified`).
pub fn decode_kind(kind: i64) -> StoreResult<ChangeKind> {
    ChangeKind::try_from(kind as i32)
        .ok()
        .filter(|k| *k != ChangeKind::Unspecified)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown journal kind {kind}")))
}

/// A stored node id.
pub fn key(bytes: Vec<u8>) -> StoreResult<NodeKey> {
    bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt("node id is not 16 bytes".into()))
}

/// Every namespace's root directory, as stored when its tenant is created.
pub fn root_node() -> Node {
    Node {
        id: ROOT_ID.to_vec(),
        parent_id: Vec::new(),
        name: String::new(),
        kind: NodeKind::Directory as i32,
        attrs: Some(NodeAttrs::default()),
        revision: 0,
    }
}

/// Nanoseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

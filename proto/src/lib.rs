//! The BitVault sync API: the `.proto` definition (in `proto/bvfs/v1/sync.proto`), the tonic/prost code
//! generated from it, and small conversions shared by the client and the server.
//!
//! The wire format is the contract between `bvfs-engine` (the client) and `bvfs-server`; neither crate
//! imports the other.

/// Generated messages and the `Sync` service client and server for `bvfs.v1`.
pub mod v1 {
    tonic::include_proto!("bvfs.v1");
}

/// Length in bytes of a node id on the wire.
pub const NODE_ID_LEN: usize = 16;
/// Length in bytes of a chunk id or content hash (BLAKE3) on the wire.
pub const HASH_LEN: usize = 32;

/// The metadata key that carries the bearer token.
pub const AUTHORIZATION: &str = "authorization";

/// The largest gRPC message either side accepts. A chunk is at most 256 KiB, so pages and chunk
/// messages stay far below this.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

pub mod names;

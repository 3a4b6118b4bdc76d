//! The bvfs sync engine.
//!
//! It owns everything between the mount and the server: the node model, content chunking, the pure
//! three-tree planner, and (in later modules) the SQLite state, the sync loop, transfers and the chunk
//! cache. It knows nothing of FUSE: the `bvfs-vfs` crate drives it through its API.

pub mod chunking;
pub mod remote;
pub mod model;
pub mod planner;
pub mod tree;

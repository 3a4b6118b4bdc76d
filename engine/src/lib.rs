//! The bvfs sync engine.
//!
//! It owns everything between the mount and the server: the node model ([`model`]), content chunking
//! ([`chunking`]), the pure three-tree planner ([`planner`]), the SQLite state ([`state`]), the sync
//! round that pulls, plans and executes ([`round`], [`execute`], [`upload`]), the chunk cache and
//! fetcher ([`cache`], [`fetch`]), materialized files ([`files`]) and the connection to the server
//! ([`remote`]). [`Engine`] is the API the mount and the CLI use. It knows nothing of FUSE.

pub mod api;
pub mod bounded;
pub mod cache;
pub mod chunking;
pub mod content;
pub mod execute;
pub mod faults;
pub mod fetch;
pub mod files;
pub mod history;
pub mod invalidations;
pub mod lineage;
pub mod model;
pub mod overview;
pub mod planner;
pub mod presence;
pub mod presigned;
pub mod recover;
pub mod remote;
pub mod residency;
pub mod round;
pub mod runtime;
pub mod space;
pub mod state;
pub mod tree;
pub mod upload;
pub mod wire;

pub use api::{Engine, EngineConfig, EngineError, Invalidation, Status};

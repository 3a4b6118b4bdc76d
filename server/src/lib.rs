//! The BitVault server (`bvfs serve`).
//!
//! It holds each tenant's namespace (nodes keyed by 128-bit ids), the change journal that orders every
//! commit (the cursor clients sync from), the version history, and content-addressed chunk storage
//! deduplicated per tenant. It pushes "namespace advanced" notifications to subscribed devices.
//!
//! Layout: [`service`] speaks gRPC and authenticates; [`namespace`] holds the commit rules; [`store`]
//! defines the storage traits and the backends (embedded: SQLite, files; scale-out: PostgreSQL, S3),
//! which [`storage`] chooses from the command line (or [`config`], a TOML file); [`notify`] wakes
//! subscribers (across processes through NATS, [`notify::relay`]); [`bounds`] keeps every answer
//! under the byte budget and [`staging`] holds chunk lists uploaded for commits; [`retention`] drops
//! versions older than a tenant's retention window and [`gc`] deletes chunks no kept version names; [`metrics`] counts for Prometheus; [`serve`] runs it all.
//! The server never depends on the client engine.

pub mod ancestry;
pub mod auth;
pub mod bounds;
pub mod config;
pub mod connections;
pub mod gc;
pub mod metrics;
pub mod migrate;
pub mod namespace;
pub mod notify;
pub mod presign;
pub mod retention;
pub mod serve;
pub mod service;
pub mod staging;
pub mod storage;
pub mod store;

pub use serve::{BoundServer, DataDir, ServeOptions, TlsFiles, shutdown_signal};
pub use storage::{Storage, StorageUrls};

//! The control channel between the `bvfs` CLI and a running mount daemon.
//!
//! Each mount daemon listens on a Unix socket of its own, `RUNTIME/<key>.sock`, where `RUNTIME` is
//! [`crate::paths::runtime_dir`] (a `0700` directory) and `<key>` hashes the mountpoint
//! ([`crate::paths::mount_key`]), so the CLI finds the daemon of any path by walking up from it.
//! The socket is `0600` and the daemon also checks each peer's user id: only the mounting user
//! (or root) is served.
//!
//! - [`protocol`]: the newline-delimited JSON messages and their bounds.
//! - [`server`]: the daemon side; it owns the listener and answers from the engine. Nothing it
//!   reads can stop the mount: bad input is answered with an error line, never a panic.
//! - [`client`]: the CLI side; finds the daemon of a path and exchanges messages.

pub mod client;
pub mod protocol;
pub mod server;

use std::path::{Path, PathBuf};

/// The control socket of the mount at `mountpoint` (an absolute, canonical path).
pub fn socket_path(mountpoint: &Path) -> PathBuf {
    crate::paths::runtime_dir().join(format!("{}.sock", crate::paths::mount_key(mountpoint)))
}

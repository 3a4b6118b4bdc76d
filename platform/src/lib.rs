//! OS adapters over the bvfs vfs core.
//!
//! - Linux: FUSE through `fuser` ([`fuse`], [`mount`]).
//! - Windows: ProjFS through `windows-projfs` (GPL-2.0), only with the off-by-default `projfs`
//!   feature on a Windows target (`windows`). It translates types over the platform-neutral
//!   `bvfs_vfs::projection` layer. No Windows toolchain exists on the build machines, so it is
//!   neither compiled nor tested there; the projection layer is, on Linux.

#[cfg(target_os = "linux")]
pub mod fuse;
#[cfg(target_os = "linux")]
pub mod mount;
#[cfg(all(windows, feature = "projfs"))]
pub mod windows;

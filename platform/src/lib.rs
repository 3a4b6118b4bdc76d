//! OS adapters over the bvfs vfs core.
//!
//! - Linux: FUSE through `fuser` ([`fuse`], [`mount`]).
//! - Windows: ProjFS through `windows-projfs` (GPL-2.0) is planned behind an off-by-default feature and
//!   a Windows-only target section; no Windows toolchain exists on the build machines, so it is not
//!   built here.

#[cfg(target_os = "linux")]
pub mod fuse;
#[cfg(target_os = "linux")]
pub mod mount;

//! Where bvfs keeps its files by default (XDG base directories).

use std::path::PathBuf;

/// `$XDG_DATA_HOME/bvfs` or `~/.local/share/bvfs`.
pub fn data_home() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("bvfs");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/share/bvfs")
}

/// The default data directory of `bvfs serve`.
pub fn default_server_dir() -> PathBuf {
    data_home().join("server")
}

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

/// Where running mounts keep their control sockets: `$XDG_RUNTIME_DIR/bvfs` (private to the user
/// and cleared at logout), else `$XDG_DATA_HOME/bvfs/run`.
pub fn runtime_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("bvfs"),
        None => data_home().join("run"),
    }
}

/// A short stable name for a mountpoint (its absolute path hashed): the key of its state
/// directory and of its control socket.
pub fn mount_key(mountpoint: &std::path::Path) -> String {
    let key = blake3::hash(mountpoint.as_os_str().as_encoded_bytes()).to_hex();
    key[..16].to_string()
}

/// `$XDG_CONFIG_HOME/bvfs` or `~/.config/bvfs`: what the user set up (`bvfs login`).
pub fn config_home() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("bvfs");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".config/bvfs")
}

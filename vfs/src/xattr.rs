//! Files-on-demand states as extended attributes, for file managers and scripts:
//!
//! - `user.bvfs.state`: `online-only`, `partial`, `local` or `pinned`;
//! - `user.bvfs.sync`: `synced`, `pending`, `uploading`, `conflict` or `error`; on the root, the state
//!   of the whole namespace (`pending` while any change, held delete or written file waits);
//! - `user.bvfs.pin`: `1` or `0`; setting it pins (or unpins) a file or a whole tree, and new children
//!   of a pinned directory inherit the pin.
//!
//! On the mount's root, `user.bvfs.held-deletes` lists the deletes the bulk-delete brake holds (one
//! `side path` per line); setting it to `confirm` lets them through, `reject` undoes them.
//!
//! BitVault does not store other extended attributes: setting one is `ENOTSUP`.

use crate::{Errno, Vfs, VfsResult};

const STATE: &str = "user.bvfs.state";
const SYNC: &str = "user.bvfs.sync";
const PIN: &str = "user.bvfs.pin";
const HELD_DELETES: &str = "user.bvfs.held-deletes";
const ROOT_INO: u64 = 1;

/// The attributes every node has.
pub const XATTR_NAMES: [&str; 3] = [STATE, SYNC, PIN];

impl Vfs {
    /// `getxattr`.
    pub fn getxattr(&self, ino: u64, name: &str) -> VfsResult<Vec<u8>> {
        let entry = self.entry(ino)?;
        let value = match name {
            STATE => self
                .engine
                .hydration(&entry)
                .map_err(Errno::from)?
                .as_str()
                .to_string(),
            // The root speaks for the whole namespace: anything unsynced anywhere shows there.
            SYNC if ino == ROOT_INO => self
                .engine
                .unsynced()
                .map_err(Errno::from)?
                .state()
                .as_str()
                .to_string(),
            SYNC => self
                .engine
                .sync_state(&entry)
                .map_err(Errno::from)?
                .as_str()
                .to_string(),
            PIN => if entry.pinned { "1" } else { "0" }.to_string(),
            HELD_DELETES if ino == ROOT_INO => {
                let held = self.engine.held_deletes().map_err(Errno::from)?;
                held.iter()
                    .map(|(side, path)| format!("{side} {path}\n"))
                    .collect()
            }
            _ => return Err(Errno::ENODATA),
        };
        Ok(value.into_bytes())
    }

    /// `listxattr`: the names, each NUL-terminated.
    pub fn listxattr(&self, ino: u64) -> VfsResult<Vec<u8>> {
        self.entry(ino)?;
        let mut out = Vec::new();
        for name in XATTR_NAMES {
            out.extend_from_slice(name.as_bytes());
            out.push(0);
        }
        if ino == ROOT_INO {
            out.extend_from_slice(HELD_DELETES.as_bytes());
            out.push(0);
        }
        Ok(out)
    }

    /// `setxattr`.
    pub fn setxattr(&self, ino: u64, name: &str, value: &[u8]) -> VfsResult<()> {
        match name {
            PIN => {
                let pinned = match value.trim_ascii() {
                    b"1" | b"true" | b"yes" => true,
                    b"0" | b"false" | b"no" | b"" => false,
                    _ => return Err(Errno::EINVAL),
                };
                self.engine.set_pinned(ino, pinned).map_err(Errno::from)?;
                Ok(())
            }
            HELD_DELETES if ino == ROOT_INO => {
                let confirm = match value.trim_ascii() {
                    b"confirm" => true,
                    b"reject" => false,
                    _ => return Err(Errno::EINVAL),
                };
                self.engine
                    .resolve_held_deletes(confirm)
                    .map_err(Errno::from)?;
                Ok(())
            }
            STATE | SYNC => Err(Errno::EPERM),
            _ => Err(Errno::ENOTSUP),
        }
    }

    /// `removexattr`: removing the pin unpins.
    pub fn removexattr(&self, ino: u64, name: &str) -> VfsResult<()> {
        match name {
            PIN => {
                self.engine.set_pinned(ino, false).map_err(Errno::from)?;
                Ok(())
            }
            STATE | SYNC => Err(Errno::EPERM),
            _ => Err(Errno::ENODATA),
        }
    }
}

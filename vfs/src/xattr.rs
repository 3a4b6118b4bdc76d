//! Files-on-demand states as extended attributes, for file managers and scripts:
//!
//! - `user.bvfs.state`: `online-only`, `partial`, `local` or `pinned`;
//! - `user.bvfs.sync`: `synced`, `pending`, `uploading`, `conflict` or `error`; on the root, the state
//!   of the whole namespace (`pending` while any change, held delete or written file waits);
//! - `user.bvfs.pin`: `1` or `0`; setting it pins (or unpins) a file or a whole tree, and new children
//!   of a pinned directory inherit the pin.
//!
//! On the mount's root, `user.bvfs.held-deletes` lists the deletes the bulk-delete brake holds (one
//! `side path` per line, at most 64 KiB: past that a last line says how many more, and
//! `bvfs deletes` lists them all); setting it to `confirm` lets them through, `reject` undoes them.
//!
//! Any other `user.` attribute is the user's: stored with the node and synced (as Dropbox does),
//! with ext4's limits (names of at most 255 bytes, `ERANGE` beyond; values of at most 64 KiB,
//! `E2BIG` beyond; `ENOSPC` past 256 KiB for a node). Symlinks take none (`EPERM`, as Linux says
//! for `user.` attributes of symlinks). Other namespaces (`security.`, `trusted.`, `system.`) are
//! not stored: reading one is `ENODATA`, setting one `ENOTSUP`.

use bvfs_engine::model::NodeKind;
use bvfs_engine::state::local::LocalEntry;
use bvfs_proto::{MAX_XATTR_BYTES, MAX_XATTR_VALUE_BYTES, SYNCED_XATTR_PREFIX};

use crate::{Errno, Vfs, VfsResult};

/// `setxattr` flags: fail if the attribute exists / does not exist.
const XATTR_CREATE: i32 = 1;
const XATTR_REPLACE: i32 = 2;

/// Whether `name` is one of bvfs's own attributes rather than the user's.
fn is_own(name: &str) -> bool {
    name.starts_with("user.bvfs.")
}

/// Whether `name` is a user attribute that syncs.
fn is_user(name: &str) -> bool {
    name.starts_with(SYNCED_XATTR_PREFIX) && !is_own(name)
}

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
        // No other namespace is stored, so this is answered before any lookup: the kernel asks
        // for `security.capability` before every write to a file (FUSE mounts never mark an
        // inode as having no security attributes), which puts this on the write path.
        if !name.starts_with(SYNCED_XATTR_PREFIX) {
            return Err(Errno::ENODATA);
        }
        let Some(entry) = self.entry_unless_special(ino)? else {
            // This device's only: never synced, nothing to download.
            return match name {
                STATE => Ok(b"local".to_vec()),
                SYNC => Ok(b"local-only".to_vec()),
                _ => Err(Errno::ENODATA),
            };
        };
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
                held_deletes_listing(&self.engine.held_deletes().map_err(Errno::from)?)
            }
            _ if is_user(name) => {
                return entry
                    .node
                    .attrs
                    .xattrs
                    .get(name)
                    .cloned()
                    .ok_or(Errno::ENODATA);
            }
            _ => return Err(Errno::ENODATA),
        };
        Ok(value.into_bytes())
    }

    /// `listxattr`: the names, each NUL-terminated.
    pub fn listxattr(&self, ino: u64) -> VfsResult<Vec<u8>> {
        let Some(entry) = self.entry_unless_special(ino)? else {
            return Ok([STATE, SYNC]
                .iter()
                .flat_map(|name| name.bytes().chain([0]))
                .collect());
        };
        let mut out = Vec::new();
        for name in XATTR_NAMES
            .into_iter()
            .chain(entry.node.attrs.xattrs.keys().map(String::as_str))
        {
            out.extend_from_slice(name.as_bytes());
            out.push(0);
        }
        if ino == ROOT_INO {
            out.extend_from_slice(HELD_DELETES.as_bytes());
            out.push(0);
        }
        Ok(out)
    }

    /// `setxattr` (`flags`: `XATTR_CREATE`, `XATTR_REPLACE`).
    pub fn setxattr(&self, ino: u64, name: &str, value: &[u8], flags: i32) -> VfsResult<()> {
        if self.entry_unless_special(ino)?.is_none() {
            // Linux keeps no user attributes on special files either.
            return Err(Errno::EPERM);
        }
        if is_user(name) {
            return self.set_user_xattr(ino, name, Some(value), flags);
        }
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

    /// The entry of `ino`, or `None` when it is one of this device's special files (FIFO,
    /// socket, device); `ENOENT` when it is neither. One lookup for a synced node.
    fn entry_unless_special(&self, ino: u64) -> VfsResult<Option<LocalEntry>> {
        if let Some(entry) = self.engine.getattr(ino).map_err(Errno::from)? {
            return Ok(Some(entry));
        }
        match self.engine.special(ino).map_err(Errno::from)? {
            Some(_) => Ok(None),
            None => Err(Errno::ENOENT),
        }
    }

    /// Sets (`Some`) or removes (`None`) a user attribute.
    fn set_user_xattr(
        &self,
        ino: u64,
        name: &str,
        value: Option<&[u8]>,
        flags: i32,
    ) -> VfsResult<()> {
        self.writable()?;
        if name.len() > 255 {
            return Err(Errno::ERANGE);
        }
        if value.is_some_and(|v| v.len() > MAX_XATTR_VALUE_BYTES) {
            return Err(Errno::E2BIG);
        }
        let entry = self.entry(ino)?;
        if entry.node.kind == NodeKind::Symlink {
            return Err(Errno::EPERM);
        }
        let mut xattrs = entry.node.attrs.xattrs.clone();
        let exists = xattrs.contains_key(name);
        match value {
            Some(_) if flags & XATTR_CREATE != 0 && exists => return Err(Errno::EEXIST),
            Some(_) if flags & XATTR_REPLACE != 0 && !exists => return Err(Errno::ENODATA),
            None if !exists => return Err(Errno::ENODATA),
            Some(value) => {
                xattrs.insert(name.to_string(), value.to_vec());
            }
            None => {
                xattrs.remove(name);
            }
        }
        let total: usize = xattrs.iter().map(|(k, v)| k.len() + v.len()).sum();
        if total > MAX_XATTR_BYTES {
            return Err(Errno::ENOSPC);
        }
        self.engine.set_xattrs(ino, xattrs).map_err(Errno::from)?;
        Ok(())
    }

    /// `removexattr`: removing the pin unpins.
    pub fn removexattr(&self, ino: u64, name: &str) -> VfsResult<()> {
        if is_user(name) {
            return self.set_user_xattr(ino, name, None, 0);
        }
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

/// The `user.bvfs.held-deletes` value: one `side path` line per held delete, cut to fit an
/// attribute value (the kernel refuses longer ones with `E2BIG`), the last line counting the rest.
fn held_deletes_listing(held: &[(String, String)]) -> String {
    // Room for the closing line ("… and 18446744073709551615 more: bvfs deletes").
    const BUDGET: usize = MAX_XATTR_VALUE_BYTES - 64;
    let mut out = String::new();
    for (listed, (side, path)) in held.iter().enumerate() {
        let line = format!("{side} {path}\n");
        if out.len() + line.len() > BUDGET {
            out.push_str(&format!(
                "... and {} more: bvfs deletes\n",
                held.len() - listed
            ));
            break;
        }
        out.push_str(&line);
    }
    debug_assert!(out.len() <= MAX_XATTR_VALUE_BYTES);
    out
}

#[cfg(test)]
mod tests {
    use crate::{Caller, Errno};

    /// Other namespaces are answered without a lookup (the kernel asks `security.capability`
    /// before every write); user attributes still need the node.
    #[test]
    fn other_namespaces_are_enodata_and_user_attributes_need_the_node() {
        let (vfs, _dir, _runtime) = crate::testing::local_vfs();
        let (attr, fh) = vfs
            .create(1, "file", 0o644, Caller { uid: 0, gid: 0 })
            .unwrap();
        vfs.setxattr(attr.ino, "user.color", b"blue", 0).unwrap();
        assert_eq!(vfs.getxattr(attr.ino, "user.color").unwrap(), b"blue");
        for name in [
            "security.capability",
            "trusted.x",
            "system.posix_acl_access",
        ] {
            assert_eq!(vfs.getxattr(attr.ino, name), Err(Errno::ENODATA), "{name}");
        }
        assert_eq!(vfs.getxattr(attr.ino, "user.other"), Err(Errno::ENODATA));
        let missing = attr.ino + 1_000;
        assert_eq!(vfs.getxattr(missing, "user.color"), Err(Errno::ENOENT));
        assert_eq!(vfs.listxattr(missing), Err(Errno::ENOENT));
        assert_eq!(
            vfs.setxattr(missing, "user.color", b"x", 0),
            Err(Errno::ENOENT)
        );
        vfs.release(fh).unwrap();
    }

    #[test]
    fn a_long_held_deletes_listing_fits_an_attribute_value() {
        let held: Vec<(String, String)> = (0..5_000)
            .map(|i| {
                (
                    "local".to_string(),
                    format!("a/rather/long/path/to/file-{i:05}.txt"),
                )
            })
            .collect();
        let listing = super::held_deletes_listing(&held);
        assert!(listing.len() <= bvfs_proto::MAX_XATTR_VALUE_BYTES);
        let last = listing.lines().last().unwrap();
        let listed = listing.lines().count() - 1;
        assert_eq!(
            last,
            format!("... and {} more: bvfs deletes", 5_000 - listed)
        );
        let short = super::held_deletes_listing(&held[..3]);
        assert_eq!(short.lines().count(), 3);
    }
}

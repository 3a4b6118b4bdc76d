//! Local state is private (issue 14): everything `bvfs` writes (a mount's state, cache and
//! materialized copies, logs, pid files, the registry, a server's data directory) is readable by
//! its owner only, whatever the caller's umask. The mount itself lets only its owner in; its backing
//! files must not undo that.
//!
//! Two measures: the process umask is `077` before anything is created, so every new file is `0600`
//! and every new directory `0700` (SQLite's journal and WAL files included); and each directory bvfs
//! keeps state in is checked when it starts: one owned by another user is refused (it could read or
//! swap what we write), one that is too open (made by an older version, or by hand) is tightened,
//! with everything inside it, and a log line says so.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, bail};

/// Mode bits that must be clear on everything bvfs keeps: group and other.
const OPEN_BITS: u32 = 0o077;

/// Makes every file and directory this process creates from now on private (`0600`/`0700`).
pub fn private_umask() {
    // SAFETY: umask has no preconditions; it only sets the process's file creation mask.
    unsafe {
        libc::umask(OPEN_BITS as libc::mode_t);
    }
}

/// Creates `dir` (and missing parents) as private, or checks an existing one: refused if another
/// user owns it, tightened (with its contents) if group or others may enter it. `what` names it in
/// messages ("the mount's state directory").
pub fn private_dir(dir: &Path, what: &str) -> anyhow::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {what} {}", dir.display()))?;
    let meta =
        std::fs::metadata(dir).with_context(|| format!("cannot read {what} {}", dir.display()))?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        bail!(
            "{what} {} belongs to user id {}, not to you ({me}): bvfs will not keep your files where \
             another user can read or replace them. Choose another directory, or have its owner give \
             it to you (chown)",
            dir.display(),
            meta.uid()
        );
    }
    let mode = meta.mode() & 0o7777;
    if mode & OPEN_BITS != 0 {
        let changed = tighten_tree(dir)
            .with_context(|| format!("cannot restrict the permissions of {}", dir.display()))?;
        tracing::warn!(
            "{what} {} was open to other users (mode {mode:04o}); made it private (0700, files 0600; \
             {changed} paths changed)",
            dir.display()
        );
    }
    Ok(())
}

/// Clears the group and other bits of `root` and of everything under it (symbolic links are left
/// alone: their mode means nothing, and they are never followed). Returns how many paths changed.
fn tighten_tree(root: &Path) -> std::io::Result<u64> {
    let mut changed = 0;
    let mut stack = vec![root.to_owned()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.file_type().is_symlink() {
            continue;
        }
        let mode = meta.mode() & 0o7777;
        if mode & OPEN_BITS != 0 {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & !OPEN_BITS))?;
            changed += 1;
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                stack.push(entry?.path());
            }
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn a_new_directory_is_private_and_an_open_one_is_tightened_with_its_contents() {
        let dir = tempfile::tempdir().unwrap();
        let fresh = dir.path().join("a/b/state");
        private_dir(&fresh, "the state directory").unwrap();
        assert_eq!(mode(&fresh) & OPEN_BITS, 0);

        let open = dir.path().join("open");
        std::fs::create_dir_all(open.join("sub")).unwrap();
        std::fs::write(open.join("sub/file"), b"secret").unwrap();
        std::fs::write(open.join("script"), b"#!/bin/sh").unwrap();
        for (path, m) in [
            (open.clone(), 0o755),
            (open.join("sub"), 0o775),
            (open.join("sub/file"), 0o644),
            (open.join("script"), 0o755),
        ] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(m)).unwrap();
        }
        std::os::unix::fs::symlink("/etc/passwd", open.join("link")).unwrap();
        private_dir(&open, "the state directory").unwrap();
        assert_eq!(mode(&open), 0o700);
        assert_eq!(mode(&open.join("sub")), 0o700);
        assert_eq!(mode(&open.join("sub/file")), 0o600);
        assert_eq!(mode(&open.join("script")), 0o700, "owner bits are kept");
        assert_eq!(
            mode(Path::new("/etc/passwd")) & 0o044,
            0o044,
            "links are not followed"
        );
    }

    #[test]
    fn a_directory_of_another_user_is_refused() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return; // Only root can give a directory away to set this up.
        }
        let dir = tempfile::tempdir().unwrap();
        let theirs = dir.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
        let error = private_dir(&theirs, "the cache directory")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("belongs to user id 65534") && error.contains("Choose another"),
            "{error}"
        );
    }
}

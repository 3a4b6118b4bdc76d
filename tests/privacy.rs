//! Local state is private regardless of the umask (issue 14): a server and a mount started under
//! umask 000 write nothing that group or others can read or enter; a state directory left open by
//! hand (or an older version) is tightened with a log line; a cache directory owned by another user
//! is refused.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::*;

/// `bvfs` with umask 000 and its data home (registry, default server data) under `home`.
fn open_bvfs(home: &Path) -> Command {
    let mut command = bvfs();
    command.env("XDG_DATA_HOME", home).env("RUST_LOG", "info");
    // SAFETY: umask is async-signal-safe and has no preconditions.
    unsafe {
        command.pre_exec(|| {
            libc::umask(0);
            Ok(())
        });
    }
    command
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Every path under `root` (itself included) that group or others may read, write or enter.
fn open_paths(root: &Path) -> Vec<(PathBuf, u32)> {
    let mut open = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(path) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue; // Removed meanwhile (a temporary file).
        };
        if meta.file_type().is_symlink() {
            continue;
        }
        if meta.mode() & 0o077 != 0 {
            open.push((path.clone(), meta.mode() & 0o7777));
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                stack.push(entry.unwrap().path());
            }
        }
    }
    open
}

fn count(root: &Path) -> usize {
    let (files, _) = dir_usage(root);
    files
}

#[test]
fn a_server_and_a_mount_under_umask_000_write_only_private_files() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let data = dir.path().join("server");
    let state = dir.path().join("state");
    let mountpoint = dir.path().join("mnt");
    let out = open_bvfs(&home)
        .args(["admin", "add-user", "--data"])
        .arg(&data)
        .args(["alice", "--device", "laptop"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let mut server = open_bvfs(&home)
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(&data)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let url = {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(server.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        line.split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap()
            .to_string()
    };
    let out = open_bvfs(&home)
        .args(["mount", "--server", &url, "--token", &token, "--data"])
        .arg(&state)
        .arg(&mountpoint)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    // Files written, read back and synced: copies, chunks, journal and logs all exist now.
    std::fs::create_dir(mountpoint.join("docs")).unwrap();
    for i in 0..20 {
        std::fs::write(
            mountpoint.join(format!("docs/note-{i}.txt")),
            format!("private note {i}\n").repeat(20_000),
        )
        .unwrap();
    }
    eventually(60, "the notes reach the server", || {
        mounts::xattr(&mountpoint, "user.bvfs.sync") == "synced"
    });
    let out = open_bvfs(&home)
        .arg("umount")
        .arg(&mountpoint)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    // SAFETY: kill with SIGTERM; the server stops gracefully.
    unsafe {
        libc::kill(server.id() as i32, libc::SIGTERM);
    }
    assert!(server.wait().unwrap().success());

    for (what, root) in [
        ("server data", &data),
        ("mount state", &state),
        ("data home", &home),
    ] {
        assert!(root.exists(), "{what} exists");
        let open = open_paths(root);
        assert!(open.is_empty(), "{what}: open to others: {open:?}");
    }
    assert!(
        count(&data) > 0 && count(&state) > 0,
        "there were files to check"
    );
}

#[test]
fn an_open_state_directory_is_tightened_and_another_users_cache_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let data = dir.path().join("server");
    let token = add_user(&data, "alice", "laptop");
    let server = ServerProcess::start(&data, &[]);
    let state = dir.path().join("state");
    std::fs::create_dir_all(state.join("old")).unwrap();
    std::fs::write(state.join("old/copy"), b"an older version's file").unwrap();
    for (path, mode) in [
        (state.clone(), 0o755),
        (state.join("old"), 0o777),
        (state.join("old/copy"), 0o644),
    ] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    let mountpoint = dir.path().join("mnt");
    let mounted = open_bvfs(&home)
        .args([
            "mount",
            "--server",
            &server.url,
            "--token",
            &token,
            "--data",
        ])
        .arg(&state)
        .arg(&mountpoint)
        .output()
        .unwrap();
    assert!(mounted.status.success(), "{}", text(&mounted));
    let open = open_paths(&state);
    let out = open_bvfs(&home)
        .arg("umount")
        .arg(&mountpoint)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(open.is_empty(), "open to others after the mount: {open:?}");
    let said = text(&mounted);
    assert!(
        said.contains("made it private"),
        "a log line says the directory was tightened: {said}"
    );

    // Another user's cache directory: refused before anything is mounted or written.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let theirs = dir.path().join("their-cache");
        std::fs::create_dir(&theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
        let mountpoint = dir.path().join("refused");
        let out = open_bvfs(&home)
            .args([
                "mount",
                "--server",
                &server.url,
                "--token",
                &token,
                "--data",
            ])
            .arg(&state)
            .arg("--cache-dir")
            .arg(&theirs)
            .arg(&mountpoint)
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(
            text(&out).contains("belongs to user id 65534"),
            "the refusal says why: {}",
            text(&out)
        );
        assert_eq!(count(&theirs), 0, "nothing was written there");
    }
}

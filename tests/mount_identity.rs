//! A mount's identity and its edges (issue 15, items 1 and 8), on real mounts against real `bvfs serve`
//! processes: a folder's state is bound to one namespace and refuses another; a first mount fails on
//! a rejected token or an unreachable server, a later one works offline; `bvfs umount` says what is
//! left unsynced and exits 2 unless `--force`; the root's `user.bvfs.sync` covers the namespace; and
//! `df -i` never shows negative counts.

mod common;

use std::fs;
use std::path::Path;
use std::process::Output;

use common::mounts::*;
use common::*;

/// Runs `bvfs mount` against `url` with `token`, the state in `data`.
fn mount_with(url: &str, token: &str, data: &Path, mountpoint: &Path) -> Output {
    bvfs()
        .args(["mount", "--server", url, "--token", token, "--data"])
        .arg(data)
        .arg(mountpoint)
        .env("RUST_LOG", "info")
        .output()
        .unwrap()
}

fn umount(mountpoint: &Path, extra: &[&str]) -> Output {
    bvfs()
        .arg("umount")
        .args(extra)
        .arg(mountpoint)
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn is_mounted(mountpoint: &Path) -> bool {
    fs::read_to_string("/proc/self/mounts").is_ok_and(|mounts| {
        mounts
            .lines()
            .any(|l| l.split_whitespace().nth(1) == mountpoint.to_str())
    })
}

#[test]
fn a_folder_bound_to_one_namespace_refuses_another_and_keeps_its_files() {
    let s = setup();
    let a = s.mount(0, &[]);
    fs::write(a.path("keep.txt"), b"precious").unwrap();
    eventually(30, "keep.txt reaches the server", || {
        xattr(&a.path("keep.txt"), "user.bvfs.sync") == "synced"
    });
    let out = umount(&a.mountpoint, &[]);
    assert!(out.status.success(), "umount: {}", text(&out));

    // Another server (another namespace, although the account has the same name and device) on the
    // same folder and state: refused, nothing touched.
    let other = tempfile::tempdir().unwrap();
    let other_token = add_user(&other.path().join("server"), "alice", "laptop");
    let other_server = ServerProcess::start(&other.path().join("server"), &[]);
    let out = mount_with(&other_server.url, &other_token, &a.data, &a.mountpoint);
    assert!(
        !out.status.success(),
        "the mount must refuse: {}",
        text(&out)
    );
    assert!(
        text(&out).contains("belongs to another namespace") && text(&out).contains("--data"),
        "the message says why and what to do: {}",
        text(&out)
    );
    assert!(!is_mounted(&a.mountpoint));

    // The first server's namespace mounts again, with its file.
    let out = mount_with(&s.server.url, &s.tokens[0], &a.data, &a.mountpoint);
    assert!(out.status.success(), "remount: {}", text(&out));
    assert_eq!(fs::read(a.path("keep.txt")).unwrap(), b"precious");
    assert_eq!(xattr(&a.path("keep.txt"), "user.bvfs.sync"), "synced");
    // (Dropping `a` unmounts it.)
}

#[test]
fn a_first_mount_fails_on_a_rejected_token_or_an_unreachable_server() {
    let s = setup();
    let dirs = tempfile::tempdir().unwrap();
    let mountpoint = dirs.path().join("mnt");

    let out = mount_with(
        &s.server.url,
        "not-a-token",
        &dirs.path().join("state"),
        &mountpoint,
    );
    assert!(
        !out.status.success(),
        "a bad token must fail: {}",
        text(&out)
    );
    assert!(
        text(&out).contains("does not accept this token") && text(&out).contains("add-user"),
        "{}",
        text(&out)
    );
    assert!(!is_mounted(&mountpoint));

    // Port 9 (discard) on loopback: nothing listens there.
    let out = mount_with(
        "http://127.0.0.1:9",
        &s.tokens[0],
        &dirs.path().join("state"),
        &mountpoint,
    );
    assert!(
        !out.status.success(),
        "an unreachable first server must fail: {}",
        text(&out)
    );
    assert!(
        text(&out).contains("cannot reach the server"),
        "{}",
        text(&out)
    );
    assert!(!is_mounted(&mountpoint));

    // Once bound, the mount works offline.
    let mut a = s.mount(0, &[]);
    fs::write(a.path("f"), b"online").unwrap();
    eventually(30, "f reaches the server", || {
        xattr(&a.path("f"), "user.bvfs.sync") == "synced"
    });
    let url = s.server.url.clone();
    let mut server = s.server;
    server.kill9();
    a.kill9_and_remount(&url, &s.tokens[0], "laptop");
    assert_eq!(fs::read(a.path("f")).unwrap(), b"online");
}

#[test]
fn umount_says_what_is_unsynced_and_fails_unless_forced() {
    let mut s = setup();
    let a = s.mount(0, &[]);
    // df -i: used = files - ffree must not be negative.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let c = std::ffi::CString::new(a.mountpoint.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    assert!(
        st.f_files >= st.f_ffree,
        "df -i would show negative used inodes: files {} < free {}",
        st.f_files,
        st.f_ffree
    );
    assert_eq!(xattr(&a.mountpoint, "user.bvfs.sync"), "synced");

    s.server.kill9();
    fs::create_dir(a.path("deep")).unwrap();
    fs::write(
        a.path("deep/offline.txt"),
        b"written while the server is down",
    )
    .unwrap();
    eventually(10, "the root shows the namespace pending", || {
        xattr(&a.mountpoint, "user.bvfs.sync") == "pending"
    });
    let out = umount(&a.mountpoint, &[]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "unsynced changes: exit 2: {}",
        text(&out)
    );
    assert!(
        text(&out).contains("not everything reached the server"),
        "{}",
        text(&out)
    );
    assert!(!is_mounted(&a.mountpoint));

    // The server returns; the next mount uploads them, and a clean umount says so.
    s.server.kill9_and_restart();
    let out = mount_with(&s.server.url, &s.tokens[0], &a.data, &a.mountpoint);
    assert!(out.status.success(), "remount: {}", text(&out));
    eventually(30, "the namespace is synced", || {
        xattr(&a.mountpoint, "user.bvfs.sync") == "synced"
    });
    let out = umount(&a.mountpoint, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("everything is synced"),
        "{}",
        text(&out)
    );

    // --force: exit 0 even with changes left.
    let out = mount_with(&s.server.url, &s.tokens[0], &a.data, &a.mountpoint);
    assert!(out.status.success(), "remount: {}", text(&out));
    s.server.kill9();
    fs::write(a.path("later.txt"), b"also offline").unwrap();
    let out = umount(&a.mountpoint, &["--force"]);
    assert!(out.status.success(), "--force: {}", text(&out));
    assert!(
        text(&out).contains("not everything reached the server"),
        "{}",
        text(&out)
    );
}

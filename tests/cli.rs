//! The `bvfs` command line: help that teaches, data as JSON, clear errors with exit codes.

mod common;

use common::bvfs;

fn run(args: &[&str]) -> (i32, String, String) {
    let out = bvfs().args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Unmounts a mount started outside `MountProcess` (by `bvfs mount` after `login`, by `mount.bvfs`,
/// from a configuration file) when the test ends, however it ends.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let ok = bvfs()
            .args(["umount", "--lazy"])
            .arg(&self.0)
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            let c = std::ffi::CString::new(self.0.as_os_str().as_encoded_bytes()).unwrap();
            unsafe {
                libc::umount2(c.as_ptr(), libc::MNT_DETACH);
            }
        }
    }
}

#[test]
fn help_lists_every_command() {
    let (code, out, _) = run(&["--help"]);
    assert_eq!(code, 0);
    for command in [
        "mount",
        "umount",
        "serve",
        "admin",
        "hash",
        "status",
        "queue",
        "pin",
        "unpin",
        "hydrate",
        "evict",
        "conflicts",
        "deletes",
        "history",
        "restore",
        "trash",
        "undelete",
        "login",
        "config",
        "completions",
        "man",
    ] {
        assert!(
            out.contains(command),
            "--help does not mention {command}:\n{out}"
        );
    }
    let (code, out, _) = run(&["mount", "--help"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("user.bvfs.pin") && out.contains("--cache-size"),
        "{out}"
    );
}

#[test]
fn usage_errors_exit_2_and_runtime_errors_exit_1() {
    let (code, _, err) = run(&["mount"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = run(&["mount", "--cache-size", "lots", "/tmp/x"]);
    assert_eq!(code, 2);
    assert!(err.contains("500M or 10G"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("file"), b"x").unwrap();
    let (code, _, err) = run(&[
        "mount",
        "--foreground",
        "--data",
        "/nonexistent/state",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("not empty"), "{err}");
    let (code, _, err) = run(&["umount", dir.path().to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("is not mounted"), "{err}");
}

#[test]
fn hash_matches_b3sum_and_speaks_json() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.bin");
    let data: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&path, &data).unwrap();
    let (code, out, _) = run(&["hash", path.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert_eq!(
        out.split_whitespace().next().unwrap(),
        blake3::hash(&data).to_hex().as_str()
    );
    if let Ok(b3) = std::process::Command::new("b3sum").arg(&path).output() {
        assert_eq!(
            String::from_utf8_lossy(&b3.stdout)
                .split_whitespace()
                .next(),
            out.split_whitespace().next()
        );
    }
    let (code, out, _) = run(&["hash", "--json", "--chunks", path.to_str().unwrap()]);
    assert_eq!(code, 0);
    let value: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(value["size"], 300_000);
    let total: u64 = value["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["len"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 300_000);
    let (code, _, err) = run(&["hash", "/nonexistent/file"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot open /nonexistent/file"), "{err}");
}

// ----- the control channel: status, pin/unpin/hydrate/evict, conflicts, deletes -----

/// Runs `bvfs ARGS` in `dir` as a shell would; returns (exit code, stdout, stderr).
fn run_in(dir: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    // As a shell runs it: `$PWD` says where we are.
    let out = bvfs()
        .args(args)
        .current_dir(dir)
        .env("PWD", dir)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `bvfs ARGS` in `dir`, expects success and JSON on stdout.
fn json_in(dir: &std::path::Path, args: &[&str]) -> serde_json::Value {
    let (code, out, err) = run_in(dir, args);
    assert_eq!(code, 0, "bvfs {args:?} failed:\n{out}{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("bvfs {args:?}: not JSON ({e}):\n{out}"))
}

/// Where the daemon of `mountpoint` listens (as `src/control` and `src/paths.rs` say).
fn socket_of(mountpoint: &std::path::Path) -> std::path::PathBuf {
    let dir = match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => std::path::PathBuf::from(dir).join("bvfs"),
        None => match std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
            Some(dir) => std::path::PathBuf::from(dir).join("bvfs/run"),
            None => std::path::PathBuf::from(std::env::var_os("HOME").unwrap())
                .join(".local/share/bvfs/run"),
        },
    };
    let key = blake3::hash(mountpoint.as_os_str().as_encoded_bytes()).to_hex();
    dir.join(format!("{}.sock", &key[..16]))
}

#[test]
fn control_commands_outside_a_mount_exit_3_and_bad_flags_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        vec!["status"],
        vec!["-vv", "status"],
        vec!["status", "--json", "some/file"],
        vec!["pin", "file"],
        vec!["hydrate", "file"],
        vec!["evict", "file"],
        vec!["conflicts"],
        vec!["deletes"],
        vec!["history", "file"],
        vec!["restore", "file"],
        vec!["trash"],
        vec!["undelete", "file"],
        vec!["queue"],
    ] {
        let (code, out, err) = run_in(dir.path(), &args);
        assert_eq!(code, 3, "bvfs {args:?}: {out}{err}");
        assert!(
            err.contains("is not inside a bvfs mount") && err.contains("--mount"),
            "bvfs {args:?} must say what to do: {err}"
        );
        assert!(out.is_empty(), "{out}");
    }
    for args in [
        vec!["pin"],
        vec!["evict", "--bogus", "x"],
        vec!["deletes", "--confirm", "--restore"],
        vec!["status", "--json=yes"],
    ] {
        let (code, _, err) = run_in(dir.path(), &args);
        assert_eq!(code, 2, "bvfs {args:?}: {err}");
    }
    for command in [
        "status",
        "pin",
        "unpin",
        "hydrate",
        "evict",
        "conflicts",
        "deletes",
        "history",
        "restore",
        "trash",
        "undelete",
        "queue",
    ] {
        let (code, out, _) = run(&[command, "--help"]);
        assert_eq!(code, 0);
        assert!(
            out.contains("Examples:\n  bvfs ") && out.contains("3 no running bvfs mount"),
            "bvfs {command} --help needs an example and the exit codes:\n{out}"
        );
    }
}

#[test]
fn status_hydrate_pin_evict_and_unpin_on_a_real_mount() {
    use common::mounts::{random_bytes, setup, xattr};
    use std::fs;
    let mut s = setup();
    let a = s.mount(0, &[]);
    fs::create_dir(a.path("pinme")).unwrap();
    fs::write(a.path("big.bin"), random_bytes(3 << 20, 1)).unwrap();
    fs::write(a.path("pinme/x.bin"), random_bytes(1 << 20, 2)).unwrap();
    fs::write(a.path("pinme/y.bin"), random_bytes(1 << 20, 3)).unwrap();
    let b = s.mount(1, &[]);
    common::eventually(30, "B lists everything", || {
        fs::metadata(b.path("pinme/x.bin")).is_ok_and(|m| m.len() == 1 << 20)
            && fs::metadata(b.path("pinme/y.bin")).is_ok_and(|m| m.len() == 1 << 20)
            && fs::metadata(b.path("big.bin")).is_ok_and(|m| m.len() == 3 << 20)
    });

    // The mount's summary, from its root and from a directory inside it.
    let status = json_in(&b.mountpoint, &["status", "--json"]);
    let mount = &status["mount"];
    assert_eq!(
        mount["mountpoint"],
        b.mountpoint.to_str().unwrap(),
        "{status}"
    );
    assert_eq!(mount["server"], s.server.url.as_str(), "{status}");
    assert!(mount["cache"]["limit_bytes"].as_u64().unwrap() > 0);
    assert_eq!(mount["conflicts"], 0);
    assert_eq!(mount["held_deletes"], 0);
    assert_eq!(mount["failing"], serde_json::json!([]));
    assert!(status["paths"].as_array().unwrap().is_empty());
    let inside = json_in(&b.path("pinme"), &["status", "--json", "x.bin"]);
    assert_eq!(inside["mount"]["mountpoint"], mount["mountpoint"]);
    let x = &inside["paths"][0];
    assert_eq!(x["path"], "pinme/x.bin");
    assert_eq!(x["kind"], "file");
    assert_eq!(x["size"], 1 << 20);
    assert_eq!(x["state"], "online-only", "{inside}");
    assert_eq!(x["state"], xattr(&b.path("pinme/x.bin"), "user.bvfs.state"));
    assert_eq!(x["sync"], xattr(&b.path("pinme/x.bin"), "user.bvfs.sync"));
    let (code, out, _) = run_in(&b.mountpoint, &["status", "big.bin"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("server:") && out.contains("big.bin: file, 3.00 MiB, online-only"),
        "{out}"
    );
    let (code, _, err) = run_in(&b.mountpoint, &["status", "missing.txt"]);
    assert_eq!(code, 1);
    assert!(err.contains("missing.txt does not exist"), "{err}");

    // Hydrate: every byte fetched, with plain progress lines (stderr is not a terminal here).
    let (code, out, err) = run_in(&b.mountpoint, &["hydrate", "--json", "big.bin"]);
    assert_eq!(code, 0, "{out}{err}");
    let hydrated: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(hydrated["fetched_files"], 1);
    assert_eq!(hydrated["fetched_bytes"], 3 << 20);
    assert!(err.contains("hydrate 1/1 files"), "{err}");
    assert_eq!(xattr(&b.path("big.bin"), "user.bvfs.state"), "local");
    let again = json_in(&b.mountpoint, &["hydrate", "--json", "big.bin"]);
    assert_eq!(again["fetched_bytes"], 0, "nothing left to fetch");

    // Pin a directory by its absolute path, from outside the mount: it is local when pin returns.
    let pinned = json_in(
        std::path::Path::new("/"),
        &["pin", "--json", b.path("pinme").to_str().unwrap()],
    );
    assert_eq!(pinned["pinned"], true);
    assert_eq!(pinned["changed"], 3, "the directory and its two files");
    assert_eq!(pinned["fetched"]["fetched_bytes"], 2 << 20);
    assert_eq!(xattr(&b.path("pinme/x.bin"), "user.bvfs.state"), "pinned");

    // Evict on A, where big.bin was written (a materialized copy) once it is synced: the space is
    // freed, the file is still listed, and reading it downloads it again.
    common::eventually(30, "A is synced", || {
        json_in(&a.mountpoint, &["status", "--json"])["mount"]["sync"] == "synced"
    });
    let (files_before, bytes_before) = common::dir_usage(&a.data.join("files"));
    let evicted = json_in(&a.mountpoint, &["evict", "--json", "big.bin"]);
    assert_eq!(evicted["evicted_files"], 1, "{evicted}");
    assert!(
        evicted["freed_bytes"].as_u64().unwrap() >= 3 << 20,
        "{evicted}"
    );
    assert_eq!(evicted["refused_total"], 0);
    let (files_after, bytes_after) = common::dir_usage(&a.data.join("files"));
    assert!(
        files_after < files_before && bytes_after + (3 << 20) <= bytes_before,
        "the copy is gone: {files_before} files/{bytes_before} bytes before, {files_after}/{bytes_after} after"
    );
    assert_eq!(fs::metadata(a.path("big.bin")).unwrap().len(), 3 << 20);
    assert!(
        fs::read_dir(&a.mountpoint)
            .unwrap()
            .any(|e| e.unwrap().file_name() == "big.bin")
    );
    assert_eq!(xattr(&a.path("big.bin"), "user.bvfs.state"), "online-only");
    assert_eq!(
        fs::read(a.path("big.bin")).unwrap(),
        random_bytes(3 << 20, 1)
    );

    // With the server gone: the pinned files read in full; evicting a pinned file or content the
    // server does not have is refused, with why.
    s.server.terminate();
    assert_eq!(
        fs::read(b.path("pinme/x.bin")).unwrap(),
        random_bytes(1 << 20, 2)
    );
    assert_eq!(
        fs::read(b.path("pinme/y.bin")).unwrap(),
        random_bytes(1 << 20, 3)
    );
    let (code, _, err) = run_in(&b.mountpoint, &["evict", "pinme/x.bin"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("it is pinned") && err.contains("unpin it first"),
        "{err}"
    );
    fs::write(a.path("offline.txt"), b"only here").unwrap();
    let (code, out, err) = run_in(&a.mountpoint, &["evict", "--json", "offline.txt"]);
    assert_eq!(code, 1, "{out}{err}");
    let refused: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(refused["refused_total"], 1);
    assert!(
        refused["refused"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("has not reached the server"),
        "{refused}"
    );
    assert_eq!(fs::read(a.path("offline.txt")).unwrap(), b"only here");
    let status = json_in(&a.mountpoint, &["status", "--json"]);
    assert!(
        status["mount"]["pending_uploads"]["files"]
            .as_u64()
            .unwrap()
            >= 1,
        "{status}"
    );
    let queue = json_in(&a.mountpoint, &["queue", "--json"]);
    let waiting = queue["uploads"].as_array().unwrap();
    assert!(
        waiting
            .iter()
            .any(|u| u["path"] == "offline.txt" && u["size"] == 9 && u["state"] == "waiting"),
        "{queue}"
    );
    assert_eq!(queue["uploads_total"]["files"], waiting.len());
    let (code, out, _) = run_in(&a.mountpoint, &["queue"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("waiting") && out.contains("offline.txt"),
        "{out}"
    );

    // Unpin: the pin goes, the bytes stay cached until evicted.
    let unpinned = json_in(&b.mountpoint, &["unpin", "--json", "pinme"]);
    assert_eq!(unpinned["pinned"], false);
    assert_eq!(unpinned["changed"], 3);
    assert_eq!(xattr(&b.path("pinme/x.bin"), "user.bvfs.pin"), "0");
    assert_eq!(xattr(&b.path("pinme/x.bin"), "user.bvfs.state"), "local");
}

#[test]
fn conflicts_are_listed_and_held_deletes_are_restored_or_confirmed() {
    use common::mounts::{setup, sh};
    use std::fs;
    let mut s = setup();
    let a = s.mount(0, &[]);
    let b = s.mount(1, &[]);
    let none = json_in(&a.mountpoint, &["conflicts", "--json"]);
    assert_eq!(none["conflicts"], serde_json::json!([]));
    let (code, out, _) = run_in(&a.mountpoint, &["conflicts"]);
    assert_eq!((code, out.trim()), (0, "no conflicts"));

    // An edit on each device while the server is down: one of them becomes a conflicted copy.
    fs::write(a.path("shared.txt"), b"base").unwrap();
    common::eventually(20, "B has the file", || {
        fs::read(b.path("shared.txt")).is_ok_and(|d| d == b"base")
    });
    let listen = s.server.url.trim_start_matches("http://").to_string();
    s.server.terminate();
    fs::write(a.path("shared.txt"), b"laptop version").unwrap();
    fs::write(b.path("shared.txt"), b"desktop version").unwrap();
    let data = s.server.data.clone();
    s.server = common::ServerProcess::start(&data, &["--listen", &listen]);
    let listed = |m: &common::MountProcess| -> Vec<serde_json::Value> {
        json_in(&m.mountpoint, &["conflicts", "--json"])["conflicts"]
            .as_array()
            .unwrap()
            .clone()
    };
    common::eventually(60, "one device logs the conflict", || {
        listed(&a).len() + listed(&b).len() == 1
    });
    let conflict = listed(&a).into_iter().chain(listed(&b)).next().unwrap();
    assert_eq!(conflict["original"], "shared.txt", "{conflict}");
    assert!(
        conflict["copy"]
            .as_str()
            .unwrap()
            .contains("conflicted copy"),
        "{conflict}"
    );
    assert!(
        conflict["time"].as_str().unwrap().ends_with('Z'),
        "{conflict}"
    );
    assert!(!conflict["description"].as_str().unwrap().is_empty());
    let device = conflict["device"].as_str().unwrap();
    assert!(
        device == "laptop" || device == "desktop",
        "the device whose version became the copy: {conflict}"
    );

    // A bulk delete on A is held: listed, restored, then deleted again and confirmed.
    sh(
        &a.mountpoint,
        "mkdir bulk && for i in $(seq 1 20); do echo $i > bulk/f$i.txt; done",
    );
    common::eventually(30, "B has the tree", || {
        fs::read_dir(b.path("bulk")).is_ok_and(|d| d.count() == 20)
    });
    sh(&a.mountpoint, "rm -r bulk");
    let held = |m: &common::MountProcess| json_in(&m.mountpoint, &["deletes", "--json"]);
    common::eventually(30, "A holds the deletes", || {
        held(&a)["held_total"].as_u64() == Some(21)
    });
    let list = held(&a);
    assert_eq!(list["action"], "list");
    assert!(
        list["held"]
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["side"] == "remote" && h["path"].as_str().unwrap().starts_with("bulk")),
        "{list}"
    );
    assert_eq!(
        json_in(&a.mountpoint, &["status", "--json"])["mount"]["held_deletes"],
        21
    );
    let (code, out, _) = run_in(&a.mountpoint, &["deletes"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("21 held deletes") && out.contains("--confirm"),
        "{out}"
    );
    let restored = json_in(&a.mountpoint, &["deletes", "--restore", "--json"]);
    assert_eq!(restored["resolved"], 21);
    common::eventually(30, "the tree is back on A", || {
        fs::read(a.path("bulk/f7.txt")).is_ok_and(|d| d == b"7\n")
    });
    assert!(b.path("bulk/f7.txt").exists(), "B never lost it");

    sh(&a.mountpoint, "rm -r bulk");
    common::eventually(30, "A holds the deletes again", || {
        held(&a)["held_total"].as_u64() == Some(21)
    });
    let (code, out, _) = run_in(&a.mountpoint, &["deletes", "--confirm"]);
    assert_eq!((code, out.trim()), (0, "confirmed 21 deletes"));
    common::eventually(30, "B sees the removal", || !b.path("bulk").exists());
    assert_eq!(held(&a)["held_total"], 0);
}

#[test]
fn a_dead_daemon_exits_3_and_bad_requests_never_stop_the_mount() {
    use common::mounts::setup;
    use std::io::{BufRead, BufReader, Write};
    let s = setup();
    let mut a = s.mount(0, &[]);
    std::fs::write(a.path("file.txt"), b"hello").unwrap();
    let socket = socket_of(&a.mountpoint);
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&socket).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the control socket is private");

    // Garbage, an unknown request, and a request over the 64 KiB bound: each gets an error line.
    let ask = |payload: &[u8]| -> String {
        let mut stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        stream.write_all(payload).unwrap();
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).unwrap();
        line
    };
    assert!(ask(b"not json\n").contains("\"error\""));
    assert!(ask(b"{\"op\":\"format-disk\"}\n").contains("not a request"));
    let mut huge = vec![b'x'; 70 * 1024];
    huge.push(b'\n');
    assert!(ask(&huge).contains("longer than 65536 bytes"));
    assert_eq!(std::fs::read(a.path("file.txt")).unwrap(), b"hello");
    let (code, _, err) = run_in(&a.mountpoint, &["status"]);
    assert_eq!(code, 0, "{err}");

    // The daemon is killed: the CLI says so (exit 3) and how to recover; a remount serves again.
    unsafe {
        libc::kill(a.pid, libc::SIGKILL);
    }
    common::eventually(
        10,
        "the daemon is gone",
        || unsafe { libc::kill(a.pid, 0) } != 0,
    );
    let (code, _, err) = run_in(
        std::path::Path::new("/"),
        &["status", a.path("file.txt").to_str().unwrap()],
    );
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("is not running") && err.contains("bvfs umount"),
        "{err}"
    );
    let (code, _, err) = run_in(
        std::path::Path::new("/"),
        &["deletes", "--mount", a.mountpoint.to_str().unwrap()],
    );
    assert_eq!(code, 3, "{err}");
    a.kill9_and_remount(&s.server.url, &s.tokens[0], "laptop");
    let status = json_in(&a.mountpoint, &["status", "--json", "file.txt"]);
    assert_eq!(status["paths"][0]["size"], 5);
}

#[test]
fn history_restore_trash_and_undelete_reach_both_devices() {
    use common::mounts::setup;
    use std::fs;
    let mut s = setup();
    let a = s.mount(0, &[]);
    let b = s.mount(1, &[]);
    let synced = |m: &common::MountProcess| {
        json_in(&m.mountpoint, &["status", "--json"])["mount"]["sync"] == "synced"
    };
    fs::create_dir(a.path("sub")).unwrap();
    fs::write(a.path("sub/inner.txt"), b"inner").unwrap();
    fs::write(a.path("gone.txt"), b"bring me back").unwrap();
    fs::write(a.path("f.txt"), b"version one").unwrap();
    common::eventually(30, "A synced the first version", || synced(&a));
    fs::write(a.path("f.txt"), b"version two").unwrap();
    common::eventually(30, "B has the second version", || {
        fs::read(b.path("f.txt")).is_ok_and(|d| d == b"version two")
    });

    // History: newest first, with device, size and content hash.
    let history = json_in(&a.mountpoint, &["history", "--json", "f.txt"]);
    let versions = history["versions"].as_array().unwrap();
    let hash = |data: &[u8]| blake3::hash(data).to_hex().to_string();
    assert_eq!(
        versions[0]["hash"],
        hash(b"version two").as_str(),
        "{history}"
    );
    assert_eq!(versions[0]["device"], "laptop");
    assert_eq!(versions[0]["size"], 11);
    let first = versions
        .iter()
        .find(|v| v["hash"] == hash(b"version one").as_str())
        .unwrap_or_else(|| panic!("no first version in {history}"));
    let second = versions[0]["version"].to_string();
    let (code, out, _) = run_in(&b.mountpoint, &["history", "f.txt"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("laptop") && out.contains(&hash(b"version two")[..16]),
        "{out}"
    );

    // Restore (the newest version with other content, by default) reaches both devices.
    let restored = json_in(&b.mountpoint, &["restore", "--json", "f.txt"]);
    assert_eq!(restored["version"], first["version"], "{restored}");
    common::eventually(30, "both devices have the first version again", || {
        fs::read(a.path("f.txt")).is_ok_and(|d| d == b"version one")
            && fs::read(b.path("f.txt")).is_ok_and(|d| d == b"version one")
    });
    let history = json_in(&a.mountpoint, &["history", "--json", "f.txt"]);
    assert_eq!(
        history["versions"][0]["hash"],
        hash(b"version one").as_str()
    );
    // --as: that version as a new file beside it; the file itself stays as it is.
    let copied = json_in(
        &a.mountpoint,
        &[
            "restore",
            "--json",
            "f.txt",
            "--version",
            &second,
            "--as",
            "copy.txt",
        ],
    );
    assert_eq!(copied["as_path"], "copy.txt", "{copied}");
    common::eventually(30, "both devices have the copy", || {
        fs::read(a.path("copy.txt")).is_ok_and(|d| d == b"version two")
            && fs::read(b.path("copy.txt")).is_ok_and(|d| d == b"version two")
    });
    assert_eq!(fs::read(a.path("f.txt")).unwrap(), b"version one");
    let (code, _, err) = run_in(
        &a.mountpoint,
        &["restore", "f.txt", "--version", &second, "--as", "copy.txt"],
    );
    assert_eq!(code, 1);
    assert!(err.contains("copy.txt exists"), "{err}");
    let (code, _, err) = run_in(&a.mountpoint, &["restore", "f.txt", "--version", "999999"]);
    assert_eq!(code, 1);
    assert!(err.contains("no version 999999"), "{err}");

    // Trash lists what was deleted (all of it, or under a directory); undelete brings it back.
    fs::remove_file(a.path("gone.txt")).unwrap();
    fs::remove_file(a.path("sub/inner.txt")).unwrap();
    let trash = |args: &[&str]| {
        json_in(&b.mountpoint, args)["deleted"]
            .as_array()
            .unwrap()
            .clone()
    };
    common::eventually(30, "the deletes reach the server", || {
        trash(&["trash", "--json"]).len() == 2
    });
    let all = trash(&["trash", "--json"]);
    assert!(
        all.iter()
            .any(|d| d["path"] == "gone.txt" && d["device"] == "laptop"),
        "{all:?}"
    );
    let under = trash(&["trash", "--json", "sub"]);
    assert_eq!(under.len(), 1, "{under:?}");
    assert_eq!(under[0]["path"], "sub/inner.txt");
    let (code, out, _) = run_in(&b.mountpoint, &["undelete", "gone.txt"]);
    assert_eq!(code, 0, "{out}");
    common::eventually(30, "both devices have it back", || {
        fs::read(a.path("gone.txt")).is_ok_and(|d| d == b"bring me back")
            && fs::read(b.path("gone.txt")).is_ok_and(|d| d == b"bring me back")
    });
    let (code, _, err) = run_in(&b.mountpoint, &["undelete", "never-was.txt"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("nothing deleted was at never-was.txt"),
        "{err}"
    );

    // A restore never replaces local changes the server has not stored.
    s.server.terminate();
    fs::write(a.path("f.txt"), b"offline edit").unwrap();
    let (code, _, err) = run_in(
        &a.mountpoint,
        &[
            "restore",
            "f.txt",
            "--version",
            &first["version"].to_string(),
        ],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("local changes the server has not stored"),
        "{err}"
    );
    assert_eq!(fs::read(a.path("f.txt")).unwrap(), b"offline edit");
}

#[test]
fn login_keeps_a_private_token_and_mount_then_needs_none() {
    use common::mounts::setup;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let s = setup();
    let dirs = tempfile::tempdir().unwrap();
    let config = dirs.path().join("config");
    let env = |command: &mut std::process::Command| {
        command.env("XDG_CONFIG_HOME", &config);
    };
    let login = |token: &str| {
        let mut command = bvfs();
        env(&mut command);
        let mut child = command
            .args(["login", "--token-stdin", "--server", &s.server.url])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        writeln!(child.stdin.take().unwrap(), "{token}").unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let saved = config.join("bvfs/login.json");

    // A token the server refuses is not saved.
    let (code, _, err) = login("bv_not_a_token");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("does not accept this token"), "{err}");
    assert!(!saved.exists());

    let (code, out, err) = login(&s.tokens[0]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("as alice (device laptop)"), "{out}");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&saved), 0o600);
    assert_eq!(mode(&config.join("bvfs")), 0o700);
    assert!(
        std::fs::read_to_string(&saved)
            .unwrap()
            .contains(&s.tokens[0])
    );

    // `bvfs mount DIR` takes the saved server and token: no token on its command line.
    let mountpoint = dirs.path().join("mnt");
    let mut mount = bvfs();
    env(&mut mount);
    let out = mount
        .args(["mount", "--data"])
        .arg(dirs.path().join("state"))
        .arg(&mountpoint)
        .output()
        .unwrap();
    let _unmount = Unmount(mountpoint.clone());
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(mountpoint.join("via-login.txt"), b"no token typed").unwrap();
    let other = s.mount(1, &[]);
    common::eventually(30, "the other device sees the file", || {
        std::fs::read(other.path("via-login.txt")).is_ok_and(|d| d == b"no token typed")
    });

    // Another server without a token says how to log in to it.
    let mut mount = bvfs();
    env(&mut mount);
    let out = mount
        .args(["mount", "--server", "http://127.0.0.1:9", "--data"])
        .arg(dirs.path().join("state2"))
        .arg(dirs.path().join("mnt2"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("run `bvfs login --server http://127.0.0.1:9`"),
        "{err}"
    );
}

#[test]
fn a_guarded_process_gets_a_fast_error_while_cat_reads() {
    use common::mounts::{random_bytes, setup};
    use std::fs;
    let s = setup();
    let a = s.mount(0, &[]);
    fs::write(a.path("big.bin"), random_bytes(1 << 20, 5)).unwrap();
    fs::write(a.path("other.bin"), random_bytes(300_000, 6)).unwrap();
    let b = s.mount(1, &["--guard-process", "my-indexer"]);
    common::eventually(30, "B lists the files", || {
        fs::metadata(b.path("other.bin")).is_ok_and(|m| m.len() == 300_000)
            && fs::metadata(b.path("big.bin")).is_ok_and(|m| m.len() == 1 << 20)
    });
    // `cat` under an indexer's names: one from the defaults, one given to the mount.
    let bin = tempfile::tempdir().unwrap();
    for name in ["updatedb", "my-indexer"] {
        fs::copy("/bin/cat", bin.path().join(name)).unwrap();
    }
    let read_as = |name: &str, file: &str| {
        let started = std::time::Instant::now();
        let out = std::process::Command::new(bin.path().join(name))
            .arg(b.path(file))
            .output()
            .unwrap();
        (out, started.elapsed())
    };
    for name in ["updatedb", "my-indexer"] {
        let (out, took) = read_as(name, "big.bin");
        assert!(!out.status.success(), "{name} read content it must not");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("Permission denied"), "{name}: {err}");
        assert!(
            took < std::time::Duration::from_secs(3),
            "{name} waited {took:?}"
        );
    }
    // stat and listings still work for it, and nothing was downloaded.
    assert_eq!(fs::metadata(b.path("big.bin")).unwrap().len(), 1 << 20);
    assert_eq!(
        common::mounts::xattr(&b.path("big.bin"), "user.bvfs.state"),
        "online-only"
    );
    assert!(b.log().contains("hydration guard"), "no log line");
    // Anyone else reads; then the bytes are local and the guarded process reads them too.
    assert_eq!(
        std::process::Command::new("cat")
            .arg(b.path("big.bin"))
            .output()
            .unwrap()
            .stdout,
        random_bytes(1 << 20, 5)
    );
    let (out, _) = read_as("updatedb", "big.bin");
    assert!(out.status.success());
    assert_eq!(out.stdout, random_bytes(1 << 20, 5));
    let (out, _) = read_as("updatedb", "other.bin");
    assert!(!out.status.success(), "other.bin is still not local");
}

#[test]
fn ctrl_c_stops_a_hydration_not_the_mount() {
    use common::mounts::{random_bytes, setup};
    use std::io::{BufRead, BufReader, Write};
    let s = setup();
    let a = s.mount(0, &[]);
    {
        let mut f = std::fs::File::create(a.path("large.bin")).unwrap();
        for i in 0..16 {
            f.write_all(&random_bytes(4 << 20, 50 + i)).unwrap();
        }
    }
    let b = s.mount(1, &[]);
    common::eventually(60, "B lists the file", || {
        std::fs::metadata(b.path("large.bin")).is_ok_and(|m| m.len() == 64 << 20)
    });
    let mut child = bvfs()
        .args(["hydrate", "large.bin"])
        .current_dir(&b.mountpoint)
        .env("PWD", &b.mountpoint)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("hydrate 0/1 files"), "{first}");
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let status = child.wait().unwrap();
    assert!(!status.success(), "the CLI stops at Ctrl-C");
    // The transfer stops with the CLI: the cache stops growing well short of the file. (Calls
    // already sent finish, each within its timeout of a few seconds: wait until the cache has not
    // grown for 1 s, then check that it stays so.)
    let cached_bytes = || common::dir_usage(&b.data.join("chunks/chunks")).1;
    let mut cached = cached_bytes();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
        let now = cached_bytes();
        if now == cached || std::time::Instant::now() > deadline {
            break;
        }
        cached = now;
    }
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(cached, cached_bytes(), "still downloading after Ctrl-C");
    assert!(
        cached < 32 << 20,
        "{cached} bytes fetched: the transfer did not stop"
    );
    // The mount goes on: it answers, and a new hydration completes the file.
    let done = json_in(&b.mountpoint, &["hydrate", "--json", "large.bin"]);
    assert_eq!(
        done["fetched_bytes"].as_u64().unwrap() + cached,
        64 << 20,
        "{done}"
    );
    assert_eq!(
        common::mounts::xattr(&b.path("large.bin"), "user.bvfs.state"),
        "local"
    );
}

#[test]
fn completions_and_man_pages_come_from_the_cli() {
    let (code, out, err) = run(&["completions", "bash"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("_bvfs") && out.contains("hydrate") && out.contains("--json"));
    let (code, out, _) = run(&["completions", "fish"]);
    assert_eq!(code, 0);
    assert!(out.contains("complete -c bvfs"), "{out}");
    let (code, _, _) = run(&["completions", "tcsh-but-not-really"]);
    assert_eq!(code, 2);
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("man1");
    let (code, _, err) = run(&["man", "--out", out_dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    for page in ["bvfs.1", "bvfs-status.1", "bvfs-evict.1", "bvfs-mount.1"] {
        let text =
            std::fs::read_to_string(out_dir.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.contains(".TH"), "{page} is not a man page");
    }
    assert!(
        std::fs::read_to_string(out_dir.join("bvfs-evict.1"))
            .unwrap()
            .contains("refuses")
    );
}

#[test]
fn mount_bvfs_mounts_from_an_fstab_line() {
    use common::mounts::setup;
    let s = setup();
    let dirs = tempfile::tempdir().unwrap();
    let helper = dirs.path().join("mount.bvfs");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_bvfs"), &helper).unwrap();
    let token_file = dirs.path().join("token");
    std::fs::write(&token_file, format!("{}\n", s.tokens[0])).unwrap();
    let mountpoint = dirs.path().join("BitVault");
    let options = format!(
        "noauto,user,_netdev,cache_size=100M,device=laptop,data={},token_file={},x-systemd.automount",
        dirs.path().join("state").display(),
        token_file.display()
    );
    let line = |extra: &[&str]| {
        let mut command = std::process::Command::new(&helper);
        command
            .arg(&s.server.url)
            .arg(&mountpoint)
            .args(extra)
            .args(["-o", &options]);
        command.output().unwrap()
    };
    // -f: what it would run, without the token.
    let fake = line(&["-f"]);
    assert!(fake.status.success());
    let shown = String::from_utf8_lossy(&fake.stdout);
    assert!(
        shown.contains("bvfs mount --server") && shown.contains("--cache-size 100M"),
        "{shown}"
    );
    assert!(
        !shown.contains(&s.tokens[0]),
        "the token must not show: {shown}"
    );
    assert!(!mountpoint.exists());

    let out = line(&[]);
    let _unmount = Unmount(mountpoint.clone());
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(mountpoint.join("from-fstab.txt"), b"mounted by mount.bvfs").unwrap();
    let other = s.mount(1, &[]);
    common::eventually(30, "the other device sees the file", || {
        std::fs::read(other.path("from-fstab.txt")).is_ok_and(|d| d == b"mounted by mount.bvfs")
    });
    let unknown = std::process::Command::new(&helper)
        .arg(&s.server.url)
        .arg(dirs.path().join("elsewhere"))
        .args(["-o", "frobnicate"])
        .output()
        .unwrap();
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("unknown option \"frobnicate\""));
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let unit =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/systemd/bvfs.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    assert!(
        text.contains("ExecStart=/usr/bin/env bvfs mount --foreground"),
        "{text}"
    );
    assert!(!text.contains("--token"), "tokens stay out of unit files");
    let Ok(out) = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
    else {
        eprintln!("systemd-analyze is not installed here: the unit's text was checked only");
        return;
    };
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() && !said.contains("bvfs.service") {
        // systemd-analyze itself cannot run here (no manager in a container): nothing about the unit.
        eprintln!("systemd-analyze cannot verify here: {said}");
        return;
    }
    assert!(out.status.success(), "systemd-analyze verify: {said}");
}

#[test]
fn config_says_where_each_value_came_from_and_mount_uses_it() {
    use common::mounts::setup;
    let s = setup();
    let dirs = tempfile::tempdir().unwrap();
    let config_home = dirs.path().join("config");
    std::fs::create_dir_all(config_home.join("bvfs")).unwrap();
    let file = config_home.join("bvfs/config.toml");
    std::fs::write(
        &file,
        "cache_size = \"7M\"\nbrake_max_deletes = 2\nbrake_max_fraction = 1.0\nguard_processes = [\"my-indexer\"]\n",
    )
    .unwrap();
    let config = |env: &[(&str, &str)]| {
        let mut command = bvfs();
        command
            .args(["config", "--json"])
            .env("XDG_CONFIG_HOME", &config_home);
        for (k, v) in env {
            command.env(k, v);
        }
        command.output().unwrap()
    };
    let out = config(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let from_file = file.to_str().unwrap();
    assert_eq!(json["file"], from_file);
    assert_eq!(json["cache_size"]["value"], 7 << 20);
    assert_eq!(json["cache_size"]["source"], from_file);
    assert_eq!(json["brake_max_deletes"]["value"], 2);
    assert_eq!(json["guard_processes"]["value"][0], "my-indexer");
    assert_eq!(json["hydration_guard"]["value"], true);
    assert_eq!(json["hydration_guard"]["source"], "default");
    // The environment wins over the file.
    let out = config(&[("BVFS_CACHE_SIZE", "1G")]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["cache_size"]["value"], 1u64 << 30);
    assert_eq!(json["cache_size"]["source"], "env BVFS_CACHE_SIZE");
    let out = config(&[("BVFS_CACHE_SIZE", "lots")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("BVFS_CACHE_SIZE"));

    // A mount takes the file's cache size and brake.
    let mountpoint = dirs.path().join("mnt");
    let out = bvfs()
        .args([
            "mount",
            "--server",
            &s.server.url,
            "--token",
            &s.tokens[0],
            "--data",
        ])
        .arg(dirs.path().join("state"))
        .arg(&mountpoint)
        .env("XDG_CONFIG_HOME", &config_home)
        .output()
        .unwrap();
    let _unmount = Unmount(mountpoint.clone());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = json_in(&mountpoint, &["status", "--json"]);
    assert_eq!(status["mount"]["cache"]["limit_bytes"], 7 << 20, "{status}");
    for i in 0..3 {
        std::fs::write(mountpoint.join(format!("f{i}.txt")), b"x").unwrap();
    }
    common::eventually(30, "synced", || {
        json_in(&mountpoint, &["status", "--json"])["mount"]["sync"] == "synced"
    });
    for i in 0..3 {
        std::fs::remove_file(mountpoint.join(format!("f{i}.txt"))).unwrap();
    }
    common::eventually(
        30,
        "three deletes are over the configured brake of two",
        || json_in(&mountpoint, &["deletes", "--json"])["held_total"] == 3,
    );

    // A key bvfs does not know is refused, naming the file.
    std::fs::write(&file, "cache_sise = \"1G\"\n").unwrap();
    let out = config(&[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("config.toml is not a valid") && err.contains("cache_sise"),
        "{err}"
    );
}

//! Real mounts (FUSE, as root) against a real `bvfs serve` process, driven with plain syscalls and
//! shell tools: two devices converge, conflicts keep both versions, placeholders cost no downloads,
//! reads hydrate only what they touch, the cache keeps its limit, offline behaves, kill -9 loses
//! nothing fsynced, and git and SQLite work inside the mount. Each runs on both server backends.

mod common;

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::process::Command;
use std::time::{Duration, Instant};

use common::mounts::*;
use common::*;

/// Runs each two-device test twice: against a server on the embedded backends (SQLite and a chunk
/// directory) and against one on the scale-out backends (PostgreSQL, S3 with SigV4, NATS).
macro_rules! on_both_backends {
    ($($test:ident),* $(,)?) => {
        mod embedded {
            $(#[test]
            fn $test() {
                super::$test(super::setup());
            })*
        }
        mod scaleout {
            $(#[test]
            fn $test() {
                super::$test(super::setup_scaleout());
            })*
        }
    };
}

on_both_backends!(
    edits_at_depth_reach_the_other_device,
    concurrent_edits_make_exactly_one_conflicted_copy,
    placeholders_and_ranged_hydration,
    cache_limit_pins_and_unsynced_data,
    offline_reads_fail_fast_and_writes_catch_up,
    kill_9_loses_nothing_that_was_fsynced,
    git_and_sqlite_work_inside_the_mount,
    git_status_on_a_second_device_trusts_the_index_with_gits_defaults,
    remount_keeps_inodes_and_cleans_a_stale_mount,
    stress_run_ends_clean_and_the_data_verifies,
    umount_right_after_a_write_syncs_it_first,
);

/// Cached chunks of a mount (files named by a 64-hex-digit BLAKE3 id) and their total size.
fn chunk_files(mount: &MountProcess) -> (usize, u64) {
    let mut count = 0;
    let mut bytes = 0;
    let Ok(shards) = fs::read_dir(mount.data.join("chunks/chunks")) else {
        return (0, 0);
    };
    for shard in shards.flatten().filter(|e| e.path().is_dir()) {
        for chunk in fs::read_dir(shard.path()).unwrap().flatten() {
            let name = chunk.file_name();
            if name.len() == 64
                && name
                    .to_string_lossy()
                    .chars()
                    .all(|c| c.is_ascii_hexdigit())
            {
                count += 1;
                bytes += chunk.metadata().unwrap().len();
            }
        }
    }
    (count, bytes)
}

fn edits_at_depth_reach_the_other_device(s: Setup) {
    let a = s.mount(0, &[]);
    let b = s.mount(1, &[]);
    fs::create_dir_all(a.path("projects/alpha/src")).unwrap();
    fs::write(a.path("projects/alpha/src/main.rs"), b"fn main() {}\n").unwrap();
    fs::write(a.path("projects/alpha/README"), b"alpha").unwrap();
    fs::set_permissions(
        a.path("projects/alpha/README"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink("src/main.rs", a.path("projects/alpha/link")).unwrap();
    // Each of these may arrive in a round of its own: wait for every one.
    eventually(20, "B sees A's tree", || {
        fs::read(b.path("projects/alpha/src/main.rs")).is_ok_and(|d| d == b"fn main() {}\n")
    });
    eventually(10, "the executable bit", || {
        fs::metadata(b.path("projects/alpha/README"))
            .is_ok_and(|m| m.permissions().mode() & 0o111 != 0)
    });
    eventually(10, "the symbolic link", || {
        fs::read_link(b.path("projects/alpha/link"))
            .is_ok_and(|target| target.to_str() == Some("src/main.rs"))
    });

    // B edits, renames a directory (O(1), no download), and deletes; A follows.
    fs::write(
        b.path("projects/alpha/src/main.rs"),
        b"fn main() { println!(\"hi\"); }\n",
    )
    .unwrap();
    fs::rename(b.path("projects/alpha"), b.path("projects/beta")).unwrap();
    fs::remove_file(b.path("projects/beta/README")).unwrap();
    eventually(20, "A sees the rename", || {
        a.path("projects/beta/src/main.rs").exists()
    });
    eventually(20, "A sees the edit", || {
        fs::read(a.path("projects/beta/src/main.rs"))
            .is_ok_and(|d| d == b"fn main() { println!(\"hi\"); }\n")
    });
    eventually(20, "A sees the delete", || {
        !a.path("projects/beta/README").exists()
    });
    assert!(!a.path("projects/alpha").exists());

    // Shell tools work as on a disk: tar, find, mv, rm -r.
    sh(
        &a.mountpoint,
        "mkdir -p t && tar -C /usr/share/doc -cf - dpkg | tar -C t -xf - && find t -type f | wc -l",
    );
    let count_a = sh(&a.mountpoint, "find t -type f | wc -l");
    eventually(30, "B sees the untarred tree", || {
        Command::new("sh")
            .arg("-c")
            .arg("find t -type f | wc -l")
            .current_dir(&b.mountpoint)
            .output()
            .is_ok_and(|o| o.stdout == count_a.as_bytes())
    });
    sh(&b.mountpoint, "mv t t2 && rm -r t2");
    // Removing most of the namespace engages the bulk-delete brake: B holds the deletes until the
    // user confirms them on the mount's root. (A round may fall between `mv` and `rm`: then the
    // rename syncs and the held deletes name t2.)
    eventually(20, "B holds the deletes", || {
        let held = xattr(&b.mountpoint, "user.bvfs.held-deletes");
        held.contains("/t/") || held.contains("/t2/")
    });
    assert!(
        a.path("t").exists() || a.path("t2").exists(),
        "held deletes must not reach the other device"
    );
    sh(
        &b.mountpoint,
        "setfattr -n user.bvfs.held-deletes -v confirm .",
    );
    eventually(30, "A sees the removal", || {
        !a.path("t").exists() && !a.path("t2").exists()
    });

    // POSIX errors where POSIX says so.
    let err = fs::remove_dir(a.path("projects")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOTEMPTY));
    let err = fs::create_dir(a.path("projects")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EEXIST));
    let err = fs::read_dir(a.path("projects/beta/src/main.rs")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOTDIR));
    let err = fs::write(a.path(&"x".repeat(300)), b"").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENAMETOOLONG));
    let err = fs::hard_link(a.path("projects/beta/src/main.rs"), a.path("hardlink")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM));
}

fn concurrent_edits_make_exactly_one_conflicted_copy(mut s: Setup) {
    let a = s.mount(0, &[]);
    let b = s.mount(1, &[]);
    fs::write(a.path("shared.txt"), b"base").unwrap();
    eventually(20, "B has the file", || {
        fs::read(b.path("shared.txt")).is_ok_and(|d| d == b"base")
    });
    // Edit on both before either syncs: with the server stopped, neither device can see the
    // other's edit first (a race left to timing would be lost on a slow machine), and both
    // commit against the same base once it is back.
    s.server.terminate();
    fs::write(a.path("shared.txt"), b"laptop version").unwrap();
    fs::write(b.path("shared.txt"), b"desktop version").unwrap();
    s.server.start_again();
    let copies = |m: &MountProcess| -> Vec<String> {
        fs::read_dir(&m.mountpoint)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("conflicted copy"))
            .collect()
    };
    eventually(30, "both devices show one conflicted copy", || {
        copies(&a).len() == 1 && copies(&b).len() == 1
    });
    let copy = copies(&a).pop().unwrap();
    let mut versions = vec![
        fs::read(a.path("shared.txt")).unwrap(),
        fs::read(a.path(&copy)).unwrap(),
    ];
    versions.sort();
    assert_eq!(
        versions,
        vec![b"desktop version".to_vec(), b"laptop version".to_vec()],
        "no bytes lost"
    );
    eventually(20, "B agrees", || {
        fs::read(b.path("shared.txt")).ok() == fs::read(a.path("shared.txt")).ok()
            && fs::read(b.path(&copy)).ok() == fs::read(a.path(&copy)).ok()
    });
}

fn placeholders_and_ranged_hydration(s: Setup) {
    let a = s.mount(0, &[]);
    // A 1 GiB file and a tree of small ones, written on A.
    {
        let mut f = fs::File::create(a.path("big.bin")).unwrap();
        for i in 0..128u64 {
            f.write_all(&random_bytes(8 << 20, i + 1)).unwrap();
        }
        f.sync_all().unwrap();
    }
    sh(
        &a.mountpoint,
        "mkdir -p tree && for i in $(seq 1 200); do echo file $i > tree/f$i.txt; done",
    );
    let b = s.mount(1, &[]);
    eventually(300, "B lists everything", || {
        fs::metadata(b.path("big.bin")).is_ok_and(|m| m.len() == 1 << 30)
            && fs::read_dir(b.path("tree")).is_ok_and(|d| d.count() == 200)
    });
    // stat, ls -l, find and getfattr download nothing.
    sh(
        &b.mountpoint,
        "ls -lR >/dev/null && find . -type f -exec stat {} + >/dev/null",
    );
    assert_eq!(xattr(&b.path("big.bin"), "user.bvfs.state"), "online-only");
    assert_eq!(
        chunk_files(&b).0,
        0,
        "listing and stat must not download chunks"
    );

    // 4 KiB at an offset of the 1 GiB file fetches only the chunks covering it.
    let f = fs::File::open(b.path("big.bin")).unwrap();
    let offset = 700 << 20;
    let mut buf = vec![0; 4096];
    f.read_exact_at(&mut buf, offset).unwrap();
    let expected = &random_bytes(8 << 20, 700 / 8 + 1)[(offset as usize % (8 << 20))..][..4096];
    assert_eq!(buf, expected);
    let (chunks, bytes) = chunk_files(&b);
    assert!(
        (1..=4).contains(&chunks),
        "{chunks} chunks fetched for a 4 KiB read"
    );
    assert!(bytes <= 1 << 20, "{bytes} bytes fetched for a 4 KiB read");
    assert_eq!(xattr(&b.path("big.bin"), "user.bvfs.state"), "partial");

    // O_TRUNC downloads nothing.
    let before = chunk_files(&b).0;
    fs::write(b.path("big.bin"), b"small now").unwrap();
    assert_eq!(chunk_files(&b).0, before, "truncating must not download");
    eventually(120, "A sees the truncation", || {
        fs::read(a.path("big.bin")).is_ok_and(|d| d == b"small now")
    });
}

fn cache_limit_pins_and_unsynced_data(mut s: Setup) {
    let a = s.mount(0, &[]);
    for i in 0..8 {
        fs::write(a.path(&format!("f{i}.bin")), random_bytes(1 << 20, 100 + i)).unwrap();
    }
    let b = s.mount(1, &["--cache-size", "3M"]);
    // Sizes, not names: a file's create may sync before its bytes.
    eventually(30, "B lists the files with their sizes", || {
        (0..8).all(|i| fs::metadata(b.path(&format!("f{i}.bin"))).is_ok_and(|m| m.len() == 1 << 20))
    });
    // Pin one file: it is fetched and stays, whatever else is read.
    sh(&b.mountpoint, "setfattr -n user.bvfs.pin -v 1 f0.bin");
    assert_eq!(xattr(&b.path("f0.bin"), "user.bvfs.pin"), "1");
    eventually(20, "the pinned file is fetched", || {
        let (count, bytes) = chunk_files(&b);
        count > 0 && bytes >= 1 << 20
    });
    for i in 1..8 {
        assert_eq!(
            fs::read(b.path(&format!("f{i}.bin"))).unwrap(),
            random_bytes(1 << 20, 100 + i)
        );
    }
    let (_, bytes) = chunk_files(&b);
    assert!(
        bytes <= 3 << 20,
        "the cache holds {bytes} bytes over its 3 MiB limit"
    );
    // Unsynced data lives in the materialized copy, outside the cache's eviction.
    fs::write(b.path("unsynced.bin"), random_bytes(2 << 20, 9)).unwrap();
    // With the server gone, the pinned file still reads in full; an evicted one does not.
    s.server.terminate();
    assert_eq!(
        fs::read(b.path("f0.bin")).unwrap(),
        random_bytes(1 << 20, 100)
    );
    assert_eq!(xattr(&b.path("f0.bin"), "user.bvfs.state"), "pinned");
    assert_eq!(
        fs::read(b.path("unsynced.bin")).unwrap(),
        random_bytes(2 << 20, 9)
    );
    // The files read first were evicted to keep the limit (the kernel may still have their pages).
    let cached = |i: u64| {
        let manifest =
            bvfs_engine::chunking::chunk_bytes(&random_bytes(1 << 20, 100 + i), Default::default());
        manifest.chunks.iter().all(|c| {
            let hex = c.id.to_hex();
            b.data
                .join("chunks/chunks")
                .join(&hex[..2])
                .join(&hex)
                .exists()
        })
    };
    assert!(cached(0), "the pinned file stays cached");
    assert!(!cached(1), "the least recently read file was evicted");
}

fn offline_reads_fail_fast_and_writes_catch_up(mut s: Setup) {
    let a = s.mount(0, &[]);
    fs::write(a.path("local.txt"), b"hydrated").unwrap();
    fs::write(a.path("remote.bin"), random_bytes(300_000, 7)).unwrap();
    let b = s.mount(1, &[]);
    // Wait for the written sizes, not only the names: A may sync each file's create before its
    // bytes (the round may run between `open(O_CREAT)` and the write), and an empty `remote.bin`
    // on B would then "read" fine offline.
    eventually(20, "B has both with their bytes", || {
        fs::metadata(b.path("remote.bin")).is_ok_and(|m| m.len() == 300_000)
            && fs::metadata(b.path("local.txt")).is_ok_and(|m| m.len() == 8)
    });
    assert_eq!(fs::read(b.path("local.txt")).unwrap(), b"hydrated");
    s.server.terminate();

    // Hydrated files stay readable and writable; new files can be made.
    assert_eq!(fs::read(b.path("local.txt")).unwrap(), b"hydrated");
    fs::write(b.path("local.txt"), b"edited offline").unwrap();
    fs::write(b.path("new offline.txt"), b"made offline").unwrap();
    // Bytes that were never fetched fail fast with a clear errno, never hang.
    let start = Instant::now();
    let err = fs::read(b.path("remote.bin")).unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "an offline read took {:?}",
        start.elapsed()
    );
    assert!(
        matches!(
            err.raw_os_error(),
            Some(libc::EIO) | Some(libc::ENETUNREACH)
        ),
        "{err:?}"
    );
    eventually(5, "a log line names the file", || {
        b.log().contains("remote.bin")
    });

    // The server returns; everything catches up.
    s.server.start_again();
    eventually(60, "A sees the offline edits", || {
        fs::read(a.path("local.txt")).is_ok_and(|d| d == b"edited offline")
            && fs::read(a.path("new offline.txt")).is_ok_and(|d| d == b"made offline")
    });
    // The failed read above left B's fetcher offline for a short backoff: retry past it.
    let remote = random_bytes(300_000, 7);
    eventually(20, "B reads remote.bin again", || {
        fs::read(b.path("remote.bin")).is_ok_and(|d| d == remote)
    });
}

fn kill_9_loses_nothing_that_was_fsynced(s: Setup) {
    let mut a = s.mount(0, &[]);
    let mut acked = Vec::new();
    for i in 0..20 {
        let name = format!("doc{i}.txt");
        let mut f = fs::File::create(a.path(&name)).unwrap();
        f.write_all(format!("version {i}").as_bytes()).unwrap();
        f.sync_all().unwrap();
        acked.push((name, format!("version {i}")));
    }
    // Rewrite one in place and fsync without closing, then kill the daemon.
    let mut f = fs::OpenOptions::new()
        .write(true)
        .open(a.path("doc3.txt"))
        .unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.write_all(b"VERSION 3").unwrap();
    f.sync_all().unwrap();
    acked[3].1 = "VERSION 3".into();
    a.kill9_and_remount(&s.server.url, &s.tokens[0], "laptop");
    drop(f);
    for (name, content) in &acked {
        assert_eq!(
            fs::read_to_string(a.path(name)).unwrap(),
            *content,
            "{name}"
        );
    }
    // A commit whose answer the crash swallowed is recognised, not mistaken for someone else's edit.
    std::thread::sleep(Duration::from_secs(2));
    let conflicts: Vec<_> = fs::read_dir(&a.mountpoint)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("conflicted copy"))
        .collect();
    assert!(
        conflicts.is_empty(),
        "a crash must not make conflicted copies: {conflicts:?}"
    );
    // And they reach the other device.
    let b = s.mount(1, &[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    for (name, content) in &acked {
        loop {
            match fs::read_to_string(b.path(name)) {
                Ok(c) if c == *content => break,
                other if Instant::now() > deadline => {
                    panic!(
                        "B never got {name} = {content:?} (last: {other:?})\nA's log:\n{}\nB's log:\n{}",
                        a.log(),
                        b.log()
                    )
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

/// The stat data git records in its index, as `stat` prints it.
fn git_stat_fields(path: &std::path::Path) -> String {
    sh(
        path.parent().unwrap(),
        &format!(
            "stat -c 'ino=%i ctime=%.9Z mtime=%.9Y size=%s mode=%f uid=%u gid=%g' '{}'",
            path.display()
        ),
    )
}

/// A repository cloned on one device is trusted as-is by `git status` on the other, with git's
/// default configuration: every file reports the stat data git recorded (inode number, change and
/// modification times to the nanosecond, size, mode, owner), so git hashes nothing and the second
/// device downloads almost nothing.
fn git_status_on_a_second_device_trusts_the_index_with_gits_defaults(s: Setup) {
    let a = s.mount(0, &[]);
    let b = s.mount(1, &[]);
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    for i in 0..300u64 {
        let dir = src.join(format!("d{}", i % 10));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(format!("f{i}.bin")), random_bytes(4096, 900 + i)).unwrap();
    }
    fs::write(src.join("run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(src.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    sh(
        &src,
        "git init -q && git config user.email t@e && git config user.name t \
         && git add -A && git commit -qm tree",
    );
    sh(
        &a.mountpoint,
        &format!("git clone -q {} repo", src.display()),
    );
    // Entries written in the same second as the index are "racily clean": git hashes them at its
    // next status on any machine, and records them as clean only in an index written later. A
    // status a second after the clone does that here (as time passing does for a user).
    std::thread::sleep(Duration::from_millis(1_100));
    assert_eq!(sh(&a.path("repo"), "git status --porcelain"), "");
    eventually(120, "A has synced the clone", || {
        xattr(&a.mountpoint, "user.bvfs.sync") == "synced"
    });
    eventually(120, "B has the clone", || {
        b.path("repo/.git/index").exists()
            && fs::read(b.path("repo/.git/index")).ok() == fs::read(a.path("repo/.git/index")).ok()
            && xattr(&b.mountpoint, "user.bvfs.sync") == "synced"
    });
    let files: Vec<String> = sh(&a.path("repo"), "git ls-files")
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(files.len(), 301);
    for file in &files {
        assert_eq!(
            git_stat_fields(&b.path(&format!("repo/{file}"))),
            git_stat_fields(&a.path(&format!("repo/{file}"))),
            "{file}: the two devices report different stat data"
        );
    }
    let (_, cached_before) = chunk_files(&b);
    let status = Command::new("git")
        .args(["-c", "safe.directory=*", "status", "--porcelain"])
        .current_dir(b.path("repo"))
        .output()
        .unwrap();
    assert!(status.status.success());
    assert_eq!(String::from_utf8_lossy(&status.stdout), "");
    let (_, cached_after) = chunk_files(&b);
    let tree_bytes = 300 * 4096;
    assert!(
        (cached_after - cached_before) * 100 <= tree_bytes,
        "git status on B downloaded {} bytes of a {tree_bytes}-byte tree",
        cached_after - cached_before
    );
}

fn git_and_sqlite_work_inside_the_mount(s: Setup) {
    let a = s.mount(0, &[]);
    let b = s.mount(1, &[]);
    let work = tempfile::tempdir().unwrap();
    if Command::new("git").arg("--version").output().is_ok() {
        sh(
            work.path(),
            "git init -q src && cd src && git config user.email t@e && git config user.name t \
             && for i in 1 2 3; do echo $i > f$i; git add f$i; git commit -qm c$i; done",
        );
        sh(
            &a.mountpoint,
            &format!("git clone -q {}/src repo", work.path().display()),
        );
        let head = sh(&a.path("repo"), "git rev-parse HEAD");
        eventually(60, "B has the clone", || {
            b.path("repo/.git/HEAD").exists() && b.path("repo/f3").exists()
        });
        eventually(60, "git status is clean on B", || {
            Command::new("git")
                .args(["-c", "safe.directory=*", "status", "--porcelain"])
                .current_dir(b.path("repo"))
                .output()
                .is_ok_and(|o| o.status.success() && o.stdout.is_empty())
        });
        assert_eq!(
            sh(&b.path("repo"), "git -c safe.directory='*' rev-parse HEAD"),
            head
        );
    }

    // SQLite, through the mount, then checked on the other device.
    {
        let db = rusqlite::Connection::open(a.path("app.db")).unwrap();
        db.execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT);")
            .unwrap();
        for i in 0..500 {
            db.execute("INSERT INTO t (v) VALUES (?1)", [format!("row {i}")])
                .unwrap();
        }
    }
    eventually(60, "B has the database", || {
        fs::metadata(b.path("app.db")).ok().map(|m| m.len())
            == fs::metadata(a.path("app.db")).ok().map(|m| m.len())
            && fs::read(b.path("app.db")).ok() == fs::read(a.path("app.db")).ok()
    });
    let db = rusqlite::Connection::open_with_flags(
        b.path("app.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let check: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let rows: i64 = db
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 500);

    // Shared mmap writes land in the file.
    {
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(a.path("mapped"))
            .unwrap();
        f.set_len(4096).unwrap();
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&f),
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED);
        unsafe {
            std::ptr::copy_nonoverlapping(b"written through mmap".as_ptr(), ptr as *mut u8, 20);
            libc::msync(ptr, 4096, libc::MS_SYNC);
            libc::munmap(ptr, 4096);
        }
    }
    let mut content = Vec::new();
    fs::File::open(a.path("mapped"))
        .unwrap()
        .read_to_end(&mut content)
        .unwrap();
    assert_eq!(&content[..20], b"written through mmap");
    eventually(30, "B sees the mmap write", || {
        fs::read(b.path("mapped")).is_ok_and(|d| d.starts_with(b"written through mmap"))
    });
}

fn remount_keeps_inodes_and_cleans_a_stale_mount(s: Setup) {
    let mut a = s.mount(0, &[]);
    fs::create_dir(a.path("d")).unwrap();
    fs::write(a.path("d/f"), b"x").unwrap();
    let ino = std::os::unix::fs::MetadataExt::ino(&fs::metadata(a.path("d/f")).unwrap());
    a.kill9_and_remount(&s.server.url, &s.tokens[0], "laptop");
    let again = std::os::unix::fs::MetadataExt::ino(&fs::metadata(a.path("d/f")).unwrap());
    assert_eq!(ino, again, "inode numbers are stable across remounts");
}

/// Paths, kinds and content digests of a tree. A tree that changes while it is read (a device still
/// syncing) can lose an entry between its listing and its read: that is an error, to try again.
fn try_tree_digest(root: &std::path::Path) -> std::io::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let meta = fs::symlink_metadata(&path)?;
            if meta.is_dir() {
                stack.push(path);
                out.push((rel, "dir".into()));
            } else if meta.is_symlink() {
                out.push((rel, format!("-> {}", fs::read_link(&path)?.display())));
            } else {
                out.push((rel, blake3::hash(&fs::read(&path)?).to_hex().to_string()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// [`try_tree_digest`] of a tree that is not changing.
fn tree_digest(root: &std::path::Path) -> Vec<(String, String)> {
    try_tree_digest(root).unwrap_or_else(|e| panic!("reading {}: {e}", root.display()))
}

fn stress_run_ends_clean_and_the_data_verifies(s: Setup) {
    let a = s.mount(0, &[]);
    let b = s.mount(1, &[]);
    fs::create_dir(a.path("keep")).unwrap();
    for i in 0..30 {
        fs::write(
            a.path(&format!("keep/{i}.bin")),
            random_bytes(1000 + i * 3000, 500 + i as u64),
        )
        .unwrap();
    }
    fs::create_dir(a.path("dbench")).unwrap();
    fs::create_dir(a.path("stress")).unwrap();
    let dbench = Command::new("dbench")
        .args(["-D"])
        .arg(a.path("dbench"))
        .args(["-t", "10", "2"])
        .output()
        .expect("dbench is installed by scripts/test.sh");
    assert!(
        dbench.status.success(),
        "dbench failed:\n{}",
        String::from_utf8_lossy(&dbench.stdout)
    );
    let stress = Command::new("stress-ng")
        .arg("--temp-path")
        .arg(a.path("stress"))
        .args([
            "--hdd",
            "2",
            "--hdd-bytes",
            "4M",
            "--dir",
            "1",
            "--rename",
            "1",
            "--seek",
            "1",
            "--verify",
            "-t",
            "10s",
        ])
        .output()
        .expect("stress-ng is installed by scripts/test.sh");
    assert!(
        stress.status.success(),
        "stress-ng failed:\n{}{}",
        String::from_utf8_lossy(&stress.stdout),
        String::from_utf8_lossy(&stress.stderr)
    );
    // The data written before is intact, and the other device ends with exactly the same tree.
    for i in 0..30 {
        assert_eq!(
            fs::read(a.path(&format!("keep/{i}.bin"))).unwrap(),
            random_bytes(1000 + i * 3000, 500 + i as u64)
        );
    }
    // If the benchmarks' clean-up deletes engage the bulk-delete brake, confirm them as a user would.
    let expected = tree_digest(&a.mountpoint);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if !xattr(&a.mountpoint, "user.bvfs.held-deletes").is_empty() {
            sh(
                &a.mountpoint,
                "setfattr -n user.bvfs.held-deletes -v confirm .",
            );
        }
        let got = match try_tree_digest(&b.mountpoint) {
            Ok(got) => got,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => panic!("reading B's tree: {e}"),
        };
        if got == expected {
            break;
        }
        if Instant::now() > deadline {
            let missing: Vec<_> = expected
                .iter()
                .filter(|e| !got.contains(e))
                .take(10)
                .collect();
            let extra: Vec<_> = got
                .iter()
                .filter(|e| !expected.contains(e))
                .take(10)
                .collect();
            panic!("B did not converge with A: missing {missing:?}, extra {extra:?}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn umount_right_after_a_write_syncs_it_first(s: Setup) {
    let a = s.mount(0, &[]);
    // Large enough that handing the content over (chunking it) outlasts the unmount itself: without
    // waiting for that, the daemon synced, said so, and exited with the file not uploaded.
    let data = random_bytes(256 << 20, 11);
    fs::write(a.path("just-written.bin"), &data).unwrap();
    let out = bvfs().arg("umount").arg(&a.mountpoint).output().unwrap();
    assert!(
        out.status.success(),
        "bvfs umount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        a.log().contains("everything is synced"),
        "the daemon exited without syncing:\n{}",
        a.log()
    );
    // The other device sees the whole content without the first one ever coming back.
    let b = s.mount(1, &[]);
    eventually(30, "the file reaches the other device", || {
        fs::metadata(b.path("just-written.bin")).is_ok_and(|m| m.len() == data.len() as u64)
    });
    assert!(fs::read(b.path("just-written.bin")).unwrap() == data);
}

//! The mount as a local POSIX filesystem (issue 9), on two real mounts of one namespace: permission
//! bits are kept, enforced by the kernel and synced; ownership is per device; modification times set
//! with utimensat (before, during or after writes) are kept to the nanosecond and synced, while
//! access and change times and directories' times follow POSIX on each device; `user.` extended
//! attributes sync with ext4's limits; over-long names are `ENAMETOOLONG` everywhere.

mod common;

use std::ffi::CString;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::mounts::*;
use common::*;

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Sets a path's atime and mtime (ns since the epoch) with utimensat.
fn utimens(path: &Path, atime_ns: i64, mtime_ns: i64) {
    let path = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let ts = |ns: i64| libc::timespec {
        tv_sec: ns.div_euclid(1_000_000_000),
        tv_nsec: ns.rem_euclid(1_000_000_000),
    };
    let times = [ts(atime_ns), ts(mtime_ns)];
    // SAFETY: a valid NUL-terminated path and two timespecs.
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, path.as_ptr(), times.as_ptr(), 0) };
    assert_eq!(rc, 0, "utimensat: {}", std::io::Error::last_os_error());
}

fn mtime_ns(path: &Path) -> i64 {
    let meta = fs::symlink_metadata(path).unwrap();
    meta.mtime() * 1_000_000_000 + meta.mtime_nsec()
}

fn ctime_ns(path: &Path) -> i64 {
    let meta = fs::symlink_metadata(path).unwrap();
    meta.ctime() * 1_000_000_000 + meta.ctime_nsec()
}

/// Runs `sh -c script` as the unprivileged user `nobody`; returns whether it succeeded.
fn as_nobody(script: &str) -> bool {
    Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sh",
            "-c",
            script,
        ])
        .output()
        .unwrap()
        .status
        .success()
}

fn synced(mount: &MountProcess, path: &str) {
    eventually(30, &format!("{path} synced"), || {
        xattr(&mount.path(path), "user.bvfs.sync") == "synced"
    });
}

#[test]
fn permission_bits_sync_are_enforced_and_ownership_stays_on_each_device() {
    let s = setup();
    let a = s.mount(0, &["--allow-other"]);
    let b = s.mount(1, &["--allow-other"]);
    fs::write(a.path("secret.key"), b"-----BEGIN KEY-----").unwrap();
    chmod(&a.path("secret.key"), 0o600);
    fs::create_dir(a.path("private")).unwrap();
    chmod(&a.path("private"), 0o700);
    fs::write(a.path("tool"), b"#!/bin/sh\n").unwrap();
    chmod(&a.path("tool"), 0o4750);
    fs::create_dir(a.path("shared")).unwrap();
    chmod(&a.path("shared"), 0o2775);
    assert_eq!(mode(&a.path("secret.key")), 0o600);
    assert_eq!(mode(&a.path("tool")), 0o4750);
    synced(&a, "");

    eventually(30, "B sees A's modes", || {
        b.path("shared").exists()
            && mode(&b.path("secret.key")) == 0o600
            && mode(&b.path("private")) == 0o700
            && mode(&b.path("tool")) == 0o4750
            && mode(&b.path("shared")) == 0o2775
    });
    // The kernel enforces them (default_permissions): another user cannot read the key or enter
    // the private directory, and can read what is open to all.
    let key = a.path("secret.key");
    assert!(!as_nobody(&format!("cat {}", key.display())));
    assert!(!as_nobody(&format!("ls {}", a.path("private").display())));
    fs::write(a.path("public.txt"), b"hello").unwrap();
    chmod(&a.path("public.txt"), 0o644);
    assert!(as_nobody(&format!(
        "cat {}",
        a.path("public.txt").display()
    )));
    assert!(
        !as_nobody(&format!("echo x >> {}", a.path("public.txt").display())),
        "others may not write a 0644 file"
    );

    // A change on B comes back to A.
    chmod(&b.path("secret.key"), 0o640);
    eventually(30, "A sees B's chmod", || {
        mode(&a.path("secret.key")) == 0o640
    });

    // A directory with the setgid bit gives its group to what is made in it.
    std::os::unix::fs::chown(a.path("shared"), None, Some(4321)).unwrap();
    fs::create_dir(a.path("shared/sub")).unwrap();
    fs::write(a.path("shared/file"), b"x").unwrap();
    assert_eq!(fs::metadata(a.path("shared/sub")).unwrap().gid(), 4321);
    assert_eq!(mode(&a.path("shared/sub")) & 0o2000, 0o2000);
    assert_eq!(fs::metadata(a.path("shared/file")).unwrap().gid(), 4321);

    // Ownership is per device: A's chown shows on A only.
    std::os::unix::fs::chown(a.path("public.txt"), Some(1234), Some(5678)).unwrap();
    let meta = fs::metadata(a.path("public.txt")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (1234, 5678));
    // A change made after the chown: once B has it, B has had every chance to take the chown too.
    fs::write(a.path("after-chown"), b"marker").unwrap();
    synced(&a, "");
    eventually(30, "B has the change made after the chown", || {
        fs::read(b.path("after-chown")).is_ok_and(|bytes| bytes == b"marker")
    });
    let meta = fs::metadata(b.path("public.txt")).unwrap();
    // SAFETY: getuid/getgid have no preconditions.
    let me = unsafe { (libc::getuid(), libc::getgid()) };
    assert_eq!((meta.uid(), meta.gid()), me);
}

fn thread_sleep(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

#[test]
fn modification_times_set_by_tools_are_kept_and_synced_to_the_nanosecond() {
    let s = setup();
    let a = s.mount(0, &[]);
    let b = s.mount(1, &[]);
    let when = 981_173_106_123_456_789; // 2001-02-03 04:05:06.123456789 UTC

    // Set after writing and closing (touch -d).
    fs::write(a.path("after.txt"), b"written, then dated").unwrap();
    utimens(&a.path("after.txt"), when, when);
    // Set while the file is still open, then closed (what cp -p and rsync do on some paths).
    {
        use std::io::Write;
        let mut file = fs::File::create(a.path("during.txt")).unwrap();
        file.write_all(b"dated while open").unwrap();
        file.flush().unwrap();
        utimens(&a.path("during.txt"), when + 1, when + 1);
    }
    // cp -p and tar x, against files of the native disk with known times.
    let native = tempfile::tempdir().unwrap();
    fs::write(native.path().join("copied.txt"), b"copied with cp -p").unwrap();
    utimens(&native.path().join("copied.txt"), when + 2, when + 2);
    let cp = Command::new("cp")
        .arg("-p")
        .arg(native.path().join("copied.txt"))
        .arg(a.path("copied.txt"))
        .status()
        .unwrap();
    assert!(cp.success());
    fs::create_dir(native.path().join("tree")).unwrap();
    fs::write(native.path().join("tree/untarred.txt"), b"from a tarball").unwrap();
    utimens(&native.path().join("tree/untarred.txt"), when + 3, when + 3);
    sh(
        native.path(),
        &format!(
            "tar --format=posix -cf t.tar tree && tar -C {} -xf t.tar",
            a.mountpoint.display()
        ),
    );

    let expected = [
        ("after.txt", when),
        ("during.txt", when + 1),
        ("copied.txt", when + 2),
        // tar keeps times to the microsecond or better (its format), ns here by pax headers.
        (
            "tree/untarred.txt",
            mtime_ns(&native.path().join("tree/untarred.txt")),
        ),
    ];
    for (path, ns) in expected {
        assert_eq!(mtime_ns(&a.path(path)), ns, "{path} on A");
    }
    synced(&a, "");
    // The times, not the names: a file's create may sync before the times set on it.
    eventually(30, "B has the files with their times", || {
        expected
            .iter()
            .all(|(path, ns)| fs::metadata(b.path(path)).is_ok() && mtime_ns(&b.path(path)) == *ns)
    });
    // Still so on A once the attribute cache has gone (the kernel asks again).
    sh(&a.mountpoint, "sync; echo 2 > /proc/sys/vm/drop_caches");
    for (path, ns) in expected {
        assert_eq!(mtime_ns(&a.path(path)), ns, "{path} on A, later");
    }
}

#[test]
fn change_times_and_directory_times_follow_posix_on_each_device() {
    let s = setup();
    let a = s.mount(0, &[]);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    assert!(
        mtime_ns(&a.mountpoint) > now - 3_600_000_000_000,
        "the root's mtime is when it was first held, not 1970"
    );
    fs::create_dir(a.path("dir")).unwrap();
    let dir_before = mtime_ns(&a.path("dir"));
    thread_sleep(20);
    fs::write(a.path("dir/file"), b"x").unwrap();
    let dir_after_create = mtime_ns(&a.path("dir"));
    assert!(
        dir_after_create > dir_before,
        "a create moves the parent's mtime"
    );
    assert_eq!(ctime_ns(&a.path("dir")), dir_after_create);

    let file_ctime = ctime_ns(&a.path("dir/file"));
    thread_sleep(20);
    chmod(&a.path("dir/file"), 0o640);
    let after_chmod = ctime_ns(&a.path("dir/file"));
    assert!(after_chmod > file_ctime, "chmod moves the ctime");
    thread_sleep(20);
    fs::rename(a.path("dir/file"), a.path("dir/renamed")).unwrap();
    assert!(
        ctime_ns(&a.path("dir/renamed")) > after_chmod,
        "rename moves the ctime"
    );
    assert!(
        mtime_ns(&a.path("dir")) > dir_after_create,
        "and the parent's mtime"
    );
    thread_sleep(20);
    let before_unlink = mtime_ns(&a.path("dir"));
    thread_sleep(20);
    fs::remove_file(a.path("dir/renamed")).unwrap();
    assert!(
        mtime_ns(&a.path("dir")) > before_unlink,
        "an unlink moves the parent's mtime"
    );
}

#[test]
fn user_extended_attributes_sync_with_ext4_limits() {
    let s = setup();
    let a = s.mount(0, &[]);
    let b = s.mount(1, &[]);
    fs::write(a.path("tagged.txt"), b"tagged").unwrap();
    let set = |path: &Path, name: &str, value: &str| {
        Command::new("setfattr")
            .args(["-n", name, "-v", value])
            .arg(path)
            .output()
            .unwrap()
    };
    assert!(
        set(&a.path("tagged.txt"), "user.color", "red")
            .status
            .success()
    );
    assert!(
        set(
            &a.path("tagged.txt"),
            "user.xdg.origin.url",
            "https://example.invalid/"
        )
        .status
        .success()
    );
    assert_eq!(xattr(&a.path("tagged.txt"), "user.color"), "red");
    // Limits and namespaces as ext4 answers them.
    let path = CString::new(a.path("tagged.txt").as_os_str().as_encoded_bytes()).unwrap();
    let big = vec![7u8; 64 * 1024 + 1];
    // SAFETY: valid NUL-terminated path and name, and a buffer of the given length.
    let rc = unsafe {
        libc::setxattr(
            path.as_ptr(),
            c"user.big".as_ptr(),
            big.as_ptr().cast(),
            big.len(),
            0,
        )
    };
    assert_eq!(rc, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::E2BIG)
    );
    let out = set(&a.path("tagged.txt"), "trusted.secret", "x");
    assert!(!out.status.success());
    synced(&a, "tagged.txt");
    // Both attributes: the two setfattr calls may reach the server in two rounds.
    let value_on_b = |name: &str| {
        Command::new("getfattr")
            .args(["--only-values", "-n", name])
            .arg(b.path("tagged.txt"))
            .output()
            .map(|o| o.stdout)
            .unwrap_or_default()
    };
    eventually(30, "B sees the attributes", || {
        value_on_b("user.color") == b"red"
            && value_on_b("user.xdg.origin.url") == b"https://example.invalid/"
    });
    // Removed on B, gone on A.
    let out = Command::new("setfattr")
        .args(["-x", "user.color"])
        .arg(b.path("tagged.txt"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    eventually(30, "A loses the attribute", || {
        Command::new("getfattr")
            .args(["--only-values", "-n", "user.color"])
            .arg(a.path("tagged.txt"))
            .output()
            .is_ok_and(|o| !o.status.success())
    });
}

#[test]
fn names_over_255_bytes_are_enametoolong_everywhere() {
    let s = setup();
    let a = s.mount(0, &[]);
    let long = "n".repeat(256);
    let path = a.path(&long);
    let code = |r: std::io::Result<()>| r.unwrap_err().raw_os_error();
    assert_eq!(
        code(fs::metadata(&path).map(drop)),
        Some(libc::ENAMETOOLONG)
    );
    assert_eq!(code(fs::write(&path, b"x")), Some(libc::ENAMETOOLONG));
    assert_eq!(code(fs::remove_file(&path)), Some(libc::ENAMETOOLONG));
    assert_eq!(code(fs::create_dir(&path)), Some(libc::ENAMETOOLONG));
    assert_eq!(
        code(fs::set_permissions(
            &path,
            fs::Permissions::from_mode(0o600)
        )),
        Some(libc::ENAMETOOLONG)
    );
    fs::write(a.path("short"), b"x").unwrap();
    assert_eq!(
        code(fs::rename(a.path("short"), &path)),
        Some(libc::ENAMETOOLONG)
    );
    // 255 bytes is fine.
    fs::write(a.path(&"n".repeat(255)), b"x").unwrap();
}

#[test]
fn special_files_work_here_and_never_sync() {
    let s = setup();
    let a = s.mount(0, &[]);
    let b = s.mount(1, &[]);
    fs::create_dir(a.path("run")).unwrap();
    sh(&a.mountpoint, "mkfifo run/pipe");
    let socket = std::os::unix::net::UnixListener::bind(a.path("run/socket")).unwrap();
    fs::write(a.path("run/regular.txt"), b"synced").unwrap();
    use std::os::unix::fs::FileTypeExt;
    assert!(
        fs::symlink_metadata(a.path("run/pipe"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    assert!(
        fs::symlink_metadata(a.path("run/socket"))
            .unwrap()
            .file_type()
            .is_socket()
    );
    // (Their sync state cannot be read as `user.bvfs.sync`: Linux allows `user.` attributes only on
    // regular files and directories, and answers for special files itself.)
    // The FIFO works: a writer and a reader meet through it.
    let writer = {
        let pipe = a.path("run/pipe");
        std::thread::spawn(move || fs::write(pipe, b"through the pipe").unwrap())
    };
    assert_eq!(fs::read(a.path("run/pipe")).unwrap(), b"through the pipe");
    writer.join().unwrap();
    // So does the socket.
    let client = std::os::unix::net::UnixStream::connect(a.path("run/socket")).unwrap();
    drop(client);
    drop(socket);

    synced(&a, "");
    eventually(30, "B has the regular file", || {
        b.path("run/regular.txt").exists()
    });
    let on_b: Vec<_> = fs::read_dir(b.path("run"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(on_b, ["regular.txt"], "special files stay on A");
    // They are removed, renamed and listed like any entry; a directory holding one is not empty.
    assert_eq!(
        fs::remove_dir(a.path("run")).unwrap_err().raw_os_error(),
        Some(libc::ENOTEMPTY)
    );
    fs::rename(a.path("run/pipe"), a.path("run/pipe2")).unwrap();
    fs::remove_file(a.path("run/pipe2")).unwrap();
    fs::remove_file(a.path("run/socket")).unwrap();
    fs::remove_file(a.path("run/regular.txt")).unwrap();
    fs::remove_dir(a.path("run")).unwrap();
}

#[test]
fn rsync_finds_nothing_to_copy_on_its_second_run() {
    let s = setup();
    let a = s.mount(0, &[]);
    let b = s.mount(1, &[]);
    let native = tempfile::tempdir().unwrap();
    for i in 0..20 {
        let dir = native.path().join(format!("d{}", i % 4));
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join(format!("f{i}.txt")),
            format!("file {i}\n").repeat(i + 1),
        )
        .unwrap();
    }
    let src = format!("{}/", native.path().display());
    let rsync = |dest: &Path| {
        let out = Command::new("rsync")
            .args(["-a", "--itemize-changes", &src])
            .arg(dest)
            .output()
            .unwrap();
        assert!(out.status.success(), "rsync: {out:?}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with(">f"))
            .count()
    };
    assert_eq!(rsync(&a.mountpoint), 20, "the first run copies everything");
    assert_eq!(
        rsync(&a.mountpoint),
        0,
        "the second finds every file up to date"
    );
    synced(&a, "");
    // Every file with the size and time rsync compares (as A has them), not only the last name: a
    // file's create may sync before the time rsync sets on it.
    eventually(30, "B has the files with their sizes and times", || {
        (0..20).all(|i| {
            let path = format!("d{}/f{i}.txt", i % 4);
            let want = fs::metadata(a.path(&path)).unwrap();
            fs::metadata(b.path(&path)).is_ok_and(|got| {
                got.len() == want.len() && mtime_ns(&b.path(&path)) == mtime_ns(&a.path(&path))
            })
        })
    });
    assert_eq!(
        rsync(&b.mountpoint),
        0,
        "and so does a run into the other device"
    );
}

/// `fallocate` mode 0 extends the file with zeros (synced like written bytes), `KEEP_SIZE` reserves
/// without changing the size, and modes bvfs does not do answer `EOPNOTSUPP`.
#[test]
fn fallocate_reserves_extends_and_refuses_other_modes_clearly() {
    use std::os::fd::AsRawFd;
    let s = setup();
    let a = s.mount(0, &[]);
    let b = s.mount(1, &[]);
    let path = a.path("reserved.bin");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .unwrap();
    let fallocate = |mode: i32, offset: i64, len: i64| {
        // SAFETY: an open descriptor; fallocate only reads its arguments.
        match unsafe { libc::fallocate(file.as_raw_fd(), mode, offset, len) } {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error().raw_os_error()),
        }
    };
    fallocate(0, 0, 1 << 20).unwrap();
    assert_eq!(fs::metadata(&path).unwrap().len(), 1 << 20);
    fallocate(libc::FALLOC_FL_KEEP_SIZE, 0, 4 << 20).unwrap();
    assert_eq!(fs::metadata(&path).unwrap().len(), 1 << 20);
    assert_eq!(
        fallocate(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            0,
            4096
        ),
        Err(Some(libc::EOPNOTSUPP))
    );
    drop(file);
    synced(&a, "reserved.bin");
    eventually(30, "the extended file on B", || {
        fs::read(b.path("reserved.bin"))
            .is_ok_and(|d| d.len() == 1 << 20 && d.iter().all(|&x| x == 0))
    });
}

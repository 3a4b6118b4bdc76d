//! The ProjFS projection layer (`bvfs_vfs::projection`) driven the way ProjFS drives a provider,
//! against a real `bvfs serve`, with a second device that is a real FUSE mount.
//!
//! Windows cannot run here, so a harness plays ProjFS: it opens enumeration sessions and fills
//! buffers of bounded size, asks for placeholder info and file ranges, keeps the files an
//! application wrote in a directory standing for the virtualization root (ProjFS's "full" files),
//! and sends the notifications ProjFS sends around creates, closes after writing, renames and
//! deletes, asking first where ProjFS asks first. The engine under it runs with the Windows name
//! policy and syncs when the harness says, so the brake's arithmetic is exact.

mod common;

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bvfs_engine::cache::CacheUsage;
use bvfs_engine::chunking::{ChunkParams, Manifest, chunk_bytes};
use bvfs_engine::model::NamePolicy;
use bvfs_engine::planner::Report;
use bvfs_engine::remote::{GrpcRemote, RemoteConfig};
use bvfs_engine::{Engine, EngineConfig};
use bvfs_proto::v1::NodeKind as ProtoKind;
use bvfs_vfs::projection::enumeration::BATCH;
use bvfs_vfs::projection::names::compare;
use bvfs_vfs::projection::{EnumerationId, EnumerationRequest, ProjectedEntry, Projection, Veto};
use bvfs_vfs::{Errno, FileKind, Vfs, VfsOptions};
use common::mounts::{random_bytes, xattr};
use common::*;

/// A device that sees the namespace through the projection, as a Windows machine would.
struct WindowsDevice {
    projection: Projection,
    engine: Arc<Engine>,
    runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

impl WindowsDevice {
    fn open(url: &str, token: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let _context = runtime.enter();
        let remote = Arc::new(GrpcRemote::new(&RemoteConfig::new(url, token)).unwrap());
        let mut config = EngineConfig::new(dir.path().join("state"), "windows");
        config.names = NamePolicy::Windows;
        let engine = Engine::open(config, remote).unwrap();
        let options = VfsOptions {
            read_only: false,
            uid: 0,
            gid: 0,
        };
        let vfs = Arc::new(Vfs::new(engine.clone(), runtime.handle().clone(), options));
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        Self {
            projection: Projection::new(vfs, root).unwrap(),
            engine,
            runtime,
            _dir: dir,
        }
    }

    /// Runs sync rounds until there is nothing left to do.
    fn sync(&self) {
        self.runtime
            .block_on(self.engine.sync_until_idle(20))
            .unwrap();
    }

    fn cached(&self) -> CacheUsage {
        self.engine.cache().usage()
    }

    /// Where ProjFS keeps the full file of `path` (a ProjFS path, `\`-separated).
    fn disk(&self, path: &str) -> PathBuf {
        let mut out = self.projection.root().to_path_buf();
        out.extend(path.split('\\'));
        out
    }

    /// An application makes a directory: it exists on disk, ProjFS says `NEW_FILE_CREATED`.
    fn mkdir(&self, path: &str) {
        std::fs::create_dir_all(self.disk(path)).unwrap();
        self.projection.created(path, true).unwrap();
    }

    /// An application writes `data` to `path` and closes it: the bytes are in the full file on
    /// disk; ProjFS says `NEW_FILE_CREATED` (for a new file) and `FILE_HANDLE_CLOSED_FILE_MODIFIED`.
    fn write(&self, path: &str, data: &[u8]) {
        let disk = self.disk(path);
        let new = !disk.exists();
        std::fs::write(&disk, data).unwrap();
        if new {
            self.projection.created(path, false).unwrap();
        }
        self.projection.modified(path).unwrap();
    }

    /// An application renames `from` to `to` (`None`: outside the root): `PRE_RENAME`, the rename
    /// on disk if it went through, then `FILE_RENAMED`.
    fn rename(&self, from: Option<&str>, to: Option<&str>, is_dir: bool) -> Result<(), Veto> {
        self.projection.pre_rename(from, to)?;
        if let (Some(from), Some(to)) = (from, to)
            && self.disk(from).exists()
        {
            std::fs::rename(self.disk(from), self.disk(to)).unwrap();
        }
        self.projection.renamed(from, to, is_dir).unwrap();
        Ok(())
    }

    /// An application deletes `path`: `PRE_DELETE`, the delete on disk if it went through, then
    /// `FILE_HANDLE_CLOSED_FILE_DELETED`.
    fn delete(&self, path: &str) -> Result<(), Veto> {
        self.projection.pre_delete(path)?;
        let disk = self.disk(path);
        if disk.is_dir() {
            std::fs::remove_dir_all(&disk).unwrap();
        } else if disk.exists() {
            std::fs::remove_file(&disk).unwrap();
        }
        self.projection.deleted(path).unwrap();
        Ok(())
    }

    /// Every entry below `dir` as `(path with /, kind, size)`, through whole listings.
    fn tree(&self, dir: &str) -> BTreeSet<(String, &'static str, u64)> {
        let mut out = BTreeSet::new();
        let mut stack = vec![dir.to_string()];
        while let Some(dir) = stack.pop() {
            for entry in self.projection.list_all(&dir).unwrap() {
                let path = match dir.as_str() {
                    "" => entry.name.clone(),
                    _ => format!("{dir}\\{}", entry.name),
                };
                let (kind, size) = match entry.kind {
                    FileKind::Directory => {
                        stack.push(path.clone());
                        (DIR, 0)
                    }
                    FileKind::File => (FILE, entry.size),
                    FileKind::Symlink => ("symlink", 0),
                    _ => ("special", 0),
                };
                out.insert((path.replace('\\', "/"), kind, size));
            }
        }
        out
    }
}

const DIR: &str = "dir";
const FILE: &str = "file";

/// Every entry below `dir` on a mount as `(path with /, kind, size)`.
fn mount_tree(dir: &Path) -> BTreeSet<(String, &'static str, u64)> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            let path = entry.path();
            let relative = path
                .strip_prefix(dir)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let (kind, size) = if meta.is_dir() {
                stack.push(path);
                (DIR, 0)
            } else {
                (FILE, meta.len())
            };
            out.insert((relative, kind, size));
        }
    }
    out
}

/// A server, a FUSE device ("linux") and a projection device ("windows") of one user.
struct World {
    _dir: tempfile::TempDir,
    server: ServerProcess,
    linux_token: String,
    windows: WindowsDevice,
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let linux_token = add_user(&data, "alice", "linux");
    let windows_token = add_user(&data, "alice", "windows");
    let server = ServerProcess::start(&data, &[]);
    let windows = WindowsDevice::open(&server.url, &windows_token);
    World {
        _dir: dir,
        server,
        linux_token,
        windows,
    }
}

impl World {
    fn mount_linux(&self) -> MountProcess {
        MountProcess::start(&self.server.url, &self.linux_token, "linux", &[])
    }
}

/// Waits until the FUSE device has nothing left to sync.
fn linux_synced(mount: &MountProcess) {
    eventually(60, "the FUSE device to sync", || {
        xattr(&mount.mountpoint, "user.bvfs.sync") == "synced"
    });
}

const BIG: usize = 100_000;

fn big_name(i: usize) -> String {
    // Mixed case, so ProjFS's case-insensitive order differs from the engine's byte order.
    if i.is_multiple_of(2) {
        format!("file-{i:06}.txt")
    } else {
        format!("File-{i:06}.TXT")
    }
}

/// Creates `Big` with `BIG` files of `content` through the server's API, 10,000 creates a commit.
fn create_big_directory(url: &str, token: &str, content: &[u8]) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut api = client(url, token).await;
        put_blob(&mut api, content).await;
        let dir = new_id();
        commit(&mut api, vec![mkdir(&dir, &root(), "Big")])
            .await
            .unwrap();
        for start in (0..BIG).step_by(10_000) {
            let ops = (start..start + 10_000)
                .map(|i| {
                    create(
                        &new_id(),
                        &dir,
                        &big_name(i),
                        ProtoKind::File,
                        file_attrs(content),
                    )
                })
                .collect();
            commit(&mut api, ops).await.unwrap();
        }
    });
}

/// Enumerates `dir` the way ProjFS does, through a buffer that takes `buffer` entries a call:
/// returns the entries and how many `Get` calls it took.
fn enumerate(
    projection: &Projection,
    id: u128,
    dir: &str,
    search: Option<&str>,
    buffer: usize,
) -> (Vec<ProjectedEntry>, usize) {
    let id = EnumerationId(id);
    projection.start_enumeration(id, dir).unwrap();
    let mut out = Vec::new();
    let mut calls = 0;
    loop {
        calls += 1;
        let before = out.len();
        let request = EnumerationRequest {
            search,
            ..Default::default()
        };
        let taken = projection
            .get_enumeration(id, request, |entry| {
                if out.len() - before == buffer {
                    return false;
                }
                out.push(entry.clone());
                true
            })
            .unwrap();
        assert_eq!(taken, out.len() - before);
        assert!(taken <= buffer.min(BATCH), "a batch of {taken}");
        if taken == 0 {
            break;
        }
    }
    projection.end_enumeration(id).unwrap();
    (out, calls)
}

#[test]
fn a_100k_directory_enumerates_in_pages_downloads_nothing_and_the_brake_holds_deletes() {
    let world = world();
    let windows = &world.windows;
    let started = Instant::now();
    let content = random_bytes(4096, 7);
    let token = add_user(&world.server.data, "alice", "setup");
    create_big_directory(&world.server.url, &token, &content);
    eprintln!("created {BIG} entries in {:?}", started.elapsed());
    windows.sync();
    eprintln!("the projection device synced after {:?}", started.elapsed());

    // One session, a buffer of 300 entries a call: every entry once, in ProjFS order.
    let (entries, calls) = enumerate(&windows.projection, 1, "big", None, 300);
    eprintln!(
        "enumerated {} entries in {calls} calls after {:?}",
        entries.len(),
        started.elapsed()
    );
    assert_eq!(entries.len(), BIG);
    assert_eq!(calls, BIG.div_ceil(300) + 1);
    for pair in entries.windows(2) {
        assert_eq!(
            compare(&pair[0].name, &pair[1].name),
            std::cmp::Ordering::Less,
            "{} before {}",
            pair[0].name,
            pair[1].name
        );
    }
    let names: BTreeSet<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names.len(), BIG);
    assert!(
        entries
            .iter()
            .all(|e| e.kind == FileKind::File && e.size == 4096)
    );
    // Listing and placeholder info read no content.
    let info = windows
        .projection
        .placeholder_info(r"BIG\FILE-000001.txt")
        .unwrap();
    assert_eq!((info.name.as_str(), info.size), ("File-000001.TXT", 4096));
    // A name in another case, or one that is not there (Explorer probes for desktop.ini), costs
    // index seeks, not a scan of the 100,000 entries.
    let lookups = Instant::now();
    for i in 0..500 {
        let hit = windows
            .projection
            .placeholder_info(&format!(r"BIG\FILE-{:06}.TXT", 2 * i));
        assert_eq!(hit.unwrap().name, big_name(2 * i));
        let miss = windows
            .projection
            .placeholder_info(&format!(r"Big\desktop{i}.ini"));
        assert_eq!(miss.map(drop), Err(Errno::ENOENT));
    }
    assert!(
        lookups.elapsed().as_secs_f64() < 2.0,
        "{:?}",
        lookups.elapsed()
    );
    assert_eq!(windows.cached().bytes, 0, "enumeration hydrated bytes");
    assert_eq!(windows.cached().chunks, 0);

    // A search expression is case-insensitive and kept for the session; a restart takes a new one.
    let id = EnumerationId(2);
    windows.projection.start_enumeration(id, "Big").unwrap();
    let mut found = Vec::new();
    let get =
        |search: Option<&str>, restart_scan: bool, single_entry: bool, found: &mut Vec<String>| {
            let request = EnumerationRequest {
                search,
                restart_scan,
                single_entry,
            };
            windows
                .projection
                .get_enumeration(id, request, |e| {
                    found.push(e.name.clone());
                    true
                })
                .unwrap()
        };
    assert_eq!(get(Some("FILE-00000?.*"), false, true, &mut found), 1);
    assert_eq!(get(Some("ignored*"), false, false, &mut found), 9);
    assert_eq!(get(None, false, false, &mut found), 0);
    let expected: Vec<String> = (0..10).map(big_name).collect();
    assert_eq!(found, expected);
    found.clear();
    assert_eq!(get(Some("<.TXT"), true, true, &mut found), 1);
    assert_eq!(found, ["file-000000.txt"]);
    found.clear();
    assert_eq!(get(Some("*"), true, false, &mut found), BATCH);
    assert_eq!(found[..2], ["file-000000.txt", "File-000001.TXT"]);
    windows.projection.end_enumeration(id).unwrap();
    assert_eq!(
        windows
            .projection
            .get_enumeration(id, EnumerationRequest::default(), |_| true),
        Err(Errno::EINVAL)
    );
    assert_eq!(windows.projection.open_enumerations(), 0);

    // The brake: 500 deletes may wait for the server; the 501st is refused before it happens.
    for i in 0..500 {
        windows.delete(&format!(r"Big\{}", big_name(i))).unwrap();
    }
    let refused = windows.delete(&format!(r"Big\{}", big_name(500)));
    assert_eq!(
        refused,
        Err(Veto::Brake {
            pending: 500,
            adding: 1,
            held: 0
        })
    );
    eprintln!("500 deletes and a refusal after {:?}", started.elapsed());
    windows.sync();
    assert!(windows.engine.held_deletes().unwrap().is_empty());
    // The server took them: deletes go through again.
    windows.delete(&format!(r"Big\{}", big_name(500))).unwrap();
    windows.sync();

    // A real FUSE mount of the same namespace converges: the same 99,499 names.
    let linux = world.mount_linux();
    let listing = || -> BTreeSet<String> {
        std::fs::read_dir(linux.path("Big"))
            .map(|dir| {
                dir.map(|e| e.unwrap().file_name().into_string().unwrap())
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut on_linux = BTreeSet::new();
    eventually(60, "the FUSE device to pull the namespace", || {
        on_linux = listing();
        on_linux.len() == BIG - 501
    });
    let projected: BTreeSet<String> = windows
        .projection
        .list_all("Big")
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(on_linux.len(), BIG - 501);
    assert_eq!(on_linux, projected);
    assert_eq!(windows.cached().bytes, 0, "deletes hydrated bytes");
    eprintln!("converged after {:?}", started.elapsed());
}

#[test]
fn reads_writes_renames_and_deletes_converge_with_a_fuse_device() {
    let world = world();
    let windows = &world.windows;
    let linux = world.mount_linux();

    // The FUSE device writes an 8 MiB file and a note; the projection sees placeholders.
    let big = random_bytes(8 << 20, 11);
    std::fs::write(linux.path("big.bin"), &big).unwrap();
    std::fs::write(linux.path("notes.txt"), b"from linux").unwrap();
    linux_synced(&linux);
    windows.sync();
    let info = windows.projection.placeholder_info("BIG.BIN").unwrap();
    assert_eq!(
        (info.name.as_str(), info.size),
        ("big.bin", big.len() as u64)
    );
    assert_eq!(windows.cached().bytes, 0);

    // A range read fetches exactly the chunks it touches.
    let manifest = chunk_bytes(&big, ChunkParams::default());
    let touched = |offset: u64, len: u64| {
        Manifest::chunks_covering(&manifest.offsets(), manifest.size, offset, len).len() as u64
    };
    let (offset, len) = (3_000_000u64, 4096u32);
    let bytes = windows.projection.read("big.bin", offset, len).unwrap();
    assert_eq!(bytes, big[offset as usize..][..len as usize]);
    let first = touched(offset, u64::from(len));
    assert_eq!(windows.cached().chunks, first);
    // A longer range streamed the way the Windows adapter hands it to ProjFS.
    let (offset, len) = (5_000_000u64, 300_000u64);
    let mut streamed = Vec::new();
    windows
        .projection
        .file_data("big.bin")
        .unwrap()
        .stream(offset, len)
        .read_to_end(&mut streamed)
        .unwrap();
    assert_eq!(streamed, big[offset as usize..][..len as usize]);
    let cached = windows.cached();
    assert_eq!(cached.chunks, first + touched(offset, len));
    assert!(cached.bytes < big.len() as u64 / 4, "{cached:?}");
    eprintln!(
        "range reads cached {} of {} chunks ({} of {} bytes)",
        cached.chunks,
        manifest.chunks.len(),
        cached.bytes,
        big.len()
    );

    // Write-then-close: a new directory and file reach the other device.
    windows.mkdir("Docs");
    windows.write(r"Docs\report.txt", b"first draft");
    windows.sync();
    linux_synced(&linux);
    eventually(30, "the report on the FUSE device", || {
        std::fs::read(linux.path("Docs/report.txt")).is_ok_and(|b| b == b"first draft")
    });

    // An edit of a synced file cannot be deleted before the server has it; then it can.
    windows.write("notes.txt", b"edited on windows");
    assert_eq!(
        windows.delete("NOTES.TXT"),
        Err(Veto::UnsyncedEdit {
            path: "NOTES.TXT".into()
        })
    );
    assert_eq!(
        windows.rename(Some("notes.txt"), None, false),
        Err(Veto::UnsyncedEdit {
            path: "notes.txt".into()
        })
    );
    // A file the server never saw goes at once, as temporary files must.
    windows.write("~scratch.tmp", b"temporary");
    windows.delete("~scratch.tmp").unwrap();
    windows.sync();
    eventually(30, "the edit on the FUSE device", || {
        std::fs::read(linux.path("notes.txt")).is_ok_and(|b| b == b"edited on windows")
    });
    windows.delete("notes.txt").unwrap();

    // Renames, with a case-only one; a move out of the root (the Recycle Bin) and one into it.
    windows
        .rename(Some(r"Docs\report.txt"), Some(r"Docs\Final.TXT"), false)
        .unwrap();
    windows
        .rename(Some(r"docs\final.txt"), Some(r"Docs\FINAL.txt"), false)
        .unwrap();
    assert_eq!(
        windows.projection.read(r"docs\final.TXT", 0, 100).unwrap(),
        b"first draft"
    );
    windows.rename(Some("big.bin"), None, false).unwrap();
    let outside = windows.projection.root().with_file_name("outside");
    std::fs::create_dir_all(outside.join("Imported").join("sub")).unwrap();
    std::fs::write(outside.join("Imported").join("a.txt"), b"a").unwrap();
    std::fs::write(outside.join("Imported").join("sub").join("b.txt"), b"bb").unwrap();
    std::fs::rename(outside.join("Imported"), windows.disk("Imported")).unwrap();
    windows.rename(None, Some("Imported"), true).unwrap();
    assert_eq!(
        windows.projection.pre_hardlink(r"Imported\a.txt"),
        Err(Veto::HardLink)
    );
    windows.sync();
    linux_synced(&linux);
    // "Synced" says the FUSE device has nothing left to send, not that it has pulled everything:
    // wait until it shows the renames, or the write below races them (it would create a second
    // FINAL.txt, which correctly becomes a conflicted copy).
    eventually(30, "the FUSE device shows the renames and moves", || {
        std::fs::read_dir(linux.path("Docs")).is_ok_and(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name())
                .collect::<Vec<_>>()
                == ["FINAL.txt"]
        }) && linux.path("Imported/sub/b.txt").exists()
    });

    // A change made on the FUSE device shows through the projection, and its path is reported
    // stale (ProjFS's cached view of it would need PrjUpdateFileIfNeeded).
    windows.projection.take_stale_paths();
    std::fs::write(linux.path("Docs/FINAL.txt"), b"second draft, from linux").unwrap();
    linux_synced(&linux);
    eventually(30, "the remote edit on the projection device", || {
        windows.sync();
        windows.projection.read(r"Docs\FINAL.txt", 0, 100).unwrap() == b"second draft, from linux"
    });
    assert!(
        windows
            .projection
            .take_stale_paths()
            .contains(&r"Docs\FINAL.txt".to_string())
    );

    // Both devices show the same namespace.
    let expected: BTreeSet<(String, &'static str, u64)> = [
        ("Docs", DIR, 0),
        ("Docs/FINAL.txt", FILE, 24),
        ("Imported", DIR, 0),
        ("Imported/a.txt", FILE, 1),
        ("Imported/sub", DIR, 0),
        ("Imported/sub/b.txt", FILE, 2),
    ]
    .into_iter()
    .map(|(p, k, s)| (p.to_string(), k, s))
    .collect();
    assert_eq!(windows.tree(""), expected);
    eventually(30, "the same namespace on the FUSE device", || {
        mount_tree(&linux.mountpoint) == expected
    });
}

#[test]
fn names_windows_cannot_show_stay_remote_only_and_are_reported() {
    let world = world();
    let windows = &world.windows;
    let linux = world.mount_linux();
    let invalid = [
        "CON",
        "aux.txt",
        "a:b",
        "what?",
        "trailing.",
        "trailing ",
        "tab\there",
    ];
    for name in invalid
        .iter()
        .chain(&["ok.txt", "Readme.md", "README.md", "Été.txt"])
    {
        std::fs::write(linux.path(name), name.as_bytes()).unwrap();
    }
    std::fs::create_dir(linux.path("bad|dir")).unwrap();
    std::fs::write(linux.path("bad|dir/child.txt"), b"child").unwrap();
    linux_synced(&linux);
    windows.sync();

    // Only names Windows can show reach ProjFS; of two names equal but for case, one.
    let shown: Vec<String> = windows
        .projection
        .list_all("")
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(shown.len(), 3, "{shown:?}");
    assert_eq!(shown[0], "ok.txt");
    assert!(["Readme.md", "README.md"].contains(&shown[1].as_str()));
    assert_eq!(shown[2], "Été.txt");
    assert_eq!(
        windows.projection.read("éTÉ.TXT", 0, 100).unwrap(),
        "Été.txt".as_bytes()
    );
    assert_eq!(
        windows.projection.placeholder_info("con").map(drop),
        Err(Errno::ENOENT)
    );
    assert_eq!(
        windows
            .projection
            .placeholder_info("readme.MD")
            .unwrap()
            .name,
        shown[1]
    );

    // The planner reports each of them.
    let reported = windows.projection.remote_only();
    let mut invalid_names: Vec<&str> = reported
        .iter()
        .filter_map(|r| match r {
            Report::InvalidName { name, .. } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    invalid_names.sort();
    let mut expected: Vec<&str> = invalid.iter().copied().chain(["bad|dir"]).collect();
    expected.sort();
    assert_eq!(invalid_names, expected);
    let collisions: Vec<&str> = reported
        .iter()
        .filter_map(|r| match r {
            Report::NameCollision { name, .. } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(collisions.len(), 1);
    assert_ne!(collisions[0], shown[1]);

    // Windows cannot make such names; the projection refuses them too.
    assert_eq!(windows.projection.created("x<y", false), Err(Errno::EINVAL));

    // Editing here leaves the remote-only names alone on the server and the other device.
    windows.write("ok.txt", b"edited on windows");
    windows.sync();
    eventually(30, "the edit on the FUSE device", || {
        std::fs::read(linux.path("ok.txt")).is_ok_and(|b| b == b"edited on windows")
    });
    for name in invalid
        .iter()
        .chain(&["Readme.md", "README.md", "Été.txt", "bad|dir/child.txt"])
    {
        assert!(
            linux.path(name).exists(),
            "{name} is gone from the FUSE device"
        );
    }
}

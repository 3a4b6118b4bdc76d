//! fsx-style randomized runs on two real mounts against a real `bvfs serve` process (issue 8), each
//! compared with a model of what must be there:
//!
//! - [`random_operations_on_two_mounts_match_the_model`]: random writes at random offsets, truncates
//!   up and down, shared-mmap writes, several handles per file, fsyncs, reads checked against the
//!   model, fresh reads on the other device (which must always see a whole version, never a mix),
//!   files changing owner between epochs (remote edits), server crashes and restarts, and `kill -9`
//!   of a mount daemon followed by a remount. `BVFS_FSX_OPS` sets the number of operations (default
//!   3,000; the long mode is `BVFS_FSX_OPS=100000`), `BVFS_FSX_SEED` replays one run.
//! - [`killing_the_mount_daemon_never_loses_an_fsynced_byte`]: `kill -9` of a mount daemon during
//!   writes, uploads and downloads, then a remount: every fsynced byte is there, on both devices, and
//!   no device has a conflicted copy of its own edits. `BVFS_KILL9_ROUNDS` sets the number of kills
//!   (default 20; the long mode is 200).

mod common;

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::mounts::*;
use common::*;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const FILES: [&str; 4] = ["f0", "f1", "f2", "f3"];
const DEVICES: [&str; 2] = ["laptop", "desktop"];
/// Files stay under this size, so that comparing whole files stays cheap.
const MAX_LEN: u64 = 3 * MIB;
const PAGE: u64 = 4096;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn hash(bytes: &[u8]) -> [u8; 32] {
    *blake3::hash(bytes).as_bytes()
}

/// The names in the root of a mount, sorted.
fn root_names(mount: &MountProcess) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(&mount.mountpoint)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// One open handle of the test on a file.
struct Handle {
    file: File,
}

/// The run: two mounts, the model and every version each file has had.
struct Fsx {
    // (Dropped in this order: the mounts unmount while their server still runs.)
    mounts: [MountProcess; 2],
    setup: Setup,
    rng: StdRng,
    seed: u64,
    /// What each file holds now (as its owner wrote it).
    model: BTreeMap<&'static str, Vec<u8>>,
    /// Every state each file has had at an operation's end: what a reader may see.
    versions: BTreeMap<&'static str, HashSet<[u8; 32]>>,
    /// Who writes each file this epoch.
    owner: BTreeMap<&'static str, usize>,
    /// Open handles, per (device, file).
    handles: BTreeMap<(usize, &'static str), Vec<Handle>>,
    /// Files created so far (each on its first open).
    created: HashSet<&'static str>,
    trace: Vec<String>,
    counts: BTreeMap<&'static str, u64>,
}

impl Fsx {
    fn new(seed: u64) -> Self {
        let setup = setup();
        let mounts = [setup.mount(0, &[]), setup.mount(1, &[])];
        let mut model = BTreeMap::new();
        let mut versions = BTreeMap::new();
        let mut owner = BTreeMap::new();
        for name in FILES {
            model.insert(name, Vec::new());
            versions.insert(name, HashSet::from([hash(b"")]));
            owner.insert(name, 0);
        }
        Self {
            setup,
            mounts,
            rng: StdRng::seed_from_u64(seed),
            seed,
            model,
            versions,
            owner,
            handles: BTreeMap::new(),
            created: HashSet::new(),
            trace: Vec::new(),
            counts: BTreeMap::new(),
        }
    }

    fn fail(&self, what: String) -> ! {
        let last: Vec<&String> = self.trace.iter().rev().take(40).collect();
        panic!(
            "fsx seed {}: {what}\n  last steps (newest first):\n    {}\n  replay with BVFS_FSX_SEED={} cargo test --test mount_fsx random_operations -- --nocapture",
            self.seed,
            last.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n    "),
            self.seed
        )
    }

    fn note(&mut self, kind: &'static str, what: String) {
        *self.counts.entry(kind).or_default() += 1;
        self.trace.push(what);
    }

    fn record(&mut self, name: &'static str) {
        let h = hash(&self.model[name]);
        self.versions.get_mut(name).unwrap().insert(h);
    }

    fn open(&mut self, d: usize, name: &'static str, truncate: bool) {
        let path = self.mounts[d].path(name);
        let file = match OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(truncate)
            .open(&path)
        {
            Ok(file) => file,
            Err(e) => self.fail(format!(
                "device {d}: open {name} (truncate {truncate}): {e}"
            )),
        };
        self.created.insert(name);
        if truncate {
            self.model.get_mut(name).unwrap().clear();
            self.record(name);
        }
        self.handles
            .entry((d, name))
            .or_default()
            .push(Handle { file });
        self.note(
            "open",
            format!("{d}: open {name}{}", if truncate { " O_TRUNC" } else { "" }),
        );
    }

    /// A handle of `d` on `name`, opened if it has none (or, sometimes, another one).
    fn handle(&mut self, d: usize, name: &'static str) -> usize {
        let open = self.handles.get(&(d, name)).map_or(0, Vec::len);
        if open == 0 || (open < 3 && self.rng.random_bool(0.1)) {
            let truncate = self.rng.random_bool(0.05);
            self.open(d, name, truncate);
        }
        let open = self.handles[&(d, name)].len();
        self.rng.random_range(0..open)
    }

    fn close_all(&mut self, d: usize, name: &'static str) {
        for handle in self.handles.remove(&(d, name)).unwrap_or_default() {
            if let Err(e) = handle.file.sync_all() {
                self.fail(format!("device {d}: fsync {name} before close: {e}"));
            }
        }
    }

    fn random_data(&mut self, len: usize) -> Vec<u8> {
        random_bytes(len, self.rng.random())
    }

    /// One operation by the owner of a random file.
    fn step(&mut self) {
        let name = FILES[self.rng.random_range(0..FILES.len())];
        let d = self.owner[name];
        let len = self.model[name].len() as u64;
        match self.rng.random_range(0..100) {
            0..=34 => {
                let i = self.handle(d, name);
                let len = self.model[name].len() as u64;
                let offset = self.rng.random_range(0..=len.min(MAX_LEN - 1));
                let max = if self.rng.random_bool(0.1) {
                    MIB
                } else {
                    64 * KIB
                };
                let size = self.rng.random_range(1..=max).min(MAX_LEN - offset);
                let data = self.random_data(size as usize);
                if let Err(e) = self.handles[&(d, name)][i].file.write_all_at(&data, offset) {
                    self.fail(format!("device {d}: write {name} at {offset}+{size}: {e}"));
                }
                let model = self.model.get_mut(name).unwrap();
                let end = (offset + size) as usize;
                if model.len() < end {
                    model.resize(end, 0);
                }
                model[offset as usize..end].copy_from_slice(&data);
                self.record(name);
                self.note("write", format!("{d}: write {name} at {offset}+{size}"));
            }
            35..=44 => {
                let i = self.handle(d, name);
                let len = self.model[name].len() as u64;
                let to = if self.rng.random_bool(0.5) {
                    self.rng.random_range(0..=len)
                } else {
                    self.rng.random_range(len..=MAX_LEN)
                };
                if let Err(e) = self.handles[&(d, name)][i].file.set_len(to) {
                    self.fail(format!("device {d}: truncate {name} to {to}: {e}"));
                }
                self.model.get_mut(name).unwrap().resize(to as usize, 0);
                self.record(name);
                self.note(
                    "truncate",
                    format!("{d}: truncate {name} from {len} to {to}"),
                );
            }
            45..=51 if len >= PAGE => self.mmap_write(d, name),
            52..=66 => {
                let i = self.handle(d, name);
                let len = self.model[name].len() as u64;
                let offset = self.rng.random_range(0..=len);
                let size = self.rng.random_range(0..=128 * KIB);
                let mut buf = vec![0; size as usize];
                let got = match read_fully_at(&self.handles[&(d, name)][i].file, &mut buf, offset) {
                    Ok(got) => got,
                    Err(e) => self.fail(format!("device {d}: read {name} at {offset}: {e}")),
                };
                let model = &self.model[name];
                let want = &model[offset as usize..(offset + size).min(len) as usize];
                if &buf[..got] != want {
                    self.fail(format!(
                        "device {d}: a read of {name} at {offset}+{size} returned {got} bytes that differ from the model's {} (file is {len} bytes)",
                        want.len()
                    ));
                }
                self.note("read", format!("{d}: read {name} at {offset}+{size}"));
            }
            67..=76 => {
                let i = self.handle(d, name);
                if let Err(e) = self.handles[&(d, name)][i].file.sync_all() {
                    self.fail(format!("device {d}: fsync {name}: {e}"));
                }
                self.note("fsync", format!("{d}: fsync {name}"));
            }
            77..=84 => {
                if let Some(handles) = self.handles.get_mut(&(d, name))
                    && !handles.is_empty()
                {
                    let i = self.rng.random_range(0..handles.len());
                    drop(handles.remove(i));
                    self.note("close", format!("{d}: close a handle of {name}"));
                }
            }
            _ => self.read_on_the_other_device(name),
        }
    }

    /// Writes through a shared mapping of part of the file, then msyncs it.
    fn mmap_write(&mut self, d: usize, name: &'static str) {
        let i = self.handle(d, name);
        // (The handle may have been opened with O_TRUNC just now.)
        let len = self.model[name].len() as u64;
        if len < PAGE {
            return;
        }
        let pages = len / PAGE;
        let first = self.rng.random_range(0..pages);
        let count = self.rng.random_range(1..=(pages - first).min(16));
        let map_len = (count * PAGE) as usize;
        let within = self.rng.random_range(0..map_len);
        let size = self.rng.random_range(1..=(map_len - within).min(8192));
        let data = self.random_data(size);
        let fd = std::os::fd::AsRawFd::as_raw_fd(&self.handles[&(d, name)][i].file);
        // SAFETY: a fresh shared mapping of `map_len` bytes of an open file that is at least that
        // long; written within its bounds, synced and unmapped before anything else touches it.
        let ok = unsafe {
            let ptr = libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                (first * PAGE) as libc::off_t,
            );
            if ptr == libc::MAP_FAILED {
                false
            } else {
                std::ptr::copy_nonoverlapping(data.as_ptr(), (ptr as *mut u8).add(within), size);
                let synced = libc::msync(ptr, map_len, libc::MS_SYNC) == 0;
                libc::munmap(ptr, map_len);
                synced
            }
        };
        if !ok {
            self.fail(format!(
                "device {d}: mmap write of {name}: {}",
                std::io::Error::last_os_error()
            ));
        }
        let at = (first * PAGE) as usize + within;
        self.model.get_mut(name).unwrap()[at..at + size].copy_from_slice(&data);
        self.record(name);
        self.note("mmap", format!("{d}: mmap write {name} at {at}+{size}"));
    }

    /// A fresh open on the device that does not write the file reads it whole: it must be one of
    /// the file's versions, never a mix of two.
    fn read_on_the_other_device(&mut self, name: &'static str) {
        let d = 1 - self.owner[name];
        let mut bytes = Vec::new();
        let read =
            File::open(self.mounts[d].path(name)).and_then(|mut f| f.read_to_end(&mut bytes));
        match read {
            Ok(_) => {
                if !self.versions[name].contains(&hash(&bytes)) {
                    let model = &self.model[name];
                    let differs = bytes.iter().zip(model).position(|(a, b)| a != b);
                    self.fail(format!(
                        "device {d}: a fresh read of {name} ({} bytes) is none of its versions: a torn file (the newest is {} bytes; they differ from byte {differs:?}; trailing zeros: {})\n--- device {d}'s log:\n{}",
                        bytes.len(),
                        model.len(),
                        bytes.iter().rev().take_while(|b| **b == 0).count(),
                        tail(&self.mounts[d].log(), 60)
                    ));
                }
            }
            // Not there yet (a new file that has not reached this device).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            // The server is restarting and these chunks are not cached: reads fail fast by design.
            Err(e) if e.raw_os_error() == Some(libc::ENETUNREACH) => {}
            Err(e) => self.fail(format!("device {d}: a fresh read of {name}: {e}")),
        }
        self.note("remote read", format!("{d}: read {name} whole"));
    }

    /// Ends an epoch: every handle closed, both devices converge on the model, and nothing else
    /// (no conflicted copy: each file had one writer at a time) is in the namespace.
    fn converge(&mut self) {
        let keys: Vec<(usize, &'static str)> = self.handles.keys().copied().collect();
        for (d, name) in keys {
            self.close_all(d, name);
        }
        let want: Vec<String> = FILES
            .iter()
            .filter(|name| self.created.contains(*name))
            .map(|name| name.to_string())
            .collect();
        let deadline = Instant::now() + Duration::from_secs(90);
        for d in 0..2 {
            loop {
                let names = root_names(&self.mounts[d]);
                let same = names == want
                    && want.iter().all(|name| {
                        fs::read(self.mounts[d].path(name))
                            .is_ok_and(|b| b == self.model[name.as_str()])
                    });
                if same {
                    break;
                }
                if Instant::now() > deadline {
                    let sizes: Vec<String> = names
                        .iter()
                        .map(|n| {
                            let len = fs::metadata(self.mounts[d].path(n)).map(|m| m.len());
                            format!("{n}={len:?}")
                        })
                        .collect();
                    let model: Vec<String> = self
                        .model
                        .iter()
                        .map(|(n, b)| format!("{n}={}", b.len()))
                        .collect();
                    self.fail(format!(
                        "device {d} did not converge on the model within 90 s: has [{}], the model is [{}]\n{}",
                        sizes.join(", "),
                        model.join(", "),
                        tail(&self.mounts[d].log(), 30)
                    ));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        self.note("converged", "both devices hold the model".into());
    }

    fn kill9_and_remount(&mut self, d: usize) {
        // Whatever the test has open on the mount dies with it: fsync first, the bytes must stay.
        let keys: Vec<(usize, &'static str)> =
            self.handles.keys().copied().filter(|k| k.0 == d).collect();
        for key in keys {
            self.close_all(key.0, key.1);
        }
        let url = self.setup.server.url.clone();
        let token = self.setup.tokens[d].clone();
        self.mounts[d].kill9_and_remount(&url, &token, DEVICES[d]);
        self.note(
            "kill -9",
            format!("{d}: kill -9 of the mount daemon, remounted"),
        );
        // The device's own files hold what was fsynced.
        for name in FILES {
            if self.owner[name] == d && self.created.contains(name) {
                let got = fs::read(self.mounts[d].path(name));
                if !got.as_ref().is_ok_and(|b| *b == self.model[name]) {
                    self.fail(format!(
                        "device {d}: after kill -9 and a remount, {name} holds {:?} bytes, not the {} fsynced",
                        got.map(|b| b.len()),
                        self.model[name].len()
                    ));
                }
            }
        }
    }
}

fn read_fully_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], offset + got as u64)? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

fn tail(log: &str, lines: usize) -> String {
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[test]
fn random_operations_on_two_mounts_match_the_model() {
    let ops = env_u64("BVFS_FSX_OPS", 3_000);
    let seed = env_u64("BVFS_FSX_SEED", rand::random::<u32>() as u64);
    eprintln!("fsx: seed {seed}, {ops} operations (replay with BVFS_FSX_SEED={seed})");
    let mut fsx = Fsx::new(seed);
    let mut done = 0;
    let mut epochs = 0;
    while done < ops {
        // A new epoch: each file gets a writer, often the other device (a remote edit for the
        // device that wrote it last).
        for name in FILES {
            let owner = fsx.rng.random_range(0..2);
            fsx.owner.insert(name, owner);
        }
        let length = fsx.rng.random_range(20..80).min(ops - done);
        for _ in 0..length {
            fsx.step();
            // Mid-epoch crashes, rarely: of the server, or of a mount daemon (after an fsync).
            match fsx.rng.random_range(0..400) {
                0 => {
                    fsx.setup.server.kill9_and_restart();
                    fsx.note("server restart", "the server crashed and restarted".into());
                }
                1 => {
                    let d = fsx.rng.random_range(0..2);
                    fsx.kill9_and_remount(d);
                }
                _ => {}
            }
        }
        done += length;
        fsx.converge();
        epochs += 1;
    }
    eprintln!(
        "fsx: seed {seed}: {done} operations in {epochs} epochs, all converged: {:?}",
        fsx.counts
    );
    for kind in ["write", "truncate", "read", "fsync", "remote read"] {
        assert!(
            fsx.counts.get(kind).copied().unwrap_or(0) > 0 || ops < 200,
            "the run never did a {kind}: {:?}",
            fsx.counts
        );
    }
}

#[test]
fn killing_the_mount_daemon_never_loses_an_fsynced_byte() {
    let rounds = env_u64("BVFS_KILL9_ROUNDS", 20);
    let seed = env_u64("BVFS_KILL9_SEED", rand::random::<u32>() as u64);
    eprintln!("kill -9 loop: seed {seed}, {rounds} kills (replay with BVFS_KILL9_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let s = setup();
    let mut mounts = [s.mount(0, &[]), s.mount(1, &[])];
    // What each file must hold: the last fsynced content of its writer.
    let mut expected: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    // Every version each file has had (its writer's fsyncs and what a kill left): what a reader on
    // the other device may see while the newest is on its way.
    let mut versions: BTreeMap<String, HashSet<[u8; 32]>> = BTreeMap::new();
    for round in 0..rounds {
        // The victim writes a new version of one of its files (fsync after every piece), while the
        // other device downloads a file the victim wrote before, and the daemon is killed at a
        // random moment: during the writes, the upload after them, or the download.
        let victim = rng.random_range(0..2usize);
        let name = format!("{}-{}", DEVICES[victim], rng.random_range(0..3));
        let pieces = rng.random_range(1..6);
        let piece_len = rng.random_range(64 * KIB..=2 * MIB) as usize;
        let content_seed: u64 = rng.random();
        let kill_after = Duration::from_millis(rng.random_range(0..1500));
        let path = mounts[victim].path(&name);
        // The file's whole content at the writer's last completed fsync, and at every fsync.
        let fsynced = Arc::new(parking_lot::Mutex::new(None::<Vec<u8>>));
        let fsync_versions = Arc::new(parking_lot::Mutex::new(vec![hash(b"")]));
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (fsynced, stop) = (fsynced.clone(), stop.clone());
            let fsync_versions = fsync_versions.clone();
            std::thread::spawn(move || {
                let Ok(file) = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&path)
                else {
                    return;
                };
                let mut bytes = Vec::new();
                for piece in 0..pieces {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let data = random_bytes(piece_len, content_seed ^ piece);
                    if file.write_all_at(&data, bytes.len() as u64).is_err() {
                        return;
                    }
                    bytes.extend_from_slice(&data);
                    if file.sync_all().is_err() {
                        return;
                    }
                    fsync_versions.lock().push(hash(&bytes));
                    *fsynced.lock() = Some(bytes.clone());
                }
            })
        };
        // Meanwhile the victim reads (downloads, if it has not yet) a file the other device wrote:
        // the kill may cut into it (an error), but a read that succeeds must give the right bytes.
        let downloader = versions
            .iter()
            .find(|(n, _)| n.starts_with(DEVICES[1 - victim]))
            .map(|(n, known)| {
                let path = mounts[victim].path(n);
                let known = known.clone();
                std::thread::spawn(move || {
                    fs::read(&path)
                        .map(|b| known.contains(&hash(&b)))
                        .unwrap_or(true)
                })
            });
        std::thread::sleep(kill_after);
        let url = s.server.url.clone();
        mounts[victim].kill9_and_remount(&url, &s.tokens[victim], DEVICES[victim]);
        stop.store(true, Ordering::SeqCst);
        writer.join().unwrap();
        if let Some(downloader) = downloader {
            assert!(
                downloader.join().unwrap(),
                "round {round} (seed {seed}): a read cut by kill -9 gave bytes that are none of the file's versions"
            );
        }
        // The file holds at least its last fsynced version (a write that completed after it but
        // before the kill is kept too, as on a local filesystem after kill -9).
        let got = fs::read(mounts[victim].path(&name)).unwrap_or_default();
        let want = fsynced.lock().take();
        if let Some(want) = &want {
            assert!(
                got.len() >= want.len() && got[..want.len()] == want[..],
                "round {round} (seed {seed}): after kill -9 and a remount, {name} holds {} bytes that do not start with the {} fsynced",
                got.len(),
                want.len()
            );
        }
        if mounts[victim].path(&name).exists() {
            let known = versions.entry(name.clone()).or_default();
            known.extend(fsync_versions.lock().iter().copied());
            known.insert(hash(&got));
            expected.insert(name.clone(), got);
        }
        eprintln!(
            "kill -9 #{round}: {} after {kill_after:?}, {name} = {} bytes",
            DEVICES[victim],
            expected.get(&name).map_or(0, Vec::len)
        );
    }
    // Both devices converge on the expected files, and nothing else: no conflicted copies.
    let want: Vec<String> = expected.keys().cloned().collect();
    for (d, mount) in mounts.iter_mut().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let names = root_names(mount);
            let same = names == want
                && expected
                    .iter()
                    .all(|(n, b)| fs::read(mount.path(n)).is_ok_and(|got| got == *b));
            if same {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "seed {seed}: device {d} did not converge: has {names:?}, expected {want:?}\n{}",
                tail(&mount.log(), 30)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

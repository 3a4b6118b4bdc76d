//! Crash windows between the sync round's transaction and its changes to materialized copies (issue 8,
//! scenario 5), against a real `bvfs serve` process.
//!
//! A remote update (or a conflicted copy) commits in the engine's database before the stale copy is
//! removed (or moved). A crash in between must never let start-up recovery take the stale copy for a
//! local edit and upload old bytes over the newer version; a writer that opens in between must get
//! the new version. Each test crashes the engine at every durability point of that window (the
//! engine's fault points: a panic that unwinds out of the round, then the engine is dropped and
//! reopened from its directory, as after kill -9).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bvfs_engine::faults::{FaultPoint, FaultPoints};
use bvfs_engine::model::NodeKind;
use bvfs_engine::remote::{GrpcRemote, RemoteConfig};
use bvfs_engine::state::ROOT_INO;
use bvfs_engine::{Engine, EngineConfig};
use common::*;

/// The points of the window between the round's transaction and the end of its file changes.
const WINDOW: [FaultPoint; 4] = [
    FaultPoint::LocalOpsCommitted,
    FaultPoint::CopyChanged,
    FaultPoint::CopiesSynced,
    FaultPoint::IntentsForgotten,
];

fn open_engine(
    dir: &std::path::Path,
    name: &str,
    url: &str,
    token: &str,
    faults: FaultPoints,
) -> Arc<Engine> {
    let remote = Arc::new(GrpcRemote::new(&RemoteConfig::new(url, token)).unwrap());
    let mut config = EngineConfig::new(dir.join(name), name);
    config.faults = faults;
    Engine::open(config, remote).unwrap()
}

/// A hook that panics the first time the engine reaches `at` once armed.
fn crash_at(at: FaultPoint) -> (FaultPoints, Arc<AtomicBool>) {
    let armed = Arc::new(AtomicBool::new(false));
    let hook_armed = armed.clone();
    let faults = FaultPoints::new(Arc::new(move |point| {
        if point == at && hook_armed.swap(false, Ordering::SeqCst) {
            panic!("simulated crash at {point:?}");
        }
    }));
    (faults, armed)
}

async fn write(engine: &Engine, ino: u64, data: &[u8]) {
    let open = engine.open_write(ino, true).await.unwrap();
    std::fs::write(&open.path, data).unwrap();
    engine.close_write(ino, true, None).unwrap();
}

async fn read_all(engine: &Engine, ino: u64) -> Vec<u8> {
    let entry = engine.getattr(ino).unwrap().unwrap();
    engine
        .read(&entry, 0, entry.node.attrs.size as u32)
        .await
        .unwrap()
}

/// Runs one round expecting the simulated crash; the engine is unusable afterwards.
async fn round_that_crashes(engine: &Arc<Engine>) {
    let engine = engine.clone();
    let outcome = tokio::spawn(async move { engine.sync_round().await }).await;
    assert!(
        outcome.as_ref().is_err_and(|e| e.is_panic()),
        "the round was meant to crash at the fault point: {outcome:?}"
    );
}

fn names(engine: &Engine) -> Vec<String> {
    engine
        .list(ROOT_INO, None, 100)
        .unwrap()
        .into_iter()
        .map(|e| e.node.name)
        .collect()
}

struct Two {
    dir: tempfile::TempDir,
    server: ServerProcess,
    tokens: [String; 2],
}

impl Two {
    /// Device `i` (0: the laptop, 1: the desktop) with these fault points.
    fn device(&self, i: usize, faults: FaultPoints) -> Arc<Engine> {
        let name = ["laptop", "desktop"][i];
        open_engine(
            self.dir.path(),
            name,
            &self.server.url,
            &self.tokens[i],
            faults,
        )
    }
}

fn two() -> Two {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let tokens = [
        add_user(&data, "alice", "laptop"),
        add_user(&data, "alice", "desktop"),
    ];
    let server = ServerProcess::start(&data, &[]);
    Two {
        dir,
        server,
        tokens,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_a_remote_update_never_uploads_the_stale_copy() {
    for point in WINDOW {
        let s = two();
        let (faults, armed) = crash_at(point);
        let a = s.device(0, faults);
        let b = s.device(1, FaultPoints::default());
        // A writes f (so it has a materialized copy), B takes it and writes a newer version.
        let f = a
            .create(ROOT_INO, "f.txt", NodeKind::File, false, None)
            .unwrap();
        write(&a, f.ino, b"old bytes from the laptop").await;
        a.sync_until_idle(10).await.unwrap();
        b.sync_until_idle(10).await.unwrap();
        let fb = b.lookup(ROOT_INO, "f.txt").unwrap().unwrap();
        write(&b, fb.ino, b"new bytes from the desktop").await;
        b.sync_until_idle(10).await.unwrap();

        // A's round applies the update and crashes inside the window.
        armed.store(true, Ordering::SeqCst);
        round_that_crashes(&a).await;
        drop(a);
        let a = s.device(0, FaultPoints::default());
        a.sync_until_idle(10).await.unwrap();
        b.sync_until_idle(10).await.unwrap();

        let fa = a.lookup(ROOT_INO, "f.txt").unwrap().unwrap();
        assert_eq!(
            read_all(&a, fa.ino).await,
            b"new bytes from the desktop",
            "{point:?}"
        );
        let fb = b.lookup(ROOT_INO, "f.txt").unwrap().unwrap();
        assert_eq!(
            read_all(&b, fb.ino).await,
            b"new bytes from the desktop",
            "{point:?}: the old copy was uploaded over the newer version"
        );
        assert_eq!(
            names(&a),
            ["f.txt"],
            "{point:?}: no conflicted copy of ourselves"
        );
        assert_eq!(names(&b), ["f.txt"], "{point:?}");
        assert_eq!(a.status().unwrap().conflicts, 0, "{point:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_while_keeping_a_conflicted_copy_keeps_both_versions() {
    for point in WINDOW {
        let s = two();
        let (faults, armed) = crash_at(point);
        let a = s.device(0, faults);
        let b = s.device(1, FaultPoints::default());
        let f = a
            .create(ROOT_INO, "f.txt", NodeKind::File, false, None)
            .unwrap();
        write(&a, f.ino, b"first").await;
        a.sync_until_idle(10).await.unwrap();
        b.sync_until_idle(10).await.unwrap();
        // Both edit; B syncs first, so A's bytes become the conflicted copy.
        write(&a, f.ino, b"the laptop's edit").await;
        let fb = b.lookup(ROOT_INO, "f.txt").unwrap().unwrap();
        write(&b, fb.ino, b"the desktop's edit").await;
        b.sync_until_idle(10).await.unwrap();

        armed.store(true, Ordering::SeqCst);
        round_that_crashes(&a).await;
        drop(a);
        let a = s.device(0, FaultPoints::default());
        a.sync_until_idle(10).await.unwrap();
        b.sync_until_idle(10).await.unwrap();
        a.sync_until_idle(10).await.unwrap();

        for (who, engine) in [("laptop", &a), ("desktop", &b)] {
            let names = names(engine);
            assert_eq!(names.len(), 2, "{point:?} on the {who}: {names:?}");
            let copy = names
                .iter()
                .find(|n| n.contains("conflicted copy"))
                .unwrap();
            let copy = engine.lookup(ROOT_INO, copy).unwrap().unwrap();
            let original = engine.lookup(ROOT_INO, "f.txt").unwrap().unwrap();
            assert_eq!(
                read_all(engine, original.ino).await,
                b"the desktop's edit",
                "{point:?} on the {who}"
            );
            assert_eq!(
                read_all(engine, copy.ino).await,
                b"the laptop's edit",
                "{point:?} on the {who}"
            );
        }
    }
}

/// A value one thread leaves for another (the fault hook runs on the round's thread).
type Shared<T> = Arc<parking_lot::Mutex<Option<T>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_opening_while_the_round_replaces_the_copy_gets_the_new_version() {
    let s = two();
    // At the window's first point, a writer opens the file on another thread: it must wait for the
    // round to finish replacing the copy, then see the new version (not write into the stale copy).
    let engine_slot: Shared<(Arc<Engine>, u64)> = Default::default();
    let opened: Shared<std::thread::JoinHandle<()>> = Default::default();
    let armed = Arc::new(AtomicBool::new(false));
    let faults = {
        let (slot, opened, armed) = (engine_slot.clone(), opened.clone(), armed.clone());
        FaultPoints::new(Arc::new(move |point| {
            if point != FaultPoint::LocalOpsCommitted || !armed.swap(false, Ordering::SeqCst) {
                return;
            }
            let (engine, ino) = slot.lock().clone().unwrap();
            let runtime = tokio::runtime::Handle::current();
            let writer = std::thread::spawn(move || {
                let open = engine.open_write_blocking(&runtime, ino, false).unwrap();
                use std::io::{Seek, Write};
                let mut file = open.file;
                file.seek(std::io::SeekFrom::End(0)).unwrap();
                open.counter.wrote();
                file.write_all(b" + appended on the laptop").unwrap();
                engine.close_write(ino, true, None).unwrap();
            });
            std::thread::sleep(std::time::Duration::from_millis(200));
            assert!(
                !writer.is_finished(),
                "the writer must wait while the copy is replaced"
            );
            *opened.lock() = Some(writer);
        }))
    };
    let a = s.device(0, faults);
    let b = s.device(1, FaultPoints::default());
    let f = a
        .create(ROOT_INO, "f.txt", NodeKind::File, false, None)
        .unwrap();
    write(&a, f.ino, b"old").await;
    a.sync_until_idle(10).await.unwrap();
    b.sync_until_idle(10).await.unwrap();
    let fb = b.lookup(ROOT_INO, "f.txt").unwrap().unwrap();
    write(&b, fb.ino, b"new from the desktop").await;
    b.sync_until_idle(10).await.unwrap();

    *engine_slot.lock() = Some((a.clone(), f.ino));
    armed.store(true, Ordering::SeqCst);
    a.sync_round().await.unwrap();
    let writer = opened.lock().take().expect("the hook ran");
    tokio::task::spawn_blocking(move || writer.join().unwrap())
        .await
        .unwrap();
    a.sync_until_idle(10).await.unwrap();
    b.sync_until_idle(10).await.unwrap();
    let fb = b.lookup(ROOT_INO, "f.txt").unwrap().unwrap();
    assert_eq!(
        read_all(&b, fb.ino).await,
        b"new from the desktop + appended on the laptop"
    );
    assert_eq!(names(&b), ["f.txt"]);
}

/// A new device's database is marked for rebuild until its first pull places the copies found at
/// start-up. A file created and unlinked while a writer keeps it open before that pull (found by the
/// vfs simulation, seed 172) has no node either, but it is the writer's: the round must not adopt it
/// as a recovered conflicted copy (which moved the writer's file under a new name).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_unlinked_while_open_on_a_new_device_is_not_taken_for_an_orphan() {
    let s = two();
    let a = s.device(0, FaultPoints::default());
    let f = a
        .create(ROOT_INO, "scratch", NodeKind::File, false, None)
        .unwrap();
    let open = a.open_write(f.ino, true).await.unwrap();
    a.remove(ROOT_INO, "scratch", false).unwrap();
    {
        use std::io::Write;
        let mut file = &open.file;
        open.counter.wrote();
        file.write_all(b"written after the unlink").unwrap();
        file.sync_all().unwrap();
    }
    a.sync_until_idle(10).await.unwrap();
    assert_eq!(
        names(&a),
        Vec::<String>::new(),
        "an unlinked file stays gone"
    );
    assert!(
        open.path.exists(),
        "the open writer's copy stays where its handle has it"
    );
    a.close_write(f.ino, true, None).unwrap();
    a.sync_until_idle(10).await.unwrap();
    assert_eq!(names(&a), Vec::<String>::new());
    assert!(
        a.status().unwrap().conflicts == 0,
        "no conflicted copy was recorded"
    );
}

//! Planner cost against a 1,000,000-node namespace: 10,000 changes and 1,000,000 changes (issue 3;
//! targets: under 200 ms and under 5 s, memory linear in the changes).
//!
//! `cargo bench -p bvfs-engine --bench planner`. Before the timings it prints, for each size, the plan
//! it made, one run's wall-clock and CPU time, and the peak heap the planner allocated beyond its inputs
//! (a counting allocator). Criterion then measures the planning thread's CPU time, which a busy shared
//! machine does not inflate the way it does wall-clock time; on an idle machine the two agree.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bvfs_engine::model::{Attrs, ContentHash, NamePolicy, Node, NodeId, NodeIdSet, NodeKind};
use bvfs_engine::planner::{ConflictTime, DeleteBrake, NothingResident, PlanContext, Planner};
use bvfs_engine::tree::Tree;
use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// Counts live heap bytes and their peak, to report the planner's memory.
struct CountingAllocator;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            let live = LIVE.fetch_add(new_size - layout.size(), Ordering::Relaxed) + new_size
                - layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        } else {
            LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

const DIRECTORIES: u64 = 100;
const SUBDIRECTORIES: u64 = 100;
const FILES_PER_SUBDIRECTORY: u64 = 99;

/// Ids spread like UUIDs (SplitMix64 of a counter, twice).
fn id(n: u64) -> NodeId {
    let mix = |mut z: u64| {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    NodeId::from_u128((u128::from(mix(n)) << 64) | u128::from(mix(!n)) | 1)
}

fn file(n: u64, revision: u64) -> Attrs {
    Attrs {
        size: 4096,
        mtime_ns: revision as i64,
        mode: 0o644,
        content: Some(ContentHash::of(&n.to_le_bytes())),
        ..Attrs::default()
    }
}

/// The namespace: 100 directories × 100 subdirectories × 99 files, plus those directories and the
/// root: 1,000,101 nodes. Returns the tree and the ids of its files.
fn namespace() -> (Tree, Vec<NodeId>) {
    let mut tree = Tree::new();
    let mut files = Vec::new();
    let mut next = 0;
    let mut insert =
        |tree: &mut Tree, parent: NodeId, name: String, kind: NodeKind, attrs: Attrs| {
            next += 1;
            let node = Node {
                id: id(next),
                parent,
                name,
                kind,
                attrs,
                revision: 1,
            };
            tree.insert(node).expect("a fresh name");
            id(next)
        };
    for d in 0..DIRECTORIES {
        let dir = insert(
            &mut tree,
            NodeId::ROOT,
            format!("dir{d:03}"),
            NodeKind::Directory,
            Attrs::default(),
        );
        for s in 0..SUBDIRECTORIES {
            let sub = insert(
                &mut tree,
                dir,
                format!("sub{s:03}"),
                NodeKind::Directory,
                Attrs::default(),
            );
            for f in 0..FILES_PER_SUBDIRECTORY {
                let n = (d * SUBDIRECTORIES + s) * FILES_PER_SUBDIRECTORY + f;
                files.push(insert(
                    &mut tree,
                    sub,
                    format!("file{f:03}.txt"),
                    NodeKind::File,
                    file(n, 1),
                ));
            }
        }
    }
    (tree, files)
}

/// REMOTE, LOCAL, SYNCED and the changed ids: `changes` changes spread over the files, a mix of edits
/// on each side (a few on both: conflicts), renames, deletes and creates.
struct Scenario {
    remote: Tree,
    local: Tree,
    synced: Tree,
    changed: Vec<NodeId>,
}

fn scenario(base: &Tree, files: &[NodeId], changes: usize) -> Scenario {
    let (mut remote, mut local) = (base.clone(), base.clone());
    let stride = files.len() / changes;
    let mut changed = Vec::with_capacity(changes);
    for (k, &file_id) in files
        .iter()
        .step_by(stride.max(1))
        .take(changes)
        .enumerate()
    {
        let node = base.get(file_id).expect("a file").clone();
        let k = k as u64;
        match k % 20 {
            // Edits, mostly one-sided, 1 in 20 on both sides.
            0..=5 => remote
                .set_attrs(file_id, file(k + 10_000_000, 2))
                .expect("exists"),
            6..=11 => local
                .set_attrs(file_id, file(k + 20_000_000, 2))
                .expect("exists"),
            12 => {
                remote
                    .set_attrs(file_id, file(k + 10_000_000, 2))
                    .expect("exists");
                local
                    .set_attrs(file_id, file(k + 20_000_000, 2))
                    .expect("exists");
            }
            // Renames.
            13 => remote
                .move_to(file_id, node.parent, &format!("renamed-{k}.txt"))
                .expect("free"),
            14 => local
                .move_to(file_id, node.parent, &format!("renamed-{k}.txt"))
                .expect("free"),
            // Deletes.
            15 => drop(remote.remove(file_id).expect("a leaf")),
            16 => drop(local.remove(file_id).expect("a leaf")),
            // Creates next to the file (the file itself stays unchanged).
            17 | 18 => {
                let tree = if k % 20 == 17 {
                    &mut remote
                } else {
                    &mut local
                };
                let new = id(u64::MAX / 2 + k);
                let node = Node {
                    id: new,
                    name: format!("new-{k}.txt"),
                    attrs: file(k + 30_000_000, 2),
                    revision: 2,
                    ..node
                };
                tree.insert(node).expect("a fresh name");
                changed.push(new);
                continue;
            }
            // Metadata only.
            _ => {
                let mut attrs = node.attrs.clone();
                attrs.mode |= 0o111;
                local.set_attrs(file_id, attrs).expect("exists");
            }
        }
        changed.push(file_id);
    }
    Scenario {
        remote,
        local,
        synced: base.clone(),
        changed,
    }
}

/// Criterion measurement: CPU time of the benchmarking thread.
struct ThreadCpuTime;

impl Measurement for ThreadCpuTime {
    type Intermediate = Duration;
    type Value = Duration;

    fn start(&self) -> Duration {
        thread_cpu()
    }

    fn end(&self, started: Duration) -> Duration {
        thread_cpu().saturating_sub(started)
    }

    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }

    fn zero(&self) -> Duration {
        Duration::ZERO
    }

    fn to_f64(&self, value: &Duration) -> f64 {
        value.as_nanos() as f64
    }

    fn formatter(&self) -> &dyn ValueFormatter {
        &CpuTimeFormatter
    }
}

/// Nanoseconds, shown in the largest unit that keeps them above 1.
struct CpuTimeFormatter;

impl ValueFormatter for CpuTimeFormatter {
    fn scale_values(&self, typical: f64, values: &mut [f64]) -> &'static str {
        let (divisor, unit) = match typical {
            t if t < 1e3 => (1.0, "ns (CPU)"),
            t if t < 1e6 => (1e3, "µs (CPU)"),
            t if t < 1e9 => (1e6, "ms (CPU)"),
            _ => (1e9, "s (CPU)"),
        };
        values.iter_mut().for_each(|value| *value /= divisor);
        unit
    }

    fn scale_throughputs(
        &self,
        _typical: f64,
        _throughput: &Throughput,
        values: &mut [f64],
    ) -> &'static str {
        values.iter_mut().for_each(|value| *value = 1e9 / *value);
        "runs/s"
    }

    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}

/// CPU time of this thread (Linux), to tell the planner's cost from waiting for a busy machine.
fn thread_cpu() -> Duration {
    let nanos = std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|stat| stat.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    Duration::from_nanos(nanos)
}

fn plan(scenario: &Scenario) -> bvfs_engine::planner::Plan {
    let confirmed = NodeIdSet::default();
    let ctx = PlanContext {
        device: "bench",
        conflict_time: ConflictTime::from_unix_utc(1_750_000_000),
        names: NamePolicy::Posix,
        brake: DeleteBrake::OFF,
        namespace_size: scenario.remote.node_count() as u64,
        residency: &NothingResident,
        confirmed_deletes: &confirmed,
    };
    Planner::plan(
        &scenario.remote,
        &scenario.local,
        &scenario.synced,
        scenario.changed.iter().copied(),
        &ctx,
    )
}

fn benches(c: &mut Criterion<ThreadCpuTime>) {
    let started = Instant::now();
    let (base, files) = namespace();
    println!(
        "namespace: {} nodes, built in {:.1?}",
        base.node_count(),
        started.elapsed()
    );
    let mut group = c.benchmark_group("planner");
    group.sample_size(10);
    for changes in [10_000, 1_000_000] {
        let scenario = scenario(&base, &files, changes);
        let before = LIVE.load(Ordering::Relaxed);
        PEAK.store(before, Ordering::Relaxed);
        let (started, cpu_started) = (Instant::now(), thread_cpu());
        let made = plan(&scenario);
        let (took, cpu) = (started.elapsed(), thread_cpu().saturating_sub(cpu_started));
        let peak = PEAK.load(Ordering::Relaxed) - before;
        println!(
            "{} changed ids: {} ops, {} reported, first run {took:.1?} ({cpu:.1?} on the CPU), \
             peak heap {:.1} MiB ({} bytes per change)",
            scenario.changed.len(),
            made.ops.len(),
            made.reported.len(),
            peak as f64 / (1 << 20) as f64,
            peak / scenario.changed.len(),
        );
        drop(made);
        group.bench_function(format!("{changes} changes in 1M nodes"), |b| {
            b.iter(|| plan(black_box(&scenario)))
        });
    }
    group.finish();
}

criterion_group! {
    name = planner;
    config = Criterion::default().with_measurement(ThreadCpuTime);
    targets = benches
}
criterion_main!(planner);

//! pjdfstest (the POSIX filesystem test suite that JuiceFS runs in CI, Rust port) on a real bvfs
//! mount against a real `bvfs serve` (issue 9): at least 334 cases pass, and every failure is on
//! the short list of named exclusions in `tests/data/pjdfstest-exclusions.txt`, each with its
//! reason. `scripts/test.sh` installs pjdfstest and its dummy user; the suite runs as root, with
//! `--allow-other` so that it can switch to other users.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::*;

/// Passed cases required (95 % of what native ext4 passed here with pjdfstest 0.2.x's older case
/// count; the run prints today's native figure beside it).
const MIN_PASSED: usize = 334;

const CONFIG: &str = r#"
[features]
posix_fallocate = {}
utime_now = {}
utimensat = {}

[settings]
naptime = 0.01
allow_remount = false

[dummy_auth]
entries = [["nobody", "nogroup"], ["tests", "tests"]]
"#;

/// The summary and the failed cases of a pjdfstest run in `dir` (of the cases named `only`, exactly,
/// or all).
fn run_pjdfstest(
    dir: &std::path::Path,
    config: &std::path::Path,
    only: &[String],
) -> (String, Vec<String>) {
    let mut command = Command::new("pjdfstest");
    command.arg("-c").arg(config).arg("-p").arg(dir);
    if !only.is_empty() {
        command.arg("-e").args(only);
    }
    let out = command
        .current_dir(dir)
        .output()
        .expect("pjdfstest is installed by scripts/test.sh (cargo install pjdfstest)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let summary = text
        .lines()
        .find(|l| l.starts_with("Summary:"))
        .unwrap_or_else(|| panic!("no summary from pjdfstest:\n{text}"))
        .to_string();
    let failed = text
        .lines()
        .filter(|l| l.trim_end().ends_with("FAILED"))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    (summary, failed)
}

fn passed(summary: &str) -> usize {
    summary
        .split(',')
        .find_map(|part| part.trim().strip_suffix(" passed"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no passed count in {summary:?}"))
}

#[test]
fn pjdfstest_passes_on_a_mount_but_for_named_exclusions() {
    let exclusions: Vec<(String, String)> = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/pjdfstest-exclusions.txt"),
    )
    .unwrap()
    .lines()
    .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    .map(|l| {
        let (name, why) = l.split_once(" # ").expect("NAME # REASON");
        (name.trim().to_string(), why.trim().to_string())
    })
    .collect();
    let work = tempfile::tempdir().unwrap();
    // Other users must reach the mount and the native directory.
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = work.path().join("pjdfstest.toml");
    std::fs::write(&config, CONFIG).unwrap();

    let native = work.path().join("native");
    std::fs::create_dir(&native).unwrap();
    std::fs::set_permissions(&native, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (native_summary, _) = run_pjdfstest(&native, &config, &[]);

    let s = mounts::setup();
    let a = s.mount(0, &["--allow-other"]);
    let dir = a.path("pjdfstest");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    // The mount's own state directory must let other users pass to the mountpoint.
    let mut parent = a.mountpoint.parent();
    while let Some(p) =
        parent.filter(|p| p.starts_with(std::env::temp_dir()) && *p != std::env::temp_dir())
    {
        let mode = std::fs::metadata(p).unwrap().permissions().mode();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode | 0o055)).unwrap();
        parent = p.parent();
    }
    let (summary, failed) = run_pjdfstest(&dir, &config, &[]);
    println!("native disk: {native_summary}\nbvfs mount:  {summary}");
    let excluded = |name: &String| {
        exclusions
            .iter()
            .any(|(prefix, _)| name.starts_with(prefix.as_str()))
    };
    let mut unexpected: Vec<String> = failed.iter().filter(|n| !excluded(n)).cloned().collect();
    if !unexpected.is_empty() {
        // Cases that race a process of their own (ETXTBSY needs the `sleep` it starts to be
        // running) can lose that race on a loaded machine: run them again, alone, once.
        println!("again, alone: {unexpected:?}");
        let (again, still) = run_pjdfstest(&dir, &config, &unexpected);
        println!("{again}");
        unexpected = still;
    }
    assert!(
        unexpected.is_empty(),
        "failures not on the exclusion list: {unexpected:?}"
    );
    assert!(
        passed(&summary) >= MIN_PASSED,
        "only {} passed (at least {MIN_PASSED} expected): {summary}",
        passed(&summary)
    );
    for (prefix, why) in &exclusions {
        let n = failed
            .iter()
            .filter(|f| f.starts_with(prefix.as_str()))
            .count();
        println!("excluded {prefix}: {n} failed ({why})");
    }
}

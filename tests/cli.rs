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

#[test]
fn help_lists_every_command() {
    let (code, out, _) = run(&["--help"]);
    assert_eq!(code, 0);
    for command in ["mount", "umount", "serve", "admin", "hash"] {
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

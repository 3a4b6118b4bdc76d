//! What the real-mount tests share: a server with two device tokens, shell and xattr helpers,
//! reproducible bytes.

use std::process::Command;

use super::{MountProcess, ServerProcess, add_user};

/// A server with one user and two device tokens.
pub struct Setup {
    pub _dir: tempfile::TempDir,
    pub server: ServerProcess,
    pub tokens: [String; 2],
}

pub fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let tokens = [
        add_user(&data, "alice", "laptop"),
        add_user(&data, "alice", "desktop"),
    ];
    let server = ServerProcess::start(&data, &[]);
    Setup {
        _dir: dir,
        server,
        tokens,
    }
}

impl Setup {
    pub fn mount(&self, device: usize, extra: &[&str]) -> MountProcess {
        let name = ["laptop", "desktop"][device];
        MountProcess::start(&self.server.url, &self.tokens[device], name, extra)
    }
}

pub fn sh(dir: &std::path::Path, script: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "`{script}` failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn xattr(path: &std::path::Path, name: &str) -> String {
    let out = Command::new("getfattr")
        .args(["--only-values", "-n", name])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "getfattr {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

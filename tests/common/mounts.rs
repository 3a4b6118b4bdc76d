//! What the real-mount tests share: a server with two device tokens (on the embedded backends or
//! on PostgreSQL + S3 + NATS), shell and xattr helpers, reproducible bytes.

use std::process::Command;

use super::services::ScaleOut;
use super::{MountProcess, ServerProcess, add_user_with};

/// A server with one user and two device tokens.
pub struct Setup {
    pub _dir: tempfile::TempDir,
    pub server: ServerProcess,
    pub tokens: [String; 2],
    /// The scale-out backends behind the server, if any (declared after it: stopped after it).
    pub services: Option<ScaleOut>,
}

/// A server on the embedded backends (SQLite and a chunk directory).
pub fn setup() -> Setup {
    setup_on(None)
}

/// A server on the scale-out backends: PostgreSQL, S3 (moto, SigV4 enforced) and NATS.
pub fn setup_scaleout() -> Setup {
    setup_on(Some(ScaleOut::start()))
}

fn setup_on(services: Option<ScaleOut>) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let backends = services
        .as_ref()
        .map(ScaleOut::serve_args)
        .unwrap_or_default();
    let env = services.as_ref().map(|s| s.s3.env()).unwrap_or_default();
    let tokens = [
        add_user_with(&data, &backends, "alice", "laptop"),
        add_user_with(&data, &backends, "alice", "desktop"),
    ];
    let server = ServerProcess::start_with(&data, &[], &backends, &env);
    Setup {
        _dir: dir,
        server,
        tokens,
        services,
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

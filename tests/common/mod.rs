//! Shared test harness: real `bvfs serve` processes on loopback, users and tokens, and proto builders.
#![allow(dead_code)]

pub mod engine_devices;
pub mod gc_race;
pub mod mounts;
pub mod scrape;
pub mod services;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bvfs_engine::remote::{RemoteConfig, SyncApi, connect};
use bvfs_proto::v1::{self, NodeAttrs, NodeKind};

/// The `bvfs` binary under test.
pub fn bvfs() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bvfs"))
}

/// A `bvfs serve` child process; stopped (SIGTERM, then SIGKILL) when dropped.
pub struct ServerProcess {
    pub child: Child,
    pub url: String,
    pub data: PathBuf,
    /// Extra flags and environment it was started with (kept for a restart).
    backends: Vec<String>,
    env: Vec<(String, String)>,
}

impl ServerProcess {
    /// Starts a server on a free loopback port (`services::free_port`) with the given data
    /// directory.
    pub fn start(data: &Path, extra: &[&str]) -> Self {
        Self::start_with(data, extra, &[], &[])
    }

    /// Starts a server with backend flags (`--metadata` …) and environment (`AWS_…`) besides.
    pub fn start_with(
        data: &Path,
        extra: &[&str],
        backends: &[String],
        env: &[(String, String)],
    ) -> Self {
        let mut command = bvfs();
        command.arg("serve");
        if !extra.contains(&"--listen") {
            // A claimed port below the ephemeral range, not port 0: a test that stops the server
            // and starts it again on its address must find that address free (a device retrying
            // a connection to it could otherwise be handed it as its own port).
            command.args(["--listen", &format!("127.0.0.1:{}", services::free_port())]);
        }
        let mut child = command
            .arg("--data")
            .arg(data)
            .args(extra)
            .args(backends)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn bvfs serve");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the listening line");
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://") || w.starts_with("https://"))
            .unwrap_or_else(|| panic!("no URL in the server's first line: {line:?}"))
            .to_string();
        Self {
            child,
            url,
            data: data.to_owned(),
            backends: backends.to_vec(),
            env: env.to_vec(),
        }
    }

    /// Kills the server with SIGKILL (a crash) and reaps it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Kills the server with SIGKILL and starts it again on the same address and data (a crash and
    /// a restart, as clients see it).
    pub fn kill9_and_restart(&mut self) {
        self.kill9();
        self.start_again();
    }

    /// Starts the (stopped) server again on the same address, data and backends.
    pub fn start_again(&mut self) {
        let listen = self
            .url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let (data, backends, env) = (self.data.clone(), self.backends.clone(), self.env.clone());
        *self = Self::start_with(&data, &["--listen", &listen], &backends, &env);
    }

    /// Stops the server with SIGTERM and waits for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        // The server gives connections 3 s to drain, then stops; a loaded machine may need more.
        for _ in 0..600 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        self.kill9();
        panic!("the server did not stop within 15 s of SIGTERM");
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            unsafe {
                libc::kill(self.child.id() as i32, libc::SIGTERM);
            }
            for _ in 0..100 {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            self.kill9();
        }
    }
}

/// Creates a user (if new) and a device token with `bvfs admin add-user --json`.
pub fn add_user(data: &Path, user: &str, device: &str) -> String {
    add_user_with(data, &[], user, device)
}

/// [`add_user`] with backend flags (`--metadata postgres://…`).
pub fn add_user_with(data: &Path, backends: &[String], user: &str, device: &str) -> String {
    let metadata: Vec<&String> = backends
        .windows(2)
        .filter(|w| w[0] == "--metadata")
        .map(|w| &w[1])
        .collect();
    let out = bvfs()
        .args(["admin", "add-user", "--json", "--data"])
        .arg(data)
        .args(metadata.iter().flat_map(|m| ["--metadata", m.as_str()]))
        .arg(user)
        .args(["--device", device])
        .output()
        .expect("run bvfs admin add-user");
    assert!(
        out.status.success(),
        "add-user failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json from add-user");
    value["token"].as_str().expect("a token").to_string()
}

/// A connected client.
pub async fn client(url: &str, token: &str) -> SyncApi {
    connect(&RemoteConfig::new(url, token))
        .await
        .expect("connect")
}

pub fn new_id() -> Vec<u8> {
    uuid::Uuid::new_v4().as_bytes().to_vec()
}

pub fn root() -> Vec<u8> {
    vec![0; 16]
}

pub fn dir_attrs() -> NodeAttrs {
    NodeAttrs {
        mtime_ns: 1_700_000_000_000_000_000,
        ..Default::default()
    }
}

/// Attributes of a file holding `data` as one chunk (or none when empty).
pub fn file_attrs(data: &[u8]) -> NodeAttrs {
    let chunks = if data.is_empty() {
        vec![]
    } else {
        vec![v1::ChunkRef {
            id: blake3::hash(data).as_bytes().to_vec(),
            length: data.len() as u32,
        }]
    };
    NodeAttrs {
        size: data.len() as u64,
        mtime_ns: 1_700_000_000_000_000_000,
        executable: false,
        content: Some(v1::Content {
            hash: blake3::hash(data).as_bytes().to_vec(),
            chunks,
            ..Default::default()
        }),
        symlink_target: String::new(),
        ..Default::default()
    }
}

pub fn create(id: &[u8], parent: &[u8], name: &str, kind: NodeKind, attrs: NodeAttrs) -> v1::Op {
    v1::Op {
        op: Some(v1::op::Op::Create(v1::CreateOp {
            id: id.to_vec(),
            parent_id: parent.to_vec(),
            name: name.to_string(),
            kind: kind as i32,
            attrs: Some(attrs),
        })),
    }
}

pub fn mkdir(id: &[u8], parent: &[u8], name: &str) -> v1::Op {
    create(id, parent, name, NodeKind::Directory, dir_attrs())
}

pub fn update(id: &[u8], base: u64, attrs: NodeAttrs) -> v1::Op {
    v1::Op {
        op: Some(v1::op::Op::Update(v1::UpdateOp {
            id: id.to_vec(),
            base_revision: base,
            attrs: Some(attrs),
        })),
    }
}

pub fn mv(id: &[u8], base: u64, parent: &[u8], name: &str) -> v1::Op {
    v1::Op {
        op: Some(v1::op::Op::Move(v1::MoveOp {
            id: id.to_vec(),
            base_revision: base,
            new_parent_id: parent.to_vec(),
            new_name: name.to_string(),
        })),
    }
}

pub fn delete(id: &[u8], base: u64) -> v1::Op {
    v1::Op {
        op: Some(v1::op::Op::Delete(v1::DeleteOp {
            id: id.to_vec(),
            base_revision: base,
        })),
    }
}

/// Commits ops and returns the response or the status.
pub async fn commit(
    api: &mut SyncApi,
    ops: Vec<v1::Op>,
) -> Result<v1::CommitResponse, tonic::Status> {
    api.commit(v1::CommitRequest {
        ops,
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner())
}

/// Uploads whole chunks.
pub async fn put_chunks(
    api: &mut SyncApi,
    chunks: Vec<(Vec<u8>, Vec<u8>)>,
) -> Result<v1::PutChunksResponse, tonic::Status> {
    let messages = chunks
        .into_iter()
        .map(|(id, data)| v1::PutChunkRequest { id, data })
        .collect::<Vec<_>>();
    api.put_chunks(tokio_stream::iter(messages))
        .await
        .map(|r| r.into_inner())
}

/// Uploads `data` as one chunk.
pub async fn put_blob(api: &mut SyncApi, data: &[u8]) {
    put_chunks(
        api,
        vec![(blake3::hash(data).as_bytes().to_vec(), data.to_vec())],
    )
    .await
    .expect("put chunk");
}

/// Every change after `cursor`, following pages.
pub async fn all_changes(api: &mut SyncApi, mut cursor: u64) -> Vec<v1::Change> {
    let mut out = Vec::new();
    loop {
        let page = api
            .list_changes(v1::ListChangesRequest {
                cursor,
                limit: 0,
                ..Default::default()
            })
            .await
            .expect("list changes")
            .into_inner();
        out.extend(page.changes);
        cursor = page.next_cursor;
        if !page.has_more {
            return out;
        }
    }
}

/// The `bvfs-reason` metadata of a rejection.
pub fn reason(status: &tonic::Status) -> String {
    status
        .metadata()
        .get("bvfs-reason")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// A `bvfs mount` daemon against a server; unmounted (or killed and cleaned) when dropped.
pub struct MountProcess {
    pub mountpoint: PathBuf,
    pub data: PathBuf,
    pub pid: i32,
    _dirs: tempfile::TempDir,
}

/// Runs `bvfs mount` (which returns once the mount is ready) and returns the daemon's pid.
fn spawn_mount(
    url: &str,
    token: &str,
    device: &str,
    mountpoint: &Path,
    data: &Path,
    extra: &[&str],
) -> i32 {
    let out = bvfs()
        .args([
            "mount", "--server", url, "--token", token, "--device", device, "--data",
        ])
        .arg(data)
        .args(extra)
        .arg(mountpoint)
        .env("RUST_LOG", "info,bvfs_engine=debug")
        .output()
        .expect("run bvfs mount");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bvfs mount failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .split("daemon pid ")
        .nth(1)
        .and_then(|rest| rest.trim().trim_end_matches(')').parse().ok())
        .unwrap_or_else(|| panic!("no daemon pid in {stdout:?}"))
}

impl MountProcess {
    /// Mounts with `bvfs mount --server URL --token TOKEN`; returns once the mount is ready.
    pub fn start(url: &str, token: &str, device: &str, extra: &[&str]) -> Self {
        assert!(
            std::path::Path::new("/dev/fuse").exists(),
            "/dev/fuse is missing: the mount tests need FUSE (run scripts/test.sh as root)"
        );
        let dirs = tempfile::tempdir().unwrap();
        let mountpoint = dirs.path().join("mnt");
        let data = dirs.path().join("state");
        let pid = spawn_mount(url, token, device, &mountpoint, &data, extra);
        Self {
            mountpoint,
            data,
            pid,
            _dirs: dirs,
        }
    }

    /// A path inside the mount.
    pub fn path(&self, relative: &str) -> PathBuf {
        self.mountpoint.join(relative)
    }

    /// Kills the daemon with SIGKILL (leaving a stale mount behind) and mounts the same state again.
    pub fn kill9_and_remount(&mut self, url: &str, token: &str, device: &str) {
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
        }
        wait_for_exit(self.pid);
        self.pid = spawn_mount(url, token, device, &self.mountpoint, &self.data, &[]);
    }

    /// The daemon's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.join("daemon.log")).unwrap_or_default()
    }
}

fn wait_for_exit(pid: i32) {
    for _ in 0..600 {
        if unsafe { libc::kill(pid, 0) } != 0 {
            return;
        }
        // Reap it if it is our child (it is not: the daemon was forked by `bvfs mount`).
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for MountProcess {
    fn drop(&mut self) {
        let out = bvfs()
            .args(["umount", "--lazy"])
            .arg(&self.mountpoint)
            .output();
        if !out.is_ok_and(|o| o.status.success()) {
            // The daemon is gone or stuck: make sure nothing stays mounted.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
            }
            let c = std::ffi::CString::new(self.mountpoint.as_os_str().as_encoded_bytes()).unwrap();
            unsafe {
                libc::umount2(c.as_ptr(), libc::MNT_DETACH);
            }
        }
        wait_for_exit(self.pid);
    }
}

/// Waits until `check` holds, up to `secs` seconds.
pub fn eventually(secs: u64, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {secs} s waiting for: {what}");
}

/// Files (recursively) under `dir` and their total size.
pub fn dir_usage(dir: &Path) -> (usize, u64) {
    let mut files = 0;
    let mut bytes = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                files += 1;
                bytes += meta.len();
            }
        }
    }
    (files, bytes)
}

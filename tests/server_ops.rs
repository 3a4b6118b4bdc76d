//! Operating a server: Prometheus metrics on their own listener (`bvfs serve --metrics`), the TOML
//! configuration file (`bvfs serve --config`), and collecting uploaded chunks no version names
//! (`bvfs admin gc`), each against a real `bvfs serve` process on the embedded backends.

mod common;

use std::net::TcpStream;

use bvfs_proto::v1;
use common::scrape::{http_get, sample, scrape};
use common::services::free_port;
use common::*;

/// Commits, uploads, downloads and refusals through a real server move the counters a scrape shows.
#[tokio::test]
async fn metrics_count_commits_chunks_errors_and_connections() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let token = add_user(&data, "alice", "laptop");
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let server = ServerProcess::start(&data, &["--metrics", &metrics_addr]);

    let before = scrape(&metrics_addr);
    assert_eq!(
        sample(&before, "bvfs_commits_total{outcome=\"committed\"}"),
        0.0
    );
    assert_eq!(sample(&before, "bvfs_connections_open"), 0.0);

    let mut api = client(&server.url, &token).await;
    let (a, b) = (vec![1u8; 1000], vec![2u8; 3000]);
    put_blob(&mut api, &a).await;
    put_blob(&mut api, &b).await;
    let file = new_id();
    let created = commit(
        &mut api,
        vec![
            create(&file, &root(), "a", v1::NodeKind::File, file_attrs(&a)),
            mkdir(&new_id(), &root(), "d"),
        ],
    )
    .await
    .expect("commit");
    commit(
        &mut api,
        vec![update(&file, created.nodes[0].revision, file_attrs(&b))],
    )
    .await
    .expect("update");
    // A stale base: refused.
    let stale = commit(
        &mut api,
        vec![update(&file, created.nodes[0].revision, file_attrs(&a))],
    )
    .await
    .unwrap_err();
    assert_eq!(stale.code(), tonic::Code::Aborted);
    // Bytes that do not hash to their id: refused.
    let corrupt = put_chunks(
        &mut api,
        vec![(blake3::hash(b"x").as_bytes().to_vec(), b"y".to_vec())],
    )
    .await
    .unwrap_err();
    assert_eq!(corrupt.code(), tonic::Code::DataLoss);
    // A download: bytes out.
    let mut stream = api
        .get_chunks(v1::GetChunksRequest {
            ids: vec![blake3::hash(&b).as_bytes().to_vec()],
        })
        .await
        .expect("get chunks")
        .into_inner();
    let mut got = 0;
    while let Some(chunk) = stream.message().await.expect("a chunk") {
        got += chunk.data.len();
    }
    assert_eq!(got, b.len());
    // A missing chunk ends the stream with NOT_FOUND in its trailers.
    let mut stream = api
        .get_chunks(v1::GetChunksRequest {
            ids: vec![vec![9u8; 32]],
        })
        .await
        .expect("get chunks")
        .into_inner();
    assert_eq!(
        stream.message().await.unwrap_err().code(),
        tonic::Code::NotFound
    );

    let after = scrape(&metrics_addr);
    let get = |name: &str| sample(&after, name);
    assert_eq!(get("bvfs_commits_total{outcome=\"committed\"}"), 2.0);
    assert_eq!(get("bvfs_commits_total{outcome=\"refused\"}"), 1.0);
    assert_eq!(get("bvfs_commits_total{outcome=\"failed\"}"), 0.0);
    assert_eq!(get("bvfs_ops_committed_total"), 3.0);
    assert_eq!(get("bvfs_chunk_bytes_received_total"), 4000.0);
    assert_eq!(get("bvfs_chunk_bytes_sent_total"), 3000.0);
    assert_eq!(
        get("bvfs_chunk_uploads_refused_total{reason=\"hash-mismatch\"}"),
        1.0
    );
    assert_eq!(get("bvfs_grpc_errors_total{code=\"ABORTED\"}"), 1.0);
    assert_eq!(get("bvfs_grpc_errors_total{code=\"DATA_LOSS\"}"), 1.0);
    assert_eq!(get("bvfs_grpc_errors_total{code=\"NOT_FOUND\"}"), 1.0);
    assert_eq!(get("bvfs_connections_open"), 1.0);
    // A request leaves the gauge when the server drops its response body, just after the client
    // has the trailers.
    eventually(5, "no request in flight", || {
        sample(&scrape(&metrics_addr), "bvfs_requests_in_flight") == 0.0
    });

    // A connection that closes is no longer counted (a bare TCP connection: the client's own
    // stays open as long as its channel lives).
    let open_now = |expected: f64| {
        eventually(
            10,
            &format!("{expected} connection(s) counted open"),
            || sample(&scrape(&metrics_addr), "bvfs_connections_open") == expected,
        )
    };
    let grpc_addr = server.url.trim_start_matches("http://").to_string();
    let bare = TcpStream::connect(&grpc_addr).unwrap();
    open_now(2.0);
    drop(bare);
    open_now(1.0);

    // Anything but GET /metrics is refused, and the listener keeps serving.
    let (status, _) = http_get(&metrics_addr, "GET / HTTP/1.1\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    let (status, _) = http_get(&metrics_addr, "DELETE /metrics HTTP/1.1\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
    let (status, _) = http_get(&metrics_addr, "\u{1}\u{2}\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 400 Bad Request");
    scrape(&metrics_addr);
}

/// Without `--metrics` nothing else listens.
#[test]
fn metrics_are_off_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("server"), &[]);
    let out = std::process::Command::new("ss")
        .args(["-ltnp"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let pid = format!("pid={},", server.child.id());
    let listeners = out.lines().filter(|l| l.contains(&pid)).count();
    assert!(
        out.is_empty() || listeners == 1,
        "one listener expected:\n{out}"
    );
}

/// Starts `bvfs serve --json` with `args` and `env` (nothing else: no `--data`, no `--listen`);
/// returns the child and its first line, or the failure's stderr.
fn serve_json(
    args: &[&str],
    env: &[(&str, &str)],
) -> Result<(ServeChild, serde_json::Value), String> {
    use std::io::BufRead;
    let mut child = bvfs()
        .arg("serve")
        .arg("--json")
        .args(args)
        .env_remove("BVFS_SERVER_DATA")
        .env_remove("BVFS_METADATA")
        .env_remove("BVFS_CHUNKS")
        .env_remove("BVFS_NOTIFY")
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn bvfs serve");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    if line.is_empty() {
        let out = child.wait_with_output().unwrap();
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let value = serde_json::from_str(&line).expect("the JSON line");
    Ok((ServeChild(child), value))
}

/// A server child stopped (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
struct ServeChild(std::process::Child);

impl Drop for ServeChild {
    fn drop(&mut self) {
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        for _ in 0..100 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn write_private(path: &std::path::Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// The file sets what the flags do (paths relative to the file); the default file is read when
/// `--config` is absent; flags and environment variables win over the file.
#[test]
fn a_configuration_file_configures_the_server_and_flags_override_it() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    let file = dir.path().join("etc/server.toml");
    write_private(
        &file,
        &format!(
            "listen = \"127.0.0.1:0\"\ndata = \"state\"\nmax_connections = 8\nmetrics = \"{metrics}\"\n"
        ),
    );
    let (server, line) = serve_json(&["--config", file.to_str().unwrap()], &[]).unwrap();
    assert_eq!(
        line["data"],
        serde_json::json!(dir.path().join("etc/state"))
    );
    assert_eq!(line["metrics"], format!("http://{metrics}/metrics"));
    scrape(&metrics);
    drop(server);

    // The default file, $XDG_CONFIG_HOME/bvfs/server.toml; a flag and an environment variable
    // override it.
    let config_home = dir.path().join("config");
    write_private(
        &config_home.join("bvfs/server.toml"),
        "listen = \"127.0.0.1:1\"\ndata = \"from-file\"\n",
    );
    let env_data = dir.path().join("from-env");
    let (_server, line) = serve_json(
        &["--listen", "127.0.0.1:0"],
        &[
            ("XDG_CONFIG_HOME", config_home.to_str().unwrap()),
            ("BVFS_SERVER_DATA", env_data.to_str().unwrap()),
        ],
    )
    .unwrap();
    assert_eq!(line["data"], serde_json::json!(env_data));
    assert!(!line["url"].as_str().unwrap().ends_with(":1"), "{line}");
    assert!(line.get("metrics").is_none(), "{line}");
}

/// A typo is an error naming the key and its line; a password in a file others may read is
/// refused without being printed; a missing --config file is an error.
#[test]
fn a_bad_configuration_file_is_refused_clearly() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("server.toml");
    write_private(&file, "listen = \"127.0.0.1:0\"\nmax_conections = 8\n");
    let err = serve_json(&["--config", file.to_str().unwrap()], &[]).unwrap_err();
    assert!(err.contains("server.toml:2"), "{err}");
    assert!(err.contains("max_conections"), "{err}");

    write_private(
        &file,
        "metadata = \"postgres://bvfs:hunter2@127.0.0.1:1/bvfs\"\n",
    );
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = serve_json(&["--config", file.to_str().unwrap()], &[]).unwrap_err();
    assert!(err.contains("chmod 600"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");

    let err = serve_json(
        &["--config", dir.path().join("nope.toml").to_str().unwrap()],
        &[],
    )
    .unwrap_err();
    assert!(err.contains("nope.toml"), "{err}");

    // Half a TLS pair, one half from the file: refused.
    write_private(&file, "tls_cert = \"cert.pem\"\n");
    let err = serve_json(
        &[
            "--config",
            file.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        &[],
    )
    .unwrap_err();
    assert!(err.contains("--tls-cert and --tls-key"), "{err}");
}

/// Sets a chunk file's modification time `age` into the past (an upload long ago).
fn age_chunk(data_dir: &std::path::Path, data: &[u8], age: std::time::Duration) {
    let hex = blake3::hash(data).to_hex().to_string();
    let path = data_dir.join("chunks").join("1").join(&hex[..2]).join(&hex);
    let file = std::fs::File::options().write(true).open(&path).unwrap();
    file.set_modified(std::time::SystemTime::now() - age)
        .unwrap();
}

/// `bvfs admin gc` beside a running server deletes exactly the uploaded chunks no version names
/// and that are older than the grace period, reports the bytes, and every version stays readable.
#[tokio::test]
async fn gc_deletes_only_old_unreferenced_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let token = add_user(&data, "alice", "laptop");
    let server = ServerProcess::start(&data, &[]);
    let mut api = client(&server.url, &token).await;
    let day = std::time::Duration::from_secs(2 * 86_400);

    let (v1_bytes, v2_bytes, deleted_bytes) = (vec![1u8; 1000], vec![2u8; 2000], vec![3u8; 3000]);
    let (orphan_old, orphan_new) = (vec![4u8; 4000], vec![5u8; 5000]);
    for chunk in [
        &v1_bytes,
        &v2_bytes,
        &deleted_bytes,
        &orphan_old,
        &orphan_new,
    ] {
        put_blob(&mut api, chunk).await;
    }
    let (file, gone) = (new_id(), new_id());
    let first = commit(
        &mut api,
        vec![
            create(
                &file,
                &root(),
                "f",
                v1::NodeKind::File,
                file_attrs(&v1_bytes),
            ),
            create(
                &gone,
                &root(),
                "g",
                v1::NodeKind::File,
                file_attrs(&deleted_bytes),
            ),
        ],
    )
    .await
    .unwrap();
    commit(
        &mut api,
        vec![update(
            &file,
            first.nodes[0].revision,
            file_attrs(&v2_bytes),
        )],
    )
    .await
    .unwrap();
    commit(&mut api, vec![delete(&gone, first.nodes[1].revision)])
        .await
        .unwrap();
    for chunk in [&v1_bytes, &v2_bytes, &deleted_bytes, &orphan_old] {
        age_chunk(&data, chunk, day);
    }

    // A dry run counts, deletes nothing.
    let out = bvfs()
        .args(["admin", "gc", "--dry-run", "--json", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["chunks_unreferenced"], 1, "{report}");
    assert_eq!(report["bytes_unreferenced"], 4000, "{report}");
    assert_eq!(report["chunks_deleted"], 0, "{report}");

    let out = bvfs()
        .args(["admin", "gc", "--json", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["chunks_deleted"], 1, "{report}");
    assert_eq!(report["bytes_freed"], 4000, "{report}");
    assert_eq!(report["chunks_referenced"], 3, "{report}");
    assert_eq!(report["chunks_within_grace"], 1, "{report}");

    let missing = api
        .find_missing_chunks(v1::FindMissingChunksRequest {
            ids: [
                &v1_bytes,
                &v2_bytes,
                &deleted_bytes,
                &orphan_old,
                &orphan_new,
            ]
            .iter()
            .map(|c| blake3::hash(c).as_bytes().to_vec())
            .collect(),
        })
        .await
        .unwrap()
        .into_inner()
        .missing;
    assert_eq!(missing, vec![blake3::hash(&orphan_old).as_bytes().to_vec()]);

    // The human form says what was freed; a second run finds nothing more.
    let out = bvfs()
        .args(["admin", "gc", "--grace", "1d", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("deleted 0 unreferenced chunk(s), 0 bytes freed"),
        "{text}"
    );
    let bad = bvfs()
        .args(["admin", "gc", "--grace", "soon", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!bad.status.success());
}

/// Commits racing collections on the embedded store: every acknowledged commit's chunks survive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_never_deletes_a_chunk_a_concurrent_commit_names() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let token = add_user(&data, "alice", "laptop");
    let server = ServerProcess::start(&data, &[]);
    let mut api = client(&server.url, &token).await;
    let args = vec!["--data".to_string(), data.display().to_string()];
    let stats = common::gc_race::commits_racing_gc(&mut api, args, vec![], 8).await;
    eprintln!("{stats:?}");
    assert!(stats.commits > 20, "{stats:?}");
    assert!(stats.gc_runs > 3, "{stats:?}");
    assert!(
        stats.chunks_deleted > 0,
        "orphans were collected: {stats:?}"
    );
}

//! Operating a server: Prometheus metrics on their own listener (`bvfs serve --metrics`), the TOML
//! configuration file (`bvfs serve --config`), and collecting uploaded chunks no version names
//! (`bvfs admin gc`), each against a real `bvfs serve` process on the embedded backends.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;

use bvfs_proto::v1;
use common::services::free_port;
use common::*;

/// Fetches `path` from `addr` over plain HTTP/1.1; returns the status line and the body.
fn http_get(addr: &str, request: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to the metrics listener");
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    (
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    )
}

/// Every sample of a scrape: `name{labels}` → value.
fn scrape(addr: &str) -> HashMap<String, f64> {
    let (status, body) = http_get(addr, "GET /metrics HTTP/1.1\r\nhost: test\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    assert!(body.ends_with("# EOF\n"), "{body}");
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn sample(samples: &HashMap<String, f64>, name: &str) -> f64 {
    *samples
        .get(name)
        .unwrap_or_else(|| panic!("{name} is not in the scrape: {samples:?}"))
}

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
        vec![update(&file, created.cursor, file_attrs(&b))],
    )
    .await
    .expect("update");
    // A stale base: refused.
    let stale = commit(
        &mut api,
        vec![update(&file, created.cursor, file_attrs(&a))],
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
    assert_eq!(get("bvfs_requests_in_flight"), 0.0);

    drop(stream);
    drop(api);
    eventually(10, "the closed connection is no longer counted", || {
        sample(&scrape(&metrics_addr), "bvfs_connections_open") == 0.0
    });

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

//! Device tokens over their lifetime (issue 14): listed without ever being shown again, revoked
//! beside a running server (refused from the next request on, a live `Subscribe` stream ended), and
//! never written to the server's log.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bvfs_proto::v1;
use common::*;

fn admin(data: &std::path::Path, args: &[&str]) -> std::process::Output {
    bvfs()
        .arg("admin")
        .arg(args[0])
        .arg("--data")
        .arg(data)
        .args(&args[1..])
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_device_is_refused_at_once_and_its_stream_ends() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let laptop = add_user(&data, "alice", "laptop");
    let phone = add_user(&data, "alice", "phone");
    let phone_again = add_user(&data, "alice", "phone");
    add_user(&data, "bob", "phone");

    let out = admin(&data, &["list-devices", "alice", "--json"]);
    assert!(out.status.success());
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        listed["devices"],
        serde_json::json!([
            {"device": "laptop", "tokens": 1, "created_ns": listed["devices"][0]["created_ns"]},
            {"device": "phone", "tokens": 2, "created_ns": listed["devices"][1]["created_ns"]},
        ])
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("bv_"),
        "tokens are never shown again"
    );

    // The server logs at debug level to a file we read afterwards.
    let log_path = dir.path().join("server.log");
    let mut server = Command::new(env!("CARGO_BIN_EXE_bvfs"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(&data)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .to_string();

    let mut phone_api = client(&url, &phone).await;
    let mut laptop_api = client(&url, &laptop).await;
    phone_api.hello(v1::HelloRequest {}).await.unwrap();
    let mut stream = phone_api
        .subscribe(v1::SubscribeRequest { cursor: 0 })
        .await
        .unwrap()
        .into_inner();
    commit(&mut laptop_api, vec![mkdir(&new_id(), &root(), "before")])
        .await
        .unwrap();
    assert_eq!(stream.message().await.unwrap().unwrap().head, 1);

    let out = admin(&data, &["revoke", "alice", "phone"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("revoked 2 token(s)"));

    // Both of the phone's tokens are refused from the next request on; the laptop and bob are not
    // affected.
    for token in [&phone, &phone_again] {
        let refused = client(&url, token)
            .await
            .hello(v1::HelloRequest {})
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    }
    laptop_api.hello(v1::HelloRequest {}).await.unwrap();
    // The live stream ends with UNAUTHENTICATED within its re-check interval (5 s), even with no
    // commit to wake it.
    let started = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(15), stream.message())
        .await
        .expect("the revoked device's stream ends by itself");
    assert_eq!(ended.unwrap_err().code(), tonic::Code::Unauthenticated);
    println!("stream ended {:?} after the revocation", started.elapsed());

    // Mistakes say what to do.
    let out = admin(&data, &["revoke", "alice", "tablet"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("list-devices alice"));
    let out = admin(&data, &["revoke", "carol", "phone"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("list-users"));

    // SAFETY: SIGTERM stops the server gracefully.
    unsafe {
        libc::kill(server.id() as i32, libc::SIGTERM);
    }
    server.wait().unwrap();
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("commit"), "the log has debug lines: {log}");
    for token in [&laptop, &phone, &phone_again] {
        assert!(!log.contains(token.as_str()), "a token is in the log");
        assert!(!log.contains(&token[3..]), "a token's hex is in the log");
    }
}

//! The sync API against a real `bvfs serve` process on loopback: round-trips, every rejection, tenant
//! isolation, history, restore and undelete.

mod common;

use std::time::Duration;

use bvfs_proto::v1::{self, ChangeKind, NodeKind};
use common::*;
use tokio_stream::StreamExt;
use tonic::Code;

/// Whether this copy of the suite runs on the scale-out backends: `server_api_scaleout.rs`
/// includes this file as its module `suite` and runs every test against real PostgreSQL, S3
/// (moto) and NATS; `server_api` runs them on the embedded ones.
fn scale_out() -> bool {
    module_path!().starts_with("server_api_scaleout")
}

/// The backends of one test: a data directory, and the shared services when scaled out.
struct Backends {
    dir: tempfile::TempDir,
    services: Option<services::ScaleOut>,
}

impl Backends {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            services: scale_out().then(services::ScaleOut::start),
        }
    }

    fn flags(&self) -> Vec<String> {
        self.services
            .as_ref()
            .map(services::ScaleOut::serve_args)
            .unwrap_or_default()
    }

    fn add_user(&self, user: &str, device: &str) -> String {
        add_user_with(self.dir.path(), &self.flags(), user, device)
    }

    fn start(&self) -> ServerProcess {
        let env = self
            .services
            .as_ref()
            .map(|s| s.s3.env())
            .unwrap_or_default();
        ServerProcess::start_with(self.dir.path(), &[], &self.flags(), &env)
    }
}

struct Fixture {
    // Dropped in this order: the server before the services it uses.
    server: ServerProcess,
    token: String,
    _backends: Backends,
}

fn fixture() -> Fixture {
    let backends = Backends::new();
    let token = backends.add_user("alice", "laptop");
    let server = backends.start();
    Fixture {
        server,
        token,
        _backends: backends,
    }
}

#[tokio::test]
async fn hello_names_the_tenant_device_and_head() {
    let f = fixture();
    let mut api = client(&f.server.url, &f.token).await;
    let hello = api.hello(v1::HelloRequest {}).await.unwrap().into_inner();
    assert_eq!(hello.tenant, "alice");
    assert_eq!(hello.device, "laptop");
    assert_eq!(hello.root_id, root());
    assert_eq!(hello.head, 0);
}

#[tokio::test]
async fn commit_list_snapshot_round_trip() {
    let f = fixture();
    let mut api = client(&f.server.url, &f.token).await;
    let (docs, file) = (new_id(), new_id());
    let data = b"hello, bitvault".to_vec();
    put_blob(&mut api, &data).await;
    let resp = commit(
        &mut api,
        vec![
            mkdir(&docs, &root(), "Docs"),
            create(&file, &docs, "notes.txt", NodeKind::File, file_attrs(&data)),
        ],
    )
    .await
    .unwrap();
    assert_eq!(resp.cursor, 2);
    assert_eq!(resp.nodes.len(), 2);
    assert_eq!(resp.nodes[1].revision, 2);
    assert_eq!(
        resp.nodes[1].attrs.as_ref().unwrap().size,
        data.len() as u64
    );

    let changes = all_changes(&mut api, 0).await;
    assert_eq!(
        changes.iter().map(|c| c.seq).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert_eq!(changes[1].node.as_ref().unwrap().name, "notes.txt");
    assert_eq!(changes[1].device, "laptop");

    // Paging: one change per page, gap-free, with has_more until the head.
    let mut cursor = 0;
    let mut seen = vec![];
    loop {
        let page = api
            .list_changes(v1::ListChangesRequest {
                cursor,
                limit: 1,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.changes.iter().map(|c| c.seq));
        cursor = page.next_cursor;
        if !page.has_more {
            break;
        }
    }
    assert_eq!(seen, vec![1, 2]);

    // Move, then the snapshot shows the namespace as it is.
    let resp = commit(&mut api, vec![mv(&file, 2, &root(), "renamed.txt")])
        .await
        .unwrap();
    assert_eq!(resp.nodes[0].revision, 3);
    let snap = api
        .snapshot(v1::SnapshotRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(snap.at_cursor, 3);
    let names: Vec<_> = snap.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(snap.nodes.len(), 3, "{names:?}");
    assert!(names.contains(&"renamed.txt") && names.contains(&"Docs"));
}

#[tokio::test]
async fn snapshot_at_a_cursor_stays_consistent_while_commits_land() {
    let f = fixture();
    let mut api = client(&f.server.url, &f.token).await;
    let ids: Vec<_> = (0..50).map(|_| new_id()).collect();
    let ops = ids
        .iter()
        .enumerate()
        .map(|(i, id)| mkdir(id, &root(), &format!("d{i}")))
        .collect();
    let at = commit(&mut api, ops).await.unwrap().cursor;
    // First page at `at`, then the namespace changes, then the remaining pages.
    let first = api
        .snapshot(v1::SnapshotRequest {
            at_cursor: 0,
            after_id: vec![],
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.at_cursor, at);
    let mut later = vec![];
    for (i, id) in ids.iter().enumerate().take(20) {
        later.push(if i % 2 == 0 {
            delete(id, (i + 1) as u64)
        } else {
            mv(id, (i + 1) as u64, &root(), &format!("moved{i}"))
        });
    }
    later.push(mkdir(&new_id(), &root(), "late"));
    commit(&mut api, later).await.unwrap();
    let mut nodes = first.nodes;
    let mut after = first.next_after_id;
    while !after.is_empty() {
        let page = api
            .snapshot(v1::SnapshotRequest {
                at_cursor: at,
                after_id: after,
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        nodes.extend(page.nodes);
        after = page.next_after_id;
    }
    let mut names: Vec<_> = nodes.iter().map(|n| n.name.clone()).collect();
    names.sort();
    let mut expected: Vec<_> = (0..50).map(|i| format!("d{i}")).collect();
    expected.push(String::new());
    expected.sort();
    assert_eq!(
        names, expected,
        "the snapshot must show the namespace exactly as of cursor {at}"
    );
}

#[tokio::test]
async fn subscribe_pushes_each_advance() {
    let f = fixture();
    let mut api = client(&f.server.url, &f.token).await;
    let mut other = client(&f.server.url, &f.token).await;
    let mut events = other
        .subscribe(v1::SubscribeRequest { cursor: 0 })
        .await
        .unwrap()
        .into_inner();
    commit(&mut api, vec![mkdir(&new_id(), &root(), "a")])
        .await
        .unwrap();
    let event = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .expect("a notification within 5 s")
        .unwrap()
        .unwrap();
    assert_eq!(event.head, 1);
    commit(&mut api, vec![mkdir(&new_id(), &root(), "b")])
        .await
        .unwrap();
    let event = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(event.head, 2);

    // A subscriber behind the head hears about it at once.
    let mut late = api
        .subscribe(v1::SubscribeRequest { cursor: 1 })
        .await
        .unwrap()
        .into_inner();
    let event = tokio::time::timeout(Duration::from_secs(5), late.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(event.head, 2);
}

#[tokio::test]
async fn chunks_find_missing_put_get_and_refuse_corruption() {
    let f = fixture();
    let mut api = client(&f.server.url, &f.token).await;
    let a = vec![7u8; 100_000];
    let b = b"second chunk".to_vec();
    let (ida, idb) = (
        blake3::hash(&a).as_bytes().to_vec(),
        blake3::hash(&b).as_bytes().to_vec(),
    );
    let missing = api
        .find_missing_chunks(v1::FindMissingChunksRequest {
            ids: vec![ida.clone(), idb.clone()],
        })
        .await
        .unwrap()
        .into_inner()
        .missing;
    assert_eq!(missing.len(), 2);
    let put = put_chunks(&mut api, vec![(ida.clone(), a.clone())])
        .await
        .unwrap();
    assert_eq!((put.stored, put.already_present), (1, 0));
    let put = put_chunks(
        &mut api,
        vec![(ida.clone(), a.clone()), (idb.clone(), b.clone())],
    )
    .await
    .unwrap();
    assert_eq!(
        (put.stored, put.already_present),
        (1, 1),
        "dedup: the first chunk is not rewritten"
    );
    let missing = api
        .find_missing_chunks(v1::FindMissingChunksRequest {
            ids: vec![ida.clone(), idb.clone()],
        })
        .await
        .unwrap()
        .into_inner()
        .missing;
    assert!(missing.is_empty());

    let mut stream = api
        .get_chunks(v1::GetChunksRequest {
            ids: vec![idb.clone(), ida.clone()],
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.next().await.unwrap().unwrap();
    let second = stream.next().await.unwrap().unwrap();
    assert_eq!((first.id, first.data), (idb.clone(), b.clone()));
    assert_eq!((second.id, second.data), (ida.clone(), a.clone()));

    // Bytes that do not hash to the id are refused and not stored.
    let bogus_id = blake3::hash(b"what the client claims").as_bytes().to_vec();
    let err = put_chunks(&mut api, vec![(bogus_id.clone(), b"other bytes".to_vec())])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DataLoss, "{err:?}");
    let missing = api
        .find_missing_chunks(v1::FindMissingChunksRequest {
            ids: vec![bogus_id.clone()],
        })
        .await
        .unwrap()
        .into_inner()
        .missing;
    assert_eq!(missing, vec![bogus_id.clone()]);

    // Unknown chunk: NOT_FOUND; malformed id: INVALID_ARGUMENT.
    let mut stream = api
        .get_chunks(v1::GetChunksRequest {
            ids: vec![bogus_id],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        stream.next().await.unwrap().unwrap_err().code(),
        Code::NotFound
    );
    let err = api
        .find_missing_chunks(v1::FindMissingChunksRequest {
            ids: vec![vec![1, 2, 3]],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn commits_are_rejected_precisely_and_atomically() {
    let f = fixture();
    let mut api = client(&f.server.url, &f.token).await;
    let (dir, sub, file) = (new_id(), new_id(), new_id());
    put_blob(&mut api, b"v1").await;
    let resp = commit(
        &mut api,
        vec![
            mkdir(&dir, &root(), "dir"),
            mkdir(&sub, &dir, "sub"),
            create(&file, &root(), "file", NodeKind::File, file_attrs(b"v1")),
        ],
    )
    .await
    .unwrap();
    let (rev_dir, rev_file) = (resp.nodes[0].revision, resp.nodes[2].revision);

    let expect = |result: Result<v1::CommitResponse, tonic::Status>, code: Code, why: &str| {
        let status = result.expect_err(why);
        assert_eq!(status.code(), code, "{why}: {status:?}");
        assert_eq!(reason(&status), why, "{status:?}");
    };

    // Stale base revision: compare-and-swap fails.
    expect(
        commit(&mut api, vec![mv(&file, rev_file - 1, &root(), "x")]).await,
        Code::Aborted,
        "stale-revision",
    );
    // Duplicate id, including the root's.
    expect(
        commit(&mut api, vec![mkdir(&dir, &root(), "again")]).await,
        Code::AlreadyExists,
        "duplicate-id",
    );
    expect(
        commit(&mut api, vec![mkdir(&root(), &root(), "r")]).await,
        Code::AlreadyExists,
        "duplicate-id",
    );
    // Sibling-name collision on create and on move.
    expect(
        commit(&mut api, vec![mkdir(&new_id(), &root(), "dir")]).await,
        Code::AlreadyExists,
        "name-collision",
    );
    expect(
        commit(&mut api, vec![mv(&file, rev_file, &root(), "dir")]).await,
        Code::AlreadyExists,
        "name-collision",
    );
    // Missing parent, non-directory parent.
    expect(
        commit(&mut api, vec![mkdir(&new_id(), &new_id(), "orphan")]).await,
        Code::NotFound,
        "not-found",
    );
    expect(
        commit(&mut api, vec![mkdir(&new_id(), &file, "inside-a-file")]).await,
        Code::FailedPrecondition,
        "parent-not-directory",
    );
    // A move into its own subtree.
    expect(
        commit(&mut api, vec![mv(&dir, rev_dir, &sub, "loop")]).await,
        Code::FailedPrecondition,
        "cycle",
    );
    expect(
        commit(&mut api, vec![mv(&dir, rev_dir, &dir, "self")]).await,
        Code::FailedPrecondition,
        "cycle",
    );
    // Deleting a non-empty directory.
    expect(
        commit(&mut api, vec![delete(&dir, rev_dir)]).await,
        Code::FailedPrecondition,
        "directory-not-empty",
    );
    // Content whose chunks were never uploaded.
    expect(
        commit(
            &mut api,
            vec![create(
                &new_id(),
                &root(),
                "ghost",
                NodeKind::File,
                file_attrs(b"never uploaded"),
            )],
        )
        .await,
        Code::FailedPrecondition,
        "missing-chunks",
    );
    // Invalid names, each form.
    for bad in ["", ".", "..", "a/b", "nul\0byte", &"x".repeat(256)] {
        expect(
            commit(&mut api, vec![mkdir(&new_id(), &root(), bad)]).await,
            Code::InvalidArgument,
            "invalid-name",
        );
    }
    // Malformed requests.
    expect(
        commit(&mut api, vec![]).await,
        Code::InvalidArgument,
        "malformed",
    );
    expect(
        commit(&mut api, vec![mkdir(&[1, 2, 3], &root(), "short-id")]).await,
        Code::InvalidArgument,
        "malformed",
    );
    let mut wrong_size = file_attrs(b"v1");
    wrong_size.size = 99;
    expect(
        commit(
            &mut api,
            vec![create(
                &new_id(),
                &root(),
                "lies",
                NodeKind::File,
                wrong_size,
            )],
        )
        .await,
        Code::InvalidArgument,
        "malformed",
    );
    expect(
        commit(&mut api, vec![delete(&root(), 0)]).await,
        Code::InvalidArgument,
        "root-immutable",
    );

    // All or nothing: a valid first op is rolled back when the second fails.
    let head_before = api
        .hello(v1::HelloRequest {})
        .await
        .unwrap()
        .into_inner()
        .head;
    let fresh = new_id();
    let status = commit(
        &mut api,
        vec![
            mkdir(&fresh, &root(), "fresh"),
            mkdir(&new_id(), &root(), "dir"),
        ],
    )
    .await
    .unwrap_err();
    assert_eq!(status.metadata().get("bvfs-op-index").unwrap(), "1");
    let head_after = api
        .hello(v1::HelloRequest {})
        .await
        .unwrap()
        .into_inner()
        .head;
    assert_eq!(
        head_before, head_after,
        "a rejected commit leaves no journal entry"
    );
    commit(&mut api, vec![mkdir(&fresh, &root(), "fresh")])
        .await
        .expect("the rolled-back id is still free");

    // Several ops on one node all compare against the revision before the commit.
    let resp = commit(
        &mut api,
        vec![
            mv(&file, rev_file, &dir, "file"),
            update(&file, rev_file, file_attrs(b"v1")),
        ],
    )
    .await
    .unwrap();
    assert_eq!(resp.nodes[1].parent_id, dir);

    // Deleting a directory together with its children, children first, in one commit.
    let sub_rev = 2;
    let file_rev = resp.nodes[1].revision;
    commit(
        &mut api,
        vec![
            delete(&sub, sub_rev),
            delete(&file, file_rev),
            delete(&dir, rev_dir),
        ],
    )
    .await
    .expect("recursive delete in one commit");
}

#[tokio::test]
async fn cursor_ahead_of_the_journal_is_out_of_range() {
    let f = fixture();
    let mut api = client(&f.server.url, &f.token).await;
    let err = api
        .list_changes(v1::ListChangesRequest {
            cursor: 42,
            limit: 0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange);
    assert_eq!(reason(&err), "cursor-ahead");
}

#[tokio::test]
async fn no_token_or_a_wrong_one_is_unauthenticated() {
    let f = fixture();
    for token in ["", "bv_0000", "not-even-a-token", "bv_deadbeef"] {
        let mut api = client(&f.server.url, token).await;
        let err = api.hello(v1::HelloRequest {}).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "token {token:?}");
        let err = commit(&mut api, vec![mkdir(&new_id(), &root(), "x")])
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
        let err = api
            .subscribe(v1::SubscribeRequest { cursor: 0 })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
    }
}

#[tokio::test]
async fn tenants_cannot_see_or_probe_each_other() {
    let backends = Backends::new();
    let alice_token = backends.add_user("alice", "laptop");
    let bob_token = backends.add_user("bob", "phone");
    let server = backends.start();
    let mut alice = client(&server.url, &alice_token).await;
    let mut bob = client(&server.url, &bob_token).await;

    let secret = b"alice's secret".to_vec();
    let chunk_id = blake3::hash(&secret).as_bytes().to_vec();
    put_blob(&mut alice, &secret).await;
    let id = new_id();
    let resp = commit(
        &mut alice,
        vec![create(
            &id,
            &root(),
            "secret.txt",
            NodeKind::File,
            file_attrs(&secret),
        )],
    )
    .await
    .unwrap();
    let rev = resp.nodes[0].revision;

    // Bob's namespace is empty and his journal has nothing of Alice's.
    assert!(all_changes(&mut bob, 0).await.is_empty());
    let snap = bob
        .snapshot(v1::SnapshotRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(snap.nodes.len(), 1, "only Bob's root");
    // Alice's node id does not exist for Bob, whatever he tries.
    for op in [
        mv(&id, rev, &root(), "stolen"),
        delete(&id, rev),
        update(&id, rev, dir_attrs()),
    ] {
        assert_eq!(
            commit(&mut bob, vec![op]).await.unwrap_err().code(),
            Code::NotFound
        );
    }
    let err = bob
        .list_versions(v1::ListVersionsRequest {
            id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // Bob may even use the same id for his own node.
    commit(&mut bob, vec![mkdir(&id, &root(), "mine")])
        .await
        .unwrap();
    // Chunks: Bob cannot learn that Alice has them, nor read them, nor reference them.
    let missing = bob
        .find_missing_chunks(v1::FindMissingChunksRequest {
            ids: vec![chunk_id.clone()],
        })
        .await
        .unwrap()
        .into_inner()
        .missing;
    assert_eq!(missing, vec![chunk_id.clone()]);
    let mut stream = bob
        .get_chunks(v1::GetChunksRequest {
            ids: vec![chunk_id],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        stream.next().await.unwrap().unwrap_err().code(),
        Code::NotFound
    );
    let err = commit(
        &mut bob,
        vec![create(
            &new_id(),
            &root(),
            "copy",
            NodeKind::File,
            file_attrs(&secret),
        )],
    )
    .await
    .unwrap_err();
    assert_eq!(reason(&err), "missing-chunks");
    // Alice's node is untouched.
    let alice_changes = all_changes(&mut alice, 0).await;
    assert_eq!(alice_changes.len(), 1);
}

#[tokio::test]
async fn history_restore_and_undelete() {
    let f = fixture();
    let mut api = client(&f.server.url, &f.token).await;
    let id = new_id();
    for data in [&b"one"[..], b"two", b"three"] {
        put_blob(&mut api, data).await;
    }
    let r1 = commit(
        &mut api,
        vec![create(
            &id,
            &root(),
            "doc.txt",
            NodeKind::File,
            file_attrs(b"one"),
        )],
    )
    .await
    .unwrap();
    let r2 = commit(&mut api, vec![update(&id, r1.cursor, file_attrs(b"two"))])
        .await
        .unwrap();
    let r3 = commit(&mut api, vec![update(&id, r2.cursor, file_attrs(b"three"))])
        .await
        .unwrap();

    let versions = api
        .list_versions(v1::ListVersionsRequest {
            id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .versions;
    assert_eq!(
        versions.iter().map(|v| v.seq).collect::<Vec<_>>(),
        vec![3, 2, 1],
        "newest first"
    );

    // Restore "one" as a new revision.
    let restored = api
        .restore_version(v1::RestoreVersionRequest {
            id: id.clone(),
            seq: r1.cursor,
            base_revision: r3.cursor,
        })
        .await
        .unwrap()
        .into_inner();
    let node = &restored.nodes[0];
    assert_eq!(node.revision, 4);
    assert_eq!(
        node.attrs.as_ref().unwrap().content,
        file_attrs(b"one").content
    );
    // Restoring against a stale base is refused.
    let err = api
        .restore_version(v1::RestoreVersionRequest {
            id: id.clone(),
            seq: r2.cursor,
            base_revision: r3.cursor,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted);

    // Delete, find it among the deleted, undelete it with its id and content.
    commit(&mut api, vec![delete(&id, 4)]).await.unwrap();
    let deleted = api
        .list_deleted(v1::ListDeletedRequest::default())
        .await
        .unwrap()
        .into_inner()
        .nodes;
    assert_eq!(deleted.len(), 1);
    assert_eq!(deleted[0].node.as_ref().unwrap().name, "doc.txt");
    let back = api
        .undelete(v1::UndeleteRequest {
            id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(back.nodes[0].name, "doc.txt");
    assert_eq!(
        back.nodes[0].attrs.as_ref().unwrap().content,
        file_attrs(b"one").content
    );
    assert!(
        api.list_deleted(v1::ListDeletedRequest::default())
            .await
            .unwrap()
            .into_inner()
            .nodes
            .is_empty()
    );
    // Undeleting a live node is refused; the journal shows the undelete as an upsert.
    let err = api
        .undelete(v1::UndeleteRequest {
            id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    let last = all_changes(&mut api, 0).await.pop().unwrap();
    assert_eq!(last.kind, ChangeKind::Upsert as i32);

    // Every version's chunks are still readable.
    let mut stream = api
        .get_chunks(v1::GetChunksRequest {
            ids: vec![blake3::hash(b"two").as_bytes().to_vec()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stream.next().await.unwrap().unwrap().data, b"two");
}

#[tokio::test]
async fn plaintext_on_a_public_address_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = bvfs()
        .args(["serve", "--listen", "0.0.0.0:0", "--data"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("refusing to serve plaintext"), "{stderr}");
}

#[tokio::test]
async fn sigterm_stops_the_server_cleanly() {
    let mut f = fixture();
    let mut api = client(&f.server.url, &f.token).await;
    commit(&mut api, vec![mkdir(&new_id(), &root(), "a")])
        .await
        .unwrap();
    let status = f.server.terminate();
    assert!(status.success(), "exit status {status:?}");
}

/// A file's chunks as (id, length) pairs, with the attrs of the whole content.
fn multi_chunk_attrs(chunks: &[&[u8]]) -> v1::NodeAttrs {
    let whole: Vec<u8> = chunks.concat();
    let mut attrs = file_attrs(&whole);
    attrs.content.as_mut().unwrap().chunks = chunks
        .iter()
        .map(|c| v1::ChunkRef {
            id: blake3::hash(c).as_bytes().to_vec(),
            length: c.len() as u32,
        })
        .collect();
    attrs
}

#[tokio::test]
async fn an_update_may_send_its_chunks_as_an_edit_of_the_current_content() {
    let f = fixture();
    let mut api = client(&f.server.url, &f.token).await;
    let parts: [&[u8]; 5] = [b"alpha", b"bravo", b"charlie", b"delta", b"echo"];
    for part in parts.iter().chain([&&b"CHARLIE!"[..]]) {
        put_blob(&mut api, part).await;
    }
    let file = new_id();
    let created = commit(
        &mut api,
        vec![create(
            &file,
            &root(),
            "big",
            NodeKind::File,
            multi_chunk_attrs(&parts),
        )],
    )
    .await
    .unwrap();
    let rev = created.nodes[0].revision;

    // Replace the middle chunk: keep two before it and two after it, send one.
    let edited: [&[u8]; 5] = [b"alpha", b"bravo", b"CHARLIE!", b"delta", b"echo"];
    let mut edit = multi_chunk_attrs(&edited);
    let content = edit.content.as_mut().unwrap();
    content.chunks = vec![content.chunks[2].clone()];
    content.keep_prefix = 2;
    content.keep_suffix = 2;
    let updated = commit(&mut api, vec![update(&file, rev, edit.clone())])
        .await
        .unwrap();
    // The server stores, answers and journals the whole list.
    let whole = multi_chunk_attrs(&edited).content.unwrap();
    let answered = updated.nodes[0]
        .attrs
        .as_ref()
        .unwrap()
        .content
        .as_ref()
        .unwrap();
    assert_eq!(answered, &whole);
    let changes = all_changes(&mut api, rev).await;
    let journaled = changes.last().unwrap().node.as_ref().unwrap();
    assert_eq!(
        journaled.attrs.as_ref().unwrap().content.as_ref().unwrap(),
        &whole
    );

    let expect_malformed = |result: Result<v1::CommitResponse, tonic::Status>, why: &str| {
        let status = result.expect_err(why);
        assert_eq!(status.code(), Code::InvalidArgument, "{why}: {status:?}");
        assert_eq!(reason(&status), "malformed", "{why}: {status:?}");
    };
    // An edit keeping more chunks than the current content has.
    let mut greedy = edit.clone();
    greedy.content.as_mut().unwrap().keep_prefix = 4;
    expect_malformed(
        commit(&mut api, vec![update(&file, updated.cursor, greedy)]).await,
        "an edit keeping 4 + 2 of 5 chunks",
    );
    // An edit whose chunks do not add up to the size.
    let mut short = edit.clone();
    short.content.as_mut().unwrap().keep_suffix = 1;
    expect_malformed(
        commit(&mut api, vec![update(&file, updated.cursor, short)]).await,
        "an edit one chunk short of the size",
    );
    // A create has no current content to edit.
    expect_malformed(
        commit(
            &mut api,
            vec![create(&new_id(), &root(), "new", NodeKind::File, edit)],
        )
        .await,
        "an edit in a create",
    );
    // Nothing of the refused commits landed.
    let after = all_changes(&mut api, updated.cursor).await;
    assert!(after.is_empty(), "{after:?}");
}

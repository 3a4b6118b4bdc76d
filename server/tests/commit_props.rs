//! Hostile commits through the service's entry point (issue 14): arbitrary requests, as structured
//! ops aimed at real nodes and as raw bytes, are applied or refused with a precise status (a gRPC
//! code a client acts on and a `bvfs-reason`), never a panic or an `INTERNAL`; and whatever they do,
//! the namespace keeps its invariants (a gap-free journal, live parents that are directories, no
//! cycles, unique names). The long mode fuzzes the same entry point with libFuzzer (`fuzz/`).
//!
//! `BVFS_COMMIT_CASES` sets the cases per property (10,000 by default).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};

use bvfs_proto::v1::sync_server::Sync;
use bvfs_proto::v1::{self, NodeKind, op::Op as OpKind};
use bvfs_server::service::SyncService;
use bvfs_server::store::{ChunkStore, MetaStore, ROOT_ID, TenantId};
use proptest::prelude::*;
use prost::Message;

fn cases() -> u32 {
    std::env::var("BVFS_COMMIT_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

/// One service on a data directory in memory (tmpfs: every commit still fsyncs), shared by all
/// cases, with three stored chunks.
struct Fixture {
    runtime: tokio::runtime::Runtime,
    service: SyncService,
    meta: Arc<dyn MetaStore>,
    tenant: TenantId,
    token: String,
    chunks: Vec<Vec<u8>>,
    _dir: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir_in("/dev/shm").unwrap_or_else(|_| tempfile::tempdir().unwrap());
        let data = bvfs_server::DataDir::open(&dir.path().join("server")).unwrap();
        let device = bvfs_server::auth::add_device(data.meta.as_ref(), "alice", "fuzz").unwrap();
        let chunks: Vec<Vec<u8>> = (0..3u8)
            .map(|i| vec![i + 1; 1000 * (i as usize + 1)])
            .collect();
        for chunk in &chunks {
            data.chunks
                .put(device.tenant, blake3::hash(chunk).as_bytes(), chunk)
                .unwrap();
        }
        let meta: Arc<dyn MetaStore> = data.meta.clone();
        let chunk_store: Arc<dyn ChunkStore> = data.chunks.clone();
        let service = SyncService::new(meta.clone(), chunk_store, Arc::default());
        Fixture {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            service,
            meta,
            tenant: device.tenant,
            token: device.token,
            chunks,
            _dir: dir,
        }
    })
}

/// Sends a commit through the service's entry point, as a client would.
fn commit(request: v1::CommitRequest) -> Result<v1::CommitResponse, tonic::Status> {
    let f = fixture();
    let mut request = tonic::Request::new(request);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", f.token).parse().unwrap(),
    );
    f.runtime
        .block_on(f.service.commit(request))
        .map(tonic::Response::into_inner)
}

/// A refusal must say what is wrong in terms a client acts on.
fn check_refusal(status: &tonic::Status) -> Result<(), TestCaseError> {
    use tonic::Code;
    prop_assert!(
        matches!(
            status.code(),
            Code::InvalidArgument
                | Code::FailedPrecondition
                | Code::Aborted
                | Code::AlreadyExists
                | Code::NotFound
                | Code::OutOfRange
        ),
        "an imprecise refusal: {status:?}"
    );
    let reason = status
        .metadata()
        .get("bvfs-reason")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    prop_assert!(
        !reason.is_empty(),
        "a refusal without bvfs-reason: {status:?}"
    );
    Ok(())
}

/// Ids of the live nodes now (the root included), so that ops aim at real nodes.
fn live_ids() -> Vec<Vec<u8>> {
    let f = fixture();
    let head = f.meta.head(f.tenant).unwrap();
    let (nodes, _) = f
        .meta
        .snapshot_page(f.tenant, head, None, 10_000, usize::MAX)
        .unwrap();
    nodes.into_iter().map(|n| n.id).collect()
}

/// The id of an existing node mostly; sometimes a pool id (maybe deleted), rarely a malformed one.
fn id() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        20 => any::<prop::sample::Index>().prop_map(|i| {
            let live = live_ids();
            live[i.index(live.len())].clone()
        }),
        5 => (1u8..=12).prop_map(|i| vec![i; 16]),
        1 => prop::collection::vec(any::<u8>(), 0..20),
    ]
}

/// The id of a node to create: mostly fresh, sometimes one in use (or used before).
fn new_id() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        10 => any::<[u8; 16]>().prop_map(|id| id.to_vec()),
        2 => id(),
    ]
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        30 => "[a-c]{1,2}",
        1 => prop_oneof![
            Just(String::new()),
            Just(".".to_string()),
            Just("..".to_string()),
            Just("a/b".to_string()),
            Just("nul\0".to_string()),
            Just("n".repeat(256)),
        ],
    ]
}

/// A chunk reference: mostly one of the stored chunks, rarely an unknown or malformed one.
fn chunk() -> impl Strategy<Value = v1::ChunkRef> {
    prop_oneof![
        20 => (0usize..3).prop_map(|i| {
            let data = &fixture().chunks[i];
            v1::ChunkRef { id: blake3::hash(data).as_bytes().to_vec(), length: data.len() as u32 }
        }),
        1 => (any::<[u8; 32]>(), 1u32..5000).prop_map(|(id, length)| v1::ChunkRef { id: id.to_vec(), length }),
        1 => (prop::collection::vec(any::<u8>(), 0..40), any::<u32>()).prop_map(|(id, length)| v1::ChunkRef { id, length }),
    ]
}

/// A file's content: whole lists of stored chunks (sized right), or an edit of the base, rarely a
/// staged reference that does not exist or an elided list a client may not send.
fn file_attrs() -> impl Strategy<Value = v1::NodeAttrs> {
    (
        prop::collection::vec(chunk(), 0..4),
        prop_oneof![10 => Just((0u32, 0u32)), 2 => (0u32..4, 0u32..4)],
        prop_oneof![30 => Just(Vec::new()), 1 => prop::collection::vec(any::<u8>(), 0..20)],
        prop_oneof![30 => Just(false), 1 => Just(true)],
        prop_oneof![20 => Just(None), 1 => any::<u64>().prop_map(Some)],
        any::<i64>(),
        any::<bool>(),
    )
        .prop_map(
            |(
                chunks,
                (keep_prefix, keep_suffix),
                manifest_ref,
                chunks_elided,
                size,
                mtime_ns,
                executable,
            )| {
                let whole: u64 = chunks.iter().map(|c| u64::from(c.length)).sum();
                v1::NodeAttrs {
                    size: size.unwrap_or(whole),
                    mtime_ns,
                    executable,
                    content: Some(v1::Content {
                        hash: vec![9; 32],
                        chunks,
                        keep_prefix,
                        keep_suffix,
                        chunks_elided,
                        chunk_count: 0,
                        manifest_ref,
                    }),
                    symlink_target: String::new(),
                    ..Default::default()
                }
            },
        )
}

/// Attributes for a node of `kind` (usually the right shape for it).
fn attrs_for(kind: i32) -> BoxedStrategy<Option<v1::NodeAttrs>> {
    let dir = any::<i64>().prop_map(|mtime_ns| v1::NodeAttrs {
        mtime_ns,
        ..Default::default()
    });
    let symlink =
        prop_oneof![10 => ".{1,10}", 1 => Just("t".repeat(5000)), 1 => Just(String::new())]
            .prop_map(|symlink_target| v1::NodeAttrs {
                symlink_target,
                ..Default::default()
            });
    let right = match NodeKind::try_from(kind) {
        Ok(NodeKind::File) => file_attrs().boxed(),
        Ok(NodeKind::Symlink) => symlink.boxed(),
        _ => dir.boxed(),
    };
    // Permission bits (rarely out of range, sometimes absent as from an old client) and extended
    // attributes (rarely outside `user.` or past the bounds).
    let mode = prop_oneof![
        10 => (0u32..=0o7777).prop_map(Some),
        2 => Just(None),
        1 => any::<u32>().prop_map(Some),
    ];
    let xattr = prop_oneof![
        10 => ("user\\.[a-z]{1,8}", prop::collection::vec(any::<u8>(), 0..32)),
        1 => (".{0,10}", prop::collection::vec(any::<u8>(), 0..8)),
        1 => (Just("user.big".to_string()), Just(vec![0u8; bvfs_proto::MAX_XATTR_VALUE_BYTES + 1])),
    ];
    let xattrs = prop::collection::vec(xattr, 0..3)
        .prop_map(|v| v.into_iter().collect::<std::collections::HashMap<_, _>>());
    let right = (right, mode, xattrs).prop_map(|(attrs, mode, xattrs)| v1::NodeAttrs {
        mode,
        xattrs,
        ..attrs
    });
    prop_oneof![
        30 => right.prop_map(Some),
        1 => Just(None),
        1 => file_attrs().prop_map(Some),
    ]
    .boxed()
}

fn kind() -> impl Strategy<Value = i32> {
    prop_oneof![
        10 => Just(NodeKind::Directory as i32),
        10 => Just(NodeKind::File as i32),
        2 => Just(NodeKind::Symlink as i32),
        1 => any::<i32>(),
    ]
}

fn op() -> impl Strategy<Value = v1::Op> {
    // Base revisions near the head, so that compare-and-swaps often succeed.
    let base = prop_oneof![
        10 => (0u64..3).prop_map(|back| {
            let f = fixture();
            f.meta.head(f.tenant).unwrap().saturating_sub(back)
        }),
        1 => any::<u64>(),
    ];
    let create = (new_id(), id(), name(), kind()).prop_flat_map(|(id, parent_id, name, kind)| {
        attrs_for(kind).prop_map(move |attrs| {
            OpKind::Create(v1::CreateOp {
                id: id.clone(),
                parent_id: parent_id.clone(),
                name: name.clone(),
                kind,
                attrs,
            })
        })
    });
    let update = (id(), base.clone(), kind()).prop_flat_map(|(id, base_revision, kind)| {
        attrs_for(kind).prop_map(move |attrs| {
            OpKind::Update(v1::UpdateOp {
                id: id.clone(),
                base_revision,
                attrs,
            })
        })
    });
    let op = prop_oneof![
        4 => create,
        2 => update,
        3 => (id(), base.clone(), id(), name()).prop_map(|(id, base_revision, new_parent_id, new_name)| {
            OpKind::Move(v1::MoveOp { id, base_revision, new_parent_id, new_name })
        }),
        2 => (id(), base).prop_map(|(id, base_revision)| {
            OpKind::Delete(v1::DeleteOp { id, base_revision })
        }),
    ];
    prop::option::weighted(0.99, op).prop_map(|op| v1::Op { op })
}

/// The namespace's invariants, read back through the store.
fn check_namespace() -> Result<(), TestCaseError> {
    let f = fixture();
    let head = f.meta.head(f.tenant).unwrap();
    let journal = f
        .meta
        .changes_after(f.tenant, 0, usize::MAX, usize::MAX)
        .unwrap();
    prop_assert_eq!(journal.len() as u64, head, "one entry per sequence");
    for (i, entry) in journal.iter().enumerate() {
        prop_assert_eq!(entry.seq, i as u64 + 1, "the journal is gap-free");
        prop_assert_ne!(entry.tag, 0);
    }
    let (nodes, _) = f
        .meta
        .snapshot_page(f.tenant, head, None, usize::MAX >> 1, usize::MAX)
        .unwrap();
    let by_id: HashMap<Vec<u8>, &v1::Node> = nodes.iter().map(|n| (n.id.clone(), n)).collect();
    let mut names = HashSet::new();
    for node in &nodes {
        if node.id == ROOT_ID {
            continue;
        }
        let parent = by_id.get(&node.parent_id);
        prop_assert!(
            parent.is_some_and(|p| p.kind == NodeKind::Directory as i32),
            "a live node's parent is a live directory"
        );
        prop_assert!(
            names.insert((node.parent_id.clone(), node.name.clone())),
            "names are unique"
        );
        let mut cursor = node.parent_id.clone();
        for _ in 0..=nodes.len() {
            if cursor == ROOT_ID {
                break;
            }
            cursor = by_id[&cursor].parent_id.clone();
        }
        prop_assert_eq!(cursor, ROOT_ID.to_vec(), "no cycle");
        let attrs = node.attrs.as_ref().unwrap();
        prop_assert!(
            attrs.mode.is_some_and(|m| m <= 0o7777),
            "every stored node has its permission bits"
        );
        prop_assert!(attrs.xattrs.keys().all(|k| k.starts_with("user.")));
        if node.kind == NodeKind::File as i32 {
            let content = attrs.content.as_ref().unwrap();
            let total: u64 = content.chunks.iter().map(|c| u64::from(c.length)).sum();
            prop_assert_eq!(total, attrs.size, "a file's size is its chunks'");
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    /// Structured commits: applied, or refused precisely; the namespace stays well formed.
    #[test]
    fn hostile_commits_are_applied_or_refused_precisely(
        ops in prop_oneof![30 => prop::collection::vec(op(), 1..4), 1 => Just(Vec::new())],
        cursor in prop_oneof![30 => Just(0u64), 1 => any::<u64>()],
        cursor_tag in prop_oneof![30 => Just(0u64), 1 => any::<u64>()],
    ) {
        match commit(v1::CommitRequest { ops, cursor, cursor_tag }) {
            Ok(answer) => prop_assert_eq!(answer.cursor, fixture().meta.head(fixture().tenant).unwrap()),
            Err(status) => check_refusal(&status)?,
        }
        check_namespace()?;
    }

    /// Raw bytes as a commit request: whatever decodes is applied or refused precisely.
    #[test]
    fn raw_bytes_as_commits_are_refused_precisely(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(request) = v1::CommitRequest::decode(&bytes[..])
            && let Err(status) = commit(request)
        {
            check_refusal(&status)?;
        }
    }
}

//! Commits through the server's entry point (`Sync::commit`), on a real store in a temporary
//! directory: whatever decodes as a CommitRequest is applied or refused with a status carrying
//! `bvfs-reason`, never a panic or an internal error.
#![no_main]

use std::sync::{Arc, OnceLock};

use bvfs_proto::v1::{self, sync_server::Sync};
use bvfs_server::service::SyncService;
use bvfs_server::store::{ChunkStore, MetaStore};
use libfuzzer_sys::fuzz_target;
use prost::Message;

struct Fixture {
    runtime: tokio::runtime::Runtime,
    service: SyncService,
    token: String,
    _dir: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir_in("/dev/shm").unwrap_or_else(|_| tempfile::tempdir().unwrap());
        let data = bvfs_server::DataDir::open(&dir.path().join("server")).unwrap();
        let device = bvfs_server::auth::add_device(data.meta.as_ref(), "alice", "fuzz").unwrap();
        for i in 1..=3u8 {
            let chunk = vec![i; 1000 * usize::from(i)];
            data.chunks
                .put(device.tenant, blake3::hash(&chunk).as_bytes(), &chunk)
                .unwrap();
        }
        let meta: Arc<dyn MetaStore> = data.meta.clone();
        let chunks: Arc<dyn ChunkStore> = data.chunks.clone();
        Fixture {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            service: SyncService::new(meta, chunks, Arc::default()),
            token: device.token,
            _dir: dir,
        }
    })
}

fuzz_target!(|bytes: &[u8]| {
    let Ok(request) = v1::CommitRequest::decode(bytes) else {
        return;
    };
    let f = fixture();
    let mut request = tonic::Request::new(request);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", f.token).parse().unwrap(),
    );
    if let Err(status) = f.runtime.block_on(f.service.commit(request)) {
        assert!(
            status.metadata().get("bvfs-reason").is_some(),
            "a refusal without a reason: {status:?}"
        );
        assert_ne!(status.code(), tonic::Code::Internal, "{status:?}");
    }
});

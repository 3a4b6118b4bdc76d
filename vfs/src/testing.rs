//! What the unit tests of this crate share: a core over a fresh engine that never reaches a server.

use std::sync::Arc;

use bvfs_engine::api::{Engine, EngineConfig};
use bvfs_engine::remote::{GrpcRemote, RemoteConfig};

use crate::{Vfs, VfsOptions};

/// A writable core over a new engine in a temporary directory, owned by root. The remote address
/// is never reached: these tests only act locally. Keep the directory and the runtime alive as long
/// as the core.
pub(crate) fn local_vfs() -> (Vfs, tempfile::TempDir, tokio::runtime::Runtime) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let engine = {
        let _entered = runtime.enter();
        let remote =
            Arc::new(GrpcRemote::new(&RemoteConfig::new("http://127.0.0.1:9", "token")).unwrap());
        Engine::open(EngineConfig::new(dir.path(), "laptop"), remote).unwrap()
    };
    let options = VfsOptions {
        read_only: false,
        uid: 0,
        gid: 0,
    };
    let vfs = Vfs::new(engine, runtime.handle().clone(), options);
    (vfs, dir, runtime)
}

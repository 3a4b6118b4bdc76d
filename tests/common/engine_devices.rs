//! Engine devices for the tests that drive the engine directly against a real server (no mount):
//! open one, write a file as the mount does, read back the root's files.

use std::path::Path;
use std::sync::Arc;

use bvfs_engine::model::NodeKind;
use bvfs_engine::remote::{GrpcRemote, RemoteConfig};
use bvfs_engine::state::ROOT_INO;
use bvfs_engine::{Engine, EngineConfig};

/// A device named `name`, its state under `dir/name`, syncing with the server at `url`.
pub fn device(dir: &Path, name: &str, url: &str, token: &str) -> Arc<Engine> {
    let remote = Arc::new(GrpcRemote::new(&RemoteConfig::new(url, token)).unwrap());
    Engine::open(EngineConfig::new(dir.join(name), name), remote).unwrap()
}

/// Writes `data` as the whole content of `name` in the root (creating it if needed), as the mount
/// does.
pub async fn write(engine: &Engine, name: &str, data: &[u8]) {
    let ino = match engine.lookup(ROOT_INO, name).unwrap() {
        Some(entry) => entry.ino,
        None => {
            engine
                .create(ROOT_INO, name, NodeKind::File, false, None)
                .unwrap()
                .ino
        }
    };
    let path = engine.open_write(ino, true).await.unwrap().path;
    std::fs::write(path, data).unwrap();
    engine.close_write(ino, true, None).unwrap();
}

/// Every file in the root with its content, sorted by name.
pub async fn files(engine: &Engine) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in engine.list(ROOT_INO, None, 10_000).unwrap() {
        let data = engine
            .read(&entry, 0, entry.node.attrs.size as u32)
            .await
            .unwrap_or_else(|e| panic!("{} cannot be read: {e}", entry.node.name));
        out.push((entry.node.name, String::from_utf8(data).unwrap()));
    }
    out.sort();
    out
}

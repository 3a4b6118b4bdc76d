//! Files the engine reads back from disk: the chunk cache's index snapshot and stored manifests.
#![no_main]

use bvfs_engine::cache::decode_index;
use bvfs_engine::model::ContentHash;
use bvfs_engine::state::unpack_manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let _ = decode_index(bytes);
    let size = bytes
        .get(..8)
        .map_or(0, |b| i64::from_le_bytes(b.try_into().expect("8 bytes")));
    let _ = unpack_manifest(ContentHash([0; 32]), size, bytes.get(8..).unwrap_or_default());
});

//! The engine's decoding of what a server sends: pages of changes and snapshots, single nodes,
//! contents. Arbitrary bytes must give a value or an error, never a panic.
#![no_main]

use bvfs_engine::wire::{elided_content, manifest_from_proto, node_from_proto};
use bvfs_proto::v1;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(page) = v1::ListChangesResponse::decode(bytes) {
        for change in &page.changes {
            if let Some(node) = &change.node {
                let _ = node_from_proto(node);
                let _ = elided_content(node);
            }
        }
    }
    if let Ok(page) = v1::SnapshotResponse::decode(bytes) {
        for node in &page.nodes {
            let _ = node_from_proto(node);
        }
    }
    if let Ok(content) = v1::Content::decode(bytes) {
        let _ = manifest_from_proto(&content, content.chunk_count);
    }
});

//! Hostile input to the engine's decoders (issue 14): every decoder of untrusted bytes (the wire's
//! nodes, changes and contents, the chunk cache's index file, stored manifests) answers arbitrary
//! input with a value or an error, never a panic, and what it accepts is consistent. The same entry
//! points are fuzzed with libFuzzer in the long mode (`fuzz/`, `scripts/fuzz.sh`).
//!
//! `BVFS_DECODE_CASES` sets the cases per property (10,000 by default).

use bvfs_engine::cache::{decode_index, encode_index};
use bvfs_engine::chunking::ChunkId;
use bvfs_engine::model::{ContentHash, NodeKind};
use bvfs_engine::state::unpack_manifest;
use bvfs_engine::wire::{elided_content, fetched_manifest, manifest_from_proto, node_from_proto};
use bvfs_proto::v1;
use proptest::prelude::*;
use prost::Message;

fn cases() -> u32 {
    std::env::var("BVFS_DECODE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

/// Bytes of lengths around the interesting ones (ids are 16, hashes 32).
fn some_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(Vec::new()),
        prop::collection::vec(any::<u8>(), 16),
        prop::collection::vec(any::<u8>(), 32),
        prop::collection::vec(any::<u8>(), 0..40),
    ]
}

fn chunk_ref() -> impl Strategy<Value = v1::ChunkRef> {
    (
        some_bytes(),
        prop_oneof![Just(0u32), 1u32..300_000, Just(u32::MAX)],
    )
        .prop_map(|(id, length)| v1::ChunkRef { id, length })
}

fn content() -> impl Strategy<Value = v1::Content> {
    (
        some_bytes(),
        prop::collection::vec(chunk_ref(), 0..6),
        prop_oneof![Just(0u32), any::<u32>()],
        prop_oneof![Just(0u32), any::<u32>()],
        any::<bool>(),
        prop_oneof![Just(0u64), any::<u64>()],
        prop_oneof![Just(Vec::new()), some_bytes()],
    )
        .prop_map(
            |(hash, chunks, keep_prefix, keep_suffix, chunks_elided, chunk_count, manifest_ref)| {
                v1::Content {
                    hash,
                    chunks,
                    keep_prefix,
                    keep_suffix,
                    chunks_elided,
                    chunk_count,
                    manifest_ref,
                }
            },
        )
}

fn attrs() -> impl Strategy<Value = v1::NodeAttrs> {
    let xattr = prop_oneof![
        (
            "user\\.[a-z]{1,6}",
            prop::collection::vec(any::<u8>(), 0..16)
        ),
        (".{0,12}", prop::collection::vec(any::<u8>(), 0..4)),
        (
            Just("user.big".to_string()),
            Just(vec![1u8; bvfs_proto::MAX_XATTR_VALUE_BYTES + 1])
        ),
    ];
    (
        prop_oneof![Just(0u64), 0u64..2_000_000, any::<u64>()],
        any::<i64>(),
        any::<bool>(),
        prop::option::of(content()),
        ".{0,8}",
        prop::option::of(any::<u32>()),
        prop::collection::vec(xattr, 0..3)
            .prop_map(|v| v.into_iter().collect::<std::collections::HashMap<_, _>>()),
    )
        .prop_map(
            |(size, mtime_ns, executable, content, symlink_target, mode, xattrs)| v1::NodeAttrs {
                size,
                mtime_ns,
                executable,
                content,
                symlink_target,
                mode,
                xattrs,
            },
        )
}

/// Nodes as a hostile server could send them: every field free, within shapes that reach deep.
fn node() -> impl Strategy<Value = v1::Node> {
    (
        some_bytes(),
        some_bytes(),
        ".{0,12}",
        prop_oneof![Just(0i32), Just(1), Just(2), Just(3), any::<i32>()],
        prop::option::of(attrs()),
        any::<u64>(),
    )
        .prop_map(|(id, parent_id, name, kind, attrs, revision)| v1::Node {
            id,
            parent_id,
            name,
            kind,
            attrs,
            revision,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// A node from the wire is accepted only whole and consistent; anything else is an error.
    #[test]
    fn a_node_from_the_wire_is_a_consistent_node_or_an_error(node in node()) {
        if let Ok((model, manifest)) = node_from_proto(&node) {
            prop_assert_eq!(model.revision, node.revision);
            match model.kind {
                NodeKind::File => match &manifest {
                    Some(m) => {
                        let total: u64 = m.chunks.iter().map(|c| u64::from(c.len)).sum();
                        prop_assert_eq!(total, model.attrs.size);
                        prop_assert_eq!(Some(m.hash), model.attrs.content);
                    }
                    None => prop_assert!(model.attrs.content.is_some(), "an elided file keeps its hash"),
                },
                _ => prop_assert!(manifest.is_none()),
            }
            prop_assert_eq!(model.kind == NodeKind::Symlink, model.attrs.symlink_target.is_some());
            prop_assert!(model.attrs.mode <= 0o7777, "only permission bits are kept");
            prop_assert!(model.attrs.xattrs.keys().all(|k| k.starts_with("user.") && k.len() <= 255));
        }
        let _ = elided_content(&node);
    }

    /// Raw bytes decoded as the wire's messages, then as nodes: no panic.
    #[test]
    fn raw_bytes_as_pages_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(page) = v1::ListChangesResponse::decode(&bytes[..]) {
            for change in &page.changes {
                if let Some(node) = &change.node {
                    let _ = node_from_proto(node);
                }
            }
        }
        if let Ok(page) = v1::SnapshotResponse::decode(&bytes[..]) {
            for node in &page.nodes {
                let _ = node_from_proto(node);
            }
        }
        if let Ok(node) = v1::Node::decode(&bytes[..]) {
            let _ = node_from_proto(&node);
        }
    }

    /// A content decoded for a file of `size`: accepted only if its chunks add up to it.
    #[test]
    fn a_content_is_accepted_only_whole(content in content(), size in prop_oneof![0u64..1_000_000, any::<u64>()]) {
        if let Ok(manifest) = manifest_from_proto(&content, size) {
            prop_assert_eq!(manifest.size, size);
            prop_assert_eq!(manifest.chunks.len(), content.chunks.len());
            prop_assert!(content.keep_prefix == 0 && content.keep_suffix == 0 && !content.chunks_elided);
        }
    }

    /// A chunk list fetched with GetManifest for an elided content: checked against what the page
    /// said (count and size).
    #[test]
    fn a_fetched_list_is_checked(
        chunks in prop::collection::vec(chunk_ref(), 0..8),
        size in 0u64..2_000_000,
        count in 0u64..10,
    ) {
        let hash = ContentHash([7; 32]);
        let refs: Vec<bvfs_engine::chunking::ChunkRef> = chunks
            .iter()
            .filter_map(|c| Some(bvfs_engine::chunking::ChunkRef {
                id: ChunkId::from_slice(&c.id)?,
                len: c.length,
            }))
            .collect();
        if let Ok(manifest) = fetched_manifest((hash, size, count), refs) {
            prop_assert_eq!(manifest.chunks.len() as u64, count);
            prop_assert_eq!(manifest.chunks.iter().map(|c| u64::from(c.len)).sum::<u64>(), size);
        }
    }

    /// The cache's index file: arbitrary bytes are refused cleanly; a written index reads back; any
    /// change to one is caught.
    #[test]
    fn the_cache_index_file_is_trusted_only_whole(
        bytes in prop::collection::vec(any::<u8>(), 0..200),
        entries in prop::collection::vec((any::<[u8; 32]>(), any::<u32>()), 0..20),
        flip in any::<prop::sample::Index>(),
    ) {
        let _ = decode_index(&bytes);
        let entries: Vec<(ChunkId, u32)> = entries.into_iter().map(|(id, len)| (ChunkId(id), len)).collect();
        let encoded = encode_index(&entries);
        prop_assert_eq!(decode_index(&encoded).unwrap(), entries);
        let mut damaged = encoded.clone();
        let at = flip.index(damaged.len());
        damaged[at] ^= 0x40;
        prop_assert!(decode_index(&damaged).is_err());
        prop_assert!(decode_index(&encoded[..encoded.len() - 1]).is_err());
    }

    /// A stored manifest read back from the state database: a list of whole records adding up to
    /// its size, or an error.
    #[test]
    fn a_stored_manifest_is_whole_or_refused(
        packed in prop::collection::vec(any::<u8>(), 0..400),
        size in prop_oneof![any::<i64>(), 0i64..10_000_000],
    ) {
        if let Ok(manifest) = unpack_manifest(ContentHash([1; 32]), size, &packed) {
            prop_assert_eq!(manifest.chunks.len() * 36, packed.len());
            prop_assert_eq!(manifest.chunks.iter().map(|c| u64::from(c.len)).sum::<u64>() as i64, size);
        }
    }
}

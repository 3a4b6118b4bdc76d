//! Property tests of chunking: determinism, lossless reassembly, and edits that stay local.

use std::collections::HashSet;
use std::io::{self, Read};

use bvfs_engine::chunking::{ChunkParams, Manifest, chunk_bytes, chunk_reader};
use proptest::prelude::*;

/// Small sizes so that a few KiB of input already spans many chunks.
const SMALL: ChunkParams = ChunkParams {
    min: 512,
    avg: 2048,
    max: 8192,
};

/// A reader that hands out its bytes in pieces of the given sizes, as a socket or pipe would.
struct Trickle<'a> {
    data: &'a [u8],
    pieces: Vec<usize>,
    turn: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let piece = self.pieces[self.turn % self.pieces.len()].max(1);
        self.turn += 1;
        let n = piece.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fn chunked_with_bytes(data: &[u8], reader: impl Read) -> (Manifest, Vec<u8>) {
    let mut joined = Vec::with_capacity(data.len());
    let manifest = chunk_reader(reader, SMALL, |chunk, bytes| {
        assert_eq!(chunk.len as usize, bytes.len());
        joined.extend_from_slice(bytes);
        Ok(())
    })
    .unwrap();
    (manifest, joined)
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // Random bytes: cut points come from content.
        prop::collection::vec(any::<u8>(), 0..max),
        // Long runs of one byte: cuts fall back to the maximum size.
        (any::<u8>(), 0..max).prop_map(|(b, n)| vec![b; n]),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Same bytes give the same manifest, however the reader splits them up.
    #[test]
    fn same_bytes_same_manifest(data in bytes(100_000), pieces in prop::collection::vec(1usize..20_000, 1..8)) {
        let whole = chunk_bytes(&data, SMALL);
        let (trickled, _) = chunked_with_bytes(&data, Trickle { data: &data, pieces, turn: 0 });
        prop_assert_eq!(&whole, &trickled);
        prop_assert_eq!(whole, chunk_bytes(&data, SMALL));
    }

    /// Concatenating the chunks gives the input; sizes and hashes are consistent.
    #[test]
    fn chunks_concatenate_to_the_input(data in bytes(100_000)) {
        let (manifest, joined) = chunked_with_bytes(&data, &data[..]);
        prop_assert_eq!(&joined, &data);
        prop_assert_eq!(manifest.size, data.len() as u64);
        prop_assert_eq!(manifest.hash.0, *blake3::hash(&data).as_bytes());
        let mut offset = 0usize;
        for (i, chunk) in manifest.chunks.iter().enumerate() {
            let len = chunk.len as usize;
            prop_assert!(len <= SMALL.max);
            if i + 1 < manifest.chunks.len() {
                prop_assert!(len >= SMALL.min, "only the last chunk may be short");
            }
            prop_assert_eq!(chunk.id.0, *blake3::hash(&data[offset..offset + len]).as_bytes());
            offset += len;
        }
    }

    /// Overwriting, inserting or deleting a few bytes changes only the chunks near the edit.
    #[test]
    fn an_edit_changes_only_nearby_chunks(
        data in prop::collection::vec(any::<u8>(), 50_000..150_000),
        at in any::<prop::sample::Index>(),
        edit in prop::collection::vec(any::<u8>(), 1..200),
        kind in 0u8..3,
    ) {
        let pos = at.index(data.len());
        let mut edited = data.clone();
        match kind {
            0 => {
                let end = (pos + edit.len()).min(edited.len());
                edited[pos..end].copy_from_slice(&edit[..end - pos]);
            }
            1 => { edited.splice(pos..pos, edit.iter().copied()); }
            _ => { edited.drain(pos..(pos + edit.len()).min(data.len())); }
        }
        let before = chunk_bytes(&data, SMALL);
        let after = chunk_bytes(&edited, SMALL);
        let known: HashSet<_> = before.chunks.iter().map(|c| c.id).collect();
        let new_bytes: u64 = after.chunks.iter().filter(|c| !known.contains(&c.id)).map(|c| u64::from(c.len)).sum();
        // The chunk holding the edit, a neighbour on each side while the cut points resynchronise, and
        // the edit itself: anything more means an edit disturbed far-away chunks.
        let bound = (edit.len() + 3 * SMALL.max) as u64;
        prop_assert!(new_bytes <= bound, "{new_bytes} new bytes for a {}-byte edit (bound {bound})", edit.len());
        // Chunks wholly before the edit are untouched.
        let mut offset = 0u64;
        for (old, new) in before.chunks.iter().zip(&after.chunks) {
            offset += u64::from(old.len);
            if offset + 64 >= pos as u64 { break; }
            prop_assert_eq!(old, new);
        }
    }
}

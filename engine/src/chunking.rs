//! Content-defined chunking (FastCDC v2020) and BLAKE3 hashing: bytes in, a [`Manifest`] out.
//!
//! A file version is the ordered list of its chunks (id = BLAKE3 of the chunk's bytes, and length) plus
//! the BLAKE3 of the whole content (DESIGN D6). Cut points depend only on nearby bytes, so an edit in the
//! middle of a large file changes only the chunks around it, and only those cross the wire.
//!
//! [`chunk_reader`] streams any size in bounded memory: it scans a buffer (growing with the input to
//! 4 MiB) with `fastcdc`'s cut function and hashes each chunk straight from that buffer, without the
//! per-chunk copy of `fastcdc::v2020::StreamCDC`.

use std::fmt;
use std::io::{self, Read};

use fastcdc::v2020::{Normalization, cut, select_masks};

use crate::model::ContentHash;

/// The id of a chunk: BLAKE3 of its bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// The id of `data`.
    pub fn of(data: &[u8]) -> Self {
        Self(*blake3::hash(data).as_bytes())
    }

    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", &self.to_hex()[..16])
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// One chunk of a file version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkRef {
    pub id: ChunkId,
    pub len: u32,
}

/// A file version's content: whole-content hash, size and ordered chunks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub hash: ContentHash,
    pub size: u64,
    pub chunks: Vec<ChunkRef>,
}

impl Manifest {
    /// The manifest of empty content.
    pub fn empty() -> Self {
        Self {
            hash: ContentHash(*blake3::hash(b"").as_bytes()),
            size: 0,
            chunks: Vec::new(),
        }
    }

    /// The start offset of every chunk, for locating byte ranges.
    pub fn offsets(&self) -> Vec<u64> {
        let mut start = 0;
        self.chunks
            .iter()
            .map(|c| {
                let this = start;
                start += u64::from(c.len);
                this
            })
            .collect()
    }

    /// The indexes of the chunks covering `[offset, offset + len)`, given [`Manifest::offsets`].
    pub fn chunks_covering(
        offsets: &[u64],
        size: u64,
        offset: u64,
        len: u64,
    ) -> std::ops::Range<usize> {
        if len == 0 || offset >= size || offsets.first().is_none_or(|&first| first > offset) {
            return 0..0;
        }
        let end = offset.saturating_add(len).min(size);
        let first = offsets.partition_point(|&start| start <= offset) - 1;
        let last = offsets.partition_point(|&start| start < end);
        first..last
    }
}

/// FastCDC size parameters. All must be even; min ≤ avg ≤ max.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkParams {
    pub min: usize,
    pub avg: usize,
    pub max: usize,
}

impl Default for ChunkParams {
    /// DESIGN D6: 16 KiB / 64 KiB / 256 KiB.
    fn default() -> Self {
        Self {
            min: 16 * 1024,
            avg: 64 * 1024,
            max: bvfs_proto::MAX_CHUNK_BYTES,
        }
    }
}

/// The scanning buffer of [`chunk_reader`]: large reads, bounded memory.
const READ_BUFFER: usize = 4 * 1024 * 1024;

/// The size the scanning buffer starts at; it doubles while the input fills it, up to its full
/// size. Zeroing a full buffer for every small file cost more than the rest of its commit (glibc
/// hands a freed 4 MiB block back to the next allocation, which `calloc` must clear): 30 % of the
/// daemon's CPU in a loop of small creates.
const FIRST_READ_BUFFER: usize = 64 * 1024;

/// Splits `reader` into chunks, calling `sink` with each chunk and its bytes in order, and returns the
/// manifest. Memory stays bounded (one read buffer) whatever the size.
pub fn chunk_reader<R: Read>(
    mut reader: R,
    params: ChunkParams,
    mut sink: impl FnMut(&ChunkRef, &[u8]) -> io::Result<()>,
) -> io::Result<Manifest> {
    assert!(
        params.min.is_multiple_of(2)
            && params.avg.is_multiple_of(2)
            && params.max.is_multiple_of(2),
        "FastCDC sizes must be even"
    );
    assert!(params.min <= params.avg && params.avg <= params.max);
    let (mask_s, mask_l) = select_masks(params.avg, Normalization::Level1);
    let full_buffer = READ_BUFFER.max(2 * params.max);
    let mut buffer = vec![0u8; FIRST_READ_BUFFER.min(full_buffer)];
    let mut whole = blake3::Hasher::new();
    let mut chunks = Vec::new();
    let mut size = 0u64;
    let (mut start, mut filled, mut eof) = (0usize, 0usize, false);
    loop {
        // Keep at least `max` bytes ahead of the scan unless the input has ended, so every cut point
        // is the one the whole input would give.
        if !eof && filled - start < params.max {
            buffer.copy_within(start..filled, 0);
            filled -= start;
            start = 0;
            while !eof && filled < full_buffer {
                if filled == buffer.len() {
                    buffer.resize((buffer.len() * 2).min(full_buffer), 0);
                }
                match reader.read(&mut buffer[filled..]) {
                    Ok(0) => eof = true,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
        if start == filled {
            break;
        }
        let window = &buffer[start..filled];
        let (_, len) = cut(
            window,
            params.min,
            params.avg,
            params.max,
            mask_s,
            mask_l,
            mask_s << 1,
            mask_l << 1,
        );
        debug_assert!(len > 0 && len <= params.max);
        let data = &window[..len];
        let chunk = ChunkRef {
            id: ChunkId::of(data),
            len: len as u32,
        };
        whole.update(data);
        sink(&chunk, data)?;
        chunks.push(chunk);
        size += len as u64;
        start += len;
    }
    Ok(Manifest {
        hash: ContentHash(*whole.finalize().as_bytes()),
        size,
        chunks,
    })
}

/// The manifest of in-memory bytes.
pub fn chunk_bytes(data: &[u8], params: ChunkParams) -> Manifest {
    chunk_reader(data, params, |_, _| Ok(())).expect("reading from a slice cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_input_has_no_chunks_and_the_empty_hash() {
        let m = chunk_bytes(b"", ChunkParams::default());
        assert_eq!(m, Manifest::empty());
    }

    /// Hands out the input in uneven pieces, as a file or pipe may.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            self.step = (self.step * 7 + 3) % 9_973 + 1;
            let n = self.step.min(out.len()).min(self.data.len());
            out[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    /// The cut points and hashes are those of the whole input at once, whatever its size (below,
    /// across and past the growing buffer's sizes) and however the reads split it.
    #[test]
    fn streamed_chunks_equal_the_whole_inputs_at_every_size() {
        let params = ChunkParams::default();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let data: Vec<u8> = (0..9 * 1024 * 1024 + 12_345)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        for size in [0, 1, 100, 65_536, 65_537, 300_000, 4 << 20, data.len()] {
            let input = &data[..size];
            let reference: Vec<(usize, usize)> = fastcdc::v2020::FastCDC::with_level(
                input,
                params.min,
                params.avg,
                params.max,
                Normalization::Level1,
            )
            .map(|c| (c.offset, c.length))
            .collect();
            let mut seen = Vec::new();
            let manifest = chunk_reader(
                Trickle {
                    data: input,
                    step: size,
                },
                params,
                |chunk, bytes| {
                    assert_eq!(chunk.id, ChunkId::of(bytes));
                    seen.push(bytes.len());
                    Ok(())
                },
            )
            .unwrap();
            let mut offset = 0;
            let streamed: Vec<(usize, usize)> = seen
                .iter()
                .map(|&len| {
                    offset += len;
                    (offset - len, len)
                })
                .collect();
            assert_eq!(streamed, reference, "size {size}");
            assert_eq!(manifest.size, size as u64);
            assert_eq!(
                manifest.hash.0,
                *blake3::hash(input).as_bytes(),
                "size {size}"
            );
            assert_eq!(manifest, chunk_bytes(input, params), "size {size}");
        }
    }

    #[test]
    fn covering_range_finds_exactly_the_touched_chunks() {
        let offsets = [0, 10, 20, 30];
        let size = 35;
        assert_eq!(Manifest::chunks_covering(&offsets, size, 0, 1), 0..1);
        assert_eq!(Manifest::chunks_covering(&offsets, size, 9, 2), 0..2);
        assert_eq!(Manifest::chunks_covering(&offsets, size, 10, 10), 1..2);
        assert_eq!(Manifest::chunks_covering(&offsets, size, 25, 100), 2..4);
        assert_eq!(Manifest::chunks_covering(&offsets, size, 35, 1), 0..0);
        assert_eq!(Manifest::chunks_covering(&offsets, size, 3, 0), 0..0);
    }
}

//! Chunk + hash throughput on one core, side by side with plain BLAKE3 hashing of the same bytes
//! (what `b3sum --num-threads 1` does), which is the floor any content-addressed chunker pays.
//!
//! Run: `cargo bench -p bvfs-engine --bench chunking`. `scripts/bench-chunking.sh` compares the
//! `bvfs hash` command with the real `b3sum` binary on a file.

use bvfs_engine::chunking::{ChunkParams, chunk_bytes};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

fn random_bytes(len: usize) -> Vec<u8> {
    // xorshift: fast, deterministic, incompressible enough for content-defined cut points.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn chunking(c: &mut Criterion) {
    let data = random_bytes(256 * 1024 * 1024);
    let mut group = c.benchmark_group("one-core-256MiB");
    group.throughput(Throughput::Bytes(data.len() as u64));
    group.sample_size(10);
    group.bench_function("baseline: blake3 whole content (b3sum core)", |b| {
        b.iter(|| black_box(blake3::hash(black_box(&data))))
    });
    group.bench_function("fastcdc cut points only", |b| {
        b.iter(|| {
            let chunker =
                fastcdc::v2020::FastCDC::new(black_box(&data), 16 * 1024, 64 * 1024, 256 * 1024);
            black_box(chunker.count())
        })
    });
    group.bench_function("bvfs chunk + chunk ids + content hash", |b| {
        b.iter(|| black_box(chunk_bytes(black_box(&data), ChunkParams::default())))
    });
    group.finish();
}

criterion_group!(benches, chunking);
criterion_main!(benches);

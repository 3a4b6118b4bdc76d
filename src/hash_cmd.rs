//! `bvfs hash`: the BitVault content hash and chunk manifest of local files.
//!
//! The content hash is the BLAKE3 of the whole file, so it matches `b3sum`; the chunks are what an
//! upload of the file would send (FastCDC 16/64/256 KiB, each named by its BLAKE3).

use std::fs::File;
use std::io::BufReader;
use std::path::PathBuf;

use anyhow::Context;
use bvfs_engine::chunking::{ChunkParams, chunk_reader};
use clap::Args;

#[derive(Args)]
#[command(
    after_help = "Example:\n  bvfs hash big.iso            # same first column as `b3sum big.iso`\n  \
bvfs hash --chunks --json big.iso"
)]
pub struct HashArgs {
    /// Files to hash
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Also list every chunk (id and length)
    #[arg(long)]
    chunks: bool,
    /// Print one JSON object per file
    #[arg(long)]
    json: bool,
}

pub fn run(args: HashArgs) -> anyhow::Result<()> {
    for path in &args.files {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let manifest = chunk_reader(
            BufReader::with_capacity(0, file),
            ChunkParams::default(),
            |_, _| Ok(()),
        )
        .with_context(|| format!("cannot read {}", path.display()))?;
        let hash = manifest.hash.to_hex();
        if args.json {
            let mut value = serde_json::json!({
                "path": path,
                "hash": hash,
                "size": manifest.size,
                "chunk_count": manifest.chunks.len(),
            });
            if args.chunks {
                value["chunks"] = manifest
                    .chunks
                    .iter()
                    .map(|c| serde_json::json!({ "id": c.id.to_hex(), "len": c.len }))
                    .collect();
            }
            println!("{value}");
        } else {
            println!("{hash}  {}", path.display());
            if args.chunks {
                for chunk in &manifest.chunks {
                    println!("  {} {}", chunk.id, chunk.len);
                }
            }
        }
    }
    Ok(())
}

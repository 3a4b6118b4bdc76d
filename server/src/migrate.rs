//! `bvfs admin migrate`: copies an embedded server (SQLite catalog + chunk directory) into the
//! scale-out backends (PostgreSQL + S3), identities intact.
//!
//! Every tenant keeps its name, its namespace id, its tokens (by hash), its journal (sequences and
//! lineage tags unchanged) and its live nodes, so devices only need the new address: their cursors
//! and positions still name the same history. Each tenant is one PostgreSQL transaction; its
//! chunks are copied first (each one's BLAKE3 checked on the way), so a tenant that exists in the
//! target has all its chunks. The source must not be served meanwhile (the caller holds its lock);
//! the target must not hold a tenant of the same name (a re-run skips tenants already copied).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use bvfs_proto::PAGE_BUDGET_BYTES;

use crate::storage::StorageUrls;
use crate::store::fs_chunks::FsChunkStore;
use crate::store::io_runtime::IoRuntime;
use crate::store::postgres::{PgMetaStore, redact};
use crate::store::s3::{S3ChunkStore, S3Location};
use crate::store::sqlite::SqliteMetaStore;
use crate::store::{ChunkStore, MetaStore, StoreError, StoreResult};

/// What was copied.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Migrated {
    pub tenants: usize,
    /// Tenants already in the target (an earlier run), left alone.
    pub skipped: Vec<String>,
    pub entries: u64,
    pub chunks: u64,
    pub chunk_bytes: u64,
}

/// Journal entries and snapshot nodes read per page.
const PAGE: usize = 1_000;

/// Copies every tenant of the embedded stores into the target stores; `progress` hears of each.
pub fn migrate(
    from_meta: &SqliteMetaStore,
    from_chunks: &FsChunkStore,
    to_meta: &PgMetaStore,
    to_chunks: &dyn ChunkStore,
    progress: &mut dyn FnMut(&str),
) -> StoreResult<Migrated> {
    let mut done = Migrated::default();
    for (tenant, name) in from_meta.tenants()? {
        if to_meta.tenant_by_name(&name)?.is_some() {
            progress(&format!("{name}: already in the target, skipped"));
            done.skipped.push(name);
            continue;
        }
        let (_, created_ns, namespace_id) = from_meta.tenant_record(tenant)?;
        let head = from_meta.head(tenant)?;
        // Chunk keys carry the target's tenant id: reserve it, copy the chunks under it (each
        // checked), then the namespace in one transaction. A tenant that exists in the target has
        // every chunk; a run cut short leaves only unreferenced chunks under an unused id.
        let target = to_meta.reserve_tenant_id()?;
        let (mut chunks, mut bytes) = (0u64, 0u64);
        for id in from_chunks.chunks_of(tenant)? {
            let data = from_chunks.get(tenant, &id)?.ok_or_else(|| {
                StoreError::Corrupt(format!("chunk {} vanished", hex::encode(id)))
            })?;
            if blake3::hash(&data).as_bytes() != &id {
                return Err(StoreError::Corrupt(format!(
                    "chunk {} of {name} does not hash to its id; not copied",
                    hex::encode(id)
                )));
            }
            to_chunks.put(target, &id, &data)?;
            chunks += 1;
            bytes += data.len() as u64;
        }
        to_chunks.sync()?;
        let mut entries = 0u64;
        to_meta.import_tenant(
            target,
            &name,
            created_ns,
            &namespace_id,
            head,
            &mut |import| {
                for (hash, device, created) in from_meta.token_records(tenant)? {
                    import.token(&hash, &device, created)?;
                }
                let mut after = None;
                loop {
                    let (nodes, next) = from_meta.snapshot_page(
                        tenant,
                        head,
                        after.as_ref(),
                        PAGE,
                        PAGE_BUDGET_BYTES,
                    )?;
                    for node in &nodes {
                        import.node(node)?;
                    }
                    match next {
                        Some(next) => after = Some(next),
                        None => break,
                    }
                }
                let mut cursor = 0;
                while cursor < head {
                    let page = from_meta.changes_after(tenant, cursor, PAGE, PAGE_BUDGET_BYTES)?;
                    let Some(last) = page.last() else { break };
                    cursor = last.seq;
                    for entry in &page {
                        import.entry(entry)?;
                        entries += 1;
                    }
                }
                // Entries retention dropped keep their tags; with the floor and the retired
                // ids they go along, so positions and ids mean the same in the target.
                let retention = from_meta.retention_state(tenant)?;
                import.retention(&retention)?;
                let dropped = retention.dropped_tags.len() as u64;
                if entries + dropped != head {
                    return Err(StoreError::Corrupt(format!(
                        "{name}: the journal holds {entries} entries and {dropped} dropped ones \
                         for head {head}"
                    )));
                }
                Ok(())
            },
        )?;
        progress(&format!(
            "{name}: {entries} journal entries, {chunks} chunks ({bytes} bytes) → tenant {target}"
        ));
        done.tenants += 1;
        done.entries += entries;
        done.chunks += chunks;
        done.chunk_bytes += bytes;
    }
    Ok(done)
}

/// `bvfs admin migrate`: opens the embedded source named by `from` (taking its locks: no server
/// may serve it meanwhile) and the target (`postgres://…`, and `s3://…` or a directory), then
/// [`migrate`]s.
pub fn run(
    from: &StorageUrls,
    to_metadata: &str,
    to_chunks: &str,
    progress: &mut dyn FnMut(&str),
) -> anyhow::Result<Migrated> {
    let meta_path = match from.metadata.as_deref() {
        None => from.data.join("meta.sqlite"),
        Some(url) if url.starts_with("postgres") => {
            bail!(
                "the source must be an embedded server (a SQLite catalog), not {}",
                redact(url)
            )
        }
        Some(path) => PathBuf::from(path),
    };
    let chunk_dir = match from.chunks.as_deref() {
        None => from.data.join("chunks"),
        Some(url) if url.starts_with("s3://") => {
            bail!("the source must be an embedded server (a chunk directory), not {url}")
        }
        Some(dir) => PathBuf::from(dir),
    };
    if !meta_path.exists() {
        bail!(
            "there is no embedded server at {} (no catalog)",
            meta_path.display()
        );
    }
    if !to_metadata.starts_with("postgres://") && !to_metadata.starts_with("postgresql://") {
        bail!("--to-metadata must be a postgres:// URL");
    }
    let mut lock_dirs: Vec<PathBuf> = [&meta_path, &chunk_dir]
        .iter()
        .map(|p| {
            p.parent()
                .map_or_else(|| PathBuf::from("."), Path::to_owned)
        })
        .collect();
    lock_dirs.dedup();
    let _locks = lock_dirs
        .iter()
        .map(|dir| crate::storage::lock(dir))
        .collect::<anyhow::Result<Vec<_>>>()
        .context("stop the server before migrating it")?;
    let from_meta = SqliteMetaStore::open(&meta_path)
        .with_context(|| format!("cannot open {}", meta_path.display()))?;
    let from_chunks = FsChunkStore::open(&chunk_dir)
        .with_context(|| format!("cannot open {}", chunk_dir.display()))?;
    let to_meta = PgMetaStore::connect(to_metadata, false)
        .with_context(|| format!("cannot open {}", redact(to_metadata)))?;
    let to_chunks: Box<dyn ChunkStore> = if to_chunks.starts_with("s3://") {
        let location = S3Location::parse(to_chunks).map_err(anyhow::Error::msg)?;
        Box::new(S3ChunkStore::open(
            location,
            Arc::new(IoRuntime::new("bvfs-s3", 2)?),
        )?)
    } else {
        Box::new(FsChunkStore::open(Path::new(to_chunks))?)
    };
    Ok(migrate(
        &from_meta,
        &from_chunks,
        &to_meta,
        to_chunks.as_ref(),
        progress,
    )?)
}

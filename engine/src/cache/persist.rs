//! What the chunk cache keeps on disk besides the chunks, and how it recovers without it.
//!
//! The layout under the cache directory:
//!
//! ```text
//! lock                one process per directory (flock)
//! index               the LRU order at the last clean close (consumed on open)
//! chunks/ab/abcd…     one file per chunk, named by the hex of its BLAKE3 id
//! chunks/ab/.tmp.N    a chunk being written; any such file at open is garbage
//! ```
//!
//! The `index` file is a snapshot of the in-memory index, written once on clean close and removed
//! as soon as it is loaded. A crash therefore never leaves a stale snapshot behind: the next open
//! finds none and rebuilds the index by scanning `chunks/`, ordering chunks by file mtime (insert
//! time) since the read recency of that session is lost.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;
use std::time::SystemTime;

use crate::chunking::ChunkId;

const MAGIC: &[u8; 8] = b"BVFSCIX1";
const HEADER: usize = MAGIC.len() + 8;
const ENTRY: usize = 32 + 4;
const CHECKSUM: usize = 32;

/// Writes the snapshot of `entries` (least recently used first) to `path`, atomically and durably.
pub(super) fn save_index(path: &Path, entries: &[(ChunkId, u32)]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let result = (|| {
        let mut out = BufWriter::new(File::create(&tmp)?);
        let mut hasher = blake3::Hasher::new();
        let mut put = |bytes: &[u8]| -> io::Result<()> {
            hasher.update(bytes);
            out.write_all(bytes)
        };
        put(MAGIC)?;
        put(&(entries.len() as u64).to_le_bytes())?;
        for (id, len) in entries {
            put(&id.0)?;
            put(&len.to_le_bytes())?;
        }
        out.write_all(hasher.finalize().as_bytes())?;
        out.into_inner()
            .map_err(io::IntoInnerError::into_error)?
            .sync_all()?;
        fs::rename(&tmp, path)?;
        sync_dir(path.parent().unwrap_or(Path::new(".")))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Why a snapshot was not used.
#[derive(Debug, thiserror::Error)]
pub enum BadIndex {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Invalid(&'static str),
}

/// Reads the snapshot at `path`: `Ok(None)` if there is none, an error if it cannot be trusted.
pub(super) fn load_index(path: &Path) -> Result<Option<Vec<(ChunkId, u32)>>, BadIndex> {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut file) => file.read_to_end(&mut bytes)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    decode_index(&bytes).map(Some)
}

/// Decodes an index snapshot's bytes (untrusted: they come from disk), checking its magic, its
/// checksum and its entry count; never panics.
pub fn decode_index(bytes: &[u8]) -> Result<Vec<(ChunkId, u32)>, BadIndex> {
    if bytes.len() < HEADER + CHECKSUM || &bytes[..MAGIC.len()] != MAGIC {
        return Err(BadIndex::Invalid("not a chunk cache index"));
    }
    let (body, checksum) = bytes.split_at(bytes.len() - CHECKSUM);
    if blake3::hash(body).as_bytes() != checksum {
        return Err(BadIndex::Invalid("checksum mismatch"));
    }
    let count = u64::from_le_bytes(body[MAGIC.len()..HEADER].try_into().expect("8 bytes"));
    let entries = &body[HEADER..];
    if entries.len() as u64 != count.saturating_mul(ENTRY as u64) {
        return Err(BadIndex::Invalid(
            "entry count does not match the file size",
        ));
    }
    let out = entries
        .chunks_exact(ENTRY)
        .map(|entry| {
            let id = ChunkId::from_slice(&entry[..32]).expect("32 bytes");
            let len = u32::from_le_bytes(entry[32..].try_into().expect("4 bytes"));
            (id, len)
        })
        .collect();
    Ok(out)
}

/// Encodes an index snapshot (what [`save_index`] writes), for tests of [`decode_index`].
pub fn encode_index(entries: &[(ChunkId, u32)]) -> Vec<u8> {
    let mut bytes = MAGIC.to_vec();
    bytes.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for (id, len) in entries {
        bytes.extend_from_slice(&id.0);
        bytes.extend_from_slice(&len.to_le_bytes());
    }
    let checksum = blake3::hash(&bytes);
    bytes.extend_from_slice(checksum.as_bytes());
    bytes
}

/// Summary of a directory scan.
#[derive(Debug, Default)]
pub(super) struct Scan {
    /// Chunk files found, oldest first.
    pub entries: Vec<(ChunkId, u32)>,
    /// Files that are not chunks of this cache (left alone).
    pub strays: usize,
    /// Unfinished chunk writes found and removed.
    pub temps: usize,
}

/// Lists the chunk files under `chunks_dir`, oldest mtime first. Entries that cannot be read are
/// skipped and logged: a chunk the index does not know is only wasted space, never wrong data.
pub(super) fn scan_chunks(chunks_dir: &Path) -> io::Result<Scan> {
    let mut found: Vec<(SystemTime, ChunkId, u32)> = Vec::new();
    let mut scan = Scan::default();
    for shard in fs::read_dir(chunks_dir)? {
        let shard = shard?;
        let shard_name = shard.file_name();
        let Some(prefix) = shard_name
            .to_str()
            .filter(|n| n.len() == 2 && is_lower_hex(n))
        else {
            scan.strays += 1;
            continue;
        };
        if !shard.file_type()?.is_dir() {
            scan.strays += 1;
            continue;
        }
        for file in fs::read_dir(shard.path())? {
            let file = match file {
                Ok(file) => file,
                Err(e) => {
                    tracing::warn!(dir = %shard.path().display(), "cannot list cache directory: {e}");
                    break;
                }
            };
            let name = file.file_name();
            if name.to_string_lossy().starts_with(TEMP_PREFIX) {
                match fs::remove_file(file.path()) {
                    Ok(()) => scan.temps += 1,
                    Err(e) => {
                        tracing::warn!(path = %file.path().display(), "cannot remove an unfinished chunk write: {e}")
                    }
                }
                continue;
            }
            let id = name
                .to_str()
                .filter(|n| n.len() == 64 && n.starts_with(prefix) && is_lower_hex(n))
                .and_then(|n| hex::decode(n).ok())
                .and_then(|bytes| ChunkId::from_slice(&bytes));
            let Some(id) = id else {
                scan.strays += 1;
                continue;
            };
            let meta = match file.metadata() {
                Ok(meta) if meta.is_file() => meta,
                Ok(_) => {
                    scan.strays += 1;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(chunk = %id, "cannot stat cached chunk: {e}");
                    continue;
                }
            };
            let Ok(len) = u32::try_from(meta.len()) else {
                scan.strays += 1;
                continue;
            };
            found.push((meta.modified().unwrap_or(SystemTime::UNIX_EPOCH), id, len));
        }
    }
    found.sort_unstable_by_key(|(mtime, id, _)| (*mtime, *id));
    scan.entries = found.into_iter().map(|(_, id, len)| (id, len)).collect();
    Ok(scan)
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The name prefix of a chunk being written, in its shard directory. A clean close leaves none
/// behind; after a crash, [`scan_chunks`] removes them.
pub(super) const TEMP_PREFIX: &str = ".tmp.";

/// Makes the entries of `dir` (creations, renames, removals) durable.
pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Bytes available to unprivileged users on the filesystem holding `path`.
#[cfg(unix)]
pub(super) fn free_bytes(path: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c_path` is a valid NUL-terminated string and `stat` is writable memory of the right
    // type; statvfs initializes it when it returns 0.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so `stat` is initialized.
    let stat = unsafe { stat.assume_init() };
    #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
    Ok((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}

#[cfg(not(unix))]
pub(super) fn free_bytes(_path: &Path) -> io::Result<u64> {
    Ok(u64::MAX)
}

/// An exclusive advisory lock on `path`, held as long as the returned file is open: two processes
/// sharing one cache directory would corrupt each other's accounting.
#[cfg(unix)]
pub(super) fn lock_exclusive(path: &Path) -> io::Result<File> {
    use std::os::fd::AsRawFd;
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    // SAFETY: flock on a valid, open file descriptor.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "the chunk cache {} is in use by another bvfs process",
                    path.parent().unwrap_or(path).display()
                ),
            ));
        }
        return Err(err);
    }
    Ok(file)
}

#[cfg(not(unix))]
pub(super) fn lock_exclusive(path: &Path) -> io::Result<File> {
    fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
}

/// Whether `err` means the disk (or the user's quota) is full.
pub(super) fn is_out_of_space(err: &io::Error) -> bool {
    #[cfg(unix)]
    if matches!(err.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)) {
        return true;
    }
    matches!(
        err.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_round_trips_and_rejects_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index");
        let entries = vec![(ChunkId([1; 32]), 10), (ChunkId([2; 32]), 70_000)];
        save_index(&path, &entries).unwrap();
        assert_eq!(load_index(&path).unwrap(), Some(entries));

        let mut bytes = fs::read(&path).unwrap();
        bytes[HEADER + 3] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(load_index(&path), Err(BadIndex::Invalid(_))));
        fs::write(&path, &bytes[..20]).unwrap();
        assert!(matches!(load_index(&path), Err(BadIndex::Invalid(_))));
        fs::remove_file(&path).unwrap();
        assert!(load_index(&path).unwrap().is_none());
    }
}

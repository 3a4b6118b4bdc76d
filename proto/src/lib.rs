//! The BitVault sync API: the `.proto` definition (in `proto/bvfs/v1/sync.proto`), the tonic/prost code
//! generated from it, and small conversions shared by the client and the server.
//!
//! The wire format is the contract between `bvfs-engine` (the client) and `bvfs-server`; neither crate
//! imports the other.

/// Generated messages and the `Sync` service client and server for `bvfs.v1`.
pub mod v1 {
    tonic::include_proto!("bvfs.v1");
}

/// Length in bytes of a node id on the wire.
pub const NODE_ID_LEN: usize = 16;
/// Length in bytes of a chunk id or content hash (BLAKE3) on the wire.
pub const HASH_LEN: usize = 32;

/// The metadata key that carries the bearer token.
pub const AUTHORIZATION: &str = "authorization";

/// The largest gRPC message either side accepts. Everything that can grow (pages, chunk lists,
/// commit batches) is kept under [`PAGE_BUDGET_BYTES`], a quarter of this, so no message gets near it.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// The encoded size that a page (ListChanges, Snapshot, ListVersions, ListDeleted), a GetManifest or
/// PutManifest page, and a client's CommitRequest stay under. A page always holds at least one entry,
/// and one entry is small once its chunk list is elided (see [`MAX_INLINE_CHUNKS`]).
pub const PAGE_BUDGET_BYTES: usize = 4 * 1024 * 1024;

/// The longest chunk list a `Content` carries inline, either way. A longer list is elided by the
/// server (fetched with GetManifest) and staged by the client (PutManifest). One chunk reference
/// encodes to at most [`MAX_CHUNK_REF_BYTES`], so an inline list stays under 0.7 MiB.
pub const MAX_INLINE_CHUNKS: usize = 16_384;

/// Chunks per GetManifest / PutManifest page: at most 2.8 MB encoded, under [`PAGE_BUDGET_BYTES`].
pub const MANIFEST_PAGE_CHUNKS: usize = 65_536;

/// The most bytes one `ChunkRef` takes inside a repeated field: tag and length (2), the 32-byte id
/// with its tag and length (34), the length varint with its tag (up to 6).
pub const MAX_CHUNK_REF_BYTES: usize = 42;

/// The largest chunk either side accepts: the chunker's maximum (FastCDC 16/64/256 KiB, DESIGN D6).
/// A larger one can only come from a broken or hostile client, and would let one request make the
/// server hash and store megabytes at a time.
pub const MAX_CHUNK_BYTES: usize = 256 * 1024;

/// The most chunks one `PresignUploads`, `ConfirmUploads` or `PresignDownloads` request names.
/// With URLs of at most [`MAX_PRESIGNED_URL_BYTES`], an answer stays under 2.2 MiB.
pub const MAX_PRESIGN_CHUNKS: usize = 256;

/// The longest presigned URL a server sends (a SigV4 URL with a session token is about 1.5 KiB);
/// a longer one is the server's misconfiguration, refused rather than sent.
pub const MAX_PRESIGNED_URL_BYTES: usize = 8 * 1024;

/// The longest extended attribute value (ext4's limit), and the most bytes a node's extended
/// attributes (names and values) take together, so that a node stays small in every page.
pub const MAX_XATTR_VALUE_BYTES: usize = 64 * 1024;
pub const MAX_XATTR_BYTES: usize = 256 * 1024;
/// The only extended attribute namespace that syncs (as Dropbox does); `security.*` and
/// `trusted.*` are local to a machine, and `user.bvfs.*` is bvfs's own interface.
pub const SYNCED_XATTR_PREFIX: &str = "user.";

/// The permission bits a mode may carry (rwx for user, group and other, setuid, setgid, sticky).
pub const MODE_BITS: u32 = 0o7777;

/// A node's permission bits from its wire attributes: `mode` when sent, else what a client from
/// before modes meant (`executable` for files; 0755 for directories, 0777 for symlinks).
pub fn effective_mode(kind: v1::NodeKind, attrs: &v1::NodeAttrs) -> u32 {
    if let Some(mode) = attrs.mode {
        return mode & MODE_BITS;
    }
    match kind {
        v1::NodeKind::Directory => 0o755,
        v1::NodeKind::Symlink => 0o777,
        _ if attrs.executable => 0o755,
        _ => 0o644,
    }
}

/// The most ops one commit may carry; a client splits larger batches.
pub const MAX_OPS_PER_COMMIT: usize = 10_000;

/// The most chunks the resolved chunk lists of one commit of several ops may name together (about
/// 150 MB stored at 36 bytes a chunk): every create and update stores its node's whole resulting list,
/// so a small request of many edits of large files would otherwise cost hundreds of times its size.
/// A commit of a single op may name a whole file of any allowed length. An update's resolved list is
/// `keep_prefix + chunks + keep_suffix` chunks, or `chunk_count` with a `manifest_ref`.
pub const MAX_COMMIT_CHUNKS: usize = 4 * 1024 * 1024;

/// The deepest a node may be placed (levels below the root). Paths of that many levels are far past
/// what a system can open by path (Linux `PATH_MAX` of 4096 bytes allows about 2048), and the bound
/// keeps the server's walk up the tree (cycle and depth checks) short: a create or move under a
/// deeper place is refused with `too-deep`.
pub const MAX_TREE_DEPTH: usize = 2048;

/// The most parent lookups one commit may make for its cycle and depth checks (creates under the
/// same directories share them). A commit past it is refused with `too-large` (split it), so no
/// commit holds its namespace's writer for long.
pub const MAX_COMMIT_WALK: usize = 100_000;

const _: () = assert!(MANIFEST_PAGE_CHUNKS * MAX_CHUNK_REF_BYTES < PAGE_BUDGET_BYTES);
const _: () = assert!(MAX_INLINE_CHUNKS * MAX_CHUNK_REF_BYTES < PAGE_BUDGET_BYTES / 4);

/// Whether a status is gRPC's refusal of a message over the size limit (either side's encoder or
/// decoder: `OUT_OF_RANGE` or `RESOURCE_EXHAUSTED` saying "message length too large"). A client that
/// meets it asks for less instead of repeating the same request.
pub fn is_message_too_large(code: tonic::Code, message: &str) -> bool {
    matches!(
        code,
        tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
    ) && message.contains("message length too large")
}

pub mod names;

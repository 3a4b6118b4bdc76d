//! Storage behind the server: a metadata store (namespace, journal, history, tenants, tokens) and a
//! chunk store (content-addressed bytes, per tenant).
//!
//! The service logic (validation, compare-and-swap, cycle checks) lives in [`crate::namespace`] and
//! speaks only these traits, so backends can be swapped: the embedded ones are SQLite
//! ([`sqlite::SqliteMetaStore`]) and a directory of files ([`fs_chunks::FsChunkStore`]); the
//! scale-out ones, shared by many server processes, are PostgreSQL ([`postgres::PgMetaStore`]) and
//! an S3-compatible object store ([`s3::S3ChunkStore`]).

pub mod fs_chunks;
pub mod io_runtime;
pub mod postgres;
pub mod records;
pub mod s3;
pub mod sqlite;

use bvfs_proto::v1::{ChangeKind, Node};

/// A tenant's internal key. Never sent to clients.
pub type TenantId = i64;

/// A node id as stored (16 bytes).
pub type NodeKey = [u8; 16];

/// A chunk id (BLAKE3 of the chunk's bytes).
pub type ChunkKey = [u8; 32];

/// The id of every tenant's root directory.
pub const ROOT_ID: NodeKey = [0; 16];

/// Failures of a storage backend. These are infrastructure faults (disk, corruption), never client
/// errors: the service maps them to `INTERNAL`/`UNAVAILABLE` and logs them.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("metadata store: {0}")]
    Meta(String),
    #[error("chunk store I/O on {path}: {source}")]
    ChunkIo {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("chunk store: {0}")]
    Chunks(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Who a bearer token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub tenant: TenantId,
    pub tenant_name: String,
    pub device: String,
}

/// A device of a tenant, as `bvfs admin list-devices` shows it (never its tokens).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub name: String,
    /// How many tokens the device has (each `add-user` for it makes one).
    pub tokens: usize,
    /// When its first token was made (ns since the epoch).
    pub created_ns: i64,
}

/// One journal entry: a node's state after a change (or its last state, for a delete).
#[derive(Debug, Clone, PartialEq)]
pub struct JournalEntry {
    pub seq: u64,
    pub kind: ChangeKind,
    pub node: Node,
    pub device: String,
    pub committed_at_ns: i64,
    /// The entry's lineage tag: random and non-zero, fixed when it is committed (see the proto's
    /// "Identity and lineage").
    pub tag: u64,
}

/// A tenant's retention state as stored (for `bvfs admin migrate`; [`crate::retention`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionState {
    /// The window in seconds (`None`: keep everything).
    pub keep_secs: Option<u64>,
    pub floor: u64,
    /// `(seq, tag)` of every dropped journal entry, by sequence.
    pub dropped_tags: Vec<(u64, u64)>,
    /// Ids of nodes whose every entry was dropped.
    pub retired_ids: Vec<NodeKey>,
}

/// A new random, non-zero lineage tag.
pub fn new_tag() -> u64 {
    rand::random::<u64>() | 1
}

/// The metadata store: tenants, tokens and one namespace + journal per tenant.
pub trait MetaStore: Send + Sync + 'static {
    /// Creates a tenant with an empty root directory; fails if the name is taken.
    fn create_tenant(&self, name: &str) -> StoreResult<TenantId>;
    /// Looks up a tenant by name.
    fn tenant_by_name(&self, name: &str) -> StoreResult<Option<TenantId>>;
    /// Lists tenants by name.
    fn tenants(&self) -> StoreResult<Vec<(TenantId, String)>>;
    /// Stores a device token (by its hash) for a tenant.
    fn add_token(&self, tenant: TenantId, token_hash: &[u8; 32], device: &str) -> StoreResult<()>;
    /// Resolves a token hash to its principal.
    fn principal(&self, token_hash: &[u8; 32]) -> StoreResult<Option<Principal>>;
    /// The tenant's devices: each device name with its tokens, oldest first.
    fn devices(&self, tenant: TenantId) -> StoreResult<Vec<Device>>;
    /// Revokes every token of the tenant's device `device`; returns how many there were.
    fn revoke(&self, tenant: TenantId, device: &str) -> StoreResult<usize>;

    /// The tenant's journal head (0 before the first commit).
    fn head(&self, tenant: TenantId) -> StoreResult<u64>;
    /// The tenant's namespace identity: random, fixed at its creation.
    fn namespace_id(&self, tenant: TenantId) -> StoreResult<[u8; 16]>;
    /// The tag of the tenant's journal entry at `seq`: `Some(0)` for 0, `None` past the head.
    fn tag_at(&self, tenant: TenantId, seq: u64) -> StoreResult<Option<u64>>;
    /// Journal entries with `seq > cursor`, in order, at most `limit`, and no more once their stored
    /// node records reach `max_bytes` (the entry that reaches it is included, so at least one).
    fn changes_after(
        &self,
        tenant: TenantId,
        cursor: u64,
        limit: usize,
        max_bytes: usize,
    ) -> StoreResult<Vec<JournalEntry>>;
    /// The namespace as of `at` (live nodes only), ordered by id, ids strictly after `after`; the root
    /// comes first on the first page. At most `limit` ids are examined, and none after the nodes'
    /// stored records reach `max_bytes`; the second value is the id to continue after, `None` on the
    /// last page.
    fn snapshot_page(
        &self,
        tenant: TenantId,
        at: u64,
        after: Option<&NodeKey>,
        limit: usize,
        max_bytes: usize,
    ) -> StoreResult<(Vec<Node>, Option<NodeKey>)>;
    /// Every journal entry of one node, newest first.
    fn versions(&self, tenant: TenantId, id: &NodeKey) -> StoreResult<Vec<JournalEntry>>;
    /// Journal entries of one node with `seq < before`, newest first, at most `limit` and bounded by
    /// `max_bytes` like [`MetaStore::changes_after`]. The flag says whether more may follow.
    fn versions_page(
        &self,
        tenant: TenantId,
        id: &NodeKey,
        before: u64,
        limit: usize,
        max_bytes: usize,
    ) -> StoreResult<(Vec<JournalEntry>, bool)>;
    /// One journal entry by sequence.
    fn entry(&self, tenant: TenantId, seq: u64) -> StoreResult<Option<JournalEntry>>;
    /// Deletions of nodes that are still deleted, newest first, with `seq < before`, at most `limit`
    /// and bounded by `max_bytes` like [`MetaStore::changes_after`]. The flag says whether more may
    /// follow.
    fn deleted(
        &self,
        tenant: TenantId,
        before: u64,
        limit: usize,
        max_bytes: usize,
    ) -> StoreResult<(Vec<JournalEntry>, bool)>;

    /// The tenant's journal floor ([`crate::retention`]): 0 until a retention run dropped entries;
    /// no position below it can be listed (`ListChanges`) or snapshotted. Only grows.
    fn journal_floor(&self, tenant: TenantId) -> StoreResult<u64>;
    /// The highest sequence `F` such that every journal entry at or below it was committed before
    /// `cutoff_ns` (the head if all were; 0 if none). Read outside the writer lock: an entry
    /// committed meanwhile comes after the head read first, so it is never below `F`.
    fn settled_before(&self, tenant: TenantId, cutoff_ns: i64) -> StoreResult<u64>;

    /// Takes the collection lock of this metadata (one `bvfs admin gc` at a time, across every
    /// process; [`crate::gc`]); `None` if another collection holds it. Released when the guard is
    /// dropped or its process dies.
    fn gc_lock(&self) -> StoreResult<Option<Box<dyn GcLock>>>;

    /// Runs `f` inside one write transaction of the tenant's namespace. If `f` returns `Ok`, everything
    /// it wrote is committed durably before this returns; on `Err` nothing is, and the error is returned.
    /// Store failures become `INTERNAL` statuses.
    fn write(&self, tenant: TenantId, f: &mut WriteFn<'_>) -> Result<(), tonic::Status>;
}

/// The collection lock, held while a collection runs ([`MetaStore::gc_lock`]).
pub trait GcLock: Send {
    /// Fails if the lock may have been lost (its database connection dropped): the collection
    /// must stop deleting.
    fn check(&self) -> StoreResult<()>;
}

/// The body of a write transaction; a returned error rolls it back.
pub type WriteFn<'a> = dyn FnMut(&mut dyn MetaTxn) -> Result<(), tonic::Status> + 'a;

/// Reads and writes of one namespace inside a write transaction.
pub trait MetaTxn {
    /// A live node by id.
    fn node(&mut self, id: &NodeKey) -> StoreResult<Option<Node>>;
    /// Whether this id was ever used in this namespace (live or in the journal).
    fn id_ever_used(&mut self, id: &NodeKey) -> StoreResult<bool>;
    /// The live child of `parent` named `name`.
    fn child_by_name(&mut self, parent: &NodeKey, name: &str) -> StoreResult<Option<NodeKey>>;
    /// Whether `dir` has any live child.
    fn has_children(&mut self, dir: &NodeKey) -> StoreResult<bool>;
    /// Inserts or replaces a live node.
    fn put_node(&mut self, node: &Node) -> StoreResult<()>;
    /// Removes a live node.
    fn remove_node(&mut self, id: &NodeKey) -> StoreResult<()>;
    /// The journal head as of the start of this transaction.
    fn head(&mut self) -> StoreResult<u64>;
    /// The tag of the journal entry at `seq` (`Some(0)` for 0, `None` past the head).
    fn tag_at(&mut self, seq: u64) -> StoreResult<Option<u64>>;
    /// The sequence of the last journal entry of node `id`, if it ever had one.
    fn last_seq_of(&mut self, id: &NodeKey) -> StoreResult<Option<u64>>;
    /// The parent of live node `id` (cheaper than [`MetaTxn::node`]: no record to decode).
    fn parent_of(&mut self, id: &NodeKey) -> StoreResult<Option<NodeKey>>;
    /// Appends a journal entry. Entries of one transaction must carry consecutive sequences starting
    /// at the head + 1 (a duplicate sequence is a store error); [`MetaTxn::set_head`] ends the run.
    fn append(&mut self, entry: &JournalEntry) -> StoreResult<()>;
    /// Records the new head after the entries appended in this transaction.
    fn set_head(&mut self, head: u64) -> StoreResult<()>;
    /// The tenant's collection epoch ([`crate::gc`]): odd while a collection may be deleting
    /// chunks, raised by every collection. 0 before the first.
    fn gc_epoch(&mut self) -> StoreResult<u64>;
    /// Sets the collection epoch (only [`crate::gc`] does, and only upwards).
    fn set_gc_epoch(&mut self, epoch: u64) -> StoreResult<()>;

    /// The tenant's retention window in seconds ([`crate::retention`]); `None` keeps every
    /// version (the default).
    fn retention(&mut self) -> StoreResult<Option<u64>>;
    /// Sets the retention window (`None`: keep everything).
    fn set_retention(&mut self, keep_secs: Option<u64>) -> StoreResult<()>;
    /// The tenant's journal floor ([`MetaStore::journal_floor`]).
    fn journal_floor(&mut self) -> StoreResult<u64>;
    /// Whether the journal still holds the entry at `seq` (retention may have dropped it).
    fn has_entry(&mut self, seq: u64) -> StoreResult<bool>;
    /// One step of journal compaction at floor `floor` ([`crate::retention`]): raises the journal
    /// floor to `floor` (never lowers it), then drops, among the entries with `after < seq <=
    /// upto` (`upto <= floor`), every delete and every entry superseded by a later entry of its
    /// node at or below `floor`, keeping their tags and retiring the ids of deleted nodes.
    /// Returns how many entries were dropped.
    fn compact(&mut self, floor: u64, after: u64, upto: u64) -> StoreResult<u64>;
}

/// A stored chunk as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredChunk {
    pub id: ChunkKey,
    /// Its stored length in bytes.
    pub len: u64,
    /// When it was stored (the file's modification time, the object's last-modified time).
    pub stored_at: std::time::SystemTime,
}

/// Content-addressed chunk storage, scoped by tenant.
pub trait ChunkStore: Send + Sync + 'static {
    /// The stored length of a chunk, if the tenant has it.
    fn stored_len(&self, tenant: TenantId, id: &ChunkKey) -> StoreResult<Option<u64>>;
    /// Stores a chunk whose id the caller has verified. Idempotent. Returns false if it was present.
    fn put(&self, tenant: TenantId, id: &ChunkKey, data: &[u8]) -> StoreResult<bool>;
    /// Makes every `put` so far durable (e.g. fsync of directories): when it returns `Ok`, every chunk
    /// `stored_len` reported before the call survives a crash. Commits call it before their
    /// transaction, so it must be cheap when nothing is pending.
    fn sync(&self) -> StoreResult<()>;
    /// Reads a chunk.
    fn get(&self, tenant: TenantId, id: &ChunkKey) -> StoreResult<Option<Vec<u8>>>;
    /// Every chunk stored for `tenant` (for [`crate::gc`]; names that are not chunk ids are
    /// skipped).
    fn list(&self, tenant: TenantId) -> StoreResult<Vec<StoredChunk>>;
    /// Deletes a chunk; false if it was not stored. Only [`crate::gc`] calls it, under the rules
    /// written there.
    fn delete(&self, tenant: TenantId, id: &ChunkKey) -> StoreResult<bool>;
    /// Deletes presigned uploads never confirmed and last written longer than `older_than` ago
    /// (`bvfs admin gc`). They are never chunks: no commit can name one. Stores without presigned
    /// transfer have none.
    fn sweep_pending(&self, older_than: std::time::Duration) -> StoreResult<PendingSweep> {
        let _ = older_than;
        Ok(PendingSweep::default())
    }
}

/// What [`ChunkStore::sweep_pending`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PendingSweep {
    pub deleted: usize,
    pub bytes: u64,
    /// Pending uploads younger than the grace period, kept.
    pub kept: usize,
}

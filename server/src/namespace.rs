//! The namespace rules: how a commit is validated and applied, as one transaction.
//!
//! Checks come in two passes. First, everything that needs no state (well-formed ids, valid names,
//! attributes that fit the node kind, chunks already stored); then, inside the write transaction and
//! in op order, everything that depends on the namespace: compare-and-swap on base revisions, duplicate
//! ids, sibling-name collisions, parents that are missing or not directories, moves that would create
//! a cycle, deletes of non-empty directories. The first failure rejects the whole commit.
//!
//! Every rejection is a gRPC status with a precise code, a message naming the op, and two metadata
//! entries a client can act on: `bvfs-reason` (a stable word such as `stale-revision`) and
//! `bvfs-op-index`.

use std::collections::HashMap;

use bvfs_proto::names::validate_name;
use bvfs_proto::v1::{self, ChangeKind, Node, NodeAttrs, NodeKind, op::Op as OpKind};
use bvfs_proto::{
    MAX_XATTR_BYTES, MAX_XATTR_VALUE_BYTES, MODE_BITS, SYNCED_XATTR_PREFIX, effective_mode,
};
use tonic::{Code, Status};

use crate::ancestry::Ancestry;
use crate::store::sqlite::store_status;
use crate::store::{
    ChunkKey, ChunkStore, JournalEntry, MetaTxn, NodeKey, ROOT_ID, TenantId, new_tag,
};

/// The largest chunk the server accepts.
pub use bvfs_proto::MAX_CHUNK_BYTES;
/// The commit caps, shared with clients (see `bvfs_proto`).
pub use bvfs_proto::{MAX_COMMIT_CHUNKS, MAX_OPS_PER_COMMIT};
/// The longest symlink target (Linux `PATH_MAX`).
pub const MAX_SYMLINK_TARGET: usize = 4096;

/// Why a request was refused, as a stable machine-readable word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Malformed,
    InvalidName,
    StaleRevision,
    DuplicateId,
    NameCollision,
    NotFound,
    ParentNotDirectory,
    Cycle,
    DirectoryNotEmpty,
    MissingChunks,
    RootImmutable,
    TooLarge,
    KindMismatch,
    UnknownManifest,
    RepeatedUpdate,
    /// The client's position (cursor and tag) names a journal entry the server does not hold: it
    /// was restored from an older backup or otherwise rewound.
    JournalDiverged,
    /// The client's cursor is past the journal's head.
    CursorAhead,
    /// A node would sit deeper than `MAX_TREE_DEPTH` levels.
    TooDeep,
    /// A presigned upload's bytes do not hash to its chunk id, or are too many (`ConfirmUploads`).
    InvalidChunk,
    /// This server does not offer presigned chunk transfer.
    PresignUnavailable,
    /// The client's position is below the journal floor: the retention policy dropped old
    /// entries there, so the client must start again from a snapshot (`crate::retention`).
    JournalCompacted,
    /// The version asked for was dropped by the retention policy.
    Expired,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Malformed => "malformed",
            Reason::InvalidName => "invalid-name",
            Reason::StaleRevision => "stale-revision",
            Reason::DuplicateId => "duplicate-id",
            Reason::NameCollision => "name-collision",
            Reason::NotFound => "not-found",
            Reason::ParentNotDirectory => "parent-not-directory",
            Reason::Cycle => "cycle",
            Reason::DirectoryNotEmpty => "directory-not-empty",
            Reason::MissingChunks => "missing-chunks",
            Reason::RootImmutable => "root-immutable",
            Reason::TooLarge => "too-large",
            Reason::KindMismatch => "kind-mismatch",
            Reason::UnknownManifest => "unknown-manifest",
            Reason::RepeatedUpdate => "repeated-update",
            Reason::JournalDiverged => "journal-diverged",
            Reason::CursorAhead => "cursor-ahead",
            Reason::TooDeep => "too-deep",
            Reason::InvalidChunk => "invalid-chunk",
            Reason::PresignUnavailable => "presign-unavailable",
            Reason::JournalCompacted => "journal-compacted",
            Reason::Expired => "expired",
        }
    }

    fn code(self) -> Code {
        match self {
            Reason::Malformed
            | Reason::InvalidName
            | Reason::RootImmutable
            | Reason::TooLarge
            | Reason::RepeatedUpdate => Code::InvalidArgument,
            Reason::StaleRevision => Code::Aborted,
            Reason::DuplicateId | Reason::NameCollision => Code::AlreadyExists,
            Reason::NotFound | Reason::Expired => Code::NotFound,
            Reason::ParentNotDirectory
            | Reason::Cycle
            | Reason::DirectoryNotEmpty
            | Reason::MissingChunks
            | Reason::KindMismatch
            | Reason::UnknownManifest
            | Reason::JournalDiverged
            | Reason::TooDeep
            | Reason::PresignUnavailable => Code::FailedPrecondition,
            Reason::CursorAhead | Reason::JournalCompacted => Code::OutOfRange,
            Reason::InvalidChunk => Code::DataLoss,
        }
    }
}

/// Metadata key of the machine-readable reason of a rejection.
pub const REASON_KEY: &str = "bvfs-reason";
/// Metadata key of the index of the op that was rejected.
pub const OP_INDEX_KEY: &str = "bvfs-op-index";

/// A rejection of a request, with its reason in the status metadata.
pub fn reject(reason: Reason, op_index: Option<usize>, message: impl Into<String>) -> Status {
    let mut message = message.into();
    if let Some(i) = op_index {
        message = format!("op {i}: {message}");
    }
    let mut status = Status::new(reason.code(), message);
    let meta = status.metadata_mut();
    meta.insert(
        REASON_KEY,
        reason.as_str().parse().expect("reasons are ASCII"),
    );
    if let Some(i) = op_index {
        meta.insert(
            OP_INDEX_KEY,
            i.to_string().parse().expect("digits are ASCII"),
        );
    }
    status
}

/// Parses a node id field.
pub fn node_key(bytes: &[u8], what: &str, op: Option<usize>) -> Result<NodeKey, Status> {
    bytes.try_into().map_err(|_| {
        reject(
            Reason::Malformed,
            op,
            format!("{what} must be 16 bytes, got {}", bytes.len()),
        )
    })
}

/// Parses a chunk id or hash field.
pub fn chunk_key(bytes: &[u8], what: &str, op: Option<usize>) -> Result<ChunkKey, Status> {
    bytes.try_into().map_err(|_| {
        reject(
            Reason::Malformed,
            op,
            format!("{what} must be 32 bytes, got {}", bytes.len()),
        )
    })
}

fn short(id: &[u8]) -> String {
    hex::encode(&id[..id.len().min(8)])
}

fn check_name(name: &str, op: Option<usize>) -> Result<(), Status> {
    validate_name(name).map_err(|e| {
        reject(
            Reason::InvalidName,
            op,
            format!("invalid name {name:?}: {e}"),
        )
    })
}

fn kind_of(kind: i32, op: usize) -> Result<NodeKind, Status> {
    match NodeKind::try_from(kind) {
        Ok(NodeKind::Unspecified) | Err(_) => Err(reject(
            Reason::Malformed,
            Some(op),
            format!("unknown node kind {kind}"),
        )),
        Ok(kind) => Ok(kind),
    }
}

/// Checks that `attrs` fit a node of `kind` and normalises what the kind does not use.
fn check_attrs(kind: NodeKind, attrs: Option<&NodeAttrs>, op: usize) -> Result<NodeAttrs, Status> {
    let attrs = attrs
        .cloned()
        .ok_or_else(|| reject(Reason::Malformed, Some(op), "attrs are missing"))?;
    let bad = |msg: &str| Err(reject(Reason::Malformed, Some(op), msg.to_string()));
    match kind {
        NodeKind::File => {
            let Some(content) = &attrs.content else {
                return bad("a file needs content (hash and chunk manifest)");
            };
            chunk_key(&content.hash, "content hash", Some(op))?;
            if content.keep_prefix != 0 || content.keep_suffix != 0 {
                return bad("a content edit (keep_prefix, keep_suffix) is only valid in an update");
            }
            if content.chunks_elided || !content.manifest_ref.is_empty() {
                return bad("an elided or staged chunk list where the whole list belongs");
            }
            if content.chunks.len() > crate::staging::MAX_MANIFEST_CHUNKS {
                return Err(reject(
                    Reason::TooLarge,
                    Some(op),
                    format!(
                        "a file may have at most {} chunks, got {}",
                        crate::staging::MAX_MANIFEST_CHUNKS,
                        content.chunks.len()
                    ),
                ));
            }
            let mut total: u64 = 0;
            for chunk in &content.chunks {
                chunk_key(&chunk.id, "chunk id", Some(op))?;
                if chunk.length == 0 || chunk.length as usize > MAX_CHUNK_BYTES {
                    return Err(reject(
                        Reason::Malformed,
                        Some(op),
                        format!(
                            "a chunk length must be between 1 byte and {MAX_CHUNK_BYTES} bytes"
                        ),
                    ));
                }
                total += u64::from(chunk.length);
            }
            if total != attrs.size {
                return Err(reject(
                    Reason::Malformed,
                    Some(op),
                    format!(
                        "size {} does not match the chunk lengths, which add up to {total}",
                        attrs.size
                    ),
                ));
            }
            if !attrs.symlink_target.is_empty() {
                return bad("a file has no symlink target");
            }
            check_metadata(kind, attrs, op)
        }
        NodeKind::Directory => {
            if attrs.content.is_some() || !attrs.symlink_target.is_empty() {
                return bad("a directory has no content and no symlink target");
            }
            check_metadata(kind, NodeAttrs { size: 0, ..attrs }, op)
        }
        NodeKind::Symlink => {
            let target = &attrs.symlink_target;
            if target.is_empty() || target.len() > MAX_SYMLINK_TARGET || target.contains('\0') {
                return bad("a symlink target must be 1 to 4096 bytes without NUL");
            }
            if attrs.content.is_some() {
                return bad("a symlink has no content");
            }
            check_metadata(
                kind,
                NodeAttrs {
                    size: target.len() as u64,
                    ..attrs
                },
                op,
            )
        }
        NodeKind::Unspecified => unreachable!("rejected by kind_of"),
    }
}

/// Checks the permission bits and extended attributes of any node, and stores the mode explicitly
/// (a client from before modes sends only `executable`), with `executable` kept equal to the
/// owner's execute bit of a file.
fn check_metadata(kind: NodeKind, attrs: NodeAttrs, op: usize) -> Result<NodeAttrs, Status> {
    let malformed = |msg: String| Err(reject(Reason::Malformed, Some(op), msg));
    if let Some(mode) = attrs.mode
        && mode & !MODE_BITS != 0
    {
        return malformed(format!(
            "mode {mode:o} has bits beyond the permission bits (07777)"
        ));
    }
    let mut total = 0usize;
    for (name, value) in &attrs.xattrs {
        if !name.starts_with(SYNCED_XATTR_PREFIX)
            || name.len() <= SYNCED_XATTR_PREFIX.len()
            || name.len() > 255
            || name.contains('\0')
        {
            return malformed(format!(
                "extended attribute {:?}: only `user.` names of at most 255 bytes sync",
                name.chars().take(64).collect::<String>()
            ));
        }
        if value.len() > MAX_XATTR_VALUE_BYTES {
            return malformed(format!(
                "extended attribute {name}: a value is at most {MAX_XATTR_VALUE_BYTES} bytes"
            ));
        }
        total += name.len() + value.len();
    }
    if total > MAX_XATTR_BYTES {
        return Err(reject(
            Reason::TooLarge,
            Some(op),
            format!("a node's extended attributes take at most {MAX_XATTR_BYTES} bytes together"),
        ));
    }
    let mode = effective_mode(kind, &attrs);
    Ok(NodeAttrs {
        mode: Some(mode),
        executable: kind == NodeKind::File && mode & 0o100 != 0,
        ..attrs
    })
}

/// An update from a client that predates modes and extended attributes (it sends no `mode`): such
/// a client cannot know them, so the node keeps its extended attributes and its permission bits,
/// with only the execute bits following `executable` (set where the matching read bit is, or
/// cleared).
fn keep_newer_metadata(mut attrs: NodeAttrs, current: Option<&NodeAttrs>) -> NodeAttrs {
    let Some(current) = current else {
        return attrs;
    };
    if attrs.mode.is_none()
        && let Some(mode) = current.mode
    {
        let was_executable = mode & 0o100 != 0;
        attrs.mode = Some(match (was_executable, attrs.executable) {
            (false, true) => mode | ((mode & 0o444) >> 2) | 0o100,
            (true, false) => mode & !0o111,
            _ => mode,
        });
        attrs.xattrs = current.xattrs.clone();
    }
    attrs
}

/// An update's attributes with a content edit (see `Content` in the protocol) turned into the whole
/// chunk list, from `current`, the node's attributes at the op's base revision. Attributes without an
/// edit come back as they are.
fn resolve_content_edit<'a>(
    attrs: &'a NodeAttrs,
    current: Option<&NodeAttrs>,
    op: usize,
) -> Result<std::borrow::Cow<'a, NodeAttrs>, Status> {
    let Some(content) = attrs
        .content
        .as_ref()
        .filter(|c| c.keep_prefix != 0 || c.keep_suffix != 0)
    else {
        return Ok(std::borrow::Cow::Borrowed(attrs));
    };
    let base: &[v1::ChunkRef] = current
        .and_then(|a| a.content.as_ref())
        .map(|c| &c.chunks[..])
        .unwrap_or_default();
    let (prefix, suffix) = (content.keep_prefix as usize, content.keep_suffix as usize);
    if prefix.saturating_add(suffix) > base.len() {
        return Err(reject(
            Reason::Malformed,
            Some(op),
            format!(
                "the content edit keeps {prefix} leading and {suffix} trailing chunks, but the \
                 node's current content has {} chunks",
                base.len()
            ),
        ));
    }
    let mut chunks = Vec::with_capacity(prefix + content.chunks.len() + suffix);
    chunks.extend_from_slice(&base[..prefix]);
    chunks.extend_from_slice(&content.chunks);
    chunks.extend_from_slice(&base[base.len() - suffix..]);
    let mut resolved = attrs.clone();
    resolved.content = Some(v1::Content {
        hash: content.hash.clone(),
        chunks,
        ..Default::default()
    });
    Ok(std::borrow::Cow::Owned(resolved))
}

/// Checks, before the transaction, that every chunk named by a commit is stored with its length.
pub fn check_chunks_stored(
    chunks: &dyn ChunkStore,
    tenant: TenantId,
    ops: &[v1::Op],
) -> Result<(), Status> {
    let mut missing = Vec::new();
    // A large manifest names few distinct chunks many times (zero runs, repeated blocks): ask once.
    let mut checked: std::collections::HashSet<(ChunkKey, u32)> = Default::default();
    for (i, op) in ops.iter().enumerate() {
        let content = match &op.op {
            Some(OpKind::Create(c)) => c.attrs.as_ref().and_then(|a| a.content.as_ref()),
            Some(OpKind::Update(u)) => u.attrs.as_ref().and_then(|a| a.content.as_ref()),
            _ => None,
        };
        for chunk in content.map(|c| &c.chunks[..]).unwrap_or_default() {
            let id = chunk_key(&chunk.id, "chunk id", Some(i))?;
            if !checked.insert((id, chunk.length)) {
                continue;
            }
            let stored = chunks.stored_len(tenant, &id).map_err(store_status)?;
            if stored != Some(u64::from(chunk.length)) {
                missing.push((i, id));
            }
        }
    }
    match missing.first() {
        None => Ok(()),
        Some((i, id)) => Err(reject(
            Reason::MissingChunks,
            Some(*i),
            format!(
                "{} chunk(s) named by this commit are not stored (first: {}); upload them with \
                 PutChunks before committing",
                missing.len(),
                hex::encode(id)
            ),
        )),
    }
}

/// Refuses a client position (`cursor`, and the `tag` of the entry there) that this journal does not
/// hold: a cursor past `head`, or an entry at the cursor with another tag (the server was restored
/// from an older backup, or rewound otherwise, and the client saw a history it lost). Tag 0 is not
/// checked (cursor 0, or a client that predates tags). `tag_at` reads the tag at a sequence.
pub fn check_position(
    cursor: u64,
    tag: u64,
    head: u64,
    tag_at: impl FnOnce(u64) -> Result<Option<u64>, Status>,
) -> Result<(), Status> {
    if cursor > head {
        return Err(reject(
            Reason::CursorAhead,
            None,
            format!(
                "cursor {cursor} is ahead of this namespace's journal (head {head}): this server lost \
                 changes the client saw (restored from an older backup?); the client must rebuild its \
                 view from a snapshot and upload what is missing"
            ),
        ));
    }
    if tag != 0 && tag_at(cursor)? != Some(tag) {
        return Err(reject(
            Reason::JournalDiverged,
            None,
            format!(
                "the journal entry at cursor {cursor} is not the one the client saw: this server's \
                 history diverged from the client's (restored from an older backup?); the client must \
                 rebuild its view from a snapshot and upload what is missing"
            ),
        ));
    }
    Ok(())
}

/// The result of an applied commit.
pub struct Applied {
    /// The journal head after the commit.
    pub cursor: u64,
    /// The tag of the journal entry at `cursor`.
    pub tag: u64,
    /// The nodes after each op (the deleted node for a delete).
    pub nodes: Vec<Node>,
}

/// Applies a commit's ops in order inside `txn`. Any error aborts the whole transaction.
pub fn apply_commit(
    txn: &mut dyn MetaTxn,
    ops: &[v1::Op],
    position: (u64, u64),
    device: &str,
    now_ns: i64,
) -> Result<Applied, Status> {
    if ops.is_empty() {
        return Err(reject(
            Reason::Malformed,
            None,
            "a commit needs at least one op",
        ));
    }
    if ops.len() > MAX_OPS_PER_COMMIT {
        return Err(reject(
            Reason::TooLarge,
            None,
            format!(
                "a commit may carry at most {MAX_OPS_PER_COMMIT} ops, got {}; split it",
                ops.len()
            ),
        ));
    }
    let head = txn.head().map_err(store_status)?;
    check_position(position.0, position.1, head, |seq| {
        txn.tag_at(seq).map_err(store_status)
    })?;
    let mut applier = Applier::new(txn, device, now_ns)?;
    let mut nodes = Vec::with_capacity(ops.len());
    let mut chunks = 0usize;
    for (i, op) in ops.iter().enumerate() {
        let node = match &op.op {
            Some(OpKind::Create(c)) => applier.create(i, c)?,
            Some(OpKind::Update(u)) => applier.update(i, u)?,
            Some(OpKind::Move(m)) => applier.move_node(i, m)?,
            Some(OpKind::Delete(d)) => applier.delete(i, d)?,
            None => return Err(reject(Reason::Malformed, Some(i), "the op is empty")),
        };
        if matches!(op.op, Some(OpKind::Create(_) | OpKind::Update(_))) {
            chunks = chunks.saturating_add(stored_chunks(&node));
            check_commit_chunks(chunks, ops.len(), i)?;
        }
        nodes.push(node);
    }
    let (cursor, tag) = applier.finish()?;
    Ok(Applied { cursor, tag, nodes })
}

/// How many chunks a node's stored record lists.
fn stored_chunks(node: &Node) -> usize {
    node.attrs
        .as_ref()
        .and_then(|a| a.content.as_ref())
        .map_or(0, |c| c.chunks.len())
}

/// Refuses a commit of several ops whose resolved chunk lists reach past [`MAX_COMMIT_CHUNKS`] by
/// op `op` (`chunks` so far, included).
fn check_commit_chunks(chunks: usize, ops: usize, op: usize) -> Result<(), Status> {
    if ops > 1 && chunks > MAX_COMMIT_CHUNKS {
        return Err(reject(
            Reason::TooLarge,
            Some(op),
            format!(
                "the chunk lists of this commit's files name more than {MAX_COMMIT_CHUNKS} chunks \
                 together (MAX_COMMIT_CHUNKS, counting each edit's whole resulting list); split it \
                 into smaller commits"
            ),
        ));
    }
    Ok(())
}

/// Applies ops one by one, remembering each node's revision at the start of the commit so that
/// several ops on one node all compare against the state the client planned from.
struct Applier<'a> {
    txn: &'a mut dyn MetaTxn,
    device: &'a str,
    now_ns: i64,
    /// Revisions before this commit touched a node (0 for nodes it created).
    revision_at_start: HashMap<NodeKey, u64>,
    /// Nodes whose attributes this commit set (created or updated): each may be set once, so that a
    /// content edit always resolves against the content at its base revision, the commit's start.
    attrs_set: std::collections::HashSet<NodeKey>,
    /// The journal head, advanced by each recorded change.
    head: u64,
    /// The tag of the last recorded change.
    tag: u64,
    /// Depths of directories walked through, and the commit's walking so far.
    ancestry: Ancestry,
}

impl<'a> Applier<'a> {
    fn live(&mut self, id: &NodeKey, op: Option<usize>) -> Result<Node, Status> {
        self.txn.node(id).map_err(store_status)?.ok_or_else(|| {
            reject(
                Reason::NotFound,
                op,
                format!("node {} does not exist", short(id)),
            )
        })
    }

    fn check_base(&mut self, node: &Node, base: u64, op: Option<usize>) -> Result<(), Status> {
        let id: NodeKey = node_key(&node.id, "stored id", op)?;
        let current = *self.revision_at_start.entry(id).or_insert(node.revision);
        if base != current {
            return Err(reject(
                Reason::StaleRevision,
                op,
                format!(
                    "node {} is at revision {current}, the op was based on {base}; pull changes and retry",
                    short(&id)
                ),
            ));
        }
        Ok(())
    }

    /// Checks that `parent` is a live directory and that it has no other child called `name`.
    fn check_slot(
        &mut self,
        parent: &NodeKey,
        name: &str,
        moving: Option<&NodeKey>,
        op: Option<usize>,
    ) -> Result<(), Status> {
        let dir = self
            .txn
            .node(parent)
            .map_err(store_status)?
            .ok_or_else(|| {
                reject(
                    Reason::NotFound,
                    op,
                    format!("parent {} does not exist", short(parent)),
                )
            })?;
        if dir.kind != NodeKind::Directory as i32 {
            return Err(reject(
                Reason::ParentNotDirectory,
                op,
                format!("parent {} is not a directory", short(parent)),
            ));
        }
        if let Some(other) = self.txn.child_by_name(parent, name).map_err(store_status)?
            && Some(&other) != moving
        {
            return Err(reject(
                Reason::NameCollision,
                op,
                format!("{name:?} already exists in directory {}", short(parent)),
            ));
        }
        Ok(())
    }

    fn new(txn: &'a mut dyn MetaTxn, device: &'a str, now_ns: i64) -> Result<Self, Status> {
        let head = txn.head().map_err(store_status)?;
        Ok(Self {
            txn,
            device,
            now_ns,
            revision_at_start: HashMap::new(),
            attrs_set: Default::default(),
            head,
            tag: 0,
            ancestry: Ancestry::default(),
        })
    }

    /// The sequence the next recorded change will get.
    fn next_seq(&self) -> u64 {
        self.head + 1
    }

    /// Stores the new head; call once after the last change. Returns the head and its entry's tag.
    fn finish(self) -> Result<(u64, u64), Status> {
        debug_assert_ne!(self.tag, 0, "a commit records at least one change");
        self.txn.set_head(self.head).map_err(store_status)?;
        Ok((self.head, self.tag))
    }

    fn record(&mut self, kind: ChangeKind, node: &Node) -> Result<(), Status> {
        debug_assert_eq!(
            node.revision,
            self.head + 1,
            "journal sequences are consecutive"
        );
        self.head = node.revision;
        self.tag = new_tag();
        let entry = JournalEntry {
            seq: node.revision,
            kind,
            node: node.clone(),
            device: self.device.to_string(),
            committed_at_ns: self.now_ns,
            tag: self.tag,
        };
        self.txn.append(&entry).map_err(store_status)?;
        if kind == ChangeKind::Upsert {
            self.txn.put_node(node).map_err(store_status)?;
        } else {
            self.txn
                .remove_node(&node_key(&node.id, "stored id", None)?)
                .map_err(store_status)?;
        }
        Ok(())
    }

    fn create(&mut self, op: usize, c: &v1::CreateOp) -> Result<Node, Status> {
        let id = node_key(&c.id, "id", Some(op))?;
        let parent = node_key(&c.parent_id, "parent id", Some(op))?;
        check_name(&c.name, Some(op))?;
        let kind = kind_of(c.kind, op)?;
        let attrs = check_attrs(kind, c.attrs.as_ref(), op)?;
        if id == ROOT_ID || self.txn.id_ever_used(&id).map_err(store_status)? {
            return Err(reject(
                Reason::DuplicateId,
                Some(op),
                format!("node id {} is already in use", short(&id)),
            ));
        }
        self.check_slot(&parent, &c.name, None, Some(op))?;
        let parent_depth = self.ancestry.depth(self.txn, parent, None, Some(op))?;
        Ancestry::check_room(parent_depth, Some(op))?;
        if kind == NodeKind::Directory {
            self.ancestry.created(id, parent_depth + 1);
        }
        self.revision_at_start.insert(id, 0);
        self.attrs_set.insert(id);
        let node = Node {
            id: id.to_vec(),
            parent_id: parent.to_vec(),
            name: c.name.clone(),
            kind: kind as i32,
            attrs: Some(attrs),
            revision: self.next_seq(),
        };
        self.record(ChangeKind::Upsert, &node)?;
        Ok(node)
    }

    fn update(&mut self, op: usize, u: &v1::UpdateOp) -> Result<Node, Status> {
        let id = node_key(&u.id, "id", Some(op))?;
        if id == ROOT_ID {
            return Err(reject(
                Reason::RootImmutable,
                Some(op),
                "the root cannot be updated",
            ));
        }
        if !self.attrs_set.insert(id) {
            return Err(reject(
                Reason::RepeatedUpdate,
                Some(op),
                format!(
                    "node {} is created or updated by an earlier op of this commit; a node's \
                     attributes may be set once per commit (an edit resolves against the content at \
                     the commit's start): merge the updates or commit them separately",
                    short(&id)
                ),
            ));
        }
        let mut node = self.live(&id, Some(op))?;
        self.check_base(&node, u.base_revision, Some(op))?;
        let kind = kind_of(node.kind, op)?;
        let attrs = match u.attrs.as_ref() {
            Some(attrs) => Some(keep_newer_metadata(
                resolve_content_edit(attrs, node.attrs.as_ref(), op)?.into_owned(),
                node.attrs.as_ref(),
            )),
            None => None,
        };
        node.attrs = Some(check_attrs(kind, attrs.as_ref(), op)?);
        node.revision = self.next_seq();
        self.record(ChangeKind::Upsert, &node)?;
        Ok(node)
    }

    fn move_node(&mut self, op: usize, m: &v1::MoveOp) -> Result<Node, Status> {
        let id = node_key(&m.id, "id", Some(op))?;
        let new_parent = node_key(&m.new_parent_id, "new parent id", Some(op))?;
        check_name(&m.new_name, Some(op))?;
        if id == ROOT_ID {
            return Err(reject(
                Reason::RootImmutable,
                Some(op),
                "the root cannot be moved",
            ));
        }
        let mut node = self.live(&id, Some(op))?;
        self.check_base(&node, m.base_revision, Some(op))?;
        self.check_slot(&new_parent, &m.new_name, Some(&id), Some(op))?;
        // Walk up from the new parent: meeting the node itself means it would move into its own
        // subtree. The walk is bounded (`ancestry`).
        let parent_depth = self
            .ancestry
            .depth(self.txn, new_parent, Some(id), Some(op))?;
        Ancestry::check_room(parent_depth, Some(op))?;
        self.ancestry.moved();
        node.parent_id = new_parent.to_vec();
        node.name = m.new_name.clone();
        node.revision = self.next_seq();
        self.record(ChangeKind::Upsert, &node)?;
        Ok(node)
    }

    fn delete(&mut self, op: usize, d: &v1::DeleteOp) -> Result<Node, Status> {
        let id = node_key(&d.id, "id", Some(op))?;
        if id == ROOT_ID {
            return Err(reject(
                Reason::RootImmutable,
                Some(op),
                "the root cannot be deleted",
            ));
        }
        let mut node = self.live(&id, Some(op))?;
        self.check_base(&node, d.base_revision, Some(op))?;
        if node.kind == NodeKind::Directory as i32
            && self.txn.has_children(&id).map_err(store_status)?
        {
            return Err(reject(
                Reason::DirectoryNotEmpty,
                Some(op),
                format!(
                    "directory {} is not empty; delete its children first in the same commit",
                    short(&id)
                ),
            ));
        }
        node.revision = self.next_seq();
        self.record(ChangeKind::Delete, &node)?;
        Ok(node)
    }
}

/// Makes an earlier version's attributes current again (compare-and-swap on `base_revision`).
pub fn restore_version(
    txn: &mut dyn MetaTxn,
    version: &JournalEntry,
    base_revision: u64,
    device: &str,
    now_ns: i64,
) -> Result<Applied, Status> {
    let id = node_key(&version.node.id, "stored id", None)?;
    let mut applier = Applier::new(txn, device, now_ns)?;
    // `version` was read before this transaction: retention may have dropped it since, and a
    // collection may then delete its chunks; only a version the journal still holds is restored.
    if !applier.txn.has_entry(version.seq).map_err(store_status)? {
        return Err(expired_version(version.seq));
    }
    let Some(mut node) = applier.txn.node(&id).map_err(store_status)? else {
        return Err(reject(
            Reason::NotFound,
            None,
            format!(
                "node {} is deleted; undelete it before restoring a version",
                short(&id)
            ),
        ));
    };
    applier.check_base(&node, base_revision, None)?;
    if node.kind != version.node.kind {
        return Err(reject(
            Reason::KindMismatch,
            None,
            "that version is of another node kind than the current node",
        ));
    }
    node.attrs = version.node.attrs.clone();
    node.revision = applier.next_seq();
    applier.record(ChangeKind::Upsert, &node)?;
    let (cursor, tag) = applier.finish()?;
    Ok(Applied {
        cursor,
        tag,
        nodes: vec![node],
    })
}

/// The refusal of a version the retention policy dropped.
pub fn expired_version(seq: u64) -> Status {
    reject(
        Reason::Expired,
        None,
        format!(
            "version {seq} is older than this namespace's retention period and was dropped; \
             list the versions that are kept"
        ),
    )
}

/// The refusal to undelete a node the retention policy dropped (deleted before its window).
pub fn expired_node(id: &NodeKey) -> Status {
    reject(
        Reason::Expired,
        None,
        format!(
            "node {} was deleted before this namespace's retention period and is gone for good",
            short(id)
        ),
    )
}

/// The refusal of a position below the journal floor (`crate::retention`).
pub fn compacted(cursor: u64, floor: u64) -> Status {
    reject(
        Reason::JournalCompacted,
        None,
        format!(
            "position {cursor} is below this namespace's journal floor {floor}: entries older than \
             its retention period were dropped; the client must start again from a snapshot"
        ),
    )
}

/// Brings back a deleted node with its id, under `parent`/`name` or, by default, where it was.
pub fn undelete(
    txn: &mut dyn MetaTxn,
    last: &JournalEntry,
    parent: Option<NodeKey>,
    name: Option<&str>,
    device: &str,
    now_ns: i64,
) -> Result<Applied, Status> {
    let id = node_key(&last.node.id, "stored id", None)?;
    let mut applier = Applier::new(txn, device, now_ns)?;
    if applier.txn.node(&id).map_err(store_status)?.is_some() || last.kind != ChangeKind::Delete {
        return Err(reject(
            Reason::DuplicateId,
            None,
            format!("node {} is not deleted", short(&id)),
        ));
    }
    // `last` was read before this transaction: if the node changed since (undeleted and deleted
    // again), it is not the node's last state any more, and bringing it back would resurrect an
    // older version.
    if !applier.txn.has_entry(last.seq).map_err(store_status)? {
        return Err(expired_node(&id));
    }
    if applier.txn.last_seq_of(&id).map_err(store_status)? != Some(last.seq) {
        return Err(reject(
            Reason::StaleRevision,
            None,
            format!(
                "node {} changed while it was being undeleted; list the deleted nodes and retry",
                short(&id)
            ),
        ));
    }
    let parent = match parent {
        Some(p) => p,
        None => node_key(&last.node.parent_id, "stored parent id", None)?,
    };
    let name = name.unwrap_or(&last.node.name).to_string();
    check_name(&name, None)?;
    applier.check_slot(&parent, &name, None, None)?;
    let parent_depth = applier.ancestry.depth(applier.txn, parent, None, None)?;
    Ancestry::check_room(parent_depth, None)?;
    let mut node = last.node.clone();
    node.parent_id = parent.to_vec();
    node.name = name;
    node.revision = applier.next_seq();
    applier.record(ChangeKind::Upsert, &node)?;
    let (cursor, tag) = applier.finish()?;
    Ok(Applied {
        cursor,
        tag,
        nodes: vec![node],
    })
}

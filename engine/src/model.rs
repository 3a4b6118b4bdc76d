//! The node model shared by the three trees, the planner, the state database and the server.
//!
//! A namespace is a tree of [`Node`]s keyed by 128-bit [`NodeId`]s, never by path (DESIGN D2): a
//! rename is one node mutation whatever the size of the subtree below it. A node carries only what the
//! planner compares: where it is (`parent`, `name`), what it is (`kind`), its [`Attrs`] (content hash,
//! size, mtime, executable bit, symlink target) and the server revision it was last committed at. Chunk
//! manifests live elsewhere; two versions are "the same content" when their BLAKE3 hashes are equal.
//!
//! Name rules come in two layers: [`validate_name`] is the server's rule and holds on every platform;
//! a [`NamePolicy`] adds what one platform cannot represent (reserved characters and names, names that
//! collide after case folding).

use std::borrow::Cow;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::str::FromStr;

/// The identity of a node: 128 bits, shown as a UUID.
///
/// A node created on a device gets a random (v4) id there, so offline creates need no remapping. Ids the
/// planner mints itself (conflicted copies, re-created nodes) are [`NodeId::derive`]d from their inputs,
/// so re-planning after a partial apply mints the same id and the operation stays idempotent.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(u128);

impl NodeId {
    /// The namespace root: a directory that exists in every tree and is never moved, renamed or deleted.
    /// It is its own parent.
    pub const ROOT: NodeId = NodeId(0);

    /// A fresh random id (UUID v4).
    pub fn new_random() -> NodeId {
        NodeId(uuid::Uuid::new_v4().as_u128())
    }

    /// A deterministic id from `purpose` and `parts`: the same inputs always give the same id.
    ///
    /// It is BLAKE3 in key-derivation mode over length-prefixed parts, truncated to 128 bits and stamped
    /// as a UUID v8, so it can never be [`NodeId::ROOT`] and never looks like a random v4 id.
    pub fn derive(purpose: &str, parts: &[&[u8]]) -> NodeId {
        let mut hasher = blake3::Hasher::new_derive_key("bvfs node id v1");
        for part in std::iter::once(purpose.as_bytes()).chain(parts.iter().copied()) {
            hasher.update(&(part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
        let uuid = uuid::Builder::from_custom_bytes(bytes).into_uuid();
        NodeId(uuid.as_u128())
    }

    pub const fn from_u128(value: u128) -> NodeId {
        NodeId(value)
    }

    pub const fn as_u128(self) -> u128 {
        self.0
    }

    /// The id in 16 bytes (big-endian, as on the wire); `None` unless `bytes` is exactly 16 long.
    pub fn from_bytes(bytes: &[u8]) -> Option<NodeId> {
        let bytes: [u8; 16] = bytes.try_into().ok()?;
        Some(NodeId(u128::from_be_bytes(bytes)))
    }

    pub fn to_bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }

    pub fn is_root(self) -> bool {
        self == NodeId::ROOT
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&uuid::Uuid::from_u128(self.0).hyphenated(), f)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Small ids are test fixtures; print them as numbers so failing cases stay readable.
        if self.0 < 1 << 32 {
            write!(f, "#{}", self.0)
        } else {
            write!(f, "{self}")
        }
    }
}

impl FromStr for NodeId {
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<NodeId, uuid::Error> {
        Ok(NodeId(uuid::Uuid::parse_str(s)?.as_u128()))
    }
}

/// A hasher for maps keyed by [`NodeId`]: ids are (mostly) random already, so a multiply-fold beats
/// SipHash by a wide margin in the planner's hot loops. Not DoS-resistant; keys come from our own trees.
#[derive(Default, Clone, Copy)]
pub struct NodeIdHasher(u64);

impl Hasher for NodeIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 =
                (self.0.rotate_left(5) ^ u64::from(byte)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }

    fn write_u128(&mut self, value: u128) {
        let folded = (value as u64) ^ ((value >> 64) as u64).rotate_left(32);
        self.0 = (self.0.rotate_left(5) ^ folded).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// A hash map keyed by node id.
pub type NodeIdMap<V> = std::collections::HashMap<NodeId, V, BuildHasherDefault<NodeIdHasher>>;
/// A hash set of node ids.
pub type NodeIdSet = std::collections::HashSet<NodeId, BuildHasherDefault<NodeIdHasher>>;

/// The BLAKE3 hash of a file's whole content.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContentHash(pub [u8; 32]);

impl ContentHash {
    /// The hash of `data`.
    pub fn of(data: &[u8]) -> ContentHash {
        ContentHash(*blake3::hash(data).as_bytes())
    }

    pub fn from_slice(bytes: &[u8]) -> Option<ContentHash> {
        bytes.try_into().ok().map(ContentHash)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentHash({})", hex::encode(&self.0[..8]))
    }
}

impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// What a node is. A node never changes kind: replacing a file by a directory is a delete and a create.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NodeKind {
    File,
    Directory,
    Symlink,
}

/// Extended attributes that sync (the `user.` namespace), by full name.
pub type Xattrs = std::collections::BTreeMap<String, Vec<u8>>;

/// A node's attributes: everything about it that syncs, except where it is. (Ownership, access and
/// change times and directories' modification times are per device: see `state::local`.)
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Attrs {
    /// Content length in bytes (files), target length (symlinks), 0 for directories.
    pub size: u64,
    pub mtime_ns: i64,
    /// The permission bits (`st_mode & 07777`).
    pub mode: u32,
    /// BLAKE3 of the whole content; files only.
    pub content: Option<ContentHash>,
    /// Symlinks only.
    pub symlink_target: Option<String>,
    /// Extended attributes in the `user.` namespace.
    pub xattrs: Xattrs,
}

/// Stores extended attributes as one blob (`None` when there are none): per entry, the name's
/// length (u16 LE), the name, the value's length (u32 LE), the value.
pub fn encode_xattrs(xattrs: &Xattrs) -> Option<Vec<u8>> {
    if xattrs.is_empty() {
        return None;
    }
    let mut out = Vec::new();
    for (name, value) in xattrs {
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(value);
    }
    Some(out)
}

/// Reads what [`encode_xattrs`] wrote (bytes from disk: `None` if they are not well formed).
pub fn decode_xattrs(mut bytes: &[u8]) -> Option<Xattrs> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if bytes.len() < n {
            return None;
        }
        let (head, rest) = bytes.split_at(n);
        *bytes = rest;
        Some(head)
    }
    let mut xattrs = Xattrs::new();
    while !bytes.is_empty() {
        let len = u16::from_le_bytes(take(&mut bytes, 2)?.try_into().ok()?) as usize;
        let name = std::str::from_utf8(take(&mut bytes, len)?)
            .ok()?
            .to_string();
        let len = u32::from_le_bytes(take(&mut bytes, 4)?.try_into().ok()?) as usize;
        let value = take(&mut bytes, len)?.to_vec();
        xattrs.insert(name, value);
    }
    Some(xattrs)
}

/// The permission bits a new node gets when nothing says otherwise.
pub fn default_mode(kind: NodeKind, executable: bool) -> u32 {
    match kind {
        NodeKind::Directory => 0o755,
        NodeKind::Symlink => 0o777,
        NodeKind::File if executable => 0o755,
        NodeKind::File => 0o644,
    }
}

impl Attrs {
    /// Whether the owner may execute it (the bit clients before modes synced).
    pub fn executable(&self) -> bool {
        self.mode & 0o100 != 0
    }

    /// Whether two versions hold the same bytes: equal content hash and symlink target. Size, mtime and
    /// the executable bit are metadata, so a difference there alone moves no content.
    pub fn same_content(&self, other: &Attrs) -> bool {
        self.content == other.content && self.symlink_target == other.symlink_target
    }
}

/// One file, directory or symlink of a namespace, as one of the three trees sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Node {
    pub id: NodeId,
    /// The directory holding this node; the root is its own parent.
    pub parent: NodeId,
    pub name: String,
    pub kind: NodeKind,
    pub attrs: Attrs,
    /// The server journal sequence of the node's last change; 0 if it was never committed.
    pub revision: u64,
}

impl Node {
    /// The namespace root as every tree holds it.
    pub fn root() -> Node {
        Node {
            id: NodeId::ROOT,
            parent: NodeId::ROOT,
            name: String::new(),
            kind: NodeKind::Directory,
            attrs: Attrs::default(),
            revision: 0,
        }
    }

    pub fn is_dir(&self) -> bool {
        self.kind == NodeKind::Directory
    }
}

/// The longest name the server accepts, in bytes (as on common Unix filesystems).
pub const MAX_NAME_BYTES: usize = 255;

/// Why a name is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("a name cannot be empty")]
    Empty,
    #[error("`.` and `..` are not names")]
    DotEntry,
    #[error("a name cannot contain `/`")]
    Slash,
    #[error("a name cannot contain a NUL byte")]
    Nul,
    #[error("a name is at most {MAX_NAME_BYTES} bytes, this one is {len}")]
    TooLong { len: usize },
    #[error("this platform does not allow {0:?} in a name")]
    ReservedChar(char),
    #[error("this platform reserves the name {0:?}")]
    ReservedName(String),
    #[error("this platform does not allow a name to end with a dot or a space")]
    TrailingDotOrSpace,
}

/// The server's name rule, valid on every platform: non-empty, not `.` or `..`, no `/` or NUL, at most
/// [`MAX_NAME_BYTES`] bytes.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name == "." || name == ".." {
        return Err(NameError::DotEntry);
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(NameError::TooLong { len: name.len() });
    }
    if name.contains('/') {
        return Err(NameError::Slash);
    }
    if name.contains('\0') {
        return Err(NameError::Nul);
    }
    Ok(())
}

/// What the local platform can represent, on top of [`validate_name`].
///
/// Remote names that break the policy are kept remote-only and reported by the planner; names that two
/// remote nodes share after [`NamePolicy::fold`] cannot both exist locally either.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NamePolicy {
    /// Linux and other Unix filesystems: any name the server accepts, compared byte for byte.
    #[default]
    Posix,
    /// A Windows-like filesystem: no `<>:"\|?*` or control characters, no device names (`CON`,
    /// `PRN`, `AUX`, `NUL`, `COM1`–`COM9`, `LPT1`–`LPT9`, with or without an extension), no trailing dot
    /// or space, and names compared case-insensitively.
    ///
    /// Folding is `str::to_lowercase`, without Unicode normalization (no NFC crate in the dependency
    /// set): names that differ only in composed vs decomposed form are treated as different.
    Windows,
}

impl NamePolicy {
    /// Whether `name` can exist on this platform.
    pub fn check(self, name: &str) -> Result<(), NameError> {
        validate_name(name)?;
        match self {
            NamePolicy::Posix => Ok(()),
            NamePolicy::Windows => check_windows_name(name),
        }
    }

    /// Whether the platform compares names after folding them.
    pub fn folds(self) -> bool {
        self == NamePolicy::Windows
    }

    /// The form two names are compared in: equal folds mean the platform sees one name.
    pub fn fold(self, name: &str) -> Cow<'_, str> {
        match self {
            NamePolicy::Posix => Cow::Borrowed(name),
            NamePolicy::Windows if name.chars().any(char::is_uppercase) => {
                Cow::Owned(name.to_lowercase())
            }
            NamePolicy::Windows => Cow::Borrowed(name),
        }
    }

    /// `text` with every character this platform forbids in names replaced by `_`; used to put a
    /// device name into a conflicted-copy name.
    pub fn sanitize(self, text: &str) -> String {
        text.chars()
            .map(|c| match self {
                _ if c == '/' || c == '\0' => '_',
                NamePolicy::Windows if is_windows_reserved_char(c) => '_',
                _ => c,
            })
            .collect()
    }
}

fn is_windows_reserved_char(c: char) -> bool {
    matches!(c, '<' | '>' | ':' | '"' | '\\' | '|' | '?' | '*') || (c as u32) < 32
}

fn check_windows_name(name: &str) -> Result<(), NameError> {
    if let Some(c) = name.chars().find(|&c| is_windows_reserved_char(c)) {
        return Err(NameError::ReservedChar(c));
    }
    if name.ends_with('.') || name.ends_with(' ') {
        return Err(NameError::TrailingDotOrSpace);
    }
    let stem = name.split('.').next().unwrap_or(name).trim_end_matches(' ');
    let upper = stem.to_ascii_uppercase();
    let is_device = matches!(upper.as_str(), "CON" | "PRN" | "AUX" | "NUL")
        || ((upper.starts_with("COM") || upper.starts_with("LPT"))
            && upper.len() == 4
            && matches!(upper.as_bytes()[3], b'1'..=b'9'));
    if is_device {
        return Err(NameError::ReservedName(name.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_bytes_and_text() {
        let id = NodeId::new_random();
        assert_eq!(NodeId::from_bytes(&id.to_bytes()), Some(id));
        assert_eq!(id.to_string().parse::<NodeId>().unwrap(), id);
        assert_eq!(NodeId::from_bytes(&[0; 15]), None);
        assert_eq!(
            NodeId::ROOT.to_string(),
            "00000000-0000-0000-0000-000000000000"
        );
    }

    #[test]
    fn derived_ids_are_deterministic_and_separate_their_inputs() {
        let a = NodeId::derive("copy", &[b"ab", b"c"]);
        assert_eq!(a, NodeId::derive("copy", &[b"ab", b"c"]));
        assert_ne!(a, NodeId::derive("copy", &[b"a", b"bc"]));
        assert_ne!(a, NodeId::derive("other", &[b"ab", b"c"]));
        assert_ne!(a, NodeId::ROOT);
        assert_eq!(uuid::Uuid::from_u128(a.as_u128()).get_version_num(), 8);
    }

    #[test]
    fn the_server_name_rule() {
        assert_eq!(validate_name("report.txt"), Ok(()));
        assert_eq!(validate_name(""), Err(NameError::Empty));
        assert_eq!(validate_name(".."), Err(NameError::DotEntry));
        assert_eq!(validate_name("a/b"), Err(NameError::Slash));
        assert_eq!(validate_name("a\0b"), Err(NameError::Nul));
        assert_eq!(
            validate_name(&"é".repeat(128)),
            Err(NameError::TooLong { len: 256 })
        );
        assert_eq!(validate_name(&"x".repeat(255)), Ok(()));
    }

    #[test]
    fn the_windows_policy() {
        let windows = NamePolicy::Windows;
        assert_eq!(windows.check("a:b"), Err(NameError::ReservedChar(':')));
        assert_eq!(
            windows.check("con"),
            Err(NameError::ReservedName("con".into()))
        );
        assert_eq!(
            windows.check("Com3.txt"),
            Err(NameError::ReservedName("Com3.txt".into()))
        );
        assert_eq!(windows.check("console"), Ok(()));
        assert_eq!(windows.check("com0"), Ok(()));
        assert_eq!(windows.check("a."), Err(NameError::TrailingDotOrSpace));
        assert_eq!(windows.fold("ReadMe"), "readme");
        assert!(NamePolicy::Posix.check("a:b").is_ok());
        assert_eq!(NamePolicy::Posix.fold("ReadMe"), "ReadMe");
        assert_eq!(windows.sanitize("my:pc/1"), "my_pc_1");
    }
}

//! What the server keeps that the mount does not show: every version of a node and the deleted
//! nodes (the journal, D7), or those newer than its retention window if it has one (an older one is
//! refused as `expired`). `bvfs history`, `restore`, `trash` and `undelete` reach them here.
//!
//! A restore or an undelete is a server-side change like another device's: the server commits it
//! (compare-and-swap against the revision this device last pulled), and the next round pulls it
//! into LOCAL through the planner, so a file's local content is never replaced behind the content
//! owner's back. Restoring a file refuses while it has local changes the server has not stored:
//! they would otherwise become a conflicted copy the user did not ask for.

use bvfs_proto::v1;

use crate::api::{Engine, EngineResult};
use crate::model::NodeId;
use crate::presence::{ContentOnServer, SyncState};
use crate::remote::RemoteError;
use crate::state::Table;
use crate::state::local::LocalEntry;

/// The most versions or deleted nodes one listing returns (newest first): replies stay bounded.
pub const MAX_LISTED: usize = 1_000;
/// How many deleted nodes an undelete by path searches, newest first.
const UNDELETE_SEARCH: usize = 10_000;

/// One recorded version of a node ([`Engine::versions`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionInfo {
    /// Its journal sequence: what `bvfs restore --version` takes.
    pub seq: u64,
    /// The change deleted the node (its last state is shown).
    pub deleted: bool,
    /// When it was committed (ns since the epoch).
    pub at_ns: i64,
    /// The device that committed it.
    pub device: String,
    pub name: String,
    pub size: u64,
    /// The BLAKE3 of the content (files only), hex.
    pub hash: Option<String>,
}

/// One deleted node ([`Engine::deleted`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletedInfo {
    pub id: NodeId,
    /// Where it was, from the mount's root (`None`: its folder is deleted too; `name` is all
    /// that is known).
    pub path: Option<String>,
    pub name: String,
    pub directory: bool,
    pub size: u64,
    pub device: String,
    pub at_ns: i64,
}

/// Why a restore or an undelete was not made.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error(
        "it has local changes the server has not stored yet; restoring now would turn them into a \
         conflicted copy. Wait until `bvfs status PATH` says synced, or copy it elsewhere first"
    )]
    Unsynced,
    #[error("the server has no version {0} of it (see `bvfs history PATH`)")]
    NoSuchVersion(u64),
    #[error("it is not on the server yet, so it has no history")]
    NotOnServer,
    #[error("nothing deleted was at {0} (see `bvfs trash`)")]
    NotDeleted(String),
    #[error(
        "something else is at {0} now; move it away first (the deleted one comes back under its \
         old name)"
    )]
    Occupied(String),
    #[error("{0}")]
    CannotCopy(&'static str),
    #[error(transparent)]
    Remote(#[from] RemoteError),
}

fn content_hash(node: &v1::Node) -> Option<String> {
    let content = node.attrs.as_ref()?.content.as_ref()?;
    Some(hex::encode(&content.hash))
}

impl Engine {
    /// Node `entry`'s recorded versions on the server, newest first (at most [`MAX_LISTED`]).
    pub async fn versions(
        &self,
        entry: &LocalEntry,
    ) -> EngineResult<Result<Vec<VersionInfo>, HistoryError>> {
        if self.remote_revision(entry.node.id)?.is_none() {
            return Ok(Err(HistoryError::NotOnServer));
        }
        let mut out = Vec::new();
        let mut before = 0;
        loop {
            let page = match self
                .remote
                .list_versions(entry.node.id.to_bytes().to_vec(), before, 0)
                .await
            {
                Ok(page) => page,
                Err(e) => return Ok(Err(e.into())),
            };
            for version in page.versions {
                let node = version.node.unwrap_or_default();
                out.push(VersionInfo {
                    seq: version.seq,
                    deleted: version.kind == v1::ChangeKind::Delete as i32,
                    at_ns: version.committed_at_ns,
                    device: version.device,
                    name: node.name.clone(),
                    size: node.attrs.as_ref().map_or(0, |a| a.size),
                    hash: content_hash(&node),
                });
            }
            before = page.next_before_seq;
            if before == 0 || out.len() >= MAX_LISTED {
                out.truncate(MAX_LISTED);
                return Ok(Ok(out));
            }
        }
    }

    /// Makes version `seq` of `entry` current again on the server; the next round brings it here
    /// (and to every other device). Refused while `entry` has changes the server has not stored.
    pub async fn restore_version(
        &self,
        entry: &LocalEntry,
        seq: u64,
    ) -> EngineResult<Result<u64, HistoryError>> {
        let Some(revision) = self.remote_revision(entry.node.id)? else {
            return Ok(Err(HistoryError::NotOnServer));
        };
        let pending = !matches!(
            self.sync_state(entry)?,
            SyncState::Synced | SyncState::Conflict
        );
        if pending || self.content_on_server(entry)? != ContentOnServer::Stored {
            return Ok(Err(HistoryError::Unsynced));
        }
        let restored = self
            .remote
            .restore_version(entry.node.id.to_bytes().to_vec(), seq, revision)
            .await;
        match restored {
            Ok(reply) => {
                self.wake.notify_one();
                Ok(Ok(reply.cursor))
            }
            Err(RemoteError::Rejected { reason, .. }) if reason == "not-found" => {
                Ok(Err(HistoryError::NoSuchVersion(seq)))
            }
            Err(e) => Ok(Err(e.into())),
        }
    }

    /// Makes version `seq` of the file `entry` a new file `name` in the directory `parent` (on the
    /// server, as a new node: the file itself is left as it is); the next round brings it here.
    pub async fn restore_as(
        &self,
        entry: &LocalEntry,
        seq: u64,
        parent: &LocalEntry,
        name: &str,
    ) -> EngineResult<Result<(), HistoryError>> {
        if parent.node.kind != crate::model::NodeKind::Directory {
            return Ok(Err(HistoryError::CannotCopy(
                "the new path's parent is not a directory",
            )));
        }
        if !parent.node.id.is_root() && self.remote_revision(parent.node.id)?.is_none() {
            return Ok(Err(HistoryError::CannotCopy(
                "the new path's folder is not on the server yet; wait until it is synced",
            )));
        }
        if crate::model::validate_name(name).is_err() {
            return Ok(Err(HistoryError::CannotCopy(
                "the new name is not valid for bvfs",
            )));
        }
        let mut before = 0;
        let version = loop {
            let page = match self
                .remote
                .list_versions(entry.node.id.to_bytes().to_vec(), before, 0)
                .await
            {
                Ok(page) => page,
                Err(e) => return Ok(Err(e.into())),
            };
            if let Some(found) = page.versions.into_iter().find(|v| v.seq == seq) {
                break found;
            }
            before = page.next_before_seq;
            if before == 0 {
                return Ok(Err(HistoryError::NoSuchVersion(seq)));
            }
        };
        let node = version.node.unwrap_or_default();
        if node.kind != v1::NodeKind::File as i32 || version.kind == v1::ChangeKind::Delete as i32 {
            return Ok(Err(HistoryError::CannotCopy(
                "only a file's version can be restored as a copy",
            )));
        }
        let Some(attrs) = node.attrs.filter(|a| {
            a.content
                .as_ref()
                .is_some_and(|c| !c.chunks_elided && c.manifest_ref.is_empty())
        }) else {
            return Ok(Err(HistoryError::CannotCopy(
                "that version is too large to copy from its listing; restore it in place instead",
            )));
        };
        let op = v1::Op {
            op: Some(v1::op::Op::Create(v1::CreateOp {
                id: self.ids.new_id().to_bytes().to_vec(),
                parent_id: parent.node.id.to_bytes().to_vec(),
                name: name.to_string(),
                kind: v1::NodeKind::File as i32,
                attrs: Some(attrs),
            })),
        };
        let at = self.state.lock().read(|t| t.position())?;
        match self.remote.commit(vec![op], at).await {
            Ok(_) => {
                self.wake.notify_one();
                Ok(Ok(()))
            }
            Err(RemoteError::Rejected { reason, .. }) if reason == "name-collision" => {
                Ok(Err(HistoryError::Occupied(name.to_string())))
            }
            Err(e) => Ok(Err(e.into())),
        }
    }

    /// The deleted nodes on the server, newest deletion first (at most `max`), with where they
    /// were as REMOTE knows it.
    pub async fn deleted(
        &self,
        max: usize,
    ) -> EngineResult<Result<Vec<DeletedInfo>, HistoryError>> {
        let mut out = Vec::new();
        let mut before = 0;
        loop {
            let page = match self.remote.list_deleted(before, 0).await {
                Ok(page) => page,
                Err(e) => return Ok(Err(e.into())),
            };
            for deleted in page.nodes {
                let node = deleted.node.unwrap_or_default();
                let (Some(id), Some(parent)) = (
                    NodeId::from_bytes(&node.id),
                    NodeId::from_bytes(&node.parent_id),
                ) else {
                    continue;
                };
                let parent_path = if parent.is_root() {
                    Some(String::new())
                } else {
                    let state = self.state.lock();
                    state.tree(Table::Remote).path_of(parent)?
                };
                let path = parent_path.map(|p| {
                    let p = p.trim_start_matches('/');
                    if p.is_empty() {
                        node.name.clone()
                    } else {
                        format!("{p}/{}", node.name)
                    }
                });
                out.push(DeletedInfo {
                    id,
                    path,
                    directory: node.kind == v1::NodeKind::Directory as i32,
                    size: node.attrs.as_ref().map_or(0, |a| a.size),
                    name: node.name,
                    device: deleted.device,
                    at_ns: deleted.deleted_at_ns,
                });
            }
            before = page.next_before_seq;
            if before == 0 || out.len() >= max {
                out.truncate(max);
                return Ok(Ok(out));
            }
        }
    }

    /// Brings back the most recently deleted node that was at `path` (from the mount's root),
    /// under its old parent and name; the next round brings it here.
    pub async fn undelete(&self, path: &str) -> EngineResult<Result<DeletedInfo, HistoryError>> {
        let deleted = match self.deleted(UNDELETE_SEARCH).await? {
            Ok(deleted) => deleted,
            Err(e) => return Ok(Err(e)),
        };
        let Some(found) = deleted
            .into_iter()
            .find(|d| d.path.as_deref() == Some(path))
        else {
            return Ok(Err(HistoryError::NotDeleted(path.to_string())));
        };
        match self.remote.undelete(found.id.to_bytes().to_vec()).await {
            Ok(_) => {
                self.wake.notify_one();
                Ok(Ok(found))
            }
            Err(RemoteError::Rejected { reason, .. }) if reason == "name-collision" => {
                Ok(Err(HistoryError::Occupied(path.to_string())))
            }
            Err(e) => Ok(Err(e.into())),
        }
    }

    /// The revision REMOTE holds for `id` (`None`: the server has not taken it yet).
    fn remote_revision(&self, id: NodeId) -> EngineResult<Option<u64>> {
        let state = self.state.lock();
        Ok(state.tree(Table::Remote).node(id)?.map(|n| n.revision))
    }
}

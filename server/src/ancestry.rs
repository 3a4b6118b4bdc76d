//! Walking up a namespace's tree inside a commit: depth and cycle checks, bounded (issue 15, item 6).
//!
//! A create needs its parent's depth (a node may sit at most [`MAX_TREE_DEPTH`] levels below the
//! root); a move needs the same for its new parent, and must not find the moved node on the way up
//! (a cycle). Each step is one indexed lookup of a parent id. Walks stop after `MAX_TREE_DEPTH`
//! steps, and a commit's walks together after [`MAX_COMMIT_WALK`] steps, so no commit can hold its
//! namespace's writer for long whatever the tree's shape (a 20,000-deep chain once made 300 moves take
//! seconds while other tenants waited).
//!
//! Depths found by a walk are remembered for the rest of the commit, so many creates under one
//! directory cost one walk. A move changes the depths below the moved node, so it forgets them all,
//! and its own walk never stops at a remembered depth (the moved node could sit above it).

use std::collections::HashMap;

use bvfs_proto::{MAX_COMMIT_WALK, MAX_TREE_DEPTH};
use tonic::Status;

use crate::namespace::{Reason, reject};
use crate::store::sqlite::store_status;
use crate::store::{MetaTxn, NodeKey, ROOT_ID};

/// The depth bookkeeping of one commit.
#[derive(Default)]
pub struct Ancestry {
    /// Depths (levels below the root) of directories walked through since the last move.
    depths: HashMap<NodeKey, usize>,
    /// Parent lookups made by this commit so far.
    steps: usize,
}

impl Ancestry {
    /// The depth of live directory `dir`. With `moving`, the walk refuses to meet that node (the
    /// move would put it inside its own subtree) and does not use remembered depths.
    pub fn depth(
        &mut self,
        txn: &mut dyn MetaTxn,
        dir: NodeKey,
        moving: Option<NodeKey>,
        op: Option<usize>,
    ) -> Result<usize, Status> {
        let mut path = Vec::new();
        let mut cursor = dir;
        let base = loop {
            if Some(cursor) == moving {
                return Err(reject(
                    Reason::Cycle,
                    op,
                    format!(
                        "moving {} into its own subtree would create a cycle",
                        hex::encode(&cursor[..4])
                    ),
                ));
            }
            if cursor == ROOT_ID {
                break 0;
            }
            if moving.is_none()
                && let Some(&depth) = self.depths.get(&cursor)
            {
                break depth;
            }
            if path.len() >= MAX_TREE_DEPTH {
                return Err(reject(
                    Reason::TooDeep,
                    op,
                    format!(
                        "the target directory is more than {MAX_TREE_DEPTH} levels deep \
                         (MAX_TREE_DEPTH); nothing may be placed there"
                    ),
                ));
            }
            self.steps += 1;
            if self.steps > MAX_COMMIT_WALK {
                return Err(reject(
                    Reason::TooLarge,
                    op,
                    format!(
                        "this commit's creates and moves walk more than {MAX_COMMIT_WALK} levels of \
                         the tree together (MAX_COMMIT_WALK); split it into smaller commits"
                    ),
                ));
            }
            path.push(cursor);
            cursor = txn
                .parent_of(&cursor)
                .map_err(store_status)?
                .ok_or_else(|| {
                    reject(
                        Reason::NotFound,
                        op,
                        format!("directory {} does not exist", hex::encode(&cursor[..4])),
                    )
                })?;
        };
        let depth = base + path.len();
        for (i, node) in path.into_iter().enumerate() {
            self.depths.insert(node, depth - i);
        }
        Ok(depth)
    }

    /// Refuses a node placed under `parent` (at depth `parent_depth`) past [`MAX_TREE_DEPTH`].
    pub fn check_room(parent_depth: usize, op: Option<usize>) -> Result<(), Status> {
        if parent_depth + 1 > MAX_TREE_DEPTH {
            return Err(reject(
                Reason::TooDeep,
                op,
                format!(
                    "this would place a node more than {MAX_TREE_DEPTH} levels below the root \
                     (MAX_TREE_DEPTH)"
                ),
            ));
        }
        Ok(())
    }

    /// Remembers the depth of a directory this commit created.
    pub fn created(&mut self, dir: NodeKey, depth: usize) {
        self.depths.insert(dir, depth);
    }

    /// Forgets every remembered depth (after a move).
    pub fn moved(&mut self) {
        self.depths.clear();
    }
}

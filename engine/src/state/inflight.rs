//! Commits in flight: what each op of a sent commit should leave on the server, kept until the answer
//! arrives. A lost answer (network drop, crash, kill -9) is recognised when the journal shows the node
//! in exactly the expected state: the commit landed, so SYNCED takes that state. Without this, the
//! planner would see its own create or edit as someone else's and make a conflicted copy of it.

use rusqlite::{OptionalExtension, params};

use super::{StateResult, Table, Txn};
use crate::model::{Node, NodeId};

/// The state an op leaves its node in: `None` for a delete.
pub type Expected = Option<Node>;

/// An `inflight` row: parent, name, kind, content, symlink target, deleted.
type InflightRow = (
    Option<Vec<u8>>,
    Option<String>,
    Option<i64>,
    Option<Vec<u8>>,
    Option<String>,
    bool,
);

fn same_content_and_place(a: &Node, b: &Node) -> bool {
    a.parent == b.parent
        && a.name == b.name
        && a.kind == b.kind
        && a.attrs.content == b.attrs.content
        && a.attrs.symlink_target == b.attrs.symlink_target
}

impl Txn<'_> {
    /// Records the expected outcome of an op about to be sent.
    pub fn record_inflight(&self, id: NodeId, expected: &Expected) -> StateResult<()> {
        let kind = expected
            .as_ref()
            .map(|n| super::trees::kind_code_of(n.kind));
        self.conn()
            .prepare_cached(
                "INSERT OR REPLACE INTO inflight (id, parent, name, kind, content, symlink, deleted)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    &id.to_bytes()[..],
                    expected.as_ref().map(|n| n.parent.to_bytes().to_vec()),
                    expected.as_ref().map(|n| n.name.clone()),
                    kind,
                    expected.as_ref().and_then(|n| n.attrs.content.map(|c| c.0.to_vec())),
                    expected.as_ref().and_then(|n| n.attrs.symlink_target.clone()),
                    expected.is_none(),
                ])
            })
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Forgets the op on `id` (its answer arrived, or it was refused).
    pub fn clear_inflight(&self, id: NodeId) -> StateResult<()> {
        self.conn()
            .prepare_cached("DELETE FROM inflight WHERE id = ?1")
            .and_then(|mut s| s.execute([&id.to_bytes()[..]]))
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Called for each journal change: if it is the outcome of our own unanswered commit, SYNCED
    /// takes it. `node` is the node after the change, `None` if the change deleted `id`.
    pub fn adopt_if_inflight(&self, id: NodeId, node: Option<&Node>) -> StateResult<()> {
        let row: Option<InflightRow> = self
            .conn()
            .prepare_cached(
                "SELECT parent, name, kind, content, symlink, deleted FROM inflight WHERE id = ?1",
            )
            .and_then(|mut s| {
                s.query_row([&id.to_bytes()[..]], |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                    ))
                })
                .optional()
            })
            .map_err(|e| self.err(e))?;
        let Some((parent, name, kind, content, symlink, deleted)) = row else {
            return Ok(());
        };
        match node {
            None if deleted => {
                self.remove_node(Table::Synced, id)?;
                self.clear_inflight(id)?;
            }
            Some(node) if !deleted => {
                let expected = Node {
                    id,
                    parent: parent
                        .as_deref()
                        .and_then(NodeId::from_bytes)
                        .unwrap_or(NodeId::ROOT),
                    name: name.unwrap_or_default(),
                    kind: kind
                        .and_then(super::trees::kind_from_code_of)
                        .unwrap_or(node.kind),
                    attrs: crate::model::Attrs {
                        content: content
                            .as_deref()
                            .and_then(crate::model::ContentHash::from_slice),
                        symlink_target: symlink,
                        ..node.attrs.clone()
                    },
                    revision: node.revision,
                };
                if same_content_and_place(&expected, node) {
                    self.put_node(Table::Synced, node)?;
                    self.clear_inflight(id)?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

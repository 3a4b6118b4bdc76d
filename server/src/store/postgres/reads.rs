//! Page reads bounded in bytes inside the database, and rows ⇄ values.
//!
//! A page stops once its stored node records add up to the byte budget, the record that reaches it
//! included (so at least one), exactly as the embedded store's reads do. Here the cut happens in
//! SQL, with a running sum of `octet_length(node)` (read from the value's header, not the value),
//! so records past the budget are never sent.

use bvfs_proto::v1::{ChangeKind, Node};
use tokio_postgres::Row;

use super::col;
use crate::store::records::{decode_kind, decode_node, key};
use crate::store::{JournalEntry, NodeKey, StoreResult};

/// The columns of a journal entry, in the order [`entry`] reads them.
pub(super) const ENTRY: &str = "seq, kind, node, device, committed_ns, tag";

// The partial index and the queries spell the kinds as the literals 1 and 2.
const _: () = assert!(ChangeKind::Upsert as i32 == 1 && ChangeKind::Delete as i32 == 2);

/// The tag at `$2` of tenant `$1`: of the journal entry there, or of one retention dropped.
pub(super) const TAG_AT: &str = "SELECT tag FROM journal WHERE tenant_id = $1 AND seq = $2
     UNION ALL SELECT tag FROM dropped_tags WHERE tenant_id = $1 AND seq = $2 LIMIT 1";

/// A byte budget as a query parameter (`usize::MAX`, "unbounded", saturates).
pub(super) fn budget(max_bytes: usize) -> i64 {
    i64::try_from(max_bytes).unwrap_or(i64::MAX)
}

/// A query for journal entries of `journal j` matching `filter`, in `order`, at most `limit` rows,
/// cut after the entry whose records reach `max_bytes` (`limit` and `max_bytes` are parameter
/// placeholders). Each row is [`ENTRY`] and the running byte sum.
pub(super) fn bounded_entries(filter: &str, order: &str, limit: &str, max_bytes: &str) -> String {
    format!(
        "SELECT {ENTRY}, cum FROM (
             SELECT {ENTRY}, octet_length(node) AS len,
                    SUM(octet_length(node)) OVER (ORDER BY {order} ROWS UNBOUNDED PRECEDING) AS cum
             FROM (SELECT j.seq, j.kind, j.node, j.device, j.committed_ns, j.tag FROM journal j
                   WHERE {filter} ORDER BY {order} LIMIT {limit}) AS page
         ) AS summed
         WHERE cum - len < {max_bytes}
         ORDER BY {order}"
    )
}

/// The last journal entry at or before `$3` of each node after `$2`, by node id, at most `$4`
/// nodes, cut after the live node whose record reaches `$5` bytes (deleted nodes count no bytes,
/// so they never stall paging). Rows: node id, kind, record, running byte sum.
pub(super) const SNAPSHOT_PAGE: &str = "
SELECT node_id, kind, node, cum FROM (
    SELECT last.node_id, j.kind, j.node,
           CASE WHEN j.kind = 1 THEN octet_length(j.node) ELSE 0 END AS len,
           SUM(CASE WHEN j.kind = 1 THEN octet_length(j.node) ELSE 0 END)
               OVER (ORDER BY last.node_id ROWS UNBOUNDED PRECEDING) AS cum
    FROM (SELECT node_id, MAX(seq) AS seq FROM journal
          WHERE tenant_id = $1 AND node_id > $2 AND seq <= $3
          GROUP BY node_id ORDER BY node_id LIMIT $4) AS last
    JOIN journal j ON j.tenant_id = $1 AND j.seq = last.seq
) AS page
WHERE cum - len < $5
ORDER BY node_id";

/// A journal entry from a row starting with [`ENTRY`].
pub(super) fn entry(row: &Row) -> StoreResult<JournalEntry> {
    Ok(JournalEntry {
        seq: col::<i64>(row, 0)? as u64,
        kind: decode_kind(i64::from(col::<i16>(row, 1)?))?,
        node: decode_node(col(row, 2)?)?,
        device: col(row, 3)?,
        committed_at_ns: col(row, 4)?,
        tag: col::<i64>(row, 5)? as u64,
    })
}

/// The entries of a [`bounded_entries`] read, and whether the byte budget cut it short.
pub(super) fn entries(rows: &[Row], max_bytes: usize) -> StoreResult<(Vec<JournalEntry>, bool)> {
    let full = match rows.last() {
        Some(last) => col::<i64>(last, 6)? >= budget(max_bytes),
        None => false,
    };
    Ok((rows.iter().map(entry).collect::<StoreResult<_>>()?, full))
}

/// Appends the live nodes of a [`SNAPSHOT_PAGE`] read to `nodes`; returns the id to continue
/// after, `None` on the last page.
pub(super) fn snapshot_nodes(
    rows: &[Row],
    nodes: &mut Vec<Node>,
    limit: usize,
    max_bytes: usize,
) -> StoreResult<Option<NodeKey>> {
    let mut last = None;
    for row in rows {
        last = Some(key(col(row, 0)?)?);
        if decode_kind(i64::from(col::<i16>(row, 1)?))? == ChangeKind::Upsert {
            nodes.push(decode_node(col(row, 2)?)?);
        }
    }
    let full = match rows.last() {
        Some(last) => col::<i64>(last, 3)? >= budget(max_bytes),
        None => false,
    };
    Ok(if rows.len() == limit || full {
        last
    } else {
        None
    })
}

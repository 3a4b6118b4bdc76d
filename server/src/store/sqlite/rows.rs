//! Stored rows ⇄ values: node records, journal entries, heads and tags.

use bvfs_proto::v1::ChangeKind;
use rusqlite::{Connection, OptionalExtension, params};

use super::meta_err;
pub(super) use crate::store::records::{decode_kind, decode_node, key, root_node};
use crate::store::{JournalEntry, StoreResult, TenantId};

/// The columns of a journal row, in the order [`entry_from_row`] reads them.
pub(super) const ENTRY: &str = "seq, kind, node, device, committed_ns, tag";

// The partial index and the deleted-nodes query spell the delete kind as the literal 2.
const _: () = assert!(ChangeKind::Delete as i32 == 2);

/// A journal row as read: seq, kind, node record, device, commit time, tag.
pub(super) type EntryRow = (i64, i64, Vec<u8>, String, i64, i64);

pub(super) fn entry_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<EntryRow> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
    ))
}

pub(super) fn to_entry(
    (seq, kind, node, device, committed_at_ns, tag): EntryRow,
) -> StoreResult<JournalEntry> {
    Ok(JournalEntry {
        seq: seq as u64,
        kind: decode_kind(kind)?,
        node: decode_node(&node)?,
        device,
        committed_at_ns,
        tag: tag as u64,
    })
}

/// Journal rows as entries until their stored node records add up to `max_bytes` (the row that
/// reaches it included, so at least one). The flag says whether the byte budget cut the read short.
pub(super) fn read_bounded(
    rows: impl Iterator<Item = rusqlite::Result<EntryRow>>,
    max_bytes: usize,
) -> StoreResult<(Vec<JournalEntry>, bool)> {
    let (mut entries, mut bytes) = (Vec::new(), 0usize);
    for row in rows {
        let row = row.map_err(meta_err)?;
        bytes = bytes.saturating_add(row.2.len());
        entries.push(to_entry(row)?);
        if bytes >= max_bytes {
            return Ok((entries, true));
        }
    }
    Ok((entries, false))
}

pub(super) fn read_head(c: &Connection, tenant: TenantId) -> StoreResult<u64> {
    let head: Option<i64> = c
        .query_row(
            "SELECT head FROM heads WHERE tenant_id = ?1",
            [tenant],
            |r| r.get(0),
        )
        .optional()
        .map_err(meta_err)?;
    Ok(head.unwrap_or(0) as u64)
}

/// The tag of the journal entry at `seq` (`Some(0)` for 0, the empty journal's position), also of
/// one retention dropped (its tag is kept, so positions below the floor are still checked).
pub(super) fn read_tag(c: &Connection, tenant: TenantId, seq: u64) -> StoreResult<Option<u64>> {
    if seq == 0 {
        return Ok(Some(0));
    }
    let tag: Option<i64> = c
        .prepare_cached(
            "SELECT tag FROM journal WHERE tenant_id = ?1 AND seq = ?2
             UNION ALL SELECT tag FROM dropped_tags WHERE tenant_id = ?1 AND seq = ?2 LIMIT 1",
        )
        .map_err(meta_err)?
        .query_row(params![tenant, seq as i64], |r| r.get(0))
        .optional()
        .map_err(meta_err)?;
    Ok(tag.map(|t| t as u64))
}

/// The tenant's journal floor (0 before any retention run dropped entries).
pub(super) fn read_floor(c: &Connection, tenant: TenantId) -> StoreResult<u64> {
    let floor: Option<i64> = c
        .prepare_cached("SELECT journal_floor FROM heads WHERE tenant_id = ?1")
        .map_err(meta_err)?
        .query_row([tenant], |r| r.get(0))
        .optional()
        .map_err(meta_err)?;
    Ok(floor.unwrap_or(0) as u64)
}

//! Byte bounds on what the server sends: chunk lists elided past [`MAX_INLINE_CHUNKS`], and pages cut
//! at [`PAGE_BUDGET_BYTES`] of encoded entries (see `docs/protocol-bounds.md`).
//!
//! Counts alone do not bound a message: one change carries a whole chunk list, so a page of 1,000
//! changes of a large file once grew past the 16 MiB message limit and a device could never catch up.

use bvfs_proto::v1::Node;
use bvfs_proto::{MAX_INLINE_CHUNKS, PAGE_BUDGET_BYTES};
use prost::Message;

/// Replaces a file's chunk list by its length when it is longer than [`MAX_INLINE_CHUNKS`] (or
/// always, with `always`): the client fetches it with `GetManifest`.
pub fn elide(node: &mut Node, always: bool) {
    if let Some(content) = node.attrs.as_mut().and_then(|a| a.content.as_mut())
        && !content.chunks_elided
        && (content.chunks.len() > MAX_INLINE_CHUNKS || (always && !content.chunks.is_empty()))
    {
        content.chunk_count = content.chunks.len() as u64;
        content.chunks = Vec::new();
        content.chunks_elided = true;
    }
}

/// The bytes an element takes inside a repeated message field: its key, length and body.
pub fn repeated_len(message: &impl Message) -> usize {
    let len = message.encoded_len();
    // Field numbers here are below 16: a one-byte key.
    1 + prost::length_delimiter_len(len) + len
}

/// How many leading `items` fit in a page of [`PAGE_BUDGET_BYTES`] beside `overhead` bytes of other
/// fields: at least one, so that paging always advances (one entry is small once elided).
pub fn fitting<T: Message>(items: &[T], overhead: usize) -> usize {
    let mut total = overhead;
    for (i, item) in items.iter().enumerate() {
        total += repeated_len(item);
        if total > PAGE_BUDGET_BYTES {
            return i.max(1);
        }
    }
    items.len()
}

/// The most chunks the elided lists of one snapshot page may add up to: a client fetches a page's
/// lists before applying it, so this bounds what it holds (about 36 bytes a chunk).
pub const MAX_ELIDED_CHUNKS_PER_PAGE: u64 = 4 * 1024 * 1024;

/// How many leading `nodes` (already elided) keep their elided lists within
/// [`MAX_ELIDED_CHUNKS_PER_PAGE`] together: at least one.
pub fn fitting_elided(nodes: &[Node]) -> usize {
    let mut total = 0u64;
    for (i, node) in nodes.iter().enumerate() {
        if let Some(content) = node.attrs.as_ref().and_then(|a| a.content.as_ref())
            && content.chunks_elided
        {
            total = total.saturating_add(content.chunk_count);
        }
        if total > MAX_ELIDED_CHUNKS_PER_PAGE {
            return i.max(1);
        }
    }
    nodes.len()
}

/// Elides as [`elide`] does; if the nodes together still exceed the page budget (a commit of many
/// edits of mid-size files echoes each whole list), every list is elided.
pub fn elide_response(nodes: &mut [Node]) {
    nodes.iter_mut().for_each(|n| elide(n, false));
    let total: usize = nodes.iter().map(repeated_len).sum();
    if total > PAGE_BUDGET_BYTES {
        nodes.iter_mut().for_each(|n| elide(n, true));
    }
}

#[cfg(test)]
mod tests {
    use bvfs_proto::v1::{ChunkRef, Content, NodeAttrs};

    use super::*;

    fn file(chunks: usize) -> Node {
        Node {
            id: vec![1; 16],
            parent_id: vec![0; 16],
            name: "f".into(),
            kind: 1,
            attrs: Some(NodeAttrs {
                size: chunks as u64,
                content: Some(Content {
                    hash: vec![2; 32],
                    chunks: vec![
                        ChunkRef {
                            id: vec![3; 32],
                            length: 1,
                        };
                        chunks
                    ],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            revision: 1,
        }
    }

    #[test]
    fn long_lists_are_elided_short_ones_kept() {
        let mut short = file(MAX_INLINE_CHUNKS);
        elide(&mut short, false);
        assert_eq!(
            short
                .attrs
                .as_ref()
                .unwrap()
                .content
                .as_ref()
                .unwrap()
                .chunks
                .len(),
            MAX_INLINE_CHUNKS
        );
        let mut long = file(MAX_INLINE_CHUNKS + 1);
        elide(&mut long, false);
        let content = long.attrs.unwrap().content.unwrap();
        assert!(content.chunks_elided && content.chunks.is_empty());
        assert_eq!(content.chunk_count, MAX_INLINE_CHUNKS as u64 + 1);
    }

    #[test]
    fn pages_fit_the_budget_and_hold_at_least_one() {
        let nodes: Vec<Node> = (0..40).map(|_| file(MAX_INLINE_CHUNKS)).collect();
        let n = fitting(&nodes, 16);
        assert!(n >= 1 && n < nodes.len());
        let size: usize = nodes[..n].iter().map(repeated_len).sum();
        assert!(size + 16 <= PAGE_BUDGET_BYTES);
        assert!(size + repeated_len(&nodes[n]) + 16 > PAGE_BUDGET_BYTES);
        assert_eq!(fitting(&nodes[..1], PAGE_BUDGET_BYTES), 1);
        assert_eq!(fitting::<Node>(&[], 0), 0);
    }

    #[test]
    fn a_page_of_elided_lists_is_bounded_in_chunks() {
        let mut nodes: Vec<Node> = (0..300).map(|_| file(MAX_INLINE_CHUNKS + 1)).collect();
        nodes.iter_mut().for_each(|n| elide(n, false));
        let n = fitting_elided(&nodes);
        assert_eq!(
            n as u64,
            MAX_ELIDED_CHUNKS_PER_PAGE / (MAX_INLINE_CHUNKS as u64 + 1)
        );
        assert_eq!(fitting_elided(&nodes[..1]), 1);
    }
}

//! Sequential-access detection for read-ahead: one [`ReadAhead`] per open file handle.

use std::ops::Range;

/// Detects sequential access on one open file and says which chunks to prefetch. Keep one per file
/// handle; reset it (or make a new one) when the handle's content changes.
///
/// A read counts as sequential when it starts within [`ReadAhead::SLACK`] of where the previous one
/// ended (multi-threaded FUSE reads arrive slightly out of order), or at offset 0 on first use. The
/// window starts at 2 chunks after the read and doubles with each sequential read up to the maximum;
/// a random read resets it.
#[derive(Debug, Clone)]
pub struct ReadAhead {
    /// Where the previous read ended.
    next: Option<u64>,
    /// The current window, in chunks (0: not sequential).
    window: usize,
    /// Chunks before this index have been requested already.
    requested_to: usize,
    max_window: usize,
}

impl Default for ReadAhead {
    /// Up to 128 chunks (≈8 MiB at the average chunk size) ahead: enough requests in flight to keep
    /// a loopback or LAN server streaming (a window of 16 read 256 MiB cold at half the speed).
    fn default() -> Self {
        Self::new(128)
    }
}

impl ReadAhead {
    /// How far from the previous read's end a read may start and still count as sequential.
    pub const SLACK: u64 = 256 * 1024;

    /// Prefetches at most `max_window` chunks ahead (0 disables read-ahead).
    pub fn new(max_window: usize) -> Self {
        Self {
            next: None,
            window: 0,
            requested_to: 0,
            max_window,
        }
    }

    /// Records a read of `[offset, offset + len)` covering chunks `covering` of `total`, and returns
    /// the chunk indexes to prefetch now (none already asked for).
    pub fn advance(
        &mut self,
        offset: u64,
        len: u32,
        covering: Range<usize>,
        total: usize,
    ) -> Range<usize> {
        let sequential = match self.next {
            Some(next) => offset.abs_diff(next) <= Self::SLACK,
            None => offset == 0,
        };
        self.next = Some(offset.saturating_add(u64::from(len)));
        if !sequential || self.max_window == 0 {
            self.window = 0;
            self.requested_to = 0;
            return 0..0;
        }
        self.window = (self.window * 2)
            .clamp(2, self.max_window.max(2))
            .min(self.max_window);
        let start = covering.end.max(self.requested_to);
        let end = covering.end.saturating_add(self.window).min(total);
        if start >= end {
            return 0..0;
        }
        self.requested_to = end;
        start..end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_reads_grow_the_window_and_never_repeat_a_chunk() {
        let mut ra = ReadAhead::new(8);
        assert_eq!(ra.advance(0, 100, 0..1, 100), 1..3);
        assert_eq!(
            ra.advance(100, 100, 0..1, 100),
            3..5,
            "window 4, chunks 1 and 2 already asked"
        );
        assert_eq!(ra.advance(200, 100, 1..2, 100), 5..10, "window 8");
        assert_eq!(ra.advance(300, 100, 1..2, 100), 0..0, "still 8, all asked");
        assert_eq!(
            ra.advance(400, 100, 9..10, 12),
            10..12,
            "clipped at the end of the file"
        );
    }

    #[test]
    fn random_reads_reset_and_first_reads_elsewhere_do_not_count() {
        let mut ra = ReadAhead::new(8);
        assert_eq!(ra.advance(1 << 30, 100, 50..51, 100), 0..0);
        assert_eq!(ra.advance((1 << 30) + 100, 100, 50..51, 100), 51..53);
        assert_eq!(ra.advance(5, 100, 0..1, 100), 0..0, "a jump back resets");
        assert_eq!(ra.advance(105, 100, 0..1, 100), 1..3);
        assert_eq!(
            ReadAhead::new(0).advance(0, 100, 0..1, 100),
            0..0,
            "disabled"
        );
    }
}

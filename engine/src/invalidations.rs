//! The kernel-cache invalidations the engine owes the mount, and their delivery.
//!
//! The round queues an invalidation for every inode and name it changes; the mount's invalidation
//! thread delivers them (the kernel calls may wait for the kernel's own locks, so they never run on
//! the round's or a request handler's thread) and acknowledges each batch. An open of an inode whose
//! invalidation is still on its way waits for it, briefly: otherwise the kernel would read the new
//! bytes against the size it still caches (a file cut short, or padded with zeros).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::api::Invalidation;

/// How long an open waits for its inode's invalidation before it goes on anyway.
const OPEN_WAIT: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Queue {
    items: Vec<Invalidation>,
    /// The sequence number of the last item queued (items are numbered from 1).
    queued: u64,
    /// Everything up to this sequence number reached the kernel.
    delivered: u64,
    /// For each inode with an invalidation on its way, the sequence number of its last one.
    pending_inodes: HashMap<u64, u64>,
    /// Whether a mount delivers and acknowledges (without one, nobody waits).
    acknowledged: bool,
}

/// The queue; see the module documentation.
#[derive(Default)]
pub struct KernelInvalidations {
    queue: Mutex<Queue>,
    delivered: Condvar,
}

impl KernelInvalidations {
    pub fn push(&self, items: impl IntoIterator<Item = Invalidation>) {
        let mut q = self.queue.lock();
        for item in items {
            q.queued += 1;
            if let Invalidation::Inode(ino) = item {
                let seq = q.queued;
                q.pending_inodes.insert(ino, seq);
            }
            q.items.push(item);
        }
    }

    /// Takes what is queued, without acknowledgement (simulations, tests).
    pub fn take(&self) -> Vec<Invalidation> {
        let mut q = self.queue.lock();
        let through = q.queued;
        q.delivered = through;
        q.pending_inodes.clear();
        self.delivered.notify_all();
        std::mem::take(&mut q.items)
    }

    /// Takes what is queued for delivery; acknowledge with [`KernelInvalidations::delivered`] and
    /// the number returned.
    pub fn take_for_delivery(&self) -> (Vec<Invalidation>, u64) {
        let mut q = self.queue.lock();
        q.acknowledged = true;
        let through = q.queued;
        (std::mem::take(&mut q.items), through)
    }

    /// Everything taken up to `through` reached the kernel.
    pub fn delivered(&self, through: u64) {
        let mut q = self.queue.lock();
        q.delivered = q.delivered.max(through);
        let delivered = q.delivered;
        q.pending_inodes.retain(|_, seq| *seq > delivered);
        self.delivered.notify_all();
    }

    /// No more deliveries (the mount is going away): nobody waits any more.
    pub fn stop_waiting(&self) {
        let mut q = self.queue.lock();
        q.acknowledged = false;
        q.pending_inodes.clear();
        self.delivered.notify_all();
    }

    /// Waits (at most [`OPEN_WAIT`]) until no invalidation of `ino` is on its way to the kernel.
    pub fn wait_for(&self, ino: u64) {
        let deadline = Instant::now() + OPEN_WAIT;
        let mut q = self.queue.lock();
        while q.acknowledged && q.pending_inodes.contains_key(&ino) {
            if self.delivered.wait_until(&mut q, deadline).timed_out() {
                tracing::debug!(
                    ino,
                    "opening before the kernel took the inode's invalidation"
                );
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn an_open_waits_until_its_inodes_invalidation_is_delivered() {
        let q = Arc::new(KernelInvalidations::default());
        let (_, through) = q.take_for_delivery();
        q.delivered(through);
        q.push([Invalidation::Inode(7)]);
        let waiter = {
            let q = q.clone();
            std::thread::spawn(move || q.wait_for(7))
        };
        std::thread::sleep(Duration::from_millis(100));
        assert!(!waiter.is_finished(), "the open waits for the delivery");
        q.wait_for(8); // another inode does not wait
        let (items, through) = q.take_for_delivery();
        assert_eq!(items.len(), 1);
        q.delivered(through);
        waiter.join().unwrap();
    }

    #[test]
    fn without_a_mount_nobody_waits() {
        let q = KernelInvalidations::default();
        q.push([Invalidation::Inode(3)]);
        let started = Instant::now();
        q.wait_for(3);
        assert!(started.elapsed() < Duration::from_millis(100));
    }
}

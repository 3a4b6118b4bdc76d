//! Push notification (ADR-0024): one watch channel per tenant carrying the journal head.
//!
//! A commit publishes its new head; every `Subscribe` stream of that tenant wakes and tells its client
//! "the namespace advanced to N". Watch channels keep only the latest value, so a slow subscriber skips
//! intermediate heads instead of queueing them: the client pulls `ListChanges` anyway.
//!
//! Each live subscription holds one receiver; a tenant holds at most [`MAX_SUBSCRIPTIONS_PER_TENANT`]
//! (issue 15, item 7: departed clients once kept their tasks until the next commit). The receiver is
//! the subscription's guard: dropping it, when the stream ends or its client goes, frees the slot.

use std::collections::HashMap;

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::store::TenantId;

/// The most live `Subscribe` streams one tenant may hold (a device holds one; this leaves room for
/// many devices and reconnects while bounding what a misbehaving client can pin).
pub const MAX_SUBSCRIPTIONS_PER_TENANT: usize = 256;

/// A subscription was refused: the tenant holds [`MAX_SUBSCRIPTIONS_PER_TENANT`] already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManySubscriptions;

/// The per-tenant head channels.
#[derive(Default)]
pub struct HeadNotifier {
    channels: Mutex<HashMap<TenantId, watch::Sender<u64>>>,
}

impl HeadNotifier {
    /// A receiver of the tenant's head; `current` seeds the channel if it is new. Refused when the
    /// tenant already holds [`MAX_SUBSCRIPTIONS_PER_TENANT`] receivers (counted under the lock, so
    /// concurrent subscribes cannot overshoot).
    pub fn subscribe(
        &self,
        tenant: TenantId,
        current: u64,
    ) -> Result<watch::Receiver<u64>, TooManySubscriptions> {
        let mut channels = self.channels.lock();
        let sender = channels
            .entry(tenant)
            .or_insert_with(|| watch::channel(current).0);
        if sender.receiver_count() >= MAX_SUBSCRIPTIONS_PER_TENANT {
            return Err(TooManySubscriptions);
        }
        sender.send_if_modified(|head| {
            let newer = current > *head;
            if newer {
                *head = current;
            }
            newer
        });
        Ok(sender.subscribe())
    }

    /// The tenant's live subscriptions (receivers not yet dropped).
    pub fn subscribers(&self, tenant: TenantId) -> usize {
        self.channels
            .lock()
            .get(&tenant)
            .map_or(0, watch::Sender::receiver_count)
    }

    /// Publishes a new head for the tenant (never moves it backwards). The channel is made if the
    /// tenant has none yet: a `Subscribe` that read the head just before this commit and subscribes
    /// just after it then still starts from this head, instead of missing the push until the next
    /// commit (one small channel per tenant that commits).
    pub fn publish(&self, tenant: TenantId, head: u64) {
        let mut channels = self.channels.lock();
        let sender = channels
            .entry(tenant)
            .or_insert_with(|| watch::channel(head).0);
        sender.send_if_modified(|current| {
            let newer = head > *current;
            if newer {
                *current = head;
            }
            newer
        });
    }

    /// Ends every subscription (at shutdown): receivers see their sender dropped.
    pub fn close(&self) {
        self.channels.lock().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A commit published before its tenant had any channel is not lost: a subscription that read
    /// the head just before that commit still starts from the commit's head.
    #[test]
    fn a_head_published_before_the_first_subscription_is_not_missed() {
        let notifier = HeadNotifier::default();
        // The subscriber read head 4 from the store; then a commit publishes 5; then it subscribes.
        notifier.publish(7, 5);
        let receiver = notifier.subscribe(7, 4).unwrap();
        assert_eq!(*receiver.borrow(), 5);
        // A newer head seeds an existing channel forward, never backwards.
        let receiver = notifier.subscribe(7, 9).unwrap();
        assert_eq!(*receiver.borrow(), 9);
        notifier.publish(7, 6);
        assert_eq!(*receiver.borrow(), 9);
    }
}

//! Push notification (ADR-0024): one watch channel per tenant carrying the journal head.
//!
//! A commit publishes its new head; every `Subscribe` stream of that tenant wakes and tells its client
//! "the namespace advanced to N". Watch channels keep only the latest value, so a slow subscriber skips
//! intermediate heads instead of queueing them: the client pulls `ListChanges` anyway.
//!
//! Each live subscription holds one receiver; a tenant holds at most [`MAX_SUBSCRIPTIONS_PER_TENANT`]
//! (issue 15, item 7: departed clients once kept their tasks until the next commit). The receiver is
//! the subscription's guard: dropping it, when the stream ends or its client goes, frees the slot.
//!
//! With several server processes on one database, a commit must also wake the subscribers held by
//! the other processes: a notifier made [`HeadNotifier::relayed`] hands every head it publishes to
//! [`relay`], which sends it over NATS to every process, where it is [`HeadNotifier::deliver`]ed.

pub mod relay;

use std::collections::HashMap;

use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};

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
    /// Where heads committed through this process go for the other processes, if anywhere.
    relay: Option<mpsc::UnboundedSender<(TenantId, u64)>>,
}

impl HeadNotifier {
    /// A notifier that also hands every published head to the returned receiver (for [`relay`]).
    pub fn relayed() -> (Self, mpsc::UnboundedReceiver<(TenantId, u64)>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let notifier = Self {
            relay: Some(tx),
            ..Self::default()
        };
        (notifier, rx)
    }

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
        advance(sender, current);
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
        {
            let mut channels = self.channels.lock();
            let sender = channels
                .entry(tenant)
                .or_insert_with(|| watch::channel(head).0);
            advance(sender, head);
        }
        if let Some(relay) = &self.relay {
            // Closed only once the relay has stopped (at shutdown): the outbox keeps the head.
            let _ = relay.send((tenant, head));
        }
    }

    /// Wakes this process's subscribers of `tenant` with a head committed through another process
    /// (never moves it backwards). A tenant with no channel here has no subscriber to wake; one that
    /// subscribes later reads the head from the store after subscribing, so it misses nothing.
    pub fn deliver(&self, tenant: TenantId, head: u64) {
        if let Some(sender) = self.channels.lock().get(&tenant) {
            advance(sender, head);
        }
    }

    /// The tenants with live subscriptions here.
    pub fn subscribed_tenants(&self) -> Vec<TenantId> {
        self.channels
            .lock()
            .iter()
            .filter(|(_, sender)| sender.receiver_count() > 0)
            .map(|(tenant, _)| *tenant)
            .collect()
    }

    /// Ends every subscription (at shutdown): receivers see their sender dropped.
    pub fn close(&self) {
        self.channels.lock().clear();
    }
}

/// Moves a channel's head to `head` if that is newer, waking its receivers.
fn advance(sender: &watch::Sender<u64>, head: u64) {
    sender.send_if_modified(|current| {
        let newer = head > *current;
        if newer {
            *current = head;
        }
        newer
    });
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

    /// Heads from other processes wake subscribers here, never move a head back, and make no
    /// channel for a tenant nobody here subscribes to; heads committed here go to the relay.
    #[test]
    fn delivered_heads_wake_only_existing_subscribers_and_published_ones_are_relayed() {
        let (notifier, mut relayed) = HeadNotifier::relayed();
        notifier.deliver(3, 10);
        assert!(notifier.subscribed_tenants().is_empty());
        let receiver = notifier.subscribe(3, 4).unwrap();
        assert_eq!(*receiver.borrow(), 4, "an earlier delivery made no channel");
        notifier.deliver(3, 8);
        assert_eq!(*receiver.borrow(), 8);
        notifier.deliver(3, 7);
        assert_eq!(*receiver.borrow(), 8);
        assert_eq!(notifier.subscribed_tenants(), vec![3]);
        notifier.publish(3, 9);
        assert_eq!(*receiver.borrow(), 9);
        assert_eq!(relayed.try_recv().unwrap(), (3, 9));
        assert!(
            relayed.try_recv().is_err(),
            "deliveries are not relayed back"
        );
    }
}

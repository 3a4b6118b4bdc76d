//! Push notification (ADR-0024): one watch channel per tenant carrying the journal head.
//!
//! A commit publishes its new head; every `Subscribe` stream of that tenant wakes and tells its client
//! "the namespace advanced to N". Watch channels keep only the latest value, so a slow subscriber skips
//! intermediate heads instead of queueing them: the client pulls `ListChanges` anyway.

use std::collections::HashMap;

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::store::TenantId;

/// The per-tenant head channels.
#[derive(Default)]
pub struct HeadNotifier {
    channels: Mutex<HashMap<TenantId, watch::Sender<u64>>>,
}

impl HeadNotifier {
    /// A receiver of the tenant's head; `current` seeds the channel if it is new.
    pub fn subscribe(&self, tenant: TenantId, current: u64) -> watch::Receiver<u64> {
        let mut channels = self.channels.lock();
        let sender = channels
            .entry(tenant)
            .or_insert_with(|| watch::channel(current).0);
        sender.send_if_modified(|head| {
            let newer = current > *head;
            if newer {
                *head = current;
            }
            newer
        });
        sender.subscribe()
    }

    /// Publishes a new head for the tenant (never moves it backwards).
    pub fn publish(&self, tenant: TenantId, head: u64) {
        if let Some(sender) = self.channels.lock().get(&tenant) {
            sender.send_if_modified(|current| {
                let newer = head > *current;
                if newer {
                    *current = head;
                }
                newer
            });
        }
    }

    /// Ends every subscription (at shutdown): receivers see their sender dropped.
    pub fn close(&self) {
        self.channels.lock().clear();
    }
}

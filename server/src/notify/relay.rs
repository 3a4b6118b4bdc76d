//! "Tenant T advanced to N" across server processes, over NATS.
//!
//! Every commit's transaction records its tenant's new head in an outbox ([`Outbox`]; the
//! PostgreSQL store's `outbox` table). The relay of each server process:
//!
//! - **publishes** on subject `bvfs.ns.<tenant>` the heads committed through this process as soon
//!   as they are acknowledged, and every few seconds whatever the outbox still holds (heads of
//!   processes that died before publishing; all of it at start, so the outbox is drained after a
//!   restart), then clears what it published once NATS has confirmed it (a flush);
//! - **subscribes** to `bvfs.ns.*` and delivers each head to this process's `Subscribe` streams
//!   ([`HeadNotifier::deliver`]), after checking that it names the tenant's namespace (another
//!   deployment on the same NATS, or a stray message, cannot silence or fake a tenant's pushes for
//!   long: a head is only a hint to pull, and pulls go by cursor);
//! - while NATS is unreachable, **polls** the database for the heads of the tenants subscribed here
//!   (once a second), and once more when it reconnects, so clients still hear of commits promptly
//!   and catch up at once when NATS returns.
//!
//! NATS core delivery is at most once; nothing depends on it. A lost message only delays a client
//! until the next commit, the relay's next sweep, or the client's own poll.
//!
//! Message payload: `<head> <namespace id hex>`, ASCII.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;

use super::HeadNotifier;
use crate::store::postgres::PgMetaStore;
use crate::store::{MetaStore, StoreResult, TenantId};

/// The subject prefix; a tenant's subject is `bvfs.ns.<tenant id>`.
pub const SUBJECT_PREFIX: &str = "bvfs.ns";
/// How often the outbox is swept for heads nobody has published yet.
const SWEEP_INTERVAL: Duration = Duration::from_secs(2);
/// How often heads are polled from the database while NATS is unreachable.
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How long a publish may wait for NATS to confirm it.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// Outbox rows read per sweep.
const SWEEP_ROWS: i64 = 10_000;

/// The durable record of heads not yet published, written by commits in their transaction.
pub trait Outbox: Send + Sync + 'static {
    /// Outbox rows: each tenant's newest head not yet published, at most `limit`.
    fn pending(&self, limit: i64) -> StoreResult<Vec<(TenantId, u64)>>;
    /// Clears the rows of these published heads (a newer head committed since stays).
    fn published(&self, heads: &[(TenantId, u64)]) -> StoreResult<()>;
    /// The current heads of `tenants`.
    fn heads_of(&self, tenants: &[TenantId]) -> StoreResult<Vec<(TenantId, u64)>>;
}

impl Outbox for PgMetaStore {
    fn pending(&self, limit: i64) -> StoreResult<Vec<(TenantId, u64)>> {
        self.outbox_pending(limit)
    }

    fn published(&self, heads: &[(TenantId, u64)]) -> StoreResult<()> {
        self.outbox_published(heads).map(drop)
    }

    fn heads_of(&self, tenants: &[TenantId]) -> StoreResult<Vec<(TenantId, u64)>> {
        PgMetaStore::heads_of(self, tenants)
    }
}

/// A NATS URL with its credentials hidden (`nats://***@host`: a bare user part is a token), for
/// messages and logs.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
        Some((_, host)) => format!("{scheme}://***@{host}"),
        None => url.to_string(),
    }
}

/// The relay's running tasks; dropping it stops them.
pub struct Relay {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// What the relay works with.
pub struct RelayParts {
    pub meta: Arc<dyn MetaStore>,
    pub outbox: Arc<dyn Outbox>,
    pub heads: Arc<HeadNotifier>,
    /// The heads published by this process's commits ([`HeadNotifier::relayed`]).
    pub committed: mpsc::UnboundedReceiver<(TenantId, u64)>,
    /// Set to the outbox's rows at each sweep (how far publishing lags behind commits).
    pub outbox_pending: prometheus_client::metrics::gauge::Gauge,
}

/// Connects to NATS at `url` (in the background: the server starts and serves while NATS is
/// down, polling instead) and starts the relay on the current runtime.
pub async fn start(url: &str, parts: RelayParts) -> anyhow::Result<Relay> {
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .map_err(|e| anyhow::anyhow!("cannot use NATS at {}: {e}", redact(url)))?;
    let subscriber = client
        .subscribe(format!("{SUBJECT_PREFIX}.*"))
        .await
        .map_err(|e| anyhow::anyhow!("cannot subscribe on NATS at {}: {e}", redact(url)))?;
    let namespaces = Arc::new(NamespaceIds {
        meta: parts.meta.clone(),
        known: parking_lot::Mutex::default(),
    });
    let publishing = tokio::spawn(publish_loop(
        client.clone(),
        parts.outbox.clone(),
        namespaces.clone(),
        parts.committed,
        parts.outbox_pending,
    ));
    let receiving = tokio::spawn(receive_loop(subscriber, namespaces, parts.heads.clone()));
    let polling = tokio::spawn(poll_loop(client, parts.outbox, parts.heads));
    Ok(Relay {
        tasks: vec![publishing, receiving, polling],
    })
}

/// Namespace ids by tenant, read once each (they never change).
struct NamespaceIds {
    meta: Arc<dyn MetaStore>,
    known: parking_lot::Mutex<HashMap<TenantId, [u8; 16]>>,
}

impl NamespaceIds {
    /// The tenant's namespace id; `None` if it cannot be read (no such tenant here, or the
    /// database is unreachable: not remembered, so the next message asks again).
    async fn of(&self, tenant: TenantId) -> Option<[u8; 16]> {
        if let Some(known) = self.known.lock().get(&tenant) {
            return Some(*known);
        }
        let meta = self.meta.clone();
        let id = blocking("cannot read a namespace id", move || {
            meta.namespace_id(tenant)
        })
        .await?;
        self.known.lock().insert(tenant, id);
        Some(id)
    }
}

/// Runs blocking store work off the runtime; a failure is logged and yields `None`.
async fn blocking<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> StoreResult<T> + Send + 'static,
) -> Option<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(value)) => Some(value),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "notification relay: {what}");
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "notification relay: {what}");
            None
        }
    }
}

/// Publishes heads committed here at once, and the outbox's leftovers every [`SWEEP_INTERVAL`].
async fn publish_loop(
    client: async_nats::Client,
    outbox: Arc<dyn Outbox>,
    namespaces: Arc<NamespaceIds>,
    mut committed: mpsc::UnboundedReceiver<(TenantId, u64)>,
    outbox_pending: prometheus_client::metrics::gauge::Gauge,
) {
    let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut batch: HashMap<TenantId, u64> = HashMap::new();
        tokio::select! {
            next = committed.recv() => {
                let Some((tenant, head)) = next else { return };
                batch.insert(tenant, head);
                while let Ok((tenant, head)) = committed.try_recv() {
                    let newest = batch.entry(tenant).or_insert(head);
                    *newest = (*newest).max(head);
                }
            }
            _ = sweep.tick() => {
                let outbox = outbox.clone();
                let pending = blocking("cannot read the outbox", move || outbox.pending(SWEEP_ROWS)).await;
                if let Some(pending) = &pending {
                    outbox_pending.set(i64::try_from(pending.len()).unwrap_or(i64::MAX));
                }
                batch.extend(pending.unwrap_or_default());
            }
        }
        // While NATS is unreachable a publish would only queue in the client (and block once its
        // buffer is full): leave the heads to the outbox, which the next sweep after the
        // reconnection publishes. Subscribers here are served by the poll meanwhile.
        if batch.is_empty() || client.connection_state() != async_nats::connection::State::Connected
        {
            continue;
        }
        let mut sent = Vec::with_capacity(batch.len());
        for (tenant, head) in batch {
            let Some(namespace) = namespaces.of(tenant).await else {
                continue;
            };
            let payload = format!("{head} {}", hex::encode(namespace));
            let subject = format!("{SUBJECT_PREFIX}.{tenant}");
            if client.publish(subject, payload.into()).await.is_err() {
                break;
            }
            sent.push((tenant, head));
        }
        // Cleared only once NATS has them; otherwise the outbox keeps them for the next sweep.
        match tokio::time::timeout(FLUSH_TIMEOUT, client.flush()).await {
            Ok(Ok(())) if !sent.is_empty() => {
                let outbox = outbox.clone();
                blocking("cannot clear the outbox", move || outbox.published(&sent)).await;
            }
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "NATS did not confirm; the outbox keeps the heads")
            }
            Err(_) => tracing::debug!("NATS did not confirm in time; the outbox keeps the heads"),
        }
    }
}

/// Delivers heads published by any process to this process's subscribers.
async fn receive_loop(
    mut subscriber: async_nats::Subscriber,
    namespaces: Arc<NamespaceIds>,
    heads: Arc<HeadNotifier>,
) {
    while let Some(message) = subscriber.next().await {
        let Some((tenant, head, namespace)) = parse(message.subject.as_str(), &message.payload)
        else {
            tracing::debug!(subject = %message.subject, "ignored a malformed head notification");
            continue;
        };
        if namespaces.of(tenant).await == Some(namespace) {
            heads.deliver(tenant, head);
        } else {
            tracing::debug!(tenant, "ignored a head notification for another namespace");
        }
    }
}

/// Reads a notification: the tenant from the subject, the head and namespace id from the payload.
fn parse(subject: &str, payload: &[u8]) -> Option<(TenantId, u64, [u8; 16])> {
    let tenant = subject
        .strip_prefix(SUBJECT_PREFIX)?
        .strip_prefix('.')?
        .parse()
        .ok()?;
    let (head, namespace) = std::str::from_utf8(payload).ok()?.split_once(' ')?;
    let namespace: [u8; 16] = hex::decode(namespace).ok()?.try_into().ok()?;
    Some((tenant, head.parse().ok()?, namespace))
}

/// While NATS is unreachable, reads the heads of the tenants subscribed here from the database;
/// once more right after it reconnects (what was published meanwhile never reached us).
async fn poll_loop(client: async_nats::Client, outbox: Arc<dyn Outbox>, heads: Arc<HeadNotifier>) {
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_connected = false;
    loop {
        tick.tick().await;
        let connected = client.connection_state() == async_nats::connection::State::Connected;
        if connected && was_connected {
            continue;
        }
        was_connected = connected;
        let tenants = heads.subscribed_tenants();
        if tenants.is_empty() {
            continue;
        }
        let outbox = outbox.clone();
        if let Some(current) =
            blocking("cannot poll heads", move || outbox.heads_of(&tenants)).await
        {
            for (tenant, head) in current {
                heads.deliver(tenant, head);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_parse_and_malformed_ones_are_refused() {
        let id = [7u8; 16];
        let payload = format!("42 {}", hex::encode(id));
        assert_eq!(parse("bvfs.ns.12", payload.as_bytes()), Some((12, 42, id)));
        for (subject, payload) in [
            ("bvfs.ns.x", payload.as_str()),
            ("bvfs.nsx.12", payload.as_str()),
            ("other.12", payload.as_str()),
            ("bvfs.ns.12", "42"),
            ("bvfs.ns.12", "-1 0707"),
            ("bvfs.ns.12", "42 0707"),
            ("bvfs.ns.12", "42 zz"),
        ] {
            assert_eq!(
                parse(subject, payload.as_bytes()),
                None,
                "{subject} {payload}"
            );
        }
        assert_eq!(parse("bvfs.ns.12", &[0xff, 0xfe]), None);
    }

    #[test]
    fn nats_credentials_are_hidden_from_messages() {
        assert_eq!(
            redact("nats://s3cret-token@nats:4222"),
            "nats://***@nats:4222"
        );
        assert_eq!(redact("nats://user:pw@nats:4222"), "nats://***@nats:4222");
        assert_eq!(redact("nats://nats:4222"), "nats://nats:4222");
    }
}

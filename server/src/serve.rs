//! Running the server: the data directory, the listener, TLS, limits and graceful shutdown.

use std::fs::{self, File};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use bvfs_proto::MAX_MESSAGE_BYTES;
use bvfs_proto::v1::sync_server::SyncServer;
use tokio::net::TcpListener;
use tonic::transport::{Identity, ServerTlsConfig};

use crate::connections::{
    DEFAULT_MAX_CONNECTIONS, accept_capped, effective_cap, raise_descriptor_limit,
};
use crate::metrics::Metrics;
use crate::metrics::grpc::Observed;
use crate::notify::HeadNotifier;
use crate::notify::relay::Relay;
use crate::service::SyncService;
use crate::storage::{Notify, Storage};
use crate::store::fs_chunks::FsChunkStore;
use crate::store::sqlite::SqliteMetaStore;
use crate::store::{ChunkStore, MetaStore};

/// How long one unary request (or one client-streamed upload) may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// After a shutdown signal, how long requests in flight may take to finish before connections are
/// dropped. Commits are transactions, so a dropped one is simply not acknowledged.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// How often readiness (the gRPC health service) re-checks that the storage answers.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(2);

/// The server's durable state on disk: `DIR/meta.sqlite` and `DIR/chunks/`.
pub struct DataDir {
    pub meta: Arc<SqliteMetaStore>,
    pub chunks: Arc<FsChunkStore>,
    /// Held for the server's lifetime: one server per data directory.
    _lock: Option<File>,
}

impl DataDir {
    /// Opens the data directory for serving, creating it if needed. Fails if another server holds it.
    pub fn open_exclusive(dir: &Path) -> anyhow::Result<Self> {
        // The lock first: opening migrates the database and clearing temporary files removes
        // uploads in flight, neither of which may happen under a running server.
        let lock = crate::storage::lock(dir)?;
        let mut data = Self::open(dir)?;
        data.chunks
            .clear_temporary()
            .with_context(|| format!("cannot clear temporary chunk files in {}", dir.display()))?;
        data._lock = Some(lock);
        Ok(data)
    }

    /// Opens the data directory without the server lock (for admin commands beside a running server).
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
        let meta = SqliteMetaStore::open(&dir.join("meta.sqlite"))
            .with_context(|| format!("cannot open the metadata database in {}", dir.display()))?;
        let chunks = FsChunkStore::open(&dir.join("chunks"))
            .with_context(|| format!("cannot open the chunk store in {}", dir.display()))?;
        Ok(Self {
            meta: Arc::new(meta),
            chunks: Arc::new(chunks),
            _lock: None,
        })
    }
}

/// TLS certificate and key files (PEM).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// How to serve.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    pub tls: Option<TlsFiles>,
    /// Allow plaintext on a non-loopback address (tokens would cross the network in the clear).
    pub allow_plaintext: bool,
}

/// A bound server, ready to run.
pub struct BoundServer {
    listener: TcpListener,
    local_addr: SocketAddr,
    tls: Option<ServerTlsConfig>,
    service: SyncService,
    heads: Arc<HeadNotifier>,
    meta: Arc<dyn MetaStore>,
    chunks: Arc<dyn ChunkStore>,
    /// The cross-process notification relay, if the storage has one; stops when dropped.
    _relay: Option<Relay>,
    /// At most this many connections open at once ([`crate::connections`]).
    max_connections: usize,
    metrics: Arc<Metrics>,
    /// Where `GET /metrics` is served, if anywhere ([`BoundServer::with_metrics_listener`]).
    metrics_listener: Option<TcpListener>,
}

impl BoundServer {
    /// Checks the options, loads TLS material and binds the listener, on an embedded data directory.
    pub async fn bind(data: &DataDir, options: &ServeOptions) -> anyhow::Result<Self> {
        let meta: Arc<dyn MetaStore> = data.meta.clone();
        let chunks: Arc<dyn ChunkStore> = data.chunks.clone();
        let heads = Arc::new(HeadNotifier::default());
        Self::bind_parts(meta, chunks, heads, None, Arc::default(), options).await
    }

    /// Checks the options, loads TLS material and binds the listener, on any backends; starts
    /// their notification relay, if any.
    pub async fn bind_storage(storage: &Storage, options: &ServeOptions) -> anyhow::Result<Self> {
        let metrics = Arc::new(Metrics::new());
        let (heads, relay) = match storage.notify {
            Notify::InProcess => (Arc::new(HeadNotifier::default()), None),
            Notify::Nats { .. } => {
                let (heads, committed) = HeadNotifier::relayed();
                let heads = Arc::new(heads);
                let relay = storage
                    .start_relay(heads.clone(), committed, metrics.clone())
                    .await?;
                (heads, relay)
            }
        };
        let mut server = Self::bind_parts(
            storage.meta.clone(),
            storage.chunks.clone(),
            heads,
            relay,
            metrics,
            options,
        )
        .await?;
        server.service = server
            .service
            .with_presigned_transfer(storage.presign.clone());
        Ok(server)
    }

    async fn bind_parts(
        meta: Arc<dyn MetaStore>,
        chunks: Arc<dyn ChunkStore>,
        heads: Arc<HeadNotifier>,
        relay: Option<Relay>,
        metrics: Arc<Metrics>,
        options: &ServeOptions,
    ) -> anyhow::Result<Self> {
        if options.tls.is_none() && !options.listen.ip().is_loopback() && !options.allow_plaintext {
            bail!(
                "refusing to serve plaintext on the non-loopback address {}: tokens and files would cross \
                 the network unencrypted. Give --tls-cert and --tls-key, listen on 127.0.0.1, or pass \
                 --allow-plaintext if a trusted proxy terminates TLS",
                options.listen
            );
        }
        let tls = match &options.tls {
            None => None,
            Some(files) => {
                let cert = fs::read(&files.cert).with_context(|| {
                    format!("cannot read the TLS certificate {}", files.cert.display())
                })?;
                let key = fs::read(&files.key)
                    .with_context(|| format!("cannot read the TLS key {}", files.key.display()))?;
                Some(ServerTlsConfig::new().identity(Identity::from_pem(cert, key)))
            }
        };
        let listener = TcpListener::bind(options.listen)
            .await
            .with_context(|| format!("cannot listen on {}", options.listen))?;
        let local_addr = listener.local_addr()?;
        let service = SyncService::new(meta.clone(), chunks.clone(), heads.clone())
            .with_metrics(metrics.clone());
        Ok(Self {
            listener,
            local_addr,
            tls,
            service,
            heads,
            meta,
            chunks,
            _relay: relay,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            metrics,
            metrics_listener: None,
        })
    }

    /// Serves Prometheus metrics (`GET /metrics`, [`crate::metrics`]) on `addr`, a listener of
    /// its own (port 0 picks a free port): bound now, so a taken address fails the start.
    pub async fn with_metrics_listener(mut self, addr: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for metrics on {addr}"))?;
        self.metrics_listener = Some(listener);
        Ok(self)
    }

    /// The URL of the metrics, if they are served.
    pub fn metrics_url(&self) -> Option<String> {
        let addr = self.metrics_listener.as_ref()?.local_addr().ok()?;
        Some(format!("http://{addr}/metrics"))
    }

    /// The process's metrics (also counted when not served).
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Caps the connections open at once (default [`DEFAULT_MAX_CONNECTIONS`]); the cap applied
    /// also leaves file descriptors for the rest of the server.
    pub fn with_max_connections(mut self, max: usize) -> Self {
        self.max_connections = max;
        self
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The URL clients should use.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.local_addr)
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets requests in flight finish, and
    /// returns.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let mut builder = tonic::transport::Server::builder()
            .timeout(REQUEST_TIMEOUT)
            .tcp_nodelay(true)
            .tcp_keepalive(Some(Duration::from_secs(60)))
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            .concurrency_limit_per_connection(256);
        if let Some(tls) = self.tls {
            builder = builder
                .tls_config(tls)
                .context("invalid TLS certificate or key")?;
        }
        let service = SyncServer::new(self.service)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let service = Observed::new(service, self.metrics.clone());
        // Aborted when this returns (dropping the handle would not stop it).
        let scrapes = self.metrics_listener.map(|listener| {
            AbortOnDrop(tokio::spawn(crate::metrics::endpoint::serve(
                listener,
                self.metrics.clone(),
            )))
        });
        // Tonic applies `tcp_nodelay`/`tcp_keepalive` only to sockets it accepts itself, not to an
        // incoming stream: without this, Nagle's algorithm held back every small answer until the
        // client's delayed ACK (≈ 40 ms a small cold file, issue 10).
        let cap = effective_cap(self.max_connections, raise_descriptor_limit());
        tracing::info!("accepting at most {cap} connections at once");
        let incoming = tokio_stream::StreamExt::map(
            accept_capped(self.listener, cap, self.metrics.connections_open.clone()),
            |accepted| accepted.inspect(|capped| tune_accepted(capped.tcp())),
        );
        // Readiness for load balancers: `grpc.health.v1.Health` says SERVING while the storage
        // answers, NOT_SERVING while it does not, and from the moment shutdown begins.
        let (health, health_service) = tonic_health::server::health_reporter();
        let probe = tokio::spawn(probe_storage(
            health.clone(),
            self.meta.clone(),
            self.chunks.clone(),
        ));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let serving = builder
            .add_service(health_service)
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stop_rx.await;
            });
        tokio::pin!(serving);
        tokio::select! {
            result = &mut serving => return result.context("the server stopped with an error"),
            () = shutdown => {}
        }
        tracing::info!("shutting down: finishing requests in flight");
        probe.abort();
        drop(scrapes);
        set_health(&health, tonic_health::ServingStatus::NotServing).await;
        // Subscriptions never end on their own; close them so their connections can drain.
        self.heads.close();
        let _ = stop_tx.send(());
        match tokio::time::timeout(SHUTDOWN_GRACE, serving).await {
            Ok(result) => result.context("the server stopped with an error"),
            Err(_) => {
                tracing::warn!("connections still open after {SHUTDOWN_GRACE:?}; closing them");
                Ok(())
            }
        }
    }
}

/// A task aborted when this is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The name clients ask the health service about (besides "", the whole server).
const SYNC_SERVICE: &str = <SyncServer<SyncService> as tonic::server::NamedService>::NAME;

async fn set_health(
    health: &tonic_health::server::HealthReporter,
    status: tonic_health::ServingStatus,
) {
    health.set_service_status("", status).await;
    health.set_service_status(SYNC_SERVICE, status).await;
}

/// Every [`HEALTH_INTERVAL`], a read of the catalog and a lookup in the chunk store (neither
/// writes anything); the health service reports whether both answered.
async fn probe_storage(
    health: tonic_health::server::HealthReporter,
    meta: Arc<dyn MetaStore>,
    chunks: Arc<dyn ChunkStore>,
) {
    let mut tick = tokio::time::interval(HEALTH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (meta, chunks) = (meta.clone(), chunks.clone());
        let answered = tokio::task::spawn_blocking(move || {
            meta.tenant_by_name("")
                .and_then(|_| chunks.stored_len(0, &[0; 32]))
                .map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        let status = match answered {
            Ok(_) => tonic_health::ServingStatus::Serving,
            Err(e) => {
                tracing::warn!(error = %e, "readiness: the storage does not answer");
                tonic_health::ServingStatus::NotServing
            }
        };
        set_health(&health, status).await;
    }
}

/// Sets what the builder's `tcp_nodelay` and `tcp_keepalive` would on an accepted connection. A
/// failure only costs latency (or a dead peer noticed later), so it is logged, not fatal.
fn tune_accepted(stream: &tokio::net::TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::warn!("cannot set TCP_NODELAY on an accepted connection: {e}");
    }
    let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60));
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive) {
        tracing::warn!("cannot set TCP keepalive on an accepted connection: {e}");
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::warn!("cannot watch SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Accepted connections get TCP_NODELAY and keepalive (tonic's builder settings do not reach
    /// sockets from an incoming stream).
    #[tokio::test]
    async fn accepted_connections_are_tuned() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(
            !accepted.nodelay().unwrap(),
            "accepted sockets start with Nagle on"
        );
        tune_accepted(&accepted);
        assert!(accepted.nodelay().unwrap());
        assert!(socket2::SockRef::from(&accepted).keepalive().unwrap());
    }
}

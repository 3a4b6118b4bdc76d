//! `bvfs serve`: run the BitVault server.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use bvfs_server::{BoundServer, ServeOptions, Storage, StorageUrls, TlsFiles, shutdown_signal};
use clap::Args;

use crate::paths::default_server_dir;

#[derive(Args)]
#[command(
    after_help = "Example:\n  bvfs serve --data /srv/bvfs --listen 127.0.0.1:7878\n  \
bvfs admin add-user --data /srv/bvfs alice --device laptop\n\n\
The first line of standard output says where the server listens. SIGINT or SIGTERM stop it \
gracefully: requests in flight finish, every acknowledged commit is durable.\n\n\
Several servers behind one address (a team): share PostgreSQL, an S3 bucket and NATS:\n  \
export AWS_ENDPOINT_URL=https://s3.example AWS_REGION=eu-west-1 AWS_ACCESS_KEY_ID=… AWS_SECRET_ACCESS_KEY=…\n  \
bvfs serve --metadata postgres://bvfs@db/bvfs --chunks s3://vault/bvfs --notify nats://nats:4222\n\
Secrets are best given through the environment (BVFS_METADATA, PGPASSWORD), not the command line.\n\n\
The same settings can come from a TOML file (--config, or $XDG_CONFIG_HOME/bvfs/server.toml if it \
exists), with the flags' names: listen, data, metadata, chunks, notify, presigned_transfer, \
tls_cert, tls_key, max_connections, metrics. Flags and environment variables override the file."
)]
pub struct ServeArgs {
    /// A TOML configuration file [default: $XDG_CONFIG_HOME/bvfs/server.toml, if it exists]
    #[arg(long, value_name = "FILE", env = "BVFS_SERVER_CONFIG")]
    config: Option<PathBuf>,
    /// Directory for the embedded database and chunks [default: $XDG_DATA_HOME/bvfs/server]
    #[arg(long, value_name = "DIR", env = "BVFS_SERVER_DATA")]
    data: Option<PathBuf>,
    #[command(flatten)]
    backends: BackendArgs,
    /// Address to listen on (port 0 picks a free port) [default: 127.0.0.1:7878]
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// TLS certificate chain (PEM); clients then connect with https://
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM)
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// Allow plaintext on a non-loopback address (only behind a TLS-terminating proxy)
    #[arg(long)]
    allow_plaintext: bool,
    /// At most this many client connections open at once; more wait until one closes (also kept
    /// below the process's open-file limit) [default: 4096]
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// Serve Prometheus metrics (GET /metrics) on this address, a listener of its own; keep it on
    /// loopback or a private network [default: off]
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Let clients move chunk bytes to and from the S3 store directly, through presigned URLs the
    /// server signs (15 minutes); the server still verifies every chunk before a commit may name
    /// it. Needs --chunks s3://…, and an AWS_ENDPOINT_URL the clients can reach
    #[arg(long)]
    presigned_transfer: bool,
    /// Print the listening address as JSON
    #[arg(long)]
    json: bool,
}

/// Where the server keeps its state: embedded by default, or shared by many server processes.
#[derive(Args, Clone, Default)]
pub struct BackendArgs {
    /// Metadata (namespace, journal, users): a SQLite catalog path, or postgres://USER[:PASSWORD]@HOST[:PORT]/DB
    /// shared by many servers [default: DATA/meta.sqlite]
    #[arg(long, value_name = "URL", env = "BVFS_METADATA")]
    pub metadata: Option<String>,
    /// Chunk storage: a directory, or s3://BUCKET[/PREFIX] (endpoint, region and keys from
    /// AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) [default: DATA/chunks]
    #[arg(long, value_name = "URL", env = "BVFS_CHUNKS")]
    pub chunks: Option<String>,
    /// Push notifications between server processes: nats://HOST:PORT (needs --metadata postgres://)
    /// [default: within this process]
    #[arg(long, value_name = "URL", env = "BVFS_NOTIFY")]
    pub notify: Option<String>,
}

impl BackendArgs {
    /// The URLs, with the data directory for the embedded defaults.
    pub fn urls(&self, data: PathBuf) -> StorageUrls {
        StorageUrls {
            data,
            metadata: self.metadata.clone(),
            chunks: self.chunks.clone(),
            notify: self.notify.clone(),
        }
    }
}

/// The address served when neither a flag nor the file gives one.
const DEFAULT_LISTEN: &str = "127.0.0.1:7878";

impl ServeArgs {
    /// Fills what the flags and environment left unset from the configuration file: the one
    /// `--config` names, else the default one if it exists.
    fn apply_config(&mut self) -> anyhow::Result<()> {
        let path = match &self.config {
            Some(path) => path.clone(),
            None => match bvfs_server::config::default_path() {
                Some(path) if path.exists() => path,
                _ => return Ok(()),
            },
        };
        let file = bvfs_server::config::ServerConfig::load(&path)?;
        tracing::info!(file = %path.display(), "configuration file");
        fn fill<T>(flag: &mut Option<T>, file: Option<T>) {
            if flag.is_none() {
                *flag = file;
            }
        }
        fill(&mut self.listen, file.listen);
        fill(&mut self.data, file.data);
        fill(&mut self.backends.metadata, file.metadata);
        fill(&mut self.backends.chunks, file.chunks);
        fill(&mut self.backends.notify, file.notify);
        fill(&mut self.max_connections, file.max_connections);
        fill(&mut self.metrics, file.metrics);
        self.presigned_transfer |= file.presigned_transfer.unwrap_or(false);
        // The certificate and key go together: both from the flags, or both from the file.
        if self.tls_cert.is_none() && self.tls_key.is_none() {
            self.tls_cert = file.tls_cert;
            self.tls_key = file.tls_key;
        }
        Ok(())
    }
}

pub fn run(mut args: ServeArgs) -> anyhow::Result<()> {
    args.apply_config()?;
    let tls = match (args.tls_cert.take(), args.tls_key.take()) {
        (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
        (None, None) => None,
        _ => anyhow::bail!("--tls-cert and --tls-key go together: give both or neither"),
    };
    let listen = match args.listen {
        Some(listen) => listen,
        None => DEFAULT_LISTEN.parse().context("the default address")?,
    };
    let max_connections = args
        .max_connections
        .unwrap_or(bvfs_server::connections::DEFAULT_MAX_CONNECTIONS);
    let data_dir = args.data.clone().unwrap_or_else(default_server_dir);
    let urls = args.backends.urls(data_dir.clone());
    let embedded = !urls.all_shared();
    if args.presigned_transfer {
        urls.check_presigned()?;
    }
    if embedded {
        crate::privacy::private_dir(&data_dir, "the server's data directory")?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // Opened off the runtime: the shared backends block on their own I/O runtimes while connecting.
    let mut storage = Storage::open_serving(&urls)?;
    if args.presigned_transfer {
        storage.offer_presigned()?;
    }
    runtime.block_on(async {
        let options = ServeOptions {
            listen,
            tls,
            allow_plaintext: args.allow_plaintext,
        };
        let mut server = BoundServer::bind_storage(&storage, &options)
            .await?
            .with_max_connections(max_connections);
        if let Some(addr) = args.metrics {
            server = server.with_metrics_listener(addr).await?;
        }
        let url = server.url();
        let metrics_url = server.metrics_url();
        let mut out = std::io::stdout().lock();
        let backends = storage.describe();
        if args.json {
            let mut line = serde_json::json!({ "url": url });
            if embedded {
                line["data"] = serde_json::json!(data_dir);
            }
            for (name, place) in backends {
                line[*name] = serde_json::json!(place);
            }
            if let Some(metrics) = &metrics_url {
                line["metrics"] = serde_json::json!(metrics);
            }
            writeln!(out, "{line}")?;
        } else if embedded
            && args.backends.metadata.is_none()
            && args.backends.chunks.is_none()
            && metrics_url.is_none()
        {
            writeln!(
                out,
                "bvfs serve: listening on {url} (data: {})",
                data_dir.display()
            )?;
        } else {
            let mut places: Vec<String> = backends
                .iter()
                .map(|(name, place)| format!("{name}: {place}"))
                .collect();
            if let Some(metrics) = &metrics_url {
                places.push(format!("metrics: {metrics}"));
            }
            writeln!(
                out,
                "bvfs serve: listening on {url} ({})",
                places.join(", ")
            )?;
        }
        out.flush()?;
        drop(out);
        tracing::info!(%url, "serving");
        server.run(shutdown_signal()).await?;
        tracing::info!("stopped");
        Ok(())
    })
}

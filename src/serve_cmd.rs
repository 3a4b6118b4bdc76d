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
Secrets are best given through the environment (BVFS_METADATA, PGPASSWORD), not the command line."
)]
pub struct ServeArgs {
    /// Directory for the embedded database and chunks [default: $XDG_DATA_HOME/bvfs/server]
    #[arg(long, value_name = "DIR", env = "BVFS_SERVER_DATA")]
    data: Option<PathBuf>,
    #[command(flatten)]
    backends: BackendArgs,
    /// Address to listen on (port 0 picks a free port)
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7878")]
    listen: SocketAddr,
    /// TLS certificate chain (PEM); clients then connect with https://
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM)
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Allow plaintext on a non-loopback address (only behind a TLS-terminating proxy)
    #[arg(long)]
    allow_plaintext: bool,
    /// At most this many client connections open at once; more wait until one closes (also kept
    /// below the process's open-file limit)
    #[arg(long, value_name = "N", default_value_t = bvfs_server::connections::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
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

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let data_dir = args.data.clone().unwrap_or_else(default_server_dir);
    let urls = args.backends.urls(data_dir.clone());
    let embedded = !urls.all_shared();
    if embedded {
        crate::privacy::private_dir(&data_dir, "the server's data directory")?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // Opened off the runtime: the shared backends block on their own I/O runtimes while connecting.
    let storage = Storage::open_serving(&urls)?;
    runtime.block_on(async {
        let options = ServeOptions {
            listen: args.listen,
            tls: args
                .tls_cert
                .zip(args.tls_key)
                .map(|(cert, key)| TlsFiles { cert, key }),
            allow_plaintext: args.allow_plaintext,
        };
        let server = BoundServer::bind_storage(&storage, &options)
            .await?
            .with_max_connections(args.max_connections);
        let url = server.url();
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
            writeln!(out, "{line}")?;
        } else if embedded && args.backends.metadata.is_none() && args.backends.chunks.is_none() {
            writeln!(
                out,
                "bvfs serve: listening on {url} (data: {})",
                data_dir.display()
            )?;
        } else {
            let places: Vec<String> = backends
                .iter()
                .map(|(name, place)| format!("{name}: {place}"))
                .collect();
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

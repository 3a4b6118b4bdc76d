//! `bvfs serve`: run the BitVault server.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use bvfs_server::{BoundServer, DataDir, ServeOptions, TlsFiles, shutdown_signal};
use clap::Args;

use crate::paths::default_server_dir;

#[derive(Args)]
#[command(
    after_help = "Example:\n  bvfs serve --data /srv/bvfs --listen 127.0.0.1:7878\n  \
bvfs admin add-user --data /srv/bvfs alice --device laptop\n\n\
The first line of standard output says where the server listens. SIGINT or SIGTERM stop it \
gracefully: requests in flight finish, every acknowledged commit is durable."
)]
pub struct ServeArgs {
    /// Directory for the database and chunks [default: $XDG_DATA_HOME/bvfs/server]
    #[arg(long, value_name = "DIR", env = "BVFS_SERVER_DATA")]
    data: Option<PathBuf>,
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
    /// Print the listening address as JSON
    #[arg(long)]
    json: bool,
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let data_dir = args.data.unwrap_or_else(default_server_dir);
    crate::privacy::private_dir(&data_dir, "the server's data directory")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let data = DataDir::open_exclusive(&data_dir)?;
        let options = ServeOptions {
            listen: args.listen,
            tls: args
                .tls_cert
                .zip(args.tls_key)
                .map(|(cert, key)| TlsFiles { cert, key }),
            allow_plaintext: args.allow_plaintext,
        };
        let server = BoundServer::bind(&data, &options).await?;
        let url = server.url();
        let mut out = std::io::stdout().lock();
        if args.json {
            let line = serde_json::json!({ "url": url, "data": data_dir });
            writeln!(out, "{line}")?;
        } else {
            writeln!(
                out,
                "bvfs serve: listening on {url} (data: {})",
                data_dir.display()
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

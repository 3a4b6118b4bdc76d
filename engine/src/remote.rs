//! The engine's connection to a BitVault server: the gRPC `Sync` client with the device token attached
//! to every call, and TLS verification for `https://` URLs (system roots, or a private CA).

use std::path::PathBuf;
use std::time::Duration;

use bvfs_proto::v1::sync_client::SyncClient;
use bvfs_proto::{AUTHORIZATION, MAX_MESSAGE_BYTES};
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// Where the server is and how to prove who we are.
#[derive(Debug, Clone)]
pub struct RemoteConfig {
    /// `http://host:port` (loopback or trusted networks) or `https://host:port`.
    pub url: String,
    /// The device token from `bvfs admin add-user`.
    pub token: String,
    /// A PEM file with the CA that signed the server certificate, for private CAs. Without it,
    /// `https://` servers are verified against the system's trusted roots.
    pub ca_cert: Option<PathBuf>,
    /// How long to wait for a TCP/TLS connection.
    pub connect_timeout: Duration,
}

impl RemoteConfig {
    pub fn new(url: impl Into<String>, token: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            token: token.into(),
            ca_cert: None,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// Why the client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid server URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("the token contains characters that cannot be sent in a header")]
    BadToken,
    #[error("cannot read the CA certificate {path}: {source}")]
    CaCert {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS setup failed: {0}")]
    Tls(String),
    #[error("cannot connect to {url}: {reason}")]
    Unreachable { url: String, reason: String },
}

/// Adds `authorization: Bearer <token>` to each request.
#[derive(Clone)]
pub struct BearerToken(MetadataValue<tonic::metadata::Ascii>);

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        request.metadata_mut().insert(AUTHORIZATION, self.0.clone());
        Ok(request)
    }
}

/// The generated client with authentication attached. Cheap to clone; clones share one connection.
pub type SyncApi = SyncClient<InterceptedService<Channel, BearerToken>>;

/// Builds the endpoint (URL, TLS, timeouts) for a configuration.
fn endpoint(config: &RemoteConfig) -> Result<Endpoint, ConnectError> {
    let bad_url = |reason: String| ConnectError::BadUrl {
        url: config.url.clone(),
        reason,
    };
    let mut endpoint = Endpoint::from_shared(config.url.clone()).map_err(|e| bad_url(e.to_string()))?;
    match endpoint.uri().scheme_str() {
        Some("https") => {
            let mut tls = ClientTlsConfig::new();
            tls = match &config.ca_cert {
                Some(path) => {
                    let pem = std::fs::read(path).map_err(|source| ConnectError::CaCert {
                        path: path.clone(),
                        source,
                    })?;
                    tls.ca_certificate(Certificate::from_pem(pem))
                }
                None => tls.with_native_roots(),
            };
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| ConnectError::Tls(e.to_string()))?;
        }
        Some("http") => {}
        other => return Err(bad_url(format!("the scheme must be http or https, not {other:?}"))),
    }
    Ok(endpoint
        .connect_timeout(config.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true))
}

fn api(channel: Channel, token: BearerToken) -> SyncApi {
    SyncClient::with_interceptor(channel, token)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

fn bearer(config: &RemoteConfig) -> Result<BearerToken, ConnectError> {
    format!("Bearer {}", config.token)
        .parse()
        .map(BearerToken)
        .map_err(|_| ConnectError::BadToken)
}

/// Connects now, failing if the server cannot be reached.
pub async fn connect(config: &RemoteConfig) -> Result<SyncApi, ConnectError> {
    let token = bearer(config)?;
    let channel = endpoint(config)?
        .connect()
        .await
        .map_err(|e| ConnectError::Unreachable {
            url: config.url.clone(),
            reason: error_chain(&e),
        })?;
    Ok(api(channel, token))
}

/// A client that connects on first use and reconnects after failures: what an offline-tolerant engine
/// wants, since the server may be down when the engine starts.
pub fn connect_lazy(config: &RemoteConfig) -> Result<SyncApi, ConnectError> {
    let token = bearer(config)?;
    Ok(api(endpoint(config)?.connect_lazy(), token))
}

/// An error and its causes on one line (transport errors hide the useful part in their sources).
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

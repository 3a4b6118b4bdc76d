//! The configuration file of `bvfs serve` (TOML): the same settings as the flags, for servers
//! started by a service manager.
//!
//! ```toml
//! listen = "0.0.0.0:7878"
//! metadata = "postgres://bvfs@db.example.net/bvfs?sslmode=require"
//! chunks = "s3://bvfs-chunks/prod"
//! notify = "nats://nats.example.net:4222"
//! presigned_transfer = true      # clients move chunk bytes to and from S3 directly
//! tls_cert = "cert.pem"          # relative paths are relative to this file's directory
//! tls_key = "key.pem"
//! max_connections = 4096
//! metrics = "127.0.0.1:9464"
//! ```
//!
//! Rules, each checked before anything is opened:
//! - an unknown key is an error that names it (a typo must not silently fall back to a default);
//! - the file is at most [`MAX_CONFIG_BYTES`];
//! - a file that holds a secret (a password in the PostgreSQL URL, credentials in the NATS URL)
//!   and that anyone but its owner may read is refused: the secret belongs in a `0600` file or in
//!   the environment (`PGPASSWORD`, `BVFS_METADATA`);
//! - messages never quote a secret: errors give the line and the parser's message with any URL
//!   credentials hidden, never the offending line itself.
//!
//! Flags and environment variables override the file (`serve_cmd` merges them).

use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::bail;
use serde::Deserialize;

/// The largest configuration file read.
pub const MAX_CONFIG_BYTES: u64 = 64 * 1024;

/// The settings a configuration file may hold; every one optional.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: Option<SocketAddr>,
    pub data: Option<PathBuf>,
    pub metadata: Option<String>,
    pub chunks: Option<String>,
    pub notify: Option<String>,
    /// `--presigned-transfer` (only with `chunks = "s3://…"`).
    pub presigned_transfer: Option<bool>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub max_connections: Option<usize>,
    pub metrics: Option<SocketAddr>,
}

impl ServerConfig {
    /// Reads and checks the file at `path` (see the module's rules).
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let shown = path.display();
        let meta = fs::metadata(path)
            .map_err(|e| anyhow::anyhow!("cannot read the configuration file {shown}: {e}"))?;
        if !meta.is_file() {
            bail!("the configuration {shown} is not a file");
        }
        if meta.len() > MAX_CONFIG_BYTES {
            bail!(
                "the configuration file {shown} is {} bytes; at most {MAX_CONFIG_BYTES} are read",
                meta.len()
            );
        }
        let bytes = fs::read(path)
            .map_err(|e| anyhow::anyhow!("cannot read the configuration file {shown}: {e}"))?;
        let text = String::from_utf8(bytes)
            .map_err(|_| anyhow::anyhow!("the configuration file {shown} is not UTF-8"))?;
        let mut config = Self::parse(&text).map_err(|e| anyhow::anyhow!("{shown}:{e}"))?;
        if let Some(what) = config.secret()
            && meta.mode() & 0o077 != 0
        {
            bail!(
                "the configuration file {shown} holds {what} but others may read it (mode {:o}): \
                 run `chmod 600 {shown}`, or keep the secret out of the file (PGPASSWORD, BVFS_METADATA)",
                meta.mode() & 0o777
            );
        }
        config.resolve_relative(path.parent().unwrap_or(Path::new(".")));
        Ok(config)
    }

    /// Parses TOML text. The error is `LINE: message`, secrets hidden.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e: toml::de::Error| {
            let line = e
                .span()
                .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1)
                .unwrap_or(1);
            let message = hide_credentials(e.message());
            // Bounded: a parser message quotes at most a value of the file.
            let message: String = message.chars().take(512).collect();
            format!("{line}: {message}")
        })
    }

    /// What secret the file holds, if any.
    fn secret(&self) -> Option<&'static str> {
        if self.metadata.as_deref().is_some_and(url_has_password) {
            return Some("a PostgreSQL password");
        }
        if self.notify.as_deref().is_some_and(url_has_credentials) {
            return Some("NATS credentials");
        }
        None
    }

    /// Makes relative paths relative to the file's directory (not to wherever the server was
    /// started from). URLs are left alone.
    fn resolve_relative(&mut self, base: &Path) {
        let resolve = |path: &mut PathBuf| {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        };
        for path in [&mut self.data, &mut self.tls_cert, &mut self.tls_key]
            .into_iter()
            .flatten()
        {
            resolve(path);
        }
        for place in [&mut self.metadata, &mut self.chunks].into_iter().flatten() {
            if !place.contains("://") && Path::new(place.as_str()).is_relative() {
                *place = base.join(place.as_str()).display().to_string();
            }
        }
    }
}

/// The default configuration file, `$XDG_CONFIG_HOME/bvfs/server.toml` (or
/// `~/.config/bvfs/server.toml`), whether or not it exists.
pub fn default_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("bvfs/server.toml"));
    }
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty())?;
    Some(PathBuf::from(home).join(".config/bvfs/server.toml"))
}

/// The user-info part of a URL (`user:password` in `scheme://user:password@host/…`), if any.
fn userinfo(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    authority.rsplit_once('@').map(|(userinfo, _)| userinfo)
}

/// Whether a PostgreSQL URL carries a password (in its user info or as a parameter).
fn url_has_password(url: &str) -> bool {
    userinfo(url).is_some_and(|u| u.contains(':'))
        || url
            .split_once('?')
            .is_some_and(|(_, query)| query.split('&').any(|p| p.starts_with("password=")))
}

/// Whether a NATS URL carries credentials (a bare user part is a token).
fn url_has_credentials(url: &str) -> bool {
    userinfo(url).is_some_and(|u| !u.is_empty())
}

/// `text` with the user info of every URL in it replaced by `***`.
fn hide_credentials(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at + 3);
        out.push_str(before);
        let end = after
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '/' | '?'))
            .unwrap_or(after.len());
        match after[..end].rfind('@') {
            Some(at) => {
                out.push_str("***");
                out.push_str(&after[at..end]);
            }
            None => out.push_str(&after[..end]),
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn every_key_parses() {
        let config = ServerConfig::parse(
            r#"
            listen = "0.0.0.0:7878"
            data = "/srv/bvfs"
            metadata = "postgres://bvfs@db/bvfs"
            chunks = "s3://bucket/prefix"
            notify = "nats://nats:4222"
            presigned_transfer = true
            tls_cert = "/etc/bvfs/cert.pem"
            tls_key = "/etc/bvfs/key.pem"
            max_connections = 100
            metrics = "127.0.0.1:9464"
            "#,
        )
        .unwrap();
        assert_eq!(config.listen, Some("0.0.0.0:7878".parse().unwrap()));
        assert_eq!(config.max_connections, Some(100));
        assert_eq!(config.metrics, Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(config.chunks.as_deref(), Some("s3://bucket/prefix"));
        assert_eq!(config.presigned_transfer, Some(true));
        assert_eq!(ServerConfig::parse("").unwrap(), ServerConfig::default());
    }

    #[test]
    fn an_unknown_key_is_named_with_its_line() {
        let err =
            ServerConfig::parse("listen = \"127.0.0.1:1\"\nmax_conections = 5\n").unwrap_err();
        assert!(err.starts_with("2: "), "{err}");
        assert!(err.contains("max_conections"), "{err}");
    }

    #[test]
    fn errors_never_quote_a_secret() {
        for text in [
            "max_connections = \"postgres://bvfs:hunter2@db/bvfs\"\n",
            "metadata = \"postgres://bvfs:hunter2@db/bvfs\"\nlisten = 5\n",
            "metadata = \"postgres://bvfs:hunter2@db/bvfs\n",
            "metadata = postgres://bvfs:hunter2@db/bvfs\n",
        ] {
            let err = ServerConfig::parse(text).unwrap_err();
            assert!(!err.contains("hunter2"), "{text}: {err}");
            assert!(err.len() < 600, "{err}");
        }
        assert_eq!(
            hide_credentials("a \"postgres://u:p@h:5/db\" and nats://tok@n:4222 and s3://b/p"),
            "a \"postgres://***@h:5/db\" and nats://***@n:4222 and s3://b/p"
        );
    }

    #[test]
    fn a_readable_file_with_a_password_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.toml");
        fs::write(&path, "metadata = \"postgres://bvfs:hunter2@db/bvfs\"\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = ServerConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("a PostgreSQL password"), "{err}");
        assert!(err.contains("chmod 600"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");

        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(ServerConfig::load(&path).is_ok());

        // Without a secret, the mode does not matter; with one in a parameter or a NATS URL, it does.
        fs::write(&path, "metadata = \"postgres://bvfs@db/bvfs\"\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(ServerConfig::load(&path).is_ok());
        for secret in [
            "metadata = \"postgres://bvfs@db/bvfs?sslmode=require&password=x\"\n",
            "notify = \"nats://token@nats:4222\"\n",
        ] {
            fs::write(&path, secret).unwrap();
            assert!(ServerConfig::load(&path).is_err(), "{secret}");
        }
    }

    #[test]
    fn relative_paths_are_relative_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.toml");
        fs::write(
            &path,
            "data = \"state\"\ntls_cert = \"/abs/cert.pem\"\ntls_key = \"key.pem\"\n\
             metadata = \"meta.sqlite\"\nchunks = \"s3://bucket\"\n",
        )
        .unwrap();
        let config = ServerConfig::load(&path).unwrap();
        assert_eq!(config.data, Some(dir.path().join("state")));
        assert_eq!(config.tls_cert, Some(PathBuf::from("/abs/cert.pem")));
        assert_eq!(config.tls_key, Some(dir.path().join("key.pem")));
        assert_eq!(
            config.metadata,
            Some(dir.path().join("meta.sqlite").display().to_string())
        );
        assert_eq!(config.chunks.as_deref(), Some("s3://bucket"));
    }

    #[test]
    fn oversized_or_missing_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.toml");
        assert!(ServerConfig::load(&path).is_err());
        fs::write(&path, "#".repeat(MAX_CONFIG_BYTES as usize + 1)).unwrap();
        let err = ServerConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("at most"), "{err}");
    }
}

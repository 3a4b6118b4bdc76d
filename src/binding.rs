//! Which namespace a mount's state belongs to (issue 15): a state directory is bound, on its first
//! successful contact with a server, to that server's namespace (its random `namespace_id`, with the
//! tenant's name for the messages), and is never used with another one. Mounting a folder's state against another server or account would make the
//! engine take the new namespace's (empty) tree for deletions of everything it holds.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use bvfs_engine::remote::{ConnectError, RemoteConfig, RemoteError, connect, error_chain};
use bvfs_proto::v1;

/// A state directory's namespace: the tenant, the namespace's identity (random per namespace, fixed
/// at its creation: a tenant of the same name on another server, or recreated on this one, is
/// another namespace) and the device name the token gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub tenant: String,
    /// The namespace id in hex; empty in a binding written before namespace ids existed (or from a
    /// server that predates them).
    pub namespace: String,
    pub root: String,
    pub device: String,
    /// The server it was first seen on (for the messages; the namespace is what counts).
    pub server: String,
}

const FILE: &str = "binding";

impl Binding {
    fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(FILE)
    }

    /// The binding recorded in `state_dir`, if any.
    pub fn load(state_dir: &Path) -> anyhow::Result<Option<Self>> {
        let text = match std::fs::read_to_string(Self::path(state_dir)) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).context("cannot read the mount's binding"),
        };
        let field = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .map(str::to_string)
        };
        match (
            field("tenant"),
            field("root"),
            field("device"),
            field("server"),
        ) {
            (Some(tenant), Some(root), Some(device), Some(server)) => Ok(Some(Self {
                tenant,
                namespace: field("namespace").unwrap_or_default(),
                root,
                device,
                server,
            })),
            _ => bail!(
                "{} is damaged; restore it, or remove it if this state belongs to {}",
                Self::path(state_dir).display(),
                "the server you are mounting"
            ),
        }
    }

    /// Records the binding durably (temp file, fsync, rename, directory fsync).
    pub fn save(&self, state_dir: &Path) -> anyhow::Result<()> {
        let text = format!(
            "tenant={}\nnamespace={}\nroot={}\ndevice={}\nserver={}\n",
            self.tenant, self.namespace, self.root, self.device, self.server
        );
        let tmp = state_dir.join(format!("{FILE}.tmp"));
        {
            use std::io::Write;
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
        }
        std::fs::rename(&tmp, Self::path(state_dir))?;
        std::fs::File::open(state_dir)?.sync_all()?;
        Ok(())
    }

    /// Whether `other` is the same namespace (the server's address may change). Namespace ids decide
    /// where both are known; a binding from before them is taken over by the first namespace of its
    /// tenant that answers.
    pub fn same_namespace(&self, other: &Binding) -> bool {
        if !self.namespace.is_empty() && !other.namespace.is_empty() {
            return self.namespace == other.namespace;
        }
        self.tenant == other.tenant && self.root == other.root
    }
}

/// What the server says about this token.
pub enum Contact {
    Reached(Binding),
    /// The server could not be reached (the message says why).
    Unreachable(String),
}

/// Asks the server who the token belongs to. A rejected token is an error that says what to do;
/// an unreachable server is reported as such (the caller decides whether that is fatal).
pub async fn contact(config: &RemoteConfig) -> anyhow::Result<Contact> {
    let mut api = match connect(config).await {
        Ok(api) => api,
        Err(ConnectError::Unreachable { url, reason }) => {
            return Ok(Contact::Unreachable(format!("{url}: {reason}")));
        }
        Err(e) => return Err(e.into()),
    };
    let answer = tokio::time::timeout(Duration::from_secs(15), api.hello(v1::HelloRequest {}))
        .await
        .map_err(|_| anyhow::anyhow!("{} did not answer within 15 s", config.url));
    let hello = match answer {
        Err(e) => return Ok(Contact::Unreachable(e.to_string())),
        Ok(Ok(response)) => response.into_inner(),
        Ok(Err(status)) => match RemoteError::from(status) {
            RemoteError::Unauthenticated(why) => bail!(
                "{} does not accept this token ({why}); make one with `bvfs admin add-user USER DEVICE` on the server and pass it with --token",
                config.url
            ),
            RemoteError::Unavailable(why) => return Ok(Contact::Unreachable(why)),
            other => bail!(
                "{} refused to say who this token is: {}",
                config.url,
                error_chain(&other)
            ),
        },
    };
    Ok(Contact::Reached(Binding {
        tenant: hello.tenant,
        namespace: hex::encode(&hello.namespace_id),
        root: hello.root_id.iter().map(|b| format!("{b:02x}")).collect(),
        device: hello.device,
        server: config.url.clone(),
    }))
}

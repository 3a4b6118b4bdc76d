//! `bvfs admin`: users (tenants) and device tokens of a server's data directory.

use std::path::PathBuf;

use std::sync::Arc;

use bvfs_server::StorageUrls;
use bvfs_server::auth::add_device;
use bvfs_server::store::MetaStore;
use clap::{Args, Subcommand};

use crate::paths::default_server_dir;

#[derive(Args)]
pub struct DataArg {
    /// The server's data directory [default: $XDG_DATA_HOME/bvfs/server]
    #[arg(long, value_name = "DIR", env = "BVFS_SERVER_DATA")]
    data: Option<PathBuf>,
    /// The server's metadata: a SQLite catalog path or postgres://… [default: DATA/meta.sqlite]
    #[arg(long, value_name = "URL", env = "BVFS_METADATA")]
    metadata: Option<String>,
}

/// The metadata store an admin command works on (beside running servers).
struct AdminStore {
    meta: Arc<dyn MetaStore>,
}

impl DataArg {
    fn open(&self) -> anyhow::Result<AdminStore> {
        let dir = self.data.clone().unwrap_or_else(default_server_dir);
        let urls = StorageUrls {
            data: dir.clone(),
            metadata: self.metadata.clone(),
            ..StorageUrls::default()
        };
        if !self
            .metadata
            .as_deref()
            .is_some_and(|m| m.starts_with("postgres://") || m.starts_with("postgresql://"))
        {
            crate::privacy::private_dir(&dir, "the server's data directory")?;
        }
        Ok(AdminStore {
            meta: urls.open_metadata()?,
        })
    }
}

#[derive(Subcommand)]
pub enum AdminCommand {
    /// Create a user (if new) and a token for one of its devices; prints the token once.
    #[command(
        after_help = "Example:\n  bvfs admin add-user alice --device laptop\n  \
bvfs mount --server http://127.0.0.1:7878 --token \"$TOKEN\" ~/BitVault"
    )]
    AddUser {
        #[command(flatten)]
        data: DataArg,
        /// The user (tenant) name
        user: String,
        /// A name for the device this token is for (shown in conflicted-copy names)
        #[arg(long, default_value = "device")]
        device: String,
        /// Print the result as JSON
        #[arg(long)]
        json: bool,
    },
    /// List the users of this server.
    ListUsers {
        #[command(flatten)]
        data: DataArg,
        /// Print the result as JSON
        #[arg(long)]
        json: bool,
    },
    /// List a user's devices (names, how many tokens, since when); tokens are never shown again.
    #[command(after_help = "Example:\n  bvfs admin list-devices alice --json")]
    ListDevices {
        #[command(flatten)]
        data: DataArg,
        /// The user (tenant) name
        user: String,
        /// Print the result as JSON
        #[arg(long)]
        json: bool,
    },
    /// Copy an embedded server (stopped) into PostgreSQL and S3, every user's namespace id, tokens,
    /// journal and chunks intact: devices carry on against the new servers without re-syncing.
    #[command(
        after_help = "Example:\n  bvfs admin migrate --data /srv/bvfs \\\n    \
--to-metadata postgres://bvfs@db/bvfs --to-chunks s3://vault/bvfs\n\n\
The S3 endpoint, region and keys come from AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID and \
AWS_SECRET_ACCESS_KEY. Users already in the target are skipped, so a run cut short can be repeated."
    )]
    Migrate {
        #[command(flatten)]
        data: DataArg,
        /// The source's chunk directory [default: DATA/chunks]
        #[arg(long, value_name = "DIR")]
        chunks: Option<String>,
        /// The target metadata: postgres://…
        #[arg(long, value_name = "URL", env = "BVFS_TO_METADATA")]
        to_metadata: String,
        /// The target chunk storage: s3://BUCKET[/PREFIX] (or a directory)
        #[arg(long, value_name = "URL")]
        to_chunks: String,
    },
    /// Drop versions older than each user's retention policy, then delete chunks named by no
    /// kept version of any file (live, older or deleted) and older than the grace period; report
    /// the bytes freed. Works beside running
    /// servers: a commit racing the collection is refused or kept, never left naming a deleted chunk.
    #[command(after_help = "Example:\n  bvfs admin gc --grace 24h\n  \
bvfs admin gc --metadata postgres://bvfs@db/bvfs --chunks s3://vault/bvfs --json\n\n\
Versions older than a user's retention policy (`bvfs admin retention`) are dropped first; then \
chunks named by no version that is kept are deleted. Presigned uploads never confirmed \
(--presigned-transfer) are deleted after the same grace period.")]
    Gc {
        #[command(flatten)]
        data: DataArg,
        /// The chunk storage: a directory or s3://BUCKET[/PREFIX] [default: DATA/chunks]
        #[arg(long, value_name = "URL", env = "BVFS_CHUNKS")]
        chunks: Option<String>,
        /// Keep unreferenced chunks uploaded more recently than this (s, m, h, d)
        #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = bvfs_server::gc::parse_duration)]
        grace: std::time::Duration,
        /// Only count what would be deleted (nothing is deleted or locked)
        #[arg(long)]
        dry_run: bool,
        /// Print the result as JSON
        #[arg(long)]
        json: bool,
    },
    /// Show or set a user's retention policy: how long old versions and deleted files are kept
    /// (default: forever). `bvfs admin gc` drops what is older and frees the chunks only it named.
    #[command(after_help = "Examples:\n  bvfs admin retention alice --days 30\n  \
bvfs admin retention alice --keep-all\n  bvfs admin retention alice --json\n\n\
The current version of every file is always kept, as is every version and deleted file newer than \
the window. A device that was offline longer than the window starts again from a snapshot when it \
comes back, keeping its local changes.")]
    Retention {
        #[command(flatten)]
        data: DataArg,
        /// The user (tenant) name
        user: String,
        /// Keep old versions and deleted files for this many days (fractions allowed)
        #[arg(long, value_name = "DAYS", conflicts_with_all = ["keep_all", "window_secs"])]
        days: Option<f64>,
        /// The window in seconds (for tests)
        #[arg(long, hide = true, value_name = "SECS", conflicts_with = "keep_all")]
        window_secs: Option<u64>,
        /// Keep every version and deleted file forever (the default)
        #[arg(long)]
        keep_all: bool,
        /// Print the result as JSON
        #[arg(long)]
        json: bool,
    },
    /// Revoke every token of one of a user's devices: the server refuses them from the next request
    /// on, and ends their live notification streams within seconds. Works beside a running server.
    #[command(after_help = "Example (a lost phone):\n  bvfs admin revoke alice phone")]
    Revoke {
        #[command(flatten)]
        data: DataArg,
        /// The user (tenant) name
        user: String,
        /// The device whose tokens to revoke (see `bvfs admin list-devices USER`)
        device: String,
    },
}

/// The tenant of `user`, or an error that says how to find the right name.
fn tenant_of(dir: &AdminStore, user: &str) -> anyhow::Result<bvfs_server::store::TenantId> {
    dir.meta.tenant_by_name(user)?.ok_or_else(|| {
        anyhow::anyhow!("there is no user {user:?} on this server; see `bvfs admin list-users`")
    })
}

pub fn run(command: AdminCommand) -> anyhow::Result<()> {
    match command {
        AdminCommand::AddUser {
            data,
            user,
            device,
            json,
        } => {
            let dir = data.open()?;
            let created = add_device(dir.meta.as_ref(), &user, &device)?;
            if json {
                let line = serde_json::json!({
                    "user": created.user,
                    "device": created.device,
                    "token": created.token,
                    "created_user": created.created_user,
                });
                println!("{line}");
            } else {
                let what = if created.created_user {
                    "created user"
                } else {
                    "user"
                };
                eprintln!(
                    "{what} {:?}, new token for device {:?} (shown only once):",
                    created.user, created.device
                );
                println!("{}", created.token);
            }
            Ok(())
        }
        AdminCommand::ListUsers { data, json } => {
            let dir = data.open()?;
            let tenants = dir.meta.tenants()?;
            if json {
                let names: Vec<_> = tenants.iter().map(|(_, name)| name).collect();
                println!("{}", serde_json::json!({ "users": names }));
            } else {
                for (_, name) in tenants {
                    println!("{name}");
                }
            }
            Ok(())
        }
        AdminCommand::ListDevices { data, user, json } => {
            let dir = data.open()?;
            let devices = dir.meta.devices(tenant_of(&dir, &user)?)?;
            if json {
                let list: Vec<_> = devices
                    .iter()
                    .map(|d| {
                        serde_json::json!({
                            "device": d.name,
                            "tokens": d.tokens,
                            "created_ns": d.created_ns,
                        })
                    })
                    .collect();
                println!("{}", serde_json::json!({ "user": user, "devices": list }));
            } else {
                for d in devices {
                    println!("{}\t{} token(s)", d.name, d.tokens);
                }
            }
            Ok(())
        }
        AdminCommand::Migrate {
            data,
            chunks,
            to_metadata,
            to_chunks,
        } => {
            let from = bvfs_server::StorageUrls {
                data: data.data.clone().unwrap_or_else(default_server_dir),
                metadata: data.metadata.clone(),
                chunks,
                notify: None,
            };
            let done = bvfs_server::migrate::run(&from, &to_metadata, &to_chunks, &mut |line| {
                eprintln!("{line}")
            })?;
            println!(
                "migrated {} user(s): {} journal entries, {} chunks ({} bytes){}",
                done.tenants,
                done.entries,
                done.chunks,
                done.chunk_bytes,
                if done.skipped.is_empty() {
                    String::new()
                } else {
                    format!("; already there: {}", done.skipped.join(", "))
                }
            );
            Ok(())
        }
        AdminCommand::Gc {
            data,
            chunks,
            grace,
            dry_run,
            json,
        } => {
            let dir = data.open()?;
            let urls = StorageUrls {
                data: data.data.clone().unwrap_or_else(default_server_dir),
                metadata: data.metadata.clone(),
                chunks,
                notify: None,
            };
            let store = urls.open_chunks()?;
            let report = if dry_run {
                bvfs_server::gc::survey(dir.meta.as_ref(), store.as_ref(), grace)?
            } else {
                bvfs_server::gc::collect(dir.meta.as_ref(), store.as_ref(), grace, &mut |line| {
                    eprintln!("{line}")
                })?
            };
            // Presigned uploads nobody confirmed are never chunks: no commit can name one.
            let pending = if dry_run {
                Default::default()
            } else {
                store.sweep_pending(grace)?
            };
            if pending.deleted > 0 {
                eprintln!(
                    "deleted {} unconfirmed presigned upload(s), {} bytes",
                    pending.deleted, pending.bytes
                );
            }
            if json {
                let line = serde_json::json!({
                    "users": report.tenants,
                    "chunks_stored": report.chunks_stored,
                    "chunks_referenced": report.chunks_referenced,
                    "chunks_within_grace": report.chunks_young,
                    "chunks_unreferenced": report.chunks_unreferenced,
                    "bytes_unreferenced": report.bytes_unreferenced,
                    "chunks_deleted": report.chunks_deleted,
                    "bytes_freed": report.bytes_freed,
                    "pending_uploads_deleted": pending.deleted,
                    "pending_bytes_freed": pending.bytes,
                    "versions_dropped": report.versions_dropped,
                    "users_with_retention": report.tenants_with_retention,
                    "grace_s": grace.as_secs(),
                    "dry_run": dry_run,
                });
                println!("{line}");
            } else if dry_run {
                println!(
                    "would delete {} unreferenced chunk(s), {} bytes ({} stored, {} referenced, {} \
                     newer than the grace period, over {} user(s)); nothing was deleted",
                    report.chunks_unreferenced,
                    report.bytes_unreferenced,
                    report.chunks_stored,
                    report.chunks_referenced,
                    report.chunks_young,
                    report.tenants
                );
            } else {
                let retention = if report.tenants_with_retention > 0 {
                    format!(
                        "; {} version(s) past {} user(s)' retention period dropped",
                        report.versions_dropped, report.tenants_with_retention
                    )
                } else {
                    String::new()
                };
                println!(
                    "deleted {} unreferenced chunk(s), {} bytes freed ({} stored, {} referenced, {} \
                     newer than the grace period, over {} user(s)){retention}",
                    report.chunks_deleted,
                    report.bytes_freed,
                    report.chunks_stored,
                    report.chunks_referenced,
                    report.chunks_young,
                    report.tenants
                );
            }
            Ok(())
        }
        AdminCommand::Retention {
            data,
            user,
            days,
            window_secs,
            keep_all,
            json,
        } => retention(&data, &user, days, window_secs, keep_all, json),
        AdminCommand::Revoke { data, user, device } => {
            let dir = data.open()?;
            let tenant = tenant_of(&dir, &user)?;
            match dir.meta.revoke(tenant, &device)? {
                0 => anyhow::bail!(
                    "user {user:?} has no device {device:?}; see `bvfs admin list-devices {user}`"
                ),
                n => {
                    eprintln!("revoked {n} token(s) of {user}'s device {device:?}");
                    Ok(())
                }
            }
        }
    }
}

/// `bvfs admin retention`: sets the window if asked, then shows it.
fn retention(
    data: &DataArg,
    user: &str,
    days: Option<f64>,
    window_secs: Option<u64>,
    keep_all: bool,
    json: bool,
) -> anyhow::Result<()> {
    let dir = data.open()?;
    let tenant = tenant_of(&dir, user)?;
    let meta = dir.meta.as_ref();
    let set = match (days, window_secs, keep_all) {
        (_, _, true) => Some(None),
        (Some(days), _, _) => {
            if !(0.0..=1e6).contains(&days) {
                anyhow::bail!("--days takes a number of days between 0 and 1000000, got {days}");
            }
            Some(Some(std::time::Duration::from_secs_f64(days * 86_400.0)))
        }
        (None, Some(secs), _) => Some(Some(std::time::Duration::from_secs(secs))),
        (None, None, false) => None,
    };
    if let Some(window) = set {
        bvfs_server::retention::set_window(meta, tenant, window)?;
    }
    let window = bvfs_server::retention::window(meta, tenant)?;
    let floor = meta.journal_floor(tenant)?;
    if json {
        let line = serde_json::json!({
            "user": user,
            "keep_versions_s": window.map(|w| w.as_secs()),
            "keep_all": window.is_none(),
            "journal_floor": floor,
        });
        println!("{line}");
    } else {
        match window {
            None => println!("{user}: every version and deleted file is kept"),
            Some(w) => println!(
                "{user}: old versions and deleted files are kept for {} (dropped by `bvfs admin gc`)",
                show_window(w)
            ),
        }
        if floor > 0 {
            println!("journal floor: {floor} (entries below it were dropped)");
        }
    }
    Ok(())
}

/// A window as people read it: days when whole, else hours, else seconds.
fn show_window(window: std::time::Duration) -> String {
    let secs = window.as_secs();
    if secs > 0 && secs.is_multiple_of(86_400) {
        format!("{} day(s)", secs / 86_400)
    } else if secs > 0 && secs.is_multiple_of(3_600) {
        format!("{} hour(s)", secs / 3_600)
    } else {
        format!("{secs} second(s)")
    }
}

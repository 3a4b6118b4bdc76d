//! `bvfs status [PATH…]`: what a running mount is doing, and the state of paths inside it.

use std::path::PathBuf;

use clap::Args;
use indicatif::HumanBytes;

use crate::control::client::{self, Target};
use crate::control::protocol::{MountStatus, PathStatus, Queue, Request};

/// The exit codes every command that talks to a mount shares (in each one's `--help`).
pub const EXIT_CODES_HELP: &str = "Exit status: 0 ok; 1 error (the message says what to do); 2 bad \
arguments; 3 no running bvfs mount here (not inside a mount, or its daemon stopped).";

#[derive(Args)]
#[command(after_help = format!("Examples:\n  \
bvfs status                          # the mount holding the current directory\n  \
bvfs status ~/BitVault/report.pdf    # is it local? synced?\n  \
bvfs status --json --mount ~/BitVault | jq .pending_uploads\n\n{EXIT_CODES_HELP}"))]
pub struct StatusArgs {
    /// Paths inside the mount to show the state of
    paths: Vec<PathBuf>,
    /// The mount to ask [default: the one holding the first PATH, or the current directory]
    #[arg(long, value_name = "DIR")]
    mount: Option<PathBuf>,
    /// Print JSON: {"mount": {...}, "paths": [...]}
    #[arg(long)]
    json: bool,
}

/// `bvfs status`'s JSON.
#[derive(serde::Serialize)]
struct StatusOutput {
    mount: MountStatus,
    paths: Vec<PathStatus>,
}

pub fn run(args: StatusArgs) -> anyhow::Result<()> {
    let first = args
        .paths
        .first()
        .cloned()
        .or_else(|| args.mount.clone())
        .unwrap_or_else(|| PathBuf::from("."));
    let home: Target = client::locate(&first, args.mount.as_deref())?;
    let mount: MountStatus = client::ask(&home.mountpoint, &Request::Status)?;
    let mut paths = Vec::new();
    for path in &args.paths {
        let target = client::locate(path, args.mount.as_deref())?;
        paths.push(client::ask::<PathStatus>(
            &target.mountpoint,
            &Request::PathStatus { path: target.path },
        )?);
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&StatusOutput { mount, paths })?
        );
        return Ok(());
    }
    print_mount(&mount);
    for path in &paths {
        print_path(path);
    }
    Ok(())
}

fn print_mount(s: &MountStatus) {
    let connection = if s.online {
        "online"
    } else {
        "offline (changes are kept and upload when the server is back)"
    };
    println!("{}: {}, {}", s.mountpoint, s.sync, connection);
    println!("  server:          {}", s.server);
    println!(
        "  last sync:       {}",
        s.last_sync
            .as_deref()
            .unwrap_or("none since the mount started")
    );
    println!(
        "  pending uploads: {} files, {} ({} changes to sync, {} uploads running, {} files being written)",
        s.pending_uploads.files,
        HumanBytes(s.pending_uploads.bytes),
        s.pending_changes,
        s.uploads_running,
        s.files_being_written
    );
    println!(
        "  downloads:       {} chunks in flight",
        s.downloads_in_flight
    );
    println!(
        "  conflicts:       {}{}",
        s.conflicts,
        if s.conflicts > 0 {
            " (see `bvfs conflicts`)"
        } else {
            ""
        }
    );
    println!(
        "  held deletes:    {}{}",
        s.held_deletes,
        if s.held_deletes > 0 {
            " (see `bvfs deletes`; confirm or restore them)"
        } else {
            ""
        }
    );
    println!(
        "  errors:          {}{}",
        s.errors,
        if s.errors > 0 {
            " (`bvfs status PATH` says why for a path)"
        } else {
            ""
        }
    );
    for failing in &s.failing {
        println!("    {}: {}", failing.path, failing.reason);
    }
    println!(
        "  cache:           {} of {} ({} kept for pinned, open or unsynced files)",
        HumanBytes(s.cache.used_bytes),
        HumanBytes(s.cache.limit_bytes),
        HumanBytes(s.cache.held_bytes)
    );
}

fn print_path(p: &PathStatus) {
    let name = if p.path.is_empty() { "/" } else { &p.path };
    print!(
        "{name}: {}, {}, {}, {}",
        p.kind,
        HumanBytes(p.size),
        p.state,
        p.sync
    );
    if let Some(error) = &p.error {
        print!(" ({error})");
    }
    println!();
}

#[derive(Args)]
#[command(after_help = format!("Examples:\n  \
bvfs queue                       # what waits to be uploaded, and downloads in flight\n  \
bvfs queue --json | jq '.uploads[] | select(.state == \"uploading\")'\n\n{EXIT_CODES_HELP}"))]
pub struct QueueArgs {
    /// The mount to ask [default: the one holding the current directory]
    #[arg(long, value_name = "DIR")]
    mount: Option<PathBuf>,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

/// `bvfs queue`: the files waiting to be uploaded, and what is being downloaded.
pub fn queue(args: QueueArgs) -> anyhow::Result<()> {
    let here = args.mount.clone().unwrap_or_else(|| PathBuf::from("."));
    let target = client::locate(&here, args.mount.as_deref())?;
    let queue: Queue = client::ask(&target.mountpoint, &Request::Queue)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&queue)?);
        return Ok(());
    }
    for upload in &queue.uploads {
        println!(
            "{:<9}  {:>10}  {}",
            upload.state,
            HumanBytes(upload.size).to_string(),
            upload.path
        );
    }
    let listed = queue.uploads.len() as u64;
    if queue.uploads_total.files > listed {
        println!("… and {} more", queue.uploads_total.files - listed);
    }
    println!(
        "{} files to upload ({}); {} chunks downloading",
        queue.uploads_total.files,
        HumanBytes(queue.uploads_total.bytes),
        queue.downloads_in_flight
    );
    Ok(())
}

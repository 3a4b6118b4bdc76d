//! `bvfs pin`, `unpin`, `hydrate` and `evict`: which files keep their bytes on this device.

use std::path::PathBuf;

use clap::Args;
use indicatif::HumanBytes;

use crate::control::client::{self, Exchange};
use crate::control::protocol::{EvictDone, HydrateDone, PinDone, Request};
use crate::progress::TransferProgress;

/// The paths a space command works on.
#[derive(Args)]
pub struct PathsArgs {
    /// Files or directories inside a bvfs mount (directories: everything under them)
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// The mount the paths are in [default: found from each path]
    #[arg(long, value_name = "DIR")]
    mount: Option<PathBuf>,
    /// Print one JSON object per path instead of text (progress still goes to stderr)
    #[arg(long)]
    json: bool,
}

pub const PIN_HELP: &str = "Examples:\n  \
bvfs pin ~/BitVault/Projects     # keep it local (offline), downloading it now\n  \
bvfs unpin ~/BitVault/Projects   # let the cache evict it again\n\n\
Pinning waits until everything under the path is local (Ctrl-C stops the download; the pin stays \
and the rest is fetched in the background). The xattr user.bvfs.pin does the same.";

pub const HYDRATE_HELP: &str = "Examples:\n  \
bvfs hydrate ~/BitVault/Photos/2024   # download it all now, once\n\n\
Ctrl-C stops the download, not the mount; what was fetched stays cached.";

pub const EVICT_HELP: &str = "Examples:\n  \
bvfs evict ~/BitVault/big.iso   # free its local space; it stays listed and opens on demand\n\n\
Evict refuses files whose latest content has not reached the server (it would be lost) and \
pinned files (unpin first); it exits 1 when it refused any.";

pub fn pin(args: PathsArgs, pinned: bool) -> anyhow::Result<()> {
    for path in &args.paths {
        let target = client::locate(path, args.mount.as_deref())?;
        let request = Request::Pin {
            path: target.path,
            pinned,
        };
        let mut progress = TransferProgress::new("pin", !pinned);
        let done: PinDone =
            Exchange::start(&target.mountpoint, &request)?.finish(|p| progress.update(p))?;
        progress.finish();
        if args.json {
            println!("{}", serde_json::to_string(&done)?);
        } else if pinned {
            let fetched = done.fetched.as_ref();
            println!(
                "pinned {} ({} items; fetched {} files, {})",
                path.display(),
                done.changed,
                fetched.map_or(0, |f| f.fetched_files),
                HumanBytes(fetched.map_or(0, |f| f.fetched_bytes))
            );
        } else {
            println!("unpinned {} ({} items)", path.display(), done.changed);
        }
    }
    Ok(())
}

pub fn hydrate(args: PathsArgs) -> anyhow::Result<()> {
    for path in &args.paths {
        let target = client::locate(path, args.mount.as_deref())?;
        let request = Request::Hydrate { path: target.path };
        let mut progress = TransferProgress::new("hydrate", false);
        let done: HydrateDone =
            Exchange::start(&target.mountpoint, &request)?.finish(|p| progress.update(p))?;
        progress.finish();
        if args.json {
            println!("{}", serde_json::to_string(&done)?);
        } else {
            println!(
                "{}: {} files local (fetched {} files, {})",
                path.display(),
                done.files,
                done.fetched_files,
                HumanBytes(done.fetched_bytes)
            );
        }
    }
    Ok(())
}

pub fn evict(args: PathsArgs) -> anyhow::Result<()> {
    let mut refused = 0;
    for path in &args.paths {
        let target = client::locate(path, args.mount.as_deref())?;
        let done: EvictDone =
            client::ask(&target.mountpoint, &Request::Evict { path: target.path })?;
        refused += done.refused_total;
        if args.json {
            println!("{}", serde_json::to_string(&done)?);
        } else {
            println!(
                "{}: freed {} of {} files",
                path.display(),
                HumanBytes(done.freed_bytes),
                done.evicted_files
            );
        }
        for refusal in &done.refused {
            eprintln!("bvfs: kept {}: {}", refusal.path, refusal.reason);
        }
        if done.refused_total > done.refused.len() as u64 {
            eprintln!(
                "bvfs: … and {} more kept",
                done.refused_total - done.refused.len() as u64
            );
        }
    }
    if refused > 0 {
        anyhow::bail!("{refused} files were kept (see above why); everything else was evicted");
    }
    Ok(())
}

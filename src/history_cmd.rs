//! `bvfs history`, `restore`, `trash` and `undelete`: the versions and deleted files the server
//! keeps (every version stays recoverable, D7).

use std::path::PathBuf;

use clap::Args;
use indicatif::HumanBytes;

use crate::control::client;
use crate::control::protocol::{HistoryList, Request, RestoreDone, TrashList, UndeleteDone};
use crate::status_cmd::EXIT_CODES_HELP;

#[derive(Args)]
#[command(after_help = format!("Examples:\n  \
bvfs history ~/BitVault/report.odt\n  \
bvfs history --json report.odt | jq '.versions[0]'\n\n\
Each line: version, time, device, size, content hash (BLAKE3). `bvfs restore --version V` takes V.\n\n{EXIT_CODES_HELP}"))]
pub struct HistoryArgs {
    /// A file or directory inside a bvfs mount
    path: PathBuf,
    /// The mount the path is in [default: found from the path]
    #[arg(long, value_name = "DIR")]
    mount: Option<PathBuf>,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
#[command(after_help = format!("Examples:\n  \
bvfs restore report.odt                # the newest earlier version with other content\n  \
bvfs restore report.odt --version 412  # a version from `bvfs history`\n  \
bvfs restore report.odt --version 412 --as report-old.odt   # beside it, as a new file\n\n\
The restored version becomes the newest on every device; the replaced one stays in the history. A \
file with local changes the server has not stored yet is not restored (they would become a \
conflicted copy): wait until `bvfs status PATH` says synced.\n\n{EXIT_CODES_HELP}"))]
// `--version` names the version to restore here, not the program's.
#[command(disable_version_flag = true)]
pub struct RestoreArgs {
    /// A file inside a bvfs mount
    path: PathBuf,
    /// The version to restore (from `bvfs history`) [default: the newest one with other content]
    #[arg(long, value_name = "V")]
    version: Option<u64>,
    /// Restore it as a new file at NEWPATH (inside the same mount) and leave PATH as it is
    #[arg(long = "as", value_name = "NEWPATH")]
    as_path: Option<PathBuf>,
    /// The mount the path is in [default: found from the path]
    #[arg(long, value_name = "DIR")]
    mount: Option<PathBuf>,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
#[command(after_help = format!("Examples:\n  \
bvfs trash                          # everything deleted in the mount holding this directory\n  \
bvfs trash ~/BitVault/Projects      # what was deleted under Projects\n  \
bvfs undelete ~/BitVault/Projects/notes.txt\n\n{EXIT_CODES_HELP}"))]
pub struct TrashArgs {
    /// A directory inside a bvfs mount [default: the current directory's mount, all of it]
    dir: Option<PathBuf>,
    /// The mount to ask [default: found from DIR or the current directory]
    #[arg(long, value_name = "DIR")]
    mount: Option<PathBuf>,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
#[command(after_help = format!("Examples:\n  \
bvfs undelete ~/BitVault/Projects/notes.txt   # the most recently deleted one at that path\n\n\
It comes back under its old name on every device; if something else has that name now, move it \
away first. `bvfs trash` lists what can come back.\n\n{EXIT_CODES_HELP}"))]
pub struct UndeleteArgs {
    /// Where the deleted file or directory was, inside a bvfs mount
    path: PathBuf,
    /// The mount the path is in [default: found from the path]
    #[arg(long, value_name = "DIR")]
    mount: Option<PathBuf>,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

pub fn history(args: HistoryArgs) -> anyhow::Result<()> {
    let target = client::locate(&args.path, args.mount.as_deref())?;
    let list: HistoryList =
        client::ask(&target.mountpoint, &Request::History { path: target.path })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    for v in &list.versions {
        println!(
            "{:>8}  {}  {:<12}  {:>10}  {}{}",
            v.version,
            v.time,
            v.device,
            HumanBytes(v.size).to_string(),
            v.hash.as_deref().map_or("-", |h| &h[..16.min(h.len())]),
            if v.deleted { "  (deleted)" } else { "" }
        );
    }
    Ok(())
}

pub fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let target = client::locate(&args.path, args.mount.as_deref())?;
    let as_path = match &args.as_path {
        None => None,
        Some(new) => {
            let new = client::locate(new, Some(&target.mountpoint))?;
            Some(new.path)
        }
    };
    let done: RestoreDone = client::ask(
        &target.mountpoint,
        &Request::Restore {
            path: target.path,
            version: args.version,
            as_path,
        },
    )?;
    if args.json {
        println!("{}", serde_json::to_string(&done)?);
    } else {
        match &done.as_path {
            None => println!(
                "restored version {} of {}; it reaches every device with the next sync",
                done.version,
                args.path.display()
            ),
            Some(new) => println!(
                "restored version {} of {} as {new}; it appears with the next sync",
                done.version,
                args.path.display()
            ),
        }
    }
    Ok(())
}

pub fn trash(args: TrashArgs) -> anyhow::Result<()> {
    let here = args
        .dir
        .clone()
        .or_else(|| args.mount.clone())
        .unwrap_or_else(|| PathBuf::from("."));
    let mut target = client::locate(&here, args.mount.as_deref())?;
    if args.dir.is_none() {
        // No DIR: the whole mount, wherever the current directory is in it.
        target.path.clear();
    }
    let list: TrashList = client::ask(&target.mountpoint, &Request::Trash { path: target.path })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    if list.deleted.is_empty() {
        println!("nothing deleted here");
    }
    for d in &list.deleted {
        let what = match &d.path {
            Some(path) => path.clone(),
            None => format!("{} (in a deleted folder)", d.name),
        };
        println!(
            "{}  {:<12}  {:>10}  {}{}",
            d.time,
            d.device,
            HumanBytes(d.size).to_string(),
            what,
            if d.directory { "/" } else { "" }
        );
    }
    Ok(())
}

pub fn undelete(args: UndeleteArgs) -> anyhow::Result<()> {
    let target = client::locate(&args.path, args.mount.as_deref())?;
    let done: UndeleteDone =
        client::ask(&target.mountpoint, &Request::Undelete { path: target.path })?;
    if args.json {
        println!("{}", serde_json::to_string(&done)?);
    } else {
        println!(
            "brought back {}; it reaches every device with the next sync",
            args.path.display()
        );
    }
    Ok(())
}

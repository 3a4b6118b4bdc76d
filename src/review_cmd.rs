//! `bvfs conflicts` and `bvfs deletes`: what the sync decided that the user should look at.

use std::path::PathBuf;

use clap::Args;

use crate::control::client;
use crate::control::protocol::{ConflictList, DeletesAction, DeletesDone, Request};
use crate::status_cmd::EXIT_CODES_HELP;

#[derive(Args)]
#[command(after_help = format!("Examples:\n  \
bvfs conflicts                        # in the mount holding the current directory\n  \
bvfs conflicts --mount ~/BitVault --json\n\n\
Each line: when, the original, its conflicted copy (the version that lost), and why.\n\n{EXIT_CODES_HELP}"))]
pub struct ConflictsArgs {
    /// The mount to ask [default: the one holding the current directory]
    #[arg(long, value_name = "DIR")]
    mount: Option<PathBuf>,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
#[command(after_help = format!("Examples:\n  \
bvfs deletes                  # list the deletes the bulk-delete brake holds\n  \
bvfs deletes --confirm        # let them reach the server (or this device)\n  \
bvfs deletes --restore        # undo them: the files come back\n\n\
A plan that deletes many files at once (500, or half the namespace) waits for you here. The xattr \
user.bvfs.held-deletes on the mount's root does the same.\n\n{EXIT_CODES_HELP}"))]
pub struct DeletesArgs {
    /// Let every held delete through
    #[arg(long, conflicts_with = "restore")]
    confirm: bool,
    /// Undo every held delete (the files come back)
    #[arg(long)]
    restore: bool,
    /// The mount to ask [default: the one holding the current directory]
    #[arg(long, value_name = "DIR")]
    mount: Option<PathBuf>,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

fn mountpoint(mount: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let here = mount.clone().unwrap_or_else(|| PathBuf::from("."));
    Ok(client::locate(&here, mount.as_deref())?.mountpoint)
}

pub fn conflicts(args: ConflictsArgs) -> anyhow::Result<()> {
    let mountpoint = mountpoint(args.mount)?;
    let list: ConflictList = client::ask(&mountpoint, &Request::Conflicts)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    if list.conflicts.is_empty() {
        println!("no conflicts");
    }
    for c in &list.conflicts {
        println!(
            "{}  {}  copy: {}  device: {}  ({})",
            c.time,
            c.original.as_deref().unwrap_or("(deleted since)"),
            c.copy.as_deref().unwrap_or("(none)"),
            c.device.as_deref().unwrap_or("?"),
            c.description
        );
    }
    Ok(())
}

pub fn deletes(args: DeletesArgs) -> anyhow::Result<()> {
    let mountpoint = mountpoint(args.mount)?;
    let action = match (args.confirm, args.restore) {
        (true, _) => DeletesAction::Confirm,
        (_, true) => DeletesAction::Restore,
        _ => DeletesAction::List,
    };
    let done: DeletesDone = client::ask(&mountpoint, &Request::Deletes { action })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&done)?);
        return Ok(());
    }
    match action {
        DeletesAction::List if done.held_total == 0 => println!("no held deletes"),
        DeletesAction::List => {
            for held in &done.held {
                let side = if held.side == "remote" {
                    "deleted here, held from the server"
                } else {
                    "deleted on the server, held here"
                };
                println!("{}  ({side})", held.path);
            }
            if done.held_total > done.held.len() as u64 {
                println!("… and {} more", done.held_total - done.held.len() as u64);
            }
            println!(
                "{} held deletes: `bvfs deletes --confirm` lets them through, `--restore` undoes them",
                done.held_total
            );
        }
        DeletesAction::Confirm => println!("confirmed {} deletes", done.resolved),
        DeletesAction::Restore => println!("restored {} deleted items", done.resolved),
    }
    Ok(())
}

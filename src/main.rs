//! `bvfs`: the BitVault virtual-filesystem sync client and server.
//!
//! This binary only parses arguments, wires crates together and prints results; the work is done by
//! `bvfs-server` (serve, admin) and the engine/vfs/platform crates (mount).

mod admin_cmd;
mod binding;
mod config;
mod control;
mod daemon_log;
mod extras_cmd;
mod fstab;
mod hash_cmd;
mod history_cmd;
mod login_cmd;
mod mount_cmd;
mod paths;
mod privacy;
mod progress;
mod review_cmd;
mod serve_cmd;
mod space_cmd;
mod status_cmd;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

/// BitVault: your cloud namespace as a folder, with files on demand.
#[derive(Parser)]
#[command(name = "bvfs", version, about, long_about = None, propagate_version = true)]
#[command(
    after_help = format!("Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=bvfs=debug) for more detail.\n\n{}", status_cmd::EXIT_CODES_HELP)
)]
struct Cli {
    /// More log detail: -v debug, -vv trace (overrides RUST_LOG)
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Mount your BitVault namespace as a folder, with files on demand.
    Mount(mount_cmd::MountArgs),
    /// Unmount a bvfs mount (after a last sync).
    Umount(mount_cmd::UmountArgs),
    /// Run the BitVault server that devices sync with.
    Serve(serve_cmd::ServeArgs),
    /// Manage the server's users and device tokens (works beside a running server).
    #[command(subcommand)]
    Admin(admin_cmd::AdminCommand),
    /// Print the BitVault content hash (BLAKE3, as b3sum) and chunk manifest of files.
    Hash(hash_cmd::HashArgs),
    /// Show what a mount is doing (online, pending uploads, conflicts, cache) and paths' states.
    Status(status_cmd::StatusArgs),
    /// List the files waiting to be uploaded and the downloads in flight.
    Queue(status_cmd::QueueArgs),
    /// Keep files local (offline), downloading them now.
    #[command(after_help = format!("{}\n\n{}", space_cmd::PIN_HELP, status_cmd::EXIT_CODES_HELP))]
    Pin(space_cmd::PathsArgs),
    /// Stop keeping files local: the cache may evict them again.
    #[command(after_help = format!("{}\n\n{}", space_cmd::PIN_HELP, status_cmd::EXIT_CODES_HELP))]
    Unpin(space_cmd::PathsArgs),
    /// Download files now, once (they stay cached until evicted).
    #[command(after_help = format!("{}\n\n{}", space_cmd::HYDRATE_HELP, status_cmd::EXIT_CODES_HELP))]
    Hydrate(space_cmd::PathsArgs),
    /// Free the local space of synced files; they stay listed and download again when opened.
    #[command(after_help = format!("{}\n\n{}", space_cmd::EVICT_HELP, status_cmd::EXIT_CODES_HELP))]
    Evict(space_cmd::PathsArgs),
    /// List conflicted copies: the original, the copy, when and why.
    Conflicts(review_cmd::ConflictsArgs),
    /// List, confirm or restore the deletes the bulk-delete brake holds.
    Deletes(review_cmd::DeletesArgs),
    /// List every version of a file the server keeps.
    History(history_cmd::HistoryArgs),
    /// Make an earlier version of a file current again, on every device.
    Restore(history_cmd::RestoreArgs),
    /// List deleted files and directories the server keeps.
    Trash(history_cmd::TrashArgs),
    /// Bring back a deleted file or directory.
    Undelete(history_cmd::UndeleteArgs),
    /// Check a device token with a server and keep it (0600), so `bvfs mount` needs no --token.
    Login(login_cmd::LoginArgs),
    /// Show the configuration `bvfs mount` uses and where each value comes from.
    Config(config::ConfigArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(extras_cmd::CompletionsArgs),
    /// Write the man pages (bvfs.1 and one per subcommand).
    Man(extras_cmd::ManArgs),
}

/// When run as `mount.bvfs` (by `mount -t bvfs`), the `bvfs mount` arguments its call stands for
/// ([`fstab`]); `-f` prints them and exits.
fn as_mount_helper() -> Option<anyhow::Result<Vec<std::ffi::OsString>>> {
    let mut argv = std::env::args();
    let program = argv.next()?;
    if std::path::Path::new(&program).file_name()? != "mount.bvfs" {
        return None;
    }
    let rest: Vec<String> = argv.collect();
    Some(fstab::helper_call(&rest).map(|call| {
        if let Some(token) = call.token {
            // SAFETY: single-threaded here, before anything reads the environment concurrently.
            unsafe { std::env::set_var("BVFS_TOKEN", token) };
        }
        if call.fake {
            let shown: Vec<_> = call.args.iter().map(|a| a.to_string_lossy()).collect();
            println!("{}", shown.join(" "));
            std::process::exit(0);
        }
        call.args
    }))
}

/// Logs to stderr (a mount daemon's stderr is its log file): `-v`/`-vv` raise bvfs's own crates to
/// debug/trace; otherwise `RUST_LOG` decides, else `info`.
fn init_logging(ansi: bool, verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let ours = |level: &str| {
        format!(
            "info,bvfs={level},bvfs_engine={level},bvfs_vfs={level},bvfs_platform={level},bvfs_server={level}"
        )
    };
    let filter = match verbose {
        0 => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        1 => EnvFilter::new(ours("debug")),
        _ => EnvFilter::new(ours("trace")),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
}

fn main() -> ExitCode {
    // Before anything is created: whatever bvfs writes is its user's alone.
    privacy::private_umask();
    let cli = match as_mount_helper() {
        None => Cli::parse(),
        Some(Ok(args)) => Cli::parse_from(args),
        Some(Err(e)) => {
            eprintln!("{e:#}");
            return ExitCode::FAILURE;
        }
    };
    // A mount daemon logs to a file: no colour codes there.
    let daemon = matches!(&cli.command, Command::Mount(args) if !args.foreground());
    init_logging(
        !daemon && std::io::IsTerminal::is_terminal(&std::io::stderr()),
        cli.verbose,
    );
    let result = match cli.command {
        Command::Mount(args) => mount_cmd::run(args),
        Command::Umount(args) => match mount_cmd::umount(args) {
            Ok(code) => return code,
            Err(e) => Err(e),
        },
        Command::Serve(args) => serve_cmd::run(args),
        Command::Admin(cmd) => admin_cmd::run(cmd),
        Command::Hash(args) => hash_cmd::run(args),
        Command::Status(args) => status_cmd::run(args),
        Command::Queue(args) => status_cmd::queue(args),
        Command::Pin(args) => space_cmd::pin(args, true),
        Command::Unpin(args) => space_cmd::pin(args, false),
        Command::Hydrate(args) => space_cmd::hydrate(args),
        Command::Evict(args) => space_cmd::evict(args),
        Command::Conflicts(args) => review_cmd::conflicts(args),
        Command::Deletes(args) => review_cmd::deletes(args),
        Command::History(args) => history_cmd::history(args),
        Command::Restore(args) => history_cmd::restore(args),
        Command::Trash(args) => history_cmd::trash(args),
        Command::Undelete(args) => history_cmd::undelete(args),
        Command::Login(args) => login_cmd::run(args),
        Command::Config(args) => config::run(args),
        Command::Completions(args) => extras_cmd::completions(args, Cli::command()),
        Command::Man(args) => extras_cmd::man(args, Cli::command()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bvfs: error: {err:#}");
            // No mount to talk to is its own exit code, so scripts can tell it from a failure.
            if err.downcast_ref::<control::client::Unreachable>().is_some() {
                ExitCode::from(control::client::EXIT_NO_MOUNT)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

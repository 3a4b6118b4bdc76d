//! `bvfs`: the BitVault virtual-filesystem sync client and server.
//!
//! This binary only parses arguments, wires crates together and prints results; the work is done by
//! `bvfs-server` (serve, admin) and the engine/vfs/platform crates (mount).

mod admin_cmd;
mod binding;
mod hash_cmd;
mod mount_cmd;
mod paths;
mod privacy;
mod serve_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// BitVault: your cloud namespace as a folder, with files on demand.
#[derive(Parser)]
#[command(name = "bvfs", version, about, long_about = None, propagate_version = true)]
#[command(
    after_help = "Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=bvfs=debug) for more detail."
)]
struct Cli {
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
}

fn init_logging(ansi: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
}

fn main() -> ExitCode {
    // Before anything is created: whatever bvfs writes is its user's alone.
    privacy::private_umask();
    let cli = Cli::parse();
    // A mount daemon logs to a file: no colour codes there.
    let daemon = matches!(&cli.command, Command::Mount(args) if !args.foreground());
    init_logging(!daemon && std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let result = match cli.command {
        Command::Mount(args) => mount_cmd::run(args),
        Command::Umount(args) => match mount_cmd::umount(args) {
            Ok(code) => return code,
            Err(e) => Err(e),
        },
        Command::Serve(args) => serve_cmd::run(args),
        Command::Admin(cmd) => admin_cmd::run(cmd),
        Command::Hash(args) => hash_cmd::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bvfs: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

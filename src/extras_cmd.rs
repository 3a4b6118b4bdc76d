//! `bvfs completions` and `bvfs man`: shell completions and man pages generated from the same clap
//! definitions as `--help`, so they never disagree with the program.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

#[derive(Args)]
#[command(after_help = "Examples:\n  \
bvfs completions bash > ~/.local/share/bash-completion/completions/bvfs\n  \
bvfs completions zsh > ~/.zfunc/_bvfs\n  \
bvfs completions fish > ~/.config/fish/completions/bvfs.fish")]
pub struct CompletionsArgs {
    /// The shell to complete for
    shell: clap_complete::Shell,
}

#[derive(Args)]
#[command(after_help = "Examples:\n  \
bvfs man --out ~/.local/share/man/man1 && man bvfs-status\n  \
sudo bvfs man --out /usr/local/share/man/man1")]
pub struct ManArgs {
    /// Where to write bvfs.1 and one page per subcommand (bvfs-status.1, …)
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

/// Prints the completion script of `command` for the shell.
pub fn completions(args: CompletionsArgs, mut command: clap::Command) -> anyhow::Result<()> {
    clap_complete::generate(args.shell, &mut command, "bvfs", &mut std::io::stdout());
    Ok(())
}

/// Writes the man pages of `command` and its subcommands.
pub fn man(args: ManArgs, command: clap::Command) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    clap_mangen::generate_to(command, &args.out)
        .with_context(|| format!("cannot write the man pages to {}", args.out.display()))?;
    println!("wrote the bvfs man pages to {}", args.out.display());
    Ok(())
}

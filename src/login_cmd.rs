//! `bvfs login`: checks a device token against a server and keeps it, private (`0600`), in the
//! config directory, so `bvfs mount DIR` needs no `--token` (a token on a command line shows in
//! `ps` to every user of the machine).

use std::io::{BufRead, IsTerminal, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use anyhow::{Context, bail};
use bvfs_engine::remote::RemoteConfig;
use clap::Args;

use crate::binding::{self, Contact};

#[derive(Args)]
#[command(after_help = "Examples:\n  \
bvfs login --server https://vault.example:7878            # asks for the token\n  \
bvfs admin add-user --json alice laptop | jq -r .token | bvfs login --server http://127.0.0.1:7878 --token-stdin\n  \
bvfs mount ~/BitVault                                      # then uses that server and token\n\n\
The token is checked with the server first and kept in $XDG_CONFIG_HOME/bvfs/login.json (mode 0600). \
Exit status: 0 logged in; 1 error (nothing saved); 2 bad arguments.")]
pub struct LoginArgs {
    /// The BitVault server
    #[arg(long, value_name = "URL")]
    server: String,
    /// Read the token from standard input (its first line) instead of asking for it
    #[arg(long)]
    token_stdin: bool,
    /// PEM file of a private CA that signed the server's certificate
    #[arg(long, value_name = "FILE")]
    ca_cert: Option<PathBuf>,
}

/// What `bvfs login` keeps.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Login {
    pub server: String,
    pub token: String,
    pub ca_cert: Option<PathBuf>,
}

const FILE: &str = "login.json";

impl Login {
    /// The saved login, if there is one.
    pub fn load() -> anyhow::Result<Option<Self>> {
        let path = crate::paths::config_home().join(FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .with_context(|| format!("{} is damaged; run `bvfs login` again", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Saves it, private, replacing the previous one at once (temp file, rename).
    fn save(&self) -> anyhow::Result<PathBuf> {
        let dir = crate::paths::config_home();
        crate::privacy::private_dir(&dir, "the config directory")?;
        let path = dir.join(FILE);
        let tmp = dir.join(format!(".{FILE}.tmp"));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        file.write_all(&serde_json::to_vec_pretty(self)?)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        Ok(path)
    }
}

/// Reads the token: stdin's first line, or a prompt without echo on a terminal.
fn read_token(from_stdin: bool) -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    if !from_stdin {
        if !stdin.is_terminal() {
            bail!("no terminal to ask for the token on; pipe it in with --token-stdin");
        }
        eprint!("Device token (from `bvfs admin add-user`): ");
        let _ = std::io::stderr().flush();
    }
    let echo = (!from_stdin).then(EchoOff::new).flatten();
    let mut line = String::new();
    stdin.lock().read_line(&mut line)?;
    drop(echo);
    if !from_stdin {
        eprintln!();
    }
    let token = line.trim().to_string();
    if token.is_empty() {
        bail!("no token given");
    }
    Ok(token)
}

/// Turns the terminal's echo off until dropped, so a typed token does not show.
struct EchoOff(libc::termios);

impl EchoOff {
    fn new() -> Option<Self> {
        // SAFETY: tcgetattr/tcsetattr on stdin with a valid termios buffer.
        unsafe {
            let mut term: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut term) != 0 {
                return None;
            }
            let saved = term;
            term.c_lflag &= !libc::ECHO;
            (libc::tcsetattr(0, libc::TCSANOW, &term) == 0).then_some(Self(saved))
        }
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in `new`.
        unsafe {
            libc::tcsetattr(0, libc::TCSANOW, &self.0);
        }
    }
}

pub fn run(args: LoginArgs) -> anyhow::Result<()> {
    let token = read_token(args.token_stdin)?;
    let mut config = RemoteConfig::new(&args.server, &token);
    config.ca_cert = args.ca_cert.clone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let found = match runtime.block_on(binding::contact(&config))? {
        Contact::Reached(found) => found,
        Contact::Unreachable(why) => bail!(
            "cannot reach {} ({why}); nothing was saved. Check the URL and that the server runs",
            args.server
        ),
    };
    let path = Login {
        server: args.server.clone(),
        token,
        ca_cert: args.ca_cert,
    }
    .save()?;
    println!(
        "logged in to {} as {} (device {}); saved in {}. `bvfs mount DIR` now uses it",
        args.server,
        found.tenant,
        found.device,
        path.display()
    );
    Ok(())
}

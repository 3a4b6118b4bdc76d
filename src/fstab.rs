//! `mount.bvfs`: the helper `mount -t bvfs` runs for an `/etc/fstab` line, so a bvfs folder can be
//! mounted like any other filesystem:
//!
//! ```text
//! https://vault.example:7878  /home/ana/BitVault  bvfs  noauto,user,_netdev,cache-size=20G,token_file=/home/ana/.config/bvfs/token  0 0
//! ```
//!
//! mount(8) calls `mount.bvfs SOURCE DIR [-sfnv] [-o OPTIONS]`; the `bvfs` binary answers to that
//! name (a symlink) and turns the call into `bvfs mount`. `SOURCE` is the server's URL, or `bvfs`
//! (or `embedded`) for the embedded server. A token never goes on a command line: `token_file=`
//! reads it from a file (keep it `0600`), else the one `bvfs login` saved is used.

use std::ffi::OsString;

use anyhow::{Context, bail};

/// Options mount(8) and systemd pass that mean nothing to bvfs (or that mount(8) handles itself).
const IGNORED: &[&str] = &[
    "defaults",
    "auto",
    "noauto",
    "user",
    "users",
    "nouser",
    "owner",
    "group",
    "_netdev",
    "nofail",
    "rw",
    "exec",
    "noexec",
    "suid",
    "nosuid",
    "dev",
    "nodev",
    "sync",
    "async",
    "atime",
    "noatime",
    "relatime",
    "strictatime",
    "nodiratime",
];

/// What a `mount.bvfs` call asks for.
#[derive(Debug, PartialEq, Eq)]
pub struct HelperCall {
    /// The `bvfs mount …` arguments (program name first).
    pub args: Vec<OsString>,
    /// The token read from `token_file=`, passed through the environment (not the command line).
    pub token: Option<String>,
    /// `-f`: only say what would be done.
    pub fake: bool,
}

/// Turns `mount.bvfs SOURCE DIR [-sfnv] [-o OPTS]` (without the program name) into `bvfs mount`.
pub fn helper_call(argv: &[String]) -> anyhow::Result<HelperCall> {
    let mut positional = Vec::new();
    let mut options = Vec::new();
    let (mut fake, mut sloppy) = (false, false);
    let mut rest = argv.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "-o" => options.extend(
                rest.next()
                    .context("-o needs options")?
                    .split(',')
                    .map(str::to_string),
            ),
            "-t" | "-N" => {
                rest.next();
            }
            flags if flags.starts_with('-') && flags.len() > 1 => {
                for flag in flags[1..].chars() {
                    match flag {
                        'f' => fake = true,
                        's' => sloppy = true,
                        'n' | 'v' => {}
                        other => bail!("mount.bvfs: unknown flag -{other}"),
                    }
                }
            }
            _ => positional.push(arg.clone()),
        }
    }
    let [source, dir] = positional.as_slice() else {
        bail!(
            "usage: mount.bvfs SOURCE DIR [-sfnv] [-o OPTIONS] (SOURCE: the server's URL, or bvfs)"
        );
    };
    let mut args: Vec<OsString> = vec!["bvfs".into(), "mount".into()];
    match source.as_str() {
        "bvfs" | "embedded" | "none" => {}
        url if url.contains("://") => args.extend(["--server".into(), url.into()]),
        other => {
            bail!("mount.bvfs: {other:?} is not a server URL (or `bvfs` for the embedded server)")
        }
    }
    let mut token = None;
    for option in options.iter().filter(|o| !o.is_empty()) {
        let (key, value) = match option.split_once('=') {
            Some((key, value)) => (key.replace('_', "-"), Some(value)),
            None => (option.replace('_', "-"), None),
        };
        let flag = |name: &str| -> anyhow::Result<[OsString; 2]> {
            let value =
                value.with_context(|| format!("mount.bvfs: {key} needs a value ({key}=…)"))?;
            Ok([format!("--{name}").into(), value.into()])
        };
        match key.as_str() {
            "cache-size" | "device" | "data" | "cache-dir" | "server-data" | "ca-cert" => {
                args.extend(flag(&key)?)
            }
            "guard" | "guard-process" => args.extend(flag("guard-process")?),
            "ro" => args.push("--read-only".into()),
            "allow-other" => args.push("--allow-other".into()),
            "no-hydration-guard" => args.push("--no-hydration-guard".into()),
            "token-file" => {
                let path = value.context("mount.bvfs: token_file needs a path")?;
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("mount.bvfs: cannot read the token file {path}"))?;
                token = Some(text.trim().to_string());
            }
            _ if IGNORED.contains(&option.as_str())
                || key.starts_with("x-")
                || key == "comment" => {}
            _ if sloppy => {}
            _ => bail!("mount.bvfs: unknown option {option:?} (see `man bvfs-mount`)"),
        }
    }
    args.push(dir.into());
    Ok(HelperCall { args, token, fake })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(line: &[&str]) -> anyhow::Result<HelperCall> {
        helper_call(&line.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn an_fstab_line_becomes_bvfs_mount() {
        let c = call(&[
            "https://vault.example:7878",
            "/home/ana/BitVault",
            "-o",
            "noauto,user,_netdev,cache_size=20G,device=laptop,ro,x-systemd.automount",
        ])
        .unwrap();
        let args: Vec<_> = c.args.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            args,
            [
                "bvfs",
                "mount",
                "--server",
                "https://vault.example:7878",
                "--cache-size",
                "20G",
                "--device",
                "laptop",
                "--read-only",
                "/home/ana/BitVault"
            ]
        );
        assert!(!c.fake && c.token.is_none());
        let embedded = call(&["bvfs", "/mnt/b", "-fv"]).unwrap();
        assert!(embedded.fake);
        assert_eq!(embedded.args.len(), 3);
        assert!(call(&["bvfs", "/mnt/b", "-o", "frobnicate"]).is_err());
        assert!(call(&["bvfs", "/mnt/b", "-s", "-o", "frobnicate"]).is_ok());
        assert!(call(&["/dev/sda1", "/mnt/b"]).is_err());
        assert!(call(&["bvfs"]).is_err());
        assert!(call(&["bvfs", "/mnt/b", "-o", "device"]).is_err());
    }
}

//! `bvfs mount` and `bvfs umount`: the BitVault namespace as a folder, with files on demand.
//!
//! `bvfs mount MOUNTPOINT` starts a daemon that mounts the namespace and keeps it in sync; it returns
//! once the mount is ready (or stays in the foreground with `--foreground`). Without `--server` it
//! runs an embedded server on a local data directory, so a fresh machine needs nothing else.
//! SIGINT/SIGTERM (or `bvfs umount`) unmount cleanly after a last sync round.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use bvfs_engine::remote::{GrpcRemote, RemoteConfig};
use bvfs_engine::runtime::{LoopTiming, SyncLoop};
use bvfs_engine::{Engine, EngineConfig};
use bvfs_platform::mount::{MountOptions, clean_stale_mount, is_fuse_mounted, mount, unmount};
use bvfs_vfs::{Vfs, VfsOptions};
use clap::Args;

use crate::binding::{self, Binding, Contact};
use crate::paths::{data_home, default_server_dir};

/// `bvfs umount`'s exit code when the folder was unmounted with changes not yet synced.
const EXIT_UNSYNCED: u8 = 2;
/// Where the daemon leaves what it could not sync before it exited (in the mountpoint's registry).
const UNSYNCED_REPORT: &str = "unsynced";

#[derive(Args)]
#[command(
    after_help = "Examples:\n  bvfs mount ~/BitVault                     # embedded server, data in ~/.local/share/bvfs\n  \
bvfs mount --server https://vault.example:7878 --token \"$TOKEN\" ~/BitVault\n  \
bvfs login --server https://vault.example:7878 && bvfs mount ~/BitVault   # no token on the command line\n  \
setfattr -n user.bvfs.pin -v 1 ~/BitVault/Projects   # keep a tree local (offline)\n  \
getfattr -n user.bvfs.state ~/BitVault/big.iso       # online-only, partial, local, pinned\n  \
bvfs umount ~/BitVault"
)]
pub struct MountArgs {
    /// Where to mount (an existing, empty directory)
    mountpoint: PathBuf,
    /// The BitVault server (http:// on loopback or trusted networks, https:// elsewhere). Without
    /// it: the server of `bvfs login`, else an embedded server on --server-data.
    #[arg(long, value_name = "URL", env = "BVFS_SERVER")]
    server: Option<String>,
    /// This device's token (from `bvfs admin add-user`) [default: the one `bvfs login` saved]
    #[arg(long, value_name = "TOKEN", env = "BVFS_TOKEN")]
    token: Option<String>,
    /// PEM file of a private CA that signed the server's certificate
    #[arg(long, value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    /// Data directory of the embedded server [default: $XDG_DATA_HOME/bvfs/server]
    #[arg(long, value_name = "DIR")]
    server_data: Option<PathBuf>,
    /// Where this mount keeps its state and materialized files [default: per mountpoint under
    /// $XDG_DATA_HOME/bvfs/mounts]
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Where cached chunks go [default: DATA/chunks]
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Cache size limit, e.g. 500M, 10G [default: 10G]
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    cache_size: Option<u64>,
    /// This device's name in conflicted-copy names [default: the token's device name; for the
    /// embedded server, the host name]
    #[arg(long, value_name = "NAME")]
    device: Option<String>,
    /// Mount read-only
    #[arg(long)]
    read_only: bool,
    /// Let other users enter the mount (off: only you may)
    #[arg(long)]
    allow_other: bool,
    /// Stay in the foreground instead of returning once mounted
    #[arg(long, short = 'f')]
    foreground: bool,
    /// Also keep this process from downloading content (command or executable name; repeat it).
    /// Indexers, thumbnailers, updatedb and virus scanners are kept out by default: their reads of
    /// bytes that are not on this device fail with EACCES, while stat and readdir work
    #[arg(long, value_name = "NAME")]
    guard_process: Vec<String>,
    /// Let every process download content (no hydration guard)
    #[arg(long)]
    no_hydration_guard: bool,
    /// The bulk-delete brake, from the configuration (`bvfs config`).
    #[arg(skip)]
    brake: Option<bvfs_engine::planner::DeleteBrake>,
}

#[derive(Args)]
#[command(
    after_help = "Exit status: 0 when unmounted with everything synced; 2 when unmounted with changes \
that have not reached the server yet (they sync on the next mount; --force makes that 0); 1 on errors."
)]
pub struct UmountArgs {
    /// The mountpoint
    mountpoint: PathBuf,
    /// Detach a busy mount now and let it finish when no longer used
    #[arg(long)]
    lazy: bool,
    /// Exit 0 even if changes are left unsynced (they still sync on the next mount)
    #[arg(long)]
    force: bool,
}

impl MountArgs {
    /// Whether the command stays in the foreground (else it forks a daemon).
    pub fn foreground(&self) -> bool {
        self.foreground
    }
}

/// Parses `500M`, `10G`, `1048576`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size like 500M or 10G"))?;
    let multiplier: u64 = match unit
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return Err(format!("unknown size unit in {text:?}; use K, M, G or T")),
    };
    n.checked_mul(multiplier)
        .ok_or_else(|| format!("{text:?} is too large"))
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "device".into())
}

/// The state directory of a mountpoint: stable for the same path.
fn state_dir_for(mountpoint: &Path) -> PathBuf {
    data_home()
        .join("mounts")
        .join(crate::paths::mount_key(mountpoint))
}

pub fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    let path = if path.is_absolute() {
        path.to_owned()
    } else {
        std::env::current_dir()?.join(path)
    };
    // The mountpoint may be a stale mount: canonicalize its parent only.
    let name = path
        .file_name()
        .context("the mountpoint needs a name")?
        .to_owned();
    let parent = path
        .parent()
        .context("the mountpoint needs a parent directory")?;
    Ok(std::fs::canonicalize(parent)
        .with_context(|| format!("{} does not exist", parent.display()))?
        .join(name))
}

/// Fills in the server and token `bvfs login` saved, when the command line gives no token: for
/// its server, or for any mount without `--server`.
fn use_login(args: &mut MountArgs) -> anyhow::Result<()> {
    if args.token.is_some() {
        return Ok(());
    }
    let login = crate::login_cmd::Login::load()?
        .filter(|l| args.server.as_ref().is_none_or(|url| *url == l.server));
    let Some(login) = login else {
        return match &args.server {
            None => Ok(()),
            Some(url) => bail!(
                "no token for {url}: run `bvfs login --server {url}` once (or pass --token, which \
                 shows in `ps`)"
            ),
        };
    };
    args.server = Some(login.server);
    args.token = Some(login.token);
    if args.ca_cert.is_none() {
        args.ca_cert = login.ca_cert;
    }
    Ok(())
}

/// Fills in what the flags leave out from the configuration (environment, config file, defaults;
/// see [`crate::config`]).
fn apply_config(args: &mut MountArgs) -> anyhow::Result<()> {
    let config = crate::config::Config::load()?;
    if args.server.is_none() && args.token.is_none() {
        args.server = config.server.value.clone();
    }
    if args.token.is_none()
        && let Some(file) = &config.token_file.value
    {
        let token = std::fs::read_to_string(file).with_context(|| {
            format!(
                "cannot read the token file {} ({})",
                file.display(),
                config.token_file.source
            )
        })?;
        args.token = Some(token.trim().to_string());
    }
    if args.cache_dir.is_none() {
        args.cache_dir = config.cache_dir.value.clone();
    }
    if args.cache_size.is_none() {
        args.cache_size = Some(config.cache_size.value);
    }
    args.brake = Some(config.brake());
    if !config.hydration_guard.value {
        args.no_hydration_guard = true;
    }
    args.guard_process
        .extend(config.guard_processes.value.iter().cloned());
    Ok(())
}

pub fn run(mut args: MountArgs) -> anyhow::Result<()> {
    apply_config(&mut args)?;
    use_login(&mut args)?;
    // Windows with the `projfs` feature: a ProjFS virtualization root instead of a FUSE mount.
    #[cfg(all(windows, feature = "projfs"))]
    return serve_projection(&args);
    let mountpoint = absolute(&args.mountpoint)?;
    if clean_stale_mount(&mountpoint).context("cannot clean up a stale mount")? {
        eprintln!("bvfs: cleaned up a stale mount at {}", mountpoint.display());
    }
    if is_fuse_mounted(&mountpoint) {
        bail!(
            "{} is already mounted; run `bvfs umount {}` first",
            mountpoint.display(),
            mountpoint.display()
        );
    }
    std::fs::create_dir_all(&mountpoint)
        .with_context(|| format!("cannot create {}", mountpoint.display()))?;
    if std::fs::read_dir(&mountpoint)?.next().is_some() {
        bail!(
            "{} is not empty; mount on an empty directory",
            mountpoint.display()
        );
    }
    let state_dir = args
        .data
        .clone()
        .unwrap_or_else(|| state_dir_for(&mountpoint));
    crate::privacy::private_dir(&state_dir, "the mount's state directory")?;
    if let Some(cache) = &args.cache_dir {
        crate::privacy::private_dir(cache, "the cache directory")?;
    }
    if args.foreground {
        return serve_mount(&args, &mountpoint, &state_dir, None);
    }
    // Daemonize before any thread exists: the child mounts and reports readiness through a pipe.
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        bail!("cannot create a pipe: {}", std::io::Error::last_os_error());
    }
    // SAFETY: the pipe fds were just created and are owned here.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: no other threads exist yet (clap and logging start none), so fork is sound.
    match unsafe { libc::fork() } {
        -1 => bail!(
            "cannot fork the mount daemon: {}",
            std::io::Error::last_os_error()
        ),
        0 => {
            drop(read_end);
            // SAFETY: setsid has no preconditions; the child leaves the terminal's session.
            unsafe { libc::setsid() };
            let log = state_dir.join("daemon.log");
            crate::daemon_log::rotate_daemon_log(&log);
            redirect_output(&log);
            let status = serve_mount(&args, &mountpoint, &state_dir, Some(write_end));
            if let Err(e) = &status {
                tracing::error!("the mount daemon stopped: {e:#}");
            }
            std::process::exit(if status.is_ok() { 0 } else { 1 });
        }
        _child => {
            drop(write_end);
            let mut message = String::new();
            std::fs::File::from(read_end).read_to_string(&mut message)?;
            match message.strip_prefix("ready ") {
                Some(pid) => {
                    println!(
                        "bvfs: mounted at {} (daemon pid {})",
                        mountpoint.display(),
                        pid.trim()
                    );
                    Ok(())
                }
                None if message.is_empty() => {
                    bail!("the mount daemon exited before the mount was ready")
                }
                None => bail!("{}", message.trim()),
            }
        }
    }
}

/// `bvfs mount` on Windows (the `projfs` feature): the namespace projected by ProjFS at the
/// mountpoint, in the foreground until Ctrl-C, against `--server`. Not compiled or tested on the
/// project's machines (no Windows target there), and the engine and vfs still use Unix file APIs:
/// see `docs/windows-projfs.md`.
#[cfg(all(windows, feature = "projfs"))]
fn serve_projection(args: &MountArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("bvfs")
        .build()
        .context("cannot start the async runtime")?;
    let _runtime_context = runtime.enter();
    let root = std::path::absolute(&args.mountpoint)?;
    let state_dir = args.data.clone().unwrap_or_else(|| state_dir_for(&root));
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("cannot create {}", state_dir.display()))?;
    let (Some(url), Some(token)) = (&args.server, &args.token) else {
        bail!(
            "on Windows, pass --server and --token: the embedded server is not offered there yet"
        );
    };
    let mut remote_config = RemoteConfig::new(url, token);
    remote_config.ca_cert = args.ca_cert.clone();
    let binding = check_binding(&runtime, &remote_config, &state_dir)?;
    let mut config = EngineConfig::new(&state_dir, args.device.clone().unwrap_or(binding.device));
    config.cache_dir = args.cache_dir.clone();
    if let Some(size) = args.cache_size {
        config.cache_limits.max_bytes = size;
    }
    // Names Windows cannot show stay remote-only (and are reported) instead of reaching ProjFS.
    config.names = bvfs_engine::model::NamePolicy::Windows;
    let remote = Arc::new(GrpcRemote::new(&remote_config)?);
    let engine = Engine::open(config, remote).context("cannot open the engine state")?;
    let sync = runtime.block_on(async { SyncLoop::start(engine.clone(), LoopTiming::default()) });
    let options = VfsOptions {
        read_only: args.read_only,
        uid: 0,
        gid: 0,
    };
    let vfs = Arc::new(Vfs::new(engine.clone(), runtime.handle().clone(), options));
    let projection = bvfs_vfs::projection::Projection::new(vfs, &root)
        .map_err(|e| anyhow::anyhow!("cannot project the namespace (errno {})", e.0))?;
    let projected = bvfs_platform::windows::mount(Arc::new(projection)).with_context(|| {
        format!(
            "cannot start ProjFS at {} (is the Client-ProjFS feature enabled?)",
            root.display()
        )
    })?;
    println!("bvfs: projecting at {} (Ctrl-C to stop)", root.display());
    runtime.block_on(tokio::signal::ctrl_c())?;
    drop(projected);
    runtime.block_on(async {
        sync.stop().await;
        if tokio::time::timeout(LAST_SYNC, engine.sync_until_idle(20))
            .await
            .is_err()
        {
            tracing::warn!(
                "still syncing after {} s; the rest syncs next time",
                LAST_SYNC.as_secs()
            );
        }
    });
    Ok(())
}

/// Sends the daemon's stdout to /dev/null and its stderr (the logs) to `log`.
fn redirect_output(log: &Path) {
    use std::os::fd::AsRawFd;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log);
    let null = std::fs::File::options().write(true).open("/dev/null");
    // SAFETY: dup2 onto the standard descriptors with descriptors we own.
    unsafe {
        if let Ok(null) = &null {
            libc::dup2(null.as_raw_fd(), 1);
        }
        if let Ok(log) = &log {
            libc::dup2(log.as_raw_fd(), 2);
        }
    }
}

/// Reports to the waiting parent (if any).
fn report(pipe: &mut Option<OwnedFd>, message: &str) {
    if let Some(fd) = pipe.take() {
        let _ = std::fs::File::from(fd).write_all(message.as_bytes());
    }
}

fn serve_mount(
    args: &MountArgs,
    mountpoint: &Path,
    state_dir: &Path,
    mut ready: Option<OwnedFd>,
) -> anyhow::Result<()> {
    let result = serve_mount_inner(args, mountpoint, state_dir, &mut ready);
    if let Err(e) = &result {
        report(&mut ready, &format!("{e:#}\n"));
    }
    result
}

fn serve_mount_inner(
    args: &MountArgs,
    mountpoint: &Path,
    state_dir: &Path,
    ready: &mut Option<OwnedFd>,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("bvfs")
        .build()
        .context("cannot start the async runtime")?;
    let handle = runtime.handle().clone();
    // Clients and the engine spawn onto the runtime from this thread too.
    let _runtime_context = runtime.enter();

    // The server: the one given, or an embedded one on a local data directory.
    let mut embedded = None;
    let (url, token) = match (&args.server, &args.token) {
        (Some(url), Some(token)) => (url.clone(), token.clone()),
        _ => {
            let data_dir = args.server_data.clone().unwrap_or_else(default_server_dir);
            let device = args.device.clone().unwrap_or_else(host_name);
            let (server, url, token) =
                runtime.block_on(start_embedded_server(&data_dir, state_dir, &device))?;
            embedded = Some(server);
            (url, token)
        }
    };
    let mut remote_config = RemoteConfig::new(&url, &token);
    remote_config.ca_cert = args.ca_cert.clone();
    let binding = check_binding(&runtime, &remote_config, state_dir)?;
    let device = args.device.clone().unwrap_or(binding.device);
    let remote = Arc::new(GrpcRemote::new(&remote_config)?);
    let mut config = EngineConfig::new(state_dir, &device);
    if let Some(brake) = args.brake {
        config.brake = brake;
    }
    config.cache_dir = args.cache_dir.clone();
    if let Some(size) = args.cache_size {
        config.cache_limits.max_bytes = size;
    }
    let engine = Engine::open(config, remote).context("cannot open the engine state")?;
    let sync = runtime.block_on(async { SyncLoop::start(engine.clone(), LoopTiming::default()) });
    let vfs = Arc::new(Vfs::new(
        engine.clone(),
        handle.clone(),
        VfsOptions {
            read_only: args.read_only,
            // SAFETY: getuid/getgid have no preconditions.
            uid: unsafe { libc::getuid() },
            gid: unsafe { libc::getgid() },
        },
    ));
    if !args.no_hydration_guard {
        let names = bvfs_vfs::guard::DEFAULT_GUARDED
            .iter()
            .map(|n| n.to_string())
            .chain(args.guard_process.iter().cloned());
        vfs.set_hydration_guard(bvfs_vfs::guard::HydrationGuard::new(names));
    }
    let options = MountOptions {
        allow_other: args.allow_other,
        read_only: args.read_only,
        ..MountOptions::default()
    };
    let mounted = mount(vfs, handle.clone(), mountpoint, &options).with_context(|| {
        format!(
            "cannot mount at {} (is /dev/fuse available, and are you root or is fuse3 installed?)",
            mountpoint.display()
        )
    })?;
    // `bvfs umount` finds the daemon by mountpoint, whatever --data says.
    let registry = state_dir_for(mountpoint);
    crate::privacy::private_dir(&registry, "the mount's registry directory")?;
    let _ = std::fs::remove_file(registry.join(UNSYNCED_REPORT));
    std::fs::write(registry.join("daemon.pid"), std::process::id().to_string())?;
    // The CLI's way in (`bvfs status`, `pin`, …). A mount without it still serves files.
    let control = crate::control::server::ControlServer::start(crate::control::server::MountInfo {
        engine: engine.clone(),
        mountpoint: mountpoint.to_owned(),
        server: if embedded.is_some() {
            format!("embedded ({url})")
        } else {
            url.clone()
        },
    })
    .map_err(|e| {
        tracing::warn!(
            "no control channel, so `bvfs status` and co. cannot reach this mount: {e:#}"
        )
    })
    .ok();
    tracing::info!(mountpoint = %mountpoint.display(), %url, "mounted");
    report(ready, &format!("ready {}\n", std::process::id()));
    if args.foreground {
        println!(
            "bvfs: mounted at {} (Ctrl-C to unmount)",
            mountpoint.display()
        );
    }

    // Run until a signal, or until someone unmounts. A daemon's log is rotated as it grows.
    let log = (!args.foreground).then(|| state_dir.join("daemon.log"));
    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut rotate = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    if mounted.is_finished() {
                        break;
                    }
                }
                _ = rotate.tick() => {
                    if let Some(log) = &log {
                        crate::daemon_log::rotate_daemon_log(log);
                    }
                }
            }
        }
        anyhow::Ok(())
    })?;
    if let Some(control) = control {
        control.stop();
    }
    tracing::info!("unmounting");
    if let Err(e) = mounted.unmount() {
        tracing::warn!("unmount: {e}");
    }
    // A last chance to upload what was written. An unreachable server ends it at once (the round
    // fails); a slow one is cut off after LAST_SYNC, which `bvfs umount` waits for.
    runtime.block_on(async {
        sync.stop().await;
        match tokio::time::timeout(LAST_SYNC, engine.sync_until_idle(20)).await {
            Ok(Ok(_)) => tracing::info!("everything is synced"),
            Ok(Err(e)) => {
                tracing::warn!("not everything is synced yet ({e}); it will be on the next mount")
            }
            Err(_) => tracing::warn!(
                "still syncing after {} s; the rest syncs on the next mount",
                LAST_SYNC.as_secs()
            ),
        }
    });
    // Tell `bvfs umount` what is left.
    match engine.unsynced() {
        Ok(left) if left.is_empty() => {}
        Ok(left) => {
            tracing::warn!("left unsynced: {left}");
            let _ = std::fs::write(registry.join(UNSYNCED_REPORT), left.to_string());
        }
        Err(e) => {
            let _ = std::fs::write(
                registry.join(UNSYNCED_REPORT),
                format!("unknown (cannot read the state: {e})"),
            );
        }
    }
    if let Some((stop, task)) = embedded {
        let _ = stop.send(());
        let _ = runtime.block_on(task);
    }
    let _ = std::fs::remove_file(registry.join("daemon.pid"));
    // The registry of this mountpoint goes too, unless it holds more (it is also the default state
    // directory of a mount without `--data`, and keeps the unsynced report for `bvfs umount`;
    // `remove_dir` only removes an empty directory).
    let _ = std::fs::remove_dir(&registry);
    Ok(())
}

/// Checks that the server serves the namespace this state belongs to, and records it on the first
/// contact. A first mount needs the server (a wrong token or address must fail now, not leave an
/// empty folder that says `synced`); a later one works offline.
fn check_binding(
    runtime: &tokio::runtime::Runtime,
    remote: &RemoteConfig,
    state_dir: &Path,
) -> anyhow::Result<Binding> {
    let known = Binding::load(state_dir)?;
    match (runtime.block_on(binding::contact(remote))?, known) {
        (Contact::Reached(found), Some(known)) if !known.same_namespace(&found) => bail!(
            "this folder's state ({}) belongs to another namespace: tenant {:?} on {}, while {} serves tenant {:?} (namespace {}). \
Mounting it here would mix the two and could delete local files. Mount this server with its own state \
(`--data EMPTY_DIR`, or another mountpoint); the other namespace's state stays as it is.",
            state_dir.display(),
            known.tenant,
            known.server,
            found.server,
            found.tenant,
            &found.namespace[..8.min(found.namespace.len())]
        ),
        (Contact::Reached(found), known) => {
            if known.as_ref() != Some(&found) {
                found
                    .save(state_dir)
                    .context("cannot record which namespace this mount holds")?;
            }
            Ok(found)
        }
        (Contact::Unreachable(why), Some(known)) => {
            tracing::warn!("the server is unreachable ({why}); working offline until it answers");
            Ok(known)
        }
        (Contact::Unreachable(why), None) => bail!(
            "cannot reach the server ({why}). The first mount needs it: check --server and that the server runs \
(or mount without --server to use the embedded one)"
        ),
    }
}

type EmbeddedServer = (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
);

/// Starts the embedded server on loopback and returns it with its URL and this device's token (made
/// once and kept in the mount's state directory).
async fn start_embedded_server(
    data_dir: &Path,
    state_dir: &Path,
    device: &str,
) -> anyhow::Result<(EmbeddedServer, String, String)> {
    crate::privacy::private_dir(data_dir, "the embedded server's data directory")?;
    let data = bvfs_server::DataDir::open_exclusive(data_dir)?;
    let token_file = state_dir.join("embedded-token");
    let token = match std::fs::read_to_string(&token_file) {
        Ok(token) => token.trim().to_string(),
        Err(_) => {
            let created = bvfs_server::auth::add_device(data.meta.as_ref(), "local", device)?;
            std::fs::write(&token_file, &created.token)?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600))?;
            created.token
        }
    };
    let options = bvfs_server::ServeOptions {
        listen: "127.0.0.1:0".parse().expect("a valid address"),
        tls: None,
        allow_plaintext: false,
    };
    let server = bvfs_server::BoundServer::bind(&data, &options).await?;
    let url = server.url();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _data = data;
        server
            .run(async {
                let _ = stopped.await;
            })
            .await
    });
    Ok(((stop, task), url, token))
}

/// How long a daemon's last sync may take after an unmount.
const LAST_SYNC: Duration = Duration::from_secs(60);

pub fn umount(args: UmountArgs) -> anyhow::Result<std::process::ExitCode> {
    let mountpoint = absolute(&args.mountpoint)?;
    if !is_fuse_mounted(&mountpoint) {
        bail!("{} is not mounted", mountpoint.display());
    }
    let registry = state_dir_for(&mountpoint);
    let pid_file = registry.join("daemon.pid");
    let pid: Option<i32> = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|p| p.trim().parse().ok());
    unmount(&mountpoint, args.lazy).map_err(|e| {
        if e.raw_os_error() == Some(libc::EBUSY) {
            anyhow::anyhow!("{} is busy (a process has a file open or its working directory there); close it, or use --lazy", mountpoint.display())
        } else {
            anyhow::anyhow!("cannot unmount {}: {e}", mountpoint.display())
        }
    })?;
    // Wait for the daemon to finish its last sync and exit (it gives up after LAST_SYNC).
    if let Some(pid) = pid {
        let started = std::time::Instant::now();
        let mut told = false;
        // SAFETY: kill with signal 0 only checks that the process exists.
        while unsafe { libc::kill(pid, 0) } == 0 {
            if started.elapsed() > LAST_SYNC + Duration::from_secs(30) {
                println!(
                    "bvfs: unmounted {}, but its daemon (pid {pid}) is still uploading; the rest \
                     syncs on the next mount if it stops first",
                    mountpoint.display()
                );
                return Ok(if args.force {
                    std::process::ExitCode::SUCCESS
                } else {
                    std::process::ExitCode::from(EXIT_UNSYNCED)
                });
            }
            if !told && started.elapsed() > Duration::from_secs(2) {
                eprintln!("bvfs: waiting for the last changes to reach the server…");
                told = true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let report = std::fs::read_to_string(registry.join(UNSYNCED_REPORT)).ok();
    let _ = std::fs::remove_file(registry.join(UNSYNCED_REPORT));
    let _ = std::fs::remove_dir(&registry);
    match report {
        None => {
            println!(
                "bvfs: unmounted {} (everything is synced)",
                mountpoint.display()
            );
            Ok(std::process::ExitCode::SUCCESS)
        }
        Some(left) => {
            println!(
                "bvfs: unmounted {}, but not everything reached the server: {}. It syncs on the next mount.",
                mountpoint.display(),
                left.trim()
            );
            Ok(if args.force {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::from(EXIT_UNSYNCED)
            })
        }
    }
}

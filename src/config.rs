//! The configuration of `bvfs mount` and where each value comes from: a flag, an environment
//! variable, the TOML file `$XDG_CONFIG_HOME/bvfs/config.toml` (`~/.config/bvfs/config.toml`), or
//! the default, in that order. `bvfs config` shows the result.
//!
//! ```toml
//! server = "https://vault.example:7878"
//! token_file = "/home/ana/.config/bvfs/token"   # keep it 0600
//! cache_dir = "/var/cache/bvfs"
//! cache_size = "20G"
//! brake_max_deletes = 500        # a plan deleting more waits for `bvfs deletes --confirm`
//! brake_max_fraction = 0.5       # … or more than this fraction of the namespace
//! hydration_guard = true         # keep indexers and thumbnailers from downloading everything
//! guard_processes = ["my-indexer"]
//! ```

use std::path::PathBuf;

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// What the file may say (anything else is refused, naming the key).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    server: Option<String>,
    token_file: Option<PathBuf>,
    cache_dir: Option<PathBuf>,
    cache_size: Option<String>,
    brake_max_deletes: Option<u64>,
    brake_max_fraction: Option<f64>,
    hydration_guard: Option<bool>,
    guard_processes: Option<Vec<String>>,
}

/// One value and where it came from (`default`, `env NAME`, or the file's path).
#[derive(Debug, Clone, Serialize)]
pub struct Setting<T> {
    pub value: T,
    pub source: String,
}

/// The effective configuration (flags aside: `bvfs mount` applies its own over it).
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// The file read, if it exists.
    pub file: Option<PathBuf>,
    pub server: Setting<Option<String>>,
    pub token_file: Setting<Option<PathBuf>>,
    pub cache_dir: Setting<Option<PathBuf>>,
    pub cache_size: Setting<u64>,
    pub brake_max_deletes: Setting<u64>,
    pub brake_max_fraction: Setting<f64>,
    pub hydration_guard: Setting<bool>,
    pub guard_processes: Setting<Vec<String>>,
}

/// The path of the config file.
pub fn path() -> PathBuf {
    crate::paths::config_home().join("config.toml")
}

/// Picks the environment's value, else the file's, else the default, saying which.
fn pick<T>(
    env: &str,
    parse: impl Fn(&str) -> Result<T, String>,
    file: Option<T>,
    file_source: &str,
    default: T,
) -> anyhow::Result<Setting<T>> {
    if let Some(text) = std::env::var_os(env).filter(|v| !v.is_empty()) {
        let text = text.to_string_lossy();
        let value = parse(&text).map_err(|e| anyhow::anyhow!("{env}={text:?}: {e}"))?;
        return Ok(Setting {
            value,
            source: format!("env {env}"),
        });
    }
    Ok(match file {
        Some(value) => Setting {
            value,
            source: file_source.to_string(),
        },
        None => Setting {
            value: default,
            source: "default".into(),
        },
    })
}

impl Config {
    /// Reads the file (if any) and the environment.
    pub fn load() -> anyhow::Result<Self> {
        let path = path();
        let (file, found) = match std::fs::read_to_string(&path) {
            Ok(text) => (
                toml::from_str::<FileConfig>(&text).with_context(|| {
                    format!("{} is not a valid bvfs configuration", path.display())
                })?,
                true,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (FileConfig::default(), false),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let src = path.display().to_string();
        let size = |text: &str| crate::mount_cmd::parse_size(text);
        let file_size = file
            .cache_size
            .as_deref()
            .map(size)
            .transpose()
            .map_err(|e| anyhow::anyhow!("{src}: cache_size: {e}"))?;
        let brake = bvfs_engine::planner::DeleteBrake::default();
        let text = |t: &str| Ok::<_, String>(t.to_string());
        Ok(Self {
            file: found.then(|| path.clone()),
            server: pick(
                "BVFS_SERVER",
                |t| Ok(Some(t.to_string())),
                file.server.map(Some),
                &src,
                None,
            )?,
            token_file: pick(
                "BVFS_TOKEN_FILE",
                |t| Ok(Some(PathBuf::from(t))),
                file.token_file.map(Some),
                &src,
                None,
            )?,
            cache_dir: pick(
                "BVFS_CACHE_DIR",
                |t| Ok(Some(PathBuf::from(t))),
                file.cache_dir.map(Some),
                &src,
                None,
            )?,
            cache_size: pick(
                "BVFS_CACHE_SIZE",
                size,
                file_size,
                &src,
                bvfs_engine::cache::CacheLimits::default().max_bytes,
            )?,
            brake_max_deletes: pick(
                "BVFS_BRAKE_MAX_DELETES",
                |t| t.parse().map_err(|e| format!("{e}")),
                file.brake_max_deletes,
                &src,
                brake.max_deletes,
            )?,
            brake_max_fraction: pick(
                "BVFS_BRAKE_MAX_FRACTION",
                |t| t.parse().map_err(|e| format!("{e}")),
                file.brake_max_fraction,
                &src,
                brake.max_fraction,
            )?,
            hydration_guard: pick(
                "BVFS_HYDRATION_GUARD",
                |t| match t {
                    "1" | "true" | "yes" | "on" => Ok(true),
                    "0" | "false" | "no" | "off" => Ok(false),
                    _ => Err("say true or false".into()),
                },
                file.hydration_guard,
                &src,
                true,
            )?,
            guard_processes: pick(
                "BVFS_GUARD_PROCESSES",
                |t| {
                    Ok(t.split(',')
                        .filter_map(|n| text(n.trim()).ok())
                        .filter(|n| !n.is_empty())
                        .collect())
                },
                file.guard_processes,
                &src,
                Vec::new(),
            )?,
        })
    }

    /// The bulk-delete brake it sets.
    pub fn brake(&self) -> bvfs_engine::planner::DeleteBrake {
        bvfs_engine::planner::DeleteBrake {
            max_deletes: self.brake_max_deletes.value,
            max_fraction: self.brake_max_fraction.value,
            ..bvfs_engine::planner::DeleteBrake::default()
        }
    }
}

#[derive(clap::Args)]
#[command(after_help = "Examples:\n  \
bvfs config                # each setting, its value and where it came from\n  \
bvfs config --json | jq .cache_size\n\n\
Order: a flag of `bvfs mount`, then the environment (BVFS_SERVER, BVFS_TOKEN_FILE, BVFS_CACHE_DIR, \
BVFS_CACHE_SIZE, BVFS_BRAKE_MAX_DELETES, BVFS_BRAKE_MAX_FRACTION, BVFS_HYDRATION_GUARD, \
BVFS_GUARD_PROCESSES), then $XDG_CONFIG_HOME/bvfs/config.toml, then the default.")]
pub struct ConfigArgs {
    /// Print JSON: {"file": …, "server": {"value": …, "source": …}, …}
    #[arg(long)]
    json: bool,
}

/// `bvfs config`.
pub fn run(args: ConfigArgs) -> anyhow::Result<()> {
    let config = Config::load()?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&config)?);
        return Ok(());
    }
    match &config.file {
        Some(file) => println!("# {}", file.display()),
        None => println!("# no {} (defaults apply)", path().display()),
    }
    let show =
        |key: &str, value: String, source: &str| println!("{key:<20} = {value:<40} # {source}");
    let opt = |v: &Option<String>, none: &str| v.clone().unwrap_or_else(|| none.to_string());
    show(
        "server",
        opt(
            &config.server.value,
            "(bvfs login's, else the embedded server)",
        ),
        &config.server.source,
    );
    show(
        "token_file",
        opt(
            &config
                .token_file
                .value
                .as_ref()
                .map(|p| p.display().to_string()),
            "(bvfs login's)",
        ),
        &config.token_file.source,
    );
    show(
        "cache_dir",
        opt(
            &config
                .cache_dir
                .value
                .as_ref()
                .map(|p| p.display().to_string()),
            "(the mount's state directory)/chunks",
        ),
        &config.cache_dir.source,
    );
    show(
        "cache_size",
        indicatif::HumanBytes(config.cache_size.value).to_string(),
        &config.cache_size.source,
    );
    show(
        "brake_max_deletes",
        config.brake_max_deletes.value.to_string(),
        &config.brake_max_deletes.source,
    );
    show(
        "brake_max_fraction",
        config.brake_max_fraction.value.to_string(),
        &config.brake_max_fraction.source,
    );
    show(
        "hydration_guard",
        config.hydration_guard.value.to_string(),
        &config.hydration_guard.source,
    );
    show(
        "guard_processes",
        format!("{:?}", config.guard_processes.value),
        &config.guard_processes.source,
    );
    Ok(())
}

//! Configuration, layered: built-in defaults → TOML file → `RNR_*` environment → flags.

use anyhow::Context;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use rnr_driver::Limits;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Everything `rnr` can be configured with. `rnr config example` prints it commented.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP API listens on.
    pub listen: String,
    /// Where the database, images and other state live.
    pub data_dir: PathBuf,
    /// Where machines run: `docker`.
    pub driver: String,
    /// Most machines creating or running at once.
    pub capacity: u64,
    pub default_image: String,
    pub default_ttl_seconds: u64,
    pub max_ttl_seconds: u64,
    pub reap_interval_seconds: u64,
    pub allow_outbound: bool,
    pub default_limits: Limits,
    pub max_limits: Limits,
    pub docker: DockerSection,
    /// Host procfs and cgroup roots (tests and nested setups point these elsewhere).
    pub proc_root: PathBuf,
    pub cgroup_root: PathBuf,
    /// `text` or `json`.
    pub log_format: String,
    /// Static in-machine agent binary (`scripts/build-agent.sh`), mounted read-only into
    /// every machine; default: `rnr-agent` beside the `rnr` binary, if there is one.
    pub agent_path: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DockerSection {
    pub socket: PathBuf,
    /// Bridge network for machines; `<network>-out` holds those with outbound access.
    pub network: String,
}

impl Default for DockerSection {
    fn default() -> Self {
        Self {
            socket: "/var/run/docker.sock".into(),
            network: "rnr0".into(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            data_dir: "/var/lib/rnr".into(),
            driver: "docker".into(),
            capacity: 100,
            default_image: "debian".into(),
            default_ttl_seconds: 3600,
            max_ttl_seconds: 86_400,
            reap_interval_seconds: 5,
            allow_outbound: false,
            default_limits: Limits::default(),
            max_limits: Limits {
                memory_mib: 4096,
                cpu_millis: 4000,
                pids: 4096,
            },
            docker: DockerSection::default(),
            proc_root: "/proc".into(),
            cgroup_root: "/sys/fs/cgroup".into(),
            log_format: "text".into(),
            agent_path: None,
        }
    }
}

/// Flags that override every other layer; `None` leaves the layer below in force.
#[derive(Debug, Default, Serialize)]
pub struct FlagOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u64>,
}

/// Default file read when no `--config`/`RNR_CONFIG` names one, if it exists.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/rnr/config.toml";

/// Environment variables with the `RNR_` prefix that are not configuration keys.
const NOT_CONFIG_ENV: &[&str] = &["config", "url", "api_key", "log"];

pub fn load(file: Option<&Path>, flags: &FlagOverrides) -> anyhow::Result<Config> {
    let mut fig = Figment::from(Serialized::defaults(Config::default()));
    match file {
        Some(path) => {
            anyhow::ensure!(
                path.exists(),
                "config file {} does not exist",
                path.display()
            );
            fig = fig.merge(Toml::file(path));
        }
        None if Path::new(DEFAULT_CONFIG_FILE).exists() => {
            fig = fig.merge(Toml::file(DEFAULT_CONFIG_FILE));
        }
        None => {}
    }
    let config: Config = fig
        .merge(Env::prefixed("RNR_").split("__").ignore(NOT_CONFIG_ENV))
        .merge(Serialized::globals(flags))
        .extract()
        .context("invalid configuration")?;
    anyhow::ensure!(
        matches!(config.driver.as_str(), "docker"),
        "invalid configuration: driver {:?} is not one of: docker",
        config.driver
    );
    anyhow::ensure!(
        matches!(config.log_format.as_str(), "text" | "json"),
        "invalid configuration: log_format {:?} is not one of: text, json",
        config.log_format
    );
    Ok(config)
}

impl Config {
    /// The agent binary to mount into machines, if one is configured or installed.
    pub fn agent(&self) -> Option<PathBuf> {
        if let Some(p) = &self.agent_path {
            return Some(p.clone());
        }
        let beside = std::env::current_exe().ok()?.parent()?.join("rnr-agent");
        beside.is_file().then_some(beside)
    }
}

/// A commented example configuration holding the defaults.
pub const EXAMPLE: &str = r#"# rootnroll configuration (TOML). Every key is optional; shown are the defaults.
# Layers, last wins: defaults -> this file (--config FILE, RNR_CONFIG, or /etc/rnr/config.toml)
# -> environment (RNR_KEY, nested keys with "__": RNR_DOCKER__SOCKET) -> command-line flags.

# Address the HTTP API and pages listen on (flag --listen, env RNR_LISTEN).
listen = "127.0.0.1:8080"
# Database, images and other state (flag --data-dir, env RNR_DATA_DIR).
data_dir = "/var/lib/rnr"
# Where machines run: "docker" (flag --driver, env RNR_DRIVER).
driver = "docker"
# Most machines creating or running at once; more are refused at once (HTTP 503).
capacity = 100
# Image used when a request names none (see `rnr image list`).
default_image = "debian"
# Machine lifetime when a request gives none, and the most a request may ask for.
default_ttl_seconds = 3600
max_ttl_seconds = 86400
# How often expired machines are looked for and deleted.
reap_interval_seconds = 5
# Whether a request may give a machine outbound network access.
allow_outbound = false
# "text" or "json" logs (level: RNR_LOG, e.g. RNR_LOG=debug).
log_format = "text"
# Static in-machine agent (scripts/build-agent.sh), mounted read-only into every machine.
# Default: rnr-agent beside the rnr binary, if there is one.
# agent_path = "/usr/local/lib/rnr/rnr-agent"
# Host procfs and cgroup roots.
proc_root = "/proc"
cgroup_root = "/sys/fs/cgroup"

# Limits a machine gets when its request names none.
[default_limits]
memory_mib = 256   # RAM in MiB; a process over it is OOM-killed, the machine lives on
cpu_millis = 1000  # thousandths of a core
pids = 256         # processes + threads

# The most a request may ask for.
[max_limits]
memory_mib = 4096
cpu_millis = 4000
pids = 4096

[docker]
socket = "/var/run/docker.sock"
# Bridge network for machines (inter-machine traffic off); "<network>-out" for outbound ones.
network = "rnr0"
"#;

#[cfg(test)]
// figment::Jail's closures return its own large error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn example_is_the_defaults() {
        let parsed: Config = toml::from_str(EXAMPLE).expect("example parses");
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn layers_apply_in_order() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "rnr.toml",
                "listen = \"0.0.0.0:1\"\ncapacity = 7\n[docker]\nnetwork = \"file-net\"\n",
            )?;
            jail.set_env("RNR_CAPACITY", "9");
            jail.set_env("RNR_DOCKER__NETWORK", "env-net");
            jail.set_env("RNR_API_KEY", "not a config key");
            let flags = FlagOverrides {
                listen: Some("127.0.0.1:2".into()),
                ..Default::default()
            };
            let c = load(Some(Path::new("rnr.toml")), &flags).expect("loads");
            assert_eq!(c.listen, "127.0.0.1:2");
            assert_eq!(c.capacity, 9);
            assert_eq!(c.docker.network, "env-net");
            assert_eq!(c.default_ttl_seconds, 3600);
            Ok(())
        });
    }

    #[test]
    fn bad_file_names_the_key() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("bad.toml", "capacity = \"many\"\n")?;
            let err =
                load(Some(Path::new("bad.toml")), &FlagOverrides::default()).expect_err("rejected");
            let msg = format!("{err:#}");
            assert!(msg.contains("capacity"), "{msg}");
            jail.create_file("unknown.toml", "capacty = 3\n")?;
            let err = load(Some(Path::new("unknown.toml")), &FlagOverrides::default())
                .expect_err("rejected");
            assert!(format!("{err:#}").contains("capacty"), "{err:#}");
            Ok(())
        });
    }
}

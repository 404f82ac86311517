//! Configuration, layered: built-in defaults → TOML file → `RNR_*` environment → flags.
//!
//! Every choice is typed: the backend is a [`DriverChoice`], each backend's settings a
//! struct of their own, and modes enums, so a bad value is refused when the configuration
//! is read, naming the key and the value (serde's error, placed by figment).

use anyhow::Context;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use rnr_driver::Limits;
use rnr_driver_native::DiskMode;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The `driver` setting: which backend runs machines. Another backend (a `vm` or `incus`
/// driver) is one more variant here, a settings section of its own in [`Config`], and an
/// arm in `serve::connect`; the compiler finds every place that must learn of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DriverChoice {
    /// Native when running as root with crun present and its preflight passing, else
    /// docker.
    Auto,
    /// Machines started with crun directly ([`NativeSection`]).
    Native,
    /// Machines as Docker containers ([`DockerSection`]).
    Docker,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Settings whose type reads from and prints as text (`FromStr`/`Display`), like the
/// native driver's [`DiskMode`]: the type's own parser names the bad value, figment the key.
mod as_text {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::fmt::Display;
    use std::str::FromStr;

    pub fn serialize<T: Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: Deserializer<'de>,
    {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Everything `rnr` can be configured with. `rnr config example` prints it commented.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP API listens on.
    pub listen: String,
    /// Where the database, images and other state live.
    pub data_dir: PathBuf,
    /// Where machines run: `auto` (native when running as root with crun present and its
    /// preflight passing, else docker), `docker` or `native`.
    pub driver: DriverChoice,
    /// Most machines creating or running at once.
    pub capacity: u64,
    pub default_image: String,
    pub default_ttl_seconds: u64,
    pub max_ttl_seconds: u64,
    pub reap_interval_seconds: u64,
    /// Longest wait for the driver to delete one machine; a delete that takes longer is
    /// given up on (it goes on in the background) and retried by a later reaper pass.
    pub delete_timeout_seconds: u64,
    /// Expired machines the reaper deletes at once.
    pub parallel_deletes: usize,
    /// How long `/readyz` waits for each part (store, driver, disk) before it counts it as
    /// not answering.
    pub ready_timeout_ms: u64,
    /// `/readyz` fails while the data dir's filesystem (or the native driver's state
    /// dir's) has less free than this, in MiB.
    pub min_free_disk_mib: u64,
    pub allow_outbound: bool,
    pub default_limits: Limits,
    pub max_limits: Limits,
    pub docker: DockerSection,
    pub native: NativeSection,
    pub vm: VmSection,
    /// Host procfs and cgroup roots (tests and nested setups point these elsewhere).
    pub proc_root: PathBuf,
    pub cgroup_root: PathBuf,
    pub log_format: LogFormat,
    /// Static in-machine agent binary (`scripts/build-agent.sh`), mounted read-only into
    /// every machine; default: `rnr-agent` beside the `rnr` binary, if there is one.
    pub agent_path: Option<PathBuf>,
    /// The web terminal gateway.
    pub terminal: rnr_terminal::TerminalSettings,
    pub checker: CheckerSection,
    /// The HTTP server's limits and the proxies in front of it.
    pub http: HttpSection,
    /// Learners and their pages.
    pub ui: UiSection,
    /// Per-API-key quotas.
    pub quotas: QuotasSection,
}

/// The HTTP server: timeouts, connection cap, trusted reverse proxies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSection {
    /// A connection must send a whole request head within this long (of opening, and of
    /// each later request's first byte), else it is closed.
    pub header_read_timeout_seconds: u64,
    /// A keep-alive connection with nothing in flight and no traffic this long is closed.
    pub idle_timeout_seconds: u64,
    /// Most connections at once (WebSockets included); more get a quick 503.
    pub max_connections: usize,
    /// Reverse proxies (IPs or CIDRs) whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<String>,
}

impl Default for HttpSection {
    fn default() -> Self {
        Self {
            header_read_timeout_seconds: 10,
            idle_timeout_seconds: 60,
            max_connections: 1024,
            trusted_proxies: Vec::new(),
        }
    }
}

/// Learners: anonymous visitors and their caps, learner tokens, embedding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UiSection {
    /// Whether visitors without an LMS link get machines.
    pub anonymous: bool,
    /// Most anonymous machines at once for one client address; 0: no limit.
    pub max_anonymous_per_client: u64,
    /// Most anonymous machines at once in all; 0: no limit.
    pub max_anonymous: u64,
    /// Lifetime of a learner page's token (the open page refreshes it).
    pub learner_token_ttl_seconds: u64,
    /// Lifetime of an anonymous visitor's cookie.
    pub visitor_ttl_seconds: u64,
    /// Origins (`https://lms.example`) whose pages may frame `/embed/…` links.
    pub embed_origins: Vec<String>,
}

impl Default for UiSection {
    fn default() -> Self {
        Self {
            anonymous: true,
            max_anonymous_per_client: 5,
            max_anonymous: 50,
            learner_token_ttl_seconds: 14_400,
            visitor_ttl_seconds: 2_592_000,
            embed_origins: Vec::new(),
        }
    }
}

/// What each API key may use unless created with limits of its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuotasSection {
    /// Most machines creating or running at once per key (its links' learners included);
    /// 0: no limit but the capacity.
    pub max_machines_per_key: u64,
    /// Most machine creations per minute per key; 0: no limit.
    pub creations_per_minute_per_key: u64,
}

impl Default for QuotasSection {
    fn default() -> Self {
        Self {
            max_machines_per_key: 0,
            creations_per_minute_per_key: 600,
        }
    }
}

/// The checker's settings (exercises, check runs, webhooks, live checking).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CheckerSection {
    /// Exercise folders (`<dir>/<name>/exercise.toml`); default `<data_dir>/exercises`.
    pub exercises_dir: Option<PathBuf>,
    /// Check runs carried out at once.
    pub workers: usize,
    /// Key for webhook signatures; webhooks are refused without one.
    pub webhook_secret: Option<String>,
    /// Non-public destinations (IPs or CIDRs) webhooks may go to anyway.
    pub webhook_allow: Vec<String>,
    /// Pytest checks run unprivileged, in a cgroup and namespaces of their own that reach
    /// only the machine under test (needs root); false: as rnr's own user, no more.
    pub pytest_sandbox: bool,
    /// First uid and gid of the sandboxes (one per check running at once).
    pub pytest_uid_base: u32,
    /// Addresses of the sandboxes' network ends, routed on the host only.
    pub pytest_subnet: String,
    /// Memory and processes one pytest run may use.
    pub pytest_memory_mib: u64,
    pub pytest_pids: u64,
    /// Quiet time after terminal activity before live checks run.
    pub debounce_ms: u64,
    /// Finished check runs older than this many days are deleted (each machine keeps its
    /// latest); 0 keeps them all.
    pub retention_days: u64,
    /// Most times a check run is taken up (interrupted by a restart, or failed by the
    /// machine's driver or the store); past it the run ends `errored`, saying why.
    pub max_attempts: u32,
    /// Wait before a failed run is tried again, in milliseconds.
    pub retry_delay_ms: u64,
}

impl Default for CheckerSection {
    fn default() -> Self {
        Self {
            exercises_dir: None,
            workers: 4,
            webhook_secret: None,
            webhook_allow: Vec::new(),
            pytest_sandbox: true,
            pytest_uid_base: 900_000_000,
            pytest_subnet: "198.18.0.0/16".into(),
            pytest_memory_mib: 512,
            pytest_pids: 128,
            debounce_ms: 1500,
            retention_days: 30,
            max_attempts: 3,
            retry_delay_ms: 1000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DockerSection {
    pub socket: PathBuf,
    /// Bridge network for machines; `<network>-out` holds those with outbound access.
    pub network: String,
    /// Size of each machine's filesystem in MiB (`--storage-opt size=`, image included);
    /// 0: no quota. Needs an engine whose storage driver enforces it (btrfs, zfs, overlay2
    /// on xfs with pquota); on others machines get none and `rnr serve` warns.
    pub disk_mib: u64,
    /// Refuse an engine without user-namespace remapping (`dockerd --userns-remap`), on
    /// which root in a machine is root on the host; without it `rnr serve` warns.
    pub require_userns_remap: bool,
    /// Most ptys one machine may hold open at once (its /dev/pts's `max`); 0: no quota.
    /// Set from the host, so only when rnr runs as root; else `rnr serve` warns.
    pub max_ptys: u32,
}

impl Default for DockerSection {
    fn default() -> Self {
        Self {
            socket: "/var/run/docker.sock".into(),
            network: "rnr0".into(),
            disk_mib: 1024,
            require_userns_remap: false,
            max_ptys: rnr_driver_docker::DEFAULT_MAX_PTYS,
        }
    }
}

/// Machines of kind `vm` (QEMU microVMs with a kernel of their own), beside the `driver`
/// that runs containers. Off unless enabled: they need QEMU, a Debian kernel and a KVM
/// that can run it (see README, "VM machines").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VmSection {
    /// Start the vm driver; a host that cannot run it stops `rnr serve`, saying why.
    pub enabled: bool,
    /// `kvm`, or `tcg` (QEMU's emulator: seconds per boot; development and CI only).
    pub accel: rnr_driver_vm::Accel,
    /// VM state (disk images, machines); default `<data_dir>/vm`.
    pub state_dir: Option<PathBuf>,
    /// The guest kernel; default the newest /boot/vmlinuz-*-cloud-amd64.
    pub kernel: Option<PathBuf>,
    /// Each machine's root disk size (its disk quota), MiB.
    pub disk_mib: u64,
    /// Guest memory on top of a machine's memory limit, for its kernel, MiB.
    pub kernel_overhead_mib: u64,
    /// The VMs' bridge and subnet (apart from the containers').
    pub bridge: String,
    pub subnet: String,
    /// Longest wait for a new VM's agent to answer (raise it for `tcg`).
    pub boot_timeout_seconds: u64,
}

impl Default for VmSection {
    fn default() -> Self {
        let d = rnr_driver_vm::VmConfig::default();
        Self {
            enabled: false,
            accel: d.accel,
            state_dir: None,
            kernel: None,
            disk_mib: d.disk_mib,
            kernel_overhead_mib: d.kernel_overhead_mib,
            bridge: d.bridge,
            subnet: d.subnet,
            boot_timeout_seconds: d.boot_timeout_seconds,
        }
    }
}

/// The native (crun) driver's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NativeSection {
    /// Images, machine bundles and crun's state; default `<data_dir>/native`.
    pub state_dir: Option<PathBuf>,
    /// The OCI runtime: a path, or a name looked up on PATH.
    pub runtime: PathBuf,
    /// The platform's bridge (at most 10 bytes; it also names the iptables chains).
    pub bridge: String,
    /// Machines' subnet; the bridge holds `.1`. Lower half: no outbound; upper: outbound.
    pub subnet: String,
    /// Root in a machine is an unprivileged host uid range of its own.
    pub userns: bool,
    /// First host uid of the machines' ranges (65536 ids each).
    pub uid_base: u32,
    /// Size of each machine's writable layer in MiB; 0 keeps it on the data dir's disk
    /// without a quota.
    pub disk_mib: u64,
    /// Where writable layers live: `btrfs` (a subvolume per machine with a qgroup limit, a
    /// real disk quota), `tmpfs` (a tmpfs per machine counted against its memory limit),
    /// or `auto` (btrfs when the host has it, else tmpfs).
    #[serde(with = "as_text")]
    pub disk: DiskMode,
    /// Size in GiB of the sparse btrfs image `<state_dir>/disk.img` holding every
    /// machine's writable layer (unless `state_dir` is on btrfs itself); fixed when made.
    pub disk_pool_gib: u64,
    /// Most ptys one machine may hold open at once (its /dev/pts's `max`); 0: no quota.
    pub max_ptys: u32,
    /// Longest a runtime call (run, delete, list) may take before it is killed and fails.
    pub runtime_timeout_seconds: u64,
}

impl Default for NativeSection {
    fn default() -> Self {
        Self {
            state_dir: None,
            runtime: "crun".into(),
            bridge: "rnr-br0".into(),
            subnet: "10.231.0.0/16".into(),
            userns: true,
            uid_base: 1_000_000_000,
            disk_mib: 1024,
            disk: DiskMode::Auto,
            disk_pool_gib: 64,
            max_ptys: rnr_driver_native::DEFAULT_MAX_PTYS,
            runtime_timeout_seconds: 60,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            data_dir: "/var/lib/rnr".into(),
            driver: DriverChoice::Auto,
            capacity: 100,
            default_image: "debian".into(),
            default_ttl_seconds: 3600,
            max_ttl_seconds: 86_400,
            reap_interval_seconds: 5,
            delete_timeout_seconds: 60,
            parallel_deletes: 4,
            ready_timeout_ms: 2000,
            min_free_disk_mib: 256,
            allow_outbound: false,
            default_limits: Limits::default(),
            max_limits: Limits {
                memory_mib: 4096,
                cpu_millis: 4000,
                pids: 4096,
            },
            docker: DockerSection::default(),
            native: NativeSection::default(),
            vm: VmSection::default(),
            proc_root: "/proc".into(),
            cgroup_root: "/sys/fs/cgroup".into(),
            log_format: LogFormat::Text,
            agent_path: None,
            terminal: rnr_terminal::TerminalSettings::default(),
            checker: CheckerSection::default(),
            http: HttpSection::default(),
            ui: UiSection::default(),
            quotas: QuotasSection::default(),
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
    pub driver: Option<DriverChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u64>,
}

/// Default file read when no `--config`/`RNR_CONFIG` names one, if it exists.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/rnr/config.toml";

/// Environment variables with the `RNR_` prefix that are not configuration keys.
const NOT_CONFIG_ENV: &[&str] = &[
    "config",
    "url",
    "api_key",
    "log",
    "test_driver",
    "isolation_echo_ms",
    // Fault injection for the crash tests (rnr_driver::fault), not a setting.
    "fault",
];

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
    let mut config: Config = fig
        .merge(Env::prefixed("RNR_").split("__").ignore(NOT_CONFIG_ENV))
        .merge(Serialized::globals(flags))
        .extract()
        .context("invalid configuration")?;
    // `RNR_AGENT_PATH=` (empty) means "not set", as with any shell variable left empty.
    if config
        .agent_path
        .as_ref()
        .is_some_and(|p| p.as_os_str().is_empty())
    {
        config.agent_path = None;
    }
    if let Some(p) = &config.agent_path {
        anyhow::ensure!(
            p.is_file(),
            "invalid configuration: agent_path {} is not a file (build it with scripts/build-agent.sh)",
            p.display()
        );
    }
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
# Where machines run (flag --driver, env RNR_DRIVER): "native" (crun, no daemon),
# "docker", or "auto": native when running as root with the runtime present and its
# preflight passing (root, crun, overlayfs, ip, iptables, cgroups), else docker.
driver = "auto"
# Most machines creating or running at once; more are refused at once (HTTP 503).
capacity = 100
# Image used when a request names none (see `rnr image list`).
default_image = "debian"
# Machine lifetime when a request gives none, and the most a request may ask for.
default_ttl_seconds = 3600
max_ttl_seconds = 86400
# How often expired machines are looked for and deleted.
reap_interval_seconds = 5
# Longest wait for the driver to delete one machine. A delete that takes longer is given up
# on (it goes on in the background) and retried by a later reaper pass, as is one that a
# crash interrupted; the reaper deletes this many machines at once, so one stuck delete
# never stops the others.
delete_timeout_seconds = 60
parallel_deletes = 4
# GET /readyz answers 503 naming each part that fails: the store (a write transaction must
# start), the driver (crun or dockerd must answer), the disk (the data dir's filesystem
# must keep min_free_disk_mib MiB free). Each part gets ready_timeout_ms, so the answer
# comes in about that time whatever hangs.
ready_timeout_ms = 2000
min_free_disk_mib = 256
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
# Each machine's filesystem in MiB, the image's files included; 0: no quota. Needs an engine
# whose storage driver can enforce it: btrfs (scripts/install-deps.sh starts dockerd with a
# btrfs data-root when no engine runs), zfs, or overlay2 on xfs mounted with pquota; on
# another (overlay2 on ext4, the usual default) machines get no quota and rnr warns.
disk_mib = 1024
# Refuse an engine that does not remap user namespaces (dockerd --userns-remap; the one
# scripts/install-deps.sh starts remaps to rnr-dockremap): there root in a machine is uid 0
# on the host. Without this, rnr uses such an engine and warns.
require_userns_remap = false
# Most ptys one machine may hold open at once (each machine's /dev/pts gets max=N, set from
# the host: rnr must run as root, else it warns); 0: no quota. Every machine's terminals
# draw from the host's kernel.pty.max, which one machine could otherwise exhaust.
max_ptys = 256

[native]
# Images, machine bundles and crun state. Default: <data_dir>/native.
# state_dir = "/var/lib/rnr/native"
# OCI runtime: a path or a name looked up on PATH; crun or runc. gVisor (runsc) is
# refused, saying why: the driver does not run it yet.
runtime = "crun"
# The platform's bridge (at most 10 bytes) and the machines' subnet (gateway .1 on the
# bridge; lower half: machines without outbound access, upper half: with it).
bridge = "rnr-br0"
subnet = "10.231.0.0/16"
# Root in each machine is its own unprivileged host uid range of 65536, from uid_base up.
userns = true
uid_base = 1000000000
# Each machine's writable layer in MiB; 0: no quota.
disk_mib = 1024
# Where writable layers live: "btrfs" (a subvolume per machine with a qgroup limit: a real
# disk quota, on state_dir's own btrfs or on a loop-mounted sparse image
# <state_dir>/disk.img made with mkfs.btrfs, package btrfs-progs), "tmpfs" (a tmpfs per
# machine, counted against its memory limit), or "auto": btrfs when the host can, else tmpfs.
disk = "auto"
# Size in GiB of the sparse image disk.img (only what is written takes space).
disk_pool_gib = 64
# Most ptys one machine may hold open at once (its /dev/pts is mounted with max=N); 0: no
# quota. Every machine's terminals draw from the host's kernel.pty.max.
max_ptys = 256
# Longest a runtime call (run, delete, list) may take; one that takes longer is killed and
# fails, so a hanging runtime never holds a create, a delete or /readyz.
runtime_timeout_seconds = 60

[terminal]
# Lifetime of a terminal token; connected browsers are sent fresh ones before it ends.
token_ttl_seconds = 900
# A session with no input for this long is ended (close code 4008).
idle_seconds = 1800
max_per_machine = 8
# Origins besides rnr's own whose pages may open terminals (e.g. "https://lms.example"),
# or "*" for any.
allowed_origins = []
# Pings every this many seconds; a client silent for three times as long is dropped.
ping_seconds = 10
# Largest asciicast recording in bytes; past it, recording stops with a marker while the
# terminal goes on. Recordings are deleted with their machine.
max_recording_bytes = 67108864

[checker]
# Exercise folders (<dir>/<name>/exercise.toml). Default: <data_dir>/exercises.
# exercises_dir = "/var/lib/rnr/exercises"
# Check runs carried out at once.
workers = 4
# Key for the webhook signature (X-Rnr-Signature: sha256=HMAC of the body); webhooks are
# refused without one.
# webhook_secret = "change me"
# Webhooks go only to public addresses: a URL whose host is or resolves to a loopback,
# private, CGNAT, link-local (metadata), unique-local or unspecified address is refused
# when the run is queued and at delivery. Destinations (IPs or CIDRs) admitted anyway,
# e.g. an LMS on your own network: ["10.0.5.20", "192.168.7.0/24"].
webhook_allow = []
# Pytest checks run in a sandbox (needs root): their own uid (pytest_uid_base + n), no
# groups, a clean environment, a cgroup with the limits below, a read-only view of /usr,
# /etc and the exercise, and a network namespace that reaches only the machine under
# test. false runs them as rnr's own user with nothing more (trusted hosts only).
pytest_sandbox = true
pytest_uid_base = 900000000
# The sandboxes' own addresses (one per check running at once), routed on the host only.
pytest_subnet = "198.18.0.0/16"
pytest_memory_mib = 512
pytest_pids = 128
# Quiet time after terminal activity before live checks run, in milliseconds.
debounce_ms = 1500
# Finished check runs older than this many days are deleted (hourly; each machine keeps
# its latest run, and runs with an undelivered webhook stay); 0 keeps every run.
retention_days = 30
# Most times a check run is taken up: a restart interrupting it counts one, and so does a
# failure of the machine's driver or of the store (then it is tried again retry_delay_ms
# later). Past it the run ends "errored" with a message saying so; never queued for ever.
max_attempts = 3
retry_delay_ms = 1000

[http]
# A connection must send a complete request head within this many seconds of opening, and
# of the first byte of each later request; else it is closed (slow clients, slowloris).
header_read_timeout_seconds = 10
# A keep-alive connection with no request in flight and no traffic for this long is closed.
idle_timeout_seconds = 60
# Most connections at once, WebSockets included. Beyond it a connection is answered at once
# with 503 too_many_connections (Retry-After: 1) and closed.
max_connections = 1024
# Reverse proxies (IP addresses or CIDRs, e.g. "10.0.0.0/8") whose X-Forwarded-For names
# the client; from any other peer the header is ignored and the peer is the client.
trusted_proxies = []

[ui]
# Whether visitors without an LMS link get machines at /exercises/NAME; false: 403
# anonymous_disabled, and only signed links (POST /api/v1/links) open exercises.
anonymous = true
# Most anonymous machines creating or running at once for one client address, and in all;
# beyond, 429 quota_exceeded with Retry-After. 0: no limit.
max_anonymous_per_client = 5
max_anonymous = 50
# Lifetime of the learner token an exercise page holds (scoped to that one exercise); the
# open page refreshes it, never past its link's expiry. Expired: 401 token_expired.
learner_token_ttl_seconds = 14400
# Lifetime of an anonymous visitor's cookie (how long a browser finds its machines again).
visitor_ttl_seconds = 2592000
# Origins whose pages may frame /embed/ links (Content-Security-Policy frame-ancestors),
# e.g. ["https://lms.example"]; every other page may not be framed by another site.
embed_origins = []

[quotas]
# Per API key, unless the key was created with its own (rnr apikey create NAME
# --max-machines N --creations-per-minute N). Machines of the learners of a key's links
# count too. Beyond, 429 quota_exceeded with Retry-After; the message names the limit.
# Most machines creating or running at once per key; 0: no limit but the capacity.
max_machines_per_key = 0
# Most machine creations per minute per key; 0: no limit.
creations_per_minute_per_key = 600
"#;

#[cfg(test)]
// figment::Jail's closures return its own large error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    /// Why loading with the environment as it is fails, lowercased: from the environment,
    /// figment names the key as the variable spells it (`NATIVE.DISK`).
    fn env_error() -> String {
        let err = load(None, &FlagOverrides::default()).expect_err("rejected");
        format!("{err:#}").to_lowercase()
    }

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
            jail.set_env("RNR_DOCKER__DISK_MIB", "300");
            jail.set_env("RNR_API_KEY", "not a config key");
            let flags = FlagOverrides {
                listen: Some("127.0.0.1:2".into()),
                ..Default::default()
            };
            let c = load(Some(Path::new("rnr.toml")), &flags).expect("loads");
            assert_eq!(c.listen, "127.0.0.1:2");
            assert_eq!(c.capacity, 9);
            assert_eq!(c.docker.network, "env-net");
            assert_eq!(c.docker.disk_mib, 300);
            assert_eq!(c.default_ttl_seconds, 3600);
            Ok(())
        });
    }

    #[test]
    fn native_disk_mode_is_checked() {
        figment::Jail::expect_with(|jail| {
            let c = load(None, &FlagOverrides::default()).expect("loads");
            assert_eq!(
                (c.native.disk, c.native.disk_pool_gib),
                (DiskMode::Auto, 64)
            );
            jail.set_env("RNR_NATIVE__DISK", "tmpfs");
            let c = load(None, &FlagOverrides::default()).expect("loads");
            assert_eq!(c.native.disk, DiskMode::Tmpfs);
            jail.set_env("RNR_NATIVE__DISK", "ext4");
            let err = env_error();
            for needle in ["native.disk", "\"ext4\"", "auto, btrfs, tmpfs"] {
                assert!(err.contains(needle), "{needle} in {err}");
            }
            Ok(())
        });
    }

    #[test]
    fn driver_is_an_enum_and_a_bad_one_is_named_with_its_key() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("n.toml", "driver = \"native\"\n[native]\nbridge = \"b1\"\n")?;
            let c = load(Some(Path::new("n.toml")), &FlagOverrides::default()).expect("loads");
            assert_eq!(
                (c.driver, c.native.bridge.as_str()),
                (DriverChoice::Native, "b1")
            );
            assert!(c.native.userns, "user namespaces stay on unless turned off");
            // A flag outranks the file.
            let flags = FlagOverrides {
                driver: Some(DriverChoice::Docker),
                ..Default::default()
            };
            let c = load(Some(Path::new("n.toml")), &flags).expect("loads");
            assert_eq!(c.driver, DriverChoice::Docker);

            jail.create_file("p.toml", "driver = \"podman\"\n")?;
            let err =
                load(Some(Path::new("p.toml")), &FlagOverrides::default()).expect_err("rejected");
            let err = format!("{err:#}");
            for needle in ["driver", "podman", "auto", "native", "docker", "p.toml"] {
                assert!(err.contains(needle), "{needle} in {err}");
            }
            // The environment's bad values are named with their key too.
            jail.set_env("RNR_DRIVER", "vmware");
            let err = env_error();
            assert!(err.contains("driver") && err.contains("vmware"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn abuse_settings_layer_like_every_other() {
        figment::Jail::expect_with(|jail| {
            let c = load(None, &FlagOverrides::default()).expect("loads");
            assert!(c.ui.anonymous);
            assert_eq!(
                (
                    c.http.max_connections,
                    c.quotas.creations_per_minute_per_key
                ),
                (1024, 600)
            );
            jail.create_file(
                "q.toml",
                "[ui]\nanonymous = false\nembed_origins = [\"https://lms.example\"]\n\
                 [http]\ntrusted_proxies = [\"10.0.0.0/8\"]\n[quotas]\nmax_machines_per_key = 7\n",
            )?;
            jail.set_env("RNR_UI__MAX_ANONYMOUS_PER_CLIENT", "2");
            jail.set_env("RNR_HTTP__HEADER_READ_TIMEOUT_SECONDS", "3");
            jail.set_env("RNR_CHECKER__RETENTION_DAYS", "0");
            jail.set_env("RNR_TERMINAL__MAX_RECORDING_BYTES", "1000");
            let c = load(Some(Path::new("q.toml")), &FlagOverrides::default()).expect("loads");
            assert!(!c.ui.anonymous);
            assert_eq!(c.ui.embed_origins, ["https://lms.example"]);
            jail.set_env("RNR_UI__EMBED_ORIGINS", "[\"http://127.0.0.1:5555\"]");
            let c = load(Some(Path::new("q.toml")), &FlagOverrides::default()).expect("loads");
            assert_eq!(c.ui.embed_origins, ["http://127.0.0.1:5555"]);
            assert_eq!(c.ui.max_anonymous_per_client, 2);
            assert_eq!(c.http.trusted_proxies, ["10.0.0.0/8"]);
            assert_eq!(c.http.header_read_timeout_seconds, 3);
            assert_eq!(c.quotas.max_machines_per_key, 7);
            assert_eq!(c.checker.retention_days, 0);
            assert_eq!(c.terminal.max_recording_bytes, 1000);
            jail.set_env("RNR_UI__ANONYMOUS", "sometimes");
            let err = env_error();
            assert!(
                err.contains("anonymous") && err.contains("sometimes"),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    fn crash_safety_settings_layer_like_every_other() {
        figment::Jail::expect_with(|jail| {
            let c = load(None, &FlagOverrides::default()).expect("loads");
            assert_eq!(
                (
                    c.delete_timeout_seconds,
                    c.parallel_deletes,
                    c.ready_timeout_ms,
                    c.min_free_disk_mib,
                    c.native.runtime_timeout_seconds,
                    c.checker.max_attempts,
                    c.checker.retry_delay_ms
                ),
                (60, 4, 2000, 256, 60, 3, 1000)
            );
            jail.create_file(
                "c.toml",
                "parallel_deletes = 8\nready_timeout_ms = 700\n[native]\n\
                 runtime_timeout_seconds = 5\n[checker]\nmax_attempts = 5\n",
            )?;
            jail.set_env("RNR_PARALLEL_DELETES", "2");
            jail.set_env("RNR_CHECKER__RETRY_DELAY_MS", "10");
            // Fault injection is not configuration: it is let through, not refused.
            jail.set_env("RNR_FAULT", "create:reserved");
            let c = load(Some(Path::new("c.toml")), &FlagOverrides::default()).expect("loads");
            assert_eq!(
                (
                    c.parallel_deletes,
                    c.ready_timeout_ms,
                    c.native.runtime_timeout_seconds,
                    c.checker.max_attempts,
                    c.checker.retry_delay_ms
                ),
                (2, 700, 5, 5, 10)
            );
            let p = crate::serve::policy(&c);
            assert_eq!(p.parallel_deletes, 2);
            assert_eq!(p.ready_timeout, std::time::Duration::from_millis(700));
            assert_eq!(p.disk_dirs, std::slice::from_ref(&c.data_dir));
            jail.set_env("RNR_MIN_FREE_DISK_MIB", "lots");
            let err = env_error();
            assert!(
                err.contains("min_free_disk_mib") && err.contains("lots"),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    fn log_format_is_text_or_json() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("RNR_LOG_FORMAT", "json");
            let c = load(None, &FlagOverrides::default()).expect("loads");
            assert_eq!(c.log_format, LogFormat::Json);
            jail.set_env("RNR_LOG_FORMAT", "xml");
            let err = env_error();
            assert!(err.contains("log_format") && err.contains("xml"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn config_show_reads_back_as_the_same_configuration() {
        // `rnr config show` prints the configuration as TOML; read back, it must be the
        // one in force, enums and text-typed settings included.
        let c = Config {
            driver: DriverChoice::Native,
            native: NativeSection {
                disk: DiskMode::Btrfs,
                ..Default::default()
            },
            log_format: LogFormat::Json,
            ..Default::default()
        };
        let shown = toml::to_string_pretty(&c).expect("serializes");
        assert!(shown.contains("driver = \"native\""), "{shown}");
        assert!(shown.contains("disk = \"btrfs\""), "{shown}");
        assert_eq!(toml::from_str::<Config>(&shown).expect("parses"), c);
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

//! The Docker driver: each machine is a container on a Docker Engine, reached with bollard.
//!
//! Machines get memory/CPU/pids limits, no core dumps, a pty quota (`ptys.rs`), a
//! hostname, labels marking their owner, and an address on a platform-owned bridge
//! network with inter-container traffic disabled. A machine without outbound access sits
//! on an `internal` network; one with it on a second network that is NATed out. Images
//! are imported root filesystems named `rnr/<name>` (`images.rs`).
//!
//! Each machine's filesystem is capped at [`DockerConfig::disk_mib`] (`--storage-opt size=`)
//! when the engine's storage driver can do it (btrfs, zfs, overlay2 on xfs with pquota; see
//! `disk.rs`); on any other engine the driver warns once and machines have no disk quota.
//!
//! Root in a machine holds the native driver's capabilities and no more, and is an
//! unprivileged host uid when the engine remaps user namespaces (`security.rs`): on an
//! engine that does not, the driver warns loudly, or refuses it with
//! [`DockerConfig::require_userns_remap`].
//! The machine's /etc/passwd and /etc/group are the learner's to break, and the engine
//! reads them for every exec: dockerd from the host to resolve a user name, runc inside
//! the machine before starting anything, even as root. A FIFO there blocks either for good,
//! /dev/zero fails every exec. So an exec as another user than root goes through the
//! machine's agent (which resolves users inside, regular files only, size-capped), and
//! before any exec the driver (as root) looks from the host, without following anything out
//! of the machine, whether they are regular files: if not, the exec is refused at once,
//! saying why, instead of hanging.

mod disk;
mod firewall;
mod images;
mod ptys;
mod security;

use async_trait::async_trait;
use bollard::container::{
    Config, CreateContainerOptions, InspectContainerOptions, ListContainersOptions, LogOutput,
    RemoveContainerOptions, StatsOptions,
};
use bollard::exec::{CreateExecOptions, ResizeExecOptions, StartExecOptions, StartExecResults};
use bollard::models::{
    ContainerInspectResponse, ContainerSummary, EndpointSettings, HostConfig, ResourcesUlimits,
};
use bollard::network::{CreateNetworkOptions, ListNetworksOptions};
use bollard::Docker;
use futures::{StreamExt, TryStreamExt};
use rnr_driver::{
    netguard, AgentChannel, Driver, DriverError, ExecHandle, ExecProcess, ExecSpec, ImageStore,
    MachineInfo, MachineSpec, MachineStats, MachineStatus, OutputChunk, Result, TtySize,
    MACHINE_LABEL, OWNER_LABEL,
};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Repository prefix of the images this driver imports.
const IMAGE_REPO_PREFIX: &str = "rnr/";
/// Container name prefix; the machine id follows.
const CONTAINER_PREFIX: &str = "rnr-";

/// How to reach the engine and which resources are ours.
#[derive(Debug, Clone)]
pub struct DockerConfig {
    /// Path of the engine's unix socket.
    pub socket: PathBuf,
    /// Owner stamped on and filtered for every container (the platform instance id).
    pub owner: String,
    /// Name of the bridge network for machines without outbound access; `<name>-out`
    /// is used for those with it.
    pub network: String,
    /// Host procfs, to kill exec'd process trees the engine cannot kill.
    pub proc_root: PathBuf,
    /// Static agent binary, staged ([`rnr_driver::stage_agent`]) under `agent_stage` and
    /// mounted read-only at [`rnr_driver::AGENT_DIR`] in every machine.
    pub agent: Option<PathBuf>,
    /// A directory of the platform's own where the agent is staged (its data dir's
    /// `agent/`): the engine bind-mounts it from there.
    pub agent_stage: PathBuf,
    /// Size of each machine's filesystem in MiB (the image's files count towards it on
    /// btrfs, whose qgroup limit is on everything the container's subvolume references);
    /// `None`: no disk quota.
    pub disk_mib: Option<u64>,
    /// Refuse an engine that does not remap user namespaces (root in a machine would be
    /// root on the host); without it such an engine is used with a warning.
    pub require_userns_remap: bool,
    /// Most ptys a machine may hold open at once (its /dev/pts's `max`; 0: no quota).
    /// Setting it needs root (see `ptys.rs`).
    pub max_ptys: u32,
}

/// The pty quota machines get unless configured otherwise: every machine's terminals
/// draw from the host's `kernel.pty.max`.
pub const DEFAULT_MAX_PTYS: u32 = 256;

/// A driver bound to one engine and one owner.
#[derive(Clone)]
pub struct DockerDriver {
    docker: Docker,
    cfg: Arc<DockerConfig>,
    storage: Arc<disk::Storage>,
    /// Whether creates pass the disk size to the engine: configured, and not (or not yet)
    /// refused by its storage driver.
    quota: Arc<AtomicBool>,
    /// Whether the engine maps root in containers to an unprivileged host uid.
    userns_remap: bool,
    /// Every machine's `SecurityOpt` (the seccomp profile's JSON text, made once).
    security_opt: Arc<Vec<String>>,
    /// Whether machines get the pty quota: configured, and not (or not yet) found
    /// impossible on this host (warned about once).
    pty_quota: Arc<AtomicBool>,
    /// Host pids of machines' init (their `/proc/<pid>/root`), learnt once per machine.
    init_pids: Arc<std::sync::Mutex<HashMap<String, u32>>>,
    images: images::DockerImages,
    /// The staged agent's directory, when an agent is configured.
    agent_dir: Option<PathBuf>,
}

fn map_err(id: &str, e: bollard::errors::Error) -> DriverError {
    use bollard::errors::Error as E;
    match e {
        E::DockerResponseServerError {
            status_code: 404, ..
        } => DriverError::NotFound(id.to_string()),
        E::DockerResponseServerError {
            status_code: 409,
            message,
        } if message.contains("is not running") => DriverError::NotRunning {
            id: id.to_string(),
            state: "stopped".into(),
        },
        E::SocketNotFoundError(p) => {
            DriverError::Unavailable(format!("docker socket {p} not found"))
        }
        E::HyperResponseError { .. } | E::IOError { .. } => {
            DriverError::Unavailable(format!("docker engine: {e}"))
        }
        other => DriverError::backend(id, other),
    }
}

fn container_name(id: &str) -> String {
    format!("{CONTAINER_PREFIX}{id}")
}

fn image_ref(name: &str) -> String {
    format!("{IMAGE_REPO_PREFIX}{name}:latest")
}

impl DockerDriver {
    /// Connects to the engine, negotiates the API version and makes sure the networks exist.
    pub async fn connect(cfg: DockerConfig) -> Result<Self> {
        let socket = cfg.socket.to_string_lossy().into_owned();
        let docker = Docker::connect_with_unix(&socket, 120, bollard::API_DEFAULT_VERSION)
            .map_err(|e| map_err("-", e))?
            .negotiate_version()
            .await
            .map_err(|e| DriverError::Unavailable(format!("docker engine at {socket}: {e}")))?;
        let info = docker
            .info()
            .await
            .map_err(|e| DriverError::Unavailable(format!("docker engine at {socket}: {e}")))?;
        let storage = disk::Storage::of(&info);
        let userns_remap = security::userns_remapped(&info);
        if !userns_remap {
            let warning = security::no_remap_warning(&cfg.socket);
            if cfg.require_userns_remap {
                return Err(DriverError::Unavailable(format!(
                    "docker.require_userns_remap is set, and {warning}"
                )));
            }
            tracing::warn!("{warning}");
        }
        let cfg_max_ptys = cfg.max_ptys;
        let quota = cfg.disk_mib.is_some() && storage.size_opt() != disk::SizeOpt::Unsupported;
        if cfg.disk_mib.is_some() && !quota {
            tracing::warn!("{}", storage.no_quota_warning());
        }
        let agent_dir = match &cfg.agent {
            Some(binary) => Some(rnr_driver::stage_agent(binary, &cfg.agent_stage).map_err(
                |e| {
                    DriverError::io(
                        format!(
                            "staging the agent {} in {}",
                            binary.display(),
                            cfg.agent_stage.display()
                        ),
                        e,
                    )
                },
            )?),
            None => None,
        };
        if let (true, Some(dir)) = (userns_remap, &agent_dir) {
            security::check_agent_reachable(dir)?;
        }
        let driver = Self {
            userns_remap,
            security_opt: Arc::new(security::security_options()),
            agent_dir,
            images: images::DockerImages::new(docker.clone()),
            docker,
            cfg: Arc::new(cfg),
            storage: Arc::new(storage),
            quota: Arc::new(AtomicBool::new(quota)),
            pty_quota: Arc::new(AtomicBool::new(cfg_max_ptys > 0)),
            init_pids: Arc::default(),
        };
        driver.ensure_network(&driver.cfg.network, true).await?;
        driver
            .ensure_network(&format!("{}-out", driver.cfg.network), false)
            .await?;
        firewall::sweep_pins().await;
        Ok(driver)
    }

    /// Each machine's disk size in MiB when machines get a disk quota on this engine;
    /// `None` when none is configured or the engine's storage driver cannot enforce one.
    pub fn disk_quota_mib(&self) -> Option<u64> {
        self.cfg
            .disk_mib
            .filter(|_| self.quota.load(Ordering::Relaxed))
    }

    /// Whether root in a machine is an unprivileged host uid (the engine remaps user
    /// namespaces, `dockerd --userns-remap`).
    pub fn userns_remapped(&self) -> bool {
        self.userns_remap
    }

    /// Each machine's pty quota when machines get one on this host.
    pub fn pty_quota(&self) -> Option<u32> {
        Some(self.cfg.max_ptys).filter(|_| self.pty_quota.load(Ordering::Relaxed))
    }

    /// Caps the ptys of the just started machine `id` (see `ptys.rs`); on a host where
    /// that cannot be done, warns once and machines go without.
    async fn limit_ptys(&self, id: &str) -> Result<()> {
        let Some(max) = self.pty_quota() else {
            return Ok(());
        };
        let pid = self.init_pid(id).await?;
        let proc_root = self.cfg.proc_root.clone();
        let res = match is_root() {
            true => tokio::task::spawn_blocking(move || ptys::limit(&proc_root, pid, max))
                .await
                .map_err(|e| DriverError::backend(id, e))?,
            false => Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "rnr is not running as root",
            )),
        };
        if let Err(e) = res {
            if self.pty_quota.swap(false, Ordering::Relaxed) {
                tracing::warn!(
                    machine = id,
                    error = %e,
                    "machines get no pty quota on this host: one can exhaust kernel.pty.max \
                     for all (raise it: scripts/install-deps.sh does)"
                );
            }
        }
        Ok(())
    }

    /// The host pid of machine `id`'s init.
    async fn init_pid(&self, id: &str) -> Result<u32> {
        let known = self
            .init_pids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .copied();
        if let Some(pid) = known {
            return Ok(pid);
        }
        let c = self
            .docker
            .inspect_container(&container_name(id), None::<InspectContainerOptions>)
            .await
            .map_err(|e| map_err(id, e))?;
        let pid = c.state.and_then(|s| s.pid).unwrap_or(0);
        let pid =
            u32::try_from(pid)
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| DriverError::NotRunning {
                    id: id.to_string(),
                    state: "stopped".into(),
                })?;
        self.init_pids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string(), pid);
        Ok(pid)
    }

    /// Refuses an exec into machine `id` whose /etc/passwd or /etc/group the engine could
    /// not read without blocking or failing (see the crate's header). Only as root: the
    /// host's view of a machine's files needs it.
    async fn check_accounts(&self, id: &str) -> Result<()> {
        if !is_root() {
            return Ok(());
        }
        let pid = self.init_pid(id).await?;
        let root = self.cfg.proc_root.join(pid.to_string()).join("root");
        for path in ["/etc/passwd", "/etc/group"] {
            // Missing, or anything a lookup inside the machine cannot reach, is the
            // engine's to report; only what it would block or choke on is refused here.
            if let Ok((_, md)) = rnr_driver::files::lookup(&root, path) {
                rnr_driver::files::require_regular(path, &md).map_err(|e| {
                    DriverError::Invalid {
                        id: id.to_string(),
                        message: format!(
                            "the machine's {e}: the engine reads it before every exec into the \
                         machine (a FIFO would block it for good); make it a regular file again"
                        ),
                    }
                })?;
            }
        }
        Ok(())
    }

    /// The engine's storage driver, e.g. `btrfs` or `overlay2`.
    pub fn storage_driver(&self) -> &str {
        &self.storage.driver
    }

    /// Creates the container, with the disk size when the engine takes one. overlay2 on
    /// xfs without pquota refuses it: the first such refusal turns the quota off (warning
    /// once) and the machine is created without it.
    async fn create_container(&self, spec: &MachineSpec, mut config: Config<String>) -> Result<()> {
        let id = spec.id.as_str();
        let name = container_name(id);
        let options = || CreateContainerOptions {
            name: name.as_str(),
            platform: None,
        };
        let size = self.disk_quota_mib();
        if let (Some(mib), Some(host)) = (size, config.host_config.as_mut()) {
            host.storage_opt = Some(HashMap::from([("size".into(), format!("{mib}M"))]));
        }
        let fallback =
            (size.is_some() && self.storage.size_opt() == disk::SizeOpt::IfPquota).then(|| {
                Config {
                    host_config: config.host_config.clone().map(|h| HostConfig {
                        storage_opt: None,
                        ..h
                    }),
                    ..config.clone()
                }
            });
        let first = self.docker.create_container(Some(options()), config).await;
        let result = match (first, fallback) {
            (Err(bollard::errors::Error::DockerResponseServerError { message, .. }), Some(c))
                if disk::is_size_opt_refusal(&message) =>
            {
                if self.quota.swap(false, Ordering::Relaxed) {
                    tracing::warn!(engine = %message, "{}", self.storage.no_quota_warning());
                }
                self.docker.create_container(Some(options()), c).await
            }
            (first, _) => first,
        };
        result.map(drop).map_err(|e| match e {
            bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            } => DriverError::ImageNotFound(spec.image.clone()),
            e => map_err(id, e),
        })
    }

    /// Ids of the networks named exactly `name`, lowest first.
    async fn networks_named(&self, name: &str) -> Result<Vec<String>> {
        let nets = self
            .docker
            .list_networks(Some(ListNetworksOptions {
                filters: HashMap::from([("name".to_string(), vec![name.to_string()])]),
            }))
            .await
            .map_err(|e| map_err("-", e))?;
        // The engine's name filter matches substrings.
        let mut ids: Vec<String> = nets
            .into_iter()
            .filter(|n| n.name.as_deref() == Some(name))
            .filter_map(|n| n.id)
            .collect();
        ids.sort();
        Ok(ids)
    }

    async fn ensure_network(&self, name: &str, internal: bool) -> Result<()> {
        // The engine does not make "create unless it exists" atomic: platforms starting at
        // once can create two networks of one name, which makes the name ambiguous.
        // Creation is serialised in-process, and duplicates from other processes are
        // removed deterministically (every process keeps the lowest id).
        static CREATING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let _guard = CREATING.lock().await;
        if self.networks_named(name).await?.is_empty() {
            let options = HashMap::from([
                // Machines must not talk to each other across the bridge.
                ("com.docker.network.bridge.enable_icc", "false"),
            ]);
            if let Err(e) = self
                .docker
                .create_network(CreateNetworkOptions {
                    name,
                    driver: "bridge",
                    internal,
                    check_duplicate: true,
                    options,
                    labels: HashMap::from([("io.rootnroll.network", "1")]),
                    ..Default::default()
                })
                .await
            {
                tracing::debug!(network = name, error = %e, "network creation raced");
            }
        }
        let ids = self.networks_named(name).await?;
        if ids.is_empty() {
            return Err(DriverError::Unavailable(format!(
                "cannot create docker network {name}"
            )));
        }
        for extra in &ids[1..] {
            if self.docker.remove_network(extra).await.is_ok() {
                firewall::remove_bridge_rules(&firewall::bridge_name(extra)).await;
            }
        }
        let bridge = firewall::bridge_name(&ids[0]);
        let gateway = self
            .docker
            .inspect_network::<String>(&ids[0], None)
            .await
            .map_err(|e| map_err("-", e))?
            .ipam
            .and_then(|i| i.config)
            .into_iter()
            .flatten()
            .find_map(|c| c.gateway?.parse().ok());
        firewall::protect_host(&bridge, gateway).await?;
        if !internal {
            firewall::protect_outbound(&bridge).await?;
        }
        Ok(())
    }

    fn network_for(&self, outbound: bool) -> String {
        if outbound {
            format!("{}-out", self.cfg.network)
        } else {
            self.cfg.network.clone()
        }
    }

    fn info_from_inspect(&self, id: &str, c: ContainerInspectResponse) -> Result<MachineInfo> {
        let config = c.config.unwrap_or_default();
        let labels: BTreeMap<String, String> =
            config.labels.unwrap_or_default().into_iter().collect();
        if labels.get(OWNER_LABEL) != Some(&self.cfg.owner) {
            return Err(DriverError::NotFound(id.to_string()));
        }
        let state = c.state.unwrap_or_default();
        let status = if state.running.unwrap_or(false) {
            MachineStatus::Running
        } else if matches!(
            state.status,
            Some(bollard::models::ContainerStateStatusEnum::CREATED)
        ) {
            MachineStatus::Creating
        } else {
            MachineStatus::Stopped
        };
        let address = first_address(c.network_settings.and_then(|n| n.networks));
        let created_at = c
            .created
            .as_deref()
            .and_then(parse_rfc3339)
            .map(|secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs));
        Ok(MachineInfo {
            id: id.to_string(),
            image: labels
                .get("io.rootnroll.image")
                .cloned()
                .unwrap_or_default(),
            status,
            address,
            created_at,
            labels,
        })
    }

    fn info_from_summary(&self, c: ContainerSummary) -> Option<MachineInfo> {
        let labels: BTreeMap<String, String> = c.labels.unwrap_or_default().into_iter().collect();
        let id = labels.get(MACHINE_LABEL)?.clone();
        let status = match c.state.as_deref() {
            Some("running") => MachineStatus::Running,
            Some("created") => MachineStatus::Creating,
            _ => MachineStatus::Stopped,
        };
        let address = first_address(c.network_settings.and_then(|n| n.networks));
        Some(MachineInfo {
            image: labels
                .get("io.rootnroll.image")
                .cloned()
                .unwrap_or_default(),
            id,
            status,
            address,
            created_at: c
                .created
                .and_then(|s| u64::try_from(s).ok())
                .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s)),
            labels,
        })
    }
}

/// Whether rnr runs as root (what reaching into a machine from the host takes).
fn is_root() -> bool {
    // SAFETY: geteuid(2) has no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The machine's address: a machine sits on exactly one of the platform's networks.
fn first_address(networks: Option<HashMap<String, EndpointSettings>>) -> Option<IpAddr> {
    networks?
        .values()
        .filter_map(|n| n.ip_address.as_deref())
        .find_map(|ip| ip.parse::<IpAddr>().ok())
}

/// Seconds since the epoch of an RFC 3339 timestamp such as Docker's `Created`.
fn parse_rfc3339(s: &str) -> Option<u64> {
    // Only the date and time to the second matter here: "YYYY-MM-DDTHH:MM:SS…".
    let b = s.as_bytes();
    if b.len() < 19 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()
}

/// Ends an exec when dropped: the engine keeps an exec running after its client is gone.
struct EndExecOnDrop(Option<Arc<dyn ExecProcess>>);

impl Drop for EndExecOnDrop {
    fn drop(&mut self) {
        if let (Some(p), Ok(rt)) = (self.0.take(), tokio::runtime::Handle::try_current()) {
            rt.spawn(async move {
                let _ = p.kill().await;
            });
        }
    }
}

struct DockerExec {
    docker: Docker,
    exec_id: String,
    machine: String,
    proc_root: PathBuf,
}

#[async_trait]
impl ExecProcess for DockerExec {
    async fn resize(&self, size: TtySize) -> Result<()> {
        self.docker
            .resize_exec(
                &self.exec_id,
                ResizeExecOptions {
                    height: size.rows,
                    width: size.cols,
                },
            )
            .await
            .map_err(|e| map_err(&self.machine, e))
    }

    async fn wait(&self) -> Result<i64> {
        // The engine may report the exec as running for a moment after its streams closed.
        let mut delay = Duration::from_millis(1);
        loop {
            let info = self
                .docker
                .inspect_exec(&self.exec_id)
                .await
                .map_err(|e| map_err(&self.machine, e))?;
            if info.running != Some(true) {
                return Ok(info.exit_code.unwrap_or(-1));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(100));
        }
    }

    async fn kill(&self) -> Result<()> {
        // The engine has no API to kill an exec; its process is visible in the host's procfs.
        let info = self
            .docker
            .inspect_exec(&self.exec_id)
            .await
            .map_err(|e| map_err(&self.machine, e))?;
        if let (Some(true), Some(pid)) = (info.running, info.pid) {
            let pid = i32::try_from(pid).unwrap_or(0);
            let root = self.proc_root.clone();
            tokio::task::spawn_blocking(move || rnr_driver::process::kill_tree(&root, pid))
                .await
                .map_err(|e| DriverError::backend(&self.machine, e))?;
        }
        Ok(())
    }
}

#[async_trait]
impl Driver for DockerDriver {
    fn name(&self) -> &'static str {
        "docker"
    }

    async fn create(&self, spec: &MachineSpec) -> Result<MachineInfo> {
        let id = spec.id.as_str();
        let mut labels: HashMap<String, String> = spec.labels.clone().into_iter().collect();
        labels.insert(OWNER_LABEL.into(), self.cfg.owner.clone());
        labels.insert(MACHINE_LABEL.into(), id.into());
        labels.insert("io.rootnroll.image".into(), spec.image.clone());
        let memory =
            i64::try_from(spec.limits.memory_mib.saturating_mul(1 << 20)).unwrap_or(i64::MAX);
        let host_config = HostConfig {
            memory: Some(memory),
            // Equal to memory: no swap beyond the cap.
            memory_swap: Some(memory),
            nano_cpus: Some(i64::try_from(spec.limits.cpu_millis).unwrap_or(i64::MAX) * 1_000_000),
            pids_limit: Some(i64::try_from(spec.limits.pids).unwrap_or(i64::MAX)),
            network_mode: Some(self.network_for(spec.network.outbound)),
            // The learner's own processes must not make the host's OOM killer pick others.
            oom_score_adj: Some(500),
            // No core dumps: a crash must not write a learner's process's memory anywhere,
            // nor fill the disk; hard 0, and without CAP_SYS_RESOURCE it stays 0.
            ulimits: Some(vec![ResourcesUlimits {
                name: Some("core".into()),
                soft: Some(0),
                hard: Some(0),
            }]),
            init: Some(false),
            // The native driver's capabilities, no more (none added): among what it drops,
            // NET_RAW (forged frames; pings use ICMP datagram sockets instead).
            cap_drop: Some(security::dropped_capabilities()),
            // The native driver's seccomp allow-list instead of the engine's default.
            security_opt: Some(self.security_opt.to_vec()),
            sysctls: Some(
                netguard::machine_sysctls(security::ping_max_gid(self.userns_remap))
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            ),
            // A mount of its own at /.rnr: read-only, and a mount point cannot be renamed
            // away to put another agent in its place.
            binds: self
                .agent_dir
                .as_ref()
                .map(|a| vec![format!("{}:{}:ro", a.display(), rnr_driver::AGENT_DIR)]),
            ..Default::default()
        };
        let config = Config {
            image: Some(image_ref(&spec.image)),
            hostname: Some(spec.hostname.clone()),
            labels: Some(labels),
            // PID 1 ignores signals it has no handler for (so `kill -9 -1` inside keeps the
            // machine up) and reaps orphans: the agent's init, which also serves the agent
            // channel (`agent()`), else a shell loop.
            cmd: Some(match &self.agent_dir {
                Some(_) => vec![rnr_driver::AGENT_PATH.to_string(), "init".to_string()],
                None => vec![
                    "/bin/sh".to_string(),
                    "-c".to_string(),
                    "trap 'exit 0' TERM; while :; do sleep 3600 & wait; done".to_string(),
                ],
            }),
            env: Some(vec![
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
                "TERM=xterm-256color".to_string(),
            ]),
            host_config: Some(host_config),
            ..Default::default()
        };
        self.create_container(spec, config).await?;
        let name = container_name(id);
        if let Err(e) = self.docker.start_container::<String>(&name, None).await {
            let _ = self.delete(id).await;
            return Err(map_err(id, e));
        }
        if let Err(e) = self.limit_ptys(id).await {
            let _ = self.delete(id).await;
            return Err(e);
        }
        let c = self
            .docker
            .inspect_container(&name, None::<InspectContainerOptions>)
            .await
            .map_err(|e| map_err(id, e))?;
        let pinned = match firewall::Pin::of(id, &c, &self.cfg.proc_root) {
            Ok(pin) => firewall::pin(id, &pin).await,
            Err(e) => Err(e),
        };
        if let Err(e) = pinned {
            let _ = self.delete(id).await;
            return Err(e);
        }
        self.info_from_inspect(id, c)
    }

    async fn exec(&self, id: &str, spec: ExecSpec) -> Result<ExecHandle> {
        if spec.argv.is_empty() {
            return Err(DriverError::Invalid {
                id: id.into(),
                message: "argv must not be empty".into(),
            });
        }
        self.check_accounts(id).await?;
        if spec.user.is_some() && self.cfg.agent.is_some() {
            // The agent resolves the user from inside (regular files only, size-capped);
            // the engine would open the machine's /etc/passwd from the host, and a FIFO
            // there blocks it for good.
            return self.agent(id).await?.exec(spec).await;
        }
        let tty = spec.tty;
        let env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let created = self
            .docker
            .create_exec(
                &container_name(id),
                CreateExecOptions {
                    attach_stdin: Some(true),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    tty: Some(tty.is_some()),
                    env: Some(env),
                    cmd: Some(spec.argv.clone()),
                    user: spec.user.clone(),
                    working_dir: spec.workdir.clone(),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| map_err(id, e))?;
        let started = self
            .docker
            .start_exec(
                &created.id,
                Some(StartExecOptions {
                    detach: false,
                    tty: tty.is_some(),
                    output_capacity: Some(64 * 1024),
                }),
            )
            .await
            .map_err(|e| map_err(id, e))?;
        let StartExecResults::Attached { output, input } = started else {
            return Err(DriverError::backend(id, "exec started detached"));
        };
        let process = Arc::new(DockerExec {
            docker: self.docker.clone(),
            exec_id: created.id,
            machine: id.to_string(),
            proc_root: self.cfg.proc_root.clone(),
        });
        if let Some(size) = tty {
            process.resize(size).await?;
        }
        let machine = id.to_string();
        let output = output
            .map_err(move |e| map_err(&machine, e))
            .try_filter_map(|chunk| async move {
                Ok(match chunk {
                    LogOutput::StdOut { message } | LogOutput::Console { message } => {
                        Some(OutputChunk::Stdout(message))
                    }
                    LogOutput::StdErr { message } => Some(OutputChunk::Stderr(message)),
                    LogOutput::StdIn { .. } => None,
                })
            })
            .boxed();
        Ok(ExecHandle {
            stdin: input,
            output,
            process,
        })
    }

    async fn agent(&self, id: &str) -> Result<AgentChannel> {
        if self.agent_dir.is_none() {
            return Err(DriverError::NoAgent(id.to_string()));
        }
        // `rnr-agent serve` relays its stdio to the machine's init (checking that it is
        // PID 1); the exec's streams are the channel. It prints on stderr only why it could
        // not start, which becomes the channel's error.
        let handle = self
            .exec(id, ExecSpec::new([rnr_driver::AGENT_PATH, "serve"]))
            .await?;
        let machine = id.to_string();
        let read = handle
            .output
            .filter_map(move |chunk| {
                let item = match chunk {
                    // The engine's runtime could not start `serve` at all and says so on
                    // stdout (e.g. a machine's /etc/passwd it chokes on): no frame, a reason.
                    Ok(OutputChunk::Stdout(b)) if b.starts_with(b"OCI runtime") => {
                        let text = String::from_utf8_lossy(&b[..b.len().min(512)]);
                        Some(Err(std::io::Error::other(text.trim().to_string())))
                    }
                    Ok(OutputChunk::Stdout(b)) => Some(Ok(b)),
                    Ok(OutputChunk::Stderr(b)) => {
                        let text = String::from_utf8_lossy(&b[..b.len().min(512)])
                            .trim()
                            .to_string();
                        tracing::debug!(machine = %machine, stderr = %text, "rnr-agent serve");
                        Some(Err(std::io::Error::other(text)))
                    }
                    Err(e) => Some(Err(std::io::Error::other(e.to_string()))),
                };
                futures::future::ready(item)
            })
            .boxed();
        Ok(AgentChannel::bytes(
            id,
            read,
            handle.stdin,
            Some(Box::new(EndExecOnDrop(Some(handle.process)))),
        ))
    }

    async fn inspect(&self, id: &str) -> Result<MachineInfo> {
        let c = self
            .docker
            .inspect_container(&container_name(id), None::<InspectContainerOptions>)
            .await
            .map_err(|e| map_err(id, e))?;
        self.info_from_inspect(id, c)
    }

    async fn delete(&self, id: &str) -> Result<()> {
        self.init_pids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        let c = match self
            .docker
            .inspect_container(&container_name(id), None::<InspectContainerOptions>)
            .await
        {
            Ok(c) => c,
            Err(e) => match map_err(id, e) {
                DriverError::NotFound(_) => return Ok(()),
                e => return Err(e),
            },
        };
        // A stopped machine's veth is gone, and with it the way to its pin: swept below.
        let pin = firewall::Pin::of(id, &c, &self.cfg.proc_root).ok();
        // Refuse to touch a container of the same name that another owner has.
        match self.info_from_inspect(id, c) {
            Ok(_) => {}
            Err(DriverError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        }
        let removed = match self
            .docker
            .remove_container(
                &container_name(id),
                Some(RemoveContainerOptions {
                    force: true,
                    v: true,
                    link: false,
                }),
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            // A concurrent delete of the same machine is already under way.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409,
                message,
            }) if message.contains("already in progress") => Ok(()),
            Err(e) => Err(map_err(id, e)),
        };
        match &pin {
            Some(p) => firewall::unpin(p).await,
            None => firewall::sweep_pins().await,
        }
        removed
    }

    async fn list(&self) -> Result<Vec<MachineInfo>> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("{OWNER_LABEL}={}", self.cfg.owner)],
        )]);
        let list = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters,
                ..Default::default()
            }))
            .await
            .map_err(|e| map_err("-", e))?;
        Ok(list
            .into_iter()
            .filter_map(|c| self.info_from_summary(c))
            .collect())
    }

    async fn stats(&self, id: &str) -> Result<Option<MachineStats>> {
        let mut stream = self.docker.stats(
            &container_name(id),
            Some(StatsOptions {
                stream: false,
                one_shot: true,
            }),
        );
        let Some(stats) = stream.next().await else {
            return Ok(None);
        };
        let stats = stats.map_err(|e| map_err(id, e))?;
        Ok(Some(MachineStats {
            cpu_ns: stats.cpu_stats.cpu_usage.total_usage,
            memory_bytes: stats.memory_stats.usage.unwrap_or(0),
            pids: stats.pids_stats.current.unwrap_or(0),
        }))
    }

    fn images(&self) -> &dyn ImageStore {
        &self.images
    }

    /// The engine answers a ping (a stopped or hung dockerd does not).
    async fn ready(&self) -> Result<()> {
        self.docker
            .ping()
            .await
            .map_err(|e| DriverError::Unavailable(format!("docker engine: {e}")))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::parse_rfc3339;

    #[test]
    fn parses_docker_timestamps() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339("2026-11-25T01:11:37.123456789Z"),
            Some(1_795_569_097)
        );
        assert_eq!(parse_rfc3339("garbage"), None);
    }
}

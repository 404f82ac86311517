//! The native driver: machines started with the OCI runtime crun directly, with no daemon
//! and no per-machine helper process on the host.
//!
//! Layout of `state_dir`:
//!
//! * `images/<name>/rootfs` → symlink to `images/<name>/r-<nanos>`, an extracted rootfs
//!   (replaced atomically on re-import); `images/<name>/info.json` holds its size.
//! * `run/machines/<id>/machine.json` — what the driver knows (owner, image, address, uid
//!   range, init pid); `config.json` — the OCI bundle config; `rootfs/`, `lower/`,
//!   `disk/` — mount points, empty on the host: the machine's overlay (and, in tmpfs disk
//!   mode, the tmpfs holding its upper layer, and the idmapped image) are mounted only
//!   inside the private mount namespace crun runs in, so they live exactly as long as the
//!   machine's own mount namespace and never grow the host's mount table.
//!   `agent.sock` — with an agent configured, the socket its PID 1 (`rnr-agent init`)
//!   listens on (bound here, passed to it as fd 3): every exec is forked by the agent in
//!   about a millisecond; without an agent, PID 1 is a shell loop and execs use `crun exec`.
//! * `disks/<id>/{upper,work}` (btrfs disk mode) — each machine's writable layer, on a
//!   btrfs subvolume of its own whose qgroup limit is the machine's disk size: a real disk
//!   quota, independent of its memory limit. `disks/` is a directory of `state_dir`'s own
//!   filesystem when that is btrfs (quotas get enabled on it), else the mount point of
//!   `disk.img`, a sparse image (`disk_pool_gib`, allocated only as written) formatted
//!   once with mkfs.btrfs and loop-mounted when the driver opens (the one mount the driver
//!   adds to the host's table; [`NativeDriver::teardown`] unmounts it and the loop device
//!   detaches itself). `disk.lock` serialises setting it up.
//! * `run/` — a tmpfs the driver mounts (once; a restarted driver finds it mounted) for
//!   what lives only as long as the machines do: `machines/`, `crun/` and `sock/` below.
//!   Creating a machine makes a dozen files and directories; on ext4 each new inode was
//!   ~0.2 ms of kernel time (the allocator's scan of recently freed inodes), about 10 % of
//!   the CPU of a start. A host reboot ends the machines and empties `run/` together.
//!   [`NativeDriver::teardown`] unmounts it.
//! * `run/crun/` — crun's state root (`--root`).
//!
//! The disk mode ([`DiskMode`]) is chosen by the config: `auto` (the default) takes btrfs
//! when the kernel has it and either `state_dir` is on btrfs or mkfs.btrfs and loop devices
//! are there, else falls back to tmpfs with a warning; in tmpfs mode the writable layer is
//! a per-machine tmpfs whose pages count against the machine's memory limit, so filling
//! the disk ends in the machine's OOM killer rather than in ENOSPC/EDQUOT.
//!
//! Every crun call runs in a fresh private mount namespace where, on cgroup v1 hybrid
//! hosts, an empty file hides `<cgroup_root>/unified/cgroup.controllers` (crun 1.8.1
//! refuses hybrid hosts otherwise).

mod agent;
mod disk;
mod error;
mod exec;
mod net;
mod netlink;
mod oci;
mod sys;

pub use error::{NResult, NativeError};
pub use net::Subnet;
pub use oci::seccomp as seccomp_profile;

use async_trait::async_trait;
use rnr_driver::{
    Driver, ExecHandle, ExecSpec, ImageInfo, MachineInfo, MachineSpec, MachineStats, MachineStatus,
    Result,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// Where state lives, which runtime to use, and which host resources are ours.
#[derive(Debug, Clone)]
pub struct NativeConfig {
    /// All on-disk state: `images/`, `machines/<id>/`, `crun/`.
    pub state_dir: PathBuf,
    /// The OCI runtime binary (crun).
    pub runtime: PathBuf,
    /// Owner recorded with every machine; `list` returns only this owner's machines.
    pub owner: String,
    /// Name of the platform's bridge (at most 10 bytes, it also names iptables chains).
    pub bridge: String,
    /// The machines' subnet, e.g. `10.231.0.0/16`; the gateway `.1` sits on the bridge.
    pub subnet: String,
    /// Mount point of the cgroup hierarchies (normally `/sys/fs/cgroup`).
    pub cgroup_root: PathBuf,
    /// Host procfs (normally `/proc`).
    pub proc_root: PathBuf,
    /// Run each machine in a user namespace: root inside is an unprivileged host uid.
    pub userns: bool,
    /// First host uid of the ranges handed to machines (65536 ids each).
    pub uid_base: u32,
    /// Size of each machine's writable layer in MiB: a btrfs qgroup limit or a tmpfs size,
    /// depending on [`NativeConfig::disk`]; `None` keeps it in plain directories on
    /// `state_dir`'s disk without a quota (and `disk` is then ignored).
    pub disk_mib: Option<u64>,
    /// Where the writable layers live: [`DiskMode::Auto`] (default) is btrfs when this
    /// host can have it, else tmpfs.
    pub disk: DiskMode,
    /// Size in GiB of the sparse btrfs image `<state_dir>/disk.img` holding all machines'
    /// writable layers when `state_dir` is not on btrfs itself (default 64). Only what is
    /// written takes space on the host; it is the machines' combined ceiling, fixed when
    /// the image is first made. Keep it within the host filesystem's free space (the
    /// driver warns otherwise): should the host fill up first, btrfs turns the pool
    /// read-only.
    pub disk_pool_gib: u64,
    /// Static agent binary bind-mounted read-only at [`rnr_driver::AGENT_PATH`] in every
    /// machine.
    pub agent: Option<PathBuf>,
}

impl NativeConfig {
    /// A config with the usual host paths and defaults.
    pub fn new(state_dir: impl Into<PathBuf>, owner: impl Into<String>) -> Self {
        Self {
            state_dir: state_dir.into(),
            runtime: PathBuf::from("/usr/bin/crun"),
            owner: owner.into(),
            bridge: "rnr-br0".into(),
            subnet: "10.231.0.0/16".into(),
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            proc_root: PathBuf::from("/proc"),
            userns: false,
            uid_base: 1_000_000_000,
            disk_mib: Some(1024),
            disk: DiskMode::Auto,
            disk_pool_gib: 64,
            agent: None,
        }
    }
}

/// Where machines' writable layers (overlay upper dirs) live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DiskMode {
    /// [`DiskMode::Btrfs`] when the host supports it (the kernel has btrfs, and
    /// `state_dir` is on btrfs or mkfs.btrfs and loop devices are available), else
    /// [`DiskMode::Tmpfs`] with a warning.
    #[default]
    Auto,
    /// One btrfs subvolume per machine with a qgroup limit: a real disk quota; opening the
    /// driver fails if btrfs cannot be had.
    Btrfs,
    /// One tmpfs per machine, counted against the machine's memory limit: a full disk
    /// means an OOM-killed process, not a write error.
    Tmpfs,
}

impl std::str::FromStr for DiskMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "btrfs" => Ok(Self::Btrfs),
            "tmpfs" => Ok(Self::Tmpfs),
            _ => Err(format!("disk mode {s:?} is not one of: auto, btrfs, tmpfs")),
        }
    }
}

impl std::fmt::Display for DiskMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Btrfs => "btrfs",
            Self::Tmpfs => "tmpfs",
        })
    }
}

pub(crate) fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

/// Checks that this host can run the native driver with `cfg`: root, the runtime, overlayfs,
/// iproute2, iptables and a cgroup hierarchy. The error says what is missing, so that a
/// platform choosing its driver automatically can log why it fell back.
pub fn preflight(cfg: &NativeConfig) -> NResult<()> {
    let missing = |what: String| NativeError::other("preflight", what);
    // SAFETY: geteuid(2) has no arguments and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(missing("not running as root".into()));
    }
    let ok = std::process::Command::new(&cfg.runtime)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        return Err(missing(format!(
            "OCI runtime {} not found or not working",
            cfg.runtime.display()
        )));
    }
    let fs_list = cfg.proc_root.join("filesystems");
    let filesystems = std::fs::read_to_string(&fs_list).unwrap_or_default();
    if !filesystems.lines().any(|l| l.ends_with("\toverlay")) {
        return Err(missing(format!(
            "no overlay filesystem in {}",
            fs_list.display()
        )));
    }
    for tool in ["ip", "iptables", "tar"] {
        if !on_path(tool) {
            return Err(missing(format!("{tool} not found on PATH")));
        }
    }
    let v1 = cfg.cgroup_root.join("memory").join("memory.limit_in_bytes");
    let v2 = cfg.cgroup_root.join("cgroup.controllers");
    if !v1.exists() && !v2.exists() {
        return Err(missing(format!(
            "no cgroup v1 memory controller or cgroup v2 hierarchy under {}",
            cfg.cgroup_root.display()
        )));
    }
    Subnet::parse(&cfg.subnet)?;
    if cfg.disk == DiskMode::Btrfs && cfg.disk_mib.is_some() {
        let parent = cfg.state_dir.ancestors().find(|a| a.exists());
        disk::available(parent.unwrap_or(Path::new("/")), &cfg.proc_root)
            .map_err(|e| missing(format!("disk mode btrfs: {e}")))?;
    }
    Ok(())
}

/// With user namespaces, root in a machine is an unprivileged host uid that must reach its
/// rootfs under `dir`: every ancestor needs the search bit for others.
fn check_traversable(dir: &Path) -> NResult<()> {
    use std::os::unix::fs::MetadataExt;
    let dir = std::fs::canonicalize(dir).map_err(|e| io_err("resolving", dir, e))?;
    for a in dir.ancestors() {
        let md = std::fs::metadata(a).map_err(|e| io_err("reading", a, e))?;
        if md.mode() & 0o001 == 0 {
            return Err(NativeError::Invalid {
                id: a.display().to_string(),
                message: format!(
                    "machines in user namespaces cannot reach {} through it: make it \
                     traversable (chmod o+x) or move the state dir",
                    dir.display()
                ),
            });
        }
    }
    Ok(())
}

/// The agent's socket in a machine's host-side directory.
const AGENT_SOCKET: &str = "agent.sock";

/// What the driver records per machine (`machines/<id>/machine.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Meta {
    id: String,
    owner: String,
    image: String,
    hostname: String,
    labels: BTreeMap<String, String>,
    created_at: u64,
    lower: PathBuf,
    ip_index: u32,
    address: Ipv4Addr,
    veth: String,
    outbound: bool,
    /// Index of the uid range (userns machines only).
    range: Option<u32>,
    init_pid: Option<i32>,
    init_start: Option<u64>,
}

/// Addresses and uid ranges in use.
#[derive(Debug, Default)]
struct Alloc {
    ips: BTreeSet<u32>,
    ranges: BTreeSet<u32>,
}

struct Inner {
    cfg: NativeConfig,
    subnet: Subnet,
    /// cgroup v1 with a cgroup2 mount beside it: hide its controllers from crun.
    hybrid: bool,
    memsw: bool,
    empty_file: PathBuf,
    alloc: Mutex<Alloc>,
    userns_fds: Mutex<HashMap<u32, Arc<OwnedFd>>>,
    counter: AtomicU64,
    /// The seccomp profile as crun compiled it (base64), once a machine has started.
    seccomp_bpf: Mutex<Option<String>>,
    /// Bridge segments known to be up (see `net`); the lock serialises creating one.
    segments: tokio::sync::Mutex<BTreeSet<u32>>,
    /// The btrfs pool of the machines' writable layers (btrfs disk mode).
    pool: Option<disk::Pool>,
}

/// A driver bound to one state directory and one owner.
#[derive(Clone)]
pub struct NativeDriver {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for NativeDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativeDriver")
            .field("cfg", &self.inner.cfg)
            .finish()
    }
}

fn io_err(what: impl std::fmt::Display, path: &Path, e: std::io::Error) -> NativeError {
    NativeError::io(format!("{what} {}", path.display()), e)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Machine and image names become paths and crun ids: keep them to a safe alphabet.
fn check_name(kind: &str, name: &str) -> NResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(NativeError::Invalid {
            id: name.to_string(),
            message: format!("{kind} name must be 1-64 of [A-Za-z0-9._-], not starting with '.'"),
        })
    }
}

fn mkdir_mode(path: &Path, mode: u32) -> NResult<()> {
    std::fs::create_dir_all(path).map_err(|e| io_err("creating", path, e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| io_err("setting permissions of", path, e))
}

fn dir_size(path: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(md) = e.metadata() else { continue };
            if md.is_dir() {
                stack.push(e.path());
            } else {
                total += md.len();
            }
        }
    }
    total
}

impl NativeDriver {
    /// Prepares the state directory, the bridge and the iptables chains, and adopts the
    /// machines already recorded in `state_dir`.
    pub async fn new(cfg: NativeConfig) -> NResult<Self> {
        let driver = Self::open(cfg)?;
        let cfg = &driver.inner.cfg;
        net::ensure_bridge(&cfg.bridge, &driver.inner.subnet).await?;
        Ok(driver)
    }

    /// Like [`NativeDriver::new`] but leaves the host's network alone: enough for image
    /// commands and for deleting machines, not for creating them.
    pub fn open(cfg: NativeConfig) -> NResult<Self> {
        let subnet = Subnet::parse(&cfg.subnet)?;
        if cfg.bridge.is_empty() || cfg.bridge.len() > 10 {
            return Err(NativeError::Invalid {
                id: cfg.bridge.clone(),
                message: "bridge name must be 1-10 bytes".into(),
            });
        }
        // 0711: a machine's root (an unprivileged host uid with user namespaces) must be
        // able to traverse to its rootfs, not to list anything.
        mkdir_mode(&cfg.state_dir, 0o711)?;
        if cfg.userns {
            check_traversable(&cfg.state_dir)?;
        }
        mkdir_mode(&cfg.state_dir.join("images"), 0o711)?;
        let run = cfg.state_dir.join("run");
        mkdir_mode(&run, 0o711)?;
        disk::mount_tmpfs_once(
            &run,
            &cfg.state_dir,
            "mode=0711,size=512m,nr_inodes=1048576",
        )?;
        for sub in ["machines", "crun", "sock"] {
            mkdir_mode(&run.join(sub), 0o711)?;
        }
        let empty_file = cfg.state_dir.join("empty");
        std::fs::write(&empty_file, b"").map_err(|e| io_err("writing", &empty_file, e))?;
        let unified = cfg.cgroup_root.join("unified").join("cgroup.controllers");
        let hybrid = unified.exists() && !cfg.cgroup_root.join("cgroup.controllers").exists();
        let memsw = cfg
            .cgroup_root
            .join("memory")
            .join("memory.memsw.limit_in_bytes")
            .exists();
        let pool = match (cfg.disk_mib, cfg.disk) {
            (None, _) | (_, DiskMode::Tmpfs) => None,
            (Some(_), DiskMode::Btrfs) => {
                Some(disk::Pool::open(&cfg.state_dir, cfg.disk_pool_gib)?)
            }
            (Some(_), DiskMode::Auto) => match disk::available(&cfg.state_dir, &cfg.proc_root) {
                Ok(()) => Some(disk::Pool::open(&cfg.state_dir, cfg.disk_pool_gib)?),
                Err(why) => {
                    tracing::warn!(
                        reason = %why,
                        "no btrfs for machine disks: writable layers are tmpfs counted \
                         against each machine's memory limit"
                    );
                    None
                }
            },
        };
        let mut alloc = Alloc::default();
        let machines = cfg.state_dir.join("run").join("machines");
        for entry in std::fs::read_dir(&machines)
            .map_err(|e| io_err("reading", &machines, e))?
            .flatten()
        {
            if let Ok(meta) = read_meta(&entry.path()) {
                alloc.ips.insert(meta.ip_index);
                if let Some(r) = meta.range {
                    alloc.ranges.insert(r);
                }
            }
        }
        Ok(Self {
            inner: Arc::new(Inner {
                cfg,
                subnet,
                hybrid,
                memsw,
                empty_file,
                alloc: Mutex::new(alloc),
                userns_fds: Mutex::new(HashMap::new()),
                counter: AtomicU64::new(0),
                segments: tokio::sync::Mutex::new(BTreeSet::new()),
                seccomp_bpf: Mutex::new(None),
                pool,
            }),
        })
    }

    /// The configuration this driver runs with.
    pub fn config(&self) -> &NativeConfig {
        &self.inner.cfg
    }

    /// The disk mode in force: [`DiskMode::Btrfs`] or [`DiskMode::Tmpfs`] (what
    /// [`DiskMode::Auto`] resolved to), or `None` without a disk quota.
    pub fn disk_mode(&self) -> Option<DiskMode> {
        match (&self.inner.pool, self.inner.cfg.disk_mib) {
            (_, None) => None,
            (Some(_), _) => Some(DiskMode::Btrfs),
            (None, _) => Some(DiskMode::Tmpfs),
        }
    }

    /// Removes host-wide resources of this driver: the bridge, the iptables chains, the
    /// parent cgroups of its machines, the `run/` tmpfs, and the btrfs disk pool's mount
    /// (its loop device then detaches itself). Machines must have been deleted first (uninstall, tests).
    pub async fn teardown(&self) {
        let cfg = &self.inner.cfg;
        if let Some(pool) = &self.inner.pool {
            pool.teardown();
        }
        disk::unmount(&cfg.state_dir.join("run"));
        net::remove_bridge(&cfg.bridge, &self.inner.subnet).await;
        let parent = self.cgroup_parent();
        let rel = parent.trim_start_matches('/');
        if let Ok(entries) = std::fs::read_dir(&cfg.cgroup_root) {
            for e in entries.flatten() {
                let dir = e.path().join(rel);
                if dir.is_dir() {
                    remove_cgroup_tree(&dir);
                }
            }
        }
    }

    /// Keeps the seccomp filter crun compiled for machine `id` (crun stores it with the
    /// container's state for its `exec`) to pass it precompiled to the next starts.
    fn keep_seccomp_bpf(&self, id: &str) {
        use base64::Engine;
        let path = self
            .inner
            .cfg
            .state_dir
            .join("run")
            .join("crun")
            .join(id)
            .join("seccomp.bpf");
        match std::fs::read(&path) {
            // A BPF program is a whole number of 8-byte instructions.
            Ok(bpf) if !bpf.is_empty() && bpf.len() % 8 == 0 => {
                let b64 = base64::engine::general_purpose::STANDARD.encode(bpf);
                *self
                    .inner
                    .seccomp_bpf
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(b64);
            }
            other => tracing::debug!(
                machine = id,
                path = %path.display(),
                outcome = ?other.map(|b| b.len()),
                "no compiled seccomp filter to reuse"
            ),
        }
    }

    /// The bridge of segment `seg`, created on first use.
    async fn ensure_segment(&self, seg: u32) -> NResult<String> {
        let cfg = &self.inner.cfg;
        let mut ready = self.inner.segments.lock().await;
        if ready.contains(&seg) {
            return Ok(net::segment_bridge(&cfg.bridge, seg));
        }
        let name = net::ensure_segment(&cfg.bridge, &self.inner.subnet, seg).await?;
        ready.insert(seg);
        Ok(name)
    }

    fn machine_dir(&self, id: &str) -> PathBuf {
        self.inner
            .cfg
            .state_dir
            .join("run")
            .join("machines")
            .join(id)
    }

    fn cgroup_parent(&self) -> String {
        let owner: String = self
            .inner
            .cfg
            .owner
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("/rnr-{owner}")
    }

    /// `crun --root <state>/crun`, in a private mount namespace prepared by `plan`; with
    /// `cgroups`, cgroup2's controllers are hidden on hybrid hosts (crun 1.8.1 refuses
    /// them when it creates or removes cgroups; `exec` does not need it, and without any
    /// plan the command is spawned without a pre-exec hook, which is cheaper).
    fn crun(&self, mut plan: sys::MountPlan, cgroups: bool) -> NResult<tokio::process::Command> {
        let cfg = &self.inner.cfg;
        if cgroups && self.inner.hybrid {
            let target = cfg.cgroup_root.join("unified").join("cgroup.controllers");
            plan.mask = Some((
                sys::cpath(&self.inner.empty_file)
                    .map_err(|e| io_err("preparing", &self.inner.empty_file, e))?,
                sys::cpath(&target).map_err(|e| io_err("preparing", &target, e))?,
            ));
        }
        let mut cmd = tokio::process::Command::new(&cfg.runtime);
        cmd.arg("--root")
            .arg(cfg.state_dir.join("run").join("crun"));
        if plan.needs_mount_ns() || plan.netns_fd.is_some() || plan.pass_fd.is_some() {
            sys::with_plan(&mut cmd, Arc::new(plan));
        }
        Ok(cmd)
    }

    fn status_of(&self, meta: &Meta) -> MachineStatus {
        match (meta.init_pid, meta.init_start) {
            (Some(pid), Some(start)) => match sys::proc_start(&self.inner.cfg.proc_root, pid) {
                Some((s, false)) if s == start => MachineStatus::Running,
                _ => MachineStatus::Stopped,
            },
            _ => MachineStatus::Creating,
        }
    }

    fn info(&self, meta: &Meta) -> MachineInfo {
        MachineInfo {
            id: meta.id.clone(),
            image: meta.image.clone(),
            status: self.status_of(meta),
            address: Some(IpAddr::V4(meta.address)),
            created_at: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(meta.created_at)),
            labels: meta.labels.clone(),
        }
    }

    /// The machine's record, if it exists and belongs to this driver's owner.
    fn own_meta(&self, id: &str) -> NResult<Meta> {
        check_name("machine", id).map_err(|_| NativeError::NotFound(id.to_string()))?;
        match read_meta(&self.machine_dir(id)) {
            Ok(m) if m.owner == self.inner.cfg.owner => Ok(m),
            _ => Err(NativeError::NotFound(id.to_string())),
        }
    }

    /// A user namespace fd with the map of uid range `range` (cached).
    fn userns_fd(&self, id: &str, range: u32) -> NResult<Arc<OwnedFd>> {
        let base = self.range_base(range);
        let mut fds = self
            .inner
            .userns_fds
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(fd) = fds.get(&base) {
            return Ok(fd.clone());
        }
        let fd = Arc::new(sys::make_userns(base).map_err(|e| {
            NativeError::io(
                format!("machine {id}: creating a user namespace for uid {base}"),
                e,
            )
        })?);
        fds.insert(base, fd.clone());
        Ok(fd)
    }

    fn range_base(&self, range: u32) -> u32 {
        self.inner.cfg.uid_base + range * 65536
    }

    fn allocate(&self, id: &str, outbound: bool) -> NResult<(u32, Option<u32>)> {
        let mut alloc = self.inner.alloc.lock().unwrap_or_else(|p| p.into_inner());
        let ip = self
            .inner
            .subnet
            .range(outbound)
            .find(|i| self.inner.subnet.usable(*i) && !alloc.ips.contains(i))
            .ok_or_else(|| NativeError::other(id, "no free address in the subnet"))?;
        let range = if self.inner.cfg.userns {
            let max = (u32::MAX - self.inner.cfg.uid_base) / 65536;
            let r = (0..max)
                .find(|r| !alloc.ranges.contains(r))
                .ok_or_else(|| NativeError::other(id, "no free uid range"))?;
            alloc.ranges.insert(r);
            Some(r)
        } else {
            None
        };
        alloc.ips.insert(ip);
        Ok((ip, range))
    }

    fn release(&self, meta: &Meta) {
        let mut alloc = self.inner.alloc.lock().unwrap_or_else(|p| p.into_inner());
        alloc.ips.remove(&meta.ip_index);
        if let Some(r) = meta.range {
            alloc.ranges.remove(&r);
        }
    }

    async fn create_inner(&self, spec: &MachineSpec, meta: &mut Meta) -> NResult<()> {
        let id = spec.id.as_str();
        let t0 = std::time::Instant::now();
        let cfg = &self.inner.cfg;
        let dir = self.machine_dir(id);
        let uid_base = meta.range.map(|r| self.range_base(r));
        let rootfs = dir.join("rootfs");
        for d in ["rootfs", "lower", "disk"] {
            let p = dir.join(d);
            std::fs::create_dir(&p).map_err(|e| io_err("creating", &p, e))?;
        }
        let mut config = oci::config(&oci::ConfigInput {
            id,
            owner: &cfg.owner,
            hostname: &spec.hostname,
            rootfs: &rootfs,
            limits: spec.limits,
            cgroups_path: &format!("{}/{id}", self.cgroup_parent()),
            memsw: self.inner.memsw,
            nofile: oci::nofile_limit(),
            uid_base,
            agent: cfg.agent.as_deref(),
        });
        let compiled = self
            .inner
            .seccomp_bpf
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(bpf) = &compiled {
            // The profile is the same for every machine: crun compiled it once already, so
            // hand it the result instead of compiling it again (a few ms per start). The
            // profile's JSON then only costs: crun keeps a copy of the config per machine
            // (16 KiB each, in memory on run/'s tmpfs) and parses it on every start.
            config["annotations"][oci::SECCOMP_BPF_ANNOTATION] = serde_json::json!(bpf);
            if let Some(linux) = config["linux"].as_object_mut() {
                linux.remove("seccomp");
            }
        }
        let config_path = dir.join("config.json");
        std::fs::write(&config_path, config.to_string())
            .map_err(|e| io_err("writing", &config_path, e))?;

        // The mount namespace crun runs in: tmpfs for the writable layer, the idmapped
        // image, the overlay. Gone from the host when crun exits; kept by the machine.
        let c = |p: &Path| sys::cpath(p).map_err(|e| io_err("preparing", p, e));
        let disk = dir.join("disk");
        let (upper, work) = (disk.join("upper"), disk.join("work"));
        let mut plan = sys::MountPlan::default();
        let t_disk = std::time::Instant::now();
        let (upper, work) = match (cfg.disk_mib, &self.inner.pool) {
            (Some(mib), Some(pool)) => pool.create(id, mib.saturating_mul(1 << 20), uid_base)?,
            (Some(mib), None) => {
                plan.tmpfs = Some(sys::TmpfsPlan {
                    target: c(&disk)?,
                    options: sys::cstr(&format!("size={mib}m,mode=755"))
                        .map_err(|e| io_err("preparing", &disk, e))?,
                    mkdirs: vec![c(&upper)?, c(&work)?],
                    owner: uid_base,
                });
                (upper, work)
            }
            (None, _) => {
                for p in [&upper, &work] {
                    std::fs::create_dir(p).map_err(|e| io_err("creating", p, e))?;
                    if let Some(b) = uid_base {
                        std::os::unix::fs::chown(p, Some(b), Some(b))
                            .map_err(|e| io_err("chowning", p, e))?;
                    }
                }
                (upper, work)
            }
        };
        let disk_time = t_disk.elapsed();
        let mut userns_fd = None;
        let lower = match meta.range {
            Some(range) => {
                let fd = self.userns_fd(id, range)?;
                let target = dir.join("lower");
                plan.idmap = Some(sys::IdmapPlan {
                    source: c(&meta.lower)?,
                    target: c(&target)?,
                    userns_fd: fd.as_raw_fd(),
                });
                userns_fd = Some(fd);
                target
            }
            None => meta.lower.clone(),
        };
        for p in [&lower, &upper, &work] {
            let s = p.to_string_lossy();
            if s.contains(',') || s.contains(':') {
                return Err(NativeError::Invalid {
                    id: id.to_string(),
                    message: format!("path {s} must not contain ',' or ':'"),
                });
            }
        }
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            work.display()
        );
        plan.overlay = Some((
            c(&rootfs)?,
            sys::cstr(&opts).map_err(|e| io_err("preparing", &rootfs, e))?,
        ));

        // The agent's listening socket, bound here (outside anything the machine can see)
        // and handed to its PID 1 as fd 3.
        let listener = match cfg.agent {
            Some(_) => {
                let path = dir.join(AGENT_SOCKET);
                if path.as_os_str().len() > 107 {
                    return Err(NativeError::Invalid {
                        id: id.to_string(),
                        message: format!(
                            "socket path {} is longer than 107 bytes: use a shorter state dir",
                            path.display()
                        ),
                    });
                }
                let l = std::os::unix::net::UnixListener::bind(&path)
                    .map_err(|e| io_err("binding", &path, e))?;
                plan.pass_fd = Some(l.as_raw_fd());
                Some(l)
            }
            None => None,
        };
        let log_path = dir.join("crun.log");
        let log = std::fs::File::create(&log_path).map_err(|e| io_err("creating", &log_path, e))?;
        let pid_file = dir.join("init.pid");
        let mut cmd = self.crun(plan, true)?;
        cmd.arg("run");
        if listener.is_some() {
            cmd.arg("--preserve-fds").arg("1");
        }
        cmd.arg("--detach")
            .arg("--bundle")
            .arg(&dir)
            .arg("--pid-file")
            .arg(&pid_file)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        let t1 = t0.elapsed();
        let status = cmd.status().await.map_err(|e| {
            NativeError::io(
                format!("machine {id}: starting {}", cfg.runtime.display()),
                e,
            )
        })?;
        drop(userns_fd);
        drop(listener);
        if !status.success() {
            return Err(NativeError::Command {
                id: id.to_string(),
                command: format!("{} run", cfg.runtime.display()),
                status: status.to_string(),
                stderr: std::fs::read_to_string(&log_path)
                    .unwrap_or_default()
                    .trim()
                    .to_string(),
            });
        }
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| NativeError::other(id, format!("no pid in {}", pid_file.display())))?;
        let (start, _) = sys::proc_start(&cfg.proc_root, pid)
            .ok_or_else(|| NativeError::other(id, format!("init (pid {pid}) exited at once")))?;
        meta.init_pid = Some(pid);
        meta.init_start = Some(start);
        write_meta(&dir, meta)?;
        // crun keeps its own copy in its state; the bundle's is dead weight on run/'s
        // tmpfs (memory) from here on.
        let _ = std::fs::remove_file(&config_path);
        if compiled.is_none() {
            self.keep_seccomp_bpf(id);
        }

        let t2 = t0.elapsed();
        // Network: veth into the segment's bridge, then address and route inside.
        let seg = self.inner.subnet.segment_of(meta.ip_index);
        let bridge = self.ensure_segment(seg).await?;
        let netns_path = cfg.proc_root.join(pid.to_string()).join("ns").join("net");
        let netns =
            std::fs::File::open(&netns_path).map_err(|e| io_err("opening", &netns_path, e))?;
        let (veth, addr) = (meta.veth.clone(), meta.address);
        let (prefix, gateway) = (
            self.inner.subnet.segment_prefix(),
            self.inner.subnet.gateway(seg),
        );
        let wired = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
            let mut s = netlink::Socket::open()?;
            s.add_veth(&veth, pid, netlink::index_of(&bridge)?)?;
            std::fs::write(format!("/sys/class/net/{veth}/brport/isolated"), "1")?;
            let t = std::time::Instant::now();
            netlink::in_netns(netns.as_raw_fd(), move || {
                netlink::configure_inside(addr, prefix, gateway)
            })?;
            Ok(t)
        })
        .await
        .map_err(|e| NativeError::other(id, e))?
        .map_err(|e| NativeError::io(format!("machine {id}: wiring its network"), e))?;
        let t3 = t0.elapsed() - wired.elapsed();
        tracing::debug!(
            machine = id,
            prepare = ?t1,
            disk = ?disk_time,
            runtime_run = ?(t2 - t1),
            host_net = ?(t3 - t2),
            inner_net = ?(t0.elapsed() - t3),
            "machine started"
        );
        Ok(())
    }

    async fn delete_inner(&self, id: &str) -> NResult<()> {
        let dir = self.machine_dir(id);
        let meta = match read_meta(&dir) {
            Ok(m) if m.owner == self.inner.cfg.owner => m,
            Ok(_) => return Ok(()),
            Err(_) => {
                // A machine whose creation never got far enough to have a record.
                return Ok(());
            }
        };
        self.teardown_machine(&meta).await
    }

    /// Stops the machine and removes everything it holds; tolerant of missing pieces.
    async fn teardown_machine(&self, meta: &Meta) -> NResult<()> {
        let id = meta.id.as_str();
        let cfg = &self.inner.cfg;
        let dir = self.machine_dir(id);
        if cfg.state_dir.join("run").join("crun").join(id).exists() {
            let mut cmd = self.crun(sys::MountPlan::default(), true)?;
            cmd.args(["delete", "-f", id])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            if let Err(e) = net::run_cmd(id, cmd, None).await {
                if cfg.state_dir.join("run").join("crun").join(id).exists() {
                    return Err(e);
                }
            }
        }
        // Should crun have lost track of it, make sure init is gone.
        if let (Some(pid), Some(start)) = (meta.init_pid, meta.init_start) {
            if matches!(sys::proc_start(&cfg.proc_root, pid), Some((s, _)) if s == start) {
                // SAFETY: kill(2) with integers; pid identity checked by its start time.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        if Path::new("/sys/class/net").join(&meta.veth).exists() {
            let veth = meta.veth.clone();
            let _ =
                tokio::task::spawn_blocking(move || netlink::Socket::open()?.del_link(&veth)).await;
        }
        if let Some(pool) = &self.inner.pool {
            pool.destroy(id)?;
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("removing", &dir, e)),
        }
        self.release(meta);
        Ok(())
    }

    fn resolve_user(&self, id: &str, pid: i32, user: Option<&str>) -> NResult<(u32, u32, String)> {
        let Some(user) = user else {
            return Ok((0, 0, "/root".into()));
        };
        let root = self.inner.cfg.proc_root.join(pid.to_string()).join("root");
        let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap_or_default();
        let group = std::fs::read_to_string(root.join("etc/group")).unwrap_or_default();
        let (u, g) = match user.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (user, None),
        };
        let bad = |what: &str| NativeError::Invalid {
            id: id.to_string(),
            message: format!("unknown {what} in user {user:?}"),
        };
        let entry = passwd
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.len() >= 6 && (f[0] == u || f[2] == u));
        let (uid, mut gid, home) = match (entry, u.parse::<u32>()) {
            (Some(f), _) => (
                f[2].parse().map_err(|_| bad("user"))?,
                f[3].parse().map_err(|_| bad("user"))?,
                f[5].to_string(),
            ),
            (None, Ok(n)) => (n, n, "/".to_string()),
            (None, Err(_)) => return Err(bad("user")),
        };
        if let Some(g) = g {
            gid = match g.parse::<u32>() {
                Ok(n) => n,
                Err(_) => group
                    .lines()
                    .map(|l| l.split(':').collect::<Vec<_>>())
                    .find(|f| f.len() >= 3 && f[0] == g)
                    .and_then(|f| f[2].parse().ok())
                    .ok_or_else(|| bad("group"))?,
            };
        }
        Ok((uid, gid, home))
    }

    async fn exec_inner(&self, id: &str, spec: ExecSpec) -> NResult<ExecHandle> {
        if spec.argv.is_empty() {
            return Err(NativeError::Invalid {
                id: id.to_string(),
                message: "argv must not be empty".into(),
            });
        }
        let meta = self.own_meta(id)?;
        if self.status_of(&meta) != MachineStatus::Running {
            return Err(NativeError::NotRunning { id: id.to_string() });
        }
        // Through the agent when the machine has one (a millisecond), else `crun exec`.
        match agent::connect(&self.machine_dir(id).join(AGENT_SOCKET), id).await {
            Ok(channel) => return channel.exec(spec).await.map_err(NativeError::from),
            Err(rnr_driver::DriverError::NoAgent(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let pid = meta.init_pid.unwrap_or(0);
        let (uid, gid, home) = self.resolve_user(id, pid, spec.user.as_deref())?;
        let mut env = vec![
            oci::DEFAULT_PATH.to_string(),
            "TERM=xterm-256color".to_string(),
            format!("HOME={home}"),
        ];
        env.extend(spec.env.iter().map(|(k, v)| format!("{k}={v}")));
        let cfg = &self.inner.cfg;
        let n = self.inner.counter.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}-{n}", std::process::id());
        let pid_file = self.machine_dir(id).join(format!("exec-{tag}.pid"));
        let mut cmd = self.crun(sys::MountPlan::default(), false)?;
        cmd.arg("exec").arg("--pid-file").arg(&pid_file);
        cmd.arg("--user").arg(format!("{uid}:{gid}"));
        if let Some(cwd) = &spec.workdir {
            cmd.arg("--cwd").arg(cwd);
        }
        for e in env {
            cmd.arg("--env").arg(e);
        }
        let socket_path = cfg
            .state_dir
            .join("run")
            .join("sock")
            .join(format!("{tag}.sock"));
        let listener = match spec.tty {
            Some(_) => {
                let _ = std::fs::remove_file(&socket_path);
                let l = tokio::net::UnixListener::bind(&socket_path)
                    .map_err(|e| io_err("binding console socket", &socket_path, e))?;
                cmd.arg("--tty").arg("--console-socket").arg(&socket_path);
                Some(l)
            }
            None => None,
        };
        cmd.arg(id).args(&spec.argv);
        cmd.stdin(if spec.tty.is_some() {
            Stdio::null()
        } else {
            Stdio::piped()
        })
        .stdout(if spec.tty.is_some() {
            Stdio::null()
        } else {
            Stdio::piped()
        })
        .stderr(Stdio::piped())
        .kill_on_drop(false);
        let spawned = cmd.spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_file(&socket_path);
                return Err(NativeError::io(
                    format!("machine {id}: spawning {} exec", cfg.runtime.display()),
                    e,
                ));
            }
        };
        let crun_pid = child.id();
        let machine = id.to_string();
        let proc_root = cfg.proc_root.clone();
        match (spec.tty, listener) {
            (Some(size), Some(listener)) => {
                let stderr_buf = Arc::new(Mutex::new(Vec::new()));
                if let Some(mut err) = child.stderr.take() {
                    let buf = stderr_buf.clone();
                    tokio::spawn(async move {
                        use tokio::io::AsyncReadExt;
                        let mut chunk = [0u8; 4096];
                        while let Ok(n) = err.read(&mut chunk).await {
                            if n == 0 {
                                break;
                            }
                            buf.lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .extend_from_slice(&chunk[..n]);
                        }
                    });
                }
                let accepted = tokio::select! {
                    a = listener.accept() => Some(a),
                    _ = child.wait() => None,
                };
                let _ = std::fs::remove_file(&socket_path);
                let stream = match accepted {
                    Some(Ok((s, _))) => s,
                    Some(Err(e)) => {
                        return Err(io_err("accepting on console socket", &socket_path, e))
                    }
                    None => {
                        // Let the stderr reader finish.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        let err = exec::text(&stderr_buf.lock().unwrap_or_else(|p| p.into_inner()));
                        return Err(NativeError::Command {
                            id: id.to_string(),
                            command: format!("{} exec --tty", cfg.runtime.display()),
                            status: "exited before handing over the pty".into(),
                            stderr: err,
                        });
                    }
                };
                let master = loop {
                    stream
                        .readable()
                        .await
                        .map_err(|e| io_err("reading console socket", &socket_path, e))?;
                    match stream.try_io(tokio::io::Interest::READABLE, || {
                        sys::recv_fd(stream.as_raw_fd())
                    }) {
                        Ok(fd) => break fd,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                        Err(e) => return Err(io_err("receiving the pty from", &socket_path, e)),
                    }
                };
                let pty = rnr_driver::stdio::Pty::new(master)
                    .map_err(|e| NativeError::io(format!("machine {id}: pty"), e))?;
                pty.resize(size)
                    .map_err(|e| NativeError::io(format!("machine {id}: resizing pty"), e))?;
                let output = rnr_driver::stdio::pty_output(machine.clone(), pty.handle());
                let stdin = Box::pin(pty.handle());
                let process = Arc::new(exec::NativeExec {
                    machine,
                    child: tokio::sync::Mutex::new(child),
                    crun_pid,
                    status: tokio::sync::OnceCell::new(),
                    pid_file,
                    proc_root,
                    pty: Some(pty),
                });
                Ok(ExecHandle {
                    stdin,
                    output,
                    process,
                })
            }
            _ => {
                let missing = || NativeError::other(id, "exec pipes missing");
                let stdin = child.stdin.take().ok_or_else(missing)?;
                let stdout = child.stdout.take().ok_or_else(missing)?;
                let stderr = child.stderr.take().ok_or_else(missing)?;
                let output = rnr_driver::stdio::pipe_output(machine.clone(), stdout, stderr);
                let process = Arc::new(exec::NativeExec {
                    machine,
                    child: tokio::sync::Mutex::new(child),
                    crun_pid,
                    status: tokio::sync::OnceCell::new(),
                    pid_file,
                    proc_root,
                    pty: None,
                });
                Ok(ExecHandle {
                    stdin: Box::pin(stdin),
                    output,
                    process,
                })
            }
        }
    }

    async fn import_inner(&self, name: &str, tar: &Path) -> NResult<ImageInfo> {
        check_name("image", name)?;
        let dir = self.inner.cfg.state_dir.join("images").join(name);
        mkdir_mode(&dir, 0o755)?;
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let version = format!("r-{nanos}");
        let tmp = dir.join(format!(".tmp-{version}"));
        mkdir_mode(&tmp, 0o755)?;
        let res = net::run(
            name,
            "tar",
            &[
                "--extract",
                "--numeric-owner",
                "--preserve-permissions",
                "--xattrs",
                "--xattrs-include=*",
                "-f",
                &tar.to_string_lossy(),
                "-C",
                &tmp.to_string_lossy(),
            ],
            None,
        )
        .await;
        if let Err(e) = res {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(match e {
                NativeError::Command { stderr, .. } => NativeError::Invalid {
                    id: name.to_string(),
                    message: format!("cannot extract {}: {stderr}", tar.display()),
                },
                e => e,
            });
        }
        let size = dir_size(&tmp);
        let final_dir = dir.join(&version);
        std::fs::rename(&tmp, &final_dir).map_err(|e| io_err("renaming", &tmp, e))?;
        // Swap the `rootfs` symlink atomically.
        let link_tmp = dir.join(format!(".link-{version}"));
        std::os::unix::fs::symlink(&version, &link_tmp)
            .map_err(|e| io_err("creating", &link_tmp, e))?;
        let link = dir.join("rootfs");
        std::fs::rename(&link_tmp, &link).map_err(|e| io_err("renaming", &link_tmp, e))?;
        let info = ImageInfo {
            name: name.to_string(),
            size_bytes: Some(size),
        };
        let info_path = dir.join("info.json");
        std::fs::write(&info_path, serde_json::to_vec(&info).unwrap_or_default())
            .map_err(|e| io_err("writing", &info_path, e))?;
        self.prune_image_versions(&dir, &version);
        Ok(info)
    }

    /// Removes old versions of an image that no machine uses any more.
    fn prune_image_versions(&self, dir: &Path, keep: &str) {
        let machines = self.inner.cfg.state_dir.join("run").join("machines");
        let used: BTreeSet<PathBuf> = std::fs::read_dir(&machines)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| read_meta(&e.path()).ok())
            .map(|m| m.lower)
            .collect();
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("r-") && name != keep && !used.contains(&e.path()) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

fn read_meta(dir: &Path) -> NResult<Meta> {
    let path = dir.join("machine.json");
    let data = std::fs::read(&path).map_err(|e| io_err("reading", &path, e))?;
    serde_json::from_slice(&data).map_err(|e| NativeError::other(path.display().to_string(), e))
}

fn write_meta(dir: &Path, meta: &Meta) -> NResult<()> {
    let path = dir.join("machine.json");
    let tmp = dir.join(".machine.json.tmp");
    let data = serde_json::to_vec(meta).map_err(|e| NativeError::other(&meta.id, e))?;
    std::fs::write(&tmp, data).map_err(|e| io_err("writing", &tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| io_err("renaming", &tmp, e))
}

/// Removes a cgroup directory and its (empty) children, deepest first.
fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

#[async_trait]
impl Driver for NativeDriver {
    fn name(&self) -> &'static str {
        "native"
    }

    async fn create(&self, spec: &MachineSpec) -> Result<MachineInfo> {
        let id = spec.id.as_str();
        check_name("machine", id)?;
        check_name("image", &spec.image)
            .map_err(|_| NativeError::ImageNotFound(spec.image.clone()))?;
        let cfg = &self.inner.cfg;
        let link = cfg
            .state_dir
            .join("images")
            .join(&spec.image)
            .join("rootfs");
        let lower = std::fs::canonicalize(&link)
            .map_err(|_| NativeError::ImageNotFound(spec.image.clone()))?;
        let dir = self.machine_dir(id);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(NativeError::Invalid {
                    id: id.to_string(),
                    message: "a machine with this id already exists".into(),
                }
                .into())
            }
            Err(e) => return Err(io_err("creating", &dir, e).into()),
        }
        let (ip_index, range) = match self.allocate(id, spec.network.outbound) {
            Ok(a) => a,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e.into());
            }
        };
        let mut meta = Meta {
            id: id.to_string(),
            owner: cfg.owner.clone(),
            image: spec.image.clone(),
            hostname: spec.hostname.clone(),
            labels: spec.labels.clone(),
            created_at: now_secs(),
            lower,
            ip_index,
            address: self.inner.subnet.addr(ip_index),
            veth: net::veth_name(&cfg.state_dir.to_string_lossy(), id),
            outbound: spec.network.outbound,
            range,
            init_pid: None,
            init_start: None,
        };
        let res = match (
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711)),
            write_meta(&dir, &meta),
        ) {
            (Err(e), _) => Err(io_err("setting permissions of", &dir, e)),
            (_, Err(e)) => Err(e),
            _ => self.create_inner(spec, &mut meta).await,
        };
        if let Err(e) = res {
            if let Err(cleanup) = self.teardown_machine(&meta).await {
                tracing::warn!(machine = id, error = %cleanup, "cleanup after failed create");
            }
            return Err(e.into());
        }
        Ok(self.info(&meta))
    }

    async fn exec(&self, id: &str, spec: ExecSpec) -> Result<ExecHandle> {
        Ok(self.exec_inner(id, spec).await?)
    }

    async fn agent(&self, id: &str) -> Result<rnr_driver::AgentChannel> {
        let meta = self.own_meta(id)?;
        if self.status_of(&meta) != MachineStatus::Running {
            return Err(NativeError::NotRunning { id: id.to_string() }.into());
        }
        agent::connect(&self.machine_dir(id).join(AGENT_SOCKET), id).await
    }

    async fn inspect(&self, id: &str) -> Result<MachineInfo> {
        let meta = self.own_meta(id)?;
        Ok(self.info(&meta))
    }

    async fn delete(&self, id: &str) -> Result<()> {
        if check_name("machine", id).is_err() {
            return Ok(());
        }
        Ok(self.delete_inner(id).await?)
    }

    async fn list(&self) -> Result<Vec<MachineInfo>> {
        let machines = self.inner.cfg.state_dir.join("run").join("machines");
        let entries = std::fs::read_dir(&machines).map_err(|e| io_err("reading", &machines, e))?;
        let mut out: Vec<MachineInfo> = entries
            .flatten()
            .filter_map(|e| read_meta(&e.path()).ok())
            .filter(|m| m.owner == self.inner.cfg.owner)
            .map(|m| self.info(&m))
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    async fn import_image(&self, name: &str, rootfs_tar: &Path) -> Result<ImageInfo> {
        Ok(self.import_inner(name, rootfs_tar).await?)
    }

    async fn stats(&self, id: &str) -> Result<Option<MachineStats>> {
        self.own_meta(id)?;
        let root = &self.inner.cfg.cgroup_root;
        let rel = format!("{}/{id}", self.cgroup_parent());
        let read = |path: PathBuf| -> Option<u64> {
            std::fs::read_to_string(path).ok()?.trim().parse().ok()
        };
        let under = |controller: &str, file: &str| {
            root.join(controller)
                .join(rel.trim_start_matches('/'))
                .join(file)
        };
        // cgroup v1 (one hierarchy per controller), else the unified v2 hierarchy.
        let v1 = (
            read(under("cpuacct", "cpuacct.usage")),
            read(under("memory", "memory.usage_in_bytes")),
            read(under("pids", "pids.current")),
        );
        if let (Some(cpu_ns), Some(memory_bytes), Some(pids)) = v1 {
            return Ok(Some(MachineStats {
                cpu_ns,
                memory_bytes,
                pids,
            }));
        }
        let dir = root.join(rel.trim_start_matches('/'));
        let cpu_usec = std::fs::read_to_string(dir.join("cpu.stat"))
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("usage_usec "))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            });
        Ok(
            match (
                cpu_usec,
                read(dir.join("memory.current")),
                read(dir.join("pids.current")),
            ) {
                (Some(us), Some(memory_bytes), Some(pids)) => Some(MachineStats {
                    cpu_ns: us.saturating_mul(1000),
                    memory_bytes,
                    pids,
                }),
                _ => None,
            },
        )
    }

    async fn list_images(&self) -> Result<Vec<ImageInfo>> {
        let images = self.inner.cfg.state_dir.join("images");
        let entries = std::fs::read_dir(&images).map_err(|e| io_err("reading", &images, e))?;
        let mut out = Vec::new();
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !e.path().join("rootfs").exists() {
                continue;
            }
            let size = std::fs::read(e.path().join("info.json"))
                .ok()
                .and_then(|d| serde_json::from_slice::<ImageInfo>(&d).ok())
                .and_then(|i| i.size_bytes);
            out.push(ImageInfo {
                name,
                size_bytes: size,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

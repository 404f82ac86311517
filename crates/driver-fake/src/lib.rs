//! The fake driver: machines for fast tests of the layers above the drivers (the
//! platform's lifecycle, capacity, TTLs and reconciliation, the check queue, the terminal
//! engine, the HTTP layer), without root, a daemon or an OCI runtime.
//!
//! A machine is a process tree on the host: util-linux's `unshare` puts it in new pid,
//! mount, UTS and IPC namespaces (and a user namespace when not run by root), chrooted into a copy of its image, with the real
//! `rnr-agent init` as its PID 1 listening on a unix socket in the machine's directory
//! (handed over as fd 3, as the native driver does). Execs, terminal sessions and check
//! suites therefore go through the same agent channel and the same agent code as on real
//! drivers. What it does not do: limits (memory, CPU, pids are not enforced), a network
//! of its own (machines share the host's and report 127.0.0.1), isolation of any kind
//! from the host. It passes the conformance suite apart from the limits tests.
//!
//! Run by root it needs no user namespace, and execs may run as any user; otherwise only
//! root exists in its machines (the caller's uid mapped to 0 in a user namespace, whose
//! setgroups(2) is denied). [`FakeConfig::user_namespace`] chooses.
//!
//! Tests steer it with faults: [`FakeDriver::fail_next_create`], [`FakeDriver::crash`],
//! [`FakeDriver::vanish`], [`FakeDriver::delay_deletes`].
//!
//! Layout of `state_dir`: `images/<name>/rootfs/` (an extracted image),
//! `machines/<id>/{machine.json, agent.sock, init.log, root/}`.

use async_trait::async_trait;
use rnr_agent_proto::control::LISTEN_FD;
use rnr_driver::{
    AgentChannel, Driver, DriverError, ExecHandle, ExecSpec, ImageInfo, ImageStore, MachineInfo,
    MachineSpec, MachineStats, MachineStatus, Result,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// Where the fake driver keeps its machines and images.
#[derive(Debug, Clone)]
pub struct FakeConfig {
    pub state_dir: PathBuf,
    /// Owner recorded with every machine; `list` returns only this owner's machines.
    pub owner: String,
    /// The static `rnr-agent` binary, copied into every machine.
    pub agent: PathBuf,
    /// Host procfs (normally `/proc`).
    pub proc_root: PathBuf,
    /// Run machines in a user namespace of their own, the caller's uid mapped to root
    /// (and no other user). Needed unless the caller is root; root may ask for it too, to
    /// run machines exactly as an unprivileged caller gets them.
    pub user_namespace: bool,
}

impl FakeConfig {
    pub fn new(
        state_dir: impl Into<PathBuf>,
        owner: impl Into<String>,
        agent: impl Into<PathBuf>,
    ) -> Self {
        Self {
            state_dir: state_dir.into(),
            owner: owner.into(),
            agent: agent.into(),
            proc_root: PathBuf::from("/proc"),
            user_namespace: !is_root(),
        }
    }
}

/// What can go wrong in the fake driver; each names the machine, image or path.
#[derive(Debug, thiserror::Error)]
pub enum FakeError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("machine {id}: {message}")]
    Machine { id: String, message: String },
}

impl From<FakeError> for DriverError {
    fn from(e: FakeError) -> Self {
        match e {
            FakeError::Io { what, source } => DriverError::Io { what, source },
            FakeError::Machine { id, message } => DriverError::Backend { id, message },
        }
    }
}

fn io(what: impl std::fmt::Display, path: &Path) -> impl FnOnce(std::io::Error) -> FakeError {
    let what = format!("{what} {}", path.display());
    move |source| FakeError::Io { what, source }
}

/// What the driver records per machine.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Meta {
    id: String,
    owner: String,
    image: String,
    hostname: String,
    labels: BTreeMap<String, String>,
    created_at: u64,
    /// Host pid of the machine's `unshare`, and its start time (pid reuse).
    pid: i32,
    start: u64,
    /// A loopback address of its own: machines share the host's network, and every
    /// 127/8 address reaches it.
    address: Ipv4Addr,
}

#[derive(Debug, Default)]
struct Faults {
    failing_creates: VecDeque<String>,
    delete_delay: Duration,
}

#[derive(Debug)]
struct Inner {
    cfg: FakeConfig,
    images: FakeImages,
    faults: Mutex<Faults>,
}

/// The fake driver; cheap to clone.
#[derive(Debug, Clone)]
pub struct FakeDriver {
    inner: Arc<Inner>,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A loopback address for machine `id` (FNV-1a of the id into 127.0.0.0/8, never 127.0.0.1
/// or a network/broadcast-looking .0/.255): stable across reopened drivers, distinct
/// between the few machines a test holds.
fn loopback_address(id: &str) -> Ipv4Addr {
    let mut h: u32 = 0x811c_9dc5;
    for b in id.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    let [_, a, b, c] = h.to_be_bytes();
    Ipv4Addr::new(127, a | 0x40, b, c.clamp(2, 254))
}

fn is_root() -> bool {
    // SAFETY: geteuid(2) has no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Start time (clock ticks since boot) of `pid`, if it is alive and not a zombie.
fn start_time(proc_root: &Path, pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

async fn run(what: &str, cmd: &mut tokio::process::Command) -> std::result::Result<(), FakeError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|source| FakeError::Io {
            what: what.to_string(),
            source,
        })?;
    if out.status.success() {
        return Ok(());
    }
    Err(FakeError::Machine {
        id: what.to_string(),
        message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

impl FakeDriver {
    /// Opens (or creates) the driver's state directory; machines recorded there whose
    /// processes still run are its machines again.
    pub fn open(cfg: FakeConfig) -> Result<Self> {
        for sub in ["images", "machines"] {
            let d = cfg.state_dir.join(sub);
            std::fs::create_dir_all(&d).map_err(io("creating", &d))?;
        }
        let images = FakeImages {
            dir: cfg.state_dir.join("images"),
        };
        Ok(Self {
            inner: Arc::new(Inner {
                cfg,
                images,
                faults: Mutex::default(),
            }),
        })
    }

    fn faults(&self) -> std::sync::MutexGuard<'_, Faults> {
        self.inner.faults.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next create fails with `why`, leaving nothing behind.
    pub fn fail_next_create(&self, why: &str) {
        self.faults().failing_creates.push_back(why.to_string());
    }

    /// Every delete from now on waits this long first (a slow or stuck backend).
    pub fn delay_deletes(&self, by: Duration) {
        self.faults().delete_delay = by;
    }

    /// Machine `id` crashes: its processes end, its record stays (inspect says stopped).
    pub fn crash(&self, id: &str) {
        if let Ok(meta) = self.own_meta(id) {
            self.kill(&meta);
        }
    }

    /// Machine `id` disappears behind the platform's back, as if its host lost it.
    pub fn vanish(&self, id: &str) {
        if let Ok(meta) = self.own_meta(id) {
            self.kill(&meta);
            let _ = std::fs::remove_dir_all(self.machine_dir(id));
        }
    }

    fn machine_dir(&self, id: &str) -> PathBuf {
        self.inner.cfg.state_dir.join("machines").join(id)
    }

    fn own_meta(&self, id: &str) -> Result<Meta> {
        if !valid_name(id) {
            return Err(DriverError::NotFound(id.to_string()));
        }
        let path = self.machine_dir(id).join("machine.json");
        let meta: Option<Meta> = std::fs::read(&path)
            .ok()
            .and_then(|d| serde_json::from_slice(&d).ok());
        match meta {
            Some(m) if m.owner == self.inner.cfg.owner => Ok(m),
            _ => Err(DriverError::NotFound(id.to_string())),
        }
    }

    fn status(&self, meta: &Meta) -> MachineStatus {
        match start_time(&self.inner.cfg.proc_root, meta.pid) {
            Some(s) if s == meta.start => MachineStatus::Running,
            _ => MachineStatus::Stopped,
        }
    }

    fn info(&self, meta: &Meta) -> MachineInfo {
        MachineInfo {
            id: meta.id.clone(),
            image: meta.image.clone(),
            status: self.status(meta),
            address: Some(IpAddr::V4(meta.address)),
            created_at: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(meta.created_at)),
            labels: meta.labels.clone(),
        }
    }

    fn kill(&self, meta: &Meta) {
        if self.status(meta) == MachineStatus::Running {
            // `unshare --kill-child`: its child, the machine's PID 1, dies with it, and
            // with PID 1 every process of the pid namespace.
            // SAFETY: kill(2) with integers; the pid's identity was checked by start time.
            unsafe { libc::kill(meta.pid, libc::SIGKILL) };
        }
    }

    async fn connect(&self, id: &str) -> Result<AgentChannel> {
        let meta = self.own_meta(id)?;
        if self.status(&meta) != MachineStatus::Running {
            return Err(DriverError::NotRunning {
                id: id.to_string(),
                state: "stopped".into(),
            });
        }
        let socket = self.machine_dir(id).join("agent.sock");
        let stream = tokio::net::UnixStream::connect(&socket)
            .await
            .map_err(|e| DriverError::io(format!("machine {id}: its agent"), e))?;
        Ok(AgentChannel::unix(id, stream))
    }

    async fn create_inner(
        &self,
        spec: &MachineSpec,
        dir: &Path,
    ) -> std::result::Result<Meta, FakeError> {
        let id = spec.id.as_str();
        let root = dir.join("root");
        let image_root = self.inner.images.dir.join(&spec.image).join("rootfs");
        run(
            &format!("machine {id}: copying image {}", spec.image),
            tokio::process::Command::new("cp")
                .arg("-a")
                .arg(&image_root)
                .arg(&root),
        )
        .await?;
        for d in ["dev", "proc"] {
            let p = root.join(d);
            std::fs::create_dir_all(&p).map_err(io("creating", &p))?;
        }
        let agent_dir = root.join(".rnr");
        std::fs::create_dir_all(&agent_dir).map_err(io("creating", &agent_dir))?;
        let agent = agent_dir.join("rnr-agent");
        std::fs::copy(&self.inner.cfg.agent, &agent).map_err(io("copying the agent to", &agent))?;
        let socket = dir.join("agent.sock");
        let listener =
            std::os::unix::net::UnixListener::bind(&socket).map_err(io("binding", &socket))?;
        let log_path = dir.join("init.log");
        let log = std::fs::File::create(&log_path).map_err(io("creating", &log_path))?;
        let mut cmd = std::process::Command::new("unshare");
        if self.inner.cfg.user_namespace {
            // Root needs no user namespace to run a chroot (and has every uid to run execs
            // as); anyone else becomes root inside one with their own uid mapped to 0.
            cmd.arg("--map-root-user");
        }
        // PID 1 of the new pid namespace is a host shell that mounts the host's /dev (the
        // image has no device nodes; the fake driver isolates nothing anyway) and the new
        // namespace's /proc into the copy, then becomes the agent's init in a chroot.
        cmd.args([
            "--pid",
            "--fork",
            "--kill-child",
            "--mount",
            "--uts",
            "--ipc",
        ])
        .args(["--propagation", "private", "/bin/sh", "-c"])
        .arg(
            "mount --rbind /dev \"$1/dev\" && mount -t proc proc \"$1/proc\" && \
                 exec chroot \"$1\" \"$2\" init --hostname \"$3\"",
        )
        .arg("sh")
        .arg(&root)
        .arg(rnr_driver::AGENT_PATH)
        .arg(&spec.hostname)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log));
        let fd = listener.as_raw_fd();
        // SAFETY: between fork and exec the hook only calls dup2(2) or fcntl(2), which are
        // async-signal-safe, on a descriptor that stays open in the parent until spawn
        // returns.
        unsafe {
            cmd.pre_exec(move || {
                // The listener may itself be fd 3 (the lowest free number when it was
                // bound): dup2 onto itself would keep its close-on-exec flag, and init
                // would start without its socket. Clear the flag instead.
                let handed = if fd == LISTEN_FD {
                    libc::fcntl(fd, libc::F_SETFD, 0)
                } else {
                    libc::dup2(fd, LISTEN_FD)
                };
                if handed < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|source| FakeError::Io {
            what: format!("machine {id}: starting unshare"),
            source,
        })?;
        drop(listener);
        let pid = child.id() as i32;
        let start =
            start_time(&self.inner.cfg.proc_root, pid).ok_or_else(|| FakeError::Machine {
                id: id.to_string(),
                message: format!(
                    "unshare exited at once: {}",
                    std::fs::read_to_string(&log_path)
                        .unwrap_or_default()
                        .trim()
                ),
            })?;
        // Reaped here when it ends, so it never lingers as a zombie under this process.
        std::thread::spawn(move || {
            let _ = child.wait();
        });
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Ok(Meta {
            address: loopback_address(id),
            id: id.to_string(),
            owner: self.inner.cfg.owner.clone(),
            image: spec.image.clone(),
            hostname: spec.hostname.clone(),
            labels: spec.labels.clone(),
            created_at: now,
            pid,
            start,
        })
    }
}

#[async_trait]
impl Driver for FakeDriver {
    fn name(&self) -> &'static str {
        "fake"
    }

    async fn create(&self, spec: &MachineSpec) -> Result<MachineInfo> {
        let id = spec.id.as_str();
        if !valid_name(id) {
            return Err(DriverError::Invalid {
                id: id.to_string(),
                message: "machine name must be 1-64 of [A-Za-z0-9._-]".into(),
            });
        }
        if !valid_name(&spec.image)
            || !self
                .inner
                .images
                .dir
                .join(&spec.image)
                .join("rootfs")
                .is_dir()
        {
            return Err(DriverError::ImageNotFound(spec.image.clone()));
        }
        if let Some(why) = self.faults().failing_creates.pop_front() {
            return Err(DriverError::backend(id, why));
        }
        let dir = self.machine_dir(id);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(DriverError::Invalid {
                    id: id.to_string(),
                    message: "a machine with this id already exists".into(),
                })
            }
            Err(e) => return Err(io("creating", &dir)(e).into()),
        }
        let meta = match self.create_inner(spec, &dir).await {
            Ok(m) => m,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e.into());
            }
        };
        let path = dir.join("machine.json");
        std::fs::write(&path, serde_json::to_vec(&meta).unwrap_or_default())
            .map_err(io("writing", &path))?;
        Ok(self.info(&meta))
    }

    async fn exec(&self, id: &str, spec: ExecSpec) -> Result<ExecHandle> {
        self.connect(id).await?.exec(spec).await
    }

    async fn agent(&self, id: &str) -> Result<AgentChannel> {
        self.connect(id).await
    }

    async fn inspect(&self, id: &str) -> Result<MachineInfo> {
        Ok(self.info(&self.own_meta(id)?))
    }

    async fn delete(&self, id: &str) -> Result<()> {
        let delay = self.faults().delete_delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let Ok(meta) = self.own_meta(id) else {
            return Ok(());
        };
        self.kill(&meta);
        let dir = self.machine_dir(id);
        tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&dir))
            .await
            .map_err(|e| DriverError::backend(id, e))?
            .or_else(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Ok(()),
                _ => Err(DriverError::io(
                    format!("machine {id}: removing its files"),
                    e,
                )),
            })
    }

    async fn list(&self) -> Result<Vec<MachineInfo>> {
        let dir = self.inner.cfg.state_dir.join("machines");
        let mut out: Vec<MachineInfo> = std::fs::read_dir(&dir)
            .map_err(io("reading", &dir))
            .map_err(DriverError::from)?
            .flatten()
            .filter_map(|e| self.own_meta(&e.file_name().to_string_lossy()).ok())
            .map(|m| self.info(&m))
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    async fn stats(&self, id: &str) -> Result<Option<MachineStats>> {
        let meta = self.own_meta(id)?;
        if self.status(&meta) != MachineStatus::Running {
            return Ok(None);
        }
        let proc_root = &self.inner.cfg.proc_root;
        // SAFETY: sysconf with a constant name.
        let tick_ns = 1_000_000_000
            / u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
                .unwrap_or(100)
                .max(1);
        let mut stats = MachineStats {
            cpu_ns: 0,
            memory_bytes: 0,
            pids: 0,
        };
        for pid in rnr_driver::process::descendants(proc_root, meta.pid) {
            let dir = proc_root.join(pid.to_string());
            if let Ok(stat) = std::fs::read_to_string(dir.join("stat")) {
                let fields: Vec<&str> = stat
                    .rsplit_once(')')
                    .map(|(_, r)| r.split_whitespace().collect())
                    .unwrap_or_default();
                let ticks = |i: usize| {
                    fields
                        .get(i)
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(0)
                };
                // utime, stime and the children's it waited for (cutime, cstime): stat's
                // fields 14-17, 11-14 after the name. Execs that ended count through init.
                stats.cpu_ns += (ticks(11) + ticks(12) + ticks(13) + ticks(14)) * tick_ns;
            }
            if let Ok(status) = std::fs::read_to_string(dir.join("status")) {
                for line in status.lines() {
                    let value = |l: &str| {
                        l.split_whitespace()
                            .nth(1)
                            .and_then(|v| v.parse::<u64>().ok())
                            .unwrap_or(0)
                    };
                    if line.starts_with("VmRSS:") {
                        stats.memory_bytes += value(line) * 1024;
                    } else if line.starts_with("Threads:") {
                        stats.pids += value(line);
                    }
                }
            }
        }
        Ok(Some(stats))
    }

    fn images(&self) -> &dyn ImageStore {
        &self.inner.images
    }
}

/// Images as extracted root filesystems in `images/<name>/rootfs`.
#[derive(Debug)]
struct FakeImages {
    dir: PathBuf,
}

#[async_trait]
impl ImageStore for FakeImages {
    async fn import(&self, name: &str, rootfs_tar: &Path) -> Result<ImageInfo> {
        if !valid_name(name) {
            return Err(DriverError::Invalid {
                id: name.to_string(),
                message: "image name must be 1-64 of [A-Za-z0-9._-]".into(),
            });
        }
        let dir = self.dir.join(name);
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let tmp = self.dir.join(format!(".tmp-{name}-{nanos}"));
        let rootfs = tmp.join("rootfs");
        std::fs::create_dir_all(&rootfs).map_err(io("creating", &rootfs))?;
        let mut tar = tokio::process::Command::new("tar");
        tar.arg("-x")
            .arg("-f")
            .arg(rootfs_tar)
            .arg("-C")
            .arg(&rootfs);
        if !is_root() {
            // Device nodes and foreign owners cannot be made without root; the fake
            // driver's machines do not need them.
            tar.args(["--no-same-owner", "--exclude=./dev/*"]);
        }
        if let Err(e) = run(
            &format!("image {name}: extracting {}", rootfs_tar.display()),
            &mut tar,
        )
        .await
        {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(DriverError::Invalid {
                id: name.to_string(),
                message: e.to_string(),
            });
        }
        // Replace: the old version is renamed aside first, so the name is never half there.
        let old = self.dir.join(format!(".old-{name}-{nanos}"));
        let had = std::fs::rename(&dir, &old).is_ok();
        std::fs::rename(&tmp, &dir).map_err(io("renaming", &tmp))?;
        if had {
            let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(old)).await;
        }
        Ok(ImageInfo {
            name: name.to_string(),
            size_bytes: None,
        })
    }

    async fn list(&self) -> Result<Vec<ImageInfo>> {
        let mut out: Vec<ImageInfo> = std::fs::read_dir(&self.dir)
            .map_err(io("reading", &self.dir))
            .map_err(DriverError::from)?
            .flatten()
            .filter(|e| e.path().join("rootfs").is_dir())
            .filter_map(|e| e.file_name().to_str().map(String::from))
            .filter(|n| !n.starts_with('.'))
            .map(|name| ImageInfo {
                name,
                size_bytes: None,
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn remove(&self, name: &str) -> Result<()> {
        let dir = self.dir.join(name);
        if !valid_name(name) || !dir.join("rootfs").is_dir() {
            return Err(DriverError::ImageNotFound(name.to_string()));
        }
        // Machines run from copies: removing the image never touches them.
        std::fs::remove_dir_all(&dir)
            .map_err(io("removing", &dir))
            .map_err(DriverError::from)
    }
}

//! The VM driver: every machine a QEMU microVM with a kernel of its own (Debian's), for
//! the exercises a container cannot hold (disks and LVM, kernel modules, Docker, sysctls).
//!
//! * **Boot**: `-M microvm` with direct kernel boot, no PCI, no firmware detours, a
//!   minimal initramfs of the project's own (`boot`), the agent as the VM's init
//!   (`rnr-agent vm-init`, then `rnr-agent init` in the learner's pid namespace).
//! * **Disks**: the image as a raw ext4 once (`images`); per machine a qcow2 overlay whose
//!   virtual size is the disk quota, and blank disks on request ([`DISKS_LABEL`]).
//! * **Agent**: over one virtio-serial port, multiplexed (`mux`); exec, check suites and
//!   terminal sessions are the agent channel's framed ones, unchanged.
//! * **Network**: a tap per VM on bridges and iptables chains of the native driver's kind
//!   (`rnr_driver_native::net`, built on `rnr_driver::netguard`): no machine reaches
//!   another, the host or the API; only the outbound half is NATed out, filtered as a
//!   container's (no metadata service, private ranges or SMTP; new connections
//!   rate-limited). Each tap is pinned to its VM's MAC and IPv4 address in the bridge's
//!   nftables table from before it is up until the VM is deleted or ends: whatever its
//!   root forges with raw sockets (other sources, ARP for another address, IPv6, other
//!   protocols) is dropped as it enters the bridge.
//! * **Confinement**: QEMU starts in a mount namespace whose root holds the system's /usr
//!   read-only, a few device nodes and the machine's own files, as an unprivileged user
//!   (group kvm), under QEMU's seccomp sandbox with every knob denied, in a cgroup capping
//!   its CPU.
//! * **Lifecycle**: QEMU's pid and start time are recorded, so a restarted driver adopts
//!   the VMs still running; a reboot inside the VM resets it in place (same process, same
//!   disks) and the agent announces its new boot to the host.

mod boot;
mod config;
mod error;
mod images;
mod machine;
mod mux;
mod sys;

pub use config::{kvm_usable, preflight, Accel, VmConfig};
pub use error::{VResult, VmError};
pub use machine::DISKS_LABEL;

use async_trait::async_trait;
use machine::{Cgroups, Launch, Meta};
use rnr_driver::netguard;
use rnr_driver::{
    AgentChannel, Driver, ExecHandle, ExecRequest, ExecSpec, ImageStore, MachineInfo, MachineSpec,
    MachineStats, MachineStatus, Result,
};
use rnr_driver_native::net::{self, Subnet};
use std::collections::{BTreeSet, HashMap};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// Deletes the pin of machine `m`'s tap on the platform's `bridge`; a missing one is fine.
fn unpin(bridge: &str, m: &Meta) -> std::io::Result<()> {
    net::unpin_port(bridge, &m.tap, machine::mac_bytes(m.index), m.address)
}

/// A driver bound to one state directory and one owner.
#[derive(Clone)]
pub struct VmDriver {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: VmConfig,
    subnet: Subnet,
    images: images::Images,
    boot: boot::BootFiles,
    qemu_user: (u32, u32),
    kvm_gid: Option<u32>,
    /// Serialises address allocation.
    alloc: tokio::sync::Mutex<()>,
    segments: tokio::sync::Mutex<BTreeSet<u32>>,
    muxes: tokio::sync::Mutex<HashMap<String, Arc<mux::Mux>>>,
    /// QEMU processes this driver started, reaped by a thread each.
    children: Mutex<HashMap<String, i32>>,
}

impl std::fmt::Debug for VmDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmDriver")
            .field("cfg", &self.inner.cfg)
            .finish()
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// FNV-1a of the parts: stable names for host interfaces.
fn short_name(prefix: &str, parts: &[&str]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain([0]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{prefix}{:012x}", h & 0xffff_ffff_ffff)
}

impl VmDriver {
    /// Checks the host (see [`preflight`]), builds the boot files and brings up the bridge
    /// and its chains. A host that cannot run VMs gets an error naming what is missing.
    pub async fn new(cfg: VmConfig) -> VResult<Self> {
        preflight(&cfg)?;
        let subnet = Subnet::parse(&cfg.subnet)?;
        let qemu_user = sys::user(&cfg.user)
            .ok_or_else(|| VmError::Unavailable(format!("no user {:?}", cfg.user)))?;
        let kernel = cfg.kernel_path()?;
        let modules = cfg.modules_path(&kernel)?;
        let agent = cfg.agent.clone().unwrap_or_default();
        for d in ["machines", "images", "boot"] {
            let p = cfg.state_dir.join(d);
            std::fs::create_dir_all(&p).map_err(|e| VmError::io(p.display().to_string(), e))?;
        }
        boot::set_mode(&cfg.state_dir, 0o755)?;
        let (boot_dir, busybox) = (cfg.state_dir.join("boot"), cfg.busybox.clone());
        let boot = tokio::task::spawn_blocking(move || {
            boot::prepare(&boot_dir, &kernel, &modules, &busybox, &agent)
        })
        .await
        .map_err(|e| VmError::other("-", e))??;
        net::ensure_bridge(&cfg.bridge, &subnet).await?;
        let images = images::Images {
            dir: cfg.state_dir.join("images"),
            disk_mib: cfg.disk_mib,
        };
        let driver = Self {
            inner: Arc::new(Inner {
                kvm_gid: sys::group("kvm"),
                subnet,
                images,
                boot,
                qemu_user,
                alloc: tokio::sync::Mutex::new(()),
                segments: tokio::sync::Mutex::new(BTreeSet::new()),
                muxes: tokio::sync::Mutex::new(HashMap::new()),
                children: Mutex::new(HashMap::new()),
                cfg,
            }),
        };
        // VMs that ended while no driver watched them (one in creation has no pid yet).
        for m in driver.metas().iter().filter(|m| m.pid > 0 && !m.running()) {
            unpin(&driver.inner.cfg.bridge, m)
                .map_err(|e| VmError::io(format!("machine {}: unpinning {}", m.id, m.tap), e))?;
        }
        Ok(driver)
    }

    pub fn config(&self) -> &VmConfig {
        &self.inner.cfg
    }

    fn machine_dir(&self, id: &str) -> PathBuf {
        self.inner.cfg.state_dir.join("machines").join(id)
    }

    fn own_meta(&self, id: &str) -> VResult<Meta> {
        if images::check_name("machine", id).is_err() {
            return Err(VmError::NotFound(id.to_string()));
        }
        let meta = Meta::read(&self.machine_dir(id).join("meta.json"))
            .map_err(|_| VmError::NotFound(id.to_string()))?;
        if meta.owner != self.inner.cfg.owner {
            return Err(VmError::NotFound(id.to_string()));
        }
        Ok(meta)
    }

    fn metas(&self) -> Vec<Meta> {
        let Ok(entries) = std::fs::read_dir(self.inner.cfg.state_dir.join("machines")) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| Meta::read(&e.path().join("meta.json")).ok())
            .filter(|m| m.owner == self.inner.cfg.owner)
            .collect()
    }

    fn info(&self, m: &Meta) -> MachineInfo {
        MachineInfo {
            id: m.id.clone(),
            image: m.image.clone(),
            status: if m.running() {
                MachineStatus::Running
            } else if m.pid == 0 {
                MachineStatus::Creating
            } else {
                MachineStatus::Stopped
            },
            address: Some(m.address.into()),
            created_at: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(m.created_at)),
            labels: m.labels.clone(),
        }
    }

    /// A free address offset, in the half `outbound` asks for.
    fn pick_index(&self, outbound: bool) -> VResult<u32> {
        let used: BTreeSet<u32> = self.metas().iter().map(|m| m.index).collect();
        let s = &self.inner.subnet;
        s.range(outbound)
            .find(|i| s.usable(*i) && !used.contains(i))
            .ok_or_else(|| VmError::other("-", "no free address left in the subnet"))
    }

    /// Pins the tap of machine `m` (see [`net::pin`]).
    fn pin(&self, m: &Meta) -> VResult<()> {
        net::pin(
            &self.inner.cfg.bridge,
            &m.tap,
            machine::mac_bytes(m.index),
            m.address,
        )
        .map_err(|e| VmError::io(format!("machine {}: pinning tap {}", m.id, m.tap), e))
    }

    async fn ensure_segment(&self, seg: u32) -> VResult<String> {
        let mut known = self.inner.segments.lock().await;
        let name = net::segment_bridge(&self.inner.cfg.bridge, seg);
        if !known.contains(&seg) || !Path::new("/sys/class/net").join(&name).exists() {
            net::ensure_segment(&self.inner.cfg.bridge, &self.inner.subnet, seg).await?;
            known.insert(seg);
        }
        Ok(name)
    }

    async fn create_machine(&self, spec: &MachineSpec) -> VResult<MachineInfo> {
        images::check_name("machine", &spec.id)?;
        let cfg = &self.inner.cfg;
        let base = self.inner.images.current(&spec.image)?;
        let disks = machine::extra_disks(&spec.id, &spec.labels, cfg)?;
        if spec.limits.memory_mib < 32 {
            return Err(VmError::Invalid {
                id: spec.id.clone(),
                message: "a VM needs at least 32 MiB of memory".into(),
            });
        }
        let dir = self.machine_dir(&spec.id);
        let meta = {
            let _guard = self.inner.alloc.lock().await;
            if dir.exists() {
                return Err(VmError::Invalid {
                    id: spec.id.clone(),
                    message: "a machine of this id exists".into(),
                });
            }
            let index = self.pick_index(spec.network.outbound)?;
            std::fs::create_dir_all(dir.join("jail"))
                .map_err(|e| VmError::io(dir.display().to_string(), e))?;
            let meta = Meta {
                id: spec.id.clone(),
                owner: cfg.owner.clone(),
                image: spec.image.clone(),
                hostname: spec.hostname.clone(),
                address: self.inner.subnet.addr(index),
                index,
                outbound: spec.network.outbound,
                created_at: now_secs(),
                labels: spec.labels.clone(),
                limits: spec.limits,
                disks,
                tap: short_name("tv", &[&cfg.owner, &spec.id]),
                pid: 0,
                start: 0,
            };
            meta.write(&dir.join("meta.json"))?;
            meta
        };
        match self.start(meta, &base).await {
            Ok(info) => Ok(info),
            Err(e) => {
                let _ = self.delete_inner(&spec.id).await;
                Err(e)
            }
        }
    }

    async fn qemu_img(&self, id: &str, args: &[&str]) -> VResult<()> {
        let qemu_img = self.inner.cfg.qemu_img.to_string_lossy().into_owned();
        net::run(id, &qemu_img, args, None).await?;
        Ok(())
    }

    async fn start(&self, mut meta: Meta, base: &Path) -> VResult<MachineInfo> {
        let cfg = &self.inner.cfg;
        let id = meta.id.clone();
        let dir = self.machine_dir(&id);
        let (uid, gid) = self.inner.qemu_user;
        // The overlay names its backing file as QEMU sees it in its private root.
        let root = dir.join("root.qcow2");
        let size = format!("{}M", cfg.disk_mib);
        self.qemu_img(
            &id,
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-u",
                "-b",
                machine::IN_IMAGE,
                "-F",
                "raw",
                &root.to_string_lossy(),
                &size,
            ],
        )
        .await?;
        let mut owned = vec![root];
        for (n, mib) in meta.disks.iter().enumerate() {
            let p = dir.join(format!("disk-{n}.qcow2"));
            self.qemu_img(
                &id,
                &[
                    "create",
                    "-q",
                    "-f",
                    "qcow2",
                    &p.to_string_lossy(),
                    &format!("{mib}M"),
                ],
            )
            .await?;
            owned.push(p);
        }
        if cfg.console_log {
            let p = dir.join("console.log");
            std::fs::write(&p, b"").map_err(|e| VmError::io(p.display().to_string(), e))?;
            owned.push(p);
        }
        owned.push(dir.clone());
        for p in &owned {
            std::os::unix::fs::chown(p, Some(uid), Some(gid))
                .map_err(|e| VmError::io(format!("machine {id}: chown {}", p.display()), e))?;
        }
        boot::set_mode(&dir, 0o700)?;

        // The tap: attached to a descriptor QEMU inherits, on the segment's bridge, isolated
        // from the bridge's other ports, without IPv6 of its own, and pinned to the VM's
        // MAC and address (in the bridge's interface group before it is up: no frame
        // enters unfiltered).
        let seg = self.inner.subnet.segment_of(meta.index);
        let bridge = self.ensure_segment(seg).await?;
        let tap = sys::open_tap(&meta.tap)
            .map_err(|e| VmError::io(format!("machine {id}: creating tap {}", meta.tap), e))?;
        let group = netguard::iface_group(&cfg.bridge).to_string();
        net::run(
            &id,
            "ip",
            &["link", "set", "dev", &meta.tap, "group", &group],
            None,
        )
        .await?;
        netguard::disable_ipv6(&meta.tap)
            .map_err(|e| VmError::io(format!("machine {id}: tap {}", meta.tap), e))?;
        self.pin(&meta)?;
        for args in [
            vec![
                "link",
                "set",
                "dev",
                meta.tap.as_str(),
                "master",
                bridge.as_str(),
            ],
            vec![
                "link",
                "set",
                "dev",
                meta.tap.as_str(),
                "type",
                "bridge_slave",
                "isolated",
                "on",
            ],
            vec!["link", "set", "dev", meta.tap.as_str(), "up"],
        ] {
            net::run(&id, "ip", &args, None).await?;
        }

        let cgroups = Cgroups::of(cfg, &id);
        cgroups.create(
            &id,
            meta.limits.cpu_millis,
            meta.limits.memory_mib + cfg.kernel_overhead_mib,
        )?;
        let jail = sys::Jail {
            root: dir.join("jail"),
            binds: vec![
                (machine::IN_MACHINE.into(), dir.clone(), true),
                (machine::IN_BOOT.into(), self.inner.boot.dir.clone(), false),
                (machine::IN_IMAGE.into(), base.to_path_buf(), false),
            ],
            uid,
            gid,
            groups: self.inner.kvm_gid.into_iter().collect(),
            cgroups: cgroups.procs_files(),
        }
        .prepare();
        let args = machine::qemu_args(&Launch {
            cfg,
            meta: &meta,
            gateway: self.inner.subnet.gateway(seg),
            prefix: self.inner.subnet.segment_prefix(),
            mac: machine::mac(meta.index),
        });
        let log_path = dir.join("qemu.log");
        let log = std::fs::File::create(&log_path)
            .map_err(|e| VmError::io(log_path.display().to_string(), e))?;
        let mut cmd = std::process::Command::new(&cfg.qemu);
        cmd.args(&args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log);
        let tap_fd = tap.as_raw_fd();
        use std::os::unix::process::CommandExt;
        // SAFETY: between fork and exec the closure makes system calls only (dup2, setsid
        // and PreparedJail::enter, whose data was made before the fork).
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(tap_fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::setsid();
                jail.enter()
            });
        }
        let mut child = cmd.spawn().map_err(|e| {
            VmError::io(format!("machine {id}: starting {}", cfg.qemu.display()), e)
        })?;
        drop(tap);
        let pid = child.id() as i32;
        meta.pid = pid;
        meta.start = sys::start_time(pid).unwrap_or(0);
        meta.write(&dir.join("meta.json"))?;
        self.inner
            .children
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), pid);
        // Reaped here while this driver lives (an adopted QEMU is reaped by init; its pin
        // goes on delete or at the next driver's start). A VM that crashes loses its pin
        // at once, unless the machine is gone or made anew (another pid) meanwhile:
        // delete unpins, and the new one's pin is its own.
        let (bridge_name, meta_path) = (cfg.bridge.clone(), dir.join("meta.json"));
        std::thread::spawn(move || {
            let _ = child.wait();
            if let Ok(m) = Meta::read(&meta_path) {
                if m.pid == pid {
                    let _ = unpin(&bridge_name, &m);
                }
            }
        });

        let patience = Duration::from_secs(cfg.boot_timeout_seconds);
        let socket = dir.join("port.sock");
        match mux::Mux::connect(&id, &socket, patience).await {
            Ok(m) => {
                self.inner.muxes.lock().await.insert(id.clone(), m);
            }
            Err(why) => {
                let tail = |p: &Path| {
                    let t = std::fs::read_to_string(p).unwrap_or_default();
                    let lines: Vec<&str> = t.lines().collect();
                    lines[lines.len().saturating_sub(15)..].join("\n")
                };
                return Err(VmError::other(
                    &id,
                    format!(
                        "the VM did not come up: {why}\nqemu.log:\n{}\nconsole.log:\n{}",
                        tail(&log_path),
                        tail(&dir.join("console.log"))
                    ),
                ));
            }
        }
        Ok(self.info(&meta))
    }

    async fn delete_inner(&self, id: &str) -> VResult<()> {
        let dir = self.machine_dir(id);
        let Ok(meta) = Meta::read(&dir.join("meta.json")) else {
            if dir.exists() {
                let _ = std::fs::remove_dir_all(&dir);
            }
            return Ok(());
        };
        if meta.owner != self.inner.cfg.owner {
            return Ok(());
        }
        self.inner.muxes.lock().await.remove(id);
        if meta.running() {
            // SAFETY: kill(2) of the pid whose start time we just checked.
            unsafe { libc::kill(meta.pid, libc::SIGKILL) };
            for _ in 0..250 {
                if !meta.running() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        self.inner
            .children
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        Cgroups::of(&self.inner.cfg, id).remove();
        unpin(&self.inner.cfg.bridge, &meta)
            .map_err(|e| VmError::io(format!("machine {id}: unpinning tap {}", meta.tap), e))?;
        // The tap went with QEMU's descriptor; one left by a QEMU that never started goes.
        if Path::new("/sys/class/net").join(&meta.tap).exists() {
            let _ = net::run(id, "ip", &["link", "del", &meta.tap], None).await;
        }
        let _ = std::fs::remove_dir_all(dir.join("jail"));
        std::fs::remove_dir_all(&dir).map_err(|e| VmError::io(dir.display().to_string(), e))?;
        Ok(())
    }

    async fn channel(&self, id: &str) -> VResult<AgentChannel> {
        let meta = self.own_meta(id)?;
        if !meta.running() {
            return Err(VmError::NotRunning { id: id.to_string() });
        }
        let mut muxes = self.inner.muxes.lock().await;
        if let Some(m) = muxes.get(id).filter(|m| !m.is_dead()) {
            if let Ok(ch) = m.open() {
                return Ok(ch);
            }
        }
        // First use after a restart of the driver, or the VM rebooted: connect afresh (a
        // rebooting VM answers once its init is up again).
        muxes.remove(id);
        let patience = Duration::from_secs(self.inner.cfg.boot_timeout_seconds);
        let m = mux::Mux::connect(id, &self.machine_dir(id).join("port.sock"), patience)
            .await
            .map_err(|why| {
                VmError::Driver(rnr_driver::DriverError::Agent {
                    id: id.to_string(),
                    message: why,
                })
            })?;
        let ch = m.open().map_err(|why| VmError::other(id, why))?;
        muxes.insert(id.to_string(), m);
        Ok(ch)
    }

    /// Processes and threads in the learner's cgroup, as the VM's own kernel counts them.
    async fn guest_pids(&self, id: &str) -> VResult<u64> {
        let ch = self.channel(id).await?;
        let mut spec = ExecSpec::new(["/bin/sh", "-c", "cat /sys/fs/cgroup/machine/pids.current"]);
        spec.workdir = Some("/".into());
        let req = ExecRequest::new(spec.clone(), Duration::from_secs(10));
        let handle = ch.exec(spec).await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let out = rnr_driver::collect_handle(handle, req, deadline).await?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|_| VmError::other(id, "the VM did not tell its pids count"))
    }

    /// Removes the bridge, its chains and this owner's cgroup parents (tests; an operator
    /// retiring the driver). Machines must be deleted first.
    pub async fn teardown(&self) {
        net::remove_bridge(&self.inner.cfg.bridge, &self.inner.subnet).await;
        let probe = Cgroups::of(&self.inner.cfg, "x");
        for (_, d) in probe.dirs {
            if let Some(parent) = d.parent() {
                let _ = std::fs::remove_dir(parent);
            }
        }
    }
}

#[async_trait]
impl Driver for VmDriver {
    fn name(&self) -> &'static str {
        "vm"
    }

    async fn create(&self, spec: &MachineSpec) -> Result<MachineInfo> {
        Ok(self.create_machine(spec).await?)
    }

    async fn exec(&self, id: &str, spec: ExecSpec) -> Result<ExecHandle> {
        let ch = self.channel(id).await?;
        ch.exec(spec).await
    }

    async fn agent(&self, id: &str) -> Result<AgentChannel> {
        Ok(self.channel(id).await?)
    }

    async fn inspect(&self, id: &str) -> Result<MachineInfo> {
        let meta = self.own_meta(id)?;
        Ok(self.info(&meta))
    }

    async fn delete(&self, id: &str) -> Result<()> {
        if images::check_name("machine", id).is_err() {
            return Ok(());
        }
        Ok(self.delete_inner(id).await?)
    }

    async fn list(&self) -> Result<Vec<MachineInfo>> {
        Ok(self.metas().iter().map(|m| self.info(m)).collect())
    }

    fn images(&self) -> &dyn ImageStore {
        &self.inner.images
    }

    async fn stats(&self, id: &str) -> Result<Option<MachineStats>> {
        let meta = self.own_meta(id)?;
        if !meta.running() {
            return Err(VmError::NotRunning { id: id.to_string() }.into());
        }
        let (cpu, mem) = Cgroups::of(&self.inner.cfg, id).usage();
        let pids = self.guest_pids(id).await?;
        Ok(match (cpu, mem) {
            (Some(cpu_ns), Some(memory_bytes)) => Some(MachineStats {
                cpu_ns,
                memory_bytes,
                pids,
            }),
            _ => None,
        })
    }
}

//! The VM driver's settings, and the preflight that says what a host lacks to run VMs.

use crate::error::{VResult, VmError};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// How QEMU runs the guest's CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Accel {
    /// Hardware virtualisation through /dev/kvm (the only one fit for learners).
    Kvm,
    /// QEMU's own emulator: no /dev/kvm needed, boots take seconds and everything runs
    /// several times slower. For development and CI on hosts whose KVM cannot run a
    /// stock kernel; never chosen by itself.
    Tcg,
}

/// Configuration of one VM driver instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct VmConfig {
    /// Where images, boot files and machines live.
    pub state_dir: PathBuf,
    /// Owner stamped on every machine (the platform instance).
    pub owner: String,
    /// The QEMU binary.
    pub qemu: PathBuf,
    /// `qemu-img`, for the machines' copy-on-write disks.
    pub qemu_img: PathBuf,
    /// The guest kernel (a Debian `vmlinuz`); `None` takes the newest
    /// `/boot/vmlinuz-*-cloud-amd64` (package linux-image-cloud-amd64).
    pub kernel: Option<PathBuf>,
    /// The kernel's modules (`/lib/modules/<version>`); `None` derives it from the kernel.
    pub modules: Option<PathBuf>,
    /// A static busybox for the initramfs (package busybox-static).
    pub busybox: PathBuf,
    /// The static `rnr-agent`: PID 1 of every VM (required).
    pub agent: Option<PathBuf>,
    pub accel: Accel,
    /// Guest memory on top of a machine's memory limit, for its kernel and page cache:
    /// the learner's processes are capped at the limit inside the VM.
    pub kernel_overhead_mib: u64,
    /// Size of each machine's root disk (its copy-on-write overlay's virtual size): the
    /// machine's disk quota.
    pub disk_mib: u64,
    /// The largest extra blank disk a machine may ask for, and how many.
    pub max_extra_disk_mib: u64,
    pub max_extra_disks: usize,
    /// The user QEMU runs as (in group kvm; made by scripts/install-deps.sh).
    pub user: String,
    /// The machines' bridge (segments get `-<n>` suffixes) and subnet: the lower half
    /// stays inside, the upper half may go out (see rnr_driver_native::net).
    pub bridge: String,
    pub subnet: String,
    /// The cgroup hierarchy's mount point on the host (QEMU's CPU cap and accounting).
    pub cgroup_root: PathBuf,
    /// Longest wait for a new machine's agent to answer.
    pub boot_timeout_seconds: u64,
    /// Keep each machine's serial console in `console.log` (bounded) for debugging boots.
    pub console_log: bool,
}

impl Default for VmConfig {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from("/var/lib/rnr/vm"),
            owner: "rnr".into(),
            qemu: PathBuf::from("/usr/bin/qemu-system-x86_64"),
            qemu_img: PathBuf::from("/usr/bin/qemu-img"),
            kernel: None,
            modules: None,
            busybox: PathBuf::from("/bin/busybox"),
            agent: None,
            accel: Accel::Kvm,
            kernel_overhead_mib: 64,
            disk_mib: 4096,
            max_extra_disk_mib: 4096,
            max_extra_disks: 4,
            user: "rnr-qemu".into(),
            bridge: "rnrvm0".into(),
            subnet: "10.232.0.0/16".into(),
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            boot_timeout_seconds: 30,
            console_log: false,
        }
    }
}

impl VmConfig {
    pub fn new(state_dir: impl Into<PathBuf>, owner: impl Into<String>) -> Self {
        Self {
            state_dir: state_dir.into(),
            owner: owner.into(),
            ..Self::default()
        }
    }

    /// The kernel to boot: the configured one, else the newest Debian cloud kernel.
    pub fn kernel_path(&self) -> VResult<PathBuf> {
        if let Some(k) = &self.kernel {
            return Ok(k.clone());
        }
        let mut found: Vec<PathBuf> = std::fs::read_dir("/boot")
            .map_err(|e| VmError::io("/boot", e))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("vmlinuz-") && n.ends_with("-cloud-amd64"))
            })
            .collect();
        found.sort_by(|a, b| version_cmp(a, b));
        found.pop().ok_or_else(|| {
            VmError::Unavailable(
                "no guest kernel: /boot has no vmlinuz-*-cloud-amd64 (apt-get install \
                 linux-image-cloud-amd64) and [vm] kernel is not set"
                    .into(),
            )
        })
    }

    /// The modules directory matching `kernel`.
    pub fn modules_path(&self, kernel: &Path) -> VResult<PathBuf> {
        if let Some(m) = &self.modules {
            return Ok(m.clone());
        }
        let name = kernel
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("vmlinuz-"))
            .ok_or_else(|| {
                VmError::Unavailable(format!(
                    "cannot tell the version of kernel {}: set [vm] modules",
                    kernel.display()
                ))
            })?;
        Ok(PathBuf::from("/lib/modules").join(name))
    }
}

/// Orders kernel file names by their version numbers (6.1.0-9 before 6.1.0-10).
fn version_cmp(a: &Path, b: &Path) -> std::cmp::Ordering {
    let key = |p: &Path| -> Vec<u64> {
        p.to_string_lossy()
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|s| s.parse().ok())
            .collect()
    };
    key(a).cmp(&key(b))
}

/// Why this host cannot run VMs as `cfg` says, naming what is missing; `Ok` when it can.
pub fn preflight(cfg: &VmConfig) -> VResult<()> {
    let missing = |what: String| Err(VmError::Unavailable(what));
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return missing("the vm driver needs root (taps, bridges, cgroups)".into());
    }
    if cfg.agent.is_none() {
        return missing("no agent: set agent_path (the agent is every VM's PID 1)".into());
    }
    for (what, p) in [
        ("QEMU (apt-get install qemu-system-x86)", &cfg.qemu),
        ("qemu-img (apt-get install qemu-utils)", &cfg.qemu_img),
        (
            "a static busybox (apt-get install busybox-static)",
            &cfg.busybox,
        ),
    ] {
        if !p.is_file() {
            return missing(format!("{what}: {} does not exist", p.display()));
        }
    }
    if crate::sys::user(&cfg.user).is_none() {
        return missing(format!(
            "no user {:?} for QEMU to run as (scripts/install-deps.sh makes it: useradd \
             --system -G kvm {})",
            cfg.user, cfg.user
        ));
    }
    let kernel = cfg.kernel_path()?;
    let modules = cfg.modules_path(&kernel)?;
    if !modules.is_dir() {
        return missing(format!(
            "the modules of {} are not at {}",
            kernel.display(),
            modules.display()
        ));
    }
    if cfg.accel == Accel::Kvm {
        kvm_usable()?;
    }
    Ok(())
}

/// Whether /dev/kvm can run a stock kernel. A KVM device that is the PVM hypervisor
/// (`kvm_pvm`, as on hosts that are themselves VMs without nested virtualisation) runs
/// only kernels built as PVM guests: Debian's stops at its first trapped instruction.
pub fn kvm_usable() -> VResult<()> {
    if std::fs::metadata("/dev/kvm").is_err() {
        return Err(VmError::Unavailable(
            "/dev/kvm does not exist: this host has no KVM (set [vm] accel = \"tcg\" to \
             emulate, slowly)"
                .into(),
        ));
    }
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return Err(VmError::Unavailable("/dev/kvm cannot be opened".into()));
    }
    if Path::new("/sys/module/kvm_pvm").exists() {
        return Err(VmError::Unavailable(
            "/dev/kvm is the PVM hypervisor (module kvm_pvm: this host is a VM without \
             nested virtualisation), which boots only PVM guest kernels, not Debian's; set \
             [vm] accel = \"tcg\" to emulate (slowly), or use a host with hardware KVM"
                .into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_kernel_first() {
        let mut v = [
            PathBuf::from("/boot/vmlinuz-6.1.0-10-cloud-amd64"),
            PathBuf::from("/boot/vmlinuz-6.1.0-9-cloud-amd64"),
            PathBuf::from("/boot/vmlinuz-6.1.0-57-cloud-amd64"),
        ];
        v.sort_by(|a, b| version_cmp(a, b));
        assert_eq!(v[2], PathBuf::from("/boot/vmlinuz-6.1.0-57-cloud-amd64"));
        let cfg = VmConfig::default();
        assert_eq!(
            cfg.modules_path(&v[2]).unwrap(),
            PathBuf::from("/lib/modules/6.1.0-57-cloud-amd64")
        );
    }
}

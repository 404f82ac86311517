//! The driver's configuration ([`NativeConfig`], [`DiskMode`]) and [`preflight`], the check
//! that a host can run it at all.

use crate::disk;
use crate::error::{NResult, NativeError};
use crate::net::Subnet;
use std::path::{Path, PathBuf};
use std::process::Stdio;

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
    /// Most ptys a machine may hold open at once (its /dev/pts's `max`; default 256, 0:
    /// no quota): every machine's terminals draw from the host's `kernel.pty.max`.
    pub max_ptys: u32,
    /// Longest a runtime call (`run`, `delete`, `list`) may take; one that takes longer is
    /// killed and fails, so a hanging runtime never holds a create, a delete or a worker
    /// for ever.
    pub runtime_timeout: std::time::Duration,
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
            max_ptys: crate::oci::DEFAULT_MAX_PTYS,
            runtime_timeout: std::time::Duration::from_secs(60),
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

/// Whether `program` is a file in one of PATH's directories.
pub(crate) fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

/// Checks the configured OCI runtime: crun or runc (whose command line and behaviour the
/// driver relies on). A missing binary is named; gVisor's `runsc` is refused, saying why,
/// rather than failing on the first machine with a flag it does not know.
pub fn check_runtime(runtime: &Path) -> NResult<()> {
    let err = |m: String| NativeError::other("runtime", m);
    let out = std::process::Command::new(runtime)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            err(format!(
                "[native] runtime: the OCI runtime {} was not found ({e}); install it \
                 (Debian package crun) or name one that is installed",
                runtime.display()
            ))
        })?;
    if !out.status.success() {
        return Err(err(format!(
            "[native] runtime: {} --version failed ({}): not a working OCI runtime",
            runtime.display(),
            out.status
        )));
    }
    let version = String::from_utf8_lossy(&out.stdout);
    if version.starts_with("runsc") {
        return Err(err(format!(
            "[native] runtime: {} is gVisor ({}), which the native driver does not run \
             yet: it takes the agent's socket as --pass-fd, not --preserve-fds, and reads \
             a machine's network interfaces when it starts, where the driver wires them \
             after; use crun or runc",
            runtime.display(),
            version.lines().next().unwrap_or("runsc").trim()
        )));
    }
    Ok(())
}

/// Checks that this host can run the native driver with `cfg`: root, the runtime, overlayfs,
/// iproute2, iptables, nftables and a cgroup hierarchy. The error says what is missing, so
/// that a platform choosing its driver automatically can log why it fell back.
pub fn preflight(cfg: &NativeConfig) -> NResult<()> {
    let missing = |what: String| NativeError::other("preflight", what);
    // SAFETY: geteuid(2) has no arguments and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(missing("not running as root".into()));
    }
    check_runtime(&cfg.runtime)?;
    let fs_list = cfg.proc_root.join("filesystems");
    let filesystems = std::fs::read_to_string(&fs_list).unwrap_or_default();
    if !filesystems.lines().any(|l| l.ends_with("\toverlay")) {
        return Err(missing(format!(
            "no overlay filesystem in {}",
            fs_list.display()
        )));
    }
    for tool in ["ip", "iptables", "nft", "tar"] {
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

#[cfg(test)]
mod runtime_tests {
    use super::*;

    #[test]
    fn a_missing_runtime_is_named() {
        let e = check_runtime(Path::new("/nonexistent/rnr-no-runsc")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/rnr-no-runsc"), "{e}");
        assert!(e.to_string().contains("not found"), "{e}");
    }

    #[test]
    fn crun_is_taken_and_gvisor_refused_saying_why() {
        // Both installed by scripts/install-deps.sh (runsc: Debian's package).
        check_runtime(Path::new("/usr/bin/crun")).expect("crun");
        let e = check_runtime(Path::new("/usr/bin/runsc"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("gVisor") && e.contains("use crun or runc"),
            "{e}"
        );
    }
}

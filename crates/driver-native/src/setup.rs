//! Opening a driver on its state directory (the layout, the `run/` tmpfs, the disk pool,
//! the machines already recorded there) and [`NativeDriver::teardown`], which removes what
//! it set up on the host.

use crate::alloc::Alloc;
use crate::config::{DiskMode, NativeConfig};
use crate::error::{io_err, NResult, NativeError};
use crate::image::Images;
use crate::layout::{check_name, check_traversable, machines_dir, mkdir_mode, read_meta};
use crate::net::{self, Subnet};
use crate::{disk, Inner, NativeDriver};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

impl NativeDriver {
    /// Prepares the state directory, the bridge and the iptables chains, and adopts the
    /// machines already recorded in `state_dir`.
    pub async fn new(cfg: NativeConfig) -> NResult<Self> {
        crate::config::check_runtime(&cfg.runtime)?;
        let driver = Self::open(cfg)?;
        let cfg = &driver.inner.cfg;
        net::ensure_bridge(&cfg.bridge, &driver.inner.subnet).await?;
        driver.sweep_leftovers().await;
        Ok(driver)
    }

    /// Removes what a crash left of machines that have no record (their creation was cut
    /// short before it wrote one, or their teardown after it removed it): a machine
    /// directory without `machine.json`, the runtime's state or a disk subvolume without a
    /// machine directory. Every other part of a machine is made after its record and
    /// removed before it, so [`NativeDriver::delete`] finds it. Only when the driver starts
    /// for `rnr serve`: then no create of this state dir is under way.
    async fn sweep_leftovers(&self) {
        let cfg = &self.inner.cfg;
        let machines = machines_dir(&cfg.state_dir);
        let recorded = |id: &str| machines.join(id).join(crate::layout::META_FILE).exists();
        for entry in std::fs::read_dir(&machines).into_iter().flatten().flatten() {
            let id = entry.file_name().to_string_lossy().into_owned();
            if !recorded(&id) {
                tracing::warn!(machine = %id, "removing a machine directory left without a record");
                if let Err(e) = std::fs::remove_dir_all(entry.path()) {
                    tracing::warn!(machine = %id, error = %e, "cannot remove it");
                }
            }
        }
        let crun = cfg.state_dir.join("run").join("crun");
        for entry in std::fs::read_dir(&crun).into_iter().flatten().flatten() {
            let id = entry.file_name().to_string_lossy().into_owned();
            if entry.path().is_dir() && !recorded(&id) && check_name("machine", &id).is_ok() {
                tracing::warn!(machine = %id, "removing runtime state left without a record");
                let cmd = self
                    .crun(crate::sys::MountPlan::default(), true)
                    .map(|mut c| {
                        c.args(["delete", "-f", &id])
                            .stdin(std::process::Stdio::null())
                            .stdout(std::process::Stdio::null())
                            .stderr(std::process::Stdio::piped());
                        c
                    });
                let r = match cmd {
                    Ok(c) => net::run_cmd_within(&id, c, None, Some(cfg.runtime_timeout))
                        .await
                        .map(|_| ()),
                    Err(e) => Err(e),
                };
                if let Err(e) = r {
                    tracing::warn!(machine = %id, error = %e, "cannot remove it");
                }
            }
        }
        if let Some(pool) = &self.inner.pool {
            for id in pool.volumes() {
                if !recorded(&id) && check_name("machine", &id).is_ok() {
                    tracing::warn!(machine = %id, "removing a disk left without a record");
                    if let Err(e) = pool.destroy(&id) {
                        tracing::warn!(machine = %id, error = %e, "cannot remove it");
                    }
                }
            }
        }
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
        let images = Images::open(&cfg.state_dir)?;
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
        let swap_limit = crate::cgroups::can_limit_swap(&cfg.cgroup_root);
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
        let machines = machines_dir(&cfg.state_dir);
        for entry in std::fs::read_dir(&machines)
            .map_err(|e| io_err("reading", &machines, e))?
            .flatten()
        {
            if let Ok(meta) = read_meta(&entry.path()) {
                alloc.adopt(&meta);
            }
        }
        let agent_dir = match &cfg.agent {
            Some(binary) => Some(
                rnr_driver::stage_agent(binary, &cfg.state_dir.join("agent")).map_err(|e| {
                    io_err(
                        format!("staging the agent {} in", binary.display()),
                        &cfg.state_dir.join("agent"),
                        e,
                    )
                })?,
            ),
            None => None,
        };
        Ok(Self {
            inner: Arc::new(Inner {
                agent_dir,
                cfg,
                subnet,
                hybrid,
                swap_limit,
                empty_file,
                alloc: Mutex::new(alloc),
                userns_fds: Mutex::new(HashMap::new()),
                counter: AtomicU64::new(0),
                segments: tokio::sync::Mutex::new(BTreeSet::new()),
                seccomp_bpf: Mutex::new(None),
                pool,
                images,
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
        self.remove_cgroup_parents();
    }
}

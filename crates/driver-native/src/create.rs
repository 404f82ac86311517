//! A machine's life on the host: creating it (record, bundle, writable layer, overlay,
//! `crun run`, network) and tearing all of that down again.

use crate::error::{io_err, NResult, NativeError};
use crate::layout::{check_name, read_meta, write_meta, Meta, AGENT_SOCKET};
use crate::{net, netlink, oci, sys, NativeDriver};
use rnr_driver::{MachineInfo, MachineSpec};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::SystemTime;

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl NativeDriver {
    /// Creates and starts machine `spec.id`; on error, removes whatever it had made.
    pub(crate) async fn create_machine(&self, spec: &MachineSpec) -> NResult<MachineInfo> {
        let id = spec.id.as_str();
        check_name("machine", id)?;
        let cfg = &self.inner.cfg;
        // Until the record names the version, a prune must not take it away.
        let images = self.inner.images.lock(false)?;
        let lower = self.inner.images.current(&spec.image)?;
        let dir = self.machine_dir(id);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(NativeError::Invalid {
                    id: id.to_string(),
                    message: "a machine with this id already exists".into(),
                })
            }
            Err(e) => return Err(io_err("creating", &dir, e)),
        }
        let (ip_index, range) = match self.allocate(id, spec.network.outbound) {
            Ok(a) => a,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        rnr_driver::fault::point("native:create:dir");
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
        let recorded = match (
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711)),
            write_meta(&dir, &meta),
        ) {
            (Err(e), _) => Err(io_err("setting permissions of", &dir, e)),
            (_, Err(e)) => Err(e),
            _ => Ok(()),
        };
        // Released before anything slow, and before a cleanup that may prune.
        drop(images);
        let res = match recorded {
            Ok(()) => {
                rnr_driver::fault::point("native:create:recorded");
                self.create_inner(spec, &mut meta).await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = res {
            if let Err(cleanup) = self.teardown_machine(&meta).await {
                tracing::warn!(machine = id, error = %cleanup, "cleanup after failed create");
            }
            return Err(e);
        }
        Ok(self.info(&meta))
    }

    /// The bridge of segment `seg`, created on first use.
    pub(crate) async fn ensure_segment(&self, seg: u32) -> NResult<String> {
        let cfg = &self.inner.cfg;
        let mut ready = self.inner.segments.lock().await;
        if ready.contains(&seg) {
            return Ok(net::segment_bridge(&cfg.bridge, seg));
        }
        let name = net::ensure_segment(&cfg.bridge, &self.inner.subnet, seg).await?;
        ready.insert(seg);
        Ok(name)
    }

    /// Everything of a start after the record exists: bundle, mounts, `crun run`, network.
    pub(crate) async fn create_inner(&self, spec: &MachineSpec, meta: &mut Meta) -> NResult<()> {
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
            swap_limit: self.inner.swap_limit,
            max_ptys: cfg.max_ptys,
            nofile: oci::nofile_limit(),
            uid_base,
            agent: self.inner.agent_dir.as_deref(),
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
        rnr_driver::fault::point("native:create:disk");
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
        let listener = match self.inner.agent_dir {
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
            .stderr(Stdio::from(log))
            // Killed if it outlives the runtime timeout; the teardown after the failure
            // removes whatever it had made.
            .kill_on_drop(true);
        let t1 = t0.elapsed();
        let starting = |e| {
            NativeError::io(
                format!("machine {id}: starting {}", cfg.runtime.display()),
                e,
            )
        };
        let mut child = cmd.spawn().map_err(starting)?;
        let status = tokio::time::timeout(cfg.runtime_timeout, child.wait())
            .await
            .map_err(|_| {
                NativeError::other(
                    id,
                    format!(
                        "`{} run` did not finish within {} s ([native] \
                         runtime_timeout_seconds) and was killed",
                        cfg.runtime.display(),
                        cfg.runtime_timeout.as_secs_f64()
                    ),
                )
            })?
            .map_err(starting)?;
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
        rnr_driver::fault::point("native:create:runtime_started");

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
        let base = cfg.bridge.clone();
        let wired = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
            net::wire_host(&base, &bridge, &veth, pid, addr)?;
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
        rnr_driver::fault::point("native:create:network");
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

    /// Deletes machine `id` if this owner has it; a machine without a record is gone already.
    pub(crate) async fn delete_inner(&self, id: &str) -> NResult<()> {
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
    pub(crate) async fn teardown_machine(&self, meta: &Meta) -> NResult<()> {
        let id = meta.id.as_str();
        let cfg = &self.inner.cfg;
        let dir = self.machine_dir(id);
        if cfg.state_dir.join("run").join("crun").join(id).exists() {
            let mut cmd = self.crun(sys::MountPlan::default(), true)?;
            cmd.args(["delete", "-f", id])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            if let Err(e) = net::run_cmd_within(id, cmd, None, Some(cfg.runtime_timeout)).await {
                if cfg.state_dir.join("run").join("crun").join(id).exists() {
                    return Err(e);
                }
            }
        }
        rnr_driver::fault::point("native:delete:runtime");
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
        if let Err(e) = net::unpin(&cfg.bridge, &meta.veth, meta.address) {
            tracing::warn!(machine = id, veth = %meta.veth, error = %e, "removing the machine's pin");
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
        self.inner.images.release(&meta.lower);
        Ok(())
    }
}

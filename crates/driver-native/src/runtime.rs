//! Running crun: the command builder (its state root, the private mount namespace a
//! [`sys::MountPlan`] prepares), the compiled seccomp filter reused across starts, and
//! what a machine's state is.

use crate::error::{io_err, NResult};
use crate::layout::{machines_dir, read_meta, Meta};
use crate::{sys, NativeDriver};
use rnr_driver::{MachineInfo, MachineStatus};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

impl NativeDriver {
    /// Keeps the seccomp filter crun compiled for machine `id` (crun stores it with the
    /// container's state for its `exec`) to pass it precompiled to the next starts.
    pub(crate) fn keep_seccomp_bpf(&self, id: &str) {
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

    /// `crun --root <state>/crun`, in a private mount namespace prepared by `plan`; with
    /// `cgroups`, cgroup2's controllers are hidden on hybrid hosts (crun 1.8.1 refuses
    /// them when it creates or removes cgroups; `exec` does not need it, and without any
    /// plan the command is spawned without a pre-exec hook, which is cheaper).
    pub(crate) fn crun(
        &self,
        mut plan: sys::MountPlan,
        cgroups: bool,
    ) -> NResult<tokio::process::Command> {
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
        if plan.needs_mount_ns()
            || plan.netns_fd.is_some()
            || plan.pass_fd.is_some()
            || plan.no_core_dumps
        {
            sys::with_plan(&mut cmd, Arc::new(plan));
        }
        Ok(cmd)
    }

    /// Whether the runtime answers: `<runtime> --root <state> list` within the runtime
    /// timeout (a hanging runtime would hang every create and delete too).
    pub(crate) async fn runtime_answers(&self) -> NResult<()> {
        let cfg = &self.inner.cfg;
        let mut cmd = tokio::process::Command::new(&cfg.runtime);
        cmd.arg("--root")
            .arg(cfg.state_dir.join("run").join("crun"))
            .arg("list")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        crate::net::run_cmd_within("runtime", cmd, None, Some(cfg.runtime_timeout)).await?;
        let machines = machines_dir(&cfg.state_dir);
        std::fs::read_dir(&machines).map_err(|e| io_err("reading", &machines, e))?;
        Ok(())
    }

    /// Running while its init lives (the same pid with the same start time), stopped once it
    /// is gone, creating until it has started.
    pub(crate) fn status_of(&self, meta: &Meta) -> MachineStatus {
        match (meta.init_pid, meta.init_start) {
            (Some(pid), Some(start)) => match sys::proc_start(&self.inner.cfg.proc_root, pid) {
                Some((s, false)) if s == start => MachineStatus::Running,
                _ => MachineStatus::Stopped,
            },
            _ => MachineStatus::Creating,
        }
    }

    /// What the platform sees of the machine of `meta`.
    pub(crate) fn info(&self, meta: &Meta) -> MachineInfo {
        MachineInfo {
            id: meta.id.clone(),
            image: meta.image.clone(),
            status: self.status_of(meta),
            address: Some(IpAddr::V4(meta.address)),
            created_at: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(meta.created_at)),
            labels: meta.labels.clone(),
        }
    }

    /// Every machine recorded for this driver's owner, by id.
    pub(crate) fn list_machines(&self) -> NResult<Vec<MachineInfo>> {
        let machines = machines_dir(&self.inner.cfg.state_dir);
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
}

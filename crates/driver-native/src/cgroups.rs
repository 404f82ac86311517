//! The machines' cgroups: where they sit (one parent per owner), what they report as a
//! machine's resource use, and removing them.

use crate::error::NResult;
use crate::NativeDriver;
use rnr_driver::MachineStats;
use std::path::{Path, PathBuf};

impl NativeDriver {
    /// The cgroup all of this owner's machines sit under (one per owner, so that
    /// [`NativeDriver::teardown`] finds them all).
    pub(crate) fn cgroup_parent(&self) -> String {
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

    /// CPU, memory and pids use of machine `id`, read from its cgroup; `None` when the
    /// hierarchy does not tell.
    pub(crate) fn cgroup_stats(&self, id: &str) -> NResult<Option<MachineStats>> {
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

    /// Removes the parent cgroup of this owner's machines from every hierarchy.
    pub(crate) fn remove_cgroup_parents(&self) {
        let cfg = &self.inner.cfg;
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

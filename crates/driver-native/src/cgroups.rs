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

/// Whether machines' swap can be capped under `cgroup_root`: cgroup v1 with swap
/// accounting (memory.memsw.*), or cgroup v2, where crun writes memory.swap.max (and skips
/// it on a kernel without swap accounting, which then has no swap to cap).
pub(crate) fn can_limit_swap(cgroup_root: &Path) -> bool {
    let v1_memsw = cgroup_root
        .join("memory")
        .join("memory.memsw.limit_in_bytes");
    let v2 = cgroup_root.join("cgroup.controllers");
    v1_memsw.exists() || v2.exists()
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

#[cfg(test)]
mod tests {
    use super::can_limit_swap;

    #[test]
    fn swap_is_limited_on_v1_with_accounting_and_on_v2() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // v1 without swap accounting: only memory.limit_in_bytes.
        std::fs::create_dir(root.join("memory")).unwrap();
        std::fs::write(root.join("memory/memory.limit_in_bytes"), "").unwrap();
        assert!(!can_limit_swap(root));
        std::fs::write(root.join("memory/memory.memsw.limit_in_bytes"), "").unwrap();
        assert!(can_limit_swap(root), "v1 with memsw");
        let v2 = tempfile::tempdir().unwrap();
        std::fs::write(v2.path().join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        assert!(can_limit_swap(v2.path()), "v2");
    }
}

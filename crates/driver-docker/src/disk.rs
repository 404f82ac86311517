//! Per-machine disk quotas on Docker: whether the engine's storage driver can honour
//! `--storage-opt size=` (HostConfig.StorageOpt), decided once at connect from `docker info`.
//!
//! btrfs (a subvolume with a qgroup limit per container) and zfs do; overlay2 does only on
//! xfs mounted with `pquota`, which `docker info` does not show, so there the first create
//! tells. Everything else (overlay2 on ext4, the usual default, vfs, fuse-overlayfs) cannot,
//! and a machine's root can then fill the engine's disk: the driver warns once and creates
//! machines without the option rather than failing every create.

use bollard::models::SystemInfo;

/// What the engine's storage driver does with `--storage-opt size=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SizeOpt {
    /// Limits each container's filesystem.
    Supported,
    /// overlay2 on xfs: supported if the filesystem is mounted with `pquota`.
    IfPquota,
    /// Refused or ignored.
    Unsupported,
}

/// The engine's storage driver and the filesystem under it, as `docker info` reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Storage {
    pub driver: String,
    pub backing_fs: Option<String>,
}

impl Storage {
    pub fn of(info: &SystemInfo) -> Self {
        let backing_fs = info
            .driver_status
            .iter()
            .flatten()
            .find(|kv| kv.first().map(String::as_str) == Some("Backing Filesystem"))
            .and_then(|kv| kv.get(1).cloned());
        Self {
            driver: info.driver.clone().unwrap_or_default(),
            backing_fs,
        }
    }

    pub fn size_opt(&self) -> SizeOpt {
        match (self.driver.as_str(), self.backing_fs.as_deref()) {
            ("btrfs" | "zfs", _) => SizeOpt::Supported,
            ("overlay2", Some("xfs")) => SizeOpt::IfPquota,
            _ => SizeOpt::Unsupported,
        }
    }

    /// The operator's warning when machines get no disk quota on this engine.
    pub fn no_quota_warning(&self) -> String {
        let on = self
            .backing_fs
            .as_deref()
            .map(|fs| format!(" on {fs}"))
            .unwrap_or_default();
        format!(
            "docker engine's storage driver is {}{on}, which cannot limit a container's disk \
             (--storage-opt size): machines get no disk quota and root in one can fill the \
             engine's disk. Run dockerd with --storage-driver btrfs on a btrfs data-root \
             (scripts/install-deps.sh starts one so when no engine runs), or overlay2 on xfs \
             mounted with pquota; docker.disk_mib = 0 turns the quota off knowingly.",
            self.driver
        )
    }
}

/// Whether an engine error is its refusal of `--storage-opt size=`.
pub(crate) fn is_size_opt_refusal(message: &str) -> bool {
    message.contains("storage-opt") || message.contains("storage opt")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(driver: &str, status: &[(&str, &str)]) -> SystemInfo {
        SystemInfo {
            driver: Some(driver.into()),
            driver_status: Some(
                status
                    .iter()
                    .map(|(k, v)| vec![k.to_string(), v.to_string()])
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn storage_drivers_are_told_apart() {
        let ext = Storage::of(&info(
            "overlay2",
            &[("Backing Filesystem", "extfs"), ("Supports d_type", "true")],
        ));
        assert_eq!(ext.backing_fs.as_deref(), Some("extfs"));
        assert_eq!(ext.size_opt(), SizeOpt::Unsupported);
        let warning = ext.no_quota_warning();
        assert!(
            warning.contains("overlay2 on extfs") && warning.contains("--storage-driver btrfs"),
            "{warning}"
        );
        let xfs = Storage::of(&info("overlay2", &[("Backing Filesystem", "xfs")]));
        assert_eq!(xfs.size_opt(), SizeOpt::IfPquota);
        let btrfs = Storage::of(&info("btrfs", &[("Build Version", "Btrfs v6.2")]));
        assert_eq!(
            (btrfs.size_opt(), btrfs.backing_fs),
            (SizeOpt::Supported, None)
        );
        assert_eq!(
            Storage::of(&SystemInfo::default()).size_opt(),
            SizeOpt::Unsupported
        );
    }

    #[test]
    fn the_engines_refusal_is_recognised() {
        // dockerd 20.10's words for overlay2 without pquota.
        assert!(is_size_opt_refusal(
            "--storage-opt is supported only for overlay over xfs with 'pquota' mount option"
        ));
        assert!(!is_size_opt_refusal("No such image: rnr/tiny:latest"));
    }
}

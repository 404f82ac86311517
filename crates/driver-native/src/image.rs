//! The images machines start from, the driver's [`ImageStore`]: `images/<name>/r-<nanos>`
//! versions extracted from rootfs tarballs, a `rootfs` link naming the current one, and
//! pruning versions that are neither current nor used by a machine.
//!
//! A machine's record names the version it runs from (`Meta::lower`), so replacing or
//! removing an image never pulls the ground from under a running machine: its version
//! stays until the last machine using it is deleted, which prunes it.
//!
//! `images/.lock` orders the moments that decide what is in use: a create holds it shared
//! from resolving the `rootfs` link until its record names the version; an import swapping
//! the link, a removal and a prune hold it exclusively. Pruned versions are first renamed
//! to `images/.gc-<name>-<version>` under the lock and deleted after it is released, so
//! that creates never wait for a large rootfs to be deleted.

use crate::error::{io_err, NResult, NativeError};
use crate::layout::{check_name, machines_dir, mkdir_mode, read_meta};
use crate::{net, sys};
use async_trait::async_trait;
use rnr_driver::{ImageInfo, ImageStore};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The image store of one state directory.
#[derive(Debug)]
pub(crate) struct Images {
    /// `images/`, canonical: machine records name versions by their canonical path, which
    /// is what a version found here is compared with.
    root: PathBuf,
    /// `run/machines/`, whose records say which versions are in use.
    machines: PathBuf,
}

/// Prefix of a pruned version waiting to be deleted, in `images/`.
const GC_PREFIX: &str = ".gc-";

impl Images {
    /// The store in `state_dir`, whose `images/` exists.
    pub(crate) fn open(state_dir: &Path) -> NResult<Self> {
        let dir = state_dir.join("images");
        let root = std::fs::canonicalize(&dir).map_err(|e| io_err("resolving", &dir, e))?;
        Ok(Self {
            root,
            machines: machines_dir(state_dir),
        })
    }

    /// Waits for the images lock: shared for a create, exclusive to change what is in use.
    pub(crate) fn lock(&self, exclusive: bool) -> NResult<sys::Flock> {
        let path = self.root.join(".lock");
        sys::Flock::take(&path, exclusive).map_err(|e| io_err("locking", &path, e))
    }

    /// The version image `name` currently names, for a machine about to start from it;
    /// hold [`Images::lock`] (shared) until the machine's record names it.
    pub(crate) fn current(&self, name: &str) -> NResult<PathBuf> {
        check_name("image", name).map_err(|_| NativeError::ImageNotFound(name.to_string()))?;
        std::fs::canonicalize(self.root.join(name).join("rootfs"))
            .map_err(|_| NativeError::ImageNotFound(name.to_string()))
    }

    /// A machine that ran from `version` is gone: prunes the version if its image has
    /// moved on (re-imported or removed) and no other machine still uses it.
    pub(crate) fn release(&self, version: &Path) {
        let Some(dir) = version.parent() else { return };
        if dir.parent() != Some(self.root.as_path()) {
            return;
        }
        // The common case, the image's current version, costs one readlink.
        if std::fs::canonicalize(dir.join("rootfs")).ok().as_deref() == Some(version) {
            return;
        }
        let Some(name) = dir.file_name().and_then(|n| n.to_str()) else {
            return;
        };
        match self.lock(true) {
            Ok(_lock) => self.prune(name),
            Err(e) => {
                tracing::warn!(image = name, error = %e, "cannot prune image versions");
                return;
            }
        }
        self.sweep();
    }

    async fn import_inner(&self, name: &str, tar: &Path) -> NResult<ImageInfo> {
        check_name("image", name)?;
        let dir = self.root.join(name);
        mkdir_mode(&dir, 0o755)?;
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let version = format!("r-{nanos}");
        let tmp = dir.join(format!(".tmp-{version}"));
        mkdir_mode(&tmp, 0o755)?;
        let res = net::run(
            name,
            "tar",
            &[
                "--extract",
                "--numeric-owner",
                "--preserve-permissions",
                "--xattrs",
                "--xattrs-include=*",
                "-f",
                &tar.to_string_lossy(),
                "-C",
                &tmp.to_string_lossy(),
            ],
            None,
        )
        .await;
        if let Err(e) = res {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(match e {
                NativeError::Command { stderr, .. } => NativeError::Invalid {
                    id: name.to_string(),
                    message: format!("cannot extract {}: {stderr}", tar.display()),
                },
                e => e,
            });
        }
        let size = dir_size(&tmp);
        let info = ImageInfo {
            name: name.to_string(),
            size_bytes: Some(size),
        };
        {
            // A version that is not yet the current one would be pruned at once.
            let _lock = self.lock(true)?;
            let final_dir = dir.join(&version);
            std::fs::rename(&tmp, &final_dir).map_err(|e| io_err("renaming", &tmp, e))?;
            // Swap the `rootfs` symlink atomically.
            let link_tmp = dir.join(format!(".link-{version}"));
            std::os::unix::fs::symlink(&version, &link_tmp)
                .map_err(|e| io_err("creating", &link_tmp, e))?;
            let link = dir.join("rootfs");
            std::fs::rename(&link_tmp, &link).map_err(|e| io_err("renaming", &link_tmp, e))?;
            let info_path = dir.join("info.json");
            std::fs::write(&info_path, serde_json::to_vec(&info).unwrap_or_default())
                .map_err(|e| io_err("writing", &info_path, e))?;
            self.prune(name);
        }
        self.sweep();
        Ok(info)
    }

    fn list_inner(&self) -> NResult<Vec<ImageInfo>> {
        let entries =
            std::fs::read_dir(&self.root).map_err(|e| io_err("reading", &self.root, e))?;
        let mut out = Vec::new();
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            // `.lock` and pruned versions are no images (names never start with a dot).
            if name.starts_with('.') || !e.path().join("rootfs").exists() {
                continue;
            }
            let size = std::fs::read(e.path().join("info.json"))
                .ok()
                .and_then(|d| serde_json::from_slice::<ImageInfo>(&d).ok())
                .and_then(|i| i.size_bytes);
            out.push(ImageInfo {
                name,
                size_bytes: size,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn remove_inner(&self, name: &str) -> NResult<()> {
        let not_found = || NativeError::ImageNotFound(name.to_string());
        check_name("image", name).map_err(|_| not_found())?;
        let dir = self.root.join(name);
        {
            let _lock = self.lock(true)?;
            let link = dir.join("rootfs");
            match std::fs::remove_file(&link) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(not_found()),
                Err(e) => return Err(io_err("removing", &link, e)),
            }
            let info = dir.join("info.json");
            if let Err(e) = std::fs::remove_file(&info) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    return Err(io_err("removing", &info, e));
                }
            }
            self.prune(name);
        }
        self.sweep();
        Ok(())
    }

    /// Versions the machines recorded in `run/machines/` start from (any owner's).
    fn used(&self) -> BTreeSet<PathBuf> {
        std::fs::read_dir(&self.machines)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| read_meta(&e.path()).ok())
            .map(|m| m.lower)
            .collect()
    }

    /// With the lock held exclusively: moves image `name`'s versions that are neither
    /// current nor in use aside for [`Images::sweep`], and removes the image's directory
    /// once it has neither a `rootfs` link nor anything else left.
    fn prune(&self, name: &str) {
        let dir = self.root.join(name);
        let current = std::fs::canonicalize(dir.join("rootfs")).ok();
        let used = self.used();
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let version = e.file_name().to_string_lossy().into_owned();
            let path = e.path();
            if !version.starts_with("r-") || current.as_ref() == Some(&path) || used.contains(&path)
            {
                continue;
            }
            let aside = self.root.join(format!("{GC_PREFIX}{name}-{version}"));
            if let Err(e) = std::fs::rename(&path, &aside) {
                tracing::warn!(path = %path.display(), error = %e, "cannot prune image version");
            }
        }
        if current.is_none() {
            // Fails, as it should, while a version is in use or an import is under way.
            let _ = std::fs::remove_dir(&dir);
        }
    }

    /// Deletes the versions [`Images::prune`] moved aside (also those a crash left).
    fn sweep(&self) {
        for e in std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
        {
            if !e.file_name().to_string_lossy().starts_with(GC_PREFIX) {
                continue;
            }
            match std::fs::remove_dir_all(e.path()) {
                Ok(()) => {}
                // Another process's sweep got there first.
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => tracing::warn!(
                    path = %e.path().display(),
                    error = %err,
                    "cannot delete pruned image version"
                ),
            }
        }
    }
}

#[async_trait]
impl ImageStore for Images {
    async fn import(&self, name: &str, rootfs_tar: &Path) -> rnr_driver::Result<ImageInfo> {
        Ok(self.import_inner(name, rootfs_tar).await?)
    }

    async fn list(&self) -> rnr_driver::Result<Vec<ImageInfo>> {
        Ok(self.list_inner()?)
    }

    async fn remove(&self, name: &str) -> rnr_driver::Result<()> {
        Ok(self.remove_inner(name)?)
    }
}

/// Bytes in the files below `path`.
fn dir_size(path: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(md) = e.metadata() else { continue };
            if md.is_dir() {
                stack.push(e.path());
            } else {
                total += md.len();
            }
        }
    }
    total
}

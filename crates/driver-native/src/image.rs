//! The images machines start from: `images/<name>/r-<nanos>` versions, extracted from a
//! rootfs tarball, the `rootfs` link naming the current one, and pruning old versions no
//! machine uses any more.

use crate::error::{io_err, NResult, NativeError};
use crate::layout::{check_name, machines_dir, mkdir_mode, read_meta};
use crate::{net, NativeDriver};
use rnr_driver::ImageInfo;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

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

impl NativeDriver {
    /// Extracts `tar` as a new version of image `name` and points its `rootfs` link there.
    pub(crate) async fn import_inner(&self, name: &str, tar: &Path) -> NResult<ImageInfo> {
        check_name("image", name)?;
        let dir = self.inner.cfg.state_dir.join("images").join(name);
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
        let final_dir = dir.join(&version);
        std::fs::rename(&tmp, &final_dir).map_err(|e| io_err("renaming", &tmp, e))?;
        // Swap the `rootfs` symlink atomically.
        let link_tmp = dir.join(format!(".link-{version}"));
        std::os::unix::fs::symlink(&version, &link_tmp)
            .map_err(|e| io_err("creating", &link_tmp, e))?;
        let link = dir.join("rootfs");
        std::fs::rename(&link_tmp, &link).map_err(|e| io_err("renaming", &link_tmp, e))?;
        let info = ImageInfo {
            name: name.to_string(),
            size_bytes: Some(size),
        };
        let info_path = dir.join("info.json");
        std::fs::write(&info_path, serde_json::to_vec(&info).unwrap_or_default())
            .map_err(|e| io_err("writing", &info_path, e))?;
        self.prune_image_versions(&dir, &version);
        Ok(info)
    }

    /// Removes old versions of an image that no machine uses any more.
    fn prune_image_versions(&self, dir: &Path, keep: &str) {
        let machines = machines_dir(&self.inner.cfg.state_dir);
        let used: BTreeSet<PathBuf> = std::fs::read_dir(&machines)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| read_meta(&e.path()).ok())
            .map(|m| m.lower)
            .collect();
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("r-") && name != keep && !used.contains(&e.path()) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }

    /// The images machines can start from (those with a `rootfs` link), by name.
    pub(crate) fn list_images_inner(&self) -> NResult<Vec<ImageInfo>> {
        let images = self.inner.cfg.state_dir.join("images");
        let entries = std::fs::read_dir(&images).map_err(|e| io_err("reading", &images, e))?;
        let mut out = Vec::new();
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !e.path().join("rootfs").exists() {
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
}

//! The VM driver's images: each root filesystem tarball becomes, once, a raw ext4 disk
//! image the size of a machine's root disk (sparse: only what the files take is
//! allocated), made with `mkfs.ext4 -d` from the extracted tree. Machines boot from a
//! qcow2 overlay of their own on top of it, so the image itself is never written.
//!
//! `images/<name>/current` → `v-<nanos>.ext4`; re-importing adds a version and moves the
//! link; a running machine holds its version's file open, so removing or replacing an image
//! never touches it.

use crate::boot::{run_mkfs, set_mode};
use crate::error::{VResult, VmError};
use async_trait::async_trait;
use rnr_driver::{ImageInfo, ImageStore, Result};
use std::path::{Path, PathBuf};

/// The image store under `dir`, whose disks are `disk_mib` large.
#[derive(Debug, Clone)]
pub struct Images {
    pub dir: PathBuf,
    pub disk_mib: u64,
}

pub(crate) fn check_name(kind: &str, name: &str) -> VResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(VmError::Invalid {
            id: name.to_string(),
            message: format!("{kind} name must be 1-64 of [A-Za-z0-9._-], not starting with '.'"),
        })
    }
}

impl Images {
    /// The disk image machines of `name` start from now.
    pub fn current(&self, name: &str) -> VResult<PathBuf> {
        check_name("image", name).map_err(|_| VmError::ImageNotFound(name.to_string()))?;
        let link = self.dir.join(name).join("current");
        let target =
            std::fs::read_link(&link).map_err(|_| VmError::ImageNotFound(name.to_string()))?;
        let path = self.dir.join(name).join(target);
        if path.is_file() {
            Ok(path)
        } else {
            Err(VmError::ImageNotFound(name.to_string()))
        }
    }

    fn import_blocking(&self, name: &str, tar: &Path) -> VResult<ImageInfo> {
        check_name("image", name)?;
        let dir = self.dir.join(name);
        std::fs::create_dir_all(&dir).map_err(|e| VmError::io(dir.display().to_string(), e))?;
        set_mode(&self.dir, 0o755)?;
        set_mode(&dir, 0o755)?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let tree = dir.join(format!(".tree-{nanos}"));
        std::fs::create_dir_all(&tree).map_err(|e| VmError::io(tree.display().to_string(), e))?;
        let cleanup = scopeguard(tree.clone());
        let out = std::process::Command::new("tar")
            .arg("-C")
            .arg(&tree)
            .args(["--numeric-owner", "-xpf"])
            .arg(tar)
            .output()
            .map_err(|e| VmError::io("running tar", e))?;
        if !out.status.success() {
            return Err(VmError::Command {
                id: name.to_string(),
                command: format!("tar -xpf {}", tar.display()),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        // Mount points the VM's init needs, whatever the tarball had.
        for d in ["dev", "proc", "sys", "run", "tmp", ".rnr"] {
            let _ = std::fs::create_dir_all(tree.join(d));
        }
        set_mode(&tree, 0o755)?;
        let file = format!("v-{nanos}.ext4");
        let image = dir.join(&file);
        run_mkfs(&image, &tree, self.disk_mib, "rnr-root")?;
        drop(cleanup);
        set_mode(&image, 0o644)?;
        let link = dir.join("current");
        let tmp_link = dir.join(format!(".current-{nanos}"));
        std::os::unix::fs::symlink(&file, &tmp_link)
            .and_then(|_| std::fs::rename(&tmp_link, &link))
            .map_err(|e| VmError::io(link.display().to_string(), e))?;
        // Older versions: running machines hold them open; the files can go.
        self.prune(name, Some(&file));
        Ok(ImageInfo {
            name: name.to_string(),
            size_bytes: allocated(&image),
        })
    }

    fn prune(&self, name: &str, keep: Option<&str>) {
        let Ok(entries) = std::fs::read_dir(self.dir.join(name)) else {
            return;
        };
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with("v-") && Some(n.as_str()) != keep {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Bytes a sparse file takes on disk.
fn allocated(p: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).ok().map(|m| m.blocks() * 512)
}

/// Removes a scratch tree when dropped.
struct ScratchTree(PathBuf);

fn scopeguard(p: PathBuf) -> ScratchTree {
    ScratchTree(p)
}

impl Drop for ScratchTree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[async_trait]
impl ImageStore for Images {
    async fn import(&self, name: &str, rootfs_tar: &Path) -> Result<ImageInfo> {
        let (me, name, tar) = (self.clone(), name.to_string(), rootfs_tar.to_path_buf());
        tokio::task::spawn_blocking(move || me.import_blocking(&name, &tar))
            .await
            .map_err(|e| VmError::other("-", format!("image import task: {e}")))?
            .map_err(Into::into)
    }

    async fn list(&self) -> Result<Vec<ImageInfo>> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Ok(out);
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Ok(p) = self.current(&name) {
                out.push(ImageInfo {
                    name,
                    size_bytes: allocated(&p),
                });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn remove(&self, name: &str) -> Result<()> {
        self.current(name)?;
        let dir = self.dir.join(name);
        std::fs::remove_dir_all(&dir).map_err(|e| VmError::io(dir.display().to_string(), e))?;
        Ok(())
    }
}

//! Scratch directories for builds, removed even when a build fails.
//!
//! debootstrap mounts /proc, /sys and sometimes /dev (bind-mounted from the host) inside
//! its target and may leave them mounted if it dies. A plain recursive delete would then
//! walk into the host's /dev, so removal first detaches every mount below the directory
//! and refuses to delete anything while one remains.

use crate::error::IoContext;
use crate::ImageError;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A fresh directory under a work dir, deleted (mounts first) when dropped.
pub(crate) struct BuildDir {
    path: PathBuf,
}

impl BuildDir {
    pub(crate) fn new(work_dir: &Path, prefix: &str) -> Result<Self, ImageError> {
        std::fs::create_dir_all(work_dir).at(work_dir)?;
        // Canonical, because mount points in /proc/self/mountinfo are canonical and are
        // matched against this path on removal.
        let work_dir = work_dir.canonicalize().at(work_dir)?;
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(&work_dir)
            .at(&work_dir)?;
        let path = dir.keep();
        Ok(Self { path })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Creates the directory that becomes the image's `/`. Mode 0755, not the scratch
    /// dir's 0700: the tar's `./` entry carries it and becomes the machine's root mode.
    pub(crate) fn make_rootfs(&self) -> Result<PathBuf, ImageError> {
        let root = self.path.join("rootfs");
        std::fs::create_dir(&root).at(&root)?;
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).at(&root)?;
        Ok(root)
    }
}

impl Drop for BuildDir {
    fn drop(&mut self) {
        remove_tree(&self.path);
    }
}

/// Detaches all mounts at or below `path`, then deletes it. Logs rather than fails: this
/// runs on drop, often while another error is already being returned.
pub(crate) fn remove_tree(path: &Path) {
    match unmount_below(path) {
        Ok(()) => {}
        Err(err) => {
            tracing::error!(path = %path.display(), %err,
                "leaving build directory in place: mounts inside it could not be removed");
            return;
        }
    }
    if let Err(err) = std::fs::remove_dir_all(path) {
        if err.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), %err, "could not remove build directory");
        }
    }
}

/// Mount points at or below `path`, deepest first.
fn mounts_below(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_mountinfo(field)))
        .filter(|mount| mount.starts_with(path))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    Ok(found)
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("");
            if let Ok(b) = u8::from_str_radix(digits, 8) {
                out.push(b);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Detaches every mount below `path` and checks none is left. Stacked mounts need several
/// passes, hence the loop.
fn unmount_below(path: &Path) -> Result<(), String> {
    for _ in 0..8 {
        let mounts = mounts_below(path).map_err(|e| format!("reading mountinfo: {e}"))?;
        if mounts.is_empty() {
            return Ok(());
        }
        for mount in &mounts {
            tracing::info!(mount = %mount.display(), "unmounting leftover build mount");
            if let Err(err) = detach(mount) {
                tracing::warn!(mount = %mount.display(), %err, "unmount failed");
            }
        }
    }
    let left = mounts_below(path).map_err(|e| format!("reading mountinfo: {e}"))?;
    if left.is_empty() {
        Ok(())
    } else {
        Err(format!("still mounted: {left:?}"))
    }
}

#[cfg(target_os = "linux")]
fn detach(mount: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(mount.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: c_path is a valid NUL-terminated string that outlives the call; umount2
    // does not retain the pointer.
    let rc = unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn detach(_mount: &Path) -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "unmounting is only implemented on Linux",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn unescapes_mountinfo_octal() {
        assert_eq!(unescape_mountinfo(r"/a\040b\011c\134d"), "/a b\tc\\d");
        assert_eq!(unescape_mountinfo(r"/plain"), "/plain");
        assert_eq!(unescape_mountinfo(r"/trailing\04"), r"/trailing\04");
    }

    #[test]
    fn removes_dir_on_drop() {
        let work = tempfile::tempdir().expect("tempdir");
        let path = {
            let dir = BuildDir::new(work.path(), "rnr-test-").expect("build dir");
            let root = dir.make_rootfs().expect("rootfs");
            std::fs::write(root.join("f"), "x").expect("write");
            dir.path().to_path_buf()
        };
        assert!(!path.exists(), "{} should be gone", path.display());
    }

    /// The reason this module exists: a bind mount left inside a build dir must be
    /// detached, not deleted through. Needs root to mount.
    #[test]
    fn unmounts_before_deleting_and_spares_mounted_files() {
        crate::tool::require_root("mount");
        let work = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        let sentinel = outside.path().join("must-survive");
        std::fs::write(&sentinel, "x").expect("write sentinel");

        let dir = BuildDir::new(work.path(), "rnr-test-").expect("build dir");
        let root = dir.make_rootfs().expect("rootfs");
        let bind = root.join("dev");
        let tmpfs = root.join("proc");
        std::fs::create_dir(&bind).expect("mkdir");
        std::fs::create_dir(&tmpfs).expect("mkdir");
        let mount = |args: &[&std::ffi::OsStr]| {
            let status = Command::new("mount").args(args).status().expect("mount");
            assert!(status.success(), "mount {args:?}");
        };
        mount(&[
            "--bind".as_ref(),
            outside.path().as_os_str(),
            bind.as_os_str(),
        ]);
        mount(&[
            "-t".as_ref(),
            "tmpfs".as_ref(),
            "rnr-test".as_ref(),
            tmpfs.as_os_str(),
        ]);
        assert_eq!(mounts_below(dir.path()).expect("mountinfo").len(), 2);
        let path = dir.path().to_path_buf();
        drop(dir);

        assert!(!path.exists(), "{} should be gone", path.display());
        assert!(sentinel.exists(), "deleted a file through a bind mount");
        assert!(mounts_below(&path).expect("mountinfo").is_empty());
    }
}

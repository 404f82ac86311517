//! Packing a root filesystem directory into the image tarball with GNU tar.
//!
//! GNU tar rather than a hand-written packer because it already gets the details right that
//! a bootable Debian tree depends on: hardlinks, setuid bits, numeric owners, long names
//! and file capabilities (ping's `security.capability`). The tarball is written beside its
//! destination and renamed into place, so a failed build never leaves half a tarball.

use crate::error::IoContext;
use crate::tool::{child_path, find_tool, for_each_line, spawn_tail_reader};
use crate::{ImageError, Progress};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const TAR_HINT: &str = "GNU tar packs images; install it with `apt-get install tar`";

/// Who owns the files in the tarball.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Owners {
    /// Numeric owners as on disk (debootstrap ran as root and set them).
    Preserve,
    /// Everything owned by root: the tiny image is assembled by whoever runs the build.
    Root,
}

/// Removes what must not be in an image (device nodes, sockets), then packs `root` into
/// `out_tar`. Reports the stage "packing" with one unit per tar entry.
pub(crate) fn pack_rootfs(
    root: &Path,
    out_tar: &Path,
    owners: Owners,
    progress: &dyn Progress,
) -> Result<(), ImageError> {
    let tar = find_gnu_tar()?;
    let entries = strip_special_files(root)?;

    let parent = match out_tar.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = out_tar
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image.tar".into());
    let partial = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".partial")
        .tempfile_in(parent)
        .at(parent)?;

    progress.stage("packing", Some(entries));
    let mut cmd = Command::new(&tar);
    cmd.arg("--create")
        .arg("--file")
        .arg(partial.path())
        .arg("--directory")
        .arg(root)
        .args([
            "--numeric-owner",
            // Belt and braces next to the unmounting in workdir: never pack a /proc.
            "--one-file-system",
            // Stable order: the same tree always gives the same listing.
            "--sort=name",
            "--xattrs",
            // Capabilities and user attributes only; a host's SELinux labels or overlay
            // `trusted.*` attributes have no business in an image.
            "--xattrs-include=security.capability",
            "--xattrs-include=user.*",
            // xattrs need PAX headers; without atime/ctime records they add no bulk.
            "--format=posix",
            "--pax-option=delete=atime,delete=ctime",
            // One line per entry on stdout, counted for progress.
            "--verbose",
        ])
        .env("PATH", child_path())
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if owners == Owners::Root {
        cmd.args(["--owner=0", "--group=0"]);
    }
    cmd.arg(".");

    let mut child = cmd.spawn().at(&tar)?;
    let stderr = child.stderr.take().map(|s| spawn_tail_reader(s, 40));
    if let Some(stdout) = child.stdout.take() {
        let mut pending = 0u64;
        for_each_line(stdout, |_| {
            // Batched: a Debian tree has ~15k entries and progress sinks may lock.
            pending += 1;
            if pending == 256 {
                progress.advance(pending);
                pending = 0;
            }
        });
        if pending > 0 {
            progress.advance(pending);
        }
    }
    let status = child.wait().at(&tar)?;
    let errors = stderr
        .and_then(|h| h.join().ok())
        .map(|t| t.join())
        .unwrap_or_default();
    if !status.success() {
        return Err(ImageError::ToolFailed {
            tool: tar.display().to_string(),
            image: out_tar.to_path_buf(),
            status: status.to_string(),
            output: errors,
        });
    }

    // The temp file is created 0600; images are not secret, and the driver may read them
    // as another user.
    std::fs::set_permissions(partial.path(), std::fs::Permissions::from_mode(0o644))
        .at(partial.path())?;
    partial
        .persist(out_tar)
        .map_err(|e| ImageError::io(out_tar, e.error))?;
    Ok(())
}

/// Finds tar and makes sure it is GNU tar: busybox or BSD tar would reject the options
/// above, and silently dropping xattrs or hardlinks is worse than failing.
fn find_gnu_tar() -> Result<PathBuf, ImageError> {
    let tar = find_tool(Path::new("tar"), TAR_HINT)?;
    let output = Command::new(&tar)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .at(&tar)?;
    if String::from_utf8_lossy(&output.stdout).contains("GNU tar") {
        Ok(tar)
    } else {
        Err(ImageError::MissingTool {
            tool: format!("GNU tar ({} is another tar)", tar.display()),
            hint: TAR_HINT.into(),
        })
    }
}

/// Deletes device nodes and sockets below `root` and returns how many entries remain
/// (directories included, `root` itself counted), for the packing total.
///
/// Devices are excluded because the runtime supplies /dev; a node copied from the build
/// host could grant access to the host's hardware. Sockets cannot be archived at all.
/// Stays on `root`'s file system, like tar's `--one-file-system`.
fn strip_special_files(root: &Path) -> Result<u64, ImageError> {
    let root_dev = std::fs::symlink_metadata(root).at(root)?.dev();
    let mut count = 1;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).at(&dir)? {
            let entry = entry.at(&dir)?;
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).at(&path)?;
            let kind = meta.file_type();
            if kind.is_char_device() || kind.is_block_device() || kind.is_socket() {
                std::fs::remove_file(&path).at(&path)?;
                continue;
            }
            count += 1;
            if kind.is_dir() && meta.dev() == root_dev {
                stack.push(path);
            }
        }
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NoProgress;
    use std::collections::HashMap;
    use std::io::Read;
    use std::os::unix::fs::symlink;

    struct Listed {
        kind: tar::EntryType,
        mode: u32,
        uid: u64,
        gid: u64,
        link: Option<PathBuf>,
        data: Vec<u8>,
    }

    fn list(tar_path: &Path) -> HashMap<String, Listed> {
        let file = std::fs::File::open(tar_path).expect("open tar");
        let mut archive = tar::Archive::new(file);
        let mut out = HashMap::new();
        for entry in archive.entries().expect("entries") {
            let mut entry = entry.expect("entry");
            let path = entry.path().expect("path").to_string_lossy().into_owned();
            let header = entry.header();
            let listed = Listed {
                kind: header.entry_type(),
                mode: header.mode().expect("mode"),
                uid: header.uid().expect("uid"),
                gid: header.gid().expect("gid"),
                link: entry.link_name().expect("link").map(|l| l.into_owned()),
                data: Vec::new(),
            };
            let mut data = Vec::new();
            entry.read_to_end(&mut data).expect("read");
            out.insert(path, Listed { data, ..listed });
        }
        out
    }

    #[test]
    fn preserves_modes_links_and_owners_and_drops_devices() {
        let scratch = tempfile::tempdir().expect("tempdir");
        let root = scratch.path().join("root");
        std::fs::create_dir_all(root.join("usr/bin")).expect("mkdir");
        std::fs::create_dir_all(root.join("tmp")).expect("mkdir");
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777))
            .expect("chmod");
        let sudo = root.join("usr/bin/sudo");
        std::fs::write(&sudo, "setuid").expect("write");
        crate::tool::require_root("chown to other users, mknod");
        // Before the chmod: chown clears setuid bits.
        std::os::unix::fs::chown(&sudo, Some(1234), Some(5678)).expect("chown");
        std::fs::set_permissions(&sudo, std::fs::Permissions::from_mode(0o4755)).expect("chmod");
        std::fs::write(root.join("usr/bin/perl"), "perl").expect("write");
        std::fs::hard_link(root.join("usr/bin/perl"), root.join("usr/bin/perl5.36")).expect("link");
        symlink("usr/bin", root.join("bin")).expect("symlink");
        let _socket =
            std::os::unix::net::UnixListener::bind(root.join("tmp/sock")).expect("socket");
        let status = Command::new("mknod")
            .arg(root.join("null"))
            .args(["c", "1", "3"])
            .status()
            .expect("mknod");
        assert!(status.success());

        let out = scratch.path().join("out.tar");
        pack_rootfs(&root, &out, Owners::Preserve, &NoProgress).expect("pack");
        let listed = list(&out);

        let top = &listed["./"];
        assert_eq!(top.kind, tar::EntryType::Directory);
        assert_eq!(top.mode & 0o7777, 0o755);
        assert_eq!(listed["./tmp/"].mode & 0o7777, 0o1777);
        let sudo = &listed["./usr/bin/sudo"];
        assert_eq!(sudo.mode & 0o7777, 0o4755, "setuid bit lost");
        assert_eq!(sudo.data, b"setuid");
        let bin = &listed["./bin"];
        assert_eq!(bin.kind, tar::EntryType::Symlink);
        assert_eq!(bin.link.as_deref(), Some(Path::new("usr/bin")));
        // --sort=name puts perl first, so perl5.36 is the link to it.
        let second = &listed["./usr/bin/perl5.36"];
        assert_eq!(second.kind, tar::EntryType::Link, "hardlink not preserved");
        assert_eq!(second.link.as_deref(), Some(Path::new("./usr/bin/perl")));
        assert!(!listed.contains_key("./tmp/sock"), "socket archived");
        assert_eq!((sudo.uid, sudo.gid), (1234, 5678), "numeric owner lost");
        assert!(!listed.contains_key("./null"), "device node archived");
        assert!(!root.join("null").exists());
        let mode = std::fs::metadata(&out).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
        let leftovers: Vec<_> = std::fs::read_dir(scratch.path())
            .expect("readdir")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
            .collect();
        assert!(leftovers.is_empty(), "partial file left behind");
    }

    #[test]
    fn root_owners_override_the_builder() {
        let scratch = tempfile::tempdir().expect("tempdir");
        let root = scratch.path().join("root");
        std::fs::create_dir(&root).expect("mkdir");
        std::fs::write(root.join("f"), "x").expect("write");
        if crate::tool::is_root() {
            std::os::unix::fs::chown(root.join("f"), Some(1000), Some(1000)).expect("chown");
        }
        let out = scratch.path().join("out.tar");
        pack_rootfs(&root, &out, Owners::Root, &NoProgress).expect("pack");
        let listed = list(&out);
        assert_eq!((listed["./f"].uid, listed["./f"].gid), (0, 0));
    }

    #[test]
    fn failed_pack_leaves_nothing() {
        let scratch = tempfile::tempdir().expect("tempdir");
        let out = scratch.path().join("out.tar");
        let err = pack_rootfs(
            &scratch.path().join("missing"),
            &out,
            Owners::Root,
            &NoProgress,
        )
        .expect_err("packing a missing dir");
        assert!(err.to_string().contains("missing"), "{err}");
        assert_eq!(
            std::fs::read_dir(scratch.path()).expect("readdir").count(),
            0
        );
    }
}

//! The tiny image: a statically linked busybox and a symlink per applet. It builds in well
//! under a second without network or root, which makes it the image for tests.

use crate::error::IoContext;
use crate::pack::{pack_rootfs, Owners};
use crate::workdir::BuildDir;
use crate::{ImageError, Progress};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                      nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const GROUP: &str = "root:x:0:\nnogroup:x:65534:\n";
/// Locked passwords: nothing logs in with one; the platform execs straight into a shell.
const SHADOW: &str = "root:*:0:0:99999:7:::\nnobody:*:0:0:99999:7:::\n";
const OS_RELEASE: &str = "NAME=\"rootnroll tiny\"\n\
                          ID=rnr-tiny\n\
                          PRETTY_NAME=\"rootnroll tiny (busybox)\"\n";

/// Directories and their modes. /proc, /sys and /dev are mount points the runtime fills.
const DIRS: &[(&str, u32)] = &[
    ("bin", 0o755),
    ("sbin", 0o755),
    ("usr", 0o755),
    ("usr/bin", 0o755),
    ("usr/sbin", 0o755),
    ("etc", 0o755),
    ("root", 0o700),
    ("home", 0o755),
    ("tmp", 0o1777),
    ("var", 0o755),
    ("var/tmp", 0o1777),
    ("proc", 0o555),
    ("sys", 0o555),
    ("dev", 0o755),
];

/// Builds the tiny image from a statically linked busybox (Debian's busybox-static
/// `/bin/busybox`) and packs it to `out_tar`. Files are owned by root whoever builds.
pub fn build_tiny(
    busybox: &Path,
    work_dir: &Path,
    out_tar: &Path,
    progress: &dyn Progress,
) -> Result<(), ImageError> {
    check_static(busybox)?;
    let applets = list_applets(busybox)?;

    let dir = BuildDir::new(work_dir, "rnr-tiny-")?;
    let root = dir.make_rootfs()?;
    progress.stage("installing", Some(applets.len() as u64 + 1));
    for (path, mode) in DIRS {
        make_dir(&root.join(path), *mode)?;
    }
    let target = root.join("bin/busybox");
    std::fs::copy(busybox, &target).at(busybox)?;
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755)).at(&target)?;
    progress.advance(1);

    for applet in &applets {
        let link = root.join(applet);
        // An applet named like one of the image's directories or files (none in Debian's
        // build) must not replace it.
        if std::fs::symlink_metadata(&link).is_ok() {
            tracing::debug!(applet = %applet.display(), "applet path taken; not linked");
            progress.advance(1);
            continue;
        }
        if let Some(parent) = link.parent() {
            if !parent.exists() {
                make_dir(parent, 0o755)?;
            }
        }
        // Relative, so the tree also resolves when inspected from the host (e.g. by
        // check_rootfs_tarball or a driver that extracts it).
        std::os::unix::fs::symlink(relative_to_busybox(applet), &link).at(&link)?;
        progress.advance(1);
    }

    for (path, contents, mode) in [
        ("etc/passwd", PASSWD, 0o644),
        ("etc/group", GROUP, 0o644),
        ("etc/shadow", SHADOW, 0o600),
        ("etc/os-release", OS_RELEASE, 0o644),
    ] {
        let file = root.join(path);
        std::fs::write(&file, contents).at(&file)?;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).at(&file)?;
    }
    pack_rootfs(&root, out_tar, Owners::Root, progress)
}

fn make_dir(path: &Path, mode: u32) -> Result<(), ImageError> {
    std::fs::create_dir_all(path).at(path)?;
    // Set after creation: the umask would mask the sticky bit and group/other bits.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).at(path)
}

/// `usr/bin/[` → `../../bin/busybox`, `bin/sh` → `busybox`.
fn relative_to_busybox(applet: &Path) -> PathBuf {
    let depth = applet.components().count().saturating_sub(1);
    if applet.parent() == Some(Path::new("bin")) {
        return PathBuf::from("busybox");
    }
    let mut target = PathBuf::new();
    for _ in 0..depth {
        target.push("..");
    }
    target.join("bin/busybox")
}

/// Asks busybox for its applets' install paths (`usr/bin/[`, `bin/sh`, ...). Refuses
/// anything but plain relative paths: they are joined onto the image root.
fn list_applets(busybox: &Path) -> Result<Vec<PathBuf>, ImageError> {
    let invalid = |reason: String| ImageError::InvalidBusybox {
        path: busybox.to_path_buf(),
        reason,
    };
    let output = Command::new(busybox)
        .arg("--list-full")
        .stdin(Stdio::null())
        .output()
        .at(busybox)?;
    if !output.status.success() {
        return Err(invalid(format!(
            "`busybox --list-full` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    let mut applets = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let path = PathBuf::from(line);
        let plain = path.components().all(|c| matches!(c, Component::Normal(_)));
        if !plain || path.as_os_str().is_empty() {
            return Err(invalid(format!(
                "`busybox --list-full` printed {line:?}, which is not an install path"
            )));
        }
        if path != Path::new("bin/busybox") {
            applets.push(path);
        }
    }
    if !applets.iter().any(|a| a == Path::new("bin/sh")) {
        return Err(invalid(
            "it has no `sh` applet, and an image needs /bin/sh".into(),
        ));
    }
    Ok(applets)
}

/// Refuses a dynamically linked busybox: the image has no libc, so it could not start.
/// An ELF executable is dynamic exactly when it has a PT_INTERP program header.
fn check_static(busybox: &Path) -> Result<(), ImageError> {
    let invalid = |reason: &str| ImageError::InvalidBusybox {
        path: busybox.to_path_buf(),
        reason: reason.to_owned(),
    };
    let meta = std::fs::metadata(busybox).at(busybox)?;
    if !meta.is_file() {
        return Err(invalid("it is not a regular file"));
    }
    let mut bytes = Vec::new();
    // Program headers sit right after the ELF header; 64 KiB covers them in practice
    // without reading a 2 MB binary.
    std::fs::File::open(busybox)
        .at(busybox)?
        .take(64 * 1024)
        .read_to_end(&mut bytes)
        .at(busybox)?;
    match elf_interpreter(&bytes) {
        Err(why) => Err(invalid(&why)),
        Ok(true) => Err(invalid(
            "it is dynamically linked and the image has no libc; use the statically \
             linked one from Debian's busybox-static package (/bin/busybox)",
        )),
        Ok(false) => Ok(()),
    }
}

/// Whether an ELF image has a PT_INTERP program header.
fn elf_interpreter(bytes: &[u8]) -> Result<bool, String> {
    const PT_INTERP: u32 = 3;
    if bytes.len() < 52 || &bytes[..4] != b"\x7fELF" {
        return Err("it is not an ELF executable".into());
    }
    let is64 = match bytes[4] {
        1 => false,
        2 => true,
        _ => return Err("it has an unknown ELF class".into()),
    };
    let little = match bytes[5] {
        1 => true,
        2 => false,
        _ => return Err("it has an unknown ELF byte order".into()),
    };
    let uint = |at: usize, len: usize| -> Option<u64> {
        let raw = bytes.get(at..at + len)?;
        let mut v = 0u64;
        for i in 0..len {
            let b = if little { raw[len - 1 - i] } else { raw[i] };
            v = (v << 8) | u64::from(b);
        }
        Some(v)
    };
    let (phoff, phentsize, phnum) = if is64 {
        (uint(0x20, 8), uint(0x36, 2), uint(0x38, 2))
    } else {
        (uint(0x1c, 4), uint(0x2a, 2), uint(0x2c, 2))
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (phoff, phentsize, phnum) else {
        return Err("its ELF header is truncated".into());
    };
    for i in 0..phnum {
        let at = phoff
            .checked_add(i.saturating_mul(phentsize))
            .and_then(|a| usize::try_from(a).ok())
            .ok_or("its ELF program headers are out of range")?;
        let p_type = uint(at, 4).ok_or("its ELF program headers are truncated")?;
        if p_type == u64::from(PT_INTERP) {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applet_links_are_relative() {
        assert_eq!(
            relative_to_busybox(Path::new("bin/sh")),
            Path::new("busybox")
        );
        assert_eq!(
            relative_to_busybox(Path::new("linuxrc")),
            Path::new("bin/busybox")
        );
        assert_eq!(
            relative_to_busybox(Path::new("sbin/ifconfig")),
            Path::new("../bin/busybox")
        );
        assert_eq!(
            relative_to_busybox(Path::new("usr/bin/[")),
            Path::new("../../bin/busybox")
        );
    }

    #[test]
    fn tells_static_from_dynamic() {
        let read = |p: &str| std::fs::read(p).expect(p);
        // Any dynamically linked program on the build host will do.
        assert_eq!(elf_interpreter(&read("/bin/ls")), Ok(true));
        if Path::new("/bin/busybox").exists() {
            assert_eq!(elf_interpreter(&read("/bin/busybox")), Ok(false));
        }
        assert!(elf_interpreter(b"#!/bin/sh\necho not elf\n").is_err());
    }
}

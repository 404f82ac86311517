//! What a VM boots: the Debian kernel as it is, a minimal initramfs of the project's own
//! (a static busybox, the few virtio modules the kernel has as modules, a shell init that
//! loads them, brings up the network and switches to the root disk), and the agent on a
//! small read-only disk. Both are built once per (kernel, agent) and kept by content hash
//! under `boot/`, so machines started from an older build keep their files.

use crate::error::{VResult, VmError};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Modules the initramfs loads (with their dependencies, in the order modprobe gives):
/// the virtio-mmio transport of QEMU's microvm, the disks, the agent's serial port, the
/// network and the balloon that returns free memory to the host.
pub const MODULES: &[&str] = &[
    "virtio_mmio",
    "virtio_blk",
    "virtio_console",
    "virtio_net",
    "virtio_balloon",
];

/// The initramfs's init: busybox sh, no udev, no firmware, nothing to wait for but the
/// devices themselves.
const INIT: &str = r#"#!/bin/busybox sh
# rootnroll VM initramfs: load the virtio modules, find the disks by serial, bring up the
# network from the kernel command line, switch to the root disk with the agent as init.
B=/bin/busybox
$B mount -t devtmpfs -o mode=0755 dev /dev
$B mount -t proc proc /proc
$B mount -t sysfs sys /sys
for m in $($B cat /modules); do $B insmod "/lib/modules/$m" || echo "rnr-initramfs: $m did not load"; done
arg() { for w in $($B cat /proc/cmdline); do case "$w" in "rnr.$1="*) echo "${w#rnr.$1=}";; esac; done; }
find_disk() {
  for i in $($B seq 1 500); do
    for d in /sys/block/vd*; do
      [ "$($B cat "$d/serial" 2>/dev/null)" = "$1" ] && { echo "/dev/${d##*/}"; return; }
    done
    $B usleep 10000
  done
}
root=$(find_disk rnr-root); agent=$(find_disk rnr-agent)
[ -n "$root" ] && [ -n "$agent" ] || { echo "rnr-initramfs: disks missing (root=$root agent=$agent)"; $B reboot -f; }
$B mkdir -p /newroot
$B mount -t ext4 -o rw,noatime "$root" /newroot || { echo "rnr-initramfs: cannot mount $root"; $B reboot -f; }
$B mkdir -p /newroot/.rnr /newroot/dev /newroot/proc /newroot/sys
$B mount -t ext4 -o ro,noexec,nodev "$agent" /newroot/.rnr || $B mount -t ext4 -o ro "$agent" /newroot/.rnr
$B mount -o remount,ro,nodev,exec /newroot/.rnr 2>/dev/null
$B ip link set lo up
ip=$(arg ip); gw=$(arg gw)
if [ -n "$ip" ]; then
  $B ip link set eth0 up && $B ip addr add "$ip" dev eth0 && { [ -z "$gw" ] || $B ip route add default via "$gw"; }
fi
$B mount --move /dev /newroot/dev
$B umount /proc /sys
exec $B switch_root /newroot /.rnr/rnr-agent vm-init
"#;

/// A newc cpio archive, written as built: the kernel unpacks it as the initramfs.
struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn new() -> Self {
        Self {
            out: Vec::new(),
            ino: 1,
        }
    }

    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        let fields = [
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        self.ino += 1;
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, (0, 0), &[]);
    }

    fn file(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.entry(name, 0o100000 | mode, (0, 0), data);
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.out
    }
}

/// The module files (paths under `modules_dir`) `names` need, dependencies first, as
/// `modprobe --show-depends` orders them.
fn module_files(modules_dir: &Path, names: &[&str]) -> VResult<Vec<PathBuf>> {
    let version = modules_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    // modprobe -d takes the directory holding lib/modules/<version>.
    let base = modules_dir
        .ancestors()
        .nth(3)
        .filter(|_| {
            modules_dir
                .parent()
                .is_some_and(|p| p.ends_with("lib/modules"))
        })
        .ok_or_else(|| {
            VmError::Unavailable(format!(
                "the modules directory {} is not of the form …/lib/modules/<version>",
                modules_dir.display()
            ))
        })?;
    let out = std::process::Command::new("modprobe")
        .arg("-d")
        .arg(base)
        .arg("-S")
        .arg(&version)
        .arg("--show-depends")
        .arg("-a")
        .args(names)
        .output()
        .map_err(|e| VmError::io("running modprobe --show-depends (package kmod)", e))?;
    if !out.status.success() {
        return Err(VmError::Unavailable(format!(
            "modprobe --show-depends {names:?} for kernel {version}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let mut files: Vec<PathBuf> = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // "insmod /lib/modules/…/x.ko [params]"; builtins say "builtin x".
        if let Some(path) = line
            .strip_prefix("insmod ")
            .and_then(|r| r.split_whitespace().next())
        {
            let p = PathBuf::from(path);
            if !files.contains(&p) {
                files.push(p);
            }
        }
    }
    for f in &files {
        let name = f.to_string_lossy();
        if !name.ends_with(".ko") {
            return Err(VmError::Unavailable(format!(
                "module {name} is compressed; busybox insmod loads plain .ko files only"
            )));
        }
    }
    Ok(files)
}

/// Writes `data` to `path` through a temporary file and a rename: a crash or a concurrent
/// build never leaves a half-written file where machines look.
fn write_atomically(path: &Path, data: &[u8]) -> VResult<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f =
        std::fs::File::create(&tmp).map_err(|e| VmError::io(tmp.display().to_string(), e))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .map_err(|e| VmError::io(tmp.display().to_string(), e))?;
    std::fs::rename(&tmp, path).map_err(|e| VmError::io(path.display().to_string(), e))
}

fn short_hash(parts: &[&[u8]]) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    hex::encode(&h.finalize()[..8])
}

/// The files a VM boots from.
#[derive(Debug, Clone)]
pub struct BootFiles {
    /// The directory holding all three (bind-mounted read-only for QEMU).
    pub dir: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub agent_disk: PathBuf,
}

/// Builds (or finds) the boot files for `kernel`, its `modules` and `agent`.
pub fn prepare(
    boot_dir: &Path,
    kernel: &Path,
    modules: &Path,
    busybox: &Path,
    agent: &Path,
) -> VResult<BootFiles> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| VmError::io(p.display().to_string(), e));
    let kernel_bytes = read(kernel)?;
    let busybox_bytes = read(busybox)?;
    let agent_bytes = read(agent)?;
    let mods = module_files(modules, MODULES)?;
    let mut mod_bytes = Vec::new();
    for m in &mods {
        mod_bytes.push((
            m.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            read(m)?,
        ));
    }
    let mut parts: Vec<&[u8]> = vec![&kernel_bytes, &busybox_bytes, &agent_bytes, INIT.as_bytes()];
    for (_, b) in &mod_bytes {
        parts.push(b);
    }
    let dir = boot_dir.join(short_hash(&parts));
    let files = BootFiles {
        kernel: dir.join("vmlinuz"),
        initrd: dir.join("initrd.cpio"),
        agent_disk: dir.join("agent.ext4"),
        dir: dir.clone(),
    };
    if files.agent_disk.is_file() && files.initrd.is_file() && files.kernel.is_file() {
        return Ok(files);
    }
    std::fs::create_dir_all(&dir).map_err(|e| VmError::io(dir.display().to_string(), e))?;
    set_mode(&dir, 0o755)?;
    write_atomically(&files.kernel, &kernel_bytes)?;

    let mut cpio = Cpio::new();
    for d in ["bin", "dev", "proc", "sys", "newroot", "lib", "lib/modules"] {
        cpio.dir(d);
    }
    // The kernel opens /dev/console for init's stdio before anything is mounted.
    cpio.entry("dev/console", 0o020600, (5, 1), &[]);
    cpio.file("bin/busybox", 0o755, &busybox_bytes);
    cpio.file("init", 0o755, INIT.as_bytes());
    let order: Vec<&str> = mod_bytes.iter().map(|(n, _)| n.as_str()).collect();
    cpio.file(
        "modules",
        0o644,
        format!("{}\n", order.join(" ")).as_bytes(),
    );
    for (name, bytes) in &mod_bytes {
        cpio.file(&format!("lib/modules/{name}"), 0o644, bytes);
    }
    write_atomically(&files.initrd, &cpio.finish())?;

    // The agent's disk: an ext4 holding the binary alone, made from a directory without
    // mounting anything; attached read-only, so no root in the VM can change it.
    let stage = dir.join(format!("agent-stage.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&stage);
    std::fs::create_dir_all(&stage).map_err(|e| VmError::io(stage.display().to_string(), e))?;
    set_mode(&stage, 0o755)?;
    let bin = stage.join("rnr-agent");
    std::fs::write(&bin, &agent_bytes).map_err(|e| VmError::io(bin.display().to_string(), e))?;
    set_mode(&bin, 0o755)?;
    let mib = (agent_bytes.len() as u64 >> 20) + 8;
    let tmp = dir.join(format!("agent.ext4.tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    run_mkfs(&tmp, &stage, mib, "rnr-agent")?;
    let _ = std::fs::remove_dir_all(&stage);
    std::fs::rename(&tmp, &files.agent_disk)
        .map_err(|e| VmError::io(files.agent_disk.display().to_string(), e))?;
    Ok(files)
}

pub(crate) fn set_mode(p: &Path, mode: u32) -> VResult<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .map_err(|e| VmError::io(p.display().to_string(), e))
}

/// `mkfs.ext4 -d from` into a sparse image of `mib` MiB at `image`.
pub(crate) fn run_mkfs(image: &Path, from: &Path, mib: u64, label: &str) -> VResult<()> {
    let out = std::process::Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-L",
            label,
            "-E",
            "root_owner=0:0",
            "-O",
            "^has_journal",
        ])
        .arg("-d")
        .arg(from)
        .arg(image)
        .arg(format!("{mib}M"))
        .output()
        .map_err(|e| VmError::io("running mkfs.ext4 (package e2fsprogs)", e))?;
    if !out.status.success() {
        return Err(VmError::Command {
            id: image.display().to_string(),
            command: format!("mkfs.ext4 -d {} {}", from.display(), image.display()),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_entries_are_aligned_and_terminated() {
        let mut c = Cpio::new();
        c.dir("bin");
        c.file("bin/x", 0o755, b"abc");
        let out = c.finish();
        assert!(out.len().is_multiple_of(4));
        assert!(out.starts_with(b"070701"));
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.contains("bin/x") && text.ends_with("TRAILER!!!\0\0\0\0")
                || text.contains("TRAILER!!!")
        );
        // newc: name size of "bin" is 4 (NUL included), at field 12 of the first header.
        assert_eq!(&out[6 + 11 * 8..6 + 12 * 8], b"00000004");
    }
}

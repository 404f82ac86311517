//! Per-machine disk quotas on btrfs: one subvolume per machine holds its overlay's upper
//! and work dirs, with a qgroup limit of the machine's disk size.
//!
//! The subvolumes live under `<state_dir>/disks`: a directory of `state_dir`'s own
//! filesystem when that is btrfs, else the mount point of `<state_dir>/disk.img`, a sparse
//! image formatted once with `mkfs.btrfs`, attached to a loop device (auto-clearing: it
//! detaches when the filesystem is unmounted) and mounted by [`Pool::open`]. Quotas are
//! enabled once per filesystem. Everything on the machine-creation path is a handful of
//! ioctls; no `btrfs` command is spawned.

use crate::error::{io_err, NResult, NativeError};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

const BTRFS_SUPER_MAGIC: i64 = 0x9123_683e;
const BTRFS_IOC_SUBVOL_CREATE: libc::Ioctl = 0x5000_940e_u32 as libc::Ioctl;
const BTRFS_IOC_SNAP_DESTROY: libc::Ioctl = 0x5000_940f_u32 as libc::Ioctl;
const BTRFS_IOC_QUOTA_CTL: libc::Ioctl = 0xc010_9428_u32 as libc::Ioctl;
const BTRFS_IOC_QGROUP_LIMIT: libc::Ioctl = 0x8030_942b_u32 as libc::Ioctl;
const BTRFS_QUOTA_CTL_ENABLE: u64 = 1;
const BTRFS_QGROUP_LIMIT_MAX_RFER: u64 = 1;
const BTRFS_QGROUP_LIMIT_MAX_EXCL: u64 = 2;
/// The root directory of every btrfs subvolume has this inode number.
const BTRFS_FIRST_FREE_OBJECTID: u64 = 256;

const LOOP_CTL_GET_FREE: libc::Ioctl = 0x4c82;
const LOOP_CONFIGURE: libc::Ioctl = 0x4c0a;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_FLAGS_DIRECT_IO: u32 = 16;

/// `struct btrfs_ioctl_vol_args`.
#[repr(C)]
struct VolArgs {
    fd: i64,
    name: [u8; 4088],
}

/// `struct btrfs_ioctl_quota_ctl_args`.
#[repr(C)]
struct QuotaCtlArgs {
    cmd: u64,
    status: u64,
}

/// `struct btrfs_ioctl_qgroup_limit_args` (with its `struct btrfs_qgroup_limit` inline).
#[repr(C)]
struct QgroupLimitArgs {
    qgroupid: u64,
    flags: u64,
    max_rfer: u64,
    max_excl: u64,
    rsv_rfer: u64,
    rsv_excl: u64,
}

/// `struct loop_info64`.
#[repr(C)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rdevice: u64,
    offset: u64,
    sizelimit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; 64],
    crypt_name: [u8; 64],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

/// `struct loop_config`.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

fn cpath(p: &Path) -> io::Result<CString> {
    crate::sys::cpath(p)
}

fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    let c = cpath(path)?;
    // SAFETY: open(2) with a valid C string; the returned fd is owned below.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by open(2) and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Whether `path` is on btrfs.
pub fn is_btrfs(path: &Path) -> io::Result<bool> {
    let c = cpath(path)?;
    // SAFETY: statfs is plain old data; zeroed is a valid initial value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: statfs(2) writes into the struct it is given.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type as i64 == BTRFS_SUPER_MAGIC)
}

/// Whether this host can keep machine disks on btrfs under `state_dir`: the kernel has
/// btrfs and either `state_dir` is on btrfs or a pool image can be made (mkfs.btrfs,
/// loop devices). The error says what is missing.
pub fn available(state_dir: &Path, proc_root: &Path) -> Result<(), String> {
    let fs_list = proc_root.join("filesystems");
    let filesystems = std::fs::read_to_string(&fs_list).unwrap_or_default();
    if !filesystems.lines().any(|l| l.trim_end().ends_with("btrfs")) {
        return Err(format!("no btrfs filesystem in {}", fs_list.display()));
    }
    if is_btrfs(state_dir).unwrap_or(false) {
        return Ok(());
    }
    if !Path::new("/dev/loop-control").exists() {
        return Err("no /dev/loop-control (loop devices)".into());
    }
    if !state_dir.join("disk.img").exists() && !crate::config::on_path("mkfs.btrfs") {
        return Err("mkfs.btrfs not found on PATH (apt-get install btrfs-progs)".into());
    }
    Ok(())
}

/// The btrfs filesystem holding the machines' subvolumes.
#[derive(Debug)]
pub struct Pool {
    /// `<state_dir>/disks`: one subvolume per machine, named by its id.
    dir: PathBuf,
    /// The pool image when `dir` is its mount point (else `dir` is on `state_dir`'s own
    /// btrfs); [`Pool::teardown`] unmounts it.
    image: Option<PathBuf>,
}

/// Whether `dir` is the root of a filesystem mounted on it (its device differs from its
/// parent's).
fn is_mount_point(dir: &Path, parent: &Path) -> io::Result<bool> {
    Ok(std::fs::metadata(dir)?.dev() != std::fs::metadata(parent)?.dev())
}

impl Pool {
    /// Makes the pool ready under `state_dir`: creates and formats a sparse image of
    /// `size_gib` GiB if needed, mounts it if not mounted, and enables quotas.
    pub fn open(state_dir: &Path, size_gib: u64) -> NResult<Self> {
        let lock = state_dir.join("disk.lock");
        let _lock =
            crate::sys::Flock::take(&lock, true).map_err(|e| io_err("locking", &lock, e))?;
        let dir = state_dir.join("disks");
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err("creating", &dir, e)),
        }
        let mounted = is_mount_point(&dir, state_dir).map_err(|e| io_err("reading", &dir, e))?;
        let on_btrfs = is_btrfs(state_dir).map_err(|e| io_err("reading", state_dir, e))?;
        let image = state_dir.join("disk.img");
        let pool = if mounted {
            if !is_btrfs(&dir).map_err(|e| io_err("reading", &dir, e))? {
                return Err(NativeError::other(
                    dir.display().to_string(),
                    "something other than btrfs is mounted here",
                ));
            }
            Self {
                image: Some(image),
                dir,
            }
        } else if on_btrfs {
            Self { dir, image: None }
        } else {
            if !image.exists() {
                make_image(&image, size_gib)?;
            }
            warn_if_short_of_space(&image, state_dir);
            mount_image(&image, &dir)?;
            Self {
                image: Some(image),
                dir,
            }
        };
        pool.enable_quota()?;
        Ok(pool)
    }

    fn enable_quota(&self) -> NResult<()> {
        let fd = open_dir(&self.dir).map_err(|e| io_err("opening", &self.dir, e))?;
        let mut args = QuotaCtlArgs {
            cmd: BTRFS_QUOTA_CTL_ENABLE,
            status: 0,
        };
        // SAFETY: BTRFS_IOC_QUOTA_CTL reads and writes the args struct, which lives across
        // the call; enabling is a no-op when quotas are already on.
        if unsafe { libc::ioctl(fd.as_raw_fd(), BTRFS_IOC_QUOTA_CTL, &mut args) } < 0 {
            return Err(io_err(
                "enabling btrfs quotas on",
                &self.dir,
                io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// Creates machine `id`'s subvolume limited to `limit_bytes` (data and metadata), with
    /// `upper/` and `work/` in it owned by `owner` (the machine's root on the host), and
    /// returns their paths.
    pub fn create(
        &self,
        id: &str,
        limit_bytes: u64,
        owner: Option<u32>,
    ) -> NResult<(PathBuf, PathBuf)> {
        let sub = self.dir.join(id);
        let parent = open_dir(&self.dir).map_err(|e| io_err("opening", &self.dir, e))?;
        let args = vol_args(id)?;
        // SAFETY: BTRFS_IOC_SUBVOL_CREATE reads a vol_args struct that lives across the
        // call; the name is NUL-terminated (vol_args zero-fills).
        let mut r = unsafe { libc::ioctl(parent.as_raw_fd(), BTRFS_IOC_SUBVOL_CREATE, &*args) };
        if r < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EEXIST) {
            // Left behind by a create that crashed before recording the machine: ids are
            // unique among recorded machines, so this one is stale.
            tracing::warn!(machine = id, path = %sub.display(), "removing a stale subvolume");
            self.destroy(id)?;
            // SAFETY: as above.
            r = unsafe { libc::ioctl(parent.as_raw_fd(), BTRFS_IOC_SUBVOL_CREATE, &*args) };
        }
        if r < 0 {
            return Err(NativeError::io(
                format!("machine {id}: creating btrfs subvolume {}", sub.display()),
                io::Error::last_os_error(),
            ));
        }
        let fd = open_dir(&sub).map_err(|e| io_err("opening", &sub, e))?;
        let limit = QgroupLimitArgs {
            // 0: the qgroup of the subvolume the ioctl is called on (0/<subvolume id>).
            qgroupid: 0,
            flags: BTRFS_QGROUP_LIMIT_MAX_RFER | BTRFS_QGROUP_LIMIT_MAX_EXCL,
            max_rfer: limit_bytes,
            max_excl: limit_bytes,
            rsv_rfer: 0,
            rsv_excl: 0,
        };
        // SAFETY: BTRFS_IOC_QGROUP_LIMIT reads the args struct, which lives across the call.
        if unsafe { libc::ioctl(fd.as_raw_fd(), BTRFS_IOC_QGROUP_LIMIT, &limit) } < 0 {
            return Err(NativeError::io(
                format!("machine {id}: limiting the qgroup of {}", sub.display()),
                io::Error::last_os_error(),
            ));
        }
        let (upper, work) = (sub.join("upper"), sub.join("work"));
        for p in [&upper, &work] {
            std::fs::create_dir(p).map_err(|e| io_err("creating", p, e))?;
            if let Some(o) = owner {
                std::os::unix::fs::chown(p, Some(o), Some(o))
                    .map_err(|e| io_err("chowning", p, e))?;
            }
        }
        Ok((upper, work))
    }

    /// The names in the pool: one subvolume per machine that has a disk.
    pub fn volumes(&self) -> Vec<String> {
        std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }

    /// Deletes machine `id`'s subvolume and everything in it, if there is one; its space
    /// (and its qgroup) are freed by btrfs in the background.
    pub fn destroy(&self, id: &str) -> NResult<()> {
        let sub = self.dir.join(id);
        match std::fs::symlink_metadata(&sub) {
            Ok(md) if md.is_dir() && md.ino() == BTRFS_FIRST_FREE_OBJECTID => {}
            Ok(_) => {
                // A plain leftover (not a subvolume): remove it as files.
                return std::fs::remove_dir_all(&sub).map_err(|e| io_err("removing", &sub, e));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("reading", &sub, e)),
        }
        let parent = open_dir(&self.dir).map_err(|e| io_err("opening", &self.dir, e))?;
        let args = vol_args(id)?;
        // SAFETY: BTRFS_IOC_SNAP_DESTROY reads a vol_args struct that lives across the
        // call.
        if unsafe { libc::ioctl(parent.as_raw_fd(), BTRFS_IOC_SNAP_DESTROY, &*args) } < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ENOENT) {
                return Err(NativeError::io(
                    format!("machine {id}: deleting btrfs subvolume {}", sub.display()),
                    e,
                ));
            }
        }
        Ok(())
    }

    /// Unmounts the pool image (the loop device then detaches itself). Machines must have
    /// been deleted first; a pool still in use is detached lazily.
    pub fn teardown(&self) {
        if self.image.is_some() {
            unmount(&self.dir);
        }
    }
}

/// Mounts a tmpfs with `options` on `dir` unless something is mounted there already (a
/// restarted driver finds its own mount, with its machines' state, and keeps it).
pub fn mount_tmpfs_once(dir: &Path, parent: &Path, options: &str) -> NResult<()> {
    use std::os::unix::fs::MetadataExt;
    let dev = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.dev())
            .map_err(|e| NativeError::io(format!("reading {}", p.display()), e))
    };
    if dev(dir)? != dev(parent)? {
        return Ok(());
    }
    let target =
        cpath(dir).map_err(|e| NativeError::io(format!("mounting on {}", dir.display()), e))?;
    let opts = std::ffi::CString::new(options).expect("mount options have no NUL");
    // SAFETY: mount(2) with valid C strings that outlive the call.
    let r = unsafe {
        libc::mount(
            c"tmpfs".as_ptr(),
            target.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            opts.as_ptr().cast(),
        )
    };
    if r < 0 {
        return Err(NativeError::io(
            format!("mounting a tmpfs on {}", dir.display()),
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Unmounts `dir` if something is mounted on it (lazily if busy).
pub fn unmount(dir: &Path) {
    let Ok(c) = cpath(dir) else { return };
    // SAFETY: umount2(2) with a valid C string.
    if unsafe { libc::umount2(c.as_ptr(), 0) } < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EBUSY) {
            tracing::warn!(path = %dir.display(), "mount busy: detaching it lazily");
            // SAFETY: as above.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

fn vol_args(name: &str) -> NResult<Box<VolArgs>> {
    let mut args = Box::new(VolArgs {
        fd: 0,
        name: [0; 4088],
    });
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= 256 || bytes.contains(&0) || bytes.contains(&b'/') {
        return Err(NativeError::Invalid {
            id: name.to_string(),
            message: "not a valid subvolume name".into(),
        });
    }
    args.name[..bytes.len()].copy_from_slice(bytes);
    Ok(args)
}

/// The image is sparse: should the host's filesystem fill up before the image does,
/// writes to the pool fail and btrfs turns it read-only. Says so when that can happen.
fn warn_if_short_of_space(image: &Path, state_dir: &Path) {
    let (Ok(md), Ok(c)) = (std::fs::metadata(image), cpath(state_dir)) else {
        return;
    };
    // SAFETY: statvfs is plain old data; zeroed is a valid initial value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: statvfs(2) writes into the struct it is given.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } < 0 {
        return;
    }
    #[allow(clippy::unnecessary_cast)] // fsblkcnt_t and c_ulong vary across targets
    let free = (st.f_bavail as u64).saturating_mul(st.f_frsize as u64);
    let unallocated = md.len().saturating_sub(md.blocks().saturating_mul(512));
    if unallocated > free {
        tracing::warn!(
            image = %image.display(),
            image_gib = md.len() >> 30,
            host_free_gib = free >> 30,
            "the machines' disk pool may outgrow the free space of the filesystem holding it"
        );
    }
}

/// Creates a sparse image of `size_gib` GiB at `image` and formats it with mkfs.btrfs.
fn make_image(image: &Path, size_gib: u64) -> NResult<()> {
    let tmp = image.with_extension("img.tmp");
    let _ = std::fs::remove_file(&tmp);
    let res = (|| {
        let f = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&tmp)
            .map_err(|e| io_err("creating", &tmp, e))?;
        std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(|e| io_err("setting permissions of", &tmp, e))?;
        f.set_len(size_gib.max(1) << 30)
            .map_err(|e| io_err("sizing", &tmp, e))?;
        drop(f);
        // One device: no metadata duplication; no discard of the sparse file.
        let out = std::process::Command::new("mkfs.btrfs")
            .args(["-q", "-f", "-m", "single", "-d", "single", "--nodiscard"])
            .arg(&tmp)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| io_err("running mkfs.btrfs on", &tmp, e))?;
        if !out.status.success() {
            return Err(NativeError::Command {
                id: image.display().to_string(),
                command: "mkfs.btrfs".into(),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        std::fs::rename(&tmp, image).map_err(|e| io_err("renaming", &tmp, e))
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// Attaches `image` to a free loop device (auto-clearing; with direct I/O where the
/// host's filesystem allows, so that pool data is not cached twice: once by btrfs and
/// once as pages of the image file) and mounts it on `dir`.
fn mount_image(image: &Path, dir: &Path) -> NResult<()> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .map_err(|e| io_err("opening", image, e))?;
    let control = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")
        .map_err(|e| io_err("opening", Path::new("/dev/loop-control"), e))?;
    let mut attempts = 0;
    let mut flags = LO_FLAGS_AUTOCLEAR | LO_FLAGS_DIRECT_IO;
    let (loop_dev, _loop_fd) = loop {
        attempts += 1;
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number.
        let n = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if n < 0 {
            return Err(io_err(
                "finding a free loop device for",
                image,
                io::Error::last_os_error(),
            ));
        }
        let dev = PathBuf::from(format!("/dev/loop{n}"));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&dev)
            .map_err(|e| io_err("opening", &dev, e))?;
        // SAFETY: loop_config is plain old data; zeroed is a valid initial value.
        let mut cfg: LoopConfig = unsafe { std::mem::zeroed() };
        cfg.fd = file.as_raw_fd() as u32;
        cfg.info.flags = flags;
        let name = image.as_os_str().as_encoded_bytes();
        let len = name.len().min(63);
        cfg.info.file_name[..len].copy_from_slice(&name[..len]);
        // SAFETY: LOOP_CONFIGURE reads the config struct, which lives across the call.
        if unsafe { libc::ioctl(f.as_raw_fd(), LOOP_CONFIGURE, &cfg) } == 0 {
            break (dev, f);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EINVAL) && flags & LO_FLAGS_DIRECT_IO != 0 {
            // The image's filesystem cannot do direct I/O: cache it, then.
            flags = LO_FLAGS_AUTOCLEAR;
            continue;
        }
        // Another process took this device between GET_FREE and CONFIGURE: try again.
        if e.raw_os_error() != Some(libc::EBUSY) || attempts >= 16 {
            return Err(io_err(format!("attaching {} to", image.display()), &dev, e));
        }
    };
    let source = cpath(&loop_dev).map_err(|e| io_err("preparing", &loop_dev, e))?;
    let target = cpath(dir).map_err(|e| io_err("preparing", dir, e))?;
    // SAFETY: mount(2) with valid C strings. While `_loop_fd` is open the device stays
    // attached; once mounted, auto-clear detaches it at the last unmount.
    let r = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            c"btrfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOATIME,
            std::ptr::null(),
        )
    };
    if r < 0 {
        return Err(io_err(
            format!("mounting {} ({}) on", image.display(), loop_dev.display()),
            dir,
            io::Error::last_os_error(),
        ));
    }
    // Keep the pool out of other mount namespaces' propagation.
    // SAFETY: mount(2) changing the propagation of the mount just made.
    unsafe {
        libc::mount(
            std::ptr::null(),
            target.as_ptr(),
            std::ptr::null(),
            libc::MS_PRIVATE,
            std::ptr::null(),
        )
    };
    Ok(())
}

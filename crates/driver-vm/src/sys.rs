//! System calls the driver makes itself: users, process identity, taps, and the confined
//! start of QEMU (a mount namespace holding nothing but what it needs, its own user).

use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// uid, gid of user `name`, and the gid of group `kvm` if there is one.
pub fn user(name: &str) -> Option<(u32, u32)> {
    let cname = CString::new(name).ok()?;
    let mut pw: libc::passwd = unsafe_zeroed_passwd();
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwnam_r fills `pw` with pointers into `buf`, both outliving the call.
    let r = unsafe {
        libc::getpwnam_r(
            cname.as_ptr(),
            &mut pw,
            buf.as_mut_ptr(),
            buf.len(),
            &mut out,
        )
    };
    (r == 0 && !out.is_null()).then_some((pw.pw_uid, pw.pw_gid))
}

fn unsafe_zeroed_passwd() -> libc::passwd {
    // SAFETY: passwd is plain data; zeroed is a valid value to be filled in.
    unsafe { std::mem::zeroed() }
}

/// The gid of group `name`.
pub fn group(name: &str) -> Option<u32> {
    let cname = CString::new(name).ok()?;
    // SAFETY: getgrnam returns a pointer to static storage or NULL; read at once.
    let g = unsafe { libc::getgrnam(cname.as_ptr()) };
    // SAFETY: g is non-null here and points to a valid group entry.
    (!g.is_null()).then(|| unsafe { (*g).gr_gid })
}

/// The start time of process `pid` (clock ticks since boot, /proc/PID/stat field 22): with
/// the pid it names one process for good, across pid reuse.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether `pid` is the process that started at `start` and has not ended (a zombie has).
pub fn alive(pid: i32, start: u64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 2..].split_whitespace().next());
    state != Some("Z") && start_time(pid) == Some(start)
}

/// A tap device named `name`, attached to the returned descriptor: it lives exactly as long
/// as some process holds the descriptor (QEMU does), so a VM that ends takes its tap along.
pub fn open_tap(name: &str) -> std::io::Result<OwnedFd> {
    let path = CString::new("/dev/net/tun").map_err(std::io::Error::other)?;
    // SAFETY: open(2) on a NUL-terminated path.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is fresh and ours.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        flags: libc::c_short,
        pad: [u8; 22],
    }
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short,
        pad: [0; 22],
    };
    let n = name.len().min(libc::IFNAMSIZ - 1);
    req.name[..n].copy_from_slice(&name.as_bytes()[..n]);
    // SAFETY: TUNSETIFF reads an ifreq-sized struct that lives across the call.
    if unsafe { libc::ioctl(fd, libc::TUNSETIFF, &mut req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(owned)
}

/// What QEMU's private root holds: each `(inside, outside, writable)` is bind-mounted.
#[derive(Debug, Clone)]
pub struct Jail {
    /// An empty directory on the host the private root is built on.
    pub root: PathBuf,
    pub binds: Vec<(String, PathBuf, bool)>,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (kvm, for /dev/kvm).
    pub groups: Vec<u32>,
    /// cgroup.procs files to join before anything else.
    pub cgroups: Vec<PathBuf>,
}

/// Everything [`Jail::enter`] needs, made before the fork: no allocation happens after it.
pub struct PreparedJail {
    root: CString,
    mounts: Vec<(CString, CString, bool, bool)>,
    dirs: Vec<CString>,
    files: Vec<CString>,
    links: Vec<(CString, CString)>,
    old: CString,
    old_rel: CString,
    cgroups: Vec<CString>,
    uid: u32,
    gid: u32,
    groups: Vec<libc::gid_t>,
    slash: CString,
    tmpfs: CString,
}

fn cs(p: impl AsRef<std::ffi::OsStr>) -> CString {
    use std::os::unix::ffi::OsStrExt;
    CString::new(p.as_ref().as_bytes()).unwrap_or_default()
}

impl Jail {
    /// The mount plan: the system's /usr read-only (QEMU, its libraries and firmware), the
    /// `/bin`, `/lib`… links of a merged-/usr system, the few device nodes QEMU opens, and
    /// the binds.
    pub fn prepare(&self) -> PreparedJail {
        let root = self.root.clone();
        let inside = |p: &str| cs(root.join(p.trim_start_matches('/')));
        let mut mounts = Vec::new();
        let mut dirs = vec![
            inside("dev"),
            inside("oldroot"),
            inside("usr"),
            inside("tmp"),
        ];
        let mut files = Vec::new();
        mounts.push((cs("/usr"), inside("usr"), true, true));
        for dev in ["null", "zero", "urandom", "random", "kvm"] {
            let host = format!("/dev/{dev}");
            if Path::new(&host).exists() {
                files.push(inside(&host));
                mounts.push((cs(&host), inside(&host), false, false));
            }
        }
        for (at, outside, writable) in &self.binds {
            if outside.is_dir() {
                dirs.push(inside(at));
            } else {
                if let Some(parent) = Path::new(at).parent().filter(|p| *p != Path::new("/")) {
                    dirs.push(inside(&parent.to_string_lossy()));
                }
                files.push(inside(at));
            }
            mounts.push((cs(outside), inside(at), !*writable, true));
        }
        let mut links = Vec::new();
        for l in ["bin", "lib", "lib64", "sbin"] {
            if let Ok(t) = std::fs::read_link(format!("/{l}")) {
                links.push((cs(t), inside(l)));
            } else if Path::new(&format!("/{l}")).is_dir() {
                dirs.push(inside(l));
                mounts.push((cs(format!("/{l}")), inside(l), true, true));
            }
        }
        PreparedJail {
            root: cs(&self.root),
            mounts,
            dirs,
            files,
            links,
            old: inside("oldroot"),
            old_rel: cs("/oldroot"),
            cgroups: self.cgroups.iter().map(cs).collect(),
            uid: self.uid,
            gid: self.gid,
            groups: self.groups.clone(),
            slash: cs("/"),
            tmpfs: cs("tmpfs"),
        }
    }
}

fn check(r: libc::c_int) -> std::io::Result<()> {
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl PreparedJail {
    /// In the forked child, before exec: joins the cgroups, builds the private root in a
    /// new mount namespace, pivots into it and becomes the unprivileged user for good.
    /// Only system calls: safe between fork and exec.
    pub fn enter(&self) -> std::io::Result<()> {
        // SAFETY: system calls on NUL-terminated strings and buffers prepared before the
        // fork, which live across each call.
        unsafe {
            for g in &self.cgroups {
                let fd = libc::open(g.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd >= 0 {
                    libc::write(fd, b"0".as_ptr().cast(), 1);
                    libc::close(fd);
                }
            }
            check(libc::unshare(libc::CLONE_NEWNS))?;
            check(libc::mount(
                std::ptr::null(),
                self.slash.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            check(libc::mount(
                self.tmpfs.as_ptr(),
                self.root.as_ptr(),
                self.tmpfs.as_ptr(),
                libc::MS_NOSUID,
                c"mode=0755".as_ptr().cast(),
            ))?;
            for d in &self.dirs {
                libc::mkdir(d.as_ptr(), 0o755);
            }
            for f in &self.files {
                let fd = libc::open(
                    f.as_ptr(),
                    libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                    0o644,
                );
                if fd >= 0 {
                    libc::close(fd);
                }
            }
            for (target, link) in &self.links {
                libc::symlink(target.as_ptr(), link.as_ptr());
            }
            for (src, dst, ro, rec) in &self.mounts {
                let flags = libc::MS_BIND | if *rec { libc::MS_REC } else { 0 };
                check(libc::mount(
                    src.as_ptr(),
                    dst.as_ptr(),
                    std::ptr::null(),
                    flags,
                    std::ptr::null(),
                ))?;
                let mut re = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID;
                if *ro {
                    re |= libc::MS_RDONLY;
                }
                check(libc::mount(
                    std::ptr::null(),
                    dst.as_ptr(),
                    std::ptr::null(),
                    re,
                    std::ptr::null(),
                ))?;
            }
            check(
                libc::syscall(libc::SYS_pivot_root, self.root.as_ptr(), self.old.as_ptr())
                    as libc::c_int,
            )?;
            check(libc::chdir(self.slash.as_ptr()))?;
            check(libc::umount2(self.old_rel.as_ptr(), libc::MNT_DETACH))?;
            libc::rmdir(self.old_rel.as_ptr());
            check(libc::setgroups(self.groups.len(), self.groups.as_ptr()))?;
            check(libc::setresgid(self.gid, self.gid, self.gid))?;
            check(libc::setresuid(self.uid, self.uid, self.uid))?;
            check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_identity() {
        // SAFETY: getpid has no preconditions.
        let me = unsafe { libc::getpid() };
        let start = start_time(me).expect("own start time");
        assert!(alive(me, start));
        assert!(!alive(me, start + 1));
        assert_eq!(user("root"), Some((0, 0)));
        assert_eq!(user("no-such-user-here"), None);
    }
}

//! Raw Linux plumbing: the private mount namespace every runtime call runs in (hiding
//! cgroup2's controllers from crun on hybrid hosts, and holding a machine's overlay out of
//! the host's mount table), idmapped mounts, user namespaces with a given id map, and
//! pty helpers (receiving a master over a unix socket, setting its size), and file locks.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// A path as a C string; paths with NUL bytes are rejected.
pub fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

/// A plain string as a C string.
pub fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "string contains NUL"))
}

/// A per-machine tmpfs that holds the overlay's upper and work dirs (the disk quota).
#[derive(Debug)]
pub struct TmpfsPlan {
    pub target: CString,
    pub options: CString,
    /// Directories created inside it after mounting, in order.
    pub mkdirs: Vec<CString>,
    /// Owner given to the tmpfs root and `mkdirs` (the machine's root uid/gid on the host).
    pub owner: Option<u32>,
}

/// An idmapped bind mount of the image as the overlay's lower layer.
#[derive(Debug)]
pub struct IdmapPlan {
    pub source: CString,
    pub target: CString,
    /// A user namespace fd whose map is the machine's range (kept open by the driver).
    pub userns_fd: RawFd,
}

/// Everything done in a runtime call's private mount namespace, between fork and exec.
///
/// All strings are prepared beforehand: [`MountPlan::apply`] makes raw system calls
/// only, which is what is allowed in a forked child of a multi-threaded process.
#[derive(Debug, Default)]
pub struct MountPlan {
    /// (empty file, `<cgroup_root>/unified/cgroup.controllers`) on hybrid hosts.
    pub mask: Option<(CString, CString)>,
    pub tmpfs: Option<TmpfsPlan>,
    pub idmap: Option<IdmapPlan>,
    /// (target, options) of the machine's overlay.
    pub overlay: Option<(CString, CString)>,
    /// A network namespace to join (for `ip` calls inside a machine).
    pub netns_fd: Option<RawFd>,
    /// A descriptor to pass to the started program as fd 3 (the agent's listening socket;
    /// crun forwards it with `--preserve-fds 1`).
    pub pass_fd: Option<RawFd>,
    /// RLIMIT_CORE 0 (soft and hard) for the runtime and what it starts: `crun exec`
    /// gives its process the runtime's own limits, not the machine's.
    pub no_core_dumps: bool,
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

impl MountPlan {
    /// Whether the plan needs a private mount namespace at all.
    pub fn needs_mount_ns(&self) -> bool {
        self.mask.is_some()
            || self.tmpfs.is_some()
            || self.idmap.is_some()
            || self.overlay.is_some()
    }

    /// Runs in the child after fork and before exec: raw system calls only, no allocation.
    pub fn apply(&self) -> io::Result<()> {
        if self.no_core_dumps {
            let zero = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: setrlimit(2) on this child with a valid struct.
            check(unsafe { libc::setrlimit(libc::RLIMIT_CORE, &zero) })?;
        }
        if let Some(fd) = self.pass_fd {
            if fd == rnr_agent_proto::control::LISTEN_FD {
                // SAFETY: fcntl on a descriptor the parent keeps open: clear close-on-exec.
                check(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) })?;
            } else {
                // SAFETY: dup2(2) onto fd 3 of this child; the copy has no close-on-exec.
                check(unsafe { libc::dup2(fd, rnr_agent_proto::control::LISTEN_FD) })?;
            }
        }
        if let Some(fd) = self.netns_fd {
            // SAFETY: setns(2) on a namespace fd the parent opened and keeps open.
            check(unsafe { libc::setns(fd, libc::CLONE_NEWNET) })?;
        }
        if !self.needs_mount_ns() {
            return Ok(());
        }
        // SAFETY: unshare(2) only affects this (child) process.
        check(unsafe { libc::unshare(libc::CLONE_NEWNS) })?;
        // SAFETY: NUL-terminated static strings; makes every mount private so nothing done
        // here propagates back to the host's mount table.
        check(unsafe {
            libc::mount(
                c"none".as_ptr(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            )
        })?;
        if let Some((empty, target)) = &self.mask {
            // SAFETY: valid C strings prepared by the parent.
            check(unsafe {
                libc::mount(
                    empty.as_ptr(),
                    target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                )
            })?;
        }
        if let Some(t) = &self.tmpfs {
            // SAFETY: valid C strings prepared by the parent.
            check(unsafe {
                libc::mount(
                    c"tmpfs".as_ptr(),
                    t.target.as_ptr(),
                    c"tmpfs".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV,
                    t.options.as_ptr().cast(),
                )
            })?;
            for dir in &t.mkdirs {
                // SAFETY: valid C string.
                check(unsafe { libc::mkdir(dir.as_ptr(), 0o755) })?;
                if let Some(owner) = t.owner {
                    // SAFETY: valid C string.
                    check(unsafe { libc::chown(dir.as_ptr(), owner, owner) })?;
                }
            }
        }
        if let Some(i) = &self.idmap {
            // SAFETY: open_tree(2) with a valid path; returns a new fd or -1.
            let tree = unsafe {
                libc::syscall(
                    libc::SYS_open_tree,
                    libc::AT_FDCWD,
                    i.source.as_ptr(),
                    OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
                )
            };
            if tree < 0 {
                return Err(io::Error::last_os_error());
            }
            let tree = tree as libc::c_int;
            let attr = MountAttr {
                attr_set: MOUNT_ATTR_IDMAP,
                attr_clr: 0,
                propagation: 0,
                userns_fd: i.userns_fd as u64,
            };
            // SAFETY: mount_setattr(2) on the fd just opened, with a properly sized struct.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_mount_setattr,
                    tree,
                    c"".as_ptr(),
                    libc::AT_EMPTY_PATH as libc::c_uint,
                    &attr as *const MountAttr,
                    std::mem::size_of::<MountAttr>(),
                )
            };
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: move_mount(2) of the detached tree onto a valid target path.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_move_mount,
                    tree,
                    c"".as_ptr(),
                    libc::AT_FDCWD,
                    i.target.as_ptr(),
                    MOVE_MOUNT_F_EMPTY_PATH,
                )
            };
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        if let Some((target, options)) = &self.overlay {
            // SAFETY: valid C strings prepared by the parent.
            check(unsafe {
                libc::mount(
                    c"overlay".as_ptr(),
                    target.as_ptr(),
                    c"overlay".as_ptr(),
                    0,
                    options.as_ptr().cast(),
                )
            })?;
        }
        Ok(())
    }
}

/// Makes `cmd` apply `plan` in its child before exec.
pub fn with_plan(cmd: &mut tokio::process::Command, plan: std::sync::Arc<MountPlan>) {
    // SAFETY: the closure only makes raw system calls on data prepared before the fork
    // (see `MountPlan::apply`), which is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || plan.apply());
    }
}

/// Creates a user namespace mapping ids 0..65536 to `base..base+65536` and returns an fd
/// to it (the namespace lives as long as the fd).
///
/// A namespace needs a process to be born in: a thread-like child (sharing our memory, so
/// nothing is copied and nothing is exec'd) is cloned into a new user namespace and waits
/// on a pipe while its maps are written and the namespace is opened, then exits.
pub fn make_userns(base: u32) -> io::Result<OwnedFd> {
    const STACK: usize = 16 * 1024;
    extern "C" fn hold(arg: *mut libc::c_void) -> libc::c_int {
        // SAFETY: `arg` points at the parent's [read end, write end], alive until the
        // parent has waited for us. The child's own copy of the write end is closed first,
        // or the parent closing its copy would never end the read. Raw calls only.
        unsafe {
            let fds = *(arg as *const [libc::c_int; 2]);
            libc::close(fds[1]);
            let mut b = 0u8;
            libc::read(fds[0], (&mut b as *mut u8).cast(), 1);
            libc::_exit(0)
        }
    }
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two-element array on success.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: fresh descriptors we own.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let mut stack = vec![0u8; STACK];
    let arg = [rd.as_raw_fd(), wr.as_raw_fd()];
    // SAFETY: the child runs `hold` on its own stack (the top of `stack`, 16-byte aligned),
    // which outlives it: we wait for it below before `stack` is dropped. It only makes raw
    // system calls, so sharing our memory (CLONE_VM) cannot race with our threads.
    let pid = unsafe {
        let top = stack.as_mut_ptr().add(STACK) as usize & !15;
        libc::clone(
            hold,
            top as *mut libc::c_void,
            libc::CLONE_VM | libc::CLONE_NEWUSER | libc::SIGCHLD,
            &arg as *const [libc::c_int; 2] as *mut libc::c_void,
        )
    };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    let res = (|| {
        let map = format!("0 {base} 65536\n");
        std::fs::write(format!("/proc/{pid}/uid_map"), &map)?;
        std::fs::write(format!("/proc/{pid}/gid_map"), &map)?;
        let f = std::fs::File::open(format!("/proc/{pid}/ns/user"))?;
        Ok(OwnedFd::from(f))
    })();
    // Closing the write end releases the child.
    drop(wr);
    let mut status = 0;
    // SAFETY: waiting for our own child with a valid out-pointer; __WALL because a
    // CLONE_VM child is still an ordinary child here (SIGCHLD), kept for robustness.
    unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
    drop(rd);
    drop(stack);
    res
}

/// Receives one file descriptor sent with SCM_RIGHTS on `sock` (crun's console socket).
pub fn recv_fd(sock: RawFd) -> io::Result<OwnedFd> {
    let mut data = [0u8; 4096];
    let (_, fds) = rnr_agent_proto::fdpass::recv_with_fds(sock, &mut data)?;
    fds.into_iter().next().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "console socket message carried no file descriptor",
        )
    })
}

/// Start time (clock ticks since boot, field 22 of /proc/<pid>/stat) and whether the
/// process is a zombie; `None` if there is no such process.
pub fn proc_start(proc_root: &Path, pid: i32) -> Option<(u64, bool)> {
    let stat = std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    // After the state, field 22 overall is the 19th remaining one.
    let start = fields.nth(18)?.parse().ok()?;
    Some((start, state == "Z" || state == "X"))
}

/// An flock(2) on a file, held while alive.
pub struct Flock(OwnedFd);

impl Flock {
    /// Waits for the lock on `path` (created if missing): exclusive, or shared with other
    /// shared holders.
    pub fn take(path: &Path, exclusive: bool) -> io::Result<Self> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        let fd = OwnedFd::from(f);
        let op = if exclusive {
            libc::LOCK_EX
        } else {
            libc::LOCK_SH
        };
        // SAFETY: flock(2) on a valid fd.
        if unsafe { libc::flock(fd.as_raw_fd(), op) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self(fd))
    }
}

impl Drop for Flock {
    fn drop(&mut self) {
        // SAFETY: flock(2) on the fd this lock owns.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

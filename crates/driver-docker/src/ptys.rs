//! A per-machine pty quota on Docker. Every container's /dev/pts is a devpts instance of
//! its own, but the engine mounts it without `max`: one machine opening ptys until the
//! kernel says no exhausts the host's `kernel.pty.max`, which every machine's terminals
//! draw from. Once the container has started, and before anyone else runs in it, the
//! driver reconfigures that instance from the host (`fspick` + `fsconfig`, through
//! `/proc/<pid>/root/dev/pts`) with `max`, keeping its other options. The machine's root
//! cannot undo it: remounting needs CAP_SYS_ADMIN, which machines do not have.
//!
//! Reconfiguring another mount namespace's superblock needs CAP_SYS_ADMIN on the host:
//! a platform not running as root cannot, and its machines then have no pty quota.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

const FSPICK_CLOEXEC: libc::c_uint = 0x1;
const FSPICK_SYMLINK_NOFOLLOW: libc::c_uint = 0x2;
const FSPICK_NO_AUTOMOUNT: libc::c_uint = 0x4;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_RECONFIGURE: libc::c_uint = 7;

/// The super options of the devpts mounted at /dev/pts in process `pid`'s mount namespace
/// (the last field of its /proc/<pid>/mountinfo line), e.g. `rw,gid=5,mode=620,ptmxmode=666`.
fn pts_options(proc_root: &Path, pid: u32) -> io::Result<String> {
    let path = proc_root.join(pid.to_string()).join("mountinfo");
    let text = std::fs::read_to_string(&path)?;
    // `id parent maj:min root mountpoint options [optional…] - fstype source superoptions`
    text.lines()
        .filter_map(|l| {
            let (mine, theirs) = l.split_once(" - ")?;
            let point = mine.split(' ').nth(4)?;
            let mut t = theirs.split(' ');
            let (fstype, _source, options) = (t.next()?, t.next()?, t.next()?);
            (point == "/dev/pts" && fstype == "devpts").then(|| options.to_string())
        })
        .next_back()
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no devpts at /dev/pts in {}", path.display()),
            )
        })
}

/// The options to reconfigure with: a reconfiguration resets every option it is not given
/// to devpts's default (ptmxmode=000 would lock everyone but root out of new ptys), so the
/// instance's ownership and modes are given again, and `max`.
fn reconfigured(current: &str, max: u32) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = current
        .split(',')
        .filter_map(|o| o.split_once('='))
        .filter(|(k, _)| matches!(*k, "uid" | "gid" | "mode" | "ptmxmode"))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    out.push(("max".into(), max.to_string()));
    out
}

fn cstring(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in string"))
}

/// Caps the ptys of the machine whose init is host pid `pid` at `max`.
pub fn limit(proc_root: &Path, pid: u32, max: u32) -> io::Result<()> {
    let options = reconfigured(&pts_options(proc_root, pid)?, max);
    let target = proc_root.join(pid.to_string()).join("root/dev/pts");
    let c = cstring(&target.to_string_lossy())?;
    // SAFETY: fspick(2) with a NUL-terminated path; returns a new fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_fspick,
            libc::AT_FDCWD,
            c.as_ptr(),
            FSPICK_CLOEXEC | FSPICK_SYMLINK_NOFOLLOW | FSPICK_NO_AUTOMOUNT,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor fspick just returned, owned by nothing else.
    let fc = unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) };
    for (k, v) in &options {
        let (k, v) = (cstring(k)?, cstring(v)?);
        // SAFETY: fsconfig(2) on our fs context with NUL-terminated key and value.
        let r = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fc.as_raw_fd(),
                FSCONFIG_SET_STRING,
                k.as_ptr(),
                v.as_ptr(),
                0,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("devpts option {k:?}={v:?}: {e}"),
            ));
        }
    }
    // SAFETY: fsconfig(2) reconfigure command on our fs context, no key or value.
    let r = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fc.as_raw_fd(),
            FSCONFIG_CMD_RECONFIGURE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // The kernel shows `max` among the options once it is below its ceiling.
    let now = pts_options(proc_root, pid)?;
    if !now.split(',').any(|o| o == format!("max={max}")) {
        return Err(io::Error::other(format!(
            "devpts options are {now} after setting max={max}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::reconfigured;

    #[test]
    fn keeps_ownership_and_modes_adds_max() {
        let got = reconfigured("rw,nosuid,gid=5,mode=620,ptmxmode=666", 256);
        let want = [
            ("gid", "5"),
            ("mode", "620"),
            ("ptmxmode", "666"),
            ("max", "256"),
        ];
        assert_eq!(
            got,
            want.map(|(k, v)| (k.to_string(), v.to_string())).to_vec()
        );
        // A former max is replaced, not kept beside the new one.
        let got = reconfigured("rw,gid=5,mode=620,ptmxmode=666,max=1000", 8);
        assert_eq!(got.iter().filter(|(k, _)| k == "max").count(), 1);
        assert_eq!(got.last().unwrap().1, "8");
    }
}

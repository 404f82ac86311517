//! Starting processes inside the machine from a multi-threaded agent: everything is
//! prepared before `fork`, the child makes raw system calls only, and a failure before
//! `exec` comes back as the step and errno that failed.

use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How the child's stdio is wired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wiring {
    /// Three pipes; the caller gets `[stdin, stdout, stderr]`'s other ends.
    Pipes,
    /// A new pty of `[rows, cols]`, the child's controlling terminal; the caller gets the
    /// master.
    Tty([u16; 2]),
}

/// Everything the child needs, prepared before fork (after it only raw system calls run).
pub struct Prepared {
    path: CString,
    argv: Vec<CString>,
    env: Vec<CString>,
    uid: libc::uid_t,
    gid: libc::gid_t,
    cwd: CString,
    wiring: Wiring,
}

fn cstring(s: &str, what: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("{what} contains a NUL byte"))
}

/// The environment of a process: the defaults (`PATH`, `TERM`, `HOME`), then `extra`
/// (`KEY=VALUE`), a later key replacing an earlier one.
pub fn environment(home: &str, extra: &[String]) -> Vec<String> {
    let mut env: Vec<String> = vec![
        format!("PATH={DEFAULT_PATH}"),
        "TERM=xterm-256color".into(),
        format!("HOME={home}"),
    ];
    for e in extra {
        let key = e.split('=').next().unwrap_or("");
        env.retain(|old| old.split('=').next() != Some(key));
        env.push(e.clone());
    }
    env
}

impl Prepared {
    pub fn new(
        argv: &[String],
        env: &[String],
        uid: u32,
        gid: u32,
        cwd: Option<&str>,
        wiring: Wiring,
    ) -> Result<Self, String> {
        let program = argv.first().ok_or("argv must not be empty")?;
        let path_var = env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or(DEFAULT_PATH);
        let path = resolve(program, path_var)?;
        Ok(Self {
            path: cstring(&path.to_string_lossy(), "program")?,
            argv: argv
                .iter()
                .map(|a| cstring(a, "an argument"))
                .collect::<Result<_, _>>()?,
            env: env
                .iter()
                .map(|e| cstring(e, "an environment variable"))
                .collect::<Result<_, _>>()?,
            uid,
            gid,
            cwd: cstring(cwd.unwrap_or("/"), "the working directory")?,
            wiring,
        })
    }
}

/// `program` as `execvp` would find it.
fn resolve(program: &str, path_var: &str) -> Result<PathBuf, String> {
    if program.contains('/') {
        return Ok(PathBuf::from(program));
    }
    path_var
        .split(':')
        .map(|d| Path::new(if d.is_empty() { "." } else { d }).join(program))
        .find(|p| {
            std::fs::metadata(p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
        .ok_or_else(|| format!("executable file not found in $PATH: {program:?}"))
}

fn os_err(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

pub fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two-element array on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(os_err("pipe"));
    }
    // SAFETY: both descriptors are fresh and ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A new pty: (master, slave), both close-on-exec, sized `rows`×`cols`.
fn open_pty(rows: u16, cols: u16) -> Result<(OwnedFd, OwnedFd), String> {
    // SAFETY: posix_openpt/grantpt/unlockpt/ptsname_r/open/ioctl on descriptors we own and
    // buffers that outlive the calls.
    unsafe {
        let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        if m < 0 {
            return Err(os_err("opening /dev/ptmx"));
        }
        let master = OwnedFd::from_raw_fd(m);
        if libc::grantpt(m) != 0 || libc::unlockpt(m) != 0 {
            return Err(os_err("unlocking the pty"));
        }
        let mut name = [0 as libc::c_char; 128];
        if libc::ptsname_r(m, name.as_mut_ptr(), name.len()) != 0 {
            return Err(os_err("naming the pty"));
        }
        let s = libc::open(
            name.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        if s < 0 {
            return Err(os_err("opening the pty's slave"));
        }
        let slave = OwnedFd::from_raw_fd(s);
        set_winsize(m, rows, cols);
        Ok((master, slave))
    }
}

/// Sets a pty's size (the kernel signals its foreground process group).
pub fn set_winsize(master: RawFd, rows: u16, cols: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize that lives across the call.
    unsafe { libc::ioctl(master, libc::TIOCSWINSZ, &ws) };
}

const STEPS: [&str; 8] = [
    "",
    "setsid",
    "taking the controlling terminal",
    "redirecting stdio",
    "setting groups",
    "setting the group id",
    "setting the user id",
    "entering the working directory",
];

/// Forks and execs `p`. `register` records the new pid in `table` under its lock, taken
/// across the fork so the reaper cannot see the child's exit first; `forget` removes it
/// again when the child failed before exec. Returns the pid and the caller's ends of the
/// child's stdio.
pub fn spawn<T>(
    p: &Prepared,
    table: &Mutex<T>,
    register: impl FnOnce(&mut T, i32),
    forget: impl FnOnce(&mut T, i32),
) -> Result<(i32, Vec<OwnedFd>), String> {
    let (child_fds, host_fds): ([OwnedFd; 3], Vec<OwnedFd>) = match p.wiring {
        Wiring::Tty([rows, cols]) => {
            let (master, slave) = open_pty(rows, cols)?;
            let dup = |f: &OwnedFd| f.try_clone().map_err(|e| format!("dup: {e}"));
            ([dup(&slave)?, dup(&slave)?, slave], vec![master])
        }
        Wiring::Pipes => {
            let (in_r, in_w) = pipe()?;
            let (out_r, out_w) = pipe()?;
            let (err_r, err_w) = pipe()?;
            ([in_r, out_w, err_w], vec![in_w, out_r, err_r])
        }
    };
    let (status_r, status_w) = pipe()?;
    let mut argv: Vec<*const libc::c_char> = p.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = p.env.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());
    let stdio = [
        child_fds[0].as_raw_fd(),
        child_fds[1].as_raw_fd(),
        child_fds[2].as_raw_fd(),
    ];
    let pid = {
        let mut t = table.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: after fork the child only makes raw system calls on data prepared above
        // (see `child`).
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: in the forked child, see `child`.
            unsafe { child(p, &argv, &envp, stdio, status_w.as_raw_fd()) }
        }
        if pid < 0 {
            return Err(os_err("fork"));
        }
        register(&mut t, pid);
        pid
    };
    drop(child_fds);
    drop(status_w);
    let mut report = [0u8; 8];
    let mut status_r = std::fs::File::from(status_r);
    let n = read_full(&mut status_r, &mut report);
    if n == 0 {
        return Ok((pid, host_fds));
    }
    // The child failed before exec and exits 127; nobody will ask for it.
    forget(&mut table.lock().unwrap_or_else(|e| e.into_inner()), pid);
    let step = u32::from_ne_bytes([report[0], report[1], report[2], report[3]]) as usize;
    let errno = i32::from_ne_bytes([report[4], report[5], report[6], report[7]]);
    let err = std::io::Error::from_raw_os_error(errno);
    Err(match STEPS.get(step) {
        Some(s) if !s.is_empty() => format!("{s}: {err}"),
        _ => format!("exec {:?}: {err}", p.path),
    })
}

fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    n
}

/// The forked child: session, stdio, credentials, cwd, exec. On failure it reports the
/// step and errno on `status` and exits 127.
///
/// # Safety
/// Only call in a freshly forked child of a multi-threaded process: it makes raw system
/// calls only, on pointers that stay valid (they were built before fork).
unsafe fn child(
    p: &Prepared,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    stdio: [RawFd; 3],
    status: RawFd,
) -> ! {
    // SAFETY: see the function's contract: raw system calls on pre-built data only.
    unsafe {
        let fail = |step: u32| -> ! {
            let errno = *libc::__errno_location();
            let mut buf = [0u8; 8];
            buf[..4].copy_from_slice(&step.to_ne_bytes());
            buf[4..].copy_from_slice(&errno.to_ne_bytes());
            libc::write(status, buf.as_ptr().cast(), buf.len());
            libc::_exit(127)
        };
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        // Rust ignores SIGPIPE; the programs we start expect the default.
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        if libc::setsid() < 0 {
            fail(1);
        }
        if matches!(p.wiring, Wiring::Tty(_)) && libc::ioctl(stdio[0], libc::TIOCSCTTY, 0) < 0 {
            fail(2);
        }
        for (target, fd) in stdio.iter().enumerate() {
            if libc::dup2(*fd, target as RawFd) < 0 {
                fail(3);
            }
        }
        let groups = [p.gid];
        // A user namespace whose setgroups(2) is denied (an unprivileged one, such as the
        // fake driver's) refuses it even when nothing would change. A process that keeps
        // this agent's own uid and gid then keeps its groups too, and gains nothing by
        // that; any change of identity still needs setgroups to succeed.
        if libc::setgroups(1, groups.as_ptr()) != 0
            && !(*libc::__errno_location() == libc::EPERM
                && libc::geteuid() == p.uid
                && libc::getegid() == p.gid)
        {
            fail(4);
        }
        if libc::setgid(p.gid) != 0 {
            fail(5);
        }
        if libc::setuid(p.uid) != 0 {
            fail(6);
        }
        if libc::chdir(p.cwd.as_ptr()) != 0 {
            fail(7);
        }
        libc::execve(p.path.as_ptr(), argv.as_ptr(), envp.as_ptr());
        fail(0)
    }
}

/// SIGKILLs `pid`'s process group and every descendant of `pid` (found through /proc).
pub fn kill_tree(pid: i32) {
    let mut children: std::collections::HashMap<i32, Vec<i32>> = Default::default();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            // `pid (comm) state ppid …`: comm may hold spaces and parentheses.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|s| s.parse::<i32>().ok());
            if let Some(pp) = ppid {
                children.entry(pp).or_default().push(p);
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![pid];
    while let Some(p) = stack.pop() {
        if p <= 1 || !seen.insert(p) {
            continue;
        }
        // SAFETY: kill(2) with integer arguments.
        unsafe { libc::kill(p, libc::SIGKILL) };
        stack.extend(children.get(&p).into_iter().flatten().copied());
    }
    // SAFETY: kill(2) of the process group the child created with setsid.
    unsafe { libc::kill(-pid, libc::SIGKILL) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_environment_replaces_defaults() {
        let env = environment("/home/a", &["PATH=/x".into(), "A=1".into(), "A=2".into()]);
        assert_eq!(
            env,
            vec!["TERM=xterm-256color", "HOME=/home/a", "PATH=/x", "A=2"]
        );
    }
}

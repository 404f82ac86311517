//! `rnr-agent init`: PID 1 of a native-driver machine, and the host's way in.
//!
//! It reaps every orphan (as an init must) and serves the exec protocol of
//! [`crate::exec_wire`] on the listening socket the driver passed as fd 3: each connection
//! starts one process — forked here, so it is in the machine's namespaces and cgroup like a
//! `crun exec`'d one — and hands the host the process's stdio descriptors. A process starts
//! in about a millisecond instead of the tens a runtime exec costs, which is what makes a
//! machine's first shell, a check run and a terminal fast.
//!
//! The learner is root in here and may be hostile: the socket is reachable from the host
//! only (it is bound outside the machine's filesystem), PID 1 cannot be signalled from
//! inside the pid namespace (no handlers are installed) and is not dumpable, so it cannot
//! be ptraced or have its descriptors opened through /proc.

use crate::exec_wire::{Reply, Request, KILL, LISTEN_FD, MAX_REQUEST};
use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where a started process is in its life, as the reaper and its connection see it.
enum State {
    /// Forked; the connection has not announced it yet.
    Starting,
    /// Announced; the reaper writes the exit to this connection.
    Running(UnixStream),
    /// Ended before it was announced.
    Exited(i64),
}

type Table = Arc<Mutex<HashMap<i32, State>>>;

fn lock(t: &Table) -> std::sync::MutexGuard<'_, HashMap<i32, State>> {
    t.lock().unwrap_or_else(|p| p.into_inner())
}

fn sigchld_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        set
    }
}

pub fn main() -> ExitCode {
    let set = sigchld_set();
    // SAFETY: plain system calls on valid arguments. SIGCHLD is blocked before any thread
    // starts so that every thread inherits the mask and only the signalfd takes it.
    let (listening, sigfd) = unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        (
            libc::fcntl(LISTEN_FD, libc::F_SETFD, libc::FD_CLOEXEC) == 0,
            libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK),
        )
    };
    if sigfd < 0 {
        eprintln!(
            "rnr-agent init: signalfd: {}",
            std::io::Error::last_os_error()
        );
        return ExitCode::FAILURE;
    }
    if !listening {
        eprintln!("rnr-agent init: no listening socket on fd {LISTEN_FD}; reaping only");
    }
    let table: Table = Arc::default();
    // One thread while idle (an idle machine's init is most of what it costs the host):
    // children's exits and new connections are both waited for here; only a connection
    // gets a thread of its own, for as long as its process runs.
    // SAFETY: fd 3 is the listening socket the driver passed us; nothing else owns it.
    let listener = listening.then(|| unsafe { UnixListener::from_raw_fd(LISTEN_FD) });
    if let Some(l) = &listener {
        let _ = l.set_nonblocking(true);
    }
    loop {
        let mut fds = [
            libc::pollfd {
                fd: sigfd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: if listening { LISTEN_FD } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: poll(2) on an array that lives across the call.
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) } < 0 {
            continue;
        }
        if fds[0].revents != 0 {
            let mut info = [0u8; 128];
            // SAFETY: draining the non-blocking signalfd into a buffer of siginfo size.
            while unsafe { libc::read(sigfd, info.as_mut_ptr().cast(), info.len()) } > 0 {}
            reap(&table);
        }
        if let (true, Some(l)) = (fds[1].revents != 0, &listener) {
            loop {
                match l.accept() {
                    Ok((conn, _)) => {
                        let t = table.clone();
                        let spawned = std::thread::Builder::new()
                            .stack_size(128 << 10)
                            .spawn(move || serve(conn, &t));
                        if spawned.is_err() {
                            // Out of threads (pids limit): the connection was dropped, the
                            // host sees it closed and reports the exec as failed.
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    // EMFILE and friends: back off instead of spinning.
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(10));
                        break;
                    }
                }
            }
        }
    }
}

/// Reaps every child that has ended; announces the exits of the processes connections
/// wait for.
fn reap(table: &Table) {
    loop {
        let mut status = 0;
        // SAFETY: waitpid with a valid out-pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return;
        }
        let code = if libc::WIFEXITED(status) {
            i64::from(libc::WEXITSTATUS(status))
        } else if libc::WIFSIGNALED(status) {
            128 + i64::from(libc::WTERMSIG(status))
        } else {
            continue;
        };
        let mut t = lock(table);
        match t.remove(&pid) {
            Some(State::Running(mut conn)) => {
                let _ = send_line(&mut conn, &Reply::Exited { code });
                let _ = conn.shutdown(std::net::Shutdown::Both);
            }
            Some(State::Starting) => {
                t.insert(pid, State::Exited(code));
            }
            _ => {}
        }
    }
}

fn send_line(conn: &mut UnixStream, reply: &Reply) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(reply).map_err(std::io::Error::other)?;
    line.push(b'\n');
    conn.write_all(&line)
}

/// One connection: start the requested process, then obey `kill` until the host hangs up.
fn serve(mut conn: UnixStream, table: &Table) {
    // The reaper writes the exit under the table lock: never let a stuck host hold it.
    let _ = conn.set_write_timeout(Some(Duration::from_secs(2)));
    let Ok(read_half) = conn.try_clone() else {
        return;
    };
    let _ = read_half.set_read_timeout(Some(Duration::from_secs(30)));
    let mut reader = BufReader::new(read_half);
    let mut line = String::new();
    let res = (&mut reader).take(MAX_REQUEST as u64).read_line(&mut line);
    if res.is_err() || !line.ends_with('\n') {
        return;
    }
    let req = match serde_json::from_str::<Request>(&line) {
        Ok(r) => r,
        Err(e) => {
            let message = format!("bad request: {e}");
            let _ = send_line(&mut conn, &Reply::Failed { message });
            return;
        }
    };
    if let Some(id) = &req.session {
        // The host sees a failed send as a closed connection.
        let _ = match connect_session(id, &req, table) {
            Ok(session) => {
                let mut msg = serde_json::to_vec(&Reply::Connected).unwrap_or_default();
                msg.push(b'\n');
                send_with_fds(conn.as_raw_fd(), &msg, &[session.as_raw_fd()])
            }
            Err(message) => send_line(&mut conn, &Reply::Failed { message }),
        };
        return;
    }
    let started = Prepared::new(&req).and_then(|p| spawn(&p, table));
    let (pid, host_fds) = match started {
        Ok(s) => s,
        Err(message) => {
            let _ = send_line(&mut conn, &Reply::Failed { message });
            return;
        }
    };
    let mut msg = serde_json::to_vec(&Reply::Started { pid }).unwrap_or_default();
    msg.push(b'\n');
    let raw: Vec<RawFd> = host_fds.iter().map(|f| f.as_raw_fd()).collect();
    let sent = send_with_fds(conn.as_raw_fd(), &msg, &raw);
    drop(host_fds);
    {
        let mut t = lock(table);
        if sent.is_err() {
            // Nobody can talk to it: do not leave it running unseen.
            if matches!(t.get(&pid), Some(State::Starting)) {
                kill_tree(pid);
            }
            t.remove(&pid);
            return;
        }
        match t.remove(&pid) {
            Some(State::Exited(code)) => {
                let _ = send_line(&mut conn, &Reply::Exited { code });
                return;
            }
            _ => match conn.try_clone() {
                Ok(c) => {
                    t.insert(pid, State::Running(c));
                }
                Err(_) => return,
            },
        }
    }
    let _ = reader.get_ref().set_read_timeout(None);
    let mut cmd = Vec::new();
    loop {
        cmd.clear();
        match (&mut reader).take(64).read_until(b'\n', &mut cmd) {
            Ok(0) | Err(_) => return,
            Ok(_) if cmd == KILL => {
                let t = lock(table);
                // Holding the lock keeps the reaper from reaping, so the pid cannot have
                // been reused.
                if matches!(t.get(&pid), Some(State::Running(_))) {
                    kill_tree(pid);
                }
            }
            Ok(_) => {}
        }
    }
}

/// A connection to terminal session `id`'s daemon, started first (by running `req`, the
/// agent's own `session attach`, fed nothing) when it is not running.
fn connect_session(id: &str, req: &Request, table: &Table) -> Result<UnixStream, String> {
    if !crate::session::valid_id(id) {
        return Err(format!("invalid session id {id:?}"));
    }
    if let Ok(s) = crate::session::connect(id) {
        return Ok(s);
    }
    let p = Prepared::new(req)?;
    let (pid, host_fds) = spawn(&p, table)?;
    // Its stdin at EOF, the attach starts the daemon, connects, and leaves. Connect only
    // after it left: the daemon serves the newest connection, and ours must be that one.
    drop(host_fds);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let ended = matches!(lock(table).get(&pid), Some(State::Exited(_)));
        if ended {
            break;
        }
        if std::time::Instant::now() > deadline {
            lock(table).remove(&pid);
            kill_tree(pid);
            return Err(format!(
                "starting session {id}: `session attach` did not finish"
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let code = match lock(table).remove(&pid) {
        Some(State::Exited(code)) => code,
        _ => -1,
    };
    crate::session::connect(id)
        .map_err(|e| format!("starting session {id} (attach exited {code}): {e}"))
}

/// Everything the child needs, prepared before fork (after it only raw system calls run).
struct Prepared {
    path: CString,
    argv: Vec<CString>,
    env: Vec<CString>,
    uid: libc::uid_t,
    gid: libc::gid_t,
    cwd: CString,
    tty: Option<[u16; 2]>,
}

fn cstring(s: &str, what: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("{what} contains a NUL byte"))
}

impl Prepared {
    fn new(req: &Request) -> Result<Self, String> {
        let program = req.argv.first().ok_or("argv must not be empty")?;
        let path_var = req
            .env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or(DEFAULT_PATH);
        let path = resolve(program, path_var)?;
        Ok(Self {
            path: cstring(&path.to_string_lossy(), "program")?,
            argv: req
                .argv
                .iter()
                .map(|a| cstring(a, "an argument"))
                .collect::<Result<_, _>>()?,
            env: req
                .env
                .iter()
                .map(|e| cstring(e, "an environment variable"))
                .collect::<Result<_, _>>()?,
            uid: req.uid,
            gid: req.gid,
            cwd: cstring(req.cwd.as_deref().unwrap_or("/"), "the working directory")?,
            tty: req.tty,
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

fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
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
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        libc::ioctl(m, libc::TIOCSWINSZ, &ws);
        Ok((master, slave))
    }
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

/// Forks and execs `p`; returns its pid and the host's ends of its stdio.
fn spawn(p: &Prepared, table: &Table) -> Result<(i32, Vec<OwnedFd>), String> {
    let (child_fds, host_fds): ([OwnedFd; 3], Vec<OwnedFd>) = match p.tty {
        Some([rows, cols]) => {
            let (master, slave) = open_pty(rows, cols)?;
            let dup = |f: &OwnedFd| f.try_clone().map_err(|e| format!("dup: {e}"));
            ([dup(&slave)?, dup(&slave)?, slave], vec![master])
        }
        None => {
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
        let mut t = lock(table);
        // SAFETY: after fork the child only makes raw system calls on data prepared above
        // (see `child`); the parent records the pid before the reaper can see its exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: in the forked child, see `child`.
            unsafe { child(p, &argv, &envp, stdio, status_w.as_raw_fd()) }
        }
        if pid < 0 {
            return Err(os_err("fork"));
        }
        t.insert(pid, State::Starting);
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
    lock(table).remove(&pid);
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
        if p.tty.is_some() && libc::ioctl(stdio[0], libc::TIOCSCTTY, 0) < 0 {
            fail(2);
        }
        for (target, fd) in stdio.iter().enumerate() {
            if libc::dup2(*fd, target as RawFd) < 0 {
                fail(3);
            }
        }
        let groups = [p.gid];
        if libc::setgroups(1, groups.as_ptr()) != 0 {
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

/// Sends `data` with `fds` attached (SCM_RIGHTS), then whatever of `data` is left.
pub(crate) fn send_with_fds(sock: RawFd, data: &[u8], fds: &[RawFd]) -> std::io::Result<()> {
    let payload = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(payload as u32) } as usize;
    let mut cbuf = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: msghdr is plain data; every pointer set below points at live buffers sized
    // as declared, and the cmsg is written inside `cbuf` with the libc CMSG macros.
    let sent = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if !fds.is_empty() {
            msg.msg_control = cbuf.as_mut_ptr().cast();
            msg.msg_controllen = space;
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(payload as u32) as usize;
            std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(c).cast(), fds.len());
        }
        libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL)
    };
    if sent < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let rest = &data[sent as usize..];
    if !rest.is_empty() {
        // SAFETY: `sock` is a valid descriptor borrowed for this call only; ManuallyDrop
        // keeps the temporary File from closing it.
        let mut f = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(sock) });
        f.write_all(rest)?;
    }
    Ok(())
}

/// SIGKILLs `pid`'s process group and every descendant of `pid` (found through /proc).
fn kill_tree(pid: i32) {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
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
    let mut seen = HashSet::new();
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

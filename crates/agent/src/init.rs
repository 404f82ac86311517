//! `rnr-agent init`: PID 1 of a machine, and the host's way in.
//!
//! It reaps every orphan (as an init must) and serves the agent protocol
//! (`rnr_agent_proto`) on a listening socket: the one the driver passed as fd 3 (native:
//! bound outside the machine, reachable from the host only), else an abstract socket
//! that `rnr-agent serve` relays the host to (Docker). Each connection carries one request:
//!
//! * exec: the process is forked here, so it is in the machine's namespaces and cgroup like
//!   a runtime-exec'd one, in about a millisecond; its stdio is handed over or framed;
//! * session: the session's daemon, started here as init's own child, is connected to the
//!   host; what answers on the daemon's socket must be that child (its peer pid), so a
//!   learner who kills a daemon and takes its socket name reaches nobody;
//! * check: `rnr-agent check` evaluates the suite in a child process.
//!
//! The learner is root in here and may be hostile: PID 1 cannot be signalled from inside
//! the pid namespace (no handlers are installed) and is not dumpable, so it cannot be
//! ptraced or have its descriptors opened through /proc.

use crate::accounts;
use crate::relay;
use crate::spawn::{self, kill_tree, Prepared, Wiring};
use rnr_agent_proto::control::{
    self, valid_session_id, ExecRequest, Reply, Request, SessionRequest, Stdio, LISTEN_FD,
    MAX_REQUEST,
};
use rnr_agent_proto::fdpass;
use rnr_agent_proto::frame;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::ExitCode;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// Who hears of a process's exit.
enum ExitTo {
    /// The host's connection (descriptors were handed over): the reaper writes it there.
    Conn(UnixStream),
    /// The thread that relays the process's output (framed exec, check), which sends it
    /// once the output has ended.
    Thread(mpsc::SyncSender<i64>),
}

/// Where a started process is in its life, as the reaper and its connection see it.
enum State {
    /// Forked; the connection has not announced it yet.
    Starting,
    /// Announced; its exit goes to the `ExitTo`.
    Running(ExitTo),
    /// Ended before it was announced.
    Exited(i64),
    /// The daemon of this session.
    Daemon(String),
}

#[derive(Default)]
pub struct Procs {
    procs: HashMap<i32, State>,
    /// Session id → (daemon pid, the abstract socket name it listens on).
    sessions: HashMap<String, (i32, String)>,
}

pub type Table = Arc<Mutex<Procs>>;

fn lock(t: &Table) -> std::sync::MutexGuard<'_, Procs> {
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

/// The agent's own binary, for the children it starts (`check`, `session-daemon`).
fn self_exe() -> String {
    std::fs::read_link("/proc/self/exe")
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| rnr_agent_proto::AGENT_PATH.to_string())
}

/// Whether `fd` is a socket that listens.
fn is_listening(fd: i32) -> bool {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt into an int of the size passed; fails on anything not a socket.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    r == 0 && v != 0
}

/// The listening socket: fd 3 when the driver passed one, else the abstract name. Called
/// before init opens any descriptor of its own, which could take number 3.
fn listener() -> Option<UnixListener> {
    // SAFETY: fcntl on a descriptor number; fails harmlessly when fd 3 is not open.
    let passed = is_listening(LISTEN_FD)
        && unsafe { libc::fcntl(LISTEN_FD, libc::F_SETFD, libc::FD_CLOEXEC) } == 0;
    if passed {
        // SAFETY: fd 3 is the listening socket the driver passed us; nothing else owns it.
        return Some(unsafe { UnixListener::from_raw_fd(LISTEN_FD) });
    }
    match crate::session::socket_addr(control::INIT_ABSTRACT_NAME)
        .and_then(|a| UnixListener::bind_addr(&a))
    {
        Ok(l) => Some(l),
        Err(e) => {
            eprintln!(
                "rnr-agent init: cannot listen on @{}: {e}; reaping only",
                control::INIT_ABSTRACT_NAME
            );
            None
        }
    }
}

/// `init [--hostname NAME] [--vm-port FD]`: drivers whose runtime cannot name the machine
/// (a new UTS namespace made by the driver itself, a VM's kernel) pass its hostname here;
/// in a VM, `rnr-agent vm-init` passes the serial port the host's connections come over
/// (multiplexed, `crate::vm`) and the init signals mean reboot and power off.
pub fn main(args: &[String]) -> ExitCode {
    let mut port: Option<i32> = None;
    let mut rest = args;
    while !rest.is_empty() {
        match rest {
            [flag, name, tail @ ..] if flag == "--hostname" => {
                // SAFETY: sethostname reads `name.len()` bytes from a live buffer.
                if unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) } != 0 {
                    eprintln!(
                        "rnr-agent init: cannot set the hostname {name:?}: {}",
                        std::io::Error::last_os_error()
                    );
                }
                rest = tail;
            }
            [flag, fd, tail @ ..] if flag == "--vm-port" && fd.parse::<i32>().is_ok() => {
                port = fd.parse().ok();
                rest = tail;
            }
            _ => {
                eprintln!("usage: rnr-agent init [--hostname NAME] [--vm-port FD]");
                return ExitCode::from(2);
            }
        }
    }
    // In a VM the host comes over the port only; elsewhere over the listening socket.
    let listener = if port.is_some() { None } else { listener() };
    let mut set = sigchld_set();
    if port.is_some() {
        for (signal, _) in crate::vm::INIT_SIGNALS {
            // SAFETY: adding a signal number to an initialised set.
            unsafe { libc::sigaddset(&mut set, signal) };
        }
    }
    // SAFETY: plain system calls on valid arguments. SIGCHLD is blocked before any thread
    // starts so that every thread inherits the mask and only the signalfd takes it.
    let sigfd = unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK)
    };
    if sigfd < 0 {
        eprintln!(
            "rnr-agent init: signalfd: {}",
            std::io::Error::last_os_error()
        );
        return ExitCode::FAILURE;
    }
    let table: Table = Arc::default();
    // In a VM root may cover /.rnr (its kernel, its mounts): children are started from
    // init's own binary, whatever is mounted where it came from.
    let exe: Arc<str> = if port.is_some() {
        "/proc/self/exe".into()
    } else {
        self_exe().into()
    };
    if let Some(l) = &listener {
        let _ = l.set_nonblocking(true);
    }
    if let Some(fd) = port {
        let (t, exe) = (table.clone(), exe.clone());
        crate::vm::start_port(fd, move |conn| serve(conn, &t, &exe));
    }
    // One thread while idle (an idle machine's init is most of what it costs the host):
    // children's exits and new connections are both waited for here; only a connection
    // gets a thread of its own, for as long as its request runs.
    loop {
        let mut fds = [
            libc::pollfd {
                fd: sigfd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: listener.as_ref().map_or(-1, |l| l.as_raw_fd()),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: poll(2) on an array that lives across the call.
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) } < 0 {
            continue;
        }
        if fds[0].revents != 0 {
            let mut info: libc::signalfd_siginfo =
                // SAFETY: signalfd_siginfo is plain data.
                unsafe { std::mem::zeroed() };
            let size = std::mem::size_of::<libc::signalfd_siginfo>();
            // SAFETY: draining the non-blocking signalfd into a siginfo of its size.
            while unsafe {
                libc::read(
                    sigfd,
                    (&mut info as *mut libc::signalfd_siginfo).cast(),
                    size,
                )
            } > 0
            {
                let signo = info.ssi_signo as libc::c_int;
                if signo != libc::SIGCHLD && port.is_some() {
                    crate::vm::shutdown(signo);
                }
            }
            reap(&table);
        }
        if let (true, Some(l)) = (fds[1].revents != 0, &listener) {
            loop {
                match l.accept() {
                    Ok((conn, _)) => {
                        let t = table.clone();
                        let exe = exe.clone();
                        let spawned = std::thread::Builder::new()
                            .stack_size(128 << 10)
                            .spawn(move || serve(conn, &t, &exe));
                        if spawned.is_err() {
                            // Out of threads (pids limit): the connection was dropped, the
                            // host sees it closed and reports the request as failed.
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

/// Reaps every child that has ended; announces the exits that connections wait for.
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
        match t.procs.remove(&pid) {
            Some(State::Running(ExitTo::Conn(mut conn))) => {
                let _ = conn.write_all(&control::encode_reply(&Reply::Exited { code }));
                let _ = conn.shutdown(std::net::Shutdown::Both);
            }
            Some(State::Running(ExitTo::Thread(tx))) => {
                let _ = tx.try_send(code);
            }
            Some(State::Starting) => {
                t.procs.insert(pid, State::Exited(code));
            }
            Some(State::Daemon(id)) => {
                if t.sessions.get(&id).is_some_and(|(p, _)| *p == pid) {
                    t.sessions.remove(&id);
                }
            }
            Some(State::Exited(_)) | None => {}
        }
    }
}

fn send(conn: &mut UnixStream, reply: &Reply) -> std::io::Result<()> {
    conn.write_all(&control::encode_reply(reply))
}

fn failed(conn: &mut UnixStream, message: String) {
    let _ = send(conn, &Reply::Failed { message });
}

/// One connection: read its request, carry it out.
fn serve(mut conn: UnixStream, table: &Table, exe: &str) {
    // The reaper writes exits under the table lock: never let a stuck host hold it.
    let _ = conn.set_write_timeout(Some(Duration::from_secs(2)));
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let req = match frame::read_blocking(&mut conn, MAX_REQUEST) {
        Ok(Some((tag, payload))) => control::parse_request(tag, &payload),
        Ok(None) | Err(_) => return,
    };
    let _ = conn.set_read_timeout(None);
    match req {
        Err(e) => failed(&mut conn, format!("bad request: {e}")),
        Ok(Request::Exec(e)) => exec(conn, &e, table),
        Ok(Request::Session(s)) => session(conn, &s, table, exe),
        Ok(Request::Check(suite)) => check(conn, &suite, table, exe),
    }
}

fn register(t: &mut Procs, pid: i32) {
    t.procs.insert(pid, State::Starting);
}

fn forget(t: &mut Procs, pid: i32) {
    t.procs.remove(&pid);
}

/// Starts `argv` as root (or as `req.user`), wired as asked.
fn start(req: &ExecRequest, table: &Table) -> Result<(i32, Vec<OwnedFd>), String> {
    let id = accounts::resolve(req.user.as_deref())?;
    let env = spawn::environment(&id.home, &req.env);
    let wiring = req.tty.map_or(Wiring::Pipes, Wiring::Tty);
    let p = Prepared::new(&req.argv, &env, id.uid, id.gid, req.cwd.as_deref(), wiring)?;
    spawn::spawn(&p, table, register, forget)
}

/// Marks `pid` as announced: its exit goes to `to`. `Err(code)` when it has already ended.
fn announce(table: &Table, pid: i32, to: ExitTo) -> Result<(), i64> {
    let mut t = lock(table);
    match t.procs.remove(&pid) {
        Some(State::Exited(code)) => Err(code),
        _ => {
            t.procs.insert(pid, State::Running(to));
            Ok(())
        }
    }
}

/// Kills `pid`'s tree if it still runs. Holding the lock keeps the reaper from reaping,
/// so the pid cannot have been reused.
fn kill_if_running(table: &Table, pid: i32) {
    let t = lock(table);
    if matches!(t.procs.get(&pid), Some(State::Running(_) | State::Starting)) {
        kill_tree(pid);
    }
}

fn exec(mut conn: UnixStream, req: &ExecRequest, table: &Table) {
    let (pid, host_fds) = match start(req, table) {
        Ok(s) => s,
        Err(message) => return failed(&mut conn, message),
    };
    match req.stdio {
        Stdio::Passed => exec_passed(conn, pid, host_fds, table),
        Stdio::Framed => relay::framed_exec(conn, pid, host_fds, req.tty.is_some(), table),
    }
}

/// The host holds the process's stdio itself; this connection only carries kill and exit.
fn exec_passed(mut conn: UnixStream, pid: i32, host_fds: Vec<OwnedFd>, table: &Table) {
    let msg = control::encode_reply(&Reply::Started { pid });
    let raw: Vec<_> = host_fds.iter().map(|f| f.as_raw_fd()).collect();
    let sent = fdpass::send_with_fds(conn.as_raw_fd(), &msg, &raw);
    drop(host_fds);
    if sent.is_err() {
        // Nobody can talk to it: do not leave it running unseen.
        kill_if_running(table, pid);
        lock(table).procs.remove(&pid);
        return;
    }
    let Ok(notify) = conn.try_clone() else {
        return;
    };
    if let Err(code) = announce(table, pid, ExitTo::Conn(notify)) {
        let _ = send(&mut conn, &Reply::Exited { code });
        return;
    }
    relay::obey_kills(&mut conn, || kill_if_running(table, pid));
}

/// Announces `pid` with its exit sent to a thread; returns where that thread waits.
pub fn announce_to_thread(table: &Table, pid: i32) -> mpsc::Receiver<i64> {
    let (tx, rx) = mpsc::sync_channel(1);
    if let Err(code) = announce(table, pid, ExitTo::Thread(tx)) {
        let (tx, rx) = mpsc::sync_channel(1);
        let _ = tx.try_send(code);
        return rx;
    }
    rx
}

/// Kills the process of a framed exec on the host's request.
pub fn kill(table: &Table, pid: i32) {
    kill_if_running(table, pid)
}

fn session(mut conn: UnixStream, req: &SessionRequest, table: &Table, exe: &str) {
    let daemon = match connect_session(req, table, exe, Duration::from_secs(5)) {
        Ok(d) => d,
        Err(message) => return failed(&mut conn, message),
    };
    let msg = control::encode_reply(&Reply::Connected);
    match req.stdio {
        Stdio::Passed => {
            let _ = fdpass::send_with_fds(conn.as_raw_fd(), &msg, &[daemon.as_raw_fd()]);
        }
        Stdio::Framed => {
            if conn.write_all(&msg).is_ok() {
                relay::splice(conn, daemon);
            }
        }
    }
}

/// Connects to session `req.id`'s daemon, starting it first when it does not run. Whatever
/// answers must be the daemon this init started for the id: a daemon that died frees its
/// socket name, and a learner's process may take it before the reaper has noticed.
fn connect_session(
    req: &SessionRequest,
    table: &Table,
    exe: &str,
    patience: Duration,
) -> Result<UnixStream, String> {
    let id = req.id.as_str();
    if !valid_session_id(id) {
        return Err(format!("invalid session id {id:?}"));
    }
    let deadline = Instant::now() + patience;
    let mut starts = 0;
    loop {
        let known = lock(table).sessions.get(id).cloned();
        let (pid, name) = match known {
            Some(k) => k,
            None if starts >= 3 => return Err(format!("session {id}: its daemon keeps exiting")),
            None => {
                starts += 1;
                let started = start_daemon(req, table, exe)?;
                let mut t = lock(table);
                // Another attach may have started one meanwhile: the first one wins.
                if t.sessions.contains_key(id) {
                    kill_tree(started.0);
                    continue;
                }
                t.procs.insert(started.0, State::Daemon(id.to_string()));
                t.sessions.insert(id.to_string(), started.clone());
                started
            }
        };
        let still_registered = || lock(table).sessions.get(id).is_some_and(|(p, _)| *p == pid);
        let addr = crate::session::socket_addr(&name).map_err(|e| e.to_string())?;
        let why = match UnixStream::connect_addr(&addr) {
            Ok(s) => match fdpass::peer_pid(s.as_raw_fd()) {
                Ok(peer) if peer == pid => return Ok(s),
                Ok(peer) => {
                    format!("its socket is answered by pid {peer}, not by its daemon (pid {pid})")
                }
                Err(e) => e.to_string(),
            },
            // Not listening yet (just started), or gone.
            Err(e) => e.to_string(),
        };
        if Instant::now() > deadline {
            return Err(format!("session {id}: {why}; refusing to connect"));
        }
        if still_registered() {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// A fresh, unguessable socket name for a new daemon of session `id`.
fn daemon_socket_name(id: &str) -> String {
    let mut nonce = [0u8; 16];
    // SAFETY: getrandom fills the buffer it is given, of that length.
    unsafe { libc::getrandom(nonce.as_mut_ptr().cast(), nonce.len(), 0) };
    let hex: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
    format!("rnr-session-{id}-{hex}")
}

fn start_daemon(req: &SessionRequest, table: &Table, exe: &str) -> Result<(i32, String), String> {
    let name = daemon_socket_name(&req.id);
    let argv = vec![
        exe.to_string(),
        "session-daemon".into(),
        req.id.clone(),
        req.rows.to_string(),
        req.cols.to_string(),
        name.clone(),
    ];
    let env = spawn::environment("/root", &[]);
    let p = Prepared::new(&argv, &env, 0, 0, Some("/"), Wiring::Pipes)?;
    // The daemon detaches its stdio at once; the pipes' other ends are not needed.
    let (pid, _stdio) = spawn::spawn(&p, table, register, forget)?;
    Ok((pid, name))
}

/// Evaluates `suite` with `rnr-agent check` in a child (its commands' exits are its own to
/// wait for, not this reaper's) and replies with the outcomes.
fn check(mut conn: UnixStream, suite: &rnr_agent_proto::check::Suite, table: &Table, exe: &str) {
    let argv = vec![exe.to_string(), "check".to_string()];
    let env = spawn::environment("/root", &[]);
    let started = Prepared::new(&argv, &env, 0, 0, Some("/"), Wiring::Pipes)
        .and_then(|p| spawn::spawn(&p, table, register, forget));
    let (pid, fds) = match started {
        Ok(s) => s,
        Err(message) => return failed(&mut conn, format!("starting rnr-agent check: {message}")),
    };
    let exited = announce_to_thread(table, pid);
    let Ok([stdin, stdout, stderr]) = <[OwnedFd; 3]>::try_from(fds) else {
        return failed(&mut conn, "rnr-agent check: stdio missing".into());
    };
    let input = serde_json::to_vec(suite).unwrap_or_default();
    let feeder = std::thread::spawn(move || {
        let _ = std::fs::File::from(stdin).write_all(&input);
    });
    let errors = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = std::fs::File::from(stderr)
            .take(4096)
            .read_to_end(&mut text);
        text
    });
    let mut out = Vec::new();
    let _ = std::fs::File::from(stdout)
        .take(control::MAX_REPLY as u64)
        .read_to_end(&mut out);
    let _ = feeder.join();
    let err = errors.join().unwrap_or_default();
    let code = exited.recv().unwrap_or(-1);
    let reply = match serde_json::from_slice(&out) {
        Ok(outcomes) if code == 0 => Reply::Checked { outcomes },
        _ => Reply::Failed {
            message: format!(
                "rnr-agent check exited {code}: {}",
                String::from_utf8_lossy(&err).trim()
            ),
        },
    };
    let _ = send(&mut conn, &reply);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A learner's process that answers on a session daemon's socket name is not connected
    /// to: the peer must be the daemon init started.
    #[test]
    fn an_impostor_on_a_daemons_socket_is_refused() {
        let name = daemon_socket_name("t-imp");
        let addr = crate::session::socket_addr(&name).unwrap();
        let _impostor = UnixListener::bind_addr(&addr).unwrap();
        let table: Table = Arc::default();
        // Registered as the daemon: a pid that is not this process.
        lock(&table)
            .sessions
            .insert("t-imp".into(), (std::process::id() as i32 + 1, name));
        let req = SessionRequest {
            id: "t-imp".into(),
            rows: 24,
            cols: 80,
            stdio: Stdio::Passed,
        };
        let err =
            connect_session(&req, &table, "/nonexistent", Duration::from_millis(100)).unwrap_err();
        assert!(err.contains("not by its daemon"), "{err}");
    }

    #[test]
    fn daemon_socket_names_are_unguessable() {
        let (a, b) = (daemon_socket_name("x"), daemon_socket_name("x"));
        assert_ne!(a, b);
        assert!(a.starts_with("rnr-session-x-") && a.len() == "rnr-session-x-".len() + 32);
    }
}

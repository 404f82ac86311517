//! `rnr-agent session-daemon`: terminal sessions that outlive the gateway.
//!
//! A session's daemon owns a pty running the machine's shell and a screen model (vt100,
//! fed lazily: crate::screen) of what the pty printed. `rnr-agent init` starts it as its
//! own child on the first attach and hands the host connections to it (see crate::init);
//! when the gateway dies, only its connection ends; the shell, its jobs and its screen stay.
//!
//! Frames both ways are `rnr_agent_proto::session`'s (docs/terminal-protocol.md). The
//! daemon serves one connection at a time: a new one (the gateway restarted or
//! re-attached) replaces the old. Output is read from the pty only while the connection
//! can take it, so a stalled gateway stalls the shell instead of filling memory; input
//! keeps being accepted, so Ctrl-C still gets through.
//!
//! The daemon is not dumpable: root in the machine (without CAP_SYS_PTRACE) can neither
//! ptrace it nor open its descriptors through /proc, so the pty master it hands the
//! gateway is shared with nobody the learner controls.

use rnr_agent_proto::control::valid_session_id;
use rnr_agent_proto::frame;
use rnr_agent_proto::session::{FromDaemon, Hello, ToDaemon, MAX_DIM, MAX_TO_DAEMON, T_INPUT};
use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::ExitCode;
use std::time::Duration;

/// Largest input frame accepted; anything larger ends the connection.
const MAX_IN_FRAME: usize = MAX_TO_DAEMON;
/// Output gathered into one frame at most.
const OUT_CHUNK: usize = 32 * 1024;
/// Quiet time after which pending output is emulated into the screen model.
const SETTLE_MS: libc::c_int = 20;

fn usage() -> ExitCode {
    eprintln!(
        "usage: rnr-agent session-daemon ID ROWS COLS SOCKET-NAME (started by rnr-agent init)"
    );
    ExitCode::from(2)
}

/// `rnr-agent session-daemon ID ROWS COLS NAME`: the daemon of session `ID`, listening on
/// the abstract socket `NAME`. Only `rnr-agent init` starts it (see `crate::init`), as its
/// own child, and checks that whatever answers on `NAME` is that child.
pub fn main(args: &[String]) -> ExitCode {
    let [id, rows, cols, name] = args else {
        return usage();
    };
    if !valid_session_id(id) || name.is_empty() {
        return usage();
    }
    let dim = |s: &str, d: u16| s.parse::<u16>().map(|v| v.clamp(1, MAX_DIM)).unwrap_or(d);
    match daemon(name, dim(rows, 24), dim(cols, 80)) {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("rnr-agent session {id}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Abstract socket address: no file to create, nothing the image has to provide, and it
/// vanishes with the daemon.
pub fn socket_addr(name: &str) -> std::io::Result<std::os::unix::net::SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
}

fn detach_stdio() {
    let devnull = CString::new("/dev/null").expect("static path");
    // SAFETY: open/dup2/close on plain descriptors; the exec's pipes must not be held by
    // the daemon, or the driver would never see the exec's output end.
    unsafe {
        let fd = libc::open(devnull.as_ptr(), libc::O_RDWR);
        if fd >= 0 {
            for target in 0..3 {
                libc::dup2(fd, target);
            }
            if fd > 2 {
                libc::close(fd);
            }
        }
        for fd in 3..1024 {
            libc::close(fd);
        }
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
}

fn shell() -> &'static str {
    ["/bin/bash", "/bin/sh"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("/bin/sh")
}

/// Starts the shell on a new pty; returns (master, pid).
fn spawn_shell(rows: u16, cols: u16) -> std::io::Result<(OwnedFd, i32)> {
    let sh = CString::new(shell()).expect("static path");
    let login = CString::new("-l").expect("static");
    let env: Vec<CString> = [
        "TERM=xterm-256color",
        "HOME=/root",
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG=C.UTF-8",
    ]
    .iter()
    .map(|s| CString::new(*s).expect("static"))
    .collect();
    let mut envp: Vec<*const libc::c_char> = env.iter().map(|c| c.as_ptr()).collect();
    envp.push(std::ptr::null());
    let argv = [sh.as_ptr(), login.as_ptr(), std::ptr::null()];
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let root = CString::new("/root").expect("static");
    let mut master: RawFd = -1;
    // SAFETY: forkpty with valid pointers; the child only calls exec-family and _exit.
    let pid = unsafe { libc::forkpty(&mut master, std::ptr::null_mut(), std::ptr::null(), &ws) };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: in the child: reset signal dispositions the daemon changed, then exec.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            libc::signal(libc::SIGHUP, libc::SIG_DFL);
            if libc::chdir(root.as_ptr()) != 0 {
                let slash = c"/";
                libc::chdir(slash.as_ptr());
            }
            libc::execve(sh.as_ptr(), argv.as_ptr(), envp.as_ptr());
            libc::_exit(127);
        }
    }
    // SAFETY: forkpty returned a fresh master descriptor we now own.
    Ok((unsafe { OwnedFd::from_raw_fd(master) }, pid))
}

fn nz(v: u16) -> std::num::NonZeroU16 {
    std::num::NonZeroU16::new(v).unwrap_or(std::num::NonZeroU16::MIN)
}

fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
}

/// Escape sequences that repaint `screen` on a terminal in any state. Built from the
/// model, not from past output, so no old terminal query is ever replayed.
fn snapshot(screen: &vt100::Screen) -> Vec<u8> {
    let mut out = Vec::with_capacity(4096);
    // Full reset, then the alternate screen if a full-screen program is running.
    out.extend_from_slice(b"\x1bc");
    if screen.alternate_screen() {
        out.extend_from_slice(b"\x1b[?1049h");
    }
    out.extend_from_slice(screen.state_formatted().as_bytes());
    out.extend_from_slice(screen.cursor_state_formatted().as_bytes());
    out
}

struct Conn {
    stream: UnixStream,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    wpos: usize,
    /// The gateway asked for the pty; it is sent once `wbuf` has drained, so every output
    /// frame read before the hand-over reaches the gateway before the pty does.
    direct_asked: bool,
    /// The gateway holds the pty: it reads and writes it, this daemon only models the
    /// screen from its copies.
    direct: bool,
}

impl Conn {
    fn new(stream: UnixStream, hello: Hello) -> std::io::Result<Self> {
        stream.set_nonblocking(true)?;
        let mut wbuf = Vec::new();
        FromDaemon::Hello(hello).push(&mut wbuf);
        Ok(Self {
            stream,
            rbuf: Vec::new(),
            wbuf,
            wpos: 0,
            direct_asked: false,
            direct: false,
        })
    }

    fn pending(&self) -> bool {
        self.wpos < self.wbuf.len()
    }

    /// Writes what it can; false when the connection is dead.
    fn flush(&mut self) -> bool {
        while self.pending() {
            match self.stream.write(&self.wbuf[self.wpos..]) {
                Ok(0) => return false,
                Ok(n) => self.wpos += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        self.wbuf.clear();
        self.wpos = 0;
        true
    }
}

struct Session {
    master: OwnedFd,
    pid: i32,
    model: crate::screen::Model,
    /// Typed bytes not yet taken by the pty (bounded by [`MAX_IN_FRAME`]).
    input: Vec<u8>,
}

impl Session {
    fn hello(&self) -> Hello {
        let (rows, cols) = self.model.size();
        Hello {
            shell_pid: self.pid as u32,
            rows: rows.get(),
            cols: cols.get(),
            direct: true,
        }
    }

    fn resize(&mut self, rows: u16, cols: u16) {
        let rows = rows.clamp(1, MAX_DIM);
        let cols = cols.clamp(1, MAX_DIM);
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ on our pty master with a valid winsize; the kernel sends
        // SIGWINCH to the foreground process group.
        unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        self.model.set_size(nz(rows), nz(cols));
    }

    fn hang_up(&self) {
        // SAFETY: signalling the shell's process group, which we created.
        unsafe {
            libc::kill(-self.pid, libc::SIGHUP);
            libc::kill(self.pid, libc::SIGHUP);
        }
    }
}

/// Handles the complete frames in `conn.rbuf`; false when the connection must end.
fn handle_frames(sess: &mut Session, conn: &mut Conn) -> Result<bool, ()> {
    let mut off = 0;
    loop {
        let avail = &conn.rbuf[off..];
        let Some((ty, len)) = frame::peek(avail, MAX_IN_FRAME).map_err(|_| ())? else {
            break;
        };
        // Input waiting for the pty: stop here so memory stays bounded.
        if ty == T_INPUT && sess.input.len() + len > MAX_IN_FRAME {
            break;
        }
        let p = &avail[frame::HEADER..frame::HEADER + len];
        match ToDaemon::parse(ty, p).map_err(|_| ())? {
            ToDaemon::Input(d) => sess.input.extend_from_slice(d),
            ToDaemon::Resize { rows, cols } => sess.resize(rows, cols),
            ToDaemon::SnapshotReq { tag } => {
                let screen = snapshot(sess.model.screen());
                FromDaemon::Snapshot {
                    tag,
                    screen: &screen,
                }
                .push(&mut conn.wbuf);
            }
            ToDaemon::Kill => {
                sess.hang_up();
                return Ok(false);
            }
            ToDaemon::DirectReq => conn.direct_asked = true,
            ToDaemon::Copy(d) => sess.model.feed(d),
        }
        off += frame::HEADER + len;
    }
    conn.rbuf.drain(..off);
    Ok(true)
}

fn daemon(name: &str, rows: u16, cols: u16) -> std::io::Result<i32> {
    detach_stdio();
    // SAFETY: prctl with integer arguments. Not dumpable: see the module's header.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    let listener = UnixListener::bind_addr(&socket_addr(name)?)?;
    listener.set_nonblocking(true)?;
    let (master, pid) = spawn_shell(rows, cols)?;
    set_nonblocking(master.as_raw_fd());
    let mut sess = Session {
        master,
        pid,
        model: crate::screen::Model::new(nz(rows), nz(cols)),
        input: Vec::new(),
    };
    let mut conn: Option<Conn> = None;
    let mut buf = vec![0u8; OUT_CHUNK];
    let mut killed = false;
    loop {
        let master_fd = sess.master.as_raw_fd();
        let direct = matches!(&conn, Some(c) if c.direct);
        // In direct mode the gateway reads the pty; POLLHUP (always reported) still tells
        // this daemon that the shell is gone.
        let writable = !direct && !matches!(&conn, Some(c) if c.pending());
        let mut fds = vec![
            libc::pollfd {
                fd: listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: master_fd,
                // Read the pty only when the output can go somewhere: backpressure.
                events: (if writable { libc::POLLIN } else { 0 })
                    | (if sess.input.is_empty() {
                        0
                    } else {
                        libc::POLLOUT
                    }),
                revents: 0,
            },
        ];
        if let Some(c) = &conn {
            fds.push(libc::pollfd {
                fd: c.stream.as_raw_fd(),
                events: libc::POLLIN | if c.pending() { libc::POLLOUT } else { 0 },
                revents: 0,
            });
        }
        // Output not yet emulated is emulated once the terminal is quiet for a moment.
        let timeout = if sess.model.has_pending() {
            SETTLE_MS
        } else {
            -1
        };
        // SAFETY: fds is a valid array of pollfd for its length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(std::io::Error::last_os_error());
        }
        if n == 0 {
            sess.model.settle_idle();
            continue;
        }
        if fds[0].revents & libc::POLLIN != 0 {
            if let Ok((s, _)) = listener.accept() {
                // A newer attach replaces the old one (the old gateway is gone or stale).
                conn = Conn::new(s, sess.hello()).ok();
            }
        }
        // Client first, so Ctrl-C is taken before more output is read.
        if let (Some(c), Some(pfd)) = (conn.as_mut(), fds.get(2)) {
            let mut alive = true;
            if pfd.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                // Copies (direct mode) arrive in frames of up to 32 KiB.
                let mut tmp = [0u8; 32 * 1024];
                match c.stream.read(&mut tmp) {
                    Ok(0) => alive = false,
                    Ok(k) => c.rbuf.extend_from_slice(&tmp[..k]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => alive = false,
                }
                if c.rbuf.len() > 2 * MAX_IN_FRAME + 5 {
                    alive = false;
                }
            }
            if alive {
                match handle_frames(&mut sess, c) {
                    Ok(true) => {}
                    Ok(false) => {
                        killed = true;
                    }
                    Err(()) => alive = false,
                }
            }
            if alive && c.pending() {
                alive = c.flush();
            }
            if alive && c.direct_asked && !c.pending() {
                let f = FromDaemon::Direct.encode();
                match rnr_agent_proto::fdpass::send_with_fds(c.stream.as_raw_fd(), &f, &[master_fd])
                {
                    Ok(()) => {
                        c.direct_asked = false;
                        c.direct = true;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => alive = false,
                }
            }
            if !alive {
                conn = None;
            }
        }
        if !sess.input.is_empty() && fds[1].revents & libc::POLLOUT != 0 {
            // SAFETY: writing from a valid buffer to our non-blocking pty master.
            let w = unsafe { libc::write(master_fd, sess.input.as_ptr().cast(), sess.input.len()) };
            if w > 0 {
                sess.input.drain(..w as usize);
            }
        }
        let hung_up = fds[1].revents & (libc::POLLHUP | libc::POLLERR) != 0;
        if fds[1].revents & libc::POLLIN != 0 || hung_up || killed {
            let mut got = 0;
            // In direct mode the gateway drains what the shell printed last.
            let mut ended = killed || (direct && hung_up);
            while got < buf.len() && !ended {
                // SAFETY: reading into the unused tail of our buffer.
                let r = unsafe {
                    libc::read(master_fd, buf[got..].as_mut_ptr().cast(), buf.len() - got)
                };
                if r > 0 {
                    got += r as usize;
                } else {
                    let err = std::io::Error::last_os_error();
                    if r < 0 && err.kind() == std::io::ErrorKind::WouldBlock {
                        break;
                    }
                    if r < 0 && err.kind() == std::io::ErrorKind::Interrupted {
                        continue;
                    }
                    // EIO: the shell and everything on the pty are gone.
                    ended = true;
                    break;
                }
            }
            if got > 0 {
                // Forward first: the screen model is for repaints later, and parsing before
                // the bytes leave would add its time to every echo.
                if let Some(c) = conn.as_mut() {
                    FromDaemon::Output(&buf[..got]).push(&mut c.wbuf);
                    if !c.flush() {
                        conn = None;
                    }
                }
                sess.model.feed(&buf[..got]);
            }
            if ended {
                let mut status = 0;
                // SAFETY: reaping our own child; WNOHANG never blocks.
                let code = unsafe {
                    if libc::waitpid(sess.pid, &mut status, libc::WNOHANG) == sess.pid {
                        if libc::WIFEXITED(status) {
                            libc::WEXITSTATUS(status)
                        } else {
                            128 + libc::WTERMSIG(status)
                        }
                    } else {
                        129
                    }
                };
                // Stop answering attaches before the exit is told: init would hand a
                // gateway that attaches right after the exit (the same id, reopened) this
                // dying daemon instead of starting a new one.
                drop(listener);
                if let Some(mut c) = conn.take() {
                    FromDaemon::Exit { status: code }.push(&mut c.wbuf);
                    let _ = c.stream.set_nonblocking(false);
                    let _ = c.stream.set_write_timeout(Some(Duration::from_secs(2)));
                    let _ = c.stream.write_all(&c.wbuf[c.wpos..]);
                }
                return Ok(0);
            }
        }
    }
}

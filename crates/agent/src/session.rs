//! `rnr-agent session attach ID [ROWS COLS]`: terminal sessions that outlive the gateway.
//!
//! The first attach for an id starts a daemon (double fork, own session) that owns a pty
//! running the machine's shell and a screen model (vt100, fed lazily: crate::screen) of
//! what the pty printed. Every attach connects to that daemon over an abstract unix socket and relays its stdin/stdout
//! to it, so the gateway talks to the daemon through a plain, tty-less driver exec. When
//! the gateway dies, only the relay dies; the shell, its jobs and its screen stay.
//!
//! Frames both ways: 1 byte type, 4 bytes big-endian length, payload (see
//! docs/terminal-protocol.md). The daemon serves one connection at a time: a new one
//! (the gateway restarted or re-attached) replaces the old. Output is read from the pty
//! only while the connection can take it, so a stalled gateway stalls the shell instead of
//! filling memory; input keeps being accepted, so Ctrl-C still gets through.

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

pub use crate::session_wire::*;

/// Largest input frame accepted; anything larger ends the connection.
const MAX_IN_FRAME: usize = 64 * 1024;
/// Output gathered into one frame at most.
const OUT_CHUNK: usize = 32 * 1024;
const MAX_DIM: u16 = 1000;
/// Quiet time after which pending output is emulated into the screen model.
const SETTLE_MS: libc::c_int = 20;

fn usage() -> ExitCode {
    eprintln!("usage: rnr-agent session attach ID [ROWS COLS]");
    ExitCode::from(2)
}

pub fn main(args: &[String]) -> ExitCode {
    match args.first().map(String::as_str) {
        Some("attach") => {
            let Some(id) = args.get(1).filter(|id| valid_id(id)) else {
                return usage();
            };
            let dim = |i: usize, d: u16| {
                args.get(i)
                    .and_then(|s| s.parse::<u16>().ok())
                    .map(|v| v.clamp(1, MAX_DIM))
                    .unwrap_or(d)
            };
            match attach(id, dim(2, 24), dim(3, 80)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("rnr-agent session {id}: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        _ => usage(),
    }
}

pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Abstract socket address: no file to create, nothing the image has to provide, and it
/// vanishes with the daemon.
fn socket_addr(id: &str) -> std::io::Result<std::os::unix::net::SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    std::os::unix::net::SocketAddr::from_abstract_name(format!("rnr-session-{id}").as_bytes())
}

pub fn connect(id: &str) -> std::io::Result<UnixStream> {
    UnixStream::connect_addr(&socket_addr(id)?)
}

fn attach(id: &str, rows: u16, cols: u16) -> std::io::Result<()> {
    let stream = match connect(id) {
        Ok(s) => s,
        Err(_) => {
            spawn_daemon(id, rows, cols)?;
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match connect(id) {
                    Ok(s) => break s,
                    Err(e) if Instant::now() > deadline => return Err(e),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        }
    };
    // Plain relay; the daemon speaks the protocol. A read/write loop, not io::copy: its
    // splice fast path can sit on a unix socket until a whole pipe's worth has arrived.
    let mut up = stream.try_clone()?;
    let mut down = stream;
    std::thread::spawn(move || {
        relay(&mut down, &mut std::io::stdout().lock());
        // The daemon closed (session over or replaced by a newer attach).
        std::process::exit(0);
    });
    relay(&mut std::io::stdin().lock(), &mut up);
    // The gateway went away: leave the session running.
    std::process::exit(0);
}

fn relay(from: &mut impl Read, to: &mut impl Write) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if to.write_all(&buf[..n]).and_then(|()| to.flush()).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Forks the daemon off into its own session so that neither the exec ending nor a driver
/// killing the exec's process tree reaches it.
fn spawn_daemon(id: &str, rows: u16, cols: u16) -> std::io::Result<()> {
    // SAFETY: the agent is single-threaded here (threads start only after connecting), so
    // fork is safe; the child only calls async-signal-safe functions before daemon().
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if pid > 0 {
        let mut status = 0;
        // SAFETY: waiting for our own child with a valid out-pointer.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        return Ok(());
    }
    // SAFETY: setsid/fork/_exit in the freshly forked child; no locks are held.
    unsafe {
        libc::setsid();
        if libc::fork() != 0 {
            libc::_exit(0);
        }
    }
    let code = daemon(id, rows, cols).unwrap_or(1);
    // SAFETY: leaving the daemon process without running the parent's atexit handlers.
    unsafe { libc::_exit(code) }
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

fn frame(buf: &mut Vec<u8>, ty: u8, payload: &[u8]) {
    buf.push(ty);
    buf.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    buf.extend_from_slice(payload);
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
    fn new(stream: UnixStream, hello: &[u8]) -> std::io::Result<Self> {
        stream.set_nonblocking(true)?;
        let mut wbuf = Vec::new();
        frame(&mut wbuf, T_HELLO, hello);
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
    fn hello(&self) -> Vec<u8> {
        let (rows, cols) = self.model.size();
        let mut h = (self.pid as u32).to_be_bytes().to_vec();
        h.extend_from_slice(&rows.get().to_be_bytes());
        h.extend_from_slice(&cols.get().to_be_bytes());
        h.push(HELLO_DIRECT);
        h
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
        if avail.len() < 5 {
            break;
        }
        let ty = avail[0];
        let len = u32::from_be_bytes([avail[1], avail[2], avail[3], avail[4]]) as usize;
        if len > MAX_IN_FRAME {
            return Err(());
        }
        if avail.len() < 5 + len {
            break;
        }
        // Input waiting for the pty: stop here so memory stays bounded.
        if ty == T_INPUT && sess.input.len() + len > MAX_IN_FRAME {
            break;
        }
        let p = &avail[5..5 + len];
        match ty {
            T_INPUT => sess.input.extend_from_slice(p),
            T_RESIZE if len == 4 => sess.resize(
                u16::from_be_bytes([p[0], p[1]]),
                u16::from_be_bytes([p[2], p[3]]),
            ),
            T_SNAPSHOT_REQ if len == 4 => {
                let mut body = p.to_vec();
                body.extend_from_slice(&snapshot(sess.model.screen()));
                frame(&mut conn.wbuf, T_SNAPSHOT, &body);
            }
            T_KILL => {
                sess.hang_up();
                return Ok(false);
            }
            T_DIRECT_REQ if len == 0 => conn.direct_asked = true,
            T_COPY => sess.model.feed(p),
            _ => return Err(()),
        }
        off += 5 + len;
    }
    conn.rbuf.drain(..off);
    Ok(true)
}

fn daemon(id: &str, rows: u16, cols: u16) -> std::io::Result<i32> {
    detach_stdio();
    // Bind first: if another attach won the race, its daemon serves this id.
    let listener = UnixListener::bind_addr(&socket_addr(id)?)?;
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
                conn = Conn::new(s, &sess.hello()).ok();
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
                let mut f = Vec::with_capacity(5);
                frame(&mut f, T_DIRECT, &[]);
                match crate::init::send_with_fds(c.stream.as_raw_fd(), &f, &[master_fd]) {
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
                    frame(&mut c.wbuf, T_OUTPUT, &buf[..got]);
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
                if let Some(mut c) = conn.take() {
                    frame(&mut c.wbuf, T_EXIT, &code.to_be_bytes());
                    let _ = c.stream.set_nonblocking(false);
                    let _ = c.stream.set_write_timeout(Some(Duration::from_secs(2)));
                    let _ = c.stream.write_all(&c.wbuf[c.wpos..]);
                }
                return Ok(0);
            }
        }
    }
}

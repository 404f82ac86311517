//! The agent in a VM: `rnr-agent vm-init`, the VM's real PID 1, and the guest end of the
//! serial port's multiplexer (`rnr_agent_proto::mux`) that `rnr-agent init` serves.
//!
//! `vm-init` is started by the driver's initramfs (after `switch_root`). It mounts the
//! kernel filesystems, names the machine, caps the learner's processes in a cgroup of
//! their own (memory and pids, from the kernel command line), opens the agent's
//! virtio-serial port and starts `rnr-agent init` as PID 1 of a new pid and mount
//! namespace: the learner's world. There `ps` and `/proc` show the machine's own
//! processes, not the kernel's threads, and the pids limit counts what it says.
//!
//! When that init ends, the machine reboots or powers off: `reboot(2)` inside the
//! namespace kills it with SIGHUP (restart) or SIGINT (power off), and the usual init
//! signals (`kill -TERM 1` as busybox's `reboot` sends, SIGUSR1/SIGUSR2/SIGPWR for halt and
//! power off) make it exit with [`EXIT_REBOOT`] or [`EXIT_POWEROFF`]. `vm-init` then syncs,
//! remounts the root read-only and asks the kernel: QEMU resets the VM in place (same
//! disks, same process) or ends.
//!
//! The learner is root with a kernel of its own here: nothing inside the VM is trusted by
//! the host, which treats every frame it reads as hostile (the VM's walls are QEMU's).

use rnr_agent_proto::mux::{self, Frame};
use std::collections::{HashMap, VecDeque};
use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Exit code of the learner's init that asks for a reboot.
pub const EXIT_REBOOT: i32 = 0;
/// Exit code of the learner's init that asks for the machine to power off.
pub const EXIT_POWEROFF: i32 = 3;
/// The cgroup the learner's processes live in (memory and pids capped).
const MACHINE_CGROUP: &str = "/sys/fs/cgroup/machine";

fn os_err(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

fn c(s: &str) -> CString {
    CString::new(s).unwrap_or_default()
}

fn mount(src: &str, target: &str, fstype: &str, flags: libc::c_ulong, data: &str) {
    let _ = std::fs::create_dir_all(target);
    let (s, t, f, d) = (c(src), c(target), c(fstype), c(data));
    // SAFETY: mount(2) with NUL-terminated strings that live across the call.
    let r = unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), flags, d.as_ptr().cast()) };
    if r != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EBUSY) {
        eprintln!(
            "rnr-agent vm-init: {}",
            os_err(&format!("mounting {target}"))
        );
    }
}

/// `rnr.KEY=VALUE` from the kernel command line.
fn cmdline_value(cmdline: &str, key: &str) -> Option<String> {
    let want = format!("rnr.{key}=");
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix(&want))
        .map(str::to_string)
}

/// The device node of the virtio-serial port named `name`, once the kernel has it.
fn find_port(name: &str, patience: Duration) -> Option<String> {
    let deadline = std::time::Instant::now() + patience;
    loop {
        if let Ok(entries) = std::fs::read_dir("/sys/class/virtio-ports") {
            for e in entries.flatten() {
                let named = std::fs::read_to_string(e.path().join("name")).unwrap_or_default();
                if named.trim() == name {
                    return Some(format!("/dev/{}", e.file_name().to_string_lossy()));
                }
            }
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn write_file(path: &str, value: &str) {
    if let Err(e) = std::fs::write(path, value) {
        eprintln!("rnr-agent vm-init: writing {value:?} to {path}: {e}");
    }
}

/// `vm-init`: the VM's PID 1 (see the module's doc).
pub fn init_main() -> ExitCode {
    // SAFETY: getpid has no preconditions.
    if unsafe { libc::getpid() } != 1 {
        eprintln!("rnr-agent vm-init: not PID 1; this runs as a VM's init only");
        return ExitCode::from(2);
    }
    let nosuid = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    mount("proc", "/proc", "proc", nosuid, "");
    mount("sysfs", "/sys", "sysfs", nosuid, "");
    mount("devtmpfs", "/dev", "devtmpfs", libc::MS_NOSUID, "mode=0755");
    mount(
        "devpts",
        "/dev/pts",
        "devpts",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        "gid=5,mode=0620,ptmxmode=0666",
    );
    mount(
        "tmpfs",
        "/dev/shm",
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        "mode=1777",
    );
    mount(
        "tmpfs",
        "/run",
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        "mode=0755",
    );
    mount("cgroup2", "/sys/fs/cgroup", "cgroup2", nosuid, "");
    // The outer init must outlive every OOM; it is not in the machine's cgroup either.
    write_file("/proc/self/oom_score_adj", "-1000");

    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let hostname = cmdline_value(&cmdline, "hostname").unwrap_or_else(|| "machine".into());
    let mem_mib: Option<u64> = cmdline_value(&cmdline, "mem").and_then(|v| v.parse().ok());
    let pids: Option<u64> = cmdline_value(&cmdline, "pids").and_then(|v| v.parse().ok());
    write_file("/sys/fs/cgroup/cgroup.subtree_control", "+memory +pids");
    let _ = std::fs::create_dir_all(MACHINE_CGROUP);
    if let Some(m) = mem_mib {
        write_file(
            &format!("{MACHINE_CGROUP}/memory.max"),
            &(m << 20).to_string(),
        );
        write_file(&format!("{MACHINE_CGROUP}/memory.swap.max"), "0");
    }
    if let Some(p) = pids {
        write_file(&format!("{MACHINE_CGROUP}/pids.max"), &p.to_string());
    }

    let Some(port) = find_port(mux::PORT_NAME, Duration::from_secs(10)) else {
        eprintln!(
            "rnr-agent vm-init: no virtio-serial port named {}",
            mux::PORT_NAME
        );
        finish(EXIT_REBOOT);
    };
    let port_c = c(&port);
    // SAFETY: open(2) on a NUL-terminated path; the descriptor is inherited on purpose.
    let port_fd = unsafe { libc::open(port_c.as_ptr(), libc::O_RDWR) };
    if port_fd < 0 {
        eprintln!("rnr-agent vm-init: {}", os_err(&format!("opening {port}")));
        finish(EXIT_REBOOT);
    }

    // SAFETY: unshare for the children to come, then fork; the child only makes system
    // calls and execs.
    let child = unsafe {
        if libc::unshare(libc::CLONE_NEWPID) != 0 {
            eprintln!("rnr-agent vm-init: {}", os_err("unshare(CLONE_NEWPID)"));
            finish(EXIT_REBOOT);
        }
        libc::fork()
    };
    if child == 0 {
        learner_init(&hostname, port_fd);
    }
    // SAFETY: closing our copy of the port: only the learner's init uses it.
    unsafe { libc::close(port_fd) };
    let code = loop {
        let mut status = 0;
        // SAFETY: waitpid with a valid out-pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid == child || (pid < 0 && child < 0) {
            let off = (libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGINT)
                || (libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == EXIT_POWEROFF);
            break if off { EXIT_POWEROFF } else { EXIT_REBOOT };
        }
        if pid < 0 {
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    finish(code)
}

/// PID 1 of the learner's namespaces: a mount namespace of its own with a /proc of the new
/// pid namespace, in the machine's cgroup, then `rnr-agent init` serving the port.
fn learner_init(hostname: &str, port_fd: i32) -> ! {
    // SAFETY: system calls on valid arguments in the freshly forked child.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            eprintln!("rnr-agent vm-init: {}", os_err("unshare(CLONE_NEWNS)"));
            libc::_exit(EXIT_REBOOT);
        }
        let root = c("/");
        let none = c("none");
        libc::mount(
            none.as_ptr(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        );
        let proc_ = c("/proc");
        libc::umount2(proc_.as_ptr(), libc::MNT_DETACH);
    }
    mount(
        "proc",
        "/proc",
        "proc",
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        "",
    );
    write_file(&format!("{MACHINE_CGROUP}/cgroup.procs"), "0");
    let exe = c("/proc/self/exe");
    let args = [
        c("rnr-agent"),
        c("init"),
        c("--hostname"),
        c(hostname),
        c("--vm-port"),
        c(&port_fd.to_string()),
    ];
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    // SAFETY: execv with a NULL-terminated argv of strings that live across the call.
    unsafe {
        libc::execv(exe.as_ptr(), argv.as_ptr());
        libc::_exit(EXIT_REBOOT)
    }
}

/// Syncs, remounts the root read-only and reboots or powers off.
fn finish(code: i32) -> ! {
    // SAFETY: plain system calls; nothing is left to run after them.
    unsafe {
        libc::sync();
        libc::kill(-1, libc::SIGKILL);
        let root = c("/");
        let empty = c("");
        libc::mount(
            empty.as_ptr(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REMOUNT | libc::MS_RDONLY,
            std::ptr::null(),
        );
        libc::sync();
        let cmd = if code == EXIT_POWEROFF {
            libc::RB_POWER_OFF
        } else {
            libc::RB_AUTOBOOT
        };
        libc::reboot(cmd);
        libc::_exit(1)
    }
}

/// The signals a VM's learner init takes as "reboot" or "power off", with what each means.
pub const INIT_SIGNALS: [(libc::c_int, i32); 5] = [
    (libc::SIGTERM, EXIT_REBOOT),
    (libc::SIGINT, EXIT_REBOOT),
    (libc::SIGUSR1, EXIT_POWEROFF),
    (libc::SIGUSR2, EXIT_POWEROFF),
    (libc::SIGPWR, EXIT_POWEROFF),
];

/// The learner's init was told to reboot or power off: end it (the kernel kills every
/// process of the namespace), after syncing what they wrote.
pub fn shutdown(signal: libc::c_int) -> ! {
    let code = INIT_SIGNALS
        .iter()
        .find(|(s, _)| *s == signal)
        .map_or(EXIT_REBOOT, |(_, c)| *c);
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    std::process::exit(code)
}

/// One stream of the port: a connection init serves through a socketpair.
struct Stream {
    /// The mux's end of the socketpair.
    sock: UnixStream,
    state: Mutex<StreamState>,
    wake: Condvar,
}

#[derive(Default)]
struct StreamState {
    /// Bytes the host sent, not yet written to the socketpair.
    inbox: VecDeque<Vec<u8>>,
    /// The host may be sent this many more bytes.
    credit: u32,
    /// The host sends no more.
    fin: bool,
    /// The stream is over (the host closed it or the mux was reset).
    closed: bool,
    /// Of the stream's two pumps, how many have ended.
    done: u8,
}

/// The port's writing side, shared by every stream.
#[derive(Clone)]
struct PortWriter(Arc<Mutex<std::fs::File>>);

impl PortWriter {
    fn send(&self, f: Frame<'_>) -> bool {
        self.send_bytes(&f.encode())
    }

    fn send_bytes(&self, b: &[u8]) -> bool {
        let mut w = self.0.lock().unwrap_or_else(|p| p.into_inner());
        w.write_all(b).is_ok()
    }
}

type Streams = Arc<Mutex<HashMap<u32, Arc<Stream>>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Serves the port in a thread of its own: every stream the host opens is handed to
/// `serve` as one end of a socketpair, as a connection on init's socket would be.
pub fn start_port(fd: i32, serve: impl Fn(UnixStream) + Send + Sync + 'static) {
    let serve = Arc::new(serve);
    let spawned = std::thread::Builder::new()
        .name("mux".into())
        .spawn(move || {
            // SAFETY: fd is the port descriptor vm-init opened and passed to this process;
            // nothing else owns it.
            let port = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: fcntl on the descriptor we own.
            unsafe { libc::fcntl(port.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
            run_port(std::fs::File::from(port), serve);
        });
    if let Err(e) = spawned {
        eprintln!("rnr-agent init: cannot start the port's thread: {e}");
    }
}

fn run_port(port: std::fs::File, serve: Arc<dyn Fn(UnixStream) + Send + Sync>) {
    let Ok(write) = port.try_clone() else {
        eprintln!("rnr-agent init: cannot duplicate the port");
        return;
    };
    let writer = PortWriter(Arc::new(Mutex::new(write)));
    let streams: Streams = Arc::default();
    let mut nonce = [0u8; 8];
    // SAFETY: getrandom fills the buffer it is given, of that length.
    unsafe { libc::getrandom(nonce.as_mut_ptr().cast(), nonce.len(), 0) };
    // A host already connected (the VM rebooted under it) learns that every stream of the
    // previous boot is gone; one not connected yet says hello when it comes.
    writer.send_bytes(&mux::synced(Frame::Boot(u64::from_be_bytes(nonce))));
    let mut port = port;
    let mut buf = vec![0u8; 64 * 1024];
    let mut rbuf: Vec<u8> = Vec::new();
    loop {
        let n = match port.read(&mut buf) {
            Ok(0) => {
                // The host is not connected (it died or restarts): its streams are over.
                reset(&streams);
                rbuf.clear();
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        rbuf.extend_from_slice(&buf[..n]);
        let mut at = 0;
        loop {
            match Frame::parse(&rbuf[at..]) {
                Ok(Some((f, used))) => {
                    handle(f, &streams, &writer, &serve);
                    at += used;
                }
                Ok(None) => {
                    at += mux::skip_padding(&rbuf[at..]);
                    break;
                }
                // Not at a frame boundary (what a host that died mid-frame left): skip a
                // byte; its next hello comes after padding.
                Err(_) => at += 1,
            }
        }
        rbuf.drain(..at);
    }
}

fn reset(streams: &Streams) {
    let all: Vec<Arc<Stream>> = lock(streams).drain().map(|(_, s)| s).collect();
    for s in all {
        close(&s);
    }
}

fn close(s: &Stream) {
    lock(&s.state).closed = true;
    let _ = s.sock.shutdown(std::net::Shutdown::Both);
    s.wake.notify_all();
}

fn handle(
    f: Frame<'_>,
    streams: &Streams,
    writer: &PortWriter,
    serve: &Arc<dyn Fn(UnixStream) + Send + Sync>,
) {
    let get = |id: u32| lock(streams).get(&id).cloned();
    match f {
        Frame::Hello(nonce) => {
            reset(streams);
            writer.send(Frame::HelloAck(nonce));
        }
        Frame::HelloAck(_) | Frame::Boot(_) => {}
        Frame::Open(id) => {
            if get(id).is_some() {
                return;
            }
            if let Err(e) = open(id, streams, writer, serve) {
                eprintln!("rnr-agent init: stream {id}: {e}");
                writer.send(Frame::Close(id));
            }
        }
        Frame::Data(id, data) => match get(id) {
            Some(s) => {
                lock(&s.state).inbox.push_back(data.to_vec());
                s.wake.notify_all();
            }
            None => {
                writer.send(Frame::Close(id));
            }
        },
        Frame::Fin(id) => {
            if let Some(s) = get(id) {
                lock(&s.state).fin = true;
                s.wake.notify_all();
            }
        }
        Frame::Close(id) => {
            if let Some(s) = lock(streams).remove(&id) {
                close(&s);
            }
        }
        Frame::Credit(id, n) => {
            if let Some(s) = get(id) {
                let mut st = lock(&s.state);
                st.credit = st.credit.saturating_add(n);
                drop(st);
                s.wake.notify_all();
            }
        }
    }
}

fn open(
    id: u32,
    streams: &Streams,
    writer: &PortWriter,
    serve: &Arc<dyn Fn(UnixStream) + Send + Sync>,
) -> std::io::Result<()> {
    let (ours, theirs) = UnixStream::pair()?;
    let stream = Arc::new(Stream {
        sock: ours,
        state: Mutex::new(StreamState {
            credit: mux::WINDOW,
            ..StreamState::default()
        }),
        wake: Condvar::new(),
    });
    lock(streams).insert(id, stream.clone());
    let builder = || std::thread::Builder::new().stack_size(64 << 10);
    let serve = serve.clone();
    // The connection is served exactly as one accepted on init's socket.
    builder().spawn(move || serve(theirs))?;
    let (s, w, all) = (stream.clone(), writer.clone(), streams.clone());
    builder().spawn(move || {
        to_host(id, &s, &w);
        ended(id, &s, &all);
    })?;
    let (s, w, all) = (stream, writer.clone(), streams.clone());
    builder().spawn(move || {
        from_host(id, &s, &w);
        ended(id, &s, &all);
    })?;
    Ok(())
}

/// One of a stream's pumps ended; the second forgets the stream.
fn ended(id: u32, s: &Arc<Stream>, streams: &Streams) {
    let mut st = lock(&s.state);
    st.done += 1;
    if st.done == 2 {
        drop(st);
        let mut all = lock(streams);
        if all.get(&id).is_some_and(|x| Arc::ptr_eq(x, s)) {
            all.remove(&id);
        }
    }
}

/// What the connection writes goes to the host, within the host's credit.
fn to_host(id: u32, s: &Stream, w: &PortWriter) {
    let mut buf = vec![0u8; mux::MAX_DATA];
    let mut sock = &s.sock;
    loop {
        let room = {
            let mut st = lock(&s.state);
            while st.credit == 0 && !st.closed {
                st = s.wake.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            if st.closed {
                return;
            }
            (st.credit as usize).min(buf.len())
        };
        match sock.read(&mut buf[..room]) {
            Ok(0) => {
                if !lock(&s.state).closed {
                    w.send(Frame::Fin(id));
                }
                return;
            }
            Ok(n) => {
                lock(&s.state).credit -= n as u32;
                if !w.send(Frame::Data(id, &buf[..n])) {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => {
                if !lock(&s.state).closed {
                    w.send(Frame::Close(id));
                }
                return;
            }
        }
    }
}

/// What the host sends goes to the connection; each chunk written returns its credit.
fn from_host(id: u32, s: &Stream, w: &PortWriter) {
    let mut sock = &s.sock;
    loop {
        let chunk = {
            let mut st = lock(&s.state);
            loop {
                if st.closed {
                    return;
                }
                if let Some(c) = st.inbox.pop_front() {
                    break c;
                }
                if st.fin {
                    drop(st);
                    let _ = s.sock.shutdown(std::net::Shutdown::Write);
                    return;
                }
                st = s.wake.wait(st).unwrap_or_else(|p| p.into_inner());
            }
        };
        if sock.write_all(&chunk).is_err() {
            return;
        }
        w.send(Frame::Credit(id, chunk.len() as u32));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::IntoRawFd;

    /// Hands `fd` on to a child across exec (clears close-on-exec); for vm-init's port.
    fn inheritable(fd: OwnedFd) -> i32 {
        let raw = fd.into_raw_fd();
        // SAFETY: fcntl on a descriptor we own (and now leak on purpose to the child).
        unsafe { libc::fcntl(raw, libc::F_SETFD, 0) };
        raw
    }

    #[test]
    fn reads_the_kernel_command_line() {
        let line = "console=ttyS0 rnr.hostname=web-1 rnr.mem=64 quiet rnr.pids=64\n";
        assert_eq!(cmdline_value(line, "hostname").as_deref(), Some("web-1"));
        assert_eq!(cmdline_value(line, "mem").as_deref(), Some("64"));
        assert_eq!(cmdline_value(line, "pids").as_deref(), Some("64"));
        assert_eq!(cmdline_value(line, "ip"), None);
    }

    /// The mux end to end over a socketpair standing for the port: a hello is answered,
    /// a stream is served by the callback, data flows both ways within credit, and a
    /// close ends the connection.
    #[test]
    fn serves_streams_over_a_port() {
        let (host, guest) = UnixStream::pair().unwrap();
        let guest_fd = inheritable(OwnedFd::from(guest));
        start_port(guest_fd, |mut conn: UnixStream| {
            let mut got = Vec::new();
            let _ = conn.read_to_end(&mut got);
            let _ = conn.write_all(&got.repeat(2));
        });
        let mut host = host;
        host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        host.write_all(&mux::synced(Frame::Hello(77))).unwrap();
        host.write_all(&Frame::Open(5).encode()).unwrap();
        host.write_all(&Frame::Data(5, b"ping").encode()).unwrap();
        host.write_all(&Frame::Fin(5).encode()).unwrap();
        let mut raw = Vec::new();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !seen.iter().any(|f: &String| f == "Fin(5)") {
            let n = host.read(&mut buf).expect("the guest answers");
            raw.extend_from_slice(&buf[..n]);
            let start = mux::find(&raw, Frame::HelloAck(77)).unwrap_or(raw.len());
            let mut at = start;
            seen.clear();
            while let Ok(Some((f, used))) = Frame::parse(&raw[at..]) {
                seen.push(match f {
                    Frame::Data(id, d) => format!("Data({id}, {})", String::from_utf8_lossy(d)),
                    other => format!("{other:?}"),
                });
                at += used;
            }
        }
        assert!(seen.contains(&"HelloAck(77)".to_string()), "{seen:?}");
        assert!(seen.contains(&"Data(5, pingping)".to_string()), "{seen:?}");
        assert!(seen.contains(&"Credit(5, 4)".to_string()), "{seen:?}");
        // Data for a stream the guest does not know is answered with a close.
        host.write_all(&Frame::Data(9, b"x").encode()).unwrap();
        let n = host.read(&mut buf).unwrap();
        assert_eq!(Frame::parse(&buf[..n]).unwrap().unwrap().0, Frame::Close(9));
    }
}

//! What `rnr-agent init` does for connections that cannot take descriptors: a framed exec
//! (the process's stdio as frames on the connection) and a spliced session (the daemon's
//! frames copied both ways). Also the kill-listening loop of an exec whose stdio was handed
//! over.

use crate::init::{self, Table};
use crate::spawn::set_winsize;
use rnr_agent_proto::control::{self, ExecFrame, Reply, MAX_STDIO_FRAME};
use rnr_agent_proto::frame;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{mpsc, Arc, Mutex};

/// Reads the host's frames until it hangs up, calling `kill` for each kill request.
pub fn obey_kills(conn: &mut UnixStream, kill: impl Fn()) {
    while let Ok(Some((tag, payload))) = frame::read_blocking(conn, MAX_STDIO_FRAME) {
        if matches!(ExecFrame::parse(tag, &payload), Ok(ExecFrame::Kill)) {
            kill();
        }
    }
}

/// Output of one of the process's descriptors, framed as `tag`, until it ends.
fn pump_output(from: OwnedFd, to: Arc<Mutex<UnixStream>>, stderr: bool) {
    let mut f = std::fs::File::from(from);
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // EIO on a pty: every slave descriptor is closed.
            Err(_) => return,
        };
        let chunk = &buf[..n];
        let frame = if stderr {
            ExecFrame::Stderr(chunk)
        } else {
            ExecFrame::Stdout(chunk)
        };
        let mut w = to.lock().unwrap_or_else(|p| p.into_inner());
        if w.write_all(&frame.encode()).is_err() {
            return;
        }
    }
}

/// A framed exec: output frames out, stdin/resize/kill frames in, the exit code last,
/// after all output.
pub fn framed_exec(mut conn: UnixStream, pid: i32, fds: Vec<OwnedFd>, tty: bool, table: &Table) {
    if conn
        .write_all(&control::encode_reply(&Reply::Started { pid }))
        .is_err()
    {
        init::kill(table, pid);
        return;
    }
    let exited = init::announce_to_thread(table, pid);
    let Ok(writer) = conn.try_clone() else {
        init::kill(table, pid);
        return;
    };
    // A slow host must not hold the process's output forever; writes give up after a while.
    let _ = writer.set_write_timeout(Some(std::time::Duration::from_secs(60)));
    let writer = Arc::new(Mutex::new(writer));
    let mut fds = fds.into_iter();
    let (stdin, outputs, master) = if tty {
        let Some(master) = fds.next() else { return };
        let Ok(input) = master.try_clone() else {
            return;
        };
        let raw = master.as_raw_fd();
        (input, vec![(master, false)], Some(raw))
    } else {
        let (Some(i), Some(o), Some(e)) = (fds.next(), fds.next(), fds.next()) else {
            return;
        };
        (i, vec![(o, false), (e, true)], None)
    };
    // Keeps the master's number valid for resizes: the output thread owns the descriptor,
    // this clone keeps it open for as long as input is handled here.
    let resize_fd = master.and_then(|_| stdin.try_clone().ok());
    let pumps: Vec<_> = outputs
        .into_iter()
        .map(|(fd, is_err)| {
            let w = writer.clone();
            std::thread::spawn(move || pump_output(fd, w, is_err))
        })
        .collect();
    {
        let writer = writer.clone();
        std::thread::spawn(move || {
            for p in pumps {
                let _ = p.join();
            }
            let code = exited.recv().unwrap_or(-1);
            let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
            let _ = w.write_all(&control::encode_reply(&Reply::Exited { code }));
            let _ = w.shutdown(std::net::Shutdown::Both);
        });
    }
    // Stdin is written by a thread of its own: a process that does not read its input must
    // not keep this loop from taking a kill.
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut f = std::fs::File::from(stdin);
        for chunk in rx {
            if chunk.is_empty() || f.write_all(&chunk).is_err() {
                return;
            }
        }
    });
    while let Ok(Some((tag, payload))) = frame::read_blocking(&mut conn, MAX_STDIO_FRAME) {
        match ExecFrame::parse(tag, &payload) {
            Ok(ExecFrame::Stdin(d)) => {
                let _ = tx.send(d.to_vec());
            }
            Ok(ExecFrame::Resize { rows, cols }) => {
                if let Some(fd) = &resize_fd {
                    set_winsize(fd.as_raw_fd(), rows, cols);
                }
            }
            Ok(ExecFrame::Kill) => init::kill(table, pid),
            _ => {}
        }
    }
}

/// Copies bytes both ways between the host's connection and a session daemon's until
/// either side ends, then ends both.
pub fn splice(host: UnixStream, daemon: UnixStream) {
    let (Ok(host2), Ok(daemon2)) = (host.try_clone(), daemon.try_clone()) else {
        return;
    };
    let up = std::thread::spawn(move || copy(host2, daemon2));
    copy(daemon, host);
    let _ = up.join();
}

fn copy(mut from: UnixStream, mut to: UnixStream) {
    pipe(&mut from, &mut to);
    let _ = from.shutdown(std::net::Shutdown::Both);
    let _ = to.shutdown(std::net::Shutdown::Both);
}

/// Copies `from` to `to` until either ends. A read/write loop, not io::copy: its splice
/// fast path can sit on a unix socket until a whole pipe's worth has arrived.
pub fn pipe(from: &mut impl Read, to: &mut impl Write) {
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

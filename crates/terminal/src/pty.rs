//! A terminal's pty once its session daemon hands it over ("direct mode",
//! docs/terminal-protocol.md): the gateway reads what the shell prints and writes the
//! keystrokes itself, which takes the daemon (a process to wake up twice per keystroke, and
//! a copy of every byte) off the path between the browser and the shell.

use bytes::Bytes;
use std::fs::File;
use std::io::{IsTerminal, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Most read in one go: the pty hands out about 4 KiB per read, and bulk output leaves in
/// fewer, larger messages when several reads are gathered.
const CHUNK: usize = 32 * 1024;

pub struct Pty {
    /// Registered for reading only: a pty master turns writable again after nearly every
    /// keystroke the shell takes, and each such edge would wake the runtime for nothing.
    fd: AsyncFd<File>,
    /// A duplicate registered for writing, made the first time a write would block (the
    /// shell is not reading its input); until then keystrokes go straight in.
    wfd: tokio::sync::OnceCell<AsyncFd<File>>,
}

/// One read's outcome: what was gathered, and whether the pty was found empty after it
/// (so the runtime waits for the next edge instead of trying again at once).
struct Chunk {
    data: Option<Bytes>,
    drained: bool,
}

impl Pty {
    /// Takes a descriptor the machine passed. It comes from the learner's side, so it is
    /// checked to be a terminal and made non-blocking here: a blocking descriptor would
    /// stall a runtime thread and every terminal on it.
    pub fn new(fd: OwnedFd) -> std::io::Result<Self> {
        let file = File::from(fd);
        if !file.is_terminal() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the descriptor passed for the pty is not a terminal",
            ));
        }
        let raw = file.as_raw_fd();
        // SAFETY: fcntl on a descriptor this File owns; only the O_NONBLOCK flag changes.
        let ok = unsafe {
            let flags = libc::fcntl(raw, libc::F_GETFL);
            flags >= 0 && libc::fcntl(raw, libc::F_SETFL, flags | libc::O_NONBLOCK) == 0
        };
        if !ok {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the File owns its descriptor and never swaps it: it stays open and the
        // same until the AsyncFd, which owns the File, is dropped.
        let fd = unsafe { AsyncFd::register_with_interest(file, Interest::READABLE) }?;
        Ok(Self {
            fd,
            wfd: tokio::sync::OnceCell::new(),
        })
    }

    /// What the shell printed; `None` once the shell's side is closed (the session ends).
    pub async fn read(&self) -> std::io::Result<Option<Bytes>> {
        loop {
            let mut guard = self.fd.readable().await?;
            let chunk = read_chunk(self.fd.get_ref())?;
            if chunk.drained {
                guard.clear_ready();
            }
            // Nothing there yet: wait for the next edge. Otherwise output, or the end.
            if chunk.data.is_some() || !chunk.drained {
                return Ok(chunk.data);
            }
        }
    }

    /// What is left to read right now, without waiting (draining at the session's end).
    pub fn read_now(&self) -> std::io::Result<Option<Bytes>> {
        read_chunk(self.fd.get_ref()).map(|c| c.data)
    }

    /// Sets the terminal's size (the kernel signals the shell's foreground job). Done here,
    /// not only by the daemon, so that keystrokes sent after a resize, which go straight
    /// into the pty, never reach a program before the new size does.
    pub fn resize(&self, rows: u16, cols: u16) -> std::io::Result<()> {
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize from a valid pointer; the descriptor is a
        // terminal this Pty owns (checked in `new`).
        let r = unsafe { libc::ioctl(self.fd.get_ref().as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    pub async fn write_all(&self, mut data: &[u8]) -> std::io::Result<()> {
        while !data.is_empty() {
            match self.fd.get_ref().write(data) {
                Ok(n) => data = &data[n..],
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    let w = self
                        .wfd
                        .get_or_try_init(|| async {
                            // A dup is a second epoll registration of the same pty.
                            let dup = self.fd.get_ref().try_clone()?;
                            // SAFETY: as in `new`: the AsyncFd owns the duplicate's File.
                            let w = unsafe {
                                AsyncFd::register_with_interest(dup, Interest::WRITABLE)
                            }?;
                            Ok::<_, std::io::Error>(w)
                        })
                        .await?;
                    let mut guard = w.writable().await?;
                    match guard.try_io(|f| f.get_ref().write(data)) {
                        Ok(Ok(n)) => data = &data[n..],
                        Ok(Err(e)) => return Err(e),
                        Err(_would_block) => {}
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Reads until the pty is empty or [`CHUNK`] is gathered; `data` is `None` at EIO, the
/// pty's end of file, or when nothing was there. The buffer lives on the stack only for
/// this call, so an idle terminal holds none.
fn read_chunk(mut f: &File) -> std::io::Result<Chunk> {
    let mut buf = [0u8; CHUNK];
    let mut got = 0;
    let mut drained = false;
    while got < CHUNK {
        match f.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                drained = true;
                break;
            }
            // Hand over what was read; the error shows again next time.
            Err(_) if got > 0 => break,
            Err(e) if e.raw_os_error() == Some(libc::EIO) => break,
            Err(e) => return Err(e),
        }
    }
    let data = (got > 0).then(|| Bytes::copy_from_slice(&buf[..got]));
    Ok(Chunk { data, drained })
}

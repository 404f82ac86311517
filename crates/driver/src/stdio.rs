//! The host's ends of a process's stdio once an agent (or a runtime) handed them over:
//! a pty master registered with the runtime, pipes, and the output streams built on them.
//! Every driver whose processes' descriptors reach the host uses these.

use crate::{DriverError, OutputChunk, OutputStream, Result, TtySize};
use futures::StreamExt;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::io::ReaderStream;

/// Puts a descriptor into non-blocking mode.
pub fn set_nonblocking(fd: &impl AsRawFd) -> io::Result<()> {
    // SAFETY: fcntl on a valid fd with integer arguments; only O_NONBLOCK changes.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Sets the window size of a pty.
pub fn set_winsize(fd: &impl AsRawFd, rows: u16, cols: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize struct that lives across the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The master side of a pty, non-blocking, registered with the runtime.
pub struct Pty(Arc<AsyncFd<OwnedFd>>);

impl Pty {
    /// Wraps a pty master handed over by the machine side.
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        set_nonblocking(&fd)?;
        // SAFETY: `OwnedFd` owns a valid descriptor that is neither replaced nor closed while
        // the `AsyncFd` owns it.
        let fd = unsafe { AsyncFd::register(fd)? };
        Ok(Self(Arc::new(fd)))
    }

    /// Another handle to the same master (reader, writer, resizer).
    pub fn handle(&self) -> Self {
        Self(self.0.clone())
    }

    /// Sets the terminal size.
    pub fn resize(&self, size: TtySize) -> io::Result<()> {
        set_winsize(self.0.get_ref(), size.rows, size.cols)
    }
}

impl AsyncRead for Pty {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let res = guard.try_io(|fd| {
                // SAFETY: reading into a valid, initialized buffer of the given length.
                let n = unsafe {
                    libc::read(
                        fd.get_ref().as_raw_fd(),
                        unfilled.as_mut_ptr().cast(),
                        unfilled.len(),
                    )
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match res {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // EIO: every slave fd is closed, i.e. end of output.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Poll::Ready(Ok(())),
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for Pty {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.0.poll_write_ready(cx))?;
            let res = guard.try_io(|fd| {
                // SAFETY: writing from a valid buffer of the given length.
                let n = unsafe {
                    libc::write(fd.get_ref().as_raw_fd(), data.as_ptr().cast(), data.len())
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match res {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The master stays open for output; a terminal has no half-close.
        Poll::Ready(Ok(()))
    }
}

/// Output of a pty as one stdout stream.
pub fn pty_output(machine: String, pty: Pty) -> OutputStream {
    ReaderStream::with_capacity(pty, 32 * 1024)
        .map(move |r| {
            r.map(OutputChunk::Stdout)
                .map_err(|e| DriverError::io(format!("pty of an exec in machine {machine}"), e))
        })
        .boxed()
}

/// Stdout and stderr pipes as one stream, chunks in arrival order.
pub fn pipe_output(
    machine: String,
    stdout: impl AsyncRead + Send + 'static,
    stderr: impl AsyncRead + Send + 'static,
) -> OutputStream {
    let m2 = machine.clone();
    let out = ReaderStream::with_capacity(stdout, 32 * 1024).map(move |r| {
        r.map(OutputChunk::Stdout)
            .map_err(|e| DriverError::io(format!("stdout of an exec in machine {machine}"), e))
    });
    let err = ReaderStream::with_capacity(stderr, 32 * 1024).map(move |r| {
        r.map(OutputChunk::Stderr)
            .map_err(|e| DriverError::io(format!("stderr of an exec in machine {m2}"), e))
    });
    futures::stream::select(out, err).boxed()
}

/// Resizes the pty of a process in `machine`; an error for one started without a tty.
pub fn resize(machine: &str, pty: Option<&Pty>, size: TtySize) -> Result<()> {
    match pty {
        Some(p) => p
            .resize(size)
            .map_err(|e| DriverError::io(format!("resizing a pty in machine {machine}"), e)),
        None => Err(DriverError::Invalid {
            id: machine.to_string(),
            message: "resize of a process started without a tty".into(),
        }),
    }
}

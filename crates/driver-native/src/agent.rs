//! Processes started through the machine's PID 1, `rnr-agent init`, over the unix socket
//! the driver bound in the machine's host-side directory (protocol: `exec_wire`). The
//! agent forks the process inside the machine and hands back its stdio descriptors, so the
//! host reads and writes them directly, as it does a `crun exec`'d process's — at a
//! millisecond instead of tens.

use crate::exec::{self, resize, Pty};
use crate::exec_wire::{Reply, Request, KILL, MAX_REQUEST};
use crate::{sys, NResult, NativeError};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use rnr_driver::{DriverError, ExecHandle, ExecProcess, OutputChunk, Result, TtySize};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{Mutex, OnceCell};

/// Longest wait for the agent to answer a request (it forks and execs, nothing more).
const HANDSHAKE: Duration = Duration::from_secs(20);
/// Longest line the agent may send.
const MAX_LINE: usize = 64 * 1024;

/// Starts `req` through the agent listening on `socket`. `Ok(None)` when no agent listens
/// there (a machine started without one), so the caller can fall back to the runtime.
pub async fn exec(socket: &Path, machine: &str, req: &Request) -> NResult<Option<ExecHandle>> {
    let stream = match UnixStream::connect(socket).await {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(e) => {
            return Err(NativeError::io(
                format!("machine {machine}: connecting to its agent"),
                e,
            ))
        }
    };
    let io_err = |what: &str, e: std::io::Error| {
        NativeError::io(format!("machine {machine}: {what} its agent"), e)
    };
    let mut line = serde_json::to_vec(req).map_err(|e| NativeError::other(machine, e))?;
    line.push(b'\n');
    if line.len() > MAX_REQUEST {
        return Err(NativeError::Invalid {
            id: machine.to_string(),
            message: format!(
                "command line and environment take {} bytes, more than {MAX_REQUEST}",
                line.len()
            ),
        });
    }
    let (reply, fds, rest, stream) = tokio::time::timeout(HANDSHAKE, async {
        let mut s = stream;
        s.write_all(&line)
            .await
            .map_err(|e| io_err("writing to", e))?;
        let (reply, fds, rest) = handshake(&s).await.map_err(|e| io_err("reading from", e))?;
        Ok::<_, NativeError>((reply, fds, rest, s))
    })
    .await
    .map_err(|_| NativeError::other(machine, "its agent did not answer an exec in time"))??;
    let pid = match reply {
        Reply::Started { pid } => pid,
        Reply::Connected => return session(machine, fds).map(Some),
        Reply::Failed { message } => return Ok(Some(failed(machine, message))),
        Reply::Exited { .. } => {
            return Err(NativeError::other(machine, "agent answered out of order"))
        }
    };
    let (read, write) = stream.into_split();
    let tty = fds.len() == 1;
    let machine_s = machine.to_string();
    let (stdin, output, pty): (std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>, _, _) =
        match <[OwnedFd; 3]>::try_from(fds) {
            Ok([i, o, e]) => {
                let pipe = |fd: OwnedFd| {
                    tokio::net::unix::pipe::Receiver::from_owned_fd(fd)
                        .map_err(|e| NativeError::io(format!("machine {machine}: a pipe"), e))
                };
                let stdin = tokio::net::unix::pipe::Sender::from_owned_fd(i)
                    .map_err(|e| NativeError::io(format!("machine {machine}: a pipe"), e))?;
                let output = exec::pipe_output(machine_s.clone(), pipe(o)?, pipe(e)?);
                (Box::pin(stdin), output, None)
            }
            Err(fds) if tty => {
                let master = fds.into_iter().next().expect("one descriptor");
                let pty = Pty::new(master)
                    .map_err(|e| NativeError::io(format!("machine {machine}: pty"), e))?;
                let output = exec::pty_output(machine_s.clone(), pty.handle());
                (Box::pin(pty.handle()), output, Some(pty))
            }
            Err(fds) => {
                return Err(NativeError::other(
                    machine,
                    format!("agent sent {} descriptors for process {pid}", fds.len()),
                ))
            }
        };
    let process = Arc::new(AgentExec {
        machine: machine_s,
        read: Mutex::new((read, rest)),
        write: Mutex::new(write),
        status: OnceCell::new(),
        pty,
    });
    Ok(Some(ExecHandle {
        stdin,
        output,
        process,
        passed_fds: None,
    }))
}

/// Reads the first reply line and the descriptors that came with it; returns what was
/// read beyond the line too.
async fn handshake(s: &UnixStream) -> std::io::Result<(Reply, Vec<OwnedFd>, Vec<u8>)> {
    let mut got = Vec::new();
    let mut fds = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(nl) = got.iter().position(|&b| b == b'\n') {
            let reply: Reply = serde_json::from_slice(&got[..nl])
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            return Ok((reply, fds, got[nl + 1..].to_vec()));
        }
        if got.len() > MAX_LINE || fds.len() > 3 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "oversized reply",
            ));
        }
        s.readable().await?;
        match s.try_io(tokio::io::Interest::READABLE, || {
            sys::recv_with_fds(s.as_raw_fd(), &mut buf)
        }) {
            Ok((0, _)) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "connection closed before the reply",
                ))
            }
            Ok((n, more)) => {
                got.extend_from_slice(&buf[..n]);
                fds.extend(more);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

/// A connection to a terminal session's daemon, as the stdio of the `session attach`
/// it stands for: what is written goes to the daemon, what it sends is stdout.
fn session(machine: &str, fds: Vec<OwnedFd>) -> NResult<ExecHandle> {
    let [fd] = <[OwnedFd; 1]>::try_from(fds).map_err(|fds| {
        NativeError::other(
            machine,
            format!("agent sent {} descriptors for a session", fds.len()),
        )
    })?;
    let io = |e| NativeError::io(format!("machine {machine}: a session connection"), e);
    let control = fd.try_clone().map_err(io)?;
    let std = std::os::unix::net::UnixStream::from(fd);
    std.set_nonblocking(true).map_err(io)?;
    let (read, write) = UnixStream::from_std(std).map_err(io)?.into_split();
    // The daemon hands over its pty at most once per connection; anything beyond a couple
    // of descriptors is closed on arrival.
    let (fds_tx, fds_rx) = std::sync::mpsc::sync_channel(2);
    let output = SessionOutput {
        read,
        machine: machine.to_string(),
        fds: fds_tx,
    }
    .boxed();
    Ok(ExecHandle {
        stdin: Box::pin(write),
        output,
        process: Arc::new(SessionConn {
            machine: machine.to_string(),
            control,
        }),
        passed_fds: Some(fds_rx),
    })
}

/// What a session daemon sends, in chunks the size of each read, with any descriptors it
/// passes (SCM_RIGHTS) queued for the caller before the bytes they arrived with. The read
/// buffer lives on the stack during a poll only: an idle terminal holds no buffer
/// (thousands may be open).
struct SessionOutput {
    read: OwnedReadHalf,
    machine: String,
    fds: std::sync::mpsc::SyncSender<OwnedFd>,
}

impl futures::Stream for SessionOutput {
    type Item = Result<OutputChunk>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let this = self.get_mut();
        let sock: &UnixStream = this.read.as_ref();
        loop {
            if let Err(e) = std::task::ready!(sock.poll_read_ready(cx)) {
                return Poll::Ready(Some(Err(this.io_err(e))));
            }
            // Only once there is something to read: the stream is polled on every turn of
            // the terminal's loop. The daemon sends at most 32 KiB of output per frame.
            let mut buf = [0u8; 40 * 1024];
            match sock.try_io(tokio::io::Interest::READABLE, || {
                sys::recv_with_fds(sock.as_raw_fd(), &mut buf)
            }) {
                Ok((0, _)) => return Poll::Ready(None),
                Ok((n, fds)) => {
                    for fd in fds {
                        // A full queue: the descriptor is closed (dropped) here.
                        let _ = this.fds.try_send(fd);
                    }
                    let chunk = Bytes::copy_from_slice(&buf[..n]);
                    return Poll::Ready(Some(Ok(OutputChunk::Stdout(chunk))));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Some(Err(this.io_err(e)))),
            }
        }
    }
}

impl SessionOutput {
    fn io_err(&self, e: std::io::Error) -> DriverError {
        DriverError::io(
            format!("a session connection in machine {}", self.machine),
            e,
        )
    }
}

/// The "process" behind a session connection: ending it closes the connection (the
/// session itself lives on in its daemon, as it does when a relay ends).
struct SessionConn {
    machine: String,
    control: OwnedFd,
}

#[async_trait]
impl ExecProcess for SessionConn {
    async fn resize(&self, _size: TtySize) -> Result<()> {
        Err(DriverError::Invalid {
            id: self.machine.clone(),
            message: "resize of a session connection (send a resize frame)".into(),
        })
    }

    async fn wait(&self) -> Result<i64> {
        Ok(0)
    }

    async fn kill(&self) -> Result<()> {
        // SAFETY: shutdown(2) on a descriptor this object owns.
        unsafe { libc::shutdown(self.control.as_raw_fd(), libc::SHUT_RDWR) };
        Ok(())
    }
}

/// A program that could not start: its reason on stderr and exit code 127, as a shell
/// (and `crun exec`) report it.
fn failed(machine: &str, message: String) -> ExecHandle {
    let msg = Bytes::from(format!("rnr: {message}\n"));
    ExecHandle {
        stdin: Box::pin(tokio::io::sink()),
        output: futures::stream::once(async move { Ok(OutputChunk::Stderr(msg)) }).boxed(),
        process: Arc::new(NotStarted {
            machine: machine.to_string(),
        }),
        passed_fds: None,
    }
}

struct NotStarted {
    machine: String,
}

#[async_trait]
impl ExecProcess for NotStarted {
    async fn resize(&self, _size: TtySize) -> Result<()> {
        Err(DriverError::Invalid {
            id: self.machine.clone(),
            message: "resize of a process that did not start".into(),
        })
    }

    async fn wait(&self) -> Result<i64> {
        Ok(127)
    }

    async fn kill(&self) -> Result<()> {
        Ok(())
    }
}

/// A process the agent started: its exit arrives on the connection.
struct AgentExec {
    machine: String,
    read: Mutex<(OwnedReadHalf, Vec<u8>)>,
    write: Mutex<OwnedWriteHalf>,
    status: OnceCell<i64>,
    pty: Option<Pty>,
}

#[async_trait]
impl ExecProcess for AgentExec {
    async fn resize(&self, size: TtySize) -> Result<()> {
        resize(&self.machine, self.pty.as_ref(), size)
    }

    async fn wait(&self) -> Result<i64> {
        let code = self
            .status
            .get_or_try_init(|| async {
                let mut guard = self.read.lock().await;
                let (read, got) = &mut *guard;
                let err = |m: &str| {
                    DriverError::backend(
                        &self.machine,
                        format!("waiting for a process through the agent: {m}"),
                    )
                };
                loop {
                    if let Some(nl) = got.iter().position(|&b| b == b'\n') {
                        return match serde_json::from_slice::<Reply>(&got[..nl]) {
                            Ok(Reply::Exited { code }) => Ok(code),
                            _ => Err(err("unexpected message")),
                        };
                    }
                    if got.len() > MAX_LINE {
                        return Err(err("oversized message"));
                    }
                    let mut buf = [0u8; 512];
                    match read.read(&mut buf).await {
                        Ok(0) => return Err(err("the agent closed the connection")),
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                        Err(e) => {
                            return Err(DriverError::io(
                                format!("waiting for a process in machine {}", self.machine),
                                e,
                            ))
                        }
                    }
                }
            })
            .await?;
        Ok(*code)
    }

    async fn kill(&self) -> Result<()> {
        if self.status.get().is_some() {
            return Ok(());
        }
        // The process may have ended and the agent closed its side: nothing to kill then.
        let _ = self.write.lock().await.write_all(KILL).await;
        Ok(())
    }
}

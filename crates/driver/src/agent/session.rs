//! Attaching to a terminal session through the agent channel: the link the terminal
//! engine then speaks `rnr_agent_proto::session` frames on.

use super::{AgentChannel, ChunkStream, Keepalive, ReadSide, WriteSide};
use crate::{DriverError, Result};
use bytes::Bytes;
use futures::StreamExt;
use rnr_agent_proto::control::{Reply, Request, SessionRequest, Stdio};
use rnr_agent_proto::fdpass;
use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::Pin;
use tokio::io::AsyncWrite;
use tokio::net::unix::OwnedReadHalf;
use tokio::net::UnixStream;

/// Descriptors a session daemon passed (its pty, in direct mode), in the order they came.
/// Only links over connections that pass descriptors have one.
pub struct FdInbox(std::sync::mpsc::Receiver<OwnedFd>);

impl FdInbox {
    /// The next descriptor that has arrived, if any.
    pub fn take(&self) -> Option<OwnedFd> {
        self.0.try_recv().ok()
    }
}

/// A connection to a session daemon.
pub struct SessionLink {
    /// What the daemon sends (frames, split however they were read).
    pub output: ChunkStream,
    /// Frames for the daemon.
    pub input: Pin<Box<dyn AsyncWrite + Send>>,
    /// The daemon's descriptors, where they can pass.
    pub fds: Option<FdInbox>,
    /// Keeps the channel's carrier alive as long as the link is held.
    pub keep: Option<Keepalive>,
}

impl std::fmt::Debug for SessionLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SessionLink(fds: {})", self.fds.is_some())
    }
}

impl AgentChannel {
    /// Attaches to session `id` (started with a `rows`×`cols` pty if it does not run). Where
    /// descriptors pass, the agent hands over the daemon's own connection, so nothing
    /// relays between the host and the daemon.
    pub async fn session(mut self, id: &str, rows: u16, cols: u16) -> Result<SessionLink> {
        let stdio = if self.passes_fds() {
            Stdio::Passed
        } else {
            Stdio::Framed
        };
        let req = Request::Session(SessionRequest {
            id: id.to_string(),
            rows,
            cols,
            stdio,
        });
        let (reply, fds) = self.request(&req).await?;
        match reply {
            Reply::Connected => {}
            Reply::Failed { message } => return Err(self.err(message)),
            other => return Err(self.err(format!("unexpected answer to an attach: {other:?}"))),
        }
        let machine = self.machine().to_string();
        if stdio == Stdio::Passed {
            let fd = fds
                .into_iter()
                .next()
                .ok_or_else(|| self.err("no session connection came with the answer"))?;
            return daemon_link(&machine, fd);
        }
        let Self { reader, write, .. } = self;
        let leftover = reader.rbuf.freeze();
        let rest = match reader.read {
            ReadSide::Chunks(s) => s,
            ReadSide::Unix(r) => unix_chunks(r, &machine, None),
        };
        let output = if leftover.is_empty() {
            rest
        } else {
            futures::stream::once(async move { Ok(leftover) })
                .chain(rest)
                .boxed()
        };
        let input: Pin<Box<dyn AsyncWrite + Send>> = match write {
            WriteSide::Unix(w) => Box::pin(w),
            WriteSide::Bytes(w) => w,
        };
        Ok(SessionLink {
            output,
            input,
            fds: None,
            keep: reader.keep,
        })
    }
}

/// A link on the daemon's own connection, handed over by the agent.
fn daemon_link(machine: &str, fd: OwnedFd) -> Result<SessionLink> {
    let io = |e| DriverError::io(format!("a session connection in machine {machine}"), e);
    let std = std::os::unix::net::UnixStream::from(fd);
    std.set_nonblocking(true).map_err(io)?;
    let (read, write) = UnixStream::from_std(std).map_err(io)?.into_split();
    // The daemon hands over its pty at most once per connection; anything beyond a couple
    // of descriptors is closed on arrival.
    let (tx, rx) = std::sync::mpsc::sync_channel(2);
    Ok(SessionLink {
        output: unix_chunks(read, machine, Some(tx)),
        input: Box::pin(write),
        fds: Some(FdInbox(rx)),
        keep: None,
    })
}

/// What a unix socket delivers, in chunks the size of each read, with any descriptors
/// queued for the caller before the bytes they arrived with. The read buffer lives on the
/// stack during a poll only: an idle terminal holds no buffer (thousands may be open).
fn unix_chunks(
    read: OwnedReadHalf,
    machine: &str,
    fds: Option<std::sync::mpsc::SyncSender<OwnedFd>>,
) -> ChunkStream {
    let machine = machine.to_string();
    let mut done = false;
    futures::stream::poll_fn(move |cx| {
        use std::task::Poll;
        if done {
            return Poll::Ready(None);
        }
        let sock: &UnixStream = read.as_ref();
        loop {
            if let Err(e) = std::task::ready!(sock.poll_read_ready(cx)) {
                done = true;
                return Poll::Ready(Some(Err(e)));
            }
            // Only once there is something to read. The daemon sends at most 32 KiB of
            // output per frame.
            let mut buf = [0u8; 40 * 1024];
            match sock.try_io(tokio::io::Interest::READABLE, || {
                fdpass::recv_with_fds(sock.as_raw_fd(), &mut buf)
            }) {
                Ok((0, _)) => {
                    done = true;
                    return Poll::Ready(None);
                }
                Ok((n, got)) => {
                    for fd in got {
                        if let Some(tx) = &fds {
                            // A full queue: the descriptor is closed (dropped) here.
                            let _ = tx.try_send(fd);
                        }
                    }
                    return Poll::Ready(Some(Ok(Bytes::copy_from_slice(&buf[..n]))));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    done = true;
                    tracing::debug!(machine = %machine, error = %e, "session connection");
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    })
    .boxed()
}

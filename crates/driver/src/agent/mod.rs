//! The agent channel: the one way the platform talks to the agent inside a machine.
//!
//! A driver hands out [`AgentChannel`]s ([`crate::Driver::agent`]); how it makes one is its
//! own business: the native driver connects to a host-only unix socket, Docker execs
//! `rnr-agent serve` and uses its stdio. What travels on it is `rnr_agent_proto`'s. Where
//! the channel is a unix socket, descriptors pass with it ([`AgentChannel::passes_fds`]):
//! a process's stdio and a terminal's pty are then handed to the host, which reads and
//! writes them directly; elsewhere the agent frames them on the channel.
//!
//! Each channel carries one request: [`AgentChannel::exec`], [`AgentChannel::session`] or
//! [`AgentChannel::check`] consumes it.

mod exec;
mod session;

pub use session::{FdInbox, SessionLink};

use crate::{DriverError, Result};
use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use rnr_agent_proto::check::{Outcome, Suite};
use rnr_agent_proto::control::{self, Reply, Request, MAX_REPLY};
use rnr_agent_proto::{fdpass, frame};
use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::Pin;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

pub use rnr_agent_proto as proto;

/// Bytes from the agent, in chunks as they arrive.
pub type ChunkStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;
/// Bytes to the agent.
pub type ByteWriter = Pin<Box<dyn AsyncWrite + Send>>;
/// Whatever must live as long as the channel is used (the runtime exec carrying it, which
/// its drop ends); dropped with the last user of the channel.
pub type Keepalive = Box<dyn Send + Sync>;

/// Longest a host waits for the agent to answer a request (it forks and execs, or connects
/// to a daemon: milliseconds when the machine is well).
pub const ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

enum ReadSide {
    Unix(OwnedReadHalf),
    Chunks(ChunkStream),
}

enum WriteSide {
    Unix(OwnedWriteHalf),
    Bytes(ByteWriter),
}

/// A connection to one machine's agent.
pub struct AgentChannel {
    reader: Reader,
    write: WriteSide,
    /// Frame stdio and sessions even where descriptors could pass.
    framed: bool,
}

/// The reading half of a channel, and what lives as long as the channel does.
struct Reader {
    machine: String,
    read: ReadSide,
    /// Bytes read past the last frame taken.
    rbuf: BytesMut,
    /// Descriptors received and not yet claimed by a reply, in order.
    fds: VecDeque<OwnedFd>,
    keep: Option<Keepalive>,
}

impl std::fmt::Debug for AgentChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "AgentChannel({}, {})",
            self.reader.machine,
            if self.passes_fds() { "unix" } else { "bytes" }
        )
    }
}

impl AgentChannel {
    /// A channel over a unix stream socket: descriptors pass.
    pub fn unix(machine: impl Into<String>, stream: UnixStream) -> Self {
        let (r, w) = stream.into_split();
        Self {
            reader: Reader::new(machine.into(), ReadSide::Unix(r), None),
            write: WriteSide::Unix(w),
            framed: false,
        }
    }

    /// A channel over any byte stream (a runtime exec's stdio, a serial port): no
    /// descriptors; the agent frames stdio and sessions on the channel itself.
    pub fn bytes(
        machine: impl Into<String>,
        read: ChunkStream,
        write: ByteWriter,
        keep: Option<Keepalive>,
    ) -> Self {
        Self {
            reader: Reader::new(machine.into(), ReadSide::Chunks(read), keep),
            write: WriteSide::Bytes(write),
            framed: true,
        }
    }

    /// [`AgentChannel::bytes`] over an `AsyncRead`.
    pub fn io(
        machine: impl Into<String>,
        read: impl AsyncRead + Send + 'static,
        write: impl AsyncWrite + Send + 'static,
        keep: Option<Keepalive>,
    ) -> Self {
        let chunks = tokio_util::io::ReaderStream::with_capacity(read, 32 * 1024).boxed();
        Self::bytes(machine, chunks, Box::pin(write), keep)
    }

    /// Whether descriptors travel on this channel.
    pub fn passes_fds(&self) -> bool {
        !self.framed
    }

    /// The same channel with stdio and sessions framed on it, as on a channel that cannot
    /// pass descriptors (the conformance suite holds both ways to the same behaviour).
    pub fn framed(mut self) -> Self {
        self.framed = true;
        self
    }

    pub fn machine(&self) -> &str {
        &self.reader.machine
    }

    fn err(&self, message: impl std::fmt::Display) -> DriverError {
        self.reader.err(message)
    }

    async fn write_all(&mut self, data: &[u8]) -> Result<()> {
        self.write
            .write_all(data)
            .await
            .map_err(|e| self.reader.err(format!("writing to the agent: {e}")))
    }

    /// Sends `req` and waits for its first reply, with the descriptors that came along
    /// (checked against what the reply may carry).
    async fn request(&mut self, req: &Request) -> Result<(Reply, Vec<OwnedFd>)> {
        let bytes = control::encode_request(req);
        let answer = async {
            self.write_all(&bytes).await?;
            self.reader.reply().await
        };
        let reply = tokio::time::timeout(ANSWER_TIMEOUT, answer)
            .await
            .map_err(|_| self.err(format!("no answer within {} s", ANSWER_TIMEOUT.as_secs())))??;
        let fds: Vec<OwnedFd> = self.reader.fds.drain(..).collect();
        let expected = reply.fds_expected(req);
        if self.passes_fds() && !expected.contains(&fds.len()) {
            return Err(self.err(format!(
                "{} descriptors came with a reply that carries {expected:?}",
                fds.len()
            )));
        }
        Ok((reply, fds))
    }

    /// Evaluates `suite` inside the machine in one request.
    pub async fn check(mut self, suite: &Suite) -> Result<Vec<Outcome>> {
        let req = Request::Check(suite.clone());
        let bytes = control::encode_request(&req);
        self.write_all(&bytes).await?;
        match self.reader.reply().await? {
            Reply::Checked { outcomes } if outcomes.len() == suite.checks.len() => Ok(outcomes),
            Reply::Checked { outcomes } => Err(self.err(format!(
                "{} outcomes for {} checks",
                outcomes.len(),
                suite.checks.len()
            ))),
            Reply::Failed { message } => Err(self.err(message)),
            other => Err(self.err(format!("unexpected answer to a check: {other:?}"))),
        }
    }
}

impl WriteSide {
    async fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            WriteSide::Unix(w) => w.write_all(data).await,
            WriteSide::Bytes(w) => {
                w.write_all(data).await?;
                w.flush().await
            }
        }
    }
}

impl Reader {
    fn new(machine: String, read: ReadSide, keep: Option<Keepalive>) -> Self {
        Self {
            machine,
            read,
            rbuf: BytesMut::new(),
            fds: VecDeque::new(),
            keep,
        }
    }

    fn err(&self, message: impl std::fmt::Display) -> DriverError {
        DriverError::Agent {
            id: self.machine.clone(),
            message: message.to_string(),
        }
    }

    /// Reads more into `rbuf` (and descriptors into `fds`); `false` at the end of the stream.
    async fn fill(&mut self) -> Result<bool> {
        match &mut self.read {
            ReadSide::Unix(r) => {
                let sock: &UnixStream = r.as_ref();
                loop {
                    sock.readable().await.map_err(|e| {
                        DriverError::io(format!("agent of machine {}", self.machine), e)
                    })?;
                    let mut buf = [0u8; 16 * 1024];
                    match sock.try_io(tokio::io::Interest::READABLE, || {
                        fdpass::recv_with_fds(sock.as_raw_fd(), &mut buf)
                    }) {
                        Ok((0, _)) => return Ok(false),
                        Ok((n, fds)) => {
                            self.rbuf.extend_from_slice(&buf[..n]);
                            // Nothing the agent sends carries more; the rest is closed here.
                            let room = fdpass::MAX_FDS.saturating_sub(self.fds.len());
                            self.fds.extend(fds.into_iter().take(room));
                            return Ok(true);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                        Err(e) => {
                            return Err(DriverError::io(
                                format!("agent of machine {}", self.machine),
                                e,
                            ))
                        }
                    }
                }
            }
            ReadSide::Chunks(s) => match s.next().await {
                Some(Ok(chunk)) => {
                    self.rbuf.extend_from_slice(&chunk);
                    Ok(true)
                }
                Some(Err(e)) => Err(DriverError::io(
                    format!("agent of machine {}", self.machine),
                    e,
                )),
                None => Ok(false),
            },
        }
    }

    /// The next whole frame, or `None` at a clean end of the stream.
    async fn next_frame(&mut self, max: usize) -> Result<Option<(u8, Bytes)>> {
        loop {
            match frame::peek(&self.rbuf, max).map_err(|e| self.err(e))? {
                Some((tag, len)) => {
                    let mut f = self.rbuf.split_to(frame::HEADER + len);
                    let _ = f.split_to(frame::HEADER);
                    return Ok(Some((tag, f.freeze())));
                }
                None => {
                    if !self.fill().await? {
                        return if self.rbuf.is_empty() {
                            Ok(None)
                        } else {
                            Err(self.err("the agent hung up in the middle of a frame"))
                        };
                    }
                }
            }
        }
    }

    /// The next frame, which must be a reply; an error at the end of the stream.
    async fn reply(&mut self) -> Result<Reply> {
        match self.next_frame(MAX_REPLY).await? {
            Some((tag, payload)) => control::parse_reply(tag, &payload).map_err(|e| self.err(e)),
            None => Err(self.err("the agent hung up before it answered")),
        }
    }
}

/// Where a machine's agent lives: `AGENT_PATH`'s directory is a read-only mount of its
/// own in every machine, so the learner can neither replace the binary nor rename the
/// directory away (a mount point cannot be renamed) and put another in its place.
pub const AGENT_DIR: &str = "/.rnr";

/// Copies the agent binary into `under/<content hash>/rnr-agent` (once per build) and
/// returns that directory, to be mounted read-only at [`AGENT_DIR`]. A directory of its
/// own: the binary's build directory holds other files machines must not see. Keyed by
/// content: machines started from an older build keep theirs when rnr is upgraded.
pub fn stage_agent(
    binary: &std::path::Path,
    under: &std::path::Path,
) -> std::io::Result<std::path::PathBuf> {
    use sha2::Digest;
    use std::os::unix::fs::PermissionsExt;
    let bytes = std::fs::read(binary)?;
    let hash = hex::encode(&sha2::Sha256::digest(&bytes)[..8]);
    let dir = under.join(&hash);
    let target = dir.join("rnr-agent");
    if target.is_file() {
        return Ok(dir);
    }
    std::fs::create_dir_all(under)?;
    // Made under a temporary name and renamed: a concurrent stage or a crash never
    // leaves a half-written binary where machines look.
    let tmp = under.join(format!(".{hash}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    let staged = tmp.join("rnr-agent");
    std::fs::write(&staged, &bytes)?;
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755))?;
    match std::fs::rename(&tmp, &dir) {
        Ok(()) => Ok(dir),
        // Another process staged the same build first.
        Err(_) if target.is_file() => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(dir)
        }
        Err(e) => Err(e),
    }
}

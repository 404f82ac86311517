//! Processes started through the agent channel. Where descriptors pass, the process's stdio
//! is handed over and read and written directly (a millisecond per exec, no relay);
//! elsewhere it is framed on the channel and a task of ours unframes it.

use super::{AgentChannel, Reader, WriteSide};
use crate::stdio::{self, Pty};
use crate::{DriverError, ExecHandle, ExecProcess, ExecSpec, OutputChunk, Result, TtySize};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use rnr_agent_proto::control::{
    self, ExecFrame, ExecRequest, Reply, Request, Stdio, MAX_STDIO_FRAME, T_REPLY,
};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, watch, Mutex};

type Status = watch::Receiver<Option<std::result::Result<i64, String>>>;

impl AgentChannel {
    /// Starts `spec` in the machine. A program that cannot start (not found, unknown user)
    /// is a process that printed why on stderr and exited 127, as a shell reports it.
    pub async fn exec(mut self, spec: ExecSpec) -> Result<ExecHandle> {
        if spec.argv.is_empty() {
            return Err(DriverError::Invalid {
                id: self.machine().to_string(),
                message: "argv must not be empty".into(),
            });
        }
        let stdio = if self.passes_fds() {
            Stdio::Passed
        } else {
            Stdio::Framed
        };
        let req = ExecRequest {
            argv: spec.argv,
            env: spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            user: spec.user,
            cwd: spec.workdir,
            tty: spec.tty.map(|t| [t.rows, t.cols]),
            stdio,
        };
        let encoded = control::encode_request(&Request::Exec(req.clone()));
        if encoded.len() > control::MAX_REQUEST {
            return Err(DriverError::Invalid {
                id: self.machine().to_string(),
                message: format!(
                    "command line and environment take {} bytes, more than {}",
                    encoded.len(),
                    control::MAX_REQUEST
                ),
            });
        }
        let (reply, fds) = self.request(&Request::Exec(req.clone())).await?;
        match reply {
            Reply::Started { .. } if stdio == Stdio::Passed => {
                self.passed_exec(fds, req.tty.is_some())
            }
            Reply::Started { .. } => Ok(self.framed_exec()),
            Reply::Failed { message } => Ok(not_started(self.machine(), message)),
            other => Err(self.err(format!("unexpected answer to an exec: {other:?}"))),
        }
    }

    /// Stdio handed over: pipes or a pty the host reads and writes itself; the channel
    /// stays for the kill request and the exit code.
    fn passed_exec(self, fds: Vec<OwnedFd>, tty: bool) -> Result<ExecHandle> {
        let machine = self.machine().to_string();
        let io = |e| DriverError::io(format!("an exec's stdio in machine {machine}"), e);
        let (stdin, output, pty): (crate::Stdin, _, _) = if tty {
            let master = fds
                .into_iter()
                .next()
                .ok_or_else(|| self.err("no pty came"))?;
            let pty = Pty::new(master).map_err(io)?;
            let output = stdio::pty_output(machine.clone(), pty.handle());
            (Box::pin(pty.handle()), output, Some(pty))
        } else {
            let [i, o, e] = <[OwnedFd; 3]>::try_from(fds)
                .map_err(|fds| self.err(format!("{} descriptors for pipes", fds.len())))?;
            let pipe =
                |fd: OwnedFd| tokio::net::unix::pipe::Receiver::from_owned_fd(fd).map_err(io);
            let stdin = tokio::net::unix::pipe::Sender::from_owned_fd(i).map_err(io)?;
            let output = stdio::pipe_output(machine.clone(), pipe(o)?, pipe(e)?);
            (Box::pin(stdin), output, None)
        };
        Ok(ExecHandle {
            stdin,
            output,
            process: Arc::new(PassedExec {
                reader: Mutex::new(self.reader),
                writer: Mutex::new(self.write),
                status: tokio::sync::OnceCell::new(),
                pty,
                machine,
            }),
        })
    }

    /// Stdio framed on the channel: one task unframes output and the exit code, another
    /// frames what is written to stdin.
    fn framed_exec(self) -> ExecHandle {
        let machine = self.machine().to_string();
        let Self {
            mut reader, write, ..
        } = self;
        let writer = Arc::new(Mutex::new(write));
        let (out_tx, out_rx) = mpsc::channel::<Result<OutputChunk>>(16);
        let (status_tx, status_rx) = watch::channel(None);
        tokio::spawn(async move {
            let end = loop {
                let frame = match reader
                    .next_frame(MAX_STDIO_FRAME.max(control::MAX_REPLY))
                    .await
                {
                    Ok(Some(f)) => f,
                    Ok(None) => break Err("the agent hung up before the process ended".to_string()),
                    Err(e) => break Err(e.to_string()),
                };
                let chunk = match frame {
                    (T_REPLY, p) => match control::parse_reply(T_REPLY, &p) {
                        Ok(Reply::Exited { code }) => break Ok(code),
                        other => break Err(format!("unexpected message: {other:?}")),
                    },
                    (tag, p) => match ExecFrame::parse(tag, &p) {
                        Ok(ExecFrame::Stdout(d)) => OutputChunk::Stdout(p.slice_ref(d)),
                        Ok(ExecFrame::Stderr(d)) => OutputChunk::Stderr(p.slice_ref(d)),
                        _ => break Err(format!("unexpected frame {tag:#04x}")),
                    },
                };
                // A caller that stopped reading output still gets the exit code.
                let _ = out_tx.send(Ok(chunk)).await;
            };
            if let Err(e) = &end {
                let _ = out_tx.send(Err(reader.err(e))).await;
            }
            drop(out_tx);
            let _ = status_tx.send(Some(end));
            // The channel (and what keeps it alive) lives until the process has ended.
            drop(reader);
        });
        let (stdin, mut stdin_rx) = tokio::io::duplex(MAX_STDIO_FRAME);
        {
            let writer = writer.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; MAX_STDIO_FRAME - 64];
                loop {
                    let n = stdin_rx.read(&mut buf).await.unwrap_or(0);
                    // n == 0: stdin was shut down (or dropped): an empty frame closes it.
                    let f = ExecFrame::Stdin(&buf[..n]).encode();
                    if write_side(&writer, &f).await.is_err() || n == 0 {
                        return;
                    }
                }
            });
        }
        let output = tokio_stream(out_rx);
        ExecHandle {
            stdin: Box::pin(stdin),
            output,
            process: Arc::new(FramedExec {
                machine,
                writer,
                status: status_rx,
            }),
        }
    }
}

fn tokio_stream(mut rx: mpsc::Receiver<Result<OutputChunk>>) -> crate::OutputStream {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}

async fn write_side(w: &Mutex<WriteSide>, data: &[u8]) -> std::io::Result<()> {
    w.lock().await.write_all(data).await
}

/// A process whose stdio the host holds.
struct PassedExec {
    machine: String,
    /// Where the exit code arrives (a waiter holds it), apart from the kill requests'
    /// way out, so a kill never waits for a waiter.
    reader: Mutex<Reader>,
    writer: Mutex<WriteSide>,
    status: tokio::sync::OnceCell<i64>,
    pty: Option<Pty>,
}

#[async_trait]
impl ExecProcess for PassedExec {
    async fn resize(&self, size: TtySize) -> Result<()> {
        stdio::resize(&self.machine, self.pty.as_ref(), size)
    }

    async fn wait(&self) -> Result<i64> {
        let code = self
            .status
            .get_or_try_init(|| async {
                let mut r = self.reader.lock().await;
                match r.reply().await? {
                    Reply::Exited { code } => Ok(code),
                    other => Err(r.err(format!("unexpected message: {other:?}"))),
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
        let _ = write_side(&self.writer, &ExecFrame::Kill.encode()).await;
        Ok(())
    }
}

/// A process whose stdio is framed on the channel.
struct FramedExec {
    machine: String,
    writer: Arc<Mutex<WriteSide>>,
    status: Status,
}

#[async_trait]
impl ExecProcess for FramedExec {
    async fn resize(&self, size: TtySize) -> Result<()> {
        let f = ExecFrame::Resize {
            rows: size.rows,
            cols: size.cols,
        }
        .encode();
        write_side(&self.writer, &f)
            .await
            .map_err(|e| DriverError::io(format!("resizing a pty in machine {}", self.machine), e))
    }

    async fn wait(&self) -> Result<i64> {
        let mut rx = self.status.clone();
        let res = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| DriverError::backend(&self.machine, "the exec's reader ended"))?
            .clone();
        match res.unwrap_or_else(|| Err("no exit status".into())) {
            Ok(code) => Ok(code),
            Err(e) => Err(DriverError::Agent {
                id: self.machine.clone(),
                message: e,
            }),
        }
    }

    async fn kill(&self) -> Result<()> {
        if self.status.borrow().is_some() {
            return Ok(());
        }
        let _ = write_side(&self.writer, &ExecFrame::Kill.encode()).await;
        Ok(())
    }
}

/// A program that could not start: its reason on stderr and exit code 127, as a shell
/// (and `crun exec`) report it.
pub(crate) fn not_started(machine: &str, message: String) -> ExecHandle {
    let msg = Bytes::from(format!("rnr: {message}\n"));
    ExecHandle {
        stdin: Box::pin(tokio::io::sink()),
        output: futures::stream::once(async move { Ok(OutputChunk::Stderr(msg)) }).boxed(),
        process: Arc::new(NotStarted {
            machine: machine.to_string(),
        }),
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

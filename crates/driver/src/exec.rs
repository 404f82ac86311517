//! Exec streams and the one-shot `collect` helper built on them.
//!
//! A driver's `exec` hands back live streams; the API's one-shot exec, the checker and the
//! terminal gateway all build on those, so the bounded-output and timeout logic lives here
//! once instead of in every backend.

use crate::{Driver, DriverError, ExecSpec, Result, TtySize};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// One piece of a process's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputChunk {
    Stdout(Bytes),
    Stderr(Bytes),
}

/// Output of a running process, in order; ends when the process closed its outputs.
pub type OutputStream = Pin<Box<dyn Stream<Item = Result<OutputChunk>> + Send>>;

/// Control over a running process.
#[async_trait]
pub trait ExecProcess: Send + Sync {
    /// Changes the pty size; an error for processes started without a tty.
    async fn resize(&self, size: TtySize) -> Result<()>;
    /// Waits until the process has ended and returns its exit code (128+signal when
    /// killed by a signal). Call once the output stream has ended.
    async fn wait(&self) -> Result<i64>;
    /// Kills the process and everything it started.
    async fn kill(&self) -> Result<()>;
}

/// A process's stdin.
pub type Stdin = Pin<Box<dyn AsyncWrite + Send>>;

/// A started process: its stdin, its output, and its controls.
pub struct ExecHandle {
    pub stdin: Stdin,
    pub output: OutputStream,
    pub process: Arc<dyn ExecProcess>,
}

impl std::fmt::Debug for ExecHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExecHandle")
    }
}

/// A one-shot command: run, feed stdin, collect output within a deadline.
#[derive(Debug, Clone)]
pub struct ExecRequest {
    pub spec: ExecSpec,
    pub stdin: Option<Bytes>,
    pub timeout: Duration,
    /// Bytes kept per stream; the rest is read and dropped so the process never blocks.
    pub max_output: usize,
}

impl ExecRequest {
    pub fn new(spec: ExecSpec, timeout: Duration) -> Self {
        Self {
            spec,
            stdin: None,
            timeout,
            max_output: 1 << 20,
        }
    }
}

/// Result of a one-shot command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutcome {
    /// `None` when the command timed out and was killed.
    pub exit_code: Option<i64>,
    pub stdout: Bytes,
    pub stderr: Bytes,
    pub timed_out: bool,
    /// Whether output beyond `max_output` was dropped.
    pub truncated: bool,
}

/// Runs `req` in machine `id` and collects its output, killing it at the deadline.
pub async fn collect(driver: &dyn Driver, id: &str, req: ExecRequest) -> Result<ExecOutcome> {
    if req.spec.argv.is_empty() {
        return Err(DriverError::Invalid {
            id: id.to_string(),
            message: "argv must not be empty".into(),
        });
    }
    let deadline = tokio::time::Instant::now() + req.timeout;
    let handle = tokio::time::timeout_at(deadline, driver.exec(id, req.spec.clone()))
        .await
        .map_err(|_| DriverError::backend(id, "exec did not start before the timeout"))??;
    collect_handle(handle, req, deadline).await
}

/// Feeds `req.stdin` to a started process and collects its output until `deadline`,
/// killing it then.
pub async fn collect_handle(
    handle: ExecHandle,
    req: ExecRequest,
    deadline: tokio::time::Instant,
) -> Result<ExecOutcome> {
    let ExecHandle {
        mut stdin,
        mut output,
        process,
    } = handle;

    // Feeding stdin runs beside reading output: a process that writes before it has read
    // all its input would otherwise deadlock against us.
    let input = req.stdin.unwrap_or_default();
    let feeder = tokio::spawn(async move {
        if !input.is_empty() {
            // A process that exits without reading its input is not an error of ours.
            let _ = stdin.write_all(&input).await;
        }
        let _ = stdin.shutdown().await;
    });

    let mut stdout = BytesMut::new();
    let mut stderr = BytesMut::new();
    let mut truncated = false;
    let read_all = async {
        while let Some(chunk) = output.next().await {
            let (buf, data) = match chunk? {
                OutputChunk::Stdout(d) => (&mut stdout, d),
                OutputChunk::Stderr(d) => (&mut stderr, d),
            };
            let room = req.max_output.saturating_sub(buf.len());
            if data.len() > room {
                truncated = true;
            }
            buf.extend_from_slice(&data[..room.min(data.len())]);
        }
        Ok::<_, DriverError>(())
    };
    let finished = tokio::time::timeout_at(deadline, read_all).await;
    feeder.abort();
    match finished {
        Ok(res) => {
            res?;
            let exit_code = match tokio::time::timeout_at(deadline, process.wait()).await {
                Ok(code) => Some(code?),
                Err(_) => {
                    process.kill().await?;
                    None
                }
            };
            Ok(ExecOutcome {
                timed_out: exit_code.is_none(),
                exit_code,
                stdout: stdout.freeze(),
                stderr: stderr.freeze(),
                truncated,
            })
        }
        Err(_) => {
            process.kill().await?;
            Ok(ExecOutcome {
                exit_code: None,
                stdout: stdout.freeze(),
                stderr: stderr.freeze(),
                timed_out: true,
                truncated,
            })
        }
    }
}

//! Processes started in a machine with `crun exec`, for machines without an agent: their
//! streams (pipes, or a pty whose master crun hands over on a console socket so the
//! platform holds it), exit code and kill.

use async_trait::async_trait;
use rnr_driver::stdio::{self, Pty};
use rnr_driver::{DriverError, ExecProcess, Result, TtySize};
use std::path::PathBuf;
use tokio::sync::{Mutex, OnceCell};

/// A process started by `crun exec` (which waits for it and reports its exit code).
pub struct NativeExec {
    pub machine: String,
    pub child: Mutex<tokio::process::Child>,
    pub crun_pid: Option<u32>,
    pub status: OnceCell<i64>,
    pub pid_file: PathBuf,
    pub proc_root: PathBuf,
    pub pty: Option<Pty>,
}

impl Drop for NativeExec {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.pid_file);
    }
}

impl NativeExec {
    fn host_pid(&self) -> Option<i32> {
        std::fs::read_to_string(&self.pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }
}

/// Exit code of a finished `crun exec` (128+signal when crun itself was killed).
pub fn exit_code(status: std::process::ExitStatus) -> i64 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => i64::from(c),
        (None, Some(s)) => 128 + i64::from(s),
        _ => -1,
    }
}

#[async_trait]
impl ExecProcess for NativeExec {
    async fn resize(&self, size: TtySize) -> Result<()> {
        stdio::resize(&self.machine, self.pty.as_ref(), size)
    }

    async fn wait(&self) -> Result<i64> {
        let code = self
            .status
            .get_or_try_init(|| async {
                let mut child = self.child.lock().await;
                let status = child.wait().await.map_err(|e| {
                    DriverError::io(
                        format!("waiting for an exec in machine {}", self.machine),
                        e,
                    )
                })?;
                Ok::<_, DriverError>(exit_code(status))
            })
            .await?;
        Ok(*code)
    }

    async fn kill(&self) -> Result<()> {
        if self.status.get().is_some() {
            return Ok(());
        }
        let pid = self.host_pid();
        let crun = self.crun_pid;
        let root = self.proc_root.clone();
        tokio::task::spawn_blocking(move || {
            if let Some(pid) = pid {
                rnr_driver::process::kill_tree(&root, pid);
            } else if let Some(c) = crun.and_then(|c| i32::try_from(c).ok()) {
                // Not started yet: stop crun itself.
                // SAFETY: kill(2) with integer arguments. crun is our own child, not yet
                // reaped (we hold it in `child`), so the pid cannot have been reused.
                unsafe { libc::kill(c, libc::SIGKILL) };
            }
        })
        .await
        .map_err(|e| DriverError::backend(&self.machine, e))?;
        Ok(())
    }
}

/// Bytes of `buf` as text, for error messages.
pub fn text(buf: &[u8]) -> String {
    String::from_utf8_lossy(buf).trim().to_string()
}

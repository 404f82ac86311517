//! Processes started in a machine: [`NativeDriver::exec_inner`] asks the machine's agent
//! (see `agent`) or, without one, runs `crun exec`; the rest is such a process's streams
//! (pipes, or a pty whose master crun hands over on a console socket so the platform holds
//! it), exit code and kill.

use crate::error::{io_err, NResult, NativeError};
use crate::layout::AGENT_SOCKET;
use crate::{agent, oci, sys, NativeDriver};
use async_trait::async_trait;
use rnr_driver::stdio::{self, Pty};
use rnr_driver::{DriverError, ExecHandle, ExecProcess, ExecSpec, MachineStatus, Result, TtySize};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
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

impl NativeDriver {
    /// Starts `spec` in machine `id`: through its agent when it has one, else `crun exec`.
    pub(crate) async fn exec_inner(&self, id: &str, spec: ExecSpec) -> NResult<ExecHandle> {
        if spec.argv.is_empty() {
            return Err(NativeError::Invalid {
                id: id.to_string(),
                message: "argv must not be empty".into(),
            });
        }
        let meta = self.own_meta(id)?;
        if self.status_of(&meta) != MachineStatus::Running {
            return Err(NativeError::NotRunning { id: id.to_string() });
        }
        // Through the agent when the machine has one (a millisecond), else `crun exec`.
        match agent::connect(&self.machine_dir(id).join(AGENT_SOCKET), id).await {
            Ok(channel) => return channel.exec(spec).await.map_err(NativeError::from),
            Err(rnr_driver::DriverError::NoAgent(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let pid = meta.init_pid.unwrap_or(0);
        let (uid, gid, home) = self.resolve_user(id, pid, spec.user.as_deref())?;
        let mut env = vec![
            oci::DEFAULT_PATH.to_string(),
            "TERM=xterm-256color".to_string(),
            format!("HOME={home}"),
        ];
        env.extend(spec.env.iter().map(|(k, v)| format!("{k}={v}")));
        self.crun_exec(id, &spec, uid, gid, env).await
    }

    /// The fallback without an agent: `crun exec`, which holds the process's stdio pipes,
    /// or hands over the pty's master on a console socket.
    async fn crun_exec(
        &self,
        id: &str,
        spec: &ExecSpec,
        uid: u32,
        gid: u32,
        env: Vec<String>,
    ) -> NResult<ExecHandle> {
        let cfg = &self.inner.cfg;
        let n = self.inner.counter.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}-{n}", std::process::id());
        let pid_file = self.machine_dir(id).join(format!("exec-{tag}.pid"));
        // The machine's init has RLIMIT_CORE 0 from its config; an exec'd process would
        // get the runtime's (ours) instead.
        let plan = sys::MountPlan {
            no_core_dumps: true,
            ..Default::default()
        };
        let mut cmd = self.crun(plan, false)?;
        cmd.arg("exec").arg("--pid-file").arg(&pid_file);
        cmd.arg("--user").arg(format!("{uid}:{gid}"));
        if let Some(cwd) = &spec.workdir {
            cmd.arg("--cwd").arg(cwd);
        }
        for e in env {
            cmd.arg("--env").arg(e);
        }
        let socket_path = cfg
            .state_dir
            .join("run")
            .join("sock")
            .join(format!("{tag}.sock"));
        let listener = match spec.tty {
            Some(_) => {
                let _ = std::fs::remove_file(&socket_path);
                let l = tokio::net::UnixListener::bind(&socket_path)
                    .map_err(|e| io_err("binding console socket", &socket_path, e))?;
                cmd.arg("--tty").arg("--console-socket").arg(&socket_path);
                Some(l)
            }
            None => None,
        };
        cmd.arg(id).args(&spec.argv);
        cmd.stdin(if spec.tty.is_some() {
            Stdio::null()
        } else {
            Stdio::piped()
        })
        .stdout(if spec.tty.is_some() {
            Stdio::null()
        } else {
            Stdio::piped()
        })
        .stderr(Stdio::piped())
        .kill_on_drop(false);
        let spawned = cmd.spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_file(&socket_path);
                return Err(NativeError::io(
                    format!("machine {id}: spawning {} exec", cfg.runtime.display()),
                    e,
                ));
            }
        };
        let crun_pid = child.id();
        let machine = id.to_string();
        let proc_root = cfg.proc_root.clone();
        match (spec.tty, listener) {
            (Some(size), Some(listener)) => {
                let stderr_buf = Arc::new(std::sync::Mutex::new(Vec::new()));
                if let Some(mut err) = child.stderr.take() {
                    let buf = stderr_buf.clone();
                    tokio::spawn(async move {
                        use tokio::io::AsyncReadExt;
                        let mut chunk = [0u8; 4096];
                        while let Ok(n) = err.read(&mut chunk).await {
                            if n == 0 {
                                break;
                            }
                            buf.lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .extend_from_slice(&chunk[..n]);
                        }
                    });
                }
                let accepted = tokio::select! {
                    a = listener.accept() => Some(a),
                    _ = child.wait() => None,
                };
                let _ = std::fs::remove_file(&socket_path);
                let stream = match accepted {
                    Some(Ok((s, _))) => s,
                    Some(Err(e)) => {
                        return Err(io_err("accepting on console socket", &socket_path, e))
                    }
                    None => {
                        // Let the stderr reader finish.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        let err = text(&stderr_buf.lock().unwrap_or_else(|p| p.into_inner()));
                        return Err(NativeError::Command {
                            id: id.to_string(),
                            command: format!("{} exec --tty", cfg.runtime.display()),
                            status: "exited before handing over the pty".into(),
                            stderr: err,
                        });
                    }
                };
                let master = loop {
                    stream
                        .readable()
                        .await
                        .map_err(|e| io_err("reading console socket", &socket_path, e))?;
                    match stream.try_io(tokio::io::Interest::READABLE, || {
                        sys::recv_fd(stream.as_raw_fd())
                    }) {
                        Ok(fd) => break fd,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                        Err(e) => return Err(io_err("receiving the pty from", &socket_path, e)),
                    }
                };
                let pty = Pty::new(master)
                    .map_err(|e| NativeError::io(format!("machine {id}: pty"), e))?;
                pty.resize(size)
                    .map_err(|e| NativeError::io(format!("machine {id}: resizing pty"), e))?;
                let output = stdio::pty_output(machine.clone(), pty.handle());
                let stdin = Box::pin(pty.handle());
                let process = Arc::new(NativeExec {
                    machine,
                    child: tokio::sync::Mutex::new(child),
                    crun_pid,
                    status: tokio::sync::OnceCell::new(),
                    pid_file,
                    proc_root,
                    pty: Some(pty),
                });
                Ok(ExecHandle {
                    stdin,
                    output,
                    process,
                })
            }
            _ => {
                let missing = || NativeError::other(id, "exec pipes missing");
                let stdin = child.stdin.take().ok_or_else(missing)?;
                let stdout = child.stdout.take().ok_or_else(missing)?;
                let stderr = child.stderr.take().ok_or_else(missing)?;
                let output = stdio::pipe_output(machine.clone(), stdout, stderr);
                let process = Arc::new(NativeExec {
                    machine,
                    child: tokio::sync::Mutex::new(child),
                    crun_pid,
                    status: tokio::sync::OnceCell::new(),
                    pid_file,
                    proc_root,
                    pty: None,
                });
                Ok(ExecHandle {
                    stdin: Box::pin(stdin),
                    output,
                    process,
                })
            }
        }
    }
}

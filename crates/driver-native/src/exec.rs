//! Processes started in a machine: [`NativeDriver::exec_inner`] asks the machine's agent
//! (see `agent`) or, without one, runs `crun exec`; the rest is such a process's streams
//! (pipes, or a pty whose master crun hands over on a console socket so the platform holds
//! it), exit code and kill.

use crate::error::{io_err, NResult, NativeError};
use crate::layout::AGENT_SOCKET;
use crate::{agent, exec_wire, oci, sys, NativeDriver};
use async_trait::async_trait;
use futures::StreamExt;
use rnr_driver::{
    DriverError, ExecHandle, ExecProcess, ExecSpec, MachineStatus, OutputChunk, OutputStream,
    Result, TtySize,
};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Mutex, OnceCell};
use tokio_util::io::ReaderStream;

/// The master side of a pty, non-blocking, registered with the runtime.
pub struct Pty(Arc<AsyncFd<OwnedFd>>);

impl Pty {
    /// Wraps a master fd received from crun.
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        sys::set_nonblocking(&fd)?;
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
        sys::set_winsize(self.0.get_ref(), size.rows, size.cols)
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
        resize(&self.machine, self.pty.as_ref(), size)
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
        let pid = meta.init_pid.unwrap_or(0);
        let (uid, gid, home) = self.resolve_user(id, pid, spec.user.as_deref())?;
        let mut env = vec![
            oci::DEFAULT_PATH.to_string(),
            "TERM=xterm-256color".to_string(),
            format!("HOME={home}"),
        ];
        env.extend(spec.env.iter().map(|(k, v)| format!("{k}={v}")));
        // Through the agent when the machine has one (a millisecond), else `crun exec`.
        let socket = self.machine_dir(id).join(AGENT_SOCKET);
        let req = exec_wire::Request {
            argv: spec.argv.clone(),
            env: env.clone(),
            uid,
            gid,
            cwd: spec.workdir.clone(),
            tty: spec.tty.map(|t| [t.rows, t.cols]),
            // The agent's own `session attach ID …`: take the daemon's connection instead
            // of a relay process in between (one hop less per keystroke, per direction).
            session: match spec.argv.as_slice() {
                [agent, s, a, id, ..]
                    if agent == rnr_driver::AGENT_PATH
                        && s == "session"
                        && a == "attach"
                        && spec.tty.is_none()
                        && spec.user.is_none() =>
                {
                    Some(id.clone())
                }
                _ => None,
            },
        };
        if let Some(handle) = agent::exec(&socket, id, &req).await? {
            return Ok(handle);
        }
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
        let mut cmd = self.crun(sys::MountPlan::default(), false)?;
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
                let output = pty_output(machine.clone(), pty.handle());
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
                    passed_fds: None,
                })
            }
            _ => {
                let missing = || NativeError::other(id, "exec pipes missing");
                let stdin = child.stdin.take().ok_or_else(missing)?;
                let stdout = child.stdout.take().ok_or_else(missing)?;
                let stderr = child.stderr.take().ok_or_else(missing)?;
                let output = pipe_output(machine.clone(), stdout, stderr);
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
                    passed_fds: None,
                })
            }
        }
    }
}

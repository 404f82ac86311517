//! Pytest checks in the original system's format, run unmodified: `python3 -m pytest` on
//! the host with our plugin (`rnr_pytest.py`), whose fixture `s` runs commands in the
//! machine and whose hook reports each test's outcome and assertion message, both through
//! a private Unix socket served here. Pytest runs in a [`crate::sandbox`]: unprivileged,
//! in a cgroup, mount and network namespace of its own that reach only the machine.

use crate::exercise::Exercise;
use crate::sandbox::{Layout, Sandbox, SandboxConfig};
use crate::wire::{Check, Outcome, PytestCheck, Status};
use rnr_core::{ExecCommand, Platform};
use serde::Deserialize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const PLUGIN: &str = include_str!("rnr_pytest.py");

/// Longest request line the bridge reads (a report, a command).
const MAX_REQUEST: u64 = 1 << 20;
/// Most test reports kept from one run.
const MAX_REPORTS: usize = 1000;
/// What is kept of pytest's own output, for the message when it ran no test.
const OUTPUT_TAIL: usize = 16 << 10;

/// The Python that has pytest and requests: Debian's, not whatever a version manager put
/// first on PATH; `RNR_PYTHON` overrides.
fn python() -> String {
    std::env::var("RNR_PYTHON").unwrap_or_else(|_| {
        if std::path::Path::new("/usr/bin/python3").exists() {
            "/usr/bin/python3".into()
        } else {
            "python3".into()
        }
    })
}

#[derive(Deserialize)]
#[serde(untagged)]
enum BridgeRequest {
    Run {
        command: String,
        #[serde(default)]
        timeout: Option<f64>,
    },
    Report {
        report: Line,
    },
}

#[derive(Deserialize)]
struct Line {
    test: String,
    when: String,
    outcome: String,
    assertion: bool,
    message: String,
    duration_ms: u64,
}

type Reports = Arc<Mutex<Vec<Line>>>;

/// Serves `s.run` and the reports of one pytest process until dropped.
async fn bridge(
    listener: tokio::net::UnixListener,
    platform: Platform,
    machine: String,
    reports: Reports,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let platform = platform.clone();
        let machine = machine.clone();
        let reports = reports.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let mut read = BufReader::new(read.take(MAX_REQUEST));
            if read.read_line(&mut line).await.is_err() {
                return;
            }
            let answer = match serde_json::from_str::<BridgeRequest>(&line) {
                Err(e) => serde_json::json!({"error": format!("bad request: {e}")}),
                Ok(BridgeRequest::Report { report }) => {
                    let mut r = reports.lock().unwrap_or_else(|p| p.into_inner());
                    if r.len() < MAX_REPORTS {
                        r.push(report);
                    }
                    serde_json::json!({"ok": true})
                }
                Ok(BridgeRequest::Run { command, timeout }) => {
                    let cmd = ExecCommand {
                        argv: vec!["/bin/sh".into(), "-c".into(), command],
                        stdin: None,
                        env: Vec::new(),
                        user: None,
                        workdir: Some("/root".into()),
                        timeout: Duration::from_secs_f64(timeout.unwrap_or(60.0).clamp(1.0, 600.0)),
                    };
                    match platform.exec(&machine, cmd).await {
                        Ok(o) => serde_json::json!({
                            "exit_code": o.exit_code.unwrap_or(-1),
                            "stdout": String::from_utf8_lossy(&o.stdout),
                            "stderr": String::from_utf8_lossy(&o.stderr),
                        }),
                        Err(e) => serde_json::json!({"error": e.to_string()}),
                    }
                }
            };
            let _ = write.write_all(answer.to_string().as_bytes()).await;
        });
    }
}

fn errored(c: &Check, detail: String, started: Instant) -> Vec<Outcome> {
    vec![Outcome {
        name: c.name.clone(),
        status: Status::Errored,
        detail,
        message: None,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(0),
    }]
}

/// The last [`OUTPUT_TAIL`] bytes `r` gives before its end.
async fn tail(r: Option<impl tokio::io::AsyncRead + Unpin>) -> Vec<u8> {
    let Some(mut r) = r else {
        return Vec::new();
    };
    let mut kept = Vec::new();
    let mut buf = vec![0u8; 8192];
    while let Ok(n) = r.read(&mut buf).await {
        if n == 0 {
            break;
        }
        kept.extend_from_slice(&buf[..n]);
        if kept.len() > 2 * OUTPUT_TAIL {
            kept.drain(..kept.len() - OUTPUT_TAIL);
        }
    }
    if kept.len() > OUTPUT_TAIL {
        kept.drain(..kept.len() - OUTPUT_TAIL);
    }
    kept
}

/// Runs the pytest file of check `c`; one outcome per test, named `check/test`.
pub async fn run(
    platform: &Platform,
    sandbox: &SandboxConfig,
    machine: &str,
    address: Option<&str>,
    exercise: &Exercise,
    c: &Check,
    p: &PytestCheck,
) -> Vec<Outcome> {
    let started = Instant::now();
    let file = &p.file;
    let dir = match tempfile::Builder::new().prefix("rnr-pytest-").tempdir() {
        Ok(d) => d,
        Err(e) => return errored(c, format!("cannot make a temporary dir: {e}"), started),
    };
    // <dir> is rnr's alone; the sandbox sees <dir>/run, read-only, as /rnr.
    let run_dir = dir.path().join("run");
    let root = dir.path().join("root");
    let setup = || -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir(&run_dir)?;
        std::fs::create_dir(&root)?;
        std::fs::set_permissions(&run_dir, std::fs::Permissions::from_mode(0o755))?;
        std::fs::write(run_dir.join("rnr_pytest.py"), PLUGIN)?;
        let run = serde_json::json!({"ip": address.unwrap_or_default()});
        std::fs::write(run_dir.join("run.json"), run.to_string())
    };
    if let Err(e) = setup() {
        return errored(
            c,
            format!("cannot prepare {}: {e}", dir.path().display()),
            started,
        );
    }
    let socket = run_dir.join("bridge.sock");
    let listener = match tokio::net::UnixListener::bind(&socket) {
        Ok(l) => l,
        Err(e) => return errored(c, format!("cannot open {}: {e}", socket.display()), started),
    };
    {
        use std::os::unix::fs::PermissionsExt;
        // Connecting takes write permission; only the sandbox reaches the folder.
        let _ = std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o777));
    }
    let reports: Reports = Arc::default();
    let server = tokio::spawn(bridge(
        listener,
        platform.clone(),
        machine.to_string(),
        reports.clone(),
    ));
    let python = std::path::PathBuf::from(python());
    let mut cmd = tokio::process::Command::new(&python);
    cmd.env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("LANG", "C.UTF-8")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut args: Vec<std::ffi::OsString> = [
        "-m",
        "pytest",
        "-q",
        "-p",
        "rnr_pytest",
        "-p",
        "no:cacheprovider",
        "--rootdir",
    ]
    .iter()
    .map(Into::into)
    .collect();
    let jail = if sandbox.enabled {
        // The IPv4 address of the machine is the one place its network may go.
        let machine_ip = address.and_then(|a| a.parse().ok());
        let cfg = sandbox.clone();
        let made = tokio::task::spawn_blocking(move || Sandbox::create(&cfg, machine_ip)).await;
        let jail = match made {
            Ok(Ok(j)) => j,
            Ok(Err(e)) => return errored(c, format!("{e}"), started),
            Err(e) => return errored(c, format!("cannot make the check sandbox: {e}"), started),
        };
        let plan = jail.plan(&Layout {
            root: root.clone(),
            run_dir: run_dir.clone(),
            exercise_dir: exercise.dir.clone(),
            python: python.clone(),
            hide: sandbox.hide.clone(),
        });
        cmd.env("HOME", "/tmp")
            .env("TMPDIR", "/tmp")
            .env("PYTHONPATH", "/rnr");
        args.push("/rnr".into());
        args.push(std::path::Path::new("/exercise").join(file).into());
        // SAFETY: `enter` only makes system calls on what the plan holds, prepared here
        // before the fork; the plan lives in the closure, moved into the child.
        unsafe {
            cmd.pre_exec(move || plan.enter());
        }
        Some(jail)
    } else {
        cmd.env("HOME", dir.path())
            .env("PYTHONPATH", &run_dir)
            .current_dir(&run_dir);
        args.push(run_dir.clone().into());
        args.push(exercise.dir.join(file).into());
        None
    };
    cmd.args(&args);
    let timeout = c.timeout();
    let ran = async {
        let mut child = cmd.spawn()?;
        let (out, err) = (child.stdout.take(), child.stderr.take());
        let (status, out, err) = tokio::join!(child.wait(), tail(out), tail(err));
        Ok::<_, std::io::Error>((status?, out, err))
    };
    let out = tokio::time::timeout(timeout, ran).await;
    server.abort();
    if let Some(jail) = jail {
        // Whatever pytest left running (or all of it, on a timeout) dies with the cgroup.
        let _ = tokio::task::spawn_blocking(move || drop(jail)).await;
    }
    let (status, stdout, stderr) = match out {
        Err(_) => {
            return errored(
                c,
                format!("pytest did not finish within {timeout:?}"),
                started,
            )
        }
        Ok(Err(e)) => {
            let how = if sandbox.enabled {
                " in its sandbox"
            } else {
                ""
            };
            return errored(
                c,
                format!("cannot run {}{how}: {e}", python.display()),
                started,
            );
        }
        Ok(Ok(o)) => o,
    };
    let lines = std::mem::take(&mut *reports.lock().unwrap_or_else(|p| p.into_inner()));
    if lines.is_empty() {
        let text = String::from_utf8_lossy(&stdout);
        let tail: Vec<&str> = text.lines().rev().take(5).collect();
        return errored(
            c,
            format!(
                "pytest ran no tests from {file} (exit {:?}): {} {}",
                status.code(),
                tail.into_iter().rev().collect::<Vec<_>>().join(" | "),
                String::from_utf8_lossy(&stderr).trim()
            ),
            started,
        );
    }
    outcomes(c, lines)
}

/// One outcome per test, in file order; a failure outside the test body (a fixture, the
/// machine unreachable) means the check broke, not that the learner is wrong.
fn outcomes(c: &Check, lines: Vec<Line>) -> Vec<Outcome> {
    let mut order: Vec<String> = Vec::new();
    let mut outcomes: std::collections::HashMap<String, Outcome> = Default::default();
    for l in lines {
        if !order.contains(&l.test) {
            order.push(l.test.clone());
        }
        let status = match (l.when.as_str(), l.outcome.as_str()) {
            (_, "skipped") => Status::Skipped,
            ("call", "passed") => Status::Passed,
            ("call", "failed") if l.assertion => Status::Failed,
            _ => Status::Errored,
        };
        let o = outcomes.entry(l.test.clone()).or_insert(Outcome {
            name: format!("{}/{}", c.name, l.test),
            status,
            detail: String::new(),
            message: None,
            duration_ms: 0,
        });
        o.duration_ms += l.duration_ms;
        if o.status == Status::Passed || status == Status::Errored {
            o.status = status;
        }
        if !l.message.is_empty() {
            o.detail = format!("{} ({})", l.message, l.when);
            o.message = Some(l.message);
        }
    }
    order
        .into_iter()
        .filter_map(|t| outcomes.remove(&t))
        .collect()
}

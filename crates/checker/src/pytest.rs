//! Pytest checks in the original system's format, run unmodified: `python3 -m pytest` on
//! the host with our plugin (`rnr_pytest.py`), whose fixture `s` runs commands in the
//! machine through a private Unix socket served here, and whose hook writes each test's
//! outcome and assertion message for the report.

use crate::exercise::Exercise;
use crate::wire::{Check, Outcome, PytestCheck, Status};
use rnr_core::{ExecCommand, Platform};
use serde::Deserialize;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const PLUGIN: &str = include_str!("rnr_pytest.py");

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
struct BridgeRequest {
    command: String,
    #[serde(default)]
    timeout: Option<f64>,
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

/// Serves `s.run` for one pytest process until dropped.
async fn bridge(listener: tokio::net::UnixListener, platform: Platform, machine: String) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let platform = platform.clone();
        let machine = machine.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            if BufReader::new(read).read_line(&mut line).await.is_err() {
                return;
            }
            let answer = match serde_json::from_str::<BridgeRequest>(&line) {
                Err(e) => serde_json::json!({"error": format!("bad request: {e}")}),
                Ok(req) => {
                    let cmd = ExecCommand {
                        argv: vec!["/bin/sh".into(), "-c".into(), req.command],
                        stdin: None,
                        env: Vec::new(),
                        user: None,
                        workdir: Some("/root".into()),
                        timeout: Duration::from_secs_f64(
                            req.timeout.unwrap_or(60.0).clamp(1.0, 600.0),
                        ),
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

/// Runs the pytest file of check `c`; one outcome per test, named `check/test`.
pub async fn run(
    platform: &Platform,
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
    let socket = dir.path().join("bridge.sock");
    let results = dir.path().join("results.jsonl");
    if let Err(e) = std::fs::write(dir.path().join("rnr_pytest.py"), PLUGIN) {
        return errored(c, format!("cannot write the plugin: {e}"), started);
    }
    let listener = match tokio::net::UnixListener::bind(&socket) {
        Ok(l) => l,
        Err(e) => return errored(c, format!("cannot open {}: {e}", socket.display()), started),
    };
    let server = tokio::spawn(bridge(listener, platform.clone(), machine.to_string()));
    let test_file = exercise.dir.join(file);
    let mut cmd = tokio::process::Command::new(python());
    cmd.args([
        "-m",
        "pytest",
        "-q",
        "-p",
        "rnr_pytest",
        "-p",
        "no:cacheprovider",
    ])
    .arg("--rootdir")
    .arg(dir.path())
    .arg(&test_file)
    .current_dir(dir.path())
    .env("PYTHONPATH", dir.path())
    .env("PYTHONDONTWRITEBYTECODE", "1")
    .env("RNR_BRIDGE", &socket)
    .env("RNR_RESULTS", &results)
    .env("RNR_MACHINE_IP", address.unwrap_or_default())
    .stdin(std::process::Stdio::null())
    .kill_on_drop(true);
    let timeout = c.timeout();
    let out = tokio::time::timeout(timeout, cmd.output()).await;
    server.abort();
    let out = match out {
        Err(_) => {
            return errored(
                c,
                format!("pytest did not finish within {timeout:?}"),
                started,
            )
        }
        Ok(Err(e)) => return errored(c, format!("cannot run {}: {e}", python()), started),
        Ok(Ok(o)) => o,
    };
    let lines: Vec<Line> = std::fs::read_to_string(&results)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    if lines.is_empty() {
        let text = String::from_utf8_lossy(&out.stdout);
        let tail: Vec<&str> = text.lines().rev().take(5).collect();
        return errored(
            c,
            format!(
                "pytest ran no tests from {file} (exit {:?}): {} {}",
                out.status.code(),
                tail.into_iter().rev().collect::<Vec<_>>().join(" | "),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            started,
        );
    }
    // One outcome per test, in file order; a failure outside the test body (a fixture,
    // the machine unreachable) means the check broke, not that the learner is wrong.
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

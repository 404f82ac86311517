//! Runs an exercise's checks against one machine and says what is wrong.
//!
//! Declarative checks and scripts go to the in-machine agent in ONE request on its channel
//! (the agent evaluates the suite in `rnr-agent check`); HTTP checks are requests from the host to the
//! machine's address, as a learner's browser would make them; pytest files run on the host
//! with the `s` fixture of the original checker. Dependencies are applied last: a check
//! whose needs did not pass is skipped, whatever it found.

use crate::exercise::Exercise;
use crate::sandbox::SandboxConfig;
use crate::wire::{Check, CheckKind, HttpCheck, Outcome, RunsOn, Status, Suite};
use crate::{pytest, CheckerError, Result};
use bytes::Bytes;
use rnr_core::{ExecCommand, MachineState, Platform};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

const MAX_BODY: usize = 1 << 20;

/// One line of a report: what the learner sees for one check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    pub name: String,
    pub status: Status,
    /// The author's message (or a script's `FAIL:` line) when it did not pass.
    pub message: Option<String>,
    pub hint: Option<String>,
    /// What was observed, for authors and operators.
    pub detail: String,
    pub duration_ms: u64,
    pub points: u32,
}

/// Everything one run found.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    pub results: Vec<CheckResult>,
    /// Points of passed checks over all points, 0.0–1.0.
    pub score: f64,
    pub passed: usize,
    pub failed: usize,
    pub errored: usize,
    pub skipped: usize,
    pub duration_ms: u64,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl RunReport {
    fn finish(mut self, started: Instant) -> Self {
        self.recount();
        self.duration_ms = ms(started.elapsed());
        self
    }

    /// Recomputes the score and the counts from the results.
    pub(crate) fn recount(&mut self) {
        let total: u32 = self.results.iter().map(|r| r.points).sum();
        let earned: u32 = self
            .results
            .iter()
            .filter(|r| r.status == Status::Passed)
            .map(|r| r.points)
            .sum();
        self.score = if total == 0 {
            0.0
        } else {
            f64::from(earned) / f64::from(total)
        };
        let count = |s| self.results.iter().filter(|r| r.status == s).count();
        self.passed = count(Status::Passed);
        self.failed = count(Status::Failed);
        self.errored = count(Status::Errored);
        self.skipped = count(Status::Skipped);
    }

    pub fn all_passed(&self) -> bool {
        !self.results.is_empty() && self.results.iter().all(|r| r.status == Status::Passed)
    }
}

fn result(c: &Check, o: Outcome) -> CheckResult {
    let message = match o.status {
        Status::Passed => None,
        // A script's own FAIL line is more precise than the author's generic message.
        _ => o.message.or_else(|| c.message.clone()),
    };
    CheckResult {
        name: o.name,
        status: o.status,
        hint: (o.status != Status::Passed)
            .then(|| c.hint.clone())
            .flatten(),
        message,
        detail: o.detail,
        duration_ms: o.duration_ms,
        points: c.points,
    }
}

fn errored(c: &Check, detail: String) -> Outcome {
    Outcome {
        name: c.name.clone(),
        status: Status::Errored,
        detail,
        message: None,
        duration_ms: 0,
    }
}

/// Runs the agent on `checks` in one exec.
async fn agent_run(
    platform: &Platform,
    machine: &str,
    checks: &[Check],
    scripts: &BTreeMap<String, String>,
) -> Vec<Outcome> {
    if checks.is_empty() {
        return Vec::new();
    }
    let budget = checks
        .iter()
        .map(|c| c.timeout() + c.retry_window())
        .max()
        .unwrap_or_default()
        + Duration::from_secs(5);
    let suite = Suite {
        checks: checks.to_vec(),
        scripts: scripts.clone(),
    };
    let fail_all = |why: String| checks.iter().map(|c| errored(c, why.clone())).collect();
    let budget = budget.min(Duration::from_secs(600));
    let run = async {
        let channel = platform.agent(machine).await.map_err(|e| e.to_string())?;
        channel.check(&suite).await.map_err(|e| e.to_string())
    };
    match tokio::time::timeout(budget, run).await {
        Ok(Ok(outcomes)) => outcomes,
        Ok(Err(e)) => fail_all(format!("cannot run the checks in the machine: {e}")),
        Err(_) => fail_all(format!(
            "the agent did not finish within {:.0}s",
            budget.as_secs_f64()
        )),
    }
}

/// An HTTP request from the host to the machine, re-tried within the retry window.
async fn http(c: &Check, h: &HttpCheck, address: Option<&str>) -> Outcome {
    let started = Instant::now();
    let Some(address) = address else {
        return errored(c, "the machine has no address".into());
    };
    let port = h.port;
    let host = if address.contains(':') {
        format!("[{address}]")
    } else {
        address.to_string()
    };
    let url = format!("http://{host}:{port}{}", h.path);
    let window = c.retry_window();
    let client = reqwest::Client::builder()
        .timeout(c.timeout())
        .redirect(reqwest::redirect::Policy::none())
        .build();
    let (status, detail) = loop {
        let (status, detail) = match &client {
            Err(e) => (Status::Errored, format!("cannot build an HTTP client: {e}")),
            Ok(client) => http_once(client, h, &url).await,
        };
        if status == Status::Passed || started.elapsed() >= window {
            break (status, detail);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    Outcome {
        name: c.name.clone(),
        status,
        detail,
        message: None,
        duration_ms: ms(started.elapsed()),
    }
}

async fn http_once(client: &reqwest::Client, c: &HttpCheck, url: &str) -> (Status, String) {
    let method =
        reqwest::Method::from_bytes(c.method.as_str().as_bytes()).unwrap_or(reqwest::Method::GET);
    let resp = match client.request(method, url).send().await {
        Ok(r) => r,
        Err(e) => return (Status::Failed, format!("no answer from {url}: {e}")),
    };
    let code = resp.status().as_u16();
    let want = c.status;
    if code != want {
        return (
            Status::Failed,
            format!("{url} answered {code}, expected {want}"),
        );
    }
    if let Some(h) = &c.header {
        let value = resp
            .headers()
            .get(&h.name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        match regex::Regex::new(&h.pattern) {
            Ok(r) if r.is_match(&value) => {}
            Ok(_) => {
                return (
                    Status::Failed,
                    format!(
                        "header {} of {url} is {value:?}, not /{}/",
                        h.name, h.pattern
                    ),
                )
            }
            Err(e) => return (Status::Errored, format!("bad header regex: {e}")),
        }
    }
    // The machine is the learner's: read at most 1 MiB of whatever it sends.
    let mut resp = resp;
    let mut raw = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        raw.extend_from_slice(&chunk[..chunk.len().min(MAX_BODY - raw.len())]);
        if raw.len() >= MAX_BODY {
            break;
        }
    }
    let body = String::from_utf8_lossy(&raw);
    if let Some(p) = &c.body {
        match regex::Regex::new(&format!("(?m){p}")) {
            Ok(r) if r.is_match(&body) => {}
            Ok(_) => {
                let shown: String = body.chars().take(200).collect();
                return (
                    Status::Failed,
                    format!("body of {url} does not match /{p}/: {shown:?}"),
                );
            }
            Err(e) => return (Status::Errored, format!("bad body regex: {e}")),
        }
    }
    (Status::Passed, format!("{url} answered {code} as expected"))
}

/// Runs every check of `exercise` against machine `id`, pytest checks in `sandbox`.
pub async fn run(
    platform: &Platform,
    sandbox: &SandboxConfig,
    id: &str,
    exercise: &Exercise,
) -> Result<RunReport> {
    let started = Instant::now();
    let machine = platform
        .get(id)
        .await
        .map_err(|e| CheckerError::core(id, e))?;
    if machine.state != MachineState::Running {
        return Err(CheckerError::core(
            id,
            rnr_core::CoreError::NotRunning {
                id: id.to_string(),
                state: machine.state.as_str().to_string(),
            },
        ));
    }
    let checks = exercise.checks();
    let in_agent: Vec<Check> = checks
        .iter()
        .filter(|c| c.kind.runs_on() == RunsOn::Agent)
        .cloned()
        .collect();
    let mut status: HashMap<String, Status> = HashMap::new();
    let mut by_name: HashMap<String, Vec<CheckResult>> = HashMap::new();
    for o in agent_run(platform, id, &in_agent, &exercise.scripts).await {
        let c = in_agent
            .iter()
            .find(|c| c.name == o.name)
            .unwrap_or(&in_agent[0]);
        status.insert(c.name.clone(), o.status);
        by_name.insert(c.name.clone(), vec![result(c, o)]);
    }
    // Host-side checks in an order where needs come first, so they can be skipped unrun.
    let mut pending: Vec<&Check> = checks
        .iter()
        .filter(|c| c.kind.runs_on() == RunsOn::Host)
        .collect();
    while !pending.is_empty() {
        let ready = pending
            .iter()
            .position(|c| c.needs.iter().all(|n| status.contains_key(n)))
            .unwrap_or(0);
        let c = pending.remove(ready);
        let unmet = c
            .needs
            .iter()
            .find(|n| status.get(*n) != Some(&Status::Passed));
        let address = machine.address.as_deref();
        let results = match (unmet, &c.kind) {
            (Some(n), _) => vec![skipped(c, n)],
            (None, CheckKind::Http(h)) => vec![result(c, http(c, h, address).await)],
            (None, CheckKind::Pytest(p)) => {
                pytest::run(platform, sandbox, id, address, exercise, c, p)
                    .await
                    .into_iter()
                    .map(|o| result(c, o))
                    .collect()
            }
            (None, other) => {
                let why = format!("a {} check runs in the machine", other.name());
                vec![result(c, errored(c, why))]
            }
        };
        let overall = if results.iter().all(|r| r.status == Status::Passed) {
            Status::Passed
        } else if results.iter().any(|r| r.status == Status::Errored) {
            Status::Errored
        } else {
            Status::Failed
        };
        status.insert(c.name.clone(), overall);
        by_name.insert(c.name.clone(), results);
    }
    // Agent checks ran regardless of their needs (one exec for all); apply them now, in
    // passes until nothing changes, so chains of needs are skipped all the way down.
    loop {
        let mut changed = false;
        for c in checks {
            if status.get(&c.name) == Some(&Status::Skipped) {
                continue;
            }
            if let Some(n) = c
                .needs
                .iter()
                .find(|n| status.get(*n) != Some(&Status::Passed))
            {
                status.insert(c.name.clone(), Status::Skipped);
                by_name.insert(c.name.clone(), vec![skipped(c, n)]);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let report = RunReport {
        results: checks
            .iter()
            .flat_map(|c| by_name.remove(&c.name).unwrap_or_default())
            .collect(),
        ..Default::default()
    };
    Ok(report.finish(started))
}

fn skipped(c: &Check, need: &str) -> CheckResult {
    CheckResult {
        name: c.name.clone(),
        status: Status::Skipped,
        message: c.message.clone(),
        hint: c.hint.clone(),
        detail: format!("skipped: needs {need:?}, which did not pass"),
        duration_ms: 0,
        points: c.points,
    }
}

/// Runs `body` as a script (shebang or sh) as root in the machine.
pub async fn run_script(
    platform: &Platform,
    id: &str,
    body: &str,
    timeout: Duration,
) -> Result<rnr_driver::ExecOutcome> {
    let cmd = ExecCommand {
        argv: vec![
            "/bin/sh".into(),
            "-c".into(),
            "f=$(mktemp) && cat > \"$f\" && chmod 700 \"$f\" && \"$f\"; rc=$?; rm -f \"$f\"; exit $rc"
                .into(),
        ],
        stdin: Some(Bytes::from(body.to_string())),
        env: Vec::new(),
        user: None,
        workdir: Some("/root".into()),
        timeout,
    };
    platform
        .exec(id, cmd)
        .await
        .map_err(|e| CheckerError::core(id, e))
}

/// Places the exercise's files and runs its setup script in a fresh machine.
pub async fn setup(platform: &Platform, id: &str, exercise: &Exercise) -> Result<()> {
    for (path, content, mode) in &exercise.files {
        let cmd = ExecCommand {
            argv: vec![
                "/bin/sh".into(),
                "-c".into(),
                "mkdir -p \"$(dirname \"$1\")\" && cat > \"$1\" && chmod \"$2\" \"$1\"".into(),
                "sh".into(),
                path.clone(),
                format!("{mode:o}"),
            ],
            stdin: Some(Bytes::from(content.clone())),
            env: Vec::new(),
            user: None,
            workdir: None,
            timeout: Duration::from_secs(30),
        };
        let out = platform
            .exec(id, cmd)
            .await
            .map_err(|e| CheckerError::core(id, e))?;
        if out.exit_code != Some(0) {
            return Err(CheckerError::Setup {
                id: id.to_string(),
                message: format!(
                    "cannot place {path}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
    }
    if let Some(body) = &exercise.setup {
        let out = run_script(platform, id, body, Duration::from_secs(300)).await?;
        if out.exit_code != Some(0) {
            return Err(CheckerError::Setup {
                id: id.to_string(),
                message: format!(
                    "the setup script of {} exited with {:?}: {}",
                    exercise.name,
                    out.exit_code,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
    }
    Ok(())
}

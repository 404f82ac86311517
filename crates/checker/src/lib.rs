//! The checker (Zoe): exercises as folders, their validation, and check runs against
//! machines — queued persistently, run by a few workers, reported by webhook, and re-run by
//! themselves while a learner works (live checking).
//!
//! The declarative checks run inside the machine in one exec of the agent; see
//! [`engine`]. The queue lives in the store, so a burst of requests is never lost and
//! runs interrupted by a crash are taken up again at the next start.

pub mod engine;
pub mod exercise;
mod live;
mod pytest;
pub mod sandbox;
pub mod webhook;

/// The check wire format, shared with the agent (one definition for both sides).
pub use rnr_agent_proto::check as wire;

pub use engine::{CheckResult, RunReport};
pub use exercise::{Diagnostic, Exercise};
pub use live::LiveEvent;
pub use rnr_store::checks::{CheckRunRow, CheckRunState, CheckTrigger, WebhookState};
pub use wire::Status;

use rnr_core::{CoreError, CreateMachine, LimitsRequest, Machine, Platform};
use rnr_store::checks::{CheckRuns, Enqueued, Finished, NewCheckRun};
use rnr_store::StoreError;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, Notify};
use tokio_util::sync::CancellationToken;

/// Checker errors; each names the exercise, machine, run or file concerned.
#[derive(Debug, thiserror::Error)]
pub enum CheckerError {
    #[error("exercise {name:?} not found in {dir}")]
    ExerciseNotFound { name: String, dir: PathBuf },
    #[error("no exercises_dir is configured, so exercise {0:?} cannot be found")]
    NoExercisesDir(String),
    #[error("exercise {}: {}", dir.display(), diagnostics.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid {
        dir: PathBuf,
        diagnostics: Vec<Diagnostic>,
    },
    #[error("machine {id} is not bound to an exercise; name one in the request")]
    NoExercise { id: String },
    #[error("machine {id}: setup failed: {message}")]
    Setup { id: String, message: String },
    #[error("check run {0} not found")]
    RunNotFound(String),
    #[error("invalid {field}: {message}")]
    InvalidRequest { field: String, message: String },
    #[error("machine {id}: {source}")]
    Core {
        id: String,
        #[source]
        source: CoreError,
    },
    #[error("check sandbox: {what}: {source}")]
    Sandbox {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl CheckerError {
    pub(crate) fn core(id: &str, source: CoreError) -> Self {
        Self::Core {
            id: id.to_string(),
            source,
        }
    }

    fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::InvalidRequest {
            field: field.into(),
            message: message.into(),
        }
    }
}

pub type Result<T, E = CheckerError> = std::result::Result<T, E>;

/// How the checker runs.
#[derive(Debug, Clone)]
pub struct CheckerConfig {
    /// Where exercise folders live (`<dir>/<name>/exercise.toml`).
    pub exercises_dir: Option<PathBuf>,
    /// Check runs executed at once.
    pub workers: usize,
    /// Key for the HMAC-SHA256 signature of webhook bodies; webhooks need one.
    pub webhook_secret: Option<String>,
    /// Destinations webhooks may reach although they are not public addresses (an LMS on
    /// the operator's own network); see [`webhook::forbidden`].
    pub webhook_allow: Vec<ipnet::IpNet>,
    /// How pytest checks are confined.
    pub sandbox: sandbox::SandboxConfig,
    /// Quiet time after terminal activity before a live run.
    pub debounce: Duration,
    /// Finished runs older than this are deleted (each machine's latest is kept); `None`
    /// keeps every run.
    pub retention: Option<Duration>,
    /// How often the retention task looks for old runs.
    pub retention_interval: Duration,
    /// Most times a run is taken up (a restart interrupting it, or the machine's driver or
    /// the store failing it, counts one); past it the run ends `errored`, saying so.
    pub max_attempts: u32,
    /// Wait before a run that failed for want of its driver or store is tried again.
    pub retry_delay: Duration,
}

impl Default for CheckerConfig {
    fn default() -> Self {
        Self {
            exercises_dir: None,
            workers: 4,
            webhook_secret: None,
            webhook_allow: Vec::new(),
            sandbox: sandbox::SandboxConfig::default(),
            debounce: Duration::from_millis(1500),
            retention: Some(Duration::from_secs(30 * 86_400)),
            retention_interval: Duration::from_secs(3600),
            max_attempts: 3,
            retry_delay: Duration::from_secs(1),
        }
    }
}

/// Whether a run that failed this way may succeed if tried again: the machine's driver or
/// the store failed it, not the exercise or the machine's state.
fn worth_retrying(e: &CheckerError) -> bool {
    match e {
        CheckerError::Store(_) => true,
        CheckerError::Core { source, .. } => {
            matches!(source, CoreError::Driver { .. } | CoreError::Store(_))
        }
        _ => false,
    }
}

struct Inner {
    platform: Platform,
    /// The run queue: checker state, kept apart from machines (those are the platform's).
    runs: CheckRuns,
    config: CheckerConfig,
    wake: Notify,
    subscribers: Mutex<HashMap<String, broadcast::Sender<LiveEvent>>>,
    /// Last statuses pushed per machine, to push only changes.
    pushed: Mutex<HashMap<String, Vec<(String, Status)>>>,
    /// Last terminal activity per machine not yet answered by a live run.
    activity: Mutex<HashMap<String, tokio::time::Instant>>,
}

/// The checker service; cheap to clone.
#[derive(Clone)]
pub struct Checker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Checker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checker")
            .field("config", &self.inner.config)
            .finish()
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

impl Checker {
    /// The checker of `platform`'s machines, keeping its queue in `runs`.
    pub fn new(platform: Platform, runs: CheckRuns, config: CheckerConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                platform,
                runs,
                config,
                wake: Notify::new(),
                subscribers: Mutex::default(),
                pushed: Mutex::default(),
                activity: Mutex::default(),
            }),
        }
    }

    pub fn platform(&self) -> &Platform {
        &self.inner.platform
    }

    /// Where exercise folders live, if configured.
    pub fn exercises_dir(&self) -> Option<&std::path::Path> {
        self.inner.config.exercises_dir.as_deref()
    }

    /// Loads exercise `name` from the exercises dir (fresh each time, so authors' edits
    /// apply to the next run).
    pub fn exercise(&self, name: &str) -> Result<Exercise> {
        let root = self
            .inner
            .config
            .exercises_dir
            .as_ref()
            .ok_or_else(|| CheckerError::NoExercisesDir(name.to_string()))?;
        let dir = root.join(name);
        if !valid_name(name) || !dir.join(exercise::MANIFEST).is_file() {
            return Err(CheckerError::ExerciseNotFound {
                name: name.to_string(),
                dir: root.clone(),
            });
        }
        Exercise::load(&dir).map_err(|diagnostics| CheckerError::Invalid { dir, diagnostics })
    }

    /// Creates a machine for `exercise`: image, limits and lifetime from its manifest
    /// unless the request sets them; its files and setup are in place before it returns.
    pub async fn create_machine(&self, mut req: CreateMachine, exercise: &str) -> Result<Machine> {
        let ex = self.exercise(exercise)?;
        let m = &ex.manifest;
        req.kind = req.kind.or(m.kind);
        req.image = req.image.or_else(|| m.image.clone());
        req.ttl_seconds = req
            .ttl_seconds
            .or_else(|| m.time_limit_minutes.map(|t| t.saturating_mul(60)));
        req.limits = LimitsRequest {
            memory_mib: req.limits.memory_mib.or(m.limits.memory_mib),
            cpu_millis: req.limits.cpu_millis.or(m.limits.cpu_millis),
            pids: req.limits.pids.or(m.limits.pids),
        };
        let platform = &self.inner.platform;
        // Until its setup is done a restart removes it as half-built.
        req.setup_follows = true;
        let machine = platform
            .create(req)
            .await
            .map_err(|e| CheckerError::core("-", e))?;
        let id = machine.id.clone();
        let ready = async {
            platform
                .set_exercise(&id, &ex.name)
                .await
                .map_err(|e| CheckerError::core(&id, e))?;
            rnr_driver::fault::point("create:setup");
            engine::setup(platform, &id, &ex).await?;
            platform
                .mark_ready(&id)
                .await
                .map_err(|e| CheckerError::core(&id, e))
        };
        if let Err(e) = ready.await {
            // A machine whose setup failed is of no use to a learner.
            let _ = platform.delete(&id).await;
            return Err(e);
        }
        tracing::info!(machine = %id, exercise = %ex.name, "machine ready for its exercise");
        platform
            .get(&id)
            .await
            .map_err(|e| CheckerError::core(&id, e))
    }

    /// Whom machine `m`'s runs are for in the queue's turns: its owner, else the API key
    /// that made it.
    fn queue_owner(m: &Machine) -> String {
        m.owner
            .clone()
            .or_else(|| m.api_key_id.as_ref().map(|k| format!("key:{k}")))
            .unwrap_or_default()
    }

    /// Queues a check run of `exercise` (or the machine's own) against `machine_id`.
    pub async fn enqueue(
        &self,
        machine_id: &str,
        exercise: Option<&str>,
        webhook_url: Option<&str>,
    ) -> Result<String> {
        self.queue(machine_id, exercise, webhook_url, CheckTrigger::Api, &[])
            .await
    }

    /// A learner's Check: queues a run of the machine's exercise unless one (the
    /// learner's, or a live one) is queued already, which is then the answer. However
    /// often a learner presses, a machine has at most one such run waiting.
    pub async fn enqueue_for_learner(&self, machine_id: &str) -> Result<String> {
        self.queue(
            machine_id,
            None,
            None,
            CheckTrigger::Learner,
            &[CheckTrigger::Learner, CheckTrigger::Live],
        )
        .await
    }

    async fn queue(
        &self,
        machine_id: &str,
        exercise: Option<&str>,
        webhook_url: Option<&str>,
        trigger: CheckTrigger,
        join: &[CheckTrigger],
    ) -> Result<String> {
        let platform = &self.inner.platform;
        let machine = platform
            .get(machine_id)
            .await
            .map_err(|e| CheckerError::core(machine_id, e))?;
        let name = match exercise {
            Some(n) => n.to_string(),
            None => platform
                .exercise_of(machine_id)
                .await
                .map_err(|e| CheckerError::core(machine_id, e))?
                .ok_or_else(|| CheckerError::NoExercise {
                    id: machine_id.to_string(),
                })?,
        };
        // Refused now rather than failing in the queue later.
        self.exercise(&name)?;
        if let Some(url) = webhook_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(CheckerError::invalid(
                    "webhook_url",
                    format!("{url:?} is not an http(s) URL"),
                ));
            }
            if self.inner.config.webhook_secret.is_none() {
                return Err(CheckerError::invalid(
                    "webhook_url",
                    "webhooks are disabled: the platform has no webhook_secret configured",
                ));
            }
            webhook::check_destination(url, &self.inner.config.webhook_allow)
                .await
                .map_err(|m| CheckerError::invalid("webhook_url", m))?;
        }
        let id = format!("c-{}", rnr_core::random_id(12));
        let owner = Self::queue_owner(&machine);
        let queued = self
            .inner
            .runs
            .enqueue(&NewCheckRun {
                id: &id,
                machine_id,
                owner: &owner,
                exercise: &name,
                trigger,
                webhook_url,
                now_ms: rnr_core::now_ms(),
                join,
            })
            .await?;
        match queued {
            Enqueued::New => {
                self.inner.wake.notify_one();
                Ok(id)
            }
            Enqueued::Joined(existing) => Ok(existing),
        }
    }

    /// Deletes finished runs past the retention (each machine's latest stays); returns
    /// how many.
    pub async fn prune_once(&self) -> Result<u64> {
        let Some(keep) = self.inner.config.retention else {
            return Ok(0);
        };
        let keep_ms = i64::try_from(keep.as_millis()).unwrap_or(i64::MAX);
        let n = self
            .inner
            .runs
            .prune(rnr_core::now_ms().saturating_sub(keep_ms))
            .await?;
        if n > 0 {
            self.inner
                .platform
                .metrics()
                .check_runs_deleted
                .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(
                deleted = n,
                days = keep.as_secs() / 86_400,
                "old check runs deleted"
            );
        }
        Ok(n)
    }

    async fn retention(&self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.inner.config.retention_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {
                    if let Err(e) = self.prune_once().await {
                        tracing::warn!(error = %e, "cannot delete old check runs");
                    }
                }
            }
        }
    }

    pub async fn get_run(&self, id: &str) -> Result<CheckRunRow> {
        self.inner
            .runs
            .get(id)
            .await?
            .ok_or_else(|| CheckerError::RunNotFound(id.to_string()))
    }

    /// Machine `machine_id`'s most recent finished run, if it has one.
    pub async fn last_run(&self, machine_id: &str) -> Result<Option<CheckRunRow>> {
        Ok(self.inner.runs.last_finished(machine_id).await?)
    }

    /// Machine `machine_id`'s runs, newest first, at most `limit`.
    pub async fn history(&self, machine_id: &str, limit: i64) -> Result<Vec<CheckRunRow>> {
        Ok(self.inner.runs.of_machine(machine_id, limit).await?)
    }

    /// Starts the workers, the webhook sender and the live-check debouncer; runs left
    /// `running` by a crash are queued again first.
    pub async fn start(
        &self,
        shutdown: CancellationToken,
    ) -> Result<Vec<tokio::task::JoinHandle<()>>> {
        let max = i64::from(self.inner.config.max_attempts.max(1));
        let (requeued, given_up) = self
            .inner
            .runs
            .requeue_interrupted(max, rnr_core::now_ms())
            .await?;
        if requeued > 0 {
            tracing::warn!(
                requeued,
                "check runs interrupted by a restart were queued again"
            );
        }
        if given_up > 0 {
            tracing::warn!(
                given_up,
                max_attempts = max,
                "check runs interrupted by restarts on each attempt were given up (errored)"
            );
        }
        let sandbox = self.inner.config.sandbox.clone();
        // SAFETY: geteuid(2) cannot fail.
        if sandbox.enabled && unsafe { libc::geteuid() } == 0 {
            match tokio::task::spawn_blocking(move || sandbox::sweep(&sandbox)).await {
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => tracing::warn!(rules = n, "deleted rules of check sandboxes gone"),
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot sweep old check sandbox rules"),
                Err(e) => tracing::warn!(error = %e, "cannot sweep old check sandbox rules"),
            }
        }
        let mut tasks = Vec::new();
        for _ in 0..self.inner.config.workers.max(1) {
            let me = self.clone();
            let token = shutdown.clone();
            tasks.push(tokio::spawn(async move { me.worker(token).await }));
        }
        let me = self.clone();
        let token = shutdown.clone();
        tasks.push(tokio::spawn(async move { webhook::run(me, token).await }));
        if self.inner.config.retention.is_some() {
            let me = self.clone();
            let token = shutdown.clone();
            tasks.push(tokio::spawn(async move { me.retention(token).await }));
        }
        let me = self.clone();
        tasks.push(tokio::spawn(
            async move { live::debouncer(me, shutdown).await },
        ));
        Ok(tasks)
    }

    async fn worker(&self, shutdown: CancellationToken) {
        let runs = &self.inner.runs;
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let claimed = match runs.claim(rnr_core::now_ms()).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot claim a check run");
                    None
                }
            };
            let Some(run) = claimed else {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = self.inner.wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
                continue;
            };
            rnr_driver::fault::point("check:claimed");
            // A shutdown mid-run leaves it `running`; the next start queues it again.
            let outcome = tokio::select! {
                _ = shutdown.cancelled() => return,
                o = self.execute(&run) => o,
            };
            let max = i64::from(self.inner.config.max_attempts.max(1));
            if let Err(e) = &outcome {
                if worth_retrying(e) && run.attempts < max {
                    let delay = self.inner.config.retry_delay;
                    let at = rnr_core::now_ms()
                        .saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
                    tracing::warn!(run = %run.id, machine = %run.machine_id, attempt = run.attempts, max_attempts = max, error = %e, "check run failed; it is tried again");
                    if let Err(e) = runs.retry(&run.id, &e.to_string(), at).await {
                        tracing::warn!(run = %run.id, error = %e, "cannot queue a check run again");
                    }
                    continue;
                }
            }
            if let Ok(r) = &outcome {
                let m = self.inner.platform.metrics();
                m.checks_run
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                m.checks_passed
                    .fetch_add(r.passed as u64, std::sync::atomic::Ordering::Relaxed);
                m.checks_failed
                    .fetch_add(r.failed as u64, std::sync::atomic::Ordering::Relaxed);
            }
            let text = match &outcome {
                Ok(r) => {
                    serde_json::to_string(r).map_err(|e| format!("cannot encode the report: {e}"))
                }
                Err(e) if worth_retrying(e) => Err(format!(
                    "{e} (given up after {} attempts, the most [checker] max_attempts allows)",
                    run.attempts
                )),
                Err(e) => Err(e.to_string()),
            };
            let finished = match &text {
                Ok(report) => Finished::Done { report },
                Err(error) => Finished::Errored { error },
            };
            match runs.finish(&run.id, finished, rnr_core::now_ms()).await {
                Ok(_) => {
                    let state = if text.is_ok() { "done" } else { "errored" };
                    tracing::info!(run = %run.id, machine = %run.machine_id, state, "check run finished");
                    self.inner.wake.notify_one();
                }
                Err(e) => tracing::warn!(run = %run.id, error = %e, "cannot record a check run"),
            }
        }
    }

    /// Runs the checks of one claimed run, applying sticky passes and telling subscribers.
    async fn execute(&self, run: &CheckRunRow) -> Result<RunReport> {
        let ex = self.exercise(&run.exercise)?;
        let platform = &self.inner.platform;
        let mut report =
            engine::run(platform, &self.inner.config.sandbox, &run.machine_id, &ex).await?;
        if ex.manifest.sticky {
            live::apply_sticky(&self.inner.runs, &run.machine_id, &mut report).await?;
        }
        self.publish(&run.machine_id, &run.id, &report);
        Ok(report)
    }
}

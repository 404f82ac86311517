//! Live checking: terminal activity (reported by the gateway through
//! [`Checker::notify_activity`]) triggers a run once the learner pauses; subscribers
//! (the SSE stream) hear about results only when a check's status changed. Exercises may
//! declare that a passed task stays passed (`sticky = true`).

use crate::wire::Status;
use crate::{Checker, Result, RunReport};
use rnr_store::checks::{CheckRuns, CheckTrigger, Enqueued, NewCheckRun};
use serde::Serialize;
use std::time::Duration;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// A run's results, pushed to a machine's subscribers.
#[derive(Debug, Clone, Serialize)]
pub struct LiveEvent {
    pub machine_id: String,
    pub run_id: String,
    pub report: RunReport,
}

impl Checker {
    /// Tells the checker the learner did something on `machine_id` (typed, ran a
    /// command). Cheap; call it on every burst of terminal input. A run follows once the
    /// machine has been quiet for the debounce time, if it is bound to an exercise.
    pub fn notify_activity(&self, machine_id: &str) {
        if let Ok(mut a) = self.inner.activity.lock() {
            a.insert(machine_id.to_string(), tokio::time::Instant::now());
        }
    }

    /// Results of every later run of `machine_id` that changed a check's status.
    pub fn subscribe(&self, machine_id: &str) -> broadcast::Receiver<LiveEvent> {
        let mut subs = self
            .inner
            .subscribers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        subs.entry(machine_id.to_string())
            .or_insert_with(|| broadcast::channel(16).0)
            .subscribe()
    }

    pub(crate) fn publish(&self, machine_id: &str, run_id: &str, report: &RunReport) {
        let statuses: Vec<(String, Status)> = report
            .results
            .iter()
            .map(|r| (r.name.clone(), r.status))
            .collect();
        {
            let mut pushed = self
                .inner
                .pushed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if pushed.get(machine_id) == Some(&statuses) {
                return;
            }
            pushed.insert(machine_id.to_string(), statuses);
        }
        let mut subs = self
            .inner
            .subscribers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(tx) = subs.get(machine_id) {
            let event = LiveEvent {
                machine_id: machine_id.to_string(),
                run_id: run_id.to_string(),
                report: report.clone(),
            };
            if tx.send(event).is_err() {
                // Nobody listens any more.
                subs.remove(machine_id);
            }
        }
    }
}

/// Queues a live run for every machine that has been quiet for the debounce time.
pub(crate) async fn debouncer(checker: Checker, shutdown: CancellationToken) {
    let debounce = checker.inner.config.debounce;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = tokio::time::Instant::now();
        let due: Vec<String> = {
            let mut a = checker
                .inner
                .activity
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let due: Vec<String> = a
                .iter()
                .filter(|(_, t)| now.duration_since(**t) >= debounce)
                .map(|(m, _)| m.clone())
                .collect();
            for m in &due {
                a.remove(m);
            }
            due
        };
        let platform = checker.platform();
        for machine in due {
            let exercise = match platform.exercise_of(&machine).await {
                Ok(Some(e)) => e,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(machine = %machine, error = %e, "live check: cannot look up the exercise");
                    continue;
                }
            };
            let owner = match platform.get(&machine).await {
                Ok(m) => Checker::queue_owner(&m),
                Err(e) => {
                    tracing::warn!(machine = %machine, error = %e, "live check: cannot look up the machine");
                    continue;
                }
            };
            let id = format!("c-{}", rnr_core::random_id(12));
            // Coalesced: while a live run or a learner's press waits in the queue, more
            // activity adds nothing.
            match checker
                .inner
                .runs
                .enqueue(&NewCheckRun {
                    id: &id,
                    machine_id: &machine,
                    owner: &owner,
                    exercise: &exercise,
                    trigger: CheckTrigger::Live,
                    webhook_url: None,
                    now_ms: rnr_core::now_ms(),
                    join: &[CheckTrigger::Live, CheckTrigger::Learner],
                })
                .await
            {
                Ok(Enqueued::New) => checker.inner.wake.notify_one(),
                Ok(Enqueued::Joined(_)) => {}
                Err(e) => {
                    tracing::warn!(machine = %machine, error = %e, "live check: cannot queue")
                }
            }
        }
    }
}

/// Turns failures of checks that passed before into passes, and remembers new passes.
pub(crate) async fn apply_sticky(
    runs: &CheckRuns,
    machine: &str,
    report: &mut RunReport,
) -> Result<()> {
    let before = runs.sticky_passes(machine).await?;
    let now = rnr_core::now_ms();
    for r in &mut report.results {
        if r.status == Status::Passed {
            if !before.contains(&r.name) {
                runs.add_sticky_pass(machine, &r.name, now).await?;
            }
        } else if before.contains(&r.name) {
            r.status = Status::Passed;
            r.detail = format!("passed earlier (stays passed); now: {}", r.detail);
            r.message = None;
            r.hint = None;
        }
    }
    report.recount();
    Ok(())
}

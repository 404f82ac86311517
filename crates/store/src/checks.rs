//! Check runs as a persistent queue, their webhooks, sticky passes, and the exercise a
//! machine was made for. Every state change is one conditional UPDATE, so concurrent
//! workers never claim the same run and a result is recorded at most once.
//!
//! The queue is the checker's own state: it reaches it through [`CheckRuns`], a handle
//! that holds check runs only, never machines (those go through the platform core).

use crate::{q, Result, Store};
use serde::{Deserialize, Serialize};
use sqlx::SqlitePool;

/// Where a check run is: `queued` → `running` → `done` or `errored` (the run itself could
/// not be carried out). Stored and sent as these snake_case words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(rename_all = "snake_case")]
pub enum CheckRunState {
    Queued,
    Running,
    Done,
    Errored,
}

impl CheckRunState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Done => "done",
            Self::Errored => "errored",
        }
    }

    /// Whether the run is over (its result, or why it has none, is recorded).
    pub fn finished(self) -> bool {
        matches!(self, Self::Done | Self::Errored)
    }
}

/// What asked for a check run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(rename_all = "snake_case")]
pub enum CheckTrigger {
    /// A request (the API, or the learner's Check button).
    Api,
    /// Live checking, after terminal activity.
    Live,
    /// A learner's Check button: at most one queued per machine, a second press joins it.
    Learner,
}

impl CheckTrigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::Live => "live",
            Self::Learner => "learner",
        }
    }
}

/// Where a run's webhook delivery is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(rename_all = "snake_case")]
pub enum WebhookState {
    /// To be (re)tried at its next attempt time.
    Pending,
    Delivered,
    /// Given up after the most attempts.
    Failed,
}

impl WebhookState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }
}

/// A check run as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CheckRunRow {
    pub id: String,
    pub machine_id: String,
    /// Whom the run is for (the queue serves owners in turn).
    pub owner: String,
    pub exercise: String,
    pub state: CheckRunState,
    pub trigger: CheckTrigger,
    pub attempts: i64,
    /// The report as JSON, once done.
    pub report: Option<String>,
    pub error: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub webhook_url: Option<String>,
    pub webhook_state: Option<WebhookState>,
    pub webhook_attempts: i64,
    pub webhook_error: Option<String>,
}

/// A run to queue.
#[derive(Debug, Clone, Copy)]
pub struct NewCheckRun<'a> {
    pub id: &'a str,
    pub machine_id: &'a str,
    /// Whom it is for: the machine's owner, else the API key that made the machine.
    pub owner: &'a str,
    pub exercise: &'a str,
    pub trigger: CheckTrigger,
    pub webhook_url: Option<&'a str>,
    pub now_ms: i64,
    /// When the machine already has a queued run of one of these triggers, nothing is
    /// queued and that run is the answer (live checking and the learner's Check button
    /// never pile up runs).
    pub join: &'a [CheckTrigger],
}

/// What [`CheckRuns::enqueue`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    /// The run was queued under its own id.
    New,
    /// A queued run of the machine was there already: this one.
    Joined(String),
}

const RUN_COLUMNS: &str = "id, machine_id, owner, exercise, state, trigger, attempts, report, error, \
     created_at, started_at, finished_at, webhook_url, webhook_state, webhook_attempts, webhook_error";

/// The checker's handle on its queue: check runs, their webhooks and sticky passes, in the
/// same database as the machines but with no way to touch them. Cheap to clone.
#[derive(Debug, Clone)]
pub struct CheckRuns {
    pool: SqlitePool,
}

impl Store {
    /// The check-run queue of this database.
    pub fn check_runs(&self) -> CheckRuns {
        CheckRuns {
            pool: self.pool.clone(),
        }
    }

    /// Binds a machine to the exercise it was made for.
    pub async fn set_machine_exercise(&self, machine_id: &str, exercise: &str) -> Result<()> {
        sqlx::query("UPDATE machines SET exercise = ? WHERE id = ?")
            .bind(exercise)
            .bind(machine_id)
            .execute(&self.pool)
            .await
            .map_err(q(format!("bind {machine_id} to exercise {exercise}")))?;
        Ok(())
    }

    pub async fn machine_exercise(&self, machine_id: &str) -> Result<Option<String>> {
        let v: Option<Option<String>> =
            sqlx::query_scalar("SELECT exercise FROM machines WHERE id = ?")
                .bind(machine_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(q(format!("exercise of {machine_id}")))?;
        Ok(v.flatten())
    }
}

impl CheckRuns {
    /// Queues a run, unless the machine has a queued run of a trigger in `join` (then
    /// that run is returned). Atomic: two presses at once queue one run.
    pub async fn enqueue(&self, run: &NewCheckRun<'_>) -> Result<Enqueued> {
        let NewCheckRun {
            id,
            machine_id,
            owner,
            exercise,
            trigger,
            webhook_url,
            now_ms,
            join,
        } = *run;
        let marks = vec!["?"; join.len()].join(", ");
        let unless = if join.is_empty() {
            String::new()
        } else {
            format!(
                " WHERE NOT EXISTS (SELECT 1 FROM check_runs WHERE machine_id = ? \
                 AND state = ? AND trigger IN ({marks}))"
            )
        };
        let insert = format!(
            "INSERT INTO check_runs (id, machine_id, owner, exercise, state, trigger, webhook_url, \
             created_at) SELECT ?, ?, ?, ?, ?, ?, ?, ?{unless}"
        );
        let pending = format!(
            "SELECT id FROM check_runs WHERE machine_id = ? AND state = ? AND trigger IN ({marks}) \
             ORDER BY seq LIMIT 1"
        );
        // A joined run can be claimed between the two statements; then queue anew.
        for _ in 0..8 {
            let mut query = sqlx::query(&insert)
                .bind(id)
                .bind(machine_id)
                .bind(owner)
                .bind(exercise)
                .bind(CheckRunState::Queued)
                .bind(trigger)
                .bind(webhook_url)
                .bind(now_ms);
            if !join.is_empty() {
                query = query.bind(machine_id).bind(CheckRunState::Queued);
                for t in join {
                    query = query.bind(*t);
                }
            }
            let r = query
                .execute(&self.pool)
                .await
                .map_err(q(format!("queue check run {id}")))?;
            if r.rows_affected() == 1 {
                return Ok(Enqueued::New);
            }
            let mut query = sqlx::query_scalar::<_, String>(&pending)
                .bind(machine_id)
                .bind(CheckRunState::Queued);
            for t in join {
                query = query.bind(*t);
            }
            if let Some(existing) = query
                .fetch_optional(&self.pool)
                .await
                .map_err(q(format!("queued check run of {machine_id}")))?
            {
                return Ok(Enqueued::Joined(existing));
            }
        }
        Err(crate::StoreError::Corrupt {
            id: machine_id.to_string(),
            message: "its queued check run kept vanishing while a new one was queued".into(),
        })
    }

    /// Takes a queued run (due at `now_ms`: retries wait their delay) and marks it running;
    /// `None` when none is due. Owners are
    /// served in turn: the one served longest ago (or never) goes first, and of its runs
    /// the oldest, so one owner's many runs cannot starve another's one.
    pub async fn claim(&self, now_ms: i64) -> Result<Option<CheckRunRow>> {
        let sql = format!(
            "UPDATE check_runs SET state = ?1, started_at = ?2, attempts = attempts + 1, \
                 claim_seq = (SELECT COALESCE(MAX(claim_seq), 0) + 1 FROM check_runs) \
             WHERE seq = (SELECT seq FROM check_runs WHERE state = ?3 AND not_before <= ?2 \
                 AND owner = ( \
                     SELECT q.owner FROM check_runs q WHERE q.state = ?3 \
                     AND q.not_before <= ?2 GROUP BY q.owner \
                     ORDER BY (SELECT COALESCE(MAX(s.claim_seq), 0) FROM check_runs s \
                               WHERE s.owner = q.owner), MIN(q.seq) LIMIT 1) \
                 ORDER BY seq LIMIT 1) \
             AND state = ?3 RETURNING {RUN_COLUMNS}"
        );
        sqlx::query_as(&sql)
            .bind(CheckRunState::Running)
            .bind(now_ms)
            .bind(CheckRunState::Queued)
            .fetch_optional(&self.pool)
            .await
            .map_err(q("claim check run"))
    }

    /// Deletes finished runs created before `before_ms`, except each machine's latest
    /// finished run (what its pages show) and runs whose webhook is still to be delivered.
    /// Returns how many went.
    pub async fn prune(&self, before_ms: i64) -> Result<u64> {
        let r = sqlx::query(
            "DELETE FROM check_runs WHERE state IN (?1, ?2) AND created_at < ?3 \
             AND (webhook_state IS NULL OR webhook_state != ?4) \
             AND seq NOT IN (SELECT MAX(seq) FROM check_runs WHERE state IN (?1, ?2) \
                             GROUP BY machine_id)",
        )
        .bind(CheckRunState::Done)
        .bind(CheckRunState::Errored)
        .bind(before_ms)
        .bind(WebhookState::Pending)
        .execute(&self.pool)
        .await
        .map_err(q("delete old check runs"))?;
        Ok(r.rows_affected())
    }

    /// How many runs are stored, in any state.
    pub async fn count_all(&self) -> Result<i64> {
        sqlx::query_scalar("SELECT COUNT(*) FROM check_runs")
            .fetch_one(&self.pool)
            .await
            .map_err(q("count check runs"))
    }

    /// Records the end of a running run (once: a second call changes nothing). With a
    /// webhook URL, its delivery becomes pending.
    pub async fn finish(&self, id: &str, outcome: Finished<'_>, now_ms: i64) -> Result<bool> {
        let (state, report, error) = match outcome {
            Finished::Done { report } => (CheckRunState::Done, Some(report), None),
            Finished::Errored { error } => (CheckRunState::Errored, None, Some(error)),
        };
        let r = sqlx::query(
            "UPDATE check_runs SET state = ?, report = ?, error = ?, finished_at = ?, \
                 webhook_state = CASE WHEN webhook_url IS NULL THEN NULL ELSE ? END, \
                 webhook_next_at = ? \
             WHERE id = ? AND state = ?",
        )
        .bind(state)
        .bind(report)
        .bind(error)
        .bind(now_ms)
        .bind(WebhookState::Pending)
        .bind(now_ms)
        .bind(id)
        .bind(CheckRunState::Running)
        .execute(&self.pool)
        .await
        .map_err(q(format!("finish check run {id}")))?;
        Ok(r.rows_affected() == 1)
    }

    /// After a crash: runs left `running` that were claimed fewer than `max_attempts`
    /// times go back to the queue (checks only read the machine, so running one again is
    /// safe; its result was never recorded); the others end `errored`, saying so, so that
    /// a run that brings the server down is not taken up forever. Returns how many were
    /// queued again and how many were given up.
    pub async fn requeue_interrupted(&self, max_attempts: i64, now_ms: i64) -> Result<(u64, u64)> {
        let given_up = sqlx::query(
            "UPDATE check_runs SET state = ?1, finished_at = ?2, \
                 error = 'interrupted by a restart of rnr serve on each of its ' || attempts || \
                     ' attempts (the most is [checker] max_attempts = ' || ?3 || ')', \
                 webhook_state = CASE WHEN webhook_url IS NULL THEN NULL ELSE ?4 END, \
                 webhook_next_at = ?2 \
             WHERE state = ?5 AND attempts >= ?3",
        )
        .bind(CheckRunState::Errored)
        .bind(now_ms)
        .bind(max_attempts)
        .bind(WebhookState::Pending)
        .bind(CheckRunState::Running)
        .execute(&self.pool)
        .await
        .map_err(q("give up interrupted check runs"))?;
        let r = sqlx::query("UPDATE check_runs SET state = ? WHERE state = ?")
            .bind(CheckRunState::Queued)
            .bind(CheckRunState::Running)
            .execute(&self.pool)
            .await
            .map_err(q("requeue interrupted check runs"))?;
        Ok((r.rows_affected(), given_up.rows_affected()))
    }

    /// Puts a running run that could not be carried out back in the queue, to be taken
    /// again no sooner than `not_before` (its error kept until then). `false` if it was
    /// not running.
    pub async fn retry(&self, id: &str, error: &str, not_before: i64) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE check_runs SET state = ?, error = ?, not_before = ? WHERE id = ? AND state = ?",
        )
        .bind(CheckRunState::Queued)
        .bind(error)
        .bind(not_before)
        .bind(id)
        .bind(CheckRunState::Running)
        .execute(&self.pool)
        .await
        .map_err(q(format!("queue check run {id} again")))?;
        Ok(r.rows_affected() == 1)
    }

    pub async fn get(&self, id: &str) -> Result<Option<CheckRunRow>> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM check_runs WHERE id = ?");
        sqlx::query_as(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(q(format!("get check run {id}")))
    }

    /// The machine's most recent finished run.
    pub async fn last_finished(&self, machine_id: &str) -> Result<Option<CheckRunRow>> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM check_runs WHERE machine_id = ? AND state IN (?, ?) \
             ORDER BY seq DESC LIMIT 1"
        );
        sqlx::query_as(&sql)
            .bind(machine_id)
            .bind(CheckRunState::Done)
            .bind(CheckRunState::Errored)
            .fetch_optional(&self.pool)
            .await
            .map_err(q(format!("last check run of {machine_id}")))
    }

    /// A machine's check runs, newest first, at most `limit`.
    pub async fn of_machine(&self, machine_id: &str, limit: i64) -> Result<Vec<CheckRunRow>> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM check_runs WHERE machine_id = ? ORDER BY seq DESC LIMIT ?"
        );
        sqlx::query_as(&sql)
            .bind(machine_id)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(q(format!("check history of {machine_id}")))
    }

    /// How many runs are in `state`, for tests and metrics.
    pub async fn count(&self, state: CheckRunState) -> Result<i64> {
        sqlx::query_scalar("SELECT COUNT(*) FROM check_runs WHERE state = ?")
            .bind(state)
            .fetch_one(&self.pool)
            .await
            .map_err(q(format!("count {} check runs", state.as_str())))
    }

    /// Webhooks due for a delivery attempt at `now_ms`.
    pub async fn due_webhooks(&self, now_ms: i64, limit: i64) -> Result<Vec<CheckRunRow>> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM check_runs WHERE webhook_state = ? \
             AND webhook_next_at <= ? ORDER BY webhook_next_at LIMIT ?"
        );
        sqlx::query_as(&sql)
            .bind(WebhookState::Pending)
            .bind(now_ms)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(q("list due webhooks"))
    }

    /// Records one delivery attempt: `delivered`, `failed` (given up) or `pending` again at
    /// `next_at`.
    pub async fn webhook_attempted(
        &self,
        id: &str,
        state: WebhookState,
        error: Option<&str>,
        next_at: i64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE check_runs SET webhook_state = ?, webhook_error = ?, webhook_next_at = ?, \
             webhook_attempts = webhook_attempts + 1 WHERE id = ?",
        )
        .bind(state)
        .bind(error)
        .bind(next_at)
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(q(format!("record webhook of {id}")))?;
        Ok(())
    }

    /// Checks that passed before on a machine (for exercises whose passes stick).
    pub async fn sticky_passes(&self, machine_id: &str) -> Result<Vec<String>> {
        sqlx::query_scalar("SELECT check_name FROM check_sticky WHERE machine_id = ?")
            .bind(machine_id)
            .fetch_all(&self.pool)
            .await
            .map_err(q(format!("sticky passes of {machine_id}")))
    }

    pub async fn add_sticky_pass(&self, machine_id: &str, check: &str, now_ms: i64) -> Result<()> {
        sqlx::query(
            "INSERT OR IGNORE INTO check_sticky (machine_id, check_name, passed_at) VALUES (?, ?, ?)",
        )
        .bind(machine_id)
        .bind(check)
        .bind(now_ms)
        .execute(&self.pool)
        .await
        .map_err(q(format!("record sticky pass of {machine_id}")))?;
        Ok(())
    }
}

/// How a running run ended.
#[derive(Debug, Clone, Copy)]
pub enum Finished<'a> {
    /// Its checks ran; the report as JSON.
    Done { report: &'a str },
    /// It could not be carried out, and why.
    Errored { error: &'a str },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: &str, trigger: CheckTrigger, coalesce: bool) -> NewCheckRun<'_> {
        NewCheckRun {
            id,
            machine_id: "m",
            owner: "o",
            exercise: "ex",
            trigger,
            webhook_url: None,
            now_ms: 0,
            join: if coalesce { &[CheckTrigger::Live] } else { &[] },
        }
    }

    #[tokio::test]
    async fn queue_claims_each_run_once_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rnr.db");
        {
            let runs = Store::open(&path).await.unwrap().check_runs();
            for i in 0..50 {
                let id = format!("r{i}");
                assert_eq!(
                    runs.enqueue(&run(&id, CheckTrigger::Api, false))
                        .await
                        .unwrap(),
                    Enqueued::New
                );
            }
            // Coalescing: a second queued live run for the same machine is not added.
            assert_eq!(
                runs.enqueue(&run("l1", CheckTrigger::Live, true))
                    .await
                    .unwrap(),
                Enqueued::New
            );
            assert_eq!(
                runs.enqueue(&run("l2", CheckTrigger::Live, true))
                    .await
                    .unwrap(),
                Enqueued::Joined("l1".into())
            );
            let claimed = runs.claim(1).await.unwrap().unwrap();
            assert_eq!(
                (claimed.id.as_str(), claimed.state),
                ("r0", CheckRunState::Running)
            );
            assert_eq!(runs.count(CheckRunState::Queued).await.unwrap(), 50);
            runs.pool.close().await;
        }
        // Reopened as after a crash: the running one is queued again, nothing is lost.
        let runs = Store::open(&path).await.unwrap().check_runs();
        assert_eq!(runs.requeue_interrupted(3, 1).await.unwrap(), (1, 0));
        let done = Finished::Done { report: "{}" };
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let runs = runs.clone();
                tokio::spawn(async move {
                    let mut mine = Vec::new();
                    while let Some(r) = runs.claim(2).await.unwrap() {
                        assert!(runs.finish(&r.id, done, 3).await.unwrap());
                        assert!(!runs.finish(&r.id, done, 3).await.unwrap());
                        mine.push(r.id);
                    }
                    mine
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 51, "every run claimed exactly once");
        assert_eq!(runs.count(CheckRunState::Done).await.unwrap(), 51);
        let r0 = runs.get("r0").await.unwrap().unwrap();
        assert_eq!((r0.attempts, r0.state), (2, CheckRunState::Done));
        let l1 = runs.get("l1").await.unwrap().unwrap();
        assert_eq!(l1.trigger, CheckTrigger::Live);
        assert_eq!(
            runs.last_finished("m").await.unwrap().map(|r| r.state),
            Some(CheckRunState::Done)
        );
    }

    #[tokio::test]
    async fn states_are_stored_as_their_words() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("rnr.db")).await.unwrap();
        let runs = store.check_runs();
        let mut with_hook = run("w", CheckTrigger::Api, false);
        with_hook.webhook_url = Some("http://lms.example/hook");
        runs.enqueue(&with_hook).await.unwrap();
        runs.claim(1).await.unwrap().unwrap();
        runs.finish("w", Finished::Errored { error: "no agent" }, 2)
            .await
            .unwrap();
        let raw: (String, String, String) =
            sqlx::query_as("SELECT state, trigger, webhook_state FROM check_runs WHERE id = 'w'")
                .fetch_one(&store.pool)
                .await
                .unwrap();
        assert_eq!(raw, ("errored".into(), "api".into(), "pending".into()));
        let due = runs.due_webhooks(2, 10).await.unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].webhook_state, Some(WebhookState::Pending));
        assert_eq!(due[0].error.as_deref(), Some("no agent"));
        runs.webhook_attempted("w", WebhookState::Failed, Some("gone"), 0)
            .await
            .unwrap();
        let w = runs.get("w").await.unwrap().unwrap();
        assert_eq!(
            (w.webhook_state, w.webhook_attempts),
            (Some(WebhookState::Failed), 1)
        );
        // A value the enum does not know is a decoding error, not a silent default.
        sqlx::query("UPDATE check_runs SET trigger = 'cron' WHERE id = 'w'")
            .execute(&store.pool)
            .await
            .unwrap();
        assert!(runs.get("w").await.is_err());
    }

    fn for_owner<'a>(id: &'a str, machine: &'a str, owner: &'a str) -> NewCheckRun<'a> {
        NewCheckRun {
            id,
            machine_id: machine,
            owner,
            exercise: "ex",
            trigger: CheckTrigger::Api,
            webhook_url: None,
            now_ms: 0,
            join: &[],
        }
    }

    #[tokio::test]
    async fn owners_are_served_in_turn() {
        let dir = tempfile::tempdir().unwrap();
        let runs = Store::open(&dir.path().join("rnr.db"))
            .await
            .unwrap()
            .check_runs();
        // One owner floods the queue first; two others queue one run each after it.
        let flood: Vec<String> = (0..500).map(|i| format!("a{i}")).collect();
        for id in &flood {
            runs.enqueue(&for_owner(id, "ma", "alice")).await.unwrap();
        }
        runs.enqueue(&for_owner("b0", "mb", "bob")).await.unwrap();
        runs.enqueue(&for_owner("c0", "mc", "carol")).await.unwrap();
        runs.enqueue(&for_owner("b1", "mb", "bob")).await.unwrap();
        let mut order = Vec::new();
        for _ in 0..6 {
            order.push(runs.claim(1).await.unwrap().unwrap().id);
        }
        // Nobody was served yet: oldest first (alice), then those never served (bob,
        // carol), then in turn; bob's second run waits for alice's turn, not her 500.
        assert_eq!(order, ["a0", "b0", "c0", "a1", "b1", "a2"]);
        let owner = runs.get("b0").await.unwrap().unwrap().owner;
        assert_eq!(owner, "bob");
    }

    #[tokio::test]
    async fn a_learner_press_joins_the_queued_run_and_retention_keeps_the_latest() {
        let dir = tempfile::tempdir().unwrap();
        let runs = Store::open(&dir.path().join("rnr.db"))
            .await
            .unwrap()
            .check_runs();
        let press = |id: &'static str| NewCheckRun {
            id,
            machine_id: "m",
            owner: "anon-a",
            exercise: "ex",
            trigger: CheckTrigger::Learner,
            webhook_url: None,
            now_ms: 10,
            join: &[CheckTrigger::Learner, CheckTrigger::Live],
        };
        assert_eq!(runs.enqueue(&press("p1")).await.unwrap(), Enqueued::New);
        // Ten more presses, at once: all join p1.
        let joins: Vec<_> = ["p2", "p3", "p4", "p5", "p6", "p7", "p8", "p9", "p10", "p11"]
            .into_iter()
            .map(|id| {
                let runs = runs.clone();
                tokio::spawn(async move { runs.enqueue(&press(id)).await.unwrap() })
            })
            .collect();
        for j in joins {
            assert_eq!(j.await.unwrap(), Enqueued::Joined("p1".into()));
        }
        assert_eq!(runs.count(CheckRunState::Queued).await.unwrap(), 1);
        // A queued live run is joined by a press too, and an API run joins nothing.
        let p1 = runs.claim(11).await.unwrap().unwrap();
        assert_eq!(p1.id, "p1");
        let mut live = press("l1");
        live.trigger = CheckTrigger::Live;
        assert_eq!(runs.enqueue(&live).await.unwrap(), Enqueued::New);
        assert_eq!(
            runs.enqueue(&press("p12")).await.unwrap(),
            Enqueued::Joined("l1".into())
        );
        let mut api = press("x1");
        api.trigger = CheckTrigger::Api;
        api.join = &[];
        assert_eq!(runs.enqueue(&api).await.unwrap(), Enqueued::New);

        // Retention: old finished runs go, but each machine's latest finished one stays,
        // as do queued runs and undelivered webhooks.
        let done = Finished::Done { report: "{}" };
        runs.finish("p1", done, 12).await.unwrap();
        let l1 = runs.claim(13).await.unwrap().unwrap();
        runs.finish(&l1.id, done, 14).await.unwrap();
        let mut hooked = for_owner("h1", "m", "o");
        hooked.webhook_url = Some("http://lms.example/hook");
        runs.enqueue(&hooked).await.unwrap();
        for other in [for_owner("o1", "m2", "o"), for_owner("o2", "m2", "o")] {
            runs.enqueue(&other).await.unwrap();
        }
        while let Some(r) = runs.claim(15).await.unwrap() {
            runs.finish(&r.id, done, 16).await.unwrap();
        }
        runs.enqueue(&for_owner("q1", "m3", "o")).await.unwrap();
        assert_eq!(runs.count_all().await.unwrap(), 7);
        assert_eq!(runs.prune(0).await.unwrap(), 0, "nothing is that old");
        assert_eq!(runs.prune(1_000).await.unwrap(), 4);
        let mut left = Vec::new();
        for id in ["p1", "l1", "x1", "h1", "o1", "o2", "q1"] {
            if runs.get(id).await.unwrap().is_some() {
                left.push(id);
            }
        }
        // m keeps h1 (its latest, webhook pending), m2 its latest o2, m3 its queued q1.
        assert_eq!(left, ["h1", "o2", "q1"]);
        assert_eq!(
            runs.last_finished("m2")
                .await
                .unwrap()
                .map(|r| r.id)
                .as_deref(),
            Some("o2")
        );
    }

    #[tokio::test]
    async fn interrupted_runs_are_retried_a_few_times_then_given_up() {
        let dir = tempfile::tempdir().unwrap();
        let runs = Store::open(&dir.path().join("rnr.db"))
            .await
            .unwrap()
            .check_runs();
        let mut hooked = run("r", CheckTrigger::Api, false);
        hooked.webhook_url = Some("http://lms.example/hook");
        runs.enqueue(&hooked).await.unwrap();
        // Claimed and interrupted twice: queued again each time.
        for attempt in 1..=2 {
            let r = runs.claim(1).await.unwrap().unwrap();
            assert_eq!(r.attempts, attempt);
            assert_eq!(runs.requeue_interrupted(3, 1).await.unwrap(), (1, 0));
        }
        // A failed attempt waits its delay before a worker takes it again.
        let r = runs.claim(1).await.unwrap().unwrap();
        assert!(runs
            .retry(&r.id, "agent did not answer", 500)
            .await
            .unwrap());
        assert!(runs.claim(499).await.unwrap().is_none(), "not before 500");
        let r = runs.claim(500).await.unwrap().unwrap();
        assert_eq!(r.attempts, 4);
        // Interrupted again past the most attempts: given up, with a message and its
        // webhook due, never queued again.
        assert_eq!(runs.requeue_interrupted(3, 1).await.unwrap(), (0, 1));
        let r = runs.get("r").await.unwrap().unwrap();
        assert_eq!(r.state, CheckRunState::Errored);
        let why = r.error.unwrap_or_default();
        assert!(
            why.contains("4 attempts") && why.contains("max_attempts = 3"),
            "{why}"
        );
        assert_eq!(r.webhook_state, Some(WebhookState::Pending));
        assert!(runs.claim(10_000).await.unwrap().is_none());
        assert_eq!(runs.requeue_interrupted(3, 1).await.unwrap(), (0, 0));
    }
}

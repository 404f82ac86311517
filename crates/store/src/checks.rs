//! Check runs as a persistent queue, their webhooks, sticky passes, and the exercise a
//! machine was made for. Every state change is one conditional UPDATE, so concurrent
//! workers never claim the same run and a result is recorded at most once.

use crate::{q, Result, Store};

/// A check run as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CheckRunRow {
    pub id: String,
    pub machine_id: String,
    pub exercise: String,
    /// `queued`, `running`, `done` or `errored`.
    pub state: String,
    /// `api` or `live`.
    pub trigger: String,
    pub attempts: i64,
    /// The report as JSON, once done.
    pub report: Option<String>,
    pub error: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub webhook_url: Option<String>,
    pub webhook_state: Option<String>,
    pub webhook_attempts: i64,
    pub webhook_error: Option<String>,
}

/// A run to queue.
#[derive(Debug, Clone, Copy)]
pub struct NewCheckRun<'a> {
    pub id: &'a str,
    pub machine_id: &'a str,
    pub exercise: &'a str,
    /// `api` or `live`.
    pub trigger: &'a str,
    pub webhook_url: Option<&'a str>,
    pub now_ms: i64,
    pub coalesce: bool,
}

const RUN_COLUMNS: &str = "id, machine_id, exercise, state, trigger, attempts, report, error, \
     created_at, started_at, finished_at, webhook_url, webhook_state, webhook_attempts, webhook_error";

impl Store {
    /// Queues a run. With `coalesce`, nothing is queued when the machine already has a
    /// queued run of the same trigger (live checking asks often); returns whether a row
    /// was inserted.
    pub async fn enqueue_check_run(&self, run: &NewCheckRun<'_>) -> Result<bool> {
        let NewCheckRun {
            id,
            machine_id,
            exercise,
            trigger,
            webhook_url,
            now_ms,
            coalesce,
        } = *run;
        let r = sqlx::query(
            "INSERT INTO check_runs (id, machine_id, exercise, state, trigger, webhook_url, created_at) \
             SELECT ?, ?, ?, 'queued', ?, ?, ? \
             WHERE NOT ? OR NOT EXISTS (SELECT 1 FROM check_runs \
                 WHERE machine_id = ? AND trigger = ? AND state = 'queued')",
        )
        .bind(id)
        .bind(machine_id)
        .bind(exercise)
        .bind(trigger)
        .bind(webhook_url)
        .bind(now_ms)
        .bind(coalesce)
        .bind(machine_id)
        .bind(trigger)
        .execute(&self.pool)
        .await
        .map_err(q(format!("queue check run {id}")))?;
        Ok(r.rows_affected() == 1)
    }

    /// Takes the oldest queued run and marks it running; `None` when the queue is empty.
    pub async fn claim_check_run(&self, now_ms: i64) -> Result<Option<CheckRunRow>> {
        let sql = format!(
            "UPDATE check_runs SET state = 'running', started_at = ?, attempts = attempts + 1 \
             WHERE seq = (SELECT seq FROM check_runs WHERE state = 'queued' ORDER BY seq LIMIT 1) \
             AND state = 'queued' RETURNING {RUN_COLUMNS}"
        );
        sqlx::query_as(&sql)
            .bind(now_ms)
            .fetch_optional(&self.pool)
            .await
            .map_err(q("claim check run"))
    }

    /// Records the end of a running run (once: a second call changes nothing). With a
    /// webhook URL, its delivery becomes pending.
    pub async fn finish_check_run(
        &self,
        id: &str,
        state: &str,
        report: Option<&str>,
        error: Option<&str>,
        now_ms: i64,
    ) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE check_runs SET state = ?, report = ?, error = ?, finished_at = ?, \
                 webhook_state = CASE WHEN webhook_url IS NULL THEN NULL ELSE 'pending' END, \
                 webhook_next_at = ? \
             WHERE id = ? AND state = 'running'",
        )
        .bind(state)
        .bind(report)
        .bind(error)
        .bind(now_ms)
        .bind(now_ms)
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(q(format!("finish check run {id}")))?;
        Ok(r.rows_affected() == 1)
    }

    /// After a crash: runs left `running` go back to the queue (checks only read the
    /// machine, so running one again is safe; its result was never recorded). Returns
    /// how many.
    pub async fn requeue_interrupted_check_runs(&self) -> Result<u64> {
        let r = sqlx::query("UPDATE check_runs SET state = 'queued' WHERE state = 'running'")
            .execute(&self.pool)
            .await
            .map_err(q("requeue interrupted check runs"))?;
        Ok(r.rows_affected())
    }

    pub async fn get_check_run(&self, id: &str) -> Result<Option<CheckRunRow>> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM check_runs WHERE id = ?");
        sqlx::query_as(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(q(format!("get check run {id}")))
    }

    /// The machine's most recent finished run.
    pub async fn last_check_run(&self, machine_id: &str) -> Result<Option<CheckRunRow>> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM check_runs WHERE machine_id = ? AND state IN ('done', 'errored') \
             ORDER BY seq DESC LIMIT 1"
        );
        sqlx::query_as(&sql)
            .bind(machine_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(q(format!("last check run of {machine_id}")))
    }

    /// How many runs are in each state, for tests and metrics.
    pub async fn count_check_runs(&self, state: &str) -> Result<i64> {
        sqlx::query_scalar("SELECT COUNT(*) FROM check_runs WHERE state = ?")
            .bind(state)
            .fetch_one(&self.pool)
            .await
            .map_err(q("count check runs"))
    }

    /// Webhooks due for a delivery attempt at `now_ms`.
    pub async fn due_webhooks(&self, now_ms: i64, limit: i64) -> Result<Vec<CheckRunRow>> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM check_runs WHERE webhook_state = 'pending' \
             AND webhook_next_at <= ? ORDER BY webhook_next_at LIMIT ?"
        );
        sqlx::query_as(&sql)
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
        state: &str,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn run<'a>(id: &'a str, trigger: &'a str, coalesce: bool) -> NewCheckRun<'a> {
        NewCheckRun {
            id,
            machine_id: "m",
            exercise: "ex",
            trigger,
            webhook_url: None,
            now_ms: 0,
            coalesce,
        }
    }

    #[tokio::test]
    async fn queue_claims_each_run_once_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rnr.db");
        {
            let store = Store::open(&path).await.unwrap();
            for i in 0..50 {
                let id = format!("r{i}");
                assert!(store
                    .enqueue_check_run(&run(&id, "api", false))
                    .await
                    .unwrap());
            }
            // Coalescing: a second queued live run for the same machine is not added.
            assert!(store
                .enqueue_check_run(&run("l1", "live", true))
                .await
                .unwrap());
            assert!(!store
                .enqueue_check_run(&run("l2", "live", true))
                .await
                .unwrap());
            let claimed = store.claim_check_run(1).await.unwrap().unwrap();
            assert_eq!(claimed.id, "r0");
            store.close().await;
        }
        // Reopened as after a crash: the running one is queued again, nothing is lost.
        let store = Store::open(&path).await.unwrap();
        assert_eq!(store.requeue_interrupted_check_runs().await.unwrap(), 1);
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut mine = Vec::new();
                    while let Some(r) = store.claim_check_run(2).await.unwrap() {
                        assert!(store
                            .finish_check_run(&r.id, "done", Some("{}"), None, 3)
                            .await
                            .unwrap());
                        assert!(!store
                            .finish_check_run(&r.id, "done", Some("{}"), None, 3)
                            .await
                            .unwrap());
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
        assert_eq!(store.count_check_runs("done").await.unwrap(), 51);
        assert_eq!(
            store.get_check_run("r0").await.unwrap().unwrap().attempts,
            2
        );
    }
}

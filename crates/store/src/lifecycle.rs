//! How far each machine's creation got and whether its deletion was asked for, recorded
//! step by step so that a restart can tell a whole machine (adopted) from a half-built one
//! (removed), and finish a delete a crash interrupted.

use crate::{q, Result, Store, StoreError};
use std::str::FromStr;

/// A machine's creation, step by step; each is recorded before it begins (and `Ready`
/// after the last), so a crash leaves the step it was in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CreationStep {
    /// Its row holds a place within the capacity; the driver has nothing of it yet.
    Reserved,
    /// The driver is creating it and may hold parts of it.
    DriverCreating,
    /// The driver's machine is whole and running; what the caller does before it is of
    /// use (an exercise's setup) may still be under way.
    DriverCreated,
    /// Created completely.
    Ready,
}

impl CreationStep {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reserved => "reserved",
            Self::DriverCreating => "driver_creating",
            Self::DriverCreated => "driver_created",
            Self::Ready => "ready",
        }
    }
}

impl FromStr for CreationStep {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "reserved" => Self::Reserved,
            "driver_creating" => Self::DriverCreating,
            "driver_created" => Self::DriverCreated,
            "ready" => Self::Ready,
            other => return Err(format!("unknown creation step {other:?}")),
        })
    }
}

/// Where a machine not yet deleted is in its life, for reconciliation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub id: String,
    pub step: CreationStep,
    /// A delete was asked for and not yet carried out.
    pub delete_requested: bool,
}

impl Store {
    /// Records that machine `id`'s creation is at `step` now.
    pub async fn set_creation_step(&self, id: &str, step: CreationStep) -> Result<()> {
        sqlx::query("UPDATE machines SET creation_step = ? WHERE id = ?")
            .bind(step.as_str())
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(q(format!("record creation step {} of {id}", step.as_str())))?;
        Ok(())
    }

    /// Records, before the driver is told, that machine `id` is to be deleted; the first
    /// request's time stays.
    pub async fn request_delete(&self, id: &str, now_ms: i64) -> Result<()> {
        sqlx::query(
            "UPDATE machines SET delete_requested_at = COALESCE(delete_requested_at, ?) \
             WHERE id = ? AND state != 'deleted'",
        )
        .bind(now_ms)
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(q(format!("record the delete of {id}")))?;
        Ok(())
    }

    /// The creation step and pending delete of every machine not yet deleted.
    pub async fn progress(&self) -> Result<Vec<Progress>> {
        let rows: Vec<(String, String, Option<i64>)> = sqlx::query_as(
            "SELECT id, creation_step, delete_requested_at FROM machines \
             WHERE state != 'deleted' ORDER BY created_at, id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(q("list creation steps"))?;
        rows.into_iter()
            .map(|(id, step, del)| {
                let step = step.parse().map_err(|message| StoreError::Corrupt {
                    id: id.clone(),
                    message,
                })?;
                Ok(Progress {
                    id,
                    step,
                    delete_requested: del.is_some(),
                })
            })
            .collect()
    }

    /// Whether a write transaction can start now: `BEGIN IMMEDIATE` on a connection of its
    /// own that waits at most `wait` for a lock (the pool's connections wait far longer,
    /// and a probe must not take one of them for that long).
    pub async fn probe_write(&self, wait: std::time::Duration) -> Result<()> {
        use sqlx::{ConnectOptions, Connection};
        let opts = self
            .options
            .clone()
            .busy_timeout(wait)
            .create_if_missing(false);
        let mut conn = opts.connect().await.map_err(q("open a probe connection"))?;
        let r = sqlx::query("BEGIN IMMEDIATE").execute(&mut conn).await;
        if r.is_ok() {
            let _ = sqlx::query("ROLLBACK").execute(&mut conn).await;
        }
        let _ = conn.close().await;
        r.map_err(q("start a write transaction"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{test_row, MachineState};

    #[tokio::test]
    async fn steps_and_delete_requests_are_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("rnr.db")).await.unwrap();
        assert!(store.insert_if_capacity(&test_row("a"), 10).await.unwrap());
        assert!(store.insert_if_capacity(&test_row("b"), 10).await.unwrap());
        let p = store.progress().await.unwrap();
        assert_eq!(p[0].step, CreationStep::Reserved, "a new row is reserved");
        store
            .set_creation_step("a", CreationStep::Ready)
            .await
            .unwrap();
        store.request_delete("b", 5).await.unwrap();
        store.request_delete("b", 9).await.unwrap();
        let p = store.progress().await.unwrap();
        assert_eq!(
            p,
            [
                Progress {
                    id: "a".into(),
                    step: CreationStep::Ready,
                    delete_requested: false
                },
                Progress {
                    id: "b".into(),
                    step: CreationStep::Reserved,
                    delete_requested: true
                }
            ]
        );
        // A requested delete is due for the reaper whatever its expiry.
        assert_eq!(store.expired(0).await.unwrap(), ["b"]);
        store.set_deleted("b", 10).await.unwrap();
        assert_eq!(store.progress().await.unwrap().len(), 1);
        assert_eq!(
            store.get("b").await.unwrap().unwrap().state,
            MachineState::Deleted
        );
    }

    #[tokio::test]
    async fn a_locked_database_fails_the_write_probe_in_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rnr.db");
        let store = Store::open(&path).await.unwrap();
        let wait = std::time::Duration::from_millis(200);
        store.probe_write(wait).await.unwrap();
        let holder = Store::open(&path).await.unwrap();
        let mut lock = holder.pool.acquire().await.unwrap();
        sqlx::query("BEGIN EXCLUSIVE")
            .execute(&mut *lock)
            .await
            .unwrap();
        let started = std::time::Instant::now();
        let e = store.probe_write(wait).await.unwrap_err();
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        assert!(e.to_string().contains("locked"), "{e}");
        sqlx::query("ROLLBACK").execute(&mut *lock).await.unwrap();
        store.probe_write(wait).await.unwrap();
    }
}

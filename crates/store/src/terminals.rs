//! Terminals as the gateway records them: which machine each belongs to (so its recording
//! goes when the machine does) and whether its tokens were revoked.

use crate::{q, Result, Store};

/// A terminal as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct TerminalRow {
    pub id: String,
    pub machine_id: String,
    pub created_at: i64,
    /// When `DELETE /api/v1/terminals/{id}` revoked its tokens.
    pub revoked_at: Option<i64>,
}

impl Store {
    /// Records terminal `id` of machine `machine_id` (once: a second call changes nothing).
    pub async fn add_terminal(&self, id: &str, machine_id: &str, now_ms: i64) -> Result<()> {
        sqlx::query(
            "INSERT OR IGNORE INTO terminals (id, machine_id, created_at) VALUES (?, ?, ?)",
        )
        .bind(id)
        .bind(machine_id)
        .bind(now_ms)
        .execute(&self.pool)
        .await
        .map_err(q(format!("record terminal {id}")))?;
        Ok(())
    }

    pub async fn terminal(&self, id: &str) -> Result<Option<TerminalRow>> {
        sqlx::query_as("SELECT id, machine_id, created_at, revoked_at FROM terminals WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(q(format!("get terminal {id}")))
    }

    /// Revokes terminal `id`'s tokens; `false` if it is unknown or already revoked.
    pub async fn revoke_terminal(&self, id: &str, now_ms: i64) -> Result<bool> {
        let r =
            sqlx::query("UPDATE terminals SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL")
                .bind(now_ms)
                .bind(id)
                .execute(&self.pool)
                .await
                .map_err(q(format!("revoke terminal {id}")))?;
        Ok(r.rows_affected() == 1)
    }

    /// The terminals machine `machine_id` ever had.
    pub async fn terminals_of(&self, machine_id: &str) -> Result<Vec<TerminalRow>> {
        sqlx::query_as(
            "SELECT id, machine_id, created_at, revoked_at FROM terminals WHERE machine_id = ? \
             ORDER BY created_at",
        )
        .bind(machine_id)
        .fetch_all(&self.pool)
        .await
        .map_err(q(format!("terminals of {machine_id}")))
    }
}

#[cfg(test)]
mod tests {
    use crate::Store;

    #[tokio::test]
    async fn terminals_are_recorded_once_and_revoked_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("rnr.db")).await.unwrap();
        store.add_terminal("t-1", "m-1", 1).await.unwrap();
        store.add_terminal("t-1", "m-2", 2).await.unwrap();
        store.add_terminal("t-2", "m-1", 3).await.unwrap();
        let t = store.terminal("t-1").await.unwrap().unwrap();
        assert_eq!((t.machine_id.as_str(), t.revoked_at), ("m-1", None));
        assert!(store.revoke_terminal("t-1", 5).await.unwrap());
        assert!(!store.revoke_terminal("t-1", 6).await.unwrap());
        assert!(!store.revoke_terminal("t-nope", 6).await.unwrap());
        assert_eq!(
            store.terminal("t-1").await.unwrap().unwrap().revoked_at,
            Some(5)
        );
        let of: Vec<String> = store
            .terminals_of("m-1")
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(of, ["t-1", "t-2"]);
    }
}

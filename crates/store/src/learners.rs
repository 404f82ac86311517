//! What the learner's pages need: the machine a learner has for an exercise, and the
//! terminal a page shows for a machine.

use crate::{q, MachineRow, RawMachine, Result, Store, MACHINE_COLUMNS};

impl Store {
    /// The learner's live (creating or running) machine for `exercise`, newest first.
    pub async fn learner_machine(&self, owner: &str, exercise: &str) -> Result<Option<MachineRow>> {
        let sql = format!(
            "SELECT {MACHINE_COLUMNS} FROM machines WHERE owner = ? AND exercise = ? \
             AND state IN ('creating', 'running') ORDER BY created_at DESC LIMIT 1"
        );
        sqlx::query_as::<_, RawMachine>(&sql)
            .bind(owner)
            .bind(exercise)
            .fetch_optional(&self.pool)
            .await
            .map_err(q(format!("machine of {owner} for {exercise}")))?
            .map(MachineRow::try_from)
            .transpose()
    }

    pub async fn machine_terminal(&self, machine_id: &str) -> Result<Option<String>> {
        sqlx::query_scalar("SELECT terminal_id FROM machine_terminals WHERE machine_id = ?")
            .bind(machine_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(q(format!("terminal of {machine_id}")))
    }

    pub async fn set_machine_terminal(&self, machine_id: &str, terminal_id: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO machine_terminals (machine_id, terminal_id) VALUES (?, ?) \
             ON CONFLICT (machine_id) DO UPDATE SET terminal_id = excluded.terminal_id",
        )
        .bind(machine_id)
        .bind(terminal_id)
        .execute(&self.pool)
        .await
        .map_err(q(format!("record terminal of {machine_id}")))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::{MachineRow, Store};

    #[tokio::test]
    async fn learner_machine_is_scoped_to_owner_and_exercise() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("rnr.db")).await.unwrap();
        let row = |id: &str, owner: &str| MachineRow {
            owner: Some(owner.into()),
            ..crate::test_row(id)
        };
        for (id, owner) in [("a", "alice"), ("b", "bob")] {
            assert!(store.insert_if_capacity(&row(id, owner), 10).await.unwrap());
            store.set_machine_exercise(id, "cron").await.unwrap();
        }
        assert_eq!(
            store
                .learner_machine("alice", "cron")
                .await
                .unwrap()
                .unwrap()
                .id,
            "a"
        );
        assert!(store
            .learner_machine("alice", "archives")
            .await
            .unwrap()
            .is_none());
        assert!(store
            .learner_machine("carol", "cron")
            .await
            .unwrap()
            .is_none());
        store.set_deleted("a", 2).await.unwrap();
        assert!(store
            .learner_machine("alice", "cron")
            .await
            .unwrap()
            .is_none());

        store.set_machine_terminal("b", "t-1").await.unwrap();
        store.set_machine_terminal("b", "t-2").await.unwrap();
        assert_eq!(
            store.machine_terminal("b").await.unwrap().as_deref(),
            Some("t-2")
        );
        assert!(store.machine_terminal("a").await.unwrap().is_none());
    }
}

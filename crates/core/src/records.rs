//! What the platform records beside machines' lifecycle, reached through [`Platform`] like
//! the machines themselves: API keys, the instance's signing secrets, the exercise each
//! machine was made for, and what the learner's pages keep per machine.

use crate::{hash_key, Machine, Platform, Result};
use rnr_store::{ApiKeyRow, TerminalRow};

/// An API key as the platform knows it (never the secret itself).
pub type ApiKey = ApiKeyRow;
/// A terminal as the platform records it.
pub type Terminal = TerminalRow;

impl Platform {
    /// The unrevoked API key whose secret is `presented`, if there is one.
    pub async fn authenticate(&self, presented: &str) -> Result<Option<ApiKey>> {
        Ok(self.store.api_key_by_hash(&hash_key(presented)).await?)
    }

    /// Whether API key `id` exists and is not revoked (a revoked key ends its sessions).
    pub async fn api_key_active(&self, id: &str) -> Result<bool> {
        Ok(self
            .store
            .api_key(id)
            .await?
            .is_some_and(|k| k.revoked_at.is_none()))
    }

    /// Records terminal `id` of machine `machine` (once).
    pub async fn add_terminal(&self, id: &str, machine: &str) -> Result<()> {
        Ok(self
            .store
            .add_terminal(id, machine, crate::now_ms())
            .await?)
    }

    /// Terminal `id`, if it was ever recorded.
    pub async fn terminal(&self, id: &str) -> Result<Option<Terminal>> {
        Ok(self.store.terminal(id).await?)
    }

    /// Revokes terminal `id`'s tokens; `false` if it is unknown or already revoked.
    pub async fn revoke_terminal(&self, id: &str) -> Result<bool> {
        Ok(self.store.revoke_terminal(id, crate::now_ms()).await?)
    }

    /// The terminals machine `id` ever had.
    pub async fn terminals_of(&self, id: &str) -> Result<Vec<Terminal>> {
        Ok(self.store.terminals_of(id).await?)
    }

    /// Live machines whose owner starts with `prefix` (anonymous learners: `anon-`).
    pub async fn machines_of_owners(&self, prefix: &str) -> Result<Vec<Machine>> {
        Ok(self.store.machines_with_owner_prefix(prefix).await?)
    }

    /// The instance's secret named `name` (random the first time, then kept), so that what
    /// is signed with it outlives restarts.
    pub async fn secret(&self, name: &str) -> Result<String> {
        Ok(self
            .store
            .meta_or_insert(name, || {
                // 32 characters of base 32: 160 bits.
                crate::random_id(32)
            })
            .await?)
    }

    /// Binds machine `id` to the exercise it was made for.
    pub async fn set_exercise(&self, id: &str, exercise: &str) -> Result<()> {
        Ok(self.store.set_machine_exercise(id, exercise).await?)
    }

    /// The exercise machine `id` was made for, if any.
    pub async fn exercise_of(&self, id: &str) -> Result<Option<String>> {
        Ok(self.store.machine_exercise(id).await?)
    }

    /// The live (creating or running) machine `owner` has for `exercise`, newest first.
    pub async fn learner_machine(&self, owner: &str, exercise: &str) -> Result<Option<Machine>> {
        Ok(self.store.learner_machine(owner, exercise).await?)
    }

    /// The terminal the pages show for machine `id`, once one was chosen.
    pub async fn page_terminal(&self, id: &str) -> Result<Option<String>> {
        Ok(self.store.machine_terminal(id).await?)
    }

    /// Records `terminal` as the one the pages show for machine `id`.
    pub async fn set_page_terminal(&self, id: &str, terminal: &str) -> Result<()> {
        Ok(self.store.set_machine_terminal(id, terminal).await?)
    }
}

//! rootnroll's persistent state in one SQLite file: machines (with their lifecycle state and
//! history), API keys (hashed) and instance metadata. WAL mode lets the CLI read and write
//! (e.g. `rnr apikey create`) while `rnr serve` runs.

pub mod checks;
mod learners;
mod lifecycle;
mod quotas;
mod terminals;

pub use lifecycle::{CreationStep, Progress};
pub use quotas::{Inserted, Quota};
pub use terminals::TerminalRow;

use serde::Serialize;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// Store errors; each names the database file or the row concerned.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open database {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot migrate database {path}: {source}")]
    Migrate {
        path: PathBuf,
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    #[error("database error ({context}): {source}")]
    Query {
        context: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("machine {0} already exists")]
    Duplicate(String),
    #[error("corrupt row for {id}: {message}")]
    Corrupt { id: String, message: String },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

fn q(context: impl Into<String>) -> impl FnOnce(sqlx::Error) -> StoreError {
    let context = context.into();
    move |source| StoreError::Query { context, source }
}

/// Lifecycle state of a machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MachineState {
    Creating,
    Running,
    Failed,
    Deleted,
}

impl MachineState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Creating => "creating",
            Self::Running => "running",
            Self::Failed => "failed",
            Self::Deleted => "deleted",
        }
    }
}

impl FromStr for MachineState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "creating" => Self::Creating,
            "running" => Self::Running,
            "failed" => Self::Failed,
            "deleted" => Self::Deleted,
            other => return Err(format!("unknown machine state {other:?}")),
        })
    }
}

/// A machine as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct MachineRow {
    pub id: String,
    pub image: String,
    pub state: MachineState,
    pub address: Option<String>,
    pub hostname: String,
    pub memory_mib: u64,
    pub cpu_millis: u64,
    pub pids: u64,
    pub outbound: bool,
    pub owner: Option<String>,
    pub api_key_id: Option<String>,
    pub error: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
    pub deleted_at: Option<i64>,
}

#[derive(sqlx::FromRow)]
pub(crate) struct RawMachine {
    id: String,
    image: String,
    state: String,
    address: Option<String>,
    hostname: String,
    memory_mib: i64,
    cpu_millis: i64,
    pids: i64,
    outbound: bool,
    owner: Option<String>,
    api_key_id: Option<String>,
    error: Option<String>,
    created_at: i64,
    expires_at: i64,
    deleted_at: Option<i64>,
}

impl TryFrom<RawMachine> for MachineRow {
    type Error = StoreError;
    fn try_from(r: RawMachine) -> Result<Self> {
        let corrupt = |message: String| StoreError::Corrupt {
            id: r.id.clone(),
            message,
        };
        let state = r.state.parse().map_err(corrupt)?;
        let unsigned = |v: i64, what: &str| {
            u64::try_from(v).map_err(|_| StoreError::Corrupt {
                id: r.id.clone(),
                message: format!("negative {what}"),
            })
        };
        Ok(Self {
            state,
            memory_mib: unsigned(r.memory_mib, "memory_mib")?,
            cpu_millis: unsigned(r.cpu_millis, "cpu_millis")?,
            pids: unsigned(r.pids, "pids")?,
            id: r.id,
            image: r.image,
            address: r.address,
            hostname: r.hostname,
            outbound: r.outbound,
            owner: r.owner,
            api_key_id: r.api_key_id,
            error: r.error,
            created_at: r.created_at,
            expires_at: r.expires_at,
            deleted_at: r.deleted_at,
        })
    }
}

/// An API key as stored (without the key itself).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ApiKeyRow {
    pub id: String,
    pub name: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
    /// Most machines creating or running at once for this key; `None`: the default.
    pub max_machines: Option<i64>,
    /// Most machine creations per minute for this key; `None`: the default.
    pub creations_per_minute: Option<i64>,
}

/// Per-key quota overrides given when a key is created; `None` keeps the default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyLimits {
    pub max_machines: Option<u64>,
    pub creations_per_minute: Option<u64>,
}

const KEY_COLUMNS: &str = "id, name, created_at, revoked_at, max_machines, creations_per_minute";

/// Handle to the database; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
    /// How the pool's connections were opened (a probe opens one of its own alike).
    options: SqliteConnectOptions,
}

pub(crate) const MACHINE_COLUMNS: &str =
    "id, image, state, address, hostname, memory_mib, cpu_millis, pids, \
     outbound, owner, api_key_id, error, created_at, expires_at, deleted_at";

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Store {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub async fn open(path: &Path) -> Result<Self> {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            // The CLI and the server share the file; wait for a lock instead of failing.
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(opts.clone())
            .await
            .map_err(|source| StoreError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .map_err(|source| StoreError::Migrate {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Self {
            pool,
            options: opts,
        })
    }

    /// A metadata value, set to `make()` the first time it is asked for.
    pub async fn meta_or_insert(&self, key: &str, make: impl FnOnce() -> String) -> Result<String> {
        sqlx::query("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)")
            .bind(key)
            .bind(make())
            .execute(&self.pool)
            .await
            .map_err(q(format!("insert meta {key}")))?;
        sqlx::query_scalar("SELECT value FROM meta WHERE key = ?")
            .bind(key)
            .fetch_one(&self.pool)
            .await
            .map_err(q(format!("read meta {key}")))
    }

    /// Inserts a machine in state `creating` unless `capacity` machines are already active
    /// (creating or running). Atomic: concurrent callers can never exceed the capacity.
    /// Returns `false` when the platform is full. [`Store::insert_within`] also checks
    /// quotas.
    pub async fn insert_if_capacity(&self, m: &MachineRow, capacity: u64) -> Result<bool> {
        Ok(self.insert_within(m, None, capacity, &[]).await? == Inserted::Yes)
    }

    pub async fn get(&self, id: &str) -> Result<Option<MachineRow>> {
        let sql = format!("SELECT {MACHINE_COLUMNS} FROM machines WHERE id = ?");
        sqlx::query_as::<_, RawMachine>(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(q(format!("get machine {id}")))?
            .map(MachineRow::try_from)
            .transpose()
    }

    /// Machines in any of `states`, oldest first.
    pub async fn list(&self, states: &[MachineState]) -> Result<Vec<MachineRow>> {
        let marks = vec!["?"; states.len()].join(", ");
        let sql = format!(
            "SELECT {MACHINE_COLUMNS} FROM machines WHERE state IN ({marks}) ORDER BY created_at, id"
        );
        let mut query = sqlx::query_as::<_, RawMachine>(&sql);
        for s in states {
            query = query.bind(s.as_str());
        }
        query
            .fetch_all(&self.pool)
            .await
            .map_err(q("list machines"))?
            .into_iter()
            .map(MachineRow::try_from)
            .collect()
    }

    /// Machines not yet deleted whose time is up at `now_ms`, or whose delete was asked
    /// for and not carried out (it timed out, or a crash interrupted it).
    pub async fn expired(&self, now_ms: i64) -> Result<Vec<String>> {
        sqlx::query_scalar(
            "SELECT id FROM machines WHERE state != 'deleted' \
             AND (expires_at <= ? OR delete_requested_at IS NOT NULL) ORDER BY expires_at",
        )
        .bind(now_ms)
        .fetch_all(&self.pool)
        .await
        .map_err(q("list expired machines"))
    }

    pub async fn count_active(&self) -> Result<u64> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM machines WHERE state IN ('creating', 'running')",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(q("count machines"))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Number of machines in each state that has any.
    pub async fn count_by_state(&self) -> Result<Vec<(MachineState, u64)>> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, COUNT(*) FROM machines GROUP BY state")
                .fetch_all(&self.pool)
                .await
                .map_err(q("count machines by state"))?;
        rows.into_iter()
            .map(|(s, n)| {
                let state = s.parse().map_err(|message| StoreError::Corrupt {
                    id: "-".into(),
                    message,
                })?;
                Ok((state, u64::try_from(n).unwrap_or(0)))
            })
            .collect()
    }

    pub async fn set_running(&self, id: &str, address: Option<&str>) -> Result<()> {
        sqlx::query(
            "UPDATE machines SET state = 'running', address = ?, error = NULL \
             WHERE id = ? AND state IN ('creating', 'running')",
        )
        .bind(address)
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(q(format!("mark {id} running")))?;
        Ok(())
    }

    pub async fn set_failed(&self, id: &str, error: &str) -> Result<()> {
        sqlx::query(
            "UPDATE machines SET state = 'failed', error = ? WHERE id = ? AND state != 'deleted'",
        )
        .bind(error)
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(q(format!("mark {id} failed")))?;
        Ok(())
    }

    pub async fn set_deleted(&self, id: &str, now_ms: i64) -> Result<()> {
        sqlx::query(
            "UPDATE machines SET state = 'deleted', deleted_at = ? WHERE id = ? AND state != 'deleted'",
        )
        .bind(now_ms)
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(q(format!("mark {id} deleted")))?;
        Ok(())
    }

    pub async fn set_expiry(&self, id: &str, expires_at: i64) -> Result<()> {
        sqlx::query("UPDATE machines SET expires_at = ? WHERE id = ? AND state != 'deleted'")
            .bind(expires_at)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(q(format!("extend {id}")))?;
        Ok(())
    }

    pub async fn insert_api_key(
        &self,
        id: &str,
        name: &str,
        key_hash: &str,
        limits: KeyLimits,
        now_ms: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO api_keys (id, name, key_hash, created_at, max_machines, \
             creations_per_minute) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(id)
        .bind(name)
        .bind(key_hash)
        .bind(now_ms)
        .bind(limits.max_machines.map(to_i64))
        .bind(limits.creations_per_minute.map(to_i64))
        .execute(&self.pool)
        .await
        .map_err(q(format!("insert api key {name}")))?;
        Ok(())
    }

    /// The unrevoked key with this hash.
    pub async fn api_key_by_hash(&self, key_hash: &str) -> Result<Option<ApiKeyRow>> {
        let sql =
            format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE key_hash = ? AND revoked_at IS NULL");
        sqlx::query_as(&sql)
            .bind(key_hash)
            .fetch_optional(&self.pool)
            .await
            .map_err(q("look up api key"))
    }

    pub async fn list_api_keys(&self) -> Result<Vec<ApiKeyRow>> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at");
        sqlx::query_as(&sql)
            .fetch_all(&self.pool)
            .await
            .map_err(q("list api keys"))
    }

    /// The key with this id, revoked or not.
    pub async fn api_key(&self, id: &str) -> Result<Option<ApiKeyRow>> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ?");
        sqlx::query_as(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(q(format!("get api key {id}")))
    }

    /// Revokes a key; `false` if no unrevoked key has this id.
    pub async fn revoke_api_key(&self, id: &str, now_ms: i64) -> Result<bool> {
        let r =
            sqlx::query("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL")
                .bind(now_ms)
                .bind(id)
                .execute(&self.pool)
                .await
                .map_err(q(format!("revoke api key {id}")))?;
        Ok(r.rows_affected() == 1)
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// A machine row for the store's tests: `creating`, created at 1, expiring at 100.
#[cfg(test)]
pub(crate) fn test_row(id: &str) -> MachineRow {
    MachineRow {
        id: id.into(),
        image: "tiny".into(),
        state: MachineState::Creating,
        address: None,
        hostname: id.into(),
        memory_mib: 64,
        cpu_millis: 500,
        pids: 64,
        outbound: false,
        owner: None,
        api_key_id: None,
        error: None,
        created_at: 1,
        expires_at: 100,
        deleted_at: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str) -> MachineRow {
        test_row(id)
    }

    #[tokio::test]
    async fn capacity_is_atomic_under_concurrency() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("rnr.db")).await.unwrap();
        let tasks: Vec<_> = (0..20)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(
                    async move { store.insert_if_capacity(&row(&format!("m{i}")), 5).await },
                )
            })
            .collect();
        let mut inserted = 0;
        for t in tasks {
            if t.await.unwrap().unwrap() {
                inserted += 1;
            }
        }
        assert_eq!(inserted, 5);
        assert_eq!(store.count_active().await.unwrap(), 5);
        // A deleted machine frees its slot.
        let first = store.list(&[MachineState::Creating]).await.unwrap()[0]
            .id
            .clone();
        store.set_deleted(&first, 5).await.unwrap();
        assert!(store.insert_if_capacity(&row("late"), 5).await.unwrap());
    }

    #[tokio::test]
    async fn lifecycle_and_persistence() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rnr.db");
        {
            let store = Store::open(&path).await.unwrap();
            assert!(store.insert_if_capacity(&row("a"), 10).await.unwrap());
            assert!(matches!(
                store.insert_if_capacity(&row("a"), 10).await,
                Err(StoreError::Duplicate(_))
            ));
            store.set_running("a", Some("10.0.0.2")).await.unwrap();
            store.close().await;
        }
        let store = Store::open(&path).await.unwrap();
        let a = store.get("a").await.unwrap().unwrap();
        assert_eq!(a.state, MachineState::Running);
        assert_eq!(a.address.as_deref(), Some("10.0.0.2"));
        assert_eq!(store.expired(99).await.unwrap(), Vec::<String>::new());
        assert_eq!(store.expired(100).await.unwrap(), vec!["a".to_string()]);
        store.set_deleted("a", 101).await.unwrap();
        // A deleted machine cannot come back to life.
        store.set_running("a", None).await.unwrap();
        assert_eq!(
            store.get("a").await.unwrap().unwrap().state,
            MachineState::Deleted
        );
        assert!(store.expired(1000).await.unwrap().is_empty());
        let id1 = store
            .meta_or_insert("instance", || "x".into())
            .await
            .unwrap();
        let id2 = store
            .meta_or_insert("instance", || "y".into())
            .await
            .unwrap();
        assert_eq!((id1.as_str(), id2.as_str()), ("x", "x"));
    }

    #[tokio::test]
    async fn api_keys_hash_lookup_and_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("rnr.db")).await.unwrap();
        store
            .insert_api_key(
                "k1",
                "lms",
                "h1",
                KeyLimits {
                    max_machines: Some(3),
                    creations_per_minute: None,
                },
                1,
            )
            .await
            .unwrap();
        let k = store.api_key("k1").await.unwrap().unwrap();
        assert_eq!((k.max_machines, k.creations_per_minute), (Some(3), None));
        assert_eq!(
            store.api_key_by_hash("h1").await.unwrap().unwrap().name,
            "lms"
        );
        assert!(store.api_key_by_hash("h2").await.unwrap().is_none());
        assert!(store.revoke_api_key("k1", 2).await.unwrap());
        assert!(!store.revoke_api_key("k1", 3).await.unwrap());
        assert!(store.api_key_by_hash("h1").await.unwrap().is_none());
    }
}

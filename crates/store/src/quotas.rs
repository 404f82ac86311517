//! Quotas checked inside the insert of a machine, so that concurrent creations can never
//! exceed them (as with the capacity): live machines and recent creations per API key,
//! live machines per owner prefix (anonymous learners) overall and per client address.

use crate::{q, to_i64, MachineRow, Result, Store, MACHINE_COLUMNS};

/// A limit a new machine must stay within; each counts rows of the machines table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Quota {
    /// At most `max` machines creating or running that API key `key` asked for.
    KeyActive { key: String, max: u64 },
    /// At most `max` machines created by API key `key` since `since_ms` (rows stay after
    /// deletion, so this counts every creation, failed ones included).
    KeyCreatedSince {
        key: String,
        since_ms: i64,
        max: u64,
    },
    /// At most `max` machines creating or running whose owner starts with `prefix`, and,
    /// with `client`, that were created for that client address.
    OwnerPrefixActive {
        prefix: String,
        client: Option<String>,
        max: u64,
    },
}

/// What an insert within capacity and quotas did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    Yes,
    /// The platform's capacity is reached.
    Full,
    /// This quota (an index into the quotas given) is reached.
    OverQuota(usize),
}

/// The first string above every string starting with `prefix`, for an index range scan
/// (`LIKE` would not use the owner index: it ignores case).
fn prefix_end(prefix: &str) -> String {
    let mut end = prefix.to_string();
    match end.pop() {
        Some(c) => end.push(char::from_u32(c as u32 + 1).unwrap_or(char::MAX)),
        None => end.push(char::MAX),
    }
    end
}

const LIVE: &str = "state IN ('creating', 'running')";

impl Quota {
    /// `(SELECT COUNT(*) …)` for this quota, with its binds.
    fn count_sql(&self) -> (String, Vec<Bind>) {
        match self {
            Quota::KeyActive { key, .. } => (
                format!("SELECT COUNT(*) FROM machines WHERE api_key_id = ? AND {LIVE}"),
                vec![Bind::Text(key.clone())],
            ),
            Quota::KeyCreatedSince { key, since_ms, .. } => (
                "SELECT COUNT(*) FROM machines WHERE api_key_id = ? AND created_at > ?".into(),
                vec![Bind::Text(key.clone()), Bind::Int(*since_ms)],
            ),
            Quota::OwnerPrefixActive { prefix, client, .. } => {
                let mut binds = vec![Bind::Text(prefix.clone()), Bind::Text(prefix_end(prefix))];
                let client_sql = match client {
                    Some(c) => {
                        binds.push(Bind::Text(c.clone()));
                        " AND client_addr = ?"
                    }
                    None => "",
                };
                (
                    format!(
                        "SELECT COUNT(*) FROM machines WHERE owner >= ? AND owner < ?{client_sql} \
                         AND {LIVE}"
                    ),
                    binds,
                )
            }
        }
    }

    pub fn max(&self) -> u64 {
        match self {
            Quota::KeyActive { max, .. }
            | Quota::KeyCreatedSince { max, .. }
            | Quota::OwnerPrefixActive { max, .. } => *max,
        }
    }
}

#[derive(Debug, Clone)]
enum Bind {
    Text(String),
    Int(i64),
}

/// Binds each of `binds` to `query` (a query or a scalar query: they share no trait).
macro_rules! bind_each {
    ($query:expr, $binds:expr) => {{
        let mut query = $query;
        for b in $binds {
            query = match b {
                Bind::Text(s) => query.bind(s.clone()),
                Bind::Int(i) => query.bind(*i),
            };
        }
        query
    }};
}

impl Store {
    /// Inserts machine `m` (state `creating`, created for `client_addr`) unless the
    /// platform already has `capacity` live machines or one of `quotas` is reached. One
    /// statement: concurrent callers can never exceed either.
    pub async fn insert_within(
        &self,
        m: &MachineRow,
        client_addr: Option<&str>,
        capacity: u64,
        quotas: &[Quota],
    ) -> Result<Inserted> {
        let mut conditions = format!("(SELECT COUNT(*) FROM machines WHERE {LIVE}) < ?");
        let mut binds = vec![Bind::Int(to_i64(capacity))];
        for quota in quotas {
            let (sql, b) = quota.count_sql();
            conditions.push_str(&format!(" AND ({sql}) < ?"));
            binds.extend(b);
            binds.push(Bind::Int(to_i64(quota.max())));
        }
        let sql = format!(
            "INSERT INTO machines ({MACHINE_COLUMNS}, client_addr) \
             SELECT ?, ?, 'creating', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ? WHERE {conditions}"
        );
        let query = sqlx::query(&sql)
            .bind(&m.id)
            .bind(&m.image)
            .bind(&m.address)
            .bind(&m.hostname)
            .bind(to_i64(m.memory_mib))
            .bind(to_i64(m.cpu_millis))
            .bind(to_i64(m.pids))
            .bind(m.outbound)
            .bind(&m.owner)
            .bind(&m.api_key_id)
            .bind(&m.error)
            .bind(m.created_at)
            .bind(m.expires_at)
            .bind(m.deleted_at)
            .bind(client_addr);
        let res = bind_each!(query, &binds).execute(&self.pool).await;
        match res {
            Ok(r) if r.rows_affected() == 1 => Ok(Inserted::Yes),
            Ok(_) => {
                // Refused: say which limit (counted again; a race only changes which one
                // of two full limits is named).
                if self.count_active().await? >= capacity {
                    return Ok(Inserted::Full);
                }
                for (i, quota) in quotas.iter().enumerate() {
                    if self.quota_used(quota).await? >= quota.max() {
                        return Ok(Inserted::OverQuota(i));
                    }
                }
                Ok(Inserted::Full)
            }
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                Err(crate::StoreError::Duplicate(m.id.clone()))
            }
            Err(e) => Err(q(format!("insert machine {}", m.id))(e)),
        }
    }

    /// How much of `quota` is in use now.
    pub async fn quota_used(&self, quota: &Quota) -> Result<u64> {
        let (sql, binds) = quota.count_sql();
        let n: i64 = bind_each!(sqlx::query_scalar(&sql), &binds)
            .fetch_one(&self.pool)
            .await
            .map_err(q("count a quota's use"))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// When (unix ms) room is expected under `quota` without anyone's doing: the soonest
    /// expiry of the machines it counts, or when its oldest counted creation leaves the
    /// window (`window_ms` after it).
    pub async fn quota_frees_at(&self, quota: &Quota, window_ms: i64) -> Result<Option<i64>> {
        let (count, binds) = quota.count_sql();
        let column = match quota {
            Quota::KeyCreatedSince { .. } => format!("MIN(created_at) + {window_ms}"),
            _ => "MIN(expires_at)".into(),
        };
        let sql = count.replacen("COUNT(*)", &column, 1);
        bind_each!(sqlx::query_scalar::<_, Option<i64>>(&sql), &binds)
            .fetch_one(&self.pool)
            .await
            .map_err(q("when a quota frees up"))
    }

    /// The live machines of an owner prefix (e.g. anonymous learners), for tests and the
    /// operator.
    pub async fn machines_with_owner_prefix(&self, prefix: &str) -> Result<Vec<MachineRow>> {
        let sql = format!(
            "SELECT {MACHINE_COLUMNS} FROM machines WHERE owner >= ? AND owner < ? AND {LIVE} \
             ORDER BY created_at"
        );
        sqlx::query_as::<_, crate::RawMachine>(&sql)
            .bind(prefix)
            .bind(prefix_end(prefix))
            .fetch_all(&self.pool)
            .await
            .map_err(q(format!("machines of owners {prefix}…")))?
            .into_iter()
            .map(MachineRow::try_from)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MachineState;

    fn row(id: &str, owner: Option<&str>, key: Option<&str>, created_at: i64) -> MachineRow {
        MachineRow {
            owner: owner.map(Into::into),
            api_key_id: key.map(Into::into),
            created_at,
            expires_at: created_at + 1000,
            ..crate::test_row(id)
        }
    }

    #[test]
    fn prefix_range_covers_exactly_the_prefix() {
        assert_eq!(prefix_end("anon-"), "anon.");
        assert!("anon-zzz" < prefix_end("anon-").as_str());
        assert!("anon." >= prefix_end("anon-").as_str());
    }

    #[tokio::test]
    async fn key_quotas_hold_under_concurrency_and_say_which() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("rnr.db")).await.unwrap();
        let active = Quota::KeyActive {
            key: "k1".into(),
            max: 3,
        };
        let tasks: Vec<_> = (0..12)
            .map(|i| {
                let store = store.clone();
                let quotas = vec![active.clone()];
                tokio::spawn(async move {
                    store
                        .insert_within(
                            &row(&format!("m{i}"), None, Some("k1"), 10),
                            None,
                            100,
                            &quotas,
                        )
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut yes = 0;
        for t in tasks {
            match t.await.unwrap() {
                Inserted::Yes => yes += 1,
                other => assert_eq!(other, Inserted::OverQuota(0)),
            }
        }
        assert_eq!(yes, 3, "the key's live machines never exceed its quota");
        // Another key is not affected; a deleted machine frees its place.
        assert_eq!(
            store
                .insert_within(
                    &row("o", None, Some("k2"), 10),
                    None,
                    100,
                    &[Quota::KeyActive {
                        key: "k2".into(),
                        max: 3
                    }]
                )
                .await
                .unwrap(),
            Inserted::Yes
        );
        store.set_deleted("m0", 20).await.unwrap();
        let first = store.list(&[MachineState::Creating]).await.unwrap()[0]
            .id
            .clone();
        store.set_deleted(&first, 20).await.unwrap();
        assert_eq!(
            store
                .insert_within(
                    &row("n", None, Some("k1"), 30),
                    None,
                    100,
                    std::slice::from_ref(&active)
                )
                .await
                .unwrap(),
            Inserted::Yes
        );

        // Creations per window count deleted machines too; the window slides.
        let rate = |since_ms| Quota::KeyCreatedSince {
            key: "k1".into(),
            since_ms,
            max: 4,
        };
        assert_eq!(store.quota_used(&rate(0)).await.unwrap(), 4);
        assert_eq!(
            store
                .insert_within(&row("r", None, Some("k1"), 40), None, 100, &[rate(0)])
                .await
                .unwrap(),
            Inserted::OverQuota(0)
        );
        // The oldest of the window's creations (at 10) leaves it 60 s later.
        assert_eq!(
            store.quota_frees_at(&rate(0), 60_000).await.unwrap(),
            Some(60_010)
        );
        assert_eq!(
            store
                .insert_within(&row("r", None, Some("k1"), 40), None, 100, &[rate(15)])
                .await
                .unwrap(),
            Inserted::Yes
        );
        // The capacity is named before any quota.
        assert_eq!(
            store
                .insert_within(&row("c", None, Some("k1"), 50), None, 1, &[rate(0)])
                .await
                .unwrap(),
            Inserted::Full
        );
    }

    #[tokio::test]
    async fn owner_prefix_quotas_count_per_client_and_overall() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("rnr.db")).await.unwrap();
        let per_client = |c: &str| Quota::OwnerPrefixActive {
            prefix: "anon-".into(),
            client: Some(c.into()),
            max: 2,
        };
        let overall = Quota::OwnerPrefixActive {
            prefix: "anon-".into(),
            client: None,
            max: 3,
        };
        let mut n = 0;
        let mut try_insert = |owner: &'static str, client: &'static str| {
            n += 1;
            let store = store.clone();
            let quotas = vec![per_client(client), overall.clone()];
            let id = format!("m{n}");
            async move {
                store
                    .insert_within(&row(&id, Some(owner), None, 1), Some(client), 100, &quotas)
                    .await
                    .unwrap()
            }
        };
        assert_eq!(try_insert("anon-a", "10.0.0.1").await, Inserted::Yes);
        assert_eq!(try_insert("anon-b", "10.0.0.1").await, Inserted::Yes);
        assert_eq!(
            try_insert("anon-c", "10.0.0.1").await,
            Inserted::OverQuota(0)
        );
        assert_eq!(try_insert("anon-d", "10.0.0.2").await, Inserted::Yes);
        assert_eq!(
            try_insert("anon-e", "10.0.0.3").await,
            Inserted::OverQuota(1)
        );
        // Owners outside the prefix (LMS learners) are not counted.
        assert_eq!(
            store
                .insert_within(
                    &row("lms", Some("lms:x"), None, 1),
                    Some("10.0.0.1"),
                    100,
                    &[]
                )
                .await
                .unwrap(),
            Inserted::Yes
        );
        assert_eq!(store.quota_used(&per_client("10.0.0.1")).await.unwrap(), 2);
        assert_eq!(
            store
                .machines_with_owner_prefix("anon-")
                .await
                .unwrap()
                .len(),
            3
        );
        assert_eq!(store.quota_frees_at(&overall, 0).await.unwrap(), Some(1001));
    }
}

//! Machine lifecycle: create within capacity and policy, exec, extend, delete, reap
//! expired machines, and reconcile the store with the driver after a restart.
//!
//! [`Platform`] is the only door to machines and their state: nothing outside this crate
//! holds the store or the driver, so every rule (capacity, lifetimes, limits, what a
//! deleted machine may still do) is enforced here, once.

use crate::{now_ms, random_id, CoreError, Metrics, Result};
use bytes::Bytes;
use futures::StreamExt;
use rnr_driver::{
    collect, fault, Driver, DriverError, ExecOutcome, ExecRequest, ExecSpec, Limits, MachineInfo,
    MachineKind, MachineSpec, MachineStats, MachineStatus, NetworkSpec,
};
use rnr_store::checks::CheckRunState;
use rnr_store::{CreationStep, Inserted, MachineRow, MachineState, Quota, Store};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A machine as the platform records it.
pub type Machine = MachineRow;

/// What operators allow; requests are checked against it.
#[derive(Debug, Clone)]
pub struct MachinePolicy {
    /// Most machines creating or running at once; more are refused at once.
    pub capacity: u64,
    pub default_image: String,
    pub default_ttl: Duration,
    pub max_ttl: Duration,
    pub default_limits: Limits,
    pub max_limits: Limits,
    /// Whether a request may ask for outbound network access.
    pub allow_outbound: bool,
    pub max_exec_timeout: Duration,
    /// How long the platform waits for a driver to delete a machine. A delete that takes
    /// longer is given up on (it goes on in the background, and a later one retries), so
    /// that one stuck machine can hold neither a request nor the reaper.
    pub delete_timeout: Duration,
    /// Expired machines the reaper deletes at once.
    pub parallel_deletes: usize,
    /// How long `/readyz` waits for each part (the store's write lock, the driver's
    /// backend, the data disk) before it counts it as not answering.
    pub ready_timeout: Duration,
    /// Directories whose filesystems must keep `min_free_disk_mib` free for the platform
    /// to be ready (the data dir, the drivers' state dirs).
    pub disk_dirs: Vec<PathBuf>,
    pub min_free_disk_mib: u64,
    /// What every API key may use unless it was created with limits of its own.
    pub key_quotas: KeyQuotas,
}

/// Per-API-key quotas; 0 is no limit. A key's own limits (`rnr apikey create
/// --max-machines N --creations-per-minute N`) replace these.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyQuotas {
    /// Most machines creating or running at once for one key (links' learners included).
    pub max_machines: u64,
    /// Most machine creations per minute for one key.
    pub creations_per_minute: u64,
}

/// A quota a caller adds to a create request (the UI's caps on anonymous learners), with
/// the words that say which limit refused it.
#[derive(Debug, Clone)]
pub struct QuotaLimit {
    pub quota: Quota,
    /// What is counted, e.g. "anonymous machines from 10.0.0.1".
    pub what: String,
    /// The setting and its value, e.g. "[ui] max_anonymous_per_client = 3".
    pub setting: String,
}

/// Runs after a machine is deleted or reaped (with its id), e.g. to remove what other
/// parts kept for it.
pub type DeleteHook = Arc<dyn Fn(String) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

impl Default for MachinePolicy {
    fn default() -> Self {
        Self {
            capacity: 100,
            default_image: "debian".into(),
            default_ttl: Duration::from_secs(3600),
            max_ttl: Duration::from_secs(24 * 3600),
            default_limits: Limits::default(),
            max_limits: Limits {
                memory_mib: 4096,
                cpu_millis: 4000,
                pids: 4096,
            },
            allow_outbound: false,
            max_exec_timeout: Duration::from_secs(600),
            delete_timeout: Duration::from_secs(60),
            parallel_deletes: 4,
            ready_timeout: Duration::from_secs(2),
            disk_dirs: Vec::new(),
            min_free_disk_mib: 256,
            key_quotas: KeyQuotas::default(),
        }
    }
}

/// Per-field limit overrides in a create request.
#[derive(Debug, Clone, Default)]
pub struct LimitsRequest {
    pub memory_mib: Option<u64>,
    pub cpu_millis: Option<u64>,
    pub pids: Option<u64>,
}

/// A request to create a machine; unset fields take the policy's defaults.
#[derive(Debug, Clone, Default)]
pub struct CreateMachine {
    /// A container (the default) or a VM with a kernel of its own.
    pub kind: Option<MachineKind>,
    pub image: Option<String>,
    pub ttl_seconds: Option<u64>,
    pub limits: LimitsRequest,
    pub outbound: Option<bool>,
    /// Who the machine is for (a learner id, an operator name).
    pub owner: Option<String>,
    /// The caller sets the machine up before it is of use (an exercise's setup) and says
    /// so with [`Platform::mark_ready`]; until then a restart removes it as half-built.
    pub setup_follows: bool,
    /// The API key that asked for it (directly, or through a link it made); its quotas
    /// apply.
    pub api_key_id: Option<String>,
    /// The client address it is for (recorded; quotas may count by it).
    pub client_addr: Option<String>,
    /// Further quotas the machine must stay within.
    pub quotas: Vec<QuotaLimit>,
}

/// A one-shot command.
#[derive(Debug, Clone)]
pub struct ExecCommand {
    pub argv: Vec<String>,
    pub stdin: Option<Bytes>,
    pub env: Vec<(String, String)>,
    pub user: Option<String>,
    pub workdir: Option<String>,
    pub timeout: Duration,
}

/// What a reconciliation found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Machines the store knew that are still running, now managed again.
    pub adopted: Vec<String>,
    /// Machines the store knew that no longer run; marked failed.
    pub vanished: Vec<String>,
    /// Machines the driver had that the store does not consider alive; removed.
    pub orphans_removed: Vec<String>,
    /// Machines whose creation a restart interrupted; whatever the driver had of them was
    /// removed and they are marked failed.
    pub half_built_removed: Vec<String>,
    /// Machines whose delete a restart interrupted, now deleted.
    pub deletes_finished: Vec<String>,
}

/// The platform: store + driver + policy.
#[derive(Clone)]
pub struct Platform {
    pub(crate) store: Store,
    driver: Arc<dyn Driver>,
    policy: Arc<MachinePolicy>,
    metrics: Arc<Metrics>,
    /// Machines whose driver delete is still running (perhaps past its timeout).
    deleting: Arc<Mutex<HashSet<String>>>,
    on_delete: Arc<Mutex<Vec<DeleteHook>>>,
}

/// Takes a machine off [`Platform::deleting`] when its delete ends, however it ends.
struct Deleting {
    set: Arc<Mutex<HashSet<String>>>,
    id: String,
}

impl Drop for Deleting {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.id);
    }
}

/// The window of the per-key creation rate.
const RATE_WINDOW_MS: i64 = 60_000;

fn check_limit(field: &str, asked: Option<u64>, default: u64, max: u64) -> Result<u64> {
    let v = asked.unwrap_or(default);
    if v == 0 {
        return Err(CoreError::invalid(field, "must be greater than 0"));
    }
    if v > max {
        return Err(CoreError::invalid(
            field,
            format!("{v} is above the maximum of {max}"),
        ));
    }
    Ok(v)
}

fn valid_image_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

impl Platform {
    pub fn new(store: Store, driver: Arc<dyn Driver>, policy: MachinePolicy) -> Self {
        Self {
            store,
            driver,
            policy: Arc::new(policy),
            metrics: Arc::new(Metrics::default()),
            deleting: Arc::default(),
            on_delete: Arc::default(),
        }
    }

    /// Calls `hook(id)` after every deletion of a machine (by request or when its time is
    /// up), and waits for it: what it removes is gone when the deletion returns.
    pub fn on_delete<F, Fut>(&self, hook: F)
    where
        F: Fn(String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let hook: DeleteHook = Arc::new(move |id| Box::pin(hook(id)));
        self.on_delete
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(hook);
    }

    async fn deleted(&self, id: &str) {
        let hooks: Vec<DeleteHook> = self
            .on_delete
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        for hook in hooks {
            hook(id.to_string()).await;
        }
    }

    /// The quotas of a machine asked for by API key `key`: its own limits, else the
    /// policy's.
    async fn key_quotas(&self, key: &str, now: i64) -> Result<Vec<QuotaLimit>> {
        let row = self.store.api_key(key).await?;
        let name = row.as_ref().map_or("?", |k| k.name.as_str());
        let own = |v: Option<i64>| v.and_then(|v| u64::try_from(v).ok());
        let max = row
            .as_ref()
            .and_then(|k| own(k.max_machines))
            .unwrap_or(self.policy.key_quotas.max_machines);
        let rate = row
            .as_ref()
            .and_then(|k| own(k.creations_per_minute))
            .unwrap_or(self.policy.key_quotas.creations_per_minute);
        let source = |own: bool, flag: &str, setting: &str, value: u64| {
            if own {
                format!("this key's own limit (rnr apikey create --{flag} {value})")
            } else {
                format!("[quotas] {setting} = {value}")
            }
        };
        let mut out = Vec::new();
        if max > 0 {
            let own = row.as_ref().is_some_and(|k| k.max_machines.is_some());
            out.push(QuotaLimit {
                quota: Quota::KeyActive {
                    key: key.to_string(),
                    max,
                },
                what: format!("API key {key} ({name}) has {max} machines creating or running"),
                setting: format!(
                    "the most at once is {max}, {}",
                    source(own, "max-machines", "max_machines_per_key", max)
                ),
            });
        }
        if rate > 0 {
            let own = row
                .as_ref()
                .is_some_and(|k| k.creations_per_minute.is_some());
            out.push(QuotaLimit {
                quota: Quota::KeyCreatedSince {
                    key: key.to_string(),
                    since_ms: now - RATE_WINDOW_MS,
                    max: rate,
                },
                what: format!("API key {key} ({name}) created {rate} machines in the last minute"),
                setting: format!(
                    "the most per minute is {rate}, {}",
                    source(
                        own,
                        "creations-per-minute",
                        "creations_per_minute_per_key",
                        rate
                    )
                ),
            });
        }
        Ok(out)
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Prometheus text for every platform metric, machine gauges read from the store.
    pub async fn render_metrics(&self) -> Result<String> {
        let all = [
            MachineState::Creating,
            MachineState::Running,
            MachineState::Failed,
            MachineState::Deleted,
        ];
        let counts = self.store.count_by_state().await?;
        let runs = self.store.check_runs();
        let queued = runs.count(CheckRunState::Queued).await?;
        self.metrics
            .check_queue_depth
            .store(queued, Ordering::Relaxed);
        self.metrics
            .check_runs_stored
            .store(runs.count_all().await?, Ordering::Relaxed);
        let by_state: Vec<(&str, u64)> = all
            .iter()
            .map(|s| {
                let n = counts.iter().find(|(st, _)| st == s).map_or(0, |(_, n)| *n);
                (s.as_str(), n)
            })
            .collect();
        Ok(self.metrics.render(&by_state, self.policy.capacity))
    }

    /// Whether the platform can take work: a write transaction on the store can start,
    /// the driver's backend answers, and the data disks have room. Each is given the
    /// policy's `ready_timeout` and all are asked at once, so the answer comes within that
    /// time whatever hangs; [`CoreError::NotReady`] names each part that failed and why.
    pub async fn ready(&self) -> Result<()> {
        let limit = self.policy.ready_timeout;
        let store = self.store.clone();
        let driver = self.driver.clone();
        let dirs = self.policy.disk_dirs.clone();
        let min = self.policy.min_free_disk_mib;
        let (s, d, k) = tokio::join!(
            within("store", limit, async move {
                // Half the time for the lock: a locked database says so, not just "no answer".
                store
                    .probe_write(limit / 2)
                    .await
                    .map_err(|e| e.to_string())
            }),
            within("driver", limit, async move {
                driver.ready().await.map_err(|e| e.to_string())
            }),
            within("disk", limit, async move {
                // statvfs can block (a hung network filesystem): off the runtime.
                tokio::task::spawn_blocking(move || disks_have_room(&dirs, min))
                    .await
                    .map_err(|e| e.to_string())?
            }),
        );
        let problems: Vec<String> = [s, d, k].into_iter().flatten().collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(CoreError::NotReady { problems })
        }
    }

    fn count_driver_error(&self, e: &DriverError) {
        if !matches!(
            e,
            DriverError::NotFound(_) | DriverError::ImageNotFound(_) | DriverError::Invalid { .. }
        ) {
            self.metrics.driver_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    // Removed when terminals attach through Platform::agent
    // (they attach through it now; what is left is terminal.rs's `machine_gone`, which
    // asks `driver().inspect` and can ask `Platform::inspect` instead).
    pub fn policy(&self) -> &MachinePolicy {
        &self.policy
    }

    /// Creates and starts a machine, or says precisely why not.
    pub async fn create(&self, req: CreateMachine) -> Result<Machine> {
        let p = &self.policy;
        let image = req.image.unwrap_or_else(|| p.default_image.clone());
        if !valid_image_name(&image) {
            return Err(CoreError::invalid(
                "image",
                format!("{image:?} is not an image name ([a-z0-9._-], at most 63 characters)"),
            ));
        }
        let ttl = match req.ttl_seconds {
            None => p.default_ttl,
            Some(0) => return Err(CoreError::invalid("ttl_seconds", "must be greater than 0")),
            Some(s) if Duration::from_secs(s) > p.max_ttl => {
                return Err(CoreError::invalid(
                    "ttl_seconds",
                    format!("{s} is above the maximum of {}", p.max_ttl.as_secs()),
                ))
            }
            Some(s) => Duration::from_secs(s),
        };
        let limits = Limits {
            memory_mib: check_limit(
                "limits.memory_mib",
                req.limits.memory_mib,
                p.default_limits.memory_mib,
                p.max_limits.memory_mib,
            )?,
            cpu_millis: check_limit(
                "limits.cpu_millis",
                req.limits.cpu_millis,
                p.default_limits.cpu_millis,
                p.max_limits.cpu_millis,
            )?,
            pids: check_limit(
                "limits.pids",
                req.limits.pids,
                p.default_limits.pids,
                p.max_limits.pids,
            )?,
        };
        let outbound = req.outbound.unwrap_or(false);
        if outbound && !p.allow_outbound {
            return Err(CoreError::invalid(
                "outbound",
                "outbound network access is disabled on this platform",
            ));
        }
        let id = format!("m-{}", random_id(12));
        let now = now_ms();
        let row = MachineRow {
            id: id.clone(),
            image: image.clone(),
            state: MachineState::Creating,
            address: None,
            hostname: id.clone(),
            memory_mib: limits.memory_mib,
            cpu_millis: limits.cpu_millis,
            pids: limits.pids,
            outbound,
            owner: req.owner,
            api_key_id: req.api_key_id,
            error: None,
            created_at: now,
            expires_at: now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)),
            deleted_at: None,
        };
        let started = std::time::Instant::now();
        let mut limits_in_force = match &row.api_key_id {
            Some(key) => self.key_quotas(key, now).await?,
            None => Vec::new(),
        };
        limits_in_force.extend(req.quotas);
        let quotas: Vec<Quota> = limits_in_force.iter().map(|l| l.quota.clone()).collect();
        match self
            .store
            .insert_within(&row, req.client_addr.as_deref(), p.capacity, &quotas)
            .await?
        {
            Inserted::Yes => {}
            Inserted::Full => {
                self.metrics
                    .machines_refused_capacity
                    .fetch_add(1, Ordering::Relaxed);
                let active = self.store.count_active().await?;
                tracing::warn!(
                    capacity = p.capacity,
                    active,
                    "machine refused: capacity reached"
                );
                return Err(CoreError::Capacity {
                    active,
                    capacity: p.capacity,
                });
            }
            Inserted::OverQuota(i) => {
                let limit = &limits_in_force[i];
                self.metrics
                    .machines_refused_quota
                    .fetch_add(1, Ordering::Relaxed);
                let frees_at = self
                    .store
                    .quota_frees_at(&limit.quota, RATE_WINDOW_MS)
                    .await?
                    .unwrap_or(now + 1000);
                let retry_after = u64::try_from((frees_at - now_ms() + 999) / 1000)
                    .unwrap_or(1)
                    .max(1);
                tracing::warn!(what = %limit.what, limit = %limit.setting, "machine refused: quota reached");
                return Err(CoreError::Quota {
                    what: limit.what.clone(),
                    limit: limit.setting.clone(),
                    retry_after,
                });
            }
        }
        fault::point("create:reserved");
        self.store
            .set_creation_step(&id, CreationStep::DriverCreating)
            .await?;
        fault::point("create:driver_creating");
        let spec = MachineSpec {
            id: id.clone(),
            kind: req.kind.unwrap_or_default(),
            image,
            hostname: row.hostname.clone(),
            limits,
            network: NetworkSpec { outbound },
            labels: BTreeMap::new(),
        };
        match self.driver.create(&spec).await {
            Ok(info) => {
                fault::point("create:driver_created");
                let address = info.address.map(|a| a.to_string());
                self.store.set_running(&id, address.as_deref()).await?;
                let step = if req.setup_follows {
                    CreationStep::DriverCreated
                } else {
                    CreationStep::Ready
                };
                self.store.set_creation_step(&id, step).await?;
                let machine = self.get(&id).await?;
                if machine.state == MachineState::Deleted {
                    // Deleted while it was being created: the driver's copy must go too.
                    let _ = self.driver_delete(&id).await;
                }
                self.metrics
                    .machines_created
                    .fetch_add(1, Ordering::Relaxed);
                self.metrics.create_latency.observe(started.elapsed());
                tracing::info!(machine = %id, address = ?address, "machine created");
                Ok(machine)
            }
            Err(e) => {
                tracing::warn!(machine = %id, error = %e, "machine creation failed");
                self.count_driver_error(&e);
                self.metrics
                    .machine_create_failures
                    .fetch_add(1, Ordering::Relaxed);
                self.store.set_failed(&id, &e.to_string()).await?;
                // Nothing may be left behind by a failed create.
                let _ = self.driver_delete(&id).await;
                Err(CoreError::driver(&id, e))
            }
        }
    }

    /// Records that machine `id`, created with `setup_follows`, is set up and of use: from
    /// now on a restart adopts it.
    pub async fn mark_ready(&self, id: &str) -> Result<()> {
        self.store
            .set_creation_step(id, CreationStep::Ready)
            .await?;
        Ok(())
    }

    pub async fn get(&self, id: &str) -> Result<Machine> {
        self.store
            .get(id)
            .await?
            .ok_or_else(|| CoreError::NotFound(id.to_string()))
    }

    pub async fn list(&self, states: &[MachineState]) -> Result<Vec<Machine>> {
        Ok(self.store.list(states).await?)
    }

    /// Deletes a machine. Deleting one already deleted succeeds (idempotent).
    pub async fn delete(&self, id: &str) -> Result<()> {
        let m = self.get(id).await?;
        if m.state == MachineState::Deleted {
            return Ok(());
        }
        // Recorded first: a delete that times out, fails or is cut short by a crash is
        // carried out by a later reaper pass or the next start.
        self.store.request_delete(id, now_ms()).await?;
        self.delete_recorded(id).await.map_err(|e| {
            self.count_driver_error(&e);
            tracing::warn!(machine = %id, error = %e, "delete not done; a later reaper pass retries it");
            CoreError::driver(id, e)
        })?;
        tracing::info!(machine = %id, "machine deleted");
        self.deleted(id).await;
        Ok(())
    }

    /// The driver's part of a delete already recorded, then the store's.
    async fn delete_recorded(&self, id: &str) -> Result<(), DriverError> {
        fault::point("delete:requested");
        self.driver_delete(id).await?;
        fault::point("delete:driver_deleted");
        self.store
            .set_deleted(id, now_ms())
            .await
            .map_err(|e| DriverError::backend(id, format!("recording the delete: {e}")))
    }

    /// Runs a one-shot command in a running machine.
    pub async fn exec(&self, id: &str, cmd: ExecCommand) -> Result<ExecOutcome> {
        if cmd.argv.is_empty() || cmd.argv[0].is_empty() {
            return Err(CoreError::invalid("argv", "must name a program"));
        }
        if cmd.timeout.is_zero() || cmd.timeout > self.policy.max_exec_timeout {
            return Err(CoreError::invalid(
                "timeout_seconds",
                format!(
                    "must be between 1 and {}",
                    self.policy.max_exec_timeout.as_secs()
                ),
            ));
        }
        self.running(id).await?;
        let spec = ExecSpec {
            argv: cmd.argv,
            env: cmd.env,
            user: cmd.user,
            workdir: cmd.workdir,
            tty: None,
        };
        let mut req = ExecRequest::new(spec, cmd.timeout);
        req.stdin = cmd.stdin;
        collect(self.driver.as_ref(), id, req).await.map_err(|e| {
            self.count_driver_error(&e);
            CoreError::driver(id, e)
        })
    }

    /// Lets a running machine live `by` longer (from its current expiry), within the
    /// policy's maximum lifetime counted from its creation; refused, naming how much is
    /// left, when that would be exceeded.
    pub async fn extend(&self, id: &str, by: Duration) -> Result<Machine> {
        if by.is_zero() {
            return Err(CoreError::invalid("ttl_seconds", "must be greater than 0"));
        }
        let m = self.running(id).await?;
        let from = m.expires_at.max(now_ms());
        let room = self.room_from(&m, from);
        if by > room {
            return Err(CoreError::invalid(
                "ttl_seconds",
                format!(
                    "{} is more than machine {id} may still be extended by ({} s): a machine \
                     lives at most {} s from its creation",
                    by.as_secs(),
                    room.as_secs(),
                    self.policy.max_ttl.as_secs()
                ),
            ));
        }
        let by_ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.store
            .set_expiry(id, from.saturating_add(by_ms))
            .await?;
        tracing::info!(machine = %id, by_s = by.as_secs(), "machine extended");
        // Deleted meanwhile: the store kept the deletion, and so does the answer.
        self.get(id).await
    }

    /// How much longer machine `m` may be made to live: up to the policy's maximum
    /// lifetime from its creation, counted from its expiry (or from now, if that passed).
    pub fn extension_room(&self, m: &Machine) -> Duration {
        self.room_from(m, m.expires_at.max(now_ms()))
    }

    fn room_from(&self, m: &Machine, from: i64) -> Duration {
        let max_ms = i64::try_from(self.policy.max_ttl.as_millis()).unwrap_or(i64::MAX);
        let ceiling = m.created_at.saturating_add(max_ms);
        Duration::from_millis(u64::try_from(ceiling.saturating_sub(from)).unwrap_or(0))
    }

    /// CPU, memory and process counts of a running machine, if its driver measures them.
    pub async fn stats(&self, id: &str) -> Result<Option<MachineStats>> {
        self.running(id).await?;
        self.driver
            .stats(id)
            .await
            .map_err(|e| CoreError::driver(id, e))
    }

    /// The driver's own view of machine `id` (its status and address as the backend sees
    /// them), for telling a stopped machine from a lost connection to it.
    pub async fn inspect(&self, id: &str) -> Result<MachineInfo> {
        self.get(id).await?;
        self.driver.inspect(id).await.map_err(|e| {
            self.count_driver_error(&e);
            CoreError::driver(id, e)
        })
    }

    /// Machines creating or running now (what counts against the capacity).
    pub async fn active_machines(&self) -> Result<u64> {
        Ok(self.store.count_active().await?)
    }

    /// Machine `id`, if it is running; why not otherwise.
    async fn running(&self, id: &str) -> Result<Machine> {
        let m = self.get(id).await?;
        if m.state != MachineState::Running {
            return Err(CoreError::NotRunning {
                id: id.to_string(),
                state: m.state.as_str().to_string(),
            });
        }
        Ok(m)
    }

    /// A new connection to the agent in running machine `id`: terminal sessions and check
    /// suites go through it.
    pub async fn agent(&self, id: &str) -> Result<rnr_driver::AgentChannel> {
        self.running(id).await?;
        self.driver.agent(id).await.map_err(|e| {
            self.count_driver_error(&e);
            CoreError::driver(id, e)
        })
    }

    /// Deletes machine `id` in the driver, waiting at most the policy's `delete_timeout`.
    /// The driver's delete runs in a task of its own: giving up waiting never cancels a
    /// teardown half-way, and while it runs no second delete of the machine is started.
    async fn driver_delete(&self, id: &str) -> Result<(), DriverError> {
        let fresh = self
            .deleting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id.to_string());
        if !fresh {
            return Err(DriverError::backend(
                id,
                "an earlier delete of this machine is still running in the driver",
            ));
        }
        let done = Deleting {
            set: self.deleting.clone(),
            id: id.to_string(),
        };
        let driver = self.driver.clone();
        let task = tokio::spawn(async move {
            let r = driver.delete(&done.id).await;
            drop(done);
            r
        });
        let limit = self.policy.delete_timeout;
        match tokio::time::timeout(limit, task).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(DriverError::backend(id, format!("the delete failed: {e}"))),
            Err(_) => Err(DriverError::backend(
                id,
                format!(
                    "the driver did not delete it within {} s (it goes on in the background)",
                    limit.as_secs_f64()
                ),
            )),
        }
    }

    /// Deletes every machine whose time is up, a few at a time (`parallel_deletes`), each
    /// within the delete timeout; returns how many. Those that could not be deleted stay
    /// expired, for the next pass.
    pub async fn reap_once(&self) -> Result<usize> {
        let expired = self.store.expired(now_ms()).await?;
        let mut deletes = futures::stream::iter(expired)
            .map(|id| async move {
                let r = match self.store.request_delete(&id, now_ms()).await {
                    Ok(()) => self.delete_recorded(&id).await,
                    Err(e) => Err(DriverError::backend(
                        &id,
                        format!("recording the delete: {e}"),
                    )),
                };
                (id, r)
            })
            .buffer_unordered(self.policy.parallel_deletes.max(1));
        let mut n = 0;
        while let Some((id, r)) = deletes.next().await {
            match r {
                Ok(()) => {
                    self.metrics.machines_reaped.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(machine = %id, "machine expired and was deleted");
                    self.deleted(&id).await;
                    n += 1;
                }
                Err(e) => {
                    self.count_driver_error(&e);
                    tracing::warn!(machine = %id, error = %e, "cannot delete expired machine; the next pass retries")
                }
            }
        }
        Ok(n)
    }

    /// Reaps expired machines every `interval` until `shutdown` is cancelled.
    pub async fn run_reaper(&self, interval: Duration, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {
                    if let Err(e) = self.reap_once().await {
                        tracing::warn!(error = %e, "reaper pass failed");
                    }
                }
            }
        }
    }

    /// Brings the store and the driver into agreement, as after a restart: machines whose
    /// creation completed and that still run are adopted; those gone are marked failed;
    /// those whose creation a restart interrupted (any step short of ready) are half-built:
    /// whatever the driver has of them is removed and they are marked failed; deletes a
    /// restart interrupted are carried out; and driver machines the store does not
    /// consider alive are removed. Each is logged with its machine id.
    pub async fn reconcile(&self) -> Result<ReconcileReport> {
        let live: HashMap<String, rnr_driver::MachineInfo> = self
            .driver
            .list()
            .await
            .map_err(|e| CoreError::driver("-", e))?
            .into_iter()
            .map(|m| (m.id.clone(), m))
            .collect();
        let progress: HashMap<String, rnr_store::Progress> = self
            .store
            .progress()
            .await?
            .into_iter()
            .map(|p| (p.id.clone(), p))
            .collect();
        let known = self
            .store
            .list(&[MachineState::Creating, MachineState::Running])
            .await?;
        let mut report = ReconcileReport::default();
        let mut handled: HashSet<String> = HashSet::new();
        for p in progress.values().filter(|p| p.delete_requested) {
            handled.insert(p.id.clone());
            match self.delete_recorded(&p.id).await {
                Ok(()) => {
                    tracing::info!(machine = %p.id, "delete interrupted by a restart carried out");
                    self.deleted(&p.id).await;
                    report.deletes_finished.push(p.id.clone());
                }
                Err(e) => {
                    tracing::warn!(machine = %p.id, error = %e, "interrupted delete not done; the reaper retries it")
                }
            }
        }
        for m in &known {
            if handled.contains(&m.id) {
                continue;
            }
            let step = progress
                .get(&m.id)
                .map_or(CreationStep::Reserved, |p| p.step);
            if step != CreationStep::Ready {
                handled.insert(m.id.clone());
                let why = format!(
                    "creation interrupted by a restart of rnr serve (at step {}); its parts \
                     were removed",
                    step.as_str()
                );
                match self.driver_delete(&m.id).await {
                    Ok(()) | Err(DriverError::NotFound(_)) => {
                        tracing::warn!(machine = %m.id, step = step.as_str(), had_parts = live.contains_key(&m.id), "half-built machine removed");
                        self.store.set_failed(&m.id, &why).await?;
                        report.half_built_removed.push(m.id.clone());
                    }
                    Err(e) => {
                        // Failed all the same: never adopted; the reaper deletes it at its
                        // expiry, which retries the driver.
                        tracing::warn!(machine = %m.id, error = %e, "cannot remove half-built machine");
                        self.store.set_failed(&m.id, &why).await?;
                    }
                }
                continue;
            }
            match live.get(&m.id) {
                Some(info) if info.status == MachineStatus::Running => {
                    let address = info.address.map(|a| a.to_string());
                    self.store.set_running(&m.id, address.as_deref()).await?;
                    tracing::info!(machine = %m.id, "machine adopted");
                    report.adopted.push(m.id.clone());
                }
                other => {
                    let why = if other.is_some() {
                        "machine stopped while the platform was down"
                    } else {
                        "machine vanished while the platform was down"
                    };
                    tracing::warn!(machine = %m.id, "{why}");
                    self.store.set_failed(&m.id, why).await?;
                    report.vanished.push(m.id.clone());
                }
            }
        }
        for id in live.keys() {
            if report.adopted.contains(id) || handled.contains(id) {
                continue;
            }
            match self.driver_delete(id).await {
                Ok(()) | Err(DriverError::NotFound(_)) => {
                    tracing::info!(machine = %id, "orphan machine removed");
                    report.orphans_removed.push(id.clone());
                }
                Err(e) => tracing::warn!(machine = %id, error = %e, "cannot remove orphan"),
            }
        }
        report.adopted.sort();
        report.vanished.sort();
        report.orphans_removed.sort();
        report.half_built_removed.sort();
        report.deletes_finished.sort();
        Ok(report)
    }
}

/// Whether each of `dirs`' filesystems has at least `min_mib` MiB free (for unprivileged
/// users, as rnr's writes may not dip into root's reserve either way); why not otherwise.
fn disks_have_room(dirs: &[PathBuf], min_mib: u64) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    for dir in dirs {
        let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
            .map_err(|_| format!("{} has a NUL byte", dir.display()))?;
        // SAFETY: statvfs is plain old data; zeroed is a valid initial value.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: statvfs(2) reads a NUL-terminated path and writes into the struct it is
        // given; both outlive the call.
        if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
            return Err(format!(
                "cannot read the free space of {}: {}",
                dir.display(),
                std::io::Error::last_os_error()
            ));
        }
        #[allow(clippy::unnecessary_cast)] // u64 on some targets, u32 on others
        let free_mib = (st.f_bavail as u64).saturating_mul(st.f_frsize as u64) >> 20;
        if free_mib < min_mib {
            return Err(format!(
                "{} has {free_mib} MiB free, under the {min_mib} MiB it must keep free \
                 (min_free_disk_mib)",
                dir.display()
            ));
        }
    }
    Ok(())
}

/// `None` if `check` succeeds within `limit`; else what is wrong with `part`.
async fn within(
    part: &str,
    limit: Duration,
    check: impl Future<Output = Result<(), String>>,
) -> Option<String> {
    match tokio::time::timeout(limit, check).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(format!("{part}: {e}")),
        Err(_) => Some(format!("{part}: no answer within {} ms", limit.as_millis())),
    }
}

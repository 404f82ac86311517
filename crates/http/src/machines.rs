//! `/api/v1/machines`: create, list, get, delete, exec, extend.

use crate::auth::Caller;
use crate::error::{ErrorBody, HttpError};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::routes::{Access::ApiKey, Routes};
use crate::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json};
use rnr_core::{CreateMachine, ExecCommand, LimitsRequest, Machine, MachineState};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use utoipa::{IntoParams, ToSchema};

/// Routes that take an API key.
pub(crate) fn routes() -> Routes {
    Routes::new()
        .route(
            "/api/v1/machines",
            ApiKey,
            post(create_machine).get(list_machines),
        )
        .route(
            "/api/v1/machines/{id}",
            ApiKey,
            get(get_machine).delete(delete_machine),
        )
        .route("/api/v1/machines/{id}/exec", ApiKey, post(exec_machine))
        .route("/api/v1/machines/{id}/extend", ApiKey, post(extend_machine))
}

/// Resource caps; omitted fields take the platform's defaults.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsInput {
    /// Memory cap in MiB.
    pub memory_mib: Option<u64>,
    /// CPU cap in thousandths of a core (1000 = one core).
    pub cpu_millis: Option<u64>,
    /// Most processes and threads.
    pub pids: Option<u64>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateMachineRequest {
    /// `container` (the default) or `vm`: a VM with a kernel of its own, where the platform
    /// runs the vm driver (`[vm] enabled`); 422 `invalid_request` naming why otherwise.
    #[schema(value_type = Option<String>, example = "vm")]
    pub kind: Option<rnr_core::MachineKind>,
    /// Image name (`rnr image list`); the platform's default when omitted.
    pub image: Option<String>,
    /// Lifetime; the machine is deleted when it runs out.
    pub ttl_seconds: Option<u64>,
    pub limits: Option<LimitsInput>,
    /// Outbound network access (if the platform allows it).
    pub outbound: Option<bool>,
    /// Who the machine is for, e.g. a learner id.
    pub owner: Option<String>,
    /// Exercise to set the machine up for: image, limits and lifetime come from its
    /// manifest unless given here; its setup has run when the machine is returned.
    pub exercise: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LimitsOutput {
    pub memory_mib: u64,
    pub cpu_millis: u64,
    pub pids: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MachineOutput {
    pub id: String,
    /// `creating`, `running`, `failed` or `deleted`.
    pub state: String,
    pub image: String,
    pub hostname: String,
    /// The machine's IP address on the platform network.
    pub address: Option<String>,
    pub limits: LimitsOutput,
    pub outbound: bool,
    pub owner: Option<String>,
    /// Why the machine failed, when it did.
    pub error: Option<String>,
    /// RFC 3339 timestamps.
    pub created_at: String,
    pub expires_at: String,
    pub deleted_at: Option<String>,
}

/// A Unix-milliseconds time as RFC 3339.
pub(crate) fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

impl From<Machine> for MachineOutput {
    fn from(m: Machine) -> Self {
        Self {
            state: m.state.as_str().to_string(),
            limits: LimitsOutput {
                memory_mib: m.memory_mib,
                cpu_millis: m.cpu_millis,
                pids: m.pids,
            },
            created_at: rfc3339(m.created_at),
            expires_at: rfc3339(m.expires_at),
            deleted_at: m.deleted_at.map(rfc3339),
            id: m.id,
            image: m.image,
            hostname: m.hostname,
            address: m.address,
            outbound: m.outbound,
            owner: m.owner,
            error: m.error,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MachineList {
    pub machines: Vec<MachineOutput>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Comma-separated states to include; default `creating,running,failed`.
    pub state: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecInput {
    /// Program and arguments, run without a shell.
    pub argv: Vec<String>,
    /// Text fed to the program's standard input.
    pub stdin: Option<String>,
    pub env: Option<BTreeMap<String, String>>,
    /// User name or uid; root by default.
    pub user: Option<String>,
    pub workdir: Option<String>,
    /// Deadline after which the command is killed (default 30).
    pub timeout_seconds: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ExecOutput {
    /// `null` when the command timed out and was killed.
    pub exit_code: Option<i64>,
    /// Output as UTF-8 (invalid sequences replaced), at most 1 MiB per stream.
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
    /// Output beyond 1 MiB per stream was dropped.
    pub truncated: bool,
    pub duration_ms: u64,
}

#[utoipa::path(post, path = "/api/v1/machines", request_body = CreateMachineRequest,
    responses(
        (status = 201, description = "Machine created and running", body = MachineOutput),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "`exercise_not_found`: no exercise of that name", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "Invalid field or unknown image", body = ErrorBody),
        (status = 429, description = "`quota_exceeded`: the key's most machines at once or creations per minute (with `Retry-After`); the message names the limit and its value", body = ErrorBody),
        (status = 503, description = "Capacity reached or driver unavailable", body = ErrorBody),
    ), security(("api_key" = [])), tag = "machines")]
pub async fn create_machine(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<CreateMachineRequest>,
) -> Result<Response, HttpError> {
    let limits = req.limits.unwrap_or_default();
    let create = CreateMachine {
        kind: req.kind,
        image: req.image,
        ttl_seconds: req.ttl_seconds,
        limits: LimitsRequest {
            memory_mib: limits.memory_mib,
            cpu_millis: limits.cpu_millis,
            pids: limits.pids,
        },
        outbound: req.outbound,
        owner: req.owner,
        api_key_id: Some(caller.key_id),
        client_addr: None,
        quotas: Vec::new(),
        setup_follows: false,
    };
    let machine = match req.exercise {
        Some(exercise) => state.checker.create_machine(create, &exercise).await?,
        None => state.platform.create(create).await?,
    };
    Ok((StatusCode::CREATED, Json(MachineOutput::from(machine))).into_response())
}

#[utoipa::path(get, path = "/api/v1/machines", params(ListQuery),
    responses(
        (status = 200, body = MachineList),
        (status = 401, body = ErrorBody),
        (status = 422, description = "Unknown state", body = ErrorBody),
    ), security(("api_key" = [])), tag = "machines")]
pub async fn list_machines(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<MachineList>, HttpError> {
    let states = match query.state.as_deref() {
        None => vec![
            MachineState::Creating,
            MachineState::Running,
            MachineState::Failed,
        ],
        Some(list) => list
            .split(',')
            .map(|s| {
                s.trim()
                    .parse::<MachineState>()
                    .map_err(|e| HttpError::invalid(format!("state: {e}")))
            })
            .collect::<Result<_, _>>()?,
    };
    let machines = state.platform.list(&states).await?;
    Ok(Json(MachineList {
        machines: machines.into_iter().map(MachineOutput::from).collect(),
    }))
}

#[utoipa::path(get, path = "/api/v1/machines/{id}", params(("id" = String, Path)),
    responses(
        (status = 200, body = MachineOutput),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ), security(("api_key" = [])), tag = "machines")]
pub async fn get_machine(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<MachineOutput>, HttpError> {
    Ok(Json(state.platform.get(&id).await?.into()))
}

#[utoipa::path(delete, path = "/api/v1/machines/{id}", params(("id" = String, Path)),
    responses(
        (status = 204, description = "Deleted (also when it already was)"),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ), security(("api_key" = [])), tag = "machines")]
pub async fn delete_machine(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, HttpError> {
    state.platform.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/machines/{id}/exec", params(("id" = String, Path)),
    request_body = ExecInput,
    responses(
        (status = 200, body = ExecOutput),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Machine not running", body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 422, body = ErrorBody),
    ), security(("api_key" = [])), tag = "machines")]
pub async fn exec_machine(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<ExecInput>,
) -> Result<Json<ExecOutput>, HttpError> {
    let started = Instant::now();
    let outcome = state
        .platform
        .exec(
            &id,
            ExecCommand {
                argv: req.argv,
                stdin: req.stdin.map(|s| s.into_bytes().into()),
                env: req.env.unwrap_or_default().into_iter().collect(),
                user: req.user,
                workdir: req.workdir,
                timeout: Duration::from_secs(req.timeout_seconds.unwrap_or(30)),
            },
        )
        .await?;
    Ok(Json(ExecOutput {
        exit_code: outcome.exit_code,
        stdout: String::from_utf8_lossy(&outcome.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&outcome.stderr).into_owned(),
        timed_out: outcome.timed_out,
        truncated: outcome.truncated,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtendInput {
    /// How much longer the machine may live, added to its current expiry. Its whole
    /// lifetime, from creation, stays within the platform's `max_ttl_seconds`.
    #[schema(minimum = 1)]
    pub ttl_seconds: u64,
}

/// Extend a running machine's lifetime
///
/// Adds `ttl_seconds` to the machine's expiry. Refused with 422 `invalid_request` when the
/// machine would then live longer, from its creation, than the platform allows
/// (`max_ttl_seconds`); the message says how much is left.
#[utoipa::path(post, path = "/api/v1/machines/{id}/extend", params(("id" = String, Path)),
    request_body = ExtendInput,
    responses(
        (status = 200, description = "The machine with its new `expires_at`", body = MachineOutput),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, description = "`machine_not_found`", body = ErrorBody),
        (status = 409, description = "`machine_not_running`: deleted, failed or still creating", body = ErrorBody),
        (status = 415, body = ErrorBody),
        (status = 422, description = "`invalid_request`: `ttl_seconds` is 0 or beyond the maximum lifetime", body = ErrorBody),
    ), security(("api_key" = [])), tag = "machines")]
pub async fn extend_machine(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<ExtendInput>,
) -> Result<Json<MachineOutput>, HttpError> {
    let m = state
        .platform
        .extend(&id, Duration::from_secs(req.ttl_seconds))
        .await?;
    Ok(Json(m.into()))
}

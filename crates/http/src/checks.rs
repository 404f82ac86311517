//! Check runs: `POST /api/v1/machines/{id}/checks` queues one (202), `GET
//! /api/v1/checks/{id}` reports it, `GET /api/v1/machines/{id}/checks/stream` pushes live
//! results (SSE), `POST /api/v1/machines/{id}/activity` feeds live checking. Also the wire
//! form of a check run, which the learner and operator pages get too.

use crate::error::{ErrorBody, HttpError};
use crate::extract::ApiPath;
use crate::machines::rfc3339;
use crate::routes::{Access::ApiKey, Routes};
use crate::AppState;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use bytes::Bytes;
use rnr_checker::{CheckRunRow, CheckRunState, CheckTrigger, Checker, RunReport, WebhookState};
use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use utoipa::ToSchema;

/// Routes that take an API key.
pub(crate) fn routes() -> Routes {
    Routes::new()
        .route("/api/v1/machines/{id}/checks", ApiKey, post(start_checks))
        .route(
            "/api/v1/machines/{id}/checks/stream",
            ApiKey,
            get(stream_checks),
        )
        .route("/api/v1/machines/{id}/activity", ApiKey, post(activity))
        .route("/api/v1/checks/{id}", ApiKey, get(get_checks))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartChecksRequest {
    /// Exercise whose checks to run; default: the one the machine was created for.
    pub exercise: Option<String>,
    /// Where to POST the result when the run ends (signed, retried): a public address,
    /// unless the operator's `[checker] webhook_allow` admits it; 422 otherwise.
    pub webhook_url: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StartChecksOutput {
    /// The run's id, for `GET /api/v1/checks/{id}`.
    pub id: String,
    #[schema(value_type = String, example = "queued")]
    pub state: CheckRunState,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CheckResultOutput {
    pub name: String,
    /// `passed`, `failed`, `errored` (the check broke) or `skipped` (a check it needs did
    /// not pass).
    pub status: String,
    /// The author's message for the learner, when it did not pass.
    pub message: Option<String>,
    pub hint: Option<String>,
    /// What was observed.
    pub detail: String,
    pub duration_ms: u64,
    pub points: u32,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookOutput {
    pub url: String,
    /// `pending`, `delivered` or `failed` (given up).
    #[schema(value_type = Option<String>, example = "delivered")]
    pub state: Option<WebhookState>,
    pub attempts: i64,
    pub error: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CheckRunOutput {
    pub id: String,
    pub machine_id: String,
    pub exercise: String,
    /// `queued`, `running`, `done` or `errored` (the run itself could not be carried out).
    #[schema(value_type = String, example = "done")]
    pub state: CheckRunState,
    /// `api`, `live` or `learner` (the learner's Check button).
    #[schema(value_type = String, example = "api")]
    pub trigger: CheckTrigger,
    /// Points of passed checks over all points (0–1), when done.
    pub score: Option<f64>,
    pub passed: Option<usize>,
    pub failed: Option<usize>,
    pub errored: Option<usize>,
    pub skipped: Option<usize>,
    pub results: Vec<CheckResultOutput>,
    /// Why the run errored.
    pub error: Option<String>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub duration_ms: Option<u64>,
    pub webhook: Option<WebhookOutput>,
}

fn results(report: &RunReport) -> Vec<CheckResultOutput> {
    report
        .results
        .iter()
        .map(|r| CheckResultOutput {
            name: r.name.clone(),
            status: r.status.as_str().to_string(),
            message: r.message.clone(),
            hint: r.hint.clone(),
            detail: r.detail.clone(),
            duration_ms: r.duration_ms,
            points: r.points,
        })
        .collect()
}

/// The wire form of a check run (also what the learner pages show).
pub fn output(run: CheckRunRow) -> CheckRunOutput {
    let report: Option<RunReport> = run
        .report
        .as_deref()
        .and_then(|r| serde_json::from_str(r).ok());
    CheckRunOutput {
        score: report.as_ref().map(|r| r.score),
        passed: report.as_ref().map(|r| r.passed),
        failed: report.as_ref().map(|r| r.failed),
        errored: report.as_ref().map(|r| r.errored),
        skipped: report.as_ref().map(|r| r.skipped),
        duration_ms: report.as_ref().map(|r| r.duration_ms),
        results: report.as_ref().map(results).unwrap_or_default(),
        webhook: run.webhook_url.map(|url| WebhookOutput {
            url,
            state: run.webhook_state,
            attempts: run.webhook_attempts,
            error: run.webhook_error,
        }),
        created_at: rfc3339(run.created_at),
        started_at: run.started_at.map(rfc3339),
        finished_at: run.finished_at.map(rfc3339),
        id: run.id,
        machine_id: run.machine_id,
        exercise: run.exercise,
        state: run.state,
        trigger: run.trigger,
        error: run.error,
    }
}

/// Queue a check run
#[utoipa::path(
    post, path = "/api/v1/machines/{id}/checks", tag = "checks",
    params(("id" = String, Path, description = "Machine id")),
    request_body(content = StartChecksRequest, description = "Optional; an empty body runs the machine's own exercise"),
    responses(
        (status = 202, description = "Queued", body = StartChecksOutput),
        (status = 404, description = "No such machine or exercise", body = ErrorBody),
        (status = 422, description = "No exercise to run, or a bad webhook URL", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn start_checks(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    body: Bytes,
) -> Result<Response, HttpError> {
    let req: StartChecksRequest = if body.iter().all(u8::is_ascii_whitespace) {
        StartChecksRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            if e.is_syntax() || e.is_eof() {
                HttpError::new(StatusCode::BAD_REQUEST, "invalid_json", e.to_string())
            } else {
                HttpError::invalid(e.to_string())
            }
        })?
    };
    let run = state
        .checker
        .enqueue(&id, req.exercise.as_deref(), req.webhook_url.as_deref())
        .await?;
    let location = format!("/api/v1/checks/{run}");
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(StartChecksOutput {
            id: run,
            state: CheckRunState::Queued,
        }),
    )
        .into_response())
}

/// A check run: its state, per-check results and score
#[utoipa::path(
    get, path = "/api/v1/checks/{id}", tag = "checks",
    params(("id" = String, Path, description = "Check run id")),
    responses(
        (status = 200, description = "The run", body = CheckRunOutput),
        (status = 404, description = "No such run", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn get_checks(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<CheckRunOutput>, HttpError> {
    Ok(Json(output(state.checker.get_run(&id).await?)))
}

/// Live results of a machine's checks (Server-Sent Events)
///
/// Each `results` event holds a run (as `GET /api/v1/checks/{id}`): first the latest
/// finished one, then every later run that changed a check's status.
#[utoipa::path(
    get, path = "/api/v1/machines/{id}/checks/stream", tag = "checks",
    params(("id" = String, Path, description = "Machine id")),
    responses(
        (status = 200, description = "text/event-stream of `results` events"),
        (status = 404, description = "No such machine", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn stream_checks(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, HttpError> {
    state.platform.get(&id).await?;
    results_sse(&state.checker, &id).await
}

/// Server-sent events for machine `id`: its latest run at once, then every run that changed
/// a check's status (event `results`, data: a check run as JSON). The caller has checked
/// that the requester may see this machine.
pub(crate) async fn results_sse(checker: &Checker, id: &str) -> Result<Response, HttpError> {
    // Subscribed before reading the latest run, so no run can fall between the two.
    let rx = checker.subscribe(id);
    let first = checker.last_run(id).await?;
    let initial = futures::stream::iter(first.map(output));
    let checker = checker.clone();
    let later = futures::stream::unfold((rx, checker), |(mut rx, checker)| async move {
        loop {
            match rx.recv().await {
                Ok(ev) => {
                    // The run row is written just after the event; build it from the event.
                    if let Ok(mut run) = checker.get_run(&ev.run_id).await {
                        run.report = serde_json::to_string(&ev.report).ok();
                        if !run.state.finished() {
                            run.state = CheckRunState::Done;
                        }
                        return Some((output(run), (rx, checker)));
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    use futures::StreamExt;
    let events = initial.chain(later).map(|run| {
        Ok::<_, Infallible>(
            Event::default()
                .event("results")
                .json_data(&run)
                .unwrap_or_else(|_| Event::default().event("error")),
        )
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// Report learner activity on a machine (live checking re-runs its checks once it is quiet)
#[utoipa::path(
    post, path = "/api/v1/machines/{id}/activity", tag = "checks",
    params(("id" = String, Path, description = "Machine id")),
    responses(
        (status = 204, description = "Noted"),
        (status = 404, description = "No such machine", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn activity(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, HttpError> {
    state.platform.get(&id).await?;
    state.checker.notify_activity(&id);
    Ok(StatusCode::NO_CONTENT)
}

//! The learner's routes: the exercise index and page, signed links (full page and
//! `/embed/…`), the learner API the page calls (`/learn/api/…`: open a session, reset,
//! extend, run checks, read results, live results) and, for an LMS with an API key,
//! `POST /api/v1/links`. The UI (rnr-ui) renders and decides; this is the wire.

use crate::auth::{cookie, Learner, SignedLink, LEARNER_COOKIE};
use crate::checks::{output as check_run_output, results_sse, CheckRunOutput};
use crate::error::{ErrorBody, HttpError};
use crate::extract::{ApiJson, ApiPath};
use crate::{html, AppState};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rnr_core::Machine;
use rnr_ui::pages::{self, Mode};
use serde::{Deserialize, Serialize};

/// The pages and the learner API (authenticated by the learner's session).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/exercises") }))
        .route("/exercises", get(index))
        .route("/exercises/{name}", get(exercise_page))
        .route("/learn/{token}", get(link_page))
        .route("/embed/{token}", get(embed_page))
        .route("/learn/api/exercises/{name}/session", post(session))
        .route("/learn/api/machines/{id}/reset", post(reset))
        .route("/learn/api/machines/{id}/extend", post(extend))
        .route("/learn/api/machines/{id}/checks", post(start_checks))
        .route("/learn/api/machines/{id}/events", get(events))
        .route("/learn/api/checks/{id}", get(get_checks))
        .route(pages::CSS.path, get(|| async { asset(&pages::CSS) }))
        .route(
            pages::EXERCISE_JS.path,
            get(|| async { asset(&pages::EXERCISE_JS) }),
        )
}

/// Routes that take an API key.
pub fn api_routes() -> Router<AppState> {
    Router::new().route("/api/v1/links", post(create_link))
}

fn now_s() -> i64 {
    rnr_core::now_ms() / 1000
}

async fn index(State(state): State<AppState>) -> Response {
    html(StatusCode::OK, state.ui.index_page())
}

/// The exercise page for `learner`, or a page saying why there is none.
fn page_for(state: &AppState, name: &str, learner: &str, mode: Mode) -> Response {
    match state.ui.exercise(name) {
        Ok(ex) => html(StatusCode::OK, state.ui.exercise_page(&ex, learner, mode)),
        Err(e) => {
            let e = HttpError::from(e);
            html(
                e.status,
                pages::error_page("Exercise not found", &e.message),
            )
        }
    }
}

/// `/exercises/{name}`: an anonymous learner gets (or keeps) a session cookie.
async fn exercise_page(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    headers: HeaderMap,
) -> Response {
    let known = cookie(&headers, LEARNER_COOKIE).and_then(|t| state.ui.signer().verify_learner(t));
    let learner = known.clone().unwrap_or_else(rnr_ui::anonymous_learner);
    let mut resp = page_for(&state, &name, &learner, Mode::Page);
    if known.is_none() {
        let c = format!(
            "{LEARNER_COOKIE}={}; Path=/; HttpOnly; SameSite=Lax; Max-Age=2592000",
            state.ui.signer().learner_token(&learner)
        );
        if let Ok(v) = HeaderValue::from_str(&c) {
            resp.headers_mut().insert(header::SET_COOKIE, v);
        }
    }
    resp
}

/// `/learn/{token}`: the full page for a learner named by a signed link.
async fn link_page(State(state): State<AppState>, SignedLink(c): SignedLink) -> Response {
    page_for(&state, &c.exercise, &c.learner, Mode::Page)
}

/// `/embed/{token}`: the compact page for an LMS iframe; it posts `rnr:passed` to its parent
/// when every check passes (docs/embedding.md).
async fn embed_page(State(state): State<AppState>, SignedLink(c): SignedLink) -> Response {
    page_for(&state, &c.exercise, &c.learner, Mode::Embed)
}

#[derive(Debug, Serialize)]
pub struct SessionMachine {
    pub id: String,
    pub state: String,
    /// Unix seconds.
    pub expires_at: i64,
    pub expires_in_seconds: i64,
}

#[derive(Debug, Serialize)]
pub struct SessionTerminal {
    pub id: String,
    pub page_url: String,
}

#[derive(Debug, Serialize)]
pub struct CheckInfo {
    pub name: String,
    pub hint: Option<String>,
}

/// What the exercise page needs to show a learner's machine.
#[derive(Debug, Serialize)]
pub struct Session {
    pub exercise: String,
    pub title: String,
    pub machine: SessionMachine,
    pub terminal: SessionTerminal,
    pub extend_seconds: u64,
    pub checks: Vec<CheckInfo>,
    pub last_run: Option<CheckRunOutput>,
}

fn session_machine(m: &Machine) -> SessionMachine {
    SessionMachine {
        id: m.id.clone(),
        state: m.state.as_str().into(),
        expires_at: m.expires_at / 1000,
        expires_in_seconds: (m.expires_at / 1000 - now_s()).max(0),
    }
}

fn session_output(state: &AppState, s: rnr_ui::Session) -> Session {
    let checks = s
        .exercise
        .checks()
        .iter()
        .map(|c| CheckInfo {
            name: c.name.clone(),
            hint: c.hint.clone(),
        })
        .collect();
    Session {
        machine: session_machine(&s.machine),
        terminal: SessionTerminal {
            id: s.terminal.id,
            page_url: s.terminal.page_url,
        },
        extend_seconds: state.ui.config().extend.as_secs(),
        checks,
        last_run: s.last_run.map(check_run_output),
        title: s.exercise.manifest.title,
        exercise: s.exercise.name,
    }
}

/// `POST /learn/api/exercises/{name}/session`: the learner's machine for the exercise
/// (created if there is none) with its terminal.
async fn session(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    Learner(learner): Learner,
) -> Result<Json<Session>, HttpError> {
    let ex = state.ui.exercise(&name)?;
    let s = state.ui.open_session(&learner, ex).await?;
    Ok(Json(session_output(&state, s)))
}

/// `POST /learn/api/machines/{id}/reset`: a fresh machine for the same exercise.
async fn reset(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    Learner(learner): Learner,
) -> Result<Json<Session>, HttpError> {
    let s = state.ui.reset(&learner, &id).await?;
    Ok(Json(session_output(&state, s)))
}

/// `POST /learn/api/machines/{id}/extend`: more time, within the platform's maximum.
async fn extend(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    Learner(learner): Learner,
) -> Result<Json<SessionMachine>, HttpError> {
    let m = state.ui.extend(&learner, &id).await?;
    Ok(Json(session_machine(&m)))
}

#[derive(Debug, Serialize)]
pub struct Started {
    pub id: String,
}

/// `POST /learn/api/machines/{id}/checks`
async fn start_checks(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    Learner(learner): Learner,
) -> Result<Response, HttpError> {
    let run = state.ui.start_checks(&learner, &id).await?;
    Ok((StatusCode::ACCEPTED, Json(Started { id: run })).into_response())
}

/// `GET /learn/api/checks/{id}`
async fn get_checks(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    Learner(learner): Learner,
) -> Result<Json<CheckRunOutput>, HttpError> {
    let run = state.ui.check_run(&learner, &id).await?;
    Ok(Json(check_run_output(run)))
}

/// `GET /learn/api/machines/{id}/events?learner=…`: live results.
async fn events(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    Learner(learner): Learner,
) -> Result<Response, HttpError> {
    let m = state.ui.owned(&learner, &id).await?;
    results_sse(&state.checker, &m.id).await
}

/// The pages' assets change with the binary only; browsers revalidate them.
pub(crate) fn asset(a: &pages::Asset) -> Response {
    (
        [
            (header::CONTENT_TYPE, a.content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        a.body,
    )
        .into_response()
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LinkRequest {
    /// The LMS's id for the learner: 1 to 90 letters, digits or `_@.:-`.
    #[schema(min_length = 1, max_length = 90)]
    pub learner: String,
    /// Exercise name, as in `/exercises/{name}`.
    pub exercise: String,
    /// How long the link stays valid (default: a day; at most 30 days).
    #[schema(minimum = 1, maximum = 2592000)]
    pub ttl_seconds: Option<u64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LinkResponse {
    pub learner: String,
    pub exercise: String,
    /// The full page.
    pub url: String,
    /// The compact page for an iframe.
    pub embed_url: String,
    /// Unix seconds.
    pub expires_at: i64,
    /// The learner's machine, created now so the learner does not wait for it.
    pub machine_id: String,
}

/// Create a learner's machine and signed links to it
///
/// For an LMS: the machine for this learner and exercise (the running one if there is one,
/// else a new one with the exercise set up), owned by `lms:<learner>`, and two signed links
/// that expire at `expires_at`. `url` is the full exercise page; `embed_url` is a compact
/// page for an `<iframe>`, which posts `{type: "rnr:passed", …}` to its parent window when
/// every check passes. The link is all the learner's browser needs: no API key reaches it.
/// See docs/embedding.md.
#[utoipa::path(
    post, path = "/api/v1/links", tag = "links",
    request_body = LinkRequest,
    responses(
        (status = 201, description = "Machine ready; the links to give the learner", body = LinkResponse),
        (status = 400, description = "`invalid_json`: malformed JSON", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "`exercise_not_found`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: the body is not JSON", body = ErrorBody),
        (status = 422, description = "`invalid_request`: a missing or invalid field", body = ErrorBody),
        (status = 500, description = "`setup_failed`: the exercise's setup failed on the new machine", body = ErrorBody),
        (status = 503, description = "`capacity_exceeded` (with `Retry-After`) or `driver_unavailable`", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn create_link(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<LinkRequest>,
) -> Result<Response, HttpError> {
    let link = state
        .ui
        .create_link(&req.learner, &req.exercise, req.ttl_seconds)
        .await?;
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let base = state.ui.base_url(host);
    let body = LinkResponse {
        learner: req.learner,
        url: format!("{base}/learn/{}", link.token),
        embed_url: format!("{base}/embed/{}", link.token),
        expires_at: link.claims.expires_at,
        machine_id: link.session.machine.id,
        exercise: link.session.exercise.name,
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

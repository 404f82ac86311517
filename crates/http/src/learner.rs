//! The learner's routes: the exercise index and page, signed links (full page and
//! `/embed/…`), the learner API the page calls (`/learn/api/…`: open a session, reset,
//! extend, run checks, read results, live results) and, for an LMS with an API key,
//! `POST /api/v1/links`. The UI (rnr-ui) renders and decides; this is the wire.
//!
//! A page holds a learner token for its one exercise; the learner API takes it and
//! nothing else (the visitor cookie only names an anonymous browser to its page).

use crate::auth::{cookie, Caller, ClientAddr, Learner, SignedLink, LEARNER_COOKIE};
use crate::checks::{output as check_run_output, results_sse, CheckRunOutput};
use crate::error::{ErrorBody, HttpError};
use crate::extract::{ApiJson, ApiPath};
use crate::routes::{
    Access::{ApiKey, Learner as LearnerAccess, Public, SignedLink as Link},
    Routes,
};
use crate::security::PageKind;
use crate::{html, AppState};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Json};
use rnr_core::Machine;
use rnr_ui::pages::{self, Mode};
use rnr_ui::LearnerClaims;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The pages (public, or a signed link), the learner API (a learner token) and, for an
/// LMS, `POST /api/v1/links` (an API key).
pub(crate) fn routes() -> Routes {
    Routes::new()
        .route("/", Public, get(|| async { Redirect::to("/exercises") }))
        .route("/exercises", Public, get(index))
        .route("/exercises/{name}", Public, get(exercise_page))
        .route("/learn/{token}", Link, get(link_page))
        .route("/embed/{token}", Link, get(embed_page))
        .route(
            "/learn/api/exercises/{name}/session",
            LearnerAccess,
            post(session),
        )
        .route("/learn/api/token", LearnerAccess, post(refresh_token))
        .route("/learn/api/machines/{id}/reset", LearnerAccess, post(reset))
        .route(
            "/learn/api/machines/{id}/extend",
            LearnerAccess,
            post(extend),
        )
        .route(
            "/learn/api/machines/{id}/checks",
            LearnerAccess,
            post(start_checks),
        )
        .route(
            "/learn/api/machines/{id}/events",
            LearnerAccess,
            get(events),
        )
        .route("/learn/api/checks/{id}", LearnerAccess, get(get_checks))
        .route(
            pages::CSS.path,
            Public,
            get(|| async { asset(&pages::CSS) }),
        )
        .route(
            pages::EXERCISE_JS.path,
            Public,
            get(|| async { asset(&pages::EXERCISE_JS) }),
        )
        .route("/api/v1/links", ApiKey, post(create_link))
}

fn now_s() -> i64 {
    rnr_core::now_ms() / 1000
}

async fn index(State(state): State<AppState>) -> Response {
    html(StatusCode::OK, state.ui.index_page())
}

/// The exercise page for the learner of `claims`, or a page saying why there is none.
fn page_for(state: &AppState, claims: &LearnerClaims, mode: Mode) -> Response {
    match state.ui.exercise(&claims.exercise) {
        Ok(ex) => html(StatusCode::OK, state.ui.exercise_page(&ex, claims, mode)),
        Err(e) => {
            let e = HttpError::from(e);
            html(
                e.status,
                pages::error_page("Exercise not found", &e.message),
            )
        }
    }
}

/// `/exercises/{name}`: an anonymous visitor gets (or keeps) a visitor cookie, and the
/// page a learner token for this exercise. Refused (403) when anonymous learners are
/// turned off.
async fn exercise_page(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    headers: HeaderMap,
) -> Response {
    let visitor = match state.ui.visitor(cookie(&headers, LEARNER_COOKIE)) {
        Ok(v) => v,
        Err(e) => {
            let e = HttpError::from(e);
            return html(
                e.status,
                pages::error_page("Open this exercise from your course", &e.message),
            );
        }
    };
    let claims = state
        .ui
        .learner_claims(&visitor.learner, &name, visitor.expires_at, None);
    let mut resp = page_for(&state, &claims, Mode::Page);
    if let Some(token) = visitor.new_cookie {
        let c = format!(
            "{LEARNER_COOKIE}={token}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}",
            (visitor.expires_at - now_s()).max(0)
        );
        if let Ok(v) = HeaderValue::from_str(&c) {
            resp.headers_mut().insert(header::SET_COOKIE, v);
        }
    }
    resp
}

/// `/learn/{token}`: the full page for a learner named by a signed link.
async fn link_page(State(state): State<AppState>, SignedLink(c): SignedLink) -> Response {
    page_for(&state, &state.ui.link_learner(&c), Mode::Page)
}

/// `/embed/{token}`: the compact page for an LMS iframe; it posts `rnr:passed` to its parent
/// when every check passes (docs/embedding.md). The only page other sites may frame
/// (`[ui] embed_origins`), with the terminal page inside it.
async fn embed_page(State(state): State<AppState>, SignedLink(c): SignedLink) -> Response {
    let mut resp = page_for(&state, &state.ui.link_learner(&c), Mode::Embed);
    resp.extensions_mut().insert(PageKind::Embed);
    resp
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionMachine {
    pub id: String,
    pub state: String,
    /// Unix seconds.
    pub expires_at: i64,
    pub expires_in_seconds: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionTerminal {
    pub id: String,
    /// The terminal page with an owner token (relative URL).
    pub page_url: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CheckInfo {
    pub name: String,
    pub hint: Option<String>,
}

/// What the exercise page needs to show a learner's machine.
#[derive(Debug, Serialize, ToSchema)]
pub struct Session {
    pub exercise: String,
    pub title: String,
    pub machine: SessionMachine,
    pub terminal: SessionTerminal,
    pub extend_seconds: u64,
    pub checks: Vec<CheckInfo>,
    pub last_run: Option<CheckRunOutput>,
    /// When the learner token used expires (unix s); refresh it before with
    /// `POST /learn/api/token`.
    pub token_expires_at: i64,
}

/// A fresh learner token.
#[derive(Debug, Serialize, ToSchema)]
pub struct LearnerToken {
    pub token: String,
    /// Unix seconds; never later than the link or visitor cookie it came from.
    pub expires_at: i64,
}

fn session_machine(m: &Machine) -> SessionMachine {
    SessionMachine {
        id: m.id.clone(),
        state: m.state.as_str().into(),
        expires_at: m.expires_at / 1000,
        expires_in_seconds: (m.expires_at / 1000 - now_s()).max(0),
    }
}

fn session_output(state: &AppState, claims: &LearnerClaims, s: rnr_ui::Session) -> Session {
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
        token_expires_at: claims.expires_at,
    }
}

/// Open the learner's session for an exercise
///
/// The learner's machine for the exercise (created and set up if there is none) and its
/// terminal. The learner token must be for this exercise.
#[utoipa::path(post, path = "/learn/api/exercises/{name}/session", tag = "learner",
    params(("name" = String, Path, description = "Exercise name")),
    responses(
        (status = 200, description = "The session", body = Session),
        (status = 401, description = "`unauthorized` (no or a forged token, a revoked link) or `token_expired`", body = ErrorBody),
        (status = 403, description = "`wrong_exercise` (a token of another exercise) or `anonymous_disabled`", body = ErrorBody),
        (status = 404, description = "`exercise_not_found`", body = ErrorBody),
        (status = 429, description = "`quota_exceeded` (with `Retry-After`): anonymous machines per address or overall, or the link's API key's quotas; the message names the limit and its value", body = ErrorBody),
        (status = 503, description = "`capacity_exceeded` (with `Retry-After`)", body = ErrorBody),
    ), security(("learner" = [])))]
pub(crate) async fn session(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    Learner(claims): Learner,
    client: ClientAddr,
) -> Result<Json<Session>, HttpError> {
    let ex = state.ui.exercise(&name)?;
    let s = state
        .ui
        .open_session(&claims, ex, client.text().as_deref())
        .await?;
    Ok(Json(session_output(&state, &claims, s)))
}

/// A fresh learner token for the same learner and exercise
#[utoipa::path(post, path = "/learn/api/token", tag = "learner",
    responses(
        (status = 200, description = "A fresh token", body = LearnerToken),
        (status = 401, description = "`unauthorized` or `token_expired`: reload the page", body = ErrorBody),
        (status = 403, description = "`anonymous_disabled`", body = ErrorBody),
    ), security(("learner" = [])))]
pub(crate) async fn refresh_token(
    State(state): State<AppState>,
    Learner(claims): Learner,
) -> Json<LearnerToken> {
    let (token, expires_at) = state.ui.refresh(&claims);
    Json(LearnerToken { token, expires_at })
}

/// Reset: delete the learner's machine and start a fresh one for the same exercise
#[utoipa::path(post, path = "/learn/api/machines/{id}/reset", tag = "learner",
    params(("id" = String, Path, description = "The learner's machine")),
    responses(
        (status = 200, description = "The new session", body = Session),
        (status = 401, description = "`unauthorized` or `token_expired`", body = ErrorBody),
        (status = 403, description = "`anonymous_disabled`", body = ErrorBody),
        (status = 404, description = "`not_found`: not this learner's machine for this exercise", body = ErrorBody),
        (status = 429, description = "`quota_exceeded` (with `Retry-After`)", body = ErrorBody),
    ), security(("learner" = [])))]
pub(crate) async fn reset(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    Learner(claims): Learner,
    client: ClientAddr,
) -> Result<Json<Session>, HttpError> {
    let s = state
        .ui
        .reset(&claims, &id, client.text().as_deref())
        .await?;
    Ok(Json(session_output(&state, &claims, s)))
}

/// More time: one press adds `[ui]` extend time, within the platform's maximum lifetime
#[utoipa::path(post, path = "/learn/api/machines/{id}/extend", tag = "learner",
    params(("id" = String, Path, description = "The learner's machine")),
    responses(
        (status = 200, description = "The machine with its new expiry", body = SessionMachine),
        (status = 401, description = "`unauthorized` or `token_expired`", body = ErrorBody),
        (status = 403, description = "`anonymous_disabled`", body = ErrorBody),
        (status = 404, description = "`not_found`: not this learner's machine for this exercise", body = ErrorBody),
        (status = 409, description = "`extend_limit_reached` or `machine_not_running`", body = ErrorBody),
    ), security(("learner" = [])))]
pub(crate) async fn extend(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    Learner(claims): Learner,
) -> Result<Json<SessionMachine>, HttpError> {
    let m = state.ui.extend(&claims, &id).await?;
    Ok(Json(session_machine(&m)))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Started {
    pub id: String,
}

/// Check: queue a run of the machine's checks, or join the one already queued
///
/// A machine has at most one run from its learner (or live checking) waiting: pressing
/// again answers with the queued run's id.
#[utoipa::path(post, path = "/learn/api/machines/{id}/checks", tag = "learner",
    params(("id" = String, Path, description = "The learner's machine")),
    responses(
        (status = 202, description = "Queued, or joined", body = Started),
        (status = 401, description = "`unauthorized` or `token_expired`", body = ErrorBody),
        (status = 403, description = "`anonymous_disabled`", body = ErrorBody),
        (status = 404, description = "`not_found`: not this learner's machine for this exercise", body = ErrorBody),
    ), security(("learner" = [])))]
pub(crate) async fn start_checks(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    Learner(claims): Learner,
) -> Result<Response, HttpError> {
    let run = state.ui.start_checks(&claims, &id).await?;
    Ok((StatusCode::ACCEPTED, Json(Started { id: run })).into_response())
}

/// A check run of the learner's machine
#[utoipa::path(get, path = "/learn/api/checks/{id}", tag = "learner",
    params(("id" = String, Path, description = "Check run id")),
    responses(
        (status = 200, description = "The run", body = CheckRunOutput),
        (status = 401, description = "`unauthorized` or `token_expired`", body = ErrorBody),
        (status = 403, description = "`anonymous_disabled`", body = ErrorBody),
        (status = 404, description = "`not_found`: not a run of this learner's machine for this exercise", body = ErrorBody),
    ), security(("learner" = [])))]
pub(crate) async fn get_checks(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    Learner(claims): Learner,
) -> Result<Json<CheckRunOutput>, HttpError> {
    let run = state.ui.check_run(&claims, &id).await?;
    Ok(Json(check_run_output(run)))
}

/// Live results of the learner's machine (Server-Sent Events, `results`)
///
/// The token goes in `?learner=` (EventSource cannot set headers).
#[utoipa::path(get, path = "/learn/api/machines/{id}/events", tag = "learner",
    params(
        ("id" = String, Path, description = "The learner's machine"),
        ("learner" = Option<String>, Query, description = "The learner token, when not in `X-Rnr-Learner`"),
    ),
    responses(
        (status = 200, description = "text/event-stream of `results` events"),
        (status = 401, description = "`unauthorized` or `token_expired`", body = ErrorBody),
        (status = 403, description = "`anonymous_disabled`", body = ErrorBody),
        (status = 404, description = "`not_found`: not this learner's machine for this exercise", body = ErrorBody),
    ), security(("learner" = [])))]
pub(crate) async fn events(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    Learner(claims): Learner,
) -> Result<Response, HttpError> {
    let m = state.ui.owned(&claims, &id).await?;
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
/// The learner's machines count against this API key's quotas, and revoking the key ends
/// the link. See docs/embedding.md.
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
        (status = 429, description = "`quota_exceeded` (with `Retry-After`): the key's most machines at once or creations per minute", body = ErrorBody),
        (status = 500, description = "`setup_failed`: the exercise's setup failed on the new machine", body = ErrorBody),
        (status = 503, description = "`capacity_exceeded` (with `Retry-After`) or `driver_unavailable`", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn create_link(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<LinkRequest>,
) -> Result<Response, HttpError> {
    let link = state
        .ui
        .create_link(
            &req.learner,
            &req.exercise,
            req.ttl_seconds,
            Some(&caller.key_id),
        )
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

//! The learner's side: the exercise index and page, signed links (full page and
//! `/embed/…`), and the learner API the page calls — open a session (machine + terminal),
//! reset, extend, run checks, read results, and live results as server-sent events.

use crate::identity::{valid_learner, LinkClaims};
use crate::{cookie, html, not_found, pages, Web};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use rnr_checker::Exercise;
use rnr_core::{CreateMachine, Machine, MachineState};
use rnr_http::{check_run_output, ApiError, CheckRunOutput};
use serde::{Deserialize, Serialize};

const LEARNER_COOKIE: &str = "rnr_learner";
const LEARNER_HEADER: &str = "x-rnr-learner";

fn now_s() -> i64 {
    rnr_core::now_ms() / 1000
}

/// The learner a request speaks for: the `X-Rnr-Learner` header (pages in an LMS iframe,
/// where cookies may be blocked), a `learner` query parameter (EventSource cannot set
/// headers), or the anonymous session cookie.
fn learner(web: &Web, headers: &HeaderMap, query: Option<&str>) -> Result<String, ApiError> {
    let token = headers
        .get(LEARNER_HEADER)
        .and_then(|v| v.to_str().ok())
        .or(query)
        .or_else(|| cookie(headers, LEARNER_COOKIE))
        .ok_or_else(|| ApiError::unauthorized("no learner session: open the exercise page"))?;
    web.inner
        .signer
        .verify_learner(token)
        .ok_or_else(|| ApiError::unauthorized("invalid learner session"))
}

/// Machine `id` if it belongs to `learner`; "not found" otherwise, whether it exists or not.
async fn owned(web: &Web, learner: &str, id: &str) -> Result<Machine, ApiError> {
    match web.inner.platform.get(id).await {
        Ok(m) if m.owner.as_deref() == Some(learner) => Ok(m),
        Ok(_) | Err(rnr_core::CoreError::NotFound(_)) => Err(not_found(&format!("machine {id}"))),
        Err(e) => Err(e.into()),
    }
}

fn exercise(web: &Web, name: &str) -> Result<Exercise, ApiError> {
    web.inner.checker.exercise(name).map_err(ApiError::from)
}

pub async fn index(State(web): State<Web>) -> Response {
    let mut list = Vec::new();
    if let Some(root) = web.inner.checker.exercises_dir() {
        for dir in rnr_checker::exercise::discover(root).unwrap_or_default() {
            if let Ok(ex) = Exercise::load(&dir) {
                list.push((ex.name, ex.manifest.title, ex.manifest.tags));
            }
        }
    }
    list.sort();
    html(StatusCode::OK, pages::index(&list))
}

fn page_for(web: &Web, name: &str, learner: &str, mode: pages::Mode) -> Response {
    match exercise(web, name) {
        Ok(ex) => html(
            StatusCode::OK,
            pages::exercise(&ex, &web.inner.signer.learner_token(learner), mode),
        ),
        Err(e) => html(
            e.status,
            pages::error_page("Exercise not found", &e.message),
        ),
    }
}

/// `/exercises/{name}`: an anonymous learner gets (or keeps) a session cookie.
pub async fn exercise_page(
    State(web): State<Web>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let known = cookie(&headers, LEARNER_COOKIE).and_then(|t| web.inner.signer.verify_learner(t));
    let learner = known
        .clone()
        .unwrap_or_else(|| format!("anon-{}", rnr_core::random_id(16)));
    let mut resp = page_for(&web, &name, &learner, pages::Mode::Page);
    if known.is_none() {
        let c = format!(
            "{LEARNER_COOKIE}={}; Path=/; HttpOnly; SameSite=Lax; Max-Age=2592000",
            web.inner.signer.learner_token(&learner)
        );
        if let Ok(v) = HeaderValue::from_str(&c) {
            resp.headers_mut().insert(header::SET_COOKIE, v);
        }
    }
    resp
}

/// The claims of a genuine, unexpired link, or the page saying why not.
fn link_claims(web: &Web, token: &str) -> Result<LinkClaims, Box<Response>> {
    let refuse = |status, title, text| Box::new(html(status, pages::error_page(title, text)));
    let Some(c) = web.inner.signer.verify_link(token) else {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "Invalid link",
            "This link is not valid. Ask for a new one.",
        ));
    };
    if c.expires_at <= now_s() {
        return Err(refuse(
            StatusCode::GONE,
            "Link expired",
            "This link has expired. Ask for a new one.",
        ));
    }
    Ok(c)
}

/// `/learn/{token}`: the full page for a learner named by a signed link.
pub async fn link_page(State(web): State<Web>, Path(token): Path<String>) -> Response {
    match link_claims(&web, &token) {
        Ok(c) => page_for(&web, &c.exercise, &c.learner, pages::Mode::Page),
        Err(r) => *r,
    }
}

/// `/embed/{token}`: the compact page for an LMS iframe; it posts `rnr:passed` to its parent
/// when every check passes (docs/embedding.md).
pub async fn embed_page(State(web): State<Web>, Path(token): Path<String>) -> Response {
    match link_claims(&web, &token) {
        Ok(c) => page_for(&web, &c.exercise, &c.learner, pages::Mode::Embed),
        Err(r) => *r,
    }
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

/// The learner's machine for `ex` (created if there is none) with its terminal.
async fn open_session(web: &Web, learner: &str, ex: &Exercise) -> Result<Session, ApiError> {
    let lock = web
        .inner
        .creating
        .lock()
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "lock"))?
        .entry(learner.to_string())
        .or_default()
        .clone();
    let _one_at_a_time = lock.lock().await;
    let existing = web
        .inner
        .platform
        .learner_machine(learner, &ex.name)
        .await?;
    let machine = match existing {
        Some(m) if m.state == MachineState::Running => m,
        _ => {
            let req = CreateMachine {
                owner: Some(learner.to_string()),
                ..Default::default()
            };
            let m = web.inner.checker.create_machine(req, &ex.name).await?;
            tracing::info!(machine = %m.id, exercise = %ex.name, learner, "learner machine created");
            m
        }
    };
    let term = web.page_terminal(&machine.id).await?;
    let last_run = web
        .inner
        .checker
        .last_run(&machine.id)
        .await?
        .map(check_run_output);
    Ok(Session {
        exercise: ex.name.clone(),
        title: ex.manifest.title.clone(),
        machine: session_machine(&machine),
        terminal: SessionTerminal {
            id: term.id,
            page_url: term.page_url,
        },
        extend_seconds: web.inner.cfg.extend.as_secs(),
        checks: ex
            .checks()
            .iter()
            .map(|c| CheckInfo {
                name: c.name.clone(),
                hint: c.hint.clone(),
            })
            .collect(),
        last_run,
    })
}

/// `POST /learn/api/exercises/{name}/session`
pub async fn session(
    State(web): State<Web>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Session>, ApiError> {
    let learner = learner(&web, &headers, None)?;
    let ex = exercise(&web, &name)?;
    Ok(Json(open_session(&web, &learner, &ex).await?))
}

/// `POST /learn/api/machines/{id}/reset`: a fresh machine for the same exercise.
pub async fn reset(
    State(web): State<Web>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Session>, ApiError> {
    let learner = learner(&web, &headers, None)?;
    let m = owned(&web, &learner, &id).await?;
    let name = web
        .inner
        .platform
        .exercise_of(&m.id)
        .await?
        .ok_or_else(|| not_found("exercise of this machine"))?;
    let ex = exercise(&web, &name)?;
    web.inner.platform.delete(&m.id).await?;
    tracing::info!(machine = %m.id, exercise = %name, learner, "learner reset the machine");
    Ok(Json(open_session(&web, &learner, &ex).await?))
}

/// `POST /learn/api/machines/{id}/extend`: more time, within the platform's maximum.
pub async fn extend(
    State(web): State<Web>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<SessionMachine>, ApiError> {
    let learner = learner(&web, &headers, None)?;
    let m = owned(&web, &learner, &id).await?;
    if m.state != MachineState::Running {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "machine_not_running",
            format!("machine {id} is {}", m.state.as_str()),
        ));
    }
    // One press adds the configured time, or what is left of the maximum lifetime.
    let by = web
        .inner
        .cfg
        .extend
        .min(web.inner.platform.extension_room(&m));
    if by.is_zero() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "extend_limit_reached",
            "this machine already has the longest lifetime the platform allows",
        ));
    }
    let m = web.inner.platform.extend(&id, by).await?;
    Ok(Json(session_machine(&m)))
}

#[derive(Debug, Serialize)]
pub struct Started {
    pub id: String,
}

/// `POST /learn/api/machines/{id}/checks`
pub async fn start_checks(
    State(web): State<Web>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let learner = learner(&web, &headers, None)?;
    let m = owned(&web, &learner, &id).await?;
    let run = web.inner.checker.enqueue(&m.id, None, None).await?;
    Ok((StatusCode::ACCEPTED, Json(Started { id: run })).into_response())
}

/// `GET /learn/api/checks/{id}`
pub async fn get_checks(
    State(web): State<Web>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<CheckRunOutput>, ApiError> {
    let learner = learner(&web, &headers, None)?;
    let run = web
        .inner
        .checker
        .get_run(&id)
        .await
        .map_err(|_| not_found(&format!("check run {id}")))?;
    owned(&web, &learner, &run.machine_id)
        .await
        .map_err(|_| not_found(&format!("check run {id}")))?;
    Ok(Json(check_run_output(run)))
}

#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    pub learner: Option<String>,
}

/// `GET /learn/api/machines/{id}/events?learner=…`: live results.
pub async fn events(
    State(web): State<Web>,
    Path(id): Path<String>,
    Query(q): Query<EventsQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let learner = learner(&web, &headers, q.learner.as_deref())?;
    let m = owned(&web, &learner, &id).await?;
    rnr_http::results_sse(&web.inner.checker, &m.id).await
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
        (status = 400, description = "`invalid_json`: malformed JSON", body = rnr_http::ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = rnr_http::ErrorBody),
        (status = 404, description = "`exercise_not_found`", body = rnr_http::ErrorBody),
        (status = 415, description = "`unsupported_media_type`: the body is not JSON", body = rnr_http::ErrorBody),
        (status = 422, description = "`invalid_request`: a missing or invalid field", body = rnr_http::ErrorBody),
        (status = 500, description = "`setup_failed`: the exercise's setup failed on the new machine", body = rnr_http::ErrorBody),
        (status = 503, description = "`capacity_exceeded` (with `Retry-After`) or `driver_unavailable`", body = rnr_http::ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn create_link(
    State(web): State<Web>,
    headers: HeaderMap,
    body: Result<Json<LinkRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body.map_err(ApiError::from)?;
    if !valid_learner(&req.learner) || req.learner.len() > 90 {
        return Err(ApiError::invalid(
            "learner: 1 to 90 letters, digits or _@.:- characters",
        ));
    }
    let ttl = req.ttl_seconds.unwrap_or(web.inner.cfg.link_ttl.as_secs());
    if ttl == 0 || ttl > 30 * 24 * 3600 {
        return Err(ApiError::invalid("ttl_seconds: between 1 and 2592000"));
    }
    let ex = exercise(&web, &req.exercise)?;
    // Namespaced so an LMS's learner ids can never collide with anonymous sessions.
    let learner = format!("lms:{}", req.learner);
    let session = open_session(&web, &learner, &ex).await?;
    let claims = LinkClaims {
        learner,
        exercise: ex.name.clone(),
        expires_at: now_s() + i64::try_from(ttl).unwrap_or(i64::MAX / 2),
    };
    let token = web.inner.signer.link_token(&claims);
    let base = web.base_url(&headers);
    let body = LinkResponse {
        learner: req.learner,
        exercise: ex.name,
        url: format!("{base}/learn/{token}"),
        embed_url: format!("{base}/embed/{token}"),
        expires_at: claims.expires_at,
        machine_id: session.machine.id,
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

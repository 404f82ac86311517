//! The operator's routes: sign in with an API key (a signed, HttpOnly, SameSite=Strict
//! cookie afterwards), the overview of machines with owner, exercise, age, state, CPU and
//! memory, a read-only view of any terminal, deleting machines, check history.

use crate::auth::{operator, Operator as OperatorSession, OPERATOR_COOKIE};
use crate::checks::{output as check_run_output, CheckRunOutput};
use crate::error::HttpError;
use crate::extract::ApiPath;
use crate::learner::asset;
use crate::routes::{
    Access::{Operator, Public},
    Routes,
};
use crate::{html, AppState};
use axum::extract::{Form, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Json;
use rnr_ui::pages;
use serde::{Deserialize, Serialize};

/// How long an operator stays signed in.
const SESSION_SECONDS: i64 = 12 * 3600;

/// The page, sign-in and -out (public: the page shows the sign-in form until then), and
/// the operator API (authenticated by the session cookie).
pub(crate) fn routes() -> Routes {
    Routes::new()
        .route("/operator", Public, get(page))
        .route("/operator/login", Public, post(login))
        .route("/operator/logout", Public, post(logout))
        .route("/operator/api/overview", Operator, get(overview))
        .route("/operator/api/machines/{id}/delete", Operator, post(delete))
        .route("/operator/api/machines/{id}/checks", Operator, get(checks))
        .route("/operator/api/machines/{id}/watch", Operator, post(watch))
        .route(
            pages::OPERATOR_JS.path,
            Public,
            get(|| async { asset(&pages::OPERATOR_JS) }),
        )
}

async fn page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    match operator(&state, &headers).await {
        Some(_) => html(StatusCode::OK, pages::operator()),
        None => html(StatusCode::OK, pages::operator_login(None)),
    }
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    api_key: String,
}

async fn login(State(state): State<AppState>, Form(form): Form<LoginForm>) -> Response {
    match state.platform.authenticate(form.api_key.trim()).await {
        Ok(Some(key)) => {
            let exp = rnr_core::now_ms() / 1000 + SESSION_SECONDS;
            let c = format!(
                "{OPERATOR_COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={SESSION_SECONDS}",
                state.ui.signer().operator_token(&key.id, exp)
            );
            tracing::info!(key = %key.id, name = %key.name, "operator signed in");
            let mut resp = Redirect::to("/operator").into_response();
            if let Ok(v) = HeaderValue::from_str(&c) {
                resp.headers_mut().insert(header::SET_COOKIE, v);
            }
            resp
        }
        Ok(None) => html(
            StatusCode::UNAUTHORIZED,
            pages::operator_login(Some("That API key is not valid or was revoked.")),
        ),
        Err(e) => html(
            StatusCode::INTERNAL_SERVER_ERROR,
            pages::operator_login(Some(&e.to_string())),
        ),
    }
}

async fn logout() -> Response {
    let mut resp = Redirect::to("/operator").into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("rnr_operator=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    resp
}

#[derive(Debug, Serialize)]
pub struct MachineRow {
    pub id: String,
    pub owner: Option<String>,
    pub exercise: Option<String>,
    pub image: String,
    pub state: String,
    pub address: Option<String>,
    pub age_seconds: i64,
    pub expires_in_seconds: i64,
    /// Share of one core used since the previous look (None on the first).
    pub cpu_percent: Option<f64>,
    pub memory_mib: Option<f64>,
    pub memory_limit_mib: u64,
    pub pids: Option<u64>,
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Overview {
    pub capacity: u64,
    pub active: u64,
    pub free: u64,
    pub open_terminals: usize,
    pub machines: Vec<MachineRow>,
}

fn machine_row(u: rnr_ui::MachineUse, now: i64) -> MachineRow {
    let m = u.machine;
    MachineRow {
        age_seconds: (now - m.created_at) / 1000,
        expires_in_seconds: ((m.expires_at - now) / 1000).max(0),
        cpu_percent: u.cpu_percent,
        memory_mib: u
            .stats
            .map(|s| (s.memory_bytes as f64 / 1048576.0 * 10.0).round() / 10.0),
        memory_limit_mib: m.memory_mib,
        pids: u.stats.map(|s| s.pids),
        state: m.state.as_str().into(),
        id: m.id,
        owner: m.owner,
        exercise: u.exercise,
        image: m.image,
        address: m.address,
        error: m.error,
    }
}

/// `GET /operator/api/overview`: live and failed machines with their resource use.
async fn overview(
    State(state): State<AppState>,
    _: OperatorSession,
) -> Result<Json<Overview>, HttpError> {
    let o = state.ui.overview().await?;
    let now = rnr_core::now_ms();
    Ok(Json(Overview {
        capacity: o.capacity,
        active: o.active,
        free: o.capacity.saturating_sub(o.active),
        open_terminals: o.open_terminals,
        machines: o
            .machines
            .into_iter()
            .map(|u| machine_row(u, now))
            .collect(),
    }))
}

async fn delete(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    OperatorSession(key): OperatorSession,
) -> Result<StatusCode, HttpError> {
    state.platform.delete(&id).await?;
    tracing::info!(machine = %id, key = %key, "operator deleted the machine");
    Ok(StatusCode::NO_CONTENT)
}

async fn checks(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    _: OperatorSession,
) -> Result<Json<Vec<CheckRunOutput>>, HttpError> {
    let runs = state.ui.check_history(&id).await?;
    Ok(Json(runs.into_iter().map(check_run_output).collect()))
}

#[derive(Debug, Serialize)]
pub struct Watch {
    pub terminal_id: String,
    /// A read-only view of the machine's terminal.
    pub viewer_page_url: String,
}

/// `POST /operator/api/machines/{id}/watch`: a read-only view of the terminal the learner
/// uses (or of a new one, if the machine has none yet).
async fn watch(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    _: OperatorSession,
) -> Result<Json<Watch>, HttpError> {
    let t = state.ui.watch(&id).await?;
    Ok(Json(Watch {
        terminal_id: t.id,
        viewer_page_url: t.viewer_page_url,
    }))
}

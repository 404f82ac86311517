//! The operator's view: sign in with an API key (a signed, HttpOnly, SameSite=Strict
//! cookie afterwards), see machines with owner, exercise, age, state, CPU and memory, watch
//! any terminal read-only, delete machines, read check history, see capacity.

use crate::{cookie, html, not_found, pages, Web};
use axum::extract::{Form, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Json;
use rnr_core::MachineState;
use rnr_http::{check_run_output, ApiError, CheckRunOutput};
use serde::{Deserialize, Serialize};

const OPERATOR_COOKIE: &str = "rnr_operator";
/// How long an operator stays signed in.
const SESSION_SECONDS: i64 = 12 * 3600;

/// The signed-in operator's API key id, if the key is still active.
async fn operator(web: &Web, headers: &HeaderMap) -> Option<String> {
    let token = cookie(headers, OPERATOR_COOKIE)?;
    let key_id = web
        .inner
        .signer
        .verify_operator(token, rnr_core::now_ms() / 1000)?;
    // A revoked key ends its sessions at once.
    let active = web.inner.platform.api_key_active(&key_id).await.ok()?;
    active.then_some(key_id)
}

async fn require(web: &Web, headers: &HeaderMap) -> Result<String, ApiError> {
    operator(web, headers)
        .await
        .ok_or_else(|| ApiError::unauthorized("sign in at /operator with an API key"))
}

pub async fn page(State(web): State<Web>, headers: HeaderMap) -> Response {
    match operator(&web, &headers).await {
        Some(_) => html(StatusCode::OK, pages::operator()),
        None => html(StatusCode::OK, pages::operator_login(None)),
    }
}

#[derive(Debug, Deserialize)]
pub struct LoginForm {
    pub api_key: String,
}

pub async fn login(State(web): State<Web>, Form(form): Form<LoginForm>) -> Response {
    match web.inner.platform.authenticate(form.api_key.trim()).await {
        Ok(Some(key)) => {
            let exp = rnr_core::now_ms() / 1000 + SESSION_SECONDS;
            let c = format!(
                "{OPERATOR_COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={SESSION_SECONDS}",
                web.inner.signer.operator_token(&key.id, exp)
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

pub async fn logout() -> Response {
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

/// `GET /operator/api/overview`: live and failed machines with their resource use.
pub async fn overview(
    State(web): State<Web>,
    headers: HeaderMap,
) -> Result<Json<Overview>, ApiError> {
    require(&web, &headers).await?;
    let p = &web.inner.platform;
    let machines = p
        .list(&[
            MachineState::Creating,
            MachineState::Running,
            MachineState::Failed,
        ])
        .await?;
    let now = rnr_core::now_ms();
    let mut rows = Vec::with_capacity(machines.len());
    for m in machines {
        let stats = if m.state == MachineState::Running {
            p.stats(&m.id).await.ok().flatten()
        } else {
            None
        };
        let cpu_percent = stats.and_then(|s| {
            let mut samples = web.inner.cpu_samples.lock().ok()?;
            let prev = samples.insert(m.id.clone(), (s.cpu_ns, std::time::Instant::now()));
            let (ns, at) = prev?;
            let wall = at.elapsed().as_nanos() as f64;
            (wall > 0.0)
                .then(|| (s.cpu_ns.saturating_sub(ns) as f64 / wall * 1000.0).round() / 10.0)
        });
        let exercise = p.exercise_of(&m.id).await.ok().flatten();
        rows.push(MachineRow {
            age_seconds: (now - m.created_at) / 1000,
            expires_in_seconds: ((m.expires_at - now) / 1000).max(0),
            cpu_percent,
            memory_mib: stats.map(|s| (s.memory_bytes as f64 / 1048576.0 * 10.0).round() / 10.0),
            memory_limit_mib: m.memory_mib,
            pids: stats.map(|s| s.pids),
            state: m.state.as_str().into(),
            id: m.id,
            owner: m.owner,
            exercise,
            image: m.image,
            address: m.address,
            error: m.error,
        });
    }
    let active = p.active_machines().await?;
    let capacity = p.policy().capacity;
    Ok(Json(Overview {
        capacity,
        active,
        free: capacity.saturating_sub(active),
        open_terminals: web.inner.gateway.open_terminals(),
        machines: rows,
    }))
}

pub async fn delete(
    State(web): State<Web>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let key = require(&web, &headers).await?;
    web.inner.platform.delete(&id).await?;
    tracing::info!(machine = %id, key = %key, "operator deleted the machine");
    Ok(StatusCode::NO_CONTENT)
}

pub async fn checks(
    State(web): State<Web>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Vec<CheckRunOutput>>, ApiError> {
    require(&web, &headers).await?;
    web.inner.platform.get(&id).await?;
    let runs = web.inner.checker.history(&id, 50).await?;
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
pub async fn watch(
    State(web): State<Web>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Watch>, ApiError> {
    require(&web, &headers).await?;
    let m = web.inner.platform.get(&id).await?;
    if m.state != MachineState::Running {
        return Err(not_found(&format!("running machine {id}")));
    }
    let t = web.page_terminal(&id).await?;
    Ok(Json(Watch {
        terminal_id: t.id,
        viewer_page_url: t.viewer_page_url,
    }))
}

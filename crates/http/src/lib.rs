//! The HTTP layer: the one crate that routes. It owns every route — the REST API
//! (`/api/v1`), the terminal REST calls and WebSocket upgrade, the learner and operator
//! pages, the LMS links, `openapi.json`, `/healthz`, `/readyz`, `/metrics` — the
//! authentication in front of them ([`auth`]), the shared [`AppState`] and the one error
//! type and body ([`HttpError`]). Handlers only parse and check the wire format and call
//! the libraries: the platform core, the checker, the terminal gateway and the UI. The
//! OpenAPI document is generated from these same handlers and types.
//!
//! Every response carries the security headers ([`security`]); every route is in one
//! table with the access it takes ([`route_table`]); the server under the router has
//! header read and idle timeouts and a connection cap ([`run`]).

pub mod auth;
mod checks;
mod config;
mod error;
mod extract;
mod learner;
mod machines;
mod openapi;
mod operator;
mod routes;
pub mod security;
mod server;
mod terminals;

pub use config::{HttpConfig, HttpConfigError, ServerLimits};
pub use error::{ErrorBody, ErrorDetail, HttpError};
pub use openapi::{references as openapi_references, ApiDoc};
pub use routes::{route_table, Access, RouteInfo};
pub use server::run;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use rnr_checker::Checker;
use rnr_core::Platform;
use rnr_terminal::Gateway;
use rnr_ui::Ui;
use routes::Routes;
use utoipa::OpenApi;

/// Largest request body accepted; exec stdin is the only large field.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// What every handler may call: the libraries the routes lead to. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub platform: Platform,
    pub checker: Checker,
    pub terminals: Gateway,
    pub ui: Ui,
    pub http: HttpConfig,
}

/// An HTML page that is never cached (it holds session tokens).
pub(crate) fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// Liveness: the process answers
#[utoipa::path(get, path = "/healthz", tag = "ops",
    responses((status = 200, description = "`ok`", content_type = "text/plain", body = String)))]
pub(crate) async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: a write transaction can start, the driver's backend answers and the data
/// disk has room, each within `ready_timeout_ms`; load balancers stop sending work
/// otherwise
#[utoipa::path(get, path = "/readyz", tag = "ops",
    responses(
        (status = 200, description = "`ready`", content_type = "text/plain", body = String),
        (status = 503, description = "`not_ready`: the message names each part that fails (`store:`, `driver:`, `disk:`) and why", body = ErrorBody),
    ))]
pub(crate) async fn readyz(State(state): State<AppState>) -> Response {
    match state.platform.ready().await {
        Ok(()) => "ready".into_response(),
        Err(e) => {
            let mut err = HttpError::from(e);
            err.status = StatusCode::SERVICE_UNAVAILABLE;
            err.into_response()
        }
    }
}

/// Prometheus metrics
#[utoipa::path(get, path = "/metrics", tag = "ops",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)))]
pub(crate) async fn metrics(State(state): State<AppState>) -> Result<Response, HttpError> {
    let text = state.platform.render_metrics().await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// This document
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "ops",
    responses((status = 200, description = "The OpenAPI 3 document of this API", content_type = "application/json", body = Object)))]
pub(crate) async fn openapi_json() -> Response {
    // Rendered once: the document only changes with the code.
    static DOC: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    let doc = DOC.get_or_init(|| {
        Bytes::from(
            serde_json::to_vec(&ApiDoc::openapi()).expect("an OpenAPI document is plain JSON"),
        )
    });
    ([(header::CONTENT_TYPE, "application/json")], doc.clone()).into_response()
}

async fn not_found() -> HttpError {
    HttpError::not_found("no such endpoint")
}

/// Every route, each with the access it takes.
pub(crate) fn all_routes() -> Routes {
    use routes::Access::Public;
    Routes::new()
        .merge(machines::routes())
        .merge(checks::routes())
        .merge(terminals::routes())
        .merge(learner::routes())
        .merge(operator::routes())
        .route("/healthz", Public, get(healthz))
        .route("/readyz", Public, get(readyz))
        .route("/metrics", Public, get(metrics))
        .route("/api/v1/openapi.json", Public, get(openapi_json))
}

/// The whole HTTP application: every route, each behind its authentication, every
/// response with the security headers.
pub fn app(state: AppState) -> Router {
    let policies = security::Policies::new(&state.http);
    all_routes()
        .into_router(&state)
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(policies, security::headers))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

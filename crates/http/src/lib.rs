//! The REST API. Handlers only parse and validate the wire format, call the platform core
//! and render its answers; every error leaves as `{"error":{"code","message"}}` with the
//! right status. The OpenAPI document is generated from these same types.

mod checks;
mod error;
mod machines;
mod openapi;

pub use checks::{output as check_run_output, results_sse, CheckRunOutput};
pub use error::{ApiError, ErrorBody, ErrorDetail};
pub use openapi::{references as openapi_references, ApiDoc};

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use rnr_core::Platform;
use std::future::Future;
use tokio::net::TcpListener;

/// Largest request body accepted; exec stdin is the only large field.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub platform: Platform,
}

/// The API key a request was authenticated with.
#[derive(Debug, Clone)]
pub struct Caller {
    pub key_id: String,
    pub key_name: String,
}

/// Middleware: the request must carry a valid API key (`Authorization: Bearer …`).
pub async fn require_api_key(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|k| !k.is_empty());
    let Some(key) = presented else {
        return ApiError::unauthorized("missing API key: send `Authorization: Bearer <api key>`")
            .into_response();
    };
    match state.platform.authenticate(key).await {
        Ok(Some(row)) => {
            req.extensions_mut().insert(Caller {
                key_id: row.id,
                key_name: row.name,
            });
            next.run(req).await
        }
        Ok(None) => ApiError::unauthorized("invalid or revoked API key").into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

async fn healthz() -> &'static str {
    "ok"
}

/// Ready when the store and the driver both answer; load balancers stop sending work
/// otherwise.
async fn readyz(State(state): State<AppState>) -> Response {
    match state.platform.ready().await {
        Ok(()) => "ready".into_response(),
        Err(e) => {
            let mut err = ApiError::from(e);
            err.status = axum::http::StatusCode::SERVICE_UNAVAILABLE;
            err.into_response()
        }
    }
}

async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
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

async fn not_found() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint",
    )
}

/// A part of the application outside this crate (e.g. the web UI's integrator routes):
/// routes that take an API key, and the OpenAPI document describing them, so that nothing
/// is mounted without being documented.
pub struct ApiPart {
    pub routes: Router,
    pub openapi: utoipa::openapi::OpenApi,
}

/// The whole HTTP application.
pub fn app(state: AppState) -> Router {
    app_with_parts(state, None, Vec::new())
}

/// The HTTP application with the terminal gateway's routes (its API routes behind the same
/// API-key check; its socket and pages authenticated by terminal tokens).
pub fn app_with_gateway(state: AppState, gateway: Option<rnr_terminal::Gateway>) -> Router {
    app_with_parts(state, gateway, Vec::new())
}

/// The HTTP application with the gateway's routes and `parts` behind the API-key check;
/// `/api/v1/openapi.json` is one document describing all of them.
pub fn app_with_parts(
    state: AppState,
    gateway: Option<rnr_terminal::Gateway>,
    parts: Vec<ApiPart>,
) -> Router {
    let mut docs = Vec::with_capacity(parts.len());
    let mut integrator = Router::new();
    for part in parts {
        integrator = integrator.merge(behind_api_key(&state, part.routes));
        docs.push(part.openapi);
    }
    // Rendered once: the document only changes with the code.
    let doc = Bytes::from(
        serde_json::to_vec(&openapi::document(gateway.is_some(), docs))
            .expect("an OpenAPI document is plain JSON"),
    );
    let openapi_json = move || {
        let doc = doc.clone();
        async move { ([(header::CONTENT_TYPE, "application/json")], doc) }
    };
    let protected =
        machines::routes()
            .merge(checks::routes())
            .route_layer(middleware::from_fn_with_state(
                state.clone(),
                require_api_key,
            ));
    let terminals = gateway
        .map(|gw| behind_api_key(&state, gw.api_routes()).merge(gw.public_routes()))
        .unwrap_or_default();
    Router::new()
        .merge(protected)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/openapi.json", get(openapi_json))
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
        .merge(terminals)
        .merge(integrator)
}

/// Puts `routes` (of another part, e.g. the web UI's integrator routes) behind the same
/// API-key check as the API's own.
pub fn behind_api_key(state: &AppState, routes: Router) -> Router {
    routes.route_layer(middleware::from_fn_with_state(
        state.clone(),
        require_api_key,
    ))
}

/// Gives `app`'s handlers the checker: check runs, live results and machines created for
/// an exercise need it.
pub fn with_checker(app: Router, checker: rnr_checker::Checker) -> Router {
    app.layer(axum::Extension(checker))
}

/// Serves `app` on `listener` until `shutdown` completes.
pub async fn run(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

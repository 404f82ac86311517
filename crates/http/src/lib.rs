//! The HTTP layer: the one crate that routes. It owns every route — the REST API
//! (`/api/v1`), the terminal REST calls and WebSocket upgrade, the learner and operator
//! pages, the LMS links, `openapi.json`, `/healthz`, `/readyz`, `/metrics` — the
//! authentication in front of them ([`auth`]), the shared [`AppState`] and the one error
//! type and body ([`HttpError`]). Handlers only parse and check the wire format and call
//! the libraries: the platform core, the checker, the terminal gateway and the UI. The
//! OpenAPI document is generated from these same handlers and types.

pub mod auth;
mod checks;
mod error;
mod extract;
mod learner;
mod machines;
mod openapi;
mod operator;
mod terminals;

pub use error::{ErrorBody, ErrorDetail, HttpError};
pub use openapi::{references as openapi_references, ApiDoc};

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
use std::future::Future;
use tokio::net::TcpListener;
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

async fn healthz() -> &'static str {
    "ok"
}

/// Ready when the store and the driver both answer; load balancers stop sending work
/// otherwise.
async fn readyz(State(state): State<AppState>) -> Response {
    match state.platform.ready().await {
        Ok(()) => "ready".into_response(),
        Err(e) => {
            let mut err = HttpError::from(e);
            err.status = StatusCode::SERVICE_UNAVAILABLE;
            err.into_response()
        }
    }
}

async fn metrics(State(state): State<AppState>) -> Result<Response, HttpError> {
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

async fn not_found() -> HttpError {
    HttpError::not_found("no such endpoint")
}

/// The whole HTTP application: every route, each behind its authentication.
pub fn app(state: AppState) -> Router {
    // Rendered once: the document only changes with the code.
    let doc = Bytes::from(
        serde_json::to_vec(&ApiDoc::openapi()).expect("an OpenAPI document is plain JSON"),
    );
    let openapi_json = move || {
        let doc = doc.clone();
        async move { ([(header::CONTENT_TYPE, "application/json")], doc) }
    };
    let keyed = Router::new()
        .merge(machines::routes())
        .merge(checks::routes())
        .merge(terminals::routes())
        .merge(learner::api_routes())
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_api_key,
        ));
    Router::new()
        .merge(keyed)
        .merge(terminals::public_routes())
        .merge(learner::routes())
        .merge(operator::routes())
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/openapi.json", get(openapi_json))
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
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

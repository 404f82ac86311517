//! The web UI: the learner's exercise page (instructions beside the terminal, Check button,
//! live results, time left, extend, reset), the exercise index, signed links and the
//! `/embed/…` variant for an LMS iframe, and the operator's view.
//!
//! Learners never hold an API key: a learner is a signed id — an anonymous browser session
//! (cookie) or a learner id the integrating LMS named in a signed, expiring link. Every
//! learner call checks that the machine it names belongs to that learner, and answers
//! "not found" otherwise, so one learner can never see another's machine, terminal or
//! results.

mod identity;
mod learn;
mod operator;
mod pages;

pub use identity::{valid_learner, LinkClaims, Signer};

/// OpenAPI description of the integrator routes (`POST /api/v1/links`); it names the API's
/// `api_key` scheme, which the served document defines.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(learn::create_link),
    components(schemas(learn::LinkRequest, learn::LinkResponse)),
    tags((name = "links", description = "Signed learner links for an LMS (docs/embedding.md)")),
)]
pub struct LinksApiDoc;

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use rnr_checker::Checker;
use rnr_core::Platform;
use rnr_http::ApiError;
use rnr_terminal::Gateway;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use utoipa::OpenApi;

/// Settings of the web UI.
#[derive(Debug, Clone)]
pub struct WebConfig {
    /// How much time one press of "extend" adds to a learner's machine.
    pub extend: Duration,
    /// Lifetime of signed learner links when the request names none.
    pub link_ttl: Duration,
    /// External base URL (`https://labs.example.org`) for links; else taken from `Host`.
    pub public_url: Option<String>,
}

impl Default for WebConfig {
    fn default() -> Self {
        Self {
            extend: Duration::from_secs(15 * 60),
            link_ttl: Duration::from_secs(24 * 3600),
            public_url: None,
        }
    }
}

pub(crate) struct Inner {
    pub platform: Platform,
    pub checker: Checker,
    pub gateway: Gateway,
    pub signer: Signer,
    pub cfg: WebConfig,
    /// One creation at a time per learner, so two tabs opening an exercise at once share
    /// one machine.
    pub creating: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Last CPU sample per machine, to show CPU use as a rate.
    pub cpu_samples: Mutex<HashMap<String, (u64, std::time::Instant)>>,
}

/// Shared state of the web handlers; cheap to clone.
#[derive(Clone)]
pub struct Web {
    pub(crate) inner: Arc<Inner>,
}

impl Web {
    /// The web UI; its signing secret is kept in the store so sessions survive restarts.
    pub async fn new(
        platform: Platform,
        checker: Checker,
        gateway: Gateway,
        cfg: WebConfig,
    ) -> Result<Self, rnr_core::CoreError> {
        let secret = platform.secret("web_secret").await?;
        Ok(Self {
            inner: Arc::new(Inner {
                platform,
                checker,
                gateway,
                signer: Signer::new(secret.as_bytes()),
                cfg,
                creating: Mutex::default(),
                cpu_samples: Mutex::default(),
            }),
        })
    }

    /// Routes: pages and the learner and operator APIs (their own authentication), and
    /// `api_routes` that the caller puts behind the API-key check.
    pub fn routes(&self) -> Router {
        Router::new()
            .route("/", get(|| async { Redirect::to("/exercises") }))
            .route("/exercises", get(learn::index))
            .route("/exercises/{name}", get(learn::exercise_page))
            .route("/learn/{token}", get(learn::link_page))
            .route("/embed/{token}", get(learn::embed_page))
            .route("/learn/api/exercises/{name}/session", post(learn::session))
            .route("/learn/api/machines/{id}/reset", post(learn::reset))
            .route("/learn/api/machines/{id}/extend", post(learn::extend))
            .route("/learn/api/machines/{id}/checks", post(learn::start_checks))
            .route("/learn/api/machines/{id}/events", get(learn::events))
            .route("/learn/api/checks/{id}", get(learn::get_checks))
            .route("/operator", get(operator::page))
            .route("/operator/login", post(operator::login))
            .route("/operator/logout", post(operator::logout))
            .route("/operator/api/overview", get(operator::overview))
            .route("/operator/api/machines/{id}/delete", post(operator::delete))
            .route("/operator/api/machines/{id}/checks", get(operator::checks))
            .route("/operator/api/machines/{id}/watch", post(operator::watch))
            .route("/assets/rnr-ui.css", get(pages::css))
            .route("/assets/rnr-exercise.js", get(pages::exercise_js))
            .route("/assets/rnr-operator.js", get(pages::operator_js))
            .with_state(self.clone())
    }

    /// Routes for integrators, to be put behind the API-key check; [`Web::api_part`] has
    /// them with their OpenAPI description.
    pub fn api_routes(&self) -> Router {
        Router::new()
            .route("/api/v1/links", post(learn::create_link))
            .with_state(self.clone())
    }

    /// The integrator routes and their OpenAPI description, for [`rnr_http::app_with_parts`].
    pub fn api_part(&self) -> rnr_http::ApiPart {
        rnr_http::ApiPart {
            routes: self.api_routes(),
            openapi: LinksApiDoc::openapi(),
        }
    }

    /// The terminal the pages show for `machine` (the same one across reloads, restarts and
    /// for the operator's read-only view), attached and with fresh tokens; URLs relative,
    /// as the pages and the terminal share an origin.
    pub(crate) async fn page_terminal(
        &self,
        machine: &str,
    ) -> Result<rnr_terminal::TerminalCreated, ApiError> {
        let platform = &self.inner.platform;
        let id = match platform.page_terminal(machine).await? {
            Some(t) => t,
            None => {
                let t = format!("t-{}", rnr_core::random_id(12));
                platform.set_page_terminal(machine, &t).await?;
                t
            }
        };
        self.inner
            .gateway
            .open(machine, &id, rnr_terminal::CreateTerminal::default(), "")
            .await
            .map_err(gateway_error)
    }

    pub(crate) fn base_url(&self, headers: &HeaderMap) -> String {
        if let Some(u) = &self.inner.cfg.public_url {
            return u.trim_end_matches('/').to_string();
        }
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("localhost");
        format!("http://{host}")
    }
}

/// A cookie's value from the request.
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

pub(crate) fn not_found(what: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("{what} not found"),
    )
}

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

pub(crate) fn gateway_error(e: rnr_terminal::GatewayError) -> ApiError {
    let (status, code) = e.status_code();
    ApiError::new(status, code, e.to_string())
}

//! Who is asking, checked before a handler runs: API keys (a middleware on every
//! `/api/v1` route that takes one), learners (a signed session token in a header, query
//! parameter or cookie), operators (a signed session cookie of a still-active API key),
//! terminal tokens (for recordings; the socket's token is checked in `terminals`, to be
//! refused with a close code) and signed LMS links. The signatures are the UI's and the
//! gateway's; the checks happen here, once, for every route. Also who the client is
//! ([`ClientAddr`]): the socket's peer, or behind a trusted proxy its `X-Forwarded-For`.

use crate::{html, AppState, HttpError};
use axum::extract::ConnectInfo;
use axum::extract::{FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rnr_terminal::Claims;
use rnr_ui::{LearnerClaims, LinkClaims};
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};

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
        return HttpError::unauthorized("missing API key: send `Authorization: Bearer <api key>`")
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
        Ok(None) => HttpError::unauthorized("invalid or revoked API key").into_response(),
        Err(e) => HttpError::from(e).into_response(),
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

/// The anonymous visitor cookie (names the browser to `/exercises/{name}` only).
pub(crate) const LEARNER_COOKIE: &str = "rnr_learner";
const LEARNER_HEADER: &str = "x-rnr-learner";
pub(crate) const OPERATOR_COOKIE: &str = "rnr_operator";

#[derive(Deserialize)]
struct LearnerQuery {
    learner: Option<String>,
}

/// The learner a request speaks for, and the one exercise it may touch: a learner token
/// from the `X-Rnr-Learner` header (what the page sends) or a `learner` query parameter
/// (EventSource cannot set headers); genuine, unexpired, of a learner this platform
/// accepts. The visitor cookie is not one: it only names a browser to its exercise page.
#[derive(Debug, Clone)]
pub struct Learner(pub LearnerClaims);

impl FromRequestParts<AppState> for Learner {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, HttpError> {
        let query = Query::<LearnerQuery>::try_from_uri(&parts.uri)
            .ok()
            .and_then(|Query(q)| q.learner);
        let token = parts
            .headers
            .get(LEARNER_HEADER)
            .and_then(|v| v.to_str().ok())
            .or(query.as_deref())
            .ok_or_else(|| HttpError::unauthorized("no learner session: open the exercise page"))?;
        Ok(Learner(state.ui.learner(token).await?))
    }
}

/// The address the request came from: the socket's peer, or, when that is one of
/// `[http] trusted_proxies`, the client `X-Forwarded-For` names. `None` where the request
/// did not come through [`crate::run`] (in-process tests).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub Option<IpAddr>);

impl ClientAddr {
    /// As text for the store ("unknown" when not known).
    pub fn text(&self) -> Option<String> {
        self.0.map(|ip| ip.to_string())
    }
}

impl FromRequestParts<AppState> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, std::convert::Infallible> {
        let Some(ConnectInfo(peer)) = parts.extensions.get::<ConnectInfo<SocketAddr>>() else {
            return Ok(Self(None));
        };
        let forwarded: Vec<&str> = parts
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        Ok(Self(Some(state.http.client_addr(peer.ip(), &forwarded))))
    }
}

/// The signed-in operator's API key id, if the session cookie is genuine and unexpired and
/// the key still active (revoking a key ends its sessions at once).
pub(crate) async fn operator(state: &AppState, headers: &HeaderMap) -> Option<String> {
    let token = cookie(headers, OPERATOR_COOKIE)?;
    let key_id = state
        .ui
        .signer()
        .verify_operator(token, rnr_core::now_ms() / 1000)?;
    let active = state.platform.api_key_active(&key_id).await.ok()?;
    active.then_some(key_id)
}

/// A signed-in operator (see [`operator`]).
#[derive(Debug, Clone)]
pub struct Operator(pub String);

impl FromRequestParts<AppState> for Operator {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, HttpError> {
        operator(state, &parts.headers)
            .await
            .map(Operator)
            .ok_or_else(|| HttpError::unauthorized("sign in at /operator with an API key"))
    }
}

#[derive(Deserialize)]
struct TokenQuery {
    #[serde(default)]
    token: String,
}

/// An owner or viewer token (`?token=`) of the terminal the path names (`/…/{id}/…`).
#[derive(Debug, Clone)]
pub struct TerminalToken(pub Claims);

impl FromRequestParts<AppState> for TerminalToken {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, HttpError> {
        let Path(id) = Path::<String>::from_request_parts(parts, state).await?;
        let Query(q) = Query::<TokenQuery>::try_from_uri(&parts.uri)?;
        Ok(Self(state.terminals.verify(&q.token, &id).await?))
    }
}

/// The claims of the genuine, unexpired signed link the path names (`/learn/{token}`);
/// a page saying why not otherwise.
#[derive(Debug, Clone)]
pub struct SignedLink(pub LinkClaims);

impl FromRequestParts<AppState> for SignedLink {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let Path(token) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        // In an LMS's iframe, "link expired" must show there rather than be refused.
        let embedded = parts.uri.path().starts_with("/embed/");
        state.ui.verify_link(&token).await.map(Self).map_err(|why| {
            let status = match why {
                rnr_ui::LinkRefused::Invalid | rnr_ui::LinkRefused::Revoked => {
                    StatusCode::FORBIDDEN
                }
                rnr_ui::LinkRefused::Expired => StatusCode::GONE,
            };
            let mut page = html(status, why.page());
            if embedded {
                page.extensions_mut()
                    .insert(crate::security::PageKind::Embed);
            }
            page
        })
    }
}

//! Terminals: the REST calls (open one on a machine, close it, read its recording: API
//! key), the WebSocket (`/ws/terminals/{id}`: its token), the terminal and replay pages
//! and the bundled client. The gateway (rnr-terminal) does the work; here the socket's
//! opening handshake is checked and the connection upgraded, then handed to it.

use crate::auth::TerminalToken as TerminalTokenClaims;
use crate::error::{ErrorBody, HttpError};
use crate::extract::{ApiPath, ApiQuery};
use crate::routes::{
    Access::{ApiKey, Public, TerminalToken},
    Routes,
};
use crate::security::PageKind;
use crate::AppState;
use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Version};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Json;
use rnr_terminal::client::{self, PageMode};
use rnr_terminal::{CreateTerminal, Opened, TerminalCreated};
use serde::Deserialize;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// The REST calls (API key), the socket and recording (a terminal token), the pages and
/// the client (public: the page's script reads the token from its URL).
pub(crate) fn routes() -> Routes {
    Routes::new()
        .route(
            "/api/v1/machines/{id}/terminals",
            ApiKey,
            post(create_terminal),
        )
        .route("/api/v1/terminals/{id}", ApiKey, delete(delete_terminal))
        .route(
            "/api/v1/terminals/{id}/recording",
            ApiKey,
            get(recording_by_key),
        )
        .route("/ws/terminals/{id}", TerminalToken, get(socket))
        .route(
            "/terminals/{id}/recording",
            TerminalToken,
            get(recording_by_token),
        )
        .route("/terminals/{id}", Public, get(live_page))
        .route("/terminals/{id}/replay", Public, get(replay_page))
        .route(client::SCRIPT_PATH, Public, get(script))
        .route(client::STYLE_PATH, Public, get(style))
}

/// The gateway's external `http(s)://host[:port]`, as the request reached it.
fn base_url(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost");
    let proto = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .filter(|p| *p == "https")
        .unwrap_or("http");
    format!("{proto}://{host}")
}

/// Open a terminal: a root shell on the machine, for a browser
///
/// Returns an owner and a read-only viewer token, both bound to this terminal and machine
/// and valid until `expires_at`. A browser either opens `page_url` (the gateway's own
/// terminal page; the token in the URL is all it needs) or connects its own client to
/// `ws_url`: `GET /ws/terminals/{id}?token=…[&rows=R&cols=C]` upgraded to a WebSocket.
/// The token rides in the query string because browsers cannot set headers on a
/// WebSocket; no API key ever reaches the browser. The `viewer_*` URLs carry the viewer
/// token: the same screen live, input and resizes dropped.
///
/// On the socket, binary frames are terminal bytes both ways; text frames are JSON control
/// messages (`{"t":"resize","rows","cols"}`, `{"t":"pause"}`, `{"t":"resume"}` from the
/// client; `{"t":"hello",…,"token","expires_at"}` from the server, repeated with a fresh
/// token before the old one expires, to reconnect with). A page whose `Origin` is neither
/// the gateway's nor in `[terminal] allowed_origins` is refused with 403 before the upgrade;
/// every other refusal is a close frame: 1001 going away, 1011 internal error (reconnect);
/// 4000 bad control message, 4001 invalid token, 4002 token expired, 4003 token revoked
/// (the terminal was closed through the API), 4004 machine gone,
/// 4008 idle timeout, 4010 shell exited or terminal closed, 4029 terminal limit reached
/// (do not reconnect); 4011 agent unavailable (reconnect later); 4012 session connection
/// lost, 4408 no answer to pings (reconnect). The shell survives reconnects, page reloads
/// and gateway restarts. Protocol: docs/terminal-protocol.md.
#[utoipa::path(
    post, path = "/api/v1/machines/{id}/terminals", tag = "terminals",
    params(("id" = String, Path, description = "Machine id")),
    request_body(content = CreateTerminal, description = "Optional; without a body: 24×80, not recorded"),
    responses(
        (status = 201, description = "Terminal attached; tokens and URLs to reach it", body = TerminalCreated),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "`machine_not_found`", body = ErrorBody),
        (status = 409, description = "`machine_not_running`", body = ErrorBody),
        (status = 422, description = "`invalid_request`: the body is not valid JSON of this shape", body = ErrorBody),
        (status = 429, description = "`terminal_limit_reached`: the machine has `[terminal] max_per_machine` open terminals", body = ErrorBody),
        (status = 503, description = "`agent_unavailable`: the agent in the machine cannot hold the session", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn create_terminal(
    State(state): State<AppState>,
    ApiPath(machine): ApiPath<String>,
    headers: HeaderMap,
    body: Result<Option<Json<CreateTerminal>>, JsonRejection>,
) -> Result<Response, HttpError> {
    // Every refusal of the body, malformed JSON included, is the documented 422.
    let req = body
        .map_err(|e| HttpError::invalid(format!("invalid body: {}", e.body_text())))?
        .map(|Json(b)| b)
        .unwrap_or_default();
    let created = state
        .terminals
        .create(&machine, req, &base_url(&headers))
        .await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

/// Close a terminal: hang up its shell, end the session, revoke its tokens
///
/// Connected clients are closed with 4010; the terminal's owner and viewer tokens are
/// revoked, so later connections with them are closed with 4003 and its recording is no
/// longer readable with them (401 `token_revoked`; the API key still reads it).
#[utoipa::path(
    delete, path = "/api/v1/terminals/{id}", tag = "terminals",
    params(("id" = String, Path, description = "Terminal id")),
    responses(
        (status = 204, description = "Closed and its tokens revoked"),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "`terminal_not_found`: no terminal with this id, or it was closed already", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn delete_terminal(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, HttpError> {
    state.terminals.kill(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn recording(state: &AppState, id: &str) -> Result<Response, HttpError> {
    let body = state.terminals.recording(id).await?;
    Ok(([(header::CONTENT_TYPE, "application/x-asciicast")], body).into_response())
}

/// The recording of a terminal opened with `record: true`, as an asciicast v2 file
///
/// Also readable with a terminal token at `/terminals/{id}/recording?token=…`, and
/// replayed in the browser at `/terminals/{id}/replay?token=…`.
#[utoipa::path(
    get, path = "/api/v1/terminals/{id}/recording", tag = "terminals",
    params(("id" = String, Path, description = "Terminal id")),
    responses(
        (status = 200, description = "asciicast v2: a JSON header line, then one `[time, \"o\" or \"r\", data]` line per output or resize", content_type = "application/x-asciicast", body = String),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "`recording_not_found` or `terminal_not_found`", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn recording_by_key(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, HttpError> {
    recording(&state, &id).await
}

/// The recording of a terminal, for a browser holding one of its tokens
///
/// The same file as `GET /api/v1/terminals/{id}/recording`, authorised by an owner or
/// viewer token of the terminal instead of an API key (what the replay page uses).
#[utoipa::path(
    get, path = "/terminals/{id}/recording", tag = "terminals",
    params(
        ("id" = String, Path, description = "Terminal id"),
        ("token" = String, Query, description = "An owner or viewer token of this terminal"),
    ),
    responses(
        (status = 200, description = "asciicast v2", content_type = "application/x-asciicast", body = String),
        (status = 401, description = "`invalid_token`, `token_expired` or `token_revoked`", body = ErrorBody),
        (status = 404, description = "`recording_not_found`", body = ErrorBody),
    )
)]
pub async fn recording_by_token(
    State(state): State<AppState>,
    TerminalTokenClaims(claims): TerminalTokenClaims,
) -> Result<Response, HttpError> {
    recording(&state, &claims.terminal).await
}

/// The query of `GET /ws/terminals/{id}`.
#[derive(Debug, Deserialize)]
pub struct SocketQuery {
    #[serde(default)]
    token: String,
    #[serde(default)]
    rows: Option<u16>,
    #[serde(default)]
    cols: Option<u16>,
}

/// `GET /ws/terminals/{id}?token=…[&rows=R&cols=C]`: the terminal's WebSocket. A page of
/// another origin is refused with 403 and a malformed handshake with 400, before any
/// socket; a bad token is refused after the upgrade, with a close code the browser can
/// read (docs/terminal-protocol.md).
async fn socket(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<SocketQuery>,
    mut req: Request,
) -> Result<Response, HttpError> {
    let headers = req.headers();
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    state.terminals.origin_allowed(origin, host)?;
    let accept = handshake(&req)?;
    let deflate = rnr_terminal::negotiate_deflate(req.headers());
    let opened = Opened {
        access: state.terminals.verify(&q.token, &id).await,
        terminal: id,
        rows: q.rows,
        cols: q.cols,
        deflate,
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let terminals = state.terminals.clone();
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => terminals.serve_socket(upgraded, opened).await,
            Err(e) => {
                tracing::info!(terminal = %opened.terminal, error = %e, "WebSocket upgrade failed")
            }
        }
    });
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    if deflate {
        h.insert(
            header::SEC_WEBSOCKET_EXTENSIONS,
            HeaderValue::from_static(rnr_terminal::DEFLATE_RESPONSE),
        );
    }
    Ok(resp)
}

/// Checks an RFC 6455 opening handshake; returns the `Sec-WebSocket-Accept` value.
fn handshake(req: &Request) -> Result<HeaderValue, HttpError> {
    let bad = |m: &str| {
        Err(HttpError::new(
            StatusCode::BAD_REQUEST,
            "not_a_websocket_handshake",
            format!("not a WebSocket handshake: {m}"),
        ))
    };
    let headers = req.headers();
    let has = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if req.method() != Method::GET {
        return bad("the method must be GET");
    }
    if req.version() > Version::HTTP_11 {
        return bad("WebSockets are served over HTTP/1.1 only");
    }
    if !has(header::UPGRADE, "websocket") {
        return bad("Upgrade: websocket is missing");
    }
    if !has(header::CONNECTION, "upgrade") {
        return bad("Connection: upgrade is missing");
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return bad("Sec-WebSocket-Version must be 13");
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return bad("Sec-WebSocket-Key is missing");
    };
    if req
        .extensions()
        .get::<hyper::upgrade::OnUpgrade>()
        .is_none()
    {
        return bad("this connection cannot be upgraded");
    }
    Ok(HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
        .expect("base64 is a valid header value"))
}

fn page(id: &str, mode: PageMode) -> Response {
    let mut resp = (
        [(header::CACHE_CONTROL, "no-store")],
        Html(client::page(id, mode)),
    )
        .into_response();
    // Framed by the learner, embed and operator pages (and an LMS's own page).
    resp.extensions_mut().insert(PageKind::Terminal);
    resp
}

/// The terminal page; its script reads the token from the URL.
async fn live_page(ApiPath(id): ApiPath<String>) -> Response {
    page(&id, PageMode::Live)
}

/// The recording's replay page.
async fn replay_page(ApiPath(id): ApiPath<String>) -> Response {
    page(&id, PageMode::Replay)
}

async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        client::SCRIPT,
    )
        .into_response()
}

async fn style() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        client::STYLE,
    )
        .into_response()
}

//! The browser side, served by the gateway: the terminal page and the xterm.js bundle that
//! the build produced (build.rs runs esbuild over terminal-client/) and embedded in the binary.

use crate::Gateway;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};

const SCRIPT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/rnr-terminal.js"));
const STYLE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/rnr-terminal.css"));

fn html(id: &str, mode: &str) -> String {
    // The id is only echoed after validation; the token stays in the URL for the script.
    let id: String = id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>rootnroll terminal {id}</title>
<link rel="stylesheet" href="/assets/rnr-terminal.css">
</head><body data-terminal="{id}" data-mode="{mode}">
<div id="bar"><span id="state" data-state="connecting">connecting</span><span id="role"></span><span id="info"></span></div>
<div id="term"></div>
<script src="/assets/rnr-terminal.js"></script>
</body></html>"#
    )
}

pub async fn page(State(_gw): State<Gateway>, Path(id): Path<String>) -> Response {
    (
        [(header::CACHE_CONTROL, "no-store")],
        Html(html(&id, "live")),
    )
        .into_response()
}

pub async fn replay_page(State(_gw): State<Gateway>, Path(id): Path<String>) -> Response {
    (
        [(header::CACHE_CONTROL, "no-store")],
        Html(html(&id, "replay")),
    )
        .into_response()
}

pub async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
        .into_response()
}

pub async fn style() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE).into_response()
}

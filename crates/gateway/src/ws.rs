//! The browser's WebSocket: binary frames carry terminal bytes both ways, text frames a
//! small JSON control set (docs/terminal-protocol.md). Two pumps run under one select:
//! browser → shell (input, resize, flow control, pongs) and shell → browser (output, pings,
//! closing). Output waits in the terminal's bounded per-client queue, nowhere else.

use crate::terminal::{Subscription, Terminal, MAX_INPUT};
use crate::{close, Gateway, Role};
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use tokio::sync::watch;

/// Output coalesced into one binary message at most.
const MAX_OUT_MESSAGE: usize = 256 * 1024;

#[derive(Deserialize)]
pub struct WsQuery {
    #[serde(default)]
    token: String,
    #[serde(default)]
    rows: Option<u16>,
    #[serde(default)]
    cols: Option<u16>,
}

#[derive(Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum Control {
    Resize { rows: u16, cols: u16 },
    Pause,
    Resume,
}

pub async fn handler(
    State(gw): State<Gateway>,
    Path(id): Path<String>,
    Query(q): Query<WsQuery>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    // Before the upgrade: a page on another site gets no socket at all.
    if let Err(e) = gw.origin_allowed(&headers) {
        return e.into_response();
    }
    // Small socket buffers: an idle terminal should cost kilobytes (tungstenite's default
    // is 128 KiB each way); output is already coalesced into large messages.
    ws.read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(MAX_INPUT + 1024)
        .max_frame_size(MAX_INPUT + 1024)
        .on_upgrade(move |socket| session(gw, id, q, socket))
}

async fn close_with(mut socket: WebSocket, code: u16, reason: String) {
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from(reason),
        })))
        .await;
}

async fn session(gw: Gateway, id: String, q: WsQuery, socket: WebSocket) {
    // After the upgrade, so the browser can read why (close code and reason).
    let claims = match gw.verify(&q.token, &id) {
        Ok(c) => c,
        Err(e) => {
            let (code, reason) = e.close();
            return close_with(socket, code, reason).await;
        }
    };
    let size = (q.rows.unwrap_or(24), q.cols.unwrap_or(80));
    let term = match gw.attach(&id, &claims.machine, size, false).await {
        Ok(t) => t,
        Err(e) => {
            tracing::info!(terminal = %id, error = %e, "terminal connection refused");
            let (code, reason) = e.close();
            return close_with(socket, code, reason).await;
        }
    };
    if claims.role == Role::Owner {
        if let (Some(r), Some(c)) = (q.rows, q.cols) {
            term.resize(r, c).await;
        }
    }
    let sub = term.subscribe(claims.role).await;
    let client = sub.id;
    pump(&gw, &term, claims.role, sub, socket).await;
    term.unsubscribe(client);
}

fn hello(gw: &Gateway, term: &Terminal, role: Role) -> Message {
    let (token, expires_at) = gw.sign(&term.id, &term.machine, role);
    Message::Text(
        serde_json::json!({
            "t": "hello",
            "terminal": term.id,
            "machine": term.machine,
            "role": role.as_str(),
            "pid": term.shell_pid.load(Ordering::Relaxed),
            "token": token,
            "expires_at": expires_at,
        })
        .to_string()
        .into(),
    )
}

async fn pump(
    gw: &Gateway,
    term: &Arc<Terminal>,
    role: Role,
    sub: Subscription,
    socket: WebSocket,
) {
    let (mut sink, stream) = socket.split();
    if sink.send(hello(gw, term, role)).await.is_err() {
        return;
    }
    let last_seen = AtomicI64::new(rnr_core::now_ms());
    let (paused_tx, paused_rx) = watch::channel(false);
    let end = {
        let inbound = from_browser(gw, term, role, stream, &last_seen, &paused_tx);
        let outbound = to_browser(gw, term, role, sub, &mut sink, &last_seen, paused_rx);
        tokio::select! {
            end = inbound => end,
            end = outbound => end,
        }
    };
    if let Some((code, reason)) = end {
        tracing::info!(terminal = %term.id, code, reason = %reason, "closing a client");
        let frame = Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from(reason),
        }));
        // Bounded: a client that reads nothing must not hold this task.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), sink.send(frame)).await;
    }
}

/// Browser → shell. Returns a close to send, or `None` when the browser left.
async fn from_browser(
    gw: &Gateway,
    term: &Terminal,
    role: Role,
    mut stream: SplitStream<WebSocket>,
    last_seen: &AtomicI64,
    paused: &watch::Sender<bool>,
) -> Option<(u16, String)> {
    while let Some(msg) = stream.next().await {
        let Ok(msg) = msg else { return None };
        last_seen.store(rnr_core::now_ms(), Ordering::Relaxed);
        match msg {
            // Viewers' keystrokes are dropped: they watch.
            Message::Binary(data) if role == Role::Owner => {
                term.input(&data).await;
                gw.activity(&term.machine);
            }
            Message::Binary(_) => {}
            Message::Text(text) => match serde_json::from_str::<Control>(&text) {
                Ok(Control::Resize { rows, cols }) if role == Role::Owner => {
                    term.resize(rows, cols).await
                }
                Ok(Control::Resize { .. }) => {}
                Ok(Control::Pause) => {
                    paused.send_replace(true);
                }
                Ok(Control::Resume) => {
                    paused.send_replace(false);
                }
                Err(e) => {
                    return Some((
                        close::BAD_MESSAGE,
                        close::reason(&format!("bad control message: {e}")),
                    ))
                }
            },
            Message::Close(_) => return None,
            Message::Ping(_) | Message::Pong(_) => {}
        }
    }
    None
}

/// Shell → browser, pings, and the terminal's end.
async fn to_browser(
    gw: &Gateway,
    term: &Terminal,
    role: Role,
    mut sub: Subscription,
    sink: &mut SplitSink<WebSocket, Message>,
    last_seen: &AtomicI64,
    mut paused: watch::Receiver<bool>,
) -> Option<(u16, String)> {
    let cfg = gw.config();
    let mut ping = tokio::time::interval(cfg.ping_interval);
    ping.tick().await;
    // Fresh tokens well before expiry, so a reconnect after a long session still works.
    let mut refresh =
        tokio::time::interval((cfg.token_ttl / 3).max(std::time::Duration::from_secs(1)));
    refresh.tick().await;
    let mut buf = BytesMut::new();
    loop {
        let is_paused = *paused.borrow();
        tokio::select! {
            biased;
            _ = sub.closed.changed() => {
                let c = sub.closed.borrow().clone();
                if let Some(c) = c {
                    return Some((c.code, close::reason(&c.reason)));
                }
            }
            _ = ping.tick() => {
                let idle = rnr_core::now_ms() - last_seen.load(Ordering::Relaxed);
                if idle > cfg.ping_timeout.as_millis() as i64 {
                    return Some((close::PING_TIMEOUT, "no answer to pings".into()));
                }
                if sink.send(Message::Ping(Bytes::new())).await.is_err() {
                    return None;
                }
            }
            _ = refresh.tick() => {
                if sink.send(hello(gw, term, role)).await.is_err() {
                    return None;
                }
            }
            _ = paused.changed() => {}
            first = sub.rx.recv(), if !is_paused => {
                let Some(first) = first else {
                    return Some((close::INTERNAL, "the terminal dropped this client".into()));
                };
                // Coalesce what is already queued: fewer, larger messages for bulk output.
                let msg = if sub.rx.is_empty() {
                    first
                } else {
                    buf.clear();
                    buf.extend_from_slice(&first);
                    while buf.len() < MAX_OUT_MESSAGE {
                        match sub.rx.try_recv() {
                            Ok(more) => buf.extend_from_slice(&more),
                            Err(_) => break,
                        }
                    }
                    buf.split().freeze()
                };
                // A client that takes no data for the ping timeout is as dead as a silent
                // one; its output stays held in this one message meanwhile.
                match tokio::time::timeout(cfg.ping_timeout, sink.send(Message::Binary(msg))).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return None,
                    Err(_) => return Some((close::PING_TIMEOUT, "the client stopped reading".into())),
                }
            }
        }
    }
}

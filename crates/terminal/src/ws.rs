//! The browser's WebSocket: binary frames carry terminal bytes both ways, text frames a
//! small JSON control set (docs/terminal-protocol.md). Two pumps run under one select:
//! browser → shell (input, resize, flow control, pongs) and shell → browser (output, pings,
//! closing). Output waits in the terminal's bounded per-client queue, nowhere else.
//!
//! The HTTP layer checks the opening handshake and upgrades the connection (axum, like
//! tungstenite under it, knows no permessage-deflate: see `deflate` for the extension);
//! the WebSocket over that connection is made and spoken here.

use crate::deflate::{self, Inflating};
use crate::terminal::{Subscription, Terminal, MAX_INPUT};
use crate::{close, Claims, Gateway, GatewayError, Role};
use bytes::{Bytes, BytesMut};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role as WsRole, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

type WebSocket = WebSocketStream<Inflating<TokioIo<hyper::upgrade::Upgraded>>>;

/// Output coalesced into one binary message at most: large enough for bulk output to leave
/// in few messages, small enough that a client that stops reading pins little (its queue
/// plus one message in flight).
const MAX_OUT_MESSAGE: usize = 64 * 1024;
/// Largest message or frame taken from a browser, compressed or inflated.
pub(crate) const MAX_IN_MESSAGE: usize = MAX_INPUT + 1024;

/// What the HTTP layer learnt from the opening handshake of terminal `terminal`'s socket.
#[derive(Debug)]
pub struct Opened {
    pub terminal: String,
    /// The token's claims, or why it was refused: told to the browser as a close code and
    /// reason once the socket is open, so that it can read why.
    pub access: Result<Claims, GatewayError>,
    /// The size the client asked for in the URL (`rows`, `cols`).
    pub rows: Option<u16>,
    pub cols: Option<u16>,
    /// Whether permessage-deflate was negotiated ([`crate::negotiate_deflate`]).
    pub deflate: bool,
}

#[derive(Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum Control {
    Resize { rows: u16, cols: u16 },
    Pause,
    Resume,
}

impl Gateway {
    /// Speaks the terminal protocol over a connection the HTTP layer upgraded, until the
    /// browser leaves or the terminal ends.
    pub async fn serve_socket(self, upgraded: hyper::upgrade::Upgraded, opened: Opened) {
        let io = Inflating::new(TokioIo::new(upgraded), opened.deflate, MAX_IN_MESSAGE);
        let socket =
            WebSocketStream::from_raw_socket(io, WsRole::Server, Some(socket_config())).await;
        session(self, opened, socket).await
    }
}

/// The browser socket's settings.
pub(crate) fn socket_config() -> WebSocketConfig {
    // Small socket buffers: an idle terminal should cost kilobytes (tungstenite's default
    // is 128 KiB each way); output is already coalesced into large messages. Unmasked
    // frames are the adapter's inflated ones: it refuses them from the client.
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(Some(MAX_IN_MESSAGE))
        .max_frame_size(Some(MAX_IN_MESSAGE))
        .accept_unmasked_frames(true)
}

async fn close_with(mut socket: WebSocket, code: u16, reason: String) {
    let _ = socket.send(close_message(code, reason)).await;
}

fn close_message(code: u16, reason: String) -> Message {
    Message::Close(Some(CloseFrame {
        code: code.into(),
        reason: reason.into(),
    }))
}

async fn session(gw: Gateway, opened: Opened, socket: WebSocket) {
    let Opened {
        terminal: id,
        access,
        rows,
        cols,
        deflate: compress,
    } = opened;
    let claims = match access {
        Ok(c) => c,
        Err(e) => {
            let (code, reason) = e.close();
            return close_with(socket, code, reason).await;
        }
    };
    let size = (rows.unwrap_or(24), cols.unwrap_or(80));
    let term = match gw.attach(&id, &claims.machine, size, false).await {
        Ok(t) => t,
        Err(e) => {
            tracing::info!(terminal = %id, error = %e, "terminal connection refused");
            let (code, reason) = e.close();
            return close_with(socket, code, reason).await;
        }
    };
    if claims.role == Role::Owner {
        if let (Some(r), Some(c)) = (rows, cols) {
            term.resize(r, c).await;
        }
    }
    let sub = term.subscribe(claims.role).await;
    let client = sub.id;
    pump(&gw, &term, claims.role, sub, socket, compress).await;
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
    compress: bool,
) {
    let (sink, stream) = socket.split();
    let mut sink = Sink { sink, compress };
    if sink.sink.send(hello(gw, term, role)).await.is_err() {
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
        let frame = close_message(code, reason);
        // Bounded: a client that reads nothing must not hold this task.
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(2), sink.sink.send(frame)).await;
    }
}

/// What one message from the browser asks of the terminal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// Bytes for the shell: the owner's keystrokes.
    Input(Bytes),
    /// The owner's new window size, as asked (the terminal clamps it).
    Resize {
        rows: u16,
        cols: u16,
    },
    Pause,
    Resume,
    /// Nothing to do: a viewer's keystrokes or resize, pings and pongs.
    Ignore,
    /// The browser closed the socket.
    Leave,
    /// A message outside the protocol: the socket closes with this code and reason.
    Close(u16, String),
}

/// Reads one message from the browser by `role`'s rights (docs/terminal-protocol.md).
pub(crate) fn classify(msg: Message, role: Role) -> Inbound {
    match msg {
        // Viewers' keystrokes are dropped: they watch.
        Message::Binary(data) if role == Role::Owner => Inbound::Input(data),
        Message::Binary(_) => Inbound::Ignore,
        Message::Text(text) => match serde_json::from_str::<Control>(&text) {
            Ok(Control::Resize { rows, cols }) if role == Role::Owner => {
                Inbound::Resize { rows, cols }
            }
            Ok(Control::Resize { .. }) => Inbound::Ignore,
            Ok(Control::Pause) => Inbound::Pause,
            Ok(Control::Resume) => Inbound::Resume,
            Err(e) => Inbound::Close(
                close::BAD_MESSAGE,
                close::reason(&format!("bad control message: {e}")),
            ),
        },
        Message::Close(_) => Inbound::Leave,
        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Inbound::Ignore,
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
        let msg = match msg {
            Ok(m) => m,
            Err(e) => return read_error(&e),
        };
        last_seen.store(rnr_core::now_ms(), Ordering::Relaxed);
        match classify(msg, role) {
            Inbound::Input(data) => {
                term.input(&data).await;
                gw.activity(&term.machine);
            }
            Inbound::Resize { rows, cols } => term.resize(rows, cols).await,
            Inbound::Pause => {
                paused.send_replace(true);
            }
            Inbound::Resume => {
                paused.send_replace(false);
            }
            Inbound::Ignore => {}
            Inbound::Leave => return None,
            Inbound::Close(code, reason) => return Some((code, reason)),
        }
    }
    None
}

/// The close to send after a failed read: the client broke the protocol (a frame the
/// negotiated extensions do not allow, a message over the limit), or `None` when the
/// connection itself is gone.
pub(crate) fn read_error(e: &tungstenite::Error) -> Option<(u16, String)> {
    use tungstenite::error::ProtocolError;
    match e {
        tungstenite::Error::Io(io) => deflate::gateway_error(io).map(|g| g.close()),
        tungstenite::Error::Capacity(c) => {
            Some((close::MESSAGE_TOO_BIG, close::reason(&c.to_string())))
        }
        tungstenite::Error::Utf8(m) => Some((close::INVALID_DATA, close::reason(m))),
        tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => None,
        tungstenite::Error::Protocol(p) => {
            Some((close::PROTOCOL_ERROR, close::reason(&p.to_string())))
        }
        _ => None,
    }
}

/// The browser's half of the socket we write to.
struct Sink {
    sink: SplitSink<WebSocket, Message>,
    /// The client negotiated permessage-deflate.
    compress: bool,
}

impl Sink {
    /// Sends terminal output: compressed when the client negotiated deflate and it is
    /// large enough to gain from it.
    async fn output(&mut self, data: Bytes) -> Result<(), tungstenite::Error> {
        if self.compress && data.len() >= deflate::COMPRESS_MIN {
            if let Some(z) = deflate::compress(&data) {
                let header = FrameHeader {
                    is_final: true,
                    rsv1: true,
                    opcode: OpCode::Data(Data::Binary),
                    ..FrameHeader::default()
                };
                return self
                    .sink
                    .send(Message::Frame(Frame::from_payload(header, z)))
                    .await;
            }
        }
        self.sink.send(Message::Binary(data)).await
    }
}

/// Shell → browser, pings, and the terminal's end.
async fn to_browser(
    gw: &Gateway,
    term: &Terminal,
    role: Role,
    mut sub: Subscription,
    sink: &mut Sink,
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
                if sink.sink.send(Message::Ping(Bytes::new())).await.is_err() {
                    return None;
                }
            }
            _ = refresh.tick() => {
                if sink.sink.send(hello(gw, term, role)).await.is_err() {
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
                match tokio::time::timeout(cfg.ping_timeout, sink.output(msg)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return None,
                    Err(_) => return Some((close::PING_TIMEOUT, "the client stopped reading".into())),
                }
            }
        }
    }
}

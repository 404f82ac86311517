//! Entry points for the fuzz targets (`fuzz/`, which builds this crate with the `fuzzing`
//! feature; nothing else does): the browser socket's read path and the deflate codec,
//! reached without a gateway, a machine or a network, so that a fuzzer can feed them the
//! bytes a hostile browser would.

use crate::deflate::Inflating;
use crate::ws::{read_error, socket_config, MAX_IN_MESSAGE};
use crate::GatewayError;
use futures::StreamExt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::protocol::Role as WsRole;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub use crate::deflate::{compress, COMPRESS_MIN};
pub use crate::ws::Inbound;

/// Largest message the gateway takes from a browser, compressed or inflated.
pub const MAX_MESSAGE: usize = MAX_IN_MESSAGE;

/// Inflates one compressed message's payload (RFC 7692: the sync-flush tail stripped) into
/// at most `limit` bytes, as the gateway does a browser's.
pub fn inflate(payload: &[u8], limit: usize) -> Result<Vec<u8>, GatewayError> {
    crate::deflate::inflate(payload.to_vec(), limit)
}

/// What the gateway makes of one message by `role`'s rights.
pub fn classify(msg: Message, role: crate::Role) -> Inbound {
    crate::ws::classify(msg, role)
}

/// What the gateway read from a browser's bytes.
#[derive(Debug, Default)]
pub struct ClientRead {
    /// The messages, in order, up to the first close or error.
    pub messages: Vec<Message>,
    /// The close code and reason the gateway answers a broken protocol with; `None` when
    /// the bytes ended (or the browser closed) without one.
    pub end: Option<(u16, String)>,
    /// What the gateway wrote back meanwhile (pongs, its answer to a close).
    pub written: Vec<u8>,
}

/// A socket whose far end sent `wire`, handed over at most `chunk` bytes per read.
struct Wire<'a> {
    wire: &'a [u8],
    chunk: usize,
    written: Vec<u8>,
}

impl AsyncRead for Wire<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let n = this.wire.len().min(this.chunk).min(buf.remaining());
        buf.put_slice(&this.wire[..n]);
        this.wire = &this.wire[n..];
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Wire<'_> {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        self.get_mut().written.extend_from_slice(b);
        Poll::Ready(Ok(b.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Reads `wire`, the bytes a browser sent after the handshake (with permessage-deflate
/// negotiated or not), through the gateway's own stack — the inflating adapter under
/// tungstenite with the socket's settings — as the socket's reader does: up to the first
/// close or error, which is mapped to the close the gateway would send. Reads are cut at
/// `chunk` bytes (at least 1), so that every parser state sees a split.
pub fn read_client(wire: &[u8], chunk: usize, deflate: bool) -> ClientRead {
    let io = Wire {
        wire,
        chunk: chunk.max(1),
        written: Vec::new(),
    };
    let io = Inflating::new(io, deflate, MAX_IN_MESSAGE);
    // The in-memory socket never waits: one poll of each future completes it.
    let waker = futures::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    let mut socket = std::pin::pin!(WebSocketStream::from_raw_socket(
        io,
        WsRole::Server,
        Some(socket_config())
    ));
    let mut socket = match socket.as_mut().poll(&mut cx) {
        Poll::Ready(s) => s,
        Poll::Pending => unreachable!("an in-memory socket is always ready"),
    };
    let mut out = ClientRead::default();
    loop {
        let next = match socket.poll_next_unpin(&mut cx) {
            Poll::Ready(n) => n,
            Poll::Pending => unreachable!("an in-memory socket is always ready"),
        };
        match next {
            None => break,
            Some(Ok(m)) => {
                let closing = matches!(m, Message::Close(_));
                out.messages.push(m);
                if closing {
                    break;
                }
            }
            Some(Err(e)) => {
                out.end = read_error(&e);
                break;
            }
        }
    }
    out.written = std::mem::take(&mut socket.get_mut().get_mut().written);
    out
}

//! The HTTP/1.1 server under the router, with the limits a public service needs:
//!
//! - **header read timeout**: a connection must send a complete request head within
//!   `header_read_timeout` of opening, and of the first byte of every later request on it;
//!   else it is closed. A client sending its headers byte by byte (slowloris) holds a
//!   connection that long at most.
//! - **idle timeout**: a keep-alive connection with no request in flight and no bytes
//!   either way for `idle_timeout` is closed. Requests in flight (an exec, a server-sent
//!   event stream) are never cut; upgraded WebSockets have their own pings.
//! - **connection cap**: at most `max_connections` connections at once, WebSockets
//!   included. Beyond it a connection is accepted and answered at once with `503
//!   too_many_connections` (`Retry-After: 1`, `Connection: close`), so the client learns
//!   why; when even the answering is saturated, excess connections are closed unanswered.
//!
//! Each request gets the peer's address (`ConnectInfo<SocketAddr>`) for the client
//! address ([`crate::HttpConfig::client_addr`]).

use crate::ServerLimits;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::Router;
use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tower::ServiceExt;

/// What an over-the-cap connection is told (the API's error body).
const REFUSAL_BODY: &str = "{\"error\":{\"code\":\"too_many_connections\",\"message\":\
     \"the server holds the most connections it allows ([http] max_connections); try again\"}}";

fn refusal() -> String {
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{REFUSAL_BODY}",
        REFUSAL_BODY.len()
    )
}
/// Refusals answered at once; beyond, excess connections are closed unanswered.
const MAX_REFUSING: usize = 256;
/// How long shutting down waits for connections to finish their requests.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` within `limits` until `shutdown` completes; then stops
/// accepting, lets each connection finish its request (up to 10 s) and returns.
pub async fn run(
    listener: TcpListener,
    app: Router,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    let (stop_tx, stop_rx) = watch::channel(false);
    let open = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(tokio::sync::Notify::new());
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors and the like: wait rather than spin.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let (app, stop, open, closed) =
                    (app.clone(), stop_rx.clone(), open.clone(), closed.clone());
                open.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    connection(stream, peer, app, limits, permit, stop).await;
                    open.fetch_sub(1, Ordering::SeqCst);
                    closed.notify_waiters();
                });
            }
            Err(_) => match refusing.clone().try_acquire_owned() {
                Ok(slot) => {
                    tracing::warn!(%peer, max = limits.max_connections, "connection refused: too many connections");
                    tokio::spawn(refuse(stream, slot));
                }
                Err(_) => drop(stream),
            },
        }
    }
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while open.load(Ordering::SeqCst) > 0 {
            let wait = closed.notified();
            if open.load(Ordering::SeqCst) == 0 {
                break;
            }
            wait.await;
        }
    })
    .await;
    Ok(())
}

/// Answers an over-the-cap connection with a 503 and closes it, within a second or two.
async fn refuse(mut stream: TcpStream, _slot: OwnedSemaphorePermit) {
    let answered = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(refusal().as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
    if matches!(answered, Ok(Ok(()))) {
        // Read what the client sent meanwhile, so that closing does not reset the
        // connection before it reads the answer.
        let mut sink = [0u8; 4096];
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
    }
}

/// What a connection is doing, in milliseconds since it opened (0: never / not now).
#[derive(Debug)]
struct Activity {
    opened: Instant,
    /// The last byte read or written.
    last_io: AtomicU64,
    /// Since when a request head is awaited (set at opening and at the first byte of each
    /// request; cleared when the head is complete).
    head_since: AtomicU64,
    /// Requests whose response has not been sent in full.
    in_flight: AtomicUsize,
}

impl Activity {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            last_io: AtomicU64::new(1),
            head_since: AtomicU64::new(1),
            in_flight: AtomicUsize::new(0),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    fn read(&self) {
        let now = self.now();
        self.last_io.store(now, Ordering::Relaxed);
        if self.in_flight.load(Ordering::SeqCst) == 0 {
            let _ = self
                .head_since
                .compare_exchange(0, now, Ordering::SeqCst, Ordering::SeqCst);
        }
    }

    fn wrote(&self) {
        self.last_io.store(self.now(), Ordering::Relaxed);
    }

    fn request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.head_since.store(0, Ordering::SeqCst);
        InFlight(self.clone())
    }

    fn at(&self, ms: u64) -> Instant {
        self.opened + Duration::from_millis(ms)
    }

    /// What to do now: `Err(true)` close at once (a head too slow), `Err(false)` close
    /// gracefully (idle), `Ok(when)` look again then.
    fn verdict(&self, limits: &ServerLimits) -> Result<Instant, bool> {
        let now = self.now();
        let header = u64::try_from(limits.header_read_timeout.as_millis()).unwrap_or(u64::MAX);
        let idle = u64::try_from(limits.idle_timeout.as_millis()).unwrap_or(u64::MAX);
        let head_since = self.head_since.load(Ordering::SeqCst);
        let busy = self.in_flight.load(Ordering::SeqCst) > 0;
        let last_io = self.last_io.load(Ordering::Relaxed);
        if head_since != 0 && !busy {
            let due = head_since.saturating_add(header);
            return if now >= due {
                Err(true)
            } else {
                Ok(self.at(due.min(last_io.saturating_add(idle))))
            };
        }
        if busy {
            return Ok(self.at(now.saturating_add(idle)));
        }
        let due = last_io.saturating_add(idle);
        if now >= due {
            Err(false)
        } else {
            Ok(self.at(due))
        }
    }
}

/// A request being answered; dropped when its response body is done (or abandoned).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.0.wrote();
    }
}

/// A response body that tells the connection when it is done.
struct Tracked {
    inner: Body,
    _in_flight: InFlight,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The socket, noting its traffic; it holds the connection's permit, so an upgraded
/// connection (a WebSocket) counts against the cap until it closes.
struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
    _permit: OwnedSemaphorePermit,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let me = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut me.stream).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            me.activity.read();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let me = self.get_mut();
        let r = Pin::new(&mut me.stream).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            me.activity.wrote();
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let me = self.get_mut();
        let r = Pin::new(&mut me.stream).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            me.activity.wrote();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: ServerLimits,
    permit: OwnedSemaphorePermit,
    mut stop: watch::Receiver<bool>,
) {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        stream,
        activity: activity.clone(),
        _permit: permit,
    });
    let act = activity.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let in_flight = act.request();
        let app = app.clone();
        async move {
            let mut req = req.map(Body::new);
            req.extensions_mut().insert(ConnectInfo(peer));
            let resp = app
                .oneshot(req)
                .await
                .unwrap_or_else(|e: Infallible| match e {});
            Ok::<_, Infallible>(resp.map(|inner| {
                Body::new(Tracked {
                    inner,
                    _in_flight: in_flight,
                })
            }))
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, service)
        .with_upgrades();
    tokio::pin!(conn);
    let mut closing = false;
    loop {
        let next = match activity.verdict(&limits) {
            Ok(when) => when,
            Err(true) => {
                tracing::debug!(%peer, "closing a connection: no complete request head in time");
                return;
            }
            Err(false) => {
                if !closing {
                    tracing::debug!(%peer, "closing an idle connection");
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
                Instant::now() + limits.idle_timeout
            }
        };
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            () = tokio::time::sleep_until(next) => {}
            _ = stop.changed(), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
}

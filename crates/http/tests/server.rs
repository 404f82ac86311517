//! The server's limits against misbehaving clients, on a real socket: a slowloris client
//! (many connections sending their headers byte by byte) is cut off after the header read
//! timeout while `/healthz` stays fast for a normal client; idle keep-alive connections
//! are closed; connections over the cap get a quick 503 naming the limit.

use axum::routing::get;
use axum::Router;
use rnr_http::ServerLimits;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

async fn serve(limits: ServerLimits) -> (String, CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                "done"
            }),
        );
    let stop = CancellationToken::new();
    let token = stop.clone();
    tokio::spawn(async move {
        rnr_http::run(
            listener,
            app,
            limits,
            async move { token.cancelled().await },
        )
        .await
        .unwrap()
    });
    (addr, stop)
}

/// One request on a fresh connection; its status and how long it took.
async fn get_once(addr: &str, path: &str) -> (u16, Duration) {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, started.elapsed())
}

/// Whether the server has closed `s` (reads EOF or an error) within `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_cut_off_and_healthz_stays_fast() {
    let (addr, stop) = serve(ServerLimits {
        header_read_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(30),
        max_connections: 200,
    })
    .await;
    // 100 connections dribbling a request head, a byte every 100 ms (it would take them
    // seconds to finish), never completing in time.
    let head = b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut loris = Vec::new();
    for _ in 0..100 {
        let addr = addr.clone();
        loris.push(tokio::spawn(async move {
            let opened = Instant::now();
            let mut s = TcpStream::connect(&addr).await.unwrap();
            for b in head.iter() {
                if s.write_all(&[*b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            // Cut off before the head was whole: the write failed or the socket is shut.
            let cut = closed_within(&mut s, Duration::from_secs(5)).await;
            (cut, opened.elapsed())
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Meanwhile a normal client is served at once, every time.
    for _ in 0..10 {
        let (status, took) = get_once(&addr, "/healthz").await;
        assert_eq!(status, 200);
        assert!(took < Duration::from_millis(500), "/healthz took {took:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for l in loris {
        let (cut, after) = l.await.unwrap();
        assert!(cut, "a slow head was not cut off");
        // The head would need ~8.5 s; the server closed it near the 2 s timeout.
        assert!(after < Duration::from_secs(5), "cut off after {after:?}");
    }
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_close_but_requests_in_flight_do_not() {
    let (addr, stop) = serve(ServerLimits {
        header_read_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_millis(800),
        max_connections: 50,
    })
    .await;
    // One request, then silence on a keep-alive connection: closed after the idle time.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let started = Instant::now();
    assert!(closed_within(&mut s, Duration::from_secs(5)).await);
    let after = started.elapsed();
    assert!(
        after >= Duration::from_millis(700) && after < Duration::from_secs(3),
        "closed after {after:?}"
    );
    // A request longer than the idle time is answered, not cut.
    let (status, took) = get_once(&addr, "/slow").await;
    assert_eq!(status, 200);
    assert!(took >= Duration::from_millis(1500));
    // A connection that never sends a byte counts as a slow head.
    let mut silent = TcpStream::connect(&addr).await.unwrap();
    assert!(closed_within(&mut silent, Duration::from_secs(8)).await);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_get_a_quick_503() {
    let (addr, stop) = serve(ServerLimits {
        header_read_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(10),
        max_connections: 20,
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(TcpStream::connect(&addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("answered at once")
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("retry-after: 1"), "{text}");
    assert!(text.contains("\"too_many_connections\""), "{text}");
    assert!(text.contains("max_connections"), "{text}");
    let body = text.split("\r\n\r\n").nth(1).unwrap();
    let v: serde_json::Value = serde_json::from_str(body).expect("the API's error body");
    assert_eq!(v["error"]["code"], "too_many_connections");
    assert!(started.elapsed() < Duration::from_secs(1));
    // Room again once connections close.
    held.clear();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get_once(&addr, "/healthz").await.0, 200);
    stop.cancel();
}

//! The terminal gateway on a platform on the fake driver (real store, real agent holding
//! the sessions; no root, Docker or crun), driven as rnr-http drives it: each WebSocket
//! is upgraded by an in-process hyper server over an in-memory duplex and handed to
//! `Gateway::serve_socket`; tokio-tungstenite is the browser.

use futures::{SinkExt, StreamExt};
use rnr_core::testing::{policy, TestPlatform};
use rnr_terminal::{close, CreateTerminal, Gateway, GatewayConfig, GatewayError, Opened};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio::io::DuplexStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Bytes the in-memory connection buffers each way: small, so that a client that stops
/// reading stalls its socket quickly.
const PIPE: usize = 16 * 1024;

fn config(tp: &TestPlatform) -> GatewayConfig {
    GatewayConfig {
        token_ttl: Duration::from_secs(900),
        idle_timeout: Duration::from_secs(600),
        max_per_machine: 8,
        allowed_origins: Vec::new(),
        ping_interval: Duration::from_secs(10),
        ping_timeout: Duration::from_secs(30),
        recordings_dir: tp.dir().join("recordings"),
        max_recording_bytes: 64 << 20,
    }
}

/// A platform with one running machine, and a gateway on it.
struct Setup {
    tp: TestPlatform,
    gw: Gateway,
    machine: String,
}

impl Setup {
    async fn new(tune: impl FnOnce(&mut GatewayConfig)) -> Self {
        let tp = TestPlatform::start(policy()).await;
        let mut cfg = config(&tp);
        tune(&mut cfg);
        let gw = Gateway::new(tp.platform.clone(), cfg).await.unwrap();
        let machine = tp.machine().await;
        Self { tp, gw, machine }
    }

    async fn terminal(&self) -> rnr_terminal::TerminalCreated {
        self.gw
            .create(&self.machine, CreateTerminal::default(), "http://gateway")
            .await
            .expect("a terminal")
    }

    /// A new terminal and its owner, connected: past the hello and the repaint.
    async fn owner(&self) -> (rnr_terminal::TerminalCreated, Client, Value) {
        let t = self.terminal().await;
        let mut c = connect(&self.gw, &t.id, &t.token).await;
        let (hello, _) = c.hello().await;
        (t, c, hello)
    }
}

/// A browser's end of a terminal's socket.
struct Client {
    ws: WebSocketStream<DuplexStream>,
    /// Terminal output so far, as text.
    seen: String,
}

/// Opens terminal `id`'s socket with `token` on `gw`, as rnr-http does: checks nothing
/// but the token, upgrades, hands the connection to the gateway.
async fn connect(gw: &Gateway, id: &str, token: &str) -> Client {
    let (client, server) = tokio::io::duplex(PIPE);
    let (gw, terminal, key) = (gw.clone(), id.to_string(), token.to_string());
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            let deflate = rnr_terminal::negotiate_deflate(req.headers());
            let accept = req
                .headers()
                .get("sec-websocket-key")
                .map(|k| derive_accept_key(k.as_bytes()))
                .unwrap_or_default();
            let upgrade = hyper::upgrade::on(&mut req);
            let (gw, key, terminal) = (gw.clone(), key.clone(), terminal.clone());
            tokio::spawn(async move {
                let opened = Opened {
                    access: gw.verify(&key, &terminal).await,
                    terminal,
                    rows: None,
                    cols: None,
                    deflate,
                };
                if let Ok(upgraded) = upgrade.await {
                    gw.serve_socket(upgraded, opened).await;
                }
            });
            let resp = hyper::Response::builder()
                .status(101)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-accept", accept)
                .body(String::new());
            async move { resp }
        });
    tokio::spawn(
        hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(server), service)
            .with_upgrades(),
    );
    let url = format!("ws://gateway/ws/terminals/{id}?token={token}");
    let (ws, _) = tokio_tungstenite::client_async(url, client)
        .await
        .expect("the WebSocket handshake");
    Client {
        ws,
        seen: String::new(),
    }
}

enum Read {
    Output(bytes::Bytes),
    Text(Value),
    Closed(u16, String),
}

impl Client {
    async fn read(&mut self) -> Read {
        let msg = tokio::time::timeout(Duration::from_secs(15), self.ws.next())
            .await
            .expect("a message within 15 s");
        match msg {
            Some(Ok(Message::Binary(b))) => {
                self.seen.push_str(&String::from_utf8_lossy(&b));
                Read::Output(b)
            }
            Some(Ok(Message::Text(t))) => Read::Text(serde_json::from_str(&t).unwrap()),
            Some(Ok(Message::Close(Some(f)))) => Read::Closed(f.code.into(), f.reason.to_string()),
            Some(Ok(Message::Close(None))) | None => Read::Closed(0, "no close frame".into()),
            Some(Ok(_)) => Box::pin(self.read()).await,
            Some(Err(e)) => Read::Closed(0, format!("read error: {e}")),
        }
    }

    /// The `hello` every connection starts with, then the repaint of the screen.
    async fn hello(&mut self) -> (Value, bytes::Bytes) {
        let Read::Text(hello) = self.read().await else {
            panic!("the first message is not the hello");
        };
        assert_eq!(hello["t"], "hello");
        let Read::Output(repaint) = self.read().await else {
            panic!("no repaint after the hello");
        };
        assert!(
            repaint.starts_with(b"\x1bc"),
            "a repaint resets the screen first"
        );
        (hello, repaint)
    }

    /// Reads until the output shows `needle`.
    async fn until(&mut self, needle: &str) {
        while !self.seen.contains(needle) {
            if let Read::Closed(code, why) = self.read().await {
                panic!("closed ({code} {why}) before {needle:?} in {:?}", self.seen);
            }
        }
    }

    /// Reads until the socket closes; its code and reason.
    async fn closed(&mut self) -> (u16, String) {
        loop {
            if let Read::Closed(code, why) = self.read().await {
                return (code, why);
            }
        }
    }

    async fn type_in(&mut self, keys: &str) {
        self.ws
            .send(Message::Binary(keys.as_bytes().to_vec().into()))
            .await
            .unwrap();
    }

    async fn control(&mut self, msg: Value) {
        self.ws
            .send(Message::Text(msg.to_string().into()))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_reaches_the_client_and_input_the_shell() {
    let s = Setup::new(|_| {}).await;
    let (t, mut c, hello) = s.owner().await;
    assert_eq!(
        (&hello["role"], &hello["terminal"], &hello["machine"]),
        (&json!("owner"), &json!(t.id), &json!(s.machine))
    );
    assert!(hello["pid"].as_u64().unwrap_or(0) > 0, "{hello}");
    c.type_in("echo typed-$((6*7)) > /tmp/typed; echo out-$((6*7))\r")
        .await;
    c.until("out-42").await;
    assert_eq!(s.tp.sh(&s.machine, "cat /tmp/typed").await, "typed-42\n");
    c.control(json!({"t": "resize", "rows": 30, "cols": 100}))
        .await;
    c.type_in("stty size\r").await;
    c.until("30 100").await;
    // A token for another terminal opens nothing.
    let other = s.terminal().await;
    let mut forged = connect(&s.gw, &t.id, &other.token).await;
    assert_eq!(forged.closed().await.0, close::TOKEN_INVALID);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_repaints_the_screen_and_keeps_the_shell() {
    let s = Setup::new(|_| {}).await;
    let (t, mut c, hello) = s.owner().await;
    c.type_in("echo mark-$((6*7))\r").await;
    c.until("mark-42").await;
    drop(c);
    // The token the hello handed out, as a reloaded page would use it.
    let token = hello["token"].as_str().unwrap();
    let mut again = connect(&s.gw, &t.id, token).await;
    let (hello2, repaint) = again.hello().await;
    assert_eq!(hello2["pid"], hello["pid"], "the same shell");
    assert!(
        String::from_utf8_lossy(&repaint).contains("mark-42"),
        "the repaint shows the earlier output: {repaint:?}"
    );
    drop(again);
    // A restarted gateway (same store, so the same token secret) finds the same session.
    let gw2 = Gateway::new(s.tp.platform.clone(), config(&s.tp))
        .await
        .unwrap();
    let mut after = connect(&gw2, &t.id, &t.token).await;
    let (hello3, repaint) = after.hello().await;
    assert_eq!(hello3["pid"], hello["pid"]);
    assert!(String::from_utf8_lossy(&repaint).contains("mark-42"));
    after.type_in("echo still-$((6*7))\r").await;
    after.until("still-42").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_watches_but_cannot_type() {
    let s = Setup::new(|_| {}).await;
    let (t, mut owner, _) = s.owner().await;
    let mut viewer = connect(&s.gw, &t.id, &t.viewer_token).await;
    let (hello, _) = viewer.hello().await;
    assert_eq!(hello["role"], "viewer");
    viewer.type_in("touch /tmp/viewer-typed\r").await;
    viewer
        .control(json!({"t": "resize", "rows": 10, "cols": 20}))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    owner.type_in("stty size; echo owner-$((6*7))\r").await;
    owner.until("owner-42").await;
    viewer.until("owner-42").await;
    assert!(
        owner.seen.contains("24 80"),
        "the viewer resized: {:?}",
        owner.seen
    );
    assert!(!owner.seen.contains("viewer-typed"), "{:?}", owner.seen);
    s.tp.sh(&s.machine, "test ! -e /tmp/viewer-typed").await;
}

/// A client that stops reading is dropped once its output has waited for the ping
/// timeout; meanwhile the shell is held back (backpressure), then goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_is_dropped_and_the_shell_goes_on() {
    let s = Setup::new(|c| {
        c.ping_timeout = Duration::from_secs(1);
        c.ping_interval = Duration::from_secs(30);
    })
    .await;
    let (t, mut c, _) = s.owner().await;
    c.type_in("yes stalled | head -c 1000000; echo done > /tmp/done\r")
        .await;
    let typed = Instant::now();
    let done = s.tp.root_of(&s.machine).join("tmp/done");
    // Not reading: the pipe, the client's queue and the session fill up, the shell waits.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!done.exists(), "1 MB went nowhere: no backpressure");
    // The gateway gives up on the client, and the shell finishes its output.
    while !done.exists() {
        assert!(
            typed.elapsed() < Duration::from_secs(15),
            "the shell stayed blocked"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        typed.elapsed() >= Duration::from_secs(1),
        "dropped before the timeout"
    );
    // Reading again (within the gateway's 2 s to deliver it) finds the reason.
    let (code, why) = c.closed().await;
    assert_eq!(
        (code, why.as_str()),
        (close::PING_TIMEOUT, "the client stopped reading")
    );
    let mut next = connect(&s.gw, &t.id, &t.token).await;
    next.hello().await;
    next.type_in("echo alive-$((6*7))\r").await;
    next.until("alive-42").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idle_timeout_ends_the_session() {
    let s = Setup::new(|c| c.idle_timeout = Duration::from_millis(1500)).await;
    let (t, mut c, hello) = s.owner().await;
    // Typing keeps it alive past the timeout.
    let typing_until = Instant::now() + Duration::from_millis(2500);
    let mut n = 0;
    while Instant::now() < typing_until {
        n += 1;
        c.type_in(&format!("echo tick-{n}\r")).await;
        c.until(&format!("tick-{n}\r\n")).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let quiet = Instant::now();
    let (code, why) = c.closed().await;
    assert_eq!(code, close::IDLE_TIMEOUT, "{why}");
    assert!(why.contains("idle"), "{why}");
    assert!(quiet.elapsed() < Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.gw.open_terminals() > 0 {
        assert!(Instant::now() < deadline, "the idle terminal is still open");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The shell was ended: coming back starts a new one.
    let mut back = connect(&s.gw, &t.id, &t.token).await;
    let (again, _) = back.hello().await;
    assert_ne!(again["pid"], hello["pid"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminals_per_machine_are_limited() {
    let s = Setup::new(|c| c.max_per_machine = 2).await;
    let first = s.terminal().await;
    s.terminal().await;
    let e =
        s.gw.create(&s.machine, CreateTerminal::default(), "http://gateway")
            .await
            .unwrap_err();
    assert!(
        matches!(&e, GatewayError::LimitReached { limit: 2, .. }),
        "{e:?}"
    );
    assert_eq!(e.close().0, close::LIMIT_REACHED);
    // Clients do not count, terminals do: a second client of one terminal is fine.
    let mut a = connect(&s.gw, &first.id, &first.token).await;
    let mut b = connect(&s.gw, &first.id, &first.viewer_token).await;
    a.hello().await;
    b.hello().await;
    // The limit is per machine.
    let other = s.tp.machine().await;
    s.gw.create(&other, CreateTerminal::default(), "http://gateway")
        .await
        .expect("another machine's terminal");
    // A terminal closed through the API frees its place at once.
    s.gw.kill(&first.id).await.unwrap();
    s.terminal().await;
    assert_eq!(a.closed().await.0, close::SESSION_ENDED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_machine_closes_its_terminals() {
    let s = Setup::new(|_| {}).await;
    let (t, mut c, _) = s.owner().await;
    s.tp.platform.delete(&s.machine).await.unwrap();
    assert_eq!(c.closed().await.0, close::MACHINE_GONE);
    let e =
        s.gw.create(&s.machine, CreateTerminal::default(), "http://gateway")
            .await
            .unwrap_err();
    assert!(
        matches!(&e, GatewayError::MachineNotRunning { .. }),
        "{e:?}"
    );
    let mut late = connect(&s.gw, &t.id, &t.token).await;
    assert_eq!(late.closed().await.0, close::MACHINE_GONE);
}

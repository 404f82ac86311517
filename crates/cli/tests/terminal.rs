//! Web terminal over a real `rnr serve`, real Docker machines and the real agent
//! (RNR_AGENT_PATH, exported by scripts/test.sh): persistence across reconnects and a
//! SIGKILLed gateway, viewers, binary safety, flow control, tokens, limits, close codes,
//! recording, permessage-deflate.

mod common;

use common::Server;
use reqwest::Method;
use serde_json::{json, Value};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

fn agent_env() -> Vec<(&'static str, String)> {
    let agent = std::env::var("RNR_AGENT_PATH")
        .expect("RNR_AGENT_PATH must name the static agent (scripts/build-agent.sh)");
    vec![("RNR_AGENT_PATH", agent)]
}

fn start(extra: &[(&str, &str)]) -> Server {
    let agent = agent_env();
    let mut env: Vec<(&str, &str)> = agent.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.extend_from_slice(extra);
    Server::start(&env)
}

fn machine(s: &Server) -> String {
    s.create(json!({"ttl_seconds": 600}))["id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn terminal(s: &Server, m: &str, body: Value) -> Value {
    let (status, t) = s.call(
        Method::POST,
        &format!("/api/v1/machines/{m}/terminals"),
        Some(body),
    );
    assert_eq!(status, 201, "create terminal: {t}\n{}", s.log_text());
    t
}

struct Ws {
    sock: WebSocket<MaybeTlsStream<TcpStream>>,
    out: Vec<u8>,
    hello: Value,
}

fn connect_raw(url: &str) -> WebSocket<MaybeTlsStream<TcpStream>> {
    let (sock, _) = tungstenite::connect(url).unwrap_or_else(|e| panic!("connect {url}: {e}"));
    if let MaybeTlsStream::Plain(s) = sock.get_ref() {
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
    }
    sock
}

impl Ws {
    fn connect(url: &str) -> Self {
        let mut ws = Self {
            sock: connect_raw(url),
            out: Vec::new(),
            hello: Value::Null,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while ws.hello.is_null() {
            assert!(Instant::now() < deadline, "no hello");
            ws.pump();
        }
        ws
    }

    /// Reads one message if there is one; false on timeout.
    fn pump(&mut self) -> bool {
        match self.sock.read() {
            Ok(Message::Binary(b)) => {
                // Answer cursor-position queries as a terminal does (busybox ash asks at
                // every prompt and waits a while for the answer).
                let queries = b.windows(4).filter(|w| w == b"\x1b[6n").count();
                for _ in 0..queries {
                    self.send("\x1b[1;1R");
                }
                self.out.extend_from_slice(&b);
                true
            }
            Ok(Message::Text(t)) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["t"] == "hello" {
                    self.hello = v;
                }
                true
            }
            Ok(Message::Close(c)) => panic!("closed: {c:?}"),
            Ok(_) => true,
            Err(tungstenite::Error::Io(e)) if no_data_yet(&e) => false,
            Err(e) => panic!("read: {e}"),
        }
    }

    fn send(&mut self, s: &str) {
        self.sock
            .send(Message::Binary(s.as_bytes().to_vec().into()))
            .unwrap();
    }

    fn control(&mut self, v: Value) {
        self.sock.send(Message::Text(v.to_string().into())).unwrap();
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.out).into_owned()
    }

    /// Waits until the output holds `needle`; returns everything received.
    fn until(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.text().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in output: {:?}",
                self.text()
            );
            self.pump();
        }
        self.text()
    }

    fn pid(&self) -> u64 {
        self.hello["pid"].as_u64().unwrap()
    }
}

/// A timed read that ended without data, to be tried again. Interrupted too: a read with a
/// timeout (SO_RCVTIMEO) is never restarted after a signal handler ran, and tokio (the
/// native driver's teardown in `Server::drop`) leaves a SIGCHLD handler in this process.
/// (tungstenite keeps a partly read frame for the next read.)
fn no_data_yet(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock
            | std::io::ErrorKind::TimedOut
            | std::io::ErrorKind::Interrupted
    )
}

/// Reads until the server closes; returns the close code and reason.
fn close_of(mut sock: WebSocket<MaybeTlsStream<TcpStream>>) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "no close frame");
        match sock.read() {
            Ok(Message::Close(Some(f))) => return (f.code.into(), f.reason.to_string()),
            Ok(Message::Close(None)) => return (1005, String::new()),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if no_data_yet(&e) => {}
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// Marker the shell prints only when a command ran (the echoed command line differs).
fn marker(tag: &str) -> (String, String) {
    (format!("echo {tag}-$((6*7))\r"), format!("{tag}-42"))
}

#[test]
fn shell_survives_reconnect_and_gateway_sigkill() {
    let mut s = start(&[]);
    let m = machine(&s);
    let t = terminal(&s, &m, json!({}));
    let url = t["ws_url"].as_str().unwrap().to_string();
    let mut ws = Ws::connect(&url);
    assert_eq!(ws.hello["role"], "owner");
    let pid = ws.pid();
    assert!(pid > 0);
    ws.send("cd /tmp; sleep 4242 &\r");
    let (cmd, want) = marker("first");
    ws.send(&cmd);
    ws.until(&want);
    ws.send("echo shell=$$\r");
    ws.until(&format!("shell={pid}"));
    drop(ws);

    // A reload: the same shell, its screen repainted, nothing replayed twice.
    let mut ws = Ws::connect(&url);
    assert_eq!(ws.pid(), pid, "same shell after reconnect");
    let screen = ws.until(&want);
    assert_eq!(
        screen.matches(&want).count(),
        1,
        "screen repainted once, not replayed: {screen:?}"
    );
    drop(ws);

    // The gateway dies hard while a job runs; after restart everything is still there.
    s.restart_after_sigkill();
    let url = url.replace(
        url.split("/ws/").next().unwrap(),
        &s.url.replace("http://", "ws://"),
    );
    let mut ws = Ws::connect(&url);
    assert_eq!(ws.pid(), pid, "same shell after gateway SIGKILL");
    ws.until(&want);
    ws.send("echo cwd=$(pwd) shell=$$; jobs\r");
    ws.until(&format!("cwd=/tmp shell={pid}"));
    let out = ws.until("Running");
    assert!(out.contains("sleep 4242"), "{out}");
}

#[test]
fn viewer_sees_owner_and_cannot_type() {
    let s = start(&[]);
    let m = machine(&s);
    let t = terminal(&s, &m, json!({}));
    let mut owner = Ws::connect(t["ws_url"].as_str().unwrap());
    let mut viewer = Ws::connect(t["viewer_ws_url"].as_str().unwrap());
    assert_eq!(viewer.hello["role"], "viewer");
    let (cmd, want) = marker("owner");
    owner.send(&cmd);
    viewer.until(&want);
    viewer.send("echo viewer-$((5*5))\r");
    viewer.control(json!({"t": "resize", "rows": 10, "cols": 20}));
    let (cmd, want) = marker("after");
    owner.send(&cmd);
    owner.until(&want);
    viewer.until(&want);
    assert!(!owner.text().contains("viewer-25"), "{}", owner.text());
    owner.send("stty size\r");
    owner.until("24 80");
}

#[test]
fn output_is_binary_safe_and_resize_reaches_the_pty() {
    let s = start(&[]);
    let m = machine(&s);
    let t = terminal(&s, &m, json!({"rows": 30, "cols": 100}));
    let mut ws = Ws::connect(t["ws_url"].as_str().unwrap());
    ws.send("stty size\r");
    ws.until("30 100");
    ws.control(json!({"t": "resize", "rows": 40, "cols": 132}));
    ws.send("stty size\r");
    ws.until("40 132");
    // Regression: on the native driver keystrokes go straight into the pty while the
    // resize went through the session daemon, and under load `stty` ran first. A command
    // typed right after a resize must see the new size, every time.
    for i in 1..=8 {
        ws.control(json!({"t": "resize", "rows": 40 + i, "cols": 132 + i}));
        ws.send("stty size\r");
        ws.until(&format!("{} {}", 40 + i, 132 + i));
    }
    // Invalid UTF-8 and a character split across writes arrive byte for byte.
    ws.send("printf 'A\\377\\376B'; printf '\\303'; sleep 0.2; printf '\\251Z\\n'\r");
    let deadline = Instant::now() + Duration::from_secs(20);
    let want: &[u8] = b"A\xff\xfeB\xc3\xa9Z";
    while !ws.out.windows(want.len()).any(|w| w == want) {
        assert!(
            Instant::now() < deadline,
            "bytes not found: {:?}",
            ws.text()
        );
        ws.pump();
    }
    let (cmd, want) = marker("alive");
    ws.send(&cmd);
    ws.until(&want);
}

#[test]
fn ctrl_c_stops_a_flood_quickly_and_a_big_cat_completes() {
    let s = start(&[]);
    let m = machine(&s);
    let t = terminal(&s, &m, json!({}));
    let mut ws = Ws::connect(t["ws_url"].as_str().unwrap());
    ws.send("yes 0123456789abcdefghijklmnopqrstuvwxyz0123456789 | head -c 20000000 > /tmp/big; echo made-$((1+1))\r");
    ws.until("made-2");
    ws.out.clear();
    let start_cat = Instant::now();
    ws.send("cat /tmp/big; echo catdone-$((2+2))\r");
    let mut total = 0usize;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "cat did not finish");
        ws.pump();
        if ws.out.len() > 1 << 20 {
            total += ws.out.len() - 64;
            ws.out.drain(..ws.out.len() - 64);
        }
        if ws.text().contains("catdone-4") {
            total += ws.out.len();
            break;
        }
    }
    let secs = start_cat.elapsed().as_secs_f64();
    eprintln!("cat 20 MB: {:.1} MB/s", total as f64 / secs / 1e6);
    assert!(total >= 20_000_000, "received {total} bytes");

    ws.out.clear();
    ws.send("yes\r");
    while ws.out.len() < 2_000_000 {
        ws.pump();
    }
    let sent = Instant::now();
    ws.send("\x03");
    ws.send("echo stopped-$((3+3))\r");
    let mut tail = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "Ctrl-C did not stop yes");
        ws.out.clear();
        ws.pump();
        tail.extend_from_slice(&ws.out);
        if tail.len() > 4096 {
            tail.drain(..tail.len() - 4096);
        }
        if String::from_utf8_lossy(&tail).contains("stopped-6") {
            break;
        }
    }
    let took = sent.elapsed();
    eprintln!("Ctrl-C to prompt: {took:?}");
    assert!(took < Duration::from_secs(1), "Ctrl-C took {took:?}");
}

#[test]
fn tokens_limits_origin_and_close_codes() {
    let s = start(&[
        ("RNR_TERMINAL__MAX_PER_MACHINE", "2"),
        ("RNR_TERMINAL__TOKEN_TTL_SECONDS", "2"),
    ]);
    let m = machine(&s);
    let t = terminal(&s, &m, json!({}));
    let id = t["id"].as_str().unwrap();
    let ws_base = s.url.replace("http://", "ws://");

    // Unknown machine, no API key.
    let (st, e) = s.call(
        Method::POST,
        "/api/v1/machines/m-nope/terminals",
        Some(json!({})),
    );
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (404, Some("machine_not_found"))
    );
    let st = s
        .client()
        .post(format!("{}/api/v1/machines/{m}/terminals", s.url))
        .send()
        .unwrap()
        .status();
    assert_eq!(st, 401);

    // A forged token and another terminal's token.
    let sock = connect_raw(&format!("{ws_base}/ws/terminals/{id}?token=forged.token"));
    assert_eq!(close_of(sock).0, 4001);
    let t2 = terminal(&s, &m, json!({}));
    let sock = connect_raw(&format!(
        "{ws_base}/ws/terminals/{id}?token={}",
        t2["token"].as_str().unwrap()
    ));
    assert_eq!(close_of(sock).0, 4001);

    // The limit per machine.
    let (st, e) = s.call(
        Method::POST,
        &format!("/api/v1/machines/{m}/terminals"),
        Some(json!({})),
    );
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (429, Some("terminal_limit_reached")),
        "{e}"
    );

    // Another site's page gets no socket.
    let mut req =
        tungstenite::client::IntoClientRequest::into_client_request(t["ws_url"].as_str().unwrap())
            .unwrap();
    req.headers_mut()
        .insert("Origin", "http://evil.example".parse().unwrap());
    match tungstenite::connect(req) {
        Err(tungstenite::Error::Http(r)) => assert_eq!(r.status(), 403),
        other => panic!("cross-origin socket allowed: {:?}", other.map(|_| ())),
    }

    // An expired token is refused with its own code; a connected client got fresh ones.
    let mut live = Ws::connect(t["ws_url"].as_str().unwrap());
    std::thread::sleep(Duration::from_millis(3200));
    let sock = connect_raw(t["ws_url"].as_str().unwrap());
    let (code, reason) = close_of(sock);
    assert_eq!(code, 4002, "{reason}");
    assert!(reason.contains("expired"), "{reason}");
    for _ in 0..10 {
        live.pump();
    }
    let fresh = live.hello["token"].as_str().unwrap().to_string();
    let again = Ws::connect(&format!("{ws_base}/ws/terminals/{id}?token={fresh}"));
    assert_eq!(again.pid(), live.pid());

    // The machine goes away: its terminals close with "machine gone".
    let (st, _) = s.call(Method::DELETE, &format!("/api/v1/machines/{m}"), None);
    assert_eq!(st, 204);
    let (code, reason) = close_of(live.sock);
    assert_eq!(code, 4004, "{reason}");
}

#[test]
fn idle_terminals_end_and_sessions_are_recorded() {
    let s = start(&[("RNR_TERMINAL__IDLE_SECONDS", "3")]);
    let m = machine(&s);
    let t = terminal(&s, &m, json!({"record": true}));
    let id = t["id"].as_str().unwrap().to_string();
    let mut ws = Ws::connect(t["ws_url"].as_str().unwrap());
    // Past the prompt's cursor query, so its answer is not typed into the command.
    ws.until("# ");
    std::thread::sleep(Duration::from_millis(500));
    ws.send("printf 'rec-\\303'; sleep 0.3; printf '\\251-done\\n'\r");
    ws.until("-done");
    let (code, reason) = close_of(ws.sock);
    assert_eq!(code, 4008, "{reason}");

    let resp = s
        .req(Method::GET, &format!("/api/v1/terminals/{id}/recording"))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let cast = resp.text().unwrap();
    let mut lines = cast.lines();
    let header: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(header["version"], 2);
    let text: String = lines
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e[1] == "o")
        .map(|e| e[2].as_str().unwrap().to_string())
        .collect();
    assert!(text.contains("rec-é-done"), "{text:?}");
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[test]
fn a_stalled_client_costs_a_bounded_buffer_and_is_dropped() {
    let s = start(&[("RNR_TERMINAL__PING_SECONDS", "2")]);
    let pid = s.child.as_ref().unwrap().id();
    let m = machine(&s);
    let t = terminal(&s, &m, json!({}));
    let mut stalled = Ws::connect(t["ws_url"].as_str().unwrap());
    // Another terminal on the same gateway must stay responsive meanwhile.
    let t2 = terminal(&s, &m, json!({}));
    let mut other = Ws::connect(t2["ws_url"].as_str().unwrap());
    stalled.send("yes\r");
    while stalled.out.len() < 1_000_000 {
        stalled.pump();
    }
    std::thread::sleep(Duration::from_millis(500));
    let before = rss_kb(pid);
    let mut peak = before;
    let stall_start = Instant::now();
    let mut checked = false;
    while stall_start.elapsed() < Duration::from_secs(4) {
        // The other client keeps reading (and answering pings).
        other.pump();
        peak = peak.max(rss_kb(pid));
        if !checked && stall_start.elapsed() > Duration::from_secs(2) {
            checked = true;
            let (cmd, want) = marker("responsive");
            let sent = Instant::now();
            other.send(&cmd);
            other.until(&want);
            // Generous for a loaded 2-core CI machine; stuck behind the stalled client it
            // would never answer.
            let took = sent.elapsed();
            assert!(
                took < Duration::from_secs(5),
                "other terminal answered in {took:?}"
            );
        }
    }
    let growth = peak.saturating_sub(before);
    eprintln!("gateway RSS growth with a client stalled 4 s: {growth} KiB");
    assert!(
        growth < 1024,
        "gateway grew {growth} KiB for a stalled client"
    );
    // Not reading for three ping intervals (6 s) is dead: the gateway lets go of the client.
    // Wait well past that before reading again: a client that reads answers pings and is
    // alive, so on a loaded CI host a late timeout check would otherwise race the read.
    std::thread::sleep(Duration::from_secs(14));
    let mut code = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while code.is_none() && Instant::now() < deadline {
        match stalled.sock.read() {
            Ok(Message::Close(Some(f))) => code = Some(u16::from(f.code)),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if no_data_yet(&e) => {}
            Err(_) => code = Some(0),
        }
    }
    assert!(
        matches!(code, Some(4408) | Some(0)),
        "stalled client not dropped: {code:?}\n{}",
        s.log_text()
    );
}

/// Descriptors of `pid` that are pty masters.
fn pty_masters(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter(|t| t.to_string_lossy().ends_with("ptmx"))
                .count()
        })
        .unwrap_or(0)
}

/// Where the driver can pass descriptors (native), the session daemon hands the gateway its
/// pty, and keystrokes and output skip the daemon; the daemon keeps a copy for repaints.
/// Elsewhere (Docker) the daemon relays. (Surviving a gateway SIGKILL either way:
/// `shell_survives_reconnect_and_gateway_sigkill`.)
#[test]
fn the_gateway_holds_the_pty_where_the_driver_passes_descriptors() {
    let s = start(&[]);
    let m = machine(&s);
    let t = terminal(&s, &m, json!({}));
    let url = t["ws_url"].as_str().unwrap().to_string();
    let mut ws = Ws::connect(&url);
    let (cmd, want) = marker("direct");
    ws.send(&cmd);
    ws.until(&want);
    let pid = s.child.as_ref().unwrap().id();
    let expected = usize::from(common::native());
    assert_eq!(
        pty_masters(pid),
        expected,
        "pty masters held by the gateway"
    );
    // Output read by the gateway reached the daemon's screen model: a second client's
    // repaint shows it, once.
    ws.send("seq 1 3000 | tail -n 2; printf 'mo%s\\n' del\r");
    ws.until("model");
    let mut viewer = Ws::connect(&url);
    let screen = viewer.until("model");
    assert!(
        screen.contains("3000"),
        "repaint holds the output: {screen:?}"
    );
    assert_eq!(screen.matches("model").count(), 1, "{screen:?}");
}

/// A WebSocket client that speaks permessage-deflate itself (tungstenite has none): a
/// plain TCP stream, the handshake and frames written and read by hand.
struct RawWs {
    s: TcpStream,
    /// The 101 response's head.
    head: String,
    rest: Vec<u8>,
}

const FIN: u8 = 0x80;
const RSV1: u8 = 0x40;
const BINARY: u8 = 0x2;
/// The sync-flush tail RFC 7692 strips from every compressed message.
const TAIL: [u8; 4] = [0, 0, 0xff, 0xff];

/// `data` compressed as one permessage-deflate message at `level`.
fn deflated(data: &[u8], level: u32) -> Vec<u8> {
    let mut c = flate2::Compress::new(flate2::Compression::new(level), false);
    let mut out = Vec::with_capacity(data.len() + 64);
    c.compress_vec(data, &mut out, flate2::FlushCompress::Sync)
        .unwrap();
    assert!(out.ends_with(&TAIL) && c.total_in() == data.len() as u64);
    out.truncate(out.len() - 4);
    out
}

fn inflated(payload: &[u8]) -> Vec<u8> {
    let mut d = flate2::Decompress::new(false);
    let mut input = payload.to_vec();
    input.extend_from_slice(&TAIL);
    let mut out = Vec::with_capacity(payload.len() * 20 + 1024);
    loop {
        let at = d.total_in() as usize;
        d.decompress_vec(&input[at..], &mut out, flate2::FlushDecompress::Sync)
            .unwrap();
        if d.total_in() as usize == input.len() && out.len() < out.capacity() {
            return out;
        }
        out.reserve(out.capacity());
    }
}

impl RawWs {
    fn connect(url: &str, extensions: Option<&str>) -> Self {
        use std::io::{Read, Write};
        let rest = url.strip_prefix("ws://").unwrap();
        let (host, path) = rest.split_at(rest.find('/').unwrap());
        let mut s = TcpStream::connect(host).unwrap();
        let ext = extensions
            .map(|e| format!("Sec-WebSocket-Extensions: {e}\r\n"))
            .unwrap_or_default();
        // The key and accept value of RFC 6455's example.
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{ext}\r\n"
        )
        .unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut got = Vec::new();
        let mut b = [0u8; 4096];
        let end = loop {
            if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = match s.read(&mut b) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue, // no_data_yet
                r => r.unwrap(),
            };
            assert!(n > 0, "no handshake response");
            got.extend_from_slice(&b[..n]);
        };
        let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 101"), "{head}");
        assert!(
            head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=\r\n"),
            "{head}"
        );
        Self {
            s,
            head,
            rest: got[end..].to_vec(),
        }
    }

    fn read_exact(&mut self, n: usize) -> Vec<u8> {
        use std::io::Read;
        while self.rest.len() < n {
            let mut b = [0u8; 65536];
            let got = match self.s.read(&mut b) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue, // no_data_yet
                r => r.expect("read from the gateway"),
            };
            assert!(got > 0, "the gateway closed the connection");
            self.rest.extend_from_slice(&b[..got]);
        }
        self.rest.drain(..n).collect()
    }

    /// One frame: (first header byte, payload), pings answered. The server never masks.
    fn frame(&mut self) -> (u8, Vec<u8>) {
        loop {
            let (b0, p) = self.any_frame();
            if b0 & 0x0f != 0x9 {
                return (b0, p);
            }
            self.send_frame(FIN | 0xa, &p);
        }
    }

    fn any_frame(&mut self) -> (u8, Vec<u8>) {
        let h = self.read_exact(2);
        assert_eq!(h[1] & 0x80, 0, "masked frame from the server");
        let len = match h[1] & 0x7f {
            126 => u16::from_be_bytes(self.read_exact(2).try_into().unwrap()) as usize,
            127 => u64::from_be_bytes(self.read_exact(8).try_into().unwrap()) as usize,
            n => n as usize,
        };
        (h[0], self.read_exact(len))
    }

    fn send_frame(&mut self, b0: u8, payload: &[u8]) {
        use std::io::Write;
        let key = [0x37, 0xfa, 0x21, 0x3d];
        let mut f = vec![b0];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n <= 0xffff => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        self.s.write_all(&f).unwrap();
    }

    /// Reads until the hello; true if it came as an uncompressed text frame.
    fn hello(&mut self) -> bool {
        loop {
            let (b0, p) = self.frame();
            let text = serde_json::from_slice::<Value>(&p).ok();
            if b0 & 0x0f == 0x1 && text.is_some_and(|v| v["t"] == "hello") {
                return b0 & RSV1 == 0;
            }
        }
    }

    /// Terminal output until it holds `needle`, and how many binary messages came
    /// compressed and how many plain.
    fn output_until(&mut self, needle: &str) -> (String, usize, usize) {
        let mut out = Vec::new();
        let (mut compressed, mut plain) = (0, 0);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !String::from_utf8_lossy(&out).contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in output: {:?}",
                String::from_utf8_lossy(&out)
            );
            let (b0, p) = self.frame();
            if b0 & 0x0f != BINARY {
                continue;
            }
            let data = if b0 & RSV1 != 0 {
                compressed += 1;
                inflated(&p)
            } else {
                plain += 1;
                p
            };
            // Answer cursor-position queries as a terminal does (busybox ash asks).
            for _ in 0..data.windows(4).filter(|w| w == b"\x1b[6n").count() {
                self.send_frame(FIN | BINARY, b"\x1b[1;1R");
            }
            out.extend_from_slice(&data);
        }
        (
            String::from_utf8_lossy(&out).into_owned(),
            compressed,
            plain,
        )
    }

    /// Reads until the server closes; returns the close code and reason.
    fn close_code(&mut self) -> (u16, String) {
        loop {
            let (b0, p) = self.frame();
            if b0 & 0x0f == 0x8 {
                let code = u16::from_be_bytes([p[0], p[1]]);
                return (code, String::from_utf8_lossy(&p[2..]).into_owned());
            }
        }
    }
}

#[test]
fn permessage_deflate_compresses_bulk_output_and_inflates_input() {
    let s = start(&[]);
    let m = machine(&s);
    let t = terminal(&s, &m, json!({}));
    let mut ws = RawWs::connect(
        t["ws_url"].as_str().unwrap(),
        Some("permessage-deflate; client_max_window_bits"),
    );
    assert!(
        ws.head.contains(
            "sec-websocket-extensions: permessage-deflate; server_no_context_takeover; \
             client_no_context_takeover\r\n"
        ),
        "{}",
        ws.head
    );
    assert!(ws.hello(), "the hello must be an uncompressed text frame");
    // Input compressed as a browser sends it, every message on its own.
    let (cmd, want) = marker("inflated");
    ws.send_frame(FIN | RSV1 | BINARY, &deflated(cmd.as_bytes(), 6));
    ws.send_frame(
        FIN | RSV1 | BINARY,
        &deflated(b"seq 1 20000; echo seq-$((6*7))\r", 1),
    );
    let (text, compressed, plain) = ws.output_until("\nseq-42");
    assert!(text.contains(&format!("\n{want}")), "{text:?}");
    let seq: String = (1..=20000).map(|i| format!("{i}\r\n")).collect();
    assert!(text.contains(&seq), "seq output lost or reordered");
    // ~110 KB of digits: compressed; the short prompt and echoes: not.
    assert!(
        compressed >= 1 && plain >= 1,
        "{compressed} compressed, {plain} plain"
    );
}

#[test]
fn compressed_frames_without_deflate_and_decompression_bombs_are_refused() {
    let s = start(&[]);
    let m = machine(&s);
    let t = terminal(&s, &m, json!({}));
    let url = t["ws_url"].as_str().unwrap();

    // Not negotiated: RSV1 is a protocol error.
    let mut ws = RawWs::connect(url, None);
    assert!(!ws.head.contains("sec-websocket-extensions"), "{}", ws.head);
    ws.hello();
    ws.send_frame(FIN | RSV1 | BINARY, &deflated(b"echo hi\r", 6));
    let (code, reason) = ws.close_code();
    assert_eq!(code, 1002, "{reason}");
    assert!(reason.contains("RSV1"), "{reason}");

    // Negotiated, but on a control frame.
    let offer = Some("permessage-deflate");
    let mut ws = RawWs::connect(url, offer);
    ws.hello();
    ws.send_frame(FIN | RSV1 | 0x9, b"");
    assert_eq!(ws.close_code().0, 1002);

    // 1 MiB in about a kilobyte: refused once past the input limit, not inflated whole.
    let bomb = deflated(&vec![b'a'; 1 << 20], 9);
    assert!(bomb.len() < 4096, "{}", bomb.len());
    let mut ws = RawWs::connect(url, offer);
    ws.hello();
    ws.send_frame(FIN | RSV1 | BINARY, &bomb);
    let (code, reason) = ws.close_code();
    assert_eq!(code, 1009, "{reason}");
    assert!(reason.contains("too big"), "{reason}");

    // The terminal itself is unharmed: a well-behaved client still gets its shell.
    let mut ws = RawWs::connect(url, offer);
    ws.hello();
    let (cmd, want) = marker("after-bomb");
    ws.send_frame(FIN | RSV1 | BINARY, &deflated(cmd.as_bytes(), 1));
    ws.output_until(&want);
}

//! Test harness for the HTTP layer in-process: the real store, platform, checker, terminal
//! gateway and UI over the fake driver (machines are process trees with the real agent),
//! served by `rnr_http::run` on a local port, with two exercises (`alpha`, `beta`) and an
//! API key. No Docker, no root beyond what the fake driver needs.

#![allow(dead_code)]

use rnr_checker::{Checker, CheckerConfig};
use rnr_core::{KeyLimits, MachinePolicy, Platform};
use rnr_driver::Driver;
use rnr_driver_fake::{FakeConfig, FakeDriver};
use rnr_http::{AppState, HttpConfig, ServerLimits};
use rnr_store::Store;
use rnr_terminal::{Gateway, GatewayConfig, TerminalSettings};
use rnr_ui::{Ui, UiConfig};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

pub const LMS: &str = "https://lms.example";

const EXERCISE: &str = r#"
title = "TITLE"
image = "tiny"

[[check]]
name = "shell"
kind = "command"
command = "true"
message = "the machine has no shell"
"#;

static TAR: OnceCell<PathBuf> = OnceCell::const_new();

/// The tiny (busybox) image as a tar, built once per test binary.
async fn tiny_tar() -> PathBuf {
    TAR.get_or_init(|| async {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("http-tiny-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let tar = dir.join("tiny.tar");
        let (d, t) = (dir.clone(), tar.clone());
        tokio::task::spawn_blocking(move || {
            rnr_images::build_tiny("/bin/busybox".as_ref(), &d, &t, &rnr_images::NoProgress)
        })
        .await
        .unwrap()
        .expect("the tiny image builds (busybox-static installed?)");
        tar
    })
    .await
    .clone()
}

/// What a test may change about the platform it gets.
pub struct Options {
    pub ui: UiConfig,
    pub policy: MachinePolicy,
    pub terminal: TerminalSettings,
    pub checker: CheckerConfig,
    /// Start the checker's workers and tasks (off: runs stay queued).
    pub start_checker: bool,
    pub trusted_proxies: Vec<String>,
    pub limits: ServerLimits,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            ui: UiConfig::default(),
            policy: MachinePolicy {
                default_image: "tiny".into(),
                capacity: 40,
                ..MachinePolicy::default()
            },
            terminal: TerminalSettings::default(),
            checker: CheckerConfig {
                workers: 2,
                debounce: Duration::from_millis(300),
                ..CheckerConfig::default()
            },
            start_checker: true,
            trusted_proxies: Vec::new(),
            limits: ServerLimits::default(),
        }
    }
}

/// A running platform and its HTTP server.
pub struct Lab {
    pub url: String,
    pub state: AppState,
    /// A valid API key and its id.
    pub key: String,
    pub key_id: String,
    pub store: Store,
    pub driver: FakeDriver,
    pub data: tempfile::TempDir,
    pub client: reqwest::Client,
    stop: CancellationToken,
    server: Option<tokio::task::JoinHandle<()>>,
}

fn write(dir: &Path, name: &str, text: &str) {
    let p = dir.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

/// Sends `r`: (status, headers, JSON body or Null).
async fn answer(r: reqwest::RequestBuilder) -> (u16, reqwest::header::HeaderMap, Value) {
    let resp = r.send().await.expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap_or_default();
    (
        status,
        headers,
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

impl Lab {
    pub async fn start(opts: Options) -> Lab {
        let data = tempfile::tempdir().unwrap();
        let exercises = data.path().join("exercises");
        for name in ["alpha", "beta"] {
            let dir = exercises.join(name);
            write(&dir, "exercise.toml", &EXERCISE.replace("TITLE", name));
            write(&dir, "README.md", &format!("# {name}\n"));
            write(&dir, "solution.sh", "true\n");
        }
        let store = Store::open(&data.path().join("rnr.db")).await.unwrap();
        let driver = FakeDriver::open(FakeConfig::new(
            data.path().join("fake"),
            format!("http-test-{}", std::process::id()),
            rnr_driver::conformance::agent_path(),
        ))
        .unwrap();
        driver
            .images()
            .import("tiny", &tiny_tar().await)
            .await
            .expect("import the tiny image");
        let platform = Platform::new(store.clone(), Arc::new(driver.clone()), opts.policy);
        let stop = CancellationToken::new();
        let checker = Checker::new(
            platform.clone(),
            store.check_runs(),
            CheckerConfig {
                exercises_dir: Some(exercises),
                ..opts.checker
            },
        );
        if opts.start_checker {
            checker.start(stop.clone()).await.unwrap();
        }
        let terminals = Gateway::new(
            platform.clone(),
            GatewayConfig::new(&opts.terminal, data.path()),
        )
        .await
        .unwrap();
        let ui = Ui::new(
            platform.clone(),
            checker.clone(),
            terminals.clone(),
            opts.ui,
        )
        .await
        .unwrap();
        let http = HttpConfig::new(&[LMS.to_string()], &opts.trusted_proxies, opts.limits).unwrap();
        let key = rnr_core::new_api_key(&store, "lms", KeyLimits::default())
            .await
            .unwrap();
        let state = AppState {
            platform,
            checker,
            terminals,
            ui,
            http,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = rnr_http::app(state.clone());
        let token = stop.clone();
        let server = tokio::spawn(async move {
            rnr_http::run(listener, app, opts.limits, async move {
                token.cancelled().await
            })
            .await
            .unwrap()
        });
        Lab {
            url,
            state,
            key: key.key,
            key_id: key.id,
            store,
            driver,
            data,
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
            stop,
            server: Some(server),
        }
    }

    /// A new API key with `limits`: (key, id).
    pub async fn new_key(&self, name: &str, limits: KeyLimits) -> (String, String) {
        let k = rnr_core::new_api_key(&self.store, name, limits)
            .await
            .unwrap();
        (k.key, k.id)
    }

    /// `method path` with API key `key` and a JSON body: (status, headers, JSON or Null).
    pub async fn call_as(
        &self,
        key: Option<&str>,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut r = self.client.request(method, format!("{}{path}", self.url));
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        answer(r).await
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        let resp = self.client.get(format!("{}/metrics", self.url)).send();
        resp.await.unwrap().text().await.unwrap()
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let (s, _, v) = self
            .call_as(Some(&self.key.clone()), method, path, body)
            .await;
        (s, v)
    }

    /// `POST /learn/api/…` (or GET) as the learner holding `token`.
    pub async fn learn(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        forwarded_for: Option<&str>,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut r = self
            .client
            .request(method, format!("{}/learn/api/{path}", self.url))
            .header("x-rnr-learner", token);
        if let Some(f) = forwarded_for {
            r = r.header("x-forwarded-for", f);
        }
        answer(r).await
    }

    /// The learner token a page holds (`data-learner`), fetched like a browser: `path` is
    /// `/exercises/NAME`, `/learn/LINK` or `/embed/LINK`.
    pub async fn page_token(
        &self,
        path: &str,
        forwarded_for: Option<&str>,
    ) -> (u16, Option<String>) {
        let mut r = self.client.get(format!("{}{path}", self.url));
        if let Some(f) = forwarded_for {
            r = r.header("x-forwarded-for", f);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let html = resp.text().await.unwrap();
        let token = html
            .split_once("data-learner=\"")
            .and_then(|(_, rest)| rest.split_once('"'))
            .map(|(t, _)| t.to_string());
        (status, token)
    }

    /// A signed link for `learner` on `exercise` made with API key `key`.
    pub async fn link(&self, key: &str, learner: &str, exercise: &str) -> Value {
        let (st, _, v) = self
            .call_as(
                Some(key),
                reqwest::Method::POST,
                "/api/v1/links",
                Some(serde_json::json!({"learner": learner, "exercise": exercise})),
            )
            .await;
        assert_eq!(st, 201, "link: {v}");
        v
    }

    /// Waits for check run `id` (API) to finish; returns it.
    pub async fn finished_run(&self, id: &str) -> Value {
        for _ in 0..600 {
            let (st, run) = self
                .call(reqwest::Method::GET, &format!("/api/v1/checks/{id}"), None)
                .await;
            assert_eq!(st, 200, "{run}");
            if run["state"] == "done" || run["state"] == "errored" {
                return run;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("check run {id} did not finish");
    }

    pub fn ws_base(&self) -> String {
        self.url.replace("http://", "ws://")
    }

    /// Stops the server and deletes every machine the fake driver holds.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(s) = self.server.take() {
            let _ = tokio::time::timeout(Duration::from_secs(15), s).await;
        }
        for m in self.driver.list().await.unwrap_or_default() {
            let _ = self.driver.delete(&m.id).await;
        }
    }
}

impl Drop for Lab {
    /// A failed test shows what each machine's init said (the fake driver's machines log
    /// there).
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let machines = self.data.path().join("fake/machines");
        for e in std::fs::read_dir(&machines).into_iter().flatten().flatten() {
            let log = std::fs::read_to_string(e.path().join("init.log")).unwrap_or_default();
            eprintln!("init.log of {}:\n{log}", e.file_name().to_string_lossy());
        }
    }
}

/// The first message of a terminal socket: 101 when the server said hello, else the
/// close code it sent (or the HTTP status refusing the upgrade).
pub async fn socket_outcome(url: &str) -> (u16, String) {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    match tokio_tungstenite::connect_async(url).await {
        Ok((mut ws, _)) => {
            let first = tokio::time::timeout(Duration::from_secs(30), ws.next()).await;
            match first {
                Ok(Some(Ok(Message::Text(t)))) if t.contains("\"hello\"") => (101, t.to_string()),
                Ok(Some(Ok(Message::Close(Some(f))))) => (u16::from(f.code), f.reason.to_string()),
                other => (0, format!("{other:?}")),
            }
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => (r.status().as_u16(), String::new()),
        Err(e) => (0, e.to_string()),
    }
}

/// The `token` query parameter of a URL.
pub fn token_of(url: &str) -> String {
    url.split_once("token=")
        .map(|(_, t)| t.split('&').next().unwrap().to_string())
        .unwrap_or_else(|| panic!("no token in {url}"))
}

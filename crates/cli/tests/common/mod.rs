//! Test harness: runs the real `rnr` binary against the real Docker Engine, each server
//! with its own data dir and port, and removes every machine it made when dropped.

#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Once};
use std::time::Duration;

pub const IMAGE: &str = "tiny";
pub const NETWORK: &str = "rnr-test-api";

pub fn rnr() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rnr"))
}

static IMAGE_ONCE: Once = Once::new();

/// Builds and imports the tiny image once per test binary.
pub fn ensure_image(data_dir: &Path) {
    IMAGE_ONCE.call_once(|| {
        let out = rnr()
            .args(["image", "build", "tiny", "--name", IMAGE, "--data-dir"])
            .arg(data_dir)
            .env("RNR_DOCKER__NETWORK", NETWORK)
            .output()
            .expect("run rnr image build");
        assert!(
            out.status.success(),
            "rnr image build tiny failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

pub struct Server {
    pub child: Option<Child>,
    pub url: String,
    pub key: String,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub extra_env: Vec<(String, String)>,
    pub logs: mpsc::Receiver<String>,
}

impl Server {
    /// Starts `rnr serve` on a fresh data dir with an API key.
    pub fn start(extra_env: &[(&str, &str)]) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data_dir = tmp.path().to_path_buf();
        ensure_image(&data_dir);
        let out = rnr()
            .args(["apikey", "create", "test", "--data-dir"])
            .arg(&data_dir)
            .output()
            .expect("rnr apikey create");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let key = String::from_utf8(out.stdout).unwrap().trim().to_string();
        assert!(key.starts_with("rnr_"), "key printed: {key}");
        let extra_env: Vec<(String, String)> = extra_env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (tx, logs) = mpsc::channel();
        let mut s = Self {
            child: None,
            url: String::new(),
            key,
            data_dir,
            _tmp: Some(tmp),
            extra_env,
            logs,
        };
        s.spawn(tx);
        s
    }

    /// (Re)starts the server process on the same data dir.
    pub fn spawn(&mut self, tx: mpsc::Sender<String>) {
        let mut cmd = rnr();
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&self.data_dir)
            .env("RNR_DOCKER__NETWORK", NETWORK)
            .env("RNR_DEFAULT_IMAGE", IMAGE)
            .env("RNR_REAP_INTERVAL_SECONDS", "1")
            .env("RNR_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn rnr serve");
        let stderr = child.stderr.take().unwrap();
        let (url_tx, url_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(i) = line.find("rnr listening on ") {
                    let _ = url_tx.send(line[i + "rnr listening on ".len()..].trim().to_string());
                }
                let _ = tx.send(line);
            }
        });
        self.url = url_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("rnr serve printed its address");
        self.child = Some(child);
    }

    pub fn restart_after_sigkill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("SIGKILL rnr serve");
            c.wait().unwrap();
        }
        let (tx, logs) = mpsc::channel();
        self.logs = logs;
        self.spawn(tx);
    }

    pub fn log_text(&self) -> String {
        self.logs.try_iter().collect::<Vec<_>>().join("\n")
    }

    pub fn client(&self) -> reqwest::blocking::Client {
        reqwest::blocking::Client::new()
    }

    pub fn req(&self, method: reqwest::Method, path: &str) -> reqwest::blocking::RequestBuilder {
        self.client()
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.key)
            .timeout(Duration::from_secs(120))
    }

    /// Sends and returns (status, JSON body or Null).
    pub fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut r = self.req(method, path);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub fn create(&self, body: Value) -> Value {
        let (status, m) = self.call(reqwest::Method::POST, "/api/v1/machines", Some(body));
        assert_eq!(status, 201, "create: {m}");
        m
    }

    pub fn exec(&self, id: &str, script: &str) -> Value {
        let (status, v) = self.call(
            reqwest::Method::POST,
            &format!("/api/v1/machines/{id}/exec"),
            Some(serde_json::json!({"argv": ["/bin/sh", "-c", script], "timeout_seconds": 60})),
        );
        assert_eq!(status, 200, "exec {script:?}: {v}");
        v
    }

    pub fn instance_owner(&self) -> String {
        let out = Command::new("sqlite3")
            .arg(self.data_dir.join("rnr.db"))
            .arg("SELECT value FROM meta WHERE key = 'instance_id'")
            .output();
        match out {
            Ok(o) => format!("rnr-{}", String::from_utf8_lossy(&o.stdout).trim()),
            Err(_) => String::new(),
        }
    }
}

/// Names of our containers (running or not) as Docker sees them.
pub fn docker_containers(owner: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args(["ps", "-a", "--format", "{{.Names}}", "--filter"])
        .arg(format!("label=io.rootnroll.owner={owner}"))
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

impl Drop for Server {
    fn drop(&mut self) {
        let owner = self.instance_owner();
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if owner.len() > 4 {
            let names = docker_containers(&owner);
            if !names.is_empty() {
                let _ = Command::new("docker")
                    .args(["rm", "-f"])
                    .args(&names)
                    .output();
            }
        }
    }
}

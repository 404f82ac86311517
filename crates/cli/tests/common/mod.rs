//! Test harness: runs the real `rnr` binary against a real driver — the Docker Engine, or
//! the native (crun) driver with `RNR_TEST_DRIVER=native` — each server with its own data
//! dir and port (and, native, its own bridge and subnet), and removes every machine it
//! made when dropped (native: also the bridge, iptables chains and cgroups).

#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Once};
use std::time::{Duration, Instant};

pub const IMAGE: &str = "tiny";
pub const NETWORK: &str = "rnr-test-api";

/// A server whose exercises dir holds exercise `name` made of `files` (relative path,
/// text), with `extra` environment; the dir lives as long as the returned guard.
pub fn exercise_server(
    name: &str,
    files: &[(&str, &str)],
    extra: &[(&str, &str)],
) -> (Server, tempfile::TempDir) {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join(name);
    for (file, text) in files {
        write(&dir, file, text);
    }
    let mut env = vec![("RNR_CHECKER__EXERCISES_DIR", root.path().to_str().unwrap())];
    env.extend_from_slice(extra);
    let s = Server::start(&env);
    (s, root)
}

/// A one-thread HTTP server answering 500 to the first `failures` requests and 200 after;
/// returns its URL and what it received (head, body).
pub fn webhook_sink(failures: usize) -> (String, mpsc::Receiver<(String, Vec<u8>)>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for (n, conn) in listener.incoming().enumerate() {
            let Ok(mut conn) = conn else { return };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut head = String::new();
            let mut len = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
                head.push_str(&line);
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; len];
            if reader.read_exact(&mut body).is_err() {
                continue;
            }
            let status = if n < failures {
                "500 Internal Server Error"
            } else {
                "200 OK"
            };
            let _ = write!(
                conn,
                "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
            let _ = tx.send((head, body));
        }
    });
    (url, rx)
}

/// Writes `text` to `dir/name`, making the folders on the way (exercise folders).
pub fn write(dir: &Path, name: &str, text: &str) {
    let p = dir.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

pub fn rnr() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rnr"));
    // Every other RNR_* variable is configuration to `rnr`, which refuses unknown keys.
    cmd.env_remove("RNR_TEST_DRIVER");
    cmd.env_remove("RNR_VM_ACCEL");
    cmd
}

/// The driver under test: `RNR_TEST_DRIVER` (`docker` unless set).
pub fn test_driver() -> String {
    std::env::var("RNR_TEST_DRIVER").unwrap_or_else(|_| "docker".into())
}

pub fn native() -> bool {
    test_driver() == "native"
}

static IMAGE_ONCE: Once = Once::new();

fn build_image(data_dir: &Path, env: &[(String, String)]) {
    let out = rnr()
        .args(["image", "build", "tiny", "--name", IMAGE, "--data-dir"])
        .arg(data_dir)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("run rnr image build");
    assert!(
        out.status.success(),
        "rnr image build tiny failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Builds and imports the tiny image: once per test binary into Docker, into each data
/// dir's own image store with the native driver or with VMs on (the vm driver's store
/// lives in the data dir whatever the container driver).
pub fn ensure_image(data_dir: &Path, env: &[(String, String)]) {
    let per_data_dir = native() || env.iter().any(|(k, _)| k.starts_with("RNR_VM__"));
    if per_data_dir {
        build_image(data_dir, env);
    } else {
        IMAGE_ONCE.call_once(|| build_image(data_dir, env));
    }
}

static SERVERS: AtomicU32 = AtomicU32::new(0);

/// Environment selecting the driver under test; native servers each get a bridge and
/// subnet of their own, since tests run side by side.
fn driver_env() -> Vec<(String, String)> {
    let mut env = vec![
        ("RNR_DRIVER".to_string(), test_driver()),
        ("RNR_DOCKER__NETWORK".to_string(), NETWORK.to_string()),
    ];
    if native() {
        let pid = std::process::id();
        let n = SERVERS.fetch_add(1, Ordering::Relaxed);
        env.push((
            "RNR_NATIVE__BRIDGE".into(),
            format!("ra{:05}{:02}", pid % 100_000, n % 100),
        ));
        env.push((
            "RNR_NATIVE__SUBNET".into(),
            format!("10.{}.{}.0/24", 200 + pid % 50, n % 256),
        ));
    }
    env
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
        Self::start_in(tempfile::tempdir().expect("tempdir"), extra_env)
    }

    /// Starts `rnr serve` on data dir `tmp` (made by the caller, e.g. on a small
    /// filesystem of its own) with an API key.
    pub fn start_in(tmp: tempfile::TempDir, extra_env: &[(&str, &str)]) -> Self {
        let data_dir = tmp.path().to_path_buf();
        let mut env = driver_env();
        // The vm driver's settings too: an image is imported into every driver's store.
        let mut image_env = env.clone();
        image_env.extend(
            extra_env
                .iter()
                .filter(|(k, _)| k.starts_with("RNR_VM__"))
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        ensure_image(&data_dir, &image_env);
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
        env.extend(
            extra_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        let extra_env = env;
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
        let (child, url_rx) = self.launch(tx);
        self.url = url_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("rnr serve printed its address");
        self.child = Some(child);
    }

    /// Starts the server again after it ended, armed with a fault it may reach before it
    /// listens (see [`Server::wait_crash`]): its address is not waited for.
    pub fn start_dying(&mut self) {
        assert!(self.child.is_none(), "the server still runs");
        let (tx, logs) = mpsc::channel();
        self.logs = logs;
        let (child, _) = self.launch(tx);
        self.child = Some(child);
    }

    fn launch(&mut self, tx: mpsc::Sender<String>) -> (Child, mpsc::Receiver<String>) {
        let mut cmd = rnr();
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&self.data_dir)
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
        (child, url_rx)
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

    /// Sets (`Some`) or removes (`None`) a variable of the server's environment, for its
    /// next (re)start.
    pub fn set_env(&mut self, key: &str, value: Option<&str>) {
        self.extra_env.retain(|(k, _)| k != key);
        if let Some(v) = value {
            self.extra_env.push((key.to_string(), v.to_string()));
        }
    }

    /// Waits for the server to end by itself (a fault it was armed with killed it) and
    /// returns its log; a server that did not end within `limit` fails the test.
    pub fn wait_crash(&mut self, limit: Duration) -> String {
        let mut child = self.child.take().expect("a running server");
        let deadline = std::time::Instant::now() + limit;
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "rnr serve did not die within {limit:?}:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        std::thread::sleep(Duration::from_millis(100));
        let logs = self.log_text();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            status.signal(),
            Some(9),
            "killed by SIGKILL: {status}\n{logs}"
        );
        logs
    }

    /// Starts the server again after it ended (see [`Server::wait_crash`]).
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "the server still runs");
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

/// Queues a run of the machine's checks and waits for it to end.
pub fn run_checks(s: &Server, machine: &str) -> Value {
    let (status, v) = s.call(
        reqwest::Method::POST,
        &format!("/api/v1/machines/{machine}/checks"),
        None,
    );
    assert_eq!(status, 202, "{v}");
    wait_run(s, v["id"].as_str().unwrap(), Duration::from_secs(120))
}

pub fn wait_run(s: &Server, run: &str, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let (status, v) = s.call(reqwest::Method::GET, &format!("/api/v1/checks/{run}"), None);
        assert_eq!(status, 200, "{v}");
        if v["state"] == "done" || v["state"] == "errored" {
            return v;
        }
        assert!(Instant::now() < deadline, "run {run} did not end: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The native driver of a server's data dir, for looking behind the platform's back.
fn native_driver(s: &Server) -> rnr_driver_native::NativeDriver {
    let env = |k: &str| {
        s.extra_env
            .iter()
            .rev()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let mut cfg =
        rnr_driver_native::NativeConfig::new(s.data_dir.join("native"), s.instance_owner());
    cfg.bridge = env("RNR_NATIVE__BRIDGE");
    cfg.subnet = env("RNR_NATIVE__SUBNET");
    rnr_driver_native::NativeDriver::open(cfg).expect("open the native driver's state")
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// Ids of the server's machines as the driver itself sees them (running or not).
pub fn machines(s: &Server) -> Vec<String> {
    if native() {
        let d = native_driver(s);
        let list = block_on(rnr_driver::Driver::list(&d)).expect("native list");
        return list.into_iter().map(|m| m.id).collect();
    }
    docker_containers(&s.instance_owner())
        .into_iter()
        .map(|n| n.trim_start_matches("rnr-").to_string())
        .collect()
}

/// Removes a machine behind the platform's back (as if it had crashed away).
pub fn remove_behind_platform(s: &Server, id: &str) {
    if native() {
        let d = native_driver(s);
        block_on(rnr_driver::Driver::delete(&d, id)).expect("native delete");
        return;
    }
    let rm = Command::new("docker")
        .args(["rm", "-f", &format!("rnr-{id}")])
        .output()
        .unwrap();
    assert!(rm.status.success());
}

/// Processes in the machine's pids cgroup, read from the host.
pub fn pids_current(s: &Server, id: &str) -> u64 {
    let text = if native() {
        std::fs::read_to_string(format!(
            "/sys/fs/cgroup/pids/rnr-{}/{id}/pids.current",
            s.instance_owner()
        ))
    } else {
        let full = Command::new("docker")
            .args(["inspect", "-f", "{{.Id}}", &format!("rnr-{id}")])
            .output()
            .unwrap();
        let cid = String::from_utf8_lossy(&full.stdout).trim().to_string();
        std::fs::read_to_string(format!("/sys/fs/cgroup/pids/docker/{cid}/pids.current")).or_else(
            |_| {
                std::fs::read_to_string(format!(
                    "/sys/fs/cgroup/system.slice/docker-{cid}.scope/pids.current"
                ))
            },
        )
    };
    text.expect("pids cgroup of the machine")
        .trim()
        .parse()
        .unwrap()
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
        if owner.len() > 4 && native() {
            let d = native_driver(self);
            block_on(async {
                for m in rnr_driver::Driver::list(&d).await.unwrap_or_default() {
                    if let Err(e) = rnr_driver::Driver::delete(&d, &m.id).await {
                        eprintln!("teardown: deleting {}: {e}", m.id);
                    }
                }
                d.teardown().await;
            });
        } else if owner.len() > 4 {
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

/// Builds and imports the Debian image once per test binary (the tiny one lacks python3,
/// dpkg and useradd, which exercises need).
pub fn ensure_debian() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let tmp = tempfile::tempdir().unwrap();
        let out = rnr()
            .args(["image", "build", "debian", "--if-missing", "--data-dir"])
            .arg(tmp.path())
            .env("RNR_DRIVER", "docker")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// Runs `terminal-client/test/<script>` in node (playwright-core, installed there, drives
/// Debian's Chromium) and returns the JSON line it prints; fails the test with its reason
/// and the server's log otherwise.
pub fn run_browser_script(s: &Server, script: &str, args: &[&str]) -> Value {
    let client = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../terminal-client");
    assert!(
        client.join("node_modules/playwright-core").exists(),
        "terminal-client/node_modules is missing: the rnr-terminal build runs npm ci there"
    );
    let out = Command::new("node")
        .arg(format!("test/{script}"))
        .args(args)
        .current_dir(&client)
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}{stderr}");
    assert!(
        out.status.success(),
        "{script} failed:\n{stderr}\nserver log:\n{}",
        s.log_text()
    );
    serde_json::from_str(stdout.trim()).expect("results line")
}
